//! SIGTERM mid-stream against the real broker: the worker exits 0 within the bound, and the
//! records it published and the records left uncommitted are disjoint and cover the input.
//! Also: `kill -9` mid-stream and a restart lose nothing, and duplicates come only from the
//! uncommitted window.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{self, Collected, Inputs, Topics};
use common::Reaped;

fn start(config: &std::path::Path) -> Reaped {
    let child = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Reaped(child)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, bound: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not exit within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fast group handover for tests: a killed member is noticed after 6 s, not 45.
const FAST_GROUP: &str =
    "\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\"auto.commit.interval.ms\" = \"200\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_commits_everything_produced() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("term");
    topics.create(&brokers, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka::write_config(dir.path(), &topics, &brokers, FAST_GROUP);
    let mut inputs = Inputs::default();
    const EVENTS: usize = 20_000;
    kafka::produce(&brokers, &topics.raw, EVENTS, 12, &[], &mut inputs).await;

    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    let mut worker = start(&config);
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 2000
    });
    let signalled = Instant::now();
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(30));

    // Everything the worker published is committed, and everything not committed was not
    // published: the two sets are disjoint and together cover the input.
    let left: HashSet<String> = kafka::uncommitted(&brokers, &topics.raw, &topics.group, 3)
        .iter()
        .filter_map(kafka::raw_event_id)
        .collect();
    // Read the rest of what the worker published before it stopped.
    got.until_quiet(&reader, &topics, Duration::from_secs(5));
    let published: HashSet<String> = got.ids.keys().cloned().collect();
    assert!(
        left.len() < EVENTS && !published.is_empty(),
        "{} left, {} published",
        left.len(),
        published.len()
    );
    let overlap = published.intersection(&left).count();
    assert_eq!(
        overlap, 0,
        "{overlap} published records' offsets were not committed"
    );
    let all: HashSet<String> = published.union(&left).cloned().collect();
    kafka::assert_same_ids(
        &all,
        &kafka::ids(&inputs),
        "published + uncommitted = input",
    );
}

/// `kill -9` mid-stream, then a new process in the same group: every input record is published
/// at least once, and a record published twice lies in the window the killed worker had not
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_loses_nothing() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("kill");
    topics.create(&brokers, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka::write_config(dir.path(), &topics, &brokers, FAST_GROUP);
    let mut inputs = Inputs::default();
    const EVENTS: usize = 8000;
    kafka::produce_unbatched(&brokers, &topics.raw, EVENTS, 21, &mut inputs).await;

    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    let mut worker = start(&config);
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 1500
    });
    worker.kill().unwrap(); // SIGKILL: no drain, no flush, no commit
    let status = wait_exit(&mut worker, Duration::from_secs(10));
    assert!(!status.success(), "killed, not exited: {status}");
    let committed: HashMap<i32, i64> = kafka::committed(&brokers, &topics.raw, &topics.group, 3)
        .into_iter()
        .map(|(p, o)| match o {
            rdkafka::Offset::Offset(o) => (p, o),
            _ => (p, 0),
        })
        .collect();

    let mut worker = start(&config);
    got.until(&reader, &topics, Duration::from_secs(240), |c| {
        c.ids.len() >= EVENTS
    });
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());

    let published: HashSet<String> = got.ids.keys().cloned().collect();
    kafka::assert_same_ids(&published, &kafka::ids(&inputs), "published = input");
    let position: HashMap<String, (i32, i64)> = kafka::read_from_start(&brokers, &topics.raw, 3)
        .iter()
        .filter_map(|m| {
            use rdkafka::Message;
            Some((kafka::raw_event_id(m)?, (m.partition(), m.offset())))
        })
        .collect();
    let mut duplicates = 0;
    for (id, &times) in &got.ids {
        if times > 1 {
            duplicates += 1;
            let (partition, offset) = position[id];
            assert!(
                offset >= committed[&partition],
                "{id} (partition {partition}, offset {offset}) was published twice but its \
                 offset was committed ({}) before the kill",
                committed[&partition]
            );
        }
    }
    eprintln!(
        "{} outputs for {EVENTS} inputs; {duplicates} published twice, all after the committed \
         offsets {committed:?}",
        got.outputs.len()
    );
}

/// The worker's config with its metrics served on a free port; returns (config, address).
fn with_metrics(dir: &std::path::Path, config: &std::path::Path) -> (PathBuf, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(config).unwrap().replace(
        "shutdown_timeout_secs = 20",
        &format!("shutdown_timeout_secs = 20\nmetrics_listen = \"127.0.0.1:{port}\""),
    );
    let path = dir.join(format!("pipeline-{port}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, format!("127.0.0.1:{port}").parse().unwrap())
}

/// Records a worker consumed, from its metrics page.
fn consumed(addr: SocketAddr) -> u64 {
    kafka::http_get(addr, "/metrics")
        .lines()
        .filter(|l| l.starts_with("pseudonymizer_records_in_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::net::TcpStream::connect(addr)
        .is_ok_and(|_| kafka::http_get(addr, "/readyz").contains(" 200 "))
    {
        assert!(
            Instant::now() < deadline,
            "worker at {addr} never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two processes in one group split the partitions; one stops; the other takes over its
/// partitions from their committed offsets; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_partitions_and_one_takes_over() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("pair");
    topics.create(&brokers, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let base = kafka::write_config(dir.path(), &topics, &brokers, FAST_GROUP);
    let (config_a, addr_a) = with_metrics(dir.path(), &base);
    let (config_b, addr_b) = with_metrics(dir.path(), &base);
    let mut a = start(&config_a);
    let mut b = start(&config_b);
    wait_ready(addr_a);
    wait_ready(addr_b);
    // Let the group settle with both members before there is anything to consume.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut inputs = Inputs::default();
    kafka::produce_unbatched(&brokers, &topics.raw, 4000, 24, &mut inputs).await;
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 4000
    });
    let (share_a, share_b) = (consumed(addr_a), consumed(addr_b));
    assert!(
        share_a > 0 && share_b > 0,
        "both members got partitions: A {share_a}, B {share_b}"
    );

    sigterm(&a);
    assert!(wait_exit(&mut a, Duration::from_secs(30)).success());
    kafka::produce_unbatched(&brokers, &topics.raw, 2000, 25, &mut inputs).await;
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 6000
    });
    let after_b = consumed(addr_b);
    assert!(
        after_b >= share_b + 2000,
        "B took over A's partitions: {share_b} then {after_b}"
    );
    sigterm(&b);
    assert!(wait_exit(&mut b, Duration::from_secs(30)).success());

    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "nothing lost",
    );
    kafka::verify_outputs(&got, &topics, &inputs);
}
