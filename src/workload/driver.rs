//! The HTTP driver: sends each record to the system under test at its intended time and
//! reports how it went.
//!
//! One loop paces the sends (see [`super::pacing`]); each request runs in its own task
//! and reports a [`Sample`] back over a channel, so a slow answer never delays the next
//! send. Latency runs from the intended send time. The loop stops at the stage's end or
//! when cancelled; requests still in flight then get a bounded grace period to finish.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Arrival, Workload, pacing};
use crate::data::Generator;
use crate::fault::records::{RecordFaults, make_late, malform};
use crate::fault::unit;
use crate::measure::Outcome;
use crate::quality::key_of;
use tracing::warn;

/// Requests in flight at most; past this the driver waits (and latency still counts
/// from the intended time, so the wait shows).
pub const MAX_IN_FLIGHT: usize = 4096;

const JSON: reqwest::header::HeaderValue = reqwest::header::HeaderValue::from_static("application/json");

/// How far past the stage's end a late send may still go out; beyond it the rest of the
/// schedule is dropped (and counted), so an overloaded driver cannot stretch a stage.
const DROP_GRACE: Duration = Duration::from_millis(100);

/// How one request went.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Intended send time, as an offset from the stage start.
    pub offset: Duration,
    /// From the intended send time to the answer.
    pub latency: Duration,
    pub outcome: Outcome,
    pub key: String,
    /// Set when the request failed for want of stagegate's own resources (file
    /// descriptors, local ports): not the target's doing, and not judged.
    pub own_failure: Option<String>,
    /// How long after its intended time the request left, by stagegate's own doing (a
    /// wait for a free slot while the target holds the most requests in flight is not
    /// counted: that is the target's).
    pub send_lag: Duration,
}

/// What the driver tells its caller while it runs.
pub trait Sink {
    /// A record is about to be sent in slot `slot` of the stage's schedule, intended at
    /// `offset` into the stage; `invalid` when a `malformed` fault broke it on purpose.
    fn sent(&mut self, offset: Duration, slot: u64, key: &str, record: &Map<String, Value>, invalid: bool);
    /// A record was sent by a load worker, which made its ledger [`Digest`] (the record
    /// itself stays there). Sinks that keep no ledger need not care.
    ///
    /// [`Digest`]: crate::quality::Digest
    fn sent_digest(&mut self, _offset: Duration, _key: &str, _digest: crate::quality::Digest, _invalid: bool) {}
    /// Extra headers for this record's request (a `header` flag provider uses this).
    fn headers(&mut self, _key: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The flag values this record sees, for templates (`{{ flags.NAME }}`).
    fn flags(&mut self, _key: &str) -> Value {
        Value::Null
    }
    /// A request has ended.
    fn sample(&mut self, sample: Sample);
    /// Called about once a second with the elapsed stage time.
    fn tick(&mut self, elapsed: Duration);
    /// An operator moved the stage's end to `end` (from its start).
    fn end_moved(&mut self, _end: Duration) {}
}

/// The stage's input-data faults, and the record fields they act on.
#[derive(Debug, Clone, Default)]
pub struct InputFaults {
    pub records: RecordFaults,
    /// Timestamp fields, moved by `late` faults.
    pub timestamps: Vec<String>,
    /// A seed for reordering choices.
    pub seed: u64,
}

/// Where and how records are written.
pub struct HttpWrite {
    pub client: reqwest::Client,
    /// The target's base URL (`http://127.0.0.1:8080`).
    pub base_url: String,
    /// The write request, rendered per record.
    pub template: Arc<crate::sut::http::WriteTemplate>,
}

/// Which part of the load this driver sends: share `index` of `of` (a load worker's), or
/// all of it. The schedule and the records are the whole run's; a share sends every
/// `of`-th send slot of the open model's schedule (the record each slot carries is the one
/// a single process would send there), or `1/of` of the closed model's concurrency with
/// record numbers `index`, `index + of`, ...; so the shares are disjoint and, for the open
/// model, their union is exactly what one process would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u64,
    pub of: u64,
}

impl Share {
    /// All of the load.
    pub const WHOLE: Share = Share { index: 0, of: 1 };

