//! The TOML configuration: keyring location, phone region, and one pipeline per input schema.
//!
//! Loading checks everything that can be checked without data: unknown keys, unreadable or
//! invalid schemas, and every rule against its schema (see [`crate::plan`]). All rule errors
//! of all pipelines are reported together, one offending path per line.
//!
//! String values may hold secret references (`${file:PATH}`, `${env:NAME}`), resolved before
//! anything else is read ([`crate::secret_ref`]); secret librdkafka properties must be given that
//! way, and the `Debug` form of [`KafkaConfig`] shows property names, never values.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::rules::RuleSpec;
use crate::secret_ref::Resolved;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Keyring file (spec §1). Relative to the config file.
    pub keyring: PathBuf,
    /// Phone parsing settings.
    pub phone: PhoneConfig,
    /// One entry per input event type.
    pub pipeline: Vec<PipelineConfig>,
    /// The stream worker's Kafka settings (`pseudonymizer run`); file mode ignores them.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// When the worker warns that a key is due for rotation.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// Append-only log of every `decrypt` and `lookup` (one JSON line each). Relative to the
    /// config file. Re-identification refuses to run without one.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// A Confluent-compatible schema registry (docs/operations.md, "Schema registry"). With
    /// one, pipelines match records by the writer schema's record name, any version; without
    /// one, by the static `input_schema_id`.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// Which identifiers name a person, for the subject registry (`[kafka] subjects_topic`;
    /// docs/security.md, "A person's rights").
    #[serde(default)]
    pub subjects: SubjectsConfig,
    /// The country database IP rules derive `country` from (docs/operations.md, "Derived IP
    /// countries").
    #[serde(default)]
    pub geoip: Option<GeoIpConfig>,
    /// Where the config was read from; relative paths are resolved against its folder.
    #[serde(skip)]
    pub source: PathBuf,
    /// The files its `${file:…}` references named (the worker reconnects when one changes).
    #[serde(skip)]
    pub referenced_files: Vec<PathBuf>,
    /// The values its references resolved to, so that no message ever shows one
    /// ([`Config::redact`]).
    #[serde(skip)]
    pub resolved: Arc<Resolved>,
}

/// `[geoip]`: a local MaxMind DB file (GeoIP2/GeoLite2 Country or City, DB-IP, ip-location-db)
/// read whole at start ([`crate::geoip`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// The `.mmdb` file. Relative to the config file.
    pub database: PathBuf,
}

/// The subject registry's settings besides its topics (which are in `[kafka]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectsConfig {
    /// Token classes whose values name a person: a field of one of these classes is looked up
    /// in the registry (phone covers phone-raw). Default: phone and email.
    pub classes: Vec<String>,
    /// Seconds a worker may take to read the whole registry at start before it gives up.
    pub load_timeout_secs: u64,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        SubjectsConfig {
            classes: vec!["phone".into(), "email".into()],
            load_timeout_secs: 600,
        }
    }
}

/// Phone parsing settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneConfig {
    /// ISO 3166 alpha-2 region for numbers written without a country code.
    pub default_region: String,
}

