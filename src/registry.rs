//! A client of the Confluent Schema Registry REST API (also served by Karapace, Apicurio's
//! ccompat API and Redpanda): the three calls the worker needs.
//!
//! - `GET /schemas/ids/{id}`: a writer schema by the id in a record's header;
//! - `POST /subjects/{subject}/versions`: registers a derived output schema, answers its id
//!   (registering the same schema again answers the same id);
//! - `GET /subjects/{subject}/versions/latest`: what `check` compiles the rules against.
//!
//! Answers are sorted into what the caller must do with them: [`RegistryError::Unavailable`]
//! (no answer, a server error, or credentials refused) means "try again later", never "the data
//! is bad"; [`RegistryError::Refused`] is the registry's definite answer (`error_code` 40401,
//! 40403, 409, 42201, …). Credentials live in a zeroized string that is only ever written into
//! the `Authorization` header; no error, log line or `Debug` output carries them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::{RegistryAuth, RegistryConfig};

/// The registry's content type (requests and answers).
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Error codes of the Confluent API that the worker tells apart.
pub mod codes {
    /// Subject not found.
    pub const SUBJECT_NOT_FOUND: i64 = 40401;
    /// Version not found.
    pub const VERSION_NOT_FOUND: i64 = 40402;
    /// Schema (id) not found.
    pub const SCHEMA_NOT_FOUND: i64 = 40403;
    /// The schema is incompatible with the subject's earlier versions.
    pub const INCOMPATIBLE: i64 = 409;
    /// The schema is not valid.
    pub const INVALID_SCHEMA: i64 = 42201;
}

/// Why a registry call gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Try again later: no registry answered, one answered 5xx, or it refused the credentials
    /// (an operator's fix, not bad data).
    #[error("no schema registry answered: {0}")]
    Unavailable(String),
    /// The registry's definite answer to this request.
    #[error("the schema registry answered {status}, error_code {code}: {message}")]
    Refused {
        status: u16,
        code: i64,
        message: String,
    },
    /// An answer that is not what the API defines (not JSON, fields missing).
    #[error("the schema registry's answer is not what its API defines: {0}")]
    BadAnswer(String),
    /// The client could not be set up (credentials or CA file).
    #[error("[registry] {0}")]
    Setup(String),
}

impl RegistryError {
    /// The registry's `error_code`, when it gave a definite answer.
    pub fn code(&self) -> Option<i64> {
        match self {
            RegistryError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A schema as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    pub id: u32,
    /// The schema text (Avro JSON for Avro schemas).
    pub schema: String,
    /// `AVRO` (the API's default when absent), `JSON` or `PROTOBUF`.
    pub schema_type: String,
    /// Whether it refers to schemas of other subjects (read for Protobuf imports only).
    pub has_references: bool,
    /// Its references: (the name it imports it by, subject, version).
    pub references: Vec<(String, String, i64)>,
    /// The subject version, for `versions/latest`.
    pub version: Option<i64>,
}

/// A registry URL as messages show it: scheme, host and port only. Whatever a URL holds besides
/// (a user and password before an `@`, a path, a query) is left out, whatever the scheme's
/// case: the config refuses credentials in a URL, and this is the second lock.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => (url[..at].to_ascii_lowercase(), &url[at + 3..]),
        None => return "(a registry url)".to_owned(),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let scheme: String = scheme
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let host: String = host.chars().take(80).collect();
    format!("{scheme}://{host}")
}

/// A connection to the registry, shared by every thread.
#[derive(Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    urls: Arc<[String]>,
    authorization: Option<Arc<Zeroizing<String>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field(
                "urls",
                &self.urls.iter().map(|u| shown_url(u)).collect::<Vec<_>>(),
            )
            .field("authorization", &self.authorization.as_ref().map(|_| ".."))
            .finish()
    }
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
    id: Option<u32>,
    version: Option<i64>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: i64,
    #[serde(default)]
    message: String,
}

