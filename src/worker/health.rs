//! Signals that data is not flowing, so that it never stops silently.
//!
//! - **Lag**: every few seconds, the high watermark minus the position of each assigned
//!   partition (`pseudonymizer_consumer_lag`).
//! - **Stall**: assigned partitions have records to read (or deliveries are awaited) and no
//!   record was consumed or acknowledged for `stall_timeout_secs`. The worker logs an error
//!   naming the partitions, counts `pseudonymizer_stalls_total`, sets `pseudonymizer_stalled`
//!   and answers 503 on `/readyz` until records flow again.
//! - **Skipped records**: a partition's next record is not the one expected (the committed
//!   offset after an assignment, the previous offset + 1 after that) and the broker's low
//!   watermark has moved past the expected one: retention deleted records this worker never
//!   read (librdkafka then resets to the earliest offset on its own). The worker logs an error
//!   with the topic, partition and offset range, and counts them in
//!   `pseudonymizer_records_skipped_total`. Gaps above the low watermark (transaction markers,
//!   compaction) are not losses and are not counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::connect::ConnectionWatch;
use crate::metrics::Metrics;

/// How long a broker query of these checks may take.
const BROKER_QUERY: Duration = Duration::from_secs(5);

/// The worker's consumer context: counts rebalances, so that expected offsets from before one
/// are forgotten, and reports connection failures ([`ConnectionWatch`]).
pub struct WorkerContext {
    rebalances: AtomicU64,
    connection: ConnectionWatch,
    metrics: Arc<Metrics>,
}

impl WorkerContext {
    pub fn new(metrics: &Arc<Metrics>) -> Self {
        WorkerContext {
            rebalances: AtomicU64::new(0),
            connection: ConnectionWatch::new("consumer", Some(metrics.clone())),
            metrics: metrics.clone(),
        }
    }

    /// Rebalances (assignments and revocations) seen so far. Exactly-once mode aborts a
    /// transaction during which this changed (`transactional.rs`).
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Acquire)
    }
}

impl ClientContext for WorkerContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.connection.report(&error, reason);
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        self.metrics.rebalances.inc();
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) => {}
            // Nothing was stored since the last commit: not a failure.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(error) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(%error, "an offset commit failed; the next one carries the same offsets");
            }
        }
    }
}

/// The worker's consumer.
pub type WorkerConsumer = StreamConsumer<WorkerContext>;

/// Updates the lag gauge of every assigned partition, each as soon as it is known. Blocking
/// broker calls: run it off the async threads. A partition whose watermarks cannot be fetched
/// (broker down) keeps its last known lag, so a stall during an outage is still seen.
fn update_lag(consumer: &WorkerConsumer, metrics: &Metrics) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    // Every assigned partition is named at once (lag 0 until measured), so a stall report
    // names them even when the broker went away before any lag was measured.
    let known = lags(metrics);
    for element in positions.elements() {
        let partition = element.partition().to_string();
        if !known
            .iter()
            .any(|(t, p, _)| t == element.topic() && *p == partition)
        {
            metrics
                .consumer_lag
                .with_label_values(&[element.topic(), &partition])
                .set(0);
            // Exported from the assignment on, as 0 until records are lost.
            metrics
                .records_skipped
                .with_label_values(&[element.topic(), &partition]);
        }
    }
    let mut assigned = Vec::new();
    for element in positions.elements() {
        let partition = element.partition().to_string();
        let watermarks =
            consumer.fetch_watermarks(element.topic(), element.partition(), BROKER_QUERY);
        let lag = match (watermarks, element.offset()) {
            (Ok((_, high)), Offset::Offset(position)) => Some((high - position).max(0)),
            // Nothing consumed yet: everything up to the high watermark is to be read.
            (Ok((low, high)), _) => Some((high - low).max(0)),
            (Err(_), _) => None,
        };
        if let Some(lag) = lag {
            metrics
                .consumer_lag
                .with_label_values(&[element.topic(), &partition])
                .set(lag);
        }
        assigned.push((element.topic().to_owned(), partition));
    }
    // Only assigned partitions: a revoked partition's lag is its new owner's to report.
    for (topic, partition, _) in lags(metrics) {
        if !assigned.contains(&(topic.clone(), partition.clone())) {
            let _ = metrics
                .consumer_lag
                .remove_label_values(&[&topic, &partition]);
        }
    }
}

