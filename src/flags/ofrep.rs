//! An OFREP (OpenFeature Remote Evaluation Protocol) server on loopback.
//!
//! The system under test evaluates its flags here, one at a time
//! (`POST /ofrep/v1/evaluate/flags/{key}`) or all at once (`POST /ofrep/v1/evaluate/flags`,
//! with an `ETag` so that polling clients get `304 Not Modified` while nothing changed).
//! The runner calls [`OfrepServer::set`] at each stage boundary and, when a client polls
//! in bulk, waits with [`OfrepServer::picked_up`] until a poll has seen the new state (a
//! client that evaluates per request needs no wait). The server counts what is asked of
//! each flag ([`OfrepServer::take_exposure`]), so a stage whose changed flag was never
//! evaluated is known not to have run the new path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::FlagState;
use crate::health::Trouble;
use crate::server::Server;
use axum::extract::DefaultBodyLimit;
use tokio::sync::watch;

#[derive(Default)]
struct Flags {
    states: BTreeMap<String, FlagState>,
    generation: u64,
}

#[derive(Clone)]
struct Shared {
    flags: Arc<Mutex<Flags>>,
    served: Arc<watch::Sender<u64>>,
    tally: Arc<Mutex<Tally>>,
    /// Whether any client ever asked for every flag at once (a polling client, which
    /// must see a new state before a stage starts).
    bulk_seen: Arc<std::sync::atomic::AtomicBool>,
    contexts: Arc<Mutex<Contexts>>,
    /// Requests being read or answered at once: a flood of clients holding bodies
    /// waits in the kernel's buffers, not in stagegate's memory.
    reading: Arc<tokio::sync::Semaphore>,
}

/// The largest evaluation request read: an OFREP context is a few attributes.
const MAX_BODY: usize = 64 * 1024;
/// Requests read or answered at once (at most 32 MiB of bodies held).
const MAX_READING: usize = 512;
/// How long a request's body may take to arrive, and a request to wait for its turn.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// The string values the evaluation contexts carried since the last take, as hashes
/// (the values themselves are not kept), by flag (`None`: a bulk evaluation) and
/// attribute path (`targetingKey`, `user.email`, `tags[]`).
#[derive(Debug, Default)]
pub struct Contexts {
    pub values: HashMap<(Option<String>, String), HashSet<u64>>,
    /// Hashes kept in all; past [`MAX_CONTEXT_VALUES`] no more are (the count then
    /// says "at least").
    kept: usize,
    /// Whether some were not kept for the bound.
    pub capped: bool,
}

/// Personal data found in evaluation contexts: a record field marked `pii: true` whose
/// values the system under test sent with its flag evaluations.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct PiiInContext {
    /// The flag evaluated; `None` for bulk evaluations (every flag at once).
    pub flag: Option<String>,
    /// Where in the context: `targetingKey`, `email`, `user.email`.
    pub attribute: String,
    /// The record field whose values were found there.
    pub field: String,
    /// Distinct values found.
    pub values: u64,
}

impl Contexts {
    /// The personal data among these values: `matches` gives, for a value's hash, the
    /// `pii` field of a sent record it is the value of. Returns each place found and
    /// the number of distinct values found in all.
    pub fn pii(&self, matches: impl Fn(&HashSet<u64>) -> HashMap<u64, Arc<str>>) -> (Vec<PiiInContext>, u64) {
        let all: HashSet<u64> = self.values.values().flatten().copied().collect();
        let found = matches(&all);
        let mut places: BTreeMap<(Option<String>, String, String), u64> = BTreeMap::new();
        for ((flag, attribute), hashes) in &self.values {
            for h in hashes {
                if let Some(field) = found.get(h) {
                    *places.entry((flag.clone(), attribute.clone(), field.to_string())).or_default() += 1;
                }
            }
        }
        let list = places
            .into_iter()
            .map(|((flag, attribute, field), values)| PiiInContext { flag, attribute, field, values })
            .collect();
        (list, found.len() as u64)
    }
}

/// The most context values kept for one stage.
const MAX_CONTEXT_VALUES: usize = 200_000;
/// The most attributes read from one context, and how deep.
const MAX_CONTEXT_ATTRIBUTES: usize = 64;
const MAX_CONTEXT_DEPTH: usize = 4;

impl Contexts {
    /// Notes every string value of an OFREP request's `context`.
    fn note(&mut self, flag: Option<&str>, context: &Value) {
        let mut found = Vec::new();
        walk(context, String::new(), 0, &mut found);
        for (path, hash) in found {
            if self.kept >= MAX_CONTEXT_VALUES {
                self.capped = true;
                return;
            }
            if self.values.entry((flag.map(str::to_string), path)).or_default().insert(hash) {
                self.kept += 1;
            }
        }
    }
}

