//! Protobuf (`format = "protobuf"`): the derived `.proto` says what is published; a message the
//! rules do not classify is refused at start, naming each field; records are walked through
//! their JSON mapping and come out as messages of the derived schema, equal to what the JSON
//! walk makes of the same event; and, against a real broker and the suite's registry, records
//! written by Confluent's own Protobuf serializer (Python confluent-kafka, its imports
//! registered as references) are published framed with the derived schema's id and read back
//! by Confluent's own deserializer, while a producer's new version with a field without a rule
//! is dead-lettered whole.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::registry::TestRegistry;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use pseudonymizer::config::Config;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::metrics::Metrics;
use pseudonymizer::transform::Engine;
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::{json, Value as Json};

/// The example protobuf config in `dir`: its keyring and audit log there, the shipped
/// `.proto` files copied to `dir/proto` (then `edit_proto` applied to call_event.proto), and
/// `edit` applied to the config text.
fn config_in(
    dir: &Path,
    edit_proto: impl Fn(String) -> String,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let keyring = common::write_keyring(dir);
    let protos = dir.join("proto");
    std::fs::create_dir_all(&protos).unwrap();
    // Files an import may try: not a .proto, a link out of the directory, a proto2 file.
    std::fs::write(protos.join("secret.txt"), "sk_live_not_a_schema").unwrap();
    std::os::unix::fs::symlink(protos.join("device.proto"), protos.join("linked.proto")).unwrap();
    std::fs::write(
        protos.join("legacy.proto"),
        "syntax = \"proto2\";\npackage legacy;\nmessage Old { optional int32 retries = 2 [default = 3]; }\n",
    )
    .unwrap();
    for name in ["call_event.proto", "device.proto"] {
        let text =
            std::fs::read_to_string(common::repo().join("schemas/proto").join(name)).unwrap();
        let text = if name == "call_event.proto" {
            edit_proto(text)
        } else {
            text
        };
        std::fs::write(protos.join(name), text).unwrap();
    }
    let text = std::fs::read_to_string(common::repo().join("config/protobuf-pipeline.toml"))
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
            "\"../schemas/proto/call_event.proto\"",
            &format!(
                "{:?}",
                protos.join("call_event.proto").display().to_string()
            ),
        );
    let path = dir.join("protobuf.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn same(text: String) -> String {
    text
}

/// Without the `[registry]` (so a rule naming no field is a typo, as for Avro).
fn without_registry(text: String) -> String {
    text.split("[registry]").next().unwrap().to_owned()
}

/// The config's problems (its load or its engine refused), as one text; `None` if accepted.
fn refusal(
    edit_proto: impl Fn(String) -> String,
    edit: impl Fn(String) -> String,
) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), edit_proto, edit);
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => return Some(format!("{e:#}")),
    };
    match Engine::from_config(&config) {
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    }
}

/// A generated call as the proto's JSON mapping writes it: the JSON event, with a forwarding
/// list, a receive time and a oneof member.
fn call_event(seed: u64) -> Json {
    let mut event = Json::try_from(Generator::new(seed).event(Kind::Call)).unwrap();
    event["forwarded_to"] = json!([format!("+628123{seed:06}"), format!("0812-77{seed:05}")]);
    event["received_at"] = json!(format!("2026-12-07T10:{:02}:{:02}Z", seed % 60, seed % 59));
    if seed.is_multiple_of(2) {
        event["hangup_cause"] = json!("NORMAL_CLEARING");
    } else {
        event["sip_code"] = json!(486);
    }
    event
}

/// `event` (the JSON mapping) as a message of `descriptor`, encoded.
fn encode(descriptor: &MessageDescriptor, event: &Json) -> Vec<u8> {
    DynamicMessage::deserialize(descriptor.clone(), event)
        .unwrap_or_else(|e| panic!("{event} is a {}: {e}", descriptor.full_name()))
        .encode_to_vec()
}

/// A message of `descriptor` as its JSON mapping, as the worker reads it (proto field names,
/// 64-bit integers as numbers).
fn decode(descriptor: &MessageDescriptor, bytes: &[u8]) -> Json {
    let message = DynamicMessage::decode(descriptor.clone(), bytes).unwrap();
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap()
}

