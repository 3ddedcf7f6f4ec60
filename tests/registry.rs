//! The worker with a schema registry (the suite's own, `common::registry`, faithful to the
//! Confluent REST API) and, for the end-to-end cases, the Tansu broker: schema ids resolved by
//! record name, derived schemas registered, a producer upgrade mid-stream, an unclassified
//! field dead-lettered then replayed after the rule is added, and a registry outage that
//! dead-letters nothing.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use common::kafka::{self, published_at_least, text, Topics};
use common::registry::TestRegistry;
use pseudonymizer::config::Config;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::metrics::Metrics;
use pseudonymizer::registry::{RegistryClient, RegistryError};
use pseudonymizer::token::{self, TokenClass};
use pseudonymizer::transform::Engine;
use pseudonymizer::worker::resolve::SchemaResolver;
use pseudonymizer::worker::route::{frame, DeadLetter, Resolution, Router, Target};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

/// The shipped config with a `[registry]` (record name strategy: calls and messages share one
/// raw topic), no static schema ids, and `extra_rules` added to the calls pipeline.
fn registry_config(url: &str, extra_rules: &str, registry_extra: &str) -> Config {
    let shipped = common::repo().join("config/pipeline.toml");
    let text = registry_config_text(url, extra_rules, registry_extra);
    Config::from_toml(&text, &shipped).expect("registry config loads")
}

/// [`registry_config`]'s text (relative paths as in config/pipeline.toml).
fn registry_config_text(url: &str, extra_rules: &str, registry_extra: &str) -> String {
    let shipped = common::repo().join("config/pipeline.toml");
    std::fs::read_to_string(&shipped)
        .unwrap()
        .replace("input_schema_id = 1\noutput_schema_id = 101\n", "")
        .replace("input_schema_id = 2\noutput_schema_id = 102\n", "")
        .replace(
            "caller_ip = \"ip\"\n",
            &format!("caller_ip = \"ip\"\n{extra_rules}\n"),
        )
        + &format!(
            "\n[registry]\nurls = [\"{url}\"]\nsubject_strategy = \"record\"\ntimeout_secs = 2\nmax_backoff_secs = 1\n{registry_extra}\n"
        )
}

