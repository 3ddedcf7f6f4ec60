//! Compiling rules for schemaless JSON (`format = "json"`): the tree of keys the walk in
//! [`crate::transform`] follows.
//!
//! Without a schema the rules are the whole contract. A rule path's segments are object keys;
//! an array stands for its items, as in Avro (`recipients` names every recipient,
//! `attachments.url` every attachment's url). Each path is either a leaf (it has an action)
//! or a branch (a prefix of other rules' paths, so an object), never both: an object where a
//! leaf rule stands is not published, since its keys would be unclassified. At run time a key
//! that no rule names is the record's dead letter (`unclassified-field`) or, where the pipeline
//! says `unknown = "drop"`, left out. docs/formats.md, "Schemaless JSON", is the contract.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::UnknownKeys;
use crate::geoip::CountryDb;
use crate::rules::{Action, Attribute, Bucketing, Derive, Rules};
use crate::token::TokenClass;

/// Deepest rule path accepted, in keys (as for Avro schemas).
const MAX_DEPTH: usize = 32;

/// One pipeline's rules as a tree of object keys.
#[derive(Debug, Clone)]
pub struct JsonPlan {
    /// The pipeline's name (a JSON record has no schema name to go by).
    pub name: String,
    /// The top-level object.
    pub root: Branch,
    /// What a key no rule names does to its record.
    pub unknown: UnknownKeys,
    /// Paths of the fields holding records' own phone regions, by the index leaves refer to.
    pub regions: Vec<Box<str>>,
    /// Whether some rule needs the active pseudonym key.
    pub needs_pseudonym: bool,
    /// Whether some rule needs the active encryption key.
    pub needs_encryption: bool,
    /// The pipeline's pseudonymisation domain (`None`: the default).
    pub domain: Option<String>,
    /// The rules it was compiled from (for `explain`).
    pub rules: Rules,
}

/// An object: its keys' rules.
#[derive(Debug, Default, Clone)]
pub struct Branch {
    /// The object's own path (`""` for the top level), for errors.
    pub path: Box<str>,
    /// By key (a B-tree: a few string comparisons, no hashing, for the few keys an object has).
    pub keys: BTreeMap<Box<str>, Node>,
}

/// What one key holds.
#[derive(Debug, Clone)]
pub enum Node {
    /// An object (or array of objects) whose keys have rules of their own.
    Branch(Branch),
    /// A value an action applies to (or an array of them).
    Leaf(JsonLeaf),
}

/// A value with an action.
#[derive(Debug, Clone)]
pub struct JsonLeaf {
    pub action: Action,
    /// The rule path; the AAD of envelopes and the place named in errors.
    pub path: Box<str>,
    /// For a phone rule with a `region_field`: its index in [`JsonPlan::regions`].
    pub region: Option<usize>,
    /// The attributes written beside the value, as `<key>_<attribute>`.
    pub derive: Derive,
    /// For `bucket`: its buckets.
    pub bucketing: Option<Arc<Bucketing>>,
    /// For an IP rule that derives `country`: the database.
    pub country: Option<Arc<CountryDb>>,
    /// Each derived attribute and the JSON text that starts its key, `,"<key>_<attribute>":`,
    /// made once here rather than per record.
    pub derived_keys: Vec<(Attribute, Box<[u8]>)>,
    /// `keep` copies an object too: a Protobuf `map` whose schema says its key and value
    /// types (set by [`crate::plan::protobuf`] for the version it checked; never for JSON,
    /// whose objects' keys no schema describes).
    pub keep_object: bool,
}

