//! The runner: provision, run each stage, judge, tear down, emitting [`Event`]s.
//!
//! [`run`] never returns an error: a run that breaks (a port that cannot be bound)
//! still produces a [`RunReport`] with `error` set, and an interrupted run produces
//! one marked `interrupted`. Teardown (faults lifted, proxies, target and flag endpoint
//! stopped) happens on every path before the final event.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::deps::{self, Running};
use crate::fault::{self, Activation, Place};
use crate::flags::ofrep::OfrepServer;
use crate::measure::{Outcome, Recorder};
use crate::quality::Ledger;
use crate::report::{Event, FaultRecord, RunReport, StageReport};
use crate::scenario::{Plan, Stage};
use crate::seed;
use crate::sut::pipeline::Pipeline;
use crate::sut::{BuiltinTarget, Target, store};
use crate::verdict::{self, Assessment, Outcome as Judged, Verdict};
use crate::workload::driver::{self, HttpWrite, Sample, Sink};

/// Everything a run started, so that teardown can stop it.
#[derive(Default)]
struct Infra {
    flags: Option<OfrepServer>,
    deps: Vec<Running>,
    pipeline: Option<Pipeline>,
}

impl Infra {
    async fn teardown(self) {
        if let Some(p) = self.pipeline {
            p.stop().await;
        }
        for d in self.deps {
            d.stop().await;
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
    let started_at = chrono::Utc::now();
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
        started_at: started_at.to_rfc3339(),
        finished_at: String::new(),
        interrupted: false,
        error: None,
        verdict: None,
        reasons: Vec::new(),
        warnings: plan.warnings.clone(),
        stages: Vec::new(),
        assessments: Vec::new(),
        faults: Vec::new(),
        report_dir,
    };
    let mut infra = Infra::default();
    match provision(plan, &mut infra).await {
        Err(e) => report.error = Some(e),
        Ok(target_url) => {
            emit(Event::Provisioned {
                target: target_url.clone(),
                dependencies: infra
                    .deps
                    .iter()
                    .map(|d| {
                        (
                            d.name.clone(),
                            d.real_address().to_string(),
                            d.address().to_string(),
                        )
                    })
                    .collect(),
                flags: infra.flags.as_ref().map(|f| f.url()).unwrap_or_default(),
            });
            run_stages(plan, &infra, &target_url, &cancel, &events, &mut report).await;
        }
    }
    // Lift every fault before anything else stops, then stop everything.
    for d in &infra.deps {
        d.proxy.set_active(Vec::new());
    }
    infra.teardown().await;
    report.interrupted = report.interrupted || cancel.is_cancelled();
    conclude(&mut report);
    report.finished_at = chrono::Utc::now().to_rfc3339();
    emit(Event::Finished(Box::new(report.clone())));
    report
}

/// Starts the flag endpoint, the dependencies and the target. Returns the target URL.
async fn provision(plan: &Plan, infra: &mut Infra) -> Result<String, String> {
    let flags = OfrepServer::start()
        .await
        .map_err(|e| format!("the OFREP flag endpoint could not listen: {e}"))?;
    if let Some(first) = plan.stages.first() {
        flags.set(first.flags.clone());
    }
    let flags_url = flags.url();
    infra.flags = Some(flags);
    for dep in &plan.dependencies {
        infra
            .deps
            .push(deps::provision(dep).await.map_err(|e| e.to_string())?);
    }
    match plan.target {
        Target::Builtin(BuiltinTarget::OrdersPipeline) => {
            let store = infra
                .deps
                .first()
                .ok_or("the builtin pipeline has no store")?;
            let pipeline = Pipeline::start(store.address(), flags_url)
                .await
                .map_err(|e| format!("the builtin pipeline could not listen: {e}"))?;
            let url = pipeline.url();
            infra.pipeline = Some(pipeline);
            Ok(url)
        }
    }
}

/// Feeds the driver's samples into the stage's ledger, recorder and progress events.
struct StageSink<'a> {
    stage: &'a str,
    ledger: Ledger,
    recorder: Recorder,
    sent: u64,
    acked: u64,
    failed: u64,
    events: &'a UnboundedSender<Event>,
}

impl Sink for StageSink<'_> {
    fn sent(&mut self, key: &str, record: &Map<String, Value>) {
        self.ledger.sent(key, record);
        self.sent += 1;
    }

    fn sample(&mut self, s: Sample) {
        match s.outcome {
            Outcome::Acked => {
                self.ledger.acked(&s.key);
                self.acked += 1;
            }
            Outcome::Rejected => self.ledger.rejected(&s.key),
            Outcome::Failed => self.failed += 1,
        }
        self.recorder.record(s.offset, s.latency, s.outcome);
    }

    fn tick(&mut self, elapsed: Duration) {
        let _ = self.events.send(Event::Progress {
            stage: self.stage.to_string(),
            elapsed_secs: elapsed.as_secs(),
            sent: self.sent,
            acked: self.acked,
            failed: self.failed,
        });
    }
}

