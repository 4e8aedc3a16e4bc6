//! Worker protocols (SPEC 12): how a message reaches a worker and how its reply comes
//! back, as pure codecs. No I/O: the daemon owns the pipes and sockets, frames their
//! bytes into lines ([`crate::framing::LineBuf`]) and hands each line to the codec of
//! the pool's [`Protocol`].
//!
//! - `lines` (SPEC 5) needs no codec: a message is written with a newline, a reply
//!   line is the reply, and replies match messages by order.
//! - [`tagged`]: `ID SP message NL` out, `ID SP reply NL` back in any order; replies
//!   match messages by ID ([`tagged::InFlight`]).
//! - [`node`]: Node.js `fork()` IPC, newline-delimited JSON on a socket pair; replies
//!   match messages by order, as with `lines`.
//!
//! [`WorkerIo::of`] says which fds and environment a worker of each protocol gets, so
//! that the spawn code and `--check` agree on it. [`write_message`], [`max_line`] and
//! [`decode_line`] are the three calls the daemon makes per protocol: the bytes of a
//! message, the framing limit of the reply channel, and what a reply line means.

pub mod node;
pub mod tagged;

use std::borrow::Cow;
use std::fmt;

use crate::config::Protocol;
use tagged::Tag;

/// The longest message or reply, in bytes, without its newline (SPEC 5: 1 MiB). The
/// daemon frames worker output with the same limit (`daemon::supervise::MAX_LINE`).
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Error reply reason: a message for a `node` worker is not valid UTF-8 (a JSON
/// string cannot carry it).
pub const MESSAGE_NOT_UTF8: &str = "message is not valid UTF-8";
/// Error reply reason: a `node` worker sent a string containing a newline (a reply is
/// one line; it is never split into several).
pub const REPLY_HAS_NEWLINE: &str = "reply contains a newline";
/// Error reply reason: a reply longer than [`MAX_MESSAGE`] (the same text as for a
/// `lines` worker's over-long reply line).
pub const REPLY_TOO_LONG: &str = "reply too long";

/// Appends one message for a worker of `protocol` to `out`: `message NL` (`lines`),
/// `ID SP message NL` (`tagged`, with the tag from [`tagged::InFlight::send`]), or a
/// JSON string line (`node`). Only a `node` worker can refuse a message (not UTF-8):
/// then nothing is written and the message gets the error reply
/// [`node::NotUtf8::reason`].
pub fn write_message(
    out: &mut Vec<u8>,
    protocol: Protocol,
    tag: Option<Tag>,
    message: &[u8],
) -> Result<(), node::NotUtf8> {
    debug_assert_eq!(
        tag.is_some(),
        protocol == Protocol::Tagged,
        "a tag iff tagged"
    );
    debug_assert!(!message.contains(&b'\n'), "a message is one line");
    match (protocol, tag) {
        (Protocol::Node, _) => return node::encode_message(out, message),
        (Protocol::Tagged, Some(tag)) => tagged::encode(out, tag, message),
        (Protocol::Lines | Protocol::Tagged, _) => {
            out.extend_from_slice(message);
            out.push(b'\n');
        }
    }
    Ok(())
}

/// The framing limit for a worker's reply channel: a reply of [`MAX_MESSAGE`] bytes
/// plus what the protocol wraps it in (an ID and a space; JSON escaping).
pub fn max_line(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Lines => MAX_MESSAGE,
        Protocol::Tagged => MAX_MESSAGE + tagged::MAX_ID_DIGITS + 1,
        Protocol::Node => node::MAX_LINE,
    }
}

/// What one line from a worker's reply channel means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerLine<'a> {
    /// The reply to the oldest message in flight on the instance (`lines`, `node`).
    Next(Cow<'a, [u8]>),
    /// The oldest message in flight gets the error reply with this reason.
    NextFails(&'static str),
    /// The reply to the message sent with this tag (`tagged`), if it is in flight
    /// ([`tagged::InFlight::answer`]; if not, it is logged and dropped).
    Tagged(Tag, &'a [u8]),
    /// The message sent with this tag, if in flight, gets the error reply with this
    /// reason.
    TaggedFails(Tag, &'static str),
    /// Not a reply: logged with the instance as target, then dropped; no message is
    /// answered.
    NotAReply(NotAReply),
}

/// Why a worker's line is no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAReply {
    /// A `tagged` line that is not `ID SP reply`.
    Malformed(tagged::ReplyError),
    /// A `tagged` line over [`max_line`]: skipped by the framing, its ID unknown.
    TooLong,
    /// A Node internal message (`cmd` starting with `NODE_`).
    Internal(String),
    /// A `node` line that is not JSON.
    NotJson(String),
}

impl NotAReply {
    /// How loud: internal messages are routine (debug); the rest are a worker bug.
    pub fn level(&self) -> log::Level {
        match self {
            NotAReply::Internal(_) => log::Level::Debug,
            _ => log::Level::Warn,
        }
    }
}

impl fmt::Display for NotAReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAReply::Malformed(e) => write!(f, "reply dropped: {e}"),
            NotAReply::TooLong => write!(
                f,
                "reply dropped: line longer than {} bytes (its message stays in flight until its timeout)",
                max_line(Protocol::Tagged)
            ),
            NotAReply::Internal(cmd) => write!(f, "Node internal message {cmd:?} ignored"),
            NotAReply::NotJson(why) => write!(f, "line dropped: {why}"),
        }
    }
}

