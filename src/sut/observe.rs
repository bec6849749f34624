//! Observers: how stagegate sees what the system under test's output holds, and when
//! each record showed up there.
//!
//! [`Observer`] is the seam; the runner calls it the same way whatever the target:
//! [`Observer::begin`] with the stage's ledger, [`Observer::watch`] while the stage runs
//! (to time arrivals, for freshness), [`Observer::collect`] after it. Every record read
//! goes straight into the ledger, so the output is never held in memory; an item of the
//! output that cannot be read as a record is counted there as a finding, never a reason
//! to stop looking. Every request has a deadline, every answer a size bound, and every
//! wait gives way to the run's cancellation. The implementations:
//!
//! - [`StoreObserver`]: the builtin store, read past its fault proxy, every 10 ms, and
//!   whole after the stage;
//! - [`ReadObserver`]: `target.http.read`, each sent key read back after the stage;
//! - [`ScanObserver`]: `target.http.scan`, the whole output listed (also every `every`
//!   while the stage runs), until every acknowledged record shows or `settle` passes;
//! - the sink ([`super::sink`]): the system pushes its output to stagegate;
//! - [`Unobserved`]: nothing sees the output; checks that need it are inconclusive.
//!
//! Not here: comparing the output with what was sent (`quality`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::http::WriteTemplate;
use super::{Paging, Scan, store};
use crate::health::Trouble;
use crate::limits::{READ_BACK_BYTES, READ_BACK_PARALLEL, SCAN_PAGE_BYTES, SCAN_PAGES};
use crate::quality::SharedLedger;
use crate::quality::freshness;

/// Sees the system under test's output.
#[async_trait::async_trait]
pub trait Observer: Send + Sync {
    /// How it sees the output, for messages: `read`, `scan`, `sink`, `the builtin store`.
    fn kind(&self) -> &'static str;

    /// How arrivals are timed (`sink`, `scan every 500ms`), when they are.
    fn timed_by(&self) -> Option<String> {
        None
    }

    /// A stage begins; what it reads of this stage goes into `ledger`.
    fn begin(&self, ledger: SharedLedger);

    /// While the stage runs: notes arrivals until `over` fires.
    async fn watch(&self, _over: &CancellationToken) {}

    /// After the stage: reads the stage's output into the ledger. `Err` says why the
    /// output could not be seen (checks that need it are then inconclusive).
    async fn collect(&self, cancel: &CancellationToken) -> Result<(), String>;

    /// The stage is over; nothing more goes into its ledger.
    fn end(&self) {}
}

/// The ledger of the stage under way, if any.
#[derive(Default)]
pub struct Current(Mutex<Option<SharedLedger>>);

impl Current {
    pub fn set(&self, ledger: Option<SharedLedger>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = ledger;
    }

    pub fn get(&self) -> Option<SharedLedger> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn lock(ledger: &SharedLedger) -> std::sync::MutexGuard<'_, crate::quality::Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nothing observes the output.
pub struct Unobserved;

#[async_trait::async_trait]
impl Observer for Unobserved {
    fn kind(&self) -> &'static str {
        "nothing"
    }

    fn begin(&self, _ledger: SharedLedger) {}

    async fn collect(&self, _cancel: &CancellationToken) -> Result<(), String> {
        Err("nothing observes the output (give the target a `read` request, a `scan` or a `sink`)".into())
    }
}

/// The builtin store, read past its fault proxy from where the last stage stopped.
pub struct StoreObserver {
    addr: SocketAddr,
    from: Mutex<usize>,
    current: Current,
}

impl StoreObserver {
    /// Observes the store serving at `addr` (its real address, behind no fault).
    pub fn new(addr: SocketAddr) -> StoreObserver {
        StoreObserver { addr, from: Mutex::new(0), current: Current::default() }
    }

    /// Reads what was appended since the last read into the ledger (timing arrivals).
    async fn read_new(&self) -> Result<(), String> {
        let from = *self.from.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ledger) = self.current.get() else { return Ok(()) };
        let now = Instant::now();
        let next = store::scan_each(self.addr, from, |line| observe_line(&ledger, line, now))
            .await
            .map_err(|e| format!("reading the builtin store: {e}"))?;
        // A store that was killed and restarted starts its offsets afresh.
        *self.from.lock().unwrap_or_else(|p| p.into_inner()) = if next < from { 0 } else { next };
        Ok(())
    }

    /// Reads the whole store into the ledger as a new look: what the output holds at the
    /// stage's end (a record the store lost since it was seen is lost).
    async fn read_all(&self) -> Result<(), String> {
        let Some(ledger) = self.current.get() else { return Ok(()) };
        lock(&ledger).begin_look();
        let now = Instant::now();
        let next = store::scan_each(self.addr, 0, |line| observe_line(&ledger, line, now))
            .await
            .map_err(|e| format!("reading the builtin store: {e}"))?;
        *self.from.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

fn observe_line(ledger: &SharedLedger, line: &str, now: Instant) {
    let mut ledger = lock(ledger);
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => ledger.observe(m, now),
        _ => ledger.observe_unreadable(line, None, now),
    }
}

