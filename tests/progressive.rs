//! Progressive exposure on the builtin pipeline: a candidate that is sound for a small
//! cohort and stores orders twice once its cohort's load passes 150 a second
//! (`duplicate-under-load`) stops at the step where it breaks. The verdict names the
//! largest exposure that held, the failing step, criterion and cohort; a step too small
//! to judge is INCONCLUSIVE; the wider steps are not run; the rollback plan restores the
//! last step that held and is written as a flagd file OpenFeature's flagd provider
//! reads. The shipped scenario's sound candidate widens to 100% and promotes.
//!
//! The tests judge data only: latency and errors of the builtin pipeline depend on how
//! busy the machine is, and the suite runs beside other work.

mod common;

use common::{only_report, stagegate, text};

fn run(reports: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let mut args = vec![
        "run",
        "scenarios/progressive-rollout.yaml",
        "--report-dir",
        reports.to_str().unwrap(),
        "--report",
        "markdown",
        "--set",
        common::RELAXED_HEALTH,
        "--set",
        r#"criteria=["data.lost == 0", "data.duplicated == 0", "data.corrupted == 0"]"#,
    ];
    args.extend_from_slice(extra);
    let out = stagegate(&args);
    let (stdout, stderr) = text(&out);
    let report = only_report(reports);
    (out.status.code(), format!("{stdout}{stderr}"), report)
}

#[test]
fn a_defect_under_its_cohorts_load_stops_the_rollout_at_that_step_and_restores_the_last_that_held() {
    let reports = tempfile::tempdir().unwrap();
    let (code, output, report) = run(reports.path(), &["--set", "stages[1].exposure.steps=[1%, 10%, 50%, 100%]"]);
    assert_eq!(code, Some(1), "{output}");
    let e = &report["exposures"][0];
    let outcomes: Vec<&str> = e["steps"].as_array().unwrap().iter().map(|s| s["outcome"].as_str().unwrap()).collect();
    // 1% of 400/s over 7 judged seconds is about 28 orders: too few to judge, not a pass.
    assert_eq!(outcomes, ["inconclusive", "held", "failed", "not_run"], "{e}");
    assert_eq!((e["held_at"].as_f64(), e["failed_at"].as_f64()), (Some(0.1), Some(0.5)), "{e}");
    let summary = e["summary"].as_str().unwrap();
    assert!(
        summary.contains("held at 10% (1% inconclusive), failed at 50%: data.duplicated ")
            && summary.contains("in the new-enricher=true cohort")
            && summary.ends_with("(100% not run)"),
        "{summary}"
    );
    assert!(output.contains(summary), "the terminal leads with the exposure's sentence: {output}");
    let ran: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(ran, ["baseline", "rollout@1%", "rollout@10%", "rollout@50%"]);

    // The cohort is judged on its own: at 1% it is too small, at 50% it failed.
    let cohort = |stage: &str, metric: &str| {
        report["assessments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["stage"] == stage && a["metric"] == metric && a["cohort"] == "new-enricher=true")
            .unwrap_or_else(|| panic!("no cohort assessment of {metric} in {stage}"))
            .clone()
    };
    assert_eq!(cohort("rollout@1%", "data.duplicated")["outcome"], "inconclusive");
    assert_eq!(cohort("rollout@10%", "data.duplicated")["outcome"], "pass");
    let failed = cohort("rollout@50%", "data.duplicated");
    assert_eq!(failed["outcome"], "fail");
    assert!(failed["measured"].as_f64().unwrap() > 0.0);
    // The cohort's own figures: its requests are about half the step's.
    let step = &report["stages"][3]["metrics"];
    let requests = step["variants"]["new-enricher=true"]["requests"].as_f64().unwrap();
    let share = requests / step["requests"].as_f64().unwrap();
    assert!((0.4..0.6).contains(&share), "the 50% cohort had {share:.2} of the requests");

    // The flag change that came before the failure, and the cohort against the rest in
    // the same step.
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        failures[0]["summary"],
        "`rollout@50%` failed after new-enricher true 10% / false rest → true 50% / false rest (since `rollout@10%`, the last stage that held)"
    );
    let d = &report["stages"][3]["variant_differences"][0];
    assert_eq!((&d["flag"], &d["variant"], &d["against"]), (&"new-enricher".into(), &"true".into(), &"false".into()));
    assert_eq!(d["requests"].as_f64(), Some(requests));
    // The builtin pipeline evaluates each order's flag: the shares of its evaluations
    // are the split's.
    let evaluated =
        report["stages"][3]["flag_exposure"]["new-enricher"]["by_variant"]["true"]["share"].as_f64().unwrap();
    assert!((0.4..0.6).contains(&evaluated), "{evaluated}");

    // The rollback restores 10%, the last exposure that held.
    let rollback = &report["rollback"];
    assert_eq!(rollback["held_stage"], "rollout@10%", "{rollback}");
    let file = std::path::PathBuf::from(rollback["flagd_file"].as_str().unwrap());
    let keys: Vec<String> = (0..400).map(|i| format!("order-{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let wanted = serde_json::json!({ "new-enricher": ["boolean", false] });
    let read = common::read_with_flagd(&file, &wanted, &keys);
    let on = read["new-enricher"].as_object().unwrap().values().filter(|v| v["value"] == true).count();
    assert!((20..=60).contains(&on), "{on} of 400 keys see the 10% exposure through flagd");

    let dir = common::run_folders(reports.path()).remove(0);
    let markdown = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(markdown.contains("### Exposure `rollout` of `new-enricher`"), "{markdown}");
    assert!(markdown.contains("| rollout@100% | 100% | not run |"), "{markdown}");
}

#[test]
fn the_shipped_rollout_with_a_sound_candidate_widens_to_every_record_and_promotes() {
    let reports = tempfile::tempdir().unwrap();
    let (code, output, report) = run(reports.path(), &["--set", "target.defects=[]"]);
    assert_eq!(code, Some(0), "{output}");
    let e = &report["exposures"][0];
    assert_eq!(e["held_at"].as_f64(), Some(1.0), "{e}");
    let outcomes: Vec<&str> = e["steps"].as_array().unwrap().iter().map(|s| s["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["held"; 4], "every step's cohort is large enough to judge: {e}");
    assert_eq!(e["failed_at"], serde_json::Value::Null);
    assert!(output.contains("exposure `rollout` of `new-enricher`: held at 100%"), "{output}");
}
