//! The subject registry and the erasure notices in Kafka: two compacted topics, created by
//! `subjects init`, read to their end by every reader (a worker before it is ready, the
//! `subjects` commands, `lookup`, `decrypt`), followed live by a worker, and written by the
//! `subjects` commands. Every client is built from the `[kafka]` section (connect.rs), so a
//! config that connects the worker connects these too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::connect::{self, ConnectionWatch};

/// How long a reader waits for the cluster to say what a topic holds.
const BROKER_QUERY: Duration = Duration::from_secs(10);

/// The topic configuration both topics are created with: compacted, kept for ever (the latest
/// record of each key stays; docs/operations.md, "The subject registry").
pub const TOPIC_CONFIG: [(&str, &str); 2] = [("cleanup.policy", "compact"), ("retention.ms", "-1")];

/// Creates `topics` compacted with `partitions` each and the broker's default replication
/// (unless `replication` is given). A topic that exists already is checked, not changed:
/// returns, for each topic, whether it was created, or the reason it is refused.
pub async fn create_topics(
    kafka: &KafkaConfig,
    topics: &[&str],
    partitions: i32,
    replication: Option<i32>,
) -> Result<Vec<(String, Result<bool, String>)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = connect::client_config(kafka).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut topic = NewTopic::new(
                t,
                partitions,
                TopicReplication::Fixed(replication.unwrap_or(-1)),
            );
            for (name, value) in TOPIC_CONFIG {
                topic = topic.set(name, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(BROKER_QUERY));
    let results = admin.create_topics(&new, &options).await?;
    let mut out = Vec::new();
    for result in results {
        match result {
            Ok(topic) => out.push((topic, Ok(true))),
            Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                let checked = check_compacted(&admin, &topic).await;
                out.push((topic, checked.map(|()| false)));
            }
            Err((topic, code)) => out.push((topic, Err(code.to_string()))),
        }
    }
    Ok(out)
}

/// Whether an existing topic is compacted: a registry whose records expire would forget
/// erasures.
async fn check_compacted(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<(), String> {
    use rdkafka::admin::{ResourceSpecifier, ResourceSpecifier::Topic};
    let specifier: ResourceSpecifier<'_> = Topic(topic);
    let options = AdminOptions::new().request_timeout(Some(BROKER_QUERY));
    let results = admin
        .describe_configs([&specifier], &options)
        .await
        .map_err(|e| e.to_string())?;
    let resource = results
        .into_iter()
        .next()
        .ok_or("no answer")?
        .map_err(|e| e.to_string())?;
    let policy = resource
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .unwrap_or_default();
    if policy.split(',').any(|p| p.trim() == "compact") && !policy.contains("delete") {
        Ok(())
    } else {
        Err(format!("it exists with cleanup.policy={policy}; it must be compact (and only compact: records that expire would forget erasures)"))
    }
}

/// One record read from a topic.
pub struct Read<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
}

/// A reader of a whole topic: every partition from its beginning, no consumer group (nothing
/// is committed; every reader reads everything).
pub struct TopicReader {
    consumer: BaseConsumer<ConnectionWatch>,
    topic: String,
}

/// The end of [`TopicReader::open`]'s error for a topic that does not exist.
const MISSING: &str = " does not exist";

impl TopicReader {
    /// [`Self::open`] for the subject registry or the erasure notices: a missing topic's error
    /// says which command makes it.
    pub fn open_subject_topic(
        kafka: &KafkaConfig,
        topic: &str,
        client: &'static str,
    ) -> Result<Self, String> {
        TopicReader::open(kafka, topic, client).map_err(|e| match e.ends_with(MISSING) {
            true => format!("{e} (`pseudonymizer subjects init` creates the subject topics)"),
            false => e,
        })
    }

