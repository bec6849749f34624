//! Pacing: the intended send time of each request, from a rate profile.
//!
//! Pure arithmetic over offsets from the stage start; the driver sleeps until each one.
//! Request `k` is due when the integral of the rate reaches `k`, which over a linear
//! piece is the root of a quadratic. Measuring latency from these instants (not from
//! when the request actually left) keeps a slow system under test from hiding its own
//! slowness.

use std::time::Duration;

use super::RateProfile;

/// The intended send offsets of a stage of length `duration` under `profile`.
pub fn schedule(profile: &RateProfile, duration: Duration) -> impl Iterator<Item = Duration> + use<> {
    let points = profile.points.clone();
    let end = duration.as_secs_f64();
    let mut segment = 0usize;
    let mut base = 0.0; // requests due before the current segment starts
    let mut k = 0u64;
    std::iter::from_fn(move || {
        loop {
            let (t0, r0) = *points.get(segment)?;
            if t0 >= end {
                return None;
            }
            let (t1, r1) = points.get(segment + 1).copied().unwrap_or((f64::INFINITY, r0));
            let need = k as f64 - base;
            let slope = if t1.is_finite() && t1 > t0 { (r1 - r0) / (t1 - t0) } else { 0.0 };
            let tau = if slope.abs() < 1e-12 {
                if r0 > 0.0 { need / r0 } else { f64::INFINITY }
            } else {
                let disc = r0 * r0 + 2.0 * slope * need;
                if disc < 0.0 { f64::INFINITY } else { (-r0 + disc.sqrt()) / slope }
            };
            let t = t0 + tau.max(0.0);
            if t < t1 && tau.is_finite() {
                if t >= end {
                    return None;
                }
                k += 1;
                return Some(Duration::from_secs_f64(t));
            }
            // Not due in this piece: move to the next one.
            if !t1.is_finite() {
                return None;
            }
            base += (t1 - t0) * (r0 + r1) / 2.0;
            segment += 1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_spaces_requests_evenly() {
        let offsets: Vec<_> = schedule(&RateProfile::constant(200.0), Duration::from_secs(2)).collect();
        assert_eq!(offsets.len(), 400);
        assert_eq!(offsets[1].as_micros(), 5000);
        assert_eq!(offsets[399].as_micros(), 1_995_000);
    }

    #[test]
    fn zero_rate_sends_nothing() {
        assert_eq!(schedule(&RateProfile::constant(0.0), Duration::from_secs(1)).count(), 0);
    }

    #[test]
    fn a_ramp_sends_its_integral_denser_at_the_top() {
        let ramp = RateProfile { points: vec![(0.0, 0.0), (10.0, 200.0)], shape: "ramp".into(), playbook: None };
        let offsets: Vec<_> = schedule(&ramp, Duration::from_secs(10)).collect();
        assert!((offsets.len() as i64 - 1000).abs() <= 1, "{}", offsets.len());
        let first_half = offsets.iter().filter(|o| o.as_secs_f64() < 5.0).count();
        assert!((first_half as i64 - 250).abs() <= 1, "{first_half}");
    }

    #[test]
    fn a_spike_follows_its_steps() {
        let spike = RateProfile {
            points: vec![(0.0, 10.0), (2.0, 10.0), (2.0, 100.0), (3.0, 100.0), (3.0, 10.0)],
            shape: "spike".into(),
            playbook: None,
        };
        let offsets: Vec<_> = schedule(&spike, Duration::from_secs(5)).collect();
        let burst = offsets.iter().filter(|o| (2.0..3.0).contains(&o.as_secs_f64())).count();
        assert!((99..=101).contains(&burst), "{burst}");
        assert!((139..=141).contains(&offsets.len()), "{}", offsets.len());
    }
}
