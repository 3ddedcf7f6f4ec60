//! File mode: Avro object container files in and out (`transform`, `decrypt`, `generate`).
//!
//! Errors name the event (counting from 1) and the field path, never a value: apache-avro's
//! own messages can quote data, so they are not passed on.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, Codec, Reader, Writer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use crate::envelope::{self, OpenError};
use crate::generate::{Generator, Kind};
use crate::keys::{KeySet, SealKey};
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
    #[error(transparent)]
    File(#[from] crate::fsio::FileError),
    #[error("{path}: not an Avro object container file, or its header is corrupt")]
    Header { path: PathBuf },
    #[error("writer schema {0} has no rules in the config")]
    NoRules(String),
    #[error("{path}: a raw file of {record} (a pipeline's input schema), not a sanitized one: it holds no envelope (decrypt and reseal read what transform wrote)")]
    Raw { path: PathBuf, record: String },
    #[error("{path}: no field of its sanitized schema {record} is sealed: it holds no envelope")]
    NothingSealed { path: PathBuf, record: String },
    #[error("{path}: not a sanitized file of this config, nothing read:\n  {}", .problems.join("\n  "))]
    NotSanitized {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("event {}, field `{path}`: {source} (nothing more printed; --keep-going marks such envelopes and goes on)", .index + 1)]
    Open {
        index: u64,
        path: String,
        source: OpenError,
    },
    #[error("{path}: its writer schema does not fit the rules, nothing written:\n  {}", .problems.join("\n  "))]
    Rules {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("event {}: cannot be decoded (truncated or corrupt Avro, or invalid UTF-8)", .index + 1)]
    Decode { index: u64 },
    #[error("event {}: {source}", .index + 1)]
    Transform { index: u64, source: TransformError },
    #[error("cannot write output: {0}")]
    Write(String),
    #[error("line {}: not a JSON object", .index + 1)]
    NotJsonObject { index: u64 },
    #[error("line {}: longer than {limit} bytes (nothing written)", .index + 1)]
    LineTooLong { index: u64, limit: u64 },
    #[error("line {}: {source} (nothing written)", .index + 1)]
    Line { index: u64, source: TransformError },
    #[error("event {}, field `{path}`: cannot reseal: {source}", .index + 1)]
    Reseal {
        index: u64,
        path: String,
        source: OpenError,
    },
    #[error("line {}, field `{path}`: cannot reseal: {source} (nothing written)", .index + 1)]
    ResealLine {
        index: u64,
        path: String,
        source: OpenError,
    },
}

/// Opens an input container: a regular file only (a FIFO or device is refused without
/// blocking; symbolic links followed). Containers have no size limit: they are streamed.
fn open(path: &Path) -> Result<BufReader<File>, FileError> {
    Ok(BufReader::new(crate::fsio::open_regular(
        path,
        "input",
        u64::MAX,
    )?))
}

/// Reads a container's header. A hostile writer schema (an invalid name, say) can make
/// apache-avro's parser panic: that is a bad header, never a crash.
fn container(path: &Path) -> Result<Reader<'static, BufReader<File>>, FileError> {
    let file = open(path)?;
    let header = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Reader::new(file)));
    match header {
        Ok(Ok(reader)) => Ok(reader),
        _ => Err(FileError::Header {
            path: path.to_owned(),
        }),
    }
}

/// Starts an output: a temporary beside `output`, renamed over it only when everything was
/// written ([`crate::fsio::AtomicFile`]); mode 0600, since sanitized data is still personal
/// data (pseudonymised, GDPR Recital 26). `input` and `output` must not be the same file.
fn create(input: &Path, output: &Path) -> Result<crate::fsio::AtomicFile, FileError> {
    crate::fsio::refuse_same_file(input, output)?;
    Ok(crate::fsio::AtomicFile::create(output, "output", 0o600)?)
}

fn write_err(e: impl std::fmt::Display) -> FileError {
    FileError::Write(e.to_string())
}

