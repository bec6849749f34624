//! The TCP fault proxy that stands in front of a dependency.
//!
//! The system under test connects to the proxy's loopback port; the proxy connects on to
//! the real dependency and pumps bytes both ways. Each direction is a reader and a writer
//! joined by a channel: the reader stamps every chunk with its arrival time, the writer
//! applies the active faults to it (hold it, drop it, reset the connection) and passes it
//! on. Stamping at arrival keeps a latency fault from compounding when chunks queue up.
//!
//! The active faults arrive through a `watch` channel ([`Proxy::set_active`]); an empty
//! set is a clean pass-through. While the set is empty, each direction moves its bytes
//! with `splice` through a pipe (no copy through user space, no hand-off between a
//! reader and a writer); the first fault that starts moves the connection to the
//! reader and writer above, for the rest of its life. A `refuse` fault closes the listener while a bound socket
//! keeps the port, so no other program can take it meanwhile; if the proxy still cannot
//! listen again, that is stagegate's failure (reported to [`Trouble`]), never the
//! dependency's. [`Proxy::stop`] ends the listener and every connection within a deadline.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::chunk::{self, Cut, Flow, hits};
use super::{Activation, Direction, FaultKind};
use crate::health::Trouble;

type ActiveSet = Arc<Vec<Activation>>;

/// Bytes asked for by one read from a socket, at most.
const READ_BUFFER: usize = 256 * 1024;

/// Bytes asked for by one read from a socket, at least.
const MIN_READ: usize = 16 * 1024;

/// A running fault proxy.
pub struct Proxy {
    name: String,
    listen: SocketAddr,
    /// Where new connections go; changes when a restarted container comes back elsewhere.
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    active: watch::Sender<ActiveSet>,
    /// Whether the port is open (a refuse fault on every connection closes it).
    listening: watch::Receiver<bool>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Counters a proxy keeps, for reports and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections a fault reset or closed.
    pub cut: AtomicU64,
    /// Chunks a fault held back or dropped.
    pub chunks_faulted: AtomicU64,
    /// How late held chunks left against their planned release.
    pub hold_overrun: crate::measure::lateness::LagBook,
}