/// The derived `.proto`: tokens as strings, sealed values as `BytesValue`, derived attributes
/// at numbers of their own, kept values (enums, well-known types, the oneof) as they were,
/// the message moved to the sanitized package; `schema derive` writes it, `explain` shows the
/// types of both sides and `check` names the message.
#[test]
fn the_derived_proto_says_what_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), same, |t| {
        without_registry(t).replace(
            "key_class = \"phone\"\n",
            "key_class = \"phone\"\ninput_schema_id = 1\noutput_schema_id = 101\n",
        )
    });
    let config = Config::load(&path).unwrap();
    let engine = Engine::from_config(&config).unwrap();
    let contract = engine.proto(0).expect("a protobuf pipeline");
    assert_eq!(contract.input.message.full_name(), "comms.v1.CallEvent");
    assert_eq!(contract.output_name(), "comms.sanitized.v1.CallEvent");
    assert_eq!(contract.indexes, [0]);
    let text = &contract.output_text;
    for line in [
        "package comms.sanitized.v1;",
        "import \"google/protobuf/timestamp.proto\";",
        "  optional string caller = 6;",
        "  optional string call_id = 2;",
        "  Direction direction = 4;",
        "  .google.protobuf.StringValue caller_ip = 8;",
        "  .google.protobuf.BytesValue recording_url = 14;",
        "  repeated string forwarded_to = 15;",
        "  .google.protobuf.Timestamp received_at = 16;",
        "  oneof outcome {",
        "    int32 sip_code = 18;",
        "  optional int64 caller_calling_code = 100000049;",
        "  message Device {",
        "    optional string device_id = 1;",
        "    optional string cell_id = 2;",
        "    INBOUND = 1;",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    // No import of the writer's own files: Device is nested in the output.
    assert!(!text.contains("device.proto"), "{text}");

    // `schema derive` writes it.
    let out = dir.path().join("derived");
    let ran = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["schema", "derive", "--config"])
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let written = std::fs::read_to_string(out.join("comms.sanitized.v1.CallEvent.proto")).unwrap();
    assert_eq!(&written, text);

    // `explain` shows both sides' types; `check --format json` names the message.
    let ran = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["explain", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        said.contains("pipeline grpc-calls (Protobuf comms.v1.CallEvent)"),
        "{said}"
    );
    assert!(
        said.contains("output schema Protobuf comms.sanitized.v1.CallEvent"),
        "{said}"
    );
    assert!(
        said.contains("recording_url: google.protobuf.BytesValue"),
        "{said}"
    );
    assert!(said.contains("forwarded_to: repeated string"), "{said}");
    let ran = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["check", "--format", "json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let checked: Json = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(checked["ok"], true, "{checked}");
    assert_eq!(checked["pipelines"][0]["format"], "protobuf");
    assert_eq!(checked["pipelines"][0]["schema"], "comms.v1.CallEvent");
}

/// An edit of a file's text.
type Edit<'a> = Box<dyn Fn(String) -> String + 'a>;

