//! Keys: the keyring file, its secrets, and the working keys derived from them.
//!
//! A keyring secret is never used directly (spec §2). [`PseudonymKey`] holds the HMAC key for
//! tokens (with its keyed state computed once) and the Crypto-PAn cipher; [`SealKey`] (the
//! envelope's key type, derived here) holds the AES-256-GCM cipher. [`KeySet`] is what the transform needs: the active key of each purpose,
//! plus every key that still has a secret, for look-ups and for opening old envelopes.

mod kek;
mod keyring;
pub mod policy;
mod secret;
mod wrapped;

use std::collections::HashMap;
use std::sync::Arc;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

pub use kek::{stash_kek, Kek, KekError, KEK_ENV, KEK_FILE_ENV, SEALED_FORMAT};
pub(crate) use keyring::new_active_entry;
pub(crate) use keyring::valid_id;
pub use keyring::{
    KeyEntry, KeyState, Keyring, KeyringError, Protection, Purpose, KEYRING_FORMAT,
    KEYRING_FORMAT_V1,
};
pub use secret::{Secret, SECRET_LEN};
pub use wrapped::{is_wrapped, WrappedEntry, WrappedKeyring, KMS_FORMAT, KMS_FORMAT_V1};

use crate::cryptopan::CryptoPan;
pub use crate::envelope::SealKey;
use crate::envelope::{self, OpenError};

/// How much of one purpose's keys a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// None of them.
    Nothing,
    /// The active key only (new output).
    Active,
    /// Every key with a secret (opening old envelopes, finding old tokens).
    All,
}

/// Which secrets a command loads: least privilege between what a process does and what it
/// can open. A KMS-wrapped keyring unwraps exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub pseudonym: Scope,
    pub encryption: Scope,
    /// The subject key has one epoch: `Active` and `All` both mean it.
    pub subject: Scope,
}

impl Need {
    /// Every secret (the `keys` commands, tests).
    pub const ALL: Need = Need {
        pseudonym: Scope::All,
        encryption: Scope::All,
        subject: Scope::All,
    };
    /// New output only: the worker, `transform`, `check`.
    pub const NEW_OUTPUT: Need = Need {
        pseudonym: Scope::Active,
        encryption: Scope::Active,
        subject: Scope::Active,
    };
    /// Tokens of every epoch: `lookup` (and the subject key, to say who was erased).
    pub const TOKENS: Need = Need {
        pseudonym: Scope::All,
        encryption: Scope::Nothing,
        subject: Scope::Active,
    };
    /// Envelopes of every key: `decrypt`, `reseal`, `dlq replay`.
    pub const ENVELOPES: Need = Need {
        pseudonym: Scope::Nothing,
        encryption: Scope::All,
        subject: Scope::Nothing,
    };
    /// The `subjects` commands and `subjects export`: subject ids, the person's tokens under
    /// every epoch (erasure notices, the export's search), and every envelope (the export
    /// opens the person's sealed fields).
    pub const SUBJECTS: Need = Need {
        pseudonym: Scope::All,
        encryption: Scope::All,
        subject: Scope::Active,
    };

    /// Whether a key of `purpose` in `state` is needed.
    pub fn wants(&self, purpose: Purpose, state: KeyState) -> bool {
        let scope = match purpose {
            Purpose::Pseudonym => self.pseudonym,
            Purpose::Encryption => self.encryption,
            Purpose::Subject => self.subject,
        };
        match scope {
            Scope::Nothing => false,
            Scope::Active => state == KeyState::Active,
            Scope::All => state != KeyState::Destroyed,
        }
    }
}

/// HKDF info for the token HMAC key (spec §2).
pub const INFO_HMAC: &[u8] = b"pseudonymizer/v1/hmac-sha256";
/// HKDF info for the Crypto-PAn key (spec §2).
pub const INFO_CRYPTOPAN: &[u8] = b"pseudonymizer/v1/cryptopan";
/// HKDF info for the AES-256-GCM key (spec §2), which opens version-1 envelopes.
pub const INFO_AES_GCM: &[u8] = b"pseudonymizer/v1/aes-256-gcm";
/// HKDF info for the XAES-256-GCM key of version-2 envelopes (docs/formats.md §4).
pub const INFO_XAES_GCM: &[u8] = b"pseudonymizer/v2/xaes-256-gcm";
/// HKDF info for the subject-id HMAC key (docs/formats.md §5).
pub const INFO_SUBJECT_ID: &[u8] = b"pseudonymizer/v3/subject-id/hmac-sha256";
/// HKDF info for the subject-hint SipHash key (docs/formats.md §5); the first 16 bytes are used.
pub const INFO_SUBJECT_HINT: &[u8] = b"pseudonymizer/v3/subject-hint/siphash-2-4";

