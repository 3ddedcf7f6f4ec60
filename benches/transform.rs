//! The per-event transform against its baselines, in one run:
//! - `fast`: the production path (binary walk);
//! - `reference`: decode to apache-avro `Value`, rewrite, encode;
//! - `crypto_floor`: only the HMACs and AES-GCM seals the same event needs;
//! - `call_wire_numbers`: calls whose numbers come in the shapes seen on the wire, against
//!   their crypto floor;
//! - `phone`: one wire-shaped number through the phone fast path alone, libphonenumber's full
//!   parse alone, and both as the worker reads it (fast path, else memory, else full parse);
//! - `envelope`: one 160-byte body sealed and opened as version 2 (XAES-256-GCM; sealed under
//!   the process's current data key, and with the data key derived per envelope) against spec
//!   v1's AES-256-GCM.
//!
//! - `derive`: the typical call, and calls with wire-shaped numbers, with the shipped rules
//!   (caller and callee derive region, calling code and number type) against the same rules
//!   without `derive`;
//! - `risk`: the typical call's output added to the re-identification risk window of the
//!   shipped calls pipeline (`[pipeline.risk]`, window 100,000, already full), alone and
//!   after its transform;
//! - `geoip`: the typical call with its caller's and callee's IP countries derived (`ip` token
//!   and `ip-truncate` network, `[geoip]` database: DB-IP country lite) against the same rules
//!   without, and one lookup alone; it needs PSEUDONYMIZER_GEOIP_DB (scripts/geoip.sh install
//!   writes it into an env file) and says so instead of running without it;
//! - `subjects`: the typical call through the subject registry's gate, with an empty registry
//!   and with one million erased subjects (none of them this call's), against `fast`; and the
//!   time to load those million records into the worker's table.
//!
//! Run: `cargo bench --bench transform`. Compare ratios within one run.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pseudonymizer::config::Config;
use pseudonymizer::envelope;
use pseudonymizer::generate::{typical_call, typical_message};
use pseudonymizer::keys::{KeyEntry, KeySet, KeyState, Keyring, Purpose, Secret};
use pseudonymizer::rules::RuleSpec;
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

