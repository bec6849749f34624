//! Criteria and the verdict: pure functions from stage metrics to PROMOTE, ROLLBACK or
//! INCONCLUSIVE.
//!
//! A [`Criterion`] is a [`Rule`]: a [`Check`] (`latency.p99 < 250ms`) over one stage's
//! metrics, or a [`Compare`] of a stage against a baseline stage. [`assess`] judges one
//! stage's checks, [`assess_compare`] one comparison, each giving [`Assessment`]s;
//! [`fold`] combines them worst-wins. Nothing here does I/O, so every rule is unit-tested
//! without a network. Parsing the check text lives here too (`check.rs`), so the scenario
//! loader and the rules agree on what a metric is.

mod check;
mod compare;
pub mod exposure;
pub mod matrix;
pub mod rollback;
pub mod stats;

pub use check::{Base, Check, DataField, Metric, Op, PromAgg, Quantile, is_query_name, parse_check};
pub use compare::{Compare, CompareMetric, Comparison, Sides, Tolerance, compare as run_compare, decide};

use serde::Serialize;

use crate::measure::StageMetrics;

/// How much a criterion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default, schemars::JsonSchema)]
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

/// What a criterion judges.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Check(Check),
    Compare(Compare),
}

/// A judged rule from the scenario's `criteria` list.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Criterion {
    pub rule: Rule,
    /// The stages a check applies to; `None` for all (unused by comparisons).
    pub stages: Option<Vec<String>>,
    pub level: Level,
    /// Fewer judged samples than this makes the criterion INCONCLUSIVE.
    pub min_samples: u64,
    /// Stop the run as soon as the criterion cannot hold any more.
    pub abort_on_fail: bool,
    /// The criterion as written, for reports.
    pub text: String,
}

impl Criterion {
    /// The check, if this criterion is one.
    pub fn check(&self) -> Option<&Check> {
        match &self.rule {
            Rule::Check(c) => Some(c),
            Rule::Compare(_) => None,
        }
    }
}

/// The default for `min_samples`: below this many judged requests a quantile says
/// too little to pass or fail a candidate on.
pub const DEFAULT_MIN_SAMPLES: u64 = 100;

/// How one criterion came out in one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

/// One criterion judged in one stage.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Assessment {
    pub stage: String,
    /// The criterion as written, e.g. `latency.p99 < 250ms`.
    pub criterion: String,
    pub metric: String,
    /// The measured value in the metric's unit (milliseconds for latency).
    pub measured: Option<f64>,
    /// The measured value as a user reads it, e.g. `212.4ms`.
    pub measured_text: String,
    pub limit_text: String,
    /// The samples it was judged on (requests, acknowledged records, ...; for a
    /// comparison, the smaller side's requests).
    pub samples: Option<u64>,
    pub outcome: Outcome,
    pub level: Level,
    /// Why it is inconclusive, or the statistics of a comparison.
    pub note: Option<String>,
    /// A comparison's figures, for tools that read the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<ComparisonFigures>,
    /// Set when the check was judged on one flag variant's records only (the exposed
    /// cohort of a progressive exposure step), e.g. `new-enricher=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
}

impl Assessment {
    /// The criterion as a reader sees it: with its cohort, when judged on one.
    pub fn label(&self) -> String {
        match &self.cohort {
            Some(c) => format!("{} [{c} cohort]", self.criterion),
            None => self.criterion.clone(),
        }
    }
}

