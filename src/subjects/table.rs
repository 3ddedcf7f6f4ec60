//! What a worker holds of the subject registry: for each subject with something recorded, 16
//! bytes of its subject id and 4 bytes of state bits, and the 8-byte hints of the records read.
//! No raw value, no token, no request id or time (those stay in the topic): at one million
//! subjects about 20 MiB of entries in a hash table of 1–2 Mi slots, 8 MiB of hints and a 1–2
//! MiB filter (docs/deploy.md, "Sizing").
//!
//! Subject ids are MAC outputs, uniformly distributed and unknown to anyone without the
//! subject key, so the table hashes them by their first 8 bytes instead of running SipHash
//! over all 16: no one can aim collisions at it.
//!
//! Almost every identifier a worker meets is no one's in the registry. Computing its subject id
//! (an HMAC-SHA256) and looking it up in a table far larger than a core's caches would cost
//! more than the rest of its token. So each record also carries the subject's *hint* (a keyed
//! SipHash of the same input, docs/formats.md §5), and a blocked Bloom filter of the hints (8 to
//! 16 bits per entry, all of a hint's 4 bits in one 64-byte line: 1 MiB at one million) answers
//! "not recorded" for the price of a SipHash and one cache line for all but a few percent of
//! identifiers; only those, and the recorded, get a subject id and reach the table. A record of
//! the first format has no hint: while the table holds one, every identifier goes to the table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::record::{parse_key, Aspect, RegistryRecord, SubjectState};
use super::{parse_subject_text, ConsentMode, SubjectBytes, SubjectPolicy};

/// Most domains whose consent a worker follows (two bits each beside the erased bit).
pub const MAX_CONSENT_DOMAINS: usize = 15;

const ERASED: u32 = 1;

fn opted_out(domain: usize) -> u32 {
    1 << (1 + 2 * domain)
}

fn opted_in(domain: usize) -> u32 {
    1 << (2 + 2 * domain)
}

/// What applying one registry record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table changed (or already said so).
    Applied,
    /// A consent for a domain no pipeline of this worker asks consent for: nothing to keep.
    NotFollowed,
    /// A subject id under another subject key: it can match no one here.
    OtherKey,
    /// A tombstone on an erasure: an erasure is never undone while a worker runs (after the
    /// topic's compaction removes it, a restarted worker no longer sees it: docs/security.md).
    ErasureKept,
}

/// The registry as a worker keeps it.
#[derive(Debug, Default)]
pub struct SubjectTable {
    key_id: String,
    /// The domains whose consent is followed, by bit position (`None`: the default domain).
    domains: Vec<Option<String>>,
    states: HashMap<SubjectBytes, u32, BuildHasherDefault<FirstBytes>>,
    erased: usize,
    /// The hints of the records applied (repeats removed now and then), to rebuild the
    /// filter when it grows: a filter cannot give back what it holds.
    hints: Vec<u64>,
    filter: Filter,
    /// Records applied without a hint (format v1). Never decremented: while it is not zero
    /// the filter is not asked, and every identifier is looked up in the table.
    unhinted: usize,
}

impl SubjectTable {
    /// An empty table for subject ids under `key_id`, following consent in `domains`
    /// (at most [`MAX_CONSENT_DOMAINS`]; more are refused by the config check).
    pub fn new(key_id: &str, domains: Vec<Option<String>>) -> Self {
        SubjectTable {
            key_id: key_id.to_owned(),
            domains,
            ..SubjectTable::default()
        }
    }

    /// The bit position of a followed domain.
    pub fn domain_index(&self, domain: Option<&str>) -> Option<usize> {
        self.domains.iter().position(|d| d.as_deref() == domain)
    }

    /// Subjects with something recorded.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether nothing is recorded for anyone.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Erased subjects.
    pub fn erased(&self) -> usize {
        self.erased
    }

    /// Bytes the table's slots and its filter take (not the allocator's own).
    pub fn memory_bytes(&self) -> usize {
        self.states.capacity() * (std::mem::size_of::<(SubjectBytes, u32)>() + 1)
            + self.hints.capacity() * 8
            + self.filter.blocks.len() * 64
    }

    /// Records applied without a hint (format v1).
    pub fn unhinted(&self) -> usize {
        self.unhinted
    }

