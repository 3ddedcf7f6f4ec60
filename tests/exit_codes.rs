//! What a script sees of the binary when its standard output or error is gone: exit 1 when
//! its reader went away, never an abort (SIGABRT, 134); and `--help` names the exit codes.

use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pseudonymizer");

fn generate(dir: &Path, count: &str) -> std::path::PathBuf {
    let path = dir.join("raw.avro");
    let out = Command::new(BIN)
        .args([
            "generate", "--schema", "message", "--count", count, "--output",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[test]
fn closed_descriptors_neither_abort_nor_leak_into_files() {
    let dir = tempfile::tempdir().unwrap();
    // `>&- 2>&-` before exec: std opens /dev/null on them, so the output file the command
    // creates cannot take descriptor 1 and receive the printed lines.
    let out_file = dir.path().join("out.avro");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" generate --schema message --count 3 --output "$1" >&- 2>&-"#)
        .arg(BIN)
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), None, "{out:?}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let bytes = std::fs::read(&out_file).unwrap();
    assert!(bytes.starts_with(b"Obj\x01"), "not an Avro container");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("wrote 3"),
        "the command's own output went into the file"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_command_with_exit_1_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let raw = generate(dir.path(), "5000");
    let mut child = Command::new(BIN)
        .args(["show", "--count", "5000", "--input"])
        .arg(&raw)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little (so the command is writing), then close the pipe as `| head -1` does.
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    // And stderr too: the error message itself then has nowhere to go.
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), None, "killed by a signal: {status:?}");
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[test]
fn a_failure_with_stderr_closed_is_exit_1() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" check --config /nonexistent/pipeline.toml 2>&-"#)
        .arg(BIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.status.signal(), None);
}

#[test]
fn help_names_the_environment_and_the_exit_codes() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in ["Exit codes:", "2    usage error", "PSEUDONYMIZER_KEK_FILE"] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Help or the version that standard output cannot take is a failure like any other
    // output's; a usage error stays 2 with stderr closed.
    for (args, code) in [
        ("--help >/dev/full", 1),
        ("--version >/dev/full", 1),
        ("schema --help >/dev/full", 1),
        ("--no-such-flag 2>&-", 2),
        ("--help >/dev/null", 0),
    ] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(r#"exec "$0" {args}"#))
            .arg(BIN)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args}: {out:?}");
    }
}
