//! The checks the fuzz targets (`fuzz/`) run on arbitrary bytes, kept in the library so that
//! `cargo test` replays every input the fuzzers ever found (`tests/hostile_inputs.rs` over
//! `fuzz/regressions/`). Each check panics on a defect and returns quietly otherwise: a
//! rejected input is not a defect, a panic, a disagreement or an unbounded allocation is.

use std::path::Path;

use crate::config::Config;
use crate::envelope;
use crate::keys::{Kek, KeySet, Keyring, Secret};
use crate::rules::Rules;
use crate::transform::{ActiveKeys, Engine};
use crate::worker::route::Router;

/// What the checks need: the shipped rules and a fixed keyring.
pub struct Setup {
    pub config: Config,
    pub engine: Engine,
    /// The shipped call rules with the call's time truncated to the hour and its duration
    /// bucketed (labels): the generalizing actions, which the shipped rules do not use.
    pub generalizing: Engine,
    pub keys: KeySet,
    pub active: ActiveKeys,
    pub router: Router,
    pub kek_secret: Secret,
    /// The example schemaless JSON pipeline (config/json-pipeline.toml).
    pub json: Engine,
    /// The example protobuf pipeline (config/protobuf-pipeline.toml, schemas/proto).
    pub protobuf: Engine,
}

