//! Rolling replacement of a pool's instances, as a pure state machine (SPEC 6, 9).
//!
//! A [`Roll`] replaces, one index at a time, the instances that run another spec than
//! their pool (a reload changed what the process is) or that `orchd ctl restart` named.
//! Start first: the replacement starts beside the old instance; once it has stayed up
//! for [`START_GRACE`] it takes the slot and the old one retires (drains, stops, is
//! forgotten); when the old one is gone, the next index follows. A replacement that
//! stops for good before that abandons the roll: a broken new version never replaces a
//! working old one.
//!
//! The machine sees no process, clock or timer: the shell tells it what happened
//! ([`Event`], with the time where it matters, and a [`Slots`] view of the pool) and
//! performs what it decides ([`Action`]): create and start a replacement, arm the
//! promote timer, hand a slot over, retire an instance. Instances are the shell's keys.
//!
//! Promote timers carry a generation, bumped on every arm: a timer armed for an earlier
//! start of the same replacement (it crashed and was restarted) is stale and ignored.
//! On top of it, promotion checks that the replacement has really been running for
//! [`START_GRACE`], so even a key reused by another roll cannot be promoted early.
//!
//! Readiness and `rolling` (SPEC 10, [`Slots::rolling`], [`Slots::gated`]): in a pool
//! that sets `ready`, "stayed up" is [`Event::Ready`] instead of the promote timer.
//! Up to `rolling.parallel` replacements are under way at once (started, not yet
//! ready); the next one starts as soon as one is ready, and old instances drain in
//! parallel. `stop-first`: the replacement is created and takes the slot at once, the
//! old instance retires, and the replacement is launched only once the old one is
//! gone ([`Action::Create`], [`Action::Launch`]), so a slot never runs two processes.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::config::{RollOrder, Rolling};
use crate::supervisor::lifecycle::START_GRACE;
use crate::timers::deadline;

/// One slot of the pool, as the shell sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The instance in the slot.
    pub key: usize,
    /// Held by `orchd ctl stop`: never replaced (it runs the pool's spec of the day it
    /// is started again).
    pub held: bool,
    /// It runs the pool's current spec (command, cwd, env, user, group, stdin wiring).
    pub current: bool,
}

/// What the machine needs to know of the pool and the daemon.
pub trait Slots {
    /// Slot `index`, or None past the last one.
    fn slot(&self, index: u32) -> Option<Slot>;
    /// orchd is shutting down: nothing starts, nothing is promoted.
    fn shutting_down(&self) -> bool;
    /// The pool's `rolling` settings.
    fn rolling(&self) -> Rolling {
        Rolling::default()
    }
    /// The pool sets `ready`: a replacement counts when [`Event::Ready`] says so, not
    /// after [`START_GRACE`] of running.
    fn gated(&self) -> bool {
        false
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Advance as far as possible now.
    Proceed,
    /// `orchd ctl restart` named `index`: replace it even if it runs the pool's spec.
    Restart { index: u32 },
    /// `orchd ctl stop` holds `index`: it is not replaced, and a replacement on its way
    /// into it is cancelled (it would take the slot over unheld).
    Hold { index: u32 },
    /// The restart of `index` is given up (its replacement failed to start): the same,
    /// the old instance keeps serving.
    GiveUp { index: u32 },
    /// A reload changed the pool's spec again: replacements started for the previous
    /// spec are cancelled and the roll starts over from index 0 (restarts asked for by
    /// `orchd ctl restart` stay asked for). [`Event::Begin`] follows.
    Cancel,
    /// A reload scaled the pool down to `count` slots.
    Shrunk { count: u32 },
    /// A reload is applied: `replace` slots run another spec than the new one. The roll
    /// goes on if there is anything to replace, else it ends without a word.
    Begin { replace: u32 },
    /// The pool is removed: replacements under way are retired, the roll ends.
    Remove,
    /// The shell created the instance that [`Action::Start`] asked for.
    Created { index: u32, key: usize },
    /// An instance's process was spawned at `now`.
    Started { key: usize, now: Instant },
    /// A promote timer fired at `now`; `running_since` is when the instance's process
    /// started, if it runs.
    PromoteDue {
        key: usize,
        gen: u64,
        now: Instant,
        running_since: Option<Instant>,
    },
    /// An instance became ready (a pool that sets `ready`).
    Ready { key: usize },
    /// An instance stopped for good (its restart policy, or shutdown).
    Stopped { key: usize },
    /// An instance was forgotten.
    Gone { key: usize },
}

/// Why the shell retires an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The old instance of a slot its replacement took.
    Replaced,
    /// A replacement cancelled before it took its slot (reload, `ctl stop`).
    Cancelled,
    /// A replacement that failed to start (`ctl restart` gave up).
    Failed,
    /// A replacement whose slot is gone (scale-down, pool removal).
    Dropped,
}

