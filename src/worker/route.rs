//! From one raw record to what should be published: the sanitized record for its analytics
//! topic, or a dead-letter reason. Pure: no Kafka and no registry here, so it is tested alone.
//!
//! Records are routed by the schema id in their Confluent header. Without a registry, every
//! id is known from the config at start. With one, an id seen for the first time is resolved
//! by [`super::resolve`] (outside this module, since that is I/O) and remembered here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::Format;
use crate::config::{Config, ConfigError};
use crate::plan::json::JsonPlan;
use crate::plan::json_schema::JsonSchemaContract;
use crate::plan::protobuf::{self, ProtoContract};
use crate::plan::Plan;
use crate::subjects::{SubjectGate, SubjectPolicy, SubjectView};
use crate::token::{self, TokenClass};
use crate::transform::{ActiveKeys, Engine};

/// Confluent wire format: magic byte 0, then a 4-byte big-endian schema id, then Avro.
pub const MAGIC: u8 = 0;

/// Why a record went to the dead-letter topic. The code is what the `reason` header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetter {
    /// Shorter than the 5-byte header, or the magic byte is not 0.
    BadMagic,
    /// No pipeline has this input schema id (without a registry), or the registry does not
    /// know it (40403), or its record has no pipeline.
    UnknownSchema,
    /// The Avro did not decode or transform (truncated, corrupt, invalid UTF-8).
    CorruptAvro,
    /// Larger than `max_record_bytes`.
    Oversize,
    /// No value at all (tombstone).
    Empty,
    /// A writer schema version from the registry has a leaf field without a rule, or a rule
    /// that does not fit its field's type: nothing of it is published until the rules say.
    UnclassifiedField,
    /// The registry's schema for this id is not an Avro record schema this worker can read.
    BadSchema,
    /// The registry refused the derived output schema (incompatible, 409, or invalid, 42201).
    OutputSchemaRefused,
    /// A `json` pipeline's record is not a JSON object, has a key twice in one object, or
    /// did not transform.
    CorruptJson,
    /// A `protobuf` pipeline's record is not a message of its schema (malformed, a field
    /// number the schema does not have, a message-index list that does not name the
    /// pipeline's message), or what the walk made of it does not fit the derived schema.
    CorruptProtobuf,
}

impl DeadLetter {
    /// Every reason, for metrics exported from the start.
    pub const ALL: [DeadLetter; 10] = [
        DeadLetter::BadMagic,
        DeadLetter::UnknownSchema,
        DeadLetter::CorruptAvro,
        DeadLetter::Oversize,
        DeadLetter::Empty,
        DeadLetter::UnclassifiedField,
        DeadLetter::BadSchema,
        DeadLetter::OutputSchemaRefused,
        DeadLetter::CorruptJson,
        DeadLetter::CorruptProtobuf,
    ];

    /// The `reason` header value.
    pub fn code(self) -> &'static str {
        match self {
            DeadLetter::BadMagic => "bad-magic",
            DeadLetter::UnknownSchema => "unknown-schema-id",
            DeadLetter::CorruptAvro => "corrupt-avro",
            DeadLetter::Oversize => "oversize",
            DeadLetter::Empty => "empty",
            DeadLetter::UnclassifiedField => "unclassified-field",
            DeadLetter::BadSchema => "bad-schema",
            DeadLetter::OutputSchemaRefused => "output-schema-refused",
            DeadLetter::CorruptJson => "corrupt-json",
            DeadLetter::CorruptProtobuf => "corrupt-protobuf",
        }
    }
}

/// One pipeline's settings, shared by every writer schema version it serves.
#[derive(Debug)]
pub struct Pipeline {
    /// Position in the config.
    pub index: usize,
    pub name: String,
    /// The writer schema's full record name (`comms.v1.CallEvent`), from `input_schema`.
    pub record_name: String,
    /// The plan of the config's `input_schema`: its rules and domain are what each new
    /// writer version is compiled with ([`Plan::for_writer`]).
    pub configured: Arc<Plan>,
    pub output_topic: String,
    pub key_class: Option<TokenClass>,
    /// Whose records it publishes and what it does with a withheld subject's.
    pub subject_policy: SubjectPolicy,
}

/// One input schema id as the worker runs it: a pipeline's rules compiled against that
/// writer schema, and the id its output is written with.
#[derive(Debug)]
pub struct Route {
    /// Position of the pipeline in the config.
    pub index: usize,
    pub plan: Arc<Plan>,
    pub name: String,
    pub output_topic: String,
    pub output_schema_id: u32,
    pub key_class: Option<TokenClass>,
    pub subject_policy: SubjectPolicy,
}

