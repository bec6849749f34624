//! How a progressive exposure went: each step held, failed, stayed inconclusive or was
//! not run, and the largest exposure that held.
//!
//! A step is a stage of its own (`rollout@10%`), judged on all its records and on its
//! exposed cohort. [`summarize`] reads the judged steps back into one
//! [`ExposureReport`] per exposure, with a sentence for the verdict ("held at 10%,
//! failed at 50%: ..."). Pure: the runner decides which steps run.

use serde::Serialize;
use serde_json::Value;

use super::{Assessment, Level, Outcome};
use crate::scenario::{Stage, units};

/// How one step came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Every enforced criterion held, on the whole step and on its cohort.
    Held,
    Failed,
    /// Nothing failed, but something could not be judged (too few samples in the cohort,
    /// say): not a pass.
    Inconclusive,
    /// Stopped before its end (Ctrl-C, or the run broke).
    Interrupted,
    /// An earlier step failed, or the run stopped before it.
    NotRun,
}

/// One step of an exposure in the report.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StepReport {
    /// The step's stage name (`rollout@10%`).
    pub stage: String,
    /// The share of records exposed, 0 to 1.
    pub share: f64,
    pub outcome: StepOutcome,
    /// The enforced criteria that failed, each with what was measured and where.
    pub failed: Vec<String>,
}

/// A progressive exposure in the report.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ExposureReport {
    /// The stage as written (its steps are `STAGE@SHARE`).
    pub stage: String,
    pub flag: String,
    /// The value exposed.
    pub value: Value,
    pub steps: Vec<StepReport>,
    /// The largest share that held before the first failure (`None`: none held).
    pub held_at: Option<f64>,
    /// The share of the first step that failed.
    pub failed_at: Option<f64>,
    /// In words: `held at 10%, failed at 50%: ...`.
    pub summary: String,
}

/// Reads each exposure's steps back from the judged stages. `ran` gives each stage
/// that ran and whether it completed.
pub fn summarize(stages: &[Stage], ran: &[(&str, bool)], assessments: &[Assessment]) -> Vec<ExposureReport> {
    let mut out: Vec<ExposureReport> = Vec::new();
    for stage in stages {
        let Some(step) = &stage.exposure else { continue };
        let mine = || assessments.iter().filter(|a| a.stage == stage.name && a.level == Level::Enforce);
        let failed: Vec<String> = mine().filter(|a| a.outcome == Outcome::Fail).map(describe).collect();
        let outcome = match ran.iter().find(|(n, _)| *n == stage.name) {
            None => StepOutcome::NotRun,
            Some((_, false)) => StepOutcome::Interrupted,
            Some(_) if !failed.is_empty() => StepOutcome::Failed,
            Some(_) if mine().any(|a| a.outcome == Outcome::Inconclusive) => StepOutcome::Inconclusive,
            Some(_) => StepOutcome::Held,
        };
        let report = StepReport { stage: stage.name.clone(), share: step.share, outcome, failed };
        match out.iter_mut().find(|e| e.stage == step.group) {
            Some(e) => e.steps.push(report),
            None => out.push(ExposureReport {
                stage: step.group.clone(),
                flag: step.flag.clone(),
                value: step.value.clone(),
                steps: vec![report],
                held_at: None,
                failed_at: None,
                summary: String::new(),
            }),
        }
    }
    for e in &mut out {
        let first_failure = e.steps.iter().position(|s| s.outcome == StepOutcome::Failed);
        let before = &e.steps[..first_failure.unwrap_or(e.steps.len())];
        e.held_at = before.iter().filter(|s| s.outcome == StepOutcome::Held).map(|s| s.share).next_back();
        e.failed_at = first_failure.map(|i| e.steps[i].share);
        e.summary = sentence(e, first_failure);
    }
    out
}

/// A failed assessment as the verdict names it: metric, value, limit and cohort.
fn describe(a: &Assessment) -> String {
    let place = a.cohort.as_ref().map(|c| format!(" in the {c} cohort")).unwrap_or_default();
    format!("{} {} (limit {}){place}", a.metric, a.measured_text, a.limit_text)
}

