//! Protobuf (`format = "protobuf"`): a producer's `.proto` compiled, its message checked
//! against a pipeline's rules, and the `.proto` of what the pipeline publishes derived from it.
//!
//! A Protobuf record is read through its canonical JSON mapping (proto field names, 64-bit
//! integers as numbers), walked by the pipeline's [`JsonPlan`] exactly as a JSON record is, and
//! written back as a message of the derived schema ([`crate::transform::protobuf`]). So one rule
//! language, one key tree and one set of actions serve Avro's siblings: a rule path names
//! fields (`device.device_id`), a repeated field stands for its items, and a field no rule
//! names is refused, here before any record of its schema is read.
//!
//! What the check reads: proto3 messages, nested messages, `repeated`, `oneof`, `optional`,
//! enums (kept), maps (kept whole), and the well-known `Timestamp`, `Duration` and wrapper
//! types (`StringValue`, …: a nullable scalar). `Any`, `Struct` and the other well-known
//! types, bytes under a rewriting action and proto2 are refused where a rule would publish
//! them. What protox is given is bounded first (text, statements, nesting), and a config's
//! imports are `.proto` files beside it. docs/formats.md, "Protobuf", is the contract.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, Syntax,
};
use protox::file::{File, FileResolver, GoogleFileResolver};

use super::json::{Branch, JsonLeaf, JsonPlan, Node};
use super::{UnusedRules, OUTPUT_NAMESPACE};
use crate::config::UnknownKeys;
use crate::rules::{Action, Attribute};

/// Most files one schema may import (its references, and theirs), and the most messages one
/// derived schema may hold.
const MAX_FILES: usize = 64;
const MAX_MESSAGES: usize = 1024;

/// What protox is given at most, checked before it reads a byte: its parser and resolver
/// recurse by nesting (a file of a thousand nested messages overflows a thread's stack) and
/// some of its checks take time quadratic in a message's fields. Call-event schemas are a few
/// kilobytes of a few hundred statements, nested a few levels.
const MAX_TEXT: usize = 1 << 20;
const MAX_STATEMENTS: usize = 4096;
const MAX_NESTING: usize = 32;

/// Derived attribute fields are numbered from here, by their field's number, so that they
/// keep their numbers across writer versions (a field's attributes are always the same ones).
const DERIVED_BASE: u32 = 100_000_000;
/// The highest field number whose attributes fit below Protobuf's largest field number.
const MAX_DERIVED_FIELD: u32 = (536_870_911 - DERIVED_BASE) / 8 - 1;

/// The name the registry's (or the config's) main file is compiled under.
const MAIN_FILE: &str = "pseudonymizer/input.proto";

/// Well-known types read as the scalars they wrap (a `null` JSON value when absent).
const WRAPPERS: &[(&str, WrappedKind)] = &[
    ("google.protobuf.StringValue", WrappedKind::String),
    ("google.protobuf.BytesValue", WrappedKind::Bytes),
    ("google.protobuf.BoolValue", WrappedKind::Bool),
    ("google.protobuf.Int32Value", WrappedKind::Integer),
    ("google.protobuf.UInt32Value", WrappedKind::Integer),
    ("google.protobuf.Int64Value", WrappedKind::Integer),
    ("google.protobuf.UInt64Value", WrappedKind::Integer),
    ("google.protobuf.FloatValue", WrappedKind::Number),
    ("google.protobuf.DoubleValue", WrappedKind::Number),
];

