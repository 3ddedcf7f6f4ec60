//! `pseudonymizer check`: a config, its keyring, its rules and (with `--connect`) its cluster
//! checked without processing anything.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{load, registry, ConfigArgs};
use crate::config::{Config, KafkaConfig};
use crate::keys::Need;

/// `check`: a config (and its keyring) checked without processing anything.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Also connect to the Kafka cluster with the `[kafka]` settings (TLS, SASL) and look
    /// up the input, output and dead-letter topics.
    #[arg(long)]
    pub connect: bool,
}

pub(super) fn check(args: CheckArgs, out: &mut dyn Write) -> Result<()> {
    let CheckArgs {
        config: args,
        connect,
    } = args;
    let (config, engine, keys) = load(&args, Need::NEW_OUTPUT)?;
    if let Some(kafka) = &config.kafka {
        crate::worker::check_kafka(kafka)
            .with_context(|| format!("config {}", args.config.display()))?;
        writeln!(out, "[kafka]: ok")?;
        if connect {
            check_connection(&config, kafka, out)?;
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
    registry::check(&config, &engine, out)
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