    /// Asks for the memory [`Self::withholds`] will read first for `hint`, so that the
    /// caller's work in between hides the cache miss.
    #[inline]
    pub fn prefetch(&self, hint: u64) {
        if self.unhinted == 0 {
            self.filter.prefetch(hint);
        }
    }

    /// Whether a record of the subject whose hint is `hint` is withheld from a pipeline with
    /// `policy`. `id` computes the subject id, and is called only when the hint does not rule
    /// the subject out.
    #[inline]
    pub fn withholds(
        &self,
        hint: u64,
        id: impl FnOnce() -> SubjectBytes,
        policy: SubjectPolicy,
    ) -> bool {
        let state = match self.unhinted > 0 || self.filter.may_contain(hint) {
            true => self.states.get(&id()).copied().unwrap_or(0),
            false => 0,
        };
        if state & ERASED != 0 {
            return true;
        }
        match policy.consent {
            None => false,
            Some((ConsentMode::OptOut, i)) => state & opted_out(i) != 0,
            Some((ConsentMode::OptIn, i)) => state & opted_in(i) == 0,
        }
    }

    /// Applies one registry record (already parsed and checked against its key).
    pub fn apply(&mut self, record: &RegistryRecord) -> Applied {
        let Some((key_id, id)) = parse_subject_text(&record.subject) else {
            return Applied::OtherKey;
        };
        if key_id != self.key_id {
            return Applied::OtherKey;
        }
        let (set, clear) = match record.state {
            SubjectState::Erased => (ERASED, 0),
            state => {
                let Some(i) = self.domain_index(record.domain.as_deref()) else {
                    return Applied::NotFollowed;
                };
                match state {
                    SubjectState::OptedOut => (opted_out(i), opted_in(i)),
                    _ => (opted_in(i), opted_out(i)),
                }
            }
        };
        self.update(id, record.hint(), set, clear);
        Applied::Applied
    }

    /// Applies a tombstone (a key with no value): a consent is forgotten; an erasure stays.
    pub fn apply_tombstone(&mut self, key: &[u8]) -> Applied {
        let Some((subject, aspect)) = parse_key(key) else {
            return Applied::OtherKey;
        };
        let Some((key_id, id)) = parse_subject_text(subject) else {
            return Applied::OtherKey;
        };
        if key_id != self.key_id {
            return Applied::OtherKey;
        }
        match aspect {
            Aspect::Erased => Applied::ErasureKept,
            Aspect::Consent(domain) => match self.domain_index(domain) {
                Some(i) => {
                    self.update(id, None, 0, opted_in(i) | opted_out(i));
                    Applied::Applied
                }
                None => Applied::NotFollowed,
            },
        }
    }

    /// Sets and clears state bits of a subject. `hint` is that of the record that sets them
    /// (`None` for a v1 record); a tombstone only clears, and the subject's hint, if it has
    /// kept any bit, is in the filter already.
    fn update(&mut self, id: SubjectBytes, hint: Option<u64>, set: u32, clear: u32) {
        let old = self.states.get(&id).copied().unwrap_or(0);
        let new = (old & !clear) | set;
        if new == 0 {
            // Its hint stays in the filter: a false positive costs one subject id and one
            // table lookup, never a wrong answer.
            self.states.remove(&id);
        } else {
            self.states.insert(id, new);
        }
        if set != 0 {
            match hint {
                Some(hint) => self.remember(hint),
                None => self.unhinted += 1,
            }
        }
        match (old & ERASED != 0, new & ERASED != 0) {
            (false, true) => self.erased += 1,
            (true, false) => self.erased -= 1,
            _ => {}
        }
    }

    /// Puts a hint in the filter, and in the list it is rebuilt from. When the list outgrows
    /// the filter, repeats (the same subjects' records read again: a registry not yet
    /// compacted, consent changed back and forth) are removed, and the filter is rebuilt twice
    /// as large as the distinct hints if they still fill more than half of it; so the list
    /// stays within the filter's capacity, at most 4 times the subjects ever recorded.
    fn remember(&mut self, hint: u64) {
        self.filter.insert(hint);
        self.hints.push(hint);
        if self.hints.len() > self.filter.capacity() {
            self.hints.sort_unstable();
            self.hints.dedup();
            if self.hints.len() * 2 > self.filter.capacity() {
                self.filter = Filter::with_capacity(self.hints.len() * 2);
                for &hint in &self.hints {
                    self.filter.insert(hint);
                }
            }
        }
    }
}

