//! Processes stagegate starts and stops: a dependency's server, or the target.
//!
//! A [`ManagedProcess`] runs its command in its own process group on a free loopback
//! port (`{{ port }}` in the command and environment), logs its output to a file in the
//! run's report folder, and is ready when its port accepts connections (or an HTTP path
//! answers 2xx). It is written into `run.json` before it is spawned and again with its
//! pid once it is, and it carries the run's marker in its environment, so `cleanup` can
//! always find it. Every wait (readiness, a restart) has a deadline and gives way to the
//! run's cancellation.
//!
//! Process faults act on the whole group: `kill` sends a signal and may restart the
//! process; `pause` stops it (SIGSTOP) until `resume`. Stopping resumes the group, sends
//! SIGTERM, waits for every member of the group (not only its leader) up to the grace
//! period, then sends SIGKILL to whatever is left. Dropping one kills its group.
//!
//! Not here: the fault timeline that decides when to kill or pause (`fault::timeline`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ProcessDef;
use super::runfile::{MARKER, RunFile};
use crate::limits::PROCESS_GRACE;

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{name}: a template in its command or environment is wrong: {message}")]
    Template { name: String, message: String },
    #[error("{name} could not start `{program}`: {source}")]
    Spawn { name: String, program: String, source: std::io::Error },
    #[error("{name} exited with {status} before it was ready{}", tail(.log))]
    Exited { name: String, status: String, log: String },
    #[error("{name} was not ready within {}{}", crate::scenario::units::format_duration(*.timeout), tail(.log))]
    NotReady { name: String, timeout: Duration, log: String },
    #[error("interrupted while {name} was starting")]
    Cancelled { name: String },
    #[error("{name} was not started: it cannot be recorded in run.json ({source})")]
    Record { name: String, source: std::io::Error },
}

fn tail(log: &str) -> String {
    if log.trim().is_empty() { String::new() } else { format!("; its last output:\n{log}") }
}

/// A process stagegate manages (started or not yet).
pub struct ManagedProcess {
    /// How messages name it (`the target`, `` `store` ``).
    label: String,
    /// Its entry in `run.json` (`target`, or the dependency's name).
    entry: String,
    def: ProcessDef,
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// Environment that changes between starts (the `env` flag provider's).
    extra_env: Mutex<Vec<(String, String)>>,
    port: u16,
    log: Option<PathBuf>,
    run: Arc<RunFile>,
    child: Mutex<Option<Child>>,
    pid: Mutex<Option<u32>>,
    paused: Mutex<bool>,
}

/// Renders `{{ port }}` (and whatever else `values` holds) into one template string.
pub fn render(template: &str, values: &minijinja::Value) -> Result<String, String> {
    let env = minijinja::Environment::new();
    env.render_str(template, values).map_err(|e| e.to_string())
}

/// Adds what to do to a template error about a name that only some scenarios define.
fn with_hint(message: String) -> String {
    let hint = if message.contains("`sink` is undefined") {
        Some("`{{ sink.url }}` exists when the target has `http.sink`")
    } else if message.contains("`dependencies` is undefined") || message.contains("`flags` is undefined") {
        Some("dependencies and flags are given to the target's process only, not to dependencies")
    } else {
        None
    };
    match hint {
        Some(h) => format!("{message} (hint: {h})"),
        None => message,
    }
}

/// A free loopback port (the OS picks it; it stays free until the process binds it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `check` says ready, `exited` says the process is gone, the deadline
/// passes, or `cancel` fires; polls every 50 ms. Shared by processes and containers.
pub async fn wait_until_ready<C, F>(
    timeout: Duration,
    cancel: &CancellationToken,
    mut exited: impl FnMut() -> Option<String>,
    mut check: C,
) -> Readiness
where
    C: FnMut() -> F,
    F: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = exited() {
            return Readiness::Exited(status);
        }
        let ready = tokio::select! {
            _ = cancel.cancelled() => return Readiness::Cancelled,
            r = tokio::time::timeout(Duration::from_millis(500), check()) => r.unwrap_or(false),
        };
        if ready {
            return Readiness::Ready;
        }
        if Instant::now() >= deadline {
            return Readiness::TimedOut;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Readiness::Cancelled,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// How a wait for readiness ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Exited(String),
    TimedOut,
    Cancelled,
}

