//! The rollback plan of a ROLLBACK: the flag change that undoes the failure.
//!
//! The failing stage is the first whose enforced criteria failed. The state to go back to
//! is the last stage before it that held (its enforced criteria judged, and none failed
//! or was inconclusive) with different flag states: a stage with the same flags that held
//! under milder conditions does not show those flags safe. When no such stage held, the
//! flags go back to their defaults. The plan lists each flag whose state differs, from
//! what to what; when none does, no flag change undoes the failure, and the plan says so.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::{Assessment, Level, Outcome};
use crate::flags::FlagState;

/// The name of the flagd file the plan is written as, in the run's folder.
pub const FLAGD_FILE: &str = "rollback.flagd.json";

/// One flag to change back.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FlagChange {
    pub flag: String,
    /// Its state in the failing stage.
    pub from: FlagState,
    /// The state to set.
    pub to: FlagState,
}

/// What to do about a ROLLBACK, in flags.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RollbackPlan {
    /// The first stage that failed.
    pub failed_stage: String,
    /// The stage whose flag states are restored; `None`: the flags' defaults.
    pub held_stage: Option<String>,
    /// Each flag whose state differs, from the failing stage's to the restored one.
    pub changes: Vec<FlagChange>,
    /// The changed flags at their restored state as a flagd flag file, when written.
    pub flagd_file: Option<PathBuf>,
    /// Why no flag change undoes the failure, when none does.
    pub note: Option<String>,
    /// The plan in words, as the terminal and the summaries give it.
    pub summary: String,
}

impl RollbackPlan {
    /// The changes as one JSON object, flag to restored state: the value itself for a
    /// fixed state, `{"split": ...}` for a fractional one (`STAGEGATE_ROLLBACK_FLAGS`).
    pub fn flags_json(&self) -> Value {
        let map = self
            .changes
            .iter()
            .map(|c| {
                let to = match &c.to {
                    FlagState::Fixed(v) => v.clone(),
                    split => serde_json::to_value(split).unwrap_or(Value::Null),
                };
                (c.flag.clone(), to)
            })
            .collect();
        Value::Object(map)
    }

    /// The restored states of the changed flags.
    pub fn restored(&self) -> BTreeMap<String, FlagState> {
        self.changes.iter().map(|c| (c.flag.clone(), c.to.clone())).collect()
    }

    /// The plan in one line: `set new-enricher true → false (as in `baseline`, ...)`.
    fn line(&self) -> String {
        if let Some(note) = &self.note {
            return note.clone();
        }
        let changes: Vec<String> =
            self.changes.iter().map(|c| format!("{} {} → {}", c.flag, c.from.describe(), c.to.describe())).collect();
        let source = match &self.held_stage {
            Some(s) => format!("as in `{s}`, the last stage that held"),
            None => "the flags' defaults: no earlier stage held".to_string(),
        };
        format!("set {} ({source})", changes.join(", "))
    }
}

/// One stage as the plan reads it: its name and flag states, in run order.
pub struct StageFlags<'a> {
    pub name: &'a str,
    pub flags: &'a BTreeMap<String, FlagState>,
}

