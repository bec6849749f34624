//! The builtin reference pipeline (`target: { builtin: orders-pipeline }`).
//!
//! An HTTP service that accepts orders (`POST /orders`), validates them, enriches them
//! along one of two code paths chosen by the flag `new-enricher`, and appends them to
//! its store over TCP, through stagegate's fault proxy. It reads its flags from the
//! OFREP endpoint, polling with an ETag, as an OpenFeature client would.
//!
//! The two paths differ the way a real candidate might. The current one (`v1`) writes
//! with an idempotency token, so its retries are safe, and checks every field. The new
//! one (`v2`) has the [`Defects`] the scenario names (`target.defects`); by default it
//! retries without a token, so when the store applies a write but the answer is lost (a
//! reset connection) the retry stores the order twice, and checks fewer fields, so some
//! malformed input gets through. A fault on the store, or bad input, reveals them. With
//! `defects: []` the new path is as sound as the current one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use crate::health::Trouble;
use crate::server::Server;

/// The flag that picks the enrichment path.
pub const FLAG: &str = "new-enricher";

/// The dependency the pipeline writes to: the one named `store`, or else the only
/// `builtin: kv-store` one (a `process` or `external` store serving the same protocol,
/// such as `stagegate kv-store`, must be named `store`).
pub fn store_dependency<'a>(
    deps: impl IntoIterator<Item = &'a crate::deps::Dependency> + Clone,
) -> Result<&'a crate::deps::Dependency, String> {
    if let Some(d) = deps.clone().into_iter().find(|d| d.name == "store") {
        return Ok(d);
    }
    let builtin = crate::deps::Provision::Builtin(crate::deps::BuiltinDependency::KvStore);
    let stores: Vec<&crate::deps::Dependency> = deps.into_iter().filter(|d| d.provision == builtin).collect();
    match stores.as_slice() {
        [only] => Ok(only),
        [] => Err("needs a store: a dependency named `store`".into()),
        _ => Err("writes to the dependency named `store`, and none is (several are kv-stores)".into()),
    }
}

/// Defects the candidate path (`new-enricher` on) can be given, for rehearsing what a
/// rehearsal must catch (`target.defects`). The current path never has any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Defects {
    /// A store call that timed out is not retried, and the order is acknowledged anyway:
    /// it is lost.
    pub drop_on_timeout: bool,
    /// Retries carry no idempotency token: a write the store applied but whose answer
    /// was lost is stored twice.
    pub duplicate_on_retry: bool,
    /// 20 ms more per order.
    pub slow_20ms: bool,
    /// The stored order's `currency` is lower-cased: a sent field changed.
    pub alter_field: bool,
    /// The contact and event-time fields are not checked: some malformed orders pass.
    pub accept_malformed: bool,
    /// Store calls have no timeout: a store that swallows traffic holds every order.
    pub hang_on_blackhole: bool,
    /// Past [`LOAD_LIMIT`] candidate orders in a second, the new path's write buffer
    /// overflows and each further order is stored twice: sound for a small cohort,
    /// broken once exposure widens.
    pub duplicate_under_load: bool,
}

/// Candidate orders a second the `duplicate-under-load` defect takes before it
/// duplicates.
pub const LOAD_LIMIT: u32 = 150;

impl Defects {
    /// Every defect's name in a scenario.
    pub const NAMES: [&'static str; 7] = [
        "drop-on-timeout",
        "duplicate-on-retry",
        "slow-20ms",
        "alter-field",
        "accept-malformed",
        "hang-on-blackhole",
        "duplicate-under-load",
    ];

    /// The candidate path when a scenario names no defects: it forgot its idempotency
    /// token and two field checks (what the example scenarios catch).
    pub fn unless_named() -> Defects {
        Defects { duplicate_on_retry: true, accept_malformed: true, ..Defects::default() }
    }

    /// Turns on the defect called `name`; `false` for an unknown name.
    pub fn turn_on(&mut self, name: &str) -> bool {
        let slot = match name {
            "drop-on-timeout" => &mut self.drop_on_timeout,
            "duplicate-on-retry" => &mut self.duplicate_on_retry,
            "slow-20ms" => &mut self.slow_20ms,
            "alter-field" => &mut self.alter_field,
            "accept-malformed" => &mut self.accept_malformed,
            "hang-on-blackhole" => &mut self.hang_on_blackhole,
            "duplicate-under-load" => &mut self.duplicate_under_load,
            _ => return false,
        };
        *slot = true;
        true
    }

