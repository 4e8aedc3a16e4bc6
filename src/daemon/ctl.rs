//! The operations of `orchd ctl` (SPEC 9) on the daemon side: `restart`, `stop`,
//! `start` and `signal` on TARGETs (`POOL` or `POOL/INDEX`).
//!
//! `restart` and `stop` are answered once done. The loop never waits for that: the
//! command becomes a [`PendingOp`] and the connection is busy (reads no further
//! command) until [`Daemon::ops_check`], run at the end of every loop turn while
//! some op is pending, finds it finished and sends the reply.
//!
//! Holds: `stop` marks instances (and, for a whole pool, the pool) `held`. A held
//! instance takes no new messages, works off what it has, stops, and is not started
//! again by its restart policy, a reload, a roll or a scale-up until `start`. Holds
//! live in memory only: a new orchd starts everything.

use serde_json::{json, Value};

use super::control::Target;
use super::reload::Roll;
use super::Daemon;
use crate::reload::roll::Event as RollEvent;
use crate::supervisor::lifecycle::State;
use crate::sys;

/// A `restart` or `stop` waiting to be answered.
pub(super) struct PendingOp {
    conn: usize,
    conn_id: u64,
    kind: OpKind,
    targets: Vec<OpTarget>,
    /// Why it failed, once known (a replacement that did not come up).
    failed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Restart,
    Stop,
}

/// One instance an op acts on, followed by its unique id.
struct OpTarget {
    key: usize,
    id: u64,
    pool: usize,
    index: u32,
    label: String,
}

/// An instance named by the TARGETs.
struct Resolved {
    pool: usize,
    index: u32,
    key: usize,
    /// Named as `POOL/INDEX` (not only through its pool).
    explicit: bool,
}

fn ok(summary: String) -> Value {
    json!({"ok": true, "summary": summary})
}

fn err(error: String) -> Value {
    json!({"ok": false, "error": error})
}

