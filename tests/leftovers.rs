//! Nothing a run starts outlives it where `cleanup` cannot find it, and `cleanup` stops
//! nothing the run did not start: processes and containers are written into `run.json`
//! before they start and again at every restart; a target's child that ignores SIGTERM
//! is stopped too; a pid that now belongs to another process is left alone. Each test is
//! named after the problem it guards against, and runs the real binary.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Running;
use nix::sys::signal::Signal;
use rand::{RngExt, SeedableRng};

fn cleanup(dir: &std::path::Path) -> String {
    let out = common::stagegate(&["cleanup", "--report-dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    common::text(&out).0
}

/// Waits (briefly) until a SIGKILLed run's children are gone, or gives their list.
fn settle(dir: &std::path::Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = common::leftovers(dir);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkill_during_start_up_leaves_nothing_cleanup_cannot_find() {
    let dir = tempfile::tempdir().unwrap();
    let mut run =
        Running::start(&["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/never-ready.yaml"], &[]);
    run.wait_for("stagegate: running", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(800));
    run.signal(Signal::SIGKILL);
    let _ = run.finish(Duration::from_secs(10));
    assert!(!common::leftovers(dir.path()).is_empty(), "the starting target should outlive a SIGKILL");
    let said = cleanup(dir.path());
    assert!(said.contains("stopped `target`"), "{said}");
    assert_eq!(settle(dir.path()), Vec::<String>::new(), "{said}");
}

#[test]
fn sigkill_after_an_env_restart_leaves_nothing_cleanup_cannot_find() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(
        &[
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/env-flags.yaml",
            "--set",
            "workload.duration=3s",
        ],
        &[],
    );
    run.wait_for("restarting the target", Duration::from_secs(30));
    run.wait_for("stage 3 `closed` started", Duration::from_secs(30));
    run.signal(Signal::SIGKILL);
    let _ = run.finish(Duration::from_secs(10));
    let run_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::run_folders(dir.path())[0].join("run.json")).unwrap())
            .unwrap();
    let target = run_file["processes"].as_array().unwrap().iter().find(|p| p["name"] == "target").unwrap().clone();
    let pgid = target["pgid"].as_i64().unwrap() as i32;
    assert!(
        common::processes_of_run(run_file["run"].as_str().unwrap()).contains(&pgid),
        "run.json names the restarted target: {target}"
    );
    let said = cleanup(dir.path());
    assert!(said.contains(&format!("stopped `target` (process group {pgid})")), "{said}");
    assert_eq!(settle(dir.path()), Vec::<String>::new(), "{said}");
}

#[test]
fn cleanup_leaves_alone_a_process_that_took_a_recorded_pgid() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("forged-run");
    std::fs::create_dir_all(&folder).unwrap();
    let mut bystander = Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut bystander, 0);
    let mut bystander = bystander.arg("60").spawn().unwrap();
    let pid = bystander.id();
    // A dead stagegate's record naming that pid: without a start time (a record from
    // before start times, or forged), with another process's start time, and with its
    // own start time (the forger read /proc) but not the run's marker.
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let own = own[own.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().to_string();
    for started in ["null", "1", own.as_str()] {
        let record = format!(
            r#"{{"run":"forged-run","stagegate_pid":999999999,"finished":false,
                "processes":[{{"name":"store","pgid":{pid},"started":{started},"running":true}}],"containers":[]}}"#
        );
        std::fs::write(folder.join("run.json"), record).unwrap();
        let said = cleanup(dir.path());
        assert!(said.contains("left alone"), "{said}");
        assert!(bystander.try_wait().unwrap().is_none(), "cleanup killed a process it did not start:\n{said}");
    }
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn teardown_stops_a_target_child_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let stubborn = "target.process.command=[sh, -c, \"(trap '' TERM; exec sleep 300) & exec python3 ../services/orders_service.py --port {{ port }}\"]";
    let out = common::stagegate(&[
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "tests/scenarios/http-service.yaml",
        "--set",
        stubborn,
    ]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(common::leftovers(dir.path()), Vec::<String>::new(), "a child of the target outlived the run");
}

