//! `dlq replay`: after a fix, send dead-lettered records back through the worker.
//!
//! Each dead letter's envelope is opened with the keyring and the original value is produced
//! again to its source topic (header `dlq.source-topic`), where the worker picks it up like any
//! raw record. Only dead letters whose reason a fix can cure are replayed by default
//! ([`CURABLE`]); poison (bad framing, corrupt Avro, tombstones) stays, counted. Progress is
//! committed under the consumer group `<group_id>.dlq-replay` (with `--reason`, one group per
//! choice of reasons: `<group_id>.dlq-replay.<reason>+<reason>`), so a replay resumes where it
//! stopped and never replays a record twice after a clean finish.
//!
//! The header is not trusted on its own: anyone who can write to the dead-letter topic can
//! set it. The worker seals a dead letter's value and key with field paths that name the
//! source topic ([`dlq_value_path`], [`dlq_key_path`]), so a dead letter whose header names
//! another topic does not open; and a replay writes only to the config's input topics. Dead
//! letters sealed before the source was bound (field paths `dlq`, `dlq.key`) still open, and
//! still go only to an input topic. A refused dead letter is counted and logged with its offset
//! and why, never with a value, and left in place.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;

use zeroize::Zeroizing;

use super::WorkerError;
use crate::config::KafkaConfig;
use crate::connect::{self, ConnectionWatch};
use crate::envelope::OpenError;
use crate::keys::KeySet;

/// The field path a dead letter's value is sealed under: bound to its source topic (Kafka topic
/// names never hold `:`).
pub fn dlq_value_path(source_topic: &str) -> String {
    format!("dlq:{source_topic}")
}

/// The field path a dead letter's key (header `dlq.key`) is sealed under.
pub fn dlq_key_path(source_topic: &str) -> String {
    format!("dlq.key:{source_topic}")
}

/// Field paths of dead letters sealed before the source topic was bound.
const LEGACY_VALUE_PATH: &str = "dlq";
const LEGACY_KEY_PATH: &str = "dlq.key";

/// The reasons a fix can cure (a rule added, a schema registered or made compatible, a
/// pipeline added, `max_record_bytes` raised): replayed by default. The others are poison
/// that no config change makes readable: `bad-magic`, `corrupt-avro`, `corrupt-json`,
/// `corrupt-protobuf`, `empty`.
pub const CURABLE: [&str; 5] = [
    "unclassified-field",
    "bad-schema",
    "output-schema-refused",
    "unknown-schema-id",
    "oversize",
];

