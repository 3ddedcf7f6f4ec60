//! JSON Schema (`format = "json-schema"`): a producer's schema checked against a json
//! pipeline's rules, and the schema of what the pipeline publishes derived from it.
//!
//! Records are still walked by the pipeline's [`JsonPlan`], whatever their schema says: a key
//! no rule names is refused record by record, as in schemaless JSON. The schema is read for
//! two things the walk cannot give. A producer's new version with a property that no rule
//! classifies (or a type its rule does not take) is refused whole, before any of its records
//! is read, and its records are dead-lettered as `unclassified-field` as for Avro. And readers
//! of the analytics topic get a schema that says what is there: tokens as strings, sealed
//! values as base64 strings, derived attributes, dropped properties gone.
//!
//! Only what decides the types of the published keys is read: `type`, `properties`,
//! `required`, `items`, `additionalProperties: false`, local `$ref`s (`#/$defs/…`,
//! `#/definitions/…`) and a nullable `anyOf`/`oneOf` (`[S, {"type": "null"}]`, as Pydantic
//! writes `Optional`). Anything else that could change which keys or types a record has
//! (`allOf`, other unions, `patternProperties`, conditionals) is refused where a rule rewrites
//! or descends, and copied as it is under `keep`. docs/formats.md, "JSON Schema", is the
//! contract.

use std::path::Path;

use serde_json::{Map, Value};

use super::json::{Branch, JsonLeaf, JsonPlan, Node};
use super::{UnusedRules, OUTPUT_NAMESPACE};
use crate::config::UnknownKeys;
use crate::rules::{Action, Attribute};

/// Most `$ref`s followed in a row (a loop of references is refused, not followed forever).
const MAX_REF_HOPS: usize = 16;

/// Most `$ref`s followed in one schema's walk, and the deepest nesting of unions read.
const MAX_REFS: usize = 4096;
const MAX_UNION_DEPTH: usize = 16;

/// Keywords that change which keys or types an object or value has, and that this walk does
/// not read: refused where a rule rewrites a value or names an object's keys.
const UNREAD: &[&str] = &[
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
    "additionalItems",
    "contains",
    "$dynamicRef",
    "$recursiveRef",
];

/// A producer's JSON Schema, parsed.
#[derive(Debug, Clone)]
pub struct WriterSchema {
    /// Its `title`: what a json-schema pipeline is found by, as an Avro one by record name.
    pub title: String,
    pub root: Value,
}

impl WriterSchema {
    /// Parses schema text: a JSON object with a string `title`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let title =
            match root.get("title") {
                _ if !root.is_object() => return Err("not a JSON Schema object".to_owned()),
                Some(Value::String(title)) => title.clone(),
                Some(_) => return Err("its \"title\" is not a string".to_owned()),
                None => return Err(
                    "it has no \"title\": a json-schema pipeline is found by its schema's title"
                        .to_owned(),
                ),
            };
        // The output's subject and file are named by the title's last dotted part.
        let last = title.rsplit('.').next().unwrap_or_default();
        if last.is_empty()
            || title.len() > 256
            || !title
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(
                "its \"title\" is not a name (letters, digits, _ and -, in dotted parts, at most 256 characters)"
                    .to_owned(),
            );
        }
        Ok(WriterSchema { title, root })
    }

    /// The title of the derived output schema: the title's last dotted part in
    /// [`OUTPUT_NAMESPACE`] (`comms.v1.CallEvent` → `comms.sanitized.v1.CallEvent`), as Avro
    /// output records are named, so that the output never shares a subject with its input.
    pub fn output_title(&self) -> String {
        let last = self.title.rsplit('.').next().unwrap_or(&self.title);
        format!("{OUTPUT_NAMESPACE}.{last}")
    }
}

/// A json-schema pipeline's configured input schema and the output schema derived from it.
#[derive(Debug)]
pub struct JsonSchemaContract {
    pub input: WriterSchema,
    pub output: Value,
}

