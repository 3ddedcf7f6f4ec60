#![no_main]
//! See pseudonymizer::hostile::protobuf.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pseudonymizer::hostile::{self, Setup};

static SETUP: LazyLock<Setup> =
    LazyLock::new(|| Setup::new(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))));

fuzz_target!(|data: &[u8]| hostile::protobuf(&SETUP, data));
