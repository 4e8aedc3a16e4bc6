//! The lifecycle of one instance slot, as a pure state machine.
//!
//! It takes events (`spawned`, `exited`, `stop_requested`) with the current time and
//! returns decisions (restart at T, give up until T, stay stopped). The event loop
//! performs the decisions: it spawns, signals and arms timers. Nothing here touches a
//! process or a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Backoff, GiveUp, Pool, RestartPolicy};
use crate::sys::Exit;
use crate::timers::deadline;

/// An instance counts as `starting` (for status) until it has been up this long.
pub const START_GRACE: Duration = Duration::from_secs(1);

/// A spawn that fails (missing binary, bad cwd, unknown user) backs off as if
/// `backoff.initial` were at least this: with `initial = "0s"` it would otherwise be
/// retried in a tight loop (a crash needs a process to run; a failed spawn does not).
pub const FAILED_SPAWN_MIN_INITIAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A live process. Shown as `starting` during its first [`START_GRACE`].
    Running { pid: u32, since: Instant },
    /// Waiting to restart.
    Backoff { until: Instant },
    /// Asked to stop: stop_signal sent to the group at `since`; SIGKILL at `kill_at` if
    /// anything in the group is still alive. `pid` is None once the leader was reaped.
    Stopping {
        pid: Option<u32>,
        pgid: u32,
        since: Instant,
        kill_at: Instant,
    },
    /// Gave up after too many restarts; comes back at `until` (None: at the next reload).
    Failed { until: Option<Instant> },
    /// Not running and not coming back by itself.
    Stopped,
}

/// The names SPEC fixes for states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName {
    Starting,
    Running,
    Backoff,
    Stopping,
    Failed,
    Stopped,
}

impl StateName {
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Starting => "starting",
            StateName::Running => "running",
            StateName::Backoff => "backoff",
            StateName::Stopping => "stopping",
            StateName::Failed => "failed",
            StateName::Stopped => "stopped",
        }
    }
}

/// How an instance's first start went, for the `ready` log line and `READY=1`
/// (SPEC 7): orchd is ready once no instance is `Pending` or `Started` any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStart {
    /// Not spawned yet.
    Pending,
    /// Spawned, not yet up for [`START_GRACE`].
    Started,
    /// A process of it stayed up for [`START_GRACE`].
    Ready,
    /// The spawn failed, or the process exited before it was ready. A later attempt
    /// that stays up makes it `Ready` (while the ready line is not out yet).
    Failed,
    /// Exited with status 0 before it was ready and is not restarted (a one-shot job).
    Completed,
}

impl FirstStart {
    /// After an exit (`exit` None: the spawn failed) of a process that ran for
    /// `ran_for`; `restarting`: the restart policy starts it again.
    pub fn exited(self, exit: Option<Exit>, ran_for: Duration, restarting: bool) -> FirstStart {
        match self {
            FirstStart::Ready | FirstStart::Completed => self,
            // Up long enough: its ready timer was due, just not handled yet.
            _ if exit.is_some() && ran_for >= START_GRACE => FirstStart::Ready,
            _ if exit.is_some_and(Exit::success) && !restarting => FirstStart::Completed,
            _ => FirstStart::Failed,
        }
    }
}

impl State {
    pub fn name(&self, now: Instant) -> StateName {
        match self {
            State::Running { since, .. } if now.duration_since(*since) < START_GRACE => {
                StateName::Starting
            }
            State::Running { .. } => StateName::Running,
            State::Backoff { .. } => StateName::Backoff,
            State::Stopping { .. } => StateName::Stopping,
            State::Failed { .. } => StateName::Failed,
            State::Stopped => StateName::Stopped,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            State::Running { pid, .. } => Some(*pid),
            State::Stopping { pid, .. } => *pid,
            _ => None,
        }
    }
}

/// What to do after an instance exited (or failed to spawn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterExit {
    /// Restart after `delay`; this is consecutive restart number `attempt` (1-based).
    Restart { delay: Duration, attempt: u32 },
    /// The restart policy says not to restart.
    Stay,
    /// More than `give_up.restarts` restarts within `give_up.within`.
    GiveUp { cooldown: Option<Duration> },
}

