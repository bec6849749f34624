//! `run.json`: what a run started, written down before it starts, so that
//! `stagegate cleanup` can stop exactly that after stagegate itself was killed outright.
//!
//! [`RunRecord`] is the file's typed content, shared by the runner (through the
//! [`RunFile`] handle, which rewrites the file atomically at every change) and by
//! [`super::cleanup`]. Each process entry is written *before* its process is spawned and
//! completed with its pid and the start time the kernel gives it (`/proc/PID/stat`), so a
//! pid that was reused by an unrelated process is never mistaken for ours. Each container
//! entry carries the container's name and the run's label, set on it at creation. Every
//! process stagegate starts also carries the run's id in its environment
//! ([`MARKER`]), which finds what was spawned between two writes of the file.
//!
//! Not here: stopping anything (the teardown guard and `cleanup` do that).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The environment variable every process stagegate starts carries: the run's id.
pub const MARKER: &str = "STAGEGATE_RUN";

/// The Docker label every container stagegate starts carries: the run's id.
pub const LABEL: &str = "stagegate.run";

/// The content of `run.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id: the name of its report folder.
    pub run: String,
    /// The stagegate process that owns the run.
    pub stagegate_pid: u32,
    /// Its start time (clock ticks after boot, from `/proc`), to tell it from a reused pid.
    #[serde(default)]
    pub stagegate_started: Option<u64>,
    /// Set once everything the run started has been stopped.
    pub finished: bool,
    /// Set by `stagegate cleanup` when it stopped what the run left.
    #[serde(default)]
    pub cleaned_up: bool,
    #[serde(default)]
    pub processes: Vec<ProcessEntry>,
    #[serde(default)]
    pub containers: Vec<ContainerEntry>,
}

/// A process the run starts (a dependency's server, the target, an `on_verdict` command).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// The dependency's name, `target`, or `on_verdict`.
    pub name: String,
    /// Its process group (its pid: each runs in a group of its own); `None` before spawn.
    #[serde(default)]
    pub pgid: Option<i32>,
    /// The group leader's start time (clock ticks after boot, from `/proc/PID/stat`).
    #[serde(default)]
    pub started: Option<u64>,
    /// Whether it may be running now.
    #[serde(default)]
    pub running: bool,
}

/// A container the run starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerEntry {
    /// The dependency's name.
    pub name: String,
    /// The container's name in Docker (known before it is created).
    pub container: String,
    /// Its id, once created.
    #[serde(default)]
    pub id: Option<String>,
    /// Whether it may exist now.
    #[serde(default)]
    pub running: bool,
}

/// The live `run.json` of one run: every change is written at once, atomically.
#[derive(Debug)]
pub struct RunFile {
    path: Option<PathBuf>,
    record: Mutex<RunRecord>,
}

impl RunFile {
    /// Creates `run.json` in `dir` for run `run`; fails when it cannot be written (then
    /// nothing may start: `cleanup` could not find it).
    pub fn create(dir: &Path, run: &str) -> std::io::Result<Arc<RunFile>> {
        std::fs::create_dir_all(dir)?;
        let pid = std::process::id();
        let record = RunRecord {
            run: run.to_string(),
            stagegate_pid: pid,
            stagegate_started: start_time(pid as i32),
            ..Default::default()
        };
        let file = RunFile { path: Some(dir.join("run.json")), record: Mutex::new(record) };
        file.write(&file.lock())?;
        Ok(Arc::new(file))
    }

    /// A record kept in memory only (runs without a report folder, unit tests).
    pub fn detached(run: &str) -> Arc<RunFile> {
        Arc::new(RunFile { path: None, record: Mutex::new(RunRecord { run: run.to_string(), ..Default::default() }) })
    }

    /// The run's id.
    pub fn run_id(&self) -> String {
        self.lock().run.clone()
    }

    /// A copy of the record as it stands.
    pub fn record(&self) -> RunRecord {
        self.lock().clone()
    }

