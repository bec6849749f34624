//! stagegate's own lateness (`health:`), through the real binary: a machine too busy for
//! stagegate to keep its schedule never becomes a verdict on the release.

mod common;

use std::process::{Child, Command, Stdio};

use common::{only_report, stagegate, text};

/// Busy loops pinned to CPU 0, stopped when dropped.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Hogs {
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new("taskset")
                        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("taskset (util-linux) runs")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_cpu_hog_beside_a_good_release_never_rolls_it_back() {
    let reports = tempfile::tempdir().unwrap();
    // stagegate shares one core with twelve busy loops: it cannot keep a 200/s schedule.
    let _hogs = Hogs::start(12);
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(common::bin())
        .args(["run", "-q", "scenarios/quickstart.yaml", "--report-dir", reports.path().to_str().unwrap()])
        .args(["--set", "workload.duration=4s"])
        .current_dir(common::root())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(1), "a good release rolled back on a starved machine:\n{stdout}{stderr}");
    let report = only_report(reports.path());
    let stages = report["stages"].as_array().unwrap();
    for stage in stages {
        let health = &stage["health"];
        assert!(health["send_lag"]["p99_ms"].is_number(), "{health}");
        assert!(health["timer_lag"]["p99_ms"].is_number(), "{health}");
        assert!(health["cpu"]["machine_busy"].is_number(), "{health}");
    }
    let behind = stages.iter().filter(|s| s["health"]["behind"].is_string()).count();
    assert!(behind > 0, "twelve busy loops on its core should have held stagegate up:\n{stdout}");
    match report["verdict"].as_str() {
        Some("PROMOTE") => {}
        Some("INCONCLUSIVE") => {
            let reasons = report["reasons"].to_string();
            assert!(reasons.contains("stagegate fell behind its schedule"), "{reasons}");
            assert!(reasons.contains("the machine, not the release, is the bottleneck"), "{reasons}");
        }
        other => panic!("verdict {other:?}:\n{stdout}{stderr}"),
    }
}

#[test]
fn past_its_health_limit_timing_criteria_are_inconclusive_and_data_counts_still_judged() {
    let reports = tempfile::tempdir().unwrap();
    // No lateness at all is allowed: every stage is behind, whatever the machine.
    let out = stagegate(&[
        "run",
        "-q",
        "tests/scenarios/tiny.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--set",
        "health.send_lag_p99=0ms",
        "--set",
        "criteria=[{check: 'latency.p99 < 1s', min_samples: 20}, {check: 'data.duplicated == 0', min_samples: 20}]",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("verdict: INCONCLUSIVE"), "{stdout}");
    // Said once per stage, with what to do about it once.
    assert_eq!(stdout.matches("to judge it: run where stagegate has the CPU it needs").count(), 1, "{stdout}");
    let report = only_report(reports.path());
    for a in report["assessments"].as_array().unwrap() {
        match a["criterion"].as_str().unwrap() {
            "latency.p99 < 1s" => {
                assert_eq!(a["outcome"], "inconclusive", "{a}");
                assert!(a["note"].as_str().unwrap().contains("send lag p99"), "{a}");
            }
            "data.duplicated == 0" => assert_eq!(a["outcome"], "pass", "{a}"),
            other => panic!("unexpected criterion {other}"),
        }
    }
    assert!(report["stages"][0]["health"]["behind"].as_str().unwrap().contains("send lag p99"));
}

#[test]
fn a_health_limit_is_checked_like_any_key() {
    let out = stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "health.send_lag_p99=2h"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`health.send_lag_p99`: a lateness limit is at most 1m"), "{stderr}");
    let out = stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "health.send_lag=5ms"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown key `send_lag`"), "{stderr}");
}
