//! Distributed runs on loopback: a controller (`run --workers 3`) and three
//! `stagegate worker` processes against a real HTTP order service, beside the same
//! scenario and seed in one process. The container test (`tests/distributed_containers.rs`)
//! runs the same across hosts.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Running, bin, root};
use serde_json::Value;

const TOKEN: &str = "loopback-worker-token-0123";

/// A fresh order service on a free port; stopped when dropped.
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    fn start() -> Service {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .arg(root().join("tests/services/orders_service.py"))
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let s = Service { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the order service never listened");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every stored copy's order_id.
    fn stored(&self) -> Vec<String> {
        let out = Command::new("curl").args(["-sf", &format!("{}/orders.jsonl", self.url())]).output().unwrap();
        assert!(out.status.success(), "listing the stored orders failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["order_id"].as_str().map_or_else(|| v["order_id"].to_string(), String::from)
            })
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn decode(encoded: &str) -> hdrhistogram::Histogram<u64> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut bytes.as_slice()).unwrap()
}

fn worker(controller: &str, index: u32) -> Child {
    Command::new(bin())
        .args(["worker", "--controller", controller, "--token", TOKEN, "--index", &index.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts a controller for `n` workers on a free loopback port; returns it and its URL.
fn controller(args: &[&str], n: u32) -> (Running, String) {
    let mut all = vec!["run", "tests/scenarios/distributed.yaml", "--workers"];
    let n = n.to_string();
    all.push(&n);
    all.extend(["--controller-listen", "127.0.0.1:0", "--worker-token", TOKEN]);
    all.extend(args);
    let mut run = Running::start(&all, &[]);
    let line = run.wait_for("start each: stagegate worker --controller http://", Duration::from_secs(30));
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    (run, url)
}

fn wait_all(workers: Vec<Child>) -> Vec<(Option<i32>, String)> {
    workers
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .collect()
}

#[test]
fn three_workers_send_what_one_process_sends_and_reach_its_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    // One process.
    let single_sut = Service::start();
    let single_dir = tmp.path().join("single");
    let base = format!("target.http.base_url={}", single_sut.url());
    let out = common::stagegate(&[
        "run",
        "tests/scenarios/distributed.yaml",
        "--set",
        &base,
        "--out",
        single_dir.to_str().unwrap(),
        "-q",
    ]);
    let single = report(&single_dir);
    let single_stored = single_sut.stored();

    // A controller and three workers.
    let sut = Service::start();
    let dir = tmp.path().join("distributed");
    let base = format!("target.http.base_url={}", sut.url());
    let (run, url) = controller(&["--set", &base, "--out", dir.to_str().unwrap()], 3);
    let workers: Vec<Child> = (0..3).map(|i| worker(&url, i)).collect();
    let (code, _, stderr, _) = run.finish(Duration::from_secs(120));
    let exits = wait_all(workers);
    for (i, (c, err)) in exits.iter().enumerate() {
        assert_eq!(*c, Some(0), "worker {i} exit: {err}");
    }
    let doc = report(&dir);
    common::assert_matches_report_schema(&doc);

    // The same verdict, for the same reasons: records sent broken on purpose were
    // accepted, the same number of them.
    assert_eq!(code, out.status.code(), "{stderr}");
    assert_eq!(doc["verdict"], single["verdict"], "{stderr}");
    assert_eq!(doc["verdict"], "ROLLBACK", "{stderr}");
    for (d, s) in doc["stages"].as_array().unwrap().iter().zip(single["stages"].as_array().unwrap()) {
        assert_eq!(d["metrics"]["data"], s["metrics"]["data"], "stage {}", d["name"]);
        assert_eq!(d["metrics"]["warmup_data"], s["metrics"]["warmup_data"], "stage {}", d["name"]);
        assert!(d.get("workers_incomplete").is_none(), "{}", d["workers_incomplete"]);
    }

    // The union of the workers' records is the single run's: the same keys stored.
    let stored = sut.stored();
    let keys: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(keys.len(), stored.len(), "no order is stored twice");
    assert_eq!(keys, single_stored.iter().collect::<BTreeSet<_>>(), "the stored orders differ from one process's");

    // Counts: the workers' add up to the stage's, and to what the service stored.
    let workers = doc["distributed"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let mut acked_total = 0;
    for (s, stage) in doc["stages"].as_array().unwrap().iter().enumerate() {
        let parts: Vec<&Value> = workers.iter().map(|w| &w["stages"][s]).collect();
        let sum = |field: &str| parts.iter().map(|p| p[field].as_u64().unwrap()).sum::<u64>();
        let data = &stage["metrics"]["data"];
        let warm = &stage["metrics"]["warmup_data"];
        let warm_sent = warm["sent"].as_u64().unwrap_or(0);
        assert_eq!(sum("sent"), data["sent"].as_u64().unwrap() + warm_sent, "stage {s}: {}", stage["metrics"]);
        for p in &parts {
            // Each worker sent about a third.
            let third = sum("sent") as f64 / 3.0;
            assert!((p["sent"].as_u64().unwrap() as f64 - third).abs() <= 2.0, "{p}");
        }
        acked_total += sum("acked");

        // The stage's latency is the union of the workers' samples: their histograms
        // added give the same count and the same p99, not an average of p99s.
        let mut union = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for p in &parts {
            union.add(decode(p["histogram"].as_str().unwrap())).unwrap();
        }
        let whole = stage["histograms"].as_array().unwrap().iter().find(|h| h["variant"].is_null()).unwrap();
        let whole = decode(whole["encoded"].as_str().unwrap());
        assert_eq!(union.len(), whole.len());
        assert_eq!(union.value_at_quantile(0.99), whole.value_at_quantile(0.99));
        assert_eq!(union.len(), stage["metrics"]["requests"].as_u64().unwrap());
    }
    let rejected: u64 =
        workers.iter().flat_map(|w| w["stages"].as_array().unwrap()).map(|p| p["rejected"].as_u64().unwrap()).sum();
    assert_eq!(
        acked_total as usize,
        stored.len(),
        "acknowledged {acked_total}, stored {} ({rejected} refused)",
        stored.len()
    );

    // Clock offsets were measured and reported; the interval log has every worker.
    for w in workers {
        assert!(w["clock_offset_ms"].as_f64().unwrap().abs() < 50.0, "{w}");
        assert!(w["rtt_ms"].as_f64().unwrap() > 0.0, "{w}");
    }
    let log = std::fs::read_to_string(dir.join("workers.hlog")).unwrap();
    for i in 0..3 {
        assert!(log.contains(&format!("Tag=worker-{i}/candidate,")), "worker {i} missing from the interval log");
    }
}

#[test]
fn a_worker_killed_mid_stage_makes_that_stage_inconclusive_and_the_report_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let sut = Service::start();
    let dir = tmp.path().join("run");
    let base = format!("target.http.base_url={}", sut.url());
    let (mut run, url) = controller(&["--set", &base, "--out", dir.to_str().unwrap()], 3);
    let mut workers: Vec<Child> = (0..3).map(|i| worker(&url, i)).collect();
    run.wait_for("stage 1 `baseline` started", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    workers[1].kill().unwrap();
    let (code, _, stderr, _) = run.finish(Duration::from_secs(120));
    let _ = workers[1].wait();
    let rest: Vec<Child> = workers.drain(..).enumerate().filter(|(i, _)| *i != 1).map(|(_, c)| c).collect();
    for (c, err) in wait_all(rest) {
        assert_eq!(c, Some(0), "{err}");
    }
    assert_eq!(code, Some(3), "{stderr}");
    let doc = report(&dir);
    assert_eq!(doc["verdict"], "INCONCLUSIVE");
    assert_eq!(doc["interrupted"], false);
    for stage in doc["stages"].as_array().unwrap() {
        let why = stage["workers_incomplete"].as_str().unwrap_or_else(|| panic!("{}", stage["name"]));
        assert!(why.contains("worker 1"), "{why}");
    }
    let baseline = &doc["stages"][0];
    assert!(baseline["workers_incomplete"].as_str().unwrap().contains("stopped reporting"), "{baseline}");
    for a in doc["assessments"].as_array().unwrap() {
        assert_eq!(a["outcome"], "inconclusive", "{a}");
    }
    // The lost worker's part shows in its figures; the others' shares are whole.
    let w = &doc["distributed"]["workers"];
    assert!(w[1]["stages"][0]["lost"].is_string());
    assert!(w[0]["stages"][0]["lost"].is_null() && w[2]["stages"][0]["lost"].is_null(), "{w}");
}

/// Regression: in a closed model whose concurrency does not divide evenly among the
/// workers, the one with fewer connections sent fewer records and was named lost; one
/// with none (concurrency under the number of workers) made every run INCONCLUSIVE.
#[test]
fn honest_workers_with_uneven_shares_of_a_closed_model_are_not_named_lost() {
    for (concurrency, n) in [(5u32, 3u32), (1, 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let sut = Service::start();
        let dir = tmp.path().join("run");
        let base = format!("target.http.base_url={}", sut.url());
        let arrival = format!("workload.arrival={{concurrency: {concurrency}}}");
        let (run, url) = controller(
            &["--set", &base, "--set", &arrival, "--set", "stages=[{name: only}]", "--out", dir.to_str().unwrap()],
            n,
        );
        let workers: Vec<Child> = (0..n).map(|i| worker(&url, i)).collect();
        let (code, stdout, stderr, _) = run.finish(Duration::from_secs(120));
        for (c, err) in wait_all(workers) {
            assert_eq!(c, Some(0), "{err}");
        }
        let doc = report(&dir);
        assert!(
            doc["stages"][0]["workers_incomplete"].is_null(),
            "concurrency {concurrency} over {n}: {}",
            doc["stages"][0]
        );
        assert_eq!(code, Some(0), "concurrency {concurrency} over {n}:\n{stdout}\n{stderr}");
    }
}

#[test]
fn workers_that_never_come_or_bring_the_wrong_token_stop_the_run_before_any_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let sut = Service::start();
    let dir = tmp.path().join("run");
    let base = format!("target.http.base_url={}", sut.url());
    let (run, url) = controller(&["--set", &base, "--join-timeout", "3s", "--out", dir.to_str().unwrap()], 2);
    let wrong = Command::new(bin())
        .args(["worker", "--controller", &url, "--token", "not-the-token-0000000", "--index", "0"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("token"), "{}", String::from_utf8_lossy(&wrong.stderr));
    let out_of_range =
        Command::new(bin()).args(["worker", "--controller", &url, "--token", TOKEN, "--index", "5"]).output().unwrap();
    assert_eq!(out_of_range.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out_of_range.stderr).contains("out of range"));
    let (code, stdout, stderr, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stdout.contains("0 of 2 load workers joined within 3s; missing: index 0, 1"), "{stdout}");
    let doc = report(&dir);
    assert!(doc["stages"].as_array().unwrap().is_empty());
    assert_eq!(doc["distributed"]["workers"].as_array().unwrap().len(), 0);
}

/// The builtin pipeline times when each record shows in its store: through workers, whose
/// records' digests reach the controller a moment after the store may hold them, the
/// records stored first are still counted once and timed from when they were stored.
#[test]
fn freshness_through_workers_is_the_systems_not_the_reporting_delay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut all = vec!["run", "scenarios/quickstart.yaml", "--workers", "2"];
    all.extend(["--controller-listen", "127.0.0.1:0", "--worker-token", TOKEN, "--out", dir.to_str().unwrap()]);
    all.extend(["--set", "workload.duration=4s", "--set", "stages[2].faults[0].for=1s"]);
    all.extend(["--set", common::RELAXED_HEALTH]);
    let mut run = Running::start(&all, &[]);
    let line = run.wait_for("start each: stagegate worker --controller http://", Duration::from_secs(30));
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    let workers: Vec<Child> = (0..2).map(|i| worker(&url, i)).collect();
    let (code, _, stderr, _) = run.finish(Duration::from_secs(120));
    for (c, err) in wait_all(workers) {
        assert_eq!(c, Some(0), "{err}");
    }
    assert!(stderr.contains("load worker 0 joined from") && stderr.contains("load worker 1 joined from"), "{stderr}");
    let doc = report(&dir);
    assert_eq!(code, Some(0), "{stderr}");
    for stage in doc["stages"].as_array().unwrap() {
        let data = &stage["metrics"]["data"];
        assert_eq!((data["lost"].as_u64(), data["duplicated"].as_u64()), (Some(0), Some(0)), "{}", stage["name"]);
        let p99 = stage["metrics"]["freshness"]["p99"].as_f64().unwrap_or_else(|| panic!("{}", stage["metrics"]));
        // One process measures about 10 ms here; the workers' 200 ms reporting period
        // must not show up in it.
        assert!(p99 < 150.0, "stage {}: freshness p99 {p99} ms", stage["name"]);
    }
}

/// `curl` against the controller's API with the run's token; the answer's body.
fn api(url: &str, method: &str, path: &str, body: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "30", "-X", method, "-H", &format!("Authorization: Bearer {TOKEN}")]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("{url}{path}")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A run with worker 0 real and "worker 1" a forger holding the token: `forge` makes
/// the forger's batches from its session, the stage's length in µs and a batch number
/// (it is asked for one a second until it gives one that finishes the stage). Gives the
/// stage's `workers_incomplete`, after checking that the forgery stopped the verdict.
fn forged_stage(forge: impl Fn(&str, u64, u64) -> (String, bool)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let sut = Service::start();
    let dir = tmp.path().join("run");
    let base = format!("target.http.base_url={}", sut.url());
    let (run, url) = controller(&["--set", &base, "--set", "stages=[{name: only}]", "--out", dir.to_str().unwrap()], 2);
    let real = worker(&url, 0);
    let join = format!(
        r#"{{"index":1,"host":"forger","protocol":2,"stagegate_version":"{}","clock_offset_ms":0,"rtt_ms":1}}"#,
        env!("CARGO_PKG_VERSION")
    );
    let assignment: Value = serde_json::from_str(&api(&url, "POST", "/v1/join", Some(&join))).unwrap();
    let session = assignment["session"].as_str().unwrap();
    let next: Value = serde_json::from_str(&api(&url, "GET", "/v1/next?worker=1&from=0", None)).unwrap();
    assert_eq!(next["next"], "stage", "{next}");
    let end_us = next["end_us"].as_u64().unwrap();
    for seq in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let (batch, last) = forge(session, end_us, seq);
        let reply = api(&url, "POST", "/v1/batch", Some(&batch));
        if last || reply.contains("stop\":true") {
            break;
        }
    }
    let (code, _, stderr, _) = run.finish(Duration::from_secs(120));
    for (c, err) in wait_all(vec![real]) {
        assert_eq!(c, Some(0), "{err}");
    }
    assert_eq!(code, Some(3), "{stderr}");
    let doc = report(&dir);
    // The real worker's share counted whole.
    assert!(doc["distributed"]["workers"][0]["stages"][0]["lost"].is_null());
    doc["stages"][0]["workers_incomplete"].as_str().unwrap().to_string()
}

/// A batch of worker 1's: `sent` and `ended` as JSON lists, `finished` as JSON or `null`.
fn batch(session: &str, seq: u64, sent: &str, ended: &str, finished: &str) -> String {
    format!(
        r#"{{"worker":1,"session":"{session}","stage":0,"seq":{seq},"sent":{sent},"ended":{ended},"interval":null,"finished":{finished}}}"#
    )
}

/// A worker holding the token but claiming its share done without sending it cannot turn
/// a partial stage into a verdict; one without the token is refused before its body is
/// read; and no one but the worker that joined posts as it.
#[test]
fn forged_completions_and_foreign_posts_do_not_count() {
    let tmp = tempfile::tempdir().unwrap();
    let sut = Service::start();
    let dir = tmp.path().join("run");
    let base = format!("target.http.base_url={}", sut.url());
    let (run, url) = controller(&["--set", &base, "--set", "stages=[{name: only}]", "--out", dir.to_str().unwrap()], 2);

    // Without the token: refused at the headers, a 30 MB body announced and never sent.
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"POST /v1/batch HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong-token-0000000\r\ncontent-type: application/json\r\ncontent-length: 31457280\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 64];
    let n = s.read(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    // Worker 0 is real; "worker 1" joins, then says at once that its share is done (and,
    // to excuse it, that it reached the most requests a stage may send).
    let real = worker(&url, 0);
    let join = format!(
        r#"{{"index":1,"host":"forger","protocol":2,"stagegate_version":"{}","clock_offset_ms":0,"rtt_ms":1}}"#,
        env!("CARGO_PKG_VERSION")
    );
    let assignment: Value = serde_json::from_str(&api(&url, "POST", "/v1/join", Some(&join))).unwrap();
    let session = assignment["session"].as_str().unwrap();
    let next: Value = serde_json::from_str(&api(&url, "GET", "/v1/next?worker=1&from=0", None)).unwrap();
    assert_eq!(next["next"], "stage", "{next}");
    std::thread::sleep(Duration::from_secs(1));
    // Posting as worker 0 without its session is refused.
    let foreign = r#"{"worker":0,"session":"not-its-session","stage":0,"seq":0,"sent":[],"ended":[],"interval":null,"finished":null}"#;
    assert!(api(&url, "POST", "/v1/batch", Some(foreign)).contains("session"));
    let done = format!(
        r#"{{"worker":1,"session":"{session}","stage":0,"seq":0,"sent":[],"ended":[],"interval":null,"finished":{{"completed":true,"dropped":0,"held_back":0,"capped":true,"length_us":{},"overflowed":false}}}}"#,
        next["end_us"]
    );
    let reply = api(&url, "POST", "/v1/batch", Some(&done));
    assert!(reply.contains("end_us"), "{reply}");
    let (code, _, stderr, _) = run.finish(Duration::from_secs(120));
    for (c, err) in wait_all(vec![real]) {
        assert_eq!(c, Some(0), "{err}");
    }
    assert_eq!(code, Some(3), "{stderr}");
    assert!(!stderr.contains("stopped sending at"), "a forged cap is not the run's cap:\n{stderr}");
    let doc = report(&dir);
    let why = doc["stages"][0]["workers_incomplete"].as_str().unwrap();
    assert!(
        why.contains("worker 1 said its share of stage `only` was complete after") && why.contains("of the"),
        "{why}"
    );
    // The real worker's share counted whole.
    assert!(doc["distributed"]["workers"][0]["stages"][0]["lost"].is_null());
}

/// Regression (re-check of the controller's checks): a forger that reports every send of
/// its share "held back by the target" (having sent none), or that makes up sends said to
/// be malformed on purpose and rejected, in a stage that breaks no record, is named lost:
/// both had passed every check and got a PROMOTE on half the load.
#[test]
fn made_up_held_back_sends_and_made_up_malformed_records_are_named() {
    // The stage's 5 s (its end_us) are over by batch 7; a batch a second until then.
    let why = forged_stage(|session, end_us, seq| {
        let over = (seq + 1) * 1_000_000 > end_us + 1_500_000;
        let finished = if over {
            format!(
                r#"{{"completed":true,"dropped":0,"held_back":375,"capped":false,"length_us":{end_us},"overflowed":false}}"#
            )
        } else {
            "null".into()
        };
        (batch(session, seq, "[]", "[]", &finished), over)
    });
    assert!(why.contains("worker 1 said the target held back 375 of its sends"), "{why}");

    let why = forged_stage(|session, end_us, seq| {
        let over = (seq + 1) * 1_000_000 > end_us + 1_500_000;
        // 75 made-up sends a second, in worker 1's slots (the odd ones), all "rejected".
        let slots: Vec<u64> = (seq * 75..(seq + 1) * 75).map(|i| 2 * i + 1).collect();
        let sent: Vec<String> = slots
            .iter()
            .map(|s| format!(r#"{{"offset_us":{},"slot":{s},"key":"made-up-{s}","digest":{{"fields":[],"pii":[]}},"invalid":true}}"#, s * 3333))
            .collect();
        let ended: Vec<String> = slots
            .iter()
            .map(|s| {
                format!(
                    r#"{{"offset_us":{},"latency_us":900,"outcome":"r","key":"made-up-{s}","send_lag_us":0}}"#,
                    s * 3333
                )
            })
            .collect();
        let finished = if over {
            format!(
                r#"{{"completed":true,"dropped":0,"held_back":0,"capped":false,"length_us":{end_us},"overflowed":false}}"#
            )
        } else {
            "null".into()
        };
        (batch(session, seq, &format!("[{}]", sent.join(",")), &format!("[{}]", ended.join(",")), &finished), over)
    });
    assert!(why.contains("worker 1 said it sent a malformed record in slot 1 of stage `only`"), "{why}");

    // Records whose digests carry names the schema does not have (a forger's padding:
    // the controller kept every such name to the run's end).
    let why = forged_stage(|session, _, seq| {
        let padded = format!(r#"[["{}",1]]"#, "x".repeat(1000));
        let sent = format!(
            r#"[{{"offset_us":1000,"slot":1,"key":"k-{seq}","digest":{{"fields":{padded},"pii":[]}},"invalid":false}}]"#
        );
        (batch(session, seq, &sent, "[]", "null"), true)
    });
    assert!(why.contains("worker 1 sent records the scenario's schema does not make"), "{why}");
}