#[test]
fn sigkill_at_random_moments_of_start_up_restarts_and_teardown_leaves_nothing_after_cleanup() {
    common::build_test_image();
    // Two trials at a time; each kills stagegate at a seeded random moment of a run that
    // starts a container, a process dependency and a target, restarts both dependencies,
    // and tears everything down.
    let trials: Vec<(usize, u64)> = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        (0..20).map(|i| (i, rng.random_range(0..7000))).collect()
    };
    let workers: Vec<_> = trials
        .chunks(10)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for (i, after_ms) in chunk {
                    let dir = tempfile::tempdir().unwrap();
                    // Redis rewrites its environment for its process title, marker
                    // included; working in the trial's folder, it is found by that.
                    let cache = format!(
                        "dependencies.cache.process.command=[redis-server, --port, \"{{{{ port }}}}\", --save, \"\", --appendonly, \"no\", --dir, {}]",
                        dir.path().display()
                    );
                    let run = Running::start(
                        &[
                            "run",
                            "-q",
                            "--report-dir",
                            dir.path().to_str().unwrap(),
                            "tests/scenarios/leftovers.yaml",
                            "--set",
                            &cache,
                        ],
                        &[],
                    );
                    std::thread::sleep(Duration::from_millis(after_ms));
                    run.signal(Signal::SIGKILL);
                    let (_, _, stderr, _) = run.finish(Duration::from_secs(10));
                    // What cleanup read, to tell a record that missed something from a
                    // cleanup that missed a recorded thing.
                    let records: Vec<String> = std::fs::read_dir(dir.path())
                        .unwrap()
                        .flatten()
                        .filter_map(|e| std::fs::read_to_string(e.path().join("run.json")).ok())
                        .collect();
                    let said = cleanup(dir.path());
                    let left = settle(dir.path());
                    if !left.is_empty() {
                        failures.push(format!(
                            "trial {i}, SIGKILL after {after_ms} ms: left {left:?}\ncleanup said:\n{said}\nrun.json before cleanup:\n{}\nstagegate's stderr:\n{stderr}",
                            records.join("\n")
                        ));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn on_verdict_reads_its_report_and_leaves_nothing_even_from_a_new_session() {
    let dir = tempfile::tempdir().unwrap();
    let action = "on_verdict={ promote: [sh, -c, \"test -s \\\"$STAGEGATE_REPORT\\\" && echo the report is there; setsid sleep 300 & sleep 300 &\"] }";
    let out = common::stagegate(&[
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "tests/scenarios/tiny.yaml",
        "--set",
        action,
    ]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report = common::only_report(dir.path());
    assert!(
        report["on_verdict"]["output"].as_str().unwrap().contains("the report is there"),
        "{}",
        report["on_verdict"]
    );
    assert_eq!(settle(dir.path()), Vec::<String>::new());
}

#[test]
fn sigkill_during_on_verdict_leaves_nothing_cleanup_cannot_find() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let reports = dir.path().join("reports");
    let action = format!(
        "on_verdict={{ promote: [sh, -c, \"trap '' TERM INT; setsid sleep 300 & sleep 300 & touch {}; wait\"] }}",
        started.display()
    );
    let run = Running::start(
        &["run", "-q", "--report-dir", reports.to_str().unwrap(), "tests/scenarios/tiny.yaml", "--set", &action],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "on_verdict never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    run.signal(Signal::SIGKILL);
    let _ = run.finish(Duration::from_secs(10));
    assert!(!common::leftovers(&reports).is_empty(), "the action should outlive a SIGKILL");
    let said = cleanup(&reports);
    assert_eq!(settle(&reports), Vec::<String>::new(), "{said}");
}

/// Every live process whose command line is `args`.
fn processes_running(args: &[&str]) -> Vec<i32> {
    let wanted = args.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes()))
        .collect()
}

#[test]
fn a_descendant_that_leaves_its_session_and_environment_is_still_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // A child in a new session with a cleared environment: no group, no marker.
    let escapee = "target.process.command=[sh, -c, \"setsid env -i sleep 301.25 & exec python3 ../services/orders_service.py --port {{ port }}\"]";
    let out = common::stagegate(&[
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "tests/scenarios/http-service.yaml",
        "--set",
        escapee,
    ]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    std::thread::sleep(Duration::from_millis(300));
    let left = processes_running(&["sleep", "301.25"]);
    for pid in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "the escapee outlived the run: {left:?}");
}

