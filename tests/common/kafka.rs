//! Helpers for tests that talk to a broker: topics, raw events, reading and verifying output.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use pseudonymizer::config::Config;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::metrics::Metrics;
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::token::{self, TokenClass};
use pseudonymizer::transform::Engine;
use pseudonymizer::worker::{self, route::frame, Stats, Treatment, WorkerError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Tansu broker started by scripts/test.sh. Fails loudly when it is missing.
pub fn tansu() -> String {
    std::env::var("PSEUDONYMIZER_TEST_BROKERS")
        .expect("PSEUDONYMIZER_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts the Tansu broker")
}

/// Apache Kafka 4.4 itself, started by scripts/test.sh (scripts/kafka.sh): the broker of the
/// tests that need transactions, TLS, mTLS, SCRAM or session-timeout hand-over.
#[derive(Clone, Debug)]
pub struct ApacheKafka {
    /// The PLAINTEXT listener.
    pub brokers: String,
    /// TLS with a server certificate from the test CA.
    pub ssl: String,
    /// TLS, client certificate required.
    pub mtls: String,
    /// SASL_SSL with SCRAM-SHA-512.
    pub sasl: String,
    /// The test CA (`ca.pem`), the client certificate (`client.pem`, `client.key`) and the
    /// SCRAM password (`scram.password`).
    pub tls_dir: std::path::PathBuf,
    pub scram_user: String,
    /// The broker's log, for failures.
    pub log: std::path::PathBuf,
    /// The jars of the broker and the Java clients (for Java-client interop).
    pub libs: std::path::PathBuf,
}

/// The Apache Kafka broker started by scripts/test.sh. Fails loudly when it is missing.
pub fn apache_kafka() -> ApacheKafka {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests with scripts/test.sh, which starts Apache Kafka (scripts/kafka.sh)")
        })
    };
    let kafka = ApacheKafka {
        brokers: var("PSEUDONYMIZER_KAFKA_BROKERS"),
        ssl: var("PSEUDONYMIZER_KAFKA_SSL_BROKERS"),
        mtls: var("PSEUDONYMIZER_KAFKA_MTLS_BROKERS"),
        sasl: var("PSEUDONYMIZER_KAFKA_SASL_BROKERS"),
        tls_dir: var("PSEUDONYMIZER_KAFKA_TLS_DIR").into(),
        scram_user: var("PSEUDONYMIZER_KAFKA_SCRAM_USER"),
        log: var("PSEUDONYMIZER_KAFKA_LOG").into(),
        libs: var("PSEUDONYMIZER_KAFKA_LIBS").into(),
    };
    assert!(
        std::net::TcpStream::connect(&kafka.brokers).is_ok(),
        "Apache Kafka is not listening on {} (its log: {})",
        kafka.brokers,
        kafka.log.display()
    );
    kafka
}

