//! What Tansu 0.6 cannot host: it has no transactions, and it does not return the rest of a
//! record batch when a consumer resumes from a committed offset inside it, so a hand-over test
//! against it loses records that are not the worker's to lose. Here, on librdkafka's mock
//! cluster: exactly-once publishing with transactions, and dead-letter replay after a fix.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{self, Collected, Inputs, Topics};
use pseudonymizer::config::DeliveryMode;
use pseudonymizer::metrics::Metrics;
use rdkafka::mocking::MockCluster;

fn cluster(
    topics: &Topics,
    raw_partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .create_topic(&topics.raw, raw_partitions, 1)
        .unwrap();
    for topic in [&topics.calls, &topics.messages] {
        cluster.create_topic(topic, 2, 1).unwrap();
    }
    cluster.create_topic(&topics.dlq, 1, 1).unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_mode_publishes_each_event_once() {
    let topics = Topics::unique("eos");
    let cluster = cluster(&topics, 3);
    let brokers = cluster.bootstrap_servers();
    let mut config = topics.config(&brokers);
    let kafka_config = config.kafka.as_mut().unwrap();
    kafka_config.mode = DeliveryMode::ExactlyOnce;
    kafka_config.transactional_id = Some(format!("tx-{}", topics.group));
    let mut inputs = Inputs::default();
    kafka::produce(
        &brokers,
        &topics.raw,
        3000,
        26,
        &[b"poison".to_vec()],
        &mut inputs,
    )
    .await;

    let (stop, worker) = kafka::spawn_worker(&config, Metrics::new());
    let reader = kafka::reader(&brokers, &topics, true);
    let mut got = Collected::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.ids.len() < 3000 || got.dead.is_empty() {
        if worker.is_finished() {
            panic!("worker stopped: {:?}", worker.await.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {} outputs",
            got.ids.len()
        );
        let until = Instant::now() + Duration::from_secs(2);
        got.until(&reader, &topics, Duration::from_secs(5), |c| {
            (c.ids.len() >= 3000 && !c.dead.is_empty()) || Instant::now() > until
        });
    }
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.published, 3000);
    assert!(got.ids.values().all(|&n| n == 1), "exactly once");
    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "nothing lost",
    );
    kafka::verify_outputs(&got, &topics, &inputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_after_a_fix() {
    let topics = Topics::unique("replay");
    let cluster = cluster(&topics, 2);
    let brokers = cluster.bootstrap_servers();
    // The "bug": a record size limit too small for messages with bodies and attachments.
    let mut config = topics.config(&brokers);
    config.kafka.as_mut().unwrap().max_record_bytes = 260;
    let mut inputs = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 400, 27, &[], &mut inputs).await;
    let (stop, worker) = kafka::spawn_worker(&config, Metrics::new());
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(60), |c| {
        c.ids.len() + c.dead.len() >= 400
    });
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let dead = got.dead.len();
    assert!(
        dead > 10 && dead < 400,
        "some records were oversize ({dead})"
    );

    // The fix: a sane limit. Replay, run the worker again, and everything is published.
    config.kafka.as_mut().unwrap().max_record_bytes = 1 << 20;
    let replayed = pseudonymizer::worker::replay::replay(
        config.kafka.as_ref().unwrap(),
        std::slice::from_ref(&topics.raw),
        &common::keyset(),
        Duration::from_secs(2),
        None,
    )
    .await
    .unwrap();
    assert_eq!(replayed.replayed as usize, dead);
    let (stop, worker) = kafka::spawn_worker(&config, Metrics::new());
    got.until(&reader, &topics, Duration::from_secs(60), |c| {
        c.ids.len() >= 400
    });
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    kafka::assert_same_ids(
        &got.ids.keys().cloned().collect(),
        &kafka::ids(&inputs),
        "replayed records published",
    );
    kafka::verify_outputs(&got, &topics, &inputs);
}

/// Records the broker deletes before the worker reads them: the mock cluster keeps at most
/// 5 MiB per partition and deletes older records (`rdkafka_mock.c`), which is what retention
/// does to a worker that falls behind. (Tansu 0.6 deletes nothing: its memory storage keeps
/// every record, and it has no DeleteRecords.) The worker reads 200 records and commits; then
/// far more than 5 MiB arrive while it is stopped. Started again, it cannot resume where it
/// left off: it logs the offsets skipped and counts them, and carries on with what is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_they_are_read_are_logged_and_counted() {
    let logs = common::Logs::capture();
    let topics = Topics::unique("skipped");
    let cluster = cluster(&topics, 1);
    let brokers = cluster.bootstrap_servers();
    let config = topics.config(&brokers);
    let mut inputs = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 200, 41, &[], &mut inputs).await;
    let metrics = Metrics::new();
    let (stop, worker) = kafka::spawn_worker(&config, metrics.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.progress().1 < 200 {
        assert!(
            Instant::now() < deadline,
            "the first 200 records were processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(
        metrics.counts().skipped,
        0,
        "nothing skipped in a normal run"
    );

    // While the worker is stopped, about 8 MiB arrive: the oldest records are deleted.
    let mut later = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 24_000, 42, &[], &mut later).await;
    let (low, high) = watermarks(&brokers, &topics.raw);
    assert!(
        low > 200,
        "the mock cluster deleted unread records (low watermark {low})"
    );

    let metrics = Metrics::new();
    let (stop, worker) = kafka::spawn_worker(&config, metrics.clone());
    let deadline = Instant::now() + Duration::from_secs(180);
    while metrics.progress().1 < (high - low) as u64 || metrics.counts().skipped == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker read what is left ({:?}, {} left)",
            metrics.counts(),
            high - low
        );
        assert!(!worker.is_finished(), "the worker kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(
        metrics.counts().skipped,
        (low - 200) as u64,
        "every deleted unread record is counted, no more"
    );
    let text = metrics.render();
    assert!(
        text.contains(&format!(
            "pseudonymizer_records_skipped_total{{partition=\"0\",topic=\"{}\"}} {}",
            topics.raw,
            low - 200
        )),
        "the metric names the topic and partition"
    );
    let lines = logs.lines_with(&["deleted by the broker", &topics.raw]);
    assert_eq!(lines.len(), 1, "one error line: {lines:?}");
    for part in [
        "ERROR".to_owned(),
        "partition=0".to_owned(),
        "first_skipped=200".to_owned(),
        format!("last_skipped={}", low - 1),
        format!("skipped={}", low - 200),
    ] {
        assert!(lines[0].contains(&part), "{part} in {}", lines[0]);
    }
}

/// (low, high) watermarks of partition 0.
fn watermarks(brokers: &str, topic: &str) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
}