/// What the config refuses at start, each naming its path.
#[test]
fn messages_the_rules_do_not_classify_are_refused() {
    let add_field = |field: &'static str| {
        move |text: String| {
            text.replace(
                "  string event_id = 1;",
                &format!("  string event_id = 1;\n  {field}"),
            )
        }
    };
    let cases: Vec<(Edit<'_>, Edit<'_>, &str)> = vec![
        (
            Box::new(add_field("string imsi = 40;")),
            Box::new(without_registry),
            "imsi: a field without a rule",
        ),
        (
            Box::new(add_field("bytes body = 40;")),
            Box::new(|t: String| {
                without_registry(t).replace(
                    "sip_code = \"keep\"",
                    "sip_code = \"keep\"\nbody = \"encrypt\"",
                )
            }),
            "body: it is bytes (bytes), which encrypt does not take",
        ),
        (
            Box::new(add_field("map<string, string> labels = 40;")),
            Box::new(|t: String| {
                without_registry(t).replace(
                    "sip_code = \"keep\"",
                    "sip_code = \"keep\"\nlabels = \"id\"",
                )
            }),
            "labels: a map, whose keys are data no rule path names: id does not take it",
        ),
        (
            Box::new(add_field("map<string, Device> devices = 41;")),
            Box::new(|t: String| {
                without_registry(t).replace(
                    "sip_code = \"keep\"",
                    "sip_code = \"keep\"\ndevices = \"keep\"",
                )
            }),
            "devices: a map of messages (comms.v1.Device), which keep does not copy whole",
        ),
        (
            Box::new(|t: String| {
                add_field("google.protobuf.Any extra = 40;")(t.replace(
                    "import \"device.proto\";",
                    "import \"device.proto\";\nimport \"google/protobuf/any.proto\";",
                ))
            }),
            Box::new(|t: String| {
                without_registry(t).replace(
                    "sip_code = \"keep\"",
                    "sip_code = \"keep\"\nextra = \"keep\"",
                )
            }),
            "extra: google.protobuf.Any, a well-known type the worker does not read",
        ),
        (
            Box::new(same),
            Box::new(|t: String| {
                without_registry(t)
                    .replace("\"device.os\" = \"keep\"\n", "")
                    .replace("\"device.device_id\" = \"id\"", "device = \"keep\"")
                    .replace("\"device.os_version\" = \"keep\"\n", "")
                    .replace("\"device.model\" = \"keep\"\n", "")
                    .replace("\"device.app_version\" = \"keep\"\n", "")
            }),
            "device: a message (comms.v1.Device), which one rule does not cover",
        ),
        (
            Box::new(same),
            Box::new(|t: String| {
                without_registry(t).replace(
                    "forwarded_to = \"phone\"",
                    "forwarded_to = { action = \"phone\", derive = [\"region\"] }",
                )
            }),
            "forwarded_to: derived attributes of a repeated field",
        ),
        (
            Box::new(same),
            Box::new(|t: String| {
                without_registry(t).replace("duration_ms = \"keep\"", "duration_ms = \"encrypt\"")
            }),
            "duration_ms: it is an integer (int64), which encrypt does not take",
        ),
        (
            Box::new(same),
            Box::new(|t: String| {
                without_registry(t).replace(
                    "sip_code = \"keep\"",
                    "sip_code = \"keep\"\ntypo = \"keep\"",
                )
            }),
            "typo: a rule names a field the message does not have",
        ),
        (
            Box::new(|_| {
                "syntax = \"proto2\";\npackage comms.v1;\nmessage CallEvent { optional string event_id = 1; }\n".to_owned()
            }),
            Box::new(without_registry),
            "it is not proto3",
        ),
        (
            Box::new(|t: String| t + "\nmessage Other { string x = 1; }\n"),
            Box::new(|t: String| {
                without_registry(t).replace("message = \"comms.v1.CallEvent\"\n", "")
            }),
            "more or fewer than one top-level message",
        ),
        (
            Box::new(|t: String| {
                t.replace("import \"device.proto\";", "import \"../device.proto\";")
            }),
            Box::new(without_registry),
            "does not compile",
        ),
        (
            Box::new(same),
            Box::new(|t: String| {
                without_registry(t).replace(
                    "message = \"comms.v1.CallEvent\"",
                    "message = \"comms.v1.Nope\"",
                )
            }),
            "it defines no message \"comms.v1.Nope\"",
        ),
    ];
    // Bounds checked before the compiler reads the text (a thousand nested messages overflowed
    // its stack), and imports only of .proto files beside the schema, through no link.
    let nested = |t: String| t + &"message A { ".repeat(40) + &"}".repeat(40);
    let import = |file: &'static str| {
        move |t: String| {
            t.replace(
                "import \"device.proto\";",
                &format!("import \"device.proto\";\nimport \"{file}\";"),
            )
        }
    };
    let cases: Vec<(Edit<'_>, Edit<'_>, &str)> = cases
        .into_iter()
        .chain([
            (
                Box::new(nested) as Edit<'_>,
                Box::new(without_registry) as Edit<'_>,
                "blocks nested more than 32 deep",
            ),
            (
                Box::new(import("secret.txt")),
                Box::new(without_registry),
                "import \"secret.txt\": an import is a .proto file",
            ),
            (
                Box::new(import("linked.proto")),
                Box::new(without_registry),
                "import \"linked.proto\": reached through a symbolic link",
            ),
            (
                Box::new(move |t: String| {
                    import("legacy.proto")(t).replace(
                        "  string event_id = 1;",
                        "  string event_id = 1;\n  legacy.Old old = 30;",
                    )
                }),
                Box::new(|t: String| {
                    without_registry(t).replace(
                        "sip_code = \"keep\"",
                        "sip_code = \"keep\"\n\"old.retries\" = \"keep\"",
                    )
                }),
                "legacy.Old is defined in a file that is not proto3",
            ),
        ])
        .collect();
    for (edit_proto, edit, wanted) in &cases {
        let said = refusal(edit_proto, edit).unwrap_or_else(|| panic!("refused: {wanted}"));
        assert!(said.contains(wanted), "{wanted:?} in {said}");
    }
    // With a registry a rule naming no field is allowed (another version may have it).
    assert_eq!(
        refusal(same, |t: String| t.replace(
            "sip_code = \"keep\"",
            "sip_code = \"keep\"\nnetwork = \"keep\""
        )),
        None
    );
    // Two enums kept in one message whose values share names (declared apart in the input):
    // the second goes into a scope of its own, and the derived file compiles.
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(
        dir.path(),
        |t: String| {
            t.replace(
                "  string event_id = 1;",
                "  string event_id = 1;\n  Leg leg = 31;",
            ) + "\nenum Leg {\n  LEG_UNSPECIFIED = 0;\n  INBOUND = 1;\n}\n"
        },
        |t: String| {
            without_registry(t)
                .replace("sip_code = \"keep\"", "sip_code = \"keep\"\nleg = \"keep\"")
        },
    );
    let engine = Engine::from_config(&Config::load(&path).unwrap()).unwrap();
    let text = &engine.proto(0).unwrap().output_text;
    assert!(text.contains("  LegScope.Leg leg = 31;"), "{text}");
    // Two protobuf pipelines whose outputs would share a name but not a schema: refused.
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), same, |t: String| {
        let second = "[[pipeline]]\nname = \"billing\"\nformat = \"protobuf\"\ninput_schema = \"proto/billing.proto\"\ninput_topic = \"billing.raw\"\noutput_topic = \"billing.sanitized\"\ninput_schema_id = 3\noutput_schema_id = 4\n[pipeline.rules]\ncaller = \"phone\"\n\n";
        without_registry(t.replace("[kafka]", &format!("{second}[kafka]"))).replace(
            "key_class = \"phone\"\n",
            "key_class = \"phone\"\ninput_schema_id = 1\noutput_schema_id = 2\n",
        )
    });
    std::fs::write(
        dir.path().join("proto/billing.proto"),
        "syntax = \"proto3\";\npackage billing.v2;\nmessage CallEvent { string caller = 1; }\n",
    )
    .unwrap();
    let said = match Engine::from_config(&Config::load(&path).unwrap()) {
        Ok(_) => panic!("two outputs named comms.sanitized.v1.CallEvent accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        said.contains("is also another protobuf pipeline's, derived differently"),
        "{said}"
    );
    // unknown = "drop": a field without a rule is left out of the output.
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), add_field("string imsi = 40;"), |t: String| {
        without_registry(t).replace(
            "key_class = \"phone\"",
            "key_class = \"phone\"\nunknown = \"drop\"",
        )
    });
    let engine = Engine::from_config(&Config::load(&path).unwrap()).unwrap();
    assert!(!engine.proto(0).unwrap().output_text.contains("imsi"));
}

