//! The worker processes' I/O component: the process table (leaders by pid, groups
//! outliving their leader), reading worker pipes, writing worker stdins through
//! [`OutBuf`], and signalling process groups.
//!
//! It decides nothing and calls no other component: the shell (`supervise`) spawns
//! through it, feeds what it reports (exits, emptied groups, replies, log lines) to
//! the instance lifecycle, the router and the log, and performs what the lifecycle
//! decides with it (signal, watch a group, let a group linger).
//!
//! Invariants: an instance with a live leader is in `pids`; a group whose leader is
//! gone but whose members may live is either in `lingering` (it no longer belongs to
//! an instance: SIGKILL at its deadline) or in `awaiting_group` (its instance is
//! stopping and is told when it has emptied).

use std::collections::HashMap;
use std::io;

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};

use super::outbuf::OutBuf;
use crate::framing::{Fill, Frame, LineBuf};
use crate::sys::{self, Exit};

/// Worker log lines longer than this are split into several records.
pub const LOG_LINE_MAX: usize = 16 * 1024;
/// Replies longer than this are refused (like messages, SPEC 5).
pub const MAX_LINE: usize = 1024 * 1024;

/// The process table: leaders by pid, and groups outliving their leader.
#[derive(Debug, Default)]
pub struct Workers {
    /// Leader pid → instance key, for reaping.
    pub pids: HashMap<u32, usize>,
    /// Process groups left behind by a leader that exited: pgid → generation of its
    /// SIGKILL timer.
    pub lingering: HashMap<u32, u64>,
    /// Instances stopping whose leader is gone but whose group may not be: key, id
    /// (the key may be reused), pgid.
    awaiting_group: Vec<(usize, u64, u32)>,
    /// Running `exec` health probes: pid (= pgid) → its owner (the shell's tag).
    pub probes: HashMap<u32, ProbeOwner>,
    /// Probes reaped by [`Workers::reap`] and not yet taken by the shell.
    probe_exits: Vec<(ProbeOwner, Exit)>,
}

/// Whose `exec` probe a process is: instance key, instance id, probe id.
pub type ProbeOwner = (usize, u64, crate::health::probe::ProbeId);

impl Workers {
    /// Reap every exited child (SIGCHLDs merge: until nothing is left); returns the
    /// instance keys of the leaders among them, with how they exited.
    pub fn reap(&mut self) -> Vec<(usize, Exit)> {
        let mut exited = Vec::new();
        loop {
            match sys::reap_one() {
                Ok(Some((pid, exit))) => match self.pids.remove(&pid) {
                    Some(key) => exited.push((key, exit)),
                    None => match self.probes.remove(&pid) {
                        Some(owner) => self.probe_exits.push((owner, exit)),
                        None => log::debug!("reaped orphaned process {pid} ({exit})"),
                    },
                },
                Ok(None) => break,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    break;
                }
            }
        }
        exited
    }

    /// The `exec` probes reaped since the last call, with how they exited.
    pub fn take_probe_exits(&mut self) -> Vec<(ProbeOwner, Exit)> {
        std::mem::take(&mut self.probe_exits)
    }

    /// SIGKILL to the group of the running probe `pid` (it outlived its timeout, or
    /// its instance is gone); it is reaped like any child.
    pub fn kill_probe(&self, pid: u32) {
        if self.probes.contains_key(&pid) {
            if let Err(e) = sys::kill_group(pid, libc::SIGKILL) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    log::warn!("cannot kill health probe group {pid}: {e}");
                }
            }
        }
    }

    /// Group `pgid` outlives its leader; its SIGKILL timer has generation `gen`.
    pub fn linger(&mut self, pgid: u32, gen: u64) {
        self.lingering.insert(pgid, gen);
    }

    /// A lingering group's deadline (`gen`: of that timer) is here: SIGKILL to what
    /// is left of it.
    pub fn linger_over(&mut self, pgid: u32, gen: u64) {
        if self.lingering.get(&pgid) != Some(&gen) {
            return;
        }
        self.lingering.remove(&pgid);
        if sys::group_alive(pgid) {
            log::warn!("processes left in group {pgid} did not stop; sending KILL");
            let _ = sys::kill_group(pgid, libc::SIGKILL);
        }
    }

    /// Report when group `pgid` of instance `key` (`id`) has emptied.
    pub fn watch_group(&mut self, key: usize, id: u64, pgid: u32) {
        if !self.awaiting_group.contains(&(key, id, pgid)) {
            self.awaiting_group.push((key, id, pgid));
        }
    }

    /// After reaping: forget lingering groups that have emptied; returns the watched
    /// groups that have (key, id, pgid), and watches them no more.
    pub fn emptied_groups(&mut self) -> Vec<(usize, u64, u32)> {
        self.lingering.retain(|&pgid, _| sys::group_alive(pgid));
        let mut emptied = Vec::new();
        self.awaiting_group.retain(|&(key, id, pgid)| {
            let alive = sys::group_alive(pgid);
            if !alive {
                emptied.push((key, id, pgid));
            }
            alive
        });
        emptied
    }

    /// SIGKILL went to every group: nothing is watched or lingering any more.
    pub fn forget_groups(&mut self) {
        self.awaiting_group.clear();
        self.lingering.clear();
    }
}

