//! Applying a [`Plan`] to the running pools, as an ordered list of steps (pure).
//!
//! The event loop performs each [`Step`] in turn; what a step sets off later (a
//! replacement staying up, an old instance gone) is the pool's [`roll`](super::roll).
//! The order matters: a pending replacement is cancelled before the slots it may
//! outlive are retired, retired slots go before new ones are added, and the roll starts
//! once the pool has its new size.

use super::roll::Event;
use super::{Plan, PoolChange};

/// One step of applying a plan, for the pool it is paired with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create the pool and start its instances.
    AddPool,
    /// Drain and stop every instance of the pool, then forget it.
    RemovePool,
    /// Take the pool's new settings and spec (what instances started from now on run).
    Update,
    /// Feed the pool's roll; for [`Event::Begin`], a pool without a roll gets one.
    Roll(Event),
    /// Retire the highest slot.
    RetireSlot,
    /// Add a slot and start its instance.
    AddSlot,
    /// Announce that `replace` instances are replaced one at a time.
    Replacing { replace: u32 },
    /// More room (max_inflight, queue) may let waiting work go.
    Refresh,
}

/// The steps that apply `plan`, each with its pool's name. `slots(name)` is how many
/// slots the running pool has.
pub fn steps(plan: &Plan, slots: impl Fn(&str) -> u32) -> Vec<(&str, Step)> {
    let mut out = Vec::new();
    for change in &plan.pools {
        let name = change.name();
        match *change {
            PoolChange::Unchanged { .. } => {}
            PoolChange::Added { .. } => out.push((name, Step::AddPool)),
            PoolChange::Removed { .. } => out.push((name, Step::RemovePool)),
            PoolChange::Changed {
                resize,
                replace,
                cancel,
                ..
            } => {
                let mut push = |step| out.push((name, step));
                push(Step::Update);
                // A roll in progress started instances of the previous spec: its
                // waiting replacement is cancelled, and it starts over below if some
                // instance does not run the new spec.
                let replan = cancel || replace > 0;
                if replan {
                    push(Step::Roll(Event::Cancel));
                }
                let mut count = slots(name);
                if let Some((_, to)) = resize {
                    for _ in to..count {
                        push(Step::RetireSlot);
                    }
                    push(Step::Roll(Event::Shrunk { count: to }));
                    for _ in count.min(to)..to {
                        push(Step::AddSlot);
                    }
                    count = to;
                }
                if replace > 0 && count > 0 {
                    push(Step::Replacing { replace });
                }
                if replan {
                    push(Step::Roll(Event::Begin { replace }));
                }
                push(Step::Refresh);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(resize: Option<(u32, u32)>, replace: u32, cancel: bool) -> Plan {
        Plan {
            pools: vec![PoolChange::Changed {
                name: "p".into(),
                resize,
                replace,
                cancel,
                settings: vec![],
            }],
            ..Plan::default()
        }
    }

    /// The steps for pool `p` of `plan`, which has `n` slots now.
    fn of(plan: &Plan, n: u32) -> Vec<Step> {
        steps(plan, |name| if name == "p" { n } else { 0 })
            .into_iter()
            .map(|(name, step)| {
                assert_eq!(name, "p");
                step
            })
            .collect()
    }

    use Step::*;

    #[test]
    fn pools_are_added_removed_or_left_alone_in_plan_order() {
        let plan = Plan {
            pools: vec![
                PoolChange::Unchanged { name: "u".into() },
                PoolChange::Added {
                    name: "a".into(),
                    count: 2,
                },
                PoolChange::Removed {
                    name: "r".into(),
                    count: 1,
                },
            ],
            ..Plan::default()
        };
        assert_eq!(steps(&plan, |_| 1), [("a", AddPool), ("r", RemovePool)]);
    }

    #[test]
    fn a_changed_pool_cancels_then_resizes_then_rolls() {
        let (shrink, begin) = (Event::Shrunk { count: 2 }, Event::Begin { replace: 2 });
        let cases: &[(&str, Plan, u32, &[Step])] = &[
            (
                "settings only",
                changed(None, 0, false),
                2,
                &[Update, Refresh],
            ),
            (
                "scale-down: the highest slots (and their replacements) go",
                changed(Some((4, 2)), 0, false),
                4,
                &[Update, RetireSlot, RetireSlot, Roll(shrink), Refresh],
            ),
            (
                "scale-up",
                changed(Some((1, 2)), 0, false),
                1,
                &[Update, Roll(shrink), AddSlot, Refresh],
            ),
            (
                "new spec: cancel first, roll once the pool has its size",
                changed(Some((3, 2)), 2, true),
                3,
                &[
                    Update,
                    Roll(Event::Cancel),
                    RetireSlot,
                    Roll(shrink),
                    Replacing { replace: 2 },
                    Roll(begin),
                    Refresh,
                ],
            ),
            (
                "undoing an edit only cancels",
                changed(None, 0, true),
                2,
                &[
                    Update,
                    Roll(Event::Cancel),
                    Roll(Event::Begin { replace: 0 }),
                    Refresh,
                ],
            ),
            (
                "nothing announced for a pool scaled to 0",
                changed(Some((1, 0)), 2, false),
                1,
                &[
                    Update,
                    Roll(Event::Cancel),
                    RetireSlot,
                    Roll(Event::Shrunk { count: 0 }),
                    Roll(begin),
                    Refresh,
                ],
            ),
        ];
        for (what, plan, n, want) in cases {
            assert_eq!(of(plan, *n), *want, "{what}");
        }
    }
}
