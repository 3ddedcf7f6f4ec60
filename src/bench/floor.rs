//! librdkafka's own copy: the floor the worker's Kafka path is measured against.
//!
//! The least a program must do to copy records at least once with librdkafka: one thread
//! waits on a `BaseConsumer` and hands each record's value and key, unchanged, to a producer
//! (the worker's own client settings: idempotence, `acks=all`, murmur2, the same buffers)
//! whose delivery reports are served by the worker's own polling thread ([`PolledProducer`]),
//! and stores a partition's offset only once every record before it was acknowledged
//! (librdkafka commits stored offsets each second, as the worker's consumer does). When the config's
//! `header_allowlist` forwards headers, the copy carries each record's headers too: reading
//! them makes librdkafka parse them (and allocate for that, even for a record without any),
//! which the worker pays for the same records. Both threads block while there is nothing to
//! do. No async runtime, nothing of its own allocated per record, no metrics: what remains is
//! librdkafka's work, which no change to the worker can remove. It is closer to what the
//! worker does than `kcat` (which neither stores offsets after delivery nor produces
//! idempotently), and needs nothing installed.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

use super::{cpu_seconds, proc_status_kib, Measurement};
use crate::config::KafkaConfig;
use crate::worker::polled::{flush_in_flight, PolledProducer};

/// Input partitions above this cannot be packed in a delivery opaque with their offset.
const MAX_PARTITION: i32 = 0xFFFF;

// Packed in a `usize`: the partition's 16 bits above a 48-bit offset.
const _: () = assert!(usize::BITS >= 64, "the copy packs in a 64-bit usize");

/// A record's input partition and offset, packed in the delivery opaque (no allocation).
fn pack(partition: i32, offset: i64) -> usize {
    ((partition as usize) << 48) | (offset as usize & ((1 << 48) - 1))
}

fn unpack(packed: usize) -> (i32, i64) {
    ((packed >> 48) as i32, (packed & ((1 << 48) - 1)) as i64)
}

/// Collects delivery reports while the producer is polled: (input partition, offset), or
/// the first failure.
#[derive(Default)]
struct Acknowledgements {
    delivered: Mutex<Vec<(i32, i64)>>,
    failed: Mutex<Option<String>>,
}

impl ClientContext for Acknowledgements {}

