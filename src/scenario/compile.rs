//! From the parsed document to a [`Plan`]: every check the format asks for, with every
//! mistake gathered before giving up.
//!
//! Each part of the document is read on its own (each stage, fault, criterion,
//! dependency and flag), so a mistake in one does not hide the mistakes in the next.
//! Values are then checked (units, ranges) and cross-checked (a fault `at` an unknown
//! dependency, a criterion on an unknown stage). Faults have their own file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::diag::{Diagnostic, Diagnostics, nearest};
use super::spec::*;
use super::yaml::{self, Locations, join_index, join_key};
use super::{LoadOptions, OnVerdict, Plan, Stage, faults, units};
use crate::data::Schema;
use crate::deps::{BuiltinDependency, ContainerDef, Dependency, ProcessDef, Provision};
use crate::flags::{Category, FlagDef, FlagSet, FlagState, FlagType, Provider};
use crate::sut::{BuiltinTarget, HttpTarget, RequestTemplate, Target};
use crate::verdict::{Compare, CompareMetric, Criterion, DEFAULT_MIN_SAMPLES, Level, Rule, parse_check};
use crate::workload::{Arrival, RateProfile, Workload};

/// Gathers diagnostics (and warnings) while checking a file, each located by key path.
pub struct Ctx<'a> {
    pub file: &'a Path,
    pub loc: &'a Locations,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<String>,
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

const TOP_KEYS: [&str; 11] = [
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
];

pub(super) fn compile(
    file: &Path,
    loc: &Locations,
    doc: Value,
    options: &LoadOptions,
    secrets: Vec<(String, String)>,
) -> Result<Plan, Diagnostics> {
    let mut ctx = Ctx { file, loc, errors: Vec::new(), warnings: Vec::new() };
    let Value::Object(root) = doc else {
        ctx.error("", "a scenario is a map of keys (version, name, target, workload, stages, ...)");
        return Err(Diagnostics(ctx.errors));
    };
    for key in root.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
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
    let plan = build(&mut ctx, &root, options, secrets);
    match plan {
        Some(plan) if ctx.errors.is_empty() => Ok(plan),
        _ => Err(Diagnostics(ctx.errors)),
    }
}

/// Reads a top-level key: `None` when absent (reported if `required`) or malformed.
fn top<T: DeserializeOwned>(ctx: &mut Ctx, root: &Map<String, Value>, key: &str, required: bool) -> Option<T> {
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

fn build(
    ctx: &mut Ctx,
    root: &Map<String, Value>,
    options: &LoadOptions,
    secrets: Vec<(String, String)>,
) -> Option<Plan> {
    let version: Option<u32> = top(ctx, root, "version", true);
    if let Some(v) = version
        && v != 1
    {
        ctx.error("version", format!("unsupported format version {v}")).hint =
            Some("this stagegate reads `version: 1`".into());
    }
    let name: Option<String> = top(ctx, root, "name", true);
    if let Some(n) = &name
        && (n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        ctx.error("name", format!("invalid name `{n}`")).hint =
            Some("use letters, digits, `-`, `_` and `.` (it names the report folder)".into());
    }
    let description: Option<String> = top(ctx, root, "description", false);
    let file_seed: Option<u64> = top(ctx, root, "seed", false);
    let dependencies = compile_dependencies(ctx, root);
    let target = top::<TargetSpec>(ctx, root, "target", true).and_then(|t| compile_target(ctx, t, &dependencies));
    let flags = compile_flags(ctx, root, &target);
    let workload = top::<WorkloadSpec>(ctx, root, "workload", true).and_then(|w| compile_workload(ctx, &w));
    let stages = compile_stages(ctx, root, &flags, &dependencies, &target, workload.as_ref());
    let stage_names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    let criteria = compile_criteria(ctx, root, &stage_names);
    let on_verdict =
        top::<OnVerdictSpec>(ctx, root, "on_verdict", false).map(|o| compile_on_verdict(ctx, o)).unwrap_or_default();
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
        warnings: std::mem::take(&mut ctx.warnings),
        overrides: options.overrides.iter().map(|o| o.text.clone()).collect(),
        secrets,
    })
}

