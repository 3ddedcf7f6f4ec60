//! A person's rights in the stream (docs/formats.md §5, docs/security.md "A person's rights"):
//! subject ids, the records of the subject registry and of erasure notices, the in-memory
//! table a worker keeps of the registry, and the gate the transform asks about each
//! identifier.
//!
//! A *subject id* is a token made under the keyring's subject key instead of a pseudonym key:
//! the same class and canonical value, the same MAC. The subject key is never rotated, so an
//! erasure or a consent recorded once still matches the person after every pseudonym epoch.
//! A *subject hint* is a keyed SipHash of the same input under a second working key of that
//! secret: at a fraction of an HMAC's cost, it lets a worker rule out the many who are in no
//! record before it computes anyone's subject id.
//! Nothing here does I/O: [`kafka`] reads and writes the topics, the worker and the CLI own it.
//!
//! - [`record`]: the registry's records and the erasure notices, as JSON on the wire;
//! - [`table`]: what a worker holds of the registry: 20 bytes per subject and a filter of their
//!   hints, no raw value;
//! - [`kafka`]: the two compacted topics: created, read to their end, followed, written.

pub mod kafka;
pub mod record;
pub mod table;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac;
use rand::RngCore;

use crate::keys::{PseudonymKey, SubjectKey};
use crate::token::{self, Token, TokenClass};

pub use record::{Notice, NoticeToken, RegistryRecord, SubjectState};
pub use table::SubjectTable;

/// The 16 bytes of a subject id (the MAC's first half), what the table is keyed by.
pub type SubjectBytes = [u8; 16];

/// The subject id of an already canonical value: `HMAC-SHA256(subject key, class || 0x00 ||
/// canonical)[0..16]`, exactly as a token (spec §3) but under the subject key.
pub fn subject_bytes(key: &SubjectKey, class: TokenClass, canonical: &[u8]) -> SubjectBytes {
    let mut mac = key.hmac();
    mac.update(class.as_str().as_bytes());
    mac.update(&[0u8]);
    mac.update(canonical);
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The subject hint of an already canonical value: `SipHash-2-4(hint key, class || 0x00 ||
/// canonical)`, a 64-bit keyed hash of the same input as the subject id. The registry records
/// it beside the id, so that a worker asks its filter about an identifier for the price of a
/// SipHash, and computes the subject id's HMAC only for the few the filter does not rule out.
pub fn subject_hint(key: &SubjectKey, class: TokenClass, canonical: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = key.hint_hasher();
    hasher.write(class.as_str().as_bytes());
    hasher.write(&[0u8]);
    hasher.write(canonical);
    hasher.finish()
}

/// The subject id's text and the subject hint of an already canonical value: what a registry
/// record of the person carries.
pub fn subject_of(key: &SubjectKey, class: TokenClass, canonical: &[u8]) -> (String, u64) {
    let id = subject_bytes(key, class, canonical);
    (subject_text(key, &id), subject_hint(key, class, canonical))
}

/// A subject hint's text: b64url of its 8 bytes, little-endian (11 characters).
pub fn hint_text(hint: u64) -> String {
    URL_SAFE_NO_PAD.encode(hint.to_le_bytes())
}

/// The hint of a hint's text, or `None` if it is not one.
pub fn parse_hint_text(text: &str) -> Option<u64> {
    if text.len() != 11 {
        return None;
    }
    let bytes: [u8; 8] = URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()?;
    // Only the one canonical spelling: the last character carries 2 bits of padding.
    (hint_text(u64::from_le_bytes(bytes)) == text).then(|| u64::from_le_bytes(bytes))
}

/// A subject id's text: `key_id ":" b64url(bytes)`, the shape of a token.
pub fn subject_text(key: &SubjectKey, bytes: &SubjectBytes) -> String {
    format!("{}:{}", key.id(), URL_SAFE_NO_PAD.encode(bytes))
}

/// The key id and bytes of a subject id's text, or `None` if it is not one.
pub fn parse_subject_text(text: &str) -> Option<(&str, SubjectBytes)> {
    let (key_id, mac) = text.split_once(':')?;
    if !crate::keys::valid_id(key_id) || mac.len() != 22 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(mac).ok()?;
    Some((key_id, bytes.try_into().ok()?))
}

/// A token that links to nothing: the shape of a token of `key` (its key id, 22 base64url
/// characters) with 16 fresh random bytes, one for each occurrence.
pub fn unlinked_token(key: &PseudonymKey) -> Token {
    let mut random = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut random);
    token::token_from_mac(key.id(), &random)
}

/// Which token classes name a person (`[subjects] classes`; phones and e-mail by default). A
/// phone class covers `phone-raw` too: a number the parser rejects is still the person's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectClasses(Vec<TokenClass>);

