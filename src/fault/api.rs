//! `stagegate proxy`: standalone fault proxies for game days, driven over an HTTP control
//! API on loopback that speaks Toxiproxy's, so existing Toxiproxy clients and scripts
//! keep working.
//!
//! The API manages named [`Proxy`]s. A Toxiproxy "toxic" maps onto one of our faults
//! (`latency`, `bandwidth` in KB/s, `slow_close`, `timeout` as a blackhole, `reset_peer`,
//! `slicer`, `limit_data`, plus our own `corrupt`); `stream` is the direction,
//! `toxicity` the share of connections. A toxic may carry a time-to-live (`ttl`, in
//! milliseconds, at the top level or among its attributes), after which it removes
//! itself. A disabled proxy refuses connections. Stopping the server removes every fault
//! and closes every proxy.
//!
//! Where Toxiproxy is silent, this API speaks: every change is said on stderr (proxy,
//! toxic, attributes, and the client's `User-Agent`); an attribute a toxic does not
//! take, or a value of the wrong type, is a 400 naming it (Toxiproxy ignores it, and
//! the toxic then does nothing); addresses outside loopback are refused unless the
//! registry allows them (`--allow-remote`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::proxy::Proxy;
use super::{Activation, Direction, Fault, FaultKind, Place, Schedule};

/// A toxic as Toxiproxy clients send and read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Toxic {
    /// Optional, as with Toxiproxy: `TYPE_STREAM` (e.g. `latency_downstream`) when absent.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "downstream")]
    pub stream: String,
    #[serde(default = "one")]
    pub toxicity: f64,
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
    /// Milliseconds after which the toxic removes itself (a stagegate extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

fn downstream() -> String {
    "downstream".into()
}

fn one() -> f64 {
    1.0
}

/// One proxy as Toxiproxy clients create it.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxySpec {
    pub name: String,
    #[serde(default = "any_port")]
    pub listen: String,
    pub upstream: String,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn any_port() -> String {
    "127.0.0.1:0".into()
}

fn enabled() -> bool {
    true
}

struct Entry {
    proxy: Proxy,
    upstream: String,
    enabled: bool,
    toxics: Vec<Toxic>,
    /// Bumped on every toxic change, so a TTL only removes the toxic it was set for.
    generation: u64,
}

/// Changes kept for the live page (the latest).
const MAX_LOG: usize = 100;

/// The proxies the API manages.
#[derive(Clone, Default)]
pub struct Registry {
    proxies: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// The latest changes, as said, with when (for the live page).
    log: Arc<std::sync::Mutex<std::collections::VecDeque<(String, String)>>>,
    /// Bumped on every change.
    version: Arc<tokio::sync::watch::Sender<u64>>,
    /// Say every change on stderr.
    announce: bool,
    /// Accept listen and upstream addresses outside loopback.
    allow_remote: bool,
}

/// The attributes each toxic type takes (with `ttl`, stagegate's time to live).
const ATTRIBUTES: [(&str, &[&str]); 8] = [
    ("latency", &["latency", "jitter"]),
    ("bandwidth", &["rate"]),
    ("slow_close", &["delay"]),
    ("timeout", &["timeout"]),
    ("reset_peer", &["timeout"]),
    ("slicer", &["average_size", "size_variation", "delay"]),
    ("limit_data", &["bytes"]),
    ("corrupt", &["rate"]),
];

/// The endpoints, as `GET /` lists them.
const ENDPOINTS: [(&str, &str); 15] = [
    ("GET /", "this list"),
    ("GET /version", "the version"),
    ("GET /metrics", "proxies and active toxics in the Prometheus text format"),
    ("POST /reset", "remove every toxic and enable every proxy"),
    ("POST /populate", "create or replace proxies from a list of {name, listen, upstream, enabled}"),
    ("GET /proxies", "every proxy with its toxics"),
    ("POST /proxies", "create a proxy: {name, listen, upstream, enabled}"),
    ("GET /proxies/{name}", "one proxy"),
    ("POST /proxies/{name}", "enable or disable it: {enabled}"),
    ("DELETE /proxies/{name}", "remove it (its toxics lifted, its port closed)"),
    ("GET /proxies/{name}/toxics", "its toxics"),
    ("POST /proxies/{name}/toxics", "add a toxic: {name, type, stream, toxicity, attributes, ttl}"),
    ("GET /proxies/{name}/toxics/{toxic}", "one toxic"),
    ("POST /proxies/{name}/toxics/{toxic}", "change a toxic's attributes or toxicity"),
    ("DELETE /proxies/{name}/toxics/{toxic}", "remove a toxic"),
];

