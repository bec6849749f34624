//! The command line: clap definitions (per-run settings only; the experiment itself
//! lives in the scenario file) and the commands they dispatch to.
//!
//! Each command returns an exit code from [`crate::exit`]; only `main` exits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::data::{Generator, Schema};
use crate::exit;
use crate::report::json::JsonReporter;
use crate::report::terminal::TerminalReporter;
use crate::report::{Event, Reporter};
use crate::scenario::{self, Diagnostics};

/// Rehearse a release stage under chaos and gate on the verdict.
#[derive(Debug, Parser)]
#[command(name = "stagegate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Per-run settings shared by the commands that read a scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Override a scenario key for this run, e.g. `--set workload.arrival.rate=50/s`
    /// or `--set stages[2].faults[0].delay=300ms` (repeatable; checked like the file).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Treat warnings (an expired flag, say) as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario and print the verdict.
    ///
    /// Exit codes: 0 PROMOTE, 1 ROLLBACK, 2 invalid scenario or arguments (nothing run),
    /// 3 INCONCLUSIVE, 4 the run itself broke, 130 interrupted (faults lifted, partial
    /// report written).
    Run {
        /// The scenario file.
        file: PathBuf,
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// Folder that receives one sub-folder per run.
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
        /// No per-second progress lines and no fault start/lift lines (stage results,
        /// warnings and the summary still print).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Check scenario files without running anything (exit 0 valid, 2 invalid).
    Validate {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Print the rollout plan as Markdown: stages, flag states, fault timelines,
    /// expected load, the criteria of each stage and what each verdict triggers.
    Plan {
        /// The scenario file.
        file: PathBuf,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Print the JSON Schema of the scenario format (for editors).
    Schema,
    /// Run standalone fault proxies for a game day, driven over a Toxiproxy-compatible
    /// HTTP API (`/proxies`, `/proxies/{name}/toxics`, `/reset`, `/populate`, `/version`).
    /// Ctrl-C or SIGTERM removes every fault and closes every proxy.
    Proxy {
        /// Address of the control API.
        #[arg(long, default_value = "127.0.0.1:8474")]
        listen: String,
        /// Proxies to create at start, in Toxiproxy's config format: a JSON list of
        /// `{ "name", "listen", "upstream" }`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serve the builtin store as a process of its own (a `process` dependency that
    /// `kill` and `pause` faults can act on). Stops on SIGTERM or Ctrl-C.
    KvStore {
        /// The loopback port to serve on.
        #[arg(long)]
        port: u16,
    },
    /// Stop what killed runs left behind: reads each `run.json` under the report folder
    /// whose stagegate process is gone, and kills the processes it started.
    Cleanup {
        /// The folder holding the runs' report folders.
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
    },
    /// Print synthetic records from a schema as JSON lines.
    Data {
        /// The record schema (`synthetic-data/*.yaml`).
        schema: PathBuf,
        /// How many records (default 10).
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// The seed: same seed, same records (default 0).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// Runs the parsed command; returns the process exit code.
pub fn execute(cli: Cli) -> i32 {
    match cli.command {
        Command::Run { file, scenario, report_dir, quiet } => run(&file, &scenario, &report_dir, quiet),
        Command::Validate { files, scenario } => validate(&files, &scenario),
        Command::Plan { file, scenario } => plan(&file, &scenario),
        Command::Schema => {
            let text = serde_json::to_string_pretty(&scenario::schema::json_schema()).unwrap_or_default();
            println!("{text}");
            exit::PROMOTE
        }
        Command::Data { schema, count, seed } => data(&schema, count, seed),
        Command::Proxy { listen, config } => proxy(&listen, config.as_deref()),
        Command::KvStore { port } => kv_store(port),
        Command::Cleanup { report_dir } => cleanup(&report_dir),
    }
}

fn kv_store(port: u16) -> i32 {
    let Some(runtime) = runtime() else { return exit::RUN_BROKEN };
    runtime.block_on(async {
        let store = match crate::sut::store::KvStore::start_at(([127, 0, 0, 1], port).into()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: the store cannot listen on port {port}: {e}");
                return exit::RUN_BROKEN;
            }
        };
        let cancel = CancellationToken::new();
        tokio::spawn(watch_signals(cancel.clone()));
        cancel.cancelled().await;
        store.stop().await;
        exit::PROMOTE
    })
}

fn cleanup(report_root: &Path) -> i32 {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let Ok(entries) = std::fs::read_dir(report_root) else {
        println!("nothing to clean: no folder {}", report_root.display());
        return exit::PROMOTE;
    };
    let mut stopped = 0;
    for entry in entries.flatten() {
        let path = entry.path().join("run.json");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(run) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if run["finished"] == true {
            continue;
        }
        let owner = run["stagegate_pid"].as_i64().unwrap_or(0) as i32;
        if owner > 0 && kill(Pid::from_raw(owner), None).is_ok() {
            println!("{}: still running (stagegate pid {owner}); left alone", entry.path().display());
            continue;
        }
        for p in run["processes"].as_array().into_iter().flatten() {
            let pgid = p["pgid"].as_i64().unwrap_or(0) as i32;
            if pgid > 0 && killpg(Pid::from_raw(pgid), None).is_ok() {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                println!(
                    "{}: stopped `{}` (process group {pgid})",
                    entry.path().display(),
                    p["name"].as_str().unwrap_or("?")
                );
                stopped += 1;
            }
        }
        for c in run["containers"].as_array().into_iter().flatten() {
            let id = c["id"].as_str().unwrap_or_default();
            if !id.is_empty() && runtime().is_some_and(|rt| rt.block_on(crate::deps::container::remove(id))) {
                println!(
                    "{}: removed container `{}` ({})",
                    entry.path().display(),
                    c["name"].as_str().unwrap_or("?"),
                    &id[..id.len().min(12)]
                );
                stopped += 1;
            }
        }
        let mut done = run.clone();
        done["finished"] = serde_json::Value::Bool(true);
        done["cleaned_up"] = serde_json::Value::Bool(true);
        let _ = std::fs::write(&path, done.to_string());
    }
    println!("cleanup: {stopped} process group(s) or container(s) stopped");
    exit::PROMOTE
}

fn proxy(listen: &str, config: Option<&Path>) -> i32 {
    use crate::fault::api::{ProxySpec, Registry, router};
    let specs: Vec<ProxySpec> = match config {
        None => Vec::new(),
        Some(path) => match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| {
            serde_json::from_str(&t).map_err(|e| format!("line {}, column {}: {e}", e.line(), e.column()))
        }) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return exit::INVALID_INPUT;
            }
        },
    };
    let Some(runtime) = runtime() else { return exit::RUN_BROKEN };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: the control API cannot listen on {listen}: {e}");
                return exit::RUN_BROKEN;
            }
        };
        let registry = Registry::default();
        for spec in specs {
            let name = spec.name.clone();
            if registry.create(spec).await.is_err() {
                eprintln!("error: proxy `{name}` from the config could not start");
                registry.stop().await;
                return exit::RUN_BROKEN;
            }
        }
        let cancel = CancellationToken::new();
        tokio::spawn(watch_signals(cancel.clone()));
        eprintln!(
            "stagegate proxy: control API on http://{}",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let shutdown = cancel.clone().cancelled_owned();
        let served = axum::serve(listener, router(registry.clone())).with_graceful_shutdown(shutdown).await;
        registry.stop().await;
        match served {
            Ok(()) => exit::PROMOTE,
            Err(e) => {
                eprintln!("error: the control API failed: {e}");
                exit::RUN_BROKEN
            }
        }
    })
}