/// Bits of filter per entry (at least: the filter is rebuilt twice as large when full).
const BITS_PER_ENTRY: usize = 8;

/// A blocked Bloom filter of subject hints: 64-byte blocks, 4 bits of each hint in one block,
/// 8 to 16 bits per entry. The hint's low bits choose the block, its top 36 the bits.
#[derive(Debug)]
struct Filter {
    blocks: Vec<[u64; 8]>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::with_capacity(1024)
    }
}

impl Filter {
    fn with_capacity(entries: usize) -> Self {
        let blocks = (entries * BITS_PER_ENTRY / 512).max(1).next_power_of_two();
        Filter {
            blocks: vec![[0u64; 8]; blocks],
        }
    }

    /// Entries it holds at [`BITS_PER_ENTRY`] bits each.
    fn capacity(&self) -> usize {
        self.blocks.len() * 512 / BITS_PER_ENTRY
    }

    #[inline]
    fn bits(&self, word: u64) -> (usize, [u16; 4]) {
        let block = (word as usize) & (self.blocks.len() - 1);
        let rest = word >> 28;
        let bit = |i: u32| ((rest >> (9 * i)) & 511) as u16;
        (block, [bit(0), bit(1), bit(2), bit(3)])
    }

    fn insert(&mut self, hint: u64) {
        let (block, bits) = self.bits(hint);
        for bit in bits {
            self.blocks[block][usize::from(bit / 64)] |= 1 << (bit % 64);
        }
    }

    #[inline]
    fn prefetch(&self, hint: u64) {
        let (block, _) = self.bits(hint);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let line: *const i8 = self.blocks[block].as_ptr().cast();
            // A hint to the processor: it reads nothing the program sees and cannot fault.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(line)
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = block;
    }

    #[inline]
    fn may_contain(&self, hint: u64) -> bool {
        let (block, bits) = self.bits(hint);
        let block = &self.blocks[block];
        bits.iter()
            .all(|bit| block[usize::from(bit / 64)] & (1 << (bit % 64)) != 0)
    }
}

/// The hasher of subject ids: their first 8 bytes (module docs say why that is enough).
#[derive(Default)]
pub struct FirstBytes(u64);

