//! The transform of schemaless JSON records (`format = "json"`): a JSON object in, the
//! sanitized JSON object out, by the key tree of a [`JsonPlan`].
//!
//! Each object is read as its keys in order, each with its value's raw text
//! (serde_json's `RawValue`), so a kept value (a number as the producer wrote it, `1.50` or
//! `12345678901234567890`, a string with its escapes) is copied byte for byte, and keys keep
//! their order. Only what a rule rewrites is decoded. Fail-closed: a record that is not a
//! JSON object, has a key twice in one object, has a key that no rule names (unless the
//! pipeline drops those), or a value whose JSON type its rule does not take (an object where
//! a leaf rule stands, `true` for a phone) is refused whole: the worker dead-letters it.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::leaf::{ip_country, phone_token, pseudonymize, truncate_time};
use super::{ActiveKeys, ErrorKind, Regions, TransformError};
use crate::config::UnknownKeys;
use crate::envelope;
use crate::geoip::Country;
use crate::keys::PseudonymKey;
use crate::phone::attributes::PhoneAttributes;
use crate::phone::PhoneCanon;
use crate::plan::json::{Branch, JsonLeaf, JsonPlan, Node};
use crate::rules::{Action, Attribute};
use crate::subjects::SubjectGate;
use crate::token::TokenClass;

/// Transforms one JSON record into `out` (appended); the phone regions the record named.
/// With a `gate` that meets a withheld subject in a record with sealed fields, the record is
/// walked again with its sealed fields written empty, as the Avro walk does.
pub fn transform(
    plan: &JsonPlan,
    phone: &PhoneCanon,
    keys: &ActiveKeys,
    gate: Option<&SubjectGate<'_>>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<Regions, TransformError> {
    let text = std::str::from_utf8(input)
        .map_err(|_| TransformError::at("(the record)", ErrorKind::InvalidUtf8))?;
    let mut regions = Regions::default();
    for path in &plan.regions {
        regions.push(phone.record_region(find_string(text, path).as_deref()));
    }
    let start = out.len();
    let mut walk = Walk {
        phone,
        keys,
        pseudonym: keys.pseudonym_in(plan.domain.as_deref()),
        regions: &regions,
        gate,
        unknown: plan.unknown,
        seal: !gate.is_some_and(|g| g.met()),
    };
    walk.object(&plan.root, text, out)?;
    if walk.seal && gate.is_some_and(|g| g.met()) && plan.needs_encryption {
        out.truncate(start);
        walk.seal = false;
        walk.object(&plan.root, text, out)?;
    }
    Ok(regions)
}

/// The string at a dotted `path` of `text` (objects only, no arrays), where there is one.
fn find_string<'t>(text: &'t str, path: &str) -> Option<Cow<'t, str>> {
    let mut value: &'t str = text;
    for key in path.split('.') {
        let object = parse_object(value).ok()?;
        value = object.0.into_iter().find(|(k, _)| k == key)?.1.get();
    }
    parse_string(value).ok()
}

/// What a leaf derives beside its value, for one value.
#[derive(Clone, Copy, Default)]
struct Derived {
    phone: Option<PhoneAttributes>,
    country: Option<Country>,
}

struct Walk<'a> {
    phone: &'a PhoneCanon,
    keys: &'a ActiveKeys,
    pseudonym: Option<&'a PseudonymKey>,
    regions: &'a Regions,
    gate: Option<&'a SubjectGate<'a>>,
    unknown: UnknownKeys,
    /// False for a withheld subject's record: sealed fields are written empty.
    seal: bool,
}

