//! The connection to the Kafka cluster, one for every client: the worker's consumer and
//! producer, `dlq replay`, `demo --brokers`, `bench --brokers` and `check --connect` all build
//! their librdkafka settings here from the same `[kafka]` section (`brokers`, then
//! `[kafka.properties]`, then the consumer's or producer's own properties), so a config that
//! connects for one connects for all.
//!
//! It also owns what the clients say about the connection: librdkafka's error callback
//! ([`ConnectionWatch`]) turns an authentication failure, a refused certificate or unreachable
//! brokers into one ERROR line naming the broker and the kind of failure, a counter by kind,
//! and `/readyz` 503 until the cluster answers again. Property values are never echoed: a
//! refused property is named, and its value scrubbed from librdkafka's message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// A producer that reports its connection failures.
pub type Producer = rdkafka::producer::FutureProducer<ConnectionWatch>;

/// The settings every client shares: `bootstrap.servers` and `[kafka.properties]`.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    config
}

/// [`client_config`] with `ours` set first (the caller's defaults), then the shared and the
/// consumer's own properties, which win.
pub fn consumer_config(kafka: &KafkaConfig, ours: &[(&str, &str)]) -> ClientConfig {
    with_properties(kafka, ours, &kafka.consumer_properties)
}

/// [`client_config`] with `ours` set first, then the shared and the producer's own
/// properties, which win.
pub fn producer_config(kafka: &KafkaConfig, ours: &[(&str, &str)]) -> ClientConfig {
    with_properties(kafka, ours, &kafka.producer_properties)
}

fn with_properties(
    kafka: &KafkaConfig,
    ours: &[(&str, &str)],
    own: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    // A default of ours that the config sets under another name (`delivery.timeout.ms` for
    // `message.timeout.ms`) is left out: librdkafka would apply both, in an order that changes
    // from one run to the next.
    let theirs: Vec<&str> = kafka
        .properties
        .keys()
        .chain(own.keys())
        .map(|name| canonical_property(name))
        .collect();
    for (name, value) in ours {
        if !theirs.contains(&canonical_property(name)) {
            config.set(*name, *value);
        }
    }
    for (name, value) in kafka.properties.iter().chain(own) {
        config.set(name, value);
    }
    config
}

/// librdkafka's aliases: a name and the property it sets.
const PROPERTY_ALIASES: &[(&str, &str)] = &[
    ("bootstrap.servers", "metadata.broker.list"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
    ("sasl.mechanism", "sasl.mechanisms"),
    (
        "sasl.oauthbearer.client.credentials.client.id",
        "sasl.oauthbearer.client.id",
    ),
    (
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.client.secret",
    ),
    ("max.partition.fetch.bytes", "fetch.message.max.bytes"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("retries", "message.send.max.retries"),
    ("compression.type", "compression.codec"),
    ("acks", "request.required.acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
];

/// The property a librdkafka name sets: without the `topic.` prefix librdkafka accepts on a
/// topic's properties, and through its aliases (`acks` sets `request.required.acks`).
pub fn canonical_property(name: &str) -> &str {
    let name = name.strip_prefix("topic.").unwrap_or(name);
    PROPERTY_ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, target)| target)
}

/// librdkafka's message about a property, with the value scrubbed (librdkafka quotes values
/// it refuses; a mistyped name may carry a password).
pub fn scrub(message: &str, value: &str) -> String {
    if value.is_empty() {
        message.to_owned()
    } else {
        message.replace(value, "***")
    }
}

/// Kinds of connection failure, as counted in `pseudonymizer_connection_errors_total{kind}`:
/// one of [`crate::metrics::CONNECTION_ERROR_KINDS`], or `other` (logged, not counted).
pub fn failure_kind(code: RDKafkaErrorCode, reason: &str) -> &'static str {
    use RDKafkaErrorCode as C;
    match code {
        C::Authentication | C::SaslAuthenticationFailed => "authentication",
        C::UnsupportedSASLMechanism | C::IllegalSASLState => "sasl-mechanism",
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => "authorization",
        C::SSL => "tls",
        _ if reason.contains("SSL") || reason.contains("certificate") => "tls",
        C::AllBrokersDown => "all-brokers-down",
        C::BrokerTransportFailure | C::Resolve => "transport",
        _ => "other",
    }
}