impl Route {
    /// The route of `pipeline` for one compiled writer schema.
    pub fn new(pipeline: &Pipeline, plan: Arc<Plan>, output_schema_id: u32) -> Self {
        Route {
            index: pipeline.index,
            plan,
            name: pipeline.name.clone(),
            output_topic: pipeline.output_topic.clone(),
            output_schema_id,
            key_class: pipeline.key_class,
            subject_policy: pipeline.subject_policy,
        }
    }
}

/// A JSON pipeline as the worker runs it: for `format = "json"` every record of its input
/// topic, for `format = "json-schema"` the records of one writer schema id.
#[derive(Debug, Clone)]
pub struct JsonRoute {
    /// Position of the pipeline in the config.
    pub index: usize,
    pub plan: Arc<JsonPlan>,
    pub name: String,
    pub output_topic: String,
    /// `json-schema`: the Confluent header's schema id of the output (the derived schema's);
    /// `None` for schemaless JSON, whose records are not framed.
    pub output_schema_id: Option<u32>,
    pub key_class: Option<TokenClass>,
    pub subject_policy: SubjectPolicy,
    /// `protobuf`: the writer's message and the derived one its records are read and written
    /// as (the walk between them is the JSON one).
    pub proto: Option<Arc<ProtoContract>>,
    /// The input schema's name, for the `pseudonymizer.schema` header: a JSON Schema's title,
    /// a Protobuf message's full name; `None` for schemaless JSON.
    pub schema_name: Option<Arc<str>>,
}

/// A `format = "protobuf"` pipeline, found by its writer schemas' message name.
#[derive(Debug)]
pub struct ProtoPipeline {
    /// Its route, but for the output schema id and the writer's message (each writer version
    /// gets its own).
    pub route: JsonRoute,
    pub contract: Arc<ProtoContract>,
}

/// A `format = "json-schema"` pipeline, found by its writer schemas' `title`.
#[derive(Debug)]
pub struct JsonSchemaPipeline {
    /// Its route, but for the output schema id (each writer version gets its own).
    pub route: JsonRoute,
    pub contract: Arc<JsonSchemaContract>,
}

/// Where a sanitized record goes, and by which rules it was made.
#[derive(Debug, Clone)]
pub enum Target {
    /// An Avro pipeline, for one writer schema id.
    Avro(Arc<Route>),
    /// A JSON pipeline: schemaless, or one writer schema id of a json-schema one.
    Json(Arc<JsonRoute>),
}

impl Target {
    /// The position of its pipeline in the config.
    pub fn index(&self) -> usize {
        match self {
            Target::Avro(route) => route.index,
            Target::Json(route) => route.index,
        }
    }

    /// The schema id its output is framed with; `None` for schemaless JSON.
    pub fn output_schema_id(&self) -> Option<u32> {
        match self {
            Target::Avro(route) => Some(route.output_schema_id),
            Target::Json(route) => route.output_schema_id,
        }
    }

    pub fn output_topic(&self) -> &str {
        match self {
            Target::Avro(route) => &route.output_topic,
            Target::Json(route) => &route.output_topic,
        }
    }

    pub fn subject_policy(&self) -> SubjectPolicy {
        match self {
            Target::Avro(route) => route.subject_policy,
            Target::Json(route) => route.subject_policy,
        }
    }

    /// The input schema's name: an Avro record's full name, a JSON Schema's title, a Protobuf
    /// message's full name; schemaless JSON has none.
    pub fn schema_name(&self) -> Option<&str> {
        match self {
            Target::Avro(route) => Some(&route.plan.input_name),
            Target::Json(route) => route.schema_name.as_deref(),
        }
    }
}

/// What the router knows of one input schema id.
#[derive(Debug, Clone)]
pub enum Resolution {
    Route(Target),
    /// Every record with this id is dead-lettered for this reason (until a restart).
    Refused(DeadLetter),
}

/// At most this many schema ids are remembered as refused: ids are chosen by whoever
/// produces, and a flood of junk ids must not grow memory without bound. Past it, a refused
/// id is asked again each time.
const MAX_REFUSED_IDS: usize = 10_000;

/// Input schema id → route.
#[derive(Debug)]
pub struct Router {
    pipelines: Vec<Pipeline>,
    routes: RwLock<HashMap<u32, Resolution>>,
    refused: std::sync::atomic::AtomicUsize,
    /// Ids missing from `routes` are asked of the registry (else: `unknown-schema-id`).
    registry: bool,
    max_record_bytes: usize,
    pub input_topics: Vec<String>,
    /// `format = "json"` pipelines by input topic (a json pipeline has its topic to itself:
    /// a record carries nothing else to route it by).
    json_routes: HashMap<String, Arc<JsonRoute>>,
    /// `format = "json-schema"` pipelines, routed by schema id like Avro ones.
    json_schema_pipelines: Vec<JsonSchemaPipeline>,
    /// `format = "protobuf"` pipelines, routed by schema id like Avro ones.
    proto_pipelines: Vec<ProtoPipeline>,
}

