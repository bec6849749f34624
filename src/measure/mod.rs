//! Measurements of one stage: request latency and outcomes, split into warm-up
//! (measured, not judged), fault phases and flag variants.
//!
//! Latency is recorded from each request's *intended* send time, so a stalled system
//! under test shows up as latency instead of being hidden by a load generator that
//! slowed down with it (no coordinated omission). The [`Recorder`] takes one sample per
//! request and files it under the whole stage, its phase (`before` any fault, `during`
//! one, `after` they lifted) and its flag variant. [`StageMetrics`] is the summary that
//! criteria read. Data-quality counts come from [`crate::quality`].

pub mod lateness;
pub mod prom;
mod recovery;
pub mod series;

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::quality::DataCounts;
pub use recovery::Recovery;

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

/// Where a sample falls relative to the stage's faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No fault has started yet.
    Before,
    /// A fault is active.
    During,
    /// At least one fault has been lifted and none is active.
    After,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Before, Phase::During, Phase::After];

    /// The prefix criteria use: `before`, `during`, `after`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
        }
    }

    /// The phase of offset `t` given the fault windows of the stage.
    pub fn of(t: Duration, windows: &[(Duration, Duration)]) -> Phase {
        if windows.iter().any(|(s, e)| *s <= t && t < *e) {
            Phase::During
        } else if windows.iter().any(|(_, e)| *e <= t) {
            Phase::After
        } else {
            Phase::Before
        }
    }
}

/// Latencies are kept in microseconds, from 1µs to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Counts and latencies of one slice of a stage.
#[derive(Debug, Clone)]
pub struct Slice {
    pub histogram: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
    pub acked: u64,
}

impl Default for Slice {
    fn default() -> Self {
        Slice { histogram: new_histogram(), requests: 0, errors: 0, acked: 0 }
    }
}

impl Slice {
    fn record(&mut self, micros: u64, outcome: Outcome) {
        self.histogram.saturating_record(micros);
        self.requests += 1;
        match outcome {
            Outcome::Acked => self.acked += 1,
            Outcome::Failed => self.errors += 1,
            Outcome::Rejected => {}
        }
    }

    /// Summarises the slice over `secs` seconds of judged time.
    pub fn summary(&self, secs: f64, data: DataCounts) -> SliceMetrics {
        let h = &self.histogram;
        let q = |quantile: f64| (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1000.0);
        SliceMetrics {
            requests: self.requests,
            errors: self.errors,
            latency: LatencySummary {
                p50: q(0.50),
                p90: q(0.90),
                p95: q(0.95),
                p99: q(0.99),
                p999: q(0.999),
                max: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
                mean: (!h.is_empty()).then(|| h.mean() / 1000.0),
            },
            throughput: if secs > 0.0 { self.acked as f64 / secs } else { 0.0 },
            data,
        }
    }
}

/// How many time windows a stage's judged time is cut into, for comparisons.
const WINDOWS: u32 = 40;
/// The shortest window.
const MIN_WINDOW: Duration = Duration::from_millis(250);

/// One time window of a stage's judged requests: its figures, for comparisons (which
/// test windows rather than requests, since requests close in time are not
/// independent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Window {
    /// Its start, from the stage's start.
    pub from_secs: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A latency histogram of a stage's judged requests, for interval logs.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EncodedHistogram {
    /// The flag variant it covers; `None`: the whole stage.
    pub variant: Option<String>,
    /// Microseconds, HdrHistogram's compressed V2 encoding, base64.
    pub encoded: String,
}

/// Latency by time window, at two significant digits (a window's median needs no more).
#[derive(Debug, Clone)]
struct Windows {
    from: Duration,
    width: Duration,
    slices: Vec<(Histogram<u64>, u64)>,
}

impl Windows {
    fn new(from: Duration, length: Duration) -> Windows {
        let judged = length.saturating_sub(from);
        let width = (judged / WINDOWS).max(MIN_WINDOW);
        Windows { from, width, slices: Vec::new() }
    }

