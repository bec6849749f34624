//! HTTP faults: a reverse proxy in front of an HTTP service (the target, here) that
//! answers chosen requests with an error or holds them, by method, path prefix and
//! count.
//!
//! [`decide`] is the pure part: given the active faults, a request's method, path and
//! number, and how many requests each activation has matched so far, it says what to do.
//! [`HttpProxy`] carries it out and forwards everything else unchanged, streaming bodies
//! both ways (nothing is held whole in memory).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Activation, FaultKind, HttpMatch, unit};
use crate::health::Trouble;
use crate::measure::lateness::LagBook;
use crate::server::Server;

/// What to do with one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestPlan {
    /// Hold the request this long before forwarding (stacked latencies add up).
    pub hold: Duration,
    /// Answer with this status and body instead of forwarding.
    pub error: Option<(u16, String)>,
    /// The activations (by id) that matched, to count towards their `first`.
    pub matched: Vec<u64>,
}

/// Whether a request matches a fault's predicate.
pub fn matches(pred: Option<&HttpMatch>, method: &str, path: &str) -> bool {
    let Some(p) = pred else { return true };
    p.method.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(method))
        && p.path_prefix.as_ref().is_none_or(|prefix| path.starts_with(prefix.as_str()))
}

/// Decides request number `n`; `seen(id)` is how many requests activation `id` has
/// matched so far.
pub fn decide(active: &[Activation], method: &str, path: &str, n: u64, seen: impl Fn(u64) -> u64) -> RequestPlan {
    let mut plan = RequestPlan::default();
    for a in active {
        if !matches(a.fault.predicate.as_ref(), method, path) {
            continue;
        }
        if a.fault.predicate.as_ref().and_then(|p| p.first).is_some_and(|first| seen(a.id) >= first) {
            continue;
        }
        if a.fault.probability < 1.0 && unit(a.seed, n) >= a.fault.probability {
            continue;
        }
        match &a.fault.kind {
            FaultKind::Latency { delay, jitter } => {
                let j = jitter.as_secs_f64() * (2.0 * unit(a.seed ^ 0x7177, n) - 1.0);
                plan.hold += Duration::from_secs_f64((delay.as_secs_f64() + j).max(0.0));
            }
            FaultKind::HttpError { status, body } => {
                plan.error.get_or_insert((*status, body.clone()));
            }
            _ => continue,
        }
        plan.matched.push(a.id);
    }
    plan
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    active: watch::Receiver<Arc<Vec<Activation>>>,
    requests: Arc<AtomicU64>,
    seen: Seen,
    /// Fires when the proxy stops: held requests end at once.
    stopping: CancellationToken,
    hold_overrun: LagBook,
}

/// How many requests each activation has matched (by activation id).
type Seen = Arc<std::sync::Mutex<HashMap<u64, u64>>>;

/// A running HTTP fault proxy.
pub struct HttpProxy {
    server: Server,
    active: watch::Sender<Arc<Vec<Activation>>>,
    seen: Seen,
    stopping: CancellationToken,
    hold_overrun: LagBook,
}

impl HttpProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, trouble: Option<Trouble>) -> std::io::Result<HttpProxy> {
        let (active, rx) = watch::channel(Arc::new(Vec::new()));
        let seen: Seen = Arc::default();
        let stopping = CancellationToken::new();
        let hold_overrun = LagBook::default();
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: crate::http_client::builder()
                .pool_max_idle_per_host(64)
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .map_err(std::io::Error::other)?,
            active: rx,
            requests: Arc::new(AtomicU64::new(0)),
            seen: seen.clone(),
            stopping: stopping.clone(),
            hold_overrun: hold_overrun.clone(),
        };
        let app = Router::new().fallback(forward).with_state(shared);
        let server = Server::start_local("HTTP fault proxy", app, trouble).await?;
        Ok(HttpProxy { server, active, seen, stopping, hold_overrun })
    }

    /// The proxy's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Replaces the active faults. An activation that stays keeps its `first` count; one
    /// that ends forgets it.
    pub fn set_active(&self, faults: Vec<Activation>) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| faults.iter().any(|a| a.id == *id));
        self.active.send_replace(Arc::new(faults));
    }

    /// Whether any fault is active now.
    pub fn is_faulted(&self) -> bool {
        !self.active.borrow().is_empty()
    }

    /// How late held requests left since the last call.
    pub fn take_hold_overruns(&self) -> hdrhistogram::Histogram<u64> {
        self.hold_overrun.take()
    }

    /// Removes every fault and stops serving, within a deadline (at once when `forced`).
    pub async fn stop(&self, forced: bool) {
        self.set_active(Vec::new());
        self.stopping.cancel();
        self.server.stop(forced).await;
    }

    /// Removes every fault and stops at once (the panic path).
    pub fn stop_now(&self) {
        self.set_active(Vec::new());
        self.stopping.cancel();
        self.server.stop_now();
    }
}

