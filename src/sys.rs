//! The only `unsafe` in orchd: thin wrappers over libc calls that std does not offer.
//!
//! Each wrapper turns the C return convention into `io::Result` (or a plain value where
//! failure is impossible or meaningless) and documents why the call is sound.

use std::ffi::CString;
use std::io;

/// How a process ended, as `waitpid` reported it. Signals are kept as signals, never
/// folded into negative codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    fn from_raw(status: libc::c_int) -> Option<Exit> {
        if libc::WIFEXITED(status) {
            Some(Exit::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::Signal {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            })
        } else {
            None // stopped/continued: not an exit
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "status {c}"),
            Exit::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "signal {}", signal_name(signal))?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Canonical name of a signal number: one table, in `config`.
pub use crate::config::signal_name;

/// Reap one exited child of ours, if any: `waitpid(-1, WNOHANG)`.
/// `Ok(None)` means nothing (more) to reap right now, including ECHILD.
pub fn reap_one() -> io::Result<Option<(u32, Exit)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid only writes to the status integer we pass.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            match Exit::from_raw(status) {
                Some(exit) => return Ok(Some((pid as u32, exit))),
                None => continue,
            }
        }
        if pid == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ECHILD) => return Ok(None),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// Send `signal` to every process in group `pgid`.
pub fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        // Never signal our own group (0) or init's "every process" (-1) by accident.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill has no memory effects; a negative pid addresses the process group.
    let rc = unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether any process (a zombie included) is still in group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    match kill_group(pgid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() != Some(libc::ESRCH),
    }
}

/// Bind a listening unix stream socket at `path` whose file has exactly the
/// permission bits `mode` (at most 0o777) from the instant it exists, and is never
/// changed afterwards.
///
/// Why this way: bind(2) creates the file with the socket inode's mode minus the
/// umask. `chmod(path)` after bind leaves the file reachable with the wider
/// default mode (0777 under `umask 000`) until the chmod, and the chmod follows a
/// symlink swapped in at `path` meanwhile. Instead the mode is decided inside the
/// bind call itself: on Linux an `fchmod` of the socket before bind sets the inode
/// mode bind starts from (so the file is never wider than `mode`, whatever the umask
/// or a directory's default ACL), and a umask of `!mode` during bind keeps exactly
/// `mode` (a stricter process umask would otherwise narrow it). No path-based call
/// follows: bind itself never follows a symlink (an existing path is EADDRINUSE).
///
/// The umask is process-wide: this is sound because orchd creates files and forks
/// workers only on its event-loop thread, the caller; its other threads (the file
/// watcher's) create no files. The previous umask is restored before returning, so
/// workers keep orchd's own.
pub fn bind_unix_mode(
    path: &std::path::Path,
    mode: u32,
) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // One byte stays for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a usable unix socket path (empty, over {} bytes, or with a NUL)",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mode = (mode & 0o777) as libc::mode_t;
    // SAFETY: fchmod on an fd we own. Where it is refused (not Linux), the umask
    // below still decides the mode.
    unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: umask only swaps the file creation mask and cannot fail; bind gets a
    // pointer to a sockaddr_un that lives across the call and its true length.
    let (rc, err) = unsafe {
        let old = libc::umask(!mode & 0o777);
        let rc = libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        );
        let err = io::Error::last_os_error();
        libc::umask(old);
        (rc, err)
    };
    if rc != 0 {
        return Err(err);
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) } != 0 {
        let err = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// Make orchd a child subreaper, so orphaned grandchildren are reparented to it and
/// reaped instead of escaping to init. Linux only; elsewhere a no-op.
pub fn become_subreaper() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer argument.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Mark every fd >= 3 close-on-exec, so that fds inherited from orchd's own parent
/// never leak into workers. (fds orchd opens itself are already CLOEXEC.)
pub fn cloexec_inherited_fds() {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc == 0 {
            return;
        }
    }
    // Fallback (old kernels, other Unixes): walk a reasonable range.
    // SAFETY: sysconf has no memory effects.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let max = if max <= 0 {
        1024
    } else {
        max.min(65536) as libc::c_int
    };
    for fd in 3..max {
        // SAFETY: fcntl on an arbitrary fd number fails with EBADF if it is not open.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// orchd's soft open-file limit before [`raise_nofile_limit`] raised it; `u64::MAX`
/// (`RLIM_INFINITY`, never raised) while it was not raised.
static ORIGINAL_NOFILE_SOFT: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(u64::MAX);

/// The soft open-file limit orchd started with, when orchd raised its own since:
/// workers get it back ([`child_restore_nofile_limit`]).
pub fn original_nofile_soft_limit() -> Option<libc::rlim_t> {
    match ORIGINAL_NOFILE_SOFT.load(std::sync::atomic::Ordering::Relaxed) {
        u64::MAX => None,
        n => Some(n),
    }
}

/// Raise the soft open-file limit to the hard limit: every worker costs three fds.
/// The original soft limit is kept for the workers. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let original = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Only the first raise records: a second call would see the raised value.
        let _ = ORIGINAL_NOFILE_SOFT.compare_exchange(
            u64::MAX,
            original,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    Ok(lim.rlim_cur)
}

/// In the child between fork and exec: put back the soft open-file limit orchd
/// started with (`soft`, from [`original_nofile_soft_limit`]), so that a worker sees
/// the limits orchd's parent gave, not the ones orchd raised for itself. The hard
/// limit is unchanged. Async-signal-safe.
pub fn child_restore_nofile_limit(soft: Option<libc::rlim_t>) -> io::Result<()> {
    let Some(soft) = soft else {
        return Ok(());
    };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit are async-signal-safe syscalls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = soft.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Make freed memory go back to the system. glibc raises its mmap threshold each
/// time a large block is freed, after which 1 MiB message and line buffers come from
/// the heap and stay there when clients leave (measured: 100 clients sending a 1 MiB
/// line left orchd 100 MB larger for good). A fixed threshold stops that: large
/// buffers are mapped and unmapped.
///
/// The heap top is trimmed only past 2 MiB free (glibc's default with a fixed mmap
/// threshold is 128 KiB): under load orchd frees and allocates buffers of tens of
/// KiB all the time, and trimming at 128 KiB gave those pages back to the kernel
/// only to fault them in again (batch mode through 4 `cat`s: about 10,000 page
/// faults per million lines). At most 2 MiB stays mapped unused; `malloc_trim`
/// still returns everything when clients leave (`release_free_memory`).
/// No-op outside glibc.
pub fn malloc_tuning() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Allocations of this size and up get their own mapping, unmapped when freed.
        const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only sets allocator parameters; called before any thread of
        // ours allocates concurrently (and glibc locks internally anyway).
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } != 1 {
            log::debug!("mallopt(M_MMAP_THRESHOLD) failed");
        }
        /// Free memory at the top of the heap past this is given back at once.
        const TRIM_THRESHOLD: libc::c_int = 2 << 20;
        // SAFETY: as above.
        if unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) } != 1 {
            log::debug!("mallopt(M_TRIM_THRESHOLD) failed");
        }
    }
}

