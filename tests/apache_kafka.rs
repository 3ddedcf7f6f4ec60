//! What only Apache Kafka itself can prove (scripts/kafka.sh starts it; Tansu has no
//! transactions and no session-timeout hand-over):
//!
//! - exactly-once mode: `kill -9` mid-transaction and a restart, a second worker with the same
//!   `transactional_id` (fencing), and a rebalance mid-transaction each leave every input event
//!   exactly once on the analytics topics for a `read_committed` reader, and each poison record
//!   exactly once in the dead-letter topic;
//! - exactly-once mode when every delivery is refused: each commit fails and is aborted, the
//!   worker stops after three, nothing is visible and no offset committed;
//! - crash hand-over: three at-least-once workers in one group, one killed with SIGKILL; its
//!   partitions move to the others within the session timeout and every event comes out;
//! - the producers' polling thread and pre-commit flush: a flush waits for its records'
//!   acknowledgements, not for rdkafka's 100 ms poll steps, and the idle thread does not spin.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::{self, ApacheKafka, Collected, Inputs, Topics};
use common::process::{metric, sigterm, start, wait_exit, wait_ready};
use common::Reaped;

/// A killed member is noticed after 6 s (the broker's minimum session timeout), not 45.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

fn fast_group() -> String {
    format!(
        "\"session.timeout.ms\" = \"{}\"\n\"heartbeat.interval.ms\" = \"500\"",
        SESSION_TIMEOUT.as_millis()
    )
}

/// One test at a time: each runs up to three workers beside the broker on two cores, and the
/// hand-over test measures time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Poison records: not Avro, not framed.
fn poison() -> Vec<Vec<u8>> {
    vec![b"plain text, not avro".to_vec(), vec![0, 0, 0]]
}

/// The test config (`kafka::write_config`) in exactly-once mode with `transactional_id`, its
/// metrics on a free port; returns (config, metrics address).
fn exactly_once_config(
    dir: &Path,
    base: &Path,
    transactional_id: Option<&str>,
) -> (PathBuf, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mode = match transactional_id {
        Some(id) => format!("mode = \"exactly-once\"\ntransactional_id = \"{id}\"\n"),
        None => String::new(),
    };
    let text = std::fs::read_to_string(base).unwrap().replace(
        "shutdown_timeout_secs = 20",
        &format!("shutdown_timeout_secs = 20\nmetrics_listen = \"127.0.0.1:{port}\"\n{mode}"),
    );
    let path = dir.join(format!("pipeline-{port}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, format!("127.0.0.1:{port}").parse().unwrap())
}

/// Reads until every input event and every poison record has arrived, then until quiet, and
/// asserts each event exactly once and each poison record exactly once.
fn assert_exactly_once(
    got: &mut Collected,
    reader: &rdkafka::consumer::BaseConsumer,
    topics: &Topics,
    inputs: &Inputs,
    poison: usize,
) {
    let events = inputs.by_id.len();
    got.until(reader, topics, Duration::from_secs(240), |c| {
        c.ids.len() >= events && c.dead.len() >= poison
    });
    got.until_quiet(reader, topics, Duration::from_secs(3));
    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(inputs),
        "published = input",
    );
    let twice: Vec<_> = got.ids.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "{} of {events} events published more than once to read_committed readers, e.g. {twice:?}",
        got.ids.values().filter(|&&n| n > 1).count()
    );
    assert_eq!(got.outputs.len(), events, "one output per event");
    assert_eq!(
        got.dead.len(),
        poison,
        "each poison record dead-lettered exactly once"
    );
    kafka::verify_outputs(got, topics, inputs);
}

/// The regex of a test's analytics topics, for the Java console consumer.
fn analytics_topics(topics: &Topics) -> String {
    format!("^({}|{})$", topics.calls, topics.messages)
}

struct Setup {
    kafka: ApacheKafka,
    topics: Topics,
    dir: tempfile::TempDir,
    base: PathBuf,
    inputs: Inputs,
}

async fn setup(test: &str, partitions: i32, events: usize, seed: u64) -> Setup {
    let kafka = kafka::apache_kafka();
    let topics = Topics::unique(test);
    topics.create(&kafka.brokers, partitions).await;
    let dir = tempfile::tempdir().unwrap();
    let base = kafka::write_config(dir.path(), &topics, &kafka.brokers, &fast_group());
    let mut inputs = Inputs::default();
    kafka::produce(
        &kafka.brokers,
        &topics.raw,
        events,
        seed,
        &poison(),
        &mut inputs,
    )
    .await;
    Setup {
        kafka,
        topics,
        dir,
        base,
        inputs,
    }
}

