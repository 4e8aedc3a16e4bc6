//! Carrying out a [`Launch`] with std's fork-based `Command`: the way outside Linux
//! (no `clone`), and in the unit tests the reference the `clone` spawn is compared
//! with. std does the stdio, cwd, process group, signals and `execvp`; orchd's own
//! steps run in `pre_exec`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::Launch;
use crate::sys;

/// As `vfork::start`: `stdio` as fds 0 to 2, `extra` on the number given; the pid
/// once the program runs, or why it could not.
pub(super) fn start(
    launch: &Launch,
    stdio: [OwnedFd; 3],
    extra: Option<(BorrowedFd<'_>, RawFd)>,
) -> io::Result<u32> {
    let mut cmd = Command::new(&launch.program);
    cmd.args(launch.args)
        .current_dir(launch.cwd)
        .process_group(0);
    for (k, v) in &launch.env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let [stdin, stdout, stderr] = stdio;
    cmd.stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    let creds = launch.creds;
    let extra = extra.map(|(fd, target)| (fd.as_raw_fd(), target));
    let parent = std::process::id();
    // orchd raised its own open-file limit; the process gets the one orchd was given.
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
            match extra {
                Some((fd, target)) => sys::child_install_fd(fd, target),
                None => Ok(()),
            }
        });
    }
    // The `Child` is dropped without waiting: orchd reaps with waitpid(-1), after
    // which it could only fail with ECHILD.
    Ok(cmd.spawn()?.id())
}
