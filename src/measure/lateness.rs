//! stagegate's own lateness: whether the harness kept its schedule while it measured.
//!
//! A latency figure is only about the system under test if stagegate sent each request
//! on time, its timers fired when asked and its fault proxies released held data when
//! planned. On a busy machine none of that holds, and the same slow-down that stretches
//! the candidate's latency comes from stagegate itself. This module measures the
//! harness per stage:
//!
//! - **send lag**: how long after its intended time a request actually left (the
//!   driver's own slowness, not the wait for a free slot when the target holds too many
//!   requests: that is the target's doing);
//! - **timer lag**: how late a probe that sleeps 5 ms at a time wakes, on stagegate's
//!   runtime and on the runtime of the builtin system under test;
//! - **proxy hold overrun**: how late a fault proxy released a chunk it held;
//! - **dropped sends**: scheduled sends that never left;
//! - **CPU**: stagegate's own use against the machine's cores, and how busy the machine
//!   was, from `/proc`.
//!
//! [`StageHealth::behind`] compares the figures with the scenario's [`HealthLimits`];
//! the verdict then holds back the criteria that depend on timing (`crate::verdict`).
//!
//! Not here: stagegate's outright failures (a lost port, no descriptors left), which
//! break the run (`crate::health`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the timer probe asks to wake.
const PROBE_STEP: Duration = Duration::from_millis(5);

/// A histogram of lateness in microseconds, from 1 µs to an hour.
fn lag_histogram() -> Histogram<u64> {
    super::new_histogram()
}

/// Lateness of one kind, shared between the tasks that see it and the stage that reads
/// it; bounded (a histogram of fixed size).
#[derive(Debug, Clone)]
pub struct LagBook {
    inner: Arc<Mutex<Histogram<u64>>>,
}

impl Default for LagBook {
    fn default() -> Self {
        LagBook { inner: Arc::new(Mutex::new(lag_histogram())) }
    }
}

impl LagBook {
    /// Notes that something fired `late`.
    pub fn record(&self, late: Duration) {
        let micros = late.as_micros().min(u64::MAX as u128) as u64;
        self.lock().saturating_record(micros.max(1));
    }

    /// Everything noted since the last take, leaving the book empty.
    pub fn take(&self) -> Histogram<u64> {
        std::mem::replace(&mut *self.lock(), lag_histogram())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A task that sleeps [`PROBE_STEP`] at a time on a runtime and notes how late it woke:
/// how long any task of that runtime waits for a thread.
pub struct TimerProbe {
    book: LagBook,
    stop: CancellationToken,
}

impl TimerProbe {
    /// Starts a probe on the runtime `on` that notes lateness from `judged_from` on
    /// (a stage's warm-up is measured, not judged).
    pub fn start(on: &tokio::runtime::Handle, judged_from: Instant) -> TimerProbe {
        let book = LagBook::default();
        let stop = CancellationToken::new();
        let (b, s) = (book.clone(), stop.clone());
        on.spawn(async move {
            loop {
                let due = Instant::now() + PROBE_STEP;
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep_until(due) => {}
                }
                // The runtime's timer has millisecond steps: up to a millisecond late is
                // its resolution, not lateness.
                let now = Instant::now();
                if now >= judged_from {
                    let late = now.saturating_duration_since(due);
                    b.record(late.saturating_sub(Duration::from_millis(1)));
                }
            }
        });
        TimerProbe { book, stop }
    }

    /// Stops the probe and returns what it saw.
    pub fn finish(self) -> Histogram<u64> {
        self.stop.cancel();
        self.book.take()
    }
}

impl Drop for TimerProbe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// CPU time of this process and of the whole machine at one moment, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuClock {
    /// This process's user and system time, in clock ticks.
    own: u64,
    /// The machine's busy and total time over all cores, in clock ticks.
    busy: u64,
    total: u64,
    at: Option<std::time::Instant>,
}

/// Clock ticks per second of `/proc`'s figures (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