impl JsonPlan {
    /// Compiles `rules` into the key tree; every problem at once.
    pub fn compile(
        name: &str,
        rules: &Rules,
        unknown: UnknownKeys,
        domain: Option<String>,
    ) -> Result<JsonPlan, Vec<String>> {
        let mut errors = Vec::new();
        let regions: Vec<Box<str>> = rules.region_paths().into_iter().map(Into::into).collect();
        for region in &regions {
            match rules.get(region) {
                Some(Action::Keep) => {}
                Some(action) => errors.push(format!(
                    "{region}: a region_field must be kept as it is (keep), not {}",
                    action.name()
                )),
                None => errors.push(format!(
                    "{region}: named as a region_field, but no rule names it (give it keep)"
                )),
            }
        }
        // A path that has an action and rules of its keys too: said once, at the path.
        let paths: Vec<&str> = rules.iter().map(|(p, _)| p).collect();
        let object_with_action = |path: &str| {
            let prefix = format!("{path}.");
            paths.iter().find(|p| p.starts_with(&prefix)).copied()
        };
        let mut root = Branch::default();
        for (path, action) in rules.iter() {
            if let Some(child) = object_with_action(path) {
                errors.push(format!(
                    "{path}: has rules of its own keys ({child}), so it is an object, and takes no action itself (give each key its rule)"
                ));
                continue;
            }
            let under_action = path
                .match_indices('.')
                .any(|(i, _)| rules.get(&path[..i]).is_some());
            if under_action {
                continue;
            }
            let keys: Vec<&str> = path.split('.').collect();
            if keys.iter().any(|k| k.is_empty()) {
                errors.push(format!(
                    "{path}: a rule path is keys joined by dots, none of them empty"
                ));
                continue;
            }
            if keys.len() > MAX_DEPTH {
                errors.push(format!("{path}: deeper than {MAX_DEPTH} keys"));
                continue;
            }
            let derive = rules.derived(path);
            if derive.has(Attribute::Country) && rules.country_db().is_none() {
                errors.push(format!(
                    "{path}: derive country needs a country database: name one in [geoip] database (docs/operations.md, \"Derived IP countries\")"
                ));
            }
            let leaf = JsonLeaf {
                action,
                path: path.into(),
                region: rules
                    .region_field(path)
                    .and_then(|r| regions.iter().position(|p| &**p == r)),
                derive,
                bucketing: rules.bucketing(path).cloned(),
                country: derive
                    .has(Attribute::Country)
                    .then(|| rules.country_db().cloned())
                    .flatten(),
                derived_keys: derive
                    .iter()
                    .map(|attribute| {
                        let key = attribute.field_name(keys[keys.len() - 1]);
                        let mut text = b",".to_vec();
                        // A &str always serializes.
                        let _ = serde_json::to_writer(&mut text, &key);
                        text.push(b':');
                        (attribute, text.into_boxed_slice())
                    })
                    .collect(),
                keep_object: false,
            };
            if let Err(why) = insert(&mut root, &keys, leaf) {
                errors.push(format!("{path}: {why}"));
            }
        }
        // A derived key must not be a key some rule also names: the object would have it twice.
        for (path, _) in rules.iter() {
            for attribute in rules.derived(path).iter() {
                let derived = attribute.field_name(path);
                if rules.get(&derived).is_some()
                    || rules
                        .iter()
                        .any(|(p, _)| p.starts_with(&format!("{derived}.")))
                {
                    errors.push(format!(
                        "{path}: derives {derived}, which a rule also names: one key cannot be both"
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(JsonPlan {
            name: name.to_owned(),
            root,
            unknown,
            regions,
            needs_pseudonym: rules.iter().any(|(_, a)| a.needs_pseudonym_key()),
            needs_encryption: rules.iter().any(|(_, a)| a == Action::Encrypt),
            domain,
            rules: rules.clone(),
        })
    }

    /// Whether any rule tokenizes with `class` (for the subject registry's classes).
    pub fn uses_class(&self, class: TokenClass) -> bool {
        self.rules
            .iter()
            .any(|(_, a)| matches!(a, Action::Token(c) if c == class))
    }
}

/// Puts `leaf` at `keys` under `branch`, or says why a path cannot be both leaf and branch.
fn insert(branch: &mut Branch, keys: &[&str], leaf: JsonLeaf) -> Result<(), String> {
    let (first, rest) = keys.split_first().expect("a path has at least one key");
    let path = match &*branch.path {
        "" => (*first).to_owned(),
        parent => format!("{parent}.{first}"),
    };
    if rest.is_empty() {
        return match branch.keys.get(*first) {
            Some(Node::Branch(_)) => Err(format!(
                "{path} has rules of its own keys, so it is an object and takes no action itself"
            )),
            Some(Node::Leaf(_)) => Err("named twice".to_owned()),
            None => {
                branch.keys.insert((*first).into(), Node::Leaf(leaf));
                Ok(())
            }
        };
    }
    let node = branch.keys.entry((*first).into()).or_insert_with(|| {
        Node::Branch(Branch {
            path: path.clone().into(),
            keys: BTreeMap::new(),
        })
    });
    match node {
        Node::Branch(inner) => insert(inner, rest, leaf),
        Node::Leaf(_) => Err(format!(
            "{path} has an action of its own, so it is not an object whose keys take rules"
        )),
    }
}