/// Attribute `key` as a whole number of at least `least` (0 when absent, as Toxiproxy
/// has it); a negative, fractional-overflowing or non-numeric value is refused.
fn number(attrs: &BTreeMap<String, Value>, key: &str, least: u64) -> Result<u64, String> {
    let Some(v) = attrs.get(key) else {
        return if least == 0 { Ok(0) } else { Err(format!("attribute `{key}` is required (at least {least})")) };
    };
    let most = u64::from(u32::MAX);
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= least as f64 && x <= most as f64 => Ok(x as u64),
        _ => Err(format!("attribute `{key}` must be a whole number from {least} to {most}, got {v}")),
    }
}

/// Maps a Toxiproxy toxic onto our fault; the error names what is wrong.
pub fn to_fault(t: &Toxic) -> Result<Fault, String> {
    let a = &t.attributes;
    if let Some((_, known)) = ATTRIBUTES.iter().find(|(kind, _)| *kind == t.kind)
        && let Some(stray) = a.keys().find(|k| k.as_str() != "ttl" && !known.contains(&k.as_str()))
    {
        let hint = crate::scenario::diag::nearest(stray, known.iter().copied())
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        return Err(format!(
            "toxic type `{}` has no attribute `{stray}`{hint} (it takes {}, and `ttl`)",
            t.kind,
            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let ms = |k: &str| number(a, k, 0).map(Duration::from_millis);
    let kind = match t.kind.as_str() {
        "latency" => {
            let delay = ms("latency")?;
            FaultKind::Latency { delay, jitter: ms("jitter")?.min(delay) }
        }
        "bandwidth" => FaultKind::Bandwidth { bytes_per_sec: number(a, "rate", 1)? * 1000 },
        "slow_close" => FaultKind::SlowClose { delay: ms("delay")? },
        "timeout" => FaultKind::Blackhole,
        "reset_peer" => FaultKind::Reset { after: None },
        "slicer" => {
            let size = number(a, "average_size", 1)?;
            FaultKind::Slicer {
                size,
                size_variation: number(a, "size_variation", 0)?.min(size - 1),
                delay: Duration::from_micros(number(a, "delay", 0)?),
            }
        }
        "limit_data" => FaultKind::LimitData { bytes: number(a, "bytes", 0)? },
        "corrupt" => match a.get("rate").map(|v| (v, v.as_f64())) {
            None => FaultKind::Corrupt { rate: 0.0 },
            Some((_, Some(rate))) if (0.0..=1.0).contains(&rate) => FaultKind::Corrupt { rate },
            Some((v, _)) => return Err(format!("attribute `rate` of `corrupt` is a share between 0 and 1, got {v}")),
        },
        other => return Err(format!("unknown toxic type `{other}`")),
    };
    let direction = match t.stream.as_str() {
        "upstream" => Direction::Upstream,
        "downstream" => Direction::Downstream,
        other => return Err(format!("unknown stream `{other}`; expected `upstream` or `downstream`")),
    };
    if !(0.0..=1.0).contains(&t.toxicity) {
        return Err(format!("toxicity {} is not between 0 and 1", t.toxicity));
    }
    Ok(Fault {
        kind,
        at: Place::Dependency(String::new()),
        schedule: Schedule { from: Duration::ZERO, length: None, every: None },
        probability: t.toxicity,
        direction,
        predicate: None,
    })
}

fn apply(entry: &Entry) {
    let mut active: Vec<Activation> = entry
        .toxics
        .iter()
        .enumerate()
        .filter_map(|(i, t)| to_fault(t).ok().map(|fault| (i, fault)))
        .map(|(i, fault)| Activation {
            id: entry.generation << 16 | i as u64,
            index: i,
            fault,
            seed: crate::seed::derive(entry.generation, &entry.upstream, i as u64),
        })
        .collect();
    if !entry.enabled {
        let fault = Fault {
            kind: FaultKind::Refuse,
            at: Place::Dependency(String::new()),
            schedule: Schedule { from: Duration::ZERO, length: None, every: None },
            probability: 1.0,
            direction: Direction::Both,
            predicate: None,
        };
        active.push(Activation { index: usize::MAX, id: u64::MAX, fault, seed: 0 });
    }
    entry.proxy.set_active(active);
}

fn proxy_json(name: &str, e: &Entry) -> Value {
    json!({ "name": name, "listen": e.proxy.addr().to_string(), "upstream": e.upstream, "enabled": e.enabled, "toxics": e.toxics })
}

/// Reads a JSON body whatever its Content-Type says, as Toxiproxy does (scripts often
/// post with `curl -d` and no header). The error is the handler's finished answer,
/// returned as it is, so its size does not matter here.
#[allow(clippy::result_large_err)]
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("the request body is not valid: {e}")))
}

