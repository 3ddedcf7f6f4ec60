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
            let files = derived_files(&engine)?;
            if std::fs::symlink_metadata(&dir).is_ok() && !dir.is_dir() {
                anyhow::bail!("--out {} is not a directory", dir.display());
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Every target is checked before any is written: a refusal leaves `dir` as it was.
            for (name, _) in &files {
                let path = dir.join(name);
                let Ok(found) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if found.file_type().is_symlink() {
                    anyhow::bail!(
                        "{} is a symbolic link: schema derive writes its own files in --out and never through a link (remove it, or choose another directory); nothing written",
                        path.display()
                    );
                }
                if !found.is_file() {
                    anyhow::bail!(
                        "{} exists and is not a regular file; nothing written",
                        path.display()
                    );
                }
            }
            for (name, text) in &files {
                // Through a temporary beside it, renamed into place: a failed write leaves any
                // schema already there as it was. Schemas hold no data: readable by all.
                let path = dir.join(name);
                crate::fsio::write_atomically(&path, "derived schema", 0o644, text.as_bytes())?;
            }
            // Said once all are written: a closed standard output (exit 1) cannot stop the
            // command between two files.
            for (name, _) in &files {
                writeln!(out, "wrote {}", dir.join(name).display())?;
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

/// Each derived schema file's name and text, in config order: `<full name>.avsc` (Avro),
/// `<full name>.proto` (Protobuf), `<title>.schema.json` (JSON Schema). Two pipelines share a
/// name only with the same text (`Engine::from_config` refuses any other clash).
fn derived_files(engine: &Engine) -> Result<Vec<(String, String)>> {
    let mut files: Vec<(String, String)> = Vec::new();
    for plan in engine.plans() {
        files.push((output_schema_file(plan), output_schema_text(plan)));
    }
    for (index, _) in engine.json_plans() {
        if let Some(contract) = engine.proto(*index) {
            let name = format!("{}.proto", contract.output_name());
            files.push((name, contract.output_text.clone()));
        } else if let Some(contract) = engine.json_schema(*index) {
            let name = format!("{}.schema.json", contract.input.output_title());
            let mut text =
                serde_json::to_string_pretty(&contract.output).expect("JSON value serializes");
            text.push('\n');
            files.push((name, text));
        }
    }
    // The same file from two pipelines (same text) is written once; two texts for one name
    // would have the second overwrite the first, so they are refused.
    let mut unique: Vec<(String, String)> = Vec::with_capacity(files.len());
    for (name, text) in files {
        match unique.iter().find(|(n, _)| *n == name) {
            Some((_, first)) if *first == text => {}
            Some(_) => anyhow::bail!(
                "two pipelines derive different schemas named {name}: one name, one schema"
            ),
            None => unique.push((name, text)),
        }
    }
    Ok(unique)
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
