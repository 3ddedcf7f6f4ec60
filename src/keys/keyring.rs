//! The keyring file (spec §1): loading, validation, and the one writer.
//!
//! The file is UTF-8 JSON readable by its owner only. Loading refuses, with one error each:
//! a group- or world-readable file, an unknown field, a bad id, a duplicate id, a secret that is
//! not 32 bytes of base64, a destroyed key that still has a secret (or a live key without one),
//! and two active keys of one purpose. None of these errors ever carries secret bytes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::kek::{self, Kek, KekError};
use super::Need;
use super::Secret;
use crate::secret_file::Replace;

/// The value of the keyring's `format` field, as written: version 2 carries a `generation`.
pub const KEYRING_FORMAT: &str = "pseudonymizer-keyring/v2";
/// Version 1 (spec v1): no generation. Read as generation 0, written as version 2.
pub const KEYRING_FORMAT_V1: &str = "pseudonymizer-keyring/v1";

/// How a keyring rests on disk, weakest first: a worker never reloads a keyring less protected
/// than the one it started with ([`Protection`] orders them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protection {
    /// Secrets in clear JSON.
    #[default]
    Clear,
    /// Sealed under a key-encryption key (`PSEUDONYMIZER_KEK`).
    Sealed,
    /// Every secret wrapped by a KMS key.
    Kms,
}

impl Protection {
    /// The spelling used in messages and `keys list --format json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Clear => "clear",
            Protection::Sealed => "sealed",
            Protection::Kms => "kms",
        }
    }
}

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Tokens (HMAC-SHA256) and prefix-preserving IPs (Crypto-PAn).
    Pseudonym,
    /// AES-256-GCM envelopes.
    Encryption,
    /// Subject ids of the subject registry (docs/formats.md §5): never rotated, so that an
    /// erasure or a consent outlives every pseudonym epoch.
    Subject,
}

impl Purpose {
    /// The spelling used in the keyring and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Pseudonym => "pseudonym",
            Purpose::Encryption => "encryption",
            Purpose::Subject => "subject",
        }
    }
}

/// Lifecycle state of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Used for new output.
    Active,
    /// Kept to open old envelopes and recompute old tokens; never used for new output.
    Retired,
    /// Secret removed (crypto-shredded); the entry stays as a record.
    Destroyed,
}