/// One input event type and its rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// A short name for logs and metrics (`calls`).
    pub name: String,
    /// How the raw events are written: `avro` (default: Confluent-framed Avro, with
    /// `input_schema`), `json` (schemaless JSON objects, one per record; routed by
    /// `input_topic`, with no schema: [`crate::jsonl`]) or `json-schema` (Confluent-framed
    /// JSON objects with a registry `JSON` schema, `input_schema`; routed by its `title`).
    #[serde(default)]
    pub format: Format,
    /// The writer schema (`.avsc`, or a JSON Schema for `json-schema`) of the raw events.
    /// Relative to the config file. Required for `avro` and `json-schema`; `json` has none.
    #[serde(default)]
    pub input_schema: PathBuf,
    /// `protobuf` only: the full name of the message its records are (`comms.v1.CallEvent`);
    /// optional where `input_schema` defines one top-level message.
    #[serde(default)]
    pub message: Option<String>,
    /// `json`, `json-schema` and `protobuf` only: what becomes of a record with a key no rule names: `dead-letter`
    /// (default: the whole record, `unclassified-field`) or `drop` (the key is left out).
    #[serde(default)]
    pub unknown: Option<UnknownKeys>,
    /// Field path to action, one per leaf field of the input schema.
    #[serde(deserialize_with = "crate::rules::deserialize_rules")]
    pub rules: BTreeMap<String, RuleSpec>,
    /// Stream worker: the topic the raw events arrive on (several pipelines may share one).
    #[serde(default)]
    pub input_topic: Option<String>,
    /// Stream worker: the analytics topic the sanitized events go to.
    #[serde(default)]
    pub output_topic: Option<String>,
    /// Stream worker without a registry: the Confluent schema id of raw events of this type.
    /// With a registry it may still be given, to pin one id to this pipeline.
    #[serde(default)]
    pub input_schema_id: Option<u32>,
    /// Stream worker without a registry: the Confluent schema id written on sanitized events.
    /// With a registry the worker registers the derived schema and uses the id it gets.
    #[serde(default)]
    pub output_schema_id: Option<u32>,
    /// Stream worker: the token class of the record key (`phone`, `id`, …), so a key that
    /// carries a subscriber number gets the same token as its field; absent: no key.
    #[serde(default)]
    pub key_class: Option<String>,
    /// The pseudonymisation domain of this pipeline's tokens and Crypto-PAn images
    /// (docs/formats.md §3): pipelines in different domains give unlinkable pseudonyms of the
    /// same value. Absent: the default domain, spec v1's tokens.
    #[serde(default)]
    pub domain: Option<String>,
    /// Whose events this pipeline publishes, by the subject registry: `opt-out` (everyone
    /// who did not opt out of its domain) or `opt-in` (only those who opted in). Absent:
    /// everyone not erased. Needs `[kafka] subjects_topic`.
    #[serde(default)]
    pub consent: Option<crate::subjects::ConsentMode>,
    /// What becomes of a record that carries a withheld subject (erased, or without the
    /// consent asked for): `withhold` (default: published with unlinked tokens and no sealed
    /// fields) or `drop` (not published, counted).
    #[serde(default)]
    pub erased: crate::subjects::WithheldAction,
    /// Stream worker: the re-identification risk estimate of this pipeline's output
    /// (`[pipeline.risk]`: docs/security.md, "Re-identification risk, measured").
    #[serde(default)]
    pub risk: Option<RiskConfig>,
}

/// How a pipeline's raw events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Confluent-framed Avro: magic byte, schema id, Avro binary.
    #[default]
    Avro,
    /// A JSON object per record, no framing and no schema.
    Json,
    /// Confluent-framed JSON: magic byte, schema id of a registry `JSON` schema, a JSON object.
    JsonSchema,
    /// Confluent-framed Protobuf: magic byte, schema id of a registry `PROTOBUF` schema, the
    /// message-index list, a Protobuf message (read through its JSON mapping, so walked by the
    /// same key tree as JSON: [`crate::plan::protobuf`]).
    Protobuf,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Avro => "avro",
            Format::Json => "json",
            Format::JsonSchema => "json-schema",
            Format::Protobuf => "protobuf",
        }
    }

    /// Whether its records are walked by a [`crate::plan::json::JsonPlan`]: JSON objects, or
    /// Protobuf messages through their JSON mapping.
    pub fn is_json(self) -> bool {
        matches!(self, Format::Json | Format::JsonSchema | Format::Protobuf)
    }
}

/// What a `json` pipeline does with a key that no rule names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownKeys {
    /// The whole record goes to the dead-letter topic (`unclassified-field`).
    #[default]
    DeadLetter,
    /// The key and its value are left out of the output.
    Drop,
}

/// `[pipeline.risk]`: which output fields together could single a person out, and the
/// k-anonymity window they are measured over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Output field paths (as in the derived schema: `location.cell_id`, `callee_region`).
    pub quasi_identifiers: Vec<String>,
    /// A record in a group of fewer than `k` records counts as at risk (default 5).
    #[serde(default)]
    pub k: Option<u32>,
    /// The window: this many of the pipeline's latest records (default 100,000).
    #[serde(default)]
    pub window: Option<usize>,
}