impl Setup {
    /// The shipped config of the repository at `repo`, and keys made from fixed bytes.
    pub fn new(repo: &Path) -> Setup {
        // apache-avro (the reference path) reserves an array's claimed item count times the
        // size of a `Value` before reading an item: 48× amplification of its byte limit. The
        // checks bound its limit to 1 MiB (the first call sets it for the process).
        apache_avro::util::max_allocation_bytes(1 << 20);
        let config = Config::load(&repo.join("config/pipeline.toml")).expect("shipped config");
        let engine = Engine::from_config(&config).expect("shipped rules");
        let text = format!(
            r#"{{"format":"pseudonymizer-keyring/v1","keys":[
              {{"id":"p-fuzz","purpose":"pseudonym","state":"active","created_at":"2026-11-26T00:00:00Z","secret":"{}"}},
              {{"id":"e-fuzz","purpose":"encryption","state":"active","created_at":"2026-11-26T00:00:00Z","secret":"{}"}}]}}"#,
            b64(&[7; 32]),
            b64(&[9; 32])
        );
        let keys = KeySet::from_keyring(&Keyring::from_json(&text).expect("fixed keyring"));
        let active = engine.active_keys(&keys).expect("both purposes");
        let router = Router::from_config(&config, &engine).expect("shipped routes");
        let call = engine.plan("comms.v1.CallEvent").expect("a call pipeline");
        let rules = call
            .rules
            .clone()
            .with_pair(
                "occurred_at",
                crate::rules::Action::TimeTruncate(crate::rules::TimeUnit::Hour),
            )
            .with_pair("duration_ms", crate::rules::Action::Bucket { label: true })
            .with_buckets("duration_ms", vec![0, 10_000, 60_000, 300_000]);
        let generalizing = Engine::new(
            vec![crate::plan::compile(&call.input, &rules).expect("generalizing rules")],
            crate::phone::PhoneCanon::new("ID").expect("a region"),
        )
        .expect("one plan");
        let kek_secret = Secret::from_b64(&b64(&[5; 32])).expect("32 bytes");
        let json_config =
            Config::load(&repo.join("config/json-pipeline.toml")).expect("example json config");
        let json = Engine::from_config(&json_config).expect("example json rules");
        let protobuf_config = Config::load(&repo.join("config/protobuf-pipeline.toml"))
            .expect("example protobuf config");
        let protobuf = Engine::from_config(&protobuf_config).expect("example protobuf rules");
        Setup {
            json,
            protobuf,
            config,
            engine,
            generalizing,
            keys,
            active,
            router,
            kek_secret,
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The first byte picks a shipped plan, the rest is an event's Avro binary. The fast path and
/// the apache-avro reference path must agree: both reject, or both accept with the same
/// values (envelope nonces are fixed under `cfg(fuzzing)`; elsewhere only acceptance is
/// compared).
/// Whatever the input claims, the output stays within a small multiple of its size.
pub fn transform(setup: &Setup, data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    // A selector from 0xF0 up picks the generalizing pipeline; below, a shipped one (as before
    // it was added, so that the inputs kept in fuzz/regressions replay against the same plan).
    let (engine, plan) = if selector >= 0xF0 {
        (&setup.generalizing, &setup.generalizing.plans()[0])
    } else {
        let plans = setup.engine.plans();
        (&setup.engine, &plans[selector as usize % plans.len()])
    };
    let mut fast = Vec::new();
    let fast_result = engine.transform(plan, &setup.active, input, &mut fast);
    let reference = engine.transform_reference(plan, &setup.active, input);
    match (&fast_result, &reference) {
        (Ok(_), Ok(reference)) => {
            // Kept fields are copied as written (a varint longer than it needs to be, arrays
            // in negative-count blocks), the reference re-encodes them: compare the values.
            if cfg!(fuzzing) && &fast != reference {
                let decode = |bytes: &[u8]| {
                    apache_avro::from_avro_datum(&plan.output, &mut &bytes[..], None)
                        .expect("output decodes with the output schema")
                };
                assert_eq!(
                    decode(&fast),
                    decode(reference),
                    "both paths accept; their values differ"
                );
            }
            // Tokens and envelopes are longer than what they replace, never by much per byte.
            assert!(
                fast.len() <= 64 * input.len() + 4096,
                "output {} bytes from {} input bytes",
                fast.len(),
                input.len()
            );
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("the fast path accepts what the reference rejects ({e})"),
        // apache-avro reads a negative-count block's byte size and ignores it; the fast path
        // refuses a size that does not match the block's items.
        (Err(e), Ok(_)) if e.kind == crate::transform::ErrorKind::BlockSize => {}
        (Err(e), Ok(_)) if reads_past_the_end(plan, input) => {
            // apache-avro reads a union whose index is missing at the very end of the data as
            // null; the Avro spec (and the fast path) call that data truncated.
            let _ = e;
        }
        (Err(e), Ok(_)) => panic!("the fast path rejects ({e}) what the reference accepts"),
    }
}

/// A schemaless JSON record through the example json pipeline, checked against serde_json's
/// own parse of the same bytes: what the walk accepts is a JSON object to serde_json too, and
/// what it refuses as not JSON is not one; an accepted record's output is JSON whose kept
/// values equal the input's, whose dropped and unnamed keys are gone, and whose rewritten
/// strings are never the input's.
pub fn json(setup: &Setup, data: &[u8]) {
    use crate::transform::ErrorKind;
    use serde_json::Value;
    let Some((_, plan)) = setup.json.json_plans().first() else {
        return;
    };
    let mut out = Vec::new();
    let result = setup
        .json
        .transform_json(plan, &setup.active, None, data, &mut out);
    let parsed = serde_json::from_slice::<Value>(data);
    match result {
        Ok(_) => {
            let Ok(input @ Value::Object(_)) = parsed else {
                panic!("the walk accepts what serde_json does not read as an object")
            };
            let output: Value = serde_json::from_slice(&out).expect("the output is JSON");
            json_agrees(&plan.root, &input, &output);
            assert!(
                out.len() <= 64 * data.len() + 4096,
                "output {} bytes from {} input bytes",
                out.len(),
                data.len()
            );
        }
        Err(e) if matches!(e.kind, ErrorKind::NotJsonObject | ErrorKind::InvalidUtf8) => {
            assert!(
                !matches!(parsed, Ok(Value::Object(_))),
                "the walk refuses as not JSON ({e}) an object serde_json reads"
            );
        }
        Err(_) => {}
    }
}

/// One object of a json record against its output, by the plan's branch.
fn json_agrees(
    branch: &crate::plan::json::Branch,
    input: &serde_json::Value,
    output: &serde_json::Value,
) {
    use crate::plan::json::Node;
    use serde_json::Value;
    match (input, output) {
        (Value::Null, Value::Null) => {}
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{}: array lengths differ", branch.path);
            for (a, b) in a.iter().zip(b) {
                json_agrees(branch, a, b);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match branch.keys.get(key.as_str()) {
                    None => panic!("{}: a key without a rule was accepted", branch.path),
                    Some(Node::Branch(inner)) => json_agrees(inner, value, &b[key]),
                    Some(Node::Leaf(leaf)) => match leaf.action {
                        crate::rules::Action::Drop => {
                            assert!(
                                !b.contains_key(key),
                                "{}: dropped, but published",
                                leaf.path
                            )
                        }
                        crate::rules::Action::Keep => {
                            assert_eq!(&b[key], value, "{}: kept, but changed", leaf.path)
                        }
                        _ => {
                            // A rewritten value keeps its shape (a string stays a string or
                            // becomes null, an array keeps its length) and no raw string of 4 bytes or more is
                            // published: not in its own place, nor in another item's, unless
                            // it is itself a token under the fuzzing key (the fuzzer learns
                            // tokens from this very comparison and copies one into another
                            // item, whose own token it then is).
                            let (raw, published) = match (value, &b[key]) {
                                (Value::Array(raw), Value::Array(published)) => {
                                    assert_eq!(
                                        raw.len(),
                                        published.len(),
                                        "{}: array lengths differ",
                                        leaf.path
                                    );
                                    (raw.iter().collect(), published.iter().collect())
                                }
                                (Value::String(_), Value::String(_)) => {
                                    (vec![value], vec![&b[key]])
                                }
                                // Null (a withheld subject's sealed field) carries nothing.
                                (Value::String(_) | Value::Array(_), other) if !other.is_null() => {
                                    panic!("{}: a string became {other}", leaf.path)
                                }
                                _ => (Vec::new(), Vec::new()),
                            };
                            for (at, raw) in raw.iter().enumerate() {
                                let Value::String(raw) = raw else { continue };
                                if raw.len() < 4 {
                                    continue;
                                }
                                for (place, published) in published.iter().enumerate() {
                                    let is_token = raw.starts_with("p-fuzz:");
                                    assert!(
                                        published.as_str() != Some(raw.as_str())
                                            || (place != at && is_token),
                                        "{}: a raw value published",
                                        leaf.path
                                    );
                                }
                            }
                        }
                    },
                }
            }
            for key in b.keys() {
                let derived = a.keys().any(|k| key.starts_with(&format!("{k}_")));
                assert!(
                    a.contains_key(key) || derived,
                    "{}: the output has a key the input has not",
                    branch.path
                );
            }
        }
        _ => panic!(
            "{}: the output's shape differs from the input's",
            branch.path
        ),
    }
}

/// Whether apache-avro accepts `input` only by reading past its end: it reads a union index
/// (even a varint cut short) at the end of the data as null.
fn reads_past_the_end(plan: &crate::plan::Plan, input: &[u8]) -> bool {
    let mut reader = EndWatch {
        rest: input,
        asked_past_the_end: false,
    };
    apache_avro::from_avro_datum(&plan.input, &mut reader, None).is_ok()
        && reader.asked_past_the_end
}

/// A reader that notes whether anything was asked of it once its bytes were all read.
struct EndWatch<'a> {
    rest: &'a [u8],
    asked_past_the_end: bool,
}

