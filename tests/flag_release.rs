//! Flags as the release instrument: a ROLLBACK states the flag change that undoes it,
//! hands it to `on_verdict`, and writes it as a flagd file that OpenFeature's flagd
//! provider (a real client, offline file mode) reads back as the restored values.

mod common;

use std::process::Command;

use common::{only_report, stagegate, text};

/// Each flag's value for each key, as the flagd provider reads `file`.
fn read_with_flagd(file: &std::path::Path, wanted: &serde_json::Value, keys: &[&str]) -> serde_json::Value {
    common::require_python(
        &["openfeature.contrib.provider.flagd"],
        "openfeature-provider-flagd (scripts/test installs it)",
    );
    let out = Command::new("python3")
        .arg(common::root().join("tests/flagd_client.py"))
        .arg(file)
        .arg(wanted.to_string())
        .args(keys)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn a_rollback_names_the_flag_change_hands_it_to_on_verdict_and_writes_it_for_flagd() {
    let reports = tempfile::tempdir().unwrap();
    let seen = reports.path().join("seen.env");
    let action = format!(
        r#"on_verdict={{rollback: [sh, -c, 'printf "%s\n%s\n" "$STAGEGATE_ROLLBACK_FLAGS" "$STAGEGATE_ROLLBACK_FILE" > {}']}}"#,
        seen.display()
    );
    let out = stagegate(&[
        "run",
        "scenarios/rollback-demo.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        &action,
        "--set",
        common::RELAXED_HEALTH,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("rollback: set new-enricher true → false (as in `baseline-resets`, the last stage that held)"),
        "{stdout}"
    );
    let report = only_report(reports.path());
    let plan = &report["rollback"];
    assert_eq!(plan["failed_stage"], "candidate-resets");
    assert_eq!(plan["held_stage"], "baseline-resets");
    assert_eq!(plan["changes"][0]["flag"], "new-enricher");
    assert_eq!(plan["changes"][0]["from"], serde_json::json!({ "fixed": true }));
    assert_eq!(plan["changes"][0]["to"], serde_json::json!({ "fixed": false }));

    let file = std::path::PathBuf::from(plan["flagd_file"].as_str().unwrap());
    let given = std::fs::read_to_string(&seen).unwrap();
    let mut lines = given.lines();
    assert_eq!(lines.next(), Some(r#"{"new-enricher":false}"#), "{given}");
    assert_eq!(lines.next().map(std::path::PathBuf::from), Some(std::path::absolute(&file).unwrap()), "{given}");

    // A service reading the file gets the restored value, whatever its own default.
    let read =
        read_with_flagd(&file, &serde_json::json!({ "new-enricher": ["boolean", true] }), &["order-1", "order-2"]);
    for key in ["order-1", "order-2"] {
        assert_eq!(read["new-enricher"][key]["value"], false, "{read}");
        assert_eq!(read["new-enricher"][key]["error"], serde_json::Value::Null, "{read}");
    }
}

#[test]
fn a_promoted_run_has_no_rollback_plan() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "tests/scenarios/tiny.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        "stages[0].faults=[]",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let report = only_report(reports.path());
    assert_eq!(report["rollback"], serde_json::Value::Null);
    assert!(common::run_folders(reports.path()).iter().all(|d| !d.join("rollback.flagd.json").exists()));
}