impl CpuClock {
    /// Reads the clocks now; zeros where `/proc` cannot be read.
    pub fn now() -> CpuClock {
        let own = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| own_ticks(&s)).unwrap_or(0);
        let (busy, total) =
            std::fs::read_to_string("/proc/stat").ok().and_then(|s| machine_ticks(&s)).unwrap_or((0, 0));
        CpuClock { own, busy, total, at: Some(std::time::Instant::now()) }
    }

    /// CPU use between `self` (earlier) and `later`.
    pub fn until(&self, later: &CpuClock) -> Option<CpuUse> {
        let secs = later.at?.duration_since(self.at?).as_secs_f64();
        let total = later.total.checked_sub(self.total)?;
        if secs <= 0.0 || total == 0 {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let own = later.own.saturating_sub(self.own) as f64 / TICKS / secs;
        let busy = later.busy.saturating_sub(self.busy) as f64 / total as f64;
        Some(CpuUse { cores, stagegate_cores: round3(own), machine_busy: round3(busy.clamp(0.0, 1.0)) })
    }
}

/// utime + stime of `/proc/self/stat` (fields 14 and 15, counted after the command name,
/// which may hold spaces and parentheses).
fn own_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy and total ticks of the `cpu` line of `/proc/stat` (idle and iowait are not busy).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// CPU use over a stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CpuUse {
    /// Cores the machine offers this process.
    pub cores: usize,
    /// stagegate's own CPU time per second of the stage (1.0: one core all the time).
    pub stagegate_cores: f64,
    /// Share of the machine's CPU time that was busy (anyone's), 0 to 1.
    pub machine_busy: f64,
}

/// Lateness quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Lag {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The third largest sample: a p99 limit is exceeded only when at least
    /// [`MIN_LATE_SAMPLES`] samples are over it, so that one hiccup among a hundred
    /// samples (where the p99 is the second largest) does not discard a stage.
    #[serde(skip)]
    pub third_max_ms: f64,
}

/// How many samples must be over a p99 limit before it counts as exceeded.
pub const MIN_LATE_SAMPLES: u64 = 3;

impl Lag {
    /// The quantiles of `h` (microseconds); `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Lag> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
        // The value of rank n - 2 (1-based, ascending): the third largest, or the
        // smallest when there are fewer than three.
        let rank = h.len().saturating_sub(MIN_LATE_SAMPLES - 1).max(1);
        let mut seen = 0;
        let mut third = h.min();
        for v in h.iter_recorded() {
            seen += v.count_at_value();
            if seen >= rank {
                third = h.highest_equivalent(v.value_iterated_to());
                break;
            }
        }
        Some(Lag {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            third_max_ms: ms(third),
        })
    }

    /// Whether this lateness exceeds a p99 `limit`: its p99 is over it, and so are at
    /// least [`MIN_LATE_SAMPLES`] samples.
    pub fn exceeds(&self, limit: Duration) -> bool {
        let limit = limit.as_secs_f64() * 1000.0;
        self.p99_ms > limit && self.third_max_ms > limit
    }
}

/// The harness's own figures over one second of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SecondHealth {
    /// Seconds since the stage started (this one ends there).
    pub second: u64,
    pub sends: u64,
    /// Send lag, p99 and max, in milliseconds (0 without sends).
    pub send_lag_p99_ms: f64,
    pub send_lag_max_ms: f64,
}

/// How well stagegate kept its schedule in one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StageHealth {
    pub send_lag: Option<Lag>,
    /// stagegate's runtime.
    pub timer_lag: Option<Lag>,
    /// The runtime of the builtin system under test, when it runs inside stagegate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builtin_timer_lag: Option<Lag>,
    /// Fault proxies releasing held data, when any held some.
    pub proxy_hold_overrun: Option<Lag>,
    /// Scheduled sends that never left because stagegate fell behind.
    pub dropped: u64,
    /// Scheduled sends that never left because the target held the most requests
    /// stagegate keeps in flight (the target's slowness, not stagegate's).
    pub held_back_by_target: u64,
    pub cpu: Option<CpuUse>,
    pub per_second: Vec<SecondHealth>,
    /// Why the stage's timing cannot be trusted, when it cannot.
    pub behind: Option<String>,
}