/// Well-known types whose JSON mapping is a string (RFC 3339, `"1.5s"`): kept as they are.
const TEXT_TYPES: &[&str] = &["google.protobuf.Timestamp", "google.protobuf.Duration"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum WrappedKind {
    String,
    Bytes,
    Bool,
    Integer,
    Number,
}

/// A producer's message: the compiled files and the message its records are.
#[derive(Debug, Clone)]
pub struct WriterProto {
    pub message: MessageDescriptor,
}

impl WriterProto {
    /// The message `name` (or the file's one top-level message) of the compiled `main`.
    fn pick(pool: &DescriptorPool, name: Option<&str>) -> Result<Self, String> {
        let Some(file) = pool.get_file_by_name(MAIN_FILE) else {
            return Err("the schema did not compile to a file".to_owned());
        };
        if file.syntax() != Syntax::Proto3 {
            return Err(
                "it is not proto3 (it needs syntax = \"proto3\"; proto2 and editions are not read)"
                    .to_owned(),
            );
        }
        let message = match name {
            Some(name) => match pool.get_message_by_name(name) {
                Some(m) if m.parent_file().name() == MAIN_FILE => m,
                Some(_) => {
                    return Err(format!(
                        "message {} is defined in a file it imports, not in the schema itself (name the schema's own message)",
                        crate::config::quote(name)
                    ))
                }
                None => {
                    return Err(format!(
                        "it defines no message {}",
                        crate::config::quote(name)
                    ))
                }
            },
            None => {
                let mut top = file.messages();
                match (top.next(), top.next()) {
                    (Some(only), None) => only,
                    _ => {
                        return Err(
                            "it defines more or fewer than one top-level message: name the pipeline's with message = \"package.Message\""
                                .to_owned(),
                        )
                    }
                }
            }
        };
        Ok(WriterProto { message })
    }

    /// Compiles a `.proto` file of the config, its imports read beside it (bounded regular
    /// files) or from the well-known types.
    pub fn read(path: &Path, message: Option<&str>) -> Result<Self, String> {
        let text = crate::fsio::read_text(path, "schema", crate::fsio::SCHEMA_LIMIT)
            .map_err(|e| e.to_string())?;
        let resolver = Sources::new(text, BTreeMap::new(), path.parent().map(Path::to_path_buf));
        let pool = compile(resolver)?;
        Self::pick(&pool, message)
    }

    /// Compiles a registry schema: `.proto` text or (as Confluent's serializers register it)
    /// a base64 `FileDescriptorProto`, with the files it imports by name (its references).
    pub fn from_registry(
        text: &str,
        imports: BTreeMap<String, String>,
    ) -> Result<DescriptorPool, String> {
        if imports.len() > MAX_FILES {
            return Err(format!("it imports more than {MAX_FILES} files"));
        }
        compile(Sources::new(text.to_owned(), imports, None))
    }

    /// The message of a compiled registry schema that `name` names.
    pub fn in_pool(pool: &DescriptorPool, name: &str) -> Result<Self, String> {
        Self::pick(pool, Some(name))
    }

    /// The message names a compiled registry schema defines, nested ones included.
    pub fn message_names(pool: &DescriptorPool) -> Vec<String> {
        pool.all_messages()
            .filter(|m| m.parent_file().name() == MAIN_FILE)
            .map(|m| m.full_name().to_owned())
            .collect()
    }

    /// The message-index list Confluent's wire format gives this message (its position among
    /// the file's top-level messages, then among each parent's nested ones).
    pub fn indexes(&self) -> Vec<i32> {
        let mut indexes = Vec::new();
        let mut message = self.message.clone();
        loop {
            let parent = message.parent_message();
            let siblings: Vec<MessageDescriptor> = match &parent {
                Some(parent) => parent.child_messages().collect(),
                None => message.parent_file().messages().collect(),
            };
            let at = siblings.iter().position(|m| *m == message).unwrap_or(0);
            indexes.push(at as i32);
            match parent {
                Some(parent) => message = parent,
                None => break,
            }
        }
        indexes.reverse();
        indexes
    }

    /// The derived output message's full name: the input's name in [`OUTPUT_NAMESPACE`].
    pub fn output_name(&self) -> String {
        format!("{OUTPUT_NAMESPACE}.{}", self.message.name())
    }
}

/// The files a compile may open: the main one, named imports (a registry's references), the
/// directory of a config's file, and the well-known types.
struct Sources {
    main: String,
    files: BTreeMap<String, String>,
    dir: Option<PathBuf>,
    opened: std::cell::Cell<usize>,
    text_bytes: std::cell::Cell<usize>,
    statements: std::cell::Cell<usize>,
}

impl Sources {
    fn new(main: String, files: BTreeMap<String, String>, dir: Option<PathBuf>) -> Self {
        Sources {
            main,
            files,
            dir,
            opened: Default::default(),
            text_bytes: Default::default(),
            statements: Default::default(),
        }
    }
}

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let refuse = |why: &str| {
            Err(protox::Error::new(match name {
                MAIN_FILE => format!("the schema: {why}"),
                _ => format!("import {}: {why}", crate::config::quote(name)),
            }))
        };
        self.opened.set(self.opened.get() + 1);
        if self.opened.get() > MAX_FILES {
            return refuse(&format!("more than {MAX_FILES} files imported"));
        }
        if name.starts_with("google/protobuf/") {
            return GoogleFileResolver::new().open_file(name);
        }
        let text = if name == MAIN_FILE {
            self.main.clone()
        } else if let Some(text) = self.files.get(name) {
            text.clone()
        } else {
            let Some(dir) = &self.dir else {
                return refuse("not among the schema's references");
            };
            match read_import(dir, name) {
                Ok(text) => text,
                Err(why) => return refuse(&why),
            }
        };
        // Each file's share of the bounds, counted before protox parses it.
        let total = self.text_bytes.get() + text.len();
        self.text_bytes.set(total);
        if total > MAX_TEXT {
            return refuse(&format!(
                "the schema and its imports are more than {MAX_TEXT} bytes"
            ));
        }
        let (statements, nesting) = shape_of(&text);
        let statements = self.statements.get() + statements;
        self.statements.set(statements);
        if statements > MAX_STATEMENTS {
            return refuse(&format!(
                "the schema and its imports have more than {MAX_STATEMENTS} statements"
            ));
        }
        if nesting > MAX_NESTING {
            return refuse(&format!("blocks nested more than {MAX_NESTING} deep"));
        }
        file_of(name, &text)
    }
}