fn base_dir(ctx: &Ctx) -> PathBuf {
    ctx.file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn compile_process(ctx: &mut Ctx, path: &str, p: ProcessSpec) -> Option<ProcessDef> {
    if p.command.is_empty() || p.command[0].trim().is_empty() {
        ctx.error(&join_key(path, "command"), "a process needs a command: a program and its arguments");
        return None;
    }
    let ready = p.ready.unwrap_or(ReadySpec { http: None, tcp: None, timeout: None });
    if let Some(h) = &ready.http
        && !h.starts_with('/')
    {
        ctx.error(&join_key(path, "ready.http"), format!("`{h}` is not a path")).hint = Some("e.g. `/health`".into());
    }
    if ready.http.is_some() && ready.tcp == Some(true) {
        ctx.error(&join_key(path, "ready"), "give `http` or `tcp`, not both");
    }
    let timeout = ctx.unit(&join_key(path, "ready.timeout"), ready.timeout.as_ref(), units::parse_duration);
    let cwd = match p.cwd {
        Some(c) => base_dir(ctx).join(c),
        None => base_dir(ctx),
    };
    Some(ProcessDef {
        command: p.command,
        env: p.env,
        cwd,
        ready_http: ready.http,
        ready_timeout: timeout.unwrap_or(Duration::from_secs(20)),
    })
}

fn compile_request(ctx: &mut Ctx, path: &str, r: RequestSpec, default_method: &str) -> RequestTemplate {
    let method = r.method.unwrap_or_else(|| default_method.to_string()).to_ascii_uppercase();
    if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&method.as_str()) {
        ctx.error(&join_key(path, "method"), format!("unknown HTTP method `{method}`"));
    }
    if !r.path.starts_with('/') {
        ctx.error(&join_key(path, "path"), format!("`{}` is not a path", r.path)).hint =
            Some("paths start with `/`, e.g. `/orders`".into());
    }
    RequestTemplate { method, path: r.path, body: r.body, headers: r.headers }
}

fn compile_target(ctx: &mut Ctx, t: TargetSpec, deps: &[(String, Dependency)]) -> Option<Target> {
    match (t.builtin, t.http) {
        (Some(_), Some(_)) => {
            ctx.error("target", "a target is either `builtin` or `http`, not both");
            None
        }
        (None, None) => {
            ctx.error("target", "a target needs `builtin` or `http`").hint =
                Some("e.g. `target: { builtin: orders-pipeline }`".into());
            None
        }
        (Some(name), None) => {
            if t.process.is_some() {
                ctx.error(
                    "target.process",
                    "`process` goes with an `http` target; a builtin target runs inside stagegate",
                );
            }
            let Some((_, builtin)) = BuiltinTarget::ALL.iter().find(|(n, _)| *n == name) else {
                let valid: Vec<&str> = BuiltinTarget::ALL.iter().map(|(n, _)| *n).collect();
                ctx.unknown("target.builtin", "builtin target", &name, &valid);
                return None;
            };
            // The pipeline writes to the first dependency: the builtin store, or a process
            // or address serving the same protocol (`stagegate kv-store`).
            let (needed, _) = builtin.needs();
            let has = deps.iter().any(|(_, d)| {
                d.provision == Provision::Builtin(needed) || !matches!(d.provision, Provision::Builtin(_))
            });
            if !has {
                ctx.error("target.builtin", format!("the builtin target `{name}` needs a `kv-store` dependency"))
                    .hint = Some("add `dependencies: { store: { builtin: kv-store } }`".into());
            }
            Some(Target::Builtin(*builtin))
        }
        (None, Some(h)) => {
            let process = match t.process {
                Some(p) => Some(compile_process(ctx, "target.process", p)?),
                None => None,
            };
            Some(Target::Http(Box::new(compile_http(ctx, h, process))))
        }
    }
}

fn compile_http(ctx: &mut Ctx, h: HttpTargetSpec, process: Option<ProcessDef>) -> HttpTarget {
    if !(h.base_url.starts_with("http://") || h.base_url.starts_with("https://")) {
        ctx.error("target.http.base_url", format!("`{}` is not an http:// or https:// URL", h.base_url));
    }
    let timeout =
        ctx.unit("target.http.timeout", h.timeout.as_ref(), units::parse_duration).unwrap_or(Duration::from_secs(2));
    let write = compile_request(ctx, "target.http.write", h.write, "POST");
    let read = h.read.map(|r| compile_request(ctx, "target.http.read", r, "GET"));
    let scan = h.scan.map(|s| {
        if !s.path.starts_with('/') {
            ctx.error("target.http.scan.path", format!("`{}` is not a path", s.path));
        }
        let paging = match (s.cursor, s.page) {
            (Some(_), Some(_)) => {
                ctx.error("target.http.scan", "a scan pages by `cursor` or by `page`, not both");
                crate::sut::Paging::None
            }
            (Some(c), None) => crate::sut::Paging::Cursor { param: c.param, field: c.field },
            (None, Some(p)) => crate::sut::Paging::Page { param: p.param, start: p.start.unwrap_or(1) },
            (None, None) => crate::sut::Paging::None,
        };
        let every = ctx.unit("target.http.scan.every", s.every.as_ref(), units::parse_duration);
        if every.is_some_and(|e| e.is_zero()) {
            ctx.error("target.http.scan.every", "a scan period must be longer than 0s");
        }
        let settle = ctx
            .unit("target.http.scan.settle", s.settle.as_ref(), units::parse_duration)
            .unwrap_or(Duration::from_secs(2));
        crate::sut::Scan { path: s.path, items: s.items.unwrap_or_else(|| "items".into()), paging, every, settle }
    });
    let sink = h.sink.map(|k| {
        let listen = k.listen.unwrap_or_else(|| "127.0.0.1:0".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            ctx.error("target.http.sink.listen", format!("`{listen}` is not an address like `127.0.0.1:9700`"));
        }
        let path = k.path.unwrap_or_else(|| "/sink".into());
        if !path.starts_with('/') {
            ctx.error("target.http.sink.path", format!("`{path}` is not a path"));
        }
        let settle = ctx
            .unit("target.http.sink.settle", k.settle.as_ref(), units::parse_duration)
            .unwrap_or(Duration::from_secs(2));
        crate::sut::SinkDef { listen, path, settle }
    });
    let ways: Vec<&str> = [(sink.is_some(), "sink"), (scan.is_some(), "scan"), (read.is_some(), "read")]
        .into_iter()
        .filter_map(|(given, name)| given.then_some(name))
        .collect();
    if ways.len() > 1 {
        ctx.warn(
            "target.http",
            format_args!("the output is observed by `{}`; `{}` is not used", ways[0], ways[1..].join("` and `")),
        );
    }
    let mut outputs = BTreeSet::new();
    for (sent, output) in &h.renamed {
        if output.trim().is_empty() {
            ctx.error(&join_key("target.http.renamed", sent), "an output field name cannot be empty");
        }
        if !outputs.insert(output.as_str()) {
            ctx.error(&join_key("target.http.renamed", sent), format!("two fields are renamed to `{output}`"));
        }
    }
    HttpTarget {
        base_url: h.base_url,
        write,
        read,
        scan,
        sink,
        renamed: h.renamed,
        timeout,
        headers: h.headers,
        process,
    }
}