    /// Whether send slot `slot` of the schedule is this share's.
    pub fn owns(self, slot: u64) -> bool {
        slot % self.of.max(1) == self.index
    }

    /// This share of a closed model's `concurrency` (the first shares take the rest).
    pub fn concurrency(self, concurrency: u32) -> u32 {
        let of = self.of.max(1);
        let base = u64::from(concurrency) / of;
        (base + u64::from(self.index < u64::from(concurrency) % of)) as u32
    }
}

/// How a stage's driving went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drive {
    /// Whether the stage ran to its end (not cancelled).
    pub completed: bool,
    /// Sends the schedule asked for that never left because the stage was over before
    /// the driver got to them (the driver could not keep up with the arrival rate).
    pub dropped: u64,
    /// Set when the stage stopped sending at the most requests a stage may send
    /// ([`crate::limits::MAX_REQUESTS_PER_STAGE`]).
    pub capped: bool,
    /// Sends that never left because the target held [`MAX_IN_FLIGHT`] requests at once
    /// until the stage was over (its slowness, not stagegate's; counted apart from
    /// `dropped`).
    pub held_back: u64,
    /// How long the stage lasted: its planned length, or as an operator moved its end, or
    /// until it was stopped.
    pub length: Duration,
}

/// Drives one stage (this share of it).
#[allow(clippy::too_many_arguments)] // each is a distinct input of the stage; a struct would only rename them
pub async fn drive(
    write: &HttpWrite,
    workload: &Workload,
    data_seed: u64,
    input: &InputFaults,
    cancel: &CancellationToken,
    stage_end: &mut StageEnd,
    share: Share,
    sink: &mut (dyn Sink + Send),
) -> Drive {
    let mut generator = Generator::new(workload.schema.clone(), data_seed);
    let key_field = workload.schema.key.clone();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let mut end_seen = stage_end.get();
    let mut next_tick = start + Duration::from_secs(1);
    let mut completed = true;
    let (mut open, closed) = match &workload.arrival {
        Arrival::Open(profile) => (Some(pacing::schedule(profile, stage_end.most())), 0usize),
        Arrival::Closed { concurrency } => (None, share.concurrency(*concurrency) as usize),
    };
    let open_model = open.is_some();
    // How many sends the schedule holds, and how many it has given so far: what is left
    // when the driver falls behind is counted, never walked through.
    let planned = |length: Duration| match &workload.arrival {
        Arrival::Open(profile) => (profile.expected(length.as_secs_f64()) - 1e-9).ceil().max(0.0) as u64,
        Arrival::Closed { .. } => 0,
    };
    let mut scheduled = 0u64;
    let mut in_flight = 0usize;
    let mut dropped = 0u64;
    let mut held_back = 0u64;
    let mut capped = false;
    // Time spent waiting for a free slot since the driver was last on time: the target's
    // backpressure, taken out of the send lag.
    let mut slot_wait = Duration::ZERO;
    let fields: Vec<String> =
        workload.schema.fields.iter().map(|f| f.name.clone()).filter(|f| *f != key_field).collect();
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    // Sends made here (the closed model numbers its slots by them).
    let mut index = 0u64;
    let mut numbering = Numbering::new(if open_model { Share::WHOLE } else { share });
    let mut last_url: Option<(String, reqwest::Url)> = None;

    loop {
        // The next send: this share's next slot of the schedule (open model), or as soon
        // as a slot frees (closed).
        let intended = match open.as_mut() {
            Some(offsets) => {
                let mut due = None;
                for offset in offsets.by_ref() {
                    let slot = scheduled;
                    scheduled += 1;
                    if share.owns(slot) {
                        due = Some((start + offset, slot));
                        break;
                    }
                    // Another share's send: its record is taken here too, so the
                    // numbering stays the whole run's.
                    let reorder = if input.records.is_empty() {
                        None
                    } else {
                        input.records.decide(offset, slot, &fields).reorder
                    };
                    numbering.take(reorder, input.seed, slot);
                }
                match due {
                    Some(due) => Some(due),
                    None => break,
                }
            }
            None => None,
        };
        // Waits for the next send's time (or a free slot), or for the stage's end, which an
        // operator may move while the driver waits.
        let mut over = false;
        loop {
            if stage_end.get() != end_seen {
                end_seen = stage_end.get();
                sink.end_moved(end_seen);
            }
            let end = start + end_seen;
            let ready = intended.is_none() && in_flight < closed;
            if ready {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => { completed = false; break; }
                Some(sample) = rx.recv() => {
                    in_flight -= 1;
                    sink.sample(sample);
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    sink.tick(next_tick - start);
                    next_tick += Duration::from_secs(1);
                }
                () = stage_end.moved() => {}
                _ = tokio::time::sleep_until(intended.map_or(end, |(i, _)| i.min(end))) => {
                    if intended.is_none_or(|(i, _)| i >= end) {
                        over = true;
                    }
                    break;
                }
            }
        }
        if !completed || over {
            break;
        }
        let end = start + end_seen;
        let (intended, slot) = intended.unwrap_or_else(|| (Instant::now(), index * share.of.max(1) + share.index));
        if intended >= end {
            break;
        }
        if Instant::now() >= end + DROP_GRACE {
            // Behind schedule past the stage's end: what is left will never be sent.
            // (this share's part of them)
            let left = (planned(end_seen).saturating_sub(scheduled) + 1).div_ceil(share.of.max(1));
            if slot_wait.is_zero() {
                dropped = left;
            } else {
                held_back = left;
            }
            break;
        }
        let loop_lag = Instant::now().saturating_duration_since(intended);
        if loop_lag.is_zero() {
            slot_wait = Duration::ZERO;
        }
        if index as f64 >= crate::limits::MAX_REQUESTS_PER_STAGE {
            capped = true;
            break;
        }
        let offset = intended - start;
        let fate = input.records.decide(offset, slot, &fields);
        // Which record this slot sends: the next one, or (out of order) one of the next
        // `window`.
        let number = numbering.take(fate.reorder, input.seed, slot);
        index += 1;
        let mut record = generator.record(number);
        if let Some(by) = fate.late {
            make_late(&mut record, &input.timestamps, by);
        }
        let key = key_of(&record, &key_field).unwrap_or_default();
        let flag_values = if write.template.uses_flags() { sink.flags(&key) } else { Value::Null };
        let rendered = match write.template.render(&record, &key, &flag_values) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "a write template could not be rendered for a record; skipped");
                continue;
            }
        };
        let body = match &fate.malformed {
            Some(how) => Some(malform(&record, how)),
            None => rendered.body.clone(),
        };
        sink.sent(offset, slot, &key, &record, fate.malformed.is_some());
        let mut headers = rendered.headers.clone();
        headers.extend(sink.headers(&key));
        // Most writes go to one path: its URL is parsed once, not per request.
        let url = match &last_url {
            Some((path, url)) if *path == rendered.path => url.clone(),
            _ => match reqwest::Url::parse(&format!("{}{}", write.base_url, rendered.path)) {
                Ok(url) => {
                    last_url = Some((rendered.path.clone(), url.clone()));
                    url
                }
                Err(e) => {
                    sink.sample(Sample {
                        offset,
                        latency: Duration::ZERO,
                        outcome: Outcome::Failed,
                        key: key.clone(),
                        own_failure: Some(format!("the request could not be built (URL: {e})")),
                        send_lag: Duration::ZERO,
                    });
                    continue;
                }
            },
        };
        let copies = if fate.duplicate { 2 } else { 1 };
        let own_lag = loop_lag.saturating_sub(slot_wait);
        for _ in 0..copies {
            let waited = Instant::now();
            let permit = tokio::select! {
                _ = cancel.cancelled() => { completed = false; break; }
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            slot_wait += waited.elapsed();
            let spawned = Instant::now();
            let mut request = write
                .client
                .request(rendered.method.clone(), url.clone())
                .header(reqwest::header::CONTENT_TYPE, JSON)
                .timeout(workload.timeout);
            if let Some(b) = &body {
                request = request.body(b.clone());
            }
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            let tx = tx.clone();
            let key = key.clone();
            in_flight += 1;
            tasks.spawn(async move {
                let send_lag = own_lag + spawned.elapsed();
                let mut own_failure = None;
                let outcome = match request.send().await {
                    Ok(r) if r.status().is_success() => Outcome::Acked,
                    Ok(r) if r.status().is_client_error() => Outcome::Rejected,
                    Ok(_) => Outcome::Failed,
                    Err(e) => {
                        // A request that cannot even be built (a URL the rendered
                        // settings made invalid) never reached the target.
                        own_failure = crate::health::chain_is_own_exhaustion(&e)
                            .or_else(|| crate::health::chain_is_tls_refusal(&e))
                            .or_else(|| e.is_builder().then(|| format!("the request could not be built ({e})")));
                        Outcome::Failed
                    }
                };
                let latency = Instant::now().saturating_duration_since(intended);
                let _ = tx.send(Sample { offset, latency, outcome, key, own_failure, send_lag });
                drop(permit);
            });
        }
        if !completed {
            break;
        }
        // Reap finished tasks so the set does not grow with the stage.
        while tasks.try_join_next().is_some() {}
    }
    drop(tx);
    if !completed {
        tasks.abort_all();
    }
    // Let requests in flight finish, within their timeout plus a margin.
    let deadline = Instant::now() + workload.timeout + Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = cancel.cancelled(), if completed => { completed = false; tasks.abort_all(); }
            s = rx.recv() => match s {
                Some(sample) => sink.sample(sample),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => { tasks.abort_all(); break; }
        }
    }
    while tasks.join_next().await.is_some() {}
    let length = if completed && !capped { stage_end.get() } else { start.elapsed().min(stage_end.get()) };
    Drive { completed, dropped, capped, held_back, length }
}

