//! Faults: what goes wrong, where, and when.
//!
//! This file holds the pure part: the [`Fault`] a scenario asks for, its [`Schedule`]
//! inside a stage, and the seeded per-connection choice. Nothing here touches a socket;
//! [`catalog`] lists every kind, [`proxy`] and [`http`] apply these decisions to real
//! TCP and HTTP traffic, and [`timeline`] plays a stage's faults on the places they name.

pub mod api;
pub mod catalog;
pub mod chunk;
pub mod gate;
pub mod http;
pub mod proxy;
pub mod records;
pub mod timeline;

pub use timeline::FaultRecord;

use std::time::Duration;

use serde::Serialize;

/// Where a fault is injected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// The fault proxy in front of the named dependency (or the dependency's process).
    Dependency(String),
    /// The system under test: a proxy in front of it, or its process.
    Target,
    /// The records the workload sends.
    Workload,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Dependency(name) => write!(f, "{name}"),
            Place::Target => f.write_str("target"),
            Place::Workload => f.write_str("workload"),
        }
    }
}

/// Which way through the proxy a fault acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the system under test to the dependency.
    Upstream,
    /// From the dependency back to the system under test.
    Downstream,
    /// Both ways.
    #[default]
    Both,
}

impl Direction {
    /// Whether a fault with this direction acts on traffic flowing `flow`.
    pub fn covers(self, flow: Direction) -> bool {
        self == Direction::Both || self == flow
    }
}

/// Which HTTP requests an HTTP fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct HttpMatch {
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    /// Only the first N matching requests of each activation.
    pub first: Option<u64>,
}

/// What a fault does, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Each chunk is held `delay ± jitter` before it is passed on.
    Latency {
        #[serde(with = "crate::report::serde_duration")]
        delay: Duration,
        #[serde(with = "crate::report::serde_duration")]
        jitter: Duration,
    },
    /// Throughput capped at this many bytes per second.
    Bandwidth { bytes_per_sec: u64 },
    /// New connections are refused and open ones closed.
    Refuse,
    /// Connections are accepted but nothing is forwarded either way.
    Blackhole,
    /// Connections are reset (RST), optionally once `after` bytes have passed.
    Reset { after: Option<u64> },
    /// A close is held back this long.
    SlowClose {
        #[serde(with = "crate::report::serde_duration")]
        delay: Duration,
    },
    /// Data is cut into slices of `size ± size_variation` bytes, `delay` apart.
    Slicer {
        size: u64,
        size_variation: u64,
        #[serde(with = "crate::report::serde_duration")]
        delay: Duration,
    },
    /// The connection is closed after this many bytes.
    LimitData { bytes: u64 },
    /// Random bits flipped in this share of bytes.
    Corrupt { rate: f64 },
    /// HTTP requests answered with this status and body.
    HttpError { status: u16, body: String },
    /// The process or container is killed with `signal`, restarted after a delay if set.
    Kill {
        signal: String,
        #[serde(with = "crate::report::serde_opt_duration")]
        restart_after: Option<Duration>,
    },
    /// The process or container is frozen until the fault's end.
    Pause,
    /// Records sent invalid: broken JSON, wrong types, missing required fields.
    Malformed,
    /// Records sent twice.
    Duplicate,
    /// Records sent out of order within a window.
    OutOfOrder { window: u32 },
    /// Records' event time set this far in the past.
    Late {
        #[serde(with = "crate::report::serde_duration")]
        delay: Duration,
    },
}

impl FaultKind {
    /// The name used in scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Latency { .. } => "latency",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::Refuse => "refuse",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Reset { .. } => "reset",
            FaultKind::SlowClose { .. } => "slow_close",
            FaultKind::Slicer { .. } => "slicer",
            FaultKind::LimitData { .. } => "limit_data",
            FaultKind::Corrupt { .. } => "corrupt",
            FaultKind::HttpError { .. } => "http_error",
            FaultKind::Kill { .. } => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Malformed => "malformed",
            FaultKind::Duplicate => "duplicate",
            FaultKind::OutOfOrder { .. } => "out_of_order",
            FaultKind::Late { .. } => "late",
        }
    }

    /// Whether the TCP proxy applies this kind (on a byte stream).
    pub fn runs_in_proxy(&self) -> bool {
        catalog::find(self.name()).is_some_and(|k| k.layer == catalog::Layer::Stream)
    }
}

/// When a fault is active inside a stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Schedule {
    /// Offset from the stage's start.
    #[serde(with = "crate::report::serde_duration")]
    pub from: Duration,
    /// How long each activation lasts; `None` means to the stage's end.
    #[serde(with = "crate::report::serde_opt_duration")]
    pub length: Option<Duration>,
    /// Repeat period (flapping): active for `length` at the start of every period.
    #[serde(with = "crate::report::serde_opt_duration")]
    pub every: Option<Duration>,
}

impl Schedule {
    /// The active windows `[start, end)` inside a stage of length `stage`, in order.
    pub fn windows(&self, stage: Duration) -> Vec<(Duration, Duration)> {
        let mut out = Vec::new();
        let mut start = self.from;
        while start < stage {
            let end = match self.length {
                Some(len) => (start + len).min(stage),
                None => stage,
            };
            out.push((start, end));
            match self.every {
                Some(period) if !period.is_zero() => start += period,
                _ => break,
            }
        }
        out
    }

