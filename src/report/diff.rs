//! `stagegate compare OLD NEW`: two saved runs of one scenario, stage by stage, so a
//! team can gate on "no worse than the last release".
//!
//! Each stage present in both runs is compared three ways: latency by the stages' time
//! windows, paired window against window since the two runs share a schedule (a
//! Wilcoxon signed-rank test of the differences beyond the tolerance, with drift and
//! the smallest detectable shift read from those differences), the error rate in
//! percentage points (windows paired the same way), and
//! the data counts (a record more lost, duplicated or corrupted in NEW is a regression:
//! those are never noise). The latency and error tests of all stages are one family,
//! adjusted together (Holm) as a run's comparisons are. NEW regressed (exit 1) when any
//! comparison fails; otherwise an inconclusive one makes the answer inconclusive (3).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::exit;
use crate::measure::Window;
use crate::scenario::units;
use crate::verdict::{Compare, CompareMetric, Outcome, Sides, Tolerance, decide, run_compare};

/// Reads a run's report.json (the folder, or the file itself).
pub fn read_report(at: &Path) -> Result<Value, String> {
    let file = if at.is_dir() { at.join("report.json") } else { at.to_path_buf() };
    let text = crate::limits::read_bounded(&file, crate::limits::REPORT_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a stagegate report: {e}", file.display()))?;
    if !doc["stages"].is_array() || !doc["scenario"].is_string() {
        return Err(format!("{} is not a stagegate report (no `scenario` and `stages`)", file.display()));
    }
    check_shape(&doc).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(v) = doc["report_version"].as_u64()
        && v > u64::from(super::REPORT_VERSION)
    {
        return Err(format!(
            "{} has report_version {v}, newer than this stagegate reads ({}); use a newer stagegate",
            file.display(),
            super::REPORT_VERSION
        ));
    }
    Ok(doc)
}

/// The most of each list a saved report may hold: more than any run writes, few enough
/// that rendering and comparing stay bounded in time and memory.
const MAX_STAGES: usize = 1000;
const MAX_POINTS: usize = 2 * crate::measure::series::MAX_POINTS as usize;
const MAX_WINDOWS: usize = 200;
const MAX_HISTOGRAMS: usize = 64;
const MAX_ROWS: usize = 100_000;

/// Checks what rendering and comparing read: list sizes, stage names (unique strings),
/// and numbers that must be finite.
fn check_shape(doc: &Value) -> Result<(), String> {
    let none = Vec::new();
    let stages = doc["stages"].as_array().unwrap_or(&none);
    if stages.len() > MAX_STAGES {
        return Err(format!("{} stages, more than the {MAX_STAGES} a report may hold", stages.len()));
    }
    for key in ["assessments", "faults", "reasons", "warnings", "overrides"] {
        if doc[key].as_array().is_some_and(|a| a.len() > MAX_ROWS) {
            return Err(format!("`{key}` holds more than {MAX_ROWS} entries"));
        }
    }
    let histograms: usize = stages.iter().map(|s| s["histograms"].as_array().map_or(0, Vec::len)).sum();
    if histograms > 4 * MAX_HISTOGRAMS * 16 {
        return Err(format!("{histograms} histograms, more than the {} a report may hold", 4 * MAX_HISTOGRAMS * 16));
    }
    let mut names = std::collections::HashSet::new();
    for (i, st) in stages.iter().enumerate() {
        let Some(name) = st["name"].as_str() else {
            return Err(format!("stages[{i}].name is not a string"));
        };
        if !names.insert(name) {
            return Err(format!("stages[{i}]: the stage name `{name}` comes twice"));
        }
        let len = |v: &Value| v.as_array().map_or(0, Vec::len);
        for (key, max) in [("series.points", MAX_POINTS), ("windows", MAX_WINDOWS), ("histograms", MAX_HISTOGRAMS)] {
            let v = key.split('.').fold(st, |v, k| &v[k]);
            if len(v) > max {
                return Err(format!("stages[{i}].{key} holds {} entries, more than {max}", len(v)));
            }
        }
        // The figures the summaries and charts show: in range, or refused.
        let in_range = |v: &Value| v.is_null() || v.as_f64().is_some_and(|x| (0.0..1e12).contains(&x));
        let m = &st["metrics"];
        for k in ["p50", "p90", "p95", "p99", "p999", "max", "mean"] {
            if !in_range(&m["latency"][k]) {
                return Err(format!("stages[{i}].metrics.latency.{k} is {}, outside [0, 1e12)", m["latency"][k]));
            }
        }
        for k in ["requests", "errors", "warmup_requests"] {
            if !m[k].is_null() && m[k].as_u64().is_none_or(|n| n > 1_000_000_000_000) {
                return Err(format!("stages[{i}].metrics.{k} is {}, not a count", m[k]));
            }
        }
        if m["errors"].as_u64() > m["requests"].as_u64() {
            return Err(format!("stages[{i}].metrics has more errors than requests"));
        }
        for (j, p) in st["series"]["points"].as_array().unwrap_or(&none).iter().enumerate() {
            for k in ["at_secs", "p50_ms", "p99_ms", "max_ms"] {
                if !in_range(&p[k]) {
                    return Err(format!("stages[{i}].series.points[{j}].{k} is {}, outside [0, 1e12)", p[k]));
                }
            }
        }
        for (j, w) in st["windows"].as_array().unwrap_or(&none).iter().enumerate() {
            for k in ["from_secs", "p50_ms", "p99_ms"] {
                if w[k].as_f64().is_some_and(|x| !(0.0..1e12).contains(&x)) {
                    return Err(format!("stages[{i}].windows[{j}].{k} is {}, outside [0, 1e12)", w[k]));
                }
            }
            if w["errors"].as_u64() > w["requests"].as_u64() {
                return Err(format!("stages[{i}].windows[{j}] has more errors than requests"));
            }
        }
    }
    Ok(())
}

/// One stage compared.
#[derive(Debug)]
pub struct StageDiff {
    pub stage: String,
    pub what: &'static str,
    pub old: String,
    pub new: String,
    pub outcome: Outcome,
    pub note: String,
}

/// The options of a comparison of runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `None`: 10%, or 2 ms when that is less ([`default_tolerance`]).
    pub latency: Option<Tolerance>,
    pub errors: f64,
    pub confidence: f64,
}