/// The schema registry client's settings. Credentials are never in the config text: they are
/// read from an environment variable or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URLs (`http://registry:8081`), tried in order until one answers.
    pub urls: Vec<String>,
    /// How subjects are named: `topic` (`<topic>-value`, the default), `record` (the record's
    /// full name) or `topic-record` (`<topic>-<record full name>`).
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// `none` (default), `basic` (credentials `user:password`, as Confluent's
    /// `basic.auth.user.info`) or `bearer` (credentials: the token).
    #[serde(default)]
    pub auth: RegistryAuth,
    /// The environment variable holding the credentials.
    #[serde(default)]
    pub credentials_env: Option<String>,
    /// Or the file holding them (one line). Relative to the config file.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the registry's TLS certificate (`https`
    /// URLs); absent: the web's public roots. Relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: PEM file of the client certificate (chain) shown to the registry, with
    /// `key_file`. Relative to the config file.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Mutual TLS: PEM file of the client certificate's private key (unencrypted; keep it
    /// readable by the worker only). Relative to the config file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Seconds allowed for one request.
    #[serde(default = "default_registry_timeout_secs")]
    pub timeout_secs: u64,
    /// The longest wait between attempts while the registry cannot be reached.
    #[serde(default = "default_registry_backoff_secs")]
    pub max_backoff_secs: u64,
}

/// How subjects are named (Confluent's subject name strategies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (TopicNameStrategy).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
}

impl SubjectStrategy {
    /// The subject of values of record `record` on `topic`.
    pub fn subject(self, topic: &str, record: &str) -> String {
        match self {
            SubjectStrategy::Topic => format!("{topic}-value"),
            SubjectStrategy::Record => record.to_owned(),
            SubjectStrategy::TopicRecord => format!("{topic}-{record}"),
        }
    }
}

/// How the registry client authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryAuth {
    #[default]
    None,
    Basic,
    Bearer,
}

fn default_registry_timeout_secs() -> u64 {
    10
}

fn default_registry_backoff_secs() -> u64 {
    30
}

/// The stream worker's Kafka settings. Its `Debug` form names properties without their values
/// (any of them may be a password).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group; start more processes with the same group to scale out.
    pub group_id: String,
    /// Dead-letter topic for records that cannot be decoded or transformed.
    pub dlq_topic: String,
    /// Records consumed but not yet acknowledged, at most (backpressure).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Threads that transform records (at-least-once mode): records of different input
    /// partitions are transformed in parallel, each partition's in order. Absent: the cores
    /// the process may use (its cgroup CPU quota included); 1: the loop itself transforms.
    #[serde(default)]
    pub transform_threads: Option<usize>,
    /// Records larger than this go to the dead-letter topic.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Input headers copied to the output; all others are dropped.
    #[serde(default)]
    pub header_allowlist: Vec<String>,
    /// Seconds allowed for a graceful shutdown after SIGTERM or SIGINT. Keep it below the
    /// platform's grace period (Kubernetes: `terminationGracePeriodSeconds`, 30 s by default).
    #[serde(default = "default_shutdown_secs")]
    pub shutdown_timeout_secs: u64,
    /// Where a consumer group without committed offsets starts: `earliest` (default: every
    /// record still in the raw topics, nothing skipped) or `latest` (only records that arrive
    /// after the first start). docs/deploy.md, "The first deploy".
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// Seconds without progress, while assigned partitions have records to read, after which
    /// the worker reports a stall: `/readyz` 503, an error line naming the partitions, and
    /// `pseudonymizer_stalls_total`.
    #[serde(default = "default_stall_secs")]
    pub stall_timeout_secs: u64,
    /// `at-least-once` (default) or `exactly-once` (Kafka transactions; needs a broker with
    /// transactions and `transactional_id`).
    #[serde(default)]
    pub mode: DeliveryMode,
    /// The producer's `transactional.id` in exactly-once mode; unique per worker process.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Exactly-once mode: a transaction is committed after this many records at most.
    #[serde(default = "default_transaction_max_records")]
    pub transaction_max_records: usize,
    /// Exactly-once mode: a transaction is committed at most this many milliseconds after its
    /// first record (the end-to-end latency `read_committed` readers see).
    #[serde(default = "default_transaction_max_ms")]
    pub transaction_max_ms: u64,
    /// The subject registry: a compacted topic of erasures and consents, read whole at start
    /// and followed live (docs/security.md, "A person's rights"). Absent: off.
    #[serde(default)]
    pub subjects_topic: Option<String>,
    /// The compacted topic of erasure notices (`subjects erase` writes one per request;
    /// `decrypt` reads them). Absent: `subjects erase` refuses to run.
    #[serde(default)]
    pub erasure_topic: Option<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (e.g. `0.0.0.0:9464`); absent: off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Any librdkafka property, passed to both the consumer and the producer.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only (e.g. `session.timeout.ms`).
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (e.g. `compression.type`).
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("dlq_topic", &self.dlq_topic)
            .field("mode", &self.mode)
            .field("transactional_id", &self.transactional_id)
            .field("properties", &names(&self.properties))
            .field("consumer_properties", &names(&self.consumer_properties))
            .field("producer_properties", &names(&self.producer_properties))
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaConfig {
    /// Property values may be passwords: wiped when a copy of the config goes.
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for map in [
            &mut self.properties,
            &mut self.consumer_properties,
            &mut self.producer_properties,
        ] {
            for value in map.values_mut() {
                value.zeroize();
            }
        }
    }
}