/// What the shell does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create a new instance for slot `index` (answer with [`Event::Created`]), then
    /// start it.
    Start { index: u32 },
    /// Stop-first: create a new instance for slot `index` (answer with
    /// [`Event::Created`]) and do not start it ([`Action::Launch`] will).
    Create { index: u32 },
    /// Stop-first: the old instance of the slot is gone: start its replacement.
    Launch { key: usize },
    /// Fire [`Event::PromoteDue`] for `key` with `gen` at `at`.
    ArmPromote { key: usize, gen: u64, at: Instant },
    /// `new` takes slot `index` from `old` (retired by the [`Action::Retire`] that
    /// follows).
    Promote { index: u32, new: usize, old: usize },
    /// Stop giving the instance work; stop and forget it once it has finished.
    Retire { key: usize, why: Why },
    /// Every slot runs the pool's spec: the roll is over.
    Done,
    /// The replacement `key` for `index` stopped for good: the roll is over, the
    /// running instances stay. The shell forgets `key`.
    Abandoned { index: u32, key: usize },
    /// Stop-first: the replacement `key`, already in slot `index`, stopped for good
    /// before it was ready: the roll is over; it stays in its slot.
    Halted { index: u32, key: usize },
}

/// A replacement started, waiting to take its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incoming {
    index: u32,
    /// None between [`Action::Start`] and [`Event::Created`].
    key: Option<usize>,
    /// Generation of the promote timer armed at its latest start.
    armed: Option<u64>,
    /// Stop-first: it took its slot when created.
    stop_first: bool,
    /// Stop-first: the old instance it waits for to be gone before it is launched.
    waits_for: Option<usize>,
}

/// The rolling replacement of one pool.
#[derive(Debug, Default)]
pub struct Roll {
    /// Next index to look at (indexes before it run the spec, or were skipped).
    next: u32,
    /// Replacements started, not yet promoted.
    incoming: Vec<Incoming>,
    /// Old instances of promoted slots, until they are gone.
    outgoing: Vec<usize>,
    /// Indexes `orchd ctl restart` asked for: replaced even when they run the pool's
    /// spec; each leaves the set once its replacement took the slot.
    restart: BTreeSet<u32>,
    /// Generation of the last promote timer armed.
    gen: u64,
    /// Done, abandoned or removed: the shell drops it.
    over: bool,
}

impl Roll {
    /// The roll ended: the shell drops it (before performing the actions it returned).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Replacements started and created, not yet promoted: (index, instance key).
    /// Stop-first replacements are in their slots already and not listed.
    pub fn incoming(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.incoming
            .iter()
            .filter(|i| !i.stop_first)
            .filter_map(|i| i.key.map(|k| (i.index, k)))
    }

