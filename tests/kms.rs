//! Keys rooted in a KMS, against a real KMS server over TCP: moto's AWS KMS emulator, which
//! scripts/test.sh installs and starts (scripts/kms.sh) and names in
//! `PSEUDONYMIZER_KMS_ENDPOINT`. The binary talks to it through the AWS SDK with test
//! credentials, exactly as to AWS KMS (`AWS_ENDPOINT_URL_KMS` points it there).
//!
//! - the key commands on a KMS keyring (`init`, `rotate`, `destroy`, `rewrap`) never write a
//!   clear secret, and wrapped secrets are bound to their entries;
//! - a KMS keyring gives exactly the tokens and envelopes of the same keys under a file KEK;
//! - the worker against Tansu: one KMS call per key per load, a KMS down at start (not ready,
//!   retried, then publishing) and at a reload (current keys kept, failure counted);
//! - every process is hardened: no core dumps, no KEK left in `/proc/PID/environ`.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::kafka::{self, Collected, Inputs, Topics};
use common::process::{free_port, metric, sigterm, wait_exit, wait_log, wait_ready};
use common::proxy::Proxy;
use common::Reaped;
use serde_json::Value as Json;

/// The test KMS: its endpoint and the Python environment that can create keys in it.
struct TestKms {
    endpoint: String,
    python: String,
}

fn test_kms() -> TestKms {
    let endpoint = std::env::var("PSEUDONYMIZER_KMS_ENDPOINT").expect(
        "PSEUDONYMIZER_KMS_ENDPOINT is not set: run the tests with scripts/test.sh, which starts the KMS emulator",
    );
    TestKms {
        endpoint,
        python: common::python(),
    }
}