/// `kill -9` while transactions are open, then a restart with the same `transactional_id`:
/// the restarted worker aborts what the killed one left open and resumes from the committed
/// offsets; a `read_committed` reader sees each event once and each poison record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_kill_9_mid_transaction_then_restart() {
    let _serial = serial().await;
    const EVENTS: usize = 20_000;
    let s = setup("eos-kill", 3, EVENTS, 31).await;
    let (config, addr) = exactly_once_config(s.dir.path(), &s.base, Some("eos-kill-0"));
    let log = s.dir.path().join("worker.log");
    let reader = kafka::reader(&s.kafka.brokers, &s.topics, true);
    let mut got = Collected::default();

    let mut worker = start(&config, &log);
    wait_ready(addr);
    got.until(&reader, &s.topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 3000
    });
    // Mid-stream, transactions of up to 500 records every 100 ms: kill it while one holds
    // records (the in-flight gauge counts the open transaction's records).
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(addr, "pseudonymizer_in_flight") == 0 {
        assert!(
            Instant::now() < deadline,
            "no transaction ever held records"
        );
    }
    let consumed_before_kill = metric(addr, "pseudonymizer_records_in_total");
    worker.kill().unwrap(); // SIGKILL: no commit, no abort, no leaving the group
    assert!(!wait_exit(&mut worker, Duration::from_secs(10)).success());
    let seen_at_kill = got.ids.len();

    let log2 = s.dir.path().join("worker-2.log");
    let mut worker = start(&config, &log2);
    assert_exactly_once(&mut got, &reader, &s.topics, &s.inputs, poison().len());
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());

    // Kafka's own Java consumer agrees: read_committed sees each event once; read_uncommitted
    // also sees the copies of the transaction the kill left open (aborted at the restart).
    let include = analytics_topics(&s.topics);
    let committed = s.kafka.java_console_count(&include, "read_committed");
    assert_eq!(
        committed, EVENTS,
        "the Java read_committed consumer's count"
    );
    let uncommitted = s.kafka.java_console_count(&include, "read_uncommitted");
    eprintln!(
        "killed after {consumed_before_kill} records consumed ({seen_at_kill} committed and \
         seen); {} outputs for {EVENTS} events to read_committed readers (rdkafka and Java); \
         {uncommitted} records for the Java read_uncommitted consumer, aborted copies included",
        got.outputs.len()
    );
}

/// Two workers with the same `transactional_id`: the second fences the first, which says so
/// and exits non-zero; nothing is duplicated or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_same_transactional_id_fences_the_older_worker() {
    let _serial = serial().await;
    const EVENTS: usize = 20_000;
    let mut s = setup("eos-fence", 3, EVENTS, 32).await;
    let (config_a, addr_a) = exactly_once_config(s.dir.path(), &s.base, Some("eos-fence-0"));
    let (config_b, addr_b) = exactly_once_config(s.dir.path(), &s.base, Some("eos-fence-0"));
    let (log_a, log_b) = (s.dir.path().join("a.log"), s.dir.path().join("b.log"));
    let reader = kafka::reader(&s.kafka.brokers, &s.topics, true);
    let mut got = Collected::default();

    let mut a = start(&config_a, &log_a);
    wait_ready(addr_a);
    got.until(&reader, &s.topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 2000
    });
    let mut b = start(&config_b, &log_b);
    wait_ready(addr_b);
    // A zombie learns it is fenced when it next writes (as with Kafka's own clients): more
    // records now, so that the first worker has some to write even if it had finished the
    // first batch before the second worker started.
    kafka::produce(
        &s.kafka.brokers,
        &s.topics.raw,
        2_000,
        34,
        &[],
        &mut s.inputs,
    )
    .await;
    let status = wait_exit(&mut a, Duration::from_secs(60));
    assert!(
        !status.success(),
        "the fenced worker exits non-zero: {status}"
    );
    let said = std::fs::read_to_string(&log_a).unwrap();
    assert!(
        said.contains("fenced") && said.contains("eos-fence-0"),
        "the fenced worker says why it stops; its log:\n{said}"
    );

    assert_exactly_once(&mut got, &reader, &s.topics, &s.inputs, poison().len());
    sigterm(&b);
    assert!(wait_exit(&mut b, Duration::from_secs(30)).success());
}

