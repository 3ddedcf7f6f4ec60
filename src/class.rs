//! Token classes (spec §3): what kind of value a token was made from. The class name enters
//! the MAC, so equal strings of different classes give unrelated tokens.
//!
//! A module of its own, below both [`crate::phone`] (whose canonical forms say whether a value
//! parsed as a phone number) and [`crate::token`] (which MACs the canonical form under its
//! class): each of the two uses the type, neither uses the other's module for it.

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
    /// The class of a value that cannot be read as this class's kind of value (a phone
    /// class's value the parser rejects, an IP class's value that is no address): the raw
    /// classes. E-mail and identifier classes are their own (their canonical forms never fail).
    pub fn unparsed(self) -> TokenClass {
        match self {
            TokenClass::Phone | TokenClass::PhoneRaw => TokenClass::PhoneRaw,
            TokenClass::Ip | TokenClass::IpRaw => TokenClass::IpRaw,
            other => other,
        }
    }

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
