//! What the controller and its load workers say to each other, as JSON over HTTP.
//!
//! A worker joins ([`Join`]) and gets its [`Assignment`]: everything its driver needs and
//! nothing else (no flag provider, no dependency, no fault proxy: those stay with the
//! controller). It then asks for each stage ([`Next`]), drives its share from the given
//! start time, and posts a [`Batch`] of what happened a few times a second; the answer
//! ([`Reply`]) carries where the stage ends now and whether to stop.
//!
//! Times inside a stage are microseconds from the stage's start; wall-clock times are
//! the controller's, in Unix milliseconds (a worker corrects them by the clock offset it
//! measured at join).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::{Fault, FaultKind, Place, Schedule};
use crate::flags::FlagState;
use crate::quality::Digest;
use crate::sut::RequestTemplate;
use crate::workload::Arrival;

/// The protocol's version: a worker of another version is refused at join.
pub const VERSION: u32 = 2;

/// A worker asks to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    /// Its index, `0..workers` (a Kubernetes Indexed Job's completion index).
    pub index: u32,
    pub host: String,
    pub protocol: u32,
    pub stagegate_version: String,
    /// The controller's clock minus the worker's, as the worker measured it.
    pub clock_offset_ms: f64,
    /// The round trip of the measurement it kept (the shortest).
    pub rtt_ms: f64,
}

/// What a worker drives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: String,
    pub scenario: String,
    pub worker: u32,
    pub workers: u32,
    /// This worker's session: its batches carry it, so no other holder of the run's
    /// token can post as this worker.
    pub session: String,
    /// The data schema file's name (for messages) and text.
    pub schema_file: String,
    pub schema_text: String,
    pub arrival: Arrival,
    pub warmup_us: u64,
    pub timeout_us: u64,
    /// Where to send: the target's base URL as the controller reaches it.
    pub target_url: String,
    /// The write request, its common headers, and the body used when it has none.
    pub write: RequestTemplate,
    pub write_headers: BTreeMap<String, String>,
    pub default_body: Option<String>,
    /// The header that carries each record's flag values, when flags travel that way.
    pub flag_header: Option<String>,
    pub stages: Vec<StageAssignment>,
}

/// One stage of an [`Assignment`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageAssignment {
    pub name: String,
    /// The planned length, and the longest an operator's hold may make it.
    pub duration_us: u64,
    pub most_us: u64,
    pub flags: BTreeMap<String, FlagState>,
    pub data_seed: u64,
    pub reorder_seed: u64,
    pub timestamps: Vec<String>,
    pub record_faults: Vec<RecordFault>,
}

