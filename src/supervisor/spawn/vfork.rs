//! Starting a process without copying orchd: `clone(CLONE_VM | CLONE_VFORK)`, as
//! glibc's `posix_spawn` does, with the steps std's `Command` performs between fork
//! and exec plus orchd's own (open-file limit, user and group, parent-death signal).
//!
//! A `fork` copies orchd's page tables for the child, which throws them away again
//! at `exec`; with 1,000 workers that copy was most of a spawn's cost. Here the child
//! borrows orchd's memory and stack-less state until its `exec`, while orchd waits
//! (CLONE_VFORK), so a failed `exec` is still reported at once, as a failed start.
//!
//! Everything the child needs is prepared before the clone ([`Plan`]); the child
//! only makes system calls on it. It must not allocate, lock or touch anything a
//! signal handler or another thread could hold: all signals are blocked around the
//! clone, and the child resets every handled signal to its default before it
//! unblocks them. Credentials change through raw system calls: glibc's `setuid`
//! would try to change the credentials of orchd's other threads.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicI32, Ordering};

use super::Credentials;
use crate::sys;

/// The child's stack: it only makes system calls.
const STACK: usize = 64 * 1024;

/// What the child does, all prepared by the parent.
pub(super) struct Plan {
    /// Where to look for the program, in order (one entry when it has a `/`).
    paths: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    creds: Credentials,
    nofile: Option<libc::rlim_t>,
    parent: u32,
}

/// The child's view of the plan: raw pointers into the parent's memory.
struct Child {
    paths: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    /// Per path: `/bin/sh PATH ARGS...`, for a file the kernel cannot execute
    /// (ENOEXEC) but a shell can, as glibc's `execvp` does.
    sh_argvs: Vec<Vec<*const libc::c_char>>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    creds: Credentials,
    nofile: Option<libc::rlim_t>,
    parent: u32,
    /// Set by the child when a step failed (then it exits): the errno.
    error: AtomicI32,
}

fn cstring(what: &str, bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("nul byte found in the {what}"),
        )
    })
}

impl Plan {
    /// `program` (already made absolute when relative with a `/`), its arguments,
    /// the variables to add to orchd's environment, the working directory.
    pub(super) fn new(
        program: &OsStr,
        args: &[String],
        vars: &[(OsString, OsString)],
        cwd: &std::path::Path,
        creds: Credentials,
    ) -> io::Result<Plan> {
        // The environment as std's Command builds it: orchd's, with the changes.
        let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        for (k, v) in vars {
            env.insert(k.clone(), v.clone());
        }
        let mut argv = vec![cstring("command", program.as_bytes().to_vec())?];
        for a in args {
            argv.push(cstring("command", a.clone().into_bytes())?);
        }
        // The program's path: std's Command runs `execvp` with the child's
        // environment, so PATH is the one the worker gets.
        let mut paths = Vec::new();
        if program.as_bytes().contains(&b'/') {
            paths.push(argv[0].clone());
        } else if !program.is_empty() {
            let path = env
                .get(OsStr::new("PATH"))
                .map_or(b"/bin:/usr/bin".to_vec(), |p| p.as_bytes().to_vec());
            for dir in path.split(|&b| b == b':') {
                let mut full = if dir.is_empty() {
                    b".".to_vec()
                } else {
                    dir.to_vec()
                };
                full.push(b'/');
                full.extend_from_slice(program.as_bytes());
                paths.push(cstring("PATH", full)?);
            }
        }
        let env = env
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring("environment", kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Plan {
            paths,
            argv,
            env,
            cwd: cstring("cwd", cwd.as_os_str().as_bytes().to_vec())?,
            creds,
            nofile: sys::original_nofile_soft_limit(),
            parent: std::process::id(),
        })
    }