/// Key rotation policy. The worker warns (log line and `pseudonymizer_key_rotation_due`) when a
/// key reaches `warn_fraction` of a limit; rotating is an operator's decision, never automatic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Maximum age of an encryption key, in days (the primary control: it holds fleet-wide
    /// without counting anything).
    pub encryption_max_age_days: Option<u32>,
    /// Maximum age of a pseudonym key, in days. Off by default: a new pseudonym key starts a new
    /// token epoch, and tokens of different epochs do not join.
    pub pseudonym_max_age_days: Option<u32>,
    /// Retired: version-2 envelopes (XAES-256-GCM, docs/formats.md §4) have no per-key seal
    /// bound to count towards. Still accepted, so older configs load; ignored with a warning.
    pub max_envelopes_per_key: Option<u64>,
    /// The fraction of a limit at which the warning starts.
    pub warn_fraction: f64,
    /// Seconds between policy checks.
    pub check_interval_secs: u64,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            encryption_max_age_days: Some(90),
            pseudonym_max_age_days: None,
            max_envelopes_per_key: None,
            warn_fraction: 0.8,
            check_interval_secs: 60,
        }
    }
}

/// Where a consumer group without committed offsets starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffsetReset {
    /// The oldest record the broker still has.
    #[default]
    Earliest,
    /// The next record to arrive.
    Latest,
}

impl OffsetReset {
    /// librdkafka's `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// The worker's delivery guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Offsets stored after delivery; duplicates only from the uncommitted window.
    #[default]
    AtLeastOnce,
    /// Output and consumer offsets committed in one Kafka transaction.
    ExactlyOnce,
}

fn default_max_in_flight() -> usize {
    10_000
}
impl KafkaConfig {
    /// How many threads transform records: `transform_threads`, or the cores this process may
    /// use (the standard library reads the affinity mask and the cgroup CPU quota).
    pub fn transform_threads(&self) -> usize {
        self.transform_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            // A set value above the range is refused; the default is only bounded by it.
            cores.min(*ranges::TRANSFORM_THREADS.end() as usize)
        })
    }
}

fn default_max_record_bytes() -> usize {
    1 << 20
}

fn default_transaction_max_records() -> usize {
    10_000
}

fn default_transaction_max_ms() -> u64 {
    100
}

fn default_stall_secs() -> u64 {
    60
}

/// 20 s: under Kubernetes' default grace period (30 s) with a margin, so a pod killed with
/// the defaults still drains; deploy/kubernetes sets 45 s.
fn default_shutdown_secs() -> u64 {
    20
}

/// Why a configuration was refused. Every message names the file or the setting, quotes config
/// values short ([`quote`]) and never shows a value read through a reference.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// (The OS error is chained as the source; `{:#}` prints it once.)
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A config or schema file that is not a readable regular file within its size limit.
    /// (The file error's own text already holds the OS error: it is not chained again.)
    #[error(transparent)]
    File(crate::fsio::FileError),
    #[error("{path}{}: {message}", at.map(|(line, column)| format!(":{line}:{column}")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        /// Line and column (from 1) of the offending text, when known.
        at: Option<(usize, usize)>,
        message: String,
    },
    #[error("schema {path} is not valid Avro: {message}")]
    Schema { path: PathBuf, message: String },
    #[error("two pipelines read the schema {0}")]
    DuplicateSchema(String),
    #[error(transparent)]
    PhoneRegion(#[from] crate::phone::UnknownRegion),
    #[error(transparent)]
    GeoIp(#[from] crate::geoip::GeoIpError),
    #[error("the rules do not fit the schemas (or, for a json pipeline, make no tree of keys):{}", list(.0))]
    Rules(Vec<String>),
    #[error("the [kafka] section is not valid:{}", list(.0))]
    Kafka(Vec<String>),
    #[error("the [registry] section is not valid:{}", list(.0))]
    Registry(Vec<String>),
    #[error("{path}: secret references:{}", list(.problems))]
    SecretReference {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// What loading and [`crate::worker::validate`] found: every problem at once.
    #[error("{path} is refused ({}):{}", count(.problems), list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// Another error's message with every value read through a reference taken out
    /// ([`Config::redact_error`]).
    #[error("{0}")]
    Redacted(String),
}

impl ConfigError {
    /// Every problem this error stands for, one line each, each cut at [`MAX_LINE`] (for
    /// `check`, which lists at most [`MAX_LISTED`] of them).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Rules(problems)
            | ConfigError::Kafka(problems)
            | ConfigError::Registry(problems)
            | ConfigError::SecretReference { problems, .. }
            | ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|p| shorten(p, MAX_LINE)).collect()
            }
            other => vec![shorten(&other.to_string(), MAX_LINE)],
        }
    }
}

