//! `on_verdict`: the command a scenario runs once the verdict is known.
//!
//! It runs in the scenario's folder, in a process group of its own, with
//! `STAGEGATE_VERDICT` and `STAGEGATE_REPORT` (and on ROLLBACK `STAGEGATE_ROLLBACK_FLAGS`
//! and `STAGEGATE_ROLLBACK_FILE`) in its environment, recorded in `run.json`
//! before it is spawned. It gets 60 s; Ctrl-C or SIGTERM stop it at once. When it exits,
//! whatever it left running in its group is stopped too (children that keep its output
//! open would otherwise hold the run). The last 4096 characters of its output go in the
//! report, secrets masked before the cut.
//!
//! Not here: deciding the verdict (`verdict`).

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::deps::process::end_group;
use crate::deps::runfile::{MARKER, RunFile};
use crate::report::ActionReport;
use crate::scenario::Plan;
use crate::verdict::Verdict;

/// How long the command may run.
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// How much of its output goes in the report (the end).
const TAIL: usize = 4096;
/// How much is read before secrets are masked and the end is cut: more than is kept, so
/// the cut never falls inside a secret that would then escape its mask.
const READ_TAIL: usize = 4 * TAIL;
/// How long its group gets to stop once asked.
const GRACE: Duration = Duration::from_secs(2);
/// Its entry in `run.json`.
const ENTRY: &str = "(on_verdict)";

/// Runs the scenario's command for `verdict`, if it has one.
pub async fn on_verdict(
    plan: &Plan,
    verdict: Verdict,
    report_dir: Option<&Path>,
    rollback: Option<&crate::verdict::rollback::RollbackPlan>,
    run: &Arc<RunFile>,
    cancel: &CancellationToken,
) -> Option<ActionReport> {
    let command = plan.on_verdict.command(verdict)?.clone();
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .current_dir(plan.dir())
        .env("STAGEGATE_VERDICT", verdict.to_string())
        .env(MARKER, run.run_id())
        .process_group(0)
        .kill_on_drop(true)
        .stdin(run.stdin())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(r) = report_dir {
        // Absolute: the command runs in the scenario's folder, not stagegate's.
        let report = r.join("report.json");
        cmd.env("STAGEGATE_REPORT", std::path::absolute(&report).unwrap_or(report));
    }
    if let Some(r) = rollback {
        // The flag change that undoes the failure, for a command that applies it.
        cmd.env("STAGEGATE_ROLLBACK_FLAGS", r.flags_json().to_string());
        if let Some(file) = &r.flagd_file {
            cmd.env("STAGEGATE_ROLLBACK_FILE", std::path::absolute(file).unwrap_or(file.clone()));
        }
    }
    if let Err(e) = run.process_starting(ENTRY) {
        return Some(ActionReport {
            command,
            exit_code: None,
            output: format!("not started: it cannot be recorded in run.json ({e})"),
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            run.process_stopped(ENTRY);
            return Some(ActionReport { command, exit_code: None, output: format!("could not start: {e}") });
        }
    };
    let pgid = child.id().map(|p| p as i32);
    if let Some(pid) = child.id() {
        run.process_started(ENTRY, pid);
    }
    let output = Arc::new(Mutex::new(Tail::default()));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(keep_tail(out, output.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(keep_tail(err, output.clone()));
    }
    let (exit_code, note) = tokio::select! {
        status = child.wait() => (status.ok().and_then(|s| s.code()), None),
        _ = tokio::time::sleep(TIME_LIMIT) => (None, Some("did not finish within 60s; stopped")),
        _ = cancel.cancelled() => (None, Some("stopped: the run was interrupted")),
    };
    // Output still coming from what it left behind gets a moment, then its group ends.
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while readers.join_next().await.is_some() {} }).await;
    if let Some(pgid) = pgid {
        let grace = if cancel.is_cancelled() { Duration::ZERO } else { GRACE };
        end_group(pgid, grace, || {
            let _ = child.try_wait();
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    readers.abort_all();
    run.process_stopped(ENTRY);
    let text = plan.secrets.mask(&output.lock().unwrap_or_else(|p| p.into_inner()).text());
    let mut text = match text.char_indices().rev().nth(TAIL - 1) {
        Some((at, _)) => text[at..].to_string(),
        None => text,
    };
    if let Some(n) = note {
        text.push_str(n);
    }
    Some(ActionReport { command, exit_code, output: text })
}

/// The end of an output, at most [`TAIL`] bytes of it.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > READ_TAIL {
            let cut = self.0.len() - READ_TAIL;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

async fn keep_tail(mut from: impl tokio::io::AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
        tail.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]);
    }
}
