//! Carrying out a [`Launch`] on Linux without copying orchd: `clone(CLONE_VM |
//! CLONE_VFORK)`, as glibc's `posix_spawn` does, with the steps std's `Command`
//! performs between fork and exec plus orchd's own (open-file limit, user and group,
//! parent-death signal, an extra fd such as a `node` worker's channel).
//!
//! A `fork` copies orchd's page tables for the child, which throws them away again
//! at `exec`; with 1,000 workers that copy was most of a spawn's cost. Here the child
//! borrows orchd's memory on a stack of its own until its `exec`, while orchd's
//! thread waits (CLONE_VFORK), so a failed `exec` is still reported at once, as a
//! failed start.
//!
//! Everything the child needs is prepared before the clone ([`Child`]); the child
//! only makes system calls on it. It must not allocate, lock or touch anything a
//! signal handler or another thread could hold: all signals are blocked around the
//! clone, and the child resets every handled signal to its default before it
//! unblocks them. Credentials change through raw system calls: glibc's `setuid`
//! would try to change the credentials of orchd's other threads (notify's watcher),
//! whose bookkeeping the child shares.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicI32, Ordering};

use super::{Credentials, Launch};
use crate::sys;

/// The child's stack: it only makes system calls.
const STACK: usize = 64 * 1024;

#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
use libc::{SYS_setgid as SYS_SETGID, SYS_setgroups as SYS_SETGROUPS, SYS_setuid as SYS_SETUID};
/// The system calls that change credentials, with 32-bit ids on every architecture
/// (the plain ones take 16-bit ids on 32-bit x86 and ARM).
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
use libc::{
    SYS_setgid32 as SYS_SETGID, SYS_setgroups32 as SYS_SETGROUPS, SYS_setuid32 as SYS_SETUID,
};

