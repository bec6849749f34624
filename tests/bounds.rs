//! Bounds on everything fed from outside: read-back answers, sink pushes, files read
//! (a scenario, a schema, a playbook), and durations and rates a scenario may ask for.
//! A runaway input ends in a clear message or a bounded cost, never in memory
//! exhaustion or a panic. Each test runs the real binary.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::Running;
use common::hostile::{self, Behaviour};

/// Peak memory of a run, in MiB, and its exit code and stdout.
fn run_measured(args: &[&str], env: &[(&str, &str)]) -> (u64, Option<i32>, String, String) {
    let run = Running::start(args, env);
    let peak = common::peak_rss_kib(run.child.id());
    let (code, stdout, stderr, _) = run.finish(Duration::from_secs(120));
    (peak.join().unwrap() / 1024, code, stdout, stderr)
}

#[test]
fn hundred_megabyte_read_backs_stay_within_bounds() {
    let target = hostile::start(Behaviour { huge_reads: Some(100 * 1024 * 1024), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let port = target.port.to_string();
    let (peak_mib, code, stdout, stderr) = run_measured(
        &[
            "run",
            "-q",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/hostile.yaml",
            "--set",
            "workload.arrival.rate=20/s",
            "--set",
            "target.http.timeout=30s",
        ],
        &[("HOSTILE_PORT", port.as_str())],
    );
    // Every answer past the bound is the target's doing: its records count as corrupted.
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let report = common::only_report(dir.path());
    let data = &report["stages"][0]["metrics"]["data"];
    assert_eq!(data["corrupted"], data["acked"], "{data}");
    eprintln!("peak memory {peak_mib} MiB reading back 100 MB answers");
    assert!(peak_mib < 300, "peak memory {peak_mib} MiB reading back 100 MB answers");
}

/// Regression: every connection had its body buffered at once; 150 connections
/// pushing 8 MiB each took stagegate to 1.26 GB.
#[test]
fn many_connections_pushing_the_largest_bodies_at_once_stay_within_bounds() {
    let target = hostile::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let sink_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sink = format!("target.http.sink={{ listen: \"127.0.0.1:{sink_port}\", settle: 100ms }}");
    let port = target.port.to_string();
    // Each sends all but the last byte of an 8 MiB body, then holds the connection.
    let body_len = 8 * 1024 * 1024;
    let pushers: Vec<_> = (0..60)
        .map(|_| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut s = loop {
                    if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", sink_port)) {
                        break s;
                    }
                    if Instant::now() > deadline {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let head = format!("POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: {body_len}\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&vec![b' '; body_len - 1]));
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(4)));
            })
        })
        .collect();
    let (peak_mib, code, stdout, stderr) = run_measured(
        &[
            "run",
            "-q",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/hostile.yaml",
            "--set",
            &sink,
            "--set",
            "workload.duration=4s",
        ],
        &[("HOSTILE_PORT", port.as_str())],
    );
    for p in pushers {
        p.join().unwrap();
    }
    assert_ne!(code, Some(2), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    eprintln!("peak memory {peak_mib} MiB with 60 connections pushing 8 MiB bodies");
    // At most 8 bodies are read at once (64 MiB), against 480 MiB if all were.
    assert!(peak_mib < 200, "peak memory {peak_mib} MiB with 60 connections pushing 8 MiB bodies");
}

#[test]
fn a_sink_flood_stays_within_bounds() {
    let target = hostile::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let sink_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sink = format!("target.http.sink={{ listen: \"127.0.0.1:{sink_port}\", settle: 100ms }}");
    let port = target.port.to_string();
    let stored = target.stored.clone();
    // Push every stored order back to the sink as fast as possible, a thousand at a time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut pushed = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let copies: Vec<String> = stored.lock().unwrap().iter().map(|(_, t)| t.clone()).collect();
                if copies.is_empty() {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let body: Vec<&str> = copies.iter().cycle().take(1000).map(String::as_str).collect();
                let body = format!("[{}]", body.join(","));
                let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", sink_port)) else { continue };
                let head = format!(
                    "POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                if s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).is_ok() {
                    let _ = std::io::Read::read(&mut s, &mut [0u8; 256]);
                    pushed += 1000;
                }
            }
            pushed
        })
    };
    let (peak_mib, code, stdout, stderr) = run_measured(
        &[
            "run",
            "-q",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/hostile.yaml",
            "--set",
            &sink,
            "--set",
            "workload.duration=4s",
        ],
        &[("HOSTILE_PORT", port.as_str())],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pushed = flood.join().unwrap();
    assert!(pushed > 100_000, "the flood pushed only {pushed} records");
    // Every order arrived many times over: duplicates, all counted, none kept.
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = common::only_report(dir.path());
    let data = &report["stages"][0]["metrics"]["data"];
    assert_eq!(data["lost"], 0, "{data}");
    assert!(data["duplicated"].as_u64().unwrap() > 0, "{data}");
    eprintln!("peak memory {peak_mib} MiB under a flood of {pushed} records");
    assert!(peak_mib < 200, "peak memory {peak_mib} MiB under a flood of {pushed} records");
}