    /// Assigns every partition of `topic` from the beginning. Fails if the topic does not
    /// exist (a missing registry is never read as an empty one).
    pub fn open(kafka: &KafkaConfig, topic: &str, client: &'static str) -> Result<Self, String> {
        let consumer: BaseConsumer<ConnectionWatch> = connect::consumer_config(
            kafka,
            &[
                ("group.id", "pseudonymizer.subject-registry-reader"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("isolation.level", "read_committed"),
                ("enable.partition.eof", "false"),
                // The worker's own bounds (docs/deploy.md, "Sizing"): librdkafka's defaults
                // would prefetch up to 64 MiB of registry records on top of the table.
                ("queued.max.messages.kbytes", "16384"),
                ("fetch.max.bytes", "8388608"),
            ],
        )
        .create_with_context(ConnectionWatch::new(client, None))
        .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(topic), BROKER_QUERY)
            .map_err(|e| format!("topic {topic}: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!("topic {topic}{MISSING}"));
        }
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&list).map_err(|e| e.to_string())?;
        Ok(TopicReader {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// The end offset of each partition now: what "read to the end" means.
    pub fn end_offsets(&self) -> Result<HashMap<i32, i64>, String> {
        let mut ends = HashMap::new();
        let assignment = self.consumer.assignment().map_err(|e| e.to_string())?;
        for element in assignment.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, element.partition(), BROKER_QUERY)
                .map_err(|e| format!("topic {}: {e}", self.topic))?;
            ends.insert(element.partition(), high);
        }
        Ok(ends)
    }

    /// Reads until every partition has reached the end offsets it had when this call began,
    /// handing each record to `each`; `progress` is called about once a second with the
    /// records read so far and the number there were to read. Fails after `timeout` without
    /// reaching the end.
    pub fn read_to_end(
        &self,
        timeout: Duration,
        mut each: impl FnMut(Read<'_>),
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, String> {
        let ends = self.end_offsets()?;
        let mut next: HashMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
        let total: u64 = ends.values().map(|h| (*h).max(0) as u64).sum();
        let mut read = 0u64;
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let done = |next: &HashMap<i32, i64>| {
            ends.iter()
                .all(|(p, end)| next.get(p).is_some_and(|n| n >= end))
        };
        // A compacted or trimmed partition may start past 0: its low watermark is its start.
        for (p, n) in next.iter_mut() {
            if let Ok((low, _)) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, BROKER_QUERY)
            {
                *n = low;
            }
        }
        while !done(&next) {
            if started.elapsed() > timeout {
                return Err(format!(
                    "topic {}: not read to its end within {} s ({read} of about {total} records)",
                    self.topic,
                    timeout.as_secs()
                ));
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                progress(read, total);
                last_progress = Instant::now();
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {
                    // Compaction leaves gaps and transactions leave markers: the position, not
                    // the last offset read, says how far a partition has got.
                    self.catch_up_positions(&mut next);
                }
                Some(Err(e)) => return Err(format!("topic {}: {e}", self.topic)),
                Some(Ok(message)) => {
                    next.insert(message.partition(), message.offset() + 1);
                    read += 1;
                    each(Read {
                        key: message.key(),
                        value: message.payload(),
                        partition: message.partition(),
                        offset: message.offset(),
                    });
                }
            }
        }
        progress(read, total);
        Ok(read)
    }

    fn catch_up_positions(&self, next: &mut HashMap<i32, i64>) {
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements() {
                if let Offset::Offset(o) = element.offset() {
                    let entry = next.entry(element.partition()).or_insert(0);
                    *entry = (*entry).max(o);
                }
            }
        }
    }

    /// The next record, waiting at most `wait` (a worker following the registry live).
    pub fn poll(&self, wait: Duration, mut each: impl FnMut(Read<'_>)) -> Result<bool, String> {
        match self.consumer.poll(wait) {
            None => Ok(false),
            Some(Err(e)) => Err(format!("topic {}: {e}", self.topic)),
            Some(Ok(message)) => {
                each(Read {
                    key: message.key(),
                    value: message.payload(),
                    partition: message.partition(),
                    offset: message.offset(),
                });
                Ok(true)
            }
        }
    }
}

/// Writes records to one topic and waits for each to be acknowledged by every in-sync
/// replica (`acks=all`, idempotent): a command says it is done only when it is.
pub struct TopicWriter {
    producer: connect::Producer,
}

impl TopicWriter {
    pub fn new(kafka: &KafkaConfig, client: &'static str) -> Result<Self, String> {
        let producer = connect::producer_config(
            kafka,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("message.timeout.ms", "30000"),
            ],
        )
        .create_with_context(ConnectionWatch::new(client, None))
        .map_err(|e| e.to_string())?;
        Ok(TopicWriter { producer })
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send(&self, topic: &str, key: &str, value: &str) -> Result<(), String> {
        let record = FutureRecord::to(topic).key(key).payload(value);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("topic {topic}: {e}"))
    }
}

/// Every token of every erasure notice on `topic`, read to its end (what `decrypt` withholds).
/// A notice that does not read is skipped and counted in the second value.
pub fn erased_tokens(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<(std::collections::HashSet<String>, u64), String> {
    let reader = TopicReader::open_subject_topic(kafka, topic, "erasure notice reader")?;
    let mut tokens = std::collections::HashSet::new();
    let mut refused = 0u64;
    reader.read_to_end(
        timeout,
        |read| {
            if let (Some(key), Some(value)) = (read.key, read.value) {
                match super::Notice::parse(key, value) {
                    Ok(notice) => tokens.extend(notice.tokens.into_iter().map(|t| t.token)),
                    Err(_) => refused += 1,
                }
            }
        },
        |_, _| {},
    )?;
    Ok((tokens, refused))
}
