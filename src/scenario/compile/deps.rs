//! The `dependencies` section: each dependency in exactly one form (`builtin`,
//! `external`, `process`, `container`).

use std::time::Duration;

use serde_json::{Map, Value};

use super::super::spec::*;
use super::super::units;
use super::super::yaml::join_key;
use super::Ctx;
use super::target::compile_process;
use crate::deps::{BuiltinDependency, ContainerDef, Dependency, Provision};

pub(super) fn compile_dependencies(ctx: &mut Ctx, root: &Map<String, Value>) -> Vec<(String, Dependency)> {
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
        if name.is_empty()
            || name.len() > 100
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('.')
        {
            ctx.error(&at, format!("invalid dependency name `{name}`")).hint = Some(
                "use up to 100 letters, digits, `-`, `_` and `.` (not first): it names the dependency's log file and container"
                    .into(),
            );
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
