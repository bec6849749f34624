//! What the active faults do to one chunk of a TCP stream: the pure decision.
//!
//! [`plan`] reads the faults active on a connection's direction and the flow's running
//! state, and returns a [`ChunkPlan`]: how long to hold the chunk, whether to drop it,
//! which bytes to flip, where to cut the connection, and how to pace what passes
//! (slices, bandwidth). The proxy's writer carries the plan out; nothing here touches a
//! socket or a clock, so every rule is unit-tested on plain bytes.

use std::time::Duration;

use super::{Activation, Direction, FaultKind, unit};

/// How a connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// RST, as a crashed peer or a firewall would.
    Reset,
    /// An orderly close (FIN), as a server that closes after a limit would.
    Close,
}

/// What to do with one chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkPlan {
    /// Hold the chunk this long after it arrived (stacked latency faults add up).
    pub hold: Duration,
    /// Drop the chunk (a blackhole).
    pub drop: bool,
    /// Pass this many bytes of the chunk, then cut the connection.
    pub cut: Option<(usize, Cut)>,
    /// Byte positions (in the chunk) and the bit mask to flip there.
    pub flips: Vec<(usize, u8)>,
    /// Write in slices of about this many bytes (`size`, `variation`), this far apart.
    pub slices: Option<(u64, u64, Duration)>,
    /// Cap the rate at this many bytes per second.
    pub bandwidth: Option<u64>,
}

/// The running state of one direction of one connection.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// Bytes already passed in this direction.
    pub passed: u64,
    /// Chunks seen, for seeded choices.
    pub chunks: u64,
    /// Slices written, for seeded slice sizes.
    pub slices: u64,
}

/// Whether activation `a` hits connection `conn` (decided once per connection, from the
/// activation's seed; at 100% every connection).
pub fn hits(a: &Activation, conn: u64) -> bool {
    a.fault.probability >= 1.0 || unit(a.seed, conn) < a.fault.probability
}

/// Decides what the faults in `active` do to the next `len` bytes flowing `dir` on
/// connection `conn`, and advances `flow`.
pub fn plan(active: &[Activation], conn: u64, dir: Direction, len: usize, flow: &mut Flow) -> ChunkPlan {
    flow.chunks += 1;
    let mut p = ChunkPlan::default();
    let stream = conn.rotate_left(29) ^ dir as u64;
    for a in active.iter().filter(|a| a.fault.direction.covers(dir) && hits(a, conn)) {
        match &a.fault.kind {
            FaultKind::Latency { delay, jitter } => {
                let mut d = delay.as_secs_f64();
                if !jitter.is_zero() {
                    let u = unit(a.seed ^ stream, flow.chunks);
                    d += jitter.as_secs_f64() * (2.0 * u - 1.0);
                }
                p.hold += Duration::from_secs_f64(d.max(0.0));
            }
            FaultKind::Blackhole => p.drop = true,
            FaultKind::Reset { after } => cut_at(&mut p, flow.passed, after.unwrap_or(0), len, Cut::Reset),
            FaultKind::LimitData { bytes } => cut_at(&mut p, flow.passed, *bytes, len, Cut::Close),
            FaultKind::Corrupt { rate } => flips(&mut p, a.seed ^ stream, flow.passed, len, *rate),
            FaultKind::Slicer { size, size_variation, delay } => p.slices = Some((*size, *size_variation, *delay)),
            FaultKind::Bandwidth { bytes_per_sec } => {
                p.bandwidth = Some(p.bandwidth.map_or(*bytes_per_sec, |b| b.min(*bytes_per_sec)))
            }
            // Refuse acts on connections, slow_close on the close; others are not TCP faults.
            _ => {}
        }
    }
    if let Some((at, _)) = p.cut {
        p.flips.retain(|(i, _)| *i < at);
    }
    let passed = p.cut.map_or(len, |(at, _)| at);
    if !p.drop {
        flow.passed += passed as u64;
    }
    p
}

/// Cuts at the byte where the stream reaches `limit`, if that falls in this chunk (a
/// limit met exactly at the chunk's end passes the chunk, then cuts). The earliest cut
/// wins, and a reset beats a close at the same byte.
fn cut_at(p: &mut ChunkPlan, passed: u64, limit: u64, len: usize, how: Cut) {
    let room = limit.saturating_sub(passed);
    if room > len as u64 {
        return;
    }
    let at = room as usize;
    p.cut = match p.cut {
        Some((other, kind)) if other < at || (other == at && kind == Cut::Reset) => Some((other, kind)),
        _ => Some((at, how)),
    };
}

/// Picks the bytes of this chunk to corrupt: each byte of the stream independently with
/// probability `rate`, one random bit flipped, the choice a pure function of the seed
/// and the byte's position in the stream.
fn flips(p: &mut ChunkPlan, seed: u64, passed: u64, len: usize, rate: f64) {
    if rate <= 0.0 {
        return;
    }
    for i in 0..len {
        let position = passed + i as u64;
        if unit(seed, position) < rate {
            let bit = (unit(seed ^ 0xB17, position) * 8.0) as u8 & 7;
            p.flips.push((i, 1 << bit));
        }
    }
}

