//! The deploy pack (deploy/, docs/deploy.md), with the real tools where this machine allows:
//!
//! - the image builds with `podman build` from a local Debian base (mmdebstrap), and its binary
//!   runs from the image's exported filesystem by `chroot`, as the image's user: `--version`,
//!   `check`, and the worker against Tansu (containers cannot start on these machines);
//! - the Kubernetes manifests render with kustomize and validate against Kubernetes 1.31's
//!   schemas (kubernetes-validate, strict);
//! - the alert rules pass `promtool check rules` and `promtool test rules`, and every metric the
//!   rules and the dashboard name is exported by a running worker;
//! - a keyring laid out as kubelet lays out a Secret volume (0440 under the pod's group, a
//!   `..data` link swapped on update) is read by two workers running as that user, and a swap
//!   switches both to the new keys within seconds, nothing lost;
//! - a topic that does not exist yet: an error naming it, not ready, and publishing once it
//!   exists; the worker's peak memory with 64 KiB records and a backlog stays under the bound
//!   docs/deploy.md states.
//!
//! scripts/test.sh installs the tools (scripts/deploy-tools.sh) and names them in
//! `PSEUDONYMIZER_*` variables; a test fails, never skips, without them.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use common::kafka::{self, Collected, Inputs, Topics};
use common::process::{metric, sigterm, wait_exit, wait_log, wait_ready};
use common::Reaped;
use pseudonymizer::keys::{Keyring, Purpose};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// The image's user and group (deploy/Containerfile, the StatefulSet's securityContext).
const IMAGE_UID: u32 = 65532;

