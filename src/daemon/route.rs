//! The shell's side of messages (SPEC section 5): it connects the listeners and
//! client connections ([`super::net`], I/O only) to the message ledger
//! ([`crate::router::ledger::Ledger`], decisions only). Lines read from a client go
//! to the ledger; the bytes the ledger hands out go to client connections and worker
//! stdins; the ledger's other actions (timers, restarts, drained instances, clients
//! that may read again) are executed in `exec.rs`.

use std::io;

use mio::event::Event;
use mio::unix::SourceFd;
use mio::Interest;

use super::net::{
    accept_loop, AcceptEnd, Conn, Listener, ListenerKind, Stream, ACCEPT_RETRY, LINGER,
};
use super::supervise::MAX_LINE;
use super::tokens::register;
use super::{Daemon, IoTarget, TimerKey};
use crate::config::Config;
use crate::framing::{Fill, Frame};
use crate::router::ledger::Rule;
use crate::sys::{self, FdKind};

/// The shell's `Poll` and token table, lent to [`super::net::Net`] (disjoint from
/// `self.net`).
macro_rules! watch {
    ($d:expr) => {
        super::net::Watch {
            poll: &$d.poll,
            io: &mut $d.io,
        }
    };
}

impl Daemon {
    // ----- set-up and reload --------------------------------------------------------

    /// Open a listener for every distinct `from` of `config` not yet open.
    pub(super) fn listeners_open(&mut self, config: &Config) -> io::Result<()> {
        for route in &config.routes {
            if self.net.by_source.contains_key(&route.from) {
                continue;
            }
            let l = Listener::open(&route.from, route.mode)?;
            let key = self.net.listeners.insert(l);
            self.net.by_source.insert(route.from.clone(), key);
            self.listener_start(key)?;
        }
        Ok(())
    }

    fn listener_start(&mut self, key: usize) -> io::Result<()> {
        let l = &mut self.net.listeners[key];
        if let Some(s) = l.source() {
            let t = register(
                &self.poll,
                &mut self.io,
                s,
                IoTarget::Listener(key),
                Interest::READABLE,
            )?;
            l.token = Some(t);
            return Ok(());
        }
        self.batch_client_open(key)
    }

    /// Point every listener at the routes of `config` (atomically: messages read from
    /// now on use the new rules).
    pub(super) fn router_install(&mut self, config: &Config) {
        let mut rules = Vec::new();
        for route in &config.routes {
            let Some(&pool) = self.pool_names.get(&route.to) else {
                continue;
            };
            let Some(&listener) = self.net.by_source.get(&route.from) else {
                continue;
            };
            rules.push(Rule {
                listener,
                pool,
                matcher: route.matcher.clone(),
                strategy: route.strategy,
                key: route.key.clone(),
                timeout: route.timeout,
                retries: route.retries,
                ordered: route.ordered,
            });
        }
        self.ledger.set_error_prefix(&config.settings.error_prefix);
        let pools: Vec<usize> = self.pools.iter().map(|(k, _)| k).collect();
        for pool in pools {
            self.ledger_sync_pool(pool);
        }
        self.ledger.set_rules(rules);
    }

    /// Close listeners whose address no route uses any more. Their connections read
    /// no more messages and stay until their replies are written (a message read but
    /// stalled on a full pool gets `no route`).
    pub(super) fn listeners_close_unused(&mut self, config: &Config) {
        let unused: Vec<usize> = self
            .net
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
        let mut l = self.net.listeners.remove(key);
        self.net.by_source.remove(&l.source);
        if let (Some(token), Some(s)) = (l.token, l.source()) {
            self.deregister_io(s, token);
        }
        l.remove_file();
        // Its connections read nothing more and close once their replies are out (and
        // their peers have closed: see `client_maybe_close`).
        let clients: Vec<usize> = self
            .net
            .clients
            .iter()
            .filter(|(_, c)| c.listener == key)
            .map(|(k, _)| k)
            .collect();
        for c in clients {
            let cl = &mut self.net.clients[c];
            cl.listener = usize::MAX;
            cl.read_done = true;
            self.ledger.client_unroute(c);
            self.client_refuse_unrouted(c, "no route");
            self.client_maybe_close(c);
        }
        log::info!("stopped listening on {}", l.label);
    }

    // ----- accepting ----------------------------------------------------------------