/// Every delivery refused by the broker (analytics topics whose `max.message.bytes` no batch
/// fits): each transaction fails, by its commit or, when records come after a delivery in it
/// failed, by librdkafka refusing them; each is aborted and read again, and after three in a
/// row the worker stops with an error naming the broker's reason. Nothing reaches a
/// `read_committed` reader (not even the poison records' dead letters, which were in the same
/// transactions) and no offset is committed: with the topics fixed, a restarted worker
/// publishes every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_refused_deliveries_fail_the_commit_and_nothing_is_published() {
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let topics = Topics::unique("eos-refused");
    topics
        .create_with(&kafka.brokers, 2, &[("max.message.bytes", "100")])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let base = kafka::write_config(dir.path(), &topics, &kafka.brokers, &fast_group());
    let mut inputs = Inputs::default();
    kafka::produce(&kafka.brokers, &topics.raw, 300, 36, &poison(), &mut inputs).await;
    let (config, _) = exactly_once_config(dir.path(), &base, Some("eos-refused-0"));
    let log = dir.path().join("worker.log");

    let mut worker = start(&config, &log);
    // More records while it runs, a few at a time: some come in a transaction after one of
    // its deliveries failed, which librdkafka refuses (the path a refused commit does not take).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut wave = 0;
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not stop");
        wave += 1;
        kafka::produce(&kafka.brokers, &topics.raw, 10, 36 + wave, &[], &mut inputs).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "the worker stops with an error: {status}"
    );
    assert!(
        said.contains("3 transactions in a row were refused")
            && said.contains("Message size too large")
            && said.contains("a record in it could not be delivered")
            && said.matches("transaction aborted").count() == 3,
        "the worker says why it stops; its log:\n{said}"
    );

    let reader = kafka::reader(&kafka.brokers, &topics, true);
    let mut got = Collected::default();
    got.until_quiet(&reader, &topics, Duration::from_secs(5));
    assert!(
        got.outputs.is_empty() && got.dead.is_empty(),
        "a read_committed reader sees nothing: {} outputs, {} dead letters",
        got.outputs.len(),
        got.dead.len()
    );
    for (partition, offset) in kafka::committed(&kafka.brokers, &topics.raw, &topics.group, 2) {
        assert_eq!(
            offset,
            rdkafka::Offset::Invalid,
            "no offset committed for partition {partition}"
        );
    }

    // The analytics topics fixed (new ones, without the limit), the same group: every event
    // once, every poison record once. (The first reader leaves its group first: the second
    // has the same one.)
    drop(reader);
    let fixed = Topics {
        calls: format!("{}-fixed", topics.calls),
        messages: format!("{}-fixed", topics.messages),
        ..topics
    };
    kafka::create_topics(&kafka.brokers, &[(&fixed.calls, 2), (&fixed.messages, 2)]).await;
    let base = kafka::write_config(dir.path(), &fixed, &kafka.brokers, &fast_group());
    let (config, _) = exactly_once_config(dir.path(), &base, Some("eos-refused-0"));
    let mut worker = start(&config, &dir.path().join("worker-fixed.log"));
    let reader = kafka::reader(&kafka.brokers, &fixed, true);
    let mut got = Collected::default();
    assert_exactly_once(&mut got, &reader, &fixed, &inputs, poison().len());
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
}

/// A second worker joins mid-stream and leaves again (two rebalances while transactions are
/// open): every event once, every poison record once, and the first worker aborted rather than
/// committed what the rebalance interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_rebalance_mid_transaction() {
    let _serial = serial().await;
    const EVENTS: usize = 30_000;
    let s = setup("eos-rebalance", 4, EVENTS, 33).await;
    let (config_a, addr_a) = exactly_once_config(s.dir.path(), &s.base, Some("eos-rebalance-a"));
    let (config_b, addr_b) = exactly_once_config(s.dir.path(), &s.base, Some("eos-rebalance-b"));
    let (log_a, log_b) = (s.dir.path().join("a.log"), s.dir.path().join("b.log"));
    let reader = kafka::reader(&s.kafka.brokers, &s.topics, true);
    let mut got = Collected::default();

    let mut a = start(&config_a, &log_a);
    wait_ready(addr_a);
    got.until(&reader, &s.topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 2000
    });
    let mut b = start(&config_b, &log_b);
    wait_ready(addr_b);
    // B gets partitions and works on them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(addr_b, "pseudonymizer_records_in_total") < 500 {
        assert!(
            Instant::now() < deadline,
            "the joining worker never consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&b);
    assert!(wait_exit(&mut b, Duration::from_secs(30)).success());

    assert_exactly_once(&mut got, &reader, &s.topics, &s.inputs, poison().len());
    let aborted = kafka::http_get(addr_a, "/metrics")
        .lines()
        .find(|l| l.starts_with("pseudonymizer_transactions_total{outcome=\"aborted\"}"))
        .map(str::to_owned);
    sigterm(&a);
    assert!(wait_exit(&mut a, Duration::from_secs(30)).success());
    let said = std::fs::read_to_string(&log_a).unwrap();
    eprintln!(
        "A: {aborted:?}; {} abort lines in its log",
        said.lines()
            .filter(|l| l.contains("transaction aborted"))
            .count()
    );
}

