//! The live page and its API (`stagegate run --ui [ADDR]`).
//!
//! - `GET /`: one self-contained page (its script at `/app.js`, same origin; nothing
//!   fetched from elsewhere), sent with a content security policy that allows nothing
//!   else;
//! - `GET /api/state`: the board as JSON; `GET /api/events`: the same, pushed as
//!   server-sent events whenever it changes (at most four times a second, at most
//!   [`MAX_STREAMS`] streams at once);
//! - `POST /api/hold` (`{"for": "30s"}`), `/api/advance`, `/api/abort`, `/api/faults`
//!   (a fault as a scenario writes one, with `ttl`): steering, with
//!   `Authorization: Bearer TOKEN`; `GET /api/audit`: what was done.
//!
//! On loopback anyone on the machine may watch and only a token steers; on any other
//! address (allowed only with a token given, never a generated one) watching needs the
//! token too. A request whose `Host` is not the address served is refused (DNS
//! rebinding), and bodies are read up to 16 KiB.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::board::Board;
use super::{Action, Steering};

/// Event streams served at once.
pub const MAX_STREAMS: usize = 32;
/// The longest hold one request may ask for.
const MAX_HOLD: Duration = Duration::from_secs(3600);

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src data:; \
                      connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the page's server holds.
pub struct Ui {
    pub board: Arc<Board>,
    pub steering: Option<Arc<Steering>>,
    /// Whether watching needs a token too (served beyond loopback).
    pub private: bool,
    /// The address served, for the `Host` check.
    pub addr: SocketAddr,
    streams: Semaphore,
}

impl Ui {
    pub fn new(board: Arc<Board>, steering: Option<Arc<Steering>>, addr: SocketAddr) -> Arc<Ui> {
        Arc::new(Ui { board, steering, private: !addr.ip().is_loopback(), addr, streams: Semaphore::new(MAX_STREAMS) })
    }
}

/// The page's routes.
pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/audit", get(audit))
        .route("/api/hold", post(hold))
        .route("/api/advance", post(advance))
        .route("/api/abort", post(abort))
        .route("/api/faults", post(fault))
        .layer(middleware::from_fn_with_state(ui.clone(), check_host))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(ui)
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "result": "refused", "message": message.into() }))).into_response()
}

/// Refuses a request whose `Host` names another server (a page elsewhere pointing a
/// name of its own at loopback), or that another site's page sent; served beyond
/// loopback, a request must carry the token anyway.
async fn check_host(State(ui): State<Arc<Ui>>, request: Request, next: Next) -> Response {
    let served = if ui.private { SocketAddr::from(([0, 0, 0, 0], ui.addr.port())) } else { ui.addr };
    if let Some(why) = crate::server::foreign_request(request.headers(), served) {
        let status = if why.starts_with("this server answers") {
            StatusCode::MISDIRECTED_REQUEST
        } else {
            StatusCode::FORBIDDEN
        };
        return refuse(status, why);
    }
    next.run(request).await
}

fn security(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// The page, with the board as it stands inside (as data, not script) where watching
/// needs no token.
async fn page(State(ui): State<Arc<Ui>>) -> Response {
    let page = if ui.private {
        PAGE.to_string()
    } else {
        // `<` escaped, so nothing in the run's names can close the element.
        let state = ui.board.snapshot(ui.steering.as_deref()).to_string().replace('<', "\\u003c");
        PAGE.replace(
            "<!--initial-state-->",
            &format!("<script id=\"initial-state\" type=\"application/json\">{state}</script>"),
        )
    };
    security(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

async fn script() -> Response {
    security(([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response())
}

/// The token's name, when the request carries a valid one.
fn who(ui: &Ui, headers: &HeaderMap) -> Option<String> {
    let given = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    ui.steering.as_ref()?.authorize(given)
}

fn may_watch(ui: &Ui, headers: &HeaderMap) -> bool {
    !ui.private || who(ui, headers).is_some()
}

async fn state(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    if !may_watch(&ui, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "this page is served beyond loopback: send the token");
    }
    security(axum::Json(ui.board.snapshot(ui.steering.as_deref())).into_response())
}

async fn audit(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    if !may_watch(&ui, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "this page is served beyond loopback: send the token");
    }
    let entries = ui.steering.as_ref().map(|s| s.audit()).unwrap_or_default();
    security(axum::Json(entries).into_response())
}

async fn events(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    if !may_watch(&ui, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "this page is served beyond loopback: send the token");
    }
    let Ok(permit) = ui.streams.try_acquire() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_STREAMS} pages are watching already"));
    };
    permit.forget();
    let mut changes = ui.board.changes();
    let stream = {
        let ui = ui.clone();
        async_stream(move |tx| async move {
            let mut first = true;
            loop {
                if !first {
                    if changes.changed().await.is_err() {
                        break;
                    }
                    // At most four updates a second, whatever the run does.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                first = false;
                changes.borrow_and_update();
                let snapshot = ui.board.snapshot(ui.steering.as_deref());
                let finished = snapshot["finished"].as_bool() == Some(true);
                if tx.send(SseEvent::default().event("state").data(snapshot.to_string())).await.is_err() || finished {
                    break;
                }
            }
        })
    };
    let release = ReleaseOnDrop(ui.clone());
    let stream = futures_util::StreamExt::map(stream, move |e| {
        let _ = &release;
        Ok::<_, std::convert::Infallible>(e)
    });
    security(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response())
}

/// Gives the stream's slot back when the page goes.
struct ReleaseOnDrop(Arc<Ui>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.streams.add_permits(1);
    }
}