/// An import of a config's `.proto`: a `.proto` file under the schema's own directory,
/// reached by no symbolic link (never above or beside it, never a file of another kind).
fn read_import(dir: &Path, name: &str) -> Result<String, String> {
    let relative = Path::new(name);
    if !name.ends_with(".proto")
        || relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(
            "an import is a .proto file named relative to the schema's directory, without '..'"
                .to_owned(),
        );
    }
    let mut path = dir.to_path_buf();
    for component in relative.components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err("reached through a symbolic link, which imports may not be".to_owned())
            }
            Ok(_) => {}
            Err(_) => return Err("no such file beside the schema".to_owned()),
        }
    }
    crate::fsio::read_text(&path, "schema", crate::fsio::SCHEMA_LIMIT).map_err(|e| e.to_string())
}

/// How many statements (`;`) a `.proto` text has and how deep its blocks (`{`, `[`, `(`, `<`)
/// nest, comments and string literals skipped: protox is given nothing past the bounds.
fn shape_of(text: &str) -> (usize, usize) {
    let bytes = text.as_bytes();
    let (mut statements, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b';' => statements += 1,
            b'{' | b'[' | b'(' | b'<' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' | b'>' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    (statements, deepest)
}

/// A file from its text: `.proto` source, or a base64 `FileDescriptorProto` (renamed to the
/// name it is imported by).
fn file_of(name: &str, text: &str) -> Result<File, protox::Error> {
    use base64::Engine as _;
    let trimmed = text.trim();
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(trimmed) {
        if let Ok(mut proto) = prost_types::FileDescriptorProto::decode(bytes.as_slice()) {
            // The same bounds as for text: nesting and statements (fields, values) counted.
            let (statements, nesting) = descriptor_shape(&proto.message_type, 1);
            if nesting > MAX_NESTING || statements > MAX_STATEMENTS {
                return Err(protox::Error::new(format!(
                    "{}: messages nested more than {MAX_NESTING} deep or more than {MAX_STATEMENTS} fields",
                    crate::config::quote(name)
                )));
            }
            proto.name = Some(name.to_owned());
            return Ok(File::from_file_descriptor_proto(proto));
        }
    }
    File::from_source(name, text)
}

/// The fields and enum values of descriptors and their nested ones, and how deep they nest.
fn descriptor_shape(messages: &[prost_types::DescriptorProto], depth: usize) -> (usize, usize) {
    let (mut count, mut deepest) = (0, depth);
    for message in messages {
        count += message.field.len()
            + message
                .enum_type
                .iter()
                .map(|e| e.value.len())
                .sum::<usize>();
        if depth <= MAX_NESTING {
            let (inner, inner_depth) = descriptor_shape(&message.nested_type, depth + 1);
            count += inner;
            deepest = deepest.max(inner_depth);
        } else {
            deepest = depth + 1;
        }
    }
    (count, deepest)
}

fn compile(sources: Sources) -> Result<DescriptorPool, String> {
    let mut compiler = protox::Compiler::with_file_resolver(sources);
    compiler.include_imports(true);
    compiler.open_file(MAIN_FILE).map_err(|e| {
        let file = match e.file() {
            Some(file) if file != MAIN_FILE => format!(" (in {})", crate::config::quote(file)),
            _ => String::new(),
        };
        format!("it does not compile{file}: {}", one_line(&e.to_string()))
    })?;
    Ok(compiler.descriptor_pool())
}

fn one_line(text: &str) -> String {
    crate::config::shorten(&text.replace(['\n', '\r'], " "), 400)
}

/// A protobuf pipeline's input message and the output message derived from it.
#[derive(Debug)]
pub struct ProtoContract {
    pub input: WriterProto,
    /// The pipeline's key tree as this version's records are walked by it: the pipeline's,
    /// with the maps the schema describes and the rules keep marked to be copied whole.
    pub plan: Arc<JsonPlan>,
    /// The message-index list records of the input message carry.
    pub indexes: Vec<i32>,
    /// The derived `.proto` text (what is registered and what `schema derive` writes).
    pub output_text: String,
    pub output: MessageDescriptor,
}

impl ProtoContract {
    /// Reads the config's `.proto` and derives the output.
    pub fn read(
        path: &Path,
        message: Option<&str>,
        plan: &JsonPlan,
        unused: UnusedRules,
    ) -> Result<Self, Vec<String>> {
        let shown = path.display();
        let input = WriterProto::read(path, message)
            .map_err(|why| vec![format!("input_schema {shown}: {why}")])?;
        derive(plan, input, unused)
    }

    /// The output's full name.
    pub fn output_name(&self) -> &str {
        self.output.full_name()
    }
}

/// Checks `input` against `plan` and derives the output message; or every problem, each
/// starting with the path it is at.
pub fn derive(
    plan: &JsonPlan,
    input: WriterProto,
    unused: UnusedRules,
) -> Result<ProtoContract, Vec<String>> {
    let mut walk = Walk {
        unknown: plan.unknown,
        unused,
        problems: Vec::new(),
        messages: 0,
        imports: BTreeSet::new(),
        kept_maps: Vec::new(),
    };
    let root = walk.message(&plan.root, &input.message, "", input.message.name());
    if !walk.problems.is_empty() {
        return Err(walk.problems);
    }
    let mut text = String::new();
    text.push_str(&format!(
        "// Derived by pseudonymizer from {}: what its pipeline publishes.\nsyntax = \"proto3\";\n\npackage {OUTPUT_NAMESPACE};\n\n",
        input.message.full_name()
    ));
    for import in &walk.imports {
        text.push_str(&format!("import \"{import}\";\n"));
    }
    if !walk.imports.is_empty() {
        text.push('\n');
    }
    root.render(&mut text, 0);
    let pool = compile(Sources::new(text.clone(), BTreeMap::new(), None)).map_err(|why| {
        vec![format!(
            "(top level): the derived schema: {why} (names clash in what the rules keep: rename or drop one)"
        )]
    })?;
    let output_name = input.output_name();
    let output = pool.get_message_by_name(&output_name).ok_or_else(|| {
        vec![format!(
            "(top level): the derived schema has no {output_name}"
        )]
    })?;
    let mut version_plan = plan.clone();
    for path in &walk.kept_maps {
        mark_kept_object(&mut version_plan.root, path);
    }
    Ok(ProtoContract {
        plan: Arc::new(version_plan),
        indexes: input.indexes(),
        input,
        output_text: text,
        output,
    })
}

/// The Protobuf type of the field at a rule path (`device.device_id`), as `.proto` text
/// (`repeated string`); `None` where the message has no such field. For `explain`.
pub fn type_at(message: &MessageDescriptor, path: &str) -> Option<String> {
    let mut message = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = message.get_field_by_name(part)?;
        if parts.peek().is_none() {
            return Some(field_type(&field));
        }
        match field.kind() {
            Kind::Message(inner) if !field.is_map() => message = inner,
            _ => return None,
        }
    }
    None
}

