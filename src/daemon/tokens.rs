//! I/O tokens: every fd the loop watches (beyond the fixed singletons) gets a token
//! that maps to its owner ([`IoTarget`]); orchd's stderr is watched under `LOG` only
//! while log output waits for room.

use std::io;

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use slab::Slab;

use super::{Daemon, IoTarget, FIRST_IO, LOG};

impl Daemon {
    /// Write what stderr takes of the log backlog; poll it for WRITABLE only while
    /// some is left (logging never blocks the loop, see `logging`). Must not log.
    pub(super) fn flush_log(&mut self) {
        let want = crate::logging::flush();
        if want == self.log_fd {
            return;
        }
        if let Some(fd) = self.log_fd.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        if let Some(fd) = want {
            let registered =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&fd), LOG, Interest::WRITABLE);
            // Not pollable (should not happen for the fds `logging` returns): the
            // backlog is then written whenever something else wakes the loop.
            if registered.is_ok() {
                self.log_fd = Some(fd);
            }
        }
    }

    pub(super) fn register_io<S: mio::event::Source + ?Sized>(
        &mut self,
        source: &mut S,
        target: IoTarget,
        interest: Interest,
    ) -> io::Result<Token> {
        register(&self.poll, &mut self.io, source, target, interest)
    }

    pub(super) fn deregister_io<S: mio::event::Source + ?Sized>(
        &mut self,
        source: &mut S,
        token: Token,
    ) {
        deregister(&self.poll, &mut self.io, source, token)
    }
}

/// Register `source` under a new I/O token for `target` (the one implementation
/// behind [`Daemon::register_io`], for callers holding another part of the daemon).
pub(super) fn register<S: mio::event::Source + ?Sized>(
    poll: &Poll,
    io: &mut Slab<IoTarget>,
    source: &mut S,
    target: IoTarget,
    interest: Interest,
) -> io::Result<Token> {
    let entry = io.vacant_entry();
    let token = Token(entry.key() + FIRST_IO);
    poll.registry().register(source, token, interest)?;
    entry.insert(target);
    Ok(token)
}

/// Stop watching `source` and free its token (see [`register`]).
pub(super) fn deregister<S: mio::event::Source + ?Sized>(
    poll: &Poll,
    io: &mut Slab<IoTarget>,
    source: &mut S,
    token: Token,
) {
    if let Err(e) = poll.registry().deregister(source) {
        log::debug!("deregister {token:?}: {e}");
    }
    if token.0 >= FIRST_IO && io.contains(token.0 - FIRST_IO) {
        io.remove(token.0 - FIRST_IO);
    }
}
