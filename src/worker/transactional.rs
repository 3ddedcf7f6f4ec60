//! `exactly-once` mode: each batch of outputs (analytics records and dead letters alike) and the
//! consumer offsets it covers are committed in one Kafka transaction (`transactional.id`,
//! `send_offsets_to_transaction` with the consumer's group metadata, KIP-447). Consumers of the
//! analytics and dead-letter topics read with `isolation.level=read_committed`.
//!
//! - **Batches.** A transaction begins with the first record after the previous commit and is
//!   committed after `transaction_max_records` records or `transaction_max_ms` (defaults 10,000
//!   and 100 ms), whichever comes first, and at shutdown. A commit costs a few broker round
//!   trips during which nothing else is processed, so throughput grows with the batch.
//! - **Rebalances.** A transaction during which the consumer's assignment changed is aborted,
//!   never committed: its partitions may already belong to another member, which resumes from
//!   the last committed offsets. The partitions this worker still holds are rewound to where the
//!   aborted transaction began reading them, so their records are read again (nothing lost,
//!   and the aborted copies are invisible to `read_committed` readers: nothing duplicated).
//!   An abortable commit error (a request timed out, the group's generation moved on) is
//!   handled the same way, and so is a record the broker refused (librdkafka then refuses
//!   every further record of the transaction): after three such transactions in a row the
//!   worker stops, naming the broker's reason.
//! - **Fencing.** A second worker started with the same `transactional_id` fences this one: the
//!   broker refuses its transactions, it logs why and stops with [`WorkerError::Fenced`]; its
//!   open transaction is aborted by the broker.
//! - **Registry waits.** A record whose schema id must be fetched first commits the open
//!   transaction, then waits (with no transaction open, so a long registry outage cannot run
//!   into the transaction timeout), then starts a new one.
//! - **Intake.** As in the at-least-once loop, records already fetched are taken in runs (up
//!   to `RUN_LENGTH`) from one consumer stream without going through `select!`; a shutdown and
//!   the open transaction's deadline are heard between runs, and the deadline is also checked
//!   before each record.
//! - **Crash.** After `kill -9` the restarted worker's `init_transactions` aborts whatever the
//!   old one left open, and consumption resumes from the last committed offsets.

use std::collections::HashMap;

use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer as _};

use crate::connect::ConnectionWatch;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::health::{self, SkipDetector, WorkerConsumer, WorkerContext};
use super::polled::{flush_in_flight, PolledProducer};
use super::route::DeadLetter;
use super::{client_config, Outgoing, Publisher, Stats, WorkerError, RUN_LENGTH};

/// Transactions refused in a row (a commit refused, or a delivery in it failed) after which
/// the worker stops: a record the broker refuses every time (over a topic's size limit, say)
/// must stop the worker, not abort and retry forever.
const REFUSED_IN_A_ROW: u32 = 3;

/// The open transaction: what it produced and which input offsets it covers.
struct Transaction {
    /// The consumer's rebalance count when it began; a change means it must be aborted.
    rebalances: u64,
    deadline: Instant,
    /// Each record produced in it: its pipeline (or dead-letter reason) and when. No future
    /// per record: a committed transaction has every one of them delivered.
    sent: Vec<(Result<usize, DeadLetter>, Instant)>,
    /// Per input topic and partition: the first offset read in this transaction (where a
    /// rewind goes) and the next offset to read after it (what a commit stores).
    offsets: HashMap<String, HashMap<i32, (i64, i64)>>,
}

impl Transaction {
    /// Notes that the record at `offset` of `topic`/`partition` is covered by this transaction.
    fn read(&mut self, topic: &str, partition: i32, offset: i64) {
        // Looked up by `&str`: a topic's name is allocated once per transaction, not per record.
        let partitions = match self.offsets.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.offsets.entry(topic.to_owned()).or_default(),
        };
        partitions
            .entry(partition)
            .and_modify(|(_, next)| *next = offset + 1)
            .or_insert((offset, offset + 1));
    }

    /// Each input partition read: topic, partition, first offset read, next offset to read.
    fn partitions(&self) -> impl Iterator<Item = (&str, i32, i64, i64)> {
        self.offsets.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(partition, (first, next))| (topic.as_str(), *partition, *first, *next))
        })
    }
}

