//! Messages: listeners, client connections, routing rules, per-pool queues, per-instance
//! in-flight FIFOs, replies, redelivery, timeouts and backpressure (SPEC section 5).
//!
//! Life of a message: a client line is matched against its listener's rules; the
//! chosen pool either writes it to an instance at once (the instance's stdin buffer;
//! `in flight`), parks it in an instance's `backlog` (hash and broadcast pin a message
//! to one instance), or queues it. Each stdout line of an instance answers its oldest
//! in-flight message. When an instance dies or times out, its unanswered messages are
//! delivered again (front of the queue) until `retries` is used up.
//!
//! Invariants:
//! - every message in `msgs` is in exactly one place: a pool queue, an instance
//!   backlog, or an instance's in-flight FIFO;
//! - `PoolQueue::waiting` = queue length + the backlogs of the pool's instances;
//! - a client gets exactly one reply line per message (a broadcast: one per instance
//!   it was sent to), in sending order when the route is `ordered`;
//! - memory is bounded: a pool holds at most `queue` waiting messages and
//!   [`POOL_MAX_BYTES`] of messages; a client has at most [`MAX_OUTSTANDING`] messages
//!   and [`MAX_CLIENT_OUT`] bytes of replies pending (written or held for ordering)
//!   before orchd stops reading from it; an idle client holds no buffers; at most
//!   `max_clients` connections exist: past it no listener is watched, and waiting
//!   connections stay in the kernel's backlog until a client leaves;
//! - orchd never closes a connection with unread input (that sends a reset, and the
//!   peer loses replies it has not read yet): when it stops reading from a client that
//!   has not closed, it half-closes once the replies are out and discards input until
//!   the peer closes, or [`LINGER`] is over.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use slab::Slab;

use super::supervise::MAX_LINE;
use super::{Daemon, IoTarget, TimerKey};
use crate::config::{Config, Route, Source, Strategy};
use crate::framing::{Fill, Frame, LineBuf};
use crate::router::reorder::Reorder;
use crate::router::strategy::{self, Candidate};
use crate::sys::{self, FdKind};
use crate::timers::deadline;

/// A client with this many messages awaiting replies is not read from.
pub const MAX_OUTSTANDING: u32 = 10_000;
/// A client with this many reply bytes not yet written (or held back for ordering) is
/// not read from.
pub const MAX_CLIENT_OUT: usize = 4 << 20;
/// A pool holding this many bytes of messages (waiting or in flight) takes no more
/// until it drains, whatever its `queue` allows: `queue` counts messages, and 10,000
/// messages of 1 MiB would be 10 GiB.
pub const POOL_MAX_BYTES: usize = 32 << 20;
/// How long to wait before accepting again after EMFILE/ENFILE.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a connection orchd has half-closed may take to close its side.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Router {
    listeners: Slab<Listener>,
    by_source: HashMap<Source, usize>,
    clients: Slab<Client>,
    msgs: Slab<Msg>,
    gathers: Slab<Gather>,
    /// The routes of the current config, with their pools resolved.
    routes: Vec<RouteRt>,
    next_client_id: u64,
    /// Clients that may read again (a reply freed room, a pool drained).
    to_pump: Vec<usize>,
    /// The batch client (`from = "stdin"`), while it exists.
    batch: Option<usize>,
    /// Error replies written to the batch client.
    batch_errors: u64,
    /// Writing batch replies to stdout failed: replies were lost.
    batch_output_failed: bool,
    /// Shutdown began: read nothing new.
    stopped_reading: bool,
    /// Scratch buffers for choosing an instance (see `fill_candidates`).
    cand_keys: Vec<usize>,
    cands: Vec<Candidate>,
    /// `max_clients` was reached: since when (logged once per episode, which ends
    /// when every waiting connection has been accepted).
    cap_since: Option<Instant>,
    /// Listeners are not watched because of `max_clients`.
    cap_paused: bool,
}

struct RouteRt {
    cfg: Route,
    pool: usize,
}

struct Listener {
    source: Source,
    /// For logs: `source` with the port actually bound (`tcp://…:0`).
    label: String,
    kind: ListenerKind,
    /// Set while the listener is watched for new connections.
    token: Option<Token>,
    /// Indexes into `Router::routes`, in file order.
    routes: Vec<usize>,
    /// Accepting failed (out of fds): the generation of the one pending retry timer.
    retry: Option<u64>,
    /// The current out-of-fds episode: when it began and how many retries failed.
    starved: Option<(Instant, u32)>,
}

enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Stdin,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// orchd's own stdin/stdout (batch mode).
    Stdio {
        input: FdKind,
        output: FdKind,
    },
}

struct Client {
    id: u64,
    listener: usize,
    stream: Stream,
    token: Option<Token>,
    inbuf: LineBuf,
    out: Vec<u8>,
    out_pos: usize,
    order: Reorder<Vec<u8>>,
    /// Bytes of replies held in `order`, waiting for an earlier one.
    order_bytes: usize,
    /// Messages read and not yet answered.
    outstanding: u32,
    /// A message that found its pool's queue full; retried when the pool drains.
    stalled: Option<Vec<u8>>,
    /// No more input will come (EOF, or shutdown).
    read_done: bool,
    /// Reading stopped before WouldBlock: must be resumed actively.
    read_paused: bool,
    want_write: bool,
    /// The peer is gone; close as soon as possible.
    dead: bool,
    /// The peer closed its side (EOF), so no unread input can remain.
    peer_closed: bool,
    /// Half-closed by orchd: input is discarded until the peer closes (or [`LINGER`]).
    lingering: bool,
    /// Batch mode, stdout a pipe/socket: its token while WRITABLE interest is needed.
    out_token: Option<Token>,
    /// Batch mode, stdin a terminal: bytes are known to be readable without blocking.
    tty_ready: bool,
    /// Already in `Router::to_pump`.
    pump_queued: bool,
    /// Peer address, for logs.
    label: String,
}

/// How a message is bound to instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// Any instance, chosen by round-robin or least-busy.
    Any(Strategy),
    /// The instance rendezvous hashing picks for this key among live instances.
    Hash(u64),
    /// This instance index (a broadcast copy).
    Slot(u32),
}

struct Msg {
    client: usize,
    client_id: u64,
    /// Position in the client's reorder buffer (ordered routes).
    seq: Option<u64>,
    /// The message with its trailing `\n`.
    payload: Vec<u8>,
    pool: usize,
    pin: Pin,
    timeout: Option<Duration>,
    retries: u32,
    /// Failed attempts so far: times it was the oldest unanswered message of an
    /// instance that died or timed out (the one that instance was working on).
    failures: u32,
    /// Broadcast copy: (gather, position).
    gather: Option<(usize, usize)>,
    queued_at: Instant,
    sent_at: Instant,
}

/// Collects the replies of a broadcast, released together in instance order.
struct Gather {
    client: usize,
    client_id: u64,
    seq: Option<u64>,
    replies: Vec<Option<Vec<u8>>>,
    remaining: usize,
    errors: bool,
}

/// Routing state of a pool.
#[derive(Default)]
pub struct PoolQueue {
    queue: VecDeque<usize>,
    /// Round-robin / least-busy cursor (an instance index).
    cursor: u32,
    /// Messages waiting: queue + instance backlogs.
    waiting: usize,
    /// Bytes of every message of this pool that exists (waiting or in flight).
    bytes: usize,
    /// Clients stalled on this pool's full queue.
    waiters: Vec<(usize, u64)>,
    /// Since when the pool has had no live instance (queue expiry counts from here).
    empty_since: Option<Instant>,
    expire_at: Option<Instant>,
    expire_gen: u64,
}

impl PoolQueue {
    /// Known to have no live instance (it takes an instance starting to change that).
    pub(super) fn none_live(&self) -> bool {
        self.empty_since.is_some()
    }

    /// No room for another message: `queue` messages wait, or the pool holds
    /// [`POOL_MAX_BYTES`]. An empty pool always takes one, however large.
    fn is_full(&self, queue: u32) -> bool {
        self.waiting >= queue as usize || self.bytes >= POOL_MAX_BYTES
    }
}

