//! The ledger's vocabulary: what the shell tells it (settings, routes, instance and
//! pool views) and what it asks the shell to do ([`Action`]).

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::config::{Pattern, Strategy};

/// A client with this many messages awaiting replies is not read from.
pub const MAX_OUTSTANDING: u32 = 10_000;
/// A client with this many reply bytes not yet written (or held back for ordering) is
/// not read from.
pub const MAX_CLIENT_OUT: usize = 4 << 20;
/// A pool holding this many bytes of messages (waiting or in flight) takes no more
/// until it drains, whatever its `queue` allows: `queue` counts messages, and 10,000
/// messages of 1 MiB would be 10 GiB.
pub const POOL_MAX_BYTES: usize = 32 << 20;

/// Limits and the error prefix. `Default` gives the daemon's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `error_prefix`: error replies are `error_prefix + reason + "\n"`.
    pub error_prefix: String,
    pub max_outstanding: u32,
    pub max_client_out: usize,
    pub pool_max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            error_prefix: "ERR ".into(),
            max_outstanding: MAX_OUTSTANDING,
            max_client_out: MAX_CLIENT_OUT,
            pool_max_bytes: POOL_MAX_BYTES,
        }
    }
}

/// One routing rule (a `[[route]]`), with its pool resolved to the shell's pool key.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The listener (shell key) whose clients this rule applies to.
    pub listener: usize,
    pub pool: usize,
    /// `match`; None = every message.
    pub matcher: Option<Pattern>,
    pub strategy: Strategy,
    /// `key` for `hash` (first capture group, else the whole match); None = the
    /// whole message.
    pub key: Option<Pattern>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub ordered: bool,
}

/// What the ledger needs of a pool's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// For logs.
    pub name: String,
    /// Messages written to one instance and not yet answered; [`MAX_INFLIGHT_AUTO`]
    /// (0): an adaptive window per instance (`max_inflight = "auto"`).
    pub max_inflight: u32,
    pub queue: u32,
}

/// `PoolSettings::max_inflight` for `max_inflight = "auto"`: each instance's window
/// follows how quickly its replies come back (see `window.rs`).
pub const MAX_INFLIGHT_AUTO: u32 = 0;

/// What the ledger needs to know of an instance's lifecycle, as the shell sees it
/// now. The shell passes it with every instance event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstanceView {
    /// Its process runs (lifecycle state `running`).
    pub running: bool,
    /// Running with a stdin pipe and taking messages (with `ready`: once ready):
    /// messages can be written to it.
    pub writable: bool,
    /// Running with a stdin pipe, ready or not: orchd's health probes can be written
    /// to it (with `ready.probe`, the probe that makes it ready). Implied by
    /// `writable`.
    pub has_input: bool,
    /// Retiring or held: it takes no new messages and works off what it has.
    pub leaving: bool,
    /// Not leaving, and in backoff or running: it will take work again, so messages
    /// pinned to its slot (broadcast copies) wait for it.
    pub coming_back: bool,
}

impl InstanceView {
    /// May receive new messages.
    pub fn is_live(&self) -> bool {
        self.writable && !self.leaving
    }
}

/// A timer the ledger asked for; handed back through [`super::Ledger::timer`]. Each
/// carries the generation it was armed with: a timer whose generation is no longer
/// current was superseded and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The oldest in-flight message of an instance may have exceeded its `timeout`.
    Inflight { instance: usize, gen: u64 },
    /// Messages waiting in a pool without live instances may have expired.
    PoolQueue { pool: usize, gen: u64 },
}

/// What the shell must do. Byte ranges index [`Actions::bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Append these bytes (whole messages, each ending in `\n`, already in the
    /// worker's protocol) to the instance's stdin (or its `node` channel).
    ToWorker {
        instance: usize,
        bytes: Range<usize>,
    },
    /// Append these bytes (whole reply lines) to the client's output.
    ToClient { client: usize, bytes: Range<usize> },
    /// Call [`super::Ledger::timer`] with `timer` at `at` (or later).
    Arm { at: Instant, timer: Timer },
    /// The instance did not answer in time: stop it and start it again. The shell
    /// reports it down (timed out) once it stopped taking input.
    Restart { instance: usize },
    /// A leaving (retiring or held) running instance has nothing left to do: stop it.
    Drained { instance: usize },
    /// The client may read again (room appeared, its stalled message went through, or
    /// the pool it waited for drained): call [`super::Ledger::client_resume`] first.
    Resume { client: usize },
    /// The health probe sent by [`super::Ledger::probe_send`] is next in line: the
    /// worker can reach it now (its timeout clock starts).
    ProbeReached { instance: usize },
    /// The reply line to the instance's health probe (without `\n`; None: a reply too
    /// long to read). It is orchd's: no client sees it.
    ProbeReply {
        instance: usize,
        line: Option<Range<usize>>,
    },
}

/// The output of ledger events: actions in order, and the bytes they refer to. The
/// shell keeps one, passes it to every event, executes and clears it.
#[derive(Debug, Default)]
pub struct Actions {
    pub list: Vec<Action>,
    pub bytes: Vec<u8>,
}

impl Actions {
    pub fn new() -> Self {
        Actions::default()
    }

    pub fn clear(&mut self) {
        self.list.clear();
        self.bytes.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The bytes of a `ToWorker` / `ToClient` action.
    pub fn data(&self, r: &Range<usize>) -> &[u8] {
        &self.bytes[r.clone()]
    }

    pub(super) fn push(&mut self, a: Action) {
        self.list.push(a);
    }

    /// The latest action carrying bytes, looking back over a few that carry none
    /// (timers, resumes: their order relative to bytes does not matter). Bytes
    /// appended right after its range may extend it: nothing was written between.
    fn last_bytes(&mut self) -> Option<&mut Action> {
        self.list
            .iter_mut()
            .rev()
            .take(4)
            .find(|a| matches!(a, Action::ToWorker { .. } | Action::ToClient { .. }))
    }

    /// Bytes for an instance; appended to the previous action when that one is for
    /// the same instance (a run of messages becomes one write).
    /// `f` writes them (a message in its worker's protocol); nothing written: no
    /// action.
    pub(super) fn worker_bytes_with(&mut self, instance: usize, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        f(&mut self.bytes);
        let end = self.bytes.len();
        if end == start {
            return;
        }
        if let Some(Action::ToWorker { instance: i, bytes }) = self.last_bytes() {
            if *i == instance && bytes.end == start {
                bytes.end = end;
                return;
            }
        }
        self.list.push(Action::ToWorker {
            instance,
            bytes: start..end,
        });
    }

    /// Bytes for a client, written by `f`; merged like [`Actions::worker_bytes_with`].
    pub(super) fn client_bytes(&mut self, client: usize, f: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = self.bytes.len();
        f(&mut self.bytes);
        let end = self.bytes.len();
        if end == start {
            return 0;
        }
        if let Some(Action::ToClient { client: c, bytes }) = self.last_bytes() {
            if *c == client && bytes.end == start {
                bytes.end = end;
                return end - start;
            }
        }
        self.list.push(Action::ToClient {
            client,
            bytes: start..end,
        });
        end - start
    }
}

/// What is left of a client when it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientSummary {
    /// Messages that never got their reply written.
    pub outstanding: u32,
    /// Error replies it was sent.
    pub errors: u64,
}
