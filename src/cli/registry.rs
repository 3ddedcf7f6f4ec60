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
fn compile(
    pipeline: &PipelineConfig,
    engine: &Engine,
    schema: &RegisteredSchema,
) -> Result<Plan, Vec<String>> {
    if schema.schema_type != "AVRO" {
        return Err(vec![format!("a {} schema, not Avro", schema.schema_type)]);
    }
    let writer = crate::registry::parse_schema(&schema.schema)
        .map_err(|e| vec![format!("not valid Avro: {e}")])?;
    let (rules, _) = Rules::from_specs(&pipeline.rules);
    let rules = rules.with_country_db(engine.country_db().cloned());
    plan::compile_with(&writer, &rules, UnusedRules::Allow)
}

/// The latest version of `subject` whose writer schema is the record `record` (a subject
/// shared by several records, as `topic` naming gives a topic that carries several, holds
/// versions of each; the worker matches pipelines by record name, and so does this).
fn latest_of_record(
    client: &RegistryClient,
    subject: &str,
    record: &str,
) -> Result<Option<RegisteredSchema>> {
    let versions = match client.versions(subject) {
        Ok(versions) => versions,
        Err(e) if e.code() == Some(codes::SUBJECT_NOT_FOUND) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("subject {subject}")),
    };
    for version in versions.into_iter().rev() {
        let schema = client
            .version(subject, version)
            .with_context(|| format!("subject {subject} version {version}"))?;
        let name = crate::registry::parse_schema(&schema.schema)
            .ok()
            .and_then(|s| match s {
                Schema::Record(r) => Some(r.name.fullname(None)),
                _ => None,
            });
        if name.as_deref() == Some(record) {
            return Ok(Some(RegisteredSchema {
                version: Some(version),
                ..schema
            }));
        }
    }
    Ok(None)
}

/// `check`'s registry part: every pipeline's rules against the latest version of its record
/// in its input subject, read as the worker reads it (by record name: a shared raw topic's
/// subject holds versions of several records). Fails if a field has no rule (the worker
/// would dead-letter that version); prints every rule that names no field of it.
pub(super) fn check(config: &Config, engine: &Engine, out: &mut dyn Write) -> Result<()> {
    let Some(registry) = &config.registry else {
        return Ok(());
    };
    let client = RegistryClient::new(registry)?;
    let mut failed = Vec::new();
    for (pipeline, local) in config.avro_pipelines().zip(engine.plans()) {
        let Some(subject) = input_subject(registry, pipeline, local) else {
            continue;
        };
        let Some(latest) = latest_of_record(&client, &subject, &local.input_name)? else {
            writeln!(
                out,
                "[registry] {}: subject {subject} has no version of {} yet",
                pipeline.name, local.input_name
            )?;
            continue;
        };
        let version = latest.version.unwrap_or_default();
        match compile(pipeline, engine, &latest) {
            Ok(plan) => {
                writeln!(
                    out,
                    "[registry] {}: subject {subject} version {version} (id {}, {}): every field has a rule",
                    pipeline.name, latest.id, local.input_name
                )?;
                for rule in &plan.unused_rules {
                    writeln!(
                        out,
                        "[registry] {}: rule {rule:?} names no field of version {version} (a typo, or a field of another version)",
                        pipeline.name
                    )?;
                }
            }
            Err(problems) => {
                failed.push(pipeline.name.clone());
                writeln!(
                    out,
                    "[registry] {}: subject {subject} version {version} (id {}) would be dead-lettered as unclassified-field:",
                    pipeline.name, latest.id
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
pub(super) fn register(config: &Config, engine: &Engine, out: &mut dyn Write) -> Result<()> {
    let Some(registry) = &config.registry else {
        bail!("the config has no [registry] section");
    };
    let client = RegistryClient::new(registry)?;
    for (pipeline, local) in config.avro_pipelines().zip(engine.plans()) {
        let Some(subject) = output_subject(registry, pipeline, local) else {
            bail!("[{}] output_topic is required to register", pipeline.name);
        };
        let mut plans = vec![("local schema".to_owned(), local.clone())];
        if let Some(input) = input_subject(registry, pipeline, local) {
            if let Some(latest) = latest(&client, &input)? {
                match compile(pipeline, engine, &latest) {
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
    for (index, pipeline) in config.pipeline.iter().enumerate() {
        if let Some(contract) = engine.proto(index) {
            let Some(topic) = pipeline.output_topic.as_deref() else {
                bail!("[{}] output_topic is required to register", pipeline.name);
            };
            let subject = registry
                .subject_strategy
                .subject(topic, contract.output_name());
            let id = client
                .register_as(&subject, &contract.output_text, "PROTOBUF")
                .with_context(|| format!("registering under {subject}"))?;
            writeln!(
                out,
                "{}: {subject} id {id} (derived from the local .proto)",
                pipeline.name
            )?;
            continue;
        }
        let Some(contract) = engine.json_schema(index) else {
            continue;
        };
        let Some(topic) = pipeline.output_topic.as_deref() else {
            bail!("[{}] output_topic is required to register", pipeline.name);
        };
        let subject = registry
            .subject_strategy
            .subject(topic, &contract.input.output_title());
        let id = client
            .register_as(&subject, &contract.output.to_string(), "JSON")
            .with_context(|| format!("registering under {subject}"))?;
        writeln!(
            out,
            "{}: {subject} id {id} (derived from the local JSON Schema)",
            pipeline.name
        )?;
    }
    Ok(())
}