fn no_proxy(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("proxy `{name}` not found"))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into(), "status": status.as_u16() }))).into_response()
}

impl Registry {
    /// A registry that says every change on stderr, and accepts addresses outside
    /// loopback when `allow_remote`.
    pub fn new(announce: bool, allow_remote: bool) -> Registry {
        Registry { announce, allow_remote, ..Registry::default() }
    }

    /// Says a change on stderr, when announcing, and keeps it for the live page.
    fn say(&self, what: impl std::fmt::Display) {
        let text = crate::flags::audit::shown(&what.to_string());
        if self.announce {
            eprintln!("stagegate proxy: {text}");
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= MAX_LOG {
            log.pop_front();
        }
        log.push_back((chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true), text));
        drop(log);
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that changes with every change.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// What the live page shows: each proxy with its counters and toxics, and the
    /// latest changes (newest last).
    pub async fn board(&self) -> Value {
        let proxies: Vec<Value> = self
            .proxies
            .lock()
            .await
            .iter()
            .map(|(name, e)| {
                let stats = e.proxy.stats();
                let mut p = proxy_json(name, e);
                p["connections"] = json!(stats.connections.load(std::sync::atomic::Ordering::Relaxed));
                p["cut"] = json!(stats.cut.load(std::sync::atomic::Ordering::Relaxed));
                p["chunks_faulted"] = json!(stats.chunks_faulted.load(std::sync::atomic::Ordering::Relaxed));
                p
            })
            .collect();
        let log: Vec<Value> = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(at, text)| json!({ "at": at, "text": text }))
            .collect();
        json!({ "proxies": proxies, "log": log, "version": *self.version.borrow() })
    }

    /// Creates a proxy and says so; fails if the name is taken, an address does not
    /// resolve or lies outside loopback (unless allowed).
    pub async fn create(&self, spec: ProxySpec) -> Result<Value, Response> {
        self.create_by(spec, "the config").await
    }

