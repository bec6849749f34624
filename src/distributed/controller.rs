//! The controller's side: the API load workers call, and each stage's driving through
//! them.
//!
//! Routes (every one needs `Authorization: Bearer TOKEN`):
//! - `GET /v1/time`: the controller's clock, for the workers' offset measurement;
//! - `POST /v1/join` ([`Join`]): the worker's [`Assignment`], once the run has one (the
//!   request waits for it up to [`ASSIGNMENT_WAIT`]; then 503, to be asked again);
//! - `GET /v1/next?worker=W&from=K`: the first stage from `K` on once it is announced,
//!   or `done` ([`Next`]); waits up to [`LONG_POLL`], then says `wait`;
//! - `POST /v1/batch` ([`Batch`]): what a worker did, answered with where the stage ends
//!   and whether to stop ([`Reply`]). A batch waits for room in the stage's inbox (the
//!   worker slows down with it); one for a stage that is over gets 410.
//!
//! [`Controller::drive`] stands where the driver stands in a single-process stage: it
//! feeds every record sent and every request ended, from every worker, to the stage's
//! accounts, so the stage is measured and judged by the same code either way. A worker
//! that falls silent for [`SILENCE`], or has not finished [`FINISH_GRACE`] after the
//! stage's end plus the request timeout, is lost: its share was not (all) sent, and the
//! stage says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{Assignment, Batch, Finished, Join, Next, Reply, VERSION};
use crate::measure::Outcome;
use crate::workload::driver::{Drive, Sample, Sink, StageEnd};

/// How long a join waits for the run's assignment before a 503.
pub const ASSIGNMENT_WAIT: Duration = Duration::from_secs(20);
/// How long `GET /v1/next` waits for a stage before saying `wait`.
pub const LONG_POLL: Duration = Duration::from_secs(15);
/// A worker that has posted nothing for this long during a stage is lost.
pub const SILENCE: Duration = Duration::from_secs(3);
/// How long past a stage's end (and the request timeout) a worker has to finish.
pub const FINISH_GRACE: Duration = Duration::from_secs(5);
/// How far ahead of its start a stage is announced, so every worker starts on time.
pub const LEAD: Duration = Duration::from_millis(750);
/// Batches queued for a stage at most; past it a worker's post waits.
const INBOX: usize = 16;
/// How much before the stage's end on the controller's clock a worker may say it has
/// finished it (the clocks' measured offsets are well under this).
const EARLY_FINISH: Duration = Duration::from_secs(1);
/// The largest batch body accepted (a worker's batches hold at most 40,000 items, a
/// few MiB).
pub const MAX_BATCH: usize = 32 * 1024 * 1024;
/// How long a request's body may take to arrive.
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// Fields a record's digest may have (a schema has far fewer).
const MAX_DIGEST_FIELDS: usize = 1024;
/// Interval histograms kept for the workers' log, at most.
const MAX_INTERVALS: usize = 200_000;
/// The most bytes of encoded intervals kept for `workers.hlog`.
const MAX_INTERVAL_BYTES: usize = 256 * 1024 * 1024;

/// One worker as it joined.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Member {
    pub index: u32,
    pub host: String,
    /// The controller's clock minus the worker's, as measured at join.
    pub clock_offset_ms: f64,
    /// The round trip of that measurement.
    pub rtt_ms: f64,
    pub joined_at: String,
}

/// One worker's part of one stage.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct WorkerStage {
    pub stage: String,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub failed: u64,
    /// Sends its schedule asked for that it could not make in time.
    pub dropped: u64,
    /// Judged requests in its histogram (the sum of its intervals).
    pub judged_requests: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Its judged latency (microseconds), the sum of the intervals it streamed:
    /// HdrHistogram's compressed V2 encoding, base64. The stage's own histogram is
    /// these added together.
    pub histogram: String,
    /// Batches received.
    pub batches: u64,
    /// Why its share is incomplete, when it is (it stopped reporting, finished late,
    /// or could not keep its schedule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

/// A worker in the report: how it joined and what it did in each stage.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct WorkerReport {
    #[serde(flatten)]
    pub member: Member,
    pub stages: Vec<WorkerStage>,
}

