//! orchd's own health probes in an instance's input (SPEC section 10): a `send` probe
//! travels like a message, in the instance's in-flight order, so the reply matching
//! of the messages around it stays intact, and its reply is orchd's.
//!
//! An instance has at most one probe in flight. It is not a message: it belongs to
//! no client or pool budget, does not count against `max_inflight`, is never
//! redelivered (it is dropped when the instance goes down), and has no timeout here:
//! the shell's health tracker times it from [`Action::ProbeReached`], when the
//! worker has answered every message written before it. While the worker works on
//! the probe, the clock of the message behind it has not started.

use std::time::Instant;

use super::{Action, Actions, Ledger};
use crate::config::Protocol;

/// Where the probe stands in an instance's in-flight order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InFlightProbe {
    /// In-flight messages written before it, still to be answered.
    pub ahead: usize,
    /// Its bytes (with the `\n`), for counting what a dead worker never read.
    pub len: usize,
}

impl Ledger {
    /// Write the health probe `line` (ending in `\n`) to instance `k` behind what it
    /// has in flight. False (nothing written) when the instance has no input (a
    /// running instance that is not ready yet has one: `ready.probe` probes it) or
    /// already has a probe in flight. [`Action::ProbeReached`] follows at once
    /// when nothing is ahead of it, else once the messages ahead are answered; then
    /// the next reply line is [`Action::ProbeReply`].
    pub fn probe_send(&mut self, k: usize, line: &[u8], now: Instant, out: &mut Actions) -> bool {
        let _ = now;
        // Probes are lines: a `tagged` or `node` worker would not understand one
        // (the config refuses `send` probes for those pools).
        if self.protocol_of(k) != Protocol::Lines {
            return false;
        }
        let Some(inst) = self.instances.get_mut(k) else {
            return false;
        };
        if !(inst.view.has_input || inst.view.writable) || inst.probe.is_some() {
            return false;
        }
        let ahead = inst.inflight.len();
        inst.probe = Some(InFlightProbe {
            ahead,
            len: line.len(),
        });
        out.worker_bytes_with(k, |b| b.extend_from_slice(line));
        if ahead == 0 {
            out.push(Action::ProbeReached { instance: k });
        }
        self.check();
        true
    }

    /// When the worker could start on the message its next reply answers (written
    /// to it, or the one before answered); None when that reply is the probe's or
    /// nothing is in flight. The shell measures reply latency from it.
    pub fn reply_clock(&self, k: usize) -> Option<Instant> {
        let i = self.instances.get(k)?;
        if i.inflight.is_empty() || i.probe.is_some_and(|p| p.ahead == 0) {
            return None;
        }
        i.head_since
    }

    /// Error replies to a pool's messages by reason, for metrics.
    pub fn pool_errors(&self, pool: usize) -> &[(Box<str>, u64)] {
        self.pools.get(pool).map_or(&[], |p| &p.errors)
    }

    /// Instance `k` has a probe in flight.
    pub fn probe_in_flight(&self, k: usize) -> bool {
        self.instances.get(k).is_some_and(|i| i.probe.is_some())
    }

    /// A reply line of `k`: if it answers the probe, hand it to the shell and return
    /// true (the message behind the probe, if any, starts its clock now).
    pub(super) fn probe_reply(
        &mut self,
        k: usize,
        reply: Result<&[u8], &str>,
        now: Instant,
        out: &mut Actions,
    ) -> bool {
        let Some(inst) = self.instances.get_mut(k) else {
            return false;
        };
        if inst.probe.is_none_or(|p| p.ahead > 0) {
            return false;
        }
        inst.probe = None;
        inst.head_since = Some(now);
        let line = reply.ok().map(|l| {
            let start = out.bytes.len();
            out.bytes.extend_from_slice(l);
            start..out.bytes.len()
        });
        out.push(Action::ProbeReply { instance: k, line });
        if !self.instances[k].inflight.is_empty() {
            self.arm_head_deadline(k, out);
        }
        true
    }

    /// A message ahead of the probe was answered: one fewer ahead; at none, the
    /// worker turns to the probe.
    pub(super) fn probe_advance(inst: &mut super::Inst, k: usize, out: &mut Actions) {
        if let Some(p) = inst.probe.as_mut() {
            p.ahead = p.ahead.saturating_sub(1);
            if p.ahead == 0 {
                out.push(Action::ProbeReached { instance: k });
            }
        }
    }

