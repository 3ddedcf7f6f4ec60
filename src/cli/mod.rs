//! The command line: parsing (clap) and the dispatch to one function per command, each
//! command family in a file of its own. Errors get their context here, at the binary's edge.
//!
//! - `keys`: keyrings and KEKs; `worker`: `run`; `check`: `check`; `files`: the file-mode
//!   commands (`transform`, `decrypt`, `reseal`, `show`, `generate`); `lookup`; `schema`:
//!   `schema derive` and `register`; `registry`: the registry part of `check` and `register`;
//!   `dlq`: `dlq replay`; `audit`: `audit verify`; `bench`: `demo` and `bench`; `subjects`:
//!   the subject registry (`init`, `erase`, `opt-out`, `opt-in`, `status`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

mod audit;
mod bench;
mod check;
mod dlq;
mod explain;
mod files;
mod keys;
mod lookup;
mod registry;
mod schema;
mod subjects;
mod worker;

use audit::AuditCommand;
use dlq::DlqCommand;
use schema::SchemaCommand;

use keys::keys;
pub use keys::KeysCommand;
use worker::run_worker;

use crate::config::Config;
use crate::keys::{KeySet, Keyring, Need};
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

/// What `--help` ends with: the environment the program reads and its exit codes.
const AFTER_HELP: &str = "\
Environment:
  PSEUDONYMIZER_KEK            key-encryption key (base64) of a sealed keyring; taken out of
                               the environment at start
  PSEUDONYMIZER_KEK_FILE       file holding that KEK instead (owner-only)
  PSEUDONYMIZER_AUDIT_LOG      audit log of lookup (and decrypt when the config names none)
  PSEUDONYMIZER_SECRET_GROUP   the one group (a gid: the pod's fsGroup) that may read secret
                               files; unset, they must be owner-only
  PSEUDONYMIZER_ALLOW_CORE_DUMPS=1  leave core dumps on (they would hold every key)
  RUST_LOG                     log filter of run and demo (e.g. info, pseudonymizer=debug)
  AWS_* (AWS SDK's chain)      credentials and region for aws-kms:// keyrings

Exit codes:
  0    success
  1    failure: any error, a check that found problems, an envelope that did not
       authenticate, a closed standard output or error
  2    usage error (unknown command or flag, bad flag value)
  101  internal error (a bug; the message is withheld if it may carry data)";

/// Pseudonymizes and encrypts call and message metadata events.
#[derive(Debug, Parser)]
#[command(
    name = "pseudonymizer",
    version = VERSION.as_str(),
    about,
    after_help = AFTER_HELP
)]
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
        /// A real cluster instead of the in-process one (host:port, comma-separated).
        #[arg(long)]
        brokers: Option<String>,
        /// How many synthetic events to produce and sanitize.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// End-to-end throughput against a real broker: the worker with the transform and with a
    /// pass-through copy, alternately, each in its own process; events/s, ratio, peak RSS.
    /// With `--mode exactly-once`, each round also runs the transform in exactly-once mode
    /// (needs a broker with transactions).
    Bench {
        /// Config whose rules and schemas to use.
        #[arg(long, default_value = "config/pipeline.toml")]
        config: PathBuf,
        /// The broker to measure against (host:port, comma-separated).
        #[arg(long)]
        brokers: String,
        /// Events per measurement.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Partitions of the raw topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Rounds of (sanitize, pass-through) measurements; the report gives the median.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// at-least-once (sanitize and pass-through) or exactly-once (the same, plus sanitize
        /// with transactions).
        #[arg(long, default_value = "at-least-once")]
        mode: String,
        /// Also measure sanitize with a subject registry: an empty one, and one of this many
        /// erased subjects (0: neither).
        #[arg(long, default_value_t = 0)]
        subjects: u64,
    },
    /// One measurement of `bench` (run by it in a child process); prints a JSON line.
    #[command(hide = true)]
    BenchWorker {
        /// Config whose rules and schemas to use.
        #[arg(long)]
        config: PathBuf,
        /// The broker (host:port).
        #[arg(long)]
        brokers: String,
        /// The raw topic to read.
        #[arg(long)]
        topic: String,
        /// Events to read before the measurement ends.
        #[arg(long)]
        events: u64,
        /// sanitize, pass-through, or floor (librdkafka's own copy, no worker).
        #[arg(long)]
        treatment: String,
        /// at-least-once or exactly-once.
        #[arg(long, default_value = "at-least-once")]
        mode: String,
        /// The keyring to use (default: a throwaway one).
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// A subject registry topic to read and follow.
        #[arg(long)]
        subjects_topic: Option<String>,
        /// `[kafka] transform_threads` for this measurement (default: the config's).
        #[arg(long)]
        transform_threads: Option<usize>,
    },
    /// Dead-letter topic tools.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// A person's rights: erasure, opt-out and opt-in recorded in the subject registry, and
    /// what it holds for them (audited).
    #[command(subcommand)]
    Subjects(subjects::SubjectsCommand),
    /// The re-identification audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check a config (and its keyring) without processing anything.
    Check(check::CheckArgs),
    /// Show each pipeline's fields, rules and what sample values become; writes nothing.
    Explain(explain::ExplainArgs),
    /// Transform an Avro container file of raw events into a sanitized one.
    Transform(files::TransformArgs),
    /// Print the tokens of values under every pseudonym key that still has a secret (audited).
    Lookup(lookup::LookupArgs),
    /// Print a sanitized file's events as JSON lines with envelopes opened (audited).
    Decrypt(files::DecryptArgs),
    /// Re-encrypt every envelope of a sanitized file under the active encryption key and in
    /// the current envelope version (to retire an old key, or to upgrade version-1 envelopes);
    /// tokens and every other field are copied unchanged.
    Reseal(files::ResealArgs),
    /// Print the first events of an Avro container file as JSON lines (bytes as base64).
    Show(files::ShowArgs),
    /// Write synthetic raw events to an Avro container file.
    Generate(files::GenerateArgs),
}

