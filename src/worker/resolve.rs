//! A schema id seen for the first time, with a schema registry: fetch the writer schema,
//! compile its pipeline's rules against it, register the derived output schema, and tell the
//! router.
//!
//! Every definite outcome is remembered for the process's life (registry ids are immutable):
//! a route, or the dead-letter reason of every record with that id. Only "the registry did not
//! answer" is not an outcome: the worker waits and asks again, with backoff, and never
//! dead-letters a record for it (the `at_least_once` loop holds the record, stores no offset
//! past it, and turns `/readyz` to 503 meanwhile).

use std::collections::BTreeMap;
use std::sync::Arc;

use apache_avro::Schema;

use super::route::{DeadLetter, JsonRoute, Resolution, Route, Router, Target};
use crate::config::SubjectStrategy;
use crate::metrics::Metrics;
use crate::plan::json_schema::{self, WriterSchema};
use crate::plan::protobuf::{self, WriterProto};
use crate::plan::UnusedRules;
use crate::registry::{codes, RegistryClient, RegistryError};

/// Resolves new schema ids through the registry.
#[derive(Debug)]
pub struct SchemaResolver {
    pub client: RegistryClient,
    pub strategy: SubjectStrategy,
}

impl SchemaResolver {
    /// What to do with records of schema `id`. Blocking (HTTP); `Err` only when the registry
    /// could not be reached, which the caller retries.
    pub fn resolve(
        &self,
        router: &Router,
        metrics: &Metrics,
        id: u32,
    ) -> Result<Resolution, RegistryError> {
        let resolution = self.resolve_once(router, metrics, id)?;
        let result = match &resolution {
            Resolution::Route(_) => "route",
            Resolution::Refused(reason) => reason.code(),
        };
        metrics
            .schema_ids_resolved
            .with_label_values(&[result])
            .inc();
        Ok(resolution)
    }

    fn resolve_once(
        &self,
        router: &Router,
        metrics: &Metrics,
        id: u32,
    ) -> Result<Resolution, RegistryError> {
        let refuse = |reason: DeadLetter, why: &str| refused(id, reason, why);
        let writer = match self.writer_schema(id)? {
            Ok(Writer::Avro(writer)) => writer,
            Ok(Writer::Json(writer)) => return self.resolve_json(router, metrics, id, writer),
            Ok(Writer::Protobuf(pool)) => return self.resolve_protobuf(router, metrics, id, &pool),
            Err((reason, why)) => return Ok(refuse(reason, &why)),
        };
        let Schema::Record(record) = &writer else {
            return Ok(refuse(
                DeadLetter::BadSchema,
                "the top level is not a record",
            ));
        };
        let record_name = record.name.fullname(None);
        let Some(pipeline) = router.pipeline_for(&record_name) else {
            return Ok(refuse(
                DeadLetter::UnknownSchema,
                &format!("no pipeline reads {record_name}"),
            ));
        };
        let plan = match pipeline.configured.for_writer(&writer, UnusedRules::Allow) {
            Ok(plan) => plan,
            Err(problems) => {
                report_unclassified(metrics, id, &pipeline.name, &record_name, &problems);
                return Ok(Resolution::Refused(DeadLetter::UnclassifiedField));
            }
        };
        let output_name = match &plan.output {
            Schema::Record(r) => r.name.fullname(None),
            _ => record_name.clone(),
        };
        let subject = self.strategy.subject(&pipeline.output_topic, &output_name);
        let output_id =
            match self.register_output(&subject, &plan.output_json.to_string(), "AVRO")? {
                Ok(output_id) => output_id,
                Err(why) => return Ok(refuse(DeadLetter::OutputSchemaRefused, &why)),
            };
        tracing::info!(
            schema_id = id,
            pipeline = %pipeline.name,
            record = %record_name,
            %subject,
            output_schema_id = output_id,
            "new writer schema version compiled; derived schema registered"
        );
        Ok(Resolution::Route(Target::Avro(Arc::new(Route::new(
            pipeline, plan, output_id,
        )))))
    }

