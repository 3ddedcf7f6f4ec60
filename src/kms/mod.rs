//! Keys rooted in a key management service: each keyring secret wrapped on its own by a KMS
//! key that never leaves the KMS.
//!
//! [`Kms`] is the small interface a provider implements: wrap (encrypt) and unwrap (decrypt)
//! 32 bytes with an *encryption context*, a set of name–value pairs the KMS binds to the
//! ciphertext and checks on unwrap. [`aws`] implements it with the AWS SDK for Rust; Vault
//! Transit, Google Cloud KMS and Azure Key Vault map onto the same two calls
//! (docs/security.md, "Other KMSs"). The file that holds the wrapped secrets is
//! `keys::wrapped`, above this module: the KMS client knows nothing of keyrings.
//!
//! Every call is counted ([`calls`]), so the worker can show that it makes one KMS call per
//! key per load and none per record.

pub mod aws;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use zeroize::Zeroizing;

/// Why a KMS call failed. Never carries key bytes or plaintext.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KmsError {
    /// The KMS could not be reached or answered with a transient failure: retrying may help.
    #[error("the KMS at {uri} is unavailable: {reason}")]
    Unavailable { uri: String, reason: String },
    /// The KMS refused: wrong key, no permission, or a ciphertext that does not belong to the
    /// encryption context given (a wrapped secret moved to another entry or keyring).
    #[error("the KMS at {uri} refused: {reason}")]
    Refused { uri: String, reason: String },
    /// The URI names no provider this build knows, or is malformed.
    #[error("KMS URI {0:?} is not supported (aws-kms://<key ARN, alias ARN or key id>)")]
    BadUri(String),
}

impl KmsError {
    /// Whether waiting and retrying may succeed (the worker's start and reload use this).
    pub fn is_transient(&self) -> bool {
        matches!(self, KmsError::Unavailable { .. })
    }
}

/// The name–value pairs bound to one wrapped secret: which keyring, which entry, what for.
pub type Context = BTreeMap<String, String>;

/// The encryption context of one keyring entry. A wrapped secret copied into another entry,
/// or into another keyring, does not unwrap: the KMS checks these pairs.
pub fn entry_context(keyring_id: &str, key_id: &str, purpose: &str) -> Context {
    [
        ("pseudonymizer:keyring", keyring_id),
        ("pseudonymizer:key-id", key_id),
        ("pseudonymizer:purpose", purpose),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A key management service holding one key-encryption key, named by a URI.
pub trait Kms: Send + Sync {
    /// The URI the key was opened with (`aws-kms://arn:aws:kms:…`), as written in keyrings.
    fn uri(&self) -> &str;
    /// Wraps `plaintext` under the KMS key, bound to `context`.
    fn wrap(&self, plaintext: &[u8], context: &Context) -> Result<Vec<u8>, KmsError>;
    /// Unwraps what [`Kms::wrap`] returned, with the same `context`.
    fn unwrap(&self, wrapped: &[u8], context: &Context) -> Result<Zeroizing<Vec<u8>>, KmsError>;
}

/// Opens the KMS key a URI names: `aws-kms://…` is AWS KMS (through its default credential
/// chain; `AWS_ENDPOINT_URL_KMS` overrides the endpoint, for VPC endpoints and emulators).
pub fn open(uri: &str) -> Result<Arc<dyn Kms>, KmsError> {
    match uri.strip_prefix(aws::SCHEME) {
        Some(key) if !key.is_empty() => Ok(Arc::new(aws::AwsKms::new(uri, key)?)),
        _ => Err(KmsError::BadUri(uri.to_owned())),
    }
}

/// KMS calls made by this process, by operation and outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub wrap_ok: u64,
    pub wrap_failed: u64,
    pub unwrap_ok: u64,
    pub unwrap_failed: u64,
}

static WRAP_OK: AtomicU64 = AtomicU64::new(0);
static WRAP_FAILED: AtomicU64 = AtomicU64::new(0);
static UNWRAP_OK: AtomicU64 = AtomicU64::new(0);
static UNWRAP_FAILED: AtomicU64 = AtomicU64::new(0);

/// Every KMS call this process made so far (`pseudonymizer_kms_calls_total`).
pub fn calls() -> Calls {
    Calls {
        wrap_ok: WRAP_OK.load(Ordering::Relaxed),
        wrap_failed: WRAP_FAILED.load(Ordering::Relaxed),
        unwrap_ok: UNWRAP_OK.load(Ordering::Relaxed),
        unwrap_failed: UNWRAP_FAILED.load(Ordering::Relaxed),
    }
}

/// Counts one call's outcome; providers call it once per request they send.
pub(crate) fn count<T>(unwrap: bool, result: &Result<T, KmsError>) {
    let counter = match (unwrap, result.is_ok()) {
        (false, true) => &WRAP_OK,
        (false, false) => &WRAP_FAILED,
        (true, true) => &UNWRAP_OK,
        (true, false) => &UNWRAP_FAILED,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
