//! Placing messages on instances, replies, redelivery and expiry: the ledger's
//! internal steps, shared by its events.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Action, Actions, Failure, Ledger, Msg, Pin, Placement, Reply, Timer};
use crate::config::Strategy;
use crate::router::strategy::{self, Candidate};
use crate::timers::deadline;

impl Ledger {
    /// Instance `k` as a member of `pool` (a pool's lists may name a key forgotten
    /// and reused by another pool until the shell reports the pool's members again).
    pub(super) fn member(&self, pool: usize, k: usize) -> Option<&super::Inst> {
        self.instances.get(k).filter(|i| i.pool == pool)
    }

    /// Fill `cand_keys`/`cands` with the instances of `pool` that may take new
    /// messages, in index order. Reuses the buffers: no allocation per message.
    fn fill_candidates(&mut self, pool: usize) {
        self.cand_keys.clear();
        self.cands.clear();
        let p = &self.pools[pool];
        let max = p.settings.max_inflight;
        // A draining pool's retiring instances still work off its queue.
        let draining = p.draining();
        let keys: &[usize] = if draining { &p.retiring } else { &p.slots };
        for &k in keys {
            let Some(i) = self.instances.get(k).filter(|i| i.pool == pool) else {
                continue;
            };
            if i.view.is_live() || (draining && i.view.writable) {
                let inflight = i.inflight_n;
                self.cand_keys.push(k);
                self.cands.push(Candidate {
                    index: i.index,
                    inflight: inflight as u32,
                    has_room: inflight < i.room(max),
                });
            }
        }
    }

    fn placement(&mut self, m: usize) -> Placement {
        self.placement_with(m, true)
    }

    /// `placement`, with `fill: false` reusing the candidates of the previous call
    /// (kept up to date by [`Ledger::candidate_took_one`]): `pool_pump` places a
    /// whole queue on one list.
    fn placement_with(&mut self, m: usize, fill: bool) -> Placement {
        let msg = &self.msgs[m];
        let pool = msg.pool;
        let pin = msg.pin;
        let max = self.pools[pool].settings.max_inflight;
        match pin {
            Pin::Any(s) => {
                if fill {
                    self.fill_candidates(pool);
                }
                let cursor = &mut self.pools[pool].cursor;
                let pick = match s {
                    Strategy::LeastBusy => strategy::least_busy(&self.cands, cursor),
                    _ => strategy::round_robin(&self.cands, cursor),
                };
                match pick {
                    Some(i) => Placement::Assign(self.cand_keys[i]),
                    None => Placement::Wait,
                }
            }
            Pin::Hash(h) => {
                if fill {
                    self.fill_candidates(pool);
                }
                let cands = &self.cands;
                match strategy::rendezvous(h, cands.iter().map(|c| c.index)) {
                    Some(i) if cands[i].has_room => Placement::Assign(self.cand_keys[i]),
                    Some(i) => Placement::Backlog(self.cand_keys[i]),
                    None => Placement::Wait,
                }
            }
            Pin::Slot(index) => {
                let slot = self.pools[pool]
                    .slots
                    .iter()
                    .copied()
                    .find(|&k| self.member(pool, k).is_some_and(|i| i.index == index));
                match slot {
                    None => Placement::Fail("instance removed"),
                    Some(k) => {
                        let i = &self.instances[k];
                        if i.view.is_live() && i.inflight_n < i.room(max) && i.backlog.is_empty() {
                            Placement::Assign(k)
                        } else {
                            Placement::Backlog(k)
                        }
                    }
                }
            }
        }
    }

