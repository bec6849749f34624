//! The runner: provision, run each stage, judge, tear down, emitting [`Event`]s.
//!
//! [`run`] never returns an error: a run that breaks (a port that cannot be bound)
//! still produces a [`RunReport`] with `error` set, and an interrupted run produces
//! one marked `interrupted`. Teardown (faults lifted, proxies, target and flag endpoint
//! stopped) happens on every path before the final event.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::deps::process::ManagedProcess;
use crate::deps::{self, Running};
use crate::fault::gate::{Gate, Needs};
use crate::fault::records::RecordFaults;
use crate::fault::{self, Activation, Place};
use crate::flags::FlagState;
use crate::flags::ofrep::OfrepServer;
use crate::measure::{Outcome, Recorder, Slice};
use crate::quality::freshness::{self, Arrivals};
use crate::quality::{Judgement, Ledger, Tags};
use crate::report::{ActionReport, Event, FaultRecord, RunReport, StageReport};
use crate::scenario::{Plan, Stage};
use crate::seed;
use crate::sut::RequestTemplate;
use crate::sut::http::{RECORD_JSON, WriteTemplate, read_back};
use crate::sut::pipeline::Pipeline;
use crate::sut::sink::SinkServer;
use crate::sut::{BuiltinTarget, Target, store};
use crate::verdict::{self, Assessment, Outcome as Judged, Rule, Sides, Verdict};
use crate::workload::driver::{self, HttpWrite, InputFaults, Sample, Sink};

/// Everything a run started, so that teardown can stop it.
#[derive(Default)]
struct Infra {
    flags: Option<OfrepServer>,
    deps: Vec<Running>,
    pipeline: Option<Pipeline>,
    /// The fault proxies in front of the target, when a stage faults the target.
    target_proxy: Option<Gate>,
    /// An HTTP target's process, when stagegate starts it.
    target_process: Option<ManagedProcess>,
    /// How records are written, and read back (HTTP targets with `read`).
    write: Option<Arc<WriteTemplate>>,
    read: Option<WriteTemplate>,
    /// How to list the whole output (HTTP targets with `scan`).
    scan: Option<crate::sut::Scan>,
    /// The target's own base URL (behind any fault proxy).
    target_base: String,
    /// The run's report folder, for `run.json`.
    report_dir: Option<PathBuf>,
    /// The flagd flag file, with the `flagd-file` provider.
    flag_file: Option<PathBuf>,
    /// The endpoint the target pushes its output to (HTTP targets with `sink`).
    sink: Option<SinkServer>,
    /// When each key first showed in the output, this stage.
    arrivals: Arrivals,
    /// Output field names by sent field (`target.http.renamed`).
    renamed: BTreeMap<String, String>,
}

impl Infra {
    async fn teardown(self) {
        if let Some(p) = self.target_proxy {
            p.stop().await;
        }
        if let Some(p) = self.pipeline {
            p.stop().await;
        }
        if let Some(p) = &self.target_process {
            p.stop().await;
        }
        for d in self.deps {
            d.stop().await;
        }
        if let Some(s) = self.sink {
            s.stop().await;
        }
        if let Some(f) = self.flags {
            f.stop().await;
        }
    }
}

/// Runs `plan`, sending events to `events`; the report is also the last event.
pub async fn run(
    plan: &Plan,
    report_dir: Option<PathBuf>,
    cancel: CancellationToken,
    events: UnboundedSender<Event>,
) -> RunReport {
    let emit = |e: Event| {
        let _ = events.send(e);
    };
    emit(Event::Started {
        name: plan.name.clone(),
        file: plan.file.clone(),
        seed: plan.seed,
        stages: plan.stages.len(),
        warnings: plan.warnings.clone(),
    });
    let mut report = RunReport {
        stagegate_version: env!("CARGO_PKG_VERSION").to_string(),
        scenario: plan.name.clone(),
        file: plan.file.clone(),
        description: plan.description.clone(),
        seed: plan.seed,
        seed_source: plan.seed_source.clone(),
        overrides: plan.overrides.clone(),
        started_at: chrono::Utc::now().to_rfc3339(),
        finished_at: String::new(),
        interrupted: false,
        aborted: None,
        error: None,
        verdict: None,
        reasons: Vec::new(),
        warnings: plan.warnings.clone(),
        stages: Vec::new(),
        assessments: Vec::new(),
        faults: Vec::new(),
        report_dir: report_dir.clone(),
        on_verdict: None,
        target_exit: None,
    };
    let mut infra = Infra { report_dir: report_dir.clone(), ..Default::default() };
    let mut samples = HashMap::new();
    match provision(plan, &mut infra, report_dir.as_deref()).await {
        Err(e) => report.error = Some(e),
        Ok(target_url) => {
            emit(Event::Provisioned {
                target: target_url.clone(),
                dependencies: infra
                    .deps
                    .iter()
                    .map(|d| (d.name.clone(), d.real_address().to_string(), d.address().to_string()))
                    .collect(),
                // The OFREP endpoint serves whenever a target may read it; it is worth
                // naming only when there are flags to read.
                flags: match (&infra.flags, plan.flags.definitions.is_empty()) {
                    (Some(f), false) => f.url(),
                    _ => String::new(),
                },
            });
            samples = run_stages(plan, &infra, &target_url, &cancel, &events, &mut report).await;
        }
    }
    // Lift every fault before anything else stops, then stop everything.
    for d in &infra.deps {
        d.gate.set_active(Vec::new());
    }
    if let Some(p) = &infra.target_proxy {
        p.set_active(Vec::new());
    }
    infra.teardown().await;
    finish_run_file(report_dir.as_deref());
    report.interrupted = report.interrupted || cancel.is_cancelled();
    compare_stages(plan, &samples, &mut report);
    conclude(&mut report);
    if let Some(v) = report.verdict {
        report.on_verdict = on_verdict(plan, v, report_dir.as_deref()).await;
    }
    report.finished_at = chrono::Utc::now().to_rfc3339();
    emit(Event::Finished(Box::new(report.clone())));
    report
}

