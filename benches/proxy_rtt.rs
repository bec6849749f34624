//! Round-trip time of one request in flight, direct to an echo server on loopback,
//! through the fault proxy with no fault, and through socat (if installed); then the
//! achieved delay of a 50 ms latency fault on one connection.
//!
//! `cargo bench --bench proxy_rtt` (also run by `benches/proxy.sh`, which adds the
//! iperf3 throughput comparison).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stagegate::fault::proxy::Proxy;
use stagegate::fault::{Activation, Direction, Fault, FaultKind, Place, Schedule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// One connection's round trips of a 64-byte message.
struct Path {
    stream: TcpStream,
    samples: Vec<f64>,
}

impl Path {
    async fn open(addr: SocketAddr) -> Path {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut path = Path { stream, samples: Vec::new() };
        for _ in 0..50 {
            path.round_trip().await;
        }
        path.samples.clear();
        path
    }

    /// One round trip, in microseconds, kept.
    async fn round_trip(&mut self) {
        let msg = [42u8; 64];
        let mut back = [0u8; 64];
        let t = Instant::now();
        self.stream.write_all(&msg).await.unwrap();
        self.stream.read_exact(&mut back).await.unwrap();
        self.samples.push(t.elapsed().as_secs_f64() * 1e6);
    }

    fn sorted(mut self) -> Vec<f64> {
        self.samples.sort_by(f64::total_cmp);
        self.samples
    }
}

fn q(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A runtime of its own (one worker thread), so that the echo server, the proxy and the
/// client do not share the wake-ups of one runtime's threads: a shared runtime made the
/// direct path look slower than the proxied one.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn main() {
    let servers = runtime();
    let echo = servers.block_on(echo_server());
    let proxies = runtime();
    let proxy = proxies.block_on(Proxy::start("echo", echo)).unwrap();
    let socat_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut socat = Command::new("socat")
        .args([format!("TCP-LISTEN:{socat_port},reuseaddr,fork,nodelay"), format!("TCP:{echo},nodelay")])
        .stderr(Stdio::null())
        .spawn()
        .ok();
    std::thread::sleep(Duration::from_millis(300));
    let client = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let n = 5000;
    let (direct, proxied, via_socat) = client.block_on(async {
        let mut direct = Path::open(echo).await;
        let mut proxied = Path::open(proxy.addr()).await;
        let via: SocketAddr = format!("127.0.0.1:{socat_port}").parse().unwrap();
        let mut via_socat = match &socat {
            Some(_) => Some(Path::open(via).await),
            None => None,
        };
        // One sample of each path in turn, so that drift in the machine's state (CPU
        // frequency, other load) falls on all alike.
        for _ in 0..n {
            direct.round_trip().await;
            proxied.round_trip().await;
            if let Some(s) = via_socat.as_mut() {
                s.round_trip().await;
            }
        }
        (direct.sorted(), proxied.sorted(), via_socat.map(Path::sorted))
    });
    println!("round trip, one request in flight ({n} samples each, alternating, 64 bytes):");
    println!("  direct          p50 {:7.1}µs  p99 {:7.1}µs", q(&direct, 0.5), q(&direct, 0.99));
    println!(
        "  stagegate proxy p50 {:7.1}µs  p99 {:7.1}µs  (added at p50: {:.1}µs)",
        q(&proxied, 0.5),
        q(&proxied, 0.99),
        q(&proxied, 0.5) - q(&direct, 0.5)
    );
    match via_socat {
        Some(s) => println!(
            "  socat           p50 {:7.1}µs  p99 {:7.1}µs  (added at p50: {:.1}µs)",
            q(&s, 0.5),
            q(&s, 0.99),
            q(&s, 0.5) - q(&direct, 0.5)
        ),
        None => println!("  socat           not installed (apt-get install socat)"),
    }
    if let Some(child) = socat.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let latency = FaultKind::Latency { delay: Duration::from_millis(50), jitter: Duration::ZERO };
    proxy.set_active(vec![Activation {
        id: 0,
        index: 0,
        seed: 1,
        fault: Fault {
            kind: latency,
            at: Place::Dependency("echo".into()),
            schedule: Schedule { from: Duration::ZERO, length: None, every: None },
            probability: 1.0,
            direction: Direction::Upstream,
            predicate: None,
        },
    }]);
    let faulted = client.block_on(async {
        let mut path = Path::open(proxy.addr()).await;
        path.samples.clear();
        for _ in 0..200 {
            path.round_trip().await;
        }
        path.sorted()
    });
    let base = q(&proxied, 0.5);
    println!(
        "50ms latency fault, one connection (200 samples): achieved delay p50 {:.3}ms  p99 {:.3}ms",
        (q(&faulted, 0.5) - base) / 1000.0,
        (q(&faulted, 0.99) - base) / 1000.0
    );
    proxies.block_on(proxy.stop());
}
