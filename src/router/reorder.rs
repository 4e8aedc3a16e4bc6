//! The per-client reorder buffer for `ordered = true`: replies leave in the order the
//! client sent the messages, whatever order the workers answer in. Its size is bounded
//! by the number of a client's messages awaiting replies, which the event loop caps.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct Reorder<T> {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<T>>,
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
        self.slots.push_back(None);
        self.base + self.slots.len() as u64 - 1
    }

    /// Fill a reserved position. Unknown or already filled positions are ignored and
    /// reported as false.
    pub fn fill(&mut self, seq: u64, value: T) -> bool {
        let Some(i) = seq.checked_sub(self.base) else {
            return false;
        };
        match self.slots.get_mut(i as usize) {
            Some(slot @ None) => {
                *slot = Some(value);
                true
            }
            _ => false,
        }
    }

    /// If `seq` is the next position to be released, consume it without storing a
    /// value (the caller writes the value out directly) and return true.
    pub fn take_next(&mut self, seq: u64) -> bool {
        if seq == self.base && matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
            return true;
        }
        false
    }

    /// The next value in order, if it is ready.
    pub fn pop_ready(&mut self) -> Option<T> {
        if matches!(self.slots.front(), Some(Some(_))) {
            self.base += 1;
            return self.slots.pop_front().flatten();
        }
        None
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
}
