//! The test suite's own schema registry on loopback: no registry server (Confluent, Karapace,
//! Apicurio) installs on these machines, so this one answers the subset of the Confluent REST
//! API the worker uses, as the real one does: the same paths, status codes, error bodies
//! (`error_code` 40401, 40403, 409, 42201, 401) and content type
//! `application/vnd.schemaregistry.v1+json`.
//!
//! - `GET /schemas/ids/{id}` → `{"schema": "..."}` (`schemaType` omitted for Avro, as the real
//!   one does), or 404 with 40403;
//! - `POST /subjects/{subject}/versions` with `{"schema": "...", "schemaType"?: "..."}` → `{"id": N}`;
//!   the same schema (by Avro canonical form, or a JSON schema by its parsed value) under any
//!   subject gets the same id; a schema
//!   that does not parse is 422 with 42201; a subject set to refuse new versions answers 409
//!   (what a compatibility check failure answers);
//! - `GET /subjects/{subject}/versions/latest` and `…/versions/{n}` → `{"subject", "version",
//!   "id", "schema"}`, or 404 with 40401 (no subject) / 40402 (no such version);
//! - `GET /subjects/{subject}/versions` → `[1, 2, …]`, or 404 with 40401;
//! - a schema registered with `references` (Protobuf imports: `{"name", "subject",
//!   "version"}`) is served with them;
//! - `POST /subjects/{subject}` with `{"schema": "..."}` (is it registered there?) →
//!   `{"subject", "version", "id", "schema"}`, or 404 with 40401 / 40403.
//!
//! [`TestRegistry::answer_503`] makes it answer every request 503, as a registry behind a load
//! balancer does when no instance can serve.
//! [`TestRegistry::down`] closes the listening socket (connections are refused) until
//! [`TestRegistry::up`] listens again on the same port.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use apache_avro::Schema;
use serde_json::json;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Default)]
struct State {
    /// Ids start after this: each registry of a test process gives out ids of its own, so
    /// tests running side by side never name the same id (in log lines, say).
    base: u32,
    /// Schema text and kind by id (id = base + index + 1).
    schemas: Vec<(String, String)>,
    /// Canonical form → id.
    by_canonical: HashMap<String, u32>,
    /// Subject → its versions' ids.
    subjects: HashMap<String, Vec<u32>>,
    /// Subjects that refuse any new version with 409.
    refusing: HashSet<String>,
    /// The `references` a schema was registered with (Protobuf imports), by id.
    references: HashMap<u32, serde_json::Value>,
    /// Raw answers served instead of a stored schema (bad answers).
    raw_answers: HashMap<u32, String>,
    /// `GET /schemas/ids/{id}` requests, by id.
    fetches: HashMap<u32, usize>,
    /// The `Authorization` header every request must carry, if any.
    authorization: Option<String>,
    /// Answer every request 503 (a registry up but unable to serve, behind a load balancer).
    unavailable: bool,
}

/// A schema registry on loopback for one test.
pub struct TestRegistry {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    running: Option<(Arc<tiny_http::Server>, JoinHandle<()>)>,
}

impl TestRegistry {
    /// Starts on a free loopback port.
    pub fn start() -> Self {
        static NEXT_BASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let state = State {
            base: NEXT_BASE.fetch_add(1000, std::sync::atomic::Ordering::Relaxed),
            ..State::default()
        };
        let mut registry = TestRegistry {
            state: Arc::new(Mutex::new(state)),
            addr: "127.0.0.1:0".parse().unwrap(),
            running: None,
        };
        registry.up();
        registry
    }

    /// The base URL for `[registry] urls`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requires `Authorization: <value>` on every request (401 otherwise).
    pub fn require_authorization(&self, value: &str) {
        self.state().authorization = Some(value.to_owned());
    }

