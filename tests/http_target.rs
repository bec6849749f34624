//! An HTTP target that stagegate starts as a process (a small Python service under
//! `tests/services/`), written by template and read back by key: exact lost, duplicated
//! and corrupted counts for known-bad variants, zero for the good one; and a service
//! that never becomes ready, exits at start, or crashes mid-run.

mod common;

use common::{only_report, stagegate, text};

fn run(dir: &tempfile::TempDir, command: &str, extra: &[&str]) -> std::process::Output {
    let set = format!("target.process.command={command}");
    let mut args = vec![
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "tests/scenarios/http-service.yaml",
        "--set",
        &set,
    ];
    args.extend_from_slice(extra);
    stagegate(&args)
}

const SERVICE: &str = r#"[python3, ../services/orders_service.py, --port, "{{ port }}""#;

#[test]
fn the_good_service_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir, &format!("{SERVICE}]"), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let data = &only_report(dir.path())["stages"][0]["metrics"]["data"];
    assert_eq!(data["sent"], 200);
    assert_eq!(data["acked"], 200);
    for count in ["lost", "duplicated", "corrupted"] {
        assert_eq!(data[count], 0, "{count}: {data}");
    }
}

#[test]
fn known_bad_variants_are_counted_exactly() {
    for (bad, count) in [("drop", "lost"), ("duplicate", "duplicated"), ("alter", "corrupted")] {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&dir, &format!("{SERVICE}, --bad, {bad}]"), &[]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {:?}", text(&out));
        let data = only_report(dir.path())["stages"][0]["metrics"]["data"].clone();
        // Every tenth of the 200 orders is dropped, stored twice or altered.
        assert_eq!(data[count], 20, "{bad}: {data}");
        let others: u64 = ["lost", "duplicated", "corrupted"]
            .iter()
            .filter(|c| **c != count)
            .map(|c| data[*c].as_u64().unwrap())
            .sum();
        assert_eq!(others, 0, "{bad}: {data}");
    }
}

#[test]
fn a_crash_mid_run_is_judged_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir, &format!("{SERVICE}, --crash-after, \"50\"]"), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("the target process exited (exit status: 7) during stage `only`"), "{stdout}");
    let report = only_report(dir.path());
    assert!(report["stages"][0]["metrics"]["errors"].as_u64().unwrap() > 100);
}

#[test]
fn a_service_that_never_gets_ready_breaks_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out =
        run(&dir, r#"[python3, -c, "import time; time.sleep(120)"]"#, &["--set", "target.process.ready.timeout=1s"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("the target was not ready within 1s"), "{stdout}");
    assert!(started.elapsed().as_secs() < 10);
    let pgrep = std::process::Command::new("pgrep").args(["-f", "time.sleep\\(120\\)"]).output().unwrap();
    assert!(pgrep.stdout.is_empty(), "the service was left running");
}

#[test]
fn a_service_that_exits_at_start_shows_its_last_words() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir, r#"[python3, -c, "import sys; print('cannot bind: address in use'); sys.exit(3)"]"#, &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("the target exited with exit status: 3 before it was ready"), "{stdout}");
    assert!(stdout.contains("cannot bind: address in use"), "{stdout}");
}

#[test]
fn killing_the_target_loses_what_it_held_and_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &dir,
        &format!("{SERVICE}]"),
        &[
            "--set",
            "stages[0].faults=[{ kind: kill, at: target, restart_after: 500ms, from: 1s, for: 1s }]",
            "--set",
            "workload.duration=3s",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report = only_report(dir.path());
    let m = &report["stages"][0]["metrics"];
    // The in-memory service forgets everything acknowledged before the kill.
    assert!(m["data"]["lost"].as_u64().unwrap() >= 90, "{}", m["data"]);
    assert!(m["phases"]["during"]["errors"].as_u64().unwrap() > 0);
    // It served again after the restart.
    assert!(m["phases"]["after"]["requests"].as_u64().unwrap() > 0);
    assert!(!stdout.contains("the target process exited"), "a fault's kill is not a crash: {stdout}");
    let runs = common::run_folders(dir.path());
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs[0].join("run.json")).unwrap()).unwrap();
    assert_eq!(run["finished"], true);
    let pid =
        run["processes"].as_array().unwrap().iter().find(|p| p["name"] == "target").unwrap()["pgid"].as_i64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z"), "the target outlived the run");
}

