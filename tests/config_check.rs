//! `check` is the gate it claims to be: every config `run` refuses before it consumes, `check`
//! refuses too, naming the problem (one validation function serves both); inputs are read
//! bounded; messages name settings without showing values read through references, and quote
//! other values short. Each test runs the real binary; none needs a broker.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pseudonymizer::keys::{KeyEntry, KeyState, Keyring, Purpose, Secret};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A folder with the test keyring and the shipped config, its schema and keyring paths made
/// absolute.
struct Setup {
    dir: tempfile::TempDir,
    ring: PathBuf,
    shipped: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ring = common::write_keyring(dir.path());
        let shipped = std::fs::read_to_string(common::repo().join("config/pipeline.toml"))
            .unwrap()
            .replace(
                "\"../schemas/",
                &format!("\"{}/", common::repo().join("schemas").display()),
            )
            .replace(
                "keyring = \"../keys/keyring.json\"",
                &format!("keyring = {:?}", ring.display().to_string()),
            );
        Setup { dir, ring, shipped }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` as a config and runs `check` on it.
    fn check(&self, text: &str) -> Output {
        let config = self.write("pipeline.toml", text);
        run(&["check", "--config", s(&config)])
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The shipped config with one replacement, which must apply.
    fn with(&self, from: &str, to: &str) -> String {
        assert!(
            self.shipped.contains(from),
            "{from:?} not in the shipped config"
        );
        self.shipped.replacen(from, to, 1)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `check` exits 1 and its error names `expected`.
fn refused(out: &Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not refused: {err}{}",
        stdout(out)
    );
    assert!(err.contains(expected), "{expected:?} not in: {err}");
}

#[test]
fn the_shipped_config_passes_and_says_it_did_not_connect() {
    let setup = Setup::new();
    // Its brokers are a listener of ours, which must see no connection: "not connected" is
    // what happened, not only what is said (librdkafka connects the moment a client is made).
    let brokers = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    brokers.set_nonblocking(true).unwrap();
    let text = setup.with(
        "brokers = \"127.0.0.1:9092\"",
        &format!("brokers = \"{}\"", brokers.local_addr().unwrap()),
    );
    let out = setup.check(&text);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("[kafka]: ok"), "{said}");
    assert!(
        said.contains("not connected: run with --connect to reach the cluster"),
        "{said}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        brokers.accept().is_err(),
        "check without --connect connected to the brokers"
    );
}

/// Each config here is one `run` refuses at start; `check` must refuse it, naming the
/// problem, and so must `run` (the same function), before it connects to anything.
#[test]
fn check_refuses_what_run_refuses() {
    let setup = Setup::new();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key_class",
            setup.with("key_class = \"phone\"", "key_class = \"telephone\""),
            "key_class \"telephone\" is not phone, ip, email, id or id.<role>",
        ),
        (
            "metrics_listen port out of range",
            setup.with(
                "shutdown_timeout_secs = 20",
                "shutdown_timeout_secs = 20\nmetrics_listen = \"0.0.0.0:99999\"",
            ),
            "metrics_listen \"0.0.0.0:99999\" is not host:port",
        ),
        (
            "output topic = input topic",
            setup.with(
                "output_topic = \"comms.calls.sanitized\"",
                "output_topic = \"comms.raw\"",
            ),
            "[calls] output_topic \"comms.raw\" is also its input_topic",
        ),
        (
            "output topic = dead-letter topic",
            setup.with(
                "output_topic = \"comms.calls.sanitized\"",
                "output_topic = \"comms.dlq\"",
            ),
            "[calls] output_topic \"comms.dlq\" is also the dead-letter topic",
        ),
        (
            "one input_schema_id for two pipelines",
            setup.with("input_schema_id = 2", "input_schema_id = 1"),
            "[messages] input_schema_id 1 is also the input_schema_id of [calls]",
        ),
        (
            "empty transactional_id",
            setup.with(
                "shutdown_timeout_secs = 20",
                "shutdown_timeout_secs = 20\nmode = \"exactly-once\"\ntransactional_id = \"\"",
            ),
            "[kafka] transactional_id is empty",
        ),
        (
            "dead-letter topic that is an input topic",
            setup.with("dlq_topic = \"comms.dlq\"", "dlq_topic = \"comms.raw\""),
            "dlq_topic \"comms.raw\" is also the input_topic of [calls]",
        ),
        (
            "shutdown_timeout_secs past its range (it would overflow the clock at SIGINT)",
            setup.with(
                "shutdown_timeout_secs = 20",
                "shutdown_timeout_secs = 9223372036854775807",
            ),
            "shutdown_timeout_secs = 9223372036854775807 is out of range: it must be from 1 to 3600",
        ),
        (
            "a consumer property the worker owns",
            setup.with(
                "[kafka.consumer_properties]\n",
                "[kafka.consumer_properties]\n\"enable.auto.offset.store\" = \"true\"\n",
            ),
            "[kafka.consumer_properties] \"enable.auto.offset.store\" is the worker's own setting and cannot be overridden: an offset is stored only once its record's copy is delivered",
        ),
        (
            "a producer property the worker owns",
            setup.with(
                "[kafka.producer_properties]\n",
                "[kafka.producer_properties]\n\"acks\" = \"1\"\n",
            ),
            "[kafka.producer_properties] \"acks\" is the worker's own setting and cannot be overridden: a record counts as delivered only once every in-sync replica has it",
        ),
        (
            "a shared property the worker owns, by its alias",
            setup.with(
                "[kafka.properties]\n",
                "[kafka.properties]\n\"request.required.acks\" = \"0\"\n",
            ),
            "[kafka.properties] \"request.required.acks\" is the worker's own setting",
        ),
        (
            "an owned property by librdkafka's topic prefix",
            setup.with(
                "[kafka.consumer_properties]\n",
                "[kafka.consumer_properties]\n\"topic.auto.offset.reset\" = \"latest\"\n",
            ),
            "[kafka.consumer_properties] \"topic.auto.offset.reset\" is the worker's own setting and cannot be overridden: set [kafka] auto_offset_reset",
        ),
        (
            "two names of one property",
            setup.with(
                "\"linger.ms\" = \"5\"\n",
                "\"linger.ms\" = \"5\"\n\"queue.buffering.max.ms\" = \"10\"\n",
            ),
            "[kafka] \"linger.ms\" and \"queue.buffering.max.ms\" are two names of the producer's property \"queue.buffering.max.ms\": set it once",
        ),
        (
            "delivery reports turned off",
            setup.with(
                "[kafka.producer_properties]\n",
                "[kafka.producer_properties]\n\"delivery.report.only.error\" = \"true\"\n",
            ),
            "without them no offset would ever be stored",
        ),
        (
            "transform_threads 0",
            setup.with("stall_timeout_secs = 60", "stall_timeout_secs = 60\ntransform_threads = 0"),
            "[kafka] transform_threads = 0 is out of range: it must be from 1 to 256",
        ),
        (
            "transform_threads past its range",
            setup.with("stall_timeout_secs = 60", "stall_timeout_secs = 60\ntransform_threads = 257"),
            "[kafka] transform_threads = 257 is out of range: it must be from 1 to 256",
        ),
        (
            "stall_timeout_secs 0",
            setup.with("stall_timeout_secs = 60", "stall_timeout_secs = 0"),
            "stall_timeout_secs = 0 is out of range",
        ),
        (
            "derive on a number (refused for its action first)",
            setup.with(
                "duration_ms = \"keep\"",
                "duration_ms = { action = \"phone\", derive = [\"region\"] }",
            ),
            "duration_ms: action phone does not fit type \"long\"",
        ),
        (
            "derive naming no attribute",
            setup.with(
                "callee = { action = \"phone\", derive = [\"region\", \"calling_code\", \"number_type\"] }",
                "callee = { action = \"phone\", derive = [\"country\"] }",
            ),
            "callee: derive: \"country\" is not an attribute phone derives (region, calling_code, number_type)",
        ),
        (
            "derive of a phone attribute on an IP",
            setup.with(
                "caller_ip = \"ip\"",
                "caller_ip = { action = \"ip\", derive = [\"region\"] }",
            ),
            "caller_ip: derive: \"region\" is not an attribute ip derives (country)",
        ),
        (
            "derive on another action",
            setup.with(
                "call_id = \"id\"",
                "call_id = { action = \"id\", derive = [\"region\"] }",
            ),
            "call_id: derive only applies to phone, ip and ip-truncate, not \"id\"",
        ),
        (
            "derive country without a database",
            setup.with(
                "caller_ip = \"ip\"",
                "caller_ip = { action = \"ip\", derive = [\"country\"] }",
            ),
            "caller_ip: derive country needs a country database: name one in [geoip] database",
        ),
        (
            "risk: k out of range",
            setup.with("k = 5\nwindow = 100000", "k = 1\nwindow = 100000"),
            "[calls] risk: k = 1 is out of range: it must be from 2 to 1000",
        ),
        (
            "risk: a quasi-identifier that is not an output field",
            setup.with(
                "quasi_identifiers = [\"location.country\", ",
                "quasi_identifiers = [\"location.nowhere\", ",
            ),
            "[calls] risk: quasi-identifier \"location.nowhere\" names no field of the output schema comms.sanitized.v1.CallEvent",
        ),
        (
            "risk: a sealed field",
            setup.with(
                "quasi_identifiers = [\"location.country\", ",
                "quasi_identifiers = [\"recording_url\", ",
            ),
            "[calls] risk: quasi-identifier \"recording_url\" is sealed (encrypt)",
        ),
        (
            "risk: a field named twice",
            setup.with(
                "quasi_identifiers = [\"location.country\", ",
                "quasi_identifiers = [\"callee_region\", ",
            ),
            "[calls] risk: quasi-identifier \"callee_region\" is named twice",
        ),
        (
            "risk: a window past its range",
            setup.with("k = 5\nwindow = 100000", "k = 5\nwindow = 1000001"),
            "[calls] risk: window = 1000001 is out of range: it must be from 100 to 1000000 records",
        ),
        (
            "risk: a dropped field is no output field",
            setup.with(
                "quasi_identifiers = [\"location.country\", ",
                "quasi_identifiers = [\"caller_ip\", ",
            )
            .replace("caller_ip = \"ip\"", "caller_ip = \"drop\""),
            "[calls] risk: quasi-identifier \"caller_ip\" names no field of the output schema",
        ),
        (
            "input_schema_id past a Confluent id",
            setup.with("input_schema_id = 2", "input_schema_id = 4294967295"),
            "input_schema_id = 4294967295 is out of range",
        ),
    ];
    for (what, text, expected) in &cases {
        let out = setup.check(text);
        refused(&out, expected);
        let config = setup.path("pipeline.toml");
        let started = Instant::now();
        let out = run(&["run", "--config", s(&config)]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: run did not refuse: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(expected),
            "{what}: run refused otherwise: {}",
            stderr(&out)
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let setup = Setup::new();
    let text = setup
        .with("key_class = \"phone\"", "key_class = \"telephone\"")
        .replacen("dlq_topic = \"comms.dlq\"", "dlq_topic = \"comms.raw\"", 1)
        .replacen("stall_timeout_secs = 60", "stall_timeout_secs = 0", 1)
        .replacen("codec = \"keep\"\n", "", 1);
    let out = setup.check(&text);
    let err = stderr(&out);
    for expected in [
        "key_class \"telephone\"",
        "a loop",
        "stall_timeout_secs = 0",
        "codec: has no rule",
    ] {
        refused(&out, expected);
    }
    assert_eq!(err.matches("error:").count(), 1, "one message: {err}");
}

/// A keyring with an active pseudonym key and no encryption key.
fn keyring_without_encryption(dir: &Path) -> PathBuf {
    let path = dir.join("no-encryption.json");
    Keyring::from_entries(vec![KeyEntry {
        id: "p-only".to_owned(),
        purpose: Purpose::Pseudonym,
        state: KeyState::Active,
        created_at: "2026-11-24T10:00:00Z".to_owned(),
        secret: Some(Secret::from_b64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()),
    }])
    .unwrap()
    .save(&path)
    .unwrap();
    path
}

#[test]
fn no_encryption_key_is_refused_because_dead_letters_need_one() {
    let setup = Setup::new();
    let ring = keyring_without_encryption(setup.dir.path());
    // No rule encrypts, so only the dead-letter topic needs an encryption key.
    let text = setup
        .with("recording_url = \"encrypt\"", "recording_url = \"drop\"")
        .replacen("body = \"encrypt\"", "body = \"drop\"", 1)
        .replacen(
            "\"attachments.url\" = \"encrypt\"",
            "\"attachments.url\" = \"drop\"",
            1,
        );
    let config = setup.write("pipeline.toml", &text);
    let out = run(&["check", "--config", s(&config), "--keyring", s(&ring)]);
    refused(
        &out,
        "no active encryption key, and the dead-letter topic needs one",
    );
    // The same config without [kafka] is a file-mode config: no dead letters, no refusal.
    let file_mode = text[..text.find("[kafka]\n").unwrap()].to_owned();
    let config = setup.write("file-mode.toml", &file_mode);
    let out = run(&["check", "--config", s(&config), "--keyring", s(&ring)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("file mode only"), "{}", stdout(&out));
    let _ = &setup.ring;
}

#[test]
fn a_fifo_as_config_is_refused_at_once() {
    let setup = Setup::new();
    let fifo = setup.path("fifo.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["check", "--config", s(&fifo)])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("check hung on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("is not a regular file (it is a FIFO)"),
        "{err}"
    );
}

#[test]
fn a_missing_config_is_named_with_the_os_error_once() {
    let setup = Setup::new();
    let out = run(&["check", "--config", s(&setup.path("absent.toml"))]);
    refused(&out, "absent.toml");
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A missing keyring likewise.
    let config = setup.write("pipeline.toml", &setup.shipped);
    let absent = setup.path("absent-keyring.json");
    let out = run(&["check", "--config", s(&config), "--keyring", s(&absent)]);
    refused(&out, "absent-keyring.json");
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn a_schema_that_panics_the_avro_parser_is_an_error_naming_the_file() {
    let setup = Setup::new();
    let schema = setup.write(
        "bad-enum.avsc",
        // apache-avro 0.21 panics on an alias outside Avro's name grammar.
        r#"{"type": "record", "name": "comms.v1.CallEvent", "fields": [
            {"name": "status", "type": {"type": "enum", "name": "Status", "aliases": ["not-ok"], "symbols": ["ok"]}}
        ]}"#,
    );
    let text = setup.with(
        &format!(
            "\"{}/comms.v1.CallEvent.avsc\"",
            common::repo().join("schemas").display()
        ),
        &format!("{:?}", schema.display().to_string()),
    );
    let out = setup.check(&text);
    let err = stderr(&out);
    refused(&out, "bad-enum.avsc");
    refused(
        &out,
        "the Avro schema parser panicked on it (an invalid name)",
    );
    assert!(!err.contains("internal error"), "{err}");
    assert!(!err.contains("panicked at"), "{err}");
}

#[test]
fn a_schema_file_that_is_a_fifo_is_refused_at_once() {
    let setup = Setup::new();
    let fifo = setup.path("schema.avsc");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let text = setup.with(
        &format!(
            "\"{}/comms.v1.CallEvent.avsc\"",
            common::repo().join("schemas").display()
        ),
        &format!("{:?}", fifo.display().to_string()),
    );
    let started = Instant::now();
    let out = setup.check(&text);
    refused(&out, "is not a regular file (it is a FIFO)");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// One mode rule for every secret file: a `${file:…}` target readable by others is refused
/// (before, any mode was read), and group read passes only for the group that
/// PSEUDONYMIZER_SECRET_GROUP names, never merely because the process is in it.
#[test]
fn secret_file_references_are_held_to_the_secret_file_mode_rule() {
    use std::os::unix::fs::PermissionsExt as _;
    let setup = Setup::new();
    let region = setup.path("region");
    std::fs::write(&region, "ID\n").unwrap();
    let text = setup.with(
        "default_region = \"ID\"",
        "default_region = \"${file:region}\"",
    );
    let config = setup.write("pipeline.toml", &text);
    let check = |mode: u32, group: Option<String>| {
        std::fs::set_permissions(&region, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"));
        command.args(["check", "--config", s(&config)]);
        command.env_remove("PSEUDONYMIZER_SECRET_GROUP");
        if let Some(group) = group {
            command.env("PSEUDONYMIZER_SECRET_GROUP", group);
        }
        command.output().unwrap()
    };
    let out = check(0o666, None);
    refused(&out, "others have access (mode 666)");
    refused(&out, "chmod 600");
    refused(&check(0o644, None), "others have access (mode 644)");
    refused(&check(0o620, None), "its group can write it");
    // SAFETY: getegid has no preconditions.
    let own = unsafe { libc::getegid() }.to_string();
    let out = check(0o640, None);
    refused(&out, "no group is named by PSEUDONYMIZER_SECRET_GROUP");
    refused(&check(0o640, Some("54321".into())), "names group 54321");
    refused(
        &check(0o640, Some("staff".into())),
        "is not a numeric group id",
    );
    let out = check(0o640, Some(own));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = check(0o600, None);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_value_read_through_a_reference_is_never_printed() {
    let setup = Setup::new();
    let canary = "CANARYREGION7Q";
    common::write_secret(&setup.path("region"), format!("{canary}\n"));
    let out = setup.check(&setup.with(
        "default_region = \"ID\"",
        "default_region = \"${file:region}\"",
    ));
    let err = stderr(&out);
    refused(&out, "the value of ${file:region}");
    assert!(!err.contains(canary), "{err}");

    // Through a rule, and through a schema path.
    common::write_secret(&setup.path("rule"), "CANARYRULE3Z");
    common::write_secret(&setup.path("schema-path"), "/nonexistent/CANARYPATH5X.avsc");
    let text = setup
        .with("codec = \"keep\"", "codec = \"${file:rule}\"")
        .replacen(
            &format!(
                "\"{}/comms.v1.MessageEvent.avsc\"",
                common::repo().join("schemas").display()
            ),
            "\"${file:schema-path}\"",
            1,
        );
    let out = setup.check(&text);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for canary in ["CANARYRULE3Z", "CANARYPATH5X"] {
        assert!(!err.contains(canary), "{canary} in: {err}");
    }
    assert!(err.contains("the value of ${file:"), "{err}");
}

#[test]
fn long_values_are_quoted_short() {
    let setup = Setup::new();
    let long = "x".repeat(100_000);
    let out = setup.check(&setup.with("codec = \"keep\"", &format!("codec = \"{long}\"")));
    let err = stderr(&out);
    refused(&out, "unknown action \"xxxxxxxx");
    assert!(err.len() < 2_000, "{} bytes of error", err.len());

    // A long topic and a long key class too.
    let text = setup
        .with("key_class = \"phone\"", &format!("key_class = \"{long}\""))
        .replacen(
            "dlq_topic = \"comms.dlq\"",
            &format!("dlq_topic = \"{long}\""),
            1,
        );
    let out = setup.check(&text);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}", &err[..err.len().min(500)]);
    assert!(err.len() < 2_000, "{} bytes of error", err.len());
}

#[test]
fn toml_errors_give_line_and_column_and_rules_their_path() {
    let setup = Setup::new();
    // A syntax error: an unterminated string.
    let text = setup.with("codec = \"keep\"", "codec = \"keep");
    let line = text
        .lines()
        .position(|l| l.starts_with("codec = \"keep"))
        .unwrap()
        + 1;
    let out = setup.check(&text);
    refused(&out, &format!("pipeline.toml:{line}:"));

    // A field that is not in the config's grammar.
    let text = setup.with("max_in_flight = 10000", "max_in_fligth = 10000");
    let line = text
        .lines()
        .position(|l| l.starts_with("max_in_fligth"))
        .unwrap()
        + 1;
    let out = setup.check(&text);
    refused(&out, &format!("pipeline.toml:{line}:"));
    refused(&out, "unknown field `max_in_fligth`");

    // A rule of no accepted form: named by its path, with the forms a rule may take.
    let out = setup.check(&setup.with("\"device.os\" = \"keep\"", "\"device.os\" = 5"));
    refused(
        &out,
        "[pipeline.rules] \"device.os\": an integer is not a rule; a rule is an action name",
    );
    refused(&out, "a table { action = ");
    assert!(!stderr(&out).contains("untagged"), "{}", stderr(&out));
    let out = setup.check(&setup.with(
        "\"device.os\" = \"keep\"",
        "\"device.os\" = { actoin = \"keep\" }",
    ));
    refused(
        &out,
        "[pipeline.rules] \"device.os\": unknown option \"actoin\"",
    );
}

#[test]
fn check_format_json_is_a_document_scripts_can_read() {
    let setup = Setup::new();
    let config = setup.write("pipeline.toml", &setup.shipped);
    let out = run(&["check", "--config", s(&config), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["problems"].as_array().unwrap().len(), 0);
    assert_eq!(json["connected"], false);
    assert_eq!(json["keys"]["encryption"], "e-test-1");
    assert_eq!(json["pipelines"].as_array().unwrap().len(), 2);

    let config = setup.write(
        "bad.toml",
        &setup.with("key_class = \"phone\"", "key_class = \"telephone\""),
    );
    let out = run(&["check", "--config", s(&config), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    let problems = json["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{json}");
    assert!(
        problems[0].as_str().unwrap().contains("key_class"),
        "{json}"
    );
}

/// `explain` on the shipped config: every leaf field of the shipped input schemas with its
/// rule, a phone sample turned into a token, the output fields; JSON that parses.
#[test]
fn explain_shows_every_field_its_rule_and_what_a_sample_becomes() {
    let setup = Setup::new();
    let config = setup.write("pipeline.toml", &setup.shipped);
    let out = run(&["explain", "--config", s(&config), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tokens_shown"], true, "{json}");
    let shipped: toml::Table = toml::from_str(&setup.shipped).unwrap();
    let pipelines = json["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 2);
    for (pipeline, configured) in pipelines
        .iter()
        .zip(shipped["pipeline"].as_array().unwrap())
    {
        let rules = configured["rules"].as_table().unwrap();
        let fields = pipeline["fields"].as_array().unwrap();
        // Every rule of the shipped config is a leaf field of its schema (check refuses
        // otherwise), so the fields listed are exactly the rules' paths, with their actions.
        assert_eq!(fields.len(), rules.len(), "{pipeline}");
        for field in fields {
            let path = field["path"].as_str().unwrap();
            // A rule written as a table with `derive` is shown with the attributes it derives.
            let expected = match &rules[path] {
                toml::Value::String(name) => name.clone(),
                table => {
                    let derive: Vec<&str> = table["derive"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap())
                        .collect();
                    format!(
                        "{}, derive {}",
                        table["action"].as_str().unwrap(),
                        derive.join(", ")
                    )
                }
            };
            assert_eq!(
                field["rule"].as_str(),
                Some(expected.as_str()),
                "{path}: {field}"
            );
        }
        assert!(!pipeline["output_fields"].as_array().unwrap().is_empty());
    }
    let caller = pipelines[0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "caller")
        .unwrap();
    assert_eq!(caller["sample"], "\"+6281234567890\"");
    let token = caller["becomes"].as_str().unwrap();
    assert!(token.starts_with("\"p-test-1:"), "{token}");
    assert!(!token.contains("6281234567890"), "{token}");
    // The attributes the caller's rule derives, as the sample's output holds them.
    assert!(
        token.ends_with(
            "; caller_region \"ID\", caller_calling_code 62, caller_number_type \"mobile\""
        ),
        "{token}"
    );
    let output_fields: Vec<&str> = pipelines[0]["output_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for derived in ["caller_region", "caller_calling_code", "callee_number_type"] {
        assert!(output_fields.contains(&derived), "{output_fields:?}");
    }

    // The text form names the fields and their rules too.
    let out = run(&["explain", "--config", s(&config)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\"+6281234567890\" → \"p-test-1:"), "{text}");
    assert!(text.contains("recording_url"), "{text}");
    assert!(
        text.contains("output schema comms.sanitized.v1.CallEvent"),
        "{text}"
    );
}

/// Without a keyring explain says so and shows the actions; with `--input` it prints no raw
/// value of the file, only sanitized values and types.
#[test]
fn explain_without_keys_and_on_a_file() {
    let setup = Setup::new();
    let config = setup.write("pipeline.toml", &setup.shipped);
    let absent = setup.path("absent.json");
    let out = run(&["explain", "--config", s(&config), "--keyring", s(&absent)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("no tokens shown (actions only)"), "{text}");
    assert!(text.contains("(a phone token; not shown)"), "{text}");

    let raw = setup.path("calls.avro");
    let made = run(&[
        "generate",
        "--schema",
        "call",
        "--count",
        "3",
        "--seed",
        "7",
        "--output",
        s(&raw),
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
    let events = pseudonymizer::file::read_json(&raw, 1).unwrap();
    let out = run(&["explain", "--config", s(&config), "--input", s(&raw)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("pipeline calls"), "{text}");
    assert!(!text.contains("pipeline messages"), "{text}");
    for field in ["caller", "callee", "call_id", "caller_ip"] {
        let raw_value = events[0][field].as_str().unwrap();
        assert!(!text.contains(raw_value), "{field} raw value shown: {text}");
    }
    assert!(text.contains("→ \"p-test-1:"), "{text}");
}

/// Every flag of every command says what it does in `--help`.
#[test]
fn every_flag_has_help_text() {
    for command in [
        &["check"][..],
        &["run"],
        &["explain"],
        &["schema", "derive"],
        &["schema", "register"],
        &["dlq", "replay"],
        &["demo"],
        &["bench"],
        &["generate"],
        &["transform"],
        &["show"],
        &["lookup"],
        &["decrypt"],
        &["reseal"],
        &["audit", "verify"],
        &["keys", "init"],
        &["keys", "new-kek"],
        &["keys", "seal"],
        &["keys", "rewrap"],
        &["keys", "unseal"],
        &["keys", "rotate"],
        &["keys", "list"],
        &["keys", "destroy"],
    ] {
        let mut args = command.to_vec();
        args.push("-h");
        let out = run(&args);
        assert!(out.status.success(), "{command:?}");
        let help = stdout(&out);
        let options = help.split("Options:").nth(1).unwrap();
        let options = options.split("\n\n").next().unwrap();
        for line in options.lines().filter(|l| l.trim_start().starts_with('-')) {
            // `  -x, --flag <VALUE>  Text`: the text follows two spaces after the flag.
            let flag = line.trim_start();
            let text = flag.split_once("  ").map(|(_, t)| t.trim()).unwrap_or("");
            assert!(
                !text.is_empty() && !text.starts_with('['),
                "{command:?}: no help for {flag:?}"
            );
        }
    }
}

/// A schema of thousands of long-named fields without rules: the error lists the first
/// problems, each cut short, and says how many more there are.
#[test]
fn a_wide_schema_gives_a_short_error() {
    let setup = Setup::new();
    let fields: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                r#"{{"name": "f{i}_{}", "type": "string"}}"#,
                "x".repeat(300)
            )
        })
        .collect();
    let schema = setup.write(
        "wide.avsc",
        &format!(
            r#"{{"type": "record", "name": "comms.v1.CallEvent", "fields": [{}]}}"#,
            fields.join(",")
        ),
    );
    let text = setup.with(
        &format!(
            "\"{}/comms.v1.CallEvent.avsc\"",
            common::repo().join("schemas").display()
        ),
        &format!("{:?}", schema.display().to_string()),
    );
    let out = setup.check(&text);
    refused(&out, "has no rule");
    // 5000 fields without a rule, and the 19 calls rules that name no field of it.
    refused(&out, "is refused (5019 problems)");
    refused(&out, "… and 4969 more");
    let err = stderr(&out);
    assert!(err.len() < 30_000, "{} bytes of error", err.len());
}

/// `dlq replay` makes the worker's clients: it refuses the properties `check` refuses, before
/// it connects or audits anything.
#[test]
fn dlq_replay_refuses_the_properties_the_worker_owns() {
    let setup = Setup::new();
    let config = setup.write(
        "pipeline.toml",
        &setup.with(
            "[kafka.consumer_properties]\n",
            "[kafka.consumer_properties]\n\"topic.auto.offset.reset\" = \"latest\"\n",
        ),
    );
    let audit = setup.path("audit.log");
    let out = run(&[
        "dlq",
        "replay",
        "--config",
        s(&config),
        "--keyring",
        s(&setup.ring),
        "--audit-log",
        s(&audit),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"topic.auto.offset.reset\" is the worker's own setting"),
        "{}",
        stderr(&out)
    );
    assert!(!audit.exists(), "refused before the audit log was opened");
}
