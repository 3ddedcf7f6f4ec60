//! Re-identification risk, measured live: k-anonymity over a sliding window of a pipeline's
//! own output.
//!
//! A pipeline may name the output fields that, together, could single a person out (its
//! *quasi-identifiers*, for example the cell id's token, the hour of the call and the callee's
//! region: `[pipeline.risk]`). Over the last `window` records the worker published for that
//! pipeline, records are grouped by those fields' values, and the estimate is how many records
//! sit in a group of fewer than `k` (a group of one is a record no other in the window shares
//! its quasi-identifiers with). It is exported as metrics; docs/security.md says how to read it.
//!
//! Only output values are read, never a raw one: each record's quasi-identifier fields are
//! located in its sanitized Avro bytes ([`crate::plan::locate_output`]) and their encoded bytes
//! hashed with the standard library's keyed hasher (`RandomState`: SipHash-1-3 today, though
//! std does not promise the algorithm) under a key drawn at random when the process starts, so what the window holds is 8 bytes per record that mean nothing outside
//! this process. The count is exact for the window, up to 64-bit hash collisions (two groups
//! merged: about n²/2⁶⁵ for n groups, 3·10⁻¹⁰ at 100,000), which can only lower the estimate.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use crate::plan::{Locate, Plan};

/// Default group size below which a record counts as at risk.
pub const DEFAULT_K: u32 = 5;
/// Default window: this many of a pipeline's latest records.
pub const DEFAULT_WINDOW: usize = 100_000;
/// Bounds of the settings, checked at start.
pub const K_RANGE: std::ops::RangeInclusive<u32> = 2..=1000;
pub const WINDOW_RANGE: std::ops::RangeInclusive<usize> = 100..=1_000_000;
pub const MAX_QUASI_IDENTIFIERS: usize = 16;
/// Bytes a record of the window costs, at most, all allocated at start: 8 in the ring, and a
/// table of at least twice the window's slots (so that deleted slots are reclaimed in place,
/// never by growing it), rounded up to a power of two by the hash table, 17 bytes each (a
/// padded `(u64, u32)` and a control byte). docs/security.md and docs/deploy.md quote it.
pub const BYTES_PER_RECORD: usize = 8 + 78;

/// The bytes the window of `capacity` records allocates: the ring and the table.
pub fn window_bytes(capacity: usize) -> usize {
    let slots = (2 * capacity * 8 / 7).next_power_of_two();
    8 * capacity + 17 * slots
}

/// What is wrong with a pipeline's `[pipeline.risk]` (checked at start with its rules): the
/// settings' ranges, and quasi-identifiers that name no field of its derived output schema.
pub fn problems(risk: &crate::config::RiskConfig, plan: &Plan) -> Vec<String> {
    let mut problems = settings_problems(risk);
    for (at, path) in risk.quasi_identifiers.iter().enumerate() {
        if risk.quasi_identifiers[..at].contains(path) {
            continue;
        }
        if plan.rules.get(path) == Some(crate::rules::Action::Encrypt) {
            problems.push(sealed_problem(path));
            continue;
        }
        if let Err(why) = crate::plan::locate_output(plan, path) {
            problems.push(format!(
                "risk: quasi-identifier {} {why} of the output schema {} (name fields of the sanitized output, as `schema derive` writes it)",
                crate::config::quote(path),
                plan.output_name()
            ));
        }
    }
    problems
}

