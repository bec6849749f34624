//! Interrupting a run in the middle of a fault, with SIGINT and with SIGTERM: the run
//! stops promptly, lifts the fault, closes every listener, and still writes a report
//! marked interrupted.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn addresses(line: &str) -> Vec<String> {
    line.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches("http://"))
        .filter(|w| w.starts_with("127.0.0.1:"))
        .map(String::from)
        .collect()
}

/// Runs the long scenario with `fault` as its first stage's fault, interrupts it with
/// `signal` once the fault is active, and checks that nothing is left behind.
fn interrupt_mid_fault(signal: Signal, fault: &str) {
    let reports = tempfile::tempdir().unwrap();
    let kind = fault.split("kind: ").nth(1).and_then(|r| r.split(',').next()).unwrap().trim().to_string();
    let set = format!("stages[0].faults[0]={fault}");
    let mut child = Command::new(common::bin())
        .args([
            "run",
            "tests/scenarios/long-fault.yaml",
            "--report-dir",
            reports.path().to_str().unwrap(),
            "--set",
            &set,
        ])
        .current_dir(common::root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut listeners = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the fault never started");
        if line.trim_start().starts_with("target ") || line.trim_start().starts_with("dependency ") {
            listeners.extend(addresses(&line));
        }
        if line.contains(&format!("fault {kind} at ")) && line.contains(" started") {
            break;
        }
    }
    let expected = if fault.contains("at: target") { 5 } else { 4 };
    assert_eq!(listeners.len(), expected, "target (and its proxy), flags, store and its proxy: {listeners:?}");
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?} to stop", started.elapsed());
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(out.status.code(), Some(130), "stderr after the signal: {rest:#?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("INTERRUPTED"), "{stdout}");

    let report = common::only_report(reports.path());
    assert_eq!(report["interrupted"], true);
    assert_eq!(report["verdict"], serde_json::Value::Null);
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0]["removed"], true, "{faults:?}");
    assert!(faults[0]["ended_secs"].as_f64().is_some());
    assert_eq!(report["stages"].as_array().unwrap().len(), 1, "the second stage never starts");
    assert_eq!(report["stages"][0]["completed"], false);
    for addr in &listeners {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still accepts connections");
    }
}

/// One fault of every kind this build applies, active from 1 s to the stage's end.
const FAULTS: [&str; 16] = [
    "{ kind: latency, at: store, delay: 20ms, from: 1s }",
    "{ kind: bandwidth, at: store, rate: 8KB/s, from: 1s }",
    "{ kind: refuse, at: store, from: 1s }",
    "{ kind: blackhole, at: store, from: 1s }",
    "{ kind: reset, at: store, probability: 30%, from: 1s }",
    "{ kind: slow_close, at: store, delay: 5s, from: 1s }",
    "{ kind: slicer, at: store, size: 8, delay: 1ms, from: 1s }",
    "{ kind: limit_data, at: store, bytes: 100, from: 1s }",
    "{ kind: corrupt, at: store, rate: 1%, from: 1s }",
    "{ kind: malformed, at: workload, probability: 10%, from: 1s }",
    "{ kind: duplicate, at: workload, probability: 10%, from: 1s }",
    "{ kind: out_of_order, at: workload, window: 5, from: 1s }",
    "{ kind: late, at: workload, delay: 1m, from: 1s }",
    "{ kind: http_error, at: target, status: 503, probability: 20%, from: 1s }",
    "{ kind: latency, at: target, delay: 20ms, from: 1s }",
    "{ kind: bandwidth, at: target, rate: 8KB/s, from: 1s }",
];

#[test]
fn sigint_mid_each_fault_lifts_it_and_writes_an_interrupted_report() {
    for fault in FAULTS {
        interrupt_mid_fault(Signal::SIGINT, fault);
    }
}

#[test]
fn sigterm_mid_each_fault_lifts_it_and_writes_an_interrupted_report() {
    for fault in FAULTS {
        interrupt_mid_fault(Signal::SIGTERM, fault);
    }
}

/// Regression: a Ctrl-C in the first moments of a run (before its signal watch began)
/// was lost, and the run went on to a verdict.
#[test]
fn sigint_at_the_first_moment_stops_the_run_before_anything_starts() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(common::bin())
            .args(["run", "-q", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/tiny.yaml"])
            .current_dir(common::root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // As soon as the process is stagegate, before it could have done anything.
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("stagegate")) {
            assert!(Instant::now() < deadline, "the binary never started");
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(2));
        kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Either the signal came before the handler (killed by it) or it was handled:
        // never a verdict.
        match out.status.code() {
            Some(130) => assert!(stdout.contains("verdict: none"), "{stdout}"),
            None => {}
            Some(c) => panic!("exit {c} after an early Ctrl-C:\n{stdout}"),
        }
        assert!(!stdout.contains("verdict: PROMOTE"), "{stdout}");
    }
}