impl ApacheKafka {
    fn java(&self, main: &str) -> std::process::Command {
        let mut command = std::process::Command::new("java");
        command
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(self.libs.join("*"))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log
                    .with_file_name("log4j2-client.properties")
                    .display()
            ))
            .arg(main);
        command
    }

    /// Produces one record per key to `topic` with Kafka's own Java producer
    /// (`kafka-console-producer`, the Java clients' default partitioner).
    pub fn java_produce_keys(&self, topic: &str, keys: &[String]) {
        use std::io::Write;
        let mut child = self
            .java("org.apache.kafka.tools.ConsoleProducer")
            .args(["--bootstrap-server", &self.brokers, "--topic", topic])
            .args([
                "--property",
                "parse.key=true",
                "--property",
                "key.separator=|",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("java runs");
        let mut stdin = child.stdin.take().unwrap();
        for key in keys {
            writeln!(stdin, "{key}|v").unwrap();
        }
        drop(stdin);
        assert!(
            child.wait().unwrap().success(),
            "the Java console producer failed"
        );
    }

    /// (partition, key) of every record of `topic`, as Kafka's own Java consumer reads them.
    pub fn java_partitions(&self, topic: &str) -> Vec<(i32, String)> {
        let output = self
            .java("org.apache.kafka.tools.consumer.ConsoleConsumer")
            .args(["--bootstrap-server", &self.brokers, "--topic", topic])
            .args(["--from-beginning", "--timeout-ms", "8000"])
            .args(["--formatter-property", "print.partition=true"])
            .args(["--formatter-property", "print.key=true"])
            .args(["--formatter-property", "print.value=false"])
            .output()
            .expect("java runs");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (partition, key) = line.split_once('\t')?;
                Some((
                    partition.strip_prefix("Partition:")?.parse().ok()?,
                    key.to_owned(),
                ))
            })
            .collect()
    }

    /// Records of the topics matching `include` (a regex) that Kafka's own Java consumer
    /// (`kafka-console-consumer`) reads from the start with `isolation` (`read_committed` or
    /// `read_uncommitted`), until nothing arrives for 8 s: Java-client interop.
    pub fn java_console_count(&self, include: &str, isolation: &str) -> usize {
        let output = std::process::Command::new("java")
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(self.libs.join("*"))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log
                    .with_file_name("log4j2-client.properties")
                    .display()
            ))
            .arg("org.apache.kafka.tools.consumer.ConsoleConsumer")
            .args(["--bootstrap-server", &self.brokers, "--include", include])
            .args(["--from-beginning", "--isolation-level", isolation])
            .args(["--timeout-ms", "8000"])
            .args(["--formatter-property", "print.value=false"])
            .args(["--formatter-property", "print.key=true"])
            .output()
            .expect("java runs");
        let said = String::from_utf8_lossy(&output.stderr);
        said.lines()
            .find_map(|l| {
                l.strip_prefix("Processed a total of ")?
                    .strip_suffix(" messages")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("the Java console consumer did not report a count:\n{said}"))
    }
}

/// Topic and group names unique to one test.
#[derive(Clone, Debug)]
pub struct Topics {
    pub raw: String,
    pub calls: String,
    pub messages: String,
    pub dlq: String,
    pub group: String,
}

impl Topics {
    pub fn unique(test: &str) -> Self {
        let run = format!(
            "{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
        );
        Topics {
            raw: format!("raw-{run}"),
            calls: format!("calls-{run}"),
            messages: format!("messages-{run}"),
            dlq: format!("dlq-{run}"),
            group: format!("worker-{run}"),
        }
    }

    /// Creates the topics (raw with `partitions` partitions).
    pub async fn create(&self, brokers: &str, partitions: i32) {
        self.create_with(brokers, partitions, &[]).await
    }

    /// [`Topics::create`], the two analytics topics with `analytics_config` (topic configs).
    pub async fn create_with(
        &self,
        brokers: &str,
        partitions: i32,
        analytics_config: &[(&str, &str)],
    ) {
        let analytics = |name| {
            analytics_config.iter().fold(
                NewTopic::new(name, 2, TopicReplication::Fixed(1)),
                |topic, (k, v)| topic.set(k, v),
            )
        };
        create_new_topics(
            brokers,
            &[
                NewTopic::new(&self.raw, partitions, TopicReplication::Fixed(1)),
                analytics(&self.calls),
                analytics(&self.messages),
                NewTopic::new(&self.dlq, 1, TopicReplication::Fixed(1)),
            ],
        )
        .await
    }

    /// The shipped config pointed at these topics and `brokers`.
    pub fn config(&self, brokers: &str) -> Config {
        let mut config = super::shipped_config();
        let kafka = config.kafka.as_mut().unwrap();
        kafka.brokers = brokers.to_owned();
        kafka.group_id = self.group.clone();
        kafka.dlq_topic = self.dlq.clone();
        kafka.max_in_flight = 500;
        kafka.shutdown_timeout_secs = 20;
        config.pipeline[0].input_topic = Some(self.raw.clone());
        config.pipeline[0].output_topic = Some(self.calls.clone());
        config.pipeline[1].input_topic = Some(self.raw.clone());
        config.pipeline[1].output_topic = Some(self.messages.clone());
        config
    }
}

/// Raw events produced for a test, by event id, and values that must never be published.
#[derive(Default)]
pub struct Inputs {
    pub by_id: HashMap<String, Value>,
    pub raw_values: Vec<Vec<u8>>,
}

