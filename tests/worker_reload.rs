//! Live key rotation against the real broker (Tansu), through the binary: both purposes are
//! rotated mid-stream by rewriting the keyring file; a broken keyring is refused while the
//! worker carries on; SIGHUP reloads. Every output record is made with exactly one key set and
//! its headers name it; nothing is lost; the rotation policy warns; and neither the worker's
//! log nor its metrics page holds a raw value, a token or a secret.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use common::kafka::{self, http_get, Collected, Inputs, Topics};
use pseudonymizer::envelope;
use pseudonymizer::keys::{KeySet, Keyring, Purpose};
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::token::{self, TokenClass};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the worker's log holds `needle` at least `times` times.
fn wait_log(log: &Path, needle: &str, times: usize) -> String {
    common::process::wait_log(log, needle, times, Duration::from_secs(30))
}

/// Replaces a file's content in one step (temporary file, then rename), as a deploy tool would:
/// the worker never sees it half written.
fn replace_file(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    file.write_all(bytes).unwrap();
    drop(file);
    std::fs::rename(&tmp, path).unwrap();
}

fn header(message: &OwnedMessage, key: &str) -> String {
    let headers = message.headers().expect("output has headers");
    let value = headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .unwrap_or_else(|| panic!("no header {key}"));
    String::from_utf8(value.to_vec()).unwrap()
}

fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_keys_mid_stream_without_restart_or_loss() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("rotate");
    topics.create(&brokers, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka::write_config(dir.path(), &topics, &brokers, "");
    let ring_path = dir.path().join("keyring.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "shutdown_timeout_secs = 20",
        &format!("shutdown_timeout_secs = 20\nmetrics_listen = \"127.0.0.1:{port}\""),
    ) + "\n[rotation]\nencryption_max_age_days = 1\nwarn_fraction = 0.00001\ncheck_interval_secs = 1\n";
    std::fs::write(&config, text).unwrap();
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let log = dir.path().join("worker.log");
    let mut worker = common::Reaped(
        Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    let mut inputs = Inputs::default();

    // 1. Under the first keys.
    kafka::produce(&brokers, &topics.raw, 1500, 31, &[], &mut inputs).await;
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 1500
    });

    // 2. Rotate both purposes in one atomic write while records are flowing.
    let flowing = {
        let brokers = brokers.clone();
        let raw = topics.raw.clone();
        tokio::spawn(async move {
            let mut more = Inputs::default();
            kafka::produce(&brokers, &raw, 3000, 32, &[], &mut more).await;
            more
        })
    };
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 1700
    });
    let mut ring = Keyring::load(&ring_path).unwrap();
    ring.rotate(Purpose::Pseudonym, Some("p-test-2".into()))
        .unwrap();
    ring.rotate(Purpose::Encryption, Some("e-test-2".into()))
        .unwrap();
    ring.save(&ring_path).unwrap();
    let rotated = std::fs::read(&ring_path).unwrap();
    wait_log(&log, "keyring reloaded", 1);
    let more = flowing.await.unwrap();
    inputs.by_id.extend(more.by_id);
    inputs.raw_values.extend(more.raw_values);
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 4500
    });

    // 3. A broken keyring is refused; the worker carries on with the keys it has.
    replace_file(
        &ring_path,
        b"{\"format\": \"pseudonymizer-keyring/v1\", \"keys\": [",
    );
    wait_log(&log, "keyring REFUSED", 1);
    let mut after_refusal = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 500, 33, &[], &mut after_refusal).await;
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 5000
    });

    // 4. The good file back (a change: reload), then SIGHUP (no change: reload anyway).
    replace_file(&ring_path, &rotated);
    wait_log(&log, "keyring reloaded", 2);
    signal(&worker, "HUP");
    wait_log(&log, "SIGHUP: reloading", 1);
    wait_log(&log, "keyring reloaded", 3);
    let mut after_hup = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 500, 34, &[], &mut after_hup).await;
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 5500
    });
    let log_text = wait_log(&log, "due for rotation", 1);

    let page = http_get(metrics_addr, "/metrics");
    signal(&worker, "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "worker did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "worker exit status {status}");

    // Metrics: three reloads applied, one refused, the new keys active, the policy warning up.
    let reloads = |result: &str| {
        metric(
            &page,
            &format!("pseudonymizer_keyring_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(reloads("applied"), Some(3.0), "{page}");
    assert_eq!(reloads("refused"), Some(1.0), "{page}");
    assert_eq!(
        metric(
            &page,
            "pseudonymizer_active_key{key_id=\"p-test-2\",purpose=\"pseudonym\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "pseudonymizer_key_rotation_due{key_id=\"e-test-2\",reason=\"age\"}"
        ),
        Some(1.0),
        "{page}"
    );

    // Every output is made with exactly one key set, which its headers name.
    for extra in [&after_refusal, &after_hup] {
        for (id, event) in &extra.by_id {
            inputs.by_id.insert(id.clone(), event.clone());
        }
        inputs.raw_values.extend(extra.raw_values.iter().cloned());
    }
    let keys = KeySet::from_keyring(&Keyring::load(&ring_path).unwrap());
    let phone = PhoneCanon::new("ID").unwrap();
    let mut sets: HashMap<(String, String), usize> = HashMap::new();
    let mut tokens = Vec::new();
    let late: HashSet<&String> = after_refusal
        .by_id
        .keys()
        .chain(after_hup.by_id.keys())
        .collect();
    for message in &got.outputs {
        let (p, e) = (
            header(message, "pseudonymizer.pseudonym-key"),
            header(message, "pseudonymizer.encryption-key"),
        );
        let engine = common::engine();
        let (name, key_field) = if message.topic() == topics.calls {
            ("comms.v1.CallEvent", "caller")
        } else {
            ("comms.v1.MessageEvent", "sender")
        };
        let output = common::decode(
            &engine.plan(name).unwrap().output,
            &message.payload().unwrap()[5..],
        );
        let id = kafka::text(common::field(&output, "event_id")).unwrap();
        let input = &inputs.by_id[&id];
        let pkey = keys
            .pseudonym_keys()
            .iter()
            .find(|k| k.id() == p)
            .expect("the pseudonym key named in the header");
        let raw = kafka::text(common::field(input, key_field)).unwrap();
        let (class, canonical) = token::canonical(TokenClass::Phone, &raw, &phone);
        let expected = token::token(pkey, class, canonical.as_bytes());
        let written = kafka::text(common::field(&output, key_field)).unwrap();
        assert_eq!(written, expected.as_str(), "token under the header's key");
        assert_eq!(message.key().unwrap(), written.as_bytes());
        tokens.push(written);
        let is_message = name.ends_with("MessageEvent");
        if let (true, Some(body), Value::Union(1, sealed)) = (
            is_message,
            is_message
                .then(|| kafka::text(common::field(input, "body")))
                .flatten(),
            if is_message {
                common::field(&output, "body")
            } else {
                &Value::Null
            },
        ) {
            let Value::Bytes(sealed) = sealed.as_ref() else {
                panic!("body is bytes")
            };
            assert_eq!(
                envelope::key_id(sealed).unwrap(),
                e,
                "envelope under the header's key"
            );
            assert_eq!(keys.open("body", sealed).unwrap(), body.as_bytes());
        }
        if late.contains(&id) {
            assert_eq!((p.as_str(), e.as_str()), ("p-test-2", "e-test-2"));
        }
        *sets.entry((p, e)).or_default() += 1;
    }
    let old = ("p-test-1".to_owned(), "e-test-1".to_owned());
    let new = ("p-test-2".to_owned(), "e-test-2".to_owned());
    assert!(
        sets.contains_key(&old) && sets.contains_key(&new),
        "{sets:?}"
    );
    assert_eq!(
        sets.len(),
        2,
        "one atomic rotation gives two key sets: {sets:?}"
    );

    // Nothing lost.
    let published: HashSet<String> = got.ids.keys().cloned().collect();
    kafka::assert_same_ids(&published, &kafka::ids(&inputs), "published = input");

    // No raw value, token or secret in the log or the metrics page.
    let ring_text = String::from_utf8(rotated).unwrap();
    let ring_json: serde_json::Value = serde_json::from_str(&ring_text).unwrap();
    let secrets: Vec<String> = ring_json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["secret"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        secrets.len(),
        5,
        "two pseudonym, two encryption and the subject key"
    );
    let finder = inputs.leak_finder();
    for (what, text) in [("log", &log_text), ("metrics", &page)] {
        assert!(!finder.leaks(text.as_bytes()), "{what} holds a raw value");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} holds a secret");
        }
        for token in tokens.iter().step_by(50) {
            assert!(!text.contains(token.as_str()), "{what} holds a token");
        }
    }
}

/// The binary, for the `keys` commands an operator (or an attacker with the file) runs.
fn keys_cli(args: &[&str], kek: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(args)
        .env_remove("PSEUDONYMIZER_KEK")
        .env("PSEUDONYMIZER_KEK_FILE", kek)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}: {said}");
    said
}

