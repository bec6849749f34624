//! A client holding a half-sent request on every endpoint stagegate serves cannot keep
//! a run (or `stagegate proxy`) from stopping: SIGINT still ends it within 5 s, faults
//! lifted, listeners closed, the report written.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::Running;
use nix::sys::signal::Signal;

/// Every `127.0.0.1:PORT` in a line.
fn addresses(line: &str) -> Vec<String> {
    line.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches("http://"))
        .filter(|w| w.starts_with("127.0.0.1:"))
        .map(|w| w.split('/').next().unwrap_or(w).to_string())
        .collect()
}

/// Opens a connection to `addr` and sends the first part of a request, never the rest.
fn half_send(addr: &str, start: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.write_all(start).unwrap();
    s
}

const HALF_HTTP: &[u8] =
    b"POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"context\":";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Holds a half-sent request on each of `endpoints` of a running run, interrupts it,
/// and checks that it stops in time, lifts its faults and closes them all.
fn interrupt_holding(run: Running, dir: &tempfile::TempDir, endpoints: Vec<(String, &[u8])>) {
    let held: Vec<TcpStream> = endpoints.iter().map(|(a, start)| half_send(a, start)).collect();
    std::thread::sleep(Duration::from_millis(300));
    run.signal(Signal::SIGINT);
    let (code, stdout, stderr, took) = run.finish(Duration::from_secs(30));
    assert!(took < Duration::from_secs(5), "took {took:?} with half-sent requests held\n{stderr}");
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    let report = common::only_report(dir.path());
    assert_eq!(report["interrupted"], true);
    assert!(report["faults"].as_array().unwrap().iter().all(|f| f["removed"] == true), "{}", report["faults"]);
    for (addr, _) in &endpoints {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still listens");
    }
    assert!(common::leftovers(dir.path()).is_empty());
    drop(held);
}

#[test]
fn half_sent_requests_on_the_flag_endpoint_the_pipeline_and_the_store_proxy_cannot_hold_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(
        &[
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/tiny.yaml",
            "--set",
            "workload.duration=60s",
            "--set",
            "stages[0].faults[0]={ kind: latency, at: store, delay: 1500ms, from: 0s }",
        ],
        &[],
    );
    let target = run.wait_for("  target ", Duration::from_secs(20));
    let store = run.wait_for("  dependency store", Duration::from_secs(20));
    run.wait_for("fault latency at store started", Duration::from_secs(20));
    let target = addresses(&target);
    let store_proxy = addresses(&store).pop().unwrap();
    assert_eq!(target.len(), 2, "the pipeline and the flag endpoint: {target:?}");
    let endpoints = vec![
        (target[0].clone(), HALF_HTTP),
        (target[1].clone(), HALF_HTTP),
        // A store request cut before its end of line, through a held-back fault.
        (store_proxy, b"APPEND half - {\"x\":".as_slice()),
    ];
    interrupt_holding(run, &dir, endpoints);
}

#[test]
fn half_sent_requests_on_the_sink_and_the_http_fault_proxy_cannot_hold_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port();
    let sink = format!("target.http.sink={{ listen: \"127.0.0.1:{sink_port}\" }}");
    let mut run = Running::start(
        &[
            "run",
            "--report-dir",
            dir.path().to_str().unwrap(),
            "tests/scenarios/http-service.yaml",
            "--set",
            "workload.duration=60s",
            "--set",
            &sink,
            "--set",
            "stages[0].faults=[{ kind: http_error, at: target, status: 503, probability: 1% }]",
        ],
        &[],
    );
    let target = run.wait_for("  target ", Duration::from_secs(30));
    run.wait_for("stage 1 `only` started", Duration::from_secs(30));
    let gate =
        addresses(target.split("behind fault proxy").nth(1).expect("the target's fault proxy is named")).remove(0);
    let endpoints = vec![(gate, HALF_HTTP), (format!("127.0.0.1:{sink_port}"), HALF_HTTP)];
    interrupt_holding(run, &dir, endpoints);
}

/// An echo server for the proxy to stand in front of.
fn echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn api(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn stagegate_proxy_stops_at_once_and_stops_delaying_traffic_with_a_half_sent_api_request() {
    let api_port = free_port();
    let proxy_port = free_port();
    let upstream = echo();
    let mut server = Running::start(&["proxy", "--listen", &format!("127.0.0.1:{api_port}")], &[]);
    server.wait_for("control API on", Duration::from_secs(10));
    let created = api(
        api_port,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"echo","listen":"127.0.0.1:{proxy_port}","upstream":"127.0.0.1:{upstream}"}}"#),
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let toxic = api(
        api_port,
        "POST",
        "/proxies/echo/toxics",
        r#"{"name":"slow","type":"latency","stream":"downstream","attributes":{"latency":1500}}"#,
    );
    assert!(toxic.starts_with("HTTP/1.1 200"), "{toxic}");
    let _held = half_send(
        &format!("127.0.0.1:{api_port}"),
        b"POST /proxies HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{",
    );
    let mut through = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    through.write_all(b"ping").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.signal(Signal::SIGINT);
    let signalled = Instant::now();
    // The held echo is released at once (or the connection closed): never 1.5 s later.
    through.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4];
    let _ = through.read(&mut buf);
    assert!(signalled.elapsed() < Duration::from_millis(1000), "traffic was still delayed after SIGINT");
    let (code, _, stderr, took) = server.finish(Duration::from_secs(20));
    assert!(took < Duration::from_secs(5), "took {took:?}\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(TcpStream::connect(("127.0.0.1", api_port)).is_err(), "the API still listens");
    assert!(TcpStream::connect(("127.0.0.1", proxy_port)).is_err(), "the proxy still listens");
}
