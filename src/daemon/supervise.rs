//! Processes: starting instances, reaping them, restarting with backoff, stopping
//! their process groups, and logging their output.
//!
//! Decisions come from [`crate::supervisor::lifecycle`]; this module performs them.
//! Invariants: an instance with a live leader is in `pids`; a group whose leader is
//! gone but whose members may live is either in `lingering` (instance restarting) or in
//! `awaiting_group` (instance stopping), and gets SIGKILL at its deadline.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Token};

use super::control::Control;
use super::logs::Stream;
use super::route::InstanceRt;
use super::{Daemon, IoTarget, Phase, TimerKey};
use crate::config::Pool;
use crate::framing::{log_pieces, Fill, Frame, LineBuf};
use crate::supervisor::lifecycle::{
    wants_restart, AfterExit, FirstStart, Lifecycle, State, START_GRACE,
};
use crate::supervisor::spawn::{self, Credentials};
use crate::sys::{self, Exit};
use crate::timers::deadline;

/// Log a lifecycle line about an instance (`$inst`, an [`Instance`]) at `$level`, and
/// keep it in its pool's log buffer for `orchd ctl CONFIG logs`. A macro over the
/// daemon's fields, not a method: callers hold borrows of other fields.
macro_rules! lifecycle {
    ($d:expr, $inst:expr, $level:expr, $($arg:tt)+) => {{
        let text = format!($($arg)+);
        log::log!($level, "{text}");
        if let Some(p) = $d.pools.get($inst.pool) {
            $d.control.record(&p.cfg.name, $inst.index, Stream::Orchd, text);
        }
    }};
}

/// Worker log lines longer than this are split into several records.
const LOG_LINE_MAX: usize = 16 * 1024;
/// Replies longer than this are refused (like messages, SPEC 5).
pub const MAX_LINE: usize = 1024 * 1024;

/// A pool at run time.
pub struct PoolRt {
    pub cfg: Pool,
    /// What new instances run (a snapshot of `cfg`): instances keep the spec they were
    /// created with, so an old instance restarting during a rolling replacement runs
    /// the old version.
    pub spec: Rc<Pool>,
    /// Some route targets this pool: instances get a stdin pipe and their stdout lines
    /// are replies.
    pub routed: bool,
    /// Instance keys by index (`ORCHD_INSTANCE`).
    pub slots: Vec<usize>,
    /// Instances on their way out (scale-down, replacement, removal): they take no new
    /// messages, finish what they have, then stop and are forgotten.
    pub retiring: Vec<usize>,
    /// Removed from the config: forgotten once its last instance has stopped.
    pub removed: bool,
    pub q: super::route::PoolQueue,
    /// A rolling replacement in progress (reload changed what the process is, or
    /// `orchd ctl restart`).
    pub roll: Option<super::reload::Roll>,
    /// `orchd ctl stop POOL`: instances a later scale-up adds are held too.
    pub held: bool,
}

pub(super) struct PipeIn {
    pub rx: Receiver,
    pub token: Token,
    pub buf: LineBuf,
}

pub(super) struct PipeOut {
    pub tx: Sender,
    pub token: Token,
    /// Bytes not yet written, from `pos`.
    pub buf: Vec<u8>,
    pub pos: usize,
    /// WRITABLE interest is registered (only while output is pending).
    pub want_write: bool,
}

impl PoolRt {
    /// No instance slots remain (removed, or scaled to 0): its retiring instances
    /// work off what is queued, then whatever is left is answered with an error.
    pub fn draining(&self) -> bool {
        self.removed || self.slots.is_empty()
    }
}

/// One instance slot of a pool. It outlives the processes it runs: restarts keep the
/// slot, its counters and its backlog.
pub struct Instance {
    pub pool: usize,
    pub index: u32,
    /// `pool[index]`: log target and name in messages.
    pub label: String,
    /// Unique for the daemon's lifetime (slab keys are reused): pending `restart`
    /// and `stop` replies follow the instance by it.
    pub id: u64,
    /// Held stopped by `orchd ctl stop`: drains, stops, and is not started again
    /// (by its restart policy, a reload or a roll) until `orchd ctl start`.
    pub held: bool,
    /// `start` came while it was still stopping: start it once stopped.
    pub start_when_stopped: bool,
    pub life: Lifecycle,
    pub started_at: Instant,
    pgid: u32,
    /// Generation of the lifecycle timer; bumped on every state change.
    pub(super) gen: u64,
    /// Leaving: finish in-flight work, stop, then the slot is forgotten.
    pub retiring: bool,
    /// SIGKILL was sent to the group.
    killed: bool,
    /// Stopped because a message timed out: start again once stopped, and what was in
    /// flight failed by timeout.
    pub timed_out: bool,
    /// How its first start went (the ready line and READY=1).
    pub first_start: FirstStart,
    /// Why the last spawn failed (status shows it as the last exit): set by a failed
    /// spawn, which also clears `life.last_exit`; shown while that is None.
    pub spawn_error: Option<String>,
    /// What this instance runs (command, cwd, env, user, group).
    pub spec: Rc<Pool>,
    /// Its stdin is a pipe (a route targets the pool).
    pub stdin_pipe: bool,
    pub(super) stdout: Option<PipeIn>,
    pub(super) stderr: Option<PipeIn>,
    pub(super) stdin: Option<PipeOut>,
    pub(super) rt: InstanceRt,
}

