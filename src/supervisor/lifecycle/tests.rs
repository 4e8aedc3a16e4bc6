//! Unit tests of the instance lifecycle: backoff and give-up arithmetic, and every
//! transition of the machine, without processes.

use super::*;
use crate::config::{Command, Pool, Signal};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn pool(restart: RestartPolicy, give_up: Option<GiveUp>) -> Pool {
    Pool {
        name: "p".into(),
        command: Command::Shell("true".into()),
        count: 1,
        cwd: PathBuf::from("/"),
        env: BTreeMap::new(),
        user: None,
        group: None,
        restart,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
        },
        give_up,
        stop_signal: Signal {
            number: libc::SIGTERM,
            name: "TERM",
        },
        stop_timeout: Duration::from_secs(10),
        max_inflight: 32,
        queue: 10000,
        protocol: Default::default(),
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;

/// More than `restarts` restarts within a minute: failed, for `cooldown`.
fn give_up(restarts: u32, cooldown: Option<Duration>) -> GiveUp {
    GiveUp {
        restarts,
        within: Duration::from_secs(60),
        cooldown,
    }
}

#[test]
fn delay_grows_by_factor_and_caps_at_max() {
    let b = pool(RestartPolicy::Always, None).backoff;
    let got: Vec<_> = (1..=6).map(|n| backoff_delay(&b, n, 0.5)).collect();
    assert_eq!(
        got,
        [MS(100), MS(200), MS(400), MS(800), MS(1000), MS(1000)]
    );
}

#[test]
fn jitter_spreads_both_ways() {
    let mut b = pool(RestartPolicy::Always, None).backoff;
    b.jitter = 0.1;
    assert_eq!(backoff_delay(&b, 1, 0.0), MS(90));
    assert_eq!(backoff_delay(&b, 1, 0.5), MS(100));
    assert!(backoff_delay(&b, 1, 0.999_999) <= MS(110));
}

#[test]
fn zero_initial_stays_zero_however_many_restarts() {
    let mut b = pool(RestartPolicy::Always, None).backoff;
    b.initial = Duration::ZERO;
    b.factor = 10.0;
    for n in [1, 2, 310, 1025, u32::MAX] {
        assert_eq!(backoff_delay(&b, n, 0.5), Duration::ZERO, "attempt {n}");
    }
}

#[test]
fn failed_spawns_back_off_from_a_floored_initial() {
    let mut p = pool(RestartPolicy::Always, None);
    p.backoff.initial = Duration::ZERO;
    let mut l = Lifecycle::new(Instant::now(), 0);
    let t = Instant::now();
    let delays: Vec<_> = (0..3)
        .map(|_| match l.exited(None, Duration::ZERO, t, &p, 0.5) {
            AfterExit::Restart { delay, .. } => delay,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(delays, [MS(100), MS(200), MS(400)]);
    let r = l.exited(Some(Exit::Code(1)), MS(1), Instant::now(), &p, 0.5);
    assert!(matches!(r, AfterExit::Restart { delay, .. } if delay.is_zero()));
}

#[test]
fn huge_exponent_does_not_overflow() {
    let b = pool(RestartPolicy::Always, None).backoff;
    assert_eq!(backoff_delay(&b, u32::MAX, 0.5), Duration::from_secs(1));
}

/// Issue 12: durations the config cannot hold any more (past the 365-day cap), a
/// huge factor and full jitter: no panic in the float conversion or in `now + d`.
#[test]
fn extreme_backoff_and_give_up_durations_do_not_panic() {
    let cap = Duration::from_secs(365 * 24 * 3600);
    for top in [cap, Duration::MAX] {
        let b = Backoff {
            initial: top,
            max: top,
            factor: f64::MAX,
            jitter: 1.0,
            reset_after: top,
        };
        for n in [1, 2, 1025, u32::MAX] {
            for r in [0.0, 0.5, 0.999_999] {
                let d = backoff_delay(&b, n, r);
                assert!(d <= top.saturating_mul(2), "{d:?}");
            }
        }
        let mut p = pool(RestartPolicy::Always, None);
        p.backoff = b;
        p.stop_timeout = top;
        let mut l = Lifecycle::new(Instant::now(), 0);
        let now = Instant::now();
        let r = l.exited(Some(Exit::Code(1)), MS(1), now, &p, 0.999_999);
        assert!(matches!(r, AfterExit::Restart { .. }), "{r:?}");
        assert!(matches!(l.state, State::Backoff { until } if until > now));
        // The spawn-failure floor and a give-up with a cooldown at the top.
        let r = l.exited(None, Duration::ZERO, now, &p, 0.5);
        assert!(matches!(r, AfterExit::Restart { .. }), "{r:?}");
        p.give_up = Some(GiveUp {
            restarts: 0,
            within: top,
            cooldown: Some(top),
        });
        let mut l = Lifecycle::new(Instant::now(), 0);
        let r = l.exited(Some(Exit::Code(1)), MS(1), now, &p, 0.5);
        assert!(matches!(r, AfterExit::GiveUp { .. }), "{r:?}");
        assert!(matches!(l.state, State::Failed { until: Some(u) } if u > now));
    }
}

#[test]
fn policies() {
    let ok = Some(Exit::Code(0));
    let bad = Some(Exit::Code(3));
    let sig = Some(Exit::Signal {
        signal: 9,
        core_dumped: false,
    });
    assert!(wants_restart(RestartPolicy::Always, ok));
    assert!(!wants_restart(RestartPolicy::OnFailure, ok));
    assert!(wants_restart(RestartPolicy::OnFailure, bad));
    assert!(wants_restart(RestartPolicy::OnFailure, sig));
    assert!(wants_restart(RestartPolicy::OnFailure, None));
    assert!(!wants_restart(RestartPolicy::Never, bad));
}

#[test]
fn first_start_outcomes() {
    use FirstStart::*;
    let (ok, bad) = (Some(Exit::Code(0)), Some(Exit::Code(1)));
    let short = MS(10);
    // A failed spawn, or an exit within the grace, is a failed start...
    assert_eq!(Started.exited(None, Duration::ZERO, true), Failed);
    assert_eq!(Pending.exited(None, Duration::ZERO, false), Failed);
    assert_eq!(Started.exited(bad, short, true), Failed);
    assert_eq!(Started.exited(ok, short, true), Failed);
    // ...except a clean exit that is not restarted: a one-shot job that is done.
    assert_eq!(Started.exited(ok, short, false), Completed);
    // Up for the grace: ready, even if its timer was not handled yet.
    assert_eq!(Started.exited(bad, START_GRACE, true), Ready);
    assert_eq!(Failed.exited(bad, START_GRACE, true), Ready);
    assert_eq!(Failed.exited(None, Duration::ZERO, true), Failed);
    // Once ready, later exits change nothing.
    assert_eq!(Ready.exited(None, Duration::ZERO, true), Ready);
    assert_eq!(Completed.exited(bad, short, true), Completed);
}

#[test]
fn consecutive_failures_back_off_and_long_run_resets() {
    let p = pool(RestartPolicy::Always, None);
    let mut l = Lifecycle::new(Instant::now(), 0);
    let t = Instant::now();
    let bad = Some(Exit::Code(1));
    let d: Vec<_> = (0..3)
        .map(|_| match l.exited(bad, MS(5), t, &p, 0.5) {
            AfterExit::Restart { delay, .. } => delay,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(d, [MS(100), MS(200), MS(400)]);
    // A run of reset_after starts the sequence over.
    assert_eq!(
        l.exited(bad, Duration::from_secs(10), t, &p, 0.5),
        AfterExit::Restart {
            delay: MS(100),
            attempt: 1
        }
    );
    assert_eq!(l.restarts, 4);
    assert!(matches!(l.state, State::Backoff { .. }));
}

#[test]
fn gives_up_after_more_than_n_restarts_within_window() {
    let g = give_up(3, Some(Duration::from_secs(300)));
    let p = pool(RestartPolicy::Always, Some(g));
    let mut l = Lifecycle::new(Instant::now(), 0);
    let t = Instant::now();
    for i in 0..3 {
        let r = l.exited(Some(Exit::Code(1)), MS(1), t + MS(i), &p, 0.5);
        assert!(matches!(r, AfterExit::Restart { .. }), "{r:?}");
    }
    let r = l.exited(Some(Exit::Code(1)), MS(1), t + MS(3), &p, 0.5);
    assert_eq!(
        r,
        AfterExit::GiveUp {
            cooldown: Some(Duration::from_secs(300))
        }
    );
    assert_eq!(
        l.state,
        State::Failed {
            until: Some(t + MS(3) + Duration::from_secs(300))
        }
    );
    // After a reset (cooldown passed) it gets the full budget again.
    l.reset();
    let r = l.exited(Some(Exit::Code(1)), MS(1), t + MS(4), &p, 0.5);
    assert!(matches!(r, AfterExit::Restart { attempt: 1, .. }));
}

#[test]
fn restarts_outside_window_do_not_count() {
    let g = GiveUp {
        restarts: 1,
        within: Duration::from_secs(1),
        cooldown: None,
    };
    let p = pool(RestartPolicy::Always, Some(g));
    let mut l = Lifecycle::new(Instant::now(), 0);
    let t = Instant::now();
    for i in 0..5 {
        let r = l.exited(
            Some(Exit::Code(1)),
            MS(1),
            t + Duration::from_secs(2 * i),
            &p,
            0.5,
        );
        assert!(matches!(r, AfterExit::Restart { .. }), "{r:?}");
    }
}

#[test]
fn on_failure_clean_exit_stays_stopped() {
    let p = pool(RestartPolicy::OnFailure, None);
    let mut l = Lifecycle::new(Instant::now(), 0);
    let r = l.exited(Some(Exit::Code(0)), MS(1), Instant::now(), &p, 0.5);
    assert_eq!(r, AfterExit::Stay);
    assert_eq!(l.state, State::Stopped);
    assert_eq!(l.last_exit, Some(Exit::Code(0)));
}

#[test]
fn starting_is_derived_from_uptime() {
    let t = Instant::now();
    let s = State::Running { pid: 1, since: t };
    assert_eq!(s.name(t), StateName::Starting);
    assert_eq!(s.name(t + START_GRACE), StateName::Running);
}

// ----- the machine: step(event) -> actions --------------------------------------

/// An instance's lifecycle with a fixed pool and a hand-driven clock.
struct Rig {
    life: Lifecycle,
    pool: Pool,
    t0: Instant,
    now: Instant,
    next_gen: u64,
    running: bool,
    held: bool,
    await_ready: bool,
    /// The pool's `ready` (None: not set).
    ready: Option<crate::config::Ready>,
}

impl Rig {
    fn new(pool: Pool) -> Rig {
        let t0 = Instant::now();
        Rig {
            life: Lifecycle::new(t0, 1),
            pool,
            t0,
            now: t0,
            next_gen: 1,
            running: true,
            held: false,
            await_ready: true,
            ready: None,
        }
    }

    fn at(&mut self, ms: u64) -> &mut Rig {
        self.now = self.t0 + MS(ms);
        self
    }

    fn step(&mut self, event: Event) -> Vec<Action> {
        self.next_gen += 1;
        let cx = Context {
            label: "w[0]",
            pool: &self.pool,
            running: self.running,
            held: self.held,
            await_ready: self.await_ready,
            ready: self.ready.as_ref(),
            rand01: 0.5,
            gen: self.next_gen,
        };
        let mut out = Vec::new();
        self.life.step(event, self.now, &cx, &mut out);
        out
    }

    /// The actions without the log lines.
    fn quiet(&mut self, event: Event) -> Vec<Action> {
        let mut v = self.step(event);
        v.retain(|a| !matches!(a, Action::Log { .. }));
        v
    }

    fn spawned(&mut self, pid: u32) -> Vec<Action> {
        self.quiet(Event::Spawned { pid })
    }

    /// The leader exits with `code`: all actions, log lines included.
    fn exited(&mut self, code: i32, group_alive: bool) -> Vec<Action> {
        self.step(Event::Exited {
            exit: Exit::Code(code),
            group_alive,
        })
    }

    fn exit(&mut self, code: i32, group_alive: bool) -> Vec<Action> {
        let mut v = self.exited(code, group_alive);
        v.retain(|a| !matches!(a, Action::Log { .. }));
        v
    }

    fn fire(&mut self, timer: Timer, group_alive: bool) -> Vec<Action> {
        self.quiet(Event::Timer { timer, group_alive })
    }
}

/// The timer armed by these actions (exactly one).
fn armed(actions: &[Action]) -> (Instant, Timer) {
    let armed: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Arm { at, timer } => Some((*at, *timer)),
            _ => None,
        })
        .collect();
    assert_eq!(armed.len(), 1, "{actions:?}");
    armed[0]
}

fn term() -> Signal {
    pool(RestartPolicy::Always, None).stop_signal
}

#[test]
fn spawn_reports_up_and_arms_the_first_ready_timer() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    let log = r.step(Event::Spawned { pid: 42 });
    assert!(
        matches!(&log[0], Action::Log { text, record: true, .. } if text == "w[0] started (pid 42)"),
        "{log:?}"
    );
    let (at, timer) = armed(&log);
    assert_eq!(
        (at, timer.kind),
        (r.t0 + START_GRACE, TimerKind::FirstReady)
    );
    assert_eq!(log.last(), Some(&Action::Up));
    assert_eq!(r.life.first_start, FirstStart::Started);
    assert_eq!(r.life.group(), Some(42));
    // Too early (a spawn at t0 fired early): nothing; at the grace: ready.
    assert!(r.at(999).fire(timer, false).is_empty());
    assert_eq!(r.life.first_start, FirstStart::Started);
    assert!(r.at(1000).fire(timer, false).is_empty());
    assert_eq!(r.life.first_start, FirstStart::Ready);
}

#[test]
fn after_the_ready_line_a_spawn_arms_no_timer() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.await_ready = false;
    assert_eq!(r.spawned(7), [Action::Up]);
}

#[test]
fn exit_goes_down_backs_off_and_the_timer_starts_it_again() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let a = r.at(10).exit(1, false);
    let (at, timer) = armed(&a);
    assert_eq!(
        a,
        [Action::Down, Action::Arm { at, timer }, Action::PoolLost]
    );
    assert_eq!(at, r.t0 + MS(110));
    assert_eq!(r.life.state, State::Backoff { until: at });
    assert_eq!(r.life.last_exit, Some(Exit::Code(1)));
    assert_eq!(r.life.first_start, FirstStart::Failed);
    assert_eq!(
        r.at(110).fire(timer, false),
        [Action::Start { fresh_spec: false }]
    );
    // The shell starts it: the next process runs.
    r.at(111).spawned(8);
    assert_eq!(r.life.state.pid(), Some(8));
}

