//! The one event loop: a single `mio::Poll` on a single thread drives child pipes,
//! signals, sockets, timers and reloads.
//!
//! Every readiness event maps through its `Token` to the component that owns the fd
//! (an instance's pipe, a listener, a client). Timers live in one heap whose earliest
//! deadline is the poll timeout; with nothing due, poll blocks forever, so an idle
//! orchd makes no system calls at all. Writes are batched: handlers append to output
//! buffers and mark them dirty, and each loop turn flushes every dirty buffer once.
//!
//! The daemon is a thin shell around pure state machines. It owns the poll, the
//! tokens, the timers and the clock; I/O components do the reading and writing and
//! decide nothing; the machines decide and do no I/O; executors carry a machine's
//! actions to the components. Components never call each other.
//!
//! - Machines: [`crate::router::ledger`] (messages), [`crate::supervisor::lifecycle`]
//!   (one instance's life), [`crate::reload::roll`] (rolling replacement) and
//!   [`crate::reload::apply`] (a reload plan as steps).
//! - I/O components: `net` (listeners, client connections, batch stdin/stdout),
//!   `workers` (processes, reaping, process groups, worker pipes and channels),
//!   `control` (the control socket), `outbuf` (the one write buffer all of them
//!   use), `tokens`.
//! - Executors and wiring: `route` (connections to and from the ledger), `exec` (the
//!   ledger's actions; instance events for it), `supervise` (instances: feeds their
//!   lifecycle, performs its actions), `protocols` (worker reply lines decoded by the
//!   pool's protocol, [`crate::protocol`], for the ledger; a `node` worker's IPC
//!   channel), `reload` (watcher, plans, rolls), `ctl` (operations), `start`,
//!   `shutdown`, `ready`, `readiness` (readiness, `depends_on`, `max_rss`: SPEC 10);
//!   `logs` keeps recent output per pool
//!   for `orchd ctl CONFIG logs`.

pub mod client;
mod control;
mod ctl;
mod exec;
mod health;
pub mod logs;
mod metrics;
mod metrics_http;
mod net;
pub mod outbuf;
mod protocols;
mod readiness;
mod ready;
mod reload;
mod route;
mod shutdown;
mod start;
mod supervise;
mod tokens;
mod trim;
mod workers;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::Config;
use crate::router::ledger::{Actions, Ledger};
use crate::timers::Timers;

pub use control::{
    parse_command, parse_signal, parse_target, ControlCommand, Target, DEFAULT_LOG_LINES,
};
pub use ready::notify_systemd;
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
    /// A `node` worker's IPC channel (its replies).
    Channel(usize),
    Listener(usize),
    Client(usize),
    ControlConn(usize),
    MetricsListener,
    MetricsConn(usize),
}

/// What a timer is for. Owners carry a generation number; a timer whose generation is
/// stale was cancelled and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKey {
    /// A timer of an instance's lifecycle (backoff over, stop_timeout hit, cooldown
    /// over, up for START_GRACE); stale unless its generation is the instance's.
    Instance {
        key: usize,
        timer: crate::supervisor::lifecycle::Timer,
    },
    /// The message ledger's timers (message timeouts, queue expiry).
    Ledger(crate::router::ledger::Timer),
    /// Leftover processes of a worker's group get SIGKILL.
    Group { pgid: u32, gen: u64 },
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
    /// Time to check RSS against `max_rss` (only while some pool sets it).
    Rss { gen: u64 },
    /// An instance's health probe is due or past its timeout (`id`: the instance's).
    Health { key: usize, id: u64 },
    /// A metrics connection's time is up.
    MetricsConn { conn: usize, id: u64 },
    /// Output buffers emptied a while ago may give their capacity back (`trim.rs`).
    Trim,
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
    pools: Slab<supervise::ManagedPool>,
    pool_names: HashMap<String, usize>,
    instances: Slab<Instance>,
    /// Worker processes: pids, groups outliving their leader.
    workers: workers::Workers,
    /// Lifecycle actions being performed (a buffer kept between uses).
    lifecycle_actions: Vec<crate::supervisor::lifecycle::Action>,
    /// Listeners and client connections.
    net: net::Net,
    /// Messages: queues, in flight, replies (pure; see `exec.rs` for its actions).
    ledger: Ledger,
    /// The ledger's pending actions (reused between events).
    ledger_out: Actions,
    /// Health probes of running instances.
    health: health::HealthProbes,
    /// The metrics listener and what only metrics count.
    metrics: metrics::MetricsState,
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
    /// Emptied output buffers that still hold capacity.
    trims: trim::Trims,
    /// Still setting up: READY=1 waits until every pool has been added.
    starting_up: bool,
    /// Set once every instance's first start is settled: READY=1 was sent.
    ready_sent: bool,
    /// Shutdown: when to stop waiting for clients to take their last replies.
    flush_deadline: Option<Instant>,
    /// The generation of the armed RSS check timer (None: not armed).
    rss_timer: Option<u64>,
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
                    IoTarget::Channel(k) => self.on_worker_channel(k),
                    IoTarget::Listener(l) => self.on_listener(l),
                    IoTarget::Client(c) => self.on_client(c, event),
                    IoTarget::ControlConn(c) => self.on_control_conn(c, event),
                    IoTarget::MetricsListener => self.on_metrics_listener(),
                    IoTarget::MetricsConn(c) => self.on_metrics_conn(c),
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

    fn fire_timers(&mut self) {
        let now = Instant::now();
        self.now = now;
        for _ in 0..TIMERS_PER_TURN {
            let Some(key) = self.timers.pop_due(now) else {
                break;
            };
            match key {
                TimerKey::Instance { key, timer } => self.on_instance_timer(key, timer),
                TimerKey::Ledger(t) => self.on_ledger_timer(t),
                TimerKey::Group { pgid, gen } => self.on_group_timer(pgid, gen),
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
                TimerKey::Rss { gen } => self.on_rss_timer(gen),
                TimerKey::Health { key, id } => self.on_health_timer(key, id),
                TimerKey::MetricsConn { conn, id } => self.on_metrics_timer(conn, id),
                TimerKey::Trim => self.on_trim_timer(),
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
}
