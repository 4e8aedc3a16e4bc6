//! Metrics (SPEC section 11), wired: the `metrics` listener opened at start and on
//! reload (SPEC 6: an address that cannot be bound fails the whole reload; an
//! unchanged one keeps its socket), `GET /metrics` answered from a [`Snapshot`] of
//! the daemon's own state plus the [`Counters`] kept as things happen (replies with
//! their latency, exits by cause, failed health probes, reloads).
//!
//! The connections are the `metrics_http` component's; the request parsing and the
//! rendering are the pure `crate::metrics`. At most [`MAX_CONNECTIONS`] are open (the
//! listener is not watched meanwhile), each for at most [`REQUEST_TIMEOUT`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::Interest;

use super::metrics_http::{self, HttpConn, MetricsHttp, MetricsListener, ReadEnd};
use super::outbuf::OutBuf;
use super::{tokens, Daemon, IoTarget, TimerKey};
use crate::metrics::counters::Counters;
use crate::metrics::http::{
    error_response, response, Parse, RequestReader, MAX_CONNECTIONS, REQUEST_TIMEOUT,
};
use crate::metrics::{render, InstanceSnapshot, PoolSnapshot, Snapshot, CONTENT_TYPE};
use crate::sys::Exit;

/// Metrics state of the shell.
#[derive(Default)]
pub(super) struct MetricsState {
    pub http: MetricsHttp,
    pub counters: Counters,
    /// Why orchd is stopping an instance (`health`, `timeout`), by key with its id:
    /// the cause its exit is counted under.
    causes: HashMap<usize, (u64, &'static str)>,
}

/// What a reload does to the metrics listener, prepared before anything changes.
pub(super) enum MetricsSwap {
    Keep,
    Close,
    Open(SocketAddr, mio::net::TcpListener),
}

impl Daemon {
    /// At start: open the configured listener.
    pub(super) fn metrics_open(&mut self) -> io::Result<()> {
        match self.metrics_prepare(self.config.settings.metrics, true)? {
            MetricsSwap::Open(addr, sock) => self.metrics_listen(addr, sock),
            MetricsSwap::Keep | MetricsSwap::Close => {}
        }
        Ok(())
    }

    /// Bind the listener a reload (or the start, `fresh`) asks for; nothing changes
    /// yet.
    pub(super) fn metrics_prepare(
        &self,
        new: Option<SocketAddr>,
        fresh: bool,
    ) -> io::Result<MetricsSwap> {
        let old = self.metrics.http.listener.as_ref().map(|l| l.addr);
        if !fresh && new == old {
            return Ok(MetricsSwap::Keep);
        }
        match new {
            None => Ok(MetricsSwap::Close),
            Some(addr) => Ok(MetricsSwap::Open(addr, metrics_http::bind(addr)?)),
        }
    }

    /// The reload is committed: the prepared listener replaces the old one. Open
    /// connections finish their response.
    pub(super) fn metrics_commit(&mut self, swap: MetricsSwap) {
        match swap {
            MetricsSwap::Keep => {}
            MetricsSwap::Close => {
                if self.metrics_close_listener() {
                    log::info!("metrics listener closed");
                }
            }
            MetricsSwap::Open(addr, sock) => {
                self.metrics_close_listener();
                self.metrics_listen(addr, sock);
            }
        }
    }

    fn metrics_listen(&mut self, addr: SocketAddr, sock: mio::net::TcpListener) {
        let shown = sock.local_addr().unwrap_or(addr);
        log::info!("serving metrics on http://{shown}/metrics");
        self.metrics.http.listener = Some(MetricsListener {
            addr,
            sock,
            token: None,
        });
        self.metrics_watch_listener();
    }

    fn metrics_close_listener(&mut self) -> bool {
        let Some(mut l) = self.metrics.http.listener.take() else {
            return false;
        };
        if let Some(token) = l.token.take() {
            self.deregister_io(&mut l.sock, token);
        }
        true
    }

    /// Watch the listener while there is room for a connection, and take what
    /// waits (readiness is edge-triggered: connections that arrived while it was
    /// not watched would otherwise wait for the next one).
    fn metrics_watch_listener(&mut self) {
        let room = self.metrics.http.conns.len() < MAX_CONNECTIONS;
        let Some(l) = self.metrics.http.listener.as_mut() else {
            return;
        };
        if room && l.token.is_none() {
            match tokens::register(
                &self.poll,
                &mut self.io,
                &mut l.sock,
                IoTarget::MetricsListener,
                Interest::READABLE,
            ) {
                Ok(t) => l.token = Some(t),
                Err(e) => log::warn!("metrics: cannot watch the listener: {e}"),
            }
            self.on_metrics_listener();
        } else if !room {
            if let Some(token) = l.token.take() {
                tokens::deregister(&self.poll, &mut self.io, &mut l.sock, token);
            }
        }
    }