fn tool(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run the tests with scripts/test.sh, which installs the deploy tools (scripts/deploy-tools.sh)")
    })
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Makes `path` and its files readable by the image's user (tempdirs are owner-only).
fn open_to_all(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn manifests_render_and_validate_against_kubernetes_1_31() {
    let repo = common::repo();
    let rendered = run(Command::new(tool("PSEUDONYMIZER_KUSTOMIZE"))
        .arg("build")
        .arg(repo.join("deploy/kubernetes")));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let said = run(Command::new(tool("PSEUDONYMIZER_KUBERNETES_VALIDATE"))
        .args(["--strict", "-k", "1.31.0"])
        .arg(&file));
    for resource in [
        "serviceaccount/pseudonymizer",
        "configmap/pseudonymizer-config-",
        "service/pseudonymizer",
        "statefulset/pseudonymizer",
        "poddisruptionbudget/pseudonymizer",
        "networkpolicy/pseudonymizer",
    ] {
        assert!(
            said.contains(&format!("passed for resource {resource}")),
            "{resource}: {said}"
        );
    }
    // The restrictive securityContext and the probes, as rendered.
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "- ALL",
        "type: RuntimeDefault",
        "path: /healthz",
        "path: /readyz",
        "fsGroup: 65532",
        "name: PSEUDONYMIZER_SECRET_GROUP",
        "value: \"65532\"",
        "automountServiceAccountToken: false",
    ] {
        assert!(rendered.contains(needle), "{needle} not in the manifests");
    }
    // The NetworkPolicy: both directions governed; the metrics port open to the monitoring
    // namespace only; egress to DNS, the brokers, the registry and the KMS.
    let policy = rendered
        .split("\n---\n")
        .find(|doc| doc.contains("kind: NetworkPolicy"))
        .expect("a NetworkPolicy in the manifests");
    // The `ingress:` block: its line and the more indented lines after it.
    let ingress: String = {
        let mut lines = policy.lines().skip_while(|l| l.trim() != "ingress:");
        let head = lines.next().expect("an ingress block");
        let indent = head.len() - head.trim_start().len();
        lines
            .take_while(|l| {
                l.len() - l.trim_start().len() > indent || l.trim_start().starts_with("- ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for needle in [
        "- Ingress",
        "- Egress",
        "app.kubernetes.io/name: pseudonymizer",
        "k8s-app: kube-dns",
        "port: 53",
        "kubernetes.io/metadata.name: kafka",
        "port: 9093",
        "port: 8081",
        "port: 443",
    ] {
        assert!(policy.contains(needle), "{needle} not in the NetworkPolicy");
    }
    assert!(
        ingress.contains("kubernetes.io/metadata.name: monitoring")
            && ingress.contains("port: 9464")
            && ingress.matches("- from:").count() == 1,
        "ingress: {ingress}"
    );
    // The grace period is above the shutdown bound, with a margin.
    let config_text =
        std::fs::read_to_string(repo.join("deploy/kubernetes/config/pipeline.toml")).unwrap();
    let config: toml::Value = toml::from_str(&config_text).unwrap();
    let shutdown = config["kafka"]["shutdown_timeout_secs"]
        .as_integer()
        .unwrap();
    let grace: i64 = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        grace >= shutdown + 15,
        "grace {grace} s, shutdown {shutdown} s"
    );
    // The ConfigMap's pipelines are the shipped ones: the same rules (derive included) and
    // the same risk measures; only connection settings differ.
    let shipped: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo.join("config/pipeline.toml")).unwrap())
            .unwrap();
    let pipelines = |c: &toml::Value| -> Vec<(toml::Value, Option<toml::Value>)> {
        c["pipeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["rules"].clone(), p.get("risk").cloned()))
            .collect()
    };
    assert_eq!(
        pipelines(&config),
        pipelines(&shipped),
        "deploy/kubernetes/config/pipeline.toml's rules drifted from config/pipeline.toml's"
    );
    // The ConfigMap's schemas are the project's.
    for name in ["comms.v1.CallEvent.avsc", "comms.v1.MessageEvent.avsc"] {
        assert_eq!(
            std::fs::read(repo.join("deploy/kubernetes/config").join(name)).unwrap(),
            std::fs::read(repo.join("schemas").join(name)).unwrap(),
            "deploy/kubernetes/config/{name} drifted from schemas/{name}"
        );
    }
    // And the config passes `check`, with its secret files where the Secrets put them.
    let ca = PathBuf::from(tool("PSEUDONYMIZER_KAFKA_TLS_DIR")).join("ca.pem");
    let password = dir.path().join("password");
    std::fs::write(&password, "not-a-real-password\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mounted = dir.path().join("config");
    std::fs::create_dir(&mounted).unwrap();
    for entry in std::fs::read_dir(repo.join("deploy/kubernetes/config")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), mounted.join(entry.file_name())).unwrap();
    }
    let text = config_text
        .replace(
            "/var/run/secrets/pseudonymizer/kafka/password",
            s(&password),
        )
        .replace("/var/run/secrets/pseudonymizer/kafka/ca.crt", s(&ca));
    std::fs::write(mounted.join("pipeline.toml"), text).unwrap();
    let ring = common::write_keyring(dir.path());
    let (ok, said) = common::process::cli(&[
        "check",
        "--config",
        s(&mounted.join("pipeline.toml")),
        "--keyring",
        s(&ring),
    ]);
    assert!(ok, "{said}");
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = common::repo().join("deploy/prometheus");
    let promtool = tool("PSEUDONYMIZER_PROMTOOL");
    let said = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("alerts.yaml")));
    assert!(said.contains("SUCCESS: 15 rules found"), "{said}");
    let said = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.join("alerts_test.yaml")));
    assert!(said.contains("SUCCESS"), "{said}");
    // Every rule has a unit test that fires it, and a runbook section in docs/deploy.md.
    let rules = std::fs::read_to_string(dir.join("alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yaml")).unwrap();
    let runbook = std::fs::read_to_string(common::repo().join("docs/deploy.md")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "no firing test for {name}"
        );
        assert!(
            runbook.contains(&format!("### {name}")),
            "no runbook section for {name} in docs/deploy.md"
        );
    }
}

/// The metric names (`pseudonymizer_…`, `process_…`) a text mentions.
fn metric_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for (i, _) in text
        .match_indices("pseudonymizer_")
        .chain(text.match_indices("process_"))
    {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name != "pseudonymizer_" && name != "process_" {
            names.insert(name);
        }
    }
    names
}

