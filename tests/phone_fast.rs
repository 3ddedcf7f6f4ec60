//! The phone fast path (src/phone/fast.rs) proven against the full parse: wherever it answers,
//! its answer is libphonenumber's, in every region.
//!
//! - Its tables are what tests/vectors/make_phone_tables.py makes from Python's `phonenumbers`
//!   at the version `--version` reports (regenerated here and compared).
//! - `+` numbers: every calling code, every national prefix of up to four digits, completed
//!   to every length; national numbers the same in every region.
//! - Random numbers of every length in every region, with separators; arbitrary strings.
//!
//! - Wherever it answers with a number, the derived attributes read from its canonical form
//!   (src/phone/attributes.rs: region, calling code, number type) are the full parse's
//!   `get_region_code` and `get_type`; and every number type's example numbers, and their
//!   neighbours, in every region and non-geographic code.
//!
//! Each check also counts the answers, so a fast path that declined everything would fail.

mod common;

use proptest::prelude::*;
use pseudonymizer::phone::attributes::{self, NumberType};
use pseudonymizer::phone::metadata::{CALLING_CODES, METADATA_VERSION, TERRITORIES};
use pseudonymizer::phone::{fast, parse_e164, phone_region, phone_regions, PHONE_METADATA};
use rand::{Rng, SeedableRng};
use rlibphonenumber::Region;

/// Whether the fast path answered for `value` in `region`; panics if its answer differs from
/// the full parse's, or if the attributes of its answer differ from the full parse's.
fn agrees(region: Region, value: &str) -> bool {
    let trimmed = value.trim();
    match fast::canonical(region, trimmed) {
        None => false,
        Some(fast) => {
            let full = parse_e164(region, trimmed);
            assert_eq!(
                fast, full,
                "{value:?} read in {region}: fast path vs full parse"
            );
            attributes_agree(region, trimmed, &fast.1);
            true
        }
    }
}

/// Panics unless the attributes read from `canonical` (the canonical form of `trimmed` read in
/// `region`, or a `phone-raw` value) are the full parse's.
fn attributes_agree(region: Region, trimmed: &str, canonical: &str) -> Option<NumberType> {
    let derived = attributes::of_canonical(canonical);
    let full = attributes::of_full_parse(region, trimmed);
    assert_eq!(
        derived, full,
        "{trimmed:?} read in {region}: attributes of {canonical:?} vs the full parse's"
    );
    derived.map(|a| a.number_type)
}

/// Every digit string of up to `max` digits (the empty one included).
fn prefixes(max: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut last = vec![String::new()];
    for _ in 0..max {
        last = last
            .iter()
            .flat_map(|p| (0..10).map(move |d| format!("{p}{d}")))
            .collect();
        all.extend(last.iter().cloned());
    }
    all
}

