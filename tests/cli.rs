//! The binary end to end: keys, transform, decrypt, lookup, generate; and what it prints.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keys_lifecycle_and_list_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keys/keyring.json");
    ok(&["keys", "init", "--keyring", s(&ring)]);
    assert!(
        !run(&["keys", "init", "--keyring", s(&ring)])
            .status
            .success(),
        "init refuses to overwrite"
    );
    ok(&[
        "keys",
        "rotate",
        "--keyring",
        s(&ring),
        "--purpose",
        "encryption",
        "--id",
        "e-second",
    ]);
    let dup = run(&[
        "keys",
        "rotate",
        "--keyring",
        s(&ring),
        "--purpose",
        "pseudonym",
        "--id",
        "e-second",
    ]);
    assert!(!dup.status.success(), "duplicate id refused");
    let list = ok(&["keys", "list", "--keyring", s(&ring)]);
    assert!(
        list.contains("e-second") && list.contains("active"),
        "{list}"
    );
    assert!(list.contains("retired"), "{list}");
    let active = run(&["keys", "destroy", "--keyring", s(&ring), "--id", "e-second"]);
    assert!(!active.status.success(), "the active key needs --force");
    ok(&[
        "keys",
        "destroy",
        "--keyring",
        s(&ring),
        "--id",
        "e-second",
        "--force",
    ]);
    let list = ok(&["keys", "list", "--keyring", s(&ring)]);
    assert!(list.contains("destroyed"), "{list}");

    let text = std::fs::read_to_string(&ring).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in json["keys"].as_array().unwrap() {
        if let Some(secret) = key["secret"].as_str() {
            assert!(!list.contains(secret), "list printed a secret");
            assert!(
                !list.contains(&secret[..12]),
                "list printed part of a secret"
            );
        } else {
            assert_eq!(key["state"], "destroyed");
        }
    }
}

#[test]
fn generate_transform_decrypt_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let config = common::repo().join("config/pipeline.toml");
    let raw = dir.path().join("messages.avro");
    let sanitized = dir.path().join("messages.sanitized.avro");
    ok(&[
        "generate",
        "--schema",
        "message",
        "--count",
        "200",
        "--seed",
        "5",
        "--output",
        s(&raw),
    ]);
    let said = ok(&[
        "transform",
        "--config",
        s(&config),
        "--keyring",
        s(&ring),
        "--input",
        s(&raw),
        "--output",
        s(&sanitized),
    ]);
    assert!(said.contains("transformed 200 events"), "{said}");

    let raw_events = pseudonymizer::file::read_json(&raw, usize::MAX).unwrap();
    let out = run(&[
        "decrypt",
        "--config",
        s(&config),
        "--keyring",
        s(&ring),
        "--input",
        s(&sanitized),
        "--audit-log",
        s(&dir.path().join("audit.log")),
    ]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    for (raw, opened) in raw_events.iter().zip(&lines) {
        assert_eq!(raw["body"], opened["body"], "decrypt restores the body");
        assert_eq!(raw["event_id"], opened["event_id"]);
        for (a, b) in raw["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .zip(opened["attachments"].as_array().unwrap())
        {
            assert_eq!(a["url"], b["url"]);
        }
    }

    // lookup finds the sender's token as written in the output.
    let sender = raw_events[0]["sender"].as_str().unwrap();
    let audit = dir.path().join("audit.log");
    let found = ok(&[
        "lookup",
        "--keyring",
        s(&ring),
        "--audit-log",
        s(&audit),
        "--class",
        "phone",
        sender,
    ]);
    let line: serde_json::Value = serde_json::from_str(found.lines().next().unwrap()).unwrap();
    assert_eq!(line["token"], lines[0]["sender"]);
    assert!(
        !found.contains(sender),
        "lookup output does not repeat the value"
    );
}

/// `check` validates the `[kafka]` section without a broker: every bad librdkafka property
/// and missing field is named in one error; the shipped section passes.
#[test]
fn check_validates_kafka_settings_without_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let shipped = std::fs::read_to_string(common::repo().join("config/pipeline.toml"))
        .unwrap()
        .replace(
            "\"../schemas/",
            &format!("\"{}/", common::repo().join("schemas").display()),
        );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &shipped).unwrap();
    let said = ok(&["check", "--config", s(&good), "--keyring", s(&ring)]);
    assert!(said.contains("[kafka]: ok"), "{said}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        shipped
            .replace("dlq_topic = \"comms.dlq\"", "dlq_topic = \"\"")
            .replace(
                "[kafka.properties]\n",
                "[kafka.properties]\n\"no.such.property\" = \"1\"\n",
            )
            .replace(
                "[kafka.consumer_properties]\n",
                "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"soon\"\n",
            ),
    )
    .unwrap();
    let out = run(&["check", "--config", s(&bad), "--keyring", s(&ring)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "dlq_topic is empty",
        "no.such.property",
        "session.timeout.ms",
    ] {
        assert!(err.contains(expected), "{expected:?} not in: {err}");
    }
}

