//! `pseudonymizer demo`: the whole product in one command.
//!
//! Without `--brokers` it starts an in-process Kafka cluster (librdkafka's mock cluster), so
//! nothing needs installing. It creates the raw, analytics and dead-letter topics, starts the
//! worker with a throwaway keyring, produces synthetic calls and messages (and a few poison
//! records) while the worker consumes them, shows live progress, then prints raw and sanitized
//! events side by side and the figures: wall clock, the worker's CPU per record, the transform
//! alone. If records stop moving it says where and why, and fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use apache_avro::types::Value;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::config::{Config, KafkaConfig};
use crate::connect;
use crate::file::plain_json;
use crate::keys::{KeySet, Keyring};
use crate::metrics::Metrics;
use crate::transform::Engine;
use crate::worker::{self, route::frame, Treatment, Worker};

const RAW: &str = "demo.comms.raw";
const CALLS: &str = "demo.comms.calls.sanitized";
const MESSAGES: &str = "demo.comms.messages.sanitized";
const DLQ: &str = "demo.comms.dlq";

/// The demo keeps the producer at most this many records ahead of the worker. The in-process
/// cluster keeps only 5 MiB per partition and deletes older records (librdkafka's
/// `rdkafka_mock.c`); 20,000 records are about 2 MiB per raw partition.
const MAX_AHEAD: u64 = 20_000;
/// No record moving for this long while some are missing: the demo says why and stops.
const STALL: Duration = Duration::from_secs(10);

/// Runs the demo with `events` synthetic events, against `brokers` or an in-process cluster.
pub async fn run(
    config_path: &std::path::Path,
    brokers: Option<String>,
    events: usize,
) -> Result<()> {
    let topics = [(RAW, 3), (CALLS, 3), (MESSAGES, 3), (DLQ, 1)];
    // The mock cluster lives as long as this function. Its topics are made through its own
    // API: its admin API answers CreateTopics only after 60 s.
    let mut config = Config::load(config_path)?;
    let (_cluster, brokers) = match brokers {
        Some(b) => {
            // Already existing topics (a second run) are fine. The config's [kafka] connection
            // settings (TLS, SASL) apply, with these brokers.
            let kafka = config
                .kafka
                .as_mut()
                .context("the config has no [kafka] section")?;
            kafka.brokers = b.clone();
            crate::bench::create_topics(kafka, &topics).await?;
            (None, b)
        }
        None => {
            let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
            for (topic, partitions) in topics {
                cluster.create_topic(topic, partitions, 1)?;
            }
            let bootstrap = cluster.bootstrap_servers();
            (Some(cluster), bootstrap)
        }
    };
    let in_process = _cluster.is_some();
    if in_process {
        crate::say!("brokers: {brokers} (librdkafka's in-process test cluster)");
    } else {
        crate::say!("brokers: {brokers}");
    }

    let group = format!("pseudonymizer-demo-{}", std::process::id());
    {
        let kafka = config
            .kafka
            .as_mut()
            .context("the config has no [kafka] section")?;
        kafka.brokers = brokers.clone();
        if in_process {
            // The in-process cluster speaks plain Kafka only.
            kafka.properties.clear();
            kafka.consumer_properties.clear();
            kafka.producer_properties.clear();
        }
        kafka.group_id = group;
        kafka.dlq_topic = DLQ.into();
        kafka.metrics_listen = None;
    }
    for (pipeline, output) in config.pipeline.iter_mut().zip([CALLS, MESSAGES]) {
        pipeline.input_topic = Some(RAW.into());
        pipeline.output_topic = Some(output.into());
    }
    let engine = Arc::new(Engine::from_config(&config)?);
    let keys = KeySet::from_keyring(&Keyring::generate());
    let active = engine.active_keys(&keys)?;
    crate::say!(
        "throwaway keys: pseudonym {}, encryption {}",
        active.pseudonym.as_ref().map_or("-", |k| k.id()),
        active.encryption.as_ref().map_or("-", |k| k.id())
    );

    // The worker first, on threads of its own (so that its CPU time can be told apart from
    // the producer's and the in-process cluster's); the producer then feeds it.
    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = Worker {
        engine: engine.clone(),
        keys: worker::fixed_keys(active),
        metrics: metrics.clone(),
        treatment: Treatment::Sanitize,
    };
    let worker_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(WORKER_THREAD)
        .enable_all()
        .build()?;
    let worker_config = config.clone();
    let handle = worker_runtime.spawn(async move { worker.run(&worker_config, stopped).await });
    let kafka = config
        .kafka
        .as_ref()
        .context("the config has no [kafka] section")?;
    let result = feed_and_watch(&engine, kafka, events, &metrics, &handle, in_process).await;
    if let Ok(fed) = &result {
        crate::say!(
            "all {} records accounted for; stopping the worker (drain, flush, commit)",
            fed.figures.records
        );
    }
    stop.send(true).ok();
    let stats = match result {
        Ok(run) => {
            let stats = handle.await??;
            Some((run, stats))
        }
        Err(e) => {
            worker_runtime.shutdown_background();
            return Err(e);
        }
    };
    worker_runtime.shutdown_background();
    let Some((run, stats)) = stats else {
        return Ok(());
    };

    crate::say!("reading the last call and message back from the analytics topics");
    show_samples(&engine, kafka, run.samples).await?;
    report(&run.figures, &stats, &metrics, in_process);
    report_risk(&config, &metrics);
    Ok(())
}

