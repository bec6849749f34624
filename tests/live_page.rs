//! The live page (`stagegate run --ui`) in a real browser: Debian's Chromium, headless,
//! opens the address stagegate prints, twice a few seconds apart. Both times the page
//! shows the running stage with its charts and the steering controls (the token came in
//! the address), the figures moved on between the two, the screenshots differ, and the
//! browser logged no console message or error.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::RELAXED_HEALTH;

/// The text of the element with `id` in a dumped DOM.
fn figure(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let at = dom.find(&marker).unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}")) + marker.len();
    let inside = &dom[at..];
    let start = inside.find('>').unwrap() + 1;
    inside[start..].split('<').next().unwrap().to_string()
}

/// Opens `url` in headless Chromium: the DOM after the page had time to take its first
/// update, a screenshot, and the browser's log.
fn browse(url: &str, shot: &Path) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let chromium = |extra: &[&str]| {
        // Within a deadline: a page that never settles fails the test, not the suite.
        Command::new("timeout")
            .args(["60", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .unwrap()
    };
    let dom = chromium(&["--dump-dom", "--virtual-time-budget=2000"]);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let shot_arg = format!("--screenshot={}", shot.display());
    let picture = chromium(&[&shot_arg, "--window-size=1300,1500", "--virtual-time-budget=2000"]);
    assert!(picture.status.success(), "{}", String::from_utf8_lossy(&picture.stderr));
    let log = format!("{}{}", String::from_utf8_lossy(&dom.stderr), String::from_utf8_lossy(&picture.stderr));
    (String::from_utf8_lossy(&dom.stdout).into_owned(), log)
}

/// The `version` of the first `n` states `/api/events` pushes.
fn pushed_versions(port: u16, n: usize) -> Vec<u64> {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).unwrap();
    let mut versions = Vec::new();
    for line in std::io::BufReader::new(s).lines() {
        let line = line.expect("the stream keeps coming");
        if let Some(data) = line.strip_prefix("data: ") {
            let state: serde_json::Value = serde_json::from_str(data).unwrap();
            versions.push(state["version"].as_u64().unwrap());
            if versions.len() == n {
                break;
            }
        }
    }
    versions
}

#[test]
fn the_live_page_moves_with_the_run_in_a_real_browser() {
    common::require_program("chromium", "apt-get install chromium");
    let reports = tempfile::tempdir().unwrap();
    let dir = reports.path().join("run");
    let mut run = common::Running::start(
        &[
            "run",
            "scenarios/quickstart.yaml",
            "--out",
            dir.to_str().unwrap(),
            "--ui",
            "--set",
            // Long enough that a slow browser start never outlasts the stage; the test
            // stops the run itself.
            "workload.duration=90s",
            "--set",
            RELAXED_HEALTH,
        ],
        &[],
    );
    let line = run.wait_for("live page: http://127.0.0.1:", Duration::from_secs(30));
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    assert!(url.contains("/#token="), "a generated token comes in the address: {line}");
    run.wait_for("stage 1 `baseline` started", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));

    let shots = tempfile::tempdir().unwrap();
    let (first, first_log) = browse(&url, &shots.path().join("first.png"));
    std::thread::sleep(Duration::from_secs(4));
    let (second, second_log) = browse(&url, &shots.path().join("second.png"));

    for (dom, log) in [(&first, &first_log), (&second, &second_log)] {
        assert!(figure(dom, "stage-line").contains("baseline"), "{}", figure(dom, "stage-line"));
        assert!(dom.matches("<svg").count() >= 2, "the latency and traffic charts are drawn");
        assert!(dom.contains("id=\"steer-on\">"), "the token opened the steering controls");
        assert!(figure(dom, "fig-p99").parse::<f64>().is_ok(), "{}", figure(dom, "fig-p99"));
        let noise: Vec<&str> =
            log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Refused")).collect();
        assert!(noise.is_empty(), "the page logged: {noise:?}");
    }
    let sent = |dom: &str| figure(dom, "fig-sent").parse::<u64>().unwrap();
    assert!(
        sent(&second) >= sent(&first) + 400,
        "two seconds at 200/s at least: {} then {}",
        sent(&first),
        sent(&second)
    );
    assert_ne!(figure(&first, "fig-elapsed"), figure(&second, "fig-elapsed"));
    let (a, b) = (
        std::fs::read(shots.path().join("first.png")).unwrap(),
        std::fs::read(shots.path().join("second.png")).unwrap(),
    );
    assert!(a.len() > 20_000 && b.len() > 20_000, "the screenshots are not blank");
    assert_ne!(a, b, "the page changed between the screenshots");

    // The updates are pushed: two events off the stream, the second newer.
    let port: u16 = url.trim_start_matches("http://127.0.0.1:").split('/').next().unwrap().parse().unwrap();
    let versions = pushed_versions(port, 2);
    assert!(versions[1] > versions[0], "{versions:?}");

    // Nothing else to see: stop the run.
    run.signal(nix::sys::signal::Signal::SIGINT);
    let (code, _, stderr, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{stderr}");
}