impl ProducerContext for Acknowledgements {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, packed: usize) {
        match result {
            Ok(_) => {
                if let Ok(mut delivered) = self.delivered.lock() {
                    delivered.push(unpack(packed));
                }
            }
            Err((error, _)) => {
                if let Ok(mut failed) = self.failed.lock() {
                    failed.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// One input partition's records in flight, in offset order, each with whether it was
/// acknowledged.
type InFlight = VecDeque<(i64, bool)>;

/// Copies `events` records of `input` to `output` at least once and measures it as the
/// worker's measurements are (from the first record consumed to the last acknowledged).
// The closures handed to `send_until_queued` return what rdkafka's `send` returns (the record
// back with the error): large, but not ours to shrink.
#[allow(clippy::result_large_err)]
pub fn copy(kafka: &KafkaConfig, input: &str, output: &str, events: u64) -> Result<Measurement> {
    let (consumer_config, producer_config) = crate::worker::client_config(kafka);
    let consumer: BaseConsumer = consumer_config.create()?;
    let copy_headers = !kafka.header_allowlist.is_empty();
    let producer: PolledProducer<Acknowledgements> =
        producer_config.create_with_context(Acknowledgements::default())?;
    consumer.subscribe(&[input])?;

    let mut in_flight: HashMap<i32, InFlight> = HashMap::new();
    let mut done = 0u64;
    let mut stopwatch = Stopwatch::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut acknowledged = Vec::new();
    while done < events {
        if Instant::now() > deadline {
            bail!("the copy stalled after {done} of {events} records");
        }
        // Waits while nothing is fetched; delivery reports come meanwhile on the producer's
        // own thread.
        match consumer.poll(Duration::from_millis(10)) {
            Some(Ok(message)) => {
                stopwatch.start();
                let (partition, offset) = (message.partition(), message.offset());
                if partition > MAX_PARTITION {
                    bail!("input partition {partition} is past what the copy packs");
                }
                let record = copy_of(
                    &message,
                    BaseRecord::with_opaque_to(output, pack(partition, offset)),
                    copy_headers,
                );
                send_until_queued(
                    record,
                    |r| producer.send(r),
                    || std::thread::sleep(Duration::from_millis(5)),
                )?;
                in_flight
                    .entry(partition)
                    .or_default()
                    .push_back((offset, false));
            }
            Some(Err(error)) => tracing::warn!(%error, "consumer error; retrying"),
            None => {}
        }
        if let Some(error) = producer
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|f| f.clone())
        {
            bail!("a copied record could not be delivered: {error}");
        }
        if let Ok(mut delivered) = producer.context().delivered.lock() {
            std::mem::swap(&mut *delivered, &mut acknowledged);
        }
        done += acknowledged.len() as u64;
        store_acknowledged(&consumer, input, &mut in_flight, &mut acknowledged)?;
        stopwatch.sample();
    }
    let measurement = stopwatch.stop("AtLeastOnce", events)?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(measurement)
}

/// The exactly-once floor: the same copy in Kafka transactions, as the exactly-once worker
/// makes them (`transaction_max_records` records or `transaction_max_ms` after the first,
/// whichever comes first, with the consumer's offsets sent to the transaction and committed
/// with it; `read_committed` consumer, transactional producer, the worker's settings). The
/// producer is the worker's kind ([`PolledProducer`]: its thread serves the reports of failed
/// deliveries, the only ones made, which librdkafka counts as in flight until served), and
/// commits as the worker does. Measured as [`copy`] is, to the last commit.
// The closures handed to `send_until_queued` return what rdkafka's `send` returns (the record
// back with the error): large, but not ours to shrink.
#[allow(clippy::result_large_err)]
pub fn copy_transactional(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    events: u64,
) -> Result<Measurement> {
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::{Offset, TopicPartitionList};
    let (consumer_config, producer_config) = crate::worker::client_config(kafka);
    let consumer: BaseConsumer = consumer_config.create()?;
    let producer: PolledProducer<DefaultProducerContext> =
        producer_config.create_with_context(DefaultProducerContext)?;
    let copy_headers = !kafka.header_allowlist.is_empty();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout)?;
    consumer.subscribe(&[input])?;
    let batch_records = kafka.transaction_max_records as u64;
    let batch_time = Duration::from_millis(kafka.transaction_max_ms);

    let mut done = 0u64;
    let mut stopwatch = Stopwatch::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    // The next offset to read of each partition copied in the open transaction.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut open: Option<(Instant, u64)> = None;
    while done < events {
        if Instant::now() > deadline {
            bail!("the transactional copy stalled after {done} of {events} records");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(1)) {
            let message = match message {
                Ok(message) => message,
                // As the worker does: a transient consumer error is ridden out.
                Err(error) => {
                    tracing::warn!(%error, "consumer error; retrying");
                    continue;
                }
            };
            stopwatch.start();
            if open.is_none() {
                producer.begin_transaction()?;
                open = Some((Instant::now(), 0));
            }
            let record = copy_of(&message, BaseRecord::to(output), copy_headers);
            send_until_queued(
                record,
                |r| producer.send(r),
                || std::thread::sleep(Duration::from_millis(5)),
            )?;
            next.insert(message.partition(), message.offset() + 1);
            if let Some((_, records)) = &mut open {
                *records += 1;
            }
        }
        let due = open.is_some_and(|(started, records)| {
            records >= batch_records || started.elapsed() >= batch_time || done + records >= events
        });
        if due {
            let (_, records) = open.take().context("a transaction is open")?;
            let mut offsets = TopicPartitionList::new();
            for (partition, offset) in next.drain() {
                offsets.add_partition_offset(input, partition, Offset::Offset(offset))?;
            }
            let metadata = consumer
                .group_metadata()
                .context("the consumer has no group metadata")?;
            // As the worker commits: the offsets, librdkafka's flush (rdkafka's, inside the
            // commit, would wait in steps of 100 ms), the commit.
            producer.send_offsets_to_transaction(&offsets, &metadata, timeout)?;
            flush_in_flight(&producer, timeout)?;
            producer.commit_transaction(timeout)?;
            done += records;
        }
        stopwatch.sample();
    }
    stopwatch.stop("ExactlyOnce", events)
}

/// What a copy measures, as the worker's measurements do: wall clock and the process's CPU
/// from its first record on, and its RSS once a second.
struct Stopwatch {
    /// When the first record came, and the process's CPU seconds then.
    first: Option<(Instant, f64)>,
    rss: Vec<u64>,
    last_sample: Instant,
}

impl Stopwatch {
    fn new() -> Stopwatch {
        Stopwatch {
            first: None,
            rss: Vec::new(),
            last_sample: Instant::now(),
        }
    }

    /// A record came: the measurement starts at the first.
    fn start(&mut self) {
        self.first
            .get_or_insert_with(|| (Instant::now(), cpu_seconds()));
    }

    /// The RSS, if a second passed since the last sample.
    fn sample(&mut self) {
        if self.last_sample.elapsed() >= Duration::from_secs(1) {
            self.rss.push(proc_status_kib("VmRSS:"));
            self.last_sample = Instant::now();
        }
    }

    /// The floor's measurement of `events` records in `mode`, ending now.
    fn stop(mut self, mode: &str, events: u64) -> Result<Measurement> {
        let (started, cpu_at_first) = self.first.context("no record was copied")?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_at_first;
        self.rss.push(proc_status_kib("VmRSS:"));
        Ok(Measurement::new(
            "Floor", mode, events, seconds, cpu, self.rss,
        ))
    }
}

/// `record` with `message`'s value and key, unchanged, and its headers when `headers` (the
/// worker's config forwards some): reading them makes librdkafka parse them, as the worker's
/// allowlist does.
fn copy_of<'a, O: rdkafka::util::IntoOpaque>(
    message: &'a rdkafka::message::BorrowedMessage<'_>,
    mut record: BaseRecord<'a, [u8], [u8], O>,
    headers: bool,
) -> BaseRecord<'a, [u8], [u8], O> {
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if headers {
        if let Some(input) = message.headers() {
            record = record.headers(input.detach());
        }
    }
    record
}

