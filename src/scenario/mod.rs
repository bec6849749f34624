//! Scenarios: from a YAML file to a checked [`Plan`].
//!
//! [`load`] interpolates the environment into the text, reads it into a document,
//! applies `--set` overrides, then `compile` reads each part into the raw `spec` types
//! and checks every value and cross-reference, gathering every mistake before it stops.
//! Each mistake is a [`Diagnostic`] naming file, line:column, key path and a hint. The
//! result is the typed [`Plan`] the runner executes; no YAML type leaves this module.

mod compile;
pub mod diag;
mod interpolate;
pub mod overrides;
pub mod pairwise;
pub mod schema;
mod spec;
pub mod units;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::deps::Dependency;
use crate::fault::Fault;
use crate::flags::{FlagSet, FlagState};
use crate::sut::Target;
use crate::verdict::Criterion;
use crate::workload::Workload;

pub use compile::Ctx;
pub use compile::matrix::Mode as MatrixMode;
pub use compile::{MAX_LIVE_FAULT_TTL, live_fault};
pub use diag::{Diagnostic, Diagnostics};
pub use overrides::Override;

/// A checked scenario, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The scenario file.
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// The seed every random stream derives from.
    pub seed: u64,
    /// Where the seed came from: `file`, `--seed`, or `random`.
    pub seed_source: String,
    pub target: Target,
    pub dependencies: Vec<Dependency>,
    pub flags: FlagSet,
    pub workload: Workload,
    pub stages: Vec<Stage>,
    pub criteria: Vec<Criterion>,
    pub on_verdict: OnVerdict,
    /// How far behind its schedule stagegate may fall before timing is not trusted.
    pub health: crate::measure::lateness::HealthLimits,
    /// The verdict of a run an operator aborts from the steering API (`steering.on_abort`)
    /// when nothing measured already fails.
    pub on_abort: crate::verdict::Verdict,
    /// The system's own metrics, when the scenario reads them (`metrics:`).
    pub metrics: Option<crate::measure::prom::PromSource>,
    /// Things worth knowing that do not stop the run (an expired flag, say).
    pub warnings: Vec<String>,
    /// Every `--set` applied, as written.
    pub overrides: Vec<String>,
    /// The values of every `${secret:NAME}`: masked in everything written, never
    /// serialised.
    #[serde(skip)]
    pub secrets: crate::secrets::Secrets,
}

/// One checked stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    /// Every flag's state in this stage (defaults filled in).
    pub flags: BTreeMap<String, FlagState>,
    pub faults: Vec<Fault>,
    /// How long the stage runs, warm-up included: `workload.duration`, or an exposure
    /// step's `hold`.
    #[serde(with = "crate::report::serde_duration")]
    pub duration: std::time::Duration,
    /// Set on each step of a progressive exposure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure: Option<ExposureStep>,
    /// Set on each cell of a flag matrix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<MatrixCell>,
}

/// One cell of a flag matrix (`matrix:` in a stage): a stage of its own, named by its
/// values (`combos(new-enricher=true, faults=slow-store)`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatrixCell {
    /// The stage as written, which the cells expand.
    pub group: String,
    pub mode: MatrixMode,
    /// Each dimension (a flag's key, or `faults`) and this cell's value, as named.
    pub values: Vec<(String, String)>,
    /// This cell's position (0-based) and the number of cells.
    pub index: usize,
    pub cells: usize,
    /// The cells the full product would have had.
    pub product: u128,
}

/// One step of a progressive exposure (`exposure:` in a stage): a stage of its own,
/// named `STAGE@SHARE` (`rollout@10%`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExposureStep {
    /// The stage as written, which the steps expand.
    pub group: String,
    pub flag: String,
    /// The value exposed; the rest sees the flag's default.
    pub value: serde_json::Value,
    /// The share of records exposed in this step, 0 to 1.
    pub share: f64,
    /// This step's position (0-based) among `steps`.
    pub index: usize,
    pub steps: usize,
}

