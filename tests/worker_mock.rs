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
        &common::keyset(),
        Duration::from_secs(2),
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
