//! A person's rights in the stream, against Apache Kafka (scripts/kafka.sh): the subject
//! registry and the erasure notices are compacted topics made by `subjects init`, and a
//! worker follows the registry while it runs.
//!
//! - erasure while the worker runs, in each delivery mode: after the cut-off no output record
//!   carries the person's token (as `lookup` would give it), their records' sealed fields are
//!   gone, everyone else's records are exact; the notice holds the person's tokens; the
//!   command is idempotent and `status` says what the registry holds;
//! - an opt-in domain publishes the tokens of the opted-in only;
//! - the notice lists the person's tokens under two epochs and two domains;
//! - a registry record whose hint is wrong (or missing: format v1) is reported by `status` and
//!   written again by a repeat of the request;
//! - careless requests: a reused request id refused, a failed report after a whole record,
//!   what workers do not act on named by `status`, warnings.

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

/// `subjects VERB` with the world's config and audit log: whether it succeeded, and what it
/// said on both streams.
fn try_subjects(world: &World, verb: &str, file: &str, extra: &[&str]) -> (bool, String) {
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
    cli(&args)
}

/// [`try_subjects`], which must succeed.
fn subjects(world: &World, verb: &str, file: &str, extra: &[&str]) -> String {
    let (ok, said) = try_subjects(world, verb, file, extra);
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

    // Access: the export finds every record of the person's and no other, sealed fields open.
    let person_file = request_file(&world.dir, "person.txt", &format!("phone {PERSON}\n"));
    let export = world.dir.join("person.jsonl");
    let output = std::process::Command::new("timeout")
        .arg("120")
        .arg(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args([
            "subjects",
            "export",
            "--config",
            world.config.to_str().unwrap(),
            "--values-from",
            &person_file,
        ])
        .args([
            "--topic",
            &world.topics.calls,
            "--topic",
            &world.topics.messages,
            "--output",
            export.to_str().unwrap(),
        ])
        .arg("--audit-log")
        .arg(world.dir.join("audit.log"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exported: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: std::collections::HashSet<String> = exported
        .iter()
        .map(|e| e["record"]["event_id"].as_str().unwrap().to_owned())
        .collect();
    let theirs: std::collections::HashSet<String> = before
        .iter()
        .filter(|(_, (_, t))| *t)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(exported.len(), 67);
    assert_eq!(
        ids, theirs,
        "the export holds the person's records and no other"
    );
    for e in &exported {
        let (input, _) = &before[e["record"]["event_id"].as_str().unwrap()];
        let sealed = if e["source"] == world.topics.calls.as_str() {
            "recording_url"
        } else {
            "body"
        };
        if let Some(body) = kafka::text(common::field(input, sealed)) {
            assert_eq!(
                e["record"][sealed].as_str(),
                Some(body.as_str()),
                "sealed field opened"
            );
        }
    }

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
            .contains("pseudonymizer_subject_records_total{outcome=\"published\"} 67"),
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
    assert!(
        said.contains("\"hint\":\"ok\"") && !said.contains("\"hint\":\"wrong\""),
        "{said}"
    );
    // `lookup` with the config says the person was erased, and when.
    let (ok, said) = cli(&[
        "lookup",
        "--keyring",
        world.dir.join("keyring.json").to_str().unwrap(),
        "--config",
        world.config.to_str().unwrap(),
        "--audit-log",
        world.dir.join("audit.log").to_str().unwrap(),
        "--class",
        "phone",
        "--values-from",
        &person_file,
    ]);
    assert!(
        ok && said.contains("\"erased\":{\"at\"") && said.contains("req-test-1"),
        "{said}"
    );
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

/// A worker that (re)starts is not ready until it has read the whole registry: 100,000
/// records written straight to the topic, then `run`. Whenever `/readyz` says 200, the log
/// already says the registry was read; before that it is 503; and the erasure among them
/// applies to the first record the worker publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_worker_is_not_ready_until_it_has_read_the_registry() {
    use pseudonymizer::keys::{Secret, SubjectKey};
    use pseudonymizer::subjects::{subject_of, RegistryRecord, SubjectState};
    let _serial = serial().await;
    let world = setup("ready", "", "").await;
    let addr = common::process::serve_metrics(&world.config);

    // The registry: 100,000 erasures of other people, and the person's last.
    let key = SubjectKey::new(
        "s-test-1",
        &Secret::from_b64("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=").unwrap(),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for n in 0..100_000u32 {
        let canonical = format!("+1415{n:07}");
        let (subject, hint) = subject_of(&key, TokenClass::Phone, canonical.as_bytes());
        let record = RegistryRecord::new(
            subject,
            hint,
            SubjectState::Erased,
            None,
            "2026-12-04T00:00:00Z",
            "req-bulk",
        );
        let (k, v) = (record.key(), record.to_json());
        deliveries.push(
            producer
                .send_result(FutureRecord::to(&world.registry).key(&k).payload(&v))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    let (subject, hint) = subject_of(&key, TokenClass::Phone, PERSON_E164.as_bytes());
    let erased = RegistryRecord::new(
        subject,
        hint,
        SubjectState::Erased,
        None,
        "2026-12-04T00:00:00Z",
        "req-person",
    );
    deliveries.push(
        producer
            .send_result(
                FutureRecord::to(&world.registry)
                    .key(&erased.key())
                    .payload(&erased.to_json()),
            )
            .map_err(|(e, _)| e)
            .unwrap(),
    );
    for d in deliveries {
        d.await.unwrap().expect("registry record delivered");
    }
    let events = produce(&world, 100, 4, 3).await;

    let log = world.dir.join("worker.log");
    let _worker = common::process::start(&world.config, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut not_ready_seen = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let ready = std::net::TcpStream::connect(addr).is_ok()
            && kafka::http_get(addr, "/readyz").contains(" 200 ");
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        if ready {
            assert!(
                said.contains("subject registry read"),
                "ready before the registry was read:\n{said}"
            );
            break;
        }
        if said.contains("reading the subject registry") {
            not_ready_seen += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        not_ready_seen > 0,
        "/readyz was never seen 503 while the registry was read"
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("subjects=100001") && said.contains("erased=100001"),
        "{said}"
    );
    let outputs = read_outputs(&world, 100);
    let checked = check_outputs(&outputs, &events, &world, true);
    assert_eq!(
        (checked.theirs, checked.others),
        (34, 66),
        "the erasure applies from the first record"
    );
}

/// The record key alone can make a record withheld: an erased person's number as the key of a
/// call between two others still withholds its sealed fields (the value was sealed before the
/// key was read, so it is walked again), and a record with no route or a corrupt value whose
/// key is theirs is marked withheld, so its dead letter keeps nothing. No broker needed.
#[test]
fn the_record_key_alone_withholds() {
    use pseudonymizer::keys::{Secret, SubjectKey};
    use pseudonymizer::subjects::{
        subject_of, RegistryRecord, SubjectClasses, SubjectState, SubjectTable, SubjectView,
    };
    use pseudonymizer::worker::route::{DeadLetter, Router};
    let config = common::shipped_config();
    let engine = common::engine();
    let keys = common::active(&engine);
    let router = Router::from_config(&config, &engine).unwrap();
    let key = SubjectKey::new(
        "s-test-1",
        &Secret::from_b64("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=").unwrap(),
    );
    let mut table = SubjectTable::new("s-test-1", vec![]);
    let (subject, hint) = subject_of(&key, TokenClass::Phone, PERSON_E164.as_bytes());
    table.apply(&RegistryRecord::new(
        subject,
        hint,
        SubjectState::Erased,
        None,
        "2026-12-04T00:00:00Z",
        "req-1",
    ));
    let classes = SubjectClasses::default_classes();
    let view = SubjectView {
        key: &key,
        table: &table,
        classes: &classes,
    };

    let mut call = pseudonymizer::generate::typical_call();
    common::set_field(
        &mut call,
        "recording_url",
        Value::Union(1, Box::new(Value::String("https://rec.example/1".into()))),
    );
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    let value = frame(1, &common::encode(&plan.input, call));
    let mut out = Vec::new();
    let (output, met) = router.process_gated(
        &engine,
        &keys,
        Some(&view),
        Some(PERSON.as_bytes()),
        Some(&value),
        &mut out,
    );
    let output = output.unwrap();
    assert!(met && output.withheld);
    let decoded = common::decode(&plan.output, &out[5..]);
    assert!(
        !has_envelope(&decoded),
        "sealed fields of a record keyed by an erased person"
    );
    assert_eq!(
        common::field(&decoded, "recording_url"),
        &Value::Union(0, Box::new(Value::Null))
    );
    let person_token = token::token(
        keys.pseudonym.as_deref().unwrap(),
        TokenClass::Phone,
        PERSON_E164.as_bytes(),
    );
    assert_ne!(output.key.as_deref(), Some(person_token.as_str()));
    // Someone else's key: the same record is sealed as ever.
    let (output, met) = router.process_gated(
        &engine,
        &keys,
        Some(&view),
        Some(b"+62 812 0000 1111"),
        Some(&value),
        &mut out,
    );
    assert!(!met && !output.unwrap().withheld);
    assert!(has_envelope(&common::decode(&plan.output, &out[5..])));

    // Dead letters: no route, and a corrupt value.
    let (result, met) = router.process_gated(
        &engine,
        &keys,
        Some(&view),
        Some(PERSON.as_bytes()),
        Some(b"not framed"),
        &mut out,
    );
    assert!(matches!(result, Err(DeadLetter::BadMagic)) && met);
    let mut corrupt = value.clone();
    corrupt.truncate(12);
    let (result, met) = router.process_gated(
        &engine,
        &keys,
        Some(&view),
        Some(PERSON.as_bytes()),
        Some(&corrupt),
        &mut out,
    );
    assert!(matches!(result, Err(DeadLetter::CorruptAvro)) && met);
    let (_, met) = router.process_gated(
        &engine,
        &keys,
        Some(&view),
        Some(b"+62 812 0000 1111"),
        Some(&corrupt),
        &mut out,
    );
    assert!(!met);
}

/// File mode, no broker: `decrypt` opens no envelope of an event that carries a token of an
/// erasure notice (and says how many it withheld), and the access export's search finds
/// exactly the person's events, their sealed fields opened.
#[test]
fn decrypt_withholds_and_the_export_finds_exactly_the_persons_events() {
    use pseudonymizer::file::{decrypt_file, select_file, transform_file, DecryptReport};
    let engine = common::engine();
    let keys = common::active(&engine);
    let keyset = common::keyset();
    let plan = engine.plan("comms.v1.MessageEvent").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.avro");
    let mut generator = Generator::new(9);
    let mut theirs = std::collections::HashSet::new();
    {
        let mut writer =
            apache_avro::Writer::new(&plan.input, std::fs::File::create(&raw).unwrap());
        for i in 0..60 {
            let mut event = generator.event(Kind::Message);
            common::set_field(
                &mut event,
                "body",
                Value::Union(1, Box::new(Value::String(format!("body {i}")))),
            );
            if i % 4 == 0 {
                common::set_field(&mut event, "sender", Value::String(PERSON.into()));
                theirs.insert(kafka::text(common::field(&event, "event_id")).unwrap());
            }
            writer.append(event).unwrap();
        }
        writer.flush().unwrap();
    }
    let sanitized = dir.path().join("sanitized.avro");
    transform_file(&engine, &keys, &raw, &sanitized).unwrap();
    let person = token::token(
        keyset.pseudonym().unwrap(),
        TokenClass::Phone,
        PERSON_E164.as_bytes(),
    );
    let erased: std::collections::HashSet<String> = [person.as_str().to_owned()].into();

    let mut printed = Vec::new();
    let mut report = DecryptReport::default();
    decrypt_file(
        &engine,
        &keyset,
        &sanitized,
        false,
        &erased,
        &mut printed,
        &mut report,
    )
    .unwrap();
    assert_eq!(report.withheld_events, 15);
    assert!(report.withheld >= 15, "{report:?}");
    for line in String::from_utf8(printed).unwrap().lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = event["event_id"].as_str().unwrap();
        if theirs.contains(id) {
            assert_eq!(event["body"]["withheld"], "erased subject", "{line}");
        } else {
            assert!(
                event["body"].as_str().unwrap().starts_with("body "),
                "{line}"
            );
        }
    }

    let mut found = Vec::new();
    let mut report = DecryptReport::default();
    let selected = select_file(
        &engine,
        &keyset,
        &sanitized,
        &erased,
        &mut report,
        |record| {
            found.push(record);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!((selected.scanned, selected.matched), (60, 15));
    let ids: std::collections::HashSet<String> = found
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, theirs, "the person's events and no other");
    assert!(
        found
            .iter()
            .all(|r| r["body"].as_str().unwrap().starts_with("body ")),
        "sealed fields opened"
    );
}

/// The notice of an erasure lists the person's tokens under every pseudonym key that still has
/// a secret (two epochs: the retired one and the active one after a rotation) in every domain
/// a pipeline names (the default one and `marketing`), for each identifier of the request:
/// exactly those tokens, each computed here from the keyring as `lookup` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notice_lists_the_persons_tokens_under_two_epochs_and_two_domains() {
    use pseudonymizer::keys::{KeySet, Keyring};
    use std::collections::BTreeSet;
    let _serial = serial().await;
    let world = setup("notice", "", "domain = \"marketing\"").await;
    let keyring = world.dir.join("keyring.json");
    let (ok, said) = cli(&[
        "keys",
        "rotate",
        "--keyring",
        keyring.to_str().unwrap(),
        "--purpose",
        "pseudonym",
        "--id",
        "p-test-2",
    ]);
    assert!(ok, "keys rotate: {said}");
    let keys = KeySet::from_keyring(&Keyring::load(&keyring).unwrap());
    let ids: Vec<&str> = keys.pseudonym_keys().iter().map(|k| k.id()).collect();
    assert_eq!(ids.len(), 2, "two pseudonym epochs with secrets: {ids:?}");

    let file = request_file(
        &world.dir,
        "request.txt",
        &format!("phone {PERSON}\nemail Alice@Example.com\n"),
    );
    subjects(&world, "erase", &file, &["--request-id", "req-notice-1"]);
    let notices = kafka::read_from_start(&world.brokers, &world.notices, 1);
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].key(), Some(&b"req-notice-1"[..]));
    let notice = Notice::parse(notices[0].key().unwrap(), notices[0].payload().unwrap()).unwrap();

    let mut want = BTreeSet::new();
    for key in keys.pseudonym_keys() {
        for domain in [None, Some("marketing")] {
            let in_domain;
            let key = match domain {
                Some(d) => {
                    in_domain = key.in_domain(d);
                    &in_domain
                }
                None => &**key,
            };
            for (class, canonical) in [
                (TokenClass::Phone, PERSON_E164),
                (TokenClass::Email, "alice@example.com"),
            ] {
                let token = token::token(key, class, canonical.as_bytes());
                want.insert((
                    token.as_str().to_owned(),
                    class.as_str().to_owned(),
                    key.id().to_owned(),
                    domain.map(str::to_owned),
                ));
            }
        }
    }
    let got: BTreeSet<_> = notice
        .tokens
        .iter()
        .map(|t| {
            (
                t.token.clone(),
                t.class.clone(),
                t.key_id.clone(),
                t.domain.clone(),
            )
        })
        .collect();
    assert_eq!(want.len(), 8);
    assert_eq!(got, want, "2 identifiers x 2 epochs x 2 domains");
    assert_eq!(notice.tokens.len(), 8, "no token twice");
    let text = String::from_utf8_lossy(notices[0].payload().unwrap()).into_owned();
    assert!(
        !text.contains("9123") && !text.to_lowercase().contains("alice"),
        "{text}"
    );
}

/// Workers match identifiers to records by their hints and cannot check one without the raw
/// value: a record written by another tool with a wrong hint, or in the first format without
/// one, is reported by `status` (which has the values), and a repeat of the request writes it
/// again, correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_wrong_or_missing_hint_is_reported_and_rewritten() {
    use pseudonymizer::keys::{Secret, SubjectKey};
    use pseudonymizer::subjects::{subject_of, RegistryRecord, SubjectState};
    let _serial = serial().await;
    let world = setup("hint", "", "domain = \"marketing\"\nconsent = \"opt-out\"").await;
    let key = SubjectKey::new(
        "s-test-1",
        &Secret::from_b64("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=").unwrap(),
    );
    let (subject, hint) = subject_of(&key, TokenClass::Phone, PERSON_E164.as_bytes());
    // An erasure with another value's hint, and an opt-out of the first format (no hint).
    let wrong = RegistryRecord::new(
        subject.clone(),
        hint ^ 1,
        SubjectState::Erased,
        None,
        "2026-12-05T00:00:00Z",
        "req-other-tool",
    );
    let mut v1 = RegistryRecord::new(
        subject,
        hint,
        SubjectState::OptedOut,
        Some("marketing"),
        "2026-12-05T00:00:00Z",
        "req-v1",
    );
    v1.format = "pseudonymizer-subject/v1".into();
    v1.hint = None;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .create()
        .unwrap();
    for record in [&wrong, &v1] {
        producer
            .send(
                FutureRecord::to(&world.registry)
                    .key(&record.key())
                    .payload(&record.to_json()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let file = request_file(&world.dir, "request.txt", &format!("phone {PERSON}\n"));
    let said = subjects(&world, "status", &file, &[]);
    assert!(
        said.contains("\"request\":\"req-other-tool\",\"hint\":\"wrong\""),
        "{said}"
    );
    assert!(
        said.contains("\"request\":\"req-v1\",\"hint\":\"none\""),
        "{said}"
    );

    let said = subjects(&world, "erase", &file, &["--request-id", "req-again"]);
    assert!(said.contains("\"changed\":true"), "rewritten: {said}");
    let said = subjects(&world, "opt-out", &file, &["--domain", "marketing"]);
    assert!(said.contains("\"changed\":true"), "rewritten: {said}");
    let said = subjects(&world, "status", &file, &[]);
    assert!(
        said.contains("\"request\":\"req-again\",\"hint\":\"ok\"")
            && said.matches("\"hint\":\"ok\"").count() == 2,
        "{said}"
    );
    // Now a repeat changes nothing.
    let said = subjects(&world, "erase", &file, &[]);
    assert!(said.contains("\"changed\":false"), "{said}");
}

/// What a careless or hostile use of the commands meets: a request id already used for
/// another person is refused (a notice under it would replace theirs on the compacted topic);
/// a report that cannot be written (standard output on a full disk) leaves the request
/// recorded whole; `status` names records workers do not act on (a tombstone on an erasure,
/// a record that is not one); classes the workers ignore and consent after an erasure are
/// warned of; `--class email` refuses a line that is no address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_requests_are_refused_or_warned_and_nothing_is_half_recorded() {
    let _serial = serial().await;
    let world = setup("careless", "", "").await;
    let alice = request_file(
        &world.dir,
        "alice.txt",
        &format!("\u{feff}phone {PERSON}\nemail alice@example.com\n"),
    );
    subjects(&world, "erase", &alice, &["--request-id", "req-alice"]);

    // Another person under Alice's request id: refused, nothing written.
    let bob = request_file(&world.dir, "bob.txt", "phone +65 8123 4567\nip 192.0.2.7\n");
    let (ok, said) = try_subjects(&world, "erase", &bob, &["--request-id", "req-alice"]);
    assert!(!ok && said.contains("already names a request"), "{said}");
    let notices = kafka::read_from_start(&world.brokers, &world.notices, 1);
    assert_eq!(notices.len(), 1, "no second notice");
    assert_eq!(notices[0].key(), Some(&b"req-alice"[..]));

    // Bob's erasure with standard output on a full disk: an error, and every line recorded.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args([
            "subjects",
            "erase",
            "--config",
            world.config.to_str().unwrap(),
        ])
        .args(["--values-from", &bob, "--request-id", "req-bob"])
        .arg("--audit-log")
        .arg(world.dir.join("audit.log"))
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("the request is recorded"), "{stderr}");
    assert!(
        stderr.contains("line 2: class ip is not one of this config's subject classes"),
        "{stderr}"
    );
    let said = subjects(&world, "status", &bob, &[]);
    assert_eq!(said.matches("\"request\":\"req-bob\"").count(), 2, "{said}");

    // A tombstone on Alice's erasure, and a record that is not one under her consent key:
    // status names both.
    let status = subjects(&world, "status", &alice, &[]);
    let subject = status
        .split("\"subject\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .create()
        .unwrap();
    let erased_key = format!("{subject}/erased");
    let consent_key = format!("{subject}/consent");
    producer
        .send(
            FutureRecord::<String, ()>::to(&world.registry).key(&erased_key),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(
            FutureRecord::to(&world.registry)
                .key(&consent_key)
                .payload("not a record"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let said = subjects(&world, "status", &alice, &[]);
    let first = said.lines().next().unwrap();
    assert!(
        first.contains("\"not_acted_on\":[\"consent: refused\",\"erased: erasure tombstoned\"]"),
        "{said}"
    );
    assert!(first.contains("\"erased\":null"), "{said}");

    // Consent after an erasure is warned of; status refuses what it does not use.
    let said = subjects(&world, "opt-out", &alice, &[]);
    assert!(
        said.contains("line 2: this identifier's person is erased"),
        "{said}"
    );
    let (ok, said) = try_subjects(&world, "status", &alice, &["--request-id", "req-x"]);
    assert!(!ok && said.contains("status records nothing"), "{said}");

    // A bulk file is not one person's request: refused before anything is written.
    let bulk: String = (0..1001).map(|n| format!("phone +1415{n:07}\n")).collect();
    let bulk = request_file(&world.dir, "bulk.txt", &bulk);
    let (ok, said) = try_subjects(&world, "erase", &bulk, &[]);
    assert!(!ok && said.contains("at most 1000"), "{said}");
    assert_eq!(
        kafka::read_from_start(&world.brokers, &world.notices, 1).len(),
        2,
        "Alice's and Bob's notices, no other"
    );

    // `--class email` with a line that is no address; a bad --class is the flag's fault.
    for (class, want) in [("email", "not an e-mail address"), ("secret", "--class")] {
        let (ok, said) = try_subjects(&world, "erase", &bob, &["--class", class]);
        assert!(!ok && said.contains(want), "{class}: {said}");
        assert!(!said.contains("8123"), "no value in an error: {said}");
    }
}
