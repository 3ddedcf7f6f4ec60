//! JSON lines in and out: file mode for `format = "json"` pipelines (`transform --pipeline`).
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

/// Transforms every line of `input` by `plan` into `output`.
pub fn transform_lines(
    engine: &Engine,
    keys: &ActiveKeys,
    plan: &JsonPlan,
    input: &Path,
    output: &Path,
) -> Result<Transformed, FileError> {
    let file = crate::fsio::open_regular(input, "input", u64::MAX)?;
    let mut reader = BufReader::new(file);
    crate::fsio::refuse_same_file(input, output)?;
    let mut target = crate::fsio::AtomicFile::create(output, "output", 0o600)?;
    let token_prefix = keys
        .pseudonym_in(plan.domain.as_deref())
        .map(|key| format!("\"{}:", key.id()));
    let mut count = Transformed::default();
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    let write = |e: std::io::Error| FileError::Write(e.to_string());
    for index in 0u64.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| crate::fsio::FileError::io("input", input, e))?;
        if read == 0 {
            break;
        }
        if line.len() as u64 > MAX_LINE_BYTES {
            return Err(FileError::LineTooLong {
                index,
                limit: MAX_LINE_BYTES,
            });
        }
        // The line as the worker would get it as a record: without its line end only (JSON's
        // own whitespace around the object is the parser's to accept, nothing else).
        let record = line.strip_suffix(b"\n").unwrap_or(&line);
        if record.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            continue;
        }
        out.clear();
        engine
            .transform_json(plan, keys, None, record, &mut out)
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
/// that does not open is marked `{"unopened": WHY, "key_id": ID}` and counted in `report`.
pub fn open_record(
    plan: &JsonPlan,
    keys: &crate::keys::KeySet,
    value: serde_json::Value,
    report: &mut crate::file::DecryptReport,
) -> serde_json::Value {
    open_value(plan, keys, value, "", false, report)
}

fn open_value(
    plan: &JsonPlan,
    keys: &crate::keys::KeySet,
    value: serde_json::Value,
    path: &str,
    sealed: bool,
    report: &mut crate::file::DecryptReport,
) -> serde_json::Value {
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
                    let sealed = plan.rules.get(&child) == Some(crate::rules::Action::Encrypt);
                    let opened = open_value(plan, keys, v, &child, sealed, report);
                    (key, opened)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| open_value(plan, keys, v, path, sealed, report))
                .collect(),
        ),
        Value::String(text) if sealed => {
            let Ok(envelope) = base64::engine::general_purpose::STANDARD.decode(&text) else {
                report.failed += 1;
                return json!({"unopened": "not base64", "key_id": "?"});
            };
            match keys.open(path, &envelope) {
                Ok(plaintext) => {
                    report.opened += 1;
                    if let Ok(id) = crate::envelope::key_id(&envelope) {
                        report.key_ids.insert(id.to_owned());
                    }
                    Value::String(String::from_utf8_lossy(&plaintext).into_owned())
                }
                Err(error) => {
                    let key_id = crate::envelope::key_id(&envelope).unwrap_or("?").to_owned();
                    let reason = match error {
                        crate::envelope::OpenError::KeyDestroyed(_) => {
                            report.destroyed += 1;
                            "key destroyed".to_owned()
                        }
                        other => {
                            report.failed += 1;
                            other.to_string()
                        }
                    };
                    json!({"unopened": reason, "key_id": key_id})
                }
            }
        }
        other => other,
    }
}