    async fn create_by(&self, spec: ProxySpec, by: &str) -> Result<Value, Response> {
        let mut proxies = self.proxies.lock().await;
        if proxies.contains_key(&spec.name) {
            return Err(error(StatusCode::CONFLICT, format!("proxy `{}` already exists", spec.name)));
        }
        let upstream = resolve(&spec.upstream).await.map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let listen = resolve(&spec.listen).await.map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        for (key, addr) in [("listen", listen), ("upstream", upstream)] {
            if !self.allow_remote && !addr.ip().is_loopback() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "proxy `{}`: `{key}` {addr} is outside loopback; start `stagegate proxy --allow-remote` to allow it",
                        spec.name
                    ),
                ));
            }
        }
        let to_itself =
            || error(StatusCode::BAD_REQUEST, format!("proxy `{}` would forward to itself ({upstream})", spec.name));
        if listen == upstream {
            return Err(to_itself());
        }
        let proxy = Proxy::start_at(&spec.name, listen, upstream, None)
            .await
            .map_err(|e| error(StatusCode::CONFLICT, format!("cannot listen on {listen}: {e}")))?;
        if proxy.addr() == upstream {
            proxy.stop().await;
            return Err(to_itself());
        }
        let entry = Entry { proxy, upstream: spec.upstream, enabled: spec.enabled, toxics: Vec::new(), generation: 0 };
        apply(&entry);
        entry.proxy.settled().await;
        let body = proxy_json(&spec.name, &entry);
        self.say(format_args!(
            "created proxy `{}`: {} → {}{} (by {by})",
            spec.name,
            entry.proxy.addr(),
            entry.upstream,
            if entry.enabled { "" } else { ", disabled" }
        ));
        proxies.insert(spec.name, entry);
        Ok(body)
    }

    /// Removes every toxic and enables every proxy.
    pub async fn reset(&self) {
        for e in self.proxies.lock().await.values_mut() {
            e.toxics.clear();
            e.enabled = true;
            e.generation += 1;
            apply(e);
            e.proxy.settled().await;
        }
    }

    /// Lifts every toxic of every proxy (the first thing a stop does), saying each one
    /// lifted. A request that holds the registry holds it for a second at most; past
    /// that, the proxies are lifted as each one stops.
    pub async fn lift_all(&self) {
        match tokio::time::timeout(Duration::from_millis(1500), self.proxies.lock()).await {
            Ok(proxies) => {
                for (name, e) in proxies.iter() {
                    e.proxy.set_active(Vec::new());
                    for t in &e.toxics {
                        self.say(format_args!("lifted toxic `{}` ({}) from proxy `{name}`", t.name, t.kind));
                    }
                }
            }
            Err(_) => tracing::warn!("the proxy registry is busy; its proxies are lifted as they stop"),
        }
    }

    /// Stops every proxy (faults lifted, listeners closed), saying each one closed.
    pub async fn stop(&self) {
        let proxies = std::mem::take(&mut *self.proxies.lock().await);
        for (name, e) in proxies {
            e.proxy.stop().await;
            self.say(format_args!("closed proxy `{name}` ({} → {})", e.proxy.addr(), e.upstream));
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut found = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve `{addr}`: {e}"))?;
    found.next().ok_or_else(|| format!("`{addr}` resolves to nothing"))
}

/// The control API's routes, served at `served`; with `ui`, the live page too (`/ui`).
/// Requests from browsers are held to the API's own pages: one whose `Host` names
/// another server, or sent by another site's page, is refused
/// ([`crate::server::foreign_request`]), so no web page can drive the proxies.
pub fn router(registry: Registry, ui: bool, served: SocketAddr) -> Router {
    let api = api_routes(registry.clone());
    let all = if ui { api.merge(crate::steer::ui::proxy_routes(registry)) } else { api };
    all.layer(axum::middleware::from_fn_with_state(served, crate::server::refuse_foreign))
}

fn api_routes(registry: Registry) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                let endpoints: Vec<Value> =
                    ENDPOINTS.iter().map(|(e, what)| json!({ "endpoint": e, "does": what })).collect();
                Json(json!({ "api": "toxiproxy-compatible (stagegate proxy)", "endpoints": endpoints }))
            }),
        )
        .route(
            "/version",
            get(|| async { format!("{} (stagegate, toxiproxy-compatible API)", env!("CARGO_PKG_VERSION")) }),
        )
        .route("/metrics", get(metrics))
        .route("/reset", post(reset))
        .route("/populate", post(populate))
        .route("/proxies", get(list).post(create))
        .route("/proxies/{name}", get(show).post(update).delete(remove))
        .route("/proxies/{name}/toxics", get(toxics).post(add_toxic))
        .route("/proxies/{name}/toxics/{toxic}", get(show_toxic).post(update_toxic).delete(remove_toxic))
        .layer(axum::extract::DefaultBodyLimit::max(crate::limits::CONTROL_BODY_BYTES))
        .with_state(registry)
}

