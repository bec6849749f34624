//! From the parsed document to a [`Plan`]: every check the format asks for, with every
//! mistake gathered before giving up.
//!
//! Each part of the document is read on its own (each stage, fault, criterion,
//! dependency and flag), so a mistake in one does not hide the mistakes in the next.
//! Values are then checked (units, ranges) and cross-checked (a fault `at` an unknown
//! dependency, a criterion on an unknown stage). One file per section of the format:
//! [`target`], [`deps`], [`flags`], [`workload`], [`stages`] (with [`faults`]) and
//! [`criteria`] (with `on_verdict`); this one holds the context that gathers mistakes
//! and puts the sections together.

mod criteria;
mod deps;
mod faults;
mod flags;
pub mod matrix;
mod stages;
mod target;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::diag::{Diagnostic, Diagnostics, nearest};
use super::spec::*;
use super::yaml::{self, Locations, join_key};
use super::{LoadOptions, Plan, units};
use crate::measure::lateness::HealthLimits;
use crate::secrets::Secrets;
use crate::verdict::Verdict;

/// Gathers diagnostics (and warnings) while checking a file, each located by key path.
pub struct Ctx<'a> {
    pub file: &'a Path,
    pub loc: &'a Locations,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<String>,
    /// The `--set` overrides applied to the document: a warning about a value one of
    /// them set points at it, not at the file.
    pub overrides: &'a [crate::scenario::Override],
    /// Stages whose exposure or matrix could not be expanded (their mistake is
    /// reported): a criterion naming one is not reported again as naming no stage.
    pub broken_stages: Vec<String>,
}

impl Ctx<'_> {
    pub fn error(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
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

    pub fn warn(&mut self, path: &str, message: impl std::fmt::Display) {
        if let Some(o) = crate::scenario::overridden(self.overrides, self.loc, path) {
            self.warnings.push(format!("--set {}: `{path}`: {message}", o.text));
            return;
        }
        let pos = self.loc.value(path);
        self.warnings.push(format!("{}:{}:{}: `{path}`: {message}", self.file.display(), pos.line, pos.column));
    }

    /// Reads one part of the document into its raw type, reporting a shape mistake.
    pub fn read<T: DeserializeOwned>(&mut self, path: &str, value: &Value) -> Option<T> {
        match yaml::parse_value::<T>(self.file, self.loc, path, value.clone()) {
            Ok(v) => Some(v),
            Err(d) => {
                self.errors.push(d);
                None
            }
        }
    }

    /// Parses an optional unit-bearing value, reporting at `path` on failure.
    pub fn unit<T>(&mut self, path: &str, text: Option<&Text>, parse: fn(&str) -> Result<T, String>) -> Option<T> {
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
    pub fn unknown(&mut self, path: &str, what: &str, name: &str, valid: &[&str]) {
        let listed = valid.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
        let hint = match nearest(name, valid.iter().copied()) {
            Some(best) => format!("did you mean `{best}`? (known: {listed})"),
            None if valid.is_empty() => "none is defined".to_string(),
            None => format!("known: {listed}"),
        };
        self.error(path, format!("unknown {what} `{name}`")).hint = Some(hint);
    }
}

const TOP_KEYS: [&str; 14] = [
    "version",
    "name",
    "description",
    "seed",
    "target",
    "dependencies",
    "flags",
    "workload",
    "stages",
    "criteria",
    "on_verdict",
    "health",
    "steering",
    "metrics",
];

pub(in crate::scenario) fn compile(
    file: &Path,
    loc: &Locations,
    doc: Value,
    options: &LoadOptions,
    secrets: Secrets,
) -> Result<Plan, Diagnostics> {
    let mut ctx = Ctx {
        file,
        loc,
        errors: Vec::new(),
        warnings: Vec::new(),
        overrides: &options.overrides,
        broken_stages: Vec::new(),
    };
    let Value::Object(root) = doc else {
        ctx.error("", "a scenario is a map of keys (version, name, target, workload, stages, ...)");
        return Err(Diagnostics(ctx.errors));
    };
    // A file of thousands of stray keys is refused as fast as one with a few: past a
    // hundred, they are counted, not described.
    let mut unknown = 0usize;
    for key in root.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            unknown += 1;
            if unknown > 100 {
                continue;
            }
            let elsewhere = super::schema::misplaced_hint(key).map(|h| format!("; {h}")).unwrap_or_default();
            let hint = nearest(key, TOP_KEYS)
                .map_or(format!("valid keys here: {}{elsewhere}", TOP_KEYS.join(", ")), |b| {
                    format!("did you mean `{b}`? valid keys here: {}", TOP_KEYS.join(", "))
                });
            let pos = loc.key(key);
            ctx.errors.push(Diagnostic {
                file: file.to_path_buf(),
                line: pos.line,
                column: pos.column,
                path: key.clone(),
                message: format!("unknown key `{key}`"),
                hint: Some(hint),
            });
        }
    }
    if unknown > 100 {
        ctx.error("", format!("{} more unknown keys at the top level", unknown - 100));
    }
    let plan = build(&mut ctx, &root, options, secrets);
    match plan {
        Some(plan) if ctx.errors.is_empty() => Ok(plan),
        _ => Err(Diagnostics(ctx.errors)),
    }
}

