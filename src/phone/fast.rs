//! The fast path: libphonenumber's parse, step for step, for the shapes most numbers come in,
//! and nothing else.
//!
//! It answers for an ASCII value that is either
//! - `+` then digits, or
//! - digits alone (a national number, read in the record's or the default region),
//!
//! with spaces, hyphens, dots and parentheses anywhere between them, and for an ASCII value
//! with no digit and no `+` at all (never a number: `phone-raw`). For those shapes the parser's
//! generic steps (possible-number extraction, extensions, alpha characters, `tel:` URIs) change
//! nothing, and what is left is the part that depends on the metadata, done here with the
//! parser's own patterns ([`super::metadata`]):
//!
//! 1. with `+`: the country calling code (one to three digits, the first code that exists);
//!    without: decline if the region's international prefix or its own calling code could
//!    start the digits (the parser would take them as such);
//! 2. the national prefix: stripped exactly where the parser strips it (the pattern for
//!    parsing matches, the result is still a possible number for the territory); where the
//!    match would be rewritten by a transform rule, decline;
//! 3. `+`, the calling code and the national digits.
//!
//! Anything else, including every error case and any doubt, is [`None`]: the full parse
//! answers. tests/phone_fast.rs holds every answer given here to the full parse's, in every
//! region.

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};

use regex::Regex;
use rlibphonenumber::Region;

use super::attributes::TypeDesc;
use super::metadata::{CALLING_CODES, REGION_COUNT, TERRITORIES};
use crate::class::TokenClass;

/// One territory's metadata, as libphonenumber's metadata states it (the generated
/// [`super::metadata`]); patterns are compiled on first use.
#[derive(Debug)]
pub struct Territory {
    /// Region code (`ID`), or `001` for a non-geographic calling code.
    pub id: &'static str,
    pub country_code: u16,
    /// The pattern of the international (IDD) prefix dialled from this territory.
    pub international_prefix: Option<&'static str>,
    /// The pattern of a national prefix (and carrier code) at the start of a national number.
    pub national_prefix_for_parsing: Option<&'static str>,
    /// What a national prefix match is rewritten to, in Rust regex replacement syntax.
    pub national_prefix_transform_rule: Option<&'static str>,
    /// Every national significant number of the territory matches this pattern.
    pub general_pattern: &'static str,
    /// Lengths of a national significant number.
    pub possible_lengths: &'static [u8],
    /// Lengths that can only be dialled locally (not possible numbers on their own).
    pub local_only_lengths: &'static [u8],
    /// For a region sharing its calling code: national numbers starting with this pattern are
    /// its own (read by [`super::attributes`], as every field below).
    pub leading_digits: Option<&'static str>,
    /// Whether the metadata gives mobile and fixed-line numbers one pattern.
    pub same_mobile_and_fixed_line: bool,
    /// Each number type the territory has, in the order libphonenumber tries them.
    pub types: &'static [TypeDesc],
}

/// Digits a value may hold to be answered here: more is never a number the parser accepts
/// (a national significant number has at most 17 digits, a calling code 3).
const MAX_DIGITS: usize = 20;
/// Longest national significant number (libphonenumber's `MAX_LENGTH_FOR_NSN`).
const MAX_NATIONAL: usize = 17;
/// Shortest national significant number (`MIN_LENGTH_FOR_NSN`).
const MIN_NATIONAL: usize = 2;
/// Most leading zeros of a national number the fast path writes itself.
const MAX_LEADING_ZEROS: usize = 10;

/// The canonical form of `trimmed` (a phone field's value without surrounding white space)
/// read in `region`, when the fast path is sure of the full parse's answer; [`None`] otherwise.
pub fn canonical(region: Region, trimmed: &str) -> Option<(TokenClass, Cow<'_, str>)> {
    let bytes = trimmed.as_bytes();
    if !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii() && !b.is_ascii_digit() && *b != b'+')
    {
        // The parser looks for the first digit or `+`; there is none.
        return Some((TokenClass::PhoneRaw, Cow::Borrowed(trimmed)));
    }
    let digits = Digits::read(bytes)?;
    let canonical = if digits.plus {
        international(digits.as_str())?
    } else {
        let territory = territory_of(region)?;
        national(territory, digits.as_str())?
    };
    Some((TokenClass::Phone, canonical.text(trimmed)))
}

