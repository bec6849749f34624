//! One stage: hand the flags over, play the fault timeline while the workload is driven
//! and the output watched, then observe the output, measure and judge.
//!
//! [`run`] joins three tasks for the stage's duration: the driver (sending records on
//! schedule), the fault timeline, and the observer's watch. The driver's callbacks
//! ([`Accounts`]) only note what happened; judging whether an `abort_on_fail` criterion
//! already failed runs on a task of its own, from a copy of the measurements taken once a
//! second, so it never delays a send.
//!
//! Not here: provisioning, teardown, the verdict over all stages (`super`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::provision::Provisioned;
use crate::data::FieldKind;
use crate::fault::records::RecordFaults;
use crate::fault::timeline::{self, Clock, Places, StageFaults};
use crate::fault::{self, FaultRecord, Place};
use crate::flags::FlagState;
use crate::flags::ofrep::{FlagExposure, VariantExposure};
use crate::flags::provider::{Delivery, Handover};
use crate::health::Trouble;
use crate::measure::lateness::{CpuClock, Lag, SendLag, StageHealth, TimerProbe};
use crate::measure::series::SeriesRecorder;
use crate::measure::{Outcome, Recorder, Slice};
use crate::quality::freshness;
use crate::quality::{Judgement, Ledger, SharedLedger, Tags};
use crate::report::{Event, StageReport};
use crate::scenario::{Plan, Stage};
use crate::seed;
use crate::verdict::{self, Assessment};
use crate::workload::driver::{self, HttpWrite, InputFaults, Sample, Sink};

/// What the stage needs from the run.
pub struct Context<'a> {
    pub plan: &'a Plan,
    pub provisioned: &'a Provisioned,
    /// Stops the stage (Ctrl-C, or stagegate's own failure).
    pub halt: &'a CancellationToken,
    pub trouble: &'a Trouble,
    pub events: &'a UnboundedSender<Event>,
    pub client: &'a reqwest::Client,
    /// The run's `/metrics`, when served.
    pub live: Option<&'a crate::report::prometheus::Live>,
    /// The operator's controls, when the run is steered (`--ui`).
    pub steering: Option<&'a crate::steer::Steering>,
    /// The load workers' controller, when the run sends through workers.
    pub workers: Option<&'a crate::distributed::controller::Controller>,
}

/// How a stage went.
pub struct StageOutcome {
    pub report: StageReport,
    pub assessments: Vec<Assessment>,
    /// The judged samples, for comparisons.
    pub samples: Slice,
    /// The judged requests by time window, for comparisons.
    pub windows: Vec<crate::measure::Window>,
    pub faults: Vec<FaultRecord>,
    /// The `abort_on_fail` criterion that failed, if one did.
    pub aborted: Option<Assessment>,
    /// Set when the target process exited on its own during the stage.
    pub target_exit: Option<String>,
}

/// Why a stage could not run at all (the harness's failure).
pub type StageError = String;

