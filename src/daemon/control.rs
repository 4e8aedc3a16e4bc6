//! Control socket (stub).
use super::Daemon;
use std::io;

#[derive(Default)]
pub struct Control {}

impl Daemon {
    pub(super) fn control_open(&mut self) -> io::Result<()> {
        Ok(())
    }
    pub(super) fn control_accept(&mut self) {}
    pub(super) fn on_control_conn(&mut self, _c: usize, _e: &mio::event::Event) {}
    pub(super) fn control_close(&mut self) {}
}