/// [`problems`] for a json pipeline: each quasi-identifier must be a key its output has, a
/// rule's path that is not dropped, or a key a rule derives.
pub fn problems_json(
    risk: &crate::config::RiskConfig,
    plan: &crate::plan::json::JsonPlan,
) -> Vec<String> {
    let mut problems = settings_problems(risk);
    for (at, path) in risk.quasi_identifiers.iter().enumerate() {
        if risk.quasi_identifiers[..at].contains(path) {
            continue;
        }
        match plan.rules.get(path) {
            Some(crate::rules::Action::Encrypt) => problems.push(sealed_problem(path)),
            Some(crate::rules::Action::Drop) => problems.push(format!(
                "risk: quasi-identifier {} is dropped: the output has no such key",
                crate::config::quote(path)
            )),
            Some(_) => {}
            None => {
                let derived = plan.rules.iter().any(|(rule, _)| {
                    plan.rules
                        .derived(rule)
                        .iter()
                        .any(|a| a.field_name(rule) == *path)
                });
                if !derived {
                    problems.push(format!(
                        "risk: quasi-identifier {} is neither a rule's key nor a key a rule derives (name keys of the sanitized output)",
                        crate::config::quote(path)
                    ));
                }
            }
        }
    }
    problems
}

fn sealed_problem(path: &str) -> String {
    format!(
        "risk: quasi-identifier {} is sealed (encrypt): every envelope is different, so it would make every record a group of its own; name the fields a reader can see",
        crate::config::quote(path)
    )
}

/// The settings' ranges, and repeated names.
fn settings_problems(risk: &crate::config::RiskConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let count = risk.quasi_identifiers.len();
    if !(1..=MAX_QUASI_IDENTIFIERS).contains(&count) {
        problems.push(format!(
            "risk: quasi_identifiers lists {count} fields; name 1 to {MAX_QUASI_IDENTIFIERS}"
        ));
    }
    if let Some(k) = risk.k.filter(|k| !K_RANGE.contains(k)) {
        problems.push(format!(
            "risk: k = {k} is out of range: it must be from {} to {}",
            K_RANGE.start(),
            K_RANGE.end()
        ));
    }
    if let Some(window) = risk.window.filter(|w| !WINDOW_RANGE.contains(w)) {
        problems.push(format!(
            "risk: window = {window} is out of range: it must be from {} to {} records",
            WINDOW_RANGE.start(),
            WINDOW_RANGE.end()
        ));
    }
    for (at, path) in risk.quasi_identifiers.iter().enumerate() {
        if risk.quasi_identifiers[..at].contains(path) {
            problems.push(format!(
                "risk: quasi-identifier {} is named twice",
                crate::config::quote(path)
            ));
        }
    }
    problems
}

/// k-anonymity of the last `capacity` records: how many of them share their quasi-identifier
/// values with fewer than `k - 1` others. Kept up to date record by record, in O(1).
#[derive(Debug)]
pub struct KWindow {
    k: u32,
    capacity: usize,
    /// Each record's group, oldest first.
    order: VecDeque<u64>,
    /// Records per group in the window (keys are keyed hashes already: not hashed again).
    sizes: HashMap<u64, u32, std::hash::BuildHasherDefault<GroupHasher>>,
    /// Records in groups smaller than `k`.
    below_k: usize,
}

impl KWindow {
    pub fn new(k: u32, capacity: usize) -> KWindow {
        KWindow {
            k: k.max(1),
            capacity: capacity.max(1),
            // Both at their full size now: a window never grows, and never rehashes by growing.
            order: VecDeque::with_capacity(capacity.max(1)),
            sizes: HashMap::with_capacity_and_hasher(2 * capacity.max(1), Default::default()),
            below_k: 0,
        }
    }

    /// One more record, of `group`; the oldest leaves once the window is full.
    pub fn observe(&mut self, group: u64) {
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.leave(oldest);
            }
        }
        self.order.push_back(group);
        let size = self.sizes.entry(group).or_insert(0);
        *size += 1;
        let size = *size;
        if size < self.k {
            self.below_k += 1;
        } else if size == self.k {
            // The group reaches k: its k - 1 earlier records are no longer at risk.
            self.below_k -= (self.k - 1) as usize;
        }
    }

    fn leave(&mut self, group: u64) {
        let Some(size) = self.sizes.get_mut(&group) else {
            return;
        };
        let before = *size;
        *size -= 1;
        if *size == 0 {
            self.sizes.remove(&group);
        }
        if before < self.k {
            self.below_k -= 1;
        } else if before == self.k {
            // The group falls below k: its k - 1 remaining records are at risk again.
            self.below_k += (self.k - 1) as usize;
        }
    }

    /// Records in the window.
    pub fn records(&self) -> usize {
        self.order.len()
    }

    /// Records in the window whose group is smaller than k.
    pub fn below_k(&self) -> usize {
        self.below_k
    }

    /// Distinct groups in the window.
    pub fn groups(&self) -> usize {
        self.sizes.len()
    }

    /// The share of the window's records in groups smaller than k (0 for an empty window).
    pub fn ratio(&self) -> f64 {
        if self.order.is_empty() {
            0.0
        } else {
            self.below_k as f64 / self.order.len() as f64
        }
    }

    pub fn k(&self) -> u32 {
        self.k
    }
}

