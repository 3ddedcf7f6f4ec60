//! File mode reads each container by its own writer schema and destroys nothing: a file
//! written with another version of the record is refused with its offending paths named and
//! nothing written; failed or refused runs leave an existing output as it was; the input is
//! never its own output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use apache_avro::types::Value;
use apache_avro::{Reader, Schema, Writer};

const BIN: &str = env!("CARGO_BIN_EXE_pseudonymizer");
const PLANTED: &str = "+6289999999999";

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    ring: PathBuf,
    config: PathBuf,
    raw: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let config = common::repo().join("config/pipeline.toml");
    let raw = dir.path().join("calls.avro");
    let out = run(&[
        "generate",
        "--schema",
        "call",
        "--count",
        "50",
        "--output",
        s(&raw),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Setup {
        dir,
        ring,
        config,
        raw,
    }
}

fn transform(setup: &Setup, input: &Path, output: &Path) -> Output {
    run(&[
        "transform",
        "--config",
        s(&setup.config),
        "--keyring",
        s(&setup.ring),
        "--input",
        s(input),
        "--output",
        s(output),
    ])
}

/// Rewrites `setup.raw` under a schema edited by `edit_schema`, each record by `edit_record`.
fn rewrite(
    setup: &Setup,
    name: &str,
    edit_schema: impl Fn(&mut Vec<serde_json::Value>),
    edit_record: impl Fn(&mut Vec<(String, Value)>),
) -> PathBuf {
    let text =
        std::fs::read_to_string(common::repo().join("schemas/comms.v1.CallEvent.avsc")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit_schema(json["fields"].as_array_mut().unwrap());
    let schema = Schema::parse(&json).unwrap();
    let path = setup.dir.path().join(name);
    let mut writer = Writer::new(&schema, std::fs::File::create(&path).unwrap());
    for value in Reader::new(std::fs::File::open(&setup.raw).unwrap()).unwrap() {
        let Value::Record(mut fields) = value.unwrap() else {
            panic!("not a record")
        };
        edit_record(&mut fields);
        writer.append(Value::Record(fields)).unwrap();
    }
    writer.flush().unwrap();
    path
}

fn assert_refused_and_nothing_written(setup: &Setup, input: &Path, expect: &[&str]) {
    let output = setup.dir.path().join("out.avro");
    std::fs::write(&output, b"an output from before").unwrap();
    let out = transform(setup, input, &output);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for path in expect {
        assert!(stderr.contains(path), "{path} not named in: {stderr}");
    }
    assert!(
        !stderr.contains(PLANTED),
        "a raw value in the message: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PLANTED));
    assert_eq!(std::fs::read(&output).unwrap(), b"an output from before");
    let left: Vec<_> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

#[test]
fn a_renamed_field_is_refused_not_written_in_clear() {
    let setup = setup();
    let renamed = rewrite(
        &setup,
        "renamed.avro",
        |fields| fields[0]["name"] = "subscriber_msisdn".into(),
        |fields| fields[0] = ("subscriber_msisdn".into(), Value::String(PLANTED.into())),
    );
    assert_refused_and_nothing_written(&setup, &renamed, &["subscriber_msisdn", "event_id"]);
}

#[test]
fn reordered_fields_are_read_by_name_and_sanitized() {
    let setup = setup();
    let reordered = rewrite(
        &setup,
        "reordered.avro",
        |fields| fields.swap(0, 1),
        |fields| fields.swap(0, 1),
    );
    let output = setup.dir.path().join("reordered.sanitized.avro");
    let straight = setup.dir.path().join("straight.sanitized.avro");
    let out = transform(&setup, &reordered, &output);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(transform(&setup, &setup.raw, &straight).status.success());
    // The same events in another field order give the same sanitized values, field by field
    // (before, the config's field order was applied: each value went out under its
    // neighbour's rule).
    let read = |p: &Path| -> Vec<Vec<(String, Value)>> {
        Reader::new(std::fs::File::open(p).unwrap())
            .unwrap()
            .map(|v| match v.unwrap() {
                Value::Record(mut f) => {
                    f.sort_by(|a, b| a.0.cmp(&b.0));
                    f
                }
                _ => panic!("not a record"),
            })
            .collect()
    };
    let (a, b) = (read(&output), read(&straight));
    assert_eq!(a.len(), 50);
    for (x, y) in a.iter().zip(&b) {
        for ((name, value), (_, other)) in x.iter().zip(y) {
            // Envelopes differ by their random nonces; everything else must be equal.
            let sealed = |v: &Value| match v {
                Value::Bytes(_) => true,
                Value::Union(_, inner) => matches!(**inner, Value::Bytes(_)),
                _ => false,
            };
            if !sealed(value) {
                assert_eq!(value, other, "field {name}");
            }
        }
    }
}

#[test]
fn an_added_field_and_a_removed_field_are_refused() {
    let setup = setup();
    let added = rewrite(
        &setup,
        "added.avro",
        |fields| fields.push(serde_json::json!({"name": "imsi", "type": "string"})),
        |fields| fields.push(("imsi".into(), Value::String(PLANTED.into()))),
    );
    assert_refused_and_nothing_written(&setup, &added, &["imsi"]);
    let removed = rewrite(
        &setup,
        "removed.avro",
        |fields| {
            fields.remove(1);
        },
        |fields| {
            fields.remove(1);
        },
    );
    assert_refused_and_nothing_written(&setup, &removed, &["call_id"]);
}

#[test]
fn a_truncated_input_leaves_no_output() {
    let setup = setup();
    let bytes = std::fs::read(&setup.raw).unwrap();
    let cut = setup.dir.path().join("cut.avro");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let output = setup.dir.path().join("cut.sanitized.avro");
    let out = transform(&setup, &cut, &output);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!output.exists(), "a partial output was left");
}

#[test]
fn the_input_is_never_its_own_output() {
    let setup = setup();
    let before = std::fs::read(&setup.raw).unwrap();
    let out = transform(&setup, &setup.raw, &setup.raw);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both the input and the output"));
    let link = setup.dir.path().join("alias.avro");
    std::os::unix::fs::symlink(&setup.raw, &link).unwrap();
    assert_eq!(transform(&setup, &setup.raw, &link).status.code(), Some(1));
    assert_eq!(std::fs::read(&setup.raw).unwrap(), before);
}

#[test]
fn a_device_output_is_refused_and_a_fifo_input_does_not_hang() {
    let setup = setup();
    let out = transform(&setup, &setup.raw, Path::new("/dev/null"));
    assert_eq!(out.status.code(), Some(1));
    assert!(Path::new("/dev/null").exists());
    let fifo = setup.dir.path().join("fifo.avro");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = std::time::Instant::now();
    let out = transform(&setup, &fifo, &setup.dir.path().join("x.avro"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FIFO"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
