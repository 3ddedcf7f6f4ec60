//! The stream worker: consume raw records, transform, publish, and commit only what has been
//! delivered.
//!
//! - [`route`]: one raw record → its sanitized record or a dead-letter reason (pure);
//! - [`at_least_once`]: the default loop. Offsets are stored for commit
//!   (`enable.auto.offset.store=false`) only when the produced copy of a record has been
//!   acknowledged, never past an unacknowledged record of the same partition;
//! - [`deliveries`]: the at-least-once producer, whose delivery reports name their record by
//!   a number rather than a future per record;
//! - [`polled`]: the producers' polling thread (rdkafka's, without its idle spin);
//! - [`lanes`]: transform threads: records of different input partitions transformed and
//!   produced in parallel, each partition's in order;
//! - [`transactional`]: `exactly-once` mode, output and offsets in one Kafka transaction;
//! - [`health`]: lag, stalls, and records the broker deleted before they were read;
//! - [`resolve`]: with a schema registry, a new schema id → its route (or dead-letter reason).
//!
//! Both loops share [`Publisher`], which turns a consumed message into a producer record
//! (headers, key, dead-letter envelope) with one snapshot of the keys, so a record is never
//! half under old keys and half under new ones when the keyring is reloaded.

pub mod at_least_once;
pub mod deliveries;
pub mod health;
pub mod keywatch;
pub mod lanes;
pub mod polled;
pub mod replay;
pub mod resolve;
pub mod route;
pub mod subjects;
pub mod transactional;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::Message;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, DeliveryMode, KafkaConfig};
use crate::envelope;
use crate::metrics::Metrics;
use crate::registry::RegistryClient;
use crate::transform::{ActiveKeys, Engine};
use resolve::SchemaResolver;
use route::{DeadLetter, Resolution, Router};

/// The field paths a dead letter's value and key (header `dlq.key`) are sealed under: they
/// name the source topic, so a replay opens them only for the topic they came from.
pub use replay::{dlq_key_path, dlq_value_path};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    #[error("a record could not be delivered to {topic}: {reason}; its offset was not committed")]
    Delivery { topic: String, reason: String },
    #[error("partition {partition} of {topic} could not be rewound after an aborted transaction ({reason}); the worker stops rather than read past records it never published, and a restart reads them again from the last commit")]
    NotRewound {
        topic: String,
        partition: i32,
        reason: String,
    },
    #[error("{count} transactions in a row were refused, the last with: {reason}; none was committed, nor any offset of their records")]
    TransactionsRefused { count: u32, reason: String },
    #[error("fenced: another worker started with transactional_id {0:?}; this one stops (its open transaction is aborted, nothing it did not commit is visible)")]
    Fenced(String),
    #[error("shutdown took longer than {0:?}")]
    ShutdownTimeout(Duration),
    #[error("transform threads: {0}")]
    Threads(std::io::Error),
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("subject registry: {0}")]
    Subjects(String),
}

/// What the worker does to each record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Treatment {
    /// Decode, transform, encode: the product.
    #[default]
    Sanitize,
    /// Copy the value unchanged, same clients and settings: the benchmark's baseline only.
    PassThrough,
}

/// Counts of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub consumed: u64,
    pub published: u64,
    pub dead_lettered: HashMap<&'static str, u64>,
}

/// Everything a worker run needs besides the config.
pub struct Worker {
    pub engine: Arc<Engine>,
    /// The keys for new output; a new value (keyring reload) applies from the next record on.
    pub keys: watch::Receiver<Arc<ActiveKeys>>,
    pub metrics: Arc<Metrics>,
    pub treatment: Treatment,
}

