//! The output sink: an HTTP endpoint stagegate serves for the system under test to push
//! its output to (`target.http.sink`), and the observer that reads it.
//!
//! A POST carries one record (a JSON object), several (a JSON array of objects), or JSON
//! lines. Each record goes straight into the running stage's ledger, which times its
//! key's first arrival for `freshness`; nothing is kept beyond the ledger's counters, so
//! a flood of pushes costs time, not memory: at most [`SINK_READERS`] bodies are read at
//! once (others wait their turn, their bytes left in the socket), each bounded in size
//! and given [`SINK_BODY_TIMEOUT`] to arrive, so the sink holds at most
//! `SINK_READERS x SINK_BODY_BYTES` of bodies however many connections push. An item
//! that is not a JSON object is counted as unreadable output (a finding about the
//! system). A body with no readable record at all is answered 400 with the reason, one
//! over the size 413, one that trickles in too slowly 408. Pushes between stages belong
//! to no stage and are dropped.
//!
//! Not here: comparing the output with what was sent (`quality`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SinkDef;
use super::observe::{Current, Item, Observer};
use crate::health::Trouble;
use crate::limits::{SINK_BODY_BYTES, SINK_BODY_TIMEOUT, SINK_READERS};
use crate::quality::SharedLedger;
use crate::server::Server;

/// A running sink.
pub struct SinkServer {
    url: String,
    server: Server,
    current: Arc<Current>,
    settle: Duration,
}

/// The items of one pushed body, or why none could be read.
pub fn parse_body(body: &[u8]) -> Result<Vec<Item>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let of = |v: Value| match v {
        Value::Object(m) => Item::Record(m),
        other => Item::Unreadable(other.to_string()),
    };
    let items: Vec<Item> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(list)) => list.into_iter().map(of).collect(),
        Ok(v) => vec![of(v)],
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => of(v),
                Err(_) => Item::Unreadable(l.chars().take(256).collect()),
            })
            .collect(),
    };
    if items.iter().any(|i| matches!(i, Item::Record(_))) {
        Ok(items)
    } else if items.is_empty() {
        Err("the body holds no record".into())
    } else {
        Err("expected a JSON object, an array of them or JSON lines; nothing here is a record".into())
    }
}

impl SinkServer {
    /// Serves `def` until stopped.
    pub async fn start(def: &SinkDef, trouble: Option<Trouble>) -> std::io::Result<SinkServer> {
        let listener = tokio::net::TcpListener::bind(def.listen.as_str()).await?;
        let current = Arc::new(Current::default());
        let shared = Shared { current: current.clone(), readers: Arc::new(tokio::sync::Semaphore::new(SINK_READERS)) };
        let app = Router::new().route(&def.path, post(receive)).with_state(shared);
        let server = Server::start("output sink", listener, app, trouble)?;
        let url = format!("http://{}{}", server.addr(), def.path);
        Ok(SinkServer { url, server, current, settle: def.settle })
    }

    /// The URL the system under test pushes to.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait::async_trait]
impl crate::teardown::Resource for SinkServer {
    fn label(&self) -> String {
        "the output sink".into()
    }

    async fn stop(&self, forced: bool) {
        self.server.stop(forced).await;
    }

    fn stop_now(&self) {
        self.server.stop_now();
    }
}

#[async_trait::async_trait]
impl Observer for SinkServer {
    fn kind(&self) -> &'static str {
        "sink"
    }

    fn timed_by(&self) -> Option<String> {
        Some("sink".into())
    }

    fn begin(&self, ledger: SharedLedger) {
        self.current.set(Some(ledger));
    }

    async fn collect(&self, cancel: &CancellationToken) -> Result<(), String> {
        let Some(ledger) = self.current.get() else { return Ok(()) };
        // Give acknowledged records still on their way the time to arrive.
        let deadline = Instant::now() + self.settle;
        while Instant::now() < deadline && !ledger.lock().unwrap_or_else(|p| p.into_inner()).all_acked_seen() {
            tokio::select! {
                _ = cancel.cancelled() => return Err("interrupted".into()),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        Ok(())
    }

    fn end(&self) {
        self.current.set(None);
    }
}

/// What every push handler shares: the running stage's ledger and the readers' turns.
#[derive(Clone)]
struct Shared {
    current: Arc<Current>,
    readers: Arc<tokio::sync::Semaphore>,
}

async fn receive(State(shared): State<Shared>, body: Body) -> Response {
    let current = &shared.current;
    // Held until the body's records are in the ledger: bodies read, parsed and kept at
    // once are at most SINK_READERS. The semaphore is never closed.
    let Ok(_turn) = shared.readers.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let body = match tokio::time::timeout(SINK_BODY_TIMEOUT, axum::body::to_bytes(body, SINK_BODY_BYTES)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"));
            return if too_big {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("a body may be at most {} MiB", SINK_BODY_BYTES >> 20))
                    .into_response()
            } else {
                (StatusCode::BAD_REQUEST, format!("the body broke off: {e}")).into_response()
            };
        }
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!("the body took longer than {} s to arrive", SINK_BODY_TIMEOUT.as_secs()),
            )
                .into_response();
        }
    };
    let now = Instant::now();
    let items = match parse_body(&body) {
        Ok(items) => items,
        Err(e) => {
            // Still output of the system under test: counted, then refused.
            if let Some(ledger) = current.get() {
                let raw = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
                ledger.lock().unwrap_or_else(|p| p.into_inner()).observe_unreadable(&raw, None, now);
            }
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    let n = items.len();
    let Some(ledger) = current.get() else {
        return (StatusCode::OK, axum::Json(serde_json::json!({ "received": 0, "ignored": n }))).into_response();
    };
    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    let mut unreadable = 0;
    for item in items {
        match item {
            Item::Record(r) => ledger.observe(r, now),
            Item::Unreadable(raw) => {
                unreadable += 1;
                ledger.observe_unreadable(&raw, None, now);
            }
        }
    }
    (StatusCode::OK, axum::Json(serde_json::json!({ "received": n - unreadable, "unreadable": unreadable })))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(items: &[Item]) -> (usize, usize) {
        let records = items.iter().filter(|i| matches!(i, Item::Record(_))).count();
        (records, items.len() - records)
    }

    #[test]
    fn a_body_is_one_record_an_array_or_json_lines() {
        assert_eq!(count(&parse_body(br#"{"id": 1}"#).unwrap()), (1, 0));
        assert_eq!(count(&parse_body(br#"[{"id": 1}, {"id": 2}]"#).unwrap()), (2, 0));
        assert_eq!(count(&parse_body(b"{\"id\": 1}\n\n{\"id\": 2}\n").unwrap()), (2, 0));
        assert_eq!(count(&parse_body(b"{\"id\": 1}\nnot json\n").unwrap()), (1, 1));
        assert!(parse_body(b"[1, 2]").unwrap_err().contains("nothing here is a record"));
        assert!(parse_body(b"42").is_err());
        assert!(parse_body(b"").is_err());
    }
}