    /// Connections wait on the listener: take them while there is room.
    pub(super) fn on_metrics_listener(&mut self) {
        loop {
            if self.metrics.http.conns.len() >= MAX_CONNECTIONS {
                log::debug!("metrics: {MAX_CONNECTIONS} connections open; not accepting");
                self.metrics_watch_listener();
                return;
            }
            let Some(l) = self.metrics.http.listener.as_ref() else {
                return;
            };
            let (mut stream, peer) = match l.sock.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of fds: the next connection (or scrape) tries again.
                    log::warn!("metrics: accept: {e}");
                    return;
                }
            };
            let key = self.metrics.http.conns.vacant_entry().key();
            let token =
                match self.register_io(&mut stream, IoTarget::MetricsConn(key), Interest::READABLE)
                {
                    Ok(t) => t,
                    Err(e) => {
                        log::warn!("metrics: cannot watch a connection: {e}");
                        continue;
                    }
                };
            let id = self.gen();
            log::debug!("metrics: connection from {peer}");
            self.metrics.http.conns.insert(HttpConn {
                id,
                stream,
                token,
                reader: RequestReader::new(),
                out: OutBuf::new(),
                responded: false,
            });
            let at = crate::timers::deadline(self.now, REQUEST_TIMEOUT);
            self.timers.arm(at, TimerKey::MetricsConn { conn: key, id });
            // Data may have arrived with the connection.
            self.on_metrics_conn(key);
        }
    }

    /// A metrics connection is readable or writable.
    pub(super) fn on_metrics_conn(&mut self, key: usize) {
        let Some(c) = self.metrics.http.conns.get_mut(key) else {
            return;
        };
        if !c.responded {
            match c.read() {
                ReadEnd::More => return,
                ReadEnd::Closed => return self.metrics_close(key),
                ReadEnd::Done(Parse::Request(req)) => {
                    let body = render(self.metrics_snapshot());
                    let c = &mut self.metrics.http.conns[key];
                    c.out.push(&response(req, CONTENT_TYPE, &body));
                    c.responded = true;
                }
                ReadEnd::Done(Parse::Error(e)) => {
                    log::debug!("metrics: refusing a request: {}", e.status());
                    c.out.push(&error_response(e));
                    c.responded = true;
                }
                ReadEnd::Done(Parse::NeedMore) => return,
            }
        }
        let c = &mut self.metrics.http.conns[key];
        if !c.flush(self.poll.registry()) {
            self.metrics_close(key);
        }
    }

    /// A connection's time is up (its request or its response took too long).
    pub(super) fn on_metrics_timer(&mut self, key: usize, id: u64) {
        if self.metrics.http.conns.get(key).is_some_and(|c| c.id == id) {
            log::debug!(
                "metrics: closing a connection after {}",
                crate::timers::fmt_duration(REQUEST_TIMEOUT)
            );
            self.metrics_close(key);
        }
    }

    fn metrics_close(&mut self, key: usize) {
        if !self.metrics.http.conns.contains(key) {
            return;
        }
        let mut c = self.metrics.http.conns.remove(key);
        self.deregister_io(&mut c.stream, c.token);
        // Room again: take what waited.
        self.metrics_watch_listener();
    }

    /// Close every metrics connection and the listener (shutdown).
    pub(super) fn metrics_shutdown(&mut self) {
        self.metrics_close_listener();
        let keys: Vec<usize> = self.metrics.http.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.metrics_close(k);
        }
    }

    // ----- counts kept as things happen ----------------------------------------------

    /// orchd is stopping instance `key` for `cause`: its exit counts under it.
    pub(super) fn metrics_cause(&mut self, key: usize, cause: &'static str) {
        if let Some(i) = self.instances.get(key) {
            self.metrics.causes.insert(key, (i.id, cause));
        }
    }

    /// Instance `key`'s process exited.
    pub(super) fn metrics_exit(&mut self, key: usize, exit: Exit) {
        let Some(i) = self.instances.get(key) else {
            return;
        };
        let cause = match self.metrics.causes.remove(&key) {
            Some((id, cause)) if id == i.id => cause,
            _ => match exit {
                Exit::Code(0) => "exit-0",
                Exit::Code(_) => "exit-nonzero",
                Exit::Signal { .. } => "signal",
            },
        };
        let (pool, index) = (i.pool, i.index as usize);
        self.metrics.counters.pool(pool).exit(index, cause);
    }

    /// A worker's reply to a message that instance `key` could start on at
    /// `since` is being delivered.
    /// `n` replies of `key`, each taking `latency`.
    pub(super) fn metrics_answered(&mut self, key: usize, latency: Duration, n: usize) {
        if let Some(i) = self.instances.get(key) {
            self.metrics
                .counters
                .pool(i.pool)
                .answered_n(latency, n as u64);
        }
    }

    /// Everything one scrape shows.
    fn metrics_snapshot(&self) -> Snapshot {
        let now = std::time::Instant::now();
        let mut pools = Vec::new();
        for (pk, p) in self.pools.iter() {
            let mut instances = Vec::new();
            for &k in &p.slots {
                let Some(i) = self.instances.get(k) else {
                    continue;
                };
                let usage = i.pid().and_then(crate::sys::process_usage);
                instances.push(InstanceSnapshot {
                    index: i.index,
                    state: i.life.state.name(now).as_str(),
                    restarts: i.life.restarts,
                    inflight: self.instance_counts(k).0 as u64,
                    cpu_seconds: usage.map_or(0.0, |u| u.cpu_seconds),
                    rss_bytes: usage.map(|u| u.rss_bytes),
                    ..Default::default()
                });
            }
            let mut snap = PoolSnapshot {
                name: p.cfg.name.clone(),
                instances,
                queued: self.pool_queued(pk) as u64,
                ..Default::default()
            };
            match self.metrics.counters.get(pk) {
                Some(c) => c.fill(&mut snap),
                None => snap.messages = vec![("answered".into(), 0)],
            }
            for (why, n) in self.ledger.pool_errors(pk) {
                snap.messages.push((why.to_string(), *n));
            }
            pools.push(snap);
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            pools,
            reloads_ok: self.metrics.counters.reloads_ok,
            reloads_failed: self.metrics.counters.reloads_failed,
        }
    }
}
