//! Measurements of one stage: request latency and outcomes, split into warm-up (measured,
//! not judged) and the judged window.
//!
//! Latency is recorded from each request's *intended* send time, so a stalled system
//! under test shows up as latency instead of being hidden by a load generator that
//! slowed down with it (no coordinated omission). The [`Recorder`] takes one sample per
//! request; [`StageMetrics`] is the summary that criteria read. Data-quality counts live
//! in [`crate::quality`] and are copied in at the end of the stage.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::quality::DataCounts;

/// How one request ended, from the load generator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer: the record was acknowledged.
    Acked,
    /// A 4xx answer: the system under test refused the record.
    Rejected,
    /// A transport error, a timeout or a 5xx answer.
    Failed,
}

/// Collects the samples of one stage.
pub struct Recorder {
    warmup: Duration,
    judged: Histogram<u64>,
    warm: Histogram<u64>,
    judged_requests: u64,
    judged_errors: u64,
    judged_acked: u64,
    warmup_requests: u64,
}

/// Latencies are kept in microseconds, from 1µs to one hour, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Recorder {
    /// A recorder that does not judge requests intended before `warmup`.
    pub fn new(warmup: Duration) -> Self {
        Recorder {
            warmup,
            judged: new_histogram(),
            warm: new_histogram(),
            judged_requests: 0,
            judged_errors: 0,
            judged_acked: 0,
            warmup_requests: 0,
        }
    }

    /// Records one request intended at `offset` into the stage.
    pub fn record(&mut self, offset: Duration, latency: Duration, outcome: Outcome) {
        let micros = (latency.as_micros() as u64).max(1);
        if offset < self.warmup {
            self.warm.saturating_record(micros);
            self.warmup_requests += 1;
            return;
        }
        self.judged.saturating_record(micros);
        self.judged_requests += 1;
        match outcome {
            Outcome::Acked => self.judged_acked += 1,
            Outcome::Failed => self.judged_errors += 1,
            Outcome::Rejected => {}
        }
    }

    /// Summarises the stage; `judged_for` is how long the judged window lasted.
    pub fn finish(&self, judged_for: Duration, data: DataCounts) -> StageMetrics {
        let h = &self.judged;
        let q =
            |quantile: f64| (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1000.0);
        let secs = judged_for.as_secs_f64();
        StageMetrics {
            requests: self.judged_requests,
            warmup_requests: self.warmup_requests,
            errors: self.judged_errors,
            latency: LatencySummary {
                p50: q(0.50),
                p90: q(0.90),
                p95: q(0.95),
                p99: q(0.99),
                p999: q(0.999),
                max: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
                mean: (!h.is_empty()).then(|| h.mean() / 1000.0),
            },
            throughput: if secs > 0.0 {
                self.judged_acked as f64 / secs
            } else {
                0.0
            },
            data,
        }
    }
}

/// Request latency quantiles of the judged window, in milliseconds (`None`: no sample).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

/// Everything measured in one stage that a criterion can read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageMetrics {
    /// Requests intended after warm-up (the judged ones).
    pub requests: u64,
    /// Requests intended during warm-up (measured, not judged).
    pub warmup_requests: u64,
    /// Judged requests that failed (transport error, timeout, 5xx).
    pub errors: u64,
    pub latency: LatencySummary,
    /// Acknowledged requests per second over the judged window.
    pub throughput: f64,
    /// Data-quality counts over the whole stage, warm-up included.
    pub data: DataCounts,
}

impl StageMetrics {
    /// Failed share of judged requests (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_measured_but_not_judged() {
        let mut r = Recorder::new(Duration::from_secs(1));
        r.record(
            Duration::from_millis(500),
            Duration::from_secs(5),
            Outcome::Failed,
        );
        for i in 0..100 {
            let outcome = if i < 3 {
                Outcome::Failed
            } else {
                Outcome::Acked
            };
            r.record(
                Duration::from_millis(1000 + i),
                Duration::from_millis(10),
                outcome,
            );
        }
        let m = r.finish(Duration::from_secs(1), DataCounts::default());
        assert_eq!(m.requests, 100);
        assert_eq!(m.warmup_requests, 1);
        assert_eq!(m.errors, 3);
        assert!((m.error_rate() - 0.03).abs() < 1e-9);
        // The 5 s warm-up request does not reach the judged maximum.
        let max = m.latency.max.unwrap();
        assert!((9.9..10.1).contains(&max), "{max}");
        assert!((m.throughput - 97.0).abs() < 1e-9);
    }

    #[test]
    fn no_samples_means_no_quantiles() {
        let r = Recorder::new(Duration::ZERO);
        let m = r.finish(Duration::from_secs(1), DataCounts::default());
        assert_eq!(m.latency.p99, None);
    }
}
