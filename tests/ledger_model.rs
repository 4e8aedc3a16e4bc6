//! Model-based property test of the message ledger (`router::Ledger`, SPEC section 5).
//!
//! A small simulated world — clients on three listeners, three pools of simulated
//! workers that echo what they read (the third speaks `tagged` and answers out of
//! order, sometimes twice), a clock and a timer list — is driven by random
//! interleavings of: client messages on several routes and strategies, worker reads and
//! replies, deaths (with unread input), hangs followed by timeouts, instances replaced
//! (retiring and drained), clients that stop reading their replies and clients that
//! disconnect, and orchd's own health probes written in among the messages. The
//! second pool's instances come up not ready (its `ready = { probe = true }`): they
//! take health probes but no message until they get ready. The ledger decides; the
//! simulation executes its actions like the daemon does, and checks them against a
//! reference model of what every client is owed:
//!
//! - every message gets exactly one reply line (a broadcast: one line per target), the
//!   worker's or an error, never two, never one meant for someone else;
//! - in sending order on `ordered` routes;
//! - messages go only to ready instances (probes also to instances not ready yet);
//! - a health probe's reply goes to orchd ([`Action::ProbeReply`]), is the echo of that
//!   very probe, and comes only after the probe was reached; no client sees one;
//! - nothing is lost: once the world settles, the ledger is idle and every client that
//!   stayed connected has all its replies;
//! - memory stays within the budgets: pool queue and bytes, client outstanding and
//!   unwritten bytes;
//! - the ledger's own invariants (`Ledger::check`) hold after every event (debug
//!   builds check them inside every event).
//!
//! `PROPTEST_CASES` sets the number of cases (default below).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use orchd::config::{Pattern, Protocol, Strategy as Route};
use orchd::protocol::tagged;
use orchd::router::ledger::{
    Action, Actions, InstanceView, Ledger, Limits, PoolSettings, Rule, Timer,
};
use proptest::prelude::*;

const PREFIX: &str = "ERR ";
const MAX_OUTSTANDING: u32 = 6;
const MAX_CLIENT_OUT: usize = 160;
const POOL_MAX_BYTES: usize = 120;
/// Lines the simulated shell hands the ledger per read (the daemon: one read's worth).
const LINES_PER_READ: usize = 3;
/// Longest message the simulation sends (with its `\n`).
const MAX_MSG: usize = 16;

/// Pools: (name, slots, max_inflight, queue).
const POOLS: [(&str, usize, u32, u32); 3] = [("p0", 3, 2, 4), ("p1", 2, 1, 3), ("p2", 2, 3, 4)];
/// The pool whose workers speak `tagged`: they answer newest first, and repeat an
/// answer now and then (the repeat must be dropped).
const TAGGED_POOL: usize = 2;
/// The pool with `ready = { probe = true }`: its instances come up not ready and get
/// ready later (an `Op::Ready`); until then they take probes, not messages.
const GATED_POOL: usize = 1;
/// Client keys and their listeners: 0 and 1 ordered routes, 2 unordered, 3 broadcast,
/// 4 a listener without rules, 5 and 6 listeners whose one rule takes every line
/// (ordered round-robin, unordered least-busy: their lines join runs en bloc).
const CLIENT_LISTENER: [usize; 7] = [0, 0, 1, 3, 2, 4, 5];

fn pattern(re: &str) -> Option<Pattern> {
    Some(Pattern(regex::bytes::Regex::new(re).expect("test regex")))
}