    fn record(&mut self, offset: Duration, micros: u64, failed: bool) {
        let at = (offset.saturating_sub(self.from).as_nanos() / self.width.as_nanos().max(1)) as usize;
        if at > WINDOWS as usize * 2 {
            return;
        }
        while self.slices.len() <= at {
            let h = Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid");
            self.slices.push((h, 0));
        }
        let (h, errors) = &mut self.slices[at];
        h.saturating_record(micros);
        *errors += u64::from(failed);
    }

    fn list(&self) -> Vec<Window> {
        self.slices
            .iter()
            .enumerate()
            .filter(|(_, (h, _))| !h.is_empty())
            .map(|(i, (h, errors))| Window {
                from_secs: (self.from + self.width * i as u32).as_secs_f64(),
                requests: h.len(),
                errors: *errors,
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            })
            .collect()
    }
}

/// Collects the samples of one stage.
#[derive(Debug, Clone)]
pub struct Recorder {
    warmup: Duration,
    length: Duration,
    windows: Vec<(Duration, Duration)>,
    /// The judged requests of the whole stage.
    pub judged: Slice,
    warmup_requests: u64,
    phases: [Slice; 3],
    variants: BTreeMap<String, Slice>,
    recovery: recovery::Tracker,
    by_time: Windows,
}

impl Recorder {
    /// A recorder for a stage of `length` whose faults are active in `windows`; requests
    /// intended before `warmup` are measured but not judged.
    pub fn new(warmup: Duration, length: Duration, windows: Vec<(Duration, Duration)>) -> Self {
        let last_end = windows.iter().map(|(_, e)| *e).max();
        Recorder {
            warmup,
            length,
            windows,
            judged: Slice::default(),
            warmup_requests: 0,
            phases: Default::default(),
            variants: BTreeMap::new(),
            recovery: recovery::Tracker::new(last_end.filter(|e| *e < length)),
            by_time: Windows::new(warmup, length),
        }
    }

    /// The stage now ends at `end` (an operator held it): faults that lasted to its
    /// planned end last to the new one.
    pub fn extend(&mut self, end: Duration) {
        if end <= self.length {
            return;
        }
        for (_, e) in &mut self.windows {
            if *e == self.length {
                *e = end;
            }
        }
        self.length = end;
    }

    /// The phase of a request intended at `offset`.
    pub fn phase(&self, offset: Duration) -> Phase {
        Phase::of(offset, &self.windows)
    }

    /// Records one request intended at `offset` into the stage, seen by flag `variant`.
    pub fn record(&mut self, offset: Duration, latency: Duration, outcome: Outcome, variant: Option<&str>) {
        let micros = (latency.as_micros() as u64).max(1);
        if offset < self.warmup {
            self.warmup_requests += 1;
            return;
        }
        self.judged.record(micros, outcome);
        self.phases[self.phase(offset) as usize].record(micros, outcome);
        if let Some(v) = variant {
            self.variants.entry(v.to_string()).or_default().record(micros, outcome);
        }
        self.recovery.record(offset, micros, outcome == Outcome::Failed);
        self.by_time.record(offset, micros, outcome == Outcome::Failed);
    }

