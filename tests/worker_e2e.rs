//! The stream worker end to end against a real broker (Tansu, started by scripts/test.sh):
//! every event arrives exactly once, tokens and envelopes verify, nothing raw is published,
//! poison records land in the dead-letter topic sealed, metrics count them, and offsets are
//! committed on shutdown.

mod common;

use std::time::Duration;

use common::kafka::{self, http_get, Collected, Inputs, Topics};
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::metrics::Metrics;
use pseudonymizer::worker::{self, route::frame};
use rdkafka::message::Headers;
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_against_tansu() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("e2e");
    topics.create(&brokers, 3).await;
    let config = topics.config(&brokers);

    let engine = common::engine();
    let good_call = frame(
        1,
        &common::encode(
            &engine.plan("comms.v1.CallEvent").unwrap().input,
            Generator::new(1).event(Kind::Call),
        ),
    );
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"plain text, not avro".to_vec(), "bad-magic"),
        (vec![0, 0, 0], "bad-magic"),
        (frame(77, b"\x02ab"), "unknown-schema-id"),
        (good_call[..good_call.len() / 2].to_vec(), "corrupt-avro"),
        (frame(2, &[0xff; 16]), "corrupt-avro"),
    ];
    let mut inputs = Inputs::default();
    const EVENTS: usize = 2000;
    let extra: Vec<Vec<u8>> = poison.iter().map(|(p, _)| p.clone()).collect();
    kafka::produce(&brokers, &topics.raw, EVENTS, 2026, &extra, &mut inputs).await;

    let metrics = Metrics::new();
    let addr = pseudonymizer::endpoint::serve(&metrics, "127.0.0.1:0").unwrap();
    assert!(
        http_get(addr, "/readyz").starts_with("HTTP/1.1 503")
            || http_get(addr, "/readyz").starts_with("HTTP/1.0 503")
    );
    let (stop, worker) = kafka::spawn_worker(&config, metrics.clone());

    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(120), |c| {
        c.outputs.len() >= EVENTS && c.dead.len() >= poison.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    if let Some(extra) = reader.poll(Duration::from_millis(1000)) {
        panic!("unexpected extra record on {}", extra.unwrap().topic());
    }
    assert_eq!(got.ids.len(), EVENTS, "every event exactly once");
    assert!(got.ids.values().all(|&n| n == 1));
    kafka::verify_outputs(&got, &topics, &inputs);

    // Dead letters: exactly the poison, sealed, with reason and source headers.
    let keyset = common::keyset();
    let mut reasons = Vec::new();
    let mut originals = Vec::new();
    let finder = inputs.leak_finder();
    for message in &got.dead {
        let headers = message.headers().unwrap();
        let get = |k: &str| {
            headers
                .iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        reasons.push(get("dlq.reason").unwrap());
        assert_eq!(get("dlq.source-topic").unwrap(), topics.raw);
        assert!(
            get("dlq.source-offset").is_some()
                && get("dlq.source-partition").is_some()
                && get("dlq.time-ms").is_some()
        );
        let sealed = message.payload().unwrap();
        assert!(
            !sealed.windows(10).any(|w| w == b"plain text") && !finder.leaks(sealed),
            "DLQ holds raw bytes"
        );
        // Sealed for the topic it came from: it opens only for that one.
        originals.push(
            keyset
                .open(&worker::dlq_value_path(&topics.raw), sealed)
                .unwrap(),
        );
        assert!(keyset
            .open(&worker::dlq_value_path(&topics.calls), sealed)
            .is_err());
    }
    let mut expected: Vec<String> = poison.iter().map(|(_, r)| r.to_string()).collect();
    reasons.sort();
    expected.sort();
    assert_eq!(reasons, expected);
    for (payload, _) in &poison {
        assert!(
            originals.contains(payload),
            "a poison record's original bytes are in the DLQ"
        );
    }

    // Metrics and health while running.
    let page = http_get(addr, "/metrics");
    assert!(
        page.contains("pseudonymizer_records_out_total{pipeline=\"calls\"} 1000"),
        "{page}"
    );
    assert!(
        page.contains("pseudonymizer_records_dead_lettered_total{reason=\"corrupt-avro\"} 2"),
        "{page}"
    );
    assert!(
        page.contains("pseudonymizer_active_key{key_id=\"p-test-1\",purpose=\"pseudonym\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("pseudonymizer_envelopes_sealed_total{key_id=\"e-test-1\"}"),
        "{page}"
    );
    assert!(
        page.contains("pseudonymizer_transform_seconds_bucket"),
        "{page}"
    );
    assert!(
        !inputs.leak_finder().leaks(page.as_bytes()),
        "raw value in metrics"
    );
    assert!(http_get(addr, "/healthz").contains("200 OK"));
    assert!(http_get(addr, "/readyz").contains("200 OK"));

    // Shutdown: clean exit, and the committed offsets cover every input record.
    stop.send(true).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(40), worker)
        .await
        .expect("stops within the bound")
        .unwrap()
        .unwrap();
    assert_eq!(stats.consumed as usize, EVENTS + poison.len());
    assert_eq!(stats.published as usize, EVENTS);
    let left = kafka::uncommitted(&brokers, &topics.raw, &topics.group, 3);
    assert!(
        left.is_empty(),
        "{} raw records were not committed",
        left.len()
    );
}

/// `dlq replay` trusts no header. A genuine dead letter copied with its `dlq.source-topic`
/// pointed at an analytics topic (what someone with write access to the dead-letter topic only
/// could do) is refused, and that topic receives nothing. A dead letter sealed before the
/// source was bound (field path `dlq`) still replays, but only to an input topic. The genuine
/// dead letters replay to their source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_dead_letters_pointed_at_another_topic() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let brokers = kafka::tansu();
    let topics = Topics::unique("replay-bound");
    topics.create(&brokers, 1).await;
    let config = topics.config(&brokers);
    let mut inputs = Inputs::default();
    let poison = vec![b"plain text, not avro".to_vec(), vec![0, 0, 0]];
    kafka::produce(&brokers, &topics.raw, 10, 61, &poison, &mut inputs).await;
    let (stop, worker) = kafka::spawn_worker(&config, Metrics::new());
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(60), |c| {
        c.ids.len() >= 10 && c.dead.len() >= 2
    });
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let analytics = |brokers: &str| {
        kafka::read_from_start(brokers, &topics.calls, 2).len()
            + kafka::read_from_start(brokers, &topics.messages, 2).len()
    };
    let analytics_before = analytics(&brokers);
    assert_eq!(analytics_before, 10);

    // Forgeries, written straight to the dead-letter topic.
    let headers_to = |source: &str, from: Option<&OwnedHeaders>| {
        let mut headers = OwnedHeaders::new();
        if let Some(from) = from {
            for h in from.iter().filter(|h| h.key != "dlq.source-topic") {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        headers.insert(Header {
            key: "dlq.source-topic",
            value: Some(source),
        })
    };
    let with_reason = |headers: OwnedHeaders| {
        headers.insert(Header {
            key: "dlq.reason",
            value: Some("bad-magic"),
        })
    };
    let genuine = &got.dead[0];
    let seal_key = common::active(&common::engine()).encryption.unwrap();
    let legacy_payload = b"sealed before the source was bound".to_vec();
    let mut legacy = Vec::new();
    pseudonymizer::envelope::seal_into(&seal_key, "dlq", &legacy_payload, &mut legacy);
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for (payload, headers) in [
        (
            genuine.payload().unwrap().to_vec(),
            headers_to(&topics.calls, genuine.headers()),
        ),
        (legacy.clone(), with_reason(headers_to(&topics.calls, None))),
        (legacy.clone(), with_reason(headers_to(&topics.raw, None))),
    ] {
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topics.dlq)
            .payload(payload.as_slice())
            .headers(headers);
        producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }

    // The poison is bad-magic, which a replay keeps unless asked for by reason.
    let replayed = worker::replay::replay(
        config.kafka.as_ref().unwrap(),
        std::slice::from_ref(&topics.raw),
        &common::keyset(),
        Duration::from_secs(3),
        Some(&["bad-magic".to_owned()]),
    )
    .await
    .unwrap();
    assert_eq!(
        (replayed.replayed, replayed.refused, replayed.unopened),
        (3, 2, 0),
        "the two genuine dead letters and the old-format one pointed at the raw topic replay; \
         the two pointed at an analytics topic are refused"
    );
    assert_eq!(
        analytics(&brokers),
        analytics_before,
        "the analytics topics received nothing"
    );
    let raw = kafka::read_from_start(&brokers, &topics.raw, 1);
    assert_eq!(raw.len(), 10 + 2 + 3);
    let replayed_payloads: Vec<&[u8]> = raw[12..].iter().filter_map(|m| m.payload()).collect();
    assert!(replayed_payloads.contains(&legacy_payload.as_slice()));
    for original in &poison {
        assert!(replayed_payloads.contains(&original.as_slice()));
    }
}

