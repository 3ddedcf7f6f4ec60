//! Rules: what happens to each field. One [`Action`] per leaf field path.
//!
//! In TOML an action is a string (`"keep"`, `"phone"`, `"encrypt"`, …) or a table with
//! options: for `ip-truncate` the prefix kept per family
//! (`{ action = "ip-truncate", ipv4_prefix = 24, ipv6_prefix = 48 }`), for `phone` a field of
//! the same record that holds the region to read national numbers with
//! (`{ action = "phone", region_field = "location.country" }`), for `id` the role of the
//! identifier (`{ action = "id", class = "cell" }`: token class `id.cell`, docs/formats.md §3).
//! Generalizing actions keep a coarser value in the field's own type: a timestamp truncated to
//! a unit (`{ action = "time-truncate", unit = "hour" }`), a number replaced by its bucket
//! (`{ action = "bucket", bounds = [0, 60000, 300000], output = "lower" }`: [`Bucketing`]).
//! A `phone` rule may also derive attributes of the number into fields beside its token
//! (`{ action = "phone", derive = ["region", "calling_code", "number_type"] }`: [`Derive`]),
//! and an IP rule (`ip`, `ip-truncate`) the address's country, from the
//! `[geoip]` database the rules then carry (`derive = ["country"]`: [`crate::geoip`]).
//!
//! A rule that is neither is refused naming its path and the forms a rule may take
//! ([`deserialize_rules`]); values are quoted short ([`crate::config::quote`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::config::quote;
use crate::token::{SubClass, TokenClass};

/// The actions a rule may name, for messages.
pub const ACTION_NAMES: &str =
    "keep, drop, phone, ip, email, id, ip-prefix, ip-truncate, time-truncate, bucket, encrypt";

/// What a rule may be, for messages.
pub const RULE_FORMS: &str = "a rule is an action name (keep, drop, phone, ip, email, id, ip-prefix, ip-truncate, encrypt) or a table { action = \"…\", … } (options: ipv4_prefix, ipv6_prefix for ip-truncate; region_field and derive for phone; derive for ip and ip-truncate; class for id; unit for time-truncate; bounds and output for bucket)";

/// The unit a `time-truncate` rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Minute,
    Hour,
    Day,
}

impl TimeUnit {
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Minute => "minute",
            TimeUnit::Hour => "hour",
            TimeUnit::Day => "day",
        }
    }

    /// The unit's length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            TimeUnit::Minute => 60_000,
            TimeUnit::Hour => 3_600_000,
            TimeUnit::Day => 86_400_000,
        }
    }
}

/// Most bounds a `bucket` rule may give.
pub const MAX_BUCKET_BOUNDS: usize = 64;

/// A `bucket` rule's buckets: bounds b0 < b1 < … < bn cut the numbers into (−∞, b0),
/// [b0, b1), …, [bn, +∞). Each bucket's label is made once, here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucketing {
    pub bounds: Vec<i64>,
    /// One label per bucket: `(-inf, b0)`, `[b0, b1)`, …, `[bn, +inf)`.
    pub labels: Vec<String>,
}

impl Bucketing {
    /// Buckets from strictly increasing bounds (1 to [`MAX_BUCKET_BOUNDS`] of them).
    pub fn new(bounds: Vec<i64>) -> Result<Bucketing, String> {
        if bounds.is_empty() || bounds.len() > MAX_BUCKET_BOUNDS {
            return Err(format!(
                "bucket needs 1 to {MAX_BUCKET_BOUNDS} bounds, not {}",
                bounds.len()
            ));
        }
        if let Some(w) = bounds.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "bucket bounds must increase: {} is followed by {}",
                w[0], w[1]
            ));
        }
        let mut labels = vec![format!("(-inf, {})", bounds[0])];
        for w in bounds.windows(2) {
            labels.push(format!("[{}, {})", w[0], w[1]));
        }
        labels.push(format!("[{}, +inf)", bounds[bounds.len() - 1]));
        Ok(Bucketing { bounds, labels })
    }

    /// The index of the bucket `value` falls in (0: below the first bound).
    pub fn index(&self, value: i64) -> usize {
        self.bounds.partition_point(|b| *b <= value)
    }

    /// The lower bound of `value`'s bucket; `floor` (the type's minimum) below the first bound.
    pub fn lower(&self, value: i64, floor: i64) -> i64 {
        match self.index(value) {
            0 => floor,
            i => self.bounds[i - 1],
        }
    }

    pub fn label(&self, value: i64) -> &str {
        &self.labels[self.index(value)]
    }
}

