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
//!
//! Besides the state, an instance may be leaving ([`Lifecycle::retire`]: scale-down,
//! replacement, removal) and is then never restarted and forgotten once stopped;
//! whether it is held by `orchd ctl stop` and whether orchd is shutting down come in
//! with each step ([`Context`]).
//!
//! Readiness (SPEC 10): with the pool's `ready` set ([`Context::ready`]), a spawned
//! process is `starting` and takes no messages until it is ready: its
//! [`ReadyTracker`] decides from the time ([`TimerKind::Ready`]), from output lines
//! the shell hands it ([`Lifecycle::ready_line`]) or from a passed health probe
//! ([`Event::ProbePassed`]); the shell and the health checks raise
//! [`Event::Ready`] / [`Event::NotReady`] with what it decided. Ready pushes
//! [`Action::Ready`]; not ready within `ready.timeout` stops the process and counts as
//! a failed start (backoff, give_up). Without `ready`, nothing changes: messages at
//! once, `starting` for [`START_GRACE`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Backoff, GiveUp, Pool, Ready, RestartPolicy, Signal};
use crate::health::order::Member;
use crate::health::ready::{ReadyEvent, ReadyTracker};
use crate::sys::Exit;
use crate::timers::{deadline, fmt_duration};

/// An instance counts as `starting` (for status) until it has been up this long.
pub const START_GRACE: Duration = Duration::from_secs(1);

/// A spawn that fails (missing binary, bad cwd, unknown user) backs off as if
/// `backoff.initial` were at least this: with `initial = "0s"` it would otherwise be
/// retried in a tight loop (a crash needs a process to run; a failed spawn does not).
pub const FAILED_SPAWN_MIN_INITIAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A live process, leader of its own process group (pgid = pid). Shown as
    /// `starting` during its first [`START_GRACE`].
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
    /// orchd stopped it for `Cause` (hung, health, memory): start it again like a
    /// crashed process (counted for backoff and give_up, whatever `restart` says).
    Restart(Cause),
    /// `orchd ctl start` came while its hold was stopping it: start it again, with
    /// what its pool runs now.
    Release,
    /// It did not get ready within `ready.timeout`: a failed start (backoff, give_up).
    FailedStart,
}

/// Why orchd restarts a running instance (SPEC 10: "like a hung one").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Its oldest in-flight message timed out.
    Timeout,
    /// `health.failures` consecutive health probes failed.
    Health,
    /// Its RSS stayed above `max_rss`.
    Rss,
}