impl JsonSchemaContract {
    /// Reads the schema file `path` (bounded, a regular file) and derives its output schema.
    pub fn read(path: &Path, plan: &JsonPlan, unused: UnusedRules) -> Result<Self, Vec<String>> {
        let shown = path.display();
        let text = crate::fsio::read_text(path, "schema", crate::fsio::SCHEMA_LIMIT)
            .map_err(|e| vec![format!("input_schema: {e}")])?;
        let input = WriterSchema::parse(&text)
            .map_err(|why| vec![format!("input_schema {shown}: {why}")])?;
        let output = derive(plan, &input, unused)?;
        Ok(JsonSchemaContract { input, output })
    }
}

/// The JSON type(s) the schema `root` gives the value at a rule path (`device.device_id`),
/// through properties, array items, local `$ref`s and nullable unions, as compact JSON
/// (`"string"`, `["string","null"]`); `None` where the schema says no type there. For
/// `explain`: nothing is checked here ([`derive`] does that).
pub fn type_at(root: &Value, path: &str) -> Option<String> {
    fn follow<'v>(root: &'v Value, mut schema: &'v Value) -> Option<&'v Value> {
        for _ in 0..MAX_REF_HOPS {
            match schema.get("$ref").and_then(Value::as_str) {
                Some(reference) => schema = root.pointer(reference.strip_prefix('#')?)?,
                None => break,
            }
        }
        // A nullable union: its one schema that is not null.
        let member = ["anyOf", "oneOf"]
            .iter()
            .filter_map(|u| schema.get(*u)?.as_array())
            .flatten()
            .find(|m| m.get("type") != Some(&Value::from("null")));
        match member {
            Some(member) if member.get("$ref").is_some() => follow_once(root, member),
            Some(member) => Some(member),
            None => Some(schema),
        }
    }
    fn follow_once<'v>(root: &'v Value, schema: &'v Value) -> Option<&'v Value> {
        let reference = schema.get("$ref")?.as_str()?;
        root.pointer(reference.strip_prefix('#')?)
    }
    let mut schema = follow(root, root)?;
    let mut nullable = false;
    for key in path.split('.') {
        if schema.get("properties").is_none() {
            schema = follow(root, schema.get("items")?)?;
        }
        let property = schema.get("properties")?.get(key)?;
        nullable = ["anyOf", "oneOf"].iter().any(|u| {
            property
                .get(*u)
                .and_then(Value::as_array)
                .is_some_and(|members| {
                    members
                        .iter()
                        .any(|m| m.get("type") == Some(&Value::from("null")))
                })
        });
        schema = follow(root, property)?;
    }
    let found = schema.get("type")?.to_string().replace('"', "");
    Some(if nullable {
        format!("{found} or null")
    } else {
        found
    })
}