impl Instance {
    /// The process group to signal, while there may be one.
    pub fn group(&self) -> Option<u32> {
        match self.life.state {
            State::Running { .. } | State::Stopping { .. } if self.pgid > 1 => Some(self.pgid),
            _ => None,
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.life.state, State::Stopped)
    }

    /// Its first start is settled for the ready line: ready, failed or completed,
    /// or stopped by orchd before it was ready (then it counts as neither).
    pub fn first_start_settled(&self) -> bool {
        if self.held {
            // Held by `orchd ctl stop`, perhaps before it ever ran: not waited for.
            return true;
        }
        match self.first_start {
            FirstStart::Pending => false,
            FirstStart::Started => self.is_stopped(),
            FirstStart::Ready | FirstStart::Failed | FirstStart::Completed => true,
        }
    }

    /// Why it is in its state, for status (SPEC 7), where a reason applies.
    pub fn reason(&self) -> Option<&'static str> {
        self.held.then_some("held")
    }

    /// The last exit for status: the exit status, or why the last spawn failed.
    pub fn last_exit_text(&self) -> Option<String> {
        match self.life.last_exit {
            Some(e) => Some(e.to_string()),
            None => self.spawn_error.clone(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.life.state.pid()
    }

    /// Running and able to take new messages.
    pub fn is_live(&self) -> bool {
        self.can_work() && !self.retiring && !self.held
    }

    /// Running with a stdin: can be written to (a retiring instance still works off
    /// its backlog).
    pub fn can_work(&self) -> bool {
        matches!(self.life.state, State::Running { .. }) && self.stdin.is_some()
    }
}

impl Daemon {
    /// Create a pool and start its instances.
    pub(super) fn pool_add(&mut self, cfg: Pool, routed: bool) -> usize {
        warn_if_ids_ignored(&cfg);
        let count = cfg.count;
        let name = cfg.name.clone();
        let key = self.pools.insert(PoolRt {
            spec: Rc::new(cfg.clone()),
            cfg,
            routed,
            slots: Vec::new(),
            retiring: Vec::new(),
            removed: false,
            q: Default::default(),
            roll: None,
            held: false,
        });
        self.pool_names.insert(name, key);
        for _ in 0..count {
            self.instance_add(key);
        }
        key
    }

    /// Add the next instance slot to a pool and start it.
    pub(super) fn instance_add(&mut self, pool: usize) -> usize {
        let index = self.pools[pool].slots.len() as u32;
        let key = self.instance_new(pool, index);
        self.pools[pool].slots.push(key);
        if self.pools[pool].held {
            // `orchd ctl stop POOL` holds what a scale-up adds (SPEC 9).
            self.instances[key].held = true;
            log::info!("{} held stopped", self.instances[key].label);
            return key;
        }
        self.start_instance(key);
        key
    }

    /// A new, not yet started instance for slot `index` of `pool`.
    pub(super) fn instance_new(&mut self, pool: usize, index: u32) -> usize {
        let p = &self.pools[pool];
        let label = format!("{}[{}]", p.cfg.name, index);
        let stdin_pipe = p.routed;
        let spec = p.spec.clone();
        // A fresh generation: a queued start of a forgotten instance whose key this
        // one reuses must not match it.
        let gen = self.gen();
        let id = self.gen();
        self.instances.insert(Instance {
            spec,
            pool,
            index,
            label,
            id,
            held: false,
            start_when_stopped: false,
            life: Lifecycle::default(),
            started_at: self.now,
            pgid: 0,
            gen,
            retiring: false,
            killed: false,
            timed_out: false,
            first_start: FirstStart::Pending,
            spawn_error: None,
            stdin_pipe,
            stdout: None,
            stderr: None,
            stdin: None,
            rt: InstanceRt::default(),
        })
    }

    /// Start an instance now if this loop turn's spawn budget allows, else queue it
    /// behind the others waiting (see `start_queued`).
    pub(super) fn start_instance(&mut self, key: usize) {
        if self.phase != Phase::Running {
            // Shutting down: nothing new starts.
            self.mark_stopped(key);
            return;
        }
        let Some(inst) = self.instances.get(key).filter(|i| !i.held) else {
            return;
        };
        if self.spawn_budget == 0 || !self.start_queue.is_empty() {
            self.start_queue.push_back((key, inst.gen));
            return;
        }
        self.spawn_budget -= 1;
        self.spawn_instance(key);
    }

    /// Start queued instances while this turn's spawn budget lasts. An entry whose
    /// instance changed state since (stopped, retired, forgotten) is dropped.
    pub(super) fn start_queued(&mut self) {
        while self.spawn_budget > 0 && self.phase == Phase::Running {
            let Some((key, gen)) = self.start_queue.pop_front() else {
                return;
            };
            // A held instance (`orchd ctl stop`) waits for `start`, which starts it
            // afresh.
            let due = self.instances.get(key).is_some_and(|i| {
                i.gen == gen
                    && !i.held
                    && !matches!(i.life.state, State::Running { .. } | State::Stopping { .. })
            });
            if due {
                self.spawn_budget -= 1;
                self.spawn_instance(key);
            }
        }
    }

    fn spawn_instance(&mut self, key: usize) {
        let gen = self.gen();
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        inst.gen = gen;
        inst.killed = false;
        inst.timed_out = false;
        let spec = inst.spec.clone();
        let result = Credentials::resolve(&spec)
            .and_then(|creds| spawn::spawn(&spec, inst.index, inst.stdin_pipe, creds));
        let label = inst.label.clone();
        match result {
            Ok(sp) => {
                let pid = sp.pid;
                if let Err(e) = self.attach_pipes(key, sp) {
                    log::error!("{label}: cannot watch the pipes of pid {pid}: {e}; killing it");
                    let _ = sys::kill_group(pid, libc::SIGKILL);
                }
                let now = self.now;
                let inst = &mut self.instances[key];
                inst.pgid = pid;
                inst.started_at = now;
                if inst.first_start == FirstStart::Pending {
                    inst.first_start = FirstStart::Started;
                }
                let await_ready = inst.first_start != FirstStart::Ready && !self.ready_sent;
                inst.life.spawned(pid, now);
                self.pids.insert(pid, key);
                lifecycle!(
                    self,
                    self.instances[key],
                    log::Level::Info,
                    "{label} started (pid {pid})"
                );
                if await_ready {
                    // Ready for the ready line once up for START_GRACE; after that
                    // line, no such timer is armed (an idle orchd stays asleep).
                    self.timers
                        .arm(now + START_GRACE, TimerKey::FirstReady { key });
                }
                self.roll_started(key);
                self.route_instance_up(key);
            }
            Err(e) => {
                let why = format!(
                    "failed to start {} in {}: {e}",
                    spec.command,
                    spec.cwd.display()
                );
                self.instances[key].spawn_error = Some(format!("spawn: {e}"));
                self.after_exit(key, Err(why), Duration::ZERO);
            }
        }
    }

    /// Register a new process's pipes. Each is stored on the instance as soon as it
    /// is registered, so that on a failure the normal close path (after the caller
    /// kills the process and it is reaped) releases what was registered.
    fn attach_pipes(&mut self, key: usize, sp: spawn::Spawned) -> io::Result<()> {
        let mut stdout = sp.stdout;
        let token = self.register_io(&mut stdout, IoTarget::Stdout(key), Interest::READABLE)?;
        let inst = &mut self.instances[key];
        let max = if inst.stdin_pipe {
            MAX_LINE
        } else {
            usize::MAX
        };
        inst.stdout = Some(PipeIn {
            rx: stdout,
            token,
            buf: LineBuf::new(max),
        });
        let mut stderr = sp.stderr;
        let token = self.register_io(&mut stderr, IoTarget::Stderr(key), Interest::READABLE)?;
        self.instances[key].stderr = Some(PipeIn {
            rx: stderr,
            token,
            buf: LineBuf::new(usize::MAX),
        });
        if let Some(mut tx) = sp.stdin {
            // WRITABLE interest is added only while output is pending.
            let token = self.register_io(&mut tx, IoTarget::Stdin(key), Interest::READABLE)?;
            self.instances[key].stdin = Some(PipeOut {
                tx,
                token,
                buf: Vec::new(),
                pos: 0,
                want_write: false,
            });
        }
        Ok(())
    }

    /// Reap every exited child (SIGCHLDs merge: loop until nothing is left).
    pub(super) fn reap(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, exit))) => self.on_reaped(pid, exit),
                Ok(None) => break,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    break;
                }
            }
        }
        self.check_groups();
    }

    fn on_reaped(&mut self, pid: u32, exit: Exit) {
        let Some(key) = self.pids.remove(&pid) else {
            log::debug!("reaped orphaned process {pid} ({exit})");
            return;
        };
        self.now = Instant::now();
        // Replies written before death are delivered before anything is redelivered.
        self.drain_worker_output(key);
        self.note_unread_input(key);
        self.close_worker_stdin(key);
        let now = self.now;
        let inst = &mut self.instances[key];
        let ran_for = now.duration_since(inst.started_at);
        let pgid = inst.pgid;
        match inst.life.state {
            State::Running { .. } => {
                let stop_timeout = self.pools[inst.pool].cfg.stop_timeout;
                let stop_signal = self.pools[inst.pool].cfg.stop_signal;
                if sys::group_alive(pgid) {
                    log::warn!(
                        "{}: leader exited but processes remain in its group {pgid}; sending {}",
                        inst.label,
                        stop_signal.name
                    );
                    let _ = signal_group_to_stop(pgid, stop_signal.number);
                    let gen = self.gen();
                    self.lingering.insert(pgid, gen);
                    self.timers
                        .arm(deadline(now, stop_timeout), TimerKey::Group { pgid, gen });
                }
                self.route_instance_down(key);
                self.after_exit(key, Ok(exit), ran_for);
            }
            State::Stopping { .. } => {
                inst.life.last_exit = Some(exit);
                lifecycle!(
                    self,
                    inst,
                    log::Level::Info,
                    "{} stopped ({exit}) after {}",
                    inst.label,
                    fmt_duration(ran_for)
                );
                let killed = inst.killed;
                if let State::Stopping { pid, .. } = &mut inst.life.state {
                    *pid = None;
                }
                self.route_instance_down(key);
                if !killed && sys::group_alive(pgid) {
                    self.awaiting_group.push(key);
                } else {
                    self.mark_stopped(key);
                }
            }
            _ => log::debug!("{}: reaped pid {pid} in unexpected state", inst.label),
        }
    }

    /// Decide and perform what follows an exit (`exit` None: the spawn failed).
    /// `exit` is the exit status, or why the spawn failed. One log line per exit or
    /// failed spawn, saying what happened and what comes next.
    fn after_exit(&mut self, key: usize, exit: Result<Exit, String>, ran_for: Duration) {
        let rand = self.rand01();
        let now = self.now;
        let phase = self.phase;
        let inst = &mut self.instances[key];
        let restarting = wants_restart(
            self.pools[inst.pool].cfg.restart,
            exit.as_ref().ok().copied(),
        );
        inst.first_start =
            inst.first_start
                .exited(exit.as_ref().ok().copied(), ran_for, restarting);
        let (what, exit, level) = match exit {
            Ok(e) => (
                format!("exited with {e} after {}", fmt_duration(ran_for)),
                Some(e),
                log::Level::Warn,
            ),
            Err(why) => (why, None, log::Level::Error),
        };
        if phase != Phase::Running || inst.retiring || inst.held {
            inst.life.last_exit = exit;
            lifecycle!(self, inst, log::Level::Info, "{} {what}", inst.label);
            self.mark_stopped(key);
            return;
        }
        let pool = &self.pools[inst.pool].cfg;
        match inst.life.exited(exit, ran_for, now, pool, rand) {
            AfterExit::Restart { delay, attempt } => {
                lifecycle!(
                    self,
                    inst,
                    level,
                    "{} {what}; restarting in {} (attempt {attempt})",
                    inst.label,
                    fmt_duration(delay)
                );
                let gen = self.gen();
                self.instances[key].gen = gen;
                // Always through the timer, never recursively: a zero delay fires in
                // this same loop turn, after the events at hand.
                self.timers
                    .arm(deadline(now, delay), TimerKey::Instance { key, gen });
            }
            AfterExit::Stay => {
                let level = if exit.is_some_and(Exit::success) {
                    log::Level::Info
                } else {
                    level
                };
                lifecycle!(
                    self,
                    inst,
                    level,
                    "{} {what}; not restarting (restart = {})",
                    inst.label,
                    pool.restart.as_str()
                );
                self.mark_stopped(key);
            }
            AfterExit::GiveUp { cooldown } => {
                let g = pool.give_up.unwrap_or(crate::config::GiveUp {
                    restarts: 0,
                    within: Duration::ZERO,
                    cooldown: None,
                });
                let until = match cooldown {
                    Some(c) => format!("retrying in {}", fmt_duration(c)),
                    None => "until the next reload".to_string(),
                };
                lifecycle!(
                    self,
                    inst,
                    log::Level::Error,
                    "{} {what}; giving up: more than {} restarts within {}; failed, {until}",
                    inst.label,
                    g.restarts,
                    fmt_duration(g.within)
                );
                let gen = self.gen();
                self.instances[key].gen = gen;
                if let Some(c) = cooldown {
                    self.timers
                        .arm(deadline(now, c), TimerKey::Instance { key, gen });
                }
                self.route_instance_gone(key);
            }
        }
        self.route_pool_lost(self.instances[key].pool);
    }

    pub(super) fn on_instance_timer(&mut self, key: usize, gen: u64) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        if inst.gen != gen {
            return;
        }
        match inst.life.state {
            State::Backoff { .. } => {
                if self.phase == Phase::Running {
                    self.start_instance(key);
                }
            }
            State::Failed { .. } => {
                if self.phase == Phase::Running {
                    lifecycle!(
                        self,
                        inst,
                        log::Level::Info,
                        "{}: cooldown over, starting afresh",
                        inst.label
                    );
                    inst.life.reset();
                    self.start_instance(key);
                }
            }
            State::Stopping { pid, pgid, .. } => {
                if sys::group_alive(pgid) {
                    let t = self.pools[inst.pool].cfg.stop_timeout;
                    log::warn!(
                        "{} did not stop within {}; sending KILL to its group",
                        inst.label,
                        fmt_duration(t)
                    );
                    let _ = sys::kill_group(pgid, libc::SIGKILL);
                }
                inst.killed = true;
                if pid.is_none() {
                    self.awaiting_group.retain(|&k| k != key);
                    self.mark_stopped(key);
                }
            }
            State::Running { .. } | State::Stopped => {}
        }
    }

    /// START_GRACE after a spawn: if the instance (whichever now has this key) has
    /// been up that long, its first start succeeded. The loop then checks readiness.
    pub(super) fn on_first_ready_timer(&mut self, key: usize) {
        let now = self.now;
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        if let State::Running { since, .. } = inst.life.state {
            if now.duration_since(since) >= START_GRACE {
                inst.first_start = FirstStart::Ready;
            }
        }
    }

    pub(super) fn on_group_timer(&mut self, pgid: u32, gen: u64) {
        if self.lingering.get(&pgid) != Some(&gen) {
            return;
        }
        self.lingering.remove(&pgid);
        if sys::group_alive(pgid) {
            log::warn!("processes left in group {pgid} did not stop; sending KILL");
            let _ = sys::kill_group(pgid, libc::SIGKILL);
        }
    }

    /// After reaping: forget groups that have emptied.
    fn check_groups(&mut self) {
        self.lingering.retain(|&pgid, _| sys::group_alive(pgid));
        let waiting = std::mem::take(&mut self.awaiting_group);
        for key in waiting {
            let gone = match self.instances.get(key) {
                Some(i) => match i.life.state {
                    State::Stopping { pgid, .. } => !sys::group_alive(pgid),
                    _ => continue,
                },
                None => continue,
            };
            if gone {
                self.mark_stopped(key);
            } else {
                self.awaiting_group.push(key);
            }
        }
    }

    /// Ask an instance to stop: stop_signal to its group now, SIGKILL at stop_timeout.
    pub(super) fn stop_instance(&mut self, key: usize) {
        let now = self.now;
        let gen = self.gen();
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        match inst.life.state {
            State::Running { pid, .. } => {
                let pool = &self.pools[inst.pool].cfg;
                let (sig, timeout) = (pool.stop_signal, pool.stop_timeout);
                inst.gen = gen;
                inst.life.state = State::Stopping {
                    pid: Some(pid),
                    pgid: inst.pgid,
                    since: now,
                    kill_at: deadline(now, timeout),
                };
                lifecycle!(
                    self,
                    inst,
                    log::Level::Info,
                    "stopping {} (pid {pid}) with {}",
                    inst.label,
                    sig.name
                );
                if let Err(e) = signal_group_to_stop(inst.pgid, sig.number) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        log::warn!("{}: cannot signal group {}: {e}", inst.label, inst.pgid);
                    }
                }
                self.timers
                    .arm(deadline(now, timeout), TimerKey::Instance { key, gen });
                self.close_worker_stdin(key);
                self.route_instance_down(key);
            }
            State::Stopping { .. } | State::Stopped => {}
            State::Backoff { .. } | State::Failed { .. } => {
                inst.gen = gen;
                self.mark_stopped(key);
            }
        }
    }

    /// Stop an instance and start it again once it has stopped (a hung worker).
    pub(super) fn restart_instance(&mut self, key: usize) {
        self.stop_instance(key);
    }

    /// After SIGKILL went to every group: stopping instances whose leader is gone are
    /// done; the others finish when their leader is reaped.
    pub(super) fn instances_killed(&mut self) {
        let keys: Vec<usize> = self.instances.iter().map(|(k, _)| k).collect();
        for key in keys {
            let inst = &mut self.instances[key];
            match inst.life.state {
                State::Stopping { pid: None, .. } => {
                    inst.killed = true;
                    self.mark_stopped(key);
                }
                State::Stopping { .. } => inst.killed = true,
                State::Backoff { .. } | State::Failed { .. } => self.mark_stopped(key),
                _ => {}
            }
        }
        self.awaiting_group.clear();
        self.lingering.clear();
    }

    /// The instance has fully stopped. A retiring one is forgotten (and its pool with
    /// it, if the pool was removed and this was its last instance).
    pub(super) fn mark_stopped(&mut self, key: usize) {
        let gen = self.gen();
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        inst.gen = gen;
        inst.life.state = State::Stopped;
        if (inst.timed_out || inst.start_when_stopped)
            && !inst.retiring
            && !inst.held
            && self.phase == Phase::Running
        {
            let label = inst.label.clone();
            if std::mem::take(&mut inst.start_when_stopped) {
                // `orchd ctl start` came while its hold was still stopping it.
                lifecycle!(
                    self,
                    inst,
                    log::Level::Info,
                    "{label} stopped; starting it again (released)"
                );
                self.refresh_spec(key);
            } else {
                // A hung worker was stopped: it comes back at once.
                inst.life.restarts += 1;
                lifecycle!(
                    self,
                    inst,
                    log::Level::Info,
                    "{label} restarting after its timeout"
                );
            }
            self.start_instance(key);
            return;
        }
        self.roll_incoming_stopped(key);
        self.route_instance_gone(key);
        if self.instances[key].retiring {
            self.instance_forget(key);
        }
    }

    fn instance_forget(&mut self, key: usize) {
        let inst = self.instances.remove(key);
        let pool_key = inst.pool;
        self.close_worker_pipes_of(inst);
        let Some(pool) = self.pools.get_mut(pool_key) else {
            return;
        };
        pool.retiring.retain(|&k| k != key);
        pool.slots.retain(|&k| k != key);
        self.roll_forgotten(pool_key, key);
        self.pool_maybe_done(pool_key);
    }

    /// A draining pool whose last instance is gone: answer what still waits for it
    /// (nothing can serve it any more) and, if it was removed, free it.
    pub(super) fn pool_maybe_done(&mut self, pool_key: usize) {
        let Some(pool) = self.pools.get(pool_key) else {
            return;
        };
        let incoming = pool.roll.as_ref().is_some_and(|r| r.has_incoming());
        if !pool.draining() || !pool.retiring.is_empty() || incoming {
            return;
        }
        let why = if pool.removed {
            "pool removed"
        } else {
            "pool has no instances"
        };
        self.route_fail_queue(pool_key, why);
        let pool = &self.pools[pool_key];
        if pool.removed {
            let name = pool.cfg.name.clone();
            self.pools.remove(pool_key);
            if self.pool_names.get(&name) == Some(&pool_key) {
                self.pool_names.remove(&name);
                self.control.logs.forget(&name);
            }
            log::info!("pool {name} removed");
        }
    }

    fn close_worker_pipes_of(&mut self, mut inst: Instance) {
        for p in [inst.stdout.take(), inst.stderr.take()]
            .into_iter()
            .flatten()
        {
            let mut p = p;
            self.deregister_io(&mut p.rx, p.token);
        }
        if let Some(mut p) = inst.stdin.take() {
            self.deregister_io(&mut p.tx, p.token);
        }
    }

    pub(super) fn close_worker_stdin(&mut self, key: usize) {
        if let Some(mut p) = self.instances.get_mut(key).and_then(|i| i.stdin.take()) {
            self.deregister_io(&mut p.tx, p.token);
        }
    }

    /// After death: read what is left in stdout and stderr, then close them. A
    /// grandchild may hold a pipe open; what it writes later is not waited for.
    fn drain_worker_output(&mut self, key: usize) {
        self.on_worker_stdout(key);
        self.on_worker_stderr(key);
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let (out, err) = (inst.stdout.take(), inst.stderr.take());
        if let Some(p) = out {
            self.close_output_pipe(key, p, true);
        }
        if let Some(p) = err {
            self.close_output_pipe(key, p, false);
        }
    }

    /// Close a stdout/stderr pipe: an unterminated last line is logged, except on a
    /// routed stdout where it is a half-written reply and is discarded.
    fn close_output_pipe(&mut self, key: usize, mut pipe: PipeIn, stdout: bool) {
        if let (Some(rest), Some(inst)) = (pipe.buf.take_partial(), self.instances.get(key)) {
            if stdout && inst.stdin_pipe {
                log::warn!(
                    "{}: discarding a half-written reply of {} bytes",
                    inst.label,
                    rest.len()
                );
            } else if let Some(p) = self.pools.get(inst.pool) {
                let stream = if stdout {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                log_output(
                    &mut self.control,
                    &p.cfg.name,
                    inst.index,
                    &inst.label,
                    stream,
                    &rest,
                );
            }
        }
        self.deregister_io(&mut pipe.rx, pipe.token);
    }

    pub(super) fn on_worker_stderr(&mut self, key: usize) {
        let Some(mut pipe) = self.instances.get_mut(key).and_then(|i| i.stderr.take()) else {
            return;
        };
        let inst = &self.instances[key];
        let (label, index) = (inst.label.clone(), inst.index);
        let pool = &self.pools[inst.pool].cfg.name;
        let control = &mut self.control;
        let open = read_lines(&mut pipe, &label, |line| {
            log_output(control, pool, index, &label, Stream::Stderr, line)
        });
        self.put_back_pipe(key, pipe, open, false);
    }

    pub(super) fn on_worker_stdout(&mut self, key: usize) {
        let Some(mut pipe) = self.instances.get_mut(key).and_then(|i| i.stdout.take()) else {
            return;
        };
        let inst = &self.instances[key];
        let label = inst.label.clone();
        let open = if inst.stdin_pipe {
            loop {
                match pipe.buf.fill(&mut pipe.rx) {
                    Ok(Fill::Data(_)) => {
                        while let Some(frame) = pipe.buf.next_frame() {
                            let reply = match frame {
                                Frame::Line(l) => Ok(l),
                                Frame::TooLong => Err("reply too long"),
                            };
                            self.on_worker_reply(key, reply);
                        }
                    }
                    Ok(Fill::Eof) => break false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) => {
                        log::warn!("{label}: reading stdout: {e}");
                        break false;
                    }
                }
            }
        } else {
            let (index, pool) = (inst.index, &self.pools[inst.pool].cfg.name);
            let control = &mut self.control;
            read_lines(&mut pipe, &label, |line| {
                log_output(control, pool, index, &label, Stream::Stdout, line)
            })
        };
        self.put_back_pipe(key, pipe, open, true);
    }

    fn put_back_pipe(&mut self, key: usize, mut pipe: PipeIn, open: bool, stdout: bool) {
        match self.instances.get_mut(key) {
            Some(inst) if open => {
                pipe.buf.shrink();
                if stdout {
                    inst.stdout = Some(pipe);
                } else {
                    inst.stderr = Some(pipe);
                }
            }
            // EOF is not death: the process may live on; waitpid decides that.
            _ => self.close_output_pipe(key, pipe, stdout),
        }
    }

    /// Write queued messages to an instance's stdin; WRITABLE interest only while
    /// something is left.
    pub(super) fn flush_worker_stdin(&mut self, key: usize) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let Some(p) = inst.stdin.as_mut() else {
            return;
        };
        let mut failed = None;
        while p.pos < p.buf.len() {
            match io::Write::write(&mut p.tx, &p.buf[p.pos..]) {
                Ok(0) => break,
                Ok(n) => p.pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if p.pos == p.buf.len() {
            p.buf.clear();
            p.pos = 0;
            if p.buf.capacity() > 1 << 20 {
                p.buf = Vec::new();
            }
        } else if p.pos > (1 << 16) && p.pos * 2 > p.buf.len() {
            p.buf.drain(..p.pos);
            p.pos = 0;
        }
        let want = p.pos < p.buf.len() && failed.is_none();
        let (token, changed) = (p.token, want != p.want_write);
        p.want_write = want;
        if let Some(e) = failed {
            // EPIPE: the worker closed stdin or died; waitpid will tell which, and the
            // in-flight messages are redelivered then.
            if e.kind() != io::ErrorKind::BrokenPipe {
                log::warn!("{}: writing to stdin: {e}", inst.label);
            } else {
                log::debug!("{}: stdin closed by the worker", inst.label);
            }
            self.close_worker_stdin(key);
            return;
        }
        if changed {
            let interest = if want {
                Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Some(p) = self.instances.get_mut(key).and_then(|i| i.stdin.as_mut()) {
                if let Err(e) = self.poll.registry().reregister(&mut p.tx, token, interest) {
                    log::warn!("cannot change interest of {token:?}: {e}");
                }
            }
        }
    }

    pub(super) fn on_worker_stdin_writable(&mut self, key: usize) {
        self.flush_worker_stdin(key);
    }
}

/// Send `stop_signal` to a group, then SIGCONT: a stopped (SIGSTOP, ^Z) process
/// only acts on the stop signal once continued, and would otherwise sit out
/// `stop_timeout` until SIGKILL. A `stop_signal` of STOP itself is left alone.
pub(super) fn signal_group_to_stop(pgid: u32, signal: i32) -> io::Result<()> {
    sys::kill_group(pgid, signal)?;
    if signal != libc::SIGSTOP && signal != libc::SIGCONT {
        sys::kill_group(pgid, libc::SIGCONT)?;
    }
    Ok(())
}

/// `user`/`group` only apply when orchd runs as root: say so rather than ignore them.
pub(super) fn warn_if_ids_ignored(cfg: &Pool) {
    if (cfg.user.is_some() || cfg.group.is_some()) && !sys::is_root() {
        log::warn!(
            "pool {}: user/group ignored: orchd is not running as root",
            cfg.name
        );
    }
}

/// Read a log pipe until it would block; returns whether it is still open.
fn read_lines(pipe: &mut PipeIn, label: &str, mut each: impl FnMut(&[u8])) -> bool {
    loop {
        match pipe.buf.fill(&mut pipe.rx) {
            Ok(Fill::Data(_)) => {
                while let Some(frame) = pipe.buf.next_frame() {
                    if let Frame::Line(l) = frame {
                        each(l);
                    }
                }
                if pipe.buf.partial_len() >= LOG_LINE_MAX {
                    if let Some(piece) = pipe.buf.take_partial() {
                        each(&piece);
                    }
                }
            }
            Ok(Fill::Eof) => return false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                log::warn!("{label}: reading output: {e}");
                return false;
            }
        }
    }
}

