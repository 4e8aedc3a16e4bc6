//! The message ledger (SPEC section 5), without I/O: messages, pool queues, instance
//! backlogs, in-flight FIFOs, broadcast gathers, per-client outstanding counts,
//! reorder buffers and byte budgets.
//!
//! The shell feeds it events (a client's lines, a worker's replies, an instance up,
//! retiring, down or gone, a timer, shutdown) with the current time, and executes the
//! [`Action`]s it returns: bytes for workers and clients, timers, instances to restart
//! or stop, clients that may read again. Everything is keyed by the shell's keys
//! (instance, pool, client, listener: slab keys); the ledger never looks anything up
//! outside itself, so it runs the same in a unit test as in the daemon.
//!
//! Life of a message: a client line is matched against its listener's rules; the
//! chosen pool either writes it to an instance at once (`in flight`), parks it in an
//! instance's backlog (hash and broadcast pin a message to one instance), or queues
//! it. Each reply line of an instance answers its oldest in-flight message (a
//! `tagged` instance's replies name their message by ID instead, and each message
//! has its own deadline: see `proto`). When an instance dies or times out, its
//! unanswered messages are delivered again (front of the queue) until `retries` is
//! used up.
//!
//! Batches: a read's worth of client lines ([`Ledger::client_lines`]) goes out in
//! runs, consecutive lines for one round-robin or least-busy instance chosen once
//! (`place.rs`); a read's worth of replies ([`Ledger::worker_output`]) refills its
//! instance and re-arms its deadline once. How many messages an instance may have in
//! flight is the pool's `max_inflight`, or with `"auto"` its own adaptive window
//! (`window.rs`), sized from how quickly its replies come back.
//!
//! Runs: an entry (`Msg`) stands for `count` consecutive messages of one client,
//! fresh, on one round-robin or least-busy rule, with consecutive sequence numbers
//! and their lines in one buffer. A run forms in flight (the next lines of a chunk
//! for the instance just chosen join its entry) and in a pool queue (a line queued
//! behind the same client's run joins it), and a read's lines may join one in one
//! step. The pump hands a queued run out whole or its head, up to the instance's
//! room. Replies answer a run's lines in order, those read together going to the
//! client in one piece; at a death or timeout a run is split back into single
//! messages before redelivery, so attempts and order stay per message (`runs.rs`). Runs only go to `lines` workers; hash, broadcast, redelivered and
//! `tagged`/`node` messages are single entries.
//!
//! Invariants (checked after every event in debug builds, [`Ledger::check`]):
//! - every entry is in exactly one place: a pool queue, an instance backlog (never a
//!   run), or an instance's in-flight FIFO; an instance's `inflight_n` counts the
//!   messages of its entries;
//! - a pool's `waiting` = the messages in its queue + the backlogs of its
//!   instances, and its `bytes` = the bytes its entries retain (a run's whole
//!   buffer, lines already answered or split off included);
//! - a client gets exactly one reply line per message (a broadcast: one per instance
//!   it was sent to), in sending order when the route is `ordered`; its `outstanding`
//!   counts the messages (and broadcasts) still without one;
//! - memory is bounded: a pool holds at most `queue` waiting messages and
//!   `pool_max_bytes` of messages; a client may send more only while it has fewer than
//!   `max_outstanding` messages and `max_client_out` bytes of replies pending.

mod api;
mod payload;
mod runs;
#[cfg(test)]
mod tests;
mod window;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use slab::Slab;

pub use api::{
    Action, Actions, ClientSummary, InstanceView, Limits, PoolSettings, Rule, Timer,
    MAX_CLIENT_OUT, MAX_INFLIGHT_AUTO, MAX_OUTSTANDING, POOL_MAX_BYTES,
};

use crate::config::Strategy;
use crate::router::reorder::Reorder;
use crate::router::strategy::Candidate;

/// Entries keyed by the shell's slab keys.
#[derive(Debug)]
struct Keyed<T>(Vec<Option<T>>);

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed(Vec::new())
    }
}

