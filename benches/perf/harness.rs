//! What every measurement needs: the scratch directory, the stamp worker, orchd as a
//! child process with its stderr watched, and small readers of `/proc`.
//!
//! The stamp worker is a tiny C program built here with `cc` (the C compiler cargo
//! already links with): its first act is to append `PID CLOCK_MONOTONIC-ns` to the file
//! named by its argument, then it sleeps in `pause()`. Restart and start-up latencies
//! are read from those stamps, so how quickly the bench notices a stamp never counts.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

/// The orchd binary cargo built for this bench (the release build under `cargo bench`).
pub const BIN: &str = env!("CARGO_BIN_EXE_orchd");

/// The orchd binary to measure: `ORCHD_BENCH_BIN` if set (to compare another build —
/// an older commit — in the same run conditions), else [`BIN`].
pub fn orchd_bin() -> String {
    std::env::var("ORCHD_BENCH_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// The scratch directory and the programs built into it.
pub struct Bench {
    pub dir: PathBuf,
    /// The stamp worker and how it is linked, or why it could not be built.
    pub stamp_worker: Result<(PathBuf, &'static str)>,
}

impl Bench {
    pub fn new() -> Result<Bench> {
        let dir = std::env::temp_dir().join(format!("orchd-bench-{}", std::process::id()));
        for sub in ["conf", "stamps"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        let stamp_worker = build_stamp_worker(&dir);
        Ok(Bench { dir, stamp_worker })
    }

    /// Writes `conf/NAME.toml`. Configs live apart from the stamp files: with `watch`
    /// on, writes next to the config would wake orchd's watcher.
    pub fn config(&self, name: &str, body: &str) -> Result<PathBuf> {
        let p = self.dir.join("conf").join(format!("{name}.toml"));
        std::fs::write(&p, body).map_err(|e| format!("write {}: {e}", p.display()))?;
        Ok(p)
    }

    /// A fresh (empty) stamp file `stamps/NAME`.
    pub fn stamps(&self, name: &str) -> Stamps {
        let path = self.dir.join("stamps").join(name);
        let _ = std::fs::remove_file(&path);
        Stamps { path }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const STAMP_WORKER_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc < 2) return 2;
    char line[64];
    int n = snprintf(line, sizeof line, "%d %lld\n", (int)getpid(),
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0 || write(fd, line, n) != n) return 1;
    close(fd);
    for (;;) pause();
}
"#;

fn build_stamp_worker(dir: &Path) -> Result<(PathBuf, &'static str)> {
    build_c(dir, "stamp", STAMP_WORKER_C)
}

/// Builds `dir/NAME` from C `source`, and says how it is linked: static when the C
/// library allows it (no dynamic loader between exec and `main`), else dynamic;
/// either way orchd and the reference loops start the same binary.
pub fn build_c(dir: &Path, name: &str, source: &str) -> Result<(PathBuf, &'static str)> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source).map_err(|e| format!("write {name}.c: {e}"))?;
    for (flags, linkage) in [
        (&["-O2", "-static"][..], "static"),
        (&["-O2"][..], "dynamic"),
    ] {
        let st = Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .stderr(Stdio::null())
            .status();
        if matches!(st, Ok(s) if s.success()) {
            return Ok((bin, linkage));
        }
    }
    Err(format!("{name}.c did not build (`cc` missing or failing)"))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the stamp worker writes.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One stamp file, appended to by every stamp worker started with it.
pub struct Stamps {
    pub path: PathBuf,
}

impl Stamps {
    /// Waits until the file holds at least `n` stamps; returns them all, in file order.
    pub fn wait(&self, n: usize, timeout: Duration) -> Result<Vec<(i32, u64)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let data = std::fs::read(&self.path).unwrap_or_default();
            if memchr::memchr_iter(b'\n', &data).count() >= n {
                return Ok(parse_stamps(&data));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} of {n} stamps after {timeout:?} in {}",
                    memchr::memchr_iter(b'\n', &data).count(),
                    self.path.display()
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

fn parse_stamps(data: &[u8]) -> Vec<(i32, u64)> {
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|l| {
            let (pid, ns) = l.split_once(' ')?;
            Some((pid.parse().ok()?, ns.parse().ok()?))
        })
        .collect()
}

/// orchd running one config. Its stderr is read on a thread (a full pipe would stall
/// orchd's logging) that reports the `ready:` line.
pub struct Orchd {
    child: Child,
    ready: mpsc::Receiver<()>,
}

impl Orchd {
    pub fn start(config: &Path) -> Result<Orchd> {
        Self::start_with(config, Stdio::null(), Stdio::null())
    }

    pub fn start_with(config: &Path, stdin: Stdio, stdout: Stdio) -> Result<Orchd> {
        let bin = orchd_bin();
        let mut child = Command::new(&bin)
            .arg(config)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {bin}: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if memchr::memmem::find(&line, b"ready:").is_some() {
                    let _ = tx.send(());
                } else if memchr::memmem::find(&line, b"ERROR").is_some() {
                    eprint!("orchd: {}", String::from_utf8_lossy(&line));
                }
                line.clear();
            }
        });
        Ok(Orchd { child, ready })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// CPU time (user + system) orchd has used so far; it can still be read after
    /// orchd exited, until it is waited for.
    pub fn cpu(&self) -> Result<Duration> {
        cpu_time(self.pid())
    }

    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits for the `ready: …` log line (every instance started).
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.ready
            .recv_timeout(timeout)
            .map_err(|_| format!("orchd not ready after {timeout:?}"))
    }

    /// SIGTERM (drain, stop every instance), then waits for the exit.
    pub fn stop(mut self) -> Result<()> {
        signal(self.pid(), libc::SIGTERM);
        self.wait_exit(Duration::from_secs(60)).map(|_| ())
    }

    /// Waits for orchd to exit by itself (batch mode), returning its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Ok(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => return Err(format!("orchd still running after {timeout:?}")),
                Err(e) => return Err(format!("wait for orchd: {e}")),
            }
        }
    }
}