/// What [`transform_file`] did: events written, and the tokens among their values (what the
/// audit record of `transform` counts: each is a guessable value's pseudonym, as `lookup`'s are).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transformed {
    pub events: u64,
    pub tokens: u64,
}

/// The tokens (`key_id:` and 22 base64url characters, spec §3) in a sanitized value.
fn tokens_in(value: &apache_avro::types::Value, prefix: &str) -> u64 {
    use apache_avro::types::Value;
    match value {
        Value::String(text) => u64::from(text.strip_prefix(prefix).is_some_and(|mac| {
            mac.len() == 22
                && mac
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })),
        Value::Record(fields) => fields.iter().map(|(_, v)| tokens_in(v, prefix)).sum(),
        Value::Array(items) => items.iter().map(|v| tokens_in(v, prefix)).sum(),
        Value::Map(items) => items.values().map(|v| tokens_in(v, prefix)).sum(),
        Value::Union(_, inner) => tokens_in(inner, prefix),
        _ => 0,
    }
}

/// Transforms every event of `input` into `output`, written with the derived output schema.
/// Returns the number of events.
pub fn transform_file(
    engine: &Engine,
    keys: &ActiveKeys,
    input: &Path,
    output: &Path,
) -> Result<Transformed, FileError> {
    let reader = container(input)?;
    let writer_schema = reader.writer_schema().clone();
    let name = match &writer_schema {
        apache_avro::Schema::Record(r) => r.name.fullname(None),
        _ => "(not a record)".to_owned(),
    };
    let configured = engine.plan(&name).ok_or(FileError::NoRules(name))?;
    // The container carries its own writer schema: the rules are compiled against it, as the
    // registry path compiles them against a fetched one. A file written with another version
    // of the record (a field renamed, reordered, added, removed) is never read by the
    // config's schema: every field without a rule, rule without a field, or type that does
    // not fit is refused, before anything is written.
    let plan = configured
        .for_writer(&writer_schema, crate::plan::UnusedRules::Refuse)
        .map_err(|problems| FileError::Rules {
            path: input.to_owned(),
            problems,
        })?;
    let mut file = create(input, output)?;
    let mut writer = Writer::with_codec(&plan.output, &mut file, Codec::Null);
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
    let mut count = Transformed::default();
    let token_prefix = keys.pseudonym.as_ref().map(|key| format!("{}:", key.id()));
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
        count.events += 1;
        if let Some(prefix) = &token_prefix {
            count.tokens += tokens_in(&sanitized, prefix);
        }
    }
    writer
        .into_inner()
        .map_err(write_err)?
        .flush()
        .map_err(write_err)?;
    file.commit()?;
    Ok(count)
}

/// Writes `count` synthetic events of `kind` to a container file.
pub fn generate_file(kind: Kind, count: u64, seed: u64, output: &Path) -> Result<(), FileError> {
    let schema = kind.schema();
    let mut file = crate::fsio::AtomicFile::create(output, "output", 0o600)?;
    let mut writer = Writer::with_codec(&schema, &mut file, Codec::Null);
    let mut generator = Generator::new(seed);
    for _ in 0..count {
        writer.append(generator.event(kind)).map_err(write_err)?;
    }
    writer
        .into_inner()
        .map_err(write_err)?
        .flush()
        .map_err(write_err)?;
    file.commit()?;
    Ok(())
}