/// A TCP socket bound to `addr` with SO_REUSEPORT, not yet listening. While a refuse
/// fault closes the proxy's listener, such a socket keeps the port: connections are
/// refused (no one listens) and no other program can take it (it would need the same
/// option and owner); lifting the fault makes this socket listen.
fn bound_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Makes a bound socket listen, as a tokio listener.
fn listen_on(socket: socket2::Socket) -> std::io::Result<TcpListener> {
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl Proxy {
    /// Starts a proxy on a free loopback port, forwarding to `upstream`.
    pub async fn start(name: &str, upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::start_at(name, "127.0.0.1:0".parse().expect("a literal address"), upstream, None).await
    }

    /// Starts a proxy listening on `listen` (port 0: a free one), forwarding to
    /// `upstream`. A failure of its own (the port lost, descriptors exhausted) is
    /// reported to `trouble`.
    pub async fn start_at(
        name: &str,
        listen: SocketAddr,
        upstream: SocketAddr,
        trouble: Option<Trouble>,
    ) -> std::io::Result<Proxy> {
        let listener = listen_on(bound_socket(listen)?)?;
        let listen = listener.local_addr()?;
        let (active, rx) = watch::channel(Arc::new(Vec::new()));
        let cancel = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let (open, listening) = watch::channel(true);
        debug!(proxy = name, %listen, %upstream, "fault proxy listening");
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let place = Place { name: name.to_string(), listen, trouble };
        let task = tokio::spawn(serve(place, listener, upstream.clone(), rx, open, cancel.clone(), stats.clone()));
        Ok(Proxy {
            name: name.to_string(),
            listen,
            upstream,
            active,
            listening,
            stats,
            cancel,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// The address the system under test is given.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The real dependency's address.
    pub fn upstream(&self) -> SocketAddr {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends new connections to `upstream` from now on (open ones stay where they are).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    /// The dependency's name in the scenario.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters since the proxy started.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Replaces the set of active faults (an empty set removes every fault).
    pub fn set_active(&self, faults: Vec<Activation>) {
        self.active.send_replace(Arc::new(faults));
    }

    /// Waits (up to a second) until the port is open or closed as the active faults ask,
    /// so that a caller who just lifted a refuse fault can connect at once.
    pub async fn settled(&self) {
        let want = !refusing(&self.active.borrow());
        let mut listening = self.listening.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), listening.wait_for(|l| *l == want)).await;
    }

    /// Whether any fault is active now.
    pub fn is_faulted(&self) -> bool {
        !self.active.borrow().is_empty()
    }

    /// Removes every fault, closes the listener and every connection (a held chunk is
    /// dropped, not delivered late), and waits for that, within a deadline.
    pub async fn stop(&self) {
        self.set_active(Vec::new());
        self.cancel.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task
            && tokio::time::timeout(crate::limits::SERVER_STOP, &mut task).await.is_err()
        {
            task.abort();
        }
    }

    /// Removes every fault and stops at once, without waiting (the panic path).
    pub fn stop_now(&self) {
        self.set_active(Vec::new());
        self.cancel.cancel();
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn refusing(set: &ActiveSet) -> bool {
    set.iter().any(|a| matches!(a.fault.kind, FaultKind::Refuse) && a.fault.probability >= 1.0)
}

/// Who a proxy is, for its messages and its own failures.
struct Place {
    name: String,
    listen: SocketAddr,
    trouble: Option<Trouble>,
}

impl Place {
    fn fail(&self, what: String) {
        warn!(proxy = %self.name, "{what}");
        if let Some(t) = &self.trouble {
            t.fail(format!("the fault proxy for `{}` on {}: {what}", self.name, self.listen));
        }
    }
}

async fn serve(
    place: Place,
    listener: TcpListener,
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    mut active: watch::Receiver<ActiveSet>,
    open: watch::Sender<bool>,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) {
    let listen = place.listen;
    let mut listener = Some(listener);
    let room = Arc::new(tokio::sync::Semaphore::new(most_connections()));
    let mut said_full = false;
    // The socket that keeps the port while a refuse fault has the listener closed.
    let mut holder: Option<socket2::Socket> = None;
    loop {
        // A refuse fault on every connection closes the port itself, so that clients see
        // "connection refused" exactly as they would with the dependency down.
        let refuse = refusing(&active.borrow_and_update());
        if refuse && listener.is_some() {
            match bound_socket(listen) {
                Ok(h) => {
                    holder = Some(h);
                    listener = None;
                    open.send_replace(false);
                    debug!(%listen, "refusing connections");
                }
                Err(e) => place.fail(format!("cannot hold the port while refusing connections: {e}")),
            }
        }
        if !refuse && listener.is_none() {
            let reopened = match holder.take() {
                Some(h) => listen_on(h),
                None => bound_socket(listen).and_then(listen_on),
            };
            match reopened {
                Ok(l) => {
                    listener = Some(l);
                    open.send_replace(true);
                }
                Err(e) => {
                    // Never blame the dependency for our own lost port: the run is broken.
                    place.fail(format!("lost its port and cannot listen again: {e}"));
                    return;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = active.changed() => if changed.is_err() { return },
            accepted = async {
                // At its most connections, the proxy takes no more until one ends: the
                // rest wait in the listen queue, then their SYNs go unanswered, as a
                // blackholed network's would (a blackhole keeps every connection open).
                let room = match room.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        if !said_full {
                            said_full = true;
                            warn!(proxy = %place.name, most = most_connections(), "the proxy holds its most connections; new ones wait until one ends");
                        }
                        room.clone().acquire_owned().await.expect("the semaphore is never closed")
                    }
                };
                (listener.as_ref().expect("listening when not refusing").accept().await, room)
            }, if listener.is_some() => {
                let (accepted, room) = accepted;
                match accepted {
                    Ok((client, _)) => {
                        let id = stats.connections.fetch_add(1, Ordering::Relaxed);
                        let conn = Connection { id, reset: Default::default(), active: active.clone(), cancel: cancel.child_token(), stats: stats.clone() };
                        let to = *upstream.lock().unwrap_or_else(|p| p.into_inner());
                        tokio::spawn(async move {
                            conn.run(client, to).await;
                            drop(room);
                        });
                    }
                    Err(e) => {
                        if crate::health::is_own_exhaustion(&e) {
                            place.fail(format!("cannot accept connections: {e}"));
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        }
                    }
                }
            }
        }
    }
}

struct Connection {
    id: u64,
    /// Set when a reset fault cut this connection: the halves then close without FIN.
    reset: std::sync::atomic::AtomicBool,
    active: watch::Receiver<ActiveSet>,
    cancel: CancellationToken,
    stats: Arc<Stats>,
}

/// How [`Connection::pass_through`] ended.
enum Passed {
    Done,
    Faulted,
    Unavailable,
}

/// The most connections one proxy holds at once: a quarter of the process's open-file
/// limit (each takes two), so that a long blackhole, which keeps every connection the
/// system under test gives up on, cannot use up stagegate's descriptors.
fn most_connections() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(4096, |(soft, _)| soft);
    (limit / 4).clamp(256, 65_536) as usize
}

/// What one splice moves at most (the pipes are asked for this size).
const PIPE_SIZE: usize = 1024 * 1024;

/// Empty pipes kept for the next splice, shared by every proxy of the process.
static PIPES: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());

/// How many empty pipes [`PIPES`] keeps at most (more are closed when given back).
const IDLE_PIPES: usize = 64;

/// A pipe a clean pass-through splices through.
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Pipe {
    /// An empty pipe: a kept one, or a new one (`None` when none can be made).
    fn borrow() -> Option<Pipe> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        if let Some(p) = PIPES.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Some(p);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
        // A larger pipe moves more per call; the default (64 KiB) serves when refused.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        Some(Pipe { read, write })
    }

    /// Keeps this pipe, empty, for the next splice.
    fn give_back(self) {
        let mut idle = PIPES.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_PIPES {
            idle.push(self);
        }
    }
}

enum Chunk {
    Data(Bytes, Instant),
    Eof,
}

/// Sleeps until `deadline` to within a few microseconds. The runtime's timer has
/// millisecond steps and may fire a step late, so it sleeps to two milliseconds before
/// and yields until the instant: a held chunk leaves on time instead of up to a
/// millisecond or two late.
async fn sleep_precisely(deadline: Instant) {
    let coarse = deadline.checked_sub(Duration::from_millis(2)).unwrap_or(deadline);
    if coarse > Instant::now() {
        tokio::time::sleep_until(coarse).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

/// Sets SO_LINGER to zero so that closing the socket sends RST instead of FIN.
fn arm_reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// [`arm_reset`] for a socket known by its descriptor.
fn arm_reset_fd(fd: RawFd) {
    // SAFETY: the descriptor belongs to a socket of this connection, whose halves are
    // alive for as long as the pump that calls this runs.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&borrowed).set_linger(Some(Duration::ZERO));
}

impl Connection {
    async fn run(self, client: TcpStream, upstream: SocketAddr) {
        let set = self.active.borrow().clone();
        if set.iter().any(|a| matches!(a.fault.kind, FaultKind::Refuse) && hits(a, self.id)) {
            self.stats.cut.fetch_add(1, Ordering::Relaxed);
            arm_reset(&client);
            return;
        }
        let server = tokio::select! {
            _ = self.cancel.cancelled() => return,
            s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)) => s,
        };
        let Ok(Ok(server)) = server else {
            debug!(conn = self.id, %upstream, "dependency unreachable; closing the client");
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let fds = [client.as_raw_fd(), server.as_raw_fd()];
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let watcher = self.watch_for_refuse();
        let up = self.pump(Direction::Upstream, client_read, server_write, fds);
        let down = self.pump(Direction::Downstream, server_read, client_write, fds);
        // The connection ends when both directions have, or when a refuse fault closes it;
        // the watcher must not outlive the pumps (it would keep every closed connection's
        // task alive until the proxy stops: memory that grew with every connection).
        let pumps = async { tokio::join!(up, down) };
        tokio::select! {
            _ = pumps => {}
            _ = watcher => {}
        }
    }

    /// Closes this connection when a refuse fault that hits it starts.
    /// (Any other end of the connection is the pumps' to see: this only waits for
    /// refuse faults.)
    async fn watch_for_refuse(&self) {
        let mut active = self.active.clone();
        while active.changed().await.is_ok() {
            let set = active.borrow_and_update().clone();
            if set.iter().any(|a| matches!(a.fault.kind, FaultKind::Refuse) && hits(a, self.id)) {
                self.stats.cut.fetch_add(1, Ordering::Relaxed);
                self.cancel.cancel();
                return;
            }
        }
    }

    /// Moves bytes one way with `splice` while no fault is active on this proxy. Says
    /// how it ended: the stream is over, or a fault started (with nothing left in the
    /// pipe), or the kernel cannot splice these sockets (before any byte moved).
    ///
    /// A pipe is borrowed from [`PIPES`] only while bytes are in it (each read is
    /// written out whole before the next), so an idle connection holds none: file
    /// descriptors stay two per connection, as without splicing.
    async fn pass_through(&self, from: &OwnedReadHalf, to: &mut OwnedWriteHalf) -> Passed {
        use nix::fcntl::{SpliceFFlags, splice};
        use tokio::io::Interest;
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let (reader, writer): (&TcpStream, &TcpStream) = (from.as_ref(), to.as_ref());
        let mut watch = self.active.clone();
        let mut moved_any = false;
        loop {
            if !watch.borrow_and_update().is_empty() {
                return Passed::Faulted;
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Passed::Done,
                changed = watch.changed() => {
                    if changed.is_err() {
                        return Passed::Done;
                    }
                    continue;
                }
                ready = reader.readable() => if ready.is_err() { return Passed::Done },
            }
            // A fault that started while the bytes arrived applies to them: they stay
            // in the socket for the faulting pump.
            if watch.has_changed().unwrap_or(true) {
                continue;
            }
            let Some(pipe) = Pipe::borrow() else {
                return if moved_any { Passed::Faulted } else { Passed::Unavailable };
            };
            let filled = reader.try_io(Interest::READABLE, || {
                splice(reader, None, &pipe.write, None, PIPE_SIZE, flags).map_err(Into::into)
            });
            let mut in_pipe = match filled {
                Ok(0) => {
                    pipe.give_back();
                    let _ = to.shutdown().await;
                    return Passed::Done;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    pipe.give_back();
                    continue;
                }
                Err(e) if !moved_any && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    pipe.give_back();
                    return Passed::Unavailable;
                }
                Err(_) => {
                    // As the faulting reader does: a failed read ends this direction.
                    pipe.give_back();
                    let _ = to.shutdown().await;
                    return Passed::Done;
                }
            };
            moved_any = true;
            // Bytes in the pipe arrived before any fault: they go on whole. A pipe
            // left with bytes in it (the connection ended meanwhile) is closed, not
            // given back.
            while in_pipe > 0 {
                tokio::select! {
                    _ = self.cancel.cancelled() => return Passed::Done,
                    ready = writer.writable() => if ready.is_err() { self.cancel.cancel(); return Passed::Done },
                }
                let drained = writer.try_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, writer, None, in_pipe, flags).map_err(Into::into)
                });
                match drained {
                    Ok(n) => in_pipe -= n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.cancel.cancel();
                        return Passed::Done;
                    }
                }
            }
            pipe.give_back();
        }
    }

    /// Moves bytes one way; `fds` are the client's and the server's sockets, both reset
    /// together when a reset fault fires.
    async fn pump(&self, flow_dir: Direction, from: OwnedReadHalf, mut to: OwnedWriteHalf, fds: [RawFd; 2]) {
        if !matches!(self.pass_through(&from, &mut to).await, Passed::Done) {
            self.pump_faulted(flow_dir, from, &mut to, fds).await;
        }
        if self.reset.load(Ordering::Relaxed) {
            // Dropping a write half sends FIN first; a reset connection must only RST.
            to.forget();
        }
    }

    /// [`Self::pump`] with faults: a reader and a writer joined by a channel.
    async fn pump_faulted(&self, flow_dir: Direction, from: OwnedReadHalf, to: &mut OwnedWriteHalf, fds: [RawFd; 2]) {
        let (tx, mut rx) = mpsc::channel::<Chunk>(64);
        let reader = async {
            // A buffer is taken only once bytes are there to read, so a connection held
            // idle by a fault (a blackhole keeps thousands) holds none; it grows while
            // reads fill it (a busy stream: few syscalls and hand-offs) and shrinks back.
            let mut size = MIN_READ;
            loop {
                let ready = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    r = from.as_ref().readable() => r,
                };
                let mut buf = BytesMut::with_capacity(size);
                let read = match ready {
                    Ok(()) => match from.as_ref().try_read_buf(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        r => r,
                    },
                    Err(e) => Err(e),
                };
                let chunk = match read {
                    Ok(0) | Err(_) => Chunk::Eof,
                    Ok(n) => {
                        size = if n == size { (size * 2).min(READ_BUFFER) } else { (size / 2).max(MIN_READ) };
                        Chunk::Data(buf.freeze(), Instant::now())
                    }
                };
                let eof = matches!(chunk, Chunk::Eof);
                if tx.send(chunk).await.is_err() || eof {
                    return;
                }
            }
        };
        let writer = async {
            let mut flow = Flow::default();
            let mut last_release = Instant::now();
            // When the bandwidth cap next lets a byte through.
            let mut bandwidth_free = Instant::now();
            loop {
                let chunk = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    c = rx.recv() => c,
                };
                let (data, arrived) = match chunk {
                    Some(Chunk::Data(d, t)) => (d, t),
                    Some(Chunk::Eof) | None => {
                        // A blackhole swallows the close too: hold it while one is active.
                        let mut watch = self.active.clone();
                        loop {
                            let holed = watch.borrow_and_update().iter().any(|a| {
                                matches!(a.fault.kind, FaultKind::Blackhole)
                                    && a.fault.direction.covers(flow_dir)
                                    && hits(a, self.id)
                            });
                            if !holed {
                                break;
                            }
                            tokio::select! {
                                _ = self.cancel.cancelled() => return,
                                changed = watch.changed() => if changed.is_err() { return },
                            }
                        }
                        // A slow close holds the FIN back.
                        let set = self.active.borrow().clone();
                        if let Some(hold) = chunk::close_hold(&set, self.id, flow_dir) {
                            tokio::select! {
                                _ = self.cancel.cancelled() => return,
                                _ = tokio::time::sleep(hold) => {}
                            }
                        }
                        let _ = to.shutdown().await;
                        return;
                    }
                };
                let set = self.active.borrow().clone();
                let plan = chunk::plan(&set, self.id, flow_dir, data.len(), &mut flow);
                if plan.drop {
                    self.stats.chunks_faulted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if !plan.hold.is_zero() {
                    self.stats.chunks_faulted.fetch_add(1, Ordering::Relaxed);
                    // Chunks keep their order: never release before the previous one.
                    let mut release = (arrived + plan.hold).max(last_release);
                    let mut watch = self.active.clone();
                    watch.borrow_and_update();
                    loop {
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = sleep_precisely(release) => {
                                self.stats.hold_overrun.record(Instant::now().saturating_duration_since(release));
                                break;
                            }
                            changed = watch.changed() => {
                                // Lifted while held: the chunk goes on now.
                                if changed.is_err() || !chunk::holds(&watch.borrow_and_update(), self.id, flow_dir) {
                                    release = Instant::now().min(release);
                                    break;
                                }
                            }
                        }
                    }
                    last_release = release;
                }
                let mut data = data;
                if !plan.flips.is_empty() {
                    let mut owned = BytesMut::from(&data[..]);
                    for (at, mask) in &plan.flips {
                        owned[*at] ^= mask;
                    }
                    data = owned.freeze();
                }
                let pass = plan.cut.map_or(data.len(), |(at, _)| at);
                let mut rest = data.slice(..pass);
                while !rest.is_empty() {
                    let piece = match plan.slices {
                        Some((size, variation, _)) => {
                            flow.slices += 1;
                            chunk::slice_size(size, variation, self.id ^ 0x51, flow.slices).min(rest.len())
                        }
                        // Under a bandwidth cap, write at most a hundredth of a second's worth at once.
                        None => plan.bandwidth.map_or(rest.len(), |b| ((b / 100).max(1) as usize).min(rest.len())),
                    };
                    let bytes = rest.split_to(piece);
                    if let Some(rate) = plan.bandwidth {
                        // The link keeps an absolute schedule while busy, so late wake-ups do
                        // not add up; after an idle spell it starts afresh from now.
                        let now = Instant::now();
                        let start = if now > bandwidth_free + Duration::from_millis(20) { now } else { bandwidth_free };
                        bandwidth_free = start + Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
                        if start > now {
                            tokio::select! {
                                _ = self.cancel.cancelled() => return,
                                _ = tokio::time::sleep_until(start) => {}
                            }
                        }
                    }
                    if to.write_all(&bytes).await.is_err() {
                        self.cancel.cancel();
                        return;
                    }
                    if let Some((_, _, gap)) = plan.slices
                        && !rest.is_empty()
                        && !gap.is_zero()
                    {
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = tokio::time::sleep(gap) => {}
                        }
                    }
                }
                if let Some((_, how)) = plan.cut {
                    self.stats.cut.fetch_add(1, Ordering::Relaxed);
                    if how == Cut::Reset {
                        fds.iter().for_each(|fd| arm_reset_fd(*fd));
                        self.reset.store(true, Ordering::Relaxed);
                    } else {
                        let _ = to.shutdown().await;
                    }
                    self.cancel.cancel();
                    return;
                }
            }
        };
        tokio::join!(reader, writer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Fault, Place, Schedule};
    use tokio::io::AsyncReadExt;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn activation(kind: FaultKind, probability: f64) -> Activation {
        Activation {
            id: 0,
            index: 0,
            seed: 11,
            fault: Fault {
                kind,
                at: Place::Dependency("echo".into()),
                schedule: Schedule { from: Duration::ZERO, length: None, every: None },
                probability,
                direction: Direction::Both,
                predicate: None,
            },
        }
    }

    async fn round_trip(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(payload).await?;
        let mut out = vec![0; payload.len()];
        s.read_exact(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn passes_bytes_unchanged_without_faults() {
        let proxy = Proxy::start("echo", echo_server().await).await.unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(round_trip(proxy.addr(), &payload).await.unwrap(), payload);
        proxy.stop().await;
    }

    /// Regression: splicing took a pipe (two descriptors) per direction for each
    /// connection's whole life, tripling what a proxy holding many connections needs.
    /// Each connection here holds four: the client's, the proxy's two, the server's.
    #[tokio::test]
    async fn idle_connections_hold_no_pipe() {
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let proxy = Proxy::start("echo", echo_server().await).await.unwrap();
        let before = open_fds();
        let mut held = Vec::new();
        for i in 0..100u32 {
            let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
            // Bytes through each, so every direction has spliced.
            s.write_all(&i.to_be_bytes()).await.unwrap();
            let mut back = [0u8; 4];
            s.read_exact(&mut back).await.unwrap();
            held.push(s);
        }
        let per_connection = (open_fds() - before) as f64 / 100.0;
        assert!(per_connection <= 4.2, "{per_connection} descriptors per idle connection");
        drop(held);
        proxy.stop().await;
    }

    #[tokio::test]
    async fn latency_holds_each_direction() {
        let proxy = Proxy::start("echo", echo_server().await).await.unwrap();
        proxy.set_active(vec![activation(
            FaultKind::Latency { delay: Duration::from_millis(30), jitter: Duration::ZERO },
            1.0,
        )]);
        let t = std::time::Instant::now();
        round_trip(proxy.addr(), b"ping").await.unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(60), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn refuse_closes_the_port_and_repair_reopens_it() {
        let proxy = Proxy::start("echo", echo_server().await).await.unwrap();
        proxy.set_active(vec![activation(FaultKind::Refuse, 1.0)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = TcpStream::connect(proxy.addr()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        proxy.set_active(vec![]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(round_trip(proxy.addr(), b"back").await.unwrap(), b"back");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn reset_sends_rst() {
        let proxy = Proxy::start("echo", echo_server().await).await.unwrap();
        proxy.set_active(vec![activation(FaultKind::Reset { after: None }, 1.0)]);
        let err = round_trip(proxy.addr(), b"hello").await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn blackhole_forwards_nothing() {
        let proxy = Proxy::start("echo", echo_server().await).await.unwrap();
        proxy.set_active(vec![activation(FaultKind::Blackhole, 1.0)]);
        let r = tokio::time::timeout(Duration::from_millis(200), round_trip(proxy.addr(), b"x")).await;
        assert!(r.is_err(), "a blackholed connection must time out, got {r:?}");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn blackhole_holds_the_close_too() {
        // A server that closes at once: through a blackhole the client must not see it.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let proxy = Proxy::start("closer", addr).await.unwrap();
        proxy.set_active(vec![activation(FaultKind::Blackhole, 1.0)]);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(r.is_err(), "the close came through the blackhole: {r:?}");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn stop_closes_the_listener() {
        let proxy = Proxy::start("echo", echo_server().await).await.unwrap();
        let addr = proxy.addr();
        proxy.stop().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
