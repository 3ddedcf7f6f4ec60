//! How values are laid out in Avro binary ([`Shape`], to skip or copy them without decoding),
//! and the output types of kept values (the same type, named types moved to the output
//! namespace).

use apache_avro::Schema;
use serde_json::{json, Value as Json};

use super::walker::Walker;
use super::{Shape, MAX_DEPTH, OUTPUT_NAMESPACE};

impl Walker<'_> {
    pub(super) fn shape(&mut self, schema: &Schema, path: &str, depth: usize) -> Shape {
        if depth > MAX_DEPTH {
            self.errors.push(format!(
                "{path}: nesting deeper than {MAX_DEPTH} (recursive schema?)"
            ));
            return Shape::Null;
        }
        let schema = self.resolve(schema).clone();
        match &schema {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Boolean,
            // 32-bit: a varint outside i32 is not an int (apache-avro refuses it too).
            Schema::Int | Schema::Date | Schema::TimeMillis => Shape::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Shape::Varint,
            Schema::Enum(e) => {
                self.remember(&e.name, &schema);
                Shape::Enum(e.symbols.len())
            }
            Schema::Float => Shape::Fixed(4),
            Schema::Double => Shape::Fixed(8),
            Schema::String | Schema::Uuid => Shape::String,
            Schema::Bytes | Schema::BigDecimal => Shape::Bytes,
            Schema::Fixed(f) => {
                self.remember(&f.name, &schema);
                Shape::Fixed(f.size)
            }
            Schema::Duration => Shape::Fixed(12),
            Schema::Decimal(d) => self.shape(&d.inner, path, depth + 1),
            Schema::Array(a) => Shape::Array(Box::new(self.shape(&a.items, path, depth + 1))),
            Schema::Map(m) => Shape::Map(Box::new(self.shape(&m.types, path, depth + 1))),
            Schema::Union(u) => Shape::Union(
                u.variants()
                    .iter()
                    .map(|v| self.shape(v, path, depth + 1))
                    .collect(),
            ),
            Schema::Record(r) => {
                self.remember(&r.name, &schema);
                Shape::Seq(
                    r.fields
                        .iter()
                        .map(|f| self.shape(&f.schema, path, depth + 1))
                        .collect(),
                )
            }
            Schema::Ref { name } => {
                self.errors
                    .push(format!("{path}: unknown type {}", name.fullname(None)));
                Shape::Null
            }
        }
    }

    /// Output JSON of a kept (non-record) type: the same type, named types renamed.
    pub(super) fn copy_json(&mut self, schema: &Schema, path: &str) -> Json {
        let schema = self.resolve(schema).clone();
        match &schema {
            Schema::Enum(e) => {
                self.remember(&e.name, &schema);
                let mut def = json!({"type": "enum", "name": e.name.name, "namespace": OUTPUT_NAMESPACE, "symbols": e.symbols});
                if let Some(doc) = &e.doc {
                    def["doc"] = json!(doc);
                }
                if let Some(default) = &e.default {
                    def["default"] = json!(default);
                }
                self.named_json(&e.name, def, path)
            }
            Schema::Fixed(f) => {
                self.remember(&f.name, &schema);
                let def = json!({"type": "fixed", "name": f.name.name, "namespace": OUTPUT_NAMESPACE, "size": f.size});
                self.named_json(&f.name, def, path)
            }
            Schema::Array(a) => json!({"type": "array", "items": self.copy_json(&a.items, path)}),
            Schema::Map(m) => json!({"type": "map", "values": self.copy_json(&m.types, path)}),
            Schema::Union(u) => Json::Array(
                u.variants()
                    .iter()
                    .map(|v| self.copy_json(v, path))
                    .collect(),
            ),
            other => serde_json::to_value(other).unwrap_or(Json::Null),
        }
    }
}
