//! The security reviewer's toolkit, through the binary: the keyring sealed under a KEK,
//! the audit log of re-identification, re-sealing, crypto-shredding, and that no secret and no
//! raw value appears in anything the program writes (stdout, stderr, the audit log, `Debug`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pseudonymizer::envelope;
use pseudonymizer::keys::{Kek, KeySet, Keyring, Secret};
use serde_json::Value as Json;

/// Runs the binary with a clean environment for the variables the tests control.
fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"));
    command
        .args(args)
        .env_remove("PSEUDONYMIZER_KEK")
        .env_remove("PSEUDONYMIZER_KEK_FILE")
        .env_remove("PSEUDONYMIZER_AUDIT_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// Everything a command wrote, stdout and stderr.
fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = run(args, env);
    assert!(out.status.success(), "{args:?} failed: {}", said(&out));
    said(&out)
}

fn fail(args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = run(args, env);
    assert!(
        !out.status.success(),
        "{args:?} should fail: {}",
        said(&out)
    );
    said(&out)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The secrets of a clear keyring file (base64) and the same bytes in hex, for leak checks.
fn secrets(ring: &Path) -> Vec<String> {
    let json: Json = serde_json::from_str(&std::fs::read_to_string(ring).unwrap()).unwrap();
    let mut out = Vec::new();
    for key in json["keys"].as_array().unwrap() {
        if let Some(b64) = key["secret"].as_str() {
            let bytes = STANDARD.decode(b64).unwrap();
            out.push(b64.to_owned());
            out.push(b64[..16].to_owned());
            out.push(bytes.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    assert!(!out.is_empty());
    out
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "{what} shows a secret");
    }
}

#[test]
fn sealed_keyring_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keyring.json");
    let kek = dir.path().join("kek");
    let other_kek = dir.path().join("other-kek");
    let made = ok(&["keys", "new-kek", "--out", s(&kek)], &[]);
    assert!(made.contains("kek-"), "{made}");
    ok(&["keys", "new-kek", "--out", s(&other_kek)], &[]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fail(&["keys", "new-kek", "--out", s(&kek)], &[]); // never overwrites a KEK

    ok(&["keys", "init", "--keyring", s(&ring)], &[]);
    let clear_secrets = secrets(&ring);
    let with_kek = [("PSEUDONYMIZER_KEK_FILE", kek.as_path())];
    let sealed_msg = ok(&["keys", "seal", "--keyring", s(&ring)], &with_kek);
    assert!(sealed_msg.contains("sealed"), "{sealed_msg}");

    // At rest: the sealed form, no secret in any encoding.
    let text = std::fs::read_to_string(&ring).unwrap();
    let json: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(json["format"], "pseudonymizer-keyring-sealed/v1");
    assert_no_secret("the sealed file", &text, &clear_secrets);

    // No KEK, a wrong KEK, a tampered file: refused with a clear reason and no secret.
    let no_kek = fail(&["keys", "list", "--keyring", s(&ring)], &[]);
    assert!(no_kek.contains("PSEUDONYMIZER_KEK"), "{no_kek}");
    let wrong = fail(
        &["keys", "list", "--keyring", s(&ring)],
        &[("PSEUDONYMIZER_KEK_FILE", other_kek.as_path())],
    );
    assert!(wrong.contains("sealed under kek-"), "{wrong}");
    let tampered_path = dir.path().join("tampered.json");
    let mut tampered = json.clone();
    let sealed = tampered["keyring"].as_str().unwrap().to_owned();
    let mut bytes = STANDARD.decode(&sealed).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    tampered["keyring"] = Json::String(STANDARD.encode(bytes));
    std::fs::write(&tampered_path, tampered.to_string()).unwrap();
    std::fs::set_permissions(&tampered_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let refused = fail(&["keys", "list", "--keyring", s(&tampered_path)], &with_kek);
    assert!(refused.contains("does not authenticate"), "{refused}");

    // The keys commands read and write the sealed form.
    let list = ok(&["keys", "list", "--keyring", s(&ring)], &with_kek);
    assert!(
        list.contains("sealed under key-encryption key kek-"),
        "{list}"
    );
    ok(
        &[
            "keys",
            "rotate",
            "--keyring",
            s(&ring),
            "--purpose",
            "encryption",
            "--id",
            "e-2",
        ],
        &with_kek,
    );
    let text = std::fs::read_to_string(&ring).unwrap();
    assert!(
        text.contains("pseudonymizer-keyring-sealed/v1"),
        "rotate keeps it sealed"
    );
    let list = ok(&["keys", "list", "--keyring", s(&ring)], &with_kek);
    assert!(list.contains("e-2"), "{list}");

    // The KEK given directly in the environment works the same.
    let kek_text = std::fs::read_to_string(&kek).unwrap();
    let direct = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["keys", "list", "--keyring", s(&ring)])
        .env_remove("PSEUDONYMIZER_KEK_FILE")
        .env("PSEUDONYMIZER_KEK", kek_text.trim())
        .output()
        .unwrap();
    assert!(direct.status.success(), "{}", said(&direct));
    assert!(
        !said(&direct).contains(kek_text.trim()),
        "the KEK is never printed"
    );

    // The whole product runs on a sealed keyring: transform, then decrypt.
    let raw = dir.path().join("calls.avro");
    let out = dir.path().join("calls.sanitized.avro");
    let config = common::repo().join("config/pipeline.toml");
    ok(
        &[
            "generate",
            "--schema",
            "call",
            "--count",
            "50",
            "--output",
            s(&raw),
        ],
        &[],
    );
    ok(
        &[
            "transform",
            "--config",
            s(&config),
            "--keyring",
            s(&ring),
            "--input",
            s(&raw),
            "--output",
            s(&out),
        ],
        &with_kek,
    );

    // Unseal: back in clear, readable without a KEK, same keys.
    ok(&["keys", "unseal", "--keyring", s(&ring)], &with_kek);
    let unsealed = ok(&["keys", "list", "--keyring", s(&ring)], &[]);
    assert!(
        unsealed.contains("e-2") && !unsealed.contains("sealed under"),
        "{unsealed}"
    );
    let again = secrets(&ring);
    assert!(
        clear_secrets.iter().all(|s| again.contains(s)),
        "the same keys"
    );
    for text in [&list, &unsealed, &no_kek, &wrong, &refused] {
        assert_no_secret("keys output", text, &again);
        assert!(!text.contains(kek_text.trim()), "a KEK was printed");
    }
}

/// A sanitized file of `count` messages made with the keyring at `ring`.
fn sanitized_messages(dir: &Path, ring: &Path, name: &str, seed: u64) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.avro"));
    let out = dir.join(format!("{name}.sanitized.avro"));
    let config = common::repo().join("config/pipeline.toml");
    ok(
        &[
            "generate",
            "--schema",
            "message",
            "--count",
            "60",
            "--seed",
            &seed.to_string(),
            "--output",
            s(&raw),
        ],
        &[],
    );
    ok(
        &[
            "transform",
            "--config",
            s(&config),
            "--keyring",
            s(ring),
            "--input",
            s(&raw),
            "--output",
            s(&out),
        ],
        &[],
    );
    (raw, out)
}

fn decrypt(ring: &Path, input: &Path, audit: &Path) -> (Vec<Json>, String) {
    let config = common::repo().join("config/pipeline.toml");
    let out = run(
        &[
            "decrypt",
            "--config",
            s(&config),
            "--keyring",
            s(ring),
            "--input",
            s(input),
            "--audit-log",
            s(audit),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", said(&out));
    let lines = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn audit_lines(audit: &Path) -> Vec<Json> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn re_identification_is_audited_and_refused_without_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let audit = dir.path().join("audit.log");
    let (raw, sanitized) = sanitized_messages(dir.path(), &ring, "messages", 3);
    let raw_events = pseudonymizer::file::read_json(&raw, usize::MAX).unwrap();

    // No audit log configured: nothing is opened, nothing printed on stdout.
    let shipped = std::fs::read_to_string(common::repo().join("config/pipeline.toml")).unwrap();
    assert!(
        shipped.contains("\naudit_log = "),
        "the shipped config names an audit log"
    );
    let config = dir.path().join("no-audit.toml");
    let schemas = common::repo().join("schemas");
    std::fs::write(
        &config,
        shipped
            .replace("\naudit_log = ", "\n# audit_log = ")
            .replace("\"../schemas/", &format!("\"{}/", schemas.display())),
    )
    .unwrap();
    let refused = run(
        &[
            "decrypt",
            "--config",
            s(&config),
            "--keyring",
            s(&ring),
            "--input",
            s(&sanitized),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        refused.stdout.is_empty(),
        "decrypt printed without an audit log"
    );
    assert!(said(&refused).contains("audit"), "{}", said(&refused));
    let sender = raw_events[0]["sender"].as_str().unwrap();
    let refused = run(
        &["lookup", "--keyring", s(&ring), "--class", "phone", sender],
        &[],
    );
    assert!(!refused.status.success() && refused.stdout.is_empty());
    assert!(!audit.exists());

    let (opened, _) = decrypt(&ring, &sanitized, &audit);
    let bodies = opened.iter().filter(|e| e["body"].is_string()).count() as u64;
    let other = raw_events[1]["sender"].as_str().unwrap();
    let found = ok(
        &[
            "lookup",
            "--keyring",
            s(&ring),
            "--audit-log",
            s(&audit),
            "--class",
            "phone",
            sender,
            other,
        ],
        &[],
    );
    // The environment variable names the log too.
    ok(
        &["lookup", "--keyring", s(&ring), "--class", "phone", sender],
        &[("PSEUDONYMIZER_AUDIT_LOG", audit.as_path())],
    );

    let all = audit_lines(&audit);
    assert_eq!(
        all.len(),
        6,
        "two records per use: started, then the outcome"
    );
    let uid = std::fs::metadata(&ring).unwrap();
    use std::os::unix::fs::MetadataExt;
    for (n, line) in all.iter().enumerate() {
        assert_eq!(line["uid"].as_u64(), Some(u64::from(uid.uid())));
        assert!(!line["user"].as_str().unwrap().is_empty());
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["seq"].as_u64(), Some(n as u64 + 1));
        let want = if n % 2 == 0 { "started" } else { "ok" };
        assert_eq!(line["outcome"], want, "record {}", n + 1);
        assert_eq!(line["command"], all[n - n % 2]["command"]);
    }
    let lines: Vec<Json> = all.into_iter().skip(1).step_by(2).collect();
    assert_eq!(lines[0]["command"], "decrypt");
    assert_eq!(lines[0]["key_ids"], serde_json::json!(["e-test-1"]));
    assert_eq!(
        lines[0]["values"].as_u64(),
        Some(bodies + attachments(&opened))
    );
    assert_eq!(lines[0]["unopened"].as_u64(), Some(0));
    assert_eq!(lines[1]["command"], "lookup");
    assert_eq!(lines[1]["key_ids"], serde_json::json!(["p-test-1"]));
    assert_eq!(lines[1]["values"].as_u64(), Some(2));
    assert_eq!(lines[2]["values"].as_u64(), Some(1));

    // The log holds no value and no token; it is owner-only.
    let text = std::fs::read_to_string(&audit).unwrap();
    for event in &raw_events {
        for field in ["sender", "body", "sender_ip"] {
            if let Some(v) = event[field].as_str().filter(|v| v.len() >= 6) {
                assert!(!text.contains(v), "the audit log holds a raw {field}");
            }
        }
    }
    // (stdout and stderr: the warning about values on the command line is not JSON)
    for line in found.lines().filter(|l| l.starts_with('{')) {
        let token: Json = serde_json::from_str(line).unwrap();
        assert!(
            !text.contains(token["token"].as_str().unwrap()),
            "the audit log holds a token"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Envelopes in attachment URLs of decrypted events.
fn attachments(events: &[Json]) -> u64 {
    events
        .iter()
        .flat_map(|e| e["attachments"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["url"].is_string())
        .count() as u64
}

/// The key ids of every envelope of the body field in a sanitized file.
fn body_key_ids(file: &Path) -> Vec<String> {
    pseudonymizer::file::read_json(file, usize::MAX)
        .unwrap()
        .iter()
        .filter_map(|e| e["body"].as_str())
        .map(|b64| {
            let bytes = STANDARD.decode(b64).unwrap();
            envelope::key_id(&bytes).unwrap().to_owned()
        })
        .collect()
}

#[test]
fn reseal_retires_a_key_and_destroying_it_shreds_what_was_not_resealed() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let audit = dir.path().join("audit.log");
    let config = common::repo().join("config/pipeline.toml");
    let (raw, old) = sanitized_messages(dir.path(), &ring, "old", 7);
    ok(
        &[
            "keys",
            "rotate",
            "--keyring",
            s(&ring),
            "--purpose",
            "encryption",
            "--id",
            "e-new",
        ],
        &[],
    );
    let (_, new) = sanitized_messages(dir.path(), &ring, "new", 8);
    assert!(body_key_ids(&old).iter().all(|id| id == "e-test-1"));
    assert!(body_key_ids(&new).iter().all(|id| id == "e-new"));

    // Reseal the old file under the new key: every envelope moves, tokens stay.
    let resealed = dir.path().join("old.resealed.avro");
    let said = ok(
        &[
            "reseal",
            "--config",
            s(&config),
            "--keyring",
            s(&ring),
            "--input",
            s(&old),
            "--output",
            s(&resealed),
            "--audit-log",
            s(&audit),
        ],
        &[],
    );
    let records = audit_lines(&audit);
    assert_eq!(
        (&records[0]["command"], &records[0]["outcome"]),
        (&serde_json::json!("reseal"), &serde_json::json!("started"))
    );
    assert_eq!(records[1]["outcome"], "ok");
    assert!(
        records[1]["values"].as_u64().unwrap() > 0,
        "envelopes resealed are counted"
    );
    assert!(said.contains("under e-new"), "{said}");
    let ids = body_key_ids(&resealed);
    assert!(
        !ids.is_empty() && ids.iter().all(|id| id == "e-new"),
        "{ids:?}"
    );
    let before = pseudonymizer::file::read_json(&old, usize::MAX).unwrap();
    let after = pseudonymizer::file::read_json(&resealed, usize::MAX).unwrap();
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        for field in [
            "event_id",
            "sender",
            "recipients",
            "sender_ip",
            "occurred_at",
        ] {
            assert_eq!(b[field], a[field], "reseal leaves {field} alone");
        }
        if b["body"].is_string() {
            assert_ne!(b["body"], a["body"]);
        }
    }

    // Destroy the old key: its envelopes are shredded; everything resealed still opens.
    ok(
        &["keys", "destroy", "--keyring", s(&ring), "--id", "e-test-1"],
        &[],
    );
    let raw_events = pseudonymizer::file::read_json(&raw, usize::MAX).unwrap();
    let (opened, summary) = decrypt(&ring, &resealed, &audit);
    for (raw, opened) in raw_events.iter().zip(&opened) {
        assert_eq!(raw["body"], opened["body"]);
    }
    assert!(summary.contains(" 0 not opened"), "{summary}");
    let (shredded, summary) = decrypt(&ring, &old, &audit);
    let destroyed = shredded
        .iter()
        .filter(|e| e["body"]["unopened"] == "key destroyed")
        .count();
    let bodies = raw_events.iter().filter(|e| e["body"].is_string()).count();
    assert_eq!(
        destroyed, bodies,
        "every old body reports its key destroyed"
    );
    assert!(summary.contains("0 envelopes opened"), "{summary}");
    // Reported apart from envelopes that fail to open, and no failure: exit 0 (`decrypt`).
    assert!(
        summary.contains(&format!(
            "({} under destroyed keys, 0 did not open)",
            destroyed as u64 + attachments(&raw_events)
        )),
        "{summary}"
    );
    for (raw, shredded) in raw_events.iter().zip(&shredded) {
        assert_eq!(
            raw["event_id"], shredded["event_id"],
            "the rest of the event is there"
        );
    }
    let audit = audit_lines(&audit);
    assert_eq!(
        audit.last().unwrap()["unopened"].as_u64(),
        Some(destroyed as u64 + attachments(&raw_events))
    );

    // Resealing what can no longer be opened fails and leaves no partial output.
    let partial = dir.path().join("partial.avro");
    let error = fail(
        &[
            "reseal",
            "--config",
            s(&config),
            "--keyring",
            s(&ring),
            "--input",
            s(&old),
            "--output",
            s(&partial),
            "--audit-log",
            s(&dir.path().join("audit.log")),
        ],
        &[],
    );
    assert!(error.contains("destroyed"), "{error}");
    assert!(!partial.exists());
}

#[test]
fn destroying_a_pseudonym_key_unlinks_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let audit = dir.path().join("audit.log");
    let (raw, old) = sanitized_messages(dir.path(), &ring, "old", 9);
    let sender = pseudonymizer::file::read_json(&raw, 1).unwrap()[0]["sender"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_token = pseudonymizer::file::read_json(&old, 1).unwrap()[0]["sender"]
        .as_str()
        .unwrap()
        .to_owned();
    let lookup = || {
        ok(
            &[
                "lookup",
                "--keyring",
                s(&ring),
                "--audit-log",
                s(&audit),
                "--class",
                "phone",
                &sender,
            ],
            &[],
        )
    };
    assert!(
        lookup().contains(&old_token),
        "lookup links the subject before"
    );
    ok(
        &[
            "keys",
            "rotate",
            "--keyring",
            s(&ring),
            "--purpose",
            "pseudonym",
            "--id",
            "p-new",
        ],
        &[],
    );
    let both = lookup();
    assert!(
        both.contains(&old_token) && both.contains("p-new"),
        "{both}"
    );
    ok(
        &["keys", "destroy", "--keyring", s(&ring), "--id", "p-test-1"],
        &[],
    );
    let after = lookup();
    assert!(
        !after.contains(&old_token),
        "no one can link the old token any more"
    );
    assert!(
        !after.contains("p-test-1") && after.contains("p-new"),
        "{after}"
    );
    let list = ok(&["keys", "list", "--keyring", s(&ring)], &[]);
    assert!(
        list.contains("p-test-1") && list.contains("destroyed"),
        "the record stays"
    );
}

#[test]
fn debug_and_errors_never_show_a_secret() {
    let ring = common::test_keyring();
    let keys = KeySet::from_keyring(&ring);
    let engine = common::engine();
    let active = engine.active_keys(&keys).unwrap();
    let secret_b64 = [
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
    ];
    let kek = Kek::from_secret(&Secret::from_b64(secret_b64[0]).unwrap());
    let shown = format!(
        "{ring:?} {keys:?} {active:?} {kek:?} {:?} {:?}",
        ring.entries(),
        Secret::from_b64(secret_b64[1]).unwrap()
    );
    let mut forbidden: Vec<String> = secret_b64.iter().map(|s| s.to_string()).collect();
    for b64 in secret_b64 {
        let bytes = STANDARD.decode(b64).unwrap();
        forbidden.push(bytes.iter().map(|b| format!("{b:02x}")).collect());
        forbidden.push(
            format!("{:?}", &bytes[..8])
                .trim_end_matches(']')
                .to_owned(),
        );
    }
    assert_no_secret("Debug", &shown, &forbidden);

    // Keyring errors name fields and ids, never the secret that was wrong.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    let short = &secret_b64[0][..20];
    for text in [
        format!(
            r#"{{"format":"pseudonymizer-keyring/v1","keys":[{{"id":"p1","purpose":"pseudonym","state":"active","created_at":"2026-11-24T10:00:00Z","secret":"{short}"}}]}}"#
        ),
        format!(
            r#"{{"format":"pseudonymizer-keyring/v1","keys":[{{"id":"p1","purpose":"{short}","state":"active","created_at":"2026-11-24T10:00:00Z","secret":"{}"}}]}}"#,
            secret_b64[0]
        ),
        format!(
            r#"{{"format":"pseudonymizer-keyring/v1","keys":[{{"id":"p1","purpose":"pseudonym","state":"active","created_at":"2026-11-24T10:00:00Z","secret":["{}"]}}]}}"#,
            secret_b64[0]
        ),
    ] {
        std::fs::write(&path, &text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = Keyring::load(&path).unwrap_err().to_string();
        assert!(!error.contains(short), "{error}");
        let out = run(&["keys", "list", "--keyring", s(&path)], &[]);
        assert!(!out.status.success());
        assert_no_secret(
            "keys list error",
            &said(&out),
            &[short.to_owned(), secret_b64[0].to_owned()],
        );
    }
}

/// The audit is written ahead: with a log that cannot be written (`/dev/full`), `decrypt`
/// prints nothing and fails; a `decrypt` killed after its first output line has left its
/// `started` record on disk.
#[test]
fn the_audit_record_is_on_disk_before_any_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let (_, sanitized) = sanitized_messages(dir.path(), &ring, "messages", 5);
    let config = common::repo().join("config/pipeline.toml");
    let args = |audit: &Path| {
        [
            "decrypt".to_owned(),
            "--config".into(),
            s(&config).into(),
            "--keyring".into(),
            s(&ring).into(),
            "--input".into(),
            s(&sanitized).into(),
            "--audit-log".into(),
            s(audit).into(),
        ]
    };
    let full = run(
        &args(Path::new("/dev/full"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(
        !full.status.success(),
        "decrypt must fail when the audit cannot be written"
    );
    assert!(
        full.stdout.is_empty(),
        "decrypt printed before its audit record was written"
    );

    let audit = dir.path().join("audit.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(args(&audit))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with('{'), "a decrypted event: {first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let records = audit_lines(&audit);
    assert_eq!(records[0]["command"], "decrypt");
    assert_eq!(records[0]["outcome"], "started");
    assert_eq!(records[0]["key_ids"], serde_json::json!(["e-test-1"]));
}

/// `lookup` reads values from standard input; every use appends its records; `audit verify`
/// accepts the intact chain and names the first edited, removed or reordered record.
#[test]
fn the_audit_chain_shows_edits_removals_and_reordering() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let audit = dir.path().join("audit.log");
    for number in ["+6281234567890", "+6281234567891", "+6281234567892"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
            .args(["lookup", "--keyring", s(&ring), "--audit-log", s(&audit)])
            .args(["--class", "phone", "--values-from", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            format!("{number}\n").as_bytes(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", said(&out));
        assert!(
            !said(&out).contains("warning"),
            "no warning for values from stdin"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains(number));
    }
    // On the command line: works, with a warning.
    let out = run(
        &[
            "lookup",
            "--keyring",
            s(&ring),
            "--audit-log",
            s(&audit),
            "--class",
            "phone",
            "+6281234567893",
        ],
        &[],
    );
    assert!(out.status.success());
    assert!(
        said(&out).contains("warning: values on the command line"),
        "{}",
        said(&out)
    );

    let verify = |path: &Path| run(&["audit", "verify", "--audit-log", s(path)], &[]);
    let intact = verify(&audit);
    assert!(intact.status.success(), "{}", said(&intact));
    assert!(
        said(&intact).contains("8 records, chain intact"),
        "{}",
        said(&intact)
    );

    let lines: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let tampered = dir.path().join("tampered.log");
    let check = |lines: &[String], want: &str| {
        std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
        let out = verify(&tampered);
        assert!(!out.status.success(), "tampering not seen: {want}");
        assert!(said(&out).contains(want), "want {want:?}: {}", said(&out));
    };
    // Record 3 edited (one value count changed).
    let mut edited = lines.clone();
    edited[2] = edited[2].replace("\"values\":1", "\"values\":2");
    assert_ne!(edited[2], lines[2]);
    check(&edited, "record 3 was edited");
    // Record 4 removed.
    let mut removed = lines.clone();
    removed.remove(3);
    check(&removed, "record 4 says it is record 5");
    // Records 5 and 6 swapped.
    let mut swapped = lines.clone();
    swapped.swap(4, 5);
    check(&swapped, "record 5 says it is record 6");
    // A break does not hide what follows it: a line of garbage at 2, record 5 edited and
    // record 7 removed are all reported, and the head hash is printed in any case.
    let mut several = lines.clone();
    several[1] = "{}".to_owned();
    several[4] = several[4].replace("\"values\":1", "\"values\":9");
    several.remove(6);
    std::fs::write(&tampered, several.join("\n") + "\n").unwrap();
    let out = verify(&tampered);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "break: record 2 is not an audit record",
        "break: record 5 was edited",
        "break: record 7 says it is record 8",
        "chain broken (3 breaks)",
        "the chain is broken in 3 places",
    ] {
        assert!(text.contains(want), "want {want:?}: {text}");
    }
    let head = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(several.last().unwrap().as_bytes());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(text.contains(&format!("head sha256 {head}")), "{text}");
    assert_eq!(text.matches("break:").count(), 3, "{text}");
}

/// `transform` of a file with a keyring is audited like `lookup`: a `started` record before
/// any token is written and an outcome record with the count of tokens; without an audit log
/// it refuses, and writes nothing.
#[test]
fn transform_is_audited_like_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let config = common::repo().join("config/pipeline.toml");
    let raw = dir.path().join("raw.avro");
    let out = run(
        &[
            "generate",
            "--schema",
            "call",
            "--count",
            "20",
            "--output",
            s(&raw),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", said(&out));
    let audit = dir.path().join("audit.log");
    let sanitized = dir.path().join("sanitized.avro");
    let transform = |extra: &[&str]| {
        run(
            &[
                &[
                    "transform",
                    "--config",
                    s(&config),
                    "--keyring",
                    s(&ring),
                    "--input",
                    s(&raw),
                    "--output",
                    s(&sanitized),
                ][..],
                extra,
            ]
            .concat(),
            &[],
        )
    };
    let out = transform(&["--audit-log", s(&audit)]);
    assert!(out.status.success(), "{}", said(&out));
    let records: Vec<Json> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["command"], "transform");
    assert_eq!(records[0]["outcome"], "started");
    assert_eq!(records[1]["outcome"], "ok");
    assert_eq!(records[1]["key_ids"][0], "p-test-1");
    // Every call has at least its two phone numbers tokenized.
    let tokens = records[1]["values"].as_u64().unwrap();
    assert!(tokens >= 40, "{tokens} tokens counted");
    assert!(
        said(&out).contains(&format!("({tokens} tokens)")),
        "{}",
        said(&out)
    );
    assert!(run(&["audit", "verify", "--audit-log", s(&audit)], &[])
        .status
        .success());
}

/// The audit record's user is the passwd name of the real uid, or the uid alone when the
/// password database has none: never `$USER`, which the caller sets.
#[test]
fn the_audit_user_is_never_taken_from_the_environment() {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test runs a command under another uid, which needs root (CI runs as root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let uid = 64_999; // in no password database here
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    let ring = common::write_keyring(dir.path());
    std::os::unix::fs::chown(&ring, Some(uid), Some(uid)).unwrap();
    let audit = dir.path().join("audit.log");
    let out = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["lookup", "--keyring", s(&ring), "--audit-log", s(&audit)])
        .args(["--class", "phone", "+6281234567890"])
        .env("USER", "root")
        .env("LOGNAME", "root")
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let text = std::fs::read_to_string(&audit).unwrap();
    let first: Json = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["uid"], uid);
    assert_eq!(first["user"], format!("uid {uid}"), "{text}");
    // And as root, the password database's name, whatever $USER says.
    let root_audit = dir.path().join("root-audit.log");
    let out = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args([
            "lookup",
            "--keyring",
            s(&ring),
            "--audit-log",
            s(&root_audit),
        ])
        .args(["--class", "phone", "+6281234567890"])
        .env("USER", "mallory")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let text = std::fs::read_to_string(&root_audit).unwrap();
    let first: Json = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["user"], "root", "{text}");
}

/// `audit verify` calls only audit records a chain: a file of `{}` lines, other JSON, a
/// record with a field added or of the wrong type are refused; a FIFO is refused without
/// hanging. Commands refuse an audit log given as a symbolic link (its records could be sent
/// anywhere), and a long input path still gives a record the next one chains to.
#[test]
fn only_audit_records_make_an_intact_chain() {
    let dir = tempfile::tempdir().unwrap();
    let verify = |path: &Path| run(&["audit", "verify", "--audit-log", s(path)], &[]);
    let file = dir.path().join("not-audit.log");
    let genesis = "0".repeat(64);
    let good = format!(
        r#"{{"seq":1,"prev":"{genesis}","time":"2026-12-04T00:00:00Z","uid":1000,"user":"ana","command":"lookup","key_ids":["p-test-1"],"values":1,"outcome":"started"}}"#
    );
    for (text, name) in [
        ("{}\n{}\n".to_owned(), "empty objects"),
        ("[1,2]\n".to_owned(), "an array"),
        (
            r#"{"seq":1,"prev":"x"}"#.to_owned() + "\n",
            "chain fields only",
        ),
        (
            good.replace("\"values\":1", "\"values\":\"1\"") + "\n",
            "a wrong type",
        ),
        (
            good.replace("\"outcome\"", "\"extra\":1,\"outcome\"") + "\n",
            "an extra field",
        ),
        (
            good.replace("lookup", "rm -rf") + "\n",
            "an unknown command",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = verify(&file);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", said(&out));
        assert!(
            said(&out).contains("record 1 is not an audit record"),
            "{name}: {}",
            said(&out)
        );
    }
    std::fs::write(&file, good.clone() + "\n").unwrap();
    let out = verify(&file);
    assert!(out.status.success(), "{}", said(&out));

    let fifo = dir.path().join("fifo.log");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = std::time::Instant::now();
    let out = verify(&fifo);
    assert_eq!(out.status.code(), Some(1));
    assert!(said(&out).contains("FIFO"), "{}", said(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // A symbolic link as the audit log: refused, nothing written at its target.
    let ring = common::write_keyring(dir.path());
    let target = dir.path().join("elsewhere.log");
    std::fs::write(&target, "").unwrap();
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let lookup = |audit: &Path, extra: &[&str]| {
        run(
            &[
                &["lookup", "--keyring", s(&ring), "--audit-log", s(audit)][..],
                &["--class", "phone", "+6281234567890"],
                extra,
            ]
            .concat(),
            &[],
        )
    };
    let out = lookup(&link, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("symbolic link"), "{}", said(&out));
    assert_eq!(std::fs::read(&target).unwrap(), b"");

    // A decrypt of an input path far over 64 KiB, then another use: the chain holds.
    let audit = dir.path().join("audit.log");
    let config = common::repo().join("config/pipeline.toml");
    let long = format!("{}/{}", dir.path().display(), "a/".repeat(40_000));
    let out = run(
        &[
            "decrypt",
            "--config",
            s(&config),
            "--keyring",
            s(&ring),
            "--audit-log",
            s(&audit),
            "--input",
            &long,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "the input does not exist");
    assert!(lookup(&audit, &[]).status.success());
    let out = verify(&audit);
    assert!(out.status.success(), "{}", said(&out));
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.lines().all(|l| l.len() < 4096), "records are short");
    assert!(
        text.contains("…sha256:"),
        "the long path is recorded shortened: {text}"
    );
}

/// A command started with standard output and error closed (`>&-`) holds both on /dev/null
/// before it opens anything: otherwise the next file or socket it opened (the audit log, a
/// broker connection) would get descriptor 1 and receive its report. Rust's runtime does this
/// before `main` on Linux; this holds the binary to it (a hostile review asked).
#[test]
fn closed_standard_streams_are_held_on_dev_null() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = common::write_keyring(dir.path());
    let audit = dir.path().join("audit.log");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec '{}' lookup --keyring '{}' --class phone --values-from - --audit-log '{}' >&- 2>&-",
            env!("CARGO_BIN_EXE_pseudonymizer"),
            keyring.display(),
            audit.display()
        ))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let fd = |n: u32| std::fs::read_link(format!("/proc/{}/fd/{n}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // The program blocks reading the values from standard input: by then it has opened
    // everything it opens first.
    while !(fd(1).is_ok() && fd(2).is_ok()) {
        assert!(
            std::time::Instant::now() < deadline,
            "fds 1 and 2 never opened"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(fd(1).unwrap(), std::path::PathBuf::from("/dev/null"));
    assert_eq!(fd(2).unwrap(), std::path::PathBuf::from("/dev/null"));
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"+6591234567\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(
        log.lines()
            .all(|l| l.starts_with("{\"seq\":") && !l.contains("+659")),
        "{log}"
    );
}
