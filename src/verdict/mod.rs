//! Criteria and the verdict: pure functions from stage metrics to PROMOTE, ROLLBACK or
//! INCONCLUSIVE.
//!
//! A [`Criterion`] is a [`Check`] (`latency.p99 < 250ms`) with the stages it applies to.
//! [`assess`] judges one stage and returns one [`Assessment`] per applicable criterion;
//! [`fold`] combines every assessment worst-wins. Nothing here does I/O, so every rule is
//! unit-tested without a network. Parsing the check text lives here too (`check.rs`),
//! so the scenario loader and the rules agree on what a metric is.

mod check;

pub use check::{Check, Metric, Op, parse_check};

use serde::Serialize;

use crate::measure::StageMetrics;

/// How much a criterion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Decides the verdict.
    #[default]
    Enforce,
    /// Reported, never blocks.
    Warn,
    /// Measured only.
    Observe,
}

/// A judged rule from the scenario's `criteria` list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Criterion {
    pub check: Check,
    /// The stages it applies to; `None` for all.
    pub stages: Option<Vec<String>>,
    pub level: Level,
    /// Fewer judged samples than this makes the criterion INCONCLUSIVE.
    pub min_samples: u64,
}

/// The default for `min_samples`: below this many judged requests a quantile says
/// too little to pass or fail a candidate on.
pub const DEFAULT_MIN_SAMPLES: u64 = 100;

/// How one criterion came out in one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

/// One criterion judged in one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub stage: String,
    /// The check as written, e.g. `latency.p99 < 250ms`.
    pub criterion: String,
    pub metric: String,
    /// The measured value in the metric's unit (milliseconds for latency).
    pub measured: Option<f64>,
    /// The measured value as a user reads it, e.g. `212.4ms`.
    pub measured_text: String,
    pub limit_text: String,
    pub outcome: Outcome,
    pub level: Level,
    /// Why it is inconclusive, when it is.
    pub note: Option<String>,
}

/// The final answer of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Promote,
    Rollback,
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Promote => "PROMOTE",
            Verdict::Rollback => "ROLLBACK",
            Verdict::Inconclusive => "INCONCLUSIVE",
        })
    }
}

/// The criteria that judge `stage`: those naming it, plus the general ones on metrics
/// that no stage-specific criterion already covers there.
pub fn applicable<'a>(criteria: &'a [Criterion], stage: &str) -> Vec<&'a Criterion> {
    let named: Vec<&Criterion> = criteria
        .iter()
        .filter(|c| {
            c.stages
                .as_ref()
                .is_some_and(|s| s.iter().any(|n| n == stage))
        })
        .collect();
    let general = criteria
        .iter()
        .filter(|c| c.stages.is_none() && !named.iter().any(|n| n.check.metric == c.check.metric));
    general.chain(named.iter().copied()).collect()
}

/// Judges one stage's metrics against every applicable criterion.
pub fn assess(criteria: &[Criterion], stage: &str, metrics: &StageMetrics) -> Vec<Assessment> {
    applicable(criteria, stage)
        .into_iter()
        .map(|c| {
            let samples = c.check.metric.samples(metrics);
            let measured = c.check.metric.value(metrics);
            let (outcome, note) = match measured {
                _ if samples < c.min_samples => (
                    Outcome::Inconclusive,
                    Some(format!(
                        "{samples} samples, fewer than the {} required",
                        c.min_samples
                    )),
                ),
                None => (Outcome::Inconclusive, Some("no samples".to_string())),
                Some(v) if c.check.op.holds(v, c.check.limit) => (Outcome::Pass, None),
                Some(_) => (Outcome::Fail, None),
            };
            Assessment {
                stage: stage.to_string(),
                criterion: c.check.text.clone(),
                metric: c.check.metric.to_string(),
                measured,
                measured_text: measured.map_or("-".into(), |v| c.check.metric.render(v)),
                limit_text: format!("{} {}", c.check.op, c.check.metric.render(c.check.limit)),
                outcome,
                level: c.level,
                note,
            }
        })
        .collect()
}

/// Folds every assessment into the verdict, worst wins: an enforced failure rolls back;
/// otherwise an enforced inconclusive criterion makes the run inconclusive. `warn` and
/// `observe` criteria never change the verdict.
pub fn fold(assessments: &[Assessment]) -> Verdict {
    let enforced = assessments.iter().filter(|a| a.level == Level::Enforce);
    let mut verdict = Verdict::Promote;
    for a in enforced {
        match a.outcome {
            Outcome::Fail => return Verdict::Rollback,
            Outcome::Inconclusive => verdict = Verdict::Inconclusive,
            Outcome::Pass => {}
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::LatencySummary;
    use crate::quality::DataCounts;

    fn criterion(text: &str, stages: Option<&[&str]>) -> Criterion {
        Criterion {
            check: parse_check(text).unwrap(),
            stages: stages.map(|s| s.iter().map(|x| x.to_string()).collect()),
            level: Level::Enforce,
            min_samples: DEFAULT_MIN_SAMPLES,
        }
    }

    fn metrics(p99: f64, errors: u64, duplicated: u64) -> StageMetrics {
        StageMetrics {
            requests: 1000,
            errors,
            latency: LatencySummary {
                p99: Some(p99),
                ..Default::default()
            },
            data: DataCounts {
                sent: 1000,
                acked: 1000,
                duplicated,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_stage_criterion_replaces_the_general_one_on_its_metric() {
        let criteria = vec![
            criterion("latency.p99 < 250ms", None),
            criterion("errors.rate < 1%", None),
            criterion("latency.p99 < 400ms", Some(&["slow"])),
        ];
        let slow: Vec<_> = applicable(&criteria, "slow")
            .iter()
            .map(|c| c.check.text.clone())
            .collect();
        assert_eq!(slow, vec!["errors.rate < 1%", "latency.p99 < 400ms"]);
        let other = applicable(&criteria, "baseline");
        assert_eq!(other.len(), 2);
        let a = assess(&criteria, "slow", &metrics(300.0, 0, 0));
        assert_eq!(fold(&a), Verdict::Promote);
        let b = assess(&criteria, "baseline", &metrics(300.0, 0, 0));
        assert_eq!(fold(&b), Verdict::Rollback);
    }

    #[test]
    fn failure_beats_inconclusive_beats_pass() {
        let criteria = vec![
            criterion("data.duplicated == 0", None),
            criterion("errors.rate < 1%", None),
        ];
        let ok = assess(&criteria, "s", &metrics(1.0, 0, 0));
        assert_eq!(fold(&ok), Verdict::Promote);
        let dup = assess(&criteria, "s", &metrics(1.0, 0, 3));
        assert_eq!(fold(&dup), Verdict::Rollback);
        let failed = dup.iter().find(|a| a.outcome == Outcome::Fail).unwrap();
        assert_eq!(failed.measured_text, "3");
        assert_eq!(failed.limit_text, "== 0");
        let mut few = metrics(1.0, 0, 0);
        few.requests = 10;
        few.data.sent = 10;
        let thin = assess(&criteria, "s", &few);
        assert_eq!(fold(&thin), Verdict::Inconclusive);
        let mut all = thin.clone();
        all.extend(dup);
        assert_eq!(fold(&all), Verdict::Rollback);
    }

    #[test]
    fn warn_level_never_blocks() {
        let mut c = criterion("errors.rate < 1%", None);
        c.level = Level::Warn;
        let a = assess(&[c], "s", &metrics(1.0, 500, 0));
        assert_eq!(a[0].outcome, Outcome::Fail);
        assert_eq!(fold(&a), Verdict::Promote);
    }
}