/// `stagegate proxy --ui`: the page at `/ui` shows each proxy with its toxics and the
/// changes made through the API, in a real browser with nothing logged; a toxic removed
/// through the API is gone from the page and in its changes.
#[test]
fn the_proxy_page_shows_proxies_toxics_and_changes() {
    common::require_program("chromium", "apt-get install chromium");
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = common::Running::start(&["proxy", "--listen", &format!("127.0.0.1:{port}"), "--ui"], &[]);
    let line = server.wait_for("live page on", Duration::from_secs(10));
    assert!(line.ends_with(&format!("http://127.0.0.1:{port}/ui")), "{line}");
    let api = |method: &str, path: &str, body: &str| {
        let out = Command::new("curl")
            .args(["-s", "-f", "-X", method, "-d", body, &format!("http://127.0.0.1:{port}{path}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{method} {path}: {}", String::from_utf8_lossy(&out.stdout));
    };
    api("POST", "/proxies", &format!(r#"{{"name":"orders-db","listen":"127.0.0.1:0","upstream":"{up}"}}"#));
    api("POST", "/proxies/orders-db/toxics", r#"{"name":"slow","type":"latency","attributes":{"latency":250}}"#);
    // No web page elsewhere drives the proxies: not through a name pointed at loopback,
    // not from another origin; the page's own origin may.
    let status = |extra: &[&str]| {
        let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{}"];
        args.extend_from_slice(extra);
        let url = format!("http://127.0.0.1:{port}/reset");
        args.push(&url);
        String::from_utf8(Command::new("curl").args(&args).output().unwrap().stdout).unwrap()
    };
    let rebound = format!("Host: rebind.example:{port}");
    assert_eq!(status(&["-H", &rebound, "-A", "Mozilla/5.0 (X11; Linux x86_64)"]), "421");
    assert_eq!(status(&["-H", &rebound]), "204", "a script may name any host");
    assert_eq!(status(&["-H", "Origin: http://evil.example"]), "403");
    assert_eq!(status(&["-H", "Sec-Fetch-Site: cross-site"]), "403");
    let own = format!("Origin: http://127.0.0.1:{port}");
    assert_eq!(status(&["-H", &own]), "204", "the page's own requests pass");
    api("POST", "/proxies/orders-db/toxics", r#"{"name":"slow","type":"latency","attributes":{"latency":250}}"#);

    let shots = tempfile::tempdir().unwrap();
    let (dom, log) = browse(&format!("http://127.0.0.1:{port}/ui"), &shots.path().join("proxy.png"));
    assert!(dom.contains("orders-db"), "{dom}");
    assert!(dom.contains("slow: latency downstream"), "the toxic and its attributes are listed");
    assert!(dom.contains("added toxic `slow`"), "the change log: {dom}");
    let noise: Vec<&str> =
        log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Refused")).collect();
    assert!(noise.is_empty(), "the page logged: {noise:?}");

    // The events stream follows the API: the toxic removed, the page's next state says so.
    api("DELETE", "/proxies/orders-db/toxics/slow", "");
    let (dom, _) = browse(&format!("http://127.0.0.1:{port}/ui"), &shots.path().join("after.png"));
    assert!(!dom.contains("slow: latency"), "the toxic is gone from the page");
    assert!(dom.contains("removed toxic `slow`"), "{dom}");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _, stderr, _) = server.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr}");
}
