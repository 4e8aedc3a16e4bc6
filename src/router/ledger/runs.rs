//! Runs (issue 8): an entry of the ledger (`Msg`) may stand for `count`
//! consecutive messages of one client, fresh, on one round-robin or least-busy
//! rule, with consecutive sequence numbers and their lines in one buffer. A run
//! forms in flight (`run_join`: the next lines of a read for the instance just
//! chosen join its entry), in a pool queue (`queue_join`: a line queued behind the
//! same client's run joins it), and en bloc (`join_block`: when every line a client
//! sends goes to one such rule, the lines of a read that follow a run join it in one
//! step, one copy of their bytes, their sequence numbers reserved together, the
//! budgets charged once, exactly the lines that joining one by one would take). The
//! pump hands a queued run out whole or its head (`split_head`); replies answer a
//! run's lines in order (`events.rs`); at a death or timeout a run is split back
//! into single messages before redelivery (`split_run`).

use std::time::Instant;

use super::{Actions, Ledger, Msg, Pin, Terms};
use crate::config::Strategy;

/// A client's line (without `\n`) that a round-robin or least-busy rule routes, as
/// `submit` sees it: it may join a run.
#[derive(Clone, Copy)]
pub(super) struct Joining<'a> {
    pub c: usize,
    pub client_id: u64,
    /// Its sequence number (ordered routes).
    pub seq: Option<u64>,
    pub line: &'a [u8],
    pub pool: usize,
    pub s: Strategy,
    pub terms: Terms,
}

/// Where the block goes.
enum Target {
    /// The current run's in-flight entry at this instance.
    Run(usize),
    /// The last run in the pool's queue.
    Queue,
}

impl Ledger {
    /// Every line client `c` sends goes to one round-robin or least-busy rule: its
    /// lines may join runs en bloc.
    pub(super) fn bulk_client(&self, c: usize) -> bool {
        self.bulk_rule(c).is_some()
    }

    /// The rule of a [`Ledger::bulk_client`]: its listener's first, matching every
    /// line, round-robin or least-busy.
    fn bulk_rule(&self, c: usize) -> Option<&super::Rule> {
        let l = self.clients.get(c)?.listener?;
        let rule = self.rules.iter().find(|r| r.listener == l)?;
        let any = matches!(rule.strategy, Strategy::RoundRobin | Strategy::LeastBusy);
        (rule.matcher.is_none() && any).then_some(rule)
    }

