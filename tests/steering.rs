//! Steering a run through the live page's API (`stagegate run --ui`): an operator
//! holds the running stage, starts a fault with a time to live, and aborts; requests
//! without the token, with a bad body or naming another host are refused. Every
//! attempt is in `steering.jsonl` and the report, in order, and the verdict of the
//! aborted run is what `steering.on_abort` says. An address beyond loopback without a
//! token, and a weak token, are refused before anything runs.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{RELAXED_HEALTH, stagegate, text};
use serde_json::{Value, json};

const SECRET: &str = "alice-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP request to the live page's server; the status and the JSON answer.
fn call(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>, host: &str) -> (u16, Value) {
    call_with(port, method, path, token, body, host, "")
}

/// [`call`] with extra header lines.
fn call_with(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    host: &str,
    extra: &str,
) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = answer.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Waits until the page's state satisfies `ready`; returns it.
fn state_when(port: u16, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, s) = call(port, "GET", "/api/state", None, None, &local(port));
        if ready(&s) {
            return s;
        }
        if Instant::now() > deadline {
            let mut shown = s.clone();
            shown["charts"] = Value::Null;
            panic!("never came: {what}; last state: {shown}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(port: u16, dir: &std::path::Path, extra: &[&str]) -> common::Running {
    let ui = local(port);
    let token = format!("alice={SECRET}");
    let mut args = vec![
        "run",
        "scenarios/quickstart.yaml",
        "--out",
        dir.to_str().unwrap(),
        "--ui",
        &ui,
        "--ui-token",
        &token,
        "--set",
        "workload.duration=6s",
        "--set",
        RELAXED_HEALTH,
    ];
    args.extend_from_slice(extra);
    let mut run = common::Running::start(&args, &[]);
    run.wait_for("live page: http://127.0.0.1", Duration::from_secs(30));
    run
}

#[test]
fn hold_a_fault_and_abort_through_the_api_are_audited_and_reported() {
    let port = free_port();
    let reports = tempfile::tempdir().unwrap();
    let dir = reports.path().join("run");
    let run = start(port, &dir, &[]);
    let host = local(port);
    state_when(port, "baseline 2s in", |s| {
        s["stage"]["name"] == "baseline" && s["stage"]["elapsed_secs"].as_u64() >= Some(2)
    });

    // Without the token, with a bad body, for another host: refused.
    let (status, _) = call(port, "POST", "/api/hold", None, Some(r#"{"for": "4s"}"#), &host);
    assert_eq!(status, 401);
    let (status, _) = call(port, "POST", "/api/hold", Some("not-the-token-at-all"), Some("{}"), &host);
    assert_eq!(status, 401);
    let (status, answer) = call(port, "POST", "/api/hold", Some(SECRET), Some(r#"{"for": "forever"}"#), &host);
    assert_eq!(status, 400, "{answer}");
    let browser = "User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n";
    let (status, _) = call_with(port, "GET", "/api/state", None, None, "attacker.example", browser);
    assert_eq!(status, 421, "a name pointed at loopback from elsewhere is not this server");
    let (status, _) =
        call_with(port, "POST", "/api/abort", Some(SECRET), None, &host, "Origin: http://attacker.example\r\n");
    assert_eq!(status, 403, "another site's page cannot steer, token or not");

    // Hold: the baseline now lasts 10s instead of 6s.
    let (status, answer) = call(port, "POST", "/api/hold", Some(SECRET), Some(r#"{"for": "4s"}"#), &host);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("now ends at 10s"), "{answer}");
    // A fault from the catalog, for 2 seconds; a misspelt one is refused, naming it.
    let fault = json!({"kind": "latency", "at": "store", "delay": "30ms", "ttl": "2s"}).to_string();
    let (status, answer) = call(port, "POST", "/api/faults", Some(SECRET), Some(&fault), &host);
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = call(
        port,
        "POST",
        "/api/faults",
        Some(SECRET),
        Some(r#"{"kind": "latencyy", "at": "store", "ttl": "2s"}"#),
        &host,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("did you mean `latency`"), "{answer}");
    let s = state_when(port, "the live fault on the page", |s| {
        s["stage"]["faults"].as_array().is_some_and(|f| f.iter().any(|f| f["by"] == "alice"))
    });
    assert_eq!(s["stage"]["end_secs"], 10, "{}", s["stage"]);

    // The held baseline ends, the candidate starts: abort it.
    state_when(port, "the candidate running", |s| s["stage"]["name"] == "candidate");
    let (status, answer) = call(port, "POST", "/api/abort", Some(SECRET), None, &host);
    assert_eq!(status, 200, "{answer}");
    let (status, _) = call(port, "POST", "/api/abort", Some(SECRET), None, &host);
    assert_eq!(status, 409, "aborting twice");

    let (code, _, stderr, took) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(3), "an aborted run is INCONCLUSIVE by default: {stderr}");
    assert!(took < Duration::from_secs(20), "the abort took {took:?}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    common::assert_matches_report_schema(&report);
    assert_eq!(report["verdict"], "INCONCLUSIVE");
    assert!(!report["interrupted"].as_bool().unwrap(), "an operator's abort is not an interruption");
    assert!(report["steered_abort"].as_str().unwrap().contains("`alice` aborted the run during stage `candidate`"));
    assert!(report["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("steering.on_abort")));
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "slow-store never ran");
    assert_eq!(stages[0]["length_secs"], 10.0, "the hold moved the baseline's end");
    assert!(stages[0]["completed"].as_bool().unwrap());
    assert!(!stages[1]["completed"].as_bool().unwrap());
    // Judged over 9 seconds after its warm-up, at 200/s.
    let judged = stages[0]["metrics"]["requests"].as_u64().unwrap();
    assert!((1700..=1800).contains(&judged), "{judged}");
    let faults = report["faults"].as_array().unwrap();
    let live = faults.iter().find(|f| f["by"] == "alice").expect("the live fault is in the report");
    let lasted = live["ended_secs"].as_f64().unwrap() - live["started_secs"].as_f64().unwrap();
    assert!((1.9..3.0).contains(&lasted), "{live}");
    assert!(faults.iter().all(|f| f["removed"] == true), "{faults:?}");

    // The audit: every attempt, in order, the same in the file and the report.
    let audit = report["steering"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = audit
        .iter()
        .map(|a| {
            (
                a["token"].as_str().unwrap().into(),
                a["action"].as_str().unwrap().into(),
                a["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("(none)", "hold", "refused"),
        ("(none)", "hold", "refused"),
        ("alice", "hold", "refused"),
        ("alice", "hold", "ok"),
        ("alice", "fault", "ok"),
        ("alice", "fault", "refused"),
        ("alice", "abort", "ok"),
        ("alice", "abort", "refused"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(summary, expected);
    assert_eq!(audit[2]["request"]["for"], "forever", "a refused request is kept as sent");
    assert_eq!(audit[3]["stage"], "baseline");
    assert_eq!(audit[3]["request"]["for"], "4s");
    assert_eq!(audit[6]["stage"], "candidate");
    let lines: Vec<Value> = std::fs::read_to_string(dir.join("steering.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&lines, audit);
    assert!(!std::fs::read_to_string(dir.join("steering.jsonl")).unwrap().contains(SECRET), "no secret in the log");
}

#[test]
fn advance_and_an_abort_the_scenario_calls_a_rollback() {
    let port = free_port();
    let reports = tempfile::tempdir().unwrap();
    let dir = reports.path().join("run");
    let run = start(port, &dir, &["--set", "steering.on_abort=rollback"]);
    let host = local(port);
    state_when(port, "baseline 3s in", |s| {
        s["stage"]["name"] == "baseline" && s["stage"]["elapsed_secs"].as_u64() >= Some(3)
    });
    let (status, answer) = call(port, "POST", "/api/advance", Some(SECRET), None, &host);
    assert_eq!(status, 200, "{answer}");
    state_when(port, "the candidate running", |s| s["stage"]["name"] == "candidate");
    let (status, answer) = call(port, "POST", "/api/abort", Some(SECRET), Some("{}"), &host);
    assert_eq!(status, 200, "{answer}");
    let (code, stdout, stderr, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"], "ROLLBACK");
    let baseline = &report["stages"][0];
    let length = baseline["length_secs"].as_f64().unwrap();
    assert!((3.0..4.5).contains(&length), "advanced after about 3s: {length}");
    assert!(baseline["completed"].as_bool().unwrap(), "an advanced stage is judged as complete");
    assert!(baseline["series"]["points"].as_array().unwrap().len() <= 5, "its series stops where it ended");
}

#[test]
fn a_page_beyond_loopback_needs_a_given_token_and_tokens_are_checked() {
    let reports = tempfile::tempdir().unwrap();
    let dir = reports.path().join("run");
    let out = stagegate(&["run", "scenarios/quickstart.yaml", "--out", dir.to_str().unwrap(), "--ui", "0.0.0.0:0"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("beyond loopback") && stderr.contains("--ui-token"), "{stderr}");
    for bad in ["bob=short", "nosecret", "b b=0123456789abcdef0"] {
        let out =
            stagegate(&["run", "scenarios/quickstart.yaml", "--out", dir.to_str().unwrap(), "--ui", "--ui-token", bad]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--ui-token"), "{stderr}");
    }
    // `--ui FILE`: the option took the scenario file as its address; it is the file.
    let out = stagegate(&["run", "--ui", "scenarios/quickstart.yaml", "--ui-token", "bob=short"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ui-token: `bob`'s secret"), "the file was read as the scenario: {stderr}");
    assert!(!dir.exists(), "nothing ran");
}
