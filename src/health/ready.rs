//! When a started instance becomes ready (SPEC section 10), one tracker per instance.
//!
//! The shell creates a [`ReadyTracker`] at spawn, arms a timer at
//! [`ReadyTracker::next_deadline`] (re-armed whenever it changes; a stale timer is
//! harmless: [`ReadyTracker::on_timer`] looks at `now`, not at which timer fired),
//! feeds it the instance's output lines while [`ReadyTracker::wants_lines`] and the
//! first health probe result when `ready.probe`, and acts on the [`ReadyEvent`]s:
//! `Ready` moves the instance from `starting` to `running` (and lets a rolling
//! replacement go on); `TimedOut` is a failed start (stop it; backoff and give_up
//! count it).
//!
//! Without `ready` an instance takes messages at once and counts as ready after
//! [`LEGACY_READY_AFTER`] of running, as before issue 10.

use std::time::{Duration, Instant};

use crate::config::{Pattern, Ready, ReadyWhen};

/// Without `ready`: how long an instance is `starting`, and what a rolling
/// replacement waits for.
pub const LEGACY_READY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyEvent {
    /// The instance is ready.
    Ready,
    /// `ready.timeout` passed first: a failed start.
    TimedOut,
}

#[derive(Debug, Clone)]
enum Rule {
    /// No `ready` in the config.
    Legacy,
    Log(Pattern),
    After,
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Ready,
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct ReadyTracker {
    rule: Rule,
    /// `after` (or the legacy second): when it becomes ready by time alone.
    ready_at: Option<Instant>,
    /// `ready.timeout`: when waiting becomes a failed start.
    fail_at: Option<Instant>,
    state: State,
}

impl ReadyTracker {
    /// The tracker of an instance spawned at `spawned`, for its pool's `ready`.
    pub fn new(ready: Option<&Ready>, spawned: Instant) -> ReadyTracker {
        let at = |d: Duration| spawned.checked_add(d);
        let (rule, ready_at, fail_at) = match ready {
            None => (Rule::Legacy, at(LEGACY_READY_AFTER), None),
            Some(r) => {
                let fail_at = at(r.timeout);
                match &r.when {
                    ReadyWhen::Log(p) => (Rule::Log(p.clone()), None, fail_at),
                    ReadyWhen::After(d) => (Rule::After, at(*d), fail_at),
                    ReadyWhen::Probe => (Rule::Probe, None, fail_at),
                }
            }
        };
        ReadyTracker {
            rule,
            ready_at,
            fail_at,
            state: State::Waiting,
        }
    }

    /// Whether messages may be delivered to the instance: at once without `ready`,
    /// else only once ready.
    pub fn takes_messages(&self) -> bool {
        matches!(self.rule, Rule::Legacy) || self.state == State::Ready
    }

    /// Whether it is ready (status `running`, a roll may go on).
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether it has failed to become ready in time.
    pub fn timed_out(&self) -> bool {
        self.state == State::TimedOut
    }

    /// Whether output lines should be fed to [`Self::on_line`].
    pub fn wants_lines(&self) -> bool {
        matches!(self.rule, Rule::Log(_)) && self.state == State::Waiting
    }

    /// Whether the first health probe is to be sent at spawn (`ready.probe`).
    pub fn probes_at_spawn(&self) -> bool {
        matches!(self.rule, Rule::Probe)
    }

