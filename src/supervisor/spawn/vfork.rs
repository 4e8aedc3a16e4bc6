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
//!
//! # orchd's fd table
//!
//! A child gets a copy of orchd's fd table, and `exec` then closes every fd in it
//! (all are close-on-exec): with 1,000 workers, 3,000 pipe ends copied and closed
//! per spawn. Instead the child shares orchd's table (CLONE_FILES) and unshares it
//! at once with `close_range(N, ~0, CLOSE_RANGE_UNSHARE)`, which copies only the fds
//! below N. For that its own fds must be below N: orchd keeps a few low fd numbers
//! open on `/dev/null` ([`Slots`]), puts the child's fds there for the clone and
//! `/dev/null` back afterwards. Where this cannot be done (slots not reserved, or
//! `close_range` refused: Linux < 5.9, a seccomp filter) children copy the whole
//! table, as `fork` does: the first start that finds out is retried that way.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use super::{Credentials, Launch};
use crate::sys;

/// The child's stack: it only makes system calls.
const STACK: usize = 64 * 1024;

// The system calls that change credentials, with 32-bit ids on every architecture
// (the plain ones take 16-bit ids on 32-bit x86 and ARM).
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
use libc::{SYS_setgid as SYS_SETGID, SYS_setgroups as SYS_SETGROUPS, SYS_setuid as SYS_SETUID};
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
    /// When the child shares orchd's fd table (CLONE_FILES): the first fd it does
    /// not need, from which on it drops the table as it unshares it. 0: not shared.
    unshare_from: RawFd,
    /// `close_range`'s flags for that: CLOSE_RANGE_UNSHARE (the tests make it fail).
    unshare_flags: libc::c_uint,
    /// Set by the child when that `close_range` failed (then it exits at once).
    unshare_failed: AtomicBool,
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
    start_with(launch, stdio, extra, FdTable::Share)
}

/// How a child gets its fd table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FdTable {
    /// Shared, then unshared below the slots (see the module doc) where possible.
    Share,
    /// Copied, as by `fork`.
    Copy,
    /// As `Share`, with a `close_range` that fails (tests of the retry).
    #[cfg(test)]
    ShareFailing,
}

/// [`start`], with the child's fd table as `fds` says.
pub(super) fn start_with(
    launch: &Launch,
    stdio: [OwnedFd; 3],
    extra: Option<(BorrowedFd<'_>, RawFd)>,
    fds: FdTable,
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
    let mut child = Child {
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
        unshare_from: 0,
        unshare_flags: libc::CLOSE_RANGE_UNSHARE,
        unshare_failed: AtomicBool::new(false),
        creds: launch.creds,
        nofile: sys::original_nofile_soft_limit(),
        parent: std::process::id(),
        error: AtomicI32::new(0),
    };
    // One start at a time in the slots (unit tests start processes from several
    // threads; orchd itself from its loop only).
    let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    #[cfg(test)]
    if fds == FdTable::ShareFailing {
        child.unshare_flags = 1 << 31;
    }
    let placed = if fds == FdTable::Copy {
        0
    } else {
        slots.place(&mut child)
    };
    let result = clone_child(&child);
    slots.clear(placed);
    let pid = result?;
    if child.unshare_failed.load(Ordering::SeqCst) {
        // It has exited without touching anything: again, copying the table.
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing into a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if fds == FdTable::Share {
            log::warn!(
                "spawn: close_range(CLOSE_RANGE_UNSHARE) failed ({}); each child copies orchd's fd table from now on",
                io::Error::from_raw_os_error(child.error.load(Ordering::SeqCst))
            );
            slots.broken = true;
        }
        drop(slots);
        return start_with(launch, stdio, extra, FdTable::Copy);
    }
    drop(slots);
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

/// Run `child_main` on `child` in a new process that borrows orchd's memory, and
/// shares its fd table when `child.unshare_from` says so; its pid once it has
/// exec'd or exited.
fn clone_child(child: &Child) -> io::Result<libc::pid_t> {
    let mut stack = vec![0u8; STACK];
    // The stack grows down: its top, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    if child.unshare_from > 0 {
        flags |= libc::CLONE_FILES;
    }
    // SAFETY: all signals are blocked while the child shares our memory (no handler
    // runs on its stack or ours); `child_main` only makes system calls on `child`,
    // which outlives it (CLONE_VFORK: clone returns once the child has exec'd or
    // exited), as do the strings and fds it points to and `stack`. With CLONE_FILES
    // the child's first step is to unshare the fd table.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            flags,
            child as *const Child as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid == -1 {
            return Err(clone_error);
        }
        Ok(pid)
    }
}