    /// Whether the fault is active at offset `t` of a stage of length `stage`. Asked once
    /// per record for workload faults, so it is arithmetic, not a walk over the windows.
    pub fn active_at(&self, t: Duration, stage: Duration) -> bool {
        if t < self.from || t >= stage {
            return false;
        }
        let since = t - self.from;
        let into_period = match self.every {
            Some(p) if !p.is_zero() => Duration::from_nanos((since.as_nanos() % p.as_nanos()) as u64),
            _ => since,
        };
        self.length.is_none_or(|len| into_period < len)
    }
}

/// One fault of a stage's plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    pub at: Place,
    pub schedule: Schedule,
    /// Share of connections, requests or records affected.
    pub probability: f64,
    pub direction: Direction,
    /// HTTP faults: which requests.
    pub predicate: Option<HttpMatch>,
}

/// A fault's activation, as the timeline announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// Index of the fault in its stage's list.
    pub index: usize,
    /// Unique to this activation in the run (a fault that repeats with `every` gets a new
    /// one each time), so per-activation counts survive other faults' changes.
    pub id: u64,
    pub fault: Fault,
    /// A seed for this activation's own random choices (which connection, jitter).
    pub seed: u64,
}

/// One change of a stage's fault timeline: at `offset`, fault `index` starts or stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub offset: Duration,
    pub index: usize,
    pub start: bool,
}

/// Every start and stop of `faults` in a stage of length `stage`, in time order
/// (a stop sorts before a start at the same instant).
pub fn timeline(faults: &[Fault], stage: Duration) -> Vec<Transition> {
    let mut out = Vec::new();
    for (index, fault) in faults.iter().enumerate() {
        for (s, e) in fault.schedule.windows(stage) {
            out.push(Transition { offset: s, index, start: true });
            out.push(Transition { offset: e, index, start: false });
        }
    }
    out.sort_by_key(|t| (t.offset, t.start, t.index));
    out
}

/// Every active window of every fault of a stage.
pub fn windows(faults: &[Fault], stage: Duration) -> Vec<(Duration, Duration)> {
    faults.iter().flat_map(|f| f.schedule.windows(stage)).collect()
}

/// A deterministic choice in `[0, 1)` for item `n` of a random stream named by `seed`
/// (splitmix64). Used to decide which connections a fault hits, so that the same seed
/// picks the same connections in the same order.
pub fn unit(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_window_is_cut_at_the_stage_end() {
        let sched = Schedule { from: s(5000), length: Some(s(15000)), every: None };
        assert_eq!(sched.windows(s(10000)), vec![(s(5000), s(10000))]);
        assert!(!sched.active_at(s(4999), s(10000)));
        assert!(sched.active_at(s(5000), s(10000)));
        assert!(!sched.active_at(s(10000), s(10000)));
    }

    #[test]
    fn no_length_means_to_the_end() {
        let sched = Schedule { from: s(0), length: None, every: None };
        assert_eq!(sched.windows(s(3000)), vec![(s(0), s(3000))]);
    }

    #[test]
    fn every_makes_it_flap() {
        let sched = Schedule { from: s(1000), length: Some(s(500)), every: Some(s(2000)) };
        assert_eq!(sched.windows(s(6000)), vec![(s(1000), s(1500)), (s(3000), s(3500)), (s(5000), s(5500))]);
    }

    #[test]
    fn active_at_agrees_with_the_windows() {
        let schedules = [
            Schedule { from: s(1000), length: Some(s(500)), every: Some(s(2000)) },
            Schedule { from: s(0), length: None, every: None },
            Schedule { from: s(2500), length: Some(s(10_000)), every: None },
        ];
        for sched in schedules {
            let windows = sched.windows(s(7000));
            for t in (0..8000).step_by(50) {
                let by_windows = windows.iter().any(|(a, b)| *a <= s(t) && s(t) < *b);
                assert_eq!(sched.active_at(s(t), s(7000)), by_windows, "{sched:?} at {t}ms");
            }
        }
    }

    #[test]
    fn a_fault_starting_after_the_stage_never_runs() {
        let sched = Schedule { from: s(9000), length: None, every: None };
        assert!(sched.windows(s(5000)).is_empty());
    }

    #[test]
    fn timeline_orders_stops_before_starts() {
        let f = |from, len| Fault {
            kind: FaultKind::Refuse,
            at: Place::Dependency("store".into()),
            schedule: Schedule { from: s(from), length: Some(s(len)), every: None },
            probability: 1.0,
            direction: Direction::Both,
            predicate: None,
        };
        let t = timeline(&[f(0, 1000), f(1000, 1000)], s(5000));
        let got: Vec<_> = t.iter().map(|t| (t.offset.as_millis(), t.index, t.start)).collect();
        assert_eq!(got, vec![(0, 0, true), (1000, 0, false), (1000, 1, true), (2000, 1, false)]);
    }

    #[test]
    fn choices_are_seeded_and_spread() {
        assert_eq!(unit(42, 7), unit(42, 7));
        assert_ne!(unit(42, 7), unit(43, 7));
        let hits = (0..10_000).filter(|n| unit(9, *n) < 0.2).count();
        assert!((1800..2200).contains(&hits), "{hits}");
    }
}
