//! The envelope of `encrypt` (spec §4 and docs/formats.md §4): sealed with XAES-256-GCM
//! (version 2), and still opened in spec v1's AES-256-GCM form (version 1).
//!
//! ```text
//! header   = version || u8(len(key_id)) || key_id
//! v2:  envelope = header || nonce(24) || ciphertext || tag(16)     XAES-256-GCM
//! v1:  envelope = header || nonce(12) || ciphertext || tag(16)     AES-256-GCM (opened only)
//! aad      = header || field_path
//! ```
//!
//! Binding the field path into the AAD means an envelope moved to another field fails to open;
//! binding the header means the key id cannot be swapped. The event itself is not bound.
//!
//! Why version 2: AES-256-GCM with random 96-bit nonces allows only 2^32 seals per key (NIST SP
//! 800-38D), a bound no process can keep fleet-wide without coordination. XAES-256-GCM (C2SP)
//! takes 192-bit nonces: the first 12 bytes (the *salt*) derive a fresh AES-256-GCM data key
//! from the working key, the last 12 are that data key's GCM nonce. A sealing process draws a
//! random salt, seals at most [`DATA_KEY_SEALS`] envelopes under its data key with random
//! inner nonces, then draws another salt: the derivation is paid once per data key, not per
//! envelope, and a reader needs nothing but standard XAES-256-GCM. Each thread keeps its own
//! data key per envelope key (no lock on the hot path). docs/security.md gives the bound this
//! keeps.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use aes::cipher::BlockEncrypt;
use aes::Aes256;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
#[cfg(not(fuzzing))]
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

/// The version byte of the envelopes this program seals: XAES-256-GCM.
pub const VERSION: u8 = 0x02;
/// The version byte of spec v1's AES-256-GCM envelopes (opened, no longer sealed).
pub const VERSION_V1: u8 = 0x01;
/// Nonce length of a version-2 envelope: salt (12) then GCM nonce (12).
pub const NONCE_LEN: usize = 24;
/// Salt length: the first half of an XAES-256-GCM nonce, which picks the data key.
pub const SALT_LEN: usize = 12;
/// Nonce length of a version-1 envelope.
pub const NONCE_LEN_V1: usize = 12;
/// GCM nonce length (the second half of a version-2 nonce).
const GCM_NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Envelopes a process seals under one data key (one salt) before it draws another.
pub const DATA_KEY_SEALS: u64 = 1 << 16;

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

/// The 32-byte working keys of one envelope key: spec v1's AES-256-GCM key and the
/// XAES-256-GCM key of version 2 (derived with their own HKDF `info`s by `keys`).
pub struct WorkingKeys<'a> {
    pub aes_256_gcm: &'a [u8; 32],
    pub xaes_256_gcm: &'a [u8; 32],
}

/// The key of envelopes: seals version 2, opens versions 1 and 2, counts what it sealed.
/// Made from already-derived key bytes; `keys` derives them from keyring secrets
/// (`SealKey::new`), so this module depends on nothing of `keys`.
pub struct SealKey {
    id: String,
    header: Vec<u8>,
    header_v1: Vec<u8>,
    v1: Aes256Gcm,
    xaes: Xaes,
    /// Names this key in the threads' data key caches (unique in the process).
    uid: u64,
    data_key_seals: u64,
    data_keys_made: AtomicU64,
    sealed: AtomicU64,
}

/// One thread's data key for one envelope key, and how many more envelopes it may seal.
struct DataKeySlot {
    key_uid: u64,
    key: DataKey,
    remaining: u64,
}

/// Data key caches kept per thread, at most this many envelope keys each (the active one, and
/// the one before a reload).
const CACHED_KEYS: usize = 4;

/// Source of [`SealKey`] uids.
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static DATA_KEYS: RefCell<Vec<DataKeySlot>> = const { RefCell::new(Vec::new()) };
}