/// Compares the stages of `old` and `new`.
pub fn compare_runs(old: &Value, new: &Value, options: Options) -> Result<Vec<StageDiff>, String> {
    if old["scenario"] != new["scenario"] {
        return Err(format!(
            "the runs are of different scenarios (`{}` and `{}`)",
            plain(old["scenario"].as_str().unwrap_or("?")),
            plain(new["scenario"].as_str().unwrap_or("?"))
        ));
    }
    let none = Vec::new();
    let (old_stages, new_stages) =
        (old["stages"].as_array().unwrap_or(&none), new["stages"].as_array().unwrap_or(&none));
    let mut tests = Vec::new();
    let mut out = Vec::new();
    for n in new_stages {
        let name = n["name"].as_str().unwrap_or_default().to_string();
        let Some(o) = old_stages.iter().find(|o| o["name"] == n["name"]) else { continue };
        let (ow, nw) = (windows(o), windows(n));
        let count = |s: &Value, k: &str| s["metrics"][k].as_u64().unwrap_or(0);
        let judged_secs = span_secs(&nw).max(span_secs(&ow));
        let sides = Sides {
            candidate: &nw,
            baseline: &ow,
            candidate_requests: count(n, "requests"),
            baseline_requests: count(o, "requests"),
            candidate_errors: count(n, "errors"),
            baseline_errors: count(o, "errors"),
            judged_secs,
            paired: true,
        };
        let latency = options.latency.unwrap_or_else(|| default_tolerance(o["metrics"]["latency"]["p50"].as_f64()));
        for (metric, tolerance) in
            [(CompareMetric::Latency, latency), (CompareMetric::Errors, Tolerance::Relative(options.errors))]
        {
            let spec = Compare {
                metric,
                stage: name.clone(),
                baseline: name.clone(),
                tolerance,
                confidence: options.confidence,
            };
            let r = run_compare(&spec, &sides);
            tests.push((out.len(), spec, r));
            // What each side shows: its windows' median, or its error rate.
            let shown = |s: &Value, w: &[Window]| match metric {
                CompareMetric::Latency => {
                    let mut m: Vec<f64> = w.iter().map(|w| w.p50_ms).collect();
                    m.sort_by(f64::total_cmp);
                    m.get(m.len() / 2).map_or("-".into(), |v| format!("{v:.1}ms median"))
                }
                CompareMetric::Errors => {
                    let (req, err) = (count(s, "requests"), count(s, "errors"));
                    if req == 0 { "-".to_string() } else { format!("{:.2}%", err as f64 * 100.0 / req as f64) }
                }
            };
            out.push(StageDiff {
                stage: name.clone(),
                what: if metric == CompareMetric::Latency { "latency" } else { "errors" },
                old: shown(o, &ow),
                new: shown(n, &nw),
                outcome: Outcome::Inconclusive,
                note: String::new(),
            });
        }
        for field in ["lost", "duplicated", "corrupted"] {
            let (a, b) = (o["metrics"]["data"][field].as_u64(), n["metrics"]["data"][field].as_u64());
            let (outcome, note) = match (a, b) {
                (Some(a), Some(b)) if b > a => (Outcome::Fail, format!("{} more", b - a)),
                (Some(_), Some(_)) => (Outcome::Pass, String::new()),
                _ => (Outcome::Inconclusive, "the output was not observed in one of the runs".to_string()),
            };
            let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            out.push(StageDiff {
                stage: name.clone(),
                what: field_name(field),
                old: show(a),
                new: show(b),
                outcome,
                note,
            });
        }
    }
    if out.is_empty() {
        return Err("the runs have no stage in common".into());
    }
    // A stage only one run has cannot be said to be no worse.
    let name = |s: &Value| s["name"].as_str().map(str::to_string);
    for (side, these, those) in [("NEW", old_stages, new_stages), ("OLD", new_stages, old_stages)] {
        for st in these {
            let missing = match name(st) {
                Some(n) if those.iter().any(|o| name(o).as_deref() == Some(n.as_str())) => continue,
                Some(n) => n,
                None => "(a stage without a name)".to_string(),
            };
            out.push(StageDiff {
                stage: missing,
                what: "stage",
                old: if side == "NEW" { "ran".into() } else { "-".into() },
                new: if side == "NEW" { "-".into() } else { "ran".into() },
                outcome: Outcome::Inconclusive,
                note: format!("{side} has no such stage: it cannot be compared"),
            });
        }
    }
    // One family, as the comparisons of a run: Holm over every test made.
    let tested: Vec<usize> = (0..tests.len()).filter(|i| tests[*i].2.untestable.is_none()).collect();
    let adjusted = crate::verdict::stats::holm(&tested.iter().map(|i| tests[*i].2.p_worse).collect::<Vec<_>>());
    for (k, (at, spec, r)) in tests.iter().enumerate() {
        let p = tested.iter().position(|t| *t == k).map_or(r.p_worse, |j| adjusted[j]);
        let (outcome, why) = decide(spec, r, p);
        let d = &mut out[*at];
        d.outcome = outcome;
        match spec.metric {
            CompareMetric::Latency => {
                let shift = match (r.median_diff_ms, r.median_ci_ms) {
                    (Some(m), Some((lo, hi))) => format!("{m:+.1}ms [{lo:+.1}, {hi:+.1}] ({:+.1}%)", r.effect * 100.0),
                    _ => String::new(),
                };
                d.note = [
                    why.unwrap_or_default(),
                    shift,
                    format!("p = {p:.3} for worse than {}", spec.tolerance.text(spec.metric)),
                ]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            }
            CompareMetric::Errors => {
                d.note = why.unwrap_or_else(|| {
                    format!(
                        "{:+.2} points; p = {p:.3} for worse than {}",
                        r.effect * 100.0,
                        spec.tolerance.text(spec.metric)
                    )
                });
            }
        }
    }
    Ok(out)
}

