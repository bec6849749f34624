//! A load worker (`stagegate worker --controller URL --token T`): joins the controller,
//! drives its share of each stage from the start time given, and streams what happened
//! back.
//!
//! At join the worker measures its clock against the controller's (the shortest of
//! several round trips) and converts each stage's start to its own clock with that
//! offset. Its driver is the single-process driver with a [`Share`]; its accounts
//! ([`Outbox`]) keep nothing but what is on its way to the controller: each record's
//! [`Digest`], each request's outcome, and the judged latency of the requests that
//! ended since the last post, as one HdrHistogram interval. A flusher posts that every
//! [`FLUSH`], and learns from the answer where the stage ends now and whether to stop.
//!
//! What goes toward the controller is bounded ([`MAX_PENDING`]): a controller that
//! cannot take it all stops this worker's stage, which its last post says (the
//! controller then holds the stage INCONCLUSIVE). Every wait has a deadline and yields
//! to Ctrl-C/SIGTERM, after which the worker says it finished early and exits 130.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{Assignment, Batch, Ended, Finished, Join, Next, Reply, Sent, StageAssignment, VERSION};
use crate::data::Schema;
use crate::exit;
use crate::fault::records::RecordFaults;
use crate::flags::FlagState;
use crate::measure::Outcome;
use crate::quality::digest;
use crate::runner::Shutdown;
use crate::sut::http::WriteTemplate;
use crate::workload::Workload;
use crate::workload::driver::{self, HttpWrite, InputFaults, Sample, Share, Sink, StageEnd};

/// How often a worker posts what it did.
pub const FLUSH: Duration = Duration::from_millis(200);
/// Records and outcomes waiting to be posted, at most.
pub const MAX_PENDING: usize = 2_000_000;
/// Records and outcomes in one post, at most (a backlog goes in several, in order).
pub const MAX_BATCH_ITEMS: usize = 40_000;
/// A stage started later than this (the worker heard of it too late) is not driven:
/// its share would be off schedule. The controller holds the stage INCONCLUSIVE.
pub const LATE: Duration = Duration::from_millis(250);
/// The furthest ahead a stage may be announced.
pub const MAX_AHEAD: Duration = Duration::from_secs(60);
/// How long the worker keeps trying a controller that does not answer.
pub const CONTROLLER_SILENCE: Duration = Duration::from_secs(30);

/// What `stagegate worker` was given.
pub struct Args {
    pub controller: String,
    pub token: String,
    pub index: u32,
    /// How long to keep trying to join.
    pub join_timeout: Duration,
}

/// Why a worker stopped before the run's end.
#[derive(Debug)]
pub struct Stopped {
    pub code: i32,
    pub message: String,
}

fn stopped(code: i32, message: impl Into<String>) -> Stopped {
    Stopped { code, message: message.into() }
}

fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The controller's API, as a worker calls it.
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
    /// When the controller last answered: every wait for it ends [`CONTROLLER_SILENCE`]
    /// after that, however the waits add up.
    heard: std::sync::Mutex<Instant>,
    /// The last answer that could not be used, for the message when it is lost.
    last_refusal: std::sync::Mutex<Option<String>>,
}

/// How a call went wrong: the controller could not be reached (try again), or it
/// answered with an error.
enum CallError {
    Unreachable(String),
    Refused(u16, String),
}

impl Api {
    /// Why the controller counts as lost, in words.
    fn lost(&self) -> String {
        let last = self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match last {
            Some(why) => format!(
                "lost the controller: no answer it could use for {}s (the last: {why})",
                CONTROLLER_SILENCE.as_secs()
            ),
            None => format!("lost the controller: nothing from it for {}s", CONTROLLER_SILENCE.as_secs()),
        }
    }