#[async_trait::async_trait]
impl Observer for StoreObserver {
    fn kind(&self) -> &'static str {
        "the builtin store"
    }

    fn timed_by(&self) -> Option<String> {
        Some(freshness::polled("store", Duration::from_millis(10)))
    }

    fn begin(&self, ledger: SharedLedger) {
        self.current.set(Some(ledger));
    }

    async fn watch(&self, over: &CancellationToken) {
        loop {
            tokio::select! {
                _ = over.cancelled() => return,
                _ = self.read_new() => {}
            }
            tokio::select! {
                _ = over.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }

    async fn collect(&self, cancel: &CancellationToken) -> Result<(), String> {
        tokio::select! {
            _ = cancel.cancelled() => Err("interrupted".into()),
            r = self.read_all() => r,
        }
    }

    fn end(&self) {
        self.current.set(None);
    }
}

/// Reads an answer's body, refusing more than `limit` bytes.
pub async fn body_within(mut answer: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| BodyError::Transport(e.to_string()))? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Err(BodyError::TooLarge(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    Transport(String),
    /// Larger than the limit; what was read up to it.
    TooLarge(Vec<u8>),
}

/// `target.http.read`: every sent key read back from the target after the stage.
pub struct ReadObserver {
    client: reqwest::Client,
    base_url: String,
    read: WriteTemplate,
    /// How long reading a stage's output back may take in all.
    limit: Duration,
    trouble: Trouble,
    current: Current,
}

/// A request of stagegate's that failed: the other end's doing, or stagegate running
/// out of its own resources (then the run is broken, not the output unseen).
fn failed(e: &reqwest::Error, what: &str, trouble: &Trouble) -> String {
    // Running out of its own resources, or a certificate it cannot trust (the run's
    // setting, not the target's behaviour), is stagegate's failure: the run breaks.
    if let Some(why) = crate::health::chain_is_own_exhaustion(e).or_else(|| crate::health::chain_is_tls_refusal(e)) {
        trouble.fail(format!("stagegate could not {what}: {why}"));
    }
    // With its causes: "error sending request" alone says nothing of why.
    let mut text = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl ReadObserver {
    /// Reads from `base_url` (the target's own, behind no fault) with `read`, each
    /// request within `timeout`, all of a stage's within `limit`.
    pub fn new(
        base_url: &str,
        read: WriteTemplate,
        timeout: Duration,
        limit: Duration,
        trouble: Trouble,
    ) -> Result<ReadObserver, String> {
        let client = crate::http_client::builder().timeout(timeout).build().map_err(|e| e.to_string())?;
        Ok(ReadObserver { client, base_url: base_url.to_string(), read, limit, trouble, current: Current::default() })
    }

    /// Reads one key back into the ledger.
    async fn read_one(&self, key: &str, ledger: &SharedLedger) -> Result<(), String> {
        let r = self.read.render(&Map::new(), key, &Value::Null)?;
        let mut request = self.client.request(r.method, format!("{}{}", self.base_url, r.path));
        for (n, v) in r.headers {
            request = request.header(n, v);
        }
        let answer = request.send().await.map_err(|e| failed(&e, &format!("read `{key}` back"), &self.trouble))?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        if !answer.status().is_success() {
            return Err(format!("reading `{key}`: status {}", answer.status()));
        }
        let now = Instant::now();
        let body = match body_within(answer, READ_BACK_BYTES).await {
            Ok(b) => b,
            Err(BodyError::Transport(e)) => return Err(format!("reading `{key}`: {e}")),
            Err(BodyError::TooLarge(start)) => {
                // A record's answer past the bound is the system's doing: its content is
                // not what was sent.
                lock(ledger).observe_unreadable(
                    &String::from_utf8_lossy(&start[..start.len().min(256)]),
                    Some(key),
                    now,
                );
                return Ok(());
            }
        };
        let mut ledger = lock(ledger);
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => ledger.observe(m, now),
            Ok(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::Object(m) => ledger.observe(m, now),
                        other => ledger.observe_unreadable(&other.to_string(), Some(key), now),
                    }
                }
            }
            _ => ledger.observe_unreadable(&String::from_utf8_lossy(&body[..body.len().min(256)]), Some(key), now),
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Observer for ReadObserver {
    fn kind(&self) -> &'static str {
        "read"
    }

    fn begin(&self, ledger: SharedLedger) {
        self.current.set(Some(ledger));
    }

    async fn collect(&self, cancel: &CancellationToken) -> Result<(), String> {
        let Some(ledger) = self.current.get() else { return Ok(()) };
        let keys = lock(&ledger).keys();
        let reads = stream::iter(keys)
            .map(|key| {
                let ledger = ledger.clone();
                async move { self.read_one(&key, &ledger).await }
            })
            .buffer_unordered(READ_BACK_PARALLEL)
            .collect::<Vec<Result<(), String>>>();
        let results = tokio::select! {
            _ = cancel.cancelled() => return Err("interrupted".into()),
            _ = tokio::time::sleep(self.limit) => {
                return Err(format!(
                    "reading the output back took longer than {}",
                    crate::scenario::units::format_duration(self.limit)
                ));
            }
            r = reads => r,
        };
        results.into_iter().collect::<Result<Vec<()>, String>>().map(|_| ())
    }

    fn end(&self) {
        self.current.set(None);
    }
}

/// One item of a listing.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Record(Map<String, Value>),
    /// Not a JSON object: its text (or its beginning).
    Unreadable(String),
}

/// The items of one listing answer, and the next cursor (if the answer holds one). A
/// JSON array, an object holding the list under `items`, or JSON lines; an element or
/// line that is not a JSON object is an unreadable item, not a failed listing.
pub fn parse_listing(
    body: &str,
    items: &str,
    cursor_field: Option<&str>,
) -> Result<(Vec<Item>, Option<String>), String> {
    let of = |v: Value| match v {
        Value::Object(m) => Item::Record(m),
        other => Item::Unreadable(other.to_string()),
    };
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(list)) => Ok((list.into_iter().map(of).collect(), None)),
        Ok(Value::Object(mut o)) => {
            let records = match o.remove(items) {
                Some(Value::Array(list)) => list.into_iter().map(of).collect(),
                _ => return Err(format!("the answer has no `{items}` list")),
            };
            let next = cursor_field.and_then(|f| match o.get(f) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
            Ok((records, next))
        }
        // Not one JSON document: JSON lines, one record per line.
        _ => Ok((
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| match serde_json::from_str::<Value>(l) {
                    Ok(v) => of(v),
                    Err(_) => Item::Unreadable(l.chars().take(256).collect()),
                })
                .collect(),
            None,
        )),
    }
}