impl Inputs {
    /// Finds any raw value in a byte string, in one pass whatever their number.
    pub fn leak_finder(&self) -> LeakFinder {
        LeakFinder(aho_corasick::AhoCorasick::new(&self.raw_values).expect("raw values index"))
    }
}

/// Every raw value of a test's input, searched for at once.
pub struct LeakFinder(aho_corasick::AhoCorasick);

impl LeakFinder {
    /// Whether `haystack` holds any raw value.
    pub fn leaks(&self, haystack: &[u8]) -> bool {
        self.0.is_match(haystack)
    }
}

pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Union(_, inner) => text(inner),
        _ => None,
    }
}

/// Creates `topics` (name, partitions), one replica each.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    create_new_topics(brokers, &new).await
}

/// Creates the `new` topics.
async fn create_new_topics(brokers: &str, new: &[NewTopic<'_>]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for result in admin
        .create_topics(new, &AdminOptions::new())
        .await
        .expect("broker reachable")
    {
        result.expect("topic created");
    }
}

/// Produces `count` raw events (calls and messages alternating, keyed by the calling or
/// sending number) and the given extra payloads; waits for every delivery.
pub async fn produce(
    brokers: &str,
    topic: &str,
    count: usize,
    seed: u64,
    extra: &[Vec<u8>],
    inputs: &mut Inputs,
) {
    produce_with(
        brokers,
        topic,
        count,
        seed,
        extra,
        inputs,
        &[("linger.ms", "5")],
    )
    .await
}

/// [`produce`] with one record per batch. Tansu 0.6 skips the rest of a record batch when a
/// consumer resumes from a committed offset inside it; tests that resume (restart, hand-over)
/// against Tansu produce their input this way so every committed offset is a batch boundary.
pub async fn produce_unbatched(
    brokers: &str,
    topic: &str,
    count: usize,
    seed: u64,
    inputs: &mut Inputs,
) {
    let settings = [("linger.ms", "0"), ("batch.num.messages", "1")];
    produce_with(brokers, topic, count, seed, &[], inputs, &settings).await
}

async fn produce_with(
    brokers: &str,
    topic: &str,
    count: usize,
    seed: u64,
    extra: &[Vec<u8>],
    inputs: &mut Inputs,
    settings: &[(&str, &str)],
) {
    let engine = super::engine();
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        client.set(*k, *v);
    }
    let producer: FutureProducer = client.create().unwrap();
    let mut generator = Generator::new(seed);
    let mut deliveries = Vec::new();
    for i in 0..count {
        let (kind, name, schema_id, key_field) = if i % 2 == 0 {
            (Kind::Call, "comms.v1.CallEvent", 1, "caller")
        } else {
            (Kind::Message, "comms.v1.MessageEvent", 2, "sender")
        };
        let plan = engine.plan(name).unwrap();
        let event = generator.event(kind);
        let id = text(super::field(&event, "event_id")).unwrap();
        let key = text(super::field(&event, key_field)).unwrap();
        if let Value::Record(fields) = &event {
            for (field, value) in fields {
                if [
                    "caller",
                    "callee",
                    "sender",
                    "caller_ip",
                    "callee_ip",
                    "sender_ip",
                    "body",
                    "recording_url",
                ]
                .contains(&field.as_str())
                {
                    if let Some(s) = text(value).filter(|s| s.trim().len() >= 8) {
                        inputs.raw_values.push(s.trim().as_bytes().to_vec());
                    }
                }
            }
        }
        let payload = frame(schema_id, &super::encode(&plan.input, event.clone()));
        inputs.by_id.insert(id, event);
        let record = FutureRecord::to(topic).payload(&payload).key(&key);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for payload in extra {
        let record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).payload(payload.as_slice());
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().expect("raw record delivered");
    }
}

/// Runs a worker in this process; send `true` on the returned sender to stop it.
pub fn spawn_worker(
    config: &Config,
    metrics: Arc<Metrics>,
) -> (watch::Sender<bool>, JoinHandle<Result<Stats, WorkerError>>) {
    let engine = Arc::new(Engine::from_config(config).unwrap());
    let keys = engine.active_keys(&super::keyset()).unwrap();
    let (stop, stopped) = watch::channel(false);
    let config = config.clone();
    let handle = tokio::spawn(async move {
        let worker = worker::Worker {
            engine,
            keys: worker::fixed_keys(keys),
            metrics,
            treatment: Treatment::Sanitize,
        };
        worker.run(&config, stopped).await
    });
    (stop, handle)
}

