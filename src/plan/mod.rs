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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use serde_json::Value as Json;

use crate::rules::{Action, Bucketing, Derive, Rules};

pub mod json;
pub mod json_schema;
pub mod protobuf;
mod region;
mod shape;
mod walker;

use walker::Walker;

/// Namespace of every named type in derived output schemas.
pub const OUTPUT_NAMESPACE: &str = "comms.sanitized.v1";

/// Deepest nesting accepted (guards against recursive schemas).
const MAX_DEPTH: usize = 32;

/// How a value is laid out in Avro binary: enough to skip or copy it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Null,
    /// One byte, 0 or 1.
    Boolean,
    /// int and its logical types: one zig-zag varint within 32 bits.
    Int,
    /// long and its logical types: one zig-zag varint.
    Varint,
    /// An enum of this many symbols: a varint index into them.
    Enum(usize),
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
    /// An Avro int (a zig-zag varint within 32 bits), logical types included.
    Int,
    /// An Avro long, logical types included.
    Long,
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
    /// For a phone or IP rule that derives attributes: which ones (the [`Step::Derived`] around
    /// this leaf writes them).
    pub derive: Derive,
    /// For `time-truncate`: the unit in the field's own ticks (a minute of a
    /// `timestamp-micros` is 60,000,000); 0 otherwise.
    pub ticks: i64,
    /// For `bucket`: its buckets.
    pub bucketing: Option<Arc<Bucketing>>,
    /// For an IP rule that derives `country`: the database it is read from.
    pub country: Option<Arc<crate::geoip::CountryDb>>,
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
    /// The value itself, of this shape (its encoded bytes are what is read).
    Value(Shape),
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
    /// A phone or IP field (string or nullable string) whose rule derives attributes of the
    /// value: the field's own step, then one nullable field per attribute, in the order of
    /// [`crate::rules::Attribute::ALL`] (null where the value is null, not a number or address,
    /// or has no such attribute).
    Derived {
        field: Box<Step>,
        derive: Derive,
        shape: DerivedShape,
        path: Box<str>,
    },
}

/// How a field whose rule derives attributes holds its values, and so the derived fields'
/// types: `["null", T]` for one value; an array of `["null", T]`, one item per item, for an
/// array (itself nullable where the field's array is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivedShape {
    /// A string or nullable string.
    Single,
    /// An array of strings or nullable strings; `nullable`: the array itself is nullable.
    Array { nullable: bool },
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
            Step::Derived { field, .. } => field.needs(),
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
    /// Rules that name no field of this schema (only with [`UnusedRules::Allow`]).
    pub unused_rules: Vec<String>,
    /// The pipeline's pseudonymisation domain (`None`: the default). Set by the engine, not
    /// by the compiler: it is configuration of the pipeline, not of the rules.
    pub domain: Option<String>,
}

impl Plan {
    /// This plan's rules (and pipeline settings, such as its domain) for events written with
    /// `writer`: the plan itself when `writer` is its input schema, else the rules compiled
    /// against `writer`. Every path that reads events by a schema they carry goes through
    /// here: the registry path (a fetched writer version) and file mode (a container's own
    /// header), so what the pipeline is configured with is never lost on the way.
    /// Schemas are compared by Parsing Canonical Form (names, order, types): apache-avro's
    /// `==` on records does not tell field orders apart.
    pub fn for_writer(
        self: &Arc<Self>,
        writer: &Schema,
        unused: UnusedRules,
    ) -> Result<Arc<Plan>, Vec<String>> {
        if writer.canonical_form() == self.input.canonical_form() {
            return Ok(self.clone());
        }
        let mut plan = compile_with(writer, &self.rules, unused)?;
        plan.domain = self.domain.clone();
        Ok(Arc::new(plan))
    }

    /// The full name of the derived output record (`comms.sanitized.v1.CallEvent`).
    pub fn output_name(&self) -> String {
        match &self.output {
            Schema::Record(r) => r.name.fullname(None),
            _ => String::new(),
        }
    }

