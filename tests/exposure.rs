//! The candidate path must have run: stagegate serves the flags, so it knows what the
//! system under test asked of them, stage by stage.

mod common;

use common::{only_report, stagegate, text};

#[test]
fn a_candidate_that_never_evaluates_its_flag_is_inconclusive_naming_the_flag() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "-q",
        "tests/scenarios/never-evaluated.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("`new-path` (true) was never evaluated in `candidate`: the path it selects did not run"),
        "{stdout}"
    );
    // A service that evaluates per request (or not at all) is not waited for.
    assert!(!stderr.contains("did not fetch the new flag state"), "{stderr}");
    let report = only_report(reports.path());
    assert_eq!(report["stages"][0]["unexposed"], serde_json::Value::Null, "the first stage changes nothing");
    assert!(report["stages"][1]["unexposed"].as_str().unwrap().contains("new-path"));
    for a in report["assessments"].as_array().unwrap().iter().filter(|a| a["stage"] == "candidate") {
        assert_eq!(a["outcome"], "inconclusive", "{a}");
    }
}

#[test]
fn a_flag_set_alike_in_every_stage_but_never_evaluated_is_inconclusive_in_each() {
    // Set from the first stage on: no stage differs from the first, yet none ran the path.
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "-q",
        "tests/scenarios/never-evaluated.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        "stages[0].flags.new-path=true",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    let report = only_report(reports.path());
    for stage in report["stages"].as_array().unwrap() {
        assert!(stage["unexposed"].as_str().unwrap_or_default().contains("`new-path` (true)"), "{stage}");
    }
    assert!(report["assessments"].as_array().unwrap().iter().all(|a| a["outcome"] == "inconclusive"));
}

#[test]
fn a_target_that_fetches_its_flags_is_judged_and_its_evaluations_reported() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "-q",
        "scenarios/quickstart.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        "workload.duration=3s",
        "--set",
        common::RELAXED_HEALTH,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(reports.path());
    for stage in report["stages"].as_array().unwrap() {
        let e = &stage["flag_exposure"]["new-enricher"];
        assert_eq!(e["how"], "evaluated", "{stage}");
        assert!(e["bulk_fetches"].as_u64().unwrap() > 0, "the builtin pipeline polls its flags: {e}");
        assert_eq!(stage["unexposed"], serde_json::Value::Null);
    }
}
