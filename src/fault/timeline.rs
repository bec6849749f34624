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

    /// Whether this run has what `fault` needs at its place (a proxy of the right kind,
    /// a process stagegate started), and why not.
    pub fn carries(&self, fault: &Fault) -> Result<(), String> {
        let layer = catalog::find(fault.kind.name()).map(|k| k.layer);
        let ok = match layer {
            Some(Layer::Stream | Layer::Request) => self.gate(&fault.at).is_some_and(|g| g.carries(fault)),
            Some(Layer::Process) => self.process(&fault.at).is_some(),
            Some(Layer::Record) | None => {
                return Err(format!(
                    "a {} fault acts on the records a stage plans; it cannot start live",
                    fault.kind.name()
                ));
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "nothing at `{}` in this run can carry a {} fault: stagegate puts a proxy of each kind (and the process control) only where the scenario's stages place such a fault",
                fault.at,
                fault.kind.name()
            ))
        }
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
    /// Offset when it is due to be lifted, if before the stage's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_secs: Option<f64>,
    /// Whether the place it acted on carries no fault any more (and nothing is frozen).
    pub removed: bool,
    /// The token that started it live through the steering API; `None` for the
    /// scenario's own faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
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

/// The most faults started live that may be active at once in a stage.
pub const MAX_LIVE_FAULTS: usize = 16;

/// A fault an operator started while the stage runs (the steering API): it starts at
/// once and is lifted after `ttl`, or at the stage's end if that comes first.
#[derive(Debug)]
pub struct LiveFault {
    pub fault: Fault,
    pub ttl: Duration,
    /// The name of the token that asked for it.
    pub by: String,
    /// Told when it started (its offset into the stage, in seconds) or why it could not.
    pub done: tokio::sync::oneshot::Sender<Result<f64, String>>,
}

