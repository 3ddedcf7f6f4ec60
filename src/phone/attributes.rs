//! Derived attributes of a phone number: the region it belongs to, its country calling code
//! and its number type (mobile, fixed line, toll free, …), as libphonenumber assigns them.
//!
//! They are read from the canonical form the token is made of (`+`, calling code, national
//! significant number), so the number is parsed once for both. The steps are libphonenumber's
//! own `getRegionCodeForNumber` and `getNumberType`, with its metadata ([`super::metadata`],
//! generated from the same release as the parser's):
//!
//! - the calling code is the first one, two or three digits that are a code (codes are
//!   prefix-free);
//! - a code of one region is that region's, valid number or not; of several (`+1`, `+44`,
//!   `+7`, …), the first region, main region first, whose leading digits start the national
//!   number or whose number types include it; none: no region;
//! - the type: none unless the territory's general pattern and lengths admit the number, then
//!   the first of premium rate, toll free, shared cost, VoIP, personal number, pager, UAN and
//!   voicemail whose lengths and pattern match; then fixed line, mobile, or "fixed line or
//!   mobile" where the territory cannot tell them apart.
//!
//! A non-geographic code (`+800`, `+882`, …) has a type but no region (libphonenumber's `001`
//! is not an ISO 3166 code). tests/phone_fast.rs holds every answer to the full parse's
//! `get_region_code` and `get_type` in every region, and the fuzz target does too.

use std::sync::{LazyLock, OnceLock};

use regex::Regex;
use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use rlibphonenumber::{PhoneNumberType, Region, PHONE_NUMBER_UTIL};

use super::fast::{index_of, main_territory, territory_of, Territory};
use super::metadata::{SHARED_CALLING_CODES, TERRITORIES};

/// What a number is used for, as libphonenumber's metadata classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NumberType {
    FixedLine,
    Mobile,
    /// Where the territory's numbering plan does not tell the two apart (`+1`, for example).
    FixedLineOrMobile,
    TollFree,
    PremiumRate,
    SharedCost,
    Voip,
    PersonalNumber,
    Pager,
    /// Universal access number (a company's single number).
    Uan,
    Voicemail,
    /// A number the metadata gives no type: not a valid number of its territory.
    Unknown,
}

impl NumberType {
    /// Every type, in the order the docs list them.
    pub const ALL: [NumberType; 12] = [
        NumberType::FixedLine,
        NumberType::Mobile,
        NumberType::FixedLineOrMobile,
        NumberType::TollFree,
        NumberType::PremiumRate,
        NumberType::SharedCost,
        NumberType::Voip,
        NumberType::PersonalNumber,
        NumberType::Pager,
        NumberType::Uan,
        NumberType::Voicemail,
        NumberType::Unknown,
    ];

    /// The value written to a `_number_type` field (libphonenumber's enum name, lower case).
    pub fn as_str(self) -> &'static str {
        match self {
            NumberType::FixedLine => "fixed_line",
            NumberType::Mobile => "mobile",
            NumberType::FixedLineOrMobile => "fixed_line_or_mobile",
            NumberType::TollFree => "toll_free",
            NumberType::PremiumRate => "premium_rate",
            NumberType::SharedCost => "shared_cost",
            NumberType::Voip => "voip",
            NumberType::PersonalNumber => "personal_number",
            NumberType::Pager => "pager",
            NumberType::Uan => "uan",
            NumberType::Voicemail => "voicemail",
            NumberType::Unknown => "unknown",
        }
    }

    /// The parser's own type, as this module names it.
    pub fn of_parser(kind: PhoneNumberType) -> NumberType {
        match kind {
            PhoneNumberType::FixedLine => NumberType::FixedLine,
            PhoneNumberType::Mobile => NumberType::Mobile,
            PhoneNumberType::FixedLineOrMobile => NumberType::FixedLineOrMobile,
            PhoneNumberType::TollFree => NumberType::TollFree,
            PhoneNumberType::PremiumRate => NumberType::PremiumRate,
            PhoneNumberType::SharedCost => NumberType::SharedCost,
            PhoneNumberType::VoIP => NumberType::Voip,
            PhoneNumberType::PersonalNumber => NumberType::PersonalNumber,
            PhoneNumberType::Pager => NumberType::Pager,
            PhoneNumberType::UAN => NumberType::Uan,
            PhoneNumberType::VoiceMail => NumberType::Voicemail,
            PhoneNumberType::Unknown => NumberType::Unknown,
        }
    }
}

/// One number type's description in a territory's metadata.
#[derive(Debug)]
pub struct TypeDesc {
    pub kind: NumberType,
    /// The national significant numbers of this type (matched whole).
    pub pattern: &'static str,
    /// Their lengths.
    pub lengths: &'static [u8],
}

/// What a phone number's canonical form says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneAttributes {
    /// ISO 3166 alpha-2 region (`SG`); `None` for a non-geographic code or where no region of
    /// a shared code claims the number.
    pub region: Option<&'static str>,
    pub calling_code: u16,
    pub number_type: NumberType,
}