impl ExposureStep {
    /// The variant label of the exposed cohort, as the stage's per-variant metrics
    /// name it (`new-enricher=true`).
    pub fn cohort(&self) -> String {
        format!("{}={}", self.flag, self.value)
    }
}

/// The name of an exposure step: the stage's name and the share (`rollout@10%`).
pub fn step_name(group: &str, share: f64) -> String {
    format!("{group}@{}", units::format_share(share))
}

/// The checked `on_verdict` section: a command per verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OnVerdict {
    pub promote: Option<Vec<String>>,
    pub rollback: Option<Vec<String>>,
    pub inconclusive: Option<Vec<String>>,
}

impl OnVerdict {
    /// The command for `verdict`, if the scenario gives one.
    pub fn command(&self, verdict: crate::verdict::Verdict) -> Option<&Vec<String>> {
        match verdict {
            crate::verdict::Verdict::Promote => self.promote.as_ref(),
            crate::verdict::Verdict::Rollback => self.rollback.as_ref(),
            crate::verdict::Verdict::Inconclusive => self.inconclusive.as_ref(),
        }
    }
}

/// Looks up an environment variable by name.
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String>>;

/// Per-run settings that shape how a scenario loads.
pub struct LoadOptions {
    /// Overrides the file's seed.
    pub seed: Option<u64>,
    /// `--set` overrides, applied in order.
    pub overrides: Vec<Override>,
    /// Looks up environment variables (the process environment by default).
    pub env: EnvLookup,
    /// Today's date, for flag expiry warnings.
    pub today: chrono::NaiveDate,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            seed: None,
            overrides: Vec::new(),
            env: Box::new(|name| std::env::var(name).ok()),
            today: chrono::Utc::now().date_naive(),
        }
    }
}

/// `path` made absolute with `.` and `..` worked out, as a user would look for it: the
/// path a "cannot read" message names.
pub fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn unreadable(file: &Path, what: &str, e: &std::io::Error) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        path: String::new(),
        message: format!("cannot read the {what}: {e}"),
        hint: None,
    }])
}

/// Reads and checks the scenario at `file` (at most [`crate::limits::SCENARIO_BYTES`]).
pub fn load(file: &Path, options: &LoadOptions) -> Result<Plan, Diagnostics> {
    let text = crate::limits::read_bounded(file, crate::limits::SCENARIO_BYTES)
        .map_err(|e| unreadable(file, "scenario", &e))?;
    load_str(file, &text, options)
}

/// Checks a scenario given as text; `file` names it in messages and anchors relative
/// paths. Secret values never show in the diagnostics.
pub fn load_str(file: &Path, text: &str, options: &LoadOptions) -> Result<Plan, Diagnostics> {
    let interpolated = interpolate::interpolate(file, text, &*options.env).map_err(|e| Diagnostics(e).sorted())?;
    short_secrets(file, &interpolated)?;
    let secrets = crate::secrets::Secrets::new(interpolated.secrets());
    load_interpolated(file, &interpolated, options, &secrets).map_err(|Diagnostics(list)| {
        Diagnostics(
            list.into_iter()
                .map(|mut d| {
                    d.message = secrets.mask(&d.message);
                    d.hint = d.hint.map(|h| secrets.mask(&h));
                    d
                })
                .collect(),
        )
    })
}

