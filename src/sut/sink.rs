//! The output sink: an HTTP endpoint stagegate serves for the system under test to push
//! its output to (`target.http.sink`).
//!
//! A POST carries one record (a JSON object), several (a JSON array of objects), or JSON
//! lines. Each record is renamed back to the sent field names, kept for the stage's
//! judgement, and its key's first arrival is timed for `freshness`. Anything else is
//! answered 400 with the reason, so a SUT that pushes the wrong shape hears of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::SinkDef;
use crate::quality::freshness::Arrivals;
use crate::quality::key_of;

struct Shared {
    key_field: String,
    renamed: BTreeMap<String, String>,
    records: Mutex<Vec<Map<String, Value>>>,
    arrivals: Arrivals,
}

/// A running sink.
pub struct SinkServer {
    url: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Puts the sent field names back on an output record (`renamed` maps sent name to
/// output name); fields the SUT added stay as they are.
pub fn rename_back(record: &mut Map<String, Value>, renamed: &BTreeMap<String, String>) {
    for (sent, output) in renamed {
        if let Some(v) = record.remove(output) {
            record.insert(sent.clone(), v);
        }
    }
}

/// The records in one pushed body.
pub fn parse_body(body: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let objects = |values: Vec<Value>| {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(m),
                other => Err(format!("record {i} is not a JSON object: {other}")),
            })
            .collect::<Result<Vec<_>, String>>()
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(vec![m]),
        Ok(Value::Array(items)) => objects(items),
        Ok(other) => Err(format!("expected a JSON object, an array of them or JSON lines, got {other}")),
        Err(_) => {
            let mut values = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                values.push(serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?);
            }
            objects(values)
        }
    }
}

impl SinkServer {
    /// Serves `def` until stopped, noting each record's key (by `key_field`) in `arrivals`.
    pub async fn start(
        def: &SinkDef,
        key_field: &str,
        renamed: BTreeMap<String, String>,
        arrivals: Arrivals,
    ) -> std::io::Result<SinkServer> {
        let listener = tokio::net::TcpListener::bind(def.listen.as_str()).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let shared =
            Arc::new(Shared { key_field: key_field.to_string(), renamed, records: Mutex::new(Vec::new()), arrivals });
        let app = Router::new().route(&def.path, post(receive)).with_state(shared.clone());
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        });
        Ok(SinkServer { url: format!("http://{addr}{}", def.path), shared, cancel, task })
    }

    /// The URL the system under test pushes to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Takes every record received so far (the stage's output).
    pub fn take(&self) -> Vec<Map<String, Value>> {
        std::mem::take(&mut *self.shared.records.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn receive(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let now = tokio::time::Instant::now();
    let mut records = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    for r in &mut records {
        rename_back(r, &s.renamed);
        if let Some(key) = key_of(r, &s.key_field) {
            s.arrivals.seen(key, now);
        }
    }
    let n = records.len();
    s.records.lock().unwrap_or_else(|p| p.into_inner()).extend(records);
    (StatusCode::OK, axum::Json(serde_json::json!({ "received": n }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_is_one_record_an_array_or_json_lines() {
        assert_eq!(parse_body(br#"{"id": 1}"#).unwrap().len(), 1);
        assert_eq!(parse_body(br#"[{"id": 1}, {"id": 2}]"#).unwrap().len(), 2);
        assert_eq!(parse_body(b"{\"id\": 1}\n\n{\"id\": 2}\n").unwrap().len(), 2);
        assert!(parse_body(b"[1, 2]").unwrap_err().contains("record 0 is not a JSON object"));
        assert!(parse_body(b"{\"id\": 1}\nnot json\n").unwrap_err().starts_with("line 2"));
        assert!(parse_body(b"42").is_err());
    }

    #[test]
    fn renamed_fields_get_their_sent_names_back() {
        let mut r = json!({"total": 5, "id": "a", "added": true}).as_object().unwrap().clone();
        let renamed = BTreeMap::from([("amount".to_string(), "total".to_string())]);
        rename_back(&mut r, &renamed);
        assert_eq!(Value::Object(r), json!({"amount": 5, "id": "a", "added": true}));
    }
}
