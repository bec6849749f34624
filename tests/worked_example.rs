//! The worked example (`examples/orders-service`): a Python service backed by a Redis
//! that stagegate starts from Debian's redis-server, with faults on Redis under both
//! flag states. The new write path duplicates orders when connections reset; the current
//! one does not, and the run leaves no process behind. Defective twins of the service
//! (`tests/services/bad_example_app.py`: every tenth write dropped, made twice or altered)
//! are counted exactly, and the service itself is counted clean.

mod common;

#[test]
fn the_worked_example_rolls_back_the_duplicating_path() {
    common::require_program("redis-server", "`apt-get install redis-server`");
    let dir = tempfile::tempdir().unwrap();
    let out = common::stagegate(&[
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "examples/orders-service/scenario.yaml",
    ]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report = common::only_report(dir.path());
    let data = |i: usize| report["stages"][i]["metrics"]["data"].clone();
    for i in [0, 1] {
        assert_eq!(data(i)["duplicated"], 0, "the current path: {}", data(i));
        assert_eq!(data(i)["lost"], 0, "the current path: {}", data(i));
    }
    assert!(data(2)["duplicated"].as_u64().unwrap() > 0, "the new path: {}", data(2));
    assert!(stdout.contains("stage `candidate-resets`: `data.duplicated == 0` failed"), "{stdout}");
    // Redis and the service were started by stagegate and are gone.
    let run = std::fs::read_dir(dir.path()).unwrap().flatten().next().unwrap().path();
    let runfile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(runfile["finished"], true);
    let pids: Vec<i64> = runfile["processes"].as_array().unwrap().iter().map(|p| p["pgid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 2, "redis and the service: {runfile}");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z"), "pid {pid} outlived the run");
    }
    assert!(run.join("redis.log").exists() && run.join("target.log").exists());
}

/// Runs the example's service (or its defective twin) for one 2-second stage without
/// faults or warm-up, so every tenth order is exactly 20 orders.
fn one_clean_stage(command: &str) -> (std::process::Output, serde_json::Value) {
    common::require_program("redis-server", "`apt-get install redis-server`");
    let dir = tempfile::tempdir().unwrap();
    let set = format!("target.process.command={command}");
    let out = common::stagegate(&[
        "run",
        "-q",
        "--report-dir",
        dir.path().to_str().unwrap(),
        "examples/orders-service/scenario.yaml",
        "--set",
        &set,
        "--set",
        "stages=[{ name: only }]",
        "--set",
        "workload.duration=2s",
        "--set",
        "workload.warmup=0s",
        // It checks what the service stores; stagegate's own lateness on a busy machine
        // is tests/health.rs's subject.
        "--set",
        common::RELAXED_HEALTH,
    ]);
    let report = common::only_report(dir.path());
    (out, report["stages"][0]["metrics"]["data"].clone())
}

#[test]
fn defective_twins_of_the_example_are_counted_exactly_and_the_example_is_clean() {
    let redis = r#"--port, "{{ port }}", --redis, "{{ dependencies.redis.address }}""#;
    let (out, data) = one_clean_stage(&format!("[python3, app.py, {redis}]"));
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
    assert_eq!(data["acked"], 200);
    for count in ["lost", "duplicated", "corrupted"] {
        assert_eq!(data[count], 0, "{count}: {data}");
    }
    for (bad, count) in [("drop", "lost"), ("duplicate", "duplicated"), ("alter", "corrupted")] {
        let twin = format!("[python3, ../../tests/services/bad_example_app.py, --bad, {bad}, {redis}]");
        let (out, data) = one_clean_stage(&twin);
        assert_eq!(out.status.code(), Some(1), "{bad}: {:?}", common::text(&out));
        assert_eq!(data[count], 20, "{bad}: {data}");
        let others: u64 = ["lost", "duplicated", "corrupted"]
            .iter()
            .filter(|c| **c != count)
            .map(|c| data[*c].as_u64().unwrap())
            .sum();
        assert_eq!(others, 0, "{bad}: {data}");
    }
}