    /// Put a message where it belongs now. `front`: it is being redelivered and goes
    /// ahead of the queue.
    pub(super) fn place(&mut self, m: usize, front: bool, now: Instant, out: &mut Actions) {
        let pool = self.msgs[m].pool;
        let any = match self.msgs[m].pin {
            Pin::Any(s) if !front => Some(s),
            _ => None,
        };
        if any.is_some() && !self.pools[pool].queue.is_empty() {
            // FIFO: never overtake messages already waiting for any instance.
            self.pools[pool].queue.push_back(m);
            self.arm_expiry_for(pool, m, out);
            return;
        }
        if let Some(k) = any.and_then(|s| self.run_next(pool, s)) {
            self.pools[pool].waiting -= 1;
            self.assign(m, k, now, out);
            self.run_entry(k, m);
            return;
        }
        match self.placement(m) {
            Placement::Assign(k) => {
                self.pools[pool].waiting -= 1;
                if let Some(s) = any {
                    self.run_start(pool, s, k);
                }
                self.assign(m, k, now, out);
                self.run_entry(k, m);
            }
            Placement::Backlog(k) => {
                let i = &mut self.instances[k];
                if front {
                    i.backlog.push_front(m);
                } else {
                    i.backlog.push_back(m);
                }
                if !i.view.is_live() {
                    self.arm_expiry_for(pool, m, out);
                }
            }
            Placement::Wait => {
                let q = &mut self.pools[pool].queue;
                if front {
                    q.push_front(m);
                } else {
                    q.push_back(m);
                }
                self.arm_expiry_for(pool, m, out);
            }
            Placement::Fail(why) => {
                self.pools[pool].waiting -= 1;
                self.answer(m, Reply::Error(why), out);
            }
        }
    }

    /// A chunk of lines is being submitted and round-robin or least-busy just chose
    /// instance `k`: the next lines of the chunk go to it too, up to its share of
    /// the chunk (its lines over the candidates), without choosing again. Lines
    /// sent one at a time still rotate strictly.
    fn run_start(&mut self, pool: usize, strategy: Strategy, k: usize) {
        self.run = None;
        if self.run_budget > 1 {
            let share = self
                .run_lines
                .div_ceil(self.cands.len().max(1))
                .clamp(1, self.run_budget);
            self.run = Some(super::Run {
                pool,
                strategy,
                inst: k,
                left: share - 1,
                msg: None,
            });
        }
    }

    /// The instance of the current run, if it goes on: same pool and strategy,
    /// share left, and the instance still takes new messages and has room.
    pub(super) fn run_next(&mut self, pool: usize, strategy: Strategy) -> Option<usize> {
        let run = self
            .run
            .filter(|r| r.pool == pool && r.strategy == strategy)?;
        let p = &self.pools[pool];
        let fits = run.left > 0
            && !p.draining()
            && self.member(pool, run.inst).is_some_and(|i| {
                i.view.is_live() && i.inflight_n < i.room(p.settings.max_inflight)
            });
        if !fits {
            self.run = None;
            return None;
        }
        self.run = Some(super::Run {
            left: run.left - 1,
            ..run
        });
        Some(run.inst)
    }

    /// Write a message to an instance.
    fn assign(&mut self, m: usize, k: usize, now: Instant, out: &mut Actions) {
        if !self.instances[k].view.writable {
            // Not writable after all: keep it for this instance (a run as singles).
            let singles = self.split_run(m);
            let inst = &mut self.instances[k];
            self.pools[inst.pool].waiting += singles.len();
            for &s in singles.iter().rev() {
                inst.backlog.push_front(s);
            }
            return;
        }
        if !self.write_for(m, k, now, out) {
            return;
        }
        let tagged = self.is_tagged(k);
        let inst = &mut self.instances[k];
        inst.inflight.push_back(m);
        inst.inflight_n += self.msgs[m].count as usize;
        if inst.inflight.len() == 1 && !tagged {
            inst.head_since = Some(now);
            self.arm_head_deadline(k, out);
        }
    }

    /// When the oldest in-flight message of `k` times out: its clock starts when the
    /// worker could reach it (written to it, or the previous message answered,
    /// whichever is later), so a healthy worker with messages queued up is never cut
    /// short.
    pub(super) fn head_deadline(&self, k: usize) -> Option<Instant> {
        if self.is_tagged(k) {
            return self.tagged_deadline(k);
        }
        let i = &self.instances[k];
        if i.probe.as_ref().is_some_and(|p| p.ahead == 0) {
            // The worker answers the probe first; the message's clock starts after.
            return None;
        }
        let m = *i.inflight.front()?;
        let since = i.head_since?;
        self.msgs[m].timeout.map(|t| deadline(since, t))
    }

