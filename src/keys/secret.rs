//! The 32-byte key material of one keyring entry.
//!
//! A [`Secret`] is zeroized on drop, its `Debug` never shows the bytes, and it has no `Display`
//! and no `Serialize`: the only way bytes leave it is [`Secret::to_b64`], which the keyring
//! writer calls, and [`Secret::expose`], which the working-key derivation calls.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every keyring secret, in bytes (spec §1).
pub const SECRET_LEN: usize = 32;

/// Key material of one keyring entry.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// Draws a fresh secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let secret = Secret(bytes);
        bytes.zeroize();
        secret
    }

    /// Decodes standard base64 (with padding). `None` when it is not base64 or not 32 bytes;
    /// the caller reports that without the value.
    pub fn from_b64(text: &str) -> Option<Self> {
        let decoded = Zeroizing::new(STANDARD.decode(text.as_bytes()).ok()?);
        let bytes: [u8; SECRET_LEN] = decoded.as_slice().try_into().ok()?;
        Some(Secret(bytes))
    }

    /// Exactly 32 bytes (a KMS's unwrapped secret); `None` for any other length.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; SECRET_LEN] = bytes.try_into().ok()?;
        Some(Secret(bytes))
    }

    /// Standard base64, for the keyring writer only.
    pub(crate) fn to_b64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    /// The raw bytes, for key derivation and KMS wrapping only.
    pub(crate) fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}
