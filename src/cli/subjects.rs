//! `pseudonymizer subjects`: a person's requests (erasure, opt-out, opt-in) recorded in the
//! subject registry, what it holds for them (`status`), and the topics created (`init`).
//! Each request is audited like `lookup`, before anything is written or printed.
//!
//! One request is one person, who may have several identifiers: each line of `--values-from`
//! is `class value` (`phone +65 9123 4567`, `email alice@example.com`), or a value alone with
//! `--class`. Every command is idempotent: an aspect already in the state asked for is left
//! as it is (and said so), so a request can be repeated after a failure.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::ConfigArgs;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::keys::{Need, Scope};
use crate::phone::PhoneCanon;
use crate::subjects::kafka::{create_topics, TopicReader, TopicWriter};
use crate::subjects::record::{check_request_id, new_request_id, record_key, NOTICE_FORMAT};
use crate::subjects::{subject_of, Notice, NoticeToken, RegistryRecord, SubjectState};
use crate::token::{self, TokenClass};

/// How long a command waits to read the registry to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Subcommand)]
pub enum SubjectsCommand {
    /// Create the subject registry and erasure-notice topics (compacted, kept for ever); an
    /// existing one is checked, not changed.
    Init {
        #[command(flatten)]
        config: ConfigArgs,
        /// Partitions of each topic.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Replication factor (default: the broker's).
        #[arg(long)]
        replication_factor: Option<i32>,
    },
    /// Erase a person: their identifiers get unlinked tokens and their records no sealed
    /// fields from now on, and an erasure notice lists their tokens for downstream stores.
    Erase(RequestArgs),
    /// Record that a person opted out of a domain (`--domain`; absent: the default domain).
    OptOut(RequestArgs),
    /// Record that a person opted in to a domain (`--domain`; absent: the default domain).
    OptIn(RequestArgs),
    /// What the registry holds for each identifier.
    Status(RequestArgs),
    /// Access and portability: every record of the analytics topics (or sanitized files) that
    /// carries one of the person's tokens (any live key, any domain), sealed fields opened,
    /// as JSON lines in a new file the person can be given (audited).
    Export(ExportArgs),
}

/// `subjects export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The person's identifiers, as for `erase` (`class value` per line; `-`: standard input).
    #[arg(long)]
    pub values_from: PathBuf,
    /// The class of every line's value; absent: each line starts with its class.
    #[arg(long)]
    pub class: Option<String>,
    /// Analytics topics to search, read whole (Confluent-framed records of the config's
    /// pipelines' `output_schema_id`s).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Sanitized Avro container files to search.
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// The export: a new file (refused if anything exists there), mode 0600.
    #[arg(long)]
    pub output: PathBuf,
    /// Audit log to append to (else the config's, else $PSEUDONYMIZER_AUDIT_LOG).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

/// One person's request.
#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The identifiers, one per line: `class value`, or the value alone with --class (`-`:
    /// standard input), so that they stay out of the process list and the shell history.
    #[arg(long)]
    pub values_from: PathBuf,
    /// The class of every line's value (phone, email, ip, id, id.<role>; the worker acts on
    /// those of `[subjects] classes`); absent: each line starts with its class.
    #[arg(long)]
    pub class: Option<String>,
    /// The pseudonymisation domain of a consent (opt-out, opt-in); absent: the default domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// The request's id (the ticket of the data-protection office), 1-64 characters of
    /// A-Z a-z 0-9 . _ -; absent: a new one.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Audit log to append to (else the config's, else $PSEUDONYMIZER_AUDIT_LOG).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

/// One identifier of the request, canonical.
struct Identifier {
    class: TokenClass,
    canonical: String,
    subject: String,
    hint: u64,
}

pub(super) async fn subjects(command: SubjectsCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        SubjectsCommand::Init {
            config,
            partitions,
            replication_factor,
        } => init(&config, partitions, replication_factor, out).await,
        SubjectsCommand::Erase(args) => request(args, Some(SubjectState::Erased), out).await,
        SubjectsCommand::OptOut(args) => request(args, Some(SubjectState::OptedOut), out).await,
        SubjectsCommand::OptIn(args) => request(args, Some(SubjectState::OptedIn), out).await,
        SubjectsCommand::Status(args) => request(args, None, out).await,
        SubjectsCommand::Export(args) => export(args, out),
    }
}