/// A record through the engine: the output is a message of the derived schema, equal to what
/// the JSON walk makes of the record's JSON mapping (envelopes aside: each seal has its own
/// nonce), with no raw value in its bytes; a record with a field number its schema does not
/// have, or bytes that are not a message, is refused.
#[test]
fn records_are_walked_through_their_json_mapping() {
    let dir = tempfile::tempdir().unwrap();
    // A map kept whole (its schema says its key and value types), beside the shipped fields.
    let path = config_in(
        dir.path(),
        |t: String| {
            t.replace(
                "  string event_id = 1;",
                "  string event_id = 1;\n  map<string, int64> sdk_counters = 32;\n  map<int32, Direction> legs = 33;",
            )
        },
        |t: String| {
            without_registry(t).replace(
                "sip_code = \"keep\"",
                "sip_code = \"keep\"\nsdk_counters = \"keep\"\nlegs = \"keep\"",
            )
        },
    );
    let engine = Engine::from_config(&Config::load(&path).unwrap()).unwrap();
    let contract = engine.proto(0).unwrap();
    let plan = &contract.plan;
    let keys = common::active(&engine);
    let text = &contract.output_text;
    assert!(
        text.contains("  map<string, int64> sdk_counters = 32;"),
        "{text}"
    );
    assert!(
        text.contains("  map<int32, Direction> legs = 33;"),
        "{text}"
    );
    for seed in 0..50 {
        let mut event = call_event(seed);
        event["sdk_counters"] = json!({"retries": seed, "frames": 1_700_000_000_000u64 + seed});
        event["legs"] = json!({"1": "INBOUND", "2": "OUTBOUND"});
        let bytes = encode(&contract.input.message, &event);
        let mut out = Vec::new();
        engine
            .transform_protobuf(contract, &keys, None, &bytes, &mut out)
            .unwrap();
        let mut got = decode(&contract.output, &out);
        // The JSON walk of the same record's mapping, read as the derived message.
        let mapping = decode(&contract.input.message, &bytes);
        let mut walked = Vec::new();
        engine
            .transform_json(
                plan,
                &keys,
                None,
                mapping.to_string().as_bytes(),
                &mut walked,
            )
            .unwrap();
        let walked: Json = serde_json::from_slice(&walked).unwrap();
        let mut want = decode(&contract.output, &encode(&contract.output, &walked));
        let (sealed, want_sealed) = (got["recording_url"].take(), want["recording_url"].take());
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(sealed.is_null(), want_sealed.is_null());
        assert_ne!(got["caller"], event["caller"], "tokenized");
        for raw in [
            &event["caller"],
            &event["callee"],
            &event["forwarded_to"][0],
        ] {
            let raw = raw.as_str().unwrap().as_bytes();
            assert!(
                !out.windows(raw.len()).any(|w| w == raw),
                "a raw value in the output"
            );
        }
        assert_eq!(got["hangup_cause"].is_null(), seed % 2 == 1);
        assert_eq!(got["received_at"], event["received_at"]);
        assert_eq!(got["sdk_counters"], event["sdk_counters"], "kept whole");
        assert_eq!(got["legs"], event["legs"]);
    }
    // Field 40, which the schema does not have (a varint 7): refused, not dropped silently.
    let mut bytes = encode(&contract.input.message, &call_event(1));
    bytes.extend_from_slice(&[0xC0, 0x02, 0x07]);
    let mut out = Vec::new();
    let refused = engine
        .transform_protobuf(contract, &keys, None, &bytes, &mut out)
        .unwrap_err();
    assert!(refused.to_string().contains("field number"), "{refused}");
    for garbage in [&b"\xff\xff\xff"[..], b"\x0a\x05ab"] {
        assert!(engine
            .transform_protobuf(contract, &keys, None, garbage, &mut out)
            .is_err());
    }
}

