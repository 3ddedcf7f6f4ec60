//! The re-identification audit log: JSON lines, two per use of a command that opens envelopes
//! or reverses tokens (`decrypt`, `lookup`, `reseal`, `dlq replay`), or makes tokens of a
//! file of values (`transform`: tokens of guessed values are a `lookup`).
//!
//! A line says when, who (the OS user id and name), which command, which key ids were used and
//! how many values were handled; never a value, a token or a file's content. The log is opened
//! before the command does anything (no log, no re-identification), created owner-only.
//!
//! - **Write-ahead.** A command appends a `started` record, flushed to disk (`fsync`), before
//!   the first plaintext or token leaves, and an outcome record (`ok` or `failed`) after. If the
//!   `started` record cannot be written, nothing is printed and the command fails.
//! - **Tamper-evident.** Each record carries its sequence number (`seq`, from 1) and the SHA-256
//!   of the previous line (`prev`, hex; 64 zeros for the first), so an edited, removed or
//!   reordered record breaks the chain: [`verify`] names the first such record. Appends take an
//!   exclusive `flock` on the file, so concurrent users neither interleave nor fork the chain.
//!   The last record is anchored by nothing after it: `audit verify` prints the chain's head
//!   hash, which an operator (or a log shipper) records elsewhere.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Environment variable naming the audit log when no `--audit-log` or config entry does.
pub const AUDIT_LOG_ENV: &str = "PSEUDONYMIZER_AUDIT_LOG";

