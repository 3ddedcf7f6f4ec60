//! A person's rights in the stream, against Apache Kafka (scripts/kafka.sh): the subject
//! registry and the erasure notices are compacted topics made by `subjects init`, and a
//! worker follows the registry while it runs.
//!
//! - erasure while the worker runs, in each delivery mode: after the cut-off no output record
//!   carries the person's token (as `lookup` would give it), their records' sealed fields are
//!   gone, everyone else's records are exact; the notice holds the person's tokens; the
//!   command is idempotent and `status` says what the registry holds;
//! - an opt-in domain publishes the tokens of the opted-in only.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use common::kafka::{self, Topics};
use common::process::cli;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::metrics::Metrics;
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::subjects::Notice;
use pseudonymizer::token::{self, TokenClass};
use pseudonymizer::worker::route::frame;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

/// The person of every test, as the network writes the number and as its canonical form.
const PERSON: &str = "+65 9123 4567";
const PERSON_E164: &str = "+6591234567";

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

struct World {
    brokers: String,
    topics: Topics,
    registry: String,
    notices: String,
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

/// Topics (and the subject topics through `subjects init`) and a config whose `[kafka]` gets
/// `kafka_extra` and whose messages pipeline gets `messages_extra`.
async fn setup(test: &str, kafka_extra: &str, messages_extra: &str) -> World {
    let apache = kafka::apache_kafka();
    let topics = Topics::unique(test);
    topics.create(&apache.brokers, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let base = kafka::write_config(dir.path(), &topics, &apache.brokers, "");
    let registry = format!("subjects-{}", topics.group);
    let notices = format!("erasures-{}", topics.group);
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace(
            "shutdown_timeout_secs = 20",
            &format!("shutdown_timeout_secs = 20\nsubjects_topic = \"{registry}\"\nerasure_topic = \"{notices}\"\n{kafka_extra}"),
        )
        .replace(
            "output_schema_id = 102\nkey_class = \"phone\"",
            &format!("output_schema_id = 102\nkey_class = \"phone\"\n{messages_extra}"),
        );
    let config = dir.path().join("subjects.toml");
    std::fs::write(&config, text).unwrap();
    let (ok, said) = cli(&["subjects", "init", "--config", config.to_str().unwrap()]);
    assert!(ok, "subjects init: {said}");
    assert!(said.contains("created (cleanup.policy=compact)"), "{said}");
    // A second init checks and changes nothing.
    let (ok, said) = cli(&["subjects", "init", "--config", config.to_str().unwrap()]);
    assert!(ok && said.contains("exists, compacted"), "{said}");
    World {
        brokers: apache.brokers,
        topics,
        registry,
        notices,
        dir: dir.path().to_owned(),
        _dir: dir,
        config,
    }
}

/// Produces `count` events (calls and messages alternating); every `every`-th event is the
/// person's (its caller or sender is [`PERSON`]). Returns the events by id.
async fn produce(
    world: &World,
    count: usize,
    seed: u64,
    every: usize,
) -> HashMap<String, (Value, bool)> {
    let engine = common::engine();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut generator = Generator::new(seed);
    let mut events = HashMap::new();
    let mut deliveries = Vec::new();
    for i in 0..count {
        let (kind, name, id, who) = if i % 2 == 0 {
            (Kind::Call, "comms.v1.CallEvent", 1, "caller")
        } else {
            (Kind::Message, "comms.v1.MessageEvent", 2, "sender")
        };
        let mut event = generator.event(kind);
        let theirs = i % every == 0;
        if theirs {
            common::set_field(&mut event, who, Value::String(PERSON.into()));
        }
        let key = kafka::text(common::field(&event, who)).unwrap();
        let event_id = kafka::text(common::field(&event, "event_id")).unwrap();
        let plan = engine.plan(name).unwrap();
        let payload = frame(id, &common::encode(&plan.input, event.clone()));
        events.insert(event_id, (event, theirs));
        let record = FutureRecord::to(&world.topics.raw)
            .payload(&payload)
            .key(&key);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().expect("delivered");
    }
    events
}

/// Every analytics record until `want` of them have arrived (read_committed).
fn read_outputs(world: &World, want: usize) -> Vec<OwnedMessage> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .set("group.id", format!("reader-{}-{want}", world.topics.group))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    reader
        .subscribe(&[&world.topics.calls, &world.topics.messages])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} outputs within 2 min",
            got.len()
        );
        if let Some(message) = reader.poll(Duration::from_millis(200)) {
            got.push(message.unwrap().detach());
        }
    }
    got
}

fn request_file(dir: &Path, name: &str, lines: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines).unwrap();
    path.to_str().unwrap().to_owned()
}

fn subjects(world: &World, verb: &str, file: &str, extra: &[&str]) -> String {
    let audit = world.dir.join("audit.log");
    let mut args = vec![
        "subjects",
        verb,
        "--config",
        world.config.to_str().unwrap(),
        "--values-from",
        file,
        "--audit-log",
        audit.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, said) = cli(&args);
    assert!(ok, "subjects {verb}: {said}");
    said
}

