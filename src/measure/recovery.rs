//! `recovery.time`: how long after the last fault lifted the stage was back in band.
//!
//! The band is set from the stage's own `before` phase (no fault yet): latency p99 at
//! most one and a half times the before-phase p99 plus 5 ms, and an error rate at most
//! the before-phase rate plus one percentage point. After the last fault ends, the
//! tracker slides a one-second window in 100 ms steps; the first window that is in band
//! marks recovery. A stage that never gets back in band before it ends has no recovery
//! time (criteria on it are then inconclusive, not passed).

use std::time::Duration;

use serde::Serialize;

use super::SliceMetrics;

/// The recovery measured in one stage.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Recovery {
    /// Seconds from the last fault's end to the start of the first in-band window;
    /// `None` if that never happened before the stage ended.
    pub seconds: Option<f64>,
    /// The latency band (p99, milliseconds) and error band used.
    pub band_p99_ms: f64,
    pub band_error_rate: f64,
    /// How the band was set, in words.
    pub band: String,
}

/// Keeps the samples after the last fault's end.
#[derive(Debug, Clone)]
pub(super) struct Tracker {
    last_end: Option<Duration>,
    samples: Vec<(Duration, u64, bool)>,
}

impl Tracker {
    pub fn new(last_end: Option<Duration>) -> Self {
        Tracker { last_end, samples: Vec::new() }
    }

    pub fn record(&mut self, offset: Duration, micros: u64, failed: bool) {
        if self.last_end.is_some_and(|e| offset >= e) {
            self.samples.push((offset, micros, failed));
        }
    }

    /// Why [`Tracker::finish`] gives no recovery, in words (`None` when it gives one).
    pub fn missing_because(&self, before: &SliceMetrics) -> Option<String> {
        if self.last_end.is_none() {
            return Some("no fault ended before the stage did".into());
        }
        if before.latency.p99.is_none() {
            return Some(
                "no judged request before the first fault (it starts at 0s or within the warm-up), so there is no band to come back to"
                    .into(),
            );
        }
        None
    }

    pub fn finish(&self, before: &SliceMetrics, until: Duration) -> Option<Recovery> {
        let last_end = self.last_end?;
        let p99 = before.latency.p99?;
        let band_p99_ms = p99 * 1.5 + 5.0;
        let band_error_rate = before.error_rate() + 0.01;
        let window = Duration::from_secs(1);
        let step = Duration::from_millis(100);
        let mut start = last_end;
        let mut seconds = None;
        while start + window <= until {
            let mut in_window: Vec<(u64, bool)> = self
                .samples
                .iter()
                .filter(|(t, _, _)| *t >= start && *t < start + window)
                .map(|(_, m, f)| (*m, *f))
                .collect();
            if !in_window.is_empty() {
                in_window.sort_unstable();
                let idx = ((in_window.len() as f64 * 0.99).ceil() as usize).clamp(1, in_window.len()) - 1;
                let win_p99 = in_window[idx].0 as f64 / 1000.0;
                let errors = in_window.iter().filter(|(_, f)| *f).count() as f64 / in_window.len() as f64;
                if win_p99 <= band_p99_ms && errors <= band_error_rate {
                    seconds = Some((start - last_end).as_secs_f64());
                    break;
                }
            }
            start += step;
        }
        Some(Recovery {
            seconds,
            band_p99_ms,
            band_error_rate,
            band: format!(
                "p99 <= 1.5 x before-phase p99 ({p99:.1}ms) + 5ms, errors <= before-phase rate + 1 point; first in-band 1s window after the last fault"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::LatencySummary;

    #[test]
    fn recovery_is_the_first_in_band_window() {
        let before = SliceMetrics {
            requests: 100,
            latency: LatencySummary { p99: Some(10.0), ..Default::default() },
            ..Default::default()
        };
        let mut t = Tracker::new(Some(Duration::from_secs(2)));
        // Slow for 1.5 s after the fault, then fast.
        for i in 0..400u64 {
            let at = Duration::from_millis(2000 + i * 10);
            let slow = at < Duration::from_millis(3500);
            t.record(at, if slow { 200_000 } else { 5_000 }, false);
        }
        let r = t.finish(&before, Duration::from_secs(6)).unwrap();
        let s = r.seconds.unwrap();
        assert!((1.5..=1.6).contains(&s), "{s}");
    }

    #[test]
    fn no_recovery_before_the_end_is_none() {
        let before = SliceMetrics {
            requests: 100,
            latency: LatencySummary { p99: Some(10.0), ..Default::default() },
            ..Default::default()
        };
        let mut t = Tracker::new(Some(Duration::from_secs(2)));
        for i in 0..100u64 {
            t.record(Duration::from_millis(2000 + i * 10), 500_000, true);
        }
        assert_eq!(t.finish(&before, Duration::from_secs(3)).unwrap().seconds, None);
    }
}