/// The child's part of the work, all prepared by the parent: raw pointers into the
/// parent's memory, which stays put until the child has exec'd or exited.
struct Child {
    /// Where to look for the program, in order (one entry when it has a `/`).
    paths: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    /// Per path: `/bin/sh PATH ARGS...`, for a file the kernel cannot execute
    /// (ENOEXEC) but a shell can, as glibc's `execvp` does.
    sh_argvs: Vec<Vec<*const libc::c_char>>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    /// An fd to keep across exec, and the number it gets there.
    extra: Option<(RawFd, RawFd)>,
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

/// The strings of a launch, as C strings.
struct Strings {
    paths: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
}

impl Strings {
    fn new(launch: &Launch) -> io::Result<Strings> {
        // The environment as std's Command builds it: orchd's, with the changes.
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        for (k, v) in &launch.env {
            match v {
                Some(v) => env.insert(k.clone(), v.clone()),
                None => env.remove(k),
            };
        }
        let program = launch.program.as_bytes();
        let mut argv = vec![cstring("command", program.to_vec())?];
        for a in launch.args {
            argv.push(cstring("command", a.clone().into_bytes())?);
        }
        // The program's path: std's Command runs `execvp` with the child's
        // environment, so PATH is the one the worker gets (glibc's default without).
        let mut paths = Vec::new();
        if program.contains(&b'/') {
            paths.push(argv[0].clone());
        } else if !program.is_empty() {
            let path = env
                .get(OsStr::new("PATH"))
                .map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
            for dir in path.split(|&b| b == b':') {
                let mut full = if dir.is_empty() {
                    b".".to_vec()
                } else {
                    dir.to_vec()
                };
                full.push(b'/');
                full.extend_from_slice(program);
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
        Ok(Strings {
            paths,
            argv,
            env,
            cwd: cstring("cwd", launch.cwd.as_os_str().as_bytes().to_vec())?,
        })
    }
}

/// Start `launch` with `stdio` as its fds 0 to 2 (closed here afterwards) and
/// `extra` on the number given; returns its pid once it has exec'd.
pub(super) fn start(
    launch: &Launch,
    stdio: [OwnedFd; 3],
    extra: Option<(BorrowedFd<'_>, RawFd)>,
) -> io::Result<u32> {
    let s = Strings::new(launch)?;
    let ptrs = |v: &[CString]| {
        let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    let sh_argvs = s
        .paths
        .iter()
        .map(|path| {
            let mut v = vec![c"/bin/sh".as_ptr(), path.as_ptr()];
            v.extend(s.argv.iter().skip(1).map(|a| a.as_ptr()));
            v.push(std::ptr::null());
            v
        })
        .collect();
    let child = Child {
        paths: s.paths.iter().map(|p| p.as_ptr()).collect(),
        argv: ptrs(&s.argv),
        sh_argvs,
        envp: ptrs(&s.env),
        cwd: s.cwd.as_ptr(),
        stdio: [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        extra: extra.map(|(fd, target)| (fd.as_raw_fd(), target)),
        creds: launch.creds,
        nofile: sys::original_nofile_soft_limit(),
        parent: std::process::id(),
        error: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; STACK];
    // The stack grows down: its top, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;
    // SAFETY: all signals are blocked while the child shares our memory (no handler
    // runs on its stack or ours); `child_main` only makes system calls on `child`,
    // which outlives it (CLONE_VFORK: clone returns once the child has exec'd or
    // exited), as do `s`, `stdio` and `stack`.
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
    drop(stdio);
    match child.error.load(Ordering::SeqCst) {
        0 => Ok(pid as u32),
        errno => {
            // It has exited already and never ran the program: reap it here.
            let mut status = 0;
            // SAFETY: waitpid on our own child, writing into a local.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// The child, between clone and exec. Only system calls; on a failure the errno
/// goes to the parent and the child exits. Same order as before with std's
/// `Command`: its steps (stdio, cwd, process group, signals), then orchd's (open-file
/// limit, credentials, parent-death signal, the extra fd), then `execvp`.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Child`, alive until we exec or exit.
    let c = unsafe { &*(arg as *const Child) };
    let fail = |e: i32| -> libc::c_int {
        c.error
            .store(if e == 0 { libc::EINVAL } else { e }, Ordering::SeqCst);
        // SAFETY: _exit ends the child without running anything of the parent's.
        unsafe { libc::_exit(127) }
    };
    let os_error = |e: io::Error| e.raw_os_error().unwrap_or(0);
    // SAFETY: plain system calls on values prepared by the parent.
    unsafe {
        // Signals as std's Command leaves them: handlers back to their defaults
        // (orchd's would run on borrowed memory), SIGPIPE no longer ignored, and
        // nothing blocked (below, just before exec).
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
        // Standard fds. orchd's 0 to 2 are always open (Rust's start-up code puts
        // /dev/null on closed ones), so no source is one of them.
        for (target, &fd) in c.stdio.iter().enumerate() {
            if let Err(e) = sys::child_install_fd(fd, target as RawFd) {
                return fail(os_error(e));
            }
        }
        if libc::chdir(c.cwd) != 0 {
            return fail(errno());
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(errno());
        }
        if let Err(e) = sys::child_restore_nofile_limit(c.nofile) {
            return fail(os_error(e));
        }
        // Credentials first: a change of uid or gid clears the parent-death signal.
        if let Some(gid) = c.creds.gid {
            let g = gid as libc::gid_t;
            if libc::syscall(SYS_SETGROUPS, 1, &g as *const libc::gid_t) != 0
                || libc::syscall(SYS_SETGID, g) != 0
            {
                return fail(errno());
            }
        }
        if let Some(uid) = c.creds.uid {
            if libc::syscall(SYS_SETUID, uid as libc::uid_t) != 0 {
                return fail(errno());
            }
        }
        if let Err(e) = sys::child_set_parent_death_signal(c.parent) {
            return fail(os_error(e));
        }
        if let Some((fd, target)) = c.extra {
            if let Err(e) = sys::child_install_fd(fd, target) {
                return fail(os_error(e));
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // The PATH search of glibc's execvp: the first candidate that runs; EACCES
        // is remembered, "not there" goes on to the next, anything else stops.
        let mut denied = false;
        let mut last = libc::ENOENT;
        for (&path, sh_argv) in c.paths.iter().zip(&c.sh_argvs) {
            libc::execve(path, c.argv.as_ptr(), c.envp.as_ptr());
            let e = errno();
            match e {
                libc::ENOEXEC => {
                    // A script without `#!`: the shell runs it.
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