/// A token's shape: the active key's id, `:`, 22 base64url characters.
fn token_shaped(text: &str) -> bool {
    text.strip_prefix("p-test-1:")
        .is_some_and(|mac| mac.len() == 22)
}

/// Whether an output field holds an envelope (non-empty bytes) anywhere inside it.
fn has_envelope(value: &Value) -> bool {
    match value {
        Value::Bytes(b) => !b.is_empty(),
        Value::Union(_, inner) => has_envelope(inner),
        Value::Array(items) => items.iter().any(has_envelope),
        Value::Record(fields) => fields.iter().any(|(_, v)| has_envelope(v)),
        _ => false,
    }
}

struct Checked {
    theirs: usize,
    others: usize,
}

/// Checks each output of `events`: the person's carry no token of theirs and no envelope;
/// everyone else's carry their own tokens (in `domain`) and their envelopes.
fn check_outputs(
    outputs: &[OwnedMessage],
    events: &HashMap<String, (Value, bool)>,
    world: &World,
    person_withheld: bool,
) -> Checked {
    let engine = common::engine();
    let pkey = common::keyset().pseudonym().unwrap().clone();
    let phone = PhoneCanon::new("ID").unwrap();
    let person_token = token::token(&pkey, TokenClass::Phone, PERSON_E164.as_bytes());
    let mut checked = Checked {
        theirs: 0,
        others: 0,
    };
    for message in outputs {
        let payload = message.payload().unwrap();
        let calls = message.topic() == world.topics.calls;
        let (name, who) = if calls {
            ("comms.v1.CallEvent", "caller")
        } else {
            ("comms.v1.MessageEvent", "sender")
        };
        let output = common::decode(&engine.plan(name).unwrap().output, &payload[5..]);
        let id = kafka::text(common::field(&output, "event_id")).unwrap();
        let Some((input, theirs)) = events.get(&id) else {
            continue;
        };
        let got = kafka::text(common::field(&output, who)).unwrap();
        assert!(
            !person_withheld || !String::from_utf8_lossy(payload).contains(person_token.as_str()),
            "an output carries the withheld person's token"
        );
        if *theirs && person_withheld {
            checked.theirs += 1;
            assert!(
                token_shaped(&got) && got != person_token.as_str(),
                "{who} of a withheld record: {got}"
            );
            assert_ne!(message.key(), Some(person_token.as_bytes()));
            assert!(
                !has_envelope(&output),
                "a withheld record keeps a sealed field: {id}"
            );
        } else {
            checked.others += 1;
            let raw = kafka::text(common::field(input, who)).unwrap();
            let (class, canonical) = token::canonical(TokenClass::Phone, &raw, &phone);
            assert_eq!(
                got,
                token::token(&pkey, class, canonical.as_bytes()).as_str(),
                "{who} of {id}"
            );
            let raw_sealed = if calls { "recording_url" } else { "body" };
            if kafka::text(common::field(input, raw_sealed)).is_some() {
                assert!(
                    has_envelope(common::field(&output, raw_sealed)),
                    "{raw_sealed} of {id} is sealed as before"
                );
            }
        }
    }
    checked
}

