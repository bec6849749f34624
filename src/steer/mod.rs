//! Steering a run while it goes: the operator's side of a game day.
//!
//! [`Steering`] is what the live page and its API (`ui`) act through, and what the
//! runner consults. With a token, an operator can hold the running stage (move its end
//! later, at most to twice its planned length), advance (end it now, judged on what it
//! has), abort the run (faults lifted, children stopped, report written, verdict as
//! `steering.on_abort` says unless a criterion already failed), and start a fault from
//! the catalog with a time to live. Every action, allowed or refused, goes to the audit
//! log: `steering.jsonl` in the run's folder (one JSON object a line), and the report.
//!
//! - [`board`]: what the page shows, followed from the run's events;
//! - [`ui`]: the page, its pushed updates and the steering API.

pub mod board;
pub mod ui;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fault::timeline::LiveFault;
use crate::scenario::Plan;
use crate::scenario::units::format_duration;

/// How long a hold extends the stage when the request does not say.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(30);
/// Audit entries kept in memory (and in the report); later ones are counted.
const MAX_AUDIT: usize = 10_000;
/// Refused attempts without a valid token recorded in the audit; later ones are counted.
const MAX_UNAUTHORIZED: usize = 100;
/// Refused requests (with a valid token) recorded in the audit; later ones are counted.
/// Actions carried out are always recorded.
const MAX_REFUSED: usize = 1000;
/// The most characters of a refused request's body kept in the audit.
const MAX_REQUEST_TEXT: usize = 1024;

/// One action in the audit log.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// When (RFC 3339).
    pub at: String,
    /// Seconds since the run started.
    pub run_secs: f64,
    /// The name of the token used; `(none)` for an attempt without a valid one.
    pub token: String,
    /// `hold`, `advance`, `abort` or `fault`.
    pub action: String,
    /// What was asked (the hold's length, the fault), as sent.
    pub request: Value,
    /// The stage running then, if one was.
    pub stage: Option<String>,
    /// `ok` or `refused`.
    pub result: String,
    /// What it did, or why it was refused.
    pub message: String,
}

/// What an operator asks for.
#[derive(Debug, Clone)]
pub enum Action {
    Hold(Duration),
    Advance,
    Abort,
    /// A fault as a scenario writes one, with `ttl`.
    Fault(Value),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Hold(_) => "hold",
            Action::Advance => "advance",
            Action::Abort => "abort",
            Action::Fault(_) => "fault",
        }
    }

    fn request(&self) -> Value {
        match self {
            Action::Hold(d) => json!({ "for": format_duration(*d) }),
            Action::Fault(f) => f.clone(),
            _ => json!({}),
        }
    }
}

/// Why an action was refused: the HTTP status and the message.
pub type Refusal = (u16, String);

/// The stage running now, as the steering sees it.
struct Running {
    name: String,
    start: Instant,
    planned: Duration,
    most: Duration,
    warmup: Duration,
    end: watch::Sender<Duration>,
    faults: mpsc::Sender<LiveFault>,
}

/// The receiving ends a stage reads: where it ends, and the faults started live.
pub struct StageSteering {
    pub end: watch::Receiver<Duration>,
    pub most: Duration,
    pub faults: mpsc::Receiver<LiveFault>,
}

struct Audit {
    entries: Vec<AuditEntry>,
    unauthorized: usize,
    refused: usize,
    dropped: u64,
    file: Option<std::fs::File>,
    path: Option<PathBuf>,
}

/// The run's steering: tokens, the running stage's controls, the abort, the audit.
pub struct Steering {
    tokens: Vec<(String, String)>,
    plan: Plan,
    started: Instant,
    halt: Mutex<Option<CancellationToken>>,
    /// The run's events: each action done is said there too (the terminal, the page).
    /// Held weakly: the run's reporters stop when the run drops its own senders.
    events: Mutex<Option<tokio::sync::mpsc::WeakUnboundedSender<crate::report::Event>>>,
    aborted: Mutex<Option<String>>,
    running: Mutex<Option<Running>>,
    audit: Mutex<Audit>,
}

impl Steering {
    /// Steering for `plan` with these `(name, secret)` tokens; the audit log is written
    /// into `dir` when given.
    pub fn new(plan: &Plan, tokens: Vec<(String, String)>, dir: Option<PathBuf>) -> Steering {
        Steering {
            tokens,
            plan: plan.clone(),
            started: Instant::now(),
            halt: Mutex::new(None),
            events: Mutex::new(None),
            aborted: Mutex::new(None),
            running: Mutex::new(None),
            audit: Mutex::new(Audit {
                entries: Vec::new(),
                unauthorized: 0,
                refused: 0,
                dropped: 0,
                file: None,
                path: dir.map(|d| d.join("steering.jsonl")),
            }),
        }
    }