impl KeyState {
    /// The spelling used in the keyring.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// One entry of the keyring. `Debug` shows the id, purpose and state, never the secret.
#[derive(Clone)]
pub struct KeyEntry {
    /// 1 to 32 characters of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// What the key is for.
    pub purpose: Purpose,
    /// Lifecycle state.
    pub state: KeyState,
    /// RFC 3339 creation time, as written in the file.
    pub created_at: String,
    /// `None` exactly when the key is destroyed.
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("purpose", &self.purpose)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Why a keyring was refused. Messages name paths, ids and fields, never secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("cannot read keyring {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write keyring {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring {path} is refused: {problem}; run `chmod 600 {path}` (or 0440 under the group named by PSEUDONYMIZER_SECRET_GROUP, as Kubernetes Secret volumes with fsGroup are)")]
    Permissions {
        path: PathBuf,
        problem: crate::secret_file::ModeProblem,
    },
    #[error("{path} is not a keyring (it names none of the keyring formats) and could not be one: {problem}; check the --keyring path")]
    NotAKeyring {
        path: PathBuf,
        problem: crate::secret_file::ModeProblem,
    },
    #[error(transparent)]
    File(#[from] crate::fsio::FileError),
    #[error("keyring {path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("keyring is not valid: {0}")]
    Syntax(String),
    #[error("keyring format is {0:?}, expected \"pseudonymizer-keyring/v2\" (or v1)")]
    Format(String),
    #[error("key id {0:?} is not 1 to 32 characters of A-Z a-z 0-9 . _ -")]
    BadId(String),
    #[error("key id {0:?} appears more than once")]
    DuplicateId(String),
    #[error("key {0:?}: secret is not base64 of exactly 32 bytes")]
    BadSecret(String),
    #[error("key {0:?}: a destroyed key must have no secret")]
    DestroyedWithSecret(String),
    #[error("key {0:?}: secret is missing (only destroyed keys have none)")]
    MissingSecret(String),
    #[error("key {0:?}: created_at is not an RFC 3339 time")]
    BadTime(String),
    #[error("two active {purpose} keys: {first:?} and {second:?}; exactly one may be active")]
    TwoActive {
        purpose: &'static str,
        first: String,
        second: String,
    },
    #[error("no active {0} key in the keyring")]
    NoActive(&'static str),
    #[error("the subject key is never rotated: a new one would change every subject id, and the subject registry's erasures and consents would match no one (docs/security.md, \"A person's rights\"); a new one can be added only after the old one is destroyed, with a new registry")]
    SubjectKeyRotation,
    #[error("no key with id {0:?}")]
    UnknownId(String),
    #[error("key {0:?} is already destroyed")]
    AlreadyDestroyed(String),
    #[error("key {id:?} is the active {purpose} key: destroying it leaves no {purpose} key for new output, and `run`, `check` and `transform` then refuse the keyring; rotate first (`keys rotate --purpose {purpose}`), then destroy the retired key, or pass --force")]
    DestroyActive { id: String, purpose: &'static str },
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    #[error("the KMS keyring is format v1: its entries' states are not authenticated, so nothing is written from it; check them with `keys list`, then run `keys upgrade --keyring FILE` once")]
    V1Unauthenticated,
    #[error("the keyring is format v1 and has no keyring_id to give its copy: run `keys upgrade --keyring FILE` once")]
    NotUpgraded,
    #[error("the KMS keyring's manifest does not match its contents (an entry, its state or the generation was edited, or the manifest was moved from another file): refused")]
    ManifestMismatch,
    #[error("key {id:?}: {error}{}", entry_hint(.error))]
    KmsEntry {
        id: String,
        error: crate::kms::KmsError,
    },
}

/// What a refused unwrap most often means, said next to it.
fn entry_hint(error: &crate::kms::KmsError) -> &'static str {
    match error {
        crate::kms::KmsError::Refused { .. } => {
            " (the wrong KMS key, no permission, or a wrapped secret moved from another entry or keyring: it is bound to its own)"
        }
        _ => "",
    }
}

impl KeyringError {
    /// Whether waiting and loading again may succeed: a KMS that is unreachable or answers
    /// with a transient failure. Everything else (a malformed file, a refused unwrap) stays.
    pub fn is_transient(&self) -> bool {
        match self {
            KeyringError::Kms(e) | KeyringError::KmsEntry { error: e, .. } => e.is_transient(),
            _ => false,
        }
    }
}

/// The keyring: every key the program knows, in file order, and how it rests on disk.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<KeyEntry>,
    /// `Some` when the file is sealed under a key-encryption key; `save` keeps that form.
    kek: Option<std::sync::Arc<Kek>>,
    /// Grows by one with every write (0: a version-1 file). Authenticated with the rest of
    /// the file when it is sealed or KMS-wrapped, so a file copied back from before is known.
    pub(crate) generation: u64,
    /// Version 2: `kr-` and 16 random hex digits, made at `init` and kept by every write,
    /// seal and unseal; a worker reloads only the keyring it started on. `None`: a version-1
    /// file, which gets one at its first write.
    pub(crate) keyring_id: Option<String>,
    /// The KMS key of a KMS-wrapped file (set by the unwrap): a reload keeps it.
    pub(crate) kms_uri: Option<String>,
    /// How the file was protected (set by the loaders; a KMS-wrapped file unwraps to this).
    pub(crate) protection: Protection,
    /// Every key id the file lists as retired or destroyed, including those whose secrets a
    /// [`Need`] left out: a worker never takes one of them back as active.
    pub(crate) ended: Vec<String>,
}

// The on-disk form. Kept private so that only `Keyring::save` serializes secrets.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    format: String,
    /// Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyring_id: Option<String>,
    keys: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    id: String,
    purpose: Purpose,
    state: KeyState,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<Zeroizing<String>>,
}

