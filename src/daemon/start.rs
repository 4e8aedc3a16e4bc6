//! Start-up: process-wide settings (subreaper, fd limit, malloc), the poll with its
//! signals and waker, then the control socket, listeners, watcher and every pool.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::{Interest, Poll, Waker};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::{control, net, reload, workers};
use super::{Daemon, Options, Phase, SIGNALS, SPAWNS_PER_TURN, WAKER};
use crate::config::Config;
use crate::router::ledger::{Actions, Ledger, Limits};
use crate::timers::Timers;

impl Daemon {
    pub(super) fn new(config: Config, opts: Options) -> io::Result<Daemon> {
        crate::sys::malloc_tuning();
        crate::sys::cloexec_inherited_fds();
        crate::supervisor::spawn::prepare();
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
            workers: workers::Workers::default(),
            lifecycle_actions: Vec::new(),
            net: net::Net::default(),
            ledger: Ledger::new(Limits {
                error_prefix: config.settings.error_prefix.clone(),
                ..Limits::default()
            }),
            ledger_out: Actions::new(),
            health: Default::default(),
            metrics: Default::default(),
            watcher: reload::Watcher::default(),
            control: control::Control::new(config.settings.log_buffer),
            ops: Vec::new(),
            start_queue: VecDeque::new(),
            spawn_budget: SPAWNS_PER_TURN,
            dirty_stdin: VecDeque::new(),
            dirty_clients: VecDeque::new(),
            trims: Default::default(),
            starting_up: true,
            ready_sent: false,
            flush_deadline: None,
            rss_timer: None,
            log_fd: None,
            exit_code: 0,
        };
        d.control_open()?;
        if let Err(e) = d.listeners_open(&config).and_then(|()| d.metrics_open()) {
            // Leave no socket file behind.
            d.router_close();
            d.control_close();
            return Err(e);
        }
        d.watch_start();
        for pool in &config.pools {
            let sup = config.supervision(&pool.name).clone();
            d.pool_add(pool.clone(), config.is_routed(&pool.name), sup);
        }
        d.deps_check();
        d.rss_arm();
        d.router_install(&config);
        d.starting_up = false;
        d.notify_ready_if_started();
        Ok(d)
    }
}
