//! Worker protocols in the ledger (SPEC 12): how a message is written for an
//! instance and, for `tagged`, how replies find their message by ID.
//!
//! An instance speaks `lines` unless the shell says otherwise
//! ([`Ledger::instance_protocol`]). Its in-flight FIFO (`Inst::inflight`) holds its
//! messages in send order whatever the protocol, so counts, `max_inflight`, drains
//! and the invariants need nothing protocol-specific. What differs:
//! - `node`: a message is written as a JSON string line; one that is not valid UTF-8
//!   cannot be, and gets the error reply at once, using no attempt. Replies match in
//!   order, as with `lines` ([`Ledger::worker_reply`]).
//! - `tagged`: each write gets a fresh tag ([`tagged::InFlight`]); a reply names its
//!   message by tag ([`Ledger::worker_reply_tagged`]) and answers it wherever it is in
//!   the FIFO; an unknown or already answered tag is logged and dropped. Every message
//!   has its own deadline (`timeout` from when it was written): an overdue one is
//!   taken back, charged an attempt and placed again (a late reply to it is dropped),
//!   and the instance is restarted only when it has answered nothing for `timeout`.
//!   When the instance dies, each unanswered message is charged an attempt.

use std::time::Instant;

use super::{Action, Actions, Ledger, Reply};
use crate::config::Protocol;
use crate::protocol::{self, tagged};
use crate::timers::deadline;

/// A tagged instance's messages in flight by tag (with when each was written), and
/// since when it has answered nothing.
#[derive(Debug, Default)]
pub(super) struct TagState {
    sent: tagged::InFlight<(usize, Instant)>,
    /// The last answer, or when the instance last went from idle to busy.
    quiet_since: Option<Instant>,
}

/// What the ledger keeps per instance beyond `lines`.
#[derive(Debug)]
pub(super) enum ProtoState {
    Node,
    Tagged(Box<TagState>),
}

impl Ledger {
    /// The protocol of instance `k`'s worker (default `lines`). Call after
    /// [`Ledger::instance_view`] created it; a change takes effect only while the
    /// instance has nothing in flight (a changed `protocol` replaces instances).
    pub fn instance_protocol(&mut self, k: usize, p: Protocol) {
        let Some(inst) = self.instances.get(k) else {
            return;
        };
        if self.protocol_of(k) == p || !inst.inflight.is_empty() {
            return;
        }
        match p {
            Protocol::Lines => {
                self.proto.remove(k);
            }
            Protocol::Node => self.proto.insert(k, ProtoState::Node),
            Protocol::Tagged => self.proto.insert(k, ProtoState::Tagged(Box::default())),
        }
    }

    pub(super) fn protocol_of(&self, k: usize) -> Protocol {
        match self.proto.get(k) {
            None => Protocol::Lines,
            Some(ProtoState::Node) => Protocol::Node,
            Some(ProtoState::Tagged(_)) => Protocol::Tagged,
        }
    }

    pub(super) fn is_tagged(&self, k: usize) -> bool {
        matches!(self.proto.get(k), Some(ProtoState::Tagged(_)))
    }

    fn tags_mut(&mut self, k: usize) -> Option<&mut TagState> {
        match self.proto.get_mut(k) {
            Some(ProtoState::Tagged(t)) => Some(t),
            _ => None,
        }
    }

    /// Write message `m` for instance `k` in its protocol. False: it could not be
    /// (not UTF-8 for `node`) and was answered with an error; it is not in flight.
    pub(super) fn write_for(
        &mut self,
        m: usize,
        k: usize,
        now: Instant,
        out: &mut Actions,
    ) -> bool {
        let payload = &self.msgs[m].payload;
        if self.msgs[m].count > 1 {
            // A run (only `lines` instances take them): its lines as they are.
            debug_assert!(self.proto.get(k).is_none(), "a run for a {k} not `lines`");
            out.worker_bytes_with(k, |b| b.extend_from_slice(payload));
            return true;
        }
        let message = payload.strip_suffix(b"\n").unwrap_or(payload);
        let protocol = self.protocol_of(k);
        let tag = match self.proto.get_mut(k) {
            Some(ProtoState::Tagged(t)) => {
                if self.instances[k].inflight.is_empty() {
                    t.quiet_since = Some(now);
                }
                Some(t.sent.send((m, now)))
            }
            _ => None,
        };
        let mut refused = None;
        out.worker_bytes_with(k, |buf| {
            if let Err(e) = protocol::write_message(buf, protocol, tag, message) {
                refused = Some(e);
            }
        });
        if let Some(e) = refused {
            log::warn!("{}: {e}; answered with an error", self.instances[k].label);
            self.answer(m, Reply::Error(e.reason()), out);
            return false;
        }
        if let Some(t) = self.msgs[m].timeout.filter(|_| tag.is_some()) {
            self.arm_deadline_at(k, deadline(now, t), out);
        }
        true
    }