impl Keyring {
    /// Builds a keyring from entries, checking every rule of spec §1.
    pub fn from_entries(entries: Vec<KeyEntry>) -> Result<Self, KeyringError> {
        let mut seen = HashSet::new();
        for entry in &entries {
            if !valid_id(&entry.id) {
                return Err(KeyringError::BadId(entry.id.clone()));
            }
            if !seen.insert(entry.id.as_str()) {
                return Err(KeyringError::DuplicateId(entry.id.clone()));
            }
            if OffsetDateTime::parse(&entry.created_at, &Rfc3339).is_err() {
                return Err(KeyringError::BadTime(entry.id.clone()));
            }
            match (entry.state, &entry.secret) {
                (KeyState::Destroyed, Some(_)) => {
                    return Err(KeyringError::DestroyedWithSecret(entry.id.clone()))
                }
                (KeyState::Active | KeyState::Retired, None) => {
                    return Err(KeyringError::MissingSecret(entry.id.clone()))
                }
                _ => {}
            }
        }
        for purpose in [Purpose::Pseudonym, Purpose::Encryption, Purpose::Subject] {
            let mut active = entries
                .iter()
                .filter(|e| e.purpose == purpose && e.state == KeyState::Active);
            if let (Some(first), Some(second)) = (active.next(), active.next()) {
                return Err(KeyringError::TwoActive {
                    purpose: purpose.as_str(),
                    first: first.id.clone(),
                    second: second.id.clone(),
                });
            }
        }
        let ended = ended_ids(entries.iter().map(|e| (&e.id, e.state)));
        Ok(Keyring {
            entries,
            kek: None,
            generation: 0,
            keyring_id: None,
            kms_uri: None,
            protection: Protection::Clear,
            ended,
        })
    }

    /// Parses keyring JSON (no permission check; see [`Keyring::load`]).
    pub fn from_json(text: &str) -> Result<Self, KeyringError> {
        // serde_json's messages quote offending values only for type errors on non-string
        // scalars; we still drop the message's detail past its first clause to be safe.
        let form: FileForm = serde_json::from_str(text).map_err(|e| {
            KeyringError::Syntax(format!(
                "{} at line {} column {}",
                syntax_category(&e),
                e.line(),
                e.column()
            ))
        })?;
        let (generation, keyring_id) =
            match (form.format.as_str(), form.generation, form.keyring_id) {
                (KEYRING_FORMAT, Some(generation), Some(id)) => {
                    check_keyring_id(&id)?;
                    (generation, Some(id))
                }
                (KEYRING_FORMAT, None, _) => {
                    return Err(KeyringError::Syntax(
                        "missing field `generation` (format v2)".to_owned(),
                    ))
                }
                (KEYRING_FORMAT, _, None) => {
                    return Err(KeyringError::Syntax(
                        "missing field `keyring_id` (format v2)".to_owned(),
                    ))
                }
                (KEYRING_FORMAT_V1, None, None) => (0, None),
                (KEYRING_FORMAT_V1, _, _) => {
                    return Err(KeyringError::Syntax(
                        "unknown field `generation` or `keyring_id` (format v1 has neither)"
                            .to_owned(),
                    ))
                }
                _ => return Err(KeyringError::Format(form.format)),
            };
        let mut entries = Vec::with_capacity(form.keys.len());
        for key in form.keys {
            let secret = match &key.secret {
                None => None,
                Some(text) => Some(
                    Secret::from_b64(text)
                        .ok_or_else(|| KeyringError::BadSecret(key.id.clone()))?,
                ),
            };
            entries.push(KeyEntry {
                id: key.id,
                purpose: key.purpose,
                state: key.state,
                created_at: key.created_at,
                secret,
            });
        }
        let mut ring = Keyring::from_entries(entries)?;
        ring.generation = generation;
        ring.keyring_id = keyring_id;
        Ok(ring)
    }