/// Routing state of an instance.
#[derive(Default)]
pub struct InstanceRt {
    pub inflight: VecDeque<usize>,
    backlog: VecDeque<usize>,
    pub answered: u64,
    /// When the oldest in-flight message's `timeout` clock started.
    head_since: Option<Instant>,
    /// At death: bytes of in-flight messages the worker never read (still in orchd's
    /// buffer or in the pipe). Messages entirely in there were not worked on.
    unread: usize,
    deadline_at: Option<Instant>,
    deadline_gen: u64,
}

/// A reply on its way to a client.
enum Reply<'a> {
    /// A worker's reply line (without `\n`).
    Line(&'a [u8]),
    /// An error reason; written as `error_prefix + reason`.
    Error(&'a str),
    /// A broadcast's replies, each already `\n`-terminated; true if any is an error.
    Gathered(Vec<u8>, bool),
}

impl Reply<'_> {
    fn is_error(&self) -> bool {
        match self {
            Reply::Line(_) => false,
            Reply::Error(_) => true,
            Reply::Gathered(_, e) => *e,
        }
    }

    fn write_to(&self, out: &mut Vec<u8>, prefix: &str) {
        match self {
            Reply::Line(l) => {
                out.extend_from_slice(l);
                out.push(b'\n');
            }
            Reply::Error(why) => {
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(why.as_bytes());
                out.push(b'\n');
            }
            Reply::Gathered(b, _) => out.extend_from_slice(b),
        }
    }
}

/// Why a delivery attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Died,
    TimedOut,
}

enum Placement {
    Assign(usize),
    Backlog(usize),
    Wait,
    Fail(&'static str),
}

impl Daemon {
    // ----- set-up and reload --------------------------------------------------------

    /// Open a listener for every distinct `from` of `config` not yet open.
    pub(super) fn listeners_open(&mut self, config: &Config) -> io::Result<()> {
        for route in &config.routes {
            if self.router.by_source.contains_key(&route.from) {
                continue;
            }
            let l = self.listener_open(&route.from, route.mode)?;
            let key = self.router.listeners.insert(l);
            self.router.by_source.insert(route.from.clone(), key);
            self.listener_start(key)?;
        }
        Ok(())
    }

    fn listener_open(&mut self, source: &Source, mode: u32) -> io::Result<Listener> {
        let mut label = source.to_string();
        let kind = match source {
            Source::Tcp(addr) => {
                let l = TcpListener::bind(*addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on tcp://{addr}: {e}"))
                })?;
                // Port 0 asks the kernel for one: log the port clients must use.
                if let Ok(bound) = l.local_addr() {
                    label = format!("tcp://{bound}");
                }
                ListenerKind::Tcp(l)
            }
            Source::Unix(path) => {
                let l = bind_unix(path, mode)?;
                ListenerKind::Unix(l, path.clone())
            }
            Source::Stdin => ListenerKind::Stdin,
        };
        log::info!("listening on {label}");
        Ok(Listener {
            source: source.clone(),
            label,
            kind,
            token: None,
            routes: Vec::new(),
            retry: None,
            starved: None,
        })
    }

    fn listener_start(&mut self, key: usize) -> io::Result<()> {
        let l = &mut self.router.listeners[key];
        let token = match &mut l.kind {
            ListenerKind::Tcp(s) => Some(register(
                &self.poll,
                &mut self.io,
                s,
                IoTarget::Listener(key),
            )?),
            ListenerKind::Unix(s, _) => Some(register(
                &self.poll,
                &mut self.io,
                s,
                IoTarget::Listener(key),
            )?),
            ListenerKind::Stdin => None,
        };
        l.token = token;
        if matches!(l.kind, ListenerKind::Stdin) {
            self.batch_client_open(key)?;
        }
        Ok(())
    }

    /// Point every listener at the routes of `config` (atomically: messages read from
    /// now on use the new rules).
    pub(super) fn router_install(&mut self, config: &Config) {
        self.router.routes.clear();
        for (_, l) in self.router.listeners.iter_mut() {
            l.routes.clear();
        }
        for route in &config.routes {
            let Some(&pool) = self.pool_names.get(&route.to) else {
                continue;
            };
            let idx = self.router.routes.len();
            self.router.routes.push(RouteRt {
                cfg: route.clone(),
                pool,
            });
            if let Some(&l) = self.router.by_source.get(&route.from) {
                self.router.listeners[l].routes.push(idx);
            }
        }
    }

    /// Close listeners whose address no route uses any more. Their connections read
    /// no more messages and stay until their replies are written (a message read but
    /// stalled on a full pool gets `no route`).
    pub(super) fn listeners_close_unused(&mut self, config: &Config) {
        let unused: Vec<usize> = self
            .router
            .listeners
            .iter()
            .filter(|(_, l)| !config.routes.iter().any(|r| r.from == l.source))
            .map(|(k, _)| k)
            .collect();
        for key in unused {
            self.listener_close(key);
        }
    }

    fn listener_close(&mut self, key: usize) {
        let mut l = self.router.listeners.remove(key);
        self.router.by_source.remove(&l.source);
        if let Some(token) = l.token {
            match &mut l.kind {
                ListenerKind::Tcp(s) => self.deregister_io(s, token),
                ListenerKind::Unix(s, _) => self.deregister_io(s, token),
                ListenerKind::Stdin => {}
            }
        }
        if let ListenerKind::Unix(_, path) = &l.kind {
            let _ = std::fs::remove_file(path);
        }
        // Its connections read nothing more and close once their replies are out (and
        // their peers have closed: see `client_maybe_close`).
        let clients: Vec<usize> = self
            .router
            .clients
            .iter()
            .filter(|(_, c)| c.listener == key)
            .map(|(k, _)| k)
            .collect();
        for c in clients {
            let cl = &mut self.router.clients[c];
            cl.listener = usize::MAX;
            cl.read_done = true;
            self.client_refuse_unrouted(c, "no route");
            self.client_maybe_close(c);
        }
        log::info!("stopped listening on {}", l.label);
    }

    // ----- listeners and clients ----------------------------------------------------

    pub(super) fn on_listener(&mut self, key: usize) {
        if self.router.stopped_reading {
            return;
        }
        loop {
            if self.clients_at_cap() {
                self.cap_reached();
                return;
            }
            let Some(l) = self.router.listeners.get_mut(key) else {
                return;
            };
            if l.retry.is_some() {
                // A readiness event from before the pause; the retry timer is pending.
                return;
            }
            let accepted = match &l.kind {
                ListenerKind::Tcp(s) => s.accept().map(|(c, peer)| {
                    let _ = c.set_nodelay(true);
                    (Stream::Tcp(c), peer.to_string())
                }),
                ListenerKind::Unix(s, path) => s
                    .accept()
                    .map(|(c, _)| (Stream::Unix(c), format!("unix:{}", path.display()))),
                ListenerKind::Stdin => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = self.client_add(key, stream, peer) {
                        log::warn!("cannot watch a new connection: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_recovered(key);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer gave up before we accepted: next one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    self.accept_failed(key, &e);
                    return;
                }
            }
        }
    }

    /// EMFILE/ENFILE (or another error that retrying right away would repeat): the
    /// pending connection stays in the backlog. Stop watching this listener and try
    /// again after [`ACCEPT_RETRY`], with one timer and one warning per episode.
    fn accept_failed(&mut self, key: usize, e: &io::Error) {
        let gen = self.gen();
        let Some(l) = self.router.listeners.get_mut(key) else {
            return;
        };
        match &mut l.starved {
            Some((_, n)) => *n += 1,
            None => {
                let why = match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors",
                    _ => "failing",
                };
                log::warn!(
                    "accept on {}: {why} ({e}); not accepting there until it works again \
                     (retrying every {}ms)",
                    l.label,
                    ACCEPT_RETRY.as_millis()
                );
                l.starved = Some((self.now, 1));
            }
        }
        l.retry = Some(gen);
        self.timers.arm(
            self.now + ACCEPT_RETRY,
            TimerKey::Accept { listener: key, gen },
        );
        self.listener_watch(key, false);
    }

    /// Every waiting connection has been accepted: end the listener's out-of-fds
    /// episode, if any. (Not at the first success: at the limit, fds come and go as
    /// clients do, and that is one episode, not one per client.)
    fn accept_recovered(&mut self, key: usize) {
        let Some(l) = self.router.listeners.get_mut(key) else {
            return;
        };
        if let Some((since, n)) = l.starved.take() {
            log::info!(
                "accepting on {} again after {} failed retr{} over {}",
                l.label,
                n,
                if n == 1 { "y" } else { "ies" },
                humantime::format_duration(round_ms(self.now.saturating_duration_since(since)))
            );
        }
    }

