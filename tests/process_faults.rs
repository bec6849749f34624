//! Process faults on a dependency stagegate starts itself (the store as its own process):
//! a kill with a restart, a pause, and what is left after the run, after an interrupt,
//! and after stagegate itself is killed outright (`stagegate cleanup`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn alive(pid: i32) -> bool {
    // A zombie still answers signal 0; read its state to tell.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && stat.split_whitespace().nth(2).is_none_or(|s| s != "Z")
}

fn run_file(dir: &std::path::Path) -> serde_json::Value {
    let run = common::run_folders(dir).first().cloned().expect("a run folder");
    serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap()
}

fn store_pid(dir: &std::path::Path) -> i32 {
    run_file(dir)["processes"][0]["pgid"].as_i64().expect("the store's pid is recorded") as i32
}

#[test]
fn a_killed_store_loses_its_data_and_comes_back_a_paused_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args(["run", "-q", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/process-store.yaml"])
        .current_dir(common::root())
        .env("STAGEGATE_BIN", common::bin())
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = common::only_report(dir.path());
    let killed = &report["stages"][0]["metrics"];
    let paused = &report["stages"][1]["metrics"];
    // The kill takes the in-memory store's records with it; the restarted store serves again.
    assert!(killed["data"]["lost"].as_u64().unwrap() > 50, "{}", killed["data"]);
    assert!(killed["phases"]["during"]["errors"].as_u64().unwrap() > 0);
    assert_eq!(killed["phases"]["after"]["errors"], 0);
    // A paused store times requests out but keeps what it stored.
    assert!(paused["phases"]["during"]["errors"].as_u64().unwrap() > 0);
    assert_eq!(paused["data"]["lost"], 0, "{}", paused["data"]);
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true));
    // Nothing is left: the run file says so, and the store's process is gone.
    assert_eq!(run_file(dir.path())["finished"], true);
    assert!(!alive(store_pid(dir.path())), "the store outlived the run");
    let log = common::run_folders(dir.path())[0].join("store.log");
    assert!(log.exists(), "the store's output is kept in the report folder");
}

/// Starts the long process scenario, waits for `marker` on stderr, returns the child.
fn start_long(dir: &tempfile::TempDir, set: &str, marker: &str) -> std::process::Child {
    let mut child = Command::new(common::bin())
        .args([
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/process-store.yaml",
            "--set",
            "workload.duration=60s",
            "--set",
            set,
        ])
        .current_dir(common::root())
        .env("STAGEGATE_BIN", common::bin())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the marker never came");
        if line.contains(marker) {
            break;
        }
    }
    child
}

#[test]
fn a_signal_during_a_pause_or_a_kill_leaves_no_process_behind() {
    let cases = [
        (Signal::SIGINT, "{ kind: pause, at: store, from: 1s }", "fault pause at store started"),
        (Signal::SIGTERM, "{ kind: pause, at: store, from: 1s }", "fault pause at store started"),
        (Signal::SIGINT, "{ kind: kill, at: store, restart_after: 30s, from: 1s }", "fault kill at store started"),
        (
            Signal::SIGTERM,
            "{ kind: kill, at: store, signal: SIGTERM, restart_after: 500ms, from: 1s }",
            "fault kill at store started",
        ),
    ];
    for (signal, fault, marker) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut child = start_long(&dir, &format!("stages[0].faults[0]={fault}"), marker);
        let pid = store_pid(dir.path());
        std::thread::sleep(Duration::from_millis(700));
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{fault}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive(pid), "{fault}: the store (pid {pid}) outlived the run");
        let run = run_file(dir.path());
        assert_eq!(run["finished"], true, "{fault}");
        let report = common::only_report(dir.path());
        assert_eq!(report["interrupted"], true);
        assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true), "{fault}: {report}");
    }
}

#[test]
fn cleanup_stops_what_a_killed_run_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    // (Not during a pause: the kernel hangs up on a stopped process group once its parent
    // dies, so a frozen store ends by itself.)
    let mut child = start_long(
        &dir,
        "stages[0].faults[0]={ kind: latency, at: store, delay: 5ms, from: 1s }",
        "fault latency at store started",
    );
    let pid = store_pid(dir.path());
    // Killed outright: no teardown can run, the store stays behind.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "the store should outlive a SIGKILLed stagegate");
    let out = common::stagegate(&["cleanup", "--report-dir", dir.path().to_str().unwrap()]);
    let (stdout, _) = common::text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("stopped `store`"), "{stdout}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(pid), "cleanup left the store (pid {pid}) running");
    let again = common::stagegate(&["cleanup", "--report-dir", dir.path().to_str().unwrap()]);
    assert!(common::text(&again).0.contains("cleanup: 0 process group(s), process(es) or container(s) stopped"));
}
