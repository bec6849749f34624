//! Freshness: from a record's acknowledgement to its first appearance in the output.
//!
//! [`Arrivals`] is where observers note the first moment they saw each key: the sink
//! as records are pushed to it, a scan or the builtin store's reader at each listing.
//! [`summarize`] pairs those moments with the acknowledgement times the driver saw and
//! gives the percentiles the `freshness.*` metrics read. A record seen before its
//! acknowledgement arrived counts as fresh at zero.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// The first time each key was seen in the output, shared between observers.
#[derive(Debug, Clone, Default)]
pub struct Arrivals(Arc<Mutex<HashMap<String, Instant>>>);

impl Arrivals {
    /// Notes `key` as seen at `at`, unless it was seen earlier.
    pub fn seen(&self, key: String, at: Instant) {
        self.lock().entry(key).or_insert(at);
    }

    /// Whether every one of `keys` has been seen.
    pub fn has_all<'a>(&self, mut keys: impl Iterator<Item = &'a String>) -> bool {
        let seen = self.lock();
        keys.all(|k| seen.contains_key(k))
    }

    /// Forgets everything (a new stage begins).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The arrivals so far.
    pub fn snapshot(&self) -> HashMap<String, Instant> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The freshness of one stage's judged records, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Freshness {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    /// Acknowledged records that were seen in the output (the samples).
    pub records: u64,
    /// How arrivals were timed: `sink`, `scan every 500ms`, `store every 100ms`.
    pub observed_by: String,
}

/// Pairs acknowledgements with arrivals; records never seen are left out (they are
/// `lost`, which the ledger counts).
pub fn summarize(acks: &HashMap<String, Instant>, arrivals: &HashMap<String, Instant>, observed_by: &str) -> Freshness {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds");
    for (key, acked) in acks {
        if let Some(seen) = arrivals.get(key) {
            let lag = seen.saturating_duration_since(*acked);
            h.saturating_record((lag.as_micros() as u64).max(1));
        }
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
        let mut acks = HashMap::new();
        let mut seen = HashMap::new();
        for i in 0..100u64 {
            acks.insert(format!("k{i}"), t0);
            seen.insert(format!("k{i}"), t0 + Duration::from_millis(i + 1));
        }
        acks.insert("early".into(), t0 + Duration::from_secs(1));
        seen.insert("early".into(), t0);
        acks.insert("never".into(), t0);
        let f = summarize(&acks, &seen, "sink");
        assert_eq!(f.records, 101, "the unseen record is not a sample");
        let p50 = f.p50.unwrap();
        assert!((49.0..=51.1).contains(&p50), "p50 {p50}");
        assert!((99.0..=100.1).contains(&f.max.unwrap()), "max {:?}", f.max);
    }

    #[test]
    fn nothing_seen_gives_no_value() {
        let f = summarize(&HashMap::new(), &HashMap::new(), "sink");
        assert_eq!((f.p50, f.records), (None, 0));
    }

    #[test]
    fn the_first_sighting_wins() {
        let a = Arrivals::default();
        let t0 = Instant::now();
        a.seen("k".into(), t0);
        a.seen("k".into(), t0 + Duration::from_secs(1));
        assert_eq!(a.snapshot()["k"], t0);
        assert!(a.has_all([String::from("k")].iter()));
        assert!(!a.has_all([String::from("j")].iter()));
    }
}