/// An AES-256-GCM data key and the salt that derived it.
struct DataKey {
    salt: [u8; SALT_LEN],
    cipher: Aes256Gcm,
}

impl SealKey {
    /// A key from its derived working keys.
    pub(crate) fn from_keys(id: &str, keys: WorkingKeys<'_>) -> Self {
        SealKey {
            id: id.to_owned(),
            header: header_of(VERSION, id),
            header_v1: header_of(VERSION_V1, id),
            v1: Aes256Gcm::new_from_slice(keys.aes_256_gcm).expect("32-byte AES-256 key"),
            xaes: Xaes::new(keys.xaes_256_gcm),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            data_key_seals: DATA_KEY_SEALS,
            data_keys_made: AtomicU64::new(0),
            sealed: AtomicU64::new(0),
        }
    }

    /// The same key, renewing its data key every `seals` envelopes instead of
    /// [`DATA_KEY_SEALS`] (tests show renewal with small counts).
    pub fn with_data_key_seals(mut self, seals: u64) -> Self {
        self.data_key_seals = seals.max(1);
        self
    }

    /// The key id written in every envelope header.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The header new envelopes carry: `0x02 || u8(len(id)) || id`.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// How many envelopes this process has sealed under this key.
    pub fn sealed_count(&self) -> u64 {
        self.sealed.load(Ordering::Relaxed)
    }

    /// How many data keys (salts) this process has drawn under this key.
    pub fn data_keys_made(&self) -> u64 {
        self.data_keys_made.load(Ordering::Relaxed)
    }

    /// Continues the envelope count of `previous`, the same key as loaded before a keyring
    /// reload, so the count does not restart at zero.
    pub fn continue_count(&self, previous: &SealKey) {
        if previous.id == self.id {
            self.sealed
                .fetch_add(previous.sealed_count(), Ordering::Relaxed);
        }
    }

    /// Runs `seal` with this thread's data key for this key: the current one, or a fresh one
    /// from a new salt once the current one has sealed its share.
    fn with_data_key<R>(&self, seal: impl FnOnce(&DataKey) -> R) -> R {
        DATA_KEYS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let index = match slots.iter().position(|s| s.key_uid == self.uid) {
                Some(i) if slots[i].remaining > 0 => i,
                found => {
                    let salt = fresh_salt();
                    let slot = DataKeySlot {
                        key_uid: self.uid,
                        key: DataKey {
                            salt,
                            cipher: self.xaes.data_key(&salt),
                        },
                        remaining: self.data_key_seals,
                    };
                    self.data_keys_made.fetch_add(1, Ordering::Relaxed);
                    match found {
                        Some(i) => {
                            slots[i] = slot;
                            i
                        }
                        None => {
                            if slots.len() == CACHED_KEYS {
                                slots.remove(0);
                            }
                            slots.push(slot);
                            slots.len() - 1
                        }
                    }
                }
            };
            slots[index].remaining -= 1;
            seal(&slots[index].key)
        })
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

/// The XAES-256-GCM key (C2SP XAES-256-GCM): AES-256 under the working key, and the CMAC
/// subkey K1 that masks the derivation's inputs.
struct Xaes {
    aes: Aes256,
    k1: Zeroizing<[u8; 16]>,
}

impl Xaes {
    fn new(key: &[u8; 32]) -> Self {
        let aes = Aes256::new(key.into());
        // L = AES-256_K(0^128); K1 = L doubled in GF(2^128), as CMAC (NIST SP 800-38B) does.
        let mut l = [0u8; 16].into();
        aes.encrypt_block(&mut l);
        let mut value = u128::from_be_bytes(l.into());
        l.zeroize();
        let doubled = (value << 1) ^ ((value >> 127) * 0x87);
        value.zeroize();
        Xaes {
            aes,
            k1: Zeroizing::new(doubled.to_be_bytes()),
        }
    }

