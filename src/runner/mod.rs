//! The runner: provision, run each stage, tear down, judge, emitting [`Event`]s. It only
//! orchestrates; everything it runs sits behind a seam of its own.
//!
//! [`run`] never returns an error: a run that breaks (a port that cannot be bound, a
//! dependency that never gets ready, stagegate running out of descriptors) still
//! produces a [`RunReport`] with `error` set, and an interrupted run produces one marked
//! `interrupted`. Whatever the run starts is adopted by a teardown guard *before* it
//! starts and written into `run.json`; the guard lifts every fault and stops every
//! process, container and server on every path out of here: the end, an error, Ctrl-C
//! (a second one forces the stop), or a panic unwinding through it.
//!
//! - [`provision`]: the typed set of what runs (flags, dependencies, target, observer);
//! - [`stage`]: one stage, from flag hand-over to its assessments;
//! - [`action`]: the `on_verdict` command.

pub mod action;
pub mod provision;
pub mod stage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::deps::runfile::RunFile;
use crate::health::Trouble;
use crate::report::{Event, RunReport};
use crate::scenario::Plan;
use crate::teardown::Guard;
use crate::verdict;

/// How a run is told to stop: `cancel` (Ctrl-C, SIGTERM) ends it in order; `force` (a
/// second one) cuts every wait short, faults still lifted and children still stopped.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub cancel: CancellationToken,
    pub force: CancellationToken,
}

/// Where a run writes: its folder (and its id, the folder's name).
pub struct Output {
    pub dir: Option<PathBuf>,
    pub run_id: String,
    /// The metrics `/metrics` serves during the run, when asked for (`--metrics`).
    pub live: Option<Arc<crate::report::prometheus::Live>>,
    /// The operator's controls, when the run is steered (`--ui`).
    pub steering: Option<Arc<crate::steer::Steering>>,
    /// The load workers' controller, when the run sends through workers (`--workers`),
    /// and how long they have to join.
    pub workers: Option<(Arc<crate::distributed::controller::Controller>, Duration)>,
}

