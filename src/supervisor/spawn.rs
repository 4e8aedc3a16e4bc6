//! Starting one instance: its own process group, `ORCHD_POOL`/`ORCHD_INSTANCE`, the
//! pool's cwd and env, pipes for stdout/stderr (and stdin when a route targets the
//! pool), the parent-death signal, the pool's user/group when orchd is root, and the
//! soft open-file limit orchd was started with (orchd raises its own). `exec` health
//! probes are started the same way.
//!
//! Every start goes through one [`Launch`], carried out on Linux without copying
//! orchd (`spawn/vfork.rs`: `clone(CLONE_VM | CLONE_VFORK)`), elsewhere by std's
//! fork-based `Command` (`spawn/fork.rs`). Either way a failed `exec` is a failed
//! start, reported at once with the system's reason.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use mio::unix::pipe::{Receiver, Sender};

use crate::config::Pool;
use crate::protocol::{node, Stdin, WorkerIo};
use crate::sys;

#[cfg(any(not(target_os = "linux"), test))]
mod fork;
#[cfg(all(test, target_os = "linux"))]
mod tests;
#[cfg(target_os = "linux")]
mod vfork;

/// A freshly spawned instance: its pid (= its process group id) and its pipes, all
/// non-blocking. orchd reaps it with `waitpid(-1)`.
pub struct Spawned {
    pub pid: u32,
    /// Where messages are written: the stdin pipe, or orchd's end of a `node`
    /// worker's IPC channel.
    pub stdin: Option<Sender>,
    pub stdout: Receiver,
    pub stderr: Receiver,
    /// A `node` worker's IPC channel, read for replies: the same socket as `stdin`
    /// (a second fd for it, so that each direction is watched on its own).
    pub channel: Option<Receiver>,
}

/// Resolved credentials for a pool with `user`/`group` (only honoured as root).
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Credentials {
    pub fn resolve(pool: &Pool) -> io::Result<Credentials> {
        if !sys::is_root() || (pool.user.is_none() && pool.group.is_none()) {
            return Ok(Credentials::default());
        }
        let mut c = Credentials::default();
        if let Some(user) = &pool.user {
            let (uid, gid) = sys::lookup_user(user)?;
            c.uid = Some(uid);
            c.gid = Some(gid);
        }
        if let Some(group) = &pool.group {
            c.gid = Some(sys::lookup_group(group)?);
        }
        Ok(c)
    }
}

/// Prepare what starting processes needs, at start-up while orchd has few fds (on
/// Linux: the low fd numbers through which a child gets its fds, `spawn/vfork.rs`).
/// Never fails: without it, starts still work, a little slower.
pub fn prepare() {
    #[cfg(target_os = "linux")]
    vfork::reserve_slots();
}

/// An `exec` health probe of instance `index` (its worker's pid `worker`, in
/// `ORCHD_PID`): `argv` run like a worker (the pool's cwd, env, user and group, its
/// own process group) with no input or output. Returns its pid (= its group id).
pub fn spawn_probe(
    pool: &Pool,
    argv: &[String],
    index: u32,
    worker: u32,
    creds: Credentials,
) -> io::Result<u32> {
    let mut launch = Launch::new(pool, argv, index, creds)?;
    launch.set("ORCHD_PID", worker.to_string());
    // Started without waiting: the loop reaps it with waitpid(-1).
    launch.start([dev_null(false)?, dev_null(true)?, dev_null(true)?], None)
}

/// What a new process of instance `index` of `pool` is started with, all prepared
/// before it exists: its program and arguments, its cwd, the changes to orchd's
/// environment (the pool's `env`, `ORCHD_POOL`, `ORCHD_INSTANCE`, then the caller's),
/// and its credentials. [`Launch::start`] adds its own process group, the
/// parent-death signal, orchd's original open-file limit and the fds.
struct Launch<'a> {
    /// Made absolute when it is relative with a `/`; otherwise looked up in the PATH
    /// of the process's environment, as `execvp` does.
    program: OsString,
    args: &'a [String],
    cwd: &'a Path,
    /// Changes to orchd's environment, in order: a later one wins; `None` removes.
    env: Vec<(OsString, Option<OsString>)>,
    creds: Credentials,
}