/// A reload never lowers protection and never goes back in time. A worker on a KEK-sealed
/// keyring is given, in turn: a clear keyring with the same ids and secrets of an attacker's
/// choosing (someone who can replace the file but holds no KEK); after `keys rotate` and
/// `keys destroy`, the old sealed file copied back (which made the destroyed key active
/// again); and a sealed file, made with the KEK, that makes the retired key active again. Each
/// is refused, logged and counted, and new output keeps the current keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_lowers_protection_nor_goes_back_in_time() {
    use pseudonymizer::keys::{KeyEntry, KeyState, Secret};
    let brokers = kafka::tansu();
    let topics = Topics::unique("reload-floor");
    topics.create(&brokers, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka::write_config(dir.path(), &topics, &brokers, "");
    let ring_path = dir.path().join("keyring.json");
    let ring = ring_path.to_str().unwrap();
    let kek = dir.path().join("kek");
    keys_cli(&["keys", "new-kek", "--out", kek.to_str().unwrap()], &kek);
    keys_cli(&["keys", "seal", "--keyring", ring], &kek);
    let first_sealed = std::fs::read(&ring_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "shutdown_timeout_secs = 20",
        &format!("shutdown_timeout_secs = 20\nmetrics_listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, text).unwrap();
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = common::Reaped(
        Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env_remove("PSEUDONYMIZER_KEK")
            .env("PSEUDONYMIZER_KEK_FILE", &kek)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_log(&log, "worker subscribed", 1);

    // 1. Downgrade: a clear keyring, same ids, the attacker's secrets.
    let attacker = Keyring::from_entries(
        [
            ("p-test-1", Purpose::Pseudonym),
            ("e-test-1", Purpose::Encryption),
        ]
        .into_iter()
        .map(|(id, purpose)| KeyEntry {
            id: id.to_owned(),
            purpose,
            state: KeyState::Active,
            created_at: "2026-12-01T00:00:00Z".to_owned(),
            secret: Some(Secret::generate()),
        })
        .collect(),
    )
    .unwrap();
    let forged = dir.path().join("forged.json");
    attacker.clone().save(&forged).unwrap();
    replace_file(&ring_path, &std::fs::read(&forged).unwrap());
    let said = wait_log(&log, "keyring REFUSED", 1);
    assert!(said.contains("never lowers protection"), "{said}");

    // 2. Rollback: rotate and destroy with the KEK, then the first sealed file copied back.
    replace_file(&ring_path, &first_sealed);
    wait_log(&log, "keyring reloaded", 1);
    keys_cli(
        &[
            "keys",
            "rotate",
            "--keyring",
            ring,
            "--purpose",
            "encryption",
            "--id",
            "e-test-2",
        ],
        &kek,
    );
    wait_log(&log, "keyring reloaded", 2);
    keys_cli(
        &["keys", "destroy", "--keyring", ring, "--id", "e-test-1"],
        &kek,
    );
    wait_log(&log, "keyring reloaded", 3);
    let latest = std::fs::read(&ring_path).unwrap();
    replace_file(&ring_path, &first_sealed);
    let said = wait_log(&log, "keyring REFUSED", 2);
    assert!(said.contains("rollback"), "{said}");
    // The latest file back: the same generation is no rollback.
    replace_file(&ring_path, &latest);
    wait_log(&log, "keyring reloaded", 4);

    // 3. Revival: a sealed file of a later generation (made with the KEK) in which the retired
    // pseudonym key is active again.
    keys_cli(
        &[
            "keys",
            "rotate",
            "--keyring",
            ring,
            "--purpose",
            "pseudonym",
            "--id",
            "p-test-2",
        ],
        &kek,
    );
    wait_log(&log, "keyring reloaded", 5);
    let open_kek = || pseudonymizer::keys::Kek::from_file(&kek).unwrap();
    let current =
        Keyring::from_sealed(&std::fs::read_to_string(&ring_path).unwrap(), open_kek()).unwrap();
    // The same keyring (its id kept) of a later generation, edited in clear and sealed again,
    // so that only the revival is wrong.
    let mut clear = current.clone();
    clear.set_kek(None);
    clear.save(&forged).unwrap();
    let mut text: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&forged).unwrap()).unwrap();
    for entry in text["keys"].as_array_mut().unwrap() {
        match entry["id"].as_str().unwrap() {
            "p-test-1" => entry["state"] = "active".into(),
            "p-test-2" => entry["state"] = "retired".into(),
            _ => {}
        }
    }
    let mut revived = Keyring::from_json(&text.to_string()).unwrap();
    revived.set_kek(Some(open_kek()));
    revived.save(&forged).unwrap();
    assert!(revived.generation() > current.generation());
    assert_eq!(revived.keyring_id(), current.keyring_id());
    replace_file(&ring_path, &std::fs::read(&forged).unwrap());
    let said = wait_log(&log, "keyring REFUSED", 3);
    assert!(said.contains("seen retired or destroyed"), "{said}");

    // 4. Another keyring, sealed under the same KEK, of a higher generation: refused.
    let other = dir.path().join("other.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args([
            "keys",
            "init",
            "--sealed",
            "--keyring",
            other.to_str().unwrap(),
        ])
        .env("PSEUDONYMIZER_KEK_FILE", &kek)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut other_ring =
        Keyring::from_sealed(&std::fs::read_to_string(&other).unwrap(), open_kek()).unwrap();
    while other_ring.generation() <= revived.generation() {
        other_ring.save(&other).unwrap();
    }
    replace_file(&ring_path, &std::fs::read(&other).unwrap());
    let said = wait_log(&log, "keyring REFUSED", 4);
    assert!(said.contains("never switches keyrings"), "{said}");

    // New output still uses the current keys; four refusals counted.
    let page = http_get(metrics_addr, "/metrics");
    assert_eq!(
        metric(
            &page,
            "pseudonymizer_keyring_reloads_total{result=\"refused\"}"
        ),
        Some(4.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "pseudonymizer_active_key{key_id=\"p-test-2\",purpose=\"pseudonym\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "pseudonymizer_active_key{key_id=\"e-test-2\",purpose=\"encryption\"}"
        ),
        Some(1.0),
        "{page}"
    );
    signal(&worker, "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "worker did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