/// The clients and settings every step of the loop needs.
struct Clients<'a> {
    publisher: &'a Publisher,
    consumer: Arc<WorkerConsumer>,
    producer: PolledProducer<ConnectionWatch>,
    timeout: Duration,
    /// How long a transaction stays open after its first record at most.
    batch_time: Duration,
    transactional_id: String,
    /// Transactions refused in a row: since the last commit that went past every partition
    /// the last refused one had read ([`Clients::refused_from`]).
    refused: std::cell::Cell<u32>,
    /// The input partitions of the last refused transaction and where it began reading each.
    /// A commit of other partitions' records (fetched before the rewound ones came back)
    /// proves nothing about the refused record: the count starts again only once commits have
    /// gone past all of them, so a record refused every time stops the worker even with a
    /// backlog on other partitions. (A partition revoked meanwhile keeps the count: three
    /// refusals then stop the worker even with commits between them, the safe side.)
    refused_from: std::cell::RefCell<Vec<(String, i32, i64)>>,
}

pub async fn run(
    publisher: &Publisher,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Stats, WorkerError> {
    let kafka = &publisher.kafka;
    // `transactional_id` is present: `check_kafka` refused the config otherwise.
    let transactional_id = kafka.transactional_id.clone().unwrap_or_default();
    let (consumer_config, producer_config) = client_config(kafka);
    let clients = Clients {
        publisher,
        consumer: Arc::new(
            consumer_config.create_with_context(WorkerContext::new(&publisher.worker.metrics))?,
        ),
        producer: producer_config.create_with_context(ConnectionWatch::new(
            "producer",
            Some(publisher.worker.metrics.clone()),
        ))?,
        timeout: Duration::from_secs(kafka.shutdown_timeout_secs),
        batch_time: Duration::from_millis(kafka.transaction_max_ms),
        transactional_id,
        refused: std::cell::Cell::new(0),
        refused_from: std::cell::RefCell::new(Vec::new()),
    };
    // Fences any earlier producer with this id and aborts what it left open.
    clients
        .producer
        .init_transactions(clients.timeout)
        .map_err(|e| clients.fatal(e))?;
    if !publisher
        .wait_for_topics(&clients.consumer, &mut shutdown)
        .await
    {
        return Ok(Stats::default());
    }
    publisher.subscribe(&clients.consumer)?;
    let metrics = &publisher.worker.metrics;
    health::spawn(
        &clients.consumer,
        metrics,
        Duration::from_secs(kafka.stall_timeout_secs),
    );
    let mut skips = SkipDetector::default();

    let mut stats = Stats::default();
    let mut open: Option<Transaction> = None;
    let mut out = Vec::with_capacity(4096);
    // One stream for the whole run (each `recv` would register and unregister a waker).
    let mut messages = clients.consumer.stream();
    // Records taken straight from the fetched queue since the loop last went through
    // `select!`: a run of up to RUN_LENGTH of them pays neither the select nor a timer.
    let mut run_length = 0usize;
    loop {
        if open.as_ref().is_some_and(|t| Instant::now() >= t.deadline) {
            clients.finish(open.take(), &mut stats)?;
        }
        let waiting = match run_length < RUN_LENGTH {
            true => messages.next().now_or_never().flatten(),
            false => None,
        };
        let message = match waiting {
            Some(message) => {
                run_length += 1;
                message
            }
            // Nothing fetched is waiting, or a run ended: a shutdown and the open
            // transaction's deadline are heard here.
            None => {
                run_length = 0;
                let deadline = open.as_ref().map(|t| t.deadline);
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = sleep_until(deadline) => {
                        clients.finish(open.take(), &mut stats)?;
                        continue;
                    }
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
        if let Some(txn) = open.take() {
            if txn.rebalances != clients.consumer.context().rebalances() {
                // The assignment changed under the open transaction: abort it. If this
                // record's partition is rewound, it is read again; otherwise it is the first
                // record of the next transaction.
                let rewound = clients.abort(txn, "the consumer group rebalanced")?;
                let here = |(topic, partition): &(String, i32)| {
                    topic == message.topic() && *partition == message.partition()
                };
                if rewound.iter().any(here) {
                    continue;
                }
            } else {
                open = Some(txn);
            }
        }
        stats.consumed += 1;
        skips.observe(
            &clients.consumer,
            metrics,
            message.topic(),
            message.partition(),
            message.offset(),
        );
        if publisher.needs_registry(message.topic(), message.payload()) {
            // Commit what is done before a wait of unknown length.
            clients.finish(open.take(), &mut stats)?;
            if !publisher
                .resolve(message.topic(), message.payload(), &mut shutdown)
                .await
            {
                // Shutdown while waiting: this record stays uncommitted, read again later.
                break;
            }
        }
        let txn = match &mut open {
            Some(txn) => txn,
            None => open.insert(clients.begin()?),
        };
        let outgoing = publisher.prepare(&message, &mut out);
        let kind = outgoing.kind;
        if !outgoing.dropped {
            let sent = match send(&clients.producer, outgoing, &mut shutdown).await {
                Ok(sent) => sent,
                Err(Refused::TransactionFailed) => {
                    // This record is read again with the rest of the transaction.
                    txn.read(message.topic(), message.partition(), message.offset());
                    let txn = open.take().expect("the open transaction");
                    clients.refused(txn, "a record in it could not be delivered", None)?;
                    continue;
                }
                Err(Refused::Record(e)) => return Err(clients.fatal_delivery(e)),
            };
            if !sent {
                // A shutdown while the producer's queue was full: this record is not in the
                // transaction, nor is its offset; it is read again after the restart.
                break;
            }
            txn.sent.push((kind, Instant::now()));
            metrics.in_flight.inc();
        }
        txn.read(message.topic(), message.partition(), message.offset());
        if txn.sent.len() >= kafka.transaction_max_records {
            clients.finish(open.take(), &mut stats)?;
        }
    }

    // Shutdown: commit what was done (within the bound), then leave the group.
    publisher.worker.metrics.set_ready(false);
    tracing::info!(
        in_transaction = open.as_ref().map_or(0, |t| t.sent.len()),
        "shutting down"
    );
    clients.finish(open.take(), &mut stats)?;
    tracing::info!(
        consumed = stats.consumed,
        published = stats.published,
        "worker stopped"
    );
    Ok(stats)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

impl Clients<'_> {
    fn begin(&self) -> Result<Transaction, WorkerError> {
        // The count is read before the transaction begins: a rebalance in between aborts it.
        let rebalances = self.consumer.context().rebalances();
        self.producer
            .begin_transaction()
            .map_err(|e| self.fatal(e))?;
        // A failed delivery noted before this transaction (an aborted one's) is not its.
        self.producer.context().take_failed_delivery();
        Ok(Transaction {
            rebalances,
            deadline: Instant::now() + self.batch_time,
            sent: Vec::new(),
            offsets: HashMap::new(),
        })
    }

    /// Commits `txn` with its offsets, or aborts it if the assignment changed meanwhile or the
    /// broker answers that it must be aborted.
    fn finish(&self, txn: Option<Transaction>, stats: &mut Stats) -> Result<(), WorkerError> {
        let Some(txn) = txn else { return Ok(()) };
        // No poll happens between this check and the commit, so no rebalance can complete in
        // between: a revocation is served only inside the consumer's poll.
        if txn.rebalances != self.consumer.context().rebalances() {
            self.abort(txn, "the consumer group rebalanced")?;
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, _, next) in txn.partitions() {
            offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| WorkerError::Delivery {
                topic: String::new(),
                reason: "no consumer group metadata".into(),
            })?;
        // The offsets, then librdkafka's flush (the records' acknowledgements come while the
        // offsets' round trips run; rdkafka's commit would flush in steps of 100 ms), then
        // the commit.
        let committed = self
            .producer
            .send_offsets_to_transaction(&offsets, &group, self.timeout)
            .and_then(|()| flush_in_flight(&self.producer, self.timeout))
            .and_then(|()| self.commit_with_retries());
        match committed {
            Ok(()) => {}
            Err(e) if requires_abort(&e) => {
                return self.refused(txn, "the broker refused its commit", Some(e));
            }
            Err(e) => return Err(self.fatal(e)),
        }
        self.passed_refused(&txn);
        let metrics = &self.publisher.worker.metrics;
        metrics.transactions.with_label_values(&["committed"]).inc();
        metrics.in_flight.sub(txn.sent.len() as i64);
        // A committed transaction has every record delivered.
        for (kind, sent) in txn.sent {
            metrics
                .produce_seconds
                .observe(sent.elapsed().as_secs_f64());
            self.publisher.acknowledged(kind, stats);
        }
        Ok(())
    }

    /// Aborts `txn`, refused (`why`, with the commit's `error` if that was refused), and
    /// stops the worker if it is the [`REFUSED_IN_A_ROW`]th in a row. Names the first failed
    /// delivery's reason when there was one (the commit's error only says that some failed).
    fn refused(
        &self,
        txn: Transaction,
        why: &str,
        error: Option<KafkaError>,
    ) -> Result<(), WorkerError> {
        *self.refused_from.borrow_mut() = txn
            .partitions()
            .map(|(topic, partition, first, _)| (topic.to_owned(), partition, first))
            .collect();
        // The abort waits for the requests in flight, so the failed delivery's report is in
        // by then (the polling thread serves it as it comes).
        self.abort(txn, why)?;
        if let Some(error) = &error {
            tracing::warn!(%error, "the commit's error");
        }
        let reason = match (self.producer.context().take_failed_delivery(), error) {
            (Some(delivery), _) => format!("a delivery failed: {delivery}"),
            (None, Some(error)) => error.to_string(),
            (None, None) => "librdkafka refused the transaction's records".to_owned(),
        };
        tracing::warn!(%reason, "why the transaction was refused");
        self.refused.set(self.refused.get() + 1);
        if self.refused.get() >= REFUSED_IN_A_ROW {
            return Err(WorkerError::TransactionsRefused {
                count: REFUSED_IN_A_ROW,
                reason,
            });
        }
        Ok(())
    }

    /// Notes that committed `txn` went past the partitions of the last refused transaction it
    /// read beyond where that one began; the count of refusals starts again once none is left.
    fn passed_refused(&self, txn: &Transaction) {
        let mut refused_from = self.refused_from.borrow_mut();
        refused_from.retain(|(topic, partition, first)| {
            let committed_past = txn
                .offsets
                .get(topic.as_str())
                .and_then(|partitions| partitions.get(partition))
                .is_some_and(|(_, next)| next > first);
            !committed_past
        });
        if refused_from.is_empty() {
            self.refused.set(0);
        }
    }

    /// `commit_transaction`, retried while the broker answers with a retriable error.
    fn commit_with_retries(&self) -> Result<(), KafkaError> {
        let mut attempts = 0;
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 5 => {
                    attempts += 1;
                    tracing::warn!(error = %e, attempts, "committing the transaction again");
                }
                other => return other,
            }
        }
    }

    /// Aborts `txn` and rewinds every partition it read that is still assigned to where it
    /// began reading it. Returns the rewound partitions.
    fn abort(&self, txn: Transaction, why: &str) -> Result<Vec<(String, i32)>, WorkerError> {
        self.producer
            .abort_transaction(self.timeout)
            .map_err(|e| self.fatal(e))?;
        let metrics = &self.publisher.worker.metrics;
        metrics.transactions.with_label_values(&["aborted"]).inc();
        metrics.in_flight.sub(txn.sent.len() as i64);
        let assigned = self.consumer.assignment()?;
        let mut rewind = TopicPartitionList::new();
        let mut rewound = Vec::new();
        for (topic, partition, first, _) in txn.partitions() {
            if assigned.find_partition(topic, partition).is_some() {
                rewind.add_partition_offset(topic, partition, Offset::Offset(first))?;
                rewound.push((topic.to_owned(), partition));
            }
        }
        if rewind.count() > 0 {
            let answer = self.consumer.seek_partitions(rewind, self.timeout)?;
            let assigned_now = self.consumer.assignment()?;
            for element in answer.elements() {
                let Err(e) = element.error() else { continue };
                let (topic, partition) = (element.topic(), element.partition());
                if assigned_now.find_partition(topic, partition).is_some() {
                    // Still this worker's and not rewound: reading on would let a later commit
                    // pass the aborted records, never published. Stop; a restart reads them
                    // again from the last commit.
                    return Err(WorkerError::NotRewound {
                        topic: topic.to_owned(),
                        partition,
                        reason: e.to_string(),
                    });
                }
                // Revoked after all: its new owner reads it again from the last commit.
                tracing::debug!(topic, partition, error = %e, "not rewound");
            }
        }
        tracing::warn!(
            records = txn.sent.len(),
            rewound = rewound.len(),
            "transaction aborted ({why}); its records are read again from where it began, and \
             read_committed readers never see the aborted copies"
        );
        Ok(rewound)
    }

    /// The error to stop with: fencing named as such.
    fn fatal(&self, error: KafkaError) -> WorkerError {
        let fenced = match &error {
            KafkaError::Transaction(e) => is_fencing(e.code()),
            _ => false,
        } || self
            .producer
            .client()
            .fatal_error()
            .is_some_and(|(code, _)| is_fencing(code));
        if fenced {
            tracing::error!(transactional_id = %self.transactional_id, "this worker was fenced: another worker started with the same transactional_id; stopping");
            WorkerError::Fenced(self.transactional_id.clone())
        } else {
            error.into()
        }
    }

    /// A refused send: fencing named as such, anything else as it was.
    fn fatal_delivery(&self, error: WorkerError) -> WorkerError {
        match self.producer.client().fatal_error() {
            Some((code, _)) if is_fencing(code) => {
                self.fatal(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal))
            }
            _ => error,
        }
    }
}

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// Whether a transactional error leaves the producer usable after an abort.
fn requires_abort(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.txn_requires_abort() && !e.is_fatal(),
        _ => false,
    }
}