/// Runs stage `index` of the plan.
pub async fn run(cx: &Context<'_>, index: usize) -> Result<StageOutcome, StageError> {
    let plan = cx.plan;
    let stage = &plan.stages[index];
    let p = cx.provisioned;
    let previous = index.checked_sub(1).map(|i| &plan.stages[i].flags);
    match p.flags.hand_over(&stage.flags, previous, cx.halt).await.map_err(|e| e.to_string())? {
        Handover::Ready => {}
        Handover::Restart(env) => {
            if let Some(process) = &p.target.process {
                let _ = cx.events.send(Event::Note {
                    message: format!("restarting the target with stage `{}`'s flags in its environment", stage.name),
                });
                process
                    .restart_with(env, cx.halt)
                    .await
                    .map_err(|e| format!("the target could not be restarted for stage `{}`: {e}", stage.name))?;
            }
        }
    }
    // What was asked of the flags before the stage is not the stage's.
    let _ = p.flags.take_exposure();
    let _ = p.flags.take_contexts();
    let started_at = chrono::Utc::now().to_rfc3339();
    let _ = cx.events.send(Event::StageStarted { index, name: stage.name.clone(), flags: stage.flags.clone() });
    if let Some(live) = cx.live {
        live.stage_started(stage, index.checked_sub(1).map(|i| plan.stages[i].name.as_str()));
    }

    let schema = &plan.workload.schema;
    let renamed = match &plan.target {
        crate::sut::Target::Http(h) => h.renamed.clone(),
        crate::sut::Target::Builtin(..) => Default::default(),
    };
    let mut ledger = Ledger::new(&schema.key)
        .with_pii(schema.fields.iter().filter(|f| f.pii).map(|f| f.name.clone()))
        .with_renamed(renamed);
    // Through load workers, a record's digest arrives a moment after it was sent: the
    // output may show it first.
    if cx.workers.is_some() {
        ledger = ledger.with_early_sightings();
    }
    let ledger = ledger.shared();
    p.observer.begin(ledger.clone());

    let stop = cx.halt.child_token();
    // An operator may move the stage's end (hold, advance) and start faults in it.
    let steer = cx.steering.map(|s| s.stage_started(&stage.name, stage.duration, plan.workload.warmup));
    let (mut stage_end, mut live_faults) = match steer {
        Some(s) => (driver::StageEnd::steered(s.end, s.most), Some(s.faults)),
        None => (driver::StageEnd::fixed(stage.duration), None),
    };
    // A stage lasts `workload.duration`, or its exposure step's `hold`.
    let workload = crate::workload::Workload { duration: stage.duration, ..plan.workload.clone() };
    let windows = fault::windows(&stage.faults, stage.duration);
    let abort_criteria = plan.criteria.iter().any(|c| c.abort_on_fail);
    let (snapshots, snapshot_rx) = watch::channel::<Option<(Recorder, Duration)>>(None);
    let mut accounts = Accounts {
        plan,
        stage,
        ledger: ledger.clone(),
        recorder: Recorder::new(plan.workload.warmup, stage.duration, windows),
        series: SeriesRecorder::new(stage.duration, plan.workload.warmup),
        variants: HashMap::new(),
        keys: HashMap::new(),
        counts: Counts::default(),
        events: cx.events,
        provider: p.flags.as_ref(),
        snapshots: (abort_criteria || cx.steering.is_some()).then_some(snapshots),
        trouble: cx.trouble,
        send_lag: SendLag::new(plan.workload.warmup),
        failed_late: 0,
        sent_values: BTreeMap::new(),
        live: cx.live,
        live_handles: HashMap::new(),
        end: stage.duration,
        live_page: cx.steering.is_some(),
        ended_now: crate::measure::new_histogram(),
        failed_now: 0,
        start: None,
    };
    let aborted: Arc<Mutex<Option<Assessment>>> = Arc::default();
    let judge = tokio::spawn(watch_for_abort(
        plan.criteria.clone(),
        stage.name.clone(),
        snapshot_rx,
        stop.clone(),
        aborted.clone(),
        cx.steering.is_some().then(|| cx.events.clone()),
    ));

    // stagegate's own lateness over the stage: what the proxies held before it is not
    // the stage's.
    let places = places(p);
    for (_, gate) in &places.gates {
        gate.take_hold_overruns();
    }
    // Through load workers, the stage is announced ahead and starts when they all do.
    let (start, inbox) = match cx.workers {
        Some(ctl) => {
            let (start, inbox) = ctl.announce(index, stage_end.get()).await;
            (start, Some(inbox))
        }
        None => (Instant::now(), None),
    };
    accounts.start = Some(start);
    let cpu_before = CpuClock::now();
    let start_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    // Warm-up is measured, not judged: the health figures start where judging does.
    let judged_from = start + plan.workload.warmup;
    let probe = TimerProbe::start(&tokio::runtime::Handle::current(), judged_from);
    let builtin_probe = p.target.runtime.as_ref().map(|r| TimerProbe::start(r, judged_from));
    let over = stop.child_token();
    let write =
        HttpWrite { client: cx.client.clone(), base_url: p.target.url.clone(), template: p.target.write.clone() };
    let input = InputFaults {
        records: RecordFaults::new(&stage.faults, stage.duration, |i| {
            seed::derive(plan.seed, "records", (index as u64) << 32 | i as u64)
        }),
        timestamps: schema
            .fields
            .iter()
            .filter(|f| matches!(f.kind, FieldKind::Timestamp { .. }))
            .map(|f| f.name.clone())
            .collect(),
        seed: seed::derive(plan.seed, "reorder", index as u64),
    };
    let data_seed = seed::derive(plan.seed, "data", index as u64);
    let drive = async {
        let d = match (cx.workers, inbox) {
            (Some(ctl), Some(inbox)) => {
                let timeout = plan.workload.timeout;
                ctl.drive(&stage.name, start, inbox, &workload, &input, timeout, &stop, &mut stage_end, &mut accounts)
                    .await
            }
            _ => {
                let share = driver::Share::WHOLE;
                let d =
                    driver::drive(&write, &workload, data_seed, &input, &stop, &mut stage_end, share, &mut accounts);
                (d.await, None)
            }
        };
        over.cancel();
        d
    };
    let seed_of = |n: u64| seed::derive(plan.seed, "fault", n);
    let faults =
        StageFaults { name: &stage.name, index, faults: &stage.faults, duration: stage.duration, seed_of: &seed_of };
    let events = cx.events.clone();
    let live = cx.live;
    let mut emit = move |r: &FaultRecord| {
        let _ = events.send(Event::Fault(r.clone()));
        if let Some(live) = live {
            live.fault(&r.stage, &r.kind, &r.at, r.ended_secs.is_none());
        }
        // A way for the tests to make the runner itself fail while a fault is active, to
        // check that the guard still lifts it and stops everything (debug builds only).
        #[cfg(debug_assertions)]
        if r.ended_secs.is_none() && std::env::var_os("STAGEGATE_TEST_PANIC_WHEN_FAULTED").is_some() {
            panic!("a test asked the runner to fail while `{}` is active", r.kind);
        }
    };
    let clock = Clock { start, over: &over, run: cx.halt };
    let forget_warmup_overruns = async {
        tokio::select! {
            _ = over.cancelled() => {}
            _ = tokio::time::sleep_until(judged_from) => {
                for (_, gate) in &places.gates {
                    gate.take_hold_overruns();
                }
            }
        }
    };
    let ((drive, workers_incomplete), records, (), ()) = tokio::join!(
        drive,
        timeline::play(&faults, &places, clock, live_faults.as_mut(), &mut emit),
        p.observer.watch(&over),
        forget_warmup_overruns
    );
    judge.abort();
    if let Some(s) = cx.steering {
        s.stage_ended();
    }
    let elapsed = start.elapsed();
    let completed = drive.completed;
    let steered_abort = cx.steering.is_some_and(|s| s.aborted().is_some());
    let mut overruns = crate::measure::new_histogram();
    for (_, gate) in &places.gates {
        let _ = overruns.add(gate.take_hold_overruns());
    }
    let (send_lag, per_second) = std::mem::take(&mut accounts.send_lag).finish();
    let mut health = StageHealth {
        send_lag,
        timer_lag: Lag::of(&probe.finish()),
        builtin_timer_lag: builtin_probe.and_then(|p| Lag::of(&p.finish())),
        proxy_hold_overrun: Lag::of(&overruns),
        dropped: drive.dropped,
        held_back_by_target: drive.held_back,
        cpu: cpu_before.until(&CpuClock::now()),
        per_second,
        behind: None,
    };
    // Sends held back at the in-flight cap leave a stage unjudged only while the target
    // answers: when most of what ended failed, its failure is the evidence (a target that
    // hangs fills the cap itself).
    let judged = &accounts.recorder.judged;
    let target_failing = judged.requests >= 20 && judged.errors * 2 >= judged.requests;
    health.behind = health.behind(&plan.health, target_failing);
    if drive.capped {
        let _ = cx.events.send(Event::Note {
            message: format!(
                "stage `{}` stopped sending at {} requests, the most stagegate keeps for one stage",
                stage.name,
                crate::limits::MAX_REQUESTS_PER_STAGE
            ),
        });
    }

    let seen = p.observer.collect(cx.halt).await;
    p.observer.end();
    let target_exit = p
        .target
        .process
        .as_ref()
        .and_then(|t| t.exited())
        .map(|status| format!("the target process exited ({status}) during stage `{}`", stage.name));
    let (mut judgement, arrivals) = {
        let ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        (ledger.judge(), ledger.arrivals())
    };
    if seen.is_err() {
        judgement = judgement.unobserved();
    }
    let ran = if completed && !drive.capped { drive.length } else { elapsed };
    if ran < stage.duration {
        accounts.series.truncate(ran);
    }
    let mut metrics = accounts.recorder.finish(ran, &judgement);
    if let Err(why) = &seen {
        metrics.output_unseen = Some(format!("{} ({})", why, p.observer.kind()));
    }
    // The system's own metrics over the stage, from its Prometheus server.
    if let Some(source) = &plan.metrics {
        let recorder = &accounts.recorder;
        let phase = |t: Duration| recorder.phase(t);
        let window = crate::measure::prom::StageWindow { start_unix, ran, warmup: plan.workload.warmup, phase: &phase };
        metrics.prom = crate::measure::prom::collect(source, &window, cx.client, cx.halt).await;
    }
    if let (Some(by), true) = (p.observer.timed_by(), seen.is_ok()) {
        metrics.freshness = Some(freshness::summarize(&arrivals, &by));
    }
    // Personal data the system under test put in its flag evaluation contexts.
    let mut pii_in_flags = Vec::new();
    if let Some(contexts) = p.flags.take_contexts() {
        let ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        let (places, values) = contexts.pii(|hashes| ledger.pii_matches(hashes));
        pii_in_flags = places;
        metrics.flags_pii_exposed = Some(values);
    }
    let aborted = aborted.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut assessments = Vec::new();
    // A stage an operator aborted is judged on what it has, as one an `abort_on_fail`
    // criterion stopped: what already failed stands.
    if completed || aborted.is_some() || steered_abort {
        assessments = verdict::assess(&plan.criteria, &stage.name, &metrics);
        // An exposure step is judged on its exposed cohort too: a defect in 1% of the
        // records hides in the whole stage's figures. At 100% the stage is the cohort.
        if let Some(step) = stage.exposure.as_ref().filter(|s| s.share < 1.0) {
            assessments.extend(verdict::assess_cohort(&plan.criteria, &stage.name, &step.cohort(), &metrics));
        }
    }
    if !pii_in_flags.is_empty() {
        // Where the personal data was found, beside the count.
        let places: Vec<String> = pii_in_flags
            .iter()
            .map(|p| {
                let flag = p.flag.as_deref().map_or("bulk evaluations".to_string(), |f| format!("`{f}`"));
                format!("`{}` in context attribute `{}` of {flag}", p.field, p.attribute)
            })
            .collect();
        for a in
            assessments.iter_mut().filter(|a| a.metric == "flags.pii_exposed" && a.outcome == verdict::Outcome::Fail)
        {
            a.note = Some(places.join("; "));
        }
    }
    if let Some(a) = &aborted {
        // The failing check, judged at the moment the run stopped.
        assessments.retain(|x| x.criterion != a.criterion);
        assessments.push(a.clone());
    }
    let exposure = exposure_of(p.flags.as_ref(), stage, std::mem::take(&mut accounts.sent_values));
    let series = std::mem::replace(&mut accounts.series, SeriesRecorder::new(Duration::ZERO, Duration::ZERO))
        .finish(judgement.observed.then_some(judgement.by_interval.as_slice()), &records);
    let (unexposed, mut exposure_unproven) = if p.flags.delivery() == Delivery::Evaluated {
        never_ran(plan, stage, &exposure, accounts.counts.sent)
    } else {
        (None, None)
    };
    // The builtin target is stagegate's own: its code reads what it fetches.
    if matches!(plan.target, crate::sut::Target::Builtin(..)) {
        exposure_unproven = None;
    }
    if let Some(why) = &unexposed {
        verdict::hold_all(&mut assessments, why);
    }
    // A load worker's share missing: the stage's figures are not the whole load's.
    if let Some(why) = &workers_incomplete {
        verdict::hold_all(&mut assessments, why);
    }
    if let Some(behind) = &health.behind {
        // A failure is the overload's when the request itself left late; failures of
        // requests sent on time are the faults' or the target's, and counted as usual.
        let overload = if accounts.failed_late > 0 {
            Some(format!(
                "{} requests that left more than {} late timed out, so the counts may be the overload's",
                accounts.failed_late,
                crate::scenario::units::format_duration(plan.health.send_lag_p99)
            ))
        } else if health.builtin_timer_lag.is_some_and(|l| l.p99_ms > plan.health.timer_lag_p99.as_secs_f64() * 1000.0)
        {
            Some("the builtin target runs inside stagegate and was held up too (its store calls may have timed out and been retried), so the counts may be the overload's".to_string())
        } else {
            None
        };
        verdict::hold_back(&mut assessments, &plan.criteria, behind, overload.as_deref());
    }
    // A failure under a fault an operator started is the system's under that fault,
    // not under the plan: said beside each, and so in the verdict's reasons.
    let live: Vec<String> =
        records.iter().filter_map(|r| r.by.as_ref().map(|by| format!("{} at {} by `{by}`", r.kind, r.at))).collect();
    if !live.is_empty() {
        let said = format!("with faults started live: {}", live.join(", "));
        for a in assessments.iter_mut().filter(|a| a.outcome == verdict::Outcome::Fail) {
            a.note = Some(match a.note.take() {
                Some(n) => format!("{n}; {said}"),
                None => said.clone(),
            });
        }
    }
    let aborted = aborted.or_else(|| verdict::failed_abort(&plan.criteria, &assessments));
    let variant_differences = crate::flags::telemetry::differences(&stage.flags, &metrics);
    let outcome = StageOutcome {
        report: StageReport {
            name: stage.name.clone(),
            flags: stage.flags.clone(),
            completed,
            metrics,
            health,
            flag_exposure: exposure,
            pii_in_flags,
            variant_differences,
            unexposed,
            exposure_unproven,
            workers_incomplete,
            series,
            windows: accounts.recorder.windows(),
            started_at,
            histograms: accounts.recorder.encoded_histograms(),
            length_secs: ran.as_secs_f64(),
        },
        assessments,
        samples: accounts.recorder.judged.clone(),
        windows: accounts.recorder.windows(),
        faults: records,
        aborted,
        target_exit,
    };
    if let Some(live) = cx.live {
        live.stage_finished(&outcome.report);
    }
    Ok(outcome)
}