impl Router {
    /// Every analytics topic the pipelines write to, in config order, without repeats.
    pub fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = Vec::new();
        let mut outputs: Vec<(usize, &String)> = self
            .pipelines
            .iter()
            .map(|p| (p.index, &p.output_topic))
            .chain(
                self.json_routes
                    .values()
                    .map(|r| (r.index, &r.output_topic)),
            )
            .chain(
                self.json_schema_pipelines
                    .iter()
                    .map(|p| (p.route.index, &p.route.output_topic)),
            )
            .chain(
                self.proto_pipelines
                    .iter()
                    .map(|p| (p.route.index, &p.route.output_topic)),
            )
            .collect();
        outputs.sort();
        for (_, topic) in outputs {
            if !topics.contains(topic) {
                topics.push(topic.clone());
            }
        }
        topics
    }
}

/// A sanitized record ready to publish.
pub struct Output {
    pub route: Target,
    /// The route's pipeline index.
    pub index: usize,
    pub key: Option<String>,
    /// It carries a withheld subject (unlinked tokens, no sealed fields).
    pub withheld: bool,
}

/// A pipeline as messages name it: `[calls]` (a long name cut short).
fn pipeline_tag(name: &str) -> String {
    if name.chars().count() <= crate::config::QUOTE_CHARS {
        format!("[{name}]")
    } else {
        format!(
            "[{}…]",
            name.chars()
                .take(crate::config::QUOTE_CHARS)
                .collect::<String>()
        )
    }
}

/// The token class a pipeline's `key_class` names, if it is one a key may have.
fn key_class(name: &str) -> Option<TokenClass> {
    TokenClass::parse(name).filter(|c| c.is_requestable())
}

/// Every problem of the pipelines' stream settings (part of [`crate::worker::validate`], and
/// what [`Router::from_config`] refuses): topics, key classes, schema ids, and topics that
/// would make a loop. Every problem at once; values quoted short.
pub fn problems(config: &Config) -> Vec<String> {
    use crate::config::{out_of_range, quote, ranges};
    let mut problems = Vec::new();
    let Some(kafka) = config.kafka.as_ref() else {
        return vec!["[kafka] section is missing: the stream worker needs it".to_owned()];
    };
    let registry = config.registry.is_some();
    let inputs: Vec<(&str, &str)> = config
        .pipeline
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.input_topic.as_deref()?)))
        .collect();
    let mut input_ids: HashMap<u32, &str> = HashMap::new();
    for pipeline in &config.pipeline {
        let tag = pipeline_tag(&pipeline.name);
        let (Some(input_topic), Some(output_topic)) =
            (&pipeline.input_topic, &pipeline.output_topic)
        else {
            problems.push(format!(
                "{tag} input_topic and output_topic are required by the stream worker"
            ));
            continue;
        };
        for (name, topic) in [("input_topic", input_topic), ("output_topic", output_topic)] {
            if topic.trim().is_empty() {
                problems.push(format!("{tag} {name} is empty"));
            }
        }
        if let Some(name) = pipeline.key_class.as_deref() {
            if key_class(name).is_none() {
                problems.push(format!(
                    "{tag} key_class {} is not phone, ip, email, id or id.<role>",
                    quote(name)
                ));
            }
        }
        if output_topic == input_topic {
            problems.push(format!(
                "{tag} output_topic {} is also its input_topic: sanitized records would be read again as raw ones",
                quote(output_topic)
            ));
        }
        if *output_topic == kafka.dlq_topic {
            problems.push(format!(
                "{tag} output_topic {} is also the dead-letter topic (dlq_topic): sanitized records and dead letters must not mix",
                quote(output_topic)
            ));
        }
        for (other, other_input) in &inputs {
            if output_topic == other_input && output_topic != input_topic {
                problems.push(format!(
                    "{tag} output_topic {} is the input_topic of {}: sanitized records would be read again as raw ones",
                    quote(output_topic),
                    pipeline_tag(other)
                ));
            }
        }
        if *input_topic == kafka.dlq_topic {
            problems.push(format!(
                "[kafka] dlq_topic {} is also the input_topic of {tag}: the worker would read its own dead letters and dead-letter them again (a loop)",
                quote(&kafka.dlq_topic)
            ));
        }
        for (name, id) in [
            ("input_schema_id", pipeline.input_schema_id),
            ("output_schema_id", pipeline.output_schema_id),
        ] {
            if let Some(id) = id {
                problems.extend(out_of_range(&tag, name, id.into(), ranges::SCHEMA_ID));
            }
        }
        if pipeline.format == Format::Json {
            if pipeline.input_schema_id.is_some() || pipeline.output_schema_id.is_some() {
                problems.push(format!(
                    "{tag} input_schema_id and output_schema_id are for format avro: a json pipeline's records carry no schema id"
                ));
            }
            for other in &config.pipeline {
                if !std::ptr::eq(other, pipeline)
                    && other.input_topic.as_deref() == Some(input_topic.as_str())
                {
                    problems.push(format!(
                        "{tag} input_topic {} is also the input_topic of {}: a json pipeline needs its input topic to itself (its records carry nothing else to route them by)",
                        quote(input_topic),
                        pipeline_tag(&other.name)
                    ));
                }
            }
        } else {
            match (pipeline.input_schema_id, pipeline.output_schema_id) {
            (Some(input_id), Some(_)) => {
                if let Some(first) = input_ids.insert(input_id, &pipeline.name) {
                    problems.push(format!(
                        "{tag} input_schema_id {input_id} is also the input_schema_id of {}: one schema id routes to one pipeline",
                        pipeline_tag(first)
                    ));
                }
            }
            (None, None) if registry => {}
            _ if registry => problems.push(format!(
                "{tag} give both input_schema_id and output_schema_id to pin an id, or neither"
            )),
            _ => problems.push(format!(
                "{tag} input_schema_id and output_schema_id are required by the stream worker without a [registry]"
            )),
        }
        }
        if kafka.subjects_topic.is_none()
            && (pipeline.consent.is_some()
                || pipeline.erased != crate::subjects::WithheldAction::default())
        {
            problems.push(format!(
                "{tag} consent and erased need the subject registry: set [kafka] subjects_topic"
            ));
        }
    }
    problems.extend(subject_problems(config, kafka));
    problems
}

