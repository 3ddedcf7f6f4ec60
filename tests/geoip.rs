//! The country an IP rule derives (`{ action = "ip", derive = ["country"] }` with a `[geoip]`
//! database), against DB-IP's country lite database as scripts/geoip.sh installs it:
//! - every range of the CSV the `.mmdb` file was built from, both ends and the address before
//!   a gap, is placed in its country (or none) by the worker's reader;
//! - through the transform, on both paths, beside an `ip` token and an `ip-truncate` network,
//!   and null for a null value, a value that is not an address, an address in no country and
//!   a withheld person;
//! - what is refused: `country` without a database, on a phone rule, a phone attribute on an
//!   IP rule, a file that is not a country database (damaged copies included, with no panic).
//!
//! Needs PSEUDONYMIZER_GEOIP_DB and PSEUDONYMIZER_GEOIP_CSV_DIR (scripts/test.sh sets them):
//! without them every test here fails, naming the script.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;

use apache_avro::types::Value;
use pseudonymizer::config::Config;
use pseudonymizer::geoip::{Country, CountryDb};
use pseudonymizer::transform::Engine;

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh (scripts/geoip.sh installs the database)")
    }))
}

fn database() -> PathBuf {
    env_path("PSEUDONYMIZER_GEOIP_DB")
}

/// The shipped config with `caller_ip` an `ip` token and `callee_ip` an `ip-truncate` network,
/// both deriving their country, and `[geoip]` naming `db` (none: no `[geoip]`).
fn config(db: Option<&std::path::Path>, rules: &[(&str, &str)]) -> Result<Engine, String> {
    let shipped = common::repo().join("config/pipeline.toml");
    let mut text = std::fs::read_to_string(&shipped).unwrap();
    for (from, to) in rules {
        assert!(text.contains(from), "the shipped config has no line {from}");
        text = text.replacen(from, to, 1);
    }
    if let Some(db) = db {
        text.push_str(&format!(
            "\n[geoip]\ndatabase = {:?}\n",
            db.display().to_string()
        ));
    }
    let config = Config::from_toml(&text, &shipped).map_err(|e| format!("{e:#}"))?;
    Engine::from_config(&config).map_err(|e| format!("{e:#}"))
}

const DERIVING: [(&str, &str); 2] = [
    (
        "caller_ip = \"ip\"",
        "caller_ip = { action = \"ip\", derive = [\"country\"] }",
    ),
    (
        "callee_ip = \"ip\"",
        "callee_ip = { action = \"ip-truncate\", derive = [\"country\"] }",
    ),
];

fn some_string(s: &str) -> Value {
    Value::Union(1, Box::new(Value::String(s.into())))
}

fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

/// One range of the CSV: first and last address, and its country.
struct Range {
    first: IpAddr,
    last: IpAddr,
    country: String,
}

fn ranges(file: &str) -> Vec<Range> {
    let path = env_path("PSEUDONYMIZER_GEOIP_CSV_DIR").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let mut parts = line.split(',');
            let mut next = || {
                parts
                    .next()
                    .unwrap_or_else(|| panic!("short line {line:?}"))
            };
            Range {
                first: next().parse().unwrap(),
                last: next().parse().unwrap(),
                country: next().to_owned(),
            }
        })
        .collect()
}

