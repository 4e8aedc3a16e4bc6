//! Reload: triggers (SIGHUP, file watch, control socket) and executing a
//! [`crate::reload::Plan`] without losing a message or touching unchanged workers.
//!
//! The file watcher is notify's own thread; it only forwards events through a channel
//! and wakes the loop with the shared `mio::Waker`. All work happens on the loop
//! thread: events reset a 100 ms debounce timer; when it fires, the file is read and
//! reloaded only if its content hash changed (editors and ConfigMap swaps produce
//! bursts of events, some for unrelated files in the directory).
//!
//! A watched directory that is deleted loses its watch (and one re-created at the
//! same path is a new inode that was never watched): each settled burst re-checks
//! every watched directory's identity. One that is gone is replaced by a watch on its
//! nearest existing ancestor, whose events announce its re-creation; then it is
//! watched again. No polling: an idle orchd stays idle.
//!
//! Retiring an instance (scale-down, replacement, pool removal): it takes no new
//! messages, finishes its in-flight and backlog, then is stopped and forgotten.
//! Replacement is decided by the pool's [`Roll`] (pure, `crate::reload::roll`): this
//! module feeds it what happened to the pool's instances ([`Daemon::roll_event`]) and
//! performs what it decides (create and start a replacement, hand a slot over, retire).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};

use slab::Slab;

use super::{notify_systemd, Daemon, Instance, Phase, TimerKey};
use crate::config::{self, Config, Pool};
use crate::reload::apply::{self, Step};
use crate::reload::diff::{diff_running, same_process, RunningPool, RunningSpec};
pub use crate::reload::roll::Roll;
use crate::reload::roll::{Action as RollAction, Event as RollEvent, Slot, Slots, Why};
use crate::reload::Plan;
use crate::supervisor::lifecycle::{Event as LifeEvent, State};

/// Quiet time after the last file event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Watcher {
    watcher: Option<notify::RecommendedWatcher>,
    rx: Option<mpsc::Receiver<notify::Result<notify::Event>>>,
    /// Watched directories, each with the identity (device, inode) it had when
    /// the watch was added.
    watched: Vec<(PathBuf, Option<(u64, u64)>)>,
    /// Directories of the config that are gone: an ancestor is watched instead.
    gone: Vec<PathBuf>,
    debounce_gen: u64,
    /// Hash of the config content last loaded (or tried).
    last_hash: Option<u64>,
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The directories to watch for `path`: its own directory, and the directory of what it
/// resolves to when it is (or goes through) a symlink.
fn watch_dirs(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let d = parent(&real);
        if !dirs
            .iter()
            .any(|x| std::fs::canonicalize(x).ok().as_ref() == Some(&d))
        {
            dirs.push(d);
        }
    }
    dirs
}

/// Device and inode of a directory, if it exists.
fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).ok().filter(|m| m.is_dir())?;
    Some((m.dev(), m.ino()))
}

/// The nearest existing ancestor of a directory that is gone.
fn existing_ancestor(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|a| {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        a.is_dir().then(|| a.to_path_buf())
    })
}