    pub(super) fn on_accept_timer(&mut self, listener: usize, gen: u64) {
        let Some(l) = self.router.listeners.get_mut(listener) else {
            return;
        };
        if l.retry != Some(gen) {
            return;
        }
        l.retry = None;
        if !self.router.cap_paused {
            self.listener_watch(listener, true);
        }
        self.on_listener(listener);
    }

    /// Watch a listener for new connections, or stop. A listener not watched keeps
    /// its socket: new connections wait in the kernel's backlog and cost no wake-up.
    fn listener_watch(&mut self, key: usize, on: bool) {
        let Some(l) = self.router.listeners.get_mut(key) else {
            return;
        };
        match (on, l.token) {
            (true, None) => {
                let r = match &mut l.kind {
                    ListenerKind::Tcp(s) => {
                        register(&self.poll, &mut self.io, s, IoTarget::Listener(key))
                    }
                    ListenerKind::Unix(s, _) => {
                        register(&self.poll, &mut self.io, s, IoTarget::Listener(key))
                    }
                    ListenerKind::Stdin => return,
                };
                match r {
                    Ok(t) => l.token = Some(t),
                    Err(e) => log::error!("cannot watch {} again: {e}", l.label),
                }
            }
            (false, Some(token)) => {
                l.token = None;
                let r = match &mut l.kind {
                    ListenerKind::Tcp(s) => self.poll.registry().deregister(s),
                    ListenerKind::Unix(s, _) => self.poll.registry().deregister(s),
                    ListenerKind::Stdin => Ok(()),
                };
                if let Err(e) = r {
                    log::debug!("deregister {}: {e}", l.label);
                }
                if self.io.contains(token.0 - super::FIRST_IO) {
                    self.io.remove(token.0 - super::FIRST_IO);
                }
            }
            _ => {}
        }
    }

    /// Connections over all routes (the batch client is not one).
    fn clients_at_cap(&self) -> bool {
        let n = self.router.clients.len() - usize::from(self.router.batch.is_some());
        n >= self.config.settings.max_clients as usize
    }

    /// `max_clients` reached: stop watching every listener (no accept-and-close, no
    /// wake-ups) until a client leaves.
    fn cap_reached(&mut self) {
        if self.router.cap_since.is_none() {
            self.router.cap_since = Some(self.now);
            log::warn!(
                "max_clients = {} reached: not accepting new connections until a client leaves",
                self.config.settings.max_clients
            );
        }
        if !self.router.cap_paused {
            self.router.cap_paused = true;
            let keys: Vec<usize> = self.router.listeners.iter().map(|(k, _)| k).collect();
            for k in keys {
                self.listener_watch(k, false);
            }
        }
    }

    /// Below `max_clients` again: watch the listeners and take waiting connections.
    fn cap_resume_if_room(&mut self) {
        if !self.router.cap_paused || self.router.stopped_reading || self.clients_at_cap() {
            return;
        }
        self.router.cap_paused = false;
        let keys: Vec<usize> = self.router.listeners.iter().map(|(k, _)| k).collect();
        for k in keys {
            if self
                .router
                .listeners
                .get(k)
                .is_some_and(|l| l.retry.is_none())
            {
                self.listener_watch(k, true);
                self.on_listener(k);
            }
        }
        if self.router.cap_paused {
            return; // full again: the episode goes on
        }
        // Every waiting connection has been accepted: the episode is over.
        if let Some(since) = self.router.cap_since.take() {
            log::info!(
                "accepting connections again: {} connected, max_clients = {}, full for {}",
                self.router.clients.len() - usize::from(self.router.batch.is_some()),
                self.config.settings.max_clients,
                humantime::format_duration(round_ms(self.now.saturating_duration_since(since)))
            );
        }
    }

    fn client_add(&mut self, listener: usize, mut stream: Stream, peer: String) -> io::Result<()> {
        let entry = self.router.clients.vacant_entry();
        let key = entry.key();
        let token = match &mut stream {
            Stream::Tcp(s) => Some(register(
                &self.poll,
                &mut self.io,
                s,
                IoTarget::Client(key),
            )?),
            Stream::Unix(s) => Some(register(
                &self.poll,
                &mut self.io,
                s,
                IoTarget::Client(key),
            )?),
            Stream::Stdio { .. } => None,
        };
        self.router.next_client_id += 1;
        log::debug!("client {peer} connected");
        entry.insert(Client {
            id: self.router.next_client_id,
            listener,
            stream,
            token,
            inbuf: LineBuf::new(MAX_LINE),
            out: Vec::new(),
            out_pos: 0,
            order: Reorder::default(),
            order_bytes: 0,
            outstanding: 0,
            stalled: None,
            read_done: false,
            read_paused: false,
            want_write: false,
            dead: false,
            peer_closed: false,
            lingering: false,
            out_token: None,
            tty_ready: false,
            pump_queued: false,
            label: peer,
        });
        Ok(())
    }

