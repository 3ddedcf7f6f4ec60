//! Files in and out, for every command: bounded reads of regular files, and outputs that
//! replace their target atomically or not at all.
//!
//! Reading: a config, schema, keyring, KEK, audit log or secret reference must be a regular
//! file (symbolic links followed, as kubelet's `..data` links are) no larger than a limit the
//! caller names. A FIFO, a device or a directory is refused before anything is read (the file
//! is opened without blocking, so a FIFO with no writer cannot hang the command), and a file
//! larger than its limit is refused without reading it whole.
//!
//! Writing: [`AtomicFile`] writes to a new temporary file in the target's own directory
//! (created exclusively, with a name no other file has), syncs it, and renames it over the
//! target in [`AtomicFile::commit`]. Dropped without a commit (an error, a full disk, a
//! signal's unwinding), it removes only that temporary: a file that existed before is left
//! as it was, and no reader ever sees a part of a file. A target given as a symbolic link is
//! written at the link's target, so the link stays and the file it names is the one replaced.

use std::fs::File;
use std::io::{Read as _, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest config file read (1 MiB): far above any real config, small enough to refuse
/// a mistaken path (a log, an image) at once.
pub const CONFIG_LIMIT: u64 = 1 << 20;
/// The largest Avro schema file read (4 MiB).
pub const SCHEMA_LIMIT: u64 = 4 << 20;
/// The largest keyring or KEK file read (4 MiB: thousands of keys).
pub const KEYRING_LIMIT: u64 = 4 << 20;
/// The largest secret read through `${file:…}` or a credentials file (64 KiB).
pub const SECRET_LIMIT: u64 = 64 << 10;
/// The largest audit log read whole by `audit verify` (1 GiB).
pub const AUDIT_LOG_LIMIT: u64 = 1 << 30;

/// Why a file could not be read or written. Messages name the file and what it was for, and
/// never its contents.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is not a regular file (it is {kind})")]
    NotRegular {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{what} {path} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{what} {path} is not valid UTF-8 text")]
    NotText { what: &'static str, path: PathBuf },
    #[error("{path} is both the input and the output: refusing to overwrite the input")]
    SameFile { path: PathBuf },
}

impl FileError {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> FileError {
        FileError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// What kind of file a metadata describes, for messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file of at most `limit` bytes. `what` names
/// the file in messages ("config", "keyring", …).
pub fn open_regular(path: &Path, what: &'static str, limit: u64) -> Result<File, FileError> {
    // O_NONBLOCK: opening a FIFO with no writer would otherwise block forever. It is cleared
    // again below; for a regular file it changes nothing anyway.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| FileError::io(what, path, e))?;
    let meta = file.metadata().map_err(|e| FileError::io(what, path, e))?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            what,
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            what,
            path: path.to_owned(),
            size: meta.len(),
            limit,
        });
    }
    clear_nonblocking(&file);
    Ok(file)
}

fn clear_nonblocking(file: &File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fcntl on a descriptor this function's caller owns; failure leaves the flag set,
    // which a regular file ignores.
    unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// Reads a regular file of at most `limit` bytes whole. The limit holds even if the file
/// grows while it is read.
pub fn read_bounded(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, FileError> {
    read_opened(open_regular(path, what, limit)?, path, what, limit)
}

/// Reads a file [`open_regular`] opened, at most `limit` bytes (a caller that checks the open
/// file's metadata first, as secret files' modes are, reads through this).
pub fn read_opened(
    file: File,
    path: &Path,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::io(what, path, e))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            what,
            path: path.to_owned(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read_bounded`] for text files.
pub fn read_text(path: &Path, what: &'static str, limit: u64) -> Result<String, FileError> {
    text_of(read_bounded(path, what, limit)?, path, what)
}

/// The bytes of a file as text, or [`FileError::NotText`].
pub fn text_of(bytes: Vec<u8>, path: &Path, what: &'static str) -> Result<String, FileError> {
    String::from_utf8(bytes).map_err(|_| FileError::NotText {
        what,
        path: path.to_owned(),
    })
}

/// Refuses an output that is the same file as an input: same device and inode, symbolic
/// links followed. An output that does not exist yet is never the input.
pub fn refuse_same_file(input: &Path, output: &Path) -> Result<(), FileError> {
    let (Ok(a), Ok(b)) = (std::fs::metadata(input), std::fs::metadata(output)) else {
        return Ok(());
    };
    if a.dev() == b.dev() && a.ino() == b.ino() {
        return Err(FileError::SameFile {
            path: output.to_owned(),
        });
    }
    Ok(())
}

/// Where writing `path` must happen: the file a symbolic link (or a chain of them) names,
/// so that replacing it keeps the link; `path` itself otherwise.
pub fn write_target(path: &Path) -> std::io::Result<PathBuf> {
    let mut target = path.to_owned();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target)?;
                target = match target.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(target),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// An output being written: a temporary file beside its target, renamed over the target by
/// [`AtomicFile::commit`], removed if dropped without one.
pub struct AtomicFile {
    target: PathBuf,
    temporary: PathBuf,
    file: Option<std::io::BufWriter<File>>,
    what: &'static str,
    /// Made by [`AtomicFile::create_new`]: the commit never replaces anything.
    new_only: bool,
}

impl AtomicFile {
    /// Starts an output for `path` with file mode `mode` (0600 for keys and sanitized data;
    /// see docs/operations.md). The target's directory must exist. A target that exists must
    /// be a regular file (or a link to one): a device, FIFO or directory is refused, since
    /// renaming over it would destroy it.
    pub fn create(path: &Path, what: &'static str, mode: u32) -> Result<AtomicFile, FileError> {
        let target = write_target(path).map_err(|e| FileError::io(what, path, e))?;
        AtomicFile::beside(target, path, what, mode, false)
    }

    /// Starts an output that must be a new file at `path` itself: refused now if anything
    /// exists there (a link, even a dangling one, included), and again at the commit, which
    /// links the finished file into place and fails if something appeared meanwhile, so a
    /// link made between the check and the commit cannot redirect it.
    pub fn create_new(path: &Path, what: &'static str, mode: u32) -> Result<AtomicFile, FileError> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(FileError::io(
                what,
                path,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        AtomicFile::beside(path.to_owned(), path, what, mode, true)
    }

    fn beside(
        target: PathBuf,
        path: &Path,
        what: &'static str,
        mode: u32,
        new_only: bool,
    ) -> Result<AtomicFile, FileError> {
        // `out/` names a directory, existing or not: refused now, not at the commit after all
        // the work (the rename onto it would fail).
        if std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).ends_with(b"/") {
            return Err(FileError::io(
                what,
                path,
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        if let Ok(meta) = std::fs::metadata(&target) {
            if !meta.file_type().is_file() {
                return Err(FileError::NotRegular {
                    what,
                    path: path.to_owned(),
                    kind: kind_of(&meta),
                });
            }
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".to_owned());
        // A name of our own: pid, time and a counter; created exclusively, so an existing file
        // of that name (however unlikely) is never opened, let alone removed.
        for attempt in 0u32..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let temporary = dir.join(format!(
                ".{name}.{}.{nanos:x}{attempt}.partial",
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temporary)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        target,
                        temporary,
                        file: Some(std::io::BufWriter::new(file)),
                        what,
                        new_only,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FileError::io(what, path, e)),
            }
        }
        Err(FileError::io(
            what,
            path,
            std::io::Error::other("could not create a temporary file beside it"),
        ))
    }

    /// The file being written (buffered). Write errors surface here or at commit.
    pub fn writer(&mut self) -> &mut std::io::BufWriter<File> {
        self.file
            .as_mut()
            .expect("an uncommitted AtomicFile has its file")
    }

    /// Flushes, syncs and renames the temporary over the target, then syncs the directory so
    /// that the rename survives a crash.
    pub fn commit(mut self) -> Result<(), FileError> {
        let what = self.what;
        let target = self.target.clone();
        let file = self
            .file
            .take()
            .expect("an uncommitted AtomicFile has its file");
        let file = file
            .into_inner()
            .map_err(|e| FileError::io(what, &target, e.into_error()))?;
        file.sync_all()
            .map_err(|e| FileError::io(what, &target, e))?;
        drop(file);
        if self.new_only {
            // A hard link fails if the name exists in any form; then the temporary goes.
            std::fs::hard_link(&self.temporary, &self.target)
                .map_err(|e| FileError::io(what, &target, e))?;
            let _ = std::fs::remove_file(&self.temporary);
        } else {
            std::fs::rename(&self.temporary, &self.target)
                .map_err(|e| FileError::io(what, &target, e))?;
        }
        // Renamed (or linked and removed): nothing left to remove on drop.
        self.temporary = PathBuf::new();
        if let Some(dir) = self.target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temporary.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `bytes` to `path` atomically with mode `mode` (see [`AtomicFile`]).
pub fn write_atomically(
    path: &Path,
    what: &'static str,
    mode: u32,
    bytes: &[u8],
) -> Result<(), FileError> {
    let mut out = AtomicFile::create(path, what, mode)?;
    out.write_all(bytes)
        .map_err(|e| FileError::io(what, path, e))?;
    out.commit()
}

/// Writes `bytes` to a new file at `path` with mode `mode` (see [`AtomicFile::create_new`]):
/// never over anything that exists there, whenever it appeared.
pub fn write_new(
    path: &Path,
    what: &'static str,
    mode: u32,
    bytes: &[u8],
) -> Result<(), FileError> {
    let mut out = AtomicFile::create_new(path, what, mode)?;
    out.write_all(bytes)
        .map_err(|e| FileError::io(what, path, e))?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_never_written_over_anything_that_appears_before_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let out = dir.path().join("out");
        // A dangling link is refused at once.
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &out).unwrap();
        assert!(write_new(&out, "output", 0o600, b"x").is_err());
        assert!(!dir.path().join("nowhere").exists());
        std::fs::remove_file(&out).unwrap();
        // A link made after the start and before the commit: the commit fails, the victim
        // and the link stay, no temporary is left.
        let mut file = AtomicFile::create_new(&out, "output", 0o600).unwrap();
        file.write_all(b"new").unwrap();
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        assert!(file.commit().is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // A name that ends in `/` is a directory's, existing or not: refused before any work.
        let slash = PathBuf::from(format!("{}/", dir.path().join("newdir").display()));
        assert!(AtomicFile::create_new(&slash, "output", 0o600).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // Nothing there: written.
        let fresh = dir.path().join("fresh");
        write_new(&fresh, "output", 0o600, b"ok").unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"ok");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_and_a_large_file_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_bounded(&fifo, "config", 10).unwrap_err();
        assert!(
            matches!(err, FileError::NotRegular { kind: "a FIFO", .. }),
            "{err}"
        );
        let big = dir.path().join("big");
        let f = File::create(&big).unwrap();
        f.set_len(1 << 40).unwrap();
        let err = read_bounded(&big, "config", 1 << 20).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { .. }), "{err}");
        let err = read_bounded(dir.path(), "config", 10).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
    }

    #[test]
    fn a_failed_output_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.avro");
        std::fs::write(&path, b"before").unwrap();
        {
            let mut out = AtomicFile::create(&path, "output", 0o600).unwrap();
            out.write_all(b"half of it").unwrap();
            // dropped without commit: as on an error
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"before");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomically(&path, "output", 0o600, b"after").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"after");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlinked_target_is_written_at_its_target_and_the_link_stays() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, b"old secret").unwrap();
        let link = dir.path().join("keyring.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        write_atomically(&link, "keyring", 0o600, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        // An unrelated `.tmp` beside it is not touched.
        let unrelated = dir.path().join("keyring.tmp");
        std::fs::write(&unrelated, b"mine").unwrap();
        write_atomically(&link, "keyring", 0o600, b"newer").unwrap();
        assert_eq!(std::fs::read(&unrelated).unwrap(), b"mine");
    }

    #[test]
    fn the_input_as_output_is_refused_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.avro");
        std::fs::write(&input, b"data").unwrap();
        let link = dir.path().join("alias.avro");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(refuse_same_file(&input, &link).is_err());
        assert!(refuse_same_file(&input, &dir.path().join("new.avro")).is_ok());
    }

    #[test]
    fn a_device_target_is_refused_not_replaced() {
        let err = match AtomicFile::create(Path::new("/dev/null"), "output", 0o600) {
            Err(e) => e,
            Ok(_) => panic!("/dev/null accepted as an output"),
        };
        assert!(err.to_string().contains("character device"), "{err}");
        assert!(Path::new("/dev/null").exists());
    }
}