/// Receives librdkafka's errors for one client and reports connection failures.
pub struct ConnectionWatch {
    metrics: Option<Arc<Metrics>>,
    /// "consumer", "producer", … for the log line.
    client: &'static str,
    /// Milliseconds since `started` of the last report, for rate-limiting repeats.
    last_report_ms: AtomicU64,
    started: Instant,
    /// The last failure (kind, librdkafka's reason), for `check --connect`.
    last_failure: std::sync::Mutex<Option<(&'static str, String)>>,
    /// As a producer's context: why the first record since the last
    /// [`Self::take_failed_delivery`] could not be delivered (librdkafka's error only, never
    /// the record).
    failed_delivery: std::sync::Mutex<Option<String>>,
}

/// The same failure is logged again at most this often (librdkafka retries every second or so).
const REPEAT_REPORT: Duration = Duration::from_secs(30);

impl ConnectionWatch {
    pub fn new(client: &'static str, metrics: Option<Arc<Metrics>>) -> Self {
        ConnectionWatch {
            metrics,
            client,
            last_report_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            last_failure: std::sync::Mutex::new(None),
            failed_delivery: std::sync::Mutex::new(None),
        }
    }

    /// Why a record produced through this context could not be delivered (the first such
    /// since the last call), if one could not.
    pub fn take_failed_delivery(&self) -> Option<String> {
        self.failed_delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The last connection failure reported, if any.
    pub fn last_failure(&self) -> Option<(&'static str, String)> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reports one error from librdkafka's error callback.
    pub fn report(&self, error: &KafkaError, reason: &str) {
        let code = match error {
            KafkaError::Global(code) => *code,
            other => other.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
        };
        let kind = failure_kind(code, reason);
        if kind != "other" {
            *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((kind, reason.to_owned()));
        }
        if let Some(metrics) = &self.metrics {
            metrics.connection_errors.with_label_values(&[kind]).inc();
            if kind != "other" {
                metrics.set_connection_failing(true);
            }
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_report_ms.load(Ordering::Relaxed);
        let repeat =
            last != u64::MAX && now.saturating_sub(last) < REPEAT_REPORT.as_millis() as u64;
        if kind == "other" {
            tracing::warn!(client = self.client, kind, reason, "kafka client error");
        } else if !repeat {
            self.last_report_ms.store(now, Ordering::Relaxed);
            tracing::error!(
                client = self.client,
                kind,
                reason,
                "cannot connect to the Kafka cluster ({kind}); retrying with backoff, nothing is \
                 consumed meanwhile (readyz answers 503)"
            );
        }
    }
}

impl ClientContext for ConnectionWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        self.report(&error, reason);
    }
}

/// The consumers of `dlq replay` and `check --connect` need no rebalance hooks.
impl rdkafka::consumer::ConsumerContext for ConnectionWatch {}

/// The exactly-once producer needs no report of a delivered record: a record that was not
/// delivered fails its transaction's commit. Why it was not is kept, for the worker to say.
impl rdkafka::producer::ProducerContext for ConnectionWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        let Err((error, _)) = result else { return };
        // A record purged from the queue (an aborted transaction's) is a consequence, not a
        // reason.
        let purged = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
        );
        if !purged {
            self.failed_delivery
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| error.to_string());
        }
    }
}

/// What `check --connect` learned: each named topic's partition count (`None`: missing).
pub type TopicReport = Vec<(String, Option<usize>)>;

/// Connects as the worker's consumer would and asks the cluster for its metadata: the brokers
/// it answers with and each of `topics`. A failure names its kind and librdkafka's reason.
pub fn probe(
    kafka: &KafkaConfig,
    topics: &[&str],
    timeout: Duration,
) -> Result<(usize, TopicReport), String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer<ConnectionWatch> = consumer_config(kafka, &[])
        .create_with_context(ConnectionWatch::new("check", None))
        .map_err(|e| format!("the client cannot be made: {e}"))?;
    match consumer.fetch_metadata(None, timeout) {
        Ok(metadata) => {
            let report = topics
                .iter()
                .map(|name| {
                    let partitions = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == *name && t.error().is_none())
                        .map(|t| t.partitions().len());
                    (name.to_string(), partitions)
                })
                .collect();
            Ok((metadata.brokers().len(), report))
        }
        Err(e) => Err({
            // librdkafka's error events (why the metadata never came) are served by a poll.
            for _ in 0..10 {
                if consumer.context().last_failure().is_some() {
                    break;
                }
                let _ = consumer.poll(Duration::from_millis(100));
            }
            match consumer.context().last_failure() {
                Some((kind, reason)) => format!("{kind}: {reason}"),
                None => format!("no answer within {timeout:?}: {e}"),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart() {
        assert_eq!(
            failure_kind(
                RDKafkaErrorCode::Authentication,
                "SASL authentication error"
            ),
            "authentication"
        );
        assert_eq!(
            failure_kind(
                RDKafkaErrorCode::BrokerTransportFailure,
                "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: certificate verify failed"
            ),
            "tls"
        );
        assert_eq!(
            failure_kind(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down"),
            "all-brokers-down"
        );
    }

    #[test]
    fn refused_values_are_scrubbed() {
        assert_eq!(
            scrub("Invalid value \"hunter2\" for property", "hunter2"),
            "Invalid value \"***\" for property"
        );
    }
}
