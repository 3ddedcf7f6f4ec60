//! Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`): valid inputs of every kind
//! the targets read, including valid Avro that common writers do not emit (arrays in blocks
//! with a negative count and a byte size). Run once, the output is checked in:
//!
//!     cargo run --example fuzz_seeds

use std::path::Path;

use apache_avro::types::Value;
use pseudonymizer::envelope;
use pseudonymizer::generate::{Generator, Kind};
use pseudonymizer::hostile::Setup;
use pseudonymizer::keys::{Kek, Keyring};
use pseudonymizer::worker::route::frame;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Setup::new(repo);
    let corpus = repo.join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let mut generator = Generator::new(99);
    for i in 0..12 {
        let (selector, kind, name, id) = if i % 2 == 0 {
            (0u8, Kind::Call, "comms.v1.CallEvent", 1)
        } else {
            (1u8, Kind::Message, "comms.v1.MessageEvent", 2)
        };
        let plan = setup.engine.plan(name).unwrap();
        let event = generator.event(kind);
        let avro = apache_avro::to_avro_datum(&plan.input, event).unwrap();
        let mut data = vec![selector];
        data.extend_from_slice(&avro);
        write("transform_differential", &format!("event-{i}"), &data);
        let mut record = vec![13u8];
        record.extend_from_slice(b"+628123456789");
        record.extend_from_slice(&frame(id, &avro));
        write("route", &format!("record-{i}"), &record);
    }
    // A message whose arrays are written as one block with a negative count and a byte size.
    let plan = setup.engine.plan("comms.v1.MessageEvent").unwrap();
    let event = generator.event(Kind::Message);
    if let Some(bytes) = negative_blocks(&plan.input, event) {
        let mut data = vec![1u8];
        data.extend_from_slice(&bytes);
        write("transform_differential", "message-negative-blocks", &data);
    }
    let key = setup.keys.seal_key("e-fuzz").unwrap();
    for (path, plaintext) in [("body", &b"hello"[..]), ("attachments.url", b"https://x/y")] {
        let mut sealed = Vec::new();
        envelope::seal_into(key, path, plaintext, &mut sealed);
        let mut data = path.as_bytes().to_vec();
        data.push(0);
        data.extend_from_slice(&sealed);
        write(
            "envelope_open",
            &format!("envelope-{}", path.replace('.', "-")),
            &data,
        );
    }
    let dir = std::env::temp_dir().join(format!("fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ring = Keyring::generate();
    ring.save(&dir.join("clear.json")).unwrap();
    write(
        "keyring_parse",
        "clear",
        &std::fs::read(dir.join("clear.json")).unwrap(),
    );
    ring.set_kek(Some(Kek::from_secret(&setup.kek_secret)));
    ring.save(&dir.join("sealed.json")).unwrap();
    write(
        "keyring_parse",
        "sealed",
        &std::fs::read(dir.join("sealed.json")).unwrap(),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    write(
        "config_parse",
        "shipped",
        &std::fs::read(repo.join("config/pipeline.toml")).unwrap(),
    );
    // Writer schemas as a registry answers them: the shipped ones, and the call schema with a
    // field added (a producer upgrade) and with a field whose type changed.
    for name in ["comms.v1.CallEvent", "comms.v1.MessageEvent"] {
        let text = std::fs::read_to_string(repo.join(format!("schemas/{name}.avsc"))).unwrap();
        write("schema_compile", name, text.as_bytes());
    }
    let call = std::fs::read_to_string(repo.join("schemas/comms.v1.CallEvent.avsc")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&call).unwrap();
    let fields = json["fields"].as_array_mut().unwrap();
    fields.push(serde_json::json!({"name": "imsi", "type": ["null", "string"], "default": null}));
    write("schema_compile", "call-v2", json.to_string().as_bytes());
    json["fields"].as_array_mut().unwrap()[5] =
        serde_json::json!({"name": "caller", "type": "long"});
    write(
        "schema_compile",
        "call-type-changed",
        json.to_string().as_bytes(),
    );
}

/// The event's Avro binary with its arrays rewritten as single blocks of negative count and a
/// byte size (Avro spec: "If a block's count is negative, its absolute value is used, and the
/// count is followed immediately by a long block size").
fn negative_blocks(schema: &apache_avro::Schema, event: Value) -> Option<Vec<u8>> {
    let Value::Record(fields) = event else {
        return None;
    };
    let apache_avro::Schema::Record(record) = schema else {
        return None;
    };
    let mut out = Vec::new();
    for ((_, value), field) in fields.into_iter().zip(&record.fields) {
        match (&field.schema, value) {
            (apache_avro::Schema::Array(array), Value::Array(items)) if !items.is_empty() => {
                let mut body = Vec::new();
                for item in &items {
                    body.extend(apache_avro::to_avro_datum(&array.items, item.clone()).ok()?);
                }
                pseudonymizer::transform::write_long(&mut out, -(items.len() as i64));
                pseudonymizer::transform::write_long(&mut out, body.len() as i64);
                out.extend(body);
                pseudonymizer::transform::write_long(&mut out, 0);
            }
            (schema, value) => out.extend(apache_avro::to_avro_datum(schema, value).ok()?),
        }
    }
    Some(out)
}