/// The numbers behind a comparison's outcome, as report.json gives them.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ComparisonFigures {
    pub baseline: String,
    /// `latency` or `errors`.
    pub metric: CompareMetric,
    /// The tolerance as written back (`+10.0%`, `+5.0ms`, `+1.00 points`), and as a
    /// number: a fraction of the baseline (latency `%`), milliseconds (latency `ms`) or
    /// a difference of error proportions (errors).
    pub tolerance: String,
    pub tolerance_value: f64,
    pub tolerance_unit: &'static str,
    /// Confidence of each one-sided test.
    pub confidence: f64,
    /// Latency: the candidate's median over the baseline's, minus one; errors: the
    /// candidate's error proportion minus the baseline's.
    pub effect: f64,
    /// Latency: median and p99 differences in ms, each with its bootstrap interval.
    pub median_diff_ms: Option<f64>,
    pub median_interval_ms: Option<[f64; 2]>,
    pub p99_diff_ms: Option<f64>,
    pub p99_interval_ms: Option<[f64; 2]>,
    /// One-sided p-values: of a regression beyond the tolerance (as tested and after
    /// Holm's adjustment over the run's `tests_in_run`), and of staying within it. None
    /// when no test was made.
    pub p_worse: Option<f64>,
    pub p_worse_adjusted: Option<f64>,
    pub tests_in_run: Option<usize>,
    pub p_better: Option<f64>,
    /// Latency: time windows on each side, and the smallest shift they could detect.
    pub windows_candidate: Option<usize>,
    pub windows_baseline: Option<usize>,
    pub detectable_shift_ms: Option<f64>,
    /// Latency: how far window medians moved between a stage's halves (the larger
    /// side's), in ms; a FAIL must exceed the tolerance by it, a PASS stay within the
    /// tolerance less it.
    pub drift_ms: Option<f64>,
}

/// The final answer of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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

/// The checks that judge `stage`: those naming it, plus the general ones on metrics
/// that no stage-specific check already covers there.
pub fn applicable<'a>(criteria: &'a [Criterion], stage: &str) -> Vec<&'a Criterion> {
    let checks = || criteria.iter().filter(|c| c.check().is_some());
    let named: Vec<&Criterion> =
        checks().filter(|c| c.stages.as_ref().is_some_and(|s| s.iter().any(|n| n == stage))).collect();
    let general = checks().filter(|c| {
        c.stages.is_none() && !named.iter().any(|n| n.check().map(|x| x.metric) == c.check().map(|x| x.metric))
    });
    general.chain(named.iter().copied()).collect()
}

/// Judges one check against one stage's metrics.
pub fn judge_check(c: &Criterion, check: &Check, stage: &str, metrics: &StageMetrics) -> Assessment {
    let samples = check.metric.samples(metrics);
    let needs_output = matches!(
        check.metric.base,
        Base::Data(f) | Base::DataRate(f) if !matches!(f, DataField::Sent | DataField::Acked | DataField::RejectedValid)
    );
    // A count that needs the output is unknown when the output was not seen: no figure
    // is shown for it (a count of "lost" records that were never looked for).
    let measured = if needs_output && !metrics.data_observed { None } else { check.metric.value(metrics) };
    // Why a query of the system's own metrics has no value here.
    let prom_missing = match check.metric.base {
        Base::Prom(name, _) if measured.is_none() => Some(match metrics.prom.get(name) {
            Some(f) => f.missing.clone().unwrap_or_else(|| format!("`{}` had no value in this window", f.query)),
            None => "the system's metrics were not read for this stage".to_string(),
        }),
        _ => None,
    };
    let (outcome, note) = match measured {
        _ if needs_output && !metrics.data_observed => {
            let why = metrics.output_unseen.as_deref().unwrap_or("nothing observes it");
            (Outcome::Inconclusive, Some(format!("the output was not observed: {why}")))
        }
        None if matches!(check.metric.base, Base::Freshness(_)) => {
            let why = match (&metrics.freshness, &metrics.output_unseen) {
                (_, Some(unseen)) => format!("the output was not observed: {unseen}"),
                (None, None) => {
                    "freshness needs an observer that times arrivals (`sink`, or a `scan` with `every`)".to_string()
                }
                (Some(_), None) => "no acknowledged record was seen in the output".to_string(),
            };
            (Outcome::Inconclusive, Some(why))
        }
        None if prom_missing.is_some() => (Outcome::Inconclusive, prom_missing),
        None if check.metric.base == Base::FlagsPiiExposed => (
            Outcome::Inconclusive,
            Some(
                "stagegate does not see the flag evaluation contexts: only the `ofrep` provider shows them".to_string(),
            ),
        ),
        None if matches!(check.metric.base, Base::RecoveryTime) => {
            let why = match (&metrics.recovery, &metrics.recovery_missing) {
                (None, Some(why)) => why.clone(),
                (None, None) => "no fault ended before the stage did".to_string(),
                (Some(_), _) => "not back in band before the stage ended".to_string(),
            };
            (Outcome::Inconclusive, Some(why))
        }
        _ if samples < c.min_samples && !matches!(check.metric.base, Base::RecoveryTime) => {
            let noun = check.metric.sample_noun();
            (Outcome::Inconclusive, Some(format!("{samples} {noun}, fewer than the {} required", c.min_samples)))
        }
        None => (Outcome::Inconclusive, Some("no samples".to_string())),
        Some(v) if check.op.holds(v, check.limit) => (Outcome::Pass, None),
        Some(_) => (Outcome::Fail, None),
    };
    Assessment {
        stage: stage.to_string(),
        criterion: check.text.clone(),
        metric: check.metric.to_string(),
        measured,
        measured_text: measured.map_or("-".into(), |v| check.metric.render(v)),
        limit_text: format!("{} {}", check.op, check.metric.render(check.limit)),
        samples: Some(samples),
        outcome,
        level: c.level,
        note,
        comparison: None,
        cohort: None,
    }
}