/// `HKDF-SHA256(ikm = secret, salt = none, info, L = 32)`.
pub fn derive(secret: &Secret, info: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(None, secret.expose());
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(info, okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// The HKDF info of a pseudonymisation domain's working keys (docs/formats.md §2):
/// `"pseudonymizer/v2/domain/" || domain || "/hmac-sha256"` (or `"/cryptopan"`).
pub fn domain_info(domain: &str, working_key: &str) -> Vec<u8> {
    format!("pseudonymizer/v2/domain/{domain}/{working_key}").into_bytes()
}

/// Longest pseudonymisation domain name.
pub const DOMAIN_MAX: usize = 64;

/// Checks a pseudonymisation domain name: 1–64 characters of `a-z 0-9 . _ -`.
pub fn check_domain(name: &str) -> Result<(), String> {
    let valid = (1..=DOMAIN_MAX).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "domain {name:?} must be 1-{DOMAIN_MAX} characters of a-z, 0-9, '.', '_' and '-'"
        ))
    }
}

/// Working keys of one pseudonym secret: the token HMAC and the Crypto-PAn cipher, in the
/// default pseudonymisation domain or in a named one.
pub struct PseudonymKey {
    id: String,
    // HMAC with the key already absorbed: cloning it skips re-hashing the key pads per token.
    hmac: Hmac<Sha256>,
    cryptopan: CryptoPan,
    /// The domain these working keys belong to (`None`: the default, spec v1's keys).
    domain: Option<String>,
    /// Kept (zeroized on drop) to derive the keys of a named domain.
    secret: Secret,
}

impl PseudonymKey {
    /// Derives the working keys of a pseudonym secret (spec §2, the default domain).
    pub fn new(id: &str, secret: &Secret) -> Self {
        PseudonymKey::derived(id, secret, None)
    }

    /// The working keys of the same secret in pseudonymisation domain `domain`: tokens and
    /// Crypto-PAn images unrelated to every other domain's (docs/formats.md §3). `domain` must
    /// pass [`check_domain`]; the config checks it at load.
    pub fn in_domain(&self, domain: &str) -> Self {
        PseudonymKey::derived(&self.id, &self.secret, Some(domain))
    }

    fn derived(id: &str, secret: &Secret, domain: Option<&str>) -> Self {
        let (hmac_key, pan_key) = match domain {
            None => (derive(secret, INFO_HMAC), derive(secret, INFO_CRYPTOPAN)),
            Some(domain) => (
                derive(secret, &domain_info(domain, "hmac-sha256")),
                derive(secret, &domain_info(domain, "cryptopan")),
            ),
        };
        PseudonymKey {
            id: id.to_owned(),
            hmac: <Hmac<Sha256> as Mac>::new_from_slice(hmac_key.as_ref())
                .expect("HMAC accepts any key length"),
            cryptopan: CryptoPan::new(&pan_key),
            domain: domain.map(str::to_owned),
            secret: secret.clone(),
        }
    }

    /// The pseudonymisation domain, `None` for the default.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The key id that prefixes every token.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A fresh HMAC state keyed with this key's token key.
    pub fn hmac(&self) -> Hmac<Sha256> {
        self.hmac.clone()
    }

    /// The Crypto-PAn cipher for prefix-preserving IPs.
    pub fn cryptopan(&self) -> &CryptoPan {
        &self.cryptopan
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PseudonymKey({})", self.id)
    }
}

/// The working keys of the subject secret (docs/formats.md §5): the HMAC key of subject ids,
/// and the SipHash key of subject hints. Shaped like a [`PseudonymKey`] on purpose: a subject
/// id is computed exactly as a token is, under this key, so another team recomputes one with
/// the token code it already has.
pub struct SubjectKey {
    id: String,
    hmac: Hmac<Sha256>,
    /// SipHash-2-4's two 64-bit key words (little-endian halves of 16 derived bytes).
    hint: Zeroizing<[u64; 2]>,
}

impl SubjectKey {
    /// Derives the subject-id key of a subject secret.
    pub fn new(id: &str, secret: &Secret) -> Self {
        let hint = derive(secret, INFO_SUBJECT_HINT);
        let word = |at: usize| u64::from_le_bytes(hint[at..at + 8].try_into().expect("8 bytes"));
        SubjectKey {
            id: id.to_owned(),
            hmac: <Hmac<Sha256> as Mac>::new_from_slice(derive(secret, INFO_SUBJECT_ID).as_ref())
                .expect("HMAC accepts any key length"),
            hint: Zeroizing::new([word(0), word(8)]),
        }
    }

    /// A fresh SipHash-2-4 state keyed with the subject-hint key.
    pub fn hint_hasher(&self) -> siphasher::sip::SipHasher24 {
        siphasher::sip::SipHasher24::new_with_keys(self.hint[0], self.hint[1])
    }