/// A worker's stdout or stderr.
pub(super) struct PipeIn {
    pub rx: Receiver,
    pub token: Token,
    pub buf: LineBuf,
}

impl PipeIn {
    /// Read replies until the pipe would block; each run of complete lines (each with
    /// its `\n`), or "too long" in place of a line, goes to `each`. Returns whether the
    /// pipe is still open.
    pub fn read_replies(
        &mut self,
        label: &str,
        mut each: impl FnMut(Result<&[u8], &'static str>),
    ) -> bool {
        loop {
            match self.buf.fill(&mut self.rx) {
                Ok(Fill::Data(_)) => {
                    while let Some(frame) = self.buf.next_lines() {
                        each(match frame {
                            Frame::Line(l) => Ok(l),
                            Frame::TooLong => Err("reply too long"),
                        });
                    }
                }
                Ok(Fill::Eof) => return false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    log::warn!("{label}: reading stdout: {e}");
                    return false;
                }
            }
        }
    }

    /// Read log output until the pipe would block; each line (a very long one in
    /// pieces) goes to `each`. Returns whether the pipe is still open.
    pub fn read_lines(&mut self, label: &str, mut each: impl FnMut(&[u8])) -> bool {
        loop {
            match self.buf.fill(&mut self.rx) {
                Ok(Fill::Data(_)) => {
                    while let Some(frame) = self.buf.next_frame() {
                        if let Frame::Line(l) = frame {
                            each(l);
                        }
                    }
                    if self.buf.partial_len() >= LOG_LINE_MAX {
                        if let Some(piece) = self.buf.take_partial() {
                            each(&piece);
                        }
                    }
                }
                Ok(Fill::Eof) => return false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    log::warn!("{label}: reading output: {e}");
                    return false;
                }
            }
        }
    }
}

/// A worker's stdin.
pub(super) struct PipeOut {
    pub tx: Sender,
    pub token: Token,
    /// Bytes not yet written.
    pub out: OutBuf,
}

impl PipeOut {
    /// Write what the pipe takes; poll it for WRITABLE only while something is left.
    /// Returns false when the pipe broke (the worker closed stdin or died): the
    /// caller closes it.
    pub fn flush(&mut self, registry: &Registry, label: &str) -> bool {
        let tx = &mut self.tx;
        let done = self.out.flush(|b| io::Write::write(tx, b));
        if let Some(e) = done.error {
            // EPIPE: the worker closed stdin or died; waitpid will tell which, and the
            // in-flight messages are redelivered then.
            if e.kind() != io::ErrorKind::BrokenPipe {
                log::warn!("{label}: writing to stdin: {e}");
            } else {
                log::debug!("{label}: stdin closed by the worker");
            }
            return false;
        }
        let (tx, token) = (&mut self.tx, self.token);
        let rewatch = self.out.rewatch(
            done.want_write(),
            Interest::WRITABLE,
            Interest::READABLE,
            |i| registry.reregister(tx, token, i),
        );
        if let Err(e) = rewatch {
            log::warn!("cannot change interest of {token:?}: {e}");
        }
        true
    }
}