impl Worker {
    /// Runs until `shutdown` turns true, then drains in-flight records, flushes and commits.
    pub async fn run(
        self,
        config: &Config,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Stats, WorkerError> {
        // Everything `check` checks, by the same function: nothing is consumed from a
        // config it would refuse.
        let keys = self.keys.borrow().clone();
        validate(config, Some(&*keys))?;
        let kafka = config
            .kafka
            .clone()
            .ok_or_else(|| ConfigError::Rules(vec!["[kafka] section is missing".into()]))?;
        let router = Router::from_config(config, &self.engine)?;
        self.metrics
            .export_counter(self.engine.phone().region_fallbacks());
        if let Some(listen) = &kafka.metrics_listen {
            let addr =
                crate::endpoint::serve(&self.metrics, listen).map_err(WorkerError::Metrics)?;
            tracing::info!(%addr, "metrics listening");
        }
        let resolver = match &config.registry {
            Some(registry) => Some(Arc::new(SchemaResolver {
                client: RegistryClient::new(registry)?,
                strategy: registry.subject_strategy,
            })),
            None => None,
        };
        if let (Some(resolver), Some(registry)) = (&resolver, &config.registry) {
            verify_pinned_ids(config, registry, &self.engine, &resolver.client)?;
        }
        let max_backoff = config
            .registry
            .as_ref()
            .map_or(Duration::from_secs(30), |r| {
                Duration::from_secs(r.max_backoff_secs)
            });
        // Read whole before anything is consumed: not ready until then.
        let subjects = subjects::start(
            config,
            keys.subject.clone(),
            &self.metrics,
            shutdown.clone(),
        )
        .await?;
        // One risk estimate per pipeline that asks for one, exported from the start.
        let risk = config
            .pipeline
            .iter()
            .map(|pipeline| {
                let risk = pipeline.risk.as_ref()?;
                let estimate = crate::risk::PipelineRisk::new(
                    risk.quasi_identifiers.clone(),
                    risk.k.unwrap_or(crate::risk::DEFAULT_K),
                    risk.window.unwrap_or(crate::risk::DEFAULT_WINDOW),
                );
                let name = [pipeline.name.as_str()];
                self.metrics
                    .risk_k
                    .with_label_values(&name)
                    .set(i64::from(estimate.window.k()));
                Some(RiskState {
                    estimate: std::sync::Mutex::new(estimate),
                    records: self.metrics.risk_window_records.with_label_values(&name),
                    below_k: self.metrics.risk_records_below_k.with_label_values(&name),
                    ratio: self.metrics.risk_below_k_ratio.with_label_values(&name),
                })
            })
            .collect();
        // The per-record counters, looked up once rather than by label for each record.
        let records_in = router
            .input_topics
            .iter()
            .map(|topic| {
                let counter = self.metrics.records_in.with_label_values(&[topic]);
                (topic.clone(), counter)
            })
            .collect();
        let records_out = (0..config.pipeline.len())
            .map(|index| {
                self.metrics
                    .records_out
                    .with_label_values(&[router.route_name(index)])
            })
            .collect();
        let publisher = Arc::new(Publisher {
            router: Arc::new(router),
            records_in,
            records_out,
            risk,
            subjects,
            resolver,
            max_backoff,
            kafka: kafka.clone(),
            worker: self,
        });
        match kafka.mode {
            DeliveryMode::AtLeastOnce => at_least_once::run(&publisher, shutdown).await,
            DeliveryMode::ExactlyOnce => transactional::run(&publisher, shutdown).await,
        }
    }
}

/// The one validation of a config for the stream worker: what `run` refuses before it
/// consumes anything, and exactly what `pseudonymizer check` reports (both call this). Needs
/// no network: the `[kafka]` section ([`kafka_problems`]: fields, numeric ranges, every
/// librdkafka property), the pipelines' stream settings ([`route::problems`]: topics, key
/// classes, schema ids, a dead-letter topic that is also an input topic), the metrics
/// address's form, and with `keys` the active encryption key that dead letters are sealed
/// with. Binding the metrics port and asking the registry stay with `run`. Every problem at
/// once, with no value read through a reference in any of them.
pub fn validate(config: &Config, keys: Option<&ActiveKeys>) -> Result<(), ConfigError> {
    let mut problems = route::problems(config);
    if let Some(kafka) = &config.kafka {
        problems.extend(kafka_problems(kafka));
    }
    if let Some(keys) = keys {
        if keys.encryption.is_none() {
            problems.push(
                "the keyring has no active encryption key, and the dead-letter topic needs one (each dead letter is sealed): add one with `pseudonymizer keys rotate --purpose encryption`"
                    .to_owned(),
            );
        }
        let registry = config
            .kafka
            .as_ref()
            .and_then(|k| k.subjects_topic.as_ref());
        if registry.is_some() && keys.subject.is_none() {
            problems.push(
                "[kafka] subjects_topic is set but the keyring has no active subject key: add one with `pseudonymizer keys rotate --purpose subject`"
                    .to_owned(),
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            path: config.source.clone(),
            problems: problems.iter().map(|p| config.redact(p)).collect(),
        })
    }
}

/// Whether `listen` is `host:port` (`0.0.0.0:9464`, `[::]:9464`, `localhost:9464`) with a port
/// from 0 to 65535. The name is not resolved here (that needs the network; `run` binds it).
fn listen_address_problem(listen: &str) -> Option<String> {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return None;
    }
    let bad = || {
        Some(format!(
            "[kafka] metrics_listen {} is not host:port with a port from 0 to 65535 (e.g. \"0.0.0.0:9464\")",
            crate::config::quote(listen)
        ))
    };
    let Some((host, port)) = listen.rsplit_once(':') else {
        return bad();
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok || port.parse::<u16>().is_err() {
        return bad();
    }
    None
}

/// Checks the `[kafka]` section without reaching a broker (part of [`validate`]).
pub fn check_kafka(kafka: &KafkaConfig) -> Result<(), ConfigError> {
    let problems = kafka_problems(kafka);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Kafka(problems))
    }
}

