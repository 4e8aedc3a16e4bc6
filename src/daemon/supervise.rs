//! Pools and instance slots, and the shell around the instance lifecycle.
//!
//! Decisions come from the pure machine in [`crate::supervisor::lifecycle`]: the
//! shell feeds it what happened ([`Daemon::feed`]) and performs the actions it
//! returns ([`Daemon::perform`]), routing them to the process I/O (`workers`), the
//! message router, the rolling replacement and the log. What the worker processes
//! report (exits, emptied groups, replies, output lines) is routed the same way, by
//! the second half of this file. Nothing here decides when an instance restarts,
//! stops or gives up.

use std::io;
use std::rc::Rc;
use std::time::Instant;

use mio::Interest;

use super::control::Control;
use super::logs::Stream;
use super::outbuf::OutBuf;
use super::workers::{self, PipeIn, PipeOut, LOG_LINE_MAX};
use super::{Daemon, IoTarget, Phase, TimerKey};
use crate::config::{Pool, Protocol, Supervision};
use crate::framing::{log_pieces, LineBuf};
use crate::protocol::{self, Stdout, WorkerIo};
use crate::supervisor::lifecycle::{
    Action, Cause, Context, Event, FirstStart, Lifecycle, State, Then,
};
use crate::supervisor::spawn::{self, Credentials};
use crate::sys::{self, Exit};

pub use super::workers::MAX_LINE;

/// A pool as orchd manages it at run time: its config, instance slots, roll, holds.
pub struct ManagedPool {
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
    /// A rolling replacement in progress (reload changed what the process is, or
    /// `orchd ctl restart`).
    pub roll: Option<super::reload::Roll>,
    /// `orchd ctl stop POOL`: instances a later scale-up adds are held too.
    pub held: bool,
    /// Readiness, health, start order, rolling, max_rss (SPEC 10).
    pub sup: Supervision,
    /// Not started yet: waiting for its `depends_on` (the status reason).
    pub waiting: Option<String>,
}

impl ManagedPool {
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
    /// State, restart bookkeeping, first start, leaving (the pure machine).
    pub life: Lifecycle,
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
    /// `max_rss`: its run of checks over the limit.
    pub rss: crate::health::rss::RssWatch,
    /// A `node` worker's IPC channel, read for replies (`stdin` writes to it).
    pub(super) channel: Option<PipeIn>,
}

impl Instance {
    /// The process group to signal, while there may be one.
    pub fn group(&self) -> Option<u32> {
        self.life.group()
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.life.state, State::Stopped)
    }

    /// Leaving: finish in-flight work, stop, then the slot is forgotten.
    pub fn retiring(&self) -> bool {
        self.life.retiring()
    }

    /// Being stopped because a message timed out: what was in flight failed by
    /// timeout, and it starts again once stopped.
    pub fn timed_out(&self) -> bool {
        self.life.timed_out()
    }

    /// Its first start is settled for the ready line: ready, failed or completed,
    /// or stopped by orchd before it was ready (then it counts as neither).
    pub fn first_start_settled(&self) -> bool {
        if self.held {
            // Held by `orchd ctl stop`, perhaps before it ever ran: not waited for.
            return true;
        }
        match self.life.first_start {
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
        self.can_work() && !self.retiring() && !self.held
    }

    /// Running with a stdin: can be written to (a retiring instance still works off
    /// its backlog).
    pub fn can_work(&self) -> bool {
        matches!(self.life.state, State::Running { .. }) && self.stdin.is_some()
    }

    /// Its fds, by its protocol and whether a route targets its pool (SPEC 4, 12).
    pub fn io(&self) -> WorkerIo {
        WorkerIo::of(self.spec.protocol, self.stdin_pipe)
    }

    pub fn protocol(&self) -> Protocol {
        self.spec.protocol
    }

    /// Running with a stdin and, when its pool sets `ready`, ready (SPEC 10).
    pub fn takes_messages(&self) -> bool {
        self.can_work() && self.life.takes_messages()
    }
}