fn compile_dependencies(ctx: &mut Ctx, root: &Map<String, Value>) -> Vec<(String, Dependency)> {
    let Some(raw) = root.get("dependencies") else { return Vec::new() };
    let Some(map) = raw.as_object() else {
        ctx.error("dependencies", "`dependencies` is a map of name to dependency");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in map {
        let at = join_key("dependencies", name);
        if ["target", "workload"].contains(&name.as_str()) {
            ctx.error(&at, format!("`{name}` is reserved for fault placement; name the dependency otherwise"));
            continue;
        }
        let Some(d) = ctx.read::<DependencySpec>(&at, value) else { continue };
        let forms = [d.builtin.is_some(), d.external.is_some(), d.process.is_some(), d.container.is_some()];
        if forms.iter().filter(|x| **x).count() != 1 {
            ctx.error(&at, "a dependency needs exactly one of `builtin`, `external`, `process` or `container`");
            continue;
        }
        let provision = if let Some(kind) = &d.builtin {
            match BuiltinDependency::ALL.iter().find(|(n, _)| n == kind) {
                Some((_, b)) => Provision::Builtin(*b),
                None => {
                    let valid: Vec<&str> = BuiltinDependency::ALL.iter().map(|(n, _)| *n).collect();
                    ctx.unknown(&join_key(&at, "builtin"), "builtin dependency", kind, &valid);
                    continue;
                }
            }
        } else if let Some(addr) = &d.external {
            let ok = addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                ctx.error(&join_key(&at, "external"), format!("`{addr}` is not a host:port address")).hint =
                    Some("e.g. `127.0.0.1:6379`".into());
                continue;
            }
            Provision::External(addr.clone())
        } else if let Some(p) = d.process {
            match compile_process(ctx, &join_key(&at, "process"), p) {
                Some(p) => Provision::Process(p),
                None => continue,
            }
        } else if let Some(c) = d.container {
            if c.image.trim().is_empty() {
                ctx.error(&join_key(&at, "container.image"), "a container needs an image");
                continue;
            }
            if c.port == 0 {
                ctx.error(&join_key(&at, "container.port"), "the container port must be above 0");
                continue;
            }
            let ready = c.ready.unwrap_or(ReadySpec { http: None, tcp: None, timeout: None });
            let ready_at = join_key(&at, "container.ready");
            if ready.http.as_ref().is_some_and(|h| !h.starts_with('/')) {
                ctx.error(&join_key(&ready_at, "http"), "not a path").hint = Some("e.g. `/health`".into());
            }
            if ready.http.is_some() && ready.tcp == Some(true) {
                ctx.error(&ready_at, "give `http` or `tcp`, not both");
            }
            let timeout = ctx.unit(&join_key(&ready_at, "timeout"), ready.timeout.as_ref(), units::parse_duration);
            Provision::Container(ContainerDef {
                image: c.image,
                port: c.port,
                env: c.env,
                command: c.command,
                ready_http: ready.http,
                ready_timeout: timeout.unwrap_or(Duration::from_secs(30)),
            })
        } else {
            continue;
        };
        out.push((name.clone(), Dependency { name: name.clone(), provision }));
    }
    out
}