/// The problems of the `[kafka]` section: the fields the worker needs, every numeric setting's
/// range (docs/operations.md), the metrics address, and every librdkafka property (librdkafka
/// checks names and values when a client is made; made without brokers, it connects nowhere).
fn kafka_problems(kafka: &KafkaConfig) -> Vec<String> {
    use crate::config::{out_of_range, ranges};
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;
    let mut problems = Vec::new();
    for (name, value) in [
        ("brokers", &kafka.brokers),
        ("group_id", &kafka.group_id),
        ("dlq_topic", &kafka.dlq_topic),
    ] {
        if value.trim().is_empty() {
            problems.push(format!("[kafka] {name} is empty"));
        }
    }
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    for (name, value, range) in [
        (
            "max_in_flight",
            as_u64(kafka.max_in_flight),
            ranges::MAX_IN_FLIGHT,
        ),
        (
            "transform_threads",
            as_u64(kafka.transform_threads()),
            ranges::TRANSFORM_THREADS,
        ),
        (
            "max_record_bytes",
            as_u64(kafka.max_record_bytes),
            ranges::MAX_RECORD_BYTES,
        ),
        (
            "shutdown_timeout_secs",
            kafka.shutdown_timeout_secs,
            ranges::SHUTDOWN_TIMEOUT_SECS,
        ),
        (
            "stall_timeout_secs",
            kafka.stall_timeout_secs,
            ranges::STALL_TIMEOUT_SECS,
        ),
        (
            "transaction_max_records",
            as_u64(kafka.transaction_max_records),
            ranges::TRANSACTION_MAX_RECORDS,
        ),
        (
            "transaction_max_ms",
            kafka.transaction_max_ms,
            ranges::TRANSACTION_MAX_MS,
        ),
    ] {
        problems.extend(out_of_range("[kafka]", name, value, range));
    }
    match (&kafka.transactional_id, kafka.mode) {
        (Some(id), _) if id.trim().is_empty() => {
            problems.push("[kafka] transactional_id is empty".into())
        }
        (None, DeliveryMode::ExactlyOnce) => {
            problems.push("[kafka] exactly-once mode needs transactional_id".into())
        }
        _ => {}
    }
    if let Some(listen) = &kafka.metrics_listen {
        problems.extend(listen_address_problem(listen));
    }
    problems.extend(property_problems(kafka));
    // Each property on its own first, so every bad one is named (librdkafka stops at the
    // first); a client without a group stays idle, so nothing connects.
    let alone = |consumer: bool, name: &str, value: &str| -> Option<String> {
        // librdkafka checks a name and its value when it is set, before any client exists;
        // what depends on other properties is checked below, with the whole settings.
        let mut config = ClientConfig::new();
        config.set(name, value);
        let client = if consumer { "consumer" } else { "producer" };
        let made = config.create_native_config().err();
        made.map(|e| {
            format!(
                "[kafka] {client} property {name:?}: {}",
                crate::connect::scrub(&e.to_string(), value)
            )
        })
    };
    // (A shared property is checked once: a name or value librdkafka refuses is refused by
    // either client.)
    for (name, value) in kafka.properties.iter().chain(&kafka.consumer_properties) {
        problems.extend(alone(true, name, value));
    }
    for (name, value) in &kafka.producer_properties {
        problems.extend(alone(false, name, value));
    }
    // Then the whole settings of each client, for what depends on several properties.
    if problems.is_empty() {
        let scrub_all = |e: rdkafka::error::KafkaError| {
            let all = kafka
                .properties
                .values()
                .chain(kafka.consumer_properties.values())
                .chain(kafka.producer_properties.values());
            all.fold(e.to_string(), |message, value| {
                crate::connect::scrub(&message, value)
            })
        };
        let (mut consumer, mut producer) = client_config(kafka);
        consumer.remove("group.id");
        // Without brokers a client made to check its settings connects nowhere (with them,
        // librdkafka starts connecting the moment it is made: `check` without --connect did).
        consumer.remove("bootstrap.servers");
        producer.remove("bootstrap.servers");
        if let Err(e) = consumer.create::<BaseConsumer>() {
            problems.push(format!("[kafka] consumer settings: {}", scrub_all(e)));
        }
        if let Err(e) = producer.create::<BaseProducer>() {
            problems.push(format!("[kafka] producer settings: {}", scrub_all(e)));
        }
    }
    problems
}

/// The config's librdkafka properties that would take away a guarantee (one the worker owns,
/// by any of its names) or apply in an order that changes from run to run (two names of one
/// property for one client). `check` (so `run`) and `dlq replay` refuse them.
pub fn property_problems(kafka: &KafkaConfig) -> Vec<String> {
    let mut problems = Vec::new();
    // The worker's guarantees are librdkafka settings too: none may be overridden.
    let sections = [
        ("[kafka.properties]", &kafka.properties),
        ("[kafka.consumer_properties]", &kafka.consumer_properties),
        ("[kafka.producer_properties]", &kafka.producer_properties),
    ];
    for (section, properties) in sections {
        for name in properties.keys() {
            let property = crate::connect::canonical_property(name);
            let owned = OWNED_PROPERTIES
                .iter()
                .find(|(owned, _)| crate::connect::canonical_property(owned) == property);
            if let Some((_, why)) = owned {
                problems.push(format!(
                    "{section} {name:?} is the worker's own setting and cannot be overridden: {why}"
                ));
            }
        }
    }
    // Two names of one property for one client (`linger.ms` and `queue.buffering.max.ms`,
    // `acks` and `topic.acks`): librdkafka would apply both in an order that changes from one
    // run to the next.
    for (client, own) in [
        ("consumer", &kafka.consumer_properties),
        ("producer", &kafka.producer_properties),
    ] {
        let names: Vec<&String> = kafka.properties.keys().chain(own.keys()).collect();
        for (i, name) in names.iter().enumerate() {
            let property = crate::connect::canonical_property(name);
            let earlier = names[..i].iter().find(|other| {
                *other != name && crate::connect::canonical_property(other) == property
            });
            if let Some(other) = earlier {
                problems.push(format!(
                    "[kafka] {other:?} and {name:?} are two names of the {client}'s property {property:?}: set it once"
                ));
            }
        }
    }
    problems
}