/// Regression: `STAGEGATE_REPORT` was relative to where stagegate ran, but `on_verdict`
/// runs in the scenario's folder.
#[test]
fn on_verdict_finds_the_report_from_the_scenarios_folder() {
    let cwd = tempfile::tempdir().unwrap();
    let scenario = common::root().join("tests/scenarios/tiny.yaml");
    let action = "on_verdict={ promote: [sh, -c, \"test -s \\\"$STAGEGATE_REPORT\\\" && echo found it\"] }";
    let out = Command::new(common::bin())
        .args(["run", "-q", "--report-dir", "rel", scenario.to_str().unwrap(), "--set", action])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report = common::only_report(&cwd.path().join("rel"));
    assert!(report["on_verdict"]["output"].as_str().unwrap().contains("found it"), "{}", report["on_verdict"]);
}

/// Regression: a copy of a live run's folder, its stagegate pid edited to a dead one,
/// made `cleanup` stop the live run's processes.
#[test]
fn cleanup_of_a_copied_record_leaves_a_live_runs_processes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("live");
    let bin = common::bin();
    let run = Running::start(
        &[
            "run",
            "-q",
            "--report-dir",
            reports.to_str().unwrap(),
            "tests/scenarios/process-store.yaml",
            "--set",
            "workload.duration=30s",
        ],
        &[("STAGEGATE_BIN", bin.to_str().unwrap())],
    );
    // Wait until the store is recorded with its pid.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (folder, store) = loop {
        assert!(Instant::now() < deadline, "the store was never recorded");
        let found = common::run_folders(&reports).into_iter().next().and_then(|folder| {
            let record: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(folder.join("run.json")).ok()?).ok()?;
            let pgid = record["processes"][0]["pgid"].as_i64()?;
            Some((folder, pgid as i32))
        });
        if let Some(f) = found {
            break f;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The forger's copy: same run, no lock, a dead stagegate.
    let forged = dir.path().join("forged");
    let copy = forged.join(folder.file_name().unwrap());
    std::fs::create_dir_all(&copy).unwrap();
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("run.json")).unwrap()).unwrap();
    record["stagegate_pid"] = serde_json::json!(999_999);
    record["stagegate_started"] = serde_json::Value::Null;
    std::fs::write(copy.join("run.json"), record.to_string()).unwrap();
    let said = cleanup(&forged);
    assert!(said.contains("the run is alive"), "{said}");
    assert!(std::fs::metadata(format!("/proc/{store}")).is_ok(), "cleanup stopped a live run's store: {said}");
    run.signal(Signal::SIGINT);
    let (code, ..) = run.finish(Duration::from_secs(20));
    assert_eq!(code, Some(130));
}

#[test]
fn sigkill_leaves_no_descendant_that_left_its_session_and_environment_and_each_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    // A child in a new session with a cleared environment: after a SIGKILL neither the
    // target's group nor the run's marker leads to it; the record of escapes does.
    let escapee = "target.process.command=[sh, -c, \"setsid env -i sleep 302.75 & exec python3 ../services/orders_service.py --port {{ port }}\"]";
    let mut run = Running::start(
        &[
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/http-service.yaml",
            "--set",
            escapee,
            "--set",
            "workload.duration=60s",
        ],
        &[],
    );
    run.wait_for("stage 1 `", Duration::from_secs(30));
    // Escapes are written down once a second: wait until this one is.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let escapee = processes_running(&["sleep", "302.75"]);
        let recorded = common::run_folders(dir.path())
            .iter()
            .filter_map(|f| std::fs::read_to_string(f.join("run.json")).ok())
            .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .flat_map(|r| r["escaped"].as_array().cloned().unwrap_or_default())
            .any(|e| escapee.iter().any(|p| e["pid"] == *p));
        if recorded {
            break;
        }
        assert!(Instant::now() < deadline, "the escapee {escapee:?} was never recorded");
        std::thread::sleep(Duration::from_millis(100));
    }
    run.signal(Signal::SIGKILL);
    let _ = run.finish(Duration::from_secs(10));
    assert_eq!(processes_running(&["sleep", "302.75"]).len(), 1, "the escapee should outlive a SIGKILL");
    let said = cleanup(dir.path());
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_running(&["sleep", "302.75"]).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_running(&["sleep", "302.75"]);
    for pid in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "cleanup missed the escapee:\n{said}");
    assert!(said.contains("it had left this run's process groups"), "{said}");
    // The target's group and the escapee: two, each said once.
    assert!(said.contains("cleanup: 2 process group(s)"), "{said}");
    assert_eq!(settle(dir.path()), Vec::<String>::new(), "{said}");
}
