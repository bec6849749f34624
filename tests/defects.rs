//! The builtin pipeline's defect switches (`target.defects`), through the real binary:
//! each acts on the candidate path only, and a candidate without defects is sound.

mod common;

use common::{only_report, stagegate, text};

fn run(defects: &str) -> (Option<i32>, serde_json::Value, String) {
    let reports = tempfile::tempdir().unwrap();
    let set = format!("target.defects={defects}");
    let out = stagegate(&[
        "run",
        "-q",
        "tests/scenarios/defects.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        &set,
    ]);
    let (stdout, stderr) = text(&out);
    (out.status.code(), only_report(reports.path()), format!("{stdout}{stderr}"))
}

#[test]
fn a_candidate_without_defects_is_as_sound_as_the_current_path() {
    let (code, report, said) = run("[]");
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(report["verdict"], "PROMOTE");
}

#[test]
fn an_altered_field_is_counted_corrupted_on_the_candidate_only() {
    let (code, report, said) = run("[alter-field]");
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(report["stages"][0]["metrics"]["data"]["corrupted"], 0);
    assert!(report["stages"][1]["metrics"]["data"]["corrupted"].as_u64().unwrap() > 50, "{said}");
    assert!(said.contains("`data.corrupted == 0` failed"), "{said}");
}

#[test]
fn a_slow_candidate_is_slower_by_its_20ms() {
    let (_, report, said) = run("[slow-20ms]");
    let p50 = |i: usize| report["stages"][i]["metrics"]["latency"]["p50"].as_f64().unwrap();
    assert!(p50(1) > p50(0) + 15.0, "baseline p50 {}, candidate p50 {}: {said}", p50(0), p50(1));
}

#[test]
fn an_unknown_defect_is_refused_with_the_known_ones() {
    let out = stagegate(&["validate", "tests/scenarios/defects.yaml", "--set", "target.defects=[slow-21ms]"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`target.defects[0]`: unknown defect `slow-21ms`"), "{stderr}");
    assert!(stderr.contains("did you mean `slow-20ms`?"), "{stderr}");
}
