//! Prometheus metrics, and what `/healthz` and `/readyz` say (served by [`crate::endpoint`]).
//!
//! Labels carry topic names, partitions, pipeline names, dead-letter reasons and key ids:
//! never a value, a token or a secret.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::keys::SealKey;

/// Every kind of connection failure [`crate::connect::failure_kind`] gives but `other` (which
/// is logged, not counted). The metrics own the list, so that every label exists from the
/// start at 0; `connect` reports into them (metrics is the lower module of the two).
pub const CONNECTION_ERROR_KINDS: [&str; 6] = [
    "authentication",
    "sasl-mechanism",
    "authorization",
    "tls",
    "all-brokers-down",
    "transport",
];

/// Record counts summed over their labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub consumed: u64,
    pub published: u64,
    pub dead_lettered: u64,
    /// Deleted by the broker before they were read.
    pub skipped: u64,
}

/// Every metric the worker exports.
pub struct Metrics {
    registry: Registry,
    /// Records consumed, by input topic.
    pub records_in: IntCounterVec,
    /// Sanitized records acknowledged by the broker, by pipeline.
    pub records_out: IntCounterVec,
    /// Dead-lettered records acknowledged by the broker, by reason.
    pub dead_lettered: IntCounterVec,
    /// Seconds to decode, route and transform one record.
    pub transform_seconds: Histogram,
    /// Seconds from produce to broker acknowledgement.
    pub produce_seconds: Histogram,
    /// High watermark minus position, by topic and partition (assigned partitions only).
    pub consumer_lag: IntGaugeVec,
    /// Records produced whose acknowledgement is awaited.
    pub in_flight: IntGauge,
    /// Times the worker stalled: no progress for `stall_timeout_secs` with records to read.
    pub stalls: IntCounter,
    /// 1 while stalled.
    pub stalled: IntGauge,
    /// Records the broker deleted (retention) before this worker read them, by topic and
    /// partition: lost upstream, counted so that it is never silent.
    pub records_skipped: IntCounterVec,
    /// 1 for each key id in use for new output, by purpose.
    pub active_key: IntGaugeVec,
    /// Envelopes sealed by this process, by encryption key id.
    pub envelopes_sealed: IntCounterVec,
    /// Keyring reloads, by result (`applied`, `refused`).
    pub key_reloads: IntCounterVec,
    /// Consumer group rebalances (assignments and revocations) this worker went through.
    pub rebalances: IntCounter,
    /// Offset commits the broker refused or that failed (automatic and at shutdown).
    pub commit_failures: IntCounter,
    /// KMS calls made by this process, by operation (`wrap`, `unwrap`) and result (`ok`,
    /// `failed`): one unwrap per key per keyring load, none per record.
    pub kms_calls: IntCounterVec,
    /// Key rotation warnings raised, by key id and reason (`age`).
    pub key_warnings: IntGaugeVec,
    /// Schema ids resolved through the registry, by outcome (`route` or a dead-letter reason).
    pub schema_ids_resolved: IntCounterVec,
    /// 1 for each field path of a writer schema version that the rules do not classify, by
    /// pipeline and schema id (its records are dead-lettered as `unclassified-field`).
    pub unclassified_fields: IntGaugeVec,
    /// 1 while the worker waits for an unreachable schema registry.
    pub registry_unavailable: IntGauge,
    /// Registry requests that got no usable answer (each retry counts).
    pub registry_errors: IntCounter,
    /// Exactly-once mode: transactions by outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Connection failures reported by librdkafka, by kind (`authentication`, `tls`, …).
    pub connection_errors: IntCounterVec,
    /// 1 while the Kafka cluster cannot be reached or refuses the worker's credentials.
    pub connection_failing: IntGauge,
    /// Subjects the registry records something for (`recorded`) and erased subjects.
    pub subjects: IntGaugeVec,
    /// Records that carried a withheld subject, by outcome (`published`: unlinked tokens and
    /// no sealed fields; `dropped`; `dead-lettered`: a dead letter with no value).
    pub subject_records: IntCounterVec,
    /// Registry records read, by result (`applied`, `refused`, `not-followed`, `other-key`,
    /// `erasure-kept`).
    pub subject_registry_records: IntCounterVec,
    /// Failed reads of the subject registry while following it.
    pub subject_registry_errors: IntCounter,
    /// Re-identification risk (`[pipeline.risk]`), by pipeline: records in the window.
    pub risk_window_records: IntGaugeVec,
    /// … of them, those in a group of fewer than k records.
    pub risk_records_below_k: IntGaugeVec,
    /// … and their share of the window (0 to 1).
    pub risk_below_k_ratio: prometheus::GaugeVec,
    /// … and the k they are counted against.
    pub risk_k: IntGaugeVec,
    /// When the `[geoip]` database was built (seconds since 1970; absent without one).
    pub geoip_build_timestamp: IntGaugeVec,
    ready: AtomicBool,
    connection_flag: AtomicBool,
    serving: Mutex<Option<std::net::SocketAddr>>,
    stalled_flag: AtomicBool,
    registry_flag: AtomicBool,
    seal_keys: Mutex<Vec<Arc<SealKey>>>,
    exported_seals: Mutex<HashMap<String, u64>>,
    exported_kms: Mutex<crate::kms::Calls>,
}

