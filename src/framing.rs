//! Newline framing over non-blocking byte streams. Pure apart from `fill`, which takes
//! any `Read`.
//!
//! A [`LineBuf`] reads big chunks and hands out complete lines; a line longer than its
//! limit is reported once as [`Frame::TooLong`] and the stream resynchronises at the
//! next newline, so one bad line never costs the lines after it. Memory per buffer is
//! bounded by the limit plus one read chunk. A fresh buffer reads small chunks that
//! grow while reads fill them, so a client that sends one short line costs a few KiB,
//! not a full chunk; [`LineBuf::release`] frees an idle buffer.

use std::io::{self, Read};

/// How much one `read` asks for at most.
pub const READ_CHUNK: usize = 64 * 1024;
/// How much the first `read` of a buffer asks for; doubled each time a read fills
/// the room it was given, up to [`READ_CHUNK`].
const FIRST_CHUNK: usize = 4 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A line without its `\n`.
    Line(&'a [u8]),
    /// A line over the limit was skipped (up to and including its `\n`).
    TooLong,
}

/// Result of one `fill`.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    Data(usize),
    Eof,
}

#[derive(Debug)]
pub struct LineBuf {
    /// Initialized storage; data lives in `pos..end`. Kept initialized so that reads
    /// go straight into it without zeroing a chunk every time.
    buf: Vec<u8>,
    /// Start of unconsumed bytes.
    pos: usize,
    /// End of the bytes read so far.
    end: usize,
    /// Bytes in `pos..pos + scanned` are known to contain no `\n`.
    scanned: usize,
    max: usize,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    /// How much the next `read` asks for (see [`FIRST_CHUNK`]).
    chunk: usize,
}

impl LineBuf {
    /// Lines longer than `max` bytes (without the `\n`) are refused.
    pub fn new(max: usize) -> Self {
        LineBuf {
            buf: Vec::new(),
            pos: 0,
            end: 0,
            scanned: 0,
            max,
            discarding: false,
            chunk: FIRST_CHUNK,
        }
    }

    /// Make room for at least `n` more bytes after `end`.
    fn reserve(&mut self, n: usize) {
        self.compact();
        if self.buf.len() - self.end < n {
            self.buf.resize(self.end + n, 0);
        }
    }

