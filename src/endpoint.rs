//! The worker's HTTP endpoint: `/metrics`, `/healthz` and `/readyz`, built to stay up while
//! anyone who can reach the port misbehaves.
//!
//! It is hyper's HTTP/1 server on a runtime of its own (one thread, `metrics`), so neither a
//! busy worker nor a hostile client delays the kubelet's probes. Every resource a client can
//! make it hold is bounded:
//!
//! | what | bound |
//! | --- | --- |
//! | connections at once | [`MAX_CONNECTIONS`]; one more closes the oldest, so a new probe is served |
//! | handshakes waiting to be accepted | [`LISTEN_BACKLOG`] (the kernel's `somaxconn` caps it) |
//! | a request's head | [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] (431 above), read within [`HEAD_READ_TIMEOUT`] |
//! | a request's body | never read: a request with one gets its answer and the connection is closed |
//! | requests on one connection | [`MAX_REQUESTS_PER_CONNECTION`], the last answered with `connection: close` |
//! | a connection's life | [`CONNECTION_LIFETIME`], then it is closed, whether or not the client reads |
//! | pipelined requests | one answered at a time; a client that does not read its answers stops being read (the socket's buffers fill), so nothing piles up here |
//! | `/metrics` rendering | at most once per [`RENDER_EVERY`], shared by every client |
//!
//! So the memory a client can make the worker hold is about `MAX_CONNECTIONS` × (8 KiB of read
//! buffer + the head of one answer + a task), plus one shared metrics page: about 2 MiB
//! (docs/deploy.md, "Health and metrics port"; tests/health_port.rs repeats the attacks).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::AbortHandle;

use crate::metrics::Metrics;

/// Connections served at once. Prometheus and the kubelet need a handful; the rest is
/// headroom, so that a flood of new connections must be this large to push a probe out in the
/// moment between its connect and its request.
pub const MAX_CONNECTIONS: usize = 128;
/// A request's line and headers, in bytes (hyper's smallest buffer).
pub const MAX_HEAD_BYTES: usize = 8192;
/// Header lines in one request.
pub const MAX_HEADERS: usize = 32;
/// A request's head must have arrived this long after the server began to read it.
pub const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests answered on one connection.
pub const MAX_REQUESTS_PER_CONNECTION: u64 = 100;
/// How long one connection may live, however it is used.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How often `/metrics` is rendered at most: clients within this interval share one page.
pub const RENDER_EVERY: Duration = Duration::from_secs(1);

/// Binds `listen` and serves from a thread of its own; returns the bound address (useful
/// with port 0). Served once per process: a worker that reconnects (new secrets) keeps its
/// endpoint, and a second call returns the first address.
pub fn serve(metrics: &Arc<Metrics>, listen: &str) -> std::io::Result<SocketAddr> {
    let mut serving = metrics.serving();
    if let Some(addr) = *serving {
        return Ok(addr);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _in_runtime = runtime.enter();
        bind(listen)?
    };
    let addr = listener.local_addr()?;
    let endpoint = Arc::new(Endpoint {
        metrics: metrics.clone(),
        page: Mutex::new(None),
    });
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept_loop(listener, endpoint)))?;
    *serving = Some(addr);
    Ok(addr)
}

/// How many finished handshakes may wait for `accept` (the kernel caps it at `somaxconn`):
/// std's 128 let a connection flood push a probe's SYN out.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `listen` (`host:port`, the first address it resolves to) with [`LISTEN_BACKLOG`].
fn bind(listen: &str) -> std::io::Result<tokio::net::TcpListener> {
    use std::net::ToSocketAddrs as _;
    let addr = listen.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "resolves to no address")
    })?;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What every connection shares: the metrics, and the last page rendered.
struct Endpoint {
    metrics: Arc<Metrics>,
    page: Mutex<Option<(Instant, Bytes)>>,
}

impl Endpoint {
    /// The metrics page, rendered again only when the last one is older than [`RENDER_EVERY`].
    fn metrics_page(&self) -> Bytes {
        let mut page = self.page.lock().unwrap_or_else(|e| e.into_inner());
        match &*page {
            Some((at, body)) if at.elapsed() < RENDER_EVERY => body.clone(),
            _ => {
                let body = Bytes::from(self.metrics.render());
                *page = Some((Instant::now(), body.clone()));
                body
            }
        }
    }

    fn answer(&self, request: &Request<Incoming>, served: u64) -> Response<Full<Bytes>> {
        let (status, body) = match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, self.metrics_page()),
            (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, Bytes::from("ok\n")),
            (&Method::GET | &Method::HEAD, "/readyz") if self.metrics.is_ready() => {
                (StatusCode::OK, Bytes::from("ready\n"))
            }
            (&Method::GET | &Method::HEAD, "/readyz") => {
                (StatusCode::SERVICE_UNAVAILABLE, Bytes::from("not ready\n"))
            }
            (&Method::GET | &Method::HEAD, _) => {
                (StatusCode::NOT_FOUND, Bytes::from("not found\n"))
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from("only GET and HEAD\n"),
            ),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let content_type = if request.uri().path() == "/metrics" && status == StatusCode::OK {
            "text/plain; version=0.0.4; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        // A body is never read, so the connection cannot carry another request after one;
        // and a connection's last request says so.
        let has_body = request.headers().contains_key(header::CONTENT_LENGTH)
            || request.headers().contains_key(header::TRANSFER_ENCODING);
        if has_body || served >= MAX_REQUESTS_PER_CONNECTION {
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// The connections being served, oldest first: over [`MAX_CONNECTIONS`], the oldest goes.
#[derive(Default)]
struct Connections {
    open: Mutex<VecDeque<(u64, AbortHandle)>>,
    next_id: AtomicU64,
}

impl Connections {
    /// Makes room for one more, closing the oldest when full; returns the new one's id.
    fn admit(&self) -> u64 {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while open.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest)) = open.pop_front() {
                oldest.abort();
            }
        }
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn opened(&self, id: u64, handle: AbortHandle) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.push_back((id, handle));
    }

    fn closed(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(other, _)| *other != id);
    }
}

/// Removes a connection from [`Connections`] however its task ends (finished or aborted).
struct Slot {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.closed(self.id);
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, endpoint: Arc<Endpoint>) {
    let connections = Arc::new(Connections::default());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        // Answers are queued by reference (the shared page is not copied per client).
        .writev(true)
        .half_close(false);
    let http = Arc::new(http);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(%error, "the metrics endpoint could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = connections.admit();
        let slot = Slot {
            connections: connections.clone(),
            id,
        };
        let (endpoint, http) = (endpoint.clone(), http.clone());
        let task = tokio::spawn(async move {
            let _slot = slot;
            let served = Arc::new(AtomicU64::new(0));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                let response = endpoint.answer(&request, n);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            // Errors here are the client's (a bad request, a reset): nothing to report.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
        // Before the loop awaits again, so before the task can run (one thread): its slot is
        // listed before it can be removed.
        connections.opened(id, task.abort_handle());
        // Let the new connection read its request before the next is accepted: a probe is
        // answered at once, not after a backlog of others.
        tokio::task::yield_now().await;
    }
}