/// Runs `plan`, sending events to `events`; the report is also the last event.
pub async fn run(plan: &Plan, out: Output, stop: Shutdown, events: UnboundedSender<Event>) -> RunReport {
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
    let mut report = RunReport::begin(plan, out.dir.clone());
    // Written before anything starts: without it `cleanup` could not find what does.
    let run_file = match &out.dir {
        Some(dir) => match RunFile::create(dir, &out.run_id) {
            Ok(f) => f,
            Err(e) => {
                report.error = Some(format!("cannot write {}: {e}", dir.join("run.json").display()));
                return finish(plan, report, &events);
            }
        },
        None => RunFile::detached(&out.run_id),
    };
    // Once a second, what escaped the run's groups is written down, for a `cleanup`
    // after a SIGKILL (a live run stops it itself: `sweep`). On a thread of its own:
    // the /proc scan stays off the runtime the driver keeps time on.
    let (escapes_stop, stopped) = std::sync::mpsc::channel::<()>();
    let escapes = {
        let run_file = run_file.clone();
        std::thread::Builder::new().name("escapes".into()).spawn(move || {
            loop {
                run_file.note_escaped();
                if !matches!(
                    stopped.recv_timeout(Duration::from_secs(1)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
            }
        })
    };
    let trouble = Trouble::new();
    // The stages stop on Ctrl-C, and on stagegate's own failure.
    let halt = stop.cancel.child_token();
    if let Some(s) = &out.steering {
        s.attach(halt.clone(), events.clone());
    }
    let steered_abort = || out.steering.as_ref().and_then(|s| s.aborted());
    let on_trouble = {
        let (failed, halt) = (trouble.failed().clone(), halt.clone());
        tokio::spawn(async move {
            failed.cancelled().await;
            halt.cancel();
        })
    };
    // The system's metrics server is asked first: a server that does not answer, or a
    // query it refuses, would leave every `prom.` criterion unknown after the whole run.
    if let Some(source) = &plan.metrics {
        let client = crate::http_client::builder().build().map_err(|e| e.to_string());
        let checked = match client {
            Ok(c) => tokio::select! {
                r = crate::measure::prom::preflight(source, &c) => r,
                _ = halt.cancelled() => Ok(()),
            },
            Err(e) => Err(format!("cannot build the HTTP client: {e}")),
        };
        if let Err(e) = checked {
            report.reasons = vec![format!("the run broke: {e}")];
            report.error = Some(e);
            on_trouble.abort();
            drop(escapes_stop);
            if let Ok(escapes) = escapes {
                let _ = escapes.join();
            }
            run_file.finish();
            return finish(plan, report, &events);
        }
    }
    let guard = Guard::new();
    let cx = provision::Context {
        guard: &guard,
        run: run_file.clone(),
        report_dir: out.dir.as_deref(),
        cancel: &halt,
        trouble: &trouble,
    };
    let mut samples = HashMap::new();
    match provision::provision(plan, &cx).await {
        // Stopped while starting: an interrupted run, not a broken one.
        Err(_) if stop.cancel.is_cancelled() || steered_abort().is_some() => {}
        Err(e) => report.error = Some(e),
        Ok(provisioned) => {
            let gate = provisioned.target.gate.is_some();
            emit(Event::Provisioned {
                target: provisioned.target.base.clone(),
                target_proxy: gate.then(|| provisioned.target.url.clone()),
                dependencies: provisioned
                    .deps
                    .iter()
                    .map(|d| (d.name.clone(), d.real_address().to_string(), d.address().to_string()))
                    .collect(),
                flags: provisioned.flags.endpoint().unwrap_or_default(),
            });
            let ctl = out.workers.as_ref().map(|(c, _)| c.as_ref());
            let mut joined = true;
            if let Some((ctl, join_timeout)) = &out.workers {
                ctl.attach(events.clone());
                let steered = out.steering.is_some();
                ctl.assign(crate::distributed::assignment(plan, &provisioned, &out.run_id, ctl.workers(), steered));
                emit(Event::Note {
                    message: format!(
                        "waiting for {} load workers to join (at most {})",
                        ctl.workers(),
                        crate::scenario::units::format_duration(*join_timeout)
                    ),
                });
                if let Err(missing) = ctl.await_members(*join_timeout, &halt).await {
                    joined = false;
                    if !halt.is_cancelled() {
                        let missing: Vec<String> = missing.iter().map(u32::to_string).collect();
                        report.error = Some(format!(
                            "{} of {} load workers joined within {}; missing: index {} (is `stagegate worker` running with this controller's URL and token?)",
                            ctl.workers() as usize - missing.len(),
                            ctl.workers(),
                            crate::scenario::units::format_duration(*join_timeout),
                            missing.join(", ")
                        ));
                    }
                }
            }
            if joined {
                let watchers = Watchers { live: out.live.as_deref(), steering: out.steering.as_deref(), workers: ctl };
                samples = run_stages(plan, &provisioned, &halt, &trouble, &events, watchers, &mut report).await;
            }
        }
    }
    // The workers stop sending before anything else stops.
    if let Some((ctl, _)) = &out.workers {
        let (why, exit) = if stop.cancel.is_cancelled() {
            ("the run was stopped", crate::exit::INTERRUPTED)
        } else if report.error.is_some() || trouble.reason().is_some() {
            ("the run broke", crate::exit::RUN_BROKEN)
        } else {
            ("the run is over", crate::exit::PROMOTE)
        };
        ctl.finish(why, exit);
    }
    // Every fault lifted first, then everything stopped, newest first.
    guard.teardown(&stop.force).await;
    on_trouble.abort();
    if let Some(reason) = trouble.reason() {
        report.error.get_or_insert(reason);
    }
    report.interrupted = report.interrupted || stop.cancel.is_cancelled();
    if let Some(s) = &out.steering {
        report.steered_abort = s.aborted();
        report.steering = s.audit();
        if s.audit_dropped() > 0 {
            report
                .warnings
                .push(format!("{} steering attempts were left out of the audit (past its bounds)", s.audit_dropped()));
        }
    }
    if let Some((ctl, _)) = &out.workers {
        report.distributed = Some(distributed_report(ctl, &report, out.dir.as_deref()));
    }
    let completed = |name: &str| report.stages.iter().any(|s| s.name == name && s.completed);
    // A stage whose timing cannot be trusted, or whose new flag states never ran, cannot
    // speak in a comparison either.
    let behind = |name: &str| {
        report
            .stages
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.health.behind.clone().or(s.unexposed.clone()).or(s.workers_incomplete.clone()))
    };
    let judged_secs = plan.workload.duration.saturating_sub(plan.workload.warmup).as_secs_f64();
    let (comparisons, tests) = verdict::compare_stages(&plan.criteria, &samples, completed, behind, judged_secs);
    report.statistical_tests = tests;
    report.assessments.extend(comparisons);
    let ending = verdict::Ending {
        error: report.error.as_deref(),
        interrupted: report.interrupted,
        aborted: report.aborted.as_deref(),
        steered: report.steered_abort.as_deref().map(|why| (why, plan.on_abort)),
        target_exit: report.target_exit.as_deref(),
        last_stage: report.stages.last().map(|s| s.name.as_str()),
    };
    let (verdict, mut reasons) = verdict::conclude(&ending, &report.assessments);
    let ran: Vec<(&str, bool)> = report.stages.iter().map(|s| (s.name.as_str(), s.completed)).collect();
    report.exposures = verdict::exposure::summarize(&plan.stages, &ran, &report.assessments);
    report.matrices = verdict::matrix::summarize(&plan.stages, &ran, &report.assessments);
    let defaults = plan.flags.definitions.iter().map(|d| (d.key.clone(), d.default.clone())).collect();
    let flags: Vec<(&str, &std::collections::BTreeMap<String, crate::flags::FlagState>)> =
        report.stages.iter().map(|s| (s.name.as_str(), &s.flags)).collect();
    report.failures = crate::flags::telemetry::preceding_changes(&flags, &report.assessments, &defaults);
    // What the exposures came to, first: the sentence a release team reads.
    if verdict.is_some() {
        reasons.splice(0..0, report.exposures.iter().map(|e| e.summary.clone()));
    }
    report.verdict = verdict;
    report.reasons = reasons;
    if verdict == Some(verdict::Verdict::Rollback) {
        report.rollback = rollback_plan(plan, &mut report, out.dir.as_deref());
    }
    if let Some(v) = report.verdict
        && plan.on_verdict.command(v).is_some()
    {
        // The report exists before the action runs, which may read it (STAGEGATE_REPORT).
        report.finished_at = chrono::Utc::now().to_rfc3339();
        let (written, on_disk) = crate::report::Written::new();
        emit(Event::Judged(Box::new(report.clone()), written));
        // Within a deadline, and giving way to Ctrl-C: a reporter that cannot keep up
        // does not hold the run.
        tokio::select! {
            _ = tokio::time::timeout(crate::limits::REPORT_WRITE, on_disk) => {}
            _ = stop.cancel.cancelled() => {}
        }
        report.on_verdict =
            action::on_verdict(plan, v, out.dir.as_deref(), report.rollback.as_ref(), &run_file, &stop.cancel).await;
        if stop.cancel.is_cancelled() && report.on_verdict.is_some() {
            // The verdict stands in the report, but the run did not finish its job.
            report.interrupted = true;
            report.reasons.push(format!("interrupted while the {v} action ran; it was stopped before it finished"));
        }
    }
    // What outlived its group (the action's too) carries the run's marker, or was
    // adopted by stagegate when its parent died: stopped here. Only then is the record done.
    drop(escapes_stop);
    if let Ok(escapes) = escapes {
        let _ = escapes.join();
    }
    sweep(&run_file);
    if let Some(dir) = &out.dir {
        mask_logs(dir, &plan.secrets);
    }
    if guard.is_done() {
        run_file.finish();
    }
    finish(plan, report, &events)
}

/// The rollback plan of a ROLLBACK, written as a flagd file into the run's folder when
/// it changes any flag.
fn rollback_plan(
    plan: &Plan,
    report: &mut RunReport,
    dir: Option<&std::path::Path>,
) -> Option<verdict::rollback::RollbackPlan> {
    let stages: Vec<verdict::rollback::StageFlags> =
        report.stages.iter().map(|s| verdict::rollback::StageFlags { name: &s.name, flags: &s.flags }).collect();
    let defaults = plan.flags.definitions.iter().map(|d| (d.key.clone(), d.default.clone())).collect();
    // An operator's abort that the scenario calls a ROLLBACK, with nothing failed: the
    // stage it stopped is the one to undo.
    let mut assessments = report.assessments.clone();
    let failed = |a: &verdict::Assessment| a.outcome == verdict::Outcome::Fail && a.level == verdict::Level::Enforce;
    if let (Some(why), Some(stopped)) = (&report.steered_abort, report.stages.last())
        && !assessments.iter().any(failed)
    {
        assessments.push(verdict::Assessment {
            stage: stopped.name.clone(),
            criterion: "aborted by an operator".into(),
            metric: "steering.abort".into(),
            measured: None,
            measured_text: why.clone(),
            limit_text: String::new(),
            samples: None,
            outcome: verdict::Outcome::Fail,
            level: verdict::Level::Enforce,
            note: None,
            comparison: None,
            cohort: None,
        });
    }
    let mut rollback = verdict::rollback::plan(&stages, &assessments, &defaults)?;
    if let Some(dir) = dir
        && !rollback.changes.is_empty()
    {
        let path = dir.join(verdict::rollback::FLAGD_FILE);
        match crate::flags::flagd::write(&path, &rollback.restored()) {
            Ok(()) => rollback.flagd_file = Some(path),
            Err(e) => {
                report.warnings.push(format!("the rollback plan could not be written to {}: {e}", path.display()))
            }
        }
    }
    Some(rollback)
}

fn finish(_plan: &Plan, mut report: RunReport, events: &UnboundedSender<Event>) -> RunReport {
    report.finished_at = chrono::Utc::now().to_rfc3339();
    let _ = events.send(Event::Finished(Box::new(report.clone())));
    report
}

/// Who watches and steers the run while it goes, and who sends its load.
struct Watchers<'a> {
    live: Option<&'a crate::report::prometheus::Live>,
    steering: Option<&'a crate::steer::Steering>,
    workers: Option<&'a crate::distributed::controller::Controller>,
}

