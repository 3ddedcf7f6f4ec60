//! The metrics and health port of a running worker (against Tansu) under the attacks of the
//! second security review (issue 28): clients pipelining `GET /metrics` without reading,
//! hundreds of half-sent requests, a byte-at-a-time client, oversized heads, bodies. Throughout,
//! a prober asks `/healthz` on a new connection every 100 ms and must get `200` within a second;
//! the worker's resident memory may grow by at most [`RSS_GROWTH_BOUND_KIB`] and its threads
//! not at all (src/endpoint.rs states the bounds; docs/deploy.md, "Health and metrics port").

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{self, Topics};
use common::process::wait_ready;

/// How much the worker's RSS may grow under the attacks: the endpoint's own bound is under
/// 2 MiB; the rest is allowance for the allocator and the worker's own work meanwhile.
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// One field of /proc/PID/status, in its unit (kB for memory).
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for pid {pid}"))
}

/// `/healthz` on a new connection every 100 ms, each given one second; it also samples the
/// worker's RSS, so the peak is seen while an attack is on.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<ProbeReport>,
}

#[derive(Debug, Default)]
struct ProbeReport {
    probes: u64,
    failures: Vec<String>,
    slowest: Duration,
    peak_rss_kib: u64,
}

fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("{e} after {} bytes", answer.len()))?;
    let answer = String::from_utf8_lossy(&answer);
    if answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n") {
        Ok(())
    } else {
        Err(format!("answer {answer:?}"))
    }
}

impl Prober {
    fn start(addr: SocketAddr, pid: u32) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = ProbeReport::default();
            while !stopped.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = probe(addr);
                let took = started.elapsed();
                report.probes += 1;
                report.slowest = report.slowest.max(took);
                match result {
                    Ok(()) if took < Duration::from_secs(1) => {}
                    Ok(()) => report.failures.push(format!("answered after {took:?}")),
                    Err(error) => report.failures.push(error),
                }
                report.peak_rss_kib = report.peak_rss_kib.max(status_field(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(100));
            }
            report
        });
        Prober { stop, thread }
    }

    fn finish(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Clients that pipeline `GET /metrics` as fast as the socket takes it and never read,
/// reconnecting whenever the worker closes them; returns the bytes they got sent.
fn pipeline_without_reading(addr: SocketAddr, clients: usize, for_: Duration) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let chunk = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (sent, chunk) = (sent.clone(), chunk.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + for_;
                while Instant::now() < deadline {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        continue;
                    };
                    stream
                        .set_write_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    while Instant::now() < deadline {
                        match stream.write(&chunk) {
                            Ok(n) => {
                                sent.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    sent.load(Ordering::Relaxed)
}

/// What the worker answers to one request sent whole, read until it closes or for 3 s.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // The worker may answer and close before it has read everything: that is the point.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_stays_up_and_bounded_under_hostile_clients() {
    let brokers = kafka::tansu();
    let topics = Topics::unique("health-port");
    topics.create(&brokers, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka::write_config(dir.path(), &topics, &brokers, "");
    let addr = common::process::serve_metrics(&config);
    let worker = common::process::start(&config, &dir.path().join("worker.log"));
    let pid = worker.0.id();
    wait_ready(addr);
    // Settle: the first scrapes allocate what every later one reuses.
    for _ in 0..3 {
        assert!(kafka::http_get(addr, "/metrics").contains("# TYPE pseudonymizer_"));
    }
    let rss_before = status_field(pid, "VmRSS:");
    let threads_before = status_field(pid, "Threads:");
    let prober = Prober::start(addr, pid);

    // 1. Four clients pipelining /metrics without reading, for 5 s (tiny_http: 62 MB taken
    //    in, 2.6 GB of RSS, /healthz silent for a minute).
    let sent = pipeline_without_reading(addr, 4, Duration::from_secs(5));

    // 2. 500 half-sent requests held open for 5 s (tiny_http: a thread each).
    let mut half_sent = Vec::new();
    for _ in 0..500 {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            half_sent.push(stream);
        }
    }
    let threads_during = status_field(pid, "Threads:");
    std::thread::sleep(Duration::from_secs(5));
    drop(half_sent);

    // 3. Byte-at-a-time clients (slowloris): 64 of them, one byte each every 300 ms for 4 s.
    let mut slow: Vec<TcpStream> = (0..64)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    let slow_started = Instant::now();
    let mut at = 0;
    while slow_started.elapsed() < Duration::from_secs(4) {
        for stream in &mut slow {
            let _ = stream.write_all(&request[at % request.len()..][..1]);
        }
        at += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    // Cut off by the head's read timeout (2 s), long before they finished.
    for stream in &mut slow {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut byte = [0u8; 1];
        let closed = matches!(stream.read(&mut byte), Ok(0))
            || stream.write_all(b"y").and_then(|_| stream.flush()).is_err();
        assert!(closed, "a byte-at-a-time client was still served after 4 s");
    }
    drop(slow);

    // 4. Oversized heads and bodies: refused, not read whole.
    let long_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let answer = exchange(addr, long_header.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.is_empty(),
        "a 1 MiB header: {:?}",
        &answer[..answer.len().min(200)]
    );
    let many_headers: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let answer = exchange(
        addr,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.is_empty(),
        "200 headers: {answer:?}"
    );
    let answer = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nbbbbbbbb",
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "a POST: {answer:?}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    // Many requests on one connection: the 100th says it closes, and it does.
    let hundred = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(150);
    let answer = exchange(addr, &hundred);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 100, "{answer}");

    let report = prober.finish();
    let rss_after = status_field(pid, "VmRSS:");
    let threads_after = status_field(pid, "Threads:");
    eprintln!(
        "bytes written by the pipelining clients: {sent}; RSS before {rss_before} KiB, peak {} KiB, after \
         {rss_after} KiB; threads before {threads_before}, during {threads_during}, after \
         {threads_after}; {} probes, slowest {:?}",
        report.peak_rss_kib, report.probes, report.slowest
    );
    assert!(
        report.failures.is_empty(),
        "/healthz failed {} of {} times: {:?}",
        report.failures.len(),
        report.probes,
        report.failures
    );
    assert!(
        report.probes >= 100,
        "only {} probes ran: the prober itself was held up",
        report.probes
    );
    let peak = report.peak_rss_kib.max(rss_after);
    assert!(
        peak <= rss_before + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {rss_before} KiB to {peak} KiB"
    );
    // The worker's own blocking pool (lag queries) may add a thread or two meanwhile; the
    // endpoint adds none (tiny_http: one per connection).
    assert!(
        threads_during <= threads_before + 4 && threads_after <= threads_before + 4,
        "threads {threads_before} → {threads_during} → {threads_after}"
    );
    // And the endpoint still does its job.
    let ready = kafka::http_get(addr, "/readyz");
    assert!(
        ready.starts_with("HTTP/1.0 200"),
        "{ready}\n{}",
        std::fs::read_to_string(dir.path().join("worker.log")).unwrap()
    );
    assert!(kafka::http_get(addr, "/metrics").contains("# TYPE pseudonymizer_"));
    assert!(kafka::http_get(addr, "/nothing").starts_with("HTTP/1.0 404"));
}
