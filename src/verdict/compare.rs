//! Comparisons of a stage against a baseline stage, with a tolerance and a confidence.
//!
//! Latency: each stage's judged time is cut into windows (`crate::measure::Window`) and
//! the comparison tests the windows' medians, not the requests (requests close in time
//! share their fate, so testing them one by one is overconfident). The baseline's
//! window medians are moved by the tolerance (`10%`: stretched; `+5ms`: shifted), then
//! two one-sided Mann-Whitney tests ask whether the candidate's windows are slower than
//! that (FAIL, once Holm's adjustment over every comparison of the run agrees) or faster
//! (PASS). Before a PASS, the comparison checks it could have seen a regression of the
//! tolerance's size at all (the smallest shift its windows can detect with 80% power);
//! when it could not, it is INCONCLUSIVE and says how long the stages would need to be.
//! Every comparison reports the median and p99 difference with bootstrap confidence
//! intervals over windows.
//!
//! Errors: two one-sided tests on the difference of the two error proportions (normal
//! approximation), with the tolerance in percentage points.
//!
//! The statistics themselves are in [`super::stats`].

use serde::Serialize;

use super::Outcome;
use super::stats::{self, Alternative, Method};
use crate::measure::Window;

/// What a comparison looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareMetric {
    /// The latency of the stages' time windows.
    Latency,
    /// The error proportion.
    Errors,
}

/// How much worse the candidate may be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// Latency: a share of the baseline (0.1 = 10% slower). Errors: percentage points
    /// as a fraction (0.01 = one point).
    Relative(f64),
    /// Latency only: milliseconds on top of the baseline.
    AbsoluteMs(f64),
}

impl Tolerance {
    /// The tolerance as written back: `+10.0%`, `+5.0ms`, `+1.00 points`.
    pub fn text(self, metric: CompareMetric) -> String {
        match (self, metric) {
            (Tolerance::Relative(r), CompareMetric::Latency) => format!("{:+.1}%", r * 100.0),
            (Tolerance::AbsoluteMs(ms), _) => format!("{ms:+.1}ms"),
            (Tolerance::Relative(r), CompareMetric::Errors) => format!("{:+.2} points", r * 100.0),
        }
    }
}

/// A comparison criterion.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Compare {
    pub metric: CompareMetric,
    pub stage: String,
    pub baseline: String,
    pub tolerance: Tolerance,
    /// Confidence of each one-sided test (0.95).
    pub confidence: f64,
}

/// The two stages a comparison reads.
pub struct Sides<'a> {
    pub candidate: &'a [Window],
    pub baseline: &'a [Window],
    pub candidate_requests: u64,
    pub baseline_requests: u64,
    pub candidate_errors: u64,
    pub baseline_errors: u64,
    /// Judged seconds of one stage (to say how long a stage would need to be).
    pub judged_secs: f64,
    /// The two sides are the same stage of two runs of one scenario: window `i` of each
    /// covers the same offset, under the same faults. Drift is then read from the
    /// windows' differences (a fault's shape, common to both, cancels), and error
    /// rates are tested window against window.
    pub paired: bool,
}

/// What a comparison measured, before the family of tests is taken into account.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Comparison {
    /// Latency: the ratio of the window medians' medians minus one; errors: the rate
    /// difference.
    pub effect: f64,
    /// One-sided p-value of a regression beyond the tolerance.
    pub p_worse: f64,
    /// One-sided p-value of staying within it.
    pub p_better: f64,
    /// Latency: the candidate's median minus the baseline's, in ms, with its interval.
    pub median_diff_ms: Option<f64>,
    pub median_ci_ms: Option<(f64, f64)>,
    /// Latency: the same for the windows' p99.
    pub p99_diff_ms: Option<f64>,
    pub p99_ci_ms: Option<(f64, f64)>,
    /// Latency: the tolerance in ms, and the smallest shift the windows could detect.
    pub tolerance_ms: Option<f64>,
    pub detectable_ms: Option<f64>,
    /// Latency: how far a side's window medians moved between its first and second
    /// half (the larger side's), in ms: drift with time that a test on windows cannot
    /// see and two stages run at different times differ by. A regression must exceed
    /// the tolerance by it to FAIL; staying within the tolerance less it is a PASS.
    pub drift_ms: Option<f64>,
    /// Windows on each side (candidate, baseline).
    pub windows: (usize, usize),
    /// Why no test could be made, when none could.
    pub untestable: Option<String>,
    pub judged_secs: f64,
}