    /// The judged requests' p99 so far, in milliseconds (`None` before the first).
    pub fn p99_ms(&self) -> Option<f64> {
        let h = &self.judged.histogram;
        (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
    }

    /// The judged requests' latency histograms, encoded as HdrHistogram's compressed
    /// V2 format in base64 (what an interval log line carries): the whole stage's
    /// (`None`) and each flag variant's.
    pub fn encoded_histograms(&self) -> Vec<EncodedHistogram> {
        use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
        let encode = |h: &Histogram<u64>| {
            let mut bytes = Vec::new();
            V2DeflateSerializer::new().serialize(h, &mut bytes).ok()?;
            Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
        };
        std::iter::once((None, &self.judged))
            .chain(self.variants.iter().map(|(v, s)| (Some(v.clone()), s)))
            .filter(|(_, s)| s.requests > 0)
            .filter_map(|(variant, s)| Some(EncodedHistogram { variant, encoded: encode(&s.histogram)? }))
            .collect()
    }

    /// The judged requests' figures by time window (the empty ones left out).
    pub fn windows(&self) -> Vec<Window> {
        self.by_time.list()
    }

    /// Judged seconds of each phase inside `[warmup, until)`, computed from the fault
    /// windows (not by stepping through the stage: a stage may last days).
    fn phase_secs(&self, until: Duration) -> [f64; 3] {
        let from = self.warmup;
        if until <= from {
            return [0.0; 3];
        }
        let total = (until - from).as_secs_f64();
        let first = self.windows.iter().map(|(s, _)| *s).min().unwrap_or(until).clamp(from, until);
        let before = (first - from).as_secs_f64();
        // The union of the windows, clipped to [from, until).
        let mut windows: Vec<(Duration, Duration)> =
            self.windows.iter().map(|(s, e)| ((*s).clamp(from, until), (*e).clamp(from, until))).collect();
        windows.sort();
        let mut during = 0.0;
        let mut reach = from;
        for (s, e) in windows {
            let s = s.max(reach);
            if e > s {
                during += (e - s).as_secs_f64();
                reach = e;
            }
        }
        [before, during, (total - before - during).max(0.0)]
    }

    /// Summarises the stage as run until `ran` (its length, or less when cut short).
    pub fn finish(&self, ran: Duration, data: &crate::quality::Judgement) -> StageMetrics {
        let until = ran.min(self.length);
        let judged_secs = until.saturating_sub(self.warmup).as_secs_f64();
        let whole = self.judged.summary(judged_secs, data.total);
        let phase_secs = self.phase_secs(until);
        let phases = Phase::ALL
            .iter()
            .filter(|p| self.phases[**p as usize].requests > 0)
            .map(|p| {
                (
                    p.name().to_string(),
                    self.phases[*p as usize].summary(phase_secs[*p as usize], data.by_phase[*p as usize]),
                )
            })
            .collect();
        let variants = self
            .variants
            .iter()
            .map(|(name, slice)| {
                (name.clone(), slice.summary(judged_secs, data.by_variant.get(name).copied().unwrap_or_default()))
            })
            .collect();
        let baseline = self.phases[Phase::Before as usize].summary(phase_secs[0], DataCounts::default());
        StageMetrics {
            requests: whole.requests,
            warmup_requests: self.warmup_requests,
            errors: whole.errors,
            latency: whole.latency,
            throughput: whole.throughput,
            data: data.total,
            warmup_data: data.warmup,
            data_observed: data.observed,
            phases,
            variants,
            recovery: self.recovery.finish(&baseline, until),
            recovery_missing: if self.windows.is_empty() { None } else { self.recovery.missing_because(&baseline) },
            freshness: None,
            output_unseen: None,
            flags_pii_exposed: None,
            prom: BTreeMap::new(),
        }
    }
}

/// Request latency quantiles, in milliseconds (`None`: no sample).
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LatencySummary {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

/// The metrics of one phase or one flag variant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SliceMetrics {
    pub requests: u64,
    pub errors: u64,
    pub latency: LatencySummary,
    pub throughput: f64,
    pub data: DataCounts,
}

impl SliceMetrics {
    /// Failed share of requests (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }
}

/// Everything measured in one stage that a criterion can read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
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
    /// Data-quality counts of the records sent after warm-up.
    pub data: DataCounts,
    /// Data-quality counts of the warm-up records (measured, not judged).
    pub warmup_data: DataCounts,
    /// Whether the output was observed; without it, counts that need the output (lost,
    /// duplicated, corrupted, ...) are unknown and criteria on them are inconclusive.
    pub data_observed: bool,
    /// The same metrics by fault phase (`before`, `during`, `after`), judged window only.
    pub phases: BTreeMap<String, SliceMetrics>,
    /// The same metrics by flag variant, for stages with fractional exposure.
    pub variants: BTreeMap<String, SliceMetrics>,
    /// How long after the last fault lifted errors and latency were back in band.
    pub recovery: Option<Recovery>,
    /// Why `recovery` is null, when a stage had faults but no recovery could be measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_missing: Option<String>,
    /// From acknowledgement to first appearance in the output, when arrivals were timed.
    pub freshness: Option<crate::quality::freshness::Freshness>,
    /// Why the output could not be seen, when it could not (then the counts that need
    /// it, lost and the like, are unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_unseen: Option<String>,
    /// Distinct values of `pii` fields of the records sent that the system under test
    /// put in its flag evaluation contexts (`flags.pii_exposed`); `None` when the flag
    /// provider does not show stagegate the contexts (only `ofrep` does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags_pii_exposed: Option<u64>,
    /// The system's own metrics, by query name (`metrics:`; criteria read them as
    /// `prom.NAME`); empty without a `metrics:` section.
    pub prom: BTreeMap<String, prom::PromFigures>,
}

