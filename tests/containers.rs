//! `container` dependencies, through testcontainers, from an image built here
//! (`tests/images/redis.sh`: Debian's redis-server FROM scratch; nothing is pulled). The
//! worked example's service runs on a Redis container behind the fault proxy: a latency
//! fault, a pause and a kill with a restart act on it; the container is removed after
//! the run, after a SIGINT, and by `stagegate cleanup` after stagegate is killed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{only_report, stagegate, text};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn build_image() {
    common::require_docker();
    common::require_program("redis-server", "`apt-get install redis-server`");
    common::build_test_image();
}

fn container_exists(id: &str) -> bool {
    Command::new("docker").args(["inspect", id]).output().unwrap().status.success()
}

fn run_file(dir: &std::path::Path) -> serde_json::Value {
    let run = common::run_folders(dir).first().cloned().expect("a run folder");
    serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap()
}

fn container_id(dir: &std::path::Path) -> String {
    run_file(dir)["containers"][0]["id"].as_str().expect("the container's id is recorded").to_string()
}

#[test]
fn faults_reach_a_redis_container_and_it_is_removed_after_the_run() {
    build_image();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = stagegate(&["run", "-q", "--report-dir", path, "tests/scenarios/container-store.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = only_report(dir.path());
    let metrics = |i: usize| report["stages"][i]["metrics"].clone();
    // Latency on the proxy in front of the container: each order waits on Redis twice.
    assert!(metrics(1)["latency"]["p50"].as_f64().unwrap() >= 40.0, "{}", metrics(1));
    // Frozen for 300 ms: orders waited it out and none was lost.
    assert!(metrics(2)["latency"]["max"].as_f64().unwrap() >= 250.0, "{}", metrics(2));
    assert_eq!(metrics(2)["data"]["lost"], 0);
    // Killed: what Redis held in memory is gone, and it came back for the rest.
    assert!(metrics(3)["data"]["lost"].as_u64().unwrap() > 0, "{}", metrics(3));
    let acked_after = metrics(3)["phases"]["after"]["data"]["acked"].as_u64().unwrap();
    assert!(acked_after > 0, "nothing was stored after the restart: {}", metrics(3));
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true));
    let id = container_id(dir.path());
    assert_eq!(run_file(dir.path())["finished"], true);
    assert!(!container_exists(&id), "container {id} outlived the run");
    let log = std::fs::read_to_string(common::run_folders(dir.path())[0].join("redis.log")).unwrap();
    assert!(log.contains("Ready to accept connections"), "{log}");
}

#[test]
fn a_missing_image_is_named_and_nothing_is_pulled() {
    let dir = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "tests/scenarios/container-store.yaml",
        "--set",
        "dependencies.redis.container.image=stagegate-test/absent:none",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}");
    assert!(stdout.contains("the image `stagegate-test/absent:none` is not available locally"), "{stdout}");
}

/// Starts the container scenario, returning once the container is up.
fn start_run(dir: &tempfile::TempDir) -> std::process::Child {
    let mut child = Command::new(common::bin())
        .args(["run", "tests/scenarios/container-store.yaml", "--report-dir", dir.path().to_str().unwrap()])
        .current_dir(common::root())
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("stage 1 `clean` started") => return child,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the run never started");
            }
        }
    }
}

#[test]
fn sigint_removes_the_container_and_cleanup_removes_one_a_killed_run_left() {
    build_image();
    let dir = tempfile::tempdir().unwrap();
    let child = start_run(&dir);
    let id = container_id(dir.path());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(!container_exists(&id), "container {id} outlived an interrupted run");

    let dir = tempfile::tempdir().unwrap();
    let mut child = start_run(&dir);
    let id = container_id(dir.path());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    assert!(container_exists(&id), "the container should outlive a SIGKILLed stagegate");
    let out = stagegate(&["cleanup", "--report-dir", dir.path().to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("removed container `redis`"), "{stdout}");
    assert!(!container_exists(&id), "cleanup left container {id}");
}
