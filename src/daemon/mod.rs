//! The one event loop: a single `mio::Poll` on a single thread drives child pipes,
//! signals, sockets, timers and reloads.
//!
//! Every readiness event maps through its `Token` to the component that owns the fd
//! (an instance's pipe, a listener, a client). Timers live in one heap whose earliest
//! deadline is the poll timeout; with nothing due, poll blocks forever, so an idle
//! orchd makes no system calls at all. Writes are batched: handlers append to output
//! buffers and mark them dirty, and each loop turn flushes every dirty buffer once.
//!
//! Submodules add methods to [`Daemon`]: `supervise` (processes), `route` (messages),
//! `reload` (config changes), `control` (control socket), `ctl` (its operations);
//! `logs` keeps recent output per pool for `orchd ctl CONFIG logs`.

pub mod client;
mod control;
mod ctl;
pub mod logs;
pub mod outbuf;
mod ready;
mod reload;
mod route;
mod supervise;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::Config;
use crate::supervisor::lifecycle::FirstStart;
use crate::timers::{deadline, Timers};

pub use control::{
    parse_command, parse_signal, parse_target, ControlCommand, Target, DEFAULT_LOG_LINES,
};
pub use ready::notify_systemd;
use ready::ReadyCounts;
pub use supervise::Instance;

const SIGNALS: Token = Token(0);
const WAKER: Token = Token(1);
const CONTROL: Token = Token(2);
/// orchd's stderr, polled for WRITABLE only while log output is waiting.
const LOG: Token = Token(3);
/// Tokens below this are fixed singletons; the rest index `Daemon::io`.
const FIRST_IO: usize = 16;
/// At the end of shutdown, how long replies may take to reach slow clients.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// Spawns per loop turn (a spawn costs about a millisecond): a pool of thousands
/// starts, or restarts, over many turns, and signals, clients and shutdown are
/// served in between. More due than this: the next poll does not wait.
const SPAWNS_PER_TURN: usize = 64;
/// Timers handled per loop turn, for the same reason.
const TIMERS_PER_TURN: usize = 256;

/// Command-line choices that the config file does not carry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--no-watch`: do not reload on file changes even if `watch = true`.
    pub no_watch: bool,
    /// orchd was started with stdout closed (Rust's start-up code then puts
    /// `/dev/null` there): batch replies would have nowhere to go, so a
    /// `from = "stdin"` route cannot start.
    pub stdout_closed: bool,
}

/// What an I/O token refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoTarget {
    Stdout(usize),
    Stderr(usize),
    Stdin(usize),
    Listener(usize),
    Client(usize),
    ControlConn(usize),
}

/// What a timer is for. Owners carry a generation number; a timer whose generation is
/// stale was cancelled and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKey {
    /// The instance's lifecycle deadline (backoff over, stop_timeout hit, cooldown over).
    Instance { key: usize, gen: u64 },
    /// The earliest message deadline (`timeout`) among an instance's in-flight messages.
    Inflight { key: usize, gen: u64 },
    /// Leftover processes of a worker's group get SIGKILL.
    Group { pgid: u32, gen: u64 },
    /// Messages waiting for a pool without instances may expire.
    PoolQueue { pool: usize, gen: u64 },
    /// `drain_timeout` at shutdown is over.
    DrainOver,
    /// The file watcher's burst of events has settled.
    Debounce { gen: u64 },
    /// Accepting failed for lack of fds; try again.
    Accept { listener: usize, gen: u64 },
    /// A half-closed client has not closed its side in time.
    Linger { client: usize, id: u64 },
    /// A rolling replacement has stayed up long enough to take its slot.
    Promote { key: usize, gen: u64 },
    /// An instance spawned before the ready line may have been up for START_GRACE.
    FirstReady { key: usize },
}

/// Where shutdown stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// No new messages are read; in-flight ones may finish until the drain timeout.
    Draining,
    /// Every instance has been asked to stop; `forced` after a second signal.
    Stopping {
        forced: bool,
    },
}