/// Waits until the worker's own published counter reaches `count` (read every millisecond, so
/// a test can act mid-stream); fails with `what` after `within`.
pub async fn published_at_least(metrics: &Metrics, count: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while metrics.counts().published < count {
        assert!(
            Instant::now() < deadline,
            "{what}: {} published within {within:?}, {count} wanted",
            metrics.counts().published
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A consumer of the analytics and dead-letter topics from their start.
pub fn reader(brokers: &str, topics: &Topics, read_committed: bool) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", topics.group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    consumer
        .subscribe(&[&topics.calls, &topics.messages, &topics.dlq])
        .unwrap();
    consumer
}

/// Polls `reader` until at least `outputs` analytics records and `dead` dead letters have
/// come, whatever their format (panics after two minutes); answers both, in arrival order.
pub fn read_counts(
    reader: &BaseConsumer,
    topics: &Topics,
    outputs: usize,
    dead: usize,
) -> (Vec<OwnedMessage>, Vec<OwnedMessage>) {
    let (mut published, mut dead_letters) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while published.len() < outputs || dead_letters.len() < dead {
        assert!(
            Instant::now() < deadline,
            "timed out: {} published, {} dead",
            published.len(),
            dead_letters.len()
        );
        let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.detach();
        if message.topic() == topics.dlq {
            dead_letters.push(message);
        } else {
            published.push(message);
        }
    }
    (published, dead_letters)
}

/// Gives the field `field` the rule `drop` in the pipeline config at `config` (after its
/// `event_id` rule), then runs `pseudonymizer dlq replay` on it and answers what it said.
pub fn drop_field_and_replay(config: &std::path::Path, field: &str) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("event_id = \"keep\""), "{text}");
    std::fs::write(
        config,
        text.replace(
            "event_id = \"keep\"",
            &format!("event_id = \"keep\"\n{field} = \"drop\""),
        ),
    )
    .unwrap();
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args([
            "dlq",
            "replay",
            "--config",
            config.to_str().unwrap(),
            "--idle-secs",
            "3",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(
        replay.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    said
}

/// [`drop_field_and_replay`], then a worker on the changed config: answers the `count`
/// records it publishes (what the replay sent back), after checking that the replay said so,
/// that nothing was dead-lettered again and that nothing more came.
pub async fn replayed_after_drop(
    config: &std::path::Path,
    field: &str,
    reader: &BaseConsumer,
    topics: &Topics,
    count: usize,
) -> Vec<OwnedMessage> {
    let said = drop_field_and_replay(config, field);
    assert!(
        said.starts_with(&format!("replayed {count} dead letters")),
        "{said}"
    );
    let config = Config::load(config).unwrap();
    let (stop, worker) = spawn_worker(&config, Metrics::new());
    let (replayed, dead_again) = read_counts(reader, topics, count, 0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        reader.poll(Duration::from_secs(1)).is_none(),
        "the {count} replayed records, nothing more"
    );
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!((replayed.len(), dead_again.len()), (count, 0));
    replayed
}

/// What a reader has collected so far.
#[derive(Default)]
pub struct Collected {
    pub outputs: Vec<OwnedMessage>,
    pub dead: Vec<OwnedMessage>,
    pub ids: HashMap<String, usize>,
}

impl Collected {
    /// Polls until nothing new has arrived for `quiet` (at most two minutes in all).
    pub fn until_quiet(&mut self, reader: &BaseConsumer, topics: &Topics, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let seen = self.outputs.len() + self.dead.len();
            let until = Instant::now() + quiet;
            self.until(reader, topics, quiet * 2, |c| {
                c.outputs.len() + c.dead.len() > seen || Instant::now() > until
            });
            if self.outputs.len() + self.dead.len() == seen || Instant::now() > deadline {
                return;
            }
        }
    }

    /// Polls until `done(self)` or the deadline; panics on timeout.
    pub fn until(
        &mut self,
        reader: &BaseConsumer,
        topics: &Topics,
        limit: Duration,
        done: impl Fn(&Collected) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        let engine = super::engine();
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out: {} outputs ({} distinct), {} dead letters",
                self.outputs.len(),
                self.ids.len(),
                self.dead.len()
            );
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            // Transient errors (a broker outage) are the reader's to ride out too.
            let Ok(message) = message else { continue };
            let message = message.detach();
            if message.topic() == topics.dlq {
                self.dead.push(message);
            } else {
                let plan = engine
                    .plan(if message.topic() == topics.calls {
                        "comms.v1.CallEvent"
                    } else {
                        "comms.v1.MessageEvent"
                    })
                    .unwrap();
                let output = super::decode(&plan.output, &message.payload().unwrap()[5..]);
                *self
                    .ids
                    .entry(text(super::field(&output, "event_id")).unwrap())
                    .or_default() += 1;
                self.outputs.push(message);
            }
        }
    }
}