/// Whether `address` answers: an HTTP GET of `path` with a 2xx, or a TCP connection.
///
/// `client` is a [`probe_client`]: a process that serves only HTTPS answers through it
/// too (its certificate is not checked: this only asks whether it answers yet).
pub async fn answers(client: &reqwest::Client, address: SocketAddr, http_path: Option<&str>) -> bool {
    let get = |scheme: &str, path: &str| {
        client.get(format!("{scheme}://{address}{path}")).timeout(Duration::from_millis(500)).send()
    };
    match http_path {
        Some(path) => match get("http", path).await {
            Ok(r) => r.status().is_success(),
            Err(e) if e.is_connect() || e.is_timeout() => false,
            // It took the connection but did not speak plain HTTP: perhaps HTTPS.
            Err(_) => get("https", path).await.is_ok_and(|r| r.status().is_success()),
        },
        None => tokio::net::TcpStream::connect(address).await.is_ok(),
    }
}

/// The client readiness probes use: it accepts any certificate (a process on loopback
/// that serves HTTPS with its own is ready when it answers).
pub fn probe_client() -> reqwest::Client {
    crate::http_client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap_or_else(|_| crate::http_client::client())
}

impl ManagedProcess {
    /// Prepares `def` as `label` (its `run.json` entry named `entry`), logging to `log`:
    /// picks its port and renders its command. Templates see `port` and whatever
    /// `context` holds (`dependencies`, `flags`, `sink`); `extra_env` is added to its
    /// environment. Nothing runs until [`ManagedProcess::start`].
    pub fn new(
        label: &str,
        entry: &str,
        def: &ProcessDef,
        log: Option<PathBuf>,
        context: serde_json::Map<String, serde_json::Value>,
        extra_env: Vec<(String, String)>,
        run: Arc<RunFile>,
    ) -> Result<ManagedProcess, ProcessError> {
        let port = free_port().map_err(|source| ProcessError::Spawn {
            name: label.into(),
            program: def.command[0].clone(),
            source,
        })?;
        let mut context = context;
        context.insert("port".into(), port.into());
        let values = minijinja::Value::from(minijinja::value::Serde(context));
        let render_all = |items: Vec<&String>| -> Result<Vec<String>, ProcessError> {
            items
                .into_iter()
                .map(|t| {
                    render(t, &values)
                        .map_err(|message| ProcessError::Template { name: label.into(), message: with_hint(message) })
                })
                .collect()
        };
        let command = render_all(def.command.iter().collect())?;
        let env_values = render_all(def.env.values().collect())?;
        let env = def.env.keys().cloned().zip(env_values).collect();
        Ok(ManagedProcess {
            label: label.to_string(),
            entry: entry.to_string(),
            def: def.clone(),
            command,
            env,
            extra_env: Mutex::new(extra_env),
            port,
            log,
            run,
            child: Mutex::new(None),
            pid: Mutex::new(None),
            paused: Mutex::new(false),
        })
    }

    /// Spawns the process and waits until it is ready, its ready timeout passes, or
    /// `cancel` fires.
    pub async fn start(&self, cancel: &CancellationToken) -> Result<(), ProcessError> {
        self.spawn()?;
        self.wait_ready(cancel).await
    }