/// One pipeline's estimate: its window, and how to find its quasi-identifiers in each output
/// schema its routes write (one per writer version, by output schema id).
pub struct PipelineRisk {
    pub window: KWindow,
    paths: Vec<String>,
    locators: HashMap<u32, Locators>,
    hasher: RandomState,
    /// Cursor positions after each move of the last walk (reused: no allocation per record).
    positions: Vec<usize>,
}

/// The moves to each quasi-identifier of one output schema, in the order they are met in the
/// bytes, each with how many first moves it shares with the one before: a record is then
/// read once from its start, not once per field.
struct Locators {
    /// `None`: a field this version does not have (it reads as absent, a value of its own).
    steps: Vec<Option<Vec<Locate>>>,
    shared: Vec<usize>,
}

impl Locators {
    fn new(plan: &Plan, paths: &[String]) -> Locators {
        let mut steps: Vec<Option<Vec<Locate>>> = paths
            .iter()
            .map(|path| match crate::plan::locate_output(plan, path) {
                Ok(steps) => Some(steps),
                Err(why) => {
                    // A writer version without the field: its records all read it as absent,
                    // which merges groups (the estimate drops): said once per version.
                    tracing::warn!(
                        quasi_identifier = %path,
                        schema = %plan.input_name,
                        "a quasi-identifier of [pipeline.risk] {why} in this writer version's output: its records count it as absent, which lowers the risk estimate; fix the rules or the quasi_identifiers"
                    );
                    None
                }
            })
            .collect();
        // Byte order: at the first move where two differ, a value or a branch taken comes
        // before skipping on.
        let key = |steps: &Option<Vec<Locate>>| -> Vec<usize> {
            steps
                .iter()
                .flatten()
                .map(|step| match step {
                    Locate::Value(_) | Locate::String => 0,
                    Locate::Branch(b) => 1 + b,
                    Locate::Skip(_) => usize::MAX,
                })
                .collect()
        };
        steps.sort_by_key(|s| key(s));
        let mut shared = vec![0; steps.len()];
        for i in 1..steps.len() {
            if let (Some(before), Some(this)) = (&steps[i - 1], &steps[i]) {
                let common = before.iter().zip(this).take_while(|(a, b)| a == b).count();
                // The last move (the value itself) is always made again.
                shared[i] = common.min(this.len().saturating_sub(1));
            }
        }
        Locators { steps, shared }
    }
}

/// A hasher for keys that are already uniform 64-bit hashes: the key itself.
#[derive(Default)]
struct GroupHasher(u64);

impl Hasher for GroupHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl PipelineRisk {
    pub fn new(paths: Vec<String>, k: u32, window: usize) -> PipelineRisk {
        PipelineRisk {
            window: KWindow::new(k, window),
            paths,
            locators: HashMap::new(),
            hasher: RandomState::new(),
            positions: Vec::new(),
        }
    }

    /// The most records the window holds.
    pub fn window_capacity(&self) -> usize {
        self.window.capacity
    }