fn field_type(field: &FieldDescriptor) -> String {
    let label = if field.is_list() { "repeated " } else { "" };
    format!("{label}{}", kind_name(&field.kind()))
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Sint32 => "sint32".into(),
        Kind::Sint64 => "sint64".into(),
        Kind::Fixed32 => "fixed32".into(),
        Kind::Fixed64 => "fixed64".into(),
        Kind::Sfixed32 => "sfixed32".into(),
        Kind::Sfixed64 => "sfixed64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
    }
}

/// What a value of a field is, as the rules see it (its JSON mapping).
#[derive(Debug, Clone, Copy, PartialEq)]
enum ValueKind {
    String,
    Bytes,
    Bool,
    Integer,
    Number,
    Enum,
    /// `Timestamp`, `Duration`: RFC 3339 or `"1.5s"` text.
    Text,
}

impl ValueKind {
    fn name(self) -> &'static str {
        match self {
            ValueKind::String => "string",
            ValueKind::Bytes => "bytes",
            ValueKind::Bool => "bool",
            ValueKind::Integer => "an integer",
            ValueKind::Number => "a floating-point number",
            ValueKind::Enum => "an enum",
            ValueKind::Text => "a Timestamp or Duration",
        }
    }
}

/// One field of a derived message.
#[derive(Debug)]
struct OutField {
    /// `optional `, `repeated ` or nothing.
    label: &'static str,
    type_name: String,
    name: String,
    number: u32,
    /// The input's oneof it stays in (never a synthetic one).
    oneof: Option<String>,
}

