//! Shutdown (SPEC section 8): draining, stopping every instance, the forced second
//! signal, and the last words before exit.

use std::time::{Duration, Instant};

use super::{notify_systemd, Daemon, Phase, TimerKey, FINAL_FLUSH};
use crate::timers::deadline;

impl Daemon {
    pub(super) fn shutdown_requested(&mut self) {
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
    pub(super) fn stop_everything(&mut self) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        self.phase = Phase::Stopping { forced: false };
        self.router_fail_all("shutting down");
        // Dependents first, then what they depend on (`depends_on`, SPEC 10).
        self.stop_next_wave();
    }

    pub(super) fn kill_everything(&mut self) {
        self.phase = Phase::Stopping { forced: true };
        let groups: Vec<u32> = self
            .instances
            .iter()
            .filter_map(|(_, i)| i.group())
            .chain(self.workers.lingering.keys().copied())
            // Running `exec` health probes, each in a group of its own.
            .chain(self.workers.probes.keys().copied())
            .collect();
        for pgid in groups {
            let _ = crate::sys::kill_group(pgid, libc::SIGKILL);
        }
        self.instances_killed();
    }

    /// Shutdown is complete when nothing runs any more and every client has its
    /// replies (waiting at most [`FINAL_FLUSH`] for slow readers).
    pub(super) fn finished(&mut self) -> bool {
        if !matches!(self.phase, Phase::Stopping { .. })
            || !self.workers.lingering.is_empty()
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

    /// After an error in the loop itself: kill everything we started.
    pub(super) fn emergency_stop(&mut self) {
        self.kill_everything();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.workers.pids.is_empty() {
            self.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Last words: remove the control socket, kill and reap anything still parented to
    /// us (descendants that escaped their group with setsid), restore stdin.
    pub(super) fn finish(&mut self) {
        self.control_close();
        self.metrics_shutdown();
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
