//! File mode reads each container by its own writer schema and destroys nothing: a file
//! written with another version of the record is refused with its offending paths named and
//! nothing written; failed or refused runs leave an existing output as it was; the input is
//! never its own output. `decrypt` and `reseal` read only what `transform` wrote (a raw file,
//! a file of another schema are refused, a reordered one read by name), and an envelope that
//! does not open fails them: exit 1, unless `decrypt --keep-going`.

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

/// `setup.raw` transformed: the sanitized file.
fn sanitized(setup: &Setup) -> PathBuf {
    let path = setup.dir.path().join("calls.sanitized.avro");
    let out = transform(setup, &setup.raw, &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A copy of container `input` (same schema, same metadata), each record through `edit`
/// with its index; `edit_schema` may change the schema's fields.
fn copy_container(
    input: &Path,
    output: &Path,
    edit_schema: impl Fn(&mut Vec<serde_json::Value>),
    edit: impl Fn(usize, &mut Vec<(String, Value)>),
) {
    let reader = Reader::new(std::fs::File::open(input).unwrap()).unwrap();
    let mut json = serde_json::to_value(reader.writer_schema()).unwrap();
    edit_schema(json["fields"].as_array_mut().unwrap());
    let schema = Schema::parse(&json).unwrap();
    let metadata = reader.user_metadata().clone();
    let mut writer = Writer::new(&schema, std::fs::File::create(output).unwrap());
    for (key, value) in metadata {
        writer.add_user_metadata(key, value).unwrap();
    }
    for (index, value) in reader.enumerate() {
        let Value::Record(mut fields) = value.unwrap() else {
            panic!("not a record")
        };
        edit(index, &mut fields);
        writer.append(Value::Record(fields)).unwrap();
    }
    writer.flush().unwrap();
}

/// The index of the first event whose recording URL is sealed, and the file with one bit of
/// that envelope's tag flipped.
fn tampered(setup: &Setup, sanitized: &Path) -> (usize, PathBuf) {
    let events = pseudonymizer::file::read_json(sanitized, usize::MAX).unwrap();
    let first = events
        .iter()
        .position(|e| e["recording_url"].is_string())
        .unwrap();
    let path = setup.dir.path().join("tampered.avro");
    copy_container(
        sanitized,
        &path,
        |_| {},
        |index, fields| {
            if index != first {
                return;
            }
            let url = fields
                .iter_mut()
                .find(|(n, _)| n == "recording_url")
                .unwrap();
            let Value::Union(_, inner) = &mut url.1 else {
                panic!("recording_url is nullable")
            };
            let Value::Bytes(bytes) = &mut **inner else {
                panic!("recording_url is sealed")
            };
            *bytes.last_mut().unwrap() ^= 1;
        },
    );
    (first, path)
}

fn decrypt(setup: &Setup, input: &Path, extra: &[&str]) -> Output {
    let audit = setup.dir.path().join("audit.log");
    run(&[
        &[
            "decrypt",
            "--config",
            s(&setup.config),
            "--keyring",
            s(&setup.ring),
            "--input",
            s(input),
            "--audit-log",
            s(&audit),
        ][..],
        extra,
    ]
    .concat())
}

fn reseal(setup: &Setup, input: &Path, output: &Path) -> Output {
    run(&[
        "reseal",
        "--config",
        s(&setup.config),
        "--keyring",
        s(&setup.ring),
        "--input",
        s(input),
        "--output",
        s(output),
        "--audit-log",
        s(&setup.dir.path().join("audit.log")),
    ])
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn decrypt_fails_on_an_envelope_that_does_not_authenticate_unless_told_to_go_on() {
    let setup = setup();
    let sanitized = sanitized(&setup);
    let (first, tampered) = tampered(&setup, &sanitized);

    // Stops at the tampered event: exit 1, the event and field named, nothing of it printed.
    let out = decrypt(&setup, &tampered, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("event {}, field `recording_url`", first + 1)),
        "{stderr}"
    );
    assert!(stderr.contains("does not authenticate"), "{stderr}");
    assert_eq!(
        lines(&out).len(),
        first,
        "only the events before it are printed"
    );
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.log")).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "failed");

    // With --keep-going: every event, the tampered envelope marked, exit 0, counted apart
    // from destroyed keys.
    let out = decrypt(&setup, &tampered, &["--keep-going"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let events = lines(&out);
    assert_eq!(events.len(), 50);
    assert!(
        events[first]["recording_url"]["unopened"]
            .as_str()
            .unwrap()
            .contains("does not authenticate"),
        "{}",
        events[first]
    );
    assert!(
        stderr.contains("(0 under destroyed keys, 1 did not open)"),
        "{stderr}"
    );

    // The untouched file opens whole.
    let out = decrypt(&setup, &sanitized, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains(" 0 not opened"));
}

#[test]
fn reseal_fails_on_an_envelope_that_does_not_authenticate_and_writes_nothing() {
    // The tampered envelope is under the active key: before, it was copied on unopened.
    let setup = setup();
    let sanitized = sanitized(&setup);
    let (first, tampered) = tampered(&setup, &sanitized);
    let output = setup.dir.path().join("resealed.avro");
    let out = reseal(&setup, &tampered, &output);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("event {}, field `recording_url`", first + 1)),
        "{stderr}"
    );
    assert!(stderr.contains("does not authenticate"), "{stderr}");
    assert!(!output.exists());
    assert!(reseal(&setup, &sanitized, &output).status.success());
}

#[test]
fn decrypt_and_reseal_refuse_a_raw_file_it_holds_no_envelope() {
    let setup = setup();
    let output = setup.dir.path().join("resealed.avro");
    for out in [
        decrypt(&setup, &setup.raw, &[]),
        reseal(&setup, &setup.raw, &output),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("raw file of comms.v1.CallEvent"),
            "{stderr}"
        );
        assert!(stderr.contains("holds no envelope"), "{stderr}");
        assert!(out.stdout.is_empty(), "a raw file printed as decrypted");
    }
    assert!(!output.exists());
}

#[test]
fn decrypt_and_reseal_read_a_sanitized_file_by_its_own_schema() {
    let setup = setup();
    let sanitized = sanitized(&setup);
    let straight = lines(&decrypt(&setup, &sanitized, &[]));
    assert_eq!(straight.len(), 50);

    // Reordered: read by name, the same events.
    let reordered = setup.dir.path().join("reordered.avro");
    copy_container(
        &sanitized,
        &reordered,
        |f| f.swap(0, 1),
        |_, f| f.swap(0, 1),
    );
    let out = decrypt(&setup, &reordered, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out), straight);
    let resealed = setup.dir.path().join("resealed.avro");
    assert!(reseal(&setup, &reordered, &resealed).status.success());

    // Renamed (the sealed URL now under a name with no rule), added, removed, retyped:
    // refused before anything is printed, every path named.
    type EditSchema = Box<dyn Fn(&mut Vec<serde_json::Value>)>;
    type EditRecord = Box<dyn Fn(usize, &mut Vec<(String, Value)>)>;
    let cases: [(&str, EditSchema, EditRecord, &[&str]); 3] = [
        (
            "renamed.avro",
            Box::new(|f| {
                let url = f.iter_mut().find(|x| x["name"] == "recording_url").unwrap();
                url["name"] = "recording".into();
            }),
            Box::new(|_, f| {
                let url = f.iter_mut().find(|x| x.0 == "recording_url").unwrap();
                url.0 = "recording".into();
            }),
            &[
                "recording: in the file",
                "recording_url: in the sanitized schema, not in the file",
            ],
        ),
        (
            "added.avro",
            Box::new(|f| f.push(serde_json::json!({"name": "imsi", "type": "string"}))),
            Box::new(|_, f| f.push(("imsi".into(), Value::String(PLANTED.into())))),
            &["imsi: in the file"],
        ),
        (
            "retyped.avro",
            Box::new(|f| f[0]["type"] = "bytes".into()),
            Box::new(|_, f| {
                let Value::String(id) = &f[0].1 else {
                    panic!("event_id is a string")
                };
                f[0].1 = Value::Bytes(id.clone().into_bytes());
            }),
            &["event_id: \"bytes\" in the file, \"string\" in the sanitized schema"],
        ),
    ];
    for (name, edit_schema, edit, expect) in cases {
        let path = setup.dir.path().join(name);
        copy_container(&sanitized, &path, edit_schema, edit);
        for out in [
            decrypt(&setup, &path, &[]),
            reseal(&setup, &path, &resealed),
        ] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(
                stderr.contains("not a sanitized file of this config"),
                "{name}: {stderr}"
            );
            for e in expect {
                assert!(stderr.contains(e), "{name}: {e} not in {stderr}");
            }
            assert!(!stderr.contains(PLANTED));
            assert!(out.stdout.is_empty(), "{name}: printed");
        }
    }
}