/// Median ns per event of `inputs` (cycled) through each of two (engine, plan) pairs, timed in
/// 41 alternating blocks of 20,000: this machine's timings drift by several percent between two
/// criterion functions run seconds apart, more than the costs these compare.
fn alternating_medians(
    active: &ActiveKeys,
    without: (&Engine, &pseudonymizer::plan::Plan),
    with: (&Engine, &pseudonymizer::plan::Plan),
    inputs: &[Vec<u8>],
) -> (f64, f64) {
    let mut out = Vec::new();
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..41 {
        for (side, (engine, plan)) in [without, with].into_iter().enumerate() {
            let started = std::time::Instant::now();
            for i in 0..20_000 {
                out.clear();
                engine
                    .transform(plan, active, black_box(&inputs[i % inputs.len()]), &mut out)
                    .unwrap();
            }
            times[side].push(started.elapsed().as_nanos() as f64 / 20_000.0);
        }
    }
    let [mut without, mut with] = times;
    without.sort_by(f64::total_cmp);
    with.sort_by(f64::total_cmp);
    (without[without.len() / 2], with[with.len() / 2])
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

    // Calls whose two numbers come in the shapes the generator puts on the wire (national with
    // separators, `+62 21 …`, `+65 9…`, junk), 256 of them in turn so that the per-thread
    // memory of recent numbers does not answer for the few the fast path declines.
    let mut generator = pseudonymizer::generate::Generator::new(5);
    let plan = engine.plan("comms.v1.CallEvent").unwrap().clone();
    let mut inputs = Vec::new();
    let mut canonical_tokens: Vec<Vec<(TokenClass, String)>> = Vec::new();
    for _ in 0..256 {
        let mut event = typical_call();
        let numbers = [generator.phone(), generator.phone()];
        if let apache_avro::types::Value::Record(fields) = &mut event {
            for (name, value) in fields.iter_mut() {
                match name.as_str() {
                    "caller" => *value = apache_avro::types::Value::String(numbers[0].clone()),
                    "callee" => *value = apache_avro::types::Value::String(numbers[1].clone()),
                    _ => {}
                }
            }
        }
        inputs.push(apache_avro::to_avro_datum(&plan.input, event).unwrap());
        let mut tokens: Vec<(TokenClass, String)> = call_tokens
            .iter()
            .filter(|(class, _)| *class != TokenClass::Phone)
            .map(|(class, value)| (*class, (*value).to_owned()))
            .collect();
        for number in &numbers {
            let (class, canonical) = engine.phone().canonical_slow(number);
            tokens.push((class, canonical.into_owned()));
        }
        canonical_tokens.push(tokens);
    }
    let mut group = c.benchmark_group("call_wire_numbers");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(2048);
    let mut next = 0usize;
    group.bench_function("fast", |b| {
        b.iter(|| {
            next = (next + 1) % inputs.len();
            out.clear();
            engine
                .transform(&plan, &active, black_box(&inputs[next]), &mut out)
                .unwrap();
        })
    });
    group.bench_function("crypto_floor", |b| {
        b.iter(|| {
            next = (next + 1) % inputs.len();
            let tokens: Vec<(TokenClass, &str)> = canonical_tokens[next]
                .iter()
                .map(|(class, value)| (*class, value.as_str()))
                .collect();
            floor(&active, black_box(&tokens), black_box(call_seals), &mut out)
        })
    });
    group.finish();

    // The same calls with and without the attributes derived from their numbers.
    let mut config = Config::load(&root.join("config/pipeline.toml")).unwrap();
    for pipeline in &mut config.pipeline {
        // The risk estimate names derived fields, which the rules now do not make.
        pipeline.risk = None;
    }
    for rules in config.pipeline.iter_mut().map(|p| &mut p.rules) {
        for spec in rules.values_mut() {
            if let RuleSpec::Table { derive, .. } = spec {
                *derive = None;
            }
        }
    }
    let plain = Engine::from_config(&config).unwrap();
    let plain_plan = plain.plan("comms.v1.CallEvent").unwrap().clone();
    let typical = apache_avro::to_avro_datum(&plan.input, typical_call()).unwrap();
    // The typical message: its sender's attributes and an array of each recipient's.
    {
        let message_plan = engine.plan("comms.v1.MessageEvent").unwrap().clone();
        let plain_message_plan = plain.plan("comms.v1.MessageEvent").unwrap().clone();
        let message = apache_avro::to_avro_datum(&message_plan.input, typical_message()).unwrap();
        let (without, with) = alternating_medians(
            &active,
            (&plain, &plain_message_plan),
            (&engine, &message_plan),
            &[message],
        );
        eprintln!(
            "derive: typical message: {without:.0} ns without, {with:.0} ns with the sender's and both recipients' region, calling code and number type ({:+.1}%; medians of 41 alternating blocks of 20,000)",
            (with / without - 1.0) * 100.0
        );
    }
    // Besides criterion's pair below, the two are timed in alternating blocks (the fair
    // comparison on this machine: `alternating_medians`).
    for (what, cases) in [
        ("typical call", vec![typical.clone()]),
        ("wire-shaped calls", inputs.clone()),
    ] {
        let (without, with) =
            alternating_medians(&active, (&plain, &plain_plan), (&engine, &plan), &cases);
        eprintln!(
            "derive: {what}: {without:.0} ns without, {with:.0} ns with region, calling code and number type of both numbers ({:+.1}%; medians of 41 alternating blocks of 20,000)",
            (with / without - 1.0) * 100.0
        );
    }
    let mut group = c.benchmark_group("derive");
    group.throughput(Throughput::Elements(1));
    group.bench_function("call_without", |b| {
        b.iter(|| {
            out.clear();
            plain
                .transform(&plain_plan, &active, black_box(&typical), &mut out)
                .unwrap();
        })
    });
    group.bench_function("call_with", |b| {
        b.iter(|| {
            out.clear();
            engine
                .transform(&plan, &active, black_box(&typical), &mut out)
                .unwrap();
        })
    });
    group.bench_function("wire_numbers_without", |b| {
        b.iter(|| {
            next = (next + 1) % inputs.len();
            out.clear();
            plain
                .transform(&plain_plan, &active, black_box(&inputs[next]), &mut out)
                .unwrap();
        })
    });
    group.bench_function("wire_numbers_with", |b| {
        b.iter(|| {
            next = (next + 1) % inputs.len();
            out.clear();
            engine
                .transform(&plan, &active, black_box(&inputs[next]), &mut out)
                .unwrap();
        })
    });
    group.finish();

    // The risk window: each call of the 256 wire-shaped ones transformed, then observed.
    let risk_config = Config::load(&root.join("config/pipeline.toml"))
        .unwrap()
        .pipeline[0]
        .risk
        .clone()
        .expect("the shipped calls pipeline measures its risk");
    let mut risk = pseudonymizer::risk::PipelineRisk::new(
        risk_config.quasi_identifiers.clone(),
        risk_config.k.unwrap_or(pseudonymizer::risk::DEFAULT_K),
        risk_config
            .window
            .unwrap_or(pseudonymizer::risk::DEFAULT_WINDOW),
    );
    // More distinct calls than the window holds (the generator's cell ids are random, so most
    // records are groups of their own): the table stays at its full size, as in the worst case.
    let mut many = pseudonymizer::generate::Generator::new(11);
    let outputs: Vec<Vec<u8>> = (0..131_072)
        .map(|_| {
            let input = apache_avro::to_avro_datum(
                &plan.input,
                many.event(pseudonymizer::generate::Kind::Call),
            )
            .unwrap();
            let mut out = Vec::new();
            engine.transform(&plan, &active, &input, &mut out).unwrap();
            out
        })
        .collect();
    // Fill the window first: from then on each record also makes the oldest leave.
    for i in 0..risk.window_capacity() {
        risk.observe(&plan, 101, &outputs[i % outputs.len()]);
    }
    let mut group = c.benchmark_group("risk");
    group.throughput(Throughput::Elements(1));
    group.bench_function("observe", |b| {
        b.iter(|| {
            next = (next + 1) % outputs.len();
            risk.observe(&plan, 101, black_box(&outputs[next]));
        })
    });
    group.bench_function("call_transform", |b| {
        b.iter(|| {
            next = (next + 1) % inputs.len();
            out.clear();
            engine
                .transform(&plan, &active, black_box(&inputs[next]), &mut out)
                .unwrap();
        })
    });
    let mut at = 0usize;
    group.bench_function("call_transform_and_observe", |b| {
        b.iter(|| {
            next = (next + 1) % inputs.len();
            out.clear();
            engine
                .transform(&plan, &active, black_box(&inputs[next]), &mut out)
                .unwrap();
            // The window's groups are those of the many distinct calls, not of these 256.
            at = (at + 1) % outputs.len();
            risk.observe(&plan, 101, black_box(&outputs[at]));
        })
    });
    group.finish();

    // One number at a time, the same wire shapes: the fast path alone (declining `*31#`-like
    // codes), the full parse alone, and both as the worker reads a number.
    let numbers: Vec<String> = (0..256).map(|_| generator.phone()).collect();
    let region = engine.phone().region();
    let mut group = c.benchmark_group("phone");
    group.throughput(Throughput::Elements(1));
    group.bench_function("fast_path", |b| {
        b.iter(|| {
            next = (next + 1) % numbers.len();
            pseudonymizer::phone::fast::canonical(region, black_box(numbers[next].trim()))
        })
    });
    group.bench_function("full_parse", |b| {
        b.iter(|| {
            next = (next + 1) % numbers.len();
            engine.phone().canonical_slow(black_box(&numbers[next]))
        })
    });
    let canonicals: Vec<String> = numbers
        .iter()
        .map(|n| engine.phone().canonical(n).1.into_owned())
        .collect();
    group.bench_function("attributes", |b| {
        b.iter(|| {
            next = (next + 1) % canonicals.len();
            pseudonymizer::phone::attributes::of_canonical(black_box(&canonicals[next]))
        })
    });
    group.bench_function("attributes_typical", |b| {
        b.iter(|| pseudonymizer::phone::attributes::of_canonical(black_box("+6281234567890")))
    });
    group.bench_function("as_the_worker_reads", |b| {
        b.iter(|| {
            next = (next + 1) % numbers.len();
            engine.phone().canonical(black_box(&numbers[next]))
        })
    });
    group.finish();
}

