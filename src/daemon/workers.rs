//! The worker processes' I/O: spawning, their pipes (replies and log output from
//! stdout/stderr, messages to stdin through [`OutBuf`]), reaping, and the process
//! groups left behind by a leader that exited.
//!
//! It decides nothing: what happens to an instance is decided by its lifecycle
//! (`supervise`), to which this reports spawns and exits, and which tells it what to
//! signal and what to watch. Invariants: an instance with a live leader is in
//! `pids`; a group whose leader is gone but whose members may live is either in
//! `lingering` (it no longer belongs to an instance: SIGKILL at its deadline) or in
//! `awaiting_group` (its instance is stopping and is told when it has emptied).

use std::collections::HashMap;
use std::io;
use std::time::Instant;

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Token};

use super::control::Control;
use super::logs::Stream;
use super::outbuf::OutBuf;
use super::supervise::Instance;
use super::{Daemon, IoTarget};
use crate::framing::{log_pieces, Fill, Frame, LineBuf};
use crate::supervisor::lifecycle::Event;
use crate::supervisor::spawn::{self, Credentials};
use crate::sys::{self, Exit};

/// Worker log lines longer than this are split into several records.
const LOG_LINE_MAX: usize = 16 * 1024;
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
    pub awaiting_group: Vec<(usize, u64, u32)>,
}

pub(super) struct PipeIn {
    pub rx: Receiver,
    pub token: Token,
    pub buf: LineBuf,
}

pub(super) struct PipeOut {
    pub tx: Sender,
    pub token: Token,
    /// Bytes not yet written.
    pub out: OutBuf,
}