    /// How long until the controller counts as lost.
    fn patience(&self) -> Duration {
        let heard = *self.heard.lock().unwrap_or_else(|e| e.into_inner());
        CONTROLLER_SILENCE.saturating_sub(heard.elapsed())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let mut req =
            self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token).timeout(timeout);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| CallError::Unreachable(chain(&e)))?;
        let status = resp.status();
        // Answers are small, but read with a bound all the same.
        let bytes = read_bounded(resp, 64 * 1024 * 1024).await.map_err(CallError::Unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned());
            *self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{} {}", status.as_u16(), message.chars().take(200).collect::<String>()));
            return Err(CallError::Refused(status.as_u16(), message));
        }
        let answer = serde_json::from_slice(&bytes).map_err(|e| {
            *self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("an unreadable answer: {e}"));
            CallError::Refused(status.as_u16(), format!("unreadable answer: {e}"))
        })?;
        // Only an answer that makes sense counts as hearing from the controller: one that
        // fails, or cannot be read, again and again ends in "lost the controller".
        *self.heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        *self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(answer)
    }
}

/// An error with its causes, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

async fn read_bounded(mut resp: reqwest::Response, most: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > most {
            return Err(format!("the answer is larger than {most} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Runs a worker until the controller says the run is over; the exit code.
pub async fn work(args: Args, stop: Shutdown) -> i32 {
    let index = args.index;
    // A second Ctrl-C/SIGTERM stops at once, whatever is waited for.
    let served = tokio::select! {
        s = serve(args, &stop) => s,
        _ = stop.force.cancelled() => Err(stopped(exit::INTERRUPTED, "stopped at once (signalled twice)")),
    };
    match served {
        Ok((reason, code)) => {
            eprintln!("stagegate worker {index}: {reason}");
            code
        }
        Err(s) => {
            eprintln!("stagegate worker: {}", s.message);
            s.code
        }
    }
}

async fn serve(args: Args, stop: &Shutdown) -> Result<(String, i32), Stopped> {
    let client = crate::http_client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| stopped(exit::RUN_BROKEN, format!("cannot build the HTTP client: {e}")))?;
    let api = Api {
        client,
        base: args.controller.trim_end_matches('/').to_string(),
        token: args.token.clone(),
        heard: std::sync::Mutex::new(Instant::now()),
        last_refusal: std::sync::Mutex::new(None),
    };
    let cancel = &stop.cancel;
    let deadline = Instant::now() + args.join_timeout;
    // The clock offset first: the shortest round trip of a few says it best.
    let mut waiting_said = false;
    let (offset_ms, rtt_ms) = loop {
        match clock_offset(&api).await {
            Ok(x) => break x,
            Err(CallError::Refused(401, m)) => return Err(stopped(exit::INVALID_INPUT, m)),
            Err(CallError::Refused(code, m)) => {
                return Err(stopped(exit::RUN_BROKEN, format!("the controller answered {code}: {m}")));
            }
            Err(CallError::Unreachable(why)) => {
                if !waiting_said {
                    waiting_said = true;
                    eprintln!(
                        "stagegate worker {}: waiting for the controller at {} (up to {}): {why}",
                        args.index,
                        api.base,
                        crate::scenario::units::format_duration(args.join_timeout)
                    );
                }
                if Instant::now() >= deadline {
                    return Err(stopped(
                        exit::RUN_BROKEN,
                        format!(
                            "the controller at {} could not be reached within {:?}: {why}",
                            api.base, args.join_timeout
                        ),
                    ));
                }
                wait(Duration::from_secs(1), cancel).await?;
            }
        }
    };
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let join = Join {
        index: args.index,
        host,
        protocol: VERSION,
        stagegate_version: env!("CARGO_PKG_VERSION").into(),
        clock_offset_ms: offset_ms,
        rtt_ms,
    };
    let body = serde_json::to_vec(&join).unwrap_or_default();
    let assignment: Assignment = loop {
        // No single call outlasts the join deadline by more than a second.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let call = api.call(reqwest::Method::POST, "/v1/join", Some(body.clone()), Duration::from_secs(30).min(left));
        let answer = tokio::select! {
            a = call => a,
            _ = cancel.cancelled() => return Err(stopped(exit::INTERRUPTED, "stopped before joining")),
        };
        match answer {
            Ok(a) => break a,
            Err(CallError::Refused(401 | 400 | 409, m)) => return Err(stopped(exit::INVALID_INPUT, m)),
            Err(CallError::Refused(410, m)) => return Err(stopped(exit::RUN_BROKEN, m)),
            Err(CallError::Refused(_, m) | CallError::Unreachable(m)) => {
                if Instant::now() >= deadline {
                    return Err(stopped(
                        exit::RUN_BROKEN,
                        format!("could not join within {:?}: {m}", args.join_timeout),
                    ));
                }
                wait(Duration::from_secs(1), cancel).await?;
            }
        }
    };
    eprintln!(
        "stagegate worker {} of {}: joined the controller of `{}` (run {}), clock offset {offset_ms:+.1} ms (round trip {rtt_ms:.1} ms)",
        assignment.worker, assignment.workers, assignment.scenario, assignment.run_id
    );
    let kit = Kit::new(&assignment)?;
    let mut from = 0u32;
    loop {
        if api.patience().is_zero() {
            return Err(stopped(exit::RUN_BROKEN, api.lost()));
        }
        let path = format!("/v1/next?worker={}&from={from}", assignment.worker);
        let call = api.call::<Next>(
            reqwest::Method::GET,
            &path,
            None,
            (super::controller::LONG_POLL + Duration::from_secs(5)).min(api.patience().max(Duration::from_secs(1))),
        );
        let answer = tokio::select! {
            a = call => a,
            _ = cancel.cancelled() => return Err(stopped(exit::INTERRUPTED, "stopped between stages")),
        };
        match answer {
            Ok(Next::Done { reason, exit }) => return Ok((reason, exit)),
            Ok(Next::Wait) => {}
            Ok(Next::Stage { stage, start_unix_ms, end_us }) => {
                let Some(plan) = assignment.stages.get(stage as usize) else {
                    return Err(stopped(
                        exit::RUN_BROKEN,
                        format!("the controller announced stage {stage}, which the plan does not have"),
                    ));
                };
                let local_start = start_unix_ms - offset_ms;
                run_stage(&api, &kit, &assignment, stage, plan, local_start, Duration::from_micros(end_us), cancel)
                    .await?;
                from = stage + 1;
            }
            Err(CallError::Refused(code, m)) if code == 401 || code == 400 => {
                return Err(stopped(exit::RUN_BROKEN, format!("the controller refused this worker: {m}")));
            }
            Err(CallError::Refused(_, m) | CallError::Unreachable(m)) => {
                if api.patience().is_zero() {
                    return Err(stopped(exit::RUN_BROKEN, format!("{} ({m})", api.lost())));
                }
                wait(Duration::from_secs(1), cancel).await?;
            }
        }
    }
}

async fn wait(d: Duration, cancel: &CancellationToken) -> Result<(), Stopped> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = cancel.cancelled() => Err(stopped(exit::INTERRUPTED, "stopped")),
    }
}

/// The controller's clock minus this one's, and the round trip it was measured over.
async fn clock_offset(api: &Api) -> Result<(f64, f64), CallError> {
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..8 {
        let before = unix_ms();
        let t0 = Instant::now();
        let v: Value = api.call(reqwest::Method::GET, "/v1/time", None, Duration::from_secs(5)).await?;
        let rtt = t0.elapsed().as_secs_f64() * 1000.0;
        let Some(theirs) = v["unix_ms"].as_f64() else {
            return Err(CallError::Refused(200, "the controller's time is not a number".into()));
        };
        let offset = theirs - (before + rtt / 2.0);
        if best.is_none_or(|(_, r)| rtt < r) {
            best = Some((offset, rtt));
        }
    }
    Ok(best.unwrap_or_default())
}

/// What the assignment compiles to, once.
struct Kit {
    schema: Arc<Schema>,
    write: Arc<WriteTemplate>,
    client: reqwest::Client,
}

impl Kit {
    fn new(a: &Assignment) -> Result<Kit, Stopped> {
        let schema = Schema::parse(std::path::Path::new(&a.schema_file), &a.schema_text).map_err(|d| {
            let first = d.0.first().map(|x| x.message.clone()).unwrap_or_default();
            stopped(exit::RUN_BROKEN, format!("the assignment's data schema does not load: {first}"))
        })?;
        let write = WriteTemplate::compile(&a.write, &a.write_headers, a.default_body.as_deref())
            .map_err(|e| stopped(exit::RUN_BROKEN, format!("the assignment's write request does not compile: {e}")))?;
        let client = crate::http_client::builder()
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| stopped(exit::RUN_BROKEN, format!("cannot build the HTTP client: {e}")))?;
        Ok(Kit { schema: Arc::new(schema), write: Arc::new(write), client })
    }
}