    /// Join the complete lines at the start of `rest` (a client's read, from the
    /// next line on) to the run they would join one by one; returns the bytes and
    /// lines taken (0 when the next line must go through `submit`). `lines`: the
    /// complete lines in `rest`. Only for a [`Ledger::bulk_client`].
    pub(super) fn join_block(
        &mut self,
        c: usize,
        rest: &[u8],
        lines: usize,
        now: Instant,
        out: &mut Actions,
    ) -> (usize, usize) {
        let (Some(cl), Some(rule)) = (self.clients.get(c), self.bulk_rule(c)) else {
            return (0, 0);
        };
        let (s, pool, ordered) = (rule.strategy, rule.pool, rule.ordered);
        let terms = Terms {
            timeout: rule.timeout,
            retries: rule.retries,
        };
        let Some(p) = self.pools.get(pool) else {
            return (0, 0);
        };
        if p.slots.is_empty() || cl.stalled.is_some() {
            return (0, 0);
        }
        let seq = ordered.then(|| cl.order.next_seq());
        // The entry the next line would join, and how many lines it may take.
        let (target, m, room) = if p.queue.is_empty() {
            let Some(run) = self.run.filter(|r| r.pool == pool && r.strategy == s) else {
                return (0, 0);
            };
            let (Some(m), k) = (run.msg, run.inst) else {
                return (0, 0);
            };
            let max = p.settings.max_inflight;
            if p.draining() || !self.run_tail_open(pool, k, m) {
                return (0, 0);
            }
            let i = &self.instances[k];
            let room = run.left.min(i.room(max).saturating_sub(i.inflight_n));
            (Target::Run(k), m, room)
        } else {
            let Some(&m) = p.queue.back() else {
                return (0, 0);
            };
            if self.msgs[m].queued_at != now {
                return (0, 0);
            }
            let room = (p.settings.queue as usize).saturating_sub(p.waiting);
            (Target::Queue, m, room)
        };
        let msg = &self.msgs[m];
        if !joinable(msg, c, cl.id, seq, s, terms) {
            return (0, 0);
        }
        let room = room
            .min(self.limits.max_outstanding.saturating_sub(cl.outstanding) as usize)
            .min(RUN_MAX_LINES - msg.count as usize);
        if cl.unwritten + cl.order_bytes >= self.limits.max_client_out {
            return (0, 0);
        }
        // The lines, while each would still be taken: no `\r` to strip, and the
        // byte budgets had room before it (as `submit` checks them).
        // The run holds at most RUN_MAX_BYTES: whole lines up to there.
        let cap = RUN_MAX_BYTES.saturating_sub(msg.payload.len());
        let within = &rest[..cap.min(rest.len())];
        let all = memchr::memrchr(b'\n', within).map_or(0, |i| i + 1);
        let all_lines = if within.len() == rest.len() {
            lines
        } else {
            memchr::memchr_iter(b'\n', &rest[..all]).count()
        };
        let (end, n) = if all_lines <= room
            && p.bytes + all < self.limits.pool_max_bytes
            && memchr::memchr(b'\r', &rest[..all]).is_none()
        {
            // The common case: every line that fits, found without a look at each.
            (all, all_lines)
        } else {
            let (mut end, mut n) = (0, 0);
            let mut pool_bytes = p.bytes;
            for nl in memchr::memchr_iter(b'\n', &rest[..all]) {
                if n == room
                    || pool_bytes >= self.limits.pool_max_bytes
                    || (nl > end && rest[nl - 1] == b'\r')
                {
                    break;
                }
                pool_bytes += nl + 1 - end;
                end = nl + 1;
                n += 1;
            }
            (end, n)
        };
        if n == 0 {
            return (0, 0);
        }
        let block = &rest[..end];
        let cl = &mut self.clients[c];
        cl.outstanding += n as u32;
        if ordered {
            cl.order.reserve_n(n);
        }
        let msg = &mut self.msgs[m];
        msg.count += n as u32;
        let more = msg.payload.push_lines(block);
        let p = &mut self.pools[pool];
        p.bytes += more;
        match target {
            Target::Queue => p.waiting += n,
            Target::Run(k) => {
                self.instances[k].inflight_n += n;
                if let Some(run) = self.run.as_mut() {
                    run.left -= n;
                }
                out.worker_bytes_with(k, |b| b.extend_from_slice(block));
            }
        }
        debug_assert!(matches!(self.msgs[m].pin, Pin::Any(_)));
        (end, n)
    }

    /// Message `m` was just given to `k` as part of the current run: if it is in
    /// flight there (last), the run's next lines may join it.
    pub(super) fn run_entry(&mut self, k: usize, m: usize) {
        let last = self.instances.get(k).and_then(|i| i.inflight.back()) == Some(&m);
        if let Some(run) = self.run.as_mut().filter(|r| r.inst == k) {
            run.msg = last.then_some(m);
        }
    }

    /// Entry `m` of instance `k` (of `pool`) may take more lines: a live `lines`
    /// instance, the entry last in flight and behind the probe if there is one.
    fn run_tail_open(&self, pool: usize, k: usize, m: usize) -> bool {
        self.proto.get(k).is_none()
            && self.member(pool, k).is_some_and(|i| {
                i.view.is_live()
                    && i.inflight.back() == Some(&m)
                    && i.probe.is_none_or(|p| p.ahead < i.inflight.len())
            })
    }

    /// The next line of a chunk that continues the current run joins its
    /// in-flight entry instead of becoming a message of its own: one entry, one
    /// payload buffer and one deadline for consecutive lines of one client to one
    /// instance. It joins only when nothing could tell the difference: same client,
    /// rule terms and pool, the next sequence number, nothing queued ahead of it, a
    /// `lines` worker, the entry still last in flight with no probe behind it, and
    /// the run's share and the instance's room not used up. Replies then answer the
    /// run's lines in order (`worker_output`); a run whose worker dies or times out
    /// is split back into single messages before redelivery (`redeliver`). True: the
    /// line joined (and was written to the worker).
    pub(super) fn run_join(&mut self, l: Joining<'_>, out: &mut Actions) -> bool {
        let Joining {
            c,
            client_id,
            seq,
            line,
            pool,
            s,
            terms,
        } = l;
        let Some(run) = self.run.filter(|r| r.pool == pool && r.strategy == s) else {
            return false;
        };
        let (Some(m), k) = (run.msg, run.inst) else {
            return false;
        };
        let Some(msg) = self.msgs.get(m) else {
            return false;
        };
        let next = joinable(msg, c, client_id, seq, s, terms);
        let open = self.run_tail_open(pool, k, m) && self.pools[pool].queue.is_empty();
        if !(next && open) || self.run_next(pool, s) != Some(k) {
            return false;
        }
        let msg = &mut self.msgs[m];
        msg.count += 1;
        self.pools[pool].bytes += msg.payload.push_line(line);
        self.instances[k].inflight_n += 1;
        out.worker_bytes_with(k, |b| {
            b.extend_from_slice(line);
            b.push(b'\n');
        });
        true
    }