/// `target.http.scan`: the whole output, listed page by page.
pub struct ScanObserver {
    client: reqwest::Client,
    base_url: String,
    scan: Scan,
    /// How often to list while a stage runs (to time arrivals), if at all.
    every: Option<Duration>,
    /// How long one listing of the whole output may take, all its pages together.
    limit: Duration,
    trouble: Trouble,
    current: Current,
}

impl ScanObserver {
    /// Lists from `base_url` (the target's own) with `scan`, each request within
    /// `timeout` and a whole listing within `limit`; `freshness_wanted` polls every
    /// 500 ms when `every` is not set.
    pub fn new(
        base_url: &str,
        scan: Scan,
        timeout: Duration,
        limit: Duration,
        freshness_wanted: bool,
        trouble: Trouble,
    ) -> Result<ScanObserver, String> {
        let client = crate::http_client::builder().timeout(timeout).build().map_err(|e| e.to_string())?;
        let every = scan.every.or(freshness_wanted.then_some(Duration::from_millis(500)));
        Ok(ScanObserver {
            client,
            base_url: base_url.to_string(),
            scan,
            every,
            limit,
            trouble,
            current: Current::default(),
        })
    }

    /// Lists the whole output into the ledger, as a new look, within the listing's limit
    /// (a cursor that never ends, page after page just in time, stops there).
    async fn list(&self, ledger: &SharedLedger) -> Result<(), String> {
        match tokio::time::timeout(self.limit, self.list_pages(ledger)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "listing the output took longer than {} (its pages never ended?)",
                crate::scenario::units::format_duration(self.limit)
            )),
        }
    }

    async fn list_pages(&self, ledger: &SharedLedger) -> Result<(), String> {
        let mut cursor: Option<String> = None;
        let mut page = match &self.scan.paging {
            Paging::Page { start, .. } => *start,
            _ => 0,
        };
        lock(ledger).begin_look();
        for _ in 0..SCAN_PAGES {
            let mut url = reqwest::Url::parse(&format!("{}{}", self.base_url, self.scan.path))
                .map_err(|e| format!("the scan URL: {e}"))?;
            match &self.scan.paging {
                Paging::Cursor { param, .. } => {
                    if let Some(c) = &cursor {
                        url.query_pairs_mut().append_pair(param, c);
                    }
                }
                Paging::Page { param, .. } => {
                    url.query_pairs_mut().append_pair(param, &page.to_string());
                }
                Paging::None => {}
            }
            let answer = self.client.get(url).send().await.map_err(|e| failed(&e, "list the output", &self.trouble))?;
            if !answer.status().is_success() {
                return Err(format!("listing the output: status {}", answer.status()));
            }
            let body = match body_within(answer, SCAN_PAGE_BYTES).await {
                Ok(b) => b,
                Err(BodyError::Transport(e)) => return Err(format!("listing the output: {e}")),
                Err(BodyError::TooLarge(_)) => {
                    return Err(format!(
                        "a page of the listing is larger than {}; page it (`scan.cursor` or `scan.page`)",
                        crate::limits::human_bytes(SCAN_PAGE_BYTES as u64)
                    ));
                }
            };
            let body = String::from_utf8_lossy(&body);
            let field = match &self.scan.paging {
                Paging::Cursor { field, .. } => Some(field.as_str()),
                _ => None,
            };
            let (items, next) = parse_listing(&body, &self.scan.items, field)?;
            let empty = items.is_empty();
            {
                let now = Instant::now();
                let mut ledger = lock(ledger);
                for item in items {
                    match item {
                        Item::Record(m) => ledger.observe(m, now),
                        Item::Unreadable(raw) => ledger.observe_unreadable(&raw, None, now),
                    }
                }
            }
            match &self.scan.paging {
                Paging::None => return Ok(()),
                Paging::Cursor { .. } => match next {
                    Some(n) => cursor = Some(n),
                    None => return Ok(()),
                },
                Paging::Page { .. } => {
                    if empty {
                        return Ok(());
                    }
                    page += 1;
                }
            }
        }
        Err(format!("listing the output: more than {SCAN_PAGES} pages"))
    }
}

