//! `pseudonymizer explain`: what a config does to each field, shown on samples, without
//! writing anything.
//!
//! For each pipeline: every leaf field of its input schema (full path, Avro type), its rule,
//! and what a sample value becomes through the real transform (the same engine and keys the
//! worker uses); then the derived output schema's fields. Samples are made for each field's
//! type and rule (a phone rule gets `+6281234567890`, an IP rule `192.0.2.1`, …), or, with
//! `--input F.avro`, taken from the file's first event. A file is personal data: of its event
//! only the sanitized values and the raw fields' types are printed, never a raw value. Tokens
//! need the keyring (the config's, or `--keyring`); without it, explain says so and shows the
//! actions only.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use apache_avro::schema::Name;
use apache_avro::types::Value;
use apache_avro::Schema;
use clap::Args;
use serde_json::json;

use super::check::{load_all, Format};
use super::ConfigArgs;
use crate::config::quote;
use crate::plan::Plan;
use crate::rules::{Action, Rules};
use crate::token::TokenClass;
use crate::transform::{ActiveKeys, Engine};

/// `explain`: each pipeline's fields, rules and sample results.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Take the samples from the first event of this Avro container file instead of making
    /// them. Only sanitized values and the raw fields' types are printed (the file is
    /// personal data); its writer schema's record name picks the pipeline.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// `text` (a table per pipeline), or `json`: one document for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Deepest nesting walked (the plan compiler refuses deeper schemas anyway).
const MAX_DEPTH: usize = 32;

/// Named types of a schema, to follow references.
type Names = HashMap<Name, Schema>;