    /// The AES-256-GCM data key of a salt:
    /// `AES-256_K(0x00 01 'X' 00 || salt ^ K1) || AES-256_K(0x00 02 'X' 00 || salt ^ K1)`.
    fn data_key(&self, salt: &[u8; SALT_LEN]) -> Aes256Gcm {
        let mut key = Zeroizing::new([0u8; 32]);
        for (half, counter) in key.chunks_exact_mut(16).zip([1u8, 2]) {
            let mut block = [0u8; 16];
            block[..4].copy_from_slice(&[0, counter, b'X', 0]);
            block[4..].copy_from_slice(salt);
            for (b, k) in block.iter_mut().zip(self.k1.iter()) {
                *b ^= k;
            }
            let mut block = block.into();
            self.aes.encrypt_block(&mut block);
            half.copy_from_slice(&block);
            block.zeroize();
        }
        Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte AES-256 key")
    }
}

/// The header of `version` for key `id`. Ids are at most 32 bytes (spec §1), so the length
/// fits a byte.
fn header_of(version: u8, id: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(2 + id.len());
    header.push(version);
    header.push(id.len() as u8);
    header.extend_from_slice(id.as_bytes());
    header
}

/// The header new envelopes of key `id` carry.
pub fn header(id: &str) -> Vec<u8> {
    header_of(VERSION, id)
}

/// Length of the envelope of a plaintext of `len` bytes under `key`.
pub fn sealed_len(key: &SealKey, len: usize) -> usize {
    key.header().len() + NONCE_LEN + len + TAG_LEN
}

/// Appends the version-2 envelope of `plaintext` to `out`: the key's current data key, and a
/// fresh GCM nonce from the OS CSPRNG.
pub fn seal_into(key: &SealKey, field_path: &str, plaintext: &[u8], out: &mut Vec<u8>) {
    let nonce = next_nonce();
    key.with_data_key(|data_key| seal_under(key, data_key, &nonce, field_path, plaintext, out));
}

/// [`seal_into`] with a given 24-byte nonce: for test vectors only, never for output.
pub fn seal_with_nonce(
    key: &SealKey,
    field_path: &str,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let (salt, gcm_nonce) = nonce.split_at(SALT_LEN);
    let salt: [u8; SALT_LEN] = salt.try_into().expect("12-byte salt");
    let data_key = DataKey {
        salt,
        cipher: key.xaes.data_key(&salt),
    };
    let gcm_nonce: [u8; GCM_NONCE_LEN] = gcm_nonce.try_into().expect("12-byte nonce");
    seal_under(key, &data_key, &gcm_nonce, field_path, plaintext, out);
}

/// A version-1 (spec v1, AES-256-GCM) envelope with a given nonce. Nothing seals version 1 any
/// more: this makes old-format envelopes for tests and for the benchmark's baseline.
pub fn seal_v1_with_nonce(
    key: &SealKey,
    field_path: &str,
    nonce: &[u8; NONCE_LEN_V1],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&key.header_v1);
    out.extend_from_slice(nonce);
    encrypt_tail(&key.v1, &key.header_v1, nonce, field_path, plaintext, out);
}

fn seal_under(
    key: &SealKey,
    data_key: &DataKey,
    gcm_nonce: &[u8; GCM_NONCE_LEN],
    field_path: &str,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(key.header());
    out.extend_from_slice(&data_key.salt);
    out.extend_from_slice(gcm_nonce);
    encrypt_tail(
        &data_key.cipher,
        key.header(),
        gcm_nonce,
        field_path,
        plaintext,
        out,
    );
    key.sealed.fetch_add(1, Ordering::Relaxed);
}

/// Appends `ciphertext || tag` of `plaintext` to `out` (which already holds header and nonce).
fn encrypt_tail(
    cipher: &Aes256Gcm,
    header: &[u8],
    nonce: &[u8; GCM_NONCE_LEN],
    field_path: &str,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(plaintext);
    let aad = Aad::new(header, field_path);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad.as_slice(), &mut out[start..])
        .expect("plaintext within AES-GCM's length limit");
    out.extend_from_slice(&tag);
}