#[test]
fn stale_timers_are_ignored() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    let first_ready = armed(&r.spawned(7)).1;
    let backoff = armed(&r.at(10).exit(1, false)).1;
    // The first run's ready timer is stale once it exited.
    assert!(r.at(1000).fire(first_ready, false).is_empty());
    assert_eq!(r.life.first_start, FirstStart::Failed);
    // Stopped while in backoff: its backoff timer no longer starts it.
    assert_eq!(r.quiet(Event::Stop { then: Then::Stay }), [Action::Gone]);
    assert!(r.fire(backoff, false).is_empty());
    assert_eq!(r.life.state, State::Stopped);
    // Started again: the old stop timer does not kill the new process.
    r.spawned(8);
    let stop = armed(&r.quiet(Event::Stop { then: Then::Stay })).1;
    r.exit(0, false);
    r.spawned(9);
    assert!(r.fire(stop, true).is_empty());
    assert!(matches!(r.life.state, State::Running { pid: 9, .. }));
}

#[test]
fn backoff_grows_then_gives_up_then_cooldown_starts_afresh() {
    let g = give_up(2, Some(Duration::from_secs(5)));
    let mut r = Rig::new(pool(RestartPolicy::Always, Some(g)));
    let mut delays = Vec::new();
    for i in 0..2 {
        r.at(i * 1000).spawned(10 + i as u32);
        let (at, timer) = armed(&r.at(i * 1000 + 1).exit(1, false));
        delays.push(at - r.now);
        assert_eq!(r.fire(timer, false), [Action::Start { fresh_spec: false }]);
    }
    assert_eq!(delays, [MS(100), MS(200)]);
    assert_eq!(r.life.restarts, 2);
    r.at(5000).spawned(20);
    let log = r.at(5001).exited(1, false);
    assert!(
        log.iter().any(
            |a| matches!(a, Action::Log { level: log::Level::Error, text, .. }
            if text.contains("giving up: more than 2 restarts within 1m; failed, retrying in 5.0s"))
        ),
        "{log:?}"
    );
    let (at, cooldown) = armed(&log);
    assert_eq!(at, r.now + Duration::from_secs(5));
    assert!(log.ends_with(&[Action::Gone, Action::PoolLost]), "{log:?}");
    assert!(matches!(r.life.state, State::Failed { until: Some(u) } if u == at));
    // Cooldown over: afresh, with a full restart budget.
    let a = r.at(10_001).step(Event::Timer {
        timer: cooldown,
        group_alive: false,
    });
    assert!(
        matches!(&a[0], Action::Log { text, .. } if text.ends_with("cooldown over, starting afresh"))
    );
    assert_eq!(a[1], Action::Start { fresh_spec: false });
    r.spawned(21);
    let (at, _) = armed(&r.at(10_002).exit(1, false));
    assert_eq!(at - r.now, MS(100));
}