/// A fault on the records sent, with its seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordFault {
    pub kind: RecordFaultKind,
    pub from_us: u64,
    pub length_us: Option<u64>,
    pub every_us: Option<u64>,
    pub probability: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFaultKind {
    Malformed,
    Duplicate,
    OutOfOrder { window: u32 },
    Late { delay_us: u64 },
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl RecordFault {
    /// The wire form of a workload fault (`None` for faults that act elsewhere).
    pub fn of(fault: &Fault, seed: u64) -> Option<RecordFault> {
        let kind = match &fault.kind {
            FaultKind::Malformed => RecordFaultKind::Malformed,
            FaultKind::Duplicate => RecordFaultKind::Duplicate,
            FaultKind::OutOfOrder { window } => RecordFaultKind::OutOfOrder { window: *window },
            FaultKind::Late { delay } => RecordFaultKind::Late { delay_us: us(*delay) },
            _ => return None,
        };
        Some(RecordFault {
            kind,
            from_us: us(fault.schedule.from),
            length_us: fault.schedule.length.map(us),
            every_us: fault.schedule.every.map(us),
            probability: fault.probability,
            seed,
        })
    }

    /// The fault back, with its seed.
    pub fn fault(&self) -> (Fault, u64) {
        let kind = match &self.kind {
            RecordFaultKind::Malformed => FaultKind::Malformed,
            RecordFaultKind::Duplicate => FaultKind::Duplicate,
            RecordFaultKind::OutOfOrder { window } => FaultKind::OutOfOrder { window: *window },
            RecordFaultKind::Late { delay_us } => FaultKind::Late { delay: Duration::from_micros(*delay_us) },
        };
        let fault = Fault {
            kind,
            at: Place::Workload,
            schedule: Schedule {
                from: Duration::from_micros(self.from_us),
                length: self.length_us.map(Duration::from_micros),
                every: self.every_us.map(Duration::from_micros),
            },
            probability: self.probability,
            direction: Default::default(),
            predicate: None,
        };
        (fault, self.seed)
    }
}

/// What `GET /v1/next?after=N` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "next")]
pub enum Next {
    /// Stage `stage` starts at `start_unix_ms` (the controller's clock) and ends
    /// `end_us` after it, unless a [`Reply`] moves it.
    Stage { stage: u32, start_unix_ms: f64, end_us: u64 },
    /// Not yet: ask again.
    Wait,
    /// The run is over (finished, stopped or aborted): the worker exits with `exit`
    /// (0 the run finished, 4 it broke, 130 it was stopped).
    Done {
        reason: String,
        #[serde(default)]
        exit: i32,
    },
}

/// A record sent, as the ledger keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    pub offset_us: u64,
    /// Its slot of the stage's schedule (the controller checks a record said to be
    /// malformed on purpose against the stage's record faults by it).
    pub slot: u64,
    pub key: String,
    pub digest: Digest,
    pub invalid: bool,
}

/// A request ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ended {
    pub offset_us: u64,
    pub latency_us: u64,
    /// `a` acknowledged, `r` rejected, `f` failed.
    pub outcome: char,
    pub key: String,
    pub send_lag_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_failure: Option<String>,
}

/// What a worker's driver said when its stage was over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Finished {
    pub completed: bool,
    pub dropped: u64,
    pub held_back: u64,
    pub capped: bool,
    pub length_us: u64,
    /// Set when the worker could not keep its own accounts (its buffer toward the
    /// controller overflowed): its share is incomplete.
    pub overflowed: bool,
    /// Set when the worker heard of the stage this long after its start and did not
    /// drive it.
    #[serde(default)]
    pub late_us: u64,
}

/// A worker's report since its last one, for one stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub worker: u32,
    /// The session its join was given.
    pub session: String,
    pub stage: u32,
    /// Counts up from 0 within the stage: a gap or a repeat is seen.
    pub seq: u64,
    pub sent: Vec<Sent>,
    pub ended: Vec<Ended>,
    /// The latency of the requests that ended in this batch, as one interval of an
    /// HdrHistogram log (V2, deflated, base64), microseconds.
    pub interval: Option<String>,
    /// On the stage's last batch.
    pub finished: Option<Finished>,
}

/// The controller's answer to a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Where the stage ends now, from its start.
    pub end_us: u64,
    /// Stop sending now (the run was stopped or the stage cut short).
    pub stop: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_faults_cross_the_wire_exactly() {
        let fault = Fault {
            kind: FaultKind::Late { delay: Duration::from_micros(1_234_567) },
            at: Place::Workload,
            schedule: Schedule {
                from: Duration::from_micros(2_000_001),
                length: Some(Duration::from_micros(333_333)),
                every: None,
            },
            probability: 0.125,
            direction: Default::default(),
            predicate: None,
        };
        let wire = RecordFault::of(&fault, 99).unwrap();
        let back: RecordFault = serde_json::from_str(&serde_json::to_string(&wire).unwrap()).unwrap();
        assert_eq!(back.fault(), (fault, 99));
        let proxy = Fault { kind: FaultKind::Blackhole, at: Place::Target, ..back.fault().0 };
        assert!(RecordFault::of(&proxy, 1).is_none());
    }
}
