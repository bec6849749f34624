//! Criteria on the system's own metrics (`metrics:`, `prom.NAME`), read from a real
//! Prometheus server (Debian's `prometheus` package) that scrapes stagegate's
//! `/metrics` and the order service's own. The service's defective build fails a third
//! of its orders downstream while answering 201 and storing every one, so stagegate's
//! outside view holds; the PromQL criterion on its failure counter fails it (ROLLBACK)
//! and holds for the good build (PROMOTE). A query that finds no series is INCONCLUSIVE
//! with that reason, and the figures are in the report.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_program, stagegate, text};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Stops a child when dropped (a failing assertion included).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `GET http://127.0.0.1:PORT{path}` answers 200.
fn wait_ready(port: u16, path: &str, what: &str) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ =
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes());
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn service(port: u16, defect: bool) -> Stopped {
    let mut cmd = Command::new("python3");
    cmd.arg(common::root().join("tests/services/metrics_orders_service.py")).args(["--port", &port.to_string()]);
    if defect {
        cmd.arg("--defect");
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_ready(port, "/health", "the order service");
    Stopped(child)
}

#[test]
fn a_promql_criterion_fails_the_defective_build_and_holds_for_the_good_one() {
    require_program("prometheus", "apt-get install prometheus");
    require_program("curl", "apt-get install curl");
    let (prom_port, service_port, metrics_port) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n\
             - job_name: stagegate\n  static_configs: [{{ targets: ['127.0.0.1:{metrics_port}'] }}]\n\
             - job_name: orders\n  static_configs: [{{ targets: ['127.0.0.1:{service_port}'] }}]\n"
        ),
    )
    .unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = Stopped(prometheus);
    wait_ready(prom_port, "/-/ready", "Prometheus");
    // Ready is not yet scraping: wait until both targets have been tried (stagegate's is
    // down until a run serves it), so the runs' first seconds are scraped.
    let _service = service(service_port, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{prom_port}/api/v1/query"), "--data-urlencode", "query=count(up)"])
            .output()
            .unwrap();
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if answer["data"]["result"][0]["value"][1] == "2" {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped its targets: {answer}");
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(_service);

    let run = |defect: bool| -> (Option<i32>, Value) {
        let _service = service(service_port, defect);
        let out = dir.path().join(if defect { "defective" } else { "good" });
        let result = stagegate(&[
            "run",
            "-q",
            "tests/scenarios/prometheus-in.yaml",
            "--out",
            out.to_str().unwrap(),
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
            "--set",
            &format!("target.http.base_url=http://127.0.0.1:{service_port}"),
            "--set",
            &format!("metrics.prometheus=http://127.0.0.1:{prom_port}"),
        ]);
        let (stdout, stderr) = text(&result);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        (result.status.code(), report)
    };
    let outcome = |report: &Value, criterion: &str| -> (String, Value) {
        let a = report["assessments"].as_array().unwrap().iter().find(|a| a["criterion"] == criterion).unwrap();
        (a["outcome"].as_str().unwrap().to_string(), a.clone())
    };

    let (code, good) = run(false);
    assert_eq!(code, Some(0), "the good build promotes: {}", good["reasons"]);
    common::assert_matches_report_schema(&good);
    let (passed, a) = outcome(&good, "prom.failed_share.max < 0.05");
    assert_eq!(passed, "pass", "{a}");
    let (sent, a) = outcome(&good, "prom.sent_rate > 25");
    assert_eq!(sent, "pass", "Prometheus saw stagegate's own requests: {a}");
    let rate = a["measured"].as_f64().unwrap();
    assert!((35.0..=65.0).contains(&rate), "stagegate sends 50/s: {rate}");
    let (absent, a) = outcome(&good, "prom.absent < 1");
    assert_eq!(absent, "inconclusive");
    assert!(a["note"].as_str().unwrap().contains("no series"), "{a}");
    let figures = &good["stages"][0]["metrics"]["prom"]["failed_share"];
    assert!(figures["whole"]["samples"].as_u64().unwrap() >= 3, "{figures}");
    assert_eq!(figures["whole"]["max"], 0.0, "{figures}");

    let (code, bad) = run(true);
    assert_eq!(code, Some(1), "the defective build rolls back: {}", bad["reasons"]);
    let (failed, a) = outcome(&bad, "prom.failed_share.max < 0.05");
    assert_eq!(failed, "fail", "{a}");
    let share = a["measured"].as_f64().unwrap();
    assert!((0.2..=0.5).contains(&share), "a third of the orders fail: {share}");
    // From outside, nothing was wrong: every order was stored and answered.
    assert_eq!(outcome(&bad, "data.lost == 0").0, "pass");
    assert_eq!(outcome(&bad, "errors.rate < 1%").0, "pass");
}
