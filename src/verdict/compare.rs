//! Comparisons of a stage against a baseline stage, with a tolerance and a confidence.
//!
//! Latency: a Mann-Whitney U test on the two latency distributions (read straight from
//! the HdrHistograms, ties corrected), after stretching the baseline by the allowed
//! regression. If the candidate is significantly slower than the stretched baseline the
//! comparison fails; if it is significantly faster than it, it passes (the regression
//! is within tolerance with that confidence); otherwise the evidence is not enough and
//! the comparison is INCONCLUSIVE.
//!
//! Errors: the same two one-sided tests on the difference of two error proportions
//! (normal approximation), with the tolerance in percentage points.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Outcome;

/// What a comparison looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareMetric {
    /// The whole latency distribution.
    Latency,
    /// The error proportion.
    Errors,
}

/// A comparison criterion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compare {
    pub metric: CompareMetric,
    pub stage: String,
    pub baseline: String,
    /// Latency: allowed relative slow-down (0.1 = 10%). Errors: allowed rise of the error
    /// rate in absolute terms (0.01 = one percentage point).
    pub max_regression: f64,
    /// Confidence of each one-sided test (0.95).
    pub confidence: f64,
}

/// The two samples a comparison reads.
pub struct Sides<'a> {
    pub candidate: &'a Histogram<u64>,
    pub baseline: &'a Histogram<u64>,
    pub candidate_errors: u64,
    pub baseline_errors: u64,
}

/// The result of a comparison: its outcome, the measured effect and a note.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub outcome: Outcome,
    /// Latency: median ratio minus one; errors: rate difference.
    pub effect: f64,
    pub p_worse: f64,
    pub p_better: f64,
}

/// The standard normal distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    // Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7.
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

/// Decides from the two one-sided p-values.
fn decide(p_worse: f64, p_better: f64, confidence: f64) -> Outcome {
    let alpha = 1.0 - confidence;
    if p_worse < alpha {
        Outcome::Fail
    } else if p_better < alpha {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    }
}

/// Runs the comparison on two samples.
pub fn compare(c: &Compare, s: &Sides) -> Comparison {
    match c.metric {
        CompareMetric::Latency => latency(c, s.candidate, s.baseline),
        CompareMetric::Errors => errors(c, s),
    }
}

fn latency(c: &Compare, cand: &Histogram<u64>, base: &Histogram<u64>) -> Comparison {
    let n = cand.len() as f64;
    let m = base.len() as f64;
    let median = |h: &Histogram<u64>| h.value_at_quantile(0.5).max(1) as f64;
    let effect = if n > 0.0 && m > 0.0 { median(cand) / median(base) - 1.0 } else { 0.0 };
    if n == 0.0 || m == 0.0 {
        return Comparison { outcome: Outcome::Inconclusive, effect, p_worse: 1.0, p_better: 1.0 };
    }
    let stretch = 1.0 + c.max_regression;
    let xs: Vec<(f64, f64)> =
        cand.iter_recorded().map(|v| (v.value_iterated_to() as f64, v.count_at_value() as f64)).collect();
    let ys: Vec<(f64, f64)> =
        base.iter_recorded().map(|v| (v.value_iterated_to() as f64 * stretch, v.count_at_value() as f64)).collect();
    // U of the candidate: for each candidate value, baseline values below it plus half
    // the equal ones; ties also feed the variance correction.
    let (mut i, mut j) = (0, 0);
    let mut below = 0.0;
    let mut u = 0.0;
    let mut ties = 0.0;
    while i < xs.len() || j < ys.len() {
        let xv = xs.get(i).map_or(f64::INFINITY, |x| x.0);
        let yv = ys.get(j).map_or(f64::INFINITY, |y| y.0);
        let both = i < xs.len() && j < ys.len();
        if both && (xv - yv).abs() <= 1e-9 * xv.max(yv) {
            let (a, b) = (xs[i].1, ys[j].1);
            u += a * (below + b / 2.0);
            below += b;
            let t = a + b;
            ties += t * t * t - t;
            i += 1;
            j += 1;
        } else if xv < yv {
            u += xs[i].1 * below;
            ties += xs[i].1.powi(3) - xs[i].1;
            i += 1;
        } else {
            below += ys[j].1;
            ties += ys[j].1.powi(3) - ys[j].1;
            j += 1;
        }
    }
    let total = n + m;
    let mean = n * m / 2.0;
    let var = n * m / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    let (p_worse, p_better) = if var <= 0.0 {
        (1.0, 1.0)
    } else {
        let z = (u - mean) / var.sqrt();
        (1.0 - normal_cdf(z), normal_cdf(z))
    };
    Comparison { outcome: decide(p_worse, p_better, c.confidence), effect, p_worse, p_better }
}