    /// Reads and validates a keyring file with every secret, refusing one that group or others
    /// can read. A sealed file is opened with the KEK from the environment ([`Kek::from_env`]);
    /// a KMS-wrapped one with the KMS it names.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        Keyring::load_for(path, Need::ALL)
    }

    /// [`Keyring::load`], keeping only the secrets `need` asks for (and destroyed entries, as
    /// records). A KMS-wrapped file unwraps only those, one KMS call each; a clear or
    /// KEK-sealed file is read whole and the rest dropped from memory at once.
    pub fn load_for(path: &Path, need: Need) -> Result<Self, KeyringError> {
        let text = Keyring::read_owner_only(path)?;
        if super::wrapped::is_wrapped(&text) {
            let wrapped = super::wrapped::WrappedKeyring::from_text(&text)?;
            let kms = crate::kms::open(&wrapped.kms)?;
            return wrapped.unwrap(kms.as_ref(), need);
        }
        let mut ring = if kek::is_sealed(&text) {
            let kek = Kek::from_env()?.ok_or_else(|| KekError::Missing(path.to_owned()))?;
            Keyring::from_sealed(&text, kek)?
        } else {
            Keyring::from_json(&text)?
        };
        if need != Need::ALL {
            // `ended` still lists every retired and destroyed id of the file.
            ring.entries
                .retain(|e| e.state == KeyState::Destroyed || need.wants(e.purpose, e.state));
        }
        Ok(ring)
    }

    /// The text of a keyring file: a regular file of at most [`crate::fsio::KEYRING_LIMIT`]
    /// bytes, refusing a mode [`crate::secret_file`] refuses (others' access, group write,
    /// group read by a group the deployment does not name). A file with such a mode that is not a
    /// keyring at all (`--keyring /etc/passwd`) is called that, without advice to chmod it.
    pub(crate) fn read_owner_only(path: &Path) -> Result<Zeroizing<String>, KeyringError> {
        use crate::fsio::{open_regular, read_opened, text_of, KEYRING_LIMIT};
        let file = open_regular(path, "keyring", KEYRING_LIMIT)?;
        let mode = crate::secret_file::check_file(&file).map_err(|source| KeyringError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bytes = Zeroizing::new(read_opened(file, path, "keyring", KEYRING_LIMIT)?);
        let text = Zeroizing::new(text_of(bytes.to_vec(), path, "keyring")?);
        if let Err(problem) = mode {
            return Err(if keyring_format(&text) {
                KeyringError::Permissions {
                    path: path.to_owned(),
                    problem,
                }
            } else {
                KeyringError::NotAKeyring {
                    path: path.to_owned(),
                    problem,
                }
            });
        }
        Ok(text)
    }

    /// Opens the text of a sealed keyring file with its key-encryption key and parses it.
    pub fn from_sealed(text: &str, kek: Kek) -> Result<Self, KeyringError> {
        let clear = kek.open(text)?;
        let clear = std::str::from_utf8(&clear)
            .map_err(|_| KeyringError::Syntax("sealed keyring is not UTF-8".to_owned()))?;
        let mut ring = Keyring::from_json(clear)?;
        ring.kek = Some(std::sync::Arc::new(kek));
        ring.protection = Protection::Sealed;
        Ok(ring)
    }

    /// The KEK the file is sealed under, if it is.
    pub fn kek(&self) -> Option<&Kek> {
        self.kek.as_deref()
    }

    /// Seals the file under `kek` from the next [`Keyring::save`] on (`None`: write it clear).
    pub fn set_kek(&mut self, kek: Option<Kek>) {
        self.protection = if kek.is_some() {
            Protection::Sealed
        } else {
            Protection::Clear
        };
        self.kek = kek.map(std::sync::Arc::new);
    }

    /// The file's generation: 0 for a version-1 file, then one more with every write.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How the file was (or will be written) protected.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// Every key id the file lists as retired or destroyed.
    pub fn ended_ids(&self) -> &[String] {
        &self.ended
    }

    /// Writes the keyring with mode 0600, atomically (temporary file, fsync, rename), as the
    /// next generation (format version 2, which a version-1 file is upgraded to).
    pub fn save(&mut self, path: &Path) -> Result<(), KeyringError> {
        self.generation = next_generation(self.generation)?;
        self.keyring_id.get_or_insert_with(new_keyring_id);
        self.write(path, Replace::Existing)
    }

    /// [`Keyring::save`] to a new file: refused if anything exists at `path`, whenever it
    /// appeared (`keys init`).
    pub fn save_new(&mut self, path: &Path) -> Result<(), KeyringError> {
        self.generation = next_generation(self.generation)?;
        self.keyring_id.get_or_insert_with(new_keyring_id);
        self.write(path, Replace::Never)
    }

    /// Writes the keyring as it is, at its current generation, to a new file: a copy, not a
    /// change (`keys export` writes the part a process needs this way, so that the copy's
    /// generation and keyring id follow its source's). A version-1 keyring has no id to
    /// follow: it is refused (`keys upgrade` gives it one).
    pub fn write_copy(&self, path: &Path) -> Result<(), KeyringError> {
        if self.keyring_id.is_none() {
            return Err(KeyringError::NotUpgraded);
        }
        self.write(path, Replace::Never)
    }

    /// The keyring id (`None` for a version-1 file).
    pub fn keyring_id(&self) -> Option<&str> {
        self.keyring_id.as_deref()
    }

    /// The KMS key of a KMS-wrapped file.
    pub fn kms_uri(&self) -> Option<&str> {
        self.kms_uri.as_deref()
    }

    fn write(&self, path: &Path, replace: Replace) -> Result<(), KeyringError> {
        let form = FileForm {
            format: KEYRING_FORMAT.to_owned(),
            generation: Some(self.generation),
            keyring_id: self.keyring_id.clone(),
            keys: self
                .entries
                .iter()
                .map(|e| FileEntry {
                    id: e.id.clone(),
                    purpose: e.purpose,
                    state: e.state,
                    created_at: e.created_at.clone(),
                    secret: e.secret.as_ref().map(Secret::to_b64),
                })
                .collect(),
        };
        let mut text = Zeroizing::new(
            serde_json::to_string_pretty(&form).expect("keyring form always serializes"),
        );
        text.push('\n');
        if let Some(kek) = &self.kek {
            text = Zeroizing::new(kek.seal(text.as_bytes()));
        }
        crate::secret_file::write(path, text.as_bytes(), replace).map_err(|source| {
            KeyringError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// A new keyring with one active key of each purpose.
    pub fn generate() -> Self {
        let now = now_rfc3339();
        Keyring {
            keyring_id: Some(new_keyring_id()),
            entries: vec![
                new_entry(Purpose::Pseudonym, &now),
                new_entry(Purpose::Encryption, &now),
                new_entry(Purpose::Subject, &now),
            ],
            ..Keyring::default()
        }
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The active key of a purpose.
    pub fn active(&self, purpose: Purpose) -> Result<&KeyEntry, KeyringError> {
        self.entries
            .iter()
            .find(|e| e.purpose == purpose && e.state == KeyState::Active)
            .ok_or(KeyringError::NoActive(purpose.as_str()))
    }

    /// Adds a new active key of `purpose` (with `id`, or a generated one) and retires the
    /// previously active one. Returns the new id.
    pub fn rotate(&mut self, purpose: Purpose, id: Option<String>) -> Result<String, KeyringError> {
        refuse_subject_rotation(self.entries.iter().map(|e| (e.purpose, e.state)), purpose)?;
        let now = now_rfc3339();
        let mut entry = new_entry(purpose, &now);
        if let Some(id) = id {
            entry.id = id;
        }
        if !valid_id(&entry.id) {
            return Err(KeyringError::BadId(entry.id));
        }
        if self.get(&entry.id).is_some() {
            return Err(KeyringError::DuplicateId(entry.id));
        }
        for old in &mut self.entries {
            if old.purpose == purpose && old.state == KeyState::Active {
                old.state = KeyState::Retired;
                self.ended.push(old.id.clone());
            }
        }
        let id = entry.id.clone();
        self.entries.push(entry);
        Ok(id)
    }

    /// Removes the secret of key `id`, keeping its entry as a record (crypto-shredding). The
    /// active key of a purpose is refused unless `force`: without it no new output can be made.
    pub fn destroy(&mut self, id: &str, force: bool) -> Result<(), KeyringError> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| KeyringError::UnknownId(id.to_owned()))?;
        refuse_destroy(id, entry.purpose, entry.state, force)?;
        entry.state = KeyState::Destroyed;
        entry.secret = None; // dropping the Secret zeroizes it
        if !self.ended.iter().any(|e| e == id) {
            self.ended.push(id.to_owned());
        }
        Ok(())
    }

    /// Whether a file exists at `path` (so `init` can refuse to overwrite).
    pub fn refuse_existing(path: &Path) -> Result<(), KeyringError> {
        // A link counts, even a dangling one: writing through it would create its target.
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(KeyringError::Exists {
                path: path.to_owned(),
            });
        }
        Ok(())
    }
}

/// `kr-` and 16 random hex digits: a keyring's id.
pub(crate) fn new_keyring_id() -> String {
    use rand::RngCore;
    format!("kr-{:016x}", rand::rngs::OsRng.next_u64())
}

/// A keyring id as a file may carry it: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_keyring_id(id: &str) -> Result<(), KeyringError> {
    let fits = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fits {
        Ok(())
    } else {
        Err(KeyringError::Syntax(
            "`keyring_id` is not 1 to 64 characters of A-Z a-z 0-9 . _ -".to_owned(),
        ))
    }
}

