//! The generalizing actions: `time-truncate` (a timestamp or time of day truncated to a unit,
//! in its own type and logical type) and `bucket` (an int or long replaced by its bucket's lower
//! bound or label). Both transform paths give the expected values on plain, nullable, nested and
//! array fields, before 1970 too; what does not fit a type is refused at start, naming the path;
//! a value that would leave its type is an error (a dead letter), never a wrong value. No broker
//! needed.

mod common;

use apache_avro::types::Value;
use apache_avro::Schema;
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::plan;
use pseudonymizer::rules::{Action, RuleSpec, Rules, TimeUnit};
use pseudonymizer::transform::Engine;

const SCHEMA: &str = r#"{"type": "record", "name": "Usage", "namespace": "test.v1", "fields": [
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "at_micros", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
    {"name": "local_at", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
    {"name": "time_of_day", "type": {"type": "int", "logicalType": "time-millis"}},
    {"name": "duration_ms", "type": "long"},
    {"name": "size", "type": ["null", "int"]},
    {"name": "legs", "type": {"type": "array", "items": {"type": "record", "name": "Leg", "fields": [
        {"name": "seconds", "type": "long"},
        {"name": "started", "type": {"type": "long", "logicalType": "timestamp-millis"}}
    ]}}}
]}"#;

fn rules(duration_label: bool) -> Rules {
    let hour = Action::TimeTruncate(TimeUnit::Hour);
    Rules::from_pairs([
        ("at", hour),
        ("at_micros", Action::TimeTruncate(TimeUnit::Minute)),
        ("local_at", Action::TimeTruncate(TimeUnit::Day)),
        ("time_of_day", hour),
        (
            "duration_ms",
            Action::Bucket {
                label: duration_label,
            },
        ),
        ("size", Action::Bucket { label: false }),
        ("legs.seconds", Action::Bucket { label: true }),
        ("legs.started", Action::TimeTruncate(TimeUnit::Minute)),
    ])
    .with_buckets("duration_ms", vec![0, 10_000, 60_000, 300_000])
    .with_buckets("size", vec![0, 1024, 1_048_576])
    .with_buckets("legs.seconds", vec![60, 600])
}

/// 2026-12-06T13:47:21.123Z in milliseconds.
const AT: i64 = 1_796_651_241_123;
const HOUR: i64 = 3_600_000;

