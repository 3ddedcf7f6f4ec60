//! The reference path: decode to apache-avro's `Value`, rewrite by the rules, encode.
//!
//! It walks the rules by field path, not the compiled plan, so the property tests that
//! compare it with the fast path check the plan compiler and the binary walker too.

use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum};

use super::leaf::{pseudonymize, truncate_time};
use super::{ActiveKeys, ErrorKind, TransformError};
use crate::envelope;
use crate::keys::PseudonymKey;
use crate::phone::attributes;
use crate::phone::PhoneCanon;
use crate::plan::Plan;
use crate::rules::{Action, Attribute, Derive, Rules};

pub fn transform(
    plan: &Plan,
    phone: &PhoneCanon,
    keys: &ActiveKeys,
    input: &[u8],
) -> Result<Vec<u8>, TransformError> {
    let mut reader = input;
    let value = from_avro_datum(&plan.input, &mut reader, None)
        .map_err(|_| TransformError::at("", ErrorKind::Truncated))?;
    if !reader.is_empty() {
        return Err(TransformError::at("", ErrorKind::TrailingBytes));
    }
    // The record's own phone regions, as the fast path reads them.
    let regions: Vec<_> = plan
        .regions
        .iter()
        .map(|source| phone.record_region(find_string(&value, &source.path)))
        .collect();
    let rewriter = Rewriter {
        rules: &plan.rules,
        phone,
        keys,
        pseudonym: keys.pseudonym_in(plan.domain.as_deref()),
        regions: &plan
            .regions
            .iter()
            .map(|s| &*s.path)
            .zip(regions)
            .collect::<Vec<_>>(),
    };
    let value = rewriter.branch(value, "")?;
    to_avro_datum(&plan.output, value)
        .map_err(|_| TransformError::at("", ErrorKind::SchemaMismatch))
}

/// The string at a dotted path of records (through nullable values); `None` where a value
/// on the way is null or the path leads nowhere.
fn find_string<'v>(value: &'v Value, path: &str) -> Option<&'v str> {
    let mut value = value;
    for name in path.split('.') {
        if let Value::Union(_, inner) = value {
            value = inner;
        }
        let Value::Record(fields) = value else {
            return None;
        };
        value = &fields.iter().find(|(n, _)| n == name)?.1;
    }
    if let Value::Union(_, inner) = value {
        value = inner;
    }
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

struct Rewriter<'a> {
    rules: &'a Rules,
    phone: &'a PhoneCanon,
    keys: &'a ActiveKeys,
    /// The active pseudonym key in the plan's domain.
    pseudonym: Option<&'a PseudonymKey>,
    /// Region field path → the region it gave this record.
    regions: &'a [(&'a str, rlibphonenumber::Region)],
}

