//! The file-mode commands, on Avro container files: `transform` (raw to sanitized),
//! `decrypt` (sanitized to JSON lines, envelopes opened, audited), `reseal` (envelopes under
//! the active key), `show` and `generate`; with `--pipeline`, `transform`, `decrypt` and
//! `reseal` read and write JSON lines instead (`crate::jsonl`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::{load, ConfigArgs};
use crate::audit::AuditLog;
use crate::file;
use crate::generate::Kind;
use crate::keys::Need;

/// `transform`: an Avro container file of raw events into a sanitized one (audited: a file of
/// guessed values through `transform` gives their tokens, as `lookup` does).
#[derive(Debug, Args)]
pub struct TransformArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The raw Avro container file to read (JSON lines with --pipeline).
    #[arg(long)]
    pub input: PathBuf,
    /// The sanitized Avro container file to write (JSON lines with --pipeline).
    #[arg(long)]
    pub output: PathBuf,
    /// A `format = "json"` pipeline: the input is JSON lines, one object per line, transformed
    /// by its rules into JSON lines. (An Avro container names its own schema: no flag needed.)
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Overrides the config's `audit_log` (else $PSEUDONYMIZER_AUDIT_LOG); transform refuses
    /// without one.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

/// `decrypt`: a sanitized file's events as JSON lines with envelopes opened (audited).
#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The sanitized Avro container file to read.
    #[arg(long)]
    pub input: PathBuf,
    /// Overrides the config's `audit_log`.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// A `format = "json"` pipeline: the input is JSON lines, as `transform --pipeline` or
    /// the pipeline's topic wrote them.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Go on past envelopes that do not open (tampered, wrong key, a key not in the keyring):
    /// each is printed as `{"unopened": WHY, "key_id": ID}` and counted, and the exit code
    /// is 0. Without it the first one ends the command with exit 1 before its event is
    /// printed. Envelopes under destroyed keys never stop it (erased on purpose).
    #[arg(long)]
    pub keep_going: bool,
}

/// `reseal`: every envelope of a sanitized file under the active encryption key.
#[derive(Debug, Args)]
pub struct ResealArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The sanitized Avro container file to read (JSON lines with --pipeline).
    #[arg(long)]
    pub input: PathBuf,
    /// The resealed Avro container file to write (JSON lines with --pipeline).
    #[arg(long)]
    pub output: PathBuf,
    /// A json, json-schema or protobuf pipeline: the input is JSON lines, as `transform
    /// --pipeline` or the pipeline's topic wrote them; the values around the envelopes are
    /// copied byte for byte.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Overrides the config's `audit_log` (reseal opens envelopes: audited).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

/// `show`: the first events of an Avro container file as JSON lines.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The Avro container file to read.
    #[arg(long)]
    pub input: PathBuf,
    /// How many events to print.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
}

/// `generate`: synthetic raw events to an Avro container file.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Which event schema to generate.
    #[arg(long, value_enum)]
    pub schema: Kind,
    /// How many events.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// The Avro container file to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Seed of the generator (the same seed gives the same events).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub(super) fn transform(args: TransformArgs, out: &mut dyn Write) -> Result<()> {
    let (config, engine, keys) = load(&args.config, Need::NEW_OUTPUT)?;
    let active = engine.active_keys(&keys)?;
    let json_plan = match &args.pipeline {
        None => None,
        Some(name) => Some(json_pipeline(&config, &engine, name)?),
    };
    // Audited like `lookup`: a `started` record on disk before any token is written, an
    // outcome record with the count of tokens after.
    let mut audit = AuditLog::open(args.audit_log.as_deref(), config.audit_log.as_deref())?;
    let key_ids: Vec<String> = active.pseudonym.iter().map(|k| k.id().to_owned()).collect();
    audit.append(
        "transform",
        key_ids.clone(),
        0,
        None,
        Some(&args.input),
        "started",
    )?;
    let started = std::time::Instant::now();
    let result = match &json_plan {
        Some(plan) => {
            let proto = config
                .pipeline
                .iter()
                .position(|p| Some(p.name.as_str()) == args.pipeline.as_deref())
                .and_then(|index| engine.proto(index));
            crate::jsonl::transform_lines(
                &engine,
                &active,
                plan,
                proto.map(|c| &**c),
                &args.input,
                &args.output,
            )
        }
        None => file::transform_file(&engine, &active, &args.input, &args.output),
    };
    let (tokens, outcome) = match &result {
        Ok(done) => (done.tokens, "ok"),
        Err(_) => (0, "failed"),
    };
    audit.append(
        "transform",
        key_ids,
        tokens,
        None,
        Some(&args.input),
        outcome,
    )?;
    let done = result.with_context(|| format!("transforming {}", args.input.display()))?;
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "transformed {} events ({} tokens) from {} to {} in {secs:.2} s",
        done.events,
        done.tokens,
        args.input.display(),
        args.output.display()
    )?;
    Ok(())
}