/// Three at-least-once workers in one group, one killed with SIGKILL: the broker notices after
/// the session timeout and hands its partitions to the other two, which resume from its
/// committed offsets. Measured: from the kill to the first record of its partitions published
/// by another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_hand_over_within_the_session_timeout() {
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let topics = Topics::unique("handover");
    topics.create(&kafka.brokers, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let base = kafka::write_config(dir.path(), &topics, &kafka.brokers, &fast_group());
    let workers: Vec<(PathBuf, SocketAddr)> = (0..3)
        .map(|_| exactly_once_config(dir.path(), &base, None))
        .collect();
    let mut running: Vec<Reaped> = workers
        .iter()
        .enumerate()
        .map(|(i, (config, _))| start(config, &dir.path().join(format!("w{i}.log"))))
        .collect();
    for (_, addr) in &workers {
        wait_ready(*addr);
    }
    // Let the group settle with all three members before there is anything to consume.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let assigned = workers
            .iter()
            .filter(|(_, addr)| {
                kafka::http_get(*addr, "/metrics").contains("pseudonymizer_consumer_lag{")
            })
            .count();
        if assigned == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three workers never all got partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut inputs = Inputs::default();
    kafka::produce(&kafka.brokers, &topics.raw, 6000, 41, &[], &mut inputs).await;
    let reader = kafka::reader(&kafka.brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 6000
    });
    let shares: Vec<u64> = workers
        .iter()
        .map(|(_, addr)| metric(*addr, "pseudonymizer_records_in_total"))
        .collect();
    assert!(
        shares.iter().all(|&n| n > 0),
        "each member consumed a share: {shares:?}"
    );

    // Kill the first worker, then produce more: records of its partitions can only come out
    // through the others, after the broker expires its session.
    running[0].kill().unwrap();
    let killed = Instant::now();
    let before: Vec<u64> = workers[1..]
        .iter()
        .map(|(_, addr)| metric(*addr, "pseudonymizer_records_in_total"))
        .collect();
    kafka::produce(&kafka.brokers, &topics.raw, 6000, 42, &[], &mut inputs).await;
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 12_000
    });
    // An upper bound of the hand-over: every record of the killed worker's partitions is out.
    let handed_over = killed.elapsed();
    let after: Vec<u64> = workers[1..]
        .iter()
        .map(|(_, addr)| metric(*addr, "pseudonymizer_records_in_total"))
        .collect();
    let taken: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert!(
        taken >= 6000,
        "the survivors consumed every new record: {taken} (before {before:?}, after {after:?})"
    );
    // The session timeout, plus a rebalance and a fetch: well under twice the timeout.
    assert!(
        handed_over < SESSION_TIMEOUT * 2 + Duration::from_secs(5),
        "hand-over took {handed_over:?} with a session timeout of {SESSION_TIMEOUT:?}"
    );
    eprintln!(
        "hand-over: every record of the killed worker's partitions published by the others \
         {handed_over:?} after SIGKILL (session timeout {SESSION_TIMEOUT:?})"
    );
    for w in running.iter_mut().skip(1) {
        sigterm(w);
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "every event at least once",
    );
    kafka::verify_outputs(&got, &topics, &inputs);
}

