//! The formats added after spec v1 (docs/formats.md), end to end: version-2 envelopes renew
//! their data keys by count and open after a restart; version-1 envelopes still open and
//! `reseal` upgrades them; pseudonymisation domains and id sub-classes give unlinkable tokens
//! that `lookup` finds. (The byte-exact vectors are in tests/vectors.rs.)

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::process::cli;
use pseudonymizer::envelope::{self, SealKey};
use pseudonymizer::keys::Secret;
use serde_json::Value as Json;

const ENCRYPTION_SECRET: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let (success, said) = cli(args);
    assert!(success, "{args:?} failed: {said}");
    said
}

/// The salt (first half of the XAES-256-GCM nonce) of a version-2 envelope.
fn salt(sealed: &[u8]) -> [u8; 12] {
    let header = 2 + sealed[1] as usize;
    sealed[header..header + 12].try_into().unwrap()
}

#[test]
fn data_keys_renew_by_count_and_every_envelope_opens_after_a_restart() {
    let secret = Secret::from_b64(ENCRYPTION_SECRET).unwrap();
    let key = std::sync::Arc::new(SealKey::new("e-test-1", &secret).with_data_key_seals(1000));
    // 10,000 seals from four threads at once, as the worker's transform threads do.
    let sealed: Vec<(String, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let key = key.clone();
                scope.spawn(move || {
                    (0..2500)
                        .map(|i| {
                            let plaintext = format!("message {t}-{i}");
                            let mut out = Vec::new();
                            envelope::seal_into(&key, "body", plaintext.as_bytes(), &mut out);
                            (plaintext, out)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(key.sealed_count(), 10_000);
    // Each thread renews its own data key every 1,000 seals: 2,500 seals per thread are three
    // data keys (1,000 + 1,000 + 500), twelve in all, each with its own salt.
    assert_eq!(key.data_keys_made(), 12);
    let mut per_salt: HashMap<[u8; 12], usize> = HashMap::new();
    for (_, env) in &sealed {
        assert_eq!(envelope::version(env), Ok(2));
        *per_salt.entry(salt(env)).or_default() += 1;
    }
    assert_eq!(per_salt.len(), 12, "one salt per data key");
    assert!(per_salt.values().all(|&n| n <= 1000), "{per_salt:?}");
    // Nonces never repeat.
    let nonces: HashSet<&[u8]> = sealed.iter().map(|(_, e)| &e[10..34]).collect();
    assert_eq!(nonces.len(), 10_000);

    // A restart: the keyring loaded afresh opens everything; new seals draw new salts.
    drop(key);
    let restarted = common::keyset();
    for (plaintext, env) in &sealed {
        assert_eq!(restarted.open("body", env).unwrap(), plaintext.as_bytes());
    }
    let again = SealKey::new("e-test-1", &secret).with_data_key_seals(1000);
    for i in 0..1500 {
        let mut out = Vec::new();
        envelope::seal_into(&again, "body", format!("after {i}").as_bytes(), &mut out);
        assert!(!per_salt.contains_key(&salt(&out)), "a salt was reused");
        assert_eq!(
            restarted.open("body", &out).unwrap(),
            format!("after {i}").as_bytes()
        );
    }
    assert_eq!(again.data_keys_made(), 2);
}

/// Generates `count` events of `schema` and transforms them with `config`.
fn sanitized(
    dir: &Path,
    config: &Path,
    ring: &Path,
    schema: &str,
    name: &str,
) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.avro"));
    let out = dir.join(format!("{name}.sanitized.avro"));
    ok(&[
        "generate",
        "--schema",
        schema,
        "--count",
        "80",
        "--seed",
        "5",
        "--output",
        s(&raw),
    ]);
    ok(&[
        "transform",
        "--config",
        s(config),
        "--keyring",
        s(ring),
        "--input",
        s(&raw),
        "--output",
        s(&out),
    ]);
    (raw, out)
}

fn read(file: &Path) -> Vec<Json> {
    pseudonymizer::file::read_json(file, usize::MAX).unwrap()
}

/// Rewrites every `body` envelope of a sanitized file in spec v1's format (AES-256-GCM,
/// 12-byte nonce), as files written before version 2 hold them.
fn downgrade_bodies(input: &Path, output: &Path) -> usize {
    let secret = Secret::from_b64(ENCRYPTION_SECRET).unwrap();
    let key = SealKey::new("e-test-1", &secret);
    let keys = common::keyset();
    let reader = apache_avro::Reader::new(std::fs::File::open(input).unwrap()).unwrap();
    let schema = reader.writer_schema().clone();
    let mut writer = apache_avro::Writer::new(&schema, Vec::new());
    let mut downgraded = 0;
    for value in reader {
        let Value::Record(mut fields) = value.unwrap() else {
            panic!("a record")
        };
        for (name, field) in fields.iter_mut() {
            if name != "body" {
                continue;
            }
            if let Value::Union(_, inner) = field {
                if let Value::Bytes(env) = &mut **inner {
                    let plaintext = keys.open("body", env).unwrap();
                    let mut old = Vec::new();
                    let nonce: [u8; 12] = rand_nonce(downgraded);
                    envelope::seal_v1_with_nonce(&key, "body", &nonce, &plaintext, &mut old);
                    *env = old;
                    downgraded += 1;
                }
            }
        }
        writer.append(Value::Record(fields)).unwrap();
    }
    std::fs::write(output, writer.into_inner().unwrap()).unwrap();
    downgraded
}

fn rand_nonce(i: usize) -> [u8; 12] {
    let mut nonce = [7u8; 12];
    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
    nonce
}

fn body_versions(file: &Path) -> Vec<u8> {
    read(file)
        .iter()
        .filter_map(|e| e["body"].as_str())
        .map(|b64| envelope::version(&STANDARD.decode(b64).unwrap()).unwrap())
        .collect()
}

fn decrypted(config: &Path, ring: &Path, file: &Path, audit: &Path) -> Vec<Json> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pseudonymizer"))
        .args(["decrypt", "--config", s(config), "--keyring", s(ring)])
        .args(["--input", s(file), "--audit-log", s(audit)])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn version_1_envelopes_still_open_and_reseal_upgrades_them() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let audit = dir.path().join("audit.log");
    let config = common::repo().join("config/pipeline.toml");
    let (raw, new) = sanitized(dir.path(), &config, &ring, "message", "m");
    assert!(
        body_versions(&new).iter().all(|&v| v == 2),
        "new output is version 2"
    );
    let old = dir.path().join("m.v1.avro");
    let downgraded = downgrade_bodies(&new, &old);
    assert!(downgraded > 10, "{downgraded}");
    assert_eq!(body_versions(&old), vec![1; downgraded]);

    // The old format opens.
    let raw_events = read(&raw);
    let opened = decrypted(&config, &ring, &old, &audit);
    assert_eq!(opened.len(), raw_events.len());
    for (raw, opened) in raw_events.iter().zip(&opened) {
        assert_eq!(raw["body"], opened["body"]);
    }

    // reseal, with the same active key, turns every version-1 envelope into version 2.
    let upgraded = dir.path().join("m.upgraded.avro");
    let said = ok(&[
        "reseal",
        "--config",
        s(&config),
        "--keyring",
        s(&ring),
        "--input",
        s(&old),
        "--output",
        s(&upgraded),
        "--audit-log",
        s(&audit),
    ]);
    assert!(
        said.contains(&format!("resealed {downgraded} envelopes under e-test-1")),
        "{said}"
    );
    assert_eq!(body_versions(&upgraded), vec![2; downgraded]);
    for (raw, opened) in raw_events
        .iter()
        .zip(&decrypted(&config, &ring, &upgraded, &audit))
    {
        assert_eq!(raw["body"], opened["body"]);
    }
}

/// The shipped config with each pipeline in its own domain and the id roles named.
fn domain_config(dir: &Path) -> PathBuf {
    let repo = common::repo();
    let text = std::fs::read_to_string(repo.join("config/pipeline.toml"))
        .unwrap()
        .replace("../schemas/", &format!("{}/schemas/", repo.display()))
        .replace(
            "name = \"calls\"",
            "name = \"calls\"\ndomain = \"team-calls\"",
        )
        .replace(
            "name = \"messages\"",
            "name = \"messages\"\ndomain = \"team-messages\"",
        )
        .replace(
            "\"location.cell_id\" = \"id\"",
            "\"location.cell_id\" = { action = \"id\", class = \"cell\" }",
        );
    let path = dir.join("domains.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `lookup` of one value: the token under the test keyring's one pseudonym key.
fn lookup(dir: &Path, ring: &Path, value: &str, extra: &[&str]) -> String {
    let values = dir.join("values.txt");
    std::fs::write(&values, format!("{value}\n")).unwrap();
    let audit = dir.join("lookup-audit.log");
    let mut args = vec![
        "lookup",
        "--keyring",
        s(ring),
        "--audit-log",
        s(&audit),
        "--values-from",
        s(&values),
    ];
    args.extend_from_slice(extra);
    let (success, said) = cli(&args);
    assert!(success, "{said}");
    let line = said.lines().find(|l| l.starts_with('{')).unwrap();
    let json: Json = serde_json::from_str(line).unwrap();
    json["token"].as_str().unwrap().to_owned()
}

#[test]
fn pipelines_in_different_domains_give_unlinkable_tokens_that_lookup_finds() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let config = domain_config(dir.path());
    let shipped = common::repo().join("config/pipeline.toml");
    let (raw_calls, calls) = sanitized(dir.path(), &config, &ring, "call", "calls");
    let (_, calls_default) = sanitized(dir.path(), &shipped, &ring, "call", "calls-default");
    let (raw_messages, messages) = sanitized(dir.path(), &config, &ring, "message", "msgs");
    let (raw_calls, calls, calls_default) = (read(&raw_calls), read(&calls), read(&calls_default));
    let (raw_messages, messages) = (read(&raw_messages), read(&messages));

    // A caller number: its token in the calls domain is what the calls pipeline wrote, and it
    // differs from the messages domain's and the default domain's tokens of the same number.
    let (i, number) = raw_calls
        .iter()
        .enumerate()
        .find_map(|(i, e)| {
            let n = e["caller"].as_str()?;
            n.starts_with('+').then_some((i, n.to_owned()))
        })
        .unwrap();
    let phone = ["--class", "phone"];
    let in_calls = lookup(
        dir.path(),
        &ring,
        &number,
        &[&phone[..], &["--domain", "team-calls"]].concat(),
    );
    let in_messages = lookup(
        dir.path(),
        &ring,
        &number,
        &[&phone[..], &["--domain", "team-messages"]].concat(),
    );
    let in_default = lookup(dir.path(), &ring, &number, &phone);
    assert_eq!(calls[i]["caller"], in_calls.as_str());
    assert_eq!(calls_default[i]["caller"], in_default.as_str());
    assert_ne!(in_calls, in_messages);
    assert_ne!(in_calls, in_default);
    assert_ne!(in_messages, in_default);
    // Same key id prefix in every domain: the domain is configuration, not a new key.
    assert!(in_calls.starts_with("p-test-1:") && in_messages.starts_with("p-test-1:"));

    // A sender number: the messages pipeline's token is the messages domain's.
    let (j, sender) = raw_messages
        .iter()
        .enumerate()
        .find_map(|(j, e)| {
            let n = e["sender"].as_str()?;
            n.starts_with('+').then_some((j, n.to_owned()))
        })
        .unwrap();
    let sender_in_messages = lookup(
        dir.path(),
        &ring,
        &sender,
        &[&phone[..], &["--domain", "team-messages"]].concat(),
    );
    assert_eq!(messages[j]["sender"], sender_in_messages.as_str());

    // No caller token of the calls domain appears anywhere in the messages output.
    let call_tokens: HashSet<&str> = calls.iter().filter_map(|e| e["caller"].as_str()).collect();
    let message_text = serde_json::to_string(&messages).unwrap();
    assert!(call_tokens.iter().all(|t| !message_text.contains(t)));

    // The cell id's role is its own sub-class: `id.cell`, not `id`.
    let (k, cell) = raw_calls
        .iter()
        .enumerate()
        .find_map(|(k, e)| Some((k, e["location"]["cell_id"].as_str()?.to_owned())))
        .unwrap();
    let as_cell = lookup(
        dir.path(),
        &ring,
        &cell,
        &[
            "--class",
            "id",
            "--sub-class",
            "cell",
            "--domain",
            "team-calls",
        ],
    );
    let as_id = lookup(
        dir.path(),
        &ring,
        &cell,
        &["--class", "id", "--domain", "team-calls"],
    );
    assert_eq!(calls[k]["location"]["cell_id"], as_cell.as_str());
    assert_ne!(as_cell, as_id);
    assert_eq!(
        as_cell,
        lookup(
            dir.path(),
            &ring,
            &cell,
            &["--class", "id.cell", "--domain", "team-calls"]
        )
    );
    // Without a domain or a role, today's token: the shipped config's output.
    let as_default_id = lookup(dir.path(), &ring, &cell, &["--class", "id"]);
    assert_eq!(
        calls_default[k]["location"]["cell_id"],
        as_default_id.as_str()
    );

    // The lookup audit names the domain with the key id.
    let audit = std::fs::read_to_string(dir.path().join("lookup-audit.log")).unwrap();
    assert!(audit.contains("p-test-1/domain:team-calls"), "{audit}");
}

#[test]
fn bad_domain_and_sub_class_names_are_refused_at_check() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let config = domain_config(dir.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("domain = \"team-calls\"", "domain = \"Team Calls/1\"")
        .replace("class = \"cell\"", "class = \"Cell.ID\"");
    std::fs::write(&config, text).unwrap();
    let (success, said) = cli(&["check", "--config", s(&config), "--keyring", s(&ring)]);
    assert!(!success, "{said}");
    assert!(said.contains("domain \"Team Calls/1\""), "{said}");
    assert!(said.contains("sub-class \"Cell.ID\""), "{said}");
}