/// The fewest windows a side needs for a test.
const MIN_WINDOWS: usize = 3;

/// Runs the comparison's tests.
pub fn compare(c: &Compare, s: &Sides) -> Comparison {
    match c.metric {
        CompareMetric::Latency => latency(c, s),
        CompareMetric::Errors => errors(c, s),
    }
}

fn empty(s: &Sides, why: impl Into<String>) -> Comparison {
    Comparison {
        effect: 0.0,
        p_worse: 1.0,
        p_better: 1.0,
        median_diff_ms: None,
        median_ci_ms: None,
        p99_diff_ms: None,
        p99_ci_ms: None,
        tolerance_ms: None,
        detectable_ms: None,
        drift_ms: None,
        windows: (s.candidate.len(), s.baseline.len()),
        untestable: Some(why.into()),
        judged_secs: s.judged_secs,
    }
}

fn latency(c: &Compare, s: &Sides) -> Comparison {
    let cand: Vec<f64> = s.candidate.iter().map(|w| w.p50_ms).collect();
    let base: Vec<f64> = s.baseline.iter().map(|w| w.p50_ms).collect();
    if cand.len() < MIN_WINDOWS || base.len() < MIN_WINDOWS {
        return empty(
            s,
            format!("too few time windows to compare ({} and {}; {MIN_WINDOWS} needed)", cand.len(), base.len()),
        );
    }
    let (Some(mc), Some(mb)) = (stats::median(&cand), stats::median(&base)) else { return empty(s, "no samples") };
    let cand99: Vec<f64> = s.candidate.iter().map(|w| w.p99_ms).collect();
    let base99: Vec<f64> = s.baseline.iter().map(|w| w.p99_ms).collect();
    // Two runs of one schedule pair their windows (window `i` of each, under the same
    // faults): their differences, of the medians and of the p99s.
    let pairs = s.paired.then(|| (paired(&cand, &base), paired(&cand99, &base99)));
    let drift_ms = match &pairs {
        Some((d, _)) => drift(d),
        None => drift(&cand).max(drift(&base)),
    };
    // The baseline moved by the tolerance, then by the drift: out for a FAIL (only a
    // regression beyond both counts), in for a PASS (staying within the tolerance must
    // hold even if the stages drifted against the candidate).
    let moved = |by: f64| -> Vec<f64> {
        base.iter()
            .map(|b| match c.tolerance {
                Tolerance::Relative(r) => b * (1.0 + r) + by,
                Tolerance::AbsoluteMs(ms) => b + ms + by,
            })
            .collect()
    };
    // Two runs of one schedule are tested window against window (signed ranks of the
    // differences): what both runs share, a fault's shape included, cancels.
    let p = |alt, to: &[f64]| {
        if s.paired {
            stats::signed_rank(&paired(&cand, to), alt).unwrap_or(1.0)
        } else {
            stats::mann_whitney(&cand, to, alt, Method::Auto).map_or(1.0, |r| r.p)
        }
    };
    let (p_worse, p_better) = (p(Alternative::Greater, &moved(drift_ms)), p(Alternative::Less, &moved(-drift_ms)));
    let level = c.confidence;
    let seed = 0x5eed_c0de;
    let tolerance_ms = match c.tolerance {
        Tolerance::Relative(r) => r * mb,
        Tolerance::AbsoluteMs(ms) => ms,
    };
    // Paired: the median of the differences, its interval from resampling the pairs;
    // else the difference of the medians, from resampling each side.
    let (median_diff_ms, median_ci_ms, p99_diff_ms, p99_ci_ms, detectable_ms) = match &pairs {
        Some((d, d99)) => (
            stats::median(d),
            stats::bootstrap_difference(d, &vec![0.0; d.len()], stats::median, level, 2000, seed),
            stats::median(d99),
            stats::bootstrap_difference(d99, &vec![0.0; d99.len()], stats::median, level, 2000, seed + 1),
            stats::detectable_paired_shift(d, 1.0 - c.confidence),
        ),
        None => (
            Some(mc - mb),
            stats::bootstrap_difference(&cand, &base, stats::median, level, 2000, seed),
            stats::median(&cand99).zip(stats::median(&base99)).map(|(a, b)| a - b),
            stats::bootstrap_difference(&cand99, &base99, stats::median, level, 2000, seed + 1),
            stats::detectable_shift(&cand, &base, 1.0 - c.confidence),
        ),
    };
    Comparison {
        effect: if mb > 0.0 { mc / mb - 1.0 } else { 0.0 },
        p_worse,
        p_better,
        median_diff_ms,
        median_ci_ms,
        p99_diff_ms,
        p99_ci_ms,
        tolerance_ms: Some(tolerance_ms),
        detectable_ms,
        drift_ms: Some(drift_ms),
        windows: (cand.len(), base.len()),
        untestable: None,
        judged_secs: s.judged_secs,
    }
}