/// The re-identification risk estimate of each pipeline that asks for one, as the worker
/// exported it (docs/security.md, "Re-identification risk, measured").
fn report_risk(config: &Config, metrics: &Metrics) {
    for pipeline in &config.pipeline {
        let Some(risk) = &pipeline.risk else {
            continue;
        };
        let name = [pipeline.name.as_str()];
        let records = metrics.risk_window_records.with_label_values(&name).get();
        let below = metrics.risk_records_below_k.with_label_values(&name).get();
        let k = metrics.risk_k.with_label_values(&name).get();
        crate::say!(
            "re-identification risk [{}]: {below} of the last {records} records ({:.1}%) share their quasi-identifiers ({}) with fewer than {} others (k = {k}; the demo's synthetic data)",
            pipeline.name,
            100.0 * below as f64 / records.max(1) as f64,
            risk.quasi_identifiers.join(", "),
            k - 1
        );
    }
}

/// Name of the worker's threads in the demo.
const WORKER_THREAD: &str = "pz-worker";

/// What the demo measured while the worker ran.
struct Figures {
    records: u64,
    seconds: f64,
    /// CPU seconds of the worker's own threads (decode, route, transform, produce calls).
    worker_cpu: f64,
    /// CPU seconds of the whole process: worker, producer, librdkafka, in-process cluster.
    process_cpu: f64,
}

struct Fed {
    samples: Vec<(String, Value)>,
    figures: Figures,
}

/// Produces the poison records and the events while the worker consumes them, shows progress,
/// and waits until every record is accounted for; says why and fails if records stop moving.
async fn feed_and_watch(
    engine: &Engine,
    kafka: &KafkaConfig,
    events: usize,
    metrics: &Arc<Metrics>,
    worker: &tokio::task::JoinHandle<Result<worker::Stats, worker::WorkerError>>,
    in_process: bool,
) -> Result<Fed> {
    let poison = [b"not avro at all".to_vec(), frame(99, b"\x00")];
    let total = (events + poison.len()) as u64;
    let started = Instant::now();
    let (worker_cpu_0, process_cpu_0) = (threads_cpu_seconds(WORKER_THREAD), cpu_seconds());
    let producer: FutureProducer = connect::producer_config(kafka, &[]).create()?;
    for payload in &poison {
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(RAW).payload(payload.as_slice());
        producer
            .send_result(record)
            .map_err(|(e, _)| e)?
            .await
            .context("producer dropped")?
            .map_err(|(e, _)| e)?;
    }
    let progress = Progress::start(total, metrics.clone());
    // The last call and message produced are shown at the end: the newest records are the
    // ones any cluster still holds.
    let mut samples: Vec<(String, Value)> = Vec::new();
    let outcome = {
        let feeding = crate::bench::produce_raw(
            engine,
            kafka,
            RAW,
            events,
            7,
            |name, event| {
                samples.retain(|(n, _)| n != name);
                samples.push((name.to_owned(), event.clone()));
            },
            Some((metrics.as_ref(), MAX_AHEAD)),
        );
        let watching = watch(metrics, total, worker, in_process);
        tokio::pin!(feeding, watching);
        // Watched while producing too: a stall then is reported as well.
        let mut fed = false;
        loop {
            tokio::select! {
                produced = &mut feeding, if !fed => match produced {
                    Ok(()) => fed = true,
                    Err(e) => break Err(e),
                },
                watched = &mut watching => break watched,
            }
        }
    };
    progress.finish();
    outcome?;
    Ok(Fed {
        samples,
        figures: Figures {
            records: total,
            seconds: started.elapsed().as_secs_f64(),
            worker_cpu: threads_cpu_seconds(WORKER_THREAD) - worker_cpu_0,
            process_cpu: cpu_seconds() - process_cpu_0,
        },
    })
}