/// The typical call (with public addresses) with and without its IP countries derived.
fn geoip(c: &mut Criterion) {
    let Ok(database) = std::env::var("PSEUDONYMIZER_GEOIP_DB") else {
        eprintln!(
            "geoip: not measured: set PSEUDONYMIZER_GEOIP_DB (. \"$(scripts/geoip.sh install)\")"
        );
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = root.join("config/pipeline.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let deriving =
        text.replacen(
            "caller_ip = \"ip\"",
            "caller_ip = { action = \"ip\", derive = [\"country\"] }",
            1,
        )
        .replacen(
            "callee_ip = \"ip\"",
            "callee_ip = { action = \"ip-truncate\", derive = [\"country\"] }",
            1,
        ) + &format!("\n[geoip]\ndatabase = {database:?}\n");
    let plain_text = text.replacen("callee_ip = \"ip\"", "callee_ip = \"ip-truncate\"", 1);
    let engine =
        |text: &str| Engine::from_config(&Config::from_toml(text, &shipped).unwrap()).unwrap();
    let (with, without) = (engine(&deriving), engine(&plain_text));
    let active = with.active_keys(&keys()).unwrap();
    let mut call = typical_call();
    if let apache_avro::types::Value::Record(fields) = &mut call {
        for (name, value) in fields.iter_mut() {
            let ip = match name.as_str() {
                "caller_ip" => "36.66.12.34",
                "callee_ip" => "8.8.8.8",
                _ => continue,
            };
            *value = apache_avro::types::Value::Union(
                1,
                Box::new(apache_avro::types::Value::String(ip.into())),
            );
        }
    }
    let plan_with = with.plan("comms.v1.CallEvent").unwrap().clone();
    let plan_without = without.plan("comms.v1.CallEvent").unwrap().clone();
    let input = apache_avro::to_avro_datum(&plan_with.input, call).unwrap();
    let mut out = Vec::new();
    // Alternating blocks, as for `derive` (this machine drifts between criterion functions).
    let (wo, w) = alternating_medians(
        &active,
        (&without, &plan_without),
        (&with, &plan_with),
        std::slice::from_ref(&input),
    );
    eprintln!(
        "geoip: typical call: {wo:.0} ns without, {w:.0} ns with the country of both addresses ({:+.1}%; medians of 41 alternating blocks of 20,000)",
        (w / wo - 1.0) * 100.0
    );
    let mut group = c.benchmark_group("geoip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("call_without", |b| {
        b.iter(|| {
            out.clear();
            without
                .transform(&plan_without, &active, black_box(&input), &mut out)
                .unwrap();
        })
    });
    group.bench_function("call_with", |b| {
        b.iter(|| {
            out.clear();
            with.transform(&plan_with, &active, black_box(&input), &mut out)
                .unwrap();
        })
    });
    // One lookup, over addresses spread across the whole IPv4 space (caches as cold as a
    // stream of many clients makes them).
    let db = with.country_db().unwrap().clone();
    let mut state: u32 = 0x9e37_79b9;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            db.country(black_box(std::net::IpAddr::V4(state.into())))
        })
    });
    let typical: [std::net::IpAddr; 2] =
        ["36.66.12.34".parse().unwrap(), "8.8.8.8".parse().unwrap()];
    let mut i = 0;
    group.bench_function("lookup_typical", |b| {
        b.iter(|| {
            i ^= 1;
            db.country(black_box(typical[i]))
        })
    });
    group.finish();
}