/// A record sent or a request ended, in the order they happened: a request's end is
/// never posted before its record.
enum Item {
    Sent(Sent),
    Ended(Ended),
}

/// What is on its way to the controller.
struct Pending {
    items: Vec<Item>,
    interval: hdrhistogram::Histogram<u64>,
    overflowed: bool,
}

/// The worker's accounts: everything goes to the outbox.
struct Outbox {
    pending: Arc<Mutex<Pending>>,
    flags: BTreeMap<String, FlagState>,
    flag_header: Option<String>,
    pii: Vec<String>,
    warmup: Duration,
    stop: CancellationToken,
}

impl Outbox {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the stage once the outbox is full: nothing is dropped unsaid.
    fn check_bound(&self, p: &mut Pending) {
        if p.items.len() >= MAX_PENDING && !p.overflowed {
            p.overflowed = true;
            self.stop.cancel();
        }
    }
}

impl Sink for Outbox {
    fn flags(&mut self, key: &str) -> Value {
        Value::Object(self.flags.iter().map(|(n, st)| (n.clone(), st.value_for(n, Some(key)).clone())).collect())
    }

    fn headers(&mut self, key: &str) -> Vec<(String, String)> {
        let Some(name) = self.flag_header.clone() else { return Vec::new() };
        let values = self.flags(key);
        crate::flags::provider::header_text(&values).map(|v| vec![(name, v)]).unwrap_or_default()
    }