impl std::io::Read for EndWatch<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.asked_past_the_end = true;
        }
        self.rest.read(buf)
    }
}

/// A field path (up to the first zero byte) and an envelope: opening never panics, and opens
/// only what was sealed under a key of the keyring for that path.
pub fn envelope_open(setup: &Setup, data: &[u8]) {
    let (path, sealed) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"body"[..], data),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let _ = envelope::key_id(sealed);
    if let Ok(plaintext) = setup.keys.open(path, sealed) {
        // Only a genuine envelope opens: header, nonce of its version, plaintext and tag add
        // up to exactly its length.
        let id = envelope::key_id(sealed).expect("opened");
        assert!(setup.keys.seal_key(id).is_some(), "opened with a known key");
        let nonce_len = match envelope::version(sealed) {
            Ok(envelope::VERSION) => envelope::NONCE_LEN,
            _ => envelope::NONCE_LEN_V1,
        };
        assert_eq!(
            2 + id.len() + nonce_len + plaintext.len() + envelope::TAG_LEN,
            sealed.len()
        );
    }
}

/// Keyring text, clear and sealed: parsing never panics.
pub fn keyring(setup: &Setup, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Keyring::from_json(text);
    let _ = Keyring::from_sealed(text, Kek::from_secret(&setup.kek_secret));
}

