//! `stages[].matrix`: a stage expanded over combinations of flag values and fault sets,
//! every combination (`cartesian`) or enough to cover every pair of values
//! (`pairwise`), less the combinations `exclude` rules out.
//!
//! Each combination is a cell: a stage of its own named by its values
//! (`combos(new-enricher=true, tier=gold, faults=slow-store)`). Pairwise rows come from
//! [`crate::scenario::pairwise`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::super::pairwise::{Partial, TooMuch, pairwise};
use super::super::spec::*;
use super::super::yaml::{join_index, join_key};
use super::Ctx;
use super::faults;
use crate::deps::Dependency;
use crate::fault::Fault;
use crate::flags::{FlagSet, FlagType};
use crate::sut::Target;

/// The most cells one matrix may have: each is a stage of its own.
pub const MAX_CELLS: usize = 500;
/// The most dimensions (flags and the fault sets) one matrix may have.
pub const MAX_DIMENSIONS: usize = 32;
/// The longest a value may read in a cell's name.
pub const MAX_LABEL: usize = 64;

/// The name of the fault dimension in `exclude`, and in cell names.
pub const FAULTS: &str = "faults";

/// How the combinations are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Cartesian,
    Pairwise,
}

/// One dimension of a matrix: a flag's values, or the named fault sets.
pub struct Dim {
    /// The flag's key, or [`FAULTS`].
    pub name: String,
    /// Each value as a cell name shows it.
    pub labels: Vec<String>,
    pub values: DimValues,
}

pub enum DimValues {
    Flag(Vec<Value>),
    Faults(Vec<Vec<Fault>>),
}

/// A checked matrix: its dimensions and the rows chosen (one value index per dimension).
pub struct Matrix {
    pub mode: Mode,
    pub dims: Vec<Dim>,
    pub rows: Vec<Vec<usize>>,
    /// How many cells the full product would have had (for the plan).
    pub product: u128,
}

