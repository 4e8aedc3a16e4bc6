//! Test harness: temp configs, the real `orchd` binary, deadlines instead of sleeps.
//!
//! Every test gets its own temp directory (config, sockets, worker scripts) and an
//! [`Orchd`] that is killed (with every process it started) if the test fails midway.
//! When orchd has exited by itself (a stop, a batch run ending, a SIGKILL with
//! pdeathsig), dropping the [`Orchd`] asserts that no process it started survived it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_orchd");

/// Generous default deadline: tests must not flake on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Two idle instances of pool `web` and a control socket `ctl.sock`.
pub const TWO_SLEEPERS: &str = r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = ["sleep", "1000"]
count = 2
"#;

/// A fresh temp directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "orchd-it-{}-{}-{}",
            name,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// Write a file (executable if it starts with `#!`).
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).expect("write file");
        if content.starts_with("#!") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `pid` has SIGTERM ignored (its shell has run `trap '' TERM`). Tests that
/// need a TERM-proof process must wait for this: "started" means exec'd, not trapped.
pub fn ignores_term(pid: u32) -> bool {
    proc_status(pid, "SigIgn")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// A field of `/proc/PID/status` (what follows `NAME:`, trimmed); `None` if the
/// process is gone or has no such field.
pub fn proc_status(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let value = l.strip_prefix(name)?.strip_prefix(':')?;
        Some(value.trim().to_string())
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM` ...) in KiB, 0 if the
/// process is gone.
pub fn proc_status_kib(pid: u32, name: &str) -> u64 {
    proc_status(pid, name)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether the tests run as root (tests of `user`/`group` are skipped otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Plain kill(2); whether the signal was sent (false: the process is gone).
pub fn kill(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory effects; tests only signal processes they started
    // (orchd, its workers, their children).
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

pub fn wait_ignores_term(pid: u32) {
    wait_for(&format!("pid {pid} to ignore SIGTERM"), DEADLINE, || {
        ignores_term(pid).then_some(())
    });
}

/// Poll `f` until it returns Some, or give up (None) after `timeout`.
pub fn wait_for_some<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The environment variable that marks every process of one [`Orchd`].
const TAG_VAR: &str = "ORCHD_IT_TAG";

/// Marks the processes one orchd starts: orchd gets `ORCHD_IT_TAG=<unique>` in its
/// environment and every worker and grandchild inherits it. Found through
/// `/proc/PID/environ`, they are found wherever they were re-parented to (init, after
/// a `setsid`, after orchd died), which a walk of orchd's children cannot do once
/// orchd is gone. Only processes started after the tag was made are looked at.
pub struct ProcessTag {
    value: String,
    /// Clock ticks since boot, a second before the tag was made: every tagged
    /// process started later.
    since: u64,
}

impl ProcessTag {
    pub fn new() -> ProcessTag {
        static N: AtomicU32 = AtomicU32::new(0);
        let value = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let since = ((uptime - 1.0).max(0.0) * clock_ticks_per_second() as f64) as u64;
        ProcessTag { value, since }
    }

    /// Put the tag in the environment of `cmd` (and so of all it starts).
    pub fn mark(&self, cmd: &mut Command) {
        cmd.env(TAG_VAR, &self.value);
    }

    /// Live (not zombie) processes carrying the tag.
    pub fn alive(&self) -> Vec<u32> {
        let want = format!("{TAG_VAR}={}", self.value);
        processes()
            .into_iter()
            .filter(|p| p.3 != 'Z' && p.3 != 'X')
            .map(|p| p.0)
            .filter(|&pid| start_ticks(pid).is_some_and(|t| t >= self.since))
            .filter(|&pid| environ(pid).contains(&want))
            .collect()
    }

    /// SIGKILL every tagged process until none is left (or `timeout` passed); the
    /// ones still alive then.
    pub fn kill_all(&self, timeout: Duration) -> Vec<u32> {
        let start = Instant::now();
        loop {
            let left = self.alive();
            if left.is_empty() || start.elapsed() > timeout {
                return left;
            }
            for pid in left {
                kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// After orchd exited: the tagged processes that are still alive after a short
    /// grace (the kernel delivers pdeathsig and reaps asynchronously), each with its
    /// command line. They are killed, so that one failing test leaks nothing.
    pub fn survivors(&self) -> Vec<String> {
        let left = wait_for_some(Duration::from_secs(5), || {
            let v = self.alive();
            v.is_empty().then_some(())
        })
        .map_or_else(|| self.alive(), |()| Vec::new());
        let described = left
            .iter()
            .map(|&pid| format!("pid {pid}: {}", cmdline(pid)))
            .collect();
        self.kill_all(DEADLINE);
        described
    }

    /// Panic (print, if the thread is already panicking) naming every tagged process
    /// still alive: `who` did not take them down.
    pub fn assert_no_survivors(&self, who: &str) {
        let survivors = self.survivors();
        if survivors.is_empty() {
            return;
        }
        let msg = format!(
            "{} process(es) started by {who} outlived it:\n  {}",
            survivors.len(),
            survivors.join("\n  ")
        );
        if std::thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

/// When a process started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// A process's command line, arguments separated by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A running orchd with its stderr captured into a shared buffer.
pub struct Orchd {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    /// Set once orchd's stderr reached EOF (every log line is in `log`).
    pub log_eof: Arc<std::sync::atomic::AtomicBool>,
    pub config: PathBuf,
    /// Marks every process this orchd starts (see [`ProcessTag`]).
    pub tag: ProcessTag,
}

impl Orchd {
    /// Start `orchd CONFIG` (with `--no-watch` unless the args say otherwise).
    pub fn start(config: &Path) -> Orchd {
        Orchd::start_with(config, &["--no-watch"], Stdio::null())
    }

    pub fn start_with(config: &Path, args: &[&str], stdin: Stdio) -> Orchd {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg(config).stdin(stdin);
        Orchd::spawn(cmd, config)
    }

    /// Start a prepared command (orchd, or something that runs it) with stderr
    /// captured. `RUST_LOG=debug` unless the command sets it; stdin and stdout as the
    /// command sets them (inherited by default).
    pub fn spawn(mut cmd: Command, config: &Path) -> Orchd {
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "debug");
        }
        cmd.stderr(Stdio::piped());
        let tag = ProcessTag::new();
        tag.mark(&mut cmd);
        let mut child = cmd.spawn().expect("spawn orchd");
        let log = Arc::new(Mutex::new(String::new()));
        let log_eof = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stderr = child.stderr.take().expect("stderr");
        let (sink, eof) = (log.clone(), log_eof.clone());
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if std::env::var_os("ORCHD_TEST_LOG").is_some() {
                    eprint!("{line}");
                }
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
            eof.store(true, Ordering::SeqCst);
        });
        Orchd {
            child,
            log,
            log_eof,
            config: config.to_path_buf(),
            tag,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Lines of the log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Wait until the log contains `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize) {
        wait_for(&format!("{n}× {needle:?} in the log"), DEADLINE, || {
            (self.log_count(needle) >= n).then_some(())
        });
    }

    pub fn wait_ready(&self) {
        self.wait_log("ready:", 1);
    }

    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// Wait for exit; returns the exit code (panics if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The log is complete only once the reader saw EOF.
                wait_for("orchd's stderr to close", DEADLINE, || {
                    self.log_eof.load(Ordering::SeqCst).then_some(())
                });
                return status
                    .code()
                    .unwrap_or_else(|| panic!("orchd died by signal: {status:?}\n{}", self.log()));
            }
            if start.elapsed() > timeout {
                panic!("orchd did not exit within {timeout:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait_exit(DEADLINE)
    }

    /// Pids of live processes whose parent is orchd.
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid())
    }
}

