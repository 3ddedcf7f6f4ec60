//! The per-event transform: Avro bytes in, sanitized Avro bytes out, no I/O.
//!
//! [`Engine`] holds the compiled [`Plan`] of every configured input schema and the phone
//! canonicalizer; [`ActiveKeys`] holds the keys new output is made with. Both are immutable and
//! shared, so any number of threads can transform at once.
//!
//! Two implementations of the same function:
//! - [`Engine::transform`] (module `fast`) walks the Avro binary with the plan, copying runs of
//!   kept fields straight into the output buffer and rewriting only classified fields;
//! - [`Engine::transform_reference`] (module `reference`) decodes to apache-avro's `Value`,
//!   rewrites it by the rules, and encodes. It is the baseline for tests and benchmarks.

mod binary;
mod fast;
mod json;
mod leaf;
pub mod protobuf;
mod reference;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::keys::{KeySet, KeyringError, PseudonymKey, SealKey, SubjectKey};
use crate::phone::PhoneCanon;
use crate::plan::json::JsonPlan;
use crate::plan::json_schema::JsonSchemaContract;
use crate::plan::protobuf::ProtoContract;
use crate::plan::{self, Plan};
use crate::rules::Rules;
use crate::subjects::SubjectGate;

pub use binary::{write_bytes, write_long, Cursor};
pub use fast::{locate_span, locate_step};
pub use leaf::pseudonymize;

/// What went wrong inside one event. Plain and small: it is returned on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("the data ends early (truncated or corrupt Avro)")]
    Truncated,
    #[error("a varint is malformed")]
    BadVarint,
    #[error("a length is negative")]
    NegativeLength,
    #[error("a union branch index is out of range")]
    BadUnion,
    #[error("an array or map block's byte size does not match its items")]
    BlockSize,
    #[error("a value is outside its type (enum symbol index, boolean byte, 32-bit int)")]
    OutOfRange,
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    #[error("bytes are left after the end of the record")]
    TrailingBytes,
    #[error("no active pseudonym key")]
    NoPseudonymKey,
    #[error("no active encryption key")]
    NoEncryptionKey,
    #[error("the value does not match the schema")]
    SchemaMismatch,
    #[error("a time too near its type's minimum to truncate (the result would leave the type)")]
    CannotTruncate,
    #[error("not a JSON object (malformed JSON, or not an object where one belongs)")]
    NotJsonObject,
    #[error("a key appears twice in one object")]
    DuplicateKey,
    #[error("a key that no rule names (its name is not shown: a key may itself be personal data)")]
    UnnamedKey,
    #[error("the value's JSON type does not fit its rule (an object where a leaf rule stands, or a type the action does not take)")]
    DoesNotFitRule,
    #[error("not a whole number (time-truncate and bucket take integers: no fraction, no exponent, within 64 bits)")]
    NotAnInteger,
    #[error("not a Protobuf message of its schema (malformed, or a value its JSON mapping cannot write)")]
    NotProtobuf,
    #[error("a Protobuf field number its schema does not have")]
    UnknownFieldNumber,
    #[error("the sanitized record does not fit the derived Protobuf schema")]
    DoesNotFitOutput,
}

impl ErrorKind {
    /// Whether the rules, not the record, are what is missing: a key without a rule, or a
    /// value of a type its rule does not take (`unclassified-field`, curable by a config).
    pub fn is_unclassified(self) -> bool {
        matches!(
            self,
            ErrorKind::UnnamedKey | ErrorKind::DoesNotFitRule | ErrorKind::NotAnInteger
        )
    }
}

/// A failed event: the field path where it failed and why. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{path}`: {kind}")]
pub struct TransformError {
    pub path: Box<str>,
    pub kind: ErrorKind,
}

impl TransformError {
    pub(crate) fn at(path: &str, kind: ErrorKind) -> Self {
        TransformError {
            path: path.into(),
            kind,
        }
    }
}