    /// Batch mode: orchd's stdin and stdout form one client.
    fn batch_client_open(&mut self, listener: usize) -> io::Result<()> {
        if self.opts.stdout_closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdout is closed: batch replies (from = \"stdin\") have nowhere to go",
            ));
        }
        let input = sys::fd_kind(0)?;
        let output = sys::fd_kind(1)?;
        if input == FdKind::Stream {
            sys::set_fd_nonblocking(0, true)?;
        }
        if output == FdKind::Stream {
            sys::set_fd_nonblocking(1, true)?;
        }
        let key = self.router.clients.vacant_entry().key();
        self.client_add(listener, Stream::Stdio { input, output }, "stdin".into())?;
        if input != FdKind::File {
            // Pipes, sockets and terminals can be polled; regular files cannot (EPERM)
            // and are read whenever there is room instead.
            let token = register(
                &self.poll,
                &mut self.io,
                &mut SourceFd(&0),
                IoTarget::Client(key),
            )?;
            self.router.clients[key].token = Some(token);
        }
        self.router.batch = Some(key);
        self.schedule_pump(key);
        Ok(())
    }

    pub(super) fn on_client(&mut self, key: usize, event: &Event) {
        if self.router.clients.get(key).is_some_and(|c| c.lingering) {
            self.client_discard_input(key);
            return;
        }
        if event.is_readable() {
            if let Some(c) = self.router.clients.get_mut(key) {
                c.tty_ready = true;
            }
        }
        if event.is_writable() {
            self.flush_client(key);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.client_pump(key);
        }
    }

    fn client_can_read(&self, c: &Client) -> bool {
        !c.dead
            && !c.read_done
            && c.stalled.is_none()
            && !self.router.stopped_reading
            && c.outstanding < MAX_OUTSTANDING
            && c.out.len() - c.out_pos + c.order_bytes < MAX_CLIENT_OUT
    }

    /// Read and route as much as the client and its pools allow.
    fn client_pump(&mut self, key: usize) {
        let Some(c) = self.router.clients.get_mut(key) else {
            return;
        };
        if let Some(line) = c.stalled.take() {
            if !self.submit(key, line) {
                return;
            }
        }
        let Some(c) = self.router.clients.get_mut(key) else {
            return;
        };
        let mut inbuf = std::mem::replace(&mut c.inbuf, LineBuf::new(0));
        'outer: loop {
            let Some(c) = self.router.clients.get(key) else {
                return;
            };
            if !self.client_can_read(c) {
                if let Some(c) = self.router.clients.get_mut(key) {
                    c.read_paused = !c.read_done;
                }
                break;
            }
            while let Some(frame) = inbuf.next_frame() {
                match frame {
                    Frame::Line(line) => {
                        let line = message_bytes(line);
                        if !self.submit(key, line) {
                            break 'outer;
                        }
                    }
                    Frame::TooLong => self.reply_now(key, "message too long"),
                }
                let Some(c) = self.router.clients.get(key) else {
                    return;
                };
                if !self.client_can_read(c) {
                    continue 'outer;
                }
            }
            let c = &mut self.router.clients[key];
            match client_read(c, &mut inbuf) {
                Ok(Fill::Data(_)) => continue,
                Ok(Fill::Eof) => {
                    c.read_done = true;
                    c.peer_closed = true;
                    c.read_paused = false;
                    // An unterminated last line is still a message.
                    if let Some(rest) = inbuf.take_partial() {
                        let rest = message_bytes(&rest);
                        if rest.len() > MAX_LINE {
                            self.reply_now(key, "message too long");
                        } else {
                            // On a full pool it stalls like any other line and is
                            // submitted again when the pool drains.
                            self.submit(key, rest);
                        }
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.read_paused = false;
                    break;
                }
                Err(e) => {
                    log::debug!("client {}: read: {e}", c.label);
                    c.dead = true;
                    c.read_done = true;
                    break;
                }
            }
        }
        if let Some(c) = self.router.clients.get_mut(key) {
            // Idle until the next readiness: keep no read buffer.
            inbuf.release();
            c.inbuf = inbuf;
        }
        self.client_maybe_close(key);
    }

    /// A client that will read no more: the messages orchd has read from it but not
    /// routed (one stalled on a full pool, complete lines still in its read buffer
    /// because it was paused) are answered with `why`, in order, never dropped. An
    /// unterminated partial line is not a message yet and is discarded.
    fn client_refuse_unrouted(&mut self, key: usize, why: &str) {
        let Some(c) = self.router.clients.get_mut(key) else {
            return;
        };
        if c.stalled.take().is_some() {
            self.reply_now(key, why);
        }
        let mut inbuf = std::mem::replace(&mut self.router.clients[key].inbuf, LineBuf::new(0));
        while let Some(frame) = inbuf.next_frame() {
            match frame {
                Frame::Line(_) => self.reply_now(key, why),
                Frame::TooLong => self.reply_now(key, "message too long"),
            }
        }
        inbuf.clear();
        inbuf.release();
        self.router.clients[key].inbuf = inbuf;
    }

    /// Route one message from client `key`. Returns false when it stalled on a full
    /// pool (the client stops reading until that pool drains).
    fn submit(&mut self, key: usize, mut line: Vec<u8>) -> bool {
        let c = &self.router.clients[key];
        let listener = c.listener;
        let rule = self.router.listeners.get(listener).and_then(|l| {
            l.routes.iter().copied().find(|&r| {
                let cfg = &self.router.routes[r].cfg;
                cfg.matcher.as_ref().is_none_or(|m| m.0.is_match(&line))
            })
        });
        let Some(r) = rule else {
            self.reply_now(key, "no route");
            return true;
        };
        let RouteRt { cfg, pool } = &self.router.routes[r];
        let pool = *pool;
        let Some(p) = self.pools.get(pool) else {
            self.reply_now(key, "no route");
            return true;
        };
        if p.slots.is_empty() {
            self.reply_now(key, "pool has no instances");
            return true;
        }
        if p.q.is_full(p.cfg.queue) {
            let id = self.router.clients[key].id;
            self.router.clients[key].stalled = Some(line);
            self.router.clients[key].read_paused = true;
            let q = &mut self.pools[pool].q;
            if !q.waiters.contains(&(key, id)) {
                q.waiters.push((key, id));
            }
            return false;
        }
        let (strategy, ordered, timeout, retries) =
            (cfg.strategy, cfg.ordered, cfg.timeout, cfg.retries);
        let pin = match strategy {
            Strategy::Hash => {
                let k = match &cfg.key {
                    Some(re) => match re.0.captures(&line) {
                        Some(caps) => caps.get(1).or_else(|| caps.get(0)).map(|m| m.as_bytes()),
                        None => None,
                    },
                    None => Some(&line[..]),
                };
                // No key in the message: hash the whole message.
                Pin::Hash(strategy::key_hash(k.unwrap_or(&line)))
            }
            s => Pin::Any(s),
        };
        let c = &mut self.router.clients[key];
        let client_id = c.id;
        let seq = ordered.then(|| c.order.reserve());
        c.outstanding += 1;
        line.push(b'\n');
        if strategy == Strategy::Broadcast {
            self.submit_broadcast(key, client_id, seq, line, pool, timeout, retries);
            return true;
        }
        let m = self.router.msgs.insert(Msg {
            client: key,
            client_id,
            seq,
            payload: line,
            pool,
            pin,
            timeout,
            retries,
            failures: 0,
            gather: None,
            queued_at: self.now,
            sent_at: self.now,
        });
        let q = &mut self.pools[pool].q;
        q.waiting += 1;
        q.bytes += self.router.msgs[m].payload.len();
        self.place(m, false);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn submit_broadcast(
        &mut self,
        client: usize,
        client_id: u64,
        seq: Option<u64>,
        payload: Vec<u8>,
        pool: usize,
        timeout: Option<Duration>,
        retries: u32,
    ) {
        let targets: Vec<u32> = self.pools[pool]
            .slots
            .iter()
            .filter(|&&k| self.instances[k].is_live())
            .map(|&k| self.instances[k].index)
            .collect();
        let g = self.router.gathers.insert(Gather {
            client,
            client_id,
            seq,
            replies: vec![None; targets.len()],
            remaining: targets.len(),
            errors: false,
        });
        if targets.is_empty() {
            self.router.gathers.remove(g);
            let reply = Reply::Error("pool has no running instances");
            self.emit(client, client_id, seq, reply);
            return;
        }
        for (pos, index) in targets.into_iter().enumerate() {
            let m = self.router.msgs.insert(Msg {
                client,
                client_id,
                seq: None,
                payload: payload.clone(),
                pool,
                pin: Pin::Slot(index),
                timeout,
                retries,
                failures: 0,
                gather: Some((g, pos)),
                queued_at: self.now,
                sent_at: self.now,
            });
            let q = &mut self.pools[pool].q;
            q.waiting += 1;
            q.bytes += self.router.msgs[m].payload.len();
            self.place(m, false);
        }
    }

    // ----- placing messages ---------------------------------------------------------

    /// Live instances of a pool as strategy candidates, in index order.
    /// Fill `router.cand_keys`/`router.cands` with the instances of `pool` that may
    /// take new messages, in index order. Reuses the buffers: no allocation per message.
    fn fill_candidates(&mut self, pool: usize) {
        let r = &mut self.router;
        r.cand_keys.clear();
        r.cands.clear();
        let p = &self.pools[pool];
        let max = p.cfg.max_inflight;
        // A draining pool's retiring instances still work off its queue.
        let draining = p.draining();
        let keys: &[usize] = if draining { &p.retiring } else { &p.slots };
        for &k in keys {
            let i = &self.instances[k];
            if i.is_live() || (draining && i.can_work()) {
                let inflight = i.rt.inflight.len() as u32;
                r.cand_keys.push(k);
                r.cands.push(Candidate {
                    index: i.index,
                    inflight,
                    has_room: inflight < max,
                });
            }
        }
    }

    fn placement(&mut self, m: usize) -> Placement {
        let msg = &self.router.msgs[m];
        let pool = msg.pool;
        let pin = msg.pin;
        let max = self.pools[pool].cfg.max_inflight as usize;
        match pin {
            Pin::Any(s) => {
                self.fill_candidates(pool);
                let cursor = &mut self.pools[pool].q.cursor;
                let pick = match s {
                    Strategy::LeastBusy => strategy::least_busy(&self.router.cands, cursor),
                    _ => strategy::round_robin(&self.router.cands, cursor),
                };
                match pick {
                    Some(i) => Placement::Assign(self.router.cand_keys[i]),
                    None => Placement::Wait,
                }
            }
            Pin::Hash(h) => {
                self.fill_candidates(pool);
                let cands = &self.router.cands;
                match strategy::rendezvous(h, cands.iter().map(|c| c.index)) {
                    Some(i) if cands[i].has_room => Placement::Assign(self.router.cand_keys[i]),
                    Some(i) => Placement::Backlog(self.router.cand_keys[i]),
                    None => Placement::Wait,
                }
            }
            Pin::Slot(index) => {
                let slot = self.pools[pool]
                    .slots
                    .iter()
                    .copied()
                    .find(|&k| self.instances[k].index == index);
                match slot {
                    None => Placement::Fail("instance removed"),
                    Some(k) => {
                        let i = &self.instances[k];
                        if i.is_live() && i.rt.inflight.len() < max && i.rt.backlog.is_empty() {
                            Placement::Assign(k)
                        } else {
                            Placement::Backlog(k)
                        }
                    }
                }
            }
        }
    }

    /// Put a message where it belongs now. `front`: it is being redelivered and goes
    /// ahead of the queue.
    fn place(&mut self, m: usize, front: bool) {
        let pool = self.router.msgs[m].pool;
        if !front && !self.pools[pool].q.queue.is_empty() {
            // FIFO: never overtake messages already waiting for any instance.
            if matches!(self.router.msgs[m].pin, Pin::Any(_)) {
                self.pools[pool].q.queue.push_back(m);
                self.pool_changed_arm_expiry(pool, m);
                return;
            }
        }
        match self.placement(m) {
            Placement::Assign(k) => {
                self.pools[pool].q.waiting -= 1;
                self.assign(m, k);
            }
            Placement::Backlog(k) => {
                let b = &mut self.instances[k].rt.backlog;
                if front {
                    b.push_front(m);
                } else {
                    b.push_back(m);
                }
                if !self.instances[k].is_live() {
                    self.pool_changed_arm_expiry(pool, m);
                }
            }
            Placement::Wait => {
                let q = &mut self.pools[pool].q.queue;
                if front {
                    q.push_front(m);
                } else {
                    q.push_back(m);
                }
                self.pool_changed_arm_expiry(pool, m);
            }
            Placement::Fail(why) => {
                self.pools[pool].q.waiting -= 1;
                self.fail_msg(m, why);
            }
        }
    }

    /// Write a message to an instance.
    fn assign(&mut self, m: usize, k: usize) {
        let now = self.now;
        let msg = &mut self.router.msgs[m];
        msg.sent_at = now;
        let inst = &mut self.instances[k];
        let Some(stdin) = inst.stdin.as_mut() else {
            // Not live after all: keep it for this instance.
            inst.rt.backlog.push_front(m);
            self.pools[self.router.msgs[m].pool].q.waiting += 1;
            return;
        };
        if stdin.out.is_empty() {
            self.dirty_stdin.push_back(k);
        }
        stdin.out.push(&msg.payload);
        inst.rt.inflight.push_back(m);
        if inst.rt.inflight.len() == 1 {
            inst.rt.head_since = Some(now);
            self.arm_head_deadline(k);
        }
    }

    /// When the oldest in-flight message of `k` times out: its clock starts when the
    /// worker could reach it (written to it, or the previous message answered, whichever
    /// is later), so a healthy worker with messages queued up is never cut short.
    fn head_deadline(&self, k: usize) -> Option<Instant> {
        let rt = &self.instances[k].rt;
        let m = *rt.inflight.front()?;
        let since = rt.head_since?;
        self.router.msgs[m].timeout.map(|t| deadline(since, t))
    }

    fn arm_head_deadline(&mut self, k: usize) {
        let Some(at) = self.head_deadline(k) else {
            return;
        };
        if self.instances[k].rt.deadline_at.is_none_or(|cur| at < cur) {
            let gen = self.gen();
            let rt = &mut self.instances[k].rt;
            rt.deadline_at = Some(at);
            rt.deadline_gen = gen;
            self.timers.arm(at, TimerKey::Inflight { key: k, gen });
        }
    }

    /// Fill instance `k` from its backlog, then let the pool hand out queued work.
    fn instance_pull(&mut self, k: usize) {
        let Some(inst) = self.instances.get(k) else {
            return;
        };
        let pool = inst.pool;
        let max = self.pools[pool].cfg.max_inflight as usize;
        loop {
            let inst = &mut self.instances[k];
            if !inst.can_work() || inst.rt.inflight.len() >= max {
                break;
            }
            let Some(m) = inst.rt.backlog.pop_front() else {
                break;
            };
            self.pools[pool].q.waiting -= 1;
            self.assign(m, k);
        }
        self.pool_pump(pool);
    }

    /// Hand queued messages to instances while any can take them.
    fn pool_pump(&mut self, pool: usize) {
        while let Some(&m) = self.pools.get(pool).and_then(|p| p.q.queue.front()) {
            match self.placement(m) {
                Placement::Assign(k) => {
                    let q = &mut self.pools[pool].q;
                    q.queue.pop_front();
                    q.waiting -= 1;
                    self.assign(m, k);
                }
                Placement::Backlog(k) => {
                    self.pools[pool].q.queue.pop_front();
                    self.instances[k].rt.backlog.push_back(m);
                }
                Placement::Wait => break,
                Placement::Fail(why) => {
                    let q = &mut self.pools[pool].q;
                    q.queue.pop_front();
                    q.waiting -= 1;
                    self.fail_msg(m, why);
                }
            }
        }
        self.pool_wake_waiters(pool);
    }

    /// Clients stalled on a full queue may go on once there is room.
    fn pool_wake_waiters(&mut self, pool: usize) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if p.q.waiters.is_empty() || p.q.is_full(p.cfg.queue) {
            return;
        }
        for (c, id) in std::mem::take(&mut p.q.waiters) {
            if self.router.clients.get(c).is_some_and(|cl| cl.id == id) {
                self.schedule_pump(c);
            }
        }
    }

    // ----- instances coming and going ----------------------------------------------

    pub(super) fn route_instance_up(&mut self, k: usize) {
        if let Some(pool) = self.instances.get(k).map(|i| i.pool) {
            self.route_pool_changed(pool);
            self.instance_pull(k);
        }
    }

    /// The instance's process died or is being stopped: what it had in flight is
    /// delivered again (answered replies were read first), its backlog goes elsewhere.
    pub(super) fn route_instance_down(&mut self, k: usize) {
        let failure = match self.instances.get(k) {
            Some(i) if i.timed_out() => Failure::TimedOut,
            Some(_) => Failure::Died,
            None => return,
        };
        let inst = &mut self.instances[k];
        let inflight = std::mem::take(&mut inst.rt.inflight);
        // Messages the worker never read (the tail of the FIFO, wholly unread) were
        // not worked on: they cost no attempt, even at the head.
        let mut unread = std::mem::take(&mut inst.rt.unread);
        let mut untouched = 0;
        for &m in inflight.iter().rev() {
            let len = self.router.msgs[m].payload.len();
            if failure != Failure::Died || len > unread {
                break;
            }
            unread -= len;
            untouched += 1;
        }
        let charged = inflight.len() > untouched;
        inst.rt.deadline_at = None;
        let pool = inst.pool;
        if let Some(p) = inst.stdin.as_mut() {
            p.out.discard();
        }
        // Redelivered in their original order, ahead of everything waiting.
        // Only the oldest is charged an attempt: it is the one the worker was working
        // on (answers come in order); the others were merely queued in its pipe.
        let mut again = Vec::new();
        for (i, m) in inflight.into_iter().enumerate() {
            let msg = &mut self.router.msgs[m];
            if i == 0 && charged {
                msg.failures += 1;
            }
            if msg.failures > msg.retries {
                let why = match failure {
                    Failure::TimedOut => "retries exhausted (timed out)",
                    Failure::Died => "retries exhausted (worker died)",
                };
                self.fail_msg(m, why);
            } else {
                again.push(m);
            }
        }
        if !again.is_empty() {
            log::info!(
                "{}: delivering {} unanswered message(s) again",
                self.instances[k].label,
                again.len()
            );
        }
        self.pools[pool].q.waiting += again.len();
        self.rehome_backlog(k);
        for m in again.into_iter().rev() {
            self.place(m, true);
        }
        self.route_pool_changed(pool);
        self.pool_pump(pool);
    }

    /// Backlog messages that are not pinned to this very slot go elsewhere; slot-pinned
    /// ones stay while the slot may come back.
    fn rehome_backlog(&mut self, k: usize) {
        let inst = &mut self.instances[k];
        let coming_back = !inst.retiring()
            && !inst.held
            && matches!(
                inst.life.state,
                crate::supervisor::lifecycle::State::Backoff { .. }
                    | crate::supervisor::lifecycle::State::Running { .. }
            );
        let backlog = std::mem::take(&mut inst.rt.backlog);
        let mut keep = VecDeque::new();
        let mut moved = Vec::new();
        for m in backlog {
            match self.router.msgs[m].pin {
                Pin::Slot(_) if coming_back => keep.push_back(m),
                Pin::Slot(_) => {
                    self.pools[self.router.msgs[m].pool].q.waiting -= 1;
                    self.fail_msg(m, "instance stopped");
                }
                _ => moved.push(m),
            }
        }
        self.instances[k].rt.backlog = keep;
        for m in moved.into_iter().rev() {
            self.place(m, true);
        }
    }

    /// The instance stopped for good (or gave up): nothing may wait for it.
    pub(super) fn route_instance_gone(&mut self, k: usize) {
        if self.instances.get(k).is_none() {
            return;
        }
        if !self.instances[k].rt.inflight.is_empty() {
            self.route_instance_down(k);
        }
        self.rehome_backlog(k);
        let pool = self.instances[k].pool;
        self.route_pool_lost(pool);
        // Room may have appeared (backlog moved or failed): stalled clients go on.
        self.pool_pump(pool);
    }

    /// An instance of `pool` is not live (any more): like `route_pool_changed`, but
    /// a pool already known to have none live is not scanned again (stopping or
    /// failing thousands of instances would be quadratic).
    pub(super) fn route_pool_lost(&mut self, pool: usize) {
        if self.pools.get(pool).is_some_and(|p| !p.q.none_live()) {
            self.route_pool_changed(pool);
        }
    }

    /// Recompute whether the pool has live instances, for queue expiry.
    pub(super) fn route_pool_changed(&mut self, pool: usize) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let live = p.slots.iter().any(|&k| self.instances[k].is_live());
        let now = self.now;
        let q = &mut self.pools[pool].q;
        if live {
            q.empty_since = None;
            q.expire_at = None;
        } else if q.empty_since.is_none() {
            q.empty_since = Some(now);
            self.pool_arm_expiry(pool);
        }
    }

    fn pool_changed_arm_expiry(&mut self, pool: usize, m: usize) {
        let q = &self.pools[pool].q;
        let Some(since) = q.empty_since else {
            return;
        };
        let msg = &self.router.msgs[m];
        let Some(t) = msg.timeout else {
            return;
        };
        let at = deadline(since.max(msg.queued_at), t);
        if q.expire_at.is_none_or(|cur| at < cur) {
            let gen = self.gen();
            let q = &mut self.pools[pool].q;
            q.expire_at = Some(at);
            q.expire_gen = gen;
            self.timers.arm(at, TimerKey::PoolQueue { pool, gen });
        }
    }

    /// Messages of this pool that wait for an instance, wherever they wait.
    fn pool_waiting_msgs(&self, pool: usize) -> Vec<usize> {
        let p = &self.pools[pool];
        let mut v: Vec<usize> = p.q.queue.iter().copied().collect();
        for &k in p.slots.iter().chain(&p.retiring) {
            let i = &self.instances[k];
            if !i.is_live() {
                v.extend(i.rt.backlog.iter().copied());
            }
        }
        v
    }

    fn pool_arm_expiry(&mut self, pool: usize) {
        let Some(since) = self.pools[pool].q.empty_since else {
            return;
        };
        let next = self
            .pool_waiting_msgs(pool)
            .into_iter()
            .filter_map(|m| {
                let msg = &self.router.msgs[m];
                msg.timeout.map(|t| deadline(since.max(msg.queued_at), t))
            })
            .min();
        let gen = self.gen();
        let q = &mut self.pools[pool].q;
        q.expire_at = next;
        q.expire_gen = gen;
        if let Some(at) = next {
            self.timers.arm(at, TimerKey::PoolQueue { pool, gen });
        }
    }

    pub(super) fn on_pool_queue_timer(&mut self, pool: usize, gen: u64) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        if p.q.expire_gen != gen {
            return;
        }
        let Some(since) = p.q.empty_since else {
            return;
        };
        let now = self.now;
        let expired: Vec<usize> = self
            .pool_waiting_msgs(pool)
            .into_iter()
            .filter(|&m| {
                let msg = &self.router.msgs[m];
                msg.timeout
                    .is_some_and(|t| deadline(since.max(msg.queued_at), t) <= now)
            })
            .collect();
        if !expired.is_empty() {
            log::warn!(
                "pool {}: {} message(s) found no running instance in time",
                self.pools[pool].cfg.name,
                expired.len()
            );
        }
        for m in expired {
            self.unlink_waiting(pool, m);
            self.fail_msg(m, "timed out waiting for an instance");
        }
        self.pool_arm_expiry(pool);
        self.pool_wake_waiters(pool);
    }

    /// Remove a waiting message from the queue or backlog that holds it.
    fn unlink_waiting(&mut self, pool: usize, m: usize) {
        let p = &mut self.pools[pool];
        p.q.waiting -= 1;
        if let Some(i) = p.q.queue.iter().position(|&x| x == m) {
            p.q.queue.remove(i);
            return;
        }
        for &k in p.slots.iter().chain(&p.retiring) {
            let b = &mut self.instances[k].rt.backlog;
            if let Some(i) = b.iter().position(|&x| x == m) {
                b.remove(i);
                return;
            }
        }
    }

    pub(super) fn on_inflight_timer(&mut self, k: usize, gen: u64) {
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        if inst.rt.deadline_gen != gen {
            return;
        }
        inst.rt.deadline_at = None;
        match self.head_deadline(k) {
            Some(at) if at <= self.now => {
                let inst = &mut self.instances[k];
                let waited = self
                    .now
                    .duration_since(inst.rt.head_since.unwrap_or(self.now));
                log::warn!(
                    "{} did not answer within {}; restarting it",
                    inst.label,
                    super::supervise::fmt_duration(waited)
                );
                self.restart_instance(k);
            }
            Some(_) => self.arm_head_deadline(k),
            None => {}
        }
    }

    // ----- replies ------------------------------------------------------------------

    /// One stdout line of a routed instance: the reply to its oldest message.
    pub(super) fn on_worker_reply(&mut self, k: usize, reply: Result<&[u8], &str>) {
        let inst = &mut self.instances[k];
        let Some(m) = inst.rt.inflight.pop_front() else {
            match reply {
                Ok(line) => log::warn!(
                    "{}: protocol error: reply with no message in flight: {}",
                    inst.label,
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                ),
                Err(why) => log::warn!(
                    "{}: protocol error: {why} with no message in flight",
                    inst.label
                ),
            }
            return;
        };
        inst.rt.answered += 1;
        // The next message's clock starts now (the worker turns to it).
        inst.rt.head_since = Some(self.now);
        if !inst.rt.inflight.is_empty() {
            self.arm_head_deadline(k);
        }
        match reply {
            Ok(line) => self.answer(m, Reply::Line(line)),
            Err(why) => self.answer(m, Reply::Error(why)),
        }
        self.instance_pull(k);
        self.instance_maybe_drained(k);
    }

    fn fail_msg(&mut self, m: usize, why: &str) {
        self.answer(m, Reply::Error(why));
    }

    /// Complete a message with a reply line or an error, and forget it.
    fn answer(&mut self, m: usize, reply: Reply<'_>) {
        let msg = self.router.msgs.remove(m);
        if let Some(p) = self.pools.get_mut(msg.pool) {
            p.q.bytes -= msg.payload.len();
        }
        let Some((g, pos)) = msg.gather else {
            return self.emit(msg.client, msg.client_id, msg.seq, reply);
        };
        let gather = &mut self.router.gathers[g];
        if gather.replies[pos].is_none() {
            let mut line = Vec::new();
            reply.write_to(&mut line, &self.config.settings.error_prefix);
            gather.errors |= reply.is_error();
            gather.replies[pos] = Some(line);
            gather.remaining -= 1;
        }
        if gather.remaining == 0 {
            let gather = self.router.gathers.remove(g);
            let all = gather.replies.into_iter().flatten().flatten().collect();
            let reply = Reply::Gathered(all, gather.errors);
            self.emit(gather.client, gather.client_id, gather.seq, reply);
        }
    }

    /// An immediate error reply to a line just read (no route, too long...).
    fn reply_now(&mut self, key: usize, why: &str) {
        let c = &mut self.router.clients[key];
        let seq = Some(c.order.reserve());
        c.outstanding += 1;
        let id = c.id;
        self.emit(key, id, seq, Reply::Error(why));
    }

    /// Queue a reply for a client, in order when `seq` is set. The common case (the
    /// reply is the next one due) is copied straight into the output buffer.
    fn emit(&mut self, c: usize, id: u64, seq: Option<u64>, reply: Reply<'_>) {
        let batch = self.router.batch == Some(c);
        let Some(client) = self.router.clients.get_mut(c).filter(|cl| cl.id == id) else {
            return; // the client left; its replies go nowhere
        };
        if batch && reply.is_error() {
            self.router.batch_errors += 1;
        }
        client.outstanding = client.outstanding.saturating_sub(1);
        let was_empty = client.out.len() == client.out_pos;
        let prefix = &self.config.settings.error_prefix;
        match seq {
            Some(seq) if !client.order.take_next(seq) => {
                let mut v = Vec::new();
                reply.write_to(&mut v, prefix);
                let n = v.len();
                if client.order.fill(seq, v) {
                    client.order_bytes += n;
                }
            }
            _ => {
                reply.write_to(&mut client.out, prefix);
                while let Some(b) = client.order.pop_ready() {
                    client.order_bytes -= b.len();
                    client.out.extend_from_slice(&b);
                }
            }
        }
        if was_empty && client.out.len() > client.out_pos {
            self.dirty_clients.push_back(c);
        }
        if client.read_paused && client.stalled.is_none() {
            self.schedule_pump(c);
        }
    }

    /// Write a client's pending replies; WRITABLE interest only while some are left.
    pub(super) fn flush_client(&mut self, key: usize) {
        let Some(c) = self.router.clients.get_mut(key) else {
            return;
        };
        let mut failed = false;
        while c.out_pos < c.out.len() {
            match client_write(&mut c.stream, &c.out[c.out_pos..]) {
                Ok(0) => break,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if self.router.batch == Some(key) {
                        log::error!("batch: cannot write replies to stdout: {e}");
                        self.router.batch_output_failed = true;
                    } else {
                        log::debug!("client {}: write: {e}", c.label);
                    }
                    failed = true;
                    break;
                }
            }
        }
        if c.out_pos == c.out.len() {
            // Everything written: an idle client keeps no output buffer.
            c.out = Vec::new();
            c.out_pos = 0;
            if c.outstanding == 0 {
                c.order.release();
            }
        } else if c.out_pos > (1 << 16) && c.out_pos * 2 > c.out.len() {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        if failed {
            c.dead = true;
            c.out.clear();
            c.out_pos = 0;
        }
        let want = c.out_pos < c.out.len();
        if want != c.want_write {
            c.want_write = want;
            if let Err(e) = self.client_write_interest(key, want) {
                log::warn!(
                    "client {}: cannot change interest: {e}",
                    self.router.clients[key].label
                );
            }
        }
        if let Some(c) = self.router.clients.get(key) {
            if c.read_paused && c.stalled.is_none() && self.client_can_read(c) {
                self.schedule_pump(key);
            }
        }
        self.client_maybe_close(key);
    }

    fn client_write_interest(&mut self, key: usize, want: bool) -> io::Result<()> {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let c = &mut self.router.clients[key];
        match (&mut c.stream, c.token) {
            (Stream::Tcp(s), Some(t)) => self.poll.registry().reregister(s, t, interest),
            (Stream::Unix(s), Some(t)) => self.poll.registry().reregister(s, t, interest),
            (Stream::Stdio { output, .. }, _) if *output == FdKind::Stream => {
                // stdout is its own fd: registered only while output is pending.
                if want && c.out_token.is_none() {
                    let t = register(
                        &self.poll,
                        &mut self.io,
                        &mut SourceFd(&1),
                        IoTarget::Client(key),
                    )?;
                    self.poll
                        .registry()
                        .reregister(&mut SourceFd(&1), t, Interest::WRITABLE)?;
                    self.router.clients[key].out_token = Some(t);
                } else if !want {
                    if let Some(t) = c.out_token.take() {
                        self.deregister_io(&mut SourceFd(&1), t);
                    }
                }
                Ok(())
            }
            // Terminals and files: written with blocking writes, never polled.
            _ => Ok(()),
        }
    }

    /// Close a client that is finished: peer gone, or input done and every reply out.
    /// A peer that has not closed its side gets a half-close first (see [`LINGER`]).
    fn client_maybe_close(&mut self, key: usize) {
        let Some(c) = self.router.clients.get(key) else {
            return;
        };
        let done =
            c.read_done && c.outstanding == 0 && c.out_pos == c.out.len() && c.stalled.is_none();
        if c.lingering || !(c.dead || done) {
            return;
        }
        if !c.dead && !c.peer_closed && self.client_linger(key) {
            return;
        }
        self.client_remove(key);
    }

    /// orchd stopped reading from a client that may still be sending (its listener was
    /// removed, or shutdown): closing now, with input unread, would send a reset that
    /// can destroy replies the peer has not read yet. Half-close instead, and discard
    /// input until the peer closes, at most [`LINGER`]. False if that is not possible.
    fn client_linger(&mut self, key: usize) -> bool {
        let c = &mut self.router.clients[key];
        let shut = match &c.stream {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Stdio { .. } => return false,
        };
        if let Err(e) = shut {
            log::debug!("client {}: shutdown: {e}", c.label);
            return false;
        }
        c.lingering = true;
        let id = c.id;
        log::debug!("client {}: half-closed, waiting for it to close", c.label);
        self.timers
            .arm(self.now + LINGER, TimerKey::Linger { client: key, id });
        self.client_discard_input(key);
        true
    }

    /// A half-closed client: read and drop its input; close once it has closed.
    fn client_discard_input(&mut self, key: usize) {
        let Some(c) = self.router.clients.get_mut(key) else {
            return;
        };
        let mut scratch = [0u8; 16 * 1024];
        let closed = loop {
            let r = match &mut c.stream {
                Stream::Tcp(s) => s.read(&mut scratch),
                Stream::Unix(s) => s.read(&mut scratch),
                Stream::Stdio { .. } => Ok(0),
            };
            match r {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if closed {
            self.client_remove(key);
        }
    }

    pub(super) fn on_linger_timer(&mut self, key: usize, id: u64) {
        if self
            .router
            .clients
            .get(key)
            .is_some_and(|c| c.id == id && c.lingering)
        {
            log::debug!(
                "client {}: did not close within {}s; closing",
                self.router.clients[key].label,
                LINGER.as_secs()
            );
            self.client_remove(key);
        }
    }

    fn client_remove(&mut self, key: usize) {
        let mut c = self.router.clients.remove(key);
        if let Some(t) = c.out_token.take() {
            self.deregister_io(&mut SourceFd(&1), t);
        }
        if let Some(token) = c.token {
            match &mut c.stream {
                Stream::Tcp(s) => self.deregister_io(s, token),
                Stream::Unix(s) => self.deregister_io(s, token),
                Stream::Stdio { .. } => self.deregister_io(&mut SourceFd(&0), token),
            }
        }
        log::debug!("client {} closed", c.label);
        if self.router.clients.is_empty() && self.router.clients.capacity() >= 1024 {
            // The last client of a burst left: give its memory back (once per burst,
            // not periodically; a trim takes well under a millisecond here).
            self.router.clients.shrink_to_fit();
            self.io.shrink_to_fit();
            sys::release_free_memory();
        }
        if self.router.batch == Some(key) {
            self.router.batch = None;
            if c.dead && c.outstanding > 0 {
                log::error!(
                    "batch output closed with {} replies unwritten",
                    c.outstanding
                );
                self.router.batch_errors += 1;
            }
            let errors = self.router.batch_errors;
            if self.router.batch_output_failed {
                log::error!("batch failed: replies could not be written to stdout");
                self.exit_code = 1;
            } else if errors > 0 {
                log::warn!("batch done: {errors} message(s) got an error reply");
                self.exit_code = 1;
            } else {
                log::info!("batch done: every message answered");
            }
            // Already shutting down (a signal came first): the loop finishes the drain;
            // asking again would count as a second signal and kill at once.
            if self.phase == super::Phase::Running {
                self.shutdown_requested();
            }
        }
    }

    /// Let a client read again at the next flush (once, however often asked).
    fn schedule_pump(&mut self, c: usize) {
        if let Some(cl) = self.router.clients.get_mut(c) {
            if !cl.pump_queued {
                cl.pump_queued = true;
                self.router.to_pump.push(c);
            }
        }
    }

    /// Resume clients that may read again, and accepting if clients left. Called from
    /// the loop before flushing.
    pub(super) fn router_pump(&mut self) -> bool {
        self.cap_resume_if_room();
        if self.router.to_pump.is_empty() {
            return false;
        }
        let list = std::mem::take(&mut self.router.to_pump);
        for c in list {
            if let Some(cl) = self.router.clients.get_mut(c) {
                cl.pump_queued = false;
            }
            self.client_pump(c);
        }
        true
    }

    // ----- shutdown -----------------------------------------------------------------

    /// Shutdown: accept and read nothing new.
    pub(super) fn router_stop_reading(&mut self) {
        self.router.stopped_reading = true;
        // Clients first, so that what they sent and orchd read gets `shutting down`
        // rather than the `no route` of a closed listener.
        let clients: Vec<usize> = self.router.clients.iter().map(|(k, _)| k).collect();
        for &c in &clients {
            if let Some(cl) = self.router.clients.get_mut(c) {
                cl.read_done = true;
                self.client_refuse_unrouted(c, "shutting down");
            }
        }
        let keys: Vec<usize> = self
            .router
            .listeners
            .iter()
            .filter(|(_, l)| !matches!(l.kind, ListenerKind::Stdin))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.listener_close(k);
        }
        for c in clients {
            self.client_maybe_close(c);
        }
    }

    /// Nothing in flight or waiting.
    pub(super) fn router_idle(&self) -> bool {
        self.router.msgs.is_empty()
    }

    /// Answer every message still waiting or in flight with an error.
    pub(super) fn router_fail_all(&mut self, why: &str) {
        let all: Vec<usize> = self.router.msgs.iter().map(|(k, _)| k).collect();
        for (_, p) in self.pools.iter_mut() {
            p.q.queue.clear();
            p.q.waiting = 0;
        }
        for (_, i) in self.instances.iter_mut() {
            i.rt.inflight.clear();
            i.rt.backlog.clear();
            i.rt.deadline_at = None;
        }
        if !all.is_empty() {
            log::warn!(
                "answering {} unfinished message(s) with an error",
                all.len()
            );
        }
        for m in all {
            self.fail_msg(m, why);
        }
        self.flush_dirty();
    }

    /// Every client has received what was queued for it (or is gone).
    pub(super) fn router_flushed(&self) -> bool {
        self.router
            .clients
            .iter()
            .all(|(_, c)| c.dead || c.out_pos == c.out.len())
    }

    /// Last flush of the batch output (blocking), restore stdin/stdout flags, remove
    /// unix socket files.
    pub(super) fn router_close(&mut self) {
        let keys: Vec<usize> = self.router.clients.iter().map(|(k, _)| k).collect();
        for k in keys {
            let c = &mut self.router.clients[k];
            if let Stream::Stdio { input, output } = c.stream {
                if output == FdKind::Stream {
                    let _ = sys::set_fd_nonblocking(1, false);
                }
                let rest = &c.out[c.out_pos..];
                if !rest.is_empty() {
                    if let Err(e) = write_all_fd(1, rest) {
                        log::error!("batch: cannot write the last replies to stdout: {e}");
                        self.exit_code = 1;
                    }
                }
                if input == FdKind::Stream {
                    let _ = sys::set_fd_nonblocking(0, false);
                }
            }
        }
        let listeners: Vec<usize> = self.router.listeners.iter().map(|(k, _)| k).collect();
        for k in listeners {
            self.listener_close(k);
        }
    }

    /// After a reply: a retiring instance with nothing left is stopped.
    pub(super) fn instance_maybe_drained(&mut self, k: usize) {
        let Some(i) = self.instances.get(k) else {
            return;
        };
        let pool = &self.pools[i.pool];
        let queue_done = !pool.draining() || pool.q.queue.is_empty();
        let running = matches!(
            i.life.state,
            crate::supervisor::lifecycle::State::Running { .. }
        );
        if (i.retiring() || i.held)
            && running
            && i.rt.inflight.is_empty()
            && i.rt.backlog.is_empty()
            && queue_done
        {
            self.stop_instance(k);
        }
    }

    /// The worker died: remember how many bytes written for it it never read.
    pub(super) fn note_unread_input(&mut self, k: usize) {
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        inst.rt.unread = match inst.stdin.as_ref() {
            Some(p) => {
                let in_pipe =
                    sys::readable_bytes(std::os::fd::AsRawFd::as_raw_fd(&p.tx)).unwrap_or(0);
                p.out.pending() + in_pipe
            }
            None => 0,
        };
    }

    /// Counters for status: (in flight, answered) of an instance.
    pub(super) fn instance_counts(&self, k: usize) -> (usize, u64) {
        self.instances
            .get(k)
            .map(|i| (i.rt.inflight.len(), i.rt.answered))
            .unwrap_or((0, 0))
    }

    /// An instance started retiring: it counts as gone for new work.
    pub(super) fn route_retiring(&mut self, k: usize) {
        let pool = self.instances[k].pool;
        self.route_pool_changed(pool);
        self.instance_pull(k);
    }

    /// Pool settings changed in place: more room may let waiting work go.
    pub(super) fn pool_refresh(&mut self, pool: usize) {
        let keys = self.pools[pool].slots.clone();
        for k in keys {
            self.instance_pull(k);
        }
        self.pool_pump(pool);
    }

    /// Answer every message waiting in a pool's queue with an error (the pool can no
    /// longer serve them), and let clients stalled on it go on under the current rules.
    pub(super) fn route_fail_queue(&mut self, pool: usize, why: &str) {
        let waiting: Vec<usize> = self.pools[pool].q.queue.drain(..).collect();
        if !waiting.is_empty() {
            log::warn!(
                "pool {}: {} waiting message(s) answered with {why:?}",
                self.pools[pool].cfg.name,
                waiting.len()
            );
        }
        for m in waiting {
            self.pools[pool].q.waiting -= 1;
            self.fail_msg(m, why);
        }
        let waiters = std::mem::take(&mut self.pools[pool].q.waiters);
        for (c, id) in waiters {
            if self.router.clients.get(c).is_some_and(|cl| cl.id == id) {
                self.schedule_pump(c);
            }
        }
    }

    /// Messages waiting in a pool (queue and backlogs), for status.
    pub(super) fn pool_queued(&self, pool: usize) -> usize {
        self.pools.get(pool).map(|p| p.q.waiting).unwrap_or(0)
    }
}