impl<T> Keyed<T> {
    fn get(&self, k: usize) -> Option<&T> {
        self.0.get(k).and_then(Option::as_ref)
    }
    fn get_mut(&mut self, k: usize) -> Option<&mut T> {
        self.0.get_mut(k).and_then(Option::as_mut)
    }
    fn insert(&mut self, k: usize, v: T) {
        if self.0.len() <= k {
            self.0.resize_with(k + 1, || None);
        }
        self.0[k] = Some(v);
    }
    fn remove(&mut self, k: usize) -> Option<T> {
        let v = self.0.get_mut(k).and_then(Option::take);
        while matches!(self.0.last(), Some(None)) {
            self.0.pop();
        }
        v
    }
    fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}

impl<T> std::ops::Index<usize> for Keyed<T> {
    type Output = T;
    fn index(&self, k: usize) -> &T {
        self.get(k).expect("ledger: unknown key")
    }
}

impl<T> std::ops::IndexMut<usize> for Keyed<T> {
    fn index_mut(&mut self, k: usize) -> &mut T {
        self.get_mut(k).expect("ledger: unknown key")
    }
}

/// How a message is bound to instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// Any instance, chosen by round-robin or least-busy.
    Any(Strategy),
    /// The instance rendezvous hashing picks for this key among live instances.
    Hash(u64),
    /// This instance index (a broadcast copy).
    Slot(u32),
}

#[derive(Debug)]
struct Msg {
    client: usize,
    client_id: u64,
    /// Position in the client's reorder buffer (ordered routes): of its first
    /// unanswered line when it is a run.
    seq: Option<u64>,
    /// The message with its trailing `\n`; a run's lines one after another (the
    /// unanswered ones are the last `count`).
    payload: payload::Payload,
    /// Messages this entry stands for: 1, or a run of consecutive lines of one
    /// client for one instance, in flight together (see `runs.rs`).
    count: u32,
    pool: usize,
    pin: Pin,
    timeout: Option<Duration>,
    retries: u32,
    /// Failed attempts so far: times it was the oldest unanswered message of an
    /// instance that died or timed out (the one that instance was working on).
    failures: u32,
    /// Broadcast copy: (gather, position).
    gather: Option<(usize, usize)>,
    queued_at: Instant,
}

/// A message's delivery terms, from its rule.
#[derive(Debug, Clone, Copy)]
struct Terms {
    timeout: Option<Duration>,
    retries: u32,
}

/// Collects the replies of a broadcast, released together in instance order.
#[derive(Debug)]
struct Gather {
    client: usize,
    client_id: u64,
    seq: Option<u64>,
    replies: Vec<Option<Vec<u8>>>,
    remaining: usize,
    errors: bool,
}

#[derive(Debug)]
struct Pool {
    settings: PoolSettings,
    /// Instance keys by index (the shell's slots).
    slots: Vec<usize>,
    /// Instances on their way out.
    retiring: Vec<usize>,
    /// Removed from the config: draining.
    removed: bool,
    queue: VecDeque<usize>,
    /// Round-robin / least-busy cursor (an instance index).
    cursor: u32,
    /// Messages waiting: queue + instance backlogs.
    waiting: usize,
    /// Bytes of every message of this pool that exists (waiting or in flight).
    bytes: usize,
    /// Clients stalled on this pool's full queue: (key, id).
    waiters: Vec<(usize, u64)>,
    /// Since when the pool has had no live instance (queue expiry counts from here).
    empty_since: Option<Instant>,
    expire_at: Option<Instant>,
    expire_gen: u64,
    /// Error replies to its messages by reason (metrics), in first-seen order.
    errors: Vec<(Box<str>, u64)>,
}

impl Pool {
    /// No instance slots remain (removed, or scaled to 0): its retiring instances
    /// work off what is queued.
    fn draining(&self) -> bool {
        self.removed || self.slots.is_empty()
    }
}

