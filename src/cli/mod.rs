//! The command line: parsing (clap) and one function per command. Errors get their context
//! here, at the binary's edge.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

mod keys;
mod registry;
mod worker;

use keys::keys;
pub use keys::KeysCommand;
use worker::run_worker;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::file;
use crate::generate::Kind;
use crate::keys::{KeySet, Keyring, Need};
use crate::phone::PhoneCanon;
use crate::token::{self, TokenClass};
use crate::transform::Engine;

/// `--version`: the crate version and the phone metadata that canonical forms (and so phone
/// tokens) come from.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (phone canonical forms: {})",
        env!("CARGO_PKG_VERSION"),
        crate::phone::PHONE_METADATA
    )
});

/// Pseudonymizes and encrypts call and message metadata events.
#[derive(Debug, Parser)]
#[command(name = "pseudonymizer", version = VERSION.as_str(), about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, rotate, list and destroy keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Derived output schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Run the stream worker: consume raw topics, publish sanitized ones, until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Log format: text or json.
        #[arg(long, default_value = "text")]
        log_format: String,
    },
    /// The whole product in one command: an in-process Kafka cluster (or --brokers), synthetic
    /// events, the worker, raw and sanitized events side by side, throughput.
    Demo {
        /// Config whose rules and schemas to use.
        #[arg(long, default_value = "config/pipeline.toml")]
        config: PathBuf,
        /// A real cluster instead of the in-process one.
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// End-to-end throughput against a real broker: the worker with the transform and with a
    /// pass-through copy, alternately, each in its own process; events/s, ratio, peak RSS.
    /// With `--mode exactly-once`, each round also runs the transform in exactly-once mode
    /// (needs a broker with transactions).
    Bench {
        #[arg(long, default_value = "config/pipeline.toml")]
        config: PathBuf,
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Partitions of the raw topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// at-least-once (sanitize and pass-through) or exactly-once (the same, plus sanitize
        /// with transactions).
        #[arg(long, default_value = "at-least-once")]
        mode: String,
    },
    /// One measurement of `bench` (run by it in a child process); prints a JSON line.
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        events: u64,
        /// sanitize or pass-through.
        #[arg(long)]
        treatment: String,
        /// at-least-once or exactly-once.
        #[arg(long, default_value = "at-least-once")]
        mode: String,
    },
    /// Dead-letter topic tools.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The re-identification audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check a config (and its keyring) without processing anything.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also connect to the Kafka cluster with the `[kafka]` settings (TLS, SASL) and look
        /// up the input, output and dead-letter topics.
        #[arg(long)]
        connect: bool,
    },
    /// Transform an Avro container file of raw events into a sanitized one.
    Transform {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Print the tokens of values under every pseudonym key that still has a secret (audited).
    Lookup {
        #[arg(long)]
        keyring: PathBuf,
        /// Audit log to append to (else $PSEUDONYMIZER_AUDIT_LOG); lookup refuses without one.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Token class: phone, ip, email, id, or id.<role> (an id sub-class, as a rule's
        /// `{ action = "id", class = "<role>" }` makes).
        #[arg(long)]
        class: String,
        /// The role of an id (same as --class id.<role>).
        #[arg(long)]
        sub_class: Option<String>,
        /// The pseudonymisation domain of the pipeline whose tokens are looked up (its
        /// `domain`); absent: the default domain.
        #[arg(long)]
        domain: Option<String>,
        /// Default region for phone numbers without a country code.
        #[arg(long, default_value = "ID")]
        region: String,
        /// Read the values from this file, one per line (`-`: standard input), so that they
        /// stay out of the process list and the shell history.
        #[arg(long)]
        values_from: Option<PathBuf>,
        /// The values on the command line (visible in `ps` and kept in shell history: a
        /// warning is printed; prefer --values-from).
        values: Vec<String>,
    },
    /// Print a sanitized file's events as JSON lines with envelopes opened (audited).
    Decrypt {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        input: PathBuf,
        /// Overrides the config's `audit_log`.
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// Re-encrypt every envelope of a sanitized file under the active encryption key and in
    /// the current envelope version (to retire an old key, or to upgrade version-1 envelopes);
    /// tokens and every other field are copied unchanged.
    Reseal {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Overrides the config's `audit_log` (reseal opens envelopes: audited).
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// Print the first events of an Avro container file as JSON lines (bytes as base64).
    Show {
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
    /// Write synthetic raw events to an Avro container file.
    Generate {
        #[arg(long, value_enum)]
        schema: Kind,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

/// `--config` and the `--keyring` that overrides the config's keyring.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Overrides the config's `keyring`.
    #[arg(long)]
    pub keyring: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the log's hash chain; names the first edited, removed or reordered record and
    /// exits non-zero, or prints the record count and the chain's head hash.
    Verify {
        #[arg(long)]
        audit_log: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Open every dead letter and produce its original bytes to its source topic again.
    Replay {
        #[command(flatten)]
        config: ConfigArgs,
        /// Stop after this many seconds without a new dead letter.
        #[arg(long, default_value_t = 5)]
        idle_secs: u64,
        /// Overrides the config's `audit_log` (replay opens envelopes: audited).
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Replay only dead letters of this reason (repeatable). Default: the reasons a fix
        /// can cure (unclassified-field, bad-schema, output-schema-refused, unknown-schema-id,
        /// oversize); poison (bad-magic, corrupt-avro, empty) stays.
        #[arg(long = "reason")]
        reasons: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Write the output schema derived from each input schema and its rules.
    Derive {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Register each pipeline's derived schema in the `[registry]` (for the local schema and
    /// the latest version of its input subject); print subjects and ids.
    Register {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Loads a config and compiles its rules.
fn load_config(args: &ConfigArgs) -> Result<(Config, Engine, PathBuf)> {
    let config =
        Config::load(&args.config).with_context(|| format!("config {}", args.config.display()))?;
    let engine = Engine::from_config(&config)
        .with_context(|| format!("config {}", args.config.display()))?;
    let keyring_path = args
        .keyring
        .clone()
        .unwrap_or_else(|| config.keyring.clone());
    Ok((config, engine, keyring_path))
}

/// Loads a config, compiles its rules, and loads from its keyring (or the override) the
/// secrets the command `need`s, and no others.
pub fn load(args: &ConfigArgs, need: Need) -> Result<(Config, Engine, KeySet)> {
    let (config, engine, keyring_path) = load_config(args)?;
    let keyring = Keyring::load_for(&keyring_path, need)
        .with_context(|| format!("keyring {}", keyring_path.display()))?;
    Ok((config, engine, KeySet::from_keyring(&keyring)))
}

/// `check --connect`: the cluster answers with the config's settings, and every topic the
/// worker reads or writes exists.
fn check_connection(
    config: &Config,
    kafka: &crate::config::KafkaConfig,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let mut topics: Vec<&str> = Vec::new();
    for pipeline in &config.pipeline {
        for topic in [&pipeline.input_topic, &pipeline.output_topic]
            .into_iter()
            .flatten()
        {
            if !topics.contains(&topic.as_str()) {
                topics.push(topic);
            }
        }
    }
    topics.push(&kafka.dlq_topic);
    let (brokers, report) =
        crate::connect::probe(kafka, &topics, std::time::Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("[kafka] cannot connect to {}: {e}", kafka.brokers))?;
    writeln!(out, "[kafka] connected: {brokers} brokers answered")?;
    let mut missing = Vec::new();
    for (topic, partitions) in report {
        match partitions {
            Some(n) => writeln!(out, "[kafka] topic {topic}: {n} partitions")?,
            None => missing.push(topic),
        }
    }
    if !missing.is_empty() {
        bail!(
            "[kafka] topics missing (or not visible to this principal): {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// `lookup`'s values: from a file or standard input, one per line; or from the command line,
/// with a warning (they stay in `ps` and the shell's history).
fn lookup_values(from: Option<&std::path::Path>, args: Vec<String>) -> Result<Vec<String>> {
    let values = match from {
        Some(path) => {
            if !args.is_empty() {
                bail!("give the values with --values-from or on the command line, not both");
            }
            let text = if path == std::path::Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        }
        None => {
            if !args.is_empty() {
                eprintln!(
                    "warning: values on the command line stay in the process list and the \
                     shell's history; use --values-from FILE (or - for standard input)"
                );
            }
            args
        }
    };
    if values.is_empty() {
        bail!("no values to look up");
    }
    Ok(values)
}

/// Runs one command.
/// What `main` did to harden the process (the worker logs it once its log is set up).
static HARDENING: std::sync::OnceLock<crate::hardening::Hardened> = std::sync::OnceLock::new();

/// Records what [`crate::hardening::harden`] did, for the worker's start-up log line.
pub fn set_hardening(hardened: crate::hardening::Hardened) {
    let _ = HARDENING.set(hardened);
}

pub fn run(cli: Cli) -> Result<()> {
    // apache-avro decodes the container files of `transform`, `show`, `decrypt` and `reseal`.
    // Its allocation bound (default 512 MiB) limits a length or an array's item count, and it
    // reserves an array's claimed count × the size of a `Value` (48 bytes) up front: a hostile
    // file could make it reserve gigabytes. 16 MiB bounds that to under 1 GiB and is far above
    // any field or container block these files hold.
    apache_avro::util::max_allocation_bytes(16 << 20);
    // Locked per write, not for the whole command: the demo prints from several threads.
    let mut out = std::io::stdout();
    match cli.command {
        Command::Keys(command) => keys(command, &mut out),
        Command::Schema(SchemaCommand::Derive { config, out: dir }) => {
            let config = Config::load(&config)?;
            let engine = Engine::from_config(&config)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for plan in engine.plans() {
                let path = dir.join(output_schema_file(plan));
                std::fs::write(&path, output_schema_text(plan))
                    .with_context(|| format!("writing {}", path.display()))?;
                writeln!(out, "wrote {}", path.display())?;
            }
            Ok(())
        }
        Command::Schema(SchemaCommand::Register { config }) => {
            let config = Config::load(&config)?;
            let engine = Engine::from_config(&config)?;
            registry::register(&config, &engine, &mut out)
        }
        Command::Run { config, log_format } => run_worker(&config, &log_format),
        Command::Demo {
            config,
            brokers,
            events,
        } => {
            // The worker's warnings and errors (a stall, records deleted before they were read)
            // reach the terminal; RUST_LOG=info shows its whole log.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn".into());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::demo::run(&config, brokers, events))
        }
        Command::Bench {
            config,
            brokers,
            events,
            partitions,
            rounds,
            mode,
        } => {
            let with_transactions = match mode.as_str() {
                "at-least-once" => false,
                "exactly-once" => true,
                other => bail!("--mode must be at-least-once or exactly-once, not {other:?}"),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::bench::run(
                &config,
                &brokers,
                events,
                partitions,
                rounds,
                with_transactions,
            ))
        }
        Command::BenchWorker {
            config,
            brokers,
            topic,
            events,
            treatment,
            mode,
        } => {
            let treatment = match treatment.as_str() {
                "sanitize" => crate::worker::Treatment::Sanitize,
                "pass-through" => crate::worker::Treatment::PassThrough,
                other => bail!("--treatment must be sanitize or pass-through, not {other:?}"),
            };
            let mode = match mode.as_str() {
                "at-least-once" => crate::config::DeliveryMode::AtLeastOnce,
                "exactly-once" => crate::config::DeliveryMode::ExactlyOnce,
                other => bail!("--mode must be at-least-once or exactly-once, not {other:?}"),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let measurement = runtime.block_on(crate::bench::measure(
                &config, &brokers, &topic, events, treatment, mode,
            ))?;
            writeln!(out, "{}", serde_json::to_string(&measurement)?)?;
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { audit_log }) => {
            match crate::audit::verify(&audit_log) {
                Ok(v) => {
                    writeln!(
                        out,
                        "{}: {} records, chain intact ({} from before the chain); head sha256 {}",
                        audit_log.display(),
                        v.records,
                        v.unchained,
                        v.head
                    )?;
                    Ok(())
                }
                Err(problem) => bail!("{}: {problem}", audit_log.display()),
            }
        }
        Command::Dlq(DlqCommand::Replay {
            config,
            idle_secs,
            audit_log,
            reasons,
        }) => {
            let known: Vec<&str> = crate::worker::route::DeadLetter::ALL
                .iter()
                .map(|r| r.code())
                .collect();
            if let Some(bad) = reasons.iter().find(|r| !known.contains(&r.as_str())) {
                bail!(
                    "--reason {bad:?} is not a dead-letter reason ({})",
                    known.join(", ")
                );
            }
            let reasons = (!reasons.is_empty()).then_some(reasons);
            let (config, _, keys) = load(&config, Need::ENVELOPES)?;
            let mut audit = AuditLog::open(audit_log.as_deref(), config.audit_log.as_deref())?;
            let kafka = config
                .kafka
                .as_ref()
                .context("the config has no [kafka] section")?;
            // Dead letters go back only to the topics the pipelines read.
            let mut inputs: Vec<String> = Vec::new();
            for topic in config.pipeline.iter().filter_map(|p| p.input_topic.clone()) {
                if !inputs.contains(&topic) {
                    inputs.push(topic);
                }
            }
            let key_ids = keys.encryption_key_ids();
            audit.append("dlq replay", key_ids.clone(), 0, None, None, "started")?;
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(crate::worker::replay::replay(
                kafka,
                &inputs,
                &keys,
                std::time::Duration::from_secs(idle_secs),
                reasons.as_deref(),
            ));
            let (opened, unopened, outcome) = match &result {
                Ok(done) => (done.replayed, done.unopened + done.refused, "ok"),
                Err(_) => (0, 0, "failed"),
            };
            audit.append("dlq replay", key_ids, opened, Some(unopened), None, outcome)?;
            let done = result?;
            writeln!(
                out,
                "replayed {} dead letters to their source topics; {} could not be opened; {} refused (source not an input topic, or not the topic the dead letter was sealed for); {} kept (reasons not replayed: {})",
                done.replayed,
                done.unopened,
                done.refused,
                done.kept,
                match &reasons {
                    None => "poison: bad-magic, corrupt-avro, empty".to_owned(),
                    Some(chosen) => format!("all but {}", chosen.join(", ")),
                }
            )?;
            Ok(())
        }
        Command::Check {
            config: args,
            connect,
        } => {
            let (config, engine, keys) = load(&args, Need::NEW_OUTPUT)?;
            if let Some(kafka) = &config.kafka {
                crate::worker::check_kafka(kafka)
                    .with_context(|| format!("config {}", args.config.display()))?;
                writeln!(out, "[kafka]: ok")?;
                if connect {
                    check_connection(&config, kafka, &mut out)?;
                }
            } else if connect {
                bail!("--connect: the config has no [kafka] section");
            }
            let active = engine.active_keys(&keys)?;
            for plan in engine.plans() {
                writeln!(
                    out,
                    "{}: {} rules, ok",
                    plan.input_name,
                    plan.rules.iter().count()
                )?;
            }
            let id = |k: Option<&str>| k.unwrap_or("none").to_owned();
            writeln!(
                out,
                "active keys: pseudonym {}, encryption {}",
                id(active.pseudonym.as_deref().map(|k| k.id())),
                id(active.encryption.as_deref().map(|k| k.id()))
            )?;
            registry::check(&config, &engine, &mut out)
        }
        Command::Transform {
            config,
            input,
            output,
        } => {
            let (_, engine, keys) = load(&config, Need::NEW_OUTPUT)?;
            let active = engine.active_keys(&keys)?;
            let started = std::time::Instant::now();
            let count = file::transform_file(&engine, &active, &input, &output)
                .with_context(|| format!("transforming {}", input.display()))?;
            let secs = started.elapsed().as_secs_f64();
            writeln!(
                out,
                "transformed {count} events from {} to {} in {secs:.2} s",
                input.display(),
                output.display()
            )?;
            Ok(())
        }
        Command::Lookup {
            keyring,
            audit_log,
            class,
            sub_class,
            domain,
            region,
            values_from,
            values,
        } => {
            let mut audit = AuditLog::open(audit_log.as_deref(), None)?;
            let values = lookup_values(values_from.as_deref(), values)?;
            let class = match (TokenClass::parse(&class), sub_class) {
                (Some(TokenClass::Id), Some(sub)) => {
                    TokenClass::IdOf(token::SubClass::new(&sub).map_err(anyhow::Error::msg)?)
                }
                (_, Some(_)) => bail!("--sub-class goes with --class id"),
                (Some(c), None) if c.is_requestable() => c,
                _ => bail!("--class must be phone, ip, email, id or id.<role>"),
            };
            if let Some(domain) = &domain {
                crate::keys::check_domain(domain).map_err(anyhow::Error::msg)?;
            }
            let phone = PhoneCanon::new(&region)?;
            let keys = KeySet::from_keyring(&Keyring::load_for(&keyring, Need::TOKENS)?);
            if keys.pseudonym_keys().is_empty() {
                bail!("no pseudonym key with a secret in {}", keyring.display());
            }
            let in_domain: Vec<_> = keys
                .pseudonym_keys()
                .iter()
                .map(|k| match &domain {
                    Some(d) => std::sync::Arc::new(k.in_domain(d)),
                    None => k.clone(),
                })
                .collect();
            // Audited before anything is printed: no log line, no tokens. A domain is named
            // with the key ids it applies to (`p-…/domain:fraud`).
            let key_ids: Vec<String> = in_domain
                .iter()
                .map(|k| match k.domain() {
                    Some(d) => format!("{}/domain:{d}", k.id()),
                    None => k.id().to_owned(),
                })
                .collect();
            let count = values.len() as u64;
            audit.append("lookup", key_ids.clone(), count, None, None, "started")?;
            // One JSON line per (value, key). The value is named by its position on the
            // command line, not repeated, so captured output never pairs a value with its token.
            for (n, value) in values.iter().enumerate() {
                let (class, canonical) = token::canonical(class, value, &phone);
                for key in &in_domain {
                    let token = token::token(key, class, canonical.as_bytes());
                    let line = serde_json::json!({"arg": n + 1, "class": class.as_str(), "key_id": key.id(), "token": token.as_str()});
                    writeln!(out, "{line}")?;
                }
            }
            audit.append("lookup", key_ids, count, None, None, "ok")?;
            Ok(())
        }
        Command::Decrypt {
            config,
            input,
            audit_log,
        } => {
            let (config, engine, keys) = load(&config, Need::ENVELOPES)?;
            let mut audit = AuditLog::open(audit_log.as_deref(), config.audit_log.as_deref())?;
            // Write-ahead: on disk before the first plaintext leaves, or nothing is printed.
            let key_ids: Vec<String> = keys.encryption_key_ids();
            audit.append("decrypt", key_ids, 0, None, Some(&input), "started")?;
            let mut report = file::DecryptReport::default();
            let result = file::decrypt_file(&engine, &keys, &input, &mut out, &mut report);
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            audit.append(
                "decrypt",
                report.key_ids.iter().cloned().collect(),
                report.opened,
                Some(report.unopened),
                Some(&input),
                outcome,
            )?;
            result.with_context(|| format!("decrypting {}", input.display()))?;
            eprintln!(
                "{} events, {} envelopes opened, {} not opened",
                report.events, report.opened, report.unopened
            );
            Ok(())
        }
        Command::Reseal {
            config,
            input,
            output,
            audit_log,
        } => {
            let (loaded, engine, keys) = load(&config, Need::ENVELOPES)?;
            let mut audit = AuditLog::open(audit_log.as_deref(), loaded.audit_log.as_deref())?;
            let active = keys.encryption()?.clone();
            let key_ids = keys.encryption_key_ids();
            audit.append("reseal", key_ids.clone(), 0, None, Some(&input), "started")?;
            let result = file::reseal_file(&engine, &keys, &active, &input, &output);
            let (resealed, outcome) = match &result {
                Ok(report) => (report.resealed, "ok"),
                Err(_) => (0, "failed"),
            };
            audit.append("reseal", key_ids, resealed, None, Some(&input), outcome)?;
            let report = result.with_context(|| format!("resealing {}", input.display()))?;
            writeln!(
                out,
                "resealed {} envelopes under {} ({} were already under it) in {} events; wrote {}",
                report.resealed,
                active.id(),
                report.current,
                report.events,
                output.display()
            )?;
            Ok(())
        }
        Command::Show { input, count } => {
            for event in file::read_json(&input, count)? {
                writeln!(out, "{event}")?;
            }
            Ok(())
        }
        Command::Generate {
            schema,
            count,
            output,
            seed,
        } => {
            file::generate_file(schema, count, seed, &output)?;
            writeln!(
                out,
                "wrote {count} {schema:?} events to {}",
                output.display()
            )?;
            Ok(())
        }
    }
}

/// File name of a plan's derived schema: its full name and `.avsc`.
pub fn output_schema_file(plan: &crate::plan::Plan) -> String {
    match &plan.output {
        apache_avro::Schema::Record(r) => format!("{}.avsc", r.name.fullname(None)),
        _ => "output.avsc".to_owned(),
    }
}

/// The derived schema as written to disk: pretty JSON and a final newline.
pub fn output_schema_text(plan: &crate::plan::Plan) -> String {
    let mut text = serde_json::to_string_pretty(&plan.output_json).expect("JSON value serializes");
    text.push('\n');
    text
}

/// The line printed for a panic: where it happened, and its message only when the message is a
/// string literal (`&'static str`). A formatted message could carry a value from the data, so
/// it is withheld (fail closed).
pub fn panic_report(
    payload: &(dyn std::any::Any + Send),
    location: Option<&std::panic::Location<'_>>,
) -> String {
    let location = location
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_else(|| "an unknown location".to_owned());
    let message = payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(message withheld: it may contain data)");
    format!("internal error: panicked at {location}: {message}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn panic_reports_keep_literals_and_withhold_formatted_messages() {
        let raw = "+6281234567890";
        let formatted = std::panic::catch_unwind(|| panic!("bad value {raw}")).unwrap_err();
        let line = super::panic_report(formatted.as_ref(), None);
        assert!(!line.contains(raw), "{line}");
        assert!(line.contains("withheld"), "{line}");
        let literal = std::panic::catch_unwind(|| panic!("a static message")).unwrap_err();
        let line = super::panic_report(literal.as_ref(), None);
        assert!(line.contains("a static message"), "{line}");
    }
}