    /// The names of the defects that are on.
    pub fn names(&self) -> Vec<&'static str> {
        let on = [
            self.drop_on_timeout,
            self.duplicate_on_retry,
            self.slow_20ms,
            self.alter_field,
            self.accept_malformed,
            self.hang_on_blackhole,
            self.duplicate_under_load,
        ];
        Defects::NAMES.iter().zip(on).filter(|(_, on)| *on).map(|(n, _)| *n).collect()
    }
}

/// How long one store call may take before the pipeline gives up on it.
const STORE_TIMEOUT: Duration = Duration::from_millis(300);
/// Store calls per order, the first included.
const ATTEMPTS: u32 = 4;
/// A pooled store connection is retired after this many calls, as connection pools with
/// a maximum lifetime do; new connections keep arriving at the store's proxy.
const CALLS_PER_CONNECTION: u32 = 20;
const CURRENCIES: [(&str, &str); 3] = [("USD", "us"), ("EUR", "eu"), ("GBP", "uk")];

struct Conn {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    calls: u32,
}

/// A pooled client of the builtin store.
struct StoreClient {
    addr: SocketAddr,
    idle: Mutex<Vec<Conn>>,
    /// The pipeline runs inside stagegate: its running out of descriptors is stagegate's
    /// failure, not the candidate's.
    trouble: Option<Trouble>,
}

impl StoreClient {
    /// Sends one request line and reads the answer line, plus the `N <count>` lines
    /// that follow it when the answer announces them.
    async fn call(&self, line: &str) -> Result<Vec<String>, String> {
        self.call_within(line, Some(STORE_TIMEOUT)).await
    }

