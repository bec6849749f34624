//! The fault timeline of one stage, played against the places it names.
//!
//! [`play`] walks the stage's transitions (each fault's windows, from the pure
//! [`super::timeline`]) in time order. At each one it changes only the place that
//! transition concerns: the gate of proxies in front of it gets its new set of active
//! faults (so a request fault's `first: N` count is never reset by another fault
//! starting elsewhere), or the process there is killed, paused or resumed. Restarts after
//! a `kill` happen at their own time. When the stage is over (or the run is stopped),
//! whatever is still active is lifted and whatever is frozen is resumed; a restart still
//! due happens at the stage's end unless the run itself is stopping.
//!
//! Not here: deciding what a fault does to a chunk or a request (`chunk`, `http`), or to
//! a record (`records`), which the driver asks per record.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::catalog::Layer;
use super::gate::Gate;
use super::{Activation, Fault, FaultKind, Place, catalog};

/// What a process fault acts on: a process or container stagegate started.
#[async_trait::async_trait]
pub trait Controllable: Send + Sync {
    /// Sends `signal` (a `kill` fault).
    async fn kill(&self, signal: Signal);
    /// Starts it again after a kill, and waits until it is ready (or `cancel` fires).
    async fn restart(&self, cancel: &CancellationToken) -> Result<(), String>;
    /// Freezes it.
    async fn pause(&self);
    /// Lets it run again (nothing when it is not frozen).
    async fn resume(&self);
    /// Whether it is frozen now.
    fn is_paused(&self) -> bool;
}

/// The places of a run that faults act on, by the name faults use.
#[derive(Default)]
pub struct Places<'a> {
    /// The proxies in front of each dependency and (when a stage faults it) the target.
    pub gates: Vec<(Place, &'a Gate)>,
    /// What stagegate started: dependencies' processes or containers, the target's process.
    pub processes: Vec<(Place, &'a dyn Controllable)>,
}

impl<'a> Places<'a> {
    fn gate(&self, place: &Place) -> Option<&'a Gate> {
        self.gates.iter().find(|(p, _)| p == place).map(|(_, g)| *g)
    }

    fn process(&self, place: &Place) -> Option<&'a dyn Controllable> {
        self.processes.iter().find(|(p, _)| p == place).map(|(_, c)| *c)
    }
}

/// One fault's life inside a stage, as reports show it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FaultRecord {
    pub stage: String,
    /// Position in the stage's `faults` list.
    pub index: usize,
    pub kind: String,
    pub at: String,
    /// Offset into the stage when it became active, in seconds.
    pub started_secs: f64,
    /// Offset when it was lifted; `None` while active.
    pub ended_secs: Option<f64>,
    /// Whether the place it acted on carries no fault any more (and nothing is frozen).
    pub removed: bool,
}

/// The stage being played.
pub struct StageFaults<'a> {
    pub name: &'a str,
    /// Its position in the scenario, for the activations' seeds and ids.
    pub index: usize,
    pub faults: &'a [Fault],
    pub duration: Duration,
    /// The seed of activation number `n` of this stage.
    pub seed_of: &'a (dyn Fn(u64) -> u64 + Sync),
}

/// When the stage started, and the tokens that end it (the stage) or the whole run.
pub struct Clock<'a> {
    pub start: Instant,
    pub over: &'a CancellationToken,
    pub run: &'a CancellationToken,
}