impl StageMetrics {
    /// Failed share of judged requests (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }

    /// The whole stage as one slice (to read it like a phase).
    pub fn whole(&self) -> SliceMetrics {
        SliceMetrics {
            requests: self.requests,
            errors: self.errors,
            latency: self.latency.clone(),
            throughput: self.throughput,
            data: self.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::Judgement;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_fault_from_the_start_says_why_there_is_no_recovery() {
        let mut r = Recorder::new(ms(0), ms(3000), vec![(ms(0), ms(1000))]);
        for i in 0..30 {
            r.record(ms(i * 100), ms(2), Outcome::Acked, None);
        }
        let m = r.finish(ms(3000), &Judgement::default());
        assert_eq!(m.recovery, None);
        assert!(m.recovery_missing.unwrap().contains("no judged request before the first fault"));
        let quiet = Recorder::new(ms(0), ms(3000), vec![]).finish(ms(3000), &Judgement::default());
        assert_eq!(quiet.recovery_missing, None, "a stage without faults has nothing to explain");
    }

    #[test]
    fn warmup_is_measured_but_not_judged() {
        let mut r = Recorder::new(ms(1000), ms(2000), vec![]);
        r.record(ms(500), Duration::from_secs(5), Outcome::Failed, None);
        for i in 0..100 {
            let outcome = if i < 3 { Outcome::Failed } else { Outcome::Acked };
            r.record(ms(1000 + i), ms(10), outcome, None);
        }
        let m = r.finish(ms(2000), &Judgement::default());
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
    fn samples_are_filed_by_phase_and_variant() {
        let mut r = Recorder::new(ms(0), ms(3000), vec![(ms(1000), ms(2000))]);
        r.record(ms(500), ms(1), Outcome::Acked, Some("a"));
        r.record(ms(1500), ms(100), Outcome::Failed, Some("b"));
        r.record(ms(1600), ms(100), Outcome::Acked, Some("b"));
        r.record(ms(2500), ms(2), Outcome::Acked, Some("a"));
        let m = r.finish(ms(3000), &Judgement::default());
        assert_eq!(m.phases["before"].requests, 1);
        assert_eq!(m.phases["during"].errors, 1);
        assert!(m.phases["during"].latency.p50.unwrap() > 99.0);
        assert_eq!(m.phases["after"].requests, 1);
        assert_eq!(m.variants["a"].requests, 2);
        assert_eq!(m.variants["b"].errors, 1);
        assert!((m.phases["during"].throughput - 1.0).abs() < 0.05);
    }

    #[test]
    fn phase_follows_the_windows() {
        let w = vec![(ms(100), ms(200)), (ms(300), ms(400))];
        assert_eq!(Phase::of(ms(50), &w), Phase::Before);
        assert_eq!(Phase::of(ms(150), &w), Phase::During);
        assert_eq!(Phase::of(ms(250), &w), Phase::After);
        assert_eq!(Phase::of(ms(350), &w), Phase::During);
        assert_eq!(Phase::of(ms(450), &w), Phase::After);
    }
}
