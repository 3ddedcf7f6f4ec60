//! `pseudonymizer demo`, the README's main command, at its default size (100,000 events) on
//! the in-process cluster: it completes, every record is accounted for, and it says what it
//! measured. The in-process cluster keeps only 5 MiB per partition, so this also checks that
//! the demo never lets the producer run so far ahead that unread records are deleted.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_at_its_default_size_accounts_for_every_record() {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .arg("demo")
        .current_dir(common::repo())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a stalled demo must fail by itself within seconds; this is the backstop.
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let output = match finished.recv_timeout(Duration::from_secs(600)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the demo's own pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the demo did not finish in 600 s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(
            "worker: 100002 records in, 100000 published, 2 dead-lettered"
        ),
        "every record accounted for: 100,000 events published, 2 poison records dead-lettered:\n{stdout}"
    );
    assert!(stdout.contains("none lost"), "{stdout}");
    assert!(!stderr.contains("ERROR"), "no error logged:\n{stderr}");
    // Progress lines while it runs (not a terminal here: plain lines), and the figures.
    assert!(stdout.contains("progress: "), "{stdout}");
    for figure in [
        "wall clock: ",
        "CPU per record: worker threads ",
        "transform alone: ",
    ] {
        assert!(stdout.contains(figure), "{figure} in:\n{stdout}");
    }
    assert!(
        stdout.contains("set by the in-process test cluster"),
        "the pace is attributed to the in-process cluster"
    );
    // Both event types shown side by side, sanitized.
    assert!(stdout.contains("=== comms.v1.CallEvent ==="), "{stdout}");
    // The fields the rules derive, and the risk estimate of the calls pipeline: its window
    // holds every call published (half the events), and the synthetic data's random cell ids
    // leave a large share of them alone in their group (about half, measured), not all.
    assert!(
        stdout.contains("caller_number_type   (derived)"),
        "{stdout}"
    );
    let risk = stdout
        .lines()
        .find_map(|l| l.strip_prefix("re-identification risk [calls]: "))
        .unwrap_or_else(|| panic!("no risk line:\n{stdout}"));
    let numbers: Vec<u64> = risk
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .take(2)
        .collect();
    let [below, records] = numbers[..] else {
        panic!("{risk}")
    };
    assert!(records > 40_000 && records < 60_000, "{risk}");
    assert!(below * 5 > records && below < records, "{risk}");
    assert!(stdout.contains("=== comms.v1.MessageEvent ==="), "{stdout}");
    eprintln!("demo took {:.1} s", started.elapsed().as_secs_f64());
}