/// An attribute a rule may derive into a field of its own, beside the token: of a phone
/// number (src/phone/attributes.rs says how each is read) or of an IP address (its country,
/// from the `[geoip]` database: src/geoip.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attribute {
    /// ISO 3166 alpha-2 region of the number: field `<name>_region`, nullable string.
    Region,
    /// Country calling code: field `<name>_calling_code`, nullable int.
    CallingCode,
    /// Number type (`mobile`, `fixed_line`, …): field `<name>_number_type`, nullable string.
    NumberType,
    /// ISO 3166 alpha-2 country of an IP address: field `<name>_country`, nullable string.
    Country,
}

impl Attribute {
    /// Every attribute, in the order their fields follow the token.
    pub const ALL: [Attribute; 4] = [
        Attribute::Region,
        Attribute::CallingCode,
        Attribute::NumberType,
        Attribute::Country,
    ];

    /// The attributes of a phone number.
    pub const PHONE: [Attribute; 3] = [
        Attribute::Region,
        Attribute::CallingCode,
        Attribute::NumberType,
    ];

    /// The attributes of an IP address.
    pub const IP: [Attribute; 1] = [Attribute::Country];

    /// The name a rule's `derive` list uses, and the suffix of the field it makes.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Region => "region",
            Attribute::CallingCode => "calling_code",
            Attribute::NumberType => "number_type",
            Attribute::Country => "country",
        }
    }

    /// The name of the field it makes beside the field `field`.
    pub fn field_name(self, field: &str) -> String {
        format!("{field}_{}", self.name())
    }

    /// The attributes a rule of `action` may derive (none for most actions).
    pub fn of(action: Action) -> &'static [Attribute] {
        match action {
            Action::Token(TokenClass::Phone) => &Attribute::PHONE,
            // Not `ip-prefix`: its output hides the network, and a country published beside
            // each pseudonymized prefix would map the pseudonyms back onto the address plan.
            Action::Token(TokenClass::Ip) | Action::IpTruncate { .. } => &Attribute::IP,
            _ => &[],
        }
    }
}

/// The attributes a rule derives (a set; their fields always follow the token in the
/// order of [`Attribute::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Derive(u8);

impl Derive {
    pub fn with(self, attribute: Attribute) -> Derive {
        Derive(self.0 | 1 << attribute as u8)
    }