/// Window `i` of one side less window `i` of the other.
fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// How far window medians moved between the first and the second half of a stage, in
/// ms (0 with too few windows to tell).
fn drift(values: &[f64]) -> f64 {
    let half = values.len() / 2;
    if half < MIN_WINDOWS {
        return 0.0;
    }
    match (stats::median(&values[..half]), stats::median(&values[values.len() - half..])) {
        (Some(a), Some(b)) => (b - a).abs(),
        _ => 0.0,
    }
}

fn errors(c: &Compare, s: &Sides) -> Comparison {
    let (nc, nb) = (s.candidate_requests as f64, s.baseline_requests as f64);
    if nc == 0.0 || nb == 0.0 {
        return empty(s, "no requests to compare");
    }
    let tolerance = match c.tolerance {
        Tolerance::Relative(r) => r,
        Tolerance::AbsoluteMs(_) => 0.0,
    };
    if s.paired {
        return paired_errors(s, tolerance);
    }
    let (pc, pb) = (s.candidate_errors as f64 / nc, s.baseline_errors as f64 / nb);
    let d = pc - pb;
    let se = (pc * (1.0 - pc) / nc + pb * (1.0 - pb) / nb).sqrt();
    let (p_worse, p_better) = if se == 0.0 {
        if d > tolerance { (0.0, 1.0) } else { (1.0, 0.0) }
    } else {
        let z = (d - tolerance) / se;
        (stats::normal_sf(z), 1.0 - stats::normal_sf(z))
    };
    Comparison { effect: d, p_worse, p_better, untestable: None, ..empty(s, "") }
}

/// Error rates of two runs' windows, window against window: a signed-rank test of
/// their differences beyond the tolerance (errors a fault causes in both cancel).
fn paired_errors(s: &Sides, tolerance: f64) -> Comparison {
    let rate = |w: &Window| if w.requests == 0 { 0.0 } else { w.errors as f64 / w.requests as f64 };
    let d: Vec<f64> = s.candidate.iter().zip(s.baseline).map(|(c, b)| rate(c) - rate(b) - tolerance).collect();
    if d.len() < MIN_WINDOWS {
        return empty(s, format!("too few time windows to compare ({}; {MIN_WINDOWS} needed)", d.len()));
    }
    let effect =
        s.candidate_errors as f64 / s.candidate_requests as f64 - s.baseline_errors as f64 / s.baseline_requests as f64;
    let p_worse = stats::signed_rank(&d, Alternative::Greater).unwrap_or(1.0);
    let p_better = stats::signed_rank(&d, Alternative::Less).unwrap_or(1.0);
    Comparison { effect, p_worse, p_better, untestable: None, ..empty(s, "") }
}

