//! From one raw record to what should be published: the sanitized record for its analytics
//! topic, or a dead-letter reason. Pure: no Kafka here, so it is tested alone.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::plan::Plan;
use crate::token::{self, TokenClass};
use crate::transform::{ActiveKeys, Engine};

/// Confluent wire format: magic byte 0, then a 4-byte big-endian schema id, then Avro.
pub const MAGIC: u8 = 0;

/// Why a record went to the dead-letter topic. The code is what the `reason` header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetter {
    /// Shorter than the 5-byte header, or the magic byte is not 0.
    BadMagic,
    /// No pipeline has this input schema id.
    UnknownSchema,
    /// The Avro did not decode or transform (truncated, corrupt, invalid UTF-8).
    CorruptAvro,
    /// Larger than `max_record_bytes`.
    Oversize,
    /// No value at all (tombstone).
    Empty,
}

impl DeadLetter {
    /// The `reason` header value.
    pub fn code(self) -> &'static str {
        match self {
            DeadLetter::BadMagic => "bad-magic",
            DeadLetter::UnknownSchema => "unknown-schema-id",
            DeadLetter::CorruptAvro => "corrupt-avro",
            DeadLetter::Oversize => "oversize",
            DeadLetter::Empty => "empty",
        }
    }
}

/// One pipeline as the worker runs it.
#[derive(Debug)]
pub struct Route {
    /// Position of the pipeline in the config.
    pub index: usize,
    pub plan: Arc<Plan>,
    pub name: String,
    pub output_topic: String,
    pub output_schema_id: u32,
    pub key_class: Option<TokenClass>,
}

/// Input schema id → route.
#[derive(Debug)]
pub struct Router {
    routes: HashMap<u32, Route>,
    names: Vec<String>,
    max_record_bytes: usize,
    pub input_topics: Vec<String>,
}

/// A sanitized record ready to publish.
pub struct Output<'r> {
    pub route: &'r Route,
    /// The route's pipeline index.
    pub index: usize,
    pub key: Option<String>,
}

impl Router {
    /// Builds the routes from the config, checking every stream setting.
    pub fn from_config(config: &Config, engine: &Engine) -> Result<Self, ConfigError> {
        let kafka = config
            .kafka
            .as_ref()
            .ok_or_else(|| ConfigError::Rules(vec!["[kafka] section is missing".to_owned()]))?;
        let mut routes = HashMap::new();
        let mut topics = Vec::new();
        let mut errors = Vec::new();
        let names = config.pipeline.iter().map(|p| p.name.clone()).collect();
        for (index, (pipeline, plan)) in config.pipeline.iter().zip(engine.plans()).enumerate() {
            let missing = |what: &str| {
                format!(
                    "[{}] {what} is required by the stream worker",
                    pipeline.name
                )
            };
            let (Some(input_topic), Some(output_topic), Some(input_id), Some(output_id)) = (
                &pipeline.input_topic,
                &pipeline.output_topic,
                pipeline.input_schema_id,
                pipeline.output_schema_id,
            ) else {
                errors.push(missing(
                    "input_topic, output_topic, input_schema_id and output_schema_id",
                ));
                continue;
            };
            let key_class = match pipeline.key_class.as_deref() {
                None => None,
                Some(name) => match TokenClass::parse(name) {
                    Some(
                        c @ (TokenClass::Phone
                        | TokenClass::Ip
                        | TokenClass::Email
                        | TokenClass::Id),
                    ) => Some(c),
                    _ => {
                        errors.push(format!(
                            "[{}] key_class {name:?} is not phone, ip, email or id",
                            pipeline.name
                        ));
                        None
                    }
                },
            };
            if !topics.contains(input_topic) {
                topics.push(input_topic.clone());
            }
            if output_topic == input_topic || *output_topic == kafka.dlq_topic {
                errors.push(format!(
                    "[{}] output_topic must differ from input and dead-letter topics",
                    pipeline.name
                ));
            }
            let route = Route {
                index,
                plan: plan.clone(),
                name: pipeline.name.clone(),
                output_topic: output_topic.clone(),
                output_schema_id: output_id,
                key_class,
            };
            if routes.insert(input_id, route).is_some() {
                errors.push(format!(
                    "[{}] input_schema_id {input_id} is used by two pipelines",
                    pipeline.name
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError::Rules(errors));
        }
        Ok(Router {
            routes,
            names,
            max_record_bytes: kafka.max_record_bytes,
            input_topics: topics,
        })
    }

    /// The name of pipeline `index`.
    pub fn route_name(&self, index: usize) -> &str {
        self.names.get(index).map_or("?", String::as_str)
    }

    /// The benchmark baseline: the same checks and routing, the value copied unchanged.
    pub fn pass_through<'r>(
        &'r self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<Output<'r>, DeadLetter> {
        let (route, _) = self.check(value)?;
        out.clear();
        out.extend_from_slice(value.unwrap_or_default());
        let key = key.map(|k| String::from_utf8_lossy(k).into_owned());
        Ok(Output {
            route,
            index: route.index,
            key,
        })
    }

    /// Size, framing and schema id checks; the route and the Avro bytes.
    fn check<'r, 'v>(
        &'r self,
        value: Option<&'v [u8]>,
    ) -> Result<(&'r Route, &'v [u8]), DeadLetter> {
        let value = value.ok_or(DeadLetter::Empty)?;
        if value.len() > self.max_record_bytes {
            return Err(DeadLetter::Oversize);
        }
        if value.len() < 5 || value[0] != MAGIC {
            return Err(DeadLetter::BadMagic);
        }
        let schema_id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        let route = self
            .routes
            .get(&schema_id)
            .ok_or(DeadLetter::UnknownSchema)?;
        Ok((route, &value[5..]))
    }

    /// Every route (for metrics and logs).
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }

    /// Transforms one record's value into `out` (wire header included) and computes its key.
    pub fn process<'r>(
        &'r self,
        engine: &Engine,
        keys: &ActiveKeys,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<Output<'r>, DeadLetter> {
        let (route, avro) = self.check(value)?;
        out.clear();
        out.push(MAGIC);
        out.extend_from_slice(&route.output_schema_id.to_be_bytes());
        let regions = engine
            .transform(&route.plan, keys, avro, out)
            .map_err(|_| DeadLetter::CorruptAvro)?;
        let key = match (route.key_class, key) {
            (Some(class), Some(key)) => {
                let text = String::from_utf8_lossy(key);
                let pkey = keys.pseudonym.as_deref().ok_or(DeadLetter::CorruptAvro)?;
                // A phone key is read like the phone fields: with the record's own region
                // where its rules name one (the first region field, by path), else the default.
                let (class, canonical) = match (class, regions.first()) {
                    (TokenClass::Phone, Some(&region)) => {
                        engine.phone().canonical_in(region, &text)
                    }
                    _ => token::canonical(class, &text, engine.phone()),
                };
                Some(
                    token::token(pkey, class, canonical.as_bytes())
                        .as_str()
                        .to_owned(),
                )
            }
            _ => None,
        };
        Ok(Output {
            route,
            index: route.index,
            key,
        })
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
