//! Provisioning: from the plan to a typed [`Provisioned`] set, everything adopted by the
//! run's teardown guard before it starts.
//!
//! In order: the flag provider (so a started target can be told where its flags are),
//! each dependency behind its fault proxies, the target (the builtin pipeline, or an HTTP
//! service, started as a process if the scenario says so, with its output sink), the
//! fault proxies in front of the target when a stage faults it, and the observer that
//! reads the target's output. Every wait gives way to the run's cancellation; a failure
//! is the harness's (exit 4), described in one sentence.
//!
//! Not here: stopping anything (the guard), running stages (`stage`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::deps::process::{ManagedProcess, render};
use crate::deps::runfile::RunFile;
use crate::deps::{self, Provisioning, Running};
use crate::fault::Place;
use crate::fault::gate::{Gate, Needs};
use crate::flags::provider::{FlagProvider, provide};
use crate::health::Trouble;
use crate::scenario::Plan;
use crate::sut::http::{RECORD_JSON, WriteTemplate};
use crate::sut::observe::{Observer, ReadObserver, ScanObserver, StoreObserver, Unobserved};
use crate::sut::pipeline::{Pipeline, store_dependency};
use crate::sut::sink::SinkServer;
use crate::sut::{BuiltinTarget, RequestTemplate, Target};
use crate::teardown::Guard;
use crate::verdict::{Base, Rule};

/// Everything a run started, typed: what the stages need to run.
pub struct Provisioned {
    pub flags: Arc<dyn FlagProvider>,
    pub deps: Vec<Running>,
    pub target: TargetSide,
    pub observer: Arc<dyn Observer>,
}

/// The system under test as the stages see it.
pub struct TargetSide {
    /// Where records are written (through the target's fault proxies, if any).
    pub url: String,
    /// The target's own base URL, behind no fault.
    pub base: String,
    /// How each record is written.
    pub write: Arc<WriteTemplate>,
    /// The target's process, when stagegate starts it.
    pub process: Option<Arc<ManagedProcess>>,
    /// The fault proxies in front of the target, when a stage faults it.
    pub gate: Option<Arc<Gate>>,
    /// The runtime the target runs on, when it runs inside stagegate (the builtin one).
    pub runtime: Option<tokio::runtime::Handle>,
}

/// What provisioning needs from the run.
pub struct Context<'a> {
    pub guard: &'a Guard,
    pub run: Arc<RunFile>,
    pub report_dir: Option<&'a Path>,
    pub cancel: &'a CancellationToken,
    pub trouble: &'a Trouble,
}