/// A duration to the millisecond, for logs.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// A message as it will be written to a worker: without a trailing CR, with room for
/// the `\n` that `submit` appends (one allocation per message, no regrowth).
fn message_bytes(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut v = Vec::with_capacity(line.len() + 1);
    v.extend_from_slice(line);
    v
}

fn register<S: mio::event::Source + ?Sized>(
    poll: &mio::Poll,
    io: &mut Slab<IoTarget>,
    source: &mut S,
    target: IoTarget,
) -> io::Result<Token> {
    let entry = io.vacant_entry();
    let token = Token(entry.key() + super::FIRST_IO);
    poll.registry()
        .register(source, token, Interest::READABLE)?;
    entry.insert(target);
    Ok(token)
}

fn client_read(c: &mut Client, inbuf: &mut LineBuf) -> io::Result<Fill> {
    match &mut c.stream {
        Stream::Tcp(s) => inbuf.fill(s),
        Stream::Unix(s) => inbuf.fill(s),
        Stream::Stdio { input, .. } => {
            if *input == FdKind::Tty {
                // A terminal is never made non-blocking (it shares its file description
                // with stderr): read only when bytes are known to be there.
                if !c.tty_ready {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let r = inbuf.fill(&mut StdinReader);
                c.tty_ready = matches!(sys::readable_bytes(0), Ok(n) if n > 0);
                return r;
            }
            inbuf.fill(&mut StdinReader)
        }
    }
}

struct StdinReader;

impl Read for StdinReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read_fd(0, buf)
    }
}

fn client_write(stream: &mut Stream, buf: &[u8]) -> io::Result<usize> {
    match stream {
        Stream::Tcp(s) => s.write(buf),
        Stream::Unix(s) => s.write(buf),
        Stream::Stdio { .. } => sys::write_fd(1, buf),
    }
}

fn write_all_fd(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match sys::write_fd(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bind a unix listener: a stale socket file is replaced, a live one (something
/// accepts on it) is an error; the file gets `mode`.
pub(super) fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Created with exactly `mode`, never wider and never chmodded by path: see
    // sys::bind_unix_mode.
    let l = sys::bind_unix_mode(path, mode).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on unix:{}: {e}", path.display()),
        )
    })?;
    if let Err(e) = l.set_nonblocking(true) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from_std(l))
}