/// Shut down the writing direction of `tx` when it is a socket (a `node` worker's
/// channel, whose reader holds a second fd): the worker reads EOF. A pipe is
/// closed by dropping it; shutdown(2) on it fails with ENOTSOCK, which is ignored.
pub(super) fn shutdown_write(tx: &Sender) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on an fd we own changes no memory.
    let _ = unsafe { libc::shutdown(tx.as_raw_fd(), libc::SHUT_WR) };
}

/// Send `stop_signal` to a group, then SIGCONT: a stopped (SIGSTOP, ^Z) process
/// only acts on the stop signal once continued, and would otherwise sit out
/// `stop_timeout` until SIGKILL. A `stop_signal` of STOP itself is left alone.
pub(super) fn signal_group_to_stop(pgid: u32, signal: i32) -> io::Result<()> {
    sys::kill_group(pgid, signal)?;
    if signal != libc::SIGSTOP && signal != libc::SIGCONT {
        sys::kill_group(pgid, libc::SIGCONT)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe_in(max: usize) -> (Sender, PipeIn) {
        let (tx, rx) = mio::unix::pipe::new().expect("pipe");
        let p = PipeIn {
            rx,
            token: Token(0),
            buf: LineBuf::new(max),
        };
        (tx, p)
    }

    #[test]
    fn replies_are_read_in_runs_and_an_overlong_one_is_refused() {
        let (mut tx, mut p) = pipe_in(8);
        tx.write_all(b"one\n1\n0123456789\ntwo\npart")
            .expect("write");
        let mut got = Vec::new();
        let open = p.read_replies("w[0]", |r| got.push(r.map(<[u8]>::to_vec)));
        assert!(open);
        assert_eq!(
            got,
            [
                Ok(b"one\n1\n".to_vec()),
                Err("reply too long"),
                Ok(b"two\n".to_vec())
            ]
        );
        // The writer closes: EOF, the unterminated rest stays for the caller.
        drop(tx);
        assert!(!p.read_replies("w[0]", |r| panic!("{r:?}")));
        assert_eq!(p.buf.take_partial(), Some(b"part".to_vec()));
    }

    #[test]
    fn a_log_line_past_the_limit_comes_in_pieces() {
        let (mut tx, mut p) = pipe_in(usize::MAX);
        let long = vec![b'x'; LOG_LINE_MAX + 10];
        tx.write_all(b"short\n").expect("write");
        tx.write_all(&long).expect("write");
        let mut got = Vec::new();
        assert!(p.read_lines("w[0]", |l| got.push(l.len())));
        assert_eq!(got, [5, LOG_LINE_MAX + 10]);
    }

    #[test]
    fn stdin_is_polled_for_writable_only_while_output_waits_and_a_broken_pipe_says_so() {
        let poll = mio::Poll::new().expect("poll");
        let (mut tx, mut rx) = mio::unix::pipe::new().expect("pipe");
        poll.registry()
            .register(&mut tx, Token(1), Interest::READABLE)
            .expect("register");
        let mut p = PipeOut {
            tx,
            token: Token(1),
            out: OutBuf::new(),
        };
        // More than the pipe holds: some waits, WRITABLE is wanted.
        p.out.push(&vec![b'm'; 1 << 20]);
        assert!(p.flush(poll.registry(), "w[0]"));
        assert!(p.out.polled() && !p.out.is_empty());
        // The reader takes it all: nothing waits, WRITABLE is dropped.
        let mut sink = vec![0; 1 << 20];
        while !p.out.is_empty() {
            let _ = std::io::Read::read(&mut rx, &mut sink);
            assert!(p.flush(poll.registry(), "w[0]"));
        }
        assert!(!p.out.polled());
        // The reader is gone: the pipe is broken.
        drop(rx);
        p.out.push(b"late\n");
        assert!(!p.flush(poll.registry(), "w[0]"));
        assert!(p.out.is_empty());
    }
}
