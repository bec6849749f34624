//! The terminal reporter: live progress on stderr while a run goes, and the summary on
//! stdout at the end (one row per stage, each criterion with measured value and limit,
//! then the verdict and the seed).

use std::io::Write;

use super::{Event, Reporter, RunReport};
use crate::secrets::Secrets;
use crate::verdict::Outcome;

/// Prints progress and the final summary.
pub struct TerminalReporter {
    /// Print per-second progress lines.
    pub progress: bool,
    /// The scenario's secrets, masked in everything printed.
    pub secrets: Secrets,
    /// Where `report.json` went, or why it could not be written (set before the run's
    /// last event, so the summary tells the truth about it).
    pub written: Option<Result<std::path::PathBuf, String>>,
    /// The other files asked for (`--report`), each written or why not.
    pub files: Vec<Result<std::path::PathBuf, String>>,
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
    /// A reporter printing progress lines unless `quiet`.
    pub fn new(quiet: bool, secrets: Secrets) -> Self {
        TerminalReporter { progress: !quiet, secrets, written: None, files: Vec::new() }
    }

    /// Writes one line to stderr, secrets masked; a closed stderr is not an error.
    fn say(&self, line: impl AsRef<str>) {
        let mut text = self.secrets.mask(line.as_ref());
        text.push('\n');
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
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
            }
            Event::Progress { stage, elapsed_secs, sent, acked, rejected, failed } if self.progress => {
                self.say(format!(
                    "  {stage} {elapsed_secs:>3}s  sent {sent}  acked {acked}  rejected {rejected}  failed {failed}"
                ));
            }
            Event::Progress { .. } => {}
            Event::Note { message } => self.say(format!("  {message}")),
            Event::Aborted { stage, reason } => self.say(format!("stage `{stage}` aborted: {reason}")),
            Event::Fault(_) if !self.progress => {}
            Event::Fault(f) => match f.ended_secs {
                None => self.say(format!("  fault {} at {} started at {:.1}s", f.kind, f.at, f.started_secs)),
                Some(end) => self.say(format!("  fault {} at {} lifted at {:.1}s", f.kind, f.at, end)),
            },
            Event::StageFinished { report, .. } => {
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
                            "header" => format!("{v} {}", x.evaluations),
                            _ => format!("{v} {} ({} keys)", x.evaluations, x.keys),
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
                let text = self.secrets.mask(&summary(report, self.written.as_ref(), &self.files));
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
                a.criterion,
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
    s.push('\n');
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
