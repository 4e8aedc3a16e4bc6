//! The lifecycle of one instance slot, as a pure state machine.
//!
//! [`Lifecycle::step`] takes an [`Event`] (spawned, spawn failed, exited, stop asked,
//! a timer fired, …) with the current time and pushes [`Action`]s (start, signal the
//! group, arm a timer, report up/down/gone, log). The event loop performs the actions:
//! it spawns, signals and arms timers, and feeds back what happened. Nothing here
//! touches a process or a clock.
//!
//! Stale timers: every timer carries the generation the instance had when it was
//! armed ([`Timer::gen`]); the generation changes on every state change, and a timer
//! whose generation is not the current one is ignored. Generations come from the
//! shell ([`Context::gen`], unique for the daemon's lifetime), so a timer of a
//! forgotten instance never matches the instance that reuses its key.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Backoff, GiveUp, Pool, RestartPolicy, Signal};
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
    /// anything in the group is still alive. `pid` is None once the leader was reaped;
    /// `killed` once SIGKILL went to the group. `then`: what follows once stopped.
    Stopping {
        pid: Option<u32>,
        pgid: u32,
        since: Instant,
        kill_at: Instant,
        then: Then,
        killed: bool,
    },
    /// Gave up after too many restarts; comes back at `until` (None: at the next reload).
    Failed { until: Option<Instant> },
    /// Not running and not coming back by itself.
    Stopped,
}

/// What follows a stop, once the instance has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Stay stopped (held, retiring, shutting down, scaled away).
    Stay,
    /// A hung worker was stopped: start it again at once (counts as a restart).
    Restart,
    /// `orchd ctl start` came while its hold was stopping it: start it again, with
    /// what its pool runs now.
    Release,
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

/// The lifecycle of one instance slot: its state and restart bookkeeping.
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
    /// How its first start went (the ready line and READY=1).
    pub first_start: FirstStart,
    /// When the current (or last) process was spawned.
    started_at: Instant,
    /// Generation of the current state: timers armed in an earlier state are stale.
    gen: u64,
    /// Leaving (scale-down, replacement, removal): it takes no new work, is not
    /// restarted, and once stopped its slot is forgotten.
    leaving: bool,
}

impl Lifecycle {
    /// A slot that has not run yet; `gen` is a generation unique to it.
    pub fn new(now: Instant, gen: u64) -> Lifecycle {
        Lifecycle {
            state: State::Stopped,
            consecutive: 0,
            recent: VecDeque::new(),
            restarts: 0,
            last_exit: None,
            first_start: FirstStart::Pending,
            started_at: now,
            gen,
            leaving: false,
        }
    }
}

/// Which of an instance's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// The state's deadline: backoff over, cooldown over, stop_timeout hit.
    State,
    /// START_GRACE after a spawn: the first start may have succeeded.
    FirstReady,
}

/// An armed timer: what for, and the generation it was armed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    pub kind: TimerKind,
    pub gen: u64,
}

/// What happened to an instance (fed by the event loop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Its process was spawned; `pid` leads a new process group.
    Spawned { pid: u32 },
    /// Spawning failed; `why` says what was tried and why it failed.
    SpawnFailed { why: String },
    /// The leader exited; `group_alive`: processes remain in its group.
    Exited { exit: Exit, group_alive: bool },
    /// Group `pgid` has emptied (of a stopping instance whose leader is gone).
    GroupGone { pgid: u32 },
    /// Stop it (stop_signal now, SIGKILL at stop_timeout), then `then`.
    Stop { then: Then },
    /// Not running and not to run (shutdown, retired or held before it ran): it is
    /// stopped now.
    Settle,
    /// SIGKILL went to every group (forced shutdown).
    Killed,
    /// A timer it armed fired; `group_alive`: its group still has processes.
    Timer { timer: Timer, group_alive: bool },
}