/// Log one line of worker output with the instance as target, and keep it in the
/// pool's log buffer.
fn log_output(
    control: &mut Control,
    pool: &str,
    index: u32,
    label: &str,
    stream: Stream,
    line: &[u8],
) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    for piece in log_pieces(line, LOG_LINE_MAX) {
        log::info!(target: label, "{piece}");
        control.record(pool, index, stream, piece.into_owned());
    }
}

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

    fn instance(first_start: FirstStart, held: bool) -> Instance {
        let config = crate::config::parse_bytes(
            std::path::Path::new("t.toml"),
            b"[pool.w]\ncommand = \"true\"\n",
        )
        .expect("valid config");
        Instance {
            pool: 0,
            index: 0,
            label: "w[0]".into(),
            id: 1,
            held,
            start_when_stopped: false,
            life: Lifecycle::default(),
            started_at: Instant::now(),
            pgid: 0,
            gen: 0,
            retiring: false,
            killed: false,
            timed_out: false,
            first_start,
            spawn_error: None,
            spec: Rc::new(config.pools[0].clone()),
            stdin_pipe: false,
            stdout: None,
            stderr: None,
            stdin: None,
            rt: InstanceRt::default(),
        }
    }

    #[test]
    fn a_held_instance_never_keeps_orchd_from_being_ready() {
        // Held by `orchd ctl stop` before its first spawn: not waited for.
        assert!(instance(FirstStart::Pending, true).first_start_settled());
        assert!(!instance(FirstStart::Pending, false).first_start_settled());
        assert_eq!(instance(FirstStart::Pending, true).reason(), Some("held"));
        assert_eq!(instance(FirstStart::Ready, false).reason(), None);
    }
}
