//! Scenarios: from a YAML file to a checked [`Plan`].
//!
//! [`load`] reads the file into the raw `spec` types (shape only), then `compile`
//! checks every value and cross-reference, gathering every mistake before it stops,
//! and builds the typed [`Plan`] the runner executes. Each mistake is a
//! [`Diagnostic`] naming file, line:column, key path and a hint. No YAML type leaves
//! this module.

pub mod diag;
mod spec;
pub mod units;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::data::Schema;
use crate::deps::{BuiltinDependency, Dependency, Provision};
use crate::fault::{Direction, Fault, FaultKind, Place, Schedule};
use crate::flags::{Category, FlagDef, FlagSet, FlagType, Provider};
use crate::sut::{BuiltinTarget, Target};
use crate::verdict::{Criterion, DEFAULT_MIN_SAMPLES, Level, parse_check};
use crate::workload::{Arrival, Workload};

pub use diag::{Diagnostic, Diagnostics};
use spec::{CriterionMapSpec, FaultSpec, ScenarioSpec, Text};
use yaml::{Locations, join_index, join_key};

/// A checked scenario, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The scenario file.
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// The seed every random stream derives from.
    pub seed: u64,
    pub target: Target,
    pub dependencies: Vec<Dependency>,
    pub flags: FlagSet,
    pub workload: Workload,
    pub stages: Vec<Stage>,
    pub criteria: Vec<Criterion>,
    /// Things worth knowing that do not stop the run (an expired flag, say).
    pub warnings: Vec<String>,
}

/// One checked stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    /// The stage's flag values (defaults filled in).
    pub flags: BTreeMap<String, Value>,
    pub faults: Vec<Fault>,
}

/// Reads and checks the scenario at `file`. `seed` overrides the file's seed.
pub fn load(file: &Path, seed: Option<u64>) -> Result<Plan, Diagnostics> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read the scenario: {e}"),
            hint: None,
        }])
    })?;
    let (spec, loc) = yaml::parse::<ScenarioSpec>(file, &text)?;
    let mut ctx = Ctx {
        file,
        loc: &loc,
        errors: Vec::new(),
    };
    let plan = compile(&mut ctx, spec, seed);
    match plan {
        Some(plan) if ctx.errors.is_empty() => Ok(plan),
        _ => Err(Diagnostics(ctx.errors).sorted()),
    }
}

/// Gathers diagnostics while compiling.
struct Ctx<'a> {
    file: &'a Path,
    loc: &'a Locations,
    errors: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.loc.value(path);
        self.errors.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
            hint: None,
        });
        self.errors.last_mut().expect("just pushed")
    }

    /// Parses an optional unit-bearing value, reporting at `path` on failure.
    fn unit<T>(
        &mut self,
        path: &str,
        text: Option<&Text>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = text?;
        match parse(&text.0) {
            Ok(v) => Some(v),
            Err(hint) => {
                self.error(path, format!("invalid value `{}`", text.0)).hint = Some(hint);
                None
            }
        }
    }

    /// Reports `name` as unknown among `valid`, with the nearest as a hint.
    fn unknown(&mut self, path: &str, what: &str, name: &str, valid: &[&str]) {
        let listed = valid
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = match diag::nearest(name, valid.iter().copied()) {
            Some(best) => format!("did you mean `{best}`? (known: {listed})"),
            None if valid.is_empty() => "none is defined".to_string(),
            None => format!("known: {listed}"),
        };
        self.error(path, format!("unknown {what} `{name}`")).hint = Some(hint);
    }
}