#[test]
fn give_up_without_cooldown_waits_for_a_reload() {
    let mut r = Rig::new(pool(RestartPolicy::Always, Some(give_up(0, None))));
    r.spawned(7);
    assert_eq!(
        r.exit(1, false),
        [Action::Down, Action::Gone, Action::PoolLost]
    );
    assert_eq!(r.life.state, State::Failed { until: None });
}

#[test]
fn stop_signals_the_group_and_kills_it_at_the_stop_timeout() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let a = r.at(100).quiet(Event::Stop { then: Then::Stay });
    let (at, timer) = armed(&a);
    assert_eq!(at, r.now + Duration::from_secs(10));
    assert_eq!(
        a,
        [
            Action::SignalGroup {
                pgid: 7,
                signal: term()
            },
            Action::Arm { at, timer },
            Action::CloseStdin,
            Action::Down,
        ]
    );
    assert!(matches!(
        r.life.state,
        State::Stopping {
            pid: Some(7),
            pgid: 7,
            killed: false,
            then: Then::Stay,
            ..
        }
    ));
    // Asking again changes nothing.
    assert!(r.quiet(Event::Stop { then: Then::Stay }).is_empty());
    // The timeout: SIGKILL to what is left of the group.
    assert_eq!(r.at(10_100).fire(timer, true), [Action::Kill { pgid: 7 }]);
    // The leader is reaped: stopped, whatever may be left (it was killed).
    assert_eq!(r.exit(137, true), [Action::Down, Action::Gone]);
    assert_eq!(r.life.state, State::Stopped);
    assert_eq!(r.life.last_exit, Some(Exit::Code(137)));
    assert_eq!(r.life.group(), None);
}