    /// [`SchemaResolver::resolve_once`] for a registry `JSON` schema: its json-schema pipeline
    /// by title, its properties checked against the rules, the derived schema registered.
    fn resolve_json(
        &self,
        router: &Router,
        metrics: &Metrics,
        id: u32,
        writer: WriterSchema,
    ) -> Result<Resolution, RegistryError> {
        let Some(pipeline) = router.json_schema_pipeline_for(&writer.title) else {
            tracing::error!(
                schema_id = id,
                reason = DeadLetter::UnknownSchema.code(),
                "records of this schema id are dead-lettered: no json-schema pipeline has its title"
            );
            return Ok(Resolution::Refused(DeadLetter::UnknownSchema));
        };
        let route = &pipeline.route;
        let output = match json_schema::derive(&route.plan, &writer, UnusedRules::Allow) {
            Ok(output) => output,
            Err(problems) => {
                report_unclassified(metrics, id, &route.name, &writer.title, &problems);
                return Ok(Resolution::Refused(DeadLetter::UnclassifiedField));
            }
        };
        let subject = self
            .strategy
            .subject(&route.output_topic, &writer.output_title());
        let output_id = match self.register_output(&subject, &output.to_string(), "JSON")? {
            Ok(output_id) => output_id,
            Err(why) => return Ok(refused(id, DeadLetter::OutputSchemaRefused, &why)),
        };
        tracing::info!(
            schema_id = id,
            pipeline = %route.name,
            title = %writer.title,
            %subject,
            output_schema_id = output_id,
            "new JSON Schema version checked; derived schema registered"
        );
        Ok(Resolution::Route(Target::Json(Arc::new(JsonRoute {
            output_schema_id: Some(output_id),
            proto: None,
            schema_name: Some(writer.title.as_str().into()),
            ..route.clone()
        }))))
    }

    /// [`SchemaResolver::resolve_once`] for a registry `PROTOBUF` schema: the protobuf pipeline
    /// whose message it defines, that message checked against the rules, the derived `.proto`
    /// registered.
    fn resolve_protobuf(
        &self,
        router: &Router,
        metrics: &Metrics,
        id: u32,
        pool: &prost_reflect::DescriptorPool,
    ) -> Result<Resolution, RegistryError> {
        let found = router.proto_pipelines().iter().find_map(|pipeline| {
            let name = pipeline.contract.input.message.full_name();
            WriterProto::in_pool(pool, name)
                .ok()
                .map(|writer| (pipeline, writer))
        });
        let Some((pipeline, writer)) = found else {
            tracing::error!(
                schema_id = id,
                reason = DeadLetter::UnknownSchema.code(),
                messages = %WriterProto::message_names(pool).join(", "),
                "records of this schema id are dead-lettered: no protobuf pipeline reads a message it defines"
            );
            return Ok(Resolution::Refused(DeadLetter::UnknownSchema));
        };
        let route = &pipeline.route;
        let message = writer.message.full_name().to_owned();
        let contract = match protobuf::derive(&route.plan, writer, UnusedRules::Allow) {
            Ok(contract) => contract,
            Err(problems) => {
                report_unclassified(metrics, id, &route.name, &message, &problems);
                return Ok(Resolution::Refused(DeadLetter::UnclassifiedField));
            }
        };
        let subject = self
            .strategy
            .subject(&route.output_topic, contract.output_name());
        let output_id = match self.register_output(&subject, &contract.output_text, "PROTOBUF")? {
            Ok(output_id) => output_id,
            Err(why) => return Ok(refused(id, DeadLetter::OutputSchemaRefused, &why)),
        };
        tracing::info!(
            schema_id = id,
            pipeline = %route.name,
            %message,
            %subject,
            output_schema_id = output_id,
            "new Protobuf schema version checked; derived schema registered"
        );
        Ok(Resolution::Route(Target::Json(Arc::new(JsonRoute {
            output_schema_id: Some(output_id),
            proto: Some(Arc::new(contract)),
            schema_name: Some(message.as_str().into()),
            ..route.clone()
        }))))
    }

    /// The files a Protobuf schema imports through its references (and theirs), by the name
    /// each is imported by; `Ok(Err)` when one is missing or there are too many.
    fn imports(
        &self,
        references: &[(String, String, i64)],
    ) -> Result<Result<BTreeMap<String, String>, String>, RegistryError> {
        let mut files = BTreeMap::new();
        let mut pending: Vec<(String, String, i64)> = references.to_vec();
        while let Some((name, subject, version)) = pending.pop() {
            if files.contains_key(&name) {
                continue;
            }
            if files.len() >= MAX_IMPORTS {
                return Ok(Err(format!("it imports more than {MAX_IMPORTS} files")));
            }
            let fetched = match self.client.version(&subject, version) {
                Ok(fetched) => fetched,
                Err(e @ (RegistryError::Unavailable(_) | RegistryError::Setup(_))) => {
                    return Err(e)
                }
                Err(e) => return Ok(Err(format!("its reference {name}: {e}"))),
            };
            pending.extend(fetched.references.iter().cloned());
            files.insert(name, fetched.schema);
        }
        Ok(Ok(files))
    }

