//! The stream worker: consume raw records, transform, publish, and commit only what has been
//! delivered.
//!
//! At-least-once, in order: offsets are stored for commit (`enable.auto.offset.store=false`)
//! only when the produced copy of a record (sanitized or dead-lettered) has been acknowledged
//! by the broker, and never past an unacknowledged record of the same partition: each input
//! partition keeps a queue of in-flight deliveries in input order, and only its acknowledged
//! prefix is stored. `max_in_flight` bounds the queues; when full, the worker waits for the
//! oldest delivery instead of fetching more (backpressure). A failed delivery stops the worker
//! without storing the offset, so the record is processed again after restart.

pub mod route;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::Message;
use tokio::sync::watch;

use crate::config::{Config, KafkaConfig};
use crate::envelope;
use crate::transform::{ActiveKeys, Engine};
use route::{DeadLetter, Router};

/// Field path bound into the envelope of a dead-lettered record's original bytes.
pub const DLQ_FIELD_PATH: &str = "dlq";

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("a record could not be delivered to {topic}: {reason}; its offset was not committed")]
    Delivery { topic: String, reason: String },
    #[error("no active encryption key: the dead-letter topic needs one")]
    NoEncryptionKey,
    #[error("shutdown took longer than {0:?}")]
    ShutdownTimeout(Duration),
}

/// Counts of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub consumed: u64,
    pub published: u64,
    pub dead_lettered: HashMap<&'static str, u64>,
}

/// The librdkafka settings of the consumer and producer: ours, then the config's properties.
fn client_config(kafka: &KafkaConfig) -> (ClientConfig, ClientConfig) {
    let mut consumer = ClientConfig::new();
    consumer
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "1000");
    let mut producer = ClientConfig::new();
    producer
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "300000");
    for (k, v) in &kafka.properties {
        consumer.set(k, v);
        producer.set(k, v);
    }
    (consumer, producer)
}

type DeliveryOutcome = Result<
    rdkafka::producer::future_producer::OwnedDeliveryResult,
    futures::channel::oneshot::Canceled,
>;

/// A produced record whose input offset waits for its acknowledgement.
struct InFlight {
    offset: i64,
    topic: String,
    delivery: DeliveryFuture,
    /// Set when the delivery was awaited (backpressure) before its turn to be stored.
    done: Option<DeliveryOutcome>,
    dead_letter: Option<DeadLetter>,
}