/// The outcome of a comparison whose regression p-value, adjusted over the run's family
/// of tests, is `p_worse_adjusted`; and a note on why when it is not a pass.
pub fn decide(c: &Compare, r: &Comparison, p_worse_adjusted: f64) -> (Outcome, Option<String>) {
    let alpha = 1.0 - c.confidence;
    if let Some(why) = &r.untestable {
        return (Outcome::Inconclusive, Some(why.clone()));
    }
    if p_worse_adjusted < alpha {
        return (Outcome::Fail, None);
    }
    if let (Some(tol), Some(drift)) = (r.tolerance_ms, r.drift_ms)
        && drift >= tol
    {
        return (
            Outcome::Inconclusive,
            Some(format!(
                "the stages drift by {drift:.2}ms between their halves, as much as the {} tolerance ({tol:.2}ms): differences that small are the machine's, not the release's; give a tolerance above it (`+{:.0}ms` or more)",
                c.tolerance.text(c.metric),
                (2.0 * drift).ceil().max(1.0)
            )),
        );
    }
    if let (Some(tol), Some(seen)) = (r.tolerance_ms, r.detectable_ms)
        && seen > tol
    {
        // The stage would need (seen / tol)^2 times as many windows: as much longer.
        let need = (r.judged_secs * (seen / tol).powi(2)).ceil().max(r.judged_secs.ceil() + 1.0);
        return (
            Outcome::Inconclusive,
            Some(format!(
                "too few windows to see a {} regression ({tol:.2}ms; the smallest these could see: {seen:.2}ms); judge {}s or more per stage after warm-up (now {:.0}s)",
                c.tolerance.text(c.metric),
                need.max(1.0),
                r.judged_secs
            )),
        );
    }
    if r.p_better < alpha {
        (Outcome::Pass, None)
    } else {
        (Outcome::Inconclusive, Some("not enough evidence either way".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    /// `n` windows around a median of `median_ms`, spread as real windows are.
    fn windows(seed: u64, n: usize, median_ms: f64) -> Vec<Window> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let f: f64 = rng.random_range(-0.1..0.1);
                let p50 = median_ms * (1.0 + f);
                Window { from_secs: i as f64 * 0.5, requests: 100, errors: 0, p50_ms: p50, p99_ms: p50 * 3.0 }
            })
            .collect()
    }

    fn spec(tolerance: Tolerance) -> Compare {
        Compare { metric: CompareMetric::Latency, stage: "c".into(), baseline: "b".into(), tolerance, confidence: 0.95 }
    }

    fn run(c: &Compare, cand: &[Window], base: &[Window]) -> (Outcome, Option<String>, Comparison) {
        let sides = Sides {
            candidate: cand,
            baseline: base,
            candidate_requests: 1000,
            baseline_requests: 1000,
            candidate_errors: 0,
            baseline_errors: 0,
            judged_secs: 20.0,
            paired: false,
        };
        let r = compare(c, &sides);
        let (o, why) = decide(c, &r, r.p_worse);
        (o, why, r)
    }

    /// Two runs of a stage whose fault (windows 10 to 29) adds `fault_ms`, and 2%
    /// errors during it.
    fn faulted(seed: u64, fault_ms: f64) -> Vec<Window> {
        let mut w = windows(seed, 40, 2.0);
        for x in &mut w[10..30] {
            x.p50_ms += fault_ms;
            x.errors = 2;
        }
        w
    }

    fn run_paired(c: &Compare, new: &[Window], old: &[Window]) -> (Outcome, Option<String>) {
        let count = |w: &[Window]| w.iter().map(|x| x.errors).sum::<u64>();
        let sides = Sides {
            candidate: new,
            baseline: old,
            candidate_requests: 4000,
            baseline_requests: 4000,
            candidate_errors: count(new),
            baseline_errors: count(old),
            judged_secs: 20.0,
            paired: true,
        };
        let r = compare(c, &sides);
        decide(c, &r, r.p_worse)
    }

    #[test]
    fn two_runs_of_a_faulted_stage_compare_window_against_window() {
        // A mid-stage fault moves the medians between halves in both runs alike: no drift
        // between the runs, and a repeat passes (unpaired, it could not tell).
        let tol = spec(Tolerance::AbsoluteMs(2.0));
        let (o, why) = run_paired(&tol, &faulted(1, 80.0), &faulted(2, 80.0));
        assert_eq!(o, Outcome::Pass, "{why:?}");
        let (o, why, _) = run(&tol, &faulted(1, 80.0), &faulted(2, 80.0));
        assert_eq!(o, Outcome::Inconclusive, "{why:?}");
        // Slower only while the fault is on: a regression.
        let (o, why) = run_paired(&tol, &faulted(1, 95.0), &faulted(2, 80.0));
        assert_eq!(o, Outcome::Fail, "{why:?}");
        // The fault's errors, common to both runs, are no regression; more of them are.
        let errors = Compare { metric: CompareMetric::Errors, ..spec(Tolerance::Relative(0.01)) };
        let (o, why) = run_paired(&errors, &faulted(1, 80.0), &faulted(2, 80.0));
        assert_eq!(o, Outcome::Pass, "{why:?}");
        let mut worse = faulted(1, 80.0);
        for x in &mut worse[10..30] {
            x.errors = 10;
        }
        let (o, why) = run_paired(&errors, &worse, &faulted(2, 80.0));
        assert_eq!(o, Outcome::Fail, "{why:?}");
    }

    #[test]
    fn the_same_service_passes_within_tolerance() {
        let (o, why, r) = run(&spec(Tolerance::Relative(0.10)), &windows(1, 40, 10.0), &windows(2, 40, 10.0));
        assert_eq!(o, Outcome::Pass, "{why:?} {r:?}");
        let (lo, hi) = r.median_ci_ms.unwrap();
        assert!(lo < 0.0 && hi > 0.0, "the interval holds no difference: {lo} {hi}");
    }

    #[test]
    fn a_30_percent_slowdown_fails_a_10_percent_tolerance() {
        let (o, _, r) = run(&spec(Tolerance::Relative(0.10)), &windows(1, 40, 13.0), &windows(2, 40, 10.0));
        assert_eq!(o, Outcome::Fail, "{r:?}");
        assert!((0.2..0.4).contains(&r.effect), "{r:?}");
    }

    #[test]
    fn an_absolute_tolerance_allows_that_many_milliseconds() {
        let (o, _, r) = run(&spec(Tolerance::AbsoluteMs(5.0)), &windows(1, 40, 13.0), &windows(2, 40, 10.0));
        assert_eq!(o, Outcome::Pass, "{r:?}");
        let (o, ..) = run(&spec(Tolerance::AbsoluteMs(1.0)), &windows(1, 40, 13.0), &windows(2, 40, 10.0));
        assert_eq!(o, Outcome::Fail);
    }

    #[test]
    fn too_few_windows_to_see_the_tolerance_is_inconclusive_and_says_how_long_to_run() {
        let (o, why, _) = run(&spec(Tolerance::Relative(0.01)), &windows(1, 5, 10.0), &windows(2, 5, 10.0));
        assert_eq!(o, Outcome::Inconclusive);
        let why = why.unwrap();
        assert!(why.contains("too few windows to see a +1.0% regression"), "{why}");
        assert!(why.contains("s or more per stage after warm-up (now 20s)"), "{why}");
    }

    #[test]
    fn drift_between_halves_widens_the_band_instead_of_failing_a_good_release() {
        // Both stages drift by 30% from their first half to their second; the candidate
        // sits 25% above the baseline, which the drift explains.
        let drifting = |seed, median: f64| {
            let mut w = windows(seed, 40, median);
            for x in &mut w[20..] {
                x.p50_ms *= 1.3;
            }
            w
        };
        let (o, why, r) = run(&spec(Tolerance::Relative(0.05)), &drifting(1, 12.5), &drifting(2, 10.0));
        assert_eq!(o, Outcome::Inconclusive, "{why:?} {r:?}");
        assert!(why.unwrap().contains("drift"), "{r:?}");
        // A real regression still fails through the drift.
        let (o, _, r) = run(&spec(Tolerance::Relative(0.05)), &drifting(1, 30.0), &drifting(2, 10.0));
        assert_eq!(o, Outcome::Fail, "{r:?}");
    }

    #[test]
    fn error_rates_compare_in_points() {
        let c = Compare {
            metric: CompareMetric::Errors,
            tolerance: Tolerance::Relative(0.01),
            ..spec(Tolerance::Relative(0.0))
        };
        let sides = |ce, be| Sides {
            candidate: &[],
            baseline: &[],
            candidate_requests: 1000,
            baseline_requests: 1000,
            candidate_errors: ce,
            baseline_errors: be,
            judged_secs: 10.0,
            paired: false,
        };
        let worse = compare(&c, &sides(80, 10));
        assert_eq!(decide(&c, &worse, worse.p_worse).0, Outcome::Fail);
        let same = compare(&c, &sides(0, 0));
        assert_eq!(decide(&c, &same, same.p_worse).0, Outcome::Pass);
    }
}
