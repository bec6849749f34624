//! The statistics behind comparisons: the Mann-Whitney U test (exact for small samples
//! without ties, normal approximation with tie and continuity corrections otherwise, as
//! `scipy.stats.mannwhitneyu` computes them), a block bootstrap for confidence intervals,
//! the smallest effect a comparison could have detected, and Holm's step-down
//! adjustment for a family of tests.
//!
//! Latency samples are correlated in time (a fault or a pause slows a burst of requests
//! together), so comparisons never test raw requests: they test one figure per time
//! window (`crate::measure::Window`), which are close to independent; the bootstrap
//! resamples whole windows for the same reason.
//!
//! Pinned against scipy on fixed data sets by `tests/statistics.rs`.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Which way a test looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alternative {
    /// `x` tends to be larger than `y`.
    Greater,
    /// `x` tends to be smaller than `y`.
    Less,
    TwoSided,
}

/// How the p-value is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The exact distribution of U (only without ties).
    Exact,
    /// The normal approximation, with tie and continuity corrections.
    Asymptotic,
    /// Exact when both samples hold at most [`EXACT_UP_TO`] values and there are no ties.
    Auto,
}

/// Samples up to this size get the exact test under [`Method::Auto`].
pub const EXACT_UP_TO: usize = 8;

/// A Mann-Whitney U test's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample (how many pairs it wins, ties counting a half).
    pub u: f64,
    pub p: f64,
}

/// The Wilcoxon signed-rank test of the differences `d` against 0, by the normal
/// approximation with ties averaged and zeros dropped (scipy's `wilcoxon(d,
/// zero_method="wilcox", correction=False, method="approx")`); the p-value that the
/// differences lean the way `alternative` says (`Greater`: above 0). `None` when every
/// difference is 0.
pub fn signed_rank(d: &[f64], alternative: Alternative) -> Option<f64> {
    let nz: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0 && x.is_finite()).collect();
    let n = nz.len();
    if n == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| nz[a].abs().total_cmp(&nz[b].abs()));
    let mut ranks = vec![0.0; n];
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && nz[order[j + 1]].abs() == nz[order[i]].abs() {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for k in &order[i..=j] {
            ranks[*k] = rank;
        }
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let r_plus: f64 = (0..n).filter(|&k| nz[k] > 0.0).map(|k| ranks[k]).sum();
    let nf = n as f64;
    let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - ties / 48.0;
    if var <= 0.0 {
        return None;
    }
    let z = (r_plus - nf * (nf + 1.0) / 4.0) / var.sqrt();
    Some(match alternative {
        Alternative::Greater => normal_sf(z),
        Alternative::Less => normal_sf(-z),
        Alternative::TwoSided => (2.0 * normal_sf(z.abs())).min(1.0),
    })
}

/// The Mann-Whitney U test of `x` against `y`; `None` when either is empty.
pub fn mann_whitney(x: &[f64], y: &[f64], alternative: Alternative, method: Method) -> Option<MannWhitney> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    // Mid-ranks over the pooled sample, and the tie term.
    let mut pooled: Vec<(f64, bool)> = x.iter().map(|v| (*v, true)).chain(y.iter().map(|v| (*v, false))).collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_x = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < pooled.len() {
        let mut j = i;
        while j + 1 < pooled.len() && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_x += mid * pooled[i..=j].iter().filter(|p| p.1).count() as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let (a, b) = (n1 as f64, n2 as f64);
    let u1 = rank_sum_x - a * (a + 1.0) / 2.0;
    let u2 = a * b - u1;
    let u = match alternative {
        Alternative::Greater => u1,
        Alternative::Less => u2,
        Alternative::TwoSided => u1.max(u2),
    };
    let exact = match method {
        Method::Exact => true,
        Method::Asymptotic => false,
        Method::Auto => n1.max(n2) <= EXACT_UP_TO && ties == 0.0,
    };
    let mut p = if exact {
        exact_sf(u, n1, n2)
    } else {
        let n = a + b;
        let sd = (a * b / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)))).sqrt();
        if sd == 0.0 { 1.0 } else { normal_sf((u - a * b / 2.0 - 0.5) / sd) }
    };
    if alternative == Alternative::TwoSided {
        p *= 2.0;
    }
    Some(MannWhitney { u: u1, p: p.clamp(0.0, 1.0) })
}

/// P(U >= u) under the null hypothesis, from the exact distribution of U for samples of
/// `n1` and `n2` values (counted by the usual recurrence).
fn exact_sf(u: f64, n1: usize, n2: usize) -> f64 {
    let (m, n) = (n1.min(n2), n1.max(n2));
    let max_u = m * n;
    // counts[k][u]: arrangements of k values of the smaller sample among j of the other.
    let mut prev = vec![vec![0f64; max_u + 1]; m + 1];
    for row in prev.iter_mut() {
        row[0] = 1.0;
    }
    for _j in 1..=n {
        let mut next = vec![vec![0f64; max_u + 1]; m + 1];
        next[0][0] = 1.0;
        for k in 1..=m {
            for v in 0..=max_u {
                // The largest value is from the other sample (adds nothing), or from
                // this one (beats all j others).
                let mut c = prev[k][v];
                if v >= _j {
                    c += next[k - 1][v - _j];
                }
                next[k][v] = c;
            }
        }
        prev = next;
    }
    let counts = &prev[m];
    let total: f64 = counts.iter().sum();
    let from = u.ceil().max(0.0) as usize;
    counts.iter().skip(from).sum::<f64>() / total
}

