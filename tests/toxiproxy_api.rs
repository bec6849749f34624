//! `stagegate proxy` under an existing Toxiproxy client library (`toxiproxy-python` from
//! PyPI, installed by `scripts/test`): create a proxy, add and remove a latency toxic and see
//! its effect, disable and enable, a toxic with a time-to-live, reset. Then SIGTERM
//! stops the server and closes every proxy.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn a_toxiproxy_client_drives_stagegate_proxy() {
    // Checked before anything starts: a missing module must not leave a proxy running.
    common::require_python(&["toxiproxy"], "toxiproxy-python");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(common::bin())
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the control API never listened");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = Command::new("python3")
        .args(["tests/toxiproxy_client.py", &port.to_string()])
        .current_dir(common::root())
        .output()
        .expect("python3 runs");
    let (stdout, stderr) = common::text(&client);
    kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM).unwrap();
    let status = server.wait().unwrap();
    assert!(client.status.success(), "the client failed:\n{stdout}\n{stderr}");
    assert_eq!(status.code(), Some(0));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the API still listens");
}

/// Runs `curl` against the control API: `-w` appends the status code on its own line.
fn curl(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut args = vec!["-s".to_string(), "-X".into(), method.into(), "-w".into(), "\n%{http_code}".into()];
    if let Some(b) = body {
        args.extend(["-d".into(), b.into()]);
    }
    args.push(format!("http://127.0.0.1:{port}{path}"));
    let out = Command::new("curl").args(&args).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Toxiproxy's own CLI usage, replayed through curl as its client sends it: every change
/// is said on stderr with who made it, the config's proxies are listed at start and
/// what a stop lifted at the end; a misspelt or mistyped attribute is a 400 naming it,
/// an unknown proxy a 404 whatever the body, a nameless toxic takes `TYPE_STREAM`,
/// `GET /` lists the endpoints, and addresses outside loopback need `--allow-remote`.
#[test]
fn toxiproxy_cli_patterns_through_curl_are_answered_and_said() {
    common::require_program("curl", "curl (scripts/test installs it)");
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toxiproxy.json");
    std::fs::write(&config, format!(r#"[{{"name": "from-config", "listen": "127.0.0.1:0", "upstream": "{up}"}}]"#))
        .unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = common::Running::start(
        &["proxy", "--listen", &format!("127.0.0.1:{port}"), "--config", config.to_str().unwrap()],
        &[],
    );
    server.wait_for("control API on", Duration::from_secs(10));

    let (code, listing) = curl(port, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(listing.contains("POST /proxies/{name}/toxics"), "{listing}");
    // toxiproxy-cli create -l 127.0.0.1:0 -u UPSTREAM web
    let (code, body) = curl(
        port,
        "POST",
        "/proxies",
        Some(&format!(r#"{{"name":"web","listen":"127.0.0.1:0","upstream":"{up}","enabled":true}}"#)),
    );
    assert_eq!(code, 201, "{body}");
    // toxiproxy-cli toxic add -t latency -a latency=300 web (the CLI sends an empty name)
    let (code, body) = curl(
        port,
        "POST",
        "/proxies/web/toxics",
        Some(r#"{"name":"","type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":300}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""name":"latency_downstream""#), "{body}");
    // Misspelt and mistyped attributes are named, not silently ignored.
    let (code, body) = curl(
        port,
        "POST",
        "/proxies/web/toxics",
        Some(r#"{"name":"x","type":"latency","attributes":{"latencyy":300}}"#),
    );
    assert_eq!(code, 400);
    assert!(body.contains("`latencyy`") && body.contains("did you mean `latency`"), "{body}");
    let (code, body) = curl(
        port,
        "POST",
        "/proxies/web/toxics",
        Some(r#"{"name":"y","type":"latency","attributes":{"latency":"300ms"}}"#),
    );
    assert_eq!(code, 400);
    assert!(body.contains("`latency`"), "{body}");
    // toxiproxy-cli toxic update -n latency_downstream -a latency=500 web
    let (code, body) =
        curl(port, "POST", "/proxies/web/toxics/latency_downstream", Some(r#"{"attributes":{"latency":500}}"#));
    assert_eq!(code, 200, "{body}");
    // An unknown proxy is a 404, whatever the body says.
    let (code, body) = curl(port, "POST", "/proxies/nope/toxics", Some("{}"));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("proxy `nope` not found"), "{body}");
    // toxiproxy-cli toggle web
    assert_eq!(curl(port, "POST", "/proxies/web", Some(r#"{"enabled":false}"#)).0, 200);
    assert_eq!(curl(port, "POST", "/proxies/web", Some(r#"{"enabled":true}"#)).0, 200);
    // Outside loopback, refused without --allow-remote.
    let (code, body) =
        curl(port, "POST", "/proxies", Some(&format!(r#"{{"name":"wide","listen":"0.0.0.0:0","upstream":"{up}"}}"#)));
    assert_eq!(code, 400);
    assert!(body.contains("outside loopback") && body.contains("--allow-remote"), "{body}");
    // A toxic left in place when the stop comes.
    assert_eq!(
        curl(port, "POST", "/proxies/from-config/toxics", Some(r#"{"type":"bandwidth","attributes":{"rate":64}}"#)).0,
        200
    );

    // What is injected, as Prometheus reads it.
    let (code, metrics) = curl(port, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains(r#"stagegate_proxy_enabled{proxy="web","#), "{metrics}");
    assert!(
        metrics.contains(
            r#"stagegate_proxy_toxic_toxicity{proxy="web",toxic="latency_downstream",kind="latency",stream="downstream"} 1.0"#
        ),
        "{metrics}"
    );

    server.signal(Signal::SIGTERM);
    let (code, _, stderr, _) = server.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    for said in [
        "created proxy `from-config`",
        "(by the config)",
        "created proxy `web`",
        "added toxic `latency_downstream` to proxy `web`: latency downstream, toxicity 1, {\"latency\":300} (by curl/",
        "changed toxic `latency_downstream` on proxy `web`: toxicity 1, {\"latency\":500}",
        "disabled proxy `web`",
        "enabled proxy `web`",
        "lifted toxic `latency_downstream` (latency) from proxy `web`",
        "lifted toxic `bandwidth_downstream` (bandwidth) from proxy `from-config`",
        "closed proxy `web`",
        "closed proxy `from-config`",
    ] {
        assert!(stderr.contains(said), "stderr lacks {said:?}:\n{stderr}");
    }
}