    /// Whether a sanitized container written with `writer` is this plan's output: the same
    /// fields at the same paths with the same types, in any order (the readers of sanitized
    /// files go by field name). `Err` names every path that differs. A raw file, a file of
    /// another config, or one edited after the fact is refused here, before it is read.
    pub fn check_sanitized(&self, writer: &Schema) -> Result<(), Vec<String>> {
        if writer.canonical_form() == self.output.canonical_form() {
            return Ok(());
        }
        let expected = leaf_types(&self.output);
        let found = leaf_types(writer);
        let mut problems = Vec::new();
        for (path, kind) in &found {
            match expected.get(path) {
                None => problems.push(format!(
                    "{path}: in the file, not a field of the sanitized schema"
                )),
                Some(want) if want != kind => problems.push(format!(
                    "{path}: {} in the file, {} in the sanitized schema",
                    crate::config::shorten(kind, 80),
                    crate::config::shorten(want, 80)
                )),
                Some(_) => {}
            }
        }
        for path in expected.keys().filter(|p| !found.contains_key(*p)) {
            problems.push(format!("{path}: in the sanitized schema, not in the file"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems)
    }
}

/// Every leaf of a record schema by dotted path (nested records, also inside unions, are
/// walked; anything else is a leaf), with the Parsing Canonical Form of its type.
pub fn leaf_types(schema: &Schema) -> BTreeMap<String, String> {
    fn walk(schema: &Schema, path: &str, out: &mut BTreeMap<String, String>) {
        match schema {
            Schema::Record(record) => {
                for field in &record.fields {
                    let path = if path.is_empty() {
                        field.name.clone()
                    } else {
                        format!("{path}.{}", field.name)
                    };
                    walk(&field.schema, &path, out);
                }
            }
            Schema::Union(union)
                if union
                    .variants()
                    .iter()
                    .any(|v| matches!(v, Schema::Record(_))) =>
            {
                // The union as a whole is a leaf too, so a branch added or removed is seen.
                out.insert(format!("{path} (union)"), schema.canonical_form());
                for variant in union.variants() {
                    if matches!(variant, Schema::Record(_)) {
                        walk(variant, path, out);
                    }
                }
            }
            other => {
                out.insert(path.to_owned(), other.canonical_form());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(schema, "", &mut out);
    out
}

/// The moves from the start of an output record of `plan` to the field at `path` (of any
/// type; a nullable record on the way is followed into its record), for reading published
/// values ([`crate::risk`]); `Err` says why there is none.
pub fn locate_output(plan: &Plan, path: &str) -> Result<Vec<Locate>, String> {
    let Schema::Record(root) = &plan.output else {
        return Err("the output schema is not a record".to_owned());
    };
    let rules = Rules::default();
    let mut walker = Walker {
        rules: &rules,
        used: BTreeSet::new(),
        errors: Vec::new(),
        named: HashMap::new(),
        emitted: HashMap::new(),
        root_name: root.name.fullname(None),
        region_paths: Vec::new(),
    };
    walker.remember(&root.name, &plan.output);
    let steps = walker.locate_value(root, path)?;
    match walker.errors.first() {
        Some(error) => Err(error.clone()),
        None => Ok(steps),
    }
}

/// What to do with a rule that names no field of the schema being compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnusedRules {
    /// An error: with one schema per pipeline, such a rule is a typo or a stale rule.
    Refuse,
    /// Allowed: with a schema registry, one pipeline's rules serve every version of its
    /// record, and a rule may be for a field that only some versions have.
    Allow,
}

/// Compiles `rules` against the writer schema `input`. On failure, one message per offending
/// path; each starts with that path and `": "` (the worker's `unclassified-field` reports
/// read the path from there).
pub fn compile(input: &Schema, rules: &Rules) -> Result<Plan, Vec<String>> {
    compile_with(input, rules, UnusedRules::Refuse)
}

/// [`compile`], choosing what a rule naming no field is.
pub fn compile_with(
    input: &Schema,
    rules: &Rules,
    unused: UnusedRules,
) -> Result<Plan, Vec<String>> {
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
    let mut unused_rules = Vec::new();
    for (path, _) in rules.iter() {
        if walker.used.contains(path) {
            continue;
        }
        match unused {
            UnusedRules::Refuse => walker
                .errors
                .push(format!("{path}: names no leaf field of {input_name}")),
            UnusedRules::Allow => unused_rules.push(path.to_owned()),
        }
    }
    if !walker.errors.is_empty() {
        return Err(walker.errors);
    }
    let output = crate::config::parse_schema_json(&output_json)
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
        unused_rules,
        domain: None,
    })
}
