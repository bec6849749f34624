//! Freshness: from a record's acknowledgement to its first appearance in the output.
//!
//! Observers note in the ledger the first moment they saw each key (the sink as records
//! are pushed to it, a scan or the builtin store's reader at each listing); [`summarize`]
//! turns those moments and the acknowledgement times the driver saw into the
//! percentiles the `freshness.*` metrics read. A record seen before its acknowledgement
//! arrived counts as fresh at zero.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// The freshness of one stage's judged records, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Freshness {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    /// Acknowledged records that were seen in the output (the samples).
    pub records: u64,
    /// How arrivals were timed: `sink`, `scan every 500ms`, `store every 100ms`.
    pub observed_by: String,
}

/// Summarises `(acknowledged, first seen)` pairs; records never seen are not among them
/// (they are `lost`, which the ledger counts).
pub fn summarize(pairs: &[(Instant, Instant)], observed_by: &str) -> Freshness {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds");
    for (acked, seen) in pairs {
        let lag = seen.saturating_duration_since(*acked);
        h.saturating_record((lag.as_micros() as u64).max(1));
    }
    let ms = |v: u64| v as f64 / 1000.0;
    let q = |q: f64| (!h.is_empty()).then(|| ms(h.value_at_quantile(q)));
    Freshness {
        p50: q(0.5),
        p99: q(0.99),
        max: (!h.is_empty()).then(|| ms(h.max())),
        records: h.len(),
        observed_by: observed_by.to_string(),
    }
}

/// `scan every 500ms`-style wording for a polling observer.
pub fn polled(what: &str, every: Duration) -> String {
    format!("{what} every {}", crate::scenario::units::format_duration(every))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_arrival_minus_ack_and_early_arrivals_count_as_zero() {
        let t0 = Instant::now();
        let mut pairs: Vec<(Instant, Instant)> = (0..100u64).map(|i| (t0, t0 + Duration::from_millis(i + 1))).collect();
        pairs.push((t0 + Duration::from_secs(1), t0));
        let f = summarize(&pairs, "sink");
        assert_eq!(f.records, 101);
        let p50 = f.p50.unwrap();
        assert!((49.0..=51.1).contains(&p50), "p50 {p50}");
        assert!((99.0..=100.1).contains(&f.max.unwrap()), "max {:?}", f.max);
    }

    #[test]
    fn nothing_seen_gives_no_value() {
        let f = summarize(&[], "sink");
        assert_eq!((f.p50, f.records), (None, 0));
    }
}