    pub(super) fn on_listener(&mut self, key: usize) {
        if self.net.stopped_reading {
            return;
        }
        let end = accept_loop(
            self,
            |d| {
                if d.clients_at_cap() {
                    let max = d.config.settings.max_clients;
                    d.net.cap_pause(&mut watch!(d), d.now, max);
                    return None;
                }
                // A readiness event from before a pause: the retry timer is pending.
                d.net
                    .listeners
                    .get(key)
                    .filter(|l| l.retry.is_none())
                    .and_then(Listener::accept)
            },
            |d, (stream, peer)| {
                if let Err(e) = d.client_add(key, stream, peer) {
                    log::warn!("cannot watch a new connection: {e}");
                }
            },
        );
        match end {
            AcceptEnd::Idle => self.net.accept_recovered(key, self.now),
            AcceptEnd::Stopped => {}
            AcceptEnd::Failed(e) => {
                let gen = self.gen();
                if self
                    .net
                    .accept_failed(&mut watch!(self), key, &e, self.now, gen)
                {
                    let at = self.now + ACCEPT_RETRY;
                    self.timers.arm(at, TimerKey::Accept { listener: key, gen });
                }
            }
        }
    }

    pub(super) fn on_accept_timer(&mut self, listener: usize, gen: u64) {
        let Some(l) = self.net.listeners.get_mut(listener) else {
            return;
        };
        if l.retry != Some(gen) {
            return;
        }
        l.retry = None;
        if !self.net.cap_paused {
            self.net.listener_watch(&mut watch!(self), listener, true);
        }
        self.on_listener(listener);
    }

    /// Connections over all routes (the batch client is not one).
    fn clients_at_cap(&self) -> bool {
        self.net.connections() >= self.config.settings.max_clients as usize
    }

    /// Below `max_clients` again: watch the listeners and take waiting connections.
    fn cap_resume_if_room(&mut self) {
        if !self.net.cap_paused || self.net.stopped_reading || self.clients_at_cap() {
            return;
        }
        self.net.cap_paused = false;
        let keys: Vec<usize> = self.net.listeners.iter().map(|(k, _)| k).collect();
        for k in keys {
            if self.net.listeners.get(k).is_some_and(|l| l.retry.is_none()) {
                self.net.listener_watch(&mut watch!(self), k, true);
                self.on_listener(k);
            }
        }
        if self.net.cap_paused {
            return; // full again: the episode goes on
        }
        // Every waiting connection has been accepted: the episode is over.
        self.net
            .cap_over(self.now, self.config.settings.max_clients);
    }