/// Config text: parsing and rule reading never panic.
pub fn config(_: &Setup, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text, Path::new("/nonexistent/pipeline.toml")) {
        for pipeline in &config.pipeline {
            let _ = Rules::from_specs(&pipeline.rules);
        }
    }
}

/// A writer schema as a schema registry could answer it (any producer that may register
/// schemas chooses it): parsing it and compiling each shipped pipeline's rules against it, as
/// the worker does for a new schema id, never panic. (apache-avro 0.21's own panic on invalid
/// names is caught by [`crate::registry::parse_schema`]; the fuzz target lets exactly that
/// panic site unwind to the catch, see `fuzz/fuzz_targets/schema_compile.rs`.)
pub fn schema(setup: &Setup, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(schema) = crate::registry::parse_schema(text) else {
        return;
    };
    for plan in setup.engine.plans() {
        let _ = crate::plan::compile_with(&schema, &plan.rules, crate::plan::UnusedRules::Allow);
    }
}

/// A producer's JSON Schema as a registry answers it, checked against the example json
/// pipeline's rules (both `unknown` settings). Never panics; an accepted schema derives an
/// output schema titled in the sanitized namespace that names no property outside the rules
/// and their derived keys (nothing without a rule is described as published), and carries no
/// `examples`, `default`, `enum` or `const` on a rewritten value (they describe raw values).
pub fn json_schema(setup: &Setup, data: &[u8]) {
    use crate::plan::json::{Branch, Node};
    use crate::plan::json_schema::{derive, WriterSchema};
    use serde_json::Value;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(schema) = WriterSchema::parse(text) else {
        return;
    };
    let Some((_, plan)) = setup.json.json_plans().first() else {
        return;
    };
    fn named(branch: &Branch, output: &Value) {
        let Some(properties) = output.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, value) in properties {
            let node = branch.keys.get(key.as_str()).or_else(|| {
                // A derived key: `<leaf>_<attribute>` of a leaf that derives it.
                branch.keys.iter().find_map(|(leaf_key, node)| match node {
                    Node::Leaf(leaf)
                        if leaf
                            .derived_keys
                            .iter()
                            .any(|(a, _)| a.field_name(leaf_key) == *key) =>
                    {
                        Some(node)
                    }
                    _ => None,
                })
            });
            match node {
                None => panic!("the derived schema describes a key without a rule"),
                Some(Node::Branch(inner)) => {
                    named(inner, value);
                    if let Some(items) = value.get("items") {
                        named(inner, items);
                    }
                }
                Some(Node::Leaf(leaf)) if leaf.action == crate::rules::Action::Keep => {}
                Some(Node::Leaf(_)) => {
                    for hint in ["examples", "default", "enum", "const", "pattern"] {
                        assert!(
                            value.get(hint).is_none(),
                            "{hint} kept on a rewritten value"
                        );
                    }
                }
            }
        }
    }
    for unused in [
        crate::plan::UnusedRules::Allow,
        crate::plan::UnusedRules::Refuse,
    ] {
        if let Ok(output) = derive(plan, &schema, unused) {
            assert_eq!(output["title"], Value::String(schema.output_title()));
            named(&plan.root, &output);
        }
    }
}

