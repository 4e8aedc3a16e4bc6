//! Unit tests of the rolling replacement machine.

use super::*;
use std::time::Duration;

/// A pool of slots, performing the roll's actions on itself as the shell would.
struct Pool {
    slots: Vec<Slot>,
    shutting_down: bool,
    next_key: usize,
    retired: Vec<(usize, Why)>,
    started: Vec<u32>,
    /// Stop-first: indexes whose replacement was created, keys launched.
    created: Vec<u32>,
    launched: Vec<usize>,
    rolling: Rolling,
    gated: bool,
    timers: Vec<(usize, u64, Instant)>,
}

impl Slots for Pool {
    fn slot(&self, index: u32) -> Option<Slot> {
        self.slots.get(index as usize).copied()
    }
    fn shutting_down(&self) -> bool {
        self.shutting_down
    }
    fn rolling(&self) -> Rolling {
        self.rolling
    }
    fn gated(&self) -> bool {
        self.gated
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
            created: Vec::new(),
            launched: Vec::new(),
            rolling: Rolling::default(),
            gated: false,
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
                Action::Create { index } => {
                    let key = self.next_key;
                    self.next_key += 1;
                    self.created.push(index);
                    let mut created = Vec::new();
                    roll.handle(Event::Created { index, key }, &*self, &mut created);
                    // Stop-first: it takes the slot, the old one retires.
                    for a in created {
                        match a {
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
                            a => panic!("{a:?}"),
                        }
                    }
                }
                Action::Launch { key } => self.launched.push(key),
                Action::Done | Action::Abandoned { .. } | Action::Halted { .. } => {}
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
        // The next replacement may follow at once (not checked here).
        assert_eq!(
            out[..2],
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
fn a_full_roll_replaces_one_index_at_a_time_and_old_ones_drain_in_parallel() {
    let t = Instant::now();
    let mut pool = Pool::stale(3);
    let mut roll = begin(&mut pool, 3);
    let mut olds = Vec::new();
    for index in 0..3u32 {
        assert_eq!(pool.started.len(), index as usize + 1, "one at a time");
        olds.push(pool.replace(&mut roll, index, t));
        // The next index does not wait for the old instance to be gone.
    }
    assert_eq!(pool.started, [0, 1, 2]);
    assert!(!roll.is_over(), "old instances still draining");
    assert_eq!(pool.feed(&mut roll, Event::Gone { key: olds[0] }), []);
    assert_eq!(pool.feed(&mut roll, Event::Gone { key: olds[2] }), []);
    assert_eq!(
        pool.feed(&mut roll, Event::Gone { key: olds[1] }),
        [Action::Done]
    );
    assert!(roll.is_over());
    assert_eq!(
        pool.retired,
        [0, 1, 2].map(|k| (k, Why::Replaced)),
        "each old instance retired once"
    );
    assert!(pool.slots.iter().all(|s| s.current && s.key >= 100));
}

#[test]
fn parallel_replacements_start_together_and_ready_ones_make_room() {
    let mut pool = Pool::stale(5);
    pool.rolling = Rolling {
        parallel: 2,
        order: RollOrder::StartFirst,
    };
    pool.gated = true;
    let mut roll = begin(&mut pool, 5);
    assert_eq!(pool.started, [0, 1]);
    let (a, b) = (roll.incoming_at(0).unwrap(), roll.incoming_at(1).unwrap());
    // In a `ready` pool, staying up is not enough: no promote timer.
    assert_eq!(
        pool.feed(
            &mut roll,
            Event::Started {
                key: b,
                now: Instant::now()
            }
        ),
        []
    );
    // Index 1 ready first: it takes its slot, index 2 starts.
    let out = pool.feed(&mut roll, Event::Ready { key: b });
    assert_eq!(
        out,
        [
            Action::Promote {
                index: 1,
                new: b,
                old: 1
            },
            Action::Retire {
                key: 1,
                why: Why::Replaced
            },
            Action::Start { index: 2 },
        ]
    );
    let out = pool.feed(&mut roll, Event::Ready { key: a });
    assert_eq!(out[2], Action::Start { index: 3 });
    for index in [2, 3] {
        let k = roll.incoming_at(index).unwrap();
        pool.feed(&mut roll, Event::Ready { key: k });
    }
    let k = roll.incoming_at(4).unwrap();
    pool.feed(&mut roll, Event::Ready { key: k });
    assert_eq!(pool.started, [0, 1, 2, 3, 4]);
    assert!(!roll.has_incoming());
    for old in 0..4 {
        assert_eq!(pool.feed(&mut roll, Event::Gone { key: old }), []);
    }
    assert_eq!(pool.feed(&mut roll, Event::Gone { key: 4 }), [Action::Done]);
}

#[test]
fn stop_first_never_runs_two_instances_of_a_slot() {
    let mut pool = Pool::stale(2);
    pool.rolling = Rolling {
        parallel: 1,
        order: RollOrder::StopFirst,
    };
    pool.gated = true;
    let mut roll = begin(&mut pool, 2);
    // Created (not started), in its slot at once; the old one retires.
    assert_eq!(pool.created, [0]);
    assert!(pool.started.is_empty());
    assert_eq!(pool.retired, [(0, Why::Replaced)]);
    let new = pool.slots[0].key;
    assert!(new >= 100);
    assert!(pool.launched.is_empty());
    // Not listed as incoming (status shows it in its slot).
    assert_eq!(roll.incoming().count(), 0);
    assert!(roll.pending(0));
    // A ready event before launch cannot happen; ignored.
    assert_eq!(pool.feed(&mut roll, Event::Ready { key: new }), []);
    // Another instance gone: nothing.
    assert_eq!(pool.feed(&mut roll, Event::Gone { key: 1 }), []);
    // The old one gone: launched; the next slot waits until it is ready.
    assert_eq!(
        pool.feed(&mut roll, Event::Gone { key: 0 }),
        [Action::Launch { key: new }]
    );
    assert_eq!(pool.created, [0]);
    let out = pool.feed(&mut roll, Event::Ready { key: new });
    assert_eq!(out, [Action::Create { index: 1 }]);
    assert_eq!(pool.retired[1], (1, Why::Replaced));
    let new1 = pool.slots[1].key;
    assert_eq!(
        pool.feed(&mut roll, Event::Gone { key: 1 }),
        [Action::Launch { key: new1 }]
    );
    assert_eq!(
        pool.feed(&mut roll, Event::Ready { key: new1 }),
        [Action::Done]
    );
    assert!(roll.is_over());
}

#[test]
fn stop_first_replacement_that_never_gets_ready_halts_and_stays() {
    let mut pool = Pool::stale(2);
    pool.rolling.order = RollOrder::StopFirst;
    let mut roll = begin(&mut pool, 2);
    let new = pool.slots[0].key;
    pool.feed(&mut roll, Event::Gone { key: 0 });
    let out = pool.feed(&mut roll, Event::Stopped { key: new });
    assert_eq!(out, [Action::Halted { index: 0, key: new }]);
    assert!(roll.is_over());
    // Not retired: it is the slot's instance now.
    assert_eq!(pool.retired, [(0, Why::Replaced)]);
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
fn the_roll_goes_on_while_the_old_instance_drains() {
    let (mut pool, mut roll, old) = first_replaced(2);
    // Index 1 started as soon as index 0 was promoted.
    assert_eq!(pool.started, [0, 1]);
    assert_eq!(pool.feed(&mut roll, Event::Stopped { key: old }), []);
    assert_eq!(pool.feed(&mut roll, Event::Gone { key: old }), []);
    assert!(roll.incoming_at(1).is_some());
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