pub struct Daemon {
    poll: Poll,
    signals: Signals,
    waker: Arc<Waker>,
    config: Config,
    opts: Options,
    now: Instant,
    phase: Phase,
    io: Slab<IoTarget>,
    timers: Timers<TimerKey>,
    /// Monotonic source of generation numbers (never reused, unlike slab keys).
    next_gen: u64,
    rng: u64,
    pools: Slab<supervise::PoolRt>,
    pool_names: HashMap<String, usize>,
    instances: Slab<Instance>,
    /// Leader pid → instance key, for reaping.
    pids: HashMap<u32, usize>,
    /// Process groups left behind by a leader that exited: pgid → generation.
    lingering: HashMap<u32, u64>,
    /// Instances stopping whose leader is gone but whose group may not be.
    awaiting_group: Vec<usize>,
    router: route::Router,
    watcher: reload::Watcher,
    control: control::Control,
    /// `orchd ctl restart` and `stop` commands waiting to be answered.
    ops: Vec<ctl::PendingOp>,
    /// Instances due to start beyond this turn's spawn budget, in order, each with
    /// its generation at the time (a stale one was stopped or forgotten meanwhile).
    start_queue: VecDeque<(usize, u64)>,
    /// Spawns left in this loop turn.
    spawn_budget: usize,
    /// Instance stdins and clients with queued output, flushed once per loop turn.
    dirty_stdin: VecDeque<usize>,
    dirty_clients: VecDeque<usize>,
    /// Still setting up: READY=1 waits until every pool has been added.
    starting_up: bool,
    /// Set once every instance's first start is settled: READY=1 was sent.
    ready_sent: bool,
    /// Shutdown: when to stop waiting for clients to take their last replies.
    flush_deadline: Option<Instant>,
    /// The stderr fd registered for WRITABLE while log output waits for room.
    log_fd: Option<i32>,
    exit_code: i32,
}

/// Start everything `config` describes and run until shutdown. Returns the exit code.
pub fn run(config: Config, opts: Options) -> i32 {
    match Daemon::new(config, opts) {
        Ok(mut d) => {
            let code = match d.run() {
                Ok(()) => d.exit_code,
                Err(e) => {
                    log::error!("event loop failed: {e}");
                    d.emergency_stop();
                    1
                }
            };
            d.finish();
            // finish() may still fail (the last batch replies could not be written).
            code.max(d.exit_code)
        }
        Err(e) => {
            log::error!("cannot start: {e}");
            1
        }
    }
}

impl Daemon {
    fn new(config: Config, opts: Options) -> io::Result<Daemon> {
        crate::sys::malloc_tuning();
        crate::sys::cloexec_inherited_fds();
        if let Err(e) = crate::sys::become_subreaper() {
            log::warn!("cannot become a child subreaper ({e}); orphaned grandchildren go to init");
        }
        match crate::sys::raise_nofile_limit() {
            Ok(n) => log::debug!("open file limit {n}"),
            Err(e) => log::warn!("cannot raise the open file limit: {e}"),
        }
        let poll = Poll::new()?;
        // Signals first: no child may exit before SIGCHLD is being watched.
        let mut signals = Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let now = Instant::now();
        // Jitter only needs instances not to restart in lockstep.
        let seed = (u64::from(std::process::id()) << 32)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let mut d = Daemon {
            poll,
            signals,
            waker,
            config: config.clone(),
            opts,
            now,
            phase: Phase::Running,
            io: Slab::new(),
            timers: Timers::new(),
            next_gen: 0,
            rng: seed | 1,
            pools: Slab::new(),
            pool_names: HashMap::new(),
            instances: Slab::new(),
            pids: HashMap::new(),
            lingering: HashMap::new(),
            awaiting_group: Vec::new(),
            router: route::Router::default(),
            watcher: reload::Watcher::default(),
            control: control::Control::new(config.settings.log_buffer),
            ops: Vec::new(),
            start_queue: VecDeque::new(),
            spawn_budget: SPAWNS_PER_TURN,
            dirty_stdin: VecDeque::new(),
            dirty_clients: VecDeque::new(),
            starting_up: true,
            ready_sent: false,
            flush_deadline: None,
            log_fd: None,
            exit_code: 0,
        };
        d.control_open()?;
        if let Err(e) = d.listeners_open(&config) {
            // Leave no socket file behind.
            d.router_close();
            d.control_close();
            return Err(e);
        }
        d.watch_start();
        for pool in &config.pools {
            d.pool_add(pool.clone(), config.is_routed(&pool.name));
        }
        d.router_install(&config);
        d.starting_up = false;
        d.notify_ready_if_started();
        Ok(d)
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.flush_dirty();
            if self.finished() {
                return Ok(());
            }
            self.flush_log();
            // A timer already due or starts left over: look at events and come back.
            let timeout = if self.start_queue.is_empty() {
                self.timers
                    .next_deadline()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            self.spawn_budget = SPAWNS_PER_TURN;
            for event in events.iter() {
                self.dispatch(event);
            }
            self.fire_timers();
            self.start_queued();
            self.notify_ready_if_started();
            self.ops_check();
        }
    }