/// Why [`send`] did not hand a record to the producer.
enum Refused {
    /// The open transaction cannot take more records: a delivery in it failed (librdkafka
    /// answers `State` until it is aborted; not after a fatal error, such as fencing).
    TransactionFailed,
    /// The record itself (over the producer's size limit, an unknown topic, a fatal error):
    /// the worker stops with its offset uncommitted.
    Record(WorkerError),
}

/// Produces one record, waiting while the producer's queue is full; `false` when a shutdown
/// came first (nothing sent).
async fn send(
    producer: &PolledProducer<ConnectionWatch>,
    outgoing: Outgoing,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, Refused> {
    let mut headers = outgoing.headers;
    loop {
        let mut record =
            BaseRecord::to(outgoing.topic.as_str()).payload(outgoing.payload.as_slice());
        if let Some(key) = &outgoing.key {
            record = record.key(key.as_str());
        }
        record.headers = headers.take();
        match producer.send(record) {
            Ok(()) => return Ok(true),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                headers = record.headers;
                tokio::select! {
                    _ = shutdown.changed() => return Ok(false),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::State), _))
                if producer.client().fatal_error().is_none() =>
            {
                return Err(Refused::TransactionFailed)
            }
            Err((error, _)) => {
                return Err(Refused::Record(WorkerError::Delivery {
                    topic: outgoing.topic.clone(),
                    reason: error.to_string(),
                }))
            }
        }
    }
}