/// A Protobuf record after its schema id: the message-index list, then a message of the
/// example protobuf pipeline's input (`comms.v1.CallEvent`). Never panics; an index list read
/// is read the same once written again; a record accepted decodes as the derived message, with
/// no field outside it, and equals the JSON walk of prost-reflect's own decoding of the input
/// (sealed values aside: each envelope has its own nonce), so the walk through the mapping
/// adds and loses nothing.
pub fn protobuf(setup: &Setup, data: &[u8]) {
    use crate::plan::protobuf::{read_indexes, write_indexes};
    use prost_reflect::{DynamicMessage, SerializeOptions};
    let Some((indexes, message)) = read_indexes(data) else {
        return;
    };
    let mut written = Vec::new();
    write_indexes(&indexes, &mut written);
    assert_eq!(
        read_indexes(&written).map(|(i, rest)| (i, rest.len())),
        Some((indexes.clone(), 0)),
        "an index list reads back as written"
    );
    let engine = &setup.protobuf;
    let Some(contract) = engine.proto(0) else {
        return;
    };
    let mut out = Vec::new();
    let accepted = engine
        .transform_protobuf(contract, &setup.active, None, message, &mut out)
        .is_ok();
    // The crate's own decoder: what it makes of the input, walked by the same rules.
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let as_json = |descriptor: &prost_reflect::MessageDescriptor, bytes: &[u8]| {
        let decoded = DynamicMessage::decode(descriptor.clone(), bytes).ok()?;
        decoded
            .serialize_with_options(serde_json::value::Serializer, &options)
            .ok()
    };
    if !accepted {
        return;
    }
    let output =
        as_json(&contract.output, &out).expect("the output decodes as the derived message");
    let input = as_json(&contract.input.message, message).expect("an accepted input decodes");
    let mut walked = Vec::new();
    engine
        .transform_json(
            &contract.plan,
            &setup.active,
            None,
            input.to_string().as_bytes(),
            &mut walked,
        )
        .expect("the walk accepts what it accepted through the mapping");
    let walked: serde_json::Value = serde_json::from_slice(&walked).expect("the walk writes JSON");
    let mut reread = Vec::new();
    crate::transform::protobuf::from_json(
        &contract.output,
        walked.to_string().as_bytes(),
        &mut reread,
    )
    .expect("the walk's output fits the derived message");
    let mut want = as_json(&contract.output, &reread).expect("it decodes");
    let mut got = output;
    // The one sealed field of the example rules.
    assert_eq!(
        got["recording_url"].take().is_null(),
        want["recording_url"].take().is_null(),
        "a sealed value in one and not the other"
    );
    assert_eq!(
        got, want,
        "the record through the mapping equals the walk of its decoding"
    );
}

/// A record as consumed: the first byte is the key's length, then the key, then the value
/// (Confluent framing, routing, transform, key token). Never panics; a record is published or
/// dead-lettered.
pub fn route(setup: &Setup, data: &[u8]) {
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at((key_len as usize).min(rest.len()));
    let mut out = Vec::new();
    let _ = setup.router.process(
        &setup.engine,
        &setup.active,
        Some(key),
        Some(value),
        &mut out,
    );
}

/// A phone field's value and a region: the first byte picks the region (of every region the
/// parser knows), the rest is the value (lossy UTF-8). Wherever the fast path answers, its
/// answer is the full parse's (src/phone/fast.rs), and so are the attributes derived from it
/// (src/phone/attributes.rs).
pub fn phone_fast(_: &Setup, data: &[u8]) {
    static REGIONS: std::sync::LazyLock<Vec<rlibphonenumber::Region>> =
        std::sync::LazyLock::new(|| {
            crate::phone::phone_regions()
                .iter()
                .filter_map(|r| crate::phone::phone_region(r))
                .collect()
        });
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let region = REGIONS[usize::from(pick) % REGIONS.len()];
    let text = String::from_utf8_lossy(rest);
    let trimmed = text.trim();
    if let Some(fast) = crate::phone::fast::canonical(region, trimmed) {
        assert_eq!(
            fast,
            crate::phone::parse_e164(region, trimmed),
            "fast path and full parse disagree"
        );
        // The derived attributes (region, calling code, type) of the fast path's answer.
        assert_eq!(
            crate::phone::attributes::of_canonical(&fast.1),
            crate::phone::attributes::of_full_parse(region, trimmed),
            "derived attributes and full parse disagree"
        );
    }
}