/// Checks every output against its input: framing, tokens, record key, key headers, envelopes,
/// and that no raw value appears.
pub fn verify_outputs(collected: &Collected, topics: &Topics, inputs: &Inputs) {
    let engine = super::engine();
    let keys = engine.active_keys(&super::keyset()).unwrap();
    let pkey = keys.pseudonym.as_deref().unwrap();
    let phone = PhoneCanon::new("ID").unwrap();
    let keyset = super::keyset();
    let finder = inputs.leak_finder();
    for message in &collected.outputs {
        let payload = message.payload().unwrap();
        assert!(!finder.leaks(payload), "a raw value was published");
        let (name, schema_id, key_field) = if message.topic() == topics.calls {
            ("comms.v1.CallEvent", 101u32, "caller")
        } else {
            ("comms.v1.MessageEvent", 102, "sender")
        };
        let plan = engine.plan(name).unwrap();
        assert_eq!(payload[0], 0, "magic byte");
        assert_eq!(
            u32::from_be_bytes(payload[1..5].try_into().unwrap()),
            schema_id
        );
        let output = super::decode(&plan.output, &payload[5..]);
        let id = text(super::field(&output, "event_id")).unwrap();
        let input = inputs
            .by_id
            .get(&id)
            .unwrap_or_else(|| panic!("output {id} has no input"));
        let raw_key = text(super::field(input, key_field)).unwrap();
        let (class, canonical) = token::canonical(TokenClass::Phone, &raw_key, &phone);
        let expected = token::token(pkey, class, canonical.as_bytes());
        assert_eq!(
            text(super::field(&output, key_field)).unwrap(),
            expected.as_str()
        );
        assert_eq!(
            message.key().unwrap(),
            expected.as_str().as_bytes(),
            "key carries the field's token"
        );
        let headers = message.headers().unwrap();
        let header = |k: &str| {
            headers
                .iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header("pseudonymizer.pseudonym-key").as_deref(),
            Some(pkey.id())
        );
        assert_eq!(
            header("pseudonymizer.encryption-key").as_deref(),
            Some("e-test-1")
        );
        if name.ends_with("MessageEvent") {
            if let (Some(body), Value::Union(1, sealed)) = (
                text(super::field(input, "body")),
                super::field(&output, "body"),
            ) {
                let Value::Bytes(sealed) = sealed.as_ref() else {
                    panic!("body is bytes")
                };
                assert_eq!(keyset.open("body", sealed).unwrap(), body.as_bytes());
            }
        }
    }
}

/// Raw records of `topic` at or after the offsets `group` has committed. Reads every
/// partition from its beginning and filters by offset: Tansu 0.6 does not return the rest of
/// a record batch when a fetch starts in its middle, so starting at the committed offset
/// would hide records.
pub fn uncommitted(brokers: &str, topic: &str, group: &str, partitions: i32) -> Vec<OwnedMessage> {
    let committed: HashMap<i32, i64> = committed(brokers, topic, group, partitions)
        .into_iter()
        .map(|(p, o)| {
            (
                p,
                if let rdkafka::Offset::Offset(o) = o {
                    o
                } else {
                    0
                },
            )
        })
        .collect();
    read_from_start(brokers, topic, partitions)
        .into_iter()
        .filter(|m| m.offset() >= committed.get(&m.partition()).copied().unwrap_or(0))
        .collect()
}

