//! Bad input gives a clear error naming where, never a panic and never the raw value.

mod common;

use std::os::unix::fs::PermissionsExt;

use apache_avro::types::Value;
use apache_avro::{Schema, Writer};
use pseudonymizer::config::{Config, ConfigError};
use pseudonymizer::file::{self, FileError};
use pseudonymizer::generate::{typical_call, typical_message};
use pseudonymizer::keys::{Keyring, KeyringError};
use pseudonymizer::transform::{ErrorKind, TransformError};

const CALL: &str = "comms.v1.CallEvent";

fn typical_call_bytes() -> Vec<u8> {
    let engine = common::engine();
    let plan = engine.plan(CALL).unwrap();
    common::encode(&plan.input, typical_call())
}

#[test]
fn every_truncation_of_an_event_is_an_error_not_a_panic() {
    let engine = common::engine();
    let plan = engine.plan(CALL).unwrap();
    let keys = common::active(&engine);
    let input = typical_call_bytes();
    let mut out = Vec::new();
    for len in 0..input.len() {
        out.clear();
        let error = engine
            .transform(plan, &keys, &input[..len], &mut out)
            .unwrap_err();
        assert!(
            matches!(
                error.kind,
                ErrorKind::Truncated
                    | ErrorKind::BadUnion
                    | ErrorKind::NegativeLength
                    | ErrorKind::InvalidUtf8
            ),
            "cut at {len}: {error}"
        );
    }
}

#[test]
fn corrupt_bytes_never_panic_and_errors_carry_no_value() {
    let engine = common::engine();
    let plan = engine.plan(CALL).unwrap();
    let keys = common::active(&engine);
    let input = typical_call_bytes();
    let mut out = Vec::new();
    let mut errors = 0;
    for i in 0..input.len() {
        for byte in [0x00, 0x7f, 0x80, 0xff, input[i] ^ 0x01] {
            let mut corrupt = input.clone();
            corrupt[i] = byte;
            out.clear();
            if let Err(error) = engine.transform(plan, &keys, &corrupt, &mut out) {
                errors += 1;
                let text = error.to_string();
                assert!(
                    !text.contains("6281234567890") && !text.contains("203.0.113"),
                    "{text}"
                );
            }
        }
    }
    assert!(errors > 100, "corruption is detected ({errors})");
}

#[test]
fn trailing_bytes_are_refused() {
    let engine = common::engine();
    let plan = engine.plan(CALL).unwrap();
    let mut input = typical_call_bytes();
    input.push(0);
    let error = engine
        .transform(plan, &common::active(&engine), &input, &mut Vec::new())
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::TrailingBytes);
}

#[test]
fn invalid_utf8_names_the_field() {
    let engine = common::engine();
    let keys = common::active(&engine);
    // In a phone field (transformed) and in a kept field: both fail closed.
    for (field, action) in [("caller", "phone"), ("codec", "keep")] {
        let plan = engine.plan(CALL).unwrap();
        let mut event = typical_call();
        let marker = "\u{1F600}MARKER";
        let value = Value::String(marker.into());
        let value = if field == "codec" {
            Value::Union(1, Box::new(value))
        } else {
            value
        };
        common::set_field(&mut event, field, value);
        let mut bytes = common::encode(&plan.input, event);
        // Break the emoji's first byte (0xF0) into an invalid lead byte.
        let at = bytes
            .windows(4)
            .position(|w| w == [0xF0, 0x9F, 0x98, 0x80])
            .unwrap();
        bytes[at] = 0xFF;
        let error = engine
            .transform(plan, &keys, &bytes, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            error,
            TransformError {
                path: field.into(),
                kind: ErrorKind::InvalidUtf8
            },
            "{action}"
        );
        assert!(!error.to_string().contains("MARKER"));
    }
}

