//! Starting one instance: its own process group, `ORCHD_POOL`/`ORCHD_INSTANCE`, the
//! pool's cwd and env, pipes for stdout/stderr (and stdin when a route targets the
//! pool), the parent-death signal, the pool's user/group when orchd is root, and the
//! soft open-file limit orchd was started with (orchd raises its own). The process
//! is started without copying orchd (see `spawn/vfork.rs`); a failed `exec` is a
//! failed spawn, reported at once.

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use mio::unix::pipe::{Receiver, Sender};

use crate::config::Pool;
use crate::sys;

mod vfork;

/// A freshly spawned instance: its pid (= its process group id) and its pipes, all
/// non-blocking. orchd reaps it with `waitpid(-1)`.
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<Sender>,
    pub stdout: Receiver,
    pub stderr: Receiver,
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

pub fn spawn(pool: &Pool, index: u32, with_stdin: bool, creds: Credentials) -> io::Result<Spawned> {
    let argv = pool.command.argv();
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
    let mut vars: Vec<(OsString, OsString)> =
        pool.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    vars.push(("ORCHD_POOL".into(), pool.name.clone().into()));
    vars.push(("ORCHD_INSTANCE".into(), index.to_string().into()));
    let plan = vfork::Plan::new(&program, args, &vars, &pool.cwd, creds)?;
    let (stdin_child, stdin) = if with_stdin {
        let (r, w) = vfork::pipe()?;
        (r, Some(w))
    } else {
        (vfork::dev_null()?, None)
    };
    let (stdout, stdout_child) = vfork::pipe()?;
    let (stderr, stderr_child) = vfork::pipe()?;
    let pid = plan.run([stdin_child, stdout_child, stderr_child])?;
    match take_pipes(stdin, stdout, stderr) {
        Ok((stdin, stdout, stderr)) => Ok(Spawned {
            pid,
            stdin,
            stdout,
            stderr,
        }),
        Err(e) => {
            // Never leave a running process we cannot talk to.
            let _ = sys::kill_group(pid, libc::SIGKILL);
            Err(e)
        }
    }
}

type Pipes = (Option<Sender>, Receiver, Receiver);

fn take_pipes(stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Pipes> {
    // SAFETY: each fd is a pipe end we own; ownership moves into the mio type.
    let (stdout, stderr) = unsafe {
        (
            Receiver::from_raw_fd(stdout.into_raw_fd()),
            Receiver::from_raw_fd(stderr.into_raw_fd()),
        )
    };
    stdout.set_nonblocking(true)?;
    stderr.set_nonblocking(true)?;
    let stdin = match stdin {
        Some(fd) => {
            // SAFETY: as above.
            let s = unsafe { Sender::from_raw_fd(fd.into_raw_fd()) };
            s.set_nonblocking(true)?;
            Some(s)
        }
        None => None,
    };
    Ok((stdin, stdout, stderr))
}
