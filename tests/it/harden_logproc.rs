//! Issue 12 hardening: workers with `user`/`group` die with a SIGKILLed orchd, a
//! stalled log reader does not freeze orchd, batch mode with stdout gone fails loudly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn worker_with_user_dies_when_orchd_is_sigkilled() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let dir = TempDir::new("h-pdeath");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.w]
command = ["sleep", "1000"]
cwd = "/"
user = "nobody"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let worker = wait_for("the worker", DEADLINE, || o.children().first().copied());
    // The worker really runs as nobody (the credential change happened).
    let uid_line = proc_status(worker, "Uid").unwrap();
    assert!(!uid_line.contains("\t0\t"), "worker still root: {uid_line}");
    o.signal(libc::SIGKILL);
    let _ = o.child.wait();
    let died = wait_for_some(DEADLINE, || (!alive(worker)).then_some(()));
    // Clean up before asserting: never leave a sleeper behind.
    kill(worker, libc::SIGKILL);
    assert!(
        died.is_some(),
        "worker {worker} (user nobody) outlived a SIGKILLed orchd"
    );
}

/// An orchd whose stderr is a pipe the test holds and reads only when it wants to.
/// Kills orchd and its workers on drop; if orchd exited by itself, asserts that
/// nothing it started survived it (as [`Orchd`] does).
struct Stalled {
    child: std::process::Child,
    stderr: Option<std::process::ChildStderr>,
    tag: ProcessTag,
}

impl Stalled {
    fn start(cfg: &std::path::Path) -> Stalled {
        let tag = ProcessTag::new();
        let mut cmd = Command::new(BIN);
        cmd.arg("--no-watch")
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tag.mark(&mut cmd);
        let mut child = cmd.spawn().expect("spawn orchd");
        let stderr = child.stderr.take();
        Stalled { child, stderr, tag }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal_term(&self) {
        kill(self.pid(), libc::SIGTERM);
    }

    /// Bytes sitting unread in the stderr pipe, and the pipe's capacity.
    fn unread(&self) -> (usize, usize) {
        use std::os::fd::AsRawFd;
        let fd = self.stderr.as_ref().unwrap().as_raw_fd();
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int; F_GETPIPE_SZ has no memory effects.
        let size = unsafe {
            libc::ioctl(fd, libc::FIONREAD as _, &mut n);
            libc::fcntl(fd, libc::F_GETPIPE_SZ)
        };
        (n.max(0) as usize, size.max(0) as usize)
    }

    /// Exit code within `timeout`, or None (orchd still running).
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = wait_for_some(timeout, || self.child.try_wait().ok().flatten())?;
        Some(status.code().unwrap_or(-1))
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.tag.kill_all(DEADLINE);
        } else {
            self.tag
                .assert_no_survivors(&format!("orchd (pid {})", self.pid()));
        }
    }
}

/// The pid of instance 0 of `pool` while it is running.
fn running_pid(status: &serde_json::Value, pool: &str) -> Option<u64> {
    let p = status["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == pool)?;
    let i = &p["instances"][0];
    (i["state"] == "running").then(|| i["pid"].as_u64())?
}

/// A pool that floods stderr (about 4 MB of log output, far more than a pipe and the
/// log buffer hold) and then says it is done, a pool that keeps crashing, a routed
/// echo pool, and a control socket.
fn stall_config(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.chatty]
command = "seq -f 'chatty line %g xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' 30000 >&2; touch chatty.done; exec sleep 1000"

[pool.crash]
command = "sleep 0.1; echo crashing >&2; exit 1"
backoff = { initial = "100ms", factor = 1.0, jitter = 0.0 }

[pool.echo]
command = "while read -r l; do echo \"got $l\"; done"

[[route]]
from = "unix:in.sock"
to = "echo"
"#,
    )
}

/// Wait until orchd has taken all the chatty output (so it has had to drop log
/// lines) while its stderr pipe is full and unread.
fn wait_stalled(dir: &TempDir, o: &Stalled) {
    wait_for(
        "orchd to read all the chatty output (a frozen orchd never does)",
        DEADLINE,
        || dir.join("chatty.done").exists().then_some(()),
    );
    wait_for("orchd's stderr pipe to be full", DEADLINE, || {
        let (unread, size) = o.unread();
        (size > 0 && unread + 4096 >= size).then_some(())
    });
}