/// The json pipeline `--pipeline` names.
fn json_pipeline(
    config: &crate::config::Config,
    engine: &crate::transform::Engine,
    name: &str,
) -> Result<std::sync::Arc<crate::plan::json::JsonPlan>> {
    let index = config
        .pipeline
        .iter()
        .position(|p| p.name == name)
        .with_context(|| format!("no pipeline is named {}", crate::config::quote(name)))?;
    let plan = engine.json_plan(index).with_context(|| {
        format!(
            "pipeline {} is format avro: its files are Avro containers, which name their own schema (leave out --pipeline)",
            crate::config::quote(name)
        )
    })?;
    Ok(plan.clone())
}

pub(super) fn decrypt(args: DecryptArgs, out: &mut dyn Write) -> Result<()> {
    let DecryptArgs {
        config,
        input,
        audit_log,
        keep_going,
        pipeline,
    } = args;
    let (config, engine, keys) = load(&config, Need::ENVELOPES)?;
    let json_plan = match &pipeline {
        None => None,
        Some(name) => Some(json_pipeline(&config, &engine, name)?),
    };
    // With erasure notices configured, the tokens of every erased person: their events'
    // envelopes stay shut. A notice topic that cannot be read stops the command (it would
    // otherwise open an erased person's records).
    let erased = match config
        .kafka
        .as_ref()
        .and_then(|k| Some((k, k.erasure_topic.as_ref()?)))
    {
        Some((kafka, topic)) => {
            let (tokens, refused) = crate::subjects::kafka::erased_tokens(
                kafka,
                topic,
                std::time::Duration::from_secs(120),
            )
            .map_err(anyhow::Error::msg)
            .context("reading the erasure notices ([kafka] erasure_topic); nothing was opened")?;
            if refused > 0 {
                crate::note!(
                    "warning: {refused} records of the erasure topic are not notices; ignored"
                );
            }
            tokens
        }
        None => Default::default(),
    };
    let mut audit = AuditLog::open(audit_log.as_deref(), config.audit_log.as_deref())?;
    // Write-ahead: on disk before the first plaintext leaves, or nothing is printed.
    let key_ids: Vec<String> = keys.encryption_key_ids();
    audit.append("decrypt", key_ids, 0, None, Some(&input), "started")?;
    let mut report = file::DecryptReport::default();
    let result = match &json_plan {
        Some(plan) => {
            crate::jsonl::decrypt_lines(plan, &keys, &input, keep_going, &erased, out, &mut report)
        }
        None => file::decrypt_file(
            &engine,
            &keys,
            &input,
            keep_going,
            &erased,
            out,
            &mut report,
        ),
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    audit.append(
        "decrypt",
        report.key_ids.iter().cloned().collect(),
        report.opened,
        Some(report.unopened()),
        Some(&input),
        outcome,
    )?;
    result.with_context(|| format!("decrypting {}", input.display()))?;
    crate::note!(
        "{} events, {} envelopes opened, {} not opened ({} under destroyed keys, {} did not open)",
        report.events,
        report.opened,
        report.unopened(),
        report.destroyed,
        report.failed
    );
    if report.withheld_events > 0 {
        crate::note!(
            "{} events carry an erased person's token: their {} envelopes were withheld, not opened",
            report.withheld_events,
            report.withheld
        );
    }
    if report.opened + report.unopened() + report.withheld == 0 {
        crate::note!(
            "{} holds no envelope ({} events, every sealed field empty)",
            input.display(),
            report.events
        );
    }
    if report.failed > 0 {
        crate::note!(
            "warning: {} envelopes did not open (tampered, wrong key, or a key not in the keyring); marked \"unopened\" in the output (--keep-going)",
            report.failed
        );
    }
    Ok(())
}

pub(super) fn reseal(args: ResealArgs, out: &mut dyn Write) -> Result<()> {
    let ResealArgs {
        config,
        input,
        output,
        pipeline,
        audit_log,
    } = args;
    let (loaded, engine, keys) = load(&config, Need::ENVELOPES)?;
    let json_plan = match &pipeline {
        None => None,
        Some(name) => Some(json_pipeline(&loaded, &engine, name)?),
    };
    let mut audit = AuditLog::open(audit_log.as_deref(), loaded.audit_log.as_deref())?;
    let active = keys.encryption()?.clone();
    let key_ids = keys.encryption_key_ids();
    audit.append("reseal", key_ids.clone(), 0, None, Some(&input), "started")?;
    let result = match &json_plan {
        Some(plan) => crate::jsonl::reseal_lines(plan, &keys, &active, &input, &output),
        None => file::reseal_file(&engine, &keys, &active, &input, &output),
    };
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

pub(super) fn show(args: ShowArgs, out: &mut dyn Write) -> Result<()> {
    for event in file::read_json(&args.input, args.count)? {
        writeln!(out, "{event}")?;
    }
    Ok(())
}

pub(super) fn generate(args: GenerateArgs, out: &mut dyn Write) -> Result<()> {
    let GenerateArgs {
        schema,
        count,
        output,
        seed,
    } = args;
    file::generate_file(schema, count, seed, &output)?;
    writeln!(
        out,
        "wrote {count} {schema:?} events to {}",
        output.display()
    )?;
    Ok(())
}
