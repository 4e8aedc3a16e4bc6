//! Lines joined to a run en bloc: when every line a client sends goes to one
//! round-robin or least-busy rule (its listener's first rule matches everything),
//! the lines of a read that follow a run, in flight or queued, join it in one step:
//! one copy of their bytes, their sequence numbers reserved together, the budgets
//! charged once. It takes exactly the lines that one [`Ledger::run_join`] or
//! [`Ledger::queue_join`] per line would, and leaves the others to them.

use std::time::Instant;

use super::{Actions, Ledger, Pin, Terms};
use crate::config::Strategy;

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
        let rule = self
            .clients
            .get(c)
            .and_then(|cl| cl.listener)
            .and_then(|l| self.rules.iter().find(|r| r.listener == l));
        rule.is_some_and(|r| {
            r.matcher.is_none() && matches!(r.strategy, Strategy::RoundRobin | Strategy::LeastBusy)
        })
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
        let Some(cl) = self.clients.get(c) else {
            return (0, 0);
        };
        let Some(l) = cl.listener else {
            return (0, 0);
        };
        let Some(rule) = self.rules.iter().find(|r| r.listener == l) else {
            return (0, 0);
        };
        let s = rule.strategy;
        if rule.matcher.is_some() || !matches!(s, Strategy::RoundRobin | Strategy::LeastBusy) {
            return (0, 0);
        }
        let (pool, ordered) = (rule.pool, rule.ordered);
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
            let open = !p.draining()
                && self.proto.get(k).is_none()
                && self.instances.get(k).is_some_and(|i| {
                    i.pool == pool
                        && i.inflight.back() == Some(&m)
                        && i.probe.is_none_or(|p| p.ahead < i.inflight.len())
                        && i.view.is_live()
                });
            if !open {
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
        if !super::place::joinable(msg, c, cl.id, seq, s, terms) {
            return (0, 0);
        }
        let room = room
            .min(self.limits.max_outstanding.saturating_sub(cl.outstanding) as usize)
            .min(super::place::RUN_MAX_LINES - msg.count as usize);
        if cl.unwritten + cl.order_bytes >= self.limits.max_client_out {
            return (0, 0);
        }
        // The lines, while each would still be taken: no `\r` to strip, and the
        // byte budgets had room before it (as `submit` checks them).
        // The run holds at most RUN_MAX_BYTES: whole lines up to there.
        let cap = super::place::RUN_MAX_BYTES.saturating_sub(msg.payload.len());
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
}