    pub fn has_incoming(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// The replacement on its way into slot `index`.
    pub fn incoming_at(&self, index: u32) -> Option<usize> {
        self.incoming().find_map(|(i, k)| (i == index).then_some(k))
    }

    /// Slot `index` is yet to be replaced for `orchd ctl restart`, or its replacement
    /// is under way.
    pub fn pending(&self, index: u32) -> bool {
        self.restart.contains(&index) || self.incoming.iter().any(|i| i.index == index)
    }

    /// Take one event; push what the shell must do to `out`, in order. The shell
    /// answers each [`Action::Start`] with [`Event::Created`] as it performs it.
    pub fn handle(&mut self, event: Event, slots: &impl Slots, out: &mut Vec<Action>) {
        if self.over {
            return;
        }
        self.on(event, slots, out);
        self.check();
    }

    /// The invariants, after every event (debug builds).
    fn check(&self) {
        debug_assert!(
            self.incoming.iter().enumerate().all(|(n, i)| {
                self.incoming[..n]
                    .iter()
                    .all(|j| j.index != i.index && (j.key != i.key || i.key.is_none()))
            }),
            "two replacements for one slot, or one instance twice: {self:?}"
        );
        debug_assert!(
            self.incoming
                .iter()
                .all(|i| i.key.is_none_or(|k| !self.outgoing.contains(&k))),
            "an instance both incoming and outgoing: {self:?}"
        );
        debug_assert!(
            self.incoming
                .iter()
                .all(|i| i.armed.is_none_or(|g| g <= self.gen)),
            "a promote timer from the future: {self:?}"
        );
    }

    fn on(&mut self, event: Event, slots: &impl Slots, out: &mut Vec<Action>) {
        match event {
            Event::Proceed => self.step(slots, out),
            Event::Restart { index } => {
                self.restart.insert(index);
            }
            Event::Hold { index } => self.skip(index, Why::Cancelled, out),
            Event::GiveUp { index } => self.skip(index, Why::Failed, out),
            Event::Cancel => {
                // A stop-first replacement is in its slot already: it goes on (a
                // later roll replaces it if it runs another spec).
                self.incoming.retain(|i| {
                    if i.stop_first {
                        return true;
                    }
                    if let Some(key) = i.key {
                        out.push(Action::Retire {
                            key,
                            why: Why::Cancelled,
                        });
                    }
                    false
                });
                // The old instances of promoted slots drain on their own; the new roll
                // does not wait for them.
                self.outgoing.clear();
                self.next = 0;
            }
            Event::Shrunk { count } => {
                self.incoming.retain(|i| {
                    if i.index < count {
                        return true;
                    }
                    // A stop-first replacement is in its slot: the shell retires it.
                    if let Some(key) = i.key.filter(|_| !i.stop_first) {
                        out.push(Action::Retire {
                            key,
                            why: Why::Dropped,
                        });
                    }
                    false
                });
            }
            Event::Begin { replace } => {
                if (replace == 0 && self.restart.is_empty()) || slots.slot(0).is_none() {
                    self.over = true;
                } else {
                    self.step(slots, out);
                }
            }
            Event::Remove => {
                self.over = true;
                for i in self.incoming.drain(..) {
                    if let Some(key) = i.key.filter(|_| !i.stop_first) {
                        out.push(Action::Retire {
                            key,
                            why: Why::Dropped,
                        });
                    }
                }
            }
            Event::Created { index, key } => {
                let pending = self
                    .incoming
                    .iter_mut()
                    .find(|i| i.index == index && i.key.is_none());
                debug_assert!(pending.is_some(), "created {key} for {index}: not started");
                if let Some(i) = pending {
                    i.key = Some(key);
                    if let Some(old) = i.waits_for {
                        // Stop-first: it takes the slot now; launched once the old
                        // one is gone.
                        out.push(Action::Promote {
                            index,
                            new: key,
                            old,
                        });
                        out.push(Action::Retire {
                            key: old,
                            why: Why::Replaced,
                        });
                    }
                }
            }
            Event::Ready { key } => {
                if !slots.gated() {
                    return;
                }
                if let Some(pos) = self.incoming.iter().position(|i| i.key == Some(key)) {
                    if !slots.shutting_down() {
                        self.ready(pos, slots, out);
                    }
                }
            }
            Event::Started { key, now } => {
                if slots.gated() {
                    // Ready comes as Event::Ready.
                    return;
                }
                if let Some(i) = self.incoming.iter_mut().find(|i| i.key == Some(key)) {
                    self.gen += 1;
                    i.armed = Some(self.gen);
                    out.push(Action::ArmPromote {
                        key,
                        gen: self.gen,
                        at: deadline(now, START_GRACE),
                    });
                }
            }
            Event::PromoteDue {
                key,
                gen,
                now,
                running_since,
            } => {
                // Stayed up: running since its latest start, for START_GRACE.
                let stayed_up = running_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= START_GRACE);
                let Some(pos) = self
                    .incoming
                    .iter()
                    .position(|i| i.key == Some(key) && i.armed == Some(gen))
                else {
                    return;
                };
                if !stayed_up || slots.shutting_down() {
                    return;
                }
                self.ready(pos, slots, out);
            }
            Event::Stopped { key } => {
                if let Some(pos) = self.incoming.iter().position(|i| i.key == Some(key)) {
                    let i = self.incoming.remove(pos);
                    self.over = true;
                    out.push(if i.stop_first {
                        Action::Halted {
                            index: i.index,
                            key,
                        }
                    } else {
                        Action::Abandoned {
                            index: i.index,
                            key,
                        }
                    });
                }
            }
            Event::Gone { key } => {
                let before = self.outgoing.len() + self.incoming.len();
                self.outgoing.retain(|&k| k != key);
                self.incoming.retain(|i| i.key != Some(key));
                let mut launched = false;
                for i in self.incoming.iter_mut() {
                    if i.waits_for == Some(key) {
                        i.waits_for = None;
                        if let Some(new) = i.key {
                            launched = true;
                            out.push(Action::Launch { key: new });
                        }
                    }
                }
                if launched || self.outgoing.len() + self.incoming.len() < before {
                    self.step(slots, out);
                }
            }
        }
    }