/// Reads a top-level key: `None` when absent (reported if `required`) or malformed.
pub(super) fn top<T: DeserializeOwned>(
    ctx: &mut Ctx,
    root: &Map<String, Value>,
    key: &str,
    required: bool,
) -> Option<T> {
    match root.get(key) {
        Some(v) => ctx.read(key, v),
        None => {
            if required {
                ctx.error("", format!("missing required key `{key}`"));
            }
            None
        }
    }
}

fn build(ctx: &mut Ctx, root: &Map<String, Value>, options: &LoadOptions, secrets: Secrets) -> Option<Plan> {
    let version: Option<u32> = top(ctx, root, "version", true);
    if let Some(v) = version
        && v != 1
    {
        ctx.error("version", format!("unsupported format version {v}")).hint =
            Some("this stagegate reads `version: 1`".into());
    }
    // Report folders are NAME-TIME, and file names hold at most 255 bytes.
    const MAX_NAME: usize = 100;
    let name: Option<String> = top(ctx, root, "name", true);
    if let Some(n) = &name
        && (n.is_empty()
            || n.starts_with('.')
            || n.len() > MAX_NAME
            || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        let shown: String = n.chars().take(40).collect();
        let more = if n.chars().count() > 40 { "..." } else { "" };
        ctx.error("name", format!("invalid name `{shown}{more}`")).hint = Some(format!(
            "use up to {MAX_NAME} letters, digits, `-`, `_` and `.` (not first): it names the report folder"
        ));
    }
    let description: Option<String> = top(ctx, root, "description", false);
    let file_seed: Option<u64> = top(ctx, root, "seed", false);
    let dependencies = deps::compile_dependencies(ctx, root);
    let target =
        top::<TargetSpec>(ctx, root, "target", true).and_then(|t| target::compile_target(ctx, t, &dependencies));
    let flags = flags::compile_flags(ctx, root, &target);
    let workload = top::<WorkloadSpec>(ctx, root, "workload", true).and_then(|w| workload::compile_workload(ctx, &w));
    let stages = stages::compile_stages(ctx, root, &flags, &dependencies, &target, workload.as_ref());
    let metrics = top::<MetricsSpec>(ctx, root, "metrics", false).and_then(|m| compile_metrics(ctx, m));
    let queries: Vec<&str> = metrics.iter().flat_map(|m| m.queries.iter().map(|(n, _)| n.as_str())).collect();
    // A `metrics:` section with a mistake of its own is reported there only.
    let names = match (&metrics, root.contains_key("metrics")) {
        (Some(_), _) => criteria::Queries::Named(&queries),
        (None, true) => criteria::Queries::Broken,
        (None, false) => criteria::Queries::Absent,
    };
    let criteria = criteria::compile_criteria(ctx, root, &stages, names);
    // Personal data in evaluation contexts is seen only where stagegate serves the
    // evaluations: say so before the run, not after.
    if let Some(f) = flags.as_ref().filter(|f| f.provider != crate::flags::Provider::Ofrep)
        && let Some(list) = root.get("criteria").and_then(Value::as_array)
    {
        for (i, c) in list.iter().enumerate() {
            let text = c.as_str().or_else(|| c.get("check").and_then(Value::as_str)).unwrap_or_default();
            if text.contains("flags.pii_exposed") {
                ctx.warn(
                    &super::yaml::join_index("criteria", i),
                    format_args!(
                        "`flags.pii_exposed` needs the evaluation contexts, which only the `ofrep` provider shows; with `{}` it will be INCONCLUSIVE",
                        f.provider.name()
                    ),
                );
            }
        }
    }
    let on_verdict = top::<OnVerdictSpec>(ctx, root, "on_verdict", false)
        .map(|o| criteria::compile_on_verdict(ctx, o))
        .unwrap_or_default();
    let health = top::<HealthSpec>(ctx, root, "health", false).map(|h| compile_health(ctx, h)).unwrap_or_default();
    let on_abort =
        top::<SteeringSpec>(ctx, root, "steering", false).and_then(|s| s.on_abort).map_or(Verdict::Inconclusive, |v| {
            match v.as_str() {
                "inconclusive" => Verdict::Inconclusive,
                "rollback" => Verdict::Rollback,
                other => {
                    ctx.unknown("steering.on_abort", "verdict", other, &["inconclusive", "rollback"]);
                    Verdict::Inconclusive
                }
            }
        });
    if let Some(f) = &flags {
        for d in &f.definitions {
            if let Some(exp) = d.expires.filter(|e| *e < options.today) {
                ctx.warn(
                    &join_key(&join_key("flags.definitions", &d.key), "expires"),
                    format_args!("flag `{}` expired on {exp}; remove it or move its date", d.key),
                );
            }
        }
    }
    let (seed, seed_source) = match (options.seed, file_seed) {
        (Some(s), _) => (s, "--seed"),
        (None, Some(s)) => (s, "file"),
        (None, None) => (rand::random(), "random"),
    };
    Some(Plan {
        file: ctx.file.to_path_buf(),
        name: name?,
        description,
        seed,
        seed_source: seed_source.to_string(),
        target: target?,
        dependencies: dependencies.into_iter().map(|(_, d)| d).collect(),
        flags: flags?,
        workload: workload?,
        stages,
        criteria,
        on_verdict,
        health,
        on_abort,
        metrics,
        warnings: std::mem::take(&mut ctx.warnings),
        overrides: options.overrides.iter().map(|o| o.text.clone()).collect(),
        secrets,
    })
}

