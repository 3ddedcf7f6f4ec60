//! `pseudonymizer run`: logging set up, signal handlers installed before anything else, then
//! the stream worker until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::{load_config, ConfigArgs};

pub(super) fn run_worker(args: &ConfigArgs, log_format: &str) -> Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log_format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format must be text or json, not {other:?}"),
    }
    if let Some(hardened) = super::HARDENING.get() {
        if hardened.core_limit_zero && hardened.not_dumpable {
            tracing::info!(
                kek_taken_from_environment = hardened.kek_scrubbed,
                "core dumps off (RLIMIT_CORE 0, not dumpable)"
            );
        } else {
            tracing::warn!(
                core_limit_zero = hardened.core_limit_zero,
                not_dumpable = hardened.not_dumpable,
                "core dumps are possible: a core file would hold every key in memory ({} is set, or the kernel refused)",
                crate::hardening::ALLOW_CORE_DUMPS_ENV
            );
        }
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
    let (mut config, engine, keyring_path) = load_config(args)?;
    // The config as `check` validates it, before anything binds, waits for a KMS or connects:
    // a config `check` refuses never starts (the keys are checked again once loaded).
    crate::worker::validate(&config, None)
        .with_context(|| format!("config {}", args.config.display()))?;
    let engine = std::sync::Arc::new(engine);
    let metrics = crate::metrics::Metrics::new();
    if let Some(db) = engine.country_db() {
        tracing::info!(database = %db.describe(), "[geoip] country database loaded");
        metrics
            .geoip_build_timestamp
            .with_label_values::<&str>(&[])
            .set(i64::try_from(db.build_epoch()).unwrap_or(i64::MAX));
    }
    // Health endpoints first, so that a start held up by the KMS is visible (`/readyz` 503).
    if let Some(listen) = config
        .kafka
        .as_ref()
        .and_then(|k| k.metrics_listen.as_ref())
    {
        crate::endpoint::serve(&metrics, listen)
            .with_context(|| format!("metrics_listen {listen}"))?;
    }
    let Some((key_watch, keys)) = runtime.block_on(start_keys(
        &keyring_path,
        &engine,
        &config,
        &metrics,
        stopped.clone(),
    ))?
    else {
        return Ok(());
    };
    runtime.spawn(key_watch.run(hangup, stopped.clone()));
    loop {
        // The worker runs until SIGTERM or SIGINT, or until a file its config references (a
        // password, a certificate) changes: then it drains and commits as for a SIGTERM, and
        // starts again with the config's connection settings read anew.
        let (reconnect, reconnecting) = tokio::sync::watch::channel(false);
        let watcher = runtime.spawn(watch_referenced_files(
            config.referenced_files.clone(),
            stopped.clone(),
            reconnect,
        ));
        let stats = runtime.block_on(async {
            let worker = crate::worker::Worker {
                engine: engine.clone(),
                keys: keys.clone(),
                metrics: metrics.clone(),
                treatment: crate::worker::Treatment::Sanitize,
            };
            worker.run(&config, reconnecting).await
        })?;
        watcher.abort();
        if *stopped.borrow() {
            tracing::info!(?stats, "exit");
            return Ok(());
        }
        tracing::info!(
            ?stats,
            "clients stopped; reading the config's connection settings again"
        );
        let Some(fresh) = runtime.block_on(reload(args, stopped.clone())) else {
            return Ok(());
        };
        // Only the connection settings change in place; rules and keys are the running ones.
        config.kafka = fresh.kafka.clone();
        config.registry = fresh.registry.clone();
        config.referenced_files = fresh.referenced_files.clone();
    }
}

/// The keyring's first load. A KMS that cannot be reached (or answers with a transient
/// failure) is retried with backoff (2 s doubling to a minute), logged at error level each
/// time, while `/readyz` says 503; any other failure ends the start. `None` if a shutdown came
/// first.
async fn start_keys(
    keyring_path: &std::path::Path,
    engine: &std::sync::Arc<crate::transform::Engine>,
    config: &crate::config::Config,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<
    Option<(
        crate::worker::keywatch::KeyWatch,
        tokio::sync::watch::Receiver<std::sync::Arc<crate::transform::ActiveKeys>>,
    )>,
> {
    let mut wait = std::time::Duration::from_secs(2);
    loop {
        let attempt = crate::worker::keywatch::KeyWatch::start(
            keyring_path.to_owned(),
            engine.clone(),
            config.rotation.clone(),
            metrics.clone(),
        );
        match attempt {
            Ok(started) => return Ok(Some(started)),
            Err(error) if error.is_transient() => {
                tracing::error!(
                    keyring = %config.redact(&keyring_path.display().to_string()),
                    %error,
                    retry_in_secs = wait.as_secs(),
                    "cannot load the keyring: the KMS is unavailable; not ready, retrying"
                );
            }
            Err(error) => {
                let error = anyhow::Error::new(error)
                    .context(format!("keyring {}", keyring_path.display()));
                return Err(config.redact_error(error.as_ref()).into());
            }
        }
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(60));
    }
}

/// The config read anew, retried every 5 s while it is refused (a half-written secret, say);
/// `None` if a shutdown came first.
async fn reload(
    args: &ConfigArgs,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Option<crate::config::Config> {
    loop {
        match crate::config::Config::load(&args.config) {
            Ok(config) => return Some(config),
            Err(e) => {
                tracing::error!(error = %e, "the config cannot be read again; its clients stay stopped, retrying in 5 s");
            }
        }
        tokio::select! {
            _ = stopped.changed() => return None,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
        if *stopped.borrow() {
            return None;
        }
    }
}

/// Sends on `reconnect` when SIGTERM comes (`stopped`) or when the content of one of `files`
/// changes (checked every second, by digest: a secret's bytes are never kept here).
async fn watch_referenced_files(
    files: Vec<PathBuf>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    reconnect: tokio::sync::watch::Sender<bool>,
) {
    let digest = |path: &PathBuf| -> Option<[u8; 32]> {
        use sha2::Digest as _;
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).ok()?);
        Some(sha2::Sha256::digest(&bytes[..]).into())
    };
    let before: Vec<_> = files.iter().map(digest).collect();
    loop {
        if *stopped.borrow() {
            let _ = reconnect.send(true);
            return;
        }
        tokio::select! {
            _ = stopped.changed() => continue,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if let Some(changed) = files
            .iter()
            .zip(&before)
            .find(|(path, before)| digest(path) != **before)
            .map(|(path, _)| path)
        {
            tracing::info!(file = %changed.display(), "a file the config references changed; reconnecting (drain, commit, new clients)");
            let _ = reconnect.send(true);
            return;
        }
    }
}