    pub(super) fn arm_head_deadline(&mut self, k: usize, out: &mut Actions) {
        if let Some(at) = self.head_deadline(k) {
            self.arm_deadline_at(k, at, out);
        }
    }

    /// Arm the instance's deadline timer for `at`, unless it fires earlier already.
    pub(super) fn arm_deadline_at(&mut self, k: usize, at: Instant, out: &mut Actions) {
        if self.instances[k].deadline_at.is_none_or(|cur| at < cur) {
            let gen = self.gen();
            let i = &mut self.instances[k];
            i.deadline_at = Some(at);
            i.deadline_gen = gen;
            out.push(Action::Arm {
                at,
                timer: Timer::Inflight { instance: k, gen },
            });
        }
    }

    /// Fill instance `k` from its backlog, then let the pool hand out queued work.
    pub(super) fn instance_pull(&mut self, k: usize, now: Instant, out: &mut Actions) {
        let Some(inst) = self.instances.get(k) else {
            return;
        };
        let pool = inst.pool;
        let Some(max) = self.pools.get(pool).map(|p| p.settings.max_inflight) else {
            return;
        };
        loop {
            let inst = &mut self.instances[k];
            if !inst.view.writable || inst.inflight_n >= inst.room(max) {
                break;
            }
            let Some(m) = inst.backlog.pop_front() else {
                break;
            };
            self.pools[pool].waiting -= 1;
            self.assign(m, k, now, out);
        }
        self.pool_pump(pool, now, out);
    }

    /// Candidate `k` was given `n` more messages: its entry in the candidate list.
    fn candidate_took(&mut self, pool: usize, k: usize, n: usize) {
        let Some(i) = self.cand_keys.iter().position(|&c| c == k) else {
            return;
        };
        let max = self.pools[pool].settings.max_inflight;
        let room = self.instances.get(k).map_or(0, |inst| inst.room(max));
        let c = &mut self.cands[i];
        c.inflight += n as u32;
        c.has_room = (c.inflight as usize) < room;
    }

    /// Hand queued messages to instances while any can take them. The candidates
    /// are listed once per pump: placing a message changes only the in-flight count
    /// of the instance that took it (answers and errors change no instance).
    pub(super) fn pool_pump(&mut self, pool: usize, now: Instant, out: &mut Actions) {
        let mut fill = true;
        while let Some(&m) = self.pools.get(pool).and_then(|p| p.queue.front()) {
            let placed = self.placement_with(m, fill);
            fill = !matches!(self.msgs[m].pin, Pin::Any(_) | Pin::Hash(_));
            match placed {
                Placement::Assign(k) => {
                    // A queued run: as much of it as the instance has room for.
                    let n = self.msgs[m].count as usize;
                    let take = if n > 1 && self.proto.get(k).is_none() {
                        let max = self.pools[pool].settings.max_inflight;
                        let i = &self.instances[k];
                        n.min(i.room(max).saturating_sub(i.inflight_n).max(1))
                    } else {
                        1
                    };
                    let m = if take < n {
                        self.split_head(m, take)
                    } else {
                        self.pools[pool].queue.pop_front();
                        m
                    };
                    self.pools[pool].waiting -= take;
                    self.assign(m, k, now, out);
                    if !fill {
                        self.candidate_took(pool, k, take);
                    }
                }
                Placement::Backlog(k) => {
                    self.pools[pool].queue.pop_front();
                    self.instances[k].backlog.push_back(m);
                }
                Placement::Wait => break,
                Placement::Fail(why) => {
                    let n = self.msgs[m].count as usize;
                    let p = &mut self.pools[pool];
                    p.queue.pop_front();
                    p.waiting -= n;
                    self.answer(m, Reply::Error(why), out);
                }
            }
        }
        self.pool_wake_waiters(pool, out);
    }