fn event(at: i64, duration: i64, size: Option<i32>, legs: &[(i64, i64)]) -> Value {
    Value::Record(vec![
        ("at".into(), Value::TimestampMillis(at)),
        (
            "at_micros".into(),
            Value::Union(
                1,
                Box::new(Value::TimestampMicros(
                    at.saturating_mul(1000).saturating_add(456),
                )),
            ),
        ),
        ("local_at".into(), Value::LocalTimestampMillis(at)),
        ("time_of_day".into(), Value::TimeMillis(49_641_123)),
        ("duration_ms".into(), Value::Long(duration)),
        (
            "size".into(),
            match size {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(n) => Value::Union(1, Box::new(Value::Int(n))),
            },
        ),
        (
            "legs".into(),
            Value::Array(
                legs.iter()
                    .map(|(seconds, started)| {
                        Value::Record(vec![
                            ("seconds".into(), Value::Long(*seconds)),
                            ("started".into(), Value::TimestampMillis(*started)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

/// The plan, and an engine for it.
fn engine(rules: &Rules) -> Engine {
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let plan = plan::compile(&schema, rules).unwrap();
    Engine::new(vec![plan], PhoneCanon::new("ID").unwrap()).unwrap()
}

/// Both paths' output (they must agree), or both paths' refusal.
fn run(engine: &Engine, event: Value) -> Result<Value, String> {
    let plan = engine.plan("test.v1.Usage").unwrap();
    let keys = common::active(engine);
    let input = common::encode(&plan.input, event);
    let mut out = Vec::new();
    let fast = engine.transform(plan, &keys, &input, &mut out);
    let reference = engine.transform_reference(plan, &keys, &input);
    match (fast, reference) {
        (Ok(_), Ok(reference)) => {
            let fast = common::decode(&plan.output, &out);
            assert_eq!(
                fast,
                common::decode(&plan.output, &reference),
                "fast vs reference"
            );
            Ok(fast)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            Err(a.to_string())
        }
        (a, b) => panic!("the paths disagree: {a:?} vs {b:?}"),
    }
}

#[test]
fn timestamps_and_numbers_are_generalized_in_their_own_types() {
    let engine = engine(&rules(false));
    let out = run(
        &engine,
        event(AT, 42_000, Some(2048), &[(59, AT), (600, AT + 61_000)]),
    )
    .unwrap();
    let field = |name: &str| common::field(&out, name).clone();
    assert_eq!(field("at"), Value::TimestampMillis(AT - AT % HOUR));
    assert_eq!(
        field("at_micros"),
        Value::Union(
            1,
            Box::new(Value::TimestampMicros((AT - AT % 60_000) * 1000))
        )
    );
    assert_eq!(
        field("local_at"),
        Value::LocalTimestampMillis(AT - AT % 86_400_000)
    );
    assert_eq!(field("time_of_day"), Value::TimeMillis(13 * 3_600_000));
    assert_eq!(field("duration_ms"), Value::Long(10_000));
    assert_eq!(field("size"), Value::Union(1, Box::new(Value::Int(1024))));
    let Value::Array(legs) = field("legs") else {
        panic!("legs")
    };
    assert_eq!(
        common::field(&legs[0], "seconds"),
        &Value::String("(-inf, 60)".into())
    );
    assert_eq!(
        common::field(&legs[1], "seconds"),
        &Value::String("[600, +inf)".into())
    );
    assert_eq!(
        common::field(&legs[1], "started"),
        &Value::TimestampMillis(AT + 61_000 - (AT + 61_000) % 60_000)
    );

    // Before 1970: towards the past, not towards zero. Below the first bound: the type's
    // minimum. A null stays null.
    let out = run(&engine, event(-1, -5, None, &[])).unwrap();
    assert_eq!(common::field(&out, "at"), &Value::TimestampMillis(-HOUR));
    assert_eq!(common::field(&out, "duration_ms"), &Value::Long(i64::MIN));
    assert_eq!(
        common::field(&out, "size"),
        &Value::Union(0, Box::new(Value::Null))
    );
    let out = run(&engine, event(AT, 300_000, Some(-1), &[])).unwrap();
    assert_eq!(common::field(&out, "duration_ms"), &Value::Long(300_000));
    assert_eq!(
        common::field(&out, "size"),
        &Value::Union(1, Box::new(Value::Int(i32::MIN)))
    );

    // Labels instead of lower bounds: a string, and the derived schema says so.
    let engine = self::engine(&rules(true));
    let out = run(&engine, event(AT, 60_000, None, &[])).unwrap();
    assert_eq!(
        common::field(&out, "duration_ms"),
        &Value::String("[60000, 300000)".into())
    );
    let plan = engine.plan("test.v1.Usage").unwrap();
    assert!(
        plan.output_json.to_string().contains(
            r#"{"name":"duration_ms","type":"string","doc":"[generalized: the label of the value's bucket; buckets cut at 0, 10000, 60000, 300000 ((-inf, 0), …, [300000, +inf))]"}"#
        ),
        "{}",
        plan.output_json
    );
}

#[test]
fn a_timestamp_that_would_leave_its_type_is_an_error_not_a_wrong_value() {
    let engine = engine(&rules(false));
    let err = run(&engine, event(i64::MIN, 0, None, &[])).unwrap_err();
    assert!(
        err.contains("field `at`") && err.contains("to truncate"),
        "{err}"
    );
}

/// A rule as the config writes it.
fn spec(text: &str) -> RuleSpec {
    toml::from_str::<toml::Table>(&format!("x = {text}")).unwrap()["x"]
        .clone()
        .try_into()
        .unwrap()
}

#[test]
fn what_does_not_fit_is_refused_naming_the_path() {
    for (text, expected) in [
        (
            r#"{ action = "time-truncate" }"#,
            "time-truncate needs a unit",
        ),
        (
            r#"{ action = "time-truncate", unit = "week" }"#,
            "unit \"week\" is not minute, hour or day",
        ),
        (r#"{ action = "bucket" }"#, "bucket needs bounds"),
        (
            r#"{ action = "bucket", bounds = [10, 10] }"#,
            "bucket bounds must increase: 10 is followed by 10",
        ),
        (
            r#"{ action = "bucket", bounds = [] }"#,
            "bucket needs 1 to 64 bounds, not 0",
        ),
        (
            r#"{ action = "bucket", bounds = [1], output = "upper" }"#,
            "output \"upper\" is not lower or label",
        ),
        (
            r#"{ action = "keep", unit = "hour" }"#,
            "unit only applies to time-truncate",
        ),
        (
            r#"{ action = "bucket", bounds = ["a"] }"#,
            "bounds must list integers",
        ),
    ] {
        let err = match RuleSpec::from_toml(
            &toml::from_str::<toml::Table>(&format!("x = {text}")).unwrap()["x"],
        ) {
            Err(e) => e,
            Ok(spec) => spec.action().unwrap_err(),
        };
        assert!(err.contains(expected), "{text}: {err}");
    }
    assert_eq!(
        spec(r#"{ action = "bucket", bounds = [0, 60], output = "label" }"#).action(),
        Ok(Action::Bucket { label: true })
    );

    // Types: a plain long has no unit of time; a timestamp is not bucketed; a time of day
    // is not truncated to the day; an int bucket's bounds fit an int.
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let bad = rules(false)
        .with_pair("duration_ms", Action::TimeTruncate(TimeUnit::Hour))
        .with_pair("at", Action::Bucket { label: false })
        .with_pair("time_of_day", Action::TimeTruncate(TimeUnit::Day))
        .with_buckets("at", vec![0])
        .with_buckets("size", vec![0, 1 << 40]);
    let errors = plan::compile(&schema, &bad).unwrap_err().join("\n");
    for expected in [
        "duration_ms: action time-truncate does not fit type \"long\" (time-truncate needs a long or int with a timestamp or time-of-day logical type",
        "at: action bucket does not fit type",
        "time_of_day: a time of day truncated to the day is always midnight",
        "size: a bucket bound does not fit an int",
    ] {
        assert!(errors.contains(expected), "{expected}\nnot in:\n{errors}");
    }
}
