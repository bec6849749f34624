//! Secrets as values, not text: a `${secret:NAME}` value never shows in progress lines,
//! the plan, diagnostics, logs (stagegate's and its processes'), the report or
//! `on_verdict` output (raw, JSON-escaped or percent-encoded); no value from the
//! environment can change a scenario's structure or make the report stop being JSON;
//! a secret too short to mask without garbling the output is refused. Each test runs
//! the real binary.

mod common;

const PASSWORD: &str = "hunter2pw";
const QUOTED: &str = "to\"ken\\x";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("SG_PASSWORD", PASSWORD), ("SG_QUOTED", QUOTED), ("SG_TRUE", "true"), ("STAGEGATE_LOG", "debug")]
}

fn stagegate_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn assert_clean(what: &str, text: &str) {
    for (name, secret) in [("SG_PASSWORD", PASSWORD), ("SG_QUOTED", QUOTED), ("SG_QUOTED escaped", "to\\\"ken\\\\x")] {
        assert!(!text.contains(secret), "{what} shows {name}:\n{text}");
    }
}

#[test]
fn secrets_never_show_in_progress_lines_plan_logs_report_or_on_verdict_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = stagegate_with_env(
        &["run", "--report-dir", dir.path().to_str().unwrap(), "tests/scenarios/secret-everywhere.yaml"],
        &env(),
    );
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("target http://user:${secret:SG_PASSWORD}@127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("tenant=\"${secret:SG_PASSWORD}\""), "the stage line shows the flag masked:\n{stderr}");
    assert_clean("the terminal (progress and logs)", &stderr);
    assert_clean("the summary", &stdout);
    let run = std::fs::read_dir(dir.path()).unwrap().flatten().next().unwrap().path();
    let text = std::fs::read_to_string(run.join("report.json")).unwrap();
    assert_clean("report.json", &text);
    let report: serde_json::Value = serde_json::from_str(&text).expect("report.json stays JSON");
    assert_eq!(report["description"], "token ${secret:SG_QUOTED} at ${secret:SG_TRUE}");
    assert!(report["on_verdict"]["output"].as_str().unwrap().contains("called with ${secret:SG_PASSWORD}"));
    assert_clean("run.json", &std::fs::read_to_string(run.join("run.json")).unwrap());
    let log = std::fs::read_to_string(run.join("target.log")).unwrap();
    assert!(log.contains("started with ${secret:SG_PASSWORD}"), "the target's log is kept, masked:\n{log}");
    assert_clean("target.log", &log);

    let plan = stagegate_with_env(&["plan", "tests/scenarios/secret-everywhere.yaml"], &env());
    assert_eq!(plan.status.code(), Some(0));
    assert_clean("the plan", &common::text(&plan).0);
}

#[test]
fn secrets_never_show_in_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(common::root().join("tests/scenarios/tiny.yaml"))
        .unwrap()
        .replace("duration: 2s", "duration: \"${secret:SG_PASSWORD}\"")
        .replace("../../synthetic-data", &common::root().join("synthetic-data").display().to_string());
    std::fs::write(&scenario, text).unwrap();
    let out = stagegate_with_env(&["validate", scenario.to_str().unwrap()], &env());
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid value `${secret:SG_PASSWORD}`"), "{stderr}");
    assert_clean("the diagnostics", &stderr);
}

#[test]
fn a_value_from_the_environment_cannot_change_the_scenarios_structure() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.yaml");
    let text = std::fs::read_to_string(common::root().join("tests/scenarios/tiny.yaml"))
        .unwrap()
        .replace("name: tiny", "name: tiny\ndescription: ${SG_NOTE}")
        .replace("../../synthetic-data", &common::root().join("synthetic-data").display().to_string());
    std::fs::write(&scenario, text).unwrap();
    let out =
        stagegate_with_env(&["validate", scenario.to_str().unwrap()], &[("SG_NOTE", "x\nstages: []\nversion: 2")]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("valid (2 stages"), "{stdout}");
}

#[test]
fn a_secret_too_short_to_mask_cleanly_is_refused() {
    let out = stagegate_with_env(
        &["validate", "tests/scenarios/secret-everywhere.yaml"],
        &[("SG_PASSWORD", "e"), ("SG_QUOTED", QUOTED), ("SG_TRUE", "true")],
    );
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("secret `SG_PASSWORD` is shorter than 4 characters"), "{stderr}");
    assert!(stderr.contains("secret-everywhere.yaml:10:"), "located at its reference: {stderr}");
    assert!(!stderr.contains("${secret:SG_PASSWORD}rror"), "{stderr}");
}

#[test]
fn a_secret_cannot_name_what_becomes_a_folder_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("named.yaml");
    let text = std::fs::read_to_string(common::root().join("tests/scenarios/tiny.yaml"))
        .unwrap()
        .replace("name: tiny", "name: ${secret:SG_PASSWORD}")
        .replace("name: candidate", "name: \"${secret:SG_PASSWORD}\"")
        .replace("../../synthetic-data", &common::root().join("synthetic-data").display().to_string());
    std::fs::write(&scenario, text).unwrap();
    let out = stagegate_with_env(&["validate", scenario.to_str().unwrap()], &env());
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("a name cannot hold a secret").count(), 2, "{stderr}");
    assert_clean("the diagnostics", &stderr);
}