/// Loads a scenario with the command line's settings; prints what is wrong if it fails.
fn load(file: &Path, args: &ScenarioArgs, what: &str) -> Result<scenario::Plan, i32> {
    let mut overrides = Vec::new();
    for arg in &args.set {
        match scenario::overrides::parse(arg) {
            Ok(o) => overrides.push(o),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(exit::INVALID_INPUT);
            }
        }
    }
    let options = scenario::LoadOptions { seed: args.seed, overrides, ..Default::default() };
    let plan = match scenario::load(file, &options) {
        Ok(p) => p,
        Err(d) => {
            print_diagnostics(&d, what);
            return Err(exit::INVALID_INPUT);
        }
    };
    for w in &plan.warnings {
        eprintln!("{}: {w}", if args.deny_warnings { "error" } else { "warning" });
    }
    if args.deny_warnings && !plan.warnings.is_empty() {
        eprintln!("{} warning(s) denied by --deny-warnings; {what}", plan.warnings.len());
        return Err(exit::INVALID_INPUT);
    }
    Ok(plan)
}

/// The async runtime of the commands that run something; `None` (said on stderr) if the
/// operating system refuses it.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Prints every diagnostic and a count; `what` says what did not happen.
fn print_diagnostics(d: &Diagnostics, what: &str) {
    let mut err = std::io::stderr().lock();
    for diag in &d.0 {
        let _ = writeln!(err, "error: {diag}");
    }
    let n = d.0.len();
    let _ = writeln!(err, "{n} error{} found; {what}", if n == 1 { "" } else { "s" });
}

