//! The default loop: at least once, in order per partition.
//!
//! Each input partition keeps a queue of its in-flight records in input order; delivery
//! reports ([`deliveries`](super::deliveries)) mark them acknowledged. Only the acknowledged
//! prefix of a queue has its last offset stored (librdkafka commits stored offsets every
//! second and at shutdown). `max_in_flight` bounds the queues: when full, the worker waits
//! for delivery reports instead of fetching more. A failed delivery stops the worker without
//! storing its offset, so the record is processed again after a restart.
//!
//! Records already fetched are taken in runs (up to [`RUN_LENGTH`]) without going through
//! `select!`; deliveries are settled between runs, and every [`SETTLE_EVERY`] when idle.
//!
//! With a schema registry that cannot be reached, a record of a schema id seen for the first
//! time holds only its own partition: the partition is paused (records of it fetched before
//! the pause are dropped unprocessed), the others go on, and the id is asked again in the
//! background; once it resolves, the partition is sought back to the held record and resumed.
//! Nothing past the held record is stored, so a shutdown or a rebalance meanwhile leaves it
//! to be read again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::deliveries::{try_send, Attempt, Deliveries, DeliveryProducer, Report, Ticket};
use super::health::{self, SkipDetector, WorkerConsumer, WorkerContext};
use super::lanes::{Job, Lanes};
use super::polled::flush_in_flight;
use super::route::DeadLetter;
use super::{client_config, Outgoing, Publisher, Stats, WorkerError, RUN_LENGTH};

/// The most bytes of record copies held by transform threads before the loop waits for them
/// (as `queued.max.messages.kbytes` bounds the consumer's prefetch; docs/deploy.md, "Sizing").
const HANDED_BYTES: usize = 16 << 20;

/// How often deliveries are settled (offsets stored) when no record comes.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// A record whose input offset waits for its acknowledgement.
struct InFlight {
    offset: i64,
    sent: Instant,
    state: Delivery,
    /// The bytes of its copy while a transform thread holds it (0 once prepared, and always
    /// when the loop transforms).
    handed: usize,
}

/// A record's pipeline, or why it is dead-lettered.
type Kind = Result<usize, DeadLetter>;

/// Where a record in flight stands.
enum Delivery {
    /// Handed to a transform thread, which has not reported yet.
    Preparing,
    /// Produced; its report has not come.
    Waiting(Kind),
    Acknowledged(Kind),
    /// Not delivered, or refused by the producer: (output topic, librdkafka's reason).
    Failed(String, String),
    /// Nothing to send (its pipeline drops a withheld subject's records): done at once, and
    /// not counted as published.
    NothingSent,
    /// Not sent: a shutdown came while its transform thread waited for room in the
    /// producer's queue. Nothing at or after it in its partition is stored.
    Abandoned,
}

/// Partitions held while a record of theirs waits for its schema id.
#[derive(Default)]
struct Held {
    /// (topic, partition) → the held record's offset and the schema id it waits for.
    partitions: HashMap<(String, i32), (i64, u32)>,
    /// Schema ids being asked in the background.
    waiting: HashSet<u32>,
    /// The consumer's rebalance count when the first partition was held.
    rebalances: u64,
}

impl Held {
    /// Pauses `partition` at the record at `offset`, which waits for schema id `id`.
    fn hold(&mut self, consumer: &WorkerConsumer, partition: (String, i32), offset: i64, id: u32) {
        if self.partitions.is_empty() {
            self.rebalances = consumer.context().rebalances();
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.0, partition.1);
        if let Err(error) = consumer.pause(&list) {
            tracing::warn!(%error, topic = %partition.0, partition = partition.1, "pausing a held partition failed; its later records are dropped until it resumes");
        }
        tracing::info!(topic = %partition.0, partition = partition.1, offset, schema_id = id, "partition held until the registry resolves this schema id");
        self.partitions.insert(partition, (offset, id));
    }