/// librdkafka properties that carry the worker's guarantees: it sets them itself, and `check`
/// (so `run`) refuses a config whose properties name one, by any of its names
/// ([`crate::connect::canonical_property`]: `topic.acks`, `request.required.acks`), with why.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set [kafka] brokers"),
    ("group.id", "set [kafka] group_id"),
    (
        "offset.store.method",
        "offsets are committed to the consumer group, on the brokers",
    ),
    ("auto.offset.reset", "set [kafka] auto_offset_reset"),
    (
        "enable.auto.commit",
        "offsets are committed only past delivered records (or in the transaction that published them)",
    ),
    (
        "auto.commit.enable",
        "offsets are committed only past delivered records (or in the transaction that published them)",
    ),
    (
        "enable.auto.offset.store",
        "an offset is stored only once its record's copy is delivered; stored on consumption, a crash would lose records",
    ),
    (
        "isolation.level",
        "only committed records are read (exactly-once publishes nothing an aborted transaction wrote)",
    ),
    (
        "enable.idempotence",
        "a retried send must never duplicate or reorder a partition's records",
    ),
    (
        "acks",
        "a record counts as delivered only once every in-sync replica has it (acks=all)",
    ),
    ("transactional.id", "set [kafka] transactional_id"),
    (
        "delivery.report.only.error",
        "offsets are stored from delivery reports: without them no offset would ever be stored",
    ),
];

/// The librdkafka settings of the worker's consumer and producer: the shared connection
/// ([`crate::connect`]) with the worker's own settings, which the config's properties override.
pub(crate) fn client_config(kafka: &KafkaConfig) -> (ClientConfig, ClientConfig) {
    let mut consumer: Vec<(&str, &str)> = vec![
        ("group.id", &kafka.group_id),
        ("auto.offset.reset", kafka.auto_offset_reset.as_str()),
        // Bounded memory (docs/deploy.md, "Sizing"): at most 16 MiB of prefetched records and
        // 8 MiB per fetch response, instead of librdkafka's 64 MiB and 50 MiB.
        ("queued.max.messages.kbytes", "16384"),
        ("fetch.max.bytes", "8388608"),
    ];
    let mut producer: Vec<(&str, &str)> = vec![
        ("enable.idempotence", "true"),
        ("acks", "all"),
        // The Java clients' partitioner (murmur2 of the key), not librdkafka's CRC32: a key
        // lands where a Kafka Streams, ksqlDB or Connect producer would put it, so analytics can
        // join a sanitized topic co-partitioned with their own.
        ("partitioner", "murmur2_random"),
        ("message.timeout.ms", "300000"),
        // Bounded memory: at most 32 MiB of records waiting to be sent, instead of librdkafka's
        // 1 GiB; a full queue holds the worker back (backpressure), it loses nothing.
        ("queue.buffering.max.kbytes", "32768"),
    ];
    match kafka.mode {
        DeliveryMode::AtLeastOnce => consumer.extend([
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.commit.interval.ms", "1000"),
        ]),
        DeliveryMode::ExactlyOnce => {
            consumer.extend([
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
            ]);
            // librdkafka requires message.timeout.ms <= transaction.timeout.ms (60 s).
            producer.push(("message.timeout.ms", "60000"));
            // A committed transaction has every record delivered: no success report is used,
            // so none is made (a delivery report per record cost the producer's polling thread
            // about 0.8 µs of CPU per event). A failed delivery is still reported, and fails
            // the commit.
            producer.push(("delivery.report.only.error", "true"));
            if let Some(id) = &kafka.transactional_id {
                producer.push(("transactional.id", id));
            }
        }
    }
    (
        crate::connect::consumer_config(kafka, &consumer),
        crate::connect::producer_config(kafka, &producer),
    )
}

/// A record ready for the producer.
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub key: Option<String>,
    /// `None` once handed to the producer (a refused send hands them back).
    pub headers: Option<OwnedHeaders>,
    /// The pipeline it belongs to, or why it was dead-lettered.
    pub kind: Result<usize, DeadLetter>,
    /// Nothing to send: its pipeline drops a withheld subject's records (`erased = "drop"`).
    /// Its offset is committed like a delivered record's.
    pub dropped: bool,
}

/// A pipeline's re-identification risk estimate and its exported gauges.
struct RiskState {
    estimate: std::sync::Mutex<crate::risk::PipelineRisk>,
    records: prometheus::IntGauge,
    below_k: prometheus::IntGauge,
    ratio: prometheus::Gauge,
}

