//! `pseudonymizer bench`: the end-to-end throughput benchmark against a real broker.
//!
//! One raw topic is loaded once with synthetic events. Then the worker drains it from the
//! start, in a fresh consumer group each time, alternately with the real transform
//! ([`Treatment::Sanitize`]) and with a pass-through copy ([`Treatment::PassThrough`]: same
//! clients, same settings, same records; only the transform is skipped). Each measurement runs in
//! its own child process, so its resident memory is the worker's alone; the parent prints
//! events/s for both, their ratio, and the worker's peak and sampled RSS. With transactions
//! (`--mode exactly-once`) each round adds the transform in exactly-once mode, with the config's
//! transaction size (`transaction_max_records`, `transaction_max_ms`).

pub mod floor;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use apache_avro::types::Value;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::config::{Config, DeliveryMode, KafkaConfig};
use crate::connect;
use crate::generate::{Generator, Kind};
use crate::keys::{KeySet, Keyring};
use crate::metrics::Metrics;
use crate::transform::Engine;
use crate::worker::{self, route::frame, Treatment, Worker};

/// Creates topics, tolerating ones that already exist; connects as `kafka` says.
pub async fn create_topics(kafka: &KafkaConfig, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = connect::client_config(kafka).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    // Per-topic failures (most often: it exists already) are not errors here.
    let _ = admin.create_topics(&new, &AdminOptions::new()).await;
    Ok(())
}