/// A derived message: its fields, and the messages and enums nested in it.
#[derive(Debug, Default)]
struct OutMessage {
    name: String,
    fields: Vec<OutField>,
    nested: Vec<OutMessage>,
    enums: Vec<EnumDescriptor>,
}

impl OutMessage {
    fn render(&self, text: &mut String, depth: usize) {
        let pad = "  ".repeat(depth);
        text.push_str(&format!("{pad}message {} {{\n", self.name));
        let mut oneofs_done: BTreeSet<&str> = BTreeSet::new();
        for field in &self.fields {
            match &field.oneof {
                None => text.push_str(&format!(
                    "{pad}  {}{} {} = {};\n",
                    field.label, field.type_name, field.name, field.number
                )),
                Some(oneof) => {
                    if !oneofs_done.insert(oneof) {
                        continue;
                    }
                    text.push_str(&format!("{pad}  oneof {oneof} {{\n"));
                    for member in self
                        .fields
                        .iter()
                        .filter(|f| f.oneof.as_deref() == Some(oneof))
                    {
                        text.push_str(&format!(
                            "{pad}    {} {} = {};\n",
                            member.type_name, member.name, member.number
                        ));
                    }
                    text.push_str(&format!("{pad}  }}\n"));
                }
            }
        }
        for nested in &self.nested {
            nested.render(text, depth + 1);
        }
        for e in &self.enums {
            let inner = "  ".repeat(depth + 1);
            text.push_str(&format!("{inner}enum {} {{\n", e.name()));
            // In the order declared: the first of aliases is the value's name in every
            // language's generated code and in the JSON mapping.
            let values = &e.enum_descriptor_proto().value;
            let numbers: Vec<i32> = values.iter().map(|v| v.number()).collect();
            let unique: BTreeSet<i32> = numbers.iter().copied().collect();
            if unique.len() < numbers.len() {
                text.push_str(&format!("{inner}  option allow_alias = true;\n"));
            }
            for value in values {
                text.push_str(&format!(
                    "{inner}  {} = {};\n",
                    value.name(),
                    value.number()
                ));
            }
            text.push_str(&format!("{inner}}}\n"));
        }
        text.push_str(&format!("{pad}}}\n"));
    }

    /// Whether `name` is a symbol of this message's scope already: a field, a nested message
    /// or enum, or a value of a nested enum (enum values share their parent's scope).
    fn taken(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
            || self.nested.iter().any(|m| m.name == name)
            || self
                .enums
                .iter()
                .any(|e| e.name() == name || e.values().any(|v| v.name() == name))
    }

    /// Copies a kept enum into this message (once), and answers the type name its fields use.
    /// Where its name or one of its values' names is taken in this scope (two enums with an
    /// `UNKNOWN` value, say, declared apart in the input), it goes into a message of its own,
    /// `<Enum>Scope`: the wire and the JSON mapping use value numbers and names, never the
    /// enum's path, so readers see the same values.
    fn place_enum(&mut self, e: &EnumDescriptor) -> String {
        if self.enums.iter().any(|x| x == e) {
            return e.name().to_owned();
        }
        for scope in &self.nested {
            if scope.name.ends_with("Scope") && scope.enums.iter().any(|x| x == e) {
                return format!("{}.{}", scope.name, e.name());
            }
        }
        if !self.taken(e.name()) && !e.values().any(|v| self.taken(v.name())) {
            self.enums.push(e.clone());
            return e.name().to_owned();
        }
        let scope = self.nested_name(&format!("{}Scope", e.name()), "");
        self.nested.push(OutMessage {
            name: scope.clone(),
            enums: vec![e.clone()],
            ..OutMessage::default()
        });
        format!("{scope}.{}", e.name())
    }

    /// A name for a nested type, unique in this message's scope.
    fn nested_name(&self, wanted: &str, field: &str) -> String {
        let taken = |n: &str| self.taken(n);
        if !taken(wanted) {
            return wanted.to_owned();
        }
        let mut name = format!("{wanted}_{field}");
        while taken(&name) {
            name.push('_');
        }
        name
    }
}

struct Walk {
    unknown: UnknownKeys,
    unused: UnusedRules,
    problems: Vec<String>,
    messages: usize,
    /// Well-known type files the output imports.
    imports: BTreeSet<String>,
    /// The paths of the maps the rules keep (copied whole by the walk).
    kept_maps: Vec<String>,
}

impl Walk {
    fn problem(&mut self, path: &str, why: &str) {
        // Field names come from whoever registered the schema; only identifier characters
        // reach here (protox refuses others), but the path is shown as it is said.
        let at = if path.is_empty() { "(top level)" } else { path };
        self.problems.push(format!("{at}: {why}"));
    }