/// `s` for a terminal: control characters (escape sequences from a crafted report)
/// shown as `?`.
fn plain(s: &str) -> String {
    s.chars().map(|c| if super::hidden(c) { '?' } else { c }).collect()
}

/// The latency tolerance when none is given: 10% of OLD's median, but at least 2 ms
/// (below that, two runs of one release on a shared machine differ by more).
pub fn default_tolerance(old_p50_ms: Option<f64>) -> Tolerance {
    match old_p50_ms {
        Some(p50) if p50 * 0.10 >= 2.0 => Tolerance::Relative(0.10),
        _ => Tolerance::AbsoluteMs(2.0),
    }
}

fn field_name(f: &str) -> &'static str {
    match f {
        "lost" => "data.lost",
        "duplicated" => "data.duplicated",
        _ => "data.corrupted",
    }
}

/// A saved stage's time windows (none when they cannot be read).
fn windows(stage: &Value) -> Vec<Window> {
    Vec::<Window>::deserialize(&stage["windows"]).unwrap_or_default()
}

/// The judged seconds the windows span (to say how long a stage would need to be).
fn span_secs(w: &[Window]) -> f64 {
    match w {
        [first, .., last] => (last.from_secs - first.from_secs) * w.len() as f64 / (w.len() - 1) as f64,
        _ => 1.0,
    }
}