/// What the system under test asked of (or was sent of) each flag in the stage.
fn exposure_of(
    provider: &dyn crate::flags::provider::FlagProvider,
    stage: &Stage,
    sent: BTreeMap<String, BTreeMap<String, u64>>,
) -> BTreeMap<String, FlagExposure> {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    match provider.delivery() {
        Delivery::Evaluated => provider.take_exposure().unwrap_or_default(),
        Delivery::Header => sent
            .into_iter()
            .map(|(flag, values)| {
                let by_variant = values
                    .into_iter()
                    .map(|(v, n)| (v, VariantExposure { evaluations: n, share: 0.0, keys: n }))
                    .collect();
                (flag, FlagExposure { how: "header", by_variant, bulk_fetches: 0 }.with_shares())
            })
            .collect(),
        Delivery::Environment => stage
            .flags
            .iter()
            .map(|(flag, state)| {
                let given = VariantExposure { share: 1.0, ..VariantExposure::default() };
                let by_variant = BTreeMap::from([(text(state.value_for(flag, None)), given)]);
                (flag.clone(), FlagExposure { how: "environment", by_variant, bulk_fetches: 0 })
            })
            .collect(),
        Delivery::File => BTreeMap::new(),
    }
}

/// Why the stage's flag states cannot have been exercised, if they cannot: a flag set
/// to anything but its declared default (in any stage, the first included) was never
/// evaluated, or a split flag was evaluated for far fewer keys with its non-default
/// values than the split sends there. Second: why it cannot be proven that they were,
/// when the system only fetched its flags in bulk (that proves the flags reached it, not
/// that its code read them).
fn never_ran(
    plan: &Plan,
    stage: &Stage,
    exposure: &BTreeMap<String, FlagExposure>,
    sent: u64,
) -> (Option<String>, Option<String>) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let mut bulk_only = Vec::new();
    for (flag, state) in &stage.flags {
        let Some(default) = plan.flags.definitions.iter().find(|d| &d.key == flag).map(|d| &d.default) else {
            continue;
        };
        if matches!(state, FlagState::Fixed(v) if v == default) {
            continue;
        }
        let seen = exposure.get(flag);
        let asked = seen.map_or(0, |e| e.bulk_fetches + e.by_variant.values().map(|v| v.evaluations).sum::<u64>());
        if asked == 0 {
            return (
                Some(format!(
                    "`{flag}` ({}) was never evaluated in `{}`: the path it selects did not run",
                    state.describe(),
                    stage.name
                )),
                None,
            );
        }
        if seen.is_some_and(|e| e.by_variant.values().all(|v| v.evaluations == 0)) {
            bulk_only.push(format!("`{flag}`"));
            continue;
        }
        // A split checked key by key: the keys that got a value other than the
        // default, against how many records the split sends there.
        let (FlagState::Split { .. }, Some(e)) = (state, seen) else {
            continue;
        };
        let keyed: u64 = e.by_variant.values().map(|v| v.keys).sum();
        if keyed == 0 {
            continue;
        }
        let new_keys: u64 = e.by_variant.iter().filter(|(v, _)| **v != text(default)).map(|(_, x)| x.keys).sum();
        let expected = sent as f64 * (1.0 - state.share_of(default));
        if expected >= 10.0 && (new_keys as f64) < expected / 2.0 {
            return (
                Some(format!(
                    "`{flag}` was evaluated for {new_keys} keys with its non-default values in `{}`, far fewer than the ~{expected:.0} the split sends there: that path barely ran",
                    stage.name
                )),
                None,
            );
        }
    }
    let unproven = (!bulk_only.is_empty()).then(|| {
        format!(
            "{} only fetched in bulk in `{}`: the flags reached the system, but whether its code read them (and ran that path) cannot be told from outside",
            bulk_only.join(", "),
            stage.name
        )
    });
    (None, unproven)
}