impl StageHealth {
    /// Why stagegate fell behind beyond `limits`, in words; `None` when it kept up.
    /// `target_failing`: most requests that ended failed, so sends held back at the
    /// in-flight cap are the failing target's doing (it holds what it never answers),
    /// and no reason not to judge it.
    pub fn behind(&self, limits: &HealthLimits, target_failing: bool) -> Option<String> {
        let mut why = Vec::new();
        let over = |lag: &Option<Lag>, limit: Duration| lag.filter(|l| l.exceeds(limit));
        if let Some(l) = over(&self.send_lag, limits.send_lag_p99) {
            why.push(format!("send lag p99 {}", fmt_ms(l.p99_ms)));
        }
        if let Some(l) = over(&self.timer_lag, limits.timer_lag_p99) {
            why.push(format!("its timers fired {} late (p99)", fmt_ms(l.p99_ms)));
        }
        if let Some(l) = over(&self.builtin_timer_lag, limits.timer_lag_p99) {
            why.push(format!("the builtin target's timers fired {} late (p99)", fmt_ms(l.p99_ms)));
        }
        if let Some(l) = over(&self.proxy_hold_overrun, limits.proxy_hold_overrun_p99) {
            why.push(format!("fault proxies released held data {} late (p99)", fmt_ms(l.p99_ms)));
        }
        if self.dropped > limits.dropped {
            why.push(format!("{} scheduled sends dropped", self.dropped));
        }
        // Sends held back at stagegate's own cap of requests in flight: the planned load
        // was not offered, and the latencies measured include the wait for a free slot.
        // What the target would do with all of them in flight is not known.
        let held = (self.held_back_by_target > limits.dropped && !target_failing).then(|| {
            format!(
                "{} scheduled sends never left: the target held {} requests at once, the most stagegate keeps in flight, so the planned load was not offered and latencies include the wait for a free slot (a lower rate, or the load spread over workers, keeps under it)",
                self.held_back_by_target,
                crate::workload::driver::MAX_IN_FLIGHT
            )
        });
        if why.is_empty() {
            return held;
        }
        let busy = self
            .cpu
            .filter(|c| c.machine_busy >= 0.8)
            .map(|c| format!(" (the machine was {:.0}% busy)", c.machine_busy * 100.0))
            .unwrap_or_default();
        let behind = format!(
            "stagegate fell behind its schedule: {}{busy}; the machine, not the release, is the bottleneck",
            why.join(", ")
        );
        Some(match held {
            Some(held) => format!("{behind}; and {held}"),
            None => behind,
        })
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.send_lag {
            parts.push(format!("send lag p99 {}", fmt_ms(l.p99_ms)));
        }
        if let Some(l) = self.timer_lag {
            parts.push(format!("timers p99 {}", fmt_ms(l.p99_ms)));
        }
        if let Some(l) = self.builtin_timer_lag {
            parts.push(format!("builtin target's timers p99 {}", fmt_ms(l.p99_ms)));
        }
        if let Some(l) = self.proxy_hold_overrun {
            parts.push(format!("proxy holds p99 +{}", fmt_ms(l.p99_ms)));
        }
        if self.dropped > 0 {
            parts.push(format!("{} dropped", self.dropped));
        }
        if let Some(c) = self.cpu {
            parts.push(format!(
                "cpu {:.0}% of {} core{} (machine {:.0}% busy)",
                c.stagegate_cores * 100.0 / c.cores as f64,
                c.cores,
                if c.cores == 1 { "" } else { "s" },
                c.machine_busy * 100.0
            ));
        }
        parts.join(", ")
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 { format!("{ms:.0}ms") } else { format!("{ms:.1}ms") }
}

/// How far behind its schedule stagegate may fall before a stage's timing is not
/// trusted (`health:` in the scenario).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct HealthLimits {
    #[serde(serialize_with = "as_text")]
    #[schemars(with = "String")]
    pub send_lag_p99: Duration,
    #[serde(serialize_with = "as_text")]
    #[schemars(with = "String")]
    pub timer_lag_p99: Duration,
    #[serde(serialize_with = "as_text")]
    #[schemars(with = "String")]
    pub proxy_hold_overrun_p99: Duration,
    pub dropped: u64,
}