/// A stream fed by a task through a small channel (the task stops when the page goes).
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = SseEvent>
where
    F: FnOnce(tokio::sync::mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let task = tokio::spawn(f(tx));
    let abort = AbortOnDrop(task);
    futures_util::stream::unfold(
        (rx, abort),
        |(mut rx, abort)| async move { rx.recv().await.map(|e| (e, (rx, abort))) },
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a steering action for a request, answering with its result.
async fn steer(
    ui: &Ui,
    headers: &HeaderMap,
    name: &str,
    body: &Bytes,
    action: impl FnOnce() -> Result<Action, String>,
) -> Response {
    let Some(steering) = &ui.steering else {
        return refuse(StatusCode::NOT_FOUND, "this run is not steerable");
    };
    let Some(token) = who(ui, headers) else {
        steering.refused_unauthorized(name);
        return refuse(StatusCode::UNAUTHORIZED, "steering needs a token: Authorization: Bearer TOKEN");
    };
    let action = match action() {
        Ok(a) => a,
        Err(e) => {
            steering.refused(&token, name, body, &e);
            return refuse(StatusCode::BAD_REQUEST, e);
        }
    };
    match steering.act(&token, action).await {
        Ok(message) => axum::Json(json!({ "result": "ok", "message": message })).into_response(),
        Err((status, message)) => refuse(StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT), message),
    }
}

/// The JSON object a request sent (an empty body is an empty object).
fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the body is a JSON object".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

async fn hold(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: Bytes) -> Response {
    steer(&ui, &headers, "hold", &body, || {
        let mut fields = body_object(&body)?;
        let by = match fields.remove("for") {
            None => super::DEFAULT_HOLD,
            Some(Value::String(t)) => crate::scenario::units::parse_duration(&t).map_err(|e| format!("`for`: {e}"))?,
            Some(_) => return Err("`for`: expected a duration like \"30s\"".into()),
        };
        if let Some(k) = fields.keys().next() {
            return Err(format!("`{k}`: a hold takes only `for`"));
        }
        if by < Duration::from_secs(1) || by > MAX_HOLD {
            return Err("`for`: a hold is from 1s to 1h".into());
        }
        Ok(Action::Hold(by))
    })
    .await
}

async fn advance(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: Bytes) -> Response {
    steer(&ui, &headers, "advance", &body, || {
        body_object(&body)?.keys().next().map_or(Ok(Action::Advance), |k| Err(format!("`{k}`: advance takes nothing")))
    })
    .await
}

async fn abort(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: Bytes) -> Response {
    steer(&ui, &headers, "abort", &body, || {
        body_object(&body)?.keys().next().map_or(Ok(Action::Abort), |k| Err(format!("`{k}`: abort takes nothing")))
    })
    .await
}

async fn fault(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: Bytes) -> Response {
    steer(&ui, &headers, "fault", &body, || Ok(Action::Fault(Value::Object(body_object(&body)?)))).await
}

const PROXY_PAGE: &str = include_str!("proxy.html");
const PROXY_SCRIPT: &str = include_str!("proxy.js");

/// The live page of `stagegate proxy --ui`, on the control API's own server: `/ui`, its
/// script, and `/ui/events` (the proxies, their counters and toxics, and the latest
/// changes, pushed on every change and once a second for the counters). Its buttons
/// call the Toxiproxy-compatible API beside it.
pub fn proxy_routes(registry: crate::fault::api::Registry) -> Router {
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    Router::new()
        .route("/ui", get(proxy_page))
        .route(
            "/ui/app.js",
            get(|| async {
                security(([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], PROXY_SCRIPT).into_response())
            }),
        )
        .route("/ui/events", get(proxy_events))
        .with_state((registry, streams))
}

/// The proxy page, with the board as it stands inside (as data, not script).
async fn proxy_page(State((registry, _)): State<(crate::fault::api::Registry, Arc<Semaphore>)>) -> Response {
    let state = registry.board().await.to_string().replace('<', "\\u003c");
    let page = PROXY_PAGE.replace(
        "<!--initial-state-->",
        &format!("<script id=\"initial-state\" type=\"application/json\">{state}</script>"),
    );
    security(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

async fn proxy_events(State((registry, streams)): State<(crate::fault::api::Registry, Arc<Semaphore>)>) -> Response {
    let Ok(permit) = streams.clone().try_acquire_owned() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_STREAMS} pages are watching already"));
    };
    let mut changes = registry.changes();
    let stream = async_stream(move |tx| async move {
        let _permit = permit;
        loop {
            changes.borrow_and_update();
            let board = registry.board().await;
            if tx.send(SseEvent::default().event("state").data(board.to_string())).await.is_err() {
                break;
            }
            // On a change (at most four a second), or once a second for the counters.
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let stream = futures_util::StreamExt::map(stream, Ok::<_, std::convert::Infallible>);
    security(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response())
}