/// Through the registry, as the worker resolves a new schema id: `.proto` text whose import is
/// a reference to another subject resolves to a route (the derived schema registered under the
/// output subject); a reference the registry does not have, or an import without one, is
/// `bad-schema`; a file that defines no pipeline's message is `unknown-schema-id`; a version
/// with a field without a rule is `unclassified-field`. Records of the route: published with
/// the output id and index `[0]`; another message's index list, a field number the schema
/// does not have, or bytes that are no message are `corrupt-protobuf`.
#[test]
fn registry_schemas_resolve_with_their_references() {
    use pseudonymizer::registry::RegistryClient;
    use pseudonymizer::worker::resolve::SchemaResolver;
    use pseudonymizer::worker::route::{frame, DeadLetter, Resolution, Router, Target};
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), same, |t| {
        t.replace(
            "\"http://127.0.0.1:8081\"",
            &format!("{:?}", registry.url()),
        ) + "timeout_secs = 2\nmax_backoff_secs = 1\n"
    });
    let config = Config::load(&path).unwrap();
    let engine = Engine::from_config(&config).unwrap();
    let router = Router::from_config(&config, &engine).unwrap();
    let settings = config.registry.as_ref().unwrap();
    let resolver = SchemaResolver {
        client: RegistryClient::new(settings).unwrap(),
        strategy: settings.subject_strategy,
    };
    let metrics = Metrics::new();
    let resolve = |id: u32| resolver.resolve(&router, &metrics, id).unwrap();
    let refused = |id: u32| match resolve(id) {
        Resolution::Refused(reason) => reason,
        Resolution::Route(_) => panic!("schema {id} routed"),
    };
    let read = |name: &str| {
        std::fs::read_to_string(common::repo().join("schemas/proto").join(name)).unwrap()
    };
    let reference =
        |subject: &str| json!([{"name": "device.proto", "subject": subject, "version": 1}]);
    registry.register_as("device.proto", &read("device.proto"), "PROTOBUF");
    let id = registry.register_with_references(
        "grpc.calls.raw-value",
        &read("call_event.proto"),
        "PROTOBUF",
        reference("device.proto"),
    );
    let route = match resolve(id) {
        Resolution::Route(Target::Json(route)) => route,
        _ => panic!("schema {id} not routed"),
    };
    let output_id = route.output_schema_id.unwrap();
    assert!(registry
        .versions("comms.sanitized.v1.CallEvent")
        .contains(&output_id));
    assert!(registry
        .schema(output_id)
        .unwrap()
        .contains("message Device {"));
    router.insert(id, Resolution::Route(Target::Json(route.clone())));

    let edited = |extra: &str| {
        read("call_event.proto").replace(
            "  string event_id = 1;",
            &format!("  string event_id = 1;\n{extra}"),
        )
    };
    let missing = registry.register_with_references(
        "grpc.calls.raw-value",
        &edited("  // v2"),
        "PROTOBUF",
        reference("nope"),
    );
    assert_eq!(refused(missing), DeadLetter::BadSchema);
    let unreferenced = registry.register_as("grpc.calls.raw-value", &edited("  // v3"), "PROTOBUF");
    assert_eq!(refused(unreferenced), DeadLetter::BadSchema);
    let other = registry.register_as(
        "other-value",
        "syntax = \"proto3\";\npackage x.v1;\nmessage Other { string a = 1; }\n",
        "PROTOBUF",
    );
    assert_eq!(refused(other), DeadLetter::UnknownSchema);
    let unclassified = registry.register_with_references(
        "grpc.calls.raw-value",
        &edited("  string imsi = 40;"),
        "PROTOBUF",
        reference("device.proto"),
    );
    assert_eq!(refused(unclassified), DeadLetter::UnclassifiedField);

    // Records of the route.
    let keys = common::active(&engine);
    let contract = engine.proto(0).unwrap();
    let message = encode(&contract.input.message, &call_event(7));
    let record = |indexes: &[u8], body: &[u8]| frame(id, &[indexes, body].concat());
    let mut out = Vec::new();
    let published = router
        .process(
            &engine,
            &keys,
            Some(b"+6281234567890"),
            Some(&record(&[0], &message)),
            &mut out,
        )
        .unwrap_or_else(|reason| panic!("dead-lettered: {}", reason.code()));
    assert_eq!(published.route.output_schema_id(), Some(output_id));
    assert_eq!(
        &out[..6],
        &[&[0u8][..], &output_id.to_be_bytes(), &[0]].concat()[..]
    );
    let mut unknown_field = message.clone();
    unknown_field.extend_from_slice(&[0xC0, 0x02, 0x07]);
    for (indexes, body) in [
        (&[2u8, 2][..], &message[..]),
        (&[0], &unknown_field[..]),
        (&[0], &b"\xff\xff"[..]),
        (&[0x80], &message[..]),
    ] {
        let reason = router
            .process(&engine, &keys, None, Some(&record(indexes, body)), &mut out)
            .err()
            .expect("dead-lettered");
        assert_eq!(reason, DeadLetter::CorruptProtobuf);
    }
}

