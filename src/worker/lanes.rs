//! Transform threads ("lanes"): records of different input partitions transformed in
//! parallel, each partition's in order.
//!
//! The at-least-once loop stays the only reader of the consumer and the only keeper of the
//! records in flight: it gives each record its [`Ticket`], queues it as being prepared, and
//! hands a copy to the lane of its partition (`slot % lanes`, so one partition always goes
//! to the same lane and its records are prepared and produced in input order). The lane
//! prepares it ([`Publisher::prepare`]: transform or dead letter), reports
//! [`Report::Prepared`] on the producer's report list and produces it under the same ticket;
//! the delivery report follows on the same list. A record is finished only when the loop
//! has both, so offsets are still stored only past a delivered prefix.
//!
//! Records are handed over in batches (up to [`HAND_BATCH`], and whatever is pending whenever
//! the loop is about to wait), so an idle lane is woken once for many records.
//!
//! A lane never waits for the loop: what it hands back goes on the report list. It waits
//! only for its next record, or for room in the producer's queue (where it hears a shutdown
//! through [`Lanes::stop`]).

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, OwnedMessage, Timestamp};
use rdkafka::producer::Producer as _;
use rdkafka::Message;

use super::deliveries::{try_send, Attempt, DeliveryProducer, Report, Ticket};
use super::Publisher;

/// A record handed to a lane: its ticket and a copy of the consumed message (the consumer's
/// own message cannot leave the loop's thread).
pub struct Job {
    pub ticket: Ticket,
    message: OwnedMessage,
}

impl Job {
    /// Copies what preparing `message` reads: value, key, topic, partition, offset, and the
    /// headers only `with_headers` (copying parses them).
    pub fn copy(ticket: Ticket, message: &BorrowedMessage<'_>, with_headers: bool) -> Job {
        let headers = match with_headers {
            true => message.headers().map(|h| h.detach()),
            false => None,
        };
        Job {
            ticket,
            message: OwnedMessage::new(
                message.payload().map(<[u8]>::to_vec),
                message.key().map(<[u8]>::to_vec),
                message.topic().to_owned(),
                Timestamp::NotAvailable,
                message.partition(),
                message.offset(),
                headers,
            ),
        }
    }

    /// The bytes this copy holds (value and key), for the loop's bound on copies in lanes.
    pub fn bytes(&self) -> usize {
        self.message.payload().map_or(0, <[u8]>::len) + self.message.key().map_or(0, <[u8]>::len)
    }
}

/// The running transform threads.
pub struct Lanes {
    senders: Vec<mpsc::Sender<Vec<Job>>>,
    /// Each lane's records not yet sent to it: handed over in batches, one wake-up for many
    /// records rather than one each.
    pending: Vec<Vec<Job>>,
    threads: Vec<JoinHandle<()>>,
    signals: Arc<Signals>,
}

/// What the loop tells every lane at once.
#[derive(Default)]
struct Signals {
    /// A shutdown: a lane waiting for room in the producer's queue gives up.
    stopping: AtomicBool,
    /// The loop has ended: what a lane still holds is dropped unprepared (nothing of it can
    /// be stored any more; it is read again after the restart).
    discarding: AtomicBool,
}

/// The most records handed to one lane in one batch.
const HAND_BATCH: usize = 64;

/// Why a record could not be handed to its lane.
#[derive(Debug, thiserror::Error)]
#[error("transform thread {0} has stopped")]
pub struct LaneGone(usize);

impl Lanes {
    /// Starts `count` transform threads that prepare records with `publisher` and produce
    /// them with `producer`.
    pub fn start(
        count: usize,
        publisher: &Arc<Publisher>,
        producer: &Arc<DeliveryProducer>,
    ) -> std::io::Result<Lanes> {
        let signals = Arc::new(Signals::default());
        let mut lanes = Lanes {
            senders: Vec::with_capacity(count),
            pending: (0..count).map(|_| Vec::with_capacity(HAND_BATCH)).collect(),
            threads: Vec::with_capacity(count),
            signals: signals.clone(),
        };
        for index in 0..count {
            let (sender, jobs) = mpsc::channel();
            let (publisher, producer, signals) =
                (publisher.clone(), producer.clone(), signals.clone());
            let thread = std::thread::Builder::new()
                .name(format!("transform-{index}"))
                .spawn(move || lane(&jobs, &publisher, &producer, &signals))?;
            lanes.senders.push(sender);
            lanes.threads.push(thread);
        }
        Ok(lanes)
    }

