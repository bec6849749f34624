//! Processes stagegate starts and stops: a dependency's server (and, later, the target).
//!
//! A [`ManagedProcess`] runs its command in its own process group on a free loopback
//! port (`{{ port }}` in the command and environment), logs its output to a file in the
//! run's report folder, and is ready when its port accepts connections (or an HTTP path
//! answers 2xx). Process faults act on the whole group: `kill` sends a signal and may
//! restart the process; `pause` stops it (SIGSTOP) until `resume`. [`ManagedProcess::stop`]
//! resumes, sends SIGTERM, and SIGKILL after a grace period; dropping one kills it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::ProcessDef;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

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
}

fn tail(log: &str) -> String {
    if log.trim().is_empty() { String::new() } else { format!("; its last output:\n{log}") }
}

/// A running process stagegate manages.
pub struct ManagedProcess {
    name: String,
    def: ProcessDef,
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// Environment that changes between starts (the `env` flag provider's).
    extra_env: Mutex<Vec<(String, String)>>,
    port: u16,
    log: Option<PathBuf>,
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

impl ManagedProcess {
    /// Starts `def` as `name`, logging to `log` (if given), and waits until it is ready.
    /// Templates see `port` and whatever `context` holds (`dependencies`, `flags`);
    /// `extra_env` is added to the process's environment.
    pub async fn start(
        name: &str,
        def: &ProcessDef,
        log: Option<PathBuf>,
        context: serde_json::Map<String, serde_json::Value>,
        extra_env: Vec<(String, String)>,
    ) -> Result<ManagedProcess, ProcessError> {
        let port = free_port().map_err(|source| ProcessError::Spawn {
            name: name.into(),
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
                        .map_err(|message| ProcessError::Template { name: name.into(), message: with_hint(message) })
                })
                .collect()
        };
        let command = render_all(def.command.iter().collect())?;
        let env_values = render_all(def.env.values().collect())?;
        let env = def.env.keys().cloned().zip(env_values).collect();
        let p = ManagedProcess {
            name: name.to_string(),
            def: def.clone(),
            command,
            env,
            extra_env: Mutex::new(extra_env),
            port,
            log,
            child: Mutex::new(None),
            pid: Mutex::new(None),
            paused: Mutex::new(false),
        };
        p.spawn()?;
        p.wait_ready().await?;
        Ok(p)
    }

    fn spawn(&self) -> Result<(), ProcessError> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .envs(self.env.iter().cloned())
            .envs(self.extra_env.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned())
            .current_dir(&self.def.cwd)
            .kill_on_drop(true)
            .process_group(0);
        cmd.stdin(std::process::Stdio::null());
        match &self.log {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let open = || std::fs::OpenOptions::new().create(true).append(true).open(path);
                match (open(), open()) {
                    (Ok(out), Ok(err)) => {
                        cmd.stdout(out).stderr(err);
                    }
                    _ => {
                        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
                    }
                }
            }
            None => {
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            }
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: self.name.clone(),
            program: self.command[0].clone(),
            source,
        })?;
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = child.id();
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// The last lines of the process's log.
    fn log_tail(&self) -> String {
        let Some(path) = &self.log else { return String::new() };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    async fn wait_ready(&self) -> Result<(), ProcessError> {
        let deadline = tokio::time::Instant::now() + self.def.ready_timeout;
        let client = reqwest::Client::new();
        loop {
            let exited = {
                let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
                child.as_mut().and_then(|c| c.try_wait().ok().flatten())
            };
            if let Some(status) = exited {
                return Err(ProcessError::Exited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            let ready = match &self.def.ready_http {
                Some(path) => client
                    .get(format!("http://127.0.0.1:{}{path}", self.port))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                None => tokio::net::TcpStream::connect(self.address()).await.is_ok(),
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    timeout: self.def.ready_timeout,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port it was given (`{{ port }}`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process has exited (it crashed, or a fault killed it); its status.
    pub fn exited(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.as_mut().and_then(|c| c.try_wait().ok().flatten()).map(|s| s.to_string())
    }

    /// Where the process serves.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process group id (the process's pid), while it runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = killpg(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Sends `signal` to the process group (a `kill` fault).
    pub fn kill(&self, signal: Signal) {
        if *self.paused.lock().unwrap_or_else(|p| p.into_inner()) {
            self.signal(Signal::SIGCONT);
        }
        self.signal(signal);
    }

    /// Starts the process again on the same port (after a `kill` with `restart_after`).
    pub async fn restart(&self) -> Result<(), ProcessError> {
        self.reap().await;
        self.spawn()?;
        self.wait_ready().await
    }

    /// Stops the process and starts it again on the same port with `extra_env` in place
    /// of the one it had, waiting until it is ready (the `env` flag provider, between
    /// stages whose flags differ).
    pub async fn restart_with(&self, extra_env: Vec<(String, String)>) -> Result<(), ProcessError> {
        self.stop().await;
        *self.extra_env.lock().unwrap_or_else(|p| p.into_inner()) = extra_env;
        self.spawn()?;
        self.wait_ready().await
    }

    /// Freezes the process group (a `pause` fault).
    pub fn pause(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused process group run again.
    pub fn resume(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if *paused {
            self.signal(Signal::SIGCONT);
            *paused = false;
        }
    }

    /// Whether the process is paused now.
    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for an exited process, so it leaves no zombie.
    async fn reap(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut c) = child {
            let _ = tokio::time::timeout(GRACE, c.wait()).await;
        }
    }

    /// Resumes, asks the group to stop (SIGTERM), and kills it after the grace period.
    pub async fn stop(&self) {
        self.resume();
        self.signal(Signal::SIGTERM);
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut c) = child
            && tokio::time::timeout(GRACE, c.wait()).await.is_err()
        {
            self.signal(Signal::SIGKILL);
            let _ = c.wait().await;
        }
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        // A panic or an early return must not leave the group running or frozen.
        if self.pid().is_some() {
            self.signal(Signal::SIGCONT);
            self.signal(Signal::SIGKILL);
        }
    }
}