#[derive(Debug)]
struct Inst {
    pool: usize,
    index: u32,
    label: String,
    view: InstanceView,
    /// Its in-flight entries, oldest first (a run is one entry).
    inflight: VecDeque<usize>,
    /// Messages in flight: the entries' counts added up.
    inflight_n: usize,
    backlog: VecDeque<usize>,
    answered: u64,
    /// When the oldest in-flight message's `timeout` clock started.
    head_since: Option<Instant>,
    /// At death: bytes of in-flight messages the worker never read.
    unread: usize,
    deadline_at: Option<Instant>,
    deadline_gen: u64,
    /// orchd's own health probe in this instance's in-flight order (see `probe.rs`).
    probe: Option<probe::InFlightProbe>,
    /// Its in-flight window when the pool's `max_inflight` is "auto".
    window: window::Window,
}

impl Inst {
    /// Messages it may have in flight under the pool's `max_inflight`.
    fn room(&self, max_inflight: u32) -> usize {
        if max_inflight == MAX_INFLIGHT_AUTO {
            self.window.size() as usize
        } else {
            max_inflight as usize
        }
    }
}

#[derive(Debug)]
struct Client {
    id: u64,
    /// Its listener, while that has rules (None: every line gets `no route`).
    listener: Option<usize>,
    order: Reorder<Vec<u8>>,
    /// Bytes of replies held in `order`, waiting for an earlier one.
    order_bytes: usize,
    /// Bytes handed to the shell and not yet reported written.
    unwritten: usize,
    /// Messages read and not yet answered.
    outstanding: u32,
    /// A message that found its pool's queue full; retried when the pool drains.
    stalled: Option<Vec<u8>>,
    /// The shell was told to stop reading (a line stalled or a budget is used up):
    /// it gets a [`Action::Resume`] once it may go on.
    paused: bool,
    errors: u64,
}

/// A reply on its way to a client.
#[derive(Clone)]
enum Reply<'a> {
    /// A worker's reply line (without `\n`).
    Line(&'a [u8]),
    /// An error reason; written as `error_prefix + reason`.
    Error(&'a str),
    /// A broadcast's replies, each already `\n`-terminated; true if any is an error.
    Gathered(Vec<u8>, bool),
}

impl Reply<'_> {
    fn is_error(&self) -> bool {
        match self {
            Reply::Line(_) => false,
            Reply::Error(_) => true,
            Reply::Gathered(_, e) => *e,
        }
    }

    fn write_to(&self, out: &mut Vec<u8>, prefix: &str) {
        match self {
            Reply::Line(l) => {
                out.extend_from_slice(l);
                out.push(b'\n');
            }
            Reply::Error(why) => {
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(why.as_bytes());
                out.push(b'\n');
            }
            Reply::Gathered(b, _) => out.extend_from_slice(b),
        }
    }
}

/// Why a delivery attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Died,
    TimedOut,
}

enum Placement {
    Assign(usize),
    Backlog(usize),
    Wait,
    Fail(&'static str),
}

/// Above this many messages, clients and instances, a debug daemon skips the
/// invariant check after events (unit tests always run it).
#[cfg(debug_assertions)]
const CHECK_MAX: usize = 256;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Ledger {
    limits: Limits,
    rules: Vec<Rule>,
    pools: Keyed<Pool>,
    instances: Keyed<Inst>,
    clients: Keyed<Client>,
    msgs: Slab<Msg>,
    gathers: Slab<Gather>,
    next_client_id: u64,
    next_gen: u64,
    /// Instances whose workers speak another protocol than `lines` (see `proto`).
    proto: Keyed<proto::ProtoState>,
    /// Scratch buffers for choosing an instance (see `fill_candidates`).
    cand_keys: Vec<usize>,
    cands: Vec<Candidate>,
    /// Lines of the chunk being submitted ([`Ledger::client_lines`]) from the current
    /// one on; 0 outside it.
    run_budget: usize,
    /// Lines of that chunk, all of them.
    run_lines: usize,
    /// The instance that takes the next messages of that chunk without a new choice.
    run: Option<Run>,
}

/// A run: consecutive messages of one chunk for one instance, chosen once (see
/// `place.rs`).
#[derive(Debug, Clone, Copy)]
struct Run {
    pool: usize,
    strategy: Strategy,
    inst: usize,
    /// More messages it may take in this run.
    left: usize,
    /// Its in-flight entry the next lines may join (see `runs.rs`).
    msg: Option<usize>,
}

mod events;
mod place;
mod probe;
mod proto;

impl Ledger {
    pub fn new(limits: Limits) -> Ledger {
        Ledger {
            limits,
            ..Ledger::default()
        }
    }

    fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    // ----- queries ------------------------------------------------------------------

    /// Nothing in flight or waiting.
    pub fn is_idle(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Messages that exist (waiting or in flight), broadcast copies counted apiece.
    pub fn message_count(&self) -> usize {
        self.msgs.iter().map(|(_, m)| m.count as usize).sum()
    }

    /// (in flight, answered) of an instance.
    pub fn instance_counts(&self, k: usize) -> (usize, u64) {
        self.instances
            .get(k)
            .map(|i| (i.inflight_n, i.answered))
            .unwrap_or((0, 0))
    }

    /// Messages waiting in a pool (queue and backlogs).
    pub fn pool_waiting(&self, pool: usize) -> usize {
        self.pools.get(pool).map(|p| p.waiting).unwrap_or(0)
    }

    /// Bytes of the messages a pool holds (waiting or in flight).
    pub fn pool_bytes(&self, pool: usize) -> usize {
        self.pools.get(pool).map(|p| p.bytes).unwrap_or(0)
    }

    /// The pool's settings as last set.
    pub fn pool_settings(&self, pool: usize) -> Option<&PoolSettings> {
        self.pools.get(pool).map(|p| &p.settings)
    }

    /// The pool was removed from the config (it drains).
    pub fn pool_is_removed(&self, pool: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| p.removed)
    }

    /// Known to have no live instance.
    pub fn pool_none_live(&self, pool: usize) -> bool {
        self.pools
            .get(pool)
            .is_some_and(|p| p.empty_since.is_some())
    }

    /// The client may send more: nothing stalled, and its budgets have room.
    pub fn client_can_read(&self, c: usize) -> bool {
        self.clients.get(c).is_some_and(|c| {
            c.stalled.is_none()
                && c.outstanding < self.limits.max_outstanding
                && c.unwritten + c.order_bytes < self.limits.max_client_out
        })
    }

    /// Messages of the client still without a reply handed to the shell.
    pub fn client_outstanding(&self, c: usize) -> u32 {
        self.clients.get(c).map(|c| c.outstanding).unwrap_or(0)
    }

    /// Has a message stalled on a full pool.
    pub fn client_stalled(&self, c: usize) -> bool {
        self.clients.get(c).is_some_and(|c| c.stalled.is_some())
    }

    /// Every message read from it was answered (replies handed to the shell).
    pub fn client_answered(&self, c: usize) -> bool {
        self.clients
            .get(c)
            .is_none_or(|c| c.outstanding == 0 && c.stalled.is_none())
    }

    /// Error replies sent to the client so far.
    pub fn client_errors(&self, c: usize) -> u64 {
        self.clients.get(c).map(|c| c.errors).unwrap_or(0)
    }

    /// Check the invariants of the module documentation. Runs after every event in
    /// debug builds: always in unit tests, and in a debug daemon while the ledger is
    /// small (it is O(size), and a debug daemon under load would crawl).
    #[cfg(debug_assertions)]
    pub fn check(&self) {
        let size = self.msgs.len() + self.clients.0.len() + self.instances.0.len();
        if !cfg!(test) && size > CHECK_MAX {
            return;
        }
        self.check_all();
    }

    #[cfg(not(debug_assertions))]
    #[inline]
    pub fn check(&self) {}