    /// Clients stalled on a full queue may go on once there is room.
    pub(super) fn pool_wake_waiters(&mut self, pool: usize, out: &mut Actions) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if p.waiters.is_empty() || self.pool_full(pool) {
            return;
        }
        let waiters = std::mem::take(&mut self.pools[pool].waiters);
        self.resume_waiters(waiters, out);
    }

    pub(super) fn resume_waiters(&mut self, waiters: Vec<(usize, u64)>, out: &mut Actions) {
        for (c, id) in waiters {
            if self.clients.get(c).is_some_and(|cl| cl.id == id) {
                self.resume(c, out);
            }
        }
    }

    /// Tell the shell once that a paused client may read again.
    pub(super) fn resume(&mut self, c: usize, out: &mut Actions) {
        if let Some(cl) = self.clients.get_mut(c) {
            if cl.paused {
                cl.paused = false;
                out.push(Action::Resume { client: c });
            }
        }
    }

    /// No room for another message: `queue` messages wait, or the pool holds
    /// `pool_max_bytes`. An empty pool always takes one, however large.
    pub(super) fn pool_full(&self, pool: usize) -> bool {
        let p = &self.pools[pool];
        p.waiting >= p.settings.queue as usize || p.bytes >= self.limits.pool_max_bytes
    }

    /// The instance's process died or is being stopped: what it had in flight is
    /// delivered again (answered replies were read first), its backlog goes elsewhere.
    pub(super) fn redeliver(
        &mut self,
        k: usize,
        failure: Failure,
        now: Instant,
        out: &mut Actions,
    ) {
        let inst = &mut self.instances[k];
        let entries = std::mem::take(&mut inst.inflight);
        inst.inflight_n = 0;
        // A probe counts the entries ahead of it; in messages once runs are split.
        if let Some(p) = inst.probe.as_mut() {
            p.ahead = entries
                .iter()
                .take(p.ahead)
                .map(|&m| self.msgs[m].count as usize)
                .sum();
        }
        let mut inflight = Vec::with_capacity(entries.len());
        for m in entries {
            inflight.extend(self.split_run(m));
        }
        let inst = &mut self.instances[k];
        // Messages the worker never read (the tail of the FIFO, wholly unread) were
        // not worked on: they cost no attempt, even at the head.
        let mut unread = std::mem::take(&mut inst.unread);
        // A probe in the pipe: its bytes are among the unread ones, between the
        // messages ahead of it and those behind it. It is dropped (not redelivered).
        let probe = inst.probe.take();
        let mut untouched = 0;
        for (i, &m) in inflight.iter().enumerate().rev() {
            if let Some(p) = probe.as_ref().filter(|p| p.ahead == i + 1) {
                if failure != Failure::Died || p.len > unread {
                    break;
                }
                unread -= p.len;
            }
            let len = self.msgs[m].payload.len();
            if failure != Failure::Died || len > unread {
                break;
            }
            unread -= len;
            untouched += 1;
        }
        let charged = inflight.len() > untouched;
        inst.deadline_at = None;
        let pool = inst.pool;
        // A tagged worker works on all of its messages at once: each is charged.
        let charge_all = self.is_tagged(k);
        self.tags_forget(k);
        // Redelivered in their original order, ahead of everything waiting. Only the
        // oldest is charged an attempt: it is the one the worker was working on
        // (answers come in order); the others were merely queued in its pipe.
        let mut again = Vec::new();
        for (i, m) in inflight.into_iter().enumerate() {
            let msg = &mut self.msgs[m];
            if (i == 0 && charged) || charge_all {
                msg.failures += 1;
            }
            if msg.failures > msg.retries {
                let why = match failure {
                    Failure::TimedOut => "retries exhausted (timed out)",
                    Failure::Died => "retries exhausted (worker died)",
                };
                self.answer(m, Reply::Error(why), out);
            } else {
                again.push(m);
            }
        }
        if !again.is_empty() {
            log::info!(
                "{}: delivering {} unanswered message(s) again",
                self.instances[k].label,
                again.len()
            );
        }
        self.pools[pool].waiting += again.len();
        self.rehome_backlog(k, now, out);
        self.place_again(pool, again, now, out);
        self.pool_changed(pool, now, out);
        self.pool_pump(pool, now, out);
    }

    /// Messages taken back from an instance (already counted as waiting), in their
    /// original order, ahead of everything waiting: those free to go anywhere are
    /// written at once while some instance has room, in order, and the rest wait at
    /// the front of the queue in order; pinned ones go to their instances' backlogs.
    pub(super) fn place_again(
        &mut self,
        pool: usize,
        again: Vec<usize>,
        now: Instant,
        out: &mut Actions,
    ) {
        let (any, pinned): (Vec<usize>, Vec<usize>) = again
            .into_iter()
            .partition(|&m| matches!(self.msgs[m].pin, Pin::Any(_)));
        for m in pinned.into_iter().rev() {
            self.place(m, true, now, out);
        }
        let mut wait = Vec::new();
        for m in any {
            if wait.is_empty() {
                if let Placement::Assign(k) = self.placement(m) {
                    self.pools[pool].waiting -= 1;
                    self.assign(m, k, now, out);
                    continue;
                }
            }
            wait.push(m);
        }
        for m in wait.into_iter().rev() {
            self.pools[pool].queue.push_front(m);
            self.arm_expiry_for(pool, m, out);
        }
    }

    /// Backlog messages that are not pinned to this very slot go elsewhere;
    /// slot-pinned ones stay while the slot may come back.
    pub(super) fn rehome_backlog(&mut self, k: usize, now: Instant, out: &mut Actions) {
        let inst = &mut self.instances[k];
        let coming_back = inst.view.coming_back;
        let backlog = std::mem::take(&mut inst.backlog);
        let mut keep = VecDeque::new();
        let mut moved = Vec::new();
        for m in backlog {
            match self.msgs[m].pin {
                Pin::Slot(_) if coming_back => keep.push_back(m),
                Pin::Slot(_) => {
                    self.pools[self.msgs[m].pool].waiting -= 1;
                    self.answer(m, Reply::Error("instance stopped"), out);
                }
                _ => moved.push(m),
            }
        }
        self.instances[k].backlog = keep;
        for m in moved.into_iter().rev() {
            self.place(m, true, now, out);
        }
    }

    /// Recompute whether the pool has live instances, for queue expiry.
    pub(super) fn pool_changed(&mut self, pool: usize, now: Instant, out: &mut Actions) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let live = p
            .slots
            .iter()
            .any(|&k| self.member(pool, k).is_some_and(|i| i.view.is_live()));
        let p = &mut self.pools[pool];
        if live {
            p.empty_since = None;
            p.expire_at = None;
        } else if p.empty_since.is_none() {
            p.empty_since = Some(now);
            self.arm_expiry(pool, out);
        }
    }

    /// A message waits in a pool without live instances: arm expiry if it is the
    /// first to expire.
    fn arm_expiry_for(&mut self, pool: usize, m: usize, out: &mut Actions) {
        let p = &self.pools[pool];
        let Some(since) = p.empty_since else {
            return;
        };
        let msg = &self.msgs[m];
        let Some(t) = msg.timeout else {
            return;
        };
        let at = deadline(since.max(msg.queued_at), t);
        if p.expire_at.is_none_or(|cur| at < cur) {
            let gen = self.gen();
            let p = &mut self.pools[pool];
            p.expire_at = Some(at);
            p.expire_gen = gen;
            out.push(Action::Arm {
                at,
                timer: Timer::PoolQueue { pool, gen },
            });
        }
    }

    /// Messages of this pool that wait for an instance, wherever they wait.
    pub(super) fn pool_waiting_msgs(&self, pool: usize) -> Vec<usize> {
        let p = &self.pools[pool];
        let mut v: Vec<usize> = p.queue.iter().copied().collect();
        for &k in p.slots.iter().chain(&p.retiring) {
            if let Some(i) = self.member(pool, k) {
                if !i.view.is_live() {
                    v.extend(i.backlog.iter().copied());
                }
            }
        }
        v
    }

    pub(super) fn arm_expiry(&mut self, pool: usize, out: &mut Actions) {
        let Some(since) = self.pools[pool].empty_since else {
            return;
        };
        let next = self
            .pool_waiting_msgs(pool)
            .into_iter()
            .filter_map(|m| {
                let msg = &self.msgs[m];
                msg.timeout.map(|t| deadline(since.max(msg.queued_at), t))
            })
            .min();
        let gen = self.gen();
        let p = &mut self.pools[pool];
        p.expire_at = next;
        p.expire_gen = gen;
        if let Some(at) = next {
            out.push(Action::Arm {
                at,
                timer: Timer::PoolQueue { pool, gen },
            });
        }
    }

    /// Remove a waiting message from the queue or backlog that holds it.
    pub(super) fn unlink_waiting(&mut self, pool: usize, m: usize) {
        let p = &mut self.pools[pool];
        p.waiting -= self.msgs[m].count as usize;
        if let Some(i) = p.queue.iter().position(|&x| x == m) {
            p.queue.remove(i);
            return;
        }
        for &k in p.slots.iter().chain(&p.retiring) {
            if let Some(inst) = self.instances.get_mut(k) {
                if let Some(i) = inst.backlog.iter().position(|&x| x == m) {
                    inst.backlog.remove(i);
                    return;
                }
            }
        }
        // Backlogs of instances the pool no longer lists.
        for k in 0..self.instances.0.len() {
            if let Some(inst) = self.instances.get_mut(k) {
                if let Some(i) = inst.backlog.iter().position(|&x| x == m) {
                    inst.backlog.remove(i);
                    return;
                }
            }
        }
    }

    /// A new message of `client` (already counted in its `outstanding`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_msg(
        &mut self,
        client: usize,
        client_id: u64,
        seq: Option<u64>,
        payload: super::payload::Payload,
        pool: usize,
        pin: Pin,
        terms: super::Terms,
        gather: Option<(usize, usize)>,
        now: Instant,
    ) -> usize {
        let len = payload.len();
        let m = self.msgs.insert(Msg {
            client,
            client_id,
            seq,
            payload,
            count: 1,
            pool,
            pin,
            timeout: terms.timeout,
            retries: terms.retries,
            failures: 0,
            gather,
            queued_at: now,
        });
        let p = &mut self.pools[pool];
        p.waiting += 1;
        p.bytes += len;
        m
    }

    /// Complete a message with a reply line or an error, and forget it.
    pub(super) fn answer(&mut self, m: usize, reply: Reply<'_>, out: &mut Actions) {
        let msg = self.msgs.remove(m);
        if let Some(p) = self.pools.get_mut(msg.pool) {
            p.bytes -= msg.payload.retained();
            if let Reply::Error(why) = &reply {
                for _ in 0..msg.count {
                    count_error(&mut p.errors, why);
                }
            }
        }
        if msg.count > 1 {
            // A run answered as a whole (shutdown): each of its lines gets the reply.
            for i in 0..u64::from(msg.count) {
                let seq = msg.seq.map(|s| s + i);
                self.emit(msg.client, msg.client_id, seq, reply.clone(), out);
            }
            return;
        }
        let Some((g, pos)) = msg.gather else {
            return self.emit(msg.client, msg.client_id, msg.seq, reply, out);
        };
        let gather = &mut self.gathers[g];
        if gather.replies[pos].is_none() {
            let mut line = Vec::new();
            reply.write_to(&mut line, &self.limits.error_prefix);
            gather.errors |= reply.is_error();
            gather.replies[pos] = Some(line);
            gather.remaining -= 1;
        }
        if gather.remaining == 0 {
            let gather = self.gathers.remove(g);
            let all = gather.replies.into_iter().flatten().flatten().collect();
            let reply = Reply::Gathered(all, gather.errors);
            self.emit(gather.client, gather.client_id, gather.seq, reply, out);
        }
    }

    /// An immediate error reply to a line just read (no route, too long...).
    pub(super) fn reply_now(&mut self, c: usize, why: &str, out: &mut Actions) {
        let Some(cl) = self.clients.get_mut(c) else {
            return;
        };
        let seq = Some(cl.order.reserve());
        cl.outstanding += 1;
        let id = cl.id;
        self.emit(c, id, seq, Reply::Error(why), out);
    }

    /// Hand a reply to the shell, in order when `seq` is set. The common case (the
    /// reply is the next one due) goes straight out.
    pub(super) fn emit(
        &mut self,
        c: usize,
        id: u64,
        seq: Option<u64>,
        reply: Reply<'_>,
        out: &mut Actions,
    ) {
        let Some(client) = self.clients.get_mut(c).filter(|cl| cl.id == id) else {
            return; // the client left; its replies go nowhere
        };
        if reply.is_error() {
            client.errors += 1;
        }
        let prefix = &self.limits.error_prefix;
        deliver(client, c, seq, 1, out, |buf| reply.write_to(buf, prefix));
        if client.stalled.is_none() {
            self.resume(c, out);
        }
    }

    /// Hand the replies to `n` consecutive messages of a client to the shell in one
    /// piece: `block` is their lines, each ending in `\n` (a run's replies read
    /// together), the first for sequence number `seq` when the route is ordered.
    pub(super) fn emit_span(
        &mut self,
        c: usize,
        id: u64,
        seq: Option<u64>,
        n: usize,
        block: &[u8],
        out: &mut Actions,
    ) {
        let Some(client) = self.clients.get_mut(c).filter(|cl| cl.id == id) else {
            return;
        };
        deliver(client, c, seq, n, out, |buf| buf.extend_from_slice(block));
        if client.stalled.is_none() {
            self.resume(c, out);
        }
    }

    /// Instance `k` answered message `m` (with a reply line, or an error in its
    /// place): the client gets it, the instance more work, or it is drained.
    pub(super) fn answered(
        &mut self,
        k: usize,
        m: usize,
        reply: Result<&[u8], &str>,
        now: Instant,
        out: &mut Actions,
    ) {
        match reply {
            Ok(line) => self.answer(m, Reply::Line(line), out),
            Err(why) => self.answer(m, Reply::Error(why), out),
        }
        self.instance_pull(k, now, out);
        self.maybe_drained(k, out);
        self.check();
    }

    /// After a reply: a leaving instance with nothing left is stopped.
    pub(super) fn maybe_drained(&mut self, k: usize, out: &mut Actions) {
        let Some(i) = self.instances.get(k) else {
            return;
        };
        let Some(pool) = self.pools.get(i.pool) else {
            return;
        };
        let queue_done = !pool.draining() || pool.queue.is_empty();
        if i.view.leaving
            && i.view.running
            && i.inflight.is_empty()
            && i.backlog.is_empty()
            && queue_done
        {
            out.push(Action::Drained { instance: k });
        }
    }
}