    /// Resumes every partition held for `id`, from its held record.
    fn resume(&mut self, consumer: &WorkerConsumer, id: u32) {
        self.waiting.remove(&id);
        let resumed: Vec<((String, i32), i64)> = self
            .partitions
            .iter()
            .filter(|(_, (_, waits_for))| *waits_for == id)
            .map(|(p, (offset, _))| (p.clone(), *offset))
            .collect();
        for ((topic, partition), offset) in resumed {
            self.partitions.remove(&(topic.clone(), partition));
            if let Err(error) = consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                tracing::warn!(%error, %topic, partition, offset, "seeking back to a held record failed; it is read again after the next rebalance or restart");
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            if let Err(error) = consumer.resume(&list) {
                tracing::warn!(%error, %topic, partition, "resuming a held partition failed");
            }
            tracing::info!(%topic, partition, offset, schema_id = id, "held partition resumed from its held record");
        }
    }

    /// A rebalance gives held partitions to their next owner, which reads them from the last
    /// commit: nothing is held across it. A partition this worker kept (a cooperative
    /// assignor keeps positions) is sought back to its held record first, so the records
    /// dropped while it was held are read again, never skipped.
    fn forget_after_rebalance(&mut self, consumer: &WorkerConsumer) {
        if self.partitions.is_empty() || consumer.context().rebalances() == self.rebalances {
            return;
        }
        for ((topic, partition), (offset, _)) in self.partitions.drain() {
            // Fails harmlessly for a partition no longer assigned.
            let _ = consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            );
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            let _ = consumer.resume(&list);
        }
    }
}

/// One input partition's records in flight, in input order.
struct PartitionQueue {
    topic: String,
    partition: i32,
    /// The sequence number of the front record (each record produced takes the next one).
    front: u64,
    records: VecDeque<InFlight>,
    /// Emptied at shutdown behind a record that was not sent: reports of its records that
    /// come later are of no consequence (nothing of it is stored any more).
    abandoned: bool,
}

/// The records in flight of every input partition seen, by slot (a delivery report names
/// its record by slot and sequence number, [`Ticket`]).
#[derive(Default)]
struct Queues {
    partitions: Vec<PartitionQueue>,
    /// Topic → partition → slot.
    slots: HashMap<String, HashMap<i32, u16>>,
    len: usize,
    /// Bytes of record copies held by transform threads.
    handed: usize,
    /// Delivery reports taken from the producer, reused between settles.
    reports: Vec<Report>,
}