/// The digits of a value in one of the fast shapes.
struct Digits {
    plus: bool,
    buf: [u8; MAX_DIGITS],
    len: usize,
}

impl Digits {
    /// `None` unless the value is an optional leading `+`, then ASCII digits with spaces,
    /// hyphens, dots and parentheses between, at least four digits and at most [`MAX_DIGITS`].
    fn read(bytes: &[u8]) -> Option<Digits> {
        let plus = bytes.first() == Some(&b'+');
        let mut digits = Digits {
            plus,
            buf: [0; MAX_DIGITS],
            len: 0,
        };
        for &b in &bytes[usize::from(plus)..] {
            match b {
                b'0'..=b'9' => {
                    *digits.buf.get_mut(digits.len)? = b;
                    digits.len += 1;
                }
                b' ' | b'-' | b'.' | b'(' | b')' => {}
                _ => return None,
            }
        }
        (digits.len >= 4).then_some(digits)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("ASCII digits")
    }
}

impl Drop for Digits {
    fn drop(&mut self) {
        // A raw number, like every other copy the worker holds while a record is in flight.
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

/// `+` and digits: the calling code, then the national number in the code's main territory.
fn international(digits: &str) -> Option<E164<'_>> {
    let bytes = digits.as_bytes();
    // The parser's `extractCountryCode`: no code starts with 0; the first of one, two and
    // three digits that is a code is the code (codes are prefix-free).
    if bytes.first() == Some(&b'0') {
        return None;
    }
    let mut code = 0usize;
    for len in 1..=3 {
        code = code * 10 + usize::from(bytes.get(len - 1)? - b'0');
        if let Some(territory) = INDEX.by_code.get(code).and_then(|&at| INDEX.territory(at)) {
            let national = strip_national_prefix(territory, compiled(territory)?, &digits[len..])?;
            return e164(territory, national);
        }
    }
    None
}

/// Digits without `+`: a national number of `territory` (the record's or default region).
fn national<'d>(territory: &'static Territory, digits: &'d str) -> Option<E164<'d>> {
    let compiled = compiled(territory)?;
    // The parser would read these as an international prefix, or as the region's own calling
    // code written without `+`: both are its business.
    if compiled
        .international_prefix
        .as_ref()
        .is_some_and(|idd| idd.match_len(digits).is_some())
    {
        return None;
    }
    let mut code = itoa::Buffer::new();
    if digits.starts_with(code.format(territory.country_code)) {
        return None;
    }
    let national = strip_national_prefix(territory, compiled, digits)?;
    e164(territory, national)
}

/// libphonenumber's `maybeStripNationalPrefixAndCarrierCode` followed by the parser's length
/// test of the result: the national number the parser keeps. `None` where a transform rule
/// would rewrite the number.
fn strip_national_prefix<'a>(
    territory: &Territory,
    compiled: &Compiled,
    number: &'a str,
) -> Option<&'a str> {
    if number.len() < MIN_NATIONAL {
        return None;
    }
    let Some(prefix) = &compiled.national_prefix else {
        return Some(number);
    };
    let Some(found) = prefix.match_len(number) else {
        return Some(number);
    };
    if found == 0 {
        // An empty match strips nothing (and captures nothing a transform rule could use).
        return Some(number);
    }
    if territory.national_prefix_transform_rule.is_some() {
        // The parser rewrites the number when a group captured; which one it reads differs
        // between libphonenumber's ports, so the full parse decides.
        return None;
    }
    let stripped = &number[found..];
    // The parser keeps the prefix when the number was possible as written and is not without it.
    if compiled.general.is_match(number) && !compiled.general.is_match(stripped) {
        return Some(number);
    }
    // … and when what is left is too short to dial on its own.
    Some(if compiled.strip_keeps_length(stripped.len()) {
        stripped
    } else {
        number
    })
}

/// A canonical number in its two parts: the calling code and the national number.
struct E164<'d> {
    country_code: u16,
    national: &'d str,
}

impl E164<'_> {
    /// `+`, the calling code and the national number: borrowed from the input when the input
    /// is already exactly that (most numbers on the wire), so nothing is allocated.
    fn text<'i>(&self, input: &'i str) -> Cow<'i, str> {
        let mut code = itoa::Buffer::new();
        let code = code.format(self.country_code);
        let already = input.len() == 1 + code.len() + self.national.len()
            && input.as_bytes()[0] == b'+'
            && input[1..].starts_with(code)
            && input.ends_with(self.national);
        if already {
            return Cow::Borrowed(input);
        }
        let mut out = String::with_capacity(1 + code.len() + self.national.len());
        out.push('+');
        out.push_str(code);
        out.push_str(self.national);
        Cow::Owned(out)
    }
}