const FLAG_TYPES: [&str; 5] = ["boolean", "string", "integer", "number", "object"];
const CATEGORIES: [&str; 4] = ["operational", "experimental", "release", "permission"];
const PROVIDERS: [&str; 4] = ["ofrep", "flagd-file", "header", "env"];

fn compile_flags(ctx: &mut Ctx, root: &Map<String, Value>, target: &Option<Target>) -> Option<FlagSet> {
    let Some(f) = top::<FlagsSpec>(ctx, root, "flags", false) else {
        return (!root.contains_key("flags")).then(FlagSet::default);
    };
    let mut ok = true;
    let provider = match f.provider.as_deref() {
        None | Some("ofrep") => Provider::Ofrep,
        Some("flagd-file") => Provider::FlagdFile(f.file.clone()),
        Some("header") => Provider::Header(f.header.clone().unwrap_or_else(|| "X-Stagegate-Flags".into())),
        Some("env") => Provider::Env,
        Some(other) => {
            ctx.unknown("flags.provider", "flag provider", other, &PROVIDERS);
            ok = false;
            Provider::Ofrep
        }
    };
    if f.file.is_some() && !matches!(provider, Provider::FlagdFile(_)) {
        ctx.error("flags.file", "`file` goes with `provider: flagd-file`");
        ok = false;
    }
    if f.header.is_some() && !matches!(provider, Provider::Header(_)) {
        ctx.error("flags.header", "`header` goes with `provider: header`");
        ok = false;
    }
    match (target, &provider) {
        (Some(Target::Builtin(_)), p) if *p != Provider::Ofrep => {
            ctx.error("flags.provider", format!("the builtin target reads its flags over OFREP, not `{}`", p.name()))
                .hint = Some("use `provider: ofrep` (the default)".into());
            ok = false;
        }
        (Some(Target::Http(h)), Provider::Env) if h.process.is_none() => {
            ctx.error("flags.provider", "the `env` provider needs a target stagegate starts (`target.process`)");
            ok = false;
        }
        _ => {}
    }
    let mut definitions = Vec::new();
    for (key, value) in &f.definitions {
        let at = join_key("flags.definitions", key);
        let Some(d) = ctx.read::<FlagDefSpec>(&at, value) else {
            ok = false;
            continue;
        };
        let kind = match d.kind.as_str() {
            "boolean" => FlagType::Boolean,
            "string" => FlagType::String,
            "integer" => FlagType::Integer,
            "number" => FlagType::Number,
            "object" => FlagType::Object,
            other => {
                ctx.unknown(&join_key(&at, "type"), "flag type", other, &FLAG_TYPES);
                ok = false;
                continue;
            }
        };
        if !kind.admits(&d.default) {
            ctx.error(&join_key(&at, "default"), format!("the default {} is not a {}", d.default, d.kind));
            ok = false;
        }
        let category = match d.category.as_deref() {
            None => None,
            Some("operational") => Some(Category::Operational),
            Some("experimental") => Some(Category::Experimental),
            Some("release") => Some(Category::Release),
            Some("permission") => Some(Category::Permission),
            Some(other) => {
                ctx.unknown(&join_key(&at, "category"), "category", other, &CATEGORIES);
                ok = false;
                None
            }
        };
        let expires = match &d.expires {
            None => None,
            Some(t) => match chrono::NaiveDate::parse_from_str(&t.0, "%Y-%m-%d") {
                Ok(date) => Some(date),
                Err(_) => {
                    ctx.error(&join_key(&at, "expires"), format!("invalid date `{}`", t.0)).hint =
                        Some("expected a date like `2027-03-01`".into());
                    ok = false;
                    None
                }
            },
        };
        definitions.push(FlagDef { key: key.clone(), kind, default: d.default, category, owner: d.owner, expires });
    }
    ok.then_some(FlagSet { provider, definitions })
}

fn compile_workload(ctx: &mut Ctx, w: &WorkloadSpec) -> Option<Workload> {
    let data_file = base_dir(ctx).join(&w.data);
    let schema = match Schema::load(&data_file) {
        Ok(s) => Some(Arc::new(s)),
        Err(super::Diagnostics(errors)) => {
            if errors.iter().any(|d| d.line == 0) {
                ctx.error("workload.data", format!("cannot read the data schema `{}`", data_file.display())).hint =
                    Some("the path is relative to the scenario file".into());
            } else {
                ctx.errors.extend(errors);
            }
            None
        }
    };
    let duration = ctx.unit("workload.duration", Some(&w.duration), units::parse_duration);
    if duration.is_some_and(|d| d.is_zero()) {
        ctx.error("workload.duration", "a stage must last longer than zero");
    }
    let warmup = match &w.warmup {
        None => Some(Duration::ZERO),
        some => ctx.unit("workload.warmup", some.as_ref(), units::parse_duration),
    };
    let timeout = match &w.timeout {
        None => Some(Duration::from_secs(2)),
        some => ctx.unit("workload.timeout", some.as_ref(), units::parse_duration),
    };
    if timeout.is_some_and(|t| t.is_zero()) {
        ctx.error("workload.timeout", "a request timeout must be above zero");
    }
    if let (Some(d), Some(wu)) = (duration, warmup)
        && wu >= d
        && !d.is_zero()
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
    let arrival_spec = ctx.read::<ArrivalSpec>("workload.arrival", &w.arrival);
    // Check the arrival model even when the duration is wrong, against a long stage.
    let stage_for_checks = duration.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(24 * 3600));
    let arrival = arrival_spec.and_then(|a| compile_arrival(ctx, "workload.arrival", &a, stage_for_checks, 0));
    Some(Workload {
        schema: schema?,
        data_file,
        arrival: arrival?,
        duration: duration?,
        warmup: warmup?,
        timeout: timeout?,
    })
}

