//! The worker against a secured cluster: Apache Kafka's TLS, mutual-TLS and SASL_SSL
//! (SCRAM-SHA-512) listeners (scripts/kafka.sh), with the test CA and credentials given by
//! `${file:…}` references. Records flow on each; a client without the CA or without its
//! certificate, and a wrong password, are reported (error line, counter, `/readyz` 503) and
//! consume nothing; fixing the password file lets records flow with none lost; a canary
//! password shows up in no log (librdkafka's debug log at trace level included), no metric, no
//! `check` output and no topic. `dlq replay` runs over TLS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::{self, ApacheKafka, Collected, Inputs, Topics};
use common::process::{cli, free_port, metric, sigterm, start, start_logging, wait_exit};
use rdkafka::message::Headers;
use rdkafka::Message;

/// The wrong password of the SCRAM test, and a key password written inline: neither may ever
/// be shown.
const CANARY_PASSWORD: &str = "canary-pw-7f3e1c9a2b44";
const CANARY_KEY_PASSWORD: &str = "canary-keypw-5d8e0f41aa";

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The test config pointed at `listener`, with `properties` in `[kafka.properties]` and its
/// metrics on a free port; returns (config, metrics address).
fn secured_config(
    dir: &Path,
    topics: &Topics,
    listener: &str,
    properties: &str,
) -> (PathBuf, SocketAddr) {
    let port = free_port();
    let base = kafka::write_config(dir, topics, listener, "");
    let text = std::fs::read_to_string(base)
        .unwrap()
        .replace(
            "[kafka.properties]\n",
            &format!("[kafka.properties]\n{properties}\n"),
        )
        .replace(
            "shutdown_timeout_secs = 20",
            &format!("shutdown_timeout_secs = 20\nmetrics_listen = \"127.0.0.1:{port}\""),
        );
    let path = dir.join(format!("secured-{port}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, format!("127.0.0.1:{port}").parse().unwrap())
}

fn tls(kafka: &ApacheKafka) -> String {
    format!(
        "\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"",
        kafka.tls_dir.join("ca.pem").display()
    )
}

fn mutual_tls(kafka: &ApacheKafka) -> String {
    format!(
        "{}\n\"ssl.certificate.location\" = \"{}\"\n\"ssl.key.location\" = \"{}\"",
        tls(kafka),
        kafka.tls_dir.join("client.pem").display(),
        kafka.tls_dir.join("client.key").display()
    )
}

fn scram(kafka: &ApacheKafka, password_file: &Path) -> String {
    format!(
        "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"{}\"\n\"sasl.password\" = \"${{file:{}}}\"\n\
         \"ssl.ca.location\" = \"{}\"",
        kafka.scram_user,
        password_file.display(),
        kafka.tls_dir.join("ca.pem").display()
    )
}

/// Topics on the cluster with `events` raw events (and `poison`) produced over PLAINTEXT.
async fn loaded(
    kafka: &ApacheKafka,
    test: &str,
    events: usize,
    poison: &[Vec<u8>],
) -> (Topics, Inputs) {
    let topics = Topics::unique(test);
    topics.create(&kafka.brokers, 2).await;
    let mut inputs = Inputs::default();
    kafka::produce(&kafka.brokers, &topics.raw, events, 51, poison, &mut inputs).await;
    (topics, inputs)
}

/// Waits until `done` holds for the worker's metrics page (at most `limit`).
fn wait_metrics(addr: SocketAddr, limit: Duration, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect(addr).is_ok() && done(&kafka::http_get(addr, "/metrics")) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn count(page: &str, line_start: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_flow_over_tls_mutual_tls_and_scram() {
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let password = kafka.tls_dir.join("scram.password");
    for (name, listener, properties) in [
        ("tls", &kafka.ssl, tls(&kafka)),
        ("mtls", &kafka.mtls, mutual_tls(&kafka)),
        ("scram", &kafka.sasl, scram(&kafka, &password)),
    ] {
        let (topics, inputs) = loaded(&kafka, &format!("secured-{name}"), 300, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let (config, addr) = secured_config(dir.path(), &topics, listener, &properties);
        let log = dir.path().join("worker.log");
        let mut worker = start(&config, &log);
        let reader = kafka::reader(&kafka.brokers, &topics, false);
        let mut got = Collected::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        while got.ids.len() < 300 {
            assert!(
                Instant::now() < deadline,
                "{name}: {} of 300 events; the worker's log:\n{}",
                got.ids.len(),
                std::fs::read_to_string(&log).unwrap()
            );
            got.until(&reader, &topics, Duration::from_secs(150), |c| {
                c.ids.len() >= 300 || Instant::now() > deadline
            });
        }
        kafka::assert_same_ids(
            &got.ids.keys().cloned().collect(),
            &kafka::ids(&inputs),
            &format!("over {name}"),
        );
        kafka::verify_outputs(&got, &topics, &inputs);
        assert_eq!(metric(addr, "pseudonymizer_connection_errors_total"), 0);
        sigterm(&worker);
        let status = wait_exit(&mut worker, Duration::from_secs(30));
        assert!(
            status.success(),
            "{name}: {status}; log:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
    }
}

/// A client that does not trust the broker's CA, and one without its certificate on the
/// mutual-TLS listener: an error line naming the failure, the counter, `/readyz` 503, nothing
/// consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_or_anonymous_clients_are_refused_visibly() {
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let (topics, _inputs) = loaded(&kafka, "secured-refused", 50, &[]).await;
    for (name, listener, properties) in [
        // The system's roots do not include the test CA.
        (
            "no CA",
            &kafka.ssl,
            "\"security.protocol\" = \"SSL\"".to_owned(),
        ),
        ("no client certificate", &kafka.mtls, tls(&kafka)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (config, addr) = secured_config(dir.path(), &topics, listener, &properties);
        let log = dir.path().join("worker.log");
        let mut worker = start(&config, &log);
        wait_metrics(addr, Duration::from_secs(60), name, |page| {
            count(page, "pseudonymizer_connection_errors_total") > 0
        });
        let page = kafka::http_get(addr, "/metrics");
        assert!(
            page.contains("pseudonymizer_connection_failing 1"),
            "{name}"
        );
        assert!(
            kafka::http_get(addr, "/readyz").contains(" 503 "),
            "{name}: /readyz must be 503"
        );
        // Retries go on and nothing is consumed.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(metric(addr, "pseudonymizer_records_in_total"), 0, "{name}");
        sigterm(&worker);
        assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
        let said = std::fs::read_to_string(&log).unwrap();
        let line = said
            .lines()
            .find(|l| l.contains("cannot connect to the Kafka cluster"))
            .unwrap_or_else(|| panic!("{name}: no error line in:\n{said}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains(listener.as_str()), "names the broker: {line}");
        if name == "no CA" {
            assert!(line.contains("(tls)"), "{line}");
        }
        eprintln!("{name}: {line}");
    }
}

/// A wrong password (a canary): reported as an authentication failure, nothing consumed. The
/// password file is then fixed: the worker reconnects by itself and every event comes out,
/// none lost. The canary is in no log line (librdkafka's own debug log at trace level
/// included), no metric, no record, no `check` output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_then_the_fixed_file_lets_records_flow() {
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let poison = vec![b"not avro at all".to_vec()];
    let (topics, inputs) = loaded(&kafka, "secured-password", 400, &poison).await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("kafka-password");
    common::write_secret(&password, format!("{CANARY_PASSWORD}\n"));
    let properties = format!(
        "{}\n\"debug\" = \"security,broker,conf\"",
        scram(&kafka, &password)
    );
    let (config, addr) = secured_config(dir.path(), &topics, &kafka.sasl, &properties);
    let log = dir.path().join("worker.log");
    let mut worker = start_logging(&config, &log, "trace");

    wait_metrics(
        addr,
        Duration::from_secs(60),
        "authentication failure",
        |page| page.contains("pseudonymizer_connection_errors_total{kind=\"authentication\"}"),
    );
    assert!(kafka::http_get(addr, "/readyz").contains(" 503 "));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(metric(addr, "pseudonymizer_records_in_total"), 0);
    let metrics_page = kafka::http_get(addr, "/metrics");

    // `check --connect` says the same, without the password.
    let (ok, said) = cli(&["check", "--config", config.to_str().unwrap(), "--connect"]);
    assert!(!ok, "{said}");
    assert!(said.contains("authentication"), "{said}");
    let check_output = said;

    // The fixed password, written atomically as Kubernetes updates a mounted Secret.
    let right = std::fs::read_to_string(kafka.tls_dir.join("scram.password")).unwrap();
    let staging = dir.path().join("kafka-password.new");
    common::write_secret(&staging, right);
    std::fs::rename(&staging, &password).unwrap();
    let reader = kafka::reader(&kafka.brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 400 && !c.dead.is_empty()
    });
    got.until_quiet(&reader, &topics, Duration::from_secs(2));
    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "none lost",
    );
    kafka::verify_outputs(&got, &topics, &inputs);
    assert_eq!(got.dead.len(), 1, "the poison record, once");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kafka::http_get(addr, "/readyz").contains(" 200 ") {
        assert!(Instant::now() < deadline, "ready again after the fix");
        std::thread::sleep(Duration::from_millis(200));
    }
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());

    let said = std::fs::read_to_string(&log).unwrap();
    let error = said
        .lines()
        .find(|l| l.contains("cannot connect to the Kafka cluster (authentication)"))
        .unwrap_or_else(|| panic!("no authentication error line"));
    assert!(error.contains("ERROR"), "{error}");
    assert!(
        said.contains("a file the config references changed"),
        "the worker says why it reconnects"
    );
    assert!(
        said.lines().any(|l| l.contains("librdkafka")),
        "librdkafka's debug log reached the log (else the canary check below proves nothing)"
    );
    for (what, text) in [
        ("worker log", said.as_str()),
        ("metrics", metrics_page.as_str()),
        ("check --connect", check_output.as_str()),
    ] {
        assert!(
            !text.contains(CANARY_PASSWORD),
            "the canary is in the {what}"
        );
    }
    for message in got.outputs.iter().chain(&got.dead) {
        let mut bytes = message.payload().unwrap_or_default().to_vec();
        bytes.extend(message.key().unwrap_or_default());
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                bytes.extend(h.value.unwrap_or_default());
            }
        }
        let canary = CANARY_PASSWORD.as_bytes();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary),
            "the canary is in a record of {}",
            message.topic()
        );
    }
    eprintln!("{error}");
}