/// Runs tests/python/confluent_protobuf.py with the project's Python.
fn confluent(args: &[&str], stdin: &str) -> String {
    common::run_python_script("confluent_protobuf.py", args, stdin)
}

/// End to end with Confluent's own serializers: version 1 of the schema, then a version 2
/// with a new field that has a rule (published), then a version 3 with one that has none
/// (every record of it dead-lettered, `unclassified-field`). device.proto reaches the worker
/// as a registry reference. What is published is framed with the id of a derived schema the
/// worker registered, read by Confluent's deserializer with classes compiled from the derived
/// `.proto`, carries no raw value, and equals what the engine makes of the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_serializers_on_both_sides() {
    let brokers = common::kafka::tansu();
    let registry = TestRegistry::start();
    let topics = common::kafka::Topics::unique("protobuf");
    topics.create(&brokers, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), same, |t| {
        t.replace("\"grpc.calls.raw\"", &format!("{:?}", topics.raw))
            .replace("\"grpc.calls.sanitized\"", &format!("{:?}", topics.calls))
            .replace("\"grpc.dlq\"", &format!("{:?}", topics.dlq))
            .replace("\"127.0.0.1:9092\"", &format!("{brokers:?}"))
            .replace("\"pseudonymizer-protobuf\"", &format!("{:?}", topics.group))
            .replace(
                "\"http://127.0.0.1:8081\"",
                &format!("{:?}", registry.url()),
            )
            .replace("codec = \"keep\"", "codec = \"keep\"\nnetwork = \"keep\"")
            + "timeout_secs = 2\nmax_backoff_secs = 1\n"
    });
    let config = Config::load(&path).unwrap();
    let engine = Engine::from_config(&config).unwrap();

    // Three producer versions of call_event.proto, each beside its device.proto.
    let shipped =
        std::fs::read_to_string(common::repo().join("schemas/proto/call_event.proto")).unwrap();
    let device =
        std::fs::read_to_string(common::repo().join("schemas/proto/device.proto")).unwrap();
    let v2 = shipped.replace(
        "  string event_id = 1;",
        "  string event_id = 1;\n  string network = 19;",
    );
    let v3 = v2.replace(
        "  string event_id = 1;",
        "  string event_id = 1;\n  string imsi = 20;",
    );
    let mut events: Vec<Json> = Vec::new();
    let mut batches = Vec::new();
    for (version, proto, seeds) in [
        (1, &shipped, 0..150u64),
        (2, &v2, 150..200),
        (3, &v3, 200..220),
    ] {
        let mut lines = String::new();
        for seed in seeds {
            let mut event = call_event(seed);
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
        let version_dir = dir.path().join(format!("v{version}"));
        std::fs::create_dir_all(&version_dir).unwrap();
        std::fs::write(version_dir.join("call_event.proto"), proto).unwrap();
        std::fs::write(version_dir.join("device.proto"), &device).unwrap();
        batches.push((version_dir.join("call_event.proto"), lines));
    }
    for (proto_path, lines) in &batches {
        confluent(
            &[
                "produce",
                &brokers,
                &topics.raw,
                &registry.url(),
                proto_path.to_str().unwrap(),
                "comms.v1.CallEvent",
            ],
            lines,
        );
    }
    assert!(
        !registry.versions("device.proto").is_empty(),
        "the serializer registered the import as a subject of its own"
    );

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
    assert!(metrics
        .render()
        .contains("pseudonymizer_unclassified_fields{"));
    // Each published record names its input schema in the `pseudonymizer.schema` header.
    for message in &published {
        let headers = message.headers().expect("published records carry headers");
        let schema = headers.iter().find(|h| h.key == "pseudonymizer.schema");
        assert_eq!(
            schema.and_then(|h| h.value),
            Some(&b"comms.v1.CallEvent"[..])
        );
    }

    // Published: framed with derived schemas the worker registered, message index [0].
    let derived_ids: HashSet<u32> = published
        .iter()
        .map(|m| {
            let value = m.payload().unwrap();
            assert_eq!(value[0], 0, "Confluent framing");
            assert_eq!(value[5], 0, "message-index list [0]");
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
    let mut derived_v2 = None;
    for id in &derived_ids {
        let text = registry.schema(*id).unwrap();
        assert!(text.contains("package comms.sanitized.v1;"), "{text}");
        if text.contains("network") {
            derived_v2 = Some(text);
        }
    }
    let derived_v2 = derived_v2.expect("version 2's derived schema has its new field");
    let reader_proto = dir.path().join("reader/comms.sanitized.v1.CallEvent.proto");
    std::fs::create_dir_all(reader_proto.parent().unwrap()).unwrap();
    std::fs::write(&reader_proto, &derived_v2).unwrap();

    // Read back by Confluent's deserializer with classes made from the derived .proto.
    let read = confluent(
        &[
            "consume",
            &brokers,
            &topics.calls,
            &registry.url(),
            reader_proto.to_str().unwrap(),
            "comms.sanitized.v1.CallEvent",
            "200",
        ],
        "",
    );
    let contract = engine.proto(0).unwrap();
    let plan = &contract.plan;
    let keys = common::active(&engine);
    let mut expected = std::collections::HashMap::new();
    for event in &events[..200] {
        let mut walked = Vec::new();
        let mapping = decode(
            &contract.input.message,
            &encode(&contract.input.message, &without(event, "network")),
        );
        engine
            .transform_json(
                plan,
                &keys,
                None,
                mapping.to_string().as_bytes(),
                &mut walked,
            )
            .unwrap();
        let walked: Json = serde_json::from_slice(&walked).unwrap();
        expected.insert(walked["event_id"].as_str().unwrap().to_owned(), walked);
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
        let value = &record["value"];
        let id = value["event_id"].as_str().unwrap().to_owned();
        let want = &expected[&id];
        for field in [
            "caller",
            "callee",
            "call_id",
            "caller_region",
            "callee_number_type",
            "hangup_cause",
        ] {
            assert_eq!(
                value.get(field),
                want.get(field).filter(|v| !v.is_null()),
                "{field} of {id}"
            );
        }
        assert_eq!(value["forwarded_to"], want["forwarded_to"]);
        assert_eq!(value["device"]["device_id"], want["device"]["device_id"]);
        assert_eq!(
            record["key"], value["caller"],
            "the key is the caller's token"
        );
        if let Some(sealed) = value.get("recording_url") {
            assert!(
                sealed.as_str().is_some_and(|s| s.len() > 40),
                "a sealed envelope, base64"
            );
        }
        seen.insert(id);
    }
    assert_eq!(seen.len(), 200, "every accepted record read back once");

    // Version 3's new field gets a rule: `dlq replay` opens the sealed dead letters and sends
    // the producer's framed records back to the input topic, and the restarted worker
    // publishes every one of them under a derived schema without the dropped field.
    let replayed = common::kafka::replayed_after_drop(&path, "imsi", &reader, &topics, 20).await;
    let registered: HashSet<u32> = registry
        .versions("comms.sanitized.v1.CallEvent")
        .into_iter()
        .collect();
    let replayed_ids: HashSet<u32> = replayed
        .iter()
        .map(|m| {
            let value = m.payload().unwrap();
            assert!(
                !value.windows(10).any(|w| w == b"5100112345"),
                "imsi dropped"
            );
            u32::from_be_bytes([value[1], value[2], value[3], value[4]])
        })
        .collect();
    assert_eq!(replayed_ids.len(), 1);
    assert!(replayed_ids.is_subset(&registered));
    for id in replayed_ids {
        let text = registry.schema(id).unwrap();
        assert!(text.contains("network") && !text.contains("imsi"), "{text}");
    }
}

/// `event` without `key`.
fn without(event: &Json, key: &str) -> Json {
    let mut event = event.clone();
    if let Some(object) = event.as_object_mut() {
        object.remove(key);
    }
    event
}

/// `transform --pipeline` on JSON lines of a protobuf pipeline: each line is read through the
/// schema (a field the `.proto` does not have is refused, naming the line), walked, and fits
/// the derived message; `decrypt --pipeline` opens what it sealed.
#[test]
fn file_mode_on_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), same, without_registry);
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..30).map(|seed| call_event(seed).to_string()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
            .args(args)
            .output()
            .unwrap()
    };
    let transform = |input: &Path| {
        run(&[
            "transform",
            "--config",
            config.to_str().unwrap(),
            "--pipeline",
            "grpc-calls",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
    };
    let done = transform(&input);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let written = std::fs::read_to_string(&output).unwrap();
    assert_eq!(written.lines().count(), 30);
    for (line, raw) in written.lines().zip(&lines) {
        let out: Json = serde_json::from_str(line).unwrap();
        let raw: Json = serde_json::from_str(raw).unwrap();
        assert_eq!(out["event_id"], raw["event_id"]);
        assert_ne!(out["caller"], raw["caller"]);
        assert_ne!(out["forwarded_to"][0], raw["forwarded_to"][0]);
    }
    let opened = run(&[
        "decrypt",
        "--config",
        config.to_str().unwrap(),
        "--pipeline",
        "grpc-calls",
        "--input",
        output.to_str().unwrap(),
    ]);
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let mut envelopes = 0;
    for (line, raw) in String::from_utf8(opened.stdout)
        .unwrap()
        .lines()
        .zip(&lines)
    {
        let line: Json = serde_json::from_str(line).unwrap();
        let raw: Json = serde_json::from_str(raw).unwrap();
        assert_eq!(line["recording_url"], raw["recording_url"]);
        envelopes += usize::from(raw["recording_url"].is_string());
    }
    assert!(envelopes >= 5, "{envelopes} envelopes opened");
    // Protobuf's JSON mapping also accepts each field's json_name (`callerIp`, `forwardedTo`):
    // such a line is read through the schema, so the rules of the proto names still apply and
    // the written line carries proto names only.
    let camel_case = |event: &Json| -> Json {
        let mut camel = serde_json::Map::new();
        for (key, value) in event.as_object().unwrap() {
            let mut name = String::new();
            let mut upper = false;
            for c in key.chars() {
                match (c, upper) {
                    ('_', _) => upper = true,
                    (c, true) => {
                        name.extend(c.to_uppercase());
                        upper = false
                    }
                    (c, false) => name.push(c),
                }
            }
            camel.insert(name, value.clone());
        }
        Json::Object(camel)
    };
    let raw: Vec<Json> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let camel_lines: Vec<String> = raw.iter().map(|e| camel_case(e).to_string()).collect();
    assert!(
        camel_lines[0].contains("\"forwardedTo\""),
        "{}",
        camel_lines[0]
    );
    let camel_input = dir.path().join("camel.jsonl");
    std::fs::write(&camel_input, camel_lines.join("\n") + "\n").unwrap();
    let done = transform(&camel_input);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let camel_written = std::fs::read_to_string(&output).unwrap();
    for ((camel, proto_named), raw) in camel_written.lines().zip(written.lines()).zip(&raw) {
        let camel: Json = serde_json::from_str(camel).unwrap();
        let proto_named: Json = serde_json::from_str(proto_named).unwrap();
        assert_eq!(
            camel["caller"], proto_named["caller"],
            "same token either way"
        );
        assert_eq!(camel["forwarded_to"], proto_named["forwarded_to"]);
        assert!(camel.get("callerIp").is_none() && camel.get("forwardedTo").is_none());
        // (Values long enough not to occur by chance: a short code such as 112 may.)
        for key in ["caller", "callee", "caller_ip", "recording_url"] {
            if let Some(value) = raw[key].as_str().filter(|v| v.len() >= 8) {
                assert!(
                    !camel_written.contains(value),
                    "{key} published raw: {value}"
                );
            }
        }
    }
    // A line with a field the .proto does not have, or a kept value of the wrong type: refused.
    for bad_line in [
        r#"{"event_id":"x","imsi":"510011234567890"}"#,
        r#"{"event_id":"x","duration_ms":"long"}"#,
    ] {
        let mut bad = lines.clone();
        bad[2] = bad_line.to_owned();
        std::fs::write(&input, bad.join("\n")).unwrap();
        let failed = transform(&input);
        assert_eq!(failed.status.code(), Some(1));
        let said = String::from_utf8_lossy(&failed.stderr);
        assert!(
            said.contains("line 3:") && said.contains("not a Protobuf message"),
            "{said}"
        );
        assert!(!said.contains("510011234567890"), "{said}");
        assert!(
            std::fs::read_to_string(&output).unwrap() == camel_written,
            "the output is left as it was"
        );
    }
}