/// Records what this run started (`run.json` in its report folder), so that
/// `stagegate cleanup` can stop it if stagegate itself is killed outright.
fn write_run_file(report_dir: Option<&std::path::Path>, infra: &Infra, finished: bool) {
    let Some(dir) = report_dir else { return };
    let mut processes: Vec<serde_json::Value> = infra
        .deps
        .iter()
        .filter_map(|d| {
            d.process.as_ref().and_then(|p| p.pid()).map(|pid| serde_json::json!({ "name": d.name, "pgid": pid }))
        })
        .collect();
    if let Some(pid) = infra.target_process.as_ref().and_then(|p| p.pid()) {
        processes.push(serde_json::json!({ "name": "target", "pgid": pid }));
    }
    let containers: Vec<serde_json::Value> = infra
        .deps
        .iter()
        .filter_map(|d| d.container.as_ref().map(|c| serde_json::json!({ "name": d.name, "id": c.id() })))
        .collect();
    let body = serde_json::json!({
        "stagegate_pid": std::process::id(),
        "finished": finished,
        "processes": processes,
        "containers": containers,
    });
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join("run.json"), body.to_string());
}

/// Marks the run file finished once everything it lists has been stopped.
fn finish_run_file(report_dir: Option<&std::path::Path>) {
    let Some(path) = report_dir.map(|d| d.join("run.json")) else { return };
    let Ok(mut run) =
        std::fs::read_to_string(&path).map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap_or_default())
    else {
        return;
    };
    run["finished"] = serde_json::Value::Bool(true);
    let _ = std::fs::write(&path, run.to_string());
}

