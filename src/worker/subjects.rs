//! The worker's side of the subject registry: read whole before the worker subscribes (so it
//! is not ready until then, with progress in the log), then followed live by a thread of its
//! own, so that an erasure or a consent applies to records processed a moment after the
//! command that wrote it returns, on every worker of the group.
//!
//! The subject key is the one the worker started with, for as long as it runs: the table is
//! keyed by subject ids under it, and a reloaded keyring does not change it. A registry that
//! holds records under another subject key (the keyring's was replaced, or the registry is
//! another keyring's) is refused at start: its erasures would match no one.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::keys::SubjectKey;
use crate::metrics::Metrics;
use crate::subjects::kafka::{Read, TopicReader};
use crate::subjects::table::Applied;
use crate::subjects::{consent_domains, RegistryRecord, SubjectClasses, SubjectTable, SubjectView};

use super::WorkerError;

/// The registry as this worker follows it.
pub struct Subjects {
    pub key: Arc<SubjectKey>,
    pub classes: SubjectClasses,
    pub table: RwLock<SubjectTable>,
    pub topic: String,
}

impl Subjects {
    /// Runs `f` with a view of the registry as it is now (one read of the table).
    pub fn with_view<T>(&self, f: impl FnOnce(&SubjectView<'_>) -> T) -> T {
        let table = self
            .table
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        f(&SubjectView {
            key: &self.key,
            table: &table,
            classes: &self.classes,
        })
    }
}

/// Reads the whole registry (`[kafka] subjects_topic`) into a table, logging progress, and
/// starts following it. `None` when the config names no registry.
pub async fn start(
    config: &Config,
    key: Option<Arc<SubjectKey>>,
    metrics: &Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Arc<Subjects>>, WorkerError> {
    let Some(kafka) = config.kafka.as_ref() else {
        return Ok(None);
    };
    let Some(topic) = kafka.subjects_topic.clone() else {
        return Ok(None);
    };
    let fail = |why: String| WorkerError::Subjects(why);
    let key = key.ok_or_else(|| {
        fail("[kafka] subjects_topic is set but the keyring has no active subject key (`pseudonymizer keys rotate --purpose subject` adds one)".into())
    })?;
    let classes = SubjectClasses::parse(&config.subjects.classes).map_err(fail)?;
    let table = SubjectTable::new(key.id(), consent_domains(config));
    let subjects = Arc::new(Subjects {
        key,
        classes,
        table: RwLock::new(table),
        topic: topic.clone(),
    });
    let timeout = Duration::from_secs(config.subjects.load_timeout_secs);
    let kafka = kafka.clone();
    let (loaded, reader) = {
        let subjects = subjects.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let reader = TopicReader::open_subject_topic(&kafka, &topic, "subject registry reader")?;
            let started = Instant::now();
            tracing::info!(topic = %topic, "reading the subject registry; not ready until it is read to its end");
            let mut foreign = 0u64;
            let read = reader.read_to_end(
                timeout,
                |record| {
                    if apply(&subjects, &metrics, record) == "other-key" {
                        foreign += 1;
                    }
                },
                |read, total| tracing::info!(topic = %topic, read, of_about = total, "reading the subject registry"),
            )?;
            if foreign > 0 {
                return Err(format!(
                    "topic {topic} holds {foreign} records under another subject key than this keyring's ({}): its erasures and consents would match no one; the worker does not start (docs/security.md, \"A person's rights\")",
                    subjects.key.id()
                ));
            }
            let table = subjects.table.read().unwrap_or_else(|p| p.into_inner());
            tracing::info!(topic = %topic, records = read, subjects = table.len(), erased = table.erased(), table_bytes = table.memory_bytes(), seconds = started.elapsed().as_secs_f64(), "subject registry read; following it");
            if table.unhinted() > 0 {
                tracing::warn!(topic = %topic, records = table.unhinted(), "the subject registry holds records of the first format (pseudonymizer-subject/v1, no hint): every identifier gets a subject id and a table lookup; repeating those requests with `subjects` rewrites them");
            }
            export(&metrics, &table);
            Ok((read, reader))
        })
        .await
        .map_err(|e| fail(format!("the registry reader stopped: {e}")))?
        .map_err(fail)?
    };
    let _ = loaded;
    follow(reader, subjects.clone(), metrics.clone(), shutdown);
    Ok(Some(subjects))
}

/// Follows the registry on a thread of its own until shutdown. A broker error is logged and
/// retried; the worker goes on with the table it has (a change that cannot be read yet is
/// the only thing delayed, and `pseudonymizer_subject_registry_errors_total` says so).
fn follow(
    reader: TopicReader,
    subjects: Arc<Subjects>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    std::thread::Builder::new()
        .name("subject-registry".into())
        .spawn(move || {
            while !*shutdown.borrow() {
                match reader.poll(Duration::from_millis(100), |record| {
                    apply(&subjects, &metrics, record);
                }) {
                    Ok(true) => {
                        let table = subjects.table.read().unwrap_or_else(|p| p.into_inner());
                        export(&metrics, &table);
                    }
                    Ok(false) => {}
                    Err(error) => {
                        metrics.subject_registry_errors.inc();
                        tracing::warn!(topic = %subjects.topic, %error, "subject registry: read failed; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        })
        .expect("a thread can be started");
}

/// Applies one registry record to the table. A record that does not read is logged (by
/// partition and offset, never its text) and counted, and changes nothing.
fn apply(subjects: &Subjects, metrics: &Metrics, record: Read<'_>) -> &'static str {
    let mut table = subjects.table.write().unwrap_or_else(|p| p.into_inner());
    let key = record.key.unwrap_or_default();
    let result = match record.value {
        None => Ok(table.apply_tombstone(key)),
        Some(value) => RegistryRecord::parse(key, value).map(|r| table.apply(&r)),
    };
    let label = match result {
        Ok(Applied::Applied) => "applied",
        Ok(Applied::NotFollowed) => "not-followed",
        Ok(Applied::OtherKey) => {
            tracing::error!(topic = %subjects.topic, partition = record.partition, offset = record.offset, "subject registry: a record under another subject key than this worker's; it matches no one here");
            "other-key"
        }
        Ok(Applied::ErasureKept) => {
            tracing::warn!(topic = %subjects.topic, partition = record.partition, offset = record.offset, "subject registry: a tombstone on an erasure is ignored (an erasure is never undone)");
            "erasure-kept"
        }
        Err(error) => {
            tracing::error!(topic = %subjects.topic, partition = record.partition, offset = record.offset, %error, "subject registry: a record is refused");
            "refused"
        }
    };
    metrics
        .subject_registry_records
        .with_label_values(&[label])
        .inc();
    label
}

fn export(metrics: &Metrics, table: &SubjectTable) {
    metrics
        .subjects
        .with_label_values(&["recorded"])
        .set(table.len() as i64);
    metrics
        .subjects
        .with_label_values(&["erased"])
        .set(table.erased() as i64);
}