/// Checks every part of the spec; returns `None` if a part could not be built at all.
fn compile(ctx: &mut Ctx, spec: ScenarioSpec, seed: Option<u64>) -> Option<Plan> {
    if spec.version != 1 {
        ctx.error(
            "version",
            format!("unsupported format version {}", spec.version),
        )
        .hint = Some("this stagegate reads `version: 1`".into());
    }
    if spec.name.trim().is_empty() || spec.name.contains(['/', '\\']) {
        ctx.error(
            "name",
            "a scenario name must be non-empty and contain no slashes",
        );
    }
    let target = compile_target(ctx, &spec);
    let dependencies = compile_dependencies(ctx, &spec);
    let flags = compile_flags(ctx, &spec);
    let workload = compile_workload(ctx, &spec);
    let dep_names: Vec<&str> = spec.dependencies.keys().map(String::as_str).collect();
    let stage_len = workload.as_ref().map(|w| w.duration);
    let mut stages = Vec::new();
    let mut seen = BTreeSet::new();
    if spec.stages.is_empty() {
        ctx.error("stages", "a scenario needs at least one stage");
    }
    for (i, st) in spec.stages.iter().enumerate() {
        let at = join_index("stages", i);
        if !seen.insert(st.name.clone()) {
            ctx.error(
                &join_key(&at, "name"),
                format!("stage `{}` is defined twice", st.name),
            );
        }
        let mut values = BTreeMap::new();
        for (key, value) in &st.flags {
            let path = join_key(&join_key(&at, "flags"), key);
            match flags
                .as_ref()
                .and_then(|f| f.definitions.iter().find(|d| &d.key == key))
            {
                Some(def) if def.kind.admits(value) => {
                    values.insert(key.clone(), value.clone());
                }
                Some(def) if value.is_object() => {
                    ctx.error(&path, format!("fractional exposure is not available in this version; set `{key}` to one {:?} value", def.kind))
                        .hint = Some(format!("e.g. `{key}: {}`", def.default));
                }
                Some(def) => {
                    ctx.error(
                        &path,
                        format!("flag `{key}` is {:?}, got {value}", def.kind).to_lowercase(),
                    );
                }
                None => {
                    let known: Vec<&str> = flags
                        .iter()
                        .flat_map(|f| f.definitions.iter().map(|d| d.key.as_str()))
                        .collect();
                    ctx.unknown(&path, "flag", key, &known);
                }
            }
        }
        let mut faults = Vec::new();
        for (j, f) in st.faults.iter().enumerate() {
            let path = join_index(&join_key(&at, "faults"), j);
            if let Some(fault) = compile_fault(ctx, &path, f, &dep_names, stage_len) {
                faults.push(fault);
            }
        }
        let state = flags.as_ref().map(|f| f.state(&values)).unwrap_or_default();
        stages.push(Stage {
            name: st.name.clone(),
            flags: state,
            faults,
        });
    }
    let stage_names: Vec<&str> = spec.stages.iter().map(|s| s.name.as_str()).collect();
    let criteria = compile_criteria(ctx, &spec.criteria, &stage_names);
    let mut warnings = Vec::new();
    if let Some(f) = &flags {
        let today = chrono::Utc::now().date_naive();
        for d in &f.definitions {
            if let Some(exp) = d.expires.filter(|e| *e < today) {
                warnings.push(format!(
                    "flag `{}` expired on {exp}; remove it or move its date",
                    d.key
                ));
            }
        }
    }
    Some(Plan {
        file: ctx.file.to_path_buf(),
        name: spec.name,
        description: spec.description,
        seed: seed.or(spec.seed).unwrap_or_else(rand::random),
        target: target?,
        dependencies,
        flags: flags?,
        workload: workload?,
        stages,
        criteria,
        warnings,
    })
}

fn compile_target(ctx: &mut Ctx, spec: &ScenarioSpec) -> Option<Target> {
    let Some(name) = &spec.target.builtin else {
        ctx.error("target", "a target needs `builtin`").hint =
            Some("e.g. `target: { builtin: orders-pipeline }`".into());
        return None;
    };
    match BuiltinTarget::ALL.iter().find(|(n, _)| n == name) {
        Some((_, t)) => {
            let (needed, _) = t.needs();
            let has = spec.dependencies.values().any(|d| {
                d.builtin.as_deref()
                    == BuiltinDependency::ALL
                        .iter()
                        .find(|(_, k)| *k == needed)
                        .map(|(n, _)| *n)
            });
            if !has {
                ctx.error(
                    "dependencies",
                    format!("the builtin target `{name}` needs a `kv-store` dependency"),
                )
                .hint = Some("add `dependencies: { store: { builtin: kv-store } }`".into());
            }
            Some(Target::Builtin(*t))
        }
        None => {
            let valid: Vec<&str> = BuiltinTarget::ALL.iter().map(|(n, _)| *n).collect();
            ctx.unknown("target.builtin", "builtin target", name, &valid);
            None
        }
    }
}

