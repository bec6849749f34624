//! The synthetic load: when requests are sent ([`pacing`]) and how ([`driver`]).
//!
//! [`Workload`] is the checked `workload:` section. Pacing turns the arrival model into
//! intended send times and knows nothing of HTTP; the driver sends records to the system
//! under test and reports each outcome with its latency measured from the intended time.

pub mod driver;
pub mod pacing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::data::Schema;

/// The arrival model.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Open model: requests start on schedule, whatever the answers do.
    Open(RateProfile),
    /// Closed model: this many requests always in flight; a new one starts when one ends.
    Closed { concurrency: u32 },
}

/// A request rate over a stage: piecewise linear between points, held after the last.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RateProfile {
    /// `(seconds into the stage, requests per second)`, by time; the first at 0.
    pub points: Vec<(f64, f64)>,
    /// What shape this is (`constant`, `ramp`, `spike`, `daily`), for plans and reports.
    pub shape: String,
    /// The playbook it came from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
}

impl RateProfile {
    /// A constant rate.
    pub fn constant(rate: f64) -> Self {
        RateProfile { points: vec![(0.0, rate)], shape: "constant".into(), playbook: None }
    }

    /// The rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        let p = &self.points;
        match p.iter().rposition(|(pt, _)| *pt <= t) {
            None => p.first().map_or(0.0, |x| x.1),
            Some(i) if i + 1 == p.len() => p[i].1,
            Some(i) => {
                let ((t0, r0), (t1, r1)) = (p[i], p[i + 1]);
                if t1 <= t0 { r1 } else { r0 + (r1 - r0) * (t - t0) / (t1 - t0) }
            }
        }
    }

    /// Expected requests in the first `secs` seconds (the integral of the rate).
    pub fn expected(&self, secs: f64) -> f64 {
        let mut total = 0.0;
        let p = &self.points;
        for (i, (t0, r0)) in p.iter().enumerate() {
            if *t0 >= secs {
                break;
            }
            let (t1, r1) = p.get(i + 1).copied().unwrap_or((f64::INFINITY, *r0));
            let end = t1.min(secs);
            let r_end = if t1.is_finite() && t1 > *t0 { r0 + (r1 - r0) * (end - t0) / (t1 - t0) } else { *r0 };
            total += (end - t0) * (r0 + r_end) / 2.0;
        }
        total
    }

    /// The highest rate anywhere in the profile.
    pub fn peak(&self) -> f64 {
        self.points.iter().map(|(_, r)| *r).fold(0.0, f64::max)
    }
}

/// The checked `workload:` section.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    #[serde(skip)]
    pub schema: Arc<Schema>,
    /// The schema file, resolved against the scenario's folder.
    pub data_file: PathBuf,
    pub arrival: Arrival,
    #[serde(with = "crate::report::serde_duration")]
    pub duration: Duration,
    #[serde(with = "crate::report::serde_duration")]
    pub warmup: Duration,
    #[serde(with = "crate::report::serde_duration")]
    pub timeout: Duration,
}

impl Workload {
    /// How many requests a stage is planned to send (`None` for a closed model, where
    /// it depends on the answers).
    pub fn expected_requests(&self) -> Option<u64> {
        match &self.arrival {
            Arrival::Open(p) => Some(p.expected(self.duration.as_secs_f64()).round() as u64),
            Arrival::Closed { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_interpolate_and_integrate() {
        let ramp = RateProfile { points: vec![(0.0, 0.0), (10.0, 100.0)], shape: "ramp".into(), playbook: None };
        assert_eq!(ramp.rate_at(5.0), 50.0);
        assert_eq!(ramp.rate_at(20.0), 100.0);
        assert!((ramp.expected(10.0) - 500.0).abs() < 1e-9);
        assert!((ramp.expected(12.0) - 700.0).abs() < 1e-9);
        let spike = RateProfile {
            points: vec![(0.0, 10.0), (2.0, 10.0), (2.0, 100.0), (3.0, 100.0), (3.0, 10.0)],
            shape: "spike".into(),
            playbook: None,
        };
        assert_eq!(spike.rate_at(2.5), 100.0);
        assert_eq!(spike.rate_at(3.5), 10.0);
        assert!((spike.expected(5.0) - (40.0 + 100.0)).abs() < 1e-9);
    }
}