/// The typical call as a schemaless JSON record (`config/json-pipeline.toml`, the same rules)
/// and as a Protobuf message (`config/protobuf-pipeline.toml`, the same rules and a few more
/// for fields the typical call leaves out) against the same call through the Avro fast path,
/// timed in alternating blocks.
fn json(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let avro =
        Engine::from_config(&Config::load(&root.join("config/pipeline.toml")).unwrap()).unwrap();
    let json = Engine::from_config(&Config::load(&root.join("config/json-pipeline.toml")).unwrap())
        .unwrap();
    let active = avro.active_keys(&keys()).unwrap();
    let avro_plan = avro.plan("comms.v1.CallEvent").unwrap().clone();
    let json_plan = json.json_plans()[0].1.clone();
    let proto =
        Engine::from_config(&Config::load(&root.join("config/protobuf-pipeline.toml")).unwrap())
            .unwrap();
    let proto_contract = proto.proto(0).unwrap().clone();
    let call = typical_call();
    let avro_input = apache_avro::to_avro_datum(&avro_plan.input, call.clone()).unwrap();
    let json_input = serde_json::Value::try_from(call)
        .unwrap()
        .to_string()
        .into_bytes();
    let proto_input = {
        let mapping: serde_json::Value = serde_json::from_slice(&json_input).unwrap();
        use prost::Message as _;
        prost_reflect::DynamicMessage::deserialize(proto_contract.input.message.clone(), mapping)
            .unwrap()
            .encode_to_vec()
    };
    let mut out = Vec::with_capacity(2048);
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..41 {
        let started = std::time::Instant::now();
        for _ in 0..20_000 {
            out.clear();
            avro.transform(&avro_plan, &active, black_box(&avro_input), &mut out)
                .unwrap();
        }
        times[0].push(started.elapsed().as_nanos() as f64 / 20_000.0);
        let started = std::time::Instant::now();
        for _ in 0..20_000 {
            out.clear();
            json.transform_json(&json_plan, &active, None, black_box(&json_input), &mut out)
                .unwrap();
        }
        times[1].push(started.elapsed().as_nanos() as f64 / 20_000.0);
        let started = std::time::Instant::now();
        for _ in 0..20_000 {
            out.clear();
            proto
                .transform_protobuf(
                    &proto_contract,
                    &active,
                    None,
                    black_box(&proto_input),
                    &mut out,
                )
                .unwrap();
        }
        times[2].push(started.elapsed().as_nanos() as f64 / 20_000.0);
    }
    for side in &mut times {
        side.sort_by(f64::total_cmp);
    }
    let (a, j, p) = (times[0][20], times[1][20], times[2][20]);
    eprintln!(
        "json: typical call: {a:.0} ns as Avro, {j:.0} ns as JSON ({:.2}x), {p:.0} ns as Protobuf ({:.2}x); {} vs {} vs {} bytes in; medians of 41 alternating blocks of 20,000",
        j / a,
        p / a,
        avro_input.len(),
        json_input.len(),
        proto_input.len()
    );
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Elements(1));
    group.bench_function("call", |b| {
        b.iter(|| {
            out.clear();
            json.transform_json(&json_plan, &active, None, black_box(&json_input), &mut out)
                .unwrap();
        })
    });
    group.bench_function("call_protobuf", |b| {
        b.iter(|| {
            out.clear();
            proto
                .transform_protobuf(
                    &proto_contract,
                    &active,
                    None,
                    black_box(&proto_input),
                    &mut out,
                )
                .unwrap();
        })
    });
    group.bench_function("call_avro", |b| {
        b.iter(|| {
            out.clear();
            avro.transform(&avro_plan, &active, black_box(&avro_input), &mut out)
                .unwrap();
        })
    });
    group.finish();
}

