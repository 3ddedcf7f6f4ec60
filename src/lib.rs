//! pseudonymizer: replaces phone numbers, IP addresses and identifiers in call and message
//! metadata events with keyed pseudonyms, seals the content of communications with
//! AES-256-GCM, and copies everything else unchanged.
//!
//! Data flows one way: Avro bytes in → the compiled [`plan::Plan`] of the writer schema →
//! [`transform::Engine::transform`] → Avro bytes out; for a schemaless JSON pipeline
//! (`format = "json"`), a JSON object in → the key tree of its [`plan::json::JsonPlan`] →
//! [`transform::Engine::transform_json`] → a JSON object out (for `format = "json-schema"` the
//! same, behind Confluent's 5-byte framing, the writer's JSON Schema first checked against the
//! rules by [`plan::json_schema`]); for `format = "protobuf"`, a message decoded by its
//! `.proto` ([`plan::protobuf`]) and walked through its JSON mapping by the same key tree, then
//! written as a message of the derived schema ([`transform::protobuf`]). The transform is a pure function of
//! (event bytes, rules, keys) with no I/O; file mode and the CLI own all I/O.
//!
//! # Layout
//!
//! - [`keys`]: the keyring file (spec §1), optionally sealed under a key-encryption key or
//!   with each secret wrapped by a KMS key, its zeroized secrets, the working keys derived
//!   from them with HKDF (spec §2), and the rotation policy.
//! - [`kms`]: key management services, below [`keys`]: the two-call KMS interface (wrap and
//!   unwrap under an encryption context) and AWS KMS through the AWS SDK.
//! - [`phone`]: phone numbers to E.164 as Google's libphonenumber reads them: a fast path for
//!   the common shapes on the parser's own metadata, the thread's recent answers, the full parse.
//! - [`class`]: token classes (phone, ip, email, id, id.<role>, the -raw classes), below both
//!   [`phone`] and [`token`].
//! - [`token`]: canonical forms (phones through [`phone`], IPs through [`ip`], e-mail) and the
//!   HMAC token (spec §3).
//! - [`ip`]: IP addresses parsed, written as dotted or RFC 5952 text, and truncated.
//! - [`cryptopan`]: prefix-preserving IP pseudonyms (spec §3, Crypto-PAn).
//! - [`geoip`]: the country of an IP address, from a local MaxMind DB file (`[geoip]`), for the
//!   `country` an IP rule derives.
//! - [`envelope`]: the AES-256-GCM envelope (spec §4) and its key type; depends on nothing
//!   of `keys`, which derives the keys and opens envelopes by key id ([`keys::KeySet::open`]).
//! - [`rules`]: actions and the per-path rules of one schema.
//! - [`config`]: the TOML configuration file.
//! - [`secret_file`]: which modes a secret file may have (owner-only, or group-read as
//!   Kubernetes Secret volumes are).
//! - [`secret_ref`]: `${file:…}` and `${env:…}` references in the config, and which librdkafka
//!   properties are secrets.
//! - [`connect`]: the Kafka connection every client shares (TLS, SASL, properties) and the
//!   reporting of connection failures.
//! - [`plan`]: compiles rules against a writer schema into a transform program and the derived
//!   output schema, reporting every offending path at once (the schema walk, value shapes and
//!   region-field paths each in a file of their own); for JSON, the key tree of the rules
//!   (`plan::json`) and a JSON Schema checked against it with its output schema
//!   (`plan::json_schema`); for Protobuf, a `.proto` compiled (protox), its message checked
//!   against the same tree and the derived `.proto` written (`plan::protobuf`).
//! - [`transform`]: the engine: the fast binary walk and the `Value`-based reference path; the
//!   JSON walk; Protobuf messages to and from their JSON mapping (`transform::protobuf`).
//! - [`hardening`]: what a process holding keys does first: core dumps off, the KEK out of
//!   its environment.
//! - [`generate`]: synthetic events for demos, tests and benchmarks.
//! - [`hostile`]: the checks the fuzz targets run on arbitrary bytes (and `cargo test` replays).
//! - [`fsio`]: files in and out for every command: bounded reads of regular files only, and
//!   outputs written to a temporary beside the target and renamed over it, or not at all.
//! - [`file`]: Avro container files in and out (`transform`, `decrypt`, `show`).
//! - [`jsonl`]: JSON lines in and out, for `format = "json"` pipelines (`transform --pipeline`).
//! - [`registry`]: the Confluent-compatible schema registry client (writer schemas by id,
//!   registering derived schemas).
//! - [`worker`]: the Kafka stream worker: routing (by static schema id, or by record name
//!   through the registry), the at-least-once loop (delivery reports by ticket, not a future
//!   per record; transform threads, one per partition's records) and the exactly-once loop,
//!   the producers' polling thread and pre-commit flush (without rdkafka's spin and 100 ms steps),
//!   the dead-letter topic, live keyring reload, and the health signals (lag, stalls, records
//!   deleted before they were read).
//! - [`metrics`]: Prometheus metrics and what the health endpoints say.
//! - [`endpoint`]: the HTTP server of `/metrics`, `/healthz`, `/readyz`, bounded against
//!   hostile clients.
//! - [`demo`]: the README's main command, on an in-process cluster.
//! - [`bench`]: the end-to-end throughput benchmark on a broker: the transform, a pass-through
//!   copy through the same worker, and librdkafka's own copy (the floor).
//! - [`audit`]: the re-identification audit log of `decrypt` and `lookup`.
//! - [`subjects`]: a person's rights in the stream: subject ids under the keyring's subject
//!   key, the subject registry and erasure notices (two compacted topics), the table a worker
//!   keeps of the registry, and the gate the transform asks about each identifier.
//! - [`risk`]: re-identification risk measured live: k-anonymity over a sliding window of a
//!   pipeline's output, grouped by the quasi-identifier fields its config names.
//! - [`cli`]: the command line (`keys` and `run` in files of their own).

pub mod audit;
pub mod bench;
pub mod class;
pub mod cli;
pub mod config;
pub mod connect;
pub mod cryptopan;
pub mod demo;
pub mod endpoint;
pub mod envelope;
pub mod file;
pub mod fsio;
pub mod generate;
pub mod geoip;
pub mod hardening;
pub mod hostile;
pub mod ip;
pub mod jsonl;
pub mod keys;
pub mod kms;
pub mod metrics;
pub mod phone;
pub mod plan;
pub mod registry;
pub mod risk;
pub mod rules;
pub mod secret_file;
pub mod secret_ref;
pub mod subjects;
pub mod token;
pub mod transform;
pub mod worker;