/// At most this many problems are listed in one message (a schema of thousands of fields
/// without rules gives thousands; the first ones show what is wrong).
pub const MAX_LISTED: usize = 50;
/// A problem line longer than this is cut (a field path, a dependency's message).
pub const MAX_LINE: usize = 400;
/// A config value quoted in a message is cut after this many characters.
pub const QUOTE_CHARS: usize = 40;

/// "1 problem", "3 problems".
fn count(problems: &[String]) -> String {
    match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    }
}

/// The problems as indented lines: at most [`MAX_LISTED`], each at most [`MAX_LINE`].
fn list(problems: &[String]) -> String {
    let mut out = String::new();
    for problem in problems.iter().take(MAX_LISTED) {
        out.push_str("\n  ");
        out.push_str(&shorten(problem, MAX_LINE));
    }
    if problems.len() > MAX_LISTED {
        out.push_str(&format!("\n  … and {} more", problems.len() - MAX_LISTED));
    }
    out
}

/// A config value for a message: Rust-quoted, cut after [`QUOTE_CHARS`] characters with "…".
/// (A rule or topic may be any length; a message must stay readable and never carry a
/// 100 kB value.)
pub fn quote(value: &str) -> String {
    if value.chars().count() <= QUOTE_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(QUOTE_CHARS).collect();
        format!("{head:?}…")
    }
}

/// A message from a dependency (serde, toml, apache-avro) made safe to print: every quoted
/// run (`"…"` or `` `…` ``) longer than [`QUOTE_CHARS`] is cut, and the whole is cut at `max`
/// characters. Such messages may quote the offending value, of any length.
pub fn shorten(message: &str, max: usize) -> String {
    let mut out = String::with_capacity(message.len().min(max + 8));
    let mut written = 0usize;
    let mut open: Option<(char, usize)> = None;
    for c in message.chars() {
        if written >= max {
            out.push('…');
            return out;
        }
        match open {
            Some((quote, n)) if c == quote => {
                open = None;
                if n > QUOTE_CHARS {
                    out.push('…');
                    written += 1;
                }
                out.push(c);
                written += 1;
            }
            Some((quote, n)) => {
                if n < QUOTE_CHARS {
                    out.push(c);
                    written += 1;
                }
                open = Some((quote, n + 1));
            }
            None => {
                if c == '"' || c == '`' {
                    open = Some((c, 0));
                }
                out.push(c);
                written += 1;
            }
        }
    }
    if matches!(open, Some((_, n)) if n > QUOTE_CHARS) {
        out.push('…');
    }
    out
}

/// An error and its sources as one message ("a: b: c"), leaving out a source whose text the
/// message already holds (many errors print their source in their own message too, and the
/// same OS error twice is noise).
pub fn chain_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}

/// Line and column (both from 1, columns in characters) of byte offset `at` of `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

thread_local! {
    /// Set while this thread runs a parser whose panic is caught and reported as an error.
    static PANIC_CAUGHT_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `None`. The process's panic hook stays silent for such a
/// panic: it is an error the caller reports (one message), not an internal error. (The hook
/// is wrapped once, on first use; other threads' panics still reach it.)
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PANIC_CAUGHT_HERE.with(Cell::get) {
                previous(info);
            }
        }));
    });
    PANIC_CAUGHT_HERE.with(|c| c.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    PANIC_CAUGHT_HERE.with(|c| c.set(false));
    outcome.ok()
}