    /// When [`Self::on_timer`] has something to do; None once decided.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.state != State::Waiting {
            return None;
        }
        match (self.ready_at, self.fail_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A timer fired (any: the times decide). `after` wins a tie with `timeout`.
    pub fn on_timer(&mut self, now: Instant) -> Option<ReadyEvent> {
        if self.state != State::Waiting {
            return None;
        }
        if self.ready_at.is_some_and(|t| t <= now) {
            return self.become_ready();
        }
        if self.fail_at.is_some_and(|t| t <= now) {
            self.state = State::TimedOut;
            return Some(ReadyEvent::TimedOut);
        }
        None
    }

    /// A line of the instance's output (stderr, and stdout where it is not the reply
    /// channel), without its newline.
    pub fn on_line(&mut self, line: &[u8], now: Instant) -> Option<ReadyEvent> {
        if let Some(e) = self.on_timer(now) {
            return Some(e);
        }
        match &self.rule {
            Rule::Log(p) if self.state == State::Waiting && p.0.is_match(line) => {
                self.become_ready()
            }
            _ => None,
        }
    }

    /// A health probe passed (only the first one matters, with `ready.probe`).
    pub fn on_probe_passed(&mut self, now: Instant) -> Option<ReadyEvent> {
        if let Some(e) = self.on_timer(now) {
            return Some(e);
        }
        match self.rule {
            Rule::Probe if self.state == State::Waiting => self.become_ready(),
            _ => None,
        }
    }

    fn become_ready(&mut self) -> Option<ReadyEvent> {
        self.state = State::Ready;
        Some(ReadyEvent::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn ready(when: ReadyWhen, timeout: u64) -> Ready {
        Ready {
            when,
            timeout: S(timeout),
        }
    }

    fn log(re: &str) -> ReadyWhen {
        ReadyWhen::Log(Pattern(regex::bytes::Regex::new(re).unwrap()))
    }

    #[test]
    fn without_ready_messages_flow_at_once_and_a_roll_waits_one_second() {
        let t0 = Instant::now();
        let mut r = ReadyTracker::new(None, t0);
        assert!(r.takes_messages());
        assert!(!r.is_ready());
        assert!(!r.wants_lines());
        assert_eq!(r.next_deadline(), Some(t0 + S(1)));
        assert_eq!(r.on_timer(t0 + Duration::from_millis(999)), None);
        assert_eq!(r.on_timer(t0 + S(1)), Some(ReadyEvent::Ready));
        assert!(r.is_ready());
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.on_timer(t0 + S(2)), None);
    }

    #[test]
    fn log_line_makes_ready_and_gates_messages() {
        let t0 = Instant::now();
        let cfg = ready(log("listening on \\d+"), 60);
        let mut r = ReadyTracker::new(Some(&cfg), t0);
        assert!(!r.takes_messages());
        assert!(r.wants_lines());
        assert_eq!(r.next_deadline(), Some(t0 + S(60)));
        assert_eq!(r.on_line(b"booting", t0 + S(1)), None);
        assert_eq!(
            r.on_line(b"listening on 8080", t0 + S(2)),
            Some(ReadyEvent::Ready)
        );
        assert!(r.takes_messages() && r.is_ready() && !r.wants_lines());
        // Later matching lines change nothing.
        assert_eq!(r.on_line(b"listening on 8080", t0 + S(3)), None);
    }

    #[test]
    fn not_ready_in_time_is_a_failed_start() {
        let t0 = Instant::now();
        let cfg = ready(log("never"), 5);
        let mut r = ReadyTracker::new(Some(&cfg), t0);
        assert_eq!(r.on_timer(t0 + S(4)), None);
        assert_eq!(r.on_timer(t0 + S(5)), Some(ReadyEvent::TimedOut));
        assert!(r.timed_out() && !r.takes_messages());
        // A matching line after the timeout is too late, even before the timer ran.
        let mut r = ReadyTracker::new(Some(&cfg), t0);
        assert_eq!(r.on_line(b"never", t0 + S(6)), Some(ReadyEvent::TimedOut));
        assert_eq!(r.on_line(b"never", t0 + S(7)), None);
    }

    #[test]
    fn after_beats_a_timeout_at_the_same_time() {
        let t0 = Instant::now();
        let cfg = ready(ReadyWhen::After(S(2)), 10);
        let mut r = ReadyTracker::new(Some(&cfg), t0);
        assert_eq!(r.next_deadline(), Some(t0 + S(2)));
        assert_eq!(r.on_timer(t0 + S(1)), None);
        assert_eq!(r.on_timer(t0 + S(2)), Some(ReadyEvent::Ready));
        let cfg = ready(ReadyWhen::After(S(5)), 5);
        let mut r = ReadyTracker::new(Some(&cfg), t0);
        assert_eq!(r.on_timer(t0 + S(5)), Some(ReadyEvent::Ready));
    }

    #[test]
    fn probe_readiness_waits_for_the_first_passed_probe() {
        let t0 = Instant::now();
        let cfg = ready(ReadyWhen::Probe, 30);
        let mut r = ReadyTracker::new(Some(&cfg), t0);
        assert!(r.probes_at_spawn());
        assert!(!r.wants_lines());
        assert_eq!(r.on_line(b"anything", t0), None);
        assert_eq!(r.on_probe_passed(t0 + S(1)), Some(ReadyEvent::Ready));
        assert_eq!(r.on_probe_passed(t0 + S(11)), None);
    }
}
