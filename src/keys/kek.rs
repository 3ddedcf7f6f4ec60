//! The key-encryption key (KEK): seals the whole keyring file so data keys never rest in clear.
//!
//! The KEK is 32 random bytes, standard base64, given to the process in the environment
//! variable `PSEUDONYMIZER_KEK` or in a file named by `PSEUDONYMIZER_KEK_FILE` (mode 0600).
//! It is never written next to the keyring. A sealed keyring file is
//!
//! ```json
//! {"format": "pseudonymizer-keyring-sealed/v1", "kek_id": "kek-1a2b3c4d", "keyring": "<b64>"}
//! ```
//!
//! where `keyring` is a spec §4 envelope of the clear keyring JSON, field path `keyring`, key id
//! `kek_id`, under `HKDF-SHA256(KEK, info = "pseudonymizer/v1/keyring-kek")`. The id is a
//! fingerprint (`kek-` and 8 hex digits of `HKDF(KEK, info = "pseudonymizer/v1/kek-id")`), so a
//! wrong KEK is named as such instead of failing as "tampered". See `docs/security.md` for how a
//! KMS or Vault transit key takes the KEK's place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{derive, SealKey, Secret};
use crate::envelope;

/// Environment variable holding the KEK itself (base64).
pub const KEK_ENV: &str = "PSEUDONYMIZER_KEK";
/// Environment variable naming a file that holds the KEK (base64, mode 0600).
pub const KEK_FILE_ENV: &str = "PSEUDONYMIZER_KEK_FILE";
/// The `format` of a sealed keyring file.
pub const SEALED_FORMAT: &str = "pseudonymizer-keyring-sealed/v1";

const INFO_KEK: &[u8] = b"pseudonymizer/v1/keyring-kek";
/// The KEK's XAES-256-GCM key: keyrings sealed from now on are version-2 envelopes.
const INFO_KEK_V2: &[u8] = b"pseudonymizer/v2/keyring-kek";
const INFO_KEK_ID: &[u8] = b"pseudonymizer/v1/kek-id";
const FIELD_PATH: &str = "keyring";

/// Why a KEK could not be had or did not open the keyring. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("keyring {0} is sealed: set {KEK_ENV} or {KEK_FILE_ENV} to its key-encryption key")]
    Missing(PathBuf),
    #[error("the key-encryption key in {0} is not base64 of exactly 32 bytes")]
    Malformed(String),
    #[error("cannot read the key-encryption key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key-encryption key file {path} is refused: {problem}")]
    Permissions {
        path: PathBuf,
        problem: crate::secret_file::ModeProblem,
    },
    #[error("the keyring is sealed under {sealed}, but the key-encryption key given is {given}")]
    WrongKek { sealed: String, given: String },
    #[error("the sealed keyring does not authenticate (corrupt or tampered)")]
    Tampered,
    #[error("the sealed keyring file is not valid: {0}")]
    Syntax(String),
    #[error(transparent)]
    File(#[from] crate::fsio::FileError),
}

/// The KEK text taken out of the environment at start (`hardening`), zeroized when replaced.
static STASHED_KEK: std::sync::Mutex<Option<Zeroizing<String>>> = std::sync::Mutex::new(None);

/// Keeps the text of `PSEUDONYMIZER_KEK` in memory, so that the variable can be scrubbed from
/// the process's environment (`/proc/PID/environ`) and the KEK still be read at every load.
pub fn stash_kek(text: &str) {
    *STASHED_KEK.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Zeroizing::new(text.trim().to_owned()));
}

/// A key-encryption key. `Debug` shows its fingerprint id only.
pub struct Kek {
    id: String,
    key: SealKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedForm {
    format: String,
    kek_id: String,
    keyring: String,
}

impl Kek {
    /// The KEK of a 32-byte secret.
    pub fn from_secret(secret: &Secret) -> Self {
        let fingerprint = derive(secret, INFO_KEK_ID);
        let id = format!(
            "kek-{:02x}{:02x}{:02x}{:02x}",
            fingerprint[0], fingerprint[1], fingerprint[2], fingerprint[3]
        );
        let key = SealKey::derived(&id, secret, INFO_KEK, INFO_KEK_V2);
        Kek { id, key }
    }

