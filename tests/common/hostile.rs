//! A system under test that misbehaves on purpose, served in the test process on a free
//! loopback port: it hangs, floods, answers huge bodies or stores what it should not,
//! as each test asks. Scenarios reach it as an external HTTP target
//! (`base_url: "http://127.0.0.1:${HOSTILE_PORT}"`).
//!
//! `POST /orders` stores the body as sent (a JSON object under its `order_id`, or the raw
//! text when it is not JSON) and answers 201; `GET /orders/{key}` answers the stored
//! copies as a JSON array, or 404; `GET /orders.jsonl` lists every stored copy, one per
//! line (raw text for what was not JSON).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// What the target does wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Behaviour {
    /// Writes are accepted but never answered.
    pub hang_writes: bool,
    /// Read-backs are accepted but never answered.
    pub hang_reads: bool,
    /// Read-backs answer this many bytes of JSON-looking garbage.
    pub huge_reads: Option<usize>,
    /// Listings are accepted but never answered.
    pub hang_listing: bool,
}

/// A running hostile target.
pub struct Hostile {
    pub port: u16,
    pub stored: Arc<Mutex<Vec<(String, String)>>>,
}

struct Shared {
    behaviour: Behaviour,
    stored: Arc<Mutex<Vec<(String, String)>>>,
}

/// Starts a hostile target behaving as `behaviour`, on a thread and runtime of its own.
pub fn start(behaviour: Behaviour) -> Hostile {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Shared { behaviour, stored: stored.clone() });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            let app = Router::new()
                .route("/orders", post(write))
                .route("/orders.jsonl", get(list))
                .route("/orders/{key}", get(read))
                .route("/health", get(|| async { "ok" }))
                .with_state(shared);
            axum::serve(listener, app).await.unwrap();
        });
    });
    let port = rx.recv_timeout(Duration::from_secs(10)).expect("the hostile target listens");
    Hostile { port, stored }
}

async fn forever() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

fn key_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("order_id").and_then(|k| k.as_str()).map(String::from))
        .unwrap_or_default()
}

async fn write(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    if s.behaviour.hang_writes {
        forever().await;
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    s.stored.lock().unwrap().push((key_of(&text), text));
    StatusCode::CREATED.into_response()
}

async fn read(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    if s.behaviour.hang_reads {
        forever().await;
    }
    if let Some(n) = s.behaviour.huge_reads {
        // Streamed, so the target itself holds nothing: the bound is stagegate's to keep.
        let chunk = Bytes::from(vec![b'7'; 64 * 1024]);
        let chunks = n / chunk.len() + 1;
        let body = futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        return (StatusCode::OK, Body::from_stream(body)).into_response();
    }
    let copies: Vec<String> =
        s.stored.lock().unwrap().iter().filter(|(k, _)| *k == key).map(|(_, t)| t.clone()).collect();
    if copies.is_empty() {
        return StatusCode::NOT_FOUND.into_response();
    }
    (StatusCode::OK, format!("[{}]", copies.join(","))).into_response()
}

async fn list(State(s): State<Arc<Shared>>) -> Response {
    if s.behaviour.hang_listing {
        forever().await;
    }
    let lines: Vec<String> = s.stored.lock().unwrap().iter().map(|(_, t)| t.replace('\n', " ")).collect();
    (StatusCode::OK, lines.join("\n")).into_response()
}