    /// The name of the token `header` (an `Authorization` value) carries, if valid.
    pub fn authorize(&self, header: Option<&str>) -> Option<String> {
        // The scheme's name is case-insensitive (RFC 7235).
        let header = header?;
        let (scheme, given) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let given = given.trim().as_bytes();
        // Compared in full whatever the first difference, so timing tells nothing.
        let same = |secret: &str| {
            let s = secret.as_bytes();
            s.len() == given.len() && s.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        };
        self.tokens.iter().find(|(_, secret)| same(secret)).map(|(name, _)| name.clone())
    }

    /// The runner's stop for the stages (an abort cancels it) and its events (each
    /// action done is said there).
    pub fn attach(&self, halt: CancellationToken, events: tokio::sync::mpsc::UnboundedSender<crate::report::Event>) {
        *lock(&self.halt) = Some(halt);
        *lock(&self.events) = Some(events.downgrade());
    }

    /// Why the run was aborted from the steering API, if it was.
    pub fn aborted(&self) -> Option<String> {
        lock(&self.aborted).clone()
    }

    /// A stage starts: its controls, for the stage to read.
    pub fn stage_started(&self, name: &str, planned: Duration, warmup: Duration) -> StageSteering {
        let most = planned + planned;
        let (end, end_rx) = watch::channel(planned);
        let (faults, faults_rx) = mpsc::channel(8);
        *lock(&self.running) =
            Some(Running { name: name.to_string(), start: Instant::now(), planned, most, warmup, end, faults });
        StageSteering { end: end_rx, most, faults: faults_rx }
    }

    /// The stage is over: nothing can move it any more.
    pub fn stage_ended(&self) {
        *lock(&self.running) = None;
    }

    /// The audit so far.
    pub fn audit(&self) -> Vec<AuditEntry> {
        lock(&self.audit).entries.clone()
    }

    /// The last `n` entries of the audit.
    pub fn audit_tail(&self, n: usize) -> Vec<AuditEntry> {
        let audit = lock(&self.audit);
        audit.entries[audit.entries.len().saturating_sub(n)..].to_vec()
    }

    /// Records an attempt without a valid token (the first ones; the rest are counted).
    pub fn refused_unauthorized(&self, action: &str) {
        let mut audit = lock(&self.audit);
        if audit.unauthorized >= MAX_UNAUTHORIZED {
            audit.dropped += 1;
            return;
        }
        audit.unauthorized += 1;
        drop(audit);
        self.record("(none)", action, json!({}), Err((401, "no valid token".into())));
    }

