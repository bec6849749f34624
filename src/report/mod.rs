//! Reports: the events a run emits, the final [`RunReport`], and the reporters that turn
//! them into terminal output and files.
//!
//! The runner only ever sends [`Event`]s; each reporter ([`terminal`], [`json`])
//! listens to the same stream, so adding a format never touches the runner.

pub mod diff;
pub mod files;
pub mod hlog;
pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod plan;
pub mod prometheus;
pub mod schema;
pub mod terminal;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use crate::fault::FaultRecord;
use crate::flags::FlagState;
use crate::measure::StageMetrics;
use crate::verdict::{Assessment, Verdict};
use serde::Serialize;

/// Tells the runner that the reporters have written what a [`Event::Judged`] carried.
#[derive(Debug, Clone, Default)]
pub struct Written(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl Written {
    /// A signal and the receiver the runner waits on.
    pub fn new() -> (Written, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Written(std::sync::Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    /// Says the report is written (once; later calls do nothing).
    pub fn done(&self) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

/// Something that happened during a run, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// The plan is checked and the run begins.
    Started { name: String, file: PathBuf, seed: u64, stages: usize, warnings: Vec<String> },
    /// Everything is up: the target, each dependency behind its proxy, the flag endpoint.
    Provisioned {
        /// The target's own address.
        target: String,
        /// The fault proxy in front of it, when a stage faults it.
        target_proxy: Option<String>,
        dependencies: Vec<(String, String, String)>,
        flags: String,
    },
    /// A stage begins with this flag state.
    StageStarted { index: usize, name: String, flags: BTreeMap<String, FlagState> },
    /// Something the run did between stages that a user should know of.
    Note { message: String },
    /// The run stops early: an `abort_on_fail` criterion failed.
    Aborted { stage: String, reason: String },
    /// About once a second during a stage.
    Progress {
        stage: String,
        elapsed_secs: u64,
        /// The stage's whole length.
        total_secs: u64,
        sent: u64,
        acked: u64,
        rejected: u64,
        failed: u64,
        /// The judged requests' p99 so far (`None` during warm-up), in milliseconds.
        p99_ms: Option<f64>,
        /// The last seconds of the stage (by intended send time, as the report files
        /// them), as they stand: requests still in flight are not in them yet, so each
        /// comes again, more complete, with the next ticks.
        recent: Vec<crate::measure::series::Point>,
        /// What ended in the second just past (by when it ended): requests, failures,
        /// and their latency.
        now: NowFigures,
    },
    /// About once a second in a steered or `abort_on_fail` run: the stage's criteria
    /// judged on what it measured so far (its data checks wait for its end).
    Interim { stage: String, assessments: Vec<Assessment> },
    /// A fault became active or was lifted.
    Fault(FaultRecord),
    /// A stage ended, was observed and judged.
    StageFinished { report: Box<StageReport>, assessments: Vec<Assessment> },
    /// The verdict is known, before the `on_verdict` action runs (which may read the
    /// report): the receiver writes the report out, then calls [`Written::done`], which
    /// the runner waits for.
    Judged(Box<RunReport>, Written),
    /// The run is over (whatever the reason); the report is final.
    Finished(Box<RunReport>),
}

/// What ended in one second of a stage, as it happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NowFigures {
    pub ended: u64,
    pub failed: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// What one stage did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StageReport {
    pub name: String,
    pub flags: BTreeMap<String, FlagState>,
    /// Whether the stage ran its whole duration.
    pub completed: bool,
    pub metrics: StageMetrics,
    /// How well stagegate kept its own schedule (send lag, timers, proxy holds, dropped
    /// sends, CPU); when it fell behind, `behind` says how and timing criteria were not
    /// judged.
    pub health: crate::measure::lateness::StageHealth,
    /// What the system under test asked of each flag (OFREP), or was sent of it (a
    /// header) or given (the environment), by value; empty for a flag file.
    pub flag_exposure: BTreeMap<String, crate::flags::ofrep::FlagExposure>,
    /// Personal data (values of `pii: true` record fields) the system under test put
    /// in its flag evaluation contexts: where, and how many distinct values.
    pub pii_in_flags: Vec<crate::flags::ofrep::PiiInContext>,
    /// Each split flag's variant against the rest of the records, in this stage.
    pub variant_differences: Vec<crate::flags::telemetry::VariantDifference>,
    /// Why the stage's new flag states cannot have been exercised, when they cannot (its
    /// criteria are then INCONCLUSIVE).
    pub unexposed: Option<String>,
    /// Why it cannot be proven that the stage's flag states were exercised (a system
    /// that fetched its flags only in bulk), when it cannot; a warning, not a hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure_unproven: Option<String>,
    /// Why the stage's evidence is incomplete in a distributed run (a load worker died,
    /// was late or could not keep its schedule): every criterion of the stage is then
    /// INCONCLUSIVE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers_incomplete: Option<String>,
    /// The stage over time (per second up to 600 s).
    pub series: crate::measure::series::Series,
    /// The judged time cut into windows, as comparisons test them (`stagegate compare`
    /// reads them from a saved run).
    pub windows: Vec<crate::measure::Window>,
    /// When the stage began (RFC 3339), and its judged requests' latency histograms
    /// (for the HdrHistogram interval log, `--report hlog`).
    pub started_at: String,
    pub histograms: Vec<crate::measure::EncodedHistogram>,
    /// How long the stage ran, in seconds: its planned length, or longer or shorter
    /// as an operator held or advanced it, or less when it was stopped.
    pub length_secs: f64,
}

/// The layout version of report.json ([`RunReport::report_version`]).
pub const REPORT_VERSION: u32 = 1;

/// The full account of a run, written as JSON and summarised on the terminal.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunReport {
    /// The version of this document's layout: it changes only when a field changes
    /// meaning or goes away (fields may be added within a version).
    pub report_version: u32,
    pub stagegate_version: String,
    pub scenario: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub seed: u64,
    /// Where the seed came from: `file`, `--seed` or `random`.
    pub seed_source: String,
    /// Every `--set` override applied, as written.
    pub overrides: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    /// Set when Ctrl-C or SIGTERM stopped the run before its end.
    pub interrupted: bool,
    /// Set when an `abort_on_fail` criterion stopped the run: why.
    pub aborted: Option<String>,
    /// Set when an operator aborted the run from the steering API (`--ui`): who, when.
    pub steered_abort: Option<String>,
    /// What operators did through the steering API, allowed or refused, in order (also
    /// in `steering.jsonl`).
    pub steering: Vec<crate::steer::AuditEntry>,
    /// Why the run itself broke, if it did (not a judgement on the candidate).
    pub error: Option<String>,
    /// `None` when the run broke before it could judge.
    pub verdict: Option<Verdict>,
    /// The assessments that decided the verdict, in words.
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
    pub stages: Vec<StageReport>,
    /// The load workers of a distributed run (`--workers`): how each joined (its clock
    /// offset to the controller) and what it did in each stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributed: Option<crate::distributed::controller::DistributedReport>,
    pub assessments: Vec<Assessment>,
    pub faults: Vec<FaultRecord>,
    /// Where the report files were written.
    pub report_dir: Option<PathBuf>,
    /// On ROLLBACK, the flag change that undoes the failure.
    pub rollback: Option<crate::verdict::rollback::RollbackPlan>,
    /// Each progressive exposure: how each step went and the largest that held.
    pub exposures: Vec<crate::verdict::exposure::ExposureReport>,
    /// Each flag matrix: its cells by outcome, with the criteria that failed in each.
    pub matrices: Vec<crate::verdict::matrix::MatrixReport>,
    /// Each stage that failed, with the flag changes that came before it.
    pub failures: Vec<crate::flags::telemetry::FailureFlags>,
    /// The `on_verdict` command that ran, if any.
    pub on_verdict: Option<ActionReport>,
    /// Set when a target stagegate started exited on its own during the run.
    pub target_exit: Option<String>,
    /// How many statistical tests (comparisons) the run made: they form one family,
    /// adjusted together (Holm) so that a good release rarely fails any by chance.
    pub statistical_tests: usize,
}

impl RunReport {
    /// Takes in what `event` says, so a report can be rebuilt from the events alone
    /// (when the runner itself failed before its last event).
    pub fn follow(&mut self, event: &Event) {
        match event {
            Event::StageFinished { report, assessments } => {
                self.stages.push((**report).clone());
                self.assessments.extend(assessments.iter().cloned());
            }
            Event::Fault(f) => match self
                .faults
                .iter_mut()
                .find(|x| x.stage == f.stage && x.index == f.index && x.started_secs == f.started_secs)
            {
                Some(known) => *known = f.clone(),
                None => self.faults.push(f.clone()),
            },
            Event::Aborted { reason, .. } => self.aborted = Some(reason.clone()),
            _ => {}
        }
    }

    /// The report of a run of `plan` that is beginning, its files going to `report_dir`.
    pub fn begin(plan: &crate::scenario::Plan, report_dir: Option<PathBuf>) -> RunReport {
        RunReport {
            report_version: REPORT_VERSION,
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
            steered_abort: None,
            steering: Vec::new(),
            error: None,
            verdict: None,
            reasons: Vec::new(),
            warnings: plan.warnings.clone(),
            stages: Vec::new(),
            distributed: None,
            assessments: Vec::new(),
            faults: Vec::new(),
            report_dir,
            rollback: None,
            exposures: Vec::new(),
            matrices: Vec::new(),
            failures: Vec::new(),
            on_verdict: None,
            target_exit: None,
            statistical_tests: 0,
        }
    }
}

/// What an `on_verdict` command did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ActionReport {
    pub command: Vec<String>,
    /// Its exit code (`None`: it could not start, or died by a signal).
    pub exit_code: Option<i32>,
    /// The end of its output (stdout then stderr), at most 4 KiB.
    pub output: String,
}

/// A character a name from the run (or a crafted saved report) may carry that a
/// reader must not get as it is: a control character (an escape sequence, a line
/// break) or a bidirectional override that reorders what is shown.
/// An assessment's criterion as report.json holds it, with its cohort when it was
/// judged on one (`data.lost == 0 [new-enricher=true cohort]`).
pub fn criterion_label(a: &serde_json::Value) -> String {
    let criterion = a["criterion"].as_str().unwrap_or_default();
    match a["cohort"].as_str() {
        Some(c) => format!("{criterion} [{c} cohort]"),
        None => criterion.to_string(),
    }
}

/// Whether `c` changes how text around it shows rather than showing itself: control
/// characters, and the direction marks, embeddings, overrides and isolates of Unicode's
/// bidirectional text.
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Something that consumes the run's events.
pub trait Reporter {
    fn event(&mut self, event: &Event);
}

/// Durations in reports are written as a scenario would write them (`250ms`).
pub mod serde_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::scenario::units::format_duration(*d))
    }
}

/// [`serde_duration`] for optional durations.
pub mod serde_opt_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::scenario::units::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}