impl Walk<'_> {
    /// One object, by `branch`'s rules.
    fn object(&self, branch: &Branch, text: &str, out: &mut Vec<u8>) -> Result<(), TransformError> {
        let at = |kind| match &*branch.path {
            "" => TransformError::at("(the top-level object)", kind),
            path => TransformError::at(path, kind),
        };
        let Object(entries) = parse_object(text).map_err(at)?;
        if has_duplicate(&entries) {
            return Err(at(ErrorKind::DuplicateKey));
        }
        out.push(b'{');
        let mut first = true;
        let mut separate = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        for (key, value) in &entries {
            match branch.keys.get(&**key) {
                None => match self.unknown {
                    UnknownKeys::Drop => continue,
                    UnknownKeys::DeadLetter => return Err(at(ErrorKind::UnnamedKey)),
                },
                Some(Node::Branch(inner)) => {
                    separate(out);
                    write_key(out, key);
                    self.branch_value(inner, value, out)?;
                }
                Some(Node::Leaf(leaf)) if leaf.action == Action::Drop => continue,
                Some(Node::Leaf(leaf)) => {
                    separate(out);
                    write_key(out, key);
                    let at = |kind| TransformError::at(&leaf.path, kind);
                    let derived = self.leaf_value(leaf, value.get(), out).map_err(at)?;
                    for (attribute, key_text) in &leaf.derived_keys {
                        let attribute = *attribute;
                        out.extend_from_slice(key_text);
                        match &derived {
                            Derivation::One(one) => write_attribute(one, attribute, out),
                            Derivation::Null => out.extend_from_slice(b"null"),
                            Derivation::Many(items) => {
                                out.push(b'[');
                                for (i, item) in items.iter().enumerate() {
                                    if i > 0 {
                                        out.push(b',');
                                    }
                                    write_attribute(item, attribute, out);
                                }
                                out.push(b']');
                            }
                        }
                    }
                }
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// A value whose keys have rules: an object, an array of them, or null.
    fn branch_value(
        &self,
        branch: &Branch,
        value: &RawValue,
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let text = value.get();
        match text.as_bytes().first() {
            Some(b'{') => self.object(branch, text, out),
            Some(b'n') => {
                out.extend_from_slice(b"null");
                Ok(())
            }
            Some(b'[') => {
                let items = parse_array(text).map_err(|k| TransformError::at(&branch.path, k))?;
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // An array stands for its items (objects or nulls), not for arrays of
                    // them: a record nested thousands of arrays deep is refused at once.
                    if item.get().starts_with('[') {
                        return Err(TransformError::at(&branch.path, ErrorKind::DoesNotFitRule));
                    }
                    self.branch_value(branch, item, out)?;
                }
                out.push(b']');
                Ok(())
            }
            _ => Err(TransformError::at(&branch.path, ErrorKind::DoesNotFitRule)),
        }
    }

    /// A leaf's value (or array of values) rewritten into `out`; what it derives.
    fn leaf_value(
        &self,
        leaf: &JsonLeaf,
        text: &str,
        out: &mut Vec<u8>,
    ) -> Result<Derivation, ErrorKind> {
        match text.as_bytes().first() {
            Some(b'[') => {
                let items = parse_array(text)?;
                let mut derived = Vec::new();
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match self.scalar(leaf, item.get(), out)? {
                        Derivation::One(one) => derived.push(one),
                        Derivation::Null => derived.push(Derived::default()),
                        // Arrays of arrays are not a shape a leaf rule takes.
                        Derivation::Many(_) => return Err(ErrorKind::DoesNotFitRule),
                    }
                }
                out.push(b']');
                Ok(Derivation::Many(derived))
            }
            _ => self.scalar(leaf, text, out),
        }
    }

    /// One value that is not an array.
    fn scalar(
        &self,
        leaf: &JsonLeaf,
        text: &str,
        out: &mut Vec<u8>,
    ) -> Result<Derivation, ErrorKind> {
        let kind = JsonType::of(text);
        if kind == JsonType::Null {
            out.extend_from_slice(b"null");
            return Ok(Derivation::Null);
        }
        // A number past f64's range (`1e400`) is refused under every rule, as strict readers
        // refuse it: kept it would be published as it is, tokenized its text would be.
        if kind == JsonType::Number && !text.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(ErrorKind::NotJsonObject);
        }
        match (leaf.action, kind) {
            // A Protobuf map its schema describes, kept whole (its JSON mapping, as read).
            (Action::Keep, JsonType::Object) if leaf.keep_object => {
                out.extend_from_slice(text.as_bytes());
                Ok(Derivation::Null)
            }
            (_, JsonType::Object | JsonType::Array) => Err(ErrorKind::DoesNotFitRule),
            (Action::Keep, _) => {
                // A string with `\u` escapes is decoded once, so that one a strict reader
                // refuses (a lone surrogate, `"\ud800"`) is refused here too, not published.
                if kind == JsonType::String && text.contains("\\u") {
                    parse_string(text).map_err(|_| ErrorKind::NotJsonObject)?;
                }
                out.extend_from_slice(text.as_bytes());
                Ok(Derivation::Null)
            }
            // A withheld subject's sealed field holds no envelope: null, as a nullable Avro
            // field does (in JSON every value may be null).
            (Action::Encrypt, JsonType::String) if !self.seal => {
                out.extend_from_slice(b"null");
                Ok(Derivation::Null)
            }
            (Action::Encrypt, JsonType::String) => {
                let value = parse_string(text)?;
                let key = self
                    .keys
                    .encryption
                    .as_deref()
                    .ok_or(ErrorKind::NoEncryptionKey)?;
                let mut sealed = Vec::with_capacity(envelope::sealed_len(key, value.len()));
                envelope::seal_into(key, &leaf.path, value.as_bytes(), &mut sealed);
                out.push(b'"');
                let mut encoded = String::new();
                base64::engine::general_purpose::STANDARD.encode_string(&sealed, &mut encoded);
                out.extend_from_slice(encoded.as_bytes());
                out.push(b'"');
                Ok(Derivation::Null)
            }
            (Action::TimeTruncate(unit), JsonType::Number) => {
                let value: i64 = text.parse().map_err(|_| ErrorKind::NotAnInteger)?;
                let truncated = truncate_time(value, unit.millis(), false)?;
                out.extend_from_slice(itoa::Buffer::new().format(truncated).as_bytes());
                Ok(Derivation::Null)
            }
            (Action::Bucket { label }, JsonType::Number) => {
                let buckets = leaf.bucketing.as_deref().ok_or(ErrorKind::DoesNotFitRule)?;
                let value: i64 = text.parse().map_err(|_| ErrorKind::NotAnInteger)?;
                if label {
                    write_str(out, buckets.label(value));
                } else {
                    out.extend_from_slice(
                        itoa::Buffer::new()
                            .format(buckets.lower(value, i64::MIN))
                            .as_bytes(),
                    );
                }
                Ok(Derivation::Null)
            }
            // A number is tokenized as the producer wrote it (`6281234567` as that text).
            (action, JsonType::String | JsonType::Number) if action.needs_pseudonym_key() => {
                let value = match kind {
                    JsonType::String => parse_string(text)?,
                    _ => Cow::Borrowed(text),
                };
                let region = match leaf.region {
                    Some(i) => self.regions[i],
                    None => self.phone.region(),
                };
                if action == Action::Token(TokenClass::Phone) && !leaf.derive.is_empty() {
                    let (token, attributes) =
                        phone_token(&value, self.phone, region, self.pseudonym, self.gate, true)?;
                    write_str(out, token.as_str());
                    return Ok(Derivation::One(Derived {
                        phone: attributes,
                        country: None,
                    }));
                }
                let pseudonym = pseudonymize(
                    action,
                    &value,
                    self.phone,
                    region,
                    self.pseudonym,
                    self.gate,
                )?;
                write_str(out, pseudonym.as_str());
                let country = leaf
                    .country
                    .as_deref()
                    .and_then(|db| ip_country(action, &value, db, self.gate));
                Ok(Derivation::One(Derived {
                    phone: None,
                    country,
                }))
            }
            _ => Err(ErrorKind::DoesNotFitRule),
        }
    }
}