    fn dispatch(&mut self, event: &mio::event::Event) {
        match event.token() {
            SIGNALS => self.on_signals(),
            WAKER => self.on_wake(),
            CONTROL => self.control_accept(),
            // Stderr has room: the next turn's flush_log writes.
            LOG => {}
            Token(t) if t >= FIRST_IO => {
                // A token freed earlier in this batch has no entry (or a new owner,
                // which then sees a spurious readiness and reads WouldBlock).
                let Some(&target) = self.io.get(t - FIRST_IO) else {
                    return;
                };
                match target {
                    IoTarget::Stdout(k) => self.on_worker_stdout(k),
                    IoTarget::Stderr(k) => self.on_worker_stderr(k),
                    IoTarget::Stdin(k) => self.on_worker_stdin_writable(k),
                    IoTarget::Listener(l) => self.on_listener(l),
                    IoTarget::Client(c) => self.on_client(c, event),
                    IoTarget::ControlConn(c) => self.on_control_conn(c, event),
                }
            }
            Token(_) => {}
        }
    }

    fn on_signals(&mut self) {
        let mut got = [false; 4];
        for sig in self.signals.pending() {
            match sig {
                SIGCHLD => got[0] = true,
                SIGTERM | SIGINT => got[1] = true,
                SIGHUP => got[2] = true,
                _ => {}
            }
        }
        if got[0] {
            self.reap();
        }
        if got[2] {
            log::info!("SIGHUP: reloading {}", self.config.path.display());
            let _ = self.reload_from_disk("SIGHUP");
        }
        if got[1] {
            self.shutdown_requested();
        }
    }

    fn shutdown_requested(&mut self) {
        match self.phase {
            Phase::Running => {
                log::info!("shutting down");
                notify_systemd("STOPPING=1");
                self.phase = Phase::Draining;
                // Nothing new starts: queued starts are dropped (their instances stay
                // in backoff or stopped, and stop_everything settles them).
                self.start_queue.clear();
                self.router_stop_reading();
                if self.router_idle() {
                    self.stop_everything();
                } else {
                    let at = deadline(self.now, self.config.settings.drain_timeout);
                    log::info!(
                        "waiting up to {} for in-flight messages",
                        humantime::format_duration(self.config.settings.drain_timeout)
                    );
                    self.timers.arm(at, TimerKey::DrainOver);
                }
            }
            Phase::Draining => {
                log::warn!("second signal: stopping at once");
                self.stop_everything();
                self.kill_everything();
            }
            Phase::Stopping { forced: false } => {
                log::warn!("second signal: killing every worker now");
                self.kill_everything();
            }
            Phase::Stopping { forced: true } => {}
        }
    }