    pub fn has(self, attribute: Attribute) -> bool {
        self.0 & 1 << attribute as u8 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The attributes, in field order.
    pub fn iter(self) -> impl Iterator<Item = Attribute> {
        Attribute::ALL.into_iter().filter(move |a| self.has(*a))
    }

    /// The set a `derive` list names for a rule of `action`, or a sentence saying why it is
    /// not one.
    pub fn parse(action: Action, names: &[String]) -> Result<Derive, String> {
        let allowed = Attribute::of(action);
        let listed = || {
            allowed
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if allowed.is_empty() {
            return Err(format!(
                "derive only applies to phone, ip and ip-truncate, not {}",
                quote(action.name())
            ));
        }
        let mut derive = Derive::default();
        for name in names {
            let attribute = allowed
                .iter()
                .copied()
                .find(|a| a.name() == name)
                .ok_or_else(|| {
                    format!(
                        "derive: {} is not an attribute {} derives ({})",
                        quote(name),
                        action.name(),
                        listed()
                    )
                })?;
            if derive.has(attribute) {
                return Err(format!("derive: {} is named twice", quote(name)));
            }
            derive = derive.with(attribute);
        }
        if derive.is_empty() {
            return Err(format!(
                "derive: the list is empty (name {}, or leave derive out)",
                listed()
            ));
        }
        Ok(derive)
    }
}

/// What to do with one leaf field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Copy unchanged.
    Keep,
    /// Remove the field from the output schema and the output.
    Drop,
    /// Replace with a token of this class (`phone`, `ip`, `email`, `id`, `id.<role>`; spec §3).
    Token(TokenClass),
    /// Replace an IP with its Crypto-PAn image (spec §3, prefix-preserving mode).
    IpPrefix,
    /// Zero the host bits of an IP, keeping this many leading bits (not keyed).
    IpTruncate { v4: u8, v6: u8 },
    /// Seal in an AES-256-GCM envelope (spec §4).
    Encrypt,
    /// Truncate a timestamp (or time of day) to a unit, in its own type and logical type.
    TimeTruncate(TimeUnit),
    /// Replace an int or long with its bucket's lower bound (`label`: false, same type) or
    /// label (`label`: true, a string). The bounds are in [`Rules::bucketing`].
    Bucket { label: bool },
}

/// Default prefixes kept by a bare `"ip-truncate"`.
pub const DEFAULT_TRUNCATE_V4: u8 = 24;
/// Default prefixes kept by a bare `"ip-truncate"`.
pub const DEFAULT_TRUNCATE_V6: u8 = 48;

impl Action {
    /// The action's name as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::Token(TokenClass::Phone) => "phone",
            Action::Token(TokenClass::Ip) => "ip",
            Action::Token(TokenClass::Email) => "email",
            Action::Token(_) => "id",
            Action::IpPrefix => "ip-prefix",
            Action::IpTruncate { .. } => "ip-truncate",
            Action::Encrypt => "encrypt",
            Action::TimeTruncate(_) => "time-truncate",
            Action::Bucket { .. } => "bucket",
        }
    }

    /// Whether the action rewrites a number (int or long, timestamps included) rather than a
    /// string.
    pub fn takes_number(self) -> bool {
        matches!(self, Action::TimeTruncate(_) | Action::Bucket { .. })
    }

    /// Whether the action needs the active pseudonym key. `ip-prefix` and `ip-truncate` need
    /// it too: a value that is not an IP becomes an `ip-raw` token.
    pub fn needs_pseudonym_key(self) -> bool {
        matches!(
            self,
            Action::Token(_) | Action::IpPrefix | Action::IpTruncate { .. }
        )
    }

    /// Human description for the derived schema's field docs.
    pub fn describe(self) -> String {
        match self {
            Action::Keep => "copied unchanged".to_owned(),
            Action::Drop => "dropped".to_owned(),
            Action::Token(class) => format!(
                "pseudonymized: token of class {}: key_id \":\" b64url(HMAC-SHA256(...)[0..16]), see docs/formats.md",
                class.as_str()
            ),
            Action::IpPrefix => "pseudonymized: prefix-preserving Crypto-PAn IP".to_owned(),
            Action::IpTruncate { v4, v6 } => {
                format!("generalized: IP truncated to /{v4} (IPv4) or /{v6} (IPv6)")
            }
            Action::Encrypt => {
                "encrypted: AES-256-GCM envelope (docs/formats.md), bound to this field's path"
                    .to_owned()
            }
            Action::TimeTruncate(unit) => {
                format!("generalized: truncated to the {}", unit.name())
            }
            Action::Bucket { label: false } => {
                "generalized: the lower bound of the bucket the value falls in (the type's minimum below the first bound), see the rules".to_owned()
            }
            Action::Bucket { label: true } => {
                "generalized: the label of the bucket the value falls in ([lo, hi)), see the rules".to_owned()
            }
        }
    }
}

/// An action as written in TOML.
#[derive(Debug, Clone)]
pub enum RuleSpec {
    /// `"keep"`, `"phone"`, …
    Name(String),
    /// `{ action = "ip-truncate", ipv4_prefix = 24, ipv6_prefix = 48 }`,
    /// `{ action = "phone", region_field = "location.country" }`,
    /// `{ action = "id", class = "cell" }`
    Table {
        action: String,
        ipv4_prefix: Option<u8>,
        ipv6_prefix: Option<u8>,
        region_field: Option<String>,
        /// The role of an `id` (its sub-class).
        class: Option<String>,
        /// The attributes a phone rule derives beside its token.
        derive: Option<Vec<String>>,
        /// The unit a `time-truncate` keeps.
        unit: Option<String>,
        /// A `bucket`'s bounds.
        bounds: Option<Vec<i64>>,
        /// A `bucket`'s output: `lower` (default) or `label`.
        output: Option<String>,
    },
}

impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        RuleSpec::from_toml(&value).map_err(serde::de::Error::custom)
    }
}