impl SubjectClasses {
    /// The default: `phone` and `email`.
    pub fn default_classes() -> Self {
        SubjectClasses(vec![TokenClass::Phone, TokenClass::Email])
    }

    /// From the config's names, or a sentence saying which name is not a class.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut classes = Vec::new();
        for name in names {
            match TokenClass::parse(name) {
                Some(class) if class.is_requestable() => classes.push(class),
                _ => {
                    return Err(format!(
                        "[subjects] classes: {name:?} is not a token class (phone, ip, email, id, id.<role>)"
                    ))
                }
            }
        }
        Ok(SubjectClasses(classes))
    }

    /// Whether a value of `class` (as canonicalization returned it) names a person.
    pub fn contains(&self, class: TokenClass) -> bool {
        self.0.iter().any(|c| *c == class || c.unparsed() == class)
    }

    /// The classes, as configured.
    pub fn classes(&self) -> &[TokenClass] {
        &self.0
    }
}

/// Whose events a pipeline publishes (`consent` in `[[pipeline]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentMode {
    /// Everyone but those who opted out of the pipeline's domain.
    OptOut,
    /// Only those who opted in to the pipeline's domain.
    OptIn,
}

/// What a pipeline does with a record that carries a withheld subject (`erased`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WithheldAction {
    /// Publish it, with unlinked tokens for the withheld subjects and no sealed fields.
    #[default]
    Withhold,
    /// Publish nothing (counted in `pseudonymizer_subject_records_total{outcome="dropped"}`).
    Drop,
}

/// One pipeline's rules about subjects: its consent mode (with its domain's place in the
/// table's consent bits) and what it does with a withheld subject's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubjectPolicy {
    pub consent: Option<(ConsentMode, usize)>,
    pub withheld: WithheldAction,
}

/// What a worker holds of the registry for one record: the subject key, one read of the table
/// and the subject classes. A pipeline's policy makes it a [`SubjectGate`].
pub struct SubjectView<'a> {
    pub key: &'a SubjectKey,
    pub table: &'a SubjectTable,
    pub classes: &'a SubjectClasses,
}

impl<'a> SubjectView<'a> {
    /// The gate of one record of a pipeline with `policy`.
    pub fn gate(&self, policy: SubjectPolicy) -> SubjectGate<'a> {
        SubjectGate::new(self.key, self.table, self.classes, policy)
    }
}

/// The domains whose consent some pipeline asks for, in config order without repeats
/// (`None`: the default domain): the table's consent bits, by position.
pub fn consent_domains(config: &crate::config::Config) -> Vec<Option<String>> {
    let mut domains: Vec<Option<String>> = Vec::new();
    for pipeline in config.pipeline.iter().filter(|p| p.consent.is_some()) {
        if !domains.contains(&pipeline.domain) {
            domains.push(pipeline.domain.clone());
        }
    }
    domains
}

/// What the transform asks about each identifier: the subject key, the table (one read of it
/// per record), the subject classes and the record's pipeline policy.
pub struct SubjectGate<'a> {
    pub key: &'a SubjectKey,
    pub table: &'a SubjectTable,
    pub classes: &'a SubjectClasses,
    pub policy: SubjectPolicy,
    /// Set when an identifier of a withheld subject was met.
    met: std::cell::Cell<bool>,
    /// The last few answers of this record: a record key is most often one of its fields'
    /// values (the caller's number), and it is not asked about twice.
    recent: std::cell::RefCell<Recent>,
}

/// The last answers of a gate, by class and canonical value (values up to 32 bytes), in a
/// ring of four.
#[derive(Default)]
struct Recent {
    answers: [Option<Answer>; 4],
    next: usize,
}

#[derive(Clone, Copy)]
struct Answer {
    class: TokenClass,
    len: u8,
    canonical: [u8; 32],
    withheld: bool,
}

impl Recent {
    fn find(&self, class: TokenClass, canonical: &[u8]) -> Option<bool> {
        self.answers
            .iter()
            .flatten()
            .find(|a| a.class == class && &a.canonical[..usize::from(a.len)] == canonical)
            .map(|a| a.withheld)
    }

    fn remember(&mut self, class: TokenClass, canonical: &[u8], withheld: bool) {
        if canonical.len() > 32 {
            return;
        }
        let mut answer = Answer {
            class,
            len: canonical.len() as u8,
            canonical: [0; 32],
            withheld,
        };
        answer.canonical[..canonical.len()].copy_from_slice(canonical);
        self.answers[self.next] = Some(answer);
        self.next = (self.next + 1) % self.answers.len();
    }
}

