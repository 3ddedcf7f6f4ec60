//! The per-event transform against its baselines, in one run:
//! - `fast`: the production path (binary walk);
//! - `reference`: decode to apache-avro `Value`, rewrite, encode;
//! - `crypto_floor`: only the HMACs and AES-GCM seals the same event needs.
//!
//! Run: `cargo bench --bench transform`. Compare ratios within one run.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pseudonymizer::config::Config;
use pseudonymizer::envelope;
use pseudonymizer::generate::{typical_call, typical_message};
use pseudonymizer::keys::{KeyEntry, KeySet, KeyState, Keyring, Purpose, Secret};
use pseudonymizer::token::{token, TokenClass};
use pseudonymizer::transform::{ActiveKeys, Engine};

fn keys() -> KeySet {
    let entry = |id: &str, purpose| KeyEntry {
        id: id.to_owned(),
        purpose,
        state: KeyState::Active,
        created_at: "2026-11-24T10:00:00Z".to_owned(),
        secret: Some(Secret::generate()),
    };
    KeySet::from_keyring(
        &Keyring::from_entries(vec![
            entry("p-2026-11", Purpose::Pseudonym),
            entry("e-2026-11", Purpose::Encryption),
        ])
        .unwrap(),
    )
}

/// The crypto one event needs: a token per (class, canonical value), a seal per (path, plaintext).
fn floor(
    active: &ActiveKeys,
    tokens: &[(TokenClass, &str)],
    seals: &[(&str, &[u8])],
    out: &mut Vec<u8>,
) {
    let pkey = active.pseudonym.as_deref().unwrap();
    let skey = active.encryption.as_deref().unwrap();
    out.clear();
    for (class, value) in tokens {
        out.extend_from_slice(token(pkey, *class, value.as_bytes()).as_str().as_bytes());
    }
    for (path, plaintext) in seals {
        envelope::seal_into(skey, path, plaintext, out);
    }
}

fn bench(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let engine =
        Engine::from_config(&Config::load(&root.join("config/pipeline.toml")).unwrap()).unwrap();
    let keyset = keys();
    let active = engine.active_keys(&keyset).unwrap();

    // The typical message's 160-byte body (see generate::typical_message).
    let body = match pseudonymizer::generate::typical_message() {
        apache_avro::types::Value::Record(fields) => fields
            .into_iter()
            .find_map(|(name, value)| match (name.as_str(), value) {
                ("body", apache_avro::types::Value::Union(_, inner)) => match *inner {
                    apache_avro::types::Value::String(s) => Some(s),
                    _ => None,
                },
                _ => None,
            })
            .expect("typical message has a body"),
        _ => unreachable!("typical message is a record"),
    };
    let call_tokens: &[(TokenClass, &str)] = &[
        (TokenClass::Id, "call-7f3e9a1c2b4d"),
        (TokenClass::Phone, "+6281234567890"),
        (TokenClass::Phone, "+6281298765432"),
        (TokenClass::Ip, "203.0.113.45"),
        (TokenClass::Ip, "2001:db8:85a3::8a2e:370:7334"),
        (TokenClass::Id, "dev-4f1c2a9e7b3d5c80"),
        (TokenClass::Id, "510-10-12345-678"),
    ];
    let call_seals: &[(&str, &[u8])] = &[(
        "recording_url",
        b"https://recordings.example.net/2026/11/4f1c2a9e7b3d5c804f1c2a9e.wav",
    )];
    let message_tokens: &[(TokenClass, &str)] = &[
        (TokenClass::Id, "msg-7f3e9a1c2b4d"),
        (TokenClass::Phone, "+6281234567890"),
        (TokenClass::Phone, "+6281298765432"),
        (TokenClass::Phone, "+6285712345678"),
        (TokenClass::Ip, "203.0.113.45"),
        (TokenClass::Id, "dev-4f1c2a9e7b3d5c80"),
        (TokenClass::Id, "510-10-12345-678"),
    ];
    let message_seals: &[(&str, &[u8])] = &[
        ("body", body.as_bytes()),
        (
            "attachments.url",
            b"https://media.example.net/m/8c1d2e3f4a5b6c7d8e9f.jpg",
        ),
    ];

    let cases = [
        (
            "call",
            "comms.v1.CallEvent",
            typical_call(),
            call_tokens,
            call_seals,
        ),
        (
            "message",
            "comms.v1.MessageEvent",
            typical_message(),
            message_tokens,
            message_seals,
        ),
    ];
    for (name, schema, event, tokens, seals) in cases {
        let plan = engine.plan(schema).unwrap().clone();
        let input = apache_avro::to_avro_datum(&plan.input, event).unwrap();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        let mut out = Vec::with_capacity(2048);
        group.bench_function("fast", |b| {
            b.iter(|| {
                out.clear();
                engine
                    .transform(&plan, &active, black_box(&input), &mut out)
                    .unwrap();
            })
        });
        group.bench_function("reference", |b| {
            b.iter(|| {
                engine
                    .transform_reference(&plan, &active, black_box(&input))
                    .unwrap()
            })
        });
        group.bench_function("crypto_floor", |b| {
            b.iter(|| floor(&active, black_box(tokens), black_box(seals), &mut out))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
