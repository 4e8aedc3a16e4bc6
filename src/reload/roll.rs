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
//! Room for more (issue 10): the replacements under way are lists bounded by
//! [`PARALLEL`] (`rolling.parallel`); "stayed up" is one check in [`Roll::handle`]
//! (readiness); stop-first would retire the old instance at `Start` instead of at
//! promotion.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::supervisor::lifecycle::START_GRACE;
use crate::timers::deadline;

/// Replacements under way at once (started and not yet promoted, or promoted and
/// their old instance not yet gone).
pub const PARALLEL: usize = 1;

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
}

/// A replacement started, waiting to take its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incoming {
    index: u32,
    /// None between [`Action::Start`] and [`Event::Created`].
    key: Option<usize>,
    /// Generation of the promote timer armed at its latest start.
    armed: Option<u64>,
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
    pub fn incoming(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.incoming
            .iter()
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
            self.over || self.incoming.len() + self.outgoing.len() <= PARALLEL,
            "more replacements under way than PARALLEL: {self:?}"
        );
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
                for i in self.incoming.drain(..) {
                    if let Some(key) = i.key {
                        out.push(Action::Retire {
                            key,
                            why: Why::Cancelled,
                        });
                    }
                }
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
                    if let Some(key) = i.key {
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
                    if let Some(key) = i.key {
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
                }
            }
            Event::Started { key, now } => {
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
                let index = self.incoming.remove(pos).index;
                self.next = index + 1;
                self.restart.remove(&index);
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
                        self.step(slots, out);
                    }
                }
            }
            Event::Stopped { key } => {
                if let Some(pos) = self.incoming.iter().position(|i| i.key == Some(key)) {
                    let index = self.incoming.remove(pos).index;
                    self.over = true;
                    out.push(Action::Abandoned { index, key });
                }
            }
            Event::Gone { key } => {
                let before = self.outgoing.len() + self.incoming.len();
                self.outgoing.retain(|&k| k != key);
                self.incoming.retain(|i| i.key != Some(key));
                if self.outgoing.len() + self.incoming.len() < before {
                    self.step(slots, out);
                }
            }
        }
    }

    /// Slot `index` is not replaced now: not for `ctl restart`, and a replacement on its
    /// way into it is retired.
    fn skip(&mut self, index: u32, why: Why, out: &mut Vec<Action>) {
        self.restart.remove(&index);
        if let Some(pos) = self.incoming.iter().position(|i| i.index == index) {
            let i = self.incoming.remove(pos);
            self.next = self.next.max(index + 1);
            if let Some(key) = i.key {
                out.push(Action::Retire { key, why });
            }
        }
    }

    fn busy(&self) -> bool {
        self.incoming.len() + self.outgoing.len() >= PARALLEL
    }

    /// Start replacements while there is room; the roll is done once every slot runs
    /// the pool's spec and no `ctl restart` is left.
    fn step(&mut self, slots: &impl Slots, out: &mut Vec<Action>) {
        if slots.shutting_down() {
            return;
        }
        while !self.busy() {
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
            self.incoming.push(Incoming {
                index,
                key: None,
                armed: None,
            });
            out.push(Action::Start { index });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A pool of slots, performing the roll's actions on itself as the shell would.
    struct Pool {
        slots: Vec<Slot>,
        shutting_down: bool,
        next_key: usize,
        retired: Vec<(usize, Why)>,
        started: Vec<u32>,
        timers: Vec<(usize, u64, Instant)>,
    }

    impl Slots for Pool {
        fn slot(&self, index: u32) -> Option<Slot> {
            self.slots.get(index as usize).copied()
        }
        fn shutting_down(&self) -> bool {
            self.shutting_down
        }
    }

    const STALE: Slot = Slot {
        key: 0,
        held: false,
        current: false,
    };
    const CURRENT: Slot = Slot {
        current: true,
        ..STALE
    };

    impl Pool {
        /// `n` slots with keys 0..n, all running another spec than the pool's.
        fn stale(n: usize) -> Pool {
            let slots = (0..n).map(|key| Slot { key, ..STALE });
            Pool::of(slots.collect())
        }

        /// `n` slots with keys 0..n, all running the pool's spec.
        fn current(n: usize) -> Pool {
            let slots = (0..n).map(|key| Slot { key, ..CURRENT });
            Pool::of(slots.collect())
        }

        fn of(slots: Vec<Slot>) -> Pool {
            Pool {
                next_key: 100,
                slots,
                shutting_down: false,
                retired: Vec::new(),
                started: Vec::new(),
                timers: Vec::new(),
            }
        }

        /// Feed an event, perform the actions; returns them.
        fn feed(&mut self, roll: &mut Roll, event: Event) -> Vec<Action> {
            let mut out = Vec::new();
            roll.handle(event, &*self, &mut out);
            for &a in &out {
                match a {
                    Action::Start { index } => {
                        let key = self.next_key;
                        self.next_key += 1;
                        self.started.push(index);
                        let mut created = Vec::new();
                        roll.handle(Event::Created { index, key }, &*self, &mut created);
                        assert!(created.is_empty(), "{created:?}");
                    }
                    Action::ArmPromote { key, gen, at } => self.timers.push((key, gen, at)),
                    Action::Promote { index, new, old } => {
                        let slot = &mut self.slots[index as usize];
                        assert_eq!(slot.key, old);
                        *slot = Slot {
                            key: new,
                            held: false,
                            current: true,
                        };
                    }
                    Action::Retire { key, why } => self.retired.push((key, why)),
                    Action::Done | Action::Abandoned { .. } => {}
                }
            }
            out
        }

        /// The replacement for `index` starts at `t` and stays up: promoted.
        fn replace(&mut self, roll: &mut Roll, index: u32, t: Instant) -> usize {
            let key = roll.incoming_at(index).expect("replacement under way");
            let armed = self.feed(roll, Event::Started { key, now: t });
            let [Action::ArmPromote { gen, at, .. }] = armed[..] else {
                panic!("{armed:?}");
            };
            assert_eq!(at, t + START_GRACE);
            let old = self.slots[index as usize].key;
            let out = self.feed(roll, due(key, gen, at, Some(t)));
            assert_eq!(
                out,
                [
                    Action::Promote {
                        index,
                        new: key,
                        old
                    },
                    Action::Retire {
                        key: old,
                        why: Why::Replaced
                    }
                ]
            );
            old
        }
    }

    fn retired(key: usize, why: Why) -> [Action; 1] {
        [Action::Retire { key, why }]
    }

    fn due(key: usize, gen: u64, now: Instant, running_since: Option<Instant>) -> Event {
        Event::PromoteDue {
            key,
            gen,
            now,
            running_since,
        }
    }

    fn begin(pool: &mut Pool, replace: u32) -> Roll {
        let mut roll = Roll::default();
        pool.feed(&mut roll, Event::Begin { replace });
        roll
    }

    /// A roll of `n` stale slots whose index 0 was replaced: (pool, roll, the old
    /// instance of index 0, not yet gone).
    fn first_replaced(n: usize) -> (Pool, Roll, usize) {
        let mut pool = Pool::stale(n);
        let mut roll = begin(&mut pool, n as u32);
        let old = pool.replace(&mut roll, 0, Instant::now());
        (pool, roll, old)
    }

    /// A roll of `n` stale slots whose first replacement started at `t`.
    struct Underway {
        pool: Pool,
        roll: Roll,
        t: Instant,
        /// The replacement, and its promote timer.
        new: usize,
        gen: u64,
        at: Instant,
    }

    impl Underway {
        fn feed(&mut self, event: Event) -> Vec<Action> {
            self.pool.feed(&mut self.roll, event)
        }
    }

    fn underway(n: usize) -> Underway {
        let t = Instant::now();
        let mut pool = Pool::stale(n);
        let mut roll = begin(&mut pool, n as u32);
        let new = roll.incoming_at(0).expect("replacement");
        pool.feed(&mut roll, Event::Started { key: new, now: t });
        let (_, gen, at) = pool.timers[0];
        Underway {
            pool,
            roll,
            t,
            new,
            gen,
            at,
        }
    }

    #[test]
    fn a_full_roll_replaces_one_index_at_a_time() {
        let t = Instant::now();
        let mut pool = Pool::stale(3);
        let mut roll = begin(&mut pool, 3);
        for index in 0..3u32 {
            assert_eq!(pool.started.len(), index as usize + 1, "one at a time");
            let old = pool.replace(&mut roll, index, t);
            // The next index waits for the old instance to be gone.
            assert_eq!(pool.feed(&mut roll, Event::Proceed), []);
            assert_eq!(pool.started.len(), index as usize + 1);
            let out = pool.feed(&mut roll, Event::Gone { key: old });
            if index < 2 {
                assert_eq!(out, [Action::Start { index: index + 1 }]);
            } else {
                assert_eq!(out, [Action::Done]);
            }
        }
        assert!(roll.is_over());
        assert_eq!(pool.started, [0, 1, 2]);
        assert_eq!(
            pool.retired,
            [0, 1, 2].map(|k| (k, Why::Replaced)),
            "each old instance retired once"
        );
        assert!(pool.slots.iter().all(|s| s.current && s.key >= 100));
    }

    #[test]
    fn instances_already_running_the_spec_and_held_ones_stay() {
        let t = Instant::now();
        let mut pool = Pool::of(vec![
            Slot { key: 0, ..CURRENT },
            Slot {
                key: 1,
                held: true,
                ..STALE
            },
            Slot { key: 2, ..STALE },
            Slot { key: 3, ..CURRENT },
        ]);
        let mut roll = begin(&mut pool, 2);
        assert_eq!(pool.started, [2], "index 0 runs the spec, 1 is held");
        let old = pool.replace(&mut roll, 2, t);
        assert_eq!(
            pool.feed(&mut roll, Event::Gone { key: old }),
            [Action::Done]
        );
    }

    #[test]
    fn nothing_to_replace_ends_without_a_word() {
        let mut pool = Pool::stale(2);
        let roll = begin(&mut pool, 0);
        assert!(roll.is_over());
        assert!(pool.started.is_empty());
        // An empty pool has nothing to replace either.
        let roll = begin(&mut Pool::stale(0), 3);
        assert!(roll.is_over());
    }

    #[test]
    fn a_replacement_that_stops_before_staying_up_abandons_the_roll() {
        let mut u = underway(2);
        // It crashed and waits in backoff when its timer fires: not promoted.
        assert_eq!(u.feed(due(u.new, u.gen, u.at, None)), []);
        assert_eq!(u.roll.incoming_at(0), Some(u.new));
        // Its restart policy gives up: the roll is abandoned, the old instances stay.
        let out = u.feed(Event::Stopped { key: u.new });
        assert_eq!(
            out,
            [Action::Abandoned {
                index: 0,
                key: u.new
            }]
        );
        assert!(u.roll.is_over());
        assert!(u.pool.retired.is_empty());
        let keys: Vec<usize> = u.pool.slots.iter().map(|s| s.key).collect();
        assert_eq!(keys, [0, 1]);
        // Events after the end change nothing.
        assert_eq!(u.feed(Event::Proceed), []);
    }

    #[test]
    fn a_stale_promote_timer_is_ignored() {
        let mut u = underway(1);
        // It crashed and was restarted 500 ms later: a new timer.
        let t2 = u.t + Duration::from_millis(500);
        u.feed(Event::Started {
            key: u.new,
            now: t2,
        });
        let (_, gen2, at2) = u.pool.timers[1];
        assert_ne!(u.gen, gen2);
        // The first start's timer fires while the second start is 500 ms old.
        assert_eq!(u.feed(due(u.new, u.gen, u.at, Some(t2))), []);
        // Even a matching generation does not promote before START_GRACE of running.
        assert_eq!(u.feed(due(u.new, gen2, u.at, Some(t2))), []);
        let out = u.feed(due(u.new, gen2, at2, Some(t2)));
        assert!(matches!(out[0], Action::Promote { new, .. } if new == u.new));
    }

    #[test]
    fn the_old_instance_gone_lets_the_roll_go_on_and_other_instances_do_not() {
        let (mut pool, mut roll, old) = first_replaced(2);
        // Some other instance of the pool is forgotten: the roll still waits.
        assert_eq!(pool.feed(&mut roll, Event::Gone { key: 1 }), []);
        assert_eq!(pool.feed(&mut roll, Event::Stopped { key: old }), []);
        assert_eq!(
            pool.feed(&mut roll, Event::Gone { key: old }),
            [Action::Start { index: 1 }]
        );
    }

    #[test]
    fn undoing_the_edit_cancels_the_pending_replacement() {
        let mut u = underway(2);
        // The reload puts back the spec the slots run: nothing stale is left.
        for s in &mut u.pool.slots {
            s.current = true;
        }
        assert_eq!(u.feed(Event::Cancel), retired(u.new, Why::Cancelled));
        assert_eq!(u.feed(Event::Begin { replace: 0 }), []);
        assert!(u.roll.is_over(), "ends without Done");
        // Its timer, if it still fires, finds nothing.
        assert_eq!(u.feed(due(u.new, u.gen, u.at, Some(u.t))), []);
    }

    #[test]
    fn a_third_spec_restarts_the_roll_from_index_0() {
        let (mut pool, mut roll, old) = first_replaced(2);
        pool.feed(&mut roll, Event::Gone { key: old });
        // Index 1's replacement is under way when the spec changes again.
        let pending = roll.incoming_at(1).expect("replacement");
        for s in &mut pool.slots {
            s.current = false;
        }
        let out = pool.feed(&mut roll, Event::Cancel);
        assert_eq!(out, retired(pending, Why::Cancelled));
        pool.feed(&mut roll, Event::Begin { replace: 2 });
        assert_eq!(pool.started, [0, 1, 0]);
    }

    #[test]
    fn ctl_restart_replaces_one_instance_that_runs_the_spec() {
        let t = Instant::now();
        let (mut pool, mut roll) = (Pool::current(3), Roll::default());
        pool.feed(&mut roll, Event::Restart { index: 1 });
        assert!(roll.pending(1) && !roll.pending(0));
        assert_eq!(
            pool.feed(&mut roll, Event::Proceed),
            [Action::Start { index: 1 }]
        );
        let old = pool.replace(&mut roll, 1, t);
        assert!(!roll.pending(1), "the slot was taken");
        assert_eq!(
            pool.feed(&mut roll, Event::Gone { key: old }),
            [Action::Done]
        );
        assert_eq!(pool.started, [1]);
    }

    #[test]
    fn a_ctl_restart_outlives_a_reload_that_cancels_the_roll() {
        let (mut pool, mut roll) = (Pool::current(2), Roll::default());
        pool.feed(&mut roll, Event::Restart { index: 1 });
        pool.feed(&mut roll, Event::Proceed);
        let first = roll.incoming_at(1).expect("replacement");
        // A reload undoes an edit: the pending replacement goes, the restart stays.
        let out = pool.feed(&mut roll, Event::Cancel);
        assert_eq!(out, retired(first, Why::Cancelled));
        assert_eq!(
            pool.feed(&mut roll, Event::Begin { replace: 0 }),
            [Action::Start { index: 1 }]
        );
        assert!(roll.pending(1) && !roll.is_over());
        assert_ne!(roll.incoming_at(1), Some(first));
    }

    #[test]
    fn ctl_stop_cancels_the_replacement_of_the_held_index() {
        let mut pool = Pool::stale(3);
        let mut roll = begin(&mut pool, 3);
        let new = roll.incoming_at(0).expect("replacement");
        let out = pool.feed(&mut roll, Event::Hold { index: 0 });
        assert_eq!(out, retired(new, Why::Cancelled));
        pool.slots[0].held = true;
        // The roll goes on past the held index.
        assert_eq!(
            pool.feed(&mut roll, Event::Proceed),
            [Action::Start { index: 1 }]
        );
    }

    #[test]
    fn a_given_up_restart_moves_on_and_keeps_the_old_instance() {
        let (mut pool, mut roll) = (Pool::current(2), Roll::default());
        for index in [0, 1] {
            pool.feed(&mut roll, Event::Restart { index });
        }
        pool.feed(&mut roll, Event::Proceed);
        let new = roll.incoming_at(0).expect("replacement");
        // The op gives up both of its targets.
        pool.feed(&mut roll, Event::GiveUp { index: 1 });
        let out = pool.feed(&mut roll, Event::GiveUp { index: 0 });
        assert_eq!(out, retired(new, Why::Failed));
        assert!(!roll.pending(0) && !roll.pending(1));
        assert_eq!(pool.feed(&mut roll, Event::Proceed), [Action::Done]);
        assert_eq!(pool.slots[0].key, 0);
    }

    #[test]
    fn a_scale_down_drops_the_replacement_of_a_slot_that_goes() {
        // Index 0 done; index 1's replacement is under way.
        let (mut pool, mut roll, old) = first_replaced(3);
        pool.feed(&mut roll, Event::Gone { key: old });
        let new = roll.incoming_at(1).expect("replacement");
        let out = pool.feed(&mut roll, Event::Shrunk { count: 1 });
        assert_eq!(out, retired(new, Why::Dropped));
        pool.slots.truncate(1);
        assert!(!roll.has_incoming());
        assert_eq!(pool.feed(&mut roll, Event::Proceed), [Action::Done]);
    }

    #[test]
    fn removing_the_pool_retires_the_replacement() {
        let mut pool = Pool::stale(2);
        let mut roll = begin(&mut pool, 2);
        let new = roll.incoming_at(0).expect("replacement");
        let out = pool.feed(&mut roll, Event::Remove);
        assert_eq!(out, retired(new, Why::Dropped));
        assert!(roll.is_over());
    }

    #[test]
    fn shutdown_starts_and_promotes_nothing() {
        let t = Instant::now();
        let mut pool = Pool::stale(2);
        pool.shutting_down = true;
        let mut roll = begin(&mut pool, 2);
        assert!(pool.started.is_empty() && !roll.is_over());
        pool.shutting_down = false;
        pool.feed(&mut roll, Event::Proceed);
        let new = roll.incoming_at(0).expect("replacement");
        pool.feed(&mut roll, Event::Started { key: new, now: t });
        let (_, gen, at) = pool.timers[0];
        pool.shutting_down = true;
        assert_eq!(pool.feed(&mut roll, due(new, gen, at, Some(t))), []);
        // Shutdown stops the replacement: the roll ends.
        assert_eq!(
            pool.feed(&mut roll, Event::Stopped { key: new }),
            [Action::Abandoned { index: 0, key: new }]
        );
    }
}