/// The places faults act on, by the name faults use.
fn places(p: &Provisioned) -> Places<'_> {
    let mut places = Places::default();
    for d in &p.deps {
        let at = Place::Dependency(d.name.clone());
        places.gates.push((at.clone(), d.gate.as_ref()));
        if d.is_started() {
            places.processes.push((at, d));
        }
    }
    if let Some(g) = &p.target.gate {
        places.gates.push((Place::Target, g.as_ref()));
    }
    if let Some(t) = &p.target.process {
        places.processes.push((Place::Target, t.as_ref()));
    }
    places
}

/// Judges the `abort_on_fail` criteria on each copy of the measurements the stage's
/// accounts send, and stops the stage when one fails; for a steered run, also sends the
/// criteria as they stand to `interim` (all but the data checks, which need the output).
async fn watch_for_abort(
    criteria: Vec<verdict::Criterion>,
    stage: String,
    mut snapshots: watch::Receiver<Option<(Recorder, Duration)>>,
    stop: CancellationToken,
    aborted: Arc<Mutex<Option<Assessment>>>,
    interim: Option<UnboundedSender<Event>>,
) {
    while snapshots.changed().await.is_ok() {
        let Some((recorder, elapsed)) = snapshots.borrow_and_update().clone() else { continue };
        let so_far = recorder.finish(elapsed, &Judgement::default());
        if let Some(events) = &interim {
            let assessments = verdict::assess(&criteria, &stage, &so_far)
                .into_iter()
                .filter(|a| {
                    // The metric without its phase (`during.prom.x` is a `prom.` one).
                    let base = a
                        .metric
                        .split_once('.')
                        .filter(|(p, _)| ["before", "during", "after"].contains(p))
                        .map_or(a.metric.as_str(), |(_, rest)| rest);
                    !["data.", "freshness.", "flags.", "prom."].iter().any(|p| base.starts_with(p))
                })
                .collect();
            let _ = events.send(Event::Interim { stage: stage.clone(), assessments });
        }
        if !criteria.iter().any(|c| c.abort_on_fail) {
            continue;
        }
        if let Some(a) = verdict::abort_reason(&criteria, &stage, &so_far) {
            *aborted.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
            stop.cancel();
            return;
        }
    }
}