/// The call schema with optional string fields appended (each a new producer version).
fn call_schema(added: &[&str]) -> String {
    let text =
        std::fs::read_to_string(common::repo().join("schemas/comms.v1.CallEvent.avsc")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fields = json["fields"].as_array_mut().unwrap();
    for name in added {
        fields.push(serde_json::json!({"name": name, "type": ["null", "string"], "default": null}));
    }
    json.to_string()
}

fn message_schema() -> String {
    std::fs::read_to_string(common::repo().join("schemas/comms.v1.MessageEvent.avsc")).unwrap()
}

fn resolver(config: &Config) -> SchemaResolver {
    let registry = config.registry.as_ref().unwrap();
    SchemaResolver {
        client: RegistryClient::new(registry).unwrap(),
        strategy: registry.subject_strategy,
    }
}

fn refused(resolution: Resolution) -> DeadLetter {
    match resolution {
        Resolution::Refused(reason) => reason,
        Resolution::Route(route) => panic!(
            "expected a refusal, got a route of pipeline {}",
            route.index()
        ),
    }
}

#[test]
fn schema_ids_resolve_to_routes_or_to_dead_letter_reasons() {
    let mut registry = TestRegistry::start();
    let config = registry_config(&registry.url(), "imsi = \"id\"", "");
    let engine = Engine::from_config(&config).unwrap();
    let router = Router::from_config(&config, &engine).unwrap();
    let metrics = Metrics::new();
    let resolver = resolver(&config);
    let v1 = registry.register("comms.v1.CallEvent", &call_schema(&[]));
    let v2 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi"]));
    let v3 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi", "imei"]));

    // Versions whose every field has a rule: routes, their derived schemas registered under
    // the output record's subject (record name strategy), one version each.
    let mut output_ids = Vec::new();
    for id in [v1, v2] {
        let Resolution::Route(Target::Avro(route)) =
            resolver.resolve(&router, &metrics, id).unwrap()
        else {
            panic!("version {id} should be routed");
        };
        let registered =
            Schema::parse_str(&registry.schema(route.output_schema_id).unwrap()).unwrap();
        assert_eq!(
            registered.canonical_form(),
            route.plan.output.canonical_form()
        );
        assert_eq!(route.name, "calls");
        output_ids.push(route.output_schema_id);
        router.insert(id, Resolution::Route(Target::Avro(route)));
    }
    assert_eq!(
        registry.versions("comms.sanitized.v1.CallEvent"),
        output_ids
    );
    assert_ne!(output_ids[0], output_ids[1]);

    // A resolved id is routed without asking again; an unknown one is to be asked.
    let event = Generator::new(7).event(Kind::Call);
    let v1_schema = Schema::parse_str(&call_schema(&[])).unwrap();
    let framed = frame(v1, &common::encode(&v1_schema, event));
    assert_eq!(router.unresolved(Some(&framed)), None);
    let mut out = Vec::new();
    let output = router
        .process(
            &engine,
            &common::active(&engine),
            None,
            Some(&framed),
            &mut out,
        )
        .unwrap();
    assert_eq!(&out[1..5], &output_ids[0].to_be_bytes());
    assert_eq!(output.route.output_topic(), "comms.calls.sanitized");
    assert_eq!(router.unresolved(Some(&frame(v3, b""))), Some(v3));

    // A version with a field the rules do not classify: dead-lettered, the metric names the
    // schema id and the field path.
    assert_eq!(
        refused(resolver.resolve(&router, &metrics, v3).unwrap()),
        DeadLetter::UnclassifiedField
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains(&format!(
            "pseudonymizer_unclassified_fields{{field=\"imei\",pipeline=\"calls\",schema_id=\"{v3}\"}} 1"
        )),
        "{rendered}"
    );
    assert!(rendered
        .contains("pseudonymizer_schema_ids_resolved_total{result=\"unclassified-field\"} 1"));

    // A version whose field changed type under its rule (`imsi` becomes an int; `id` tokenizes
    // strings only): dead-lettered the same way, naming the field.
    let mut changed: serde_json::Value = serde_json::from_str(&call_schema(&[])).unwrap();
    changed["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "imsi", "type": "long"}));
    let v4 = registry.register("comms.v1.CallEvent", &changed.to_string());
    assert_eq!(
        refused(resolver.resolve(&router, &metrics, v4).unwrap()),
        DeadLetter::UnclassifiedField
    );
    assert!(metrics.render().contains(&format!(
        "pseudonymizer_unclassified_fields{{field=\"imsi\",pipeline=\"calls\",schema_id=\"{v4}\"}} 1"
    )));

    // An id the registry does not have (40403).
    assert_eq!(
        refused(resolver.resolve(&router, &metrics, 9999).unwrap()),
        DeadLetter::UnknownSchema
    );
    // Answers that are not a schema, a schema that does not parse, a schema of another kind.
    registry.answer_raw(500, "[1, 2, 3]");
    registry.answer_raw(501, r#"{"schema": "{\"type\": \"record\", \"name\": "}"#);
    registry.answer_raw(
        502,
        r#"{"schema": "{\"type\": \"object\"}", "schemaType": "JSON"}"#,
    );
    registry.answer_raw(503, r#"{"schema": "\"string\""}"#);
    // A name outside Avro's grammar makes apache-avro 0.21's parser panic (avro-rs 496/547):
    // caught, the id is bad-schema and the worker goes on (found by the schema_compile fuzzer).
    let invalid = serde_json::json!({ "schema": r#"{"type": "record", "name": "R", "fields": [{"name": "d", "type": {"type": "enum", "name": "Dir-x", "symbols": ["A"]}}]}"# });
    registry.answer_raw(504, &invalid.to_string());
    for id in 500..505 {
        assert_eq!(
            refused(resolver.resolve(&router, &metrics, id).unwrap()),
            DeadLetter::BadSchema,
            "id {id}"
        );
    }
    // A record no pipeline reads.
    let other = registry.register(
        "comms.v1.Other",
        r#"{"type": "record", "name": "Other", "namespace": "comms.v1", "fields": [{"name": "a", "type": "string"}]}"#,
    );
    assert_eq!(
        refused(resolver.resolve(&router, &metrics, other).unwrap()),
        DeadLetter::UnknownSchema
    );
    // The registry refuses the derived schema (a compatibility failure answers 409).
    registry.refuse_new_versions("comms.sanitized.v1.MessageEvent");
    let message = registry.register("comms.v1.MessageEvent", &message_schema());
    assert_eq!(
        refused(resolver.resolve(&router, &metrics, message).unwrap()),
        DeadLetter::OutputSchemaRefused
    );

    // No registry at all: not an outcome, the caller waits and asks again.
    registry.down();
    let error = resolver.resolve(&router, &metrics, v1).unwrap_err();
    assert!(matches!(error, RegistryError::Unavailable(_)), "{error}");
    registry.up();
    assert!(matches!(
        resolver.resolve(&router, &metrics, v1).unwrap(),
        Resolution::Route(_)
    ));
}

#[test]
fn credentials_come_from_the_environment_or_a_file_and_never_show() {
    use base64::Engine as _;
    let registry = TestRegistry::start();
    let secret = "s3cret-registry-pw";
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("analytics:{secret}"));
    registry.require_authorization(&format!("Basic {encoded}"));
    let v1 = registry.register("comms.v1.CallEvent", &call_schema(&[]));

    // From a file: accepted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.credentials");
    common::write_secret(&file, format!("analytics:{secret}\n"));
    let config = registry_config(
        &registry.url(),
        "",
        &format!(
            "auth = \"basic\"\ncredentials_file = \"{}\"",
            file.display()
        ),
    );
    let engine = Engine::from_config(&config).unwrap();
    let router = Router::from_config(&config, &engine).unwrap();
    let metrics = Metrics::new();
    assert!(matches!(
        resolver(&config).resolve(&router, &metrics, v1).unwrap(),
        Resolution::Route(_)
    ));

    // From the environment, wrong: the registry's 401 is "unavailable" (an operator's fix,
    // never a reason to dead-letter), and nothing says the credentials.
    std::env::set_var("PZ_REGISTRY_TEST_CREDENTIALS", "analytics:wrong-pw");
    let config = registry_config(
        &registry.url(),
        "",
        "auth = \"basic\"\ncredentials_env = \"PZ_REGISTRY_TEST_CREDENTIALS\"",
    );
    let resolver = resolver(&config);
    let error = resolver.resolve(&router, &metrics, v1).unwrap_err();
    let shown = format!("{error} {error:?} {resolver:?} {config:?}");
    assert!(shown.contains("401"), "{shown}");
    for leak in ["wrong-pw", secret, &encoded] {
        assert!(!shown.contains(leak), "{shown}");
    }

    // Credentials in the config text are refused: a URL with user info, auth without a source.
    let shipped = common::repo().join("config/pipeline.toml");
    let base = std::fs::read_to_string(&shipped).unwrap();
    for (registry, want) in [
        (
            "urls = [\"http://analytics:pw@127.0.0.1:1\"]",
            "holds credentials",
        ),
        (
            "urls = [\"http://127.0.0.1:1\"]\nauth = \"bearer\"",
            "needs credentials_env",
        ),
        ("urls = []", "urls is empty"),
        ("urls = [\"ftp://127.0.0.1\"]", "not http"),
    ] {
        let error = Config::from_toml(&format!("{base}\n[registry]\n{registry}\n"), &shipped)
            .unwrap_err()
            .to_string();
        assert!(error.contains(want), "{error}");
        assert!(!error.contains("analytics:pw"), "{error}");
    }
}

/// Produces framed events in order (one record per batch: the worker resumes after a restart).
async fn produce(brokers: &str, topic: &str, records: &[(Vec<u8>, String)]) {
    produce_to(brokers, topic, None, records).await
}

/// Produces each record to `topic` (to `partition` when given, else by key), in order.
async fn produce_to(
    brokers: &str,
    topic: &str,
    partition: Option<i32>,
    records: &[(Vec<u8>, String)],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for (payload, key) in records {
        let mut record = FutureRecord::to(topic).payload(payload).key(key);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().expect("raw record delivered");
    }
}

/// One raw call of a producer version: the generator's event with the added fields set.
struct RawCall {
    payload: Vec<u8>,
    key: String,
    event_id: String,
    caller: String,
    added: Vec<(String, String)>,
}

fn raw_calls(schema_id: u32, added: &[&str], count: usize, seed: u64) -> Vec<RawCall> {
    let schema = Schema::parse_str(&call_schema(added)).unwrap();
    let mut generator = Generator::new(seed);
    (0..count)
        .map(|i| {
            let mut event = generator.event(Kind::Call);
            let event_id = text(common::field(&event, "event_id")).unwrap();
            let caller = text(common::field(&event, "caller")).unwrap();
            let mut values = Vec::new();
            if let Value::Record(fields) = &mut event {
                for name in added {
                    let value = format!("{name}-{seed}-{i}-510150000{i:06}");
                    fields.push((
                        name.to_string(),
                        Value::Union(1, Box::new(Value::String(value.clone()))),
                    ));
                    values.push((name.to_string(), value));
                }
            }
            RawCall {
                payload: frame(schema_id, &common::encode(&schema, event)),
                key: caller.clone(),
                event_id,
                caller,
                added: values,
            }
        })
        .collect()
}

fn reader(brokers: &str, topics: &[&str], group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    consumer
}

/// Reads until `want` records arrived in all (panics after `limit`), then 2 s more to catch
/// anything extra.
fn collect(consumer: &BaseConsumer, want: usize, limit: Duration) -> Vec<OwnedMessage> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut settle: Option<Instant> = None;
    loop {
        if got.len() >= want && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(2));
        }
        if settle.is_some_and(|s| Instant::now() > s) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {} of {want} records",
            got.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            got.push(message.detach());
        }
    }
}

fn header<'m>(message: &'m OwnedMessage, name: &str) -> Option<&'m [u8]> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// Checks published calls against their raw events: each output names a schema registered
/// in the registry, decodes with it, and carries tokens (never the raw values) for the
/// caller and for every added field. Returns the event ids seen.
fn verify_calls(
    registry: &TestRegistry,
    outputs: &[OwnedMessage],
    raw: &HashMap<String, &RawCall>,
) -> HashSet<String> {
    let engine = common::engine();
    let keys = common::active(&engine);
    let pseudonym = keys.pseudonym.as_deref().unwrap();
    let mut seen = HashSet::new();
    for message in outputs {
        let payload = message.payload().unwrap();
        assert_eq!(payload[0], 0, "Confluent framing");
        let id = u32::from_be_bytes(payload[1..5].try_into().unwrap());
        let schema = Schema::parse_str(
            &registry
                .schema(id)
                .unwrap_or_else(|| panic!("output schema id {id} is not registered")),
        )
        .unwrap();
        let value = common::decode(&schema, &payload[5..]);
        let event_id = text(common::field(&value, "event_id")).unwrap();
        let call = raw
            .get(&event_id)
            .unwrap_or_else(|| panic!("an output that no input explains"));
        let (class, canonical) = token::canonical(TokenClass::Phone, &call.caller, engine.phone());
        assert_eq!(
            text(common::field(&value, "caller")).unwrap(),
            token::token(pseudonym, class, canonical.as_bytes()).as_str()
        );
        for (name, raw_value) in &call.added {
            assert_eq!(
                text(common::field(&value, name)).unwrap(),
                token::token(pseudonym, TokenClass::Id, raw_value.as_bytes()).as_str(),
                "field {name}"
            );
            assert!(!payload
                .windows(raw_value.len())
                .any(|w| w == raw_value.as_bytes()));
        }
        assert!(!payload
            .windows(call.caller.len())
            .any(|w| w == call.caller.as_bytes()));
        seen.insert(event_id);
    }
    seen
}

