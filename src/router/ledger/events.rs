//! The ledger's events: what the shell tells it. Each takes the current time where
//! time matters and pushes what the shell must do into `out`.

use std::num::NonZeroUsize;
use std::time::Instant;

use super::payload::Payload;
use super::{
    Actions, Client, ClientSummary, Failure, Gather, Inst, InstanceView, Ledger, Pin, Pool,
    PoolSettings, Reply, Rule, Terms, Timer,
};
use crate::config::Strategy;
use crate::router::reorder::Reorder;
use crate::router::strategy;

impl Ledger {
    // ----- configuration ------------------------------------------------------------

    /// Replace every routing rule at once: lines read from now on use these.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        self.rules = rules;
    }

    /// The error prefix of the current config.
    pub fn set_error_prefix(&mut self, prefix: &str) {
        if self.limits.error_prefix != prefix {
            self.limits.error_prefix = prefix.to_string();
        }
    }

    /// A pool appears, or its settings change (then call [`Ledger::pool_refresh`]).
    pub fn pool_set(&mut self, pool: usize, settings: PoolSettings) {
        if let Some(p) = self.pools.get_mut(pool) {
            if p.settings != settings {
                p.settings = settings;
            }
            return;
        }
        self.pools.insert(
            pool,
            Pool {
                settings,
                slots: Vec::new(),
                retiring: Vec::new(),
                removed: false,
                queue: Default::default(),
                cursor: 0,
                waiting: 0,
                bytes: 0,
                waiters: Vec::new(),
                empty_since: None,
                expire_at: None,
                expire_gen: 0,
                errors: Vec::new(),
            },
        );
    }

    /// Pool settings changed in place: more room may let waiting work go.
    pub fn pool_refresh(&mut self, pool: usize, now: Instant, out: &mut Actions) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let keys = p.slots.clone();
        for k in keys {
            self.instance_pull(k, now, out);
        }
        self.pool_pump(pool, now, out);
        self.check();
    }

    /// The pool's instances: `slots` by index, and those retiring. The shell calls
    /// this whenever they may have changed (before the instance event that follows).
    pub fn pool_members(&mut self, pool: usize, slots: &[usize], retiring: &[usize]) {
        if let Some(p) = self.pools.get_mut(pool) {
            if p.slots != slots {
                p.slots.clear();
                p.slots.extend_from_slice(slots);
            }
            if p.retiring != retiring {
                p.retiring.clear();
                p.retiring.extend_from_slice(retiring);
            }
        }
    }

    /// The pool was removed from the config: it drains.
    pub fn pool_removed(&mut self, pool: usize) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.removed = true;
        }
    }

    /// The pool is gone for good (nothing of it may remain).
    pub fn pool_forget(&mut self, pool: usize) {
        if let Some(p) = self.pools.remove(pool) {
            debug_assert_eq!(p.waiting, 0, "pool {} forgotten with work", p.settings.name);
        }
    }

    /// An instance of the pool may have stopped being live, or started: recompute
    /// whether the pool has live instances (queue expiry counts from when it has
    /// none). `only_if_lost`: skip a pool already known to have none (stopping
    /// thousands of instances would otherwise be quadratic).
    pub fn pool_liveness(
        &mut self,
        pool: usize,
        only_if_lost: bool,
        now: Instant,
        out: &mut Actions,
    ) {
        if only_if_lost && self.pool_none_live(pool) {
            return;
        }
        self.pool_changed(pool, now, out);
        self.check();
    }

    /// Answer every message waiting in a pool's queue with `why` (the pool can no
    /// longer serve them), and let clients stalled on it go on.
    pub fn pool_fail_queue(&mut self, pool: usize, why: &str, out: &mut Actions) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let waiting: Vec<usize> = p.queue.drain(..).collect();
        let n: usize = waiting.iter().map(|&m| self.msgs[m].count as usize).sum();
        if n > 0 {
            log::warn!(
                "pool {}: {n} waiting message(s) answered with {why:?}",
                p.settings.name,
            );
        }
        p.waiting -= n;
        for m in waiting {
            self.answer(m, Reply::Error(why), out);
        }
        let waiters = std::mem::take(&mut self.pools[pool].waiters);
        self.resume_waiters(waiters, out);
        self.check();
    }

    // ----- instances ----------------------------------------------------------------

    /// Update what the ledger knows of an instance (creating it on first sight).
    pub fn instance_view(
        &mut self,
        k: usize,
        pool: usize,
        index: u32,
        label: &str,
        view: InstanceView,
    ) {
        match self.instances.get_mut(k) {
            Some(i) => {
                i.view = view;
                i.index = index;
                debug_assert_eq!(i.pool, pool);
            }
            None => self.instances.insert(
                k,
                Inst {
                    pool,
                    index,
                    label: label.to_string(),
                    view,
                    inflight: Default::default(),
                    inflight_n: 0,
                    backlog: Default::default(),
                    answered: 0,
                    head_since: None,
                    unread: 0,
                    deadline_at: None,
                    deadline_gen: 0,
                    probe: None,
                    window: Default::default(),
                },
            ),
        }
    }

    /// The instance is up (or released from a hold): it takes work.
    pub fn instance_up(&mut self, k: usize, now: Instant, out: &mut Actions) {
        if let Some(pool) = self.instances.get(k).map(|i| i.pool) {
            self.pool_changed(pool, now, out);
            self.instance_pull(k, now, out);
        }
        self.check();
    }

    /// The instance started retiring or was held: it takes no new work, finishes
    /// what it has and is reported drained ([`super::Action::Drained`]) after.
    pub fn instance_retiring(&mut self, k: usize, now: Instant, out: &mut Actions) {
        if let Some(pool) = self.instances.get(k).map(|i| i.pool) {
            self.pool_changed(pool, now, out);
            self.instance_pull(k, now, out);
            self.maybe_drained(k, out);
        }
        self.check();
    }

    /// Bytes written for the instance that its worker never read (at its death):
    /// in-flight messages entirely in there were not worked on.
    pub fn instance_unread(&mut self, k: usize, bytes: usize) {
        if let Some(i) = self.instances.get_mut(k) {
            i.unread = bytes;
        }
    }

    /// The instance's process died or is being stopped (`timed_out`: because of a
    /// message timeout): what it had in flight is delivered again, its backlog goes
    /// elsewhere (or waits, pinned to its slot, if it is coming back).
    pub fn instance_down(&mut self, k: usize, timed_out: bool, now: Instant, out: &mut Actions) {
        if self.instances.get(k).is_none() {
            return;
        }
        let failure = if timed_out {
            Failure::TimedOut
        } else {
            Failure::Died
        };
        self.redeliver(k, failure, now, out);
        self.check();
    }

    /// The instance stopped for good (or gave up): nothing may wait for it.
    pub fn instance_gone(&mut self, k: usize, timed_out: bool, now: Instant, out: &mut Actions) {
        let Some(i) = self.instances.get(k) else {
            return;
        };
        let pool = i.pool;
        if !i.inflight.is_empty() {
            let failure = if timed_out {
                Failure::TimedOut
            } else {
                Failure::Died
            };
            self.redeliver(k, failure, now, out);
        }
        self.probe_drop(k);
        self.rehome_backlog(k, now, out);
        if !self.pool_none_live(pool) {
            self.pool_changed(pool, now, out);
        }
        // Room may have appeared (backlog moved or failed): stalled clients go on.
        self.pool_pump(pool, now, out);
        self.check();
    }

    /// The instance is forgotten by the shell.
    pub fn instance_forget(&mut self, k: usize) {
        self.proto.remove(k);
        if let Some(i) = self.instances.remove(k) {
            debug_assert!(
                i.inflight.is_empty() && i.backlog.is_empty(),
                "{} forgotten with messages",
                i.label
            );
        }
    }

    /// Check whether a leaving instance has finished (emits `Drained`).
    pub fn instance_check_drained(&mut self, k: usize, out: &mut Actions) {
        self.maybe_drained(k, out);
    }

    /// One reply line of an instance (without `\n`), or an error in its place (a
    /// reply too long): the answer to its oldest in-flight message.
    pub fn worker_reply(
        &mut self,
        k: usize,
        reply: Result<&[u8], &str>,
        now: Instant,
        out: &mut Actions,
    ) {
        self.time_replies(k, 1, now);
        self.reply_one(k, reply, now, out);
        self.after_replies(k, now, out);
        self.check();
    }

    /// A chunk of complete reply lines (each ending in `\n`) of an instance.
    /// The replies to a run's lines go to its client in one piece.
    pub fn worker_output(&mut self, k: usize, chunk: &[u8], now: Instant, out: &mut Actions) {
        let mut lines_left = memchr::memchr_iter(b'\n', chunk).count();
        self.time_replies(k, lines_left, now);
        let mut rest = chunk;
        while !rest.is_empty() {
            if let Some(n) = self.run_at_head(k) {
                // All that is left answers the run: no need to find each line.
                let (end, j) = if lines_left <= n && rest.ends_with(b"\n") {
                    (rest.len(), lines_left)
                } else {
                    first_lines(rest, n)
                };
                if j > 1 {
                    self.run_replies(k, &rest[..end], j, now, out);
                    rest = &rest[end..];
                    lines_left -= j;
                    continue;
                }
            }
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let line = &rest[..end];
            rest = &rest[end..];
            lines_left = lines_left.saturating_sub(1);
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            self.reply_one(k, Ok(line), now, out);
        }
        self.after_replies(k, now, out);
        self.check();
    }

    /// The unanswered lines of `k`'s oldest in-flight entry when it is a run and its
    /// next reply is for it (not for a probe).
    fn run_at_head(&self, k: usize) -> Option<usize> {
        let i = self.instances.get(k)?;
        if i.probe.is_some_and(|p| p.ahead == 0) {
            return None;
        }
        let n = self.msgs[*i.inflight.front()?].count as usize;
        (n > 1).then_some(n)
    }

    /// `block`, `j` (> 1) reply lines of `k` read together, answers that many lines
    /// of the run at its head: handed to the client in one piece.
    fn run_replies(&mut self, k: usize, block: &[u8], j: usize, now: Instant, out: &mut Actions) {
        let inst = &mut self.instances[k];
        let Some(&m) = inst.inflight.front() else {
            return;
        };
        inst.answered += j as u64;
        inst.inflight_n -= j;
        inst.head_since = Some(now);
        let msg = &mut self.msgs[m];
        debug_assert!(j <= msg.count as usize);
        msg.count -= j as u32;
        let (c, id, seq) = (msg.client, msg.client_id, msg.seq);
        msg.seq = seq.map(|s| s + j as u64);
        if msg.count == 0 {
            inst.inflight.pop_front();
            Self::probe_advance(inst, k, out);
            let run = self.msgs.remove(m);
            if let Some(p) = self.pools.get_mut(run.pool) {
                p.bytes -= run.payload.retained();
            }
        }
        self.emit_span(c, id, seq, j, block, out);
    }

    /// After replies of `k` read at once: its new head's deadline (every reply came
    /// at `now`, so only the last head's clock matters), then the room they made
    /// filled in one pump (no other instance had room while the pool had a queue,
    /// so one pump places what a pump per reply would), then drained?
    fn after_replies(&mut self, k: usize, now: Instant, out: &mut Actions) {
        if self.instances.get(k).is_none() {
            return;
        }
        self.arm_head_deadline(k, out);
        self.instance_pull(k, now, out);
        self.maybe_drained(k, out);
    }

    /// `n` replies of instance `k` were read at once: a measure for its window.
    fn time_replies(&mut self, k: usize, n: usize, now: Instant) {
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        if let (Some(since), Some(n)) = (inst.head_since, NonZeroUsize::new(n)) {
            let before = inst.inflight_n;
            let full = before >= inst.window.size() as usize;
            let elapsed = now.saturating_duration_since(since);
            inst.window.replies(elapsed, n, full, n.get() >= before);
        }
    }

    /// The answer to the oldest in-flight message of `k`. The caller arms the new
    /// head's deadline and refills the instance ([`Ledger::after_replies`]).
    fn reply_one(&mut self, k: usize, reply: Result<&[u8], &str>, now: Instant, out: &mut Actions) {
        // The reply to orchd's own health probe, if it was next in line.
        if self.probe_reply(k, reply, now, out) {
            return;
        }
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        let Some(&m) = inst.inflight.front() else {
            match reply {
                Ok(line) => log::warn!(
                    "{}: protocol error: reply with no message in flight: {}",
                    inst.label,
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                ),
                Err(why) => log::warn!(
                    "{}: protocol error: {why} with no message in flight",
                    inst.label
                ),
            }
            return;
        };
        inst.answered += 1;
        inst.inflight_n -= 1;
        // The next message's clock starts now (the worker turns to it), unless the
        // next in line is a probe (its reply is waited for first).
        inst.head_since = Some(now);
        let msg = &mut self.msgs[m];
        if msg.count > 1 {
            // The first line of a run: the rest stays in flight.
            msg.count -= 1;
            let (c, id, seq, pool) = (msg.client, msg.client_id, msg.seq, msg.pool);
            msg.seq = seq.map(|s| s + 1);
            let reply = match reply {
                Ok(line) => Reply::Line(line),
                Err(why) => {
                    if let Some(p) = self.pools.get_mut(pool) {
                        super::place::count_error(&mut p.errors, why);
                    }
                    Reply::Error(why)
                }
            };
            return self.emit(c, id, seq, reply, out);
        }
        inst.inflight.pop_front();
        Self::probe_advance(inst, k, out);
        match reply {
            Ok(line) => self.answer(m, Reply::Line(line), out),
            Err(why) => self.answer(m, Reply::Error(why), out),
        }
    }

    // ----- timers -------------------------------------------------------------------

    /// A timer the ledger armed is due.
    pub fn timer(&mut self, timer: Timer, now: Instant, out: &mut Actions) {
        match timer {
            Timer::Inflight { instance, gen } => self.inflight_timer(instance, gen, now, out),
            Timer::PoolQueue { pool, gen } => self.pool_queue_timer(pool, gen, now, out),
        }
        self.check();
    }

    fn inflight_timer(&mut self, k: usize, gen: u64, now: Instant, out: &mut Actions) {
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        if inst.deadline_gen != gen {
            return;
        }
        inst.deadline_at = None;
        if self.is_tagged(k) {
            return self.tagged_timer(k, now, out);
        }
        match self.head_deadline(k) {
            Some(at) if at <= now => {
                let inst = &self.instances[k];
                let waited = now.duration_since(inst.head_since.unwrap_or(now));
                log::warn!(
                    "{} did not answer within {}; restarting it",
                    inst.label,
                    crate::timers::fmt_duration(waited)
                );
                out.push(super::Action::Restart { instance: k });
            }
            Some(_) => self.arm_head_deadline(k, out),
            None => {}
        }
    }

    fn pool_queue_timer(&mut self, pool: usize, gen: u64, now: Instant, out: &mut Actions) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        if p.expire_gen != gen {
            return;
        }
        let Some(since) = p.empty_since else {
            return;
        };
        let expired: Vec<usize> = self
            .pool_waiting_msgs(pool)
            .into_iter()
            .filter(|&m| {
                let msg = &self.msgs[m];
                msg.timeout
                    .is_some_and(|t| crate::timers::deadline(since.max(msg.queued_at), t) <= now)
            })
            .collect();
        if !expired.is_empty() {
            log::warn!(
                "pool {}: {} message(s) found no running instance in time",
                self.pools[pool].settings.name,
                expired.len()
            );
        }
        for m in expired {
            self.unlink_waiting(pool, m);
            self.answer(m, Reply::Error("timed out waiting for an instance"), out);
        }
        self.arm_expiry(pool, out);
        self.pool_wake_waiters(pool, out);
    }

    // ----- clients ------------------------------------------------------------------

    /// A client connected to `listener` (None: it has no rules, e.g. batch closed).
    pub fn client_open(&mut self, c: usize, listener: Option<usize>) {
        self.next_client_id += 1;
        self.clients.insert(
            c,
            Client {
                id: self.next_client_id,
                listener,
                order: Reorder::default(),
                order_bytes: 0,
                unwritten: 0,
                outstanding: 0,
                stalled: None,
                paused: false,
                errors: 0,
            },
        );
    }

    /// Its listener closed: lines read from now on get `no route`.
    pub fn client_unroute(&mut self, c: usize) {
        if let Some(cl) = self.clients.get_mut(c) {
            cl.listener = None;
        }
    }

    /// Whether the client may read more; when not, it is paused and gets a
    /// [`super::Action::Resume`] once it may.
    pub fn client_may_read(&mut self, c: usize) -> bool {
        let ok = self.client_can_read(c);
        if !ok {
            if let Some(cl) = self.clients.get_mut(c) {
                cl.paused = true;
            }
        }
        ok
    }

    /// One message line (without `\n` or a trailing `\r`) read from a client. False:
    /// it stalled on a full pool (the ledger keeps it); the client must stop reading
    /// until [`super::Action::Resume`].
    pub fn client_line(&mut self, c: usize, line: &[u8], now: Instant, out: &mut Actions) -> bool {
        let r = self.submit(c, line, now, out);
        self.check();
        r
    }

    /// A chunk of complete lines (each ending in `\n`) read from a client. Returns
    /// how many bytes were taken: less than the chunk when a line stalled (that line
    /// is taken and kept; the rest must be offered again after `Resume`).
    pub fn client_data(
        &mut self,
        c: usize,
        chunk: &[u8],
        now: Instant,
        out: &mut Actions,
    ) -> usize {
        let mut taken = 0;
        for line in lines(chunk) {
            taken += line.len();
            if !self.client_line(c, message(line), now, out) {
                break;
            }
        }
        taken
    }

    /// A chunk of complete lines (each ending in `\n`) read from a client, taken
    /// while the client may send ([`Ledger::client_can_read`], checked before each
    /// line): returns how many bytes were taken. Less than the chunk when a line
    /// stalled (that line is taken and kept: [`Ledger::client_stalled`]) or a budget
    /// ran out; the rest must be offered again when the client may read. Under
    /// round-robin and least-busy, consecutive lines go to one instance as a run, up
    /// to its share of the chunk (see `place.rs`).
    pub fn client_lines(
        &mut self,
        c: usize,
        chunk: &[u8],
        now: Instant,
        out: &mut Actions,
    ) -> usize {
        let mut left = memchr::memchr_iter(b'\n', chunk).count();
        self.run_lines = left;
        let bulk = self.bulk_client(c);
        let mut taken = 0;
        while taken < chunk.len() {
            if !self.client_can_read(c) {
                break;
            }
            let rest = &chunk[taken..];
            if bulk {
                let (bytes, n) = self.join_block(c, rest, left, now, out);
                if n > 0 {
                    taken += bytes;
                    left = left.saturating_sub(n);
                    continue;
                }
            }
            let line = &rest[..memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1)];
            self.run_budget = left;
            left = left.saturating_sub(1);
            taken += line.len();
            if !self.submit(c, message(line), now, out) {
                break;
            }
        }
        self.run_budget = 0;
        self.run_lines = 0;
        self.run = None;
        self.check();
        taken
    }

    /// Submit the client's stalled message again; true if the client may go on
    /// reading.
    pub fn client_resume(&mut self, c: usize, now: Instant, out: &mut Actions) -> bool {
        let Some(cl) = self.clients.get_mut(c) else {
            return false;
        };
        let r = match cl.stalled.take() {
            Some(line) => self.submit(c, &line, now, out),
            None => true,
        };
        self.check();
        r
    }

    /// An immediate error reply for a line read from the client (too long, or
    /// refused: `no route`, `shutting down`), in its place in the order.
    pub fn client_error(&mut self, c: usize, why: &str, out: &mut Actions) {
        self.reply_now(c, why, out);
        self.check();
    }

    /// The client will be read no more: its stalled message, if any, is answered
    /// with `why`.
    pub fn client_refuse_stalled(&mut self, c: usize, why: &str, out: &mut Actions) {
        if let Some(cl) = self.clients.get_mut(c) {
            if cl.stalled.take().is_some() {
                self.reply_now(c, why, out);
            }
        }
        self.check();
    }

    /// `n` bytes of the client's replies were written (or dropped: its output
    /// failed). Room may let it read again.
    pub fn client_wrote(&mut self, c: usize, n: usize, out: &mut Actions) {
        let Some(cl) = self.clients.get_mut(c) else {
            return;
        };
        debug_assert!(n <= cl.unwritten);
        cl.unwritten = cl.unwritten.saturating_sub(n);
        if cl.unwritten == 0 && cl.outstanding == 0 {
            // Idle: keep no reorder buffer.
            cl.order.release();
        }
        if cl.paused && self.client_can_read(c) {
            self.resume(c, out);
        }
    }

    /// The client is gone: its pending replies go nowhere.
    pub fn client_gone(&mut self, c: usize) -> ClientSummary {
        match self.clients.remove(c) {
            Some(cl) => ClientSummary {
                outstanding: cl.outstanding,
                errors: cl.errors,
            },
            None => ClientSummary::default(),
        }
    }

    /// Route one message from client `c`. False when it stalled on a full pool.
    fn submit(&mut self, c: usize, line: &[u8], now: Instant, out: &mut Actions) -> bool {
        let Some(cl) = self.clients.get(c) else {
            return true;
        };
        let rule = cl.listener.and_then(|l| {
            self.rules.iter().position(|r| {
                r.listener == l && r.matcher.as_ref().is_none_or(|m| m.0.is_match(line))
            })
        });
        let Some(r) = rule else {
            self.reply_now(c, "no route", out);
            return true;
        };
        let pool = self.rules[r].pool;
        let Some(p) = self.pools.get(pool) else {
            self.reply_now(c, "no route", out);
            return true;
        };
        if p.slots.is_empty() {
            self.reply_now(c, "pool has no instances", out);
            return true;
        }
        if self.pool_full(pool) {
            let cl = &mut self.clients[c];
            let id = cl.id;
            cl.stalled = Some(line.to_vec());
            cl.paused = true;
            let p = &mut self.pools[pool];
            if !p.waiters.contains(&(c, id)) {
                p.waiters.push((c, id));
            }
            return false;
        }
        let rule = &self.rules[r];
        let terms = Terms {
            timeout: rule.timeout,
            retries: rule.retries,
        };
        let (strategy, ordered) = (rule.strategy, rule.ordered);
        let pin = match strategy {
            Strategy::Hash => {
                let k = match &rule.key {
                    Some(re) => {
                        re.0.captures(line)
                            .and_then(|caps| caps.get(1).or_else(|| caps.get(0)))
                            .map(|m| m.as_bytes())
                    }
                    None => Some(line),
                };
                // No key in the message: hash the whole message.
                Pin::Hash(strategy::key_hash(k.unwrap_or(line)))
            }
            s => Pin::Any(s),
        };
        let cl = &mut self.clients[c];
        let client_id = cl.id;
        let seq = ordered.then(|| cl.order.reserve());
        cl.outstanding += 1;
        if let Pin::Any(s) = pin {
            let l = super::runs::Joining {
                c,
                client_id,
                seq,
                line,
                pool,
                s,
                terms,
            };
            if self.run_join(l, out) || self.queue_join(l, now) {
                return true;
            }
        }
        let payload = Payload::with_newline(line);
        if strategy == Strategy::Broadcast {
            self.submit_broadcast(c, client_id, seq, payload, pool, terms, now, out);
            return true;
        }
        let m = self.new_msg(c, client_id, seq, payload, pool, pin, terms, None, now);
        self.place(m, false, now, out);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn submit_broadcast(
        &mut self,
        client: usize,
        client_id: u64,
        seq: Option<u64>,
        payload: Payload,
        pool: usize,
        terms: Terms,
        now: Instant,
        out: &mut Actions,
    ) {
        let targets: Vec<u32> = self.pools[pool]
            .slots
            .iter()
            .filter_map(|&k| self.member(pool, k))
            .filter(|i| i.view.is_live())
            .map(|i| i.index)
            .collect();
        if targets.is_empty() {
            let reply = Reply::Error("pool has no running instances");
            self.emit(client, client_id, seq, reply, out);
            return;
        }
        let g = self.gathers.insert(Gather {
            client,
            client_id,
            seq,
            replies: vec![None; targets.len()],
            remaining: targets.len(),
            errors: false,
        });
        for (pos, index) in targets.into_iter().enumerate() {
            let m = self.new_msg(
                client,
                client_id,
                None,
                payload.clone(),
                pool,
                Pin::Slot(index),
                terms,
                Some((g, pos)),
                now,
            );
            self.place(m, false, now, out);
        }
    }

    /// Shutdown: answer every message still waiting or in flight with `why`.
    pub fn fail_all(&mut self, why: &str, out: &mut Actions) {
        let all: Vec<usize> = self.msgs.iter().map(|(k, _)| k).collect();
        for k in 0..self.pools.0.len() {
            if let Some(p) = self.pools.get_mut(k) {
                p.queue.clear();
                p.waiting = 0;
            }
        }
        for k in 0..self.instances.0.len() {
            if let Some(i) = self.instances.get_mut(k) {
                i.inflight.clear();
                i.inflight_n = 0;
                i.backlog.clear();
                i.deadline_at = None;
                i.probe = None;
            }
            self.tags_forget(k);
        }
        if !all.is_empty() {
            log::warn!(
                "answering {} unfinished message(s) with an error",
                all.len()
            );
        }
        for m in all {
            self.answer(m, Reply::Error(why), out);
        }
        self.check();
    }
}

/// The lines of a chunk, each with its `\n` (the last one without, if unterminated),
/// found with `memchr`.
pub(super) fn lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', chunk);
    std::iter::from_fn(move || {
        let end = match ends.next() {
            Some(i) => i + 1,
            None if start < chunk.len() => chunk.len(),
            None => return None,
        };
        let line = &chunk[start..end];
        start = end;
        Some(line)
    })
}

/// The message of a client's line: without its `\n` and a `\r` before it.
fn message(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// The first up to `n` lines of `chunk` (complete lines): their bytes and count.
fn first_lines(chunk: &[u8], n: usize) -> (usize, usize) {
    let mut end = 0;
    let mut j = 0;
    for i in memchr::memchr_iter(b'\n', chunk).take(n) {
        end = i + 1;
        j += 1;
    }
    (end, j)
}