/// The string values inside `v` with their attribute paths, bounded in number and depth.
fn walk(v: &Value, path: String, depth: usize, out: &mut Vec<(String, u64)>) {
    if out.len() >= MAX_CONTEXT_ATTRIBUTES || depth > MAX_CONTEXT_DEPTH {
        return;
    }
    match v {
        Value::String(_) if !path.is_empty() => out.push((path, crate::quality::value_hash(v))),
        Value::Object(map) => {
            for (k, inner) in map.iter().take(MAX_CONTEXT_ATTRIBUTES) {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(inner, p, depth + 1, out);
            }
        }
        Value::Array(items) => {
            for inner in items.iter().take(MAX_CONTEXT_ATTRIBUTES) {
                walk(inner, format!("{path}[]"), depth + 1, out);
            }
        }
        _ => {}
    }
}

/// Distinct targeting keys kept per flag and variant; past it they are counted no more
/// (the count says "at least").
const MAX_KEYS: usize = 100_000;

/// What the system under test asked of each flag since the last take.
#[derive(Debug, Default)]
struct Tally {
    flags: BTreeMap<String, FlagTally>,
}

#[derive(Debug, Default)]
struct FlagTally {
    /// Evaluations of the flag on its own, by variant, and their distinct keys.
    single: BTreeMap<String, (u64, std::collections::HashSet<String>)>,
    /// Answers to a request for every flag (which hold this one).
    bulk: u64,
}

/// What the system under test asked of one flag over a stage.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct FlagExposure {
    /// How the system under test got the flag: `evaluated` (OFREP), `header` (sent with
    /// each request), `environment` (given at start).
    pub how: &'static str,
    /// Evaluations or requests, by variant (the value as text).
    pub by_variant: BTreeMap<String, VariantExposure>,
    /// Answers to requests for every flag at once (OFREP bulk evaluation).
    pub bulk_fetches: u64,
}

impl FlagExposure {
    /// The same counts with each variant's share of them filled in.
    pub fn with_shares(mut self) -> Self {
        let total: u64 = self.by_variant.values().map(|v| v.evaluations).sum();
        for v in self.by_variant.values_mut() {
            v.share = if total == 0 { 0.0 } else { v.evaluations as f64 / total as f64 };
        }
        self
    }
}

/// One variant's count.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct VariantExposure {
    pub evaluations: u64,
    /// Its share of the flag's evaluations (or requests, or values given) in the stage.
    pub share: f64,
    /// Distinct targeting keys (at most 100000 counted).
    pub keys: u64,
}

/// A running OFREP endpoint.
pub struct OfrepServer {
    server: Server,
    shared: Shared,
}

impl OfrepServer {
    /// Starts serving on a free loopback port.
    pub async fn start(trouble: Option<Trouble>) -> std::io::Result<OfrepServer> {
        let shared = Shared {
            flags: Arc::new(Mutex::new(Flags::default())),
            served: Arc::new(watch::channel(0).0),
            tally: Arc::default(),
            contexts: Arc::default(),
            reading: Arc::new(tokio::sync::Semaphore::new(MAX_READING)),
            bulk_seen: Arc::default(),
        };
        let app = Router::new()
            .route("/ofrep/v1/evaluate/flags", post(bulk))
            .route("/ofrep/v1/evaluate/flags/{key}", post(single))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(shared.clone());
        let server = Server::start_local("OFREP flag endpoint", app, trouble).await?;
        Ok(OfrepServer { server, shared })
    }

    /// The base URL a client is configured with (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Replaces every flag's state. Returns the new generation.
    pub fn set(&self, states: BTreeMap<String, FlagState>) -> u64 {
        let mut flags = self.shared.flags.lock().unwrap_or_else(|p| p.into_inner());
        flags.states = states;
        flags.generation += 1;
        flags.generation
    }