fn errors(c: &Compare, s: &Sides) -> Comparison {
    let (nc, nb) = (s.candidate.len() as f64, s.baseline.len() as f64);
    if nc == 0.0 || nb == 0.0 {
        return Comparison { outcome: Outcome::Inconclusive, effect: 0.0, p_worse: 1.0, p_better: 1.0 };
    }
    let (pc, pb) = (s.candidate_errors as f64 / nc, s.baseline_errors as f64 / nb);
    let d = pc - pb;
    let se = (pc * (1.0 - pc) / nc + pb * (1.0 - pb) / nb).sqrt();
    let (p_worse, p_better) = if se == 0.0 {
        if d > c.max_regression { (0.0, 1.0) } else { (1.0, 0.0) }
    } else {
        (1.0 - normal_cdf((d - c.max_regression) / se), normal_cdf((d - c.max_regression) / se))
    };
    Comparison { outcome: decide(p_worse, p_better, c.confidence), effect: d, p_worse, p_better }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::new_histogram;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    fn sample(seed: u64, n: usize, median_us: f64) -> Histogram<u64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut h = new_histogram();
        for _ in 0..n {
            // Log-normal-ish spread around the median.
            let f: f64 = rng.random_range(-0.5..0.5);
            h.record((median_us * (f * 1.5).exp()) as u64).unwrap();
        }
        h
    }

    fn spec(tol: f64) -> Compare {
        Compare {
            metric: CompareMetric::Latency,
            stage: "c".into(),
            baseline: "b".into(),
            max_regression: tol,
            confidence: 0.95,
        }
    }

    fn run(c: &Compare, cand: &Histogram<u64>, base: &Histogram<u64>) -> Comparison {
        compare(c, &Sides { candidate: cand, baseline: base, candidate_errors: 0, baseline_errors: 0 })
    }

    #[test]
    fn the_same_distribution_passes_within_tolerance() {
        let r = run(&spec(0.10), &sample(1, 2000, 1000.0), &sample(2, 2000, 1000.0));
        assert_eq!(r.outcome, Outcome::Pass, "{r:?}");
    }

    #[test]
    fn a_30_percent_slowdown_fails_a_10_percent_tolerance() {
        let r = run(&spec(0.10), &sample(1, 2000, 1300.0), &sample(2, 2000, 1000.0));
        assert_eq!(r.outcome, Outcome::Fail, "{r:?}");
        assert!((0.2..0.4).contains(&r.effect), "{r:?}");
    }

    #[test]
    fn a_slowdown_at_the_tolerance_with_few_samples_is_inconclusive() {
        let r = run(&spec(0.10), &sample(1, 40, 1100.0), &sample(2, 40, 1000.0));
        assert_eq!(r.outcome, Outcome::Inconclusive, "{r:?}");
    }

    #[test]
    fn error_rates_compare_in_points() {
        let h = sample(1, 1000, 1000.0);
        let c = Compare { metric: CompareMetric::Errors, max_regression: 0.01, ..spec(0.0) };
        let worse = compare(&c, &Sides { candidate: &h, baseline: &h, candidate_errors: 80, baseline_errors: 10 });
        assert_eq!(worse.outcome, Outcome::Fail);
        let same = compare(&c, &Sides { candidate: &h, baseline: &h, candidate_errors: 0, baseline_errors: 0 });
        assert_eq!(same.outcome, Outcome::Pass);
    }

    #[test]
    fn normal_cdf_is_accurate() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.644_854) - 0.05).abs() < 1e-6);
    }
}
