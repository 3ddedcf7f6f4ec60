//! Nothing raw reaches the output: no phone number, IP, body, URL or identifier of the input
//! appears in the transformed bytes, and the derived schemas on disk are what the code derives.

mod common;

use apache_avro::types::Value;
use pseudonymizer::generate::{Generator, Kind};

/// Every value the shipped rules transform, as it appears in the input (and, for phones,
/// its digits alone), skipping values too short to be meaningful as a substring.
fn sensitive(
    value: &Value,
    path: &str,
    rules: &pseudonymizer::rules::Rules,
    found: &mut Vec<String>,
) {
    match value {
        Value::Record(fields) => {
            for (name, v) in fields {
                let p = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                sensitive(v, &p, rules, found);
            }
        }
        Value::Union(_, inner) => sensitive(inner, path, rules, found),
        Value::Array(items) => items.iter().for_each(|v| sensitive(v, path, rules, found)),
        Value::String(s)
            if rules
                .get(path)
                .is_some_and(|a| a != pseudonymizer::rules::Action::Keep) =>
        {
            let trimmed = s.trim();
            // A word of the derived attributes' vocabulary (the generator writes "unknown" as
            // a caller, and a number's type may be `unknown`) is not a raw value when it
            // appears: it is not the input's.
            let vocabulary = pseudonymizer::phone::attributes::NumberType::ALL
                .iter()
                .any(|t| t.as_str() == trimmed);
            if trimmed.len() >= 6 && !vocabulary {
                found.push(trimmed.to_owned());
            }
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            if digits.len() >= 8 {
                found.push(digits);
            }
        }
        _ => {}
    }
}

#[test]
fn no_raw_substring_in_output() {
    let engine = common::engine();
    let keys = common::active(&engine);
    let mut generator = Generator::new(99);
    let mut checked = 0;
    for i in 0..3000 {
        let kind = if i % 2 == 0 {
            Kind::Call
        } else {
            Kind::Message
        };
        let plan = engine
            .plan(if i % 2 == 0 {
                "comms.v1.CallEvent"
            } else {
                "comms.v1.MessageEvent"
            })
            .unwrap();
        let event = generator.event(kind);
        let mut raw = Vec::new();
        sensitive(&event, "", &plan.rules, &mut raw);
        let input = common::encode(&plan.input, event);
        let mut out = Vec::new();
        engine.transform(plan, &keys, &input, &mut out).unwrap();
        for value in &raw {
            let needle = value.as_bytes();
            assert!(
                !out.windows(needle.len()).any(|w| w == needle),
                "event {i}: a raw value of length {} leaked",
                needle.len()
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000, "checked {checked} values");
}

#[test]
fn checked_in_derived_schemas_match_the_code() {
    let engine = common::engine();
    for plan in engine.plans() {
        let file = common::repo()
            .join("schemas")
            .join(pseudonymizer::cli::output_schema_file(plan));
        let on_disk = std::fs::read_to_string(&file)
            .unwrap_or_else(|_| panic!("{} is missing", file.display()));
        assert_eq!(
            on_disk,
            pseudonymizer::cli::output_schema_text(plan),
            "{} drifted from the rules; run `pseudonymizer schema derive --config config/pipeline.toml --out schemas`",
            file.display()
        );
    }
}
