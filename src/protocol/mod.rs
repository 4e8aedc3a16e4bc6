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
//! that the spawn code and `--check` agree on it.

pub mod node;
pub mod tagged;

use crate::config::Protocol;

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

/// Until the event loop speaks `tagged` and `node` (issue 11), start-up refuses a
/// config that uses them rather than running their workers as `lines`; `--check`
/// accepts them. The reason names the first such pool. Remove with the wiring.
pub fn not_wired_yet(config: &crate::config::Config) -> Option<String> {
    let pool = config
        .pools
        .iter()
        .find(|p| p.protocol != Protocol::Lines)?;
    Some(format!(
        "{}: pool.{}.protocol: protocol = {:?} is not supported by this build yet (only \"lines\")",
        config.path.display(),
        pool.name,
        pool.protocol.as_str()
    ))
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

    #[test]
    fn start_up_refuses_protocols_the_loop_does_not_speak_yet() {
        let parse = |text: &str| {
            crate::config::parse_str(std::path::Path::new("/tmp/p.toml"), text).expect("valid")
        };
        assert_eq!(not_wired_yet(&parse("[pool.a]\ncommand = \"cat\"\n")), None);
        let why = not_wired_yet(&parse(
            "[pool.a]\ncommand = \"cat\"\n[pool.b]\ncommand = \"cat\"\nprotocol = \"node\"\n",
        ));
        assert_eq!(
            why.as_deref(),
            Some("/tmp/p.toml: pool.b.protocol: protocol = \"node\" is not supported by this build yet (only \"lines\")")
        );
    }
}