/// The worker partitions its output as the Java clients do (murmur2 of the key): every
/// sanitized record lands in the partition Kafka's own Java producer picks for the same key on
/// a topic of the same size, so analytics can join co-partitioned topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_partitions_match_the_java_clients() {
    let _serial = serial().await;
    let s = setup("partitioner", 3, 400, 34).await;
    let config = s.topics.config(&s.kafka.brokers);
    let (stop, worker) = kafka::spawn_worker(&config, pseudonymizer::metrics::Metrics::new());
    let reader = kafka::reader(&s.kafka.brokers, &s.topics, false);
    let mut got = Collected::default();
    got.until(&reader, &s.topics, Duration::from_secs(120), |c| {
        c.ids.len() >= 400
    });
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    use rdkafka::Message;
    let ours: Vec<(i32, String)> = got
        .outputs
        .iter()
        .filter(|m| m.topic() == s.topics.calls)
        .map(|m| {
            (
                m.partition(),
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(ours.len(), 200);
    assert!(
        ours.iter().any(|(p, _)| *p == 0) && ours.iter().any(|(p, _)| *p == 1),
        "both partitions used"
    );
    // The same keys through the Java producer, into a topic of the same size (2 partitions).
    let java_topic = format!("java-{}", s.topics.calls);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &s.kafka.brokers)
            .create()
            .unwrap();
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                &java_topic,
                2,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let keys: Vec<String> = ours.iter().map(|(_, k)| k.clone()).collect();
    s.kafka.java_produce_keys(&java_topic, &keys);
    let java: std::collections::HashMap<String, i32> = s
        .kafka
        .java_partitions(&java_topic)
        .into_iter()
        .map(|(p, k)| (k, p))
        .collect();
    assert_eq!(
        java.len(),
        keys.iter().collect::<std::collections::HashSet<_>>().len()
    );
    for (partition, key) in &ours {
        assert_eq!(
            java.get(key),
            Some(partition),
            "a key in a different partition than the Java producer puts it"
        );
    }
}

/// The producers' polling thread and the flush before a transaction's commit
/// (`pseudonymizer::worker::polled`), against rdkafka's own: its flush waits in steps of
/// 100 ms (at least 99 ms whenever a record is in flight), and its polling thread spins about
/// 1 ms of every 100 (about 10 ms of CPU a second, idle). Here a flushed record takes what its
/// acknowledgement takes, and the idle thread sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_flushes_without_waiting_out_poll_steps_and_idles_without_spinning() {
    use pseudonymizer::worker::polled::{flush_in_flight, PolledProducer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _};
    let _serial = serial().await;
    let kafka = kafka::apache_kafka();
    let topics = Topics::unique("polled");
    topics.create(&kafka.brokers, 1).await;
    let polling_threads_before = threads_named("producer poll");
    let producer: PolledProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create_with_context(DefaultProducerContext)
        .unwrap();
    // A new thread names itself once it runs: looked for until it has.
    let started = Instant::now();
    let polling_thread = loop {
        let new = threads_named("producer poll")
            .into_iter()
            .find(|tid| !polling_threads_before.contains(tid));
        match new {
            Some(tid) => break tid,
            None if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            None => panic!("the producer started no polling thread"),
        }
    };

    // Flushes: each waits for its record's acknowledgement, not for a poll step.
    let mut waits = Vec::new();
    for i in 0..15 {
        let value = format!("record {i}");
        producer
            .send(BaseRecord::<(), _>::to(&topics.calls).payload(&value))
            .map_err(|(e, _)| e)
            .unwrap();
        assert!(producer.in_flight_count() > 0, "a record is in flight");
        let started = Instant::now();
        flush_in_flight(&producer, Duration::from_secs(30)).unwrap();
        // `Ok`: librdkafka counted no record in flight any more.
        waits.push(started.elapsed());
    }
    waits.sort();
    let median = waits[waits.len() / 2];
    assert!(
        median < Duration::from_millis(60),
        "a flush waited {median:?} (median of {waits:?}); rdkafka's waits at least 99 ms"
    );

    // Idle: the polling thread's CPU over two seconds.
    let before = thread_cpu(polling_thread);
    std::thread::sleep(Duration::from_secs(2));
    let idle = thread_cpu(polling_thread) - before;
    assert!(
        idle < Duration::from_millis(4),
        "the idle polling thread used {idle:?} of CPU in 2 s (rdkafka's spins about 20 ms)"
    );

    // Dropping the producer stops and joins its thread.
    drop(producer);
    assert!(
        !threads_named("producer poll").contains(&polling_thread),
        "the polling thread ended with its producer"
    );
}

/// This process's threads called `name`.
fn threads_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let tid = entry.file_name().to_str()?.parse().ok()?;
            (comm.trim_end() == name).then_some(tid)
        })
        .collect()
}

/// The CPU time a thread of this process has used (the scheduler's count, in nanoseconds).
fn thread_cpu(tid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .expect("the kernel keeps scheduler statistics (/proc/…/schedstat)");
    let nanos: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(nanos)
}