impl Drop for Orchd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // The test left orchd running (it failed midway, or did not need a clean
            // exit): kill orchd first, so that it starts nothing new, then everything
            // it started, found by tag wherever it was re-parented to.
            let _ = self.child.kill();
            let _ = self.child.wait();
            let left = self.tag.kill_all(DEADLINE);
            if !left.is_empty() {
                eprintln!("processes of a killed orchd would not die: {left:?}");
            }
            return;
        }
        // orchd exited by itself: SPEC 8, no worker, grandchild or zombie outlives it.
        // (No test needs to opt out: a test that SIGKILLs orchd relies on pdeathsig,
        // which takes the workers down too.)
        self.tag
            .assert_no_survivors(&format!("orchd (pid {})", self.pid()));
    }
}

/// (pid, ppid, pgid, state) for every process.
pub fn processes() -> Vec<(u32, u32, u32, char)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let state = f[0].chars().next().unwrap_or('?');
        // After the comm: state ppid pgrp session ...
        v.push((
            pid,
            f[1].parse().unwrap_or(0),
            f[2].parse().unwrap_or(0),
            state,
        ));
    }
    v
}

pub fn children_of(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.1 == pid && p.3 != 'Z')
        .map(|p| p.0)
        .collect()
}

pub fn descendants(pid: u32) -> Vec<u32> {
    let all = processes();
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for q in all.iter().filter(|q| q.1 == p) {
            out.push(q.0);
            frontier.push(q.0);
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Environment of a process. orchd logs a start once the child has called
/// `execve` (its spawn is `clone(CLONE_VFORK)`), which may be a moment before the
/// kernel has laid out the new image's environment: until then `/proc/PID/environ`
/// reads empty, so an empty one is read again for a while (a process orchd starts
/// always has `ORCHD_POOL` at least).
pub fn environ(pid: u32) -> Vec<String> {
    let path = format!("/proc/{pid}/environ");
    let t0 = Instant::now();
    loop {
        match std::fs::read(&path) {
            Ok(b) if !b.is_empty() || t0.elapsed() > Duration::from_secs(2) => {
                return b
                    .split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return Vec::new(),
        }
    }
}

pub fn env_of(pid: u32, key: &str) -> Option<String> {
    environ(pid)
        .into_iter()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Run `orchd ARGS` to completion: (exit code, stdout, stderr).
pub fn run_orchd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run orchd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A byte stream a [`LineClient`] can use: unix or TCP.
pub trait Duplex: Read + Write + Sized {
    fn try_clone(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self) -> std::io::Result<()>;
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}

impl Duplex for UnixStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        Self::set_read_timeout(self, d)
    }
}

impl Duplex for std::net::TcpStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        std::net::TcpStream::try_clone(self)
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        Self::set_read_timeout(self, d)
    }
}

