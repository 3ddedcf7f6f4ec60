//! `dlq replay`: after a fix, send dead-lettered records back through the worker.
//!
//! Each dead letter's envelope is opened with the keyring (the original bytes were sealed
//! under an encryption key, field path `dlq`) and the original value is produced again to its
//! source topic (header `dlq.source-topic`), where the worker picks it up like any raw record.
//! Progress is committed under the consumer group `<group_id>.dlq-replay`, so a replay resumes
//! where it stopped and never replays a record twice after a clean finish.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;

use super::{WorkerError, DLQ_FIELD_PATH, DLQ_KEY_PATH};
use crate::config::{ConfigError, KafkaConfig};
use crate::connect::{self, ConnectionWatch};
use crate::keys::KeySet;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Records sent back to their source topic.
    pub replayed: u64,
    /// Dead letters whose envelope did not open (key destroyed or unknown); left in place.
    pub unopened: u64,
}

/// Replays every dead letter present now; stops after `idle` without a new one.
pub async fn replay(
    kafka: &KafkaConfig,
    keys: &KeySet,
    idle: Duration,
) -> Result<Replayed, WorkerError> {
    // The worker's own connection settings (TLS, SASL): a config that works for `run` works
    // for the replay.
    let group = format!("{}.dlq-replay", kafka.group_id);
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
        let source = message
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "dlq.source-topic")
                    .and_then(|h| h.value)
            })
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| {
                ConfigError::Rules(vec![format!(
                    "dead letter at offset {} has no dlq.source-topic header",
                    message.offset()
                )])
            })?
            .to_owned();
        let sealed_key = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "dlq.key").and_then(|h| h.value));
        let key = match sealed_key.map(|k| keys.open(DLQ_KEY_PATH, k)).transpose() {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(offset = message.offset(), %error, "dead letter's key not opened; not replayed");
                done.unopened += 1;
                consumer.store_offset_from_message(&message)?;
                continue;
            }
        };
        match keys.open(DLQ_FIELD_PATH, message.payload().unwrap_or_default()) {
            Ok(original) => {
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
            Err(error) => {
                tracing::warn!(offset = message.offset(), %error, "dead letter not replayed");
                done.unopened += 1;
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