/// Starts the flag endpoint, the dependencies and the target. Returns the target URL.
async fn provision(plan: &Plan, infra: &mut Infra, report_dir: Option<&std::path::Path>) -> Result<String, String> {
    let flags = OfrepServer::start().await.map_err(|e| format!("the OFREP flag endpoint could not listen: {e}"))?;
    if let Some(first) = plan.stages.first() {
        flags.set(first.flags.clone(), seed::derive(plan.seed, "flags", 0));
    }
    let flags_url = flags.url();
    infra.flags = Some(flags);
    if let crate::flags::Provider::FlagdFile(file) = &plan.flags.provider {
        let base = plan.file.parent().unwrap_or(std::path::Path::new("."));
        let path = match (file, report_dir) {
            (Some(f), _) => base.join(f),
            (None, Some(dir)) => dir.join("flags.flagd.json"),
            (None, None) => std::env::temp_dir().join(format!("stagegate-{}.flagd.json", std::process::id())),
        };
        if let Some(first) = plan.stages.first() {
            crate::flags::flagd::write(&path, &first.flags)
                .map_err(|e| format!("cannot write the flag file {}: {e}", path.display()))?;
        }
        infra.flag_file = Some(path);
    }
    for dep in &plan.dependencies {
        let faults = plan.stages.iter().flat_map(|s| &s.faults).filter(|f| f.at == Place::Dependency(dep.name.clone()));
        let needs = Needs::of(faults, false, true);
        infra.deps.push(deps::provision(dep, needs, report_dir).await.map_err(|e| e.to_string())?);
        write_run_file(report_dir, infra, false);
    }
    let mut url = match &plan.target {
        Target::Builtin(BuiltinTarget::OrdersPipeline) => {
            let store = infra.deps.first().ok_or("the builtin pipeline has no store")?;
            let pipeline = Pipeline::start(store.address(), flags_url)
                .await
                .map_err(|e| format!("the builtin pipeline could not listen: {e}"))?;
            let url = pipeline.url();
            infra.pipeline = Some(pipeline);
            let orders = RequestTemplate {
                method: "POST".into(),
                path: "/orders".into(),
                body: None,
                headers: Default::default(),
            };
            let write = WriteTemplate::compile(&orders, &Default::default(), Some(RECORD_JSON))?;
            infra.write = Some(Arc::new(write));
            url
        }
        Target::Http(h) => {
            let dependencies: serde_json::Map<String, Value> = infra
                .deps
                .iter()
                .map(|d| (d.name.clone(), serde_json::json!({ "address": d.address().to_string() })))
                .collect();
            let mut context = serde_json::Map::new();
            context.insert("dependencies".into(), Value::Object(dependencies));
            let file = infra.flag_file.as_ref().map(|p| p.display().to_string());
            context.insert("flags".into(), serde_json::json!({ "url": flags_url, "file": file }));
            infra.renamed = h.renamed.clone();
            if let Some(def) = &h.sink {
                let sink = SinkServer::start(def, &plan.workload.schema.key, h.renamed.clone(), infra.arrivals.clone())
                    .await
                    .map_err(|e| format!("the output sink could not listen on {}: {e}", def.listen))?;
                context.insert("sink".into(), serde_json::json!({ "url": sink.url() }));
                infra.sink = Some(sink);
            }
            let mut values = context.clone();
            if let Some(def) = &h.process {
                let log = report_dir.map(|d| d.join("target.log"));
                let flag_env = match (&plan.flags.provider, plan.stages.first()) {
                    (crate::flags::Provider::Env, Some(first)) => crate::flags::env_vars(&first.flags),
                    _ => Vec::new(),
                };
                let process = ManagedProcess::start("the target", def, log, context, flag_env)
                    .await
                    .map_err(|e| e.to_string())?;
                values.insert("port".into(), process.port().into());
                infra.target_process = Some(process);
                write_run_file(report_dir, infra, false);
            }
            let base =
                crate::deps::process::render(&h.base_url, &minijinja::Value::from(minijinja::value::Serde(values)))
                    .map_err(|e| format!("target.http.base_url: {e}"))?;
            let write = WriteTemplate::compile(&h.write, &h.headers, Some(RECORD_JSON))
                .map_err(|e| format!("target.http.write: {e}"))?;
            infra.write = Some(Arc::new(write));
            infra.scan = h.scan.clone();
            if let Some(r) = &h.read {
                infra.read =
                    Some(WriteTemplate::compile(r, &h.headers, None).map_err(|e| format!("target.http.read: {e}"))?);
            }
            base.trim_end_matches('/').to_string()
        }
    };
    infra.target_base = url.clone();
    let needs = Needs::of(plan.stages.iter().flat_map(|s| &s.faults).filter(|f| f.at == Place::Target), true, false);
    if needs != Needs::default() {
        let parsed = reqwest::Url::parse(&url).map_err(|e| format!("target base URL `{url}`: {e}"))?;
        let host = parsed.host_str().unwrap_or("127.0.0.1");
        let port = parsed.port_or_known_default().unwrap_or(80);
        let upstream = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("target base URL `{url}`: cannot resolve `{host}`"))?;
        let origin = parsed.origin().ascii_serialization();
        let gate = Gate::start("target", upstream, Some(&origin), needs, true)
            .await
            .map_err(|e| format!("the fault proxy in front of the target could not listen: {e}"))?;
        let scheme = if gate.speaks_http() { "http" } else { parsed.scheme() };
        url = format!("{scheme}://{}{}", gate.addr(), parsed.path().trim_end_matches('/'));
        infra.target_proxy = Some(gate);
    }
    Ok(url)
}

/// The flag variant a record sees in a stage with fractional exposure, as a label like
/// `new-enricher=true`; `None` when no flag of the stage is split.
fn variant_of(flags: &BTreeMap<String, FlagState>, key: &str, seed: u64) -> Option<String> {
    let parts: Vec<String> = flags
        .iter()
        .filter(|(_, s)| matches!(s, FlagState::Split { .. }))
        .map(|(name, s)| format!("{name}={}", s.value_for(name, Some(key), seed)))
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// Feeds the driver's samples into the stage's ledger, recorder and progress events,
/// and watches the `abort_on_fail` criteria.
struct StageSink<'a> {
    plan: &'a Plan,
    stage: &'a Stage,
    flag_seed: u64,
    ledger: Ledger,
    recorder: Recorder,
    variants: HashMap<String, Arc<str>>,
    keys: HashMap<String, Option<Arc<str>>>,
    sent: u64,
    acked: u64,
    rejected: u64,
    failed: u64,
    events: &'a UnboundedSender<Event>,
    stop: CancellationToken,
    aborted: Option<Assessment>,
    /// When each judged record was acknowledged, for freshness.
    acks: HashMap<String, Instant>,
    /// The same for warm-up records (waited for, not judged).
    warm_acks: HashMap<String, Instant>,
}

impl StageSink<'_> {
    /// The flag values a record sees in this stage, as a JSON object.
    fn flag_values(&self, key: &str) -> Value {
        Value::Object(
            self.stage
                .flags
                .iter()
                .map(|(n, st)| (n.clone(), st.value_for(n, Some(key), self.flag_seed).clone()))
                .collect(),
        )
    }
}