#[test]
fn stalled_stderr_does_not_freeze_orchd() {
    let dir = TempDir::new("h-stall");
    let cfg = stall_config(&dir);
    let ctl = dir.join("ctl.sock");
    let mut o = Stalled::start(&cfg);
    wait_stalled(&dir, &o);
    let short = Duration::from_secs(5);
    // The control socket answers.
    let status = control_try(&ctl, "status", short).expect("no status answer: orchd is frozen");
    assert_eq!(status["ok"], true, "{status}");
    // Messages are routed.
    let mut c = Client::connect(&dir.join("in.sock"));
    assert_eq!(c.request("hello"), "got hello");
    // A killed worker is restarted.
    let pid = wait_for("echo running", DEADLINE, || {
        running_pid(&control_try(&ctl, "status", short)?, "echo")
    });
    kill(pid as u32, libc::SIGKILL);
    wait_for("echo to be restarted", DEADLINE, || {
        let now = running_pid(&control_try(&ctl, "status", short)?, "echo")?;
        (now != pid).then_some(())
    });
    assert_eq!(c.request("again"), "got again");
    drop(c);
    // Shutdown completes while stderr is still not read.
    o.signal_term();
    let code = o.wait_exit(DEADLINE);
    assert_eq!(
        code,
        Some(0),
        "orchd did not exit on SIGTERM with stderr stalled"
    );
}

#[test]
fn dropped_log_lines_are_counted_once_stderr_drains() {
    let dir = TempDir::new("h-dropped");
    let cfg = stall_config(&dir);
    let mut o = Stalled::start(&cfg);
    wait_stalled(&dir, &o);
    // Now read everything, as a log collector that caught up would.
    let mut stderr = o.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut partial = Vec::new();
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            partial.extend_from_slice(&buf[..n]);
            while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=i).collect();
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let start = Instant::now();
    let mut report = None;
    while report.is_none() && start.elapsed() < DEADLINE {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains("log line(s) dropped") {
                report = Some(line);
            }
        }
    }
    let report = report.expect("no 'log line(s) dropped' report once stderr was read");
    assert!(report.contains("WARN"), "{report}");
    let n: u64 = report
        .split("orchd: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"));
    assert!(n > 0, "{report}");
    o.signal_term();
    assert_eq!(o.wait_exit(DEADLINE), Some(0));
}

const BATCH: &str = r#"
[pool.echo]
command = "while read -r l; do echo \"got $l\"; done"

[[route]]
from = "stdin"
to = "echo"
"#;

/// Run `sh -c SCRIPT` (which runs orchd) to completion within a deadline, feeding
/// `input` on stdin; stdout as `stdout`. Returns (exit code, stderr).
fn run_sh(script: &str, cfg: &std::path::Path, input: &str, stdout: Stdio) -> (i32, String) {
    let tag = ProcessTag::new();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .arg(BIN)
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped());
    tag.mark(&mut cmd);
    let mut child = cmd.spawn().expect("spawn sh");
    // The reader of stdout (if piped) is gone before orchd writes anything.
    drop(child.stdout.take());
    let mut w = child.stdin.take().unwrap();
    let input = input.to_string();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = w.write_all(input.as_bytes());
    });
    let mut err = child.stderr.take().unwrap();
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_for_some(DEADLINE, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        tag.kill_all(DEADLINE);
        panic!("orchd did not exit within {DEADLINE:?}");
    };
    feeder.join().unwrap();
    tag.assert_no_survivors("orchd run by sh");
    (status.code().unwrap_or(-1), err_t.join().unwrap())
}

#[test]
fn batch_with_stdout_closed_is_an_error() {
    let dir = TempDir::new("h-batch-closed");
    let cfg = dir.write("pool.toml", BATCH);
    let (code, log) = run_sh(
        r#"exec "$1" --no-watch "$2" >&-"#,
        &cfg,
        "a\nb\n",
        Stdio::null(),
    );
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("stdout is closed"), "{log}");
    // Nothing was started for replies that could never be written.
    assert!(!log.contains("echo[0] started"), "{log}");
}

#[test]
fn batch_with_stdout_reader_gone_is_an_error() {
    let dir = TempDir::new("h-batch-epipe");
    let cfg = dir.write("pool.toml", BATCH);
    let (code, log) = run_sh(
        r#"exec "$1" --no-watch "$2""#,
        &cfg,
        "a\nb\n",
        Stdio::piped(),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("ERROR") && log.contains("cannot write replies to stdout"),
        "{log}"
    );
}