fn compile_dependencies(ctx: &mut Ctx, spec: &ScenarioSpec) -> Vec<Dependency> {
    let mut out = Vec::new();
    for (name, d) in &spec.dependencies {
        let at = join_key("dependencies", name);
        let Some(kind) = &d.builtin else {
            ctx.error(&at, "a dependency needs `builtin`").hint =
                Some("e.g. `{ builtin: kv-store }`".into());
            continue;
        };
        match BuiltinDependency::ALL.iter().find(|(n, _)| n == kind) {
            Some((_, b)) => out.push(Dependency {
                name: name.clone(),
                provision: Provision::Builtin(*b),
            }),
            None => {
                let valid: Vec<&str> = BuiltinDependency::ALL.iter().map(|(n, _)| *n).collect();
                ctx.unknown(
                    &join_key(&at, "builtin"),
                    "builtin dependency",
                    kind,
                    &valid,
                );
            }
        }
    }
    out
}

fn compile_flags(ctx: &mut Ctx, spec: &ScenarioSpec) -> Option<FlagSet> {
    let Some(f) = &spec.flags else {
        return Some(FlagSet::default());
    };
    let mut ok = true;
    let provider = match f.provider.as_deref() {
        None | Some("ofrep") => Provider::Ofrep,
        Some(other @ ("flagd-file" | "header" | "env")) => {
            ctx.error(
                "flags.provider",
                format!("the `{other}` flag provider is not available in this version"),
            )
            .hint = Some("use `ofrep`".into());
            ok = false;
            Provider::Ofrep
        }
        Some(other) => {
            ctx.unknown(
                "flags.provider",
                "flag provider",
                other,
                &["ofrep", "flagd-file", "header", "env"],
            );
            ok = false;
            Provider::Ofrep
        }
    };
    let mut definitions = Vec::new();
    for (key, d) in &f.definitions {
        let at = join_key("flags.definitions", key);
        let kind = match d.kind.as_str() {
            "boolean" => FlagType::Boolean,
            "string" => FlagType::String,
            "integer" => FlagType::Integer,
            "number" => FlagType::Number,
            "object" => FlagType::Object,
            other => {
                ctx.unknown(
                    &join_key(&at, "type"),
                    "flag type",
                    other,
                    &["boolean", "string", "integer", "number", "object"],
                );
                ok = false;
                continue;
            }
        };
        if !kind.admits(&d.default) {
            ctx.error(
                &join_key(&at, "default"),
                format!("the default {} is not a {}", d.default, d.kind),
            );
            ok = false;
        }
        let category = match d.category.as_deref() {
            None => None,
            Some("operational") => Some(Category::Operational),
            Some("experimental") => Some(Category::Experimental),
            Some("release") => Some(Category::Release),
            Some("permission") => Some(Category::Permission),
            Some(other) => {
                ctx.unknown(
                    &join_key(&at, "category"),
                    "category",
                    other,
                    &["operational", "experimental", "release", "permission"],
                );
                ok = false;
                None
            }
        };
        let expires = match &d.expires {
            None => None,
            Some(t) => match chrono::NaiveDate::parse_from_str(&t.0, "%Y-%m-%d") {
                Ok(date) => Some(date),
                Err(_) => {
                    ctx.error(&join_key(&at, "expires"), format!("invalid date `{}`", t.0))
                        .hint = Some("expected a date like `2027-03-01`".into());
                    ok = false;
                    None
                }
            },
        };
        definitions.push(FlagDef {
            key: key.clone(),
            kind,
            default: d.default.clone(),
            category,
            owner: d.owner.clone(),
            expires,
        });
    }
    ok.then_some(FlagSet {
        provider,
        definitions,
    })
}

