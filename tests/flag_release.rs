//! Flags as the release instrument, with real OpenFeature clients: a ROLLBACK states
//! the flag change that undoes it, hands it to `on_verdict`, and writes it as a flagd
//! file that OpenFeature's flagd provider (offline file mode) reads back; a stage's
//! flagd file with a split reads back with its shares; a service evaluating through the
//! OpenFeature SDK's OFREP provider sees each stage and split as the report says; and
//! `stagegate flags audit` finds each kind of governance finding and gates on errors.

mod common;

use std::process::Command;

use common::{only_report, stagegate, text};

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
    let read = common::read_with_flagd(
        &file,
        &serde_json::json!({ "new-enricher": ["boolean", true] }),
        &["order-1", "order-2"],
    );
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

#[test]
fn the_flag_audit_reports_each_kind_of_finding_and_gates_on_errors() {
    let out = stagegate(&[
        "flags",
        "audit",
        "tests/flags/rehearsal.yaml",
        "--inventory",
        "tests/flags/inventory.flagd.json",
        "--today",
        "2026-12-01",
        "--format",
        "json",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let found: Vec<(String, String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["flag"].as_str().unwrap().into(),
                f["kind"].as_str().unwrap().into(),
                f["severity"].as_str().unwrap().into(),
            )
        })
        .collect();
    let has = |flag: &str, kind: &str, severity: &str| {
        assert!(
            found.contains(&(flag.into(), kind.into(), severity.into())),
            "no {severity} `{kind}` for `{flag}` in {found:?}"
        );
    };
    has("orphan-flag", "missing-owner", "error");
    has("unsorted-flag", "missing-category", "error");
    has("kill-switch", "unknown-category", "error");
    has("old-promo", "expired", "error");
    has("endless-test", "no-expiry", "error");
    has("ancient-release", "too-old", "warning");
    has("admin-tools", "permanent-with-expiry", "warning");
    has("Legacy_Flag", "naming", "error");
    has("idle-flag", "unused", "warning");
    has("shadow-pricing", "undefined", "error");
    has("old-promo", "unrehearsed", "warning");
    // The rehearsed, well-kept flag has nothing against it.
    assert!(found.iter().all(|f| f.0 != "new-checkout"), "{found:?}");
    assert_eq!(doc["errors"], 7);

    // The table, and severities a team turns down: only warnings left, exit 0.
    let mut args =
        vec!["flags", "audit", "tests/flags/rehearsal.yaml", "--inventory", "tests/flags/inventory.flagd.json"];
    args.extend_from_slice(&["--today", "2026-12-01"]);
    let table = stagegate(&args);
    assert!(text(&table).0.contains("ERROR    shadow-pricing   undefined"), "{}", text(&table).0);
    for kind in ["missing-owner", "missing-category", "unknown-category", "expired", "no-expiry", "naming", "undefined"]
    {
        args.extend_from_slice(&["--severity"]);
        args.push(Box::leak(format!("{kind}=warning").into_boxed_str()));
    }
    let relaxed = stagegate(&args);
    assert_eq!(relaxed.status.code(), Some(0), "{:?}", text(&relaxed));
    assert!(text(&relaxed).0.contains("0 error(s), 20 warning(s)"), "{}", text(&relaxed).0);

    let clean = stagegate(&[
        "flags",
        "audit",
        "tests/flags/clean.yaml",
        "--inventory",
        "tests/flags/clean.flagd.json",
        "--today",
        "2026-12-01",
    ]);
    assert_eq!(clean.status.code(), Some(0), "{:?}", text(&clean));
    assert!(text(&clean).0.contains("1 flag(s) audited: 0 error(s), 0 warning(s)"), "{:?}", text(&clean));

    // Two scenarios that disagree about a flag: a finding, whichever comes first.
    let kinds = |files: [&str; 2]| {
        let mut args = vec!["flags", "audit", "--format", "json", "--today", "2026-12-01"];
        args.extend_from_slice(&files);
        let out = stagegate(&args);
        assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
        let doc: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
        let mut k: Vec<String> =
            doc["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap().to_string()).collect();
        k.sort();
        k
    };
    let one = kinds(["tests/flags/clean.yaml", "tests/flags/conflict.yaml"]);
    assert!(one.contains(&"conflicting-definition".to_string()) && one.contains(&"no-expiry".to_string()), "{one:?}");
    assert_eq!(one, kinds(["tests/flags/conflict.yaml", "tests/flags/clean.yaml"]));

    // Bad input: exit 2, naming what is wrong.
    for (args, says) in [
        (vec!["flags", "audit"], "nothing to audit"),
        (vec!["flags", "audit", "--inventory", "tests/flags/rehearsal.yaml"], "not JSON"),
        (vec!["flags", "audit", "tests/flags/clean.yaml", "--severity", "stale=error"], "unknown finding `stale`"),
        (vec!["flags", "audit", "tests/flags/clean.yaml", "--naming", "(["], "not a regular expression"),
        (vec!["flags", "audit", "tests/flags/clean.yaml", "--today", "tomorrow"], "--today `tomorrow`"),
    ] {
        let out = stagegate(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", text(&out));
        assert!(text(&out).1.contains(says), "{args:?}: {}", text(&out).1);
    }
}

#[test]
fn a_stage_flag_file_with_a_split_reads_back_in_the_flagd_provider_with_its_shares() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "tests/scenarios/flagd.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        "stages[1].flags={refuse-orders: {true: 30%}}",
    ]);
    assert!(matches!(out.status.code(), Some(0 | 1 | 3)), "{:?}", text(&out));
    let run = common::run_folders(reports.path())[0].clone();
    let keys: Vec<String> = (0..2000).map(|i| format!("order-{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let read = common::read_with_flagd(
        &run.join("flags.flagd.json"),
        &serde_json::json!({ "refuse-orders": ["boolean", false] }),
        &keys,
    );
    let values = read["refuse-orders"].as_object().unwrap();
    assert!(values.values().all(|v| v["error"].is_null()), "{read}");
    let on = values.values().filter(|v| v["value"] == true).count() as f64 / keys.len() as f64;
    // 2000 keys: the share is 30% within 3.5 points (about 3.4 standard errors).
    assert!((on - 0.30).abs() < 0.035, "flagd gave `true` to {:.1}% of keys", on * 100.0);
}