/// Spawns the lag updater and the stall detector; both end when the consumer is dropped.
pub fn spawn(consumer: &Arc<WorkerConsumer>, metrics: &Arc<Metrics>, stall_timeout: Duration) {
    let lag_every = (stall_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let consumer = Arc::downgrade(consumer);
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut stall = StallDetector::new(stall_timeout);
        let mut last_lag_update: Option<Instant> = None;
        let updating = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(consumer) = consumer.upgrade() else {
                break;
            };
            // One update at a time, not awaited: with the broker down one takes seconds, and
            // the stall check goes on meanwhile.
            if last_lag_update.is_none_or(|t| t.elapsed() >= lag_every)
                && !updating.swap(true, Ordering::AcqRel)
            {
                last_lag_update = Some(Instant::now());
                let (consumer, metrics, updating) =
                    (consumer.clone(), metrics.clone(), updating.clone());
                tokio::task::spawn_blocking(move || {
                    update_lag(&consumer, &metrics);
                    updating.store(false, Ordering::Release);
                });
            }
            stall.check(&metrics);
            // After a connection failure, ready again once the cluster answers (off the async
            // threads: a metadata request waits for the broker).
            if metrics.connection_is_failing() && !probing.swap(true, Ordering::AcqRel) {
                let (metrics, probing) = (metrics.clone(), probing.clone());
                tokio::task::spawn_blocking(move || {
                    if consumer.fetch_metadata(None, BROKER_QUERY).is_ok() {
                        metrics.set_connection_failing(false);
                        tracing::info!("connected to the Kafka cluster again");
                    }
                    probing.store(false, Ordering::Release);
                });
            }
        }
    });
}

/// Remembers when records last moved, and whether a stall was reported.
struct StallDetector {
    timeout: Duration,
    last: (u64, u64),
    last_moved: Instant,
    stalled: bool,
}

impl StallDetector {
    fn new(timeout: Duration) -> Self {
        StallDetector {
            timeout,
            last: (0, 0),
            last_moved: Instant::now(),
            stalled: false,
        }
    }

    fn check(&mut self, metrics: &Metrics) {
        // Records held for an unreachable schema registry are not a stall: that wait has its
        // own signal (pseudonymizer_registry_unavailable, /readyz 503).
        if metrics.waits_for_registry() {
            self.last_moved = Instant::now();
            return;
        }
        let progress = metrics.progress();
        if progress != self.last {
            self.last = progress;
            self.last_moved = Instant::now();
            if self.stalled {
                self.stalled = false;
                metrics.set_stalled(false);
                tracing::info!("records flow again after a stall");
            }
            return;
        }
        let waiting = waiting_partitions(metrics);
        let in_flight = metrics.in_flight.get();
        if waiting.is_empty() && in_flight == 0 {
            // Idle, not stalled: nothing to read. Idle time does not count towards a stall:
            // the clock starts when records wait.
            self.last_moved = Instant::now();
            return;
        }
        if self.stalled || self.last_moved.elapsed() < self.timeout {
            return;
        }
        // Records in flight but no lag measured yet (the broker went away right at the
        // start): the assigned partitions are named without a count.
        let waiting = if waiting.is_empty() {
            lags(metrics)
        } else {
            waiting
        };
        self.stalled = true;
        metrics.set_stalled(true);
        metrics.stalls.inc();
        let partitions: Vec<String> = waiting
            .iter()
            .map(|(topic, partition, lag)| match lag {
                0 => format!("{topic}[{partition}]"),
                lag => format!("{topic}[{partition}] ({lag} to read)"),
            })
            .collect();
        tracing::error!(
            seconds = self.last_moved.elapsed().as_secs(),
            partitions = %partitions.join(", "),
            in_flight,
            "stalled: no record consumed or acknowledged while records wait; check the brokers' \
             reachability and the worker's log above (readyz answers 503 until records flow)"
        );
    }
}

