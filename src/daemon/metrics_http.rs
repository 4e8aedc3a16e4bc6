//! The metrics listener's I/O component (SPEC section 11): the `metrics` TCP
//! listener and its HTTP connections, read through the bounded
//! [`RequestReader`] and written through [`OutBuf`].
//!
//! It decides nothing: the shell (`metrics.rs`) accepts while fewer than
//! [`MAX_CONNECTIONS`] are open, gives each connection a [`REQUEST_TIMEOUT`]
//! deadline, answers a complete request with a snapshot, and closes a connection once
//! its response is flushed. What one connection can cost orchd is bounded whatever
//! the client does: [`MAX_REQUEST_BYTES`] of request head (the reader holds no
//! more, and a connection is not read after its head), one response, and the
//! deadline.
//!
//! [`MAX_CONNECTIONS`]: crate::metrics::http::MAX_CONNECTIONS
//! [`REQUEST_TIMEOUT`]: crate::metrics::http::REQUEST_TIMEOUT
//! [`MAX_REQUEST_BYTES`]: crate::metrics::http::MAX_REQUEST_BYTES

use std::io::{self, Read};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::outbuf::OutBuf;
use crate::metrics::http::{Parse, RequestReader};

/// The listener and its connections.
#[derive(Default)]
pub(super) struct MetricsHttp {
    pub listener: Option<MetricsListener>,
    pub conns: Slab<HttpConn>,
}

pub(super) struct MetricsListener {
    /// The configured address (what a reload compares).
    pub addr: SocketAddr,
    pub sock: TcpListener,
    /// Set while it is watched (not while [`MAX_CONNECTIONS`] are open).
    ///
    /// [`MAX_CONNECTIONS`]: crate::metrics::http::MAX_CONNECTIONS
    pub token: Option<Token>,
}

pub(super) struct HttpConn {
    /// Unique for the daemon's life (slab keys are reused): its timer carries it.
    pub id: u64,
    pub stream: TcpStream,
    pub token: Token,
    pub reader: RequestReader,
    pub out: OutBuf,
    /// The response is queued: nothing more is read.
    pub responded: bool,
}

/// What reading a connection gave.
pub(super) enum ReadEnd {
    /// The request head is not complete yet.
    More,
    /// A complete request, or a refusal to answer.
    Done(Parse),
    /// The peer closed or the connection failed before a complete request.
    Closed,
}

/// Bind `addr` (not yet watched).
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })
}

impl HttpConn {
    /// Read what has arrived into the bounded reader, until the kernel has no more
    /// or the head is complete (or too large): a client sending without end costs a
    /// read of at most [`MAX_REQUEST_BYTES`](crate::metrics::http::MAX_REQUEST_BYTES)
    /// plus one buffer.
    pub fn read(&mut self) -> ReadEnd {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return ReadEnd::Closed,
                Ok(n) => match self.reader.feed(&buf[..n]) {
                    Parse::NeedMore => {}
                    done => return ReadEnd::Done(done),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::More,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadEnd::Closed,
            }
        }
    }

    /// Write what the socket takes. Returns false when the connection is finished:
    /// the response is out, or the peer is gone. Watches for WRITABLE while some
    /// is left.
    pub fn flush(&mut self, registry: &Registry) -> bool {
        let stream = &mut self.stream;
        let done = self.out.flush(|b| io::Write::write(stream, b));
        if done.error.is_some() {
            return false;
        }
        if self.responded && self.out.is_empty() {
            return false;
        }
        let (stream, token) = (&mut self.stream, self.token);
        let rewatch = self.out.rewatch(
            done.want_write(),
            Interest::WRITABLE,
            Interest::READABLE,
            |i| registry.reregister(stream, token, i),
        );
        if let Err(e) = rewatch {
            log::warn!("metrics: cannot change interest of a connection: {e}");
            return false;
        }
        true
    }
}