    /// The key id that prefixes every subject id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A fresh HMAC state keyed with the subject-id key.
    pub fn hmac(&self) -> Hmac<Sha256> {
        self.hmac.clone()
    }
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectKey({})", self.id)
    }
}

/// The working key of one encryption secret. The type is the envelope's own
/// ([`crate::envelope::SealKey`]); deriving it from a keyring secret belongs here, with the
/// other derivations.
impl SealKey {
    /// Derives the envelope keys of an encryption secret (AES-256-GCM for version 1,
    /// XAES-256-GCM for version 2).
    pub fn new(id: &str, secret: &Secret) -> Self {
        SealKey::derived(id, secret, INFO_AES_GCM, INFO_XAES_GCM)
    }

    /// Envelope keys derived with other HKDF `info`s (the keyring's KEK uses its own, so a KEK
    /// and a data key can never be the same AES key).
    pub(crate) fn derived(id: &str, secret: &Secret, info_v1: &[u8], info_v2: &[u8]) -> Self {
        SealKey::from_keys(
            id,
            envelope::WorkingKeys {
                aes_256_gcm: &derive(secret, info_v1),
                xaes_256_gcm: &derive(secret, info_v2),
            },
        )
    }
}

/// The working keys derived from a keyring.
#[derive(Debug, Clone)]
pub struct KeySet {
    pseudonym: Option<Arc<PseudonymKey>>,
    encryption: Option<Arc<SealKey>>,
    all_pseudonym: Vec<Arc<PseudonymKey>>,
    all_seal: HashMap<String, Arc<SealKey>>,
    subject: Option<Arc<SubjectKey>>,
    destroyed: Vec<String>,
}

impl KeySet {
    /// Derives every working key of a keyring. Destroyed keys are remembered by id only.
    pub fn from_keyring(keyring: &Keyring) -> Self {
        let mut set = KeySet {
            pseudonym: None,
            encryption: None,
            all_pseudonym: Vec::new(),
            all_seal: HashMap::new(),
            subject: None,
            destroyed: Vec::new(),
        };
        for entry in keyring.entries() {
            let Some(secret) = &entry.secret else {
                set.destroyed.push(entry.id.clone());
                continue;
            };
            match entry.purpose {
                Purpose::Pseudonym => {
                    let key = Arc::new(PseudonymKey::new(&entry.id, secret));
                    if entry.state == KeyState::Active {
                        set.pseudonym = Some(key.clone());
                    }
                    set.all_pseudonym.push(key);
                }
                Purpose::Encryption => {
                    let key = Arc::new(SealKey::new(&entry.id, secret));
                    if entry.state == KeyState::Active {
                        set.encryption = Some(key.clone());
                    }
                    set.all_seal.insert(entry.id.clone(), key);
                }
                Purpose::Subject => {
                    if entry.state == KeyState::Active {
                        set.subject = Some(Arc::new(SubjectKey::new(&entry.id, secret)));
                    }
                }
            }
        }
        set
    }

    /// The active pseudonym key.
    pub fn pseudonym(&self) -> Result<&Arc<PseudonymKey>, KeyringError> {
        self.pseudonym
            .as_ref()
            .ok_or(KeyringError::NoActive(Purpose::Pseudonym.as_str()))
    }

    /// The active encryption key.
    pub fn encryption(&self) -> Result<&Arc<SealKey>, KeyringError> {
        self.encryption
            .as_ref()
            .ok_or(KeyringError::NoActive(Purpose::Encryption.as_str()))
    }

    /// The active subject key (docs/formats.md §5).
    pub fn subject(&self) -> Result<&Arc<SubjectKey>, KeyringError> {
        self.subject
            .as_ref()
            .ok_or(KeyringError::NoActive(Purpose::Subject.as_str()))
    }

    /// Every pseudonym key that still has a secret (active and retired), in keyring order.
    pub fn pseudonym_keys(&self) -> &[Arc<PseudonymKey>] {
        &self.all_pseudonym
    }

    /// The ids of every encryption key that still has a secret (what a `decrypt` may open
    /// with), sorted.
    pub fn encryption_key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.all_seal.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The encryption key with this id, if it still has a secret.
    pub fn seal_key(&self, id: &str) -> Option<&Arc<SealKey>> {
        self.all_seal.get(id)
    }

    /// Whether `id` names a destroyed key.
    pub fn is_destroyed(&self, id: &str) -> bool {
        self.destroyed.iter().any(|d| d == id)
    }

    /// Opens an envelope sealed for `field_path` with whichever key of this set it names.
    pub fn open(&self, field_path: &str, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
        let id = envelope::key_id(envelope)?;
        let Some(key) = self.seal_key(id) else {
            return Err(if self.is_destroyed(id) {
                OpenError::KeyDestroyed(id.to_owned())
            } else {
                OpenError::UnknownKey(id.to_owned())
            });
        };
        envelope::open_with(key, field_path, envelope)
    }
}
