//! The adaptive in-flight window of `max_inflight = "auto"` (SPEC section 3), per
//! instance: how many messages may be written to it and not yet answered.
//!
//! A worker's pipe should hold about [`TARGET`] of work: enough that it never waits
//! for orchd between messages (throughput), little enough that messages do not wait
//! in one busy worker's pipe while another worker could take them (balance). The
//! window is that target divided by the worker's recent service time (a moving
//! average of the time from "the worker could reach the message" to its reply): a
//! worker whose replies come back quickly gets a wide window, one that slows down
//! gets a narrow one, within `MIN..=MAX`. It starts at [`START`].
//!
//! Pure: time is an argument, no clock is read.

use std::num::NonZeroUsize;
use std::time::Duration;

/// Work a worker's pipe should hold.
pub const TARGET: Duration = Duration::from_millis(2);
/// Before any reply has been timed: narrow, so that a slow worker is not handed a
/// pipe full of work before its first reply shows it is slow; a fast one doubles
/// it with each round of replies.
pub const START: u32 = MIN;
/// Never narrower: one message in flight, one more ready in the pipe.
pub const MIN: u32 = 2;
/// Never wider (a 64 KiB pipe holds about 1,000 short lines).
pub const MAX: u32 = 1024;

/// Weight of a new sample in the moving average: 1/2^SHIFT.
const SHIFT: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Moving average of the service time, in nanoseconds, scaled by 2^SHIFT; None
    /// until the first sample.
    avg_scaled: Option<u64>,
    size: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            avg_scaled: None,
            size: START,
        }
    }
}

impl Window {
    /// Messages that may be in flight now.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// `n` replies were read at once, `elapsed` after the worker could reach the
    /// first of them; `full`: the window was full before them; `drained`: they were
    /// all it had in flight.
    ///
    /// A worker that answered everything it had may have waited for orchd part of
    /// that time, so the time says nothing of its speed; if the window held it back,
    /// the window doubles (grow while replies come back quickly). Otherwise the
    /// worker was busy all along: `elapsed / n` is its service time.
    pub fn replies(&mut self, elapsed: Duration, n: NonZeroUsize, full: bool, drained: bool) {
        if drained {
            if full && self.size < MAX {
                self.size = (self.size * 2).min(MAX);
                // The average agrees with the new size, so the next sample moves
                // it from there.
                let avg = TARGET.as_nanos() as u64 / u64::from(self.size);
                self.avg_scaled = Some(avg << SHIFT);
            }
            return;
        }
        let n = u32::try_from(n.get()).unwrap_or(u32::MAX);
        self.sample(elapsed / n);
    }

    /// A reply came `service` after the worker could reach its message.
    pub fn sample(&mut self, service: Duration) {
        let ns = u64::try_from(service.as_nanos()).unwrap_or(u64::MAX >> SHIFT);
        let ns = ns.min(u64::MAX >> (SHIFT + 1));
        let scaled = match self.avg_scaled {
            None => ns << SHIFT,
            Some(a) => a - (a >> SHIFT) + ns,
        };
        self.avg_scaled = Some(scaled);
        let avg = (scaled >> SHIFT).max(1);
        let target = TARGET.as_nanos() as u64;
        self.size = (target / avg).clamp(u64::from(MIN), u64::from(MAX)) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(samples: &[Duration]) -> u32 {
        let mut w = Window::default();
        for &s in samples {
            w.sample(s);
        }
        w.size()
    }

    #[test]
    fn starts_narrow() {
        assert_eq!(Window::default().size(), START);
    }

    #[test]
    fn fast_replies_open_it_to_the_maximum() {
        assert_eq!(after(&[Duration::ZERO; 4]), MAX);
        assert_eq!(after(&[Duration::from_micros(1); 50]), MAX);
    }

    #[test]
    fn slow_replies_close_it_to_the_target() {
        // 1 ms a message: the pipe holds 2 ms of work.
        assert_eq!(after(&[Duration::from_millis(1); 50]), 2);
        assert_eq!(after(&[Duration::from_micros(100); 50]), 20);
        assert_eq!(after(&[Duration::from_secs(3); 5]), MIN);
    }

    #[test]
    fn it_follows_a_worker_that_slows_down_and_recovers() {
        let mut w = Window::default();
        for _ in 0..50 {
            w.sample(Duration::from_micros(1));
        }
        assert_eq!(w.size(), MAX);
        for _ in 0..30 {
            w.sample(Duration::from_millis(1));
        }
        assert!(w.size() <= 3, "slowed down: {}", w.size());
        for _ in 0..60 {
            w.sample(Duration::from_micros(1));
        }
        assert!(w.size() >= 500, "recovered: {}", w.size());
    }

    #[test]
    fn a_burst_of_replies_read_at_once_keeps_it_wide() {
        // A fast worker's replies are read in chunks: the first of a chunk waited
        // for a loop turn, the others were there at once.
        let mut w = Window::default();
        for _ in 0..20 {
            w.sample(Duration::from_micros(200));
            for _ in 0..200 {
                w.sample(Duration::ZERO);
            }
        }
        assert_eq!(w.size(), MAX);
    }

    fn n(v: usize) -> NonZeroUsize {
        NonZeroUsize::new(v).unwrap()
    }

    #[test]
    fn a_worker_that_answers_all_it_had_while_held_back_gets_more() {
        let mut w = Window::default();
        let slow_loop = Duration::from_millis(20);
        w.replies(slow_loop, n(2), true, true);
        assert_eq!(w.size(), 4);
        w.replies(slow_loop, n(4), true, true);
        assert_eq!(w.size(), 8);
        for _ in 0..10 {
            w.replies(slow_loop, n(1024), true, true);
        }
        assert_eq!(w.size(), MAX);
    }

    #[test]
    fn answering_all_without_being_held_back_changes_nothing() {
        // One message at a time: nothing to learn from the idle time in between.
        let mut w = Window::default();
        for _ in 0..10 {
            w.replies(Duration::from_secs(1), n(1), false, true);
        }
        assert_eq!(w.size(), START);
        w.replies(Duration::from_secs(1), n(1), true, true);
        w.replies(Duration::from_secs(1), n(1), false, true);
        assert_eq!(w.size(), 2 * START);
    }

    #[test]
    fn a_busy_worker_is_timed_per_reply() {
        let mut w = Window::default();
        // 10 answers in 10 ms, more still in flight: 1 ms each.
        for _ in 0..30 {
            w.replies(Duration::from_millis(10), n(10), true, false);
        }
        assert_eq!(w.size(), 2);
        // Growth after doubling starts from an average that matches the new size.
        w.replies(Duration::from_millis(4), n(2), true, true);
        assert_eq!(w.size(), 4);
        w.replies(Duration::from_millis(1), n(2), true, false);
        assert!(w.size() >= 4, "{}", w.size());
    }

    #[test]
    fn huge_samples_do_not_overflow() {
        assert_eq!(after(&[Duration::MAX, Duration::MAX, Duration::ZERO]), MIN);
    }
}