/// Give free heap memory back to the system, also from the middle of the heap.
/// No-op outside glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages of the allocator to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// In the child between fork and exec: ask the kernel to SIGKILL us if orchd dies, so
/// a SIGKILLed orchd does not leave its workers behind. Async-signal-safe.
///
/// Must come after [`child_set_ids`]: a uid/gid change clears the setting. If orchd
/// died before the call, the child is no longer ours and exits at once.
pub fn child_set_parent_death_signal(parent: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl/getppid are async-signal-safe syscalls without memory effects.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // orchd may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
        }
    }
    let _ = parent;
    Ok(())
}

/// In the child between fork and exec: make `fd` survive exec as fd `target` (a
/// `node` worker's IPC channel goes to fd 3, [`crate::protocol::node::CHANNEL_FD`]).
/// `fd` is close-on-exec like every fd orchd opens; `dup2` makes a copy without that
/// flag, and the original goes away at exec. When `fd` already is `target`, `dup2`
/// would change nothing, so the flag is cleared instead. Async-signal-safe.
pub fn child_install_fd(fd: std::os::fd::RawFd, target: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: dup2 and fcntl(F_SETFD) only change the fd table; a bad fd is EBADF.
    let r = unsafe {
        if fd == target {
            libc::fcntl(target, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the child between fork and exec: drop to `uid`/`gid` (supplementary groups
/// reset to `gid` only). Async-signal-safe. Clears the parent-death signal: call
/// [`child_set_parent_death_signal`] afterwards.
pub fn child_set_ids(uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    // SAFETY: setgroups/setgid/setuid read only the one gid we pass by pointer.
    unsafe {
        if let Some(gid) = gid {
            let g = gid as libc::gid_t;
            if libc::setgroups(1, &g) != 0 || libc::setgid(g) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(uid) = uid {
            if libc::setuid(uid as libc::uid_t) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether orchd (its effective uid and gids) may execute `path` (search it, for a
/// directory): `faccessat(X_OK, AT_EACCESS)`. As root, a regular file needs at least
/// one execute bit.
pub fn may_execute(path: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: faccessat reads the NUL-terminated path we own.
    let r = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::X_OK, libc::AT_EACCESS) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Ok(false),
        _ => Err(e),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Look up a user by name (or numeric id): (uid, primary gid).
pub fn lookup_user(name: &str) -> io::Result<(u32, u32)> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: all-zero is a valid `passwd` (pointers null, ids 0).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into pwd/buf (sized as passed) and result.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok((pwd.pw_uid as u32, pwd.pw_gid as u32));
    }
    if let Ok(uid) = name.parse::<u32>() {
        return Ok((uid, uid));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no such user {name:?}"),
    ))
}

/// Look up a group by name (or numeric id).
pub fn lookup_group(name: &str) -> io::Result<u32> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: all-zero is a valid `group`.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into grp/buf (sized as passed) and result.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok(grp.gr_gid as u32);
    }
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no such group {name:?}"),
    ))
}

/// The pipe size [`grow_pipe`] asks for: Linux's default `pipe-max-size`.
pub const BIG_PIPE: usize = 1 << 20;

/// If `fd` is a pipe, ask the kernel for a buffer of [`BIG_PIPE`] bytes (never a
/// smaller one than it has): a pipe moving bulk data then costs a fraction of the
/// writes and wake-ups of the default 64 KiB. Best effort: the kernel refuses past
/// `/proc/sys/fs/pipe-max-size` or the user's pipe-page limit, and the pipe keeps its
/// size. Linux only; a no-op elsewhere.
pub fn grow_pipe(fd: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: fstat into a zeroed struct and fcntl on an fd number; both fail with
        // EBADF if it is not open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return;
        }
        let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
        if size >= 0 && (size as usize) < BIG_PIPE {
            // SAFETY: as above.
            if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, BIG_PIPE as libc::c_int) } < 0 {
                log::debug!(
                    "fd {fd}: pipe stays at {size} bytes: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// Set or clear O_NONBLOCK on a raw fd we do not own (stdin in batch mode).
pub fn set_fd_nonblocking(fd: i32, on: bool) -> io::Result<bool> {
    // SAFETY: fcntl on an fd number; fails with EBADF if not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let was = flags & libc::O_NONBLOCK != 0;
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(was)
}

/// Pids of live processes whose parent is orchd (Linux: from /proc). Used at the very
/// end of shutdown to find workers' descendants that left their process group
/// (`setsid`) and were reparented to orchd as subreaper.
pub fn children_of_self() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && state != Some("Z") {
            out.push(pid);
        }
    }
    out
}

/// CPU time and resident memory of one process, read from `/proc/PID/stat` and
/// `/proc/PID/statm` when asked (status), never sampled in the background.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// [`Usage`] of `pid`; None if it is gone or `/proc` is not there (not Linux).
pub fn process_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_proc_stat(&stat)?;
    // Not stat's own rss field: that one is the kernel's per-CPU approximation
    // (10% off for a small process here); statm's resident pages equal VmRSS.
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some(Usage {
        cpu_seconds: ticks as f64 / hz,
        rss_bytes: pages.saturating_mul(page),
    })
}

/// From a `/proc/PID/stat` line: utime + stime, in clock ticks (fields 14 and 15,
/// 1-based). The comm in parentheses may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_proc_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// Send `signal` to one process.
pub fn kill_pid(pid: u32, signal: i32) -> io::Result<()> {
    if pid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What kind of file an fd refers to, for choosing how to do batch I/O on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// Pipe or socket: can be made non-blocking and polled.
    Stream,
    /// A terminal: shares its file description with stderr, so never make it
    /// non-blocking.
    Tty,
    /// Regular file, /dev/null, ...: always ready, epoll refuses it.
    File,
}

pub fn fd_kind(fd: i32) -> io::Result<FdKind> {
    // SAFETY: all-zero is a valid `stat`; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd number writes only into `st`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let fmt = st.st_mode & libc::S_IFMT;
    // SAFETY: isatty has no memory effects.
    if unsafe { libc::isatty(fd) } == 1 {
        Ok(FdKind::Tty)
    } else if fmt == libc::S_IFIFO || fmt == libc::S_IFSOCK {
        Ok(FdKind::Stream)
    } else {
        Ok(FdKind::File)
    }
}

/// Bytes readable on `fd` right now without blocking (FIONREAD).
pub fn readable_bytes(fd: i32) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD as _, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// `read(2)` on an fd orchd does not own (its stdin in batch mode).
pub fn read_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read writes at most buf.len() bytes into buf.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` on an fd orchd does not own (its stdout in batch mode).
pub fn write_fd(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: write reads at most buf.len() bytes from buf.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The file type bits (`S_IFMT` part of `st_mode`) of what `fd` refers to.
pub fn fd_file_type(fd: i32) -> io::Result<libc::mode_t> {
    // SAFETY: all-zero is a valid `stat`; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd number writes only into `st`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the fd number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Whether `fd` is open.
pub fn fd_is_open(fd: i32) -> bool {
    // SAFETY: fcntl F_GETFD on an fd number; fails with EBADF if it is not open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// A close-on-exec duplicate of `fd` (sharing its open file description).
pub fn dup_cloexec(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd number or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(new) })
}

/// `send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`: never blocks, never raises SIGPIPE,
/// whatever the socket's own flags are.
pub fn send_nonblocking(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads at most buf.len() bytes from buf.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Wait up to `timeout` for `fd` to become writable (`poll(2)`, POLLOUT).
pub fn wait_writable(fd: i32, timeout: std::time::Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: poll reads and writes the one pollfd we pass.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n > 0 && p.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(p: &std::path::Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn proc_stat_fields_are_counted_from_the_last_parenthesis() {
        // A comm with spaces and parentheses; utime 7, stime 5.
        let line = "42 (a) (b c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 \
                    1234 5000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        assert_eq!(parse_proc_stat(line), Some(12));
        assert_eq!(parse_proc_stat("42 (x) S 1 2"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
        // This very process: some memory, and the numbers parse.
        let me = process_usage(std::process::id()).expect("own /proc/self/stat");
        assert!(me.rss_bytes > 0, "{me:?}");
        assert!(me.cpu_seconds >= 0.0, "{me:?}");
        assert_eq!(process_usage(u32::MAX), None);
    }

    /// The only test here that touches the process umask (tests run in parallel).
    #[test]
    fn bind_unix_mode_gives_exactly_the_mode_whatever_the_umask() {
        let dir = std::env::temp_dir().join(format!("orchd-sys-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        for umask in [0o000, 0o077, 0o022] {
            for mode in [0o600, 0o640, 0o660, 0o777, 0o000] {
                // SAFETY: umask cannot fail.
                let before = unsafe { libc::umask(umask) };
                let l = bind_unix_mode(&sock, mode);
                // SAFETY: as above; restores the test process's umask.
                let during = unsafe { libc::umask(before) };
                assert_eq!(during, umask, "umask restored after binding");
                let l = l.unwrap();
                assert_eq!(mode_of(&sock), mode, "umask {umask:o}, mode {mode:o}");
                drop(l);
                std::fs::remove_file(&sock).unwrap();
            }
        }
        // A symlink at the path is neither followed nor replaced.
        let target = dir.join("target");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&target, &sock).unwrap();
        let err = bind_unix_mode(&sock, 0o600).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{err}");
        assert_eq!(mode_of(&target), 0o644);
        assert!(std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_symlink());
        // Too long a path is a clear error, not a truncated bind.
        let long = dir.join("x".repeat(200));
        assert_eq!(
            bind_unix_mode(&long, 0o600).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn child_install_fd_leaves_the_target_open_across_exec() {
        use std::os::fd::AsRawFd;
        let cloexec = |fd: i32| {
            // SAFETY: F_GETFD only reads the fd's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(flags >= 0, "fd {fd} not open");
            flags & libc::FD_CLOEXEC != 0
        };
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        assert!(cloexec(fd));
        // A high fd number no other test uses.
        let target = 900;
        child_install_fd(fd, target).unwrap();
        assert!(!cloexec(target));
        assert!(cloexec(fd));
        // Already in place: only the flag changes.
        // SAFETY: F_SETFD only changes the flags of an fd this test owns.
        unsafe { libc::fcntl(target, libc::F_SETFD, libc::FD_CLOEXEC) };
        child_install_fd(target, target).unwrap();
        assert!(!cloexec(target));
        // SAFETY: closing the copy this test made.
        unsafe { libc::close(target) };
        assert_eq!(
            child_install_fd(target, target).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