/// `check` refuses secrets written inline, and librdkafka's refusal of a mistyped property,
/// naming the property and never the value.
#[test]
fn check_names_secret_properties_and_never_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::unique("secured-check");
    let inline = format!(
        "\"security.protocol\" = \"SSL\"\n\"ssl.key.password\" = \"{CANARY_KEY_PASSWORD}\""
    );
    let (config, _) = secured_config(dir.path(), &topics, "127.0.0.1:9", &inline);
    let (ok, said) = cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        said.contains("\"ssl.key.password\" is written inline"),
        "{said}"
    );
    assert!(!said.contains(CANARY_KEY_PASSWORD), "{said}");

    // A mistyped name is not known to be a secret: librdkafka refuses it, and its value is
    // not echoed either.
    let typo = format!("\"ssl.key.pasword\" = \"{CANARY_KEY_PASSWORD}\"");
    let (config, _) = secured_config(dir.path(), &topics, "127.0.0.1:9", &typo);
    let (ok, said) = cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(said.contains("\"ssl.key.pasword\""), "{said}");
    assert!(!said.contains(CANARY_KEY_PASSWORD), "{said}");

    // A bad value of a referenced secret: the error names the property, not the value.
    let secret = dir.path().join("secret");
    common::write_secret(&secret, CANARY_KEY_PASSWORD);
    let bad_value = format!("\"security.protocol\" = \"${{file:{}}}\"", secret.display());
    let (config, _) = secured_config(dir.path(), &topics, "127.0.0.1:9", &bad_value);
    let (ok, said) = cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(said.contains("\"security.protocol\""), "{said}");
    assert!(!said.contains(CANARY_KEY_PASSWORD), "{said}");
}

