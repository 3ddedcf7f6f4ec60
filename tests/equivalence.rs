//! Property tests: the fast path and the reference path agree on random events of both
//! schemas, and the `+digits` phone shortcut agrees with the full phone parser.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use apache_avro::types::Value;
use proptest::prelude::*;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::keys::KeySet;
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::plan::Plan;
use pseudonymizer::rules::Action;
use pseudonymizer::transform::Engine;

fn phone_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\+[1-9][0-9]{6,14}",
        "0[0-9]{2,4}[ -]?[0-9]{3,4}[ -]?[0-9]{3,5}",
        "\\+[0-9 ()-]{4,20}",
        any::<String>(),
    ]
}

fn ip_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<Ipv6Addr>().prop_map(|a| a.to_string()),
        any::<Ipv4Addr>().prop_map(|a| format!("::ffff:{a}")),
        any::<String>(),
    ]
}

fn optional_string(s: Option<String>) -> Value {
    match s {
        Some(s) => Value::Union(1, Box::new(Value::String(s))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

/// Compares fast and reference outputs field by field: tokens and IPs equal, envelopes open
/// to the same plaintext. Returns how many envelopes were compared.
fn same(plan: &Plan, keys: &KeySet, fast: &Value, reference: &Value, path: &str) -> usize {
    match (fast, reference) {
        (Value::Record(a), Value::Record(b)) => {
            assert_eq!(a.len(), b.len());
            a.iter()
                .zip(b)
                .map(|((na, va), (nb, vb))| {
                    assert_eq!(na, nb);
                    let p = if path.is_empty() {
                        na.clone()
                    } else {
                        format!("{path}.{na}")
                    };
                    same(plan, keys, va, vb, &p)
                })
                .sum()
        }
        (Value::Union(ia, a), Value::Union(ib, b)) => {
            assert_eq!(ia, ib, "union branch at {path}");
            same(plan, keys, a, b, path)
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "array length at {path}");
            a.iter()
                .zip(b)
                .map(|(x, y)| same(plan, keys, x, y, path))
                .sum()
        }
        (Value::Bytes(a), Value::Bytes(b)) if plan.rules.get(path) == Some(Action::Encrypt) => {
            let pa = keys.open(path, a).expect("fast envelope opens");
            let pb = keys.open(path, b).expect("reference envelope opens");
            assert_eq!(pa, pb, "plaintexts at {path}");
            1
        }
        (a, b) => {
            assert_eq!(a, b, "value at {path}");
            0
        }
    }
}

fn check(engine: &Engine, kind: Kind, event: Value) -> usize {
    let name = match kind {
        Kind::Call => "comms.v1.CallEvent",
        Kind::Message => "comms.v1.MessageEvent",
    };
    let plan = engine.plan(name).unwrap();
    let keys = common::keyset();
    let active = engine.active_keys(&keys).unwrap();
    let input = common::encode(&plan.input, event);
    let mut fast = Vec::new();
    engine.transform(plan, &active, &input, &mut fast).unwrap();
    let reference = engine.transform_reference(plan, &active, &input).unwrap();
    let fast = common::decode(&plan.output, &fast);
    let reference = common::decode(&plan.output, &reference);
    same(plan, &keys, &fast, &reference, "")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn call_paths_agree(seed in any::<u64>(), caller in phone_like(), callee in phone_like(),
                        caller_ip in proptest::option::of(ip_like()), callee_ip in proptest::option::of(ip_like()),
                        url in proptest::option::of(any::<String>())) {
        let engine = common::engine();
        let mut event = Generator::new(seed).event(Kind::Call);
        common::set_field(&mut event, "caller", Value::String(caller));
        common::set_field(&mut event, "callee", Value::String(callee));
        common::set_field(&mut event, "caller_ip", optional_string(caller_ip));
        common::set_field(&mut event, "callee_ip", optional_string(callee_ip));
        let has_url = url.is_some();
        common::set_field(&mut event, "recording_url", optional_string(url));
        let envelopes = check(&engine, Kind::Call, event);
        prop_assert_eq!(envelopes, usize::from(has_url));
    }

    #[test]
    fn message_paths_agree(seed in any::<u64>(), sender in phone_like(),
                           recipients in proptest::collection::vec(phone_like(), 0..5),
                           sender_ip in proptest::option::of(ip_like()),
                           body in proptest::option::of(any::<String>())) {
        let engine = common::engine();
        let mut event = Generator::new(seed).event(Kind::Message);
        common::set_field(&mut event, "sender", Value::String(sender));
        common::set_field(&mut event, "recipients", Value::Array(recipients.into_iter().map(Value::String).collect()));
        common::set_field(&mut event, "sender_ip", optional_string(sender_ip));
        common::set_field(&mut event, "body", optional_string(body));
        check(&engine, Kind::Message, event);
    }

    #[test]
    fn remembered_phone_answers_agree_with_the_full_parse_in_any_region(
        number in "[+＋0-9٠-٩ ()-]{0,18}", pad in "[ \t]{0,2}", region in 0usize..400,
        also in 0usize..400,
    ) {
        // Two regions interleaved: the memory must key its answers by region too.
        let regions = pseudonymizer::phone::phone_regions();
        let first = PhoneCanon::new(&regions[region % regions.len()]).unwrap();
        let second = PhoneCanon::new(&regions[also % regions.len()]).unwrap();
        let input = format!("{pad}{number}{pad}");
        for canon in [&first, &second, &first] {
            prop_assert_eq!(canon.canonical(&input), canon.canonical_slow(&input));
        }
    }
}

#[test]
fn remembered_phone_answers_agree_in_every_supported_region() {
    let regions = pseudonymizer::phone::phone_regions();
    assert!(
        regions.len() > 240,
        "libphonenumber knows {} regions",
        regions.len()
    );
    for region in &regions {
        let phone = PhoneCanon::new(region).unwrap();
        let mut generator = Generator::new(7);
        for _ in 0..40 {
            let number = generator.phone();
            assert_eq!(
                phone.canonical(&number),
                phone.canonical_slow(&number),
                "{region} {number:?}"
            );
        }
    }
}

#[test]
fn generated_files_agree_on_many_events() {
    let engine = common::engine();
    let mut generator = Generator::new(1);
    let mut envelopes = 0;
    for i in 0..2000 {
        let kind = if i % 2 == 0 {
            Kind::Call
        } else {
            Kind::Message
        };
        envelopes += check(&engine, kind, generator.event(kind));
    }
    assert!(
        envelopes > 500,
        "the sample exercises envelopes ({envelopes})"
    );
}