/// What `line` (without its newline) from a worker of `protocol` means.
pub fn decode_line(protocol: Protocol, line: &[u8]) -> WorkerLine<'_> {
    match protocol {
        Protocol::Lines => WorkerLine::Next(Cow::Borrowed(line)),
        Protocol::Tagged => match tagged::parse_reply(line) {
            Ok((tag, reply)) if reply.len() > MAX_MESSAGE => {
                WorkerLine::TaggedFails(tag, REPLY_TOO_LONG)
            }
            Ok((tag, reply)) => WorkerLine::Tagged(tag, reply),
            Err(e) => WorkerLine::NotAReply(NotAReply::Malformed(e)),
        },
        Protocol::Node => match node::decode_reply(line) {
            node::Incoming::Reply(r) => WorkerLine::Next(Cow::Owned(r)),
            node::Incoming::ErrorReply(reason) => WorkerLine::NextFails(reason),
            node::Incoming::Internal(cmd) => WorkerLine::NotAReply(NotAReply::Internal(cmd)),
            node::Incoming::Invalid(why) => WorkerLine::NotAReply(NotAReply::NotJson(why)),
        },
    }
}

/// What a line over [`max_line`] (skipped by the framing) means: the error reply
/// "reply too long" for the oldest message where replies are matched in order; for
/// `tagged`, whose ID was in the skipped bytes, nothing can be answered.
pub fn decode_too_long(protocol: Protocol) -> WorkerLine<'static> {
    match protocol {
        Protocol::Lines | Protocol::Node => WorkerLine::NextFails(REPLY_TOO_LONG),
        Protocol::Tagged => WorkerLine::NotAReply(NotAReply::TooLong),
    }
}

/// What a worker's standard input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// A pipe orchd writes messages to.
    Pipe,
    /// `/dev/null`.
    Null,
}

/// What orchd does with a worker's standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// Its lines are replies.
    Replies,
    /// Its lines are logged like stderr, with the instance as target.
    Logged,
}

/// The fds and environment of one worker, decided by its pool's protocol and whether
/// a route targets the pool (SPEC 4). stderr is always a pipe whose lines are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIo {
    pub stdin: Stdin,
    pub stdout: Stdout,
    /// `Some`: the worker gets one end of a socket pair as its Node IPC channel, on
    /// [`node::CHANNEL_FD`], and the environment of [`node::CHANNEL_ENV`]; messages
    /// go out and replies come back on the other end, which orchd keeps.
    pub channel: Option<node::Channel>,
}

impl WorkerIo {
    pub fn of(protocol: Protocol, routed: bool) -> WorkerIo {
        match (protocol, routed) {
            (_, false) => WorkerIo {
                stdin: Stdin::Null,
                stdout: Stdout::Logged,
                channel: None,
            },
            (Protocol::Lines | Protocol::Tagged, true) => WorkerIo {
                stdin: Stdin::Pipe,
                stdout: Stdout::Replies,
                channel: None,
            },
            (Protocol::Node, true) => WorkerIo {
                stdin: Stdin::Null,
                stdout: Stdout::Logged,
                channel: Some(node::Channel),
            },
        }
    }

    /// Whether the worker can be sent messages at all (a route's, or a health probe's).
    pub fn takes_messages(&self) -> bool {
        self.stdin == Stdin::Pipe || self.channel.is_some()
    }