async fn run_stages(
    plan: &Plan,
    infra: &Infra,
    target_url: &str,
    cancel: &CancellationToken,
    events: &UnboundedSender<Event>,
    report: &mut RunReport,
) {
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(format!("cannot build the HTTP client: {e}"));
            return;
        }
    };
    let write = HttpWrite {
        client,
        url: format!("{target_url}/orders"),
    };
    let flags = infra.flags.as_ref().expect("provisioned");
    let store_addr = infra.deps.first().map(|d| d.real_address());
    let mut scan_from = 0usize;
    for (index, stage) in plan.stages.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let generation = flags.set(stage.flags.clone());
        if !flags.picked_up(generation, Duration::from_secs(3)).await {
            warn!(stage = %stage.name, "the target did not fetch the new flag state within 3s");
        }
        let _ = events.send(Event::StageStarted {
            index,
            name: stage.name.clone(),
            flags: stage.flags.clone(),
        });
        let mut sink = StageSink {
            stage: &stage.name,
            ledger: Ledger::new(&plan.workload.schema.key),
            recorder: Recorder::new(plan.workload.warmup),
            sent: 0,
            acked: 0,
            failed: 0,
            events,
        };
        let start = Instant::now();
        let stage_over = cancel.child_token();
        let data_seed = seed::derive(plan.seed, "data", index as u64);
        let drive = async {
            let completed =
                driver::drive(&write, &plan.workload, data_seed, cancel, &mut sink).await;
            stage_over.cancel();
            completed
        };
        let faults = timeline(plan, index, stage, &infra.deps, start, &stage_over, events);
        let (completed, records) = tokio::join!(drive, faults);
        report.faults.extend(records);
        let elapsed = start.elapsed();

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
        let counts = sink.ledger.judge(observed.iter());
        let judged_for = if completed {
            plan.workload.duration
        } else {
            elapsed
        }
        .saturating_sub(plan.workload.warmup);
        let metrics = sink.recorder.finish(judged_for, counts);
        let assessments: Vec<Assessment> = if completed {
            verdict::assess(&plan.criteria, &stage.name, &metrics)
        } else {
            Vec::new()
        };
        let stage_report = StageReport {
            name: stage.name.clone(),
            flags: stage.flags.clone(),
            completed,
            metrics,
        };
        let _ = events.send(Event::StageFinished {
            report: stage_report.clone(),
            assessments: assessments.clone(),
        });
        report.stages.push(stage_report);
        report.assessments.extend(assessments);
        if !completed {
            report.interrupted = true;
            break;
        }
    }
}

/// Runs one stage's fault timeline until the stage is over; lifts every fault at the end.
async fn timeline(
    plan: &Plan,
    stage_index: usize,
    stage: &Stage,
    deps: &[Running],
    start: Instant,
    over: &CancellationToken,
    events: &UnboundedSender<Event>,
) -> Vec<FaultRecord> {
    let mut active: Vec<Option<Activation>> = vec![None; stage.faults.len()];
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut open: HashMap<usize, usize> = HashMap::new();
    let proxies: HashMap<&str, &Running> = deps.iter().map(|d| (d.name.as_str(), d)).collect();
    let apply = |active: &[Option<Activation>]| {
        for (name, dep) in &proxies {
            let set: Vec<Activation> = active
                .iter()
                .flatten()
                .filter(|a| matches!(&a.fault.at, Place::Dependency(d) if d == name))
                .cloned()
                .collect();
            dep.proxy.set_active(set);
        }
    };
    for (n, t) in fault::timeline(&stage.faults, plan.workload.duration)
        .into_iter()
        .enumerate()
    {
        tokio::select! {
            _ = over.cancelled() => break,
            _ = tokio::time::sleep_until(start + t.offset) => {}
        }
        let f = &stage.faults[t.index];
        let at_secs = start.elapsed().as_secs_f64();
        if t.start {
            let stream = (stage_index as u64) << 32 | n as u64;
            active[t.index] = Some(Activation {
                index: t.index,
                fault: f.clone(),
                seed: seed::derive(plan.seed, "fault", stream),
            });
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
    // The stage is over (or the run was cancelled): lift whatever is still active.
    for a in active.iter_mut() {
        *a = None;
    }
    apply(&active);
    let at_secs = start.elapsed().as_secs_f64();
    for (_, i) in open.drain() {
        let lifted = proxies.values().all(|d| !d.proxy.is_faulted());
        records[i].ended_secs = Some(at_secs);
        records[i].removed = lifted;
        let _ = events.send(Event::Fault(records[i].clone()));
    }
    records
}

/// Sets the verdict and its reasons from the assessments.
fn conclude(report: &mut RunReport) {
    if let Some(e) = &report.error {
        report.reasons.push(format!("the run broke: {e}"));
        return;
    }
    if report.interrupted {
        let stage = report
            .stages
            .last()
            .map_or("before the first stage".to_string(), |s| {
                format!("during stage `{}`", s.name)
            });
        report
            .reasons
            .push(format!("interrupted {stage}; no verdict"));
        return;
    }
    let v = verdict::fold(&report.assessments);
    report.verdict = Some(v);
    let wanted = match v {
        Verdict::Rollback => Judged::Fail,
        Verdict::Inconclusive => Judged::Inconclusive,
        Verdict::Promote => {
            return report
                .reasons
                .push("every criterion held in every stage".into());
        }
    };
    for a in report
        .assessments
        .iter()
        .filter(|a| a.outcome == wanted && a.level == verdict::Level::Enforce)
    {
        let note = a
            .note
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        report.reasons.push(format!(
            "stage `{}`: `{}` {}: measured {}, limit {}{note}",
            a.stage,
            a.criterion,
            if wanted == Judged::Fail {
                "failed"
            } else {
                "inconclusive"
            },
            a.measured_text,
            a.limit_text
        ));
    }
}