/// The attributes of a canonical number (`+` and digits, as [`super::PhoneCanon`] makes it);
/// `None` for anything else (a `phone-raw` value).
pub fn of_canonical(e164: &str) -> Option<PhoneAttributes> {
    let digits = e164.strip_prefix('+')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (code, main, national) = split_calling_code(digits)?;
    let shared = SHARED_CALLING_CODES
        .iter()
        .find(|(shared, _)| *shared == code)
        .map(|(_, regions)| *regions);
    let (territory, number_type) = match shared {
        None => (Some(main), number_type(main, national)),
        Some(regions) => region_of_shared_code(regions, national),
    };
    Some(PhoneAttributes {
        region: territory.map(|t| t.id).filter(|id| *id != "001"),
        calling_code: code,
        number_type,
    })
}

/// The attributes the full parse gives (`rlibphonenumber`'s `get_region_code` and
/// `get_type`), for the reference path and the tests; `None` where it refuses the value.
pub fn of_full_parse(region: Region, trimmed: &str) -> Option<PhoneAttributes> {
    let number = PHONE_NUMBER_UTIL.parse(trimmed, Some(region)).ok()?;
    let region = number
        .get_region_code()
        .filter(|r| *r != Region::World)
        .and_then(territory_of)
        .map(|t| t.id);
    Some(PhoneAttributes {
        region,
        calling_code: u16::try_from(number.country_code).ok()?,
        number_type: NumberType::of_parser(number.get_type()),
    })
}

/// The calling code, its main territory and the national significant number.
fn split_calling_code(digits: &str) -> Option<(u16, &'static Territory, &str)> {
    let mut code = 0u16;
    for (len, digit) in digits.bytes().take(3).enumerate() {
        code = code * 10 + u16::from(digit - b'0');
        if code == 0 {
            return None;
        }
        if let Some(main) = main_territory(code) {
            return Some((code, main, &digits[len + 1..]));
        }
    }
    None
}

/// libphonenumber's `getRegionCodeForNumberFromRegionList`: the first region whose leading
/// digits start the number, or that gives it a type. Returns the type too (computed once).
fn region_of_shared_code(
    regions: &[u16],
    national: &str,
) -> (Option<&'static Territory>, NumberType) {
    for &at in regions {
        let Some(territory) = TERRITORIES.get(usize::from(at)) else {
            continue;
        };
        let Some(compiled) = compiled(territory) else {
            continue;
        };
        if compiled
            .leading_digits
            .as_ref()
            .is_some_and(|lead| lead.is_match(national))
        {
            return (Some(territory), number_type(territory, national));
        }
        let kind = number_type(territory, national);
        if kind != NumberType::Unknown {
            return (Some(territory), kind);
        }
    }
    (None, NumberType::Unknown)
}

/// libphonenumber's `getNumberTypeHelper` for a national significant number of `territory`.
fn number_type(territory: &'static Territory, national: &str) -> NumberType {
    let Some(compiled) = compiled(territory) else {
        return NumberType::Unknown;
    };
    let len = national.len();
    let bit = if len < 64 { 1u64 << len } else { 0 };
    // A description matches where it has the number's length and its pattern matches whole
    // (libphonenumber's `isNumberMatchingDesc`). The length test rules most out for nothing.
    if compiled.general_lengths & bit == 0 {
        return NumberType::Unknown;
    }
    // Every pattern of the territory in one pass over the digits.
    let Some(matched) = compiled.patterns.matches(national) else {
        return NumberType::Unknown;
    };
    if matched & 1 == 0 {
        return NumberType::Unknown;
    }
    let matches = |at: Option<usize>| {
        at.is_some_and(|at| compiled.types[at].1 & bit != 0 && matched & (2 << at) != 0)
    };
    let (mut fixed_line, mut mobile) = (None, None);
    for (at, (kind, _)) in compiled.types.iter().enumerate() {
        match kind {
            NumberType::FixedLine => fixed_line = Some(at),
            NumberType::Mobile => mobile = Some(at),
            _ if matches(Some(at)) => return *kind,
            _ => {}
        }
    }
    if matches(fixed_line) {
        if territory.same_mobile_and_fixed_line || matches(mobile) {
            return NumberType::FixedLineOrMobile;
        }
        return NumberType::FixedLine;
    }
    if !territory.same_mobile_and_fixed_line && matches(mobile) {
        return NumberType::Mobile;
    }
    NumberType::Unknown
}

/// One territory's patterns for the attributes, compiled on first use.
struct Compiled {
    /// Bit n set: a possible length of the general description.
    general_lengths: u64,
    /// The general pattern (bit 0), then each type's (bit 1 + its place in `types`), each
    /// matched whole: one pass tells which match.
    patterns: Patterns,
    /// Each type the territory has, with its lengths as a bit mask, in libphonenumber's order.
    types: Vec<(NumberType, u64)>,
    /// Anchored at the start only (libphonenumber's `lookingAt`).
    leading_digits: Option<Regex>,
}