/// What a leaf value derives: nothing (null), one value's, or an array's, item by item.
enum Derivation {
    Null,
    One(Derived),
    Many(Vec<Derived>),
}

/// One derived value: a string, a number, or null.
fn write_attribute(derived: &Derived, attribute: Attribute, out: &mut Vec<u8>) {
    if attribute == Attribute::Country {
        match derived.country {
            Some(country) => write_str(out, country.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        return;
    }
    let Some(attributes) = &derived.phone else {
        out.extend_from_slice(b"null");
        return;
    };
    match attribute {
        Attribute::Region => match attributes.region {
            Some(region) => write_str(out, region),
            None => out.extend_from_slice(b"null"),
        },
        Attribute::CallingCode => out.extend_from_slice(
            itoa::Buffer::new()
                .format(attributes.calling_code)
                .as_bytes(),
        ),
        Attribute::NumberType => write_str(out, attributes.number_type.as_str()),
        Attribute::Country => unreachable!("written above"),
    }
}

/// The JSON type of a value's raw text, by its first byte (serde_json has checked the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn of(text: &str) -> JsonType {
        match text.as_bytes().first() {
            Some(b'n') => JsonType::Null,
            Some(b't' | b'f') => JsonType::Bool,
            Some(b'"') => JsonType::String,
            Some(b'[') => JsonType::Array,
            Some(b'{') => JsonType::Object,
            _ => JsonType::Number,
        }
    }
}

/// A key as JSON text (escaped as needed).
fn write_key(out: &mut Vec<u8>, key: &str) {
    write_str(out, key);
    out.push(b':');
}

/// A string as JSON text.
fn write_str(out: &mut Vec<u8>, value: &str) {
    // Writing to a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Whether two entries of one object have the same key. Quadratic only for small objects.
fn has_duplicate(entries: &[(Cow<'_, str>, &RawValue)]) -> bool {
    if entries.len() <= 16 {
        return entries
            .iter()
            .enumerate()
            .any(|(i, (k, _))| entries[..i].iter().any(|(other, _)| other == k));
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    entries.iter().any(|(k, _)| !seen.insert(&**k))
}

/// An object's entries in the order written: each key (unescaped) and its value's raw text.
struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

fn parse_object(text: &str) -> Result<Object<'_>, ErrorKind> {
    serde_json::from_str(text).map_err(|_| ErrorKind::NotJsonObject)
}

fn parse_array(text: &str) -> Result<Vec<&RawValue>, ErrorKind> {
    serde_json::from_str(text).map_err(|_| ErrorKind::NotJsonObject)
}

/// A JSON string's value, borrowed where it has no escapes.
fn parse_string(text: &str) -> Result<Cow<'_, str>, ErrorKind> {
    serde_json::from_str::<Text<'_>>(text)
        .map(|t| t.0)
        .map_err(|_| ErrorKind::DoesNotFitRule)
}

/// A string borrowed from the input where it can be.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Object<'de>, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Object(entries))
            }
            // Never called for JSON text (serde_json calls visit_map), but a sequence is not
            // an object either way.
            fn visit_seq<S: SeqAccess<'de>>(self, _: S) -> Result<Object<'de>, S::Error> {
                Err(serde::de::Error::custom("an array, not an object"))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}