impl Cause {
    /// Why it stopped, for the lifecycle's log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Timeout => "a message timed out",
            Cause::Health => "its health checks failed",
            Cause::Rss => "its memory stayed above max_rss",
        }
    }
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
        self.exited_gated(exit, ran_for, restarting, false)
    }

    /// [`Self::exited`]; `gated`: the pool sets `ready`, so only [`Event::Ready`]
    /// makes a start ready, never the time it ran.
    pub fn exited_gated(
        self,
        exit: Option<Exit>,
        ran_for: Duration,
        restarting: bool,
        gated: bool,
    ) -> FirstStart {
        match self {
            FirstStart::Ready | FirstStart::Completed => self,
            // Up long enough: its ready timer was due, just not handled yet.
            _ if !gated && exit.is_some() && ran_for >= START_GRACE => FirstStart::Ready,
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

/// How a process ended, for what follows ([`Lifecycle::after_exit`]).
#[derive(Debug, Clone)]
enum Ending {
    /// It exited by itself.
    Exited(Exit),
    /// The spawn failed, or it did not get ready in time (why, for the log).
    Failed(String),
    /// orchd stopped it to restart it.
    Restart(Cause),
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
    /// Readiness of the current process when its pool sets `ready` (None: it does
    /// not, or no process runs).
    ready: Option<ReadyTracker>,
    /// The current process became ready ([`Action::Ready`] went out).
    ready_seen: bool,
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
            ready: None,
            ready_seen: false,
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
    /// The ready tracker's next deadline (`ready.after`, `ready.timeout`).
    Ready,
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
    /// Not running and not to run (shutdown, held before it ran): it is stopped now.
    Settle,
    /// It is leaving (scale-down, replacement, removal): never restarted, forgotten
    /// once stopped; stopped now if it does not run.
    Retire,
    /// `orchd ctl stop` holds it (the shell set `held`): it stays stopped once
    /// stopped; stopped now if it waits to restart.
    Hold,
    /// `orchd ctl start` released it: started afresh if stopped or failed, started
    /// again once stopped if stopping.
    Release,
    /// A reload: a failed instance starts afresh.
    Reload,
    /// SIGKILL went to every group (forced shutdown).
    Killed,
    /// A timer it armed fired; `group_alive`: its group still has processes.
    Timer { timer: Timer, group_alive: bool },
    /// Its process became ready (its ready tracker said so: a log line, a probe).
    Ready,
    /// Its process did not become ready within `ready.timeout`: a failed start.
    NotReady,
    /// A health probe passed: with `ready.probe`, the first one makes it ready.
    ProbePassed,
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
    /// It runs and can take work (with `ready`: not before [`Action::Ready`]).
    Up,
    /// Its process became ready (SPEC 10): it takes messages now (with `ready`), and a
    /// rolling replacement may go on.
    Ready,
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
    /// The pool's `ready` (None: ready as soon as spawned).
    pub ready: Option<&'a Ready>,
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
        self.restart_after(ran_for, exit.is_none(), now, pool, rand01)
    }

    /// A process that ran for `ran_for` is to be restarted (`spawn_failed`: none ran):
    /// counted for give_up and backoff; records Backoff or Failed in `state`.
    fn restart_after(
        &mut self,
        ran_for: Duration,
        spawn_failed: bool,
        now: Instant,
        pool: &Pool,
        rand01: f64,
    ) -> AfterExit {
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
        if spawn_failed {
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

    /// Leaving: takes no new work, is not restarted, forgotten once stopped.
    pub fn retiring(&self) -> bool {
        self.leaving
    }

    /// From now on it is leaving, without a step: for an instance being reported
    /// gone, which is then forgotten (see [`Event::Retire`] otherwise).
    pub fn retire(&mut self) {
        self.leaving = true;
    }

    /// Stopping because it hung (a message timed out): what it had in flight failed
    /// by timeout. (Stopped for failed health probes or `max_rss`, its messages
    /// failed because it died, as the ledger counts it.)
    pub fn timed_out(&self) -> bool {
        matches!(
            self.state,
            State::Stopping {
                then: Then::Restart(Cause::Timeout),
                ..
            }
        )
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
                self.after_exit(Ending::Failed(why), Duration::ZERO, now, cx, out);
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
                        self.stopped(then, now, cx, out);
                    }
                }
            }
            Event::Stop { then } => self.on_stop(then, now, cx, out),
            Event::Retire => {
                self.leaving = true;
                if !matches!(self.state, State::Running { .. } | State::Stopping { .. }) {
                    self.stopped(Then::Stay, now, cx, out);
                }
            }
            Event::Hold => match &mut self.state {
                State::Stopping { then, .. } => *then = Then::Stay,
                State::Backoff { .. } | State::Failed { .. } => {
                    self.stopped(Then::Stay, now, cx, out)
                }
                State::Running { .. } | State::Stopped => {}
            },
            Event::Release => match &mut self.state {
                State::Stopping { then, .. } => *then = Then::Release,
                State::Stopped | State::Failed { .. } => {
                    if cx.running && !cx.held && !self.leaving {
                        self.reset();
                        out.push(Action::Start { fresh_spec: true });
                    }
                }
                State::Running { .. } | State::Backoff { .. } => {}
            },
            Event::Reload => {
                if matches!(self.state, State::Failed { .. })
                    && cx.running
                    && !cx.held
                    && !self.leaving
                {
                    self.reset();
                    out.push(Action::Start { fresh_spec: false });
                }
            }
            Event::Settle => {
                if matches!(
                    self.state,
                    State::Backoff { .. } | State::Failed { .. } | State::Stopped
                ) {
                    self.stopped(Then::Stay, now, cx, out);
                }
            }
            Event::Killed => match &mut self.state {
                State::Stopping {
                    pid, killed, then, ..
                } => {
                    *killed = true;
                    if pid.is_none() {
                        let then = *then;
                        self.stopped(then, now, cx, out);
                    }
                }
                State::Backoff { .. } | State::Failed { .. } => {
                    self.stopped(Then::Stay, now, cx, out)
                }
                State::Running { .. } | State::Stopped => {}
            },
            Event::Timer { timer, group_alive } => {
                if timer.gen == self.gen {
                    self.on_timer(timer.kind, group_alive, now, cx, out);
                }
            }
            Event::Ready => self.on_ready(now, cx, out),
            Event::NotReady => self.on_not_ready(now, cx, out),
            Event::ProbePassed => match self.ready.as_mut().and_then(|r| r.on_probe_passed(now)) {
                Some(ReadyEvent::Ready) => self.on_ready(now, cx, out),
                Some(ReadyEvent::TimedOut) => self.on_not_ready(now, cx, out),
                None => {}
            },
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
        self.ready = cx.ready.map(|r| ReadyTracker::new(Some(r), now));
        self.ready_seen = false;
        if let Some(at) = self.ready.as_ref().and_then(ReadyTracker::next_deadline) {
            out.push(Action::Arm {
                at,
                timer: self.timer(TimerKind::Ready),
            });
        }
        if self.first_start != FirstStart::Ready && cx.await_ready && self.ready.is_none() {
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
                self.after_exit(Ending::Exited(exit), ran_for, now, cx, out);
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
                    self.stopped(then, now, cx, out);
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
                if matches!(then, Then::Restart(_)) && *t == Then::Stay {
                    *t = then;
                }
            }
            State::Stopped => {}
            // Already waiting to come back, or given up: nothing to restart.
            State::Backoff { .. } | State::Failed { .. } if matches!(then, Then::Restart(_)) => {}
            State::Backoff { .. } | State::Failed { .. } => {
                self.gen = cx.gen;
                self.stopped(then, now, cx, out);
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
            (TimerKind::Ready, State::Running { .. }) => {
                match self.ready.as_mut().and_then(|r| r.on_timer(now)) {
                    Some(ReadyEvent::Ready) => self.on_ready(now, cx, out),
                    Some(ReadyEvent::TimedOut) => self.on_not_ready(now, cx, out),
                    None => {
                        // Not decided yet (a timer armed before a later deadline).
                        if let Some(at) = self.ready.as_ref().and_then(ReadyTracker::next_deadline)
                        {
                            out.push(Action::Arm {
                                at,
                                timer: self.timer(TimerKind::Ready),
                            });
                        }
                    }
                }
            }
            (TimerKind::Ready, _) => {}
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
                    self.stopped(then, now, cx, out);
                }
            }
            (TimerKind::State, State::Running { .. } | State::Stopped) => {}
        }
    }

    /// Decide and announce what follows an exit, a failed spawn or start, or a stop
    /// for a restart. One log line for each, saying what happened and what comes
    /// next.
    fn after_exit(
        &mut self,
        exit: Ending,
        ran_for: Duration,
        now: Instant,
        cx: &Context,
        out: &mut Vec<Action>,
    ) {
        let status = match exit {
            Ending::Exited(e) => Some(e),
            Ending::Failed(_) | Ending::Restart(_) => None,
        };
        let forced = matches!(exit, Ending::Restart(_));
        let restarting = forced || wants_restart(cx.pool.restart, status);
        let gated = self.ready.is_some() || cx.ready.is_some();
        self.ready = None;
        self.first_start = self
            .first_start
            .exited_gated(status, ran_for, restarting, gated);
        let (what, level) = match exit {
            Ending::Exited(e) => (
                format!("exited with {e} after {}", fmt_duration(ran_for)),
                log::Level::Warn,
            ),
            Ending::Failed(why) => (why, log::Level::Error),
            Ending::Restart(cause) => (
                format!(
                    "stopped after {} because {}",
                    fmt_duration(ran_for),
                    cause.as_str()
                ),
                log::Level::Warn,
            ),
        };
        let label = cx.label;
        if !cx.running || self.leaving || cx.held {
            self.last_exit = status;
            log(out, log::Level::Info, format!("{label} {what}"));
            self.stopped(Then::Stay, now, cx, out);
            return;
        }
        let after = if forced {
            // orchd stopped it: restarted whatever `restart` says, and its exit
            // (the stop signal) stays what status shows.
            self.restart_after(ran_for, false, now, cx.pool, cx.rand01)
        } else {
            self.exited(status, ran_for, now, cx.pool, cx.rand01)
        };
        match after {
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
                self.stopped(Then::Stay, now, cx, out);
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
    fn stopped(&mut self, then: Then, now: Instant, cx: &Context, out: &mut Vec<Action>) {
        self.gen = cx.gen;
        self.state = State::Stopped;
        self.ready = None;
        if self.leaving || cx.held || !cx.running {
            out.push(Action::Gone);
            return;
        }
        let ran_for = now.saturating_duration_since(self.started_at);
        // Status shows how it ended (the stop signal, most likely).
        let last_exit = self.last_exit;
        match then {
            Then::Stay => out.push(Action::Gone),
            // Not ready in time: like a spawn that failed (backoff, give_up).
            Then::FailedStart => {
                let why = format!("{} stopped: a failed start", cx.label);
                self.after_exit(Ending::Failed(why), ran_for, now, cx, out);
                self.last_exit = last_exit;
            }
            // Hung, unhealthy or too big: like a crash (backoff, give_up).
            Then::Restart(cause) => {
                self.after_exit(Ending::Restart(cause), ran_for, now, cx, out);
                self.last_exit = last_exit;
            }
            Then::Release => {
                // `orchd ctl start` came while its hold was still stopping it.
                let text = format!("{} stopped; starting it again (released)", cx.label);
                log(out, log::Level::Info, text);
                out.push(Action::Start { fresh_spec: true });
            }
        }
    }

    /// Its process became ready (the tracker, or whoever raised [`Event::Ready`],
    /// decided): it takes messages, counts as ready for the ready line and rolls.
    fn on_ready(&mut self, now: Instant, cx: &Context, out: &mut Vec<Action>) {
        let State::Running { since, .. } = self.state else {
            return;
        };
        if self.ready_seen || self.ready.as_ref().is_none_or(ReadyTracker::timed_out) {
            return;
        }
        self.ready_seen = true;
        if self.first_start != FirstStart::Completed {
            self.first_start = FirstStart::Ready;
        }
        log(
            out,
            log::Level::Info,
            format!(
                "{} ready after {}",
                cx.label,
                fmt_duration(now.saturating_duration_since(since))
            ),
        );
        out.push(Action::Ready);
    }

    /// Not ready within `ready.timeout`: stop it; once stopped, a failed start.
    fn on_not_ready(&mut self, now: Instant, cx: &Context, out: &mut Vec<Action>) {
        if !matches!(self.state, State::Running { .. }) || self.ready.is_none() || self.ready_seen {
            return;
        }
        let timeout = cx.ready.map_or(Duration::ZERO, |r| r.timeout);
        log(
            out,
            log::Level::Warn,
            format!(
                "{} not ready within {}: a failed start",
                cx.label,
                fmt_duration(timeout)
            ),
        );
        self.on_stop(Then::FailedStart, now, cx, out);
    }

    /// Whether its process takes messages: it runs and, when its pool sets `ready`,
    /// is ready (SPEC 10).
    pub fn takes_messages(&self) -> bool {
        matches!(self.state, State::Running { .. }) && (self.ready.is_none() || self.ready_seen)
    }

    /// Whether its process counts as ready at `now`: with `ready`, once ready; without,
    /// once up for [`START_GRACE`].
    pub fn is_ready(&self, now: Instant) -> bool {
        match (&self.state, &self.ready) {
            (State::Running { .. }, Some(_)) => self.ready_seen,
            (State::Running { since, .. }, None) => {
                now.saturating_duration_since(*since) >= START_GRACE
            }
            _ => false,
        }
    }

    /// Whether its process waits for a readiness decision (a `ready` pool), not yet
    /// taken.
    pub fn awaits_ready(&self) -> bool {
        matches!(self.state, State::Running { .. })
            && !self.ready_seen
            && self.ready.as_ref().is_some_and(|r| !r.timed_out())
    }

    /// Its state's name for status: with `ready`, `starting` lasts until ready.
    pub fn state_name(&self, now: Instant) -> StateName {
        match (&self.state, &self.ready) {
            (State::Running { .. }, Some(_)) if !self.ready_seen => StateName::Starting,
            (State::Running { .. }, Some(_)) => StateName::Running,
            (s, _) => s.name(now),
        }
    }

    /// What it is for pools that depend on its pool (SPEC 10): ready once ready
    /// (without `ready`: once it runs, except in a `restart = "never"` pool, whose
    /// instances must complete); completed once exited 0 under `restart = "never"`;
    /// failed when `failed`, or stopped otherwise under `restart = "never"` after it
    /// was started.
    pub fn as_dependency(&self, never: bool) -> Member {
        match &self.state {
            State::Failed { .. } => Member::Failed,
            State::Stopped if never && self.first_start != FirstStart::Pending => {
                if self.last_exit.is_some_and(Exit::success) {
                    Member::Completed
                } else {
                    Member::Failed
                }
            }
            State::Running { .. } if self.ready.is_some() => {
                if self.ready_seen {
                    Member::Ready
                } else {
                    Member::Pending
                }
            }
            State::Running { .. } if !never => Member::Ready,
            _ => Member::Pending,
        }
    }

    /// Whether output lines are to be handed to [`Self::ready_line`] (`ready.log`).
    pub fn wants_lines(&self) -> bool {
        matches!(self.state, State::Running { .. })
            && !self.ready_seen
            && self.ready.as_ref().is_some_and(ReadyTracker::wants_lines)
    }

    /// A line of its output (stderr, and stdout where it is not the reply channel):
    /// the event to raise ([`Event::Ready`], [`Event::NotReady`]) if it decides.
    pub fn ready_line(&mut self, line: &[u8], now: Instant) -> Option<Event> {
        if !matches!(self.state, State::Running { .. }) {
            return None;
        }
        match self.ready.as_mut()?.on_line(line, now)? {
            ReadyEvent::Ready => Some(Event::Ready),
            ReadyEvent::TimedOut => Some(Event::NotReady),
        }
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

#[cfg(test)]
mod tests;