fn compile_workload(ctx: &mut Ctx, spec: &ScenarioSpec) -> Option<Workload> {
    let w = &spec.workload;
    let base = ctx.file.parent().unwrap_or(Path::new("."));
    let data_file = base.join(&w.data);
    let schema = match Schema::load(&data_file) {
        Ok(s) => Some(Arc::new(s)),
        Err(Diagnostics(errors)) => {
            if errors.iter().any(|d| d.line == 0) {
                ctx.error(
                    "workload.data",
                    format!("cannot read the data schema `{}`", data_file.display()),
                )
                .hint = Some("the path is relative to the scenario file".into());
            } else {
                ctx.errors.extend(errors);
            }
            None
        }
    };
    let arrival = match &w.arrival.rate {
        Some(rate) => ctx
            .unit("workload.arrival.rate", Some(rate), units::parse_rate)
            .and_then(|r| {
                if r > 0.0 {
                    Some(Arrival::Rate(r))
                } else {
                    ctx.error("workload.arrival.rate", "the rate must be above zero");
                    None
                }
            }),
        None => {
            ctx.error("workload.arrival", "an arrival model needs `rate`")
                .hint = Some("e.g. `arrival: { rate: 200/s }`".into());
            None
        }
    };
    let duration = ctx.unit(
        "workload.duration",
        Some(&w.duration),
        units::parse_duration,
    );
    let warmup = ctx
        .unit("workload.warmup", w.warmup.as_ref(), units::parse_duration)
        .or(w.warmup.is_none().then_some(Duration::ZERO));
    let timeout = ctx
        .unit(
            "workload.timeout",
            w.timeout.as_ref(),
            units::parse_duration,
        )
        .or(w.timeout.is_none().then_some(Duration::from_secs(2)));
    if let (Some(d), Some(wu)) = (duration, warmup)
        && wu >= d
    {
        ctx.error(
            "workload.warmup",
            format!(
                "the warm-up ({}) leaves nothing to judge in a {} stage",
                units::format_duration(wu),
                units::format_duration(d)
            ),
        );
    }
    if duration.is_some_and(|d| d.is_zero()) {
        ctx.error("workload.duration", "a stage must last longer than zero");
    }
    Some(Workload {
        schema: schema?,
        data_file,
        arrival: arrival?,
        duration: duration?,
        warmup: warmup?,
        timeout: timeout?,
    })
}

const FAULT_KINDS: [&str; 4] = ["latency", "refuse", "blackhole", "reset"];
const LATER_FAULT_KINDS: [&str; 12] = [
    "bandwidth",
    "slow_close",
    "slicer",
    "limit_data",
    "corrupt",
    "http_error",
    "kill",
    "pause",
    "malformed",
    "duplicate",
    "out_of_order",
    "late",
];

