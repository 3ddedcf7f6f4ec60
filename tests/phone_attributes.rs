//! Derived attributes of a phone number (`{ action = "phone", derive = [...] }`): the fields
//! the shipped rules add beside the caller's and callee's tokens hold the number's region,
//! calling code and type on both transform paths; they are null for a value that is not a
//! number, a null value and a withheld person; a nullable field, a record's own region and a
//! name that is already taken are handled. (Agreement with libphonenumber in every region:
//! tests/phone_fast.rs.) No broker needed.

mod common;

use apache_avro::types::Value;
use apache_avro::Schema;
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::plan;
use pseudonymizer::rules::{Attribute, Derive, Rules};
use pseudonymizer::token::TokenClass;
use pseudonymizer::transform::Engine;

fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn some_string(s: &str) -> Value {
    Value::Union(1, Box::new(Value::String(s.into())))
}

fn some_int(n: i32) -> Value {
    Value::Union(1, Box::new(Value::Int(n)))
}

/// `event` through the fast and the reference path, each output decoded.
fn both_paths(
    engine: &Engine,
    plan: &pseudonymizer::plan::Plan,
    keys: &pseudonymizer::transform::ActiveKeys,
    event: Value,
) -> (Value, Value) {
    let input = common::encode(&plan.input, event);
    let mut out = Vec::new();
    engine.transform(plan, keys, &input, &mut out).unwrap();
    let reference = engine.transform_reference(plan, keys, &input).unwrap();
    (
        common::decode(&plan.output, &out),
        common::decode(&plan.output, &reference),
    )
}

/// The shipped call pipeline's output for a call from `caller` to `callee`, by the fast path,
/// after checking that the reference path writes the same derived fields.
fn sanitized_call(engine: &Engine, caller: &str, callee: &str) -> Value {
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    let keys = common::active(engine);
    let mut call = pseudonymizer::generate::typical_call();
    common::set_field(&mut call, "caller", Value::String(caller.into()));
    common::set_field(&mut call, "callee", Value::String(callee.into()));
    let (fast, reference) = both_paths(engine, plan, &keys, call);
    for side in ["caller", "callee"] {
        for attribute in Attribute::PHONE {
            let name = attribute.field_name(side);
            assert_eq!(
                common::field(&fast, &name),
                common::field(&reference, &name),
                "{name}: fast vs reference for {caller:?} → {callee:?}"
            );
        }
    }
    fast
}

fn attributes(output: &Value, side: &str) -> [Value; 3] {
    Attribute::PHONE.map(|a| common::field(output, &a.field_name(side)).clone())
}

#[test]
fn the_shipped_rules_derive_region_calling_code_and_type_beside_the_tokens() {
    let engine = common::engine();
    let out = sanitized_call(&engine, "+65 9123 4567", "0812-3456-7890");
    assert_eq!(
        attributes(&out, "caller"),
        [some_string("SG"), some_int(65), some_string("mobile")]
    );
    // A national number, read in the default region (ID).
    assert_eq!(
        attributes(&out, "callee"),
        [some_string("ID"), some_int(62), some_string("mobile")]
    );
    // The tokens are unchanged by it.
    let Value::String(token) = common::field(&out, "caller") else {
        panic!("caller is not a string")
    };
    assert!(token.starts_with("p-test-1:") && !token.contains("9123"));

    // A shared calling code: the region the number belongs to; a London fixed line; a
    // non-geographic toll-free code has no region.
    let out = sanitized_call(&engine, "+1 250 555 1234", "+44 20 7946 0018");
    assert_eq!(
        attributes(&out, "caller"),
        [
            some_string("CA"),
            some_int(1),
            some_string("fixed_line_or_mobile")
        ]
    );
    assert_eq!(
        attributes(&out, "callee"),
        [some_string("GB"), some_int(44), some_string("fixed_line")]
    );
    let out = sanitized_call(&engine, "+800 1234 5678", "+62 123");
    assert_eq!(
        attributes(&out, "caller"),
        [null(), some_int(800), some_string("toll_free")]
    );
    // A number of a single-region code that is not valid there keeps its region.
    assert_eq!(
        attributes(&out, "callee"),
        [some_string("ID"), some_int(62), some_string("unknown")]
    );
    // Not a number: phone-raw token, nothing derived.
    let out = sanitized_call(&engine, "anonymous", "*31#");
    assert_eq!(attributes(&out, "caller"), [null(), null(), null()]);
    assert_eq!(attributes(&out, "callee"), [null(), null(), null()]);
}

/// A schema of its own: a nullable phone field, a region field, and a field whose name a
/// derived field would take.
fn schema() -> Schema {
    Schema::parse_str(
        r#"{"type": "record", "name": "Hop", "namespace": "test.v1", "fields": [
            {"name": "number", "type": ["null", "string"]},
            {"name": "country", "type": ["null", "string"]},
            {"name": "other", "type": "string"},
            {"name": "other_region", "type": "string"}
        ]}"#,
    )
    .unwrap()
}