/// `subjects export`: the person's records from topics and files into one new JSON-lines file.
fn export(args: ExportArgs, out: &mut dyn Write) -> Result<()> {
    use crate::file::{DecryptReport, Selected};
    if args.topics.is_empty() && args.inputs.is_empty() {
        bail!("give the records to search: --topic (analytics topics) and/or --input (sanitized files)");
    }
    let (config, engine, keys) = super::load(&args.config, Need::SUBJECTS)?;
    if !args.topics.is_empty() {
        // Checked before anything is audited or read, as for the other commands.
        kafka_of(&config)?;
    }
    let (subject_key, identifiers) =
        identifiers_of(&args.values_from, args.class.as_deref(), &keys, &config)?;
    // The person's tokens: the notice an erasure would write lists exactly these.
    let tokens: std::collections::HashSet<String> =
        erasure_notice(&config, &keys, &identifiers, "export", &now())
            .tokens
            .into_iter()
            .map(|t| t.token)
            .collect();
    let mut file = crate::fsio::AtomicFile::create_new(&args.output, "the export", 0o600)?;
    let mut audit = AuditLog::open(args.audit_log.as_deref(), config.audit_log.as_deref())?;
    let mut key_ids = vec![subject_key.id().to_owned()];
    key_ids.extend(keys.pseudonym_keys().iter().map(|k| k.id().to_owned()));
    key_ids.extend(keys.encryption_key_ids());
    let count = identifiers.len() as u64;
    audit.append(
        "subjects export",
        key_ids.clone(),
        count,
        None,
        None,
        "started",
    )?;
    let mut report = DecryptReport::default();
    let mut total = Selected::default();
    let result = (|| -> Result<()> {
        let writer = file.writer();
        let mut write = |source: &str, record: serde_json::Value| -> std::io::Result<()> {
            serde_json::to_writer(
                &mut *writer,
                &serde_json::json!({"source": source, "record": record}),
            )?;
            writer.write_all(b"\n")
        };
        for input in &args.inputs {
            let source = input.display().to_string();
            let found =
                crate::file::select_file(&engine, &keys, input, &tokens, &mut report, |record| {
                    write(&source, record).map_err(|e| crate::file::FileError::Write(e.to_string()))
                })
                .with_context(|| format!("searching {}", input.display()))?;
            add(&mut total, found);
            crate::note!(
                "{}: {} records scanned, {} the person's",
                source,
                found.scanned,
                found.matched
            );
        }
        if !args.topics.is_empty() {
            let kafka = kafka_of(&config)?;
            for topic in &args.topics {
                let found = select_topic(
                    &config,
                    kafka,
                    topic,
                    &engine,
                    &keys,
                    &tokens,
                    &mut report,
                    |record| write(topic, record).map_err(anyhow::Error::from),
                )
                .with_context(|| format!("searching topic {topic}"))?;
                add(&mut total, found);
                crate::note!("{topic}: {} records scanned, {} the person's, {} not readable as a pipeline's output", found.scanned, found.matched, found.unreadable);
            }
        }
        Ok(())
    })();
    let result = result.and_then(|()| file.commit().map_err(anyhow::Error::from));
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    audit.append(
        "subjects export",
        key_ids,
        count,
        Some(report.unopened()),
        None,
        outcome,
    )?;
    result?;
    writeln!(
        out,
        "{} records of the person's in {} scanned ({} envelopes opened, {} not opened) written to {}",
        total.matched,
        total.scanned,
        report.opened,
        report.unopened(),
        args.output.display()
    )?;
    Ok(())
}

fn add(total: &mut crate::file::Selected, found: crate::file::Selected) {
    total.scanned += found.scanned;
    total.matched += found.matched;
    total.unreadable += found.unreadable;
}