/// Runs the worker until `shutdown` turns true (or the process gets SIGTERM/SIGINT when
/// `signals` is set), then drains in-flight records, flushes and commits.
pub async fn run(
    config: &Config,
    engine: Arc<Engine>,
    keys: ActiveKeys,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Stats, WorkerError> {
    let kafka = config.kafka.clone().ok_or_else(|| {
        WorkerError::Config(crate::config::ConfigError::Rules(vec![
            "[kafka] section is missing".into(),
        ]))
    })?;
    let router = Router::from_config(config, &engine)?;
    let seal_key = keys
        .encryption
        .clone()
        .ok_or(WorkerError::NoEncryptionKey)?;
    let (consumer_config, producer_config) = client_config(&kafka);
    let consumer: StreamConsumer = consumer_config.create()?;
    let producer: FutureProducer = producer_config.create()?;
    let topics: Vec<&str> = router.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(group = %kafka.group_id, topics = ?topics, pseudonym_key = ?keys.pseudonym.as_ref().map(|k| k.id().to_owned()), encryption_key = %seal_key.id(), "worker started");

    let mut stats = Stats::default();
    let mut queues: HashMap<(String, i32), VecDeque<InFlight>> = HashMap::new();
    let mut in_flight = 0usize;
    let mut out = Vec::with_capacity(4096);
    let base_headers = |schema: &str| {
        let mut h = OwnedHeaders::new();
        if let Some(k) = &keys.pseudonym {
            h = h.insert(Header {
                key: "pseudonymizer.pseudonym-key",
                value: Some(k.id()),
            });
        }
        h.insert(Header {
            key: "pseudonymizer.encryption-key",
            value: Some(seal_key.id()),
        })
        .insert(Header {
            key: "pseudonymizer.schema",
            value: Some(schema),
        })
    };

    loop {
        settle(&consumer, &mut queues, &mut in_flight, &mut stats, false).await?;
        while in_flight >= kafka.max_in_flight {
            settle(&consumer, &mut queues, &mut in_flight, &mut stats, true).await?;
        }
        let message = tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error; retrying");
                continue;
            }
        };
        stats.consumed += 1;
        let (topic, partition, offset) = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        let outcome = router.process(&engine, &keys, message.key(), message.payload(), &mut out);
        let (record_topic, payload, key, headers, dead_letter) = match outcome {
            Ok(output) => {
                let mut headers = base_headers(&output.route.plan.input_name);
                if let Some(input_headers) = message.headers() {
                    for h in input_headers.iter() {
                        if kafka.header_allowlist.iter().any(|a| a == h.key) {
                            headers = headers.insert(Header {
                                key: h.key,
                                value: h.value,
                            });
                        }
                    }
                }
                (
                    output.route.output_topic.clone(),
                    out.clone(),
                    output.key,
                    headers,
                    None,
                )
            }
            Err(reason) => {
                let original = message.payload().unwrap_or_default();
                let mut sealed =
                    Vec::with_capacity(envelope::sealed_len(&seal_key, original.len()));
                envelope::seal_into(&seal_key, DLQ_FIELD_PATH, original, &mut sealed);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
                    .to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "dlq.reason",
                        value: Some(reason.code()),
                    })
                    .insert(Header {
                        key: "dlq.source-topic",
                        value: Some(topic.as_str()),
                    })
                    .insert(Header {
                        key: "dlq.source-partition",
                        value: Some(&partition.to_string()),
                    })
                    .insert(Header {
                        key: "dlq.source-offset",
                        value: Some(&offset.to_string()),
                    })
                    .insert(Header {
                        key: "dlq.time-ms",
                        value: Some(&now),
                    })
                    .insert(Header {
                        key: "pseudonymizer.encryption-key",
                        value: Some(seal_key.id()),
                    });
                tracing::debug!(reason = reason.code(), %topic, partition, offset, "dead-lettered");
                (kafka.dlq_topic.clone(), sealed, None, headers, Some(reason))
            }
        };
        let delivery = send(&producer, &record_topic, &payload, key.as_deref(), headers).await;
        queues
            .entry((topic, partition))
            .or_default()
            .push_back(InFlight {
                offset,
                topic: record_topic,
                delivery,
                done: None,
                dead_letter,
            });
        in_flight += 1;
    }

    // Shutdown: stop fetching, finish in-flight records, flush, commit what was stored.
    let bound = Duration::from_secs(kafka.shutdown_timeout_secs);
    let started = Instant::now();
    tracing::info!(in_flight, "shutting down");
    let drain = async {
        while in_flight > 0 {
            settle(&consumer, &mut queues, &mut in_flight, &mut stats, true).await?;
        }
        Ok::<(), WorkerError>(())
    };
    tokio::time::timeout(bound, drain)
        .await
        .map_err(|_| WorkerError::ShutdownTimeout(bound))??;
    let remaining = bound.saturating_sub(started.elapsed());
    producer.flush(remaining)?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        consumed = stats.consumed,
        published = stats.published,
        "worker stopped"
    );
    Ok(stats)
}

/// Produces one record, waiting while the producer's queue is full.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    payload: &[u8],
    key: Option<&str>,
    headers: OwnedHeaders,
) -> DeliveryFuture {
    let mut headers = Some(headers);
    loop {
        let mut record = FutureRecord::to(topic)
            .payload(payload)
            .headers(headers.take().unwrap_or_default());
        if let Some(key) = key {
            record = record.key(key);
        }
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((_, record)) => {
                headers = record.headers;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Stores offsets of every partition's acknowledged prefix. With `wait`, first waits for the
/// oldest delivery of the fullest queue.
async fn settle(
    consumer: &StreamConsumer,
    queues: &mut HashMap<(String, i32), VecDeque<InFlight>>,
    in_flight: &mut usize,
    stats: &mut Stats,
    wait: bool,
) -> Result<(), WorkerError> {
    if wait {
        if let Some(queue) = queues.values_mut().max_by_key(|q| q.len()) {
            if let Some(front) = queue.front_mut() {
                if front.done.is_none() {
                    front.done = Some((&mut front.delivery).await);
                }
            }
        }
    }
    for ((topic, partition), queue) in queues.iter_mut() {
        let mut last = None;
        while let Some(front) = queue.front_mut() {
            let result = match front.done.take() {
                Some(result) => result,
                None => match (&mut front.delivery).now_or_never() {
                    Some(result) => result,
                    None => break,
                },
            };
            let front = queue.pop_front().expect("front exists");
            *in_flight -= 1;
            last = Some(front.offset);
            acknowledge(front, result, stats)?;
        }
        if let Some(offset) = last {
            consumer.store_offset(topic, *partition, offset)?;
        }
    }
    Ok(())
}

fn acknowledge(
    record: InFlight,
    result: DeliveryOutcome,
    stats: &mut Stats,
) -> Result<(), WorkerError> {
    match result {
        Ok(Ok(_)) => {
            match record.dead_letter {
                Some(reason) => *stats.dead_lettered.entry(reason.code()).or_default() += 1,
                None => stats.published += 1,
            }
            Ok(())
        }
        Ok(Err((error, _))) => Err(WorkerError::Delivery {
            topic: record.topic,
            reason: error.to_string(),
        }),
        Err(_) => Err(WorkerError::Delivery {
            topic: record.topic,
            reason: "producer dropped".into(),
        }),
    }
}