/// Reads `[pipeline.rules]` one rule at a time, so that a rule of no accepted form is refused
/// naming its path (`[pipeline.rules] "device.x": …`) and the forms a rule may take.
pub fn deserialize_rules<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, RuleSpec>, D::Error> {
    let raw = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
    let mut rules = BTreeMap::new();
    for (path, value) in raw {
        let spec = RuleSpec::from_toml(&value).map_err(|why| {
            serde::de::Error::custom(format!("[pipeline.rules] {}: {why}", quote(&path)))
        })?;
        rules.insert(path, spec);
    }
    Ok(rules)
}

/// The TOML type of a value, for messages.
fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl RuleSpec {
    /// A rule as TOML holds it, or a sentence saying why it is not one (never the value).
    pub fn from_toml(value: &toml::Value) -> Result<RuleSpec, String> {
        let table = match value {
            toml::Value::String(name) => return Ok(RuleSpec::Name(name.clone())),
            toml::Value::Table(table) => table,
            other => return Err(format!("{} is not a rule; {RULE_FORMS}", type_name(other))),
        };
        let text = |key: &str| -> Result<Option<String>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("{key} must be a string, not {}", type_name(other))),
            }
        };
        let prefix = |key: &str| -> Result<Option<u8>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::Integer(n)) => u8::try_from(*n)
                    .map(Some)
                    .map_err(|_| format!("{key} = {n} is not a prefix length (0 to 128)")),
                Some(other) => Err(format!(
                    "{key} must be an integer, not {}",
                    type_name(other)
                )),
            }
        };
        let list = |key: &str| -> Result<Option<Vec<String>>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s.clone()),
                        other => Err(format!("{key} must list strings, not {}", type_name(other))),
                    })
                    .collect::<Result<_, _>>()
                    .map(Some),
                Some(other) => Err(format!(
                    "{key} must be a list of strings, not {}",
                    type_name(other)
                )),
            }
        };
        let integers = |key: &str| -> Result<Option<Vec<i64>>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        toml::Value::Integer(n) => Ok(*n),
                        other => Err(format!(
                            "{key} must list integers, not {}",
                            type_name(other)
                        )),
                    })
                    .collect::<Result<_, _>>()
                    .map(Some),
                Some(other) => Err(format!(
                    "{key} must be a list of integers, not {}",
                    type_name(other)
                )),
            }
        };
        const OPTIONS: [&str; 9] = [
            "action",
            "ipv4_prefix",
            "ipv6_prefix",
            "region_field",
            "class",
            "derive",
            "unit",
            "bounds",
            "output",
        ];
        if let Some(unknown) = table.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
            return Err(format!(
                "unknown option {} in a rule table; {RULE_FORMS}",
                quote(unknown)
            ));
        }
        let Some(action) = text("action")? else {
            return Err(format!("a rule table needs action; {RULE_FORMS}"));
        };
        Ok(RuleSpec::Table {
            action,
            ipv4_prefix: prefix("ipv4_prefix")?,
            ipv6_prefix: prefix("ipv6_prefix")?,
            region_field: text("region_field")?,
            class: text("class")?,
            derive: list("derive")?,
            unit: text("unit")?,
            bounds: integers("bounds")?,
            output: text("output")?,
        })
    }
}