    /// Waits until a bulk evaluation has served `generation` (or later), up to `limit`.
    /// Returns whether it did.
    pub async fn picked_up(&self, generation: u64, limit: Duration) -> bool {
        let mut rx = self.shared.served.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|g| *g >= generation)).await.is_ok_and(|r| r.is_ok())
    }

    /// Whether a client ever fetched every flag at once (then it holds the state it
    /// fetched until it polls again).
    pub fn bulk_clients(&self) -> bool {
        self.shared.bulk_seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The evaluation contexts' string values since the last call.
    pub fn take_contexts(&self) -> Contexts {
        std::mem::take(&mut *self.shared.contexts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What the system under test asked of each flag since the last call.
    pub fn take_exposure(&self) -> BTreeMap<String, FlagExposure> {
        let tally = std::mem::take(&mut *self.shared.tally.lock().unwrap_or_else(|p| p.into_inner()));
        tally
            .flags
            .into_iter()
            .map(|(flag, t)| {
                let by_variant = t
                    .single
                    .into_iter()
                    .map(|(v, (n, keys))| (v, VariantExposure { evaluations: n, share: 0.0, keys: keys.len() as u64 }))
                    .collect();
                (flag, FlagExposure { how: "evaluated", by_variant, bulk_fetches: t.bulk }.with_shares())
            })
            .collect()
    }

    /// Stops serving, within a deadline.
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

#[async_trait::async_trait]
impl crate::teardown::Resource for OfrepServer {
    fn label(&self) -> String {
        "the OFREP flag endpoint".into()
    }

    async fn stop(&self, forced: bool) {
        self.server.stop(forced).await;
    }

    fn stop_now(&self) {
        self.server.stop_now();
    }
}

/// The OFREP answer for one flag, for a caller whose context has `key` as targetingKey.
fn evaluation(flag: &str, state: &FlagState, key: Option<&str>) -> Value {
    let value = state.value_for(flag, key);
    let variant = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // SPLIT tells a client that the answer depends on the targeting key it sends.
    let reason = match state {
        FlagState::Fixed(_) => "STATIC",
        FlagState::Split { .. } => "SPLIT",
    };
    json!({ "key": flag, "value": value, "reason": reason, "variant": variant, "metadata": {} })
}

/// Reads an evaluation request's body, in turn with the others and within
/// [`BODY_TIMEOUT`], and notes its context (for personal data in it) under `flag`.
/// Returns the targeting key, if any, and the permit that keeps the request's turn; or
/// the answer to give: 503 while too many are read, 408 for a body that does not
/// arrive, 413 for one too large, 400 for one that is not an OFREP request.
async fn read_request(
    s: &Shared,
    flag: Option<&str>,
    body: axum::body::Body,
) -> Result<(Option<String>, tokio::sync::OwnedSemaphorePermit), Response> {
    let error = |status: StatusCode, code: &str, details: &str| {
        (status, Json(json!({ "errorCode": code, "errorDetails": details }))).into_response()
    };
    let permit = match tokio::time::timeout(BODY_TIMEOUT, s.reading.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "GENERAL", "too many evaluations at once")),
    };
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "INVALID_CONTEXT", "the request is over 64 KiB"));
        }
        Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "GENERAL", "the request's body did not arrive")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, permit));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(error(StatusCode::BAD_REQUEST, "PARSE_ERROR", "the request is not JSON"));
    };
    if !v.is_object() || !(v["context"].is_object() || v["context"].is_null()) {
        return Err(error(StatusCode::BAD_REQUEST, "INVALID_CONTEXT", "expected {\"context\": {...}}"));
    }
    s.contexts.lock().unwrap_or_else(|p| p.into_inner()).note(flag, &v["context"]);
    Ok((v["context"]["targetingKey"].as_str().map(String::from), permit))
}

async fn single(State(s): State<Shared>, Path(key): Path<String>, body: axum::body::Body) -> Response {
    let (target, _turn) = match read_request(&s, Some(&key), body).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let flags = s.flags.lock().unwrap_or_else(|p| p.into_inner());
    match flags.states.get(&key) {
        Some(state) => {
            let answer = evaluation(&key, state, target.as_deref());
            let variant = answer["variant"].as_str().unwrap_or_default().to_string();
            let mut tally = s.tally.lock().unwrap_or_else(|p| p.into_inner());
            let (n, keys) = tally.flags.entry(key.clone()).or_default().single.entry(variant).or_default();
            *n += 1;
            if let Some(t) = target
                && keys.len() < MAX_KEYS
            {
                keys.insert(t);
            }
            Json(answer).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": "no such flag in this scenario" })),
        )
            .into_response(),
    }
}