#[test]
fn version_names_the_phone_metadata() {
    let version = ok(&["--version"]);
    assert!(
        version.contains("libphonenumber metadata 9.0.42"),
        "{version}"
    );
    assert_eq!(
        version.trim(),
        format!(
            "pseudonymizer {} (phone canonical forms: {})",
            env!("CARGO_PKG_VERSION"),
            pseudonymizer::phone::PHONE_METADATA
        )
    );
}

/// `schema derive` writes its own files in `--out` and nothing else: never through a link
/// placed at one of its names, and never two different schemas under one name.
#[test]
fn schema_derive_never_writes_through_a_link_nor_one_name_twice() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(common::repo().join("config/pipeline.toml"))
        .unwrap()
        .replace(
            "\"../schemas/",
            &format!("\"{}/", common::repo().join("schemas").display()),
        );
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, &shipped).unwrap();
    let out = dir.path().join("out");
    let said = ok(&["schema", "derive", "--config", s(&config), "--out", s(&out)]);
    let calls = out.join("comms.sanitized.v1.CallEvent.avsc");
    let messages = out.join("comms.sanitized.v1.MessageEvent.avsc");
    assert!(
        said.contains("CallEvent.avsc") && said.contains("MessageEvent.avsc"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&calls).unwrap(),
        std::fs::read(common::repo().join("schemas/comms.sanitized.v1.CallEvent.avsc")).unwrap()
    );

    // A link at one of its names: refused before anything is written, the linked file kept.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    std::fs::remove_file(&calls).unwrap();
    std::fs::remove_file(&messages).unwrap();
    std::os::unix::fs::symlink(&victim, &calls).unwrap();
    let ran = run(&["schema", "derive", "--config", s(&config), "--out", s(&out)]);
    assert_eq!(ran.status.code(), Some(1));
    let err = String::from_utf8_lossy(&ran.stderr);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(
        !messages.exists(),
        "nothing is written when one target is refused"
    );
    assert!(std::fs::symlink_metadata(&calls)
        .unwrap()
        .file_type()
        .is_symlink());
    // A directory at the second name: refused before the first is written.
    std::fs::remove_file(&calls).unwrap();
    std::fs::create_dir(&messages).unwrap();
    let ran = run(&["schema", "derive", "--config", s(&config), "--out", s(&out)]);
    assert_eq!(ran.status.code(), Some(1));
    let err = String::from_utf8_lossy(&ran.stderr);
    assert!(
        err.contains("exists and is not a regular file; nothing written"),
        "{err}"
    );
    assert!(
        !calls.exists(),
        "nothing is written when one target is refused"
    );
    std::fs::remove_dir(&messages).unwrap();
    // `--out` naming a file: said so.
    let ran = run(&[
        "schema",
        "derive",
        "--config",
        s(&config),
        "--out",
        s(&victim),
    ]);
    assert_eq!(ran.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("is not a directory"));

    // Two Avro pipelines deriving different records of one name (`comms.sanitized.v1.CallEvent`
    // from `comms.v1.CallEvent` and from `other.v1.CallEvent`): refused by `check` and by
    // `schema derive`, so neither overwrites the other's file or subject.
    let other_schema = dir.path().join("other.v1.CallEvent.avsc");
    std::fs::write(
        &other_schema,
        std::fs::read_to_string(common::repo().join("schemas/comms.v1.CallEvent.avsc"))
            .unwrap()
            .replacen(
                "\"namespace\": \"comms.v1\"",
                "\"namespace\": \"other.v1\"",
                1,
            ),
    )
    .unwrap();
    let calls_block = &shipped[shipped.find("[[pipeline]]").unwrap()
        ..shipped.find("[[pipeline]]\nname = \"messages\"").unwrap()];
    let second = calls_block
        .replace("name = \"calls\"", "name = \"other-calls\"")
        .replace(
            &format!(
                "{}/comms.v1.CallEvent.avsc",
                common::repo().join("schemas").display()
            ),
            s(&other_schema),
        )
        .replace("input_schema_id = 1", "input_schema_id = 3")
        .replace("output_schema_id = 101", "output_schema_id = 103")
        .replace("comms.calls.sanitized", "other.calls.sanitized");
    assert_ne!(second, calls_block);
    let clash = dir.path().join("clash.toml");
    std::fs::write(&clash, format!("{shipped}\n{second}")).unwrap();
    let clean = dir.path().join("clean");
    let ran = run(&[
        "schema",
        "derive",
        "--config",
        s(&clash),
        "--out",
        s(&clean),
    ]);
    assert_eq!(ran.status.code(), Some(1));
    let err = String::from_utf8_lossy(&ran.stderr);
    assert!(
        err.contains("[other-calls] its output record \"comms.sanitized.v1.CallEvent\" is also another Avro pipeline's"),
        "{err}"
    );
    assert!(!clean.exists());
}