/// The records of an analytics topic that carry one of `tokens`, read whole; progress on
/// standard error about once a second.
#[allow(clippy::too_many_arguments)]
fn select_topic(
    config: &Config,
    kafka: &crate::config::KafkaConfig,
    topic: &str,
    engine: &crate::transform::Engine,
    keys: &crate::keys::KeySet,
    tokens: &std::collections::HashSet<String>,
    report: &mut crate::file::DecryptReport,
    mut each: impl FnMut(serde_json::Value) -> Result<()>,
) -> Result<crate::file::Selected> {
    // Without a registry, a pipeline's output schema id is in the config; with one, the
    // worker registers the derived schema, and records under an id the config does not pin
    // are counted as not readable (pin `output_schema_id` to export from those topics).
    let mut by_id: HashMap<u32, &std::sync::Arc<crate::plan::Plan>> = HashMap::new();
    for (pipeline, plan) in config.avro_pipelines().zip(engine.plans()) {
        if let Some(id) = pipeline.output_schema_id {
            by_id.insert(id, plan);
        }
    }
    let json_pipeline = config
        .pipeline
        .iter()
        .position(|p| p.format.is_json() && p.output_topic.as_deref() == Some(topic));
    let json_plan = json_pipeline.and_then(|index| engine.json_plan(index).cloned());
    // A json-schema pipeline's records are framed (magic byte, schema id) before the object.
    let json_framed = json_pipeline.is_some_and(|index| {
        matches!(
            config.pipeline[index].format,
            crate::config::Format::JsonSchema | crate::config::Format::Protobuf
        )
    });
    // A protobuf pipeline's records are messages of its derived schema, read as their JSON.
    let proto_output =
        json_pipeline.and_then(|index| engine.proto(index).map(|c| c.output.clone()));
    let reader = TopicReader::open(kafka, topic, "export reader").map_err(anyhow::Error::msg)?;
    let mut found = crate::file::Selected::default();
    let mut failure: Option<anyhow::Error> = None;
    reader
        .read_to_end(
            Duration::from_secs(3600),
            |read| {
                if failure.is_some() {
                    return;
                }
                found.scanned += 1;
                let Some(value) = read.value else { return };
                // A json pipeline's output topic: its records are JSON objects.
                if let Some(plan) = &json_plan {
                    let json = match json_framed {
                        true => crate::worker::route::unframe(value).map(|(_, json)| json),
                        false => Some(value),
                    };
                    let decoded = match (&proto_output, json) {
                        (Some(output), Some(payload)) => {
                            crate::transform::protobuf::published_json(output, payload)
                        }
                        _ => None,
                    };
                    let json =
                        decoded
                            .as_deref()
                            .or(if proto_output.is_some() { None } else { json });
                    let Some(Ok(record)) = json.map(serde_json::from_slice::<serde_json::Value>)
                    else {
                        found.unreadable += 1;
                        return;
                    };
                    if crate::jsonl::carries_any(&record, tokens) {
                        found.matched += 1;
                        let opened = crate::jsonl::open_record(plan, keys, record, report);
                        if let Err(e) = each(opened) {
                            failure = Some(e);
                        }
                    }
                    return;
                }
                let decoded = crate::worker::route::unframe(value).and_then(|(id, mut datum)| {
                    let plan = by_id.get(&id)?;
                    apache_avro::from_avro_datum(&plan.output, &mut datum, None)
                        .ok()
                        .map(|v| (plan, v))
                });
                let Some((plan, record)) = decoded else {
                    found.unreadable += 1;
                    return;
                };
                if crate::file::carries_any(&record, tokens) {
                    found.matched += 1;
                    let json = crate::file::open_event(plan, keys, record, report);
                    if let Err(e) = each(json) {
                        failure = Some(e);
                    }
                }
            },
            |read, total| crate::note!("{topic}: {read} of about {total} records scanned"),
        )
        .map_err(anyhow::Error::msg)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

async fn init(
    args: &ConfigArgs,
    partitions: i32,
    replication: Option<i32>,
    out: &mut dyn Write,
) -> Result<()> {
    let (config, _, _) = super::load_config(args)?;
    let kafka = kafka_of(&config)?;
    let mut topics = Vec::new();
    topics.extend(kafka.subjects_topic.as_deref());
    topics.extend(kafka.erasure_topic.as_deref());
    if topics.is_empty() {
        bail!("the config's [kafka] names neither subjects_topic nor erasure_topic");
    }
    let results = create_topics(kafka, &topics, partitions, replication)
        .await
        .context("creating the subject topics")?;
    let mut failed = false;
    for (topic, result) in results {
        match result {
            Ok(true) => writeln!(out, "{topic}: created (cleanup.policy=compact)")?,
            Ok(false) => writeln!(out, "{topic}: exists, compacted")?,
            Err(why) => {
                failed = true;
                writeln!(out, "{topic}: refused: {why}")?
            }
        }
    }
    if failed {
        bail!("a subject topic is not as it must be");
    }
    Ok(())
}

/// The config's `[kafka]` section, after the same checks `check` and `run` make (a registry
/// topic that is also a pipeline's or the dead letters' is refused here too, before anything
/// is written to it).
fn kafka_of(config: &Config) -> Result<&crate::config::KafkaConfig> {
    let kafka = config
        .kafka
        .as_ref()
        .context("the config has no [kafka] section: the subject registry lives in Kafka")?;
    crate::worker::validate(config, None)?;
    Ok(kafka)
}

async fn request(
    args: RequestArgs,
    state: Option<SubjectState>,
    out: &mut dyn Write,
) -> Result<()> {
    let erase = state == Some(SubjectState::Erased);
    if erase && args.domain.is_some() {
        bail!("an erasure is of every domain: --domain goes with opt-out and opt-in");
    }
    if state.is_none() && (args.domain.is_some() || args.request_id.is_some()) {
        bail!(
            "status records nothing: --domain and --request-id go with erase, opt-out and opt-in"
        );
    }
    if let Some(domain) = &args.domain {
        crate::keys::check_domain(domain).map_err(anyhow::Error::msg)?;
    }
    let request_id = match &args.request_id {
        Some(id) => {
            check_request_id(id).map_err(anyhow::Error::msg)?;
            id.clone()
        }
        None => new_request_id(&now()),
    };
    // Erasure notices list the person's tokens of every epoch: the pseudonym keys too.
    let need = Need {
        pseudonym: if erase { Scope::All } else { Scope::Nothing },
        encryption: Scope::Nothing,
        subject: Scope::Active,
    };
    let (config, _engine, keys) = super::load(&args.config, need)?;
    let kafka = kafka_of(&config)?;
    let registry_topic = kafka
        .subjects_topic
        .clone()
        .context("the config's [kafka] names no subjects_topic")?;
    let notice_topic = match erase {
        true => Some(kafka.erasure_topic.clone().context(
            "the config's [kafka] names no erasure_topic: an erasure must tell downstream stores",
        )?),
        false => None,
    };
    let (subject_key, identifiers) =
        identifiers_of(&args.values_from, args.class.as_deref(), &keys, &config)?;
    if let (Some(SubjectState::OptedOut | SubjectState::OptedIn), domains) =
        (state, crate::subjects::consent_domains(&config))
    {
        let domain = args.domain.clone();
        if !domains.contains(&domain) {
            crate::note!(
                "warning: no pipeline of this config asks consent in the {} domain; the record is kept, but these workers do not act on it",
                domain.as_deref().unwrap_or("default")
            );
        }
    }

    let classes = crate::subjects::SubjectClasses::parse(&config.subjects.classes)
        .map_err(anyhow::Error::msg)?;
    for (n, id) in identifiers.iter().enumerate() {
        if state.is_some() && !classes.contains(id.class) {
            crate::note!(
                "warning: line {}: class {} is not one of this config's subject classes ([subjects] classes): it is recorded, but these workers do not act on it",
                n + 1,
                id.class.as_str()
            );
        }
    }

    // Audited before anything is read, written or printed.
    let command = match state {
        Some(state) => format!("subjects {}", verb(state)),
        None => "subjects status".to_owned(),
    };
    let mut audit = AuditLog::open(args.audit_log.as_deref(), config.audit_log.as_deref())?;
    let mut key_ids = vec![subject_key.id().to_owned()];
    if erase {
        key_ids.extend(keys.pseudonym_keys().iter().map(|k| k.id().to_owned()));
    }
    let count = identifiers.len() as u64;
    audit.append(&command, key_ids.clone(), count, None, None, "started")?;
    let result = async {
        let asked_id = args.request_id.as_deref();
        let held = read_registry(kafka, &registry_topic, &identifiers, asked_id).await?;
        if held.request_id_taken {
            bail!("request id {request_id} already names a request with other identifiers (registry records of subjects not in this file carry it): repeat a request with all of its identifiers, or give a new id (an erasure notice under a reused id replaces the earlier one)");
        }
        match state {
            None => status(&identifiers, &held, out),
            Some(state) => {
                record(
                    kafka,
                    &config,
                    &keys,
                    &registry_topic,
                    notice_topic.as_deref(),
                    &identifiers,
                    &held.records,
                    state,
                    args.domain.as_deref(),
                    &request_id,
                    out,
                )
                .await
            }
        }
    }
    .await;
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    audit.append(&command, key_ids, count, None, None, outcome)?;
    result
}

fn verb(state: SubjectState) -> &'static str {
    match state {
        SubjectState::Erased => "erase",
        SubjectState::OptedOut => "opt-out",
        SubjectState::OptedIn => "opt-in",
    }
}