/// A worker of the shipped config on fresh topics, with its metrics on a free port.
async fn worker_config(dir: &Path, topics: &Topics, brokers: &str) -> (PathBuf, SocketAddr) {
    let config = kafka::write_config(dir, topics, brokers, "");
    let addr = common::process::serve_metrics(&config);
    (config, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("metrics-named");
    topics.create(&brokers, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = worker_config(dir.path(), &topics, &brokers).await;
    // With a country database, so that its build time is exported too (scripts/test.sh
    // installs it: scripts/geoip.sh). No rule derives a country, so the output is the checked-in
    // sanitized schemas' that the reader below decodes with; the file is read all the same.
    let database = std::env::var("PSEUDONYMIZER_GEOIP_DB")
        .expect("PSEUDONYMIZER_GEOIP_DB is not set: run the tests with scripts/test.sh");
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!("\n[geoip]\ndatabase = {database:?}\n");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = common::process::start(&config, &log);
    wait_ready(addr);
    let mut inputs = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 50, 7, &[], &mut inputs).await;
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(60), |c| {
        c.ids.len() >= 50
    });
    // Let the lag check and the rotation policy run once.
    std::thread::sleep(Duration::from_secs(6));
    let page = kafka::http_get(addr, "/metrics");
    let exported: HashSet<String> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let deploy = common::repo().join("deploy");
    let mut named =
        metric_names(&std::fs::read_to_string(deploy.join("prometheus/alerts.yaml")).unwrap());
    named.extend(metric_names(
        &std::fs::read_to_string(deploy.join("grafana/pseudonymizer.json")).unwrap(),
    ));
    assert!(named.len() > 20, "{named:?}");
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\n{page}"
    );
    assert!(
        page.contains("pseudonymizer_build_info{phone_metadata=\""),
        "{page}"
    );
    sigterm(&worker.0);
    assert!(wait_exit(&mut worker.0, Duration::from_secs(30)).success());
}

