//! `exec` health probes run a bounded number at a time (SPEC section 10): a FIFO of
//! probes waiting for a slot, over all pools.
//!
//! The shell pushes each `exec` probe a [`HealthTracker`](super::probe::HealthTracker)
//! starts; what [`ExecQueue::push`] or [`ExecQueue::finished`] hands back is spawned
//! at once (then `HealthTracker::on_running`), so a probe's timeout counts only its
//! own run. Each instance has at most one probe in flight, so the queue never holds
//! more than one entry per instance.

use std::collections::VecDeque;

use super::probe::ProbeId;

/// `exec` probes running at once, over all pools.
pub const MAX_EXEC_PROBES: usize = 8;

/// Probes by instance key `K` (the shell's instance key).
#[derive(Debug, Clone)]
pub struct ExecQueue<K> {
    max: usize,
    running: Vec<(K, ProbeId)>,
    waiting: VecDeque<(K, ProbeId)>,
}

impl<K: Copy + Eq> Default for ExecQueue<K> {
    fn default() -> Self {
        ExecQueue::new(MAX_EXEC_PROBES)
    }
}

impl<K: Copy + Eq> ExecQueue<K> {
    /// A queue running at most `max` (at least 1) probes at once.
    pub fn new(max: usize) -> ExecQueue<K> {
        ExecQueue {
            max: max.max(1),
            running: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    /// A probe to run: handed back when it may be spawned now, else queued.
    pub fn push(&mut self, key: K, id: ProbeId) -> Option<(K, ProbeId)> {
        debug_assert!(
            !self
                .running
                .iter()
                .chain(&self.waiting)
                .any(|(k, _)| *k == key),
            "one probe per instance at a time"
        );
        if self.running.len() < self.max {
            self.running.push((key, id));
            Some((key, id))
        } else {
            self.waiting.push_back((key, id));
            None
        }
    }

    /// The probe `id` of `key` ended (exited, killed, or failed to spawn): the next
    /// probe to spawn, if one waits.
    pub fn finished(&mut self, key: K, id: ProbeId) -> Option<(K, ProbeId)> {
        let before = self.running.len();
        self.running.retain(|&(k, i)| !(k == key && i == id));
        if self.running.len() == before || self.running.len() >= self.max {
            return None;
        }
        let next = self.waiting.pop_front()?;
        self.running.push(next);
        Some(next)
    }

    /// The instance `key` is gone: its waiting probe is dropped. A running one stays
    /// counted until the shell has killed it and calls [`Self::finished`].
    pub fn forget(&mut self, key: K) {
        self.waiting.retain(|&(k, _)| k != key);
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_at_most_max_and_then_in_arrival_order() {
        let mut q: ExecQueue<usize> = ExecQueue::new(2);
        assert_eq!(q.push(1, ProbeId(1)), Some((1, ProbeId(1))));
        assert_eq!(q.push(2, ProbeId(1)), Some((2, ProbeId(1))));
        assert_eq!(q.push(3, ProbeId(1)), None);
        assert_eq!(q.push(4, ProbeId(7)), None);
        assert_eq!((q.running(), q.waiting()), (2, 2));
        assert_eq!(q.finished(2, ProbeId(1)), Some((3, ProbeId(1))));
        assert_eq!(q.finished(1, ProbeId(1)), Some((4, ProbeId(7))));
        assert_eq!(q.finished(3, ProbeId(1)), None);
        assert_eq!((q.running(), q.waiting()), (1, 0));
    }

    #[test]
    fn a_stale_or_unknown_end_frees_nothing() {
        let mut q: ExecQueue<usize> = ExecQueue::new(1);
        q.push(1, ProbeId(5));
        q.push(2, ProbeId(1));
        assert_eq!(q.finished(1, ProbeId(4)), None);
        assert_eq!(q.finished(9, ProbeId(5)), None);
        assert_eq!(q.running(), 1);
    }

    #[test]
    fn a_gone_instance_no_longer_waits() {
        let mut q: ExecQueue<usize> = ExecQueue::new(1);
        q.push(1, ProbeId(1));
        q.push(2, ProbeId(1));
        q.push(3, ProbeId(1));
        q.forget(2);
        assert_eq!(q.finished(1, ProbeId(1)), Some((3, ProbeId(1))));
        let d: ExecQueue<usize> = ExecQueue::default();
        assert_eq!(d.max, MAX_EXEC_PROBES);
    }
}