impl RuleSpec {
    /// The action, or a sentence saying why the spec is not one.
    pub fn action(&self) -> Result<Action, String> {
        let (name, v4, v6, sub_class) = match self {
            RuleSpec::Name(name) => (name.as_str(), None, None, None),
            RuleSpec::Table {
                action,
                ipv4_prefix,
                ipv6_prefix,
                class,
                ..
            } => (
                action.as_str(),
                *ipv4_prefix,
                *ipv6_prefix,
                class.as_deref(),
            ),
        };
        if name != "id" && sub_class.is_some() {
            return Err(format!("class only applies to id, not {}", quote(name)));
        }
        if name != "ip-truncate" && (v4.is_some() || v6.is_some()) {
            return Err(format!(
                "prefix lengths only apply to ip-truncate, not {}",
                quote(name)
            ));
        }
        if name != "phone" && self.region_field().is_some() {
            return Err(format!(
                "region_field only applies to phone, not {}",
                quote(name)
            ));
        }
        let (unit, bounds, output) = match self {
            RuleSpec::Table {
                unit,
                bounds,
                output,
                ..
            } => (unit.as_deref(), bounds.as_ref(), output.as_deref()),
            RuleSpec::Name(_) => (None, None, None),
        };
        if name != "time-truncate" && unit.is_some() {
            return Err(format!(
                "unit only applies to time-truncate, not {}",
                quote(name)
            ));
        }
        if name != "bucket" && (bounds.is_some() || output.is_some()) {
            return Err(format!(
                "bounds and output only apply to bucket, not {}",
                quote(name)
            ));
        }
        Ok(match name {
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "phone" => Action::Token(TokenClass::Phone),
            "ip" => Action::Token(TokenClass::Ip),
            "email" => Action::Token(TokenClass::Email),
            "id" => match sub_class {
                None => Action::Token(TokenClass::Id),
                Some(sub) => Action::Token(TokenClass::IdOf(SubClass::new(sub).map_err(|_| {
                    format!(
                        "sub-class {} must be 1-{} characters of a-z, 0-9, _ and -",
                        quote(sub),
                        crate::class::SUBCLASS_MAX
                    )
                })?)),
            },
            "ip-prefix" => Action::IpPrefix,
            "encrypt" => Action::Encrypt,
            "time-truncate" => Action::TimeTruncate(match unit {
                Some("minute") => TimeUnit::Minute,
                Some("hour") => TimeUnit::Hour,
                Some("day") => TimeUnit::Day,
                Some(other) => {
                    return Err(format!("unit {} is not minute, hour or day", quote(other)))
                }
                None => return Err("time-truncate needs a unit (minute, hour or day)".to_owned()),
            }),
            "bucket" => {
                let Some(bounds) = bounds else {
                    return Err("bucket needs bounds (a list of increasing integers)".to_owned());
                };
                Bucketing::new(bounds.clone())?;
                Action::Bucket {
                    label: match output {
                        None | Some("lower") => false,
                        Some("label") => true,
                        Some(other) => {
                            return Err(format!("output {} is not lower or label", quote(other)))
                        }
                    },
                }
            }
            "ip-truncate" => {
                let v4 = v4.unwrap_or(DEFAULT_TRUNCATE_V4);
                let v6 = v6.unwrap_or(DEFAULT_TRUNCATE_V6);
                if v4 > 32 || v6 > 128 {
                    return Err(format!(
                        "ip-truncate prefixes /{v4} and /{v6} exceed 32 / 128"
                    ));
                }
                Action::IpTruncate { v4, v6 }
            }
            other => return Err(format!("unknown action {} ({ACTION_NAMES})", quote(other))),
        })
    }
}

impl RuleSpec {
    /// The field holding the record's own phone region, where the rule names one.
    pub fn region_field(&self) -> Option<&str> {
        match self {
            RuleSpec::Table { region_field, .. } => region_field.as_deref(),
            RuleSpec::Name(_) => None,
        }
    }

    /// The `derive` list as written, where the rule has one.
    fn derive_names(&self) -> Option<&[String]> {
        match self {
            RuleSpec::Table { derive, .. } => derive.as_deref(),
            RuleSpec::Name(_) => None,
        }
    }

    /// A `bucket` rule's buckets (checked by [`Self::action`]).
    pub fn bucketing(&self) -> Option<Bucketing> {
        match self {
            RuleSpec::Table {
                bounds: Some(bounds),
                ..
            } => Bucketing::new(bounds.clone()).ok(),
            _ => None,
        }
    }

    /// The attributes a rule of `action` derives (empty where it names none), or why its
    /// `derive` list is not a set of attributes it may derive.
    pub fn derive(&self, action: Action) -> Result<Derive, String> {
        self.derive_names()
            .map_or(Ok(Derive::default()), |names| Derive::parse(action, names))
    }
}

/// The rules of one input schema: field path to action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    actions: BTreeMap<String, Action>,
    /// Phone field path → the path of the field holding its region.
    region_fields: BTreeMap<String, String>,
    /// Phone or IP field path → the attributes derived beside its token (none absent).
    derived: BTreeMap<String, Derive>,
    /// The `[geoip]` database IP rules derive countries from, where the config names one.
    country_db: Option<std::sync::Arc<crate::geoip::CountryDb>>,
    /// Bucket field path → its buckets.
    buckets: BTreeMap<String, std::sync::Arc<Bucketing>>,
}