/// The replay's consumer group for a choice of reasons (`None`: the default, [`CURABLE`]).
pub fn replay_group(group_id: &str, reasons: Option<&[String]>) -> String {
    match reasons {
        None => format!("{group_id}.dlq-replay"),
        Some(reasons) => {
            let mut sorted: Vec<&str> = reasons.iter().map(String::as_str).collect();
            sorted.sort_unstable();
            sorted.dedup();
            format!("{group_id}.dlq-replay.{}", sorted.join("+"))
        }
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Records sent back to their source topic.
    pub replayed: u64,
    /// Dead letters whose envelope did not open with any key (key destroyed or unknown); left
    /// in place.
    pub unopened: u64,
    /// Dead letters refused: no or unreadable source header, a source that is not an input
    /// topic of the config, or a sealed payload bound to another topic; left in place.
    pub refused: u64,
    /// Dead letters of a reason not chosen (poison, by default): not opened, left in place.
    pub kept: u64,
}

/// Why a dead letter is not replayed.
enum Skip {
    Unopened(String),
    Refused(String),
}

/// Replays every dead letter present now whose reason is one of `reasons` (`None`:
/// [`CURABLE`]) to `input_topics` only; stops after `idle` without a new one.
pub async fn replay(
    kafka: &KafkaConfig,
    input_topics: &[String],
    keys: &KeySet,
    idle: Duration,
    reasons: Option<&[String]>,
) -> Result<Replayed, WorkerError> {
    // The worker's own connection settings (TLS, SASL): a config that works for `run` works
    // for the replay.
    let group = replay_group(&kafka.group_id, reasons);
    let chosen = |reason: &str| match reasons {
        None => CURABLE.contains(&reason),
        Some(reasons) => reasons.iter().any(|r| r == reason),
    };
    let consumer: BaseConsumer<ConnectionWatch> = connect::consumer_config(
        kafka,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ],
    )
    .create_with_context(ConnectionWatch::new("replay consumer", None))?;
    let producer: connect::Producer =
        connect::producer_config(kafka, &[("enable.idempotence", "true")])
            .create_with_context(ConnectionWatch::new("replay producer", None))?;
    consumer.subscribe(&[&kafka.dlq_topic])?;
    let mut done = Replayed::default();
    let mut deadline = Instant::now() + idle + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        deadline = Instant::now() + idle;
        let reason = message
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "dlq.reason")
                    .and_then(|h| h.value)
            })
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("");
        if !chosen(reason) {
            tracing::info!(
                offset = message.offset(),
                partition = message.partition(),
                reason,
                "dead letter kept: its reason is not being replayed"
            );
            done.kept += 1;
            consumer.store_offset_from_message(&message)?;
            continue;
        }
        match open(&message, input_topics, keys) {
            Ok((source, original, key)) => {
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&source).payload(original.as_slice());
                if let Some(key) = &key {
                    record = record.key(key.as_slice());
                }
                let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
                delivery
                    .await
                    .map_err(|_| WorkerError::Delivery {
                        topic: source.clone(),
                        reason: "producer dropped".into(),
                    })?
                    .map_err(|(e, _)| WorkerError::Delivery {
                        topic: source.clone(),
                        reason: e.to_string(),
                    })?;
                done.replayed += 1;
            }
            Err(Skip::Unopened(why)) => {
                tracing::warn!(
                    offset = message.offset(),
                    partition = message.partition(),
                    why,
                    "dead letter not opened; not replayed"
                );
                done.unopened += 1;
            }
            Err(Skip::Refused(why)) => {
                tracing::error!(
                    offset = message.offset(),
                    partition = message.partition(),
                    why,
                    "dead letter REFUSED; not replayed"
                );
                done.refused += 1;
            }
        }
        consumer.store_offset_from_message(&message)?;
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(())
        | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(done)
}

/// A dead letter ready to replay: source topic, original value, original key.
type Opened = (String, Zeroizing<Vec<u8>>, Option<Zeroizing<Vec<u8>>>);

/// The dead letter's source topic, original value and original key, if it may be replayed.
fn open(
    message: &BorrowedMessage<'_>,
    input_topics: &[String],
    keys: &KeySet,
) -> Result<Opened, Skip> {
    let header = |name: &str| {
        message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
    };
    let source = header("dlq.source-topic")
        .ok_or_else(|| Skip::Refused("no dlq.source-topic header".into()))?;
    let source = std::str::from_utf8(source)
        .map_err(|_| Skip::Refused("the dlq.source-topic header is not UTF-8".into()))?;
    if !input_topics.iter().any(|t| t == source) {
        // The header's value is not echoed: it is whatever the writer put there.
        return Err(Skip::Refused(
            "dlq.source-topic names no input topic of the config".into(),
        ));
    }
    let payload = message.payload().unwrap_or_default();
    // Bound to its source first; then as sealed before the binding existed.
    let (original, key_path) = match keys.open(&dlq_value_path(source), payload) {
        Ok(original) => (original, dlq_key_path(source)),
        Err(OpenError::Authentication) => match keys.open(LEGACY_VALUE_PATH, payload) {
            Ok(original) => (original, LEGACY_KEY_PATH.to_owned()),
            Err(_) => {
                return Err(Skip::Refused(
                    "the sealed value is not bound to the topic its header names".into(),
                ))
            }
        },
        Err(error) => return Err(Skip::Unopened(error.to_string())),
    };
    let original = Zeroizing::new(original);
    let key = match header("dlq.key") {
        Some(sealed) => Some(Zeroizing::new(keys.open(&key_path, sealed).map_err(
            |_| Skip::Refused("the sealed key is not bound to the topic its header names".into()),
        )?)),
        None => None,
    };
    Ok((source.to_owned(), original, key))
}