    /// A line about to be queued behind message `m` of the same client, route and
    /// time joins it instead (the pump hands queued runs out whole or in parts:
    /// `pool_pump`). True: it joined.
    pub(super) fn queue_join(&mut self, l: Joining<'_>, now: Instant) -> bool {
        let p = &mut self.pools[l.pool];
        let Some(&m) = p.queue.back() else {
            return false;
        };
        let msg = &mut self.msgs[m];
        if msg.queued_at != now || !joinable(msg, l.c, l.client_id, l.seq, l.s, l.terms) {
            return false;
        }
        msg.count += 1;
        p.bytes += msg.payload.push_line(l.line);
        p.waiting += 1;
        true
    }

    /// The first `n` lines of queued run `m` as a message of their own (it stays
    /// in the queue with the rest).
    pub(super) fn split_head(&mut self, m: usize, n: usize) -> usize {
        let msg = &mut self.msgs[m];
        debug_assert!(n > 0 && n < msg.count as usize);
        let cut = memchr::memchr_iter(b'\n', &msg.payload)
            .nth(n - 1)
            .map_or(msg.payload.len(), |i| i + 1);
        let payload = msg.payload.split_off_head(cut, n);
        let head = part(msg, msg.seq, payload, n);
        msg.seq = msg.seq.map(|s| s + n as u64);
        msg.count -= n as u32;
        self.pools[head.pool].bytes += head.payload.retained();
        self.msgs.insert(head)
    }

    /// Split run `m` back into single messages, one per unanswered line, in order
    /// (they take its place; the caller puts them where it was).
    pub(super) fn split_run(&mut self, m: usize) -> Vec<usize> {
        // A run answered down to its last line still holds all of its lines.
        if !self.msgs[m].payload.is_run() {
            return vec![m];
        }
        let run = self.msgs.remove(m);
        let all: Vec<&[u8]> = super::events::lines(&run.payload).collect();
        let live = &all[all.len().saturating_sub(run.count as usize)..];
        let mut kept = 0;
        let mut singles = Vec::with_capacity(live.len());
        for (i, line) in live.iter().enumerate() {
            let payload =
                super::payload::Payload::with_newline(line.strip_suffix(b"\n").unwrap_or(line));
            kept += payload.len();
            let seq = run.seq.map(|s| s + i as u64);
            singles.push(self.msgs.insert(part(&run, seq, payload, 1)));
        }
        // The run's buffer is freed: the pool holds only the single messages now.
        let p = &mut self.pools[run.pool];
        p.bytes = p.bytes - run.payload.retained() + kept;
        singles
    }
}

/// Line `seq` of client `c` (`client_id`), routed by strategy `s` on `terms`, may
/// join `msg` as the next line of its run: fresh, same client, route and terms, and
/// the next sequence number.
pub(super) fn joinable(
    msg: &Msg,
    c: usize,
    client_id: u64,
    seq: Option<u64>,
    s: Strategy,
    terms: Terms,
) -> bool {
    let next = match (msg.seq, seq) {
        (None, None) => true,
        (Some(a), Some(b)) => a + u64::from(msg.count) == b,
        _ => false,
    };
    next && msg.client == c
        && msg.client_id == client_id
        && msg.pin == Pin::Any(s)
        && msg.timeout == terms.timeout
        && msg.retries == terms.retries
        && msg.failures == 0
        && msg.gather.is_none()
        && (msg.count as usize) < RUN_MAX_LINES
        && msg.payload.len() < RUN_MAX_BYTES
}

/// A run stops growing at this many lines, or once it holds this many bytes (a
/// queued run is handed out in parts anyway; a bounded buffer is reused by the
/// allocator rather than mapped and unmapped).
pub(super) const RUN_MAX_LINES: usize = 4096;
pub(super) const RUN_MAX_BYTES: usize = 64 << 10;

/// `count` of a run's lines as a message of their own: `payload` holds them, the
/// first has sequence number `seq`; the rest is the run's.
fn part(run: &Msg, seq: Option<u64>, payload: super::payload::Payload, count: usize) -> Msg {
    Msg {
        client: run.client,
        client_id: run.client_id,
        seq,
        payload,
        count: count as u32,
        pool: run.pool,
        pin: run.pin,
        timeout: run.timeout,
        retries: run.retries,
        failures: run.failures,
        gather: run.gather,
        queued_at: run.queued_at,
    }
}