    /// Check every invariant now, whatever the size (tests, the model test).
    pub fn check_all(&self) {
        let npools = self.pools.0.len();
        // Each message in exactly one place.
        let mut seen = vec![0u8; self.msgs.capacity()];
        let mut waiting = vec![0usize; npools];
        for (pk, p) in self.pools.iter() {
            for &m in &p.queue {
                assert!(self.msgs.contains(m), "stale message {m} in a queue");
                assert_eq!(self.msgs[m].pool, pk, "message {m} queued in another pool");
                seen[m] += 1;
            }
            waiting[pk] += p
                .queue
                .iter()
                .map(|&m| self.msgs[m].count as usize)
                .sum::<usize>();
        }
        for (_, i) in self.instances.iter() {
            if let Some(p) = &i.probe {
                assert!(
                    p.ahead <= i.inflight.len(),
                    "{}: probe behind nothing",
                    i.label
                );
            }
            for &m in i.inflight.iter().chain(&i.backlog) {
                assert!(self.msgs.contains(m), "stale message {m} at {}", i.label);
                assert_eq!(self.msgs[m].pool, i.pool, "message {m} at {}", i.label);
                seen[m] += 1;
            }
            let n: usize = i
                .inflight
                .iter()
                .map(|&m| self.msgs[m].count as usize)
                .sum();
            assert_eq!(i.inflight_n, n, "{}: messages in flight", i.label);
            for &m in &i.backlog {
                assert_eq!(self.msgs[m].count, 1, "a run waits at {}", i.label);
            }
            if let Some(w) = waiting.get_mut(i.pool) {
                *w += i.backlog.len();
            }
        }
        // Budgets: what each pool holds; what each client still waits for.
        let mut bytes = vec![0usize; npools];
        let mut outstanding = vec![0u32; self.clients.0.len()];
        let mut copies = vec![0usize; self.gathers.capacity()];
        let mut count = |client: usize, id: u64| {
            if self.clients.get(client).is_some_and(|c| c.id == id) {
                outstanding[client] += 1;
            }
        };
        for (m, msg) in self.msgs.iter() {
            assert_eq!(seen[m], 1, "message {m} is in {} places", seen[m]);
            assert!(
                self.pools.get(msg.pool).is_some(),
                "message {m} of an unknown pool"
            );
            bytes[msg.pool] += msg.payload.retained();
            assert!(msg.count >= 1, "message {m} stands for nothing");
            if msg.count > 1 {
                assert!(
                    matches!(msg.pin, Pin::Any(_)) && msg.gather.is_none() && msg.failures == 0,
                    "run {m} is not a fresh round-robin or least-busy message"
                );
            }
            match msg.gather {
                None => {
                    for _ in 0..msg.count {
                        count(msg.client, msg.client_id);
                    }
                }
                Some((g, pos)) => {
                    assert!(
                        self.gathers[g].replies[pos].is_none(),
                        "copy {m} answered twice"
                    );
                    copies[g] += 1;
                }
            }
        }
        for (g, gather) in self.gathers.iter() {
            count(gather.client, gather.client_id);
            let open = gather.replies.iter().filter(|r| r.is_none()).count();
            assert_eq!(gather.remaining, open, "broadcast {g}");
            assert_eq!(copies[g], open, "broadcast {g}: one copy per missing reply");
        }
        for (pk, p) in self.pools.iter() {
            assert_eq!(p.waiting, waiting[pk], "pool {} waiting", p.settings.name);
            assert_eq!(p.bytes, bytes[pk], "pool {} bytes", p.settings.name);
        }
        assert!(
            self.run.is_none() && self.run_budget == 0,
            "a run outlived its chunk"
        );
        for (ck, c) in self.clients.iter() {
            assert_eq!(c.outstanding, outstanding[ck], "client {ck} outstanding");
            if c.order.is_empty() {
                assert_eq!(c.order_bytes, 0, "client {ck}: bytes held without replies");
            }
        }
        self.check_tags();
    }
}
