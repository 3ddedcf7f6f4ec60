//! `pseudonymizer check`: a config, its keyring, its rules and (with `--connect`) its cluster
//! checked without processing anything.
//!
//! `check` is the gate before a rollout, so it refuses exactly what `run` refuses: the
//! worker's settings go through [`crate::worker::validate`], the function `run` calls before
//! it consumes. Every problem found is reported at once (loading, rules, keyring, worker
//! settings), each naming its setting, none showing a value read through a reference. Exit 0:
//! `run` would start with this config; exit 1: it would not, and the problems say why.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{registry, ConfigArgs};
use crate::config::{Config, KafkaConfig};
use crate::keys::{KeySet, Keyring, Need};
use crate::transform::{ActiveKeys, Engine};

/// How `check` and `explain` print their report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document on standard output, for scripts.
    Json,
}

/// `check`: a config (and its keyring) checked without processing anything.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Also connect to the Kafka cluster with the `[kafka]` settings (TLS, SASL) and look
    /// up the input, output and dead-letter topics. Without it nothing connects to Kafka.
    #[arg(long)]
    pub connect: bool,
    /// `text` (lines), or `json`: one document `{ "ok": bool, "problems": [...], ... }`.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// A config loaded as far as it goes: what loaded, and every problem met on the way.
pub(super) struct Loaded {
    pub config: Option<Config>,
    pub engine: Option<Engine>,
    /// The keyring used (the config's, or `--keyring`).
    pub keyring_path: Option<PathBuf>,
    pub keys: Option<KeySet>,
    pub active: Option<ActiveKeys>,
    pub problems: Vec<String>,
}

/// Loads the config, compiles its rules and loads its keyring's active keys, going on past
/// each failure that does not stop the next step, so that every problem is found in one run.
/// Messages never show a value read through a reference.
pub(super) fn load_all(args: &ConfigArgs) -> Loaded {
    let mut loaded = Loaded {
        config: None,
        engine: None,
        keyring_path: None,
        keys: None,
        active: None,
        problems: Vec::new(),
    };
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            loaded.problems = e.problems();
            return loaded;
        }
    };
    match Engine::from_config(&config) {
        Ok(engine) => loaded.engine = Some(engine),
        Err(e) => loaded
            .problems
            .extend(e.problems().iter().map(|p| config.redact(p))),
    }
    let keyring_path = args
        .keyring
        .clone()
        .unwrap_or_else(|| config.keyring.clone());
    match Keyring::load_for(&keyring_path, Need::NEW_OUTPUT) {
        Ok(keyring) => loaded.keys = Some(KeySet::from_keyring(&keyring)),
        Err(e) => loaded
            .problems
            .push(config.redact(&keyring_message(&keyring_path, &e))),
    }
    if let (Some(engine), Some(keys)) = (&loaded.engine, &loaded.keys) {
        match engine.active_keys(keys) {
            Ok(active) => loaded.active = Some(active),
            Err(e) => loaded
                .problems
                .push(config.redact(&keyring_message(&keyring_path, &e))),
        }
    }
    loaded.keyring_path = Some(keyring_path);
    loaded.config = Some(config);
    loaded
}