/// What the event loop is to do for an instance (pushed by [`Lifecycle::step`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start it (as the spawn budget allows); `fresh_spec`: with what its pool runs
    /// now rather than what it ran.
    Start { fresh_spec: bool },
    /// Send `signal` to the group (then SIGCONT, so a stopped process acts on it).
    SignalGroup { pgid: u32, signal: Signal },
    /// SIGKILL to the group.
    Kill { pgid: u32 },
    /// Close its stdin: it gets no more input.
    CloseStdin,
    /// Fire `timer` at `at` (as [`Event::Timer`]).
    Arm { at: Instant, timer: Timer },
    /// A group left behind by its exited leader (it was sent the stop signal): SIGKILL
    /// whatever is left of it at `kill_at`. It no longer belongs to the instance.
    Linger { pgid: u32, kill_at: Instant },
    /// Tell it (as [`Event::GroupGone`]) when group `pgid` has emptied.
    WatchGroup { pgid: u32 },
    /// It runs and can take work.
    Up,
    /// Its process died or is being stopped: what it had in flight goes elsewhere.
    Down,
    /// Stopped for good (or gave up): nothing may wait for it. A leaving instance is
    /// then forgotten.
    Gone,
    /// It stopped being live: its pool may have none left.
    PoolLost,
    /// A log line about it; `record`: also kept in its pool's log buffer.
    Log {
        level: log::Level,
        text: String,
        record: bool,
    },
}

