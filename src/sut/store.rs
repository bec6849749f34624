//! The builtin store (`dependencies: { NAME: { builtin: kv-store } }`): a small
//! append-only record store over TCP, the dependency of the builtin pipeline.
//!
//! The protocol is one line per request and per answer, so that a fault cutting the
//! stream in the middle shows as a broken answer, as with a real database driver:
//!
//! ```text
//! APPEND <key> <idempotency-token or -> <json>   ->  OK <offset>
//! GET <key>                                      ->  N <count>, then <count> JSON lines
//! SCAN <from-offset>                             ->  <offset> <json> lines, then END <next>
//! PING                                           ->  PONG
//! ```
//!
//! An `APPEND` carrying a token already seen returns the earlier offset without storing
//! again: that is what makes a retried write safe. Without a token, a retry after a lost
//! answer stores the record twice, as an at-least-once writer does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Log {
    entries: Vec<(String, String)>,
    by_key: HashMap<String, Vec<usize>>,
    tokens: HashMap<String, usize>,
}

impl Log {
    fn append(&mut self, key: &str, token: Option<&str>, json: &str) -> usize {
        if let Some(t) = token
            && let Some(offset) = self.tokens.get(t)
        {
            return *offset;
        }
        let offset = self.entries.len();
        self.entries.push((key.to_string(), json.to_string()));
        self.by_key.entry(key.to_string()).or_default().push(offset);
        if let Some(t) = token {
            self.tokens.insert(t.to_string(), offset);
        }
        offset
    }
}

/// A running builtin store.
pub struct KvStore {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The longest request line the store reads; a longer one closes the connection.
const MAX_LINE: u64 = 4 * 1024 * 1024;

impl KvStore {
    /// Starts the store on a free loopback port.
    pub async fn start() -> std::io::Result<KvStore> {
        KvStore::start_at("127.0.0.1:0".parse().expect("a literal address")).await
    }

    /// Starts the store on `addr` (port 0: a free one).
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<KvStore> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve(stream, log.clone(), stop.clone()));
                        }
                    }
                }
            }
        });
        Ok(KvStore { addr, cancel, task: std::sync::Mutex::new(Some(task)) })
    }

    /// The store's own address (the system under test is given the proxy's instead).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the store and closes every connection.
    pub async fn stop(&self) {
        self.cancel.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(crate::limits::SERVER_STOP, task).await;
        }
    }
}

#[async_trait::async_trait]
impl crate::teardown::Resource for KvStore {
    fn label(&self) -> String {
        "the builtin store".into()
    }

    async fn stop(&self, _forced: bool) {
        KvStore::stop(self).await;
    }

    fn stop_now(&self) {
        self.cancel.cancel();
    }
}

async fn serve(stream: TcpStream, log: Arc<Mutex<Log>>, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = async { (&mut reader).take(MAX_LINE).read_line(&mut line).await } => r,
        };
        // A request is a whole line: one cut off by a closed connection is not applied,
        // as a database does not commit half a statement.
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => return,
            Ok(_) => {}
        }
        let answer = answer(line.trim_end_matches(['\r', '\n']), &log);
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn answer(line: &str, log: &Mutex<Log>) -> String {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "APPEND" => {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(key), Some(token), Some(json)) if !key.is_empty() => {
                    let token = (token != "-").then_some(token);
                    format!("OK {}\n", log.append(key, token, json))
                }
                _ => "ERR usage: APPEND <key> <token|-> <json>\n".into(),
            }
        }
        "GET" => {
            let found = log.by_key.get(rest).cloned().unwrap_or_default();
            let mut out = format!("N {}\n", found.len());
            for i in found {
                out.push_str(&log.entries[i].1);
                out.push('\n');
            }
            out
        }
        "SCAN" => {
            let from: usize = rest.trim().parse().unwrap_or(0);
            let mut out = String::new();
            for (i, (_, json)) in log.entries.iter().enumerate().skip(from) {
                out.push_str(&format!("{i} {json}\n"));
            }
            out.push_str(&format!("END {}\n", log.entries.len()));
            out
        }
        "PING" => "PONG\n".into(),
        _ => "ERR unknown command\n".into(),
    }
}

/// Reads every record stored from `from` on, straight from the store (not through the
/// proxy, so that faults do not disturb the observation). Returns the JSON lines and
/// the offset to continue from.
pub async fn scan(addr: SocketAddr, from: usize) -> std::io::Result<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let next = scan_each(addr, from, |line| out.push(line.to_string())).await?;
    Ok((out, next))
}

/// Hands each record stored from `from` on to `each`, without holding them all; returns
/// the offset to continue from. Within 10 s.
pub async fn scan_each(addr: SocketAddr, from: usize, mut each: impl FnMut(&str)) -> std::io::Result<usize> {
    let scan = async {
        let stream = TcpStream::connect(addr).await?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("SCAN {from}\n").as_bytes()).await?;
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(next) = line.strip_prefix("END ") {
                return Ok(next.trim().parse().unwrap_or(from));
            }
            if let Some((_, json)) = line.split_once(' ') {
                each(json);
            }
        }
        Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "store closed during SCAN"))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), scan)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the store did not answer a SCAN within 10s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_make_appends_idempotent() {
        let store = KvStore::start().await.unwrap();
        let s = TcpStream::connect(store.addr()).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        for cmd in ["APPEND a t1 {\"v\":1}", "APPEND a t1 {\"v\":1}", "APPEND b - {\"v\":2}", "APPEND b - {\"v\":2}"] {
            w.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
            assert!(lines.next_line().await.unwrap().unwrap().starts_with("OK "));
        }
        let (all, next) = scan(store.addr(), 0).await.unwrap();
        assert_eq!(all.len(), 3, "the retried token write is stored once, the untokened twice");
        assert_eq!(next, 3);
        let (rest, _) = scan(store.addr(), 2).await.unwrap();
        assert_eq!(rest, vec!["{\"v\":2}".to_string()]);
        store.stop().await;
    }

    #[tokio::test]
    async fn a_request_cut_mid_line_is_not_applied() {
        let store = KvStore::start().await.unwrap();
        let mut s = TcpStream::connect(store.addr()).await.unwrap();
        s.write_all(b"APPEND a - {\"v\":1").await.unwrap();
        drop(s);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (all, _) = scan(store.addr(), 0).await.unwrap();
        assert!(all.is_empty(), "{all:?}");
        store.stop().await;
    }
}
