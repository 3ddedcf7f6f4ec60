//! JSON lines in and out: file mode for the json, json-schema and protobuf pipelines
//! (`transform`, `decrypt` and `reseal` with `--pipeline`).
//!
//! One JSON object per line, as the worker reads one per record. The input is streamed (a
//! regular file only), each line at most [`MAX_LINE_BYTES`]; blank lines are skipped. The
//! output is written beside its target and renamed over it only when every line transformed:
//! one line that does not (a key no rule names, not JSON) and nothing is written, as with
//! Avro containers.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::file::{FileError, Transformed};
use crate::plan::json::JsonPlan;
use crate::transform::{ActiveKeys, Engine};

/// Longest line read: Kafka's default largest record, with room to spare.
pub const MAX_LINE_BYTES: u64 = 16 << 20;

/// The records of a JSON lines file, one a line, each with its line's index (from 0).
struct Records<'p> {
    reader: BufReader<std::fs::File>,
    input: &'p Path,
    line: Vec<u8>,
    index: u64,
}

impl<'p> Records<'p> {
    /// Opens a regular file (a FIFO or device is refused without waiting on it).
    fn open(input: &'p Path) -> Result<Records<'p>, FileError> {
        let file = crate::fsio::open_regular(input, "input", u64::MAX)?;
        Ok(Records {
            reader: BufReader::new(file),
            input,
            line: Vec::with_capacity(1024),
            index: 0,
        })
    }

    /// The next line that is not blank, as the worker would get it as a record: without its
    /// line end only (JSON's own whitespace around the object is the parser's to accept,
    /// nothing else). A line past [`MAX_LINE_BYTES`] is an error, not read whole.
    fn next(&mut self) -> Result<Option<(u64, &[u8])>, FileError> {
        loop {
            let index = self.index;
            self.index += 1;
            self.line.clear();
            let read = (&mut self.reader)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| crate::fsio::FileError::io("input", self.input, e))?;
            if read == 0 {
                return Ok(None);
            }
            if self.line.len() as u64 > MAX_LINE_BYTES {
                return Err(FileError::LineTooLong {
                    index,
                    limit: MAX_LINE_BYTES,
                });
            }
            let record = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            if !record.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                let record = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
                return Ok(Some((index, record)));
            }
        }
    }
}

/// Transforms every line of `input` by `plan` into `output`.
pub fn transform_lines(
    engine: &Engine,
    keys: &ActiveKeys,
    plan: &JsonPlan,
    proto: Option<&crate::plan::protobuf::ProtoContract>,
    input: &Path,
    output: &Path,
) -> Result<Transformed, FileError> {
    let mut records = Records::open(input)?;
    crate::fsio::refuse_same_file(input, output)?;
    let mut target = crate::fsio::AtomicFile::create(output, "output", 0o600)?;
    let token_prefix = keys
        .pseudonym_in(plan.domain.as_deref())
        .map(|key| format!("\"{}:", key.id()));
    let mut count = Transformed::default();
    let mut out = Vec::with_capacity(1024);
    let write = |e: std::io::Error| FileError::Write(e.to_string());
    while let Some((index, record)) = records.next()? {
        out.clear();
        // A protobuf pipeline's lines are its messages' JSON mapping, read through the schema.
        match proto {
            Some(contract) => engine.transform_protobuf_line(contract, keys, record, &mut out),
            None => engine.transform_json(plan, keys, None, record, &mut out),
        }
        .map_err(|source| FileError::Line { index, source })?;
        out.push(b'\n');
        target.writer().write_all(&out).map_err(write)?;
        count.events += 1;
        if let Some(prefix) = &token_prefix {
            count.tokens += memchr_count(&out, prefix.as_bytes());
        }
    }
    target.writer().flush().map_err(write)?;
    target.commit()?;
    Ok(count)
}

/// How many times `needle` occurs in `haystack` (tokens are `"key_id:` and a MAC, spec §3).
fn memchr_count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

/// Whether a sanitized JSON record carries one of `tokens` (any string value, at any depth).
pub fn carries_any(value: &serde_json::Value, tokens: &std::collections::HashSet<String>) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => tokens.contains(s),
        Value::Array(items) => items.iter().any(|v| carries_any(v, tokens)),
        Value::Object(map) => map.values().any(|v| carries_any(v, tokens)),
        _ => false,
    }
}

/// A sanitized JSON record with every envelope it holds opened where its key is available:
/// the b64 strings at `encrypt` rule paths (docs/formats.md, "Schemaless JSON"). An envelope
/// that does not open is marked `{"unopened": WHY, "key_id": ID}` and counted in `report`
/// (what an access export does).
pub fn open_record(
    plan: &JsonPlan,
    keys: &crate::keys::KeySet,
    value: serde_json::Value,
    report: &mut crate::file::DecryptReport,
) -> serde_json::Value {
    let mut opener = Opener {
        plan,
        keys,
        withhold: false,
        failure: None,
        report,
    };
    opener.value(value, "", false)
}