#[test]
fn the_flagd_file_follows_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let out = stagegate(&["run", "-q", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/flagd.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    let data = |i: usize| report["stages"][i]["metrics"]["data"].clone();
    assert_eq!(data(0)["rejected_valid"], 0, "{}", data(0));
    assert_eq!(data(0)["acked"], 50);
    // The service read the rewritten file: every order of the second stage was refused.
    assert_eq!(data(1)["rejected_valid"], 50, "{}", data(1));
    let run = common::run_folders(dir.path())[0].clone();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("flags.flagd.json")).unwrap()).unwrap();
    assert_eq!(file["flags"]["refuse-orders"]["defaultVariant"], "true");
}

#[test]
fn the_env_provider_restarts_the_target_when_its_flags_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = stagegate(&["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/env-flags.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    let data = |i: usize| report["stages"][i]["metrics"]["data"].clone();
    for i in [0, 1, 3] {
        assert_eq!(data(i)["acked"], 50, "stage {i}: {}", data(i));
        assert_eq!(data(i)["rejected_valid"], 0, "stage {i}: {}", data(i));
    }
    assert_eq!(data(2)["rejected_valid"], 50, "{}", data(2));
    // Started once, then again only where the flags changed: before `closed` and `open-again`.
    assert_eq!(stderr.matches("restarting the target").count(), 2, "{stderr}");
    let run = common::run_folders(dir.path())[0].clone();
    let log = std::fs::read_to_string(run.join("target.log")).unwrap();
    assert_eq!(log.matches("orders service on port").count(), 3, "{log}");
}

#[test]
fn scans_by_page_cursor_and_json_lines_count_exactly() {
    let scans = [
        "{ path: /orders, page: { param: page } }",
        "{ path: /orders, cursor: { param: cursor, field: next } }",
        "{ path: /orders.jsonl }",
    ];
    for scan in scans {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            &dir,
            &format!("{SERVICE}, --bad, duplicate]"),
            &["--set", "target.http.read=~", "--set", &format!("target.http.scan={scan}")],
        );
        assert_eq!(out.status.code(), Some(1), "{scan}: {:?}", text(&out));
        let data = only_report(dir.path())["stages"][0]["metrics"]["data"].clone();
        // 220 copies over five pages of 50: every tenth order stored twice.
        assert_eq!(data["duplicated"], 20, "{scan}: {data}");
        assert_eq!(data["lost"], 0, "{scan}: {data}");
    }
}

#[test]
fn request_faults_on_an_http_dependency_reach_the_service_and_tcp_faults_still_act() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = stagegate(&["run", "-q", "--report-dir", path, "tests/scenarios/http-dependency.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    let stages = report["stages"].as_array().unwrap();
    // Exactly the first fifteen checks were answered 503, so exactly fifteen orders failed.
    assert_eq!(stages[0]["metrics"]["errors"], 15);
    assert_eq!(stages[0]["metrics"]["data"]["acked"], 85);
    // Every check held 40 ms: every order took at least that long.
    let p50 = stages[1]["metrics"]["latency"]["p50"].as_f64().unwrap();
    assert!(p50 >= 40.0, "held checks: p50 {p50}");
    assert_eq!(stages[1]["metrics"]["errors"], 0);
    // The reset from 1 s on acts in the TCP proxy in front: every check after it fails.
    assert_eq!(stages[2]["metrics"]["phases"]["before"]["errors"], 0, "{}", stages[2]["metrics"]);
    assert!(stages[2]["metrics"]["errors"].as_u64().unwrap() >= 45, "{}", stages[2]["metrics"]);
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true));
}