/// Parses an Avro schema's JSON text. apache-avro 0.21 panics, instead of returning an error,
/// on some invalid names (an enum symbol or alias outside Avro's name grammar; avro-rs issues
/// 496 and 547): the panic is caught and reported as an invalid schema. Every schema the
/// crate parses from a file or a registry goes through here. The message is cut short (the
/// parser may quote the whole schema).
pub fn parse_schema(text: &str) -> Result<apache_avro::Schema, String> {
    match catch_quietly(|| apache_avro::Schema::parse_str(text)) {
        Some(Ok(schema)) => Ok(schema),
        Some(Err(e)) => Err(shorten(&e.to_string(), MAX_LINE)),
        None => Err("the Avro schema parser panicked on it (an invalid name)".to_owned()),
    }
}

/// [`parse_schema`] for a schema already read as JSON (a derived output schema).
pub fn parse_schema_json(json: &serde_json::Value) -> Result<apache_avro::Schema, String> {
    match catch_quietly(|| apache_avro::Schema::parse(json)) {
        Some(Ok(schema)) => Ok(schema),
        Some(Err(e)) => Err(shorten(&e.to_string(), MAX_LINE)),
        None => Err("the Avro schema parser panicked on it (an invalid name)".to_owned()),
    }
}

/// Reads and parses a pipeline's schema file: a regular file of at most
/// [`crate::fsio::SCHEMA_LIMIT`] bytes, valid Avro.
pub fn read_schema(path: &Path) -> Result<apache_avro::Schema, ConfigError> {
    let text = crate::fsio::read_text(path, "schema", crate::fsio::SCHEMA_LIMIT)
        .map_err(ConfigError::File)?;
    parse_schema(&text).map_err(|message| ConfigError::Schema {
        path: path.to_owned(),
        message,
    })
}

impl Config {
    /// The `format = "avro"` pipelines, in config order: the order of
    /// [`crate::transform::Engine::plans`].
    pub fn avro_pipelines(&self) -> impl Iterator<Item = &PipelineConfig> {
        self.pipeline.iter().filter(|p| p.format == Format::Avro)
    }