/// Plays `stage`'s faults on `places` until the stage is over, with the faults an
/// operator starts on `live` (when steered); `emit` hears every start and lift. Returns
/// the stage's fault records.
///
/// A fault that lasts to the stage's end is lifted when the stage is over, not at its
/// planned length: an operator may hold the stage longer.
pub async fn play(
    stage: &StageFaults<'_>,
    places: &Places<'_>,
    clock: Clock<'_>,
    mut live: Option<&mut tokio::sync::mpsc::Receiver<LiveFault>>,
    emit: &mut (dyn FnMut(&FaultRecord) + Send),
) -> Vec<FaultRecord> {
    let Clock { start, over, run } = clock;
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut open: HashMap<usize, usize> = HashMap::new();
    // The active faults a gate carries, by place; only the place that changes is told.
    let mut active: HashMap<Place, Vec<Activation>> = HashMap::new();
    let mut restarts: Vec<(Instant, Place)> = Vec::new();
    // Pauses active at each place: it is frozen until the last one ends.
    let mut paused: HashMap<Place, usize> = HashMap::new();
    let at_secs = || start.elapsed().as_secs_f64();
    // Ends at the planned length are the stage's end, wherever that comes to be.
    let transitions: Vec<_> = super::timeline(stage.faults, stage.duration)
        .into_iter()
        .filter(|t| t.start || t.offset < stage.duration)
        .collect();
    let mut next = 0usize;
    let mut n = 0u64;
    // Live faults, numbered after the stage's own, and when each is lifted.
    let mut extra: Vec<Fault> = Vec::new();
    let mut expiries: Vec<(Instant, usize)> = Vec::new();
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);

    loop {
        restarts.sort_by_key(|(at, _)| *at);
        expiries.sort_by_key(|(at, _)| *at);
        let due = transitions.get(next).map(|t| start + t.offset);
        let restart_due = restarts.first().map(|(at, _)| *at);
        let expiry_due = expiries.first().map(|(at, _)| *at);
        let live_open = live.is_some();
        enum Step {
            Transition,
            Restart,
            Expiry,
            Live(Option<Box<LiveFault>>),
        }
        let step = tokio::select! {
            biased;
            _ = over.cancelled() => break,
            _ = tokio::time::sleep_until(restart_due.unwrap_or_else(far)), if restart_due.is_some() => Step::Restart,
            _ = tokio::time::sleep_until(expiry_due.unwrap_or_else(far)), if expiry_due.is_some() => Step::Expiry,
            _ = tokio::time::sleep_until(due.unwrap_or_else(far)), if due.is_some() => Step::Transition,
            l = async { match live.as_mut() { Some(rx) => rx.recv().await, None => None } }, if live_open => Step::Live(l.map(Box::new)),
        };
        let (index, starting, by, ttl) = match step {
            Step::Restart => {
                let (_, place) = restarts.remove(0);
                restart(places, &place, run).await;
                continue;
            }
            Step::Transition => {
                let t = transitions[next];
                next += 1;
                (t.index, t.start, None, None)
            }
            Step::Expiry => {
                let (_, index) = expiries.remove(0);
                (index, false, None, None)
            }
            Step::Live(None) => {
                live = None;
                continue;
            }
            Step::Live(Some(l)) => {
                // The operator's request gave up waiting: it was answered as refused.
                if l.done.is_closed() {
                    continue;
                }
                let live_now = open.keys().filter(|i| **i >= stage.faults.len()).count();
                if live_now >= MAX_LIVE_FAULTS {
                    let _ = l.done.send(Err(format!(
                        "{MAX_LIVE_FAULTS} live faults are active already; lift one (wait for its ttl) first"
                    )));
                    continue;
                }
                if let Err(why) = places.carries(&l.fault) {
                    let _ = l.done.send(Err(why));
                    continue;
                }
                let index = stage.faults.len() + extra.len();
                expiries.push((Instant::now() + l.ttl, index));
                extra.push(l.fault);
                let _ = l.done.send(Ok(at_secs()));
                (index, true, Some(l.by), Some(l.ttl))
            }
        };
        let f = stage.faults.get(index).unwrap_or_else(|| &extra[index - stage.faults.len()]);
        // When it was applied: before the action, which may take a moment (a container's
        // kill goes through Docker).
        let at = at_secs();
        let layer = catalog::find(f.kind.name()).map(|k| k.layer);
        match layer {
            Some(Layer::Stream | Layer::Request) => {
                let set = active.entry(f.at.clone()).or_default();
                if starting {
                    let id = (stage.index as u64) << 32 | n;
                    n += 1;
                    set.push(Activation { index, id, fault: f.clone(), seed: (stage.seed_of)(id) });
                } else {
                    set.retain(|a| a.index != index);
                }
                if let Some(gate) = places.gate(&f.at) {
                    gate.set_active(set.clone());
                }
            }
            Some(Layer::Process) => {
                if let Some(p) = places.process(&f.at) {
                    match (&f.kind, starting) {
                        (FaultKind::Kill { signal, restart_after }, true) => {
                            p.kill(signal.parse().unwrap_or(Signal::SIGKILL)).await;
                            if let Some(after) = restart_after {
                                restarts.push((Instant::now() + *after, f.at.clone()));
                            }
                        }
                        (FaultKind::Pause, true) => {
                            *paused.entry(f.at.clone()).or_default() += 1;
                            p.pause().await;
                        }
                        (FaultKind::Pause, false) => {
                            // Frozen until the last pause there ends.
                            let left = paused.entry(f.at.clone()).or_default();
                            *left = left.saturating_sub(1);
                            if *left == 0 {
                                p.resume().await;
                            }
                        }
                        _ => {}
                    }
                }
            }
            // Record faults are asked per record by the driver; nothing to apply here.
            Some(Layer::Record) | None => {}
        }
        if starting {
            open.insert(index, records.len());
            records.push(FaultRecord {
                stage: stage.name.to_string(),
                index,
                kind: f.kind.name().to_string(),
                at: f.at.to_string(),
                started_secs: at,
                ended_secs: None,
                removed: false,
                until_secs: ttl.or(f.schedule.length).map(|l| at + l.as_secs_f64()),
                by,
            });
            emit(&records[records.len() - 1]);
        } else if let Some(i) = open.remove(&index) {
            records[i].ended_secs = Some(at);
            records[i].removed = true;
            emit(&records[i]);
        }
    }
    // Live faults asked for as the stage ended are not started.
    if let Some(rx) = live {
        rx.close();
        while let Ok(l) = rx.try_recv() {
            let _ = l.done.send(Err(format!("stage `{}` ended before the fault could start", stage.name)));
        }
    }
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
    // A restart still due happens now, unless the run itself is stopping.
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
        let client = crate::http_client::client();
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
        let (failed, records) = tokio::join!(driver, play(&stage, &places, clock, None, &mut emit));
        assert_eq!(failed, 3, "exactly the first 3 requests of the stage fail");
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.removed), "{records:?}");
        assert!(!checker.is_faulted() && !store.is_faulted());
    }
}
