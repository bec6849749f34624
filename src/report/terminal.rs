//! The terminal reporter: live progress on stderr while a run goes, and the summary on
//! stdout at the end (one row per stage, each criterion with measured value and limit,
//! then the verdict and the seed).
//!
//! On a terminal the progress is one live line per stage (stage, elapsed of total, rate,
//! p99 so far, errors, active faults) that the other messages print above; elsewhere
//! (a CI log) it is the same figures as plain lines. `-q` keeps stderr silent and
//! prints only the verdict with the criteria that decided it.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Event, Reporter, RunReport};
use crate::secrets::Secrets;
use crate::verdict::Outcome;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A live line redrawn in place (stderr is a terminal).
    Live,
    /// Plain lines, one per second of a stage (a log).
    Lines,
    /// Nothing on stderr; stdout gets the verdict and what decided it.
    Quiet,
}

impl Display {
    /// `Quiet` when asked, else `Live` on a terminal that can redraw, else `Lines`.
    pub fn detect(quiet: bool) -> Display {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() && !dumb {
            Display::Live
        } else {
            Display::Lines
        }
    }
}

/// Prints progress and the final summary.
pub struct TerminalReporter {
    pub display: Display,
    /// The scenario's secrets, masked in everything printed.
    pub secrets: Secrets,
    /// Where `report.json` went, or why it could not be written (set before the run's
    /// last event, so the summary tells the truth about it).
    pub written: Option<Result<std::path::PathBuf, String>>,
    /// The other files asked for (`--report`), each written or why not.
    pub files: Vec<Result<std::path::PathBuf, String>>,
    /// The live line of the stage running (`Display::Live`), and its label.
    bar: Option<ProgressBar>,
    prefix: String,
    /// Faults active now, as `KIND at PLACE`, keyed by stage, index and start.
    active: Vec<((String, usize, u64), String)>,
    /// The last progress tick's elapsed seconds and sent count, for the rate.
    last_tick: Option<(u64, u64)>,
}

/// A count that needs the output, or `-` when the output was not seen.
fn count(v: u64, unobserved: bool) -> String {
    if unobserved { "-".into() } else { v.to_string() }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1000.0 => format!("{:.2}s", v / 1000.0),
        Some(v) => format!("{v:.1}ms"),
    }
}

impl TerminalReporter {
    /// A reporter showing progress as `display` says.
    pub fn new(display: Display, secrets: Secrets) -> Self {
        TerminalReporter {
            display,
            secrets,
            written: None,
            files: Vec::new(),
            bar: None,
            prefix: String::new(),
            active: Vec::new(),
            last_tick: None,
        }
    }

