//! Fuzzes the scenario loader: any bytes, as a scenario file next to the example
//! scenarios (so relative data paths can resolve), with `--set` overrides taken from
//! the input's first line. Loading may refuse the input but must never panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stagegate::scenario::{self, LoadOptions, overrides};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut options = LoadOptions { env: Box::new(|name| (name == "RATE").then(|| "50/s".to_string())), ..Default::default() };
    if let Some(first) = text.lines().next()
        && let Some(arg) = first.strip_prefix("#set ")
        && let Ok(o) = overrides::parse(arg)
    {
        options.overrides.push(o);
    }
    let _ = scenario::load_str(Path::new("../scenarios/fuzzed.yaml"), &text, &options);
});
