//! Listeners and client connections: the I/O side of messages. Nothing here decides
//! anything about a message: connections read bytes into a line buffer and write the
//! bytes they are given (through [`OutBuf`], the write policy every connection shares).
//! The shell (`route.rs`) feeds the lines to the [`crate::router::ledger::Ledger`] and
//! hands its replies back here.
//!
//! Invariants kept with the shell:
//! - an idle client holds no read buffer and next to no output buffer; at most
//!   `max_clients` connections exist: past it no listener is watched, and waiting
//!   connections stay in the kernel's backlog until a client leaves;
//! - orchd never closes a connection with unread input (that sends a reset, and the
//!   peer loses replies it has not read yet): when it stops reading from a client that
//!   has not closed, it half-closes once the replies are out and discards input until
//!   the peer closes, or [`LINGER`] is over.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use slab::Slab;

use super::outbuf::{Flushed, OutBuf};
use super::tokens::{deregister, register};
use super::IoTarget;
use crate::config::Source;
use crate::framing::{Fill, LineBuf};
use crate::sys::{self, FdKind};

/// How long to wait before accepting again after EMFILE/ENFILE.
pub(super) const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a connection orchd has half-closed may take to close its side.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// Every listener and client connection.
#[derive(Default)]
pub(super) struct Net {
    pub listeners: Slab<Listener>,
    pub by_source: HashMap<Source, usize>,
    pub clients: Slab<Conn>,
    pub next_client_id: u64,
    /// Clients that may read again (a reply freed room, a pool drained).
    pub to_pump: Vec<usize>,
    /// The batch client (`from = "stdin"`), while it exists.
    pub batch: Option<usize>,
    /// Writing batch replies to stdout failed: replies were lost.
    pub batch_output_failed: bool,
    /// Shutdown began: read nothing new.
    pub stopped_reading: bool,
    /// `max_clients` was reached: since when (logged once per episode, which ends
    /// when every waiting connection has been accepted).
    pub cap_since: Option<Instant>,
    /// Listeners are not watched because of `max_clients`.
    pub cap_paused: bool,
}

/// What the shell lends connections to be watched: its `Poll` and token table.
pub(super) struct Watch<'a> {
    pub poll: &'a Poll,
    pub io: &'a mut Slab<IoTarget>,
}

impl Watch<'_> {
    fn register(
        &mut self,
        source: &mut (impl mio::event::Source + ?Sized),
        target: IoTarget,
        interest: Interest,
    ) -> io::Result<Token> {
        register(self.poll, self.io, source, target, interest)
    }

    fn deregister(&mut self, source: &mut (impl mio::event::Source + ?Sized), token: Token) {
        deregister(self.poll, self.io, source, token)
    }
}

impl Net {
    /// Connections over all routes (the batch client is not one).
    pub fn connections(&self) -> usize {
        self.clients.len() - usize::from(self.batch.is_some())
    }

    /// A new connection from `listener`, watched for input. Returns its key.
    pub fn add(
        &mut self,
        w: &mut Watch,
        listener: usize,
        stream: Stream,
        peer: String,
        max_line: usize,
    ) -> io::Result<usize> {
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        self.next_client_id += 1;
        let mut conn = Conn::new(self.next_client_id, listener, stream, max_line, peer);
        if let Some(s) = conn.socket() {
            conn.token = Some(w.register(s, IoTarget::Client(key), Interest::READABLE)?);
        }
        log::debug!("client {} connected", conn.label);
        entry.insert(conn);
        Ok(key)
    }

    /// Stop watching a connection and forget it.
    pub fn close(&mut self, w: &mut Watch, key: usize) -> Conn {
        let mut c = self.clients.remove(key);
        if let Some(t) = c.out_token.take() {
            w.deregister(&mut SourceFd(&1), t);
        }
        if let Some(token) = c.token {
            match c.socket() {
                Some(s) => w.deregister(s, token),
                None => w.deregister(&mut SourceFd(&0), token),
            }
        }
        log::debug!("client {} closed", c.label);
        if self.clients.is_empty() && self.clients.capacity() >= 1024 {
            // The last client of a burst left: give its memory back (once per burst,
            // not periodically; a trim takes well under a millisecond here).
            self.clients.shrink_to_fit();
            w.io.shrink_to_fit();
            sys::release_free_memory();
        }
        c
    }

