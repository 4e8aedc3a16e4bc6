//! A message's bytes (with its `\n`): kept inside the message when short, so that
//! the common message costs no allocation of its own; on the heap otherwise.

use std::ops::Deref;

/// Bytes a payload holds without an allocation (with the length byte and the tag,
/// the payload is 96 bytes).
const INLINE: usize = 94;

#[derive(Clone)]
pub(super) enum Payload {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
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
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Inline { len, buf } => &buf[..usize::from(*len)],
            Payload::Heap(b) => b,
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
}