#[test]
fn a_stopping_instance_whose_group_lingers_is_stopped_once_it_empties() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let timer = armed(&r.quiet(Event::Stop { then: Then::Stay })).1;
    assert_eq!(
        r.exit(0, true),
        [Action::Down, Action::WatchGroup { pgid: 7 }]
    );
    assert!(matches!(r.life.state, State::Stopping { pid: None, .. }));
    assert_eq!(r.life.group(), Some(7));
    // Another group emptying is not its.
    assert!(r.quiet(Event::GroupGone { pgid: 6 }).is_empty());
    assert_eq!(r.quiet(Event::GroupGone { pgid: 7 }), [Action::Gone]);
    assert_eq!(r.life.state, State::Stopped);
    // Its stop timer is stale now.
    assert!(r.fire(timer, true).is_empty());
}

#[test]
fn a_lingering_group_of_a_stopping_instance_is_killed_at_the_timeout() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let timer = armed(&r.quiet(Event::Stop { then: Then::Stay })).1;
    r.exit(0, true);
    assert_eq!(
        r.fire(timer, true),
        [Action::Kill { pgid: 7 }, Action::Gone]
    );
    assert_eq!(r.life.state, State::Stopped);
}

#[test]
fn a_group_outliving_its_exited_leader_is_left_to_linger_and_the_slot_restarts() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let a = r.at(50).exited(1, true);
    assert!(
        matches!(&a[0], Action::Log { level: log::Level::Warn, record: false, text }
            if text == "w[0]: leader exited but processes remain in its group 7; sending TERM"),
        "{a:?}"
    );
    assert_eq!(
        a[1..4],
        [
            Action::SignalGroup {
                pgid: 7,
                signal: term()
            },
            Action::Linger {
                pgid: 7,
                kill_at: r.now + Duration::from_secs(10)
            },
            Action::Down,
        ]
    );
    assert!(matches!(r.life.state, State::Backoff { .. }));
}

/// SPEC 10: health and `max_rss` restarts are "like a hung one", "counted for
/// backoff, give_up, status and metrics": a hung instance, too, comes back after the
/// backoff delay, not at once.
#[test]
fn a_hung_instance_is_stopped_and_started_again_after_the_backoff_delay() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    r.quiet(Event::Stop {
        then: Then::Restart(Cause::Timeout),
    });
    assert!(r.life.timed_out());
    let a = r.at(300).exited(143, false);
    assert!(
        matches!(&a[2], Action::Log { level: log::Level::Warn, text, .. }
            if text == "w[0] stopped after 300ms because a message timed out; restarting in 100ms (attempt 1)"),
        "{a:?}"
    );
    let (at, timer) = armed(&a);
    assert_eq!(at, r.now + MS(100));
    assert!(
        !a.iter().any(|a| matches!(a, Action::Start { .. })),
        "{a:?}"
    );
    assert!(matches!(r.life.state, State::Backoff { .. }));
    assert_eq!(r.life.restarts, 1);
    assert!(!r.life.timed_out());
    // Status shows how it ended (the stop signal).
    assert_eq!(r.life.last_exit, Some(Exit::Code(143)));
    assert_eq!(
        r.at(400).fire(timer, false),
        [Action::Start { fresh_spec: false }]
    );
}