/// The daily shape: share of the peak for each hour of a day, midnight first.
const DAY: [f64; 24] = [
    0.10, 0.06, 0.04, 0.03, 0.03, 0.05, 0.15, 0.35, 0.55, 0.65, 0.70, 0.72, 0.75, 0.72, 0.70, 0.72, 0.78, 0.85, 0.95,
    1.00, 0.90, 0.70, 0.45, 0.25,
];

fn compile_arrival(ctx: &mut Ctx, at: &str, a: &ArrivalSpec, stage: Duration, depth: u8) -> Option<Arrival> {
    let forms = [
        a.rate.is_some(),
        a.concurrency.is_some(),
        a.ramp.is_some(),
        a.spike.is_some(),
        a.daily.is_some(),
        a.playbook.is_some(),
    ];
    if forms.iter().filter(|x| **x).count() != 1 {
        ctx.error(
            at,
            "an arrival model needs exactly one of `rate`, `concurrency`, `ramp`, `spike`, `daily` or `playbook`",
        )
        .hint = Some("e.g. `arrival: { rate: 200/s }`".into());
        return None;
    }
    let rate = |ctx: &mut Ctx, path: &str, t: &Text| {
        ctx.unit(path, Some(t), units::parse_rate).and_then(|r| {
            if r > 0.0 || path.ends_with("min") || path.ends_with("base") || path.contains("ramp") {
                Some(r)
            } else {
                ctx.error(path, "the rate must be above zero");
                None
            }
        })
    };
    if let Some(r) = &a.rate {
        return rate(ctx, &join_key(at, "rate"), r).map(|r| Arrival::Open(RateProfile::constant(r)));
    }
    if let Some(n) = a.concurrency {
        if n == 0 || n > 10_000 {
            ctx.error(&join_key(at, "concurrency"), format!("concurrency must be between 1 and 10000, got {n}"));
            return None;
        }
        return Some(Arrival::Closed { concurrency: n });
    }
    if let Some(steps) = &a.ramp {
        if steps.is_empty() {
            ctx.error(&join_key(at, "ramp"), "a ramp needs at least one step");
            return None;
        }
        let mut points = Vec::new();
        let mut t = 0.0;
        let mut ok = true;
        for (i, raw) in steps.iter().enumerate() {
            let p = join_index(&join_key(at, "ramp"), i);
            let Some(s) = ctx.read::<RampStepSpec>(&p, raw) else {
                ok = false;
                continue;
            };
            let r = rate(ctx, &join_key(&p, "rate"), &s.rate);
            let len = ctx.unit(&join_key(&p, "for"), Some(&s.length), units::parse_duration);
            match (r, len) {
                (Some(r), Some(len)) => {
                    if i == 0 {
                        points.push((0.0, r));
                    }
                    t += len.as_secs_f64();
                    points.push((t, r));
                }
                _ => ok = false,
            }
        }
        if ok && points.iter().all(|(_, r)| *r <= 0.0) {
            ctx.error(&join_key(at, "ramp"), "a ramp must reach a rate above zero");
            ok = false;
        }
        return ok.then(|| Arrival::Open(RateProfile { points, shape: "ramp".into(), playbook: None }));
    }
    if let Some(s) = &a.spike {
        let p = join_key(at, "spike");
        let base = rate(ctx, &join_key(&p, "base"), &s.base);
        let peak = rate(ctx, &join_key(&p, "peak"), &s.peak);
        let start = ctx.unit(&join_key(&p, "at"), Some(&s.at), units::parse_duration);
        let len = ctx.unit(&join_key(&p, "for"), Some(&s.length), units::parse_duration);
        let (base, peak, start, len) = (base?, peak?, start?, len?);
        if start >= stage {
            ctx.error(
                &join_key(&p, "at"),
                format!(
                    "the spike starts at {} but the stage lasts {}",
                    units::format_duration(start),
                    units::format_duration(stage)
                ),
            );
            return None;
        }
        let (s0, s1) = (start.as_secs_f64(), (start + len).as_secs_f64());
        let points = vec![(0.0, base), (s0, base), (s0, peak), (s1, peak), (s1, base)];
        return Some(Arrival::Open(RateProfile { points, shape: "spike".into(), playbook: None }));
    }
    if let Some(d) = &a.daily {
        let p = join_key(at, "daily");
        let min = rate(ctx, &join_key(&p, "min"), &d.min);
        let max = rate(ctx, &join_key(&p, "max"), &d.max);
        let (min, max) = (min?, max?);
        if min > max {
            ctx.error(&join_key(&p, "min"), "`min` is above `max`");
            return None;
        }
        let hour = stage.as_secs_f64() / 24.0;
        let mut points: Vec<(f64, f64)> =
            DAY.iter().enumerate().map(|(h, m)| (h as f64 * hour, min + (max - min) * m)).collect();
        points.push((stage.as_secs_f64(), min + (max - min) * DAY[0]));
        return Some(Arrival::Open(RateProfile { points, shape: "daily".into(), playbook: None }));
    }
    if let Some(playbook) = &a.playbook {
        let p = join_key(at, "playbook");
        if depth > 0 {
            ctx.error(&p, "a playbook cannot name another playbook");
            return None;
        }
        let path = base_dir(ctx).join(playbook);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                ctx.error(&p, format!("cannot read the playbook `{}`: {e}", path.display())).hint =
                    Some("the path is relative to the scenario file".into());
                return None;
            }
        };
        let (spec, loc) = match yaml::parse::<PlaybookSpec>(&path, &text) {
            Ok(x) => x,
            Err(super::Diagnostics(errors)) => {
                ctx.errors.extend(errors);
                return None;
            }
        };
        let mut inner = Ctx { file: &path, loc: &loc, errors: Vec::new(), warnings: Vec::new() };
        let arrival = compile_arrival(&mut inner, "arrival", &spec.arrival, stage, depth + 1);
        ctx.errors.extend(inner.errors);
        return arrival.map(|a| match a {
            Arrival::Open(mut profile) => {
                profile.playbook = Some(spec.name.clone());
                Arrival::Open(profile)
            }
            closed => closed,
        });
    }
    None
}

