//! JSON with a JSON Schema (`format = "json-schema"`): the derived output schema says what is
//! published; a schema the rules do not classify is refused at start, naming each property;
//! and, against a real broker and the suite's registry, records written by Confluent's own
//! JSON Schema serializer (Python confluent-kafka) are published framed with the derived
//! schema's id, read back and validated by Confluent's own deserializer, equal to what the
//! engine makes of them, while a producer's new version with a property without a rule is
//! dead-lettered whole.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::registry::TestRegistry;
use pseudonymizer::config::Config;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::metrics::Metrics;
use pseudonymizer::transform::Engine;
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::{json, Value as Json};

/// The shipped JSON Schema of call events.
fn call_schema() -> Json {
    let text =
        std::fs::read_to_string(common::repo().join("schemas/comms.v1.CallEvent.schema.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The example json-schema config in `dir` (its keyring and audit log there, its schema
/// written there as `schema` gives it), with `edit` applied to its text.
fn config_in(
    dir: &std::path::Path,
    schema: &Json,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let keyring = common::write_keyring(dir);
    let schema_path = dir.join("calls.schema.json");
    std::fs::write(&schema_path, schema.to_string()).unwrap();
    let text = std::fs::read_to_string(common::repo().join("config/json-schema-pipeline.toml"))
        .unwrap()
        .replace(
            "\"../keys/keyring.json\"",
            &format!("{:?}", keyring.display().to_string()),
        )
        .replace(
            "\"../var/audit.log\"",
            &format!("{:?}", dir.join("audit.log").display().to_string()),
        )
        .replace(
            "\"../schemas/comms.v1.CallEvent.schema.json\"",
            &format!("{:?}", schema_path.display().to_string()),
        );
    let path = dir.join("json-schema.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The config's problems (its load or its engine refused), as one text; `None` if accepted.
fn refusal(schema: &Json, edit: impl Fn(String) -> String) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), schema, edit);
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => return Some(format!("{e:#}")),
    };
    match Engine::from_config(&config) {
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    }
}

/// Without the `[registry]` (so a rule naming no property is a typo, as for Avro).
fn without_registry(text: String) -> String {
    text.split("[registry]").next().unwrap().to_owned()
}

/// A generated call event as a JSON producer writes it.
fn call_as_json(seed: u64) -> Json {
    Json::try_from(Generator::new(seed).event(Kind::Call)).unwrap()
}

/// The derived schema: tokens and sealed values as strings (sealed ones nullable, for a
/// withheld person, and base64), derived attributes added, kept values as the producer
/// described them, the title moved to the sanitized namespace, and no raw-value hints
/// (formats, patterns, examples) carried onto rewritten values.
#[test]
fn the_derived_schema_says_what_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut schema = call_schema();
    schema["properties"]["caller"]["examples"] = json!(["+6281234567890"]);
    schema["properties"]["caller"]["pattern"] = json!("^\\+?[0-9]+$");
    let config = Config::load(&config_in(dir.path(), &schema, without_registry)).unwrap();
    let engine = Engine::from_config(&config).unwrap();
    let output = &engine
        .json_schema(0)
        .expect("a json-schema pipeline")
        .output;
    assert_eq!(output["title"], "comms.sanitized.v1.CallEvent");
    let properties = &output["properties"];
    assert_eq!(
        properties["caller"],
        json!({"description": "E.164 or national number.", "type": "string"})
    );
    assert!(!output.to_string().contains("6281234567890"));
    assert_eq!(
        properties["caller_calling_code"]["type"],
        json!(["integer", "null"])
    );
    assert_eq!(
        properties["callee_number_type"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(
        properties["recording_url"],
        json!({"type": ["string", "null"], "contentEncoding": "base64"})
    );
    assert_eq!(properties["caller_ip"], json!({"type": ["string", "null"]}));
    assert_eq!(
        properties["duration_ms"],
        json!({"type": "integer", "minimum": 0})
    );
    // The $ref'd device is inlined, its id a token; the location keeps its shape.
    assert_eq!(properties["device"]["type"], json!(["object", "null"]));
    assert_eq!(
        properties["device"]["properties"]["device_id"],
        json!({"type": "string"})
    );
    assert_eq!(properties["location"]["required"], json!(["country"]));
    assert_eq!(properties["location"]["additionalProperties"], json!(false));
    assert!(
        output.get("$defs").is_none(),
        "no kept value refers to them"
    );

    // What the output carries of the input's definitions and object keywords: only the
    // definitions kept values refer to, and only text (a raw number in an example, bounds on
    // keys that dropped or derived keys would break, are not carried over).
    let mut schema = call_schema();
    schema["$defs"]["Msisdn"] = json!({"type": "string", "examples": ["+6281234567890"]});
    schema["$defs"]["Codec"] = json!({"type": ["string", "null"]});
    schema["properties"]["caller"] = json!({"$ref": "#/$defs/Msisdn"});
    schema["properties"]["codec"] = json!({"$ref": "#/$defs/Codec"});
    schema["examples"] = json!([{"caller": "+6281234567890"}]);
    schema["x-sample"] = json!({"caller": "+6281234567890"});
    schema["minProperties"] = json!(3);
    schema["dependentRequired"] = json!({"codec": ["duration_ms"]});
    let config = Config::load(&config_in(dir.path(), &schema, without_registry)).unwrap();
    let engine = Engine::from_config(&config).unwrap();
    let output = &engine.json_schema(0).unwrap().output;
    assert!(!output.to_string().contains("6281234567890"), "{output}");
    assert_eq!(
        output["$defs"],
        json!({"Codec": {"type": ["string", "null"]}})
    );
    for dropped in ["minProperties", "dependentRequired", "x-sample", "examples"] {
        assert!(output.get(dropped).is_none(), "{dropped} carried over");
    }

    // A dropped property leaves the output and its `required`.
    let config = Config::load(&config_in(dir.path(), &call_schema(), |t| {
        without_registry(t).replace("duration_ms = \"keep\"", "duration_ms = \"drop\"")
    }))
    .unwrap();
    let engine = Engine::from_config(&config).unwrap();
    let output = &engine.json_schema(0).unwrap().output;
    assert!(output["properties"].get("duration_ms").is_none());
    assert!(!output["required"]
        .as_array()
        .unwrap()
        .contains(&json!("duration_ms")));

    // `schema derive` writes it.
    let out = dir.path().join("derived");
    let ran = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["schema", "derive", "--config"])
        .arg(config_in(dir.path(), &call_schema(), without_registry))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let written: Json = serde_json::from_slice(
        &std::fs::read(out.join("comms.sanitized.v1.CallEvent.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["title"], "comms.sanitized.v1.CallEvent");

    // `explain` shows the schema's types on both sides.
    let ran = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["explain", "--config"])
        .arg(config_in(dir.path(), &call_schema(), without_registry))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        said.contains("pipeline sdk-calls (JSON Schema comms.v1.CallEvent)"),
        "{said}"
    );
    assert!(
        said.contains("output schema JSON Schema comms.sanitized.v1.CallEvent"),
        "{said}"
    );
    assert!(
        said.contains("caller_calling_code: [integer,null], derived"),
        "{said}"
    );
    assert!(said.contains("device.device_id    string"), "{said}");
}

/// What the config refuses at start, each naming its path: a property without a rule, a type
/// its rule does not take, what the worker does not read where a rule rewrites or descends, a
/// rule naming no property (without a registry), a schema without a title, and two pipelines
/// with one title.
#[test]
fn schemas_the_rules_do_not_classify_are_refused() {
    let with = |edit: &dyn Fn(&mut Json)| {
        let mut schema = call_schema();
        edit(&mut schema);
        schema
    };
    let cases: Vec<(Json, &str)> = vec![
        (
            with(&|s| s["properties"]["imsi"] = json!({"type": "string"})),
            "imsi: a property without a rule",
        ),
        (
            with(&|s| s["$defs"]["Device"]["properties"]["imei"] = json!({"type": "string"})),
            "device.imei: a property without a rule",
        ),
        (
            with(&|s| s["properties"]["recording_url"] = json!({"type": ["integer", "null"]})),
            "recording_url: its schema allows integer, which encrypt does not take",
        ),
        (
            with(&|s| s["properties"]["caller"] = json!({"type": ["string", "boolean"]})),
            "caller: its schema allows boolean, which phone does not take",
        ),
        (
            with(&|s| s["properties"]["caller"] = json!({})),
            "caller: its schema allows any value: give it a type",
        ),
        (
            with(&|s| {
                s["properties"]["caller"] = json!({"allOf": [{"type": "string"}, {"minLength": 3}]})
            }),
            "caller: its schema uses allOf",
        ),
        (
            with(&|s| {
                s["properties"]["device"] = json!({"$ref": "https://example.com/device.json"})
            }),
            "device: a $ref that is not to this schema's own $defs",
        ),
        (
            with(&|s| s["properties"]["location"] = json!({"type": "string"})),
            "location: rules name its keys, so it is an object",
        ),
        (
            with(&|s| {
                s["properties"].as_object_mut().unwrap().remove("codec");
            }),
            "codec: a rule names a property the schema does not have",
        ),
        (
            with(&|s| {
                s.as_object_mut().unwrap().remove("title");
            }),
            "it has no \"title\"",
        ),
        (with(&|s| s["title"] = json!("comms.v1.")), "is not a name"),
        (with(&|s| s["title"] = json!(5)), "is not a string"),
        // A union that refers back to itself ends (it overflowed the stack once).
        (
            with(&|s| {
                s["properties"]["caller"] = json!({"$ref": "#/$defs/A"});
                s["$defs"]["A"] = json!({"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]});
            }),
            "caller: unions nested deeper than the worker reads",
        ),
        (
            with(&|s| {
                s["properties"]["caller"] =
                    json!({"anyOf": [{"$ref": "#/properties/caller"}, {"type": "null"}]})
            }),
            "caller: ",
        ),
        // Keywords beside a $ref would be a second, unread description of the same keys.
        (
            with(&|s| {
                s["properties"]["device"] = json!({
                    "$ref": "#/$defs/Device",
                    "properties": {"imei": {"type": "string"}}
                })
            }),
            "device: keywords beside a $ref",
        ),
        (
            with(&|s| s["properties"]["caller"] = json!({"type": []})),
            "caller: its type is not a type name",
        ),
        (
            with(&|s| s["properties"]["codec"] = json!({"type": ["object", "null"]})),
            "codec: its schema allows an object, which keep does not take",
        ),
        (
            with(&|s| s["properties"]["codec"] = json!({"$ref": "#/properties/caller"})),
            "codec: a kept value's $ref that is not to an entry",
        ),
        (
            with(&|s| s["properties"]["device.os"] = json!({"type": "string"})),
            "device.os: a property whose name has a '.'",
        ),
        (
            with(&|s| s["properties"]["\u{1b}[31mx"] = json!({"type": "string"})),
            "\\u{1b}[31mx: a property without a rule",
        ),
    ];
    for (schema, wanted) in &cases {
        let said = refusal(schema, without_registry)
            .unwrap_or_else(|| panic!("accepted; wanted {wanted:?}"));
        assert!(said.contains(wanted), "wanted {wanted:?} in: {said}");
    }
    // time-truncate and bucket take integer literals only: a schema `number` (fractions,
    // exponents) is refused, `integer` accepted.
    let truncated = |t: String| {
        without_registry(t).replace(
            "occurred_at = \"keep\"",
            "occurred_at = { action = \"time-truncate\", unit = \"hour\" }",
        )
    };
    let said = refusal(
        &with(&|s| s["properties"]["occurred_at"] = json!({"type": "number"})),
        truncated,
    )
    .expect("refused");
    assert!(
        said.contains("occurred_at: its schema allows number, which time-truncate does not take (it takes integer)"),
        "{said}"
    );
    assert_eq!(refusal(&call_schema(), truncated), None);
    // With a registry a rule may name a property only other versions have.
    let fewer = with(&|s| {
        s["properties"].as_object_mut().unwrap().remove("codec");
    });
    assert_eq!(refusal(&fewer, |t| t), None);
    // `unknown = "drop"`: a property without a rule is left out, not refused.
    let more = with(&|s| s["properties"]["imsi"] = json!({"type": "string"}));
    assert_eq!(
        refusal(&more, |t| without_registry(t).replace(
            "key_class = \"phone\"",
            "key_class = \"phone\"\nunknown = \"drop\""
        )),
        None
    );
    // Two pipelines, one title.
    let said = refusal(&call_schema(), |t| {
        let text = without_registry(t);
        let second = text
            .split("[[pipeline]]")
            .nth(1)
            .unwrap()
            .split("[kafka]")
            .next()
            .unwrap()
            .replace("name = \"sdk-calls\"", "name = \"other\"")
            .replace("\"sdk.calls.raw\"", "\"other.raw\"")
            .replace("\"sdk.calls.sanitized\"", "\"other.sanitized\"");
        text.replace("[kafka]", &format!("[[pipeline]]{second}[kafka]"))
    })
    .expect("refused");
    assert!(said.contains("title"), "{said}");
    // Two titles of one last part (`comms.v1.CallEvent`, `other.v1.CallEvent`): one output
    // title, `comms.sanitized.v1.CallEvent`, derived differently (another description).
    let other =
        std::env::temp_dir().join(format!("other-title-{}.schema.json", std::process::id()));
    let mut other_schema = call_schema();
    other_schema["title"] = json!("other.v1.CallEvent");
    other_schema["description"] = json!("Calls of another platform.");
    std::fs::write(&other, other_schema.to_string()).unwrap();
    let said = refusal(&call_schema(), |t| {
        let text = without_registry(t);
        let second = text
            .split("[[pipeline]]")
            .nth(1)
            .unwrap()
            .split("[kafka]")
            .next()
            .unwrap()
            .replace("name = \"sdk-calls\"", "name = \"other\"")
            .replace("\"sdk.calls.raw\"", "\"other.raw\"")
            .replace("\"sdk.calls.sanitized\"", "\"other.sanitized\"");
        let second = with_input_schema(&second, &other);
        text.replace("[kafka]", &format!("[[pipeline]]{second}[kafka]"))
    });
    std::fs::remove_file(&other).unwrap();
    let said = said.expect("refused");
    assert!(
        said.contains("[other] its output schema's title \"comms.sanitized.v1.CallEvent\" is also another json-schema pipeline's"),
        "{said}"
    );
}

/// `block` with its `input_schema` replaced by `path`.
fn with_input_schema(block: &str, path: &std::path::Path) -> String {
    block
        .lines()
        .map(|line| match line.starts_with("input_schema ") {
            true => format!("input_schema = {:?}", path.display().to_string()),
            false => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// With a registry, a pinned `output_schema_id` is verified at start, as for Avro: the derived
/// JSON Schema not registered, or registered under another id, and `run` refuses to start,
/// saying what to do; `schema register` registers it (type JSON).
#[test]
fn a_pinned_output_schema_id_is_verified_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let path = config_in(dir.path(), &call_schema(), |t| {
        t.replace(
            "\"http://127.0.0.1:8081\"",
            &format!("{:?}", registry.url()),
        )
        .replace(
            "key_class = \"phone\"\n",
            "key_class = \"phone\"\ninput_schema_id = 1\noutput_schema_id = 101\n",
        )
    });
    let run = |command: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
            .args(command)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), said)
    };
    let (ok, said) = run(&["run"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("output_schema_id 101 is pinned, but the derived schema is not registered under comms.sanitized.v1.CallEvent"),
        "{said}"
    );
    let (ok, said) = run(&["schema", "register"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("derived from the local JSON Schema"),
        "{said}"
    );
    let registered = registry.versions("comms.sanitized.v1.CallEvent");
    assert_eq!(registered.len(), 1);
    let schema: Json = serde_json::from_str(&registry.schema(registered[0]).unwrap()).unwrap();
    assert_eq!(schema["title"], "comms.sanitized.v1.CallEvent");
    let (ok, said) = run(&["run"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!(
            "registered under comms.sanitized.v1.CallEvent as id {}: pin {}",
            registered[0], registered[0]
        )),
        "{said}"
    );
}

/// Runs tests/python/confluent_json.py with the project's Python.
fn confluent(args: &[&str], stdin: &str) -> String {
    common::run_python_script("confluent_json.py", args, stdin)
}

/// End to end with Confluent's own serializers: version 1 of the schema, then a version 2
/// with a new property that has a rule (published), then a version 3 with one that has none
/// (every record of it dead-lettered, `unclassified-field`). What is published is framed with
/// the id of a derived schema the worker registered, passes Confluent's deserializer (which
/// validates each record against that schema), carries no raw value, and equals what the
/// engine makes of the same event (envelopes aside: each is sealed with a fresh nonce).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_serializers_on_both_sides() {
    let brokers = common::kafka::tansu();
    let registry = TestRegistry::start();
    let topics = common::kafka::Topics::unique("json-schema");
    topics.create(&brokers, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), &call_schema(), |t| {
        t.replace("\"sdk.calls.raw\"", &format!("{:?}", topics.raw))
            .replace("\"sdk.calls.sanitized\"", &format!("{:?}", topics.calls))
            .replace("\"sdk.dlq\"", &format!("{:?}", topics.dlq))
            .replace("\"127.0.0.1:9092\"", &format!("{brokers:?}"))
            .replace(
                "\"pseudonymizer-json-schema\"",
                &format!("{:?}", topics.group),
            )
            .replace(
                "\"http://127.0.0.1:8081\"",
                &format!("{:?}", registry.url()),
            )
            .replace("codec = \"keep\"", "codec = \"keep\"\nnetwork = \"keep\"")
            + "timeout_secs = 2\nmax_backoff_secs = 1\n"
    });
    let config = Config::load(&path).unwrap();
    let engine = Engine::from_config(&config).unwrap();

    // Three producer versions, each through Confluent's serializer (which validates).
    let v1 = call_schema();
    let mut v2 = call_schema();
    v2["properties"]["network"] = json!({"type": ["string", "null"]});
    let mut v3 = v2.clone();
    v3["properties"]["imsi"] = json!({"type": "string"});
    let mut events: Vec<Json> = Vec::new();
    let mut batches = Vec::new();
    for (version, schema, seeds) in [(1, &v1, 0..150u64), (2, &v2, 150..200), (3, &v3, 200..220)] {
        let mut lines = String::new();
        for seed in seeds {
            let mut event = call_as_json(seed);
            if version >= 2 {
                event["network"] = json!("LTE");
            }
            if version == 3 {
                event["imsi"] = json!(format!("5100112345{seed:05}"));
            }
            lines.push_str(&event.to_string());
            lines.push('\n');
            events.push(event);
        }
        let schema_path = dir.path().join(format!("v{version}.schema.json"));
        std::fs::write(&schema_path, schema.to_string()).unwrap();
        batches.push((schema_path, lines));
    }
    for (schema_path, lines) in &batches {
        confluent(
            &[
                "produce",
                &brokers,
                &topics.raw,
                &registry.url(),
                schema_path.to_str().unwrap(),
            ],
            lines,
        );
    }

    let metrics = Metrics::new();
    let (stop, worker) = common::kafka::spawn_worker(&config, metrics.clone());
    let reader = common::kafka::reader(&brokers, &topics, false);
    let (published, dead) = common::kafka::read_counts(&reader, &topics, 200, 20);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        reader.poll(Duration::from_secs(1)).is_none(),
        "nothing more than 200 published and 20 dead letters"
    );
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    // Dead letters: version 3's records, sealed, with their reason.
    for message in &dead {
        let headers = message.headers().unwrap();
        let reason = headers.iter().find(|h| h.key == "dlq.reason").unwrap();
        assert_eq!(reason.value, Some(&b"unclassified-field"[..]));
        assert!(!message
            .payload()
            .unwrap()
            .windows(10)
            .any(|w| w == b"5100112345"));
    }
    assert!(
        metrics
            .render()
            .contains("pseudonymizer_unclassified_fields{"),
        "the unclassified property is exported"
    );
    // Each published record names its input schema (the title) in `pseudonymizer.schema`.
    for message in &published {
        let headers = message.headers().expect("published records carry headers");
        let schema = headers.iter().find(|h| h.key == "pseudonymizer.schema");
        assert_eq!(
            schema.and_then(|h| h.value),
            Some(&b"comms.v1.CallEvent"[..])
        );
    }

    // Published: framed with derived schemas the worker registered under the output subject.
    let derived_ids: HashSet<u32> = published
        .iter()
        .map(|m| {
            let value = m.payload().unwrap();
            assert_eq!(value[0], 0, "Confluent framing");
            u32::from_be_bytes([value[1], value[2], value[3], value[4]])
        })
        .collect();
    let registered: HashSet<u32> = registry
        .versions("comms.sanitized.v1.CallEvent")
        .into_iter()
        .collect();
    assert_eq!(
        derived_ids.len(),
        2,
        "one derived schema per accepted version"
    );
    assert!(
        derived_ids.is_subset(&registered),
        "{derived_ids:?} ⊄ {registered:?}"
    );
    for id in &derived_ids {
        let schema: Json = serde_json::from_str(&registry.schema(*id).unwrap()).unwrap();
        assert_eq!(schema["title"], "comms.sanitized.v1.CallEvent");
    }

    // Read back by Confluent's deserializer, each record validated against its schema.
    let read = confluent(
        &["consume", &brokers, &topics.calls, &registry.url(), "200"],
        "",
    );
    let keys = common::active(&engine);
    let (_, plan) = &engine.json_plans()[0];
    let mut expected = std::collections::HashMap::new();
    for event in &events[..200] {
        let mut out = Vec::new();
        engine
            .transform_json(plan, &keys, None, event.to_string().as_bytes(), &mut out)
            .unwrap();
        let mut value: Json = serde_json::from_slice(&out).unwrap();
        let sealed = value["recording_url"].take();
        expected.insert(
            value["event_id"].as_str().unwrap().to_owned(),
            (value, sealed),
        );
    }
    let mut seen = HashSet::new();
    for line in read.lines() {
        let record: Json = serde_json::from_str(line).unwrap();
        for event in &events {
            for field in ["caller", "callee", "call_id"] {
                if let Some(raw) = event[field].as_str().filter(|t| t.len() >= 8) {
                    assert!(!line.contains(raw), "a raw value was published: {raw}");
                }
            }
        }
        let mut value = record["value"].clone();
        let sealed = value["recording_url"].take();
        let id = value["event_id"].as_str().unwrap().to_owned();
        let (want, want_sealed) = &expected[&id];
        assert_eq!(&value, want, "as the engine makes it");
        assert_eq!(sealed.is_null(), want_sealed.is_null());
        assert_eq!(
            record["key"], value["caller"],
            "the key is the caller's token"
        );
        seen.insert(id);
    }
    assert_eq!(seen.len(), 200, "every accepted record read back once");

    // Version 3's new property gets a rule: `dlq replay` opens the sealed dead letters and
    // sends the producer's framed records back to the input topic, and the restarted worker
    // publishes every one of them under a derived schema without the dropped property.
    let replayed = common::kafka::replayed_after_drop(&path, "imsi", &reader, &topics, 20).await;
    for message in &replayed {
        let value = message.payload().unwrap();
        let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        let schema = registry.schema(id).unwrap();
        assert!(
            schema.contains("network") && !schema.contains("imsi"),
            "{schema}"
        );
        let record: Json = serde_json::from_slice(&value[5..]).unwrap();
        assert_eq!(record["network"], "LTE");
        assert!(record.get("imsi").is_none());
    }
}
