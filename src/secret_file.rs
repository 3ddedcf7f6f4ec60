//! Which file modes a secret file (the keyring, a KEK file) may have, and how one is written.
//!
//! Owner-only (`0600`, `0400`) always passes. Kubernetes mounts Secrets root-owned and, with a
//! pod `fsGroup`, group-readable (`0440`) under that group: refusing every group bit would
//! refuse every Secret volume. So a group may *read* a secret file when that group is one of
//! this process's own (its gid or a supplementary group): the people who can read it are then
//! exactly those who could run as this process anyway. Refused, always: any bit for others
//! (world-readable), group write, and group read by a group the process is not in.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why a secret file's mode is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ModeProblem {
    #[error("others have access (mode {0:o})")]
    Others(u32),
    #[error("its group can write it (mode {0:o})")]
    GroupWritable(u32),
    #[error("its group {gid} can read it and this process is not in that group (mode {mode:o})")]
    ForeignGroup { mode: u32, gid: u32 },
}

/// Checks the mode of a file already open, so that nothing can replace it between the check
/// and the read (opened through symbolic links, as kubelet's `..data` links are).
pub fn check_file(file: &std::fs::File) -> std::io::Result<Result<(), ModeProblem>> {
    let meta = file.metadata()?;
    Ok(check_mode(
        meta.mode() & 0o777,
        meta.gid(),
        &process_groups(),
    ))
}

/// The rule itself, on a mode, the file's group and the process's groups.
pub fn check_mode(mode: u32, file_gid: u32, groups: &[u32]) -> Result<(), ModeProblem> {
    if mode & 0o007 != 0 {
        return Err(ModeProblem::Others(mode));
    }
    if mode & 0o020 != 0 {
        return Err(ModeProblem::GroupWritable(mode));
    }
    if mode & 0o070 != 0 && !groups.contains(&file_gid) {
        return Err(ModeProblem::ForeignGroup {
            mode,
            gid: file_gid,
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600, atomically ([`crate::fsio::AtomicFile`]): a new
/// temporary file of its own beside the target, fsync, rename. A reader sees the old file or
/// the new one, never a part (the worker reloads keyrings while they are replaced); a keyring
/// given as a symbolic link is written at the link's target, so that no copy of the old
/// secrets survives there.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fsio::write_atomically(path, "keyring", 0o600, bytes).map_err(|e| match e {
        crate::fsio::FileError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })
}

/// This process's gid and supplementary groups.
fn process_groups() -> Vec<u32> {
    // SAFETY: getgroups with a zero size returns the count; the second call fills a buffer of
    // exactly that many entries.
    unsafe {
        let mut groups = vec![libc::getgid(), libc::getegid()];
        let count = libc::getgroups(0, std::ptr::null_mut());
        if count > 0 {
            let mut extra = vec![0 as libc::gid_t; count as usize];
            let filled = libc::getgroups(count, extra.as_mut_ptr());
            if filled > 0 {
                extra.truncate(filled as usize);
                groups.extend(extra);
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only_passes_and_group_read_only_for_own_groups() {
        assert_eq!(check_mode(0o600, 7, &[]), Ok(()));
        assert_eq!(check_mode(0o400, 7, &[]), Ok(()));
        assert_eq!(check_mode(0o440, 7, &[5, 7]), Ok(()));
        assert_eq!(check_mode(0o640, 7, &[7]), Ok(()));
        assert_eq!(
            check_mode(0o440, 7, &[5]),
            Err(ModeProblem::ForeignGroup {
                mode: 0o440,
                gid: 7
            })
        );
        assert_eq!(
            check_mode(0o660, 7, &[7]),
            Err(ModeProblem::GroupWritable(0o660))
        );
        assert_eq!(check_mode(0o644, 7, &[7]), Err(ModeProblem::Others(0o644)));
        assert_eq!(check_mode(0o604, 7, &[7]), Err(ModeProblem::Others(0o604)));
    }
}
