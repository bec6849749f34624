//! Runtimes of their own for the parts of stagegate whose bursts of work must not
//! delay the driver's sends: the builtin system under test and the fault proxies.
//!
//! The driver, the observers and the flag provider run on the main runtime. When a
//! blackhole lifts, a proxy wakes hundreds of held connections at once; on the main
//! runtime those wake-ups queued ahead of the next scheduled send and showed as send
//! lag on a quiet machine. On threads of their own they compete for the cores through
//! the kernel's scheduler, which lets a waking sender in within a fraction of a
//! millisecond. Each runtime is built once, on first use, with two worker threads.

use std::future::Future;
use std::io;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

type Built = OnceLock<Result<Runtime, String>>;

fn dedicated(cell: &'static Built, name: &'static str, what: &str) -> io::Result<Handle> {
    let built = cell.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match built {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(io::Error::other(format!("cannot start the threads of {what}: {e}"))),
    }
}

/// The runtime of the builtin target and store (its own lateness is measured apart,
/// see `crate::measure::lateness`).
pub fn builtin() -> io::Result<Handle> {
    static RUNTIME: Built = OnceLock::new();
    dedicated(&RUNTIME, "stagegate-builtin", "the builtin target")
}

/// The runtime of the fault proxies (their lateness is the hold overrun).
pub fn proxies() -> io::Result<Handle> {
    static RUNTIME: Built = OnceLock::new();
    dedicated(&RUNTIME, "stagegate-proxies", "the fault proxies")
}

/// Runs `start` on `runtime` and waits for it: whatever it spawns lives there.
pub async fn run_on<T: Send + 'static>(
    runtime: io::Result<Handle>,
    start: impl Future<Output = io::Result<T>> + Send + 'static,
) -> io::Result<T> {
    runtime?.spawn(start).await.map_err(io::Error::other)?
}
