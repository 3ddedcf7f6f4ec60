//! The commands that talk to the schema registry: `schema register`, and the part of `check`
//! that compiles the rules against the latest version of each input subject.

use std::io::Write;

use anyhow::{bail, Context, Result};
use apache_avro::Schema;

use crate::config::{Config, PipelineConfig, RegistryConfig};
use crate::plan::{self, Plan, UnusedRules};
use crate::registry::{codes, RegisteredSchema, RegistryClient};
use crate::rules::Rules;
use crate::transform::Engine;

/// The subject a pipeline's raw records are registered under.
fn input_subject(
    registry: &RegistryConfig,
    pipeline: &PipelineConfig,
    plan: &Plan,
) -> Option<String> {
    let topic = pipeline.input_topic.as_deref()?;
    Some(registry.subject_strategy.subject(topic, &plan.input_name))
}

/// The subject a pipeline's derived schema is registered under.
fn output_subject(
    registry: &RegistryConfig,
    pipeline: &PipelineConfig,
    plan: &Plan,
) -> Option<String> {
    let topic = pipeline.output_topic.as_deref()?;
    let name = match &plan.output {
        Schema::Record(r) => r.name.fullname(None),
        _ => return None,
    };
    Some(registry.subject_strategy.subject(topic, &name))
}

/// The latest version of a pipeline's input subject, if it has one.
fn latest(client: &RegistryClient, subject: &str) -> Result<Option<RegisteredSchema>> {
    match client.latest(subject) {
        Ok(schema) => Ok(Some(schema)),
        Err(e) if e.code() == Some(codes::SUBJECT_NOT_FOUND) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("subject {subject}")),
    }
}

/// Compiles a pipeline's rules against a registered writer schema as the worker would.
fn compile(pipeline: &PipelineConfig, schema: &RegisteredSchema) -> Result<Plan, Vec<String>> {
    if schema.schema_type != "AVRO" {
        return Err(vec![format!("a {} schema, not Avro", schema.schema_type)]);
    }
    let writer = crate::registry::parse_schema(&schema.schema)
        .map_err(|e| vec![format!("not valid Avro: {e}")])?;
    let (rules, _) = Rules::from_specs(&pipeline.rules);
    plan::compile_with(&writer, &rules, UnusedRules::Allow)
}

/// `check`'s registry part: every pipeline's rules against the latest version of its input
/// subject. Fails if a field has no rule (the worker would dead-letter that version).
pub(super) fn check(config: &Config, engine: &Engine, out: &mut impl Write) -> Result<()> {
    let Some(registry) = &config.registry else {
        return Ok(());
    };
    let client = RegistryClient::new(registry)?;
    let mut failed = Vec::new();
    for (pipeline, local) in config.pipeline.iter().zip(engine.plans()) {
        let Some(subject) = input_subject(registry, pipeline, local) else {
            continue;
        };
        let Some(latest) = latest(&client, &subject)? else {
            writeln!(
                out,
                "[registry] {}: subject {subject} has no versions yet",
                pipeline.name
            )?;
            continue;
        };
        match compile(pipeline, &latest) {
            Ok(plan) if plan.input_name != local.input_name => {
                failed.push(pipeline.name.clone());
                writeln!(
                    out,
                    "[registry] {}: subject {subject}'s latest schema is {}, not {}",
                    pipeline.name, plan.input_name, local.input_name
                )?;
            }
            Ok(_) => writeln!(
                out,
                "[registry] {}: subject {subject} version {} (id {}): every field has a rule",
                pipeline.name,
                latest.version.unwrap_or_default(),
                latest.id
            )?,
            Err(problems) => {
                failed.push(pipeline.name.clone());
                writeln!(
                    out,
                    "[registry] {}: subject {subject} version {} (id {}) would be dead-lettered as unclassified-field:",
                    pipeline.name,
                    latest.version.unwrap_or_default(),
                    latest.id
                )?;
                for problem in problems {
                    writeln!(out, "  {problem}")?;
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "the rules of {} do not classify the latest registered schema",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `schema register`: registers the derived schema of each pipeline's local schema, and of
/// the latest version of its input subject, under its output subject; prints subjects and ids.
pub(super) fn register(config: &Config, engine: &Engine, out: &mut impl Write) -> Result<()> {
    let Some(registry) = &config.registry else {
        bail!("the config has no [registry] section");
    };
    let client = RegistryClient::new(registry)?;
    for (pipeline, local) in config.pipeline.iter().zip(engine.plans()) {
        let Some(subject) = output_subject(registry, pipeline, local) else {
            bail!("[{}] output_topic is required to register", pipeline.name);
        };
        let mut plans = vec![("local schema".to_owned(), local.clone())];
        if let Some(input) = input_subject(registry, pipeline, local) {
            if let Some(latest) = latest(&client, &input)? {
                match compile(pipeline, &latest) {
                    Ok(plan) if plan.input.canonical_form() != local.input.canonical_form() => {
                        plans.push((
                            format!("latest version of {input} (id {})", latest.id),
                            plan.into(),
                        ))
                    }
                    Ok(_) => {}
                    Err(problems) => writeln!(
                        out,
                        "{}: not registering for {input} id {}: {}",
                        pipeline.name,
                        latest.id,
                        problems.join("; ")
                    )?,
                }
            }
        }
        for (from, plan) in plans {
            let id = client
                .register(&subject, &plan.output_json.to_string())
                .with_context(|| format!("registering under {subject}"))?;
            writeln!(
                out,
                "{}: {subject} id {id} (derived from the {from})",
                pipeline.name
            )?;
        }
    }
    Ok(())
}