fn all() -> Derive {
    Attribute::PHONE
        .into_iter()
        .fold(Derive::default(), Derive::with)
}

#[test]
fn a_nullable_field_read_in_its_records_region_and_a_taken_name() {
    let rules = Rules::from_pairs([
        (
            "number",
            pseudonymizer::rules::Action::Token(TokenClass::Phone),
        ),
        ("country", pseudonymizer::rules::Action::Keep),
        (
            "other",
            pseudonymizer::rules::Action::Token(TokenClass::Phone),
        ),
        ("other_region", pseudonymizer::rules::Action::Keep),
    ])
    .with_derived("number", all())
    .with_region_field("number", "country");
    // `other` would make `other_region`, which the record has: refused, naming both.
    let taken = rules.clone().with_derived("other", all());
    let errors = plan::compile(&schema(), &taken).unwrap_err();
    assert!(
        errors.iter().any(|e| e.starts_with(
            "other: derive region makes field other_region, which test.v1.Hop already has"
        )),
        "{errors:?}"
    );
    let plan = plan::compile(&schema(), &rules).unwrap();
    let output_fields: Vec<String> = match &plan.output {
        Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
        _ => unreachable!(),
    };
    assert_eq!(
        output_fields,
        [
            "number",
            "number_region",
            "number_calling_code",
            "number_number_type",
            "country",
            "other",
            "other_region"
        ]
    );
    let engine = Engine::new(vec![plan], PhoneCanon::new("ID").unwrap()).unwrap();
    let plan = engine.plan("test.v1.Hop").unwrap();
    let keys = common::active(&engine);
    let run = |number: Value, country: Value| {
        let event = Value::Record(vec![
            ("number".into(), number),
            ("country".into(), country),
            ("other".into(), Value::String("+6591234567".into())),
            ("other_region".into(), Value::String("kept".into())),
        ]);
        let (fast, reference) = both_paths(&engine, plan, &keys, event);
        let derived = |v: &Value| attributes(v, "number");
        assert_eq!(derived(&fast), derived(&reference));
        assert_eq!(
            common::field(&fast, "other_region"),
            &Value::String("kept".into())
        );
        derived(&fast)
    };
    // A national number read in the record's own region.
    assert_eq!(
        run(some_string("9123 4567"), some_string("SG")),
        [some_string("SG"), some_int(65), some_string("mobile")]
    );
    // The same digits in the default region (ID) are not a valid number there.
    assert_eq!(
        run(some_string("9123 4567"), null()),
        [some_string("ID"), some_int(62), some_string("unknown")]
    );
    assert_eq!(run(null(), some_string("SG")), [null(), null(), null()]);
}

/// A withheld person (erased in the subject registry) gets an unlinked token, and nothing
/// derived from their number is published either; someone else's number still is.
#[test]
fn nothing_is_derived_from_a_withheld_persons_number() {
    use pseudonymizer::subjects::{SubjectClasses, SubjectPolicy, SubjectView};
    let engine = common::engine();
    let keys = common::active(&engine);
    let (key, table) = common::erased(TokenClass::Phone, "+6591234567");
    let classes = SubjectClasses::default_classes();
    let view = SubjectView {
        key: &key,
        table: &table,
        classes: &classes,
    };
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    let mut call = pseudonymizer::generate::typical_call();
    common::set_field(&mut call, "caller", Value::String("+65 9123 4567".into()));
    common::set_field(&mut call, "callee", Value::String("+65 6123 4567".into()));
    let input = common::encode(&plan.input, call);
    let gate = view.gate(SubjectPolicy::default());
    let mut out = Vec::new();
    engine
        .transform_gated(plan, &keys, &gate, &input, &mut out)
        .unwrap();
    assert!(gate.met());
    let output = common::decode(&plan.output, &out);
    assert_eq!(attributes(&output, "caller"), [null(), null(), null()]);
    assert_eq!(
        attributes(&output, "callee"),
        [some_string("SG"), some_int(65), some_string("fixed_line")]
    );
}

/// A record type used in two places with the same `derive` rule at both derives the same
/// definition (the fields' docs name the phone field, not its path), so it is accepted.
#[test]
fn one_record_type_in_two_places_with_the_same_derive_rule() {
    let schema = Schema::parse_str(
        r#"{"type": "record", "name": "Call", "namespace": "test.v1", "fields": [
            {"name": "a", "type": {"type": "record", "name": "Leg", "fields": [
                {"name": "num", "type": "string"}]}},
            {"name": "b", "type": "Leg"}
        ]}"#,
    )
    .unwrap();
    let phone = pseudonymizer::rules::Action::Token(TokenClass::Phone);
    let rules = Rules::from_pairs([("a.num", phone), ("b.num", phone)])
        .with_derived("a.num", all())
        .with_derived("b.num", all());
    let plan = plan::compile(&schema, &rules).unwrap();
    assert!(plan.output_json.to_string().contains("num_number_type"));
}