#[test]
fn a_service_reading_the_flagd_file_through_the_flagd_provider_puts_each_key_in_stagegates_cohort() {
    common::require_python(
        &["openfeature.contrib.provider.flagd"],
        "openfeature-provider-flagd (scripts/test installs it)",
    );
    // Run from elsewhere with a relative report folder: the target, which runs in the
    // scenario's folder, must still find the flag file (`{{ flags.file }}` is absolute).
    let here = tempfile::tempdir().unwrap();
    let scenario = common::root().join("tests/scenarios/flagd-sdk.yaml");
    let out = Command::new(common::bin())
        .args(["run", scenario.to_str().unwrap(), "--report-dir", "reports"])
        .current_dir(here.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    // The refused 30% fail `errors.rate < 1%`.
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report = only_report(&here.path().join("reports"));
    let variants = &report["stages"][0]["metrics"]["variants"];
    let (on, off) = (&variants["refuse-orders=true"], &variants["refuse-orders=false"]);
    // Key by key, flagd's bucketing and stagegate's agree: every order stagegate put in
    // the `true` cohort was refused by the service, and no other.
    assert!(on["requests"].as_u64().unwrap() > 0, "{variants}");
    assert_eq!(on["errors"], on["requests"], "{variants}");
    assert_eq!(off["errors"], 0, "{variants}");
}

#[test]
fn a_service_using_the_openfeature_ofrep_provider_sees_each_stage_and_split_as_the_report_says() {
    common::require_python(
        &["openfeature.contrib.provider.ofrep"],
        "openfeature-provider-ofrep (scripts/test installs it)",
    );
    let reports = tempfile::tempdir().unwrap();
    let evidence = reports.path().join("evidence.txt");
    let out = Command::new(common::bin())
        .args(["run", "tests/scenarios/ofrep-sdk.yaml", "--report-dir", reports.path().to_str().unwrap()])
        .env("STAGEGATE_TEST_EVIDENCE", &evidence)
        .current_dir(common::root())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(reports.path());
    // What the SDK answered, order by order, in the order the orders came.
    let seen: Vec<(String, bool)> = std::fs::read_to_string(&evidence)
        .unwrap()
        .lines()
        .map(|l| {
            let (key, value) = l.split_once(' ').unwrap();
            (key.to_string(), value == "true")
        })
        .collect();
    let mut at = 0;
    for (i, expected_share) in [(0, Some(0.0)), (1, None), (2, Some(1.0))] {
        let stage = &report["stages"][i];
        let sent = stage["metrics"]["data"]["sent"].as_u64().unwrap() as usize;
        let this: Vec<bool> = seen[at..at + sent].iter().map(|(_, v)| *v).collect();
        at += sent;
        let on = this.iter().filter(|v| **v).count();
        // The SDK's answers are the report's exposure, variant by variant...
        let exposure = &stage["flag_exposure"]["new-path"]["by_variant"];
        assert_eq!(exposure["true"]["evaluations"].as_u64().unwrap_or(0) as usize, on, "{}", stage["name"]);
        match expected_share {
            Some(share) => assert_eq!(on as f64 / sent as f64, share, "{}", stage["name"]),
            None => {
                // ...and in the split, the cohort stagegate measured is the one the
                // service put on the new path, and about 30% of the orders.
                let cohort = stage["metrics"]["variants"]["new-path=true"]["requests"].as_u64().unwrap() as usize;
                assert_eq!(cohort, on, "{}", stage["metrics"]["variants"]);
                let share = on as f64 / sent as f64;
                assert!((0.2..0.4).contains(&share), "the split gave `true` to {:.0}%", share * 100.0);
            }
        }
    }
    assert_eq!(at, seen.len(), "every order evaluated once");
    // Only order ids went into the contexts: no personal data.
    for stage in report["stages"].as_array().unwrap() {
        assert_eq!(stage["metrics"]["flags_pii_exposed"], 0, "{}", stage["name"]);
        assert_eq!(stage["pii_in_flags"], serde_json::json!([]));
    }
}

#[test]
fn personal_data_in_the_evaluation_contexts_fails_flags_pii_exposed_naming_flag_and_attribute() {
    common::require_python(
        &["openfeature.contrib.provider.ofrep"],
        "openfeature-provider-ofrep (scripts/test installs it)",
    );
    let reports = tempfile::tempdir().unwrap();
    let evidence = reports.path().join("evidence.txt");
    let out = Command::new(common::bin())
        .args(["run", "tests/scenarios/ofrep-sdk.yaml", "--report-dir", reports.path().to_str().unwrap()])
        .env("STAGEGATE_TEST_EVIDENCE", &evidence)
        .env("STAGEGATE_TEST_LEAK_EMAIL", "1")
        .current_dir(common::root())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report = only_report(reports.path());
    for stage in report["stages"].as_array().unwrap() {
        // Every order's email went to the flag endpoint with its evaluation.
        let sent = stage["metrics"]["data"]["sent"].as_u64().unwrap();
        let exposed = stage["metrics"]["flags_pii_exposed"].as_u64().unwrap();
        assert!(exposed > 0 && exposed <= sent, "{exposed} of {sent} in {}", stage["name"]);
        let place = &stage["pii_in_flags"][0];
        assert_eq!(
            (&place["flag"], &place["attribute"], &place["field"]),
            (&serde_json::json!("new-path"), &serde_json::json!("email"), &serde_json::json!("email")),
            "{}",
            stage["pii_in_flags"]
        );
        assert_eq!(place["values"].as_u64(), Some(exposed));
    }
    assert!(stdout.contains("`flags.pii_exposed == 0` failed"), "{stdout}");
    assert!(stdout.contains("email"), "the terminal names the attribute: {stdout}");
}
