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

/// The class of a token: part of the MAC input, so equal strings of different classes give
/// unrelated tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenClass {
    /// A phone number, canonical E.164.
    Phone,
    /// A value the phone parser rejected, trimmed.
    PhoneRaw,
    /// An IP address, canonical text.
    Ip,
    /// A value that is not an IP address, trimmed.
    IpRaw,
    /// An e-mail address, trimmed and lower-cased.
    Email,
    /// An identifier, exactly as given.
    Id,
    /// An identifier of a named role (`id.cell`, `id.device`; docs/formats.md §3): equal
    /// strings in different roles give unrelated tokens.
    IdOf(SubClass),
}

impl TokenClass {
    /// The ASCII class name that enters the MAC.
    pub fn as_str(&self) -> &str {
        match self {
            TokenClass::Phone => "phone",
            TokenClass::PhoneRaw => "phone-raw",
            TokenClass::Ip => "ip",
            TokenClass::IpRaw => "ip-raw",
            TokenClass::Email => "email",
            TokenClass::Id => "id",
            TokenClass::IdOf(sub) => sub.label(),
        }
    }

    /// Parses a class name as the CLI spells it (`id.cell` for an `id` sub-class).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "phone" => TokenClass::Phone,
            "phone-raw" => TokenClass::PhoneRaw,
            "ip" => TokenClass::Ip,
            "ip-raw" => TokenClass::IpRaw,
            "email" => TokenClass::Email,
            "id" => TokenClass::Id,
            other => TokenClass::IdOf(SubClass::new(other.strip_prefix("id.")?).ok()?),
        })
    }

    /// Whether a rule or a key may ask for this class (the `-raw` classes only come back from
    /// canonicalization).
    pub fn is_requestable(&self) -> bool {
        !matches!(self, TokenClass::PhoneRaw | TokenClass::IpRaw)
    }
}

/// Longest sub-class name.
pub const SUBCLASS_MAX: usize = 32;

/// The role of an `id` token: its class name is `"id." || name`. Held inline, so a class stays
/// `Copy` and a token costs no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubClass {
    label: [u8; 3 + SUBCLASS_MAX],
    len: u8,
}

impl SubClass {
    /// A sub-class of 1–32 characters of `a-z 0-9 _ -`, or a sentence saying why not.
    pub fn new(name: &str) -> Result<Self, String> {
        let valid = (1..=SUBCLASS_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "sub-class {name:?} must be 1-{SUBCLASS_MAX} characters of a-z, 0-9, _ and -"
            ));
        }
        let mut label = [0u8; 3 + SUBCLASS_MAX];
        label[..3].copy_from_slice(b"id.");
        label[3..3 + name.len()].copy_from_slice(name.as_bytes());
        Ok(SubClass {
            label,
            len: (3 + name.len()) as u8,
        })
    }

    /// `id.` and the name: what enters the MAC.
    pub fn label(&self) -> &str {
        std::str::from_utf8(&self.label[..self.len as usize]).expect("ASCII by construction")
    }

    /// The name alone (`cell`).
    pub fn name(&self) -> &str {
        &self.label()[3..]
    }
}

impl std::fmt::Debug for SubClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubClass({})", self.label())
    }
}

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

    let id = key.id().as_bytes();
    let mut out = Token {
        bytes: [0; MAX_TOKEN_LEN],
        len: id.len() + 1 + 22,
    };
    out.bytes[..id.len()].copy_from_slice(id);
    out.bytes[id.len()] = b':';
    URL_SAFE_NO_PAD
        .encode_slice(&digest[..16], &mut out.bytes[id.len() + 1..])
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
