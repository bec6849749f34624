//! Flag telemetry for the report: per flag and stage, how its variants compared in the
//! same window (latency and errors of the records on each side of a split), and across
//! the run, the flag changes that came before each failure: since the last stage that
//! held, the state known to be good.
//!
//! Pure functions over a stage's flag states and metrics, and over the stages that ran.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::FlagState;
use crate::measure::{SliceMetrics, StageMetrics};
use crate::verdict::rollback::FlagChange;
use crate::verdict::{Assessment, Level, Outcome};

/// A split flag's variant against the flag's other records, over the same stage.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct VariantDifference {
    pub flag: String,
    /// The variant (`true`), and the value the rest of the records saw (`false`).
    pub variant: String,
    pub against: String,
    /// Judged requests on each side.
    pub requests: u64,
    pub against_requests: u64,
    /// The variant's latency less the rest's, in ms (`None`: a side had no sample).
    pub p50_diff_ms: Option<f64>,
    pub p99_diff_ms: Option<f64>,
    /// The variant's error rate less the rest's (a difference of proportions).
    pub error_rate_diff: f64,
}

/// How each split flag's variants compared in a stage. With several flags split in one
/// stage, each cohort mixes the others' variants, so no flag's difference is its own:
/// none is given.
pub fn differences(flags: &BTreeMap<String, FlagState>, metrics: &StageMetrics) -> Vec<VariantDifference> {
    let mut split = flags.iter().filter(|(_, s)| matches!(s, FlagState::Split { .. }));
    let (Some((flag, FlagState::Split { variants, rest })), None) = (split.next(), split.next()) else {
        return Vec::new();
    };
    let slice = |v: &Value| metrics.variants.get(&format!("{flag}={v}")).cloned().unwrap_or_default();
    let others: SliceMetrics = slice(rest);
    let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    variants
        .iter()
        .filter(|(v, _)| v != rest)
        .map(|(v, _)| {
            let mine = slice(v);
            VariantDifference {
                flag: flag.to_string(),
                variant: text(v),
                against: text(rest),
                requests: mine.requests,
                against_requests: others.requests,
                p50_diff_ms: diff(mine.latency.p50, others.latency.p50),
                p99_diff_ms: diff(mine.latency.p99, others.latency.p99),
                error_rate_diff: mine.error_rate() - others.error_rate(),
            }
        })
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// A failed stage and the flag changes that came before it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FailureFlags {
    pub stage: String,
    /// The enforced criteria that failed there.
    pub failed: Vec<String>,
    /// The last stage before it that held (every enforced criterion passed), whose
    /// flags it is compared with; `None`: none held, so it is compared with the flags'
    /// defaults.
    pub since: Option<String>,
    /// Each flag whose state differs from that stage's (empty: the failure came with
    /// the flags of a state that held, so faults, load or something else than a flag
    /// brought it).
    pub changes: Vec<FlagChange>,
    /// In words: "`candidate` failed after new-enricher false → true (since `baseline`)".
    pub summary: String,
}

/// For each stage with an enforced criterion that failed, in run order, the flag
/// changes since the last stage before it that held. `stages` are the stages that ran,
/// in order.
pub fn preceding_changes(
    stages: &[(&str, &BTreeMap<String, FlagState>)],
    assessments: &[Assessment],
    defaults: &BTreeMap<String, Value>,
) -> Vec<FailureFlags> {
    let defaults: BTreeMap<String, FlagState> =
        defaults.iter().map(|(k, v)| (k.clone(), FlagState::Fixed(v.clone()))).collect();
    let enforced = |stage: &str, outcome: Outcome| {
        assessments.iter().any(|a| a.stage == stage && a.level == Level::Enforce && a.outcome == outcome)
    };
    let held = |stage: &str| {
        enforced(stage, Outcome::Pass) && !enforced(stage, Outcome::Fail) && !enforced(stage, Outcome::Inconclusive)
    };
    let mut out = Vec::new();
    for (i, (name, flags)) in stages.iter().enumerate() {
        let failed: Vec<String> = assessments
            .iter()
            .filter(|a| a.stage == *name && a.level == Level::Enforce && a.outcome == Outcome::Fail)
            .map(Assessment::label)
            .collect();
        if failed.is_empty() {
            continue;
        }
        let (since, before) = match stages[..i].iter().rev().find(|(n, _)| held(n)) {
            Some((n, f)) => (Some(n.to_string()), *f),
            None => (None, &defaults),
        };
        let changes = flags
            .iter()
            .filter_map(|(flag, now)| {
                let was = before.get(flag)?;
                (was != now).then(|| FlagChange { flag: flag.clone(), from: was.clone(), to: now.clone() })
            })
            .collect();
        let mut f = FailureFlags { stage: name.to_string(), failed, since, changes, summary: String::new() };
        f.summary = f.line();
        out.push(f);
    }
    out
}