fn load_interpolated(
    file: &Path,
    interpolated: &interpolate::Interpolated,
    options: &LoadOptions,
    secrets: &crate::secrets::Secrets,
) -> Result<Plan, Diagnostics> {
    let (mut doc, locations) = yaml::to_value(file, &interpolated.text)?;
    interpolate::substitute(&mut doc, &interpolated.references);
    let mut errors = Vec::new();
    for o in &options.overrides {
        if let Err(message) = overrides::apply(&mut doc, o) {
            errors.push(Diagnostic {
                file: PathBuf::from(format!("--set {}", o.text)),
                line: 0,
                column: 0,
                path: o.path.clone(),
                message,
                hint: None,
            });
        }
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    let result = compile::compile(file, &locations, doc, options, secrets.clone()).and_then(|plan| {
        named_by_secrets(file, &locations, &plan)?;
        Ok(plan)
    });
    result.map_err(|Diagnostics(list)| {
        // A mistake in an overridden value belongs to the command line, not the file.
        let relabelled = list
            .into_iter()
            .map(|mut d| {
                if let Some(o) = overridden(&options.overrides, &locations, &d.path) {
                    d.file = PathBuf::from(format!("--set {}", o.text));
                    d.line = 0;
                    d.column = 0;
                }
                d
            })
            .collect();
        Diagnostics(relabelled).sorted()
    })
}

/// Refuses a secret in a name that becomes a folder or file name (the scenario's, a
/// dependency's) or that reports print as a heading (a stage's): masking cannot reach a
/// path on disk.
fn named_by_secrets(file: &Path, locations: &yaml::Locations, plan: &Plan) -> Result<(), Diagnostics> {
    if plan.secrets.is_empty() {
        return Ok(());
    }
    let holds_secret = |text: &str| plan.secrets.mask(text) != text;
    let mut named: Vec<(String, bool)> = vec![("name".to_string(), holds_secret(&plan.name))];
    named.extend(plan.dependencies.iter().map(|d| (yaml::join_key("dependencies", &d.name), holds_secret(&d.name))));
    named.extend(
        plan.stages
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{}.name", yaml::join_index("stages", i)), holds_secret(&s.name))),
    );
    let errors: Vec<Diagnostic> = named
        .into_iter()
        .filter(|(_, secret)| *secret)
        .map(|(path, _)| {
            let pos = if path.starts_with("dependencies.") { locations.key(&path) } else { locations.value(&path) };
            Diagnostic {
                file: file.to_path_buf(),
                line: pos.line,
                column: pos.column,
                path,
                message: "a name cannot hold a secret: names become folder and file names, which masking cannot reach"
                    .into(),
                hint: Some("use `${NAME}` for a value that is no secret".into()),
            }
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(Diagnostics(errors)) }
}

/// Refuses secrets too short to mask: a secret is masked wherever it shows in
/// stagegate's output, and one of a few characters would mask ordinary words and
/// numbers (and so give itself away). Said once per secret, at its first reference; the
/// rest of the file is not checked until it is fixed.
fn short_secrets(file: &Path, interpolated: &interpolate::Interpolated) -> Result<(), Diagnostics> {
    let mut named = std::collections::BTreeSet::new();
    let short: Vec<Diagnostic> = interpolated
        .references
        .iter()
        .filter(|r| r.secret && r.value.chars().count() < crate::secrets::MIN_LEN && named.insert(r.name.clone()))
        .map(|r| Diagnostic {
            file: file.to_path_buf(),
            line: r.line,
            column: r.column,
            path: String::new(),
            message: format!(
                "secret `{}` is shorter than {} characters: masking it would garble stagegate's output",
                r.name,
                crate::secrets::MIN_LEN
            ),
            hint: Some(
                "a secret is masked wherever it appears; use a longer value, or `${NAME}` if it is no secret".into(),
            ),
        })
        .collect();
    if short.is_empty() { Ok(()) } else { Err(Diagnostics(short)) }
}

/// Whether key path `path` is `root` or lies inside it.
/// The override that set the value at `path`, if one did: the path is under the
/// override's, or is a key the file never had that the override's path created.
pub(crate) fn overridden<'a>(
    overrides: &'a [Override],
    locations: &yaml::Locations,
    path: &str,
) -> Option<&'a Override> {
    let created = |o: &&Override| under(&o.path, path) && !locations.has_key(path);
    overrides.iter().rev().find(|o| under(path, &o.path) || created(o))
}

fn under(path: &str, root: &str) -> bool {
    path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

impl Plan {
    /// The scenario's folder, which relative paths start from (`.` for a bare file name).
    pub fn dir(&self) -> PathBuf {
        match self.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}
