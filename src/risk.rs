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
//! hashed with SipHash-1-3 under a key drawn at random when the process starts (std's
//! `RandomState`), so what the window holds is 8 bytes per record that mean nothing outside
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
pub const WINDOW_RANGE: std::ops::RangeInclusive<usize> = 100..=10_000_000;
pub const MAX_QUASI_IDENTIFIERS: usize = 16;
/// Bytes a record costs in the window, at most: its group in the ring (8), and at worst a
/// group of its own in the table (8 + 4 bytes, at hashbrown's 7/8 load and with its control
/// byte, about 16). docs/deploy.md sizes memory with it.
pub const BYTES_PER_RECORD: usize = 8 + 16;

/// What is wrong with a pipeline's `[pipeline.risk]` (checked at start with its rules): the
/// settings' ranges, and quasi-identifiers that name no field of its derived output schema.
pub fn problems(risk: &crate::config::RiskConfig, plan: &Plan) -> Vec<String> {
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
    for path in &risk.quasi_identifiers {
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

/// k-anonymity of the last `capacity` records: how many of them share their quasi-identifier
/// values with fewer than `k - 1` others. Kept up to date record by record, in O(1).
#[derive(Debug)]
pub struct KWindow {
    k: u32,
    capacity: usize,
    /// Each record's group, oldest first.
    order: VecDeque<u64>,
    /// Records per group in the window.
    sizes: HashMap<u64, u32>,
    /// Records in groups smaller than `k`.
    below_k: usize,
}

impl KWindow {
    pub fn new(k: u32, capacity: usize) -> KWindow {
        KWindow {
            k: k.max(1),
            capacity: capacity.max(1),
            order: VecDeque::with_capacity(capacity.min(1 << 20)),
            sizes: HashMap::new(),
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
    locators: HashMap<u32, Vec<Option<Vec<Locate>>>>,
    hasher: RandomState,
}

impl PipelineRisk {
    pub fn new(paths: Vec<String>, k: u32, window: usize) -> PipelineRisk {
        PipelineRisk {
            window: KWindow::new(k, window),
            paths,
            locators: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// The most records the window holds.
    pub fn window_capacity(&self) -> usize {
        self.window.capacity
    }

    /// Adds one published record: `avro` is its sanitized value (without the 5-byte framing),
    /// written with `plan`'s output schema under `output_schema_id`.
    pub fn observe(&mut self, plan: &Plan, output_schema_id: u32, avro: &[u8]) {
        let paths = &self.paths;
        let locators = self.locators.entry(output_schema_id).or_insert_with(|| {
            // A field a version does not have reads as absent (its own value).
            paths
                .iter()
                .map(|path| crate::plan::locate_output(plan, path).ok())
                .collect()
        });
        let mut hasher = self.hasher.build_hasher();
        for locator in locators.iter() {
            match locator
                .as_ref()
                .and_then(|steps| crate::transform::locate_span(steps, avro))
            {
                Some(bytes) => {
                    hasher.write_u8(1);
                    hasher.write_usize(bytes.len());
                    hasher.write(bytes);
                }
                None => hasher.write_u8(0),
            }
        }
        self.window.observe(hasher.finish());
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
