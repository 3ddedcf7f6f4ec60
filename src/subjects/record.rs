//! The records of the subject registry and of the erasure notices, as they are on the wire
//! (docs/formats.md §5). Both are UTF-8 JSON values under UTF-8 keys; neither ever holds a raw
//! value, and the registry holds no token of an analytics epoch.
//!
//! Registry key: the subject id, `/`, and the *aspect* the record states: `erased`, `consent`
//! (the default domain) or `consent/<domain>`. One key per aspect, so that compaction keeps
//! the latest word on each, and two requests about different aspects of one person never
//! overwrite each other.

use serde::{Deserialize, Serialize};

use super::{hint_text, parse_hint_text, parse_subject_text};

/// The `format` of a registry record's value, as written: with the subject hint.
pub const REGISTRY_FORMAT: &str = "pseudonymizer-subject/v2";
/// The first format, without a hint: still read (a worker then computes the subject id of
/// every identifier it meets, as it cannot rule any out by its hint).
pub const REGISTRY_FORMAT_V1: &str = "pseudonymizer-subject/v1";
/// The `format` of an erasure notice's value.
pub const NOTICE_FORMAT: &str = "pseudonymizer-erasure/v1";

/// What a registry record says about one aspect of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectState {
    Erased,
    OptedOut,
    OptedIn,
}

impl SubjectState {
    /// The spelling on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectState::Erased => "erased",
            SubjectState::OptedOut => "opted-out",
            SubjectState::OptedIn => "opted-in",
        }
    }
}

/// One registry record's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryRecord {
    pub format: String,
    /// The subject id's text (`s-…:…`).
    pub subject: String,
    /// The subject hint's text (format v2; absent in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub state: SubjectState,
    /// The consent's domain (`null`: the default domain); always `null` for an erasure.
    pub domain: Option<String>,
    /// When the request was recorded (RFC 3339, UTC).
    pub at: String,
    /// The request it came from.
    pub request: String,
}

/// Why a registry record was not applied. Names the problem, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("its value is not a subject registry record: {0}")]
    Value(String),
    #[error("its key does not name the subject and aspect its value states")]
    KeyMismatch,
    #[error("its subject id is not one")]
    BadSubject,
}

impl RegistryRecord {
    /// A new record of `state` for `subject`, whose hint is `hint` (in `domain`, for a
    /// consent).
    pub fn new(
        subject: String,
        hint: u64,
        state: SubjectState,
        domain: Option<&str>,
        at: &str,
        request: &str,
    ) -> Self {
        RegistryRecord {
            format: REGISTRY_FORMAT.to_owned(),
            subject,
            hint: Some(hint_text(hint)),
            state,
            domain: match state {
                SubjectState::Erased => None,
                _ => domain.map(str::to_owned),
            },
            at: at.to_owned(),
            request: request.to_owned(),
        }
    }

    /// The Kafka key of this record: subject id, `/`, aspect.
    pub fn key(&self) -> String {
        record_key(&self.subject, self.state, self.domain.as_deref())
    }

    /// The record's subject hint; `None` for a v1 record (parsed records have a valid one).
    pub fn hint(&self) -> Option<u64> {
        self.hint.as_deref().and_then(parse_hint_text)
    }

    /// The value's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }

    /// Reads a record, checking that its key names the subject and aspect of its value.
    pub fn parse(key: &[u8], value: &[u8]) -> Result<Self, RecordError> {
        let record: RegistryRecord =
            serde_json::from_slice(value).map_err(|e| RecordError::Value(e.classify_text()))?;
        match (record.format.as_str(), &record.hint) {
            (REGISTRY_FORMAT, Some(hint)) if parse_hint_text(hint).is_some() => {}
            (REGISTRY_FORMAT, _) => {
                return Err(RecordError::Value("its hint is missing or not one".into()))
            }
            (REGISTRY_FORMAT_V1, None) => {}
            (REGISTRY_FORMAT_V1, Some(_)) => {
                return Err(RecordError::Value("a v1 record has no hint".into()))
            }
            _ => return Err(RecordError::Value("an unknown format".into())),
        }
        if parse_subject_text(&record.subject).is_none() {
            return Err(RecordError::BadSubject);
        }
        if record.state == SubjectState::Erased && record.domain.is_some() {
            return Err(RecordError::Value("an erasure names no domain".into()));
        }
        if key != record.key().as_bytes() {
            return Err(RecordError::KeyMismatch);
        }
        Ok(record)
    }
}

/// The registry key of an aspect: `<subject>/erased`, `<subject>/consent`,
/// `<subject>/consent/<domain>`.
pub fn record_key(subject: &str, state: SubjectState, domain: Option<&str>) -> String {
    match (state, domain) {
        (SubjectState::Erased, _) => format!("{subject}/erased"),
        (_, None) => format!("{subject}/consent"),
        (_, Some(domain)) => format!("{subject}/consent/{domain}"),
    }
}