/// Judges one stage's metrics against every applicable check.
pub fn assess(criteria: &[Criterion], stage: &str, metrics: &StageMetrics) -> Vec<Assessment> {
    applicable(criteria, stage)
        .into_iter()
        .filter_map(|c| c.check().map(|check| judge_check(c, check, stage, metrics)))
        .collect()
}

/// Judges one flag variant's records (`cohort`, as the stage's per-variant metrics
/// name it) against every applicable check that a variant has figures for: latency,
/// errors, throughput and data counts of the whole stage (not a fault phase, freshness
/// or recovery). A cohort that saw no request is judged on nothing, so INCONCLUSIVE.
pub fn assess_cohort(criteria: &[Criterion], stage: &str, cohort: &str, metrics: &StageMetrics) -> Vec<Assessment> {
    let slice = metrics.variants.get(cohort).cloned().unwrap_or_default();
    let view = StageMetrics {
        requests: slice.requests,
        errors: slice.errors,
        latency: slice.latency,
        throughput: slice.throughput,
        data: slice.data,
        data_observed: metrics.data_observed,
        output_unseen: metrics.output_unseen.clone(),
        ..StageMetrics::default()
    };
    applicable(criteria, stage)
        .into_iter()
        .filter_map(|c| c.check().map(|check| (c, check)))
        .filter(|(_, check)| {
            check.metric.phase.is_none()
                && !matches!(check.metric.base, Base::RecoveryTime | Base::Freshness(_) | Base::FlagsPiiExposed)
        })
        .map(|(c, check)| Assessment { cohort: Some(cohort.to_string()), ..judge_check(c, check, stage, &view) })
        .collect()
}

/// Whether a metric's value depends on when things happened (latency, errors,
/// throughput, acknowledgements, recovery, freshness), so that stagegate falling behind
/// its schedule changes it; data-quality counts do not.
pub fn timing_dependent(base: Base) -> bool {
    match base {
        Base::Data(f) | Base::DataRate(f) => matches!(f, DataField::Sent | DataField::Acked),
        Base::FlagsPiiExposed => false,
        _ => true,
    }
}

