//! Pacing: the intended send time of each request, from the arrival model.
//!
//! Pure arithmetic over offsets from the stage start; the driver sleeps until each one.
//! Measuring latency from these instants (not from when the request actually left) is
//! what keeps a slow system under test from hiding its own slowness.

use std::time::Duration;

use super::Arrival;

/// The intended send offsets of a stage of length `duration`.
pub fn schedule(arrival: Arrival, duration: Duration) -> impl Iterator<Item = Duration> {
    let Arrival::Rate(rate) = arrival;
    let end = duration.as_secs_f64();
    let count = if rate > 0.0 {
        (rate * end).ceil() as u64
    } else {
        0
    };
    (0..count)
        .map(move |i| i as f64 / rate)
        .filter(move |t| *t < end)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_spaces_requests_evenly() {
        let offsets: Vec<_> = schedule(Arrival::Rate(200.0), Duration::from_secs(2)).collect();
        assert_eq!(offsets.len(), 400);
        assert_eq!(offsets[1], Duration::from_millis(5));
        assert_eq!(offsets[399], Duration::from_millis(1995));
    }

    #[test]
    fn zero_rate_sends_nothing() {
        assert_eq!(
            schedule(Arrival::Rate(0.0), Duration::from_secs(1)).count(),
            0
        );
    }
}
