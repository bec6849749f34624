//! `stagegate cleanup`: stops what runs killed outright (SIGKILL, a power cut of the CI
//! runner) left behind, from their `run.json`, and nothing else.
//!
//! A run qualifies when its record is not finished and its stagegate is gone: nothing
//! holds the run's lock file any more (a live stagegate holds it, in whatever pid
//! namespace or container it runs). Then, for that run only:
//!
//! - each recorded process group is stopped if its leader is still the process the run
//!   started (same start time, and the run's marker in its environment); a pid now held
//!   by anything else is left alone and said so;
//! - every process that carries the run's marks (the [`MARKER`] in its environment, or
//!   the run's marker file open: [`runfile::Marks`]) is stopped: this finds a process
//!   spawned just before stagegate died, before its pid was written;
//! - every process recorded as having left the run's groups while the run lived
//!   (`escaped`: a new session, a cleared environment) is stopped if its pid still has
//!   the recorded start time;
//! - every container carrying the run's label ([`LABEL`]) is removed.
//!
//! Not here: the record itself ([`super::runfile`]).

use std::path::Path;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::runfile::{self, LABEL, Marks, RunRecord};

/// What a cleanup did, line by line.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub lines: Vec<String>,
    /// Process groups, processes and containers stopped.
    pub stopped: usize,
}

/// Cleans every run folder under `report_root`.
pub async fn cleanup(report_root: &Path) -> Cleaned {
    let mut out = Cleaned::default();
    let Ok(entries) = std::fs::read_dir(report_root) else {
        out.lines.push(format!("nothing to clean: no folder {}", report_root.display()));
        return out;
    };
    // A run's own folder (`run --out DIR`) is cleaned as it is; links (`latest`) are
    // passed by: the folder they point to is cleaned under its own name.
    let mut folders: Vec<_> = if report_root.join("run.json").exists() {
        vec![report_root.to_path_buf()]
    } else {
        entries.flatten().filter(|e| e.file_type().is_ok_and(|t| !t.is_symlink())).map(|e| e.path()).collect()
    };
    folders.sort();
    for folder in folders {
        let path = folder.join("run.json");
        if !path.exists() {
            continue;
        }
        let record = match runfile::read(&path) {
            Ok(r) => r,
            Err(e) => {
                out.lines.push(format!("{}: left alone: {e}", path.display()));
                continue;
            }
        };
        if record.finished {
            continue;
        }
        let folder_name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if record.run != folder_name {
            out.lines.push(format!(
                "{}: left alone: it names run `{}`, not its own folder `{folder_name}`",
                path.display(),
                record.run
            ));
            continue;
        }
        // A live stagegate holds the run's lock (which works across pid namespaces and
        // containers sharing the folder); older records are judged by pid and start time.
        let owner = record.stagegate_pid as i32;
        let owner_alive = match runfile::is_locked(&folder) {
            Some(locked) => locked,
            None => {
                owner > 0
                    && runfile::is_alive(owner)
                    && record.stagegate_started.is_none_or(|t| runfile::start_time(owner) == Some(t))
            }
        };
        if owner_alive {
            out.lines.push(format!("{}: still running (stagegate pid {owner}); left alone", folder.display()));
            continue;
        }
        clean_run(&folder, &record, &mut out).await;
        let mut done = record.clone();
        done.finished = true;
        done.cleaned_up = true;
        let _ = runfile::write_atomically(&path, &serde_json::to_vec_pretty(&done).unwrap_or_default());
    }
    out.lines.push(format!("cleanup: {} process group(s), process(es) or container(s) stopped", out.stopped));
    out
}