fn as_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            send_lag_p99: Duration::from_millis(10),
            timer_lag_p99: Duration::from_millis(10),
            proxy_hold_overrun_p99: Duration::from_millis(10),
            dropped: 0,
        }
    }
}

/// Send lag of one stage, as a whole and second by second.
#[derive(Debug, Clone)]
pub struct SendLag {
    /// Sends intended before this offset are warm-up: kept second by second, left out
    /// of the stage's figures (warm-up is measured, not judged).
    warmup: Duration,
    whole: Histogram<u64>,
    /// Seconds still open, by second: answers come back out of order (a slow answer
    /// of second 5 after the quick ones of second 6), so several are open at once.
    open: std::collections::BTreeMap<u64, Histogram<u64>>,
    seconds: Vec<SecondHealth>,
}

/// Seconds kept second by second (a longer stage keeps the first ones only).
const MAX_SECONDS: usize = 3600;
/// Seconds open at once; the oldest is closed when one more opens. A send recorded
/// after its second closed still counts in the stage's figures and in its second's
/// count and maximum.
const OPEN_SECONDS: usize = 8;

impl Default for SendLag {
    fn default() -> Self {
        SendLag::new(Duration::ZERO)
    }
}

impl SendLag {
    /// Send lag of a stage whose first `warmup` is not judged.
    pub fn new(warmup: Duration) -> Self {
        SendLag { warmup, whole: lag_histogram(), open: Default::default(), seconds: Vec::new() }
    }

    /// A send intended at `offset` into the stage left `lag` late.
    pub fn record(&mut self, offset: Duration, lag: Duration) {
        let second = offset.as_secs();
        let micros = (lag.as_micros().min(u64::MAX as u128) as u64).max(1);
        if offset >= self.warmup {
            self.whole.saturating_record(micros);
        }
        if let Some(h) = self.open.get_mut(&second) {
            h.saturating_record(micros);
            return;
        }
        let closed_past = self.seconds.last().map(|s| s.second);
        if closed_past.is_some_and(|last| second < last) {
            if let Ok(i) = self.seconds.binary_search_by_key(&(second + 1), |s| s.second) {
                let s = &mut self.seconds[i];
                s.sends += 1;
                s.send_lag_max_ms = s.send_lag_max_ms.max(ms(micros));
            }
            return;
        }
        while self.open.len() >= OPEN_SECONDS {
            self.close_oldest();
        }
        let mut h = lag_histogram();
        h.saturating_record(micros);
        self.open.insert(second, h);
    }

    fn close_oldest(&mut self) {
        let Some((second, h)) = self.open.pop_first() else { return };
        if h.is_empty() || self.seconds.len() >= MAX_SECONDS {
            return;
        }
        self.seconds.push(SecondHealth {
            second: second + 1,
            sends: h.len(),
            send_lag_p99_ms: ms(h.value_at_quantile(0.99)),
            send_lag_max_ms: ms(h.max()),
        });
    }

    /// The whole stage's send lag and the seconds, in order.
    pub fn finish(mut self) -> (Option<Lag>, Vec<SecondHealth>) {
        while !self.open.is_empty() {
            self.close_oldest();
        }
        (Lag::of(&self.whole), self.seconds)
    }
}