    /// The replacement at `pos` of the incoming list is ready (or stayed up): it takes
    /// its slot (start-first), the old instance retires, and the next may start.
    fn ready(&mut self, pos: usize, slots: &impl Slots, out: &mut Vec<Action>) {
        let Some(key) = self.incoming[pos].key else {
            return;
        };
        if self.incoming[pos].waits_for.is_some() {
            // Stop-first, not launched yet: cannot be ready.
            return;
        }
        let inc = self.incoming.remove(pos);
        let index = inc.index;
        self.next = self.next.max(index + 1);
        self.restart.remove(&index);
        if inc.stop_first {
            self.step(slots, out);
            return;
        }
        {
            {
                match slots.slot(index) {
                    Some(old) => {
                        self.outgoing.push(old.key);
                        out.push(Action::Promote {
                            index,
                            new: key,
                            old: old.key,
                        });
                        out.push(Action::Retire {
                            key: old.key,
                            why: Why::Replaced,
                        });
                    }
                    // Its slot is gone (cannot happen: a scale-down drops replacements
                    // past the new count): the replacement is not needed.
                    None => {
                        out.push(Action::Retire {
                            key,
                            why: Why::Dropped,
                        });
                    }
                }
            }
        }
        self.step(slots, out);
    }

    /// Slot `index` is not replaced now: not for `ctl restart`, and a replacement on its
    /// way into it is retired.
    fn skip(&mut self, index: u32, why: Why, out: &mut Vec<Action>) {
        self.restart.remove(&index);
        if let Some(pos) = self.incoming.iter().position(|i| i.index == index) {
            let i = self.incoming[pos];
            if i.stop_first {
                // In its slot already. Held: it stays held there. Given up: it goes
                // on by its restart policy once launched (its old one is stopping).
                if why == Why::Cancelled || i.waits_for.is_none() {
                    self.incoming.remove(pos);
                    self.next = self.next.max(index + 1);
                }
                return;
            }
            self.incoming.remove(pos);
            self.next = self.next.max(index + 1);
            if let Some(key) = i.key {
                out.push(Action::Retire { key, why });
            }
        }
    }

    /// `rolling.parallel` replacements are under way (started, not yet ready).
    fn busy(&self, rolling: Rolling) -> bool {
        self.incoming.len() >= rolling.parallel.max(1) as usize
    }

    /// Start replacements while there is room; the roll is done once every slot runs
    /// the pool's spec and no `ctl restart` is left.
    fn step(&mut self, slots: &impl Slots, out: &mut Vec<Action>) {
        if slots.shutting_down() {
            return;
        }
        let rolling = slots.rolling();
        while !self.busy(rolling) {
            // Instances that already run the pool's spec stay (SPEC 6: decided per
            // running instance), unless `orchd ctl restart` asked for them; held ones
            // stay held.
            let mut index = self
                .next
                .min(self.restart.first().copied().unwrap_or(u32::MAX));
            let found = loop {
                let Some(s) = slots.slot(index) else {
                    break false;
                };
                let under_way = self.incoming.iter().any(|i| i.index == index);
                if s.held {
                    self.restart.remove(&index);
                } else if !under_way && (self.restart.contains(&index) || !s.current) {
                    break true;
                }
                index += 1;
            };
            self.next = index;
            if !found {
                if self.incoming.is_empty() && self.outgoing.is_empty() {
                    self.over = true;
                    out.push(Action::Done);
                }
                return;
            }
            if rolling.order == RollOrder::StopFirst {
                let old = slots.slot(index).map(|s| s.key);
                self.incoming.push(Incoming {
                    index,
                    key: None,
                    armed: None,
                    stop_first: true,
                    waits_for: old,
                });
                out.push(Action::Create { index });
                continue;
            }
            self.incoming.push(Incoming {
                index,
                key: None,
                armed: None,
                stop_first: false,
                waits_for: None,
            });
            out.push(Action::Start { index });
        }
    }
}

#[cfg(test)]
mod tests;