    /// Registers a schema as a producer's serializer would; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        self.register_as(subject, schema, "AVRO")
    }

    /// [`TestRegistry::register`] for a schema of `kind` (`AVRO`, `JSON`).
    /// Registers a schema with `references` (`[{"name", "subject", "version"}]`), as a
    /// Protobuf schema that imports other subjects' files is.
    pub fn register_with_references(
        &self,
        subject: &str,
        schema: &str,
        kind: &str,
        references: serde_json::Value,
    ) -> u32 {
        let id = self.register_as(subject, schema, kind);
        self.state().references.insert(id, references);
        id
    }

    pub fn register_as(&self, subject: &str, schema: &str, kind: &str) -> u32 {
        match register(&mut self.state(), subject, schema, kind) {
            Ok(id) => id,
            Err((status, body)) => panic!("test schema refused: {status} {body}"),
        }
    }

    /// The schema text of an id.
    pub fn schema(&self, id: u32) -> Option<String> {
        let state = self.state();
        state.stored(id).map(|(text, _)| text.clone())
    }

    /// The ids registered under a subject, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.state()
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    /// How many times the schema of `id` was fetched.
    pub fn fetches(&self, id: u32) -> usize {
        self.state().fetches.get(&id).copied().unwrap_or(0)
    }

    /// Serves `body` (status 200) for `GET /schemas/ids/{id}`.
    pub fn answer_raw(&self, id: u32, body: &str) {
        self.state().raw_answers.insert(id, body.to_owned());
    }

    /// Answers every request 503 (`true`) or serves again (`false`).
    pub fn answer_503(&self, on: bool) {
        self.state().unavailable = on;
    }

    /// Makes a subject answer 409 to any new version.
    pub fn refuse_new_versions(&self, subject: &str) {
        self.state().refusing.insert(subject.to_owned());
    }

    /// Stops listening: new connections are refused.
    pub fn down(&mut self) {
        if let Some((server, thread)) = self.running.take() {
            server.unblock();
            thread.join().unwrap();
            drop(server);
        }
    }

    /// Listens again, on the same port.
    pub fn up(&mut self) {
        assert!(self.running.is_none(), "already up");
        let mut tries = 0;
        let server = loop {
            match tiny_http::Server::http(self.addr) {
                Ok(server) => break Arc::new(server),
                Err(_) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("test registry cannot listen on {}: {e}", self.addr),
            }
        };
        self.addr = server.server_addr().to_ip().unwrap();
        let (state, serving) = (self.state.clone(), server.clone());
        let thread = std::thread::spawn(move || {
            for mut request in serving.incoming_requests() {
                let (status, body) = answer(&state, &mut request);
                let header = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE).unwrap();
                let _ = request.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header),
                );
            }
        });
        self.running = Some((server, thread));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.down();
    }
}

impl State {
    /// The schema text and kind of an id.
    fn stored(&self, id: u32) -> Option<&(String, String)> {
        let index = id.checked_sub(self.base)?.checked_sub(1)?;
        self.schemas.get(index as usize)
    }
}

fn error(status: u16, code: i64, message: &str) -> (u16, String) {
    (
        status,
        json!({ "error_code": code, "message": message }).to_string(),
    )
}

/// One request → (status, body).
fn answer(state: &Mutex<State>, request: &mut tiny_http::Request) -> (u16, String) {
    let mut state = state.lock().unwrap();
    if state.unavailable {
        return error(503, 50301, "Service Unavailable");
    }
    if let Some(wanted) = &state.authorization {
        let given = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_owned());
        if given.as_deref() != Some(wanted.as_str()) {
            return error(401, 401, "Unauthorized");
        }
    }
    // Query parameters (`?normalize=false`, `?subject=…`, as Confluent's clients send) do not
    // change the answers this registry gives.
    let url = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let method = request.method().as_str().to_owned();
    let parts: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["schemas", "ids", id]) => {
            let Ok(id) = id.parse::<u32>() else {
                return error(404, 40403, "Schema not found");
            };
            *state.fetches.entry(id).or_default() += 1;
            if let Some(raw) = state.raw_answers.get(&id) {
                return (200, raw.clone());
            }
            match state.stored(id) {
                Some((text, kind)) if kind == "AVRO" => {
                    (200, json!({ "schema": text }).to_string())
                }
                Some((text, kind)) => {
                    let mut answer = json!({ "schema": text, "schemaType": kind });
                    if let Some(references) = state.references.get(&id) {
                        answer["references"] = references.clone();
                    }
                    (200, answer.to_string())
                }
                None => error(404, 40403, &format!("Schema {id} not found")),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let subject = decode(subject);
            let mut body = String::new();
            if request.as_reader().read_to_string(&mut body).is_err() {
                return error(422, 42201, "Invalid schema: unreadable body");
            }
            let Ok(request) = serde_json::from_str::<serde_json::Value>(&body) else {
                return error(422, 42201, "Invalid schema: the body is not JSON");
            };
            let Some(schema) = request.get("schema").and_then(|s| s.as_str()) else {
                return error(422, 42201, "Invalid schema: no schema field");
            };
            let kind = request
                .get("schemaType")
                .and_then(|s| s.as_str())
                .unwrap_or("AVRO");
            let references = request
                .get("references")
                .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
                .cloned();
            match register(&mut state, &subject, schema, kind) {
                Ok(id) => {
                    if let Some(references) = references {
                        state.references.insert(id, references);
                    }
                    (200, json!({ "id": id }).to_string())
                }
                Err(refusal) => refusal,
            }
        }
        ("GET", ["subjects", subject, "versions"]) => {
            let subject = decode(subject);
            match state.subjects.get(&subject) {
                Some(ids) => (200, json!((1..=ids.len()).collect::<Vec<_>>()).to_string()),
                None => error(404, 40401, &format!("Subject '{subject}' not found.")),
            }
        }
        ("POST", ["subjects", subject]) => {
            let subject = decode(subject);
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            let request = serde_json::from_str::<serde_json::Value>(&body).ok();
            let schema = request
                .as_ref()
                .and_then(|r| r.get("schema").and_then(|s| s.as_str()).map(str::to_owned));
            let kind = request
                .as_ref()
                .and_then(|r| r.get("schemaType"))
                .and_then(|t| t.as_str())
                .unwrap_or("AVRO")
                .to_owned();
            let is_json = kind == "JSON";
            let Some(ids) = state.subjects.get(&subject) else {
                return error(404, 40401, &format!("Subject '{subject}' not found."));
            };
            let id = if is_json {
                // A JSON schema: the same parsed value under this subject.
                let wanted = schema
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
                ids.iter().copied().find(|&id| {
                    state.stored(id).is_some_and(|(text, kind)| {
                        kind == "JSON" && serde_json::from_str(text).ok() == wanted
                    })
                })
            } else if kind != "AVRO" {
                // Other kinds (PROTOBUF) by their text, as registered.
                ids.iter().copied().find(|&id| {
                    state
                        .stored(id)
                        .is_some_and(|(text, k)| *k == kind && Some(text) == schema.as_ref())
                })
            } else {
                schema
                    .as_deref()
                    .and_then(|s| Schema::parse_str(s).ok())
                    .and_then(|s| state.by_canonical.get(&s.canonical_form()).copied())
            };
            let found = id.and_then(|id| ids.iter().position(|&i| i == id).map(|v| (v + 1, id)));
            match found {
                Some((version, id)) => (
                    200,
                    json!({
                        "subject": subject,
                        "version": version,
                        "id": id,
                        "schema": state.stored(id).map(|(text, _)| text.as_str()),
                    })
                    .to_string(),
                ),
                None => error(404, 40403, "Schema not found"),
            }
        }
        ("GET", ["subjects", subject, "versions", version]) => {
            let subject = decode(subject);
            let Some(ids) = state.subjects.get(&subject) else {
                return error(404, 40401, &format!("Subject '{subject}' not found."));
            };
            let chosen = match *version {
                "latest" => ids.last().map(|id| (ids.len(), *id)),
                n => n
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| ids.get(n.wrapping_sub(1)).map(|id| (n, *id))),
            };
            match chosen {
                Some((version, id)) => {
                    let mut answer = json!({
                        "subject": subject,
                        "version": version,
                        "id": id,
                        "schema": state.stored(id).map(|(text, _)| text.as_str()),
                    });
                    if let Some((_, kind)) = state.stored(id).filter(|(_, k)| k != "AVRO") {
                        answer["schemaType"] = kind.as_str().into();
                    }
                    if let Some(references) = state.references.get(&id) {
                        answer["references"] = references.clone();
                    }
                    (200, answer.to_string())
                }
                None => error(404, 40402, &format!("Version {version} not found.")),
            }
        }
        _ => error(404, 404, "HTTP 404 Not Found"),
    }
}

