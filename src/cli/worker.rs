//! `pseudonymizer run`: logging set up, signal handlers installed before anything else, then
//! the stream worker until SIGTERM or SIGINT.

use anyhow::{bail, Context, Result};

use super::{load_config, ConfigArgs};

pub(super) fn run_worker(args: &ConfigArgs, log_format: &str) -> Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log_format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format must be text or json, not {other:?}"),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    // Signal handlers first: a SIGTERM during start-up is a clean shutdown too, and a SIGHUP
    // must never fall through to its default action (terminate).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let hangup = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            let _ = stop.send(true);
        });
        Ok::<_, std::io::Error>(hangup)
    })?;
    let (config, engine, keyring_path) = load_config(args)?;
    let engine = std::sync::Arc::new(engine);
    let metrics = crate::metrics::Metrics::new();
    let (key_watch, keys) = crate::worker::keywatch::KeyWatch::start(
        keyring_path.clone(),
        engine.clone(),
        config.rotation.clone(),
        metrics.clone(),
    )
    .with_context(|| format!("keyring {}", keyring_path.display()))?;
    runtime.spawn(key_watch.run(hangup, stopped.clone()));
    let stats = runtime.block_on(async {
        let worker = crate::worker::Worker {
            engine,
            keys,
            metrics,
            treatment: crate::worker::Treatment::Sanitize,
        };
        worker.run(&config, stopped).await
    })?;
    tracing::info!(?stats, "exit");
    Ok(())
}
