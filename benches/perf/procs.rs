//! Process figures: restart latency (SIGKILL to the replacement's first instruction)
//! and start-up of many instances, each next to the bare loop doing the same job in
//! this process (`kill`, blocking `waitpid`, `fork`+`exec`); orchd's RSS; context
//! switches of an idle orchd.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::harness::{context_switches, monotonic_ns, proc_status, signal, Bench, Orchd, Result};

/// A pool of `count` stamp workers writing to `stamps`.
fn stamp_pool(worker: &Path, stamps: &Path, count: usize, extra: &str) -> String {
    format!(
        "[pool.stamp]\ncommand = [{:?}, {:?}]\ncount = {count}\n{extra}",
        worker.display().to_string(),
        stamps.display().to_string()
    )
}

/// Restart latencies in ns: orchd with `backoff.initial = "0s"`, `samples` times.
pub fn restart(bench: &Bench, worker: &Path, samples: usize) -> Result<Vec<u64>> {
    let stamps = bench.stamps("restart");
    let cfg = bench.config(
        "restart",
        &format!(
            "[orchd]\nwatch = false\n\n{}",
            stamp_pool(worker, &stamps.path, 1, "backoff = { initial = \"0s\" }\n")
        ),
    )?;
    let orchd = Orchd::start(&cfg)?;
    let mut pid = stamps.wait(1, Duration::from_secs(10))?[0].0;
    let mut out = Vec::with_capacity(samples);
    for i in 1..=samples {
        // Let orchd settle (the exit handled, the new instance's pipes registered).
        std::thread::sleep(Duration::from_millis(20));
        let t0 = monotonic_ns();
        signal(pid, libc::SIGKILL);
        let (new_pid, at) = stamps.wait(i + 1, Duration::from_secs(10))?[i];
        out.push(at.saturating_sub(t0));
        pid = new_pid;
    }
    orchd.stop()?;
    Ok(out)
}

/// The same figure for the minimal respawn loop: kill, blocking waitpid, fork+exec.
pub fn respawn_loop(bench: &Bench, worker: &Path, samples: usize) -> Result<Vec<u64>> {
    let stamps = bench.stamps("respawn");
    let argv = Argv::new(worker, &stamps.path)?;
    let mut live = Some(argv.spawn()?);
    let mut out = Vec::with_capacity(samples);
    let mut measure = || -> Result<()> {
        stamps.wait(1, Duration::from_secs(10))?;
        for i in 1..=samples {
            std::thread::sleep(Duration::from_millis(20));
            let t0 = monotonic_ns();
            if let Some(pid) = live.take() {
                signal(pid, libc::SIGKILL);
                reap(pid);
            }
            live = Some(argv.spawn()?);
            let at = stamps.wait(i + 1, Duration::from_secs(10))?[i].1;
            out.push(at.saturating_sub(t0));
        }
        Ok(())
    };
    let measured = measure();
    if let Some(pid) = live {
        signal(pid, libc::SIGKILL);
        reap(pid);
    }
    measured.map(|()| out)
}

/// What starting `count` instances took.
pub struct Startup {
    /// From orchd's spawn to the last instance's first instruction.
    pub time: Duration,
    /// orchd's RSS in KiB with them all running.
    pub rss_kib: u64,
}

pub fn startup(bench: &Bench, worker: &Path, count: usize) -> Result<Startup> {
    let stamps = bench.stamps("startup");
    let cfg = bench.config(
        "startup",
        &format!(
            "[orchd]\nwatch = false\n\n{}",
            stamp_pool(worker, &stamps.path, count, "")
        ),
    )?;
    let t0 = monotonic_ns();
    let orchd = Orchd::start(&cfg)?;
    let last = last_stamp(&stamps.wait(count, Duration::from_secs(60))?);
    orchd.wait_ready(Duration::from_secs(30))?;
    let rss_kib = proc_status(orchd.pid(), "VmRSS").ok_or("no VmRSS for orchd")?;
    orchd.stop()?;
    Ok(Startup {
        time: Duration::from_nanos(last.saturating_sub(t0)),
        rss_kib,
    })
}

/// The same start-up by a plain fork+exec loop in this process.
pub fn fork_exec_loop(bench: &Bench, worker: &Path, count: usize) -> Result<Duration> {
    let stamps = bench.stamps("forkloop");
    let argv = Argv::new(worker, &stamps.path)?;
    let t0 = monotonic_ns();
    let mut pids = Vec::with_capacity(count);
    let mut spawned = Ok(());
    for _ in 0..count {
        match argv.spawn() {
            Ok(pid) => pids.push(pid),
            Err(e) => {
                spawned = Err(e);
                break;
            }
        }
    }
    let seen = spawned.and_then(|()| stamps.wait(count, Duration::from_secs(60)));
    for &pid in &pids {
        signal(pid, libc::SIGKILL);
        reap(pid);
    }
    Ok(Duration::from_nanos(last_stamp(&seen?).saturating_sub(t0)))
}

fn last_stamp(stamps: &[(i32, u64)]) -> u64 {
    stamps.iter().map(|&(_, at)| at).max().unwrap_or(0)
}

/// An idle orchd with `count` instances: its RSS (KiB) and its context switches
/// over `idle`.
pub fn idle(bench: &Bench, worker: &Path, count: usize, idle: Duration) -> Result<(u64, u64)> {
    let stamps = bench.stamps("idle");
    // The default `[orchd]` settings: the file watcher runs too.
    let cfg = bench.config("idle", &stamp_pool(worker, &stamps.path, count, ""))?;
    let orchd = Orchd::start(&cfg)?;
    stamps.wait(count, Duration::from_secs(30))?;
    orchd.wait_ready(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = orchd.pid();
    let before = context_switches(pid).ok_or("no context switch counts for orchd")?;
    std::thread::sleep(idle);
    let after = context_switches(pid).ok_or("no context switch counts for orchd")?;
    let rss = proc_status(pid, "VmRSS").ok_or("no VmRSS for orchd")?;
    orchd.stop()?;
    Ok((rss, after.saturating_sub(before)))
}

/// `WORKER STAMPS` ready for fork+exec.
struct Argv {
    args: [CString; 2],
}

impl Argv {
    fn new(worker: &Path, stamps: &Path) -> Result<Argv> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string());
        Ok(Argv {
            args: [c(worker)?, c(stamps)?],
        })
    }

    fn spawn(&self) -> Result<i32> {
        let argv = [
            self.args[0].as_ptr(),
            self.args[1].as_ptr(),
            std::ptr::null(),
        ];
        // SAFETY: the child calls only execv and _exit (async-signal-safe) on memory
        // prepared before the fork.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => unsafe {
                libc::execv(argv[0], argv.as_ptr());
                libc::_exit(127)
            },
            -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
            pid => Ok(pid),
        }
    }
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: blocking waitpid on our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}