fn names_of(schema: &Schema) -> Names {
    apache_avro::schema::ResolvedSchema::try_from(schema)
        .map(|resolved| {
            resolved
                .get_names()
                .iter()
                .map(|(name, schema)| (name.clone(), (*schema).clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn resolve<'a>(schema: &'a Schema, names: &'a Names) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).unwrap_or(schema),
        other => other,
    }
}

/// Whether a field of this type is a branch (its record's fields get the rules): a record,
/// directly, in a union, or as array items; as the plan compiler reads it.
fn holds_record(schema: &Schema, names: &Names, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match resolve(schema, names) {
        Schema::Record(_) => true,
        Schema::Union(u) => u
            .variants()
            .iter()
            .any(|v| holds_record(v, names, depth + 1)),
        Schema::Array(a) => holds_record(&a.items, names, depth + 1),
        _ => false,
    }
}

/// A type as a short text: `string`, `long (timestamp-millis)`, `null | string`, ….
fn type_name(schema: &Schema, depth: usize) -> String {
    if depth > MAX_DEPTH {
        return "…".to_owned();
    }
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Array(a) => format!("array of {}", type_name(&a.items, depth + 1)),
        Schema::Map(m) => format!("map of {}", type_name(&m.types, depth + 1)),
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(|v| type_name(v, depth + 1))
            .collect::<Vec<_>>()
            .join(" | "),
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed({}) {}", f.size, f.name.fullname(None)),
        Schema::Decimal(_) | Schema::BigDecimal => "decimal".into(),
        Schema::Uuid => "string (uuid)".into(),
        Schema::Date => "int (date)".into(),
        Schema::TimeMillis => "int (time-millis)".into(),
        Schema::TimeMicros => "long (time-micros)".into(),
        Schema::TimestampMillis => "long (timestamp-millis)".into(),
        Schema::TimestampMicros => "long (timestamp-micros)".into(),
        Schema::TimestampNanos => "long (timestamp-nanos)".into(),
        Schema::LocalTimestampMillis => "long (local-timestamp-millis)".into(),
        Schema::LocalTimestampMicros => "long (local-timestamp-micros)".into(),
        Schema::LocalTimestampNanos => "long (local-timestamp-nanos)".into(),
        Schema::Duration => "fixed(12) (duration)".into(),
        Schema::Ref { name } => name.fullname(None),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Every leaf field (path, type) under `schema` at `path`, in schema order.
fn schema_leaves(
    schema: &Schema,
    names: &Names,
    path: &str,
    depth: usize,
    out: &mut Vec<(String, String)>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    if !path.is_empty() && !holds_record(schema, names, depth) {
        if !out.iter().any(|(p, _)| p == path) {
            out.push((path.to_owned(), type_name(schema, 0)));
        }
        return;
    }
    match resolve(schema, names) {
        Schema::Record(r) => {
            for field in &r.fields {
                schema_leaves(
                    &field.schema,
                    names,
                    &join(path, &field.name),
                    depth + 1,
                    out,
                );
            }
        }
        Schema::Union(u) => {
            for variant in u.variants() {
                if holds_record(variant, names, depth + 1) {
                    schema_leaves(variant, names, path, depth + 1, out);
                }
            }
        }
        Schema::Array(a) => schema_leaves(&a.items, names, path, depth + 1, out),
        _ => {}
    }
}

/// Every leaf value under `value` at `path` (an array's first item stands for all).
fn value_leaves<'v>(
    value: &'v Value,
    path: &str,
    depth: usize,
    out: &mut BTreeMap<String, &'v Value>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let is_record = |v: &Value| match v {
        Value::Record(_) => true,
        Value::Union(_, inner) => matches!(**inner, Value::Record(_)),
        _ => false,
    };
    match value {
        Value::Record(fields) => {
            for (name, field) in fields {
                value_leaves(field, &join(path, name), depth + 1, out);
            }
        }
        Value::Union(_, inner) if is_record(inner) => value_leaves(inner, path, depth + 1, out),
        Value::Array(items) if items.first().is_some_and(is_record) => {
            value_leaves(&items[0], path, depth + 1, out)
        }
        leaf => {
            out.entry(path.to_owned()).or_insert(leaf);
        }
    }
}

/// The sample a string field gets for its rule.
fn string_sample(action: Option<Action>, is_region: bool) -> &'static str {
    if is_region {
        return "ID";
    }
    match action {
        Some(Action::Token(TokenClass::Phone)) => "+6281234567890",
        Some(Action::Token(TokenClass::Ip) | Action::IpPrefix | Action::IpTruncate { .. }) => {
            "192.0.2.1"
        }
        Some(Action::Token(TokenClass::Email)) => "someone@example.com",
        Some(Action::Token(_)) => "id-000123",
        Some(Action::Encrypt) => "sample content",
        _ => "sample text",
    }
}

/// A made-up value of `schema` for the field at `path`, fitting its rule.
fn sample(
    schema: &Schema,
    names: &Names,
    rules: &Rules,
    path: &str,
    depth: usize,
) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deep".to_owned());
    }
    let action = rules.get(path);
    let is_region = rules.region_paths().contains(&path);
    Ok(match resolve(schema, names) {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(true),
        Schema::Int => Value::Int(42),
        Schema::Long => Value::Long(1234),
        Schema::Float => Value::Float(1.5),
        Schema::Double => Value::Double(2.5),
        Schema::Bytes => Value::Bytes(string_sample(action, is_region).as_bytes().to_vec()),
        Schema::String => Value::String(string_sample(action, is_region).to_owned()),
        Schema::Array(a) => Value::Array(vec![sample(&a.items, names, rules, path, depth + 1)?]),
        Schema::Map(m) => Value::Map(
            [(
                "key".to_owned(),
                sample(&m.types, names, rules, path, depth + 1)?,
            )]
            .into(),
        ),
        Schema::Union(u) => {
            let (index, variant) = u
                .variants()
                .iter()
                .enumerate()
                .find(|(_, v)| !matches!(v, Schema::Null))
                .unwrap_or((0, &Schema::Null));
            let index = u32::try_from(index).map_err(|_| "a union too wide".to_owned())?;
            Value::Union(
                index,
                Box::new(sample(variant, names, rules, path, depth + 1)?),
            )
        }
        Schema::Record(r) => Value::Record(
            r.fields
                .iter()
                .map(|f| {
                    let child = join(path, &f.name);
                    Ok((
                        f.name.clone(),
                        sample(&f.schema, names, rules, &child, depth + 1)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        ),
        Schema::Enum(e) => Value::Enum(0, e.symbols.first().cloned().unwrap_or_default()),
        Schema::Fixed(f) => Value::Fixed(f.size, vec![0; f.size]),
        Schema::Date => Value::Date(20_000),
        Schema::TimeMillis => Value::TimeMillis(0),
        Schema::TimeMicros => Value::TimeMicros(0),
        Schema::TimestampMillis => Value::TimestampMillis(1_764_700_000_000),
        Schema::TimestampMicros => Value::TimestampMicros(1_764_700_000_000_000),
        Schema::TimestampNanos => Value::TimestampNanos(1_764_700_000_000_000_000),
        Schema::LocalTimestampMillis => Value::LocalTimestampMillis(1_764_700_000_000),
        Schema::LocalTimestampMicros => Value::LocalTimestampMicros(1_764_700_000_000_000),
        Schema::LocalTimestampNanos => Value::LocalTimestampNanos(1_764_700_000_000_000_000),
        other => {
            return Err(format!(
                "no sample is made for type {}",
                type_name(other, 0)
            ))
        }
    })
}

/// A value as a short text (strings quoted and cut short; bytes by length).
fn show(value: &Value, depth: usize) -> String {
    if depth > 4 {
        return "…".to_owned();
    }
    match value {
        Value::Null => "null".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Int(n) | Value::Date(n) | Value::TimeMillis(n) => n.to_string(),
        Value::Long(n)
        | Value::TimeMicros(n)
        | Value::TimestampMillis(n)
        | Value::TimestampMicros(n)
        | Value::TimestampNanos(n)
        | Value::LocalTimestampMillis(n)
        | Value::LocalTimestampMicros(n)
        | Value::LocalTimestampNanos(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Double(x) => x.to_string(),
        Value::String(s) => quote(s),
        Value::Bytes(b) | Value::Fixed(_, b) => format!("{} bytes", b.len()),
        Value::Enum(_, symbol) => symbol.clone(),
        Value::Union(_, inner) => show(inner, depth + 1),
        Value::Array(items) => match items.as_slice() {
            [] => "[]".into(),
            [one] => format!("[{}]", show(one, depth + 1)),
            [first, rest @ ..] => format!("[{}, … {} more]", show(first, depth + 1), rest.len()),
        },
        Value::Map(entries) => format!("map of {} entries", entries.len()),
        Value::Record(fields) => format!("record of {} fields", fields.len()),
        _ => "(a value)".into(),
    }
}

/// The fields a phone or IP rule at `path` derives and their values in the sample's output
/// (`; caller_region "ID", …`), or nothing for any other rule.
fn derived_text(rules: &Rules, path: &str, output: &BTreeMap<String, &Value>) -> String {
    let (parent, field) = match path.rsplit_once('.') {
        Some((parent, field)) => (format!("{parent}."), field),
        None => (String::new(), path),
    };
    let shown: Vec<String> = rules
        .derived(path)
        .iter()
        .map(|attribute| {
            let name = attribute.field_name(field);
            match output.get(&format!("{parent}{name}")) {
                Some(value) => format!("{name} {}", show(value, 0)),
                None => name,
            }
        })
        .collect();
    if shown.is_empty() {
        String::new()
    } else {
        format!("; {}", shown.join(", "))
    }
}

/// The rule of `path` as the config writes it, options included.
fn rule_text(rules: &Rules, path: &str) -> String {
    let text = action_text(rules, path);
    match rules.get(path) {
        Some(Action::Token(TokenClass::Ip) | Action::IpPrefix | Action::IpTruncate { .. })
            if !rules.derived(path).is_empty() =>
        {
            format!("{text}, derive country")
        }
        _ => text,
    }
}

/// The action of `path` and its options, as the config writes them.
fn action_text(rules: &Rules, path: &str) -> String {
    match rules.get(path) {
        None => "(no rule)".to_owned(),
        Some(Action::Token(TokenClass::Phone)) => {
            let mut text = match rules.region_field(path) {
                Some(region) => format!("phone (region from {region})"),
                None => "phone".to_owned(),
            };
            let derive = rules.derived(path);
            if !derive.is_empty() {
                let names: Vec<&str> = derive.iter().map(|a| a.name()).collect();
                text.push_str(&format!(", derive {}", names.join(", ")));
            }
            text
        }
        Some(Action::Token(class)) => class.as_str().to_owned(),
        Some(Action::IpTruncate { v4, v6 }) => format!("ip-truncate /{v4} /{v6}"),
        Some(Action::TimeTruncate(unit)) => format!("time-truncate to the {}", unit.name()),
        Some(Action::Bucket { label }) => format!(
            "bucket {:?} ({})",
            rules
                .bucketing(path)
                .map(|b| b.bounds.clone())
                .unwrap_or_default(),
            if label { "label" } else { "lower bound" }
        ),
        Some(action) => action.name().to_owned(),
    }
}

/// One field of a pipeline's input schema, explained.
struct Row {
    path: String,
    raw_type: String,
    rule: String,
    /// The made-up sample (never a value from `--input`).
    sample: Option<String>,
    becomes: String,
}

/// One pipeline, explained.
struct Explained {
    name: String,
    schema: String,
    samples: String,
    note: Option<String>,
    rows: Vec<Row>,
    output_name: String,
    output: Vec<(String, String)>,
}

/// A json pipeline (`format = "json"`), explained: each rule's key path, and what a made-up
/// value becomes through the real transform, alone in an object; the output's keys (derived
/// ones included, dropped ones gone).
fn explain_json(
    plan: &crate::plan::json::JsonPlan,
    contract: Option<&crate::plan::json_schema::JsonSchemaContract>,
    proto: Option<&crate::plan::protobuf::ProtoContract>,
    engine: &Engine,
    active: Option<&ActiveKeys>,
    keys_note: &Option<String>,
) -> Explained {
    let rules = &plan.rules;
    let mut rows = Vec::new();
    let mut output = Vec::new();
    for (path, action) in rules.iter() {
        let is_region = rules.region_paths().contains(&path);
        let sample = match action {
            Action::TimeTruncate(_) => json!(1_764_700_000_123i64),
            Action::Bucket { .. } => json!(65_000),
            // A kept Protobuf field's sample is of its type, as its JSON mapping writes it.
            Action::Keep if !is_region => match proto
                .and_then(|p| crate::plan::protobuf::type_at(&p.input.message, path))
                .as_deref()
                .map(|t| t.trim_start_matches("repeated "))
            {
                Some(
                    "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "fixed32"
                    | "fixed64" | "sfixed32" | "sfixed64",
                ) => json!(65_000),
                Some("double" | "float") => json!(1.5),
                Some("bool") => json!(true),
                Some("google.protobuf.Timestamp") => json!("2026-12-07T10:00:00Z"),
                Some("google.protobuf.Duration") => json!("1.500s"),
                _ => json!("sample text"),
            },
            _ => json!(string_sample(Some(action), is_region)),
        };
        // The sample alone, at its path: `{"device": {"device_id": …}}`.
        let mut record = sample.clone();
        for key in path.rsplit('.') {
            record = json!({ key: record });
        }
        let becomes = match active {
            None => "(no keys: actions only)".to_owned(),
            Some(keys) => {
                let mut out = Vec::new();
                match engine.transform_json(
                    plan,
                    keys,
                    None,
                    record.to_string().as_bytes(),
                    &mut out,
                ) {
                    Err(e) => format!("(refused: {e})"),
                    Ok(_) => {
                        let mut value: serde_json::Value =
                            serde_json::from_slice(&out).unwrap_or_default();
                        let keys: Vec<&str> = path.split('.').collect();
                        for key in &keys[..keys.len() - 1] {
                            value = value.get(*key).cloned().unwrap_or_default();
                        }
                        let last = keys[keys.len() - 1];
                        let mut said = match value.get(last) {
                            None => "(left out)".to_owned(),
                            Some(v) => v.to_string(),
                        };
                        for attribute in rules.derived(path).iter() {
                            let name = attribute.field_name(last);
                            if let Some(v) = value.get(&name) {
                                said.push_str(&format!(", {name}: {v}"));
                            }
                        }
                        said
                    }
                }
            }
        };
        // With a JSON Schema, the types it gives (input) and the derived one gives (output).
        // With a .proto, its field types on both sides.
        let type_in = |root: Option<&serde_json::Value>, path: &str, output: bool| {
            if let Some(proto) = proto {
                let message = if output {
                    &proto.output
                } else {
                    &proto.input.message
                };
                return crate::plan::protobuf::type_at(message, path)
                    .unwrap_or_else(|| "protobuf".to_owned());
            }
            root.and_then(|root| crate::plan::json_schema::type_at(root, path))
                .unwrap_or_else(|| "json".to_owned())
        };
        let output_root = contract.map(|c| &c.output);
        if action != Action::Drop {
            output.push((path.to_owned(), type_in(output_root, path, true)));
            for attribute in rules.derived(path).iter() {
                let name = attribute.field_name(path);
                let shown = format!("{}, derived", type_in(output_root, &name, true));
                output.push((name, shown));
            }
        }
        rows.push(Row {
            path: path.to_owned(),
            raw_type: type_in(contract.map(|c| &c.input.root), path, false),
            rule: rule_text(rules, path),
            sample: Some(sample.to_string()),
            becomes,
        });
    }
    Explained {
        name: plan.name.clone(),
        schema: match (contract, proto) {
            (Some(contract), _) => format!("JSON Schema {}", contract.input.title),
            (_, Some(proto)) => format!("Protobuf {}", proto.input.message.full_name()),
            _ => "schemaless JSON".to_owned(),
        },
        samples: "made-up samples, each alone in an object".to_owned(),
        note: keys_note.clone().or_else(|| {
            Some(match plan.unknown {
                crate::config::UnknownKeys::DeadLetter => {
                    "a key no rule names dead-letters its record (unclassified-field)".to_owned()
                }
                crate::config::UnknownKeys::Drop => {
                    "a key no rule names is left out (unknown = \"drop\")".to_owned()
                }
            })
        }),
        rows,
        output_name: match (contract, proto) {
            (_, Some(proto)) => format!("Protobuf {}", proto.output_name()),
            (Some(contract), _) => format!("JSON Schema {}", contract.input.output_title()),
            _ => "(JSON, no schema)".to_owned(),
        },
        output,
    }
}

/// The first event of a container and its writer schema. apache-avro's header parse may
/// panic on a hostile schema: then it is an error.
fn first_event(path: &std::path::Path) -> Result<(Schema, Value)> {
    let file = crate::fsio::open_regular(path, "input", u64::MAX)?;
    let reader = crate::config::catch_quietly(|| apache_avro::Reader::new(file))
        .and_then(|r| r.ok())
        .with_context(|| {
            format!(
                "{}: not an Avro object container file, or its header is corrupt",
                path.display()
            )
        })?;
    let schema = reader.writer_schema().clone();
    let mut reader = reader;
    // apache-avro's messages can quote data: not passed on.
    let event = match reader.next() {
        Some(Ok(value)) => value,
        Some(Err(_)) => bail!(
            "{}: its first event cannot be decoded (truncated or corrupt)",
            path.display()
        ),
        None => bail!("{}: holds no event", path.display()),
    };
    Ok((schema, event))
}

/// Explains one pipeline with an event (made up, or read) of writer schema `writer`.
fn explain_pipeline(
    name: &str,
    plan: &Arc<Plan>,
    engine: &Engine,
    active: Option<&ActiveKeys>,
    event: Option<(Schema, Value)>,
    keys_note: &Option<String>,
) -> Explained {
    let from_file = event.is_some();
    let mut note = None;
    // With a file: its own writer schema, compiled against the rules as file mode does.
    let (plan, event): (Arc<Plan>, Result<Value, String>) = match event {
        Some((writer, value)) => match plan.for_writer(&writer, crate::plan::UnusedRules::Refuse) {
            Ok(own) => (own, Ok(value)),
            Err(problems) => {
                note = Some(format!(
                    "the file's writer schema does not fit the rules: {}",
                    problems.join("; ")
                ));
                (plan.clone(), Err(String::new()))
            }
        },
        None => {
            let names = names_of(&plan.input);
            let made = sample(&plan.input, &names, &plan.rules, "", 0);
            (plan.clone(), made)
        }
    };
    let names = names_of(&plan.input);
    let mut leaves = Vec::new();
    schema_leaves(&plan.input, &names, "", 0, &mut leaves);
    let mut input_values = BTreeMap::new();
    let mut output_value = None;
    match &event {
        Ok(value) => {
            value_leaves(value, "", 0, &mut input_values);
            match active {
                Some(keys) => match apache_avro::to_avro_datum(&plan.input, value.clone()) {
                    Ok(datum) => {
                        let mut out = Vec::new();
                        match engine.transform(&plan, keys, &datum, &mut out) {
                            Ok(_) => {
                                let mut slice = out.as_slice();
                                match apache_avro::from_avro_datum(&plan.output, &mut slice, None) {
                                    Ok(v) => output_value = Some(v),
                                    Err(_) => {
                                        note = Some(
                                            "the output did not decode with the derived schema"
                                                .into(),
                                        )
                                    }
                                }
                            }
                            Err(e) => note = Some(format!("the transform refused it: {e}")),
                        }
                    }
                    Err(_) => {
                        note.get_or_insert_with(|| "the event does not fit the schema".into());
                    }
                },
                None => note = keys_note.clone(),
            }
        }
        Err(why) if !why.is_empty() => note = Some(format!("no sample: {why}")),
        Err(_) => {}
    }
    let mut output_values = BTreeMap::new();
    if let Some(value) = &output_value {
        value_leaves(value, "", 0, &mut output_values);
    }
    let rows = leaves
        .into_iter()
        .map(|(path, raw_type)| {
            let action = plan.rules.get(&path);
            let becomes = match (action, output_values.get(&path)) {
                (Some(Action::Drop), _) => "(dropped)".to_owned(),
                (Some(Action::Encrypt), Some(Value::Union(_, inner)))
                    if matches!(**inner, Value::Bytes(_)) =>
                {
                    format!("an envelope of {}", show(inner, 0))
                }
                (Some(Action::Encrypt), Some(Value::Bytes(b))) => {
                    format!("an envelope of {} bytes", b.len())
                }
                (_, Some(value)) => show(value, 0),
                (_, None) if output_value.is_some() => "(not in the output)".to_owned(),
                (Some(Action::Keep), None) => "(copied unchanged)".to_owned(),
                (Some(Action::Encrypt), None) => "(an envelope; not shown)".to_owned(),
                (Some(Action::Token(class)), None) => {
                    format!("(a {} token; not shown)", class.as_str())
                }
                (Some(Action::IpPrefix), None) => "(a Crypto-PAn IP; not shown)".to_owned(),
                (Some(Action::IpTruncate { v4, v6 }), None) => {
                    format!("(truncated to /{v4} or /{v6}; not shown)")
                }
                (Some(Action::TimeTruncate(unit)), None) => {
                    format!("(truncated to the {}; not shown)", unit.name())
                }
                (Some(Action::Bucket { .. }), None) => "(its bucket; not shown)".to_owned(),
                (None, None) => "(no rule)".to_owned(),
            };
            let becomes = becomes + &derived_text(&plan.rules, &path, &output_values);
            Row {
                // Made-up samples are shown; a file's raw values never are.
                sample: (!from_file)
                    .then(|| input_values.get(&path).map(|v| show(v, 0)))
                    .flatten(),
                rule: rule_text(&plan.rules, &path),
                path,
                raw_type,
                becomes,
            }
        })
        .collect();
    let output_names = names_of(&plan.output);
    let mut output = Vec::new();
    schema_leaves(&plan.output, &output_names, "", 0, &mut output);
    let output_name = match &plan.output {
        Schema::Record(r) => r.name.fullname(None),
        _ => String::new(),
    };
    Explained {
        name: name.to_owned(),
        schema: plan.input_name.clone(),
        samples: if from_file {
            "the first event of --input (raw values not shown)".to_owned()
        } else {
            "made-up samples".to_owned()
        },
        note,
        rows,
        output_name,
        output,
    }
}

pub(super) fn explain(args: ExplainArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = load_all(&args.config);
    let (Some(config), Some(engine)) = (&loaded.config, &loaded.engine) else {
        bail!(
            "config {} is refused:\n  {}",
            args.config.config.display(),
            loaded.problems.join("\n  ")
        );
    };
    // Problems left are the keyring's: explain goes on with the actions only.
    let keys_note = loaded.active.is_none().then(|| {
        format!(
            "no tokens shown (actions only): {}",
            loaded.problems.join("; ")
        )
    });
    let event = match &args.input {
        Some(path) => Some(first_event(path)?),
        None => None,
    };
    let event_name = event.as_ref().and_then(|(schema, _)| match schema {
        Schema::Record(r) => Some(r.name.fullname(None)),
        _ => None,
    });
    if let (Some(name), Some(path)) = (&event_name, &args.input) {
        if engine.plan(name).is_none() {
            bail!(
                "{}: its writer schema {name} has no pipeline in the config",
                path.display()
            );
        }
    }
    let mut explained = Vec::new();
    for (pipeline, plan) in config.avro_pipelines().zip(engine.plans()) {
        let own = match (&event, &event_name) {
            (Some(e), Some(name)) if *name == plan.input_name => Some(e.clone()),
            // With --input, only its pipeline is explained.
            (Some(_), _) => continue,
            _ => None,
        };
        explained.push(explain_pipeline(
            &pipeline.name,
            plan,
            engine,
            loaded.active.as_ref(),
            own,
            &keys_note,
        ));
    }
    if args.input.is_none() {
        for (index, plan) in engine.json_plans() {
            explained.push(explain_json(
                plan,
                engine.json_schema(*index).map(|c| &**c),
                engine.proto(*index).map(|c| &**c),
                engine,
                loaded.active.as_ref(),
                &keys_note,
            ));
        }
    }
    match args.format {
        Format::Text => print_text(&explained, out)?,
        Format::Json => {
            let document = json!({
                "config": args.config.config.display().to_string(),
                "tokens_shown": loaded.active.is_some(),
                "keys_note": keys_note,
                "pipelines": explained.iter().map(|p| json!({
                    "name": p.name,
                    "schema": p.schema,
                    "samples": p.samples,
                    "note": p.note,
                    "fields": p.rows.iter().map(|r| json!({
                        "path": r.path,
                        "type": r.raw_type,
                        "rule": r.rule,
                        "sample": r.sample,
                        "becomes": r.becomes,
                    })).collect::<Vec<_>>(),
                    "output_schema": p.output_name,
                    "output_fields": p.output.iter().map(|(path, t)| json!({
                        "path": path,
                        "type": t,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        }
    }
    Ok(())
}

fn print_text(explained: &[Explained], out: &mut dyn Write) -> Result<()> {
    for p in explained {
        writeln!(out, "pipeline {} ({}), {}:", p.name, p.schema, p.samples)?;
        if let Some(note) = &p.note {
            writeln!(out, "  note: {note}")?;
        }
        let width = |f: &dyn Fn(&Row) -> usize| p.rows.iter().map(f).max().unwrap_or(0);
        let (wp, wt, wr) = (
            width(&|r| r.path.chars().count()),
            width(&|r| r.raw_type.chars().count()),
            width(&|r| r.rule.chars().count()),
        );
        for r in &p.rows {
            let change = match &r.sample {
                Some(sample) => format!("{sample} → {}", r.becomes),
                None => format!("→ {}", r.becomes),
            };
            writeln!(
                out,
                "  {:wp$}  {:wt$}  {:wr$}  {change}",
                r.path, r.raw_type, r.rule
            )?;
        }
        writeln!(out, "  output schema {}:", p.output_name)?;
        for (path, t) in &p.output {
            writeln!(out, "    {path}: {t}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}
