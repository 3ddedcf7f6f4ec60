//! `pseudonymizer demo` (the README's main command) and `bench` (end-to-end throughput, with
//! the `bench-worker` child process it runs for each measurement).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};

pub(super) fn demo(config: PathBuf, brokers: Option<String>, events: usize) -> Result<()> {
    // The worker's warnings and errors (a stall, records deleted before they were read)
    // reach the terminal; RUST_LOG=info shows its whole log.
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(crate::demo::run(&config, brokers, events))
}

pub(super) fn bench(
    config: PathBuf,
    brokers: String,
    events: usize,
    partitions: i32,
    rounds: usize,
    mode: String,
    subjects: u64,
) -> Result<()> {
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
        subjects,
    ))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn bench_worker(
    config: PathBuf,
    brokers: String,
    topic: String,
    events: u64,
    treatment: String,
    mode: String,
    extras: crate::bench::Extras,
    out: &mut dyn Write,
) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mode = match mode.as_str() {
        "at-least-once" => crate::config::DeliveryMode::AtLeastOnce,
        "exactly-once" => crate::config::DeliveryMode::ExactlyOnce,
        other => bail!("--mode must be at-least-once or exactly-once, not {other:?}"),
    };
    let treatment = match treatment.as_str() {
        "sanitize" => crate::worker::Treatment::Sanitize,
        "pass-through" => crate::worker::Treatment::PassThrough,
        "floor" => {
            let measurement = runtime.block_on(crate::bench::measure_floor(
                &config, &brokers, &topic, events, mode,
            ))?;
            writeln!(out, "{}", serde_json::to_string(&measurement)?)?;
            return Ok(());
        }
        other => bail!("--treatment must be sanitize, pass-through or floor, not {other:?}"),
    };
    let measurement = runtime.block_on(crate::bench::measure(
        &config, &brokers, &topic, events, treatment, mode, extras,
    ))?;
    writeln!(out, "{}", serde_json::to_string(&measurement)?)?;
    Ok(())
}