/// Whether a latency fault in `active` still holds chunks flowing `dir` on `conn` (when
/// none does any more, a chunk already held is released at once: a lifted fault does
/// not go on delaying traffic).
pub fn holds(active: &[Activation], conn: u64, dir: Direction) -> bool {
    active
        .iter()
        .any(|a| matches!(a.fault.kind, FaultKind::Latency { .. }) && a.fault.direction.covers(dir) && hits(a, conn))
}

/// The size of slice number `n` for a slicer fault.
pub fn slice_size(size: u64, variation: u64, seed: u64, n: u64) -> usize {
    if variation == 0 {
        return size.max(1) as usize;
    }
    let u = unit(seed, n);
    let delta = (u * (2 * variation + 1) as f64) as i64 - variation as i64;
    (size as i64 + delta).max(1) as usize
}

/// The hold of a slow close on this direction, if one is active.
pub fn close_hold(active: &[Activation], conn: u64, dir: Direction) -> Option<Duration> {
    active
        .iter()
        .filter(|a| a.fault.direction.covers(dir) && hits(a, conn))
        .filter_map(|a| match a.fault.kind {
            FaultKind::SlowClose { delay } => Some(delay),
            _ => None,
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Fault, Place, Schedule};

    fn act(kind: FaultKind, probability: f64, direction: Direction) -> Activation {
        Activation {
            id: 0,
            index: 0,
            seed: 5,
            fault: Fault {
                kind,
                at: Place::Dependency("d".into()),
                schedule: Schedule { from: Duration::ZERO, length: None, every: None },
                probability,
                direction,
                predicate: None,
            },
        }
    }

    #[test]
    fn no_fault_passes_everything_untouched() {
        let mut flow = Flow::default();
        let p = plan(&[], 1, Direction::Upstream, 100, &mut flow);
        assert_eq!(p, ChunkPlan::default());
        assert_eq!(flow.passed, 100);
    }

    #[test]
    fn latencies_stack_and_respect_direction() {
        let lat = |ms| FaultKind::Latency { delay: Duration::from_millis(ms), jitter: Duration::ZERO };
        let faults = [act(lat(10), 1.0, Direction::Both), act(lat(5), 1.0, Direction::Downstream)];
        let mut flow = Flow::default();
        assert_eq!(plan(&faults, 1, Direction::Upstream, 1, &mut flow).hold, Duration::from_millis(10));
        assert_eq!(plan(&faults, 1, Direction::Downstream, 1, &mut flow).hold, Duration::from_millis(15));
    }

    #[test]
    fn limit_data_cuts_where_the_stream_reaches_the_limit() {
        let faults = [act(FaultKind::LimitData { bytes: 250 }, 1.0, Direction::Both)];
        let mut flow = Flow::default();
        assert_eq!(plan(&faults, 1, Direction::Upstream, 100, &mut flow).cut, None);
        assert_eq!(plan(&faults, 1, Direction::Upstream, 100, &mut flow).cut, None);
        assert_eq!(plan(&faults, 1, Direction::Upstream, 100, &mut flow).cut, Some((50, Cut::Close)));
    }

    #[test]
    fn reset_without_after_cuts_at_once_and_beats_a_close() {
        let faults = [
            act(FaultKind::LimitData { bytes: 0 }, 1.0, Direction::Both),
            act(FaultKind::Reset { after: None }, 1.0, Direction::Both),
        ];
        let mut flow = Flow::default();
        assert_eq!(plan(&faults, 1, Direction::Upstream, 10, &mut flow).cut, Some((0, Cut::Reset)));
        let after = [act(FaultKind::Reset { after: Some(4) }, 1.0, Direction::Both)];
        let mut flow = Flow::default();
        assert_eq!(plan(&after, 1, Direction::Upstream, 10, &mut flow).cut, Some((4, Cut::Reset)));
    }

    #[test]
    fn corruption_flips_about_its_rate_and_is_seeded() {
        let faults = [act(FaultKind::Corrupt { rate: 0.01 }, 1.0, Direction::Both)];
        let mut a = Flow::default();
        let mut b = Flow::default();
        let pa = plan(&faults, 3, Direction::Upstream, 100_000, &mut a);
        let pb = plan(&faults, 3, Direction::Upstream, 100_000, &mut b);
        assert_eq!(pa.flips, pb.flips);
        assert!((850..1150).contains(&pa.flips.len()), "{}", pa.flips.len());
        assert!(pa.flips.iter().all(|(_, m)| m.count_ones() == 1));
    }

    #[test]
    fn probability_picks_connections_not_chunks() {
        let faults = [act(FaultKind::Blackhole, 0.3, Direction::Both)];
        let hit: Vec<bool> =
            (0..1000).map(|c| plan(&faults, c, Direction::Upstream, 1, &mut Flow::default()).drop).collect();
        let share = hit.iter().filter(|h| **h).count();
        assert!((250..350).contains(&share), "{share}");
        // The same connection always gets the same answer.
        for c in 0..50 {
            let again = plan(&faults, c, Direction::Upstream, 1, &mut Flow::default()).drop;
            assert_eq!(again, hit[c as usize]);
        }
    }

    #[test]
    fn slices_vary_within_bounds() {
        for n in 0..1000 {
            let s = slice_size(100, 20, 9, n);
            assert!((80..=120).contains(&s), "{s}");
        }
        assert_eq!(slice_size(0, 0, 1, 1), 1);
    }
}