/// `decrypt --pipeline`: each line of a sanitized JSON lines file, as written by `transform
/// --pipeline` or read from the pipeline's topic, printed with its envelopes opened. Without
/// `keep_going` the first envelope that does not open ends the run before its line is
/// printed; a record that carries an erased person's token (`erased`) has its envelopes
/// withheld, not opened.
pub fn decrypt_lines(
    plan: &JsonPlan,
    keys: &crate::keys::KeySet,
    input: &Path,
    keep_going: bool,
    erased: &std::collections::HashSet<String>,
    out: &mut dyn Write,
    report: &mut crate::file::DecryptReport,
) -> Result<(), FileError> {
    if !plan.needs_encryption {
        return Err(FileError::NothingSealed {
            path: input.to_owned(),
            record: format!("of pipeline {}", plan.name),
        });
    }
    let mut records = Records::open(input)?;
    let write = |e: std::io::Error| FileError::Write(e.to_string());
    while let Some((index, line)) = records.next()? {
        let record = match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(record @ serde_json::Value::Object(_)) => record,
            _ => return Err(FileError::NotJsonObject { index }),
        };
        let withhold = !erased.is_empty() && carries_any(&record, erased);
        if withhold {
            report.withheld_events += 1;
        }
        let mut opener = Opener {
            plan,
            keys,
            withhold,
            failure: None,
            report: &mut *report,
        };
        let opened = opener.value(record, "", false);
        if let (Some((path, source)), false) = (opener.failure.take(), keep_going) {
            return Err(FileError::Open {
                index,
                path,
                source,
            });
        }
        serde_json::to_writer(&mut *out, &opened).map_err(|e| FileError::Write(e.to_string()))?;
        out.write_all(b"\n").map_err(write)?;
        report.events += 1;
    }
    Ok(())
}

/// Walks a sanitized JSON record, opening every envelope whose key is available.
struct Opener<'a> {
    plan: &'a JsonPlan,
    keys: &'a crate::keys::KeySet,
    /// The record carries an erased person's token: envelopes are withheld, not opened.
    withhold: bool,
    /// The first envelope that did not open for a reason other than a destroyed key.
    failure: Option<(String, crate::envelope::OpenError)>,
    report: &'a mut crate::file::DecryptReport,
}

impl Opener<'_> {
    fn value(&mut self, value: serde_json::Value, path: &str, sealed: bool) -> serde_json::Value {
        use base64::Engine as _;
        use serde_json::{json, Value};
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(key, v)| {
                        let child = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        let sealed =
                            self.plan.rules.get(&child) == Some(crate::rules::Action::Encrypt);
                        let opened = self.value(v, &child, sealed);
                        (key, opened)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.value(v, path, sealed))
                    .collect(),
            ),
            Value::String(text) if sealed && self.withhold && !text.is_empty() => {
                self.report.withheld += 1;
                json!({"withheld": "erased subject"})
            }
            Value::String(text) if sealed => {
                let envelope = base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .unwrap_or_default();
                match self.keys.open(path, &envelope) {
                    Ok(plaintext) => {
                        self.report.opened += 1;
                        if let Ok(id) = crate::envelope::key_id(&envelope) {
                            self.report.key_ids.insert(id.to_owned());
                        }
                        Value::String(String::from_utf8_lossy(&plaintext).into_owned())
                    }
                    Err(error) => {
                        let key_id = crate::envelope::key_id(&envelope).unwrap_or("?").to_owned();
                        let reason = match error {
                            crate::envelope::OpenError::KeyDestroyed(_) => {
                                self.report.destroyed += 1;
                                "key destroyed".to_owned()
                            }
                            other => {
                                self.report.failed += 1;
                                let reason = other.to_string();
                                self.failure.get_or_insert((path.to_owned(), other));
                                reason
                            }
                        };
                        json!({"unopened": reason, "key_id": key_id})
                    }
                }
            }
            other => other,
        }
    }
}