impl Rules {
    /// Parses every spec. Bad specs give one message each and stand in the returned rules as
    /// `keep`, so that compiling them still reports every other problem in the same run.
    pub fn from_specs(specs: &BTreeMap<String, RuleSpec>) -> (Self, Vec<String>) {
        let mut actions = BTreeMap::new();
        let mut region_fields = BTreeMap::new();
        let mut derived = BTreeMap::new();
        let mut buckets = BTreeMap::new();
        let mut errors = Vec::new();
        for (path, spec) in specs {
            let parsed = spec.action();
            let action = parsed.clone().unwrap_or_else(|why| {
                errors.push(format!("{path}: {why}"));
                Action::Keep
            });
            if let (Action::Bucket { .. }, Some(bucketing)) = (action, spec.bucketing()) {
                buckets.insert(path.clone(), std::sync::Arc::new(bucketing));
            }
            if parsed.is_ok() && spec.derive_names().is_some() {
                match spec.derive(action) {
                    Ok(derive) if derive.is_empty() => {}
                    Ok(derive) => {
                        derived.insert(path.clone(), derive);
                    }
                    Err(why) => errors.push(format!("{path}: {why}")),
                }
            }
            actions.insert(path.clone(), action);
            if let (Action::Token(TokenClass::Phone), Some(region)) = (action, spec.region_field())
            {
                region_fields.insert(path.clone(), region.to_owned());
            }
        }
        (
            Rules {
                actions,
                region_fields,
                derived,
                buckets,
                country_db: None,
            },
            errors,
        )
    }

    /// Builds rules from pairs (for tests and tools).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Action)>) -> Self {
        Rules {
            actions: pairs.into_iter().map(|(p, a)| (p.to_owned(), a)).collect(),
            region_fields: BTreeMap::new(),
            derived: BTreeMap::new(),
            buckets: BTreeMap::new(),
            country_db: None,
        }
    }

    /// These rules, with `path`'s action set to `action` (for tests and tools).
    pub fn with_pair(mut self, path: &str, action: Action) -> Self {
        self.actions.insert(path.to_owned(), action);
        self
    }

    /// These rules, with the bucket rule at `path` cutting at `bounds`.
    pub fn with_buckets(mut self, path: &str, bounds: Vec<i64>) -> Self {
        if let Ok(bucketing) = Bucketing::new(bounds) {
            self.buckets
                .insert(path.to_owned(), std::sync::Arc::new(bucketing));
        }
        self
    }

    /// The buckets of the bucket rule at `path`.
    pub fn bucketing(&self, path: &str) -> Option<&std::sync::Arc<Bucketing>> {
        self.buckets.get(path)
    }

    /// These rules, with the rule at `phone_path` (phone or IP) deriving `derive` beside its
    /// token.
    pub fn with_derived(mut self, phone_path: &str, derive: Derive) -> Self {
        self.derived.insert(phone_path.to_owned(), derive);
        self
    }

    /// These rules, deriving IP countries from `db` (the config's `[geoip] database`).
    pub fn with_country_db(mut self, db: Option<std::sync::Arc<crate::geoip::CountryDb>>) -> Self {
        self.country_db = db;
        self
    }

    /// The database IP rules derive countries from, where there is one.
    pub fn country_db(&self) -> Option<&std::sync::Arc<crate::geoip::CountryDb>> {
        self.country_db.as_ref()
    }

    /// The attributes the rule at `path` derives (empty for a rule that derives none).
    pub fn derived(&self, path: &str) -> Derive {
        self.derived.get(path).copied().unwrap_or_default()
    }

    /// These rules, with the phone rule at `phone_path` reading its region from `region_path`.
    pub fn with_region_field(mut self, phone_path: &str, region_path: &str) -> Self {
        self.region_fields
            .insert(phone_path.to_owned(), region_path.to_owned());
        self
    }

    /// The field holding the region of the phone field at `path`, where its rule names one.
    pub fn region_field(&self, path: &str) -> Option<&str> {
        self.region_fields.get(path).map(String::as_str)
    }

    /// Every field path that holds a region for some phone rule, without repeats.
    pub fn region_paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self.region_fields.values().map(String::as_str).collect();
        paths.sort_unstable();
        paths.dedup();
        paths
    }

    /// The action for a path.
    pub fn get(&self, path: &str) -> Option<Action> {
        self.actions.get(path).copied()
    }

    /// Every (path, action), sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Action)> {
        self.actions.iter().map(|(p, a)| (p.as_str(), *a))
    }
}