/// The standard normal distribution's upper tail, P(Z > z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile (inverse of the distribution function), by bisection on
/// [`normal_sf`]: exact enough for thresholds and powers.
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0, 40.0);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if 1.0 - normal_sf(mid) < p { lo = mid } else { hi = mid }
    }
    (lo + hi) / 2.0
}

/// The median of `v` (the mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// The sample standard deviation of `v` (0 for fewer than two values).
pub fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// A `level` confidence interval of `statistic(candidate) - statistic(baseline)`, from a
/// bootstrap that resamples whole windows on each side (`rounds` times, seeded: the
/// same data give the same interval).
pub fn bootstrap_difference(
    candidate: &[f64],
    baseline: &[f64],
    statistic: impl Fn(&[f64]) -> Option<f64>,
    level: f64,
    rounds: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    if candidate.is_empty() || baseline.is_empty() {
        return None;
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut draw =
        |from: &[f64]| -> Vec<f64> { (0..from.len()).map(|_| from[rng.random_range(0..from.len())]).collect() };
    let mut diffs: Vec<f64> = (0..rounds)
        .filter_map(|_| {
            let c = draw(candidate);
            let b = draw(baseline);
            Some(statistic(&c)? - statistic(&b)?)
        })
        .collect();
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    let at = |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
    Some((at(tail), at(1.0 - tail)))
}

/// A spread that a few extreme windows (a fault's) do not inflate: the median absolute
/// deviation, scaled to match the standard deviation of normal data.
pub fn robust_spread(v: &[f64]) -> f64 {
    let Some(m) = median(v) else { return 0.0 };
    let deviations: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    median(&deviations).unwrap_or(0.0) * 1.4826
}

/// The smallest shift of the candidate's windows a one-sided test at `alpha` would see
/// with 80% power, from the spread of both sides' windows (a normal approximation on
/// their robust spread, since a rank test is not moved by a few extreme windows either,
/// scaled by the rank test's efficiency against the t test, 3/pi).
pub fn detectable_shift(candidate: &[f64], baseline: &[f64], alpha: f64) -> Option<f64> {
    if candidate.len() < 2 || baseline.len() < 2 {
        return None;
    }
    let se = (robust_spread(candidate).powi(2) / candidate.len() as f64
        + robust_spread(baseline).powi(2) / baseline.len() as f64)
        .sqrt();
    let efficiency = 3.0 / std::f64::consts::PI;
    Some((normal_quantile(1.0 - alpha) + normal_quantile(0.8)) * se / efficiency.sqrt())
}

/// [`detectable_shift`] for paired windows: from the spread of their differences `d`
/// (the signed-rank test's efficiency against the t test is 3/pi too).
pub fn detectable_paired_shift(d: &[f64], alpha: f64) -> Option<f64> {
    if d.len() < 2 {
        return None;
    }
    let se = robust_spread(d) / (d.len() as f64).sqrt();
    let efficiency = 3.0 / std::f64::consts::PI;
    Some((normal_quantile(1.0 - alpha) + normal_quantile(0.8)) * se / efficiency.sqrt())
}

/// Holm's step-down adjustment: each p-value of a family multiplied by the number of
/// tests not yet passed, never below an earlier one; the chance of at least one false
/// rejection in the family stays at the level each adjusted value is compared with.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_asymptotic_agree_on_a_larger_sample() {
        let x: Vec<f64> = (0..30).map(|i| i as f64 * 1.1 + 0.3).collect();
        let y: Vec<f64> = (0..30).map(|i| i as f64).collect();
        let e = mann_whitney(&x, &y, Alternative::Greater, Method::Exact).unwrap();
        let a = mann_whitney(&x, &y, Alternative::Greater, Method::Asymptotic).unwrap();
        assert!((e.p - a.p).abs() < 0.01, "{e:?} {a:?}");
    }

    #[test]
    fn the_exact_distribution_of_the_smallest_samples() {
        // 3 against 3, x all above y: one arrangement of twenty.
        let p = mann_whitney(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0], Alternative::Greater, Method::Exact).unwrap().p;
        assert!((p - 0.05).abs() < 1e-12, "{p}");
    }

    #[test]
    fn a_few_extreme_windows_do_not_hide_what_the_rest_can_see() {
        let calm: Vec<f64> = (0..40).map(|i| 10.0 + (i % 5) as f64 * 0.1).collect();
        let mut faulted = calm.clone();
        for w in faulted.iter_mut().take(4) {
            *w = 400.0;
        }
        let both = detectable_shift(&faulted, &faulted, 0.05).unwrap();
        assert!(both < 1.0, "four fault windows made the test blind: {both}");
    }

    #[test]
    fn holm_steps_down() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.5]);
        assert_eq!(adj, vec![0.04, 0.09, 0.09, 0.5]);
    }

    #[test]
    fn quantiles_invert_the_tail() {
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_sf(1.644_853_6) - 0.05).abs() < 1e-8);
    }
}
