//! The per-client reorder buffer for `ordered = true`: replies leave in the order the
//! client sent the messages, whatever order the workers answer in. Its size is bounded
//! by the number of a client's messages awaiting replies, which the event loop caps.
//!
//! A value may stand for a span of consecutive positions (the replies to a run of
//! messages, read together): it is stored at the first and the others are marked
//! covered by it, so a run's replies cost one entry, not one per message.

use std::collections::VecDeque;

#[derive(Debug)]
enum Slot<T> {
    Open,
    Filled(T),
    /// Part of the span of the `Filled` slot before it.
    Covered,
}

#[derive(Debug)]
pub struct Reorder<T> {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot<T>>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            base: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> Reorder<T> {
    /// Free the memory of an empty buffer (a client that is idle again).
    pub fn release(&mut self) {
        if self.slots.is_empty() && self.slots.capacity() > 16 {
            self.slots = VecDeque::new();
        }
    }

    /// Reserve the next position; returns its sequence number.
    pub fn reserve(&mut self) -> u64 {
        self.slots.push_back(Slot::Open);
        self.base + self.slots.len() as u64 - 1
    }

    /// Reserve the next `n` positions.
    pub fn reserve_n(&mut self, n: usize) {
        self.slots
            .extend(std::iter::repeat_with(|| Slot::Open).take(n));
    }

    /// The sequence number the next [`Reorder::reserve`] will return.
    pub fn next_seq(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// Fill a reserved position. Unknown or already filled positions are ignored and
    /// reported as false.
    pub fn fill(&mut self, seq: u64, value: T) -> bool {
        self.fill_span(seq, 1, value)
    }

    /// Fill the `n` reserved positions from `seq` on with one value (released when
    /// the first is due, standing for all of them). False, and nothing stored, if
    /// any of them is unknown or already filled.
    pub fn fill_span(&mut self, seq: u64, n: usize, value: T) -> bool {
        let Some(i) = seq.checked_sub(self.base).map(|i| i as usize) else {
            return false;
        };
        if n == 0
            || i.checked_add(n).is_none_or(|end| end > self.slots.len())
            || !self.slots.range(i..i + n).all(|s| matches!(s, Slot::Open))
        {
            return false;
        }
        self.slots[i] = Slot::Filled(value);
        for s in self.slots.range_mut(i + 1..i + n) {
            *s = Slot::Covered;
        }
        true
    }

    /// If `seq` is the next position to be released, consume it without storing a
    /// value (the caller writes the value out directly) and return true.
    pub fn take_next(&mut self, seq: u64) -> bool {
        self.take_next_span(seq, 1)
    }

    /// [`Reorder::take_next`] for the `n` positions from `seq` on, all open.
    pub fn take_next_span(&mut self, seq: u64, n: usize) -> bool {
        if seq != self.base
            || n == 0
            || n > self.slots.len()
            || !self.slots.range(..n).all(|s| matches!(s, Slot::Open))
        {
            return false;
        }
        self.slots.drain(..n);
        self.base += n as u64;
        true
    }

    /// The next value in order, if it is ready (with the positions it covers).
    pub fn pop_ready(&mut self) -> Option<T> {
        if !matches!(self.slots.front(), Some(Slot::Filled(_))) {
            return None;
        }
        let Some(Slot::Filled(v)) = self.slots.pop_front() else {
            return None;
        };
        self.base += 1;
        while matches!(self.slots.front(), Some(Slot::Covered)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(v)
    }

    /// Positions reserved and not yet popped.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_reservation_order() {
        let mut r = Reorder::default();
        let a = r.reserve();
        let b = r.reserve();
        let c = r.reserve();
        assert!(r.fill(c, "c"));
        assert_eq!(r.pop_ready(), None);
        assert!(r.fill(a, "a"));
        assert_eq!(r.pop_ready(), Some("a"));
        assert_eq!(r.pop_ready(), None);
        assert!(r.fill(b, "b"));
        assert_eq!(r.pop_ready(), Some("b"));
        assert_eq!(r.pop_ready(), Some("c"));
        assert!(r.is_empty());
        let d = r.reserve();
        assert_eq!(d, 3);
    }

    #[test]
    fn take_next_skips_storage_only_for_the_front() {
        let mut r = Reorder::default();
        let a = r.reserve();
        let b = r.reserve();
        assert!(!r.take_next(b));
        assert!(r.fill(b, "b"));
        assert!(r.take_next(a));
        assert_eq!(r.pop_ready(), Some("b"));
        assert!(r.is_empty());
    }

    #[test]
    fn double_and_stale_fills_are_refused() {
        let mut r = Reorder::default();
        let a = r.reserve();
        assert!(r.fill(a, 1));
        assert!(!r.fill(a, 2));
        assert_eq!(r.pop_ready(), Some(1));
        assert!(!r.fill(a, 3));
        assert!(!r.fill(99, 3));
    }

    #[test]
    fn spans_stand_for_their_positions() {
        let mut r = Reorder::default();
        let a = r.reserve();
        let b = r.reserve();
        r.reserve();
        r.reserve();
        let e = r.reserve();
        assert_eq!(r.next_seq(), 5);
        // b..=d as one value; e alone; then a direct.
        assert!(!r.fill_span(b, 5, "x"), "past the end");
        assert!(r.fill_span(b, 3, "bcd"));
        assert!(!r.fill(b + 1, "c"), "covered");
        assert!(!r.take_next_span(a, 2), "b is filled");
        assert!(r.fill(e, "e"));
        assert_eq!(r.pop_ready(), None);
        assert!(r.take_next_span(a, 1));
        assert_eq!(r.pop_ready(), Some("bcd"));
        assert_eq!(r.pop_ready(), Some("e"));
        assert!(r.is_empty());
        let f = r.reserve();
        r.reserve();
        assert!(r.take_next_span(f, 2));
        assert_eq!(r.next_seq(), 7);
    }
}