    /// The KEK from `PSEUDONYMIZER_KEK` (as taken out of the environment at start by
    /// `hardening`, or still in it) or the file named by `PSEUDONYMIZER_KEK_FILE`; `None` when
    /// neither is set.
    pub fn from_env() -> Result<Option<Self>, KekError> {
        let stashed = STASHED_KEK
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(text) = stashed {
            let secret =
                Secret::from_b64(&text).ok_or_else(|| KekError::Malformed(KEK_ENV.to_owned()))?;
            return Ok(Some(Kek::from_secret(&secret)));
        }
        if let Some(text) = std::env::var_os(KEK_ENV) {
            let text = Zeroizing::new(text.to_string_lossy().trim().to_owned());
            let secret =
                Secret::from_b64(&text).ok_or_else(|| KekError::Malformed(KEK_ENV.to_owned()))?;
            return Ok(Some(Kek::from_secret(&secret)));
        }
        match std::env::var_os(KEK_FILE_ENV) {
            Some(path) => Kek::from_file(Path::new(&path)).map(Some),
            None => Ok(None),
        }
    }

    /// Reads a KEK file (base64; a regular file of at most [`crate::fsio::SECRET_LIMIT`]
    /// bytes, owner-only or group-read by the group [`crate::secret_file`] names).
    pub fn from_file(path: &Path) -> Result<Self, KekError> {
        let read = |source| KekError::Read {
            path: path.to_owned(),
            source,
        };
        use crate::fsio::{open_regular, read_opened, text_of, SECRET_LIMIT};
        let what = "key-encryption key file";
        let file = open_regular(path, what, SECRET_LIMIT)?;
        if let Err(problem) = crate::secret_file::check_file(&file).map_err(read)? {
            return Err(KekError::Permissions {
                path: path.to_owned(),
                problem,
            });
        }
        let bytes = Zeroizing::new(read_opened(file, path, what, SECRET_LIMIT)?);
        let text = Zeroizing::new(text_of(bytes.to_vec(), path, what)?);
        let secret = Secret::from_b64(text.trim())
            .ok_or_else(|| KekError::Malformed(path.display().to_string()))?;
        Ok(Kek::from_secret(&secret))
    }

    /// The fingerprint id written in sealed keyrings.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sealed file text of a clear keyring's JSON.
    pub(crate) fn seal(&self, clear: &[u8]) -> String {
        use base64::Engine as _;
        let mut sealed = Vec::with_capacity(envelope::sealed_len(&self.key, clear.len()));
        envelope::seal_into(&self.key, FIELD_PATH, clear, &mut sealed);
        let form = SealedForm {
            format: SEALED_FORMAT.to_owned(),
            kek_id: self.id.clone(),
            keyring: base64::engine::general_purpose::STANDARD.encode(sealed),
        };
        let mut text = serde_json::to_string_pretty(&form).expect("sealed form serializes");
        text.push('\n');
        text
    }

    /// The clear keyring JSON inside a sealed file's text.
    pub(crate) fn open(&self, text: &str) -> Result<Zeroizing<Vec<u8>>, KekError> {
        use base64::Engine as _;
        let form: SealedForm =
            serde_json::from_str(text).map_err(|e| KekError::Syntax(e.to_string()))?;
        if form.format != SEALED_FORMAT {
            return Err(KekError::Syntax(format!("format {:?}", form.format)));
        }
        if form.kek_id != self.id {
            return Err(KekError::WrongKek {
                sealed: form.kek_id,
                given: self.id.clone(),
            });
        }
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(form.keyring.as_bytes())
            .map_err(|_| KekError::Syntax("`keyring` is not base64".to_owned()))?;
        envelope::open_with(&self.key, FIELD_PATH, &sealed)
            .map(Zeroizing::new)
            .map_err(|_| KekError::Tampered)
    }
}

/// Whether keyring file text is the sealed form (looks only at `format`).
pub(crate) fn is_sealed(text: &str) -> bool {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: String,
    }
    serde_json::from_str::<FormatOnly>(text).is_ok_and(|f| f.format == SEALED_FORMAT)
}