/// What the registry holds of one request's identifiers.
#[derive(Default)]
struct Held {
    /// The latest record of each of their registry keys, by key.
    records: HashMap<String, RegistryRecord>,
    /// Their keys whose latest record was refused (not one, or not the key's) or was a
    /// tombstone on an erasure: what workers do not act on, or a restarted one no longer sees.
    troubled: HashMap<String, &'static str>,
    /// Whether a record of another subject carries the request's id.
    request_id_taken: bool,
}

/// The registry's records of these identifiers (and whether `request_id` is another
/// person's).
async fn read_registry(
    kafka: &crate::config::KafkaConfig,
    topic: &str,
    identifiers: &[Identifier],
    request_id: Option<&str>,
) -> Result<Held> {
    let subjects: std::collections::HashSet<String> =
        identifiers.iter().map(|i| i.subject.clone()).collect();
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    let request_id = request_id.map(str::to_owned);
    tokio::task::spawn_blocking(move || -> Result<Held, String> {
        let reader = TopicReader::open_subject_topic(&kafka, &topic, "subjects reader")?;
        let mut held = Held::default();
        reader.read_to_end(
            READ_TIMEOUT,
            |read| {
                let key = read.key.unwrap_or_default();
                let Ok(text) = std::str::from_utf8(key) else {
                    return;
                };
                let Some((subject, aspect)) = text.split_once('/') else {
                    return;
                };
                if !subjects.contains(subject) {
                    // Another person's record: only its request id matters here.
                    if let (Some(id), Some(value)) = (&request_id, read.value) {
                        if let Ok(record) = RegistryRecord::parse(key, value) {
                            held.request_id_taken |= &record.request == id;
                        }
                    }
                    return;
                }
                held.records.remove(text);
                held.troubled.remove(text);
                match read.value {
                    None if aspect == "erased" => {
                        held.troubled.insert(text.to_owned(), "erasure tombstoned");
                    }
                    None => {}
                    Some(value) => match RegistryRecord::parse(key, value) {
                        Ok(record) => {
                            held.records.insert(text.to_owned(), record);
                        }
                        Err(_) => {
                            held.troubled.insert(text.to_owned(), "refused");
                        }
                    },
                }
            },
            |_, _| {},
        )?;
        Ok(held)
    })
    .await
    .context("the registry reader stopped")?
    .map_err(anyhow::Error::msg)
}