/// Which record each send slot carries: the next number, or with an out-of-order fault
/// one of the next `window` (the numbers taken ahead wait their turn). Every share walks
/// the whole schedule's numbering (open model) or its own numbers (closed), so each
/// record goes out once overall.
struct Numbering {
    next: u64,
    step: u64,
    ahead: VecDeque<u64>,
}

impl Numbering {
    /// Numbers `share.index`, `share.index + share.of`, ...
    fn new(share: Share) -> Self {
        Numbering { next: share.index, step: share.of.max(1), ahead: VecDeque::new() }
    }

    fn fresh(&mut self) -> u64 {
        let n = self.next;
        self.next += self.step;
        n
    }

    /// The record number for send slot `slot`.
    fn take(&mut self, reorder: Option<u32>, seed: u64, slot: u64) -> u64 {
        match reorder {
            Some(window) => {
                // A window of at least one record (a scenario says at least 2; a
                // worker's assignment is not trusted to).
                while self.ahead.len() < window.max(1) as usize {
                    let n = self.fresh();
                    self.ahead.push_back(n);
                }
                let pick = 1 + (unit(seed, slot) * (self.ahead.len() - 1) as f64) as usize;
                self.ahead.remove(pick.min(self.ahead.len() - 1)).expect("the window is filled")
            }
            None => match self.ahead.pop_front() {
                Some(n) => n,
                None => self.fresh(),
            },
        }
    }
}

/// When a stage ends, as an offset from its start: its planned length, or where an
/// operator moved it (held longer, or ended now) through the steering API.
#[derive(Debug)]
pub struct StageEnd {
    steered: Option<tokio::sync::watch::Receiver<Duration>>,
    planned: Duration,
    most: Duration,
}

impl StageEnd {
    /// A stage that ends at `length`.
    pub fn fixed(length: Duration) -> StageEnd {
        StageEnd { steered: None, planned: length, most: length }
    }

    /// A stage whose end follows `end`, never past `most`.
    pub fn steered(end: tokio::sync::watch::Receiver<Duration>, most: Duration) -> StageEnd {
        let planned = *end.borrow();
        StageEnd { steered: Some(end), planned, most: most.max(planned) }
    }

    /// The end now.
    pub fn get(&self) -> Duration {
        self.steered.as_ref().map_or(self.planned, |r| *r.borrow()).min(self.most)
    }

    /// The latest it can be.
    pub fn most(&self) -> Duration {
        self.most
    }

    /// Resolves when the end moves (never, for a fixed one).
    pub async fn moved(&mut self) {
        if let Some(rx) = &mut self.steered
            && rx.changed().await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}