fn spawn(
    config: &Config,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<
        Result<pseudonymizer::worker::Stats, pseudonymizer::worker::WorkerError>,
    >,
    Arc<Metrics>,
) {
    let metrics = Metrics::new();
    let (stop, handle) = kafka::spawn_worker(config, metrics.clone());
    (stop, handle, metrics)
}

fn on_topics(config: &mut Config, brokers: &str, topics: &Topics) {
    let kafka = config.kafka.as_mut().unwrap();
    kafka.brokers = brokers.to_owned();
    kafka.group_id = topics.group.clone();
    kafka.dlq_topic = topics.dlq.clone();
    kafka.max_in_flight = 500;
    for (pipeline, output) in config
        .pipeline
        .iter_mut()
        .zip([&topics.calls, &topics.messages])
    {
        pipeline.input_topic = Some(topics.raw.clone());
        pipeline.output_topic = Some(output.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_upgrade_mid_stream_is_published_or_dead_lettered_then_replayed() {
    let logs = common::Logs::capture();
    let brokers = kafka::tansu();
    let topics = Topics::unique("registry-upgrade");
    topics.create(&brokers, 2).await;
    let registry = TestRegistry::start();
    let v1 = registry.register("comms.v1.CallEvent", &call_schema(&[]));
    let v2 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi"]));
    let v3 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi", "imei"]));
    let mut config = registry_config(&registry.url(), "imsi = \"id\"", "");
    on_topics(&mut config, &brokers, &topics);

    // v1, then the producer upgrades to v2 (a new optional field that has a rule), then to v3
    // (one more field, without a rule).
    let calls = [
        raw_calls(v1, &[], 60, 1),
        raw_calls(v2, &["imsi"], 60, 2),
        raw_calls(v3, &["imsi", "imei"], 60, 3),
    ];
    let by_id: HashMap<String, &RawCall> = calls
        .iter()
        .flatten()
        .map(|c| (c.event_id.clone(), c))
        .collect();
    let (stop, worker, metrics) = spawn(&config);
    let records: Vec<(Vec<u8>, String)> = calls
        .iter()
        .flatten()
        .map(|c| (c.payload.clone(), c.key.clone()))
        .collect();
    produce(&brokers, &topics.raw, &records).await;
    let consumer = reader(
        &brokers,
        &[&topics.calls, &topics.dlq],
        &format!("{}-reader", topics.group),
    );
    let got = tokio::task::spawn_blocking(move || {
        let got = collect(&consumer, 180, Duration::from_secs(120));
        (consumer, got)
    });
    let (consumer, got) = got.await.unwrap();
    let (published, dead): (Vec<_>, Vec<_>) =
        got.into_iter().partition(|m| m.topic() == topics.calls);
    assert_eq!((published.len(), dead.len()), (120, 60));
    let seen = verify_calls(&registry, &published, &by_id);
    let want: HashSet<String> = calls[..2]
        .iter()
        .flatten()
        .map(|c| c.event_id.clone())
        .collect();
    assert_eq!(seen, want);
    // Two output versions registered, one per routed writer version.
    let output_ids: HashSet<u32> = published
        .iter()
        .map(|m| u32::from_be_bytes(m.payload().unwrap()[1..5].try_into().unwrap()))
        .collect();
    assert_eq!(output_ids.len(), 2);
    assert_eq!(registry.versions("comms.sanitized.v1.CallEvent").len(), 2);
    // Every v3 record dead-lettered as unclassified-field, sealed; the metric names the field.
    for message in &dead {
        assert_eq!(
            header(message, "dlq.reason"),
            Some(&b"unclassified-field"[..])
        );
        let payload = message.payload().unwrap();
        assert!(!payload.windows(5).any(|w| w == b"imei-"));
    }
    assert!(metrics.render().contains(&format!(
        "pseudonymizer_unclassified_fields{{field=\"imei\",pipeline=\"calls\",schema_id=\"{v3}\"}} 1"
    )));
    // One error line names the schema id and the field path; no line carries a value.
    let lines = logs.lines_with(&["ERROR", &format!("schema_id={v3} "), "imei: has no rule"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    for call in by_id.values() {
        for (_, raw_value) in &call.added {
            assert!(
                logs.lines_with(&[raw_value]).is_empty(),
                "a raw value in the log"
            );
        }
    }
    // Each schema id was fetched once, not once per record.
    for id in [v1, v2, v3] {
        assert_eq!(registry.fetches(id), 1, "schema {id}");
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    // The operator adds the rule, restarts, and replays the dead letters.
    let mut fixed = registry_config(&registry.url(), "imsi = \"id\"\nimei = \"id\"", "");
    on_topics(&mut fixed, &brokers, &topics);
    let (stop, worker, _) = spawn(&fixed);
    let replayed = pseudonymizer::worker::replay::replay(
        fixed.kafka.as_ref().unwrap(),
        std::slice::from_ref(&topics.raw),
        &common::keyset(),
        Duration::from_secs(3),
        None,
    )
    .await
    .unwrap();
    assert_eq!(replayed.replayed, 60);
    let again =
        tokio::task::spawn_blocking(move || collect(&consumer, 60, Duration::from_secs(120)))
            .await
            .unwrap();
    assert!(
        again.iter().all(|m| m.topic() == topics.calls),
        "nothing dead-lettered again"
    );
    assert_eq!(again.len(), 60);
    let seen = verify_calls(&registry, &again, &by_id);
    let want: HashSet<String> = calls[2].iter().map(|c| c.event_id.clone()).collect();
    assert_eq!(seen, want);
    assert_eq!(registry.versions("comms.sanitized.v1.CallEvent").len(), 3);
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_holds_records_and_dead_letters_none() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("registry-outage");
    topics.create(&brokers, 2).await;
    let mut registry = TestRegistry::start();
    let v1 = registry.register("comms.v1.CallEvent", &call_schema(&[]));
    let v2 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi"]));
    let mut config = registry_config(&registry.url(), "imsi = \"id\"", "");
    on_topics(&mut config, &brokers, &topics);
    config.kafka.as_mut().unwrap().metrics_listen = Some("127.0.0.1:0".into());
    let (stop, worker, metrics) = spawn(&config);

    let before = raw_calls(v1, &[], 50, 11);
    let during = raw_calls(v2, &["imsi"], 50, 12);
    let by_id: HashMap<String, &RawCall> = before
        .iter()
        .chain(&during)
        .map(|c| (c.event_id.clone(), c))
        .collect();
    let pairs = |calls: &[RawCall]| -> Vec<(Vec<u8>, String)> {
        calls
            .iter()
            .map(|c| (c.payload.clone(), c.key.clone()))
            .collect()
    };
    produce(&brokers, &topics.raw, &pairs(&before)).await;
    published_at_least(&metrics, 50, Duration::from_secs(60), "v1 records").await;
    assert!(metrics.is_ready());

    // The registry goes away; the producer upgrades to v2, whose schema the worker must fetch.
    registry.down();
    produce(&brokers, &topics.raw, &pairs(&during)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let counts = metrics.counts();
    assert_eq!((counts.published, counts.dead_lettered), (50, 0));
    assert!(
        !metrics.is_ready(),
        "/readyz must be 503 while the registry is unreachable"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains("pseudonymizer_registry_unavailable 1"),
        "{rendered}"
    );
    assert!(!rendered.contains("pseudonymizer_registry_errors_total 0"));

    registry.up();
    published_at_least(
        &metrics,
        100,
        Duration::from_secs(60),
        "v2 records after the registry came back",
    )
    .await;
    assert!(metrics.is_ready());
    assert!(metrics
        .render()
        .contains("pseudonymizer_registry_unavailable 0"));
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert!(stats.dead_lettered.is_empty(), "{:?}", stats.dead_lettered);

    let consumer = reader(
        &brokers,
        &[&topics.calls, &topics.dlq],
        &format!("{}-reader", topics.group),
    );
    let got = tokio::task::spawn_blocking(move || collect(&consumer, 100, Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(got.iter().all(|m| m.topic() == topics.calls));
    assert_eq!(got.len(), 100);
    assert_eq!(verify_calls(&registry, &got, &by_id).len(), 100);
}

/// At-least-once mode: while the registry is down (connections refused), and then while it
/// answers 503, a record of a new version on partition 0 holds only partition 0. Records of
/// resolved versions on partitions 1 and 2 are published meanwhile; partition 0 publishes, in
/// order, once the registry answers; nothing is dead-lettered, nothing lost, and the wait is
/// not reported as a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_holds_only_the_partition_that_waits() {
    let logs = common::Logs::capture();
    let brokers = kafka::tansu();
    let topics = Topics::unique("registry-held-partition");
    topics.create(&brokers, 3).await;
    let mut registry = TestRegistry::start();
    let v1 = registry.register("comms.v1.CallEvent", &call_schema(&[]));
    let v2 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi"]));
    let v3 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi", "imei"]));
    let mut config = registry_config(&registry.url(), "imsi = \"id\"\nimei = \"id\"", "");
    on_topics(&mut config, &brokers, &topics);
    config.kafka.as_mut().unwrap().stall_timeout_secs = 2;
    let (stop, worker, metrics) = spawn(&config);
    let pairs = |calls: &[RawCall], key: Option<&str>| -> Vec<(Vec<u8>, String)> {
        calls
            .iter()
            .map(|c| (c.payload.clone(), key.unwrap_or(&c.key).to_owned()))
            .collect()
    };
    // v1 resolved before anything else.
    let warm = raw_calls(v1, &[], 6, 20);
    for (partition, chunk) in warm.chunks(2).enumerate() {
        produce_to(
            &brokers,
            &topics.raw,
            Some(partition as i32),
            &pairs(chunk, None),
        )
        .await;
    }
    published_at_least(&metrics, 6, Duration::from_secs(60), "warm-up").await;

    let mut by_id: HashMap<String, &RawCall> =
        warm.iter().map(|c| (c.event_id.clone(), c)).collect();
    let mut held_order = Vec::new();
    let rounds = [
        ("connections refused", v2, &["imsi"][..], 30u64),
        ("503", v3, &["imsi", "imei"][..], 40),
    ];
    let mut all_calls = Vec::new();
    for (round, (outage, id, added, seed)) in rounds.iter().enumerate() {
        let before = metrics.counts().published;
        match round {
            0 => registry.down(),
            _ => registry.answer_503(true),
        }
        // Partition 0: a record of the new version, then resolved ones behind it (one key, so
        // their outputs share a partition and their order can be read back).
        let held_key = format!("held-{round}");
        let new_version = raw_calls(*id, added, 1, *seed);
        let behind = raw_calls(v1, &[], 10, seed + 1);
        let mut held: Vec<RawCall> = new_version;
        held.extend(behind);
        produce_to(
            &brokers,
            &topics.raw,
            Some(0),
            &pairs(&held, Some(&held_key)),
        )
        .await;
        // Partitions 1 and 2: resolved versions only.
        let others = raw_calls(v1, &[], 20, seed + 2);
        produce_to(&brokers, &topics.raw, Some(1), &pairs(&others[..10], None)).await;
        produce_to(&brokers, &topics.raw, Some(2), &pairs(&others[10..], None)).await;
        published_at_least(
            &metrics,
            before + 20,
            Duration::from_secs(60),
            &format!("{outage}: the other partitions"),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let counts = metrics.counts();
        assert_eq!(
            (counts.published, counts.dead_lettered),
            (before + 20, 0),
            "{outage}: only partitions 1 and 2 are published while the registry is away"
        );
        assert!(
            !metrics.is_ready(),
            "{outage}: /readyz 503 while records wait"
        );
        let rendered = metrics.render();
        assert!(
            rendered.contains("pseudonymizer_registry_unavailable 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains("pseudonymizer_stalls_total 0"),
            "a held partition is not a stall: {:?}",
            logs.lines_with(&["stalled"])
        );

        match round {
            0 => registry.up(),
            _ => registry.answer_503(false),
        }
        published_at_least(
            &metrics,
            before + 31,
            Duration::from_secs(60),
            &format!("{outage}: the held partition after the registry came back"),
        )
        .await;
        assert!(metrics.is_ready());
        held_order.push(held.iter().map(|c| c.event_id.clone()).collect::<Vec<_>>());
        all_calls.push(held);
        all_calls.push(others);
    }
    for calls in &all_calls {
        for call in calls {
            by_id.insert(call.event_id.clone(), call);
        }
    }
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert!(stats.dead_lettered.is_empty(), "{:?}", stats.dead_lettered);
    assert!(
        !logs
            .lines_with(&["schema registry answers again"])
            .is_empty(),
        "an INFO line says the registry is back"
    );

    let consumer = reader(
        &brokers,
        &[&topics.calls, &topics.dlq],
        &format!("{}-reader", topics.group),
    );
    let got = tokio::task::spawn_blocking(move || collect(&consumer, 68, Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(got.iter().all(|m| m.topic() == topics.calls));
    assert_eq!(got.len(), 6 + 2 * 31, "every record once");
    assert_eq!(verify_calls(&registry, &got, &by_id).len(), got.len());
    // The held partition's records come out in their input order (one key: one output
    // partition, read in order).
    let in_order: Vec<String> = got
        .iter()
        .map(|m| {
            let payload = m.payload().unwrap();
            let id = u32::from_be_bytes(payload[1..5].try_into().unwrap());
            let schema = Schema::parse_str(&registry.schema(id).unwrap()).unwrap();
            text(common::field(
                &common::decode(&schema, &payload[5..]),
                "event_id",
            ))
            .unwrap()
        })
        .collect();
    for order in &held_order {
        let published: Vec<&String> = in_order.iter().filter(|id| order.contains(id)).collect();
        assert_eq!(
            published,
            order.iter().collect::<Vec<_>>(),
            "held records published in order"
        );
    }
}

/// The same outage in exactly-once mode, against Apache Kafka (Tansu has no transactions),
/// lasting longer than the transaction timeout: the worker commits what it has done before it
/// waits (a `read_committed` reader sees the v1 records during the outage), holds the v2
/// records with no transaction open, and afterwards publishes each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_in_exactly_once_mode_outlasts_the_transaction_timeout() {
    let brokers = kafka::apache_kafka().brokers;
    let topics = Topics::unique("registry-outage-eos");
    // One raw partition: every v1 record is read before the first v2 record (a wait holds
    // the whole consume loop, not only the waiting record's partition).
    topics.create(&brokers, 1).await;
    let mut registry = TestRegistry::start();
    let v1 = registry.register("comms.v1.CallEvent", &call_schema(&[]));
    let v2 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi"]));
    let mut config = registry_config(&registry.url(), "imsi = \"id\"", "");
    on_topics(&mut config, &brokers, &topics);
    {
        let kafka = config.kafka.as_mut().unwrap();
        kafka.mode = pseudonymizer::config::DeliveryMode::ExactlyOnce;
        kafka.transactional_id = Some(format!("{}-txn", topics.group));
        // A short transaction timeout, so that the outage below outlasts it.
        for (name, value) in [
            ("transaction.timeout.ms", "8000"),
            ("message.timeout.ms", "8000"),
        ] {
            kafka.producer_properties.insert(name.into(), value.into());
        }
    }
    let (stop, worker, metrics) = spawn(&config);

    let warm_up = raw_calls(v1, &[], 1, 20);
    let before = raw_calls(v1, &[], 50, 21);
    let during = raw_calls(v2, &["imsi"], 50, 22);
    let by_id: HashMap<String, &RawCall> = warm_up
        .iter()
        .chain(&before)
        .chain(&during)
        .map(|c| (c.event_id.clone(), c))
        .collect();
    let pairs = |calls: &[RawCall]| -> Vec<(Vec<u8>, String)> {
        calls
            .iter()
            .map(|c| (c.payload.clone(), c.key.clone()))
            .collect()
    };
    let committed_reader = |name: &str| -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{}-{name}", topics.group))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        consumer.subscribe(&[&topics.calls, &topics.dlq]).unwrap();
        consumer
    };

    // v1's schema id is resolved while the registry is up.
    produce(&brokers, &topics.raw, &pairs(&warm_up)).await;
    published_at_least(&metrics, 1, Duration::from_secs(60), "the first v1 record").await;
    // The registry goes away; 50 v1 records and then v2 records arrive together, so v2's wait
    // begins with v1 records in the open transaction: they are committed before the wait.
    registry.down();
    let mut all = pairs(&before);
    all.extend(pairs(&during));
    produce(&brokers, &topics.raw, &all).await;
    let consumer = committed_reader("during");
    let got = tokio::task::spawn_blocking(move || collect(&consumer, 51, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        51,
        "the v1 records are committed during the outage"
    );
    assert!(
        !metrics.is_ready(),
        "/readyz is 503 while the registry is unreachable"
    );

    // Longer than the transaction timeout (8 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        !worker.is_finished(),
        "the worker keeps waiting, it does not stop"
    );
    let counts = metrics.counts();
    assert_eq!((counts.published, counts.dead_lettered), (51, 0));

    registry.up();
    published_at_least(
        &metrics,
        101,
        Duration::from_secs(60),
        "v2 records after the registry came back",
    )
    .await;
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert!(stats.dead_lettered.is_empty(), "{:?}", stats.dead_lettered);

    let consumer = committed_reader("after");
    let got = tokio::task::spawn_blocking(move || collect(&consumer, 101, Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(got.iter().all(|m| m.topic() == topics.calls));
    assert_eq!(got.len(), 101, "each record exactly once");
    assert_eq!(verify_calls(&registry, &got, &by_id).len(), 101);
}

#[test]
fn the_registry_client_talks_the_confluent_api() {
    let registry = TestRegistry::start();
    let config = registry_config(&registry.url(), "", "");
    let client = RegistryClient::new(config.registry.as_ref().unwrap()).unwrap();
    // latest of a subject that does not exist: 40401.
    let error = client.latest("comms.v1.CallEvent").unwrap_err();
    assert_eq!(error.code(), Some(40401), "{error}");
    let id = client
        .register("comms.v1.CallEvent", &call_schema(&[]))
        .unwrap();
    // Registering the same schema again answers the same id.
    assert_eq!(
        client
            .register("comms.v1.CallEvent", &call_schema(&[]))
            .unwrap(),
        id
    );
    let latest = client.latest("comms.v1.CallEvent").unwrap();
    assert_eq!((latest.id, latest.version), (id, Some(1)));
    assert_eq!(client.schema_by_id(id).unwrap().schema_type, "AVRO");
    // An invalid schema: 42201.
    let error = client.register("x", "{\"type\": \"nope\"}").unwrap_err();
    assert_eq!(error.code(), Some(42201), "{error}");
    assert_eq!(client.schema_by_id(77).unwrap_err().code(), Some(40403));
}

/// Runs the binary with a registry config written beside the test keyring.
fn cli(dir: &std::path::Path, config_text: &str, args: &[&str]) -> (bool, String) {
    let schemas = common::repo().join("schemas");
    let keyring = common::write_keyring(dir);
    let text = config_text
        .replace("\"../schemas/", &format!("\"{}/", schemas.display()))
        .replace(
            "keyring = \"../keys/keyring.json\"",
            &format!("keyring = \"{}\"", keyring.display()),
        );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn schema_register_and_check_use_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let text = registry_config_text(&registry.url(), "imsi = \"id\"", "");

    // Nothing registered yet: check says so and passes on the local schemas.
    let (ok, said) = cli(dir.path(), &text, &["check"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("subject comms.v1.CallEvent has no version of comms.v1.CallEvent yet"),
        "{said}"
    );

    // The producer registers v2 (imsi, which has a rule): register derives both versions.
    registry.register("comms.v1.CallEvent", &call_schema(&[]));
    let v2 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi"]));
    let (ok, said) = cli(dir.path(), &text, &["schema", "register"]);
    assert!(ok, "{said}");
    let versions = registry.versions("comms.sanitized.v1.CallEvent");
    assert_eq!(versions.len(), 2, "{said}");
    for id in &versions {
        assert!(
            said.contains(&format!("calls: comms.sanitized.v1.CallEvent id {id} ")),
            "{said}"
        );
    }
    assert_eq!(
        registry.versions("comms.sanitized.v1.MessageEvent").len(),
        1
    );
    let (ok, said) = cli(dir.path(), &text, &["check"]);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!(
            "version 2 (id {v2}, comms.v1.CallEvent): every field has a rule"
        )),
        "{said}"
    );

    // v3 adds a field without a rule: check names it and fails.
    let v3 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi", "imei"]));
    let (ok, said) = cli(dir.path(), &text, &["check"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!(
            "version 3 (id {v3}) would be dead-lettered as unclassified-field"
        )),
        "{said}"
    );
    assert!(said.contains("imei: has no rule"), "{said}");
}

/// The shipped layout: both pipelines read `comms.raw`, so under the `topic` strategy one
/// subject (`comms.raw-value`) holds versions of both records. `check` compiles each pipeline
/// against the latest version of its own record, as the worker matches them, and prints rules
/// that name no field of it.
#[test]
fn check_reads_a_shared_raw_topic_as_the_worker_does() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let text = registry_config_text(&registry.url(), "imsi = \"id\"", "").replace(
        "subject_strategy = \"record\"",
        "subject_strategy = \"topic\"",
    );
    let call_v1 = registry.register("comms.raw-value", &call_schema(&[]));
    let message_v1 = registry.register("comms.raw-value", &message_schema());
    let (ok, said) = cli(dir.path(), &text, &["check"]);
    assert!(ok, "no false unclassified fields: {said}");
    assert!(
        said.contains(&format!(
            "calls: subject comms.raw-value version 1 (id {call_v1}, comms.v1.CallEvent): every field has a rule"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "messages: subject comms.raw-value version 2 (id {message_v1}, comms.v1.MessageEvent)"
        )),
        "{said}"
    );
    // The rule for imsi names no field of the version read: said, not fatal.
    assert!(
        said.contains("calls: rule \"imsi\" names no field of version 1"),
        "{said}"
    );

    // A call version with a field that has no rule becomes the latest: check names it.
    registry.register("comms.raw-value", &call_schema(&["imsi", "imei"]));
    let (ok, said) = cli(dir.path(), &text, &["check"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("calls: subject comms.raw-value version 3"),
        "{said}"
    );
    assert!(said.contains("imei: has no rule"), "{said}");
    assert!(
        !said.contains("messages: subject comms.raw-value version 3"),
        "{said}"
    );
}

/// With a registry, a pinned output_schema_id is verified at start: not registered, or the id
/// of another schema, and the worker refuses to start, saying what to do.
#[test]
fn a_pinned_output_schema_id_is_verified_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let pinned = registry_config_text(&registry.url(), "", "").replacen(
        "key_class = \"phone\"\n",
        "key_class = \"phone\"\ninput_schema_id = 1\noutput_schema_id = 101\n",
        1,
    );
    let (ok, said) = cli(dir.path(), &pinned, &["run"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("output_schema_id 101 is pinned, but the derived schema is not registered under comms.sanitized.v1.CallEvent"),
        "{said}"
    );
    assert!(said.contains("pseudonymizer schema register"), "{said}");

    // Registered now, under another id than the pin: the error names the right one.
    let (ok, said) = cli(dir.path(), &pinned, &["schema", "register"]);
    assert!(ok, "{said}");
    let registered = *registry
        .versions("comms.sanitized.v1.CallEvent")
        .first()
        .unwrap();
    assert_ne!(registered, 101);
    let (ok, said) = cli(dir.path(), &pinned, &["run"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!(
            "registered under comms.sanitized.v1.CallEvent as id {registered}: pin {registered}"
        )),
        "{said}"
    );
}

/// A one-purpose HTTPS registry: answers every request with the v1 call schema, over TLS
/// with a certificate for `localhost` made for this test. Returns its port.
fn tls_registry(certified: &rcgen::CertifiedKey) -> u16 {
    tls_registry_with(certified, None)
}

/// [`tls_registry`]; with `client_ca`, clients must show a certificate it signed (mutual TLS).
fn tls_registry_with(
    certified: &rcgen::CertifiedKey,
    client_ca: Option<&rcgen::Certificate>,
) -> u16 {
    use std::io::{Read, Write};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = Arc::new(
        builder
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = serde_json::json!({ "schema": call_schema(&[]) }).to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            // The request head (a GET has no body); a failed handshake just ends the connection.
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if head.ends_with(b"\r\n\r\n") {
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    });
    port
}

#[test]
fn https_registries_are_trusted_through_the_configured_ca_file() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let port = tls_registry(&certified);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("registry-ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let url = format!("https://localhost:{port}");

    // With the CA file: the schema arrives.
    let config = registry_config(&url, "", &format!("ca_file = \"{}\"", ca.display()));
    let client = RegistryClient::new(config.registry.as_ref().unwrap()).unwrap();
    let schema = client.schema_by_id(1).unwrap();
    assert!(schema.schema.contains("CallEvent"));

    // Without it the certificate is not trusted: unavailable, never a schema.
    let config = registry_config(&url, "", "");
    let client = RegistryClient::new(config.registry.as_ref().unwrap()).unwrap();
    let error = client.schema_by_id(1).unwrap_err();
    assert!(matches!(error, RegistryError::Unavailable(_)), "{error}");

    // A CA file that holds no certificate is refused when the client is made.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let config = registry_config(&url, "", &format!("ca_file = \"{}\"", empty.display()));
    let error = RegistryClient::new(config.registry.as_ref().unwrap()).unwrap_err();
    assert!(
        error.to_string().contains("holds no certificate"),
        "{error}"
    );
}

/// Mutual TLS: a registry that requires a client certificate gets the one of `cert_file` and
/// `key_file`; without them the registry is unavailable; one without the other is refused.
#[test]
fn mutual_tls_registries_get_the_client_certificate() {
    let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["pseudonymizer".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let port = tls_registry_with(&server, Some(&ca));
    let dir = tempfile::tempdir().unwrap();
    let server_ca = dir.path().join("registry-ca.pem");
    std::fs::write(&server_ca, server.cert.pem()).unwrap();
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert, client.pem()).unwrap();
    std::fs::write(&key, client_key.serialize_pem()).unwrap();
    let url = format!("https://localhost:{port}");
    let trust = format!("ca_file = \"{}\"", server_ca.display());

    let config = registry_config(
        &url,
        "",
        &format!(
            "{trust}\ncert_file = \"{}\"\nkey_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let client = RegistryClient::new(config.registry.as_ref().unwrap()).unwrap();
    assert!(client.schema_by_id(1).unwrap().schema.contains("CallEvent"));

    let config = registry_config(&url, "", &trust);
    let client = RegistryClient::new(config.registry.as_ref().unwrap()).unwrap();
    let error = client.schema_by_id(1).unwrap_err();
    assert!(matches!(error, RegistryError::Unavailable(_)), "{error}");

    let text = registry_config_text(
        &url,
        "",
        &format!("{trust}\ncert_file = \"{}\"", cert.display()),
    );
    let error = Config::from_toml(&text, &common::repo().join("config/pipeline.toml")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("needs both cert_file and key_file"),
        "{error}"
    );
}

/// The caller token of one sanitized call event.
fn caller_token(schema: &Schema, datum: &[u8]) -> String {
    let Value::Record(fields) = common::decode(schema, datum) else {
        panic!("a sanitized call is a record");
    };
    let caller = fields
        .into_iter()
        .find(|(name, _)| name == "caller")
        .unwrap()
        .1;
    match caller {
        Value::String(token) => token,
        Value::Union(_, inner) => match *inner {
            Value::String(token) => token,
            other => panic!("caller is {other:?}"),
        },
        other => panic!("caller is {other:?}"),
    }
}

#[test]
fn a_pipeline_domain_holds_for_every_writer_version_the_registry_serves() {
    // Before: the rules compiled against a fetched writer version lost the pipeline's
    // domain, and its tokens were the default domain's, linkable across teams.
    let registry = TestRegistry::start();
    let text = registry_config_text(&registry.url(), "imsi = \"id\"", "").replacen(
        "name = \"calls\"",
        "name = \"calls\"\ndomain = \"team-calls\"",
        1,
    );
    let shipped = common::repo().join("config/pipeline.toml");
    let config = Config::from_toml(&text, &shipped).unwrap();
    let engine = Engine::from_config(&config).unwrap();
    let router = Router::from_config(&config, &engine).unwrap();
    let metrics = Metrics::new();
    let resolver = resolver(&config);
    let keys = common::active(&engine);
    let v1 = registry.register("comms.v1.CallEvent", &call_schema(&[]));
    let v2 = registry.register("comms.v1.CallEvent", &call_schema(&["imsi"]));

    // The configured plan's token of one event's caller: the domain's.
    let event = Generator::new(11).event(Kind::Call);
    let v1_schema = Schema::parse_str(&call_schema(&[])).unwrap();
    let configured = engine.plan("comms.v1.CallEvent").unwrap();
    assert_eq!(configured.domain.as_deref(), Some("team-calls"));
    let mut expected = Vec::new();
    engine
        .transform(
            configured,
            &keys,
            &common::encode(&v1_schema, event.clone()),
            &mut expected,
        )
        .unwrap();
    let expected = caller_token(&configured.output, &expected);
    let default_domain = {
        let plain = Config::from_toml(
            &registry_config_text(&registry.url(), "imsi = \"id\"", ""),
            &shipped,
        )
        .unwrap();
        let plain = Engine::from_config(&plain).unwrap();
        let plan = plain.plan("comms.v1.CallEvent").unwrap();
        let mut out = Vec::new();
        plain
            .transform(
                plan,
                &common::active(&plain),
                &common::encode(&v1_schema, event.clone()),
                &mut out,
            )
            .unwrap();
        caller_token(&plan.output, &out)
    };
    assert_ne!(expected, default_domain, "the domain gives its own tokens");

    // The same event through each writer version the registry serves: the domain's token.
    let Value::Record(mut fields) = event else {
        unreachable!()
    };
    fields.push((
        "imsi".into(),
        Value::Union(1, Box::new(Value::String("510109876543210".into()))),
    ));
    let v2_schema = Schema::parse_str(&call_schema(&["imsi"])).unwrap();
    let versions = [
        (
            v1,
            common::encode(
                &v1_schema,
                Value::Record(fields[..fields.len() - 1].to_vec()),
            ),
        ),
        (v2, common::encode(&v2_schema, Value::Record(fields))),
    ];
    for (id, datum) in versions {
        let Resolution::Route(Target::Avro(route)) =
            resolver.resolve(&router, &metrics, id).unwrap()
        else {
            panic!("version {id} should be routed");
        };
        assert_eq!(
            route.plan.domain.as_deref(),
            Some("team-calls"),
            "version {id}"
        );
        router.insert(id, Resolution::Route(Target::Avro(route.clone())));
        let mut out = Vec::new();
        router
            .process(&engine, &keys, None, Some(&frame(id, &datum)), &mut out)
            .unwrap();
        assert_eq!(
            caller_token(&route.plan.output, &out[5..]),
            expected,
            "version {id}"
        );
    }
}