async fn bulk(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let (target, _turn) = match read_request(&s, None, body).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let (body, generation) = {
        let flags = s.flags.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<Value> = flags.states.iter().map(|(k, st)| evaluation(k, st, target.as_deref())).collect();
        let mut tally = s.tally.lock().unwrap_or_else(|p| p.into_inner());
        for flag in flags.states.keys() {
            tally.flags.entry(flag.clone()).or_default().bulk += 1;
        }
        (json!({ "flags": list }), flags.generation)
    };
    s.bulk_seen.store(true, std::sync::atomic::Ordering::Relaxed);
    s.served.send_if_modified(|g| {
        let newer = generation > *g;
        if newer {
            *g = generation;
        }
        newer
    });
    let etag = format!("\"{generation}\"");
    if target.is_none() && headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_single_and_bulk_with_etag() {
        let server = OfrepServer::start(None).await.unwrap();
        let g = server.set(BTreeMap::from([("new-enricher".to_string(), FlagState::Fixed(json!(true)))]));
        let client = crate::http_client::client();
        let one: Value = client
            .post(format!("{}/ofrep/v1/evaluate/flags/new-enricher", server.url()))
            .json(&json!({"context": {}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(one["value"], json!(true));
        let missing = client.post(format!("{}/ofrep/v1/evaluate/flags/nope", server.url())).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        let all = client.post(format!("{}/ofrep/v1/evaluate/flags", server.url())).send().await.unwrap();
        let etag = all.headers()["etag"].to_str().unwrap().to_string();
        let body: Value = all.json().await.unwrap();
        assert_eq!(body["flags"][0]["key"], "new-enricher");
        assert!(server.picked_up(g, Duration::from_millis(10)).await);
        let again = client
            .post(format!("{}/ofrep/v1/evaluate/flags", server.url()))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        let g2 = server.set(BTreeMap::from([("new-enricher".to_string(), FlagState::Fixed(json!(false)))]));
        assert!(!server.picked_up(g2, Duration::from_millis(20)).await);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_request_that_is_not_an_evaluation_is_refused_and_not_kept() {
        let server = OfrepServer::start(None).await.unwrap();
        server.set(BTreeMap::from([("f".to_string(), FlagState::Fixed(json!(true)))]));
        let client = crate::http_client::client();
        let url = format!("{}/ofrep/v1/evaluate/flags/f", server.url());
        let status = |body: &'static str| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.post(url).body(body).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status("not json").await, 400);
        assert_eq!(status(r#"{"context": "a string"}"#).await, 400);
        assert_eq!(status("[1, 2]").await, 400);
        assert_eq!(status("").await, 200, "no body: an evaluation without context");
        assert_eq!(status(r#"{"context": {"targetingKey": "k"}}"#).await, 200);
        let big = format!(r#"{{"context": {{"a": "{}"}}}}"#, "x".repeat(MAX_BODY));
        assert_eq!(client.post(&url).body(big).send().await.unwrap().status(), 413);
        let contexts = server.take_contexts();
        assert_eq!(contexts.values.len(), 1, "only the evaluation's context is kept: {:?}", contexts.values);
        server.stop().await;
    }

    #[test]
    fn personal_data_is_found_by_attribute_path_in_nested_contexts() {
        let mut c = Contexts::default();
        let context = json!({
            "targetingKey": "ada@example.com",
            "user": { "card": "4111111111111111", "plan": "gold" },
            "tags": ["ada@example.com"],
            "age": 36
        });
        c.note(Some("f"), &context);
        c.note(None, &json!({ "targetingKey": "grace@example.com" }));
        let pii: HashMap<u64, Arc<str>> = [
            (crate::quality::value_hash(&json!("ada@example.com")), Arc::from("email")),
            (crate::quality::value_hash(&json!("grace@example.com")), Arc::from("email")),
            (crate::quality::value_hash(&json!("4111111111111111")), Arc::from("card")),
        ]
        .into();
        let (places, values) =
            c.pii(|hashes| pii.iter().filter(|(h, _)| hashes.contains(h)).map(|(h, f)| (*h, f.clone())).collect());
        let seen: Vec<(Option<&str>, &str, &str)> =
            places.iter().map(|p| (p.flag.as_deref(), p.attribute.as_str(), p.field.as_str())).collect();
        assert_eq!(
            seen,
            [
                (None, "targetingKey", "email"),
                (Some("f"), "tags[]", "email"),
                (Some("f"), "targetingKey", "email"),
                (Some("f"), "user.card", "card"),
            ]
        );
        assert_eq!(values, 3, "distinct values, wherever they were found");
    }

    #[test]
    fn a_flood_of_context_values_is_bounded() {
        let mut c = Contexts::default();
        for i in 0..(MAX_CONTEXT_VALUES + 10) {
            c.note(Some("f"), &json!({ "targetingKey": format!("k{i}") }));
        }
        assert!(c.capped);
        assert_eq!(c.values.values().map(HashSet::len).sum::<usize>(), MAX_CONTEXT_VALUES);
        let wide: serde_json::Map<String, Value> = (0..1000).map(|i| (format!("a{i}"), json!("v"))).collect();
        let mut one = Contexts::default();
        one.note(None, &Value::Object(wide));
        assert_eq!(one.values.len(), MAX_CONTEXT_ATTRIBUTES);
    }

    #[tokio::test]
    async fn a_split_flag_answers_by_targeting_key() {
        let server = OfrepServer::start(None).await.unwrap();
        let state = FlagState::Split { variants: vec![(json!(true), 0.5)], rest: json!(false) };
        server.set(BTreeMap::from([("f".to_string(), state.clone())]));
        let client = crate::http_client::client();
        for key in ["a", "b", "c", "d", "e"] {
            let v: Value = client
                .post(format!("{}/ofrep/v1/evaluate/flags/f", server.url()))
                .json(&json!({"context": {"targetingKey": key}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(&v["value"], state.value_for("f", Some(key)));
            assert_eq!(v["reason"], "SPLIT");
        }
        server.stop().await;
    }
}