/// The outcome of a producer's `send`: the record back with the error.
type Sent<'a, O> = Result<(), (KafkaError, BaseRecord<'a, [u8], [u8], O>)>;

/// Hands `record` to a producer through `send`, calling `wait` while its queue is full.
fn send_until_queued<'a, O: rdkafka::util::IntoOpaque>(
    mut record: BaseRecord<'a, [u8], [u8], O>,
    send: impl Fn(BaseRecord<'a, [u8], [u8], O>) -> Sent<'a, O>,
    wait: impl Fn(),
) -> Result<()> {
    loop {
        match send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                wait();
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

/// Marks the `acknowledged` records (emptied) and stores, per partition, the offset of the
/// acknowledged prefix of its records in flight.
fn store_acknowledged(
    consumer: &BaseConsumer,
    topic: &str,
    in_flight: &mut HashMap<i32, InFlight>,
    acknowledged: &mut Vec<(i32, i64)>,
) -> Result<()> {
    if acknowledged.is_empty() {
        return Ok(());
    }
    for (partition, offset) in acknowledged.drain(..) {
        let Some(queue) = in_flight.get_mut(&partition) else {
            continue;
        };
        // Offsets of one partition are increasing: found by bisection.
        if let Ok(at) = queue.binary_search_by_key(&offset, |(o, _)| *o) {
            queue[at].1 = true;
        }
    }
    for (partition, queue) in in_flight.iter_mut() {
        let mut last = None;
        while let Some((offset, true)) = queue.front() {
            last = Some(*offset);
            queue.pop_front();
        }
        if let Some(offset) = last {
            match consumer.store_offset(topic, *partition, offset) {
                // A partition revoked meanwhile: its next owner reads it again, as the
                // worker's does.
                Ok(()) | Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {}
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::UnknownPartition)) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_and_offset_survive_the_opaque() {
        for (partition, offset) in [
            (0, 0),
            (1, 41),
            (MAX_PARTITION, (1 << 48) - 1),
            (7, 123_456_789_012),
        ] {
            assert_eq!(unpack(pack(partition, offset)), (partition, offset));
        }
    }
}