/// A Secret volume as kubelet writes it: `DIR/..<timestamp>/keyring.json` (0440, owner root,
/// group the pod's fsGroup), `DIR/..data` → that directory, `DIR/keyring.json` →
/// `..data/keyring.json`.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf, ring: &Keyring) -> Self {
        std::fs::create_dir(&dir).unwrap();
        open_to_all(&dir);
        let mut volume = SecretVolume { dir, generation: 0 };
        volume.update(ring);
        std::os::unix::fs::symlink("..data/keyring.json", volume.dir.join("keyring.json")).unwrap();
        volume
    }

    fn path(&self) -> PathBuf {
        self.dir.join("keyring.json")
    }

    /// Writes a new timestamped directory and swaps `..data` to it atomically, as kubelet's
    /// AtomicWriter does, then removes the old one.
    fn update(&mut self, ring: &Keyring) {
        self.generation += 1;
        let name = format!("..2026_11_30_10_00_00.{:09}", self.generation);
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        open_to_all(&data);
        let file = data.join("keyring.json");
        ring.clone().save(&file).unwrap();
        std::os::unix::fs::chown(&file, Some(0), Some(IMAGE_UID)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &link).unwrap();
        std::fs::rename(&link, self.dir.join("..data")).unwrap();
        if self.generation > 1 {
            let old = format!("..2026_11_30_10_00_00.{:09}", self.generation - 1);
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// `pseudonymizer run` as the image's user and group, as the pod runs it.
fn start_as_image_user(config: &Path, log: &Path) -> Reaped {
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
            .args(["run", "--config", s(config)])
            .env("RUST_LOG", "pseudonymizer=info")
            // As the manifests set it: the pod's fsGroup may read secret files.
            .env("PSEUDONYMIZER_SECRET_GROUP", IMAGE_UID.to_string())
            .uid(IMAGE_UID)
            .gid(IMAGE_UID)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn active_encryption_key(addr: SocketAddr, id: &str) -> bool {
    metric(
        addr,
        &format!("pseudonymizer_active_key{{key_id=\"{id}\",purpose=\"encryption\"}}"),
    ) == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_a_kubelet_secret_volume_switch_keys_when_it_is_updated() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("secret-volume");
    topics.create(&brokers, 4).await;
    let dir = tempfile::tempdir().unwrap();
    open_to_all(dir.path());
    let mut ring = common::test_keyring();
    let mut volume = SecretVolume::new(dir.path().join("keyring-volume"), &ring);
    let mut workers = Vec::new();
    for n in 0..2 {
        let own = dir.path().join(format!("worker-{n}"));
        std::fs::create_dir(&own).unwrap();
        let (config, addr) = worker_config(&own, &topics, &brokers).await;
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("keyring = \"{}\"", own.join("keyring.json").display()),
            &format!("keyring = \"{}\"", volume.path().display()),
        );
        std::fs::write(&config, text).unwrap();
        open_to_all(&own);
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = own.join("worker.log");
        workers.push((start_as_image_user(&config, &log), addr, log));
    }
    for (_, addr, _) in &workers {
        wait_ready(*addr);
        assert!(active_encryption_key(*addr, "e-test-1"));
    }
    let mut inputs = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 400, 51, &[], &mut inputs).await;

    // The Secret is updated: a rotated keyring behind a swapped ..data link.
    ring.rotate(Purpose::Encryption, Some("e-k8s-2".into()))
        .unwrap();
    ring.rotate(Purpose::Pseudonym, Some("p-k8s-2".into()))
        .unwrap();
    let swapped = Instant::now();
    volume.update(&ring);
    for (_, addr, log) in &workers {
        while !active_encryption_key(*addr, "e-k8s-2") {
            assert!(
                swapped.elapsed() < Duration::from_secs(10),
                "a worker did not switch keys: {}",
                std::fs::read_to_string(log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let switched = swapped.elapsed();
    let mut more = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 400, 52, &[], &mut more).await;
    inputs.by_id.extend(more.by_id);
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 800
    });
    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "published",
    );
    // Records after the switch carry the new keys' ids.
    let new_keys = got
        .outputs
        .iter()
        .filter(|m| {
            use rdkafka::message::{Headers, Message};
            m.headers().is_some_and(|h| {
                h.iter()
                    .any(|h| h.key == "pseudonymizer.encryption-key" && h.value == Some(b"e-k8s-2"))
            })
        })
        .count();
    assert!(new_keys >= 400, "{new_keys} records under the new key");
    for (worker, _, log) in &mut workers {
        sigterm(&worker.0);
        assert!(
            wait_exit(&mut worker.0, Duration::from_secs(30)).success(),
            "{}",
            std::fs::read_to_string(log).unwrap()
        );
    }
    eprintln!(
        "both workers switched keys {:.1} s after the swap",
        switched.as_secs_f64()
    );
}

/// Creates one topic.
async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_does_not_exist_yet_is_named_waited_for_then_used() {
    let brokers = kafka::tansu();
    let mut topics = Topics::unique("missing-topic");
    topics.create(&brokers, 2).await;
    // The messages pipeline writes to a topic nobody created yet.
    topics.messages = format!("{}-late", topics.messages);
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = worker_config(dir.path(), &topics, &brokers).await;
    let log = dir.path().join("worker.log");
    let mut worker = common::process::start(&config, &log);
    let text = wait_log(
        &log,
        "do not exist: create them first",
        1,
        Duration::from_secs(60),
    );
    assert!(text.contains(&topics.messages), "{text}");
    assert!(text.contains("ERROR"), "{text}");
    assert!(kafka::http_get(addr, "/readyz").contains(" 503 "));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker waits, it does not exit"
    );

    create_topic(&brokers, &topics.messages, 2).await;
    wait_ready(addr);
    let mut inputs = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 100, 61, &[], &mut inputs).await;
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 100
    });
    kafka::verify_outputs(&got, &topics, &inputs);
    sigterm(&worker.0);
    assert!(wait_exit(&mut worker.0, Duration::from_secs(30)).success());
}