async fn erase_while_running(test: &str, kafka_extra: &str) {
    let _serial = serial().await;
    let world = setup(test, kafka_extra, "").await;
    let config = pseudonymizer::config::Config::load(&world.config).unwrap();
    let metrics = Metrics::new();
    let (stop, handle) = kafka::spawn_worker(&config, metrics.clone());

    // Before: the person's records are published as anyone's.
    let before = produce(&world, 200, 1, 3).await;
    kafka::published_at_least(
        &metrics,
        200,
        Duration::from_secs(120),
        "before the erasure",
    )
    .await;
    let outputs = read_outputs(&world, 200);
    let checked = check_outputs(&outputs, &before, &world, false);
    assert_eq!((checked.theirs, checked.others), (0, 200));

    // The erasure, and the cut-off: 5 s after the command returns.
    let file = request_file(
        &world.dir,
        "request.txt",
        &format!("phone {PERSON}\nemail alice@example.com\n"),
    );
    let said = subjects(&world, "erase", &file, &["--request-id", "req-test-1"]);
    assert!(said.contains("\"changed\":true"), "{said}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = produce(&world, 200, 2, 3).await;
    kafka::published_at_least(&metrics, 400, Duration::from_secs(120), "after the erasure").await;
    let outputs = read_outputs(&world, 400);
    let checked = check_outputs(&outputs, &after, &world, true);
    // Every third event is the person's: 34 calls and 33 messages.
    assert_eq!(
        checked.theirs, 67,
        "every record of the person's after the cut-off"
    );
    assert_eq!(checked.others, 133);
    assert!(
        metrics
            .render()
            .contains("pseudonymizer_subject_withheld_total{outcome=\"published\"} 67"),
        "{}",
        metrics.render()
    );
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();

    // The notice: the person's tokens, keyed by the request id; one per request.
    let notices = kafka::read_from_start(&world.brokers, &world.notices, 1);
    assert_eq!(notices.len(), 1);
    let notice = Notice::parse(notices[0].key().unwrap(), notices[0].payload().unwrap()).unwrap();
    let pkey = common::keyset().pseudonym().unwrap().clone();
    let person_token = token::token(&pkey, TokenClass::Phone, PERSON_E164.as_bytes());
    assert!(notice
        .tokens
        .iter()
        .any(|t| t.token == person_token.as_str() && t.domain.is_none()));
    assert_eq!(notice.subjects.len(), 2);
    assert!(
        !String::from_utf8_lossy(notices[0].payload().unwrap()).contains("9123"),
        "no raw value in a notice"
    );

    // Idempotent, and `status` says so.
    let said = subjects(&world, "erase", &file, &[]);
    assert!(
        said.contains("\"changed\":false") && !said.contains("\"changed\":true"),
        "{said}"
    );
    assert_eq!(
        kafka::read_from_start(&world.brokers, &world.notices, 1).len(),
        1,
        "no second notice"
    );
    let said = subjects(&world, "status", &file, &[]);
    assert!(said.contains("\"request\":\"req-test-1\""), "{said}");
    let registry = kafka::read_from_start(&world.brokers, &world.registry, 1);
    assert_eq!(registry.len(), 2);
    for record in &registry {
        let value = String::from_utf8_lossy(record.payload().unwrap()).into_owned();
        assert!(
            !value.contains("9123")
                && !value.contains("alice")
                && !value.contains(person_token.as_str()),
            "{value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_while_the_worker_runs_at_least_once() {
    erase_while_running("erase-alo", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_while_the_worker_runs_exactly_once() {
    erase_while_running(
        "erase-eos",
        &format!(
            "mode = \"exactly-once\"\ntransactional_id = \"erase-eos-{}\"",
            std::process::id()
        ),
    )
    .await;
}

/// `consent = "opt-in"`: the messages pipeline publishes the tokens of the opted-in only; the
/// calls pipeline (no consent) publishes everyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_in_domain_publishes_only_the_opted_in() {
    let _serial = serial().await;
    let world = setup("opt-in", "", "domain = \"marketing\"\nconsent = \"opt-in\"").await;
    let file = request_file(&world.dir, "request.txt", &format!("phone {PERSON}\n"));
    let said = subjects(&world, "opt-in", &file, &["--domain", "marketing"]);
    assert!(said.contains("\"changed\":true"), "{said}");
    let config = pseudonymizer::config::Config::load(&world.config).unwrap();
    let metrics = Metrics::new();
    let (stop, handle) = kafka::spawn_worker(&config, metrics.clone());
    let events = produce(&world, 200, 3, 3).await;
    kafka::published_at_least(&metrics, 200, Duration::from_secs(120), "opt-in").await;
    let outputs = read_outputs(&world, 200);
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();

    let engine = common::engine();
    let marketing = common::keyset().pseudonym().unwrap().in_domain("marketing");
    let person = token::token(&marketing, TokenClass::Phone, PERSON_E164.as_bytes());
    let (mut opted_in, mut others) = (0, 0);
    for message in outputs
        .iter()
        .filter(|m| m.topic() == world.topics.messages)
    {
        let output = common::decode(
            &engine.plan("comms.v1.MessageEvent").unwrap().output,
            &message.payload().unwrap()[5..],
        );
        let id = kafka::text(common::field(&output, "event_id")).unwrap();
        let sender = kafka::text(common::field(&output, "sender")).unwrap();
        if events[&id].1 {
            opted_in += 1;
            assert_eq!(sender, person.as_str(), "the opted-in keep their token");
        } else {
            others += 1;
            assert!(token_shaped(&sender), "{sender}");
            let raw = kafka::text(common::field(&events[&id].0, "sender")).unwrap();
            let (class, canonical) =
                token::canonical(TokenClass::Phone, &raw, &PhoneCanon::new("ID").unwrap());
            assert_ne!(
                sender,
                token::token(&marketing, class, canonical.as_bytes()).as_str(),
                "not opted in: no linkable token"
            );
        }
        // Every message has someone not opted in among its parties: nothing sealed is published.
        assert!(
            !has_envelope(&output),
            "a message of the opt-in domain keeps a sealed field"
        );
    }
    assert_eq!((opted_in, others), (33, 67));
    // The calls pipeline asks no consent: everyone's calls are as before.
    let calls: Vec<OwnedMessage> = outputs
        .into_iter()
        .filter(|m| m.topic() == world.topics.calls)
        .collect();
    let checked = check_outputs(&calls, &events, &world, false);
    assert_eq!((checked.theirs, checked.others), (0, 100));
}