/// The canonical number, if the parser accepts the national number's length.
fn e164<'d>(territory: &Territory, national: &'d str) -> Option<E164<'d>> {
    if !(MIN_NATIONAL..=MAX_NATIONAL).contains(&national.len()) {
        return None;
    }
    // The parser keeps leading zeros as a count beside the number, and rlibphonenumber writes
    // at most 10 of them back (found by the fuzz target): more is its business.
    if national.bytes().take_while(|b| *b == b'0').count() > MAX_LEADING_ZEROS {
        return None;
    }
    Some(E164 {
        country_code: territory.country_code,
        national,
    })
}

/// The metadata of a region.
pub(super) fn territory_of(region: Region) -> Option<&'static Territory> {
    let code = region.as_region_str();
    match code.as_bytes() {
        &[a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
            INDEX.territory(INDEX.by_region[usize::from(a - b'A') * 26 + usize::from(b - b'A')])
        }
        _ => None,
    }
}

/// Look-ups into [`TERRITORIES`] by region and by calling code, and each territory's compiled
/// patterns, made once.
struct Index {
    /// Territory index by region letters (`(first - 'A') * 26 + (second - 'A')`), or [`NONE`].
    by_region: [u16; 26 * 26],
    /// The main territory of each calling code (0-999), or [`NONE`].
    by_code: [u16; 1000],
    /// One slot per territory, filled on first use. A pattern that does not compile leaves
    /// the slot empty, and the fast path declines that territory's numbers.
    compiled: Vec<OnceLock<Option<Compiled>>>,
}

const NONE: u16 = u16::MAX;

impl Index {
    fn new() -> Index {
        let mut index = Index {
            by_region: [NONE; 26 * 26],
            by_code: [NONE; 1000],
            compiled: TERRITORIES.iter().map(|_| OnceLock::new()).collect(),
        };
        for (at, territory) in TERRITORIES[..REGION_COUNT].iter().enumerate() {
            if let &[a, b] = territory.id.as_bytes() {
                index.by_region[usize::from(a - b'A') * 26 + usize::from(b - b'A')] = at as u16;
            }
        }
        for &(code, at) in CALLING_CODES {
            index.by_code[usize::from(code)] = at;
        }
        index
    }

    fn territory(&self, at: u16) -> Option<&'static Territory> {
        TERRITORIES.get(usize::from(at))
    }
}

static INDEX: LazyLock<Index> = LazyLock::new(Index::new);

/// A prefix pattern, matched at the start of a number as the parser matches it.
enum Prefix {
    /// A pattern of digits alone (`0`, `00`, `011`: most of them), compared as text.
    Digits(&'static str),
    /// Anything else, compiled (anchored at the start).
    Pattern(Regex),
}

impl Prefix {
    fn new(pattern: &'static str) -> Result<Prefix, regex::Error> {
        Ok(if pattern.bytes().all(|b| b.is_ascii_digit()) {
            Prefix::Digits(pattern)
        } else {
            Prefix::Pattern(Regex::new(&format!("^(?:{pattern})"))?)
        })
    }

    /// The length of the prefix match at the start of `number` (the leftmost-first match, as
    /// the parser's engine finds it), or `None`.
    fn match_len(&self, number: &str) -> Option<usize> {
        match self {
            Prefix::Digits(digits) => number.starts_with(digits).then_some(digits.len()),
            Prefix::Pattern(regex) => regex.find(number).map(|m| m.end()),
        }
    }
}

/// A territory's patterns, compiled as the parser uses them: prefixes anchored at the start,
/// the general pattern at both ends.
struct Compiled {
    international_prefix: Option<Prefix>,
    national_prefix: Option<Prefix>,
    general: Regex,
    /// Bit n set: a possible length.
    possible: u64,
    /// Bit n set: a local-only length.
    local_only: u64,
}

impl Compiled {
    fn new(territory: &Territory) -> Option<Compiled> {
        let mask = |lengths: &[u8]| lengths.iter().fold(0u64, |m, &l| m | 1 << l);
        Some(Compiled {
            international_prefix: territory
                .international_prefix
                .map(Prefix::new)
                .transpose()
                .ok()?,
            national_prefix: territory
                .national_prefix_for_parsing
                .map(Prefix::new)
                .transpose()
                .ok()?,
            general: Regex::new(&format!("^(?:{})$", territory.general_pattern)).ok()?,
            possible: mask(territory.possible_lengths),
            local_only: mask(territory.local_only_lengths),
        })
    }