fn rules() -> Vec<Rule> {
    let rule = |listener, pool, matcher: &str, strategy, timeout_ms: u64, retries, ordered| Rule {
        listener,
        pool,
        matcher: if matcher.is_empty() {
            None
        } else {
            pattern(matcher)
        },
        strategy,
        key: if strategy == Route::Hash {
            pattern("^h(\\d)")
        } else {
            None
        },
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        retries,
        ordered,
    };
    vec![
        // Listener 0: hash by key, round-robin for the rest; ordered.
        rule(0, 0, "^h", Route::Hash, 3000, 1, true),
        rule(0, 1, "^l", Route::LeastBusy, 0, 2, true),
        rule(0, 2, "^t", Route::RoundRobin, 2000, 2, true),
        rule(0, 0, "", Route::RoundRobin, 3000, 2, true),
        // Listener 1: unordered.
        rule(1, 1, "^l", Route::LeastBusy, 2000, 0, false),
        rule(1, 2, "^t", Route::LeastBusy, 1500, 1, false),
        rule(1, 0, "", Route::LeastBusy, 0, 1, false),
        // Listener 3: broadcast, ordered.
        rule(3, 1, "", Route::Broadcast, 2500, 1, true),
        // Listeners 4 and 5: every line to pool 0.
        rule(4, 0, "", Route::RoundRobin, 3000, 2, true),
        rule(5, 0, "", Route::LeastBusy, 0, 1, false),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// Client sends `n` messages of a kind (the first letter picks the route).
    Send { client: usize, kind: u8, n: usize },
    /// Worker of (pool, slot) reads up to `read` lines and answers up to `answer`.
    Work {
        pool: usize,
        slot: usize,
        read: usize,
        answer: usize,
    },
    /// Worker of (pool, slot) dies.
    Die { pool: usize, slot: usize },
    /// Dead instances of the pool come back.
    Up { pool: usize },
    /// The instance of (pool, slot) is replaced: it retires, a new one takes the slot.
    Replace { pool: usize, slot: usize },
    /// Time passes; due timers fire.
    Advance { ms: u64 },
    /// The client's replies are written out.
    Drain { client: usize },
    /// The client disconnects and a new one connects in its place.
    Reconnect { client: usize },
    /// orchd sends a health probe to the instance of (pool, slot).
    Probe { pool: usize, slot: usize },
    /// The instance of (pool, slot) gets ready (its first probe passed).
    Ready { pool: usize, slot: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CLIENT_LISTENER.len(), prop::sample::select(b"hxlbt".to_vec()), 1..5usize)
            .prop_map(|(client, kind, n)| Op::Send { client, kind, n }),
        6 => (0..POOLS.len(), 0..3usize, 0..4usize, 0..4usize)
            .prop_map(|(pool, slot, read, answer)| Op::Work { pool, slot, read, answer }),
        1 => (0..POOLS.len(), 0..3usize).prop_map(|(pool, slot)| Op::Die { pool, slot }),
        2 => (0..POOLS.len()).prop_map(|pool| Op::Up { pool }),
        1 => (0..POOLS.len(), 0..3usize).prop_map(|(pool, slot)| Op::Replace { pool, slot }),
        2 => (0..4000u64).prop_map(|ms| Op::Advance { ms }),
        3 => (0..CLIENT_LISTENER.len()).prop_map(|client| Op::Drain { client }),
        1 => (0..CLIENT_LISTENER.len()).prop_map(|client| Op::Reconnect { client }),
        2 => (0..2usize, 0..3usize).prop_map(|(pool, slot)| Op::Probe { pool, slot }),
        2 => (0..POOLS.len(), 0..3usize).prop_map(|(pool, slot)| Op::Ready { pool, slot }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Not running, will come back (backoff).
    Down,
    Running,
    /// Running, retiring: takes no new work.
    Retiring,
    /// Stopped for good and forgotten.
    Gone,
}

#[derive(Debug)]
struct Worker {
    pool: usize,
    index: u32,
    life: Life,
    /// Bytes written to its stdin and not read yet.
    pipe: Vec<u8>,
    /// Lines read and not answered yet.
    read: VecDeque<Vec<u8>>,
    /// The health probe in flight: the reply line it must get (the worker's echo).
    probe: Option<Vec<u8>>,
    /// The ledger said the worker can reach the probe.
    probe_reached: bool,
    /// Its process is ready (always, outside the gated pool): it takes messages.
    ready: bool,
}

impl Worker {
    fn view(&self) -> InstanceView {
        let running = matches!(self.life, Life::Running | Life::Retiring);
        InstanceView {
            running,
            writable: running && self.ready,
            has_input: running,
            leaving: self.life == Life::Retiring,
            coming_back: matches!(self.life, Life::Running | Life::Down),
        }
    }
}

/// What a client sent, and what the model expects back.
#[derive(Debug, Default)]
struct Session {
    listener: usize,
    /// Messages in sending order (without `\n`).
    sent: Vec<Vec<u8>>,
    /// Bytes not read by the "shell" yet (the socket's receive buffer).
    input: Vec<u8>,
    /// Replies handed to the client and not yet written.
    unwritten: usize,
    /// Reply lines received.
    got: Vec<Vec<u8>>,
}

struct World {
    ledger: Ledger,
    out: Actions,
    now: Instant,
    timers: Vec<(Instant, Timer)>,
    workers: Vec<Worker>,
    /// Per pool: instance keys by slot, and retiring ones.
    slots: Vec<Vec<usize>>,
    retiring: Vec<Vec<usize>>,
    sessions: Vec<Session>,
    /// Unique message numbers.
    next_msg: u64,
    /// Clients resumed while executing actions: read once the batch is done.
    exec_later: Vec<usize>,
    /// Shutdown: clients are read no more.
    stopped: bool,
    /// Per pool: the most instances (slots and retiring) it had at once.
    peak_instances: Vec<usize>,
}

impl World {
    fn new() -> World {
        let now = Instant::now();
        let mut w = World {
            ledger: Ledger::new(Limits {
                error_prefix: PREFIX.into(),
                max_outstanding: MAX_OUTSTANDING,
                max_client_out: MAX_CLIENT_OUT,
                pool_max_bytes: POOL_MAX_BYTES,
            }),
            out: Actions::new(),
            now,
            timers: Vec::new(),
            workers: Vec::new(),
            slots: vec![Vec::new(); POOLS.len()],
            retiring: vec![Vec::new(); POOLS.len()],
            sessions: Vec::new(),
            next_msg: 0,
            exec_later: Vec::new(),
            stopped: false,
            peak_instances: vec![0; POOLS.len()],
        };
        w.ledger.set_rules(rules());
        for (p, &(name, count, max_inflight, queue)) in POOLS.iter().enumerate() {
            let settings = PoolSettings {
                name: name.into(),
                max_inflight,
                queue,
            };
            w.ledger.pool_set(p, settings);
            for index in 0..count {
                let k = w.add_worker(p, index as u32);
                w.slots[p].push(k);
            }
            w.members(p);
            for slot in 0..count {
                let k = w.slots[p][slot];
                w.up(k);
            }
        }
        for (c, &listener) in CLIENT_LISTENER.iter().enumerate() {
            w.sessions.push(Session {
                listener,
                ..Session::default()
            });
            w.ledger.client_open(c, Some(listener));
        }
        w.exec();
        w
    }

    fn add_worker(&mut self, pool: usize, index: u32) -> usize {
        self.workers.push(Worker {
            pool,
            index,
            life: Life::Down,
            pipe: Vec::new(),
            read: VecDeque::new(),
            probe: None,
            probe_reached: false,
            ready: false,
        });
        let k = self.workers.len() - 1;
        self.view(k);
        if pool == TAGGED_POOL {
            self.ledger.instance_protocol(k, Protocol::Tagged);
        }
        k
    }

    fn view(&mut self, k: usize) {
        let w = &self.workers[k];
        let label = format!("p{}.{} (#{k})", w.pool, w.index);
        self.ledger
            .instance_view(k, w.pool, w.index, &label, w.view());
    }

    fn members(&mut self, pool: usize) {
        let now = self.slots[pool].len() + self.retiring[pool].len();
        self.peak_instances[pool] = self.peak_instances[pool].max(now);
        self.ledger
            .pool_members(pool, &self.slots[pool], &self.retiring[pool]);
    }

    fn up(&mut self, k: usize) {
        if self.workers[k].life != Life::Down {
            return;
        }
        self.workers[k].life = Life::Running;
        // Like the daemon: reported up at spawn; with `ready`, it takes messages only
        // once it is ready as well.
        self.workers[k].ready = self.workers[k].pool != GATED_POOL;
        self.view(k);
        self.ledger.instance_up(k, self.now, &mut self.out);
        self.exec();
    }

    /// A running instance of the gated pool gets ready: up again, now taking work (a
    /// retiring one too: then it works off what waits for it).
    fn ready(&mut self, k: usize) {
        let w = &mut self.workers[k];
        if w.ready || !matches!(w.life, Life::Running | Life::Retiring) {
            return;
        }
        w.ready = true;
        self.view(k);
        self.ledger.instance_up(k, self.now, &mut self.out);
        self.exec();
    }

    /// The worker's process is gone: like the daemon, report what it never read, then
    /// the death (its replies written before were delivered already).
    fn kill(&mut self, k: usize, timed_out: bool) {
        let w = &mut self.workers[k];
        let retiring = match w.life {
            Life::Running => false,
            Life::Retiring => true,
            Life::Down | Life::Gone => return,
        };
        let unread = w.pipe.len();
        w.pipe.clear();
        w.read.clear();
        w.probe = None;
        w.probe_reached = false;
        let pool = w.pool;
        if retiring {
            self.forget(k, unread, timed_out);
            return;
        }
        self.workers[k].life = Life::Down;
        self.view(k);
        self.ledger.instance_unread(k, unread);
        self.ledger
            .instance_down(k, timed_out, self.now, &mut self.out);
        self.ledger
            .pool_liveness(pool, true, self.now, &mut self.out);
        self.exec();
    }

    /// A retiring instance stopped: it is gone for good.
    fn forget(&mut self, k: usize, unread: usize, timed_out: bool) {
        let pool = self.workers[k].pool;
        self.workers[k].life = Life::Gone;
        self.view(k);
        self.ledger.instance_unread(k, unread);
        self.ledger
            .instance_down(k, timed_out, self.now, &mut self.out);
        self.retiring[pool].retain(|&r| r != k);
        self.members(pool);
        self.ledger
            .instance_gone(k, timed_out, self.now, &mut self.out);
        self.ledger.instance_forget(k);
        self.ledger
            .pool_liveness(pool, true, self.now, &mut self.out);
        self.exec();
    }

    fn replace(&mut self, pool: usize, slot: usize) {
        let Some(&old) = self.slots[pool].get(slot) else {
            return;
        };
        let index = self.workers[old].index;
        let new = self.add_worker(pool, index);
        self.slots[pool][slot] = new;
        match self.workers[old].life {
            Life::Running => {
                self.retiring[pool].push(old);
                self.members(pool);
                self.workers[old].life = Life::Retiring;
                self.view(old);
                self.ledger.instance_retiring(old, self.now, &mut self.out);
                self.exec();
            }
            _ => {
                // Not running: forgotten at once (nothing in flight can be there).
                self.members(pool);
                self.workers[old].life = Life::Gone;
                self.view(old);
                self.ledger
                    .instance_gone(old, false, self.now, &mut self.out);
                self.ledger.instance_forget(old);
                self.exec();
            }
        }
        self.up(new);
    }

    fn work(&mut self, k: usize, read: usize, answer: usize) {
        let w = &mut self.workers[k];
        if !matches!(w.life, Life::Running | Life::Retiring) {
            return;
        }
        for _ in 0..read {
            let Some(nl) = w.pipe.iter().position(|&b| b == b'\n') else {
                break;
            };
            let line: Vec<u8> = w.pipe.drain(..=nl).collect();
            w.read.push_back(line[..line.len() - 1].to_vec());
        }
        if w.pool == TAGGED_POOL {
            return self.work_tagged(k, answer);
        }
        let mut chunk = Vec::new();
        for _ in 0..answer {
            let Some(line) = w.read.pop_front() else {
                break;
            };
            chunk.extend_from_slice(&line);
            chunk.extend_from_slice(format!("@{k}\n").as_bytes());
        }
        if !chunk.is_empty() {
            self.ledger
                .worker_output(k, &chunk, self.now, &mut self.out);
            self.exec();
        }
    }

    /// A tagged worker answers up to `answer` of what it read, newest first; with
    /// `answer` 3 it repeats its last answer (a duplicate ID, dropped by the ledger).
    fn work_tagged(&mut self, k: usize, answer: usize) {
        for i in 0..answer {
            let Some(line) = self.workers[k].read.pop_back() else {
                break;
            };
            let (tag, msg) = tagged::parse_reply(&line).expect("ID SP message from orchd");
            let mut reply = msg.to_vec();
            reply.extend_from_slice(format!("@{k}").as_bytes());
            for _ in 0..if answer == 3 && i == 0 { 2 } else { 1 } {
                self.ledger
                    .worker_reply_tagged(k, tag, Ok(&reply), self.now, &mut self.out);
                self.exec();
            }
        }
    }

    /// A health probe, if the instance can take one (the ledger refuses a second).
    fn probe(&mut self, k: usize) {
        let line = format!("PING{}\n", self.next_msg).into_bytes();
        let had = self.workers[k].probe.is_some();
        let running = matches!(self.workers[k].life, Life::Running | Life::Retiring);
        let sent = self.ledger.probe_send(k, &line, self.now, &mut self.out);
        assert_eq!(sent, running && !had, "probe_send to {k}");
        if sent {
            // The simulated worker echoes it with its tag, like any line.
            let mut want = line[..line.len() - 1].to_vec();
            want.extend_from_slice(format!("@{k}").as_bytes());
            self.workers[k].probe = Some(want);
        }
        self.exec();
    }

    fn send(&mut self, c: usize, kind: u8, n: usize) {
        for _ in 0..n {
            self.next_msg += 1;
            let msg = format!(
                "{}{}c{c}m{}",
                kind as char,
                self.next_msg % 10,
                self.next_msg
            );
            assert!(msg.len() < MAX_MSG);
            let s = &mut self.sessions[c];
            s.sent.push(msg.clone().into_bytes());
            s.input.extend_from_slice(msg.as_bytes());
            s.input.push(b'\n');
        }
        self.read_client(c);
    }

    /// The shell reads from a client while the ledger lets it.
    fn read_client(&mut self, c: usize) {
        loop {
            let s = &self.sessions[c];
            if self.stopped || s.input.is_empty() || !self.ledger.client_may_read(c) {
                return;
            }
            let end = s
                .input
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .nth(LINES_PER_READ - 1)
                .map_or(s.input.len(), |(i, _)| i + 1);
            let chunk = s.input[..end].to_vec();
            // Even clients go through `client_lines` (what the daemon uses: runs, and
            // it stops at the client's budgets), odd ones through `client_data`.
            let taken = if c.is_multiple_of(2) {
                self.ledger.client_lines(c, &chunk, self.now, &mut self.out)
            } else {
                self.ledger.client_data(c, &chunk, self.now, &mut self.out)
            };
            self.sessions[c].input.drain(..taken);
            self.exec();
            if taken < chunk.len() && self.ledger.client_stalled(c) {
                return;
            }
        }
    }

    fn drain(&mut self, c: usize) {
        let n = std::mem::take(&mut self.sessions[c].unwritten);
        if n > 0 {
            self.ledger.client_wrote(c, n, &mut self.out);
            self.exec();
        }
        self.read_client(c);
    }

    fn reconnect(&mut self, c: usize) {
        self.ledger.client_gone(c);
        let listener = self.sessions[c].listener;
        self.sessions[c] = Session {
            listener,
            ..Session::default()
        };
        self.ledger.client_open(c, Some(listener));
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        loop {
            self.timers.sort_by_key(|&(at, _)| at);
            let due = self
                .timers
                .iter()
                .take_while(|&&(at, _)| at <= self.now)
                .count();
            if due == 0 {
                return;
            }
            let fire: Vec<Timer> = self.timers.drain(..due).map(|(_, t)| t).collect();
            for t in fire {
                self.ledger.timer(t, self.now, &mut self.out);
                self.exec();
            }
        }
    }

    /// Execute the ledger's actions like the daemon does, until there are none.
    fn exec(&mut self) {
        while !self.out.is_empty() {
            let list = std::mem::take(&mut self.out.list);
            let bytes = std::mem::take(&mut self.out.bytes);
            for a in list {
                match a {
                    Action::ToWorker { instance, bytes: r } => {
                        let w = &mut self.workers[instance];
                        assert!(
                            matches!(w.life, Life::Running | Life::Retiring),
                            "bytes for instance {instance} that is {:?}",
                            w.life
                        );
                        let data = &bytes[r];
                        assert!(data.ends_with(b"\n"), "partial message for a worker");
                        assert!(
                            w.ready
                                || data
                                    .split_inclusive(|&b| b == b'\n')
                                    .all(|l| l.starts_with(b"PING")),
                            "a message for instance {instance}, not ready yet: {:?}",
                            text(data)
                        );
                        w.pipe.extend_from_slice(data);
                    }
                    Action::ToClient { client, bytes: r } => {
                        let data = &bytes[r];
                        assert!(data.ends_with(b"\n"), "partial reply for a client");
                        let s = &mut self.sessions[client];
                        s.unwritten += data.len();
                        for line in data.split(|&b| b == b'\n') {
                            s.got.push(line.to_vec());
                        }
                        s.got.pop(); // after the last `\n`
                    }
                    Action::Arm { at, timer } => self.timers.push((at, timer)),
                    Action::Restart { instance } => {
                        // Stopped at once (its group killed) and restarted later.
                        self.kill(instance, true);
                    }
                    Action::Drained { instance } => {
                        assert_eq!(
                            self.workers[instance].life,
                            Life::Retiring,
                            "drained instance {instance} is not retiring"
                        );
                        // A probe does not hold up draining: it may be all that is
                        // left, and is dropped with the instance. A tagged worker may
                        // still hold messages the ledger took back (overdue, sent
                        // elsewhere), read or not: their replies would be dropped.
                        let w = &self.workers[instance];
                        let is_probe = |l: &[u8]| l.starts_with(b"PING");
                        let unread = if w.pool == TAGGED_POOL {
                            0
                        } else {
                            let left: Vec<&[u8]> = w
                                .pipe
                                .split_inclusive(|&b| b == b'\n')
                                .filter(|l| !is_probe(l))
                                .collect();
                            assert!(left.is_empty(), "drained instance {instance} has input");
                            assert!(w.read.iter().all(|l| is_probe(l)));
                            w.pipe.len()
                        };
                        self.forget(instance, unread, false);
                    }
                    Action::ProbeReached { instance } => {
                        let w = &mut self.workers[instance];
                        assert!(w.probe.is_some(), "probe reached without one sent");
                        assert!(!w.probe_reached, "probe reached twice");
                        w.probe_reached = true;
                    }
                    Action::ProbeReply { instance, line } => {
                        // The probe's own reply, never a client's; reached first.
                        let w = &mut self.workers[instance];
                        let want = w.probe.take().expect("probe reply without a probe");
                        assert!(w.probe_reached, "probe answered before it was reached");
                        w.probe_reached = false;
                        let got = line.map(|r| bytes[r].to_vec());
                        assert_eq!(got.as_deref(), Some(&want[..]), "probe reply");
                    }
                    Action::Resume { client } => {
                        if self.ledger.client_resume(client, self.now, &mut self.out) {
                            // Read after this batch: the shell pumps at the end of
                            // the turn.
                            self.exec_later.push(client);
                        }
                    }
                }
            }
        }
        let later = std::mem::take(&mut self.exec_later);
        for c in later {
            self.read_client(c);
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Send { client, kind, n } => self.send(client, kind, n),
            Op::Work {
                pool,
                slot,
                read,
                answer,
            } => {
                if let Some(&k) = self.slots[pool].get(slot) {
                    self.work(k, read, answer);
                }
                // Retiring ones work too (they finish what they have).
                for k in self.retiring[pool].clone() {
                    self.work(k, read, answer);
                }
            }
            Op::Die { pool, slot } => {
                if let Some(&k) = self.slots[pool].get(slot) {
                    self.kill(k, false);
                }
            }
            Op::Up { pool } => {
                for k in self.slots[pool].clone() {
                    self.up(k);
                }
            }
            Op::Replace { pool, slot } => self.replace(pool, slot),
            Op::Advance { ms } => self.advance(ms),
            Op::Drain { client } => self.drain(client),
            Op::Reconnect { client } => self.reconnect(client),
            Op::Probe { pool, slot } => {
                if let Some(&k) = self.slots[pool].get(slot) {
                    self.probe(k);
                }
            }
            Op::Ready { pool, slot } => {
                if let Some(&k) = self.slots[pool].get(slot) {
                    self.ready(k);
                }
                if let Some(&k) = self.retiring[pool].get(slot) {
                    self.ready(k);
                }
            }
        }
        self.ledger.check_all();
        self.check_budgets();
    }

    fn check_budgets(&self) {
        for (p, &(name, count, max_inflight, queue)) in POOLS.iter().enumerate() {
            // A submission is refused once `queue` are waiting, but a broadcast adds
            // one copy per slot, and redelivered messages go back to the queue: waiting
            // may exceed `queue` by a broadcast's fan-out and by what every instance
            // (retiring ones too) had in flight: at most what the most instances the
            // pool ever had at once could hold.
            let instances = self.peak_instances[p];
            let bound = queue as usize - 1 + count + instances * max_inflight as usize;
            let waiting = self.ledger.pool_waiting(p);
            assert!(
                waiting <= bound,
                "pool {name}: {waiting} waiting (bound {bound})"
            );
            let bytes = self.ledger.pool_bytes(p);
            assert!(
                bytes < POOL_MAX_BYTES + MAX_MSG * (1 + count),
                "pool {name}: {bytes} bytes"
            );
        }
        for (c, s) in self.sessions.iter().enumerate() {
            let out = self.ledger.client_outstanding(c);
            assert!(
                out <= MAX_OUTSTANDING + LINES_PER_READ as u32,
                "client {c}: {out} outstanding"
            );
            // One reply (a broadcast: 3 lines of at most MAX_MSG + 3 bytes) past the
            // budget at most per message read in the last read.
            assert!(
                s.unwritten < MAX_CLIENT_OUT + (MAX_OUTSTANDING as usize + 4) * 3 * (MAX_MSG + 4),
                "client {c}: {} bytes unwritten",
                s.unwritten
            );
        }
    }

    /// Let everything finish: instances come back, workers answer everything, clients
    /// read everything, time passes.
    fn settle(&mut self) {
        for _ in 0..200 {
            for p in 0..POOLS.len() {
                for k in self.slots[p].clone() {
                    self.up(k);
                    self.ready(k);
                }
            }
            // Retiring instances not ready yet get ready (or, in the daemon, reach
            // `ready.timeout` and stop): what waits for them is not stuck.
            for p in 0..POOLS.len() {
                for k in self.retiring[p].clone() {
                    self.ready(k);
                }
            }
            for k in 0..self.workers.len() {
                self.work(k, 1000, 1000);
            }
            for c in 0..self.sessions.len() {
                self.drain(c);
            }
            let busy = !self.ledger.is_idle()
                || self
                    .sessions
                    .iter()
                    .any(|s| !s.input.is_empty() || s.unwritten > 0);
            if !busy {
                return;
            }
            self.advance(1000);
        }
        panic!(
            "the world does not settle: {} message(s) in the ledger",
            self.ledger.message_count()
        );
    }

    /// Shutdown instead of settling: every message still there is answered.
    fn fail_all(&mut self) {
        // The daemon stops reading at shutdown: unread input is never a message, and
        // a message stalled on a full pool is refused.
        self.stopped = true;
        for c in 0..self.sessions.len() {
            self.ledger
                .client_refuse_stalled(c, "shutting down", &mut self.out);
            self.exec();
        }
        self.ledger.fail_all("shutting down", &mut self.out);
        self.exec();
        for c in 0..self.sessions.len() {
            let n = std::mem::take(&mut self.sessions[c].unwritten);
            if n > 0 {
                self.ledger.client_wrote(c, n, &mut self.out);
                self.exec();
            }
        }
        assert!(self.ledger.is_idle(), "messages left after fail_all");
    }

    /// Every client got exactly what it is owed.
    fn check_replies(&self) {
        for (c, s) in self.sessions.iter().enumerate() {
            // Lines never read by the shell (shutdown) are not messages.
            let pending_lines = s.input.iter().filter(|&&b| b == b'\n').count();
            let sent = &s.sent[..s.sent.len() - pending_lines];
            check_session(c, s.listener, sent, &s.got);
            assert_eq!(
                self.ledger.client_outstanding(c),
                0,
                "client {c} outstanding"
            );
        }
    }
}

/// The reply to `msg` from a worker: `msg@instance`.
fn reply_of(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = line.iter().rposition(|&b| b == b'@')?;
    Some((&line[..at], &line[at + 1..]))
}

fn is_error(line: &[u8]) -> bool {
    line.starts_with(PREFIX.as_bytes())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Check one client's replies against what it sent.
fn check_session(c: usize, listener: usize, sent: &[Vec<u8>], got: &[Vec<u8>]) {
    let ctx = || {
        format!(
            "client {c} (listener {listener})\nsent: {:?}\ngot: {:?}",
            sent.iter().map(|m| text(m)).collect::<Vec<_>>(),
            got.iter().map(|m| text(m)).collect::<Vec<_>>()
        )
    };
    match listener {
        // Ordered unicast: reply i belongs to message i.
        0 | 4 => {
            assert_eq!(got.len(), sent.len(), "one reply per message: {}", ctx());
            for (i, (m, r)) in sent.iter().zip(got).enumerate() {
                if is_error(r) {
                    continue;
                }
                let (of, _) = reply_of(r).unwrap_or_else(|| panic!("garbage reply {i}: {}", ctx()));
                assert_eq!(of, &m[..], "reply {i} out of order or wrong: {}", ctx());
            }
        }
        // Unordered: each message exactly once, errors make up the rest.
        1 | 5 => {
            assert_eq!(got.len(), sent.len(), "one reply per message: {}", ctx());
            let mine: HashSet<&[u8]> = sent.iter().map(|m| &m[..]).collect();
            let mut seen = HashSet::new();
            for r in got {
                if is_error(r) {
                    continue;
                }
                let (of, _) = reply_of(r).unwrap_or_else(|| panic!("garbage reply: {}", ctx()));
                assert!(mine.contains(of), "a reply not meant for it: {}", ctx());
                assert!(seen.insert(of), "a reply twice: {}", ctx());
            }
        }
        // Broadcast, ordered: replies grouped by message in sending order, each
        // instance at most once per message.
        3 => {
            let index: HashMap<&[u8], usize> =
                sent.iter().enumerate().map(|(i, m)| (&m[..], i)).collect();
            let mut last = 0;
            let mut seen = HashSet::new();
            for r in got {
                if is_error(r) {
                    continue;
                }
                let (of, inst) = reply_of(r).unwrap_or_else(|| panic!("garbage reply: {}", ctx()));
                let &i = index
                    .get(of)
                    .unwrap_or_else(|| panic!("a reply not meant for it: {}", ctx()));
                assert!(i >= last, "broadcast replies out of order: {}", ctx());
                last = i;
                assert!(seen.insert((of, inst)), "a reply twice: {}", ctx());
            }
            assert!(
                got.len() >= sent.len(),
                "a broadcast without reply: {}",
                ctx()
            );
        }
        // No rules: every line is `no route`.
        _ => {
            assert_eq!(got.len(), sent.len(), "{}", ctx());
            assert!(
                got.iter().all(|r| r == b"ERR no route"),
                "no route expected: {}",
                ctx()
            );
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_message_gets_exactly_one_reply(
        ops in prop::collection::vec(op(), 1..120),
        shutdown in any::<bool>(),
    ) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        if shutdown {
            w.fail_all();
        } else {
            w.settle();
        }
        w.check_replies();
    }
}