/// The subject registry's settings: its classes, its topics (never a topic the pipelines or
/// the dead letters use), and how many domains ask for consent.
fn subject_problems(config: &Config, kafka: &crate::config::KafkaConfig) -> Vec<String> {
    use crate::config::quote;
    let mut problems = Vec::new();
    if let Err(why) = crate::subjects::SubjectClasses::parse(&config.subjects.classes) {
        problems.push(why);
    }
    let domains = crate::subjects::consent_domains(config).len();
    if domains > crate::subjects::table::MAX_CONSENT_DOMAINS {
        problems.push(format!(
            "{domains} domains ask for consent; at most {} can",
            crate::subjects::table::MAX_CONSENT_DOMAINS
        ));
    }
    let mut used: Vec<&str> = vec![kafka.dlq_topic.as_str()];
    for pipeline in &config.pipeline {
        used.extend(pipeline.input_topic.as_deref());
        used.extend(pipeline.output_topic.as_deref());
    }
    if kafka.subjects_topic.is_some() && config.subjects.classes.is_empty() {
        problems.push(
            "[subjects] classes is empty: no field would be looked up in the subject registry"
                .to_owned(),
        );
    }
    if !(1..=86_400).contains(&config.subjects.load_timeout_secs) {
        problems.push(format!(
            "[subjects] load_timeout_secs {} is outside 1 to 86400",
            config.subjects.load_timeout_secs
        ));
    }
    for (name, topic) in [
        ("subjects_topic", &kafka.subjects_topic),
        ("erasure_topic", &kafka.erasure_topic),
    ] {
        if topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push(format!(
                "[kafka] {name} is empty: name a topic, or leave it out"
            ));
        }
        if let Some(topic) = topic {
            if used.contains(&topic.as_str()) {
                problems.push(format!(
                    "[kafka] {name} {} is also a pipeline's or the dead letters' topic: it must be a topic of its own",
                    quote(topic)
                ));
            }
        }
    }
    if let (Some(a), Some(b)) = (&kafka.subjects_topic, &kafka.erasure_topic) {
        if a == b {
            problems.push(format!(
                "[kafka] subjects_topic and erasure_topic are both {}: they are two topics",
                quote(a)
            ));
        }
    }
    problems
}