    /// Adds one published record: `avro` is its sanitized value (without the 5-byte framing),
    /// written with `plan`'s output schema under `output_schema_id`.
    pub fn observe(&mut self, plan: &Plan, output_schema_id: u32, avro: &[u8]) {
        let mut hasher = self.hasher.build_hasher();
        self.for_each_value(plan, output_schema_id, avro, |value| match value {
            Some(bytes) => {
                hasher.write_u8(1);
                hasher.write_usize(bytes.len());
                hasher.write(bytes);
            }
            None => hasher.write_u8(0),
        });
        self.window.observe(hasher.finish());
    }

    /// Adds one published record of a json pipeline: `json` is its sanitized object. Each
    /// quasi-identifier's value is found by its keys (an array is one value) and its JSON
    /// text hashed; a key the record does not have counts as absent.
    pub fn observe_json(&mut self, json: &[u8]) {
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let mut hasher = self.hasher.build_hasher();
        for path in &self.paths {
            let mut value = Some(&record);
            for key in path.split('.') {
                value = value.and_then(|v| v.get(key));
            }
            match value {
                Some(value) => {
                    let text = value.to_string();
                    hasher.write_u8(1);
                    hasher.write_usize(text.len());
                    hasher.write(text.as_bytes());
                }
                None => hasher.write_u8(0),
            }
        }
        self.window.observe(hasher.finish());
    }

    /// Calls `f` with each quasi-identifier's encoded value in `avro` (`None`: absent), in
    /// the order they are met in the bytes.
    pub fn for_each_value<'a>(
        &mut self,
        plan: &Plan,
        output_schema_id: u32,
        avro: &'a [u8],
        mut f: impl FnMut(Option<&'a [u8]>),
    ) {
        let paths = &self.paths;
        let locators = self
            .locators
            .entry(output_schema_id)
            .or_insert_with(|| Locators::new(plan, paths));
        let positions = &mut self.positions;
        positions.clear();
        positions.push(0);
        // Moves the last walk completed (positions[n] is where the cursor was after n moves).
        let mut reached = 0;
        for (steps, &shared) in locators.steps.iter().zip(&locators.shared) {
            let span = match steps {
                Some(steps) if shared <= reached => {
                    let mut cur = crate::transform::Cursor::new(avro);
                    cur.skip_to(positions[shared]);
                    positions.truncate(shared + 1);
                    reached = shared;
                    let mut span = None;
                    for step in &steps[shared..] {
                        match crate::transform::locate_step(step, &mut cur) {
                            Some(None) => {
                                reached += 1;
                                positions.push(cur.pos());
                            }
                            Some(Some(bytes)) => {
                                span = Some(bytes);
                                break;
                            }
                            None => break,
                        }
                    }
                    span
                }
                // It shares a move the last walk could not make (a null record on the way).
                _ => None,
            };
            f(span);
        }
    }

    /// The moves to each quasi-identifier of `plan`'s output, in the order
    /// [`Self::for_each_value`] reads them (for tests).
    pub fn steps(&mut self, plan: &Plan, output_schema_id: u32) -> Vec<Option<Vec<Locate>>> {
        let paths = &self.paths;
        self.locators
            .entry(output_schema_id)
            .or_insert_with(|| Locators::new(plan, paths))
            .steps
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window's running count against a count made from scratch, record by record.
    #[test]
    fn the_running_count_is_the_count_from_scratch() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (k, capacity, groups) in [(2, 50, 40), (5, 200, 60), (3, 1000, 900), (10, 300, 20)] {
            let mut window = KWindow::new(k, capacity);
            let mut all = Vec::new();
            for _ in 0..5 * capacity {
                let group = next() % groups;
                window.observe(group);
                all.push(group);
                let recent = &all[all.len().saturating_sub(capacity)..];
                let mut sizes = HashMap::new();
                for g in recent {
                    *sizes.entry(*g).or_insert(0u32) += 1;
                }
                let below: usize = recent.iter().filter(|g| sizes[*g] < k).count();
                assert_eq!(window.below_k(), below, "k {k}, capacity {capacity}");
                assert_eq!(window.records(), recent.len());
                assert_eq!(window.groups(), sizes.len());
            }
        }
    }