/// `reseal --pipeline`: a sanitized JSON lines file copied with every envelope (the base64
/// strings at `encrypt` rule paths) that is not under `active` opened and sealed again under
/// it, at the same path. The values around the envelopes are copied byte for byte (numbers,
/// string escapes, order and all); the objects on the way to an envelope are written again,
/// compact (keys with their escapes decoded), one line each (blank lines and `\r` dropped).
/// An envelope that does not open (destroyed or unknown key, tampered), or a sealed field that
/// holds something else than an envelope or `null`, stops the copy and nothing is written, as
/// for Avro files.
pub fn reseal_lines(
    plan: &JsonPlan,
    keys: &crate::keys::KeySet,
    active: &crate::keys::SealKey,
    input: &Path,
    output: &Path,
) -> Result<crate::file::ResealReport, FileError> {
    if !plan.needs_encryption {
        return Err(FileError::NothingSealed {
            path: input.to_owned(),
            record: format!("of pipeline {}", plan.name),
        });
    }
    let mut records = Records::open(input)?;
    crate::fsio::refuse_same_file(input, output)?;
    let mut target = crate::fsio::AtomicFile::create(output, "output", 0o600)?;
    let sealed: Vec<&str> = plan
        .rules
        .iter()
        .filter(|(_, action)| *action == crate::rules::Action::Encrypt)
        .map(|(path, _)| path)
        .collect();
    let mut resealer = LineResealer {
        sealed,
        keys,
        active,
        report: crate::file::ResealReport::default(),
        failure: None,
    };
    let write = |e: std::io::Error| FileError::Write(e.to_string());
    let mut out = String::with_capacity(1024);
    while let Some((index, line)) = records.next()? {
        // Read whole once as `decrypt` reads it (strict strings, at most 128 levels deep), so
        // that the walk below, which reads only the objects on the way to an envelope, never
        // meets a line `decrypt` would refuse.
        let text = std::str::from_utf8(line).map_err(|_| FileError::NotJsonObject { index })?;
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => return Err(FileError::NotJsonObject { index }),
        }
        let record: &serde_json::value::RawValue =
            serde_json::from_str(text).map_err(|_| FileError::NotJsonObject { index })?;
        out.clear();
        resealer.value(record, "", &mut out);
        if let Some((path, source)) = resealer.failure.take() {
            return Err(FileError::ResealLine {
                index,
                path,
                source,
            });
        }
        out.push('\n');
        target.writer().write_all(out.as_bytes()).map_err(write)?;
        resealer.report.events += 1;
    }
    target.writer().flush().map_err(write)?;
    target.commit()?;
    Ok(resealer.report)
}

/// The entries of one JSON object, in order, each value as its raw text.
struct Entries<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Entries<'a>, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) =
                    map.next_entry::<String, &'de serde_json::value::RawValue>()?
                {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// Walks a sanitized JSON record down the paths that lead to a sealed one only.
struct LineResealer<'a> {
    /// The `encrypt` rule paths.
    sealed: Vec<&'a str>,
    keys: &'a crate::keys::KeySet,
    active: &'a crate::keys::SealKey,
    report: crate::file::ResealReport,
    /// The first envelope that did not open.
    failure: Option<(String, crate::envelope::OpenError)>,
}

impl LineResealer<'_> {
    /// Whether `path` is sealed, or holds something sealed deeper down.
    fn leads_to_sealed(&self, path: &str) -> bool {
        self.sealed.iter().any(|sealed| {
            sealed
                .strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    }

    /// Appends `raw` (at `path`, which leads to a sealed path) to `out`, resealed.
    fn value(&mut self, raw: &serde_json::value::RawValue, path: &str, out: &mut String) {
        let text = raw.get();
        let sealed = self.sealed.contains(&path);
        match text.as_bytes().first() {
            // A sealed field holds an envelope (a string), `null` (a withheld subject's) or an
            // array of them: anything else was not written by `transform`, and is not copied on.
            Some(b'{') if sealed => self.refuse(path, text, out),
            Some(b'{') => {
                let Ok(Entries(entries)) = serde_json::from_str::<Entries>(text) else {
                    return self.refuse(path, text, out);
                };
                out.push('{');
                for (n, (key, value)) in entries.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(key).expect("a string serializes"));
                    out.push(':');
                    let child = match path.is_empty() {
                        true => key.clone(),
                        false => format!("{path}.{key}"),
                    };
                    match self.leads_to_sealed(&child) {
                        true => self.value(value, &child, out),
                        false => out.push_str(value.get()),
                    }
                }
                out.push('}');
            }
            Some(b'[') => {
                let Ok(items) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text)
                else {
                    return self.refuse(path, text, out);
                };
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    self.value(item, path, out);
                }
                out.push(']');
            }
            Some(b'"') if sealed => self.envelope(text, path, out),
            Some(b'n') if sealed => out.push_str(text),
            _ if sealed => self.refuse(path, text, out),
            // A value beside the sealed ones on the way (a number in an array, say).
            _ => out.push_str(text),
        }
    }

    /// Notes that the value at `path` is not what a sealed field holds (nothing is written).
    fn refuse(&mut self, path: &str, text: &str, out: &mut String) {
        self.failure
            .get_or_insert((path.to_owned(), crate::envelope::OpenError::Malformed));
        out.push_str(text);
    }

    /// Appends the envelope `text` (a JSON string of base64) resealed under the active key.
    fn envelope(&mut self, text: &str, path: &str, out: &mut String) {
        use base64::Engine as _;
        let bytes = serde_json::from_str::<String>(text)
            .ok()
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .unwrap_or_default();
        match crate::file::reseal_envelope(self.keys, self.active, path, &bytes) {
            Ok(None) => {
                self.report.current += 1;
                out.push_str(text);
            }
            Ok(Some(sealed)) => {
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(&sealed, out);
                out.push('"');
                self.report.resealed += 1;
            }
            Err(error) => {
                self.failure.get_or_insert((path.to_owned(), error));
                out.push_str(text);
            }
        }
    }
}