/// Waits until `total` records are published or dead-lettered. Fails, saying why, when the
/// worker stops or no record moves for [`STALL`].
async fn watch(
    metrics: &Metrics,
    total: u64,
    worker: &tokio::task::JoinHandle<Result<worker::Stats, worker::WorkerError>>,
    in_process: bool,
) -> Result<()> {
    let mut last = metrics.counts();
    let mut last_moved = Instant::now();
    loop {
        let now = metrics.counts();
        if now.published + now.dead_lettered >= total {
            return Ok(());
        }
        if worker.is_finished() {
            bail!(
                "the worker stopped after {} of {total} records (its error follows when it is awaited)",
                now.published + now.dead_lettered
            );
        }
        if now != last {
            last = now;
            last_moved = Instant::now();
        } else if last_moved.elapsed() >= STALL {
            bail!("{}", stall_report(metrics, total, in_process));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why records stopped moving, in words a newcomer can act on.
fn stall_report(metrics: &Metrics, total: u64, in_process: bool) -> String {
    let counts = metrics.counts();
    let done = counts.published + counts.dead_lettered;
    let mut report = format!(
        "stalled: no record moved for {} s; {done} of {total} records accounted for \
         ({} published, {} dead-lettered), {} missing",
        STALL.as_secs(),
        counts.published,
        counts.dead_lettered,
        total - done
    );
    let waiting = crate::worker::health::waiting_partitions(metrics);
    if !waiting.is_empty() {
        let list: Vec<String> = waiting
            .iter()
            .map(|(t, p, lag)| format!("{t}[{p}]: {lag} to read"))
            .collect();
        report.push_str(&format!(
            "\npartitions with records to read: {}",
            list.join(", ")
        ));
    }
    if counts.skipped > 0 {
        report.push_str(&format!(
            "\n{} records were deleted by the broker before the worker read them (retention)",
            counts.skipped
        ));
    }
    report.push_str(if in_process {
        "\ntry: a smaller --events, or a real broker with --brokers HOST:PORT \
         (the in-process cluster keeps only 5 MiB per partition)"
    } else {
        "\ntry: check that the brokers are reachable and the topics exist; RUST_LOG=info shows the worker's log"
    });
    report
}

/// The live progress line: redrawn in place on a terminal, a plain line every 2 s otherwise.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn start(total: u64, metrics: Arc<Metrics>) -> Self {
        use std::io::IsTerminal as _;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed:>4} [{bar:30}] {pos}/{len} accounted for  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let period = if shown.is_some() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(2)
            };
            loop {
                tokio::time::sleep(period).await;
                let c = metrics.counts();
                let done = c.published + c.dead_lettered;
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let line = format!(
                    "in {}, published {}, dead-lettered {}, {rate:.0} records/s",
                    c.consumed, c.published, c.dead_lettered
                );
                match &shown {
                    Some(bar) => {
                        bar.set_position(done);
                        bar.set_message(line);
                    }
                    None => crate::say!("progress: {done}/{total} accounted for: {line}"),
                }
            }
        });
        Progress { task, bar }
    }

    fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Shows a raw and a sanitized event of each type side by side.
