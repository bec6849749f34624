//! Fuzzes the record schema loader and, when a schema loads, the generator: any bytes
//! as a schema file; loading may refuse it but must never panic, and a loaded schema
//! must generate records.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use stagegate::data::{Generator, Schema};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(schema) = Schema::parse(Path::new("fuzzed.yaml"), &text) {
        let mut generator = Generator::new(Arc::new(schema), 1);
        for _ in 0..3 {
            generator.next_record();
        }
    }
});