/// A territory's patterns as one fully compiled DFA: walking it over the digits, then
/// through the end of input, lands in a state that names every pattern matching them whole.
/// (The `regex` crate's `RegexSet` answers the same, with an allocation and a cache look-up
/// per call: the bench measured about 95 ns a number against this DFA's ~25.)
struct Patterns {
    dfa: dense::DFA<Vec<u32>>,
    start: regex_automata::util::primitives::StateID,
}

impl Patterns {
    fn new(patterns: &[String]) -> Option<Patterns> {
        // At most 63 patterns fit the answer's bit mask (a territory has at most 11).
        if patterns.len() > 63 {
            return None;
        }
        let dfa = dense::Builder::new()
            // National numbers are ASCII digits: `\d` needs no Unicode classes (smaller DFAs).
            .syntax(regex_automata::util::syntax::Config::new().unicode(false))
            .configure(
                dense::Config::new()
                    // Fewer states: more of the table stays in cache between two numbers.
                    .minimize(true)
                    .match_kind(MatchKind::All)
                    .start_kind(regex_automata::dfa::StartKind::Anchored),
            )
            .build_many(patterns)
            .ok()?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .ok()?;
        Some(Patterns { dfa, start })
    }

    /// Bit n set: pattern n matches all of `digits`; `None` if none can.
    fn matches(&self, digits: &str) -> Option<u64> {
        let mut state = self.start;
        // A dead state only leads to itself: checked once, at the end (at most 17 digits).
        for &byte in digits.as_bytes() {
            state = self.dfa.next_state(state, byte);
        }
        state = self.dfa.next_eoi_state(state);
        if !self.dfa.is_match_state(state) {
            return None;
        }
        let mut matched = 0u64;
        for i in 0..self.dfa.match_len(state) {
            matched |= 1u64 << self.dfa.match_pattern(state, i).as_usize();
        }
        Some(matched)
    }
}

fn length_mask(lengths: &[u8]) -> u64 {
    lengths.iter().fold(0u64, |m, &l| m | 1u64 << (l & 63))
}

impl Compiled {
    fn new(territory: &Territory) -> Option<Compiled> {
        let whole = |pattern: &str| format!("^(?:{pattern})$");
        let patterns = std::iter::once(whole(territory.general_pattern))
            .chain(territory.types.iter().map(|t| whole(t.pattern)));
        Some(Compiled {
            general_lengths: length_mask(territory.possible_lengths),
            patterns: Patterns::new(&patterns.collect::<Vec<_>>())?,
            types: territory
                .types
                .iter()
                .map(|t| (t.kind, length_mask(t.lengths)))
                .collect(),
            leading_digits: match territory.leading_digits {
                None => None,
                Some(lead) => Some(Regex::new(&format!("^(?:{lead})")).ok()?),
            },
        })
    }
}

static COMPILED: LazyLock<Vec<OnceLock<Option<Compiled>>>> =
    LazyLock::new(|| TERRITORIES.iter().map(|_| OnceLock::new()).collect());

/// A territory's compiled patterns; `None` if one does not compile (then its numbers get no
/// type, and [`compile_all`] names it: the tests expect none).
fn compiled(territory: &'static Territory) -> Option<&'static Compiled> {
    COMPILED[index_of(territory)]
        .get_or_init(|| Compiled::new(territory))
        .as_ref()
}

/// Compiles every territory's attribute patterns now and returns the ids of those that do not
/// compile (the tests expect none).
pub fn compile_all() -> Vec<&'static str> {
    TERRITORIES
        .iter()
        .filter(|t| compiled(t).is_none())
        .map(|t| t.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(e164: &str) -> (Option<&'static str>, u16, &'static str) {
        let a = of_canonical(e164).unwrap();
        (a.region, a.calling_code, a.number_type.as_str())
    }

    #[test]
    fn regions_codes_and_types_of_common_numbers() {
        assert_eq!(attrs("+6591234567"), (Some("SG"), 65, "mobile"));
        assert_eq!(attrs("+6561234567"), (Some("SG"), 65, "fixed_line"));
        assert_eq!(attrs("+14155550123").1, 1);
        assert_eq!(
            attrs("+12505551234"),
            (Some("CA"), 1, "fixed_line_or_mobile")
        );
        assert_eq!(attrs("+442079468793"), (Some("GB"), 44, "fixed_line"));
        assert_eq!(attrs("+80012345678"), (None, 800, "toll_free"));
        // A code of one region keeps its region for a number that is not valid there.
        assert_eq!(attrs("+62123"), (Some("ID"), 62, "unknown"));
        assert_eq!(of_canonical("anonymous"), None);
        assert_eq!(of_canonical("+"), None);
        assert_eq!(of_canonical("+0123"), None);
    }

    #[test]
    fn every_territory_compiles() {
        assert_eq!(compile_all(), Vec::<&str>::new());
    }

    #[test]
    fn every_type_name_is_distinct() {
        let names: std::collections::BTreeSet<_> =
            NumberType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), NumberType::ALL.len());
    }
}