impl Metrics {
    /// Registers every metric in a fresh registry, with `pseudonymizer_build_info` and the
    /// process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
    /// `process_open_fds`, …).
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "pseudonymizer_build_info",
                "1, labelled with the version and the phone metadata that decides canonical forms.",
            ),
            &["version", "phone_metadata"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), crate::phone::PHONE_METADATA])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let metrics = Metrics {
            records_in: counter(
                "pseudonymizer_records_in_total",
                "Records consumed.",
                &["topic"],
            ),
            records_out: counter(
                "pseudonymizer_records_out_total",
                "Sanitized records acknowledged by the broker.",
                &["pipeline"],
            ),
            dead_lettered: counter(
                "pseudonymizer_records_dead_lettered_total",
                "Records sent to the dead-letter topic and acknowledged.",
                &["reason"],
            ),
            transform_seconds: histogram(
                "pseudonymizer_transform_seconds",
                "Time to decode, route and transform one record.",
                prometheus::exponential_buckets(1e-6, 2.0, 16).expect("valid buckets"),
            ),
            produce_seconds: histogram(
                "pseudonymizer_produce_seconds",
                "Time from produce to broker acknowledgement.",
                prometheus::exponential_buckets(1e-4, 2.0, 18).expect("valid buckets"),
            ),
            consumer_lag: gauge(
                "pseudonymizer_consumer_lag",
                "High watermark minus the consumer's position.",
                &["topic", "partition"],
            ),
            in_flight: plain_gauge(
                "pseudonymizer_in_flight",
                "Records produced whose acknowledgement is awaited.",
            ),
            stalls: plain_counter(
                "pseudonymizer_stalls_total",
                "Stalls: no progress for stall_timeout_secs while assigned partitions had records to read.",
            ),
            stalled: plain_gauge("pseudonymizer_stalled", "1 while the worker is stalled."),
            records_skipped: counter(
                "pseudonymizer_records_skipped_total",
                "Records deleted by the broker (retention) before this worker read them.",
                &["topic", "partition"],
            ),
            active_key: gauge(
                "pseudonymizer_active_key",
                "1 for the key id used for new output.",
                &["purpose", "key_id"],
            ),
            envelopes_sealed: counter(
                "pseudonymizer_envelopes_sealed_total",
                "Envelopes sealed by this process.",
                &["key_id"],
            ),
            rebalances: plain_counter(
                "pseudonymizer_rebalances_total",
                "Consumer group rebalances (assignments and revocations).",
            ),
            commit_failures: plain_counter(
                "pseudonymizer_commit_failures_total",
                "Offset commits that failed.",
            ),
            kms_calls: counter(
                "pseudonymizer_kms_calls_total",
                "KMS calls made by this process.",
                &["operation", "result"],
            ),
            key_reloads: counter(
                "pseudonymizer_keyring_reloads_total",
                "Keyring reloads.",
                &["result"],
            ),
            key_warnings: gauge(
                "pseudonymizer_key_rotation_due",
                "1 when a key should be rotated.",
                &["key_id", "reason"],
            ),
            schema_ids_resolved: counter(
                "pseudonymizer_schema_ids_resolved_total",
                "Schema ids resolved through the registry, by outcome.",
                &["result"],
            ),
            unclassified_fields: gauge(
                "pseudonymizer_unclassified_fields",
                "1 for each field of a writer schema version that the rules do not classify.",
                &["pipeline", "schema_id", "field"],
            ),
            registry_unavailable: plain_gauge(
                "pseudonymizer_registry_unavailable",
                "1 while the worker waits for an unreachable schema registry.",
            ),
            registry_errors: plain_counter(
                "pseudonymizer_registry_errors_total",
                "Schema registry requests that got no usable answer.",
            ),
            transactions: counter(
                "pseudonymizer_transactions_total",
                "Exactly-once mode: Kafka transactions by outcome (committed, aborted).",
                &["outcome"],
            ),
            connection_errors: counter(
                "pseudonymizer_connection_errors_total",
                "Kafka connection failures by kind (authentication, tls, sasl-mechanism, authorization, all-brokers-down, transport).",
                &["kind"],
            ),
            connection_failing: plain_gauge(
                "pseudonymizer_connection_failing",
                "1 while the Kafka cluster cannot be reached or refuses the worker's credentials.",
            ),
            subjects: gauge(
                "pseudonymizer_subjects",
                "Subjects the subject registry records something for (recorded), and erased subjects.",
                &["state"],
            ),
            subject_records: counter(
                "pseudonymizer_subject_records_total",
                "Records that carried a subject the registry holds back from their pipeline (erased, or without the consent it asks for), by outcome.",
                &["outcome"],
            ),
            subject_registry_records: counter(
                "pseudonymizer_subject_registry_records_total",
                "Subject registry records read, by result.",
                &["result"],
            ),
            subject_registry_errors: plain_counter(
                "pseudonymizer_subject_registry_errors_total",
                "Failed reads of the subject registry while following it.",
            ),
            risk_window_records: gauge(
                "pseudonymizer_risk_window_records",
                "Records in the pipeline's re-identification risk window ([pipeline.risk]).",
                &["pipeline"],
            ),
            risk_records_below_k: gauge(
                "pseudonymizer_risk_records_below_k",
                "Records of the window whose quasi-identifier values fewer than k records of the window share (k-anonymity).",
                &["pipeline"],
            ),
            risk_below_k_ratio: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "pseudonymizer_risk_below_k_ratio",
                        "Share of the window's records in groups smaller than k (0 to 1).",
                    ),
                    &["pipeline"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            risk_k: gauge(
                "pseudonymizer_risk_k",
                "The k the pipeline's re-identification risk is counted against.",
                &["pipeline"],
            ),
            geoip_build_timestamp: gauge(
                "pseudonymizer_geoip_database_build_timestamp_seconds",
                "When the [geoip] country database was built (its metadata's build epoch).",
                &[],
            ),
            registry,
            ready: AtomicBool::new(false),
            stalled_flag: AtomicBool::new(false),
            registry_flag: AtomicBool::new(false),
            connection_flag: AtomicBool::new(false),
            serving: Mutex::new(None),
            seal_keys: Mutex::new(Vec::new()),
            exported_seals: Mutex::new(HashMap::new()),
            exported_kms: Mutex::new(crate::kms::Calls::default()),
        };
        metrics.zero_known_labels();
        Arc::new(metrics)
    }

    /// Exports 0 for every label value known in advance, so that alert rules and dashboards
    /// find each series from the start (a vector with no child is not exported at all).
    fn zero_known_labels(&self) {
        for reason in crate::worker::route::DeadLetter::ALL {
            self.dead_lettered.with_label_values(&[reason.code()]);
        }
        for result in ["applied", "refused"] {
            self.key_reloads.with_label_values(&[result]);
        }
        for (operation, result) in [
            ("wrap", "ok"),
            ("wrap", "failed"),
            ("unwrap", "ok"),
            ("unwrap", "failed"),
        ] {
            self.kms_calls.with_label_values(&[operation, result]);
        }
        for kind in CONNECTION_ERROR_KINDS {
            self.connection_errors.with_label_values(&[kind]);
        }
        for outcome in ["committed", "aborted"] {
            self.transactions.with_label_values(&[outcome]);
        }
        for outcome in ["published", "dropped", "dead-lettered"] {
            self.subject_records.with_label_values(&[outcome]);
        }
        for state in ["recorded", "erased"] {
            self.subjects.with_label_values(&[state]);
        }
        for result in [
            "applied",
            "refused",
            "not-followed",
            "other-key",
            "erasure-kept",
        ] {
            self.subject_registry_records.with_label_values(&[result]);
        }
    }

    /// Exports a counter kept elsewhere (the engine's phone region fallbacks). A second
    /// registration of the same counter is a no-op.
    pub fn export_counter(&self, counter: &IntCounter) {
        let _ = self.registry.register(Box::new(counter.clone()));
    }

    /// Marks the worker ready (subscribed) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the worker stalled (`/readyz` 503 until progress resumes) or not.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled_flag.store(stalled, Ordering::Relaxed);
        self.stalled.set(i64::from(stalled));
    }

    /// Whether the worker waits for an unreachable registry.
    pub fn waits_for_registry(&self) -> bool {
        self.registry_flag.load(Ordering::Relaxed)
    }

    /// Marks the worker waiting for an unreachable registry (`/readyz` 503) or not.
    pub fn set_registry_unavailable(&self, unavailable: bool) {
        self.registry_flag.store(unavailable, Ordering::Relaxed);
        self.registry_unavailable.set(i64::from(unavailable));
    }

    /// Marks the Kafka connection failing (`/readyz` 503 until the cluster answers) or not.
    pub fn set_connection_failing(&self, failing: bool) {
        self.connection_flag.store(failing, Ordering::Relaxed);
        self.connection_failing.set(i64::from(failing));
    }

    /// Whether a connection failure was reported and the cluster has not answered since.
    pub fn connection_is_failing(&self) -> bool {
        self.connection_flag.load(Ordering::Relaxed)
    }

    /// Whether `/readyz` answers 200: subscribed, not shutting down, not stalled, not waiting
    /// for the registry, connected.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.stalled_flag.load(Ordering::Relaxed)
            && !self.registry_flag.load(Ordering::Relaxed)
            && !self.connection_flag.load(Ordering::Relaxed)
    }

    /// Sets the active key ids, and remembers the encryption key to export its envelope count.
    pub fn set_active_keys(&self, pseudonym: Option<&str>, encryption: Option<&Arc<SealKey>>) {
        // Export what the outgoing keys sealed before they are replaced.
        self.refresh();
        self.active_key.reset();
        if let Some(id) = pseudonym {
            self.active_key.with_label_values(&["pseudonym", id]).set(1);
        }
        if let Some(key) = encryption {
            self.active_key
                .with_label_values(&["encryption", key.id()])
                .set(1);
            let mut keys = self.seal_keys.lock().unwrap_or_else(|e| e.into_inner());
            // A reloaded key replaces the one of the same id (its count continues the old one).
            keys.retain(|k| k.id() != key.id());
            keys.push(key.clone());
        }
        self.refresh();
    }

    /// Brings the per-key envelope counters and the KMS call counters up to date.
    fn refresh(&self) {
        let now = crate::kms::calls();
        let mut guard = self.exported_kms.lock().unwrap_or_else(|e| e.into_inner());
        let kms = &mut *guard;
        for (operation, result, now, before) in [
            ("wrap", "ok", now.wrap_ok, &mut kms.wrap_ok),
            ("wrap", "failed", now.wrap_failed, &mut kms.wrap_failed),
            ("unwrap", "ok", now.unwrap_ok, &mut kms.unwrap_ok),
            (
                "unwrap",
                "failed",
                now.unwrap_failed,
                &mut kms.unwrap_failed,
            ),
        ] {
            if now > *before {
                self.kms_calls
                    .with_label_values(&[operation, result])
                    .inc_by(now - *before);
                *before = now;
            }
        }
        drop(guard);
        let keys = self.seal_keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut exported = self
            .exported_seals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for key in keys.iter() {
            let now = key.sealed_count();
            let before = exported.entry(key.id().to_owned()).or_insert(0);
            if now > *before {
                self.envelopes_sealed
                    .with_label_values(&[key.id()])
                    .inc_by(now - *before);
                *before = now;
            }
        }
    }

    /// Records consumed, and records finished (acknowledged as published or dead-lettered).
    pub fn progress(&self) -> (u64, u64) {
        let counts = self.counts();
        (counts.consumed, counts.published + counts.dead_lettered)
    }

    /// Records consumed, published and dead-lettered so far (all labels summed).
    pub fn counts(&self) -> Counts {
        use prometheus::core::Collector;
        let sum = |families: Vec<prometheus::proto::MetricFamily>| -> u64 {
            families
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        };
        Counts {
            consumed: sum(self.records_in.collect()),
            published: sum(self.records_out.collect()),
            dead_lettered: sum(self.dead_lettered.collect()),
            skipped: sum(self.records_skipped.collect()),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh();
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Where this process's endpoint listens, once [`crate::endpoint::serve`] started it.
    pub(crate) fn serving(&self) -> std::sync::MutexGuard<'_, Option<std::net::SocketAddr>> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }
}
