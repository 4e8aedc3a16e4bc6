//! One instance's health probes (SPEC section 10): when the next is due, its timeout,
//! consecutive failures, and when they restart the instance.
//!
//! The shell owns one [`HealthTracker`] per instance of a pool with `health`, arms a
//! timer at [`HealthTracker::next_deadline`] (re-armed after every call: stale timers
//! are harmless, [`HealthTracker::on_timer`] only looks at `now`), and executes the
//! [`HealthAction`]s pushed into the `out` vector:
//!
//! - `Start(id)`: for `send`, queue the probe line on the instance's input like a
//!   message (its reply is consumed by orchd, never delivered to a client); once the
//!   line is written to the worker's pipe and the worker can reach it, call
//!   [`HealthTracker::on_running`]: the timeout clock starts then, as for messages,
//!   so a busy healthy worker is not failed. For `exec`, queue the command in the
//!   [`ExecQueue`](super::exec::ExecQueue) (a bounded number run at once), call
//!   `on_running` when it is spawned with the pool's cwd, env and user, and report
//!   its exit with [`HealthTracker::on_exit`].
//! - `Kill(id)`: the `exec` probe `id` outlived its timeout: SIGKILL its group.
//! - `Passed`, `Failed`: log and count (`orchd_health_failures_total`); with
//!   `ready.probe` the first `Passed` goes to the ready tracker.
//! - `Restart`: `failures` consecutive failures: restart the instance like a hung one,
//!   logged with the reason; the tracker is dropped with the instance.
//!
//! Every probe has an id (its generation): a result carrying another id than the probe
//! in flight is stale and ignored.

use std::time::{Duration, Instant};

use crate::config::{Health, Pattern, Probe};

/// The generation of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthAction {
    /// Run probe `id` now (send its line, or spawn its command).
    Start(ProbeId),
    /// Kill the `exec` probe `id`: it ran past its timeout.
    Kill(ProbeId),
    /// A probe passed; `first` for the first pass of this instance.
    Passed { first: bool },
    /// A probe failed. `consecutive` failures so far (0 while failures are not counted:
    /// before the first pass of a `ready.probe` instance, whose `ready.timeout` decides).
    Failed { reason: String, consecutive: u32 },
    /// `failures` consecutive failures: restart the instance like a hung one.
    Restart { reason: String },
}

/// How an `exec` probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(i32),
    Signaled(i32),
    /// The command could not be started (the OS error).
    SpawnFailed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No probe in flight; the next is due at `due`.
    Idle { due: Instant },
    /// Waits for the worker to reach it (`send`) or for its turn to run (`exec`): no
    /// timeout yet.
    Queued { id: ProbeId, started: Instant },
    /// In flight, failed at `deadline`.
    Running {
        id: ProbeId,
        started: Instant,
        deadline: Instant,
    },
}

#[derive(Debug, Clone)]
pub struct HealthTracker {
    every: Duration,
    timeout: Duration,
    failures: u32,
    /// `send`'s `expect`; None for `exec`.
    expect: Option<Pattern>,
    state: State,
    next_id: u64,
    consecutive: u32,
    passed_once: bool,
    /// Whether failures count before the first pass (false with `ready.probe`).
    count_before_pass: bool,
}

impl HealthTracker {
    /// The tracker of one instance. With `at_spawn` (`ready.probe`) the first probe is
    /// due at once and failures count only after the first pass; otherwise (created
    /// when the instance becomes ready) the first probe is due `every` from `now`.
    pub fn new(health: &Health, now: Instant, at_spawn: bool) -> HealthTracker {
        let due = if at_spawn {
            now
        } else {
            now.checked_add(health.every).unwrap_or(now)
        };
        HealthTracker {
            every: health.every,
            timeout: health.timeout,
            failures: health.failures,
            expect: match &health.probe {
                Probe::Send { expect, .. } => Some(expect.clone()),
                Probe::Exec(_) => None,
            },
            state: State::Idle { due },
            next_id: 0,
            consecutive: 0,
            passed_once: false,
            count_before_pass: !at_spawn,
        }
    }

