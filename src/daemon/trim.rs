//! Giving back the capacity of output buffers that went idle. Client and worker
//! stdin buffers ([`super::outbuf::OutBuf::holding`]) keep their capacity when a
//! flush empties them, so that a busy stream does not map, fault in and unmap a
//! large buffer every loop turn (measured: about 230 mmap/munmap pairs of 256 KiB per
//! million lines over TCP). The shell notes each buffer that became empty with more
//! than [`super::outbuf::KEEP`] bytes, and one timer [`TRIM_AFTER`] later frees the
//! ones still empty; busy ones are let go, and the flush that empties them notes
//! them again (a peer that stops reading costs no wake-ups). A client sending
//! bulk data keeps its read buffer between readiness events the same way. With no
//! buffer holding memory, no timer is armed: an idle orchd stays idle.

use std::time::Duration;

use super::{Daemon, TimerKey};

/// How long an emptied buffer keeps its capacity, at least.
pub(super) const TRIM_AFTER: Duration = Duration::from_millis(100);

/// An output buffer to look at when the trim timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Client(usize),
    Stdin(usize),
    /// A bulk client's read buffer (noted once; see `Conn::inbuf_held`).
    ClientInput(usize),
}

/// Output buffers that may hold idle capacity, and whether the timer is armed.
#[derive(Debug, Default)]
pub(super) struct Trims {
    held: Vec<Held>,
    armed: bool,
}

impl Daemon {
    /// After a flush of `which`: if its buffer became empty holding capacity, look
    /// at it again in [`TRIM_AFTER`].
    pub(super) fn trim_note(&mut self, which: Held) {
        let wants = match which {
            Held::Client(k) => self.net.clients.get_mut(k).map(|c| c.out.wants_trim()),
            Held::ClientInput(_) => Some(true),
            Held::Stdin(k) => self
                .instances
                .get_mut(k)
                .and_then(|i| i.stdin.as_mut())
                .map(|p| p.out.wants_trim()),
        };
        if wants != Some(true) {
            return;
        }
        self.trims.held.push(which);
        self.trim_arm();
    }

    fn trim_arm(&mut self) {
        if !self.trims.armed && !self.trims.held.is_empty() {
            self.trims.armed = true;
            self.timers.arm(self.now + TRIM_AFTER, TimerKey::Trim);
        }
    }

    /// The trim timer: free the capacity of buffers still empty; those in use
    /// again are noted anew by the flush that empties them. A key reused meanwhile
    /// is harmless: `trim` only frees what an empty buffer holds.
    pub(super) fn on_trim_timer(&mut self) {
        self.trims.armed = false;
        for which in std::mem::take(&mut self.trims.held) {
            match which {
                Held::Client(k) => {
                    if let Some(c) = self.net.clients.get_mut(k) {
                        c.out.trim();
                    }
                }
                Held::ClientInput(k) => {
                    if let Some(c) = self.net.clients.get_mut(k) {
                        c.inbuf.release();
                        c.inbuf_held = false;
                    }
                }
                Held::Stdin(k) => {
                    if let Some(p) = self.instances.get_mut(k).and_then(|i| i.stdin.as_mut()) {
                        p.out.trim();
                    }
                }
            }
        }
    }
}
