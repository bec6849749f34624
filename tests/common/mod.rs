//! Helpers shared by the integration tests: running the real `stagegate` binary,
//! watching its stderr, signalling it, and finding what a run left behind.

#![allow(dead_code)]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `--set` value that lets a run judge its system under test however late stagegate
/// falls behind: for tests of the example scenarios (which keep the default limits) that
/// assert what the system under test does while the whole suite shares the machine.
/// stagegate's lateness guard itself is tested in `tests/health.rs`.
pub const RELAXED_HEALTH: &str =
    "health={send_lag_p99: 1m, timer_lag_p99: 1m, proxy_hold_overrun_p99: 1m, dropped: 1000000}";

/// Fails the test at once, in one line, when what it needs is missing: `what` names
/// the program, `how` how to get it. Never skips: a missing server is a failed check.
fn missing(what: &str, how: &str) -> ! {
    panic!("this test needs {what}, which is missing: run `scripts/test` (it installs it) or {how}");
}

/// Requires a program on PATH (`redis-server`, `docker`, ...).
pub fn require_program(program: &str, how: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if !found {
        missing(program, how);
    }
}

/// Requires PostgreSQL's server programs (Debian's `postgresql` package).
pub fn require_postgres() {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .is_ok_and(|versions| versions.flatten().any(|v| v.path().join("bin/postgres").is_file()));
    if !found {
        missing("PostgreSQL's server (/usr/lib/postgresql/*/bin/postgres)", "`apt-get install postgresql`");
    }
}

/// Requires Python modules importable by the `python3` on PATH.
pub fn require_python(modules: &[&str], packages: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing(&format!("the Python modules {}", modules.join(", ")), &format!("`pip install {packages}`"));
    }
}

/// Requires a Docker engine that answers.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing("a Docker engine that answers `docker info`", "start the Docker engine");
    }
}

/// The built binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stagegate"))
}

/// The repository root (where `scenarios/` lives).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `stagegate ARGS` from the repository root and waits for it.
pub fn stagegate(args: &[&str]) -> Output {
    Command::new(bin()).args(args).current_dir(root()).output().expect("the binary runs")
}

/// The run folders a `--report-dir` holds (not the `latest` link), sorted.
pub fn run_folders(dir: &Path) -> Vec<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect())
        .unwrap_or_default();
    runs.sort();
    runs
}

/// The one run folder a `--report-dir` holds, and its parsed `report.json`.
pub fn only_report(dir: &Path) -> serde_json::Value {
    // `latest` links the newest run; the runs are the folders.
    let runs: Vec<_> = std::fs::read_dir(dir)
        .expect("report dir exists")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .collect();
    assert_eq!(runs.len(), 1, "expected one run folder in {}", dir.display());
    let text = std::fs::read_to_string(runs[0].path().join("report.json")).expect("report.json written");
    let doc = serde_json::from_str(&text).expect("report.json is JSON");
    assert_matches_report_schema(&doc);
    doc
}

/// Holds `doc` (a report.json) to `stagegate schema report`, made strict: every field
/// written must be one the schema describes, of the type it gives.
#[allow(dead_code)]
pub fn assert_matches_report_schema(doc: &serde_json::Value) {
    fn strict(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), false.into());
                }
                map.values_mut().for_each(strict);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strict),
            _ => {}
        }
    }
    let out = stagegate(&["schema", "report"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the report schema is JSON");
    strict(&mut schema);
    let validator = jsonschema::validator_for(&schema).expect("the report schema is a valid JSON Schema");
    let errors: Vec<String> =
        validator.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).take(20).collect();
    assert!(errors.is_empty(), "report.json does not match `stagegate schema report`:\n{}", errors.join("\n"));
}

/// Stdout and stderr as text, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A running `stagegate` whose stderr is read line by line as it comes.
pub struct Running {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `stagegate ARGS` from the repository root with `envs` added.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(bin())
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines, seen: Vec::new() }
    }

    /// Waits (up to `limit`) for a stderr line containing `marker`; returns it.
    pub fn wait_for(&mut self, marker: &str, limit: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("`{marker}` never came on stderr; seen:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the exit (killing it after `limit`); returns the exit code, stdout, the
    /// whole stderr, and how long the wait took.
    pub fn finish(mut self, limit: std::time::Duration) -> (Option<i32>, String, String, std::time::Duration) {
        let started = std::time::Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let took = started.elapsed();
        let out = self.child.wait_with_output().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.seen.extend(self.lines.try_iter());
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), self.seen.join("\n"), took)
    }
}

/// The run ids (`run.json`'s `run`) of every run folder under `dir`.
pub fn run_ids(dir: &Path) -> Vec<String> {
    run_folders(dir)
        .into_iter()
        .filter_map(|f| std::fs::read_to_string(f.join("run.json")).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter_map(|v| v["run"].as_str().map(String::from))
        .collect()
}

/// Live processes carrying run `run`'s marker in their environment.
pub fn processes_of_run(run: &str) -> Vec<i32> {
    let needle = format!("STAGEGATE_RUN={run}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let marked = std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z");
        if marked && !zombie {
            out.push(pid);
        }
    }
    out
}

/// Containers (any state) labelled with run `run`.
pub fn containers_of_run(run: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=stagegate.run={run}")])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

/// Live processes working in `dir` or below (found whatever they did to their
/// environment).
pub fn processes_working_in(dir: &Path) -> Vec<i32> {
    let Ok(dir) = dir.canonicalize() else { return Vec::new() };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let inside = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z");
        if inside && !zombie {
            out.push(pid);
        }
    }
    out
}

/// What every run under `dir` left behind: processes and containers still there, and
/// any process working in `dir`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut left: Vec<String> =
        processes_working_in(dir).into_iter().map(|p| format!("process {p} working in {}", dir.display())).collect();
    for run in run_ids(dir) {
        left.extend(processes_of_run(&run).into_iter().map(|p| format!("process {p} of {run}")));
        left.extend(containers_of_run(&run).into_iter().map(|c| format!("container {c} of {run}")));
    }
    left
}

/// Samples the peak resident memory (VmHWM, in KiB) of process `pid` until it exits.
pub fn peak_rss_kib(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        peak
    })
}

/// The image the container tests use, built here from Debian's redis-server (nothing is
/// pulled).
pub const TEST_IMAGE: &str = "stagegate-test/redis:local";

/// Builds [`TEST_IMAGE`] (quick when it is there already).
pub fn build_test_image() {
    let out = Command::new("bash").arg("tests/images/redis.sh").arg(TEST_IMAGE).current_dir(root()).output().unwrap();
    assert!(out.status.success(), "building {TEST_IMAGE}: {:?}", text(&out));
}

/// Each flag's value for each key, as the flagd provider reads `file`.
pub fn read_with_flagd(file: &std::path::Path, wanted: &serde_json::Value, keys: &[&str]) -> serde_json::Value {
    require_python(&["openfeature.contrib.provider.flagd"], "openfeature-provider-flagd (scripts/test installs it)");
    let out = std::process::Command::new("python3")
        .arg(root().join("tests/flagd_client.py"))
        .arg(file)
        .arg(wanted.to_string())
        .args(keys)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
