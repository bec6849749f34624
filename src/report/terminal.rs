//! The terminal reporter: live progress on stderr while a run goes, and the summary on
//! stdout at the end (one row per stage, each criterion with measured value and limit,
//! then the verdict and the seed).

use std::io::Write;

use super::{Event, Reporter, RunReport};
use crate::verdict::Outcome;

/// Prints progress and the final summary.
pub struct TerminalReporter {
    /// Print per-second progress lines.
    pub progress: bool,
    /// `(name, value)` of the scenario's secrets, masked in everything printed.
    pub secrets: Vec<(String, String)>,
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1000.0 => format!("{:.2}s", v / 1000.0),
        Some(v) => format!("{v:.1}ms"),
    }
}

impl Reporter for TerminalReporter {
    fn event(&mut self, event: &Event) {
        let mut err = std::io::stderr().lock();
        match event {
            Event::Started { name, file, seed, stages, warnings } => {
                let _ = writeln!(
                    err,
                    "stagegate: running `{name}` ({}) with seed {seed}, {stages} stage(s)",
                    file.display()
                );
                for w in warnings {
                    let _ = writeln!(err, "warning: {w}");
                }
            }
            Event::Provisioned { target, dependencies, flags } => {
                if flags.is_empty() {
                    let _ = writeln!(err, "  target {target}");
                } else {
                    let _ = writeln!(err, "  target {target}, flags {flags}");
                }
                for (name, real, proxy) in dependencies {
                    let _ = writeln!(err, "  dependency {name} at {real}, behind fault proxy {proxy}");
                }
            }
            Event::StageStarted { index, name, flags } => {
                let state: Vec<String> = flags.iter().map(|(k, v)| format!("{k}={}", v.describe())).collect();
                let state = if state.is_empty() { vec!["no flags".to_string()] } else { state };
                let _ = writeln!(err, "stage {} `{name}` started [{}]", index + 1, state.join(", "));
            }
            Event::Progress { stage, elapsed_secs, sent, acked, rejected, failed } if self.progress => {
                let _ = writeln!(
                    err,
                    "  {stage} {elapsed_secs:>3}s  sent {sent}  acked {acked}  rejected {rejected}  failed {failed}"
                );
            }
            Event::Progress { .. } => {}
            Event::Note { message } => {
                let _ = writeln!(err, "  {message}");
            }
            Event::Aborted { stage, reason } => {
                let _ = writeln!(err, "stage `{stage}` aborted: {reason}");
            }
            Event::Fault(_) if !self.progress => {}
            Event::Fault(f) => match f.ended_secs {
                None => {
                    let _ = writeln!(err, "  fault {} at {} started at {:.1}s", f.kind, f.at, f.started_secs);
                }
                Some(end) => {
                    let _ = writeln!(err, "  fault {} at {} lifted at {:.1}s", f.kind, f.at, end);
                }
            },
            Event::StageFinished { report, .. } => {
                let m = &report.metrics;
                if report.dropped > 0 {
                    let _ = writeln!(
                        err,
                        "warning: {} sends dropped in `{}`: the driver could not keep up with the arrival rate",
                        report.dropped, report.name
                    );
                }
                let _ = writeln!(
                    err,
                    "stage `{}` {}: {} requests sent ({} judged after warm-up), p99 {}, {} errors, lost {}, duplicated {}, corrupted {}",
                    report.name,
                    if report.completed { "finished" } else { "cut short" },
                    m.requests + m.warmup_requests,
                    m.requests,
                    ms(m.latency.p99),
                    m.errors,
                    m.data.lost,
                    m.data.duplicated,
                    m.data.corrupted
                );
                if let Some(f) = &m.freshness {
                    let _ = writeln!(
                        err,
                        "  freshness p50 {}, p99 {}, max {} over {} records (timed by {})",
                        ms(f.p50),
                        ms(f.p99),
                        ms(f.max),
                        f.records,
                        f.observed_by
                    );
                }
            }
            Event::Finished(report) => {
                drop(err);
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(crate::scenario::mask(&summary(report), &self.secrets).as_bytes());
            }
        }
    }
}

/// The end-of-run summary as text.
pub fn summary(r: &RunReport) -> String {
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
            m.data.lost,
            m.data.duplicated,
            m.data.corrupted,
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
                v.data.lost,
                v.data.duplicated,
                v.data.corrupted
            ));
        }
    }
    if !r.assessments.is_empty() {
        s.push_str("\ncriteria\n");
        for a in &r.assessments {
            let mark = match a.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "FAIL",
                Outcome::Inconclusive => "????",
            };
            let level = match a.level {
                crate::verdict::Level::Enforce => "",
                crate::verdict::Level::Warn => " [warn]",
                crate::verdict::Level::Observe => " [observe]",
            };
            s.push_str(&format!(
                "  {mark}  {:<w$} {:<28} measured {:>9}  limit {}{level}{}\n",
                a.stage,
                a.criterion,
                a.measured_text,
                a.limit_text,
                a.note.as_ref().map(|n| format!("  ({n})")).unwrap_or_default()
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
    if let Some(dir) = &r.report_dir {
        s.push_str(&format!("report: {}\n", dir.join("report.json").display()));
    }
    s
}