/// Turns consumed messages into producer records.
pub struct Publisher {
    router: Arc<Router>,
    /// `pseudonymizer_records_in_total` of each input topic.
    records_in: HashMap<String, prometheus::IntCounter>,
    /// `pseudonymizer_records_out_total` of each pipeline, by index.
    records_out: Vec<prometheus::IntCounter>,
    /// Each pipeline's re-identification risk estimate, by pipeline index (`None`: it asks
    /// for none).
    risk: Vec<Option<RiskState>>,
    /// The subject registry, when the config names one.
    subjects: Option<Arc<subjects::Subjects>>,
    /// With a schema registry: resolves schema ids seen for the first time.
    resolver: Option<Arc<SchemaResolver>>,
    max_backoff: Duration,
    kafka: KafkaConfig,
    worker: Worker,
}

impl Publisher {
    fn metrics(&self) -> &Metrics {
        &self.worker.metrics
    }

    /// Pipeline name by index (for metrics labels).
    fn pipeline_name(&self, index: usize) -> &str {
        self.router.route_name(index)
    }

    /// Whether `value` carries a schema id that must be asked of the registry before the record
    /// can be prepared (exactly-once mode commits its open transaction before such a wait).
    fn needs_registry(&self, topic: &str, value: Option<&[u8]>) -> bool {
        self.resolver.is_some() && self.router.unresolved_on(topic, value).is_some()
    }