impl Daemon {
    /// Create a pool and start its instances.
    pub(super) fn pool_add(&mut self, cfg: Pool, routed: bool, sup: Supervision) -> usize {
        warn_if_ids_ignored(&cfg);
        let count = cfg.count;
        let name = cfg.name.clone();
        let key = self.pools.insert(ManagedPool {
            spec: Rc::new(cfg.clone()),
            cfg,
            routed,
            slots: Vec::new(),
            retiring: Vec::new(),
            removed: false,
            roll: None,
            held: false,
            // Decided by `deps_check` once every pool is known.
            waiting: (!sup.depends_on.is_empty()).then(|| "waiting".to_string()),
            sup,
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
        if self.pools[pool].waiting.is_some() {
            // Its dependencies are not met yet: `deps_check` starts it.
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
        // A fresh generation: a queued start or a timer of a forgotten instance whose
        // key this one reuses must not match it.
        let gen = self.gen();
        let id = self.gen();
        self.instances.insert(Instance {
            spec,
            pool,
            index,
            label,
            id,
            held: false,
            life: Lifecycle::new(self.now, gen),
            spawn_error: None,
            stdin_pipe,
            stdout: None,
            stderr: None,
            stdin: None,
            rss: Default::default(),
            channel: None,
        })
    }

    /// Start an instance now if this loop turn's spawn budget allows, else queue it
    /// behind the others waiting (see `start_queued`).
    pub(super) fn start_instance(&mut self, key: usize) {
        if self.phase != Phase::Running {
            // Shutting down: nothing new starts.
            self.feed(key, Event::Settle);
            return;
        }
        let Some(inst) = self.instances.get(key).filter(|i| !i.held) else {
            return;
        };
        if self.spawn_budget == 0 || !self.start_queue.is_empty() {
            self.start_queue.push_back((key, inst.life.gen()));
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
                i.life.gen() == gen
                    && !i.held
                    && !matches!(i.life.state, State::Running { .. } | State::Stopping { .. })
            });
            if due {
                self.spawn_budget -= 1;
                self.spawn_instance(key);
            }
        }
    }

    /// Feed one event to an instance's lifecycle and perform what it decides.
    pub(super) fn feed(&mut self, key: usize, event: Event) {
        let gen = self.gen();
        let rand01 = match event {
            // What may end in a restart's backoff delay (a stop for a restart
            // ends at the exit, a group gone or the kill timer).
            Event::Exited { .. }
            | Event::SpawnFailed { .. }
            | Event::GroupGone { .. }
            | Event::Timer { .. }
            | Event::Killed => self.rand01(),
            _ => 0.5,
        };
        let (now, running, await_ready) =
            (self.now, self.phase == Phase::Running, !self.ready_sent);
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let Some(pool) = self.pools.get(inst.pool) else {
            return;
        };
        let cx = Context {
            label: &inst.label,
            pool: &pool.cfg,
            running,
            held: inst.held,
            await_ready,
            ready: pool.sup.ready.as_ref(),
            rand01,
            gen,
        };
        let mut actions = std::mem::take(&mut self.lifecycle_actions);
        inst.life.step(event, now, &cx, &mut actions);
        let (id, pool) = (inst.id, inst.pool);
        // Performing may feed this or another instance again: the buffer is lent out.
        for action in actions.drain(..) {
            self.perform(key, id, pool, action);
        }
        if self.lifecycle_actions.capacity() < actions.capacity() {
            self.lifecycle_actions = actions;
        }
    }

    /// Perform one lifecycle action of instance `key` (`id`, of `pool`). Once the
    /// instance is forgotten, what was left for it is dropped.
    fn perform(&mut self, key: usize, id: u64, pool: usize, action: Action) {
        if action == Action::PoolLost {
            self.route_pool_lost(pool);
            self.deps_changed();
            return;
        }
        if self.instances.get(key).is_none_or(|i| i.id != id) {
            return;
        }
        match action {
            Action::Start { fresh_spec } => {
                if fresh_spec {
                    self.refresh_spec(key);
                }
                self.start_instance(key);
            }
            Action::SignalGroup { pgid, signal } => {
                // A `node` worker is told first by closing its channel (SPEC 12).
                self.close_channel_before_signal(key);
                if let Err(e) = workers::signal_group_to_stop(pgid, signal.number) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        log::warn!(
                            "{}: cannot signal group {pgid}: {e}",
                            self.instances[key].label
                        );
                    }
                }
            }
            Action::Kill { pgid } => {
                let _ = sys::kill_group(pgid, libc::SIGKILL);
            }
            Action::CloseStdin => self.close_worker_stdin(key),
            Action::Arm { at, timer } => self.timers.arm(at, TimerKey::Instance { key, timer }),
            Action::Linger { pgid, kill_at } => {
                let gen = self.gen();
                self.workers.linger(pgid, gen);
                self.timers.arm(kill_at, TimerKey::Group { pgid, gen });
            }
            Action::WatchGroup { pgid } => self.workers.watch_group(key, id, pgid),
            Action::Up => {
                self.roll_started(key);
                self.route_instance_up(key);
                self.health_start(key);
            }
            Action::Down => {
                self.health_stop(key);
                self.route_instance_down(key);
            }
            Action::Ready => self.instance_ready(key),
            Action::Gone => {
                self.roll_incoming_stopped(key);
                self.route_instance_gone(key);
                if self.instances.get(key).is_some_and(Instance::retiring) {
                    self.instance_forget(key);
                }
                self.deps_changed();
            }
            Action::PoolLost => {}
            Action::Log {
                level,
                text,
                record,
            } => {
                log::log!(level, "{text}");
                if record {
                    let inst = &self.instances[key];
                    if let Some(p) = self.pools.get(inst.pool) {
                        self.control
                            .record(&p.cfg.name, inst.index, Stream::Orchd, text);
                    }
                }
            }
        }
    }

    /// A lifecycle timer fired.
    pub(super) fn on_instance_timer(
        &mut self,
        key: usize,
        timer: crate::supervisor::lifecycle::Timer,
    ) {
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        if timer.gen != inst.life.gen() {
            return;
        }
        let group_alive = inst.group().is_some_and(sys::group_alive);
        self.feed(key, Event::Timer { timer, group_alive });
    }

    /// Ask an instance to stop: stop_signal to its group now, SIGKILL at stop_timeout.
    pub(super) fn stop_instance(&mut self, key: usize) {
        self.feed(key, Event::Stop { then: Then::Stay });
    }

    /// Stop an instance and start it again once it has stopped, after the backoff
    /// delay (a hung, unhealthy or oversized worker: counted like a crash).
    pub(super) fn restart_instance(&mut self, key: usize, cause: Cause) {
        self.feed(
            key,
            Event::Stop {
                then: Then::Restart(cause),
            },
        );
    }

    /// After SIGKILL went to every group: stopping instances whose leader is gone are
    /// done; the others finish when their leader is reaped.
    pub(super) fn instances_killed(&mut self) {
        let keys: Vec<usize> = self.instances.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.feed(key, Event::Killed);
        }
        self.workers.forget_groups();
    }

    fn instance_forget(&mut self, key: usize) {
        self.health_stop(key);
        let inst = self.instances.remove(key);
        self.route_instance_forget(key);
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
            // A pool that reuses the key starts its counts from zero.
            self.metrics.counters.remove(pool_key);
            if self.pool_names.get(&name) == Some(&pool_key) {
                self.pool_names.remove(&name);
                self.control.logs.forget(&name);
            }
            log::info!("pool {name} removed");
        }
    }
}

