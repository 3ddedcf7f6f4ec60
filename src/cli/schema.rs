//! `pseudonymizer schema …`: the output schemas derived from each input schema and its rules,
//! written to files or registered in the schema registry.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::registry;
use crate::config::Config;
use crate::transform::Engine;

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Write the output schema derived from each input schema and its rules.
    Derive {
        /// The config whose pipelines to derive.
        #[arg(long)]
        config: PathBuf,
        /// The directory to write `<full name>.avsc` (Avro), `<title>.schema.json` (JSON
        /// Schema) and `<full name>.proto` (Protobuf) files into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Register each pipeline's derived schema in the `[registry]` (for the local schema and
    /// the latest version of its input subject); print subjects and ids.
    Register {
        /// The config whose pipelines to register.
        #[arg(long)]
        config: PathBuf,
    },
}

pub(super) fn schema(command: SchemaCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        SchemaCommand::Derive { config, out: dir } => {
            let config = Config::load(&config)?;
            let engine = Engine::from_config(&config)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for plan in engine.plans() {
                let path = dir.join(output_schema_file(plan));
                // Through a temporary beside it, renamed into place: a failed write leaves any
                // schema already there as it was. Schemas hold no data: readable by all.
                crate::fsio::write_atomically(
                    &path,
                    "derived schema",
                    0o644,
                    output_schema_text(plan).as_bytes(),
                )?;
                writeln!(out, "wrote {}", path.display())?;
            }
            for (index, _) in engine.json_plans() {
                if let Some(contract) = engine.proto(*index) {
                    let path = dir.join(format!("{}.proto", contract.output_name()));
                    crate::fsio::write_atomically(
                        &path,
                        "derived schema",
                        0o644,
                        contract.output_text.as_bytes(),
                    )?;
                    writeln!(out, "wrote {}", path.display())?;
                    continue;
                }
                let Some(contract) = engine.json_schema(*index) else {
                    continue;
                };
                let path = dir.join(format!("{}.schema.json", contract.input.output_title()));
                let mut text =
                    serde_json::to_string_pretty(&contract.output).expect("JSON value serializes");
                text.push('\n');
                crate::fsio::write_atomically(&path, "derived schema", 0o644, text.as_bytes())?;
                writeln!(out, "wrote {}", path.display())?;
            }
            Ok(())
        }
        SchemaCommand::Register { config } => {
            let config = Config::load(&config)?;
            let engine = Engine::from_config(&config)?;
            registry::register(&config, &engine, out)
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