/// `--config` and the `--keyring` that overrides the config's keyring.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The TOML config (README, "Configuration"; docs/operations.md has every setting).
    #[arg(long)]
    pub config: PathBuf,
    /// Overrides the config's `keyring`.
    #[arg(long)]
    pub keyring: Option<PathBuf>,
}

/// Loads a config and compiles its rules.
fn load_config(args: &ConfigArgs) -> Result<(Config, Engine, PathBuf)> {
    let config =
        Config::load(&args.config).with_context(|| format!("config {}", args.config.display()))?;
    // No value read through a `${file:…}` reference in the message (a region, a rule, a path).
    let engine = Engine::from_config(&config)
        .map_err(|e| config.redact_error(&e))
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
        .with_context(|| format!("keyring {}", keyring_path.display()))
        .map_err(|e| config.redact_error(e.as_ref()))?;
    Ok((config, engine, KeySet::from_keyring(&keyring)))
}

/// What `main` did to harden the process (the worker logs it once its log is set up).
static HARDENING: std::sync::OnceLock<crate::hardening::Hardened> = std::sync::OnceLock::new();

/// Records what [`crate::hardening::harden`] did, for the worker's start-up log line.
pub fn set_hardening(hardened: crate::hardening::Hardened) {
    let _ = HARDENING.set(hardened);
}

/// Runs one command.
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
        Command::Schema(command) => schema::schema(command, &mut out),
        Command::Run { config, log_format } => run_worker(&config, &log_format),
        Command::Demo {
            config,
            brokers,
            events,
        } => bench::demo(config, brokers, events),
        Command::Bench {
            config,
            brokers,
            events,
            partitions,
            rounds,
            mode,
            subjects,
        } => bench::bench(config, brokers, events, partitions, rounds, mode, subjects),
        Command::BenchWorker {
            config,
            brokers,
            topic,
            events,
            treatment,
            mode,
            keyring,
            subjects_topic,
            transform_threads,
        } => bench::bench_worker(
            config,
            brokers,
            topic,
            events,
            treatment,
            mode,
            crate::bench::Extras {
                keyring,
                subjects_topic,
                transform_threads,
            },
            &mut out,
        ),
        Command::Audit(command) => audit::audit(command, &mut out),
        Command::Dlq(command) => dlq::dlq(command, &mut out),
        Command::Subjects(command) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(subjects::subjects(command, &mut out)),
        Command::Check(args) => check::check(args, &mut out),
        Command::Explain(args) => explain::explain(args, &mut out),
        Command::Transform(args) => files::transform(args, &mut out),
        Command::Lookup(args) => lookup::lookup(args, &mut out),
        Command::Decrypt(args) => files::decrypt(args, &mut out),
        Command::Reseal(args) => files::reseal(args, &mut out),
        Command::Show(args) => files::show(args, &mut out),
        Command::Generate(args) => files::generate(args, &mut out),
    }
}

pub use schema::{output_schema_file, output_schema_text};

/// Prints a line to standard output for the commands that print as they go (`demo`,
/// `bench`), ending the process with exit 1 when standard output is gone (a closed pipe):
/// nobody reads the rest, and `println!` would panic.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(1);
        }
    }};
}

/// Prints a note to standard error, never panicking when it is closed (the exit code still
/// tells a script what happened).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The message printed for an error: its context and causes, outermost first, each said once.
/// Errors from different layers often repeat each other (an I/O error whose text a context
/// already quotes, or a context that a typed error's own message names again), and a reader
/// should see one sentence, not the same OS error twice.
pub fn error_report(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || parts.iter().any(|said| said.contains(&text)) {
            // Already said by an outer message.
            continue;
        }
        // A cause that repeats its context in full and adds to it says it all.
        if parts
            .last()
            .is_some_and(|last| text.contains(last.as_str()))
        {
            parts.pop();
        }
        parts.push(text);
    }
    parts.join(": ")
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

    #[test]
    fn error_reports_say_each_cause_once() {
        use anyhow::Context as _;
        let os = || std::io::Error::from(std::io::ErrorKind::NotFound);
        // A context that quotes its cause: the cause is not said again.
        let quoted = Err::<(), _>(os())
            .with_context(|| format!("input x.avro: {}", os()))
            .unwrap_err();
        assert_eq!(
            super::error_report(&quoted),
            format!("input x.avro: {}", os())
        );
        // A cause that repeats its context and adds to it: the context gives way.
        let repeated = Err::<(), _>(anyhow::anyhow!("keyring /k: {}", os()))
            .context("keyring /k")
            .unwrap_err();
        assert_eq!(
            super::error_report(&repeated),
            format!("keyring /k: {}", os())
        );
        // Distinct layers are all kept, outermost first.
        let layered = Err::<(), _>(os())
            .context("reading the schema")
            .context("config c.toml")
            .unwrap_err();
        assert_eq!(
            super::error_report(&layered),
            format!("config c.toml: reading the schema: {}", os())
        );
    }
}
