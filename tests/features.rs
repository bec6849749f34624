//! The scenario format's features, each through the real binary on a real scenario:
//! what-if overrides, seeds, warnings, secrets, the closed model, comparisons,
//! abort_on_fail, on_verdict and the plan.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{bin, only_report, root, stagegate, text};

fn run_in(dir: &tempfile::TempDir, args: &[&str]) -> std::process::Output {
    let mut all = vec!["run", "-q", "--report-dir", dir.path().to_str().unwrap()];
    all.extend_from_slice(args);
    stagegate(&all)
}

#[test]
fn overrides_change_the_run_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        &dir,
        &[
            "tests/scenarios/tiny.yaml",
            "--set",
            "workload.arrival.rate=50/s",
            "--set",
            "stages[0].faults[0].delay=30ms",
            "--seed",
            "77",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    assert_eq!(report["seed"], 77);
    assert_eq!(report["seed_source"], "--seed");
    assert_eq!(
        report["overrides"],
        serde_json::json!(["workload.arrival.rate=50/s", "stages[0].faults[0].delay=30ms"])
    );
    // 50/s for 2 s, no warm-up.
    assert_eq!(report["stages"][0]["metrics"]["data"]["sent"], 100);
    // The 30 ms fault (each way) shows in the faulted phase of the first stage.
    let during = report["stages"][0]["metrics"]["phases"]["during"]["latency"]["p50"].as_f64().unwrap();
    assert!(during > 55.0, "during-phase p50 {during}");
}

