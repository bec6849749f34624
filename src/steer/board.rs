//! What the live page shows, followed from the run's events: the stages and their flag
//! states, the running stage's figures second by second, the faults active and the time
//! they have left, the criteria as they stand, the data counts so far, the verdict.
//!
//! [`Board::follow`] takes each event; [`Board::snapshot`] is the JSON the page reads,
//! its two charts drawn server-side as SVG with plotters (the page runs no chart code).
//! Each change bumps a version the page's event stream waits on. Everything kept is
//! bounded: the running stage's seconds (the last [`MAX_POINTS`]), the notes, the
//! finished stages' criteria.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::fault::FaultRecord;
use crate::measure::series::Point;
use crate::report::Event;
use crate::scenario::Plan;
use crate::verdict::{Assessment, Outcome};

/// Seconds of the running stage kept for its charts.
pub const MAX_POINTS: usize = 1200;
/// Notes kept (the latest).
const MAX_NOTES: usize = 30;

/// The live state of a run, for the page.
pub struct Board {
    state: Mutex<State>,
    version: watch::Sender<u64>,
}

struct StageLine {
    name: String,
    planned_secs: f64,
    flags: String,
    faults: Vec<String>,
    state: &'static str,
    length_secs: Option<f64>,
    outcome: Option<&'static str>,
}

#[derive(Default)]
struct Running {
    name: String,
    index: usize,
    elapsed_secs: u64,
    end_secs: u64,
    sent: u64,
    acked: u64,
    rejected: u64,
    failed: u64,
    p99_so_far_ms: Option<f64>,
    now: crate::report::NowFigures,
    points: VecDeque<Point>,
    faults: Vec<FaultRecord>,
    interim: Vec<Assessment>,
}

#[derive(Default)]
struct Data {
    sent: u64,
    acked: u64,
    lost: u64,
    duplicated: u64,
    corrupted: u64,
}

struct State {
    scenario: String,
    stages: Vec<StageLine>,
    running: Option<Running>,
    judged: Vec<Assessment>,
    data: Data,
    notes: VecDeque<String>,
    verdict: Option<String>,
    reasons: Vec<String>,
    finished: bool,
    charts: Option<(u64, Value)>,
}

fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Inconclusive => "inconclusive",
    }
}

impl Board {
    /// The board of a run of `plan`, before anything ran.
    pub fn new(plan: &Plan) -> Board {
        let stages = plan
            .stages
            .iter()
            .map(|s| StageLine {
                name: s.name.clone(),
                planned_secs: s.duration.as_secs_f64(),
                flags: s.flags.iter().map(|(k, v)| format!("{k}={}", v.describe())).collect::<Vec<_>>().join(", "),
                faults: s
                    .faults
                    .iter()
                    .map(|f| {
                        let length = f.schedule.length.map_or("to the end".into(), |l| {
                            format!("for {}", crate::scenario::units::format_duration(l))
                        });
                        format!(
                            "{} at {} from {} {length}",
                            f.kind.name(),
                            f.at,
                            crate::scenario::units::format_duration(f.schedule.from)
                        )
                    })
                    .collect(),
                state: "pending",
                length_secs: None,
                outcome: None,
            })
            .collect();
        Board {
            state: Mutex::new(State {
                scenario: plan.name.clone(),
                stages,
                running: None,
                judged: Vec::new(),
                data: Data::default(),
                notes: VecDeque::new(),
                verdict: None,
                reasons: Vec::new(),
                finished: false,
                charts: None,
            }),
            version: watch::channel(0).0,
        }
    }