/// Under the fuzzer only: fixed salts and nonces, so the fast and reference paths give
/// comparable bytes. (`cfg(fuzzing)` is set by `cargo fuzz` alone; no build of the product
/// has it.)
#[cfg(fuzzing)]
fn fresh_salt() -> [u8; SALT_LEN] {
    [0; SALT_LEN]
}

#[cfg(fuzzing)]
fn next_nonce() -> [u8; GCM_NONCE_LEN] {
    [0; GCM_NONCE_LEN]
}

/// A salt from the OS CSPRNG (once per data key: no pool).
#[cfg(not(fuzzing))]
fn fresh_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
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
    static NONCE_POOL: std::cell::RefCell<([u8; GCM_NONCE_LEN * NONCES_PER_REFILL], usize)> =
        const { std::cell::RefCell::new(([0; GCM_NONCE_LEN * NONCES_PER_REFILL], NONCES_PER_REFILL)) };
}

/// The next 12 bytes of OS CSPRNG output for this thread.
#[cfg(not(fuzzing))]
fn next_nonce() -> [u8; GCM_NONCE_LEN] {
    NONCE_POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used == NONCES_PER_REFILL {
            rand::rngs::OsRng.fill_bytes(bytes);
            *used = 0;
        }
        let start = *used * GCM_NONCE_LEN;
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce.copy_from_slice(&bytes[start..start + GCM_NONCE_LEN]);
        // Wipe what was handed out so the pool never holds a used nonce.
        bytes[start..start + GCM_NONCE_LEN].fill(0);
        *used += 1;
        nonce
    })
}

/// The version and key id an envelope names, without opening it.
fn parse_header(envelope: &[u8]) -> Result<(u8, &str), OpenError> {
    let (&version, rest) = envelope.split_first().ok_or(OpenError::Malformed)?;
    if version != VERSION && version != VERSION_V1 {
        return Err(OpenError::Version(version));
    }
    let (&len, rest) = rest.split_first().ok_or(OpenError::Malformed)?;
    let id = rest.get(..len as usize).ok_or(OpenError::Malformed)?;
    let id = std::str::from_utf8(id).map_err(|_| OpenError::Malformed)?;
    Ok((version, id))
}

/// The key id an envelope names, without opening it.
pub fn key_id(envelope: &[u8]) -> Result<&str, OpenError> {
    parse_header(envelope).map(|(_, id)| id)
}

/// The version byte of an envelope (1 or 2), without opening it.
pub fn version(envelope: &[u8]) -> Result<u8, OpenError> {
    parse_header(envelope).map(|(version, _)| version)
}

/// Opens an envelope of either version with one given key (which must be the key its header
/// names).
pub fn open_with(key: &SealKey, field_path: &str, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
    let (version, id) = parse_header(envelope)?;
    if id != key.id() {
        return Err(OpenError::UnknownKey(id.to_owned()));
    }
    let header_len = 2 + id.len();
    let nonce_len = if version == VERSION {
        NONCE_LEN
    } else {
        NONCE_LEN_V1
    };
    if envelope.len() < header_len + nonce_len + TAG_LEN {
        return Err(OpenError::Malformed);
    }
    let (header, rest) = envelope.split_at(header_len);
    let (nonce, rest) = rest.split_at(nonce_len);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let data_key;
    let (cipher, gcm_nonce) = if version == VERSION {
        let (salt, gcm_nonce) = nonce.split_at(SALT_LEN);
        data_key = key.xaes.data_key(salt.try_into().expect("12-byte salt"));
        (&data_key, gcm_nonce)
    } else {
        (&key.v1, nonce)
    };
    let mut plaintext = ciphertext.to_vec();
    let aad = Aad::new(header, field_path);
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(gcm_nonce),
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
