//! One mode rule for every secret file (the keyring, a KEK file, the targets of `${file:…}`
//! references, the registry's credentials file), and how a secret file is read and written.
//!
//! Owner-only (`0600`, `0400`) always passes. Kubernetes mounts Secrets root-owned and, with a
//! pod `fsGroup`, group-readable (`0440`) under that group: refusing every group bit would
//! refuse every Secret volume. So a group may *read* a secret file only when the deployment
//! names that group: [`SECRET_GROUP_ENV`] (`PSEUDONYMIZER_SECRET_GROUP`, the pod's `fsGroup`
//! in the shipped manifests). Being in a group is not enough: a process is often in shared
//! groups (`users`, `staff`) whose every member could then read the keys. Refused, always:
//! any bit for others, group write, and group read when no group is named or another one is.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The environment variable naming the one group that may read secret files (a numeric gid).
pub const SECRET_GROUP_ENV: &str = "PSEUDONYMIZER_SECRET_GROUP";

/// Why a secret file's mode is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ModeProblem {
    #[error("others have access (mode {0:o})")]
    Others(u32),
    #[error("its group can write it (mode {0:o})")]
    GroupWritable(u32),
    #[error("its group {gid} can read it (mode {mode:o}) and no group is named by {SECRET_GROUP_ENV} (set it to the pod's fsGroup if that is {gid})")]
    GroupNotNamed { mode: u32, gid: u32 },
    #[error(
        "its group {gid} can read it (mode {mode:o}) but {SECRET_GROUP_ENV} names group {named}"
    )]
    ForeignGroup { mode: u32, gid: u32, named: u32 },
    #[error(
        "its group can read it (mode {mode:o}) and {SECRET_GROUP_ENV} is not a numeric group id"
    )]
    BadGroupSetting { mode: u32 },
}

/// What [`SECRET_GROUP_ENV`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedGroup {
    /// Not set: no group may read a secret file.
    Unset,
    /// The one group that may read a secret file (the pod's `fsGroup`).
    Gid(u32),
    /// Set, but not a numeric group id: no group may read one, and the error says why.
    NotAGid,
}

/// The group [`SECRET_GROUP_ENV`] names.
pub fn named_group() -> NamedGroup {
    match std::env::var(SECRET_GROUP_ENV) {
        Err(_) => NamedGroup::Unset,
        Ok(text) => text
            .trim()
            .parse()
            .map_or(NamedGroup::NotAGid, NamedGroup::Gid),
    }
}

/// Checks the mode of a file already open, so that nothing can replace it between the check
/// and the read (opened through symbolic links, as kubelet's `..data` links are).
pub fn check_file(file: &std::fs::File) -> std::io::Result<Result<(), ModeProblem>> {
    let meta = file.metadata()?;
    let mode = meta.mode() & 0o777;
    Ok(match named_group() {
        NamedGroup::Gid(gid) => check_mode(mode, meta.gid(), Some(gid)),
        NamedGroup::NotAGid if mode & 0o077 == 0o040 => Err(ModeProblem::BadGroupSetting { mode }),
        NamedGroup::NotAGid | NamedGroup::Unset => check_mode(mode, meta.gid(), None),
    })
}

/// The rule itself, on a mode, the file's group and the group the deployment names.
pub fn check_mode(mode: u32, file_gid: u32, named: Option<u32>) -> Result<(), ModeProblem> {
    if mode & 0o007 != 0 {
        return Err(ModeProblem::Others(mode));
    }
    if mode & 0o020 != 0 {
        return Err(ModeProblem::GroupWritable(mode));
    }
    if mode & 0o070 != 0 {
        return match named {
            None => Err(ModeProblem::GroupNotNamed {
                mode,
                gid: file_gid,
            }),
            Some(named) if named != file_gid => Err(ModeProblem::ForeignGroup {
                mode,
                gid: file_gid,
                named,
            }),
            Some(_) => Ok(()),
        };
    }
    Ok(())
}

/// Why a secret file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error(transparent)]
    File(#[from] crate::fsio::FileError),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is refused: {problem}; run `chmod 600 {path}`")]
    Mode {
        what: &'static str,
        path: PathBuf,
        problem: ModeProblem,
    },
}

/// The bytes of a secret file: a regular file (symbolic links followed: Kubernetes mounts
/// Secrets as links into a `..data` folder) of at most `limit` bytes, its mode checked on the
/// open file by the rule above before anything is read.
pub fn read(
    path: &Path,
    what: &'static str,
    limit: u64,
) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    let file = crate::fsio::open_regular(path, what, limit)?;
    let mode = check_file(&file).map_err(|source| SecretFileError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    if let Err(problem) = mode {
        return Err(SecretFileError::Mode {
            what,
            path: path.to_owned(),
            problem,
        });
    }
    Ok(Zeroizing::new(crate::fsio::read_opened(
        file, path, what, limit,
    )?))
}

/// Whether writing a secret file may replace what is at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Yes, atomically ([`crate::fsio::AtomicFile`]): a new temporary file of its own beside
    /// the target, fsync, rename. A reader sees the old file or the new one, never a part (the
    /// worker reloads keyrings while they are replaced); a keyring given as a symbolic link is
    /// written at the link's target, so that no copy of the old secrets survives there.
    Existing,
    /// Never ([`crate::fsio::AtomicFile::create_new`]): the path must be free until the file
    /// is in place, even of a link that appears while the secret is written (`init`, `export`).
    Never,
}

/// Writes `bytes` to `path` with mode 0600, as `replace` says.
pub fn write(path: &Path, bytes: &[u8], replace: Replace) -> std::io::Result<()> {
    let written = match replace {
        Replace::Existing => crate::fsio::write_atomically(path, "keyring", 0o600, bytes),
        Replace::Never => crate::fsio::write_new(path, "keyring", 0o600, bytes),
    };
    written.map_err(|e| match e {
        crate::fsio::FileError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only_passes_and_group_read_only_for_the_named_group() {
        assert_eq!(check_mode(0o600, 7, None), Ok(()));
        assert_eq!(check_mode(0o400, 7, None), Ok(()));
        assert_eq!(check_mode(0o400, 7, Some(5)), Ok(()));
        assert_eq!(check_mode(0o440, 7, Some(7)), Ok(()));
        assert_eq!(check_mode(0o640, 7, Some(7)), Ok(()));
        // Being in the group is not enough: the deployment must name it.
        assert_eq!(
            check_mode(0o440, 7, None),
            Err(ModeProblem::GroupNotNamed {
                mode: 0o440,
                gid: 7
            })
        );
        assert_eq!(
            check_mode(0o440, 7, Some(5)),
            Err(ModeProblem::ForeignGroup {
                mode: 0o440,
                gid: 7,
                named: 5
            })
        );
        assert_eq!(
            check_mode(0o660, 7, Some(7)),
            Err(ModeProblem::GroupWritable(0o660))
        );
        assert_eq!(
            check_mode(0o644, 7, Some(7)),
            Err(ModeProblem::Others(0o644))
        );
        assert_eq!(
            check_mode(0o604, 7, Some(7)),
            Err(ModeProblem::Others(0o604))
        );
    }
}