    /// With a registry, makes sure the router knows the schema id of `value` before it is
    /// prepared: asks the registry, and while it cannot be reached waits with backoff (the
    /// record is held, `/readyz` is 503). Returns false if `shutdown` came first; the record
    /// is then left unprocessed and its offset unstored. (Exactly-once mode waits here; the
    /// at-least-once loop holds only the waiting record's partition, with [`Publisher::try_resolve`]
    /// and [`Publisher::resolve_in_background`].)
    async fn resolve(
        &self,
        topic: &str,
        value: Option<&[u8]>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let (Some(resolver), Some(id)) = (&self.resolver, self.router.unresolved_on(topic, value))
        else {
            return true;
        };
        let metrics = &self.worker.metrics;
        let mut backoff = Duration::from_millis(250);
        let mut failures = 0u32;
        loop {
            match resolve_attempt(resolver, &self.router, metrics, id).await {
                Ok(()) => {
                    registry_back(metrics, id, failures);
                    return true;
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(schema_id = id, error = %error, retry_in_ms = backoff.as_millis() as u64, "schema registry unavailable; holding the record (nothing is dead-lettered for this)");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    /// The schema id of `value` if the registry must be asked about it first.
    fn unresolved_id(&self, topic: &str, value: Option<&[u8]>) -> Option<u32> {
        self.resolver.as_ref()?;
        self.router.unresolved_on(topic, value)
    }

    /// One attempt to resolve schema id `id`, waited for at most [`FIRST_ATTEMPT`]; `false`
    /// when the registry could not be reached in that time (the caller holds the record's
    /// partition and resolves the id in the background; an attempt still running finishes
    /// there, and its answer is kept). A registry that times out never holds the other
    /// partitions for longer than that.
    async fn try_resolve(&self, id: u32) -> bool {
        let Some(resolver) = &self.resolver else {
            return true;
        };
        let metrics = &self.worker.metrics;
        let attempt = resolve_attempt(resolver, &self.router, metrics, id);
        match tokio::time::timeout(FIRST_ATTEMPT, attempt).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(schema_id = id, error = %error, "schema registry unavailable; holding this record's partition (the others go on; nothing is dead-lettered for this)");
                false
            }
            Err(_) => {
                metrics.set_registry_unavailable(true);
                tracing::warn!(schema_id = id, waited_ms = FIRST_ATTEMPT.as_millis() as u64, "schema registry slow to answer; holding this record's partition (the others go on)");
                false
            }
        }
    }

    /// Keeps asking the registry about `id` with backoff until it answers (then sends `id` on
    /// `resolved`) or a shutdown comes.
    fn resolve_in_background(
        &self,
        id: u32,
        resolved: tokio::sync::mpsc::UnboundedSender<(u32, u32)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(resolver) = self.resolver.clone() else {
            return;
        };
        let (router, metrics, max_backoff) = (
            self.router.clone(),
            self.worker.metrics.clone(),
            self.max_backoff,
        );
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            let mut failures = 1u32;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match resolve_attempt(&resolver, &router, &metrics, id).await {
                    Ok(()) => {
                        let _ = resolved.send((id, failures));
                        return;
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(schema_id = id, error = %error, retry_in_ms = backoff.as_millis() as u64, "schema registry still unavailable; its records' partition stays held");
                    }
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        });
    }

    /// Builds the outgoing record of one consumed message, with one snapshot of the keys.
    /// `message` is the consumer's own (the loop transforms) or a copy of it (a transform
    /// thread, [`lanes`]).
    fn prepare<M: Message>(&self, message: &M, out: &mut Vec<u8>) -> Outgoing {
        let started = Instant::now();
        let keys = self.worker.keys.borrow().clone();
        match self.records_in.get(message.topic()) {
            Some(counter) => counter.inc(),
            None => self
                .metrics()
                .records_in
                .with_label_values(&[message.topic()])
                .inc(),
        }
        let (outcome, withheld) = match (self.worker.treatment, &self.subjects) {
            (Treatment::Sanitize, Some(subjects)) => subjects.with_view(|view| {
                self.router.process_on(
                    message.topic(),
                    &self.worker.engine,
                    &keys,
                    Some(view),
                    message.key(),
                    message.payload(),
                    out,
                )
            }),
            (Treatment::Sanitize, None) => self.router.process_on(
                message.topic(),
                &self.worker.engine,
                &keys,
                None,
                message.key(),
                message.payload(),
                out,
            ),
            (Treatment::PassThrough, _) => (
                self.router
                    .pass_through_on(message.topic(), message.key(), message.payload(), out),
                false,
            ),
        };
        // Only a withheld subject's record is dropped, and only where its pipeline says so.
        let dropped = withheld
            && matches!(&outcome, Ok(output) if output.route.subject_policy().withheld == crate::subjects::WithheldAction::Drop);
        if withheld {
            let counted = match (&outcome, dropped) {
                (_, true) => "dropped",
                (Ok(_), false) => "published",
                (Err(_), false) => "dead-lettered",
            };
            self.metrics()
                .subject_records
                .with_label_values(&[counted])
                .inc();
        }
        let outgoing = match outcome {
            Ok(output) if dropped => Outgoing {
                topic: output.route.output_topic().to_owned(),
                payload: Vec::new(),
                key: None,
                headers: None,
                kind: Ok(output.index),
                dropped: true,
            },
            Ok(output) => {
                // Pass-through (the bench's baseline) publishes raw bytes: nothing to measure.
                if matches!(self.worker.treatment, Treatment::Sanitize) {
                    self.observe_risk(&output, out);
                }
                let mut headers = key_headers(&keys);
                if let Some(name) = output.route.schema_name() {
                    headers = headers.insert(Header {
                        key: "pseudonymizer.schema",
                        value: Some(name),
                    });
                }
                // (Reading a record's headers parses them: only when some are copied.)
                let input_headers = match self.kafka.header_allowlist.is_empty() {
                    true => None,
                    false => message.headers(),
                };
                if let Some(input) = input_headers {
                    for h in input.iter() {
                        if self.kafka.header_allowlist.iter().any(|a| a == h.key) {
                            headers = headers.insert(Header {
                                key: h.key,
                                value: h.value,
                            });
                        }
                    }
                }
                Outgoing {
                    topic: output.route.output_topic().to_owned(),
                    payload: out.clone(),
                    key: output.key,
                    headers: Some(headers),
                    kind: Ok(output.index),
                    dropped: false,
                }
            }
            Err(reason) => self.dead_letter(message, reason, &keys, withheld),
        };
        self.metrics()
            .transform_seconds
            .observe(started.elapsed().as_secs_f64());
        outgoing
    }

    /// Adds a sanitized record (`framed`: the 5-byte framing, then its Avro) to its
    /// pipeline's risk estimate, if it has one, and exports the estimate. Counted when the
    /// record is made ready to publish (its bytes are at hand only here): a record of an
    /// aborted transaction, read again, is counted again (docs/security.md says so).
    fn observe_risk(&self, output: &route::Output, framed: &[u8]) {
        let Some(Some(state)) = self.risk.get(output.index) else {
            return;
        };
        let Ok(mut estimate) = state.estimate.lock() else {
            return;
        };
        match &output.route {
            crate::worker::route::Target::Avro(route) => {
                let Some(avro) = framed.get(5..) else { return };
                estimate.observe(&route.plan, route.output_schema_id, avro);
            }
            // Schemaless JSON has no framing: `framed` is the object itself.
            crate::worker::route::Target::Json(route) => {
                let json = match route.output_schema_id {
                    Some(_) => route::unframe(framed).map(|(_, json)| json),
                    None => Some(framed),
                };
                let Some(json) = json else { return };
                match &route.proto {
                    // A protobuf record is read back as its JSON mapping (the walk's output).
                    Some(contract) => {
                        let Some(json) =
                            crate::transform::protobuf::published_json(&contract.output, json)
                        else {
                            return;
                        };
                        estimate.observe_json(&json)
                    }
                    None => estimate.observe_json(json),
                }
            }
        }
        state.records.set(estimate.window.records() as i64);
        state.below_k.set(estimate.window.below_k() as i64);
        state.ratio.set(estimate.window.ratio());
    }

    /// The dead-letter record: original bytes sealed, reason and source in headers, no key.
    /// A record found to carry a withheld subject before it failed keeps nothing of itself:
    /// no value, no key, and the header `dlq.withheld: subject` (docs/formats.md §5).
    fn dead_letter<M: Message>(
        &self,
        message: &M,
        reason: DeadLetter,
        keys: &ActiveKeys,
        withheld: bool,
    ) -> Outgoing {
        let seal_key = keys
            .encryption
            .as_deref()
            .expect("checked at start: an encryption key is active");
        let original = message.payload().unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string();
        let mut headers = OwnedHeaders::new();
        let mut sealed = Vec::new();
        if withheld {
            headers = headers.insert(Header {
                key: "dlq.withheld",
                value: Some("subject"),
            });
        } else {
            sealed.reserve(envelope::sealed_len(seal_key, original.len()));
            envelope::seal_into(
                seal_key,
                &dlq_value_path(message.topic()),
                original,
                &mut sealed,
            );
            if let Some(key) = message.key() {
                let mut sealed_key = Vec::with_capacity(envelope::sealed_len(seal_key, key.len()));
                envelope::seal_into(
                    seal_key,
                    &dlq_key_path(message.topic()),
                    key,
                    &mut sealed_key,
                );
                headers = headers.insert(Header {
                    key: "dlq.key",
                    value: Some(&sealed_key),
                });
            }
        }
        let mut headers = headers
            .insert(Header {
                key: "dlq.reason",
                value: Some(reason.code()),
            })
            .insert(Header {
                key: "dlq.source-topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "dlq.source-partition",
                value: Some(&message.partition().to_string()),
            })
            .insert(Header {
                key: "dlq.source-offset",
                value: Some(&message.offset().to_string()),
            })
            .insert(Header {
                key: "dlq.time-ms",
                value: Some(&now),
            });
        if !withheld {
            headers = headers.insert(Header {
                key: "pseudonymizer.encryption-key",
                value: Some(seal_key.id()),
            });
        }
        tracing::debug!(
            reason = reason.code(),
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "dead-lettered"
        );
        Outgoing {
            topic: self.kafka.dlq_topic.clone(),
            payload: sealed,
            key: None,
            headers: Some(headers),
            kind: Err(reason),
            dropped: false,
        }
    }

    /// Counts an acknowledged record.
    fn acknowledged(&self, kind: Result<usize, DeadLetter>, stats: &mut Stats) {
        match kind {
            Ok(index) => {
                stats.published += 1;
                match self.records_out.get(index) {
                    Some(counter) => counter.inc(),
                    None => self
                        .metrics()
                        .records_out
                        .with_label_values(&[self.pipeline_name(index)])
                        .inc(),
                }
            }
            Err(reason) => {
                *stats.dead_lettered.entry(reason.code()).or_default() += 1;
                self.metrics()
                    .dead_lettered
                    .with_label_values(&[reason.code()])
                    .inc();
            }
        }
    }

    /// Waits until every topic the worker reads or writes exists: managed clusters do not
    /// create topics on first use. A missing one is logged at error level by name, `/readyz`
    /// stays 503, and the check is repeated (5 s, doubling to a minute) rather than exiting
    /// into a crash loop. Returns `false` if a shutdown came first. A cluster that cannot be
    /// reached is not waited for here: the connection reporting covers it.
    async fn wait_for_topics(
        &self,
        consumer: &Arc<health::WorkerConsumer>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut wanted = self.router.input_topics.clone();
        wanted.extend(self.router.output_topics());
        wanted.push(self.kafka.dlq_topic.clone());
        let mut wait = Duration::from_secs(5);
        loop {
            let probe = consumer.clone();
            let metadata = tokio::task::spawn_blocking(move || {
                probe.fetch_metadata(None, Duration::from_secs(10))
            })
            .await;
            let Ok(Ok(metadata)) = metadata else {
                return true;
            };
            let existing: Vec<&str> = metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| t.name())
                .collect();
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|t| !existing.contains(&t.as_str()))
                .collect();
            if missing.is_empty() {
                return true;
            }
            self.metrics().set_ready(false);
            tracing::error!(
                ?missing,
                retry_in_secs = wait.as_secs(),
                "topics the worker reads or writes do not exist: create them first (docs/deploy.md, \"Topics and ACLs\"); not ready, retrying"
            );
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }

    fn subscribe<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &StreamConsumer<C>,
    ) -> Result<(), WorkerError> {
        let topics: Vec<&str> = self
            .router
            .input_topics
            .iter()
            .map(String::as_str)
            .collect();
        consumer.subscribe(&topics)?;
        let keys = self.worker.keys.borrow().clone();
        self.metrics().set_active_keys(
            keys.pseudonym.as_ref().map(|k| k.id()),
            keys.encryption.as_ref(),
        );
        self.metrics().set_ready(true);
        tracing::info!(group = %self.kafka.group_id, ?topics, mode = ?self.kafka.mode, pseudonym_key = keys.pseudonym.as_ref().map(|k| k.id()), encryption_key = keys.encryption.as_ref().map(|k| k.id()), "worker subscribed");
        Ok(())
    }
}

/// The most records both loops take from the fetched queue in a row (without going through
/// `select!`) before they listen for a shutdown, a deadline or a resolved schema id again.
const RUN_LENGTH: usize = 256;

/// How long the consume loop waits for the first answer about a new schema id before it holds
/// that record's partition and lets the others go on.
const FIRST_ATTEMPT: Duration = Duration::from_millis(500);

/// One request to resolve schema id `id` (off the async threads); on an answer the router
/// knows the id. A registry that cannot be reached is counted and flagged (`/readyz` 503).
async fn resolve_attempt(
    resolver: &Arc<SchemaResolver>,
    router: &Arc<Router>,
    metrics: &Arc<Metrics>,
    id: u32,
) -> Result<(), String> {
    let (resolver, task_router, task_metrics) = (resolver.clone(), router.clone(), metrics.clone());
    let answer =
        tokio::task::spawn_blocking(move || resolver.resolve(&task_router, &task_metrics, id))
            .await;
    let outcome = match answer {
        Ok(outcome) => outcome.map_err(|e| e.to_string()),
        // A schema that makes a parser or the compiler panic must not hold the worker
        // forever: its records are dead-lettered like any unreadable schema.
        Err(e) if e.is_panic() => {
            tracing::error!(
                schema_id = id,
                "resolving this schema id panicked; its records are dead-lettered as bad-schema"
            );
            Ok(Resolution::Refused(DeadLetter::BadSchema))
        }
        Err(e) => Err(format!("the registry request failed: {e}")),
    };
    match outcome {
        Ok(resolution) => {
            router.insert(id, resolution);
            Ok(())
        }
        Err(error) => {
            metrics.registry_errors.inc();
            metrics.set_registry_unavailable(true);
            Err(error)
        }
    }
}

