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
//! ([`MARKER`]), which finds what was spawned between two writes of the file, and holds
//! the run's empty [`MARKER_FILE`] open as its standard input: a server that rewrites
//! its environment for its process title (Redis does) still carries that.
//!
//! Not here: stopping anything (the teardown guard and `cleanup` do that).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The environment variable every process stagegate starts carries: the run's id.
pub const MARKER: &str = "STAGEGATE_RUN";

/// The empty file next to `run.json` that every process the run starts holds open as its
/// standard input (it reads as at end of file at once, as `/dev/null` does).
pub const MARKER_FILE: &str = "run.marker";

/// How a process is known to belong to one run: the marker in its environment, or the
/// run's [`MARKER_FILE`] among its open files (found by device and inode, so a forger
/// cannot point at it by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    run: String,
    file: Option<(u64, u64)>,
}

impl Marks {
    /// The marks of run `run` whose folder is `dir` (the file one only if it is there).
    pub fn of_folder(dir: &Path, run: &str) -> Marks {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::symlink_metadata(dir.join(MARKER_FILE))
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|m| (m.dev(), m.ino()));
        Marks { run: run.to_string(), file }
    }

    /// The run's id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// Whether process `pid` carries either mark.
    pub fn carried_by(&self, pid: i32) -> bool {
        carries_marker(pid, &self.run) || self.file.is_some_and(|id| holds_file(pid, id))
    }
}

/// Whether process `pid` has the file `(device, inode)` open.
fn holds_file(pid: i32, (dev, ino): (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().take(100_000).any(|fd| {
        // Only links that name a marker file are looked at closer (a stat follows the
        // link to the open file itself, renamed or deleted).
        std::fs::read_link(fd.path()).is_ok_and(|to| to.to_string_lossy().contains(MARKER_FILE))
            && std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    })
}

/// The Docker label every container stagegate starts carries: the run's id.
pub const LABEL: &str = "stagegate.run";

/// The Docker label naming the stagegate that started a container: `PID:START_TIME`
/// (`cleanup` leaves a container alone while that process lives).
pub const OWNER_LABEL: &str = "stagegate.owner";

/// This process as [`OWNER_LABEL`] names it.
pub fn owner_label() -> String {
    let pid = std::process::id() as i32;
    format!("{pid}:{}", start_time(pid).unwrap_or(0))
}

/// Whether the process an [`OWNER_LABEL`] value names is still alive.
pub fn owner_alive(label: &str) -> bool {
    let Some((pid, started)) = label.split_once(':') else { return false };
    let (Ok(pid), Ok(started)) = (pid.parse::<i32>(), started.parse::<u64>()) else { return false };
    pid > 1 && start_time(pid) == Some(started)
}

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
    /// Processes below stagegate found outside every recorded group (a daemon that
    /// started a session of its own, perhaps with a cleared environment), seen while
    /// the run lived: neither the group nor the marker finds them after a SIGKILL.
    #[serde(default)]
    pub escaped: Vec<EscapedEntry>,
}

/// A process of the run that left its group, by pid and start time (together they
/// name one process for as long as the machine runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscapedEntry {
    pub pid: i32,
    pub started: u64,
}

/// The most escaped processes a record keeps.
const MAX_ESCAPED: usize = 1024;

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
    /// [`MARKER_FILE`], when the run has a folder.
    marker: Option<PathBuf>,
    record: Mutex<RunRecord>,
    /// `run.lock`, held locked for as long as this stagegate lives: `cleanup` tells a
    /// live run from a dead one by it, whatever pid namespace either runs in.
    _lock: Option<std::fs::File>,
}