impl Router {
    /// Builds the routes from the config. Refuses what [`problems`] finds (every stream
    /// setting); without a registry every pipeline needs its static schema ids, with one they
    /// are optional (given, they pin that id to the pipeline).
    pub fn from_config(config: &Config, engine: &Engine) -> Result<Self, ConfigError> {
        let errors = problems(config);
        if !errors.is_empty() {
            return Err(ConfigError::Rules(
                errors.iter().map(|e| config.redact(e)).collect(),
            ));
        }
        let Some(kafka) = config.kafka.as_ref() else {
            return Err(ConfigError::Rules(vec![
                "[kafka] section is missing".to_owned()
            ]));
        };
        let registry = config.registry.is_some();
        let consent_domains = crate::subjects::consent_domains(config);
        let mut routes = HashMap::new();
        let mut pipelines = Vec::new();
        let mut topics = Vec::new();
        let mut json_routes = HashMap::new();
        let mut json_schema_pipelines = Vec::new();
        let mut proto_pipelines = Vec::new();
        let mut avro_plans = engine.plans().iter();
        for (index, pipeline) in config.pipeline.iter().enumerate() {
            // Present and valid: `problems` refused the config otherwise.
            let (Some(input_topic), Some(output_topic)) =
                (&pipeline.input_topic, &pipeline.output_topic)
            else {
                if pipeline.format == Format::Avro {
                    avro_plans.next();
                }
                continue;
            };
            if !topics.contains(input_topic) {
                topics.push(input_topic.clone());
            }
            let subject_policy = SubjectPolicy {
                consent: pipeline.consent.map(|mode| {
                    let domain = pipeline.domain.clone();
                    let index = consent_domains.iter().position(|d| *d == domain);
                    (
                        mode,
                        index.expect("consent_domains lists every consent pipeline's domain"),
                    )
                }),
                withheld: pipeline.erased,
            };
            if pipeline.format.is_json() {
                let Some(plan) = engine.json_plan(index) else {
                    continue;
                };
                let route = JsonRoute {
                    index,
                    plan: plan.clone(),
                    name: pipeline.name.clone(),
                    output_topic: output_topic.clone(),
                    output_schema_id: None,
                    key_class: pipeline.key_class.as_deref().and_then(key_class),
                    subject_policy,
                    proto: engine.proto(index).cloned(),
                    schema_name: match (engine.proto(index), engine.json_schema(index)) {
                        (Some(proto), _) => Some(proto.input.message.full_name().into()),
                        (None, Some(json_schema)) => Some(json_schema.input.title.as_str().into()),
                        (None, None) => None,
                    },
                };
                let json_schema = engine.json_schema(index);
                if route.proto.is_none() && json_schema.is_none() {
                    // Schemaless JSON: routed by its topic.
                    json_routes.insert(input_topic.clone(), Arc::new(route));
                    continue;
                }
                // Protobuf and JSON Schema: routed by schema id, as Avro; pinned ids now.
                if let (Some(input_id), Some(output_id)) =
                    (pipeline.input_schema_id, pipeline.output_schema_id)
                {
                    let pinned = JsonRoute {
                        output_schema_id: Some(output_id),
                        ..route.clone()
                    };
                    routes.insert(input_id, Resolution::Route(Target::Json(Arc::new(pinned))));
                }
                if let Some(contract) = route.proto.clone() {
                    proto_pipelines.push(ProtoPipeline { route, contract });
                } else if let Some(contract) = json_schema {
                    json_schema_pipelines.push(JsonSchemaPipeline {
                        route,
                        contract: contract.clone(),
                    });
                }
                continue;
            }
            let Some(plan) = avro_plans.next() else {
                continue;
            };
            let spec = Pipeline {
                index,
                name: pipeline.name.clone(),
                record_name: plan.input_name.clone(),
                configured: plan.clone(),
                output_topic: output_topic.clone(),
                key_class: pipeline.key_class.as_deref().and_then(key_class),
                subject_policy,
            };
            if let (Some(input_id), Some(output_id)) =
                (pipeline.input_schema_id, pipeline.output_schema_id)
            {
                let route = Route::new(&spec, plan.clone(), output_id);
                routes.insert(input_id, Resolution::Route(Target::Avro(Arc::new(route))));
            }
            pipelines.push(spec);
        }
        Ok(Router {
            pipelines,
            routes: RwLock::new(routes),
            refused: 0.into(),
            registry,
            max_record_bytes: kafka.max_record_bytes,
            input_topics: topics,
            json_routes,
            json_schema_pipelines,
            proto_pipelines,
        })
    }

