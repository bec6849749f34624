//! The command line: clap definitions (per-run settings only; the experiment itself
//! lives in the scenario file) and the commands they dispatch to.
//!
//! Each command returns an exit code from [`crate::exit`]; only `main` exits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::data::{Generator, Schema};
use crate::exit;
use crate::report::files::FilesReporter;
use crate::report::json::JsonReporter;
use crate::report::terminal::TerminalReporter;
use crate::report::{Event, Reporter};
use crate::runner::Shutdown;
use crate::scenario::{self, Diagnostics};

/// `--version`: the crate's version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (rev ", env!("STAGEGATE_REVISION"), ")");

/// Rehearse a release stage under chaos and gate on the verdict.
#[derive(Debug, Parser)]
#[command(
    name = "stagegate",
    version = VERSION,
    about,
    long_about = None,
    after_help = "Examples:\n  stagegate run scenarios/quickstart.yaml\n  stagegate plan scenarios/quickstart.yaml --set stages[2].faults[0].delay=150ms\n\nThe scenario format: docs/format.md. Exit codes: 0 PROMOTE, 1 ROLLBACK, 2 invalid input, 3 INCONCLUSIVE, 4 the run broke, 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Per-run settings shared by the commands that read a scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Override a scenario key before the file is checked (a what-if), e.g. `--set
    /// workload.arrival.rate=50/s` or `--set stages[2].faults[0].delay=300ms`
    /// (repeatable, applied in order; the value is read as YAML and checked like the file).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Treat warnings (an expired flag, say) as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// `stagegate flags ...`.
