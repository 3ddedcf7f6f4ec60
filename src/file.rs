//! File mode: Avro object container files in and out (`transform`, `decrypt`, `generate`).
//!
//! Errors name the event's index and the field path, never a value: apache-avro's own
//! messages can quote data, so they are not passed on.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, Codec, Reader, Writer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use crate::envelope::{self, OpenError};
use crate::generate::{Generator, Kind};
use crate::keys::KeySet;
use crate::plan::Plan;
use crate::rules::Action;
use crate::transform::{ActiveKeys, Engine, TransformError};

/// Container metadata key naming the pseudonym key of the file's tokens.
pub const META_PSEUDONYM_KEY: &str = "pseudonymizer.pseudonym_key";
/// Container metadata key naming the encryption key of the file's new envelopes.
pub const META_ENCRYPTION_KEY: &str = "pseudonymizer.encryption_key";

/// Why a file could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an Avro object container file, or its header is corrupt")]
    Header { path: PathBuf },
    #[error("writer schema {0} has no rules in the config")]
    NoRules(String),
    #[error("event {index}: cannot be decoded (truncated or corrupt Avro, or invalid UTF-8)")]
    Decode { index: u64 },
    #[error("event {index}: {source}")]
    Transform { index: u64, source: TransformError },
    #[error("cannot write output: {0}")]
    Write(String),
}

fn open(path: &Path) -> Result<BufReader<File>, FileError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| FileError::Open {
            path: path.to_owned(),
            source,
        })
}

fn create(path: &Path) -> Result<BufWriter<File>, FileError> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|source| FileError::Open {
            path: path.to_owned(),
            source,
        })
}

fn write_err(e: impl std::fmt::Display) -> FileError {
    FileError::Write(e.to_string())
}

/// Transforms every event of `input` into `output`, written with the derived output schema.
/// Returns the number of events.
pub fn transform_file(
    engine: &Engine,
    keys: &ActiveKeys,
    input: &Path,
    output: &Path,
) -> Result<u64, FileError> {
    let reader = Reader::new(open(input)?).map_err(|_| FileError::Header {
        path: input.to_owned(),
    })?;
    let writer_schema = reader.writer_schema().clone();
    let name = match &writer_schema {
        apache_avro::Schema::Record(r) => r.name.fullname(None),
        _ => "(not a record)".to_owned(),
    };
    let plan = engine.plan(&name).ok_or(FileError::NoRules(name))?.clone();
    let mut writer = Writer::with_codec(&plan.output, create(output)?, Codec::Null);
    if let Some(key) = &keys.pseudonym {
        writer
            .add_user_metadata(META_PSEUDONYM_KEY.into(), key.id())
            .map_err(write_err)?;
    }
    if let Some(key) = &keys.encryption {
        writer
            .add_user_metadata(META_ENCRYPTION_KEY.into(), key.id())
            .map_err(write_err)?;
    }
    let mut count = 0u64;
    let mut out = Vec::with_capacity(1024);
    for (index, value) in reader.enumerate() {
        let index = index as u64;
        let value = value.map_err(|_| FileError::Decode { index })?;
        // The container reader hands out decoded values; the engine works on datum bytes.
        let datum =
            to_avro_datum(&writer_schema, value).map_err(|_| FileError::Decode { index })?;
        out.clear();
        engine
            .transform(&plan, keys, &datum, &mut out)
            .map_err(|source| FileError::Transform { index, source })?;
        let sanitized =
            from_avro_datum(&plan.output, &mut out.as_slice(), None).map_err(write_err)?;
        writer.append_value_ref(&sanitized).map_err(write_err)?;
        count += 1;
    }
    writer
        .into_inner()
        .map_err(write_err)?
        .flush()
        .map_err(write_err)?;
    Ok(count)
}

/// Writes `count` synthetic events of `kind` to a container file.
pub fn generate_file(kind: Kind, count: u64, seed: u64, output: &Path) -> Result<(), FileError> {
    let schema = kind.schema();
    let mut writer = Writer::with_codec(&schema, create(output)?, Codec::Null);
    let mut generator = Generator::new(seed);
    for _ in 0..count {
        writer.append(generator.event(kind)).map_err(write_err)?;
    }
    writer
        .into_inner()
        .map_err(write_err)?
        .flush()
        .map_err(write_err)?;
    Ok(())
}