fn compile_fault(
    ctx: &mut Ctx,
    path: &str,
    f: &FaultSpec,
    deps: &[&str],
    stage: Option<Duration>,
) -> Option<Fault> {
    let mut ok = true;
    if !deps.contains(&f.at.as_str()) {
        ctx.unknown(&join_key(path, "at"), "dependency", &f.at, deps);
        ok = false;
    }
    let kind = match f.kind.as_str() {
        "latency" => {
            let delay = ctx.unit(
                &join_key(path, "delay"),
                f.delay.as_ref(),
                units::parse_duration,
            );
            if f.delay.is_none() {
                ctx.error(path, "a latency fault needs `delay`").hint =
                    Some("e.g. `delay: 100ms`".into());
            }
            let jitter = ctx
                .unit(
                    &join_key(path, "jitter"),
                    f.jitter.as_ref(),
                    units::parse_duration,
                )
                .unwrap_or_default();
            delay.map(|delay| FaultKind::Latency { delay, jitter })
        }
        "refuse" => Some(FaultKind::Refuse),
        "blackhole" => Some(FaultKind::Blackhole),
        "reset" => Some(FaultKind::Reset { after: f.after }),
        other if LATER_FAULT_KINDS.contains(&other) => {
            ctx.error(
                &join_key(path, "kind"),
                format!("the `{other}` fault is not available in this version"),
            )
            .hint = Some(format!("available kinds: {}", FAULT_KINDS.join(", ")));
            None
        }
        other => {
            ctx.unknown(&join_key(path, "kind"), "fault kind", other, &FAULT_KINDS);
            None
        }
    };
    // Parameters that do not belong to this kind are mistakes, not silently ignored.
    let given = [
        ("delay", f.delay.is_some()),
        ("jitter", f.jitter.is_some()),
        ("after", f.after.is_some()),
    ];
    let allowed: &[&str] = match f.kind.as_str() {
        "latency" => &["delay", "jitter"],
        "reset" => &["after"],
        _ => &[],
    };
    for (name, present) in given {
        if present && !allowed.contains(&name) && FAULT_KINDS.contains(&f.kind.as_str()) {
            ctx.error(
                &join_key(path, name),
                format!("`{name}` does not apply to a {} fault", f.kind),
            );
            ok = false;
        }
    }
    let from = ctx
        .unit(
            &join_key(path, "from"),
            f.from.as_ref(),
            units::parse_duration,
        )
        .unwrap_or_default();
    let length = ctx.unit(
        &join_key(path, "for"),
        f.length.as_ref(),
        units::parse_duration,
    );
    let every = ctx.unit(
        &join_key(path, "every"),
        f.every.as_ref(),
        units::parse_duration,
    );
    if let Some(stage) = stage
        && from >= stage
    {
        ctx.error(
            &join_key(path, "from"),
            format!(
                "starts at {} but the stage lasts {}",
                units::format_duration(from),
                units::format_duration(stage)
            ),
        );
        ok = false;
    }
    if let Some(period) = every {
        match length {
            Some(len) if len < period => {}
            _ => {
                ctx.error(
                    &join_key(path, "every"),
                    "a repeating fault needs a `for` shorter than its `every`",
                );
                ok = false;
            }
        }
    }
    let probability = ctx
        .unit(
            &join_key(path, "probability"),
            f.probability.as_ref(),
            units::parse_fraction,
        )
        .unwrap_or(1.0);
    let direction = match f.direction.as_deref() {
        None | Some("both") => Direction::Both,
        Some("upstream") => Direction::Upstream,
        Some("downstream") => Direction::Downstream,
        Some(other) => {
            ctx.unknown(
                &join_key(path, "direction"),
                "direction",
                other,
                &["upstream", "downstream", "both"],
            );
            ok = false;
            Direction::Both
        }
    };
    let kind = kind?;
    ok.then(|| Fault {
        kind,
        at: Place::Dependency(f.at.clone()),
        schedule: Schedule {
            from,
            length,
            every,
        },
        probability,
        direction,
    })
}

fn compile_criteria(ctx: &mut Ctx, raw: &[Value], stages: &[&str]) -> Vec<Criterion> {
    let mut out = Vec::new();
    for (i, value) in raw.iter().enumerate() {
        let at = join_index("criteria", i);
        let (text, spec_stages, level, min_samples, check_path) = match value {
            Value::String(s) => (
                s.clone(),
                None,
                Level::Enforce,
                DEFAULT_MIN_SAMPLES,
                at.clone(),
            ),
            Value::Object(_) => {
                let m: CriterionMapSpec =
                    match yaml::parse_value(ctx.file, ctx.loc, &at, value.clone()) {
                        Ok(m) => m,
                        Err(d) => {
                            ctx.errors.push(d);
                            continue;
                        }
                    };
                let level = match m.level.as_deref() {
                    None | Some("enforce") => Level::Enforce,
                    Some("warn") => Level::Warn,
                    Some("observe") => Level::Observe,
                    Some(other) => {
                        ctx.unknown(
                            &join_key(&at, "level"),
                            "level",
                            other,
                            &["enforce", "warn", "observe"],
                        );
                        continue;
                    }
                };
                if let Some(list) = &m.stages {
                    for (j, s) in list.iter().enumerate() {
                        if !stages.contains(&s.as_str()) {
                            ctx.unknown(
                                &join_index(&join_key(&at, "stages"), j),
                                "stage",
                                s,
                                stages,
                            );
                        }
                    }
                }
                (
                    m.check,
                    m.stages,
                    level,
                    m.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES),
                    join_key(&at, "check"),
                )
            }
            other => {
                ctx.error(&at, format!("a criterion is a string or a map, got {other}")).hint =
                    Some("e.g. `- latency.p99 < 250ms` or `- { check: \"errors.rate < 1%\", stages: [candidate] }`".into());
                continue;
            }
        };
        match parse_check(&text) {
            Ok(check) => out.push(Criterion {
                check,
                stages: spec_stages,
                level,
                min_samples,
            }),
            Err(hint) => {
                ctx.error(&check_path, format!("invalid check `{text}`"))
                    .hint = Some(hint);
            }
        }
    }
    out
}