impl FailureFlags {
    fn line(&self) -> String {
        let since = self.since.as_ref().map_or("the flag defaults (no stage held before it)".to_string(), |s| {
            format!("`{s}`, the last stage that held")
        });
        if self.changes.is_empty() {
            return format!("`{}` failed with the flags of {since}: not a flag change's doing", self.stage);
        }
        let changes: Vec<String> =
            self.changes.iter().map(|c| format!("{} {} → {}", c.flag, c.from.describe(), c.to.describe())).collect();
        format!("`{}` failed after {} (since {since})", self.stage, changes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::LatencySummary;
    use serde_json::json;

    fn slice(requests: u64, errors: u64, p50: f64, p99: f64) -> SliceMetrics {
        SliceMetrics {
            requests,
            errors,
            latency: LatencySummary { p50: Some(p50), p99: Some(p99), ..LatencySummary::default() },
            ..SliceMetrics::default()
        }
    }

    #[test]
    fn a_split_flags_variant_is_compared_with_the_rest_in_the_same_stage() {
        let flags = BTreeMap::from([(
            "new-enricher".to_string(),
            FlagState::Split { variants: vec![(json!(true), 0.3)], rest: json!(false) },
        )]);
        let mut m = StageMetrics::default();
        m.variants.insert("new-enricher=true".into(), slice(300, 6, 12.0, 40.0));
        m.variants.insert("new-enricher=false".into(), slice(700, 0, 10.0, 25.0));
        let d = &differences(&flags, &m)[0];
        assert_eq!(
            (d.variant.as_str(), d.against.as_str(), d.requests, d.against_requests),
            ("true", "false", 300, 700)
        );
        assert_eq!((d.p50_diff_ms, d.p99_diff_ms), (Some(2.0), Some(15.0)));
        assert!((d.error_rate_diff - 0.02).abs() < 1e-12);
        let two = BTreeMap::from([
            ("a".to_string(), FlagState::Split { variants: vec![(json!(true), 0.5)], rest: json!(false) }),
            ("b".to_string(), FlagState::Split { variants: vec![(json!(true), 0.5)], rest: json!(false) }),
        ]);
        assert!(differences(&two, &m).is_empty(), "two splits mix their cohorts");
    }

    #[test]
    fn each_failure_names_the_flag_changes_since_the_last_stage_that_held() {
        let off = BTreeMap::from([("f".to_string(), FlagState::Fixed(json!(false)))]);
        let on = BTreeMap::from([("f".to_string(), FlagState::Fixed(json!(true)))]);
        let judged = |stage: &str, outcome: Outcome| Assessment {
            stage: stage.into(),
            criterion: "data.lost == 0".into(),
            metric: "data.lost".into(),
            measured: Some(1.0),
            measured_text: "1".into(),
            limit_text: "== 0".into(),
            samples: Some(100),
            outcome,
            level: Level::Enforce,
            note: None,
            comparison: None,
            cohort: None,
        };
        let stages = [("baseline", &off), ("candidate", &on), ("outage", &on)];
        let defaults = BTreeMap::from([("f".to_string(), json!(false))]);
        let assessments =
            [judged("baseline", Outcome::Pass), judged("candidate", Outcome::Fail), judged("outage", Outcome::Fail)];
        let list = preceding_changes(&stages, &assessments, &defaults);
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0].summary,
            "`candidate` failed after f false → true (since `baseline`, the last stage that held)"
        );
        // Not against `candidate`, which failed too: the flag is still the change.
        assert_eq!(
            list[1].summary,
            "`outage` failed after f false → true (since `baseline`, the last stage that held)"
        );
        let first = preceding_changes(&stages[..1], &[judged("baseline", Outcome::Fail)], &defaults);
        assert_eq!(
            first[0].summary,
            "`baseline` failed with the flags of the flag defaults (no stage held before it): not a flag change's doing"
        );
    }
}
