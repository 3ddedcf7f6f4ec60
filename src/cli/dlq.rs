//! `pseudonymizer dlq …`: dead letters opened and produced to their source topics again.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::{load, ConfigArgs};
use crate::audit::AuditLog;
use crate::keys::Need;

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
        audit_log: Option<std::path::PathBuf>,
        /// Replay only dead letters of this reason (repeatable). Default: the reasons a fix
        /// can cure (unclassified-field, bad-schema, output-schema-refused, unknown-schema-id,
        /// oversize); poison (bad-magic, corrupt-avro, corrupt-json, corrupt-protobuf, empty) stays.
        #[arg(long = "reason")]
        reasons: Vec<String>,
    },
}

pub(super) fn dlq(command: DlqCommand, out: &mut dyn Write) -> Result<()> {
    let DlqCommand::Replay {
        config,
        idle_secs,
        audit_log,
        reasons,
    } = command;
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
    let kafka = config
        .kafka
        .as_ref()
        .context("the config has no [kafka] section")?;
    // Its consumer and producer are the worker's: the same properties are refused.
    let problems = crate::worker::property_problems(kafka);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let mut audit = AuditLog::open(audit_log.as_deref(), config.audit_log.as_deref())?;
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
            None => "poison: bad-magic, corrupt-avro, corrupt-json, corrupt-protobuf, empty".to_owned(),
            Some(chosen) => format!("all but {}", chosen.join(", ")),
        }
    )?;
    Ok(())
}