#[test]
fn health_and_rss_restarts_back_off_more_each_time_and_say_why() {
    for (cause, why) in [
        (Cause::Health, "because its health checks failed"),
        (Cause::Rss, "because its memory stayed above max_rss"),
    ] {
        let mut r = Rig::new(pool(RestartPolicy::Always, None));
        let mut t = 0;
        for (attempt, delay) in [(1, 100), (2, 200), (3, 400)] {
            r.at(t).spawned(7);
            r.at(t + 50).quiet(Event::Stop {
                then: Then::Restart(cause),
            });
            // Not a message timeout: what it had in flight failed because it died.
            assert!(!r.life.timed_out());
            let a = r.at(t + 60).exited(143, false);
            let text = format!("restarting in {delay}ms (attempt {attempt})");
            assert!(
                a.iter().any(|a| matches!(a, Action::Log { text: l, .. }
                    if l.contains(why) && l.ends_with(&text))),
                "{a:?}"
            );
            let (at, timer) = armed(&a);
            assert_eq!(at, r.now + MS(delay));
            t += 60 + delay;
            assert_eq!(
                r.at(t).fire(timer, false),
                [Action::Start { fresh_spec: false }]
            );
        }
        assert_eq!(r.life.restarts, 3);
    }
}

#[test]
fn health_restarts_count_for_give_up_whatever_the_restart_policy() {
    let give_up = GiveUp {
        restarts: 1,
        within: Duration::from_secs(60),
        cooldown: None,
    };
    // `restart = "never"` does not keep orchd from restarting an unhealthy worker
    // (it did not exit by itself), and give_up still counts it.
    let mut r = Rig::new(pool(RestartPolicy::Never, Some(give_up)));
    r.spawned(7);
    r.quiet(Event::Stop {
        then: Then::Restart(Cause::Health),
    });
    let timer = armed(&r.at(10).exit(143, false)).1;
    assert_eq!(
        r.at(200).fire(timer, false),
        [Action::Start { fresh_spec: false }]
    );
    r.spawned(8);
    r.quiet(Event::Stop {
        then: Then::Restart(Cause::Health),
    });
    let a = r.at(300).exited(143, false);
    assert!(
        a.iter().any(|a| matches!(a, Action::Log { level: log::Level::Error, text, .. }
            if text.contains("because its health checks failed; giving up: more than 1 restarts within 1m"))),
        "{a:?}"
    );
    assert!(a.contains(&Action::Gone));
    assert_eq!(r.life.state, State::Failed { until: None });
    assert_eq!(r.life.state_name(r.now), StateName::Failed);
}

#[test]
fn a_restart_stop_of_an_instance_already_waiting_to_restart_does_nothing() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let timer = armed(&r.exit(1, false)).1;
    assert!(r
        .quiet(Event::Stop {
            then: Then::Restart(Cause::Health),
        })
        .is_empty());
    assert_eq!(r.life.restarts, 1);
    assert_eq!(r.fire(timer, false), [Action::Start { fresh_spec: false }]);
}

#[test]
fn a_restart_stop_that_ends_at_the_kill_timer_backs_off_too() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let stop = r.quiet(Event::Stop {
        then: Then::Restart(Cause::Rss),
    });
    let kill = armed(&stop).1;
    // The leader exits, its group lingers; the kill timer ends the stop.
    let a = r.exit(143, true);
    assert!(a.contains(&Action::WatchGroup { pgid: 7 }), "{a:?}");
    let a = r.at(10_000).fire(kill, true);
    assert!(a.contains(&Action::Kill { pgid: 7 }), "{a:?}");
    let (at, _) = armed(&a);
    assert_eq!(at, r.now + MS(100));
    assert!(matches!(r.life.state, State::Backoff { .. }));
}

#[test]
fn a_timeout_does_not_restart_what_was_being_stopped_for_good() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    r.quiet(Event::Stop { then: Then::Stay });
    r.quiet(Event::Stop {
        then: Then::Restart(Cause::Timeout),
    });
    // Stopping to stay stopped: a later timeout restart is taken over...
    assert!(r.life.timed_out());
    // ...but `ctl stop` (held) wins over it.
    r.held = true;
    assert_eq!(r.exit(0, false), [Action::Down, Action::Gone]);
}

#[test]
fn ctl_start_during_a_hold_stop_starts_it_again_with_the_fresh_spec() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    r.held = true;
    r.quiet(Event::Stop { then: Then::Stay });
    // `start` releases the hold while it is still stopping.
    r.held = false;
    assert!(r.quiet(Event::Release).is_empty());
    let a = r.exited(0, false);
    assert!(
        matches!(&a[2], Action::Log { text, .. } if text == "w[0] stopped; starting it again (released)")
    );
    assert_eq!(a[3], Action::Start { fresh_spec: true });
    assert_eq!(r.life.restarts, 0);
    // `stop` again before it stopped: it stays stopped.
    r.spawned(8);
    r.quiet(Event::Stop { then: Then::Stay });
    r.quiet(Event::Release);
    r.held = true;
    assert!(r.quiet(Event::Hold).is_empty());
    assert_eq!(r.exit(0, false), [Action::Down, Action::Gone]);
}

#[test]
fn a_retiring_instance_is_not_restarted_and_is_gone_once_stopped() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    r.life.retire();
    assert!(r.life.retiring());
    // It dies while draining: no restart.
    let a = r.exited(1, false);
    assert!(
        matches!(&a[1], Action::Log { level: log::Level::Info, text, .. } if text.starts_with("w[0] exited with status 1 after")),
        "{a:?}"
    );
    assert_eq!(a[2..], [Action::Gone]);
    assert_eq!(r.life.state, State::Stopped);
    // Stopped after a timeout while retiring: not started again either.
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    r.life.retire();
    r.quiet(Event::Stop {
        then: Then::Restart(Cause::Timeout),
    });
    assert_eq!(r.exit(0, false), [Action::Down, Action::Gone]);
}