impl Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 16]` hashes as a length (write_usize) and then its bytes in one write.
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    fn write_usize(&mut self, _length: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Secret, SubjectKey};
    use crate::subjects::{subject_bytes, subject_hint, subject_text};
    use crate::token::TokenClass;

    fn record(
        key: &SubjectKey,
        canonical: &str,
        state: SubjectState,
        domain: Option<&str>,
    ) -> RegistryRecord {
        let id = subject_bytes(key, TokenClass::Phone, canonical.as_bytes());
        RegistryRecord::new(
            subject_text(key, &id),
            subject_hint(key, TokenClass::Phone, canonical.as_bytes()),
            state,
            domain,
            "2026-12-04T00:00:00Z",
            "req-1",
        )
    }

    /// The table's answer for a phone number, with a count of the subject ids it computed.
    fn asks(
        table: &SubjectTable,
        key: &SubjectKey,
        canonical: &str,
        policy: SubjectPolicy,
        ids: &mut usize,
    ) -> bool {
        let hint = subject_hint(key, TokenClass::Phone, canonical.as_bytes());
        let id = || {
            *ids += 1;
            subject_bytes(key, TokenClass::Phone, canonical.as_bytes())
        };
        table.withholds(hint, id, policy)
    }

    #[test]
    fn erasure_and_consent_withhold_as_each_pipeline_asks() {
        let key = SubjectKey::new("s-1", &Secret::generate());
        let (person, other) = ("+6591234567", "+6598765432");
        let mut table = SubjectTable::new("s-1", vec![Some("marketing".into())]);
        let ids = &mut 0;
        let plain = SubjectPolicy::default();
        let opt_out = SubjectPolicy {
            consent: Some((ConsentMode::OptOut, 0)),
            ..plain
        };
        let opt_in = SubjectPolicy {
            consent: Some((ConsentMode::OptIn, 0)),
            ..plain
        };
        let ask = |table: &SubjectTable, who: &str, policy, ids: &mut usize| {
            asks(table, &key, who, policy, ids)
        };
        assert!(!ask(&table, person, plain, ids) && !ask(&table, person, opt_out, ids));
        assert!(
            ask(&table, person, opt_in, ids),
            "opt-in: no one until they opt in"
        );

        let consent = |state, domain| record(&key, person, state, domain);
        assert_eq!(
            table.apply(&consent(SubjectState::OptedIn, Some("marketing"))),
            Applied::Applied
        );
        assert!(!ask(&table, person, opt_in, ids) && ask(&table, other, opt_in, ids));
        table.apply(&consent(SubjectState::OptedOut, Some("marketing")));
        assert!(
            ask(&table, person, opt_out, ids)
                && ask(&table, person, opt_in, ids)
                && !ask(&table, person, plain, ids)
        );
        assert_eq!(
            table.apply(&consent(SubjectState::OptedOut, Some("fraud"))),
            Applied::NotFollowed
        );

        table.apply(&consent(SubjectState::Erased, None));
        assert!(ask(&table, person, plain, ids) && !ask(&table, other, plain, ids));
        assert_eq!((table.len(), table.erased()), (1, 1));
        let again = table.apply(&consent(SubjectState::Erased, None));
        assert_eq!(again, Applied::Applied, "the same record again");
        let subject = consent(SubjectState::Erased, None).subject;
        assert_eq!(
            table.apply_tombstone(format!("{subject}/erased").as_bytes()),
            Applied::ErasureKept
        );
        table.apply_tombstone(format!("{subject}/consent/marketing").as_bytes());
        assert!(ask(&table, person, plain, ids), "still erased");
        assert_eq!(
            table.unhinted(),
            0,
            "a tombstone has no hint, and needs none"
        );

        let foreign = SubjectKey::new("s-2", &Secret::generate());
        assert_eq!(
            table.apply(&record(&foreign, person, SubjectState::Erased, None)),
            Applied::OtherKey
        );
    }

    /// The filter grows with the table and never hides an entry; a stranger's subject id is
    /// computed only for the few hints it does not rule out.
    #[test]
    fn the_hint_filter_grows_never_hides_anyone_and_spares_most_subject_ids() {
        let key = SubjectKey::new("s-1", &Secret::generate());
        let plain = SubjectPolicy::default();
        let mut big = SubjectTable::new("s-1", vec![]);
        let numbers: Vec<String> = (0..50_000u32).map(|n| format!("+1415{n:07}")).collect();
        for number in &numbers {
            big.apply(&record(&key, number, SubjectState::Erased, None));
        }
        // Records read twice (a registry not yet compacted) add no entry and keep the list of
        // hints within the filter's capacity.
        for number in &numbers[..20_000] {
            big.apply(&record(&key, number, SubjectState::Erased, None));
        }
        assert_eq!(
            (big.len(), big.erased(), big.unhinted()),
            (50_000, 50_000, 0)
        );
        assert!(big.hints.len() <= big.filter.capacity());
        let ids = &mut 0;
        assert!(numbers.iter().all(|n| asks(&big, &key, n, plain, ids)));
        assert_eq!(*ids, 50_000, "the recorded: every one looked up");
        *ids = 0;
        let strangers = (0..50_000u32)
            .filter(|n| asks(&big, &key, &format!("+1416{n:07}"), plain, ids))
            .count();
        assert_eq!(strangers, 0);
        assert!(
            *ids < 2_500,
            "{ids} subject ids computed for 50,000 strangers"
        );
    }

    /// A record of the first format (no hint) is honoured: the filter is no longer asked, and
    /// every identifier is looked up by its subject id.
    #[test]
    fn a_v1_record_without_a_hint_still_withholds() {
        let key = SubjectKey::new("s-1", &Secret::generate());
        let mut table = SubjectTable::new("s-1", vec![]);
        table.apply(&record(&key, "+6598765432", SubjectState::Erased, None));
        let mut v1 = record(&key, "+6591234567", SubjectState::Erased, None);
        v1.format = super::super::record::REGISTRY_FORMAT_V1.into();
        v1.hint = None;
        let json = v1.to_json();
        let v1 = RegistryRecord::parse(v1.key().as_bytes(), json.as_bytes()).unwrap();
        assert_eq!(table.apply(&v1), Applied::Applied);
        assert_eq!(table.unhinted(), 1);
        let ids = &mut 0;
        let plain = SubjectPolicy::default();
        assert!(asks(&table, &key, "+6591234567", plain, ids));
        assert!(!asks(&table, &key, "+6500000000", plain, ids));
        assert_eq!(*ids, 2, "no identifier ruled out by its hint");
    }
}