async fn show_samples(
    engine: &Engine,
    kafka: &KafkaConfig,
    samples: Vec<(String, Value)>,
) -> Result<()> {
    for (name, raw) in samples {
        let group = format!("pseudonymizer-demo-reader-{name}-{}", std::process::id());
        let reader: BaseConsumer = connect::consumer_config(
            kafka,
            &[
                ("group.id", &group),
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", "false"),
            ],
        )
        .create()?;
        let Value::Record(fields) = &raw else {
            continue;
        };
        let id = fields
            .iter()
            .find(|(n, _)| n == "event_id")
            .map(|(_, v)| v.clone());
        let id_text = match &id {
            Some(Value::String(s)) => s.clone(),
            _ => continue,
        };
        let topic = if name.ends_with("CallEvent") {
            CALLS
        } else {
            MESSAGES
        };
        let plan = engine.plan(&name).context("plan exists")?;
        reader.subscribe(&[topic])?;
        let mut sanitized = None;
        let until = Instant::now() + Duration::from_secs(20);
        while sanitized.is_none() && Instant::now() < until {
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            let Some(payload) = message.payload().filter(|p| p.len() > 5) else {
                continue;
            };
            // Decode only the record that carries the sample's event id.
            if !payload
                .windows(id_text.len())
                .any(|w| w == id_text.as_bytes())
            {
                continue;
            }
            let value = apache_avro::from_avro_datum(&plan.output, &mut &payload[5..], None)?;
            if let Value::Record(out_fields) = &value {
                if out_fields
                    .iter()
                    .find(|(n, _)| n == "event_id")
                    .map(|(_, v)| v.clone())
                    == id
                {
                    sanitized = Some(value);
                }
            }
        }
        crate::say!("\n=== {name} ===");
        let raw_json = plain_json(raw);
        let out_json = sanitized.map(plain_json).unwrap_or_default();
        crate::say!("{:<20} {:<48} sanitized", "field", "raw");
        if let (Some(raw_map), Some(out_map)) = (raw_json.as_object(), out_json.as_object()) {
            for (field, raw_value) in raw_map {
                let out_value = out_map
                    .get(field)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(dropped)".into());
                crate::say!(
                    "{field:<20} {:<48} {}",
                    clip(&raw_value.to_string(), 46),
                    clip(&out_value, 60)
                );
            }
            // Fields the rules derive (a phone number's region, calling code and type).
            for (field, out_value) in out_map.iter().filter(|(f, _)| !raw_map.contains_key(*f)) {
                crate::say!(
                    "{field:<20} {:<48} {}",
                    "(derived)",
                    clip(&out_value.to_string(), 60)
                );
            }
        }
    }
    Ok(())
}

/// The closing figures: wall clock, the worker's CPU, the transform alone.
fn report(figures: &Figures, stats: &worker::Stats, metrics: &Metrics, in_process: bool) {
    let dead: u64 = stats.dead_lettered.values().sum();
    crate::say!(
        "\nworker: {} records in, {} published, {dead} dead-lettered ({:?}), none lost",
        stats.consumed,
        stats.published,
        stats.dead_lettered
    );
    let records = figures.records as f64;
    crate::say!(
        "wall clock: {:.1} s, {:.0} records/s{}",
        figures.seconds,
        records / figures.seconds.max(1e-9),
        if in_process {
            " (set by the in-process test cluster and the demo's producer, which share this \
             process and its cores with the worker: not the product's speed)"
        } else {
            ""
        }
    );
    crate::say!(
        "CPU per record: worker threads {:.1} µs; whole process {:.1} µs{}",
        figures.worker_cpu * 1e6 / records,
        figures.process_cpu * 1e6 / records,
        if in_process {
            " (with the producer and the cluster)"
        } else {
            " (with the producer)"
        }
    );
    let transform = metrics.transform_seconds.get_sample_sum() * 1e6
        / (metrics.transform_seconds.get_sample_count().max(1) as f64);
    crate::say!(
        "transform alone: {transform:.1} µs per record, {:.0} records/s on one core{}",
        1e6 / transform.max(1e-9),
        if in_process {
            " (wall time inside the transform: it includes waiting for a core the cluster holds)"
        } else {
            ""
        }
    );
    crate::say!("figures against a real broker: scripts/bench.sh (README, Performance)");
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    crate::bench::cpu_seconds()
}

/// User + system CPU seconds of this process's threads whose name starts with `prefix`
/// (`/proc/self/task/*/stat`; 0 where /proc is not there).
fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    // SAFETY: sysconf has no side effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ..." with comm possibly holding spaces: split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after "state".
        let time = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        total += (time(11) + time(12)) / ticks;
    }
    total
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(width - 1).collect::<String>())
    }
}