impl Sink for StageSink<'_> {
    fn flags(&mut self, key: &str) -> Value {
        self.flag_values(key)
    }

    fn headers(&mut self, key: &str) -> Vec<(String, String)> {
        let crate::flags::Provider::Header(name) = &self.plan.flags.provider else { return Vec::new() };
        let Value::Object(values) = self.flag_values(key) else { return Vec::new() };
        let text: Vec<String> =
            values.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), String::from))).collect();
        vec![(name.clone(), text.join(","))]
    }

    fn sent(&mut self, offset: Duration, key: &str, record: &Map<String, Value>, invalid: bool) {
        let variant = variant_of(&self.stage.flags, key, self.flag_seed)
            .map(|v| self.variants.entry(v.clone()).or_insert_with(|| Arc::from(v.as_str())).clone());
        let warmup = offset < self.plan.workload.warmup;
        let tags =
            Tags { phase: (!warmup).then(|| self.recorder.phase(offset)), variant: variant.clone(), invalid, warmup };
        self.ledger.sent(key, record, tags);
        if variant.is_some() {
            self.keys.insert(key.to_string(), variant);
        }
        self.sent += 1;
    }

    fn sample(&mut self, s: Sample) {
        match s.outcome {
            Outcome::Acked => {
                self.ledger.acked(&s.key);
                self.acked += 1;
                let acks = if s.offset < self.plan.workload.warmup { &mut self.warm_acks } else { &mut self.acks };
                acks.insert(s.key.clone(), Instant::now());
            }
            Outcome::Rejected => {
                self.ledger.rejected(&s.key);
                self.rejected += 1;
            }
            Outcome::Failed => self.failed += 1,
        }
        let variant = self.keys.remove(&s.key).flatten();
        self.recorder.record(s.offset, s.latency, s.outcome, variant.as_deref());
    }

    fn tick(&mut self, elapsed: Duration) {
        let _ = self.events.send(Event::Progress {
            stage: self.stage.name.clone(),
            elapsed_secs: elapsed.as_secs(),
            sent: self.sent,
            acked: self.acked,
            rejected: self.rejected,
            failed: self.failed,
        });
        if self.aborted.is_none() && self.plan.criteria.iter().any(|c| c.abort_on_fail) {
            let so_far = self.recorder.finish(elapsed, &Judgement::default());
            if let Some(a) = verdict::abort_reason(&self.plan.criteria, &self.stage.name, &so_far) {
                self.aborted = Some(a);
                self.stop.cancel();
            }
        }
    }
}

/// The judged samples of a finished stage, for comparisons.
type StageSamples = HashMap<String, Slice>;

