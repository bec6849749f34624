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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
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

/// The proxies the API manages.
#[derive(Clone, Default)]
pub struct Registry {
    proxies: Arc<Mutex<BTreeMap<String, Entry>>>,
}

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
    /// Creates a proxy; fails if the name is taken or an address does not resolve.
    pub async fn create(&self, spec: ProxySpec) -> Result<Value, Response> {
        let mut proxies = self.proxies.lock().await;
        if proxies.contains_key(&spec.name) {
            return Err(error(StatusCode::CONFLICT, format!("proxy `{}` already exists", spec.name)));
        }
        let upstream = resolve(&spec.upstream).await.map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let listen = resolve(&spec.listen).await.map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
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

    /// Lifts every toxic of every proxy (the first thing a stop does). A request that
    /// holds the registry holds it for a second at most; past that, the proxies are
    /// lifted as each one stops.
    pub async fn lift_all(&self) {
        match tokio::time::timeout(Duration::from_millis(1500), self.proxies.lock()).await {
            Ok(proxies) => proxies.values().for_each(|e| e.proxy.set_active(Vec::new())),
            Err(_) => tracing::warn!("the proxy registry is busy; its proxies are lifted as they stop"),
        }
    }

    /// Stops every proxy (faults lifted, listeners closed).
    pub async fn stop(&self) {
        let proxies = std::mem::take(&mut *self.proxies.lock().await);
        for (_, e) in proxies {
            e.proxy.stop().await;
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut found = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve `{addr}`: {e}"))?;
    found.next().ok_or_else(|| format!("`{addr}` resolves to nothing"))
}

/// The control API's routes.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { format!("{} (stagegate, toxiproxy-compatible API)", env!("CARGO_PKG_VERSION")) }),
        )
        .route("/reset", post(reset))
        .route("/populate", post(populate))
        .route("/proxies", get(list).post(create))
        .route("/proxies/{name}", get(show).post(update).delete(remove))
        .route("/proxies/{name}/toxics", get(toxics).post(add_toxic))
        .route("/proxies/{name}/toxics/{toxic}", get(show_toxic).post(update_toxic).delete(remove_toxic))
        .layer(axum::extract::DefaultBodyLimit::max(crate::limits::CONTROL_BODY_BYTES))
        .with_state(registry)
}

async fn reset(State(r): State<Registry>) -> StatusCode {
    r.reset().await;
    StatusCode::NO_CONTENT
}

async fn list(State(r): State<Registry>) -> Json<Value> {
    let proxies = r.proxies.lock().await;
    Json(Value::Object(proxies.iter().map(|(n, e)| (n.clone(), proxy_json(n, e))).collect()))
}

async fn create(State(r): State<Registry>, bytes: axum::body::Bytes) -> Response {
    let spec: ProxySpec = match body(&bytes) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match r.create(spec).await {
        Ok(body) => (StatusCode::CREATED, Json(body)).into_response(),
        Err(e) => e,
    }
}

async fn populate(State(r): State<Registry>, bytes: axum::body::Bytes) -> Response {
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
                }
            }
            None => {}
        }
        match r.create(spec).await {
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

async fn update(State(r): State<Registry>, Path(name): Path<String>, bytes: axum::body::Bytes) -> Response {
    let body: Value = match self::body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let mut proxies = r.proxies.lock().await;
    let Some(e) = proxies.get_mut(&name) else {
        return no_proxy(&name);
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
    if let Some(enabled) = body.get("enabled").and_then(Value::as_bool) {
        e.enabled = enabled;
    }
    apply(e);
    // Like Toxiproxy, answer once the port is open (or closed) as asked.
    e.proxy.settled().await;
    Json(proxy_json(&name, e)).into_response()
}

async fn remove(State(r): State<Registry>, Path(name): Path<String>) -> Response {
    let removed = r.proxies.lock().await.remove(&name);
    match removed {
        Some(e) => {
            e.proxy.stop().await;
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

async fn add_toxic(State(r): State<Registry>, Path(name): Path<String>, bytes: axum::body::Bytes) -> Response {
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
    bytes: axum::body::Bytes,
) -> Response {
    let body: Value = match self::body(&bytes) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let mut proxies = r.proxies.lock().await;
    let Some(e) = proxies.get_mut(&name) else {
        return no_proxy(&name);
    };
    let Some(t) = e.toxics.iter_mut().find(|t| t.name == toxic) else {
        return error(StatusCode::NOT_FOUND, format!("toxic `{toxic}` not found on `{name}`"));
    };
    let mut updated = t.clone();
    if let Some(Value::Object(attrs)) = body.get("attributes") {
        updated.attributes.extend(attrs.clone());
    }
    if let Some(x) = body.get("toxicity").and_then(Value::as_f64) {
        updated.toxicity = x;
    }
    if let Err(err) = to_fault(&updated) {
        return error(StatusCode::BAD_REQUEST, err);
    }
    *t = updated.clone();
    e.generation += 1;
    apply(e);
    Json(json!(updated)).into_response()
}

async fn remove_toxic(State(r): State<Registry>, Path((name, toxic)): Path<(String, String)>) -> Response {
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