/// Starts everything `plan` needs; the first failure ends it (what started is the
/// guard's to stop).
pub async fn provision(plan: &Plan, cx: &Context<'_>) -> Result<Provisioned, String> {
    let first = plan.stages.first().map(|s| s.flags.clone()).unwrap_or_default();
    let flags = provide(&plan.flags, &first, &plan.dir(), cx.report_dir, cx.guard, cx.trouble)
        .await
        .map_err(|e| e.to_string())?;
    let with = Provisioning {
        guard: cx.guard,
        run: cx.run.clone(),
        log_dir: cx.report_dir,
        cancel: cx.cancel,
        trouble: cx.trouble,
    };
    let mut deps = Vec::new();
    for dep in &plan.dependencies {
        let at = Place::Dependency(dep.name.clone());
        let needs = Needs::of(plan.stages.iter().flat_map(|s| &s.faults).filter(|f| f.at == at), false, true);
        deps.push(deps::provision(dep, needs, &with).await.map_err(|e| e.to_string())?);
    }
    let (mut target, observer) = match &plan.target {
        Target::Builtin(BuiltinTarget::OrdersPipeline, defects) => {
            let store = store_dependency(&plan.dependencies).map_err(|m| format!("the builtin pipeline {m}"))?;
            let store = deps.iter().find(|d| d.name == store.name).ok_or("the builtin pipeline has no store")?;
            let ofrep = flags.context()["url"].as_str().unwrap_or_default().to_string();
            let pipeline = crate::threads::run_on(
                crate::threads::builtin(),
                Pipeline::start(store.address(), ofrep, *defects, Some(cx.trouble.clone())),
            )
            .await
            .map_err(|e| format!("the builtin pipeline could not listen: {e}"))?;
            let pipeline = cx.guard.adopt(Arc::new(pipeline));
            let orders =
                RequestTemplate { method: "POST".into(), path: "/orders".into(), body: None, headers: BTreeMap::new() };
            let write = WriteTemplate::compile(&orders, &BTreeMap::new(), Some(RECORD_JSON))?;
            let url = pipeline.url();
            let observer: Arc<dyn Observer> = Arc::new(StoreObserver::new(store.real_address()));
            (
                TargetSide {
                    url: url.clone(),
                    base: url,
                    write: Arc::new(write),
                    process: None,
                    gate: None,
                    runtime: crate::threads::builtin().ok(),
                },
                observer,
            )
        }
        Target::Http(h) => {
            let mut context = Map::new();
            let addresses: Map<String, Value> =
                deps.iter().map(|d| (d.name.clone(), json!({ "address": d.address().to_string() }))).collect();
            context.insert("dependencies".into(), Value::Object(addresses));
            context.insert("flags".into(), flags.context());
            let sink = match &h.sink {
                Some(def) => {
                    let sink = SinkServer::start(def, Some(cx.trouble.clone()))
                        .await
                        .map_err(|e| format!("the output sink could not listen on {}: {e}", def.listen))?;
                    let sink = cx.guard.adopt(Arc::new(sink));
                    context.insert("sink".into(), json!({ "url": sink.url() }));
                    Some(sink)
                }
                None => None,
            };
            let mut values = context.clone();
            let process = match &h.process {
                Some(def) => {
                    let log = cx.report_dir.map(|d| d.join("target.log"));
                    let env = flags.initial_env();
                    let p = ManagedProcess::new("the target", "target", def, log, context, env, cx.run.clone())
                        .map_err(|e| e.to_string())?;
                    let p = cx.guard.adopt(Arc::new(p));
                    p.start(cx.cancel).await.map_err(|e| e.to_string())?;
                    values.insert("port".into(), p.port().into());
                    Some(p)
                }
                None => None,
            };
            let base = render(&h.base_url, &minijinja::Value::from(minijinja::value::Serde(values)))
                .map_err(|e| format!("target.http.base_url: {e}"))?;
            let base = base.trim_end_matches('/').to_string();
            if process.is_none() {
                reachable(&base, cx.cancel).await?;
            }
            let write = WriteTemplate::compile(&h.write, &h.headers, Some(RECORD_JSON))
                .map_err(|e| format!("target.http.write: {e}"))?;
            let wants_freshness = plan
                .criteria
                .iter()
                .any(|c| matches!(&c.rule, Rule::Check(check) if matches!(check.metric.base, Base::Freshness(_))));
            let observer: Arc<dyn Observer> = match (sink, &h.scan, &h.read) {
                (Some(sink), _, _) => sink,
                (None, Some(scan), _) => {
                    let trouble = cx.trouble.clone();
                    // One listing may take as long as the stage, or 30 s.
                    let limit = plan.workload.duration.max(std::time::Duration::from_secs(30));
                    Arc::new(ScanObserver::new(&base, scan.clone(), h.timeout, limit, wants_freshness, trouble)?)
                }
                (None, None, Some(read)) => {
                    let read =
                        WriteTemplate::compile(read, &h.headers, None).map_err(|e| format!("target.http.read: {e}"))?;
                    // Reading a stage's output back may take as long as the stage, or 30 s.
                    let limit = plan.workload.duration.max(std::time::Duration::from_secs(30));
                    Arc::new(ReadObserver::new(&base, read, h.timeout, limit, cx.trouble.clone())?)
                }
                (None, None, None) => Arc::new(Unobserved),
            };
            (
                TargetSide { url: base.clone(), base, write: Arc::new(write), process, gate: None, runtime: None },
                observer,
            )
        }
    };
    let needs = Needs::of(plan.stages.iter().flat_map(|s| &s.faults).filter(|f| f.at == Place::Target), true, false);
    if needs != Needs::default() {
        let gate = target_gate(&target.base, needs, cx).await?;
        let parsed =
            reqwest::Url::parse(&target.base).map_err(|e| format!("target base URL `{}`: {e}", target.base))?;
        let scheme = if gate.speaks_http() { "http" } else { parsed.scheme() };
        target.url = format!("{scheme}://{}{}", gate.addr(), parsed.path().trim_end_matches('/'));
        target.gate = Some(gate);
    }
    Ok(Provisioned { flags, deps, target, observer })
}

/// How long a target stagegate does not start has to take a connection before the run.
const REACH: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks that a target stagegate does not start takes TCP connections at all: one that
/// refuses every connection from the start leaves nothing to rehearse (no stage, the
/// baseline included, would measure the release), so the run breaks and says why
/// rather than judging a release on an address that is wrong or down.
async fn reachable(base: &str, cancel: &CancellationToken) -> Result<(), String> {
    let parsed = reqwest::Url::parse(base).map_err(|e| format!("target base URL `{base}`: {e}"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").trim_start_matches('[').trim_end_matches(']').to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let connect = async {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + REACH;
        // A target coming up as the run starts gets the whole deadline.
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => break,
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| "no answer".into()))
    };
    tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        r = connect => r.map_err(|e| format!(
            "the target at {base} takes no connection ({e}, for {}s): nothing to rehearse against; is it running, and is target.http.base_url right?",
            REACH.as_secs()
        )),
    }
}

/// The fault proxies in front of the target at `base`.
async fn target_gate(base: &str, needs: Needs, cx: &Context<'_>) -> Result<Arc<Gate>, String> {
    let parsed = reqwest::Url::parse(base).map_err(|e| format!("target base URL `{base}`: {e}"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let lookup =
        tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::lookup_host((host.as_str(), port)));
    let upstream = tokio::select! {
        _ = cx.cancel.cancelled() => return Err("interrupted while resolving the target's address".into()),
        r = lookup => r.ok().and_then(|r| r.ok()).and_then(|mut a| a.next()),
    }
    .ok_or_else(|| format!("target base URL `{base}`: cannot resolve `{host}`"))?;
    let origin = parsed.origin().ascii_serialization();
    let gate = Gate::start("target", upstream, Some(&origin), needs, true, Some(cx.trouble.clone()))
        .await
        .map_err(|e| format!("the fault proxy in front of the target could not listen: {e}"))?;
    Ok(cx.guard.adopt(Arc::new(gate)))
}