    /// The one-pass read of the quasi-identifiers gives what reading each from the start
    /// gives, on many sanitized calls (nulls on the way included), for several field sets.
    #[test]
    fn reading_once_finds_what_reading_each_from_the_start_finds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let config =
            crate::config::Config::load(&root.join("config/pipeline.toml")).expect("shipped");
        let engine = crate::transform::Engine::from_config(&config).expect("rules");
        let plan = engine.plan("comms.v1.CallEvent").expect("calls");
        let keys = crate::keys::KeySet::from_keyring(
            &crate::keys::Keyring::from_entries(vec![
                crate::keys::KeyEntry {
                    id: "p-1".into(),
                    purpose: crate::keys::Purpose::Pseudonym,
                    state: crate::keys::KeyState::Active,
                    created_at: "2026-12-06T00:00:00Z".into(),
                    secret: Some(crate::keys::Secret::generate()),
                },
                crate::keys::KeyEntry {
                    id: "e-1".into(),
                    purpose: crate::keys::Purpose::Encryption,
                    state: crate::keys::KeyState::Active,
                    created_at: "2026-12-06T00:00:00Z".into(),
                    secret: Some(crate::keys::Secret::generate()),
                },
            ])
            .expect("two keys"),
        );
        let active = engine.active_keys(&keys).expect("active keys");
        let mut generator = crate::generate::Generator::new(3);
        let sets: [&[&str]; 4] = [
            &[
                "location.country",
                "location.cell_id",
                "callee_region",
                "callee_number_type",
            ],
            &["location.cell_id", "location.country"],
            &[
                "device.model",
                "location.cell_id",
                "occurred_at",
                "device.os",
                "caller_region",
            ],
            &["callee_region", "callee_region", "nowhere.at_all"],
        ];
        let mut nulls = 0;
        for set in sets {
            let mut risk = PipelineRisk::new(set.iter().map(|s| s.to_string()).collect(), 5, 100);
            let steps = risk.steps(plan, 7);
            for _ in 0..300 {
                let event = generator.event(crate::generate::Kind::Call);
                let input = apache_avro::to_avro_datum(&plan.input, event).expect("encodes");
                let mut out = Vec::new();
                engine
                    .transform(plan, &active, &input, &mut out)
                    .expect("transforms");
                let mut once = Vec::new();
                risk.for_each_value(plan, 7, &out, |v| once.push(v));
                let each: Vec<Option<&[u8]>> = steps
                    .iter()
                    .map(|s| {
                        s.as_ref()
                            .and_then(|s| crate::transform::locate_span(s, &out))
                    })
                    .collect();
                assert_eq!(once, each, "{set:?}");
                nulls += each.iter().filter(|v| v.is_none()).count();
            }
        }
        assert!(nulls > 300, "null records on the way were met: {nulls}");
    }

    /// The table is made at its full size: churn (every record a new group, the oldest
    /// leaving) reclaims deleted slots in place and never grows it.
    #[test]
    fn the_window_never_grows() {
        let mut window = KWindow::new(5, 1000);
        let (ring, table) = (window.order.capacity(), window.sizes.capacity());
        assert!(ring >= 1000 && table >= 2000);
        for g in 0..200_000u64 {
            window.observe(g.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        assert_eq!(window.order.capacity(), ring);
        assert_eq!(window.sizes.capacity(), table);
        assert_eq!(window.below_k(), 1000);
        assert!(window_bytes(100_000) <= 100_000 * BYTES_PER_RECORD);
        assert!(window_bytes(1_000_000) <= 1_000_000 * BYTES_PER_RECORD);
    }

    #[test]
    fn everyone_alone_and_everyone_together() {
        let mut window = KWindow::new(5, 100);
        for g in 0..100 {
            window.observe(g);
        }
        assert_eq!(window.ratio(), 1.0);
        for _ in 0..100 {
            window.observe(7);
        }
        assert_eq!(window.ratio(), 0.0);
        assert_eq!(window.groups(), 1);
    }
}
