//! Wiring of readiness, start order and memory limits (SPEC 10) between the pure
//! machines ([`crate::supervisor::lifecycle`] for readiness, [`crate::health::order`]
//! for `depends_on`, [`crate::health::rss`] for `max_rss`) and the rest of the shell.
//! Nothing here decides: the machines do.
//!
//! - An instance became ready ([`Daemon::instance_ready`]): the ledger may send it
//!   messages, its health probes begin, its pool's roll may go on, pools waiting on
//!   its pool look again.
//! - `depends_on`: a pool that names others is created with its instances not started
//!   (`ManagedPool::waiting`); [`Daemon::deps_check`] opens its gate once every pool it
//!   names is ready or completed, and records why it waits (status). At shutdown,
//!   [`Daemon::stop_next_wave`] stops pools in reverse start order.
//! - `max_rss`: one timer every `RSS_CHECK_EVERY`, armed only while some pool sets it.

use crate::config::{RestartPolicy, RSS_CHECK_EVERY};
use crate::health::order::{gate, stop_waves, DepState};
use crate::health::rss::{checks_needed, restart_reason, RssVerdict};
use crate::supervisor::lifecycle::{Cause, State};
use crate::timers::deadline;

use super::{Daemon, Phase, TimerKey};

impl Daemon {
    /// The lifecycle says the instance's process became ready.
    pub(super) fn instance_ready(&mut self, k: usize) {
        let Some(pool) = self.instances.get(k).map(|i| i.pool) else {
            return;
        };
        // It takes messages now: the ledger pulls work for it.
        self.route_instance_up(k);
        self.health_ready(k);
        self.roll_ready(pool, k);
        self.deps_changed();
    }

    /// Something that a pool waiting on `depends_on` may wait for changed.
    pub(super) fn deps_changed(&mut self) {
        if self.pools.iter().any(|(_, p)| p.waiting.is_some()) {
            self.deps_check();
        }
        if matches!(self.phase, Phase::Stopping { .. }) {
            self.stop_next_wave();
        }
    }

    /// What a pool is for the pools that depend on it (SPEC 10).
    fn dep_state(&self, pool: usize) -> DepState {
        let Some(p) = self.pools.get(pool) else {
            return DepState::Pending;
        };
        if p.waiting.is_some() {
            return DepState::Pending;
        }
        let never = p.cfg.restart == RestartPolicy::Never;
        DepState::of_members(
            p.slots
                .iter()
                .filter_map(|&k| self.instances.get(k))
                .filter(|i| !i.held)
                .map(|i| i.life.as_dependency(never)),
        )
    }

    /// Open the gate of every waiting pool whose dependencies are met; record why the
    /// others wait.
    pub(super) fn deps_check(&mut self) {
        loop {
            let decisions: Vec<(usize, Option<String>)> = self
                .pools
                .iter()
                .filter(|(_, p)| p.waiting.is_some())
                .map(|(pk, p)| {
                    let deps = p.sup.depends_on.iter().map(|name| {
                        let state = match self.pool_names.get(name) {
                            Some(&d) => self.dep_state(d),
                            None => DepState::Pending,
                        };
                        (name.as_str(), state)
                    });
                    (pk, gate(deps).reason())
                })
                .collect();
            let mut opened = false;
            for (pk, reason) in decisions {
                match reason {
                    None => {
                        opened = true;
                        self.deps_open(pk);
                    }
                    Some(reason) => {
                        let p = &mut self.pools[pk];
                        if p.waiting.as_deref() != Some(reason.as_str()) {
                            log::info!("pool {}: {reason}", p.cfg.name);
                            p.waiting = Some(reason);
                        }
                    }
                }
            }
            if !opened {
                return;
            }
        }
    }

    /// A waiting pool's dependencies are met: start its instances.
    fn deps_open(&mut self, pool: usize) {
        self.pools[pool].waiting = None;
        log::info!(
            "pool {}: dependencies met; starting",
            self.pools[pool].cfg.name
        );
        for k in self.pools[pool].slots.clone() {
            if self.instances.get(k).is_some_and(|i| i.is_stopped()) {
                // It never ran: it runs what its pool runs now (a reload may have
                // changed that while it waited).
                self.refresh_spec(k);
                self.start_instance(k);
            }
        }
        // A roll held back while the pool waited has nothing left to replace.
        self.roll_step(pool);
    }

