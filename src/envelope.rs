//! The AES-256-GCM envelope of spec §4.
//!
//! ```text
//! header   = 0x01 || u8(len(key_id)) || key_id
//! envelope = header || nonce(12) || ciphertext || tag(16)
//! aad      = header || field_path
//! ```
//!
//! Binding the field path into the AAD means an envelope moved to another field fails to open;
//! binding the header means the key id cannot be swapped. The event itself is not bound.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Nonce, Tag};
#[cfg(not(fuzzing))]
use rand::RngCore;

use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::{Aes256Gcm, KeyInit};

/// The envelope's version byte.
pub const VERSION: u8 = 0x01;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Why an envelope did not open. Never carries plaintext or key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("envelope is malformed")]
    Malformed,
    #[error("envelope version {0} is not supported")]
    Version(u8),
    #[error("key {0:?} is destroyed")]
    KeyDestroyed(String),
    #[error("key {0:?} is not in the keyring")]
    UnknownKey(String),
    #[error("envelope does not authenticate (wrong key, wrong field path, or tampered)")]
    Authentication,
}

/// The AES-256-GCM key of envelopes, with the header it writes and a count of what it sealed.
/// Made from already-derived key bytes; `keys` derives them from keyring secrets
/// (`SealKey::new`), so this module depends on nothing of `keys`.
pub struct SealKey {
    id: String,
    header: Vec<u8>,
    cipher: Aes256Gcm,
    sealed: AtomicU64,
}

impl SealKey {
    /// A key from 32 derived bytes.
    pub(crate) fn from_key(id: &str, key: &[u8; 32]) -> Self {
        SealKey {
            id: id.to_owned(),
            header: header(id),
            cipher: Aes256Gcm::new_from_slice(key).expect("32-byte AES-256 key"),
            sealed: AtomicU64::new(0),
        }
    }
    /// The key id written in every envelope header.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `0x01 || u8(len(id)) || id`.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }

    /// How many envelopes this process has sealed under this key (spec §4's 2^32 budget).
    pub fn sealed_count(&self) -> u64 {
        self.sealed.load(Ordering::Relaxed)
    }

    /// Continues the envelope count of `previous`, the same key as loaded before a keyring
    /// reload, so the count (and the rotation policy on it) does not restart at zero.
    pub fn continue_count(&self, previous: &SealKey) {
        if previous.id == self.id {
            self.sealed
                .fetch_add(previous.sealed_count(), Ordering::Relaxed);
        }
    }

    pub(crate) fn count_seal(&self) {
        self.sealed.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

/// The header for key `id`. Ids are at most 32 bytes (spec §1), so the length fits a byte.
pub fn header(id: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(2 + id.len());
    header.push(VERSION);
    header.push(id.len() as u8);
    header.extend_from_slice(id.as_bytes());
    header
}

/// Length of the envelope of a plaintext of `len` bytes under `key`.
pub fn sealed_len(key: &SealKey, len: usize) -> usize {
    key.header().len() + NONCE_LEN + len + TAG_LEN
}

/// Appends the envelope of `plaintext` to `out`, with a fresh nonce from the OS CSPRNG.
pub fn seal_into(key: &SealKey, field_path: &str, plaintext: &[u8], out: &mut Vec<u8>) {
    let nonce = next_nonce();
    seal_with_nonce(key, field_path, &nonce, plaintext, out);
}

/// Nonces handed out per refill of a thread's pool.
#[cfg(not(fuzzing))]
const NONCES_PER_REFILL: usize = 64;

#[cfg(not(fuzzing))]
thread_local! {
    // OS CSPRNG output fetched in batches: one getrandom(2) call per 64 nonces instead of one
    // per envelope. Every nonce is still fresh OS randomness, used once and never reused: a
    // byte range is consumed as it is handed out. (The process never forks, which is the one
    // way a user-space pool could hand the same bytes out twice.)
    static NONCE_POOL: std::cell::RefCell<([u8; NONCE_LEN * NONCES_PER_REFILL], usize)> =
        const { std::cell::RefCell::new(([0; NONCE_LEN * NONCES_PER_REFILL], NONCES_PER_REFILL)) };
}

/// Under the fuzzer only: a fixed nonce, so the fast and reference paths give comparable bytes.
/// (`cfg(fuzzing)` is set by `cargo fuzz` alone; no build of the product has it.)
#[cfg(fuzzing)]
fn next_nonce() -> [u8; NONCE_LEN] {
    [0; NONCE_LEN]
}

/// The next 12 bytes of OS CSPRNG output for this thread.
#[cfg(not(fuzzing))]
fn next_nonce() -> [u8; NONCE_LEN] {
    NONCE_POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used == NONCES_PER_REFILL {
            rand::rngs::OsRng.fill_bytes(bytes);
            *used = 0;
        }
        let start = *used * NONCE_LEN;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[start..start + NONCE_LEN]);
        // Wipe what was handed out so the pool never holds a used nonce.
        bytes[start..start + NONCE_LEN].fill(0);
        *used += 1;
        nonce
    })
}

/// [`seal_into`] with a given nonce: for test vectors only, never for output.
pub fn seal_with_nonce(
    key: &SealKey,
    field_path: &str,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(key.header());
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let aad = Aad::new(key.header(), field_path);
    let tag = key
        .cipher()
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad.as_slice(), &mut out[start..])
        .expect("plaintext within AES-GCM's length limit");
    out.extend_from_slice(&tag);
    key.count_seal();
}

/// The key id an envelope names, without opening it.
pub fn key_id(envelope: &[u8]) -> Result<&str, OpenError> {
    let (&version, rest) = envelope.split_first().ok_or(OpenError::Malformed)?;
    if version != VERSION {
        return Err(OpenError::Version(version));
    }
    let (&len, rest) = rest.split_first().ok_or(OpenError::Malformed)?;
    let id = rest.get(..len as usize).ok_or(OpenError::Malformed)?;
    std::str::from_utf8(id).map_err(|_| OpenError::Malformed)
}

/// Opens an envelope with one given key (which must be the key its header names).
pub fn open_with(key: &SealKey, field_path: &str, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
    let id = key_id(envelope)?;
    if id != key.id() {
        return Err(OpenError::UnknownKey(id.to_owned()));
    }
    let header_len = 2 + id.len();
    if envelope.len() < header_len + NONCE_LEN + TAG_LEN {
        return Err(OpenError::Malformed);
    }
    let (header, rest) = envelope.split_at(header_len);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut plaintext = ciphertext.to_vec();
    let aad = Aad::new(header, field_path);
    key.cipher()
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad.as_slice(),
            &mut plaintext,
            Tag::from_slice(tag),
        )
        .map_err(|_| OpenError::Authentication)?;
    Ok(plaintext)
}

/// `header || field_path`, on the stack for the usual short paths.
struct Aad {
    inline: [u8; 128],
    len: usize,
    spilled: Vec<u8>,
}

impl Aad {
    fn new(header: &[u8], field_path: &str) -> Self {
        let len = header.len() + field_path.len();
        let mut aad = Aad {
            inline: [0; 128],
            len,
            spilled: Vec::new(),
        };
        if len <= aad.inline.len() {
            aad.inline[..header.len()].copy_from_slice(header);
            aad.inline[header.len()..len].copy_from_slice(field_path.as_bytes());
        } else {
            aad.spilled = [header, field_path.as_bytes()].concat();
        }
        aad
    }

    fn as_slice(&self) -> &[u8] {
        if self.len <= self.inline.len() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}