/// What a step needs to know beyond the instance itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `pool[index]`, for log lines.
    pub label: &'a str,
    /// Restart policy, backoff, give-up, stop signal and timeout.
    pub pool: &'a Pool,
    /// orchd runs (is not shutting down): nothing is (re)started otherwise.
    pub running: bool,
    /// Held stopped by `orchd ctl stop`: not restarted.
    pub held: bool,
    /// The ready line is not out yet: a spawn arms a [`TimerKind::FirstReady`] timer.
    pub await_ready: bool,
    /// A uniform random number in [0, 1), for backoff jitter.
    pub rand01: f64,
    /// A generation number not used before, taken if the state changes.
    pub gen: u64,
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

    /// Generation of the current state (timers armed since carry it).
    pub fn gen(&self) -> u64 {
        self.gen
    }

    pub fn retiring(&self) -> bool {
        self.leaving
    }

    /// From now on it is leaving: no new work, no restart, forgotten once stopped.
    /// The caller then stops it (or, if already stopped, forgets it).
    pub fn retire(&mut self) {
        self.leaving = true;
    }

    /// Stopping because it hung (a message timed out): what it had in flight failed
    /// by timeout.
    pub fn timed_out(&self) -> bool {
        matches!(
            self.state,
            State::Stopping {
                then: Then::Restart,
                ..
            }
        )
    }

    /// Change what follows the stop under way (no effect unless stopping): `ctl stop`
    /// makes it stay stopped, `ctl start` starts it again once stopped.
    pub fn after_stop(&mut self, then: Then) {
        if let State::Stopping { then: t, .. } = &mut self.state {
            *t = then;
        }
    }

    /// The process group to signal, while there may be one.
    pub fn group(&self) -> Option<u32> {
        match self.state {
            State::Running { pid: pgid, .. } | State::Stopping { pgid, .. } if pgid > 1 => {
                Some(pgid)
            }
            _ => None,
        }
    }

    /// Take one event at `now`; push what to do into `out`.
    pub fn step(&mut self, event: Event, now: Instant, cx: &Context, out: &mut Vec<Action>) {
        match event {
            Event::Spawned { pid } => self.on_spawned(pid, now, cx, out),
            Event::SpawnFailed { why } => {
                self.gen = cx.gen;
                self.after_exit(Err(why), Duration::ZERO, now, cx, out);
            }
            Event::Exited { exit, group_alive } => self.on_exited(exit, group_alive, now, cx, out),
            Event::GroupGone { pgid } => {
                if let State::Stopping {
                    pid: None,
                    pgid: waited,
                    then,
                    ..
                } = self.state
                {
                    if pgid == waited {
                        self.stopped(then, cx, out);
                    }
                }
            }
            Event::Stop { then } => self.on_stop(then, now, cx, out),
            Event::Settle => {
                if matches!(
                    self.state,
                    State::Backoff { .. } | State::Failed { .. } | State::Stopped
                ) {
                    self.stopped(Then::Stay, cx, out);
                }
            }
            Event::Killed => match &mut self.state {
                State::Stopping {
                    pid, killed, then, ..
                } => {
                    *killed = true;
                    if pid.is_none() {
                        let then = *then;
                        self.stopped(then, cx, out);
                    }
                }
                State::Backoff { .. } | State::Failed { .. } => self.stopped(Then::Stay, cx, out),
                State::Running { .. } | State::Stopped => {}
            },
            Event::Timer { timer, group_alive } => {
                if timer.gen == self.gen {
                    self.on_timer(timer.kind, group_alive, now, cx, out);
                }
            }
        }
        debug_assert!(
            !self.leaving || !matches!(self.state, State::Backoff { .. } | State::Failed { .. }),
            "{}: a leaving instance waits to restart: {:?}",
            cx.label,
            self.state
        );
    }

    fn on_spawned(&mut self, pid: u32, now: Instant, cx: &Context, out: &mut Vec<Action>) {
        debug_assert!(
            !matches!(self.state, State::Running { .. } | State::Stopping { .. }),
            "{}: spawned while {:?}",
            cx.label,
            self.state
        );
        self.gen = cx.gen;
        self.started_at = now;
        if self.first_start == FirstStart::Pending {
            self.first_start = FirstStart::Started;
        }
        self.state = State::Running { pid, since: now };
        log(
            out,
            log::Level::Info,
            format!("{} started (pid {pid})", cx.label),
        );
        if self.first_start != FirstStart::Ready && cx.await_ready {
            // Ready for the ready line once up for START_GRACE; after that line, no
            // such timer is armed (an idle orchd stays asleep).
            out.push(Action::Arm {
                at: deadline(now, START_GRACE),
                timer: self.timer(TimerKind::FirstReady),
            });
        }
        out.push(Action::Up);
    }

    fn on_exited(
        &mut self,
        exit: Exit,
        group_alive: bool,
        now: Instant,
        cx: &Context,
        out: &mut Vec<Action>,
    ) {
        let ran_for = now.saturating_duration_since(self.started_at);
        match &mut self.state {
            State::Running { pid, .. } => {
                let pgid = *pid;
                if group_alive {
                    let signal = cx.pool.stop_signal;
                    out.push(Action::Log {
                        level: log::Level::Warn,
                        text: format!(
                            "{}: leader exited but processes remain in its group {pgid}; sending {}",
                            cx.label, signal.name
                        ),
                        record: false,
                    });
                    out.push(Action::SignalGroup { pgid, signal });
                    out.push(Action::Linger {
                        pgid,
                        kill_at: deadline(now, cx.pool.stop_timeout),
                    });
                }
                out.push(Action::Down);
                self.after_exit(Ok(exit), ran_for, now, cx, out);
            }
            State::Stopping {
                pid,
                pgid,
                killed,
                then,
                ..
            } => {
                *pid = None;
                let (pgid, killed, then) = (*pgid, *killed, *then);
                self.last_exit = Some(exit);
                log(
                    out,
                    log::Level::Info,
                    format!(
                        "{} stopped ({exit}) after {}",
                        cx.label,
                        fmt_duration(ran_for)
                    ),
                );
                out.push(Action::Down);
                if !killed && group_alive {
                    out.push(Action::WatchGroup { pgid });
                } else {
                    self.stopped(then, cx, out);
                }
            }
            State::Backoff { .. } | State::Failed { .. } | State::Stopped => {
                out.push(Action::Log {
                    level: log::Level::Debug,
                    text: format!("{}: reaped a process in unexpected state", cx.label),
                    record: false,
                });
            }
        }
    }

    fn on_stop(&mut self, then: Then, now: Instant, cx: &Context, out: &mut Vec<Action>) {
        match &mut self.state {
            State::Running { pid, .. } => {
                let pid = *pid;
                let (signal, timeout) = (cx.pool.stop_signal, cx.pool.stop_timeout);
                let kill_at = deadline(now, timeout);
                self.gen = cx.gen;
                self.state = State::Stopping {
                    pid: Some(pid),
                    pgid: pid,
                    since: now,
                    kill_at,
                    then,
                    killed: false,
                };
                log(
                    out,
                    log::Level::Info,
                    format!("stopping {} (pid {pid}) with {}", cx.label, signal.name),
                );
                out.push(Action::SignalGroup { pgid: pid, signal });
                out.push(Action::Arm {
                    at: kill_at,
                    timer: self.timer(TimerKind::State),
                });
                out.push(Action::CloseStdin);
                out.push(Action::Down);
            }
            // Already stopping: a hung worker is restarted once stopped, unless it
            // was to stay stopped or to be released.
            State::Stopping { then: t, .. } => {
                if then == Then::Restart && *t == Then::Stay {
                    *t = then;
                }
            }
            State::Stopped => {}
            State::Backoff { .. } | State::Failed { .. } => {
                self.gen = cx.gen;
                self.stopped(then, cx, out);
            }
        }
    }

    fn on_timer(
        &mut self,
        kind: TimerKind,
        group_alive: bool,
        now: Instant,
        cx: &Context,
        out: &mut Vec<Action>,
    ) {
        match (kind, &mut self.state) {
            (TimerKind::FirstReady, State::Running { since, .. }) => {
                if now.saturating_duration_since(*since) >= START_GRACE {
                    self.first_start = FirstStart::Ready;
                }
            }
            (TimerKind::FirstReady, _) => {}
            (TimerKind::State, State::Backoff { .. }) => {
                if cx.running && !cx.held {
                    out.push(Action::Start { fresh_spec: false });
                }
            }
            (TimerKind::State, State::Failed { .. }) => {
                if cx.running && !cx.held {
                    log(
                        out,
                        log::Level::Info,
                        format!("{}: cooldown over, starting afresh", cx.label),
                    );
                    self.reset();
                    out.push(Action::Start { fresh_spec: false });
                }
            }
            (
                TimerKind::State,
                State::Stopping {
                    pid,
                    pgid,
                    killed,
                    then,
                    ..
                },
            ) => {
                if group_alive {
                    out.push(Action::Log {
                        level: log::Level::Warn,
                        text: format!(
                            "{} did not stop within {}; sending KILL to its group",
                            cx.label,
                            fmt_duration(cx.pool.stop_timeout)
                        ),
                        record: false,
                    });
                    out.push(Action::Kill { pgid: *pgid });
                }
                *killed = true;
                if pid.is_none() {
                    let then = *then;
                    self.stopped(then, cx, out);
                }
            }
            (TimerKind::State, State::Running { .. } | State::Stopped) => {}
        }
    }

    /// Decide and announce what follows an exit (`Err`: the spawn failed, and why).
    /// One log line per exit or failed spawn, saying what happened and what comes
    /// next.
    fn after_exit(
        &mut self,
        exit: Result<Exit, String>,
        ran_for: Duration,
        now: Instant,
        cx: &Context,
        out: &mut Vec<Action>,
    ) {
        let status = exit.as_ref().ok().copied();
        let restarting = wants_restart(cx.pool.restart, status);
        self.first_start = self.first_start.exited(status, ran_for, restarting);
        let (what, level) = match exit {
            Ok(e) => (
                format!("exited with {e} after {}", fmt_duration(ran_for)),
                log::Level::Warn,
            ),
            Err(why) => (why, log::Level::Error),
        };
        let label = cx.label;
        if !cx.running || self.leaving || cx.held {
            self.last_exit = status;
            log(out, log::Level::Info, format!("{label} {what}"));
            self.stopped(Then::Stay, cx, out);
            return;
        }
        match self.exited(status, ran_for, now, cx.pool, cx.rand01) {
            AfterExit::Restart { delay, attempt } => {
                log(
                    out,
                    level,
                    format!(
                        "{label} {what}; restarting in {} (attempt {attempt})",
                        fmt_duration(delay)
                    ),
                );
                self.gen = cx.gen;
                // Always through the timer, never at once: a zero delay fires in the
                // same loop turn, after the events at hand.
                out.push(Action::Arm {
                    at: deadline(now, delay),
                    timer: self.timer(TimerKind::State),
                });
            }
            AfterExit::Stay => {
                let level = if status.is_some_and(Exit::success) {
                    log::Level::Info
                } else {
                    level
                };
                log(
                    out,
                    level,
                    format!(
                        "{label} {what}; not restarting (restart = {})",
                        cx.pool.restart.as_str()
                    ),
                );
                self.stopped(Then::Stay, cx, out);
            }
            AfterExit::GiveUp { cooldown } => {
                let g = cx.pool.give_up.unwrap_or(GiveUp {
                    restarts: 0,
                    within: Duration::ZERO,
                    cooldown: None,
                });
                let until = match cooldown {
                    Some(c) => format!("retrying in {}", fmt_duration(c)),
                    None => "until the next reload".to_string(),
                };
                log(
                    out,
                    log::Level::Error,
                    format!(
                        "{label} {what}; giving up: more than {} restarts within {}; failed, {until}",
                        g.restarts,
                        fmt_duration(g.within)
                    ),
                );
                self.gen = cx.gen;
                if let Some(c) = cooldown {
                    out.push(Action::Arm {
                        at: deadline(now, c),
                        timer: self.timer(TimerKind::State),
                    });
                }
                out.push(Action::Gone);
            }
        }
        out.push(Action::PoolLost);
    }

    /// It has fully stopped: start it again if `then` says so and nothing forbids
    /// it, else it is gone (and forgotten if leaving).
    fn stopped(&mut self, then: Then, cx: &Context, out: &mut Vec<Action>) {
        self.gen = cx.gen;
        self.state = State::Stopped;
        if then != Then::Stay && !self.leaving && !cx.held && cx.running {
            let fresh_spec = then == Then::Release;
            let text = if fresh_spec {
                // `orchd ctl start` came while its hold was still stopping it.
                format!("{} stopped; starting it again (released)", cx.label)
            } else {
                // A hung worker was stopped: it comes back at once.
                self.restarts += 1;
                format!("{} restarting after its timeout", cx.label)
            };
            log(out, log::Level::Info, text);
            out.push(Action::Start { fresh_spec });
            return;
        }
        out.push(Action::Gone);
    }

    fn timer(&self, kind: TimerKind) -> Timer {
        Timer {
            kind,
            gen: self.gen,
        }
    }
}