/// An arrival shape kept in a file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaybookSpec {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    arrival: ArrivalSpec,
}

fn compile_stages(
    ctx: &mut Ctx,
    root: &Map<String, Value>,
    flags: &Option<FlagSet>,
    deps: &[(String, Dependency)],
    target: &Option<Target>,
    workload: Option<&Workload>,
) -> Vec<Stage> {
    let Some(raw) = root.get("stages") else {
        ctx.error("", "missing required key `stages`");
        return Vec::new();
    };
    let Some(list) = raw.as_array() else {
        ctx.error("stages", "`stages` is a list of stages");
        return Vec::new();
    };
    if list.is_empty() {
        ctx.error("stages", "a scenario needs at least one stage");
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, value) in list.iter().enumerate() {
        let at = join_index("stages", i);
        let Some(st) = ctx.read::<StageSpec>(&at, value) else { continue };
        if !seen.insert(st.name.clone()) {
            ctx.error(&join_key(&at, "name"), format!("stage `{}` is defined twice", st.name));
        }
        if st.name.trim().is_empty() {
            ctx.error(&join_key(&at, "name"), "a stage needs a name");
        }
        let mut states = BTreeMap::new();
        for (key, value) in &st.flags {
            let path = join_key(&join_key(&at, "flags"), key);
            let def = flags.as_ref().and_then(|f| f.definitions.iter().find(|d| &d.key == key));
            match def {
                Some(def) => {
                    if let Some(state) = flag_state(ctx, &path, def, value) {
                        let env = flags.as_ref().is_some_and(|f| f.provider == Provider::Env);
                        if env && matches!(state, FlagState::Split { .. }) {
                            ctx.error(
                                &path,
                                "the `env` provider gives the whole process one value per flag; it cannot split one",
                            )
                            .hint =
                                Some("use `provider: ofrep`, `flagd-file` or `header` for fractional exposure".into());
                        }
                        states.insert(key.clone(), state);
                    }
                }
                None if flags.is_none() => {}
                None => {
                    let known: Vec<&str> =
                        flags.iter().flat_map(|f| f.definitions.iter().map(|d| d.key.as_str())).collect();
                    ctx.unknown(&path, "flag", key, &known);
                    if nearest(key, known.iter().copied()).is_none()
                        && let Some(h) = super::schema::misplaced_hint(key)
                        && let Some(d) = ctx.errors.last_mut()
                    {
                        d.hint = Some(h);
                    }
                }
            }
        }
        let mut stage_faults = Vec::new();
        for (j, f) in st.faults.iter().enumerate() {
            let path = join_index(&join_key(&at, "faults"), j);
            let Some(spec) = ctx.read::<FaultSpec>(&path, f) else { continue };
            if let Some(fault) = faults::compile(ctx, &path, &spec, deps, target, workload.map(|w| w.duration)) {
                stage_faults.push(fault);
            }
        }
        let flags_state = flags.as_ref().map(|f| f.state(&states)).unwrap_or_default();
        out.push(Stage { name: st.name, flags: flags_state, faults: stage_faults });
    }
    out
}