/// `/metrics`: each proxy (enabled or not) and each active toxic (its toxicity), in
/// the Prometheus text format, so a game day's dashboard shows what is injected.
async fn metrics(State(r): State<Registry>) -> Response {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ProxyLabels {
        proxy: String,
        listen: String,
        upstream: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ToxicLabels {
        proxy: String,
        toxic: String,
        kind: String,
        stream: String,
    }
    let mut registry = prometheus_client::registry::Registry::with_prefix("stagegate_proxy");
    let enabled = Family::<ProxyLabels, Gauge>::default();
    registry.register("enabled", "1 for a proxy that forwards, 0 for a disabled one", enabled.clone());
    let toxics = Family::<ToxicLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register("toxic_toxicity", "Each active toxic, valued at its toxicity", toxics.clone());
    for (name, e) in r.proxies.lock().await.iter() {
        let labels =
            ProxyLabels { proxy: name.clone(), listen: e.proxy.addr().to_string(), upstream: e.upstream.clone() };
        enabled.get_or_create(&labels).set(i64::from(e.enabled));
        for t in &e.toxics {
            let labels = ToxicLabels {
                proxy: name.clone(),
                toxic: t.name.clone(),
                kind: t.kind.clone(),
                stream: t.stream.clone(),
            };
            toxics.get_or_create(&labels).set(t.toxicity);
        }
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// Who asked, as a change's line says it: the client's `User-Agent`.
fn by(headers: &HeaderMap) -> String {
    let agent = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("a client");
    agent.chars().take(60).collect()
}

async fn reset(State(r): State<Registry>, headers: HeaderMap) -> StatusCode {
    r.reset().await;
    r.say(format_args!("reset: every toxic removed, every proxy enabled (by {})", by(&headers)));
    StatusCode::NO_CONTENT
}

async fn list(State(r): State<Registry>) -> Json<Value> {
    let proxies = r.proxies.lock().await;
    Json(Value::Object(proxies.iter().map(|(n, e)| (n.clone(), proxy_json(n, e))).collect()))
}

async fn create(State(r): State<Registry>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    let spec: ProxySpec = match body(&bytes) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match r.create_by(spec, &by(&headers)).await {
        Ok(body) => (StatusCode::CREATED, Json(body)).into_response(),
        Err(e) => e,
    }
}

async fn populate(State(r): State<Registry>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    let specs: Vec<ProxySpec> = match body(&bytes) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if let Some(twice) =
        specs.iter().enumerate().find_map(|(i, s)| specs[..i].iter().any(|o| o.name == s.name).then_some(&s.name))
    {
        return error(StatusCode::BAD_REQUEST, format!("proxy `{twice}` is given twice"));
    }
    let mut created = Vec::new();
    for spec in specs {
        // Like Toxiproxy: a proxy whose upstream or listen address changed is replaced;
        // one left as it was is answered as it stands.
        let stale = {
            let proxies = r.proxies.lock().await;
            proxies.get(&spec.name).map(|e| e.upstream != spec.upstream)
        };
        match stale {
            Some(false) => {
                if let Some(e) = r.proxies.lock().await.get(&spec.name) {
                    created.push(proxy_json(&spec.name, e));
                }
                continue;
            }
            Some(true) => {
                if let Some(e) = r.proxies.lock().await.remove(&spec.name) {
                    e.proxy.stop().await;
                    r.say(format_args!("replacing proxy `{}`: its upstream changed", spec.name));
                }
            }
            None => {}
        }
        match r.create_by(spec, &by(&headers)).await {
            Ok(body) => created.push(body),
            Err(e) => return e,
        }
    }
    (StatusCode::CREATED, Json(json!({ "proxies": created }))).into_response()
}

async fn show(State(r): State<Registry>, Path(name): Path<String>) -> Response {
    match r.proxies.lock().await.get(&name) {
        Some(e) => Json(proxy_json(&name, e)).into_response(),
        None => no_proxy(&name),
    }
}

async fn update(
    State(r): State<Registry>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let mut proxies = r.proxies.lock().await;
    let Some(e) = proxies.get_mut(&name) else {
        return no_proxy(&name);
    };
    let body: Value = match self::body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    // Moving a live proxy is not done here: said, rather than answered 200 unchanged.
    let now = proxy_json(&name, e);
    for key in ["listen", "upstream"] {
        if let Some(asked) = body.get(key)
            && Some(asked) != now.get(key)
        {
            return error(
                StatusCode::BAD_REQUEST,
                format!("changing a proxy's `{key}` is not supported: delete proxy `{name}` and create it again"),
            );
        }
    }
    match body.get("enabled") {
        None => {}
        Some(Value::Bool(enabled)) => {
            e.enabled = *enabled;
            r.say(format_args!(
                "{} proxy `{name}` (by {})",
                if *enabled { "enabled" } else { "disabled" },
                by(&headers)
            ));
        }
        Some(other) => return error(StatusCode::BAD_REQUEST, format!("`enabled` is true or false, got {other}")),
    }
    apply(e);
    // Like Toxiproxy, answer once the port is open (or closed) as asked.
    e.proxy.settled().await;
    Json(proxy_json(&name, e)).into_response()
}

async fn remove(State(r): State<Registry>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let removed = r.proxies.lock().await.remove(&name);
    match removed {
        Some(e) => {
            e.proxy.stop().await;
            r.say(format_args!("removed proxy `{name}` and its {} toxic(s) (by {})", e.toxics.len(), by(&headers)));
            StatusCode::NO_CONTENT.into_response()
        }
        None => no_proxy(&name),
    }
}

async fn toxics(State(r): State<Registry>, Path(name): Path<String>) -> Response {
    match r.proxies.lock().await.get(&name) {
        Some(e) => Json(json!(e.toxics)).into_response(),
        None => no_proxy(&name),
    }
}

async fn add_toxic(
    State(r): State<Registry>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    // An unknown proxy first: what is wrong with the body matters only for one that is.
    if !r.proxies.lock().await.contains_key(&name) {
        return no_proxy(&name);
    }
    let mut toxic: Toxic = match body(&bytes) {
        Ok(t) => t,
        Err(e) => return e,
    };
    if toxic.ttl.is_none() {
        toxic.ttl = toxic.attributes.get("ttl").and_then(Value::as_u64);
    }
    if toxic.name.is_empty() {
        toxic.name = format!("{}_{}", toxic.kind, toxic.stream);
    }
    if let Err(e) = to_fault(&toxic) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let mut proxies = r.proxies.lock().await;
    let Some(e) = proxies.get_mut(&name) else {
        return no_proxy(&name);
    };
    if e.toxics.iter().any(|t| t.name == toxic.name) {
        return error(StatusCode::CONFLICT, format!("toxic `{}` already exists", toxic.name));
    }
    e.toxics.push(toxic.clone());
    e.generation += 1;
    apply(e);
    r.say(format_args!(
        "added toxic `{}` to proxy `{name}`: {} {}, toxicity {}, {}{} (by {})",
        toxic.name,
        toxic.kind,
        toxic.stream,
        toxic.toxicity,
        Value::Object(toxic.attributes.clone().into_iter().collect()),
        toxic.ttl.map(|t| format!(", for {t} ms")).unwrap_or_default(),
        by(&headers)
    ));
    if let Some(ttl) = toxic.ttl {
        let (registry, proxy, toxic_name, generation) = (r.clone(), name.clone(), toxic.name.clone(), e.generation);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ttl)).await;
            let mut proxies = registry.proxies.lock().await;
            if let Some(e) = proxies.get_mut(&proxy)
                && let Some(pos) = e.toxics.iter().position(|t| t.name == toxic_name)
                && e.generation >= generation
            {
                e.toxics.remove(pos);
                e.generation += 1;
                apply(e);
                registry.say(format_args!("toxic `{toxic_name}` on proxy `{proxy}` ended (its ttl passed)"));
            }
        });
    }
    Json(json!(toxic)).into_response()
}

