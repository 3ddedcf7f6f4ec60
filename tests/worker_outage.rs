//! The broker goes away mid-stream and comes back: the worker reports the stall (error line,
//! metric, readyz 503), retries, resumes, and loses nothing; and a worker told to stop during
//! the outage stops within its bound instead of waiting for deliveries that cannot come.
//!
//! The outage is real TCP: this test starts its own Tansu (the binary `scripts/test.sh`
//! names in `PSEUDONYMIZER_TANSU_BIN`) listening on one port and advertising another, where a
//! proxy of the test's forwards to it. Every client, the worker included, reaches the broker
//! only through the proxy, so cutting it (closing every connection and refusing new ones)
//! looks to them exactly like a broker that went down, while the broker keeps its data.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::kafka::{self, Collected, Inputs, Topics};
use common::proxy::Proxy;
use pseudonymizer::metrics::Metrics;

/// A broker of this test's own, stopped on drop.
struct Broker(Child);

impl Broker {
    /// Whether the broker process still runs (for failure messages).
    fn status(&mut self) -> String {
        match self.0.try_wait() {
            Ok(None) => "the test's broker is still running".to_owned(),
            Ok(Some(exit)) => format!("the test's broker exited: {exit}"),
            Err(e) => format!("the test's broker cannot be checked: {e}"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Tansu listening on `listen` and telling clients to connect to `advertised`.
fn start_tansu(listen: SocketAddr, advertised: SocketAddr) -> Broker {
    let bin = std::env::var("PSEUDONYMIZER_TANSU_BIN").expect(
        "PSEUDONYMIZER_TANSU_BIN is not set: run the tests with scripts/test.sh, which installs Tansu",
    );
    let child = Command::new(bin)
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &format!("tcp://{listen}"),
            "--advertised-listener-url",
            &format!("tcp://{advertised}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Broker(child)
}

/// A broker of the test's own behind a proxy the test can cut: (broker, proxy, the address
/// clients use).
async fn broker_behind_proxy() -> (Broker, Proxy, String) {
    let (listen, advertised): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let broker = start_tansu(listen, advertised);
    let proxy = Proxy::start(advertised, listen).await;
    (broker, proxy, advertised.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_mid_stream_loses_nothing() {
    let (mut broker, proxy, brokers) = broker_behind_proxy().await;

    // The set-up has bounds of its own: a broker that died before the outage (seen once, a
    // run that then waited until it was killed) fails the test loudly instead of hanging.
    let setup_bound = Duration::from_secs(120);
    let topics = Topics::unique("outage");
    if tokio::time::timeout(setup_bound, topics.create(&brokers, 3))
        .await
        .is_err()
    {
        panic!(
            "topics not created within {setup_bound:?}; {}",
            broker.status()
        );
    }
    let mut inputs = Inputs::default();
    const EVENTS: usize = 6000;
    // One record per batch: after the outage the consumer fetches from its position, which
    // must not fall inside a batch (Tansu 0.6 returns nothing from the middle of one).
    let produced = kafka::produce_unbatched(&brokers, &topics.raw, EVENTS, 31, &mut inputs);
    if tokio::time::timeout(setup_bound, produced).await.is_err() {
        panic!(
            "input not produced within {setup_bound:?}; {}",
            broker.status()
        );
    }

    let logs = common::Logs::capture();
    let mut config = topics.config(&brokers);
    let kafka_config = config.kafka.as_mut().unwrap();
    // Reconnect quickly once the broker is back, so the test is short.
    kafka_config
        .properties
        .insert("reconnect.backoff.max.ms".into(), "1000".into());
    // The outage lasts 10 s: a stall must be reported well within it.
    kafka_config.stall_timeout_secs = 3;
    let metrics = Metrics::new();
    let (stop, worker) = kafka::spawn_worker(&config, metrics.clone());
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    // The outage starts once the worker itself has published 1,000 records (its counter,
    // read every millisecond): waiting for a reader to see them instead let a fast worker
    // finish all 6,000 first, and an outage with nothing left to do is no stall.
    kafka::published_at_least(
        &metrics,
        1000,
        Duration::from_secs(120),
        "before the outage",
    )
    .await;

    // The outage: every connection closed, new ones refused, for 10 s.
    proxy.set_up(false);
    let during = metrics.counts().published as usize;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !worker.is_finished(),
        "the worker gave up during the outage"
    );
    assert!(
        proxy.cut_connections.load(Ordering::Relaxed) > 0,
        "the outage cut live connections"
    );
    // The stall was reported: counted, readyz 503, an error line naming the partitions.
    assert!(metrics.stalls.get() >= 1, "the stall was counted");
    assert_eq!(metrics.stalled.get(), 1, "the stall gauge is set");
    assert!(!metrics.is_ready(), "readyz answers 503 while stalled");
    let stall_lines = logs.lines_with(&["stalled", &format!("{}[", topics.raw)]);
    assert!(
        !stall_lines.is_empty(),
        "an error line names the stalled partitions: {:?}",
        logs.lines_with(&["stalled"])
    );
    assert!(stall_lines[0].contains("ERROR"), "{}", stall_lines[0]);
    let before_recovery = proxy.connections.load(Ordering::Relaxed);
    proxy.set_up(true);

    got.until(&reader, &topics, Duration::from_secs(180), |c| {
        c.ids.len() >= EVENTS
    });
    assert!(
        proxy.connections.load(Ordering::Relaxed) > before_recovery,
        "clients reconnected after the outage"
    );
    assert!(
        during < EVENTS,
        "the outage came mid-stream ({during} of {EVENTS} published)"
    );
    // Records flow again: the stall is over.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(metrics.is_ready() && metrics.stalled.get() == 0) {
        assert!(
            Instant::now() < deadline,
            "readyz 200 again after the stall"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("worker stops within its bound")
        .unwrap()
        .expect("worker ran without error");
    assert!(stats.published as usize >= EVENTS, "{stats:?}");

    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "every input published after the outage",
    );
    kafka::verify_outputs(&got, &topics, &inputs);
}

/// A shutdown while the broker is out of reach and the worker waits on full in-flight queues:
/// the worker stops within `shutdown_timeout_secs` (with the timeout error, nothing stored past
/// what was delivered) rather than after librdkafka's five-minute delivery timeout, and a worker
/// started after the outage publishes every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_an_outage_ends_within_its_bound() {
    let (_broker, proxy, brokers) = broker_behind_proxy().await;
    let topics = Topics::unique("outage-stop");
    tokio::time::timeout(Duration::from_secs(120), topics.create(&brokers, 3))
        .await
        .expect("topics created");
    let mut inputs = Inputs::default();
    const EVENTS: usize = 3000;
    let produced = kafka::produce_unbatched(&brokers, &topics.raw, EVENTS, 37, &mut inputs);
    tokio::time::timeout(Duration::from_secs(120), produced)
        .await
        .expect("input produced");

    let mut config = topics.config(&brokers);
    let kafka_config = config.kafka.as_mut().unwrap();
    kafka_config
        .properties
        .insert("reconnect.backoff.max.ms".into(), "1000".into());
    kafka_config.max_in_flight = 50;
    kafka_config.shutdown_timeout_secs = 3;
    // Slow on purpose (at most 50 records per 50 ms): the outage surely comes mid-stream.
    kafka_config
        .producer_properties
        .insert("linger.ms".into(), "50".into());
    let metrics = Metrics::new();
    let (stop, worker) = kafka::spawn_worker(&config, metrics.clone());
    kafka::published_at_least(&metrics, 200, Duration::from_secs(120), "before the outage").await;
    proxy.set_up(false);
    // The worker fills its in-flight queues with records it cannot deliver, and waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.in_flight.get() < 50 {
        assert!(
            Instant::now() < deadline,
            "the in-flight queues did not fill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published_before = metrics.counts().published as usize;
    assert!(published_before < EVENTS, "the outage came mid-stream");
    let told = Instant::now();
    stop.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .expect("the worker stops within its shutdown bound during an outage")
        .unwrap();
    assert!(
        matches!(
            ended,
            Err(pseudonymizer::worker::WorkerError::ShutdownTimeout(_))
        ),
        "{ended:?}"
    );
    assert!(
        told.elapsed() < Duration::from_secs(10),
        "{:?}",
        told.elapsed()
    );

    // After the outage, a new worker of the same group publishes every record.
    proxy.set_up(true);
    let mut config = config.clone();
    config.kafka.as_mut().unwrap().shutdown_timeout_secs = 20;
    let (stop, worker) = kafka::spawn_worker(&config, Metrics::new());
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(180), |c| {
        c.ids.len() >= EVENTS
    });
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("worker stops within its bound")
        .unwrap()
        .expect("worker ran without error");
    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "every input published after a shutdown during the outage",
    );
}