#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Audit the flags of scenarios and of a flag inventory (a flagd flag file) against
    /// the governance rules: owner, category, expiry, age, naming, use (docs/flags.md).
    ///
    /// Exit codes: 0 no finding at error level, 1 findings at error level, 2 invalid
    /// input.
    #[command(after_help = "Examples:
  stagegate flags audit scenarios/*.yaml
  stagegate flags audit scenarios/*.yaml --inventory flags.flagd.json --naming '^[a-z][a-z0-9-]*$'
  stagegate flags audit --inventory flags.flagd.json --severity unused=off --max-age release=60d --format json")]
    Audit {
        /// Scenario files whose flags are audited (and which show which flags are rehearsed).
        files: Vec<PathBuf>,
        /// The flag inventory: a flagd flag file, governance in each flag's `metadata`
        /// (`owner`, `category`, `expires`, `created`).
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// A regular expression every flag name must match (default: the inventory's
        /// `metadata.naming`, if any).
        #[arg(long, value_name = "REGEX")]
        naming: Option<String>,
        /// The longest a temporary flag may live, `CATEGORY=DURATION` (defaults
        /// release=90d, experiment=180d). Repeatable.
        #[arg(long, value_name = "CATEGORY=DURATION")]
        max_age: Vec<String>,
        /// A finding's severity, `KIND=error|warning|off` (e.g. `unused=off`). Repeatable.
        #[arg(long, value_name = "KIND=LEVEL")]
        severity: Vec<String>,
        /// `table` or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// The date to judge expiry and age against (default: today, UTC).
        #[arg(long, value_name = "YYYY-MM-DD")]
        today: Option<String>,
    },
}

/// The documents `stagegate schema` describes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SchemaOf {
    /// A scenario file.
    Scenario,
    /// A run's report.json.
    Report,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario and print the verdict.
    ///
    /// Exit codes: 0 PROMOTE, 1 ROLLBACK, 2 invalid scenario or arguments (nothing run),
    /// 3 INCONCLUSIVE, 4 the run itself broke, 130 interrupted (faults lifted, partial
    /// report written).
    #[command(
        after_help = "Examples:\n  stagegate run scenarios/quickstart.yaml\n  stagegate run scenarios/quickstart.yaml --seed 7 --set workload.arrival.rate=50/s\n  stagegate run -q scenarios/rollback-demo.yaml --report-dir /tmp/reports; echo \"exit $?\""
    )]
    Run {
        /// The scenario file.
        #[arg(required_unless_present = "ui")]
        file: Option<PathBuf>,
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// Folder that receives one sub-folder per run (and a `latest` link to the
        /// newest).
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
        /// Use DIR itself as the run's folder (created if missing; it must be empty),
        /// instead of a new sub-folder of --report-dir: a path a CI job knows.
        #[arg(long, value_name = "DIR", conflicts_with = "report_dir")]
        out: Option<PathBuf>,
        /// Also write FORMAT (junit, markdown, html, hlog; json is always written), into the
        /// run's folder or at PATH (relative to it). Repeatable. With markdown, a set
        /// GITHUB_STEP_SUMMARY receives the summary too.
        #[arg(long = "report", value_name = "FORMAT[=PATH]")]
        report: Vec<crate::report::files::Wanted>,
        /// Print only the verdict and the criteria that decided it (stdout); nothing on
        /// stderr but errors. Without it, progress goes to stderr: a live line on a
        /// terminal, plain lines once a second elsewhere.
        #[arg(long, short)]
        quiet: bool,
        /// Serve `/metrics` in the Prometheus text format at ADDR (a loopback address,
        /// e.g. 127.0.0.1:9464) while the run lasts: requests and latency by stage and
        /// flag variant, the running stage, active faults, flag shares, data counts and
        /// stagegate's own send lag.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Serve the live page at ADDR (default 127.0.0.1:0, a free loopback port; its
        /// address is printed): the stage and its flags, latency and errors each second,
        /// active faults, criteria as they stand; and steering with a token: hold,
        /// advance, abort, start a fault. An address beyond loopback needs --ui-token.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
        ui: Option<String>,
        /// A steering token, as NAME=SECRET (the name goes in the audit log; the secret
        /// at least 16 characters). Repeatable. Without one, a token named `operator` is
        /// made and printed.
        #[arg(long = "ui-token", value_name = "NAME=SECRET", env = "STAGEGATE_UI_TOKEN", value_delimiter = ',')]
        ui_tokens: Vec<String>,
        /// Send the load through N load workers (`stagegate worker`), this process being
        /// their controller: it keeps the flags, faults, timeline, data checks and
        /// verdict, and each worker sends a disjoint share of every stage. A worker that
        /// dies, is late or falls behind makes its stage INCONCLUSIVE.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        workers: Option<u32>,
        /// Where the controller's API listens for workers (with --workers; default
        /// 0.0.0.0:7400, every address: the workers are on other machines).
        #[arg(long, value_name = "ADDR")]
        controller_listen: Option<String>,
        /// The token workers present (at least 16 characters). Without it one is made
        /// and printed.
        #[arg(long, value_name = "TOKEN", env = "STAGEGATE_WORKER_TOKEN", hide_env_values = true)]
        worker_token: Option<String>,
        /// How long the workers have to join before the run gives up (exit 4).
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = crate::scenario::units::parse_duration)]
        join_timeout: std::time::Duration,
    },
    /// Send a share of a distributed run's load (`stagegate run --workers N`): join the
    /// controller, drive this worker's share of each stage from the start time it
    /// gives, stream every outcome back, exit when the run is over.
    ///
    /// Exit codes: 0 the run is over, 2 refused (token, index), 4 the controller could
    /// not be reached or was lost, 130 interrupted (the controller is told).
    #[command(after_help = "Example:
  stagegate worker --controller http://controller:7400 --token \"$STAGEGATE_WORKER_TOKEN\" --index 0

In a Kubernetes Indexed Job the index comes from JOB_COMPLETION_INDEX.")]
    Worker {
        /// The controller's URL (`http://HOST:PORT`).
        #[arg(long, env = "STAGEGATE_CONTROLLER")]
        controller: String,
        /// The run's worker token.
        #[arg(long, env = "STAGEGATE_WORKER_TOKEN", hide_env_values = true)]
        token: String,
        /// This worker's index, 0 to N-1.
        #[arg(long, env = "JOB_COMPLETION_INDEX")]
        index: u32,
        /// How long to keep trying to reach and join the controller.
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = crate::scenario::units::parse_duration)]
        join_timeout: std::time::Duration,
    },
    /// Check scenario files without running anything (exit 0 valid, 2 invalid).
    ///
    /// Every mistake is listed with file, line:column, key path and a hint; warnings
    /// (an expired flag, say) print too, and fail the check with `--deny-warnings`.
    #[command(
        after_help = "Examples:\n  stagegate validate scenarios/*.yaml\n  stagegate validate --deny-warnings scenarios/quickstart.yaml --set workload.duration=30s"
    )]
    Validate {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Print the rollout plan as Markdown: stages, flag states, fault timelines,
    /// expected load, the criteria of each stage and what each verdict triggers.
    #[command(
        after_help = "Examples:\n  stagegate plan scenarios/quickstart.yaml\n  stagegate plan scenarios/quickstart.yaml --set stages[2].faults[0].delay=150ms > plan.md"
    )]
    Plan {
        /// The scenario file.
        file: PathBuf,
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// Print a game-day runbook instead: per stage, when it starts, what it turns
        /// on, what to watch, how to abort, and the flag change that rolls it back.
        #[arg(long)]
        runbook: bool,
    },
    /// Print the JSON Schema of the scenario format (for editors), or of report.json.
    #[command(
        after_help = "Examples:\n  stagegate schema > stagegate.schema.json\n  # then, first line of a scenario: # yaml-language-server: $schema=stagegate.schema.json\n  stagegate schema report > report.schema.json"
    )]
    Schema {
        /// Which document: a scenario file, or a run's report.json.
        #[arg(value_enum, default_value_t = SchemaOf::Scenario)]
        of: SchemaOf,
    },
    /// Run standalone fault proxies for a game day, driven over a Toxiproxy-compatible
    /// HTTP API (`GET /` lists its endpoints). Every change is said on stderr. Ctrl-C or
    /// SIGTERM removes every fault and closes every proxy, saying what it lifted.
    #[command(
        after_help = "Example:\n  stagegate proxy &\n  curl -s -X POST localhost:8474/proxies -d '{\"name\":\"redis\",\"listen\":\"127.0.0.1:26379\",\"upstream\":\"127.0.0.1:6379\"}'\n  curl -s -X POST localhost:8474/proxies/redis/toxics -d '{\"type\":\"latency\",\"attributes\":{\"latency\":100}}'"
    )]
    Proxy {
        /// Address of the control API.
        #[arg(long, default_value = "127.0.0.1:8474")]
        listen: String,
        /// Proxies to create at start, in Toxiproxy's config format: a JSON list of
        /// `{ "name", "listen", "upstream" }`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Accept addresses outside loopback for the control API and for proxies'
        /// `listen` and `upstream` (refused otherwise: a game day's faults stay on this
        /// machine unless asked).
        #[arg(long)]
        allow_remote: bool,
        /// Serve the live page at /ui on the control API's address: each proxy with its
        /// connections and toxics (with their ttl), the latest changes, and buttons that
        /// call the API (remove a toxic, disable a proxy, reset).
        #[arg(long)]
        ui: bool,
    },
    /// Serve the builtin store as a process of its own (a `process` dependency that
    /// `kill` and `pause` faults can act on). Says its address on stderr when it
    /// listens; stops on SIGTERM or Ctrl-C. Protocol: docs/builtin.md.
    #[command(
        after_help = "Example, as a scenario's dependency:\n  dependencies:\n    store: { process: { command: [stagegate, kv-store, --port, \"{{ port }}\"] } }"
    )]
    KvStore {
        /// The loopback port to serve on.
        #[arg(long)]
        port: u16,
    },
    /// Stop what killed runs left behind: reads each `run.json` under the report folder
    /// whose stagegate process is gone, stops the processes it started and removes
    /// its containers (a pid since reused by another program is left alone).
    #[command(after_help = "Example, after a run was killed with SIGKILL:\n  stagegate cleanup --report-dir reports")]
    Cleanup {
        /// The folder holding the runs' report folders (or one run's own folder, as
        /// `run --out` made it).
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
    },
    /// Write a saved run's report again in other formats, from its report.json.
    #[command(
        after_help = "Examples:\n  stagegate report reports/latest --format html --format junit\n  stagegate report reports/latest --format markdown=/tmp/summary.md"
    )]
    Report {
        /// The run's folder (holding report.json).
        run_dir: PathBuf,
        /// FORMAT[=PATH]: junit, markdown, html, hlog or json; PATH relative to the run's folder.
        #[arg(long, value_name = "FORMAT[=PATH]", required = true)]
        format: Vec<crate::report::files::Wanted>,
    },
    /// Compare two saved runs of one scenario stage by stage; exit 1 when NEW is worse.
    ///
    /// Latency and error rates by time windows, window against window (the runs share
    /// their schedule: a Wilcoxon signed-rank test of the paired differences beyond the
    /// tolerance, Holm over every test), and data counts (any more lost, duplicated or
    /// corrupted records in NEW is a regression). Exit codes: 0 no
    /// regression, 1 NEW regressed, 2 the runs cannot be compared, 3 inconclusive.
    #[command(
        after_help = "Examples:\n  stagegate compare reports/last-release reports/latest\n  stagegate compare old new --max-regression +5ms --confidence 99%"
    )]
    Compare {
        /// The earlier run's folder (the reference).
        old: PathBuf,
        /// The run to judge.
        new: PathBuf,
        /// How much slower NEW's latency may be: relative (`10%`) or absolute (`+5ms`).
        /// Default: 10%, or +2ms when 10% of OLD's median is less.
        #[arg(long)]
        max_regression: Option<String>,
        /// How much higher NEW's error rate may be, in percentage points.
        #[arg(long, default_value = "1%")]
        max_error_rise: String,
        /// Confidence of each one-sided test.
        #[arg(long, default_value = "95%")]
        confidence: String,
    },
    /// Flag governance: `stagegate flags audit`.
    #[command(after_help = "Example:\n  stagegate flags audit scenarios/*.yaml --inventory flags.flagd.json")]
    Flags {
        #[command(subcommand)]
        command: FlagsCommand,
    },
    /// Print synthetic records from a schema as JSON lines.
    #[command(after_help = "Example:\n  stagegate data synthetic-data/orders.yaml --count 3 --seed 42")]
    Data {
        /// The record schema (`synthetic-data/*.yaml`).
        schema: PathBuf,
        /// How many records.
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// The seed: same seed, same records.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  stagegate completions bash > /etc/bash_completion.d/stagegate\n  stagegate completions zsh > \"${fpath[1]}/_stagegate\"\n  stagegate completions fish > ~/.config/fish/completions/stagegate.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), for `man`.
    #[command(after_help = "Example:\n  stagegate man > /usr/local/share/man/man1/stagegate.1 && man stagegate")]
    Man,
}

/// Runs the parsed command; returns the process exit code.
pub fn execute(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            file,
            scenario,
            report_dir,
            out,
            report,
            quiet,
            metrics,
            mut ui,
            ui_tokens,
            workers,
            controller_listen,
            worker_token,
            join_timeout,
        } => {
            // `--ui scenario.yaml`: the option took the file as its address.
            let file = match (file, &ui) {
                (Some(f), _) => f,
                (None, Some(addr)) if Path::new(addr).is_file() => {
                    let f = PathBuf::from(addr);
                    ui = Some("127.0.0.1:0".into());
                    f
                }
                (None, _) => {
                    eprintln!("error: the scenario file is missing: stagegate run FILE [--ui [ADDR]]");
                    return exit::INVALID_INPUT;
                }
            };
            let folder = match out {
                Some(dir) => RunFolder::Exact(dir),
                None => RunFolder::Under(report_dir),
            };
            if workers.is_none() && controller_listen.is_some() {
                eprintln!(
                    "warning: --controller-listen serves load workers, which only --workers asks for; one process this run"
                );
            }
            let listen = controller_listen.unwrap_or_else(|| "0.0.0.0:7400".into());
            let workers = workers.map(|n| Workers { n, listen, token: worker_token, join_timeout });
            let serve = Serve { metrics, ui, ui_tokens, workers };
            run(&file, &scenario, &folder, &report, quiet, serve)
        }
        Command::Validate { files, scenario } => validate(&files, &scenario),
        Command::Plan { file, scenario, runbook } => plan(&file, &scenario, runbook),
        Command::Schema { of } => {
            let schema = match of {
                SchemaOf::Scenario => scenario::schema::json_schema(),
                SchemaOf::Report => crate::report::schema::json_schema(),
            };
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
            print_out(&format!("{text}\n")).err().unwrap_or(exit::PROMOTE)
        }
        Command::Data { schema, count, seed } => data(&schema, count, seed),
        Command::Flags {
            command: FlagsCommand::Audit { files, inventory, naming, max_age, severity, format, today },
        } => audit(&files, inventory.as_deref(), naming.as_deref(), &max_age, &severity, &format, today.as_deref()),
        Command::Proxy { listen, config, allow_remote, ui } => proxy(&listen, config.as_deref(), allow_remote, ui),
        Command::KvStore { port } => kv_store(port),
        Command::Worker { controller, token, index, join_timeout } => {
            worker(crate::distributed::worker::Args { controller, token, index, join_timeout })
        }
        Command::Cleanup { report_dir } => cleanup(&report_dir),
        Command::Report { run_dir, format } => rerender(&run_dir, &format),
        Command::Compare { old, new, max_regression, max_error_rise, confidence } => {
            crate::report::diff::command(&old, &new, max_regression.as_deref(), &max_error_rise, &confidence)
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "stagegate", &mut out);
            print_out(&String::from_utf8_lossy(&out)).err().unwrap_or(exit::PROMOTE)
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out) {
                Ok(()) => print_out(&String::from_utf8_lossy(&out)).err().unwrap_or(exit::PROMOTE),
                Err(e) => {
                    eprintln!("error: cannot write the manual page: {e}");
                    exit::RUN_BROKEN
                }
            }
        }
    }
}

fn audit(
    files: &[PathBuf],
    inventory: Option<&Path>,
    naming: Option<&str>,
    max_age: &[String],
    severity: &[String],
    format: &str,
    today: Option<&str>,
) -> i32 {
    use crate::flags::audit::{Inventory, Rules, Severity};
    let fail = |e: String| {
        eprintln!("error: {e}");
        exit::INVALID_INPUT
    };
    if files.is_empty() && inventory.is_none() {
        return fail("nothing to audit: give scenario files, --inventory FILE, or both".into());
    }
    let today = match today {
        None => chrono::Utc::now().date_naive(),
        Some(t) => match chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().filter(|_| t.len() == 10) {
            Some(d) => d,
            None => return fail(format!("--today `{t}` is not a date like 2027-03-01")),
        },
    };
    let mut rules = Rules::new(today);
    for s in severity {
        if let Err(e) = rules.set_severity(s) {
            return fail(format!("--severity {e}"));
        }
    }
    for m in max_age {
        if let Err(e) = rules.set_max_age(m) {
            return fail(format!("--max-age {e}"));
        }
    }
    let mut found = Inventory::default();
    let mut naming = naming.map(str::to_string);
    if let Some(path) = inventory {
        let text = match crate::limits::read_bounded(path, crate::limits::SCENARIO_BYTES) {
            Ok(t) => t,
            Err(e) => return fail(format!("cannot read the inventory {}: {e}", path.display())),
        };
        if let Err(e) = found.add_flagd(path, &text) {
            return fail(e);
        }
        if naming.is_none() {
            let doc = serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default();
            match &doc["metadata"]["naming"] {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) => naming = Some(s.clone()),
                other => {
                    return fail(format!(
                        "{}: metadata.naming: {other} is not a naming rule (a regular expression, as a string)",
                        path.display()
                    ));
                }
            }
        }
    }
    if let Some(pattern) = naming {
        match regex::Regex::new(&pattern) {
            Ok(r) => rules.naming = Some(r),
            Err(e) => return fail(format!("the naming rule `{pattern}` is not a regular expression: {e}")),
        }
    }
    let args = ScenarioArgs { set: Vec::new(), seed: None, deny_warnings: false };
    for file in files {
        match load(file, &args, "nothing was audited") {
            Ok(plan) => found.add_scenario(file, &plan),
            Err(code) => return code,
        }
    }
    let findings = found.audit(&rules);
    let text = if format == "json" {
        let doc = serde_json::json!({
            "today": today.to_string(),
            "flags": found.flags.len(),
            "errors": findings.iter().filter(|f| f.severity == Severity::Error).count(),
            "findings": findings,
        });
        format!("{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default())
    } else {
        crate::flags::audit::table(&findings, found.flags.len())
    };
    if let Err(code) = print_out(&text) {
        return code;
    }
    if findings.iter().any(|f| f.severity == Severity::Error) { exit::ROLLBACK } else { exit::PROMOTE }
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
        // Said on stderr, so that a supervisor's readiness check can wait for it.
        let _ = writeln!(
            std::io::stderr(),
            "stagegate kv-store: listening on {} (one line per request: APPEND, GET, SCAN, PING; see docs/builtin.md); Ctrl-C or SIGTERM stops it",
            store.addr()
        );
        let stop = Shutdown::default();
        if let Err(e) = watch_signals(stop.clone(), "stopping the store") {
            eprintln!("error: cannot watch for Ctrl-C: {e}");
            store.stop().await;
            return exit::RUN_BROKEN;
        }
        stop.cancel.cancelled().await;
        store.stop().await;
        exit::PROMOTE
    })
}

fn cleanup(report_root: &Path) -> i32 {
    let Some(runtime) = runtime() else { return exit::RUN_BROKEN };
    let cleaned = runtime.block_on(crate::deps::cleanup::cleanup(report_root));
    let text: String = cleaned.lines.iter().map(|l| format!("{l}\n")).collect();
    print_out(&text).err().unwrap_or(exit::PROMOTE)
}

fn proxy(listen: &str, config: Option<&Path>, allow_remote: bool, ui: bool) -> i32 {
    use crate::fault::api::{ProxySpec, Registry, router};
    let specs: Vec<ProxySpec> = match config {
        None => Vec::new(),
        Some(path) => match crate::limits::read_bounded(path, crate::limits::PROXY_CONFIG_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|t| {
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
        if let Ok(addr) = listener.local_addr()
            && !allow_remote
            && !addr.ip().is_loopback()
        {
            eprintln!(
                "error: the control API would listen on {addr}, outside loopback; add --allow-remote to allow it"
            );
            return exit::INVALID_INPUT;
        }
        let registry = Registry::new(true, allow_remote);
        for spec in specs {
            let name = spec.name.clone();
            if let Err(answer) = registry.create(spec).await {
                let why = axum::body::to_bytes(answer.into_body(), 64 * 1024).await.unwrap_or_default();
                let why: serde_json::Value = serde_json::from_slice(&why).unwrap_or_default();
                eprintln!(
                    "error: proxy `{name}` from the config could not start: {}",
                    why["error"].as_str().unwrap_or("unknown reason")
                );
                registry.stop().await;
                return exit::RUN_BROKEN;
            }
        }
        let stop = Shutdown::default();
        if let Err(e) = watch_signals(stop.clone(), "lifting every fault and closing every proxy") {
            eprintln!("error: cannot watch for Ctrl-C: {e}");
            registry.stop().await;
            return exit::RUN_BROKEN;
        }
        let served = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: the control API failed: {e}");
                registry.stop().await;
                return exit::RUN_BROKEN;
            }
        };
        let app = router(registry.clone(), ui, served);
        let api = match crate::server::Server::start("proxy control API", listener, app, None) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: the control API failed: {e}");
                registry.stop().await;
                return exit::RUN_BROKEN;
            }
        };
        eprintln!("stagegate proxy: control API on http://{}", api.addr());
        if ui {
            eprintln!("stagegate proxy: live page on http://{}/ui", api.addr());
        }
        stop.cancel.cancelled().await;
        // Faults first: nothing may go on delaying traffic while the API winds down.
        registry.lift_all().await;
        api.stop(stop.force.is_cancelled()).await;
        registry.stop().await;
        exit::PROMOTE
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
    // A run prints its warnings as it starts; the other commands here.
    let run_prints = what == NOT_RUN && !args.deny_warnings;
    for w in plan.warnings.iter().filter(|_| !run_prints) {
        eprintln!("{}: {}", if args.deny_warnings { "error" } else { "warning" }, plan.secrets.mask(w));
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
    /// Mistakes printed at most; the count says how many there were.
    const SHOWN: usize = 100;
    let mut err = std::io::stderr().lock();
    for diag in d.0.iter().take(SHOWN) {
        let _ = writeln!(err, "error: {diag}");
    }
    let n = d.0.len();
    if n > SHOWN {
        let _ = writeln!(err, "... and {} more", n - SHOWN);
    }
    let _ = writeln!(err, "{n} error{} found; {what}", if n == 1 { "" } else { "s" });
}

/// Writes `text` to stdout. A reader that went away (`| head`) is no error; any other
/// failure (a full disk) is said on stderr and gives the exit code to return.
fn print_out(text: &str) -> Result<(), i32> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
            Err(exit::RUN_BROKEN)
        }
    }
}

fn validate(files: &[PathBuf], args: &ScenarioArgs) -> i32 {
    let mut code = exit::PROMOTE;
    for file in files {
        match load(file, args, "the scenario is not valid") {
            Ok(plan) => {
                let plural = |n: usize, word: &str| if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") };
                let said = print_out(&format!(
                    "{}: valid ({}, {})\n",
                    file.display(),
                    plural(plan.stages.len(), "stage"),
                    if plan.criteria.len() == 1 {
                        "1 criterion".to_string()
                    } else {
                        format!("{} criteria", plan.criteria.len())
                    }
                ));
                if let Err(c) = said {
                    return c;
                }
            }
            Err(c) => code = c,
        }
    }
    code
}

fn plan(file: &Path, args: &ScenarioArgs, runbook: bool) -> i32 {
    match load(file, args, "no plan printed") {
        Ok(plan) => {
            let text =
                if runbook { crate::report::plan::runbook(&plan, file) } else { crate::report::plan::markdown(&plan) };
            print_out(&plan.secrets.mask(&text)).err().unwrap_or(exit::PROMOTE)
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
    // Times past the year 9999 cannot be written: refused before anything is printed.
    let past = schema.timestamps_past_9999(count as f64);
    if !past.is_empty() {
        let names: Vec<String> = past.iter().map(|f| format!("`{}`", f.name)).collect();
        eprintln!(
            "error: timestamps of {} pass the year 9999 within {count} records; give a shorter `step`, an earlier `start` or fewer records (no records printed)",
            names.join(", ")
        );
        return exit::INVALID_INPUT;
    }
    let mut generator = Generator::new(schema, seed);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = (0..count)
        .try_for_each(|_| writeln!(out, "{}", serde_json::Value::Object(generator.next_record())))
        .and_then(|_| out.flush());
    match written {
        Ok(()) => exit::PROMOTE,
        // A closed pipe (`| head`) is not an error; a full disk is.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::PROMOTE,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write the records: {e}");
            exit::RUN_BROKEN
        }
    }
}

/// What a failed load of `run` says did not happen.
const NOT_RUN: &str = "nothing was run";

/// Where a run's files go.
enum RunFolder {
    /// A new sub-folder, named after the scenario and the time, and a `latest` link.
    Under(PathBuf),
    /// This folder as it is.
    Exact(PathBuf),
}

/// Binds `--metrics`'s address: a loopback one, free.
fn metrics_listener(addr: &str) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    if !bound.ip().is_loopback() {
        return Err(format!("{bound} is outside loopback; give a loopback address such as 127.0.0.1:9464"));
    }
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

/// What a run serves while it goes: `/metrics`, the live page and its steering tokens.
struct Serve {
    metrics: Option<String>,
    ui: Option<String>,
    ui_tokens: Vec<String>,
    workers: Option<Workers>,
}

/// `--workers` and its options.
struct Workers {
    n: u32,
    listen: String,
    token: Option<String>,
    join_timeout: std::time::Duration,
}

/// `stagegate worker`.
fn worker(args: crate::distributed::worker::Args) -> i32 {
    if args.token.trim().len() < 16 || !args.token.trim().chars().all(|c| c.is_ascii_graphic()) {
        eprintln!(
            "error: --token: the worker token is at least 16 printable ASCII characters (the controller's --worker-token, or the one it printed)"
        );
        return exit::INVALID_INPUT;
    }
    match reqwest::Url::parse(&args.controller) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => {
            eprintln!(
                "error: --controller: expected the controller's URL, like http://controller:7400, got `{}`",
                args.controller
            );
            return exit::INVALID_INPUT;
        }
    }
    let stop = Shutdown::default();
    if let Err(e) = watch_signals(stop.clone(), "stopping (again to stop at once)") {
        eprintln!("error: cannot watch for Ctrl-C: {e}");
        return exit::RUN_BROKEN;
    }
    crate::health::raise_file_limit();
    let Some(runtime) = runtime() else { return exit::RUN_BROKEN };
    runtime.block_on(crate::distributed::worker::work(args, stop))
}

/// `--ui-token`s as `(name, secret)`: names unique, secrets long enough.
fn ui_tokens(given: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut tokens: Vec<(String, String)> = Vec::new();
    for t in given {
        let Some((name, secret)) = t.split_once('=') else {
            return Err("--ui-token: expected NAME=SECRET, e.g. alice=$(openssl rand -hex 16)".into());
        };
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(format!(
                "--ui-token: the name `{}` must be 1 to 64 letters, digits, `-`, `_`, `.` or `@`",
                name.escape_debug()
            ));
        }
        if secret.chars().count() < 16 || secret.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("--ui-token: `{name}`'s secret must be at least 16 characters, without spaces"));
        }
        if tokens.iter().any(|(n, s)| n == name || s == secret) {
            return Err(format!("--ui-token: `{name}` is given twice, or shares its secret with another token"));
        }
        tokens.push((name.to_string(), secret.to_string()));
    }
    Ok(tokens)
}

/// Binds `--ui`'s address: loopback, or beyond it only with tokens given.
fn ui_listener(addr: &str, tokens_given: bool) -> Result<std::net::TcpListener, String> {
    use std::net::ToSocketAddrs;
    let not_address = || {
        let hint = if Path::new(addr).exists() {
            format!("; `{addr}` is a file: put `--ui` after the scenario file, or write `--ui=127.0.0.1:0`")
        } else {
            String::new()
        };
        format!("`{addr}` is not an address like 127.0.0.1:8080{hint}")
    };
    let target = addr.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(not_address)?;
    if !target.ip().is_loopback() && !tokens_given {
        return Err(format!(
            "{target} is beyond loopback: anyone who reaches it could watch the run; give --ui-token NAME=SECRET too"
        ));
    }
    let listener = std::net::TcpListener::bind(target).map_err(|e| format!("cannot listen on {target}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

fn run(
    file: &Path,
    args: &ScenarioArgs,
    folder: &RunFolder,
    wanted: &[crate::report::files::Wanted],
    quiet: bool,
    serve: Serve,
) -> i32 {
    // Ctrl-C is taken from the first moment: one that comes while the scenario is read
    // makes the run stop before anything starts.
    let stop = Shutdown::default();
    if let Err(e) = watch_signals(stop.clone(), "lifting every fault and stopping (again to stop at once)") {
        eprintln!("error: cannot watch for Ctrl-C: {e}");
        return exit::RUN_BROKEN;
    }
    // The run's folder does not exist yet: a sibling name stands for it.
    let future = match folder {
        RunFolder::Under(root) => root.join("run"),
        RunFolder::Exact(dir) => dir.clone(),
    };
    if let Err(e) = crate::report::files::check_paths(&future, wanted, "--report")
        .and_then(|()| crate::report::files::check_step_summary(wanted))
    {
        eprintln!("error: {e}; {NOT_RUN}");
        return exit::INVALID_INPUT;
    }
    let plan = match load(file, args, NOT_RUN) {
        Ok(p) => p,
        Err(c) => return c,
    };
    // The metrics endpoint is taken before anything starts: a port in use is a wrong
    // argument, not a broken run.
    let metrics = match serve.metrics.as_deref().map(metrics_listener).transpose() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: --metrics: {e}; {NOT_RUN}");
            return exit::INVALID_INPUT;
        }
    };
    let tokens = match ui_tokens(&serve.ui_tokens) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}; {NOT_RUN}");
            return exit::INVALID_INPUT;
        }
    };
    if serve.ui.is_none() && !tokens.is_empty() {
        eprintln!(
            "warning: --ui-token (or STAGEGATE_UI_TOKEN) steers the live page, which only --ui serves; no page this run"
        );
    }
    // The workers' API too: its address and token are arguments.
    let controller = match &serve.workers {
        Some(w) => {
            let token = match &w.token {
                Some(t) if t.len() >= 16 && t.chars().all(|c| c.is_ascii_graphic()) => (t.clone(), false),
                Some(_) => {
                    eprintln!(
                        "error: --worker-token: at least 16 printable ASCII characters, without spaces; {NOT_RUN}"
                    );
                    return exit::INVALID_INPUT;
                }
                None => (crate::steer::new_token(), true),
            };
            let listener = std::net::TcpListener::bind(&w.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| format!("cannot listen on {}: {e}", w.listen));
            match listener {
                Ok(l) => Some((l, token, w.n, w.join_timeout)),
                Err(e) => {
                    eprintln!("error: --controller-listen: {e}; {NOT_RUN}");
                    return exit::INVALID_INPUT;
                }
            }
        }
        None => None,
    };
    let ui = match serve.ui.as_deref().map(|a| ui_listener(a, !tokens.is_empty())).transpose() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --ui: {e}; {NOT_RUN}");
            return exit::INVALID_INPUT;
        }
    };
    crate::secrets::install_for_logs(&plan.secrets);
    crate::health::raise_file_limit();
    // Whatever the run starts and its descendants start, even those that leave their
    // process group and session, are adopted by stagegate when their parent dies, so
    // the run's end can still stop them.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let made = match folder {
        RunFolder::Under(root) => run_folder(root, &plan.name)
            .map_err(|e| format!("cannot create a report folder under {}: {e}", root.display())),
        RunFolder::Exact(dir) => exact_folder(dir),
    };
    let (report_dir, run_id) = match made {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            // `--out` names a folder that cannot be the run's, or `--report-dir` something
            // that is not a folder: the argument is wrong.
            let wrong = match folder {
                RunFolder::Exact(_) => true,
                RunFolder::Under(root) => root.exists() && !root.is_dir(),
            };
            return if wrong { exit::INVALID_INPUT } else { exit::RUN_BROKEN };
        }
    };
    if let RunFolder::Under(root) = folder {
        point_latest(root, &run_id, quiet);
    }
    let Some(runtime) = runtime() else { return exit::RUN_BROKEN };
    let code = runtime.block_on(async move {
        // `/metrics` for the run's whole length: the server stops when dropped, at the
        // end of this block.
        let (live, _endpoint) = match metrics {
            Some(listener) => {
                let live = std::sync::Arc::new(crate::report::prometheus::Live::default());
                let server = tokio::net::TcpListener::from_std(listener).and_then(|l| {
                    crate::server::Server::start(
                        "metrics endpoint",
                        l,
                        crate::report::prometheus::router(live.clone()),
                        None,
                    )
                });
                match server {
                    Ok(s) => {
                        if !quiet {
                            eprintln!("metrics: http://{}/metrics", s.addr());
                        }
                        (Some(live), Some(s))
                    }
                    Err(e) => {
                        eprintln!("error: the metrics endpoint cannot serve: {e}");
                        (None, None)
                    }
                }
            }
            None => (None, None),
        };
        // The live page and its steering, for the run's whole length too.
        let (board, steering, _page) = match ui {
            Some(listener) => {
                let generated = tokens.is_empty();
                let tokens =
                    if generated { vec![("operator".to_string(), crate::steer::new_token())] } else { tokens.clone() };
                let board = std::sync::Arc::new(crate::steer::board::Board::new(&plan));
                let steering =
                    std::sync::Arc::new(crate::steer::Steering::new(&plan, tokens.clone(), Some(report_dir.clone())));
                let server = listener.local_addr().and_then(|addr| {
                    let ui = crate::steer::ui::Ui::new(board.clone(), Some(steering.clone()), addr);
                    let l = tokio::net::TcpListener::from_std(listener)?;
                    crate::server::Server::start("live page", l, crate::steer::ui::router(ui), None)
                });
                match server {
                    Ok(s) => {
                        // Asked for by name: said even with -q, or nobody could open it.
                        let host = if s.addr().ip().is_unspecified() {
                            "127.0.0.1".to_string()
                        } else {
                            s.addr().ip().to_string()
                        };
                        let host = if host.contains(':') { format!("[{host}]") } else { host };
                        if generated {
                            eprintln!("live page: http://{host}:{}/#token={}", s.addr().port(), tokens[0].1);
                            eprintln!("steering token (operator): {}", tokens[0].1);
                        } else {
                            let names: Vec<&str> = tokens.iter().map(|(n, _)| n.as_str()).collect();
                            eprintln!(
                                "live page: http://{host}:{}/ (steering tokens: {})",
                                s.addr().port(),
                                names.join(", ")
                            );
                        }
                        (Some(board), Some(steering), Some(s))
                    }
                    Err(e) => {
                        eprintln!("error: the live page cannot serve: {e}");
                        (None, None, None)
                    }
                }
            }
            None => (None, None, None),
        };
        // The workers' controller, for the run's whole length.
        let (workers, _controller) = match controller {
            Some((listener, (token, generated), n, join_timeout)) => {
                let ctl = crate::distributed::controller::Controller::new(n, token.clone());
                let server = tokio::net::TcpListener::from_std(listener).and_then(|l| {
                    crate::server::Server::start(
                        "controller",
                        l,
                        crate::distributed::controller::router(ctl.clone()),
                        None,
                    )
                });
                match server {
                    Ok(s) => {
                        ctl.served_at(s.addr().to_string());
                        // With -q only when the token was made here: the workers need it.
                        let tell = !quiet || generated;
                        let addr = s.addr();
                        let workers = if n == 1 { "1 load worker".to_string() } else { format!("{n} load workers") };
                        // With -q and a token made here, only the command to start a worker
                        // (which holds the address and the token) is said.
                        if !quiet {
                            eprintln!("controller: listening on {addr}, waiting for {workers}");
                        }
                        // The URL as workers elsewhere reach it: this machine's name when
                        // it listens on every address.
                        let host = if addr.ip().is_unspecified() {
                            std::fs::read_to_string("/etc/hostname")
                                .ok()
                                .map(|h| h.trim().to_string())
                                .filter(|h| !h.is_empty())
                                .unwrap_or_else(|| "THIS-HOST".into())
                        } else if addr.is_ipv6() {
                            format!("[{}]", addr.ip())
                        } else {
                            addr.ip().to_string()
                        };
                        let token_arg = if generated { token.clone() } else { "TOKEN".into() };
                        let index = if n == 1 { "0".to_string() } else { format!("I    (I = 0 to {})", n - 1) };
                        let port = addr.port();
                        let command = format!("stagegate worker --controller http://{host}:{port} --token={token_arg}");
                        if tell {
                            eprintln!("  start each: {command} --index {index}");
                        }
                        if tell && addr.ip().is_unspecified() {
                            eprintln!("  ({host}: this machine as the workers reach it; its name or an address of it)");
                        }
                        if tell && !generated {
                            eprintln!("  (TOKEN: the one given with --worker-token or STAGEGATE_WORKER_TOKEN)");
                        }
                        (Some((ctl, join_timeout)), Some(s))
                    }
                    Err(e) => {
                        eprintln!("error: the controller cannot serve: {e}");
                        return exit::RUN_BROKEN;
                    }
                }
            }
            None => (None, None),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let runner = {
            let plan = plan.clone();
            let out = crate::runner::Output {
                dir: Some(report_dir.clone()),
                run_id,
                live: live.clone(),
                steering: steering.clone(),
                workers,
            };
            let stop = stop.clone();
            tokio::spawn(async move { crate::runner::run(&plan, out, stop, tx).await })
        };
        let mut terminal = TerminalReporter::new(crate::report::terminal::Display::detect(quiet), plan.secrets.clone());
        let mut json = JsonReporter::new(report_dir.clone(), plan.secrets.clone());
        let mut files = FilesReporter::new(report_dir.clone(), wanted.to_vec(), plan.secrets.clone());
        // What the events told so far: the report, should the runner itself fail.
        let mut partial = crate::report::RunReport::begin(&plan, Some(report_dir.clone()));
        while let Some(event) = rx.recv().await {
            partial.follow(&event);
            if let Some(b) = &board {
                b.follow(&event);
            }
            deliver(&event, &mut json, &mut files, &mut terminal);
        }
        let report = match runner.await {
            Ok(r) => r,
            Err(e) => {
                // A panic in stagegate: the guard already lifted every fault and stopped
                // every child while unwinding; the report says what was done and why.
                let why = panic_message(e);
                partial.error = Some(format!("stagegate itself failed: {why}"));
                partial.interrupted = true;
                partial.reasons = vec![format!("the run broke: stagegate itself failed: {why}")];
                partial.finished_at = chrono::Utc::now().to_rfc3339();
                deliver(&Event::Finished(Box::new(partial.clone())), &mut json, &mut files, &mut terminal);
                partial
            }
        };
        if let Some(Err(e)) = &json.written {
            eprintln!("error: {e}");
            return exit::RUN_BROKEN;
        }
        // A format asked for and missing would leave a CI step without what it reads.
        if let Some(Err(e)) = files.written.iter().find(|w| w.is_err()) {
            eprintln!("error: {e}");
            return exit::RUN_BROKEN;
        }
        exit_code(&report)
    });
    // Nothing started by the run may keep the process alive past here.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// The files first, so that the summary can say whether they were written.
fn deliver(event: &Event, json: &mut JsonReporter, files: &mut FilesReporter, terminal: &mut TerminalReporter) {
    json.event(event);
    files.event(event);
    if matches!(event, Event::Finished(_)) {
        terminal.written = json.written.clone();
        terminal.files = files.written.clone();
    }
    terminal.event(event);
    if let Event::Judged(_, written) = event {
        written.done();
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .map_or("a panic".to_string(), |m| format!("panic: {m}")),
        Err(e) => e.to_string(),
    }
}

/// The exit code of a finished run.
fn exit_code(report: &crate::report::RunReport) -> i32 {
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
}

/// A new folder for one run under `root`, and the run's id (the folder's name):
/// `NAME-TIME`, with `-2`, `-3`... when another run took that name in the same
/// millisecond. Creating it is atomic, so two runs never share one.
fn run_folder(root: &Path, name: &str) -> std::io::Result<(PathBuf, String)> {
    run_folder_at(root, name, &chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string())
}

/// `stagegate report`: the formats asked for, from a saved report.json.
fn rerender(run_dir: &Path, wanted: &[crate::report::files::Wanted]) -> i32 {
    // The folder itself, not a link to it (`reports/latest` moves on with the next run);
    // for a report.json given as a file, its folder.
    let real = std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    let doc = match crate::report::diff::read_report(&real) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID_INPUT;
        }
    };
    let run_dir = if real.is_file() { real.parent().unwrap_or(Path::new(".")) } else { real.as_path() };
    if let Err(e) = crate::report::files::check_paths(run_dir, wanted, "--format") {
        eprintln!("error: {e}");
        return exit::INVALID_INPUT;
    }
    let mut code = 0;
    for result in crate::report::files::write_all(&doc, run_dir, wanted) {
        match result {
            Ok(path) => println!("{}", path.display()),
            Err(e) => {
                eprintln!("error: {e}");
                // What the saved report holds cannot be rendered: bad input, not a broken write.
                let bad_input = e.starts_with("cannot render");
                code = code.max(if bad_input { exit::INVALID_INPUT } else { exit::RUN_BROKEN });
            }
        }
    }
    code
}

/// `dir` as a run's folder: created if missing, refused unless empty (another run's
/// files there would mix with this one's).
fn exact_folder(dir: &Path) -> Result<(PathBuf, String), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if entries.next().is_some() {
        return Err(format!("--out {} is not empty; give an empty or new folder (or remove it first)", dir.display()));
    }
    // The run's record goes there first: a folder no file can be made in is refused now.
    let probe = dir.join(format!(".stagegate-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("--out {}: cannot write in it: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    let id = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "run".into());
    Ok((dir.to_path_buf(), id))
}

/// Points `ROOT/latest` at the run `id` (a relative link, replaced atomically), so a CI
/// job or a person finds the newest run without globbing. Best effort: a file system
/// without links just has none.
fn point_latest(root: &Path, id: &str, quiet: bool) {
    let link = root.join("latest");
    // Something of the user's own by that name is left alone.
    if std::fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
        if quiet {
            return;
        }
        eprintln!(
            "warning: {} is not a link stagegate made; left as it is, so it does not name this run",
            link.display()
        );
        return;
    }
    let staged = root.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&staged);
    let made = std::os::unix::fs::symlink(id, &staged).and_then(|()| std::fs::rename(&staged, &link));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&staged);
        tracing::debug!(error = %e, "no `latest` link");
    }
}

fn run_folder_at(root: &Path, name: &str, stamp: &str) -> std::io::Result<(PathBuf, String)> {
    std::fs::create_dir_all(root)?;
    for n in 1..10_000 {
        let id = if n == 1 { format!("{name}-{stamp}") } else { format!("{name}-{stamp}-{n}") };
        let dir = root.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((dir, id)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free folder name"))
}

/// The first Ctrl-C (SIGINT) or SIGTERM stops the run in order (`doing` says what
/// happens); a second one stops it at once, faults still lifted and children stopped.
///
/// The handlers are in place when this returns, and a thread of its own takes the
/// signals: one that arrives before anything else runs, or while the runtime's threads
/// are busy, is never lost.
fn watch_signals(stop: Shutdown, doing: &'static str) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("stagegate-signals".into()).spawn(move || {
        let mut received = 0;
        for signal in signals.forever() {
            let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
            received += 1;
            // Not `eprintln!`: a closed stderr must not keep the run from stopping.
            if received == 1 {
                let _ = writeln!(std::io::stderr(), "stagegate: {name} received; {doing}");
                stop.cancel.cancel();
            } else {
                let _ = writeln!(std::io::stderr(), "stagegate: {name} received again; stopping now");
                stop.cancel.cancel();
                stop.force.cancel();
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: two runs started in the same millisecond shared a report folder (one
    /// report lost, run.json overwritten).
    #[test]
    fn two_runs_started_in_the_same_millisecond_get_folders_of_their_own() {
        let root = tempfile::tempdir().unwrap();
        let stamp = "20261130T120000.000Z";
        let (a, id_a) = run_folder_at(root.path(), "quick", stamp).unwrap();
        let (b, id_b) = run_folder_at(root.path(), "quick", stamp).unwrap();
        assert_ne!(a, b);
        assert_eq!((id_a.as_str(), id_b.as_str()), ("quick-20261130T120000.000Z", "quick-20261130T120000.000Z-2"));
        assert!(a.is_dir() && b.is_dir());
    }
}