/// Produces `events` synthetic raw events (calls and messages alternating, Confluent framed,
/// keyed by the subscriber number; for a config of json pipelines, calls as JSON) to `topic`, calling `seen` with each event, and waits for
/// every delivery. With `ahead_of`, it stays at most that many records ahead of the records
/// the worker has finished.
pub async fn produce_raw(
    engine: &Engine,
    kafka: &KafkaConfig,
    topic: &str,
    events: usize,
    seed: u64,
    mut seen: impl FnMut(&str, &Value),
    ahead_of: Option<(&Metrics, u64)>,
) -> Result<()> {
    let producer: FutureProducer = connect::producer_config(
        kafka,
        &[
            ("linger.ms", "5"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .create()?;
    let mut generator = Generator::new(seed);
    let mut deliveries = std::collections::VecDeque::new();
    for i in 0..events {
        if let Some((metrics, most)) = ahead_of {
            while i as u64 > metrics.progress().1 + most {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // A config of json pipelines only (config/json-pipeline.toml): calls, as JSON objects
        // (framed for a json-schema pipeline, as Protobuf messages for a protobuf one).
        let json = engine.plans().is_empty() && !engine.json_plans().is_empty();
        let (kind, name, id, key_field) = if i % 2 == 0 || json {
            (Kind::Call, "comms.v1.CallEvent", 1, "caller")
        } else {
            (Kind::Message, "comms.v1.MessageEvent", 2, "sender")
        };
        let event = generator.event(kind);
        let key = match &event {
            Value::Record(fields) => {
                fields
                    .iter()
                    .find(|(n, _)| n == key_field)
                    .and_then(|(_, v)| match v {
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    })
            }
            _ => None,
        }
        .unwrap_or_default();
        let payload = if json {
            let object = serde_json::Value::try_from(event.clone())?;
            let first = engine.json_plans().first().map(|(index, _)| *index);
            match first {
                Some(index) if engine.proto(index).is_some() => {
                    let contract = engine.proto(index).context("checked")?;
                    let message = prost_reflect::DynamicMessage::deserialize(
                        contract.input.message.clone(),
                        &object,
                    )?;
                    let mut body = Vec::new();
                    crate::plan::protobuf::write_indexes(&contract.indexes, &mut body);
                    prost::Message::encode(&message, &mut body)?;
                    frame(BENCH_SCHEMA_ID, &body)
                }
                Some(index) if engine.json_schema(index).is_some() => {
                    frame(BENCH_SCHEMA_ID, object.to_string().as_bytes())
                }
                _ => object.to_string().into_bytes(),
            }
        } else {
            let plan = engine.plan(name).context("the rules cover both schemas")?;
            frame(id, &apache_avro::to_avro_datum(&plan.input, event.clone())?)
        };
        seen(name, &event);
        let record = FutureRecord::to(topic).payload(&payload).key(&key);
        deliveries.push_back(producer.send_result(record).map_err(|(e, _)| e)?);
        // Keep the number of outstanding deliveries bounded (memory), checking them in order.
        while deliveries.len() > 100_000 {
            if let Some(d) = deliveries.pop_front() {
                d.await.context("producer dropped")?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in deliveries {
        d.await.context("producer dropped")?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// The schema ids a json-schema or protobuf config is benchmarked with: its first pipeline's
/// input and output ids are pinned to these, and its `[registry]` left out (the benchmark
/// measures the worker, not a registry).
const BENCH_SCHEMA_ID: u32 = 3;
const BENCH_OUTPUT_ID: u32 = 4;

/// Pins a json-schema or protobuf config's schema ids for the benchmark ([`BENCH_SCHEMA_ID`]).
fn pin_bench_ids(config: &mut Config) {
    let framed = |p: &crate::config::PipelineConfig| {
        matches!(
            p.format,
            crate::config::Format::JsonSchema | crate::config::Format::Protobuf
        )
    };
    if config.pipeline.iter().any(framed) {
        config.registry = None;
        for (i, pipeline) in config.pipeline.iter_mut().enumerate() {
            if framed(pipeline) {
                pipeline.input_schema_id = Some(BENCH_SCHEMA_ID + 2 * i as u32);
                pipeline.output_schema_id = Some(BENCH_OUTPUT_ID + 2 * i as u32);
            }
        }
    }
}

/// What a measurement runs with besides its treatment and mode: the keyring (a throwaway one
/// by default) and a subject registry to follow.
#[derive(Debug, Default, Clone)]
pub struct Extras {
    pub keyring: Option<std::path::PathBuf>,
    pub subjects_topic: Option<String>,
    /// `[kafka] transform_threads` (default: the config's).
    pub transform_threads: Option<usize>,
}

/// One measurement, printed by the child as a JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub treatment: String,
    /// `AtLeastOnce` or `ExactlyOnce`.
    #[serde(default)]
    pub mode: String,
    pub events: u64,
    /// From the first record consumed to the last acknowledged (group join excluded).
    pub seconds: f64,
    pub events_per_sec: f64,
    /// CPU time (user + system, all threads) the worker process spent per event, in µs.
    pub cpu_us_per_event: f64,
    /// `VmHWM` at the end: the worker process's peak resident memory.
    pub peak_rss_kib: u64,
    /// `VmRSS` sampled every second during the run.
    pub rss_kib: Vec<u64>,
    /// The subject registry it followed (`None`: none).
    #[serde(default)]
    pub subjects_topic: Option<String>,
    /// Seconds from the worker's start to its first record (the registry's load included).
    #[serde(default)]
    pub start_seconds: f64,
    /// The threads that transformed (1: the worker's loop itself).
    #[serde(default)]
    pub transform_threads: usize,
}

impl Measurement {
    /// `events` records over `seconds` and `cpu` seconds of CPU (every thread), with the RSS
    /// sampled during the run; the peak RSS is read now. One thread, no registry.
    fn new(
        treatment: &str,
        mode: &str,
        events: u64,
        seconds: f64,
        cpu: f64,
        rss_kib: Vec<u64>,
    ) -> Measurement {
        Measurement {
            treatment: treatment.to_owned(),
            mode: mode.to_owned(),
            events,
            seconds,
            events_per_sec: events as f64 / seconds.max(1e-9),
            cpu_us_per_event: cpu * 1e6 / events as f64,
            peak_rss_kib: proc_status_kib("VmHWM:"),
            rss_kib,
            subjects_topic: None,
            start_seconds: 0.0,
            transform_threads: 1,
        }
    }
}

/// A measurement's config: `config_path` with a fresh group, its own output and dead-letter
/// topics (created here), `topic` as every pipeline's input, and `mode`; answers it with the
/// output topics (calls, messages).
async fn measurement_config(
    config_path: &std::path::Path,
    brokers: &str,
    topic: &str,
    mode: DeliveryMode,
    extras: &Extras,
) -> Result<(Config, [String; 2])> {
    let mut config = Config::load(config_path)?;
    pin_bench_ids(&mut config);
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let outputs = [
        format!("bench.calls.{tag}"),
        format!("bench.messages.{tag}"),
    ];
    let dlq = format!("bench.dlq.{tag}");
    {
        let kafka = config
            .kafka
            .as_mut()
            .context("the config has no [kafka] section")?;
        kafka.brokers = brokers.to_owned();
        kafka.group_id = format!("bench-{tag}");
        kafka.dlq_topic = dlq;
        kafka.metrics_listen = None;
        kafka.mode = mode;
        kafka.transactional_id = Some(format!("bench-{tag}"));
        kafka.subjects_topic = extras.subjects_topic.clone();
        if extras.transform_threads.is_some() {
            kafka.transform_threads = extras.transform_threads;
        }
    }
    let kafka = config
        .kafka
        .as_ref()
        .context("the config has no [kafka] section")?;
    create_topics(
        kafka,
        &[
            (&outputs[0], 3),
            (&outputs[1], 3),
            (kafka.dlq_topic.as_str(), 1),
        ],
    )
    .await?;
    for (pipeline, output) in config.pipeline.iter_mut().zip(&outputs) {
        pipeline.input_topic = Some(topic.to_owned());
        pipeline.output_topic = Some(output.clone());
    }
    Ok((config, outputs))
}

/// Child side of librdkafka's own copy ([`floor`]): the same topics and client settings as a
/// worker measurement in `mode`.
pub async fn measure_floor(
    config_path: &std::path::Path,
    brokers: &str,
    topic: &str,
    events: u64,
    mode: DeliveryMode,
) -> Result<Measurement> {
    let (config, outputs) =
        measurement_config(config_path, brokers, topic, mode, &Extras::default()).await?;
    let kafka = config.kafka.context("the config has no [kafka] section")?;
    let output = outputs[0].clone();
    let input = topic.to_owned();
    tokio::task::spawn_blocking(move || match mode {
        DeliveryMode::AtLeastOnce => floor::copy(&kafka, &input, &output, events),
        DeliveryMode::ExactlyOnce => floor::copy_transactional(&kafka, &input, &output, events),
    })
    .await?
}

/// Child side: drains `topic` from the start with a fresh group and a throwaway keyring.
pub async fn measure(
    config_path: &std::path::Path,
    brokers: &str,
    topic: &str,
    events: u64,
    treatment: Treatment,
    mode: DeliveryMode,
    extras: Extras,
) -> Result<Measurement> {
    let (config, _) = measurement_config(config_path, brokers, topic, mode, &extras).await?;
    let transform_threads = match mode {
        DeliveryMode::AtLeastOnce => config
            .kafka
            .as_ref()
            .map_or(1, KafkaConfig::transform_threads),
        DeliveryMode::ExactlyOnce => 1,
    };
    let engine = Arc::new(Engine::from_config(&config)?);
    let keyring = match &extras.keyring {
        Some(path) => Keyring::load(path)?,
        None => Keyring::generate(),
    };
    let active = engine.active_keys(&KeySet::from_keyring(&keyring))?;
    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = Worker {
        engine,
        keys: worker::fixed_keys(active),
        metrics: metrics.clone(),
        treatment,
    };
    let spawned = Instant::now();
    let handle = tokio::spawn(async move { worker.run(&config, stopped).await });
    let mut start_seconds = 0.0;

    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut first: Option<Instant> = None;
    let mut cpu_at_first = 0.0;
    let mut rss = Vec::new();
    let mut last_sample = Instant::now();
    loop {
        let (consumed, done) = metrics.progress();
        if first.is_none() && consumed > 0 {
            first = Some(Instant::now());
            cpu_at_first = cpu_seconds();
            start_seconds = spawned.elapsed().as_secs_f64();
        }
        if done >= events {
            break;
        }
        if handle.is_finished() || Instant::now() > deadline {
            bail!("the worker stopped or stalled after {done} of {events} records");
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            rss.push(proc_status_kib("VmRSS:"));
            last_sample = Instant::now();
        }
        let interval = progress_check_interval(first.map(|t| t.elapsed()), done, events);
        tokio::time::sleep(interval).await;
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let cpu = cpu_seconds() - cpu_at_first;
    // A measurement of dead letters is not one of the transform: every event is published.
    let dead = metrics.counts().dead_lettered;
    if dead > 0 {
        bail!("{dead} of {events} records were dead-lettered: the benchmark measures published records (is the config's schema the events'?)");
    }
    rss.push(proc_status_kib("VmRSS:"));
    stop.send(true).ok();
    handle.await??;
    Ok(Measurement {
        subjects_topic: extras.subjects_topic,
        start_seconds,
        transform_threads,
        ..Measurement::new(
            &format!("{treatment:?}"),
            &format!("{mode:?}"),
            events,
            seconds,
            cpu,
            rss,
        )
    })
}

/// How long the measuring loop sleeps before it looks at the worker's progress again, `done`
/// of `events` records `elapsed` after the first was consumed (`None`: none yet).
///
/// Each look wakes a thread and reads the metrics, CPU the measurement counts as the worker's
/// and the floor (which waits without looking) never pays: every 5 ms, the measuring thread
/// alone used 5 to 8 ms of CPU per second of run. So the loop looks often only where the
/// moment matters: until the first record (the measurement starts there, and nothing before
/// it is counted) and once the end is less than half a second away at the rate so far (it
/// ends there; in exactly-once mode `done` moves a transaction at a time); in between, every
/// 50 ms.
fn progress_check_interval(elapsed: Option<Duration>, done: u64, events: u64) -> Duration {
    let Some(elapsed) = elapsed else {
        return Duration::from_millis(2);
    };
    let left = events.saturating_sub(done) as f64;
    let seconds_left = match done {
        0 => f64::INFINITY,
        _ => elapsed.as_secs_f64() * left / done as f64,
    };
    match seconds_left < 0.5 {
        true => Duration::from_millis(2),
        false => Duration::from_millis(50),
    }
}

/// Two subject registry topics for the benchmark: one empty, one with `subjects` erasures of
/// people none of whom the synthetic events name (under the keyring's subject key).
async fn load_registry(
    kafka: &KafkaConfig,
    keyring: &std::path::Path,
    subjects: u64,
) -> Result<(String, String)> {
    use crate::subjects::{subject_of, RegistryRecord, SubjectState};
    let keys = KeySet::from_keyring(&Keyring::load(keyring)?);
    let key = keys.subject()?.clone();
    let empty = format!("bench.subjects-empty.{}", std::process::id());
    let full = format!("bench.subjects.{}", std::process::id());
    create_topics(kafka, &[(empty.as_str(), 1), (full.as_str(), 1)]).await?;
    let producer: FutureProducer = connect::producer_config(
        kafka,
        &[
            ("linger.ms", "20"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .create()?;
    let started = Instant::now();
    let mut deliveries = std::collections::VecDeque::new();
    for n in 0..subjects {
        // +1 415 0…: not a shape the generator writes (its +1 415 numbers are 555-…).
        let (subject, hint) = subject_of(
            &key,
            crate::token::TokenClass::Phone,
            format!("+1415{:07}", n % 10_000_000).as_bytes(),
        );
        let record = RegistryRecord::new(
            subject,
            hint,
            SubjectState::Erased,
            None,
            "2026-12-04T00:00:00Z",
            "req-bench",
        );
        let (k, v) = (record.key(), record.to_json());
        deliveries.push_back(
            producer
                .send_result(FutureRecord::to(&full).key(&k).payload(&v))
                .map_err(|(e, _)| e)?,
        );
        if deliveries.len() > 100_000 {
            if let Some(d) = deliveries.pop_front() {
                d.await.context("producer dropped")?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in deliveries {
        d.await.context("producer dropped")?.map_err(|(e, _)| e)?;
    }
    crate::say!(
        "loaded {subjects} erasures into the subject registry {full} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((empty, full))
}

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and has no other effect.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A `kB` line of `/proc/self/status` (0 when unavailable).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Parent side: loads the raw topic once, then runs `rounds` × (sanitize, pass-through, and
/// with `with_transactions` sanitize in exactly-once mode), each in a child process, and
/// prints the table.
pub async fn run(
    config_path: &std::path::Path,
    brokers: &str,
    events: usize,
    partitions: i32,
    rounds: usize,
    with_transactions: bool,
    subjects: u64,
) -> Result<()> {
    let mut config = Config::load(config_path)?;
    let engine = Engine::from_config(&config)?;
    let kafka = config
        .kafka
        .as_mut()
        .context("the config has no [kafka] section")?;
    kafka.brokers = brokers.to_owned();
    let topic = format!("bench.raw.{}", std::process::id());
    create_topics(kafka, &[(topic.as_str(), partitions)]).await?;
    let started = Instant::now();
    produce_raw(&engine, kafka, &topic, events, 11, |_, _| {}, None).await?;
    crate::say!(
        "loaded {events} raw events into {topic} ({partitions} partitions) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let exe = std::env::current_exe()?;
    let mut results: Vec<Measurement> = Vec::new();
    // (treatment, mode, subject registry, transform threads). The comparisons with the
    // floor are of one thread (the loop transforms); the config's count (by default the
    // cores this process may use) is measured beside it when it is more.
    let threads = kafka.transform_threads();
    let mut runs: Vec<(&str, &str, Option<String>, usize)> = vec![
        ("sanitize", "at-least-once", None, 1),
        ("pass-through", "at-least-once", None, 1),
        ("floor", "at-least-once", None, 1),
    ];
    if threads > 1 {
        runs.insert(1, ("sanitize", "at-least-once", None, threads));
    }
    if with_transactions {
        runs.push(("sanitize", "exactly-once", None, 1));
        runs.push(("floor", "exactly-once", None, 1));
    }
    // Every child runs on the same keyring, so the registry's subject ids are under its key.
    let keyring_dir =
        std::env::temp_dir().join(format!("pseudonymizer-bench-{}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&keyring_dir)?;
    }
    let keyring_path = keyring_dir.join("keyring.json");
    Keyring::generate().save_new(&keyring_path)?;
    // Removed when the benchmark ends, however it ends.
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(keyring_dir.clone());
    if subjects > 0 {
        let (empty, full) = load_registry(kafka, &keyring_path, subjects).await?;
        runs.push(("sanitize", "at-least-once", Some(empty), 1));
        runs.push(("sanitize", "at-least-once", Some(full), 1));
    }
    for round in 1..=rounds {
        for (treatment, mode, registry, threads) in &runs {
            let (treatment, mode, threads) = (*treatment, *mode, *threads);
            let mut command = std::process::Command::new(&exe);
            command
                .args(["bench-worker", "--config"])
                .arg(config_path)
                .args(["--brokers", brokers, "--topic", &topic])
                .args(["--events", &events.to_string(), "--treatment", treatment])
                .args(["--mode", mode])
                .args(["--transform-threads", &threads.to_string()])
                .arg("--keyring")
                .arg(&keyring_path);
            if let Some(registry) = registry {
                command.args(["--subjects-topic", registry]);
            }
            let output = command.stderr(std::process::Stdio::inherit()).output()?;
            if !output.status.success() {
                bail!(
                    "the {treatment} {mode} measurement failed ({})",
                    output.status
                );
            }
            let m: Measurement = serde_json::from_slice(&output.stdout)
                .context("reading the measurement of a child process")?;
            let label = match registry {
                Some(r) if r.contains("empty") => format!("{treatment} {mode} +registry(0)"),
                Some(_) => format!("{treatment} {mode} +registry({subjects})"),
                None if threads > 1 => format!("{treatment} {mode} ×{threads} threads"),
                None => format!("{treatment} {mode}"),
            };
            crate::say!(
                "round {round} {label:<27} {:>9.0} events/s  ({:.1} s, {:.1} µs CPU/event, peak RSS {} MiB)",
                m.events_per_sec,
                m.seconds,
                m.cpu_us_per_event,
                m.peak_rss_kib / 1024
            );
            results.push(m);
        }
    }
    let at_least_once: Vec<&Measurement> = results
        .iter()
        .filter(|m| {
            m.mode != "ExactlyOnce" && m.subjects_topic.is_none() && m.transform_threads <= 1
        })
        .collect();
    let best = |t: &str| {
        at_least_once
            .iter()
            .filter(|m| m.treatment == t)
            .map(|m| m.events_per_sec)
            .fold(0.0, f64::max)
    };
    let (sanitize, pass) = (best("Sanitize"), best("PassThrough"));
    crate::say!(
        "\nbest of {rounds}: sanitize {sanitize:.0} events/s, pass-through {pass:.0} events/s, \
         ratio {:.2}",
        sanitize / pass
    );
    let least_cpu = |t: &str| {
        at_least_once
            .iter()
            .filter(|m| m.treatment == t)
            .map(|m| m.cpu_us_per_event)
            .fold(f64::INFINITY, f64::min)
    };
    crate::say!(
        "worker CPU per event: sanitize {:.1} µs, pass-through {:.1} µs (the transform adds {:.1} µs)",
        least_cpu("Sanitize"),
        least_cpu("PassThrough"),
        least_cpu("Sanitize") - least_cpu("PassThrough")
    );
    let floor = least_cpu("Floor");
    crate::say!(
        "librdkafka's own copy (the floor): {floor:.1} µs CPU/event, {:.0} events/s; pass-through / floor {:.2}, sanitize / floor {:.2}",
        best("Floor"),
        least_cpu("PassThrough") / floor,
        least_cpu("Sanitize") / floor
    );
    let parallel: Vec<&Measurement> = results
        .iter()
        .filter(|m| m.transform_threads > 1 && m.subjects_topic.is_none())
        .collect();
    if !parallel.is_empty() {
        let best_rate = parallel
            .iter()
            .map(|m| m.events_per_sec)
            .fold(0.0, f64::max);
        let cpu = parallel
            .iter()
            .map(|m| m.cpu_us_per_event)
            .fold(f64::INFINITY, f64::min);
        crate::say!(
            "transform threads: sanitize with {threads} {best_rate:.0} events/s, with 1 {sanitize:.0} events/s ({:.2}×); {cpu:.1} µs CPU/event against {:.1}",
            best_rate / sanitize,
            least_cpu("Sanitize")
        );
    }
    let transactional: Vec<&Measurement> = results
        .iter()
        .filter(|m| m.mode == "ExactlyOnce" && m.treatment == "Sanitize")
        .collect();
    if !transactional.is_empty() {
        let best_rate = transactional
            .iter()
            .map(|m| m.events_per_sec)
            .fold(0.0, f64::max);
        let cpu = transactional
            .iter()
            .map(|m| m.cpu_us_per_event)
            .fold(f64::INFINITY, f64::min);
        crate::say!(
            "exactly-once (transactions of up to {} records or {} ms): sanitize {best_rate:.0} \
             events/s ({:.2} of at-least-once), {cpu:.1} µs CPU/event",
            kafka.transaction_max_records,
            kafka.transaction_max_ms,
            best_rate / sanitize
        );
        let floor = results
            .iter()
            .filter(|m| m.mode == "ExactlyOnce" && m.treatment == "Floor")
            .map(|m| m.cpu_us_per_event)
            .fold(f64::INFINITY, f64::min);
        crate::say!(
            "librdkafka's own copy in the same transactions (the exactly-once floor): {floor:.1} µs CPU/event; sanitize exactly-once / floor {:.2}, / (floor + crypto floor 1.8 µs) {:.2}",
            cpu / floor,
            cpu / (floor + 1.8)
        );
    }
    if subjects > 0 {
        let with_registry = |empty: bool| {
            results
                .iter()
                .filter(|m| {
                    m.subjects_topic
                        .as_deref()
                        .is_some_and(|t| t.contains("empty") == empty)
                })
                .map(|m| (m.cpu_us_per_event, m.start_seconds, m.peak_rss_kib))
                .fold((f64::INFINITY, 0.0f64, 0u64), |a, b| {
                    (a.0.min(b.0), a.1.max(b.1), a.2.max(b.2))
                })
        };
        let plain = least_cpu("Sanitize");
        let (empty_cpu, empty_start, empty_rss) = with_registry(true);
        let (full_cpu, full_start, full_rss) = with_registry(false);
        crate::say!(
            "subject registry: sanitize {plain:.1} µs CPU/event; with an empty registry {empty_cpu:.1} µs ({:+.1}%), with {subjects} erased subjects {full_cpu:.1} µs ({:+.1}%)",
            (empty_cpu / plain - 1.0) * 100.0,
            (full_cpu / plain - 1.0) * 100.0
        );
        crate::say!(
            "subject registry: start to first record {empty_start:.1} s (empty) and {full_start:.1} s ({subjects}); peak RSS {} MiB and {} MiB",
            empty_rss / 1024,
            full_rss / 1024
        );
    }
    for m in results.iter().filter(|m| m.treatment == "Sanitize") {
        let mib: Vec<u64> = m.rss_kib.iter().map(|k| k / 1024).collect();
        crate::say!(
            "sanitize worker RSS over {} events: peak {} MiB; sampled each second (MiB): {mib:?}",
            m.events,
            m.peak_rss_kib / 1024
        );
    }
    Ok(())
}