/// Reads a sanitized file and writes one JSON line per event to `out`, with every envelope
/// opened where its key is available. Returns (events, envelopes opened, envelopes not opened).
pub fn decrypt_file(
    engine: &Engine,
    keys: &KeySet,
    input: &Path,
    out: &mut dyn Write,
) -> Result<(u64, u64, u64), FileError> {
    let reader = Reader::new(open(input)?).map_err(|_| FileError::Header {
        path: input.to_owned(),
    })?;
    let name = match reader.writer_schema() {
        apache_avro::Schema::Record(r) => r.name.name.clone(),
        _ => String::new(),
    };
    // A sanitized file's schema is a derived one; find the plan that derives it.
    let plan = engine
        .plans()
        .iter()
        .find(|p| matches!(&p.output, apache_avro::Schema::Record(r) if r.name.name == name))
        .ok_or_else(|| FileError::NoRules(name.clone()))?
        .clone();
    let mut opener = Opener {
        plan: &plan,
        keys,
        opened: 0,
        failed: 0,
    };
    let mut count = 0;
    for (index, value) in reader.enumerate() {
        let value = value.map_err(|_| FileError::Decode {
            index: index as u64,
        })?;
        let json = opener.json(value, "", false);
        serde_json::to_writer(&mut *out, &json).map_err(write_err)?;
        out.write_all(b"\n").map_err(write_err)?;
        count += 1;
    }
    Ok((count, opener.opened, opener.failed))
}

struct Opener<'a> {
    plan: &'a Plan,
    keys: &'a KeySet,
    opened: u64,
    failed: u64,
}

impl Opener<'_> {
    fn json(&mut self, value: Value, path: &str, sealed: bool) -> Json {
        match value {
            Value::Record(fields) => {
                let mut map = Map::new();
                for (name, v) in fields {
                    let path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    let sealed = self.plan.rules.get(&path) == Some(Action::Encrypt);
                    map.insert(name, self.json(v, &path, sealed));
                }
                Json::Object(map)
            }
            Value::Bytes(bytes) if sealed => match envelope::open(self.keys, path, &bytes) {
                Ok(plaintext) => {
                    self.opened += 1;
                    match String::from_utf8(plaintext) {
                        Ok(text) => Json::String(text),
                        Err(e) => Json::String(STANDARD.encode(e.into_bytes())),
                    }
                }
                Err(error) => {
                    self.failed += 1;
                    let key_id = envelope::key_id(&bytes).unwrap_or("?");
                    let reason = match error {
                        OpenError::KeyDestroyed(_) => "key destroyed".to_owned(),
                        other => other.to_string(),
                    };
                    json!({"unopened": reason, "key_id": key_id})
                }
            },
            Value::Union(_, inner) => self.json(*inner, path, sealed),
            Value::Array(items) => Json::Array(
                items
                    .into_iter()
                    .map(|v| self.json(v, path, sealed))
                    .collect(),
            ),
            Value::Map(entries) => Json::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, self.json(v, path, false)))
                    .collect(),
            ),
            other => plain_json(other),
        }
    }
}

/// JSON for a non-container Avro value; bytes become standard base64 (spec: "In JSON it is a
/// b64 string").
pub fn plain_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => json!(i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Double(f) => json!(f),
        Value::Bytes(b) | Value::Fixed(_, b) => json!(STANDARD.encode(b)),
        Value::String(s) => json!(s),
        Value::Enum(_, symbol) => json!(symbol),
        Value::Union(_, inner) => plain_json(*inner),
        Value::Array(items) => Json::Array(items.into_iter().map(plain_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, plain_json(v)))
                .collect(),
        ),
        Value::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, plain_json(v)))
                .collect(),
        ),
        Value::Uuid(u) => json!(u.to_string()),
        other => json!(format!("{other:?}")),
    }
}

/// Reads the first `limit` events of a container file as JSON (`show`, tests).
pub fn read_json(input: &Path, limit: usize) -> Result<Vec<Json>, FileError> {
    let reader = Reader::new(open(input)?).map_err(|_| FileError::Header {
        path: input.to_owned(),
    })?;
    reader
        .take(limit)
        .enumerate()
        .map(|(index, v)| {
            v.map(plain_json).map_err(|_| FileError::Decode {
                index: index as u64,
            })
        })
        .collect()
}