fn previous(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).checked_sub(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_sub(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// The `.mmdb` file agrees with the CSV it was built from (an independent publication of the
/// same data) on both ends of every range, and places the address before a gap nowhere.
#[test]
fn every_range_of_the_source_csv_is_placed_in_its_country() {
    let db = CountryDb::open(&database()).unwrap();
    assert!(db.describe().contains("country_code"), "{}", db.describe());
    // One record per country, all read into the table at start.
    assert!(
        (200..300).contains(&db.tabled_records()),
        "{}",
        db.tabled_records()
    );
    let mut checked = 0;
    let mut gaps = 0;
    for file in ["dbip-country-ipv4.csv", "dbip-country-ipv6.csv"] {
        let ranges = ranges(file);
        assert!(ranges.len() > 100_000, "{file}: {} ranges", ranges.len());
        let mut last_end: Option<IpAddr> = None;
        for range in &ranges {
            let expected = Country::new(&range.country);
            assert!(expected.is_some(), "{file}: country {:?}", range.country);
            for ip in [range.first, range.last] {
                assert_eq!(db.country(ip), expected, "{file}: {ip}");
                checked += 1;
            }
            // The record decoded at each lookup (a file too large for the table) says the same.
            if checked % 64 == 0 {
                assert_eq!(
                    db.decoded_country(range.first),
                    expected,
                    "{file}: {}",
                    range.first
                );
            }
            if let Some(before) = previous(range.first) {
                if last_end != Some(before) && (last_end.is_none() || last_end < Some(before)) {
                    // Private, reserved and unallocated space is in no range, and no country.
                    assert_eq!(db.country(before), None, "{file}: {before} is in no range");
                    gaps += 1;
                }
            }
            last_end = Some(range.last);
        }
    }
    // DB-IP places nearly all of the address space: 15 gaps in this release.
    assert!(
        checked > 1_000_000 && gaps > 10,
        "{checked} ends, {gaps} gaps"
    );
    assert_eq!(db.country("10.1.2.3".parse().unwrap()), None);
    // This file does not alias IPv4-mapped IPv6 addresses to its IPv4 part: the transform
    // looks up the IPv4 address of a mapped one instead (src/ip.rs), as the test below shows.
    assert_eq!(db.country("::ffff:8.8.8.8".parse().unwrap()), None);
    assert_eq!(db.country("8.8.8.8".parse().unwrap()), Country::new("US"));
}

/// The call's caller_ip and callee_ip, through both paths; returns the fast path's record
/// after checking the reference path derived the same countries.
fn sanitized(engine: &Engine, caller_ip: Value, callee_ip: Value) -> Value {
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    let keys = common::active(engine);
    let mut call = pseudonymizer::generate::typical_call();
    common::set_field(&mut call, "caller_ip", caller_ip);
    common::set_field(&mut call, "callee_ip", callee_ip);
    let input = common::encode(&plan.input, call);
    let mut out = Vec::new();
    engine.transform(plan, &keys, &input, &mut out).unwrap();
    let fast = common::decode(&plan.output, &out);
    let reference = common::decode(
        &plan.output,
        &engine.transform_reference(plan, &keys, &input).unwrap(),
    );
    for name in ["caller_ip_country", "callee_ip_country"] {
        assert_eq!(
            common::field(&fast, name),
            common::field(&reference, name),
            "{name}"
        );
    }
    fast
}

#[test]
fn the_country_is_derived_beside_a_token_and_a_truncated_network() {
    let engine = config(Some(&database()), &DERIVING).unwrap();
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    // The derived schema: each country field right after its IP field, nullable, documented.
    let names: Vec<&str> = match &plan.output {
        apache_avro::Schema::Record(r) => r.fields.iter().map(|f| f.name.as_str()).collect(),
        _ => panic!("not a record"),
    };
    let at = |n: &str| names.iter().position(|f| *f == n).unwrap();
    assert_eq!(at("caller_ip_country"), at("caller_ip") + 1);
    assert_eq!(at("callee_ip_country"), at("callee_ip") + 1);

    // Addresses the CSV places (the test above holds the file to it): Google's resolver in the
    // US, Cloudflare's in Australia, an Indonesian provider's range, Google's IPv6 resolver.
    let db = CountryDb::open(&database()).unwrap();
    let place = |ip: &str| some_string(db.country(ip.parse().unwrap()).unwrap().as_str());
    for (caller, callee) in [
        ("8.8.8.8", "1.1.1.1"),
        ("  36.66.1.1 ", "2001:4860:4860::8888"),
        ("::ffff:8.8.4.4", "::ffff:1.0.0.1"),
    ] {
        let out = sanitized(&engine, some_string(caller), some_string(callee));
        let mapped = |ip: &str| ip.trim().trim_start_matches("::ffff:").to_owned();
        assert_eq!(
            common::field(&out, "caller_ip_country"),
            &place(&mapped(caller)),
            "{caller}"
        );
        assert_eq!(
            common::field(&out, "callee_ip_country"),
            &place(&mapped(callee)),
            "{callee}"
        );
        // The token and the network are what they are without derive.
        let Value::Union(1, token) = common::field(&out, "caller_ip") else {
            panic!()
        };
        assert!(matches!(&**token, Value::String(t) if t.starts_with("p-test-1:")));
    }
    assert_eq!(
        common::field(
            &sanitized(&engine, some_string("8.8.8.8"), null()),
            "caller_ip_country"
        ),
        &some_string("US")
    );
    let out = sanitized(&engine, some_string("8.8.8.8"), some_string("1.1.1.1"));
    assert_eq!(common::field(&out, "callee_ip"), &some_string("1.1.1.0"));
    assert_eq!(common::field(&out, "callee_ip_country"), &some_string("AU"));

    // Null: a null value, a value that is not an address, private and documentation space.
    for (caller, callee) in [
        (null(), some_string("n/a")),
        (some_string("10.1.2.3"), some_string("2001:db8::1")),
        (some_string("203.0.113.7"), some_string("")),
    ] {
        let out = sanitized(&engine, caller.clone(), callee.clone());
        assert_eq!(
            common::field(&out, "caller_ip_country"),
            &null(),
            "{caller:?}"
        );
        assert_eq!(
            common::field(&out, "callee_ip_country"),
            &null(),
            "{callee:?}"
        );
    }
}

/// A person withheld by the subject registry (erased) gets an unlinked token and no country;
/// a truncated network names no one (docs/security.md), so its country stays.
#[test]
fn no_country_is_derived_for_a_withheld_persons_address() {
    use pseudonymizer::subjects::{SubjectClasses, SubjectPolicy, SubjectView};
    use pseudonymizer::token::TokenClass;
    let engine = config(Some(&database()), &DERIVING).unwrap();
    let keys = common::active(&engine);
    let (key, table) = common::erased(TokenClass::Ip, "8.8.8.8");
    let classes = SubjectClasses::parse(&["phone".to_owned(), "ip".to_owned()]).unwrap();
    let view = SubjectView {
        key: &key,
        table: &table,
        classes: &classes,
    };
    let plan = engine.plan("comms.v1.CallEvent").unwrap();
    let run = |caller: &str, callee: &str| {
        let mut call = pseudonymizer::generate::typical_call();
        common::set_field(&mut call, "caller_ip", some_string(caller));
        common::set_field(&mut call, "callee_ip", some_string(callee));
        let input = common::encode(&plan.input, call);
        let gate = view.gate(SubjectPolicy::default());
        let mut out = Vec::new();
        engine
            .transform_gated(plan, &keys, &gate, &input, &mut out)
            .unwrap();
        (common::decode(&plan.output, &out), gate.met())
    };
    let (out, met) = run(" 8.8.8.8", "8.8.8.8");
    assert!(met);
    assert_eq!(common::field(&out, "caller_ip_country"), &null());
    assert_eq!(common::field(&out, "callee_ip_country"), &some_string("US"));
    let (out, met) = run("1.1.1.1", "8.8.8.8");
    assert!(!met);
    assert_eq!(common::field(&out, "caller_ip_country"), &some_string("AU"));
}

#[test]
fn country_without_a_database_and_misplaced_attributes_are_refused() {
    let error = config(None, &DERIVING).unwrap_err();
    assert!(
        error.contains("caller_ip: derive country needs a country database")
            && error.contains("callee_ip: derive country")
            && error.contains("[geoip] database"),
        "{error}"
    );
    // One rule changed in the shipped config (with a database), and the refusal it gets.
    let cases = [
        (
            "caller = { action = \"phone\", derive = [\"region\", \"calling_code\", \"number_type\"] }",
            "caller = { action = \"phone\", derive = [\"country\"] }",
            "caller: derive: \"country\" is not an attribute phone derives (region, calling_code, number_type)",
        ),
        (
            "caller_ip = \"ip\"",
            "caller_ip = { action = \"ip-truncate\", derive = [\"region\"] }",
            "caller_ip: derive: \"region\" is not an attribute ip-truncate derives (country)",
        ),
        (
            "call_id = \"id\"",
            "call_id = { action = \"id\", derive = [\"country\"] }",
            "call_id: derive only applies to phone, ip and ip-truncate, not \"id\"",
        ),
        // Not ip-prefix: a country beside each pseudonymized prefix would map the pseudonyms
        // back onto the address plan.
        (
            "caller_ip = \"ip\"",
            "caller_ip = { action = \"ip-prefix\", derive = [\"country\"] }",
            "caller_ip: derive only applies to phone, ip and ip-truncate, not \"ip-prefix\"",
        ),
    ];
    for (from, to, refusal) in cases {
        let error = config(Some(&database()), &[(from, to)]).unwrap_err();
        assert!(error.contains(refusal), "{to}: {error}");
    }
    // An empty path is refused as such.
    let error = config(Some(std::path::Path::new("")), &DERIVING).unwrap_err();
    assert!(error.contains("[geoip] database is empty"), "{error}");
}

/// `ip-truncate` derives the country of the network it publishes, not of the address inside
/// it: 1.32.202.0/24 is split between Singapore and Hong Kong in this release, and both of its
/// hosts get the network's country; an `ip` token gets each address's own.
#[test]
fn a_truncated_network_gets_the_networks_country() {
    let engine = config(Some(&database()), &DERIVING).unwrap();
    let db = CountryDb::open(&database()).unwrap();
    let (low, high): (IpAddr, IpAddr) = (
        "1.32.202.1".parse().unwrap(),
        "1.32.202.200".parse().unwrap(),
    );
    let network = db.country("1.32.202.0".parse().unwrap()).unwrap();
    assert_ne!(
        db.country(low),
        db.country(high),
        "the /24 is no longer split: pick another"
    );
    for host in [low, high] {
        let out = sanitized(
            &engine,
            some_string(&host.to_string()),
            some_string(&host.to_string()),
        );
        assert_eq!(common::field(&out, "callee_ip"), &some_string("1.32.202.0"));
        assert_eq!(
            common::field(&out, "callee_ip_country"),
            &some_string(network.as_str())
        );
        assert_eq!(
            common::field(&out, "caller_ip_country"),
            &some_string(db.country(host).unwrap().as_str())
        );
    }
}

/// A file that is not a country database is refused naming it, at start: text, an empty file,
/// a truncated copy. Damaged copies (bytes changed in the tree and the data) either are
/// refused or answer lookups, and never panic.
#[test]
fn a_file_that_is_not_a_country_database_is_refused_and_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(database()).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("text.mmdb", b"country,US\n".to_vec()),
        ("empty.mmdb", Vec::new()),
        ("truncated.mmdb", good[..good.len() / 2].to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let error = config(Some(&path), &DERIVING).unwrap_err();
        assert!(
            error.contains(name) && error.contains("not a MaxMind DB file"),
            "{error}"
        );
    }
    let error = config(Some(&dir.path().join("missing.mmdb")), &DERIVING).unwrap_err();
    assert!(error.contains("missing.mmdb"), "{error}");

    // Damaged copies: 40 bytes changed in each of 30 copies, spread over the whole file (its
    // search tree is nearly all of it), and 5 bytes in each of 30 more, in its last 3,000
    // bytes (the records and the metadata).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let probes: Vec<IpAddr> = (0..2_000)
        .map(|i| {
            let n = next();
            if i % 2 == 0 {
                IpAddr::V4((n as u32).into())
            } else {
                IpAddr::V6((u128::from(n) << 64 | u128::from(next())).into())
            }
        })
        .collect();
    let (mut opened, mut refused) = (0, 0);
    for copy in 0..60 {
        let mut bytes = good.clone();
        let (changes, zone) = if copy < 30 {
            (40, 0..bytes.len())
        } else {
            (5, bytes.len() - 3_000..bytes.len())
        };
        for _ in 0..changes {
            let at = zone.start + (next() % zone.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let path = dir.path().join(format!("damaged-{copy}.mmdb"));
        std::fs::write(&path, &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| match CountryDb::open(&path) {
            Ok(db) => {
                for ip in &probes {
                    if let Some(country) = db.country(*ip) {
                        assert!(Country::new(country.as_str()).is_some());
                    }
                }
                true
            }
            Err(error) => {
                let text = error.to_string();
                assert!(text.contains(&format!("damaged-{copy}.mmdb")), "{text}");
                false
            }
        });
        if outcome.expect("a damaged database panicked") {
            opened += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        opened > 0 && refused > 0,
        "{opened} damaged copies opened, {refused} refused: one way was not exercised"
    );
}

/// `check` prints the database it read (type, build date, layout); with a file that is not a
/// database it fails naming it; `explain` shows the rule and the sample's country field.
#[test]
fn check_and_explain_show_the_database_and_the_derived_field() {
    let dir = tempfile::tempdir().unwrap();
    let ring = common::write_keyring(dir.path());
    let shipped = common::repo().join("config/pipeline.toml");
    let mut text = std::fs::read_to_string(&shipped).unwrap();
    for (from, to) in DERIVING {
        text = text.replacen(from, to, 1);
    }
    // The shipped config's relative paths, made absolute for a copy in the test's directory.
    let text = text.replace("\"../", &format!("\"{}/", common::repo().display()));
    let write = |name: &str, db: &std::path::Path| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "{text}\n[geoip]\ndatabase = {:?}\n",
                db.display().to_string()
            ),
        )
        .unwrap();
        path
    };
    let good = write("good.toml", &database());
    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"not a database").unwrap();
    let bad = write("bad.toml", &junk);
    let s = |p: &std::path::Path| p.display().to_string();
    let (ok, said) =
        common::process::cli(&["check", "--config", &s(&good), "--keyring", &s(&ring)]);
    let (explained_ok, explained) =
        common::process::cli(&["explain", "--config", &s(&good), "--keyring", &s(&ring)]);
    let (bad_ok, bad_said) =
        common::process::cli(&["check", "--config", &s(&bad), "--keyring", &s(&ring)]);
    assert!(ok, "{said}");
    assert!(
        said.contains("[geoip] database: ")
            && said.contains("\"country ipvAll\", built 2026-06-01")
            && said.contains("countries read from country_code"),
        "{said}"
    );
    assert!(explained_ok, "{explained}");
    assert!(
        explained.contains("ip-truncate /24 /48, derive country")
            && explained.contains("callee_ip_country: null | string"),
        "{explained}"
    );
    assert!(!bad_ok, "{bad_said}");
    assert!(
        bad_said.contains("junk.mmdb") && bad_said.contains("is not a MaxMind DB file"),
        "{bad_said}"
    );
}