/// How a value reads in a cell's name: strings bare, others as JSON.
fn label(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn compile_matrix(
    ctx: &mut Ctx,
    at: &str,
    m: &MatrixSpec,
    flags: &Option<FlagSet>,
    stage_flags: &BTreeMap<String, Value>,
    deps: &[(String, Dependency)],
    target: &Option<Target>,
    duration: Option<Duration>,
) -> Option<Matrix> {
    let mut ok = true;
    let mode = match m.mode.as_deref() {
        None | Some("cartesian") => Mode::Cartesian,
        Some("pairwise") => Mode::Pairwise,
        Some(other) => {
            ctx.unknown(&join_key(at, "mode"), "matrix mode", other, &["cartesian", "pairwise"]);
            return None;
        }
    };
    let mut dims = Vec::new();
    let dimensions = m.flags.len() + usize::from(!m.faults.is_empty());
    if dimensions > MAX_DIMENSIONS {
        ctx.error(at, format!("{dimensions} dimensions; a matrix has at most {MAX_DIMENSIONS}"));
        return None;
    }
    // In the order written (the maps themselves are sorted), so cell names read as the
    // file does.
    let written_order = |ctx: &Ctx, section: &str, key: &str| {
        let pos = ctx.loc.key(&join_key(&join_key(at, section), key));
        (pos.line, pos.column)
    };
    let mut written: Vec<(&String, &Vec<Value>)> = m.flags.iter().collect();
    written.sort_by_key(|(key, _)| written_order(ctx, "flags", key));
    for (key, values) in written {
        let path = join_key(&join_key(at, "flags"), key);
        let def = flags.as_ref().and_then(|f| f.definitions.iter().find(|d| &d.key == key));
        let Some(def) = def else {
            let known: Vec<&str> = flags.iter().flat_map(|f| f.definitions.iter().map(|d| d.key.as_str())).collect();
            ctx.unknown(&path, "flag", key, &known);
            ok = false;
            continue;
        };
        if stage_flags.contains_key(key) {
            ctx.error(
                &join_key(&join_key(at.trim_end_matches(".matrix"), "flags"), key),
                format!("flag `{key}` takes each of its values from the stage's `matrix`; it cannot also be set here"),
            );
            ok = false;
        }
        if values.is_empty() {
            ctx.error(&path, format!("flag `{key}` needs at least one value in the matrix"));
            ok = false;
            continue;
        }
        if values.len() > MAX_CELLS {
            ctx.error(&path, format!("{} values; a matrix has at most {MAX_CELLS} cells", values.len()));
            ok = false;
            continue;
        }
        let mut seen: Vec<&Value> = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if !def.kind.admits(v) {
                ctx.error(
                    &join_index(&path, i),
                    format!("{v} is not a value of flag `{key}` ({})", format!("{:?}", def.kind).to_lowercase()),
                )
                .hint = (def.kind == FlagType::Boolean).then(|| "a boolean flag takes `true` or `false`".into());
                ok = false;
            } else if seen.iter().any(|s| same(s, v)) {
                ctx.error(&join_index(&path, i), format!("{v} is listed twice"));
                ok = false;
            } else if let Some(why) = unnameable(&label(v)) {
                ctx.error(&join_index(&path, i), format!("{v} cannot name a cell: {why}"));
                ok = false;
            }
            seen.push(v);
        }
        dims.push(Dim {
            name: key.clone(),
            labels: values.iter().map(label).collect(),
            values: DimValues::Flag(values.clone()),
        });
    }
    if !m.faults.is_empty() {
        let mut sets = Vec::new();
        let mut labels = Vec::new();
        if m.faults.len() > MAX_CELLS {
            ctx.error(
                &join_key(at, "faults"),
                format!("{} fault sets; a matrix has at most {MAX_CELLS} cells", m.faults.len()),
            );
            return None;
        }
        let mut written: Vec<(&String, &Vec<Value>)> = m.faults.iter().collect();
        written.sort_by_key(|(name, _)| written_order(ctx, "faults", name));
        for (name, list) in written {
            let set_at = join_key(&join_key(at, "faults"), name);
            if let Some(why) = unnameable(name) {
                ctx.error(&set_at, format!("`{name}` cannot name a cell: {why}"));
                ok = false;
            }
            let mut set = Vec::new();
            for (j, f) in list.iter().enumerate() {
                let path = join_index(&set_at, j);
                let Some(spec) = ctx.read::<FaultSpec>(&path, f) else {
                    ok = false;
                    continue;
                };
                match faults::compile(ctx, &path, &spec, deps, target, duration) {
                    Some(fault) => set.push(fault),
                    None => ok = false,
                }
            }
            labels.push(name.clone());
            sets.push(set);
        }
        dims.push(Dim { name: FAULTS.to_string(), labels, values: DimValues::Faults(sets) });
    }
    if !ok {
        return None;
    }
    if dims.is_empty() {
        ctx.error(at, "a matrix needs at least one flag (`flags: { NAME: [VALUES] }`) or fault set (`faults:`)");
        return None;
    }
    // The exclusions, as partial rows.
    let mut exclude: Vec<Partial> = Vec::new();
    for (i, rule) in m.exclude.iter().enumerate() {
        let rule_at = join_index(&join_key(at, "exclude"), i);
        if rule.is_empty() {
            ctx.error(&rule_at, "an empty exclusion rules out every cell");
            ok = false;
            continue;
        }
        let mut partial = Partial::new();
        for (key, value) in rule {
            let path = join_key(&rule_at, key);
            let Some(d) = dims.iter().position(|d| &d.name == key) else {
                let known: Vec<&str> = dims.iter().map(|d| d.name.as_str()).collect();
                ctx.unknown(&path, "matrix dimension", key, &known);
                ok = false;
                continue;
            };
            let index = match &dims[d].values {
                DimValues::Flag(values) => values.iter().position(|v| v == value),
                DimValues::Faults(_) => value.as_str().and_then(|n| dims[d].labels.iter().position(|l| l == n)),
            };
            match index {
                Some(v) => {
                    partial.insert(d, v);
                }
                None => {
                    let known: Vec<String> = dims[d].labels.clone();
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    ctx.unknown(&path, &format!("value of `{key}` in this matrix"), &label(value), &known);
                    ok = false;
                }
            }
        }
        exclude.push(partial);
    }
    if !ok {
        return None;
    }
    let levels: Vec<usize> = dims.iter().map(|d| d.labels.len()).collect();
    let product: u128 = levels.iter().fold(1u128, |p, &l| p.saturating_mul(l as u128));
    // Every pair of the two largest dimensions' values needs a cell of its own: past
    // the limit, no choice of cells can do.
    let mut sorted = levels.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let fewest = sorted.iter().take(2).product::<usize>();
    if mode == Mode::Pairwise && fewest > MAX_CELLS {
        ctx.error(
            at,
            format!("covering every pair of the two largest dimensions takes {fewest} cells; a matrix has at most {MAX_CELLS}"),
        )
        .hint = Some("give those dimensions fewer values".into());
        return None;
    }
    let excluded = |row: &[usize]| exclude.iter().any(|e| e.iter().all(|(&d, &v)| row[d] == v));
    let rows = match mode {
        Mode::Pairwise => match pairwise(&levels, &exclude, MAX_CELLS) {
            Ok(rows) => rows,
            Err(TooMuch::Rows) => {
                ctx.error(
                    at,
                    format!("covering every pair takes more than {MAX_CELLS} cells, the most a matrix has"),
                )
                .hint = Some("give the dimensions fewer values, or split the matrix in two stages".into());
                return None;
            }
            Err(TooMuch::Work) => {
                ctx.error(at, "these dimensions and exclusions take too long to cover pair by pair").hint =
                    Some("give the dimensions fewer values, or fewer exclusions".into());
                return None;
            }
        },
        Mode::Cartesian => {
            if product > MAX_CELLS as u128 * 4 {
                ctx.error(at, format!("the full product has {product} cells; a matrix has at most {MAX_CELLS}")).hint =
                    Some("use `mode: pairwise` to cover every pair of values with far fewer cells".into());
                return None;
            }
            let mut rows = Vec::new();
            let mut row = vec![0usize; levels.len()];
            'all: loop {
                if !excluded(&row) {
                    rows.push(row.clone());
                }
                for d in (0..levels.len()).rev() {
                    row[d] += 1;
                    if row[d] < levels[d] {
                        continue 'all;
                    }
                    row[d] = 0;
                }
                break;
            }
            rows
        }
    };
    if rows.is_empty() {
        ctx.error(&join_key(at, "exclude"), "the exclusions rule out every cell");
        return None;
    }
    if rows.len() > MAX_CELLS {
        ctx.error(at, format!("{} cells; a matrix has at most {MAX_CELLS}", rows.len())).hint =
            Some("use `mode: pairwise`, fewer values, or more exclusions".into());
        return None;
    }
    Some(Matrix { mode, dims, rows, product })
}

/// Whether two values of a flag are the same value (`1` and `1.0` are).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

/// Why a value cannot go into a cell's name, if it cannot: the name is printed on
/// terminals and in reports.
fn unnameable(label: &str) -> Option<String> {
    if label.chars().any(|c| c.is_control() || crate::report::hidden(c)) {
        return Some("it holds control or direction characters".into());
    }
    if label.chars().count() > MAX_LABEL {
        return Some(format!("it is longer than {MAX_LABEL} characters"));
    }
    None
}

impl Matrix {
    /// A cell's name: the stage's and each dimension's value (`combos(a=true, faults=slow)`).
    pub fn cell_name(&self, group: &str, row: &[usize]) -> String {
        let parts: Vec<String> =
            self.dims.iter().zip(row).map(|(d, &v)| format!("{}={}", d.name, d.labels[v])).collect();
        format!("{group}({})", parts.join(", "))
    }
}
