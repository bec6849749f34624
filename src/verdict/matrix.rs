//! How a flag matrix went: each cell's outcome and the criteria that failed in it, for
//! the report's grid. Pure: read back from the judged cells.

use serde::Serialize;

use super::{Assessment, Level, Outcome};
use crate::scenario::MatrixMode as Mode;
use crate::scenario::Stage;

/// How one cell came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CellOutcome {
    Passed,
    Failed,
    Inconclusive,
    /// Stopped before its end.
    Interrupted,
    /// The run stopped before it.
    NotRun,
}

/// One cell in the report.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CellReport {
    /// The cell's stage name.
    pub stage: String,
    /// The cell's value in each dimension, in the order of `dimensions`.
    pub values: Vec<String>,
    pub outcome: CellOutcome,
    /// The enforced criteria that failed in it, with what was measured.
    pub failed: Vec<String>,
}

/// A flag matrix in the report: a grid of cells by outcome.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct MatrixReport {
    /// The stage as written.
    pub stage: String,
    pub mode: Mode,
    /// Each flag's key, and `faults` for the fault sets.
    pub dimensions: Vec<String>,
    pub cells: Vec<CellReport>,
    /// The cells the full product would have had.
    pub product: u64,
}

/// Reads each matrix's cells back from the judged stages; `ran` gives each stage that
/// ran and whether it completed.
pub fn summarize(stages: &[Stage], ran: &[(&str, bool)], assessments: &[Assessment]) -> Vec<MatrixReport> {
    let mut out: Vec<MatrixReport> = Vec::new();
    for stage in stages {
        let Some(cell) = &stage.cell else { continue };
        let mine = || assessments.iter().filter(|a| a.stage == stage.name && a.level == Level::Enforce);
        let failed: Vec<String> = mine()
            .filter(|a| a.outcome == Outcome::Fail)
            .map(|a| format!("{} (measured {}, limit {})", a.label(), a.measured_text, a.limit_text))
            .collect();
        let outcome = match ran.iter().find(|(n, _)| *n == stage.name) {
            None => CellOutcome::NotRun,
            Some((_, false)) => CellOutcome::Interrupted,
            Some(_) if !failed.is_empty() => CellOutcome::Failed,
            Some(_) if mine().any(|a| a.outcome == Outcome::Inconclusive) => CellOutcome::Inconclusive,
            Some(_) => CellOutcome::Passed,
        };
        let report = CellReport {
            stage: stage.name.clone(),
            values: cell.values.iter().map(|(_, v)| v.clone()).collect(),
            outcome,
            failed,
        };
        match out.iter_mut().find(|m| m.stage == cell.group) {
            Some(m) => m.cells.push(report),
            None => out.push(MatrixReport {
                stage: cell.group.clone(),
                mode: cell.mode,
                dimensions: cell.values.iter().map(|(d, _)| d.clone()).collect(),
                cells: vec![report],
                product: u64::try_from(cell.product).unwrap_or(u64::MAX),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::MatrixCell;

    fn cell(name: &str, values: &[(&str, &str)]) -> Stage {
        Stage {
            name: name.into(),
            flags: Default::default(),
            faults: Vec::new(),
            duration: std::time::Duration::from_secs(2),
            exposure: None,
            cell: Some(MatrixCell {
                group: "combos".into(),
                mode: Mode::Cartesian,
                values: values.iter().map(|(d, v)| (d.to_string(), v.to_string())).collect(),
                index: 0,
                cells: 3,
                product: 4,
            }),
        }
    }

    #[test]
    fn each_cell_has_its_outcome_and_failed_criteria() {
        let stages = [
            cell("combos(a=true)", &[("a", "true")]),
            cell("combos(a=false)", &[("a", "false")]),
            cell("combos(a=x)", &[("a", "x")]),
        ];
        let failed = Assessment {
            stage: "combos(a=true)".into(),
            criterion: "data.corrupted == 0".into(),
            metric: "data.corrupted".into(),
            measured: Some(3.0),
            measured_text: "3".into(),
            limit_text: "== 0".into(),
            samples: Some(200),
            outcome: Outcome::Fail,
            level: Level::Enforce,
            note: None,
            comparison: None,
            cohort: None,
        };
        let passed = Assessment { stage: "combos(a=false)".into(), outcome: Outcome::Pass, ..failed.clone() };
        let ran = [("combos(a=true)", true), ("combos(a=false)", true)];
        let m = &summarize(&stages, &ran, &[failed, passed])[0];
        assert_eq!(m.dimensions, ["a"]);
        let outcomes: Vec<CellOutcome> = m.cells.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [CellOutcome::Failed, CellOutcome::Passed, CellOutcome::NotRun]);
        assert_eq!(m.cells[0].failed, ["data.corrupted == 0 (measured 3, limit == 0)"]);
        assert_eq!(m.cells[0].values, ["true"]);
    }
}