    /// Watch a listener for new connections, or stop. A listener not watched keeps
    /// its socket: new connections wait in the kernel's backlog and cost no wake-up.
    pub fn listener_watch(&mut self, w: &mut Watch, key: usize, on: bool) {
        let Some(l) = self.listeners.get_mut(key) else {
            return;
        };
        let token = l.token;
        let label = l.label.clone();
        let Some(s) = l.source() else {
            return;
        };
        match (on, token) {
            (true, None) => match w.register(s, IoTarget::Listener(key), Interest::READABLE) {
                Ok(t) => l.token = Some(t),
                Err(e) => log::error!("cannot watch {label} again: {e}"),
            },
            (false, Some(token)) => {
                w.deregister(s, token);
                l.token = None;
            }
            _ => {}
        }
    }

    /// `max_clients` reached: stop watching every listener (no accept-and-close, no
    /// wake-ups) until a client leaves.
    pub fn cap_pause(&mut self, w: &mut Watch, now: Instant, max_clients: u32) {
        if self.cap_since.is_none() {
            self.cap_since = Some(now);
            log::warn!(
                "max_clients = {max_clients} reached: not accepting new connections until a client leaves"
            );
        }
        if !self.cap_paused {
            self.cap_paused = true;
            let keys: Vec<usize> = self.listeners.iter().map(|(k, _)| k).collect();
            for k in keys {
                self.listener_watch(w, k, false);
            }
        }
    }

    /// The `max_clients` episode is over (every waiting connection was accepted).
    pub fn cap_over(&mut self, now: Instant, max_clients: u32) {
        if let Some(since) = self.cap_since.take() {
            log::info!(
                "accepting connections again: {} connected, max_clients = {max_clients}, full for {}",
                self.connections(),
                humantime::format_duration(round_ms(now.saturating_duration_since(since)))
            );
        }
    }

    /// EMFILE/ENFILE (or another error that retrying right away would repeat): the
    /// pending connection stays in the backlog. Stop watching this listener until the
    /// retry timer `gen` (one per episode, after [`ACCEPT_RETRY`]); warn once per
    /// episode. False if the listener is gone.
    pub fn accept_failed(
        &mut self,
        w: &mut Watch,
        key: usize,
        e: &io::Error,
        now: Instant,
        gen: u64,
    ) -> bool {
        let Some(l) = self.listeners.get_mut(key) else {
            return false;
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
                l.starved = Some((now, 1));
            }
        }
        l.retry = Some(gen);
        self.listener_watch(w, key, false);
        true
    }

    /// Every waiting connection has been accepted: end the listener's out-of-fds
    /// episode, if any. (Not at the first success: at the limit, fds come and go as
    /// clients do, and that is one episode, not one per client.)
    pub fn accept_recovered(&mut self, key: usize, now: Instant) {
        let Some(l) = self.listeners.get_mut(key) else {
            return;
        };
        if let Some((since, n)) = l.starved.take() {
            log::info!(
                "accepting on {} again after {} failed retr{} over {}",
                l.label,
                n,
                if n == 1 { "y" } else { "ies" },
                humantime::format_duration(round_ms(now.saturating_duration_since(since)))
            );
        }
    }

    /// Poll the client for WRITABLE while it has output pending, or stop.
    pub fn write_interest(&mut self, w: &mut Watch, key: usize, want: bool) -> io::Result<()> {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let c = &mut self.clients[key];
        let token = c.token;
        if let (Some(s), Some(t)) = (c.socket(), token) {
            return w.poll.registry().reregister(s, t, interest);
        }
        match c.stream {
            Stream::Stdio {
                output: FdKind::Stream,
                ..
            } => {
                // stdout is its own fd: registered only while output is pending.
                if want && c.out_token.is_none() {
                    let t =
                        w.register(&mut SourceFd(&1), IoTarget::Client(key), Interest::WRITABLE)?;
                    c.out_token = Some(t);
                } else if !want {
                    if let Some(t) = c.out_token.take() {
                        w.deregister(&mut SourceFd(&1), t);
                    }
                }
                Ok(())
            }
            // Terminals and files: written with blocking writes, never polled.
            _ => Ok(()),
        }
    }

    /// orchd stopped reading from a client that may still be sending: closing now,
    /// with input unread, would send a reset that can destroy replies the peer has not
    /// read yet. Half-close instead; the caller discards input until the peer closes,
    /// at most [`LINGER`]. False if that is not possible (batch stdio, or an error).
    pub fn half_close(&mut self, key: usize) -> bool {
        let c = &mut self.clients[key];
        if matches!(c.stream, Stream::Stdio { .. }) {
            return false;
        }
        if let Err(e) = c.shutdown_write() {
            log::debug!("client {}: shutdown: {e}", c.label);
            return false;
        }
        c.lingering = true;
        log::debug!("client {}: half-closed, waiting for it to close", c.label);
        true
    }
}