// ----- between the worker processes (the `workers` I/O component) and the rest ----

impl Daemon {
    /// Spawn an instance's process now and report how that went to its lifecycle.
    pub(super) fn spawn_instance(&mut self, key: usize) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let spec = inst.spec.clone();
        let io = inst.io();
        let result = Credentials::resolve(&spec)
            .and_then(|creds| spawn::spawn(&spec, inst.index, io, creds));
        match result {
            Ok(sp) => {
                let pid = sp.pid;
                if let Err(e) = self.attach_pipes(key, sp) {
                    log::error!(
                        "{}: cannot watch the pipes of pid {pid}: {e}; killing it",
                        self.instances[key].label
                    );
                    let _ = sys::kill_group(pid, libc::SIGKILL);
                }
                self.workers.pids.insert(pid, key);
                self.feed(key, Event::Spawned { pid });
            }
            Err(e) => {
                let why = format!(
                    "failed to start {} in {}: {e}",
                    spec.command,
                    spec.cwd.display()
                );
                inst.spawn_error = Some(format!("spawn: {e}"));
                self.feed(key, Event::SpawnFailed { why });
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
        let max = match inst.io().stdout {
            Stdout::Replies => protocol::max_line(inst.protocol()),
            Stdout::Logged => usize::MAX,
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
                out: OutBuf::holding(),
            });
        }
        if let Some(mut rx) = sp.channel {
            let token = self.register_io(&mut rx, IoTarget::Channel(key), Interest::READABLE)?;
            self.instances[key].channel = Some(PipeIn {
                rx,
                token,
                buf: LineBuf::new(protocol::max_line(Protocol::Node)),
            });
        }
        Ok(())
    }

    /// Reap every exited child and tell its instance; then tell stopping instances
    /// whose group has emptied.
    pub(super) fn reap(&mut self) {
        for (key, exit) in self.workers.reap() {
            self.on_reaped(key, exit);
        }
        self.health_reaped();
        for (key, id, pgid) in self.workers.emptied_groups() {
            if self.instances.get(key).is_some_and(|i| i.id == id) {
                // Ignored unless it still waits for that group.
                self.feed(key, Event::GroupGone { pgid });
            }
        }
    }

    fn on_reaped(&mut self, key: usize, exit: Exit) {
        self.now = Instant::now();
        self.metrics_exit(key, exit);
        // Replies written before death are delivered before anything is redelivered.
        self.drain_worker_output(key);
        self.note_unread_input(key);
        self.close_worker_stdin(key);
        let group_alive = self
            .instances
            .get(key)
            .and_then(Instance::group)
            .is_some_and(sys::group_alive);
        self.feed(key, Event::Exited { exit, group_alive });
    }

    /// A group left behind by its leader is past its stop timeout.
    pub(super) fn on_group_timer(&mut self, pgid: u32, gen: u64) {
        self.workers.linger_over(pgid, gen);
    }

    pub(super) fn close_worker_pipes_of(&mut self, mut inst: Instance) {
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
        if let Some(mut p) = inst.channel.take() {
            self.deregister_io(&mut p.rx, p.token);
        }
    }

    pub(super) fn close_worker_stdin(&mut self, key: usize) {
        if let Some(mut p) = self.instances.get_mut(key).and_then(|i| i.stdin.take()) {
            // A socket (a `node` channel) has a second fd, for replies: the worker
            // sees `disconnect` only once this direction is shut down.
            workers::shutdown_write(&p.tx);
            self.deregister_io(&mut p.tx, p.token);
            self.route_instance_changed(key);
        }
    }

    /// After death: read what is left in stdout and stderr, then close them. A
    /// grandchild may hold a pipe open; what it writes later is not waited for.
    fn drain_worker_output(&mut self, key: usize) {
        self.on_worker_stdout(key);
        self.on_worker_channel(key);
        self.close_worker_channel(key);
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
            if stdout && inst.io().stdout == Stdout::Replies {
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
        let now = self.now;
        let inst = &mut self.instances[key];
        let (label, index) = (inst.label.clone(), inst.index);
        let pool = &self.pools[inst.pool].cfg.name;
        let control = &mut self.control;
        let mut ready = None;
        let open = pipe.read_lines(&label, |line| {
            log_output(control, pool, index, &label, Stream::Stderr, line);
            if ready.is_none() && inst.life.wants_lines() {
                ready = inst.life.ready_line(line, now);
            }
        });
        self.put_back_pipe(key, pipe, open, false);
        if let Some(event) = ready {
            self.feed(key, event);
        }
    }

    /// A routed worker's stdout lines are replies; an unrouted one's are logged.
    pub(super) fn on_worker_stdout(&mut self, key: usize) {
        let Some(mut pipe) = self.instances.get_mut(key).and_then(|i| i.stdout.take()) else {
            return;
        };
        let now = self.now;
        let inst = &mut self.instances[key];
        let label = inst.label.clone();
        let mut ready = None;
        let open = if inst.io().stdout == Stdout::Replies {
            let p = inst.protocol();
            pipe.read_replies(&label, |run| self.on_worker_run(key, p, run))
        } else {
            let (index, pool) = (inst.index, &self.pools[inst.pool].cfg.name);
            let control = &mut self.control;
            pipe.read_lines(&label, |line| {
                log_output(control, pool, index, &label, Stream::Stdout, line);
                if ready.is_none() && inst.life.wants_lines() {
                    ready = inst.life.ready_line(line, now);
                }
            })
        };
        self.put_back_pipe(key, pipe, open, true);
        if let Some(event) = ready {
            self.feed(key, event);
        }
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

    /// Write queued messages to an instance's stdin.
    pub(super) fn flush_worker_stdin(&mut self, key: usize) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let Some(p) = inst.stdin.as_mut() else {
            return;
        };
        if !p.flush(self.poll.registry(), &inst.label) {
            self.close_worker_stdin(key);
            return;
        }
        self.trim_note(super::trim::Held::Stdin(key));
    }

    pub(super) fn on_worker_stdin_writable(&mut self, key: usize) {
        self.flush_worker_stdin(key);
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

/// `user`/`group` only apply when orchd runs as root: say so rather than ignore them.
pub(super) fn warn_if_ids_ignored(cfg: &Pool) {
    if (cfg.user.is_some() || cfg.group.is_some()) && !sys::is_root() {
        log::warn!(
            "pool {}: user/group ignored: orchd is not running as root",
            cfg.name
        );
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
            life: {
                let mut life = Lifecycle::new(std::time::Instant::now(), 0);
                life.first_start = first_start;
                life
            },
            spawn_error: None,
            spec: Rc::new(config.pools[0].clone()),
            stdin_pipe: false,
            stdout: None,
            stderr: None,
            stdin: None,
            rss: Default::default(),
            channel: None,
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