    /// The output message of `message`, whose fields `branch` has rules for.
    fn message(
        &mut self,
        branch: &Branch,
        message: &MessageDescriptor,
        path: &str,
        name: &str,
    ) -> OutMessage {
        let mut out = OutMessage {
            name: name.to_owned(),
            ..OutMessage::default()
        };
        self.messages += 1;
        if self.messages > MAX_MESSAGES {
            self.problem(path, "more messages than the worker derives for one schema");
            return out;
        }
        if message.parent_file().syntax() != Syntax::Proto3 {
            // An imported proto2 message: its defaults, `required` and extensions are rules
            // the derived proto3 message would not keep.
            self.problem(
                path,
                &format!(
                    "{} is defined in a file that is not proto3 (proto2 and editions are not read)",
                    message.full_name()
                ),
            );
            return out;
        }
        let mut derived_fields: Vec<OutField> = Vec::new();
        for field in message.fields() {
            let key = field.name();
            let key_path = join(path, key);
            let oneof = field
                .containing_oneof()
                .filter(|o| !o.is_synthetic())
                .map(|o| o.name().to_owned());
            match branch.keys.get(key) {
                None if self.unknown == UnknownKeys::Drop => {}
                None => self.problem(
                    &key_path,
                    "a field without a rule (add one; a pipeline with unknown = \"drop\" leaves it out)",
                ),
                Some(Node::Branch(inner)) => {
                    let Kind::Message(inner_message) = field.kind() else {
                        self.problem(
                            &key_path,
                            &format!("rules name its fields, but it is {}", field_type(&field)),
                        );
                        continue;
                    };
                    if field.is_map() {
                        self.problem(&key_path, "a map, whose keys are data no rule path names (keep it whole, or drop it)");
                        continue;
                    }
                    if is_well_known(&inner_message) {
                        self.problem(&key_path, "rules name fields of a well-known type (give the field itself one rule)");
                        continue;
                    }
                    let nested_name = out.nested_name(inner_message.name(), key);
                    let nested = self.message(inner, &inner_message, &key_path, &nested_name);
                    out.nested.push(nested);
                    out.fields.push(OutField {
                        label: if field.is_list() { "repeated " } else { "" },
                        type_name: nested_name,
                        name: key.to_owned(),
                        number: field.number(),
                        oneof,
                    });
                }
                Some(Node::Leaf(leaf)) => {
                    self.leaf(leaf, &field, oneof, &mut out, &mut derived_fields);
                }
            }
        }
        if self.unused == UnusedRules::Refuse {
            for key in branch.keys.keys() {
                if message.get_field_by_name(key).is_none() {
                    self.problem(
                        &join(path, key),
                        "a rule names a field the message does not have",
                    );
                }
            }
        }
        for derived in derived_fields {
            if out.fields.iter().any(|f| f.name == derived.name)
                || message.get_field_by_name(&derived.name).is_some()
            {
                self.problem(
                    &join(path, &derived.name),
                    "a derived attribute's field has the name of a field of the message",
                );
                continue;
            }
            out.fields.push(derived);
        }
        out
    }

    /// What a field's values are, and the wrapper or well-known type it is (if any); `None`
    /// (with a problem) for one the worker does not read.
    fn value_kind(
        &mut self,
        field: &FieldDescriptor,
        path: &str,
    ) -> Option<(ValueKind, Option<String>)> {
        if field.is_map() {
            self.problem(
                path,
                "a map, whose keys are data no rule path names (keep it whole, or drop it)",
            );
            return None;
        }
        let kind = match field.kind() {
            Kind::String => ValueKind::String,
            Kind::Bytes => ValueKind::Bytes,
            Kind::Bool => ValueKind::Bool,
            Kind::Double | Kind::Float => ValueKind::Number,
            Kind::Enum(_) => ValueKind::Enum,
            Kind::Message(message) => {
                let name = message.full_name();
                if let Some((_, wrapped)) = WRAPPERS.iter().find(|(n, _)| *n == name) {
                    let kind = match wrapped {
                        WrappedKind::String => ValueKind::String,
                        WrappedKind::Bytes => ValueKind::Bytes,
                        WrappedKind::Bool => ValueKind::Bool,
                        WrappedKind::Integer => ValueKind::Integer,
                        WrappedKind::Number => ValueKind::Number,
                    };
                    return Some((kind, Some(name.to_owned())));
                }
                if TEXT_TYPES.contains(&name) {
                    return Some((ValueKind::Text, Some(name.to_owned())));
                }
                if is_well_known(&message) {
                    self.problem(
                        path,
                        &format!("{name}, a well-known type the worker does not read (drop it)"),
                    );
                } else {
                    self.problem(path, &format!("a message ({name}), which one rule does not cover: rules name its fields"));
                }
                return None;
            }
            _ => ValueKind::Integer,
        };
        Some((kind, None))
    }

