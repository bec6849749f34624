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

/// Round trips of a 64-byte message on one connection, in microseconds, sorted.
async fn round_trips(addr: SocketAddr, n: usize) -> Vec<f64> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [42u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..50 {
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn q(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let echo = echo_server().await;
        let proxy = Proxy::start("echo", echo).await.unwrap();
        let n = 5000;
        // Interleave the two paths in rounds, so that drift in the machine's state (CPU
        // frequency, other load) falls on both alike.
        let (mut direct, mut proxied) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            direct.extend(round_trips(echo, n / 10).await);
            proxied.extend(round_trips(proxy.addr(), n / 10).await);
        }
        direct.sort_by(f64::total_cmp);
        proxied.sort_by(f64::total_cmp);
        println!("round trip, one request in flight ({n} samples, 64 bytes):");
        println!("  direct          p50 {:7.1}µs  p99 {:7.1}µs", q(&direct, 0.5), q(&direct, 0.99));
        println!(
            "  stagegate proxy p50 {:7.1}µs  p99 {:7.1}µs  (added at p50: {:.1}µs)",
            q(&proxied, 0.5),
            q(&proxied, 0.99),
            q(&proxied, 0.5) - q(&direct, 0.5)
        );
        let socat_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        match Command::new("socat")
            .args([format!("TCP-LISTEN:{socat_port},reuseaddr,fork,nodelay"), format!("TCP:{echo},nodelay")])
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let via: SocketAddr = format!("127.0.0.1:{socat_port}").parse().unwrap();
                let socat = round_trips(via, n).await;
                println!(
                    "  socat           p50 {:7.1}µs  p99 {:7.1}µs  (added at p50: {:.1}µs)",
                    q(&socat, 0.5),
                    q(&socat, 0.99),
                    q(&socat, 0.5) - q(&direct, 0.5)
                );
                let _ = child.kill();
                let _ = child.wait();
            }
            Err(_) => println!("  socat           not installed (apt-get install socat)"),
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
        let faulted = round_trips(proxy.addr(), 200).await;
        let base = q(&proxied, 0.5);
        println!(
            "50ms latency fault, one connection (200 samples): achieved delay p50 {:.3}ms  p99 {:.3}ms",
            (q(&faulted, 0.5) - base) / 1000.0,
            (q(&faulted, 0.99) - base) / 1000.0
        );
        proxy.stop().await;
    });
}