/// The subject id and aspect of a registry key, for a tombstone (a record with no value).
pub fn parse_key(key: &[u8]) -> Option<(&str, Aspect<'_>)> {
    let key = std::str::from_utf8(key).ok()?;
    let (subject, aspect) = key.split_once('/')?;
    parse_subject_text(subject)?;
    let aspect = match aspect {
        "erased" => Aspect::Erased,
        "consent" => Aspect::Consent(None),
        other => Aspect::Consent(Some(other.strip_prefix("consent/")?)),
    };
    Some((subject, aspect))
}

/// What a registry key is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aspect<'a> {
    Erased,
    Consent(Option<&'a str>),
}

/// One of the person's tokens in a notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeToken {
    pub token: String,
    pub class: String,
    pub key_id: String,
    /// The pseudonymisation domain (`null`: the default).
    pub domain: Option<String>,
}

/// An erasure notice: what downstream stores delete (docs/security.md, "A person's rights").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    pub format: String,
    /// The request id, also the record's key.
    pub request: String,
    pub at: String,
    /// The person's subject ids, one per identifier of the request.
    pub subjects: Vec<String>,
    /// Their tokens under every pseudonym key with a secret, in every configured domain and
    /// class.
    pub tokens: Vec<NoticeToken>,
}

impl Notice {
    /// Reads a notice (the key must be its request id).
    pub fn parse(key: &[u8], value: &[u8]) -> Result<Self, String> {
        let notice: Notice = serde_json::from_slice(value)
            .map_err(|e| format!("not a notice: {}", e.classify_text()))?;
        if notice.format != NOTICE_FORMAT {
            return Err("not a notice: an unknown format".into());
        }
        if key != notice.request.as_bytes() {
            return Err("its key is not its request id".into());
        }
        Ok(notice)
    }
}

/// Checks a request id: 1–64 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_request_id(id: &str) -> Result<(), String> {
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err("a request id is 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'".into())
    }
}

/// A new request id: `req-`, the UTC time to the second, and 8 random hex digits.
pub fn new_request_id(now: &str) -> String {
    use rand::RngCore;
    let digits: String = now.chars().filter(char::is_ascii_digit).take(14).collect();
    format!("req-{digits}-{:08x}", rand::rngs::OsRng.next_u32())
}

/// A serde_json error's category and position, without the input text it may quote.
trait ClassifyText {
    fn classify_text(&self) -> String;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "s-1:AAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn a_record_reads_back_only_under_its_own_key() {
        let record = RegistryRecord::new(
            SUBJECT.into(),
            0x0123_4567_89ab_cdef,
            SubjectState::OptedOut,
            Some("marketing"),
            "2026-12-04T00:00:00Z",
            "req-1",
        );
        assert_eq!(record.key(), format!("{SUBJECT}/consent/marketing"));
        let json = record.to_json();
        assert_eq!(
            RegistryRecord::parse(record.key().as_bytes(), json.as_bytes()),
            Ok(record.clone())
        );
        let wrong = format!("{SUBJECT}/consent");
        assert_eq!(
            RegistryRecord::parse(wrong.as_bytes(), json.as_bytes()),
            Err(RecordError::KeyMismatch)
        );
        assert!(RegistryRecord::parse(b"k", b"{\"format\":1}").is_err());
        assert_eq!(record.hint(), Some(0x0123_4567_89ab_cdef));

        // v2 needs a hint; v1 (the first format) has none and is still read.
        let key = record.key();
        let v1 = json.replace(REGISTRY_FORMAT, REGISTRY_FORMAT_V1).replace(
            &format!("\"hint\":\"{}\",", record.hint.as_deref().unwrap()),
            "",
        );
        let read = RegistryRecord::parse(key.as_bytes(), v1.as_bytes()).unwrap();
        assert_eq!((read.hint(), read.state), (None, SubjectState::OptedOut));
        let no_hint = v1.replace(REGISTRY_FORMAT_V1, REGISTRY_FORMAT);
        assert!(RegistryRecord::parse(key.as_bytes(), no_hint.as_bytes()).is_err());
        let v1_with_hint = json.replace(REGISTRY_FORMAT, REGISTRY_FORMAT_V1);
        assert!(RegistryRecord::parse(key.as_bytes(), v1_with_hint.as_bytes()).is_err());
        let bad_hint = json.replace(record.hint.as_deref().unwrap(), "not-a-hint!");
        assert!(RegistryRecord::parse(key.as_bytes(), bad_hint.as_bytes()).is_err());
        assert_eq!(
            parse_key(format!("{SUBJECT}/consent/marketing").as_bytes()),
            Some((SUBJECT, Aspect::Consent(Some("marketing"))))
        );
        assert_eq!(
            parse_key(format!("{SUBJECT}/erased").as_bytes()),
            Some((SUBJECT, Aspect::Erased))
        );
        assert_eq!(parse_key(b"nonsense/erased"), None);
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(check_request_id("req-20261204-00ab").is_ok());
        assert!(check_request_id("").is_err());
        assert!(check_request_id("a b").is_err());
        assert!(check_request_id(&"x".repeat(65)).is_err());
        assert!(check_request_id(&new_request_id("2026-12-04T21:00:00Z")).is_ok());
    }
}