/// The envelope versions side by side on the typical message body.
fn envelopes(c: &mut Criterion) {
    let keyset = keys();
    let key = keyset.encryption().unwrap().clone();
    let body = [b'x'; 160];
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(512);
    let mut counter = 0u64;
    group.bench_function("v1_aes_256_gcm_seal", |b| {
        b.iter(|| {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&counter.to_le_bytes());
            out.clear();
            envelope::seal_v1_with_nonce(&key, "body", &nonce, black_box(&body), &mut out);
        })
    });
    group.bench_function("v2_xaes_256_gcm_seal", |b| {
        b.iter(|| {
            out.clear();
            envelope::seal_into(&key, "body", black_box(&body), &mut out);
        })
    });
    group.bench_function("v2_seal_deriving_per_envelope", |b| {
        b.iter(|| {
            counter += 1;
            let mut nonce = [0u8; 24];
            nonce[..8].copy_from_slice(&counter.to_le_bytes());
            out.clear();
            envelope::seal_with_nonce(&key, "body", &nonce, black_box(&body), &mut out);
        })
    });
    let mut v1 = Vec::new();
    envelope::seal_v1_with_nonce(&key, "body", &[1; 12], &body, &mut v1);
    let mut v2 = Vec::new();
    envelope::seal_into(&key, "body", &body, &mut v2);
    group.bench_function("v1_open", |b| {
        b.iter(|| envelope::open_with(&key, "body", black_box(&v1)).unwrap())
    });
    group.bench_function("v2_open", |b| {
        b.iter(|| envelope::open_with(&key, "body", black_box(&v2)).unwrap())
    });
    group.finish();
}

