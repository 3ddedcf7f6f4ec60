//! `exactly-once` mode: each batch of outputs and the consumer offsets it covers are committed
//! in one Kafka transaction (`transactional.id`, `send_offsets_to_transaction`). Consumers of
//! the analytics topics read with `isolation.level=read_committed`. A failed transaction is
//! aborted and the worker stops; on restart it resumes from the last committed offsets, so
//! nothing is lost and nothing is published twice.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::{client_config, Publisher, Stats, WorkerError};

/// Records per transaction at most.
const BATCH: usize = 500;
/// A transaction is committed at least this often while records arrive.
const BATCH_TIME: Duration = Duration::from_millis(100);

pub async fn run(
    publisher: &Publisher,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Stats, WorkerError> {
    let kafka = &publisher.kafka;
    // `transactional_id` is present: `check_kafka` refused the config otherwise.
    let (consumer_config, producer_config) = client_config(kafka);
    let consumer: StreamConsumer = consumer_config.create()?;
    let producer: FutureProducer = producer_config.create()?;
    let timeout = Duration::from_secs(kafka.shutdown_timeout_secs);
    producer.init_transactions(timeout)?;
    publisher.subscribe(&consumer)?;

    let mut stats = Stats::default();
    let mut out = Vec::with_capacity(4096);
    let mut stopping = false;
    while !stopping {
        // One transaction: up to BATCH records or BATCH_TIME, whichever comes first.
        let mut next: std::collections::HashMap<(String, i32), i64> =
            std::collections::HashMap::new();
        let mut deliveries = Vec::new();
        let deadline = Instant::now() + BATCH_TIME;
        producer.begin_transaction()?;
        while deliveries.len() < BATCH {
            let message = tokio::select! {
                _ = shutdown.changed() => { stopping = true; break }
                _ = tokio::time::sleep_until(deadline.into()) => break,
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
            if !publisher.resolve(message.payload(), &mut shutdown).await {
                // Shutdown while waiting for the registry: this record stays uncommitted.
                stopping = true;
                break;
            }
            let mut outgoing = publisher.prepare(&message, &mut out);
            let headers = std::mem::take(&mut outgoing.headers);
            let record = outgoing.record(headers);
            let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
            deliveries.push((delivery, outgoing.kind, outgoing.topic, Instant::now()));
            // One entry per partition: the next offset to read after this record.
            next.insert(
                (message.topic().to_owned(), message.partition()),
                message.offset() + 1,
            );
        }
        if deliveries.is_empty() {
            producer.abort_transaction(timeout)?;
            continue;
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        producer.send_offsets_to_transaction(
            &offsets,
            &consumer
                .group_metadata()
                .ok_or_else(|| WorkerError::Delivery {
                    topic: String::new(),
                    reason: "no consumer group metadata".into(),
                })?,
            timeout,
        )?;
        if let Err(error) = producer.commit_transaction(timeout) {
            let _ = producer.abort_transaction(timeout);
            return Err(error.into());
        }
        for (delivery, kind, topic, sent) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {
                    publisher
                        .worker
                        .metrics
                        .produce_seconds
                        .observe(sent.elapsed().as_secs_f64());
                    publisher.acknowledged(kind, &mut stats);
                }
                Ok(Err((error, _))) => {
                    return Err(WorkerError::Delivery {
                        topic,
                        reason: error.to_string(),
                    })
                }
                Err(_) => {
                    return Err(WorkerError::Delivery {
                        topic,
                        reason: "producer dropped".into(),
                    })
                }
            }
        }
    }
    publisher.worker.metrics.set_ready(false);
    tracing::info!(
        consumed = stats.consumed,
        published = stats.published,
        "worker stopped"
    );
    Ok(stats)
}
