//! The comparison statistics pinned against an independent implementation: scipy's
//! `mannwhitneyu` (from PyPI) on fixed data sets, with ties, small samples and every
//! alternative, must give the same p-values within 1e-6; and scipy's `wilcoxon` for the
//! signed-rank test that compares two runs window against window.

mod common;

use std::process::Command;

use stagegate::verdict::stats::{Alternative, Method, holm, mann_whitney, signed_rank};

/// Fixed data sets: (name, x, y).
fn data_sets() -> Vec<(&'static str, Vec<f64>, Vec<f64>)> {
    vec![
        ("small, no ties", vec![1.1, 2.3, 3.7, 4.2], vec![2.0, 5.1, 6.4, 7.7, 8.2]),
        ("small, x above", vec![10.0, 11.5, 12.25], vec![1.0, 2.0, 3.0, 4.5]),
        ("one against many", vec![5.5], vec![1.0, 2.0, 3.0, 4.0, 6.0, 7.0]),
        ("ties across samples", vec![3.0, 3.0, 4.0, 5.0, 5.0, 9.0], vec![1.0, 3.0, 3.0, 5.0, 6.0, 6.0, 7.0]),
        (
            "window medians with ties",
            vec![12.1, 12.3, 12.3, 11.9, 12.8, 13.0, 12.3, 12.2, 12.9, 13.4, 12.0, 12.3, 12.6, 12.7, 12.3, 12.5],
            vec![11.8, 12.0, 12.3, 11.7, 12.1, 12.3, 12.2, 11.9, 12.0, 12.4, 12.3, 11.6, 12.1, 12.0, 11.9, 12.2],
        ),
        (
            "larger, shifted",
            (0..40).map(|i| ((i * 37) % 41) as f64 * 0.7 + 3.0).collect(),
            (0..35).map(|i| ((i * 17) % 43) as f64 * 0.65).collect(),
        ),
        ("all equal", vec![2.0, 2.0, 2.0], vec![2.0, 2.0, 2.0, 2.0]),
    ]
}

fn list(v: &[f64]) -> String {
    format!("[{}]", v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", "))
}

/// scipy's p-value for each (data set, alternative, method), in order.
fn scipy_p_values(cases: &[(Vec<f64>, Vec<f64>, &str, &str)]) -> Vec<f64> {
    let mut script = String::from("import math\nfrom scipy.stats import mannwhitneyu\n");
    for (x, y, alt, method) in cases {
        script.push_str(&format!(
            "r = mannwhitneyu({}, {}, alternative='{alt}', method='{method}', use_continuity=True)\nprint(repr(float(r.pvalue)))\n",
            list(x),
            list(y)
        ));
    }
    common::require_python(&["scipy"], "scipy");
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3 runs");
    assert!(out.status.success(), "scipy is needed (pip install scipy): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse::<f64>().unwrap()).collect()
}

#[test]
fn mann_whitney_agrees_with_scipy_within_1e_6() {
    let alternatives =
        [(Alternative::Greater, "greater"), (Alternative::Less, "less"), (Alternative::TwoSided, "two-sided")];
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (name, x, y) in data_sets() {
        let ties = {
            let mut all: Vec<f64> = x.iter().chain(&y).copied().collect();
            all.sort_by(f64::total_cmp);
            all.windows(2).any(|w| w[0] == w[1])
        };
        for (alt, alt_name) in alternatives {
            let mut methods = vec![(Method::Asymptotic, "asymptotic")];
            if !ties {
                methods.push((Method::Exact, "exact"));
            }
            for (method, method_name) in methods {
                let p = mann_whitney(&x, &y, alt, method).unwrap().p;
                ours.push((format!("{name}, {alt_name}, {method_name}"), p));
                cases.push((x.clone(), y.clone(), alt_name, method_name));
            }
        }
    }
    let theirs = scipy_p_values(&cases);
    assert_eq!(theirs.len(), ours.len());
    for ((what, p), q) in ours.iter().zip(&theirs) {
        // scipy gives nan where the spread is zero (all values equal); stagegate says 1.
        if q.is_nan() {
            assert_eq!(*p, 1.0, "{what}");
            continue;
        }
        assert!((p - q).abs() < 1e-6, "{what}: stagegate {p}, scipy {q}");
    }
}

#[test]
fn signed_rank_agrees_with_scipy_within_1e_6() {
    // Differences of paired windows: with ties, zeros, one sign only, and mixed.
    let sets: Vec<(&str, Vec<f64>)> = vec![
        ("mixed", vec![0.4, -1.2, 2.5, 0.9, -0.3, 1.7, 3.1, -0.8, 0.6, 1.1]),
        ("ties and zeros", vec![1.0, -1.0, 1.0, 0.0, 2.0, -2.0, 2.0, 0.0, 3.0, 1.0, -0.5, 0.5]),
        ("all below", (0..40).map(|i| -0.1 - ((i * 7) % 11) as f64 * 0.01).collect()),
        ("one value repeated", vec![-0.02; 40]),
        ("window differences", (0..40).map(|i| ((i * 37) % 41) as f64 * 0.05 - 0.9).collect()),
    ];
    let mut script = String::from("from scipy.stats import wilcoxon\n");
    let mut ours = Vec::new();
    for (name, d) in &sets {
        for (alt, alt_name) in
            [(Alternative::Greater, "greater"), (Alternative::Less, "less"), (Alternative::TwoSided, "two-sided")]
        {
            script.push_str(&format!(
                "print(repr(float(wilcoxon({}, zero_method='wilcox', correction=False, alternative='{alt_name}', method='approx').pvalue)))\n",
                list(d)
            ));
            ours.push((format!("{name}, {alt_name}"), signed_rank(d, alt).unwrap()));
        }
    }
    common::require_python(&["scipy"], "scipy");
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<f64> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse::<f64>().unwrap()).collect();
    assert_eq!(theirs.len(), ours.len());
    for ((what, p), q) in ours.iter().zip(&theirs) {
        assert!((p - q).abs() < 1e-6, "{what}: stagegate {p}, scipy {q}");
    }
    assert_eq!(signed_rank(&[0.0, 0.0], Alternative::Greater), None, "no difference at all: no test");
}

#[test]
fn holm_steps_down_as_defined() {
    // Holm's step-down on a fixed family, worked by hand from its definition.
    let p = [0.010, 0.040, 0.030, 0.005, 0.200];
    let adjusted = holm(&p);
    let expected = [0.040, 0.090, 0.090, 0.025, 0.200];
    for (a, e) in adjusted.iter().zip(expected) {
        assert!((a - e).abs() < 1e-12, "{adjusted:?}");
    }
}