/// The generation after `generation`; a file already at the largest one cannot be written
/// again (a worker would take a wrapped-around 0 for a rollback).
pub(crate) fn next_generation(generation: u64) -> Result<u64, KeyringError> {
    generation.checked_add(1).ok_or_else(|| {
        KeyringError::Syntax(format!(
            "generation {generation} is the largest there is, so the file cannot be written \
             again (no program counts this far: it was set by hand)"
        ))
    })
}

/// The ids of entries that are retired or destroyed.
pub(crate) fn ended_ids<'a>(entries: impl Iterator<Item = (&'a String, KeyState)>) -> Vec<String> {
    entries
        .filter(|(_, state)| *state != KeyState::Active)
        .map(|(id, _)| id.clone())
        .collect()
}

/// Whether a key in `state` may be destroyed: not twice, and an active one only when forced.
/// Shared by the clear and the KMS-wrapped keyring.
pub(crate) fn refuse_destroy(
    id: &str,
    purpose: Purpose,
    state: KeyState,
    force: bool,
) -> Result<(), KeyringError> {
    match state {
        KeyState::Destroyed => Err(KeyringError::AlreadyDestroyed(id.to_owned())),
        KeyState::Active if !force => Err(KeyringError::DestroyActive {
            id: id.to_owned(),
            purpose: purpose.as_str(),
        }),
        _ => Ok(()),
    }
}

