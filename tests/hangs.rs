//! No run hangs and none ignores Ctrl-C: every wait has a deadline and gives way to
//! SIGINT, whatever the target does (hangs on writes, on read-backs, on listings; never
//! gets ready), while a container starts, and while `on_verdict` runs. A second SIGINT
//! stops at once, still leaving nothing behind. Each test is named after the problem it
//! guards against, and runs the real binary.

mod common;

use std::time::Duration;

use common::Running;
use common::hostile::{self, Behaviour};
use nix::sys::signal::Signal;

fn hostile_run(behaviour: Behaviour, extra: &[&str]) -> (Running, tempfile::TempDir, hostile::Hostile) {
    let target = hostile::start(behaviour);
    let dir = tempfile::tempdir().unwrap();
    let port = target.port.to_string();
    let mut args = vec!["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/hostile.yaml"];
    args.extend_from_slice(extra);
    let run = Running::start(&args, &[("HOSTILE_PORT", port.as_str())]);
    (run, dir, target)
}

/// SIGINT, then the run must end within 5 s, exit 130, write its report marked
/// interrupted and leave no process of its own behind.
fn interrupt_and_check(run: Running, dir: &tempfile::TempDir) {
    run.signal(Signal::SIGINT);
    let (code, stdout, stderr, took) = run.finish(Duration::from_secs(20));
    assert!(took < Duration::from_secs(5), "took {took:?} to stop after SIGINT\n{stderr}");
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    let report = common::only_report(dir.path());
    assert_eq!(report["interrupted"], true);
    assert!(common::leftovers(dir.path()).is_empty(), "{:?}", common::leftovers(dir.path()));
}

#[test]
fn a_target_whose_read_back_never_answers_cannot_hang_the_run() {
    // Without an interrupt: each read-back times out, and the data checks say why.
    let (run, dir, _t) = hostile_run(Behaviour { hang_reads: true, ..Default::default() }, &[]);
    let (code, stdout, stderr, took) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let report = common::only_report(dir.path());
    let note = report["assessments"][0]["note"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("the output was not observed") && note.contains("read"), "{note}");
    assert!(stderr.contains("output not observed"), "{stderr}");
    // With an interrupt while it reads back.
    let (mut run, dir, _t) = hostile_run(Behaviour { hang_reads: true, ..Default::default() }, &[]);
    run.wait_for("stage 1 `first` started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(2500));
    interrupt_and_check(run, &dir);
}

#[test]
fn a_target_whose_scan_never_answers_cannot_hang_the_run() {
    let scan = "target.http.scan={ path: /orders.jsonl, settle: 30s }";
    let (mut run, dir, _t) = hostile_run(Behaviour { hang_listing: true, ..Default::default() }, &["--set", scan]);
    run.wait_for("stage 1 `first` started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(2500));
    interrupt_and_check(run, &dir);
}

#[test]
fn a_target_that_never_answers_writes_yields_to_sigint() {
    let long = "workload.timeout=60s";
    let (mut run, dir, _t) = hostile_run(Behaviour { hang_writes: true, ..Default::default() }, &["--set", long]);
    run.wait_for("stage 1 `first` started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1000));
    interrupt_and_check(run, &dir);
}

#[test]
fn sigint_while_the_target_is_starting_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut run =
        Running::start(&["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/never-ready.yaml"], &[]);
    run.wait_for("stagegate: running", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!common::leftovers(dir.path()).is_empty(), "the target should be starting");
    interrupt_and_check(run, &dir);
}

#[test]
fn sigint_while_a_container_is_starting_stops_at_once_and_removes_it() {
    common::build_test_image();
    let dir = tempfile::tempdir().unwrap();
    // Redis never answers HTTP: the container is never ready.
    let never = "dependencies.redis.container.ready={ http: /health, timeout: 45s }";
    let mut run = Running::start(
        &["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/container-store.yaml", "--set", never],
        &[],
    );
    run.wait_for("stagegate: running", Duration::from_secs(20));
    // Until the container exists.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::run_ids(dir.path()).iter().all(|r| common::containers_of_run(r).is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the container never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    interrupt_and_check(run, &dir);
}

#[test]
fn sigint_during_on_verdict_stops_it_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("on-verdict-started");
    let action =
        format!("on_verdict={{ promote: [sh, -c, \"touch {} && sleep 100 & sleep 100\"] }}", started.display());
    let reports = dir.path().join("reports");
    let run = Running::start(
        &["run", "-q", "--report-dir", reports.to_str().unwrap(), "tests/scenarios/tiny.yaml", "--set", &action],
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(std::time::Instant::now() < deadline, "on_verdict never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    run.signal(Signal::SIGINT);
    let (code, stdout, stderr, took) = run.finish(Duration::from_secs(30));
    assert!(took < Duration::from_secs(5), "took {took:?}\n{stderr}");
    // The verdict stands in the report; the action was stopped, and the run says it was
    // interrupted (a CI stage must not go on as if the action had finished).
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    let report = common::only_report(&reports);
    assert_eq!(report["verdict"], "PROMOTE");
    assert_eq!(report["interrupted"], true);
    assert!(report["on_verdict"]["output"].as_str().unwrap().contains("interrupted"), "{}", report["on_verdict"]);
    assert!(common::leftovers(&reports).is_empty(), "{:?}", common::leftovers(&reports));
}

#[test]
fn a_second_sigint_stops_at_once_with_children_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // A target that ignores SIGTERM: an orderly stop would wait its grace period out.
    let stubborn = "target.process.command=[sh, -c, \"trap '' TERM; exec python3 ../services/orders_service.py --port {{ port }}\"]";
    let mut run = Running::start(
        &[
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/http-service.yaml",
            "--set",
            stubborn,
            "--set",
            "workload.duration=60s",
        ],
        &[],
    );
    run.wait_for("stage 1 `only` started", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    run.signal(Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    run.signal(Signal::SIGINT);
    let (code, _, stderr, took) = run.finish(Duration::from_secs(30));
    assert!(took < Duration::from_secs(3), "took {took:?} after the second SIGINT\n{stderr}");
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("received again; stopping now"), "{stderr}");
    assert!(common::leftovers(dir.path()).is_empty(), "{:?}", common::leftovers(dir.path()));
}

#[test]
fn a_rate_the_scheduler_cannot_keep_is_refused_before_anything_runs() {
    let out = common::stagegate(&["validate", "tests/scenarios/tiny.yaml", "--set", "workload.arrival.rate=1e18/s"]);
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("above the highest rate"), "{stderr}");
}