/// Reads a sanitized file and writes one JSON line per event to `out`, with every envelope
/// opened where its key is available. An envelope under a destroyed key is marked
/// `{"unopened": "key destroyed"}` (erased on purpose: not a failure). One that does not open
/// for any other reason (tampered, wrong key, a key not in the keyring) stops the run before
/// its event is printed, or with `keep_going` is marked and counted in `report.failed`.
/// On error, `report` holds what was done before it.
/// Prints a sanitized file's events as JSON lines with their envelopes opened. An event that
/// carries one of `erased` (the tokens of the erasure notices: docs/security.md, "A person's
/// rights") has none of its envelopes opened: each is printed as `{"withheld": "erased
/// subject"}` and counted in [`DecryptReport::withheld`].
pub fn decrypt_file(
    engine: &Engine,
    keys: &KeySet,
    input: &Path,
    keep_going: bool,
    erased: &std::collections::HashSet<String>,
    out: &mut dyn Write,
    report: &mut DecryptReport,
) -> Result<(), FileError> {
    let reader = container(input)?;
    let plan = sanitized_plan(engine, input, reader.writer_schema())?;
    let mut opener = Opener {
        plan: &plan,
        keys,
        keep_going,
        failure: None,
        withhold: false,
        report: std::mem::take(report),
    };
    let result = (|| {
        for (index, value) in reader.enumerate() {
            let index = index as u64;
            let value = value.map_err(|_| FileError::Decode { index })?;
            opener.withhold = !erased.is_empty() && carries_any(&value, erased);
            if opener.withhold {
                opener.report.withheld_events += 1;
            }
            let json = opener.json(value, "", false);
            if let Some((path, source)) = opener.failure.take() {
                return Err(FileError::Open {
                    index,
                    path,
                    source,
                });
            }
            serde_json::to_writer(&mut *out, &json).map_err(write_err)?;
            out.write_all(b"\n").map_err(write_err)?;
            opener.report.events += 1;
        }
        Ok(())
    })();
    *report = opener.report;
    result
}

/// What an access export found in one source.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub scanned: u64,
    pub matched: u64,
    /// Records that could not be read as the output of a pipeline (skipped, counted).
    pub unreadable: u64,
}

/// One sanitized event as JSON with its envelopes opened (those that do not open are marked,
/// as `decrypt --keep-going` marks them), for an access export.
pub fn open_event(plan: &Plan, keys: &KeySet, value: Value, report: &mut DecryptReport) -> Json {
    let mut opener = Opener {
        plan,
        keys,
        keep_going: true,
        failure: None,
        withhold: false,
        report: std::mem::take(report),
    };
    let json = opener.json(value, "", false);
    *report = opener.report;
    json
}

/// The events of a sanitized container file that carry one of `tokens`, each passed to
/// `each` as JSON with its envelopes opened.
pub fn select_file(
    engine: &Engine,
    keys: &KeySet,
    input: &Path,
    tokens: &std::collections::HashSet<String>,
    report: &mut DecryptReport,
    mut each: impl FnMut(Json) -> Result<(), FileError>,
) -> Result<Selected, FileError> {
    let reader = container(input)?;
    let plan = sanitized_plan(engine, input, reader.writer_schema())?;
    let mut selected = Selected::default();
    for (index, value) in reader.enumerate() {
        let value = value.map_err(|_| FileError::Decode {
            index: index as u64,
        })?;
        selected.scanned += 1;
        if carries_any(&value, tokens) {
            selected.matched += 1;
            each(open_event(&plan, keys, value, report))?;
        }
    }
    Ok(selected)
}

/// The plan a sanitized container written with `writer` is the output of. Refused, before
/// anything is read: a raw file (its writer schema is a pipeline's input), a schema no
/// pipeline derives, one whose fields differ from the derived schema's (every path named),
/// and a pipeline that seals nothing (there is no envelope to open).
fn sanitized_plan(
    engine: &Engine,
    input: &Path,
    writer: &apache_avro::Schema,
) -> Result<std::sync::Arc<Plan>, FileError> {
    let record = match writer {
        apache_avro::Schema::Record(r) => r.name.fullname(None),
        _ => "(not a record)".to_owned(),
    };
    if engine.plan(&record).is_some() {
        return Err(FileError::Raw {
            path: input.to_owned(),
            record,
        });
    }
    let plan = engine
        .plans()
        .iter()
        .find(|p| p.output_name() == record)
        .cloned()
        .ok_or_else(|| FileError::NoRules(record.clone()))?;
    plan.check_sanitized(writer)
        .map_err(|problems| FileError::NotSanitized {
            path: input.to_owned(),
            problems,
        })?;
    if !plan.needs_encryption {
        return Err(FileError::NothingSealed {
            path: input.to_owned(),
            record,
        });
    }
    Ok(plan)
}

