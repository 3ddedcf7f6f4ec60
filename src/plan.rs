//! Compiling rules against a writer schema: the transform [`Step`] tree and the derived
//! output schema, in one walk so the two cannot disagree.
//!
//! The walk visits every field. A field whose type holds a record (directly, nullable, or as
//! array items) is a branch: its own fields get the rules. Any other field is a leaf and must
//! have exactly one rule whose action fits its type. Every problem found is collected, so the
//! user sees all offending paths at once. The output schema keeps field order and union branch
//! order (so union indexes carry over unchanged), moves every named type into
//! [`OUTPUT_NAMESPACE`], drops `drop` fields, turns transformed strings into strings and
//! encrypted strings/bytes into bytes.

use std::collections::{BTreeSet, HashMap};

use apache_avro::schema::{Name, RecordSchema};
use apache_avro::Schema;
use serde_json::{json, Map, Value as Json};

use crate::rules::{Action, Rules};

/// Namespace of every named type in derived output schemas.
pub const OUTPUT_NAMESPACE: &str = "comms.sanitized.v1";

/// Deepest nesting accepted (guards against recursive schemas).
const MAX_DEPTH: usize = 32;

/// How a value is laid out in Avro binary: enough to skip or copy it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Null,
    Boolean,
    /// int, long, enum and their logical types: one zig-zag varint.
    Varint,
    /// bytes: a length and that many bytes.
    Bytes,
    /// string: a length and that many bytes of UTF-8 (checked, so bad input fails closed).
    String,
    /// float (4), double (8), fixed(n), duration (12).
    Fixed(usize),
    Array(Box<Shape>),
    Map(Box<Shape>),
    Union(Vec<Shape>),
    /// A record, or any run of consecutive fields.
    Seq(Vec<Shape>),
}

/// The input type of a transformed leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafInput {
    String,
    Bytes,
}

/// A leaf value that an action rewrites.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    pub action: Action,
    /// The field path; the AAD of envelopes and the place named in errors.
    pub path: Box<str>,
    pub input: LeafInput,
    /// For a phone rule with a `region_field`: its index in [`Plan::regions`].
    pub region: Option<usize>,
}

/// A field that holds a record's own phone region (a rule's `region_field`): a string or
/// nullable string, outside arrays, found in the binary without decoding the record.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSource {
    pub path: Box<str>,
    /// From the start of the record to the string.
    pub steps: Vec<Locate>,
}

/// One move towards a region field in the Avro binary.
#[derive(Debug, Clone, PartialEq)]
pub enum Locate {
    /// Read past a value (a field before the one wanted).
    Skip(Shape),
    /// A union: go on only if this branch is the one written (a null has no region).
    Branch(usize),
    /// The string itself.
    String,
}

/// Region fields of one schema, at most (each costs a pass over the record's start).
pub const MAX_REGION_FIELDS: usize = 4;

/// What to do with one value, compiled from the schema and the rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Copy verbatim. `paths` names the value for errors: one path, or for a merged run of
    /// fields (`shape` is then a `Seq`) one path per field.
    Copy {
        shape: Shape,
        paths: Vec<Box<str>>,
    },
    /// Read past; write nothing (a dropped field).
    Skip {
        shape: Shape,
        path: Box<str>,
    },
    Record(Vec<Step>),
    /// Copy the branch index, then run that branch's step.
    Union {
        branches: Vec<Step>,
        path: Box<str>,
    },
    Array {
        item: Box<Step>,
        path: Box<str>,
    },
    Leaf(Leaf),
}

impl Step {
    /// A record's steps with consecutive copies merged into one; all-copy becomes one copy.
    fn record(steps: Vec<Step>) -> Step {
        let mut merged: Vec<Step> = Vec::with_capacity(steps.len());
        for step in steps {
            match (merged.last_mut(), step) {
                (
                    Some(Step::Copy {
                        shape: Shape::Seq(run),
                        paths,
                    }),
                    Step::Copy {
                        shape,
                        paths: mut more,
                    },
                ) => {
                    run.push(shape);
                    paths.push(more.swap_remove(0));
                }
                (_, Step::Copy { shape, mut paths }) => merged.push(Step::Copy {
                    shape: Shape::Seq(vec![shape]),
                    paths: vec![paths.swap_remove(0)],
                }),
                (_, other) => merged.push(other),
            }
        }
        match merged.as_slice() {
            [Step::Copy { .. }] => merged.pop().expect("one element"),
            _ => Step::Record(merged),
        }
    }