    /// [`StoreClient::call`] with its own time limit (`None`: wait as long as it takes).
    async fn call_within(&self, line: &str, limit: Option<Duration>) -> Result<Vec<String>, String> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let attempt = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    let s = TcpStream::connect(self.addr).await.map_err(|e| {
                        if crate::health::is_own_exhaustion(&e)
                            && let Some(t) = &self.trouble
                        {
                            t.fail(format!("the builtin pipeline cannot open a connection to its store: {e}"));
                        }
                        e.to_string()
                    })?;
                    let _ = s.set_nodelay(true);
                    let (r, w) = s.into_split();
                    Conn { lines: BufReader::new(r).lines(), write: w, calls: 0 }
                }
            };
            conn.write.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            let mut expected = 1;
            while answer.len() < expected {
                match conn.lines.next_line().await {
                    Ok(Some(l)) => {
                        if answer.is_empty()
                            && let Some(n) = l.strip_prefix("N ").and_then(|n| n.parse::<usize>().ok())
                        {
                            expected += n;
                        }
                        answer.push(l);
                    }
                    Ok(None) => return Err("store closed the connection".to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok((answer, conn))
        };
        let done = match limit {
            Some(limit) => tokio::time::timeout(limit, attempt).await,
            None => Ok(attempt.await),
        };
        match done {
            Ok(Ok((answer, mut conn))) => {
                conn.calls += 1;
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < 64 && conn.calls < CALLS_PER_CONNECTION {
                    idle.push(conn);
                }
                Ok(answer)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("store call timed out".into()),
        }
    }

    /// Appends with retries; `token` makes the retries idempotent. `defects` are the
    /// path's (no timeout, or giving up on a timeout and calling it done).
    async fn append(&self, key: &str, token: Option<&str>, json: &str, defects: Defects) -> Result<(), String> {
        let line = format!("APPEND {key} {} {json}\n", token.unwrap_or("-"));
        let limit = (!defects.hang_on_blackhole).then_some(STORE_TIMEOUT);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(10 * attempt as u64)).await;
            }
            match self.call_within(&line, limit).await {
                Ok(answer) if answer[0].starts_with("OK ") => return Ok(()),
                Ok(answer) => last = answer.join(" "),
                Err(e) if defects.drop_on_timeout && e.contains("timed out") => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// What the last flag poll said about [`FLAG`].
const FLAG_OFF: u8 = 0;
const FLAG_ON: u8 = 1;
/// The answer depends on the order: evaluate per order with its id as targeting key.
const FLAG_PER_KEY: u8 = 2;

#[derive(Clone)]
struct App {
    /// The candidate path's defects.
    defects: Defects,
    store: Arc<StoreClient>,
    new_enricher: Arc<AtomicU8>,
    ofrep_url: Arc<str>,
    http: reqwest::Client,
    /// Candidate orders in the current second: (the second's start, count).
    candidate_load: Arc<std::sync::Mutex<(std::time::Instant, u32)>>,
}

impl App {
    /// Counts one candidate order; whether the second already had [`LOAD_LIMIT`].
    fn over_load_limit(&self) -> bool {
        let mut load = self.candidate_load.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if now.duration_since(load.0) >= Duration::from_secs(1) {
            *load = (now, 0);
        }
        load.1 += 1;
        load.1 > LOAD_LIMIT
    }

    /// Whether the new path serves the order with `key`.
    async fn new_path_for(&self, key: &str) -> bool {
        match self.new_enricher.load(Ordering::Relaxed) {
            FLAG_ON => true,
            FLAG_PER_KEY => {
                let answer = self
                    .http
                    .post(format!("{}/ofrep/v1/evaluate/flags/{FLAG}", self.ofrep_url))
                    .json(&json!({ "context": { "targetingKey": key } }))
                    .send()
                    .await;
                match answer {
                    Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["value"].as_bool()).unwrap_or(false),
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }
}

/// A running builtin pipeline.
pub struct Pipeline {
    server: Server,
    cancel: CancellationToken,
    poller: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts the pipeline on a free loopback port, writing to `store` and reading its
    /// flags from the OFREP endpoint at `ofrep_url`.
    pub async fn start(
        store: SocketAddr,
        ofrep_url: String,
        defects: Defects,
        trouble: Option<Trouble>,
    ) -> std::io::Result<Pipeline> {
        let app = App {
            defects,
            store: Arc::new(StoreClient { addr: store, idle: Mutex::new(Vec::new()), trouble: trouble.clone() }),
            new_enricher: Arc::new(AtomicU8::new(FLAG_OFF)),
            ofrep_url: Arc::from(ofrep_url.as_str()),
            http: crate::http_client::builder().timeout(STORE_TIMEOUT).build().map_err(std::io::Error::other)?,
            candidate_load: Arc::new(std::sync::Mutex::new((std::time::Instant::now(), 0))),
        };
        let router = Router::new()
            .route("/orders", post(create))
            .route("/orders/{key}", get(read))
            .route("/health", get(|| async { "ok" }))
            .with_state(app.clone());
        let server = Server::start_local("builtin pipeline", router, trouble).await?;
        let cancel = CancellationToken::new();
        let poller = tokio::spawn(poll_flags(ofrep_url, app.new_enricher.clone(), cancel.clone()));
        Ok(Pipeline { server, cancel, poller: std::sync::Mutex::new(Some(poller)) })
    }

    /// The pipeline's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }
}

#[async_trait::async_trait]
impl crate::teardown::Resource for Pipeline {
    fn label(&self) -> String {
        "the builtin pipeline".into()
    }

    async fn stop(&self, forced: bool) {
        self.cancel.cancel();
        self.server.stop(forced).await;
        let poller = self.poller.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = poller {
            let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
        }
    }

    fn stop_now(&self) {
        self.cancel.cancel();
        self.server.stop_now();
    }
}

/// Polls the bulk OFREP endpoint every 50 ms, as an OpenFeature provider would.
async fn poll_flags(url: String, flag: Arc<AtomicU8>, cancel: CancellationToken) {
    let client = crate::http_client::client();
    let mut etag: Option<String> = None;
    loop {
        let mut request = client
            .post(format!("{url}/ofrep/v1/evaluate/flags"))
            .timeout(Duration::from_secs(1))
            .json(&json!({"context": {}}));
        if let Some(tag) = &etag {
            request = request.header("if-none-match", tag);
        }
        if let Ok(response) = request.send().await
            && response.status().is_success()
        {
            etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(String::from);
            if let Ok(body) = response.json::<Value>().await
                && let Some(list) = body["flags"].as_array()
                && let Some(f) = list.iter().find(|f| f["key"] == FLAG)
            {
                let state = match (f["reason"].as_str(), f["value"].as_bool()) {
                    (Some("SPLIT"), _) => FLAG_PER_KEY,
                    (_, Some(true)) => FLAG_ON,
                    _ => FLAG_OFF,
                };
                flag.store(state, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Checks an order; the error is the reason given to the client. Every field is checked,
/// unless `lax` (the `accept-malformed` defect): then the contact and event-time fields
/// are not, and some malformed orders get through.
fn validate(order: &Map<String, Value>, lax: bool) -> Result<(), String> {
    let text = |k: &str| order.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    text("order_id").ok_or("order_id must be a non-empty string")?;
    text("customer").ok_or("customer must be a non-empty string")?;
    let currency = text("currency").ok_or("currency must be a string")?;
    if !CURRENCIES.iter().any(|(c, _)| *c == currency) {
        return Err(format!("unsupported currency {currency}"));
    }
    let amount = order.get("amount").and_then(Value::as_f64).ok_or("amount must be a number")?;
    if amount <= 0.0 {
        return Err("amount must be positive".into());
    }
    let items = order.get("items").and_then(Value::as_i64).ok_or("items must be an integer")?;
    if items < 1 {
        return Err("items must be at least 1".into());
    }
    if !lax {
        text("email").filter(|e| e.contains('@')).ok_or("email must be an address")?;
        text("city").ok_or("city must be a non-empty string")?;
        order.get("customer_id").and_then(Value::as_i64).ok_or("customer_id must be an integer")?;
        let created = text("created_at").ok_or("created_at must be a string")?;
        chrono::DateTime::parse_from_rfc3339(created).map_err(|_| "created_at must be an RFC 3339 time")?;
    }
    Ok(())
}

/// Adds the derived fields; `new` picks the candidate path.
fn enrich(mut order: Map<String, Value>, new: bool) -> Map<String, Value> {
    let amount = order.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
    let currency = order.get("currency").and_then(Value::as_str).unwrap_or("");
    let region = CURRENCIES.iter().find(|(c, _)| *c == currency).map_or("other", |(_, r)| r);
    order.insert("region".into(), json!(region));
    order.insert("amount_cents".into(), json!((amount * 100.0).round() as i64));
    if new {
        let band = if amount < 50.0 {
            "small"
        } else if amount < 250.0 {
            "medium"
        } else {
            "large"
        };
        order.insert("band".into(), json!(band));
        order.insert("enricher".into(), json!("v2"));
    } else {
        order.insert("enricher".into(), json!("v1"));
    }
    order
}

async fn create(State(app): State<App>, body: Bytes) -> Response {
    let order = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return (StatusCode::BAD_REQUEST, "an order is a JSON object").into_response(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")).into_response(),
    };
    let key = order.get("order_id").and_then(Value::as_str).unwrap_or_default().to_string();
    let new = app.new_path_for(&key).await;
    let defects = if new { app.defects } else { Defects::default() };
    if defects.slow_20ms {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(reason) = validate(&order, defects.accept_malformed) {
        return (StatusCode::UNPROCESSABLE_ENTITY, reason).into_response();
    }
    let mut enriched = enrich(order, new);
    if defects.alter_field
        && let Some(Value::String(c)) = enriched.get_mut("currency")
    {
        *c = c.to_lowercase();
    }
    let enriched = Value::Object(enriched).to_string();
    // The order id is the idempotency token, unless the path forgot it.
    let token = (!defects.duplicate_on_retry).then_some(key.as_str());
    if defects.duplicate_under_load && app.over_load_limit() {
        // The overflowing buffer's copy, written without a token.
        if let Err(e) = app.store.append(&key, None, &enriched, defects).await {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}")).into_response();
        }
    }
    match app.store.append(&key, token, &enriched, defects).await {
        Ok(()) => (StatusCode::CREATED, axum::Json(json!({ "order_id": key }))).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}")).into_response(),
    }
}

async fn read(State(app): State<App>, Path(key): Path<String>) -> Response {
    if key.contains(char::is_whitespace) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    match app.store.call(&format!("GET {key}\n")).await {
        Ok(answer) if answer.len() == 1 => StatusCode::NOT_FOUND.into_response(),
        Ok(answer) => {
            // Every stored copy, so that a reader sees duplicates too.
            let copies: Vec<Value> = answer[1..].iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
            axum::Json(Value::Array(copies)).into_response()
        }
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_bad_field() {
        let ok = json!({"order_id": "a", "customer": "c", "currency": "USD", "amount": 1.5, "items": 2,
            "email": "c@example.com", "city": "Oslo", "customer_id": 7, "created_at": "2026-01-01T00:00:00.000Z"});
        assert!(validate(ok.as_object().unwrap(), false).is_ok());
        let mut bad = ok.as_object().unwrap().clone();
        bad.insert("amount".into(), json!("1.5"));
        assert_eq!(validate(&bad, false).unwrap_err(), "amount must be a number");
    }

    #[test]
    fn the_new_path_lets_a_missing_email_through() {
        let order = json!({"order_id": "a", "customer": "c", "currency": "USD", "amount": 1.5, "items": 2,
            "city": "Oslo", "customer_id": 7, "created_at": "2026-01-01T00:00:00.000Z"});
        assert!(validate(order.as_object().unwrap(), false).is_err());
        assert!(validate(order.as_object().unwrap(), true).is_ok());
    }

    #[test]
    fn both_paths_keep_every_sent_field() {
        let order = json!({"order_id": "a", "customer": "c", "currency": "EUR", "amount": 12.34, "items": 2});
        for new in [false, true] {
            let out = enrich(order.as_object().unwrap().clone(), new);
            for (k, v) in order.as_object().unwrap() {
                assert_eq!(&out[k], v);
            }
            assert_eq!(out["amount_cents"], 1234);
        }
    }
}
