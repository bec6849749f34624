//! Helpers shared by the integration tests: running the real `stagegate` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The built binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stagegate"))
}

/// The repository root (where `scenarios/` lives).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `stagegate ARGS` from the repository root and waits for it.
pub fn stagegate(args: &[&str]) -> Output {
    Command::new(bin()).args(args).current_dir(root()).output().expect("the binary runs")
}

/// The one run folder a `--report-dir` holds, and its parsed `report.json`.
pub fn only_report(dir: &Path) -> serde_json::Value {
    let runs: Vec<_> = std::fs::read_dir(dir).expect("report dir exists").flatten().collect();
    assert_eq!(runs.len(), 1, "expected one run folder in {}", dir.display());
    let text = std::fs::read_to_string(runs[0].path().join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// Stdout and stderr as text, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
