//! `protocol = "tagged"` (SPEC 12): orchd writes `ID SP message NL`, the worker
//! answers `ID SP reply NL` in any order, so one worker can work on many messages at
//! once.
//!
//! IDs are orchd's: opaque to the worker (tokens without spaces that it copies back),
//! here the decimal form of a [`Tag`] that [`InFlight`] hands out per instance,
//! counting from 1. A message sent again (after a death or a timeout) gets a new tag,
//! so a late reply to the earlier attempt is recognised and dropped, never delivered.
//!
//! Reply lines are checked strictly: `ID SP reply` where ID is a tag in canonical
//! decimal form (no sign, no leading zero) and reply is everything after the first
//! space (possibly empty; it may contain spaces). Anything else is a
//! [`ReplyError`]: logged and dropped by the daemon, never delivered.

use std::collections::BTreeMap;
use std::fmt;

/// The ID of one attempt of one message on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u64);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Appends `ID SP message NL` to `out`. `message` must not contain a newline (the
/// daemon's messages are lines, so they never do).
pub fn encode(out: &mut Vec<u8>, tag: Tag, message: &[u8]) {
    debug_assert!(!message.contains(&b'\n'), "a message is one line");
    // Formatting a u64 into a Vec<u8> cannot fail.
    let _ = std::io::Write::write_fmt(out, format_args!("{}", tag.0));
    out.push(b' ');
    out.extend_from_slice(message);
    out.push(b'\n');
}

/// Appends every `(tag, message)` of `batch`, in order, as [`encode`] does: one write
/// for many messages.
pub fn encode_batch<'m>(out: &mut Vec<u8>, batch: impl IntoIterator<Item = (Tag, &'m [u8])>) {
    for (tag, message) in batch {
        encode(out, tag, message);
    }
}

/// Why a reply line is not `ID SP reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The line is empty.
    Empty,
    /// The line has no space: an ID alone, or a reply without an ID.
    NoSpace,
    /// What stands before the first space is not an ID orchd writes (shown, cut to 40
    /// bytes, lossily decoded).
    BadId(String),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Empty => f.write_str("empty line; expected \"ID reply\""),
            ReplyError::NoSpace => {
                f.write_str("no space in the line; expected \"ID reply\" (ID, one space, reply)")
            }
            ReplyError::BadId(id) => write!(
                f,
                "{id:?} is not an ID orchd sent; expected \"ID reply\" with the message's ID"
            ),
        }
    }
}

/// The longest ID text: `u64::MAX` has 20 digits.
pub const MAX_ID_DIGITS: usize = 20;

/// Splits a reply line (without its newline) into its tag and reply.
pub fn parse_reply(line: &[u8]) -> Result<(Tag, &[u8]), ReplyError> {
    if line.is_empty() {
        return Err(ReplyError::Empty);
    }
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ReplyError::NoSpace)?;
    let (id, rest) = line.split_at(space);
    let reply = rest.get(1..).unwrap_or_default();
    parse_id(id)
        .map(|tag| (tag, reply))
        .ok_or_else(|| ReplyError::BadId(shown(id)))
}

/// A tag in canonical decimal form: digits only, no leading zero, at most `u64::MAX`.
fn parse_id(id: &[u8]) -> Option<Tag> {
    let canonical = !id.is_empty()
        && id.len() <= MAX_ID_DIGITS
        && id.iter().all(u8::is_ascii_digit)
        && (id == b"0" || id[0] != b'0');
    if !canonical {
        return None;
    }
    std::str::from_utf8(id).ok()?.parse().ok().map(Tag)
}

fn shown(id: &[u8]) -> String {
    const MAX_SHOWN: usize = 40;
    let cut = &id[..id.len().min(MAX_SHOWN)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if id.len() > MAX_SHOWN {
        s.push('…');
    }
    s
}

/// Why a well-formed reply matches no message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// orchd never sent this tag to this instance.
    Unknown,
    /// orchd sent it, and it is no longer in flight: already answered, or its message
    /// timed out or was taken back (a late reply).
    NotInFlight,
}