fn status(identifiers: &[Identifier], held: &Held, out: &mut dyn Write) -> Result<()> {
    for (n, id) in identifiers.iter().enumerate() {
        let prefix = format!("{}/", id.subject);
        // Keys whose latest record workers do not act on: `aspect: why`.
        let mut troubled: Vec<String> = held
            .troubled
            .iter()
            .filter_map(|(k, why)| Some(format!("{}: {why}", k.strip_prefix(&prefix)?)))
            .collect();
        troubled.sort();
        let mut records: Vec<&RegistryRecord> = held
            .records
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| r)
            .collect();
        records.sort_by_key(|r| r.key());
        // Whether workers match this record to the person's values by its hint: `ok`; `none`
        // (format v1: matched, at the cost of a subject id for every identifier a worker
        // meets); `wrong` (not matched: repeating the request writes it again).
        let hint = |r: &RegistryRecord| match r.hint() {
            Some(hint) if hint == id.hint => "ok",
            Some(_) => "wrong",
            None => "none",
        };
        let erased = records.iter().find(|r| r.state == SubjectState::Erased);
        let consent: Vec<serde_json::Value> = records
            .iter()
            .filter(|r| r.state != SubjectState::Erased)
            .map(|r| serde_json::json!({"domain": r.domain, "state": r.state.as_str(), "at": r.at, "request": r.request, "hint": hint(r)}))
            .collect();
        let line = serde_json::json!({
            "line": n + 1,
            "class": id.class.as_str(),
            "subject": id.subject,
            "erased": erased.map(|r| serde_json::json!({"at": r.at, "request": r.request, "hint": hint(r)})),
            "consent": consent,
            "not_acted_on": troubled,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn record(
    kafka: &crate::config::KafkaConfig,
    config: &Config,
    keys: &crate::keys::KeySet,
    registry_topic: &str,
    notice_topic: Option<&str>,
    identifiers: &[Identifier],
    held: &HashMap<String, RegistryRecord>,
    state: SubjectState,
    domain: Option<&str>,
    request_id: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let at = now();
    let writer = TopicWriter::new(kafka, "subjects producer").map_err(anyhow::Error::msg)?;
    // What changes: an aspect already in this state stays as it is.
    let mut changes = Vec::new();
    for id in identifiers {
        let key = record_key(&id.subject, state, domain);
        // A record without the right hint (format v1, or written by another tool that got it
        // wrong) is written again: workers match identifiers to records by their hints.
        let already = held
            .get(&key)
            .filter(|r| r.state == state && r.hint() == Some(id.hint));
        changes.push(already.is_none());
    }
    if let (Some(topic), true) = (notice_topic, changes.iter().any(|c| *c)) {
        // The notice first: a store told of an erasure that the registry then fails to
        // record deletes rows a repeat of the request would have them delete anyway.
        let notice = erasure_notice(config, keys, identifiers, request_id, &at);
        let value = serde_json::to_string(&notice).expect("a notice serializes");
        writer
            .send(topic, request_id, &value)
            .await
            .map_err(anyhow::Error::msg)
            .context("writing the erasure notice")?;
    }
    if state != SubjectState::Erased {
        for (n, id) in identifiers.iter().enumerate() {
            if held.contains_key(&record_key(&id.subject, SubjectState::Erased, None)) {
                crate::note!(
                    "warning: line {}: this identifier's person is erased; the erasure stands whatever their consent",
                    n + 1
                );
            }
        }
    }
    // Every record is written before anything is printed: a report that cannot be written
    // (a full disk, a closed pipe) never leaves the request half-recorded.
    let mut lines = Vec::new();
    for (n, (id, change)) in identifiers.iter().zip(&changes).enumerate() {
        let line = if *change {
            let record =
                RegistryRecord::new(id.subject.clone(), id.hint, state, domain, &at, request_id);
            writer
                .send(registry_topic, &record.key(), &record.to_json())
                .await
                .map_err(anyhow::Error::msg)
                .with_context(|| {
                    format!(
                        "writing line {} to the subject registry ({n} of {} recorded: repeat the request)",
                        n + 1,
                        identifiers.len()
                    )
                })?;
            serde_json::json!({"line": n + 1, "class": id.class.as_str(), "subject": id.subject, "state": state.as_str(), "domain": domain, "changed": true, "at": at, "request": request_id})
        } else {
            let old = &held[&record_key(&id.subject, state, domain)];
            serde_json::json!({"line": n + 1, "class": id.class.as_str(), "subject": id.subject, "state": state.as_str(), "domain": domain, "changed": false, "at": old.at, "request": old.request})
        };
        lines.push(line);
    }
    let mut report = || -> std::io::Result<()> {
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        out.flush()
    };
    report().context("the request is recorded, but its report could not be written")
}

/// The notice of one erasure: the person's tokens under every pseudonym key with a secret, in
/// the default domain and every domain a pipeline names.
fn erasure_notice(
    config: &Config,
    keys: &crate::keys::KeySet,
    identifiers: &[Identifier],
    request_id: &str,
    at: &str,
) -> Notice {
    let mut domains: Vec<Option<String>> = vec![None];
    for pipeline in &config.pipeline {
        if pipeline.domain.is_some() && !domains.contains(&pipeline.domain) {
            domains.push(pipeline.domain.clone());
        }
    }
    let mut tokens = Vec::new();
    for id in identifiers {
        for key in keys.pseudonym_keys() {
            for domain in &domains {
                let in_domain;
                let key = match domain {
                    Some(d) => {
                        in_domain = key.in_domain(d);
                        &in_domain
                    }
                    None => &**key,
                };
                tokens.push(NoticeToken {
                    token: token::token(key, id.class, id.canonical.as_bytes())
                        .as_str()
                        .to_owned(),
                    class: id.class.as_str().to_owned(),
                    key_id: key.id().to_owned(),
                    domain: domain.clone(),
                });
            }
        }
    }
    Notice {
        format: NOTICE_FORMAT.to_owned(),
        request: request_id.to_owned(),
        at: at.to_owned(),
        subjects: identifiers.iter().map(|i| i.subject.clone()).collect(),
        tokens,
    }
}

/// The identifiers of a request file, canonical, with their subject ids. A phone number
/// without a country code is read in `[phone] default_region` and said so: a record that
/// carries another country in its region field reads it otherwise, and would not match.
fn identifiers_of(
    path: &std::path::Path,
    class: Option<&str>,
    keys: &crate::keys::KeySet,
    config: &Config,
) -> Result<(std::sync::Arc<crate::keys::SubjectKey>, Vec<Identifier>)> {
    let subject_key = keys
        .subject()
        .context(
            "the keyring has no active subject key (`keys rotate --purpose subject` adds one)",
        )?
        .clone();
    if let Some(class) = class {
        parse_class(class).context("--class")?;
    }
    let phone = &PhoneCanon::new(&config.phone.default_region)?;
    let subject_key_ref: &crate::keys::SubjectKey = &subject_key;
    let lines = read_lines(path)?;
    let mut identifiers = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let (class, value) = parse_line(line, class)
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        if class == TokenClass::Phone && !value.trim_start().starts_with('+') {
            crate::note!(
                "warning: {} line {}: a phone number without a country code is read in [phone] default_region {}; give it in international form (+CC…) to match records read in another country",
                path.display(),
                n + 1,
                config.phone.default_region
            );
        }
        let (class, canonical) = token::canonical(class, value, phone);
        let (subject, hint) = subject_of(subject_key_ref, class, canonical.as_bytes());
        identifiers.push(Identifier {
            class,
            canonical: canonical.into_owned(),
            subject,
            hint,
        });
    }
    Ok((subject_key, identifiers))
}

/// A request line: `class value`, or the value alone when `--class` is given.
fn parse_line<'a>(line: &'a str, class: Option<&str>) -> Result<(TokenClass, &'a str)> {
    let (name, value) = match class {
        Some(class) => (class, line),
        None => line
            .split_once(char::is_whitespace)
            .map(|(c, v)| (c, v.trim()))
            .context("a line is `class value` (or give --class)")?,
    };
    let class = parse_class(name)?;
    // A line of another class given under --class email (`phone +65…`), or a stray word,
    // would otherwise be recorded as somebody's address.
    if class == TokenClass::Email && (!value.contains('@') || value.contains(char::is_whitespace)) {
        bail!("not an e-mail address (one word with an @)");
    }
    Ok((class, value))
}

/// A requestable token class by name.
fn parse_class(name: &str) -> Result<TokenClass> {
    match TokenClass::parse(name) {
        Some(class) if class.is_requestable() => Ok(class),
        _ => bail!("the class must be phone, ip, email, id or id.<role>"),
    }
}

/// The request's lines: non-empty, trimmed.
fn read_lines(path: &std::path::Path) -> Result<Vec<String>> {
    let text = if path == std::path::Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), (1 << 20) + 1),
            &mut bytes,
        )
        .context("reading standard input")?;
        if bytes.len() > 1 << 20 {
            bail!("standard input holds more than 1 MiB of identifiers: one request is one person");
        }
        String::from_utf8(bytes).context("standard input is not UTF-8")?
    } else {
        let bytes = crate::fsio::read_bounded(path, "a request's identifiers", 1 << 20)
            .with_context(|| format!("reading {}", path.display()))?;
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?
    };
    // A byte-order mark, as some editors on Windows write one, is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        bail!("no identifiers in {}", path.display());
    }
    if lines.len() > MAX_IDENTIFIERS {
        bail!(
            "{} holds {} identifiers; a request is one person's, at most {MAX_IDENTIFIERS} (its erasure notice must fit one Kafka record): make one request per person",
            path.display(),
            lines.len()
        );
    }
    Ok(lines)
}

/// Most identifiers in one request. One person has a few; a file of more is a bulk import by
/// mistake. The erasure notice holds a token per identifier, live key and domain (about 110
/// bytes each) and must fit one Kafka record (1 MiB by default): 1,000 identifiers under two
/// keys and two domains take about 440 KB.
const MAX_IDENTIFIERS: usize = 1000;

fn now() -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}