    /// Writes one line to stderr, secrets masked, above the live line if there is one;
    /// nothing when quiet; a closed stderr is not an error.
    fn say(&self, line: impl AsRef<str>) {
        if self.display == Display::Quiet {
            return;
        }
        let text = self.secrets.mask(line.as_ref());
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    /// The active faults, in words (`-` when none).
    fn faults_now(&self) -> String {
        if self.active.is_empty() {
            return "none".into();
        }
        self.active.iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn stage_started(&mut self, index: usize, name: &str) {
        self.last_tick = None;
        self.stage_done();
        self.prefix = self.secrets.mask(&format!("stage {} `{name}`", index + 1));
    }

    /// The live line, made at a stage's first tick (when its length is known).
    fn live_line(&mut self, total: u64) -> &ProgressBar {
        self.bar.get_or_insert_with(|| {
            // No bar: at 80 columns the figures need the room.
            let bar = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr_with_hz(4));
            let style = ProgressStyle::with_template("{spinner} {prefix} {pos}/{len}s  {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .tick_chars("|/-\\ ");
            bar.set_style(style);
            bar.set_prefix(self.prefix.clone());
            bar.enable_steady_tick(std::time::Duration::from_millis(250));
            bar
        })
    }

    /// One progress tick: the live line is redrawn, or a plain line is printed.
    #[allow(clippy::too_many_arguments)]
    fn progress(
        &mut self,
        stage: &str,
        elapsed: u64,
        total: u64,
        sent: u64,
        errors: u64,
        rejected: u64,
        acked: u64,
        p99: Option<f64>,
    ) {
        // Errors as the final count and `errors.rate` mean them (failed requests); answers
        // the target refused (4xx) are rejections, said apart when there are any.
        let rejected = if rejected > 0 { format!("  rejected {rejected}") } else { String::new() };
        let rate = match self.last_tick {
            Some((t, n)) if elapsed > t => (sent.saturating_sub(n)) as f64 / (elapsed - t) as f64,
            _ if elapsed > 0 => sent as f64 / elapsed as f64,
            _ => 0.0,
        };
        self.last_tick = Some((elapsed, sent));
        let p99 = p99.map_or("warm-up".to_string(), |v| ms(Some(v)));
        let faults = self.faults_now();
        match self.display {
            Display::Live => {
                let message =
                    self.secrets.mask(&format!("{rate:.0}/s  p99 {p99}  errors {errors}{rejected}  faults: {faults}"));
                let bar = self.live_line(total);
                bar.set_position(elapsed.min(total));
                bar.set_message(message);
            }
            Display::Lines => self.say(format!(
                "  {stage} {elapsed:>3}/{total}s  sent {sent}  acked {acked}  errors {errors}{rejected}  rate {rate:.0}/s  p99 {p99}  faults: {faults}"
            )),
            Display::Quiet => {}
        }
    }

    fn stage_done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for TerminalReporter {
    fn event(&mut self, event: &Event) {
        match event {
            Event::Started { name, file, seed, stages, warnings } => {
                self.say(format!(
                    "stagegate: running `{name}` ({}) with seed {seed}, {stages} stage(s)",
                    file.display()
                ));
                for w in warnings {
                    self.say(format!("warning: {w}"));
                }
            }
            Event::Provisioned { target, target_proxy, dependencies, flags } => {
                let mut line = format!("  target {target}");
                if let Some(proxy) = target_proxy {
                    line.push_str(&format!(", behind fault proxy {proxy}"));
                }
                if !flags.is_empty() {
                    line.push_str(&format!(", flags {flags}"));
                }
                self.say(line);
                for (name, real, proxy) in dependencies {
                    self.say(format!("  dependency {name} at {real}, behind fault proxy {proxy}"));
                }
            }
            Event::StageStarted { index, name, flags } => {
                let state: Vec<String> = flags.iter().map(|(k, v)| format!("{k}={}", v.describe())).collect();
                let state = if state.is_empty() { vec!["no flags".to_string()] } else { state };
                self.say(format!("stage {} `{name}` started [{}]", index + 1, state.join(", ")));
                self.stage_started(*index, name);
            }
            Event::Progress { stage, elapsed_secs, total_secs, sent, acked, rejected, failed, p99_ms, .. } => {
                self.progress(stage, *elapsed_secs, *total_secs, *sent, *failed, *rejected, *acked, *p99_ms);
            }
            Event::Note { message } => self.say(format!("  {message}")),
            Event::Interim { .. } => {}
            Event::Aborted { stage, reason } => self.say(format!("stage `{stage}` aborted: {reason}")),
            Event::Fault(f) => {
                let key = (f.stage.clone(), f.index, f.started_secs.to_bits());
                self.active.retain(|(k, _)| *k != key);
                match f.ended_secs {
                    None => {
                        self.active.push((key, format!("{} at {}", f.kind, f.at)));
                        self.say(format!("  fault {} at {} started at {:.1}s", f.kind, f.at, f.started_secs));
                    }
                    Some(end) => self.say(format!("  fault {} at {} lifted at {:.1}s", f.kind, f.at, end)),
                }
            }
            Event::StageFinished { report, .. } => {
                self.stage_done();
                self.active.retain(|(k, _)| k.0 != report.name);
                let m = &report.metrics;
                let data = if m.data_observed {
                    format!("lost {}, duplicated {}, corrupted {}", m.data.lost, m.data.duplicated, m.data.corrupted)
                } else {
                    format!("output not observed: {}", m.output_unseen.as_deref().unwrap_or("nothing observes it"))
                };
                self.say(format!(
                    "stage `{}` {}: {} requests sent ({} judged after warm-up), p99 {}, {} errors, {data}",
                    report.name,
                    if report.completed { "finished" } else { "cut short" },
                    m.requests + m.warmup_requests,
                    m.requests,
                    ms(m.latency.p99),
                    m.errors,
                ));
                if let Some(f) = &m.freshness {
                    self.say(format!(
                        "  freshness p50 {}, p99 {}, max {} over {} records (timed by {})",
                        ms(f.p50),
                        ms(f.p99),
                        ms(f.max),
                        f.records,
                        f.observed_by
                    ));
                }
                let h = &report.health;
                self.say(format!("  stagegate: {}", h.line()));
                for (flag, e) in &report.flag_exposure {
                    let values: Vec<String> = e
                        .by_variant
                        .iter()
                        .map(|(v, x)| match e.how {
                            "environment" => v.clone(),
                            "header" => format!("{v} {} ({:.1}%)", x.evaluations, x.share * 100.0),
                            _ => format!("{v} {} ({:.1}%, {} keys)", x.evaluations, x.share * 100.0, x.keys),
                        })
                        .collect();
                    let bulk = if e.bulk_fetches > 0 {
                        format!(", fetched in bulk {}", e.bulk_fetches)
                    } else {
                        String::new()
                    };
                    let values = if values.is_empty() { "-".to_string() } else { values.join(", ") };
                    self.say(format!("  flag {flag} {}: {values}{bulk}", e.how));
                }
                for p in &report.pii_in_flags {
                    let flag = p.flag.as_deref().map_or("every flag (bulk)".to_string(), |f| format!("`{f}`"));
                    self.say(format!(
                        "warning: personal data in flag evaluations: {} values of `{}` in context attribute `{}` of {flag}",
                        p.values, p.field, p.attribute
                    ));
                }
                if let Some(why) = &report.exposure_unproven {
                    self.say(format!("warning: {why}"));
                }
                if let Some(why) = &report.unexposed {
                    self.say(format!("warning: stage `{}`: {why}; its criteria are not judged", report.name));
                }
                if h.held_back_by_target > 0 {
                    self.say(format!(
                        "  {} sends never left: the target held the most requests stagegate keeps in flight",
                        h.held_back_by_target
                    ));
                }
                if let Some(why) = &h.behind {
                    self.say(format!("warning: stage `{}`: {why}; its timing criteria are not judged", report.name));
                }
            }
            Event::Judged(..) => {}
            Event::Finished(report) => {
                self.stage_done();
                let text = match self.display {
                    Display::Quiet => {
                        let left = report.faults.iter().filter(|f| !f.removed).count();
                        let left = if left > 0 { format!("faults: {left} NOT REMOVED\n") } else { String::new() };
                        left + &verdict_lines(report, self.written.as_ref(), &self.files)
                    }
                    _ => summary(report, self.written.as_ref(), &self.files),
                };
                let text = self.secrets.mask(&text);
                let mut out = std::io::stdout().lock();
                if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    // The verdict stands (the report has it); the summary is lost, and said so.
                    let _ = writeln!(std::io::stderr(), "stagegate: the summary could not be written to stdout: {e}");
                }
            }
        }
    }
}

/// The end-of-run summary as text.
pub fn summary(
    r: &RunReport,
    written: Option<&Result<std::path::PathBuf, String>>,
    files: &[Result<std::path::PathBuf, String>],
) -> String {
    let mut s = String::new();
    s.push_str(&format!("\n{}  (seed {})\n", r.scenario, r.seed));
    for o in &r.overrides {
        s.push_str(&format!("override: --set {o}\n"));
    }
    if let Some(d) = &r.description {
        s.push_str(&format!("{d}\n"));
    }
    s.push('\n');
    let w = r.stages.iter().map(|st| st.name.len()).max().unwrap_or(0).max(16);
    if !r.stages.is_empty() {
        s.push_str(&format!(
            "{:<w$} {:>9} {:>9} {:>9} {:>8} {:>6} {:>6} {:>6}\n",
            "stage", "requests", "p50", "p99", "errors", "lost", "dup", "corrupt"
        ));
    }
    for st in &r.stages {
        let m = &st.metrics;
        s.push_str(&format!(
            "{:<w$} {:>9} {:>9} {:>9} {:>7.2}% {:>6} {:>6} {:>6}{}\n",
            st.name,
            m.requests,
            ms(m.latency.p50),
            ms(m.latency.p99),
            m.error_rate() * 100.0,
            count(m.data.lost, m.data.unobserved),
            count(m.data.duplicated, m.data.unobserved),
            count(m.data.corrupted, m.data.unobserved),
            if st.completed { "" } else { "  (cut short)" }
        ));
    }
    for st in r.stages.iter().filter(|st| !st.metrics.variants.is_empty()) {
        s.push_str(&format!("\nvariants of `{}`\n", st.name));
        for d in &st.variant_differences {
            s.push_str(&format!("  {}\n", variant_difference(d)));
        }
        for (name, v) in &st.metrics.variants {
            s.push_str(&format!(
                "  {:<30} {:>7} requests  p50 {:>9}  p99 {:>9}  errors {:>6.2}%  lost {}  dup {}  corrupt {}\n",
                name,
                v.requests,
                ms(v.latency.p50),
                ms(v.latency.p99),
                v.error_rate() * 100.0,
                count(v.data.lost, v.data.unobserved),
                count(v.data.duplicated, v.data.unobserved),
                count(v.data.corrupted, v.data.unobserved)
            ));
        }
    }
    if !r.assessments.is_empty() {
        s.push_str("\ncriteria\n");
        let mut previous: Option<&str> = None;
        for a in &r.assessments {
            // A criterion that does not decide the verdict never reads as a failure.
            let mark = match (a.outcome, a.level) {
                (Outcome::Pass, _) => "pass",
                (Outcome::Fail, crate::verdict::Level::Enforce) => "FAIL",
                (Outcome::Fail, crate::verdict::Level::Warn) => "warn",
                (Outcome::Fail, crate::verdict::Level::Observe) => "observe",
                (Outcome::Inconclusive, _) => "????",
            };
            // A reason shared by consecutive rows is written once; "as above" always
            // means the row just above.
            let note = match a.note.as_deref() {
                Some(n) if previous == Some(n) => Some("as above"),
                n => n,
            };
            previous = a.note.as_deref();
            let level = match a.level {
                crate::verdict::Level::Enforce => "",
                crate::verdict::Level::Warn => " [warn]",
                crate::verdict::Level::Observe => " [observe]",
            };
            s.push_str(&format!(
                "  {mark:<7}  {:<w$} {:<28} measured {:>9}  limit {}{level}{}\n",
                a.stage,
                a.label(),
                a.measured_text,
                a.limit_text,
                note.map(|n| format!("  ({n})")).unwrap_or_default()
            ));
        }
    }
    let faults_left = r.faults.iter().filter(|f| !f.removed).count();
    if !r.faults.is_empty() {
        s.push_str(&format!(
            "\nfaults: {} applied, {} removed{}\n",
            r.faults.len(),
            r.faults.len() - faults_left,
            if faults_left > 0 { "  (SOME NOT REMOVED)" } else { "" }
        ));
    }
    if let Some(d) = &r.distributed {
        let offsets: Vec<f64> = d.workers.iter().map(|w| w.member.clock_offset_ms).collect();
        let (lo, hi) = offsets.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        s.push_str(&format!("\nload workers: {} of {} joined", d.workers.len(), d.workers_expected));
        if !offsets.is_empty() {
            s.push_str(&format!(", clock offsets {lo:+.1} to {hi:+.1} ms"));
        }
        s.push('\n');
        for w in &d.workers {
            let sent: u64 = w.stages.iter().map(|x| x.sent).sum();
            let lost: Vec<&str> = w.stages.iter().filter(|x| x.lost.is_some()).map(|x| x.stage.as_str()).collect();
            let lost = if lost.is_empty() { String::new() } else { format!("  LOST in {}", lost.join(", ")) };
            s.push_str(&format!("  worker {} ({}): {sent} sent{lost}\n", w.member.index, w.member.host));
        }
    }
    s.push('\n');
    s.push_str(&verdict_lines(r, written, &[]));
    if let Some(action) = &r.on_verdict {
        let status = action.exit_code.map_or("did not finish".to_string(), |c| format!("exited {c}"));
        let last = action.output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let command = crate::report::plan::shell_words(&action.command);
        s.push_str(&format!("on_verdict: `{command}` {status}: {last}\n"));
    }
    match written {
        Some(Ok(path)) => s.push_str(&format!("report: {}\n", path.display())),
        Some(Err(e)) => s.push_str(&format!("report NOT WRITTEN: {e}\n")),
        None => {}
    }
    for f in files {
        match f {
            Ok(path) => s.push_str(&format!("        {}\n", path.display())),
            Err(e) => s.push_str(&format!("report NOT WRITTEN: {e}\n")),
        }
    }
    s
}

/// The verdict and the criteria that decided it (what `-q` prints), with what makes the
/// verdict unusable (an interrupted or broken run, a report not written).
pub fn verdict_lines(
    r: &RunReport,
    written: Option<&Result<std::path::PathBuf, String>>,
    files: &[Result<std::path::PathBuf, String>],
) -> String {
    let mut s = String::new();
    if r.interrupted {
        s.push_str("run INTERRUPTED before its end; the report is partial\n");
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("run BROKEN: {e}\n"));
    }
    if let Some(Err(e)) = written {
        s.push_str(&format!("run BROKEN: {e}; do not gate on the verdict below\n"));
    }
    match r.verdict {
        Some(v) => s.push_str(&format!("verdict: {v}  (seed {})\n", r.seed)),
        None => s.push_str(&format!("verdict: none  (seed {})\n", r.seed)),
    }
    for reason in &r.reasons {
        s.push_str(&format!("  {reason}\n"));
    }
    // With more than one failure, what changed before each (a single one is the
    // rollback plan's own subject).
    if r.failures.len() > 1 {
        s.push_str("flag changes before each failure:\n");
        for f in &r.failures {
            s.push_str(&format!("  {}\n", f.summary));
        }
    }
    if let Some(plan) = &r.rollback {
        s.push_str(&format!("rollback: {}\n", plan.summary));
        if let Some(file) = &plan.flagd_file {
            s.push_str(&format!("  as a flagd file: {}\n", file.display()));
        }
    }
    for e in files.iter().filter_map(|f| f.as_ref().err()) {
        s.push_str(&format!("report NOT WRITTEN: {e}\n"));
    }
    s
}

/// A variant against the rest, in one line: `new-enricher true vs false: p50 +2.0ms, ...`.
pub fn variant_difference(d: &crate::flags::telemetry::VariantDifference) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:+.1}ms"));
    format!(
        "{} {} vs {}: p50 {}, p99 {}, errors {:+.2} points ({} vs {} requests, same window)",
        d.flag,
        d.variant,
        d.against,
        ms(d.p50_diff_ms),
        ms(d.p99_diff_ms),
        d.error_rate_diff * 100.0,
        d.requests,
        d.against_requests
    )
}