/// Holds back the judgement of a stage in which stagegate fell behind its schedule
/// (`behind` says how): every timing-dependent criterion becomes INCONCLUSIVE with that
/// reason; a data-quality count that failed does too when `overload` says the overload
/// itself made requests time out (and how), since the count may be its doing.
pub fn hold_back(assessments: &mut [Assessment], criteria: &[Criterion], behind: &str, overload: Option<&str>) {
    for a in assessments.iter_mut() {
        let base = criteria.iter().find(|c| c.text == a.criterion).and_then(|c| c.check()).map(|c| c.metric.base);
        let timing = base.is_none_or(timing_dependent);
        let note = match (timing, overload) {
            (true, _) => behind.to_string(),
            (false, Some(why)) if a.outcome == Outcome::Fail => format!("{behind}; {why}"),
            _ => continue,
        };
        a.outcome = Outcome::Inconclusive;
        a.note = Some(note);
    }
}

/// Holds back every criterion of a stage that cannot speak for the candidate (its new
/// flag states never ran): all become INCONCLUSIVE with `why`.
pub fn hold_all(assessments: &mut [Assessment], why: &str) {
    for a in assessments.iter_mut() {
        a.outcome = Outcome::Inconclusive;
        a.note = Some(why.to_string());
    }
}

/// An assessment of comparison `c` from its result and outcome.
fn compare_assessment(
    c: &Criterion,
    cmp: &Compare,
    r: &Comparison,
    outcome: Outcome,
    why: Option<String>,
    adjusted: Option<(f64, usize)>,
    samples: Option<u64>,
) -> Assessment {
    let ms = |v: f64| format!("{v:+.1}ms");
    let ci = |ci: Option<(f64, f64)>| ci.map(|(a, b)| format!(" [{a:+.1}, {b:+.1}]")).unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(d) = r.median_diff_ms {
        parts.push(format!(
            "median {} ({:+.1}%), {:.0}% interval{} ms",
            ms(d),
            r.effect * 100.0,
            cmp.confidence * 100.0,
            ci(r.median_ci_ms)
        ));
    }
    if let Some(d) = r.p99_diff_ms {
        parts.push(format!("p99 {}{} ms", ms(d), ci(r.p99_ci_ms)));
    }
    if r.untestable.is_none() {
        let family = adjusted
            .filter(|(_, n)| *n > 1)
            .map(|(p, n)| format!(" (Holm-adjusted over the run's {n} tests: {p:.3})"))
            .unwrap_or_default();
        // Small p-values are strong evidence; each names what it is evidence of.
        parts.push(format!(
            "evidence of a regression beyond {}: p = {:.3}{family}; of staying within it: p = {:.3} (small p: strong evidence)",
            cmp.tolerance.text(cmp.metric),
            r.p_worse,
            r.p_better
        ));
    }
    if cmp.metric == CompareMetric::Latency && r.untestable.is_none() {
        let seen = r.detectable_ms.map(|d| format!(", smallest detectable shift {d:.2}ms")).unwrap_or_default();
        let tol = r.tolerance_ms.map(|t| format!(", tolerance {t:.2}ms")).unwrap_or_default();
        let drift = r.drift_ms.map(|d| format!(", drift between halves {d:.2}ms")).unwrap_or_default();
        parts.push(format!("{}+{} windows{seen}{tol}{drift}", r.windows.0, r.windows.1));
    }
    let mut note = parts.join("; ");
    if let Some(why) = why {
        note = if note.is_empty() { why } else { format!("{why}: {note}") };
    }
    // Measured in the tolerance's own unit, so the two read side by side.
    let (measured, measured_text) = match (cmp.metric, cmp.tolerance, r.median_diff_ms) {
        (CompareMetric::Latency, Tolerance::AbsoluteMs(_), Some(d)) => (d, format!("{d:+.1}ms median")),
        (CompareMetric::Latency, ..) => (r.effect, format!("{:+.1}% median", r.effect * 100.0)),
        (CompareMetric::Errors, ..) => (r.effect, format!("{:+.2} points", r.effect * 100.0)),
    };
    let tested = r.untestable.is_none();
    let latency = cmp.metric == CompareMetric::Latency && tested;
    let (tolerance_value, tolerance_unit) = match (cmp.tolerance, cmp.metric) {
        (Tolerance::Relative(f), CompareMetric::Latency) => (f, "fraction of the baseline"),
        (Tolerance::AbsoluteMs(ms), _) => (ms, "ms"),
        (Tolerance::Relative(f), CompareMetric::Errors) => (f, "error proportion"),
    };
    let figures = ComparisonFigures {
        baseline: cmp.baseline.clone(),
        metric: cmp.metric,
        tolerance: cmp.tolerance.text(cmp.metric),
        tolerance_value,
        tolerance_unit,
        confidence: cmp.confidence,
        effect: r.effect,
        median_diff_ms: r.median_diff_ms,
        median_interval_ms: r.median_ci_ms.map(|(a, b)| [a, b]),
        p99_diff_ms: r.p99_diff_ms,
        p99_interval_ms: r.p99_ci_ms.map(|(a, b)| [a, b]),
        p_worse: tested.then_some(r.p_worse),
        p_worse_adjusted: adjusted.map(|(p, _)| p),
        tests_in_run: adjusted.map(|(_, n)| n),
        p_better: tested.then_some(r.p_better),
        windows_candidate: latency.then_some(r.windows.0),
        windows_baseline: latency.then_some(r.windows.1),
        detectable_shift_ms: r.detectable_ms.filter(|_| latency),
        drift_ms: r.drift_ms.filter(|_| latency),
    };
    Assessment {
        stage: cmp.stage.clone(),
        criterion: c.text.clone(),
        metric: match cmp.metric {
            CompareMetric::Latency => "latency".into(),
            CompareMetric::Errors => "errors".into(),
        },
        measured: Some(measured),
        measured_text,
        limit_text: format!("<= {} vs {}", cmp.tolerance.text(cmp.metric), cmp.baseline),
        samples,
        outcome,
        level: c.level,
        note: Some(note),
        comparison: Some(figures),
        cohort: None,
    }
}