/// The `metrics:` section: a Prometheus server's URL and named queries.
fn compile_metrics(ctx: &mut Ctx, m: MetricsSpec) -> Option<crate::measure::prom::PromSource> {
    let mut ok = true;
    let url = m.prometheus.trim().trim_end_matches('/').to_string();
    let parsed =
        reqwest::Url::parse(&url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    match parsed {
        None => {
            ctx.error("metrics.prometheus", format!("`{url}` is not an http(s) URL")).hint =
                Some("the Prometheus server's base URL, e.g. `http://127.0.0.1:9090`".into());
            ok = false;
        }
        Some(u) if u.query().is_some() || u.fragment().is_some() => {
            ctx.error("metrics.prometheus", "the server's base URL takes no `?query` or `#fragment`").hint = Some(
                "stagegate adds `/api/v1/...` to it; give the base, e.g. `http://127.0.0.1:9090/prometheus`".into(),
            );
            ok = false;
        }
        Some(_) => {}
    }
    if m.queries.is_empty() {
        ctx.error("metrics.queries", "name at least one query").hint =
            Some("e.g. `queries: { queue_depth: \"sum(orders_queue_depth)\" }`".into());
        ok = false;
    }
    if m.queries.len() > 64 {
        ctx.error("metrics.queries", format!("{} queries; at most 64", m.queries.len()));
        ok = false;
    }
    for (name, query) in &m.queries {
        let path = join_key("metrics.queries", name);
        if !crate::verdict::is_query_name(name) {
            ctx.error(&path, format!("`{}` cannot name a query", name.escape_debug())).hint = Some(
                "a lowercase letter or `_`, then lowercase letters, digits and `_` (at most 64): criteria write `prom.NAME`".into(),
            );
            ok = false;
        }
        if query.trim().is_empty() || query.len() > 4096 || query.chars().any(|c| c.is_control() && c != '\n') {
            ctx.error(&path, "a query is PromQL text of 1 to 4096 characters, without control characters");
            ok = false;
        }
    }
    let duration = |ctx: &mut Ctx, key: &str, text: Option<&Text>, default: Duration, range: (Duration, Duration)| {
        let path = join_key("metrics", key);
        match ctx.unit(&path, text, units::parse_duration) {
            Some(d) if d < range.0 || d > range.1 => {
                ctx.error(
                    &path,
                    format!(
                        "`{key}` is from {} to {}",
                        units::format_duration(range.0),
                        units::format_duration(range.1)
                    ),
                );
                None
            }
            Some(d) => Some(d),
            None if text.is_some() => None,
            None => Some(default),
        }
    };
    let step = duration(
        ctx,
        "step",
        m.step.as_ref(),
        Duration::from_secs(1),
        (Duration::from_millis(100), Duration::from_secs(600)),
    );
    let settle =
        duration(ctx, "settle", m.settle.as_ref(), Duration::from_secs(5), (Duration::ZERO, Duration::from_secs(300)));
    let timeout = duration(
        ctx,
        "timeout",
        m.timeout.as_ref(),
        Duration::from_secs(10),
        (Duration::from_millis(100), Duration::from_secs(120)),
    );
    let (step, settle, timeout) = (step?, settle?, timeout?);
    ok.then(|| crate::measure::prom::PromSource {
        url,
        step,
        settle,
        timeout,
        queries: m.queries.into_iter().collect(),
    })
}

/// The `health:` section: each limit given, or its default.
fn compile_health(ctx: &mut Ctx, h: HealthSpec) -> HealthLimits {
    let d = HealthLimits::default();
    let limit = |ctx: &mut Ctx, key: &str, text: Option<&Text>, default| {
        let path = join_key("health", key);
        match ctx.unit(&path, text, units::parse_duration) {
            Some(v) if v > MAX_HEALTH_LIMIT => {
                ctx.error(&path, "a lateness limit is at most 1m").hint =
                    Some("past a minute of lateness no timing figure means anything".into());
                default
            }
            Some(v) => v,
            None => default,
        }
    };
    HealthLimits {
        send_lag_p99: limit(ctx, "send_lag_p99", h.send_lag_p99.as_ref(), d.send_lag_p99),
        timer_lag_p99: limit(ctx, "timer_lag_p99", h.timer_lag_p99.as_ref(), d.timer_lag_p99),
        proxy_hold_overrun_p99: limit(
            ctx,
            "proxy_hold_overrun_p99",
            h.proxy_hold_overrun_p99.as_ref(),
            d.proxy_hold_overrun_p99,
        ),
        dropped: h.dropped.unwrap_or(d.dropped),
    }
}

/// The largest lateness limit a scenario may set.
const MAX_HEALTH_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The scenario's folder, which relative paths start from (`.` for a bare file name:
/// an empty path is no folder to run a process in).
pub(super) fn base_dir(ctx: &Ctx) -> PathBuf {
    match ctx.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The longest an ad-hoc fault may live.
pub const MAX_LIVE_FAULT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Checks a fault asked for while the run goes (the steering API), as a stage's fault
/// is checked, against the plan's dependencies and target: `{"kind": "latency", "at":
/// "store", "delay": "200ms", "ttl": "30s"}`. It starts at once and lasts `ttl` (or
/// `for`). Returns the fault and its time to live, or every mistake, each naming its
/// field.
pub fn live_fault(plan: &Plan, body: &Value) -> Result<(crate::fault::Fault, std::time::Duration), Vec<String>> {
    let Value::Object(fields) = body else {
        return Err(vec!["a fault is a JSON object: {\"kind\": ..., \"at\": ..., \"ttl\": \"30s\", ...}".into()]);
    };
    let mut fields = fields.clone();
    for fixed in ["from", "every"] {
        if fields.contains_key(fixed) {
            return Err(vec![format!("`{fixed}`: a live fault starts now and lasts `ttl`; it takes no `{fixed}`")]);
        }
    }
    let ttl = match (fields.remove("ttl"), fields.remove("for")) {
        (Some(_), Some(_)) => return Err(vec!["`ttl` and `for` say the same thing; give one".into()]),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err(vec!["`ttl`: missing; say how long the fault lives, e.g. \"30s\"".into()]),
    };
    let ttl = match &ttl {
        Value::String(t) => units::parse_duration(t).map_err(|e| vec![format!("`ttl`: {e}")])?,
        _ => return Err(vec!["`ttl`: expected a duration like \"30s\"".into()]),
    };
    if ttl.is_zero() || ttl > MAX_LIVE_FAULT_TTL {
        return Err(vec!["`ttl`: a live fault lives more than 0s and at most 1h".into()]);
    }
    fields.insert("for".into(), Value::String(units::format_duration(ttl)));
    let loc = Locations::default();
    let mut ctx = Ctx {
        file: Path::new("live fault"),
        loc: &loc,
        errors: Vec::new(),
        warnings: Vec::new(),
        overrides: &[],
        broken_stages: Vec::new(),
    };
    let deps: Vec<(String, crate::deps::Dependency)> =
        plan.dependencies.iter().map(|d| (d.name.clone(), d.clone())).collect();
    let target = Some(plan.target.clone());
    let fault = ctx
        .read::<FaultSpec>("", &Value::Object(fields))
        .and_then(|spec| faults::compile(&mut ctx, "", &spec, &deps, &target, Some(ttl + ttl)));
    match fault {
        Some(f) if ctx.errors.is_empty() => Ok((f, ttl)),
        _ => Err(ctx
            .errors
            .iter()
            .map(|d| {
                let hint = d.hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default();
                if d.path.is_empty() {
                    format!("{}{hint}", d.message)
                } else {
                    format!("`{}`: {}{hint}", d.path, d.message)
                }
            })
            .collect()),
    }
}
