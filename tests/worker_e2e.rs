//! The stream worker end to end against a real broker (Tansu, started by scripts/test.sh):
//! every event arrives exactly once, tokens and envelopes verify, nothing raw is published,
//! poison records land in the dead-letter topic, and offsets are committed on shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use pseudonymizer::envelope;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::token::{self, PhoneCanon, TokenClass};
use pseudonymizer::transform::Engine;
use pseudonymizer::worker::{self, route::frame};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

fn brokers() -> String {
    std::env::var("PSEUDONYMIZER_TEST_BROKERS")
        .expect("PSEUDONYMIZER_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts the Tansu broker")
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Union(_, inner) => text(inner),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_against_tansu() {
    let brokers = brokers();
    let run = format!(
        "{:x}",
        std::process::id() as u64 * 1_000_003 + Instant::now().elapsed().as_nanos() as u64
    );
    let raw_topic = format!("raw-{run}");
    let calls_topic = format!("calls-{run}");
    let messages_topic = format!("messages-{run}");
    let dlq_topic = format!("dlq-{run}");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let topics = [
        (&raw_topic, 3),
        (&calls_topic, 2),
        (&messages_topic, 2),
        (&dlq_topic, 1),
    ];
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("broker reachable")
    {
        result.expect("topic created");
    }

    let mut config = common::shipped_config();
    {
        let kafka = config.kafka.as_mut().unwrap();
        kafka.brokers = brokers.clone();
        kafka.group_id = format!("worker-{run}");
        kafka.dlq_topic = dlq_topic.clone();
        kafka.max_in_flight = 500;
        kafka.shutdown_timeout_secs = 30;
    }
    config.pipeline[0].input_topic = Some(raw_topic.clone());
    config.pipeline[0].output_topic = Some(calls_topic.clone());
    config.pipeline[1].input_topic = Some(raw_topic.clone());
    config.pipeline[1].output_topic = Some(messages_topic.clone());
    let engine = Arc::new(Engine::from_config(&config).unwrap());
    let keys = common::active(&engine);
    let call_plan = engine.plan("comms.v1.CallEvent").unwrap().clone();
    let message_plan = engine.plan("comms.v1.MessageEvent").unwrap().clone();

    // Produce raw events of both types, keyed by the calling / sending number, plus poison.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut generator = Generator::new(2026);
    let mut inputs: HashMap<String, Value> = HashMap::new();
    let mut raw_secrets: Vec<Vec<u8>> = Vec::new();
    let mut deliveries = Vec::new();
    const EVENTS: usize = 2000;
    for i in 0..EVENTS {
        let (kind, plan, schema_id, key_field) = if i % 2 == 0 {
            (Kind::Call, &call_plan, 1, "caller")
        } else {
            (Kind::Message, &message_plan, 2, "sender")
        };
        let event = generator.event(kind);
        let id = text(common::field(&event, "event_id")).unwrap();
        let key = text(common::field(&event, key_field)).unwrap();
        for field in [
            "caller",
            "callee",
            "sender",
            "caller_ip",
            "sender_ip",
            "body",
            "recording_url",
        ] {
            if let Value::Record(fields) = &event {
                if let Some((_, v)) = fields.iter().find(|(n, _)| n == field) {
                    if let Some(s) = text(v).filter(|s| s.trim().len() >= 8) {
                        raw_secrets.push(s.trim().as_bytes().to_vec());
                    }
                }
            }
        }
        let payload = frame(schema_id, &common::encode(&plan.input, event.clone()));
        inputs.insert(id, event);
        let record = FutureRecord::to(&raw_topic).payload(&payload).key(&key);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    let good_call = frame(
        1,
        &common::encode(&call_plan.input, generator.event(Kind::Call)),
    );
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"plain text, not avro".to_vec(), "bad-magic"),
        (vec![0, 0, 0], "bad-magic"),
        (frame(77, b"\x02ab"), "unknown-schema-id"),
        (good_call[..good_call.len() / 2].to_vec(), "corrupt-avro"),
        (frame(2, &[0xff; 16]), "corrupt-avro"),
    ];
    for (payload, _) in &poison {
        let record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&raw_topic).payload(payload.as_slice());
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().expect("raw record delivered");
    }

    // Run the worker.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker_config = config.clone();
    let worker_engine = engine.clone();
    let worker_keys = keys.clone();
    let worker = tokio::spawn(async move {
        worker::run(&worker_config, worker_engine, worker_keys, stopped).await
    });

    // Read the analytics and dead-letter topics until everything has arrived.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("reader-{run}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader
        .subscribe(&[&calls_topic, &messages_topic, &dlq_topic])
        .unwrap();
    let mut outputs = Vec::new();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while outputs.len() < EVENTS || dead.len() < poison.len() {
        assert!(
            Instant::now() < deadline,
            "timed out: {} outputs, {} dead letters",
            outputs.len(),
            dead.len()
        );
        let Some(message) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap().detach();
        if message.topic() == dlq_topic {
            dead.push(message);
        } else {
            outputs.push(message);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    while let Some(extra) = reader.poll(Duration::from_millis(500)) {
        panic!("unexpected extra record on {}", extra.unwrap().topic());
    }

    // Every event exactly once; tokens, keys, headers and envelopes verify; nothing raw.
    let pkey = keys.pseudonym.as_deref().unwrap();
    let phone = PhoneCanon::new("ID").unwrap();
    let keyset = common::keyset();
    let mut seen = HashSet::new();
    for message in &outputs {
        let payload = message.payload().unwrap();
        for secret in &raw_secrets {
            assert!(
                !payload
                    .windows(secret.len())
                    .any(|w| w == secret.as_slice()),
                "raw value published"
            );
        }
        let (plan, schema_id, key_field) = if message.topic() == calls_topic {
            (&call_plan, 101u32, "caller")
        } else {
            (&message_plan, 102, "sender")
        };
        assert_eq!(payload[0], 0);
        assert_eq!(
            u32::from_be_bytes(payload[1..5].try_into().unwrap()),
            schema_id
        );
        let output = common::decode(&plan.output, &payload[5..]);
        let id = text(common::field(&output, "event_id")).unwrap();
        assert!(seen.insert(id.clone()), "event {id} published twice");
        let input = &inputs[&id];
        let raw_key = text(common::field(input, key_field)).unwrap();
        let (class, canonical) = token::canonical(TokenClass::Phone, &raw_key, &phone);
        let expected = token::token(pkey, class, canonical.as_bytes());
        assert_eq!(
            text(common::field(&output, key_field)).unwrap(),
            expected.as_str()
        );
        assert_eq!(
            message.key().unwrap(),
            expected.as_str().as_bytes(),
            "key carries the field's token"
        );
        let headers = message.headers().unwrap();
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert!(
            names.contains(&"pseudonymizer.pseudonym-key")
                && names.contains(&"pseudonymizer.encryption-key"),
            "{names:?}"
        );
        if plan.input_name.ends_with("MessageEvent") {
            if let (Some(body), Value::Union(1, sealed)) = (
                text(common::field(input, "body")),
                common::field(&output, "body"),
            ) {
                let Value::Bytes(sealed) = sealed.as_ref() else {
                    panic!("body is bytes")
                };
                assert_eq!(
                    envelope::open(&keyset, "body", sealed).unwrap(),
                    body.as_bytes()
                );
            }
        }
    }
    assert_eq!(seen.len(), EVENTS);

    // Dead letters: exactly the poison, sealed, with reason and source headers.
    let mut reasons: Vec<String> = Vec::new();
    let mut originals: Vec<Vec<u8>> = Vec::new();
    for message in &dead {
        let headers = message.headers().unwrap();
        let get = |k: &str| {
            headers
                .iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        reasons.push(get("dlq.reason").unwrap());
        assert_eq!(get("dlq.source-topic").unwrap(), raw_topic);
        assert!(
            get("dlq.source-offset").is_some()
                && get("dlq.source-partition").is_some()
                && get("dlq.time-ms").is_some()
        );
        let sealed = message.payload().unwrap();
        assert!(
            !sealed.windows(10).any(|w| w == b"plain text"),
            "DLQ holds raw bytes"
        );
        originals.push(envelope::open(&keyset, worker::DLQ_FIELD_PATH, sealed).unwrap());
    }
    let mut expected_reasons: Vec<String> = poison.iter().map(|(_, r)| r.to_string()).collect();
    reasons.sort();
    expected_reasons.sort();
    assert_eq!(reasons, expected_reasons);
    for (payload, _) in &poison {
        assert!(
            originals.contains(payload),
            "a poison record's original bytes are in the DLQ"
        );
    }

    // Shut down: exit cleanly, and the committed offsets cover every input record.
    stop.send(true).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(40), worker)
        .await
        .expect("stops within the bound")
        .unwrap()
        .unwrap();
    assert_eq!(stats.consumed as usize, EVENTS + poison.len());
    assert_eq!(stats.published as usize, EVENTS);

    // A new member of the worker's group starts after the committed offsets: it must find
    // nothing left to read. (Tansu's reported high watermarks are not comparable to offsets.)
    let checker: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("worker-{run}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition(&raw_topic, p);
    }
    let committed = checker
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    let committed: Vec<_> = committed.elements().iter().map(|e| e.offset()).collect();
    assert!(
        committed
            .iter()
            .all(|o| matches!(o, Offset::Offset(n) if *n > 0)),
        "every partition committed: {committed:?}"
    );
    checker.subscribe(&[&raw_topic]).unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(message) = checker.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            panic!(
                "offset {} of partition {} was not committed",
                message.offset(),
                message.partition()
            );
        }
    }
}