#[test]
fn hold_stops_what_waits_and_release_starts_what_stopped() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let backoff = armed(&r.exit(1, false)).1;
    r.held = true;
    assert_eq!(r.quiet(Event::Hold), [Action::Gone]);
    assert_eq!(r.life.state, State::Stopped);
    assert!(r.fire(backoff, false).is_empty());
    // Released: afresh (full restart budget), with what the pool runs now.
    r.held = false;
    assert_eq!(
        r.quiet(Event::Release),
        [Action::Start { fresh_spec: true }]
    );
    // A running instance: hold and release change nothing here (the router drains
    // it, and the shell stops it once drained).
    r.spawned(8);
    r.held = true;
    assert!(r.quiet(Event::Hold).is_empty());
    r.held = false;
    assert!(r.quiet(Event::Release).is_empty());
    assert!(matches!(r.life.state, State::Running { pid: 8, .. }));
    // Shutting down: a release starts nothing.
    r.quiet(Event::Stop { then: Then::Stay });
    r.exit(0, false);
    r.running = false;
    assert!(r.quiet(Event::Release).is_empty());
}

#[test]
fn a_reload_gives_a_failed_instance_a_fresh_start() {
    let mut r = Rig::new(pool(RestartPolicy::Always, Some(give_up(1, None))));
    // Only a failed one.
    assert!(r.quiet(Event::Reload).is_empty());
    r.spawned(7);
    assert!(r.quiet(Event::Reload).is_empty());
    let backoff = armed(&r.exit(1, false)).1;
    r.fire(backoff, false);
    r.spawned(8);
    assert_eq!(
        r.exit(1, false),
        [Action::Down, Action::Gone, Action::PoolLost]
    );
    assert_eq!(r.life.state, State::Failed { until: None });
    // A held one stays failed.
    r.held = true;
    assert!(r.quiet(Event::Reload).is_empty());
    r.held = false;
    assert_eq!(
        r.quiet(Event::Reload),
        [Action::Start { fresh_spec: false }]
    );
    // Its restart history is forgotten: the next exit restarts it.
    r.spawned(9);
    armed(&r.exit(1, false));
    assert!(matches!(r.life.state, State::Backoff { .. }));
}

#[test]
fn retiring_stops_at_once_what_does_not_run() {
    // Running: it drains first; nothing happens yet.
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    assert!(r.quiet(Event::Retire).is_empty());
    assert!(r.life.retiring());
    assert!(matches!(r.life.state, State::Running { .. }));
    // Waiting to restart: stopped and gone now, and its backoff timer is stale.
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    let backoff = armed(&r.exit(1, false)).1;
    assert_eq!(r.quiet(Event::Retire), [Action::Gone]);
    assert_eq!(r.life.state, State::Stopped);
    assert!(r.fire(backoff, false).is_empty());
    // Never started: gone now.
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    assert_eq!(r.quiet(Event::Retire), [Action::Gone]);
    // Stopping for a timeout restart: it stays stopped.
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    r.quiet(Event::Stop {
        then: Then::Restart(Cause::Timeout),
    });
    assert!(r.quiet(Event::Retire).is_empty());
    assert_eq!(r.exit(0, false), [Action::Down, Action::Gone]);
}

#[test]
fn nothing_restarts_while_shutting_down() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    let timer = {
        r.spawned(7);
        armed(&r.exit(1, false)).1
    };
    r.running = false;
    assert!(r.fire(timer, false).is_empty());
    assert_eq!(r.quiet(Event::Settle), [Action::Gone]);
    r.running = true;
    r.spawned(8);
    r.running = false;
    assert_eq!(r.exit(1, false), [Action::Down, Action::Gone]);
    assert_eq!(r.life.state, State::Stopped);
}

#[test]
fn forced_shutdown_settles_stopping_instances_whose_leader_is_gone() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.spawned(7);
    r.quiet(Event::Stop { then: Then::Stay });
    // Leader alive: it is done when reaped, killed (no waiting for the group).
    assert!(r.quiet(Event::Killed).is_empty());
    assert_eq!(r.exit(137, true), [Action::Down, Action::Gone]);
    // Leader already reaped, group lingering: done now.
    r.spawned(8);
    r.quiet(Event::Stop { then: Then::Stay });
    r.exit(0, true);
    assert_eq!(r.quiet(Event::Killed), [Action::Gone]);
    // Running ones are left to their reaping.
    r.spawned(9);
    assert!(r.quiet(Event::Killed).is_empty());
}

#[test]
fn a_failed_spawn_backs_off_from_the_floor_and_fails_the_first_start() {
    let mut p = pool(RestartPolicy::Always, None);
    p.backoff.initial = Duration::ZERO;
    let mut r = Rig::new(p);
    let a = r.step(Event::SpawnFailed {
        why: "failed to start x in /: No such file".into(),
    });
    assert!(
        matches!(&a[0], Action::Log { level: log::Level::Error, text, .. }
        if text == "w[0] failed to start x in /: No such file; restarting in 100ms (attempt 1)"),
        "{a:?}"
    );
    let (at, _) = armed(&a);
    assert_eq!(at, r.now + MS(100));
    assert_eq!(r.life.first_start, FirstStart::Failed);
    assert_eq!(r.life.last_exit, None);
}

