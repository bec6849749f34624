//! A stage over time: per second (or per interval, for stages longer than
//! [`MAX_POINTS`] seconds), what was sent, how it ended, its latency, what became of
//! its records and which faults were active. Behind every plot and in report.json.
//!
//! Requests are filed by their intended send time, as everywhere in `measure`, so a
//! stall shows in the interval that should have sent the requests it held up. Latency
//! is kept per interval at two significant digits (a plot needs no more), and the
//! number of intervals is bounded, so a day-long stage costs what a ten-minute one does.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Outcome;
use crate::fault::FaultRecord;
use crate::quality::DataCounts;

/// The most intervals a stage is cut into; longer stages get longer intervals.
pub const MAX_POINTS: u64 = 600;

/// One interval of a stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Point {
    /// Its start, from the stage's start, in seconds.
    pub at_secs: f64,
    /// Whether it lies in the warm-up (measured, not judged).
    pub warmup: bool,
    /// Requests due in it that went out, and how those ended.
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub failed: u64,
    /// Latency of the requests due in it, in milliseconds (`None`: none ended).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// What became of the records sent in it, once the output was read (`None`: the
    /// output was not observed).
    pub lost: Option<u64>,
    pub duplicated: Option<u64>,
    pub corrupted: Option<u64>,
    /// Faults active at some moment of it, as `KIND at PLACE`.
    pub faults: Vec<String>,
}

/// A stage's time series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Series {
    /// Seconds each point covers (1 unless the stage is longer than 600 s).
    pub interval_secs: f64,
    pub points: Vec<Point>,
}

/// Collects a stage's series while it runs.
#[derive(Debug)]
pub struct SeriesRecorder {
    width: Duration,
    counts: Vec<Point>,
    latency: Vec<Option<Histogram<u32>>>,
}

impl SeriesRecorder {
    /// For a stage of `length` whose first `warmup` is not judged.
    pub fn new(length: Duration, warmup: Duration) -> SeriesRecorder {
        let secs = length.as_secs().max(1);
        let width = Duration::from_secs(secs.div_ceil(MAX_POINTS).max(1));
        let n = secs.div_ceil(width.as_secs()) as usize;
        let counts = (0..n)
            .map(|i| {
                let from = width * i as u32;
                Point { at_secs: from.as_secs_f64(), warmup: from < warmup, ..Point::default() }
            })
            .collect();
        SeriesRecorder { width, counts, latency: vec![None; n] }
    }

    /// Interval `i` as it stands (requests still in flight not in it yet).
    pub fn point(&self, i: usize) -> Option<Point> {
        let mut p = self.counts.get(i)?.clone();
        if let Some(h) = self.latency.get(i).and_then(Option::as_ref).filter(|h| !h.is_empty()) {
            p.p50_ms = Some(h.value_at_quantile(0.5) as f64 / 1000.0);
            p.p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
            p.max_ms = Some(h.max() as f64 / 1000.0);
        }
        Some(p)
    }

    /// The stage now lasts `length` (an operator held it): intervals are added to cover
    /// it, up to twice [`MAX_POINTS`].
    pub fn extend(&mut self, length: Duration) {
        let n = (length.as_secs().max(1).div_ceil(self.width.as_secs()) as usize).min(2 * MAX_POINTS as usize);
        while self.counts.len() < n {
            let from = self.width * self.counts.len() as u32;
            self.counts.push(Point { at_secs: from.as_secs_f64(), ..Point::default() });
            self.latency.push(None);
        }
    }

    /// The stage ended at `length` (an operator ended it early): later intervals go.
    pub fn truncate(&mut self, length: Duration) {
        let n = (length.as_secs_f64() / self.width.as_secs_f64()).ceil().max(1.0) as usize;
        self.counts.truncate(n);
        self.latency.truncate(n);
    }

    /// The interval of a request due at `offset` (the last for one due after the end).
    pub fn index(&self, offset: Duration) -> usize {
        ((offset.as_nanos() / self.width.as_nanos()) as usize).min(self.counts.len().saturating_sub(1))
    }