impl<'a> SubjectGate<'a> {
    /// A gate for one record of a pipeline with `policy`.
    pub fn new(
        key: &'a SubjectKey,
        table: &'a SubjectTable,
        classes: &'a SubjectClasses,
        policy: SubjectPolicy,
    ) -> Self {
        SubjectGate {
            key,
            table,
            classes,
            policy,
            met: std::cell::Cell::new(false),
            recent: std::cell::RefCell::new(Recent::default()),
        }
    }

    /// Whether an identifier of a withheld subject was met in this record.
    pub fn met(&self) -> bool {
        self.met.get()
    }

    /// The token of an identifier: its own, or an unlinked one (and the record marked) when
    /// the person is withheld. The token's HMAC runs while the table's filter line is fetched
    /// from memory (at a million entries it is rarely in a cache); a withheld person's token
    /// is then dropped unused.
    #[inline]
    pub fn token(&self, key: &PseudonymKey, class: TokenClass, canonical: &[u8]) -> Token {
        self.token_and_withheld(key, class, canonical).0
    }

    /// [`Self::token`], and whether the person was withheld (what is derived from the value
    /// beside its token is then withheld too).
    #[inline]
    pub fn token_and_withheld(
        &self,
        key: &PseudonymKey,
        class: TokenClass,
        canonical: &[u8],
    ) -> (Token, bool) {
        let (withheld, token) =
            self.withholds_while(class, canonical, || token::token(key, class, canonical));
        if withheld {
            self.met.set(true);
            (unlinked_token(key), true)
        } else {
            (token, false)
        }
    }

    /// Whether the person behind this canonical value is withheld from this pipeline:
    /// erased, or without the consent its domain asks for. An empty table in a pipeline
    /// that asks for no opt-in withholds no one, and nothing is computed.
    #[inline]
    pub fn withholds(&self, class: TokenClass, canonical: &[u8]) -> bool {
        self.withholds_while(class, canonical, || ()).0
    }

    /// [`Self::withholds`], with `meanwhile` run between the request for the table's memory
    /// and the answer.
    #[inline]
    fn withholds_while<T>(
        &self,
        class: TokenClass,
        canonical: &[u8],
        meanwhile: impl FnOnce() -> T,
    ) -> (bool, T) {
        if !self.classes.contains(class) {
            return (false, meanwhile());
        }
        let opt_in = matches!(self.policy.consent, Some((ConsentMode::OptIn, _)));
        if self.table.is_empty() && !opt_in {
            return (false, meanwhile());
        }
        if let Some(withheld) = self.recent.borrow().find(class, canonical) {
            return (withheld, meanwhile());
        }
        let hint = subject_hint(self.key, class, canonical);
        self.table.prefetch(hint);
        let done = meanwhile();
        let withheld = self.table.withholds(
            hint,
            || subject_bytes(self.key, class, canonical),
            self.policy,
        );
        self.recent
            .borrow_mut()
            .remember(class, canonical, withheld);
        (withheld, done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Secret;

    #[test]
    fn a_subject_id_reads_back_and_an_unlinked_token_has_a_tokens_shape() {
        let key = SubjectKey::new(
            "s-test",
            &Secret::from_b64(&"A".repeat(43)).unwrap_or_else(Secret::generate),
        );
        let bytes = subject_bytes(&key, TokenClass::Phone, b"+6591234567");
        let text = subject_text(&key, &bytes);
        assert_eq!(parse_subject_text(&text), Some(("s-test", bytes)));
        assert_eq!(parse_subject_text("s-test:short"), None);
        let hint = subject_hint(&key, TokenClass::Phone, b"+6591234567");
        assert_ne!(
            hint,
            subject_hint(&key, TokenClass::PhoneRaw, b"+6591234567")
        );
        assert_eq!(parse_hint_text(&hint_text(hint)), Some(hint));
        assert_eq!(hint_text(hint).len(), 11);
        for bad in [
            "",
            "AAAAAAAAAAB",
            "AAAAAAAAAA",
            "AAAAAAAAAAAA",
            "AAAAAAAAAA=",
        ] {
            assert_eq!(parse_hint_text(bad), None, "{bad:?}");
        }
        let pkey = PseudonymKey::new("p-1", &Secret::generate());
        let (a, b) = (unlinked_token(&pkey), unlinked_token(&pkey));
        assert!(a.as_str().starts_with("p-1:") && a.as_str().len() == 4 + 22);
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn a_phone_subject_class_covers_numbers_the_parser_rejects() {
        let classes = SubjectClasses::default_classes();
        assert!(classes.contains(TokenClass::PhoneRaw));
        assert!(classes.contains(TokenClass::Email));
        assert!(!classes.contains(TokenClass::Id));
        assert!(SubjectClasses::parse(&["phone-raw".into()]).is_err());
    }
}
