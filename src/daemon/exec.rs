//! The shell around the message ledger: it tells the ledger what happened to
//! instances and pools (with the instance's current [`InstanceView`]) and executes
//! the ledger's [`Action`]s. The ledger never calls anything; everything it wants
//! done comes through here.

use crate::router::ledger::{Action, InstanceView, PoolSettings, Timer};
use crate::supervisor::lifecycle::{Cause, State};

use super::{Daemon, Instance, TimerKey};

impl Daemon {
    /// Execute what the ledger asked for. Bytes, timers and resumed clients first, in
    /// the order the ledger produced them; then the instances to stop or restart
    /// (which report back to the ledger and execute their own actions): replies the
    /// ledger produced earlier are queued before any it produces in reaction.
    pub(super) fn ledger_exec(&mut self) {
        if self.ledger_out.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.ledger_out);
        let mut later = Vec::new();
        let mut probe_replies = Vec::new();
        for a in out.list.drain(..) {
            match a {
                Action::ToWorker { instance, bytes } => {
                    self.worker_send(instance, &out.bytes[bytes])
                }
                Action::ToClient { client, bytes } => self.client_send(client, &out.bytes[bytes]),
                Action::Arm { at, timer } => self.timers.arm(at, TimerKey::Ledger(timer)),
                Action::Resume { client } => self.schedule_pump(client),
                Action::ProbeReached { instance } => self.on_probe_reached(instance),
                Action::ProbeReply { instance, line } => {
                    // Kept past the buffer's clearing: a failed probe may restart.
                    let line = line.map(|r| out.bytes[r].to_vec());
                    probe_replies.push((instance, line));
                }
                Action::Restart { .. } | Action::Drained { .. } => later.push(a),
            }
        }
        out.clear();
        if out.bytes.capacity() <= 1 << 20 && self.ledger_out.is_empty() {
            // Keep the buffers for the next event.
            self.ledger_out = out;
        }
        for (instance, line) in probe_replies {
            self.on_probe_reply(instance, line.as_deref());
        }
        for a in later {
            match a {
                Action::Restart { instance } => {
                    // Stopped, then started again at once; what it had in flight
                    // failed by timeout.
                    self.metrics_cause(instance, "timeout");
                    self.restart_instance(instance, Cause::Timeout);
                }
                Action::Drained { instance } => self.stop_instance(instance),
                _ => {}
            }
        }
    }

    /// Append messages to an instance's stdin (a ledger action).
    fn worker_send(&mut self, k: usize, bytes: &[u8]) {
        let Some(stdin) = self.instances.get_mut(k).and_then(|i| i.stdin.as_mut()) else {
            // Its stdin closed since the ledger last heard: the messages stay in flight
            // and are delivered again when the instance is reported down.
            log::debug!("instance {k}: stdin closed; {} byte(s) held", bytes.len());
            return;
        };
        if stdin.out.is_empty() {
            self.dirty_stdin.push_back(k);
        }
        stdin.out.push(bytes);
    }

    /// What the ledger needs to know of an instance now.
    fn ledger_view(&self, k: usize) -> Option<InstanceView> {
        let i = self.instances.get(k)?;
        let leaving = i.retiring() || i.held;
        Some(InstanceView {
            running: matches!(i.life.state, State::Running { .. }),
            writable: i.takes_messages(),
            has_input: i.can_work(),
            leaving,
            coming_back: !leaving
                && matches!(i.life.state, State::Backoff { .. } | State::Running { .. }),
        })
    }

    /// Bring the ledger's picture of an instance (and its pool) up to date.
    pub(super) fn ledger_sync(&mut self, k: usize) {
        let Some(view) = self.ledger_view(k) else {
            return;
        };
        let i = &self.instances[k];
        let pool = i.pool;
        self.ledger_sync_pool(pool);
        let i = &self.instances[k];
        self.ledger.instance_view(k, pool, i.index, &i.label, view);
        self.ledger.instance_protocol(k, i.protocol());
    }

    /// Bring the ledger's picture of a pool (settings, members) up to date.
    pub(super) fn ledger_sync_pool(&mut self, pool: usize) {
        let Some(p) = self.pools.get(pool) else {
            self.ledger.pool_forget(pool);
            return;
        };
        if !p.removed && self.ledger.pool_is_removed(pool) {
            // The key of a removed pool, reused by a new one.
            self.ledger.pool_forget(pool);
        }
        let settings = self.ledger.pool_settings(pool);
        if settings.is_none_or(|s| {
            s.max_inflight != p.cfg.max_inflight || s.queue != p.cfg.queue || s.name != p.cfg.name
        }) {
            self.ledger.pool_set(
                pool,
                PoolSettings {
                    name: p.cfg.name.clone(),
                    max_inflight: p.cfg.max_inflight,
                    queue: p.cfg.queue,
                },
            );
        }
        self.ledger.pool_members(pool, &p.slots, &p.retiring);
        if p.removed {
            self.ledger.pool_removed(pool);
        }
    }

    // ----- what happens to instances and pools, told to the ledger -----------------

    pub(super) fn route_instance_up(&mut self, k: usize) {
        self.ledger_sync(k);
        self.ledger.instance_up(k, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// The instance's process died or is being stopped: what it had in flight is
    /// delivered again (answered replies were read first), its backlog goes elsewhere.
    pub(super) fn route_instance_down(&mut self, k: usize) {
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        if let Some(p) = inst.stdin.as_mut() {
            p.out.discard();
        }
        let timed_out = inst.timed_out();
        self.ledger_sync(k);
        self.ledger
            .instance_down(k, timed_out, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// The instance stopped for good (or gave up): nothing may wait for it.
    pub(super) fn route_instance_gone(&mut self, k: usize) {
        let Some(timed_out) = self.instances.get(k).map(Instance::timed_out) else {
            return;
        };
        self.ledger_sync(k);
        self.ledger
            .instance_gone(k, timed_out, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// The instance's stdin closed (the worker closed it, or it is stopping): it
    /// takes no more messages.
    pub(super) fn route_instance_changed(&mut self, k: usize) {
        self.ledger_sync(k);
    }

    /// The instance is forgotten.
    pub(super) fn route_instance_forget(&mut self, k: usize) {
        self.ledger.instance_forget(k);
    }

    /// An instance of `pool` is not live (any more): recompute whether the pool has
    /// live instances, unless it is already known to have none.
    pub(super) fn route_pool_lost(&mut self, pool: usize) {
        self.ledger_sync_pool(pool);
        self.ledger
            .pool_liveness(pool, true, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// An instance started retiring (or was held): it counts as gone for new work.
    pub(super) fn route_retiring(&mut self, k: usize) {
        self.ledger_sync(k);
        self.ledger
            .instance_retiring(k, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// A retiring or held instance with nothing left is stopped.
    pub(super) fn instance_maybe_drained(&mut self, k: usize) {
        self.ledger_sync(k);
        self.ledger.instance_check_drained(k, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// The worker died: remember how many bytes written for it it never read.
    pub(super) fn note_unread_input(&mut self, k: usize) {
        let Some(inst) = self.instances.get(k) else {
            return;
        };
        let unread = match inst.stdin.as_ref() {
            // What the peer of a socket has not read is not known here: then every
            // message in flight is taken as read (the oldest is charged).
            Some(_) if inst.protocol() == crate::config::Protocol::Node => 0,
            Some(p) => {
                let in_pipe =
                    crate::sys::readable_bytes(std::os::fd::AsRawFd::as_raw_fd(&p.tx)).unwrap_or(0);
                p.out.pending() + in_pipe
            }
            None => 0,
        };
        self.ledger.instance_unread(k, unread);
    }

    /// Pool settings changed in place: more room may let waiting work go.
    pub(super) fn pool_refresh(&mut self, pool: usize) {
        self.ledger_sync_pool(pool);
        self.ledger
            .pool_refresh(pool, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// Answer every message waiting in a pool's queue with an error (the pool can no
    /// longer serve them), and let clients stalled on it go on under the current rules.
    pub(super) fn route_fail_queue(&mut self, pool: usize, why: &str) {
        self.ledger_sync_pool(pool);
        self.ledger.pool_fail_queue(pool, why, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// One reply of a routed instance (a decoded `node` reply), or an error in its
    /// place: the answer to its oldest message.
    pub(super) fn on_worker_reply(&mut self, k: usize, reply: Result<&[u8], &str>) {
        if let (Some(since), Ok(_)) = (self.ledger.reply_clock(k), &reply) {
            self.metrics_answered(k, self.now.saturating_duration_since(since), 1);
        }
        self.ledger
            .worker_reply(k, reply, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// Complete stdout lines of a `lines` instance (each with its `\n`), or a reply
    /// too long: the answers to its oldest messages, handed to the ledger at once.
    /// Replies read together share their time evenly in the latency histogram.
    pub(super) fn on_worker_replies(&mut self, k: usize, replies: Result<&[u8], &str>) {
        let out = &mut self.ledger_out;
        match replies {
            Ok(lines) => {
                // Probe replies among them are not answers: count what the ledger
                // counted as answered.
                let since = self.ledger.reply_clock(k).unwrap_or(self.now);
                let before = self.ledger.instance_counts(k).1;
                self.ledger.worker_output(k, lines, self.now, out);
                let n = self.ledger.instance_counts(k).1.saturating_sub(before) as usize;
                if n > 0 {
                    let each = self.now.saturating_duration_since(since) / n as u32;
                    self.metrics_answered(k, each, n);
                }
            }
            Err(why) => self.ledger.worker_reply(k, Err(why), self.now, out),
        }
        self.ledger_exec();
    }

    pub(super) fn on_ledger_timer(&mut self, timer: Timer) {
        self.ledger.timer(timer, self.now, &mut self.ledger_out);
        self.ledger_exec();
    }

    /// Counters for status: (in flight, answered) of an instance.
    pub(super) fn instance_counts(&self, k: usize) -> (usize, u64) {
        self.ledger.instance_counts(k)
    }

    /// Messages waiting in a pool (queue and backlogs), for status.
    pub(super) fn pool_queued(&self, pool: usize) -> usize {
        self.ledger.pool_waiting(pool)
    }
}