/// `derive` on arrays of numbers: each derived field is an array with one nullable item per
/// item of the field, in order (null for a null item or one that is not a number); a null
/// array gives null arrays, an empty one empty arrays. Plain, nullable-item and nullable
/// arrays, on both paths, across several Avro blocks.
#[test]
fn arrays_of_numbers_derive_arrays_of_attributes() {
    let schema = Schema::parse_str(
        r#"{"type": "record", "name": "Fanout", "namespace": "test.v1", "fields": [
            {"name": "to", "type": {"type": "array", "items": "string"}},
            {"name": "cc", "type": {"type": "array", "items": ["null", "string"]}},
            {"name": "bcc", "type": ["null", {"type": "array", "items": ["string", "null"]}]},
            {"name": "after", "type": "string"}
        ]}"#,
    )
    .unwrap();
    let phone = pseudonymizer::rules::Action::Token(TokenClass::Phone);
    let rules = Rules::from_pairs([
        ("to", phone),
        ("cc", phone),
        ("bcc", phone),
        ("after", pseudonymizer::rules::Action::Keep),
    ])
    .with_derived("to", all())
    .with_derived("cc", all())
    .with_derived("bcc", Derive::default().with(Attribute::NumberType));
    let plan = plan::compile(&schema, &rules).unwrap();
    let field_of = |name: &str| {
        plan.output_json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no field {name}"))
            .clone()
    };
    let to_region = field_of("to_region");
    assert_eq!(
        (&to_region["type"], &to_region["default"]),
        (
            &serde_json::json!({"type": "array", "items": ["null", "string"]}),
            &serde_json::json!([])
        )
    );
    let bcc_type = field_of("bcc_number_type");
    assert_eq!(
        (&bcc_type["type"], &bcc_type["default"]),
        (
            &serde_json::json!(["null", {"type": "array", "items": ["null", "string"]}]),
            &serde_json::Value::Null
        )
    );
    let engine = Engine::new(vec![plan], PhoneCanon::new("ID").unwrap()).unwrap();
    let plan = engine.plan("test.v1.Fanout").unwrap();
    let keys = common::active(&engine);
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String((*s).into())).collect());
    let run = |to: Value, cc: Value, bcc: Value| {
        let event = Value::Record(vec![
            ("to".into(), to),
            ("cc".into(), cc),
            ("bcc".into(), bcc),
            ("after".into(), Value::String("kept".into())),
        ]);
        let (fast, reference) = both_paths(&engine, plan, &keys, event);
        assert_eq!(fast, reference);
        assert_eq!(common::field(&fast, "after"), &Value::String("kept".into()));
        fast
    };
    let out = run(
        strings(&["+65 9123 4567", "anonymous", "+44 20 7946 0018"]),
        Value::Array(vec![null(), some_string("0812-3456-7890")]),
        Value::Union(
            1,
            Box::new(Value::Array(vec![
                Value::Union(0, Box::new(Value::String("+800 1234 5678".into()))),
                Value::Union(1, Box::new(Value::Null)),
            ])),
        ),
    );
    assert_eq!(
        common::field(&out, "to_region"),
        &Value::Array(vec![some_string("SG"), null(), some_string("GB")])
    );
    assert_eq!(
        common::field(&out, "to_calling_code"),
        &Value::Array(vec![some_int(65), null(), some_int(44)])
    );
    assert_eq!(
        common::field(&out, "cc_number_type"),
        &Value::Array(vec![null(), some_string("mobile")])
    );
    assert_eq!(
        common::field(&out, "bcc_number_type"),
        &Value::Union(
            1,
            Box::new(Value::Array(vec![some_string("toll_free"), null()]))
        )
    );
    // Empty arrays give empty arrays; a null array null.
    let out = run(strings(&[]), Value::Array(vec![]), null());
    assert_eq!(common::field(&out, "to_number_type"), &Value::Array(vec![]));
    assert_eq!(common::field(&out, "cc_region"), &Value::Array(vec![]));
    assert_eq!(common::field(&out, "bcc_number_type"), &null());
    // Many items (apache-avro writes them in one block; the walker's output is one block too).
    let many: Vec<String> = (0..300).map(|i| format!("+65 9123 {i:04}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let out = run(strings(&many), Value::Array(vec![]), null());
    let Value::Array(types) = common::field(&out, "to_number_type") else {
        panic!("not an array")
    };
    assert_eq!(types.len(), 300);
    assert!(
        types.iter().all(|t| t == &some_string("mobile")),
        "{types:?}"
    );
}