    fn client_add(&mut self, listener: usize, stream: Stream, peer: String) -> io::Result<()> {
        let key = self
            .net
            .add(&mut watch!(self), listener, stream, peer, MAX_LINE)?;
        self.ledger.client_open(key, Some(listener));
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
            sys::grow_pipe(0);
        }
        if output == FdKind::Stream {
            sys::set_fd_nonblocking(1, true)?;
            sys::grow_pipe(1);
        }
        let key = self.net.clients.vacant_entry().key();
        self.client_add(listener, Stream::Stdio { input, output }, "stdin".into())?;
        if input != FdKind::File {
            // Pipes, sockets and terminals can be polled; regular files cannot (EPERM)
            // and are read whenever there is room instead.
            let token =
                self.register_io(&mut SourceFd(&0), IoTarget::Client(key), Interest::READABLE)?;
            self.net.clients[key].token = Some(token);
        }
        self.net.batch = Some(key);
        self.schedule_pump(key);
        Ok(())
    }

    // ----- clients ------------------------------------------------------------------

    pub(super) fn on_client(&mut self, key: usize, event: &Event) {
        if self.net.clients.get(key).is_some_and(|c| c.lingering) {
            self.client_discard_input(key);
            return;
        }
        if event.is_readable() {
            if let Some(c) = self.net.clients.get_mut(key) {
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

    /// The client may be read from now (when the ledger says no, it is paused and
    /// resumed by a ledger action).
    fn client_can_read(&mut self, key: usize) -> bool {
        let Some(c) = self.net.clients.get(key) else {
            return false;
        };
        !c.dead && !c.read_done && !self.net.stopped_reading && self.ledger.client_may_read(key)
    }

    /// Read and route as much as the client and its pools allow.
    fn client_pump(&mut self, key: usize) {
        if !self.net.clients.contains(key) {
            return;
        }
        if self.ledger.client_stalled(key) {
            let went = self
                .ledger
                .client_resume(key, self.now, &mut self.ledger_out);
            self.ledger_exec();
            if !went {
                return;
            }
        }
        let Some(c) = self.net.clients.get_mut(key) else {
            return;
        };
        let mut inbuf = std::mem::replace(&mut c.inbuf, crate::framing::LineBuf::new(0));
        let now = self.now;
        'outer: loop {
            if !self.client_can_read(key) {
                if let Some(c) = self.net.clients.get_mut(key) {
                    c.read_paused = !c.read_done;
                }
                break;
            }
            while let Some(frame) = inbuf.next_lines() {
                match frame {
                    Frame::Line(lines) => {
                        // Every complete line of the chunk at once; the ledger stops
                        // where the client must stop sending.
                        let n = lines.len();
                        let taken = self
                            .ledger
                            .client_lines(key, lines, now, &mut self.ledger_out);
                        inbuf.unconsume(n - taken);
                        if self.ledger.client_stalled(key) {
                            self.net.clients[key].read_paused = true;
                            break 'outer;
                        }
                    }
                    Frame::TooLong => {
                        self.ledger
                            .client_error(key, "message too long", &mut self.ledger_out)
                    }
                }
                if !self.client_can_read(key) {
                    continue 'outer;
                }
            }
            // Hand this chunk's messages and replies out before reading the next.
            self.ledger_exec();
            let c = &mut self.net.clients[key];
            match c.read_into(&mut inbuf) {
                Ok(Fill::Data(_)) => continue,
                Ok(Fill::Eof) => {
                    c.read_done = true;
                    c.peer_closed = true;
                    c.read_paused = false;
                    // An unterminated last line is still a message.
                    if let Some(rest) = inbuf.take_partial() {
                        let rest = rest.strip_suffix(b"\r").unwrap_or(&rest);
                        if rest.len() > MAX_LINE {
                            self.ledger
                                .client_error(key, "message too long", &mut self.ledger_out);
                        } else {
                            // On a full pool it stalls like any other line and is
                            // submitted again when the pool drains.
                            self.ledger
                                .client_line(key, rest, now, &mut self.ledger_out);
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
        self.ledger_exec();
        if let Some(c) = self.net.clients.get_mut(key) {
            // Idle until the next readiness: keep no read buffer, unless the client
            // sends bulk data (then the trim timer frees it once it is idle, instead
            // of a 64 KiB buffer freed and zeroed again at every readiness).
            let hold = inbuf.bulk() && !c.read_done && !c.dead;
            if !hold {
                inbuf.release();
            }
            c.inbuf = inbuf;
            if hold && !c.inbuf_held {
                c.inbuf_held = true;
                self.trim_note(super::trim::Held::ClientInput(key));
            }
        }
        self.client_maybe_close(key);
    }

    /// A client that will read no more: the messages orchd has read from it but not
    /// routed (one stalled on a full pool, complete lines still in its read buffer
    /// because it was paused) are answered with `why`, in order, never dropped. An
    /// unterminated partial line is not a message yet and is discarded.
    fn client_refuse_unrouted(&mut self, key: usize, why: &str) {
        let Some(c) = self.net.clients.get_mut(key) else {
            return;
        };
        let mut inbuf = std::mem::replace(&mut c.inbuf, crate::framing::LineBuf::new(0));
        let out = &mut self.ledger_out;
        self.ledger.client_refuse_stalled(key, why, out);
        while let Some(frame) = inbuf.next_frame() {
            match frame {
                Frame::Line(_) => self.ledger.client_error(key, why, out),
                Frame::TooLong => self.ledger.client_error(key, "message too long", out),
            }
        }
        inbuf.clear();
        inbuf.release();
        self.net.clients[key].inbuf = inbuf;
        self.ledger_exec();
    }

    /// Queue reply bytes for a client (a ledger action).
    pub(super) fn client_send(&mut self, key: usize, bytes: &[u8]) {
        let Some(c) = self.net.clients.get_mut(key) else {
            return;
        };
        if c.out.is_empty() {
            self.dirty_clients.push_back(key);
        }
        c.out.push(bytes);
    }

    /// Write a client's pending replies; WRITABLE interest only while some are left.
    pub(super) fn flush_client(&mut self, key: usize) {
        let batch = self.net.batch == Some(key);
        let Some(c) = self.net.clients.get_mut(key) else {
            return;
        };
        let before = c.out.pending();
        let flushed = c.flush();
        if let Some(e) = &flushed.error {
            if batch {
                log::error!("batch: cannot write replies to stdout: {e}");
                self.net.batch_output_failed = true;
            } else {
                log::debug!("client {}: write: {e}", c.label);
            }
            c.dead = true;
        }
        let gone = before - c.out.pending();
        let want = flushed.want_write();
        let changed = c.out.interest_changed(want);
        if gone > 0 {
            self.ledger.client_wrote(key, gone, &mut self.ledger_out);
            self.ledger_exec();
        }
        if changed {
            if let Err(e) = self.net.write_interest(&mut watch!(self), key, want) {
                log::warn!(
                    "client {}: cannot change interest: {e}",
                    self.net.clients[key].label
                );
            }
        }
        self.trim_note(super::trim::Held::Client(key));
        self.client_maybe_close(key);
    }

    /// Close a client that is finished: peer gone, or input done and every reply out.
    /// A peer that has not closed its side gets a half-close first (see [`LINGER`]).
    fn client_maybe_close(&mut self, key: usize) {
        let Some(c) = self.net.clients.get(key) else {
            return;
        };
        let done = c.read_done && c.out.is_empty() && self.ledger.client_answered(key);
        if c.lingering || !(c.dead || done) {
            return;
        }
        if !c.dead && !c.peer_closed && self.client_linger(key) {
            return;
        }
        self.client_remove(key);
    }

    /// A client orchd reads no more from but whose peer may still send: half-close
    /// and discard its input until it closes, at most [`LINGER`] (see
    /// [`super::net::Net::half_close`]). False if that is not possible.
    fn client_linger(&mut self, key: usize) -> bool {
        if !self.net.half_close(key) {
            return false;
        }
        let id = self.net.clients[key].id;
        self.timers
            .arm(self.now + LINGER, TimerKey::Linger { client: key, id });
        self.client_discard_input(key);
        true
    }

    /// A half-closed client: read and drop its input; close once it has closed.
    fn client_discard_input(&mut self, key: usize) {
        if self
            .net
            .clients
            .get_mut(key)
            .is_some_and(Conn::discard_input)
        {
            self.client_remove(key);
        }
    }

    pub(super) fn on_linger_timer(&mut self, key: usize, id: u64) {
        if let Some(c) = self
            .net
            .clients
            .get(key)
            .filter(|c| c.id == id && c.lingering)
        {
            log::debug!(
                "client {}: did not close within {}s; closing",
                c.label,
                LINGER.as_secs()
            );
            self.client_remove(key);
        }
    }

    fn client_remove(&mut self, key: usize) {
        let c = self.net.close(&mut watch!(self), key);
        let summary = self.ledger.client_gone(key);
        if self.net.batch == Some(key) {
            self.net.batch = None;
            let mut errors = summary.errors;
            if c.dead && summary.outstanding > 0 {
                log::error!(
                    "batch output closed with {} replies unwritten",
                    summary.outstanding
                );
                errors += 1;
            }
            if self.net.batch_output_failed {
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
    pub(super) fn schedule_pump(&mut self, c: usize) {
        if let Some(cl) = self.net.clients.get_mut(c) {
            if !cl.pump_queued {
                cl.pump_queued = true;
                self.net.to_pump.push(c);
            }
        }
    }

    /// Resume clients that may read again, and accepting if clients left. Called from
    /// the loop before flushing.
    pub(super) fn router_pump(&mut self) -> bool {
        self.cap_resume_if_room();
        if self.net.to_pump.is_empty() {
            return false;
        }
        let list = std::mem::take(&mut self.net.to_pump);
        for c in list {
            if let Some(cl) = self.net.clients.get_mut(c) {
                cl.pump_queued = false;
            }
            self.client_pump(c);
        }
        true
    }

    // ----- shutdown -----------------------------------------------------------------

    /// Shutdown: accept and read nothing new.
    pub(super) fn router_stop_reading(&mut self) {
        self.net.stopped_reading = true;
        // Clients first, so that what they sent and orchd read gets `shutting down`
        // rather than the `no route` of a closed listener.
        let clients: Vec<usize> = self.net.clients.iter().map(|(k, _)| k).collect();
        for &c in &clients {
            if let Some(cl) = self.net.clients.get_mut(c) {
                cl.read_done = true;
                self.client_refuse_unrouted(c, "shutting down");
            }
        }
        let keys: Vec<usize> = self
            .net
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
        self.ledger.is_idle()
    }

    /// Answer every message still waiting or in flight with an error.
    pub(super) fn router_fail_all(&mut self, why: &str) {
        self.ledger.fail_all(why, &mut self.ledger_out);
        self.ledger_exec();
        self.flush_dirty();
    }

    /// Every client has received what was queued for it (or is gone).
    pub(super) fn router_flushed(&self) -> bool {
        self.net
            .clients
            .iter()
            .all(|(_, c)| c.dead || c.out.is_empty())
    }

    /// Last flush of the batch output (blocking), restore stdin/stdout flags, remove
    /// unix socket files.
    pub(super) fn router_close(&mut self) {
        let keys: Vec<usize> = self.net.clients.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Err(e) = self.net.clients[k].finish_stdio() {
                log::error!("batch: cannot write the last replies to stdout: {e}");
                self.exit_code = 1;
            }
        }
        let listeners: Vec<usize> = self.net.listeners.iter().map(|(k, _)| k).collect();
        for k in listeners {
            self.listener_close(k);
        }
    }
}
