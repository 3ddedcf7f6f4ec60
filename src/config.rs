//! The TOML configuration: keyring location, phone region, and one pipeline per input schema.
//!
//! Loading checks everything that can be checked without data: unknown keys, unreadable or
//! invalid schemas, and every rule against its schema (see [`crate::plan`]). All rule errors
//! of all pipelines are reported together, one offending path per line.
//!
//! String values may hold secret references (`${file:PATH}`, `${env:NAME}`), resolved before
//! anything else is read ([`crate::secret_ref`]); secret librdkafka properties must be given that
//! way, and the `Debug` form of [`KafkaConfig`] shows property names, never values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::rules::RuleSpec;

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
    /// Where the config was read from; relative paths are resolved against its folder.
    #[serde(skip)]
    pub source: PathBuf,
    /// The files its `${file:…}` references named (the worker reconnects when one changes).
    #[serde(skip)]
    pub referenced_files: Vec<PathBuf>,
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
    /// The writer schema (`.avsc`) of the raw events. Relative to the config file.
    pub input_schema: PathBuf,
    /// Field path to action, one per leaf field of the input schema.
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

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid config: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("schema {path} is not valid Avro: {message}")]
    Schema { path: PathBuf, message: String },
    #[error("two pipelines read the schema {0}")]
    DuplicateSchema(String),
    #[error("{0}")]
    PhoneRegion(#[from] crate::phone::UnknownRegion),
    #[error("the rules do not fit the schemas:\n  {}", .0.join("\n  "))]
    Rules(Vec<String>),
    #[error("the [kafka] section is not valid:\n  {}", .0.join("\n  "))]
    Kafka(Vec<String>),
    #[error("[rotation] {0}")]
    Rotation(&'static str),
    #[error("the [registry] section is not valid:\n  {}", .0.join("\n  "))]
    Registry(Vec<String>),
    #[error("{path}: secret references:\n  {}", .problems.join("\n  "))]
    SecretReference {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads a config file; relative paths in it are made relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and checks config text as if read from `path` (relative paths in it are made
    /// relative to that file's folder; nothing is read).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        };
        // The text itself holds no secret (secrets are references), so its own syntax errors
        // may quote it; once references are resolved, messages are scrubbed of their values.
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| syntax(e.message().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolved = crate::secret_ref::resolve(&mut table, base).map_err(|problems| {
            ConfigError::SecretReference {
                path: path.to_owned(),
                problems,
            }
        })?;
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| syntax(resolved.redact(e.message())))?;
        config.source = path.to_owned();
        config.referenced_files = resolved.files.clone();
        config.keyring = base.join(&config.keyring);
        if let Some(audit) = &mut config.audit_log {
            *audit = base.join(&*audit);
        }
        let rotation = &config.rotation;
        if rotation.max_envelopes_per_key.is_some() {
            tracing::warn!(
                config = %path.display(),
                "[rotation] max_envelopes_per_key is retired and ignored: envelopes are XAES-256-GCM (docs/formats.md §4), with no per-key bound to count towards"
            );
        }
        if !(rotation.warn_fraction > 0.0 && rotation.warn_fraction <= 1.0) {
            return Err(ConfigError::Rotation("warn_fraction must be in (0, 1]"));
        }
        if rotation.check_interval_secs == 0 {
            return Err(ConfigError::Rotation(
                "check_interval_secs must be at least 1",
            ));
        }
        for pipeline in &mut config.pipeline {
            pipeline.input_schema = base.join(&pipeline.input_schema);
        }
        if let Some(registry) = &mut config.registry {
            registry.credentials_file = registry.credentials_file.as_ref().map(|f| base.join(f));
            registry.ca_file = registry.ca_file.as_ref().map(|f| base.join(f));
            registry.cert_file = registry.cert_file.as_ref().map(|f| base.join(f));
            registry.key_file = registry.key_file.as_ref().map(|f| base.join(f));
            registry.check()?;
        }
        Ok(config)
    }
}

impl RegistryConfig {
    /// Checks what can be checked without the registry; every problem at once.
    fn check(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.urls.is_empty() {
            problems.push("urls is empty".to_owned());
        }
        for url in &self.urls {
            // Only the scheme and host are shown: a URL with credentials in it is refused
            // without repeating them.
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            if scheme != "http" && scheme != "https" {
                problems.push(format!("url {url:?} is not http:// or https://"));
            } else if rest.split('/').next().unwrap_or_default().contains('@') {
                problems.push(format!(
                    "a {scheme} url holds credentials; use credentials_env or credentials_file"
                ));
            }
        }
        let has_credentials = self.credentials_env.is_some() || self.credentials_file.is_some();
        match self.auth {
            RegistryAuth::None if has_credentials => {
                problems.push("credentials are given but auth is \"none\"".to_owned())
            }
            RegistryAuth::Basic | RegistryAuth::Bearer if !has_credentials => {
                problems.push("auth needs credentials_env or credentials_file".to_owned())
            }
            _ => {}
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push("mutual TLS needs both cert_file and key_file".to_owned());
        }
        if self.credentials_env.is_some() && self.credentials_file.is_some() {
            problems.push("give credentials_env or credentials_file, not both".to_owned());
        }
        if self.timeout_secs == 0 {
            problems.push("timeout_secs must be at least 1".to_owned());
        }
        if self.max_backoff_secs == 0 {
            problems.push("max_backoff_secs must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Registry(problems))
        }
    }
}
