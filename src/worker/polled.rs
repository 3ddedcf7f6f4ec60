//! A producer served by a polling thread of its own, without the idle spin of rdkafka's.
//!
//! librdkafka hands a producer's delivery reports and error events to whoever polls its
//! queue; rdkafka's `ThreadedProducer` runs a thread that calls `BaseProducer::poll(100 ms)`
//! in a loop. That `poll` waits in steps, each asking librdkafka for the time left to its
//! deadline *truncated to whole milliseconds*: its first step already asks for 99 ms (a few
//! nanoseconds of the 100 have passed), and the last millisecond, asked as "0 ms", is spent in
//! non-blocking polls until the deadline. About 1 ms of every 100 is a busy loop, on every
//! producer, loaded or idle: an idle worker's producer thread used 9 ms of CPU each second,
//! a quarter of the process's idle CPU, most of it in `clock_gettime` (perf, session 42).
//!
//! [`PolledProducer`] is the same `BaseProducer` and thread, polling for [`POLL_STEP`]: 100 ms
//! and 50 µs. Its first step then asks for the whole 100 ms (unless the thread is preempted
//! in the nanoseconds between rdkafka's two readings of the clock), librdkafka's timed wait
//! returns no earlier than that (it waits again if woken before its deadline), and what is
//! left of the step is the 50 µs less the thread's wake-up latency: usually nothing (the
//! kernel's timer slack lets it wake up to 50 µs late), at most 50 µs of spin per step. A
//! poll cut short by an event still ends its last millisecond in non-blocking polls, as
//! rdkafka's does: at most 1 ms per 100 while reports flow.
//!
//! Everything else is the `BaseProducer`'s (it dereferences to it), and dropping it stops and
//! joins the thread before the producer is destroyed, as `ThreadedProducer` does.
//!
//! [`flush_in_flight`] is the flush a transaction's commit needs. rdkafka's `flush` (which
//! its `commit_transaction` calls first) asks librdkafka to flush without waiting, then polls
//! for 100 ms and asks again: whenever a record is in flight, at least 100 ms, however soon it
//! is delivered, for a `poll` returns only at its deadline. With transactions of 100 ms that
//! halved the exactly-once worker's throughput (and the loop, blocked, paid the idle time's
//! wake-ups). librdkafka's own flush waits on its message count instead, and sends what is
//! lingering at once.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// How long each poll of the thread lasts: a whole number of milliseconds and a margin
/// shorter than a thread's wake-up latency (see the module's documentation).
pub const POLL_STEP: Duration = Duration::from_micros(100_050);

/// A `BaseProducer` whose queue a thread of its own polls (delivery reports, errors).
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> FromClientConfigAndContext<C> for PolledProducer<C> {
    fn from_config_and_context(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("producer poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_STEP);
                    }
                })
                .map_err(|e| {
                    KafkaError::ClientCreation(format!(
                        "the producer's polling thread did not start: {e}"
                    ))
                })?
        };
        Ok(PolledProducer {
            producer,
            stop,
            thread: Some(thread),
        })
    }
}

impl<C: ProducerContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        // The thread ends after its current poll (at most one step); the producer itself is
        // destroyed when the last `Arc` goes, here, after the join.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the producer's polling thread panicked");
            }
        }
    }
}

/// Waits until every record handed to `producer` is delivered or has failed, at most
/// `timeout`, sending lingering records at once (see the module's documentation for why not
/// rdkafka's `flush`). The producer's delivery reports must be served meanwhile by another
/// thread (a [`PolledProducer`]'s): librdkafka counts a reported record as in flight until
/// its report is served, and with `delivery.report.only.error` it still reports each failed
/// delivery.
pub fn flush_in_flight<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> KafkaResult<()> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the live client's, borrowed from `producer` for the call (it is
    // destroyed only when the producer is dropped); librdkafka documents `rd_kafka_flush` as
    // callable from any thread.
    let code = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), millis) };
    match RDKafkaErrorCode::from(code) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::Flush(code)),
    }
}