async fn run_stages(
    plan: &Plan,
    infra: &Infra,
    target_url: &str,
    cancel: &CancellationToken,
    events: &UnboundedSender<Event>,
    report: &mut RunReport,
) -> StageSamples {
    let mut samples = StageSamples::new();
    let client = match reqwest::Client::builder().pool_max_idle_per_host(1024).build() {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(format!("cannot build the HTTP client: {e}"));
            return samples;
        }
    };
    let write = HttpWrite {
        client: client.clone(),
        base_url: target_url.to_string(),
        template: infra.write.clone().expect("provisioned"),
    };
    let flags = infra.flags.as_ref().expect("provisioned");
    let flag_seed = seed::derive(plan.seed, "flags", 0);
    let store_addr = match plan.target {
        Target::Builtin(_) => infra.deps.first().map(|d| d.real_address()),
        Target::Http(_) => None,
    };
    let mut scan_from = 0usize;
    let sink_def = match &plan.target {
        Target::Http(h) => h.sink.as_ref(),
        Target::Builtin(_) => None,
    };
    let wants_freshness = plan
        .criteria
        .iter()
        .any(|c| matches!(&c.rule, Rule::Check(check) if matches!(check.metric.base, verdict::Base::Freshness(_))));
    // How arrivals are timed: pushed to the sink, or by listing the output while a stage runs.
    let poll = match (&infra.sink, &infra.scan, store_addr) {
        (Some(_), _, _) => None,
        (None, Some(scan), _) => scan.every.or(wants_freshness.then_some(Duration::from_millis(500))),
        (None, None, Some(_)) => Some(Duration::from_millis(10)),
        (None, None, None) => None,
    };
    let observed_by = match (&infra.sink, poll) {
        (Some(_), _) => Some("sink".to_string()),
        (None, Some(every)) => Some(freshness::polled(if store_addr.is_some() { "store" } else { "scan" }, every)),
        (None, None) => None,
    };
    for (index, stage) in plan.stages.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let generation = flags.set(stage.flags.clone(), flag_seed);
        if let Some(path) = &infra.flag_file
            && let Err(e) = crate::flags::flagd::write(path, &stage.flags)
        {
            report.error = Some(format!("cannot write the flag file {}: {e}", path.display()));
            break;
        }
        // The `env` provider: a target whose flags change is started again with them.
        if plan.flags.provider == crate::flags::Provider::Env
            && index > 0
            && plan.stages[index - 1].flags != stage.flags
            && let Some(process) = &infra.target_process
        {
            let _ = events.send(Event::Note {
                message: format!("restarting the target with stage `{}`'s flags in its environment", stage.name),
            });
            if let Err(e) = process.restart_with(crate::flags::env_vars(&stage.flags)).await {
                report.target_exit.get_or_insert(format!("before stage `{}`: {e}", stage.name));
                report.error = Some(format!("the target could not be restarted for stage `{}`: {e}", stage.name));
                break;
            }
        }
        // Only an OFREP client polls; with the other providers the state is in place already.
        let polls = plan.flags.provider == crate::flags::Provider::Ofrep && !plan.flags.definitions.is_empty();
        if polls && !flags.picked_up(generation, Duration::from_secs(3)).await {
            warn!(stage = %stage.name, "the target did not fetch the new flag state within 3s");
        }
        let _ = events.send(Event::StageStarted { index, name: stage.name.clone(), flags: stage.flags.clone() });
        let stop = cancel.child_token();
        let windows = fault::windows(&stage.faults, plan.workload.duration);
        let mut sink = StageSink {
            plan,
            stage,
            flag_seed,
            ledger: Ledger::new(&plan.workload.schema.key)
                .with_pii(plan.workload.schema.fields.iter().filter(|f| f.pii).map(|f| f.name.clone())),
            recorder: Recorder::new(plan.workload.warmup, plan.workload.duration, windows),
            variants: HashMap::new(),
            keys: HashMap::new(),
            sent: 0,
            acked: 0,
            rejected: 0,
            failed: 0,
            events,
            stop: stop.clone(),
            aborted: None,
            acks: HashMap::new(),
            warm_acks: HashMap::new(),
        };
        infra.arrivals.clear();
        if let Some(sink) = &infra.sink {
            // Whatever arrived between stages belongs to no stage.
            sink.take();
        }
        let start = Instant::now();
        let stage_over = stop.child_token();
        let data_seed = seed::derive(plan.seed, "data", index as u64);
        let input = InputFaults {
            records: RecordFaults::new(&stage.faults, plan.workload.duration, |i| {
                seed::derive(plan.seed, "records", (index as u64) << 32 | i as u64)
            }),
            timestamps: plan
                .workload
                .schema
                .fields
                .iter()
                .filter(|f| matches!(f.kind, crate::data::FieldKind::Timestamp { .. }))
                .map(|f| f.name.clone())
                .collect(),
            seed: seed::derive(plan.seed, "reorder", index as u64),
        };
        let drive = async {
            let drive = driver::drive(&write, &plan.workload, data_seed, &input, &stop, &mut sink).await;
            stage_over.cancel();
            drive
        };
        let clock = StageClock { start, over: &stage_over, run: cancel };
        let faults = timeline(plan, index, stage, infra, clock, events);
        let watch =
            watch_arrivals(infra, &client, &plan.workload.schema.key, (store_addr, scan_from), poll, &stage_over);
        let (drive, records, ()) = tokio::join!(drive, faults, watch);
        let completed = drive.completed;
        if drive.dropped > 0 {
            warn!(stage = %stage.name, dropped = drive.dropped, "the driver fell behind the arrival rate; sends dropped");
        }
        report.faults.extend(records);
        let elapsed = start.elapsed();

        if let Some(def) = sink_def {
            // Give acknowledged records still on their way the time to arrive.
            let deadline = Instant::now() + def.settle;
            while !cancel.is_cancelled()
                && Instant::now() < deadline
                && !infra.arrivals.has_all(sink.acks.keys().chain(sink.warm_acks.keys()))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Observe the output straight from the store, past the proxy.
        let mut observed = Vec::new();
        if let Some(addr) = store_addr {
            match store::scan(addr, scan_from).await {
                Ok((lines, next)) => {
                    scan_from = next;
                    observed = lines
                        .iter()
                        .filter_map(|l| match serde_json::from_str::<Value>(l) {
                            Ok(Value::Object(m)) => Some(m),
                            _ => None,
                        })
                        .collect();
                }
                Err(e) => warn!(error = %e, "cannot read the store's output"),
            }
        }
        let mut output_seen = store_addr.is_some();
        if let Some(server) = &infra.sink {
            observed = server.take();
            output_seen = true;
        } else if let Some(scan) = &infra.scan {
            // List the whole output from the target itself (not through a fault), again
            // until every acknowledged record shows or `settle` runs out.
            let deadline = Instant::now() + scan.settle;
            loop {
                match crate::sut::http::scan_all(&client, &infra.target_base, scan).await {
                    Ok(found) => {
                        observed = found;
                        output_seen = true;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot list the target's output");
                        report.warnings.push(format!("stage `{}`: the output could not be listed: {e}", stage.name));
                        break;
                    }
                }
                for r in &mut observed {
                    crate::sut::sink::rename_back(r, &infra.renamed);
                }
                let keys: std::collections::HashSet<String> =
                    observed.iter().filter_map(|r| crate::quality::key_of(r, &plan.workload.schema.key)).collect();
                let all_there = sink.acks.keys().chain(sink.warm_acks.keys()).all(|k| keys.contains(k));
                if all_there || cancel.is_cancelled() || Instant::now() >= deadline {
                    break;
                }
                if poll.is_some() {
                    let now = Instant::now();
                    for k in keys {
                        infra.arrivals.seen(k, now);
                    }
                }
                tokio::time::sleep(poll.unwrap_or(Duration::from_millis(200))).await;
            }
        } else if let Some(read) = &infra.read {
            // Read every record back by key from the target itself (not through a fault).
            match read_back(&client, &infra.target_base, read, sink.ledger.keys(), 32).await {
                Ok(found) => {
                    observed = found;
                    output_seen = true;
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the target's output");
                    report.warnings.push(format!("stage `{}`: the output could not be read back: {e}", stage.name));
                }
            }
        }
        if !infra.renamed.is_empty() && infra.sink.is_none() && infra.scan.is_none() {
            for r in &mut observed {
                crate::sut::sink::rename_back(r, &infra.renamed);
            }
        }
        if poll.is_some() {
            // Records the last listing found: seen by the stage's end at the latest.
            let now = Instant::now();
            for r in &observed {
                if let Some(key) = crate::quality::key_of(r, &plan.workload.schema.key) {
                    infra.arrivals.seen(key, now);
                }
            }
        }
        if let Some(p) = &infra.target_process
            && let Some(status) = p.exited()
        {
            report
                .target_exit
                .get_or_insert(format!("the target process exited ({status}) during stage `{}`", stage.name));
        }
        let mut judgement = sink.ledger.judge(observed.iter());
        judgement.observed = output_seen;
        let ran = if completed { plan.workload.duration } else { elapsed };
        let mut metrics = sink.recorder.finish(ran, &judgement);
        if let Some(by) = &observed_by {
            metrics.freshness = Some(freshness::summarize(&sink.acks, &infra.arrivals.snapshot(), by));
        }
        let aborted = sink.aborted.take();
        let mut assessments: Vec<Assessment> = Vec::new();
        if completed || aborted.is_some() {
            assessments = verdict::assess(&plan.criteria, &stage.name, &metrics);
        }
        if let Some(a) = &aborted {
            // The failing check, judged at the moment the run stopped.
            assessments.retain(|x| x.criterion != a.criterion);
            assessments.push(a.clone());
        }
        let after_stage_abort = plan
            .criteria
            .iter()
            .filter(|c| c.abort_on_fail && c.level == verdict::Level::Enforce)
            .find_map(|c| assessments.iter().find(|a| a.criterion == c.text && a.outcome == Judged::Fail).cloned());
        samples.insert(stage.name.clone(), sink.recorder.judged.clone());
        let stage_report = StageReport {
            name: stage.name.clone(),
            flags: stage.flags.clone(),
            completed,
            dropped: drive.dropped,
            metrics,
        };
        let _ = events
            .send(Event::StageFinished { report: Box::new(stage_report.clone()), assessments: assessments.clone() });
        report.stages.push(stage_report);
        report.assessments.extend(assessments);
        if let Some(a) = aborted.or(after_stage_abort) {
            let reason = format!(
                "`{}` failed in stage `{}` (measured {}, limit {}); abort_on_fail stopped the run",
                a.criterion, a.stage, a.measured_text, a.limit_text
            );
            let _ = events.send(Event::Aborted { stage: stage.name.clone(), reason: reason.clone() });
            report.aborted = Some(reason);
            break;
        }
        if !completed {
            report.interrupted = true;
            break;
        }
    }
    samples
}