    fn spawn(&self) -> Result<(), ProcessError> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .envs(self.env.iter().cloned())
            .envs(lock(&self.extra_env).iter().cloned())
            .env(MARKER, self.run.run_id())
            .current_dir(&self.def.cwd)
            .kill_on_drop(true)
            .process_group(0);
        cmd.stdin(self.run.stdin());
        let (out, err) = log_files(self.log.as_deref());
        cmd.stdout(out).stderr(err);
        // Written down before it exists: a SIGKILL between spawn and the next write still
        // leaves its marker for `cleanup` to find.
        self.run
            .process_starting(&self.entry)
            .map_err(|source| ProcessError::Record { name: self.label.clone(), source })?;
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: self.label.clone(),
            program: self.command[0].clone(),
            source,
        })?;
        let pid = child.id();
        if let Some(pid) = pid {
            self.run.process_started(&self.entry, pid);
        }
        *lock(&self.pid) = pid;
        *lock(&self.child) = Some(child);
        Ok(())
    }

    /// The last lines of the process's log.
    fn log_tail(&self) -> String {
        let Some(path) = &self.log else { return String::new() };
        let text = crate::limits::read_bounded(path, 16 * 1024 * 1024).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    async fn wait_ready(&self, cancel: &CancellationToken) -> Result<(), ProcessError> {
        let client = probe_client();
        let address = self.address();
        let path = self.def.ready_http.clone();
        let readiness = wait_until_ready(
            self.def.ready_timeout,
            cancel,
            || self.exited(),
            || answers(&client, address, path.as_deref()),
        )
        .await;
        match readiness {
            Readiness::Ready => Ok(()),
            Readiness::Exited(status) => {
                Err(ProcessError::Exited { name: self.label.clone(), status, log: self.log_tail() })
            }
            Readiness::TimedOut => Err(ProcessError::NotReady {
                name: self.label.clone(),
                timeout: self.def.ready_timeout,
                log: self.log_tail(),
            }),
            Readiness::Cancelled => Err(ProcessError::Cancelled { name: self.label.clone() }),
        }
    }

    /// The port it was given (`{{ port }}`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process has exited (it crashed, or a fault killed it); its status.
    pub fn exited(&self) -> Option<String> {
        let mut child = lock(&self.child);
        child.as_mut().and_then(|c| c.try_wait().ok().flatten()).map(|s| s.to_string())
    }

    /// Where the process serves.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process group id (the process's pid), while it runs.
    pub fn pid(&self) -> Option<u32> {
        *lock(&self.pid)
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = killpg(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Sends `signal` to the process group (a `kill` fault).
    pub fn kill(&self, signal: Signal) {
        if *lock(&self.paused) {
            self.signal(Signal::SIGCONT);
        }
        self.signal(signal);
    }

    /// Starts the process again on the same port (after a `kill` with `restart_after`),
    /// stopping what is left of the old group first.
    pub async fn restart(&self, cancel: &CancellationToken) -> Result<(), ProcessError> {
        self.stop_group(false).await;
        self.spawn()?;
        self.wait_ready(cancel).await
    }

    /// Stops the process and starts it again on the same port with `extra_env` in place
    /// of the one it had, waiting until it is ready (the `env` flag provider, between
    /// stages whose flags differ).
    pub async fn restart_with(
        &self,
        extra_env: Vec<(String, String)>,
        cancel: &CancellationToken,
    ) -> Result<(), ProcessError> {
        self.stop_group(false).await;
        *lock(&self.extra_env) = extra_env;
        self.spawn()?;
        self.wait_ready(cancel).await
    }

    /// Freezes the process group (a `pause` fault).
    pub fn pause(&self) {
        *lock(&self.paused) = true;
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused process group run again.
    pub fn resume(&self) {
        let mut paused = lock(&self.paused);
        if *paused {
            self.signal(Signal::SIGCONT);
            *paused = false;
        }
    }

    /// Whether the process is paused now.
    pub fn is_paused(&self) -> bool {
        *lock(&self.paused)
    }

    /// Resumes the group, asks it to stop (SIGTERM), waits for every member up to the
    /// grace period (none when `forced`), then kills whatever is left (SIGKILL).
    async fn stop_group(&self, forced: bool) {
        let Some(pid) = self.pid() else { return };
        *lock(&self.paused) = false;
        end_group(pid as i32, if forced { Duration::ZERO } else { PROCESS_GRACE }, || self.reap_if_exited()).await;
        let child = lock(&self.child).take();
        if let Some(mut c) = child {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
        }
        *lock(&self.pid) = None;
        self.run.process_stopped(&self.entry);
    }

    fn reap_if_exited(&self) {
        if let Some(c) = lock(&self.child).as_mut() {
            let _ = c.try_wait();
        }
    }

    /// Stops the process group now, without waiting (the panic path).
    fn kill_now(&self) {
        if self.pid().is_some() {
            self.signal(Signal::SIGCONT);
            self.signal(Signal::SIGKILL);
            if let Some(c) = lock(&self.child).as_mut() {
                let _ = c.start_kill();
                let _ = c.try_wait();
            }
            *lock(&self.pid) = None;
            self.run.process_stopped(&self.entry);
        }
    }
}

#[async_trait::async_trait]
impl crate::teardown::Resource for ManagedProcess {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn lift(&self) {
        self.resume();
    }

    async fn stop(&self, forced: bool) {
        self.stop_group(forced).await;
    }

    fn stop_now(&self) {
        self.kill_now();
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        // A panic or an early return must not leave the group running or frozen.
        self.kill_now();
    }
}

/// Ends process group `pgid`: resumes it, asks it to stop (SIGTERM), waits for every
/// live member up to `grace` (calling `reap` meanwhile, so an exited leader is not
/// counted), then kills whatever is left (SIGKILL), members that ignore SIGTERM included.
pub async fn end_group(pgid: i32, grace: Duration, mut reap: impl FnMut()) {
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, Signal::SIGCONT);
    if !grace.is_zero() {
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && group_alive(pgid) {
            reap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
    // SIGKILL is delivered asynchronously: wait (briefly) until the group is gone.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && group_alive(pgid) {
        reap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether any live (not zombie) process is in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())).any(|pid| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return false };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && state != Some("Z")
    })
}