/// On an error path: SIGTERM first, so that orchd stops its workers too, and
/// SIGKILL only if it has not exited within 10 s.
impl Drop for Orchd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid(), libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_err() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid this bench started.
    unsafe { libc::kill(pid, sig) };
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("bind a free port: {e}"))
}

/// Connects to 127.0.0.1:PORT, retrying while nothing listens yet.
pub fn connect(port: u16, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
                return Ok(s);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("connect to port {port}: {e}")),
        }
    }
}

/// Reads to EOF, counting newlines.
pub fn count_lines(mut r: impl Read) -> Result<usize> {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += memchr::memchr_iter(b'\n', &buf[..k]).count(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A `NAME: N kB`-style field of /proc/PID/status, as its number.
pub fn proc_status(pid: i32, field: &str) -> Option<u64> {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of every thread of PID, to the nanosecond: the first field of
/// /proc/PID/task/TID/schedstat (clock ticks of /proc/PID/stat are 10 ms, a good
/// part of a run).
pub fn cpu_time(pid: i32) -> Result<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("read /proc/{pid}/task: {e}"))?;
    let mut ns = 0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(ns))
}

/// Voluntary plus involuntary context switches of every thread of PID.
pub fn context_switches(pid: i32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        total += status_field(&status, "voluntary_ctxt_switches")?
            + status_field(&status, "nonvoluntary_ctxt_switches")?;
    }
    Some(total)
}

/// `lines` lines of 64 bytes (63 + `\n`), each unique.
pub fn input_lines(lines: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(lines * 64);
    for i in 0..lines {
        v.extend_from_slice(format!("{i:0>10} {}\n", "x".repeat(52)).as_bytes());
    }
    v
}