/// Says that the registry answers again after `failures` failed attempts for `id`, and clears
/// the unavailable flag.
fn registry_back(metrics: &Metrics, id: u32, failures: u32) {
    metrics.set_registry_unavailable(false);
    if failures > 0 {
        tracing::info!(
            schema_id = id,
            failed_attempts = failures,
            "schema registry answers again; the held records go on"
        );
    }
}

/// With a registry, a pinned `output_schema_id` must be the id of the pipeline's derived schema
/// under its output subject; otherwise sanitized records would name a schema that readers
/// cannot find, or a different one. Refuses the start with what to do. (A registry that cannot
/// be reached is not waited for here: the start fails and says so.)
fn verify_pinned_ids(
    config: &Config,
    registry: &crate::config::RegistryConfig,
    engine: &Engine,
    client: &RegistryClient,
) -> Result<(), WorkerError> {
    // Each pinned pipeline's derived schema: (pipeline, output name, text, registry type).
    let avro =
        config
            .avro_pipelines()
            .zip(engine.plans())
            .filter_map(|(pipeline, plan)| match &plan.output {
                apache_avro::Schema::Record(r) => Some((
                    pipeline,
                    r.name.fullname(None),
                    plan.output_json.to_string(),
                    "AVRO",
                )),
                _ => None,
            });
    let json = config
        .pipeline
        .iter()
        .enumerate()
        .filter_map(|(index, pipeline)| {
            let contract = engine.json_schema(index)?;
            Some((
                pipeline,
                contract.input.output_title(),
                contract.output.to_string(),
                "JSON",
            ))
        });
    let proto = config
        .pipeline
        .iter()
        .enumerate()
        .filter_map(|(index, pipeline)| {
            let contract = engine.proto(index)?;
            Some((
                pipeline,
                contract.output_name().to_owned(),
                contract.output_text.clone(),
                "PROTOBUF",
            ))
        });
    let mut problems = Vec::new();
    for (pipeline, output_name, schema, schema_type) in avro.chain(json).chain(proto) {
        let (Some(pinned), Some(topic)) = (pipeline.output_schema_id, &pipeline.output_topic)
        else {
            continue;
        };
        let subject = registry.subject_strategy.subject(topic, &output_name);
        match client.lookup_as(&subject, &schema, schema_type)? {
            Some(id) if id == pinned => {}
            Some(id) => problems.push(format!(
                "[{}] output_schema_id {pinned} is pinned, but the derived schema is registered under {subject} as id {id}: pin {id}, or remove output_schema_id and the worker registers and uses the right id",
                pipeline.name
            )),
            None => problems.push(format!(
                "[{}] output_schema_id {pinned} is pinned, but the derived schema is not registered under {subject}: run `pseudonymizer schema register`, or remove output_schema_id and the worker registers it itself",
                pipeline.name
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(WorkerError::Config(ConfigError::Rules(problems)))
    }
}

/// The headers naming the keys a record was made with.
fn key_headers(keys: &ActiveKeys) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(k) = &keys.pseudonym {
        headers = headers.insert(Header {
            key: "pseudonymizer.pseudonym-key",
            value: Some(k.id()),
        });
    }
    if let Some(k) = &keys.encryption {
        headers = headers.insert(Header {
            key: "pseudonymizer.encryption-key",
            value: Some(k.id()),
        });
    }
    headers
}

/// Keys that never change: for tests and tools that do not reload.
pub fn fixed_keys(keys: ActiveKeys) -> watch::Receiver<Arc<ActiveKeys>> {
    // A receiver still reads the last value after its sender is gone.
    watch::channel(Arc::new(keys)).1
}