/// The distributed part of a run's report.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct DistributedReport {
    /// The address the controller's API listened on.
    pub controller: String,
    pub workers_expected: u32,
    pub workers: Vec<WorkerReport>,
    /// The workers' interval log, when written (`workers.hlog` in the run's folder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_log: Option<String>,
}

/// One interval a worker streamed: when it was received, and its histogram (encoded).
struct Interval {
    worker: u32,
    stage: String,
    /// From the worker's previous interval in the stage (or the stage's start) to `at`.
    from: SystemTime,
    at: SystemTime,
    encoded: String,
}

#[derive(Default)]
struct Shared {
    assignment: Option<Assignment>,
    members: Vec<Option<Member>>,
    /// The stage announced last: `(index, start in Unix ms, end)`, and its start.
    announced: Option<(u32, f64, Duration)>,
    stage_start: Option<SystemTime>,
    done: Option<String>,
    reply: Option<Reply>,
    /// The exit code the workers get when the run is over.
    done_exit: i32,
    inbox: Option<(u32, mpsc::Sender<Batch>)>,
    /// When each worker was last heard from.
    heard: Vec<Option<Instant>>,
    /// Each worker's session, given at join: its batches carry it.
    sessions: Vec<Option<String>>,
    /// Workers lost in the running stage: told to stop.
    dropped: Vec<bool>,
    stages: Vec<Vec<WorkerStage>>,
    intervals: Vec<Interval>,
    intervals_dropped: usize,
    /// The bytes `intervals` holds.
    interval_bytes: usize,
}

/// The controller of a distributed run.
pub struct Controller {
    /// Where joins and losses are said as they happen (the run's events).
    /// Weak: the run's reporters end when the run does, whatever holds the controller.
    events: Mutex<Option<tokio::sync::mpsc::WeakUnboundedSender<crate::report::Event>>>,
    token: String,
    workers: u32,
    addr: Mutex<String>,
    state: Mutex<Shared>,
    changed: Notify,
    /// Bodies read at once, at most (one per worker, and two more).
    bodies: tokio::sync::Semaphore,
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

impl Controller {
    /// A controller expecting `workers` workers that present `token`.
    pub fn new(workers: u32, token: String) -> Arc<Controller> {
        let state = Shared {
            members: vec![None; workers as usize],
            heard: vec![None; workers as usize],
            sessions: vec![None; workers as usize],
            dropped: vec![false; workers as usize],
            stages: vec![Vec::new(); workers as usize],
            ..Shared::default()
        };
        Arc::new(Controller {
            events: Mutex::new(None),
            token,
            workers,
            addr: Mutex::new(String::new()),
            state: Mutex::new(state),
            changed: Notify::new(),
            bodies: tokio::sync::Semaphore::new(workers as usize + 2),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Says joins and lost workers on the run's events as they happen.
    pub fn attach(&self, events: tokio::sync::mpsc::UnboundedSender<crate::report::Event>) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events.downgrade());
    }

    fn say(&self, message: String) {
        let tx = self.events.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|w| w.upgrade());
        if let Some(tx) = tx {
            let _ = tx.send(crate::report::Event::Note { message });
        }
    }

