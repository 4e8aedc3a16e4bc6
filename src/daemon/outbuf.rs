//! The one output buffer of every connection orchd writes to without blocking: worker
//! stdins, clients and control connections.
//!
//! Handlers append; the loop calls [`OutBuf::flush`] once per turn (and on WRITABLE).
//! One policy for all of them:
//! - write until the kernel says `WouldBlock` (or takes nothing);
//! - when everything is written, an emptied buffer keeps at most [`KEEP`] bytes of
//!   capacity (an idle connection holds next to no memory); a buffer made with
//!   [`OutBuf::holding`] keeps up to [`HOLD`] bytes instead, so that a busy stream
//!   does not map, fault in and unmap a large buffer every loop turn, and gives it
//!   back when the owner calls [`OutBuf::trim`] after it has been idle a while
//!   ([`OutBuf::wants_trim`] says when to ask);
//! - a buffer written past [`COMPACT`] bytes and more than half sent is compacted, so a
//!   slow reader does not make orchd keep everything it ever sent;
//! - [`Flushed::want_write`] says whether the fd should be polled for WRITABLE, and
//!   [`OutBuf::interest_changed`] whether that differs from what it was told last.

use std::io;

/// Capacity an empty buffer may keep.
pub const KEEP: usize = 16 << 10;
/// Bytes already written after which a half-sent buffer is compacted.
pub const COMPACT: usize = 64 << 10;
/// Capacity an emptied [`OutBuf::holding`] buffer keeps until [`OutBuf::trim`].
pub const HOLD: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    pos: usize,
    /// The WRITABLE interest the fd was last given (see `interest_changed`).
    polled: bool,
    /// Emptied, it keeps up to [`HOLD`] bytes until `trim` (see [`OutBuf::holding`]).
    hold: bool,
    /// `wants_trim` said yes and `trim` has not freed it since.
    trim_asked: bool,
}

/// What one flush did.
#[derive(Debug)]
pub struct Flushed {
    /// Bytes written by this call.
    pub written: usize,
    /// Bytes still waiting for room.
    pub pending: usize,
    /// A write failed (EPIPE, ECONNRESET, …): the buffer is emptied, the peer is gone.
    pub error: Option<io::Error>,
}

impl Flushed {
    /// The fd should be watched for WRITABLE.
    pub fn want_write(&self) -> bool {
        self.pending > 0 && self.error.is_none()
    }
}

impl OutBuf {
    pub fn new() -> OutBuf {
        OutBuf::default()
    }

    /// A buffer that keeps its capacity (up to [`HOLD`]) when emptied, until
    /// [`OutBuf::trim`]: for streams that carry bulk traffic (clients, worker stdins).
    pub fn holding() -> OutBuf {
        OutBuf {
            hold: true,
            ..OutBuf::default()
        }
    }

    /// Bytes appended and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// The unwritten bytes.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Append through a writer function (formatting straight into the buffer).
    pub fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Forget everything unsent and give the memory back.
    pub fn discard(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }

    /// Memory held, for accounting.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Write as much as `write` takes. `write` is a `write(2)`-like function; EINTR is
    /// retried, `WouldBlock` and a zero-length write stop, any other error empties the
    /// buffer and is returned in [`Flushed::error`].
    pub fn flush(&mut self, mut write: impl FnMut(&[u8]) -> io::Result<usize>) -> Flushed {
        let mut written = 0;
        let mut error = None;
        while self.pos < self.buf.len() {
            match write(&self.buf[self.pos..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.pos += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_some() {
            self.discard();
        } else if self.pos == self.buf.len() {
            self.pos = 0;
            let keep = if self.hold { HOLD } else { KEEP };
            if self.buf.capacity() > keep {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        } else if self.pos > COMPACT && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Flushed {
            written,
            pending: self.pending(),
            error,
        }
    }

    /// After a flush: true once when an emptied buffer holds more than [`KEEP`] bytes
    /// of capacity. The owner should then call [`OutBuf::trim`] a while later.
    pub fn wants_trim(&mut self) -> bool {
        if self.trim_asked || !self.is_empty() || self.buf.capacity() <= KEEP {
            return false;
        }
        self.trim_asked = true;
        true
    }

    /// A while after [`OutBuf::wants_trim`]: an empty buffer gives its capacity back
    /// (past [`KEEP`]); one in use again is left alone, and the flush that empties
    /// it asks again ([`OutBuf::wants_trim`]): no one polls a buffer whose peer
    /// stopped reading.
    pub fn trim(&mut self) {
        if self.is_empty() && self.buf.capacity() > KEEP {
            self.buf = Vec::new();
            self.pos = 0;
        }
        self.trim_asked = false;
    }

    /// Record that the fd should now be polled for WRITABLE (`want`); returns true
    /// when that differs from last time, i.e. the registration must change.
    pub fn interest_changed(&mut self, want: bool) -> bool {
        let changed = want != self.polled;
        self.polled = want;
        changed
    }

    /// After a flush: when whether the fd should be watched for WRITABLE changed
    /// (`want`), give `reregister` the interest for it: `writing` while output is
    /// pending, `idle` otherwise. Nothing changed: nothing is called.
    pub fn rewatch<I>(
        &mut self,
        want: bool,
        writing: I,
        idle: I,
        reregister: impl FnOnce(I) -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.interest_changed(want) {
            return Ok(());
        }
        reregister(if want { writing } else { idle })
    }

    /// Whether the fd is currently polled for WRITABLE (as last recorded).
    pub fn polled(&self) -> bool {
        self.polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_until_would_block_and_keeps_the_rest() {
        let mut b = OutBuf::new();
        b.push(b"hello world\n");
        let mut room = 5;
        let f = b.flush(|bytes| {
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = bytes.len().min(room);
            room -= n;
            Ok(n)
        });
        assert_eq!((f.written, f.pending), (5, 7));
        assert!(f.want_write());
        assert_eq!(b.unsent(), b" world\n");
        let f = b.flush(|bytes| Ok(bytes.len()));
        assert_eq!((f.written, f.pending), (7, 0));
        assert!(!f.want_write());
        assert!(b.is_empty());
    }

    #[test]
    fn retries_eintr_and_stops_on_zero() {
        let mut b = OutBuf::new();
        b.push(b"abc");
        let mut calls = 0;
        let f = b.flush(|_| {
            calls += 1;
            if calls == 1 {
                Err(io::ErrorKind::Interrupted.into())
            } else {
                Ok(0)
            }
        });
        assert_eq!(calls, 2);
        assert_eq!(f.pending, 3);
        assert!(f.error.is_none());
    }

    #[test]
    fn an_error_empties_the_buffer_and_is_reported() {
        let mut b = OutBuf::new();
        b.push(b"abc");
        let f = b.flush(|_| Err(io::ErrorKind::BrokenPipe.into()));
        assert_eq!(f.error.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
        assert!(b.is_empty());
        assert_eq!(b.capacity(), 0);
    }

    #[test]
    fn an_emptied_big_buffer_gives_its_memory_back() {
        let mut b = OutBuf::new();
        b.push(&vec![b'x'; KEEP * 4]);
        b.flush(|bytes| Ok(bytes.len()));
        assert_eq!(b.capacity(), 0);
        b.push(b"small");
        b.flush(|bytes| Ok(bytes.len()));
        assert!(b.capacity() > 0 && b.capacity() <= KEEP);
    }

    #[test]
    fn a_holding_buffer_keeps_its_capacity_until_trimmed() {
        let mut b = OutBuf::holding();
        b.push(&vec![b'x'; KEEP * 4]);
        b.flush(|bytes| Ok(bytes.len()));
        assert!(b.capacity() >= KEEP * 4, "{}", b.capacity());
        assert!(b.wants_trim());
        // Asked once per episode.
        assert!(!b.wants_trim());
        // In use again at trim time: kept, and the flush that empties it asks again.
        b.push(b"busy");
        b.trim();
        assert!(b.capacity() >= KEEP * 4);
        assert!(!b.wants_trim(), "not while in use");
        b.flush(|bytes| Ok(bytes.len()));
        assert!(b.wants_trim());
        b.trim();
        assert_eq!(b.capacity(), 0);
        assert!(!b.wants_trim());
        // Past HOLD, an emptied buffer is freed at once, as any other.
        b.push(&vec![b'x'; HOLD + 1]);
        b.flush(|bytes| Ok(bytes.len()));
        assert_eq!(b.capacity(), 0);
        assert!(!b.wants_trim());
        // A plain buffer never holds more than KEEP.
        let mut b = OutBuf::new();
        b.push(&vec![b'x'; KEEP * 4]);
        b.flush(|bytes| Ok(bytes.len()));
        assert!(!b.wants_trim());
    }

    #[test]
    fn a_mostly_sent_buffer_is_compacted() {
        let mut b = OutBuf::new();
        b.push(&vec![b'x'; COMPACT * 3]);
        let mut first = true;
        b.flush(|_| {
            if first {
                first = false;
                Ok(COMPACT * 2)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        assert_eq!(b.pending(), COMPACT);
        assert_eq!(b.unsent().len(), COMPACT);
        // Compacted: what was sent is no longer held in front.
        assert_eq!(b.pos, 0);
    }

    #[test]
    fn rewatch_reregisters_only_on_a_change() {
        let mut b = OutBuf::new();
        let mut calls = Vec::new();
        for want in [false, true, true, false] {
            b.rewatch(want, "w", "r", |i| {
                calls.push(i);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(calls, ["w", "r"]);
    }

    #[test]
    fn interest_changes_are_reported_once() {
        let mut b = OutBuf::new();
        assert!(!b.interest_changed(false));
        assert!(b.interest_changed(true));
        assert!(!b.interest_changed(true));
        assert!(b.polled());
        assert!(b.interest_changed(false));
    }
}
