//! Schemaless JSON pipelines (`format = "json"`): the same rules give the same tokens as the
//! Avro pipeline of the same event; kept values are copied byte for byte; every way a record
//! can fail to be classified is refused whole; the config refuses what cannot work; file mode
//! on JSON lines writes all or nothing; and the worker, against a real broker, publishes every
//! good record and dead-letters the rest.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use pseudonymizer::config::Config;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::metrics::Metrics;
use pseudonymizer::transform::{Engine, ErrorKind};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value as Json};

/// The example json config, its keyring and audit log in `dir`, with `edit` applied to its text.
fn config_in(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let keyring = common::write_keyring(dir);
    let text = std::fs::read_to_string(common::repo().join("config/json-pipeline.toml"))
        .unwrap()
        .replace(
            "\"../keys/keyring.json\"",
            &format!("{:?}", keyring.display().to_string()),
        )
        .replace(
            "\"../var/audit.log\"",
            &format!("{:?}", dir.join("audit.log").display().to_string()),
        );
    let path = dir.join("json.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn json_engine(edit: impl Fn(String) -> String) -> (Config, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&config_in(dir.path(), edit)).unwrap();
    let engine = Engine::from_config(&config).unwrap();
    (config, engine)
}

/// Transforms one record by the config's json pipeline.
fn run(engine: &Engine, input: &[u8]) -> Result<Vec<u8>, pseudonymizer::transform::TransformError> {
    let (_, plan) = &engine.json_plans()[0];
    let keys = common::active(engine);
    let mut out = Vec::new();
    engine.transform_json(plan, &keys, None, input, &mut out)?;
    Ok(out)
}

/// A generated call event as a producer of JSON writes it (apache-avro's own mapping of the
/// Avro value: unions as their value, enums as their symbol).
fn call_as_json(seed: u64) -> (apache_avro::types::Value, Json) {
    let event = Generator::new(seed).event(Kind::Call);
    let json = Json::try_from(event.clone()).unwrap();
    (event, json)
}

/// The same event through the Avro pipeline and the json one gives the same output: every
/// token, derived attribute and kept value, and envelopes that open to the same plaintext.
#[test]
fn same_rules_same_tokens_as_avro() {
    let avro_engine = common::engine();
    let (_, json_engine) = json_engine(|t| t);
    let plan = avro_engine.plan("comms.v1.CallEvent").unwrap();
    let keys = common::active(&avro_engine);
    let keyset = common::keyset();
    for seed in 0..300 {
        let (event, json) = call_as_json(seed);
        let mut avro_out = Vec::new();
        avro_engine
            .transform(
                plan,
                &keys,
                &common::encode(&plan.input, event),
                &mut avro_out,
            )
            .unwrap();
        let avro_out = Json::try_from(common::decode(&plan.output, &avro_out)).unwrap();
        let json_out: Json =
            serde_json::from_slice(&run(&json_engine, json.to_string().as_bytes()).unwrap())
                .unwrap();
        let (Json::Object(mut a), Json::Object(mut j)) = (avro_out, json_out) else {
            panic!("objects")
        };
        // Envelopes differ by their nonces: both open to the same plaintext.
        let sealed_a = a.remove("recording_url").unwrap();
        let sealed_j = j.remove("recording_url").unwrap();
        match (&sealed_a, &sealed_j) {
            (Json::Null, Json::Null) => {}
            (Json::Array(bytes), Json::String(b64)) => {
                let bytes: Vec<u8> = bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect();
                let from_json = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                assert_eq!(
                    keyset.open("recording_url", &bytes).unwrap(),
                    keyset.open("recording_url", &from_json).unwrap()
                );
            }
            other => panic!("seed {seed}: sealed values differ in kind: {other:?}"),
        }
        assert_eq!(a, j, "seed {seed}: the Avro and json outputs differ");
        // And key order is the producer's, derived keys right after their field.
        let keys: Vec<&String> = j.keys().collect();
        let caller = keys.iter().position(|k| *k == "caller").unwrap();
        assert_eq!(keys[caller + 1], "caller_region");
    }
}

/// Values a rule keeps are copied as written: numbers past 64 bits, trailing zeros, escapes,
/// non-ASCII text; arrays of objects and nested objects are walked; nulls stay null.
#[test]
fn kept_values_are_byte_for_byte_and_shapes_are_walked() {
    let (_, engine) = json_engine(|t| {
        t.replace(
            "recording_url = \"encrypt\"",
            "recording_url = \"encrypt\"\n\"attachments.url\" = \"encrypt\"\n\"attachments.size\" = \"keep\"\nrecipients = { action = \"phone\", derive = [\"region\"] }\nnote = \"drop\"\nhour = { action = \"time-truncate\", unit = \"hour\" }\nbucketed = { action = \"bucket\", bounds = [0, 60000], output = \"lower\" }",
        )
    });
    let input = br#"{"event_id":"caf\u00e9 \"x\"","duration_ms":12345678901234567890123,"codec":1.50,"status":"\u2603 snow","occurred_at":-0.0e5,"attachments":[{"url":"https://a/1","size":1e3},{"url":null,"size":null}],"device":{"os":"android","device_id":42},"location":null,"recipients":["+6591234567",null,"x"],"note":{"anything":[1,2]},"hour":1765000000123,"bucketed":-5}"#;
    let out = String::from_utf8(run(&engine, input).unwrap()).unwrap();
    for kept in [
        r#""event_id":"caf\u00e9 \"x\"""#,
        r#""duration_ms":12345678901234567890123"#,
        r#""codec":1.50"#,
        r#""status":"\u2603 snow""#,
        r#""occurred_at":-0.0e5"#,
        r#""size":1e3"#,
        r#""location":null"#,
        r#""hour":1764997200000"#,
        r#""bucketed":-9223372036854775808"#,
    ] {
        assert!(out.contains(kept), "{kept} not in {out}");
    }
    assert!(
        !out.contains("note"),
        "a drop rule's key is left out: {out}"
    );
    let parsed: Json = serde_json::from_str(&out).unwrap();
    // A number in an id field is tokenized as written: the token of the text "42".
    let keys = common::active(&engine);
    let pkey = keys.pseudonym.as_deref().unwrap();
    let id42 = pseudonymizer::token::token(pkey, pseudonymizer::token::TokenClass::Id, b"42");
    assert_eq!(parsed["device"]["device_id"], json!(id42.as_str()));
    assert_eq!(parsed["recipients_region"], json!(["SG", null, null]));
    assert_eq!(parsed["recipients"][1], Json::Null);
    assert!(parsed["recipients"][2]
        .as_str()
        .unwrap()
        .starts_with("p-test-1:"));
    let url = parsed["attachments"][0]["url"].as_str().unwrap();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(url)
        .unwrap();
    assert_eq!(
        common::keyset().open("attachments.url", &sealed).unwrap(),
        b"https://a/1"
    );
    assert_eq!(parsed["attachments"][1]["url"], Json::Null);
    for raw in ["+6591234567", "https://a/1", "android\",\"device_id\":42"] {
        assert!(!out.contains(raw), "{raw} published");
    }
    // time-truncate and bucket take whole numbers only: a fraction, an exponent or a number
    // past 64 bits is refused (unclassified, curable by a rule), and the message says why.
    for (input, path) in [
        (&br#"{"hour":1765000000123.5}"#[..], "hour"),
        (br#"{"hour":1.7e12}"#, "hour"),
        (br#"{"bucketed":99999999999999999999}"#, "bucketed"),
    ] {
        let error = run(&engine, input).expect_err(&String::from_utf8_lossy(input));
        assert_eq!((&*error.path, error.kind), (path, ErrorKind::NotAnInteger));
        assert!(error.kind.is_unclassified());
        assert!(error.to_string().contains("not a whole number"), "{error}");
    }
}

/// Every record that is not fully classified is refused whole, with the path and the cause
/// and never a value or a key's name; `unknown = "drop"` leaves unnamed keys out instead.
#[test]
fn unclassified_and_corrupt_records_are_refused() {
    let (_, engine) = json_engine(|t| t);
    let cases: &[(&[u8], &str, ErrorKind)] = &[
        (
            b"not json",
            "(the top-level object)",
            ErrorKind::NotJsonObject,
        ),
        (b"[1,2]", "(the top-level object)", ErrorKind::NotJsonObject),
        (
            b"\"+6281234567890\"",
            "(the top-level object)",
            ErrorKind::NotJsonObject,
        ),
        (
            b"{\"caller\":\"+6281234567890\"",
            "(the top-level object)",
            ErrorKind::NotJsonObject,
        ),
        (
            b"{\"caller\":\"+6281234567890\"} {}",
            "(the top-level object)",
            ErrorKind::NotJsonObject,
        ),
        (
            b"{\"caller\":\"\xff\"}",
            "(the record)",
            ErrorKind::InvalidUtf8,
        ),
        (br#"{"codec":"\ud800"}"#, "codec", ErrorKind::NotJsonObject),
        // Past f64's range, kept or tokenized (found by the json_transform fuzzer).
        (
            br#"{"duration_ms":1e400}"#,
            "duration_ms",
            ErrorKind::NotJsonObject,
        ),
        (
            br#"{"caller":["+366666634",65e6666666666]}"#,
            "caller",
            ErrorKind::NotJsonObject,
        ),
        (
            br#"{"device":[{"os":"a"},[{"os":"b"}]]}"#,
            "device",
            ErrorKind::DoesNotFitRule,
        ),
        (
            br#"{"caller":"+6281234567890","caller":"+6281234567891"}"#,
            "(the top-level object)",
            ErrorKind::DuplicateKey,
        ),
        (
            br#"{"device":{"os":"a","os":"b"}}"#,
            "device",
            ErrorKind::DuplicateKey,
        ),
        (
            br#"{"secret_field":"+6281234567890"}"#,
            "(the top-level object)",
            ErrorKind::UnnamedKey,
        ),
        (
            br#"{"device":{"imei":"356938035643809"}}"#,
            "device",
            ErrorKind::UnnamedKey,
        ),
        (
            br#"{"caller":{"number":"+6281234567890"}}"#,
            "caller",
            ErrorKind::DoesNotFitRule,
        ),
        (br#"{"caller":true}"#, "caller", ErrorKind::DoesNotFitRule),
        (
            br#"{"caller":[["+6281234567890"]]}"#,
            "caller",
            ErrorKind::DoesNotFitRule,
        ),
        (
            br#"{"event_id":{"nested":"+6281234567890"}}"#,
            "event_id",
            ErrorKind::DoesNotFitRule,
        ),
        (
            br#"{"device":"+6281234567890"}"#,
            "device",
            ErrorKind::DoesNotFitRule,
        ),
        (
            br#"{"recording_url":12}"#,
            "recording_url",
            ErrorKind::DoesNotFitRule,
        ),
    ];
    for (input, path, kind) in cases {
        let error = run(&engine, input).expect_err(&String::from_utf8_lossy(input));
        assert_eq!(
            (&*error.path, error.kind),
            (*path, *kind),
            "{}",
            String::from_utf8_lossy(input)
        );
        let said = error.to_string();
        for secret in ["6281234567890", "secret_field", "imei", "356938035643809"] {
            assert!(!said.contains(secret), "{said}");
        }
    }
    let (_, dropping) =
        json_engine(|t| t.replace("unknown = \"dead-letter\"", "unknown = \"drop\""));
    let out = run(
        &dropping,
        br#"{"secret_field":"x","event_id":"e","device":{"imei":"1","os":"a"},"z":[1]}"#,
    )
    .unwrap();
    assert_eq!(out, br#"{"event_id":"e","device":{"os":"a"}}"#);
}

/// What cannot work is refused at start, every problem at once, naming the pipeline.
#[test]
fn config_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |edit: &dyn Fn(String) -> String, wanted: &[&str]| {
        let path = config_in(dir.path(), edit);
        let error = Config::load(&path)
            .map_err(|e| e.problems().join("\n"))
            .and_then(|config| {
                Engine::from_config(&config)
                    .map_err(|e| e.problems().join("\n"))
                    .and_then(|engine| {
                        pseudonymizer::worker::route::Router::from_config(&config, &engine)
                            .map(|_| ())
                            .map_err(|e| e.problems().join("\n"))
                    })
            })
            .expect_err("refused");
        for want in wanted {
            assert!(error.contains(want), "{want:?} not in:\n{error}");
        }
    };
    refused(
        &|t| t.replace("\"device.os\" = \"keep\"", "\"device.os\" = \"keep\"\ndevice = \"keep\""),
        &["[sdk-calls] device: has rules of its own keys (device.app_version), so it is an object"],
    );
    refused(
        &|t| {
            t.replace("call_id = \"id\"", "call_id = \"id\"\n\"call_id.x\" = \"keep\"\ncaller_region = \"keep\"\n\"a..b\" = \"keep\"")
        },
        &[
            "call_id: has rules of its own keys (call_id.x)",
            "caller: derives caller_region, which a rule also names",
            "a..b: a rule path is keys joined by dots",
        ],
    );
    refused(
        &|t| {
            t.replace(
                "\nformat = \"json\"\n",
                "\nformat = \"json\"\ninput_schema = \"x.avsc\"\n",
            )
        },
        &["[sdk-calls] input_schema is for format avro"],
    );
    refused(
        &|t| t.replace("\nformat = \"json\"\n", "\nformat = \"avro\"\n"),
        &[
            "[sdk-calls] input_schema is required for format avro",
            "[sdk-calls] unknown is for formats json and json-schema",
        ],
    );
    refused(
        &|t| t.replace("\nformat = \"json\"\n", "\nformat = \"xml\"\n"),
        &["xml"],
    );
    refused(
        &|t| {
            t.replace(
                "[kafka]",
                "[pipeline.risk]\nquasi_identifiers = [\"recording_url\", \"imei\", \"callee_region\", \"callee_region\"]\n\n[kafka]",
            )
        },
        &[
            "quasi-identifier \"recording_url\" is sealed",
            "quasi-identifier \"imei\" is neither a rule's key nor a key a rule derives",
            "quasi-identifier \"callee_region\" is named twice",
        ],
    );
    refused(
        &|t| {
            t.replace(
                "key_class = \"phone\"",
                "key_class = \"phone\"\ninput_schema_id = 1\noutput_schema_id = 2",
            )
        },
        &["input_schema_id and output_schema_id are for format avro"],
    );
    refused(
        &|t| {
            t.replace(
                "[kafka]",
                "[[pipeline]]\nname = \"other\"\nformat = \"json\"\ninput_topic = \"sdk.calls.raw\"\noutput_topic = \"other.out\"\n[pipeline.rules]\na = \"keep\"\n\n[kafka]",
            )
        },
        &["needs its input topic to itself"],
    );
    refused(
        &|t| {
            t.replace(
                "[kafka]",
                "[[pipeline]]\nname = \"sdk-calls\"\nformat = \"json\"\ninput_topic = \"x\"\noutput_topic = \"y\"\n[pipeline.rules]\na = \"keep\"\n\n[kafka]",
            )
        },
        &["[sdk-calls] two pipelines have this name"],
    );
}

/// `transform --pipeline` on JSON lines: every line or nothing; an existing output is left as
/// it was when a line fails, and the failure names the line, never its content.
#[test]
fn file_mode_on_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), |t| t);
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..50)
        .map(|seed| call_as_json(seed).1.to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let bin = env!("CARGO_BIN_EXE_pseudonymizer");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let args = |input: &std::path::Path| {
        vec![
            "transform".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
            "--pipeline".to_owned(),
            "sdk-calls".to_owned(),
            "--input".to_owned(),
            input.display().to_string(),
            "--output".to_owned(),
            output.display().to_string(),
        ]
    };
    let strs = |v: &Vec<String>| {
        v.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\u{0}")
    };
    let done = run(&strs(&args(&input)).split('\u{0}').collect::<Vec<_>>());
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).starts_with("transformed 50 events"));
    let written = std::fs::read_to_string(&output).unwrap();
    assert_eq!(written.lines().count(), 50);
    for (line, raw) in written.lines().zip(&lines) {
        let out: Json = serde_json::from_str(line).unwrap();
        let raw: Json = serde_json::from_str(raw).unwrap();
        assert_eq!(out["event_id"], raw["event_id"]);
        assert_ne!(out["caller"], raw["caller"]);
        assert!(!line.contains(raw["caller"].as_str().unwrap()));
    }
    // `decrypt --pipeline` opens the sealed values back (audited), and every other value
    // stays as published.
    let opened = run(&[
        "decrypt",
        "--config",
        config.to_str().unwrap(),
        "--pipeline",
        "sdk-calls",
        "--input",
        output.to_str().unwrap(),
    ]);
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let opened = String::from_utf8(opened.stdout).unwrap();
    assert_eq!(opened.lines().count(), 50);
    let mut envelopes = 0;
    for ((line, raw), published) in opened.lines().zip(&lines).zip(written.lines()) {
        let line: Json = serde_json::from_str(line).unwrap();
        let raw: Json = serde_json::from_str(raw).unwrap();
        let published: Json = serde_json::from_str(published).unwrap();
        assert_eq!(line["recording_url"], raw["recording_url"]);
        envelopes += usize::from(raw["recording_url"].is_string());
        assert_eq!(line["caller"], published["caller"]);
    }
    assert!(envelopes > 10, "{envelopes} envelopes opened");
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"decrypt\""), "{audit}");
    // After the encryption key's rotation, `reseal --pipeline` seals every envelope again
    // under the new key; every other value is copied byte for byte, and the values open as
    // before.
    let keyring = dir.path().join("keyring.json");
    let rotated = run(&[
        "keys",
        "rotate",
        "--keyring",
        keyring.to_str().unwrap(),
        "--purpose",
        "encryption",
    ]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let resealed = dir.path().join("resealed.jsonl");
    let reseal = |input: &std::path::Path, output: &std::path::Path| {
        run(&[
            "reseal",
            "--config",
            config.to_str().unwrap(),
            "--pipeline",
            "sdk-calls",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
    };
    let done = reseal(&output, &resealed);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        said.starts_with(&format!("resealed {envelopes} envelopes under "))
            && said.contains("(0 were already under it) in 50 events"),
        "{said}"
    );
    let resealed_text = std::fs::read_to_string(&resealed).unwrap();
    assert_eq!(resealed_text.lines().count(), 50);
    for (before, after) in written.lines().zip(resealed_text.lines()) {
        let mut before_json: Json = serde_json::from_str(before).unwrap();
        let mut after_json: Json = serde_json::from_str(after).unwrap();
        match before_json["recording_url"].is_string() {
            // Another envelope (a new key, a new nonce); the rest of the record unchanged.
            true => {
                assert_ne!(before_json["recording_url"], after_json["recording_url"]);
                before_json["recording_url"] = Json::Null;
                after_json["recording_url"] = Json::Null;
                assert_eq!(before_json, after_json);
            }
            // Nothing sealed: the line as it was, byte for byte.
            false => assert_eq!(before, after),
        }
    }
    let opened_again = run(&[
        "decrypt",
        "--config",
        config.to_str().unwrap(),
        "--pipeline",
        "sdk-calls",
        "--input",
        resealed.to_str().unwrap(),
    ]);
    assert!(
        opened_again.status.success(),
        "{}",
        String::from_utf8_lossy(&opened_again.stderr)
    );
    assert_eq!(String::from_utf8(opened_again.stdout).unwrap(), opened);
    // Again: every envelope is already under the active key, each kept as it was.
    let twice = dir.path().join("twice.jsonl");
    let done = reseal(&resealed, &twice);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        String::from_utf8_lossy(&done.stdout).starts_with("resealed 0 envelopes under "),
        "{}",
        String::from_utf8_lossy(&done.stdout)
    );
    assert_eq!(std::fs::read_to_string(&twice).unwrap(), resealed_text);
    // A tampered envelope: refused, naming the line and field, nothing written.
    let first_sealed = resealed_text
        .lines()
        .position(|l| serde_json::from_str::<Json>(l).unwrap()["recording_url"].is_string())
        .unwrap();
    let mut tampered: Vec<String> = resealed_text.lines().map(str::to_owned).collect();
    let mut record: Json = serde_json::from_str(&tampered[first_sealed]).unwrap();
    let envelope = record["recording_url"].as_str().unwrap().to_owned();
    let flipped = if envelope.ends_with('A') { "B" } else { "A" };
    record["recording_url"] = json!(format!("{}{flipped}", &envelope[..envelope.len() - 1]));
    tampered[first_sealed] = record.to_string();
    let tampered_path = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered_path, tampered.join("\n") + "\n").unwrap();
    let refused_path = dir.path().join("refused.jsonl");
    let failed = reseal(&tampered_path, &refused_path);
    assert_eq!(failed.status.code(), Some(1));
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(
        said.contains(&format!(
            "line {}, field `recording_url`: cannot reseal",
            first_sealed + 1
        )),
        "{said}"
    );
    assert!(!refused_path.exists());
    // Lines `decrypt` refuses are refused too (a lone surrogate in a key, nesting past 128
    // levels), and so is a sealed field holding anything but an envelope or null: nothing
    // written, never an envelope copied on unopened.
    let envelope_line = resealed_text.lines().nth(first_sealed).unwrap();
    let sealed_value = serde_json::from_str::<Json>(envelope_line).unwrap()["recording_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for (line, said) in [
        (
            format!(r#"{{"\ud800":1,"recording_url":"{sealed_value}"}}"#),
            "line 1: not a JSON object".to_owned(),
        ),
        (
            format!(r#"{{"recording_url":{deep}}}"#),
            "line 1: not a JSON object".to_owned(),
        ),
        (
            r#"{"recording_url":{"url":"https://example.com/plain"}}"#.to_owned(),
            "line 1, field `recording_url`: cannot reseal: envelope is malformed".to_owned(),
        ),
        (
            r#"{"recording_url":12345}"#.to_owned(),
            "line 1, field `recording_url`: cannot reseal: envelope is malformed".to_owned(),
        ),
    ] {
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, format!("{line}\n")).unwrap();
        let failed = reseal(&bad, &refused_path);
        assert_eq!(failed.status.code(), Some(1), "{line}");
        let err = String::from_utf8_lossy(&failed.stderr);
        assert!(err.contains(&said), "{line}: {err}");
        assert!(!err.contains("example.com"), "{err}");
        assert!(!refused_path.exists());
    }
    // A bad line 3: nothing written, the earlier output untouched.
    let mut bad = lines.clone();
    bad[2] = r#"{"event_id":"x","imsi":"510011234567890"}"#.to_owned();
    std::fs::write(&input, bad.join("\n")).unwrap();
    let failed = run(&strs(&args(&input)).split('\u{0}').collect::<Vec<_>>());
    assert_eq!(failed.status.code(), Some(1));
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(
        said.contains("line 3:") && said.contains("a key that no rule names"),
        "{said}"
    );
    assert!(
        !said.contains("imsi") && !said.contains("510011234567890"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), written);
    // An Avro pipeline is not named by --pipeline.
    let shipped = common::repo().join("config/pipeline.toml");
    let wrong = run(&[
        "transform",
        "--config",
        shipped.to_str().unwrap(),
        "--pipeline",
        "calls",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(wrong.status.code(), Some(1));
}

/// The worker against a real broker (Tansu): every JSON record published sanitized to the
/// json pipeline's topic, the record key tokenized, nothing raw; records that are not JSON,
/// or carry a key without a rule, dead-lettered sealed with their reason; metrics count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_publishes_json_and_dead_letters_the_rest() {
    let brokers = common::kafka::tansu();
    let topics = common::kafka::Topics::unique("json");
    topics.create(&brokers, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), |t| {
        t.replace("\"sdk.calls.raw\"", &format!("{:?}", topics.raw))
            .replace("\"sdk.calls.sanitized\"", &format!("{:?}", topics.calls))
            .replace("\"sdk.dlq\"", &format!("{:?}", topics.dlq))
            .replace("\"127.0.0.1:9092\"", &format!("{brokers:?}"))
            .replace("\"pseudonymizer-json\"", &format!("{:?}", topics.group))
    });
    let config = Config::load(&path).unwrap();

    const EVENTS: u64 = 500;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut raw_values: Vec<String> = Vec::new();
    let mut ids = HashSet::new();
    for seed in 0..EVENTS {
        let (_, event) = call_as_json(seed);
        for field in [
            "caller",
            "callee",
            "caller_ip",
            "callee_ip",
            "call_id",
            "recording_url",
        ] {
            // Short values (the generator's junk callers: "", "unknown", which a derived
            // number type also says) would be found in any record.
            if let Some(text) = event[field].as_str().filter(|t| t.len() >= 8) {
                raw_values.push(text.to_owned());
            }
        }
        ids.insert(event["event_id"].as_str().unwrap().to_owned());
        let key = event["caller"].as_str().unwrap_or("none").to_owned();
        let payload = event.to_string();
        producer
            .send(
                FutureRecord::to(&topics.raw).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let poison: &[(&[u8], &str)] = &[
        (
            b"{\"event_id\":\"p1\",\"imsi\":\"510011234567890\"}",
            "unclassified-field",
        ),
        (
            b"{\"event_id\":\"p2\",\"caller\":true}",
            "unclassified-field",
        ),
        (b"not json at all", "corrupt-json"),
        (b"{\"event_id\":\"p3\",\"event_id\":\"p3\"}", "corrupt-json"),
    ];
    for (payload, _) in poison {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(&topics.raw).payload(*payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let metrics = Metrics::new();
    let (stop, worker) = common::kafka::spawn_worker(&config, metrics.clone());
    let reader = common::kafka::reader(&brokers, &topics, false);
    let keys = common::active(&common::engine());
    let pkey = keys.pseudonym.as_deref().unwrap();
    let (published, dead) =
        common::kafka::read_counts(&reader, &topics, EVENTS as usize, poison.len());
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    let mut got_ids = HashSet::new();
    for message in &published {
        let payload = message.payload().unwrap();
        let text = std::str::from_utf8(payload).unwrap();
        for raw in &raw_values {
            assert!(
                !text.contains(raw.as_str()),
                "a raw value was published: {raw:?} in {text}"
            );
        }
        let value: Json = serde_json::from_str(text).unwrap();
        got_ids.insert(value["event_id"].as_str().unwrap().to_owned());
        // The key is the caller's token, as in its field.
        let key = std::str::from_utf8(message.key().unwrap()).unwrap();
        assert_eq!(json!(key), value["caller"]);
        assert!(key.starts_with(&format!("{}:", pkey.id())));
        assert!(message
            .headers()
            .is_none_or(|h| h.iter().all(|h| h.key != "pseudonymizer.schema")));
    }
    assert_eq!(got_ids, ids, "every event published once");
    assert_eq!(published.len() as u64, EVENTS);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            let h = m.headers().unwrap();
            let reason = h
                .iter()
                .find(|h| h.key == "dlq.reason")
                .unwrap()
                .value
                .unwrap();
            // Sealed: the raw record is not in the dead letter.
            assert!(!m
                .payload()
                .unwrap()
                .windows(15)
                .any(|w| w == b"510011234567890"));
            String::from_utf8(reason.to_vec()).unwrap()
        })
        .collect();
    reasons.sort();
    let mut wanted: Vec<String> = poison.iter().map(|(_, r)| r.to_string()).collect();
    wanted.sort();
    assert_eq!(reasons, wanted);
    let page = metrics.render();
    assert!(
        page.contains("pseudonymizer_records_dead_lettered_total{reason=\"corrupt-json\"} 2"),
        "{page}"
    );
    assert!(
        page.contains("pseudonymizer_records_dead_lettered_total{reason=\"unclassified-field\"} 2")
    );

    // The producer's new key gets a rule: `dlq replay` sends the curable dead letters back to
    // their topic (poison stays), and the restarted worker publishes the record it now
    // classifies and dead-letters again the one it still cannot.
    let said = common::kafka::drop_field_and_replay(&path, "imsi");
    assert!(said.starts_with("replayed 2 dead letters"), "{said}");
    assert!(said.contains("2 kept"), "{said}");
    let config = Config::load(&path).unwrap();
    let (stop, worker) = common::kafka::spawn_worker(&config, Metrics::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut replayed = Vec::new();
    let mut dead_again = 0;
    while replayed.is_empty() || dead_again == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after the replay"
        );
        let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        if message.topic() == topics.dlq {
            dead_again += 1;
        } else {
            replayed.push(message.detach());
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    while let Some(Ok(message)) = reader.poll(Duration::from_millis(500)) {
        if message.topic() == topics.dlq {
            dead_again += 1;
        } else {
            replayed.push(message.detach());
        }
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let value: Json = serde_json::from_slice(replayed[0].payload().unwrap()).unwrap();
    assert_eq!(
        value,
        json!({"event_id": "p1"}),
        "imsi dropped by its new rule"
    );
    assert_eq!((replayed.len(), dead_again), (1, 1));
}

/// A withheld person's record, as the Avro path writes it: unlinked tokens for them, null
/// derived attributes and null sealed values (even when the person is met after the sealed
/// field), everyone else's tokens unchanged; and a record without them is untouched.
#[test]
fn a_withheld_persons_record() {
    use pseudonymizer::subjects::{SubjectClasses, SubjectPolicy, SubjectView};
    use pseudonymizer::token::TokenClass;
    let (_, engine) = json_engine(|t| t);
    let (_, plan) = &engine.json_plans()[0];
    let keys = common::active(&engine);
    let (key, table) = common::erased(TokenClass::Phone, "+6281234567890");
    let classes = SubjectClasses::parse(&["phone".to_owned()]).unwrap();
    let view = SubjectView {
        key: &key,
        table: &table,
        classes: &classes,
    };
    let run = |input: &str| {
        let gate = view.gate(SubjectPolicy::default());
        let mut out = Vec::new();
        engine
            .transform_json(plan, &keys, Some(&gate), input.as_bytes(), &mut out)
            .unwrap();
        (serde_json::from_slice::<Json>(&out).unwrap(), gate.met())
    };
    // The sealed field comes first: the walk meets the person after sealing it, and walks again.
    let (out, met) = run(
        r#"{"recording_url":"https://rec/1","callee":"+6591234567","caller":"+6281234567890"}"#,
    );
    assert!(met);
    assert_eq!(out["recording_url"], Json::Null);
    assert_eq!(out["caller_region"], Json::Null);
    assert_eq!(out["caller_number_type"], Json::Null);
    assert_eq!(out["callee_region"], json!("SG"));
    let pkey = keys.pseudonym.as_deref().unwrap();
    let linked = |value: &str| {
        let phone = pseudonymizer::phone::PhoneCanon::new("ID").unwrap();
        let (class, canonical) = phone.canonical_in(phone.region(), value);
        json!(pseudonymizer::token::token(pkey, class, canonical.as_bytes()).as_str())
    };
    assert_eq!(out["callee"], linked("+6591234567"));
    assert_ne!(out["caller"], linked("+6281234567890"));
    let (again, _) = run(r#"{"caller":"+6281234567890"}"#);
    assert_ne!(
        again["caller"], out["caller"],
        "an unlinked token matches nothing"
    );
    let (other, met) = run(r#"{"recording_url":"https://rec/1","caller":"+6591234567"}"#);
    assert!(!met);
    assert!(other["recording_url"].is_string());
    assert_eq!(other["caller"], linked("+6591234567"));
}

/// `check` and `explain` show a json pipeline: its rules, and what made-up values become
/// through the real transform (never a raw value of a rewritten field).
#[test]
fn check_and_explain_show_json_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), |t| t);
    let bin = env!("CARGO_BIN_EXE_pseudonymizer");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let config = config.to_str().unwrap();
    let said = run(&["check", "--config", config]);
    assert!(
        said.contains("[sdk-calls] json: 19 rules, keys without a rule dead-lettered, ok"),
        "{said}"
    );
    let document: Json =
        serde_json::from_str(&run(&["check", "--config", config, "--format", "json"])).unwrap();
    assert_eq!(
        document["pipelines"],
        json!([{"format": "json", "pipeline": "sdk-calls", "rules": 19}])
    );
    let explained: Json =
        serde_json::from_str(&run(&["explain", "--config", config, "--format", "json"])).unwrap();
    let pipeline = &explained["pipelines"][0];
    assert_eq!(pipeline["name"], "sdk-calls");
    let fields = pipeline["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 19);
    let row = |path: &str| fields.iter().find(|f| f["path"] == path).unwrap();
    let caller = row("caller");
    assert_eq!(
        caller["rule"],
        "phone, derive region, calling_code, number_type"
    );
    let becomes = caller["becomes"].as_str().unwrap();
    assert!(becomes.starts_with("\"p-test-1:"), "{becomes}");
    assert!(
        becomes.contains("caller_region: \"ID\"") && !becomes.contains("6281234567890"),
        "{becomes}"
    );
    let sealed = row("recording_url")["becomes"].as_str().unwrap();
    let envelope = base64::engine::general_purpose::STANDARD
        .decode(sealed.trim_matches('"'))
        .unwrap();
    assert_eq!(
        common::keyset().open("recording_url", &envelope).unwrap(),
        b"sample content"
    );
    assert_eq!(row("device.os")["becomes"], "\"sample text\"");
    let outputs: Vec<&str> = pipeline["output_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(outputs.contains(&"callee_number_type") && outputs.contains(&"device.device_id"));
}

/// `[pipeline.risk]` on a json pipeline: records are grouped by their output keys' values,
/// derived ones included, as for Avro.
#[test]
fn risk_is_measured_on_json_output() {
    let (config, engine) = json_engine(|t| {
        t.replace(
            "[kafka]",
            "[pipeline.risk]\nquasi_identifiers = [\"location.country\", \"callee_region\"]\nk = 3\nwindow = 100\n\n[kafka]",
        )
    });
    let risk = config.pipeline[0].risk.as_ref().unwrap();
    let mut estimate = pseudonymizer::risk::PipelineRisk::new(
        risk.quasi_identifiers.clone(),
        risk.k.unwrap(),
        risk.window.unwrap(),
    );
    let record = |country: &str, callee: &str| {
        json!({"event_id": "e", "callee": callee, "location": {"country": country, "cell_id": "c"}})
            .to_string()
    };
    for _ in 0..5 {
        estimate.observe_json(&run(&engine, record("ID", "+6281234567890").as_bytes()).unwrap());
    }
    assert_eq!(estimate.window.below_k(), 0);
    // Same country, a Singapore callee: a group of one.
    estimate.observe_json(&run(&engine, record("ID", "+6591234567").as_bytes()).unwrap());
    assert_eq!(
        (estimate.window.records(), estimate.window.below_k()),
        (6, 1)
    );
    // A record without the keys is its own group too (absent is a value).
    estimate.observe_json(&run(&engine, br#"{"event_id":"x"}"#).unwrap());
    assert_eq!(estimate.window.below_k(), 2);
}
