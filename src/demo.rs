//! `pseudonymizer demo`: the whole product in one command.
//!
//! Without `--brokers` it starts an in-process Kafka cluster (librdkafka's mock cluster), so
//! nothing needs installing. It creates the raw, analytics and dead-letter topics, produces
//! synthetic calls and messages (and a few poison records), runs the worker on them with a
//! throwaway keyring, and prints raw and sanitized events side by side and a throughput line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use apache_avro::types::Value;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::config::Config;
use crate::file::plain_json;
use crate::keys::{KeySet, Keyring};
use crate::metrics::Metrics;
use crate::transform::Engine;
use crate::worker::{self, route::frame, Treatment, Worker};

const RAW: &str = "demo.comms.raw";
const CALLS: &str = "demo.comms.calls.sanitized";
const MESSAGES: &str = "demo.comms.messages.sanitized";
const DLQ: &str = "demo.comms.dlq";

/// Runs the demo with `events` synthetic events, against `brokers` or an in-process cluster.
pub async fn run(
    config_path: &std::path::Path,
    brokers: Option<String>,
    events: usize,
) -> Result<()> {
    // The mock cluster lives as long as this function.
    let (_cluster, brokers) = match brokers {
        Some(b) => (None, b),
        None => {
            let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
            let bootstrap = cluster.bootstrap_servers();
            for (topic, partitions) in [(RAW, 3), (CALLS, 3), (MESSAGES, 3), (DLQ, 1)] {
                cluster.create_topic(topic, partitions, 1)?;
            }
            (Some(cluster), bootstrap)
        }
    };
    println!("brokers: {brokers}");
    // Already existing topics (mock cluster, or a second run) are fine.
    crate::bench::create_topics(&brokers, &[(RAW, 3), (CALLS, 3), (MESSAGES, 3), (DLQ, 1)]).await?;

    let mut config = Config::load(config_path)?;
    let group = format!("pseudonymizer-demo-{}", std::process::id());
    {
        let kafka = config
            .kafka
            .as_mut()
            .context("the config has no [kafka] section")?;
        kafka.brokers = brokers.clone();
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
    println!(
        "throwaway keys: pseudonym {}, encryption {}",
        active.pseudonym.as_ref().map_or("-", |k| k.id()),
        active.encryption.as_ref().map_or("-", |k| k.id())
    );

    // Raw events, keyed by the subscriber number as a switch would key them.
    let mut samples: Vec<(String, Value)> = Vec::new();
    crate::bench::produce_raw(&engine, &brokers, RAW, events, 7, |name, event| {
        if samples.len() < 2 && (samples.is_empty() || name.ends_with("MessageEvent")) {
            samples.push((name.to_owned(), event.clone()));
        }
    })
    .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let mut deliveries = Vec::new();
    let poison = [b"not avro at all".to_vec(), frame(99, b"\x00")];
    for payload in &poison {
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(RAW).payload(payload.as_slice());
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        d.await.context("producer dropped")?.map_err(|(e, _)| e)?;
    }
    println!(
        "produced {events} raw events and {} poison records to {RAW}",
        poison.len()
    );

    // The worker, until everything is through.
    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = Worker {
        engine: engine.clone(),
        keys: worker::fixed_keys(active),
        metrics: metrics.clone(),
        treatment: Treatment::Sanitize,
    };
    let worker_config = config.clone();
    let started = Instant::now();
    let handle = tokio::spawn(async move { worker.run(&worker_config, stopped).await });
    let total = (events + poison.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, done) = metrics.progress();
        if done >= total {
            break;
        }
        if handle.is_finished() || Instant::now() > deadline {
            bail!("the worker stopped or stalled after {done} of {total} records");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    stop.send(true).ok();
    let stats = handle.await??;

    // Show a raw and a sanitized event of each type side by side.
    for (name, raw) in samples {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set(
                "group.id",
                format!("pseudonymizer-demo-reader-{name}-{}", std::process::id()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        let Value::Record(fields) = &raw else {
            continue;
        };
        let id = fields
            .iter()
            .find(|(n, _)| n == "event_id")
            .map(|(_, v)| v.clone());
        let (topic, plan) = if name.ends_with("CallEvent") {
            (CALLS, engine.plan(&name))
        } else {
            (MESSAGES, engine.plan(&name))
        };
        let plan = plan.context("plan exists")?;
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
        println!("\n=== {name} ===");
        let raw_json = plain_json(raw);
        let out_json = sanitized.map(plain_json).unwrap_or_default();
        println!("{:<20} {:<48} sanitized", "field", "raw");
        if let (Some(raw_map), Some(out_map)) = (raw_json.as_object(), out_json.as_object()) {
            for (field, raw_value) in raw_map {
                let out_value = out_map
                    .get(field)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(dropped)".into());
                println!(
                    "{field:<20} {:<48} {}",
                    clip(&raw_value.to_string(), 46),
                    clip(&out_value, 60)
                );
            }
        }
    }
    let rate = stats.published as f64 / elapsed.as_secs_f64();
    println!(
        "\nworker: {} records in, {} published, {:?} dead-lettered, in {:.2} s: {rate:.0} events/s",
        stats.consumed,
        stats.published,
        stats.dead_lettered,
        elapsed.as_secs_f64()
    );
    Ok(())
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(width - 1).collect::<String>())
    }
}
