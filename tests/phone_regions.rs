//! `region_field`: a phone rule that reads national numbers with the record's own region
//! (`caller = { action = "phone", region_field = "location.country" }`). Both transform paths
//! agree, a missing or junk region falls back to the default (junk is counted), the record key
//! follows the record's region, and `check` refuses a region field that is not a string.

mod common;

use apache_avro::types::Value;
use proptest::prelude::*;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::plan;
use pseudonymizer::rules::{RuleSpec, Rules};
use pseudonymizer::token::{self, TokenClass};
use pseudonymizer::transform::Engine;

/// A rule as the config writes it.
fn spec(text: &str) -> RuleSpec {
    toml::from_str::<toml::Table>(&format!("x = {text}")).unwrap()["x"]
        .clone()
        .try_into()
        .unwrap()
}

/// The shipped config, with the calls' `caller` and `callee` read in `location.country` (and
/// still deriving their attributes, which the shipped risk estimate names).
fn regional_config() -> pseudonymizer::config::Config {
    let mut config = common::shipped_config();
    for field in ["caller", "callee"] {
        config.pipeline[0].rules.insert(
            field.into(),
            spec(r#"{ action = "phone", region_field = "location.country", derive = ["region", "calling_code", "number_type"] }"#),
        );
    }
    config
}

fn regional_engine() -> Engine {
    Engine::from_config(&regional_config()).unwrap()
}

fn call(caller: &str, country: Option<&str>) -> Value {
    let mut event = Generator::new(3).event(Kind::Call);
    common::set_field(&mut event, "caller", Value::String(caller.into()));
    let location = match country {
        Some(c) => Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("country".into(), Value::String(c.into())),
                ("cell_id".into(), Value::Union(0, Box::new(Value::Null))),
            ])),
        ),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    common::set_field(&mut event, "location", location);
    event
}

/// The caller's token in the sanitized output of both paths (they must agree).
fn caller_token(engine: &Engine, event: Value) -> String {
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    let keys = common::active(engine);
    let input = common::encode(&plan.input, event);
    let mut out = Vec::new();
    engine.transform(plan, &keys, &input, &mut out).unwrap();
    let reference = engine.transform_reference(plan, &keys, &input).unwrap();
    assert_eq!(out, reference, "both paths give the same bytes");
    let fast = common::decode(&plan.output, &out);
    match common::field(&fast, "caller") {
        Value::String(s) => s.clone(),
        other => panic!("caller is {other:?}"),
    }
}

fn phone_token(region: &str, number: &str) -> String {
    let phone = PhoneCanon::new(region).unwrap();
    let (class, canonical) = phone.canonical(number);
    assert_eq!(class, TokenClass::Phone, "{number} in {region}");
    let keys = common::keyset();
    token::token(keys.pseudonym().unwrap(), class, canonical.as_bytes())
        .as_str()
        .to_owned()
}

#[test]
fn national_numbers_are_read_in_the_records_own_region() {
    let engine = regional_engine();
    // (415) 555-2671 is a US number; in Indonesia (the default) it reads otherwise.
    assert_eq!(
        caller_token(&engine, call("(415) 555-2671", Some("US"))),
        phone_token("US", "(415) 555-2671")
    );
    assert_eq!(
        caller_token(&engine, call("020 7946 0958", Some("gb"))),
        phone_token("GB", "+44 20 7946 0958"),
        "region codes in either case"
    );
    // International numbers do not depend on the region.
    assert_eq!(
        caller_token(&engine, call("+62 812-3456-7890", Some("US"))),
        phone_token("ID", "0812-3456-7890")
    );
    assert_ne!(
        phone_token("US", "(415) 555-2671"),
        phone_token("ID", "(415) 555-2671"),
        "the regions read this number differently"
    );
}

#[test]
fn a_missing_or_junk_region_falls_back_to_the_default_and_junk_is_counted() {
    let engine = regional_engine();
    let default = phone_token("ID", "0812-3456-7890");
    let fallbacks = || engine.phone().region_fallbacks().get();
    assert_eq!(caller_token(&engine, call("0812-3456-7890", None)), default);
    assert_eq!(
        caller_token(&engine, call("0812-3456-7890", Some(""))),
        default
    );
    assert_eq!(
        fallbacks(),
        0,
        "null and blank regions are missing, not junk"
    );
    for junk in ["XX", "Indonesia", "001", "１２", "\u{0}"] {
        assert_eq!(
            caller_token(&engine, call("0812-3456-7890", Some(junk))),
            default,
            "{junk:?}"
        );
    }
    // Each event counts once per path that resolved it (fast and reference above).
    assert_eq!(fallbacks(), 5 * 2, "every junk region counted");
}

#[test]
fn check_refuses_a_region_field_that_is_not_a_string_field() {
    let engine = common::engine();
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    for (region_field, why) in [
        ("location.nowhere", "names no field"),
        ("duration_ms", "is not a string"),
        ("location", "is not a string"),
        ("caller_ip.x", "crosses a field that is not a record"),
    ] {
        let rules = plan.rules.clone().with_region_field("caller", region_field);
        let errors = plan::compile(&plan.input, &rules).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("caller: region_field") && e.contains(why)),
            "{region_field}: {errors:?}"
        );
    }
    // And one that is: a nullable record's string.
    let rules = plan
        .rules
        .clone()
        .with_region_field("caller", "location.country");
    let compiled = plan::compile(&plan.input, &rules).unwrap();
    assert_eq!(compiled.regions.len(), 1);
    // A region_field on another action is refused when the rules are read.
    let specs = [(
        "call_id".to_owned(),
        spec(r#"{ action = "id", region_field = "location.country" }"#),
    )]
    .into_iter()
    .collect();
    let (_, errors) = Rules::from_specs(&specs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("region_field only applies to phone"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any region text, any number: both paths agree and the token is the one of the number
    /// read in that region (or in the default one where the text is not a region).
    #[test]
    fn both_paths_read_numbers_in_any_region_text(
        country in prop_oneof![
            proptest::sample::select(pseudonymizer::phone::phone_regions()),
            "[A-Za-z]{2}",
            any::<String>(),
        ],
        number in prop_oneof!["0[0-9]{2,4}[ -]?[0-9]{3,4}[ -]?[0-9]{3,5}", "\\+[1-9][0-9]{6,14}", any::<String>()],
    ) {
        let engine = regional_engine();
        let got = caller_token(&engine, call(&number, Some(&country)));
        let region = pseudonymizer::phone::phone_region(&country)
            .map_or("ID".to_owned(), |r| r.to_string());
        let phone = PhoneCanon::new(&region).unwrap();
        let (class, canonical) = phone.canonical(&number);
        let keys = common::keyset();
        let want = token::token(keys.pseudonym().unwrap(), class, canonical.as_bytes());
        prop_assert_eq!(got, want.as_str());
    }
}

#[test]
fn the_record_key_is_read_in_the_records_region_like_its_field() {
    use pseudonymizer::worker::route::{frame, Router};
    let config = regional_config();
    let engine = Engine::from_config(&config).unwrap();
    let router = Router::from_config(&config, &engine).unwrap();
    let keys = common::active(&engine);
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    let number = "(415) 555-2671";
    let value = frame(1, &common::encode(&plan.input, call(number, Some("US"))));
    let mut out = Vec::new();
    let output = router
        .process(
            &engine,
            &keys,
            Some(number.as_bytes()),
            Some(&value),
            &mut out,
        )
        .unwrap();
    assert_eq!(output.key.unwrap(), phone_token("US", number));
}