    /// Why an instance is in its state, for status (SPEC 7).
    pub(super) fn instance_reason(&self, k: usize) -> Option<String> {
        let i = self.instances.get(k)?;
        if let Some(r) = i.reason() {
            return Some(r.to_string());
        }
        let p = self.pools.get(i.pool)?;
        if let Some(w) = &p.waiting {
            return Some(w.clone());
        }
        i.rss.is_over().then(|| "rss above max_rss".to_string())
    }

    /// Whether `pool` waits for its `depends_on`. Its instances do not keep orchd
    /// from sending READY=1 once every other instance is settled: what it waits for
    /// then failed its first start (or is a held pool), and may never be met.
    pub(super) fn pool_waiting(&self, pool: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| p.waiting.is_some())
    }

    /// Shutdown: stop the pools wave by wave, dependents before what they depend on.
    /// Called again whenever an instance is gone, until every wave is stopped.
    pub(super) fn stop_next_wave(&mut self) {
        let keys: Vec<usize> = self.pools.iter().map(|(k, _)| k).collect();
        let deps: Vec<Vec<usize>> = keys
            .iter()
            .map(|&k| {
                self.pools[k]
                    .sup
                    .depends_on
                    .iter()
                    .filter_map(|n| self.pool_names.get(n))
                    .filter_map(|d| keys.iter().position(|k| k == d))
                    .collect()
            })
            .collect();
        // A cycle is a config error; should one slip through, stop everything at once.
        let waves = stop_waves(&deps).unwrap_or_else(|_| vec![(0..keys.len()).collect()]);
        for wave in waves {
            let pools: Vec<usize> = wave.iter().map(|&i| keys[i]).collect();
            let members: Vec<usize> = self
                .instances
                .iter()
                .filter(|(_, i)| pools.contains(&i.pool))
                .map(|(k, _)| k)
                .collect();
            for &k in &members {
                if self.instances.get(k).is_some_and(|i| !i.is_stopped()) {
                    self.stop_instance(k);
                }
            }
            if members
                .iter()
                .any(|&k| self.instances.get(k).is_some_and(|i| !i.is_stopped()))
            {
                return;
            }
        }
        // Instances of no known pool (cannot happen): stopped with the last wave.
        let rest: Vec<usize> = self
            .instances
            .iter()
            .filter(|(_, i)| !i.is_stopped())
            .map(|(k, _)| k)
            .collect();
        for k in rest {
            self.stop_instance(k);
        }
    }

    /// Arm the RSS check if some pool sets `max_rss` and it is not armed.
    pub(super) fn rss_arm(&mut self) {
        if self.rss_timer.is_some() || !checks_needed(self.pools.iter().map(|(_, p)| p.sup.max_rss))
        {
            return;
        }
        let gen = self.gen();
        self.rss_timer = Some(gen);
        self.timers
            .arm(deadline(self.now, RSS_CHECK_EVERY), TimerKey::Rss { gen });
    }

    /// Check every running instance of a pool with `max_rss`; restart those over it
    /// for two checks in a row. Re-armed while some pool still sets it.
    pub(super) fn on_rss_timer(&mut self, gen: u64) {
        if self.rss_timer != Some(gen) {
            return;
        }
        self.rss_timer = None;
        let mut restart = Vec::new();
        for (k, i) in self.instances.iter_mut() {
            let limit = self.pools.get(i.pool).and_then(|p| p.sup.max_rss);
            let Some(pid) = i
                .pid()
                .filter(|_| matches!(i.life.state, State::Running { .. }))
            else {
                i.rss = Default::default();
                continue;
            };
            let Some(rss) = crate::sys::process_usage(pid).map(|u| u.rss_bytes) else {
                continue;
            };
            if i.rss.check(rss, limit) == RssVerdict::Restart {
                if let Some(l) = limit {
                    restart.push((k, restart_reason(rss, l)));
                }
            }
        }
        for (k, why) in restart {
            if let Some(i) = self.instances.get(k) {
                log::warn!("{}: {why}; restarting it", i.label);
                let (pool, index) = (i.pool, i.index);
                if let Some(p) = self.pools.get(pool) {
                    self.control.record(
                        &p.cfg.name,
                        index,
                        super::logs::Stream::Orchd,
                        format!("{}: {why}; restarting it", self.instances[k].label),
                    );
                }
            }
            self.metrics_cause(k, "rss");
            self.restart_instance(k, Cause::Rss);
        }
        if self.phase == Phase::Running {
            self.rss_arm();
        }
    }
}