    /// A request due at `offset` went out.
    pub fn sent(&mut self, offset: Duration) {
        let i = self.index(offset);
        if let Some(p) = self.counts.get_mut(i) {
            p.sent += 1;
        }
    }

    /// A request due at `offset` ended after `latency`.
    pub fn ended(&mut self, offset: Duration, latency: Duration, outcome: Outcome) {
        let i = self.index(offset);
        let Some(p) = self.counts.get_mut(i) else { return };
        match outcome {
            Outcome::Acked => p.acked += 1,
            Outcome::Rejected => p.rejected += 1,
            Outcome::Failed => p.failed += 1,
        }
        let h = self.latency[i].get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
        });
        h.saturating_record((latency.as_micros() as u64).max(1));
    }

    /// The series, with the records' fates by interval (`data`, as the ledger filed them
    /// by [`SeriesRecorder::index`]; `None` when the output was not observed) and the
    /// stage's faults.
    pub fn finish(self, data: Option<&[DataCounts]>, faults: &[FaultRecord]) -> Series {
        let width = self.width.as_secs_f64();
        let points = self
            .counts
            .into_iter()
            .zip(self.latency)
            .enumerate()
            .map(|(i, (mut p, h))| {
                if let Some(h) = h.filter(|h| !h.is_empty()) {
                    p.p50_ms = Some(h.value_at_quantile(0.5) as f64 / 1000.0);
                    p.p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
                    p.max_ms = Some(h.max() as f64 / 1000.0);
                }
                if let Some(data) = data {
                    let d = data.get(i).copied().unwrap_or_default();
                    (p.lost, p.duplicated, p.corrupted) = (Some(d.lost), Some(d.duplicated), Some(d.corrupted));
                }
                let (from, to) = (p.at_secs, p.at_secs + width);
                p.faults = faults
                    .iter()
                    .filter(|f| f.started_secs < to && f.ended_secs.is_none_or(|e| e > from))
                    .map(|f| format!("{} at {}", f.kind, f.at))
                    .collect();
                p.faults.dedup();
                p
            })
            .collect();
        Series { interval_secs: width, points }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn requests_fall_in_the_second_they_were_due_with_their_faults() {
        let mut r = SeriesRecorder::new(ms(3000), ms(1000));
        for i in 0..30 {
            r.sent(ms(i * 100));
            let slow = (1000..2000).contains(&(i * 100));
            r.ended(ms(i * 100), ms(if slow { 50 } else { 2 }), if i == 25 { Outcome::Failed } else { Outcome::Acked });
        }
        let fault = FaultRecord {
            stage: "s".into(),
            index: 0,
            kind: "latency".into(),
            at: "store".into(),
            started_secs: 1.0,
            ended_secs: Some(2.0),
            removed: true,
            until_secs: None,
            by: None,
        };
        let data = [DataCounts::default(), DataCounts { lost: 2, ..Default::default() }];
        let s = r.finish(Some(&data), &[fault]);
        assert_eq!(s.interval_secs, 1.0);
        assert_eq!(s.points.len(), 3);
        let [a, b, c] = [&s.points[0], &s.points[1], &s.points[2]];
        assert!(a.warmup && !b.warmup);
        assert_eq!((a.sent, b.sent, c.sent), (10, 10, 10));
        assert_eq!((c.acked, c.failed), (9, 1));
        assert!(b.p50_ms.unwrap() >= 49.0 && a.p50_ms.unwrap() < 3.0, "{b:?} {a:?}");
        assert_eq!((a.lost, b.lost, c.lost), (Some(0), Some(2), Some(0)));
        assert_eq!(
            (a.faults.len(), b.faults.as_slice(), c.faults.len()),
            (0, &["latency at store".to_string()][..], 0)
        );
    }

    #[test]
    fn a_long_stage_keeps_at_most_600_points() {
        let r = SeriesRecorder::new(Duration::from_secs(24 * 3600), Duration::ZERO);
        let s = r.finish(None, &[]);
        assert!(s.points.len() <= MAX_POINTS as usize, "{}", s.points.len());
        assert_eq!(s.interval_secs, 144.0);
    }
}