#[test]
fn a_bad_override_is_refused_and_named() {
    let out = stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "workload.duration=5"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("error: --set workload.duration=5: `workload.duration`: invalid value `5`"), "{stderr}");
    let out = stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "stages[5].name=x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("error: --set stages[5].name=x: `stages[5].name`: `stages` has no item [5] (it has 2)"),
        "{}",
        text(&out).1
    );
    let out = stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "noequals"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn warnings_print_and_deny_warnings_refuses() {
    let out = stagegate(&["validate", "tests/scenarios/expired-flag.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("warning:") && stderr.contains("`old-toggle` expired on 2020-01-01"), "{stderr}");
    assert!(stderr.contains("expired-flag.yaml:9:"), "the warning names its line: {stderr}");
    let out = stagegate(&["validate", "--deny-warnings", "tests/scenarios/expired-flag.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
}

#[test]
fn a_warning_caused_by_an_override_points_at_the_override() {
    let set = "flags.definitions.new-enricher.expires=2020-01-01";
    let out = stagegate(&["validate", "scenarios/quickstart.yaml", "--set", set]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("warning: --set {set}: `flags.definitions.new-enricher.expires`")), "{stderr}");
    assert!(!stderr.contains("quickstart.yaml:"), "the file's line says another date: {stderr}");
}

#[test]
fn a_missing_data_file_gives_the_os_reason_and_the_resolved_path() {
    let out = stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "workload.data=../nowhere/orders.yaml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let resolved = root().join("tests/nowhere/orders.yaml");
    assert!(stderr.contains(&format!("(resolved to {})", resolved.display())), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn secrets_never_reach_the_report_or_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/secrets.yaml"])
        .current_dir(root())
        .env("STAGEGATE_TEST_TOKEN", "hunter2-s3cr3t")
        .env("STAGEGATE_TEST_RATE", "60/s")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("hunter2-s3cr3t") && !stderr.contains("hunter2-s3cr3t"), "{stdout}{stderr}");
    assert!(stdout.contains("${secret:STAGEGATE_TEST_TOKEN}"), "{stdout}");
    let runs = common::run_folders(dir.path());
    let raw = std::fs::read_to_string(runs[0].join("report.json")).unwrap();
    assert!(!raw.contains("hunter2-s3cr3t"), "{raw}");
    let report: serde_json::Value = serde_json::from_str(&raw).unwrap();
    // The on_verdict command ran with the real value; its output is masked.
    assert_eq!(report["on_verdict"]["output"], "token is ${secret:STAGEGATE_TEST_TOKEN}\n");
    // The plain variable took effect: 60/s for 1 s.
    assert_eq!(report["stages"][0]["metrics"]["data"]["sent"], 60);
}

#[test]
fn the_closed_model_keeps_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(&dir, &["tests/scenarios/closed-model.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let report = only_report(dir.path());
    let metrics = &report["stages"][0]["metrics"];
    let data = &metrics["data"];
    // Eight always in flight: by Little's law the rate is 8 over the mean latency, however
    // busy the machine (a busy machine lowers both together). Fewer in flight would show
    // as a lower rate; more, as a higher one.
    let mean_ms = metrics["latency"]["mean"].as_f64().unwrap();
    let rate = metrics["throughput"].as_f64().unwrap();
    let in_flight = rate * mean_ms / 1000.0;
    assert!((5.6..=8.4).contains(&in_flight), "{in_flight:.2} in flight: {rate}/s at {mean_ms} ms mean");
    assert!(data["sent"].as_u64().unwrap() > 100, "{data}");
    assert_eq!(data["sent"], data["acked"]);
    assert_eq!(data["lost"], 0);
}

#[test]
fn a_latency_regression_fails_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(&dir, &["tests/scenarios/compare-regression.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("`compare latency: candidate vs baseline` failed"), "{stdout}");
    let report = only_report(dir.path());
    let a = report["assessments"].as_array().unwrap().iter().find(|a| a["metric"] == "latency").unwrap().clone();
    assert_eq!(a["outcome"], "fail");
    assert!(a["measured"].as_f64().unwrap() > 1.0, "the median at least doubles: {a}");
}

#[test]
fn abort_on_fail_stops_the_run_early() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run_in(&dir, &["tests/scenarios/abort.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(started.elapsed().as_secs() < 15, "the 30 s stage was not cut short: {:?}", started.elapsed());
    assert!(stdout.contains("aborted: `errors.count < 5` failed in stage `blackholed`"), "{stdout}");
    let report = only_report(dir.path());
    assert_eq!(report["verdict"], "ROLLBACK");
    assert_eq!(report["stages"].as_array().unwrap().len(), 1, "the second stage never runs");
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true));
}

#[test]
fn the_plan_shows_stages_faults_load_criteria_and_actions() {
    let out = stagegate(&["plan", "scenarios/canary-compare.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for expected in [
        "# Rollout plan: canary-compare",
        "### 2. `canary-10`",
        "`new-enricher` = true 10% / false rest",
        "900 records (750 judged after warm-up)",
        "| refuse | `store` |  | 2s–3s | 100% | – |",
        "`recovery.time < 2s`",
        "`compare latency: candidate vs baseline`",
        "| ROLLBACK | 1 | `sh -c 'echo keep the new path off: $STAGEGATE_VERDICT'` |",
        "max regression +50.0%, confidence 95%",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // A latency held both ways adds twice its delay to each call to the store.
    let out = stagegate(&["plan", "scenarios/quickstart.yaml", "--set", "stages[2].faults[0].delay=150ms"]);
    let stdout = text(&out).0;
    assert!(stdout.contains("| latency | `store` | delay 150ms ± 10ms (+300ms ± 20ms per round trip) |"), "{stdout}");
    let out = stagegate(&["plan", "scenarios/bad-input.yaml"]);
    let stdout = text(&out).0;
    assert!(stdout.contains("| malformed | `workload` |") && !stdout.contains("`workload` | both"), "{stdout}");
}

#[test]
fn every_example_scenario_validates_and_plans() {
    for entry in std::fs::read_dir(root().join("scenarios")).unwrap().flatten() {
        let path = format!("scenarios/{}", entry.file_name().to_string_lossy());
        let out = stagegate(&["validate", &path]);
        assert_eq!(out.status.code(), Some(0), "{path}: {:?}", text(&out));
        let out = stagegate(&["plan", &path]);
        assert_eq!(out.status.code(), Some(0), "{path}: {:?}", text(&out));
    }
}

#[test]
fn a_playbook_shapes_the_load_the_plan_predicts() {
    let sets = ["--set", "workload.duration=3s", "--set", "workload.warmup=0s"];
    let mut plan_args = vec!["plan", "scenarios/daily-cycle.yaml"];
    plan_args.extend(sets);
    let plan = stagegate(&plan_args);
    let (plan_text, _) = text(&plan);
    let expected: u64 = plan_text
        .lines()
        .find_map(|l| l.strip_prefix("- expected load: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{plan_text}"));
    assert!(plan_text.contains("open model, daily shape from playbook `daily-cycle`, peak 300/s"), "{plan_text}");
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["scenarios/daily-cycle.yaml"];
    args.extend(sets);
    args.extend(["--set", common::RELAXED_HEALTH]);
    let out = run_in(&dir, &args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    for stage in report["stages"].as_array().unwrap() {
        let sent = stage["metrics"]["data"]["sent"].as_u64().unwrap();
        assert!(sent.abs_diff(expected) <= 2, "sent {sent}, the plan expected {expected}");
    }
}

#[test]
fn faults_at_the_target_follow_their_predicates_and_throttle() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(&dir, &["tests/scenarios/target-faults.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    // Exactly the first twenty writes were refused, and none of them counts as lost.
    assert_eq!(report["stages"][0]["metrics"]["errors"], 20);
    assert_eq!(report["stages"][0]["metrics"]["data"]["acked"], 180);
    assert_eq!(report["stages"][0]["metrics"]["data"]["lost"], 0);
    let p90 = report["stages"][1]["metrics"]["latency"]["p90"].as_f64().unwrap();
    assert!(p90 > 29.0, "half the requests are held 30 ms: p90 {p90}");
    // 8 KB/s towards the target: a write of about 300 bytes takes some 35 ms to get there.
    let p50 = report["stages"][2]["metrics"]["latency"]["p50"].as_f64().unwrap();
    assert!(p50 > 25.0, "throttled writes: p50 {p50}");
    assert_eq!(report["stages"][2]["metrics"]["errors"], 0);
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true));
}
