//! The counts only metrics need, kept by the shell as things happen: messages by
//! result, reply latencies, exits by cause, failed health probes, reloads.
//!
//! What the daemon already keeps for status (state, restarts, in flight, queued, CPU,
//! RSS) is read from its own state when a [`Snapshot`](super::Snapshot) is built;
//! [`PoolCounters::fill`] adds these counts to it. Pools are indexed by the shell's
//! pool key and instance slots by index, so the hot path (one
//! [`PoolCounters::answered`] per reply) is an index and a few additions, no lookup
//! by name and no allocation.

use std::time::Duration;

use super::{PoolSnapshot, ReplyHistogram};

/// Counts of one instance slot (`pool[index]`): they survive restarts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotCounters {
    /// By cause, in first-seen order (a handful of causes).
    pub exits: Vec<(&'static str, u64)>,
    pub health_failures: u64,
}

/// Counts of one pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolCounters {
    answered: u64,
    /// Error replies by reason, in first-seen order.
    errors: Vec<(&'static str, u64)>,
    replies: ReplyHistogram,
    slots: Vec<SlotCounters>,
}

fn bump(list: &mut Vec<(&'static str, u64)>, key: &'static str) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => list.push((key, 1)),
    }
}

impl PoolCounters {
    /// A worker's reply was delivered, `latency` after the worker could start on the
    /// message (see [`ReplyHistogram`]).
    pub fn answered(&mut self, latency: Duration) {
        self.answered_n(latency, 1);
    }

    /// `n` replies delivered together, each `latency` after the worker could start.
    pub fn answered_n(&mut self, latency: Duration, n: u64) {
        self.answered += n;
        self.replies.observe_n(latency, n);
    }

    /// A message got an error reply (`reason` as in the reply, without the prefix).
    pub fn error(&mut self, reason: &'static str) {
        bump(&mut self.errors, reason);
    }

    /// The instance of slot `index` exited (or was stopped) for `cause`.
    pub fn exit(&mut self, index: usize, cause: &'static str) {
        bump(&mut self.slot(index).exits, cause);
    }

    /// A health probe of slot `index` failed.
    pub fn health_failure(&mut self, index: usize) {
        self.slot(index).health_failures += 1;
    }

    /// The pool shrank to `count` instances: the counts of removed slots go.
    pub fn truncate(&mut self, count: usize) {
        self.slots.truncate(count);
    }

    fn slot(&mut self, index: usize) -> &mut SlotCounters {
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, SlotCounters::default);
        }
        &mut self.slots[index]
    }

    /// Adds these counts to `pool`, whose instances the shell has filled in.
    pub fn fill(&self, pool: &mut PoolSnapshot) {
        pool.messages = std::iter::once(("answered", self.answered))
            .chain(self.errors.iter().copied())
            .map(|(r, n)| (r.to_string(), n))
            .collect();
        pool.replies = self.replies.clone();
        for inst in &mut pool.instances {
            if let Some(s) = self.slots.get(inst.index as usize) {
                inst.exits = s.exits.iter().map(|(c, n)| (c.to_string(), *n)).collect();
                inst.health_failures = s.health_failures;
            }
        }
    }
}

/// All pools' counts, by pool key, and the reload counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pools: Vec<Option<PoolCounters>>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

impl Counters {
    /// The counts of the pool with this key (created empty on first use).
    pub fn pool(&mut self, key: usize) -> &mut PoolCounters {
        if self.pools.len() <= key {
            self.pools.resize_with(key + 1, || None);
        }
        self.pools[key].get_or_insert_with(PoolCounters::default)
    }

    /// The counts of the pool with this key, if any were recorded.
    pub fn get(&self, key: usize) -> Option<&PoolCounters> {
        self.pools.get(key).and_then(Option::as_ref)
    }

    /// The pool with this key was removed: its counts go (a new pool that reuses the
    /// key starts from zero).
    pub fn remove(&mut self, key: usize) {
        if let Some(p) = self.pools.get_mut(key) {
            *p = None;
        }
    }

    /// A reload was applied (`ok`) or refused.
    pub fn reload(&mut self, ok: bool) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{render, InstanceSnapshot, Snapshot};
    use super::*;

    #[test]
    fn counts_fill_a_snapshot() {
        let mut c = Counters::default();
        let p = c.pool(3);
        p.answered(Duration::from_millis(2));
        p.answered(Duration::from_millis(20));
        p.error("retries exhausted");
        p.error("too long");
        p.error("retries exhausted");
        p.exit(1, "signal");
        p.exit(1, "health");
        p.exit(1, "signal");
        p.health_failure(1);
        c.reload(true);
        c.reload(false);
        c.reload(true);

        let mut snap = PoolSnapshot {
            name: "web".into(),
            instances: vec![
                InstanceSnapshot {
                    index: 0,
                    state: "running",
                    ..Default::default()
                },
                InstanceSnapshot {
                    index: 1,
                    state: "backoff",
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        c.get(3).unwrap().fill(&mut snap);
        assert_eq!(
            snap.messages,
            vec![
                ("answered".to_string(), 2),
                ("retries exhausted".to_string(), 2),
                ("too long".to_string(), 1)
            ]
        );
        assert_eq!(snap.replies.count(), 2);
        assert!(snap.instances[0].exits.is_empty());
        assert_eq!(
            snap.instances[1].exits,
            vec![("signal".to_string(), 2), ("health".to_string(), 1)]
        );
        assert_eq!(snap.instances[1].health_failures, 1);
        assert_eq!((c.reloads_ok, c.reloads_failed), (2, 1));

        let text = render(Snapshot {
            pools: vec![snap],
            reloads_ok: c.reloads_ok,
            reloads_failed: c.reloads_failed,
        });
        assert!(text.contains("orchd_exits_total{pool=\"web\",instance=\"1\",cause=\"signal\"} 2"));
        assert!(text.contains("orchd_messages_total{pool=\"web\",result=\"answered\"} 2"));
    }

    #[test]
    fn removed_pools_and_slots_start_from_zero() {
        let mut c = Counters::default();
        c.pool(0).exit(4, "exit-0");
        c.pool(0).truncate(2);
        let mut snap = PoolSnapshot {
            instances: vec![InstanceSnapshot {
                index: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        c.get(0).unwrap().fill(&mut snap);
        assert!(snap.instances[0].exits.is_empty());
        c.pool(0).error("no route");
        c.remove(0);
        assert!(c.get(0).is_none());
        assert_eq!(c.pool(0), &PoolCounters::default());
        c.remove(99);
    }
}