/// A lifecycle line (kept in the pool's log buffer too).
fn log(out: &mut Vec<Action>, level: log::Level, text: String) {
    out.push(Action::Log {
        level,
        text,
        record: true,
    });
}

/// A duration for log lines: "3.2s", "400ms", "2m 5s".
pub fn fmt_duration(d: Duration) -> String {
    // Millisecond precision reads well in logs ("3.2s", "400ms").
    let ms = d.as_millis();
    if ms >= 1000 && d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_millis(ms as u64)).to_string()
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
        let g = GiveUp {
            restarts: 3,
            within: Duration::from_secs(60),
            cooldown: Some(Duration::from_secs(300)),
        };
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

        fn exit(&mut self, code: i32, group_alive: bool) -> Vec<Action> {
            self.quiet(Event::Exited {
                exit: Exit::Code(code),
                group_alive,
            })
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
        let g = GiveUp {
            restarts: 2,
            within: Duration::from_secs(60),
            cooldown: Some(Duration::from_secs(5)),
        };
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
        let log = r.at(5001).step(Event::Exited {
            exit: Exit::Code(1),
            group_alive: false,
        });
        assert!(
            log.iter().any(|a| matches!(a, Action::Log { level: log::Level::Error, text, .. }
                if text.contains("giving up: more than 2 restarts within 1m; failed, retrying in 5.0s"))),
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
        let g = GiveUp {
            restarts: 0,
            within: Duration::from_secs(60),
            cooldown: None,
        };
        let mut r = Rig::new(pool(RestartPolicy::Always, Some(g)));
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
        let a = r.at(50).step(Event::Exited {
            exit: Exit::Code(1),
            group_alive: true,
        });
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

    #[test]
    fn a_hung_instance_is_stopped_and_started_again_at_once() {
        let mut r = Rig::new(pool(RestartPolicy::Always, None));
        r.spawned(7);
        r.quiet(Event::Stop {
            then: Then::Restart,
        });
        assert!(r.life.timed_out());
        let a = r.step(Event::Exited {
            exit: Exit::Code(143),
            group_alive: false,
        });
        assert!(
            matches!(&a[2], Action::Log { text, .. } if text == "w[0] restarting after its timeout"),
            "{a:?}"
        );
        assert_eq!(a[3], Action::Start { fresh_spec: false });
        assert_eq!(a.len(), 4);
        assert_eq!(r.life.restarts, 1);
        assert!(!r.life.timed_out());
    }

    #[test]
    fn a_timeout_does_not_restart_what_was_being_stopped_for_good() {
        let mut r = Rig::new(pool(RestartPolicy::Always, None));
        r.spawned(7);
        r.quiet(Event::Stop { then: Then::Stay });
        r.quiet(Event::Stop {
            then: Then::Restart,
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
        r.life.after_stop(Then::Release);
        let a = r.step(Event::Exited {
            exit: Exit::Code(0),
            group_alive: false,
        });
        assert!(
            matches!(&a[2], Action::Log { text, .. } if text == "w[0] stopped; starting it again (released)")
        );
        assert_eq!(a[3], Action::Start { fresh_spec: true });
        assert_eq!(r.life.restarts, 0);
        // `stop` again before it stopped: it stays stopped.
        r.spawned(8);
        r.quiet(Event::Stop { then: Then::Stay });
        r.life.after_stop(Then::Release);
        r.life.after_stop(Then::Stay);
        assert_eq!(r.exit(0, false), [Action::Down, Action::Gone]);
    }

    #[test]
    fn a_retiring_instance_is_not_restarted_and_is_gone_once_stopped() {
        let mut r = Rig::new(pool(RestartPolicy::Always, None));
        r.spawned(7);
        r.life.retire();
        assert!(r.life.retiring());
        // It dies while draining: no restart.
        let a = r.step(Event::Exited {
            exit: Exit::Code(1),
            group_alive: false,
        });
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
            then: Then::Restart,
        });
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
        let a = r.at(10).step(Event::Exited {
            exit: Exit::Code(0),
            group_alive: false,
        });
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
                let process =
                    matches!(r.life.state, State::Running { .. } | State::Stopping { .. });
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
                        then: [Then::Stay, Then::Restart, Then::Release][rand(3) as usize],
                    },
                    6 if matches!(r.life.state, State::Stopping { pid: None, .. }) => {
                        Event::GroupGone {
                            pgid: r.life.group().unwrap_or(0),
                        }
                    }
                    7 if !process => Event::Settle,
                    8 if rand(4) == 0 => Event::Killed,
                    // Retired: the shell stops what is not running at once.
                    9 => {
                        r.life.retire();
                        match r.life.state {
                            State::Backoff { .. } | State::Failed { .. } => {
                                Event::Stop { then: Then::Stay }
                            }
                            State::Stopped => Event::Settle,
                            _ => continue,
                        }
                    }
                    10 => {
                        r.life
                            .after_stop([Then::Stay, Then::Release][rand(2) as usize]);
                        r.held = rand(4) == 0;
                        r.running = rand(8) != 0;
                        continue;
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
}
