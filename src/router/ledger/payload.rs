//! A message's bytes (with its `\n`): kept inside the message when short, so that
//! the common message costs no allocation of its own; on the heap otherwise. A run
//! of messages (see `Msg::count`) keeps all of its lines in one growing buffer.

use std::ops::Deref;

/// Bytes a payload holds without an allocation (with the length byte and the tag,
/// the payload is 96 bytes).
const INLINE: usize = 94;

#[derive(Clone)]
pub(super) enum Payload {
    Inline {
        len: u8,
        buf: [u8; INLINE],
    },
    Heap(Box<[u8]>),
    /// The lines of a run, one after another, from `start` on (the lines before
    /// it were split off and went their own way; the buffer still holds them).
    Run {
        buf: Vec<u8>,
        start: usize,
    },
}

impl Payload {
    /// `line` followed by `\n`.
    pub(super) fn with_newline(line: &[u8]) -> Payload {
        let n = line.len() + 1;
        if n <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..line.len()].copy_from_slice(line);
            buf[line.len()] = b'\n';
            Payload::Inline { len: n as u8, buf }
        } else {
            let mut v = Vec::with_capacity(n);
            v.extend_from_slice(line);
            v.push(b'\n');
            Payload::Heap(v.into_boxed_slice())
        }
    }

    /// Append `line` and its `\n` (a run grows by one message). Returns how much
    /// more it retains ([`Payload::retained`]).
    pub(super) fn push_line(&mut self, line: &[u8]) -> usize {
        let before = self.retained();
        let buf = self.run_buf(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.retained() - before
    }

    /// Append whole lines (each ending in `\n`). Returns how much more it retains.
    pub(super) fn push_lines(&mut self, lines: &[u8]) -> usize {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
        let before = self.retained();
        self.run_buf(lines.len()).extend_from_slice(lines);
        self.retained() - before
    }

    /// Its buffer as a run's, made one if it is not yet, with room for `more`.
    fn run_buf(&mut self, more: usize) -> &mut Vec<u8> {
        if !self.is_run() {
            let mut buf = Vec::with_capacity(self.len() + more);
            buf.extend_from_slice(self);
            *self = Payload::Run { buf, start: 0 };
        }
        match self {
            Payload::Run { buf, .. } => buf,
            _ => unreachable!("made a run above"),
        }
    }

    pub(super) fn is_run(&self) -> bool {
        matches!(self, Payload::Run { .. })
    }

    /// Bytes it keeps (what budgets count): a run's whole buffer, lines split off
    /// or answered included. Its allocation is at most twice that: the buffer
    /// starts at the size it needs and grows by doubling.
    pub(super) fn retained(&self) -> usize {
        match self {
            Payload::Run { buf, .. } => buf.len(),
            p => p.len(),
        }
    }

    /// Split off the first `n` bytes, `lines` whole lines of a run, as a payload of
    /// their own; this one keeps the rest.
    pub(super) fn split_off_head(&mut self, n: usize, lines: usize) -> Payload {
        let head = &self[..n];
        let p = if lines == 1 {
            Payload::with_newline(&head[..n - 1])
        } else {
            Payload::Run {
                buf: head.to_vec(),
                start: 0,
            }
        };
        if let Payload::Run { start, .. } = self {
            *start += n;
        }
        p
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Inline { len, buf } => &buf[..usize::from(*len)],
            Payload::Heap(b) => b,
            Payload::Run { buf, start } => &buf[*start..],
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lines_get_their_newline() {
        for n in [0, 1, INLINE - 1, INLINE, INLINE + 1, 5000] {
            let line = vec![b'x'; n];
            let p = Payload::with_newline(&line);
            assert_eq!(p.len(), n + 1);
            assert_eq!(&p[..n], &line[..]);
            assert_eq!(p[n], b'\n');
            assert_eq!(matches!(p, Payload::Inline { .. }), n < INLINE, "{n}");
            assert_eq!(&p.clone()[..], &p[..]);
        }
    }

    #[test]
    fn a_run_grows_line_by_line() {
        let mut p = Payload::with_newline(b"a");
        p.push_line(b"bc");
        p.push_line(&[b'x'; 200]);
        assert!(p.is_run());
        assert_eq!(p.len(), 2 + 3 + 201);
        assert_eq!(&p[..5], b"a\nbc\n");
        let one = p.split_off_head(2, 1);
        assert!(!one.is_run());
        assert_eq!(&one[..], b"a\n");
        assert_eq!(&p[..3], b"bc\n");
        assert!(p.retained() >= 206, "the whole buffer stays");
        let two = p.split_off_head(3 + 201, 2);
        assert!(two.is_run(), "two lines");
        assert_eq!(two.len(), 204);
        assert!(p.is_empty());
    }
}