    /// When [`Self::on_timer`] has something to do; None while a probe waits to run
    /// (see [`Self::on_running`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Idle { due } => Some(due),
            State::Queued { .. } => None,
            State::Running { deadline, .. } => Some(deadline),
        }
    }

    /// The probe in flight, if any.
    pub fn in_flight(&self) -> Option<ProbeId> {
        match self.state {
            State::Idle { .. } => None,
            State::Queued { id, .. } | State::Running { id, .. } => Some(id),
        }
    }

    /// Consecutive failures counted so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// A timer fired: start a due probe, or fail the one past its timeout.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<HealthAction>) {
        match self.state {
            State::Idle { due } if due <= now => {
                self.next_id += 1;
                let id = ProbeId(self.next_id);
                self.state = State::Queued { id, started: now };
                out.push(HealthAction::Start(id));
            }
            State::Running {
                id,
                started,
                deadline,
            } if deadline <= now => {
                let reason = if self.expect.is_some() {
                    format!("no reply to the health probe within {}", fmt(self.timeout))
                } else {
                    out.push(HealthAction::Kill(id));
                    format!(
                        "the health command did not exit within {}",
                        fmt(self.timeout)
                    )
                };
                self.fail(reason, started, now, out);
            }
            _ => {}
        }
    }

    /// Probe `id` runs: for `send`, it has been written and the worker can reach it;
    /// for `exec`, its command was spawned. Its timeout clock starts.
    pub fn on_running(&mut self, id: ProbeId, now: Instant) {
        if let State::Queued { id: q, started } = self.state {
            if q == id {
                self.state = State::Running {
                    id,
                    started,
                    deadline: self.deadline(now),
                };
            }
        }
    }

    /// The worker's reply line to the `send` probe `id`.
    pub fn on_reply(
        &mut self,
        id: ProbeId,
        line: &[u8],
        now: Instant,
        out: &mut Vec<HealthAction>,
    ) {
        let Some(started) = self.current(id) else {
            return;
        };
        let passed = self.expect.as_ref().is_some_and(|p| p.0.is_match(line));
        if passed {
            self.pass(started, now, out);
        } else {
            let expect = self.expect.as_ref().map_or("", |p| p.as_str());
            let reason = format!(
                "health probe reply {} does not match {expect:?}",
                excerpt(line)
            );
            self.fail(reason, started, now, out);
        }
    }

    /// The `exec` probe `id` ended.
    pub fn on_exit(
        &mut self,
        id: ProbeId,
        outcome: &ExecOutcome,
        now: Instant,
        out: &mut Vec<HealthAction>,
    ) {
        let Some(started) = self.current(id) else {
            return;
        };
        let reason = match outcome {
            ExecOutcome::Exited(0) => return self.pass(started, now, out),
            ExecOutcome::Exited(code) => format!("the health command exited with code {code}"),
            ExecOutcome::Signaled(sig) => format!("the health command was killed by signal {sig}"),
            ExecOutcome::SpawnFailed(e) => format!("the health command could not start: {e}"),
        };
        self.fail(reason, started, now, out);
    }

    /// The start time of probe `id` if it is the one in flight.
    fn current(&self, id: ProbeId) -> Option<Instant> {
        match self.state {
            State::Queued { id: q, started } | State::Running { id: q, started, .. } if q == id => {
                Some(started)
            }
            _ => None,
        }
    }

    fn deadline(&self, now: Instant) -> Instant {
        now.checked_add(self.timeout).unwrap_or(now)
    }

    /// The next probe: `every` after this one started, and never in the past.
    fn schedule(&mut self, started: Instant, now: Instant) {
        let due = started.checked_add(self.every).unwrap_or(now).max(now);
        self.state = State::Idle { due };
    }

    fn pass(&mut self, started: Instant, now: Instant, out: &mut Vec<HealthAction>) {
        self.consecutive = 0;
        let first = !self.passed_once;
        self.passed_once = true;
        self.schedule(started, now);
        out.push(HealthAction::Passed { first });
    }

    fn fail(
        &mut self,
        reason: String,
        started: Instant,
        now: Instant,
        out: &mut Vec<HealthAction>,
    ) {
        self.schedule(started, now);
        if !self.passed_once && !self.count_before_pass {
            out.push(HealthAction::Failed {
                reason,
                consecutive: 0,
            });
            return;
        }
        self.consecutive += 1;
        out.push(HealthAction::Failed {
            reason: reason.clone(),
            consecutive: self.consecutive,
        });
        if self.consecutive >= self.failures {
            out.push(HealthAction::Restart {
                reason: format!(
                    "{} consecutive health probe failure(s), last: {reason}",
                    self.consecutive
                ),
            });
            self.consecutive = 0;
        }
    }
}

fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A reply line for a log message: quoted, at most 80 bytes of it.
fn excerpt(line: &[u8]) -> String {
    const MAX: usize = 80;
    let cut = &line[..line.len().min(MAX)];
    let more = if line.len() > MAX { "…" } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn send_health(failures: u32) -> Health {
        Health {
            probe: Probe::Send {
                send: "PING".into(),
                expect: Pattern(regex::bytes::Regex::new("^PONG").unwrap()),
            },
            every: S(10),
            timeout: S(2),
            failures,
        }
    }

    fn exec_health() -> Health {
        Health {
            probe: Probe::Exec(Command::Argv(vec!["true".into()])),
            every: S(5),
            timeout: S(1),
            failures: 2,
        }
    }

    fn started(out: &[HealthAction]) -> ProbeId {
        match out.last() {
            Some(HealthAction::Start(id)) => *id,
            other => panic!("expected Start, got {other:?}"),
        }
    }

    #[test]
    fn send_probe_passes_and_the_next_is_due_every_later() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(&send_health(3), t0, false);
        let mut out = Vec::new();
        assert_eq!(h.next_deadline(), Some(t0 + S(10)));
        h.on_timer(t0 + S(9), &mut out);
        assert!(out.is_empty());
        h.on_timer(t0 + S(10), &mut out);
        let id = started(&out);
        // Waiting for the worker: no timeout yet.
        assert_eq!(h.next_deadline(), None);
        h.on_running(id, t0 + S(11));
        assert_eq!(h.next_deadline(), Some(t0 + S(13)));
        out.clear();
        h.on_reply(id, b"PONG 1", t0 + S(12), &mut out);
        assert_eq!(out, vec![HealthAction::Passed { first: true }]);
        // `every` from when the probe started.
        assert_eq!(h.next_deadline(), Some(t0 + S(20)));
    }

    #[test]
    fn a_busy_worker_is_not_failed_before_it_can_reach_the_probe() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(&send_health(1), t0, false);
        let mut out = Vec::new();
        h.on_timer(t0 + S(10), &mut out);
        let id = started(&out);
        // Long after the timeout would have passed, still queued behind messages.
        h.on_timer(t0 + S(60), &mut out);
        assert_eq!(out.len(), 1);
        h.on_running(id, t0 + S(60));
        h.on_reply(id, b"PONG", t0 + S(61), &mut out);
        assert_eq!(out.last(), Some(&HealthAction::Passed { first: true }));
    }

    #[test]
    fn consecutive_failures_restart_and_a_pass_resets_the_count() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(&send_health(3), t0, false);
        let mut out = Vec::new();
        let mut now = t0;
        let mut probe = |h: &mut HealthTracker, reply: &[u8], out: &mut Vec<HealthAction>| {
            now = h.next_deadline().unwrap();
            h.on_timer(now, out);
            let id = started(out);
            h.on_running(id, now);
            h.on_reply(id, reply, now + S(1), out);
        };
        probe(&mut h, b"ERR busy", &mut out);
        probe(&mut h, b"ERR busy", &mut out);
        assert_eq!(h.consecutive_failures(), 2);
        probe(&mut h, b"PONG", &mut out);
        assert_eq!(h.consecutive_failures(), 0);
        out.clear();
        for _ in 0..3 {
            probe(&mut h, b"nope", &mut out);
        }
        let restarts: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                HealthAction::Restart { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(restarts.len(), 1, "{out:?}");
        assert!(
            restarts[0].contains("3 consecutive") && restarts[0].contains("\"nope\""),
            "{}",
            restarts[0]
        );
    }

    #[test]
    fn no_reply_in_time_fails() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(&send_health(1), t0, false);
        let mut out = Vec::new();
        h.on_timer(t0 + S(10), &mut out);
        let id = started(&out);
        h.on_running(id, t0 + S(10));
        h.on_timer(t0 + S(11), &mut out);
        assert_eq!(out.len(), 1);
        h.on_timer(t0 + S(12), &mut out);
        assert!(
            matches!(&out[1], HealthAction::Failed { reason, consecutive: 1 } if reason.contains("no reply"))
        );
        assert!(matches!(&out[2], HealthAction::Restart { .. }));
        // The late reply is stale.
        out.clear();
        h.on_reply(id, b"PONG", t0 + S(13), &mut out);
        assert!(out.is_empty());
        // The next probe is due `every` after the failed one started.
        assert_eq!(h.next_deadline(), Some(t0 + S(20)));
    }

    #[test]
    fn exec_probe_that_hangs_is_killed() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(&exec_health(), t0, false);
        let mut out = Vec::new();
        h.on_timer(t0 + S(5), &mut out);
        let id = started(&out);
        // Waiting for a free exec slot: no timeout yet.
        assert_eq!(h.next_deadline(), None);
        h.on_running(id, t0 + S(5));
        assert_eq!(h.next_deadline(), Some(t0 + S(6)));
        h.on_timer(t0 + S(6), &mut out);
        assert_eq!(out[1], HealthAction::Kill(id));
        assert!(matches!(
            &out[2],
            HealthAction::Failed { consecutive: 1, .. }
        ));
        // The killed command's exit is stale now.
        out.clear();
        h.on_exit(id, &ExecOutcome::Signaled(9), t0 + S(6), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn exec_outcomes() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(&exec_health(), t0, false);
        let mut out = Vec::new();
        let run = |h: &mut HealthTracker, o: ExecOutcome, out: &mut Vec<HealthAction>| {
            let now = h.next_deadline().unwrap();
            h.on_timer(now, out);
            let id = started(out);
            h.on_running(id, now);
            h.on_exit(id, &o, now, out);
        };
        run(&mut h, ExecOutcome::Exited(0), &mut out);
        assert_eq!(out.last(), Some(&HealthAction::Passed { first: true }));
        run(&mut h, ExecOutcome::Exited(1), &mut out);
        assert!(
            matches!(out.last(), Some(HealthAction::Failed { reason, .. }) if reason.contains("code 1"))
        );
        run(
            &mut h,
            ExecOutcome::SpawnFailed("No such file".into()),
            &mut out,
        );
        assert!(
            matches!(out.last(), Some(HealthAction::Restart { reason }) if reason.contains("could not start"))
        );
    }

    #[test]
    fn ready_probe_starts_at_spawn_and_counts_failures_only_after_a_pass() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(&send_health(1), t0, true);
        let mut out = Vec::new();
        assert_eq!(h.next_deadline(), Some(t0));
        h.on_timer(t0, &mut out);
        let id = started(&out);
        h.on_running(id, t0);
        h.on_reply(id, b"starting", t0, &mut out);
        assert_eq!(
            out.last(),
            Some(&HealthAction::Failed {
                reason: "health probe reply \"starting\" does not match \"^PONG\"".into(),
                consecutive: 0
            })
        );
        assert_eq!(h.next_deadline(), Some(t0 + S(10)));
        h.on_timer(t0 + S(10), &mut out);
        let id = started(&out);
        h.on_running(id, t0 + S(10));
        h.on_reply(id, b"PONG", t0 + S(10), &mut out);
        assert_eq!(out.last(), Some(&HealthAction::Passed { first: true }));
        h.on_timer(t0 + S(20), &mut out);
        let id = started(&out);
        h.on_running(id, t0 + S(20));
        h.on_reply(id, b"x", t0 + S(20), &mut out);
        assert!(matches!(out.last(), Some(HealthAction::Restart { .. })));
    }

    #[test]
    fn long_replies_are_cut_in_reasons() {
        let line = vec![b'a'; 200];
        let e = excerpt(&line);
        assert!(e.ends_with('…') && e.len() < 100, "{e}");
    }
}