    fn union(branches: Vec<Step>, path: &str) -> Step {
        if branches.iter().all(|b| matches!(b, Step::Copy { .. })) {
            let shapes = branches
                .into_iter()
                .map(|b| match b {
                    Step::Copy { shape, .. } => shape,
                    _ => unreachable!("checked above"),
                })
                .collect();
            return Step::Copy {
                shape: Shape::Union(shapes),
                paths: vec![path.into()],
            };
        }
        Step::Union {
            branches,
            path: path.into(),
        }
    }

    fn array(item: Step, path: &str) -> Step {
        match item {
            Step::Copy { shape, .. } => Step::Copy {
                shape: Shape::Array(Box::new(shape)),
                paths: vec![path.into()],
            },
            item => Step::Array {
                item: Box::new(item),
                path: path.into(),
            },
        }
    }

    /// Whether any leaf under this step needs the pseudonym key / the encryption key.
    pub fn needs(&self) -> (bool, bool) {
        match self {
            Step::Copy { .. } | Step::Skip { .. } => (false, false),
            Step::Leaf(leaf) => (
                leaf.action.needs_pseudonym_key(),
                leaf.action == Action::Encrypt,
            ),
            Step::Record(steps)
            | Step::Union {
                branches: steps, ..
            } => steps.iter().fold((false, false), |(p, e), s| {
                let (sp, se) = s.needs();
                (p || sp, e || se)
            }),
            Step::Array { item, .. } => item.needs(),
        }
    }
}

/// Rules compiled against one writer schema.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Full name of the writer schema (`comms.v1.CallEvent`).
    pub input_name: String,
    /// The writer schema.
    pub input: Schema,
    /// The derived output schema.
    pub output: Schema,
    /// The derived output schema as JSON (what `schema derive` writes).
    pub output_json: Json,
    /// The transform program.
    pub step: Step,
    /// The rules it was compiled from (the reference path walks these).
    pub rules: Rules,
    /// Fields holding records' own phone regions, by the index leaves refer to.
    pub regions: Vec<RegionSource>,
    /// Whether some rule needs the active pseudonym key.
    pub needs_pseudonym: bool,
    /// Whether some rule needs the active encryption key.
    pub needs_encryption: bool,
}

/// Compiles `rules` against the writer schema `input`. On failure, one message per offending
/// path.
pub fn compile(input: &Schema, rules: &Rules) -> Result<Plan, Vec<String>> {
    let Schema::Record(root) = input else {
        return Err(vec![
            "the writer schema's top level must be a record".to_owned()
        ]);
    };
    let input_name = root.name.fullname(None);
    let region_paths = rules.region_paths();
    let mut walker = Walker {
        rules,
        used: BTreeSet::new(),
        errors: Vec::new(),
        named: HashMap::new(),
        emitted: HashMap::new(),
        root_name: input_name.clone(),
        region_paths: region_paths.clone(),
    };
    let (step, output_json) = walker.record(root, "", 0);
    if region_paths.len() > MAX_REGION_FIELDS {
        walker.errors.push(format!(
            "phone rules name {} region fields; at most {MAX_REGION_FIELDS}",
            region_paths.len()
        ));
    }
    let mut regions = Vec::new();
    for path in &region_paths {
        match walker.locate(root, path) {
            Ok(steps) => regions.push(RegionSource {
                path: (*path).into(),
                steps,
            }),
            Err(why) => {
                let users: Vec<&str> = rules
                    .iter()
                    .map(|(p, _)| p)
                    .filter(|p| rules.region_field(p) == Some(*path))
                    .collect();
                walker.errors.push(format!(
                    "{}: region_field {path:?} {why} (it must name a string or nullable string field of {input_name}, outside arrays)",
                    users.join(", ")
                ));
            }
        }
    }
    for (path, _) in rules.iter() {
        if !walker.used.contains(path) {
            walker
                .errors
                .push(format!("{path}: names no leaf field of {input_name}"));
        }
    }
    if !walker.errors.is_empty() {
        return Err(walker.errors);
    }
    let output = Schema::parse(&output_json)
        .map_err(|e| vec![format!("derived output schema is not valid Avro: {e}")])?;
    let (needs_pseudonym, needs_encryption) = step.needs();
    Ok(Plan {
        input_name,
        input: input.clone(),
        output,
        output_json,
        step,
        rules: rules.clone(),
        regions,
        needs_pseudonym,
        needs_encryption,
    })
}