/// A duration to the millisecond, for logs.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

pub(super) struct Listener {
    pub source: Source,
    /// For logs: `source` with the port actually bound (`tcp://…:0`).
    pub label: String,
    pub kind: ListenerKind,
    /// Set while the listener is watched for new connections.
    pub token: Option<Token>,
    /// Accepting failed (out of fds): the generation of the one pending retry timer.
    pub retry: Option<u64>,
    /// The current out-of-fds episode: when it began and how many retries failed.
    pub starved: Option<(Instant, u32)>,
}

pub(super) enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Stdin,
}

impl Listener {
    /// Bind `source` (not yet watched).
    pub fn open(source: &Source, mode: u32) -> io::Result<Listener> {
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
            Source::Unix(path) => ListenerKind::Unix(bind_unix(path, mode)?, path.clone()),
            Source::Stdin => ListenerKind::Stdin,
        };
        log::info!("listening on {label}");
        Ok(Listener {
            source: source.clone(),
            label,
            kind,
            token: None,
            retry: None,
            starved: None,
        })
    }

    /// The socket to watch (None: batch stdin, which is not a socket).
    pub fn source(&mut self) -> Option<&mut dyn mio::event::Source> {
        match &mut self.kind {
            ListenerKind::Tcp(s) => Some(s),
            ListenerKind::Unix(s, _) => Some(s),
            ListenerKind::Stdin => None,
        }
    }

    /// Take one waiting connection. None: not a socket.
    pub fn accept(&self) -> Option<io::Result<(Stream, String)>> {
        Some(match &self.kind {
            ListenerKind::Tcp(s) => s.accept().map(|(c, peer)| {
                let _ = c.set_nodelay(true);
                (Stream::Tcp(c), peer.to_string())
            }),
            ListenerKind::Unix(s, path) => s
                .accept()
                .map(|(c, _)| (Stream::Unix(c), format!("unix:{}", path.display()))),
            ListenerKind::Stdin => return None,
        })
    }

    /// Remove a unix socket's file (when the listener closes).
    pub fn remove_file(&self) {
        if let ListenerKind::Unix(_, path) = &self.kind {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How an accept loop ended.
pub(super) enum AcceptEnd {
    /// Every waiting connection was taken (`WouldBlock`).
    Idle,
    /// The caller stopped it (no room, listener gone).
    Stopped,
    /// Accepting failed in a way retrying at once would repeat (EMFILE, ENFILE…).
    Failed(io::Error),
}

/// The one accept loop (listeners and the control socket): take connections until
/// the kernel has none, `accept` returns None, or an error that retrying would
/// repeat. Interrupted calls and connections aborted before they were taken are
/// skipped.
pub(super) fn accept_loop<T, S>(
    target: &mut T,
    mut accept: impl FnMut(&mut T) -> Option<io::Result<S>>,
    mut take: impl FnMut(&mut T, S),
) -> AcceptEnd {
    loop {
        let Some(r) = accept(target) else {
            return AcceptEnd::Stopped;
        };
        match r {
            Ok(s) => take(target, s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return AcceptEnd::Idle,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The peer gave up before we accepted: next one.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => return AcceptEnd::Failed(e),
        }
    }
}

pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// orchd's own stdin/stdout (batch mode).
    Stdio {
        input: FdKind,
        output: FdKind,
    },
}

/// One client connection.
pub(super) struct Conn {
    pub id: u64,
    pub listener: usize,
    pub stream: Stream,
    pub token: Option<Token>,
    pub inbuf: LineBuf,
    pub out: OutBuf,
    /// No more input will come (EOF, or shutdown).
    pub read_done: bool,
    /// Reading stopped before WouldBlock: must be resumed actively.
    pub read_paused: bool,
    /// The peer is gone; close as soon as possible.
    pub dead: bool,
    /// The peer closed its side (EOF), so no unread input can remain.
    pub peer_closed: bool,
    /// Half-closed by orchd: input is discarded until the peer closes (or [`LINGER`]).
    pub lingering: bool,
    /// Batch mode, stdout a pipe/socket: its token while WRITABLE interest is needed.
    pub out_token: Option<Token>,
    /// Batch mode, stdin a terminal: bytes are known to be readable without blocking.
    pub tty_ready: bool,
    /// Already in `Net::to_pump`.
    pub pump_queued: bool,
    /// A bulk client's read buffer is kept between reads until the trim timer
    /// (`trim.rs`) frees it.
    pub inbuf_held: bool,
    /// Peer address, for logs.
    pub label: String,
}

impl Conn {
    pub fn new(id: u64, listener: usize, stream: Stream, max_line: usize, label: String) -> Conn {
        Conn {
            id,
            listener,
            stream,
            token: None,
            inbuf: LineBuf::new(max_line),
            out: OutBuf::holding(),
            read_done: false,
            read_paused: false,
            dead: false,
            peer_closed: false,
            lingering: false,
            out_token: None,
            tty_ready: false,
            pump_queued: false,
            inbuf_held: false,
            label,
        }
    }

    /// The socket to watch (None: batch stdio, watched through its fds).
    pub fn socket(&mut self) -> Option<&mut dyn mio::event::Source> {
        match &mut self.stream {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(s) => Some(s),
            Stream::Stdio { .. } => None,
        }
    }

    /// Read what is there into `inbuf` (taken out of the connection by the caller).
    pub fn read_into(&mut self, inbuf: &mut LineBuf) -> io::Result<Fill> {
        match &mut self.stream {
            Stream::Tcp(s) => inbuf.fill(s),
            Stream::Unix(s) => inbuf.fill(s),
            Stream::Stdio { input, .. } => {
                if *input == FdKind::Tty {
                    // A terminal is never made non-blocking (it shares its file
                    // description with stderr): read only when bytes are known to be
                    // there.
                    if !self.tty_ready {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    let r = inbuf.fill(&mut StdinReader);
                    self.tty_ready = matches!(sys::readable_bytes(0), Ok(n) if n > 0);
                    return r;
                }
                inbuf.fill(&mut StdinReader)
            }
        }
    }

    /// Write what the kernel takes of the pending output.
    pub fn flush(&mut self) -> Flushed {
        let stream = &mut self.stream;
        self.out.flush(|buf| match stream {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Stdio { .. } => sys::write_fd(1, buf),
        })
    }

    /// Half-close: no more output. Err for batch stdio (it cannot be half-closed).
    pub fn shutdown_write(&self) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Stdio { .. } => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Read and drop input until `WouldBlock`; true once the peer has closed.
    pub fn discard_input(&mut self) -> bool {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            let r = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut scratch),
                Stream::Unix(s) => s.read(&mut scratch),
                Stream::Stdio { .. } => Ok(0),
            };
            match r {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Batch mode at exit: write the rest of the output with blocking writes, and
    /// give stdin and stdout their blocking mode back.
    pub fn finish_stdio(&mut self) -> io::Result<()> {
        let Stream::Stdio { input, output } = self.stream else {
            return Ok(());
        };
        if output == FdKind::Stream {
            let _ = sys::set_fd_nonblocking(1, false);
        }
        let r = write_all_fd(1, self.out.unsent());
        self.out.discard();
        if input == FdKind::Stream {
            let _ = sys::set_fd_nonblocking(0, false);
        }
        r
    }
}

struct StdinReader;

impl Read for StdinReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read_fd(0, buf)
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