/// Why the audit log could not be used; the command then does nothing.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "re-identification is audited: give --audit-log, set `audit_log` in the config, or set \
         {AUDIT_LOG_ENV}"
    )]
    NotConfigured,
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the audit log {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One audit line.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Position in the log, from 1.
    pub seq: u64,
    /// SHA-256 (hex) of the previous line, without its newline; 64 zeros for the first.
    pub prev: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// Real user id of the process.
    pub uid: u32,
    /// User name from the password database, or `uid N` when it has none (never `$USER`).
    pub user: String,
    /// `decrypt`, `lookup`, `reseal`, `dlq replay` or `transform`.
    pub command: &'a str,
    /// Key ids used (opened envelopes' keys, or the pseudonym keys tokens were made with).
    pub key_ids: Vec<String>,
    /// Values handled: envelopes opened (`decrypt`), values looked up (`lookup`), envelopes
    /// re-sealed (`reseal`), dead letters replayed (`dlq replay`) or tokens written
    /// (`transform`).
    pub values: u64,
    /// `decrypt`: envelopes that could not be opened (destroyed or unknown keys); `dlq replay`:
    /// dead letters not replayed (not opened, or refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unopened: Option<u64>,
    /// The input file, for `decrypt` and `transform` (a path, not content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `started` (written before any output), then `ok`, or `failed` when the command stopped
    /// with an error part way.
    pub outcome: &'a str,
}

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the first of `explicit`, `configured`, `$PSEUDONYMIZER_AUDIT_LOG`.
    pub fn open(explicit: Option<&Path>, configured: Option<&Path>) -> Result<Self, AuditError> {
        let from_env = std::env::var_os(AUDIT_LOG_ENV).map(PathBuf::from);
        let path = explicit
            .map(Path::to_owned)
            .or_else(|| configured.map(Path::to_owned))
            .or(from_env)
            .ok_or(AuditError::NotConfigured)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AuditError::Open {
                path: path.clone(),
                source,
            })?;
        }
        // Not through a symbolic link (O_NOFOLLOW: whoever can plant a link must not choose
        // where records go, or make them vanish into /dev/null), and a regular file only (a
        // FIFO is opened without blocking, then refused).
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|source| AuditError::Open {
                path: path.clone(),
                source: if source.raw_os_error() == Some(libc::ELOOP) {
                    std::io::Error::other("it is a symbolic link; give the path of the file itself")
                } else {
                    source
                },
            })?;
        let meta = file.metadata().map_err(|source| AuditError::Open {
            path: path.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(AuditError::Open {
                path: path.clone(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        Ok(AuditLog { path, file })
    }

    /// Appends one line, stamped with the time and the OS user.
    pub fn append(
        &mut self,
        command: &str,
        key_ids: Vec<String>,
        values: u64,
        unopened: Option<u64>,
        input: Option<&Path>,
        outcome: &str,
    ) -> Result<(), AuditError> {
        let (uid, user) = os_user();
        let write_error = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        // One appender at a time, from reading the chain's head to the fsync of the new line.
        let _lock = Flock::exclusive(&self.file).map_err(write_error)?;
        let (seq, prev) = chain_head(&mut self.file).map_err(write_error)?;
        let record = Record {
            seq,
            prev,
            time: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            uid,
            user,
            command,
            key_ids,
            values,
            unopened,
            input: input.map(record_path),
            outcome,
        };
        let mut line = serde_json::to_vec(&record).expect("audit record serializes");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(write_error)
    }
}

/// Paths in records are kept short, so every record stays far below the 64 KiB in which the
/// next append looks for the last one: a path of more than [`PATH_MAX_CHARS`] characters is
/// recorded as its first 200, `…`, and the SHA-256 (hex) of the whole path.
const PATH_MAX_CHARS: usize = 1024;

fn record_path(path: &Path) -> String {
    let text = path.display().to_string();
    if text.chars().count() <= PATH_MAX_CHARS {
        return text;
    }
    let head: String = text.chars().take(200).collect();
    format!("{head}…sha256:{}", line_hash(text.as_bytes()))
}

/// An exclusive `flock` on a file, released when dropped.
struct Flock(std::os::fd::RawFd);

impl Flock {
    fn exclusive(file: &File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a file descriptor the caller's File owns and keeps open while the
        // lock lives; no memory is passed.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Flock(fd))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

/// The hash of a line as the next record's `prev`.
fn line_hash(line: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(line)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The next record's `seq` and `prev`: from the log's last line (records written before the
/// chain existed count by position).
fn chain_head(file: &mut File) -> std::io::Result<(u64, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((1, GENESIS.to_owned()));
    }
    // The last line lies in the last 64 KiB (a record is a few hundred bytes).
    let from = len.saturating_sub(64 << 10);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let last = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None => body,
    };
    // A log that does not end with an audit record (edited, cut, or not an audit log) is not
    // chained to: the command stops, and `audit verify` says what is wrong.
    let not_a_record = || {
        std::io::Error::other(
            "its last line is not an audit record (edited, truncated, or not an audit log); \
             check it with `pseudonymizer audit verify`",
        )
    };
    if from > 0 && !body[..].contains(&b'\n') {
        return Err(not_a_record());
    }
    let record = StoredRecord::parse(last).ok_or_else(not_a_record)?;
    let seq = match record.seq {
        Some(seq) => seq + 1,
        None => {
            // Records before the chain existed: count the lines.
            file.seek(SeekFrom::Start(0))?;
            let mut all = Vec::new();
            file.read_to_end(&mut all)?;
            all.iter().filter(|&&b| b == b'\n').count() as u64 + 1
        }
    };
    Ok((seq, line_hash(last)))
}

/// A line as read back: every field a [`Record`] writes, of its type, and nothing else (a
/// line of `{}` or of some other JSON is not a record). `seq` and `prev` are absent only in
/// records written before the chain existed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read to check their presence and types
struct StoredRecord {
    seq: Option<u64>,
    prev: Option<String>,
    time: String,
    uid: u32,
    user: String,
    command: String,
    key_ids: Vec<String>,
    values: u64,
    unopened: Option<u64>,
    input: Option<String>,
    outcome: String,
}

impl StoredRecord {
    fn parse(line: &[u8]) -> Option<StoredRecord> {
        let record: StoredRecord = serde_json::from_slice(line).ok()?;
        let known_command = [
            "decrypt",
            "lookup",
            "reseal",
            "dlq replay",
            "transform",
            "subjects erase",
            "subjects opt-out",
            "subjects opt-in",
            "subjects status",
            "subjects export",
        ]
        .contains(&&*record.command);
        let known_outcome = ["started", "ok", "failed"].contains(&&*record.outcome);
        let hex =
            |h: &str| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let chain_ok = match (&record.seq, &record.prev) {
            (Some(seq), Some(prev)) => *seq >= 1 && hex(prev),
            (None, None) => true,
            _ => false,
        };
        let time_ok = OffsetDateTime::parse(&record.time, &Rfc3339).is_ok();
        (known_command && known_outcome && chain_ok && time_ok).then_some(record)
    }
}

/// What [`verify`] found: the count of records, every break in the chain, and the head.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Lines that are audit records.
    pub records: u64,
    /// Of which written before the chain existed (no `seq`), all at its start.
    pub unchained: u64,
    /// Every break found, in file order, each naming a line by its position (1-based), never
    /// its content. Empty: the chain is intact.
    pub breaks: Vec<String>,
    /// SHA-256 of the last line read, whatever it holds (64 zeros for an empty log): record it
    /// elsewhere to anchor the chain's end, and compare it with the last one recorded.
    pub head: String,
}

/// Checks the whole chain of the log at `path`. Verification does not stop at the first
/// break: after one, it goes on from the line that broke, so an edit or removal further on is
/// still reported (a break must not hide what follows it). `Err` only when the file cannot be
/// read at all.
pub fn verify(path: &Path) -> Result<Verified, String> {
    let text = crate::fsio::read_bounded(path, "audit log", crate::fsio::AUDIT_LOG_LIMIT)
        .map_err(|e| e.to_string())?;
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let lines: Vec<&[u8]> = if body.is_empty() {
        Vec::new()
    } else {
        body.split(|&b| b == b'\n').collect()
    };
    let mut breaks = Vec::new();
    let mut records = 0u64;
    let mut unchained = 0u64;
    // The line before, whatever it was, and whether it was already reported.
    let mut previous: Option<&[u8]> = None;
    let mut previous_broke = false;
    // The `seq` the next record must carry, once the chain has begun.
    let mut next_seq: Option<u64> = None;
    for (index, line) in lines.iter().enumerate() {
        let n = index as u64 + 1;
        let Some(record) = StoredRecord::parse(line) else {
            breaks.push(format!(
                "record {n} is not an audit record (edited, truncated, inserted, or not an \
                 audit log)"
            ));
            // Taken as standing in for one record, so the next one's `seq` is still checked.
            next_seq = next_seq.map(|seq| seq + 1);
            previous = Some(line);
            previous_broke = true;
            continue;
        };
        records += 1;
        let (Some(seq), Some(prev)) = (record.seq, record.prev.as_deref()) else {
            if unchained + 1 == n {
                unchained = n;
            } else {
                breaks.push(format!(
                    "record {n} has no chain fields (edited, or inserted)"
                ));
            }
            previous = Some(line);
            previous_broke = false;
            continue;
        };
        let expected_seq = next_seq.unwrap_or(unchained + 1);
        if seq != expected_seq {
            breaks.push(format!(
                "record {n} says it is record {seq}: a record before it was removed, or records \
                 were reordered"
            ));
            previous_broke = true;
        } else if !previous_broke {
            let expected_prev = previous.map_or_else(|| GENESIS.to_owned(), line_hash);
            if prev != expected_prev {
                breaks.push(if n == 1 {
                    "record 1 does not start the chain (records were removed from the start)".into()
                } else {
                    format!(
                        "record {} was edited, removed or moved (record {n} does not chain to it)",
                        n - 1
                    )
                });
                previous_broke = true;
            } else {
                previous_broke = false;
            }
        } else {
            // The line before was reported already; this one starts the count again.
            previous_broke = false;
        }
        // A record out of place moves the expected count on only forward, so one moved record
        // does not make every later one look out of place.
        next_seq = Some(expected_seq.max(seq) + 1);
        previous = Some(line);
    }
    Ok(Verified {
        records,
        unchained,
        breaks,
        head: previous.map_or_else(|| GENESIS.to_owned(), line_hash),
    })
}

/// The real uid and its user name. Both come from what the user does not control: the uid
/// from the kernel, the name from the password database; a uid it does not list (as 65532 in
/// the image) is recorded as the uid alone (`uid 65532`), never as `$USER`, which anyone sets.
fn os_user() -> (u32, String) {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    (
        uid,
        passwd_name(uid).unwrap_or_else(|| format!("uid {uid}")),
    )
}

/// The name of `uid` in the password database (getpwuid_r: /etc/passwd and whatever NSS
/// sources the system names).
fn passwd_name(uid: u32) -> Option<String> {
    let mut buffer = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain data that getpwuid_r fills; buffer outlives the call and its
    // length is passed; result is read only after a zero return.
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let status = libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        );
        if status != 0 || result.is_null() || entry.pw_name.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(entry.pw_name).to_str().ok()?;
        // A name is recorded as it is only when it looks like one (no JSON or line tricks).
        let plain = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
        plain.then(|| name.to_owned())
    }
}