/// The rollback plan, given the stages that ran in order, every assessment, and the
/// flags' defaults; `None` when no stage failed.
pub fn plan(
    stages: &[StageFlags],
    assessments: &[Assessment],
    defaults: &BTreeMap<String, Value>,
) -> Option<RollbackPlan> {
    let enforced = |stage: &str, outcome: Outcome| {
        assessments.iter().any(|a| a.stage == stage && a.level == Level::Enforce && a.outcome == outcome)
    };
    let failed = stages.iter().position(|s| enforced(s.name, Outcome::Fail))?;
    let failing = &stages[failed];
    let held = stages[..failed].iter().rev().find(|s| {
        s.flags != failing.flags
            && enforced(s.name, Outcome::Pass)
            && !enforced(s.name, Outcome::Fail)
            && !enforced(s.name, Outcome::Inconclusive)
    });
    let restored: BTreeMap<String, FlagState> = match held {
        Some(s) => s.flags.clone(),
        None => defaults.iter().map(|(k, v)| (k.clone(), FlagState::Fixed(v.clone()))).collect(),
    };
    let changes: Vec<FlagChange> = failing
        .flags
        .iter()
        .filter_map(|(flag, from)| {
            let to = restored.get(flag)?;
            (to != from).then(|| FlagChange { flag: flag.clone(), from: from.clone(), to: to.clone() })
        })
        .collect();
    let note = changes.is_empty().then(|| {
        format!(
            "no flag change undoes it: `{}` failed with the flags at their defaults, so the failure is not a flag's",
            failing.name
        )
    });
    let mut plan = RollbackPlan {
        failed_stage: failing.name.to_string(),
        held_stage: held.map(|s| s.name.to_string()),
        changes,
        flagd_file: None,
        note,
        summary: String::new(),
    };
    plan.summary = plan.line();
    Some(plan)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn assessed(stage: &str, outcome: Outcome) -> Assessment {
        Assessment {
            stage: stage.into(),
            criterion: "latency.p99 < 1s".into(),
            metric: "latency.p99".into(),
            measured: None,
            measured_text: "-".into(),
            limit_text: "< 1s".into(),
            samples: None,
            outcome,
            level: Level::Enforce,
            note: None,
            comparison: None,
            cohort: None,
        }
    }

    fn flags(pairs: &[(&str, FlagState)]) -> BTreeMap<String, FlagState> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn a_failing_stage_goes_back_to_the_last_stage_with_other_flags_that_held() {
        let off = flags(&[("new", FlagState::Fixed(json!(false))), ("other", FlagState::Fixed(json!("a")))]);
        let ten = flags(&[
            ("new", FlagState::Split { variants: vec![(json!(true), 0.1)], rest: json!(false) }),
            ("other", FlagState::Fixed(json!("a"))),
        ]);
        let on = flags(&[("new", FlagState::Fixed(json!(true))), ("other", FlagState::Fixed(json!("a")))]);
        let stages = [
            StageFlags { name: "baseline", flags: &off },
            StageFlags { name: "canary", flags: &ten },
            StageFlags { name: "candidate", flags: &on },
            StageFlags { name: "outage", flags: &on },
        ];
        let defaults = BTreeMap::from([("new".to_string(), json!(false)), ("other".to_string(), json!("a"))]);
        // `candidate` held with the same flags as the failing `outage`: it does not show
        // them safe; `canary` held with other flags.
        let a = [
            assessed("baseline", Outcome::Pass),
            assessed("canary", Outcome::Pass),
            assessed("candidate", Outcome::Pass),
            assessed("outage", Outcome::Fail),
        ];
        let p = plan(&stages, &a, &defaults).unwrap();
        assert_eq!(p.failed_stage, "outage");
        assert_eq!(p.held_stage.as_deref(), Some("canary"));
        assert_eq!(p.changes.len(), 1, "`other` is unchanged");
        assert_eq!(p.changes[0].from, FlagState::Fixed(json!(true)));
        assert_eq!(p.flags_json()["new"]["split"]["rest"], json!(false));

        // The canary inconclusive: back to the baseline.
        let a = [
            assessed("baseline", Outcome::Pass),
            assessed("canary", Outcome::Inconclusive),
            assessed("candidate", Outcome::Fail),
        ];
        let p = plan(&stages, &a, &defaults).unwrap();
        assert_eq!((p.failed_stage.as_str(), p.held_stage.as_deref()), ("candidate", Some("baseline")));
        assert_eq!(p.flags_json(), json!({ "new": false }));
        assert!(p.summary.contains("new true → false (as in `baseline`"), "{}", p.summary);

        // Nothing held: the defaults. A failure at the defaults: no flag undoes it.
        let a = [assessed("baseline", Outcome::Fail)];
        let p = plan(&stages, &a, &defaults).unwrap();
        assert!(p.changes.is_empty() && p.held_stage.is_none());
        assert!(p.note.as_deref().unwrap().contains("no flag change undoes it"));
        let a = [assessed("baseline", Outcome::Inconclusive), assessed("candidate", Outcome::Fail)];
        let p = plan(&stages, &a, &defaults).unwrap();
        assert_eq!((p.held_stage.as_deref(), p.flags_json()), (None, json!({ "new": false })));

        // No failure, no plan.
        assert!(plan(&stages, &[assessed("baseline", Outcome::Pass)], &defaults).is_none());
    }
}