/// The workers' part of the report, and their interval log written beside it.
fn distributed_report(
    ctl: &crate::distributed::controller::Controller,
    report: &RunReport,
    dir: Option<&std::path::Path>,
) -> crate::distributed::controller::DistributedReport {
    let mut out = ctl.report();
    let run_start = chrono::DateTime::parse_from_rfc3339(&report.started_at)
        .map_or(std::time::SystemTime::now(), std::time::SystemTime::from);
    if let Some(dir) = dir {
        let path = dir.join("workers.hlog");
        match ctl.interval_log(run_start).and_then(|(text, _)| std::fs::write(&path, text).map_err(|e| e.to_string())) {
            Ok(()) => out.interval_log = Some("workers.hlog".into()),
            Err(e) => tracing::warn!(error = %e, "the workers' interval log could not be written"),
        }
    }
    out
}

/// Runs the stages in order until one cannot go on; returns each finished stage's judged
/// samples, for comparisons.
async fn run_stages(
    plan: &Plan,
    provisioned: &provision::Provisioned,
    halt: &CancellationToken,
    trouble: &Trouble,
    events: &UnboundedSender<Event>,
    watchers: Watchers<'_>,
    report: &mut RunReport,
) -> HashMap<String, verdict::StageSamples> {
    let Watchers { live, steering, workers } = watchers;
    let mut samples = HashMap::new();
    // Connections stay open for reuse, as a client of the target would keep them; those
    // idle for a while are closed, so a burst of concurrency does not keep its
    // connections (and their buffers) for the rest of the run.
    let client =
        crate::http_client::builder().pool_max_idle_per_host(1024).pool_idle_timeout(Duration::from_secs(5)).build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(format!("cannot build the HTTP client: {e}"));
            return samples;
        }
    };
    let cx = stage::Context { plan, provisioned, halt, trouble, events, client: &client, live, steering, workers };
    // A progressive exposure stops at its first failing step: the wider ones are not run.
    let mut stopped_exposure: Option<&str> = None;
    for index in 0..plan.stages.len() {
        if halt.is_cancelled() {
            break;
        }
        let step = plan.stages[index].exposure.as_ref();
        if step.is_some_and(|s| Some(s.group.as_str()) == stopped_exposure) {
            continue;
        }
        let outcome = match stage::run(&cx, index).await {
            Ok(o) => o,
            Err(e) => {
                if !halt.is_cancelled() {
                    report.error = Some(e);
                }
                break;
            }
        };
        let name = outcome.report.name.clone();
        let completed = outcome.report.completed;
        if let Some(exit) = outcome.target_exit {
            report.target_exit.get_or_insert(exit);
        }
        samples.insert(
            name.clone(),
            verdict::StageSamples {
                windows: outcome.windows,
                requests: outcome.samples.requests,
                errors: outcome.samples.errors,
            },
        );
        let _ = events.send(Event::StageFinished {
            report: Box::new(outcome.report.clone()),
            assessments: outcome.assessments.clone(),
        });
        if let Some(step) = step
            && completed
            && outcome
                .assessments
                .iter()
                .any(|a| a.outcome == verdict::Outcome::Fail && a.level == verdict::Level::Enforce)
        {
            stopped_exposure = Some(&step.group);
            if step.index + 1 < step.steps {
                let _ = events.send(Event::Note {
                    message: format!(
                        "exposure `{}` failed at {}: its wider steps are not run",
                        step.group,
                        crate::scenario::units::format_share(step.share)
                    ),
                });
            }
        }
        report.stages.push(outcome.report);
        report.assessments.extend(outcome.assessments);
        report.faults.extend(outcome.faults);
        if let Some(a) = outcome.aborted {
            let reason = format!(
                "`{}` failed in stage `{}` (measured {}, limit {}); abort_on_fail stopped the run",
                a.criterion, a.stage, a.measured_text, a.limit_text
            );
            let _ = events.send(Event::Aborted { stage: name, reason: reason.clone() });
            report.aborted = Some(reason);
            break;
        }
        if !completed {
            // An operator's abort ends the run as it says; anything else stopping a
            // stage is an interruption.
            if let Some(why) = steering.and_then(|s| s.aborted()) {
                let _ = events.send(Event::Note {
                    message: format!("{why}: every fault is lifted and everything started is stopped"),
                });
            } else {
                report.interrupted = true;
            }
            break;
        }
    }
    samples
}

