//! The HTTP driver: sends each record to the system under test at its intended time and
//! reports how it went.
//!
//! One loop paces the sends (see [`super::pacing`]); each request runs in its own task
//! and reports a [`Sample`] back over a channel, so a slow answer never delays the next
//! send. Latency runs from the intended send time. The loop stops at the stage's end or
//! when cancelled; requests still in flight then get a bounded grace period to finish.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Arrival, Workload, pacing};
use crate::data::Generator;
use crate::measure::Outcome;
use crate::quality::key_of;

/// Requests in flight at most; past this the driver waits (and latency still counts
/// from the intended time, so the wait shows).
const MAX_IN_FLIGHT: usize = 4096;

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
}

/// What the driver tells its caller while it runs.
pub trait Sink {
    /// A record is about to be sent, intended at `offset` into the stage.
    fn sent(&mut self, offset: Duration, key: &str, record: &Map<String, Value>);
    /// Extra headers for this record's request (a `header` flag provider uses this).
    fn headers(&mut self, _key: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    /// A request has ended.
    fn sample(&mut self, sample: Sample);
    /// Called about once a second with the elapsed stage time.
    fn tick(&mut self, elapsed: Duration);
}

/// Where and how records are written.
pub struct HttpWrite {
    pub client: reqwest::Client,
    /// Full URL records are POSTed to.
    pub url: String,
}

/// How a stage's driving went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drive {
    /// Whether the stage ran to its end (not cancelled).
    pub completed: bool,
    /// Sends the schedule asked for that never left because the stage was over before
    /// the driver got to them (the driver could not keep up with the arrival rate).
    pub dropped: u64,
}

/// Drives one stage.
pub async fn drive(
    write: &HttpWrite,
    workload: &Workload,
    data_seed: u64,
    cancel: &CancellationToken,
    sink: &mut (dyn Sink + Send),
) -> Drive {
    let mut generator = Generator::new(workload.schema.clone(), data_seed);
    let key_field = workload.schema.key.clone();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let end = start + workload.duration;
    let mut next_tick = start + Duration::from_secs(1);
    let mut completed = true;
    let (mut open, closed) = match &workload.arrival {
        Arrival::Open(profile) => (Some(pacing::schedule(profile, workload.duration)), 0usize),
        Arrival::Closed { concurrency } => (None, *concurrency as usize),
    };
    let mut in_flight = 0usize;
    let mut dropped = 0u64;

    loop {
        // The next send: on schedule (open model), or as soon as a slot frees (closed).
        let intended = match open.as_mut() {
            Some(offsets) => match offsets.next() {
                Some(offset) => Some(start + offset),
                None => break,
            },
            None => None,
        };
        loop {
            let ready = match intended {
                Some(_) => false,
                None => in_flight < closed,
            };
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
                _ = tokio::time::sleep_until(intended.unwrap_or(end)), if intended.is_some() => break,
                _ = tokio::time::sleep_until(end), if intended.is_none() => break,
            }
        }
        if !completed {
            break;
        }
        let intended = intended.unwrap_or_else(Instant::now);
        if intended >= end {
            break;
        }
        if Instant::now() >= end + DROP_GRACE {
            // Behind schedule past the stage's end: what is left will never be sent.
            dropped = 1 + open.as_mut().map_or(0, |rest| rest.count() as u64);
            break;
        }
        let offset = intended - start;
        let record = generator.next_record();
        let key = key_of(&record, &key_field).unwrap_or_default();
        sink.sent(offset, &key, &record);
        let headers = sink.headers(&key);
        let body = Value::Object(record).to_string();
        let permit = tokio::select! {
            _ = cancel.cancelled() => { completed = false; break; }
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let mut request = write
            .client
            .post(&write.url)
            .header("content-type", "application/json")
            .timeout(workload.timeout)
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let tx = tx.clone();
        in_flight += 1;
        tasks.spawn(async move {
            let outcome = match request.send().await {
                Ok(r) if r.status().is_success() => Outcome::Acked,
                Ok(r) if r.status().is_client_error() => Outcome::Rejected,
                _ => Outcome::Failed,
            };
            let latency = Instant::now().saturating_duration_since(intended);
            let _ = tx.send(Sample { offset, latency, outcome, key });
            drop(permit);
        });
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
    Drive { completed, dropped }
}