impl Daemon {
    /// Spawn an instance's process now and report how that went to its lifecycle.
    pub(super) fn spawn_instance(&mut self, key: usize) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let spec = inst.spec.clone();
        let result = Credentials::resolve(&spec)
            .and_then(|creds| spawn::spawn(&spec, inst.index, inst.stdin_pipe, creds));
        match result {
            Ok(sp) => {
                let pid = sp.pid;
                if let Err(e) = self.attach_pipes(key, sp) {
                    log::error!(
                        "{}: cannot watch the pipes of pid {pid}: {e}; killing it",
                        self.instances[key].label
                    );
                    let _ = sys::kill_group(pid, libc::SIGKILL);
                }
                self.workers.pids.insert(pid, key);
                self.feed(key, Event::Spawned { pid });
            }
            Err(e) => {
                let why = format!(
                    "failed to start {} in {}: {e}",
                    spec.command,
                    spec.cwd.display()
                );
                inst.spawn_error = Some(format!("spawn: {e}"));
                self.feed(key, Event::SpawnFailed { why });
            }
        }
    }

    /// Register a new process's pipes. Each is stored on the instance as soon as it
    /// is registered, so that on a failure the normal close path (after the caller
    /// kills the process and it is reaped) releases what was registered.
    fn attach_pipes(&mut self, key: usize, sp: spawn::Spawned) -> io::Result<()> {
        let mut stdout = sp.stdout;
        let token = self.register_io(&mut stdout, IoTarget::Stdout(key), Interest::READABLE)?;
        let inst = &mut self.instances[key];
        let max = if inst.stdin_pipe {
            MAX_LINE
        } else {
            usize::MAX
        };
        inst.stdout = Some(PipeIn {
            rx: stdout,
            token,
            buf: LineBuf::new(max),
        });
        let mut stderr = sp.stderr;
        let token = self.register_io(&mut stderr, IoTarget::Stderr(key), Interest::READABLE)?;
        self.instances[key].stderr = Some(PipeIn {
            rx: stderr,
            token,
            buf: LineBuf::new(usize::MAX),
        });
        if let Some(mut tx) = sp.stdin {
            // WRITABLE interest is added only while output is pending.
            let token = self.register_io(&mut tx, IoTarget::Stdin(key), Interest::READABLE)?;
            self.instances[key].stdin = Some(PipeOut {
                tx,
                token,
                out: OutBuf::new(),
            });
        }
        Ok(())
    }

    /// Reap every exited child (SIGCHLDs merge: loop until nothing is left).
    pub(super) fn reap(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, exit))) => self.on_reaped(pid, exit),
                Ok(None) => break,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    break;
                }
            }
        }
        self.check_groups();
    }

    fn on_reaped(&mut self, pid: u32, exit: Exit) {
        let Some(key) = self.workers.pids.remove(&pid) else {
            log::debug!("reaped orphaned process {pid} ({exit})");
            return;
        };
        self.now = Instant::now();
        // Replies written before death are delivered before anything is redelivered.
        self.drain_worker_output(key);
        self.note_unread_input(key);
        self.close_worker_stdin(key);
        let group_alive = self
            .instances
            .get(key)
            .and_then(Instance::group)
            .is_some_and(sys::group_alive);
        self.feed(key, Event::Exited { exit, group_alive });
    }

    pub(super) fn on_group_timer(&mut self, pgid: u32, gen: u64) {
        if self.workers.lingering.get(&pgid) != Some(&gen) {
            return;
        }
        self.workers.lingering.remove(&pgid);
        if sys::group_alive(pgid) {
            log::warn!("processes left in group {pgid} did not stop; sending KILL");
            let _ = sys::kill_group(pgid, libc::SIGKILL);
        }
    }

    /// After reaping: forget groups that have emptied, and tell stopping instances
    /// whose group has.
    fn check_groups(&mut self) {
        self.workers
            .lingering
            .retain(|&pgid, _| sys::group_alive(pgid));
        let waiting = std::mem::take(&mut self.workers.awaiting_group);
        for (key, id, pgid) in waiting {
            if self.instances.get(key).is_none_or(|i| i.id != id) {
                continue;
            }
            if sys::group_alive(pgid) {
                self.workers.awaiting_group.push((key, id, pgid));
            } else {
                // Ignored unless it still waits for that group.
                self.feed(key, Event::GroupGone { pgid });
            }
        }
    }

    pub(super) fn close_worker_pipes_of(&mut self, mut inst: Instance) {
        for p in [inst.stdout.take(), inst.stderr.take()]
            .into_iter()
            .flatten()
        {
            let mut p = p;
            self.deregister_io(&mut p.rx, p.token);
        }
        if let Some(mut p) = inst.stdin.take() {
            self.deregister_io(&mut p.tx, p.token);
        }
    }

    pub(super) fn close_worker_stdin(&mut self, key: usize) {
        if let Some(mut p) = self.instances.get_mut(key).and_then(|i| i.stdin.take()) {
            self.deregister_io(&mut p.tx, p.token);
        }
    }

    /// After death: read what is left in stdout and stderr, then close them. A
    /// grandchild may hold a pipe open; what it writes later is not waited for.
    fn drain_worker_output(&mut self, key: usize) {
        self.on_worker_stdout(key);
        self.on_worker_stderr(key);
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let (out, err) = (inst.stdout.take(), inst.stderr.take());
        if let Some(p) = out {
            self.close_output_pipe(key, p, true);
        }
        if let Some(p) = err {
            self.close_output_pipe(key, p, false);
        }
    }

    /// Close a stdout/stderr pipe: an unterminated last line is logged, except on a
    /// routed stdout where it is a half-written reply and is discarded.
    fn close_output_pipe(&mut self, key: usize, mut pipe: PipeIn, stdout: bool) {
        if let (Some(rest), Some(inst)) = (pipe.buf.take_partial(), self.instances.get(key)) {
            if stdout && inst.stdin_pipe {
                log::warn!(
                    "{}: discarding a half-written reply of {} bytes",
                    inst.label,
                    rest.len()
                );
            } else if let Some(p) = self.pools.get(inst.pool) {
                let stream = if stdout {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                log_output(
                    &mut self.control,
                    &p.cfg.name,
                    inst.index,
                    &inst.label,
                    stream,
                    &rest,
                );
            }
        }
        self.deregister_io(&mut pipe.rx, pipe.token);
    }

    pub(super) fn on_worker_stderr(&mut self, key: usize) {
        let Some(mut pipe) = self.instances.get_mut(key).and_then(|i| i.stderr.take()) else {
            return;
        };
        let inst = &self.instances[key];
        let (label, index) = (inst.label.clone(), inst.index);
        let pool = &self.pools[inst.pool].cfg.name;
        let control = &mut self.control;
        let open = read_lines(&mut pipe, &label, |line| {
            log_output(control, pool, index, &label, Stream::Stderr, line)
        });
        self.put_back_pipe(key, pipe, open, false);
    }

    pub(super) fn on_worker_stdout(&mut self, key: usize) {
        let Some(mut pipe) = self.instances.get_mut(key).and_then(|i| i.stdout.take()) else {
            return;
        };
        let inst = &self.instances[key];
        let label = inst.label.clone();
        let open = if inst.stdin_pipe {
            loop {
                match pipe.buf.fill(&mut pipe.rx) {
                    Ok(Fill::Data(_)) => {
                        while let Some(frame) = pipe.buf.next_frame() {
                            let reply = match frame {
                                Frame::Line(l) => Ok(l),
                                Frame::TooLong => Err("reply too long"),
                            };
                            self.on_worker_reply(key, reply);
                        }
                    }
                    Ok(Fill::Eof) => break false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) => {
                        log::warn!("{label}: reading stdout: {e}");
                        break false;
                    }
                }
            }
        } else {
            let (index, pool) = (inst.index, &self.pools[inst.pool].cfg.name);
            let control = &mut self.control;
            read_lines(&mut pipe, &label, |line| {
                log_output(control, pool, index, &label, Stream::Stdout, line)
            })
        };
        self.put_back_pipe(key, pipe, open, true);
    }

    fn put_back_pipe(&mut self, key: usize, mut pipe: PipeIn, open: bool, stdout: bool) {
        match self.instances.get_mut(key) {
            Some(inst) if open => {
                pipe.buf.shrink();
                if stdout {
                    inst.stdout = Some(pipe);
                } else {
                    inst.stderr = Some(pipe);
                }
            }
            // EOF is not death: the process may live on; waitpid decides that.
            _ => self.close_output_pipe(key, pipe, stdout),
        }
    }

    /// Write queued messages to an instance's stdin; WRITABLE interest only while
    /// something is left.
    pub(super) fn flush_worker_stdin(&mut self, key: usize) {
        let Some(inst) = self.instances.get_mut(key) else {
            return;
        };
        let Some(p) = inst.stdin.as_mut() else {
            return;
        };
        let tx = &mut p.tx;
        let done = p.out.flush(|b| io::Write::write(tx, b));
        if let Some(e) = done.error {
            // EPIPE: the worker closed stdin or died; waitpid will tell which, and the
            // in-flight messages are redelivered then.
            if e.kind() != io::ErrorKind::BrokenPipe {
                log::warn!("{}: writing to stdin: {e}", inst.label);
            } else {
                log::debug!("{}: stdin closed by the worker", inst.label);
            }
            self.close_worker_stdin(key);
            return;
        }
        let want = done.want_write();
        if p.out.interest_changed(want) {
            let interest = if want {
                Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut p.tx, p.token, interest)
            {
                log::warn!("cannot change interest of {:?}: {e}", p.token);
            }
        }
    }

    pub(super) fn on_worker_stdin_writable(&mut self, key: usize) {
        self.flush_worker_stdin(key);
    }
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

/// Read a log pipe until it would block; returns whether it is still open.
fn read_lines(pipe: &mut PipeIn, label: &str, mut each: impl FnMut(&[u8])) -> bool {
    loop {
        match pipe.buf.fill(&mut pipe.rx) {
            Ok(Fill::Data(_)) => {
                while let Some(frame) = pipe.buf.next_frame() {
                    if let Frame::Line(l) = frame {
                        each(l);
                    }
                }
                if pipe.buf.partial_len() >= LOG_LINE_MAX {
                    if let Some(piece) = pipe.buf.take_partial() {
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

/// Log one line of worker output with the instance as target, and keep it in the
/// pool's log buffer.
fn log_output(
    control: &mut Control,
    pool: &str,
    index: u32,
    label: &str,
    stream: Stream,
    line: &[u8],
) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    for piece in log_pieces(line, LOG_LINE_MAX) {
        log::info!(target: label, "{piece}");
        control.record(pool, index, stream, piece.into_owned());
    }
}