#[test]
fn unparseable_phone_and_ip_become_raw_tokens() {
    let engine = common::engine();
    let plan = engine.plan(CALL).unwrap();
    let keys = common::active(&engine);
    let mut event = typical_call();
    common::set_field(
        &mut event,
        "caller",
        Value::String("  not a number ".into()),
    );
    common::set_field(
        &mut event,
        "caller_ip",
        Value::Union(1, Box::new(Value::String("999.1.1.1".into()))),
    );
    let mut out = Vec::new();
    engine
        .transform(plan, &keys, &common::encode(&plan.input, event), &mut out)
        .unwrap();
    let pkey = keys.pseudonym.as_deref().unwrap();
    let phone_raw = pseudonymizer::token::token(
        pkey,
        pseudonymizer::token::TokenClass::PhoneRaw,
        b"not a number",
    );
    let ip_raw =
        pseudonymizer::token::token(pkey, pseudonymizer::token::TokenClass::IpRaw, b"999.1.1.1");
    let output = common::decode(&plan.output, &out);
    assert_eq!(
        common::field(&output, "caller"),
        &Value::String(phone_raw.as_str().into())
    );
    assert_eq!(
        common::field(&output, "caller_ip"),
        &Value::Union(1, Box::new(Value::String(ip_raw.as_str().into())))
    );
    assert!(!out.windows(12).any(|w| w == b"not a number"));
    assert!(!out.windows(9).any(|w| w == b"999.1.1.1"));
}

fn write_container(schema: &Schema, values: Vec<Value>, path: &std::path::Path) {
    let mut writer = Writer::new(schema, std::fs::File::create(path).unwrap());
    for v in values {
        writer.append(v).unwrap();
    }
    writer.into_inner().unwrap();
}

#[test]
fn file_with_unknown_writer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::parse_str(r#"{"type":"record","name":"Other","namespace":"x","fields":[{"name":"a","type":"string"}]}"#).unwrap();
    let input = dir.path().join("other.avro");
    write_container(
        &schema,
        vec![Value::Record(vec![(
            "a".into(),
            Value::String("+6281234567890".into()),
        )])],
        &input,
    );
    let engine = common::engine();
    let error = file::transform_file(
        &engine,
        &common::active(&engine),
        &input,
        &dir.path().join("out.avro"),
    )
    .unwrap_err();
    assert!(
        matches!(&error, FileError::NoRules(name) if name == "x.Other"),
        "{error}"
    );
}

#[test]
fn corrupt_container_names_the_event_index() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine();
    let plan = engine.plan("comms.v1.MessageEvent").unwrap();
    let input = dir.path().join("messages.avro");
    write_container(
        &plan.input,
        vec![typical_message(), typical_message(), typical_message()],
        &input,
    );
    let mut bytes = std::fs::read(&input).unwrap();
    let cut = bytes.len() - 40; // inside the block of events, before the sync marker
    bytes.truncate(cut);
    std::fs::write(&input, &bytes).unwrap();
    let error = file::transform_file(
        &engine,
        &common::active(&engine),
        &input,
        &dir.path().join("out.avro"),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, FileError::Decode { .. }), "{text}");
    assert!(text.starts_with("event "), "{text}");
    assert!(!text.contains("6281"), "{text}");

    let not_avro = dir.path().join("junk.avro");
    std::fs::write(&not_avro, b"definitely not avro").unwrap();
    let error = file::transform_file(
        &engine,
        &common::active(&engine),
        &not_avro,
        &dir.path().join("o.avro"),
    )
    .unwrap_err();
    assert!(matches!(error, FileError::Header { .. }), "{error}");
}

const GOOD_KEYRING: &str = r#"{"format":"pseudonymizer-keyring/v1","keys":[
 {"id":"p-1","purpose":"pseudonym","state":"active","created_at":"2026-11-24T10:00:00Z","secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
 {"id":"e-1","purpose":"encryption","state":"active","created_at":"2026-11-24T10:00:00Z","secret":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}]}"#;