/// The offsets `group` has committed on `topic` (diagnostics).
pub fn committed(
    brokers: &str,
    topic: &str,
    group: &str,
    partitions: i32,
) -> Vec<(i32, rdkafka::Offset)> {
    let checker: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut wanted = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(topic, p);
    }
    let committed = checker
        .committed_offsets(wanted, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

/// Every record of `topic` from its beginning (diagnostics).
pub fn read_from_start(brokers: &str, topic: &str, partitions: i32) -> Vec<OwnedMessage> {
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "diagnostics")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut all = Vec::new();
    let mut until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            all.push(message.unwrap().detach());
            until = Instant::now() + Duration::from_secs(3);
        }
    }
    all
}

/// The event id of a raw record (`None` for records that are not events).
pub fn raw_event_id(message: &OwnedMessage) -> Option<String> {
    let payload = message.payload()?;
    if payload.len() < 5 || payload[0] != 0 {
        return None;
    }
    let name = match u32::from_be_bytes(payload[1..5].try_into().ok()?) {
        1 => "comms.v1.CallEvent",
        2 => "comms.v1.MessageEvent",
        _ => return None,
    };
    let engine = super::engine();
    let mut slice = &payload[5..];
    let value = apache_avro::from_avro_datum(&engine.plan(name)?.input, &mut slice, None).ok()?;
    text(super::field(&value, "event_id"))
}

/// Writes the shipped config, pointed at `topics` and `brokers`, and the test keyring into
/// `dir`; returns the config's path (for running the binary).
pub fn write_config(
    dir: &std::path::Path,
    topics: &Topics,
    brokers: &str,
    consumer_properties: &str,
) -> std::path::PathBuf {
    let keyring = super::write_keyring(dir);
    let schemas = super::repo().join("schemas");
    let text = std::fs::read_to_string(super::repo().join("config/pipeline.toml"))
        .unwrap()
        .replace("\"../schemas/", &format!("\"{}/", schemas.display()))
        .replace(
            "keyring = \"../keys/keyring.json\"",
            &format!("keyring = \"{}\"", keyring.display()),
        )
        .replace(
            "input_topic = \"comms.raw\"",
            &format!("input_topic = \"{}\"", topics.raw),
        )
        .replace(
            "output_topic = \"comms.calls.sanitized\"",
            &format!("output_topic = \"{}\"", topics.calls),
        )
        .replace(
            "output_topic = \"comms.messages.sanitized\"",
            &format!("output_topic = \"{}\"", topics.messages),
        )
        .replace(
            "brokers = \"127.0.0.1:9092\"",
            &format!("brokers = \"{brokers}\""),
        )
        .replace(
            "group_id = \"pseudonymizer\"",
            &format!("group_id = \"{}\"", topics.group),
        )
        .replace(
            "dlq_topic = \"comms.dlq\"",
            &format!("dlq_topic = \"{}\"", topics.dlq),
        )
        .replace("max_in_flight = 10000", "max_in_flight = 500")
        .replace(
            "[kafka.consumer_properties]\n",
            &format!("[kafka.consumer_properties]\n{consumer_properties}\n"),
        );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Asserts two id sets are equal, reporting sizes and a few differences (never the whole set).
pub fn assert_same_ids(got: &HashSet<String>, want: &HashSet<String>, what: &str) {
    if got != want {
        let missing: Vec<_> = want.difference(got).take(5).collect();
        let extra: Vec<_> = got.difference(want).take(5).collect();
        panic!(
            "{what}: got {} ids, want {}; {} missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
            got.len(),
            want.len(),
            want.difference(got).count(),
            got.difference(want).count()
        );
    }
}

/// Distinct event ids, for comparing sets.
pub fn ids(inputs: &Inputs) -> HashSet<String> {
    inputs.by_id.keys().cloned().collect()
}

/// `GET path` over HTTP/1.0; the whole response, status line included.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
