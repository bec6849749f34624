//! The teardown guard: whatever a run starts is adopted here first, and is stopped from
//! here on every path out of the run, a panic and a forced stop included.
//!
//! A [`Resource`] is anything that needs undoing: a fault proxy (whose faults must be
//! lifted), a process or container stagegate started, a server it serves on loopback.
//! Provisioning adopts each one into the run's [`Guard`] *before* starting it, so a
//! half-started resource is stopped too. [`Guard::teardown`] lifts every fault first, then
//! stops the resources in the reverse order of their adoption, each within its own grace
//! period, or at once when the forced-stop token fires (a second Ctrl-C). If the guard is
//! dropped without a teardown (a panic unwinding the runner, an aborted task), `Drop` does
//! the same without waiting: lift, signal, kill.
//!
//! Not here: what each resource does to stop (its own module), and the `run.json` record
//! that lets `stagegate cleanup` find what a killed stagegate left (`deps::runfile`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Something a run started that teardown must undo.
#[async_trait::async_trait]
pub trait Resource: Send + Sync {
    /// How messages name it (`dependency store`, `the target`).
    fn label(&self) -> String;

    /// Lifts every fault it carries, without waiting. Teardown calls this on every
    /// resource before it stops any of them, so no fault outlives the run's end.
    fn lift(&self) {}

    /// Stops it in order: gracefully within its own grace period, or at once when
    /// `forced`. Never waits without a deadline.
    async fn stop(&self, forced: bool);

    /// Stops it without waiting on anything asynchronous (the panic path): cancellation
    /// tokens, signals to process groups, a blocking removal with a short deadline.
    fn stop_now(&self);
}

/// The resources of one run, in the order they were adopted.
#[derive(Default)]
pub struct Guard {
    resources: Mutex<Vec<Arc<dyn Resource>>>,
    done: AtomicBool,
}

impl Guard {
    /// An empty guard.
    pub fn new() -> Guard {
        Guard::default()
    }

    /// Adopts `resource` (before it is started) and hands it back.
    pub fn adopt<R: Resource + 'static>(&self, resource: Arc<R>) -> Arc<R> {
        self.lock().push(resource.clone());
        resource
    }

    /// Lifts the faults of every resource, at once.
    pub fn lift_all(&self) {
        for r in self.snapshot() {
            r.lift();
        }
    }

    /// Lifts every fault, then stops every resource, newest first. Waits stop at once
    /// when `force` fires. Safe to call more than once.
    pub async fn teardown(&self, force: &CancellationToken) {
        self.lift_all();
        let resources = self.snapshot();
        for r in resources.iter().rev() {
            if force.is_cancelled() {
                r.stop(true).await;
                continue;
            }
            tokio::select! {
                _ = r.stop(false) => {}
                _ = force.cancelled() => {
                    tracing::warn!(resource = %r.label(), "forced stop: not waiting for it to end by itself");
                    r.stop(true).await;
                }
            }
        }
        self.done.store(true, Ordering::SeqCst);
    }

    /// Whether a teardown ran to its end.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> Vec<Arc<dyn Resource>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn Resource>>> {
        self.resources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.is_done() {
            return;
        }
        // A panic or an abandoned run: nothing may stay faulted, frozen or running.
        let resources = self.snapshot();
        for r in &resources {
            r.lift();
        }
        for r in resources.iter().rev() {
            r.stop_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts what happened to it, in a shared journal.
    struct Probe {
        name: &'static str,
        journal: Arc<Mutex<Vec<String>>>,
        slow: bool,
        stops: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Resource for Probe {
        fn label(&self) -> String {
            self.name.to_string()
        }
        fn lift(&self) {
            self.journal.lock().unwrap().push(format!("lift {}", self.name));
        }
        async fn stop(&self, forced: bool) {
            if self.slow && !forced {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
            self.stops.fetch_add(1, Ordering::SeqCst);
            self.journal.lock().unwrap().push(format!("stop {} forced={forced}", self.name));
        }
        fn stop_now(&self) {
            self.journal.lock().unwrap().push(format!("kill {}", self.name));
        }
    }

    fn probe(name: &'static str, journal: &Arc<Mutex<Vec<String>>>, slow: bool) -> Arc<Probe> {
        Arc::new(Probe { name, journal: journal.clone(), slow, stops: AtomicUsize::new(0) })
    }

    #[tokio::test]
    async fn teardown_lifts_everything_first_then_stops_newest_first() {
        let journal = Arc::new(Mutex::new(Vec::new()));
        let guard = Guard::new();
        guard.adopt(probe("flags", &journal, false));
        guard.adopt(probe("store", &journal, false));
        guard.teardown(&CancellationToken::new()).await;
        assert_eq!(
            *journal.lock().unwrap(),
            ["lift flags", "lift store", "stop store forced=false", "stop flags forced=false"]
        );
        drop(guard);
        assert_eq!(journal.lock().unwrap().len(), 4, "a finished teardown is not repeated on drop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_stop_cuts_a_slow_resource_short() {
        let journal = Arc::new(Mutex::new(Vec::new()));
        let guard = Guard::new();
        let slow = guard.adopt(probe("target", &journal, true));
        let force = CancellationToken::new();
        let trigger = force.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            trigger.cancel();
        });
        guard.teardown(&force).await;
        assert_eq!(slow.stops.load(Ordering::SeqCst), 1);
        assert!(journal.lock().unwrap().contains(&"stop target forced=true".to_string()));
    }

    #[test]
    fn dropping_an_unfinished_guard_lifts_and_kills() {
        let journal = Arc::new(Mutex::new(Vec::new()));
        let result = std::panic::catch_unwind(|| {
            let guard = Guard::new();
            guard.adopt(probe("proxy", &journal, false));
            guard.adopt(probe("target", &journal, false));
            panic!("the runner broke");
        });
        assert!(result.is_err());
        assert_eq!(*journal.lock().unwrap(), ["lift proxy", "lift target", "kill target", "kill proxy"]);
    }
}