/// Masks the scenario's secrets in the logs of the processes the run started (they are
/// the processes' own words, and may repeat a secret they were given).
fn mask_logs(dir: &std::path::Path, secrets: &crate::secrets::Secrets) {
    use std::io::{BufRead, Read, Write};
    if secrets.is_empty() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for log in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")) {
        let masked = log.with_extension("log.masking");
        let result = (|| -> std::io::Result<()> {
            let mut reader = std::io::BufReader::new(std::fs::File::open(&log)?);
            let mut writer = std::io::BufWriter::new(std::fs::File::create(&masked)?);
            let mut line = Vec::new();
            // A line is read up to 1 MiB at a time: a log need not hold newlines.
            while (&mut reader).take(1024 * 1024).read_until(b'\n', &mut line)? > 0 {
                writer.write_all(secrets.mask(&String::from_utf8_lossy(&line)).as_bytes())?;
                line.clear();
            }
            writer.flush()?;
            std::fs::rename(&masked, &log)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&masked);
            tracing::warn!(log = %log.display(), error = %e, "could not mask secrets in a log");
        }
    }
}

/// Stops anything still running that this run started: a process that carries the
/// run's marker but left its group, or one that escaped both (a new session, a cleared
/// environment) and was adopted by stagegate, the subreaper of everything it starts.
fn sweep(run: &Arc<RunFile>) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let orphans = adopted_children();
    for pid in crate::deps::cleanup::marked_processes(&run.marks()).into_iter().chain(orphans.iter().copied()) {
        tracing::warn!(pid, "a process this run started outlived its group; stopping it");
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // Adopted processes are stagegate's children now: reap them (within a second), so
    // none stays a zombie.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    for pid in orphans {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        while let Ok(WaitStatus::StillAlive) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The processes whose parent is stagegate once everything it started has been stopped
/// and reaped: descendants that outlived their parents and were adopted.
fn adopted_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            parent == Some(me)
        })
        .collect()
}