/// Reads a stage's value for a flag: a plain value, or `{ VALUE: SHARE, ... }`.
fn flag_state(ctx: &mut Ctx, path: &str, def: &FlagDef, value: &Value) -> Option<FlagState> {
    if def.kind.admits(value) {
        return Some(FlagState::Fixed(value.clone()));
    }
    let Value::Object(split) = value else {
        ctx.error(path, format!("flag `{}` is {}, got {value}", def.key, type_name(def.kind)));
        return None;
    };
    if def.kind == FlagType::Object {
        ctx.error(path, "fractional exposure is not available for object flags");
        return None;
    }
    let mut variants = Vec::new();
    let mut total = 0.0;
    for (text, share) in split {
        let p = join_key(path, text);
        let variant = match def.kind {
            FlagType::Boolean => text.parse::<bool>().ok().map(Value::Bool),
            FlagType::String => Some(Value::String(text.clone())),
            FlagType::Integer => text.parse::<i64>().ok().map(Value::from),
            FlagType::Number => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
            FlagType::Object => None,
        };
        let Some(variant) = variant else {
            let hint = match def.kind {
                FlagType::Boolean => nearest(text, ["true", "false"]).map(|b| format!("did you mean `{b}`?")),
                _ => None,
            };
            let hint = hint.or_else(|| {
                text.ends_with('%').then(|| {
                    "a share with a decimal comma (`0,5%`) reads as two keys in YAML; write `0.5%`".to_string()
                })
            });
            ctx.error(&p, format!("`{text}` is not a {} value of flag `{}`", type_name(def.kind), def.key)).hint = hint;
            return None;
        };
        let share_text = match share {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        match units::parse_fraction(&share_text) {
            Ok(f) => {
                total += f;
                variants.push((variant, f));
            }
            Err(hint) => {
                ctx.error(&p, format!("invalid share `{share_text}`")).hint = Some(hint);
                return None;
            }
        }
    }
    if total > 1.0 + 1e-9 {
        ctx.error(path, format!("the shares add up to {:.1}%, above 100%", total * 100.0));
        return None;
    }
    if variants.iter().all(|(v, share)| *v == def.default || *share == 0.0) {
        ctx.warn(path, format_args!("every share goes to the default value {}; the stage is not split", def.default));
    }
    Some(FlagState::Split { variants, rest: def.default.clone() })
}

fn type_name(t: FlagType) -> &'static str {
    match t {
        FlagType::Boolean => "boolean",
        FlagType::String => "string",
        FlagType::Integer => "integer",
        FlagType::Number => "number",
        FlagType::Object => "object",
    }
}

fn compile_criteria(ctx: &mut Ctx, root: &Map<String, Value>, stages: &[String]) -> Vec<Criterion> {
    let Some(raw) = root.get("criteria") else { return Vec::new() };
    let Some(list) = raw.as_array() else {
        ctx.error("criteria", "`criteria` is a list");
        return Vec::new();
    };
    let names: Vec<&str> = stages.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for (i, value) in list.iter().enumerate() {
        let at = join_index("criteria", i);
        let m = match value {
            Value::String(s) => {
                match parse_check(s) {
                    Ok(check) => out.push(Criterion {
                        text: check.text.clone(),
                        rule: Rule::Check(check),
                        stages: None,
                        level: Level::Enforce,
                        min_samples: DEFAULT_MIN_SAMPLES,
                        abort_on_fail: false,
                    }),
                    Err(hint) => ctx.error(&at, format!("invalid check `{s}`")).hint = Some(hint),
                }
                continue;
            }
            Value::Object(_) => match ctx.read::<CriterionMapSpec>(&at, value) {
                Some(m) => m,
                None => continue,
            },
            other => {
                ctx.error(&at, format!("a criterion is a string or a map, got {other}")).hint = Some(
                    "e.g. `- latency.p99 < 250ms` or `- { check: \"errors.rate < 1%\", stages: [candidate] }`".into(),
                );
                continue;
            }
        };
        if let Some(c) = compile_criterion(ctx, &at, m, &names) {
            out.push(c);
        }
    }
    out
}