    /// Adds the output field (and derived attribute fields) of a field with a leaf rule.
    fn leaf(
        &mut self,
        leaf: &JsonLeaf,
        field: &FieldDescriptor,
        oneof: Option<String>,
        out: &mut OutMessage,
        derived: &mut Vec<OutField>,
    ) {
        let path = leaf.path.as_ref();
        if leaf.action == Action::Drop {
            return;
        }
        if field.is_map() {
            self.kept_map(leaf, field, oneof, out);
            return;
        }
        let Some((kind, wrapper)) = self.value_kind(field, path) else {
            return;
        };
        let repeated = field.is_list();
        let takes: &[ValueKind] = match leaf.action {
            Action::Drop | Action::Keep => &[
                ValueKind::String,
                ValueKind::Bytes,
                ValueKind::Bool,
                ValueKind::Integer,
                ValueKind::Number,
                ValueKind::Enum,
                ValueKind::Text,
            ],
            Action::Token(_) | Action::IpPrefix | Action::IpTruncate { .. } => {
                &[ValueKind::String, ValueKind::Integer]
            }
            // Bytes would be sealed as their base64 text, not as the bytes they are.
            Action::Encrypt => &[ValueKind::String],
            Action::TimeTruncate(_) | Action::Bucket { .. } => &[ValueKind::Integer],
        };
        if !takes.contains(&kind) {
            self.problem(
                path,
                &format!(
                    "it is {} ({}), which {} does not take",
                    kind.name(),
                    field_type(field),
                    leaf.action.name()
                ),
            );
            return;
        }
        if repeated && leaf.action == Action::Encrypt {
            // A withheld person's sealed values are nulls, which a repeated field cannot hold.
            self.problem(path, "a repeated field under encrypt (the worker seals a single value, or a repeated field's container message)");
            return;
        }
        if repeated && !leaf.derived_keys.is_empty() {
            self.problem(path, "derived attributes of a repeated field (an attribute may be null, which a repeated field cannot hold)");
            return;
        }
        let label = if repeated {
            "repeated "
        } else if oneof.is_some() || wrapper.is_some() {
            ""
        } else {
            "optional "
        };
        let type_name = match leaf.action {
            Action::Keep => {
                match (&wrapper, field.kind()) {
                    (Some(name), _) => {
                        self.import_for(name);
                        format!(".{name}")
                    }
                    (None, Kind::Enum(e)) => {
                        if e.parent_file().syntax() != Syntax::Proto3 {
                            self.problem(path, "an enum of a file that is not proto3 (its first value need not be 0)");
                            return;
                        }
                        out.place_enum(&e)
                    }
                    (None, kind) => kind_name(&kind),
                }
            }
            _ => {
                let written = match leaf.action {
                    Action::Encrypt => "bytes",
                    Action::TimeTruncate(_) | Action::Bucket { label: false } => "int64",
                    _ => "string",
                };
                match wrapper {
                    Some(_) => {
                        let wrapped = match written {
                            "bytes" => "BytesValue",
                            "int64" => "Int64Value",
                            _ => "StringValue",
                        };
                        self.imports
                            .insert("google/protobuf/wrappers.proto".to_owned());
                        format!(".google.protobuf.{wrapped}")
                    }
                    None => written.to_owned(),
                }
            }
        };
        // Kept values keep proto3's implicit presence where the input had it.
        let label = if leaf.action == Action::Keep && wrapper.is_none() && !repeated {
            if field.supports_presence() && oneof.is_none() {
                "optional "
            } else {
                ""
            }
        } else {
            label
        };
        out.fields.push(OutField {
            label,
            type_name,
            name: field.name().to_owned(),
            number: field.number(),
            oneof,
        });
        if !leaf.derived_keys.is_empty() && field.number() > MAX_DERIVED_FIELD {
            self.problem(
                path,
                &format!("derived attributes of a field numbered above {MAX_DERIVED_FIELD}"),
            );
            return;
        }
        for (attribute, _) in &leaf.derived_keys {
            let slot = Attribute::ALL
                .iter()
                .position(|a| a == attribute)
                .unwrap_or(0) as u32;
            derived.push(OutField {
                label: "optional ",
                type_name: match attribute {
                    Attribute::CallingCode => "int64",
                    _ => "string",
                }
                .to_owned(),
                name: attribute.field_name(field.name()),
                number: DERIVED_BASE + field.number() * 8 + slot,
                oneof: None,
            });
        }
    }