    /// Read once from `r` into the buffer. `WouldBlock` and other errors are returned
    /// as errors; `Interrupted` is retried.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<Fill> {
        self.reserve(self.chunk);
        loop {
            let room = self.buf.len() - self.end;
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.end += n;
                    if n == room {
                        // More may be waiting: ask for more next time.
                        self.chunk = (self.chunk * 2).min(READ_CHUNK);
                    }
                    return Ok(Fill::Data(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Append bytes directly (tests, and callers that already hold data).
    pub fn extend(&mut self, data: &[u8]) {
        self.reserve(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    fn compact(&mut self) {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.pos > 0 && self.pos >= self.end / 2 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            let pending = &self.buf[self.pos..self.end];
            match memchr::memchr(b'\n', &pending[self.scanned..]) {
                Some(i) => {
                    let len = self.scanned + i;
                    let start = self.pos;
                    self.pos += len + 1;
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if len > self.max {
                        return Some(Frame::TooLong);
                    }
                    return Some(Frame::Line(&self.buf[start..start + len]));
                }
                None => {
                    self.scanned = pending.len();
                    if self.discarding {
                        // Drop what we have of the over-long line.
                        self.pos = self.end;
                        self.scanned = 0;
                        return None;
                    }
                    if pending.len() > self.max {
                        self.discarding = true;
                        self.pos = self.end;
                        self.scanned = 0;
                        return Some(Frame::TooLong);
                    }
                    return None;
                }
            }
        }
    }

    /// Like [`LineBuf::next_frame`], but every complete line buffered (up to the first
    /// one over the limit) comes as one [`Frame::Line`] holding all of them, each with
    /// its `\n`: one call per read chunk instead of one per line.
    pub fn next_lines(&mut self) -> Option<Frame<'_>> {
        if self.discarding {
            // Skip the rest of an over-long line (reported already).
            match memchr::memchr(b'\n', &self.buf[self.pos..self.end]) {
                Some(i) => {
                    self.pos += i + 1;
                    self.scanned = 0;
                    self.discarding = false;
                }
                None => {
                    self.pos = self.end;
                    self.scanned = 0;
                    return None;
                }
            }
        }
        let start = self.pos;
        if self.end - start <= self.max + 1 {
            // No line in here can be over the limit: one search from the back.
            if let Some(i) = memchr::memrchr(b'\n', &self.buf[start..self.end]) {
                self.pos = start + i + 1;
                self.scanned = 0;
                return Some(Frame::Line(&self.buf[start..self.pos]));
            }
        }
        let mut p = start;
        while let Some(i) = memchr::memchr(b'\n', &self.buf[p..self.end]) {
            if i > self.max {
                break;
            }
            p += i + 1;
        }
        if p > start {
            self.pos = p;
            self.scanned = 0;
            return Some(Frame::Line(&self.buf[start..p]));
        }
        // An over-long line next, or no complete line: as `next_frame` (which then
        // returns no line: a short complete one would have been taken above).
        match self.next_frame()? {
            Frame::TooLong => Some(Frame::TooLong),
            Frame::Line(_) => None,
        }
    }

    /// Give back the last `n` bytes of the run [`LineBuf::next_lines`] just returned
    /// (whole lines the caller could not take): the next call returns them again.
    pub fn unconsume(&mut self, n: usize) {
        debug_assert!(n <= self.pos);
        self.pos -= n.min(self.pos);
        self.scanned = 0;
    }

    /// Bytes of an unterminated last line (for logging at EOF); empties the buffer.
    pub fn take_partial(&mut self) -> Option<Vec<u8>> {
        let rest = self.buf[self.pos..self.end].to_vec();
        self.pos = 0;
        self.end = 0;
        self.scanned = 0;
        let was_discarding = std::mem::replace(&mut self.discarding, false);
        if rest.is_empty() || was_discarding {
            None
        } else {
            Some(rest)
        }
    }

    /// Whether a partial line is buffered.
    pub fn has_partial(&self) -> bool {
        self.pos < self.end
    }

    /// Length of the buffered partial line.
    pub fn partial_len(&self) -> usize {
        self.end - self.pos
    }

    /// Drop everything buffered.
    pub fn clear(&mut self) {
        self.pos = 0;
        self.end = 0;
        self.scanned = 0;
        self.discarding = false;
    }

    /// Release what an idle buffer holds (a client between messages): an empty one is
    /// freed, a mostly consumed one keeps only its partial line. The chunk size learned
    /// so far is kept, so a busy stream still reads big chunks.
    pub fn release(&mut self) {
        let partial = self.end - self.pos;
        if partial == 0 {
            self.buf = Vec::new();
            self.pos = 0;
            self.end = 0;
            self.scanned = 0;
        } else if self.buf.capacity() > 4 * partial.max(FIRST_CHUNK) {
            // Rare: a growing long line keeps its buffer (no copy per read).
            self.buf = self.buf[self.pos..self.end].to_vec();
            self.pos = 0;
            self.end = partial;
        }
    }

    /// Whether reads have grown to [`READ_CHUNK`] (a stream carrying bulk data).
    pub fn bulk(&self) -> bool {
        self.chunk == READ_CHUNK
    }

    /// Release memory held by a large, now empty buffer.
    pub fn shrink(&mut self) {
        if self.pos == self.end && self.buf.len() > 4 * READ_CHUNK {
            self.buf = Vec::new();
            self.pos = 0;
            self.end = 0;
        }
    }
}

/// Split a line for logging: at most `max` bytes per piece, lossy UTF-8.
pub fn log_pieces(line: &[u8], max: usize) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    line.chunks(max.max(1)).map(String::from_utf8_lossy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lb: &mut LineBuf) -> Vec<Result<Vec<u8>, ()>> {
        let mut out = vec![];
        while let Some(f) = lb.next_frame() {
            out.push(match f {
                Frame::Line(l) => Ok(l.to_vec()),
                Frame::TooLong => Err(()),
            });
        }
        out
    }

    fn runs(lb: &mut LineBuf) -> Vec<Result<Vec<u8>, ()>> {
        let mut out = vec![];
        while let Some(f) = lb.next_lines() {
            out.push(match f {
                Frame::Line(l) => Ok(l.to_vec()),
                Frame::TooLong => Err(()),
            });
        }
        out
    }

    #[test]
    fn next_lines_hands_out_runs_of_complete_lines() {
        let mut lb = LineBuf::new(4);
        lb.extend(b"a\n\nbc\nde");
        assert_eq!(runs(&mut lb), vec![Ok(b"a\n\nbc\n".to_vec())]);
        lb.extend(b"f\ntoolong\nx\ny\nlonger");
        assert_eq!(
            runs(&mut lb),
            vec![
                Ok(b"def\n".to_vec()),
                Err(()),
                Ok(b"x\ny\n".to_vec()),
                Err(())
            ]
        );
        // The over-long partial line was reported once; its rest is skipped.
        assert_eq!(runs(&mut lb), vec![]);
        lb.extend(b"stillmore\nok\n");
        assert_eq!(runs(&mut lb), vec![Ok(b"ok\n".to_vec())]);
        assert!(!lb.has_partial());
        // What the caller could not take comes again.
        lb.extend(b"p\nq\nr\n");
        match lb.next_lines() {
            Some(Frame::Line(run)) => assert_eq!(run, b"p\nq\nr\n"),
            other => panic!("{other:?}"),
        }
        lb.unconsume(4);
        assert_eq!(runs(&mut lb), vec![Ok(b"q\nr\n".to_vec())]);
    }

    #[test]
    fn next_lines_at_the_limit() {
        // Short enough that no line can be over the limit: one run up to the last
        // newline, the partial line kept.
        let mut lb = LineBuf::new(100);
        lb.extend(b"a\nbb\nccc");
        assert_eq!(runs(&mut lb), vec![Ok(b"a\nbb\n".to_vec())]);
        assert_eq!(lb.partial_len(), 3);
        // A line of exactly the limit is a line; one byte more is too long.
        let mut lb = LineBuf::new(4);
        lb.extend(b"abcd\n");
        assert_eq!(runs(&mut lb), vec![Ok(b"abcd\n".to_vec())]);
        lb.extend(b"abcde\nok\n");
        assert_eq!(runs(&mut lb), vec![Err(()), Ok(b"ok\n".to_vec())]);
    }

    #[test]
    fn splits_lines_and_keeps_partial() {
        let mut lb = LineBuf::new(100);
        lb.extend(b"a\n\nbc\nde");
        assert_eq!(
            frames(&mut lb),
            vec![Ok(b"a".to_vec()), Ok(vec![]), Ok(b"bc".to_vec())]
        );
        assert!(lb.has_partial());
        lb.extend(b"f\n");
        assert_eq!(frames(&mut lb), vec![Ok(b"def".to_vec())]);
        assert!(!lb.has_partial());
    }

    #[test]
    fn over_long_line_is_reported_once_and_stream_resyncs() {
        let mut lb = LineBuf::new(4);
        lb.extend(b"ok\n0123456789");
        assert_eq!(frames(&mut lb), vec![Ok(b"ok".to_vec()), Err(())]);
        lb.extend(b"abcdef");
        assert_eq!(frames(&mut lb), vec![]);
        lb.extend(b"xyz\nnext\n");
        assert_eq!(frames(&mut lb), vec![Ok(b"next".to_vec())]);
    }

    #[test]
    fn over_long_complete_line_in_one_chunk() {
        let mut lb = LineBuf::new(3);
        lb.extend(b"abcd\nabc\n");
        assert_eq!(frames(&mut lb), vec![Err(()), Ok(b"abc".to_vec())]);
    }

    #[test]
    fn fill_reads_and_reports_eof() {
        let mut lb = LineBuf::new(10);
        let mut src: &[u8] = b"x\ny";
        assert_eq!(lb.fill(&mut src).unwrap(), Fill::Data(3));
        assert_eq!(frames(&mut lb), vec![Ok(b"x".to_vec())]);
        assert_eq!(lb.fill(&mut src).unwrap(), Fill::Eof);
        assert_eq!(lb.take_partial(), Some(b"y".to_vec()));
        assert_eq!(lb.take_partial(), None);
    }

    #[test]
    fn binary_bytes_pass_through() {
        let mut lb = LineBuf::new(10);
        lb.extend(&[0, 255, 13, 10]);
        assert_eq!(frames(&mut lb), vec![Ok(vec![0, 255, 13])]);
    }

    #[test]
    fn starts_small_grows_while_reads_fill_it_and_release_frees_it() {
        let mut lb = LineBuf::new(1 << 20);
        let mut src: &[u8] = b"hello\n";
        lb.fill(&mut src).unwrap();
        assert!(lb.buf.capacity() <= FIRST_CHUNK, "{}", lb.buf.capacity());
        assert_eq!(frames(&mut lb), vec![Ok(b"hello".to_vec())]);
        lb.release();
        assert_eq!(lb.buf.capacity(), 0);
        // A long line: reads grow to READ_CHUNK and the line arrives whole.
        let long = vec![b'x'; 300_000];
        let mut data = long.clone();
        data.push(b'\n');
        let mut src: &[u8] = &data;
        let mut reads = 0;
        while lb.fill(&mut src).unwrap() != Fill::Eof {
            reads += 1;
        }
        assert!(reads < 20, "{reads} reads for 300 kB");
        assert_eq!(lb.chunk, READ_CHUNK);
        assert_eq!(frames(&mut lb), vec![Ok(long)]);
        lb.release();
        assert_eq!(lb.buf.capacity(), 0);
    }

    #[test]
    fn release_keeps_a_partial_line_in_a_small_buffer() {
        let mut lb = LineBuf::new(1 << 20);
        let mut data = vec![b'y'; 200_000];
        data.extend_from_slice(b"\npart");
        let mut src: &[u8] = &data;
        while lb.fill(&mut src).unwrap() != Fill::Eof {}
        assert_eq!(frames(&mut lb).len(), 1);
        lb.release();
        assert!(lb.buf.capacity() < 1024, "{}", lb.buf.capacity());
        lb.extend(b"ial\n");
        assert_eq!(frames(&mut lb), vec![Ok(b"partial".to_vec())]);
    }

    #[test]
    fn log_pieces_split_long_lines() {
        let v: Vec<_> = log_pieces(b"abcdefg", 3).collect();
        assert_eq!(v, ["abc", "def", "g"]);
    }
}