    fn sent(&mut self, offset: Duration, slot: u64, key: &str, record: &Map<String, Value>, invalid: bool) {
        let d = digest(record, &self.pii);
        let mut p = self.pending();
        p.items.push(Item::Sent(Sent {
            offset_us: offset.as_micros() as u64,
            slot,
            key: key.to_string(),
            digest: d,
            invalid,
        }));
        let p = &mut *p;
        self.check_bound(p);
    }

    fn sample(&mut self, s: Sample) {
        let outcome = match s.outcome {
            Outcome::Acked => 'a',
            Outcome::Rejected => 'r',
            Outcome::Failed => 'f',
        };
        let warmup = self.warmup;
        let mut p = self.pending();
        if s.own_failure.is_none() && s.offset >= warmup {
            p.interval.saturating_record((s.latency.as_micros() as u64).max(1));
        }
        p.items.push(Item::Ended(Ended {
            offset_us: s.offset.as_micros() as u64,
            latency_us: s.latency.as_micros() as u64,
            outcome,
            key: s.key,
            send_lag_us: s.send_lag.as_micros() as u64,
            own_failure: s.own_failure,
        }));
        let p = &mut *p;
        self.check_bound(p);
    }

    fn tick(&mut self, _elapsed: Duration) {}
}

/// Drives one stage's share and streams it to the controller.
#[allow(clippy::too_many_arguments)]
async fn run_stage(
    api: &Api,
    kit: &Kit,
    a: &Assignment,
    index: u32,
    plan: &StageAssignment,
    local_start_ms: f64,
    end: Duration,
    cancel: &CancellationToken,
) -> Result<(), Stopped> {
    let pending = Arc::new(Mutex::new(Pending {
        items: Vec::new(),
        interval: crate::measure::new_histogram(),
        overflowed: false,
    }));
    let stop = cancel.child_token();
    let (end_tx, end_rx) = tokio::sync::watch::channel(end);
    let mut stage_end = StageEnd::steered(end_rx, Duration::from_micros(plan.most_us));
    let flusher =
        Flusher { api, worker: a.worker, session: a.session.clone(), stage: index, pending: pending.clone(), seq: 0 };
    let late_ms = unix_ms() - local_start_ms;
    if late_ms > LATE.as_secs_f64() * 1000.0 {
        eprintln!(
            "stagegate worker {}: heard of stage `{}` {late_ms:.0} ms after its start; not driving it",
            a.worker, plan.name
        );
        let finished = Finished { completed: false, late_us: (late_ms * 1000.0) as u64, ..Finished::default() };
        flusher.last(finished, Instant::now() + Duration::from_secs(10).min(api.patience())).await;
        return Ok(());
    }
    let wait_ms = (local_start_ms - unix_ms()).max(0.0);
    // Stages are announced a moment ahead; a start far off (or not a number) is a
    // controller or a clock gone wrong.
    let Some(ahead) = Duration::try_from_secs_f64(wait_ms / 1000.0).ok().filter(|d| *d <= MAX_AHEAD) else {
        return Err(stopped(
            exit::RUN_BROKEN,
            format!(
                "the controller announced stage `{}` to start {wait_ms:.0} ms from now, more than {}s ahead: its clock or this one is wrong",
                plan.name,
                MAX_AHEAD.as_secs()
            ),
        ));
    };
    wait(ahead, cancel).await.or_else(|s| if s.code == exit::INTERRUPTED { Err(s) } else { Ok(()) })?;
    let warmup = Duration::from_micros(a.warmup_us);
    let mut outbox = Outbox {
        pending: pending.clone(),
        flags: plan.flags.clone(),
        flag_header: a.flag_header.clone(),
        pii: kit.schema.fields.iter().filter(|f| f.pii).map(|f| f.name.clone()).collect(),
        warmup,
        stop: stop.clone(),
    };
    let workload = Workload {
        schema: kit.schema.clone(),
        data_file: a.schema_file.clone().into(),
        arrival: a.arrival.clone(),
        duration: Duration::from_micros(plan.duration_us),
        warmup,
        timeout: Duration::from_micros(a.timeout_us),
    };
    let faults: Vec<_> = plan.record_faults.iter().map(|f| f.fault()).collect();
    let input = InputFaults {
        records: RecordFaults::from_parts(faults, Duration::from_micros(plan.duration_us)),
        timestamps: plan.timestamps.clone(),
        seed: plan.reorder_seed,
    };
    let write = HttpWrite { client: kit.client.clone(), base_url: a.target_url.clone(), template: kit.write.clone() };
    let share = Share { index: u64::from(a.worker), of: u64::from(a.workers) };
    let flushing = CancellationToken::new();
    let drive = async {
        let d =
            driver::drive(&write, &workload, plan.data_seed, &input, &stop, &mut stage_end, share, &mut outbox).await;
        flushing.cancel();
        d
    };
    let (drive, flusher) = tokio::join!(drive, flusher.run(&flushing, &end_tx, &stop));
    let overflowed = pending.lock().unwrap_or_else(|e| e.into_inner()).overflowed;
    let finished = Finished {
        completed: drive.completed,
        dropped: drive.dropped,
        held_back: drive.held_back,
        capped: drive.capped,
        length_us: drive.length.as_micros() as u64,
        overflowed,
        late_us: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(10).min(api.patience());
    let told = flusher.last(finished, deadline).await;
    if cancel.is_cancelled() {
        let told = if told { "the controller was told" } else { "the controller could not be told" };
        return Err(stopped(exit::INTERRUPTED, format!("stopped during stage `{}`; {told}", plan.name)));
    }
    Ok(())
}

/// Posts the outbox every [`FLUSH`].
struct Flusher<'a> {
    api: &'a Api,
    worker: u32,
    session: String,
    stage: u32,
    pending: Arc<Mutex<Pending>>,
    seq: u64,
}

