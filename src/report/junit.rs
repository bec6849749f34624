//! JUnit XML (`--report junit`): one test suite per stage, one test case per criterion
//! judged in it, for a CI system's test tab.
//!
//! An enforced criterion that failed is a `<failure>` carrying the measured value, the
//! limit and the samples; an INCONCLUSIVE one is `<skipped>` with its reason; a `warn`
//! or `observe` criterion that did not hold passes (it never decides the verdict) with
//! a note in its `<system-out>`. A run that broke or was interrupted adds an errored
//! case, so a CI tab can never show it green. Rendered from the report document (what
//! report.json holds), so `stagegate report` can render a saved run again.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde_json::Value;

/// The JUnit XML of the run `doc` describes.
pub fn render(doc: &Value) -> Result<String, String> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let scenario = text(&doc["scenario"]);
    let none = Vec::new();
    let assessments = doc["assessments"].as_array().unwrap_or(&none);
    // The stages in run order; a comparison names its candidate stage.
    let mut stages: Vec<String> = doc["stages"].as_array().unwrap_or(&none).iter().map(|s| text(&s["name"])).collect();
    for a in assessments {
        let stage = text(&a["stage"]);
        if !stages.contains(&stage) {
            stages.push(stage);
        }
    }
    let mut report = Report::new(format!("stagegate {scenario}"));
    for stage in &stages {
        let mut suite = TestSuite::new(format!("{scenario} / {stage}"));
        for a in assessments.iter().filter(|a| a["stage"].as_str() == Some(stage)) {
            suite.add_test_case(case(&scenario, stage, a));
        }
        report.add_test_suite(suite);
    }
    let broke = doc["error"].as_str().map(|e| format!("the run broke: {e}"));
    let interrupted = doc["interrupted"].as_bool().unwrap_or(false).then(|| "the run was interrupted".to_string());
    // An INCONCLUSIVE run's criteria are skipped, not failed; the test tab must still
    // not read green for a run that cannot promote.
    let undecided = (doc["verdict"] == "INCONCLUSIVE").then(|| {
        let reasons: Vec<String> = doc["reasons"].as_array().unwrap_or(&none).iter().map(text).collect();
        format!("INCONCLUSIVE, the release cannot be promoted on this run: {}", reasons.join("; "))
    });
    if let Some(why) = undecided {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status.set_message(why).set_type("INCONCLUSIVE");
        let mut case = TestCase::new("the verdict", status);
        case.set_classname(format!("stagegate.{scenario}"));
        let mut suite = TestSuite::new(format!("{scenario} / verdict"));
        suite.add_test_case(case);
        report.add_test_suite(suite);
    }
    if let Some(why) = broke.or(interrupted) {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(why.clone()).set_type("stagegate");
        let mut case = TestCase::new("the run", status);
        case.set_classname(format!("stagegate.{scenario}"));
        let mut suite = TestSuite::new(format!("{scenario} / run"));
        suite.add_test_case(case);
        report.add_test_suite(suite);
    }
    report.to_string().map_err(|e| format!("cannot write JUnit XML: {e}"))
}

fn case(scenario: &str, stage: &str, a: &Value) -> TestCase {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let criterion = super::criterion_label(a);
    let level = a["level"].as_str().unwrap_or("enforce");
    let note = a["note"].as_str();
    let samples = a["samples"].as_u64().map(|n| format!(", {n} samples")).unwrap_or_default();
    let figures = format!("measured {}, limit {}{samples}", text(&a["measured_text"]), text(&a["limit_text"]));
    let detail = match note {
        Some(n) => format!("{figures}; {n}"),
        None => figures.clone(),
    };
    let outcome = a["outcome"].as_str().unwrap_or_default();
    let status = match (outcome, level) {
        ("fail", "enforce") => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(figures).set_type("criterion failed").set_description(detail.clone());
            s
        }
        ("inconclusive", _) => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(format!("INCONCLUSIVE: {}", note.unwrap_or("no reason given")));
            s
        }
        _ => TestCaseStatus::success(),
    };
    let mut case = TestCase::new(format!("{stage}: {criterion}"), status);
    case.set_classname(format!("stagegate.{scenario}.{stage}"));
    match (outcome, level) {
        ("fail", "warn" | "observe") => {
            case.set_system_out(format!("did not hold ({level} only, does not decide the verdict): {detail}"));
        }
        ("pass", _) => {
            case.set_system_out(detail);
        }
        _ => {}
    }
    case
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_outcome_becomes_what_a_ci_tab_shows() {
        let doc = json!({
            "scenario": "demo",
            "interrupted": false,
            "stages": [{"name": "baseline"}, {"name": "candidate"}],
            "assessments": [
                {"stage": "baseline", "criterion": "errors.rate < 1%", "measured_text": "0.00%", "limit_text": "< 1.00%", "samples": 400, "outcome": "pass", "level": "enforce"},
                {"stage": "candidate", "criterion": "latency.p99 < 250ms", "measured_text": "412.0ms", "limit_text": "< 250.0ms", "samples": 400, "outcome": "fail", "level": "enforce"},
                {"stage": "candidate", "criterion": "data.lost == 0", "measured_text": "-", "limit_text": "== 0", "samples": 3, "outcome": "inconclusive", "level": "enforce", "note": "3 acknowledged records, fewer than the 100 required"},
                {"stage": "candidate", "criterion": "latency.p50 < 10ms", "measured_text": "12.0ms", "limit_text": "< 10.0ms", "samples": 400, "outcome": "fail", "level": "warn"}
            ]
        });
        let xml = render(&doc).unwrap();
        assert!(xml.contains(r#"tests="4""#) && xml.contains(r#"failures="1""#), "{xml}");
        assert!(xml.contains("measured 412.0ms, limit &lt; 250.0ms, 400 samples"), "{xml}");
        assert!(xml.contains("INCONCLUSIVE: 3 acknowledged records"), "{xml}");
        assert!(xml.contains("did not hold (warn only"), "{xml}");
        assert!(!xml.contains("the run broke"), "{xml}");
    }

    #[test]
    fn a_broken_run_is_an_error_never_green() {
        let doc =
            json!({"scenario": "demo", "error": "the target never became ready", "stages": [], "assessments": []});
        let xml = render(&doc).unwrap();
        assert!(xml.contains(r#"errors="1""#) && xml.contains("the run broke: the target never became ready"), "{xml}");
    }
}