    /// libphonenumber's `testNumberLength` (type unknown): whether the parser keeps a number
    /// of `len` digits left after stripping a national prefix (possible, or too long; not too
    /// short, local-only or of no possible length).
    fn strip_keeps_length(&self, len: usize) -> bool {
        let bit = 1u64.checked_shl(len as u32).unwrap_or(0);
        if self.possible == 0 || self.local_only & bit != 0 {
            return false;
        }
        let min = self.possible.trailing_zeros() as usize;
        let max = 63 - self.possible.leading_zeros() as usize;
        if len < min {
            return false;
        }
        len > max || len == min || self.possible & bit != 0
    }
}

/// The index in [`TERRITORIES`] of one of its elements.
pub(super) fn index_of(territory: &'static Territory) -> usize {
    (territory as *const Territory as usize - TERRITORIES.as_ptr() as usize)
        / std::mem::size_of::<Territory>()
}

/// The territory whose metadata reads `+` numbers with calling code `code` (its main region),
/// if the code exists.
pub(super) fn main_territory(code: u16) -> Option<&'static Territory> {
    INDEX
        .by_code
        .get(usize::from(code))
        .and_then(|&at| INDEX.territory(at))
}

fn compiled(territory: &'static Territory) -> Option<&'static Compiled> {
    let at = index_of(territory);
    INDEX.compiled[at]
        .get_or_init(|| Compiled::new(territory))
        .as_ref()
}

/// Compiles every territory's patterns now and returns the ids of territories whose patterns
/// do not compile (the tests expect none). The worker compiles lazily: a territory's first
/// number pays for compiling its patterns.
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

    fn answer(region: &str, value: &str) -> Option<(TokenClass, String)> {
        let region = Region::from_code(region).unwrap();
        canonical(region, value).map(|(class, text)| (class, text.into_owned()))
    }

    #[test]
    fn common_shapes_are_answered() {
        let phone = |s: &str| Some((TokenClass::Phone, s.to_owned()));
        assert_eq!(answer("ID", "+6281234567890"), phone("+6281234567890"));
        assert_eq!(answer("ID", "+62 21 1234 5678"), phone("+622112345678"));
        assert_eq!(answer("ID", "0812-3456-7890"), phone("+6281234567890"));
        assert_eq!(answer("ID", "(021) 1234-5678"), phone("+622112345678"));
        assert_eq!(answer("US", "(415) 555-0123"), phone("+14155550123"));
        assert_eq!(answer("ID", "+1 415 555 0123"), phone("+14155550123"));
        assert_eq!(
            answer("ID", "anonymous"),
            Some((TokenClass::PhoneRaw, "anonymous".to_owned()))
        );
    }

    #[test]
    fn numbers_already_canonical_are_borrowed_not_copied() {
        let region = super::super::phone_region("ID").unwrap();
        let borrowed = |s: &str| matches!(canonical(region, s), Some((_, Cow::Borrowed(_))));
        assert!(borrowed("+6281234567890"));
        assert!(borrowed("+14155550123"));
        // Same digits, other text: a new string.
        assert!(!borrowed("+62 812 3456 7890"));
        assert!(!borrowed("081234567890"));
        // A `+` number whose national prefix the parser strips is not its own canonical form.
        let ru = canonical(region, "+788001234567").map(|(_, text)| text);
        assert!(
            matches!(&ru, Some(Cow::Owned(t)) if t == "+78001234567"),
            "{ru:?}"
        );
    }

    #[test]
    fn doubtful_shapes_are_declined() {
        for value in [
            "",
            "*31#",
            "+62 812 ext 5",
            "０８１２３４５６７８９０",
            "+0123456",
            "00862112345678", // the international prefix, dialled from ID
            "6281234567890",  // ID's own calling code without `+`
            "123",            // too few digits to be sure
        ] {
            assert_eq!(answer("ID", value), None, "{value:?}");
        }
    }

    #[test]
    fn every_territory_compiles() {
        assert_eq!(compile_all(), Vec::<&str>::new());
    }
}
