//! `stagegate run --metrics ADDR`: during the run, `/metrics` in the Prometheus text
//! format shows the stage running, requests by stage, variant and outcome with their
//! latency histogram, flag shares and active faults; once a stage is judged, its data
//! counts and stagegate's send lag. The figures agree with the run's report. A
//! `--metrics` address outside loopback, or taken, is refused before anything runs.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{only_report, stagegate, text};

/// `GET /metrics` over a plain socket; empty when nothing answers.
fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the sample named exactly `series` (name and labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_follow_the_run_and_agree_with_its_report() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let reports = tempfile::tempdir().unwrap();
    let mut run = common::Running::start(
        &[
            "run",
            "scenarios/quickstart.yaml",
            "--report-dir",
            reports.path().to_str().unwrap(),
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--set",
            "workload.duration=6s",
            "--set",
            common::RELAXED_HEALTH,
        ],
        &[],
    );
    run.wait_for("metrics: http://127.0.0.1", Duration::from_secs(30));
    // While `slow-store` runs, with its latency fault active.
    let deadline = Instant::now() + Duration::from_secs(60);
    let during = loop {
        let text = scrape(port);
        if value(&text, r#"stagegate_stage_running{stage="slow-store"}"#) == Some(1.0)
            && value(&text, r#"stagegate_fault_active{stage="slow-store",kind="latency",at="store"}"#) == Some(1.0)
        {
            break text;
        }
        assert!(Instant::now() < deadline, "slow-store and its fault never showed:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(during.contains("content-type: application/openmetrics-text"), "{during}");
    assert_eq!(value(&during, r#"stagegate_stage_running{stage="baseline"}"#), Some(0.0));
    assert_eq!(
        value(&during, r#"stagegate_flag_share{stage="candidate",flag="new-enricher",value="true"}"#),
        Some(1.0)
    );
    let (code, _, stderr, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");

    // What it said of the finished stages is what the report says.
    let report = only_report(reports.path());
    for stage in ["baseline", "candidate"] {
        let st = report["stages"].as_array().unwrap().iter().find(|s| s["name"] == stage).unwrap();
        let sent = st["metrics"]["requests"].as_f64().unwrap() + st["metrics"]["warmup_requests"].as_f64().unwrap();
        let counted: f64 = ["acked", "rejected", "failed"]
            .iter()
            .filter_map(|o| {
                value(&during, &format!(r#"stagegate_requests_total{{stage="{stage}",variant="",outcome="{o}"}}"#))
            })
            .sum();
        assert_eq!(counted, sent, "{stage}:\n{during}");
        let observed =
            value(&during, &format!(r#"stagegate_request_duration_seconds_count{{stage="{stage}",variant=""}}"#));
        assert_eq!(observed, Some(sent), "{stage}");
        let acked = value(&during, &format!(r#"stagegate_data_records{{stage="{stage}",kind="acked"}}"#));
        assert_eq!(acked, st["metrics"]["data"]["acked"].as_f64(), "{stage}");
        assert!(value(&during, &format!(r#"stagegate_send_lag_p99_seconds{{stage="{stage}"}}"#)).is_some());
    }
}

#[test]
fn a_metrics_address_outside_loopback_or_taken_is_refused_before_anything_runs() {
    let reports = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (addr, says) in [("0.0.0.0:0", "outside loopback"), (taken.as_str(), "cannot listen")] {
        let out = stagegate(&[
            "run",
            "scenarios/quickstart.yaml",
            "--report-dir",
            reports.path().to_str().unwrap(),
            "--metrics",
            addr,
        ]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{addr}: {stdout}{stderr}");
        assert!(stderr.contains(says) && stderr.contains("--metrics"), "{stderr}");
        assert_eq!(std::fs::read_dir(reports.path()).unwrap().count(), 0, "nothing ran");
    }
}
