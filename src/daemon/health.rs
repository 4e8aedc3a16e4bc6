//! Health probes (SPEC section 10), wired: one [`HealthTracker`] per running
//! instance of a pool with `health`, the timers it asks for, and its actions carried
//! out — a `send` probe through the message ledger ([`Ledger::probe_send`]), an
//! `exec` probe as a process of its own (a bounded number at once, the
//! [`ExecQueue`]), and `failures` consecutive failures restarting the instance like
//! a hung one.
//!
//! The tracker decides (when a probe is due, when it failed, when to restart); this
//! file only routes events to it and its actions to the ledger, the process table and
//! the lifecycle. A tracker lives from the instance's `Up` to its `Down` (exit or
//! stop); an `exec` probe still running then is killed, and reaped by the loop.
//!
//! [`Ledger::probe_send`]: crate::router::ledger::Ledger::probe_send

use std::collections::HashMap;
use std::time::Instant;

use crate::config::{Probe, ReadyWhen};
use crate::health::exec::ExecQueue;
use crate::health::probe::{ExecOutcome, HealthAction, HealthTracker, ProbeId};
use crate::supervisor::lifecycle::{Cause, Event, State};
use crate::supervisor::spawn::{self, Credentials};
use crate::sys::Exit;

use super::logs::Stream;
use super::{Daemon, TimerKey};

/// The health probes of every instance.
#[derive(Debug, Default)]
pub(super) struct HealthProbes {
    /// By instance key; `id` tells a reused key apart.
    entries: HashMap<usize, Entry>,
    /// `exec` probes by (instance key, instance id): a bounded number run at once.
    exec: ExecQueue<(usize, u64)>,
    /// Actions being carried out (a buffer kept between uses).
    actions: Vec<HealthAction>,
}

#[derive(Debug)]
struct Entry {
    /// The instance's id (unique for the daemon's life).
    id: u64,
    tracker: HealthTracker,
    /// The deadline a timer is armed for (not armed again for the same one).
    armed: Option<Instant>,
    /// The running `exec` probe: pid (= its group). Set until it is reaped, also
    /// after it was killed.
    exec_pid: Option<u32>,
    /// The next `exec` probe, started while the killed one was not reaped yet: it
    /// joins the queue once that one is (one probe process per instance at a time).
    exec_next: Option<ProbeId>,
}

impl Daemon {
    /// Instance `key` is up (or ready): with `health` in its pool, its probes begin,
    /// the first `every` from now. While it waits to get ready: by `ready.probe`, the
    /// first is due at once (its first pass makes it ready); by `ready.log` or
    /// `ready.after`, none until it is ready ([`Self::health_ready`]): getting ready
    /// is `ready.timeout`'s to judge.
    pub(super) fn health_start(&mut self, key: usize) {
        self.health_stop(key);
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        let Some(pool) = self.pools.get(inst.pool) else {
            return;
        };
        let sup = self.config.supervision(&pool.cfg.name);
        let Some(health) = &sup.health else {
            return;
        };
        let at_spawn = match &sup.ready {
            Some(r) if inst.life.awaits_ready() => {
                if r.when != ReadyWhen::Probe {
                    return;
                }
                true
            }
            _ => false,
        };
        let tracker = HealthTracker::new(health, self.now, at_spawn);
        let id = inst.id;
        self.health.entries.insert(
            key,
            Entry {
                id,
                tracker,
                armed: None,
                exec_pid: None,
                exec_next: None,
            },
        );
        self.health_arm(key);
    }

    /// Instance `key` became ready: its probes begin unless they already run
    /// (`ready.probe`).
    pub(super) fn health_ready(&mut self, key: usize) {
        if !self.health.entries.contains_key(&key) {
            self.health_start(key);
        }
    }

    /// Instance `key` went down (exited, or is being stopped): its probes end; an
    /// `exec` probe still running is killed.
    pub(super) fn health_stop(&mut self, key: usize) {
        let Some(e) = self.health.entries.remove(&key) else {
            return;
        };
        self.health.exec.forget((key, e.id));
        if let Some(pid) = e.exec_pid {
            self.workers.kill_probe(pid);
        }
    }

    /// After a reload (`old`: the config before): pools whose `health` changed
    /// apply it in place (SPEC 6).
    pub(super) fn health_changed(&mut self, old: &crate::config::Config) {
        let changed: Vec<usize> = self
            .pools
            .iter()
            .filter(|(_, p)| {
                old.supervision(&p.cfg.name).health != self.config.supervision(&p.cfg.name).health
            })
            .map(|(k, _)| k)
            .collect();
        for pool in changed {
            self.health_reconfigure(pool);
        }
    }