    /// Reads a config file (a regular file of at most [`crate::fsio::CONFIG_LIMIT`] bytes: a
    /// FIFO or device is refused without waiting on it); relative paths in it are made
    /// relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::fsio::read_text(path, "config", crate::fsio::CONFIG_LIMIT)
            .map_err(ConfigError::File)?;
        Config::from_toml(&text, path)
    }

    /// `message` with every value read through a reference replaced by "the value of
    /// ${file:…}" (naming its reference).
    pub fn redact(&self, message: &str) -> String {
        self.resolved.redact(message)
    }

    /// Any error, as one message (its whole chain, [`chain_message`]) with every value read
    /// through a reference taken out.
    pub fn redact_error(&self, error: &(dyn std::error::Error + 'static)) -> ConfigError {
        ConfigError::Redacted(self.redact(&chain_message(error)))
    }

    /// Parses and checks config text as if read from `path` (relative paths in it are made
    /// relative to that file's folder; nothing is read).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // The text itself holds no secret (secrets are references), so its own syntax errors
        // may quote it (short); once references are resolved, messages are scrubbed of their
        // values.
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            at: e.span().map(|s| line_column(text, s.start)),
            message: shorten(e.message().trim(), MAX_LINE),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolved = crate::secret_ref::resolve(&mut table, base).map_err(|problems| {
            ConfigError::SecretReference {
                path: path.to_owned(),
                problems,
            }
        })?;
        let mut config: Config = match toml::Value::Table(table).try_into() {
            Ok(config) => config,
            Err(e) => {
                let e: toml::de::Error = e;
                // The resolved tree has no positions: the text read again gives the place,
                // when the error is the same there (a value read through a reference may
                // make it differ; then no place is given rather than a wrong one).
                let at = match toml::from_str::<Config>(text) {
                    Err(again) if again.message() == e.message() => {
                        again.span().map(|s| line_column(text, s.start))
                    }
                    _ => None,
                };
                return Err(ConfigError::Syntax {
                    path: path.to_owned(),
                    at,
                    message: shorten(&resolved.redact(e.message().trim()), MAX_LINE),
                });
            }
        };
        config.source = path.to_owned();
        config.referenced_files = resolved.files.clone();
        config.resolved = Arc::new(resolved);
        config.keyring = base.join(&config.keyring);
        if let Some(audit) = &mut config.audit_log {
            *audit = base.join(&*audit);
        }
        let mut empty_paths = Vec::new();
        if let Some(geoip) = &mut config.geoip {
            if geoip.database.as_os_str().is_empty() {
                // Joined to the folder it would name the folder, and be refused as that.
                empty_paths.push(crate::geoip::GeoIpError::NoPath.to_string());
            }
            geoip.database = base.join(&geoip.database);
        }
        if config.rotation.max_envelopes_per_key.is_some() {
            tracing::warn!(
                config = %path.display(),
                "[rotation] max_envelopes_per_key is retired and ignored: envelopes are XAES-256-GCM (docs/formats.md §4), with no per-key bound to count towards"
            );
        }
        // A pipeline's name is its identity in metrics, logs and `transform --pipeline` (a json
        // pipeline has no schema name besides).
        let mut names = std::collections::HashSet::new();
        for pipeline in &config.pipeline {
            if !names.insert(pipeline.name.as_str()) {
                empty_paths.push(format!(
                    "[{}] two pipelines have this name: each needs its own",
                    pipeline.name
                ));
            }
        }
        for pipeline in &mut config.pipeline {
            let tag = format!("[{}]", pipeline.name);
            match pipeline.format {
                Format::Avro => {
                    if pipeline.input_schema.as_os_str().is_empty() {
                        empty_paths.push(format!("{tag} input_schema is required for format avro"));
                    }
                    if pipeline.unknown.is_some() {
                        empty_paths.push(format!(
                            "{tag} unknown is for formats json and json-schema: an Avro field without a rule is refused by its schema"
                        ));
                    }
                    pipeline.input_schema = base.join(&pipeline.input_schema);
                }
                Format::Json if !pipeline.input_schema.as_os_str().is_empty() => {
                    empty_paths.push(format!(
                        "{tag} input_schema is for format avro: a json pipeline is schemaless (its rules name its keys)"
                    ));
                }
                Format::Json => {}
                Format::JsonSchema => {
                    if pipeline.input_schema.as_os_str().is_empty() {
                        empty_paths.push(format!(
                            "{tag} input_schema is required for format json-schema (the JSON Schema its producers register)"
                        ));
                    }
                    pipeline.input_schema = base.join(&pipeline.input_schema);
                }
                Format::Protobuf => {
                    if pipeline.input_schema.as_os_str().is_empty() {
                        empty_paths.push(format!(
                            "{tag} input_schema is required for format protobuf (the .proto file its producers register)"
                        ));
                    }
                    pipeline.input_schema = base.join(&pipeline.input_schema);
                }
            }
            if let Some(message) = &pipeline.message {
                let is_name = !message.is_empty()
                    && message.len() <= 256
                    && message.split('.').all(|part| {
                        part.chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                if !is_name {
                    empty_paths.push(format!(
                        "{tag} message {} is not a message's full name (package.Message)",
                        quote(message)
                    ));
                }
            }
            if pipeline.message.is_some() && pipeline.format != Format::Protobuf {
                empty_paths.push(format!(
                    "{tag} message is for format protobuf (the message its records are)"
                ));
            }
        }
        if let Some(registry) = &mut config.registry {
            registry.credentials_file = registry.credentials_file.as_ref().map(|f| base.join(f));
            registry.ca_file = registry.ca_file.as_ref().map(|f| base.join(f));
            registry.cert_file = registry.cert_file.as_ref().map(|f| base.join(f));
            registry.key_file = registry.key_file.as_ref().map(|f| base.join(f));
        }
        let mut problems = config.rotation.problems();
        problems.extend(empty_paths);
        if let Some(registry) = &config.registry {
            problems.extend(registry.problems());
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: problems.iter().map(|p| config.redact(p)).collect(),
            });
        }
        Ok(config)
    }
}