    /// Start the process with `fds` as its stdin, stdout and stderr (closed here
    /// afterwards); returns its pid once it has exec'd.
    pub(super) fn run(&self, fds: [OwnedFd; 3]) -> io::Result<u32> {
        let ptrs = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let sh_argvs = self
            .paths
            .iter()
            .map(|path| {
                let mut v = vec![c"/bin/sh".as_ptr(), path.as_ptr()];
                v.extend(self.argv.iter().skip(1).map(|s| s.as_ptr()));
                v.push(std::ptr::null());
                v
            })
            .collect();
        let child = Child {
            paths: self.paths.iter().map(|s| s.as_ptr()).collect(),
            argv: ptrs(&self.argv),
            sh_argvs,
            envp: ptrs(&self.env),
            cwd: self.cwd.as_ptr(),
            fds: [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()],
            creds: self.creds,
            nofile: self.nofile,
            parent: self.parent,
            error: AtomicI32::new(0),
        };
        let mut stack = vec![0u8; STACK];
        // The stack grows down: its top, 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + STACK) & !15;
        // SAFETY: all signals are blocked while the child shares our memory (no
        // handler runs on its stack or ours); `child_main` only makes system calls
        // on `child`, which outlives it (CLONE_VFORK: clone returns once the child
        // has exec'd or exited).
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &child as *const Child as *mut libc::c_void,
            );
            let clone_error = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid == -1 {
                return Err(clone_error);
            }
            pid
        };
        drop(stack);
        drop(fds);
        match child.error.load(Ordering::SeqCst) {
            0 => Ok(pid as u32),
            errno => {
                // It has exited already: reap it here, it never ran.
                let mut status = 0;
                // SAFETY: waitpid on our own child, writing into a local.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }
}

/// Open `/dev/null` for reading (a worker's stdin when no route targets its pool).
pub(super) fn dev_null() -> io::Result<OwnedFd> {
    // SAFETY: open with a static path; the fd is owned from here on.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe, both ends close-on-exec: (read, write).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// The child, between clone and exec. Only system calls; on a failure the errno
/// goes to the parent and the child exits.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Child`, alive until we exec or exit.
    let c = unsafe { &*(arg as *const Child) };
    let fail = |e: i32| -> libc::c_int {
        c.error
            .store(if e == 0 { libc::EINVAL } else { e }, Ordering::SeqCst);
        // SAFETY: _exit ends the child without running anything of the parent's.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on values prepared by the parent.
    unsafe {
        // Signals as std's Command leaves them: handlers back to their defaults
        // (orchd's would run on borrowed memory), SIGPIPE no longer ignored, and
        // nothing blocked.
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // Standard fds (orchd's 0 to 2 are always open, so none of these is one).
        for (target, &fd) in c.fds.iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                return fail(errno());
            }
        }
        if libc::chdir(c.cwd) != 0 {
            return fail(errno());
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(errno());
        }
        if let Err(e) = sys::child_restore_nofile_limit(c.nofile) {
            return fail(e.raw_os_error().unwrap_or(0));
        }
        // Credentials first: a change of uid or gid clears the parent-death signal.
        if let Some(gid) = c.creds.gid {
            let g = gid as libc::gid_t;
            if libc::syscall(libc::SYS_setgroups, 1, &g as *const libc::gid_t) != 0
                || libc::syscall(libc::SYS_setgid, g) != 0
            {
                return fail(errno());
            }
        }
        if let Some(uid) = c.creds.uid {
            if libc::syscall(libc::SYS_setuid, uid as libc::uid_t) != 0 {
                return fail(errno());
            }
        }
        if let Err(e) = sys::child_set_parent_death_signal(c.parent) {
            return fail(e.raw_os_error().unwrap_or(0));
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // The PATH search of glibc's execvp: the first candidate that runs; EACCES
        // is remembered, "not there" goes on to the next, anything else stops.
        let mut denied = false;
        let mut last = libc::ENOENT;
        for (i, &path) in c.paths.iter().enumerate() {
            libc::execve(path, c.argv.as_ptr(), c.envp.as_ptr());
            let e = errno();
            match e {
                libc::ENOEXEC => {
                    // A script without `#!`: the shell runs it.
                    let sh_argv = &c.sh_argvs[i];
                    libc::execve(sh_argv[0], sh_argv.as_ptr(), c.envp.as_ptr());
                    return fail(errno());
                }
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => return fail(e),
            }
            last = e;
        }
        fail(if denied { libc::EACCES } else { last })
    }
}