async fn clean_run(folder: &Path, record: &RunRecord, out: &mut Cleaned) {
    let here = folder.display();
    let marks = Marks::of_folder(folder, &record.run);
    // A record can be copied or edited; the processes cannot. One that carries this
    // run's marker under a live stagegate (which adopts everything its run starts)
    // belongs to a run still alive somewhere: nothing of it is touched.
    if let Some((pid, owner)) = marked_processes(&marks).into_iter().find_map(|p| live_owner(p).map(|o| (p, o))) {
        out.lines.push(format!(
            "{here}: left alone: process {pid} of this run still runs under stagegate (pid {owner}): the run is alive"
        ));
        return;
    }
    let mut stopped_groups = Vec::new();
    for p in &record.processes {
        let Some(pgid) = p.pgid.filter(|g| *g > 1) else { continue };
        match (p.started, runfile::start_time(pgid)) {
            (_, None) => {}
            (Some(recorded), Some(now)) if recorded == now && !marks.carried_by(pgid) => {
                out.lines.push(format!(
                    "{here}: left alone: pid {pgid} (recorded for `{}`) does not carry this run's marker",
                    p.name
                ));
            }
            (Some(recorded), Some(now)) if recorded == now => {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                out.lines.push(format!("{here}: stopped `{}` (process group {pgid})", p.name));
                out.stopped += 1;
                stopped_groups.push(pgid);
            }
            (Some(_), Some(_)) => out.lines.push(format!(
                "{here}: left alone: pid {pgid} (recorded for `{}`) is another process now",
                p.name
            )),
            (None, Some(_)) => out.lines.push(format!(
                "{here}: left alone: pid {pgid} (recorded for `{}`) has no start time in the record to prove it is the same process",
                p.name
            )),
        }
    }
    // A member of a group just stopped may not be gone yet: it is not counted again.
    let mut stopped_pids = Vec::new();
    for pid in marked_processes(&marks) {
        if group_of(pid).is_some_and(|g| stopped_groups.contains(&g)) {
            continue;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            out.lines.push(format!("{here}: stopped process {pid} (started by this run)"));
            out.stopped += 1;
            stopped_pids.push(pid);
        }
    }
    // What left its group (and perhaps cleared its environment) while the run lived:
    // the same pid with the same start time is the same process.
    for e in &record.escaped {
        if stopped_pids.contains(&e.pid) || group_of(e.pid).is_some_and(|g| stopped_groups.contains(&g)) {
            continue;
        }
        if e.pid > 1 && runfile::start_time(e.pid) == Some(e.started) && runfile::is_alive(e.pid) {
            let _ = kill(Pid::from_raw(e.pid), Signal::SIGCONT);
            if kill(Pid::from_raw(e.pid), Signal::SIGKILL).is_ok() {
                out.lines.push(format!("{here}: stopped process {} (it had left this run's process groups)", e.pid));
                out.stopped += 1;
            }
        }
    }
    let mut removed = super::container::remove_labelled(&record.run).await;
    // A container whose creation was asked for but never recorded as done may still be
    // on its way: the daemon finishes a create request whose client was killed. Looked
    // for again for a few seconds.
    let pending = |removed: &[(String, String)]| {
        record.containers.iter().any(|c| c.running && c.id.is_none() && !removed.iter().any(|(n, _)| *n == c.container))
    };
    let deadline = tokio::time::Instant::now() + CREATE_IN_FLIGHT;
    while let Ok(so_far) = &mut removed
        && pending(so_far)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if let Ok(more) = super::container::remove_labelled(&record.run).await {
            so_far.extend(more);
        }
    }
    match removed {
        Ok(removed) => {
            for (docker_name, id) in removed {
                let dep =
                    record.containers.iter().find(|c| c.container == docker_name).map_or("?", |c| c.name.as_str());
                out.lines
                    .push(format!("{here}: removed container `{dep}` ({docker_name}, {})", &id[..id.len().min(12)]));
                out.stopped += 1;
            }
        }
        Err(e) if !record.containers.is_empty() => {
            out.lines.push(format!("{here}: could not remove its containers: {e}"));
        }
        Err(_) => {}
    }
}

/// How long `cleanup` looks for a container whose creation a killed run had asked for.
const CREATE_IN_FLIGHT: std::time::Duration = std::time::Duration::from_secs(5);

/// The live stagegate above `pid` in its parent chain, if any: a run's processes stay
/// below their stagegate (it is their subreaper) for as long as it lives.
pub fn live_owner(pid: i32) -> Option<i32> {
    let me = std::process::id() as i32;
    let mut at = pid;
    for _ in 0..64 {
        let parent = parent_of(at)?;
        if parent <= 1 {
            return None;
        }
        if parent != me && is_stagegate(parent) {
            return Some(parent);
        }
        at = parent;
    }
    None
}

/// The process group of `pid`, while it lives.
fn group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(2)?.parse().ok()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Whether process `pid` runs a stagegate binary.
fn is_stagegate(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().starts_with("stagegate")))
        .unwrap_or(false)
}

/// Every live process that carries the run's marks, but this one.
pub fn marked_processes(marks: &Marks) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != me && marks.carried_by(*pid) && runfile::is_alive(*pid))
        .collect()
}

/// The label filter that selects one run's containers.
pub fn label_filter(run: &str) -> String {
    format!("{LABEL}={run}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pid_that_now_belongs_to_another_process_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("r-1");
        std::fs::create_dir_all(&folder).unwrap();
        // An unrelated process in a group of its own, recorded under a wrong start time.
        let mut bystander = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut bystander, 0);
        let mut bystander = bystander.arg("30").spawn().unwrap();
        let pid = bystander.id() as i32;
        let record = RunRecord {
            run: "r-1".into(),
            stagegate_pid: 999_999_999,
            processes: vec![runfile::ProcessEntry {
                name: "store".into(),
                pgid: Some(pid),
                started: runfile::start_time(pid).map(|t| t + 1),
                running: true,
            }],
            ..Default::default()
        };
        runfile::write_atomically(&folder.join("run.json"), &serde_json::to_vec(&record).unwrap()).unwrap();
        let cleaned = cleanup(root.path()).await;
        assert_eq!(cleaned.stopped, 0, "{:?}", cleaned.lines);
        assert!(cleaned.lines.iter().any(|l| l.contains("is another process now")), "{:?}", cleaned.lines);
        assert!(runfile::is_alive(pid), "cleanup killed a process it did not start");
        assert!(runfile::read(&folder.join("run.json")).unwrap().finished);
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    /// Regression: a live run in another pid namespace (or container) records a pid that
    /// means something else here; its lock says it is alive.
    #[tokio::test]
    async fn a_run_whose_lock_is_held_is_left_alone_whatever_its_pid() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("r-2");
        std::fs::create_dir_all(&folder).unwrap();
        let record = RunRecord { run: "r-2".into(), stagegate_pid: 1, ..Default::default() };
        runfile::write_atomically(&folder.join("run.json"), &serde_json::to_vec(&record).unwrap()).unwrap();
        let lock = std::fs::File::create(folder.join(runfile::LOCK)).unwrap();
        lock.try_lock().unwrap();
        let cleaned = cleanup(root.path()).await;
        assert!(cleaned.lines.iter().any(|l| l.contains("still running")), "{:?}", cleaned.lines);
        assert!(!runfile::read(&folder.join("run.json")).unwrap().finished);
        drop(lock);
        let cleaned = cleanup(root.path()).await;
        assert!(!cleaned.lines.iter().any(|l| l.contains("still running")), "{:?}", cleaned.lines);
    }
}
