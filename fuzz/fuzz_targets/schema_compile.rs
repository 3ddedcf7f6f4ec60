#![no_main]
//! See pseudonymizer::hostile::schema.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pseudonymizer::hostile::{self, Setup};

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    // apache-avro 0.21 panics inside `Schema::parse_str` on some invalid names (avro-rs issues
    // 496 and 547, fixed in 0.22); the product catches exactly that (registry::parse_schema).
    // libfuzzer-sys's hook would abort on it before the catch, so that one panic site is let
    // through to unwind; every other panic still aborts, i.e. is a crash.
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let known = info
            .location()
            .is_some_and(|l| l.file().contains("apache-avro-0.21.0/src/schema.rs"));
        if !known {
            abort(info)
        }
    }));
    Setup::new(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")))
});

fuzz_target!(|data: &[u8]| hostile::schema(&SETUP, data));