/// Stdout and stderr of a started process: its log file (appended), or nothing.
pub fn log_files(log: Option<&std::path::Path>) -> (std::process::Stdio, std::process::Stdio) {
    let Some(path) = log else { return (std::process::Stdio::null(), std::process::Stdio::null()) };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(path);
    match (open(), open()) {
        (Ok(out), Ok(err)) => (out.into(), err.into()),
        _ => (std::process::Stdio::null(), std::process::Stdio::null()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(command: &[&str]) -> ProcessDef {
        ProcessDef {
            command: command.iter().map(|s| s.to_string()).collect(),
            env: Default::default(),
            cwd: PathBuf::from("."),
            ready_http: None,
            ready_timeout: Duration::from_secs(30),
        }
    }

    fn detached() -> Arc<RunFile> {
        RunFile::detached("t")
    }

    #[tokio::test]
    async fn a_wait_for_readiness_gives_way_to_cancellation() {
        let sleeper = def(&["sleep", "30"]);
        let p = ManagedProcess::new("the target", "target", &sleeper, None, Default::default(), vec![], detached())
            .unwrap();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let started = std::time::Instant::now();
        let err = p.start(&cancel).await.unwrap_err();
        assert!(matches!(err, ProcessError::Cancelled { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = p.pid().unwrap() as i32;
        p.stop_group(false).await;
        assert!(!group_alive(pid));
    }

    #[tokio::test]
    async fn stopping_kills_a_group_member_that_ignores_sigterm() {
        // The leader exits on SIGTERM; its child ignores SIGTERM and would live on.
        let script = "(trap '' TERM; exec sleep 60) & exec python3 -m http.server {{ port }} --bind 127.0.0.1";
        let mut d = def(&["sh", "-c", script]);
        d.ready_timeout = Duration::from_secs(20);
        let p = ManagedProcess::new("the target", "target", &d, None, Default::default(), vec![], detached()).unwrap();
        p.start(&CancellationToken::new()).await.unwrap();
        let pgid = p.pid().unwrap() as i32;
        assert!(group_alive(pgid));
        p.stop_group(false).await;
        assert!(!group_alive(pgid), "a member of the target's group outlived its stop");
    }
}
