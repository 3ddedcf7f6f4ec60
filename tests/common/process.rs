//! Running the `pseudonymizer` binary in tests: start it with its log in a file, signal it,
//! wait for it, read its metrics page.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kafka;
use super::Reaped;

/// Starts `pseudonymizer run`; its stderr goes to `log`.
pub fn start(config: &Path, log: &Path) -> Reaped {
    start_logging(config, log, "pseudonymizer=info")
}

/// [`start`] with `RUST_LOG` set to `filter`.
pub fn start_logging(config: &Path, log: &Path, filter: &str) -> Reaped {
    let child = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", filter)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Reaped(child)
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, bound: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not exit within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::net::TcpStream::connect(addr)
        .is_ok_and(|_| kafka::http_get(addr, "/readyz").contains(" 200 "))
    {
        assert!(
            Instant::now() < deadline,
            "worker at {addr} never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of a counter of a worker's metrics page (all labels), by metric name prefix.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    kafka::http_get(addr, "/metrics")
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Serves the metrics of the worker that runs `config` (a config written by
/// `kafka::write_config`) on a free loopback port, edited in place; returns the address.
pub fn serve_metrics(config: &Path) -> SocketAddr {
    let port = free_port();
    let text = std::fs::read_to_string(config).unwrap().replace(
        "shutdown_timeout_secs = 20",
        &format!("shutdown_timeout_secs = 20\nmetrics_listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(config, text).unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// A free loopback port (for a worker's metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the binary with `args`; (success, stdout + stderr).
pub fn cli(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Waits (at most `bound`) until the log holds `needle` at least `times` times; its text.
pub fn wait_log(log: &Path, needle: &str, times: usize, bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?} {times} times:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