/// Plays `stage`'s faults on `places` until the stage is over; `emit` hears every start
/// and lift. Returns the stage's fault records.
pub async fn play(
    stage: &StageFaults<'_>,
    places: &Places<'_>,
    clock: Clock<'_>,
    emit: &mut (dyn FnMut(&FaultRecord) + Send),
) -> Vec<FaultRecord> {
    let Clock { start, over, run } = clock;
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut open: HashMap<usize, usize> = HashMap::new();
    // The active faults a gate carries, by place; only the place that changes is told.
    let mut active: HashMap<Place, Vec<Activation>> = HashMap::new();
    let mut restarts: Vec<(Instant, Place)> = Vec::new();
    let at_secs = || start.elapsed().as_secs_f64();

    for (n, t) in super::timeline(stage.faults, stage.duration).into_iter().enumerate() {
        let due = start + t.offset;
        if !wait_restarts_until(&mut restarts, Some(due), places, over, run).await {
            break;
        }
        tokio::select! {
            _ = over.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        let f = &stage.faults[t.index];
        // When it was applied: before the action, which may take a moment (a container's
        // kill goes through Docker).
        let at = at_secs();
        let layer = catalog::find(f.kind.name()).map(|k| k.layer);
        match layer {
            Some(Layer::Stream | Layer::Request) => {
                let set = active.entry(f.at.clone()).or_default();
                if t.start {
                    let id = (stage.index as u64) << 32 | n as u64;
                    set.push(Activation { index: t.index, id, fault: f.clone(), seed: (stage.seed_of)(id) });
                } else {
                    set.retain(|a| a.index != t.index);
                }
                if let Some(gate) = places.gate(&f.at) {
                    gate.set_active(set.clone());
                }
            }
            Some(Layer::Process) => {
                if let Some(p) = places.process(&f.at) {
                    match (&f.kind, t.start) {
                        (FaultKind::Kill { signal, restart_after }, true) => {
                            p.kill(signal.parse().unwrap_or(Signal::SIGKILL)).await;
                            if let Some(after) = restart_after {
                                restarts.push((Instant::now() + *after, f.at.clone()));
                            }
                        }
                        (FaultKind::Pause, true) => p.pause().await,
                        (FaultKind::Pause, false) => p.resume().await,
                        _ => {}
                    }
                }
            }
            // Record faults are asked per record by the driver; nothing to apply here.
            Some(Layer::Record) | None => {}
        }
        if t.start {
            open.insert(t.index, records.len());
            records.push(FaultRecord {
                stage: stage.name.to_string(),
                index: t.index,
                kind: f.kind.name().to_string(),
                at: f.at.to_string(),
                started_secs: at,
                ended_secs: None,
                removed: false,
            });
            emit(&records[records.len() - 1]);
        } else if let Some(i) = open.remove(&t.index) {
            records[i].ended_secs = Some(at);
            records[i].removed = true;
            emit(&records[i]);
        }
    }
    // Restarts still due within the stage happen at their time.
    wait_restarts_until(&mut restarts, None, places, over, run).await;
    // The stage is over (or the run is stopping): lift whatever is still active, and
    // bring back what was frozen or killed, so the next stage starts whole.
    for (place, set) in &mut active {
        if !set.is_empty() {
            set.clear();
            if let Some(gate) = places.gate(place) {
                gate.set_active(Vec::new());
            }
        }
    }
    for (_, p) in &places.processes {
        p.resume().await;
    }
    if !run.is_cancelled() {
        for (_, place) in restarts.drain(..) {
            restart(places, &place, run).await;
        }
    }
    let clean =
        places.gates.iter().all(|(_, g)| !g.is_faulted()) && places.processes.iter().all(|(_, p)| !p.is_paused());
    let mut leftover: Vec<usize> = open.into_values().collect();
    leftover.sort_unstable();
    for i in leftover {
        records[i].ended_secs = Some(at_secs());
        records[i].removed = clean;
        emit(&records[i]);
    }
    records
}

/// Carries out the restarts due before `until` (all of them when `None`), each at its
/// time. Returns `false` when the stage ended while waiting.
async fn wait_restarts_until(
    restarts: &mut Vec<(Instant, Place)>,
    until: Option<Instant>,
    places: &Places<'_>,
    over: &CancellationToken,
    run: &CancellationToken,
) -> bool {
    loop {
        restarts.sort_by_key(|(at, _)| *at);
        let Some((due, _)) = restarts.first() else { return true };
        if until.is_some_and(|u| *due > u) {
            return true;
        }
        tokio::select! {
            _ = over.cancelled() => return false,
            _ = tokio::time::sleep_until(*due) => {}
        }
        let (_, place) = restarts.remove(0);
        restart(places, &place, run).await;
    }
}

async fn restart(places: &Places<'_>, place: &Place, run: &CancellationToken) {
    if let Some(p) = places.process(place)
        && let Err(e) = p.restart(run).await
    {
        warn!(at = %place, error = %e, "a killed process or container did not come back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::gate::Needs;
    use crate::fault::{Direction, HttpMatch, Schedule};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn fault(kind: FaultKind, at: &str, from: u64, length: Option<u64>, predicate: Option<HttpMatch>) -> Fault {
        Fault {
            kind,
            at: Place::Dependency(at.into()),
            schedule: Schedule { from: ms(from), length: length.map(ms), every: None },
            probability: 1.0,
            direction: Direction::Both,
            predicate,
        }
    }

    /// Regression: `first: N` used to count afresh whenever any other fault started or
    /// stopped, because every gate was re-applied at every transition.
    #[tokio::test]
    async fn first_n_counts_across_the_stage_whatever_else_changes() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        let app = axum::Router::new().fallback(|| async { "ok" });
        tokio::spawn(async move { axum::serve(upstream, app).await });
        let checker = Gate::start("checker", addr, None, Needs { tcp: false, http: true }, false, None).await.unwrap();
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let store =
            Gate::start("store", other.local_addr().unwrap(), None, Needs { tcp: true, http: false }, false, None)
                .await
                .unwrap();
        let first3 = HttpMatch { first: Some(3), ..Default::default() };
        let faults = vec![
            fault(FaultKind::HttpError { status: 503, body: String::new() }, "checker", 0, None, Some(first3)),
            // Another place's fault flapping on and off while the first one is active.
            fault(FaultKind::Latency { delay: ms(1), jitter: ms(0) }, "store", 100, Some(50), None),
            fault(FaultKind::Latency { delay: ms(1), jitter: ms(0) }, "store", 250, Some(50), None),
        ];
        let places = Places {
            gates: vec![(Place::Dependency("checker".into()), &checker), (Place::Dependency("store".into()), &store)],
            processes: vec![],
        };
        let over = CancellationToken::new();
        let run = CancellationToken::new();
        let seed_of = |n: u64| n;
        let stage = StageFaults { name: "s", index: 0, faults: &faults, duration: ms(500), seed_of: &seed_of };
        let client = reqwest::Client::new();
        let url = format!("http://{}/", checker.addr());
        let driver = async {
            let mut failed = 0;
            for _ in 0..40 {
                if client.get(&url).send().await.unwrap().status() == 503 {
                    failed += 1;
                }
                tokio::time::sleep(ms(10)).await;
            }
            over.cancel();
            failed
        };
        let mut emitted = Vec::new();
        let mut emit = |r: &FaultRecord| emitted.push(r.clone());
        let clock = Clock { start: Instant::now(), over: &over, run: &run };
        let (failed, records) = tokio::join!(driver, play(&stage, &places, clock, &mut emit));
        assert_eq!(failed, 3, "exactly the first 3 requests of the stage fail");
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.removed), "{records:?}");
        assert!(!checker.is_faulted() && !store.is_faulted());
    }
}