/// Reserve the fd slots now, while orchd has few fds (else the first start does).
pub(super) fn reserve_slots() {
    SLOTS.lock().unwrap_or_else(|e| e.into_inner()).ready();
}

/// The slots' fd numbers (none before the first start).
#[cfg(test)]
pub(super) fn slot_fds() -> Vec<RawFd> {
    let slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    match slots.null {
        Some(_) => slots.fds.to_vec(),
        None => Vec::new(),
    }
}

/// How many fds a child may need: stdin, stdout, stderr and one extra.
const SLOT_COUNT: usize = 4;

/// Low fd numbers that orchd keeps open on `/dev/null` (never free, so no other fd
/// of orchd's ever gets one of those numbers), where a start puts the child's fds
/// for the clone, so that the child can drop all of orchd's fds above them (see the
/// module doc).
struct Slots {
    /// `/dev/null`, what the slots hold between starts. `None`: not reserved yet.
    null: Option<OwnedFd>,
    fds: [RawFd; SLOT_COUNT],
    /// Set when slots could not be reserved, or one could not be given back its
    /// `/dev/null` (it may hold a child's fd for good): children copy the fd table.
    broken: bool,
}

static SLOTS: Mutex<Slots> = Mutex::new(Slots {
    null: None,
    fds: [-1; SLOT_COUNT],
    broken: false,
});

impl Slots {
    /// Reserve the slots: the lowest free fd numbers from 3 up. Done at start-up
    /// ([`reserve_slots`]) or the first start, while orchd has few fds.
    fn reserve(&mut self) -> io::Result<()> {
        let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
        for i in 0..SLOT_COUNT {
            // SAFETY: F_DUPFD_CLOEXEC makes a new fd; on failure nothing changes.
            let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                for &fd in &self.fds[..i] {
                    // SAFETY: closing the fds this loop made.
                    unsafe { libc::close(fd) };
                }
                return Err(e);
            }
            self.fds[i] = fd;
        }
        self.null = Some(null);
        Ok(())
    }

    /// Whether the slots can be used, reserving them if not done yet.
    fn ready(&mut self) -> bool {
        if self.null.is_none() && !self.broken {
            if let Err(e) = self.reserve() {
                log::warn!(
                    "spawn: cannot reserve fds for starting processes ({e}); each child copies orchd's fd table"
                );
                self.broken = true;
            }
        }
        !self.broken
    }

    /// Put `child`'s fds into the slots and have it share orchd's fd table; how
    /// many slots that took, 0 (the child then copies the table) when it cannot be
    /// done.
    fn place(&mut self, child: &mut Child) -> usize {
        if !self.ready() {
            return 0;
        }
        let mut fds = [-1; SLOT_COUNT];
        fds[..3].copy_from_slice(&child.stdio);
        let used = match child.extra {
            Some((fd, _)) => {
                fds[3] = fd;
                4
            }
            None => 3,
        };
        for (i, &fd) in fds[..used].iter().enumerate() {
            // SAFETY: dup3 onto a slot orchd owns: it replaces the slot's /dev/null.
            if unsafe { libc::dup3(fd, self.fds[i], libc::O_CLOEXEC) } < 0 {
                self.clear(i);
                return 0;
            }
        }
        child.stdio.copy_from_slice(&self.fds[..3]);
        if let Some((_, target)) = child.extra {
            child.extra = Some((self.fds[3], target));
        }
        child.unshare_from = self.fds.iter().max().map_or(0, |&m| m + 1);
        used
    }

    /// Put `/dev/null` back into the first `used` slots (closing the child's fds
    /// there).
    fn clear(&mut self, used: usize) {
        let Some(null) = &self.null else {
            return;
        };
        for &slot in &self.fds[..used] {
            // SAFETY: dup3 onto a slot orchd owns: it replaces what the slot holds.
            if unsafe { libc::dup3(null.as_raw_fd(), slot, libc::O_CLOEXEC) } < 0 {
                log::error!(
                    "spawn: cannot reset fd {slot}: {}; children copy orchd's fd table from now on",
                    io::Error::last_os_error()
                );
                self.broken = true;
            }
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
        // orchd's fd table, shared until here: a copy of the fds below
        // `unshare_from` becomes the child's own. Nothing before this may touch an
        // fd; when it fails, the parent starts the process again without sharing.
        if c.unshare_from > 0
            && libc::syscall(
                libc::SYS_close_range,
                c.unshare_from as libc::c_uint,
                libc::c_uint::MAX,
                c.unshare_flags,
            ) != 0
        {
            c.unshare_failed.store(true, Ordering::SeqCst);
            return fail(errno());
        }
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