    /// The pipeline of a writer schema's full record name.
    pub fn pipeline_for(&self, record_name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.record_name == record_name)
    }

    /// The json-schema pipeline of a writer schema's `title`.
    pub fn json_schema_pipeline_for(&self, title: &str) -> Option<&JsonSchemaPipeline> {
        self.json_schema_pipelines
            .iter()
            .find(|p| p.contract.input.title == title)
    }

    /// The protobuf pipeline whose message is `name` (a full name, `comms.v1.CallEvent`).
    pub fn proto_pipeline_for(&self, name: &str) -> Option<&ProtoPipeline> {
        self.proto_pipelines
            .iter()
            .find(|p| p.contract.input.message.full_name() == name)
    }

    /// The protobuf pipelines, in config order.
    pub fn proto_pipelines(&self) -> &[ProtoPipeline] {
        &self.proto_pipelines
    }

    /// The schema id of a framed value that the registry must be asked about first: only with
    /// a registry, and only for an id not resolved yet.
    pub fn unresolved(&self, value: Option<&[u8]>) -> Option<u32> {
        if !self.registry {
            return None;
        }
        // A value that fails the framing checks is dead-lettered by `check`; nothing to ask.
        let (id, _) = self.framing(value).ok()?;
        let known = self.read_routes().contains_key(&id);
        (!known).then_some(id)
    }

    /// Remembers what the registry said of a schema id.
    pub fn insert(&self, id: u32, resolution: Resolution) {
        if let Resolution::Refused(_) = resolution {
            use std::sync::atomic::Ordering;
            if self.refused.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSED_IDS {
                return;
            }
        }
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, resolution);
    }

    fn read_routes(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Resolution>> {
        // A panic while holding the lock cannot leave the map half-written (insert is one call).
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of pipeline `index`.
    pub fn route_name(&self, index: usize) -> &str {
        if let Some(pipeline) = self.pipelines.iter().find(|p| p.index == index) {
            return &pipeline.name;
        }
        self.json_routes
            .values()
            .map(|r| &**r)
            .chain(self.json_schema_pipelines.iter().map(|p| &p.route))
            .chain(self.proto_pipelines.iter().map(|p| &p.route))
            .find(|r| r.index == index)
            .map_or("?", |r| r.name.as_str())
    }

    /// Whether a record that has no route carries a withheld subject in its key, read in each
    /// key class a pipeline names (erasure only: without a route there is no pipeline, so no
    /// consent to ask about).
    fn key_withholds(
        &self,
        engine: &Engine,
        keys: &ActiveKeys,
        view: &SubjectView<'_>,
        key: Option<&[u8]>,
    ) -> bool {
        let Some(key) = key else { return false };
        let gate = view.gate(SubjectPolicy::default());
        let avro = self
            .pipelines
            .iter()
            .map(|p| (p.key_class, p.configured.domain.as_deref()));
        let json = self
            .json_schema_pipelines
            .iter()
            .map(|p| &p.route)
            .chain(self.proto_pipelines.iter().map(|p| &p.route))
            .map(|r| (r.key_class, r.plan.domain.as_deref()));
        for (class, domain) in avro.chain(json) {
            let (Some(class), Some(pkey)) = (class, keys.pseudonym_in(domain)) else {
                continue;
            };
            key_token(pkey, class, key, None, engine.phone(), Some(&gate));
            if gate.met() {
                return true;
            }
        }
        false
    }

    /// The benchmark baseline: the same checks and routing, the value copied unchanged.
    pub fn pass_through(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<Output, DeadLetter> {
        let (route, _) = self.check(value)?;
        out.clear();
        out.extend_from_slice(value.unwrap_or_default());
        let key = key.map(|k| String::from_utf8_lossy(k).into_owned());
        Ok(Output {
            index: route.index(),
            route,
            key,
            withheld: false,
        })
    }

    /// [`Router::pass_through`] for a record read from `topic`: by its json pipeline where
    /// the topic has one.
    pub fn pass_through_on(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<Output, DeadLetter> {
        let Some(route) = self.json_routes.get(topic) else {
            return self.pass_through(key, value, out);
        };
        let value = self.json_value(value)?;
        out.clear();
        out.extend_from_slice(value);
        Ok(Output {
            index: route.index,
            route: Target::Json(route.clone()),
            key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            withheld: false,
        })
    }

    /// Whether records of `topic` are a json pipeline's.
    pub fn is_json_topic(&self, topic: &str) -> bool {
        self.json_routes.contains_key(topic)
    }

    /// [`Router::unresolved`] for a record read from `topic`: a json pipeline's records carry
    /// no schema id, so there is nothing to ask.
    pub fn unresolved_on(&self, topic: &str, value: Option<&[u8]>) -> Option<u32> {
        if self.is_json_topic(topic) {
            return None;
        }
        self.unresolved(value)
    }

    /// Size checks of a json pipeline's record.
    fn json_value<'v>(&self, value: Option<&'v [u8]>) -> Result<&'v [u8], DeadLetter> {
        let value = value.ok_or(DeadLetter::Empty)?;
        if value.len() > self.max_record_bytes {
            return Err(DeadLetter::Oversize);
        }
        Ok(value)
    }

    /// Transforms one record read from `topic`: by its json pipeline where the topic has one,
    /// else by the schema id it is framed with ([`Router::process_gated`]).
    #[allow(clippy::too_many_arguments)] // process_gated's, and the topic the record came from
    pub fn process_on(
        &self,
        topic: &str,
        engine: &Engine,
        keys: &ActiveKeys,
        subjects: Option<&SubjectView<'_>>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> (Result<Output, DeadLetter>, bool) {
        let Some(route) = self.json_routes.get(topic) else {
            return self.process_gated(engine, keys, subjects, key, value, out);
        };
        let value = self.json_value(value);
        self.process_json(route, engine, keys, subjects, key, value, out)
    }

    /// Transforms one JSON record's `value` (already unframed, or why it cannot be read) by
    /// `route`, with the Confluent header first where the route has an output schema id.
    #[allow(clippy::too_many_arguments)] // process_gated's, with the route it found
    fn process_json(
        &self,
        route: &Arc<JsonRoute>,
        engine: &Engine,
        keys: &ActiveKeys,
        subjects: Option<&SubjectView<'_>>,
        key: Option<&[u8]>,
        value: Result<&[u8], DeadLetter>,
        out: &mut Vec<u8>,
    ) -> (Result<Output, DeadLetter>, bool) {
        let gate = subjects.map(|view| view.gate(route.subject_policy));
        let met = || gate.as_ref().is_some_and(|g| g.met());
        let key_of = |regions: Option<rlibphonenumber::Region>| match (route.key_class, key) {
            (Some(class), Some(key)) => {
                keys.pseudonym_in(route.plan.domain.as_deref()).map(|pkey| {
                    Some(key_token(
                        pkey,
                        class,
                        key,
                        regions,
                        engine.phone(),
                        gate.as_ref(),
                    ))
                })
            }
            _ => Some(None),
        };
        let value = match value {
            Ok(value) => value,
            Err(reason) => {
                let _ = key_of(None);
                return (Err(reason), met());
            }
        };
        // A protobuf record's message-index list must name the pipeline's message.
        let (value, corrupt) = match &route.proto {
            None => (value, DeadLetter::CorruptJson),
            Some(contract) => match protobuf::read_indexes(value) {
                Some((indexes, message)) if indexes == contract.indexes => {
                    (message, DeadLetter::CorruptProtobuf)
                }
                _ => {
                    let _ = key_of(None);
                    return (Err(DeadLetter::CorruptProtobuf), met());
                }
            },
        };
        let header = |out: &mut Vec<u8>| {
            out.clear();
            if let Some(id) = route.output_schema_id {
                out.push(MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
            }
            if route.proto.is_some() {
                // The derived schema's one top-level message: index list [0].
                protobuf::write_indexes(&[0], out);
            }
        };
        let transform = |out: &mut Vec<u8>| match &route.proto {
            None => engine.transform_json(&route.plan, keys, gate.as_ref(), value, out),
            Some(contract) => engine.transform_protobuf(contract, keys, gate.as_ref(), value, out),
        };
        header(out);
        let regions = match transform(out) {
            Ok(regions) => regions,
            Err(error) => {
                let reason = if error.kind.is_unclassified() {
                    DeadLetter::UnclassifiedField
                } else {
                    corrupt
                };
                let _ = key_of(None);
                return (Err(reason), met());
            }
        };
        let met_in_value = met();
        let Some(key) = key_of(regions.first().copied()) else {
            return (Err(corrupt), met());
        };
        if met() && !met_in_value && route.plan.needs_encryption {
            // Withheld by the key alone, after the value was sealed: walk it again, now
            // withholding from the start (the gate has met the subject).
            header(out);
            if transform(out).is_err() {
                return (Err(corrupt), true);
            }
        }
        let withheld = met();
        (
            Ok(Output {
                index: route.index,
                route: Target::Json(route.clone()),
                key,
                withheld,
            }),
            withheld,
        )
    }

    /// Size and framing checks; the schema id and the Avro bytes.
    fn framing<'v>(&self, value: Option<&'v [u8]>) -> Result<(u32, &'v [u8]), DeadLetter> {
        let value = value.ok_or(DeadLetter::Empty)?;
        if value.len() > self.max_record_bytes {
            return Err(DeadLetter::Oversize);
        }
        unframe(value).ok_or(DeadLetter::BadMagic)
    }

    /// Size, framing and schema id checks; the route and the Avro bytes.
    fn check<'v>(&self, value: Option<&'v [u8]>) -> Result<(Target, &'v [u8]), DeadLetter> {
        let (schema_id, avro) = self.framing(value)?;
        match self.read_routes().get(&schema_id) {
            Some(Resolution::Route(route)) => Ok((route.clone(), avro)),
            Some(Resolution::Refused(reason)) => Err(*reason),
            None => Err(DeadLetter::UnknownSchema),
        }
    }

    /// Transforms one record's value into `out` (wire header included) and computes its key.
    pub fn process(
        &self,
        engine: &Engine,
        keys: &ActiveKeys,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<Output, DeadLetter> {
        self.process_gated(engine, keys, None, key, value, out).0
    }

    /// [`Router::process`] under the subject registry (`subjects`), and whether an identifier
    /// of a withheld subject was met, also in a record that is then dead-lettered.
    pub fn process_gated(
        &self,
        engine: &Engine,
        keys: &ActiveKeys,
        subjects: Option<&SubjectView<'_>>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> (Result<Output, DeadLetter>, bool) {
        let (route, avro) = match self.check(value) {
            Ok((Target::Avro(route), avro)) => (route, avro),
            Ok((Target::Json(route), json)) => {
                return self.process_json(&route, engine, keys, subjects, key, Ok(json), out)
            }
            Err(reason) => {
                // No route, so no rules: the record key is all there is to tell whose it is.
                let met = subjects.is_some_and(|view| self.key_withholds(engine, keys, view, key));
                return (Err(reason), met);
            }
        };
        let gate = subjects.map(|view| view.gate(route.subject_policy));
        let met = || gate.as_ref().is_some_and(|g| g.met());
        let header = |out: &mut Vec<u8>| {
            out.clear();
            out.push(MAGIC);
            out.extend_from_slice(&route.output_schema_id.to_be_bytes());
        };
        header(out);
        let transformed = match &gate {
            Some(gate) => engine.transform_gated(&route.plan, keys, gate, avro, out),
            None => engine.transform(&route.plan, keys, avro, out),
        };
        let key_of = |regions: Option<rlibphonenumber::Region>| match (route.key_class, key) {
            (Some(class), Some(key)) => {
                keys.pseudonym_in(route.plan.domain.as_deref()).map(|pkey| {
                    Some(key_token(
                        pkey,
                        class,
                        key,
                        regions,
                        engine.phone(),
                        gate.as_ref(),
                    ))
                })
            }
            _ => Some(None),
        };
        let regions = match transformed {
            Ok(regions) => regions,
            Err(_) => {
                // The key may still be a withheld person's: then the dead letter keeps nothing.
                let _ = key_of(None);
                return (Err(DeadLetter::CorruptAvro), met());
            }
        };
        let met_in_value = met();
        let Some(key) = key_of(regions.first().copied()) else {
            return (Err(DeadLetter::CorruptAvro), met());
        };
        if met() && !met_in_value && route.plan.needs_encryption {
            // Withheld by the key alone, after the value was sealed: walk it again, now
            // withholding from the start (the gate has met the subject).
            header(out);
            if let Some(gate) = &gate {
                if engine
                    .transform_gated(&route.plan, keys, gate, avro, out)
                    .is_err()
                {
                    return (Err(DeadLetter::CorruptAvro), true);
                }
            }
        }
        let withheld = met();
        (
            Ok(Output {
                index: route.index,
                route: Target::Avro(route),
                key,
                withheld,
            }),
            withheld,
        )
    }
}

/// The token of a record key (docs/formats.md, "Record keys"). A key that is UTF-8 text is
/// read like a field of its class; a phone key with the record's own region where its rules
/// name one (the first region field, by path), else the default. A key that is not UTF-8 is
/// tokenized from its bytes as they are, in its class's raw class (`phone-raw`, `ip-raw`; the
/// others unchanged): every canonical form of text is UTF-8, so such a key never shares a
/// token with a text key, and two different byte strings never share one either (before,
/// both went through a lossy conversion that made distinct keys one).
pub fn key_token(
    pkey: &crate::keys::PseudonymKey,
    class: TokenClass,
    key: &[u8],
    region: Option<rlibphonenumber::Region>,
    phone: &crate::phone::PhoneCanon,
    gate: Option<&SubjectGate<'_>>,
) -> String {
    let token = |class: TokenClass, canonical: &[u8]| match gate {
        Some(gate) => gate.token(pkey, class, canonical),
        None => token::token(pkey, class, canonical),
    };
    let Ok(text) = std::str::from_utf8(key) else {
        return token(class.unparsed(), key).as_str().to_owned();
    };
    let (class, canonical) = match (class, region) {
        (TokenClass::Phone, Some(region)) => phone.canonical_in(region, text),
        _ => token::canonical(class, text, phone),
    };
    token(class, canonical.as_bytes()).as_str().to_owned()
}

/// The schema id and the payload of a value in the Confluent wire format; `None` when it is
/// shorter than the 5-byte header or its magic byte is not 0. The inverse of [`frame`].
pub fn unframe(value: &[u8]) -> Option<(u32, &[u8])> {
    match value {
        [MAGIC, a, b, c, d, payload @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), payload)),
        _ => None,
    }
}

/// Frames Avro datum bytes in the Confluent wire format.
pub fn frame(schema_id: u32, avro: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + avro.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(avro);
    out
}