/// `check --connect` over mutual TLS: the cluster answers and every topic is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connects_with_the_configs_settings() {
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let topics = Topics::unique("secured-connect");
    topics.create(&kafka.brokers, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = secured_config(dir.path(), &topics, &kafka.mtls, &mutual_tls(&kafka));
    let (ok, said) = cli(&["check", "--config", config.to_str().unwrap(), "--connect"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("[kafka] connected: 1 brokers answered"),
        "{said}"
    );
    assert!(
        said.contains(&format!("[kafka] topic {}: 2 partitions", topics.raw)),
        "{said}"
    );
    assert!(
        said.contains(&format!("[kafka] topic {}: 1 partitions", topics.dlq)),
        "{said}"
    );
}

/// `dlq replay` over TLS: the dead letters go back to their source topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_runs_over_tls() {
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let poison = vec![b"not avro at all".to_vec(), vec![0, 0, 0]];
    let (topics, _inputs) = loaded(&kafka, "secured-replay", 20, &poison).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = secured_config(dir.path(), &topics, &kafka.ssl, &tls(&kafka));
    let mut worker = start(&config, &dir.path().join("worker.log"));
    let reader = kafka::reader(&kafka.brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 20 && c.dead.len() >= 2
    });
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());

    let audit = dir.path().join("audit.log");
    let (ok, said) = cli(&[
        "dlq",
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--idle-secs",
        "3",
        "--reason",
        "bad-magic",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    assert!(said.contains("replayed 2 dead letters"), "{said}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.len(),
        2,
        "replay is audited: started, then its outcome"
    );
    assert_eq!(records[0]["command"], "dlq replay");
    assert_eq!(records[0]["outcome"], "started");
    assert_eq!(records[1]["values"].as_u64(), Some(2));
    let raw = kafka::read_from_start(&kafka.brokers, &topics.raw, 2);
    assert_eq!(
        raw.len(),
        20 + 2 + 2,
        "the two poison records are back in the raw topic"
    );
}

/// What the binary's librdkafka is built with: OAUTHBEARER with the OIDC method (libcurl) and
/// zstd compression are accepted by `check` (librdkafka refuses both when built without them).
#[test]
fn check_accepts_oidc_and_zstd_which_the_binary_is_built_with() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::unique("secured-oidc");
    let oidc = "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"OAUTHBEARER\"\n\
                \"sasl.oauthbearer.method\" = \"oidc\"\n\
                \"sasl.oauthbearer.token.endpoint.url\" = \"https://login.example.com/token\"\n\
                \"sasl.oauthbearer.client.id\" = \"pseudonymizer\"\n\
                \"sasl.oauthbearer.client.secret\" = \"${env:SECURED_TEST_OIDC_SECRET}\"\n\
                \"compression.type\" = \"zstd\"";
    let (config, _) = secured_config(dir.path(), &topics, "127.0.0.1:9", oidc);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env("SECURED_TEST_OIDC_SECRET", "not-a-real-secret")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("[kafka]: ok"), "{said}");
}