/// The memory bound docs/deploy.md states for the default settings (the pod's limit).
const RSS_BOUND_MIB: u64 = 256;

/// Peak resident memory of a process so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_with_64_kib_records_and_a_backlog_stays_under_the_bound() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("memory");
    topics.create(&brokers, 4).await;
    // A backlog of 2,000 messages with 64 KiB bodies (125 MiB), there before the worker starts.
    let engine = common::engine();
    let plan = engine.plan("comms.v1.MessageEvent").unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut generator = pseudonymizer::generate::Generator::new(71);
    let body: String = "Pesan panjang untuk uji memori. ".repeat(64 * 1024 / 32);
    let mut ids = HashSet::new();
    let count = 2000;
    let mut deliveries = Vec::new();
    for n in 0..count {
        let mut event = generator.event(pseudonymizer::generate::Kind::Message);
        common::set_field(
            &mut event,
            "body",
            Value::Union(1, Box::new(Value::String(format!("{n:06} {body}")))),
        );
        ids.insert(kafka::text(common::field(&event, "event_id")).unwrap());
        let payload = pseudonymizer::worker::route::frame(2, &common::encode(&plan.input, event));
        assert!(payload.len() > 64 * 1024);
        let record: FutureRecord<'_, (), [u8]> =
            FutureRecord::to(&topics.raw).payload(payload.as_slice());
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        if deliveries.len() == 200 {
            for d in deliveries.drain(..) {
                d.await.unwrap().expect("delivered");
            }
        }
    }
    for d in deliveries {
        d.await.unwrap().expect("delivered");
    }

    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = worker_config(dir.path(), &topics, &brokers).await;
    let log = dir.path().join("worker.log");
    let mut worker = common::process::start(&config, &log);
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(240), |c| {
        c.ids.len() >= count
    });
    wait_ready(addr);
    // VmHWM is the kernel's own high-water mark of the process's resident memory.
    let peak = peak_rss_kib(worker.0.id());
    assert_eq!(got.ids.keys().cloned().collect::<HashSet<_>>(), ids);
    let peak_mib = peak / 1024;
    eprintln!("peak RSS with a 125 MiB backlog of 64 KiB records: {peak_mib} MiB");
    assert!(
        peak_mib < RSS_BOUND_MIB,
        "peak RSS {peak_mib} MiB, the bound is {RSS_BOUND_MIB} MiB"
    );
    let stated = std::fs::read_to_string(common::repo().join("docs/deploy.md")).unwrap();
    assert!(stated.contains(&format!("under {RSS_BOUND_MIB} MiB")));
    sigterm(&worker.0);
    assert!(wait_exit(&mut worker.0, Duration::from_secs(30)).success());
}