/// Checks `schema` against `plan` and derives the output schema; or every problem, each
/// starting with the path it is at. `unused`: whether a rule may name a property the schema
/// does not have (allowed with a registry, where another version may have it).
pub fn derive(
    plan: &JsonPlan,
    schema: &WriterSchema,
    unused: UnusedRules,
) -> Result<Value, Vec<String>> {
    let mut walk = Walk {
        root: &schema.root,
        refs_followed: 0,
        depth: 0,
        unknown: plan.unknown,
        unused,
        problems: Vec::new(),
        kept_defs: Default::default(),
    };
    let derived = walk.object(&plan.root, &schema.root, "");
    if !walk.problems.is_empty() {
        return Err(walk.problems);
    }
    let Some(Value::Object(mut body)) = derived else {
        return Err(vec!["the top level is not an object schema".to_owned()]);
    };
    if body.get("type") != Some(&Value::from("object")) {
        // A record is one JSON object: never an array, never null.
        return Err(vec![
            "(top level): its schema allows more than an object (a record is one JSON object)"
                .to_owned(),
        ]);
    }
    // `$schema` and `title` first, as people write them.
    let mut derived = Map::new();
    if let Some(dialect) = schema.root.get("$schema") {
        derived.insert("$schema".to_owned(), dialect.clone());
    }
    derived.insert("title".to_owned(), Value::String(schema.output_title()));
    body.remove("title");
    derived.extend(body);
    // A kept value's subschema is copied as it is, `$ref`s and all: what they point at too,
    // and nothing else of the input's definitions.
    for pointer in &walk.kept_defs {
        let mut parts = pointer.trim_start_matches("#/").splitn(2, '/');
        let (Some(defs), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some(found) = schema.root.get(defs).and_then(|d| d.get(name)) {
            let entry = derived
                .entry(defs.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(entry) = entry.as_object_mut() {
                entry.insert(name.to_owned(), found.clone());
            }
        }
    }
    Ok(Value::Object(derived))
}

/// The JSON types a (sub)schema lets a value have.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Types {
    null: bool,
    boolean: bool,
    object: bool,
    array: bool,
    /// `number`: any JSON number, fractions and exponents included.
    number: bool,
    /// `integer` only (what `time-truncate` and `bucket` take).
    integer: bool,
    string: bool,
}

impl Types {
    fn names(self) -> Vec<&'static str> {
        [
            (self.object, "object"),
            (self.array, "array"),
            (self.string, "string"),
            (self.number, "number"),
            (self.integer, "integer"),
            (self.boolean, "boolean"),
            (self.null, "null"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }
}

struct Walk<'s> {
    root: &'s Value,
    /// `$ref`s followed so far, in the whole walk.
    refs_followed: usize,
    /// How deep [`Walk::types`] is: a union that refers back to itself must end.
    depth: usize,
    unknown: UnknownKeys,
    unused: UnusedRules,
    problems: Vec<String>,
    /// The `$defs`/`definitions` entries that kept subschemas refer to, by pointer: only
    /// these go into the output (the others may describe raw values of rewritten keys).
    kept_defs: std::collections::BTreeSet<String>,
}

impl<'s> Walk<'s> {
    /// `schema` with its local `$ref`s followed.
    fn resolve(&mut self, mut schema: &'s Value, path: &str) -> Option<&'s Value> {
        for _ in 0..MAX_REF_HOPS {
            let Some(reference) = schema.get("$ref") else {
                return Some(schema);
            };
            // Every reference followed counts against one budget for the whole walk, so a
            // union or a branch that refers back to itself ends rather than recursing.
            self.refs_followed += 1;
            if self.refs_followed > MAX_REFS {
                self.problem(
                    path,
                    "more $refs than the worker follows in one schema (a loop?)",
                );
                return None;
            }
            let siblings = schema.as_object().into_iter().flatten();
            if siblings
                .map(|(k, _)| k.as_str())
                .any(|k| !matches!(k, "$ref" | "title" | "description" | "$comment"))
            {
                self.problem(
                    path,
                    "keywords beside a $ref, which the worker does not merge (move them into what it refers to)",
                );
                return None;
            }
            let target = reference
                .as_str()
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|pointer| self.root.pointer(pointer));
            match target {
                Some(target) => schema = target,
                None => {
                    self.problem(path, "a $ref that is not to this schema's own $defs (only local references are read)");
                    return None;
                }
            }
        }
        self.problem(path, "$refs that go on past 16 hops (a loop?)");
        None
    }

    fn problem(&mut self, path: &str, why: &str) {
        // Property names come from whoever registered the schema: control characters are
        // escaped so that none reaches a terminal or a log line as it is.
        let at: String = if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path.chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect()
        };
        self.problems.push(format!("{at}: {why}"));
    }

    /// The types `schema` allows, and the subschema of its non-null part (a nullable
    /// `anyOf`/`oneOf` unwrapped); `None` (with a problem) where the walk cannot tell.
    fn types(&mut self, schema: &'s Value, path: &str) -> Option<(Types, &'s Value)> {
        if self.depth >= MAX_UNION_DEPTH {
            self.problem(path, "unions nested deeper than the worker reads (a loop?)");
            return None;
        }
        self.depth += 1;
        let found = self.types_of(schema, path);
        self.depth -= 1;
        found
    }

    fn types_of(&mut self, schema: &'s Value, path: &str) -> Option<(Types, &'s Value)> {
        let schema = self.resolve(schema, path)?;
        if schema == &Value::Bool(true) || schema.as_object().is_some_and(|o| o.is_empty()) {
            self.problem(path, "its schema allows any value: give it a type");
            return None;
        }
        let Some(object) = schema.as_object() else {
            self.problem(path, "its schema is not an object");
            return None;
        };
        if let Some(keyword) = UNREAD.iter().find(|k| object.contains_key(**k)) {
            self.problem(
                path,
                &format!("its schema uses {keyword}, which the worker does not read where a rule rewrites a value or names keys (keep it, or say its type plainly)"),
            );
            return None;
        }
        for union in ["anyOf", "oneOf"] {
            let Some(members) = object.get(union) else {
                continue;
            };
            let members: Vec<&'s Value> = members.as_array().into_iter().flatten().collect();
            let is_null = |m: &Value| m.get("type") == Some(&Value::String("null".to_owned()));
            let others: Vec<&'s Value> = members.iter().copied().filter(|m| !is_null(m)).collect();
            if others.len() != 1 || object.contains_key("type") {
                self.problem(
                    path,
                    &format!("its schema's {union} is not one schema or null (the worker reads only that union)"),
                );
                return None;
            }
            let (mut types, inner) = self.types(others[0], path)?;
            types.null |= members.len() > others.len();
            return Some((types, inner));
        }
        let mut types = Types::default();
        let names: Vec<&str> = match object.get("type") {
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Array(names))
                if !names.is_empty() && names.iter().all(Value::is_string) =>
            {
                names.iter().filter_map(Value::as_str).collect()
            }
            Some(_) => {
                self.problem(path, "its type is not a type name or a list of them");
                return None;
            }
            _ => {
                self.problem(path, "its schema gives no type: say which it is");
                return None;
            }
        };
        for name in names {
            match name {
                "null" => types.null = true,
                "boolean" => types.boolean = true,
                "object" => types.object = true,
                "array" => types.array = true,
                "number" => types.number = true,
                "integer" => types.integer = true,
                "string" => types.string = true,
                _ => {
                    self.problem(path, "its schema names a type JSON Schema does not have");
                    return None;
                }
            }
        }
        Some((types, schema))
    }

    /// The output schema of an object (or array of objects) whose keys `branch` has rules for.
    fn object(&mut self, branch: &Branch, schema: &'s Value, path: &str) -> Option<Value> {
        let (types, schema) = self.types(schema, path)?;
        if types.string
            || types.number
            || types.integer
            || types.boolean
            || !(types.object || types.array)
        {
            self.problem(
                path,
                &format!(
                    "rules name its keys, so it is an object (or array of objects), but its schema allows {}",
                    types.names().join(", ")
                ),
            );
            return None;
        }
        let mut out = copy_annotations(schema);
        let mut out_types = Vec::new();
        if types.object {
            out_types.push("object");
            self.properties(branch, schema, path, &mut out);
        }
        if types.array {
            out_types.push("array");
            let items = schema.get("items").unwrap_or(&Value::Bool(true));
            let (item_types, item_schema) = self.types(items, path)?;
            if item_types.array || !item_types.object {
                self.problem(
                    path,
                    "an array whose items are not objects, where rules name keys",
                );
                return None;
            }
            let mut items_out = copy_annotations(item_schema);
            self.properties(branch, item_schema, path, &mut items_out);
            items_out.insert("type".to_owned(), type_value(&["object"], item_types.null));
            out.insert("items".to_owned(), Value::Object(items_out));
        }
        out.insert("type".to_owned(), type_value(&out_types, types.null));
        Some(Value::Object(out))
    }

    /// Fills `out` with the output `properties`, `required` and `additionalProperties` of the
    /// object schema `schema`.
    fn properties(
        &mut self,
        branch: &Branch,
        schema: &'s Value,
        path: &str,
        out: &mut Map<String, Value>,
    ) {
        let properties: Option<&'s Map<String, Value>> = match schema.get("properties") {
            Some(Value::Object(properties)) => Some(properties),
            None => None,
            Some(_) => {
                self.problem(path, "its properties is not an object");
                return;
            }
        };
        let mut derived = Map::new();
        for (key, subschema) in properties.into_iter().flatten() {
            let key_path = join(path, key);
            match branch.keys.get(key.as_str()) {
                None if self.unknown == UnknownKeys::Drop => {}
                None if key.contains('.') => self.problem(
                    &key_path,
                    "a property whose name has a '.', which no rule path can name (a pipeline with unknown = \"drop\" leaves it out)",
                ),
                None => self.problem(
                    &key_path,
                    "a property without a rule (add one; a pipeline with unknown = \"drop\" leaves it out)",
                ),
                Some(Node::Branch(inner)) => {
                    if let Some(object) = self.object(inner, subschema, &key_path) {
                        derived.insert(key.clone(), object);
                    }
                }
                Some(Node::Leaf(leaf)) => self.leaf(leaf, key, subschema, &mut derived),
            }
        }
        if self.unused == UnusedRules::Refuse {
            for key in branch.keys.keys() {
                if !properties.is_some_and(|p| p.contains_key(key.as_ref())) {
                    self.problem(
                        &join(path, key),
                        "a rule names a property the schema does not have",
                    );
                }
            }
        }
        let required: Vec<Value> = schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|name| name.as_str().is_some_and(|n| derived.contains_key(n)))
            .cloned()
            .collect();
        out.insert("properties".to_owned(), Value::Object(derived));
        if !required.is_empty() {
            out.insert("required".to_owned(), Value::Array(required));
        }
        // Only keys with rules are published: a schema that allowed no others still does not.
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            out.insert("additionalProperties".to_owned(), Value::Bool(false));
        }
    }

    /// Records the definitions a kept subschema refers to (and those they refer to); `false`,
    /// with a problem, where it refers elsewhere (into `properties`, whose output is rewritten,
    /// or outside the document), or where it lets an object through (refused record by record
    /// under `keep`: name its keys instead).
    fn kept_refs(&mut self, schema: &'s Value, path: &str) -> bool {
        if schema.get("type").is_some_and(|t| {
            t == "object" || t.as_array().is_some_and(|a| a.contains(&"object".into()))
        }) {
            self.problem(path, "its schema allows an object, which keep does not take (rules name an object's keys)");
            return false;
        }
        let mut pending: Vec<&'s Value> = vec![schema];
        while let Some(value) = pending.pop() {
            match value {
                Value::Object(object) => {
                    if let Some(reference) = object.get("$ref") {
                        let Some(pointer) = reference.as_str().filter(|r| {
                            let mut parts = r.splitn(4, '/');
                            matches!(
                                (parts.next(), parts.next(), parts.next(), parts.next()),
                                (Some("#"), Some("$defs" | "definitions"), Some(name), None) if !name.is_empty()
                            )
                        }) else {
                            self.problem(path, "a kept value's $ref that is not to an entry of this schema's $defs or definitions");
                            return false;
                        };
                        if self.kept_defs.len() >= MAX_REFS {
                            self.problem(path, "more definitions than the worker copies");
                            return false;
                        }
                        if self.kept_defs.insert(pointer.to_owned()) {
                            match self.root.pointer(&pointer[1..]) {
                                Some(target) => pending.push(target),
                                None => {
                                    self.problem(path, "a kept value's $ref to a definition the schema does not have");
                                    return false;
                                }
                            }
                        }
                    }
                    pending.extend(object.values());
                }
                Value::Array(items) => pending.extend(items),
                _ => {}
            }
        }
        true
    }

    /// Adds the output property (and derived properties) of a key with a leaf rule.
    fn leaf(
        &mut self,
        leaf: &JsonLeaf,
        key: &str,
        schema: &'s Value,
        derived: &mut Map<String, Value>,
    ) {
        let path = leaf.path.as_ref();
        match leaf.action {
            Action::Drop => return,
            Action::Keep => {
                if self.kept_refs(schema, path) {
                    derived.insert(key.to_owned(), schema.clone());
                }
                return;
            }
            _ => {}
        }
        let Some((types, inner)) = self.types(schema, path) else {
            return;
        };
        // An array is rewritten item by item: its items' types are what the action meets.
        let (scalar, items) = if types.array {
            let items = inner.get("items").unwrap_or(&Value::Bool(true));
            let Some((item_types, _)) = self.types(items, path) else {
                return;
            };
            if item_types.array {
                self.problem(path, "an array of arrays (refused under every rule)");
                return;
            }
            (
                Types {
                    array: false,
                    null: false,
                    ..types
                },
                Some(item_types),
            )
        } else {
            (
                Types {
                    null: false,
                    ..types
                },
                None,
            )
        };
        let takes = takes(leaf.action);
        for types in std::iter::once(scalar).chain(items) {
            let refused: Vec<&str> = Types {
                null: false,
                ..types
            }
            .names()
            .into_iter()
            .filter(|name| !takes.contains(name))
            .collect();
            if !refused.is_empty() {
                self.problem(
                    path,
                    &format!(
                        "its schema allows {}, which {} does not take (it takes {})",
                        refused.join(", "),
                        leaf.action.name(),
                        takes.join(", ")
                    ),
                );
                return;
            }
        }
        let written = written(leaf);
        // A withheld person's sealed value is null, whatever the schema said.
        let sealed = leaf.action == Action::Encrypt;
        let scalar_out = |nullable: bool| {
            let mut out = Map::new();
            out.insert(
                "type".to_owned(),
                type_value(&[written], nullable || sealed),
            );
            if sealed {
                out.insert("contentEncoding".to_owned(), "base64".into());
            }
            out
        };
        let mut out = copy_text(schema);
        let mut out_types: Vec<&str> = Vec::new();
        let has_scalar = scalar != Types::default();
        if has_scalar {
            out_types.push(written);
        }
        if let Some(item_types) = items {
            out_types.push("array");
            out.insert(
                "items".to_owned(),
                Value::Object(scalar_out(item_types.null)),
            );
        }
        out.insert(
            "type".to_owned(),
            type_value(&out_types, types.null || sealed),
        );
        if sealed && has_scalar {
            out.insert("contentEncoding".to_owned(), "base64".into());
        }
        derived.insert(key.to_owned(), Value::Object(out));
        for (attribute, _) in &leaf.derived_keys {
            let value_type = match attribute {
                Attribute::CallingCode => "integer",
                _ => "string",
            };
            let one = type_value(&[value_type], true);
            let attribute_schema = match items {
                Some(_) if !has_scalar => serde_json::json!({
                    "type": type_value(&["array"], true),
                    "items": { "type": one },
                }),
                Some(_) => serde_json::json!({
                    "type": type_value(&["array", value_type], true),
                    "items": { "type": one },
                }),
                None => serde_json::json!({ "type": one }),
            };
            derived.insert(attribute.field_name(key), attribute_schema);
        }
    }
}

