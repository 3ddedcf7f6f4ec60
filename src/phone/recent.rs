//! The last few full-parse answers of one thread: an event often names one number twice (the
//! caller field and the record key), so a number the fast path declines is parsed only once.

use std::borrow::Cow;

use rlibphonenumber::Region;

use crate::class::TokenClass;

thread_local! {
    pub(super) static RECENT_PHONES: std::cell::RefCell<RecentPhones> = Default::default();
}

/// The last [`RecentPhones::SIZE`] parser answers of one thread, held inline (no allocation:
/// a miss costs a copy of a few bytes, not the parse). The raw numbers in it are zeroized when
/// overwritten and when the thread ends, like every other copy of a raw value the worker holds
/// while a record is in flight. Inputs longer than [`RecentPhone::INPUT`] bytes are not kept.
#[derive(Default)]
pub(super) struct RecentPhones {
    entries: Vec<RecentPhone>,
    next: usize,
}

struct RecentPhone {
    region: Region,
    class: TokenClass,
    input: [u8; RecentPhone::INPUT],
    input_len: usize,
    /// The E.164 form (empty for `phone-raw`, whose canonical form is the input).
    canonical: [u8; RecentPhone::CANONICAL],
    canonical_len: usize,
}

impl RecentPhone {
    const INPUT: usize = 48;
    /// `+`, a country code and at most 17 national digits.
    const CANONICAL: usize = 24;

    fn input(&self) -> &[u8] {
        &self.input[..self.input_len]
    }
}

impl Drop for RecentPhone {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.input.zeroize();
        self.canonical.zeroize();
    }
}

impl RecentPhones {
    const SIZE: usize = 8;

    pub(super) fn find<'a>(
        &self,
        region: Region,
        input: &'a str,
    ) -> Option<(TokenClass, Cow<'a, str>)> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.region == region && e.input() == input.as_bytes())?;
        Some(match entry.class {
            TokenClass::Phone => {
                let canonical =
                    std::str::from_utf8(&entry.canonical[..entry.canonical_len]).ok()?;
                (TokenClass::Phone, Cow::Owned(canonical.to_owned()))
            }
            class => (class, Cow::Borrowed(input)),
        })
    }

    pub(super) fn remember(
        &mut self,
        region: Region,
        input: &str,
        class: TokenClass,
        canonical: &str,
    ) {
        let canonical = if class == TokenClass::Phone {
            canonical.as_bytes()
        } else {
            b""
        };
        if input.len() > RecentPhone::INPUT || canonical.len() > RecentPhone::CANONICAL {
            return;
        }
        let mut entry = RecentPhone {
            region,
            class,
            input: [0; RecentPhone::INPUT],
            input_len: input.len(),
            canonical: [0; RecentPhone::CANONICAL],
            canonical_len: canonical.len(),
        };
        entry.input[..input.len()].copy_from_slice(input.as_bytes());
        entry.canonical[..canonical.len()].copy_from_slice(canonical);
        if self.entries.len() < Self::SIZE {
            self.entries.push(entry);
        } else {
            // The entry replaced is dropped, so zeroized.
            self.entries[self.next] = entry;
        }
        self.next = (self.next + 1) % Self::SIZE;
    }
}