fn labels(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

impl Daemon {
    /// The pools named as a whole and the instances the TARGETs name, each once, in
    /// the order given; or the first unknown pool or index.
    fn resolve(&self, targets: &[Target]) -> Result<(Vec<usize>, Vec<Resolved>), String> {
        let mut pools = Vec::new();
        let mut out: Vec<Resolved> = Vec::new();
        for t in targets {
            let Some(&pk) = self.pool_names.get(t.pool) else {
                let mut names: Vec<&str> = self.pool_names.keys().map(String::as_str).collect();
                names.sort_unstable();
                return Err(format!(
                    "unknown pool {:?}; the pools are: {}",
                    t.pool,
                    if names.is_empty() {
                        "(none)".to_string()
                    } else {
                        names.join(", ")
                    }
                ));
            };
            let p = &self.pools[pk];
            let named: Vec<(u32, usize)> = match t.index {
                None => {
                    if !pools.contains(&pk) {
                        pools.push(pk);
                    }
                    p.slots
                        .iter()
                        .enumerate()
                        .map(|(i, &k)| (i as u32, k))
                        .collect()
                }
                Some(i) => match p.slots.get(i as usize) {
                    Some(&k) => vec![(i, k)],
                    None => {
                        return Err(match p.slots.len() {
                            0 => format!("pool {} has no instances (no index {i})", t.pool),
                            n => format!(
                                "pool {} has no instance {i} (indexes 0 to {})",
                                t.pool,
                                n - 1
                            ),
                        })
                    }
                },
            };
            for (index, key) in named {
                match out.iter_mut().find(|r| r.key == key) {
                    Some(r) => r.explicit |= t.index.is_some(),
                    None => out.push(Resolved {
                        pool: pk,
                        index,
                        key,
                        explicit: t.index.is_some(),
                    }),
                }
            }
        }
        Ok((pools, out))
    }

    /// Every TARGET names a pool, and an index that pool has (`logs`); the error is
    /// the one the other verbs give.
    pub(super) fn check_targets(&self, targets: &[Target]) -> Result<(), String> {
        self.resolve(targets).map(|_| ())
    }

    fn op_target(&self, r: &Resolved) -> OpTarget {
        let i = &self.instances[r.key];
        OpTarget {
            key: r.key,
            id: i.id,
            pool: r.pool,
            index: r.index,
            label: i.label.clone(),
        }
    }

    /// The instance an op follows, if it still exists.
    fn op_instance(&self, t: &OpTarget) -> Option<&super::Instance> {
        self.instances.get(t.key).filter(|i| i.id == t.id)
    }

    /// Queue an op for a late reply, or answer at once when it is already done.
    fn op_begin(&mut self, conn: usize, kind: OpKind, targets: Vec<OpTarget>) -> Option<Value> {
        let conn_id = self.control.conns.get(conn).map(|c| c.id)?;
        let op = PendingOp {
            conn,
            conn_id,
            kind,
            targets,
            failed: None,
        };
        match self.op_outcome(&op) {
            Some(reply) => Some(reply),
            None => {
                self.ops.push(op);
                None
            }
        }
    }

    /// `restart TARGET...`: a rolling replacement of each instance (SPEC 9, 10): the
    /// replacement starts, takes the slot once ready, and the old one drains and stops.
    pub(super) fn ctl_restart(&mut self, conn: usize, targets: &[Target]) -> Option<Value> {
        if self.phase != super::Phase::Running {
            return Some(err("shutting down".into()));
        }
        let (_, named) = match self.resolve(targets) {
            Ok(r) => r,
            Err(e) => return Some(err(e)),
        };
        if let Some(r) = named
            .iter()
            .find(|r| r.explicit && self.instances[r.key].held)
        {
            return Some(err(format!(
                "{} is held stopped; `start` it instead",
                self.instances[r.key].label
            )));
        }
        let mut ops = Vec::new();
        let mut pools = Vec::new();
        for r in named.iter().filter(|r| !self.instances[r.key].held) {
            ops.push(self.op_target(r));
            if !pools.contains(&r.pool) {
                pools.push(r.pool);
            }
        }
        for t in &ops {
            self.pools[t.pool].roll.get_or_insert_with(Roll::default);
            self.roll_event(t.pool, RollEvent::Restart { index: t.index });
        }
        for &pk in &pools {
            let n = ops.iter().filter(|t| t.pool == pk).count();
            log::info!(
                "pool {}: restarting {n} instance(s) one at a time (orchd ctl)",
                self.pools[pk].cfg.name
            );
            self.roll_step(pk);
        }
        self.op_begin(conn, OpKind::Restart, ops)
    }

    /// `stop TARGET...`: hold, drain and stop; answered once stopped.
    pub(super) fn ctl_stop(&mut self, conn: usize, targets: &[Target]) -> Option<Value> {
        if self.phase != super::Phase::Running {
            return Some(err("shutting down".into()));
        }
        let (pools, named) = match self.resolve(targets) {
            Ok(r) => r,
            Err(e) => return Some(err(e)),
        };
        for &pk in &pools {
            self.pools[pk].held = true;
        }
        let mut ops = Vec::new();
        for r in &named {
            ops.push(self.op_target(r));
            self.hold(r.pool, r.index, r.key);
        }
        let mut rolling: Vec<usize> = named.iter().map(|r| r.pool).collect();
        rolling.dedup();
        for pk in rolling {
            // A roll goes on past the held indexes.
            self.roll_step(pk);
        }
        self.op_begin(conn, OpKind::Stop, ops)
    }

    /// Hold one instance: it takes no new messages, finishes what it has, stops.
    fn hold(&mut self, pool: usize, index: u32, k: usize) {
        // A replacement on its way into this slot would take it over unheld.
        self.roll_event(pool, RollEvent::Hold { index });
        let inst = &mut self.instances[k];
        let was_held = std::mem::replace(&mut inst.held, true);
        inst.start_when_stopped = false;
        match inst.life.state {
            State::Running { .. } => {
                log::info!(
                    "{} held (orchd ctl stop): draining {} message(s)",
                    inst.label,
                    inst.rt.inflight.len()
                );
                self.route_retiring(k);
                self.instance_maybe_drained(k);
            }
            State::Backoff { .. } | State::Failed { .. } => {
                log::info!("{} held stopped (orchd ctl stop)", inst.label);
                self.stop_instance(k);
            }
            State::Stopping { .. } => {}
            State::Stopped => {
                if !was_held {
                    log::info!("{} held stopped (orchd ctl stop)", inst.label);
                }
            }
        }
    }

    /// `start TARGET...`: release holds; start what is stopped or failed.
    pub(super) fn ctl_start(&mut self, targets: &[Target]) -> Value {
        if self.phase != super::Phase::Running {
            return err("shutting down".into());
        }
        let (pools, named) = match self.resolve(targets) {
            Ok(r) => r,
            Err(e) => return err(e),
        };
        for &pk in &pools {
            self.pools[pk].held = false;
        }
        let (mut started, mut running) = (Vec::new(), Vec::new());
        for r in &named {
            let inst = &mut self.instances[r.key];
            let label = inst.label.clone();
            let released = std::mem::take(&mut inst.held);
            match inst.life.state {
                State::Stopped | State::Failed { .. } => {
                    log::info!(
                        "{label} {} (orchd ctl start)",
                        if released { "released" } else { "started" }
                    );
                    inst.life.reset();
                    self.refresh_spec(r.key);
                    self.start_instance(r.key);
                    started.push(label);
                }
                State::Stopping { .. } => {
                    inst.start_when_stopped = true;
                    started.push(label);
                }
                State::Running { .. } | State::Backoff { .. } => {
                    if released {
                        log::info!("{label} released (orchd ctl start)");
                        self.route_instance_up(r.key);
                        started.push(label);
                    } else {
                        running.push(label);
                    }
                }
            }
        }
        let mut summary = format!("started {}", labels(&started));
        if !running.is_empty() {
            summary.push_str(&format!("; already running: {}", running.join(", ")));
        }
        ok(summary)
    }

    /// A stopped instance starts with what its pool runs now (it may have been held
    /// across a reload that changed the command).
    pub(super) fn refresh_spec(&mut self, k: usize) {
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        if let Some(p) = self.pools.get(inst.pool) {
            inst.spec = p.spec.clone();
            inst.stdin_pipe = p.routed;
        }
    }

    /// `signal SIG TARGET...`: SIG to the process group of each instance that has one.
    pub(super) fn ctl_signal(&mut self, signal: i32, targets: &[Target]) -> Value {
        let (_, named) = match self.resolve(targets) {
            Ok(r) => r,
            Err(e) => return err(e),
        };
        let name = sys::signal_name(signal);
        let mut sent = Vec::new();
        for r in &named {
            let inst = &self.instances[r.key];
            let Some(pgid) = inst.group() else {
                if r.explicit {
                    return err(format!("{} is not running", inst.label));
                }
                continue;
            };
            match sys::kill_group(pgid, signal) {
                Ok(()) => sent.push(inst.label.clone()),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return err(format!(
                        "{}: cannot send {name} to group {pgid}: {e}",
                        inst.label
                    ))
                }
            }
        }
        if sent.is_empty() {
            return err(format!("no running instance to send {name} to"));
        }
        log::info!("sent {name} to {} (orchd ctl)", sent.join(", "));
        ok(format!("sent {name} to {}", sent.join(", ")))
    }

    /// Answer the ops that are done (run at the end of every loop turn while some
    /// are pending; cheap: a few lookups per target).
    pub(super) fn ops_check(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        for mut op in std::mem::take(&mut self.ops) {
            if op.kind == OpKind::Restart {
                let why = self.restart_abandon_failed(&op);
                op.failed = op.failed.take().or(why);
            }
            match self.op_outcome(&op) {
                None => self.ops.push(op),
                Some(reply) => self.control_reply_later(op.conn, op.conn_id, reply),
            }
        }
    }

    /// A replacement `restart` started that failed its start (it exited, or could not
    /// be spawned, and waits in backoff): the restart of that pool's targets is
    /// abandoned at once, and the old instances keep serving (new code that cannot
    /// start never replaces working code), rather than retried while the client
    /// waits. Returns why, for the reply.
    fn restart_abandon_failed(&mut self, op: &PendingOp) -> Option<String> {
        let mut why = None;
        for t in &op.targets {
            let roll = self.pools.get(t.pool).and_then(|p| p.roll.as_ref());
            let Some(new) = roll.and_then(|r| r.incoming_at(t.index)) else {
                continue;
            };
            let Some(n) = self.instances.get(new) else {
                continue;
            };
            if !matches!(n.life.state, State::Backoff { .. } | State::Failed { .. }) {
                continue;
            }
            let reason = format!(
                "{}: its replacement failed to start ({}); {} keeps running",
                t.label,
                n.last_exit_text()
                    .unwrap_or_else(|| "no exit status".into()),
                t.label
            );
            log::error!("restart of {reason}");
            // The op's other targets in this pool are given up too; this one's
            // replacement retires.
            for other in op.targets.iter().filter(|o| o.pool == t.pool) {
                if other.index != t.index {
                    self.roll_event(t.pool, RollEvent::GiveUp { index: other.index });
                }
            }
            self.roll_event(t.pool, RollEvent::GiveUp { index: t.index });
            self.roll_step(t.pool);
            why.get_or_insert(reason);
        }
        why
    }

    /// The roll of `t`'s pool has yet to replace it.
    fn restart_pending(&self, t: &OpTarget) -> bool {
        let roll = self.pools.get(t.pool).and_then(|p| p.roll.as_ref());
        roll.is_some_and(|r| r.pending(t.index))
    }

    /// The reply of a finished op; None while it is under way.
    fn op_outcome(&self, op: &PendingOp) -> Option<Value> {
        if self.phase != super::Phase::Running {
            return Some(err("shutting down".into()));
        }
        if let Some(why) = &op.failed {
            // Answered once the other targets are settled too.
            let settled = op.targets.iter().all(|t| {
                self.op_instance(t)
                    .is_none_or(|i| !i.retiring && !self.restart_pending(t))
            });
            return settled.then(|| err(why.clone()));
        }
        let mut done = Vec::new();
        for t in &op.targets {
            let inst = self.op_instance(t);
            match op.kind {
                OpKind::Stop => match inst {
                    None => {}
                    Some(i) if i.is_stopped() => {}
                    Some(i) if !i.held => {
                        return Some(err(format!(
                            "{} was started again before it stopped",
                            t.label
                        )))
                    }
                    Some(_) => return None,
                },
                OpKind::Restart => match inst {
                    // Gone: its replacement took the slot and it has drained.
                    None => {}
                    Some(i) if i.retiring => return None,
                    Some(i) if i.held => {
                        return Some(err(format!("{} was stopped before it restarted", t.label)))
                    }
                    Some(_) => {
                        let pending = self.restart_pending(t);
                        if pending {
                            return None;
                        }
                        return Some(err(format!(
                            "{}: its replacement did not come up; it keeps running",
                            t.label
                        )));
                    }
                },
            }
            done.push(t.label.clone());
        }
        let verb = match op.kind {
            OpKind::Restart => "restarted",
            OpKind::Stop => "stopped",
        };
        Some(ok(format!("{verb} {}", labels(&done))))
    }
}
