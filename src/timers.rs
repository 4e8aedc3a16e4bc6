//! A timer heap: deadlines in, due keys out. Pure; the event loop turns the earliest
//! deadline into its poll timeout (no timer due → poll blocks forever, zero wake-ups).
//!
//! Cancellation is lazy: owners keep a generation number and ignore a fired key whose
//! generation is stale. That keeps arming O(log n) and cancelling free.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How far ahead [`deadline`] puts a deadline that `now + d` cannot represent: about
/// 100 years, "never" for a daemon.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `now + d`, saturating: a sum that overflows `Instant` (which panics with `+`)
/// gives a far-future instant instead. Every deadline computed from a configured
/// duration goes through here.
pub fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE.min(d)))
        .unwrap_or(now)
}

/// A duration for logs, to the millisecond ("3.2s", "400ms").
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_millis(ms as u64)).to_string()
    }
}

#[derive(Debug)]
pub struct Timers<K> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    seq: u64,
}

#[derive(Debug)]
struct Entry<K> {
    at: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<K> Timers<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire `key` at `at`. Keys armed for the same instant fire in arming order.
    pub fn arm(&mut self, at: Instant, key: K) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            key,
        }));
    }

    /// The earliest deadline, if any timer is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Pop one timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.heap.pop().map(|Reverse(e)| e.key),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = deadline(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(365 * 24 * 3600), "{far:?}");
        // And again from there: still no panic.
        assert!(deadline(far, Duration::MAX) >= far);
    }

    #[test]
    fn fires_in_deadline_order_then_arming_order() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.arm(t0 + Duration::from_millis(30), "c");
        t.arm(t0 + Duration::from_millis(10), "a");
        t.arm(t0 + Duration::from_millis(10), "b");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_millis(20);
        assert_eq!(t.pop_due(now), Some("a"));
        assert_eq!(t.pop_due(now), Some("b"));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn empty_heap_has_no_deadline() {
        let t: Timers<u8> = Timers::new();
        assert!(t.next_deadline().is_none());
        assert!(t.is_empty());
    }
}