/// `dlq replay` sends back by default only what a fix can cure: a record of an unknown schema
/// id goes back to the raw topic; bad-magic poison stays in the dead-letter topic, counted as
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_default_sends_back_only_what_a_fix_can_cure() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("replay-reasons");
    topics.create(&brokers, 1).await;
    let unknown_schema = pseudonymizer::worker::route::frame(99, b"\x02ab");
    let poison = vec![b"plain text, not avro".to_vec(), unknown_schema.clone()];
    let mut inputs = Inputs::default();
    kafka::produce(&brokers, &topics.raw, 4, 71, &poison, &mut inputs).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = kafka::write_config(dir.path(), &topics, &brokers, "");
    let config = pseudonymizer::config::Config::load(&config_path).unwrap();
    let (stop, worker) = kafka::spawn_worker(&config, pseudonymizer::metrics::Metrics::new());
    let reader = kafka::reader(&brokers, &topics, false);
    let mut got = Collected::default();
    got.until(&reader, &topics, Duration::from_secs(60), |c| {
        c.ids.len() >= 4 && c.dead.len() >= 2
    });
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let reasons: std::collections::BTreeSet<String> = got
        .dead
        .iter()
        .filter_map(|m| {
            m.headers()?
                .iter()
                .find(|h| h.key == "dlq.reason")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        ["bad-magic", "unknown-schema-id"]
    );

    let audit = dir.path().join("audit.log");
    let (ok, said) = common::process::cli(&[
        "dlq",
        "replay",
        "--config",
        config_path.to_str().unwrap(),
        "--idle-secs",
        "3",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    assert!(said.contains("replayed 1 dead letters"), "{said}");
    assert!(said.contains("1 kept"), "{said}");
    let raw = kafka::read_from_start(&brokers, &topics.raw, 1);
    assert_eq!(
        raw.len(),
        4 + 2 + 1,
        "only the curable dead letter came back"
    );
    assert_eq!(
        raw.last().unwrap().payload().unwrap(),
        unknown_schema.as_slice()
    );
    // An unknown reason is refused before anything is read.
    let (ok, said) = common::process::cli(&[
        "dlq",
        "replay",
        "--config",
        config_path.to_str().unwrap(),
        "--reason",
        "no-such-reason",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    assert!(!ok && said.contains("not a dead-letter reason"), "{said}");
}

/// Records of different input partitions are transformed in parallel (`transform_threads`),
/// yet every input partition's records reach each output partition in input order, every
/// record exactly once, every offset committed: with one thread (the loop transforms) and with
/// three threads over four input partitions (one thread serves two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_partition_is_kept_by_every_thread_count() {
    let brokers = kafka::tansu();
    for threads in [1, 3] {
        let topics = Topics::unique(&format!("order{threads}"));
        topics.create(&brokers, 4).await;
        let mut config = topics.config(&brokers);
        config.kafka.as_mut().unwrap().transform_threads = Some(threads);
        let mut inputs = Inputs::default();
        const EVENTS: usize = 4000;
        kafka::produce(&brokers, &topics.raw, EVENTS, 77, &[], &mut inputs).await;
        // Where each event sits in the raw topic: (partition, offset).
        let placed: std::collections::HashMap<String, (i32, i64)> =
            kafka::read_from_start(&brokers, &topics.raw, 4)
                .iter()
                .filter_map(|m| Some((kafka::raw_event_id(m)?, (m.partition(), m.offset()))))
                .collect();
        assert_eq!(placed.len(), EVENTS);

        let (stop, worker) = kafka::spawn_worker(&config, Metrics::new());
        let reader = kafka::reader(&brokers, &topics, false);
        let mut got = Collected::default();
        got.until(&reader, &topics, Duration::from_secs(120), |c| {
            c.outputs.len() >= EVENTS
        });
        stop.send(true).unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(40), worker)
            .await
            .expect("stops within the bound")
            .unwrap()
            .unwrap();
        assert_eq!(stats.published as usize, EVENTS, "{threads} threads");
        assert_eq!(got.ids.len(), EVENTS, "every event exactly once");
        assert!(got.ids.values().all(|&n| n == 1));
        kafka::verify_outputs(&got, &topics, &inputs);

        // Per output partition, in the order it holds them: the raw offset last seen of each
        // input partition only grows.
        let engine = common::engine();
        let mut last: std::collections::HashMap<(String, i32, i32), i64> = Default::default();
        for message in &got.outputs {
            let name = match message.topic() == topics.calls {
                true => "comms.v1.CallEvent",
                false => "comms.v1.MessageEvent",
            };
            let output = common::decode(
                &engine.plan(name).unwrap().output,
                &message.payload().unwrap()[5..],
            );
            let id = kafka::text(common::field(&output, "event_id")).unwrap();
            let (raw_partition, raw_offset) = placed[&id];
            let slot = (
                message.topic().to_owned(),
                message.partition(),
                raw_partition,
            );
            if let Some(before) = last.insert(slot, raw_offset) {
                assert!(
                    before < raw_offset,
                    "{threads} threads: raw partition {raw_partition}'s offset {raw_offset} was published after {before} in {} partition {}",
                    message.topic(),
                    message.partition()
                );
            }
        }
        let left = kafka::uncommitted(&brokers, &topics.raw, &topics.group, 4);
        assert!(
            left.is_empty(),
            "{} raw records were not committed",
            left.len()
        );
    }
}
