//! Reload (stub).
use super::Daemon;

#[derive(Default)]
pub struct Watcher {}

impl Daemon {
    pub(super) fn watch_start(&mut self) {}
    pub(super) fn on_wake(&mut self) {}
    pub(super) fn on_debounce(&mut self, _g: u64) {}
    pub(super) fn reload_from_disk(&mut self, _why: &str) {}
}