impl Flusher<'_> {
    /// The outbox's oldest items as a batch (at most [`MAX_BATCH_ITEMS`]), and whether
    /// more wait. `finished` goes with the batch that empties it.
    fn take(&mut self, finished: Option<Finished>) -> (Batch, bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let interval = (!p.interval.is_empty()).then(|| {
            let mut bytes = Vec::new();
            let _ = V2DeflateSerializer::new().serialize(&p.interval, &mut bytes);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        });
        p.interval.reset();
        let n = p.items.len().min(MAX_BATCH_ITEMS);
        let (mut sent, mut ended) = (Vec::new(), Vec::new());
        for item in p.items.drain(..n) {
            match item {
                Item::Sent(x) => sent.push(x),
                Item::Ended(x) => ended.push(x),
            }
        }
        let more = !p.items.is_empty();
        drop(p);
        let batch = Batch {
            worker: self.worker,
            session: self.session.clone(),
            stage: self.stage,
            seq: self.seq,
            sent,
            ended,
            interval,
            finished: if more { None } else { finished },
        };
        self.seq += 1;
        (batch, more)
    }

    /// Posts `batch` until the controller takes it or `deadline`; its reply, or `None`
    /// when the stage is over for the controller (or it cannot be reached in time).
    async fn post(&self, batch: &Batch, deadline: Instant) -> Option<Reply> {
        let body = serde_json::to_vec(batch).ok()?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self
                .api
                .call::<Reply>(
                    reqwest::Method::POST,
                    "/v1/batch",
                    Some(body.clone()),
                    left.min(Duration::from_secs(15)),
                )
                .await
            {
                Ok(r) => return Some(r),
                Err(CallError::Refused(410 | 400 | 401, _)) => return None,
                Err(_) => tokio::time::sleep(Duration::from_millis(200).min(left)).await,
            }
        }
    }

    /// Posts every [`FLUSH`] until `done`; follows the controller's replies.
    async fn run(
        mut self,
        done: &CancellationToken,
        end: &tokio::sync::watch::Sender<Duration>,
        stop: &CancellationToken,
    ) -> Self {
        let mut next = Instant::now() + FLUSH;
        loop {
            tokio::select! {
                _ = done.cancelled() => return self,
                _ = tokio::time::sleep_until(next) => {}
            }
            let (batch, more) = self.take(None);
            // A backlog goes out at once, a post after another.
            next = if more { Instant::now() } else { next + FLUSH };
            // A worker that cannot hand its records over stops sending: the controller
            // counts it lost after as long.
            let deadline = Instant::now() + super::controller::SILENCE.min(self.api.patience());
            let reply = tokio::select! {
                r = self.post(&batch, deadline) => r,
                _ = done.cancelled() => {
                    // The stage is over here: this batch still goes, then the last one.
                    self.post(&batch, Instant::now() + Duration::from_secs(10).min(self.api.patience())).await;
                    return self;
                }
            };
            match reply {
                Some(r) => {
                    let at = Duration::from_micros(r.end_us);
                    if *end.borrow() != at {
                        let _ = end.send(at);
                    }
                    if r.stop {
                        stop.cancel();
                    }
                }
                // The controller is done with this stage, or gone: stop sending.
                None => stop.cancel(),
            }
        }
    }

    /// The stage's last batches, the last with how the driving went.
    /// Whether the controller took them.
    async fn last(mut self, finished: Finished, deadline: Instant) -> bool {
        loop {
            let (batch, more) = self.take(Some(finished.clone()));
            if self.post(&batch, deadline).await.is_none() {
                return false;
            }
            if !more {
                return true;
            }
        }
    }
}