#[test]
fn a_paused_target_holds_its_requests_and_answers_them_all_when_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let pause = "stages[0].faults=[{ kind: pause, at: target, from: 500ms, for: 1s }]";
    let out = run(&dir, &format!("{SERVICE}]"), &["--set", pause]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    let metrics = &report["stages"][0]["metrics"];
    // Requests sent at the pause's start waited it out: about a second, within the 2 s timeout.
    let max = metrics["latency"]["max"].as_f64().unwrap();
    assert!((900.0..2000.0).contains(&max), "max latency {max}");
    assert_eq!(metrics["errors"], 0);
    assert_eq!(metrics["data"]["acked"], 200);
    assert_eq!(metrics["data"]["lost"], 0);
    assert_eq!(report["faults"][0]["removed"], true);
}

/// The stage's freshness summary and data counts from a run's report.
fn freshness_and_data(dir: &tempfile::TempDir) -> (serde_json::Value, serde_json::Value) {
    let report = only_report(dir.path());
    let metrics = &report["stages"][0]["metrics"];
    (metrics["freshness"].clone(), metrics["data"].clone())
}

#[test]
fn sink_mode_times_each_arrival_and_counts_duplicates() {
    for (bad, duplicated) in [(None, 0), (Some("duplicate"), 20)] {
        let dir = tempfile::tempdir().unwrap();
        let bad = bad.map(|b| format!(", --bad, {b}")).unwrap_or_default();
        let command = format!(r#"{SERVICE}, --sink, "{{{{ sink.url }}}}", --delay, "100"{bad}]"#);
        let out = run(&dir, &command, &["--set", "target.http.sink={ settle: 3s }"]);
        assert!(out.status.code().is_some_and(|c| c <= 1), "{:?}", text(&out));
        let (freshness, data) = freshness_and_data(&dir);
        assert_eq!(freshness["observed_by"], "sink");
        assert_eq!(freshness["records"], 200, "{freshness}");
        // The service pushes each copy 100 ms after answering.
        let p50 = freshness["p50"].as_f64().unwrap();
        assert!((100.0..250.0).contains(&p50), "freshness p50 {p50}");
        assert_eq!(data["duplicated"], duplicated, "{data}");
        assert_eq!(data["lost"], 0, "{data}");
        assert_eq!(data["corrupted"], 0, "{data}");
    }
}

#[test]
fn scan_mode_times_arrivals_to_its_period_waits_for_late_output_and_counts_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let command = format!(r#"{SERVICE}, --delay, "300", --bad, duplicate]"#);
    let out = run(&dir, &command, &["--set", "target.http.scan={ path: /orders.jsonl, every: 50ms }"]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let (freshness, data) = freshness_and_data(&dir);
    assert_eq!(freshness["observed_by"], "scan every 50ms");
    // Listed 300 ms after the answer, seen within a period (plus the listing's own time).
    let p50 = freshness["p50"].as_f64().unwrap();
    assert!((300.0..450.0).contains(&p50), "freshness p50 {p50}");
    // The last records showed after the stage ended: the scan waited for them.
    assert_eq!(data["lost"], 0, "{data}");
    assert_eq!(data["duplicated"], 20, "{data}");
}

#[test]
fn renamed_fields_are_compared_under_their_sent_names() {
    let command = format!("{SERVICE}, --rename, amount=total]");
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir, &command, &[]);
    assert_eq!(out.status.code(), Some(1), "without the mapping every order looks altered");
    assert_eq!(freshness_and_data(&dir).1["corrupted"], 200);
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir, &command, &["--set", "target.http.renamed={ amount: total }"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(freshness_and_data(&dir).1["corrupted"], 0);
}

/// Regression: a target address that takes no connection at all (wrong port, service
/// down) gave a ROLLBACK on a 100% error rate without ever saying why; no stage, the
/// baseline included, measured the release, so the run breaks and says so.
#[test]
fn a_target_that_takes_no_connection_breaks_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Its base_url is 127.0.0.1:1, where nothing listens.
    let out =
        common::stagegate(&["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/distributed.yaml"]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    let said = format!("{stdout}\n{stderr}");
    assert!(said.contains("the target at http://127.0.0.1:1 takes no connection"), "{said}");
    assert!(!said.contains("stage 1 `baseline` started"), "nothing ran:\n{said}");
}
