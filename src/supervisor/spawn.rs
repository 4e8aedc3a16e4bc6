//! Starting one instance: its own process group, `ORCHD_POOL`/`ORCHD_INSTANCE`, the
//! pool's cwd and env, pipes for stdout/stderr (and stdin when a route targets the
//! pool), the parent-death signal, the pool's user/group when orchd is root, and the
//! soft open-file limit orchd was started with (orchd raises its own).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use mio::unix::pipe::{Receiver, Sender};

use crate::config::Pool;
use crate::protocol::{node, Stdin, WorkerIo};
use crate::sys;

/// A freshly spawned instance: its pid (= its process group id) and its pipes, all
/// non-blocking. The `std::process::Child` is dropped on purpose: orchd reaps with
/// `waitpid(-1)`, after which `Child` could only fail with ECHILD.
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
    let mut cmd = command(pool, argv, index, creds, None)?;
    cmd.env("ORCHD_PID", worker.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Dropped without waiting: the loop reaps it with waitpid(-1).
    Ok(cmd.spawn()?.id())
}

/// `argv` as a process of instance `index` of `pool`: its cwd, env and credentials,
/// its own process group, the parent-death signal, orchd's original open-file limit,
/// and `channel_fd` (a `node` worker's end of its IPC channel) on NODE_CHANNEL_FD.
fn command(
    pool: &Pool,
    argv: &[String],
    index: u32,
    creds: Credentials,
    channel_fd: Option<RawFd>,
) -> io::Result<Command> {
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
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&pool.cwd)
        .envs(&pool.env)
        .env("ORCHD_POOL", &pool.name)
        .env("ORCHD_INSTANCE", index.to_string())
        .process_group(0);
    let parent = std::process::id();
    // orchd raised its own open-file limit; the worker gets the one orchd was given.
    let nofile = sys::original_nofile_soft_limit();
    // SAFETY: the closure only makes async-signal-safe syscalls (getrlimit,
    // setrlimit, prctl, getppid, setgroups, setgid, setuid, dup2, fcntl) and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            sys::child_restore_nofile_limit(nofile)?;
            // Credentials first: the kernel clears the parent-death signal when the
            // uid or gid changes, so setting it before would leave it unset.
            sys::child_set_ids(creds.uid, creds.gid)?;
            sys::child_set_parent_death_signal(parent)?;
            match channel_fd {
                Some(fd) => sys::child_install_fd(fd, node::CHANNEL_FD),
                None => Ok(()),
            }
        });
    }
    Ok(cmd)
}

/// Start instance `index` of `pool` with the fds `io` says (SPEC 4, 12).
pub fn spawn(pool: &Pool, index: u32, io: WorkerIo, creds: Credentials) -> io::Result<Spawned> {
    // A `node` worker's IPC channel: a socket pair (both ends close-on-exec); the
    // child's end is installed on NODE_CHANNEL_FD just before exec.
    let channel = match io.channel {
        Some(_) => Some(UnixStream::pair()?),
        None => None,
    };
    let child_fd = channel.as_ref().map(|(_, child)| child.as_raw_fd());
    let mut cmd = command(pool, &pool.command.argv(), index, creds, child_fd)?;
    cmd.stdin(if io.stdin == Stdin::Pipe {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if channel.is_some() {
        cmd.envs(node::CHANNEL_ENV);
    }
    for var in io.env_removed() {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn()?;
    // orchd's copy of the child's end goes now: the worker's exit is then EOF.
    let ours = channel.map(|(ours, _child_end)| ours);
    let pid = child.id();
    match take_pipes(&mut child).and_then(|p| with_channel(p, ours)) {
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

fn take_pipes(child: &mut std::process::Child) -> io::Result<Pipes> {
    let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
        (Some(o), Some(e)) => (o, e),
        _ => return Err(io::Error::other("child pipes missing")),
    };
    let stdout = Receiver::from(stdout);
    let stderr = Receiver::from(stderr);
    stdout.set_nonblocking(true)?;
    stderr.set_nonblocking(true)?;
    let stdin = match child.stdin.take() {
        Some(i) => {
            let s = Sender::from(i);
            s.set_nonblocking(true)?;
            Some(s)
        }
        None => None,
    };
    Ok((stdin, stdout, stderr))
}