/// What `decrypt` did: counts and the key ids of the envelopes it opened (for the audit log).
#[derive(Debug, Default)]
pub struct DecryptReport {
    pub events: u64,
    pub opened: u64,
    /// Envelopes under a destroyed key: erased on purpose, never opened again.
    pub destroyed: u64,
    /// Envelopes that did not open for another reason (tampered, wrong key, unknown key);
    /// only counted with `keep_going`, else the first one stops the run.
    pub failed: u64,
    /// Envelopes not opened because their event carries an erased person's token.
    pub withheld: u64,
    /// Events that carry an erased person's token.
    pub withheld_events: u64,
    pub key_ids: BTreeSet<String>,
}

/// Whether any string inside `value` is one of `tokens`.
pub fn carries_any(value: &Value, tokens: &std::collections::HashSet<String>) -> bool {
    match value {
        Value::String(s) => tokens.contains(s),
        Value::Union(_, inner) => carries_any(inner, tokens),
        Value::Array(items) => items.iter().any(|v| carries_any(v, tokens)),
        Value::Map(entries) => entries.values().any(|v| carries_any(v, tokens)),
        Value::Record(fields) => fields.iter().any(|(_, v)| carries_any(v, tokens)),
        _ => false,
    }
}

impl DecryptReport {
    /// Envelopes not opened, for whatever reason.
    pub fn unopened(&self) -> u64 {
        self.destroyed + self.failed
    }
}