/// The subject registry's cost per event: the same call ungated, through an empty registry,
/// and through one million entries; and the table's load time and size at one million.
fn subjects(c: &mut Criterion) {
    use pseudonymizer::keys::SubjectKey;
    use pseudonymizer::subjects::{
        subject_of, RegistryRecord, SubjectClasses, SubjectPolicy, SubjectState, SubjectTable,
        SubjectView,
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let engine =
        Engine::from_config(&Config::load(&root.join("config/pipeline.toml")).unwrap()).unwrap();
    let active = engine.active_keys(&keys()).unwrap();
    let plan = engine.plan("comms.v1.CallEvent").unwrap().clone();
    // 65,536 calls between different numbers, in turn: a worker meets new numbers all the
    // time, so the table's lookups are measured with the caches a real stream leaves them.
    let inputs: Vec<Vec<u8>> = (0..65_536u32)
        .map(|n| {
            let mut call = typical_call();
            if let apache_avro::types::Value::Record(fields) = &mut call {
                for (name, value) in fields.iter_mut() {
                    match name.as_str() {
                        "caller" => {
                            *value = apache_avro::types::Value::String(format!("+62812{:08}", n))
                        }
                        "callee" => {
                            *value =
                                apache_avro::types::Value::String(format!("+62813{:08}", n * 7))
                        }
                        _ => {}
                    }
                }
            }
            apache_avro::to_avro_datum(&plan.input, call).unwrap()
        })
        .collect();
    let key = SubjectKey::new("s-bench", &Secret::generate());
    let classes = SubjectClasses::default_classes();
    let empty = SubjectTable::new("s-bench", vec![]);
    // One million registry records as a worker reads them (JSON values parsed and applied).
    let records: Vec<(String, String)> = (0..1_000_000u64)
        .map(|n| {
            let (subject, hint) =
                subject_of(&key, TokenClass::Phone, format!("+1415{n:07}").as_bytes());
            let r = RegistryRecord::new(
                subject,
                hint,
                SubjectState::Erased,
                None,
                "2026-12-04T00:00:00Z",
                "req-bench",
            );
            (r.key(), r.to_json())
        })
        .collect();
    let started = std::time::Instant::now();
    let mut full = SubjectTable::new("s-bench", vec![]);
    for (k, v) in &records {
        full.apply(&RegistryRecord::parse(k.as_bytes(), v.as_bytes()).unwrap());
    }
    eprintln!(
        "subjects: 1,000,000 registry records parsed and applied in {:.2} s; table {} entries, {:.1} MiB of slots",
        started.elapsed().as_secs_f64(),
        full.len(),
        full.memory_bytes() as f64 / (1 << 20) as f64
    );
    drop(records);
    let mut group = c.benchmark_group("subjects");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(2048);
    group.bench_function("call_ungated", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = (n + 1) & 65_535;
            out.clear();
            engine
                .transform(&plan, &active, black_box(&inputs[n]), &mut out)
                .unwrap();
        })
    });
    for (name, table) in [("call_empty_registry", &empty), ("call_1m_registry", &full)] {
        let view = SubjectView {
            key: &key,
            table,
            classes: &classes,
        };
        group.bench_function(name, |b| {
            let mut n = 0usize;
            b.iter(|| {
                n = (n + 1) & 65_535;
                out.clear();
                let gate = view.gate(SubjectPolicy::default());
                engine
                    .transform_gated(&plan, &active, &gate, black_box(&inputs[n]), &mut out)
                    .unwrap();
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = bench, envelopes, subjects, geoip, json
}
criterion_main!(benches);