    /// Registers a derived schema: its id, or why the registry refused it (`Err` when the
    /// registry could not be reached).
    fn register_output(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<Result<u32, String>, RegistryError> {
        match self.client.register_as(subject, schema, schema_type) {
            Ok(output_id) => Ok(Ok(output_id)),
            Err(e @ (RegistryError::Unavailable(_) | RegistryError::Setup(_))) => Err(e),
            Err(e) => Ok(Err(format!(
                "registering the derived schema under {subject}: {e}"
            ))),
        }
    }

    /// The writer schema of `id`, parsed; or why its records are dead-lettered. `Err` when the
    /// registry could not be reached.
    fn writer_schema(
        &self,
        id: u32,
    ) -> Result<Result<Writer, (DeadLetter, String)>, RegistryError> {
        let fetched = match self.client.schema_by_id(id) {
            Ok(schema) => schema,
            Err(e @ (RegistryError::Unavailable(_) | RegistryError::Setup(_))) => return Err(e),
            Err(e) if e.code() == Some(codes::SCHEMA_NOT_FOUND) => {
                return Ok(Err((
                    DeadLetter::UnknownSchema,
                    "the registry has no schema with this id (40403)".to_owned(),
                )))
            }
            Err(e) => return Ok(Err((DeadLetter::BadSchema, e.to_string()))),
        };
        if fetched.schema_type == "PROTOBUF" {
            let imports = match self.imports(&fetched.references)? {
                Ok(imports) => imports,
                Err(why) => return Ok(Err((DeadLetter::BadSchema, why))),
            };
            return Ok(WriterProto::from_registry(&fetched.schema, imports)
                .map(Writer::Protobuf)
                .map_err(|why| (DeadLetter::BadSchema, format!("a Protobuf schema: {why}"))));
        }
        Ok(if fetched.has_references {
            Err((
                DeadLetter::BadSchema,
                "the schema refers to other subjects' schemas, which this worker does not read"
                    .to_owned(),
            ))
        } else if fetched.schema_type == "JSON" {
            WriterSchema::parse(&fetched.schema)
                .map(Writer::Json)
                .map_err(|e| {
                    (
                        DeadLetter::BadSchema,
                        format!("not a JSON Schema a json-schema pipeline can read: {e}"),
                    )
                })
        } else if fetched.schema_type != "AVRO" {
            Err((
                DeadLetter::BadSchema,
                format!(
                    "a {} schema, not Avro, JSON or Protobuf",
                    fetched.schema_type
                ),
            ))
        } else {
            crate::registry::parse_schema(&fetched.schema)
                .map(Writer::Avro)
                .map_err(|e| {
                    (
                        DeadLetter::BadSchema,
                        format!("not a valid Avro schema: {e}"),
                    )
                })
        })
    }
}

/// A writer schema from the registry, by its type.
enum Writer {
    Avro(Schema),
    Json(WriterSchema),
    Protobuf(prost_reflect::DescriptorPool),
}

/// Most files one Protobuf schema may import through references.
const MAX_IMPORTS: usize = 64;

/// The log line and metric of a writer version whose fields the rules do not classify.
fn report_unclassified(
    metrics: &Metrics,
    id: u32,
    pipeline: &str,
    record_name: &str,
    problems: &[String],
) {
    for problem in problems {
        // Each problem starts with the field path (plan::compile's convention).
        let field = problem.split_once(": ").map_or("", |(path, _)| path);
        metrics
            .unclassified_fields
            .with_label_values(&[pipeline, &id.to_string(), field])
            .set(1);
    }
    tracing::error!(
        schema_id = id,
        pipeline,
        record = record_name,
        problems = %problems.join("; "),
        "a writer schema version has fields the rules do not classify: its records are dead-lettered as unclassified-field; add the rules, restart, then `dlq replay`"
    );
}

/// Logs why the records of schema id `id` are dead-lettered and answers that resolution.
fn refused(id: u32, reason: DeadLetter, why: &str) -> Resolution {
    tracing::error!(
        schema_id = id,
        reason = reason.code(),
        why,
        "records of this schema id are dead-lettered"
    );
    Resolution::Refused(reason)
}