/// The first `abort_on_fail` check that a running stage has failed for good: a count or
/// maximum past its limit, or any other metric failing with `min_samples` behind it.
pub fn abort_reason(criteria: &[Criterion], stage: &str, so_far: &StageMetrics) -> Option<Assessment> {
    applicable(criteria, stage)
        .into_iter()
        .filter(|c| c.abort_on_fail && c.level == Level::Enforce)
        .filter_map(|c| c.check().map(|check| (c, check)))
        // Data-quality counts are only known once the output is read, after the stage.
        .filter(|(_, check)| !matches!(check.metric.base, Base::Data(_) | Base::DataRate(_) | Base::RecoveryTime))
        .map(|(c, check)| judge_check(c, check, stage, so_far))
        .find(|a| a.outcome == Outcome::Fail)
}

/// The enforced `abort_on_fail` check among `assessments` that failed, if any.
pub fn failed_abort(criteria: &[Criterion], assessments: &[Assessment]) -> Option<Assessment> {
    criteria
        .iter()
        .filter(|c| c.abort_on_fail && c.level == Level::Enforce)
        .find_map(|c| assessments.iter().find(|a| a.criterion == c.text && a.outcome == Outcome::Fail).cloned())
}

/// What a finished stage offers comparisons.
#[derive(Debug, Clone, Default)]
pub struct StageSamples {
    pub windows: Vec<crate::measure::Window>,
    pub requests: u64,
    pub errors: u64,
}