    /// How many workers the run drives through.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// Notes where the API listens, for the report.
    pub fn served_at(&self, addr: String) {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    /// Makes the run's assignment available to joining workers (`worker` is set per
    /// worker).
    pub fn assign(&self, assignment: Assignment) {
        self.state().assignment = Some(assignment);
        self.changed.notify_waiters();
    }

    /// Waits until every worker has joined, at most `deadline`; the missing ones'
    /// indexes otherwise.
    pub async fn await_members(&self, deadline: Duration, cancel: &CancellationToken) -> Result<(), Vec<u32>> {
        let until = Instant::now() + deadline;
        loop {
            let notified = self.changed.notified();
            let missing: Vec<u32> = {
                let s = self.state();
                s.members.iter().enumerate().filter(|(_, m)| m.is_none()).map(|(i, _)| i as u32).collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = notified => {}
                _ = cancel.cancelled() => return Err(missing),
                _ = tokio::time::sleep_until(until) => return Err(missing),
            }
        }
    }

    /// Announces stage `index`, planned to end `end` after its start, and waits for its
    /// start ([`LEAD`] from now); returns the start and the stage's inbox.
    pub async fn announce(&self, index: usize, end: Duration) -> (Instant, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(INBOX);
        let start_wall = SystemTime::now() + LEAD;
        let start = Instant::now() + LEAD;
        {
            let mut s = self.state();
            s.announced = Some((index as u32, unix_ms(start_wall), end));
            s.stage_start = Some(start_wall);
            s.reply = Some(Reply { end_us: end.as_micros() as u64, stop: false });
            s.inbox = Some((index as u32, tx));
            s.dropped.iter_mut().for_each(|d| *d = false);
        }
        self.changed.notify_waiters();
        tokio::time::sleep_until(start).await;
        (start, rx)
    }

    /// Tells every worker the run is over, and the exit code to end with.
    pub fn finish(&self, reason: &str, exit: i32) {
        let mut s = self.state();
        if s.done.is_none() {
            s.done = Some(reason.to_string());
            s.done_exit = exit;
        }
        s.inbox = None;
        drop(s);
        self.changed.notify_waiters();
    }

    /// The report's part: the workers, and what each did.
    pub fn report(&self) -> DistributedReport {
        let s = self.state();
        let workers = s
            .members
            .iter()
            .zip(&s.stages)
            .filter_map(|(m, st)| m.clone().map(|member| WorkerReport { member, stages: st.clone() }))
            .collect();
        DistributedReport {
            controller: self.addr.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            workers_expected: self.workers,
            workers,
            interval_log: None,
        }
    }

    /// The workers' interval log: every interval each streamed, tagged
    /// `worker-N/STAGE`, microseconds; and how many were left out (past the bound).
    pub fn interval_log(&self, run_start: SystemTime) -> Result<(String, usize), String> {
        use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
        let s = self.state();
        let mut out = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        {
            let mut builder = IntervalLogWriterBuilder::new();
            builder
                .add_comment(
                    "stagegate load workers' interval log: the judged latency each worker streamed, microseconds",
                )
                .with_start_time(run_start)
                .with_base_time(run_start)
                .with_max_value_divisor(1000.0);
            let mut log = builder.begin_log_with(&mut out, &mut serializer).map_err(|e| e.to_string())?;
            for i in &s.intervals {
                let h = crate::report::hlog::decode(&i.encoded)?;
                let from = i.from.max(run_start);
                let start = from.duration_since(run_start).unwrap_or_default();
                let length = i.at.duration_since(from).unwrap_or_default();
                let tag: String = format!("worker-{}/{}", i.worker, i.stage)
                    .chars()
                    .map(|c| if c == ',' || c.is_whitespace() { '_' } else { c })
                    .collect();
                log.write_histogram(&h, start, length, Tag::new(&tag)).map_err(|e| format!("{e:?}"))?;
            }
        }
        Ok((String::from_utf8_lossy(&out).into_owned(), s.intervals_dropped))
    }

    /// Drives stage `index` (its arrival model `arrival`) through the workers from `start`, feeding `sink` as a local
    /// driver would; returns how it went, and why the stage's evidence is incomplete
    /// when a worker was lost.
    #[allow(clippy::too_many_arguments)]
    pub async fn drive(
        &self,
        name: &str,
        start: Instant,
        mut inbox: mpsc::Receiver<Batch>,
        workload: &crate::workload::Workload,
        input: &crate::workload::driver::InputFaults,
        timeout: Duration,
        cancel: &CancellationToken,
        stage_end: &mut StageEnd,
        sink: &mut (dyn Sink + Send),
    ) -> (Drive, Option<String>) {
        let n = self.workers as usize;
        let arrival = &workload.arrival;
        let key_field = &workload.schema.key;
        let fields: Vec<&str> =
            workload.schema.fields.iter().map(|f| f.name.as_str()).filter(|f| f != key_field).collect();
        // The names a record's digest may hold: the schema's, no other.
        let known: std::collections::HashSet<&str> = workload.schema.fields.iter().map(|f| f.name.as_str()).collect();
        // The slots each worker said it sent a malformed record in: each at most once.
        let mut malformed_slots: Vec<std::collections::HashSet<u64>> = vec![Default::default(); n];
        let mut truly_capped = vec![false; n];
        let mut figures: Vec<WorkerStage> =
            (0..n).map(|_| WorkerStage { stage: name.to_string(), ..WorkerStage::default() }).collect();
        let mut histograms: Vec<Histogram<u64>> = (0..n).map(|_| crate::measure::new_histogram()).collect();
        let mut finished: Vec<Option<Finished>> = vec![None; n];
        let mut lost: Vec<Option<String>> = vec![None; n];
        let mut next_seq = vec![0u64; n];
        // When each was last heard from, between stages too (its long poll).
        let mut heard: Vec<Instant> = {
            let s = self.state();
            (0..n).map(|w| s.heard[w].map_or(start, |h| h.min(start))).collect()
        };
        let mut said = vec![false; n];
        let stage_start = self.state().stage_start.unwrap_or_else(SystemTime::now);
        let mut interval_from = vec![stage_start; n];
        let mut end_seen = stage_end.get();
        let mut next_tick = start + Duration::from_secs(1);
        let mut completed = true;
        let at = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
        let mut total_sent = 0u64;
        let mut capped = false;
        loop {
            for w in 0..n {
                if let (Some(why), false) = (&lost[w], said[w]) {
                    said[w] = true;
                    self.state().dropped[w] = true;
                    self.say(format!("load worker lost: {why}"));
                }
            }
            let open = (0..n).filter(|&w| finished[w].is_none() && lost[w].is_none()).count();
            if open == 0 {
                break;
            }
            let deadline = start + end_seen + timeout + FINISH_GRACE;
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if completed => {
                    completed = false;
                    if let Some(r) = self.state().reply.as_mut() {
                        r.stop = true;
                    }
                }
                batch = inbox.recv() => {
                    let Some(batch) = batch else { break };
                    let w = batch.worker as usize;
                    if w >= n || lost[w].is_some() || finished[w].is_some() {
                        continue;
                    }
                    heard[w] = Instant::now();
                    if batch.seq < next_seq[w] {
                        // Posted again after its answer was lost: already counted.
                        continue;
                    }
                    if batch.seq != next_seq[w] {
                        lost[w] = Some(format!(
                            "worker {w}'s reports arrived out of order (report {} after {})",
                            batch.seq,
                            next_seq[w].saturating_sub(1)
                        ));
                        continue;
                    }
                    next_seq[w] += 1;
                    // Each interval runs from the worker's previous batch to this one.
                    let received = SystemTime::now();
                    let from = std::mem::replace(&mut interval_from[w], received);
                    // A digest no schema makes is not counted: the worker is broken or forged.
                    if batch.sent.iter().any(|s| {
                        s.digest.fields.len() > MAX_DIGEST_FIELDS
                            || s.key.len() > 4096
                            || s.digest.fields.iter().any(|(name, _)| !known.contains(name.as_str()))
                    }) {
                        lost[w] = Some(format!(
                            "worker {w} sent records the scenario's schema does not make (a field it does not have, too many fields, or a key over 4 KiB)"
                        ));
                        continue;
                    }
                    // A record said to be malformed on purpose must be one the stage's
                    // record faults break, in a slot of this worker's share, said once: a
                    // made-up send the target "rejected" would otherwise pass every check.
                    let share = crate::workload::driver::Share { index: w as u64, of: n as u64 };
                    let most_slot = match share_of(arrival, end_seen, 0, 1) {
                        Some(planned) => planned.saturating_add(n as u64),
                        None => (figures[w].sent + batch.sent.len() as u64 + 1).saturating_mul(n as u64),
                    };
                    if let Some(s) = batch.sent.iter().find(|s| {
                        s.invalid
                            && (!share.owns(s.slot)
                                || s.slot >= most_slot
                                || input.records.decide(Duration::from_micros(s.offset_us), s.slot, &fields).malformed.is_none()
                                || !malformed_slots[w].insert(s.slot))
                    }) {
                        lost[w] = Some(format!(
                            "worker {w} said it sent a malformed record in slot {} of stage `{name}`, which no record fault of the stage breaks (or it said so twice)",
                            s.slot
                        ));
                        continue;
                    }
                    let f = &mut figures[w];
                    f.batches += 1;
                    for s in batch.sent {
                        f.sent += 1;
                        total_sent += 1;
                        // Past the cap (the workers are told to stop), the ledger grows no more.
                        if (total_sent as f64) <= crate::limits::MAX_REQUESTS_PER_STAGE {
                            sink.sent_digest(Duration::from_micros(s.offset_us), &s.key, s.digest, s.invalid);
                        }
                    }
                    // All workers together send no more than one process may in a stage.
                    if total_sent as f64 >= crate::limits::MAX_REQUESTS_PER_STAGE && !capped {
                        capped = true;
                        if let Some(r) = self.state().reply.as_mut() {
                            r.stop = true;
                        }
                    }
                    for e in batch.ended {
                        let outcome = match e.outcome {
                            'a' => Outcome::Acked,
                            'r' => Outcome::Rejected,
                            _ => Outcome::Failed,
                        };
                        if e.own_failure.is_none() {
                            match outcome {
                                Outcome::Acked => f.acked += 1,
                                Outcome::Rejected => f.rejected += 1,
                                Outcome::Failed => f.failed += 1,
                            }
                        }
                        sink.sample(Sample {
                            offset: Duration::from_micros(e.offset_us),
                            latency: Duration::from_micros(e.latency_us),
                            outcome,
                            key: e.key,
                            own_failure: e.own_failure.map(|why| format!("{why} (worker {w})")),
                            send_lag: Duration::from_micros(e.send_lag_us),
                        });
                    }
                    if let Some(encoded) = batch.interval {
                        match crate::report::hlog::decode(&encoded) {
                            Ok(h) => {
                                let _ = histograms[w].add(&h);
                                // Kept as the histogram encodes, not as posted: bytes after
                                // it (a forger's padding) are not kept to the run's end.
                                let mut bytes = Vec::new();
                                let encoded = match V2DeflateSerializer::new().serialize(&h, &mut bytes) {
                                    Ok(_) => base64::engine::general_purpose::STANDARD.encode(bytes),
                                    Err(_) => String::new(),
                                };
                                let mut s = self.state();
                                if s.intervals.len() < MAX_INTERVALS
                                    && s.interval_bytes + encoded.len() <= MAX_INTERVAL_BYTES
                                    && !encoded.is_empty()
                                {
                                    s.interval_bytes += encoded.len();
                                    s.intervals.push(Interval {
                                        worker: w as u32,
                                        stage: name.to_string(),
                                        from,
                                        at: received,
                                        encoded,
                                    });
                                } else {
                                    s.intervals_dropped += 1;
                                }
                            }
                            Err(e) => {
                                lost[w] = Some(format!("worker {w} sent a histogram that cannot be read ({e})"));
                            }
                        }
                    }
                    if let Some(done) = batch.finished {
                        f.dropped = done.dropped.saturating_add(done.held_back);
                        // A share said to be complete must be: as long as the stage, and
                        // (open model) every send of its share made or counted as dropped.
                        // A cap is reached by sending, not by saying so.
                        truly_capped[w] = done.capped && f.sent as f64 >= crate::limits::MAX_REQUESTS_PER_STAGE;
                        if done.completed && completed && !capped && !truly_capped[w] {
                            let short = Duration::from_micros(done.length_us) + Duration::from_millis(1) < end_seen;
                            // Its stage is over on the controller's clock too (give or
                            // take the clocks' measured offset, well under a second).
                            let early = start + end_seen > Instant::now() + EARLY_FINISH;
                            let owed = share_of(arrival, end_seen, w as u64, n as u64);
                            let accounted = f.sent.saturating_add(done.dropped).saturating_add(done.held_back);
                            if let Some(owed) = owed
                                && done.dropped.saturating_mul(100) > owed
                            {
                                // Its own lateness: a worker that cannot keep its schedule.
                                lost[w] = Some(format!(
                                    "worker {w} could not keep its schedule in stage `{name}`: it dropped {} of the {owed} sends it owed",
                                    done.dropped
                                ));
                            } else if done.held_back > 0 && f.sent < crate::workload::driver::MAX_IN_FLIGHT as u64 {
                                // The target holds sends back only once it holds the most
                                // requests a driver keeps in flight.
                                lost[w] = Some(format!(
                                    "worker {w} said the target held back {} of its sends in stage `{name}`, but it sent only {} (the target holds sends back once {} are in flight)",
                                    done.held_back,
                                    f.sent,
                                    crate::workload::driver::MAX_IN_FLIGHT
                                ));
                            } else if early
                                || short
                                || owed.is_some_and(|owed| accounted.saturating_add(2 + owed / 1000) < owed || accounted > owed.saturating_mul(2))
                            {
                                lost[w] = Some(format!(
                                    "worker {w} said its share of stage `{name}` was complete after {:.1}s (at {:.1}s on this clock) and {} sends{}",
                                    Duration::from_micros(done.length_us).min(Duration::from_secs(1 << 40)).as_secs_f64(),
                                    at(Instant::now()),
                                    f.sent,
                                    owed.map_or(String::new(), |o| format!(" of the {o} it owed (it counted {accounted} with the ones it did not send)"))
                                ));
                            }
                        }
                        if !done.completed && !done.overflowed && done.late_us == 0 && completed {
                            // Stopped on its side (SIGTERM, an evicted pod): a worker lost.
                            lost[w] = Some(format!(
                                "worker {w} was stopped {:.1}s into stage `{name}`: its share of the load after that was not sent",
                                done.length_us as f64 / 1e6
                            ));
                        }
                        if done.late_us > 0 {
                            lost[w] = Some(format!(
                                "worker {w} heard of stage `{name}` {:.0} ms after its start and did not drive it",
                                done.late_us as f64 / 1000.0
                            ));
                        }
                        if done.overflowed {
                            lost[w] = Some(format!(
                                "worker {w} could not hand its records over as fast as it sent them and stopped at {:.1}s",
                                done.length_us as f64 / 1e6
                            ));
                        }
                        finished[w] = Some(done);
                    }
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    sink.tick(next_tick - start);
                    next_tick += Duration::from_secs(1);
                    let now = Instant::now();
                    for w in 0..n {
                        if finished[w].is_none() && lost[w].is_none() && now.duration_since(heard[w]) >= SILENCE {
                            lost[w] = Some(if heard[w] < start {
                                format!(
                                    "worker {w} took no part in stage `{name}`: last heard from {:.1}s before it started",
                                    start.duration_since(heard[w]).as_secs_f64()
                                )
                            } else {
                                format!(
                                    "worker {w} stopped reporting {:.1}s into stage `{name}` (nothing for {}s): its share of the load after that was not sent or not seen",
                                    at(heard[w]),
                                    SILENCE.as_secs()
                                )
                            });
                        }
                    }
                }
                () = stage_end.moved() => {
                    if stage_end.get() != end_seen {
                        end_seen = stage_end.get();
                        sink.end_moved(end_seen);
                        if let Some(r) = self.state().reply.as_mut() {
                            r.end_us = end_seen.as_micros() as u64;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    for w in 0..n {
                        if finished[w].is_none() && lost[w].is_none() {
                            lost[w] = Some(format!(
                                "worker {w} had not finished stage `{name}` {}s after its end: it is late, its share is incomplete",
                                (timeout + FINISH_GRACE).as_secs()
                            ));
                        }
                    }
                }
            }
        }
        // Batches still on their way for this stage are refused from here on.
        self.state().inbox = None;
        // A closed model owes no set number of sends; a worker that sent, per connection of
        // its share, far fewer than the others did over the same stage did not send its
        // share. (The first workers hold one connection more when the concurrency does
        // not divide evenly; a worker with none owes nothing.)
        if let (true, crate::workload::Arrival::Closed { concurrency }) = (completed, arrival) {
            let connections = |w: usize| {
                u64::from(crate::workload::driver::Share { index: w as u64, of: n as u64 }.concurrency(*concurrency))
            };
            let per_connection = |w: usize| figures[w].sent / connections(w).max(1);
            for w in 0..n {
                if lost[w].is_some() || finished[w].is_none() || connections(w) == 0 {
                    continue;
                }
                let mut others: Vec<u64> =
                    (0..n).filter(|&o| o != w && lost[o].is_none() && connections(o) > 0).map(per_connection).collect();
                others.sort_unstable();
                let Some(&median) = others.get(others.len() / 2) else { continue };
                if median >= 50 && per_connection(w) * 2 < median {
                    lost[w] = Some(format!(
                        "worker {w} sent {} records over its {} connection(s) in stage `{name}` while the others sent about {median} per connection: its share looks incomplete",
                        figures[w].sent,
                        connections(w)
                    ));
                }
            }
        }
        let drives: Vec<&Finished> = finished.iter().flatten().collect();
        let length = if completed { stage_end.get() } else { start.elapsed().min(stage_end.get()) };
        // A worker that stopped early is a lost worker (said above), not a stopped stage.
        let drive = Drive {
            completed,
            dropped: drives.iter().map(|d| d.dropped).sum(),
            capped: capped || truly_capped.iter().any(|c| *c),
            held_back: drives.iter().map(|d| d.held_back).sum(),
            length,
        };
        let mut s = self.state();
        for (w, (mut f, h)) in figures.into_iter().zip(histograms).enumerate() {
            f.judged_requests = h.len();
            let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
            f.p50_ms = q(0.5);
            f.p99_ms = q(0.99);
            let mut bytes = Vec::new();
            if V2DeflateSerializer::new().serialize(&h, &mut bytes).is_ok() {
                f.histogram = base64::engine::general_purpose::STANDARD.encode(bytes);
            }
            f.lost = lost[w].clone();
            s.stages[w].push(f);
        }
        drop(s);
        for w in 0..n {
            if let (Some(why), false) = (&lost[w], said[w]) {
                self.say(format!("load worker lost: {why}"));
            }
        }
        let lost: Vec<String> = lost.into_iter().flatten().collect();
        let incomplete = (!lost.is_empty()).then(|| lost.join("; "));
        (drive, incomplete)
    }
}

/// How many sends worker `w` of `n` owes over a stage of `length` (open model: every
/// n-th slot of the schedule); `None` for a closed model, where it depends on the answers.
fn share_of(arrival: &crate::workload::Arrival, length: Duration, w: u64, n: u64) -> Option<u64> {
    match arrival {
        crate::workload::Arrival::Open(profile) => {
            let planned = (profile.expected(length.as_secs_f64()) - 1e-9).ceil().max(0.0) as u64;
            Some((planned + n - 1 - w.min(n - 1)) / n)
        }
        crate::workload::Arrival::Closed { .. } => None,
    }
}

/// The API's routes.
pub fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/time", get(time))
        .route("/v1/join", post(join))
        .route("/v1/next", get(next))
        .route("/v1/batch", post(batch))
        .layer(axum::middleware::from_fn_with_state(ctl.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BATCH))
        .with_state(ctl)
}

/// Every route needs the token, checked before any body is read.
async fn require_token(
    State(ctl): State<Arc<Controller>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !authorized(&ctl, request.headers()) {
        return refuse(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    }
    next.run(request).await
}

/// Reads a body within [`BODY_DEADLINE`], up to `most` bytes, at most [`BODIES`] at once.
async fn read_body(ctl: &Controller, body: axum::body::Body, most: usize) -> Result<axum::body::Bytes, Response> {
    let _permit = tokio::time::timeout(BODY_DEADLINE, ctl.bodies.acquire())
        .await
        .map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "the controller is reading other bodies: post again"))?;
    match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, most)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("the body could not be read whole: {e}"))),
        Err(_) => Err(refuse(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Whether the request carries the run's token (compared in constant time).
fn authorized(ctl: &Controller, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().as_bytes())
        .unwrap_or_default();
    let want = ctl.token.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

const UNAUTHORIZED: &str = "the worker token was refused: give the controller's (--token, or STAGEGATE_WORKER_TOKEN)";

async fn time(State(ctl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    if !authorized(&ctl, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    }
    axum::Json(json!({ "unix_ms": unix_ms(SystemTime::now()) })).into_response()
}

async fn join(State(ctl): State<Arc<Controller>>, body: axum::body::Body) -> Response {
    let body = match read_body(&ctl, body, 64 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let j: Join = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the join request is not understood: {e}")),
    };
    if j.protocol != VERSION {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "this controller speaks protocol {VERSION} (stagegate {}), the worker {} (stagegate {}): run the same stagegate on both",
                env!("CARGO_PKG_VERSION"),
                j.protocol,
                j.stagegate_version
            ),
        );
    }
    if j.index >= ctl.workers {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "worker index {} is out of range: this run has {} workers (0 to {})",
                j.index,
                ctl.workers,
                ctl.workers - 1
            ),
        );
    }
    let until = Instant::now() + ASSIGNMENT_WAIT;
    loop {
        let notified = ctl.changed.notified();
        {
            let mut s = ctl.state();
            if let Some(reason) = &s.done {
                return refuse(StatusCode::GONE, format!("the run is over: {reason}"));
            }
            if let Some(taken) = &s.members[j.index as usize] {
                return refuse(
                    StatusCode::CONFLICT,
                    format!("worker index {} has already joined (from {})", j.index, taken.host),
                );
            }
            if let Some(a) = &s.assignment {
                let mut a = a.clone();
                a.worker = j.index;
                a.session = crate::steer::new_token();
                s.sessions[j.index as usize] = Some(a.session.clone());
                let host: String = j.host.chars().filter(|c| !c.is_control()).take(253).collect();
                s.members[j.index as usize] = Some(Member {
                    index: j.index,
                    host,
                    clock_offset_ms: j.clock_offset_ms,
                    rtt_ms: j.rtt_ms,
                    joined_at: chrono::Utc::now().to_rfc3339(),
                });
                s.heard[j.index as usize] = Some(Instant::now());
                let joined = s.members.iter().filter(|m| m.is_some()).count();
                drop(s);
                ctl.changed.notify_waiters();
                ctl.say(format!(
                    "load worker {} joined from {} (clock offset {:+.1} ms, round trip {:.1} ms); {joined} of {}",
                    j.index, j.host, j.clock_offset_ms, j.rtt_ms, ctl.workers
                ));
                return axum::Json(a).into_response();
            }
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(until) => {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "the run is still starting: join again");
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct NextQuery {
    worker: u32,
    from: u32,
}

async fn next(State(ctl): State<Arc<Controller>>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    if !authorized(&ctl, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    }
    if q.worker >= ctl.workers {
        return refuse(StatusCode::BAD_REQUEST, format!("worker index {} is out of range", q.worker));
    }
    let until = Instant::now() + LONG_POLL;
    loop {
        let notified = ctl.changed.notified();
        {
            let mut s = ctl.state();
            s.heard[q.worker as usize] = Some(Instant::now());
            if let Some(reason) = &s.done {
                return axum::Json(Next::Done { reason: reason.clone(), exit: s.done_exit }).into_response();
            }
            if let Some((stage, start_unix_ms, end)) = s.announced
                && stage >= q.from
            {
                return axum::Json(Next::Stage { stage, start_unix_ms, end_us: end.as_micros() as u64 })
                    .into_response();
            }
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(until) => return axum::Json(Next::Wait).into_response(),
        }
    }
}

async fn batch(State(ctl): State<Arc<Controller>>, body: axum::body::Body) -> Response {
    let body = match read_body(&ctl, body, MAX_BATCH).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let b: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the batch is not understood: {e}")),
    };
    if b.worker >= ctl.workers {
        return refuse(StatusCode::BAD_REQUEST, format!("worker index {} is out of range", b.worker));
    }
    let w = b.worker as usize;
    let (inbox, reply) = {
        let mut s = ctl.state();
        // Only the worker that joined with this index posts as it.
        if s.sessions[w].as_deref() != Some(b.session.as_str()) {
            return refuse(StatusCode::FORBIDDEN, format!("this batch does not carry worker {w}'s session"));
        }
        if s.dropped[w] {
            // Lost in this stage: what it sends is not counted, so it stops.
            return axum::Json(Reply { end_us: s.reply.map_or(0, |r| r.end_us), stop: true }).into_response();
        }
        s.heard[w] = Some(Instant::now());
        match &s.inbox {
            Some((stage, tx)) if *stage == b.stage => (tx.clone(), s.reply),
            _ => return refuse(StatusCode::GONE, format!("stage {} is not running", b.stage)),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), inbox.send(b)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return refuse(StatusCode::GONE, "the stage is over"),
        Err(_) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "the controller is behind: post again"),
    }
    let s = ctl.state();
    let mut reply = s.reply.or(reply).unwrap_or(Reply { end_us: 0, stop: true });
    reply.stop |= s.dropped[w];
    axum::Json(reply).into_response()
}