#[test]
fn endless_files_are_refused_at_once() {
    for args in [
        vec!["validate", "/dev/zero"],
        vec!["validate", "tests/scenarios/tiny.yaml", "--set", "workload.data=/dev/zero"],
        vec!["validate", "tests/scenarios/tiny.yaml", "--set", "workload.arrival={ playbook: /dev/zero }"],
    ] {
        let started = Instant::now();
        let out = common::stagegate(&args);
        let (_, stderr) = common::text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("it is larger than"), "{args:?}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?} took {:?}", started.elapsed());
    }
}

#[test]
fn a_duration_past_what_can_be_scheduled_is_refused_not_a_panic() {
    let out =
        common::stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "workload.duration=5000000000000000h"]);
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("longer than the longest duration"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn records_that_cannot_be_written_are_an_error_not_a_success() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["data", "synthetic-data/orders.yaml", "--count", "10000"])
        .current_dir(common::root())
        .stdout(full)
        .output()
        .unwrap();
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cannot write the records"), "{stderr}");
}

/// Regression: `schema`, `plan`, `validate` and `cleanup` panicked when stdout could not
/// be written.
#[test]
fn output_that_cannot_be_written_is_an_error_not_a_panic() {
    let cleanup_root = tempfile::tempdir().unwrap();
    for args in [
        vec!["schema"],
        vec!["plan", "tests/scenarios/tiny.yaml"],
        vec!["validate", "tests/scenarios/tiny.yaml"],
        vec!["cleanup", "--report-dir", cleanup_root.path().to_str().unwrap()],
    ] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = std::process::Command::new(common::bin())
            .args(&args)
            .current_dir(common::root())
            .stdout(full)
            .output()
            .unwrap();
        let (_, stderr) = common::text(&out);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot write to stdout"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Regression: a named pipe no one writes to, given as a scenario, waited forever.
#[test]
fn a_pipe_no_one_writes_to_is_refused_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("scenario.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    let started = Instant::now();
    let out = common::stagegate(&["validate", fifo.to_str().unwrap()]);
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a pipe no one writes to"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}

/// Regression: `.inf` and `.nan` read as "not given", so a default quietly applied.
#[test]
fn infinity_and_not_a_number_are_refused_not_defaulted() {
    for set in [
        "stages[0].faults=[{kind: out_of_order, at: workload, window: .inf}]",
        "criteria=[{check: 'latency.p99 < 1s', min_samples: .nan}]",
        "seed=-.Inf",
    ] {
        let out = common::stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", set]);
        let (_, stderr) = common::text(&out);
        assert_eq!(out.status.code(), Some(2), "{set}: {stderr}");
        assert!(stderr.contains("infinity and not-a-number"), "{set}: {stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.yaml");
    let text = std::fs::read_to_string(common::root().join("tests/scenarios/tiny.yaml")).unwrap();
    std::fs::write(&file, text.replace("seed: 3", "seed: .nan")).unwrap();
    let out = common::stagegate(&["validate", file.to_str().unwrap()]);
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("s.yaml:4:7: `seed`: infinity and not-a-number"), "{stderr}");
}

/// Regression: a `--set` value with a key given twice kept the last one.
#[test]
fn a_key_given_twice_in_a_set_value_is_refused() {
    let out = common::stagegate(&[
        "validate",
        "tests/scenarios/tiny.yaml",
        "--set",
        "workload={data: ../../synthetic-data/orders.yaml, arrival: {rate: 10/s}, duration: 1s, duration: 7s}",
    ]);
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`duration` is given twice"), "{stderr}");
}

/// Regression: a byte-order mark at the start of a scenario was taken for a second
/// document.
#[test]
fn a_byte_order_mark_is_not_part_of_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bom.yaml");
    let text = std::fs::read_to_string(common::root().join("tests/scenarios/tiny.yaml")).unwrap();
    let text = text.replace("../../synthetic-data", &common::root().join("synthetic-data").display().to_string());
    std::fs::write(&file, format!("\u{feff}{text}")).unwrap();
    let out = common::stagegate(&["validate", file.to_str().unwrap()]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
}