impl TestKms {
    /// A new symmetric KMS key; its `aws-kms://` URI.
    fn create_key(&self) -> String {
        let output = Command::new(&self.python)
            .arg(common::repo().join("tests/kms/moto_kms.py"))
            .args([&self.endpoint, "create-key"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!(
            "aws-kms://{}",
            String::from_utf8(output.stdout).unwrap().trim()
        )
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.trim_start_matches("http://").parse().unwrap()
    }
}

/// The binary with test AWS credentials, its KMS endpoint at `endpoint`.
fn pseudonymizer(endpoint: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"));
    command
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_KMS", endpoint)
        .env_remove("PSEUDONYMIZER_KEK")
        .env_remove("PSEUDONYMIZER_KEK_FILE")
        .env_remove("PSEUDONYMIZER_AUDIT_LOG");
    command
}

fn said(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}

fn ok(kms: &TestKms, args: &[&str]) -> String {
    let output = pseudonymizer(&kms.endpoint).args(args).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", said(&output));
    said(&output)
}

fn fails(kms: &TestKms, args: &[&str]) -> String {
    let output = pseudonymizer(&kms.endpoint).args(args).output().unwrap();
    assert!(
        !output.status.success(),
        "{args:?} should fail: {}",
        said(&output)
    );
    said(&output)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every secret of a clear keyring file, as base64 and as hex and raw bytes.
fn secrets_of(clear: &Path) -> Vec<Vec<u8>> {
    let json: Json = serde_json::from_str(&std::fs::read_to_string(clear).unwrap()).unwrap();
    let mut out = Vec::new();
    for key in json["keys"].as_array().unwrap() {
        if let Some(b64) = key["secret"].as_str() {
            let bytes = STANDARD.decode(b64).unwrap();
            out.push(b64.as_bytes().to_vec());
            out.push(
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into_bytes(),
            );
            out.push(bytes);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file in `dir` and its contents.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Generates messages and transforms them with `ring`.
fn transform(kms: &TestKms, dir: &Path, ring: &Path, name: &str) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.avro"));
    let out = dir.join(format!("{name}.sanitized.avro"));
    let config = common::repo().join("config/pipeline.toml");
    let (generated, text) = common::process::cli(&[
        "generate",
        "--schema",
        "message",
        "--count",
        "40",
        "--seed",
        "9",
        "--output",
        s(&raw),
    ]);
    assert!(generated, "{text}");
    ok(
        kms,
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
    );
    (raw, out)
}

fn tokens(file: &Path) -> Vec<Json> {
    pseudonymizer::file::read_json(file, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| {
            serde_json::json!([
                e["sender"],
                e["recipients"],
                e["message_id"],
                e["sender_ip"]
            ])
        })
        .collect()
}

#[test]
fn kms_keyring_commands_never_write_a_clear_secret() {
    let kms = test_kms();
    let (first, second) = (kms.create_key(), kms.create_key());
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keyring.json");
    let mut written = Vec::new();

    let said = ok(
        &kms,
        &["keys", "init", "--keyring", s(&ring), "--kms", &first],
    );
    assert!(said.contains(&format!("wrapped by {first}")), "{said}");
    written.extend(files(dir.path()));
    let (_, before) = transform(&kms, dir.path(), &ring, "before");
    for purpose in ["pseudonym", "encryption"] {
        ok(
            &kms,
            &[
                "keys",
                "rotate",
                "--keyring",
                s(&ring),
                "--purpose",
                purpose,
            ],
        );
        written.extend(files(dir.path()));
    }
    // The first pseudonym key, now retired, is destroyed: its wrapped secret leaves the file.
    let json: Json = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    let first_pseudonym = json["keys"][0]["id"].as_str().unwrap().to_owned();
    ok(
        &kms,
        &[
            "keys",
            "destroy",
            "--keyring",
            s(&ring),
            "--id",
            &first_pseudonym,
        ],
    );
    written.extend(files(dir.path()));
    let said = ok(
        &kms,
        &["keys", "rewrap", "--keyring", s(&ring), "--kms", &second],
    );
    assert!(said.contains(&format!("to {second}")), "{said}");
    written.extend(files(dir.path()));
    let listed = ok(&kms, &["keys", "list", "--keyring", s(&ring)]);
    assert!(listed.contains(&format!("wrapped by {second}")), "{listed}");
    assert!(
        listed.contains("destroyed") && listed.contains("retired"),
        "{listed}"
    );

    // The rewrapped keyring still opens what was sealed before any of this (under the first
    // encryption key, retired but not destroyed).
    let config = common::repo().join("config/pipeline.toml");
    let audit = dir.path().join("audit.log");
    let decrypted = ok(
        &kms,
        &[
            "decrypt",
            "--config",
            s(&config),
            "--keyring",
            s(&ring),
            "--input",
            s(&before),
            "--audit-log",
            s(&audit),
        ],
    );
    assert!(decrypted.contains(" 0 not opened"), "{decrypted}");

    // Under the first KMS key the wrapped secrets no longer open.
    let text = std::fs::read_to_string(&ring)
        .unwrap()
        .replace(&second, &first);
    let old = dir.path().join("old-kms.json");
    std::fs::write(&old, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600)).unwrap();
    let refused = fails(
        &kms,
        &["check", "--config", s(&config), "--keyring", s(&old)],
    );
    assert!(refused.contains("refused"), "{refused}");

    // Now the secrets, in clear, for the scan: nothing written above holds any of them.
    let clear = dir.path().join("clear.json");
    std::fs::copy(&ring, &clear).unwrap();
    ok(&kms, &["keys", "unseal", "--keyring", s(&clear)]);
    let secrets = secrets_of(&clear);
    assert_eq!(
        secrets.len(),
        4 * 3,
        "four live keys (one of them the subject key)"
    );
    assert!(!written.is_empty());
    for (path, bytes) in &written {
        for secret in &secrets {
            assert!(
                !contains(bytes, secret),
                "{} holds a clear secret",
                path.display()
            );
        }
    }
}

#[test]
fn wrapped_secrets_swapped_between_entries_are_refused_naming_the_entry() {
    let kms = test_kms();
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keyring.json");
    ok(
        &kms,
        &["keys", "init", "--keyring", s(&ring), "--kms", &key],
    );
    let mut json: Json = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    let keys = json["keys"].as_array_mut().unwrap();
    let first_id = keys[0]["id"].as_str().unwrap().to_owned();
    let a = keys[0]["wrapped_secret"].clone();
    keys[0]["wrapped_secret"] = keys[1]["wrapped_secret"].clone();
    keys[1]["wrapped_secret"] = a;
    std::fs::write(&ring, serde_json::to_string(&json).unwrap()).unwrap();
    let config = common::repo().join("config/pipeline.toml");
    let said = fails(
        &kms,
        &["check", "--config", s(&config), "--keyring", s(&ring)],
    );
    assert!(said.contains(&format!("key {first_id:?}")), "{said}");
    assert!(said.contains("refused"), "{said}");
    assert!(said.contains("moved from another entry"), "{said}");
}

/// The metadata a KMS keyring keeps in clear is authenticated by its manifest: a state edited
/// in the file (the destroyed key's entry made active again, the active one retired) or a
/// generation changed is refused; a version-1 file (no manifest) still loads, and is written
/// from only by `keys upgrade`, which makes it version 2.
#[test]
fn edited_states_of_a_kms_keyring_are_refused_and_v1_files_are_upgraded() {
    let kms = test_kms();
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keyring.json");
    ok(
        &kms,
        &["keys", "init", "--keyring", s(&ring), "--kms", &key],
    );
    let first: Json = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    assert_eq!(first["format"], "pseudonymizer-keyring-kms/v2");
    assert_eq!(first["generation"], 1);
    let pseudonym = first["keys"][0]["id"].as_str().unwrap().to_owned();
    ok(
        &kms,
        &[
            "keys",
            "rotate",
            "--keyring",
            s(&ring),
            "--purpose",
            "pseudonym",
            "--id",
            "p-kms-2",
        ],
    );
    let rotated: Json = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    assert_eq!(rotated["generation"], 2);
    let config = common::repo().join("config/pipeline.toml");
    let check = |path: &Path| {
        pseudonymizer(&kms.endpoint)
            .args(["check", "--config", s(&config), "--keyring", s(path)])
            .output()
            .unwrap()
    };
    assert!(check(&ring).status.success(), "{}", said(&check(&ring)));
    // The retired key made active again, the new one retired: the secrets are untouched.
    let mut edited = rotated.clone();
    for entry in edited["keys"].as_array_mut().unwrap() {
        if entry["id"] == pseudonym.as_str() {
            entry["state"] = "active".into();
        } else if entry["id"] == "p-kms-2" {
            entry["state"] = "retired".into();
        }
    }
    let tampered = dir.path().join("tampered.json");
    common::write_secret(&tampered, serde_json::to_string(&edited).unwrap());
    let out = check(&tampered);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains("manifest does not match"),
        "{}",
        said(&out)
    );
    // An operator's next write does not sign the edit anew: rotate and destroy refuse it and
    // leave the file as it was.
    let before = std::fs::read(&tampered).unwrap();
    for args in [
        vec![
            "keys",
            "rotate",
            "--keyring",
            s(&tampered),
            "--purpose",
            "encryption",
        ],
        vec![
            "keys",
            "destroy",
            "--keyring",
            s(&tampered),
            "--id",
            "p-kms-2",
        ],
    ] {
        let out = pseudonymizer(&kms.endpoint).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", said(&out));
        assert!(
            said(&out).contains("manifest does not match"),
            "{}",
            said(&out)
        );
        assert_eq!(std::fs::read(&tampered).unwrap(), before, "{args:?}");
    }
    // A generation raised by hand (to pass for newer than a worker's): refused too.
    let mut newer = rotated.clone();
    newer["generation"] = 99.into();
    common::write_secret(&tampered, serde_json::to_string(&newer).unwrap());
    assert!(said(&check(&tampered)).contains("manifest does not match"));
    // Version 1: no generation, no manifest. It loads, and the next write upgrades it.
    let mut v1 = rotated.clone();
    v1["format"] = "pseudonymizer-keyring-kms/v1".into();
    v1.as_object_mut().unwrap().remove("generation");
    v1.as_object_mut().unwrap().remove("manifest");
    let old = dir.path().join("v1.json");
    common::write_secret(&old, serde_json::to_string(&v1).unwrap());
    assert!(check(&old).status.success(), "{}", said(&check(&old)));
    // Nothing writes from it but `keys upgrade` (the next write would vouch for states that
    // nothing authenticated): rotate, destroy, export and rewrap refuse it, untouched.
    let v1_text = std::fs::read(&old).unwrap();
    let export = dir.path().join("export.json");
    for args in [
        vec!["keys", "destroy", "--keyring", s(&old), "--id", &pseudonym],
        vec![
            "keys",
            "rotate",
            "--keyring",
            s(&old),
            "--purpose",
            "pseudonym",
        ],
        vec![
            "keys",
            "export",
            "--keyring",
            s(&old),
            "--for",
            "worker",
            "--out",
            s(&export),
        ],
        vec!["keys", "rewrap", "--keyring", s(&old), "--kms", &key],
    ] {
        let out = pseudonymizer(&kms.endpoint).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", said(&out));
        assert!(said(&out).contains("keys upgrade"), "{}", said(&out));
        assert_eq!(std::fs::read(&old).unwrap(), v1_text);
    }
    assert!(!export.exists());
    let said_upgrade = ok(&kms, &["keys", "upgrade", "--keyring", s(&old)]);
    assert!(said_upgrade.contains("upgraded"), "{said_upgrade}");
    let upgraded: Json = serde_json::from_slice(&std::fs::read(&old).unwrap()).unwrap();
    assert_eq!(upgraded["format"], "pseudonymizer-keyring-kms/v2");
    assert_eq!(upgraded["generation"], 1);
    assert_eq!(upgraded["keyring_id"], rotated["keyring_id"]);
    assert!(upgraded["manifest"].is_string());
    assert!(check(&old).status.success(), "{}", said(&check(&old)));
    ok(
        &kms,
        &["keys", "destroy", "--keyring", s(&old), "--id", &pseudonym],
    );
    assert!(ok(&kms, &["keys", "upgrade", "--keyring", s(&old)]).contains("already"));
}

#[test]
fn a_kms_keyring_gives_the_tokens_and_envelopes_of_the_same_keys_under_a_file_kek() {
    let kms = test_kms();
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let clear = common::write_keyring(dir.path());
    let kek_ring = dir.path().join("kek.json");
    let kms_ring = dir.path().join("kms.json");
    std::fs::copy(&clear, &kek_ring).unwrap();
    std::fs::copy(&clear, &kms_ring).unwrap();
    let kek = dir.path().join("kek.b64");
    ok(&kms, &["keys", "new-kek", "--out", s(&kek)]);
    let sealed = pseudonymizer(&kms.endpoint)
        .args(["keys", "seal", "--keyring", s(&kek_ring)])
        .env("PSEUDONYMIZER_KEK_FILE", &kek)
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", said(&sealed));
    // A KEK-sealed keyring moves to the KMS in memory: no clear file in between.
    let moved = dir.path().join("moved.json");
    std::fs::copy(&kek_ring, &moved).unwrap();
    let wrapped = pseudonymizer(&kms.endpoint)
        .args(["keys", "seal", "--keyring", s(&moved), "--kms", &key])
        .env("PSEUDONYMIZER_KEK_FILE", &kek)
        .output()
        .unwrap();
    assert!(wrapped.status.success(), "{}", said(&wrapped));
    ok(
        &kms,
        &["keys", "seal", "--keyring", s(&kms_ring), "--kms", &key],
    );

    let (raw, under_kms) = transform(&kms, dir.path(), &kms_ring, "kms");
    let (_, under_moved) = transform(&kms, dir.path(), &moved, "moved");
    let under_kek = dir.path().join("kek.sanitized.avro");
    let config = common::repo().join("config/pipeline.toml");
    let output = pseudonymizer(&kms.endpoint)
        .args([
            "transform",
            "--config",
            s(&config),
            "--keyring",
            s(&kek_ring),
        ])
        .args(["--input", s(&raw), "--output", s(&under_kek)])
        .env("PSEUDONYMIZER_KEK_FILE", &kek)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(tokens(&under_kms), tokens(&under_kek));
    assert_eq!(tokens(&under_moved), tokens(&under_kek));
    let senders: HashSet<String> = tokens(&under_kms)
        .iter()
        .map(|t| t[0].to_string())
        .collect();
    assert!(senders.len() > 5, "real tokens: {senders:?}");

    // Envelopes made under one open with the other: the same keys.
    let audit = dir.path().join("audit.log");
    let raw_events = pseudonymizer::file::read_json(&raw, usize::MAX).unwrap();
    for (ring, file, kek_env) in [
        (&kms_ring, &under_kek, false),
        (&kek_ring, &under_kms, true),
    ] {
        let mut command = pseudonymizer(&kms.endpoint);
        command.args(["decrypt", "--config", s(&config), "--keyring", s(ring)]);
        command.args(["--input", s(file), "--audit-log", s(&audit)]);
        if kek_env {
            command.env("PSEUDONYMIZER_KEK_FILE", &kek);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", said(&output));
        let opened: Vec<Json> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for (raw, opened) in raw_events.iter().zip(&opened) {
            assert_eq!(raw["body"], opened["body"]);
        }
    }
}

/// The worker on a KMS keyring whose KMS it reaches through a proxy the test can cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_on_a_kms_keyring_rides_out_kms_outages_at_start_and_at_reload() {
    let kms = test_kms();
    let key = kms.create_key();
    let brokers = kafka::tansu();
    let topics = Topics::unique("kms");
    topics.create(&brokers, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka::write_config(dir.path(), &topics, &brokers, "");
    let metrics_addr = common::process::serve_metrics(&config);
    // The test keyring (p-test-1, e-test-1), wrapped by the KMS: the same keys as ever.
    let ring = dir.path().join("keyring.json");
    ok(
        &kms,
        &["keys", "seal", "--keyring", s(&ring), "--kms", &key],
    );

    // 1. The KMS is unreachable when the worker starts.
    let proxy_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(proxy_addr, kms.addr()).await;
    proxy.set_up(false);
    let log = dir.path().join("worker.log");
    let mut worker = Reaped(
        pseudonymizer(&format!("http://{proxy_addr}"))
            .args(["run", "--config", s(&config)])
            .env("RUST_LOG", "pseudonymizer=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let unavailable = "the KMS is unavailable; not ready, retrying";
    wait_log(&log, unavailable, 1, Duration::from_secs(60));
    assert!(kafka::http_get(metrics_addr, "/readyz").contains(" 503 "));
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker stays up"
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("ERROR"));

    // 2. The KMS comes back: the keys load, the worker becomes ready and publishes.
    proxy.set_up(true);
    wait_ready(metrics_addr);
    let mut inputs = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 200, 41, &[], &mut inputs).await;
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 200
    });
    kafka::verify_outputs(&got, &topics, &inputs);
    // One KMS unwrap per key per load (the active pseudonym and encryption keys) and one for
    // the keyring's manifest. None per record.
    let unwraps = |result: &str| {
        metric(
            metrics_addr,
            &format!("pseudonymizer_kms_calls_total{{operation=\"unwrap\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(unwraps("ok"), 3);
    assert!(unwraps("failed") >= 1);

    // 3. The KMS goes away again, and the keyring changes: the reload fails, the worker keeps
    // its keys (outputs still under e-test-1, which verify_outputs checks) and counts it.
    proxy.set_up(false);
    ok(
        &kms,
        &[
            "keys",
            "rotate",
            "--keyring",
            s(&ring),
            "--purpose",
            "encryption",
            "--id",
            "e-kms-2",
        ],
    );
    wait_log(&log, "keyring REFUSED", 1, Duration::from_secs(30));
    // `/metrics` is rendered at most once a second (endpoint.rs): the page read right after
    // the log line may be the one from just before it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(
        metrics_addr,
        "pseudonymizer_keyring_reloads_total{result=\"refused\"}",
    ) < 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused reload is not counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut more = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 100, 42, &[], &mut more).await;
    for (id, event) in &more.by_id {
        inputs.by_id.insert(id.clone(), event.clone());
    }
    inputs.raw_values.extend(more.raw_values.iter().cloned());
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 300
    });
    kafka::verify_outputs(&got, &topics, &inputs);

    // 4. The KMS is back: the worker retries on its own (backoff), and the new key applies.
    proxy.set_up(true);
    wait_log(&log, "keyring reloaded", 1, Duration::from_secs(60));
    assert_eq!(
        unwraps("ok"),
        6,
        "three more unwraps for the reload (two keys, the manifest)"
    );
    sigterm(&worker.0);
    assert!(wait_exit(&mut worker.0, Duration::from_secs(40)).success());
}

/// A worker given its KEK in the environment: the KEK is gone from /proc/PID/environ, core
/// dumps are off and the process is not dumpable (as it reads back from the kernel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaves_no_kek_in_its_environment_and_dumps_no_core() {
    let kms = test_kms();
    let brokers = kafka::tansu();
    let topics = Topics::unique("harden");
    topics.create(&brokers, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka::write_config(dir.path(), &topics, &brokers, "");
    let ring = dir.path().join("keyring.json");
    let kek_file = dir.path().join("kek.b64");
    ok(&kms, &["keys", "new-kek", "--out", s(&kek_file)]);
    let kek = std::fs::read_to_string(&kek_file)
        .unwrap()
        .trim()
        .to_owned();
    let sealed = pseudonymizer(&kms.endpoint)
        .args(["keys", "seal", "--keyring", s(&ring)])
        .env("PSEUDONYMIZER_KEK", &kek)
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{}", said(&sealed));

    let log = dir.path().join("worker.log");
    let mut worker = Reaped(
        pseudonymizer(&kms.endpoint)
            .args(["run", "--config", s(&config)])
            .env("RUST_LOG", "pseudonymizer=info")
            .env("PSEUDONYMIZER_KEK", &kek)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let text = wait_log(
        &log,
        "core dumps off (RLIMIT_CORE 0, not dumpable)",
        1,
        Duration::from_secs(30),
    );
    assert!(text.contains("kek_taken_from_environment=true"), "{text}");
    // The sealed keyring opened: the KEK is still in the process, out of its environment.
    wait_log(&log, "subscribed", 1, Duration::from_secs(60));
    let pid = worker.0.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !contains(&environ, kek.as_bytes()),
        "the KEK is in /proc/{pid}/environ"
    );
    assert!(!contains(&environ, &kek.as_bytes()[..12]));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    sigterm(&worker.0);
    assert!(wait_exit(&mut worker.0, Duration::from_secs(40)).success());

    // The documented opt-in for debugging keeps core dumps, and says so.
    let log = dir.path().join("opt-in.log");
    let mut debugging = Reaped(
        pseudonymizer(&kms.endpoint)
            .args(["run", "--config", s(&config)])
            .env("RUST_LOG", "pseudonymizer=info")
            .env("PSEUDONYMIZER_KEK", &kek)
            .env("PSEUDONYMIZER_ALLOW_CORE_DUMPS", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_log(&log, "core dumps are possible", 1, Duration::from_secs(30));
    sigterm(&debugging.0);
    assert!(wait_exit(&mut debugging.0, Duration::from_secs(40)).success());
}

/// `keys export --for worker` of a KMS keyring: only the active entries, still wrapped (no
/// clear secret ever), at the source's generation with a manifest of its own that every
/// reader checks; an edited source is refused rather than exported.
#[test]
fn a_kms_keyring_exports_a_workers_part_with_its_own_manifest() {
    let kms = test_kms();
    let key = kms.create_key();
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keyring.json");
    ok(
        &kms,
        &["keys", "init", "--keyring", s(&ring), "--kms", &key],
    );
    let first: Json = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    let old = first["keys"][0]["id"].as_str().unwrap().to_owned();
    ok(
        &kms,
        &[
            "keys",
            "rotate",
            "--keyring",
            s(&ring),
            "--purpose",
            "pseudonym",
        ],
    );
    let full: Json = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    let worker = dir.path().join("worker.json");
    ok(
        &kms,
        &[
            "keys",
            "export",
            "--keyring",
            s(&ring),
            "--for",
            "worker",
            "--out",
            s(&worker),
        ],
    );
    let exported: Json = serde_json::from_slice(&std::fs::read(&worker).unwrap()).unwrap();
    assert_eq!(exported["format"], "pseudonymizer-keyring-kms/v2");
    assert_eq!(exported["generation"], full["generation"]);
    assert_eq!(exported["keyring_id"], full["keyring_id"]);
    assert_ne!(exported["manifest"], full["manifest"]);
    let ids: Vec<&str> = exported["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "the active pseudonym, encryption and subject keys: {ids:?}"
    );
    assert!(!ids.contains(&old.as_str()));
    assert!(exported["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["state"] == "active" && k.get("secret").is_none()));
    let config = common::repo().join("config/pipeline.toml");
    ok(
        &kms,
        &["check", "--config", s(&config), "--keyring", s(&worker)],
    );
    // The retired key put back into the export does not pass: the manifest binds the entries.
    let mut widened = exported.clone();
    widened["keys"]
        .as_array_mut()
        .unwrap()
        .push(full["keys"][0].clone());
    let tampered = dir.path().join("widened.json");
    common::write_secret(&tampered, serde_json::to_string(&widened).unwrap());
    let out = pseudonymizer(&kms.endpoint)
        .args(["check", "--config", s(&config), "--keyring", s(&tampered)])
        .output()
        .unwrap();
    assert!(
        said(&out).contains("manifest does not match"),
        "{}",
        said(&out)
    );
    // An edited source is refused, and nothing is written.
    let again = dir.path().join("again.json");
    let out = pseudonymizer(&kms.endpoint)
        .args([
            "keys",
            "export",
            "--keyring",
            s(&tampered),
            "--for",
            "worker",
            "--out",
            s(&again),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(!again.exists());
}