fn validate(files: &[PathBuf], args: &ScenarioArgs) -> i32 {
    let mut code = exit::PROMOTE;
    for file in files {
        match load(file, args, "the scenario is not valid") {
            Ok(plan) => {
                let plural = |n: usize, word: &str| if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") };
                println!(
                    "{}: valid ({}, {})",
                    file.display(),
                    plural(plan.stages.len(), "stage"),
                    if plan.criteria.len() == 1 {
                        "1 criterion".to_string()
                    } else {
                        format!("{} criteria", plan.criteria.len())
                    }
                );
                for u in plan.unsupported() {
                    println!("  note: this build cannot run {u} yet; `stagegate run` will refuse it");
                }
            }
            Err(c) => code = c,
        }
    }
    code
}

fn plan(file: &Path, args: &ScenarioArgs) -> i32 {
    match load(file, args, "no plan printed") {
        Ok(plan) => {
            print!("{}", crate::report::plan::markdown(&plan));
            exit::PROMOTE
        }
        Err(c) => c,
    }
}

fn data(schema: &Path, count: u64, seed: u64) -> i32 {
    let schema = match Schema::load(schema) {
        Ok(s) => Arc::new(s),
        Err(d) => {
            print_diagnostics(&d, "no records printed");
            return exit::INVALID_INPUT;
        }
    };
    let mut generator = Generator::new(schema, seed);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..count {
        let line = serde_json::Value::Object(generator.next_record()).to_string();
        if writeln!(out, "{line}").is_err() {
            return exit::PROMOTE; // a closed pipe (`| head`) is not an error
        }
    }
    let _ = out.flush();
    exit::PROMOTE
}

fn run(file: &Path, args: &ScenarioArgs, report_root: &Path, quiet: bool) -> i32 {
    let plan = match load(file, args, "nothing was run") {
        Ok(p) => p,
        Err(c) => return c,
    };
    let unsupported = plan.unsupported();
    if !unsupported.is_empty() {
        for u in &unsupported {
            eprintln!("error: {}: this build cannot run {u} yet", file.display());
        }
        eprintln!("{} error(s) found; nothing was run", unsupported.len());
        return exit::INVALID_INPUT;
    }
    let Some(runtime) = runtime() else { return exit::RUN_BROKEN };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let report_dir = report_root.join(format!("{}-{stamp}", plan.name));
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        tokio::spawn(watch_signals(cancel.clone()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let runner = {
            let plan = plan.clone();
            let dir = report_dir.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { crate::runner::run(&plan, Some(dir), cancel, tx).await })
        };
        let mut terminal = TerminalReporter { progress: !quiet, secrets: plan.secrets.clone() };
        let mut json = JsonReporter::new(report_dir, plan.secrets.clone());
        while let Some(event) = rx.recv().await {
            // The JSON file first, so that the summary can say it was written.
            json.event(&event);
            terminal.event(&event);
        }
        let report = match runner.await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: the run failed unexpectedly: {e}");
                return exit::RUN_BROKEN;
            }
        };
        if let Some(Err(e)) = &json.written {
            eprintln!("error: {e}");
        }
        if report.error.is_some() {
            exit::RUN_BROKEN
        } else if report.interrupted {
            exit::INTERRUPTED
        } else {
            match report.verdict {
                Some(crate::verdict::Verdict::Promote) => exit::PROMOTE,
                Some(crate::verdict::Verdict::Rollback) => exit::ROLLBACK,
                Some(crate::verdict::Verdict::Inconclusive) => exit::INCONCLUSIVE,
                None => exit::RUN_BROKEN,
            }
        }
    })
}

/// Cancels the run on Ctrl-C (SIGINT) or SIGTERM.
async fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    let name = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    // Not `eprintln!`: a closed stderr must not keep the run from stopping.
    let _ = writeln!(std::io::stderr(), "stagegate: {name} received; lifting every fault and stopping");
    cancel.cancel();
}
