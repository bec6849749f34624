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
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(common::bin())
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the control API never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::require_python(&["toxiproxy"], "toxiproxy-python");
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