/// Judges every comparison whose two stages both ran to the end; `samples` are each
/// finished stage's; `behind` says why stagegate could not keep its schedule in a
/// stage, if it could not (the comparison is then not judged); `judged_secs` is a
/// stage's judged time. The comparisons that are tested form one family: a regression
/// fails only when Holm's adjustment over all of them still finds it, so the chance of
/// any false ROLLBACK in the run stays at each comparison's confidence. Returns the
/// assessments and how many statistical tests were made.
pub fn compare_stages(
    criteria: &[Criterion],
    samples: &std::collections::HashMap<String, StageSamples>,
    completed: impl Fn(&str) -> bool,
    behind: impl Fn(&str) -> Option<String>,
    judged_secs: f64,
) -> (Vec<Assessment>, usize) {
    struct Pending<'a> {
        c: &'a Criterion,
        cmp: &'a Compare,
        r: Comparison,
        held: Option<String>,
        samples: u64,
    }
    let mut pending = Vec::new();
    let mut unjudged = Vec::new();
    for c in criteria {
        let Rule::Compare(cmp) = &c.rule else { continue };
        let sides = (samples.get(&cmp.stage), samples.get(&cmp.baseline));
        let (Some(cand), Some(base), true) = (sides.0, sides.1, completed(&cmp.stage) && completed(&cmp.baseline))
        else {
            // A side that never ran to its end (a progressive exposure stopped before
            // it, an abort, Ctrl-C): the comparison is not made, and says why.
            let missing = [&cmp.stage, &cmp.baseline]
                .into_iter()
                .find(|s| !samples.contains_key(*s))
                .map(|s| format!("stage `{s}` did not run"))
                .unwrap_or_else(|| "a stage it compares did not run to its end".to_string());
            unjudged.push(Assessment {
                stage: cmp.stage.clone(),
                criterion: c.text.clone(),
                metric: match cmp.metric {
                    CompareMetric::Latency => "latency".into(),
                    CompareMetric::Errors => "errors".into(),
                },
                measured: None,
                measured_text: "-".into(),
                limit_text: format!("<= {} vs {}", cmp.tolerance.text(cmp.metric), cmp.baseline),
                samples: None,
                outcome: Outcome::Inconclusive,
                level: c.level,
                note: Some(missing),
                comparison: None,
                cohort: None,
            });
            continue;
        };
        let sides = Sides {
            candidate: &cand.windows,
            baseline: &base.windows,
            candidate_requests: cand.requests,
            baseline_requests: base.requests,
            candidate_errors: cand.errors,
            baseline_errors: base.errors,
            judged_secs,
            paired: false,
        };
        let r = run_compare(cmp, &sides);
        let n = cand.requests.min(base.requests);
        let held = if let Some((stage, why)) =
            [&cmp.stage, &cmp.baseline].into_iter().find_map(|s| behind(s).map(|why| (s.clone(), why)))
        {
            Some(format!("in stage `{stage}`, {why}"))
        } else if n < c.min_samples {
            Some(format!("{n} samples, fewer than the {} required", c.min_samples))
        } else {
            None
        };
        pending.push(Pending { c, cmp, r, held, samples: n });
    }
    let tested: Vec<usize> =
        (0..pending.len()).filter(|i| pending[*i].held.is_none() && pending[*i].r.untestable.is_none()).collect();
    let adjusted = stats::holm(&tested.iter().map(|i| pending[*i].r.p_worse).collect::<Vec<_>>());
    let family = tested.len();
    let out = pending
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let adj = tested.iter().position(|t| *t == i).map(|k| adjusted[k]);
            let (outcome, why) = match &p.held {
                Some(why) => (Outcome::Inconclusive, Some(why.clone())),
                None => decide(p.cmp, &p.r, adj.unwrap_or(p.r.p_worse)),
            };
            compare_assessment(p.c, p.cmp, &p.r, outcome, why, adj.map(|a| (a, family)), Some(p.samples))
        })
        .chain(unjudged)
        .collect();
    (out, family)
}

/// How a run ended, as far as the verdict cares.
#[derive(Debug, Default)]
pub struct Ending<'a> {
    /// Why the run itself broke, if it did.
    pub error: Option<&'a str>,
    pub interrupted: bool,
    /// Why an `abort_on_fail` criterion stopped the run.
    pub aborted: Option<&'a str>,
    /// Why an operator aborted the run from the steering API, and the verdict the
    /// scenario gives such a run (`steering.on_abort`) when nothing already failed.
    pub steered: Option<(&'a str, Verdict)>,
    /// How the target's process ended on its own, if it did.
    pub target_exit: Option<&'a str>,
    /// The last stage that started.
    pub last_stage: Option<&'a str>,
}

