//! Pseudonym tokens (spec §3): canonical forms and the keyed MAC.
//!
//! ```text
//! token = key_id ":" b64url( HMAC-SHA256(hmac_key, class || 0x00 || canonical)[0..16] )
//! ```
//!
//! Canonicalization is the part other languages must reproduce: phone numbers become E.164 as
//! Google's libphonenumber parses and formats them ([`crate::phone`]),
//! IPs their RFC 5952 / dotted text ([`crate::ip`]), e-mail addresses are
//! trimmed and lower-cased, ids are taken as they are. Values that do not parse as a phone
//! number or IP become `phone-raw` / `ip-raw` tokens of the trimmed input, so nothing raw is
//! ever written out.

use std::borrow::Cow;

use crate::ip::{ip_text, parse_ip};
use crate::keys::PseudonymKey;
use crate::phone::PhoneCanon;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac;

pub use crate::class::{SubClass, TokenClass, SUBCLASS_MAX};

/// Longest token: a 32-byte key id, the colon, 22 base64url characters.
pub const MAX_TOKEN_LEN: usize = 32 + 1 + 22;

/// A token, held on the stack so the hot path does not allocate.
#[derive(Clone, Copy)]
pub struct Token {
    bytes: [u8; MAX_TOKEN_LEN],
    len: usize,
}

impl Token {
    /// The token text.
    pub fn as_str(&self) -> &str {
        // Built only from a validated key id (ASCII), ':' and base64url.
        std::str::from_utf8(self.as_bytes()).expect("tokens are ASCII")
    }

    /// The token text's bytes, without the UTF-8 check `as_str` makes (what the hot path
    /// writes out).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Computes the token of an already canonical value.
pub fn token(key: &PseudonymKey, class: TokenClass, canonical: &[u8]) -> Token {
    let mut mac = key.hmac();
    mac.update(class.as_str().as_bytes());
    mac.update(&[0u8]);
    mac.update(canonical);
    let digest = mac.finalize().into_bytes();
    token_from_mac(key.id(), &digest[..16])
}

/// The token text of a key id and 16 MAC bytes (or, for an unlinked token, 16 random bytes:
/// [`crate::subjects::unlinked_token`]).
pub fn token_from_mac(key_id: &str, mac: &[u8]) -> Token {
    let id = key_id.as_bytes();
    let mut out = Token {
        bytes: [0; MAX_TOKEN_LEN],
        len: id.len() + 1 + 22,
    };
    out.bytes[..id.len()].copy_from_slice(id);
    out.bytes[id.len()] = b':';
    URL_SAFE_NO_PAD
        .encode_slice(&mac[..16], &mut out.bytes[id.len() + 1..])
        .expect("22 bytes hold base64url of 16 bytes");
    out
}

/// Canonical e-mail: trimmed and lower-cased (borrowed when already so).
pub fn canonical_email(value: &str) -> Cow<'_, str> {
    let trimmed = value.trim();
    if trimmed.chars().any(char::is_uppercase) {
        Cow::Owned(trimmed.to_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// The class and canonical form of a value for a token of `class` (`Phone` needs `phone`).
/// `PhoneRaw` / `IpRaw` come back where the value does not parse.
pub fn canonical<'a>(
    class: TokenClass,
    value: &'a str,
    phone: &PhoneCanon,
) -> (TokenClass, Cow<'a, str>) {
    match class {
        TokenClass::Phone => phone.canonical(value),
        TokenClass::Ip => match parse_ip(value) {
            Some(ip) => (TokenClass::Ip, Cow::Owned(ip_text(ip).as_str().to_owned())),
            None => (TokenClass::IpRaw, Cow::Borrowed(value.trim())),
        },
        TokenClass::Email => (TokenClass::Email, canonical_email(value)),
        TokenClass::PhoneRaw | TokenClass::IpRaw => (class, Cow::Borrowed(value.trim())),
        TokenClass::Id | TokenClass::IdOf(_) => (class, Cow::Borrowed(value)),
    }
}