/// A line client: send lines, read reply lines.
pub struct LineClient<S> {
    pub reader: BufReader<S>,
    pub writer: S,
}

/// A line client over a unix socket.
pub type Client = LineClient<UnixStream>;
/// A line client over TCP.
pub type TcpClient = LineClient<std::net::TcpStream>;

impl Client {
    pub fn connect(path: &Path) -> Client {
        let s = wait_for("the unix listener", DEADLINE, || {
            UnixStream::connect(path).ok()
        });
        LineClient::new(s)
    }
}

impl TcpClient {
    pub fn connect(port: u16) -> TcpClient {
        let s = wait_for("the tcp listener", DEADLINE, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s.set_nodelay(true).unwrap();
        LineClient::new(s)
    }
}

impl<S: Duplex> LineClient<S> {
    fn new(s: S) -> Self {
        Duplex::set_read_timeout(&s, Some(DEADLINE)).unwrap();
        LineClient {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn recv(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "connection closed before a reply");
        line.trim_end_matches('\n').to_string()
    }

    pub fn request(&mut self, line: &str) -> String {
        self.send(line);
        self.recv()
    }

    /// Half-close and read everything that is left.
    pub fn finish(mut self) -> String {
        self.writer.shutdown_write().unwrap();
        let mut s = String::new();
        self.reader.read_to_string(&mut s).unwrap();
        s
    }
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Voluntary + involuntary context switches of a process.
pub fn ctx_switches(pid: u32) -> u64 {
    ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"]
        .iter()
        .filter_map(|f| proc_status(pid, f)?.parse::<u64>().ok())
        .sum()
}

/// One raw reply line (without its `\n`), bytes as they came.
pub fn recv_bytes(reader: &mut impl BufRead) -> Vec<u8> {
    let mut line = Vec::new();
    let n = reader.read_until(b'\n', &mut line).expect("read reply");
    assert!(n > 0, "connection closed before a reply");
    assert_eq!(line.pop(), Some(b'\n'), "reply line without its newline");
    line
}

/// Resident set size of a process in KiB (VmRSS), 0 if it is gone.
pub fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// Run `orchd --no-watch CONFIG` in batch mode with `stdin`, feeding `input` through a
/// pipe from a thread when given. Returns (exit code, stdout bytes, stderr). Kills it
/// and panics after `timeout`.
pub fn run_batch(
    config: &Path,
    stdin: Stdio,
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> (i32, Vec<u8>, String) {
    let tag = ProcessTag::new();
    let mut cmd = Command::new(BIN);
    cmd.arg("--no-watch")
        .arg(config)
        .env("RUST_LOG", "debug")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tag.mark(&mut cmd);
    let mut child = cmd.spawn().expect("spawn orchd");
    let feeder = input.map(|bytes| {
        let mut w = child.stdin.take().expect("stdin is not piped");
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            tag.kill_all(DEADLINE);
            panic!("batch orchd did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    tag.assert_no_survivors(&format!("batch orchd (pid {})", child.id()));
    let code = status
        .code()
        .unwrap_or_else(|| panic!("batch orchd died by signal: {status:?}\n{stderr}"));
    (code, stdout, stderr)
}

/// Pids from the `LABEL started (pid N)` lines, in order.
pub fn started(o: &Orchd, label: &str) -> Vec<u32> {
    let needle = format!(" {label} started (pid ");
    o.log()
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest[..rest.find(')')?].parse().ok()
        })
        .collect()
}

/// Wait until `label` has been started `n` times; returns every pid so far.
pub fn wait_started(o: &Orchd, label: &str, n: usize) -> Vec<u32> {
    wait_for(&format!("{n} starts of {label}"), DEADLINE, || {
        let p = started(o, label);
        (p.len() >= n).then_some(p)
    })
}

/// Log lines containing `needle`.
pub fn lines_with(o: &Orchd, needle: &str) -> Vec<String> {
    o.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Milliseconds since midnight of a log line's timestamp
/// (`2026-11-23T13:15:16.803Z INFO ...`).
pub fn ts_ms(line: &str) -> i64 {
    let ts = line.split_whitespace().next().unwrap_or("");
    let time = ts
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let mut f = time.split(':');
    let h: i64 = f.next().unwrap().parse().unwrap();
    let m: i64 = f.next().unwrap().parse().unwrap();
    let s: f64 = f.next().unwrap().parse().unwrap();
    (h * 3600 + m * 60) * 1000 + (s * 1000.0).round() as i64
}

/// One command on a control socket and its JSON answer line; `None` if the socket does
/// not answer with JSON within `timeout`.
pub fn control_try(sock: &Path, cmd: &str, timeout: Duration) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("{cmd}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// [`control_try`] that must answer within `timeout`.
pub fn control_within(sock: &Path, cmd: &str, timeout: Duration) -> serde_json::Value {
    control_try(sock, cmd, timeout).unwrap_or_else(|| {
        panic!(
            "no answer to {cmd:?} on {} within {timeout:?}",
            sock.display()
        )
    })
}

/// [`control_try`] that must answer within [`DEADLINE`].
pub fn control(sock: &Path, cmd: &str) -> serde_json::Value {
    control_within(sock, cmd, DEADLINE)
}

/// `orchd --status CONFIG --json`, parsed.
pub fn status(cfg: &Path) -> serde_json::Value {
    let (code, out, err) = run_orchd(&["--status", cfg.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "--status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
}

/// Every instance of `pool` in a status object: slots, retiring ones and replacements.
pub fn instances_in(status: &serde_json::Value, pool: &str) -> Vec<serde_json::Value> {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
        .collect()
}

pub fn instances(cfg: &Path, pool: &str) -> Vec<serde_json::Value> {
    instances_in(&status(cfg), pool)
}

/// index → pid of the running slot instances of `pool` in a status object (neither
/// retiring nor a pending replacement).
pub fn pids_in(status: &serde_json::Value, pool: &str) -> BTreeMap<u64, u64> {
    instances_in(status, pool)
        .iter()
        .filter(|i| i["retiring"] == false && i["replacement"] == false && i["pid"].is_u64())
        .map(|i| (i["index"].as_u64().unwrap(), i["pid"].as_u64().unwrap()))
        .collect()
}

pub fn pids(cfg: &Path, pool: &str) -> BTreeMap<u64, u64> {
    pids_in(&status(cfg), pool)
}

/// The `--status` table starts with the columns of SPEC 7, in that order.
pub fn assert_status_header(table: &str) {
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "POOL",
            "INSTANCE",
            "PID",
            "STATE",
            "UPTIME",
            "RESTARTS",
            "IN FLIGHT",
            "ANSWERED",
            "CPU",
            "RSS",
            "LAST EXIT"
        ],
        "{table}"
    );
}

/// Messages of `pool` that orchd holds: queued for an instance or in flight at one.
pub fn messages_held(status: &serde_json::Value, pool: &str) -> u64 {
    let queued: u64 = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == pool)
        .filter_map(|p| p["queued"].as_u64())
        .sum();
    let inflight: u64 = instances_in(status, pool)
        .iter()
        .filter_map(|i| i["inflight"].as_u64())
        .sum();
    queued + inflight
}

/// Wait until orchd holds at least `n` messages of `pool` (queued or in flight): a
/// message sent by a client has been read and routed, so what the test does next
/// (a reload, a signal) happens after that, not before.
pub fn wait_messages_held(cfg: &Path, pool: &str, n: u64) {
    wait_for(
        &format!("{n} message(s) of {pool} queued or in flight"),
        DEADLINE,
        || (messages_held(&status(cfg), pool) >= n).then_some(()),
    );
}

/// Continuous load on a TCP route: a writer sends `msgN` lines steadily, a reader
/// collects every reply, until [`Load::finish`].
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    writer: std::thread::JoinHandle<usize>,
    reader: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    pub fn start(port: u16) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let stream = wait_for("tcp listener", DEADLINE, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut w = stream.try_clone().unwrap();
        let stop_w = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut sent = 0usize;
            while !stop_w.load(Ordering::SeqCst) {
                for _ in 0..20 {
                    w.write_all(format!("msg{sent}\n").as_bytes()).unwrap();
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
            sent
        });
        let count = answered.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut replies = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                replies.push(line.trim_end().to_string());
                count.fetch_add(1, Ordering::SeqCst);
                line.clear();
            }
            replies
        });
        Load {
            stop,
            answered,
            writer,
            reader,
        }
    }

    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait until `n` more replies have come.
    pub fn wait_more(&self, what: &str, n: usize) {
        let from = self.answered();
        wait_for(what, DEADLINE, || {
            (self.answered() >= from + n).then_some(())
        });
    }

    /// Stop sending; every message must have been answered exactly once. Returns the
    /// replies in the order they came.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let sent = self.writer.join().unwrap();
        let replies = self.reader.join().unwrap();
        assert_eq!(replies.len(), sent, "every message answered");
        replies
    }
}
