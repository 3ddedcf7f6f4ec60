//! The walk over a writer schema that compiles the rules: records and their fields, branches
//! (types holding records) and leaves (rewritten values), and the derived output types of
//! each, with named types emitted once. Shapes of copied values are in `shape.rs`, the paths to
//! region fields in `region.rs`.

use std::collections::{BTreeSet, HashMap};

use apache_avro::schema::{Name, RecordSchema};
use apache_avro::Schema;
use serde_json::{json, Map, Value as Json};

use super::{DerivedShape, Leaf, LeafInput, Shape, Step, MAX_DEPTH, OUTPUT_NAMESPACE};
use crate::rules::{Action, Attribute, Rules};

pub(super) struct Walker<'a> {
    pub(super) rules: &'a Rules,
    pub(super) used: BTreeSet<String>,
    pub(super) errors: Vec<String>,
    /// Named input types seen so far, by full name, to resolve references.
    pub(super) named: HashMap<String, Schema>,
    /// Output definitions of named types already written, by output full name. A second use
    /// writes only the name, and must derive to the same definition.
    pub(super) emitted: HashMap<String, Json>,
    pub(super) root_name: String,
    /// Region field paths, by the index [`Leaf::region`] holds.
    pub(super) region_paths: Vec<&'a str>,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl Walker<'_> {
    pub(super) fn resolve<'s>(&'s self, schema: &'s Schema) -> &'s Schema {
        match schema {
            Schema::Ref { name } => self.named.get(&name.fullname(None)).unwrap_or(schema),
            other => other,
        }
    }

    pub(super) fn remember(&mut self, name: &Name, schema: &Schema) {
        self.named
            .entry(name.fullname(None))
            .or_insert_with(|| schema.clone());
    }

    fn out_name(name: &Name) -> String {
        format!("{OUTPUT_NAMESPACE}.{}", name.name)
    }

    /// Emits a named type's definition the first time, its name after; checks both agree.
    pub(super) fn named_json(&mut self, name: &Name, definition: Json, path: &str) -> Json {
        let full = Self::out_name(name);
        match self.emitted.get(&full) {
            None => {
                self.emitted.insert(full, definition);
                self.emitted_order_json(name, true)
            }
            Some(first) if *first == definition => self.emitted_order_json(name, false),
            Some(_) => {
                self.errors.push(format!(
                    "{path}: type {} is used in more than one place with different rules; give every use the same rules",
                    name.fullname(None)
                ));
                Json::String(full)
            }
        }
    }

    fn emitted_order_json(&self, name: &Name, first: bool) -> Json {
        let full = Self::out_name(name);
        if first {
            self.emitted[&full].clone()
        } else {
            Json::String(full)
        }
    }

    fn contains_record(&self, schema: &Schema, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match self.resolve(schema) {
            Schema::Record(_) => true,
            Schema::Union(u) => u
                .variants()
                .iter()
                .any(|v| self.contains_record(v, depth + 1)),
            Schema::Array(a) => self.contains_record(&a.items, depth + 1),
            _ => false,
        }
    }

    pub(super) fn record(
        &mut self,
        record: &RecordSchema,
        path: &str,
        depth: usize,
    ) -> (Step, Json) {
        self.remember(&record.name, &Schema::Record(record.clone()));
        if depth > MAX_DEPTH {
            self.errors.push(format!(
                "{path}: nesting deeper than {MAX_DEPTH} (recursive schema?)"
            ));
            return (Step::Record(vec![]), Json::Null);
        }
        let mut steps = Vec::with_capacity(record.fields.len());
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let field_path = join(path, &field.name);
            let (step, field_type, action) = self.field(&field.schema, &field_path, depth + 1);
            steps.push(step);
            let Some(field_type) = field_type else {
                continue;
            };
            let mut out = Map::new();
            out.insert("name".into(), json!(field.name));
            out.insert("type".into(), field_type);
            let mut doc = field.doc.clone().unwrap_or_default();
            if let Some(action) = action.filter(|a| *a != Action::Keep) {
                if !doc.is_empty() {
                    doc.push(' ');
                }
                let described = match (action, self.rules.bucketing(&field_path)) {
                    // The buckets themselves, so that a reader of the schema knows them.
                    (Action::Bucket { label }, Some(buckets)) => format!(
                        "generalized: the {} of the value's bucket; buckets cut at {} ({}){}",
                        if label { "label" } else { "lower bound" },
                        buckets
                            .bounds
                            .iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        match buckets.labels.as_slice() {
                            [first, .., last] if buckets.labels.len() > 3 =>
                                format!("{first}, …, {last}"),
                            all => all.join(", "),
                        },
                        if label {
                            ""
                        } else {
                            "; the type's minimum below the first bound"
                        }
                    ),
                    _ => action.describe(),
                };
                doc.push_str(&format!("[{described}]"));
            }
            if !doc.is_empty() {
                out.insert("doc".into(), json!(doc));
            }
            // A default survives where the type did not change, and a null default always.
            if let Some(default) = &field.default {
                if action.is_none() || action == Some(Action::Keep) || default.is_null() {
                    out.insert("default".into(), default.clone());
                }
            }
            fields.push(Json::Object(out));
            if action.is_some_and(|a| !Attribute::of(a).is_empty()) {
                self.derived_fields(record, field, &field_path, &mut steps, &mut fields);
            }
        }
        let mut definition = Map::new();
        definition.insert("type".into(), json!("record"));
        definition.insert("name".into(), json!(record.name.name));
        definition.insert("namespace".into(), json!(OUTPUT_NAMESPACE));
        let mut doc = record.doc.clone().unwrap_or_default();
        if path.is_empty() {
            if !doc.is_empty() {
                doc.push(' ');
            }
            doc.push_str(&format!(
                "Sanitized by pseudonymizer from {}: derived from the input schema and the rules; do not edit.",
                self.root_name
            ));
        }
        if !doc.is_empty() {
            definition.insert("doc".into(), json!(doc));
        }
        definition.insert("fields".into(), Json::Array(fields));
        let json = self.named_json(&record.name, Json::Object(definition), path);
        (Step::record(steps), json)
    }

    /// The fields a phone or IP rule derives beside its token (none where it derives nothing): their
    /// output types are appended to `fields`, and the field's step (the last of `steps`) is
    /// wrapped in a [`Step::Derived`] that writes them.
    fn derived_fields(
        &mut self,
        record: &RecordSchema,
        field: &apache_avro::schema::RecordField,
        path: &str,
        steps: &mut [Step],
        fields: &mut Vec<Json>,
    ) {
        let derive = self.rules.derived(path);
        if derive.is_empty() {
            return;
        }
        let Some(shape) = self.derived_shape(&field.schema) else {
            let found = match self.resolve(&field.schema) {
                Schema::Union(_) => {
                    "a union of other types than null and one string or array of strings".to_owned()
                }
                Schema::Array(_) => "an array of other items than strings".to_owned(),
                other => type_name(other),
            };
            let what = if derive.has(Attribute::Country) {
                "an IP field that holds addresses"
            } else {
                "a phone field that holds numbers"
            };
            self.errors.push(format!(
                "{path}: derive needs {what} (a string, an array of strings, or either nullable), not {found}; derive nothing here, or move the values into a field of their own"
            ));
            return;
        };
        if derive.has(Attribute::Country) && self.rules.country_db().is_none() {
            self.errors.push(format!(
                "{path}: derive country needs a country database: name one in [geoip] database (docs/operations.md, \"Derived IP countries\")"
            ));
        }
        for attribute in derive.iter() {
            let name = attribute.field_name(&field.name);
            if record.fields.iter().any(|f| f.name == name) {
                self.errors.push(format!(
                    "{path}: derive {} makes field {name}, which {} already has; rename one",
                    attribute.name(),
                    record.name.fullname(None)
                ));
                continue;
            }
            let (kind, doc) = match attribute {
                Attribute::Region => ("string", format!("Derived from {}: region of the number as libphonenumber assigns it (ISO 3166 alpha-2, and the codes it uses for territories ISO does not list: XK, AC, TA); null for a non-geographic calling code, a number no region of a shared code claims, a null value, one that is not a phone number, or a person the subject registry withholds.", field.name)),
                Attribute::CallingCode => ("int", format!("Derived from {}: country calling code of the number; null for a null value, one that is not a phone number, or a person the subject registry withholds.", field.name)),
                Attribute::NumberType => ("string", format!("Derived from {}: number type as libphonenumber's metadata classifies it (fixed_line, mobile, fixed_line_or_mobile, toll_free, premium_rate, shared_cost, voip, personal_number, pager, uan, voicemail, unknown); null for a null value, one that is not a phone number, or a person the subject registry withholds.", field.name)),
                Attribute::Country => ("string", format!("Derived from {}: country of the address (ISO 3166 alpha-2) as the [geoip] database places it; null for a null value, one that is not an IP address, an address the database places in no country, or (for an ip token) a person the subject registry withholds.", field.name)),
            };
            let value = json!(["null", kind]);
            let array = json!({"type": "array", "items": value.clone()});
            let (kind, default) = match shape {
                DerivedShape::Single => (value, json!(null)),
                DerivedShape::Array { nullable: false } => (array, json!([])),
                DerivedShape::Array { nullable: true } => (json!(["null", array]), json!(null)),
            };
            let doc = match shape {
                DerivedShape::Single => doc,
                DerivedShape::Array { .. } => format!(
                    "{doc} One item per item of {}, in the same order.",
                    field.name
                ),
            };
            fields.push(json!({"name": name, "type": kind, "default": default, "doc": doc}));
        }
        if let Some(last) = steps.last_mut() {
            let step = std::mem::replace(last, Step::Record(vec![]));
            *last = Step::Derived {
                field: Box::new(step),
                derive,
                shape,
                path: path.into(),
            };
        }
    }

    /// How a field whose rule derives attributes holds its values: one string (or nullable),
    /// or an array of strings (items or array nullable); `None` for any other type.
    fn derived_shape(&self, schema: &Schema) -> Option<DerivedShape> {
        let text = |s: &Schema| matches!(self.resolve(s), Schema::String | Schema::Uuid);
        let nullable = |s: &Schema, inner: &dyn Fn(&Schema) -> bool| match self.resolve(s) {
            Schema::Union(union) => {
                let variants = union.variants();
                variants.len() == 2
                    && variants.iter().any(|v| matches!(v, Schema::Null))
                    && variants
                        .iter()
                        .any(|v| !matches!(v, Schema::Null) && inner(v))
            }
            _ => false,
        };
        let strings = |s: &Schema| match self.resolve(s) {
            Schema::Array(array) => text(&array.items) || nullable(&array.items, &text),
            _ => false,
        };
        if text(schema) || nullable(schema, &text) {
            Some(DerivedShape::Single)
        } else if strings(schema) {
            Some(DerivedShape::Array { nullable: false })
        } else if nullable(schema, &strings) {
            Some(DerivedShape::Array { nullable: true })
        } else {
            None
        }
    }

    /// A field: a branch (holds records) or a leaf with a rule. Returns its step, its output
    /// type (`None` when dropped) and the leaf's action (`None` for a branch).
    fn field(
        &mut self,
        schema: &Schema,
        path: &str,
        depth: usize,
    ) -> (Step, Option<Json>, Option<Action>) {
        if self.contains_record(schema, 0) {
            if self.rules.get(path).is_some() {
                self.used.insert(path.to_owned());
                self.errors.push(format!(
                    "{path}: is a record; give rules to its fields ({path}.FIELD), not to it"
                ));
            }
            let (step, json) = self.branch(schema, path, depth);
            return (step, Some(json), None);
        }
        let Some(action) = self.rules.get(path) else {
            self.errors.push(format!(
                "{path}: has no rule (every field needs one; nothing passes by default)"
            ));
            return (Step::Record(vec![]), None, None);
        };
        self.used.insert(path.to_owned());
        match action {
            Action::Keep => {
                let shape = self.shape(schema, path, depth);
                let json = self.copy_json(schema, path);
                (
                    Step::Copy {
                        shape,
                        paths: vec![path.into()],
                    },
                    Some(json),
                    Some(action),
                )
            }
            Action::Drop => {
                let shape = self.shape(schema, path, depth);
                (
                    Step::Skip {
                        shape,
                        path: path.into(),
                    },
                    None,
                    Some(action),
                )
            }
            _ => match self.leaf(schema, action, path, depth) {
                Some((step, json)) => (step, Some(json), Some(action)),
                None => {
                    self.errors.push(format!(
                        "{path}: action {} does not fit type {} ({})",
                        action.name(),
                        type_name(self.resolve(schema)),
                        match action {
                            Action::Encrypt => "encrypt needs a string or bytes, optionally nullable or in an array",
                            Action::TimeTruncate(_) => "time-truncate needs a long or int with a timestamp or time-of-day logical type, optionally nullable or in an array",
                            Action::Bucket { .. } => "bucket needs a plain int or long, optionally nullable or in an array",
                            _ => "it needs a string, optionally nullable or in an array",
                        }
                    ));
                    (Step::Record(vec![]), None, Some(action))
                }
            },
        }
    }

    /// A type that holds records: records, nullable records, arrays of them.
    fn branch(&mut self, schema: &Schema, path: &str, depth: usize) -> (Step, Json) {
        let schema = self.resolve(schema).clone();
        match &schema {
            Schema::Record(record) => self.record(record, path, depth),
            Schema::Union(union) => {
                let mut steps = Vec::new();
                let mut types = Vec::new();
                for variant in union.variants() {
                    let (step, json) = if self.contains_record(variant, 0) {
                        self.branch(variant, path, depth + 1)
                    } else {
                        let shape = self.shape(variant, path, depth + 1);
                        (
                            Step::Copy {
                                shape,
                                paths: vec![path.into()],
                            },
                            self.copy_json(variant, path),
                        )
                    };
                    steps.push(step);
                    types.push(json);
                }
                (Step::union(steps, path), Json::Array(types))
            }
            Schema::Array(array) => {
                let (step, json) = self.branch(&array.items, path, depth + 1);
                (
                    Step::array(step, path),
                    json!({"type": "array", "items": json}),
                )
            }
            other => {
                // contains_record() said records are inside; anything else is a bug.
                self.errors
                    .push(format!("{path}: unexpected type {}", type_name(other)));
                (Step::Record(vec![]), Json::Null)
            }
        }
    }

    /// A leaf rewritten by `action`: string (or bytes for encrypt), nullable, or in an array.
    fn leaf(
        &mut self,
        schema: &Schema,
        action: Action,
        path: &str,
        depth: usize,
    ) -> Option<(Step, Json)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let schema = self.resolve(schema).clone();
        if action.takes_number() && !matches!(schema, Schema::Union(_) | Schema::Array(_)) {
            return self.number_leaf(&schema, action, path);
        }
        let out_type = if action == Action::Encrypt {
            "bytes"
        } else {
            "string"
        };
        match &schema {
            Schema::String | Schema::Uuid => Some((
                Step::Leaf(Leaf {
                    action,
                    path: path.into(),
                    input: LeafInput::String,
                    region: self.region_index(path),
                    derive: self.rules.derived(path),
                    ticks: 0,
                    bucketing: None,
                    country: self
                        .rules
                        .derived(path)
                        .has(crate::rules::Attribute::Country)
                        .then(|| self.rules.country_db().cloned())
                        .flatten(),
                }),
                json!(out_type),
            )),
            Schema::Bytes if action == Action::Encrypt => Some((
                Step::Leaf(Leaf {
                    action,
                    path: path.into(),
                    input: LeafInput::Bytes,
                    region: None,
                    derive: crate::rules::Derive::default(),
                    ticks: 0,
                    bucketing: None,
                    country: None,
                }),
                json!(out_type),
            )),
            Schema::Union(union) => {
                let variants = union.variants();
                let non_null = variants
                    .iter()
                    .filter(|v| !matches!(v, Schema::Null))
                    .count();
                if non_null != 1 {
                    return None;
                }
                let mut steps = Vec::new();
                let mut types = Vec::new();
                for variant in variants {
                    if matches!(variant, Schema::Null) {
                        steps.push(Step::Copy {
                            shape: Shape::Null,
                            paths: vec![path.into()],
                        });
                        types.push(json!("null"));
                    } else {
                        let (step, json) = self.leaf(variant, action, path, depth + 1)?;
                        steps.push(step);
                        types.push(json);
                    }
                }
                Some((Step::union(steps, path), Json::Array(types)))
            }
            Schema::Array(array) => {
                let (step, json) = self.leaf(&array.items, action, path, depth + 1)?;
                Some((
                    Step::array(step, path),
                    json!({"type": "array", "items": json}),
                ))
            }
            _ => None,
        }
    }
}