/// `prefix` completed with random digits to a length drawn in `prefix.len()..=17` (at least 1).
fn complete(rng: &mut impl Rng, prefix: &str) -> String {
    let len = rng.gen_range(prefix.len().max(1)..=17);
    let mut number = prefix.to_owned();
    while number.len() < len {
        number.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    number
}

/// `digits` with separators (space, hyphen, dot, parentheses) put between some of them.
fn with_separators(rng: &mut impl Rng, digits: &str) -> String {
    let mut out = String::new();
    if rng.gen_bool(0.2) {
        out.push('(');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && rng.gen_bool(0.25) {
            out.push_str([" ", "-", ".", ") ", " (", "  "][rng.gen_range(0..6)]);
        }
        out.push(c);
    }
    out
}

fn all_regions() -> Vec<Region> {
    let regions: Vec<Region> = phone_regions()
        .iter()
        .map(|r| phone_region(r).unwrap())
        .collect();
    assert!(
        regions.len() > 240,
        "libphonenumber knows {} regions",
        regions.len()
    );
    regions
}

#[test]
fn tables_are_made_from_the_metadata_the_parser_embeds() {
    assert!(
        PHONE_METADATA.contains(&format!("metadata {METADATA_VERSION} ")),
        "tables {METADATA_VERSION}, parser {PHONE_METADATA}"
    );
    let (ok, version) = common::process::cli(&["--version"]);
    assert!(ok, "{version}");
    assert!(
        version.contains(&format!("libphonenumber metadata {METADATA_VERSION}")),
        "--version says {version:?}, the tables are {METADATA_VERSION}"
    );
    let script = common::repo().join("tests/vectors/make_phone_tables.py");
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed (scripts/test.sh puts phonenumbers in $PSEUDONYMIZER_PYTHON's environment):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let checked_in = std::fs::read(common::repo().join("src/phone/metadata.rs")).unwrap();
    assert!(
        out.stdout == checked_in,
        "src/phone/metadata.rs is not what make_phone_tables.py makes now: regenerate it"
    );
    // Every territory's patterns compile, with the engine the parser uses.
    assert_eq!(fast::compile_all(), Vec::<&str>::new());
    assert_eq!(TERRITORIES.len(), 254);
}

/// `+`, a calling code, any national prefix of up to four digits, completed to a random length:
/// for every calling code there is (and every code from 0 to 999 that is not one, to one digit).
#[test]
fn plus_numbers_with_every_calling_code_and_every_prefix_of_four_digits() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let region = phone_region("ID").unwrap();
    let (mut checked, mut answered) = (0usize, 0usize);
    let four = prefixes(4);
    for code in 0..=999u16 {
        let valid = CALLING_CODES.iter().any(|(c, _)| *c == code);
        let candidates = if valid { &four[..] } else { &four[..11] };
        for prefix in candidates {
            let number = format!("+{code}{}", complete(&mut rng, prefix));
            checked += 1;
            answered += usize::from(agrees(region, &number));
        }
    }
    assert!(checked > 2_000_000, "{checked} checked");
    assert!(
        answered * 2 > checked,
        "the fast path answered {answered} of {checked}"
    );
}

/// National digits, any prefix of up to four digits, completed to a random length, read in
/// every region (plain, and with separators).
#[test]
fn national_numbers_in_every_region_with_every_prefix_of_four_digits() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2121);
    let (mut checked, mut answered) = (0usize, 0usize);
    let four = prefixes(4);
    for region in all_regions() {
        for prefix in &four {
            let number = complete(&mut rng, prefix);
            let value = if rng.gen_bool(0.5) {
                number
            } else {
                with_separators(&mut rng, &number)
            };
            checked += 1;
            answered += usize::from(agrees(region, &value));
        }
    }
    assert!(
        answered * 2 > checked,
        "the fast path answered {answered} of {checked}"
    );
}

/// Random numbers of every length from 1 to 20 digits in every region, in each shape: national,
/// national with separators, `+` with the region's calling code, and that with separators.
#[test]
fn random_numbers_of_every_length_in_every_region() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (mut checked, mut answered) = (0usize, 0usize);
    for region in all_regions() {
        let code = TERRITORIES
            .iter()
            .find(|t| t.id == region.to_string())
            .unwrap()
            .country_code;
        for len in 1..=20 {
            for _ in 0..10 {
                let digits: String = (0..len)
                    .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                    .collect();
                let plus = format!("+{code}{digits}");
                let spaced_plus = format!("+{code} {}", with_separators(&mut rng, &digits));
                let spaced = with_separators(&mut rng, &digits);
                for value in [&digits, &spaced, &plus, &spaced_plus] {
                    checked += 1;
                    answered += usize::from(agrees(region, value));
                }
            }
        }
    }
    assert!(
        answered * 3 > checked,
        "the fast path answered {answered} of {checked}"
    );
}

/// The shapes the generator puts on the wire (and the bench measures): all but `*31#`-like
/// service codes are answered by the fast path in the default region.
#[test]
fn the_wire_shapes_take_the_fast_path() {
    let region = phone_region("ID").unwrap();
    let mut generator = pseudonymizer::generate::Generator::new(5);
    let (mut answered, mut declined) = (0, Vec::new());
    for _ in 0..1000 {
        let number = generator.phone();
        if agrees(region, &number) {
            answered += 1;
        } else {
            declined.push(number);
        }
    }
    assert!(
        declined.iter().all(|n| n.contains('#')),
        "declined: {declined:?}"
    );
    assert!(answered > 950, "{answered} of 1000 answered");
}