/// Restart bookkeeping of one instance slot.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub state: State,
    /// Consecutive restarts without a run of `reset_after`: the backoff exponent.
    consecutive: u32,
    /// Times of recent restarts, for `give_up`.
    recent: VecDeque<Instant>,
    /// Restarts since this slot was created (status).
    pub restarts: u64,
    pub last_exit: Option<Exit>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            state: State::Stopped,
            consecutive: 0,
            recent: VecDeque::new(),
            restarts: 0,
            last_exit: None,
        }
    }
}

/// Delay before the `n`-th consecutive restart (n >= 1): `min(max, initial *
/// factor^(n-1))`, spread by ±jitter using `rand01` in [0, 1).
pub fn backoff_delay(b: &Backoff, n: u32, rand01: f64) -> Duration {
    let initial = b.initial.as_secs_f64();
    if initial <= 0.0 {
        // 0 × factor^n is 0 for every n (and 0 × inf would be NaN).
        return Duration::ZERO;
    }
    let exp = n.saturating_sub(1).min(1024) as i32;
    let base = initial * b.factor.powi(exp);
    let capped = if base.is_finite() {
        base.min(b.max.as_secs_f64())
    } else {
        b.max.as_secs_f64()
    };
    let spread = 1.0 + b.jitter * (2.0 * rand01 - 1.0);
    // `from_secs_f64` panics on overflow and NaN; validation caps durations at 365
    // days (so this is at most twice that), but the arithmetic must not rely on it.
    let secs = (capped * spread).max(0.0);
    Duration::try_from_secs_f64(secs).unwrap_or(if secs.is_nan() { b.max } else { Duration::MAX })
}

/// Whether `policy` restarts after `exit` (None: the spawn itself failed).
pub fn wants_restart(policy: RestartPolicy, exit: Option<Exit>) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.is_some_and(Exit::success),
        RestartPolicy::Never => false,
    }
}

impl Lifecycle {
    pub fn spawned(&mut self, pid: u32, now: Instant) {
        self.state = State::Running { pid, since: now };
    }

    /// The process exited after running for `ran_for` (`exit` None: spawn failed).
    /// Decides what comes next and records it in `state` (Backoff/Failed/Stopped).
    pub fn exited(
        &mut self,
        exit: Option<Exit>,
        ran_for: Duration,
        now: Instant,
        pool: &Pool,
        rand01: f64,
    ) -> AfterExit {
        self.last_exit = exit;
        if !wants_restart(pool.restart, exit) {
            self.state = State::Stopped;
            return AfterExit::Stay;
        }
        if ran_for >= pool.backoff.reset_after {
            self.consecutive = 0;
        }
        if let Some(give_up) = pool.give_up {
            if self.note_restart_gives_up(&give_up, now) {
                self.state = State::Failed {
                    until: give_up.cooldown.map(|c| deadline(now, c)),
                };
                return AfterExit::GiveUp {
                    cooldown: give_up.cooldown,
                };
            }
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.restarts += 1;
        let mut backoff = pool.backoff;
        if exit.is_none() {
            backoff.initial = backoff.initial.max(FAILED_SPAWN_MIN_INITIAL);
            backoff.max = backoff.max.max(backoff.initial);
        }
        let delay = backoff_delay(&backoff, self.consecutive, rand01);
        self.state = State::Backoff {
            until: deadline(now, delay),
        };
        AfterExit::Restart {
            delay,
            attempt: self.consecutive,
        }
    }

    /// Record a restart at `now`; true when that makes more than `restarts` within
    /// `within`.
    fn note_restart_gives_up(&mut self, g: &GiveUp, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= g.within)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() > g.restarts as usize
    }

    /// Forget the restart history: after a cooldown or a reload, a failed instance
    /// starts afresh.
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
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
        let mut l = Lifecycle::default();
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
            let mut l = Lifecycle::default();
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
            let mut l = Lifecycle::default();
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
        let mut l = Lifecycle::default();
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
        let g = GiveUp {
            restarts: 3,
            within: Duration::from_secs(60),
            cooldown: Some(Duration::from_secs(300)),
        };
        let p = pool(RestartPolicy::Always, Some(g));
        let mut l = Lifecycle::default();
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
        let mut l = Lifecycle::default();
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
        let mut l = Lifecycle::default();
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
}