#[derive(Default)]
struct Counts {
    sent: u64,
    acked: u64,
    rejected: u64,
    failed: u64,
}

/// The driver's callbacks: the stage's ledger, recorder and progress.
struct Accounts<'a> {
    plan: &'a Plan,
    stage: &'a Stage,
    ledger: SharedLedger,
    recorder: Recorder,
    /// The stage over time, for report.json and the plots.
    series: SeriesRecorder,
    variants: HashMap<String, Arc<str>>,
    /// The flag variant of each record in flight, for stages with fractional exposure.
    keys: HashMap<String, Option<Arc<str>>>,
    counts: Counts,
    events: &'a UnboundedSender<Event>,
    provider: &'a dyn crate::flags::provider::FlagProvider,
    /// Where a copy of the measurements goes once a second, for the abort judge.
    snapshots: Option<watch::Sender<Option<(Recorder, Duration)>>>,
    trouble: &'a Trouble,
    send_lag: SendLag,
    /// Requests that timed out after leaving later than the send-lag limit: timeouts the
    /// harness's own lateness may have caused (their answers are read on its runtime
    /// too). A quick failure (a 5xx, a refused connection) is the target's whatever the
    /// harness did.
    failed_late: u64,
    /// The flag values sent with requests, by flag and value (a `header` provider).
    sent_values: BTreeMap<String, BTreeMap<String, u64>>,
    /// The run's `/metrics`, and its handles for this stage by variant.
    live: Option<&'a crate::report::prometheus::Live>,
    live_handles: HashMap<Option<Arc<str>>, crate::report::prometheus::Handles>,
    /// Where the stage ends now (an operator may hold it).
    end: Duration,
    /// Whether a live page follows the run (it gets the last seconds with each tick).
    live_page: bool,
    /// When the stage started (its offsets count from it).
    start: Option<Instant>,
    /// Latency of the requests that ended since the last tick, and how many failed.
    ended_now: hdrhistogram::Histogram<u64>,
    failed_now: u64,
}