/// A keyring error as one message naming the keyring once.
fn keyring_message(path: &std::path::Path, error: &(dyn std::error::Error + 'static)) -> String {
    let message = crate::config::chain_message(error);
    let shown = path.display().to_string();
    if message.contains(&shown) {
        message
    } else {
        format!("keyring {shown}: {message}")
    }
}

pub(super) fn check(args: CheckArgs, out: &mut dyn Write) -> Result<()> {
    let CheckArgs {
        config: config_args,
        connect,
        format,
    } = args;
    let mut loaded = load_all(&config_args);
    let mut lines: Vec<String> = Vec::new();
    let mut connected = false;
    if let Some(config) = &loaded.config {
        // The worker's settings, by the function `run` calls (keys: when they loaded; a
        // keyring that did not load is a problem already).
        match &config.kafka {
            Some(_) => {
                if let Err(e) = crate::worker::validate(config, loaded.active.as_ref()) {
                    loaded.problems.extend(e.problems());
                }
            }
            None => lines
                .push("[kafka]: none (file mode only: `run` needs a [kafka] section)".to_owned()),
        }
    }
    if loaded.problems.is_empty() {
        if let (Some(config), Some(engine), Some(active)) =
            (&loaded.config, &loaded.engine, &loaded.active)
        {
            if config.kafka.is_some() {
                lines.push("[kafka]: ok".to_owned());
            }
            for plan in engine.plans() {
                lines.push(format!(
                    "{}: {} rules, ok",
                    plan.input_name,
                    plan.rules.iter().count()
                ));
            }
            for (index, plan) in engine.json_plans() {
                let format = match (engine.json_schema(*index), engine.proto(*index)) {
                    (Some(contract), _) => format!("json-schema {}", contract.input.title),
                    (_, Some(contract)) => {
                        format!("protobuf {}", contract.input.message.full_name())
                    }
                    _ => "json".to_owned(),
                };
                lines.push(format!(
                    "[{}] {format}: {} rules, keys without a rule {}, ok",
                    plan.name,
                    plan.rules.iter().count(),
                    match plan.unknown {
                        crate::config::UnknownKeys::DeadLetter => "dead-lettered",
                        crate::config::UnknownKeys::Drop => "dropped",
                    }
                ));
            }
            if let Some(db) = engine.country_db() {
                lines.push(format!("[geoip] database: {}", db.describe()));
            }
            let id = |k: Option<&str>| k.unwrap_or("none").to_owned();
            lines.push(format!(
                "active keys: pseudonym {}, encryption {}",
                id(active.pseudonym.as_deref().map(|k| k.id())),
                id(active.encryption.as_deref().map(|k| k.id()))
            ));
            // The registry part (it asks the registry, as `run` does at start).
            let mut said = Vec::new();
            if let Err(e) = registry::check(config, engine, &mut said) {
                loaded
                    .problems
                    .push(config.redact(&crate::config::chain_message(e.as_ref())));
            }
            lines.extend(String::from_utf8_lossy(&said).lines().map(str::to_owned));
            match (&config.kafka, connect) {
                (Some(kafka), true) if loaded.problems.is_empty() => {
                    let mut said = Vec::new();
                    match check_connection(config, kafka, &mut said) {
                        Ok(()) => connected = true,
                        Err(e) => loaded
                            .problems
                            .push(config.redact(&crate::config::chain_message(e.as_ref()))),
                    }
                    lines.extend(String::from_utf8_lossy(&said).lines().map(str::to_owned));
                }
                (None, true) => loaded
                    .problems
                    .push("--connect: the config has no [kafka] section".to_owned()),
                (Some(_), false) => {
                    lines.push("not connected: run with --connect to reach the cluster".to_owned())
                }
                _ => {}
            }
        }
    }
    let problems = &loaded.problems;
    match format {
        Format::Text => {
            for line in &lines {
                writeln!(out, "{line}")?;
            }
        }
        Format::Json => {
            let document = json!({
                "ok": problems.is_empty(),
                "config": config_args.config.display().to_string(),
                // At most MAX_LISTED: a schema of thousands of fields without rules must not
                // make a document of megabytes; the count says how many there are.
                "problems": problems.iter().take(crate::config::MAX_LISTED).collect::<Vec<_>>(),
                "problem_count": problems.len(),
                "pipelines": loaded.engine.as_ref().map(|engine| engine
                    .plans()
                    .iter()
                    .map(|plan| json!({
                        "format": "avro",
                        "schema": plan.input_name,
                        "rules": plan.rules.iter().count(),
                    }))
                    .chain(engine.json_plans().iter().map(|(index, plan)| {
                        match (engine.json_schema(*index), engine.proto(*index)) {
                            (Some(contract), _) => json!({
                                "format": "json-schema",
                                "pipeline": plan.name,
                                "schema": contract.input.title,
                                "rules": plan.rules.iter().count(),
                            }),
                            (_, Some(contract)) => json!({
                                "format": "protobuf",
                                "pipeline": plan.name,
                                "schema": contract.input.message.full_name(),
                                "rules": plan.rules.iter().count(),
                            }),
                            _ => json!({
                                "format": "json",
                                "pipeline": plan.name,
                                "rules": plan.rules.iter().count(),
                            }),
                        }
                    }))
                    .collect::<Vec<_>>()),
                "keys": loaded.active.as_ref().map(|active| json!({
                    "pseudonym": active.pseudonym.as_deref().map(|k| k.id()),
                    "encryption": active.encryption.as_deref().map(|k| k.id()),
                })),
                "connected": connected,
                "said": lines,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        }
    }
    if !problems.is_empty() {
        let shown: Vec<String> = problems
            .iter()
            .take(crate::config::MAX_LISTED)
            .map(|p| crate::config::shorten(p, crate::config::MAX_LINE))
            .collect();
        let more = problems.len().saturating_sub(shown.len());
        bail!(
            "config {} is refused ({} problem{}):\n  {}{}",
            config_args.config.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            shown.join("\n  "),
            if more > 0 {
                format!("\n  … and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// `check --connect`: the cluster answers with the config's settings, and every topic the
/// worker reads or writes exists.
fn check_connection(config: &Config, kafka: &KafkaConfig, out: &mut dyn Write) -> Result<()> {
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