/// Hop-by-hop headers are not forwarded (a body's length is: bodies stream through).
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for h in ["connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "proxy-connection"] {
        out.remove(h);
    }
    out
}

async fn forward(State(s): State<Shared>, request: Request) -> Response {
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    let method = request.method().clone();
    let path_and_query = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    let path = request.uri().path().to_string();
    let active = s.active.borrow().clone();
    let plan = {
        let mut seen = s.seen.lock().unwrap_or_else(|p| p.into_inner());
        let plan = decide(&active, method.as_str(), &path, n, |id| seen.get(&id).copied().unwrap_or(0));
        for id in &plan.matched {
            *seen.entry(*id).or_insert(0) += 1;
        }
        plan
    };
    if !plan.hold.is_zero() {
        let due = tokio::time::Instant::now() + plan.hold;
        tokio::select! {
            _ = s.stopping.cancelled() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
            _ = tokio::time::sleep_until(due) => {
                // The timer's millisecond step is its resolution, not lateness.
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                s.hold_overrun.record(late.saturating_sub(Duration::from_millis(1)));
            }
        }
    }
    if let Some((status, body)) = plan.error {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, body).into_response();
    }
    let headers = end_to_end(request.headers());
    // The body streams through in both directions: nothing is buffered whole.
    let body = reqwest::Body::wrap_stream(request.into_body().into_data_stream());
    let url = format!("{}{}", s.upstream, path_and_query);
    let upstream = s.client.request(method, url).headers(headers).body(body).send().await;
    match upstream {
        Ok(r) => {
            let status = r.status();
            let headers = end_to_end(r.headers());
            let mut response = Response::new(Body::from_stream(r.bytes_stream()));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Direction, Fault, Place, Schedule};

    fn act(index: usize, kind: FaultKind, probability: f64, predicate: Option<HttpMatch>) -> Activation {
        Activation {
            index,
            id: index as u64,
            seed: 3,
            fault: Fault {
                kind,
                at: Place::Target,
                schedule: Schedule { from: Duration::ZERO, length: None, every: None },
                probability,
                direction: Direction::Both,
                predicate,
            },
        }
    }

    #[test]
    fn predicates_pick_method_path_and_the_first_n() {
        let err = FaultKind::HttpError { status: 503, body: "busy".into() };
        let pred = HttpMatch { method: Some("POST".into()), path_prefix: Some("/orders".into()), first: Some(2) };
        let faults = [act(0, err, 1.0, Some(pred))];
        assert_eq!(decide(&faults, "POST", "/orders", 0, |_| 0).error, Some((503, "busy".into())));
        assert_eq!(decide(&faults, "GET", "/orders", 1, |_| 0).error, None);
        assert_eq!(decide(&faults, "POST", "/health", 2, |_| 0).error, None);
        assert_eq!(decide(&faults, "POST", "/orders/7", 3, |_| 1).error, Some((503, "busy".into())));
        assert_eq!(decide(&faults, "POST", "/orders", 4, |_| 2).error, None, "only the first two");
    }

    #[test]
    fn probability_is_per_request_and_seeded() {
        let faults = [act(0, FaultKind::HttpError { status: 500, body: String::new() }, 0.25, None)];
        let hits: Vec<u64> = (0..4000).filter(|n| decide(&faults, "GET", "/", *n, |_| 0).error.is_some()).collect();
        assert!((900..1100).contains(&hits.len()), "{}", hits.len());
        let again: Vec<u64> = (0..4000).filter(|n| decide(&faults, "GET", "/", *n, |_| 0).error.is_some()).collect();
        assert_eq!(hits, again);
    }

    #[test]
    fn latencies_add_up() {
        let lat = |ms| FaultKind::Latency { delay: Duration::from_millis(ms), jitter: Duration::ZERO };
        let faults = [act(0, lat(10), 1.0, None), act(1, lat(15), 1.0, None)];
        assert_eq!(decide(&faults, "GET", "/", 0, |_| 0).hold, Duration::from_millis(25));
    }

    /// Regression: the proxy read whole bodies before passing them on, so a large or
    /// slow answer was held in memory and delayed until its end.
    #[tokio::test]
    async fn bodies_stream_through_without_waiting_for_their_end() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        // An answer whose first part comes at once and whose rest never does.
        let app = Router::new().fallback(|| async {
            let first =
                futures_util::stream::once(async { Ok::<_, std::io::Error>(axum::body::Bytes::from("first part;")) });
            let never = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, std::io::Error>(axum::body::Bytes::from("never"))
            });
            Body::from_stream(futures_util::StreamExt::chain(first, never))
        });
        tokio::spawn(async move { axum::serve(upstream, app).await });
        let proxy = HttpProxy::start(&format!("http://{addr}"), None).await.unwrap();
        let mut answer = reqwest::get(proxy.url()).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), answer.chunk()).await;
        assert_eq!(first.expect("the first part came through").unwrap().unwrap(), "first part;");
        proxy.stop(true).await;
    }
}