    /// A reply line of a tagged instance, already split into its tag and reply (or
    /// an error reason in place of the reply: too long): the answer to the message
    /// sent with that tag. A tag that is not in flight is logged and dropped.
    pub fn worker_reply_tagged(
        &mut self,
        k: usize,
        tag: tagged::Tag,
        reply: Result<&[u8], &str>,
        now: Instant,
        out: &mut Actions,
    ) {
        let Some(t) = self.tags_mut(k) else {
            return;
        };
        let m = match t.sent.answer(tag) {
            Ok((m, _)) => m,
            Err(why) => {
                log::warn!(
                    "{}: protocol error: reply with ID {tag} dropped: {why}",
                    self.instances[k].label
                );
                return;
            }
        };
        t.quiet_since = Some(now);
        let inst = &mut self.instances[k];
        if let Some(pos) = inst.inflight.iter().position(|&x| x == m) {
            inst.inflight.remove(pos);
            inst.inflight_n -= 1;
        }
        inst.answered += 1;
        self.answered(k, m, reply, now, out);
    }

    /// When instance `k` (tagged) must be looked at next: the first message deadline,
    /// or the end of its quiet time, whichever comes first.
    pub(super) fn tagged_deadline(&self, k: usize) -> Option<Instant> {
        let Some(ProtoState::Tagged(t)) = self.proto.get(k) else {
            return None;
        };
        let inst = &self.instances[k];
        let quiet = inst
            .inflight
            .front()
            .and_then(|&m| self.msgs[m].timeout)
            .zip(t.quiet_since)
            .map(|(to, since)| deadline(since, to));
        let first = t
            .sent
            .iter()
            .filter_map(|(_, &(m, at))| self.msgs[m].timeout.map(|to| deadline(at, to)))
            .min();
        quiet.into_iter().chain(first).min()
    }

    /// A tagged instance's deadline timer: restart it if it has answered nothing for
    /// `timeout`; else take back each overdue message, charge it an attempt and place
    /// it again.
    pub(super) fn tagged_timer(&mut self, k: usize, now: Instant, out: &mut Actions) {
        let Some(ProtoState::Tagged(t)) = self.proto.get(k) else {
            return;
        };
        let inst = &self.instances[k];
        let quiet_for = t.quiet_since.map(|s| now.saturating_duration_since(s));
        let oldest_timeout = inst.inflight.front().and_then(|&m| self.msgs[m].timeout);
        if let (Some(q), Some(to)) = (quiet_for, oldest_timeout) {
            if q >= to {
                log::warn!(
                    "{} answered nothing within {}; restarting it",
                    inst.label,
                    crate::timers::fmt_duration(q)
                );
                out.push(Action::Restart { instance: k });
                return;
            }
        }
        let overdue: Vec<(tagged::Tag, usize)> = t
            .sent
            .iter()
            .filter(|(_, &(m, at))| {
                self.msgs[m]
                    .timeout
                    .is_some_and(|to| deadline(at, to) <= now)
            })
            .map(|(tag, &(m, _))| (tag, m))
            .collect();
        if !overdue.is_empty() {
            log::warn!(
                "{}: {} message(s) not answered in time (each charged an attempt)",
                inst.label,
                overdue.len()
            );
        }
        let pool = inst.pool;
        let mut again = Vec::new();
        for (tag, m) in overdue {
            if let Some(t) = self.tags_mut(k) {
                t.sent.take_back(tag);
            }
            let inst = &mut self.instances[k];
            if let Some(pos) = inst.inflight.iter().position(|&x| x == m) {
                inst.inflight.remove(pos);
                inst.inflight_n -= 1;
            }
            let msg = &mut self.msgs[m];
            msg.failures += 1;
            if msg.failures > msg.retries {
                self.answer(m, Reply::Error("retries exhausted (timed out)"), out);
            } else {
                again.push(m);
            }
        }
        self.pools[pool].waiting += again.len();
        self.place_again(pool, again, now, out);
        if let Some(at) = self.tagged_deadline(k) {
            self.arm_deadline_at(k, at, out);
        }
        self.instance_pull(k, now, out);
        self.maybe_drained(k, out);
    }

    /// The tagged instance's messages are no longer in flight (it died, or orchd
    /// gives up on them): later replies to their tags are dropped.
    pub(super) fn tags_forget(&mut self, k: usize) {
        if let Some(t) = self.tags_mut(k) {
            t.sent.drain().for_each(drop);
            t.quiet_since = None;
        }
    }

    /// Invariant: a tagged instance's tags name exactly its in-flight messages.
    pub(super) fn check_tags(&self) {
        for (k, s) in self.proto.iter() {
            let ProtoState::Tagged(t) = s else {
                continue;
            };
            let inflight = self.instances.get(k).map(|i| i.inflight.len()).unwrap_or(0);
            assert_eq!(t.sent.len(), inflight, "instance {k}: tags vs in flight");
            for (_, &(m, _)) in t.sent.iter() {
                assert!(
                    self.instances[k].inflight.contains(&m),
                    "instance {k}: tag for message {m} not in flight"
                );
            }
        }
    }
}