impl<'a> Launch<'a> {
    fn new(
        pool: &'a Pool,
        argv: &'a [String],
        index: u32,
        creds: Credentials,
    ) -> io::Result<Launch<'a>> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        // A relative program path with a slash ("./worker.sh") means: relative to the
        // instance's cwd, as it would in a shell started there.
        let program = if program.contains('/') && Path::new(program).is_relative() {
            pool.cwd.join(program).into_os_string()
        } else {
            program.into()
        };
        let mut launch = Launch {
            program,
            args,
            cwd: &pool.cwd,
            env: Vec::with_capacity(pool.env.len() + 4),
            creds,
        };
        for (k, v) in &pool.env {
            launch.set(k, v);
        }
        launch.set("ORCHD_POOL", &pool.name);
        launch.set("ORCHD_INSTANCE", index.to_string());
        Ok(launch)
    }

    fn set(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.env.push((key.into(), Some(value.into())));
    }

    fn remove(&mut self, key: impl Into<OsString>) {
        self.env.push((key.into(), None));
    }

    /// Start it with `stdio` as its fds 0 to 2 and `extra` (an fd, the number it
    /// gets) surviving exec; orchd's copies of `stdio` are closed here. Returns the
    /// pid once the program runs: a failed `exec` (or `chdir`, or credential change)
    /// is an error, with the reason the system gave.
    fn start(self, stdio: [OwnedFd; 3], extra: Option<(BorrowedFd<'_>, RawFd)>) -> io::Result<u32> {
        #[cfg(target_os = "linux")]
        return vfork::start(&self, stdio, extra);
        #[cfg(not(target_os = "linux"))]
        return fork::start(&self, stdio, extra);
    }
}

/// Start instance `index` of `pool` with the fds `io` says (SPEC 4, 12).
pub fn spawn(pool: &Pool, index: u32, io: WorkerIo, creds: Credentials) -> io::Result<Spawned> {
    let argv = pool.command.argv();
    let mut launch = Launch::new(pool, &argv, index, creds)?;
    // A `node` worker's IPC channel: a socket pair (both ends close-on-exec); the
    // child's end is installed on NODE_CHANNEL_FD.
    let channel = match io.channel {
        Some(_) => {
            for (k, v) in node::CHANNEL_ENV {
                launch.set(k, v);
            }
            Some(UnixStream::pair()?)
        }
        None => None,
    };
    for var in io.env_removed() {
        launch.remove(*var);
    }
    let (stdin_child, stdin) = if io.stdin == Stdin::Pipe {
        let (r, w) = std::io::pipe()?;
        (OwnedFd::from(r), Some(OwnedFd::from(w)))
    } else {
        (dev_null(false)?, None)
    };
    let (stdout, stdout_child) = std::io::pipe()?;
    let (stderr, stderr_child) = std::io::pipe()?;
    let extra = channel
        .as_ref()
        .map(|(_, child)| (child.as_fd(), node::CHANNEL_FD));
    let pid = launch.start(
        [stdin_child, stdout_child.into(), stderr_child.into()],
        extra,
    )?;
    // orchd's copy of the child's end goes now: the worker's exit is then EOF.
    let ours = channel.map(|(ours, _child_end)| ours);
    match take_pipes(stdin, stdout.into(), stderr.into()).and_then(|p| with_channel(p, ours)) {
        Ok((stdin, stdout, stderr, channel)) => Ok(Spawned {
            pid,
            stdin,
            stdout,
            stderr,
            channel,
        }),
        Err(e) => {
            // Never leave a running process we cannot talk to.
            let _ = sys::kill_group(pid, libc::SIGKILL);
            Err(e)
        }
    }
}

/// `/dev/null` for reading (a stdin) or writing (a stdout or stderr), as std's
/// `Stdio::null` opens it (close-on-exec).
fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(file.into())
}

type Pipes = (Option<Sender>, Receiver, Receiver);

/// orchd's end of the channel, non-blocking, as the writer (in place of a stdin
/// pipe) and, through a second fd, the reader of replies.
fn with_channel(
    (stdin, stdout, stderr): Pipes,
    ours: Option<UnixStream>,
) -> io::Result<(Option<Sender>, Receiver, Receiver, Option<Receiver>)> {
    let Some(ours) = ours else {
        return Ok((stdin, stdout, stderr, None));
    };
    ours.set_nonblocking(true)?;
    let reader = ours.try_clone()?;
    let tx = Sender::from(OwnedFd::from(ours));
    let rx = Receiver::from(OwnedFd::from(reader));
    Ok((Some(tx), stdout, stderr, Some(rx)))
}

fn take_pipes(stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Pipes> {
    let stdout = Receiver::from(stdout);
    let stderr = Receiver::from(stderr);
    stdout.set_nonblocking(true)?;
    stderr.set_nonblocking(true)?;
    let stdin = match stdin {
        Some(fd) => {
            let s = Sender::from(fd);
            s.set_nonblocking(true)?;
            Some(s)
        }
        None => None,
    };
    Ok((stdin, stdout, stderr))
}