impl RegistryClient {
    /// Builds the client: reads the credentials and the CA file. Nothing is requested yet.
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let credentials = read_credentials(config)?;
        let authorization = match (config.auth, credentials) {
            (RegistryAuth::None, _) | (_, None) => None,
            (RegistryAuth::Basic, Some(c)) => {
                use base64::Engine as _;
                if !c.contains(':') {
                    return Err(RegistryError::Setup(
                        "basic credentials must be \"user:password\"".into(),
                    ));
                }
                let encoded = base64::engine::general_purpose::STANDARD.encode(c.as_bytes());
                Some(Arc::new(Zeroizing::new(format!("Basic {encoded}"))))
            }
            (RegistryAuth::Bearer, Some(c)) => {
                Some(Arc::new(Zeroizing::new(format!("Bearer {}", c.as_str()))))
            }
        };
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(config.timeout_secs)))
            .http_status_as_error(false)
            .user_agent(concat!("pseudonymizer/", env!("CARGO_PKG_VERSION")));
        if config.ca_file.is_some() || config.cert_file.is_some() {
            builder = builder.tls_config(tls_config(config)?);
        }
        Ok(RegistryClient {
            agent: builder.build().into(),
            urls: config
                .urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            authorization,
        })
    }

    /// The writer schema with this id (`GET /schemas/ids/{id}`).
    pub fn schema_by_id(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        let body = self.request("GET", &format!("/schemas/ids/{id}"), None)?;
        let answer: SchemaAnswer = parse(&body)?;
        Ok(registered(answer, Some(id)))
    }

    /// The latest version of a subject (`GET /subjects/{subject}/versions/latest`).
    pub fn latest(&self, subject: &str) -> Result<RegisteredSchema, RegistryError> {
        let path = format!("/subjects/{}/versions/latest", encode_path(subject));
        let answer: SchemaAnswer = parse(&self.request("GET", &path, None)?)?;
        Ok(registered(answer, None))
    }

    /// The id of `schema` under `subject` if it is registered there (`POST /subjects/{subject}`);
    /// `None` when the subject or the schema is not found.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        self.lookup_as(subject, schema, "AVRO")
    }

    /// [`RegistryClient::lookup`] for a schema of `schema_type` (`AVRO`, `JSON`).
    pub fn lookup_as(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<Option<u32>, RegistryError> {
        let path = format!("/subjects/{}", encode_path(subject));
        let body = serde_json::json!({ "schema": schema, "schemaType": schema_type }).to_string();
        match self.request("POST", &path, Some(&body)) {
            Ok(answer) => Ok(Some(parse::<IdAnswer>(&answer)?.id)),
            Err(e)
                if matches!(
                    e.code(),
                    Some(codes::SUBJECT_NOT_FOUND | codes::SCHEMA_NOT_FOUND)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The version numbers of a subject, oldest first (`GET /subjects/{subject}/versions`).
    pub fn versions(&self, subject: &str) -> Result<Vec<i64>, RegistryError> {
        let path = format!("/subjects/{}/versions", encode_path(subject));
        parse(&self.request("GET", &path, None)?)
    }

    /// One version of a subject (`GET /subjects/{subject}/versions/{version}`).
    pub fn version(&self, subject: &str, version: i64) -> Result<RegisteredSchema, RegistryError> {
        let path = format!("/subjects/{}/versions/{version}", encode_path(subject));
        let answer: SchemaAnswer = parse(&self.request("GET", &path, None)?)?;
        Ok(registered(answer, None))
    }

    /// Registers an Avro schema under a subject; answers its id (the existing id when the
    /// subject already has it).
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.register_as(subject, schema, "AVRO")
    }

    /// Registers a schema of `schema_type` (`AVRO`, `JSON`) under a subject; answers its id.
    pub fn register_as(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", encode_path(subject));
        let body = serde_json::json!({ "schema": schema, "schemaType": schema_type }).to_string();
        let answer: IdAnswer = parse(&self.request("POST", &path, Some(&body))?)?;
        Ok(answer.id)
    }

    /// One request, tried on each URL in turn while none answers.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<String, RegistryError> {
        let mut last = RegistryError::Unavailable("no url".into());
        for base_url in self.urls.iter() {
            let url = format!("{base_url}{path}");
            // What messages say of the URL: never its credentials, whatever its case.
            let base = shown_url(base_url);
            let result = match body {
                None => self.with_headers(self.agent.get(&url)).call(),
                Some(body) => self.with_headers_body(self.agent.post(&url)).send(body),
            };
            let mut response = match result {
                Ok(r) => r,
                Err(e) => {
                    // ureq's error names the host and the failure, never a header.
                    last = RegistryError::Unavailable(format!("{method} {base}: {e}"));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let text = response
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_to_string()
                .map_err(|e| RegistryError::Unavailable(format!("{method} {base}: {e}")));
            let text = match text {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match status {
                200..=299 => return Ok(text),
                401 | 403 => {
                    last = RegistryError::Unavailable(format!(
                        "{method} {base}: {status}: the registry refused the credentials"
                    ));
                }
                500..=599 => {
                    last = RegistryError::Unavailable(format!("{method} {base}: {status}"));
                }
                _ => {
                    let (code, message) = match serde_json::from_str::<ErrorAnswer>(&text) {
                        Ok(e) => (e.error_code, e.message),
                        Err(_) => (i64::from(status), "no error body".to_owned()),
                    };
                    return Err(RegistryError::Refused {
                        status,
                        code,
                        message,
                    });
                }
            }
        }
        Err(last)
    }

    fn with_headers(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let request = request.header("Accept", CONTENT_TYPE);
        match &self.authorization {
            Some(auth) => request.header("Authorization", auth.as_str()),
            None => request,
        }
    }

    fn with_headers_body(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = request
            .header("Accept", CONTENT_TYPE)
            .header("Content-Type", CONTENT_TYPE);
        match &self.authorization {
            Some(auth) => request.header("Authorization", auth.as_str()),
            None => request,
        }
    }
}

/// Parses a writer schema that came from outside (a registry answer: any producer allowed to
/// register schemas chooses it). apache-avro 0.21 panics, instead of returning an error, on
/// some invalid names (an enum or alias name outside Avro's name grammar; avro-rs issues 496
/// and 547, fixed in 0.22): such a panic is caught here and reported as an invalid schema, so
/// a hostile schema costs its own records (dead-lettered), never the worker.
pub fn parse_schema(text: &str) -> Result<apache_avro::Schema, String> {
    // The one parser entry point (config.rs): the panic caught, the message cut short.
    crate::config::parse_schema(text)
}

fn registered(answer: SchemaAnswer, id: Option<u32>) -> RegisteredSchema {
    RegisteredSchema {
        id: id.or(answer.id).unwrap_or_default(),
        schema: answer.schema,
        schema_type: answer.schema_type.unwrap_or_else(|| "AVRO".to_owned()),
        has_references: !answer.references.is_empty(),
        references: answer
            .references
            .iter()
            .filter_map(|r| {
                Some((
                    r.get("name")?.as_str()?.to_owned(),
                    r.get("subject")?.as_str()?.to_owned(),
                    r.get("version")?.as_i64()?,
                ))
            })
            .collect(),
        version: answer.version,
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, RegistryError> {
    serde_json::from_str(body).map_err(|e| RegistryError::BadAnswer(e.to_string()))
}

/// Percent-encodes a subject for a URL path (subjects may hold any character).
fn encode_path(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for byte in subject.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The credentials from the environment or a file (first line, trimmed).
fn read_credentials(config: &RegistryConfig) -> Result<Option<Zeroizing<String>>, RegistryError> {
    let text = if let Some(var) = &config.credentials_env {
        Zeroizing::new(
            std::env::var(var)
                .map_err(|_| RegistryError::Setup(format!("credentials_env: ${var} is not set")))?,
        )
    } else if let Some(file) = &config.credentials_file {
        // Bounded and regular files only: a wrong path (a FIFO, /dev/zero) cannot hang or
        // fill memory. A secret file: its mode is held to the one rule of every secret file.
        let bytes = crate::secret_file::read(file, "credentials_file", crate::fsio::SECRET_LIMIT)
            .map_err(|e| RegistryError::Setup(e.to_string()))?;
        Zeroizing::new(
            std::str::from_utf8(&bytes)
                .map(str::to_owned)
                .map_err(|_| {
                    RegistryError::Setup(format!(
                        "credentials_file {} is not UTF-8 text",
                        file.display()
                    ))
                })?,
        )
    } else {
        return Ok(None);
    };
    let line = Zeroizing::new(text.lines().next().unwrap_or_default().trim().to_owned());
    if line.is_empty() {
        return Err(RegistryError::Setup(
            "the registry credentials are empty".into(),
        ));
    }
    Ok(Some(line))
}

/// The certificates of a PEM file (at least one).
fn pem_certificates(
    what: &str,
    path: &Path,
) -> Result<Vec<ureq::tls::Certificate<'static>>, RegistryError> {
    let setup =
        |e: &dyn std::fmt::Display| RegistryError::Setup(format!("{what} {}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| setup(&e))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certificates.push(c),
            Ok(_) => {}
            Err(e) => return Err(setup(&e)),
        }
    }
    if certificates.is_empty() {
        return Err(setup(&"holds no certificate"));
    }
    Ok(certificates)
}

/// TLS that trusts exactly the CA certificates of `ca_file` (or the web's public roots), and
/// with `cert_file` and `key_file` shows a client certificate (mutual TLS).
fn tls_config(config: &RegistryConfig) -> Result<ureq::tls::TlsConfig, RegistryError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = &config.ca_file {
        let roots = pem_certificates("ca_file", ca)?;
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)));
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        let chain = pem_certificates("cert_file", cert)?;
        // The key's bytes are wiped once parsed; the error names the file, never its content.
        let pem = Zeroizing::new(
            std::fs::read(key)
                .map_err(|e| RegistryError::Setup(format!("key_file {}: {e}", key.display())))?,
        );
        let key = ureq::tls::PrivateKey::from_pem(&pem).map_err(|_| {
            RegistryError::Setup(format!(
                "key_file {} holds no unencrypted PEM private key",
                key.display()
            ))
        })?;
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    Ok(tls.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_percent_encoded_in_paths() {
        assert_eq!(encode_path("comms.raw-value"), "comms.raw-value");
        assert_eq!(encode_path("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn urls_are_shown_without_credentials_whatever_their_case() {
        for url in [
            "http://alice:s3cret@registry:8081",
            "HTTP://alice:s3cret@registry:8081/",
            "HttpS://alice:s3cret@registry:8081/apis?x=1",
            "https://a@b:s3cret@registry:8081#frag",
        ] {
            let shown = shown_url(url);
            assert!(
                !shown.contains("s3cret") && !shown.contains("alice"),
                "{shown}"
            );
            assert!(shown.ends_with("://registry:8081"), "{shown}");
        }
        assert_eq!(shown_url("no scheme s3cret"), "(a registry url)");
    }

    #[test]
    fn debug_never_shows_credentials() {
        std::env::set_var("PZ_TEST_REGISTRY_CREDENTIALS", "alice:s3cret-pw");
        let config: RegistryConfig = toml::from_str(
            "urls = [\"http://127.0.0.1:1\"]\nauth = \"basic\"\ncredentials_env = \"PZ_TEST_REGISTRY_CREDENTIALS\"",
        )
        .unwrap();
        let client = RegistryClient::new(&config).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("YWxpY2U6czNjcmV0LXB3"));
        // Nothing listens on port 1: the error says so without the credentials.
        let error = client.schema_by_id(1).unwrap_err();
        assert!(matches!(error, RegistryError::Unavailable(_)), "{error}");
        let text = format!("{error} {error:?}");
        assert!(
            !text.contains("s3cret") && !text.contains("YWxpY2U6"),
            "{text}"
        );
    }
}
