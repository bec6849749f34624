//! The `target` section: a builtin target, or an HTTP service with its requests, its
//! observation (`read`, `scan`, `sink`) and the process that serves it.

use std::collections::BTreeSet;
use std::time::Duration;

use super::super::spec::*;
use super::super::units;
use super::super::yaml::join_key;
use super::{Ctx, base_dir};
use crate::deps::{Dependency, ProcessDef};
use crate::sut::{BuiltinTarget, HttpTarget, RequestTemplate, Target};

pub(super) fn compile_process(ctx: &mut Ctx, path: &str, p: ProcessSpec) -> Option<ProcessDef> {
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

pub(super) fn compile_request(ctx: &mut Ctx, path: &str, r: RequestSpec, default_method: &str) -> RequestTemplate {
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

pub(super) fn compile_target(ctx: &mut Ctx, t: TargetSpec, deps: &[(String, Dependency)]) -> Option<Target> {
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
            // The pipeline writes to its store: the dependency named `store`, or the only
            // builtin kv-store (see `sut::pipeline::store_dependency`).
            if let Err(message) = crate::sut::pipeline::store_dependency(deps.iter().map(|(_, d)| d)) {
                ctx.error("target.builtin", format!("the builtin target `{name}` {message}")).hint =
                    Some("add `dependencies: { store: { builtin: kv-store } }`".into());
            }
            let defects = match t.defects {
                None => crate::sut::pipeline::Defects::unless_named(),
                Some(names) => {
                    let mut defects = crate::sut::pipeline::Defects::default();
                    for (i, name) in names.iter().enumerate() {
                        if !defects.turn_on(name) {
                            let at = super::super::yaml::join_index("target.defects", i);
                            ctx.unknown(&at, "defect", name, &crate::sut::pipeline::Defects::NAMES);
                        }
                    }
                    defects
                }
            };
            Some(Target::Builtin(*builtin, defects))
        }
        (None, Some(h)) => {
            if t.defects.is_some() {
                ctx.error("target.defects", "`defects` are the builtin target's; an `http` target has its own");
            }
            let process = match t.process {
                Some(p) => Some(compile_process(ctx, "target.process", p)?),
                None => None,
            };
            Some(Target::Http(Box::new(compile_http(ctx, h, process))))
        }
    }
}

pub(super) fn compile_http(ctx: &mut Ctx, h: HttpTargetSpec, process: Option<ProcessDef>) -> HttpTarget {
    if !(h.base_url.starts_with("http://") || h.base_url.starts_with("https://")) {
        ctx.error("target.http.base_url", format!("`{}` is not an http:// or https:// URL", h.base_url));
    }
    let timeout =
        ctx.unit("target.http.timeout", h.timeout.as_ref(), units::parse_duration).unwrap_or(Duration::from_secs(2));
    if timeout > crate::limits::MAX_REQUEST_TIMEOUT {
        ctx.error("target.http.timeout", "a request timeout must be at most 10m");
    }
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