#[test]
fn a_one_shot_job_completes_and_stays_stopped() {
    let mut r = Rig::new(pool(RestartPolicy::OnFailure, None));
    r.spawned(7);
    let a = r.at(10).exited(0, false);
    assert!(
        matches!(&a[1], Action::Log { level: log::Level::Info, text, .. }
        if text.ends_with("; not restarting (restart = on-failure)")),
        "{a:?}"
    );
    assert_eq!(a[2..], [Action::Gone, Action::PoolLost]);
    assert_eq!(r.life.first_start, FirstStart::Completed);
    assert_eq!(r.life.state, State::Stopped);
}

#[test]
fn settle_stops_what_waits_and_ignores_what_runs() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    // A new slot never started (held, or retired before it ran).
    assert_eq!(r.quiet(Event::Settle), [Action::Gone]);
    r.spawned(7);
    assert!(r.quiet(Event::Settle).is_empty());
    r.exit(1, false);
    assert_eq!(r.quiet(Event::Settle), [Action::Gone]);
    assert_eq!(r.life.state, State::Stopped);
    // A group-gone report for a running instance is ignored.
    r.spawned(8);
    assert!(r.quiet(Event::GroupGone { pgid: 8 }).is_empty());
}

#[test]
fn every_state_change_takes_a_new_generation() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    let mut seen = vec![r.life.gen()];
    let mut note = |life: &Lifecycle| {
        assert!(!seen.contains(&life.gen()), "{seen:?} {}", life.gen());
        seen.push(life.gen());
    };
    r.spawned(7);
    note(&r.life);
    r.exit(1, false);
    note(&r.life);
    r.quiet(Event::Stop { then: Then::Stay });
    note(&r.life);
    r.spawned(8);
    note(&r.life);
    r.quiet(Event::Stop { then: Then::Stay });
    note(&r.life);
    // Retiring a running instance is no state change (its ready timer stays valid).
    let gen = r.life.gen();
    r.life.retire();
    assert_eq!(r.life.gen(), gen);
}

/// Random walks through the machine, with a shell that only feeds what can
/// happen (a spawn when nothing runs, an exit when a leader lives, old timers
/// firing late): the invariants hold after every step.
#[test]
fn random_walks_keep_the_invariants() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let g = GiveUp {
        restarts: 3,
        within: Duration::from_secs(2),
        cooldown: Some(MS(500)),
    };
    for case in 0..2000 {
        let policy = [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ][case % 3];
        let mut r = Rig::new(pool(policy, (case % 2 == 0).then_some(g)));
        r.await_ready = case % 5 != 0;
        let mut timers: Vec<Timer> = Vec::new();
        let mut next_pid = 100;
        let mut t = 0;
        for _ in 0..60 {
            t += rand(700);
            r.at(t);
            let before = (std::mem::discriminant(&r.life.state), r.life.gen());
            let process = matches!(r.life.state, State::Running { .. } | State::Stopping { .. });
            let event = match rand(12) {
                0 | 1 if !process => {
                    next_pid += 1;
                    Event::Spawned { pid: next_pid }
                }
                2 if !process => Event::SpawnFailed { why: "no".into() },
                3 | 4 if r.life.state.pid().is_some() => Event::Exited {
                    exit: Exit::Code(rand(3) as i32),
                    group_alive: rand(3) == 0,
                },
                5 => Event::Stop {
                    then: [Then::Stay, Then::Restart(Cause::Timeout), Then::Release]
                        [rand(3) as usize],
                },
                6 if matches!(r.life.state, State::Stopping { pid: None, .. }) => {
                    Event::GroupGone {
                        pgid: r.life.group().unwrap_or(0),
                    }
                }
                7 if !process => Event::Settle,
                8 if rand(4) == 0 => Event::Killed,
                9 => Event::Retire,
                // `ctl stop` / `ctl start`; now and then orchd starts shutting down.
                10 => {
                    r.running = rand(8) != 0;
                    r.held = rand(2) == 0;
                    if r.held {
                        Event::Hold
                    } else {
                        Event::Release
                    }
                }
                _ if !timers.is_empty() => Event::Timer {
                    timer: timers.swap_remove(rand(timers.len() as u64) as usize),
                    group_alive: rand(2) == 0,
                },
                _ => continue,
            };
            let was = format!("{:?} {event:?}", r.life.state);
            let actions = r.step(event);
            let ctx = || format!("case {case}: {was} -> {:?}: {actions:?}", r.life.state);
            for a in &actions {
                match a {
                    Action::Arm { at, timer } => {
                        assert_eq!(timer.gen, r.life.gen(), "{}", ctx());
                        assert!(*at >= r.now, "{}", ctx());
                        timers.push(*timer);
                    }
                    Action::Start { .. } => {
                        assert!(r.running && !r.held && !r.life.retiring(), "{}", ctx());
                        assert!(
                            matches!(
                                r.life.state,
                                State::Stopped | State::Backoff { .. } | State::Failed { .. }
                            ),
                            "{}",
                            ctx()
                        );
                    }
                    Action::Gone => assert!(
                        matches!(r.life.state, State::Stopped | State::Failed { .. }),
                        "{}",
                        ctx()
                    ),
                    Action::Up => {
                        assert!(matches!(r.life.state, State::Running { .. }), "{}", ctx())
                    }
                    _ => {}
                }
            }
            let downs = actions.iter().filter(|a| **a == Action::Down).count();
            assert!(downs <= 1, "{}", ctx());
            let starts = actions
                .iter()
                .filter(|a| matches!(a, Action::Start { .. }))
                .count();
            assert!(starts <= 1, "{}", ctx());
            if std::mem::discriminant(&r.life.state) != before.0 {
                assert_ne!(r.life.gen(), before.1, "{}", ctx());
            }
            assert_eq!(
                r.life.group().is_some(),
                matches!(r.life.state, State::Running { .. } | State::Stopping { .. }),
                "{}",
                ctx()
            );
            if r.life.retiring() {
                assert!(
                    !matches!(r.life.state, State::Backoff { .. } | State::Failed { .. }),
                    "{}",
                    ctx()
                );
            }
        }
    }
}

