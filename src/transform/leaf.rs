//! What each action does to one leaf value. Shared by both transform paths, so they differ
//! only in how they find the leaves.

use std::net::IpAddr;

use super::ErrorKind;
use crate::geoip::{Country, CountryDb};
use crate::ip::{ip_text, parse_ip, truncate_ip, IpText};
use crate::keys::PseudonymKey;
use crate::phone::attributes::{self, PhoneAttributes};
use crate::phone::PhoneCanon;
use crate::rules::Action;
use crate::subjects::SubjectGate;
use crate::token::{self, TokenClass};
use rlibphonenumber::Region;

/// A rewritten string value: a token or an IP's text, held on the stack.
pub enum Pseudonym {
    Token(token::Token),
    Ip(IpText),
}

impl Pseudonym {
    pub fn as_str(&self) -> &str {
        match self {
            Pseudonym::Token(t) => t.as_str(),
            Pseudonym::Ip(ip) => ip.as_str(),
        }
    }

    /// The text's bytes (ASCII), without a UTF-8 check: what the binary walk writes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Pseudonym::Token(t) => t.as_bytes(),
            Pseudonym::Ip(ip) => ip.as_bytes(),
        }
    }
}

/// The output of a string-yielding action (every action but keep, drop and encrypt).
/// `region` is the one phone numbers are read with: the record's own or the default. With a
/// subject `gate`, a token of a withheld person is an unlinked one (prefix-preserving and
/// truncated IPs are not identifiers of a person here: docs/security.md).
pub fn pseudonymize(
    action: Action,
    value: &str,
    phone: &PhoneCanon,
    region: Region,
    key: Option<&PseudonymKey>,
    gate: Option<&SubjectGate<'_>>,
) -> Result<Pseudonym, ErrorKind> {
    let key = key.ok_or(ErrorKind::NoPseudonymKey)?;
    let token = |key: &PseudonymKey, class: TokenClass, canonical: &[u8]| match gate {
        None => token::token(key, class, canonical),
        Some(gate) => gate.token(key, class, canonical),
    };
    let raw_ip =
        |value: &str| Pseudonym::Token(token(key, TokenClass::IpRaw, value.trim().as_bytes()));
    Ok(match action {
        Action::Token(TokenClass::Ip) => match parse_ip(value) {
            // Rust's IPv4 parser accepts only the canonical dotted form (no leading zeros), so
            // a parsed plain IPv4 input is its own canonical text: no formatting needed.
            Some(IpAddr::V4(_)) if !value.trim().contains(':') => {
                Pseudonym::Token(token(key, TokenClass::Ip, value.trim().as_bytes()))
            }
            Some(ip) => Pseudonym::Token(token(key, TokenClass::Ip, ip_text(ip).as_bytes())),
            None => raw_ip(value),
        },
        Action::Token(TokenClass::Phone) => {
            return phone_token(value, phone, region, Some(key), gate, false).map(|(t, _)| t)
        }
        Action::Token(class) => {
            let (class, canonical) = token::canonical(class, value, phone);
            Pseudonym::Token(token(key, class, canonical.as_bytes()))
        }
        Action::IpPrefix => match parse_ip(value) {
            Some(IpAddr::V4(v4)) => Pseudonym::Ip(ip_text(key.cryptopan().anonymize_v4(v4).into())),
            Some(IpAddr::V6(v6)) => Pseudonym::Ip(ip_text(key.cryptopan().anonymize_v6(v6).into())),
            None => raw_ip(value),
        },
        Action::IpTruncate { v4, v6 } => match parse_ip(value) {
            Some(ip) => Pseudonym::Ip(ip_text(truncate_ip(ip, v4, v6))),
            None => raw_ip(value),
        },
        Action::Keep
        | Action::Drop
        | Action::Encrypt
        | Action::TimeTruncate(_)
        | Action::Bucket { .. } => {
            unreachable!("plan compiles only string-yielding actions to pseudonymize")
        }
    })
}

/// A phone value's token and, when `derive` asks for them, the attributes of the number
/// read from the same canonical form (no second parse). The attributes are `None` for a
/// value that is not a number (`phone-raw`) and for a withheld person, whose token is an
/// unlinked one: nothing derived from their number is published either.
pub fn phone_token(
    value: &str,
    phone: &PhoneCanon,
    region: Region,
    key: Option<&PseudonymKey>,
    gate: Option<&SubjectGate<'_>>,
    derive: bool,
) -> Result<(Pseudonym, Option<PhoneAttributes>), ErrorKind> {
    let key = key.ok_or(ErrorKind::NoPseudonymKey)?;
    let (class, canonical) = phone.canonical_in(region, value);
    let (token, withheld) = match gate {
        None => (token::token(key, class, canonical.as_bytes()), false),
        Some(gate) => gate.token_and_withheld(key, class, canonical.as_bytes()),
    };
    let attributes = if derive && class == TokenClass::Phone && !withheld {
        attributes::of_canonical(&canonical)
    } else {
        None
    };
    Ok((Pseudonym::Token(token), attributes))
}

/// The country an IP rule derives beside its output: of the address for an `ip` token, of the
/// published network for `ip-truncate`; `None` where the value is not an address, the
/// database places it in no country, or (for an `ip` token, the one IP action that names a
/// person: docs/security.md) the person is withheld.
pub fn ip_country(
    action: Action,
    value: &str,
    db: &CountryDb,
    gate: Option<&SubjectGate<'_>>,
) -> Option<Country> {
    let ip = parse_ip(value)?;
    match (action, gate) {
        (Action::Token(TokenClass::Ip), Some(gate))
            if gate.withholds(TokenClass::Ip, ip_text(ip).as_bytes()) =>
        {
            None
        }
        // The country of the published network, not of the address inside it: a network that
        // spans two countries must not tell which part the host is in.
        (Action::IpTruncate { v4, v6 }, _) => db.country(truncate_ip(ip, v4, v6)),
        _ => db.country(ip),
    }
}

/// A timestamp or time of day truncated down (towards the past, also before 1970) to a
/// multiple of `ticks`; out of range where that leaves its type (`int`: 32 bits).
pub fn truncate_time(value: i64, ticks: i64, int: bool) -> Result<i64, ErrorKind> {
    let truncated = value
        .div_euclid(ticks.max(1))
        .checked_mul(ticks.max(1))
        .ok_or(ErrorKind::CannotTruncate)?;
    if int {
        i32::try_from(truncated).map_err(|_| ErrorKind::CannotTruncate)?;
    }
    Ok(truncated)
}
