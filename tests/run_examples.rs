//! The two example scenarios, run through the real binary on the embedded default:
//! the quickstart promotes, the rollback demo rolls back and says why.

mod common;

use common::{only_report, stagegate, text};

#[test]
fn quickstart_promotes_and_writes_a_json_report() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "-q",
        "scenarios/quickstart.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        common::RELAXED_HEALTH,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("verdict: PROMOTE  (seed 42)"), "{stdout}");
    let report = only_report(reports.path());
    assert_eq!(report["verdict"], "PROMOTE");
    assert_eq!(report["seed"], 42);
    assert_eq!(report["interrupted"], false);
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    for stage in stages {
        // 8 s at 200/s: the first second is warm-up, counted apart from the judged 7 s.
        let data = &stage["metrics"]["data"];
        assert_eq!(data["sent"], 1400, "{stage}");
        assert_eq!(data["acked"], 1400, "{stage}");
        assert_eq!(data["lost"], 0);
        assert_eq!(data["duplicated"], 0);
        assert_eq!(stage["metrics"]["warmup_data"]["sent"], 200, "{stage}");
    }
    // The latency fault shows in the stage that has it, and only there.
    let p50 = |i: usize| stages[i]["metrics"]["latency"]["p50"].as_f64().unwrap();
    assert!(p50(2) > 40.0, "slow-store p50 {}", p50(2));
    assert!(p50(0) < 40.0, "baseline p50 {}", p50(0));
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0]["removed"], true);
}

#[test]
fn rollback_demo_names_stage_criterion_and_value() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "-q",
        "scenarios/rollback-demo.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        common::RELAXED_HEALTH,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let reason = stdout.lines().find(|l| l.contains("failed: measured")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(reason.contains("stage `candidate-resets`"), "{reason}");
    assert!(reason.contains("`data.duplicated == 0`"), "{reason}");
    assert!(stdout.contains("verdict: ROLLBACK"), "{stdout}");
    let report = only_report(reports.path());
    assert_eq!(report["verdict"], "ROLLBACK");
    let dup = |i: usize| report["stages"][i]["metrics"]["data"]["duplicated"].as_u64().unwrap();
    // The idempotent path survives the resets; the candidate path duplicates.
    assert_eq!(dup(0), 0);
    assert!(dup(1) > 0);
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true));
}

#[test]
fn data_is_byte_identical_for_a_seed() {
    let a = stagegate(&["data", "synthetic-data/orders.yaml", "--count", "500", "--seed", "9"]);
    let b = stagegate(&["data", "synthetic-data/orders.yaml", "--count", "500", "--seed", "9"]);
    let c = stagegate(&["data", "synthetic-data/orders.yaml", "--count", "500", "--seed", "10"]);
    assert_eq!(a.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&a.stdout).lines().count(), 500);
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
}

#[test]
fn bad_input_catches_the_candidate_accepting_and_duplicating() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "-q",
        "scenarios/bad-input.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        common::RELAXED_HEALTH,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = only_report(reports.path());
    let data = |i: usize| report["stages"][i]["metrics"]["data"].clone();
    let (baseline, candidate) = (data(0), data(1));
    // The current path refuses every malformed order and stores a resent one once.
    assert_eq!(baseline["accepted_invalid"], 0, "{baseline}");
    assert_eq!(baseline["duplicated"], 0, "{baseline}");
    // The new path lets some malformed orders in and stores resent ones twice.
    assert!(candidate["accepted_invalid"].as_u64().unwrap() > 0, "{candidate}");
    assert!(candidate["duplicated"].as_u64().unwrap() > 0, "{candidate}");
    // Late and reordered orders are valid orders: none is lost, altered or refused.
    for d in [&baseline, &candidate] {
        assert_eq!(d["lost"], 0, "{d}");
        assert_eq!(d["corrupted"], 0, "{d}");
        assert_eq!(d["rejected_valid"], 0, "{d}");
    }
    assert_eq!(report["faults"].as_array().unwrap().len(), 8);
}

/// Same seed, same verdict: two runs of one scenario with one seed give the same verdict
/// and the same data counts (here with malformed, resent, late and reordered records,
/// whose choice the seed makes).
#[test]
fn same_seed_same_verdict_and_data_counts() {
    let run = || {
        let reports = tempfile::tempdir().unwrap();
        let out = stagegate(&[
            "run",
            "-q",
            "scenarios/bad-input.yaml",
            "--seed",
            "9",
            "--set",
            "workload.duration=3s",
            "--set",
            common::RELAXED_HEALTH,
            "--report-dir",
            reports.path().to_str().unwrap(),
        ]);
        assert!(matches!(out.status.code(), Some(0 | 1 | 3)), "{:?}", text(&out));
        let report = only_report(reports.path());
        let counts: Vec<serde_json::Value> = report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let d = &s["metrics"]["data"];
                serde_json::json!([d["sent"], d["lost"], d["duplicated"], d["corrupted"], d["accepted_invalid"]])
            })
            .collect();
        (report["verdict"].clone(), counts)
    };
    let (verdict_a, counts_a) = run();
    let (verdict_b, counts_b) = run();
    assert_eq!(verdict_a, verdict_b);
    assert_eq!(counts_a, counts_b);
}