// ----- readiness (SPEC 10) ------------------------------------------------------

fn gated_rig(when: crate::config::ReadyWhen, timeout_ms: u64) -> Rig {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    r.ready = Some(crate::config::Ready {
        when,
        timeout: MS(timeout_ms),
    });
    r
}

fn log_rule(re: &str) -> crate::config::ReadyWhen {
    crate::config::ReadyWhen::Log(crate::config::Pattern(
        regex::bytes::Regex::new(re).unwrap(),
    ))
}

#[test]
fn with_ready_an_instance_is_starting_and_takes_no_messages_until_ready() {
    let mut r = gated_rig(log_rule("^listening"), 5000);
    let a = r.spawned(42);
    // The ready timeout is armed, not the one-second first-ready timer.
    let (at, timer) = armed(&a);
    assert_eq!((at, timer.kind), (r.t0 + MS(5000), TimerKind::Ready));
    assert!(a.contains(&Action::Up));
    assert!(!r.life.takes_messages());
    r.at(3000);
    assert_eq!(r.life.state_name(r.now), StateName::Starting);
    assert!(!r.life.is_ready(r.now));
    assert!(r.life.wants_lines());
    assert_eq!(r.life.ready_line(b"booting", r.now), None);
    let ev = r.life.ready_line(b"listening on 1", r.now);
    assert_eq!(ev, Some(Event::Ready));
    assert_eq!(r.quiet(Event::Ready), vec![Action::Ready]);
    assert!(r.life.takes_messages() && r.life.is_ready(r.now));
    assert_eq!(r.life.state_name(r.now), StateName::Running);
    assert_eq!(r.life.first_start, FirstStart::Ready);
    // Raised again (a probe after the log line): nothing more.
    assert_eq!(r.quiet(Event::Ready), vec![]);
    assert!(!r.life.wants_lines());
    // The stale ready timer does nothing.
    assert_eq!(r.at(5000).fire(timer, true), vec![]);
}

#[test]
fn not_ready_in_time_is_a_failed_start_with_backoff() {
    let mut r = gated_rig(log_rule("never"), 2000);
    let (_, timer) = armed(&r.spawned(42));
    let a = r.at(2000).fire(timer, true);
    assert!(
        a.contains(&Action::SignalGroup {
            pgid: 42,
            signal: term()
        }),
        "{a:?}"
    );
    assert!(a.contains(&Action::Down));
    // Once it exited: a failed first start, restarted after a backoff, counted.
    let a = r.at(2100).exited(143, false);
    assert!(
        a.iter().any(|x| matches!(x, Action::Log { text, .. } if text.contains("failed start") && text.contains("restarting in"))),
        "{a:?}"
    );
    assert!(
        matches!(r.life.state, State::Backoff { .. }),
        "{:?}",
        r.life.state
    );
    assert_eq!(r.life.first_start, FirstStart::Failed);
    assert_eq!(r.life.restarts, 1);
}

#[test]
fn exiting_before_ready_is_not_ready_however_long_it_ran() {
    let mut r = gated_rig(log_rule("never"), 60_000);
    r.spawned(42);
    r.at(5000).exit(1, false);
    assert_eq!(r.life.first_start, FirstStart::Failed);
}

#[test]
fn ready_after_and_probe_rules() {
    let mut r = gated_rig(crate::config::ReadyWhen::After(MS(500)), 5000);
    let (at, timer) = armed(&r.spawned(42));
    assert_eq!(at, r.t0 + MS(500));
    assert_eq!(r.at(500).fire(timer, true), vec![Action::Ready]);
    let mut r = gated_rig(crate::config::ReadyWhen::Probe, 5000);
    r.spawned(42);
    assert!(!r.life.wants_lines());
    assert_eq!(r.at(10).quiet(Event::ProbePassed), vec![Action::Ready]);
    assert!(r.life.takes_messages());
}

#[test]
fn without_ready_nothing_changes() {
    let mut r = Rig::new(pool(RestartPolicy::Always, None));
    let (_, timer) = armed(&r.spawned(42));
    assert_eq!(timer.kind, TimerKind::FirstReady);
    assert!(r.life.takes_messages());
    assert!(!r.life.wants_lines());
    assert!(!r.life.is_ready(r.now));
    assert_eq!(r.quiet(Event::Ready), vec![]);
    assert!(r.life.is_ready(r.t0 + START_GRACE));
}

#[test]
fn as_a_dependency_ready_completed_failed_or_pending() {
    use crate::health::order::Member;
    // Without `ready`: ready once it runs, unless it is a one-shot job.
    let mut r = Rig::new(pool(RestartPolicy::Never, None));
    assert_eq!(r.life.as_dependency(true), Member::Pending, "never started");
    r.spawned(42);
    assert_eq!(r.life.as_dependency(false), Member::Ready);
    assert_eq!(
        r.life.as_dependency(true),
        Member::Pending,
        "a job must complete"
    );
    r.at(100).exit(0, false);
    assert_eq!(r.life.as_dependency(true), Member::Completed);
    let mut r = Rig::new(pool(RestartPolicy::Never, None));
    r.spawned(42);
    r.at(100).exit(1, false);
    assert_eq!(r.life.as_dependency(true), Member::Failed);
    // With `ready`: pending until ready.
    let mut r = gated_rig(log_rule("^up"), 5000);
    r.spawned(42);
    assert_eq!(r.life.as_dependency(false), Member::Pending);
    r.quiet(Event::Ready);
    assert_eq!(r.life.as_dependency(false), Member::Ready);
}