#[test]
fn the_image_builds_and_its_binary_runs_from_its_filesystem_as_its_user() {
    let podman = tool("PSEUDONYMIZER_PODMAN");
    let base_tar = tool("PSEUDONYMIZER_BASE_TAR");
    let repo = common::repo();
    let dir = tempfile::tempdir().unwrap();
    // The base: the mmdebstrap tarball, imported once per machine under a fixed name.
    let base = "localhost/pseudonymizer-base:bookworm";
    let present = Command::new(&podman)
        .args(["image", "exists", base])
        .status()
        .unwrap();
    if !present.success() {
        run(Command::new(&podman).args(["import", &base_tar, base]));
    }
    // The build context: the binary the tests built (stripped), the schemas, the config.
    let context = dir.path().join("context");
    std::fs::create_dir_all(context.join("dist")).unwrap();
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_pseudonymizer"))
        .arg(context.join("dist/pseudonymizer")));
    run(Command::new("cp")
        .arg("-r")
        .arg(repo.join("schemas"))
        .arg(repo.join("config"))
        .arg(&context));
    let tag = format!("localhost/pseudonymizer:test-{}", std::process::id());
    let started = Instant::now();
    run(Command::new(&podman)
        .args(["build", "--quiet", "-f"])
        .arg(repo.join("deploy/Containerfile"))
        .args(["--build-arg", "BINARY_STAGE=prebuilt"])
        .args(["--build-arg", &format!("RUNTIME_BASE={base}")])
        .args(["--build-arg", "SOURCE=file:///test"])
        .args(["-t", &tag])
        .arg(&context));
    let built_in = started.elapsed();
    let inspect = |format: &str| {
        run(Command::new(&podman).args(["image", "inspect", "--format", format, &tag]))
            .trim()
            .to_owned()
    };
    assert_eq!(inspect("{{.Config.User}}"), "65532:65532");
    let labels = inspect("{{json .Labels}}");
    for label in [
        "org.opencontainers.image.version\":\"0.1.0",
        "org.opencontainers.image.source\":\"file:///test",
        "org.opencontainers.image.licenses\":\"Apache-2.0",
    ] {
        assert!(labels.contains(label), "{labels}");
    }
    let size: u64 = inspect("{{.Size}}").parse().unwrap();

    // Export the image's filesystem (containers cannot start here) and run it by chroot.
    let name = format!("pseudonymizer-export-{}", std::process::id());
    run(Command::new(&podman).args(["create", "--name", &name, &tag]));
    let tar = dir.path().join("image.tar");
    let exported = Command::new(&podman)
        .args(["export", "-o", s(&tar), &name])
        .output()
        .unwrap();
    run(Command::new(&podman).args(["rm", &name]));
    run(Command::new(&podman).args(["rmi", &tag]));
    assert!(exported.status.success(), "{exported:?}");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&root));
    let chrooted = |args: &[&str]| -> Command {
        let mut command = Command::new("/usr/sbin/chroot");
        command
            .arg(format!("--userspec={IMAGE_UID}:{IMAGE_UID}"))
            .arg(&root)
            .arg("/usr/local/bin/pseudonymizer")
            .args(args)
            .env_clear()
            .env("RUST_LOG", "pseudonymizer=info");
        command
    };
    let version = run(&mut chrooted(&["--version"]));
    assert!(version.contains("pseudonymizer 0.1.0"), "{version}");

    // A keyring owned by the image's user, and `check` of the shipped config in the image.
    let work = root.join("tmp/work");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    let ring = common::write_keyring(&work);
    std::os::unix::fs::chown(&ring, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    let checked = run(&mut chrooted(&[
        "check",
        "--config",
        "/usr/share/pseudonymizer/config/pipeline.toml",
        "--keyring",
        "/tmp/work/keyring.json",
    ]));
    assert!(checked.contains("active keys"), "{checked}");

    // The worker from the image, against Tansu: every record published.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let brokers = kafka::tansu();
    let topics = Topics::unique("image");
    runtime.block_on(topics.create(&brokers, 2));
    let config = kafka::write_config(&work, &topics, &brokers, "")
        .canonicalize()
        .unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            s(&common::repo().join("schemas")),
            "/usr/share/pseudonymizer/schemas",
        )
        .replace(s(&work.canonicalize().unwrap()), "/tmp/work");
    std::fs::write(&config, text).unwrap();
    for file in [&config, &work.join("keyring.json")] {
        std::os::unix::fs::chown(file, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    }
    let log = dir.path().join("worker.log");
    let mut worker = Reaped(
        chrooted(&["run", "--config", "/tmp/work/pipeline.toml"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut inputs = Inputs::default();
    runtime.block_on(kafka::produce(
        &brokers,
        &topics.raw,
        3000,
        81,
        &[],
        &mut inputs,
    ));
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 3000
    });
    kafka::verify_outputs(&got, &topics, &inputs);
    sigterm(&worker.0);
    assert!(
        wait_exit(&mut worker.0, Duration::from_secs(30)).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    eprintln!(
        "image built in {:.1} s; {:.0} MB (the base and a debug build's binary, stripped of debug info)",
        built_in.as_secs_f64(),
        size as f64 / 1e6
    );
}
