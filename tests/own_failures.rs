//! stagegate's own failures are run failures (exit 4 with the reason), never a verdict
//! about the target: a fault proxy keeps its port through a refuse fault, running out of
//! file descriptors breaks the run, a report that cannot be written is an error, a panic
//! still lifts every fault and writes a partial report. And stagegate keeps seeing the
//! output when one record of it cannot be read, resolves paths from a bare scenario file
//! name, and writes the builtin pipeline's orders to its store. Each test is named after
//! the problem it guards against, and runs the real binary.

mod common;

use std::time::{Duration, Instant};

use common::Running;
use common::hostile::{self, Behaviour};

#[test]
fn another_program_cannot_take_the_proxy_port_during_a_refuse_fault() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(
        &[
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/tiny.yaml",
            "--set",
            "workload.duration=3s",
            "--set",
            "stages[0].faults[0]={ kind: refuse, at: store, from: 500ms, for: 1500ms }",
        ],
        &[],
    );
    let line = run.wait_for("  dependency store", Duration::from_secs(20));
    let proxy = line.rsplit(' ').next().unwrap().to_string();
    run.wait_for("fault refuse at store started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    // The port refuses connections, and no one else may take it meanwhile.
    assert!(std::net::TcpStream::connect(&proxy).is_err(), "{proxy} accepted during refuse");
    let taken = std::net::TcpListener::bind(&proxy);
    assert!(taken.is_err(), "another program took {proxy} during a refuse fault");
    let (code, stdout, stderr, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = common::only_report(dir.path());
    assert_eq!(report["error"], serde_json::Value::Null);
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true));
}

#[test]
fn running_out_of_file_descriptors_breaks_the_run_not_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let command = format!(
        "ulimit -n 64; exec {} run --report-dir {} tests/scenarios/tiny.yaml \
         --set workload.arrival.rate=400/s --set workload.duration=3s \
         --set 'stages[0].faults[0]={{ kind: latency, at: store, delay: 250ms, direction: downstream }}'",
        common::bin().display(),
        dir.path().display()
    );
    let out = std::process::Command::new("sh").args(["-c", &command]).current_dir(common::root()).output().unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(stdout.contains("Too many open files"), "{stdout}\n{stderr}");
    assert!(stdout.contains("requests"), "it ran out mid-stage, not at start:\n{stdout}");
    assert!(stdout.contains("verdict: none"), "{stdout}");
}

#[test]
fn a_report_that_cannot_be_written_exits_4_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run =
        Running::start(&["run", "-q", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/tiny.yaml"], &[]);
    // Once the run's folder exists, take `report.json`'s place with a folder.
    let deadline = Instant::now() + Duration::from_secs(20);
    let folder = loop {
        if let Some(f) = common::run_folders(dir.path()).into_iter().next() {
            break f;
        }
        assert!(Instant::now() < deadline, "no run folder");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::create_dir_all(folder.join("report.json").join("in-the-way")).unwrap();
    let (code, stdout, stderr, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(4), "{stdout}\n{stderr}");
    assert!(stderr.contains("error: cannot write"), "{stderr}");
    // `-q` keeps the line that says the verdict cannot be gated on.
    assert!(stdout.contains("run BROKEN: cannot write") && stdout.contains("do not gate"), "{stdout}");
}

#[test]
fn a_panic_in_the_runner_still_lifts_every_fault_stops_everything_and_writes_a_partial_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(
        &[
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/http-service.yaml",
            "--set",
            "stages[0].faults=[{ kind: latency, at: target, delay: 5ms, from: 500ms }]",
        ],
        &[("STAGEGATE_TEST_PANIC_WHEN_FAULTED", "1")],
    );
    let target = run.wait_for("  target ", Duration::from_secs(30));
    let gate = target
        .split("behind fault proxy http://")
        .nth(1)
        .expect("the fault proxy is named")
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let (code, stdout, stderr, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(4), "{stdout}\n{stderr}");
    let report = common::only_report(dir.path());
    assert!(report["error"].as_str().unwrap().contains("stagegate itself failed"), "{}", report["error"]);
    assert!(std::net::TcpStream::connect(&gate).is_err(), "the target's fault proxy outlived the panic");
    assert!(common::leftovers(dir.path()).is_empty(), "{:?}", common::leftovers(dir.path()));
}

#[test]
fn one_unreadable_output_record_is_counted_and_later_stages_stay_observed() {
    // The target stores whatever it is sent, broken JSON included, and lists it back.
    let target = hostile::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let port = target.port.to_string();
    let out = std::process::Command::new(common::bin())
        .args([
            "run",
            "-q",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/hostile.yaml",
            "--set",
            "target.http.scan={ path: /orders.jsonl, settle: 500ms }",
            "--set",
            "stages[0].faults=[{ kind: malformed, at: workload, probability: 30% }]",
        ])
        .env("HOSTILE_PORT", &port)
        .current_dir(common::root())
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&out);
    assert!(!stderr.contains("output not observed"), "{stderr}");
    let report = common::only_report(dir.path());
    let broken = target
        .stored
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| serde_json::from_str::<serde_json::Value>(t).is_err())
        .count();
    assert!(broken > 0, "no record was sent broken");
    for stage in report["stages"].as_array().unwrap() {
        let m = &stage["metrics"];
        assert_eq!(m["data_observed"], true, "{}: {stdout}", stage["name"]);
        assert_eq!(m["data"]["lost"], 0, "{}: {}", stage["name"], m["data"]);
    }
    let first = &report["stages"][0]["metrics"]["data"];
    assert!(first["accepted_invalid"].as_u64().unwrap() >= broken as u64, "{first} ({broken} stored broken)");
}

#[test]
fn a_bare_scenario_file_name_resolves_paths_from_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["run", "-q", "--report-dir", dir.path().to_str().unwrap(), "http-service.yaml"])
        .current_dir(common::root().join("tests/scenarios"))
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
}

#[test]
fn the_builtin_pipeline_writes_to_its_store_not_the_first_dependency() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::stagegate(&[
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "tests/scenarios/tiny.yaml",
        "--set",
        "dependencies.a-cache={ builtin: kv-store }",
        "--set",
        "stages[0].faults[0]={ kind: refuse, at: store }",
    ]);
    let (stdout, stderr) = common::text(&out);
    let report = common::only_report(dir.path());
    let errors = report["stages"][0]["metrics"]["errors"].as_u64().unwrap();
    let requests = report["stages"][0]["metrics"]["requests"].as_u64().unwrap();
    assert!(
        errors * 10 > requests * 9,
        "a refused store should fail the orders: {errors} of {requests}\n{stdout}\n{stderr}"
    );
}

#[test]
fn running_out_of_file_descriptors_while_reading_back_breaks_the_run_not_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    // Writes go one at a time; the read-back after the stage opens many connections at once.
    let command = format!(
        "ulimit -n 40; exec {} run -q --report-dir {} tests/scenarios/http-service.yaml --set workload.arrival.rate=20/s",
        common::bin().display(),
        dir.path().display()
    );
    let out = std::process::Command::new("sh").args(["-c", &command]).current_dir(common::root()).output().unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(stdout.contains("could not read") && stdout.contains("Too many open files"), "{stdout}");
}