/// What the registry answers a new version its compatibility check refuses.
fn incompatible() -> (u16, String) {
    error(
        409,
        409,
        "Schema being registered is incompatible with an earlier schema for subject",
    )
}

fn register(
    state: &mut State,
    subject: &str,
    schema: &str,
    kind: &str,
) -> Result<u32, (u16, String)> {
    if kind != "AVRO" {
        // The suite stores other kinds as given, to serve them back: the same text (JSON by
        // its parsed value) gets the same id, as the real registry does.
        if kind == "JSON" && serde_json::from_str::<serde_json::Value>(schema).is_err() {
            return Err(error(422, 42201, "Invalid schema: not JSON"));
        }
        let same = |(text, k): &(String, String)| {
            k == kind
                && (text == schema
                    || (kind == "JSON"
                        && serde_json::from_str::<serde_json::Value>(text).ok()
                            == serde_json::from_str::<serde_json::Value>(schema).ok()))
        };
        let id = match state.schemas.iter().position(same) {
            Some(index) => state.base + index as u32 + 1,
            None => {
                if state.refusing.contains(subject) {
                    return Err(incompatible());
                }
                state.schemas.push((schema.to_owned(), kind.to_owned()));
                state.base + state.schemas.len() as u32
            }
        };
        let versions = state.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        return Ok(id);
    }
    let parsed = Schema::parse_str(schema)
        .map_err(|e| error(422, 42201, &format!("Invalid schema: {e}")))?;
    let canonical = parsed.canonical_form();
    let id = match state.by_canonical.get(&canonical) {
        Some(&id) => id,
        None => {
            if state.refusing.contains(subject) {
                return Err(incompatible());
            }
            state.schemas.push((schema.to_owned(), kind.to_owned()));
            let id = state.base + state.schemas.len() as u32;
            state.by_canonical.insert(canonical, id);
            id
        }
    };
    let versions = state.subjects.entry(subject.to_owned()).or_default();
    if !versions.contains(&id) {
        if state.refusing.contains(subject) {
            return Err(incompatible());
        }
        versions.push(id);
    }
    Ok(id)
}

/// Undoes percent-encoding in a path segment.
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