/// Every numeric setting's accepted range (docs/operations.md lists them), checked by loading
/// (`[rotation]`, `[registry]`) or by [`crate::worker::validate`] (`[kafka]`, schema ids).
/// Past them a value is a mistake, and some would overflow (a timeout added to the clock).
pub mod ranges {
    use std::ops::RangeInclusive;
    /// `[kafka] max_in_flight`.
    pub const MAX_IN_FLIGHT: RangeInclusive<u64> = 1..=1_000_000;
    /// `[kafka] transform_threads`.
    pub const TRANSFORM_THREADS: RangeInclusive<u64> = 1..=256;
    /// `[kafka] max_record_bytes`: at least the 5-byte wire header and a byte; at most 1 GiB.
    pub const MAX_RECORD_BYTES: RangeInclusive<u64> = 6..=(1 << 30);
    /// `[kafka] shutdown_timeout_secs`: up to an hour.
    pub const SHUTDOWN_TIMEOUT_SECS: RangeInclusive<u64> = 1..=3600;
    /// `[kafka] stall_timeout_secs`: up to a day.
    pub const STALL_TIMEOUT_SECS: RangeInclusive<u64> = 1..=86_400;
    /// `[kafka] transaction_max_records`.
    pub const TRANSACTION_MAX_RECORDS: RangeInclusive<u64> = 1..=1_000_000;
    /// `[kafka] transaction_max_ms`: well under the producer's transaction timeout (60 s).
    pub const TRANSACTION_MAX_MS: RangeInclusive<u64> = 1..=30_000;
    /// `input_schema_id`, `output_schema_id`: Confluent ids are positive 32-bit signed.
    pub const SCHEMA_ID: RangeInclusive<u64> = 1..=(i32::MAX as u64);
    /// `[rotation] encryption_max_age_days`, `pseudonym_max_age_days`: up to 100 years.
    pub const MAX_AGE_DAYS: RangeInclusive<u64> = 1..=36_500;
    /// `[rotation] check_interval_secs`: up to a day.
    pub const CHECK_INTERVAL_SECS: RangeInclusive<u64> = 1..=86_400;
    /// `[registry] timeout_secs`: up to 5 minutes.
    pub const REGISTRY_TIMEOUT_SECS: RangeInclusive<u64> = 1..=300;
    /// `[registry] max_backoff_secs`: up to an hour.
    pub const REGISTRY_BACKOFF_SECS: RangeInclusive<u64> = 1..=3600;
}

/// "`[section] name = V` is out of range: it must be from A to B", if `value` is outside
/// `range`.
pub fn out_of_range(
    section: &str,
    name: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Option<String> {
    (!range.contains(&value)).then(|| {
        format!(
            "{section} {name} = {value} is out of range: it must be from {} to {}",
            range.start(),
            range.end()
        )
    })
}

impl RotationConfig {
    /// Every problem of the rotation policy.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.warn_fraction > 0.0 && self.warn_fraction <= 1.0) {
            problems.push(format!(
                "[rotation] warn_fraction = {} is out of range: it must be in (0, 1]",
                self.warn_fraction
            ));
        }
        problems.extend(out_of_range(
            "[rotation]",
            "check_interval_secs",
            self.check_interval_secs,
            ranges::CHECK_INTERVAL_SECS,
        ));
        for (name, days) in [
            ("encryption_max_age_days", self.encryption_max_age_days),
            ("pseudonym_max_age_days", self.pseudonym_max_age_days),
        ] {
            if let Some(days) = days {
                problems.extend(out_of_range(
                    "[rotation]",
                    name,
                    days.into(),
                    ranges::MAX_AGE_DAYS,
                ));
            }
        }
        problems
    }
}

impl RegistryConfig {
    /// Every problem that can be found without the registry.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.urls.is_empty() {
            problems.push("[registry] urls is empty".to_owned());
        }
        for (i, url) in self.urls.iter().enumerate() {
            // Only the scheme and host are shown: a URL with credentials in it is refused
            // without repeating them.
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            if scheme != "http" && scheme != "https" {
                problems.push(format!(
                    "[registry] urls[{i}] is not http:// or https:// (its value is not shown: a URL may hold credentials)"
                ));
            } else if rest.split('/').next().unwrap_or_default().contains('@') {
                problems.push(format!(
                    "[registry] a {scheme} url holds credentials; use credentials_env or credentials_file"
                ));
            }
        }
        let has_credentials = self.credentials_env.is_some() || self.credentials_file.is_some();
        match self.auth {
            RegistryAuth::None if has_credentials => {
                problems.push("[registry] credentials are given but auth is \"none\"".to_owned())
            }
            RegistryAuth::Basic | RegistryAuth::Bearer if !has_credentials => problems
                .push("[registry] auth needs credentials_env or credentials_file".to_owned()),
            _ => {}
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push("[registry] mutual TLS needs both cert_file and key_file".to_owned());
        }
        if self.credentials_env.is_some() && self.credentials_file.is_some() {
            problems
                .push("[registry] give credentials_env or credentials_file, not both".to_owned());
        }
        problems.extend(out_of_range(
            "[registry]",
            "timeout_secs",
            self.timeout_secs,
            ranges::REGISTRY_TIMEOUT_SECS,
        ));
        problems.extend(out_of_range(
            "[registry]",
            "max_backoff_secs",
            self.max_backoff_secs,
            ranges::REGISTRY_BACKOFF_SECS,
        ));
        problems
    }
}