/// The phone regions a record names in its region fields, by [`Plan::regions`] index (empty
/// when its rules name none; then nothing is allocated).
pub type Regions = Vec<rlibphonenumber::Region>;

/// The keys new output is made with: the active key of each purpose the rules use, and the
/// active pseudonym key's working keys in every pseudonymisation domain a pipeline names.
#[derive(Debug, Clone)]
pub struct ActiveKeys {
    pub pseudonym: Option<Arc<PseudonymKey>>,
    pub encryption: Option<Arc<SealKey>>,
    pub domains: Vec<Arc<PseudonymKey>>,
    /// The subject key (subject ids for the subject registry), where the keyring has one.
    pub subject: Option<Arc<SubjectKey>>,
}

impl ActiveKeys {
    /// Keys without named domains.
    pub fn new(pseudonym: Option<Arc<PseudonymKey>>, encryption: Option<Arc<SealKey>>) -> Self {
        ActiveKeys {
            pseudonym,
            encryption,
            domains: Vec::new(),
            subject: None,
        }
    }

    /// The active pseudonym key in `domain` (`None`: the default domain).
    pub fn pseudonym_in(&self, domain: Option<&str>) -> Option<&PseudonymKey> {
        match domain {
            None => self.pseudonym.as_deref(),
            Some(name) => self
                .domains
                .iter()
                .find(|k| k.domain() == Some(name))
                .map(|k| &**k),
        }
    }
}

/// Everything one configuration needs to transform events.
#[derive(Debug)]
pub struct Engine {
    plans: Vec<Arc<Plan>>,
    by_name: HashMap<String, usize>,
    phone: PhoneCanon,
    /// The config names a subject registry: the worker loads the subject key, else not.
    subject_registry: bool,
    /// The `[geoip]` database, where the config names one.
    country_db: Option<Arc<crate::geoip::CountryDb>>,
    /// The `format = "json"` pipelines' plans, with each pipeline's position in the config
    /// (`plans` holds the Avro ones, in config order).
    json: Vec<(usize, Arc<JsonPlan>)>,
    /// The `format = "json-schema"` pipelines' configured and derived schemas, by position.
    json_schemas: Vec<(usize, Arc<JsonSchemaContract>)>,
    /// The `format = "protobuf"` pipelines' configured and derived messages, by position.
    protos: Vec<(usize, Arc<ProtoContract>)>,
}