/// The `stagegate compare` command.
pub fn command(old: &Path, new: &Path, max_regression: Option<&str>, max_error_rise: &str, confidence: &str) -> i32 {
    let bad = |e: String| {
        eprintln!("error: {e}");
        exit::INVALID_INPUT
    };
    let latency = match max_regression.map(str::trim) {
        None => None,
        Some(t) if t.ends_with('%') => match units::parse_fraction(t) {
            Ok(f) => Some(Tolerance::Relative(f)),
            Err(e) => return bad(format!("--max-regression `{t}`: {e}")),
        },
        Some(t) => match units::parse_duration(t.trim_start_matches('+')) {
            Ok(d) => Some(Tolerance::AbsoluteMs(d.as_secs_f64() * 1000.0)),
            Err(e) => return bad(format!("--max-regression `{t}`: {e} (or a share like `10%`)")),
        },
    };
    let errors = match units::parse_fraction(max_error_rise) {
        Ok(f) => f,
        Err(e) => return bad(format!("--max-error-rise `{max_error_rise}`: {e}")),
    };
    let confidence = match units::parse_fraction(confidence) {
        Ok(c) if (0.5..1.0).contains(&c) => c,
        Ok(_) => return bad(format!("--confidence `{confidence}` must lie in [50%, 100%)")),
        Err(e) => return bad(format!("--confidence `{confidence}`: {e}")),
    };
    let (old_doc, new_doc) = match (read_report(old), read_report(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let diffs = match compare_runs(&old_doc, &new_doc, Options { latency, errors, confidence }) {
        Ok(d) => d,
        Err(e) => return bad(e),
    };
    // What makes the two runs less than like for like, said before the table.
    if old_doc["overrides"] != new_doc["overrides"] {
        let list = |d: &Value| {
            let o: Vec<String> = d["overrides"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if o.is_empty() { "none".to_string() } else { o.join(" ") }
        };
        println!(
            "note: the runs were made with different --set overrides (OLD: {}; NEW: {})",
            list(&old_doc),
            list(&new_doc)
        );
    }
    if old_doc["seed"] != new_doc["seed"] {
        println!("note: the runs used different seeds ({} and {})", old_doc["seed"], new_doc["seed"]);
    }
    let partial = |d: &Value| d["interrupted"] == true || d["error"].is_string();
    if partial(&old_doc) {
        println!("note: OLD was interrupted or broke: its stages may be partial");
    }
    if partial(&new_doc) {
        println!("note: NEW was interrupted or broke: it cannot show it holds up");
    }
    let w = diffs.iter().map(|d| d.stage.len()).max().unwrap_or(5).max(5);
    println!("{:<7}  {:<w$}  {:<15}  {:>16}  {:>16}  note", "", "stage", "what", "old", "new");
    for d in &diffs {
        let mark = match d.outcome {
            Outcome::Pass => "same",
            Outcome::Fail => "WORSE",
            Outcome::Inconclusive => "????",
        };
        println!(
            "{mark:<7}  {:<w$}  {:<15}  {:>16}  {:>16}  {}",
            plain(&d.stage),
            d.what,
            plain(&d.old),
            plain(&d.new),
            plain(&d.note)
        );
    }
    let worse: Vec<String> =
        diffs.iter().filter(|d| d.outcome == Outcome::Fail).map(|d| format!("{} in `{}`", d.what, d.stage)).collect();
    if !worse.is_empty() {
        println!("\nNEW regressed: {}", plain(&worse.join(", ")));
        exit::ROLLBACK
    } else if diffs.iter().any(|d| d.outcome == Outcome::Inconclusive) {
        println!("\ninconclusive: no regression found, but not every comparison could tell");
        exit::INCONCLUSIVE
    } else if partial(&new_doc) {
        println!("\ninconclusive: no regression found in what NEW ran, but NEW did not run to its end");
        exit::INCONCLUSIVE
    } else {
        println!("\nno regression");
        exit::PROMOTE
    }
}