    /// Hands `job` to the lane of its input partition: at once when that lane's batch is
    /// full, otherwise at the next [`Lanes::flush`].
    pub fn hand(&mut self, job: Job) -> Result<(), LaneGone> {
        let index = usize::from(job.ticket.slot) % self.senders.len();
        self.pending[index].push(job);
        match self.pending[index].len() >= HAND_BATCH {
            true => self.send(index),
            false => Ok(()),
        }
    }

    /// Sends every lane the records handed to it since its last batch. The loop calls this
    /// before it waits for anything (a record, a report, a shutdown): a record left pending
    /// would never be reported.
    pub fn flush(&mut self) -> Result<(), LaneGone> {
        for index in 0..self.pending.len() {
            if !self.pending[index].is_empty() {
                self.send(index)?;
            }
        }
        Ok(())
    }

    fn send(&mut self, index: usize) -> Result<(), LaneGone> {
        let batch = std::mem::replace(&mut self.pending[index], Vec::with_capacity(HAND_BATCH));
        self.senders[index].send(batch).map_err(|_| LaneGone(index))
    }

    /// A shutdown: lanes still prepare and send what they were handed, but no longer wait
    /// for room in a full producer queue (those records are reported not sent).
    pub fn stop(&self) {
        self.signals.stopping.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lanes {
    /// Closes the lanes' inputs, has them drop what they still hold, and waits for them: a
    /// lane then finishes at most the record it is on, without waiting on the producer. (After
    /// a clean drain they hold nothing; after an error they must not go on publishing.)
    fn drop(&mut self) {
        self.signals.stopping.store(true, Ordering::Relaxed);
        self.signals.discarding.store(true, Ordering::Relaxed);
        self.senders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Why a lane did not send a record: the producer's refusal (output topic, reason), or `None`
/// for a shutdown while its queue was full (see [`Report::NotSent`]).
type NotSent = Option<(String, String)>;

/// One lane: prepares and produces each record it is handed, in order, until its input
/// closes.
fn lane(
    jobs: &mpsc::Receiver<Vec<Job>>,
    publisher: &Publisher,
    producer: &DeliveryProducer,
    signals: &Signals,
) {
    let reports = producer.context();
    let mut out = Vec::with_capacity(4096);
    // Input partitions (by slot) a record of which was not sent: their later records are not
    // sent either, so a partition is never published out of order (after the restart they
    // are read again, behind the one that was not sent).
    let mut halted: HashSet<u16> = HashSet::new();
    for job in jobs.iter().flatten() {
        if signals.discarding.load(Ordering::Relaxed) {
            continue;
        }
        let ticket = job.ticket;
        if halted.contains(&ticket.slot) {
            reports.push(Report::NotSent {
                ticket,
                refusal: None,
            });
            continue;
        }
        // A panic in a dependency must not leave the record unfinished (the loop would wait
        // for it forever): it is reported as refused, which stops the worker with its offset
        // unstored. The panic hook has already logged it without values.
        let handled = catch_unwind(AssertUnwindSafe(|| {
            prepare_and_send(&job, publisher, producer, signals, &mut out)
        }));
        let refusal = match handled {
            Ok(None) => continue,
            Ok(Some(refusal)) => refusal,
            Err(_) => Some(("(transform)".into(), "a transform thread panicked".into())),
        };
        halted.insert(ticket.slot);
        reports.push(Report::NotSent { ticket, refusal });
    }
}

/// Prepares one record, reports it prepared, and produces it (waiting while the producer's
/// queue is full, unless stopping): `None` once it is sent or has nothing to send.
fn prepare_and_send(
    job: &Job,
    publisher: &Publisher,
    producer: &DeliveryProducer,
    signals: &Signals,
    out: &mut Vec<u8>,
) -> Option<NotSent> {
    let mut outgoing = publisher.prepare(&job.message, out);
    producer.context().push(Report::Prepared {
        ticket: job.ticket,
        kind: outgoing.kind,
        sending: !outgoing.dropped,
    });
    if outgoing.dropped {
        return None;
    }
    loop {
        match try_send(producer, &mut outgoing, job.ticket) {
            Attempt::Sent => return None,
            Attempt::QueueFull if signals.stopping.load(Ordering::Relaxed) => return Some(None),
            Attempt::QueueFull => std::thread::sleep(Duration::from_millis(5)),
            Attempt::Refused(topic, reason) => return Some(Some((topic, reason))),
        }
    }
}