/// The JSON types an action takes (docs/formats.md, "Each action on each JSON type").
fn takes(action: Action) -> &'static [&'static str] {
    match action {
        Action::Keep | Action::Drop => {
            &["object", "array", "string", "number", "integer", "boolean"]
        }
        Action::Token(_) | Action::IpPrefix | Action::IpTruncate { .. } => {
            &["string", "number", "integer"]
        }
        Action::Encrypt => &["string"],
        // The walk takes integer literals only (a fraction or exponent is refused).
        Action::TimeTruncate(_) | Action::Bucket { .. } => &["integer"],
    }
}

/// The JSON type an action writes (for a value that is not null).
fn written(leaf: &JsonLeaf) -> &'static str {
    match leaf.action {
        Action::TimeTruncate(_) | Action::Bucket { label: false } => "integer",
        _ => "string",
    }
}

/// `"t"`, or `["t", "null"]`, or `["t1", "t2", …]`.
fn type_value(types: &[&str], nullable: bool) -> Value {
    let mut names: Vec<Value> = types.iter().map(|t| Value::from(*t)).collect();
    if nullable {
        names.push("null".into());
    }
    match names.len() {
        1 => names.remove(0),
        _ => Value::Array(names),
    }
}

/// What an object's output schema keeps of its input's own keywords: text only. Bounds on
/// its keys (`minProperties`, `dependentRequired`, …) no longer hold once keys are dropped or
/// derived, and examples or extensions (`x-…`) may quote raw values.
fn copy_annotations(schema: &Value) -> Map<String, Value> {
    const KEPT: &[&str] = &["title", "description", "$comment", "deprecated"];
    KEPT.iter()
        .filter_map(|k| Some(((*k).to_owned(), schema.get(*k)?.clone())))
        .collect()
}

/// A rewritten value's `title` and `description`: its bounds, enum, format, pattern and
/// examples described the raw value (and may quote one), so they are not carried over.
fn copy_text(schema: &Value) -> Map<String, Value> {
    ["title", "description"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), schema.get(k)?.clone())))
        .collect()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}