/// The verdict of a run and its reasons in words: none when the run broke or was
/// interrupted (those are not judgements on the candidate).
pub fn conclude(ending: &Ending, assessments: &[Assessment]) -> (Option<Verdict>, Vec<String>) {
    let mut reasons = Vec::new();
    if let Some(e) = ending.error {
        reasons.push(format!("the run broke: {e}"));
        return (None, reasons);
    }
    if ending.interrupted {
        let when = ending.last_stage.map_or("before the first stage".to_string(), |s| format!("during stage `{s}`"));
        reasons.push(format!("interrupted {when}; no verdict"));
        return (None, reasons);
    }
    let mut v = fold(assessments);
    if let Some(exit) = ending.target_exit {
        reasons.push(exit.to_string());
    }
    if let Some(reason) = ending.aborted {
        v = Verdict::Rollback;
        reasons.push(format!("aborted: {reason}"));
    }
    if let Some((reason, on_abort)) = ending.steered {
        // What already failed stands; otherwise the scenario says. Never a PROMOTE.
        if v != Verdict::Rollback {
            v = on_abort;
        }
        let says = match on_abort {
            Verdict::Rollback => "ROLLBACK",
            _ => "INCONCLUSIVE",
        };
        reasons
            .push(format!("{reason}; an aborted run is {says} unless a criterion already failed (steering.on_abort)"));
    }
    let wanted = match v {
        Verdict::Rollback => Outcome::Fail,
        Verdict::Inconclusive => Outcome::Inconclusive,
        Verdict::Promote => {
            reasons.push("every criterion held in every stage".into());
            return (Some(v), reasons);
        }
    };
    let enforced = assessments.iter().filter(|a| a.outcome == wanted && a.level == Level::Enforce);
    if wanted == Outcome::Fail {
        for a in enforced {
            let note = a.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            reasons.push(format!(
                "stage `{}`: `{}` failed: measured {}, limit {}{note}",
                a.stage,
                a.label(),
                a.measured_text,
                a.limit_text
            ));
        }
        return (Some(v), reasons);
    }
    // Inconclusive: one line per stage and reason, naming the criteria it holds back,
    // then what to change, once.
    let mut groups: Vec<(&str, Option<&str>, Vec<String>)> = Vec::new();
    for a in enforced {
        match groups.iter_mut().find(|g| g.0 == a.stage && g.1 == a.note.as_deref()) {
            Some(g) => g.2.push(a.label()),
            None => groups.push((&a.stage, a.note.as_deref(), vec![a.label()])),
        }
    }
    for (stage, note, criteria) in &groups {
        let named = criteria.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
        reasons.push(format!("stage `{stage}`: {named} inconclusive: {}", note.unwrap_or("not enough evidence")));
    }
    let notes = || groups.iter().filter_map(|g| g.1);
    if notes().any(|n| n.contains("stagegate fell behind")) {
        reasons.push(
            "to judge it: run where stagegate has the CPU it needs (fewer busy neighbours), lower the rate, or \
             raise the `health:` limits if that lateness is acceptable"
                .into(),
        );
    }
    // Too few acknowledged is the system's doing only when enough were sent: a stage
    // also short of samples was simply too short.
    let short = |stage: &str| {
        groups.iter().any(|g| {
            g.0 == stage
                && g.1.is_some_and(|n| n.contains("samples, fewer than") || n.contains("records sent, fewer than"))
        })
    };
    if groups.iter().any(|g| g.1.is_some_and(|n| n.contains("acknowledged records, fewer than")) && !short(g.0)) {
        reasons.push(
            "the system acknowledged too few records for the data checks to mean anything: look at its \
             errors and rejections (`data.rejected_valid`) first"
                .into(),
        );
    }
    if notes().any(|n| n.contains("samples, fewer than") || n.contains("records sent, fewer than")) {
        reasons.push(
            "to get enough samples: lengthen the stages (`workload.duration`, or an exposure's `hold`), raise the rate, or lower the \
             criterion's `min_samples`"
                .into(),
        );
    }
    (Some(v), reasons)
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
            rule: Rule::Check(parse_check(text).unwrap()),
            stages: stages.map(|s| s.iter().map(|x| x.to_string()).collect()),
            level: Level::Enforce,
            min_samples: DEFAULT_MIN_SAMPLES,
            abort_on_fail: false,
            text: text.to_string(),
        }
    }

    fn metrics(p99: f64, errors: u64, duplicated: u64) -> StageMetrics {
        StageMetrics {
            requests: 1000,
            errors,
            latency: LatencySummary { p99: Some(p99), max: Some(p99 * 2.0), ..Default::default() },
            data: DataCounts { sent: 1000, acked: 1000, duplicated, ..Default::default() },
            data_observed: true,
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
        let slow: Vec<_> = applicable(&criteria, "slow").iter().map(|c| c.text.clone()).collect();
        assert_eq!(slow, vec!["errors.rate < 1%", "latency.p99 < 400ms"]);
        assert_eq!(applicable(&criteria, "baseline").len(), 2);
        assert_eq!(fold(&assess(&criteria, "slow", &metrics(300.0, 0, 0))), Verdict::Promote);
        assert_eq!(fold(&assess(&criteria, "baseline", &metrics(300.0, 0, 0))), Verdict::Rollback);
    }

    #[test]
    fn failure_beats_inconclusive_beats_pass() {
        let criteria = vec![criterion("data.duplicated == 0", None), criterion("errors.rate < 1%", None)];
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
    fn data_checks_with_nothing_acknowledged_are_inconclusive_not_a_pass() {
        // A target that refuses every write: nothing lost, doubled or altered, because
        // nothing was stored.
        let criteria = vec![criterion("data.lost == 0", None), criterion("data.corrupted == 0", None)];
        let mut refused = metrics(1.0, 0, 0);
        refused.data.acked = 0;
        refused.data.rejected_valid = 1000;
        let got = assess(&criteria, "s", &refused);
        assert_eq!(fold(&got), Verdict::Inconclusive);
        assert!(
            got.iter().all(|a| a.note.as_deref().is_some_and(|n| n.starts_with("0 acknowledged records"))),
            "{got:?}"
        );
    }

    #[test]
    fn warn_level_never_blocks() {
        let mut c = criterion("errors.rate < 1%", None);
        c.level = Level::Warn;
        let a = assess(&[c], "s", &metrics(1.0, 500, 0));
        assert_eq!(a[0].outcome, Outcome::Fail);
        assert_eq!(fold(&a), Verdict::Promote);
    }

    #[test]
    fn abort_only_on_enforced_checks_it_can_judge_mid_stage() {
        let mut errors = criterion("errors.count < 10", None);
        errors.abort_on_fail = true;
        let mut data = criterion("data.lost == 0", None);
        data.abort_on_fail = true;
        let criteria = vec![errors, data];
        assert!(abort_reason(&criteria, "s", &metrics(1.0, 5, 0)).is_none());
        let mut m = metrics(1.0, 50, 0);
        m.data.lost = 9;
        let a = abort_reason(&criteria, "s", &m).unwrap();
        assert_eq!(a.criterion, "errors.count < 10");
    }

    #[test]
    fn data_checks_without_an_observed_output_are_inconclusive() {
        let mut m = metrics(1.0, 0, 0);
        m.data_observed = false;
        let a = assess(&[criterion("data.lost == 0", None), criterion("data.acked > 0", None)], "s", &m);
        assert_eq!(a[0].outcome, Outcome::Inconclusive);
        assert_eq!(a[1].outcome, Outcome::Pass, "acknowledgements need no output");
    }

    #[test]
    fn freshness_without_an_observer_is_inconclusive_not_passed() {
        let a = assess(&[criterion("freshness.p99 < 1s", None)], "s", &metrics(1.0, 0, 0));
        assert_eq!(a[0].outcome, Outcome::Inconclusive);
    }
}