struct Walker<'a> {
    rules: &'a Rules,
    used: BTreeSet<String>,
    errors: Vec<String>,
    /// Named input types seen so far, by full name, to resolve references.
    named: HashMap<String, Schema>,
    /// Output definitions of named types already written, by output full name. A second use
    /// writes only the name, and must derive to the same definition.
    emitted: HashMap<String, Json>,
    root_name: String,
    /// Region field paths, by the index [`Leaf::region`] holds.
    region_paths: Vec<&'a str>,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl Walker<'_> {
    /// The index of the region field of the phone rule at `path`, if it names one.
    fn region_index(&self, path: &str) -> Option<usize> {
        let region = self.rules.region_field(path)?;
        self.region_paths.iter().position(|p| *p == region)
    }

    /// The moves from the start of `root` to the string at `path`, or why there is none.
    fn locate(&mut self, root: &RecordSchema, path: &str) -> Result<Vec<Locate>, String> {
        let mut steps = Vec::new();
        let mut record = root.clone();
        let mut names = path.split('.').peekable();
        while let Some(name) = names.next() {
            let last = names.peek().is_none();
            let Some(position) = record.fields.iter().position(|f| f.name == name) else {
                return Err("names no field".to_owned());
            };
            for before in &record.fields[..position] {
                let shape = self.shape(&before.schema, path, 0);
                steps.push(Locate::Skip(shape));
            }
            let mut schema = self.resolve(&record.fields[position].schema).clone();
            // A nullable value: follow its one other branch.
            if let Schema::Union(union) = &schema {
                let variants = union.variants();
                let others: Vec<usize> = (0..variants.len())
                    .filter(|&i| !matches!(variants[i], Schema::Null))
                    .collect();
                let [branch] = others[..] else {
                    return Err("is a union of several types".to_owned());
                };
                steps.push(Locate::Branch(branch));
                schema = self.resolve(&variants[branch]).clone();
            }
            match (schema, last) {
                (Schema::String, true) => steps.push(Locate::String),
                (Schema::Record(inner), false) => record = inner,
                (_, true) => return Err("is not a string".to_owned()),
                (_, false) => return Err("crosses a field that is not a record".to_owned()),
            }
        }
        Ok(steps)
    }

    fn resolve<'s>(&'s self, schema: &'s Schema) -> &'s Schema {
        match schema {
            Schema::Ref { name } => self.named.get(&name.fullname(None)).unwrap_or(schema),
            other => other,
        }
    }

    fn remember(&mut self, name: &Name, schema: &Schema) {
        self.named
            .entry(name.fullname(None))
            .or_insert_with(|| schema.clone());
    }

    fn out_name(name: &Name) -> String {
        format!("{OUTPUT_NAMESPACE}.{}", name.name)
    }

    /// Emits a named type's definition the first time, its name after; checks both agree.
    fn named_json(&mut self, name: &Name, definition: Json, path: &str) -> Json {
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

    fn record(&mut self, record: &RecordSchema, path: &str, depth: usize) -> (Step, Json) {
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
                doc.push_str(&format!("[{}]", action.describe()));
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
                        if action == Action::Encrypt {
                            "encrypt needs a string or bytes, optionally nullable or in an array"
                        } else {
                            "it needs a string, optionally nullable or in an array"
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
                }),
                json!(out_type),
            )),
            Schema::Bytes if action == Action::Encrypt => Some((
                Step::Leaf(Leaf {
                    action,
                    path: path.into(),
                    input: LeafInput::Bytes,
                    region: None,
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

    fn shape(&mut self, schema: &Schema, path: &str, depth: usize) -> Shape {
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
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Shape::Varint,
            Schema::Enum(e) => {
                self.remember(&e.name, &schema);
                Shape::Varint
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
    fn copy_json(&mut self, schema: &Schema, path: &str) -> Json {
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