async fn show_toxic(State(r): State<Registry>, Path((name, toxic)): Path<(String, String)>) -> Response {
    let proxies = r.proxies.lock().await;
    match proxies.get(&name).and_then(|e| e.toxics.iter().find(|t| t.name == toxic)) {
        Some(t) => Json(json!(t)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("toxic `{toxic}` not found on `{name}`")),
    }
}

async fn update_toxic(
    State(r): State<Registry>,
    Path((name, toxic)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let mut proxies = r.proxies.lock().await;
    let Some(e) = proxies.get_mut(&name) else {
        return no_proxy(&name);
    };
    let body: Value = match self::body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some(t) = e.toxics.iter_mut().find(|t| t.name == toxic) else {
        return error(StatusCode::NOT_FOUND, format!("toxic `{toxic}` not found on `{name}`"));
    };
    let mut updated = t.clone();
    if let Some(Value::Object(attrs)) = body.get("attributes") {
        updated.attributes.extend(attrs.clone());
    }
    match body.get("toxicity") {
        None => {}
        Some(v) => match v.as_f64() {
            Some(x) => updated.toxicity = x,
            None => return error(StatusCode::BAD_REQUEST, format!("`toxicity` is a number from 0 to 1, got {v}")),
        },
    }
    if let Some(v) = body.get("attributes").filter(|v| !v.is_object()) {
        return error(StatusCode::BAD_REQUEST, format!("`attributes` is an object, got {v}"));
    }
    if let Err(err) = to_fault(&updated) {
        return error(StatusCode::BAD_REQUEST, err);
    }
    *t = updated.clone();
    e.generation += 1;
    apply(e);
    r.say(format_args!(
        "changed toxic `{toxic}` on proxy `{name}`: toxicity {}, {} (by {})",
        updated.toxicity,
        Value::Object(updated.attributes.clone().into_iter().collect()),
        by(&headers)
    ));
    Json(json!(updated)).into_response()
}

async fn remove_toxic(
    State(r): State<Registry>,
    Path((name, toxic)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut proxies = r.proxies.lock().await;
    let Some(e) = proxies.get_mut(&name) else {
        return no_proxy(&name);
    };
    let before = e.toxics.len();
    e.toxics.retain(|t| t.name != toxic);
    if e.toxics.len() == before {
        return error(StatusCode::NOT_FOUND, format!("toxic `{toxic}` not found on `{name}`"));
    }
    e.generation += 1;
    apply(e);
    r.say(format_args!("removed toxic `{toxic}` from proxy `{name}` (by {})", by(&headers)));
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toxic(kind: &str, attrs: Value) -> Toxic {
        Toxic {
            name: "t".into(),
            kind: kind.into(),
            stream: "upstream".into(),
            toxicity: 0.5,
            attributes: serde_json::from_value(attrs).unwrap(),
            ttl: None,
        }
    }

    #[test]
    fn toxics_map_onto_faults() {
        let f = to_fault(&toxic("latency", json!({"latency": 100, "jitter": 10}))).unwrap();
        assert_eq!(f.kind, FaultKind::Latency { delay: Duration::from_millis(100), jitter: Duration::from_millis(10) });
        assert_eq!((f.probability, f.direction), (0.5, Direction::Upstream));
        let f = to_fault(&toxic("bandwidth", json!({"rate": 256}))).unwrap();
        assert_eq!(f.kind, FaultKind::Bandwidth { bytes_per_sec: 256_000 });
        assert_eq!(to_fault(&toxic("timeout", json!({"timeout": 0}))).unwrap().kind, FaultKind::Blackhole);
        assert_eq!(
            to_fault(&toxic("limit_data", json!({"bytes": 9}))).unwrap().kind,
            FaultKind::LimitData { bytes: 9 }
        );
        assert!(to_fault(&toxic("explode", json!({}))).unwrap_err().contains("unknown toxic type"));
    }

    #[test]
    fn attributes_out_of_their_range_are_refused_by_name() {
        for (kind, attrs, key) in [
            ("latency", json!({"latency": -5}), "`latency`"),
            ("latency", json!({"latency": 10, "jitter": -1}), "`jitter`"),
            ("limit_data", json!({"bytes": -1}), "`bytes`"),
            ("bandwidth", json!({"rate": 0}), "`rate`"),
            ("slicer", json!({"average_size": 0}), "`average_size`"),
            ("corrupt", json!({"rate": 5}), "`rate`"),
            ("latency", json!({"latency": "slow"}), "`latency`"),
        ] {
            let err = to_fault(&toxic(kind, attrs.clone())).unwrap_err();
            assert!(err.contains(key), "{kind} {attrs}: {err}");
        }
    }
}