    /// Drain time is over (or nothing was in flight): answer what is left with an
    /// error and stop every instance.
    fn stop_everything(&mut self) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        self.phase = Phase::Stopping { forced: false };
        self.router_fail_all("shutting down");
        let keys: Vec<usize> = self.instances.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.stop_instance(k);
        }
    }

    fn kill_everything(&mut self) {
        self.phase = Phase::Stopping { forced: true };
        let groups: Vec<u32> = self
            .instances
            .iter()
            .filter_map(|(_, i)| i.group())
            .chain(self.lingering.keys().copied())
            .collect();
        for pgid in groups {
            let _ = crate::sys::kill_group(pgid, libc::SIGKILL);
        }
        self.instances_killed();
    }

    /// Shutdown is complete when nothing runs any more and every client has its
    /// replies (waiting at most [`FINAL_FLUSH`] for slow readers).
    fn finished(&mut self) -> bool {
        if !matches!(self.phase, Phase::Stopping { .. })
            || !self.lingering.is_empty()
            || !self.instances.iter().all(|(_, i)| i.is_stopped())
        {
            return false;
        }
        if self.router_flushed() {
            return true;
        }
        match self.flush_deadline {
            Some(at) => Instant::now() >= at,
            None => {
                let at = self.now + FINAL_FLUSH;
                self.flush_deadline = Some(at);
                self.timers.arm(at, TimerKey::DrainOver);
                false
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        self.now = now;
        for _ in 0..TIMERS_PER_TURN {
            let Some(key) = self.timers.pop_due(now) else {
                break;
            };
            match key {
                TimerKey::Instance { key, gen } => self.on_instance_timer(key, gen),
                TimerKey::Inflight { key, gen } => self.on_inflight_timer(key, gen),
                TimerKey::Group { pgid, gen } => self.on_group_timer(pgid, gen),
                TimerKey::PoolQueue { pool, gen } => self.on_pool_queue_timer(pool, gen),
                TimerKey::DrainOver => {
                    if self.phase == Phase::Draining {
                        log::warn!("drain timeout over; answering what is left with errors");
                        self.stop_everything();
                    }
                }
                TimerKey::Debounce { gen } => self.on_debounce(gen),
                TimerKey::Accept { listener, gen } => self.on_accept_timer(listener, gen),
                TimerKey::Linger { client, id } => self.on_linger_timer(client, id),
                TimerKey::Promote { key, gen } => self.on_promote_timer(key, gen),
                TimerKey::FirstReady { key } => self.on_first_ready_timer(key),
            }
        }
    }

    fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// A uniform random number in [0, 1) (xorshift64*; jitter needs no more).
    fn rand01(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn register_io<S: mio::event::Source + ?Sized>(
        &mut self,
        source: &mut S,
        target: IoTarget,
        interest: Interest,
    ) -> io::Result<Token> {
        let entry = self.io.vacant_entry();
        let token = Token(entry.key() + FIRST_IO);
        self.poll.registry().register(source, token, interest)?;
        entry.insert(target);
        Ok(token)
    }

    fn deregister_io<S: mio::event::Source + ?Sized>(&mut self, source: &mut S, token: Token) {
        if let Err(e) = self.poll.registry().deregister(source) {
            log::debug!("deregister {token:?}: {e}");
        }
        if token.0 >= FIRST_IO && self.io.contains(token.0 - FIRST_IO) {
            self.io.remove(token.0 - FIRST_IO);
        }
    }

    /// Write what stderr takes of the log backlog; poll it for WRITABLE only while
    /// some is left (logging never blocks the loop, see `logging`). Must not log.
    fn flush_log(&mut self) {
        let want = crate::logging::flush();
        if want == self.log_fd {
            return;
        }
        if let Some(fd) = self.log_fd.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        if let Some(fd) = want {
            let registered =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&fd), LOG, Interest::WRITABLE);
            // Not pollable (should not happen for the fds `logging` returns): the
            // backlog is then written whenever something else wakes the loop.
            if registered.is_ok() {
                self.log_fd = Some(fd);
            }
        }
    }

    /// Resume clients that may read again, then write every dirty buffer once.
    fn flush_dirty(&mut self) {
        loop {
            let pumped = self.router_pump();
            while let Some(k) = self.dirty_stdin.pop_front() {
                self.flush_worker_stdin(k);
            }
            while let Some(c) = self.dirty_clients.pop_front() {
                self.flush_client(c);
            }
            self.control_flush_followers();
            if !pumped {
                break;
            }
        }
        if self.phase == Phase::Draining && self.router_idle() {
            self.stop_everything();
        }
    }

    /// READY=1 and the ready line, once every instance is ready or has failed its
    /// first start (SPEC 7): a worker that cannot start does not keep orchd from
    /// being ready, but it is counted.
    fn notify_ready_if_started(&mut self) {
        if self.ready_sent || self.starting_up || self.phase != Phase::Running {
            return;
        }
        if !self.instances.iter().all(|(_, i)| i.first_start_settled()) {
            return;
        }
        let mut counts = ReadyCounts {
            pools: self.pools.len(),
            ..ReadyCounts::default()
        };
        for (_, i) in self.instances.iter() {
            match i.first_start {
                FirstStart::Ready => counts.ready += 1,
                FirstStart::Failed => counts.failed += 1,
                FirstStart::Completed => counts.completed += 1,
                FirstStart::Pending | FirstStart::Started => {}
            }
        }
        self.ready_sent = true;
        notify_systemd("READY=1");
        if counts.failed > 0 {
            log::warn!("{counts}");
        } else {
            log::info!("{counts}");
        }
    }

    /// After an error in the loop itself: kill everything we started.
    fn emergency_stop(&mut self) {
        self.kill_everything();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.pids.is_empty() {
            self.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Last words: remove the control socket, kill and reap anything still parented to
    /// us (descendants that escaped their group with setsid), restore stdin.
    fn finish(&mut self) {
        self.control_close();
        self.router_close();
        let stray = crate::sys::children_of_self();
        for pid in &stray {
            log::warn!("killing stray process {pid} left behind by a worker");
            let _ = crate::sys::kill_pid(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match crate::sys::reap_one() {
                Ok(Some(_)) => continue,
                Ok(None) if !stray.is_empty() && Instant::now() < deadline => {
                    if crate::sys::children_of_self().is_empty() {
                        let _ = crate::sys::reap_one();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => break,
            }
        }
        log::info!("exiting with status {}", self.exit_code);
    }
}
