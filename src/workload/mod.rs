//! The synthetic load: when requests are sent ([`pacing`]) and how ([`driver`]).
//!
//! [`Workload`] is the checked `workload:` section. Pacing decides each request's
//! intended send time from the arrival model and knows nothing of HTTP; the driver sends
//! records to the system under test and reports each outcome with its latency measured
//! from the intended time.

pub mod driver;
pub mod pacing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::data::Schema;

/// The arrival model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Open model: requests start at this many per second, whatever the answers do.
    Rate(f64),
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
    /// How many requests a stage is planned to send.
    pub fn expected_requests(&self) -> u64 {
        match self.arrival {
            Arrival::Rate(r) => (r * self.duration.as_secs_f64()).floor() as u64,
        }
    }
}