    /// Environment variables the worker must not inherit from orchd: a Node IPC
    /// channel of orchd's own parent (orchd started by a Node program with `fork()`)
    /// names an fd the worker does not have, and Node would fail on it at start-up.
    /// A `node` worker gets these variables set to its own channel instead.
    pub fn env_removed(&self) -> &'static [&'static str] {
        match self.channel {
            Some(_) => &[],
            None => &node::CHANNEL_VARS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_tagged_workers_read_stdin_and_write_replies_to_stdout() {
        for p in [Protocol::Lines, Protocol::Tagged] {
            let io = WorkerIo::of(p, true);
            assert_eq!(
                (io.stdin, io.stdout, io.channel),
                (Stdin::Pipe, Stdout::Replies, None)
            );
            assert!(io.takes_messages());
            assert_eq!(io.env_removed(), &node::CHANNEL_VARS);
        }
    }

    #[test]
    fn node_workers_get_the_channel_and_their_stdout_is_logged() {
        let io = WorkerIo::of(Protocol::Node, true);
        assert_eq!(io.stdin, Stdin::Null);
        assert_eq!(io.stdout, Stdout::Logged);
        assert_eq!(io.channel, Some(node::Channel));
        assert!(io.takes_messages());
        assert!(io.env_removed().is_empty());
    }

    #[test]
    fn unrouted_workers_take_no_messages_whatever_the_protocol() {
        for p in Protocol::ALL {
            let io = WorkerIo::of(p, false);
            assert_eq!(
                (io.stdin, io.stdout, io.channel),
                (Stdin::Null, Stdout::Logged, None)
            );
            assert!(!io.takes_messages());
        }
    }

    fn written(protocol: Protocol, tag: Option<Tag>, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(&mut out, protocol, tag, message).expect("written");
        out
    }

    #[test]
    fn each_protocol_writes_its_message_line() {
        assert_eq!(written(Protocol::Lines, None, b"a b"), b"a b\n");
        assert_eq!(written(Protocol::Tagged, Some(Tag(9)), b"a b"), b"9 a b\n");
        assert_eq!(
            written(Protocol::Node, None, b"a \"b\""),
            b"\"a \\\"b\\\"\"\n"
        );
        // Bytes that are not UTF-8: fine on a pipe, refused for node.
        assert_eq!(written(Protocol::Lines, None, b"\xff"), b"\xff\n");
        let mut out = Vec::new();
        let e = write_message(&mut out, Protocol::Node, None, b"\xff").unwrap_err();
        assert_eq!(e.reason(), MESSAGE_NOT_UTF8);
        assert!(out.is_empty());
    }

    #[test]
    fn framing_limits_leave_room_for_a_full_size_reply() {
        assert_eq!(max_line(Protocol::Lines), MAX_MESSAGE);
        let mut tagged_line = Vec::new();
        tagged::encode(&mut tagged_line, Tag(u64::MAX), &vec![b'x'; MAX_MESSAGE]);
        assert_eq!(tagged_line.len() - 1, max_line(Protocol::Tagged));
        assert_eq!(max_line(Protocol::Node), 6 * MAX_MESSAGE + 2);
    }

    #[test]
    fn lines_are_replies_in_order_as_they_are() {
        assert_eq!(
            decode_line(Protocol::Lines, b"1 x"),
            WorkerLine::Next(Cow::Borrowed(&b"1 x"[..]))
        );
        assert_eq!(
            decode_too_long(Protocol::Lines),
            WorkerLine::NextFails(REPLY_TOO_LONG)
        );
    }

    #[test]
    fn tagged_lines_name_their_message_or_are_dropped() {
        assert_eq!(
            decode_line(Protocol::Tagged, b"12 HELLO"),
            WorkerLine::Tagged(Tag(12), b"HELLO")
        );
        let bad = decode_line(Protocol::Tagged, b"HELLO");
        assert_eq!(
            bad,
            WorkerLine::NotAReply(NotAReply::Malformed(tagged::ReplyError::NoSpace))
        );
        let mut long = b"3 ".to_vec();
        long.resize(MAX_MESSAGE + 3, b'x');
        assert_eq!(
            decode_line(Protocol::Tagged, &long),
            WorkerLine::TaggedFails(Tag(3), REPLY_TOO_LONG)
        );
        match decode_too_long(Protocol::Tagged) {
            WorkerLine::NotAReply(n) => {
                assert_eq!(n.level(), log::Level::Warn);
                assert!(n.to_string().contains("stays in flight"), "{n}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn node_lines_are_replies_in_order_error_replies_or_ignored() {
        assert_eq!(
            decode_line(Protocol::Node, br#""hi""#),
            WorkerLine::Next(Cow::Owned(b"hi".to_vec()))
        );
        assert_eq!(
            decode_line(Protocol::Node, br#"{"a":1}"#),
            WorkerLine::Next(Cow::Owned(br#"{"a":1}"#.to_vec()))
        );
        assert_eq!(
            decode_line(Protocol::Node, br#""a\nb""#),
            WorkerLine::NextFails(REPLY_HAS_NEWLINE)
        );
        match decode_line(Protocol::Node, br#"{"cmd":"NODE_X"}"#) {
            WorkerLine::NotAReply(n) => {
                assert_eq!(n, NotAReply::Internal("NODE_X".into()));
                assert_eq!(n.level(), log::Level::Debug);
            }
            other => panic!("{other:?}"),
        }
        match decode_line(Protocol::Node, b"oops") {
            WorkerLine::NotAReply(n @ NotAReply::NotJson(_)) => {
                assert_eq!(n.level(), log::Level::Warn);
                assert!(n.to_string().starts_with("line dropped: not JSON"), "{n}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode_too_long(Protocol::Node),
            WorkerLine::NextFails(REPLY_TOO_LONG)
        );
    }
}