impl fmt::Display for Unmatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unmatched::Unknown => "unknown ID (never sent to this instance)",
            Unmatched::NotInFlight => {
                "ID not in flight (already answered, or its message timed out)"
            }
        })
    }
}

/// The messages in flight on one tagged instance, by tag, with the daemon's value for
/// each (its ledger key). Tags are handed out in increasing order, so iteration order
/// is send order and everything below the next tag was sent: that is how an
/// already-answered ID is told from one never sent, with no memory of answered tags.
#[derive(Debug)]
pub struct InFlight<V> {
    next: u64,
    sent: BTreeMap<Tag, V>,
}

impl<V> Default for InFlight<V> {
    fn default() -> Self {
        InFlight {
            next: 1,
            sent: BTreeMap::new(),
        }
    }
}

impl<V> InFlight<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a message about to be written and returns its tag.
    pub fn send(&mut self, value: V) -> Tag {
        let tag = Tag(self.next);
        // 2^64 messages to one instance cannot happen; saturate rather than wrap so a
        // tag is never reused.
        self.next = self.next.saturating_add(1);
        let previous = self.sent.insert(tag, value);
        debug_assert!(previous.is_none(), "tag {tag} handed out twice");
        tag
    }

    /// The message a reply with `tag` answers; it is no longer in flight.
    pub fn answer(&mut self, tag: Tag) -> Result<V, Unmatched> {
        match self.sent.remove(&tag) {
            Some(v) => Ok(v),
            None if tag.0 >= 1 && tag.0 < self.next => Err(Unmatched::NotInFlight),
            None => Err(Unmatched::Unknown),
        }
    }

    /// Takes a message back without an answer (its timeout passed): a later reply to
    /// `tag` is [`Unmatched::NotInFlight`]. None if it was not in flight.
    pub fn take_back(&mut self, tag: Tag) -> Option<V> {
        self.sent.remove(&tag)
    }

    /// Every message still in flight, in send order (the instance died: each is
    /// charged an attempt and redelivered).
    pub fn drain(&mut self) -> impl Iterator<Item = (Tag, V)> + '_ {
        std::mem::take(&mut self.sent).into_iter()
    }

    /// The oldest message in flight.
    pub fn oldest(&self) -> Option<(Tag, &V)> {
        self.sent.iter().next().map(|(t, v)| (*t, v))
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The messages in flight, in send order, without taking them.
    pub fn iter(&self) -> impl Iterator<Item = (Tag, &V)> {
        self.sent.iter().map(|(t, v)| (*t, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_id_space_message_newline() {
        let mut out = Vec::new();
        encode(&mut out, Tag(7), b"upper hello world");
        encode(&mut out, Tag(18446744073709551615), b"");
        assert_eq!(out, b"7 upper hello world\n18446744073709551615 \n");
    }

    #[test]
    fn encodes_a_batch_in_order_after_what_is_there() {
        let mut out = b"1 a\n".to_vec();
        let batch: [(Tag, &[u8]); 3] = [(Tag(2), b"b"), (Tag(3), b"c c"), (Tag(10), b"")];
        encode_batch(&mut out, batch);
        assert_eq!(out, b"1 a\n2 b\n3 c c\n10 \n");
    }

    #[test]
    fn parses_id_and_reply() {
        assert_eq!(parse_reply(b"12 HELLO"), Ok((Tag(12), &b"HELLO"[..])));
        // The reply is everything after the first space, spaces and all.
        assert_eq!(
            parse_reply(b"3  two  spaces "),
            Ok((Tag(3), &b" two  spaces "[..]))
        );
        // An empty reply is a reply.
        assert_eq!(parse_reply(b"4 "), Ok((Tag(4), &b""[..])));
        // Replies are bytes: not UTF-8 is fine, CR is kept.
        assert_eq!(parse_reply(b"5 \xff\r"), Ok((Tag(5), &b"\xff\r"[..])));
        assert_eq!(
            parse_reply(b"18446744073709551615 x"),
            Ok((Tag(u64::MAX), &b"x"[..]))
        );
    }

    #[test]
    fn malformed_lines_are_precise_errors() {
        assert_eq!(parse_reply(b""), Err(ReplyError::Empty));
        assert_eq!(parse_reply(b"12"), Err(ReplyError::NoSpace));
        assert_eq!(parse_reply(b"HELLO"), Err(ReplyError::NoSpace));
        for (line, id) in [
            (&b" 12 x"[..], ""),
            (b"abc x", "abc"),
            (b"+1 x", "+1"),
            (b"-1 x", "-1"),
            (b"012 x", "012"),
            (b"1.0 x", "1.0"),
            (b"18446744073709551616 x", "18446744073709551616"),
            (b"\tx y", "\tx"),
        ] {
            assert_eq!(
                parse_reply(line),
                Err(ReplyError::BadId(id.into())),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long = [b'9'; 100];
        let mut line = long.to_vec();
        line.extend_from_slice(b" x");
        match parse_reply(&line) {
            Err(ReplyError::BadId(s)) => assert_eq!(s, format!("{}…", "9".repeat(40))),
            other => panic!("{other:?}"),
        }
        assert!(ReplyError::NoSpace
            .to_string()
            .contains("expected \"ID reply\""));
        assert!(ReplyError::BadId("x".into()).to_string().contains("\"x\""));
    }

    #[test]
    fn encode_and_parse_round_trip() {
        for (tag, msg) in [(Tag(1), &b"a b c"[..]), (Tag(99), b""), (Tag(5), b"\xfe")] {
            let mut out = Vec::new();
            encode(&mut out, tag, msg);
            let line = out.strip_suffix(b"\n").unwrap();
            assert_eq!(parse_reply(line), Ok((tag, msg)));
        }
    }

    #[test]
    fn replies_in_any_order_match_their_messages() {
        let mut f = InFlight::new();
        let tags: Vec<Tag> = ["a", "b", "c"].into_iter().map(|m| f.send(m)).collect();
        assert_eq!(tags, [Tag(1), Tag(2), Tag(3)]);
        assert_eq!(f.answer(Tag(3)), Ok("c"));
        assert_eq!(f.answer(Tag(1)), Ok("a"));
        assert_eq!(f.len(), 1);
        assert_eq!(f.answer(Tag(2)), Ok("b"));
        assert!(f.is_empty());
    }

    #[test]
    fn duplicate_and_unknown_ids_are_told_apart() {
        let mut f = InFlight::new();
        let t = f.send(1);
        assert_eq!(f.answer(t), Ok(1));
        assert_eq!(f.answer(t), Err(Unmatched::NotInFlight));
        assert_eq!(f.answer(Tag(2)), Err(Unmatched::Unknown));
        assert_eq!(f.answer(Tag(0)), Err(Unmatched::Unknown));
        assert_eq!(f.answer(Tag(u64::MAX)), Err(Unmatched::Unknown));
        // Nothing was disturbed by the bad replies.
        let t2 = f.send(2);
        assert_eq!(t2, Tag(2));
        assert_eq!(f.answer(t2), Ok(2));
    }

    #[test]
    fn a_late_reply_after_a_timeout_is_dropped_and_the_retry_has_a_new_id() {
        let mut f = InFlight::new();
        let first = f.send("m");
        assert_eq!(f.take_back(first), Some("m"));
        assert_eq!(f.take_back(first), None);
        let retry = f.send("m");
        assert_ne!(retry, first);
        assert_eq!(f.answer(first), Err(Unmatched::NotInFlight));
        assert_eq!(f.answer(retry), Ok("m"));
    }

    #[test]
    fn a_dead_instance_gives_back_exactly_its_unanswered_messages_in_send_order() {
        let mut f = InFlight::new();
        let tags: Vec<Tag> = (0..20).map(|i| f.send(i)).collect();
        for t in tags.iter().step_by(3) {
            f.answer(*t).unwrap();
        }
        assert_eq!(f.oldest().map(|(t, v)| (t, *v)), Some((Tag(2), 1)));
        let left: Vec<i32> = f.drain().map(|(_, v)| v).collect();
        let expected: Vec<i32> = (0..20).filter(|i| i % 3 != 0).collect();
        assert_eq!(left, expected);
        assert!(f.is_empty());
        assert_eq!(f.oldest(), None);
        // Tags are never reused after a drain.
        assert_eq!(f.send(0), Tag(21));
    }
}
