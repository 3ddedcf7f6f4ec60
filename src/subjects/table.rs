//! What a worker holds of the subject registry: for each subject with something recorded, 16
//! bytes of its subject id and 4 bytes of state bits. No raw value, no token, no request id or
//! time (those stay in the topic): at one million subjects the table is about 20 MiB of
//! entries in a hash table of 1–2 Mi slots (docs/deploy.md, "Sizing").
//!
//! Subject ids are MAC outputs, uniformly distributed and unknown to anyone without the
//! subject key, so the table hashes them by their first 8 bytes instead of running SipHash
//! over all 16: no one can aim collisions at it.
//!
//! Almost every identifier a worker meets is no one's in the registry, and at a million
//! entries the table is far larger than a core's caches: each lookup would be a cache miss.
//! A blocked Bloom filter in front of it (8 to 16 bits per entry, all of an id's 4 bits in one
//! 64-byte line: 1 MiB at one million) answers "not recorded" from one cache line for all but
//! a few percent of them; only those, and the recorded, reach the table.

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
    filter: Filter,
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
            + self.filter.blocks.len() * 64
    }

    /// Whether a record of this subject is withheld from a pipeline with `policy`.
    #[inline]
    pub fn withholds(&self, id: &SubjectBytes, policy: SubjectPolicy) -> bool {
        let state = match self.filter.may_contain(id) {
            true => self.states.get(id).copied().unwrap_or(0),
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
        self.update(id, set, clear);
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
                    self.update(id, 0, opted_in(i) | opted_out(i));
                    Applied::Applied
                }
                None => Applied::NotFollowed,
            },
        }
    }

    fn update(&mut self, id: SubjectBytes, set: u32, clear: u32) {
        let old = self.states.get(&id).copied().unwrap_or(0);
        let new = (old & !clear) | set;
        if new == 0 {
            // Its filter bits stay: a false positive costs one table lookup, never a wrong
            // answer.
            self.states.remove(&id);
        } else {
            if self.states.insert(id, new).is_none() {
                self.filter.insert(&id);
                if self.states.len() > self.filter.capacity() {
                    self.filter = Filter::with_capacity(self.states.len() * 2);
                    for id in self.states.keys() {
                        self.filter.insert(id);
                    }
                }
            }
        }
        match (old & ERASED != 0, new & ERASED != 0) {
            (false, true) => self.erased += 1,
            (true, false) => self.erased -= 1,
            _ => {}
        }
    }
}

/// Bits of filter per entry (at least: the filter is rebuilt twice as large when full).
const BITS_PER_ENTRY: usize = 8;

/// A blocked Bloom filter of subject ids: 64-byte blocks, 4 bits of each id in one block, 8
/// to 16 bits per entry. Bytes 8..16 of the id choose the block and the bits (the table's hash
/// uses bytes 0..8).
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
    fn bits(&self, id: &SubjectBytes) -> (usize, [u16; 4]) {
        let word = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"));
        let block = (word as usize) & (self.blocks.len() - 1);
        let rest = word >> 28;
        let bit = |i: u32| ((rest >> (9 * i)) & 511) as u16;
        (block, [bit(0), bit(1), bit(2), bit(3)])
    }

    fn insert(&mut self, id: &SubjectBytes) {
        let (block, bits) = self.bits(id);
        for bit in bits {
            self.blocks[block][usize::from(bit / 64)] |= 1 << (bit % 64);
        }
    }

    #[inline]
    fn may_contain(&self, id: &SubjectBytes) -> bool {
        let (block, bits) = self.bits(id);
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
    use crate::subjects::{subject_bytes, subject_text};
    use crate::token::TokenClass;

    fn record(subject: &str, state: SubjectState, domain: Option<&str>) -> RegistryRecord {
        RegistryRecord::new(
            subject.into(),
            state,
            domain,
            "2026-12-04T00:00:00Z",
            "req-1",
        )
    }

    #[test]
    fn erasure_and_consent_withhold_as_each_pipeline_asks() {
        let key = SubjectKey::new("s-1", &Secret::generate());
        let id = subject_bytes(&key, TokenClass::Phone, b"+6591234567");
        let other = subject_bytes(&key, TokenClass::Phone, b"+6598765432");
        let subject = subject_text(&key, &id);
        let mut table = SubjectTable::new("s-1", vec![Some("marketing".into())]);
        let plain = SubjectPolicy::default();
        let opt_out = SubjectPolicy {
            consent: Some((ConsentMode::OptOut, 0)),
            ..plain
        };
        let opt_in = SubjectPolicy {
            consent: Some((ConsentMode::OptIn, 0)),
            ..plain
        };
        assert!(!table.withholds(&id, plain) && !table.withholds(&id, opt_out));
        assert!(
            table.withholds(&id, opt_in),
            "opt-in: no one until they opt in"
        );

        assert_eq!(
            table.apply(&record(&subject, SubjectState::OptedIn, Some("marketing"))),
            Applied::Applied
        );
        assert!(!table.withholds(&id, opt_in) && table.withholds(&other, opt_in));
        table.apply(&record(&subject, SubjectState::OptedOut, Some("marketing")));
        assert!(
            table.withholds(&id, opt_out)
                && table.withholds(&id, opt_in)
                && !table.withholds(&id, plain)
        );
        assert_eq!(
            table.apply(&record(&subject, SubjectState::OptedOut, Some("fraud"))),
            Applied::NotFollowed
        );

        table.apply(&record(&subject, SubjectState::Erased, None));
        assert!(table.withholds(&id, plain) && !table.withholds(&other, plain));
        assert_eq!((table.len(), table.erased()), (1, 1));
        assert_eq!(
            table.apply_tombstone(format!("{subject}/erased").as_bytes()),
            Applied::ErasureKept
        );
        table.apply_tombstone(format!("{subject}/consent/marketing").as_bytes());
        assert!(table.withholds(&id, plain), "still erased");

        // The filter grows with the table and never hides an entry.
        let mut big = SubjectTable::new("s-1", vec![]);
        let ids: Vec<SubjectBytes> = (0..50_000u32)
            .map(|n| subject_bytes(&key, TokenClass::Phone, format!("+1415{n:07}").as_bytes()))
            .collect();
        for id in &ids {
            big.apply(&record(&subject_text(&key, id), SubjectState::Erased, None));
        }
        assert!(ids.iter().all(|id| big.withholds(id, plain)));
        let strangers = (0..50_000u32)
            .filter(|n| {
                let id = subject_bytes(&key, TokenClass::Phone, format!("+1416{n:07}").as_bytes());
                big.filter.may_contain(&id)
            })
            .count();
        assert!(strangers < 2_500, "{strangers} false positives of 50,000");

        let foreign = subject_text(&SubjectKey::new("s-2", &Secret::generate()), &id);
        assert_eq!(
            table.apply(&record(&foreign, SubjectState::Erased, None)),
            Applied::OtherKey
        );
    }
}