    /// Records a request of the token named `who` that was refused before it was
    /// understood (a malformed body).
    pub fn refused(&self, who: &str, action: &str, body: &[u8], why: &str) {
        // Kept as sent when small, as text cut to 1 KiB otherwise.
        let request =
            serde_json::from_slice(body).ok().filter(|_| body.len() <= MAX_REQUEST_TEXT).unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                Value::String(text.chars().take(MAX_REQUEST_TEXT).collect())
            });
        self.record(who, action, request, Err((400, why.to_string())));
    }

    /// Carries out `action` for the token named `who`, and audits it.
    pub async fn act(&self, who: &str, action: Action) -> Result<String, Refusal> {
        let result = self.carry_out(who, &action).await;
        self.record(who, action.name(), action.request(), result.clone());
        result
    }

    async fn carry_out(&self, who: &str, action: &Action) -> Result<String, Refusal> {
        if let Some(why) = self.aborted() {
            return Err((409, format!("the run is already aborted ({why})")));
        }
        match action {
            Action::Abort => {
                let stage = lock(&self.running).as_ref().map(|r| r.name.clone());
                let at = stage.as_ref().map_or("between stages".to_string(), |s| format!("during stage `{s}`"));
                *lock(&self.aborted) = Some(format!("`{who}` aborted the run {at}"));
                if let Some(halt) = lock(&self.halt).as_ref() {
                    halt.cancel();
                }
                Ok(format!("aborting {at}: faults are lifted, everything started is stopped, the report is written"))
            }
            Action::Hold(by) => {
                let running = lock(&self.running);
                let r = running.as_ref().ok_or((409, "no stage is running".to_string()))?;
                let now = r.start.elapsed();
                let end = *r.end.borrow();
                if now >= end {
                    return Err((409, format!("stage `{}` has reached its end", r.name)));
                }
                if end >= r.most {
                    return Err((
                        409,
                        format!(
                            "stage `{}` is already held to its longest, {} (twice its planned {})",
                            r.name,
                            format_duration(r.most),
                            format_duration(r.planned)
                        ),
                    ));
                }
                let new = (end + *by).min(r.most);
                r.end.send_replace(new);
                let capped = if new < end + *by { " (the longest it may run: twice its planned length)" } else { "" };
                Ok(format!(
                    "stage `{}` now ends at {} instead of {}{capped}",
                    r.name,
                    format_duration(round_ms(new)),
                    format_duration(round_ms(end))
                ))
            }
            Action::Advance => {
                let running = lock(&self.running);
                let r = running.as_ref().ok_or((409, "no stage is running".to_string()))?;
                let now = r.start.elapsed();
                if now >= *r.end.borrow() {
                    return Err((409, format!("stage `{}` has reached its end", r.name)));
                }
                r.end.send_replace(now);
                let thin = if now <= r.warmup {
                    " (still in its warm-up: nothing of it is judged, so its criteria will be INCONCLUSIVE)"
                } else {
                    ""
                };
                Ok(format!(
                    "stage `{}` ends now, at {}, judged on what it has{thin}",
                    r.name,
                    format_duration(round_ms(now))
                ))
            }
            Action::Fault(body) => {
                let (fault, ttl) = crate::scenario::live_fault(&self.plan, body).map_err(|e| (400, e.join("; ")))?;
                if matches!(fault.kind, crate::fault::FaultKind::Kill { restart_after: None, .. }) {
                    return Err((
                        400,
                        "a live kill needs `restart_after`: without it the process stays down for the rest of the run"
                            .into(),
                    ));
                }
                if crate::fault::catalog::find(fault.kind.name())
                    .is_some_and(|k| k.layer == crate::fault::catalog::Layer::Record)
                {
                    return Err((
                        400,
                        format!(
                            "a {} fault acts on the records a stage plans; it cannot start live",
                            fault.kind.name()
                        ),
                    ));
                }
                let sender = {
                    let running = lock(&self.running);
                    let r = running.as_ref().ok_or((409, "no stage is running".to_string()))?;
                    (r.faults.clone(), r.name.clone())
                };
                let (done, started) = oneshot::channel();
                let (kind, at) = (fault.kind.name(), fault.at.to_string());
                let live = LiveFault { fault, ttl, by: who.to_string(), done };
                sender
                    .0
                    .try_send(live)
                    .map_err(|_| (429, "too many faults asked for at once; try again".to_string()))?;
                match tokio::time::timeout(Duration::from_secs(10), started).await {
                    Ok(Ok(Ok(secs))) => Ok(format!(
                        "{kind} at {at} started {secs:.1}s into stage `{}`; lifted after {} or at the stage's end",
                        sender.1,
                        format_duration(ttl)
                    )),
                    Ok(Ok(Err(why))) => Err((409, why)),
                    Ok(Err(_)) => Err((409, format!("stage `{}` ended before the fault could start", sender.1))),
                    Err(_) => Err((503, "the stage did not take the fault within 10s".to_string())),
                }
            }
        }
    }

    fn record(&self, who: &str, action: &str, request: Value, result: Result<String, Refusal>) {
        let stage = lock(&self.running).as_ref().map(|r| r.name.clone());
        let (result, message) = match result {
            Ok(m) => ("ok", m),
            Err((_, m)) => ("refused", m),
        };
        // A refusal may quote what was sent: kept as short as the request itself.
        let message = if message.chars().count() > MAX_REQUEST_TEXT {
            format!("{}…", message.chars().take(MAX_REQUEST_TEXT).collect::<String>())
        } else {
            message
        };
        let entry = AuditEntry {
            at: chrono::Utc::now().to_rfc3339(),
            run_secs: (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            token: who.to_string(),
            action: action.to_string(),
            request,
            stage,
            result: result.to_string(),
            message,
        };
        if result == "ok"
            && let Some(events) = lock(&self.events).as_ref().and_then(|e| e.upgrade())
        {
            let message = format!("steering: `{who}` {action}: {}", entry.message);
            let _ = events.send(crate::report::Event::Note { message });
        }
        let mut audit = lock(&self.audit);
        if result == "refused" && who != "(none)" {
            if audit.refused >= MAX_REFUSED {
                audit.dropped += 1;
                return;
            }
            audit.refused += 1;
        }
        if audit.entries.len() >= MAX_AUDIT {
            audit.dropped += 1;
            return;
        }
        if audit.file.is_none()
            && let Some(path) = &audit.path
        {
            match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => audit.file = Some(f),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write the steering audit log"),
            }
        }
        if let Some(f) = &mut audit.file
            && let Ok(line) = serde_json::to_string(&entry)
        {
            let _ = writeln!(f, "{line}");
        }
        audit.entries.push(entry);
    }

    /// The stage running now: its name, seconds elapsed, and its end and planned length
    /// in seconds.
    pub fn running(&self) -> Option<(String, f64, f64, f64)> {
        lock(&self.running).as_ref().map(|r| {
            (r.name.clone(), r.start.elapsed().as_secs_f64(), r.end.borrow().as_secs_f64(), r.planned.as_secs_f64())
        })
    }

    /// Audit entries left out past the bounds.
    pub fn audit_dropped(&self) -> u64 {
        lock(&self.audit).dropped
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh token: 32 random bytes, URL-safe base64.
pub fn new_token() -> String {
    // Hex: nothing a shell or an argument parser reads specially (a base64 token could
    // start with `-` and be taken for an option when pasted).
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