/// Whether file text names one of the three keyring formats (clear, KEK-sealed, KMS-wrapped).
fn keyring_format(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct FormatOnly {
        format: String,
    }
    serde_json::from_str::<FormatOnly>(text).is_ok_and(|f| {
        [
            KEYRING_FORMAT,
            KEYRING_FORMAT_V1,
            super::SEALED_FORMAT,
            super::KMS_FORMAT,
            super::wrapped::KMS_FORMAT_V1,
        ]
        .contains(&f.format.as_str())
    })
}

fn syntax_category(e: &serde_json::Error) -> String {
    // "unknown field `x`, expected one of ..." names only field names; keep it, it is the
    // most useful part. Other data errors can quote input, so they are summarised.
    let message = e.to_string();
    match e.classify() {
        serde_json::error::Category::Data if message.starts_with("unknown field") => message
            .split(" at line")
            .next()
            .unwrap_or("unknown field")
            .to_owned(),
        serde_json::error::Category::Data if message.starts_with("missing field") => message
            .split(" at line")
            .next()
            .unwrap_or("missing field")
            .to_owned(),
        serde_json::error::Category::Data => "a field has the wrong type or value".to_owned(),
        serde_json::error::Category::Syntax => "malformed JSON".to_owned(),
        serde_json::error::Category::Eof => "unexpected end of JSON".to_owned(),
        serde_json::error::Category::Io => "read error".to_owned(),
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    now.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// The subject key is added by `keys init`, or by `rotate` on a keyring without a live one,
/// and never rotated: a new one changes every subject id, so the registry's erasures and
/// consents would match no one. After the subject key is destroyed a new one may be added; a
/// worker then refuses a registry holding records under the old one (docs/security.md, "A
/// person's rights"), so the new key goes with a new registry topic.
pub(crate) fn refuse_subject_rotation(
    mut entries: impl Iterator<Item = (Purpose, KeyState)>,
    purpose: Purpose,
) -> Result<(), KeyringError> {
    if purpose == Purpose::Subject
        && entries.any(|(p, state)| p == Purpose::Subject && state != KeyState::Destroyed)
    {
        return Err(KeyringError::SubjectKeyRotation);
    }
    Ok(())
}

/// A new active key made now (for the KMS keyring's `rotate`).
pub(crate) fn new_active_entry(purpose: Purpose) -> KeyEntry {
    new_entry(purpose, &now_rfc3339())
}

/// A new active key with an id like `p-20261125-3fa9c2` (purpose letter, date, random suffix).
fn new_entry(purpose: Purpose, created_at: &str) -> KeyEntry {
    use rand::RngCore;
    let letter = match purpose {
        Purpose::Pseudonym => 'p',
        Purpose::Encryption => 'e',
        Purpose::Subject => 's',
    };
    let date: String = created_at
        .chars()
        .take(10)
        .filter(char::is_ascii_digit)
        .collect();
    let suffix = rand::rngs::OsRng.next_u32() & 0x00ff_ffff;
    KeyEntry {
        id: format!("{letter}-{date}-{suffix:06x}"),
        purpose,
        state: KeyState::Active,
        created_at: created_at.to_owned(),
        secret: Some(Secret::generate()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_generation_is_never_wrapped_around() {
        assert_eq!(next_generation(0).unwrap(), 1);
        let error = next_generation(u64::MAX).unwrap_err().to_string();
        assert!(error.contains("cannot be written again"), "{error}");
        let mut ring = Keyring::generate();
        ring.generation = u64::MAX;
        let dir = std::env::temp_dir().join(format!("pz-gen-{}", std::process::id()));
        assert!(ring.save(&dir.join("keyring.json")).is_err());
        assert_eq!(ring.generation(), u64::MAX);
    }
}
