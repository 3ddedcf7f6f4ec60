//! Helpers shared by the integration tests: the shipped config with a fixed test keyring.
#![allow(dead_code)]

pub mod kafka;
pub mod process;
pub mod proxy;
pub mod registry;

use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, Schema};
use pseudonymizer::config::Config;
use pseudonymizer::keys::{KeySet, Keyring};
use pseudonymizer::transform::{ActiveKeys, Engine};

/// The Python that runs the independent vector scripts: `$PSEUDONYMIZER_PYTHON` (scripts/test.sh
/// sets it to the project's own environment, with `cryptography`), else `python3`.
pub fn python() -> String {
    std::env::var("PSEUDONYMIZER_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shipped_config() -> Config {
    Config::load(&repo().join("config/pipeline.toml")).expect("shipped config loads")
}

pub fn engine() -> Engine {
    Engine::from_config(&shipped_config()).expect("shipped rules compile")
}

/// The keyring of the test vectors: fixed secrets, one active key of each purpose, and a
/// fixed keyring id (format v2, generation 0), so that every copy a test writes is the same
/// keyring to a worker that reloads it.
pub fn test_keyring() -> Keyring {
    Keyring::from_json(
        r#"{"format":"pseudonymizer-keyring/v2","keyring_id":"kr-test-vectors","generation":0,"keys":[
  {"id":"p-test-1","purpose":"pseudonym","state":"active","created_at":"2026-11-24T10:00:00Z",
   "secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
  {"id":"e-test-1","purpose":"encryption","state":"active","created_at":"2026-11-24T10:00:00Z",
   "secret":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="},
  {"id":"s-test-1","purpose":"subject","state":"active","created_at":"2026-11-24T10:00:00Z",
   "secret":"QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="}]}"#,
    )
    .unwrap()
}

pub fn keyset() -> KeySet {
    KeySet::from_keyring(&test_keyring())
}

pub fn active(engine: &Engine) -> ActiveKeys {
    engine.active_keys(&keyset()).unwrap()
}

/// The test vectors' subject key, and a subject registry table in which the person behind the
/// canonical value `canonical` of `class` is erased: a withheld person, as the gate sees one.
pub fn erased(
    class: pseudonymizer::token::TokenClass,
    canonical: &str,
) -> (
    pseudonymizer::keys::SubjectKey,
    pseudonymizer::subjects::SubjectTable,
) {
    use pseudonymizer::keys::{Secret, SubjectKey};
    use pseudonymizer::subjects::{subject_of, RegistryRecord, SubjectState, SubjectTable};
    let key = SubjectKey::new(
        "s-test-1",
        &Secret::from_b64("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=").unwrap(),
    );
    let mut table = SubjectTable::new("s-test-1", vec![]);
    let (subject, hint) = subject_of(&key, class, canonical.as_bytes());
    table.apply(&RegistryRecord::new(
        subject,
        hint,
        SubjectState::Erased,
        None,
        "2026-12-06T00:00:00Z",
        "req-1",
    ));
    (key, table)
}

pub fn encode(schema: &Schema, value: Value) -> Vec<u8> {
    to_avro_datum(schema, value).expect("value fits schema")
}

pub fn decode(schema: &Schema, bytes: &[u8]) -> Value {
    let mut slice = bytes;
    let value =
        from_avro_datum(schema, &mut slice, None).expect("output decodes with the output schema");
    assert!(slice.is_empty(), "trailing bytes after output datum");
    value
}

pub fn field<'v>(record: &'v Value, name: &str) -> &'v Value {
    match record {
        Value::Record(fields) => {
            &fields
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no field {name}"))
                .1
        }
        other => panic!("not a record: {other:?}"),
    }
}

pub fn set_field(record: &mut Value, name: &str, value: Value) {
    match record {
        Value::Record(fields) => fields.iter_mut().find(|(n, _)| n == name).unwrap().1 = value,
        other => panic!("not a record: {other:?}"),
    }
}

/// Writes a keyring with mode 0600 into `dir`.
/// Writes a secret file (a `${file:…}` target, a credentials file) owner-only, as every secret
/// file must be (src/secret_file.rs).
pub fn write_secret(path: &Path, text: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn write_keyring(dir: &Path) -> PathBuf {
    let path = dir.join("keyring.json");
    test_keyring().save(&path).unwrap();
    path
}

/// A child process that is killed when the test lets go of it, so a failing test never leaves
/// a worker running (an orphan would hold the test runner's output pipe open).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The log lines of this test process, captured from the first call on (a process has one
/// global subscriber, so every test of a binary shares the capture; look for lines that name
/// your own topics).
#[derive(Clone)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs(Default::default());
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_env_filter("pseudonymizer=info")
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            logs
        })
        .clone()
    }

    /// Every captured line holding all of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        let text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs tests/python/`script` with the project's Python, `stdin` on its standard input;
/// answers its standard output (panics, with its standard error, when it fails).
pub fn run_python_script(script: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python())
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the project's python runs (scripts/test.sh sets PSEUDONYMIZER_PYTHON)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