impl Engine {
    /// Loads every pipeline's schema and compiles its rules; all rule errors are reported at once.
    /// With a schema registry, a rule naming no field of the local schema is allowed (another
    /// version of the record may have that field) and logged as a warning.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let unused = match config.registry {
            Some(_) => plan::UnusedRules::Allow,
            None => plan::UnusedRules::Refuse,
        };
        let phone = PhoneCanon::new(&config.phone.default_region)?;
        let country_db = match &config.geoip {
            Some(geoip) => Some(Arc::new(crate::geoip::CountryDb::open(&geoip.database)?)),
            None => None,
        };
        let mut plans = Vec::new();
        let mut json = Vec::new();
        let mut contracts: Vec<(usize, Arc<JsonSchemaContract>)> = Vec::new();
        let mut protos: Vec<(usize, Arc<ProtoContract>)> = Vec::new();
        let mut errors = Vec::new();
        for (index, pipeline) in config.pipeline.iter().enumerate() {
            if pipeline.format.is_json() {
                let tag = |e: String| format!("[{}] {e}", pipeline.name);
                let (rules, spec_errors) = Rules::from_specs(&pipeline.rules);
                let rules = rules.with_country_db(country_db.clone());
                errors.extend(spec_errors.into_iter().map(tag));
                if let Some(domain) = &pipeline.domain {
                    if let Err(why) = crate::keys::check_domain(domain) {
                        errors.push(tag(why));
                    }
                }
                match JsonPlan::compile(
                    &pipeline.name,
                    &rules,
                    pipeline.unknown.unwrap_or_default(),
                    pipeline.domain.clone(),
                ) {
                    Ok(plan) => {
                        if let Some(risk) = &pipeline.risk {
                            errors.extend(
                                crate::risk::problems_json(risk, &plan).into_iter().map(tag),
                            );
                        }
                        if pipeline.format == crate::config::Format::JsonSchema {
                            match JsonSchemaContract::read(&pipeline.input_schema, &plan, unused) {
                                Ok(contract) => {
                                    let title = &contract.input.title;
                                    if contracts.iter().any(|(_, c)| c.input.title == *title) {
                                        errors.push(tag(format!(
                                            "input_schema's title {} is also another json-schema pipeline's: one title routes to one pipeline",
                                            crate::config::quote(title)
                                        )));
                                    }
                                    let output = contract.input.output_title();
                                    if contracts.iter().any(|(_, c)| {
                                        c.input.output_title() == output
                                            && c.output != contract.output
                                    }) {
                                        // One output title, one derived file and one subject.
                                        errors.push(tag(format!(
                                            "its output schema's title {} is also another json-schema pipeline's, derived differently: one title, one schema (the derived file and the subject would be shared)",
                                            crate::config::quote(&output)
                                        )));
                                    }
                                    contracts.push((index, Arc::new(contract)));
                                }
                                Err(errs) => errors.extend(errs.into_iter().map(tag)),
                            }
                        }
                        if pipeline.format == crate::config::Format::Protobuf {
                            match ProtoContract::read(
                                &pipeline.input_schema,
                                pipeline.message.as_deref(),
                                &plan,
                                unused,
                            ) {
                                Ok(contract) => {
                                    let name = contract.input.message.full_name();
                                    if protos.iter().any(|(_, c)| {
                                        c.output_name() == contract.output_name()
                                            && c.output_text != contract.output_text
                                    }) {
                                        // One output name, one subject and one file.
                                        errors.push(tag(format!(
                                            "its output message {} is also another protobuf pipeline's, derived differently: one name, one schema (the derived file and, by record name, the subject would be shared)",
                                            crate::config::quote(contract.output_name())
                                        )));
                                    }
                                    if protos
                                        .iter()
                                        .any(|(_, c)| c.input.message.full_name() == name)
                                    {
                                        errors.push(tag(format!(
                                            "message {} is also another protobuf pipeline's: one message routes to one pipeline",
                                            crate::config::quote(name)
                                        )));
                                    }
                                    protos.push((index, Arc::new(contract)));
                                }
                                Err(errs) => errors.extend(errs.into_iter().map(tag)),
                            }
                        }
                        json.push((index, Arc::new(plan)))
                    }
                    Err(errs) => errors.extend(errs.into_iter().map(tag)),
                }
                continue;
            }
            // Bounded, regular files only, and a parser panic caught (config.rs).
            let schema = crate::config::read_schema(&pipeline.input_schema)?;
            let (rules, spec_errors) = Rules::from_specs(&pipeline.rules);
            let rules = rules.with_country_db(country_db.clone());
            let tag = |e: String| format!("[{}] {e}", pipeline.name);
            errors.extend(spec_errors.into_iter().map(tag));
            if let Some(domain) = &pipeline.domain {
                if let Err(why) = crate::keys::check_domain(domain) {
                    errors.push(tag(why));
                }
            }
            match plan::compile_with(&schema, &rules, unused) {
                Ok(mut plan) => {
                    plan.domain = pipeline.domain.clone();
                    if let Some(risk) = &pipeline.risk {
                        errors.extend(crate::risk::problems(risk, &plan).into_iter().map(tag));
                    }
                    let output = plan.output_name();
                    if plans.iter().any(|p: &Plan| {
                        p.output_name() == output && p.output_json != plan.output_json
                    }) {
                        // One output name, one derived file and, by record name, one subject.
                        errors.push(tag(format!(
                            "its output record {} is also another Avro pipeline's, derived differently: one name, one schema (the derived file and, by record name, the subject would be shared)",
                            crate::config::quote(&output)
                        )));
                    }
                    for path in &plan.unused_rules {
                        tracing::warn!(pipeline = %pipeline.name, rule = %path, schema = %pipeline.input_schema.display(), "a rule names no field of the local schema (allowed with a registry: another version may have it)");
                    }
                    plans.push(plan)
                }
                Err(errs) => errors.extend(errs.into_iter().map(tag)),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError::Rules(errors));
        }
        let mut engine = Engine::new(plans, phone)?;
        engine.country_db = country_db;
        engine.json = json;
        engine.json_schemas = contracts;
        engine.protos = protos;
        engine.subject_registry = config
            .kafka
            .as_ref()
            .is_some_and(|k| k.subjects_topic.is_some());
        Ok(engine)
    }

    /// Whether the config names a subject registry (so the worker needs the subject key).
    pub fn needs_subject_key(&self) -> bool {
        self.subject_registry
    }

    /// An engine from already compiled plans.
    pub fn new(plans: Vec<Plan>, phone: PhoneCanon) -> Result<Self, ConfigError> {
        let mut by_name = HashMap::new();
        for (i, plan) in plans.iter().enumerate() {
            if by_name.insert(plan.input_name.clone(), i).is_some() {
                return Err(ConfigError::DuplicateSchema(plan.input_name.clone()));
            }
        }
        Ok(Engine {
            plans: plans.into_iter().map(Arc::new).collect(),
            by_name,
            phone,
            subject_registry: false,
            country_db: None,
            json: Vec::new(),
            json_schemas: Vec::new(),
            protos: Vec::new(),
        })
    }

    /// The `format = "json"` pipelines' plans, each with its pipeline's position in the config.
    pub fn json_plans(&self) -> &[(usize, Arc<JsonPlan>)] {
        &self.json
    }

    /// The configured and derived schemas of the json-schema pipeline at `index` in the config.
    pub fn json_schema(&self, index: usize) -> Option<&Arc<JsonSchemaContract>> {
        self.json_schemas
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| c)
    }

    /// The configured and derived messages of the protobuf pipeline at `index` in the config.
    pub fn proto(&self, index: usize) -> Option<&Arc<ProtoContract>> {
        self.protos
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| c)
    }

    /// The plan of the json pipeline at `index` in the config.
    pub fn json_plan(&self, index: usize) -> Option<&Arc<JsonPlan>> {
        self.json.iter().find(|(i, _)| *i == index).map(|(_, p)| p)
    }

    /// The `[geoip]` database IP rules derive countries from, where the config names one.
    pub fn country_db(&self) -> Option<&Arc<crate::geoip::CountryDb>> {
        self.country_db.as_ref()
    }

    /// The plan for a writer schema's full name (`comms.v1.CallEvent`).
    pub fn plan(&self, input_name: &str) -> Option<&Arc<Plan>> {
        self.by_name.get(input_name).map(|&i| &self.plans[i])
    }

    /// Every plan, in config order.
    pub fn plans(&self) -> &[Arc<Plan>] {
        &self.plans
    }

    /// The phone canonicalizer (for `lookup`).
    pub fn phone(&self) -> &PhoneCanon {
        &self.phone
    }

    /// The active keys, checking that every purpose some rule uses has one.
    pub fn active_keys(&self, keys: &KeySet) -> Result<ActiveKeys, KeyringError> {
        let json = self.json.iter().map(|(_, p)| p);
        let needs_pseudonym =
            self.plans.iter().any(|p| p.needs_pseudonym) || json.clone().any(|p| p.needs_pseudonym);
        let needs_encryption = self.plans.iter().any(|p| p.needs_encryption)
            || json.clone().any(|p| p.needs_encryption);
        let domains_named = self
            .plans
            .iter()
            .filter_map(|p| p.domain.as_deref())
            .chain(json.filter_map(|p| p.domain.as_deref()));
        let pseudonym = if needs_pseudonym {
            Some(keys.pseudonym()?.clone())
        } else {
            keys.pseudonym().ok().cloned()
        };
        let mut domains: Vec<Arc<PseudonymKey>> = Vec::new();
        if let Some(key) = &pseudonym {
            for domain in domains_named {
                if !domains.iter().any(|k| k.domain() == Some(domain)) {
                    domains.push(Arc::new(key.in_domain(domain)));
                }
            }
        }
        Ok(ActiveKeys {
            pseudonym,
            encryption: if needs_encryption {
                Some(keys.encryption()?.clone())
            } else {
                keys.encryption().ok().cloned()
            },
            domains,
            subject: keys.subject().ok().cloned(),
        })
    }

    /// The fast path: transforms one event's Avro binary, appending the output to `out`.
    /// On error `out` may hold a partial event; callers clear it before reuse. Returns the
    /// phone regions the record named (for its key).
    pub fn transform(
        &self,
        plan: &Plan,
        keys: &ActiveKeys,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Regions, TransformError> {
        fast::transform(plan, &self.phone, keys, None, input, out)
    }

    /// [`Engine::transform`] with the subject registry's gate: each identifier of a subject
    /// class whose person is withheld from this pipeline gets an unlinked token, and when one
    /// did, the record's sealed fields are written empty (docs/formats.md §5). Whether a
    /// withheld subject was met, even in a record that then failed, is in
    /// [`SubjectGate::met`].
    pub fn transform_gated(
        &self,
        plan: &Plan,
        keys: &ActiveKeys,
        gate: &SubjectGate<'_>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Regions, TransformError> {
        fast::transform(plan, &self.phone, keys, Some(gate), input, out)
    }

    /// Transforms one schemaless JSON record (`format = "json"`), appending the sanitized
    /// object to `out`, under the subject registry's `gate` where there is one. Returns the
    /// phone regions the record named (for its key).
    pub fn transform_json(
        &self,
        plan: &JsonPlan,
        keys: &ActiveKeys,
        gate: Option<&SubjectGate<'_>>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Regions, TransformError> {
        json::transform(plan, &self.phone, keys, gate, input, out)
    }

    /// Transforms one Protobuf message (`format = "protobuf"`, unframed) of `contract`'s input
    /// message, appending the sanitized message of its output to `out`: through the message's
    /// JSON mapping and the JSON walk ([`protobuf`]). Returns the regions, as
    /// [`Engine::transform_json`].
    pub fn transform_protobuf(
        &self,
        contract: &ProtoContract,
        keys: &ActiveKeys,
        gate: Option<&SubjectGate<'_>>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Regions, TransformError> {
        let mut raw = Vec::with_capacity(input.len() * 2);
        protobuf::to_json(&contract.input.message, input, &mut raw)?;
        let mut walked = Vec::with_capacity(raw.len() * 2);
        let regions = json::transform(&contract.plan, &self.phone, keys, gate, &raw, &mut walked)?;
        protobuf::from_json(&contract.output, &walked, out)?;
        Ok(regions)
    }

    /// [`Engine::transform_protobuf`] for a message written as a JSON line (protobuf's JSON
    /// mapping; file mode): the line read as a message of the input (so checked against its
    /// schema), walked, and checked against the derived message; the walked JSON is appended.
    pub fn transform_protobuf_line(
        &self,
        contract: &ProtoContract,
        keys: &ActiveKeys,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Regions, TransformError> {
        let mut raw = Vec::with_capacity(line.len() * 2);
        protobuf::line_to_json(&contract.input.message, line, &mut raw)?;
        let start = out.len();
        let regions = json::transform(&contract.plan, &self.phone, keys, None, &raw, out)?;
        protobuf::from_json(&contract.output, &out[start..], &mut Vec::new())?;
        Ok(regions)
    }

    /// The reference path through apache-avro `Value`s (tests and benchmark baseline).
    pub fn transform_reference(
        &self,
        plan: &Plan,
        keys: &ActiveKeys,
        input: &[u8],
    ) -> Result<Vec<u8>, TransformError> {
        reference::transform(plan, &self.phone, keys, input)
    }
}