pub async fn run(
    publisher: &Arc<Publisher>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Stats, WorkerError> {
    let kafka = &publisher.kafka;
    let (consumer_config, producer_config) = client_config(kafka);
    let consumer: Arc<WorkerConsumer> = Arc::new(
        consumer_config.create_with_context(WorkerContext::new(&publisher.worker.metrics))?,
    );
    let producer: Arc<DeliveryProducer> = Arc::new(
        producer_config.create_with_context(Deliveries::new(publisher.worker.metrics.clone()))?,
    );
    if !publisher.wait_for_topics(&consumer, &mut shutdown).await {
        return Ok(Stats::default());
    }
    publisher.subscribe(&consumer)?;
    let metrics = &publisher.worker.metrics;
    health::spawn(
        &consumer,
        metrics,
        Duration::from_secs(kafka.stall_timeout_secs),
    );
    let mut skips = SkipDetector::default();
    // With more than one transform thread, the loop hands records over; with one, it
    // transforms them itself (no copy, no hand-over).
    let mut lanes = match kafka.transform_threads() {
        1 => None,
        count => {
            tracing::info!(transform_threads = count, "transforming in parallel");
            Some(Lanes::start(count, publisher, &producer).map_err(WorkerError::Threads)?)
        }
    };
    let copy_headers = !kafka.header_allowlist.is_empty();

    let mut stats = Stats::default();
    let mut queues = Queues::default();
    let mut held = Held::default();
    let (resolved_tx, mut resolved_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = Vec::with_capacity(4096);
    // One stream for the whole run (each `recv` would register and unregister a waker), and
    // one timer that wakes the loop to settle deliveries when no record comes.
    let mut messages = consumer.stream();
    let mut tick = tokio::time::interval(SETTLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Records taken straight from the fetched queue since the loop last went through
    // `select!`: a run of up to RUN_LENGTH of them pays neither the select nor a settle.
    let mut run_length = 0usize;
    loop {
        if run_length == 0 {
            queues
                .settle(&consumer, &producer, publisher, &mut stats, false)
                .await?;
        }
        // Backpressure: wait for deliveries, but hear a shutdown meanwhile (with the broker
        // out of reach, deliveries may not come for `message.timeout.ms`).
        let mut stopping = false;
        let full =
            |queues: &Queues| queues.len >= kafka.max_in_flight || queues.handed >= HANDED_BYTES;
        if full(&queues) {
            flush(&mut lanes)?;
        }
        while full(&queues) && !stopping {
            tokio::select! {
                _ = shutdown.changed() => stopping = true,
                settled = queues.settle(&consumer, &producer, publisher, &mut stats, true) => settled?,
            }
        }
        if stopping {
            break;
        }
        held.forget_after_rebalance(&consumer);
        let waiting = match run_length < RUN_LENGTH {
            true => messages.next().now_or_never().flatten(),
            false => None,
        };
        let message = match waiting {
            Some(message) => {
                run_length += 1;
                message
            }
            // Nothing fetched is waiting, or a run ended: a shutdown, a resolved schema id
            // and the timer are heard here.
            None => {
                run_length = 0;
                flush(&mut lanes)?;
                tokio::select! {
                    _ = shutdown.changed() => break,
                    Some((id, failures)) = resolved_rx.recv() => {
                        held.resume(&consumer, id);
                        if held.waiting.is_empty() {
                            super::registry_back(metrics, id, failures);
                        }
                        continue;
                    }
                    _ = tick.tick() => continue,
                    m = messages.next() => m.expect("a consumer's stream never ends"),
                }
            }
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error; retrying");
                continue;
            }
        };
        let held_here = !held.partitions.is_empty()
            && held
                .partitions
                .contains_key(&(message.topic().to_owned(), message.partition()));
        if held_here {
            // Fetched before its partition was paused: read again after the resume.
            continue;
        }
        if let Some(id) = publisher.unresolved_id(message.topic(), message.payload()) {
            // Asking the registry may take a while: the records already handed go on meanwhile.
            flush(&mut lanes)?;
            if !held.waiting.contains(&id) && publisher.try_resolve(id).await {
                // Resolved at the first attempt: on as usual.
            } else {
                let here = (message.topic().to_owned(), message.partition());
                held.hold(&consumer, here, message.offset(), id);
                if held.waiting.insert(id) {
                    publisher.resolve_in_background(id, resolved_tx.clone(), shutdown.clone());
                }
                continue;
            }
        }
        stats.consumed += 1;
        skips.observe(
            &consumer,
            metrics,
            message.topic(),
            message.partition(),
            message.offset(),
        );
        let ticket = queues.next_ticket(message.topic(), message.partition())?;
        let (state, handed) = match &mut lanes {
            Some(lanes) => {
                let job = Job::copy(ticket, &message, copy_headers);
                let handed = job.bytes();
                lanes
                    .hand(job)
                    .map_err(|gone| WorkerError::Threads(std::io::Error::other(gone)))?;
                (Delivery::Preparing, handed)
            }
            None => {
                let mut outgoing = publisher.prepare(&message, &mut out);
                let state = match outgoing.dropped {
                    true => Delivery::NothingSent,
                    false => {
                        if !produce(&producer, &mut outgoing, ticket, &mut shutdown).await? {
                            // A shutdown while the producer's queue was full: this record was
                            // not sent and is not in flight, so neither its offset nor a later
                            // one is stored; it is read again after the restart.
                            break;
                        }
                        Delivery::Waiting(outgoing.kind)
                    }
                };
                (state, 0)
            }
        };
        queues.push(
            ticket,
            InFlight {
                offset: message.offset(),
                sent: Instant::now(),
                state,
                handed,
            },
        );
        metrics.in_flight.set(queues.len as i64);
    }

    // Shutdown: stop fetching, finish in-flight records, flush, commit what was stored.
    publisher.worker.metrics.set_ready(false);
    if let Some(lanes) = &mut lanes {
        lanes.stop();
        lanes
            .flush()
            .map_err(|gone| WorkerError::Threads(std::io::Error::other(gone)))?;
    }
    let bound = Duration::from_secs(kafka.shutdown_timeout_secs);
    let started = Instant::now();
    tracing::info!(in_flight = queues.len, "shutting down");
    let drain = async {
        while queues.len > 0 {
            queues
                .settle(&consumer, &producer, publisher, &mut stats, true)
                .await?;
        }
        Ok::<(), WorkerError>(())
    };
    tokio::time::timeout(bound, drain)
        .await
        .map_err(|_| WorkerError::ShutdownTimeout(bound))??;
    // Drained: the lanes hold nothing more that can be stored (the records of an abandoned
    // partition are dropped unsent).
    drop(lanes);
    flush_in_flight(&producer, bound.saturating_sub(started.elapsed()))?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last automatic commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        consumed = stats.consumed,
        published = stats.published,
        "worker stopped"
    );
    Ok(stats)
}

/// Sends the transform threads the records handed to them since their last batch (before the
/// loop waits for anything).
fn flush(lanes: &mut Option<Lanes>) -> Result<(), WorkerError> {
    match lanes {
        Some(lanes) => lanes
            .flush()
            .map_err(|gone| WorkerError::Threads(std::io::Error::other(gone))),
        None => Ok(()),
    }
}

/// Produces one record, waiting while the producer's queue is full; `false` when a shutdown
/// came first (nothing sent). Any other refusal (a record over the producer's size limit, an
/// unknown topic) stops the worker with the record's offset unstored.
async fn produce(
    producer: &DeliveryProducer,
    outgoing: &mut Outgoing,
    ticket: Ticket,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, WorkerError> {
    loop {
        match try_send(producer, outgoing, ticket) {
            Attempt::Sent => return Ok(true),
            Attempt::QueueFull => {
                tokio::select! {
                    _ = shutdown.changed() => return Ok(false),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            Attempt::Refused(topic, reason) => return Err(WorkerError::Delivery { topic, reason }),
        }
    }
}

impl Queues {
    /// The ticket of the next record of `topic`/`partition` (a slot for a partition seen for
    /// the first time).
    fn next_ticket(&mut self, topic: &str, partition: i32) -> Result<Ticket, WorkerError> {
        let slot = match self.slots.get(topic).and_then(|p| p.get(&partition)) {
            Some(slot) => *slot,
            None => {
                let slot =
                    u16::try_from(self.partitions.len()).map_err(|_| WorkerError::Delivery {
                        topic: topic.to_owned(),
                        reason: "more than 65,536 input partitions in one run".into(),
                    })?;
                self.partitions.push(PartitionQueue {
                    topic: topic.to_owned(),
                    partition,
                    front: 0,
                    records: VecDeque::new(),
                    abandoned: false,
                });
                self.slots
                    .entry(topic.to_owned())
                    .or_default()
                    .insert(partition, slot);
                slot
            }
        };
        let queue = &self.partitions[usize::from(slot)];
        Ok(Ticket {
            slot,
            sequence: queue.front.wrapping_add(queue.records.len() as u64),
        })
    }

    /// Appends the record of `ticket` (from [`Queues::next_ticket`]) to its partition's queue.
    fn push(&mut self, ticket: Ticket, record: InFlight) {
        self.handed += record.handed;
        self.partitions[usize::from(ticket.slot)]
            .records
            .push_back(record);
        self.len += 1;
    }

    /// Marks the records the reports name (transform threads' and the producer's), then
    /// stores the offset of every partition's finished prefix. With `wait`, when no report
    /// had come and no record finished, waits for a report (at once if one came since the last
    /// wait) and does it again.
    async fn settle(
        &mut self,
        consumer: &WorkerConsumer,
        producer: &DeliveryProducer,
        publisher: &Publisher,
        stats: &mut Stats,
        wait: bool,
    ) -> Result<(), WorkerError> {
        let progress = self.finish_reported(consumer, producer, publisher, stats)?;
        if wait && progress == 0 {
            producer.context().arrival().await;
            self.finish_reported(consumer, producer, publisher, stats)?;
        }
        Ok(())
    }

    /// One pass of [`Queues::settle`]: answers how many reports it applied and records it
    /// finished together (0: nothing came, nothing changed).
    fn finish_reported(
        &mut self,
        consumer: &WorkerConsumer,
        producer: &DeliveryProducer,
        publisher: &Publisher,
        stats: &mut Stats,
    ) -> Result<usize, WorkerError> {
        producer.context().take(&mut self.reports);
        let reports = self.reports.len();
        for report in self.reports.drain(..) {
            let ticket = match &report {
                Report::Prepared { ticket, .. }
                | Report::NotSent { ticket, .. }
                | Report::Delivered { ticket, .. } => *ticket,
            };
            let queue = self.partitions.get_mut(usize::from(ticket.slot));
            if queue.as_ref().is_some_and(|queue| queue.abandoned) {
                continue;
            }
            let record = queue.and_then(|queue| {
                let at = ticket.distance_from(queue.front);
                queue.records.get_mut(at)
            });
            let Some(record) = record else {
                // Cannot happen (a record leaves its queue only after its reports came); if it
                // did, a failure must still stop the worker rather than be lost.
                if let Report::Delivered {
                    failure: Some((topic, reason)),
                    ..
                } = report
                {
                    return Err(WorkerError::Delivery { topic, reason });
                }
                tracing::debug!(?ticket, "a report names no record in flight");
                continue;
            };
            self.handed -= std::mem::take(&mut record.handed);
            record.state = match (report, &record.state) {
                (Report::Prepared { kind, sending, .. }, _) => match sending {
                    true => Delivery::Waiting(kind),
                    false => Delivery::NothingSent,
                },
                (Report::NotSent { refusal, .. }, _) => match refusal {
                    Some((topic, reason)) => Delivery::Failed(topic, reason),
                    None => Delivery::Abandoned,
                },
                (Report::Delivered { failure: None, .. }, Delivery::Waiting(kind)) => {
                    Delivery::Acknowledged(*kind)
                }
                (Report::Delivered { failure: None, .. }, _) => {
                    // Cannot happen: a transform thread reports a record prepared before it
                    // sends it.
                    return Err(WorkerError::Delivery {
                        topic: String::new(),
                        reason: "a delivery report came before its record was prepared".into(),
                    });
                }
                (
                    Report::Delivered {
                        failure: Some((topic, reason)),
                        ..
                    },
                    _,
                ) => Delivery::Failed(topic, reason),
            };
        }
        let metrics = &publisher.worker.metrics;
        let before = self.len;
        for queue in &mut self.partitions {
            let mut last = None;
            while let Some(front) = queue.records.front() {
                match &front.state {
                    Delivery::Preparing | Delivery::Waiting(_) => break,
                    Delivery::Abandoned => {
                        // Shutting down: what is behind it stays unstored, read again after
                        // the restart; the queue is emptied so that the drain ends.
                        let left = queue.records.len();
                        self.handed -= queue.records.iter().map(|r| r.handed).sum::<usize>();
                        queue.records.clear();
                        queue.front = queue.front.wrapping_add(left as u64);
                        queue.abandoned = true;
                        self.len -= left;
                        metrics.in_flight.sub(left as i64);
                        break;
                    }
                    Delivery::Failed(topic, reason) => {
                        return Err(WorkerError::Delivery {
                            topic: topic.clone(),
                            reason: reason.clone(),
                        })
                    }
                    Delivery::Acknowledged(kind) => {
                        metrics
                            .produce_seconds
                            .observe(front.sent.elapsed().as_secs_f64());
                        publisher.acknowledged(*kind, stats);
                    }
                    Delivery::NothingSent => {}
                }
                last = Some(front.offset);
                metrics.in_flight.dec();
                queue.records.pop_front();
                queue.front = queue.front.wrapping_add(1);
                self.len -= 1;
            }
            if let Some(offset) = last {
                // rd_kafka_offset_store stores offset + 1: the next record to read.
                match consumer.store_offset(&queue.topic, queue.partition, offset) {
                    Ok(()) => {}
                    // The partition was revoked by a rebalance while these records were in
                    // flight. Its new owner resumes from the last commit and publishes them
                    // again: a duplicate, never a loss.
                    Err(KafkaError::StoreOffset(
                        RDKafkaErrorCode::State | RDKafkaErrorCode::UnknownPartition,
                    )) => {
                        tracing::debug!(
                            topic = %queue.topic,
                            partition = queue.partition,
                            "offset not stored: partition revoked"
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(reports + before - self.len)
    }
}