    /// The instance is gone: its probe with it.
    pub(super) fn probe_drop(&mut self, k: usize) {
        if let Some(i) = self.instances.get_mut(k) {
            i.probe = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{InstanceView, Limits, PoolSettings, Rule, Timer};
    use super::*;
    use crate::config::Strategy;

    const POOL: usize = 0;
    const LISTENER: usize = 0;
    const CLIENT: usize = 0;
    const W: usize = 0;

    /// One pool with one live instance (key 0) and one client; `retries` per rule.
    struct T {
        l: Ledger,
        out: Actions,
        now: Instant,
        worker: Vec<u8>,
        client: Vec<u8>,
        reached: usize,
        probe_replies: Vec<Option<Vec<u8>>>,
        timers: Vec<(Instant, Timer)>,
        restarts: usize,
    }

    fn live(writable: bool) -> InstanceView {
        InstanceView {
            running: true,
            writable,
            has_input: writable,
            leaving: false,
            coming_back: true,
        }
    }

    /// Running with a stdin, not ready yet (`ready.probe`): no messages, probes.
    fn not_ready() -> InstanceView {
        InstanceView {
            has_input: true,
            ..live(false)
        }
    }

    impl T {
        fn new(retries: u32) -> T {
            let mut t = T {
                l: Ledger::new(Limits::default()),
                out: Actions::new(),
                now: Instant::now(),
                worker: Vec::new(),
                client: Vec::new(),
                reached: 0,
                probe_replies: Vec::new(),
                timers: Vec::new(),
                restarts: 0,
            };
            t.l.pool_set(
                POOL,
                PoolSettings {
                    name: "p".into(),
                    max_inflight: 8,
                    queue: 100,
                },
            );
            t.l.pool_members(POOL, &[W], &[]);
            t.l.set_rules(vec![Rule {
                listener: LISTENER,
                pool: POOL,
                matcher: None,
                strategy: Strategy::RoundRobin,
                key: None,
                timeout: Some(Duration::from_secs(5)),
                retries,
                ordered: true,
            }]);
            t.l.instance_view(W, POOL, 0, "p[0]", live(true));
            t.l.instance_up(W, t.now, &mut t.out);
            t.l.client_open(CLIENT, Some(LISTENER));
            t.collect();
            t
        }

        fn collect(&mut self) {
            for a in self.out.list.drain(..) {
                match a {
                    Action::ToWorker { bytes, .. } => {
                        self.worker.extend_from_slice(&self.out.bytes[bytes])
                    }
                    Action::ToClient { bytes, .. } => {
                        self.client.extend_from_slice(&self.out.bytes[bytes])
                    }
                    Action::Arm { at, timer } => self.timers.push((at, timer)),
                    Action::Restart { .. } => self.restarts += 1,
                    Action::ProbeReached { instance } => {
                        assert_eq!(instance, W);
                        self.reached += 1;
                    }
                    Action::ProbeReply { instance, line } => {
                        assert_eq!(instance, W);
                        self.probe_replies
                            .push(line.map(|r| self.out.bytes[r].to_vec()));
                    }
                    Action::Drained { .. } | Action::Resume { .. } => {}
                }
            }
            self.out.clear();
            self.l.check_all();
        }

        fn send(&mut self, line: &[u8]) {
            self.l.client_line(CLIENT, line, self.now, &mut self.out);
            self.collect();
        }

        fn probe(&mut self) -> bool {
            let sent = self.l.probe_send(W, b"PING\n", self.now, &mut self.out);
            self.collect();
            sent
        }

        fn reply(&mut self, line: &[u8]) {
            self.l.worker_reply(W, Ok(line), self.now, &mut self.out);
            self.collect();
        }

        /// Fire every timer due by `now`.
        fn fire(&mut self) {
            let due: Vec<Timer> = self
                .timers
                .iter()
                .filter(|(at, _)| *at <= self.now)
                .map(|(_, t)| *t)
                .collect();
            self.timers.retain(|(at, _)| *at > self.now);
            for t in due {
                self.l.timer(t, self.now, &mut self.out);
                self.collect();
            }
        }
    }

    #[test]
    fn a_probe_with_nothing_ahead_is_reached_at_once_and_its_reply_is_orchds() {
        let mut t = T::new(2);
        assert!(t.probe());
        assert_eq!(t.worker, b"PING\n");
        assert_eq!(t.reached, 1);
        assert!(t.l.probe_in_flight(W));
        // One probe at a time.
        assert!(!t.probe());
        t.reply(b"PONG");
        assert_eq!(t.probe_replies, vec![Some(b"PONG".to_vec())]);
        assert!(t.client.is_empty(), "a client saw the probe's reply");
        assert!(!t.l.probe_in_flight(W));
        // Reply matching goes on as before.
        t.send(b"a");
        t.reply(b"A");
        assert_eq!(t.client, b"A\n");
    }

    #[test]
    fn a_probe_behind_messages_keeps_reply_matching_and_waits_its_turn() {
        let mut t = T::new(2);
        t.send(b"a");
        t.send(b"b");
        assert!(t.probe());
        t.send(b"c");
        assert_eq!(t.worker, b"a\nb\nPING\nc\n");
        assert_eq!(t.reached, 0, "messages are ahead of it");
        t.reply(b"A");
        assert_eq!(t.reached, 0);
        t.reply(b"B");
        assert_eq!(t.reached, 1, "the worker turns to the probe now");
        t.reply(b"PONG");
        t.reply(b"C");
        assert_eq!(t.client, b"A\nB\nC\n");
        assert_eq!(t.probe_replies, vec![Some(b"PONG".to_vec())]);
        assert_eq!(t.l.instance_counts(W), (0, 3));
    }

    #[test]
    fn the_message_behind_a_probe_starts_its_clock_once_the_probe_is_answered() {
        let mut t = T::new(2);
        assert!(t.probe());
        t.send(b"a");
        // No message clock runs while the worker works on the probe.
        assert!(t.l.reply_clock(W).is_none());
        t.now += Duration::from_secs(60);
        t.fire();
        assert_eq!(t.restarts, 0, "a message behind a probe timed out");
        t.reply(b"PONG");
        assert_eq!(t.l.reply_clock(W), Some(t.now));
        t.now += Duration::from_secs(5);
        t.fire();
        assert_eq!(
            t.restarts, 1,
            "its own timeout counts from the probe's reply"
        );
    }

    #[test]
    fn a_reply_too_long_answers_the_probe_with_nothing() {
        let mut t = T::new(2);
        assert!(t.probe());
        t.l.worker_reply(W, Err("reply too long"), t.now, &mut t.out);
        t.collect();
        assert_eq!(t.probe_replies, vec![None]);
        assert!(t.client.is_empty());
    }

    #[test]
    fn an_instance_that_cannot_be_written_to_takes_no_probe() {
        let mut t = T::new(2);
        t.l.instance_view(W, POOL, 0, "p[0]", live(false));
        assert!(!t.probe());
        assert!(t.worker.is_empty());
        assert!(!t.probe(), "unknown instance");
    }

    #[test]
    fn an_instance_not_ready_yet_takes_the_probe_but_no_message() {
        let mut t = T::new(2);
        t.l.instance_view(W, POOL, 0, "p[0]", not_ready());
        t.l.pool_liveness(POOL, false, t.now, &mut t.out);
        t.collect();
        t.send(b"a");
        assert!(t.worker.is_empty(), "a message waits for a ready instance");
        assert!(t.probe());
        assert_eq!(t.worker, b"PING\n");
        assert_eq!(t.reached, 1, "nothing ahead of it: reached at once");
        t.reply(b"PONG");
        assert_eq!(t.probe_replies, vec![Some(b"PONG".to_vec())]);
        assert!(t.client.is_empty());
        // Ready: the waiting message goes to it and is answered as usual.
        t.l.instance_view(W, POOL, 0, "p[0]", live(true));
        t.l.instance_up(W, t.now, &mut t.out);
        t.collect();
        assert_eq!(t.worker, b"PING\na\n");
        t.reply(b"A");
        assert_eq!(t.client, b"A\n");
    }

    #[test]
    fn at_death_the_probe_is_dropped_and_its_unread_bytes_are_not_a_messages() {
        // retries = 0: the message the worker was working on fails; one it never
        // read is delivered again. "a" was read; the probe and "b" were not.
        let mut t = T::new(0);
        t.send(b"a");
        assert!(t.probe());
        t.send(b"b");
        t.l.instance_view(W, POOL, 0, "p[0]", InstanceView::default());
        t.l.instance_unread(W, b"PING\nb\n".len());
        t.l.instance_down(W, false, t.now, &mut t.out);
        t.collect();
        assert_eq!(t.client, b"ERR retries exhausted (worker died)\n");
        assert!(!t.l.probe_in_flight(W));
        t.worker.clear();
        t.l.instance_view(W, POOL, 0, "p[0]", live(true));
        t.l.instance_up(W, t.now, &mut t.out);
        t.collect();
        assert_eq!(t.worker, b"b\n", "only the unread message comes again");
        t.reply(b"B");
        assert_eq!(t.client, b"ERR retries exhausted (worker died)\nB\n");
        assert!(t.probe_replies.is_empty());
    }
}