/// Replies to `n` consecutive messages of `client` (key `c`), written by `write`:
/// out now when they are next in order (with what waited behind them), else held
/// in its reorder buffer as one span.
fn deliver(
    client: &mut super::Client,
    c: usize,
    seq: Option<u64>,
    n: usize,
    out: &mut Actions,
    write: impl FnOnce(&mut Vec<u8>),
) {
    client.outstanding = client.outstanding.saturating_sub(n as u32);
    match seq {
        Some(seq) if !client.order.take_next_span(seq, n) => {
            let mut v = Vec::new();
            write(&mut v);
            let len = v.len();
            if client.order.fill_span(seq, n, v) {
                client.order_bytes += len;
            }
        }
        _ => {
            let order = &mut client.order;
            let order_bytes = &mut client.order_bytes;
            client.unwritten += out.client_bytes(c, |buf| {
                write(buf);
                while let Some(b) = order.pop_ready() {
                    *order_bytes -= b.len();
                    buf.extend_from_slice(&b);
                }
            });
        }
    }
}

/// One more error reply for `why` (a handful of distinct reasons per pool).
pub(super) fn count_error(errors: &mut Vec<(Box<str>, u64)>, why: &str) {
    match errors.iter_mut().find(|(r, _)| &**r == why) {
        Some((_, n)) => *n += 1,
        None => errors.push((why.into(), 1)),
    }
}
