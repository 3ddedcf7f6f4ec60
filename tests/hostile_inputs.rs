//! Hostile bytes, replayed by `cargo test`: every seed of the fuzz targets (`fuzz/corpus/`)
//! and every input a fuzzer ever found a defect with (`fuzz/regressions/`, kept after the fix),
//! through the same checks the targets run (`pseudonymizer::hostile`). And length prefixes that
//! claim gigabytes: the worker's path allocates no more than a small multiple of the input.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use pseudonymizer::hostile::{self, Setup};
use pseudonymizer::transform::write_long;
use pseudonymizer::worker::route::frame;

/// Counts the bytes allocated by this test binary, to bound what hostile input can claim.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

type Check = fn(&Setup, &[u8]);

const TARGETS: [(&str, Check); 10] = [
    ("transform_differential", hostile::transform),
    ("envelope_open", hostile::envelope_open),
    ("keyring_parse", hostile::keyring),
    ("config_parse", hostile::config),
    ("route", hostile::route),
    ("schema_compile", hostile::schema),
    ("phone_fast", hostile::phone_fast),
    ("json_transform", hostile::json),
    ("json_schema_derive", hostile::json_schema),
    ("protobuf_transform", hostile::protobuf),
];

#[test]
fn every_seed_and_every_input_a_fuzzer_found_passes_its_check() {
    let setup = Setup::new(&common::repo());
    let mut replayed = 0;
    for (target, check) in TARGETS {
        for folder in ["fuzz/corpus", "fuzz/regressions"] {
            let dir = common::repo().join(folder).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&setup, &data));
                assert!(outcome.is_ok(), "{} fails its check", path.display());
                replayed += 1;
            }
        }
    }
    // Every target has seeds.
    assert!(replayed >= 30, "{replayed} inputs replayed");
}

/// A call whose first string (`event_id`) claims `claimed` bytes, framed for the router.
fn claiming(claimed: i64) -> Vec<u8> {
    let mut avro = Vec::new();
    write_long(&mut avro, claimed);
    avro.extend_from_slice(b"short");
    frame(1, &avro)
}

#[test]
fn length_prefixes_claiming_gigabytes_allocate_nothing_of_the_kind() {
    let setup = Setup::new(&common::repo());
    let plan = setup.engine.plan("comms.v1.MessageEvent").unwrap();
    let mut cases = Vec::new();
    for claimed in [1 << 20, 1 << 31, 1 << 40, i64::MAX / 2] {
        cases.push(claiming(claimed));
        // An array block (recipients) claiming that many items, and a byte size.
        let mut avro = Vec::new();
        for text in ["id", "msg"] {
            write_long(&mut avro, text.len() as i64);
            avro.extend_from_slice(text.as_bytes());
        }
        write_long(&mut avro, 0); // occurred_at
        write_long(&mut avro, 0); // channel
        write_long(&mut avro, 3);
        avro.extend_from_slice(b"+62");
        write_long(&mut avro, -claimed);
        write_long(&mut avro, claimed);
        cases.push(frame(2, &avro));
    }
    for record in &cases {
        let before = ALLOCATED.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let mut out = Vec::with_capacity(4096);
        let outcome =
            setup
                .router
                .process(&setup.engine, &setup.active, None, Some(record), &mut out);
        assert!(
            outcome.is_err(),
            "a record that ends early is dead-lettered"
        );
        let peak = PEAK.load(Ordering::Relaxed) - before;
        assert!(
            peak <= 64 * record.len() + (1 << 20),
            "{peak} bytes allocated for a {}-byte record",
            record.len()
        );
        // The fast path alone, too.
        let mut out = Vec::new();
        assert!(setup
            .engine
            .transform(plan, &setup.active, &record[5..], &mut out)
            .is_err());
    }
}