fn compile_criterion(ctx: &mut Ctx, at: &str, m: CriterionMapSpec, stages: &[&str]) -> Option<Criterion> {
    let level = match m.level.as_deref() {
        None | Some("enforce") => Level::Enforce,
        Some("warn") => Level::Warn,
        Some("observe") => Level::Observe,
        Some(other) => {
            ctx.unknown(&join_key(at, "level"), "level", other, &["enforce", "warn", "observe"]);
            return None;
        }
    };
    let min_samples = m.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES);
    let abort_on_fail = m.abort_on_fail.unwrap_or(false);
    let stage_ok = |ctx: &mut Ctx, path: &str, s: &str| {
        let known = stages.contains(&s);
        if !known {
            ctx.unknown(path, "stage", s, stages);
        }
        known
    };
    match (&m.check, &m.compare) {
        (Some(_), Some(_)) => {
            ctx.error(at, "a criterion is either a `check` or a `compare`, not both");
            None
        }
        (None, None) => {
            ctx.error(at, "a criterion map needs `check` or `compare`").hint =
                Some("e.g. `{ check: \"errors.rate < 5%\", stages: [outage] }`".into());
            None
        }
        (Some(text), None) => {
            for key in ["stage", "baseline", "max_regression", "confidence"] {
                let given = match key {
                    "stage" => m.stage.is_some(),
                    "baseline" => m.baseline.is_some(),
                    "max_regression" => m.max_regression.is_some(),
                    _ => m.confidence.is_some(),
                };
                if given {
                    ctx.error(&join_key(at, key), format!("`{key}` goes with `compare`, not `check`")).hint =
                        Some("use `stages: [...]` to pick the stages a check applies to".into());
                }
            }
            let mut ok = true;
            if let Some(list) = &m.stages {
                if list.is_empty() {
                    ctx.error(
                        &join_key(at, "stages"),
                        "an empty `stages` list judges nothing; leave it out to judge every stage",
                    );
                    ok = false;
                }
                for (j, s) in list.iter().enumerate() {
                    ok &= stage_ok(ctx, &join_index(&join_key(at, "stages"), j), s);
                }
            }
            match parse_check(text) {
                Ok(check) => ok.then(|| Criterion {
                    text: check.text.clone(),
                    rule: Rule::Check(check),
                    stages: m.stages,
                    level,
                    min_samples,
                    abort_on_fail,
                }),
                Err(hint) => {
                    ctx.error(&join_key(at, "check"), format!("invalid check `{text}`")).hint = Some(hint);
                    None
                }
            }
        }
        (None, Some(what)) => {
            let metric = match what.as_str() {
                "latency" => CompareMetric::Latency,
                "errors" | "errors.rate" => CompareMetric::Errors,
                other => {
                    ctx.unknown(&join_key(at, "compare"), "comparison metric", other, &["latency", "errors"]);
                    return None;
                }
            };
            if m.stages.is_some() {
                ctx.error(&join_key(at, "stages"), "a comparison names its stages with `stage` and `baseline`");
            }
            if abort_on_fail {
                ctx.error(
                    &join_key(at, "abort_on_fail"),
                    "a comparison is judged after both stages ran; it cannot abort a stage",
                );
            }
            let stage = m.stage.clone();
            let baseline = m.baseline.clone();
            if stage.is_none() {
                ctx.error(at, "a comparison needs `stage` (the stage under test)");
            }
            if baseline.is_none() {
                ctx.error(at, "a comparison needs `baseline` (the reference stage)");
            }
            let (stage, baseline) = (stage?, baseline?);
            let ok_s = stage_ok(ctx, &join_key(at, "stage"), &stage);
            let ok_b = stage_ok(ctx, &join_key(at, "baseline"), &baseline);
            if stage == baseline {
                ctx.error(&join_key(at, "baseline"), "a stage compared with itself proves nothing");
                return None;
            }
            let max_regression = match &m.max_regression {
                None => Some(0.0),
                some => ctx.unit(&join_key(at, "max_regression"), some.as_ref(), units::parse_fraction),
            };
            let confidence = match &m.confidence {
                None => Some(0.95),
                some => ctx.unit(&join_key(at, "confidence"), some.as_ref(), units::parse_fraction),
            };
            if let Some(c) = confidence
                && !(0.5..1.0).contains(&c)
            {
                ctx.error(
                    &join_key(at, "confidence"),
                    format!("a confidence must lie in [50%, 100%), got {:.1}%", c * 100.0),
                );
                return None;
            }
            let text = format!("compare {what}: {stage} vs {baseline}");
            (ok_s && ok_b).then_some(())?;
            Some(Criterion {
                rule: Rule::Compare(Compare {
                    metric,
                    stage,
                    baseline,
                    max_regression: max_regression?,
                    confidence: confidence?,
                }),
                stages: None,
                level,
                min_samples,
                abort_on_fail: false,
                text,
            })
        }
    }
}

fn compile_on_verdict(ctx: &mut Ctx, o: OnVerdictSpec) -> OnVerdict {
    let check = |ctx: &mut Ctx, key: &str, cmd: Option<Vec<String>>| {
        let cmd = cmd?;
        if cmd.is_empty() || cmd[0].trim().is_empty() {
            ctx.error(
                &join_key("on_verdict", key),
                "a command is a program and its arguments, e.g. `[./scripts/notify.sh, done]`",
            );
            return None;
        }
        Some(cmd)
    };
    OnVerdict {
        promote: check(ctx, "promote", o.promote),
        rollback: check(ctx, "rollback", o.rollback),
        inconclusive: check(ctx, "inconclusive", o.inconclusive),
    }
}