#[async_trait::async_trait]
impl Observer for ScanObserver {
    fn kind(&self) -> &'static str {
        "scan"
    }

    fn timed_by(&self) -> Option<String> {
        self.every.map(|e| freshness::polled("scan", e))
    }

    fn begin(&self, ledger: SharedLedger) {
        self.current.set(Some(ledger));
    }

    async fn watch(&self, over: &CancellationToken) {
        let (Some(every), Some(ledger)) = (self.every, self.current.get()) else { return };
        loop {
            tokio::select! {
                _ = over.cancelled() => return,
                r = self.list(&ledger) => if let Err(e) = r {
                    tracing::debug!(error = %e, "a listing during the stage failed");
                },
            }
            tokio::select! {
                _ = over.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn collect(&self, cancel: &CancellationToken) -> Result<(), String> {
        let Some(ledger) = self.current.get() else { return Ok(()) };
        // List again until every acknowledged record shows, or `settle` runs out.
        let deadline = Instant::now() + self.scan.settle;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err("interrupted".into()),
                r = self.list(&ledger) => r?,
            }
            if lock(&ledger).all_acked_seen() || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err("interrupted".into()),
                _ = tokio::time::sleep(self.every.unwrap_or(Duration::from_millis(200))) => {}
            }
        }
    }

    fn end(&self) {
        self.current.set(None);
    }
}

/// Shares one observer between the runner's tasks.
pub type SharedObserver = Arc<dyn Observer>;

#[cfg(test)]
mod tests {
    use super::*;

    fn records(items: &[Item]) -> usize {
        items.iter().filter(|i| matches!(i, Item::Record(_))).count()
    }

    #[test]
    fn listings_in_every_shape() {
        let (r, next) = parse_listing(r#"[{"a":1},{"a":2}]"#, "items", None).unwrap();
        assert_eq!((records(&r), next), (2, None));
        let (r, next) = parse_listing(r#"{"items":[{"a":1}],"next":"c2"}"#, "items", Some("next")).unwrap();
        assert_eq!((records(&r), next.as_deref()), (1, Some("c2")));
        let (r, next) = parse_listing(r#"{"items":[],"next":null}"#, "items", Some("next")).unwrap();
        assert_eq!((r.len(), next), (0, None));
        let (r, _) = parse_listing("{\"a\":1}\n{\"a\":2}\n", "items", None).unwrap();
        assert_eq!(records(&r), 2);
        assert!(parse_listing(r#"{"rows":[]}"#, "items", None).is_err());
    }

    /// Regression: one stored record that is not valid JSON made the whole listing fail.
    #[test]
    fn a_broken_line_is_an_unreadable_item_not_a_failed_listing() {
        let body = "{\"id\":\"a\"}\n{\"id\":\"b\",\"amount\":\n[1]\n{\"id\":\"c\"}\n";
        let (items, _) = parse_listing(body, "items", None).unwrap();
        assert_eq!(records(&items), 2);
        assert_eq!(items.len(), 4);
        assert_eq!(items[1], Item::Unreadable("{\"id\":\"b\",\"amount\":".into()));
        let (items, _) = parse_listing("[{\"id\":\"a\"}, 7, \"x\"]", "items", None).unwrap();
        assert_eq!((records(&items), items.len()), (1, 3));
    }
}
