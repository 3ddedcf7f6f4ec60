//! The re-identification audit log: one JSON line per use of `decrypt` or `lookup`.
//!
//! A line says when, who (the OS user id and name), which command, which key ids were used and
//! how many values were handled; never a value, a token or a file's content. The log is opened
//! before the command does anything (no log, no re-identification), created owner-only, and
//! written with `O_APPEND` in one `write` per line, so concurrent users do not interleave.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
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
    /// RFC 3339, UTC.
    pub time: String,
    /// Real user id of the process.
    pub uid: u32,
    /// User name from the password database (falls back to `$USER`).
    pub user: String,
    /// `decrypt` or `lookup`.
    pub command: &'a str,
    /// Key ids used (opened envelopes' keys, or the pseudonym keys tokens were made with).
    pub key_ids: Vec<String>,
    /// Values handled: envelopes opened (`decrypt`) or values looked up (`lookup`).
    pub values: u64,
    /// `decrypt`: envelopes that could not be opened (destroyed or unknown keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unopened: Option<u64>,
    /// The input file, for `decrypt` (a path, not content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `ok`, or `failed` when the command stopped with an error part way.
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
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| AuditError::Open {
                path: path.clone(),
                source,
            })?;
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
        let record = Record {
            time: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            uid,
            user,
            command,
            key_ids,
            values,
            unopened,
            input: input.map(|p| p.display().to_string()),
            outcome,
        };
        let mut line = serde_json::to_vec(&record).expect("audit record serializes");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| AuditError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// The real uid and its user name. The uid comes from the kernel; the name from the password
/// database when it has one, else from `$USER` (which the user controls, hence the uid too).
fn os_user() -> (u32, String) {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id = fields.nth(1)?;
                (id.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    (uid, name)
}