    /// The pool's `health` changed in place (reload): running instances start over
    /// with the new settings (or stop probing).
    fn health_reconfigure(&mut self, pool: usize) {
        let keys: Vec<usize> = self
            .instances
            .iter()
            .filter(|(_, i)| i.pool == pool)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            if matches!(self.instances[key].life.state, State::Running { .. }) {
                self.health_start(key);
            } else {
                self.health_stop(key);
            }
        }
    }

    /// Arm a timer for the tracker's next deadline, unless one is armed for it.
    fn health_arm(&mut self, key: usize) {
        let Some(e) = self.health.entries.get_mut(&key) else {
            return;
        };
        let next = e.tracker.next_deadline();
        if next.is_some() && next != e.armed {
            e.armed = next;
            if let Some(at) = next {
                self.timers.arm(at, TimerKey::Health { key, id: e.id });
            }
        }
    }

    pub(super) fn on_health_timer(&mut self, key: usize, id: u64) {
        let now = self.now;
        let mut acts = std::mem::take(&mut self.health.actions);
        match self.health.entries.get_mut(&key) {
            Some(e) if e.id == id => {
                e.armed = None;
                e.tracker.on_timer(now, &mut acts);
            }
            _ => return,
        }
        self.health_perform(key, id, &mut acts);
        self.health.actions = acts;
    }

    /// The ledger: the worker can reach instance `key`'s probe now.
    pub(super) fn on_probe_reached(&mut self, key: usize) {
        let now = self.now;
        if let Some(e) = self.health.entries.get_mut(&key) {
            if let Some(probe) = e.tracker.in_flight() {
                e.tracker.on_running(probe, now);
            }
        }
        self.health_arm(key);
    }

    /// The ledger: instance `key`'s reply to its probe (None: too long to read).
    pub(super) fn on_probe_reply(&mut self, key: usize, line: Option<&[u8]>) {
        let now = self.now;
        let mut acts = std::mem::take(&mut self.health.actions);
        let id = match self.health.entries.get_mut(&key) {
            Some(e) => {
                if let Some(probe) = e.tracker.in_flight() {
                    // A reply too long to read matches nothing.
                    e.tracker
                        .on_reply(probe, line.unwrap_or(b""), now, &mut acts);
                }
                e.id
            }
            None => return,
        };
        self.health_perform(key, id, &mut acts);
        self.health.actions = acts;
    }

    /// `exec` probes reaped by the loop: their slots go to waiting probes, their
    /// outcomes to their trackers.
    pub(super) fn health_reaped(&mut self) {
        for ((key, id, probe), exit) in self.workers.take_probe_exits() {
            if let Some(next) = self.health.exec.finished((key, id), probe) {
                self.health_spawn_exec(next);
            }
            let outcome = match exit {
                Exit::Code(c) => ExecOutcome::Exited(c),
                Exit::Signal { signal, .. } => ExecOutcome::Signaled(signal),
            };
            self.health_exec_ended(key, id, probe, &outcome);
            // A probe that waited for this one to be reaped.
            let waiting = self
                .health
                .entries
                .get_mut(&key)
                .filter(|e| e.id == id)
                .and_then(|e| e.exec_next.take());
            if let Some(next) = waiting.and_then(|p| self.health.exec.push((key, id), p)) {
                self.health_spawn_exec(next);
            }
        }
    }

    fn health_exec_ended(&mut self, key: usize, id: u64, probe: ProbeId, outcome: &ExecOutcome) {
        let now = self.now;
        let mut acts = std::mem::take(&mut self.health.actions);
        match self.health.entries.get_mut(&key) {
            Some(e) if e.id == id => {
                e.exec_pid = None;
                e.tracker.on_exit(probe, outcome, now, &mut acts);
            }
            _ => {}
        }
        self.health_perform(key, id, &mut acts);
        self.health.actions = acts;
    }

    /// Carry out the tracker's actions for instance `key` (`id`), then re-arm.
    fn health_perform(&mut self, key: usize, id: u64, acts: &mut Vec<HealthAction>) {
        for a in acts.drain(..) {
            if self.instances.get(key).is_none_or(|i| i.id != id) {
                continue;
            }
            match a {
                HealthAction::Start(probe) => self.health_start_probe(key, id, probe),
                HealthAction::Kill(_) => {
                    if let Some(pid) = self.health.entries.get(&key).and_then(|e| e.exec_pid) {
                        self.workers.kill_probe(pid);
                    }
                }
                HealthAction::Passed { first } => {
                    if first {
                        log::debug!("{}: first health probe passed", self.instances[key].label);
                        // With `ready.probe`, it is ready now (the lifecycle decides).
                        self.feed(key, Event::ProbePassed);
                    }
                }
                HealthAction::Failed {
                    reason,
                    consecutive,
                } => self.health_failed(key, &reason, consecutive),
                HealthAction::Restart { reason } => {
                    let text = format!("{}: {reason}; restarting it", self.instances[key].label);
                    self.health_record(key, log::Level::Warn, text);
                    self.metrics_cause(key, "health");
                    self.restart_instance(key, Cause::Health);
                }
            }
        }
        self.health_arm(key);
    }

    fn health_failed(&mut self, key: usize, reason: &str, consecutive: u32) {
        let inst = &self.instances[key];
        let (pool, index) = (inst.pool, inst.index);
        let failures = self
            .pools
            .get(pool)
            .and_then(|p| self.config.supervision(&p.cfg.name).health.as_ref())
            .map_or(0, |h| h.failures);
        let text = if consecutive == 0 {
            format!(
                "{}: health probe failed (not yet ready): {reason}",
                inst.label
            )
        } else {
            format!(
                "{}: health probe failed ({consecutive} of {failures}): {reason}",
                inst.label
            )
        };
        self.health_record(key, log::Level::Warn, text);
        self.metrics
            .counters
            .pool(pool)
            .health_failure(index as usize);
    }

    /// Log about an instance and keep the line in its pool's log buffer.
    fn health_record(&mut self, key: usize, level: log::Level, text: String) {
        log::log!(level, "{text}");
        let inst = &self.instances[key];
        if let Some(p) = self.pools.get(inst.pool) {
            self.control
                .record(&p.cfg.name, inst.index, Stream::Orchd, text);
        }
    }

    /// Run probe `probe` of instance `key`: its line through the ledger, or its
    /// command when an `exec` slot is free.
    fn health_start_probe(&mut self, key: usize, id: u64, probe: ProbeId) {
        let inst = &self.instances[key];
        let Some(health) = self
            .pools
            .get(inst.pool)
            .and_then(|p| self.config.supervision(&p.cfg.name).health.as_ref())
        else {
            return;
        };
        let send = match &health.probe {
            Probe::Send { send, .. } => Some(send.as_bytes()),
            Probe::Exec(_) => None,
        };
        match send {
            Some(send) => {
                let mut line = Vec::with_capacity(send.len() + 1);
                line.extend_from_slice(send);
                line.push(b'\n');
                self.ledger_sync(key);
                let sent = self
                    .ledger
                    .probe_send(key, &line, self.now, &mut self.ledger_out);
                let inst = &self.instances[key];
                if !sent && !inst.retiring() && !inst.held {
                    // Its input is closed: the probe runs out its timeout. (A leaving
                    // instance is probed no more: it is about to stop.)
                    log::debug!("{}: cannot write the health probe", inst.label);
                    if let Some(e) = self.health.entries.get_mut(&key) {
                        e.tracker.on_running(probe, self.now);
                    }
                }
                self.ledger_exec();
            }
            None => {
                if let Some(e) = self
                    .health
                    .entries
                    .get_mut(&key)
                    .filter(|e| e.exec_pid.is_some())
                {
                    e.exec_next = Some(probe);
                } else if let Some(next) = self.health.exec.push((key, id), probe) {
                    self.health_spawn_exec(next);
                }
            }
        }
    }

    /// Spawn the `exec` probe the queue handed out; one that cannot start fails at
    /// once and frees its slot for the next.
    fn health_spawn_exec(&mut self, first: ((usize, u64), ProbeId)) {
        let mut next = Some(first);
        while let Some(((key, id), probe)) = next.take() {
            let now = self.now;
            let spawned = self.spawn_probe_process(key, id);
            match spawned {
                Ok(pid) => {
                    self.workers.probes.insert(pid, (key, id, probe));
                    if let Some(e) = self.health.entries.get_mut(&key).filter(|e| e.id == id) {
                        e.exec_pid = Some(pid);
                        e.tracker.on_running(probe, now);
                    }
                    self.health_arm(key);
                }
                Err(e) => {
                    next = self.health.exec.finished((key, id), probe);
                    if let Some(entry) = self.health.entries.get_mut(&key).filter(|e| e.id == id) {
                        entry.tracker.on_running(probe, now);
                    }
                    self.health_exec_ended(key, id, probe, &ExecOutcome::SpawnFailed(e));
                }
            }
        }
    }

    /// Start the `exec` command of instance `key`'s pool, as the instance would run.
    fn spawn_probe_process(&self, key: usize, id: u64) -> Result<u32, String> {
        let inst = self
            .instances
            .get(key)
            .filter(|i| i.id == id)
            .ok_or("the instance is gone")?;
        let pool = self.pools.get(inst.pool).ok_or("the pool is gone")?;
        let Some(Probe::Exec(command)) = self
            .config
            .supervision(&pool.cfg.name)
            .health
            .as_ref()
            .map(|h| &h.probe)
        else {
            return Err("the pool has no exec probe".into());
        };
        let spec = &inst.spec;
        let worker = inst.pid().unwrap_or(0);
        Credentials::resolve(spec)
            .and_then(|creds| spawn::spawn_probe(spec, &command.argv(), inst.index, worker, creds))
            .map_err(|e| e.to_string())
    }
}
