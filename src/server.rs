//! The HTTP servers stagegate runs on loopback (the OFREP endpoint, the output sink, the
//! builtin pipeline, the HTTP fault proxy, the `stagegate proxy` API): one way to serve
//! an axum router and to stop it within a deadline, whatever its clients do.
//!
//! A [`Server`] accepts connections itself and keeps each one in a set it owns. Stopping
//! it closes the listener, lets requests in flight finish for at most
//! [`crate::limits::SERVER_STOP`] (idle keep-alive connections close at once), then drops
//! every connection still open: a client that holds a half-sent request cannot keep a
//! run from ending. A request's headers must arrive within 30 s.
//!
//! Not here: what each server answers (its own module).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::health::Trouble;
use crate::limits::SERVER_STOP;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A running HTTP server.
pub struct Server {
    name: String,
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Serves `app` on `listener`, as `name` in messages. Running out of descriptors
    /// while accepting is reported to `trouble` (it is stagegate's failure).
    pub fn start(name: &str, listener: TcpListener, app: Router, trouble: Option<Trouble>) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(name.to_string(), listener, app, cancel.clone(), trouble));
        Ok(Server { name: name.to_string(), addr, cancel, task: Mutex::new(Some(task)) })
    }

    /// Binds a free loopback port and serves `app` there.
    pub async fn start_local(name: &str, app: Router, trouble: Option<Trouble>) -> std::io::Result<Server> {
        Server::start(name, TcpListener::bind("127.0.0.1:0").await?, app, trouble)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it: in-flight requests get [`SERVER_STOP`] to finish (none when `forced`),
    /// then every connection is dropped.
    pub async fn stop(&self, forced: bool) {
        self.cancel.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut task) = task else { return };
        if forced {
            task.abort();
        }
        if tokio::time::timeout(SERVER_STOP + Duration::from_millis(500), &mut task).await.is_err() {
            tracing::warn!(server = %self.name, "did not stop in time; its connections are dropped");
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops it without waiting (the panic path).
    pub fn stop_now(&self) {
        self.cancel.cancel();
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn serve(name: String, listener: TcpListener, app: Router, cancel: CancellationToken, trouble: Option<Trouble>) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(app.clone());
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        let _ = connection.await;
                    });
                }
                Err(e) => {
                    if crate::health::is_own_exhaustion(&e)
                        && let Some(t) = &trouble
                    {
                        t.fail(format!("the {name} cannot accept connections: {e}"));
                    }
                    tracing::warn!(server = %name, error = %e, "accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    // Requests in flight may finish; idle connections close now; the rest are dropped.
    let _ = tokio::time::timeout(SERVER_STOP, graceful.shutdown()).await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Why a request from a browser must be refused by a server meant for this machine's
/// own clients, if it must: its `Host` names another server (a name pointed at loopback
/// by a page elsewhere: DNS rebinding), or it comes from another site's page (its
/// `Origin` is not this server, or `Sec-Fetch-Site` says cross-site). A browser is told
/// by what browsers send (`Sec-Fetch-*`, `Origin`, a `Mozilla/` User-Agent); other
/// clients (curl, scripts, the Toxiproxy clients, a tunnel's port) pass whatever their
/// `Host`. `served` is the address listened on; beyond loopback any `Host` name passes
/// (its names are not known here), and the origin checks still apply.
pub fn foreign_request(headers: &axum::http::HeaderMap, served: SocketAddr) -> Option<String> {
    use axum::http::header;
    let text = |name: &str| headers.get(name).and_then(|h| h.to_str().ok());
    let browser = text("sec-fetch-site").is_some()
        || text("sec-fetch-mode").is_some()
        || headers.contains_key(header::ORIGIN)
        || text("user-agent").is_some_and(|ua| ua.starts_with("Mozilla/"));
    if !browser {
        return None;
    }
    let host = text("host").unwrap_or_default();
    let (name, _) = split_host(host);
    let local_name =
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if served.ip().is_loopback() && !local_name {
        return Some(format!("this server answers for {served} only, not for `{}`", host.escape_debug()));
    }
    if matches!(text("sec-fetch-site"), Some("cross-site" | "same-site")) {
        return Some("a request from another site's page is refused".into());
    }
    if let Some(origin) = text("origin") {
        let ours = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
        if !ours {
            return Some(format!("a request from `{}` (another origin) is refused", origin.escape_debug()));
        }
    }
    None
}

/// `name:port` (or `[v6]:port`) into its name and port.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((name, tail)) => (name, tail.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, Some(port)),
        _ => (host, None),
    }
}

/// A middleware refusing [`foreign_request`]s with 421 (another host) or 403.
pub async fn refuse_foreign(
    axum::extract::State(served): axum::extract::State<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match foreign_request(request.headers(), served) {
        Some(why) => {
            let status = if why.starts_with("this server answers") {
                axum::http::StatusCode::MISDIRECTED_REQUEST
            } else {
                axum::http::StatusCode::FORBIDDEN
            };
            (status, axum::Json(serde_json::json!({ "result": "refused", "error": why, "message": why })))
                .into_response()
        }
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_half_sent_request_cannot_hold_the_stop() {
        let app = Router::new().route("/", axum::routing::post(|body: String| async move { body }));
        let server = Server::start_local("test server", app, None).await.unwrap();
        let mut client = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        // Headers promise a body that never comes.
        client.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhal").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        server.stop(false).await;
        let took = started.elapsed();
        assert!(took < SERVER_STOP + Duration::from_secs(1), "stop took {took:?}");
        assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err(), "still listening");
    }

    #[test]
    fn browsers_from_elsewhere_are_told_apart_from_local_clients() {
        use axum::http::{HeaderMap, HeaderValue};
        let served: SocketAddr = "127.0.0.1:8474".parse().unwrap();
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            foreign_request(&h, served)
        };
        const UA: (&str, &str) = ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)");
        assert_eq!(with(&[("host", "x")]), None, "curl and scripts, whatever their Host");
        assert_eq!(with(&[("host", "LOCALHOST:8474"), UA]), None);
        assert_eq!(with(&[("host", "127.0.0.1:9000"), UA]), None, "through a tunnel's port");
        assert_eq!(with(&[("host", "127.0.0.1:8474"), ("origin", "http://127.0.0.1:8474")]), None, "the page");
        assert!(with(&[("host", "rebind.example:8474"), UA]).is_some());
        assert!(with(&[("host", "rebind.example:8474"), ("sec-fetch-mode", "cors")]).is_some());
        assert!(with(&[("host", "127.0.0.1:8474"), ("origin", "http://evil.example")]).is_some());
        assert!(with(&[("host", "127.0.0.1:8474"), ("sec-fetch-site", "cross-site")]).is_some());
        assert!(with(&[("host", "[::1]:8474"), UA]).is_none());
    }
}