impl Rewriter<'_> {
    /// A value that holds records: its fields are looked up in the rules.
    fn branch(&self, value: Value, path: &str) -> Result<Value, TransformError> {
        Ok(match value {
            Value::Record(fields) => {
                let mut out = Vec::with_capacity(fields.len());
                for (name, value) in fields {
                    let path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    match self.rules.get(&path) {
                        None => out.push((name, self.branch(value, &path)?)),
                        Some(Action::Keep) => out.push((name, value)),
                        Some(Action::Drop) => {}
                        Some(action) => {
                            let derive = self.rules.derived(&path);
                            let derived = (!derive.is_empty())
                                .then(|| self.derived(&value, derive, &path, &name));
                            out.push((name, self.leaf(value, action, &path)?));
                            out.extend(derived.into_iter().flatten());
                        }
                    }
                }
                Value::Record(out)
            }
            Value::Union(index, inner) => Value::Union(index, Box::new(self.branch(*inner, path)?)),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.branch(v, path))
                    .collect::<Result<_, _>>()?,
            ),
            other => other,
        })
    }

    fn leaf(&self, value: Value, action: Action, path: &str) -> Result<Value, TransformError> {
        let fail = |kind| TransformError::at(path, kind);
        Ok(match value {
            Value::Null => Value::Null,
            Value::Union(index, inner) => {
                Value::Union(index, Box::new(self.leaf(*inner, action, path)?))
            }
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.leaf(v, action, path))
                    .collect::<Result<_, _>>()?,
            ),
            number @ (Value::Int(_)
            | Value::Long(_)
            | Value::TimeMillis(_)
            | Value::TimeMicros(_)
            | Value::TimestampMillis(_)
            | Value::TimestampMicros(_)
            | Value::TimestampNanos(_)
            | Value::LocalTimestampMillis(_)
            | Value::LocalTimestampMicros(_)
            | Value::LocalTimestampNanos(_)) => self.number(number, action, path)?,
            Value::String(text) if action == Action::Encrypt => {
                Value::Bytes(self.seal(text.as_bytes(), path)?)
            }
            Value::Bytes(bytes) if action == Action::Encrypt => {
                Value::Bytes(self.seal(&bytes, path)?)
            }
            Value::String(text) => Value::String(
                pseudonymize(
                    action,
                    &text,
                    self.phone,
                    self.region_for(path),
                    self.pseudonym,
                    // The reference path is the baseline without a subject registry.
                    None,
                )
                .map_err(fail)?
                .as_str()
                .to_owned(),
            ),
            _ => return Err(fail(ErrorKind::SchemaMismatch)),
        })
    }

    /// The fields a phone or IP rule derives: a phone's from the full parse of the value (the
    /// fast path reads them from the canonical form instead: the property tests compare the
    /// two), an IP's country from the address as spec §3 parses it. The reference path has no
    /// subject registry, so nothing here is withheld.
    fn derived(
        &self,
        value: &Value,
        derive: Derive,
        path: &str,
        name: &str,
    ) -> Vec<(String, Value)> {
        let Value::Array(items) = unwrapped(value) else {
            // One value: each attribute a nullable field.
            return derive
                .iter()
                .zip(self.attribute_values(value, derive, path))
                .map(|(attribute, value)| (attribute.field_name(name), value))
                .collect();
        };
        // An array: each attribute an array of the items' values, nullable where the field is.
        let per_item: Vec<Vec<Value>> = items
            .iter()
            .map(|item| self.attribute_values(item, derive, path))
            .collect();
        derive
            .iter()
            .enumerate()
            .map(|(i, attribute)| {
                let array = Value::Array(per_item.iter().map(|values| values[i].clone()).collect());
                let array = match value {
                    Value::Union(..) => Value::Union(1, Box::new(array)),
                    _ => array,
                };
                (attribute.field_name(name), array)
            })
            .collect()
    }

    /// The derived attributes of one phone number or address (a string, or a nullable one), in
    /// field order, each a `["null", T]` union.
    fn attribute_values(&self, value: &Value, derive: Derive, path: &str) -> Vec<Value> {
        let text = match unwrapped(value) {
            Value::String(text) => Some(text),
            _ => None,
        };
        let nullable = |value: Option<Value>| match value {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(value) => Value::Union(1, Box::new(value)),
        };
        let country = self.rules.country_db().and_then(|db| {
            let ip = crate::ip::parse_ip(text?)?;
            match self.rules.get(path) {
                Some(Action::IpTruncate { v4, v6 }) => {
                    db.country(crate::ip::truncate_ip(ip, v4, v6))
                }
                _ => db.country(ip),
            }
        });
        let found = if derive.has(Attribute::Country) {
            None
        } else {
            text.and_then(|t| attributes::of_full_parse(self.region_for(path), t.trim()))
        };
        derive
            .iter()
            .map(|attribute| {
                nullable(match attribute {
                    Attribute::Country => country.map(|c| Value::String(c.as_str().to_owned())),
                    Attribute::Region => {
                        found.and_then(|a| a.region.map(|r| Value::String(r.to_owned())))
                    }
                    Attribute::CallingCode => found.map(|a| Value::Int(i32::from(a.calling_code))),
                    Attribute::NumberType => {
                        found.map(|a| Value::String(a.number_type.as_str().to_owned()))
                    }
                })
            })
            .collect()
    }

    /// A number rewritten by a generalizing action, from its `Value` (whose variant says its
    /// logical type, and so the length of a tick).
    fn number(&self, value: Value, action: Action, path: &str) -> Result<Value, TransformError> {
        let fail = |kind| TransformError::at(path, kind);
        let (raw, ticks_per_milli, int): (i64, i64, bool) = match &value {
            Value::Int(v) | Value::TimeMillis(v) => (i64::from(*v), 1, true),
            Value::Long(v) | Value::TimestampMillis(v) | Value::LocalTimestampMillis(v) => {
                (*v, 1, false)
            }
            Value::TimeMicros(v) | Value::TimestampMicros(v) | Value::LocalTimestampMicros(v) => {
                (*v, 1_000, false)
            }
            Value::TimestampNanos(v) | Value::LocalTimestampNanos(v) => (*v, 1_000_000, false),
            _ => return Err(fail(ErrorKind::SchemaMismatch)),
        };
        let new = match action {
            Action::TimeTruncate(unit) => {
                truncate_time(raw, unit.millis() * ticks_per_milli, int).map_err(fail)?
            }
            Action::Bucket { label } => {
                let buckets = self
                    .rules
                    .bucketing(path)
                    .ok_or_else(|| fail(ErrorKind::SchemaMismatch))?;
                if label {
                    return Ok(Value::String(buckets.label(raw).to_owned()));
                }
                buckets.lower(raw, if int { i64::from(i32::MIN) } else { i64::MIN })
            }
            _ => return Err(fail(ErrorKind::SchemaMismatch)),
        };
        // The same variant (type and logical type) with the new value; ints stay within 32 bits.
        let as_int = |v: i64| i32::try_from(v).map_err(|_| fail(ErrorKind::OutOfRange));
        Ok(match value {
            Value::Int(_) => Value::Int(as_int(new)?),
            Value::TimeMillis(_) => Value::TimeMillis(as_int(new)?),
            Value::Long(_) => Value::Long(new),
            Value::TimestampMillis(_) => Value::TimestampMillis(new),
            Value::LocalTimestampMillis(_) => Value::LocalTimestampMillis(new),
            Value::TimeMicros(_) => Value::TimeMicros(new),
            Value::TimestampMicros(_) => Value::TimestampMicros(new),
            Value::LocalTimestampMicros(_) => Value::LocalTimestampMicros(new),
            Value::TimestampNanos(_) => Value::TimestampNanos(new),
            Value::LocalTimestampNanos(_) => Value::LocalTimestampNanos(new),
            _ => return Err(fail(ErrorKind::SchemaMismatch)),
        })
    }

    /// The region the phone field at `path` is read with.
    fn region_for(&self, path: &str) -> rlibphonenumber::Region {
        self.rules
            .region_field(path)
            .and_then(|field| self.regions.iter().find(|(p, _)| *p == field))
            .map_or(self.phone.region(), |(_, region)| *region)
    }

    fn seal(&self, plaintext: &[u8], path: &str) -> Result<Vec<u8>, TransformError> {
        let key = self
            .keys
            .encryption
            .as_deref()
            .ok_or_else(|| TransformError::at(path, ErrorKind::NoEncryptionKey))?;
        let mut out = Vec::with_capacity(envelope::sealed_len(key, plaintext.len()));
        envelope::seal_into(key, path, plaintext, &mut out);
        Ok(out)
    }
}

/// A value with one union wrapper taken off (a nullable field's value), else itself.
fn unwrapped(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}