    /// Notes that process `name` is about to be spawned (a restart keeps the entry).
    pub fn process_starting(&self, name: &str) {
        self.update(|r| {
            if let Some(p) = r.processes.iter_mut().find(|p| p.name == name) {
                p.running = true;
            } else {
                r.processes.push(ProcessEntry { name: name.to_string(), running: true, ..Default::default() });
            }
        });
    }

    /// Notes the pid (and group) process `name` got.
    pub fn process_started(&self, name: &str, pid: u32) {
        let started = start_time(pid as i32);
        self.update(|r| {
            if let Some(p) = r.processes.iter_mut().find(|p| p.name == name) {
                p.pgid = Some(pid as i32);
                p.started = started;
                p.running = true;
            }
        });
    }

    /// Notes that process `name` and its group are gone.
    pub fn process_stopped(&self, name: &str) {
        self.update(|r| {
            if let Some(p) = r.processes.iter_mut().find(|p| p.name == name) {
                p.running = false;
            }
        });
    }

    /// Notes that a container named `container` is about to be created for `name`.
    pub fn container_starting(&self, name: &str, container: &str) {
        self.update(|r| {
            r.containers.retain(|c| c.name != name);
            r.containers.push(ContainerEntry {
                name: name.to_string(),
                container: container.to_string(),
                id: None,
                running: true,
            });
        });
    }

    /// Notes the id the container of `name` got.
    pub fn container_started(&self, name: &str, id: &str) {
        self.update(|r| {
            if let Some(c) = r.containers.iter_mut().find(|c| c.name == name) {
                c.id = Some(id.to_string());
            }
        });
    }

    /// Notes that the container of `name` was removed.
    pub fn container_removed(&self, name: &str) {
        self.update(|r| {
            if let Some(c) = r.containers.iter_mut().find(|c| c.name == name) {
                c.running = false;
            }
        });
    }

    /// Marks the run finished: everything it started is stopped.
    pub fn finish(&self) {
        self.update(|r| r.finished = true);
    }

    fn update(&self, change: impl FnOnce(&mut RunRecord)) {
        let mut record = self.lock();
        change(&mut record);
        if let Err(e) = self.write(&record) {
            tracing::warn!(error = %e, "cannot update run.json; `stagegate cleanup` may not find what this run started");
        }
    }

    fn write(&self, record: &RunRecord) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        write_atomically(path, &serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader (or a
/// crash) never sees half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads a `run.json` (at most 1 MiB of it).
pub fn read(path: &Path) -> Result<RunRecord, String> {
    let text = crate::limits::read_bounded(path, crate::limits::RUN_RECORD_BYTES).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not a run record: {e}"))
}

/// The start time of process `pid` (clock ticks after boot, field 22 of
/// `/proc/PID/stat`); `None` when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).is_some_and(|state| state != "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_written_before_and_after_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = RunFile::create(dir.path(), "r1").unwrap();
        file.process_starting("store");
        let on_disk = read(&dir.path().join("run.json")).unwrap();
        assert_eq!(on_disk.processes[0].pgid, None, "recorded before it has a pid");
        assert!(on_disk.processes[0].running);
        file.process_started("store", std::process::id());
        let on_disk = read(&dir.path().join("run.json")).unwrap();
        assert_eq!(on_disk.processes[0].pgid, Some(std::process::id() as i32));
        assert_eq!(on_disk.processes[0].started, start_time(std::process::id() as i32));
        file.container_starting("db", "stagegate-r1-db");
        file.container_started("db", "abc");
        file.process_stopped("store");
        file.finish();
        let on_disk = read(&dir.path().join("run.json")).unwrap();
        assert!(on_disk.finished && !on_disk.processes[0].running);
        assert_eq!(on_disk.containers[0].id.as_deref(), Some("abc"));
        assert_eq!(on_disk.stagegate_started, start_time(std::process::id() as i32));
    }

    #[test]
    fn start_times_tell_processes_apart() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert!(is_alive(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(start_time(pid), None, "a reaped process has no start time");
        assert!(!is_alive(pid));
    }
}