/// A keyring text and the check its refusal must pass.
type KeyringCase = (String, fn(&KeyringError) -> bool);

#[test]
fn keyring_errors() {
    assert!(Keyring::from_json(GOOD_KEYRING).is_ok());
    let v2 = GOOD_KEYRING.replace("v1", "v2").replace(
        "\"keys\"",
        "\"generation\":3,\"keyring_id\":\"kr-0123456789abcdef\",\"keys\"",
    );
    let ring = Keyring::from_json(&v2).unwrap();
    assert_eq!(
        (ring.generation(), ring.keyring_id()),
        (3, Some("kr-0123456789abcdef"))
    );
    let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let cases: Vec<KeyringCase> = vec![
        (
            GOOD_KEYRING.replace(
                "\"e-1\",\"purpose\":\"encryption\"",
                "\"e-1\",\"purpose\":\"pseudonym\"",
            ),
            |e| matches!(e, KeyringError::TwoActive { .. }),
        ),
        (
            GOOD_KEYRING.replace(secret, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"),
            |e| matches!(e, KeyringError::BadSecret(id) if id == "p-1"),
        ),
        (
            GOOD_KEYRING.replace(
                "\"state\":\"active\",\"created_at\"",
                "\"state\":\"active\",\"colour\":\"red\",\"created_at\"",
            ),
            |e| matches!(e, KeyringError::Syntax(m) if m.contains("unknown field `colour`")),
        ),
        (
            GOOD_KEYRING.replace("\"keys\"", "\"extra\":1,\"keys\""),
            |e| matches!(e, KeyringError::Syntax(m) if m.contains("unknown field")),
        ),
        (GOOD_KEYRING.replace("v1", "v9"), |e| {
            matches!(e, KeyringError::Format(_))
        }),
        // Version 2 must say its generation; version 1 has none.
        (
            GOOD_KEYRING.replace("v1", "v2"),
            |e| matches!(e, KeyringError::Syntax(m) if m.contains("generation")),
        ),
        (
            GOOD_KEYRING.replace("\"keys\"", "\"generation\":3,\"keys\""),
            |e| matches!(e, KeyringError::Syntax(m) if m.contains("generation")),
        ),
        // Version 2 names its keyring too; version 1 does not.
        (
            GOOD_KEYRING
                .replace("v1", "v2")
                .replace("\"keys\"", "\"generation\":3,\"keys\""),
            |e| matches!(e, KeyringError::Syntax(m) if m.contains("keyring_id")),
        ),
        (
            GOOD_KEYRING.replace("\"keys\"", "\"keyring_id\":\"kr-1\",\"keys\""),
            |e| matches!(e, KeyringError::Syntax(m) if m.contains("keyring_id")),
        ),
        (
            GOOD_KEYRING.replace("v1", "v2").replace(
                "\"keys\"",
                "\"generation\":3,\"keyring_id\":\"kr 1\",\"keys\"",
            ),
            |e| matches!(e, KeyringError::Syntax(m) if m.contains("keyring_id")),
        ),
        (GOOD_KEYRING.replace("\"p-1\"", "\"p 1\""), |e| {
            matches!(e, KeyringError::BadId(_))
        }),
        (GOOD_KEYRING.replace("\"e-1\"", "\"p-1\""), |e| {
            matches!(e, KeyringError::DuplicateId(_))
        }),
        (
            GOOD_KEYRING.replace(
                "\"state\":\"active\",\"created_at\":\"2026-11-24T10:00:00Z\",\"secret\":\"AAEC",
                "\"state\":\"destroyed\",\"created_at\":\"2026-11-24T10:00:00Z\",\"secret\":\"AAEC",
            ),
            |e| matches!(e, KeyringError::DestroyedWithSecret(_)),
        ),
        (
            GOOD_KEYRING.replacen("2026-11-24T10:00:00Z", "yesterday", 1),
            |e| matches!(e, KeyringError::BadTime(_)),
        ),
    ];
    for (text, expected) in cases {
        let error = Keyring::from_json(&text).unwrap_err();
        assert!(expected(&error), "unexpected error: {error}");
        let message = error.to_string();
        assert!(
            !message.contains("AAECAwQF") && !message.contains("ICEiIy"),
            "secret in error: {message}"
        );
    }
}

/// Owner-only passes; group read passes only for the group PSEUDONYMIZER_SECRET_GROUP names
/// (the pod's fsGroup, as the manifests set it), never merely because this process is in the
/// file's group; others' access and group write fail whatever is named.
#[test]
fn keyring_modes_owner_only_or_group_read_by_the_named_group() {
    use pseudonymizer::secret_file::ModeProblem;
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_keyring(dir.path());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(Keyring::load(&path).is_ok());
    // SAFETY: getegid has no preconditions.
    let own_gid = unsafe { libc::getegid() };
    let set = |mode: u32| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // `keys list` as a child, with the group named or not (never set in this process).
    let list = |group: Option<u32>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pseudonymizer"));
        command
            .args(["keys", "list", "--keyring"])
            .arg(&path)
            .env_remove("PSEUDONYMIZER_SECRET_GROUP");
        if let Some(gid) = group {
            command.env("PSEUDONYMIZER_SECRET_GROUP", gid.to_string());
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let refused = |result: Result<Keyring, KeyringError>| match result {
        Err(KeyringError::Permissions { problem, .. }) => problem,
        other => panic!("not refused for its mode: {other:?}"),
    };
    set(0o440);
    // In the group, but no group named: refused (before, accepted).
    assert_eq!(
        refused(Keyring::load(&path)),
        ModeProblem::GroupNotNamed {
            mode: 0o440,
            gid: own_gid
        }
    );
    let (ok, said) = list(None);
    assert!(!ok && said.contains("PSEUDONYMIZER_SECRET_GROUP"), "{said}");
    let (ok, said) = list(Some(own_gid));
    assert!(ok, "the named group may read: {said}");
    let (ok, said) = list(Some(54_321));
    assert!(!ok && said.contains("names group 54321"), "{said}");
    set(0o640);
    assert!(list(Some(own_gid)).0);
    set(0o644);
    assert_eq!(refused(Keyring::load(&path)), ModeProblem::Others(0o644));
    assert!(!list(Some(own_gid)).0);
    set(0o660);
    assert_eq!(
        refused(Keyring::load(&path)),
        ModeProblem::GroupWritable(0o660)
    );
    assert!(!list(Some(own_gid)).0);
    let error = Keyring::load(&path).unwrap_err().to_string();
    assert!(error.contains("chmod 600"), "{error}");
}

#[test]
fn rule_errors_list_every_offending_path() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(common::repo().join("config/pipeline.toml")).unwrap();
    let broken = shipped
        .replace(
            "../schemas/",
            &format!("{}/schemas/", common::repo().display()),
        )
        .replace("codec = \"keep\"\n", "")
        .replace(
            "duration_ms = \"keep\"",
            "duration_ms = \"phone\"\nringing_ms = \"keep\"",
        )
        .replace("channel = \"keep\"", "channel = \"encrypt\"")
        .replace(
            "\"device.model\" = \"keep\"\n\"device.app_version\"",
            "\"device.model\" = \"shred\"\n\"device.app_version\"",
        );
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let config = Config::load(&path).unwrap();
    let error = pseudonymizer::transform::Engine::from_config(&config).unwrap_err();
    let ConfigError::Rules(lines) = &error else {
        panic!("{error}")
    };
    let text = lines.join("\n");
    for expected in [
        "[calls] codec: has no rule",
        "[calls] duration_ms: action phone does not fit type \"long\"",
        "[calls] ringing_ms: names no leaf field of comms.v1.CallEvent",
        "[messages] channel: action encrypt does not fit type enum comms.v1.Channel",
        "unknown action \"shred\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