/// (topic, partition, lag) of every assigned partition with records to read.
pub fn waiting_partitions(metrics: &Metrics) -> Vec<(String, String, i64)> {
    lags(metrics)
        .into_iter()
        .filter(|(_, _, lag)| *lag > 0)
        .collect()
}

/// (topic, partition, lag) of every partition in the lag gauge.
fn lags(metrics: &Metrics) -> Vec<(String, String, i64)> {
    use prometheus::core::Collector;
    let mut waiting = Vec::new();
    for family in metrics.consumer_lag.collect() {
        for metric in family.get_metric() {
            let lag = metric.get_gauge().get_value() as i64;
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            waiting.push((label("topic"), label("partition"), lag));
        }
    }
    waiting
}

/// Finds records the broker deleted before this worker read them.
#[derive(Default)]
pub struct SkipDetector {
    /// Per topic and partition, the offset of the next record expected.
    next: HashMap<String, HashMap<i32, i64>>,
    rebalances_seen: u64,
}

impl SkipDetector {
    /// Notes a consumed record; on a gap, checks the broker in the background.
    pub fn observe(
        &mut self,
        consumer: &Arc<WorkerConsumer>,
        metrics: &Arc<Metrics>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) {
        let rebalances = consumer.context().rebalances.load(Ordering::Relaxed);
        if rebalances != self.rebalances_seen {
            // Offsets expected before a rebalance say nothing about where the fetch resumes.
            self.rebalances_seen = rebalances;
            self.next.clear();
        }
        // Looked up by `&str`: a topic's name is allocated once, not once per record.
        let partitions = match self.next.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.next.entry(topic.to_owned()).or_default(),
        };
        let expected = partitions.insert(partition, offset + 1);
        if expected.is_some_and(|e| offset <= e) {
            return;
        }
        let (consumer, metrics, topic) = (consumer.clone(), metrics.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            check_gap(&consumer, &metrics, &topic, partition, expected, offset)
        });
    }
}

/// Counts the records in `[expected, offset)` that lie below the partition's low watermark.
/// Without `expected` (the first record since an assignment), the committed offset is the one
/// expected; with no committed offset (a new group) nothing was skipped.
fn check_gap(
    consumer: &WorkerConsumer,
    metrics: &Metrics,
    topic: &str,
    partition: i32,
    expected: Option<i64>,
    offset: i64,
) {
    let expected = match expected {
        Some(e) => e,
        None => {
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition(topic, partition);
            let Ok(committed) = consumer.committed_offsets(wanted, BROKER_QUERY) else {
                return;
            };
            match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(c)) if c < offset => c,
                _ => return,
            }
        }
    };
    let Ok((low, _)) = consumer.fetch_watermarks(topic, partition, BROKER_QUERY) else {
        tracing::warn!(
            topic,
            partition,
            first_missing = expected,
            next_read = offset,
            "offsets skipped and the broker's low watermark could not be read: records may have been deleted before they were read"
        );
        return;
    };
    let end = low.min(offset);
    if end <= expected {
        return;
    }
    let skipped = end - expected;
    metrics
        .records_skipped
        .with_label_values(&[topic, &partition.to_string()])
        .inc_by(skipped as u64);
    tracing::error!(
        topic,
        partition,
        first_skipped = expected,
        last_skipped = end - 1,
        skipped,
        "records deleted by the broker before this worker read them (retention): lost upstream; \
         they are in neither an analytics topic nor the dead-letter topic"
    );
}