impl Daemon {
    pub(super) fn watch_start(&mut self) {
        if let Ok(bytes) = config::read_file(&self.config.path) {
            self.watcher.last_hash = Some(hash_of(&bytes));
        }
        if self.opts.no_watch || !self.config.settings.watch {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let waker = self.waker.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            if tx.send(res).is_ok() {
                let _ = waker.wake();
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => {
                self.watcher.watcher = Some(w);
                self.watcher.rx = Some(rx);
                self.watch_refresh();
            }
            Err(e) => log::warn!(
                "cannot watch {}: {e}; reload with SIGHUP",
                self.config.path.display()
            ),
        }
    }

    fn watch_stop(&mut self) {
        self.watcher.watcher = None;
        self.watcher.rx = None;
        self.watcher.watched.clear();
        self.watcher.gone.clear();
    }

    /// Watch the directories the config path currently involves (a ConfigMap swap
    /// changes where its symlink resolves), re-attaching to any that was deleted and
    /// re-created, and watching the nearest existing ancestor of any that is gone.
    ///
    /// Passes repeat until one changes nothing: a directory re-created just before
    /// its ancestor's watch was added made no event, so the next pass must see it.
    fn watch_refresh(&mut self) {
        for _ in 0..8 {
            if !self.watch_refresh_pass() {
                return;
            }
        }
    }

    /// One pass of [`Self::watch_refresh`]; whether it added or removed a watch.
    fn watch_refresh_pass(&mut self) -> bool {
        let Some(w) = self.watcher.watcher.as_mut() else {
            return false;
        };
        let mut changed = false;
        let gone = &mut self.watcher.gone;
        let mut want: Vec<(PathBuf, Option<(u64, u64)>)> = Vec::new();
        for dir in watch_dirs(&self.config.path) {
            let target = match dir_id(&dir) {
                Some(id) => {
                    if let Some(i) = gone.iter().position(|g| *g == dir) {
                        gone.swap_remove(i);
                        log::info!("watching {} again", dir.display());
                    }
                    Some((dir, Some(id)))
                }
                None => {
                    let up = existing_ancestor(&dir);
                    if !gone.contains(&dir) {
                        match &up {
                            Some(a) => log::warn!(
                                "{} is gone; watching {} until it comes back",
                                dir.display(),
                                a.display()
                            ),
                            None => log::warn!("{} is gone; cannot watch for it", dir.display()),
                        }
                        gone.push(dir);
                    }
                    up.map(|a| {
                        let id = dir_id(&a);
                        (a, id)
                    })
                }
            };
            if let Some(t) = target {
                if !want.contains(&t) {
                    want.push(t);
                }
            }
        }
        for old in std::mem::take(&mut self.watcher.watched) {
            if want.contains(&old) {
                self.watcher.watched.push(old);
            } else {
                // Fails harmlessly when the directory's deletion removed the watch.
                let _ = w.unwatch(&old.0);
                changed = true;
            }
        }
        for (dir, id) in want {
            if self.watcher.watched.iter().any(|(d, _)| *d == dir) {
                continue;
            }
            match w.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    log::debug!("watching {}", dir.display());
                    self.watcher.watched.push((dir, id));
                    changed = true;
                }
                Err(e) => log::warn!("cannot watch {}: {e}", dir.display()),
            }
        }
        changed
    }

    /// The waker fired: drain the watcher's channel.
    pub(super) fn on_wake(&mut self) {
        let Some(rx) = self.watcher.rx.as_ref() else {
            return;
        };
        let mut relevant = false;
        while let Ok(res) = rx.try_recv() {
            match res {
                // Our own reads of the config show up as access events: ignore them, or
                // orchd would wake itself in a loop.
                Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
                Ok(_) => relevant = true,
                Err(e) => log::warn!("file watcher: {e}"),
            }
        }
        if relevant && self.phase == super::Phase::Running {
            let gen = self.gen();
            self.watcher.debounce_gen = gen;
            self.timers
                .arm(self.now + DEBOUNCE, TimerKey::Debounce { gen });
        }
    }

    pub(super) fn on_debounce(&mut self, gen: u64) {
        if gen != self.watcher.debounce_gen || self.phase != super::Phase::Running {
            return;
        }
        // First, so that a change made while a directory was being re-created is
        // either read below or seen by the new watch.
        self.watch_refresh();
        let text = match config::read_file(&self.config.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Mid-swap: the next event brings it back.
                log::debug!("config changed but cannot be read yet: {e}");
                return;
            }
            Err(e) => {
                // Not a regular file, or too large: never read, so never blocking.
                log::error!(
                    "reload: cannot read {}: {e}; keeping the running config",
                    self.config.path.display()
                );
                self.watch_refresh();
                return;
            }
        };
        let h = hash_of(&text);
        if self.watcher.last_hash == Some(h) {
            log::debug!("config directory changed; config content did not");
            return;
        }
        self.watcher.last_hash = Some(h);
        log::info!("{} changed on disk: reloading", self.config.path.display());
        match config::parse_bytes(&self.config.path, &text) {
            Ok(new) => {
                if let Err(e) = self.apply_config(new) {
                    log::error!("reload failed: {e}; keeping the running config");
                }
            }
            Err(errors) => {
                self.metrics.counters.reload(false);
                log::error!(
                    "reload: {} is invalid; keeping the running config:\n{errors}",
                    self.config.path.display()
                )
            }
        }
    }

    /// SIGHUP or `reload` on the control socket. Returns the summary or the error.
    pub(super) fn reload_from_disk(&mut self, why: &str) -> Result<String, String> {
        if self.phase != super::Phase::Running {
            return Err("shutting down".into());
        }
        let path = self.config.path.clone();
        let text = config::read_file(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .inspect_err(|e| log::error!("reload ({why}): {e}; keeping the running config"))?;
        self.watcher.last_hash = Some(hash_of(&text));
        let new = config::parse_bytes(&path, &text).map_err(|errors| {
            self.metrics.counters.reload(false);
            log::error!(
                "reload ({why}): {} is invalid; keeping the running config:\n{errors}",
                path.display()
            );
            errors.to_string()
        })?;
        let summary = self.apply_config(new).inspect_err(|e| {
            log::error!("reload ({why}) failed: {e}; keeping the running config")
        })?;
        self.watch_refresh();
        Ok(summary)
    }

    /// What reloading `path` would change now.
    pub(super) fn plan_for(&self, path: &Path) -> Result<Plan, String> {
        let new = config::load(path).map_err(|e| e.to_string())?;
        // What a reload would only warn about is an error for a dry run (SPEC 2).
        let problems = config::preflight(&new);
        if !problems.is_empty() {
            return Err(config::ConfigErrors(problems).to_string());
        }
        Ok(self.plan(&new))
    }

    /// The diff from what runs now to `new`: replacement is decided per instance, from
    /// the spec each one was started with (SPEC 6), not from the previous config.
    fn plan(&self, new: &Config) -> Plan {
        diff_running(&self.config, new, |name| {
            let p = &self.pools[*self.pool_names.get(name)?];
            let next = new.pool(name);
            let spec_of = |k: usize| {
                self.instances.get(k).map(|i| match next {
                    // A held instance is not replaced: it runs the pool's spec of the
                    // day it is started (SPEC 6: held instances stay held).
                    Some(n) if i.held => RunningSpec {
                        spec: n,
                        routed: new.is_routed(name),
                    },
                    _ => RunningSpec {
                        spec: &i.spec,
                        routed: i.stdin_pipe,
                    },
                })
            };
            Some(RunningPool {
                slots: p.slots.iter().filter_map(|&k| spec_of(k)).collect(),
                rolling: p.roll.is_some(),
                incoming: p
                    .roll
                    .iter()
                    .flat_map(|r| r.incoming())
                    .filter_map(|(_, k)| spec_of(k))
                    .collect(),
            })
        })
    }

    /// Apply a valid config as a diff. Listeners are opened first: if one cannot be,
    /// nothing changes.
    fn apply_config(&mut self, new: Config) -> Result<String, String> {
        for problem in config::preflight(&new) {
            log::warn!(
                "reload: {problem} (applying anyway: a failed start is retried with backoff)"
            );
        }
        let plan = self.plan(&new);
        // Before the first READY=1 (instances still settling), systemd hears nothing
        // of a reload: its READY=1 would claim readiness too early.
        let notify = self.ready_sent;
        if notify {
            notify_systemd("RELOADING=1");
        }
        let result = self.apply_plan(&plan, new);
        self.metrics.counters.reload(result.is_ok());
        if notify {
            notify_systemd("READY=1");
        }
        let restarted = result?;
        let summary = match (plan.is_empty(), restarted) {
            (_, 0) => plan.summary(),
            (true, n) => format!("{n} failed instance(s) restarted"),
            (false, n) => format!("{}, {n} failed instance(s) restarted", plan.summary()),
        };
        log::info!("reload: {summary}");
        Ok(summary)
    }

    /// Returns how many failed instances got a fresh start.
    fn apply_plan(&mut self, plan: &Plan, new: Config) -> Result<usize, String> {
        // Everything that can fail is opened first; nothing is committed before.
        let control = self
            .control_prepare(new.settings.control.as_deref())
            .map_err(|e| e.to_string())?;
        let metrics = match self.metrics_prepare(new.settings.metrics, false) {
            Ok(m) => m,
            Err(e) => {
                self.control_discard(control);
                return Err(e.to_string());
            }
        };
        if let Err(e) = self.listeners_open(&new) {
            // Undo: close what this attempt opened (a bound metrics socket closes
            // when dropped).
            self.listeners_close_unused(&self.config.clone());
            self.control_discard(control);
            drop(metrics);
            return Err(e.to_string());
        }
        let slots = |name: &str| {
            let pool = self.pool_names.get(name).and_then(|&k| self.pools.get(k));
            pool.map_or(0, |p| p.slots.len() as u32)
        };
        for (name, step) in apply::steps(plan, slots) {
            self.apply_step(name, step, &new);
        }
        self.router_install(&new);
        self.listeners_close_unused(&new);
        self.control_commit(control);
        self.metrics_commit(metrics);
        let old = std::mem::replace(&mut self.config, new);
        self.settings_changed(&old.settings);
        self.health_changed(&old);
        self.deps_check();
        self.rss_arm();
        Ok(self.restart_failed())
    }

    fn settings_changed(&mut self, old: &config::Settings) {
        let new = self.config.settings.clone();
        if old.watch != new.watch && !self.opts.no_watch {
            if new.watch {
                self.watch_start();
            } else {
                self.watch_stop();
            }
        }
        if old.log_level != new.log_level {
            crate::logging::config_level_changed(&new.log_level);
        }
        if old.log_buffer != new.log_buffer {
            self.control.logs.set_max(new.log_buffer);
        }
    }

    /// `failed` instances get a fresh start on every reload.
    fn restart_failed(&mut self) -> usize {
        let failed: Vec<usize> = self
            .instances
            .iter()
            .filter(|(_, i)| matches!(i.life.state, State::Failed { .. }) && !i.retiring())
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in failed {
            // Starting one may retire another (a roll's promotion): look again.
            let still_failed = self
                .instances
                .get(k)
                .is_some_and(|i| matches!(i.life.state, State::Failed { .. }) && !i.retiring());
            if !still_failed {
                continue;
            }
            n += 1;
            log::info!(
                "{}: reload gives a failed instance a fresh start",
                self.instances[k].label
            );
            self.feed(k, LifeEvent::Reload);
        }
        n
    }

    fn pool_remove(&mut self, name: &str) {
        let Some(key) = self.pool_names.remove(name) else {
            return;
        };
        let p = &mut self.pools[key];
        p.removed = true;
        let slots: Vec<usize> = std::mem::take(&mut p.slots);
        // Replacements under way go first, then the slots from the highest index.
        self.roll_event(key, RollEvent::Remove);
        for k in slots.into_iter().rev() {
            self.retire(k);
        }
        // Freed once its last instance is gone (at once if it has none).
        self.pool_maybe_done(key);
    }

    /// Perform one step of applying a plan to pool `name` (see [`apply::steps`]).
    fn apply_step(&mut self, name: &str, step: Step, new: &Config) {
        match step {
            Step::AddPool => {
                if let Some(p) = new.pool(name) {
                    let sup = new.supervision(name).clone();
                    self.pool_add(p.clone(), new.is_routed(name), sup);
                }
                return;
            }
            Step::RemovePool => return self.pool_remove(name),
            _ => {}
        }
        let Some(&key) = self.pool_names.get(name) else {
            return;
        };
        match step {
            Step::AddPool | Step::RemovePool => {}
            Step::Update => {
                if let Some(cfg) = new.pool(name) {
                    let sup = new.supervision(name).clone();
                    self.pool_update(key, cfg.clone(), new.is_routed(name), sup);
                }
            }
            Step::Roll(event) => {
                if matches!(event, RollEvent::Begin { .. }) {
                    self.pools[key].roll.get_or_insert_with(Roll::default);
                }
                self.roll_event(key, event);
            }
            Step::RetireSlot => {
                if let Some(k) = self.pools[key].slots.pop() {
                    self.retire(k);
                }
            }
            Step::AddSlot => {
                self.instance_add(key);
            }
            Step::Replacing { replace } => {
                let p = &self.pools[key];
                let (n, order) = (p.sup.rolling.parallel, p.sup.rolling.order);
                let at_once = match n {
                    1 => "one".to_string(),
                    n => n.to_string(),
                };
                let order = match order {
                    config::RollOrder::StartFirst => "",
                    config::RollOrder::StopFirst => " (stop-first)",
                };
                log::info!(
                    "pool {}: replacing {replace} instance(s) {at_once} at a time{order}",
                    p.cfg.name
                )
            }
            Step::Refresh => self.pool_refresh(key),
        }
    }

    /// A changed pool takes its new settings, and the spec its new instances run.
    fn pool_update(&mut self, key: usize, cfg: Pool, routed: bool, sup: config::Supervision) {
        let p = &mut self.pools[key];
        p.sup = sup;
        if p.cfg.user != cfg.user || p.cfg.group != cfg.group {
            super::supervise::warn_if_ids_ignored(&cfg);
        }
        p.spec = std::rc::Rc::new(cfg.clone());
        p.cfg = cfg;
        p.routed = routed;
    }

    /// Stop giving an instance work; stop it once it has finished what it has.
    pub(super) fn retire(&mut self, k: usize) {
        let Some(inst) = self.instances.get_mut(k) else {
            return;
        };
        let pool = inst.pool;
        let running = matches!(inst.life.state, State::Running { .. });
        if !self.pools[pool].retiring.contains(&k) {
            self.pools[pool].retiring.push(k);
        }
        // Leaving from now on; one that does not run is stopped (and forgotten) now.
        self.feed(k, LifeEvent::Retire);
        if running {
            log::info!(
                "{} retiring: draining {} message(s)",
                self.instances[k].label,
                self.ledger.instance_counts(k).0
            );
            self.route_retiring(k);
            self.instance_maybe_drained(k);
        }
    }

    /// Advance a pool's rolling replacement as far as it can go now.
    pub(super) fn roll_step(&mut self, pool: usize) {
        self.roll_event(pool, RollEvent::Proceed);
    }

    /// An instance started: if it is a pool's incoming replacement, its promote timer
    /// is armed.
    pub(super) fn roll_started(&mut self, k: usize) {
        if let Some(pool) = self.instances.get(k).map(|i| i.pool) {
            let now = self.now;
            self.roll_event(pool, RollEvent::Started { key: k, now });
        }
    }

    /// An instance became ready: if it is a roll's replacement, it takes its slot.
    pub(super) fn roll_ready(&mut self, pool: usize, k: usize) {
        self.roll_event(pool, RollEvent::Ready { key: k });
    }

    /// A promote timer fired: the roll promotes the replacement if it stayed up.
    pub(super) fn on_promote_timer(&mut self, k: usize, gen: u64) {
        let Some(inst) = self.instances.get(k) else {
            return;
        };
        let running_since = match inst.life.state {
            State::Running { since, .. } => Some(since),
            _ => None,
        };
        let event = RollEvent::PromoteDue {
            key: k,
            gen,
            now: self.now,
            running_since,
        };
        self.roll_event(inst.pool, event);
    }

    /// An instance stopped for good (its restart policy, or shutdown): if it was a
    /// roll's incoming replacement, the roll is abandoned.
    pub(super) fn roll_incoming_stopped(&mut self, k: usize) {
        if let Some(pool) = self.instances.get(k).map(|i| i.pool) {
            self.roll_event(pool, RollEvent::Stopped { key: k });
        }
    }

    /// An instance was forgotten: if it was a roll's outgoing one, the roll goes on.
    pub(super) fn roll_forgotten(&mut self, pool: usize, k: usize) {
        self.roll_event(pool, RollEvent::Gone { key: k });
    }

    /// Feed one event to a pool's roll (if it has one) and perform what it decides.
    pub(super) fn roll_event(&mut self, pool: usize, event: RollEvent) {
        let mut actions = Vec::new();
        {
            let Some(p) = self.pools.get_mut(pool) else {
                return;
            };
            let Some(roll) = p.roll.as_mut() else {
                return;
            };
            let view = PoolSlots {
                slots: &p.slots,
                spec: &p.spec,
                routed: p.routed,
                rolling: p.sup.rolling,
                gated: p.sup.ready.is_some(),
                instances: &self.instances,
                // Nothing starts in a pool waiting for its `depends_on`.
                shutting_down: self.phase != Phase::Running || p.waiting.is_some(),
            };
            roll.handle(event, &view, &mut actions);
            if roll.is_over() {
                p.roll = None;
            }
        }
        for action in actions {
            self.roll_action(pool, action);
        }
    }

    fn roll_action(&mut self, pool: usize, action: RollAction) {
        match action {
            RollAction::Start { index } => {
                if self.pools.get(pool).is_none_or(|p| p.roll.is_none()) {
                    return;
                }
                let new = self.instance_new(pool, index);
                self.roll_event(pool, RollEvent::Created { index, key: new });
                // Until it is promoted (or waits in backoff), the old instance serves.
                self.start_instance(new);
            }
            RollAction::Create { index } => {
                if self.pools.get(pool).is_none_or(|p| p.roll.is_none()) {
                    return;
                }
                let new = self.instance_new(pool, index);
                self.roll_event(pool, RollEvent::Created { index, key: new });
            }
            RollAction::Launch { key } => self.start_instance(key),
            RollAction::Halted { key, .. } => {
                if let (Some(p), Some(i)) = (self.pools.get(pool), self.instances.get(key)) {
                    log::error!(
                        "pool {}: replacement {} stopped before it was ready; replacement halted",
                        p.cfg.name,
                        i.label
                    );
                }
            }
            RollAction::ArmPromote { key, gen, at } => {
                self.timers.arm(at, TimerKey::Promote { key, gen });
            }
            RollAction::Promote { index, new, old } => {
                let slot = self
                    .pools
                    .get_mut(pool)
                    .and_then(|p| p.slots.get_mut(index as usize));
                if let Some(slot) = slot {
                    debug_assert_eq!(*slot, old, "slot {index} changed hands during its roll");
                    *slot = new;
                }
            }
            RollAction::Retire { key, why } => {
                if why == Why::Cancelled {
                    if let Some(i) = self.instances.get(key) {
                        log::info!("{}: pending replacement cancelled", i.label);
                    }
                }
                self.retire(key);
            }
            RollAction::Done => {
                if let Some(p) = self.pools.get(pool) {
                    log::info!("pool {}: replacement done", p.cfg.name);
                }
            }
            RollAction::Abandoned { key, .. } => {
                let (Some(p), Some(i)) = (self.pools.get(pool), self.instances.get_mut(key)) else {
                    return;
                };
                if self.phase == Phase::Running {
                    log::error!(
                        "pool {}: replacement {} stopped; keeping the running instances, replacement abandoned",
                        p.cfg.name,
                        i.label
                    );
                }
                // Forgotten once stopped, like any instance leaving.
                i.life.retire();
            }
        }
    }
}

/// A pool's slots as its [`Roll`] sees them.
struct PoolSlots<'a> {
    slots: &'a [usize],
    spec: &'a Pool,
    routed: bool,
    rolling: config::Rolling,
    gated: bool,
    instances: &'a Slab<Instance>,
    shutting_down: bool,
}

impl Slots for PoolSlots<'_> {
    fn slot(&self, index: u32) -> Option<Slot> {
        let key = *self.slots.get(index as usize)?;
        let i = self.instances.get(key)?;
        Some(Slot {
            key,
            held: i.held,
            current: same_process(&i.spec, i.stdin_pipe, self.spec, self.routed),
        })
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    fn rolling(&self) -> config::Rolling {
        self.rolling
    }

    fn gated(&self) -> bool {
        self.gated
    }
}