/// Walks a sanitized event as JSON, opening every envelope whose key is available.
struct Opener<'a> {
    plan: &'a Plan,
    keys: &'a KeySet,
    keep_going: bool,
    /// The first envelope of the current event that failed (without `keep_going`).
    failure: Option<(String, OpenError)>,
    /// The current event carries an erased person's token: no envelope of it is opened.
    withhold: bool,
    report: DecryptReport,
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
            Value::Bytes(bytes) if sealed && self.withhold && !bytes.is_empty() => {
                self.report.withheld += 1;
                json!({"withheld": "erased subject"})
            }
            Value::Bytes(bytes) if sealed => match self.keys.open(path, &bytes) {
                Ok(plaintext) => {
                    self.report.opened += 1;
                    if let Ok(id) = envelope::key_id(&bytes) {
                        if !self.report.key_ids.contains(id) {
                            self.report.key_ids.insert(id.to_owned());
                        }
                    }
                    match String::from_utf8(plaintext) {
                        Ok(text) => Json::String(text),
                        Err(e) => Json::String(STANDARD.encode(e.into_bytes())),
                    }
                }
                Err(error) => {
                    let key_id = envelope::key_id(&bytes).unwrap_or("?");
                    let reason = match error {
                        OpenError::KeyDestroyed(_) => {
                            self.report.destroyed += 1;
                            "key destroyed".to_owned()
                        }
                        other => {
                            self.report.failed += 1;
                            let reason = other.to_string();
                            if !self.keep_going {
                                self.failure.get_or_insert((path.to_owned(), other));
                            }
                            reason
                        }
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
    let reader = container(input)?;
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

/// What `reseal` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResealReport {
    pub events: u64,
    /// Envelopes opened under an older key and sealed again under the active one.
    pub resealed: u64,
    /// Envelopes already under the active key, copied as they were.
    pub current: u64,
}

/// Copies a sanitized file, re-encrypting every envelope that is not under `active` with
/// `active`, field paths unchanged; tokens and every other field are copied as they are. An
/// envelope that cannot be opened (destroyed or unknown key, tampered) stops the copy and
/// nothing is written (the output appears only once complete), so a reseal never silently
/// drops data.
pub fn reseal_file(
    engine: &Engine,
    keys: &KeySet,
    active: &SealKey,
    input: &Path,
    output: &Path,
) -> Result<ResealReport, FileError> {
    // On failure the output's temporary is removed and a file that was there stays as it was.
    reseal_inner(engine, keys, active, input, output)
}

fn reseal_inner(
    engine: &Engine,
    keys: &KeySet,
    active: &SealKey,
    input: &Path,
    output: &Path,
) -> Result<ResealReport, FileError> {
    let reader = container(input)?;
    let schema = reader.writer_schema().clone();
    let plan = sanitized_plan(engine, input, &schema)?;
    let metadata = reader.user_metadata().clone();
    let mut file = create(input, output)?;
    let mut writer = Writer::with_codec(&schema, &mut file, Codec::Null);
    for (key, value) in metadata {
        if key != META_ENCRYPTION_KEY {
            writer
                .add_user_metadata(key, value.as_slice())
                .map_err(write_err)?;
        }
    }
    writer
        .add_user_metadata(META_ENCRYPTION_KEY.into(), active.id())
        .map_err(write_err)?;
    let mut resealer = Resealer {
        plan: &plan,
        keys,
        active,
        report: ResealReport::default(),
        failure: None,
    };
    for (index, value) in reader.enumerate() {
        let index = index as u64;
        let value = value.map_err(|_| FileError::Decode { index })?;
        let value = resealer.value(value, "", false);
        if let Some((path, source)) = resealer.failure.take() {
            return Err(FileError::Reseal {
                index,
                path,
                source,
            });
        }
        writer.append_value_ref(&value).map_err(write_err)?;
        resealer.report.events += 1;
    }
    writer
        .into_inner()
        .map_err(write_err)?
        .flush()
        .map_err(write_err)?;
    file.commit()?;
    Ok(resealer.report)
}

/// One envelope of field `path` under `active`: `None` when it already is, in the current
/// version (kept as it was), else the new envelope. Every envelope is opened, the ones already
/// under the active key too, so a tampered one is never copied on; a version-1 envelope under
/// the active key is resealed (upgraded). Shared by `reseal` on Avro files and JSON lines.
pub fn reseal_envelope(
    keys: &KeySet,
    active: &SealKey,
    path: &str,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, OpenError> {
    let current = envelope::key_id(bytes) == Ok(active.id())
        && envelope::version(bytes) == Ok(envelope::VERSION);
    let plaintext = zeroize::Zeroizing::new(keys.open(path, bytes)?);
    if current {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(envelope::sealed_len(active, plaintext.len()));
    envelope::seal_into(active, path, &plaintext, &mut out);
    Ok(Some(out))
}

struct Resealer<'a> {
    plan: &'a Plan,
    keys: &'a KeySet,
    active: &'a SealKey,
    report: ResealReport,
    failure: Option<(String, OpenError)>,
}

impl Resealer<'_> {
    fn value(&mut self, value: Value, path: &str, sealed: bool) -> Value {
        match value {
            Value::Record(fields) => Value::Record(
                fields
                    .into_iter()
                    .map(|(name, v)| {
                        let path = if path.is_empty() {
                            name.clone()
                        } else {
                            format!("{path}.{name}")
                        };
                        let sealed = self.plan.rules.get(&path) == Some(Action::Encrypt);
                        let v = self.value(v, &path, sealed);
                        (name, v)
                    })
                    .collect(),
            ),
            Value::Bytes(bytes) if sealed => {
                match reseal_envelope(self.keys, self.active, path, &bytes) {
                    Ok(None) => {
                        self.report.current += 1;
                        Value::Bytes(bytes)
                    }
                    Ok(Some(resealed)) => {
                        self.report.resealed += 1;
                        Value::Bytes(resealed)
                    }
                    Err(error) => {
                        self.failure.get_or_insert((path.to_owned(), error));
                        Value::Bytes(bytes)
                    }
                }
            }
            Value::Union(branch, inner) => {
                Value::Union(branch, Box::new(self.value(*inner, path, sealed)))
            }
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.value(v, path, sealed))
                    .collect(),
            ),
            other => other,
        }
    }
}