    /// A receiver that changes whenever the board does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in one event of the run.
    pub fn follow(&self, event: &Event) {
        let mut st = self.state();
        let changed = match event {
            Event::StageStarted { index, name, .. } => {
                if let Some(line) = st.stages.get_mut(*index) {
                    line.state = "running";
                }
                st.running = Some(Running { name: name.clone(), index: *index, ..Running::default() });
                true
            }
            Event::Progress { stage, elapsed_secs, total_secs, sent, acked, rejected, failed, p99_ms, recent, now } => {
                match st.running.as_mut().filter(|r| &r.name == stage) {
                    Some(r) => {
                        (r.elapsed_secs, r.end_secs) = (*elapsed_secs, *total_secs);
                        (r.sent, r.acked, r.rejected, r.failed) = (*sent, *acked, *rejected, *failed);
                        r.p99_so_far_ms = *p99_ms;
                        r.now = now.clone();
                        // Seconds come again as their requests end: the newer copy wins.
                        for p in recent {
                            let newest = r.points.back().is_none_or(|last| last.at_secs < p.at_secs);
                            match r.points.iter_mut().rev().find(|x| x.at_secs == p.at_secs) {
                                Some(known) => *known = p.clone(),
                                None if newest => {
                                    if r.points.len() >= MAX_POINTS {
                                        r.points.pop_front();
                                    }
                                    r.points.push_back(p.clone());
                                }
                                None => {}
                            }
                        }
                        true
                    }
                    None => false,
                }
            }
            Event::Interim { stage, assessments } => match st.running.as_mut().filter(|r| &r.name == stage) {
                Some(r) => {
                    r.interim = assessments.clone();
                    true
                }
                None => false,
            },
            Event::Fault(f) => match st.running.as_mut().filter(|r| r.name == f.stage) {
                Some(r) => {
                    let full = r.faults.len() >= 1000;
                    match r.faults.iter_mut().find(|x| x.index == f.index && x.started_secs == f.started_secs) {
                        Some(known) => *known = f.clone(),
                        None if !full => r.faults.push(f.clone()),
                        None => {}
                    }
                    true
                }
                None => false,
            },
            Event::StageFinished { report, assessments } => {
                let outcome = if assessments.iter().any(|a| a.outcome == Outcome::Fail) {
                    Some("fail")
                } else if assessments.iter().any(|a| a.outcome == Outcome::Inconclusive) {
                    Some("inconclusive")
                } else if report.completed {
                    Some("pass")
                } else {
                    None
                };
                if let Some(line) = st.stages.iter_mut().find(|l| l.name == report.name && l.state == "running") {
                    line.state = if report.completed { "done" } else { "stopped" };
                    line.length_secs = Some(report.length_secs);
                    line.outcome = outcome;
                }
                let d = &report.metrics.data;
                st.data.sent += d.sent;
                st.data.acked += d.acked;
                st.data.lost += d.lost;
                st.data.duplicated += d.duplicated;
                st.data.corrupted += d.corrupted;
                if st.judged.len() < 10_000 {
                    st.judged.extend(assessments.iter().cloned());
                }
                st.running = None;
                true
            }
            Event::Note { message } => {
                push_note(&mut st.notes, message.clone());
                true
            }
            Event::Aborted { reason, .. } => {
                push_note(&mut st.notes, format!("aborted: {reason}"));
                true
            }
            Event::Judged(report, _) | Event::Finished(report) => {
                st.verdict = report.verdict.map(|v| format!("{v:?}").to_uppercase());
                st.reasons = report.reasons.clone();
                if matches!(event, Event::Finished(_)) {
                    st.finished = true;
                    st.running = None;
                    for line in &mut st.stages {
                        if line.state == "running" {
                            line.state = "stopped";
                        }
                    }
                }
                true
            }
            _ => false,
        };
        drop(st);
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// The board as the page reads it; `steering` adds what the operators did and can do.
    pub fn snapshot(&self, steering: Option<&super::Steering>) -> Value {
        let version = *self.version.borrow();
        let mut st = self.state();
        let charts = match &st.charts {
            Some((v, c)) if *v == version => c.clone(),
            _ => {
                let c = charts(st.running.as_ref());
                st.charts = Some((version, c.clone()));
                c
            }
        };
        let stages: Vec<Value> = st
            .stages
            .iter()
            .map(|l| {
                json!({
                    "name": l.name, "planned_secs": l.planned_secs, "flags": l.flags, "faults": l.faults,
                    "state": l.state, "length_secs": l.length_secs, "outcome": l.outcome,
                })
            })
            .collect();
        // Where the stage ends now, as the steering has it: a hold shows at once.
        let end_now = steering.and_then(|s| s.running());
        let running = st.running.as_ref().map(|r| {
            let end_secs = match &end_now {
                Some((name, _, end, _)) if *name == r.name => end.round() as u64,
                _ => r.end_secs,
            };
            let now = r.elapsed_secs as f64;
            let active: Vec<Value> = r
                .faults
                .iter()
                .filter(|f| f.ended_secs.is_none())
                .map(|f| {
                    json!({
                        "kind": f.kind, "at": f.at, "started_secs": f.started_secs, "by": f.by,
                        "left_secs": f.until_secs.map(|u| (u - now).max(0.0)),
                    })
                })
                .collect();
            json!({
                "name": r.name, "index": r.index, "elapsed_secs": r.elapsed_secs, "end_secs": end_secs,
                "sent": r.sent, "acked": r.acked, "rejected": r.rejected, "failed": r.failed,
                "errors_per_sec": r.now.failed, "ended_per_sec": r.now.ended,
                "p50_ms": r.now.p50_ms, "p99_ms": r.now.p99_ms,
                "p99_so_far_ms": r.p99_so_far_ms, "faults": active,
            })
        });
        let criterion = |a: &Assessment, standing: bool| {
            json!({
                "stage": a.stage, "criterion": a.label(), "outcome": outcome_text(a.outcome),
                "measured": a.measured_text, "limit": a.limit_text, "note": a.note, "so_far": standing,
            })
        };
        let mut criteria: Vec<Value> = st.judged.iter().map(|a| criterion(a, false)).collect();
        if let Some(r) = &st.running {
            criteria.extend(r.interim.iter().map(|a| criterion(a, true)));
        }
        let (run_sent, run_acked, run_failed) = st.running.as_ref().map_or((0, 0, 0), |r| (r.sent, r.acked, r.failed));
        let steer = steering.map(|s| json!({ "enabled": true, "aborted": s.aborted(), "audit": s.audit_tail(20) }));
        json!({
            "version": version,
            "scenario": st.scenario,
            "finished": st.finished,
            "stages": stages,
            "stage": running,
            "criteria": criteria,
            "data": {
                "sent": st.data.sent + run_sent, "acked": st.data.acked + run_acked, "failed_now": run_failed,
                "lost": st.data.lost, "duplicated": st.data.duplicated, "corrupted": st.data.corrupted,
            },
            "notes": st.notes,
            "verdict": st.verdict,
            "reasons": st.reasons,
            "charts": charts,
            "steering": steer.unwrap_or(json!({ "enabled": false })),
        })
    }
}

fn push_note(notes: &mut VecDeque<String>, note: String) {
    if notes.len() >= MAX_NOTES {
        notes.pop_front();
    }
    notes.push_back(note);
}

/// The running stage's latency and traffic charts, second by second up to its end,
/// fault windows shaded.
fn charts(running: Option<&Running>) -> Value {
    let Some(r) = running else { return json!({ "latency": null, "traffic": null }) };
    let mut points: Vec<Value> = r.points.iter().filter_map(|p| serde_json::to_value(p).ok()).collect();
    // The chart spans the stage to its end (as it stands): seconds to come are empty.
    let first = r.points.front().map_or(0.0, |p| p.at_secs);
    let shown = (r.end_secs as f64 - first).max(points.len() as f64) as usize;
    let shown = shown.min(MAX_POINTS);
    while points.len() < shown {
        points.push(json!({ "at_secs": first + points.len() as f64 }));
    }
    // The x axis runs from the first second shown.
    for p in &mut points {
        if let Some(at) = p["at_secs"].as_f64() {
            p["at_secs"] = json!(at - first);
        }
    }
    let series = json!({ "interval_secs": 1.0, "points": points });
    let now = r.elapsed_secs as f64;
    let faults: Vec<(f64, f64, String)> = r
        .faults
        .iter()
        .map(|f| (f.started_secs - first, f.ended_secs.unwrap_or(now) - first, format!("{} at {}", f.kind, f.at)))
        .collect();
    let title = |what: &str| format!("{what} · stage {}", r.name);
    let latency = crate::report::html::latency_chart(&title("latency (ms), each second"), &series, &faults).ok();
    let traffic = crate::report::html::counts_chart(
        &title("sent and errors, each second"),
        &series,
        &faults,
        &crate::report::html::TRAFFIC,
    )
    .ok();
    json!({ "latency": latency, "traffic": traffic })
}