impl Accounts<'_> {
    /// The flag values a record sees in this stage, as a JSON object.
    fn flag_values(&self, key: &str) -> Value {
        Value::Object(self.stage.flags.iter().map(|(n, st)| (n.clone(), st.value_for(n, Some(key)).clone())).collect())
    }

    /// The variant label of a record in a stage with fractional exposure
    /// (`new-enricher=true`); `None` when no flag of the stage is split.
    fn variant_of(&mut self, key: &str) -> Option<Arc<str>> {
        let parts: Vec<String> = self
            .stage
            .flags
            .iter()
            .filter(|(_, s)| matches!(s, FlagState::Split { .. }))
            .map(|(name, s)| format!("{name}={}", s.value_for(name, Some(key))))
            .collect();
        if parts.is_empty() {
            return None;
        }
        let label = parts.join(",");
        Some(self.variants.entry(label.clone()).or_insert_with(|| Arc::from(label.as_str())).clone())
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for Accounts<'_> {
    fn flags(&mut self, key: &str) -> Value {
        self.flag_values(key)
    }

    fn headers(&mut self, key: &str) -> Vec<(String, String)> {
        if !self.provider.wants_values() {
            return Vec::new();
        }
        self.provider.header(&self.flag_values(key)).into_iter().collect()
    }

    fn sent(&mut self, offset: Duration, _slot: u64, key: &str, record: &Map<String, Value>, invalid: bool) {
        let digest = crate::quality::digest(record, self.ledger().pii_fields());
        self.sent_digest(offset, key, digest, invalid);
    }

    fn sent_digest(&mut self, offset: Duration, key: &str, digest: crate::quality::Digest, invalid: bool) {
        let variant = self.variant_of(key);
        let warmup = offset < self.plan.workload.warmup;
        let tags = Tags {
            phase: (!warmup).then(|| self.recorder.phase(offset)),
            variant: variant.clone(),
            invalid,
            warmup,
            interval: Some(self.series.index(offset) as u32),
        };
        self.series.sent(offset);
        self.ledger().sent_digest(key, digest, tags);
        if self.provider.delivery() == Delivery::Header {
            for (flag, state) in &self.stage.flags {
                let value = state.value_for(flag, Some(key));
                let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                *self.sent_values.entry(flag.clone()).or_default().entry(text).or_default() += 1;
            }
        }
        if variant.is_some() {
            self.keys.insert(key.to_string(), variant);
        }
        self.counts.sent += 1;
    }

    fn sample(&mut self, s: Sample) {
        if let Some(why) = &s.own_failure {
            // Not the target's doing: the run is broken, and this request is not judged.
            self.trouble.fail(format!("stagegate could not send a request: {why}"));
            return;
        }
        match s.outcome {
            Outcome::Acked => {
                // Acknowledged when its answer came (a worker's answer is reported later).
                let at = self.start.map_or_else(Instant::now, |start| start + s.offset + s.latency);
                self.ledger().acked(&s.key, at);
                self.counts.acked += 1;
            }
            Outcome::Rejected => {
                self.ledger().rejected(&s.key);
                self.counts.rejected += 1;
            }
            Outcome::Failed => {
                self.counts.failed += 1;
                if s.latency >= self.plan.workload.timeout && s.send_lag > self.plan.health.send_lag_p99 {
                    self.failed_late += 1;
                }
            }
        }
        self.send_lag.record(s.offset, s.send_lag);
        self.ended_now.saturating_record((s.latency.as_micros() as u64).max(1));
        self.failed_now += u64::from(s.outcome == Outcome::Failed);
        let variant = self.keys.remove(&s.key).flatten();
        self.series.ended(s.offset, s.latency, s.outcome);
        self.recorder.record(s.offset, s.latency, s.outcome, variant.as_deref());
        if let Some(live) = self.live {
            let stage = &self.stage.name;
            self.live_handles
                .entry(variant.clone())
                .or_insert_with(|| live.handles(stage, variant.as_deref()))
                .request(s.outcome, s.latency);
        }
    }

    fn tick(&mut self, elapsed: Duration) {
        let c = &self.counts;
        let _ = self.events.send(Event::Progress {
            stage: self.stage.name.clone(),
            elapsed_secs: elapsed.as_secs(),
            total_secs: self.end.as_secs(),
            sent: c.sent,
            acked: c.acked,
            rejected: c.rejected,
            failed: c.failed,
            p99_ms: self.recorder.p99_ms(),
            recent: if self.live_page {
                let last = elapsed.checked_sub(Duration::from_secs(1)).map_or(0, |at| self.series.index(at));
                (last.saturating_sub(9)..=last).filter_map(|i| self.series.point(i)).collect()
            } else {
                Vec::new()
            },
            now: {
                let h = &self.ended_now;
                let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
                crate::report::NowFigures { ended: h.len(), failed: self.failed_now, p50_ms: q(0.5), p99_ms: q(0.99) }
            },
        });
        self.ended_now.reset();
        self.failed_now = 0;
        if let Some(tx) = &self.snapshots {
            tx.send_replace(Some((self.recorder.clone(), elapsed)));
        }
    }

    fn end_moved(&mut self, end: Duration) {
        self.end = end;
        self.recorder.extend(end);
        self.series.extend(end);
    }
}