impl Walker<'_> {
    /// A number rewritten by a generalizing action: `time-truncate` on a timestamp or time of
    /// day (the output keeps its type and logical type), `bucket` on a plain int or long.
    fn number_leaf(&mut self, schema: &Schema, action: Action, path: &str) -> Option<(Step, Json)> {
        use Schema::*;
        let (input, ticks_per_milli, time_of_day) = match schema {
            Int | TimeMillis => (LeafInput::Int, 1, matches!(schema, TimeMillis)),
            Long | TimestampMillis | LocalTimestampMillis => (LeafInput::Long, 1, false),
            TimestampMicros | LocalTimestampMicros => (LeafInput::Long, 1_000, false),
            TimestampNanos | LocalTimestampNanos => (LeafInput::Long, 1_000_000, false),
            TimeMicros => (LeafInput::Long, 1_000, true),
            _ => return None,
        };
        let mut leaf = Leaf {
            action,
            path: path.into(),
            input,
            region: None,
            derive: crate::rules::Derive::default(),
            ticks: 0,
            bucketing: None,
            country: None,
        };
        let out = match action {
            Action::TimeTruncate(unit) => {
                // A plain int or long has no unit of time to truncate in.
                if matches!(schema, Int | Long) {
                    return None;
                }
                if time_of_day && unit == crate::rules::TimeUnit::Day {
                    self.errors.push(format!(
                        "{path}: a time of day truncated to the day is always midnight; truncate it to the hour or minute, or drop it"
                    ));
                }
                leaf.ticks = unit.millis() * ticks_per_milli;
                serde_json::to_value(schema).unwrap_or(Json::Null)
            }
            Action::Bucket { label } => {
                if !matches!(schema, Int | Long) {
                    return None;
                }
                let bucketing = self.rules.bucketing(path)?.clone();
                if input == LeafInput::Int
                    && bucketing.bounds.iter().any(|b| i32::try_from(*b).is_err())
                {
                    self.errors.push(format!(
                        "{path}: a bucket bound does not fit an int (the field's type)"
                    ));
                }
                leaf.bucketing = Some(bucketing);
                match (label, input) {
                    (true, _) => json!("string"),
                    (false, LeafInput::Int) => json!("int"),
                    (false, _) => json!("long"),
                }
            }
            _ => return None,
        };
        Some((Step::Leaf(leaf), out))
    }
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
        Schema::Union(_) => "a union".to_owned(),
        Schema::Array(_) => "an array".to_owned(),
        Schema::Map(_) => "a map".to_owned(),
        other => serde_json::to_value(other)
            .ok()
            .map(|j| j.to_string())
            .unwrap_or_else(|| "?".to_owned()),
    }
}
