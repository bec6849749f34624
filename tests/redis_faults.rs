//! Each proxy fault, applied through the real binary (`stagegate proxy` and its
//! Toxiproxy-compatible API) in front of a real `redis-server` from Debian's packages,
//! seen by a real Redis client: the error (or the slowness) it would see in production.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server, a `stagegate proxy` in front of it, and the proxy's address.
struct Rig {
    redis: Child,
    proxy: Child,
    api: u16,
    port: u16,
}

impl Rig {
    fn start() -> Rig {
        common::require_program("redis-server", "`apt-get install redis-server`");
        let redis_port = free_port();
        let redis = Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (`scripts/test` installs it)");
        wait_for(redis_port);
        let api = free_port();
        let port = free_port();
        let config = tempfile::NamedTempFile::new().unwrap();
        let spec =
            format!(r#"[{{"name": "redis", "listen": "127.0.0.1:{port}", "upstream": "127.0.0.1:{redis_port}"}}]"#);
        std::fs::write(config.path(), spec).unwrap();
        let proxy = Command::new(common::bin())
            .args(["proxy", "--listen", &format!("127.0.0.1:{api}"), "--config", config.path().to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(api);
        wait_for(port);
        Rig { redis, proxy, api, port }
    }

    /// POSTs JSON to the control API; returns the status code.
    fn post(&self, path: &str, body: &str) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.api)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    fn toxic(&self, body: &str) {
        let code = self.post("/proxies/redis/toxics", body);
        assert_eq!(code, 200, "toxic {body} refused");
    }

    fn client(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let conn = client.get_connection_with_timeout(Duration::from_secs(2)).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
        conn
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.proxy.id() as i32), Signal::SIGTERM);
        let _ = self.proxy.wait();
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}

fn set_get(conn: &mut redis::Connection, value: &str) -> redis::RedisResult<String> {
    redis::cmd("SET").arg("k").arg(value).exec(conn)?;
    redis::cmd("GET").arg("k").query(conn)
}

#[test]
fn without_faults_redis_answers_through_the_proxy() {
    let rig = Rig::start();
    let mut c = rig.client();
    assert_eq!(set_get(&mut c, "v").unwrap(), "v");
}

#[test]
fn latency_slows_every_answer() {
    let rig = Rig::start();
    let mut c = rig.client();
    rig.toxic(r#"{"name": "l", "type": "latency", "stream": "downstream", "attributes": {"latency": 150}}"#);
    let t = Instant::now();
    let _: String = redis::cmd("PING").query(&mut c).unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(150) && took < Duration::from_millis(600), "{took:?}");
}

#[test]
fn refuse_gives_connection_refused() {
    let rig = Rig::start();
    assert_eq!(rig.post("/proxies/redis", r#"{"enabled": false}"#), 200);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", rig.port)).unwrap();
    let err = client.get_connection_with_timeout(Duration::from_secs(2)).err().expect("a refused connection");
    assert!(err.is_connection_refusal(), "{err}");
}

#[test]
fn blackhole_gives_a_timeout() {
    let rig = Rig::start();
    let mut c = rig.client();
    rig.toxic(r#"{"name": "b", "type": "timeout", "stream": "downstream", "attributes": {"timeout": 0}}"#);
    let err = redis::cmd("PING").query::<String>(&mut c).unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[test]
fn reset_gives_connection_reset() {
    let rig = Rig::start();
    let mut c = rig.client();
    rig.toxic(r#"{"name": "r", "type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 0}}"#);
    let err = redis::cmd("PING").query::<String>(&mut c).unwrap_err();
    assert!(err.is_connection_dropped() || err.to_string().contains("reset"), "{err}");
    assert!(!err.is_timeout(), "a reset is immediate, not a timeout: {err}");
}

#[test]
fn limit_data_cuts_a_large_answer() {
    let rig = Rig::start();
    let mut c = rig.client();
    let big = "x".repeat(10_000);
    redis::cmd("SET").arg("k").arg(&big).exec(&mut c).unwrap();
    rig.toxic(r#"{"name": "cut", "type": "limit_data", "stream": "downstream", "attributes": {"bytes": 1000}}"#);
    let mut fresh = rig.client();
    let err = redis::cmd("GET").arg("k").query::<String>(&mut fresh).unwrap_err();
    assert!(err.is_connection_dropped() || err.is_io_error(), "{err}");
}

#[test]
fn bandwidth_slows_a_large_answer() {
    let rig = Rig::start();
    let mut c = rig.client();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = "x".repeat(50_000);
    redis::cmd("SET").arg("k").arg(&big).exec(&mut c).unwrap();
    rig.toxic(r#"{"name": "bw", "type": "bandwidth", "stream": "downstream", "attributes": {"rate": 100}}"#);
    let t = Instant::now();
    let got: String = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    let took = t.elapsed();
    assert_eq!(got.len(), 50_000);
    // 50 kB at 100 kB/s.
    assert!(took >= Duration::from_millis(420) && took < Duration::from_millis(900), "{took:?}");
}

#[test]
fn slicer_is_transparent_but_slow() {
    let rig = Rig::start();
    let mut c = rig.client();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rig.toxic(r#"{"name": "s", "type": "slicer", "stream": "downstream", "attributes": {"average_size": 4, "size_variation": 2, "delay": 2000}}"#);
    let t = Instant::now();
    assert_eq!(set_get(&mut c, "sliced-value").unwrap(), "sliced-value");
    assert!(t.elapsed() >= Duration::from_millis(4), "{:?}", t.elapsed());
}

#[test]
fn corrupt_breaks_the_protocol_or_the_value() {
    let rig = Rig::start();
    let mut c = rig.client();
    let value = "v".repeat(2000);
    redis::cmd("SET").arg("k").arg(&value).exec(&mut c).unwrap();
    rig.toxic(r#"{"name": "c", "type": "corrupt", "stream": "downstream", "attributes": {"rate": 0.05}}"#);
    // The client sees a changed value, a protocol error, or (when a length prefix was
    // hit) a wait for bytes that never come: never the value it stored.
    let got = redis::cmd("GET").arg("k").query::<String>(&mut c);
    assert!(got.as_ref().ok() != Some(&value), "5% of bytes flipped, yet the value came back intact");
}

#[test]
fn slow_close_holds_the_close_back() {
    let rig = Rig::start();
    rig.toxic(r#"{"name": "sc", "type": "slow_close", "stream": "downstream", "attributes": {"delay": 400}}"#);
    let mut s = TcpStream::connect(("127.0.0.1", rig.port)).unwrap();
    s.write_all(b"QUIT\r\n").unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).starts_with("+OK"), "{rest:?}");
    assert!(t.elapsed() >= Duration::from_millis(380), "closed after {:?}", t.elapsed());
}