/// Lists the output every `poll` while a stage runs (until `over`), noting when each
/// key first shows: from the builtin store (reading on from `store.1`), or by the
/// target's `scan`.
async fn watch_arrivals(
    infra: &Infra,
    client: &reqwest::Client,
    key_field: &str,
    store: (Option<std::net::SocketAddr>, usize),
    poll: Option<Duration>,
    over: &CancellationToken,
) {
    let Some(every) = poll else { return };
    let (store, mut from) = store;
    loop {
        let found: Vec<Map<String, Value>> = match (store, &infra.scan) {
            (Some(addr), _) => match store::scan(addr, from).await {
                Ok((lines, next)) => {
                    from = next;
                    lines
                        .iter()
                        .filter_map(|l| match serde_json::from_str::<Value>(l) {
                            Ok(Value::Object(m)) => Some(m),
                            _ => None,
                        })
                        .collect()
                }
                Err(_) => Vec::new(),
            },
            (None, Some(scan)) => {
                crate::sut::http::scan_all(client, &infra.target_base, scan).await.unwrap_or_default()
            }
            (None, None) => return,
        };
        let now = Instant::now();
        for mut r in found {
            crate::sut::sink::rename_back(&mut r, &infra.renamed);
            if let Some(key) = crate::quality::key_of(&r, key_field) {
                infra.arrivals.seen(key, now);
            }
        }
        tokio::select! {
            _ = over.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Judges every comparison whose two stages both ran to the end.
fn compare_stages(plan: &Plan, samples: &StageSamples, report: &mut RunReport) {
    for c in &plan.criteria {
        let Rule::Compare(cmp) = &c.rule else { continue };
        let done = |name: &str| report.stages.iter().any(|s| s.name == name && s.completed);
        let (Some(cand), Some(base)) = (samples.get(&cmp.stage), samples.get(&cmp.baseline)) else {
            if report.error.is_none() && !report.interrupted && report.aborted.is_none() {
                warn!(criterion = %c.text, "a compared stage did not run");
            }
            continue;
        };
        if !(done(&cmp.stage) && done(&cmp.baseline)) {
            continue;
        }
        let sides = Sides {
            candidate: &cand.histogram,
            baseline: &base.histogram,
            candidate_errors: cand.errors,
            baseline_errors: base.errors,
        };
        report.assessments.push(verdict::assess_compare(c, cmp, &sides));
    }
}

/// When a stage started, and the tokens that end it (the stage) or the whole run.
struct StageClock<'a> {
    start: Instant,
    over: &'a CancellationToken,
    run: &'a CancellationToken,
}

/// Runs one stage's fault timeline until the stage is over; lifts every fault at the end.
async fn timeline(
    plan: &Plan,
    stage_index: usize,
    stage: &Stage,
    infra: &Infra,
    clock: StageClock<'_>,
    events: &UnboundedSender<Event>,
) -> Vec<FaultRecord> {
    let StageClock { start, over, run } = clock;
    let mut active: Vec<Option<Activation>> = vec![None; stage.faults.len()];
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut open: HashMap<usize, usize> = HashMap::new();
    let proxies: HashMap<&str, &Running> = infra.deps.iter().map(|d| (d.name.as_str(), d)).collect();
    let apply = |active: &[Option<Activation>]| {
        if let Some(target) = &infra.target_proxy {
            target.set_active(active.iter().flatten().filter(|a| a.fault.at == Place::Target).cloned().collect());
        }
        for (name, dep) in &proxies {
            let set: Vec<Activation> = active
                .iter()
                .flatten()
                .filter(|a| matches!(&a.fault.at, Place::Dependency(d) if d == name))
                .cloned()
                .collect();
            dep.gate.set_active(set);
        }
    };
    // Process faults act at their transitions: kill (and a later restart), pause/resume.
    // What they act on, by the name faults use: a dependency's, or `target`.
    let process_named = |name: &str| match name {
        "target" => infra.target_process.as_ref().map(Started::Target),
        dep => proxies.get(dep).filter(|r| r.is_started()).map(|r| Started::Dependency(r)),
    };
    let process_of = |f: &fault::Fault| match &f.at {
        Place::Dependency(d) => process_named(d),
        Place::Target => process_named("target"),
        Place::Workload => None,
    };
    let mut restarts: Vec<(Instant, &str)> = Vec::new();
    for (n, t) in fault::timeline(&stage.faults, plan.workload.duration).into_iter().enumerate() {
        // Restarts due before this transition happen first.
        loop {
            restarts.sort_by_key(|(at, _)| *at);
            let Some(&(due, dep)) = restarts.first() else { break };
            if due > start + t.offset {
                break;
            }
            tokio::select! {
                _ = over.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            restarts.remove(0);
            if let Some(p) = process_named(dep) {
                if let Err(e) = p.restart().await {
                    warn!(dependency = dep, error = %e, "a killed process or container did not come back");
                }
                // The restarted process has a new pid: keep `stagegate cleanup` able to find it.
                write_run_file(infra.report_dir.as_deref(), infra, false);
            }
        }
        tokio::select! {
            _ = over.cancelled() => break,
            _ = tokio::time::sleep_until(start + t.offset) => {}
        }
        let f = &stage.faults[t.index];
        if let Some(p) = process_of(f) {
            match (&f.kind, t.start) {
                (fault::FaultKind::Kill { signal, restart_after }, true) => {
                    p.kill(signal.parse().unwrap_or(nix::sys::signal::Signal::SIGKILL)).await;
                    if let Some(after) = restart_after {
                        let name = match &f.at {
                            Place::Dependency(d) => d.as_str(),
                            _ => "target",
                        };
                        restarts.push((Instant::now() + *after, name));
                    }
                }
                (fault::FaultKind::Pause, true) => p.pause().await,
                (fault::FaultKind::Pause, false) => p.resume().await,
                _ => {}
            }
        }
        let at_secs = start.elapsed().as_secs_f64();
        if t.start {
            let stream = (stage_index as u64) << 32 | n as u64;
            active[t.index] =
                Some(Activation { index: t.index, fault: f.clone(), seed: seed::derive(plan.seed, "fault", stream) });
            open.insert(t.index, records.len());
            records.push(FaultRecord {
                stage: stage.name.clone(),
                index: t.index,
                kind: f.kind.name().to_string(),
                at: f.at.to_string(),
                started_secs: at_secs,
                ended_secs: None,
                removed: false,
            });
            apply(&active);
            let _ = events.send(Event::Fault(records[records.len() - 1].clone()));
        } else {
            active[t.index] = None;
            apply(&active);
            if let Some(i) = open.remove(&t.index) {
                records[i].ended_secs = Some(at_secs);
                records[i].removed = true;
                let _ = events.send(Event::Fault(records[i].clone()));
            }
        }
    }
    // The stage is over (or the run was cancelled): lift whatever is still active, and
    // bring back what was killed or paused, so the next stage starts whole.
    active.iter_mut().for_each(|a| *a = None);
    apply(&active);
    for dep in infra.deps.iter() {
        dep.resume().await;
    }
    if let Some(p) = &infra.target_process {
        p.resume();
    }
    // A pending restart still happens at a stage's end (the next stage needs the
    // dependency), but not when the run itself is stopping.
    if !run.is_cancelled() {
        for (_, dep) in restarts.drain(..) {
            if let Some(p) = process_named(dep) {
                let _ = p.restart().await;
                write_run_file(infra.report_dir.as_deref(), infra, false);
            }
        }
    }
    let at_secs = start.elapsed().as_secs_f64();
    for (_, i) in open.drain() {
        records[i].ended_secs = Some(at_secs);
        records[i].removed = proxies.values().all(|d| !d.gate.is_faulted() && !d.is_paused())
            && infra.target_proxy.as_ref().is_none_or(|p| !p.is_faulted())
            && infra.target_process.as_ref().is_none_or(|p| !p.is_paused());
        let _ = events.send(Event::Fault(records[i].clone()));
    }
    records
}

/// What a process fault acts on: a dependency stagegate started (a process or a
/// container), or the target's process.
enum Started<'a> {
    Dependency(&'a Running),
    Target(&'a ManagedProcess),
}

impl Started<'_> {
    async fn kill(&self, signal: nix::sys::signal::Signal) {
        match self {
            Started::Dependency(d) => d.kill(signal).await,
            Started::Target(p) => p.kill(signal),
        }
    }

    async fn restart(&self) -> Result<(), String> {
        match self {
            Started::Dependency(d) => d.restart().await,
            Started::Target(p) => p.restart().await.map_err(|e| e.to_string()),
        }
    }

    async fn pause(&self) {
        match self {
            Started::Dependency(d) => d.pause().await,
            Started::Target(p) => p.pause(),
        }
    }

    async fn resume(&self) {
        match self {
            Started::Dependency(d) => d.resume().await,
            Started::Target(p) => p.resume(),
        }
    }
}

/// Sets the verdict and its reasons from the assessments.
fn conclude(report: &mut RunReport) {
    if let Some(e) = &report.error {
        report.reasons.push(format!("the run broke: {e}"));
        return;
    }
    if report.interrupted {
        let stage =
            report.stages.last().map_or("before the first stage".to_string(), |s| format!("during stage `{}`", s.name));
        report.reasons.push(format!("interrupted {stage}; no verdict"));
        return;
    }
    let mut v = verdict::fold(&report.assessments);
    if let Some(exit) = &report.target_exit {
        report.reasons.push(exit.clone());
    }
    if let Some(reason) = &report.aborted {
        v = Verdict::Rollback;
        report.reasons.push(format!("aborted: {reason}"));
    }
    report.verdict = Some(v);
    let wanted = match v {
        Verdict::Rollback => Judged::Fail,
        Verdict::Inconclusive => Judged::Inconclusive,
        Verdict::Promote => return report.reasons.push("every criterion held in every stage".into()),
    };
    for a in report.assessments.iter().filter(|a| a.outcome == wanted && a.level == verdict::Level::Enforce) {
        let note = a.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
        report.reasons.push(format!(
            "stage `{}`: `{}` {}: measured {}, limit {}{note}",
            a.stage,
            a.criterion,
            if wanted == Judged::Fail { "failed" } else { "inconclusive" },
            a.measured_text,
            a.limit_text
        ));
    }
}

/// Runs the scenario's `on_verdict` command for `verdict`, if it has one.
async fn on_verdict(plan: &Plan, verdict: Verdict, report_dir: Option<&std::path::Path>) -> Option<ActionReport> {
    let command = match verdict {
        Verdict::Promote => plan.on_verdict.promote.clone(),
        Verdict::Rollback => plan.on_verdict.rollback.clone(),
        Verdict::Inconclusive => plan.on_verdict.inconclusive.clone(),
    }?;
    let dir = plan.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]).current_dir(dir).env("STAGEGATE_VERDICT", verdict.to_string()).kill_on_drop(true);
    if let Some(r) = report_dir {
        cmd.env("STAGEGATE_REPORT", r.join("report.json"));
    }
    let result = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await;
    let (exit_code, output) = match result {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.code(), text)
        }
        Ok(Err(e)) => (None, format!("could not start: {e}")),
        Err(_) => (None, "did not finish within 60s; stopped".to_string()),
    };
    let tail = output.char_indices().rev().nth(4095).map_or(output.as_str(), |(i, _)| &output[i..]).to_string();
    Some(ActionReport { command, exit_code, output: crate::scenario::mask(&tail, &plan.secrets) })
}