fn sentence(e: &ExposureReport, first_failure: Option<usize>) -> String {
    let share = units::format_share;
    let shares_of = |outcome: StepOutcome| -> Vec<String> {
        e.steps.iter().filter(|s| s.outcome == outcome).map(|s| share(s.share)).collect()
    };
    let held = match e.held_at {
        Some(s) => format!("held at {}", share(s)),
        None => "nothing held".to_string(),
    };
    // Steps that neither held nor failed, in step order, beside the largest that held.
    let mut aside = Vec::new();
    let inconclusive = shares_of(StepOutcome::Inconclusive);
    if !inconclusive.is_empty() {
        aside.push(format!("{} inconclusive", inconclusive.join(", ")));
    }
    let interrupted = shares_of(StepOutcome::Interrupted);
    if !interrupted.is_empty() {
        aside.push(format!("{} interrupted", interrupted.join(", ")));
    }
    let not_run = shares_of(StepOutcome::NotRun);
    let mut text = if aside.is_empty() { held } else { format!("{held} ({})", aside.join("; ")) };
    if let Some(i) = first_failure {
        let step = &e.steps[i];
        // The cohort's failure first: it is the one the exposure is about.
        let mut failed = step.failed.clone();
        failed.sort_by_key(|f| !f.contains(" cohort"));
        // A metric that failed in the cohort is not named again for the whole step.
        let metric = |f: &str| f.split(' ').next().unwrap_or_default().to_string();
        let in_cohort: Vec<String> = failed.iter().filter(|f| f.contains(" cohort")).map(|f| metric(f)).collect();
        failed.retain(|f| f.contains(" cohort") || !in_cohort.contains(&metric(f)));
        text = format!("{text}, failed at {}: {}", share(step.share), failed.join("; "));
    }
    if !not_run.is_empty() {
        text.push_str(&format!(" ({} not run)", not_run.join(", ")));
    }
    format!("exposure `{}` of `{}`: {text}", e.stage, e.flag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::ExposureStep;

    fn steps(shares: &[f64]) -> Vec<Stage> {
        shares
            .iter()
            .enumerate()
            .map(|(index, &share)| Stage {
                name: crate::scenario::step_name("rollout", share),
                flags: Default::default(),
                faults: Vec::new(),
                duration: std::time::Duration::from_secs(5),
                exposure: Some(ExposureStep {
                    group: "rollout".into(),
                    flag: "new-enricher".into(),
                    value: Value::Bool(true),
                    share,
                    index,
                    steps: shares.len(),
                }),
                cell: None,
            })
            .collect()
    }

    fn assessed(stage: &str, outcome: Outcome, cohort: Option<&str>) -> Assessment {
        Assessment {
            stage: stage.into(),
            criterion: "data.duplicated == 0".into(),
            metric: "data.duplicated".into(),
            measured: Some(4.0),
            measured_text: "4".into(),
            limit_text: "== 0".into(),
            samples: Some(500),
            outcome,
            level: Level::Enforce,
            note: None,
            comparison: None,
            cohort: cohort.map(str::to_string),
        }
    }

    #[test]
    fn names_the_largest_step_that_held_the_failure_and_the_steps_not_run() {
        let stages = steps(&[0.01, 0.1, 0.5, 1.0]);
        let ran = [("rollout@1%", true), ("rollout@10%", true), ("rollout@50%", true)];
        let assessments = [
            assessed("rollout@1%", Outcome::Pass, None),
            assessed("rollout@1%", Outcome::Inconclusive, Some("new-enricher=true")),
            assessed("rollout@10%", Outcome::Pass, None),
            assessed("rollout@10%", Outcome::Pass, Some("new-enricher=true")),
            assessed("rollout@50%", Outcome::Fail, None),
            assessed("rollout@50%", Outcome::Fail, Some("new-enricher=true")),
        ];
        let e = &summarize(&stages, &ran, &assessments)[0];
        let outcomes: Vec<StepOutcome> = e.steps.iter().map(|s| s.outcome).collect();
        use StepOutcome::*;
        assert_eq!(outcomes, [Inconclusive, Held, Failed, NotRun]);
        assert_eq!((e.held_at, e.failed_at), (Some(0.1), Some(0.5)));
        assert_eq!(
            e.summary,
            "exposure `rollout` of `new-enricher`: held at 10% (1% inconclusive), failed at 50%: \
             data.duplicated 4 (limit == 0) in the new-enricher=true cohort (100% not run)"
        );
    }

    #[test]
    fn a_first_step_that_fails_holds_nothing_and_a_clean_run_holds_the_last() {
        let stages = steps(&[0.1, 1.0]);
        let failed = summarize(&stages, &[("rollout@10%", true)], &[assessed("rollout@10%", Outcome::Fail, None)]);
        assert_eq!(failed[0].held_at, None);
        assert!(failed[0].summary.contains("nothing held, failed at 10%"), "{}", failed[0].summary);
        let ran = [("rollout@10%", true), ("rollout@100%", true)];
        let clean = summarize(
            &stages,
            &ran,
            &[assessed("rollout@10%", Outcome::Pass, None), assessed("rollout@100%", Outcome::Pass, None)],
        );
        assert_eq!((clean[0].held_at, clean[0].failed_at), (Some(1.0), None));
        assert_eq!(clean[0].summary, "exposure `rollout` of `new-enricher`: held at 100%");
    }

    #[test]
    fn a_warning_does_not_fail_a_step_and_an_interrupted_step_is_said() {
        let stages = steps(&[0.1, 0.5]);
        let mut warned = assessed("rollout@10%", Outcome::Fail, None);
        warned.level = Level::Warn;
        let e = &summarize(&stages, &[("rollout@10%", true), ("rollout@50%", false)], &[warned])[0];
        assert_eq!(e.steps[0].outcome, StepOutcome::Held);
        assert_eq!(e.steps[1].outcome, StepOutcome::Interrupted);
        assert!(e.summary.contains("held at 10% (50% interrupted)"), "{}", e.summary);
    }
}