/// Microseconds as milliseconds with two decimals.
fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ticks_reads_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(own_ticks(stat), Some(300));
    }

    #[test]
    fn machine_ticks_leave_idle_and_iowait_out_of_busy() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(machine_ticks(stat), Some((150, 1000)));
    }

    #[test]
    fn health_is_behind_only_past_its_limits_and_says_what() {
        let lag = |p99: f64| Some(Lag { samples: 100, p50_ms: 0.1, p99_ms: p99, max_ms: p99, third_max_ms: p99 });
        let limits = HealthLimits::default();
        let fine = StageHealth { send_lag: lag(1.0), timer_lag: lag(2.0), ..Default::default() };
        assert_eq!(fine.behind(&limits, false), None);
        let late = StageHealth { send_lag: lag(38.0), dropped: 3, ..fine.clone() };
        let why = late.behind(&limits, false).unwrap();
        assert!(why.contains("send lag p99 38.0ms"), "{why}");
        assert!(why.contains("3 scheduled sends dropped"), "{why}");
        assert!(why.contains("the machine, not the release, is the bottleneck"), "{why}");
        // Sends held back at the in-flight cap: the planned load was not offered.
        let held = StageHealth { held_back_by_target: 3660, ..fine.clone() };
        let why = held.behind(&limits, false).expect("held back sends are not a judged stage");
        assert!(why.contains("3660 scheduled sends never left") && !why.contains("machine"), "{why}");
        // A target that fails what it answers holds its sends back itself: judged.
        assert_eq!(held.behind(&limits, true), None);
        let relaxed = HealthLimits { send_lag_p99: Duration::from_millis(50), dropped: 5, ..limits };
        assert_eq!(late.behind(&relaxed, false), None);
    }

    #[test]
    fn one_or_two_hiccups_among_a_hundred_samples_do_not_exceed_a_p99_limit() {
        let limit = Duration::from_millis(5);
        let with_late = |late: u64| {
            let mut h = lag_histogram();
            for i in 0..100u64 {
                h.record(if i < late { 8_000 } else { 300 }).unwrap();
            }
            Lag::of(&h).unwrap()
        };
        let two = with_late(2);
        assert!(two.p99_ms > 5.0, "{two:?}");
        assert!(!two.exceeds(limit), "{two:?}");
        assert!(with_late(3).exceeds(limit));
        assert!(!with_late(0).exceeds(limit));
    }

    #[test]
    fn answers_out_of_order_still_land_in_their_own_second() {
        let mut s = SendLag::default();
        // Second 5's slow answers come back among second 6's quick ones.
        for i in 0..10u64 {
            s.record(Duration::from_millis(6000 + i * 10), Duration::from_micros(100));
            s.record(Duration::from_millis(5000 + i * 10), Duration::from_millis(9));
        }
        let (_, seconds) = s.finish();
        let got: Vec<(u64, u64)> = seconds.iter().map(|s| (s.second, s.sends)).collect();
        assert_eq!(got, vec![(6, 10), (7, 10)], "{seconds:?}");
        assert!(seconds[0].send_lag_max_ms > 8.9 && seconds[1].send_lag_max_ms < 1.0, "{seconds:?}");
    }

    #[test]
    fn warm_up_sends_are_shown_by_second_but_left_out_of_the_stages_figure() {
        let mut s = SendLag::new(Duration::from_secs(1));
        // A start-up stall in the warm-up second, then sends on time.
        for i in 0..20u64 {
            let lag = if i < 10 { Duration::from_millis(150) } else { Duration::from_micros(300) };
            s.record(Duration::from_millis(i * 100), lag);
        }
        let (whole, seconds) = s.finish();
        let whole = whole.unwrap();
        assert_eq!(whole.samples, 10, "{whole:?}");
        assert!(whole.max_ms < 1.0, "{whole:?}");
        assert!(seconds[0].send_lag_max_ms > 149.0, "{seconds:?}");
    }

    #[test]
    fn send_lag_is_kept_second_by_second() {
        let mut s = SendLag::default();
        for i in 0..30u64 {
            let lag = if i >= 20 { Duration::from_millis(40) } else { Duration::from_micros(200) };
            s.record(Duration::from_millis(i * 100), lag);
        }
        let (whole, seconds) = s.finish();
        assert_eq!(whole.unwrap().samples, 30);
        assert_eq!(seconds.len(), 3);
        assert!(seconds[0].send_lag_p99_ms < 1.0);
        assert!(seconds[2].send_lag_p99_ms > 39.0, "{seconds:?}");
    }

    #[tokio::test]
    async fn a_timer_probe_sees_a_runtime_thread_held_up() {
        let probe = TimerProbe::start(&tokio::runtime::Handle::current(), Instant::now());
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Block the only thread of this runtime: the probe cannot wake on time.
        std::thread::sleep(Duration::from_millis(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let h = probe.finish();
        assert!(h.max() >= 40_000, "the probe should have woken at least 40ms late, max {}us", h.max());
    }
}