/// Runs of zeros of every length after the calling code and in national numbers (the parser
/// keeps leading zeros as a count; rlibphonenumber writes at most ten back, which the fuzz
/// target found).
#[test]
fn leading_zeros_of_every_count() {
    let mut answered = 0;
    for region in all_regions() {
        for zeros in 0..=17 {
            for tail in ["", "5", "82035", "1234567"] {
                let national = format!("{}{tail}", "0".repeat(zeros));
                answered += usize::from(agrees(region, &format!("+7{national}")));
                answered += usize::from(agrees(region, &format!("+39 {national}")));
                answered += usize::from(agrees(region, &national));
            }
        }
    }
    assert!(answered > 10_000, "{answered} answered");
}

/// Every region's and non-geographic code's example number of every type (libphonenumber's
/// metadata holds one per type), as written and with each of its last two digits changed: the
/// attributes read from the canonical form are the full parse's, and every type is seen.
#[test]
fn attributes_of_every_types_example_numbers_and_their_neighbours() {
    use rlibphonenumber::{PhoneNumberFormat, PhoneNumberType, PHONE_NUMBER_UTIL};
    let types = [
        PhoneNumberType::FixedLine,
        PhoneNumberType::Mobile,
        PhoneNumberType::TollFree,
        PhoneNumberType::PremiumRate,
        PhoneNumberType::SharedCost,
        PhoneNumberType::VoIP,
        PhoneNumberType::PersonalNumber,
        PhoneNumberType::Pager,
        PhoneNumberType::UAN,
        PhoneNumberType::VoiceMail,
    ];
    let mut examples = Vec::new();
    for region in all_regions() {
        for kind in types {
            if let Ok(number) =
                PHONE_NUMBER_UTIL.get_example_number_for_type_and_region(region, kind)
            {
                examples.push(number.format_as(PhoneNumberFormat::E164).into_owned());
            }
        }
    }
    for code in PHONE_NUMBER_UTIL.get_supported_global_network_calling_codes() {
        if let Ok(number) = PHONE_NUMBER_UTIL.get_example_number_for_non_geo_entity(code) {
            examples.push(number.format_as(PhoneNumberFormat::E164).into_owned());
        }
    }
    assert!(examples.len() > 1000, "{} example numbers", examples.len());
    let default = phone_region("ID").unwrap();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for example in &examples {
        let mut variants = vec![example.clone()];
        for from_end in 1..=2 {
            for digit in '0'..='9' {
                let mut v: Vec<char> = example.chars().collect();
                let at = v.len() - from_end;
                v[at] = digit;
                variants.push(v.into_iter().collect());
            }
        }
        variants.push(format!("{example}5"));
        variants.push(example[..example.len() - 1].to_owned());
        for value in variants {
            let (_, canonical) = parse_e164(default, &value);
            if let Some(kind) = attributes_agree(default, &value, &canonical) {
                *seen.entry(kind.as_str()).or_default() += 1;
            }
        }
    }
    for kind in NumberType::ALL {
        assert!(
            seen.get(kind.as_str()).copied().unwrap_or(0) > 0,
            "no number of type {} was seen: {seen:?}",
            kind.as_str()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Arbitrary strings of phone-ish characters (full-width and Arabic-Indic digits, letters,
    /// `#`, `*`, `/`, extensions), in any region.
    #[test]
    fn arbitrary_strings_are_declined_or_agree(
        value in "[+＋0-9٠-٩ ()./x#*a-z-]{0,24}", region in 0usize..400,
    ) {
        let regions = all_regions();
        agrees(regions[region % regions.len()], &value);
    }

    /// National prefixes and calling codes in places the parser treats specially: an
    /// international prefix, the region's own calling code without `+`, a national prefix
    /// after the calling code.
    #[test]
    fn prefixes_the_parser_reads_specially_are_declined_or_agree(
        idd in "(00|011|010|001|008|009|0011|810|8~10|)", cc in 1u16..999, national in "[0-9]{0,4}[0-9 -]{0,14}",
        plus in any::<bool>(), region in 0usize..400,
    ) {
        let regions = all_regions();
        let value = format!("{}{idd}{cc}{national}", if plus { "+" } else { "" });
        agrees(regions[region % regions.len()], &value);
    }
}
