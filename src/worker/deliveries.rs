//! The at-least-once producer and its delivery reports, without a future per record.
//!
//! rdkafka's `FutureProducer` gives each record a oneshot channel (two allocations, a boxed
//! sender, a wake-up) that the loop then polls. Here each record carries a plain number
//! instead (its input partition's slot and its sequence within it, [`Ticket`]), librdkafka's
//! delivery report hands it back on the producer's polling thread, and the report is
//! appended to one list the loop takes whole when it settles. The loop keeps the records of
//! each input partition in order and stores an offset only past an acknowledged prefix, as
//! before. Transform threads ([`lanes`](super::lanes)) report on the same list, so the loop
//! has one place to look and one signal to wait for.

use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};
use tokio::sync::Notify;

use crate::connect::ConnectionWatch;
use crate::metrics::Metrics;

use super::polled::PolledProducer;
use super::route::DeadLetter;
use super::Outgoing;

/// The at-least-once loop's producer.
pub type DeliveryProducer = PolledProducer<Deliveries>;

/// A record's place among the records in flight: its input partition's slot and its
/// sequence number there (48 bits, wrapping: far more than can be in flight), packed in the
/// delivery opaque so that a delivery report costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub slot: u16,
    pub sequence: u64,
}

// A ticket is packed in a `usize`: the slot's 16 bits above a 48-bit sequence.
const _: () = assert!(usize::BITS >= 64, "a Ticket needs a 64-bit usize");

const SEQUENCE_BITS: u32 = 48;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;

impl Ticket {
    fn pack(self) -> usize {
        ((u64::from(self.slot) << SEQUENCE_BITS) | (self.sequence & SEQUENCE_MASK)) as usize
    }

    fn unpack(packed: usize) -> Ticket {
        let packed = packed as u64;
        Ticket {
            slot: (packed >> SEQUENCE_BITS) as u16,
            sequence: packed & SEQUENCE_MASK,
        }
    }

    /// How far `self` is past `front` (a sequence number of the same slot).
    pub fn distance_from(self, front: u64) -> usize {
        (self.sequence.wrapping_sub(front) & SEQUENCE_MASK) as usize
    }

    /// The opaque of a produced record.
    pub fn opaque(self) -> usize {
        self.pack()
    }
}

/// What the loop hears about a record in flight, in the order it happened: a transform
/// thread's [`Report::Prepared`] is appended before it hands the record to the producer, so
/// it always comes before the record's [`Report::Delivered`].
#[derive(Debug)]
pub enum Report {
    /// A transform thread ([`lanes`](super::lanes)) prepared the record: its pipeline (or
    /// why it is dead-lettered), and whether it is being sent (`false`: its pipeline drops
    /// a withheld subject's records, nothing to send).
    Prepared {
        ticket: Ticket,
        kind: Result<usize, DeadLetter>,
        sending: bool,
    },
    /// A transform thread could not send the record: the producer refused it (output topic,
    /// librdkafka's reason) or, with `None`, a shutdown came while the producer's queue was
    /// full.
    NotSent {
        ticket: Ticket,
        refusal: Option<(String, String)>,
    },
    /// The producer's delivery report, and the failure if it was not delivered (the output
    /// topic and librdkafka's reason; never a value).
    Delivered {
        ticket: Ticket,
        failure: Option<(String, String)>,
    },
}

/// The producer's context: connection errors as every client reports them, and the delivery
/// reports gathered for the loop.
pub struct Deliveries {
    watch: ConnectionWatch,
    reports: Mutex<Vec<Report>>,
    /// Signalled after each report, for a loop waiting on one (backpressure, shutdown).
    arrived: Notify,
}

impl Deliveries {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Deliveries {
            watch: ConnectionWatch::new("producer", Some(metrics)),
            reports: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        }
    }

    /// Appends a transform thread's report (and wakes a loop waiting for one).
    pub fn push(&self, report: Report) {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(report);
        // A permit is kept when no one waits: a report between a check and a wait is not lost.
        self.arrived.notify_one();
    }

    /// Moves the reports that came since the last call into `into` (empty).
    pub fn take(&self, into: &mut Vec<Report>) {
        debug_assert!(into.is_empty(), "the reports taken before were all used");
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *reports, into);
    }

    /// Waits until a report comes (at once if one came since the last wait).
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }
}

/// What became of one attempt to hand a record to the producer.
pub enum Attempt {
    Sent,
    /// The producer's queue is full (`queue.buffering.max.kbytes`): try again after a while;
    /// the record's headers are back in `outgoing`.
    QueueFull,
    /// Refused for good (a record over the producer's size limit, an unknown topic): the
    /// output topic and librdkafka's reason.
    Refused(String, String),
}

/// Hands `outgoing` to the producer under `ticket` (its headers are taken; a full queue
/// gives them back).
pub fn try_send(producer: &DeliveryProducer, outgoing: &mut Outgoing, ticket: Ticket) -> Attempt {
    let mut record = BaseRecord::with_opaque_to(outgoing.topic.as_str(), ticket.opaque())
        .payload(outgoing.payload.as_slice());
    if let Some(key) = &outgoing.key {
        record = record.key(key.as_str());
    }
    record.headers = outgoing.headers.take();
    match producer.send(record) {
        Ok(()) => Attempt::Sent,
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
            outgoing.headers = record.headers;
            Attempt::QueueFull
        }
        Err((error, _)) => Attempt::Refused(outgoing.topic.clone(), error.to_string()),
    }
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.report(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, packed: usize) {
        let failure = match result {
            Ok(_) => None,
            Err((error, message)) => Some((message.topic().to_owned(), error.to_string())),
        };
        self.push(Report::Delivered {
            ticket: Ticket::unpack(packed),
            failure,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_survives_the_opaque_and_wraps() {
        for (slot, sequence) in [(0, 0), (1, 41), (u16::MAX, SEQUENCE_MASK), (7, 123_456_789)] {
            let ticket = Ticket { slot, sequence };
            assert_eq!(Ticket::unpack(ticket.opaque()), ticket);
        }
        let past_the_wrap = Ticket {
            slot: 3,
            sequence: 2,
        };
        assert_eq!(past_the_wrap.distance_from(SEQUENCE_MASK - 1), 4);
    }
}