/// The lock file next to `run.json`.
pub const LOCK: &str = "run.lock";

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
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK))?;
        lock.try_lock().map_err(|e| std::io::Error::other(format!("{LOCK} is locked by another run: {e}")))?;
        // Created afresh (a stale one is replaced, never followed), read-only and empty.
        let marker = dir.join(MARKER_FILE);
        let _ = std::fs::remove_file(&marker);
        std::fs::OpenOptions::new().create_new(true).write(true).open(&marker)?;
        let file = RunFile {
            path: Some(dir.join("run.json")),
            marker: Some(marker),
            record: Mutex::new(record),
            _lock: Some(lock),
        };
        file.write(&file.lock())?;
        Ok(Arc::new(file))
    }

    /// A record kept in memory only (runs without a report folder, unit tests).
    pub fn detached(run: &str) -> Arc<RunFile> {
        Arc::new(RunFile {
            path: None,
            marker: None,
            record: Mutex::new(RunRecord { run: run.to_string(), ..Default::default() }),
            _lock: None,
        })
    }

    /// The run's id.
    pub fn run_id(&self) -> String {
        self.lock().run.clone()
    }

    /// How this run's processes are known ([`Marks`]).
    pub fn marks(&self) -> Marks {
        match self.marker.as_deref().and_then(Path::parent) {
            Some(dir) => Marks::of_folder(dir, &self.run_id()),
            None => Marks { run: self.run_id(), file: None },
        }
    }

    /// The standard input for a process the run starts: the run's [`MARKER_FILE`]
    /// (empty, so it reads as `/dev/null` does), or `/dev/null` without a folder.
    pub fn stdin(&self) -> std::process::Stdio {
        self.marker
            .as_deref()
            .and_then(|m| std::fs::File::open(m).ok())
            .map_or_else(std::process::Stdio::null, std::process::Stdio::from)
    }

    /// A copy of the record as it stands.
    pub fn record(&self) -> RunRecord {
        self.lock().clone()
    }

    /// Notes that process `name` is about to be spawned (a restart keeps the entry). An
    /// error means it must not be spawned: `cleanup` could not find it by its record.
    pub fn process_starting(&self, name: &str) -> std::io::Result<()> {
        self.try_update(|r| {
            if let Some(p) = r.processes.iter_mut().find(|p| p.name == name) {
                p.running = true;
            } else {
                r.processes.push(ProcessEntry { name: name.to_string(), running: true, ..Default::default() });
            }
        })
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

    /// Notes that a container named `container` is about to be created for `name`. An
    /// error means it must not be created.
    pub fn container_starting(&self, name: &str, container: &str) -> std::io::Result<()> {
        self.try_update(|r| {
            r.containers.retain(|c| c.name != name);
            r.containers.push(ContainerEntry {
                name: name.to_string(),
                container: container.to_string(),
                id: None,
                running: true,
            });
        })
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

    /// Marks the run finished: everything it started is stopped. The lock file goes
    /// too: `cleanup` passes a finished record by.
    pub fn finish(&self) {
        self.update(|r| r.finished = true);
        if let Some(path) = &self.path
            && let Some(dir) = path.parent()
        {
            let _ = std::fs::remove_file(dir.join(LOCK));
        }
    }

    /// Records the processes below this stagegate that are in none of the run's
    /// groups (still alive ones kept, new ones added); written only on a change.
    pub fn note_escaped(&self) {
        let groups: Vec<i32> = self.lock().processes.iter().filter_map(|p| p.pgid).collect();
        let marks = self.marks();
        // A process the run has just spawned is not in the record yet (its group is
        // written right after the spawn), but it carries the run's marker, which
        // `cleanup` follows anyway: only what has neither is an escape.
        let found: Vec<EscapedEntry> = escaped_descendants(std::process::id() as i32, &groups)
            .into_iter()
            .filter(|e| !marks.carried_by(e.pid))
            .collect();
        let mut record = self.lock();
        let mut list: Vec<EscapedEntry> =
            record.escaped.iter().copied().filter(|e| start_time(e.pid) == Some(e.started)).collect();
        for e in found {
            if !list.contains(&e) && list.len() < MAX_ESCAPED {
                list.push(e);
            }
        }
        if list != record.escaped {
            record.escaped = list;
            if let Err(e) = self.write(&record) {
                tracing::warn!(error = %e, "cannot update run.json; `stagegate cleanup` may not find what this run started");
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut RunRecord)) {
        if let Err(e) = self.try_update(change) {
            tracing::warn!(error = %e, "cannot update run.json; `stagegate cleanup` may not find what this run started");
        }
    }

    fn try_update(&self, change: impl FnOnce(&mut RunRecord)) -> std::io::Result<()> {
        let mut record = self.lock();
        change(&mut record);
        self.write(&record)
    }

    fn write(&self, record: &RunRecord) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        write_atomically(path, &serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes `bytes` to `path` through a new temporary file and a rename, so a reader (or
/// a crash) never sees half of it. The temporary file is created afresh (never opened
/// if something, a link say, is already at its name), so nothing else is written through.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_data()));
    match written.and_then(|_| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Whether the run whose folder is `dir` is still alive: its stagegate holds `run.lock`.
/// `None` when there is no lock file (a record from before locks).
pub fn is_locked(dir: &Path) -> Option<bool> {
    let file = std::fs::OpenOptions::new().write(true).open(dir.join(LOCK)).ok()?;
    match file.try_lock() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Whether process `pid` carries run `run`'s marker in its environment.
fn carries_marker(pid: i32, run: &str) -> bool {
    let needle = format!("{MARKER}={run}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
}

/// Reads a `run.json` (at most 1 MiB of it).
pub fn read(path: &Path) -> Result<RunRecord, String> {
    // stagegate writes run records as plain files: anything else (a pipe, a device) is
    // not one, and reading it could wait forever.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => return Err("not a run record: not a plain file".into()),
        _ => {}
    }
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

/// The live processes below `root` (in its parent chain) whose group is none of
/// `groups`, with their start times.
pub fn escaped_descendants(root: i32, groups: &[i32]) -> Vec<EscapedEntry> {
    struct Proc {
        pid: i32,
        parent: i32,
        group: i32,
        started: u64,
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let procs: Vec<Proc> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            if rest.first() == Some(&"Z") {
                return None;
            }
            Some(Proc {
                pid,
                parent: rest.get(1)?.parse().ok()?,
                group: rest.get(2)?.parse().ok()?,
                started: rest.get(19)?.parse().ok()?,
            })
        })
        .collect();
    let mut below = vec![root];
    let mut out = Vec::new();
    let mut i = 0;
    while i < below.len() && below.len() < 100_000 {
        let parent = below[i];
        for p in procs.iter().filter(|p| p.parent == parent) {
            below.push(p.pid);
            if !groups.contains(&p.group) {
                out.push(EscapedEntry { pid: p.pid, started: p.started });
            }
        }
        i += 1;
    }
    out
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
        file.process_starting("store").unwrap();
        let on_disk = read(&dir.path().join("run.json")).unwrap();
        assert_eq!(on_disk.processes[0].pgid, None, "recorded before it has a pid");
        assert!(on_disk.processes[0].running);
        file.process_started("store", std::process::id());
        let on_disk = read(&dir.path().join("run.json")).unwrap();
        assert_eq!(on_disk.processes[0].pgid, Some(std::process::id() as i32));
        assert_eq!(on_disk.processes[0].started, start_time(std::process::id() as i32));
        file.container_starting("db", "stagegate-r1-db").unwrap();
        file.container_started("db", "abc");
        file.process_stopped("store");
        file.finish();
        let on_disk = read(&dir.path().join("run.json")).unwrap();
        assert!(on_disk.finished && !on_disk.processes[0].running);
        assert_eq!(on_disk.containers[0].id.as_deref(), Some("abc"));
        assert_eq!(on_disk.stagegate_started, start_time(std::process::id() as i32));
    }

    /// Regression: Redis rewrites its environment for its process title, so a run's
    /// Redis killed with stagegate lost its marker and `cleanup` left it running.
    #[test]
    fn a_process_that_wiped_its_environment_still_carries_the_run_marker_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = RunFile::create(dir.path(), "r1").unwrap();
        let mut wiped = std::process::Command::new("sleep").arg("30").env_clear().stdin(file.stdin()).spawn().unwrap();
        // Another run's marker file, even under the same name, is not this run's.
        let other = tempfile::tempdir().unwrap();
        let other_file = RunFile::create(other.path(), "r1").unwrap();
        let mut bystander =
            std::process::Command::new("sleep").arg("30").env_clear().stdin(other_file.stdin()).spawn().unwrap();
        let mut plain = std::process::Command::new("sleep").arg("30").env_clear().spawn().unwrap();
        let marks = file.marks();
        assert!(marks.carried_by(wiped.id() as i32), "the run's own process, environment wiped");
        assert!(!marks.carried_by(bystander.id() as i32), "another run's process");
        assert!(!marks.carried_by(plain.id() as i32), "an unrelated process");
        assert_eq!(Marks::of_folder(dir.path(), "r1"), marks, "cleanup finds the same marks from the folder");
        for child in [&mut wiped, &mut bystander, &mut plain] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
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

    /// Regression: `cleanup` wrote run.json through a fixed temporary name that someone
    /// could have made a link to another file.
    #[test]
    fn writing_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious.txt");
        std::fs::write(&precious, "keep me").unwrap();
        let run = dir.path().join("run.json");
        std::os::unix::fs::symlink(&precious, &run).unwrap();
        std::os::unix::fs::symlink(&precious, dir.path().join("run.json.tmp")).unwrap();
        write_atomically(&run, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
        assert!(!std::fs::symlink_metadata(&run).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_live_run_holds_its_lock_and_a_dead_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = RunFile::create(dir.path(), "r1").unwrap();
        assert_eq!(is_locked(dir.path()), Some(true));
        drop(file);
        assert_eq!(is_locked(dir.path()), Some(false));
        assert_eq!(is_locked(&dir.path().join("nowhere")), None);
    }
}
