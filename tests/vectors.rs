//! The Rust code against vectors computed independently by tests/vectors/make_vectors.py (spec
//! v1) and tests/vectors/make_vectors_v2.py (docs/formats.md's later formats: version-2
//! envelopes, pseudonymisation domains, id sub-classes), with Python's hmac and the
//! `cryptography` package.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pseudonymizer::envelope;
use pseudonymizer::ip::parse_ip;
use pseudonymizer::keys::{
    derive, PseudonymKey, SealKey, Secret, INFO_AES_GCM, INFO_CRYPTOPAN, INFO_HMAC,
};
use pseudonymizer::phone::PhoneCanon;
use pseudonymizer::token::{self, TokenClass};
use serde_json::Value as Json;

fn vectors() -> Json {
    let text = std::fs::read_to_string(common::repo().join("tests/vectors/vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn keys(v: &Json) -> (PseudonymKey, SealKey, Secret, Secret) {
    let p = Secret::from_b64(v["pseudonym_key"]["secret_b64"].as_str().unwrap()).unwrap();
    let e = Secret::from_b64(v["encryption_key"]["secret_b64"].as_str().unwrap()).unwrap();
    (
        PseudonymKey::new(v["pseudonym_key"]["id"].as_str().unwrap(), &p),
        SealKey::new(v["encryption_key"]["id"].as_str().unwrap(), &e),
        p,
        e,
    )
}

#[test]
fn working_keys_match_hkdf_vectors() {
    let v = vectors();
    let (_, _, p, e) = keys(&v);
    assert_eq!(
        hex(derive(&p, INFO_HMAC).as_ref()),
        v["working_keys_hex"]["hmac"]
    );
    assert_eq!(
        hex(derive(&p, INFO_CRYPTOPAN).as_ref()),
        v["working_keys_hex"]["cryptopan"]
    );
    assert_eq!(
        hex(derive(&e, INFO_AES_GCM).as_ref()),
        v["working_keys_hex"]["aes_256_gcm"]
    );
}

#[test]
fn every_token_class_matches_its_vector() {
    let v = vectors();
    let (pkey, _, _, _) = keys(&v);
    let phone = PhoneCanon::new("ID").unwrap();
    let cases = v["tokens"].as_array().unwrap();
    let mut classes_seen = std::collections::BTreeSet::new();
    for case in cases {
        let class = TokenClass::parse(case["class"].as_str().unwrap()).unwrap();
        let input = case["input"].as_str().unwrap();
        let (used, canonical) = token::canonical(class, input, &phone);
        assert_eq!(used.as_str(), case["token_class"], "class of {input:?}");
        assert_eq!(
            canonical,
            case["canonical"].as_str().unwrap(),
            "canonical of {input:?}"
        );
        let token = token::token(&pkey, used, canonical.as_bytes());
        assert_eq!(token.as_str(), case["token"], "token of {input:?}");
        classes_seen.insert(used.as_str().to_owned());
    }
    assert_eq!(
        classes_seen.into_iter().collect::<Vec<_>>(),
        ["email", "id", "ip", "ip-raw", "phone", "phone-raw"],
        "vectors cover every class"
    );
}

#[test]
fn cryptopan_matches_reference_algorithm() {
    let v = vectors();
    let (pkey, _, _, _) = keys(&v);
    for case in v["cryptopan"].as_array().unwrap() {
        let input = parse_ip(case["input"].as_str().unwrap()).unwrap();
        let output = match input {
            std::net::IpAddr::V4(a) => pkey.cryptopan().anonymize_v4(a).to_string(),
            std::net::IpAddr::V6(a) => pkey.cryptopan().anonymize_v6(a).to_string(),
        };
        assert_eq!(output, case["output"], "Crypto-PAn of {}", case["input"]);
    }
}

#[test]
fn envelopes_match_vectors_and_open() {
    let v = vectors();
    let (_, seal, _, _) = keys(&v);
    let keyset = common::keyset();
    for case in v["envelopes"].as_array().unwrap() {
        let path = case["field_path"].as_str().unwrap();
        let nonce: [u8; 12] = (0..12)
            .map(|i| {
                u8::from_str_radix(&case["nonce_hex"].as_str().unwrap()[2 * i..2 * i + 2], 16)
                    .unwrap()
            })
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let plaintext = STANDARD
            .decode(case["plaintext_b64"].as_str().unwrap())
            .unwrap();
        let expected = STANDARD
            .decode(case["envelope_b64"].as_str().unwrap())
            .unwrap();
        let mut sealed = Vec::new();
        // Spec v1's envelopes: no longer sealed by the program, still opened.
        envelope::seal_v1_with_nonce(&seal, path, &nonce, &plaintext, &mut sealed);
        assert_eq!(sealed, expected, "envelope for {path}");
        assert_eq!(keyset.open(path, &expected).unwrap(), plaintext);
        // The field path is bound: the same envelope does not open for another field.
        assert_eq!(
            keyset.open("elsewhere", &expected),
            Err(envelope::OpenError::Authentication)
        );
    }
}

/// Every phone case of tests/vectors/make_phone_vectors.py: the reference (Python's
/// `phonenumbers`, a faithful port of Google's libphonenumber) read each input with a default
/// region; the Rust canonicalization must give the same class and canonical form, through the
/// full parse, as the worker reads it (fast path, memory, full parse) and through the fast path
/// wherever it answers.
#[test]
fn phone_canonical_forms_match_the_reference_in_every_region_and_shape() {
    let text =
        std::fs::read_to_string(common::repo().join("tests/vectors/phone_vectors.json")).unwrap();
    let v: Json = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    let mut canons = std::collections::HashMap::new();
    let mut shapes = std::collections::BTreeSet::new();
    let mut regions = std::collections::BTreeSet::new();
    let mut wrong = Vec::new();
    let mut fast_answers = 0;
    for case in cases {
        let region = case["region"].as_str().unwrap();
        let input = case["input"].as_str().unwrap();
        let canon = canons
            .entry(region.to_owned())
            .or_insert_with(|| PhoneCanon::new(region).unwrap());
        let expected = (
            case["class"].as_str().unwrap(),
            case["canonical"].as_str().unwrap(),
        );
        let fast = pseudonymizer::phone::fast::canonical(canon.region(), input.trim());
        if fast.is_some() {
            fast_answers += 1;
        }
        for (path, (class, canonical)) in [
            ("full parse", canon.canonical_slow(input)),
            ("as the worker reads it", canon.canonical(input)),
        ]
        .into_iter()
        .chain(fast.map(|answer| ("fast path", answer)))
        {
            if (class.as_str(), canonical.as_ref()) != expected {
                wrong.push(format!(
                    "{region} {:?} {input:?} ({path}): got {} {canonical:?}, reference {} {:?}",
                    case["shape"],
                    class.as_str(),
                    expected.0,
                    expected.1
                ));
            }
        }
        shapes.insert(case["shape"].as_str().unwrap());
        regions.insert(region);
    }
    assert!(
        wrong.is_empty(),
        "{} answers to {} cases differ from the reference:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert!(regions.len() >= 12, "regions covered: {regions:?}");
    // The vectors are written in many shapes, the fast ones among them.
    assert!(
        fast_answers * 5 >= cases.len(),
        "the fast path answered {fast_answers} of {} cases",
        cases.len()
    );
    for shape in [
        "e164",
        "international",
        "national",
        "regrouped",
        "idd-00",
        "idd-region",
        "country-code-no-plus",
        "tel-uri",
        "extension",
        "full-width",
        "arabic-indic",
        "blanks",
        "junk",
    ] {
        assert!(shapes.contains(shape), "no {shape} case");
    }
}

fn vectors_v2() -> Json {
    let text =
        std::fs::read_to_string(common::repo().join("tests/vectors/vectors_v2.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Version-2 envelopes (XAES-256-GCM) made here with the vectors' nonces are byte for byte the
/// Python ones, and open; the working key is the documented HKDF.
#[test]
fn version_2_envelopes_match_python_vectors_and_open() {
    let v = vectors_v2();
    let (_, seal, _, e) = keys(&v);
    assert_eq!(
        hex(derive(&e, pseudonymizer::keys::INFO_XAES_GCM).as_ref()),
        v["xaes_256_gcm_key_hex"]
    );
    let keyset = common::keyset();
    let cases = v["envelopes"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let path = case["field_path"].as_str().unwrap();
        let nonce: [u8; 24] = unhex(case["nonce_hex"].as_str().unwrap())
            .try_into()
            .unwrap();
        let plaintext = STANDARD
            .decode(case["plaintext_b64"].as_str().unwrap())
            .unwrap();
        let expected = STANDARD
            .decode(case["envelope_b64"].as_str().unwrap())
            .unwrap();
        let mut sealed = Vec::new();
        envelope::seal_with_nonce(&seal, path, &nonce, &plaintext, &mut sealed);
        assert_eq!(hex(&sealed), hex(&expected), "envelope for {path}");
        assert_eq!(envelope::version(&expected), Ok(2));
        assert_eq!(keyset.open(path, &expected).unwrap(), plaintext);
        assert_eq!(
            keyset.open("elsewhere", &expected),
            Err(envelope::OpenError::Authentication)
        );
        // The key id in the header is bound too.
        let mut swapped = expected.clone();
        swapped[2] ^= 1;
        assert!(keyset.open(path, &swapped).is_err());
    }
}

/// Envelopes sealed here, with their random salts and nonces, open in Python (the same script,
/// `open` mode).
#[test]
fn envelopes_sealed_here_open_in_python() {
    let v = vectors_v2();
    let (_, seal, _, _) = keys(&v);
    let plaintexts: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        "Halo 👋".as_bytes().to_vec(),
        (0..=255u8).cycle().take(5000).collect(),
    ];
    let mut cases = Vec::new();
    for (i, plaintext) in plaintexts.iter().enumerate() {
        let path = format!("field{i}.sub");
        let mut sealed = Vec::new();
        envelope::seal_into(&seal, &path, plaintext, &mut sealed);
        cases.push(
            serde_json::json!({"field_path": path, "envelope_b64": STANDARD.encode(&sealed)}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envelopes.json");
    std::fs::write(&file, serde_json::to_string(&cases).unwrap()).unwrap();
    let output = std::process::Command::new(common::python())
        .arg(common::repo().join("tests/vectors/make_vectors_v2.py"))
        .arg("open")
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python could not open: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let opened: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    let opened: Vec<Vec<u8>> = opened.iter().map(|b| STANDARD.decode(b).unwrap()).collect();
    assert_eq!(opened, plaintexts);
}

/// Tokens in named domains and of id sub-classes, and Crypto-PAn in a domain, as Python
/// computes them; without either, today's tokens.
#[test]
fn domain_and_sub_class_tokens_match_python_vectors() {
    let v = vectors_v2();
    let (pkey, _, p, _) = keys(&v);
    for (domain, expected) in v["domain_keys_hex"].as_object().unwrap() {
        let info = pseudonymizer::keys::domain_info(domain, "hmac-sha256");
        assert_eq!(hex(derive(&p, &info).as_ref()), expected["hmac"]);
        let info = pseudonymizer::keys::domain_info(domain, "cryptopan");
        assert_eq!(hex(derive(&p, &info).as_ref()), expected["cryptopan"]);
    }
    let mut tokens = std::collections::HashSet::new();
    let cases = v["tokens"].as_array().unwrap();
    for case in cases {
        let key = match case["domain"].as_str() {
            Some(domain) => pkey.in_domain(domain),
            None => PseudonymKey::new(pkey.id(), &p),
        };
        let class = TokenClass::parse(case["class"].as_str().unwrap()).unwrap();
        let canonical = case["canonical"].as_str().unwrap();
        let token = token::token(&key, class, canonical.as_bytes());
        assert_eq!(token.as_str(), case["token"], "{case}");
        tokens.insert(token.as_str().to_owned());
    }
    assert_eq!(
        tokens.len(),
        cases.len(),
        "every domain and role gives its own token"
    );
    for case in v["cryptopan"].as_array().unwrap() {
        let key = match case["domain"].as_str() {
            Some(domain) => pkey.in_domain(domain),
            None => PseudonymKey::new(pkey.id(), &p),
        };
        let input: std::net::Ipv4Addr = case["input"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            key.cryptopan().anonymize_v4(input).to_string(),
            case["output"],
            "{case}"
        );
    }
}

/// Record keys (`key_class`) as Python computes them: a key that is not UTF-8 is tokenized
/// from its bytes in its class's raw class, so distinct byte strings get distinct tokens
/// (before, a lossy conversion made `device-\xff\x01` and `device-\u{fffd}\x01` one token).
#[test]
fn record_key_tokens_match_python_vectors_and_non_utf8_keys_stay_distinct() {
    let v = vectors_v2();
    let (pkey, _, _, _) = keys(&v);
    let phone = pseudonymizer::phone::PhoneCanon::new("ID").unwrap();
    let cases = v["record_keys"].as_array().unwrap();
    let mut tokens = std::collections::HashSet::new();
    for case in cases {
        let class = TokenClass::parse(case["key_class"].as_str().unwrap()).unwrap();
        let key = unhex(case["key_hex"].as_str().unwrap());
        let token = pseudonymizer::worker::route::key_token(&pkey, class, &key, None, &phone, None);
        assert_eq!(token, case["token"], "{case}");
        tokens.insert(token);
    }
    assert_eq!(tokens.len(), cases.len(), "every key its own token");
}

/// A KMS-wrapped keyring's manifest (docs/formats.md, "KMS-wrapped keyring") as Python
/// computes it: the digest the file's `manifest` wraps, from the same document.
#[test]
fn kms_manifest_digest_matches_python_vector() {
    use sha2::Digest as _;
    let v = vectors_v2();
    let case = &v["kms_manifest"];
    let ring =
        pseudonymizer::keys::WrappedKeyring::from_text(&case["keyring"].to_string()).unwrap();
    let digest = sha2::Sha256::digest(ring.manifest_text().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, case["sha256"].as_str().unwrap());
}

/// docs/formats.md §5: subject ids, registry records and an erasure notice, computed in Python
/// from the docs alone.
#[test]
fn subject_ids_records_and_notices_match_python() {
    use pseudonymizer::keys::{Secret, SubjectKey};
    use pseudonymizer::subjects::{self, Notice, RegistryRecord};
    let v = vectors_v2();
    let s = &v["subjects"];
    let secret = Secret::from_b64(s["secret"].as_str().unwrap()).unwrap();
    let key = SubjectKey::new(s["key_id"].as_str().unwrap(), &secret);
    let ids = s["ids"].as_array().unwrap();
    assert!(ids.len() >= 5);
    for case in ids {
        let class = TokenClass::parse(case["class"].as_str().unwrap()).unwrap();
        let canonical = case["canonical"].as_str().unwrap();
        let bytes = subjects::subject_bytes(&key, class, canonical.as_bytes());
        assert_eq!(
            subjects::subject_text(&key, &bytes),
            case["subject_id"].as_str().unwrap(),
            "{case}"
        );
        let hint = subjects::subject_hint(&key, class, canonical.as_bytes());
        assert_eq!(
            subjects::hint_text(hint),
            case["hint"].as_str().unwrap(),
            "{case}"
        );
    }
    // The same identifier through the CLI's canonical form: a request line's `+65 9123 4567`.
    let phone = pseudonymizer::phone::PhoneCanon::new("ID").unwrap();
    let (class, canonical) = token::canonical(TokenClass::Phone, " +65 9123 4567 ", &phone);
    let bytes = subjects::subject_bytes(&key, class, canonical.as_bytes());
    assert_eq!(
        subjects::subject_text(&key, &bytes),
        ids[0]["subject_id"].as_str().unwrap()
    );
    let records = s["records"].as_array().unwrap();
    let v1 = s["records_v1"].as_array().unwrap();
    assert!(records.len() >= 4 && !v1.is_empty());
    for record in records.iter().chain(v1) {
        let (k, value) = (
            record["key"].as_str().unwrap(),
            record["value"].as_str().unwrap(),
        );
        let parsed = RegistryRecord::parse(k.as_bytes(), value.as_bytes()).unwrap();
        assert_eq!(parsed.key(), k);
        assert_eq!(parsed.hint().is_some(), value.contains("subject/v2"));
        // Our writer's text, compared as JSON (field order is not part of the format).
        let ours: Json = serde_json::from_str(&parsed.to_json()).unwrap();
        assert_eq!(ours, serde_json::from_str::<Json>(value).unwrap());
    }
    let notice = &s["notice"];
    let parsed = Notice::parse(
        notice["key"].as_str().unwrap().as_bytes(),
        notice["value"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    let pkey = common::keyset().pseudonym().unwrap().clone();
    let default = token::token(&pkey, TokenClass::Phone, b"+6591234567");
    let marketing = token::token(
        &pkey.in_domain("marketing"),
        TokenClass::Phone,
        b"+6591234567",
    );
    let tokens: Vec<&str> = parsed.tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(tokens, [default.as_str(), marketing.as_str()]);
}