    /// A map field under `keep`: copied whole, its output type the same `map<K, V>` (an enum
    /// value copied as kept enums are, a well-known value type imported). A map of other
    /// messages, or under any other rule, is refused: its keys are data no rule path names.
    fn kept_map(
        &mut self,
        leaf: &JsonLeaf,
        field: &FieldDescriptor,
        oneof: Option<String>,
        out: &mut OutMessage,
    ) {
        let path = leaf.path.as_ref();
        if leaf.action != Action::Keep {
            self.problem(path, &format!("a map, whose keys are data no rule path names: {} does not take it (keep it whole, or drop it)", leaf.action.name()));
            return;
        }
        let Kind::Message(entry) = field.kind() else {
            return;
        };
        let key = kind_name(&entry.map_entry_key_field().kind());
        let value = match entry.map_entry_value_field().kind() {
            Kind::Enum(e) => {
                if e.parent_file().syntax() != Syntax::Proto3 {
                    self.problem(path, "a map of an enum of a file that is not proto3");
                    return;
                }
                out.place_enum(&e)
            }
            Kind::Message(m)
                if TEXT_TYPES.contains(&m.full_name())
                    || WRAPPERS.iter().any(|(n, _)| *n == m.full_name()) =>
            {
                self.import_for(m.full_name());
                format!(".{}", m.full_name())
            }
            Kind::Message(m) => {
                self.problem(path, &format!("a map of messages ({}), which keep does not copy whole (rules name a message's fields; drop the map)", m.full_name()));
                return;
            }
            kind => kind_name(&kind),
        };
        out.fields.push(OutField {
            label: "",
            type_name: format!("map<{key}, {value}>"),
            name: field.name().to_owned(),
            number: field.number(),
            oneof,
        });
        self.kept_maps.push(path.to_owned());
    }

    fn import_for(&mut self, name: &str) {
        let file = match name {
            "google.protobuf.Timestamp" => "google/protobuf/timestamp.proto",
            "google.protobuf.Duration" => "google/protobuf/duration.proto",
            _ => "google/protobuf/wrappers.proto",
        };
        self.imports.insert(file.to_owned());
    }
}

/// Marks the leaf at `path` to keep an object whole ([`JsonLeaf::keep_object`]).
fn mark_kept_object(branch: &mut Branch, path: &str) {
    let (key, rest) = match path.split_once('.') {
        Some((key, rest)) => (key, Some(rest)),
        None => (path, None),
    };
    match (branch.keys.get_mut(key), rest) {
        (Some(Node::Leaf(leaf)), None) => leaf.keep_object = true,
        (Some(Node::Branch(inner)), Some(rest)) => mark_kept_object(inner, rest),
        _ => {}
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Confluent's message-index list: zigzag varints, a count then the indexes, where a count of
/// 0 means `[0]` (the first message). The indexes and what follows them; `None` when the list
/// is malformed or longer than any message nesting the worker reads.
pub fn read_indexes(bytes: &[u8]) -> Option<(Vec<i32>, &[u8])> {
    let (count, mut rest) = zigzag(bytes)?;
    if count == 0 {
        return Some((vec![0], rest));
    }
    if !(1..=32).contains(&count) {
        return None;
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (index, after) = zigzag(rest)?;
        indexes.push(i32::try_from(index).ok()?);
        rest = after;
    }
    Some((indexes, rest))
}

/// Writes a message-index list (`[0]` as the single byte 0, as Confluent's serializers do).
pub fn write_indexes(indexes: &[i32], out: &mut Vec<u8>) {
    if indexes == [0] {
        out.push(0);
        return;
    }
    write_zigzag(indexes.len() as i64, out);
    for index in indexes {
        write_zigzag(i64::from(*index), out);
    }
}

fn zigzag(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((decoded, &bytes[i + 1..]));
        }
    }
    None
}

fn write_zigzag(value: i64, out: &mut Vec<u8>) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_indexes_round_trip() {
        for indexes in [vec![0], vec![1], vec![0, 2], vec![3, 1, 4]] {
            let mut out = Vec::new();
            write_indexes(&indexes, &mut out);
            out.push(0xAA);
            let (read, rest) = read_indexes(&out).unwrap();
            assert_eq!(read, indexes);
            assert_eq!(rest, [0xAA]);
        }
        // Confluent writes [0] as one 0 byte; [1] as count 1 (2), index 1 (2).
        let mut out = Vec::new();
        write_indexes(&[1], &mut out);
        assert_eq!(out, [2, 2]);
        assert!(read_indexes(&[]).is_none());
        assert!(read_indexes(&[0x80]).is_none());
        assert!(read_indexes(&[2 * 40]).is_none());
    }
}
