//! Issue 12, loop hardening: a storm of spawns must not starve signals, clients or
//! shutdown; a SIGSTOPped worker is stopped and its message retried promptly; the
//! control socket answers a last command without a newline and bounds a client that
//! pipelines commands without reading.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::*;

/// The pid a log line `LABEL started (pid N)` gave the `n`-th time (0-based).
fn started_pid(o: &Orchd, label: &str, n: usize) -> u32 {
    wait_started(o, label, n + 1)[n]
}

/// `VmHWM` (peak resident set) of a process in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM")
}

/// Bytes waiting to be read on a socket (FIONREAD).
fn unread_bytes(s: &UnixStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n as usize
}

// ----- defect 8: a spawn storm -----------------------------------------------------

const STORM: &str = r#"
[orchd]
control = "ctl.sock"

[pool.bad]
command = ["/nonexistent"]
count = 5000
backoff = { initial = "100ms", max = "200ms" }
"#;

/// 5,000 instances whose spawn fails: while they start (and restart), the control
/// socket answers, and SIGTERM ends orchd at once without spawning anything more.
/// Before the fix, orchd spawned all 5,000 in one go before serving anything
/// (status answered after about 10 s here, 0.1 s after).
#[test]
fn spawn_storm_leaves_room_for_status_and_sigterm() {
    let dir = TempDir::new("loop-storm");
    let cfg = dir.write("pool.toml", STORM);
    let mut o = Orchd::start(&cfg);
    o.wait_log("failed to start", 1);
    // The socket is bound before the first spawn; the loop must answer it soon.
    let t = Instant::now();
    let status = control_within(&dir.join("ctl.sock"), "status", Duration::from_secs(4));
    assert_eq!(status["ok"], true, "{status}");
    eprintln!("status answered after {:?} during the storm", t.elapsed());
    let t = Instant::now();
    o.signal(libc::SIGTERM);
    let code = o.wait_exit(Duration::from_secs(5));
    eprintln!("SIGTERM to exit: {:?}", t.elapsed());
    assert_eq!(code, 0);
    let log = o.log();
    let after: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("shutting down"))
        .filter(|l| l.contains("failed to start") || l.contains(" started (pid "))
        .collect();
    assert!(
        after.is_empty(),
        "spawned after SIGTERM: {} time(s), e.g. {:?}",
        after.len(),
        after.first()
    );
}

// ----- defect 11: a SIGSTOPped worker --------------------------------------------

const STOPPED: &str = r#"
[pool.w]
command = ["sh", "-c", "while read l; do echo \"$ORCHD_INSTANCE $l\"; done"]
count = 2
stop_timeout = "30s"
backoff = { initial = "0s" }

[[route]]
from = "unix:in.sock"
to = "w"
strategy = "round-robin"
timeout = "1s"
retries = 1
"#;

/// A worker SIGSTOPped with a message in flight: the message times out, is retried
/// on the other instance (the client gets its real reply), and the stopped worker
/// is stopped and restarted promptly: SIGCONT after the stop signal lets it act on
/// it instead of waiting out stop_timeout for SIGKILL.
#[test]
fn sigstopped_worker_is_retried_and_restarted_promptly() {
    let dir = TempDir::new("loop-sigstop");
    let cfg = dir.write("pool.toml", STOPPED);
    let o = Orchd::start(&cfg);
    o.wait_ready();
    let w0 = started_pid(&o, "w[0]", 0);
    let mut c = Client::connect(&dir.join("in.sock"));
    // Find out which instance takes the next message, then stop the other one's peer:
    // round-robin alternates, so after a reply from N the next message goes to 1-N.
    let first = c.request("probe");
    let next_is_0 = first.starts_with("1 ");
    if !next_is_0 {
        assert_eq!(first, "0 probe");
        assert_eq!(c.request("probe2"), "1 probe2");
    }
    kill(w0, libc::SIGSTOP);
    let t = Instant::now();
    let reply = c.request("hello");
    eprintln!("reply {reply:?} after {:?}", t.elapsed());
    assert_eq!(
        reply, "1 hello",
        "the retry on the running instance answers"
    );
    // The stopped worker is gone and w[0] runs again, well before stop_timeout (30s).
    let w0_new = started_pid(&o, "w[0]", 1);
    assert_ne!(w0_new, w0);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "restart took {:?}",
        t.elapsed()
    );
    assert!(!alive(w0), "the stopped worker {w0} is still there");
    assert_eq!(c.request("again").split(' ').nth(1), Some("again"));
}

/// The only worker SIGSTOPped with a message in flight: once the message times out
/// the worker is stopped at once (SIGCONT lets it act on SIGTERM) and restarted, and
/// the retry gets the restarted worker's real reply, not "timed out waiting for an
/// instance" while orchd sat out stop_timeout.
#[test]
fn sigstopped_only_worker_restarts_and_answers_the_retry() {
    let dir = TempDir::new("loop-sigstop1");
    let cfg = dir.write("pool.toml", &STOPPED.replace("count = 2", "count = 1"));
    let o = Orchd::start(&cfg);
    o.wait_ready();
    let w0 = started_pid(&o, "w[0]", 0);
    let mut c = Client::connect(&dir.join("in.sock"));
    assert_eq!(c.request("probe"), "0 probe");
    kill(w0, libc::SIGSTOP);
    let t = Instant::now();
    let reply = c.request("hello");
    eprintln!("reply {reply:?} after {:?}", t.elapsed());
    assert_eq!(reply, "0 hello", "the restarted worker answers the retry");
    assert_ne!(started_pid(&o, "w[0]", 1), w0);
    assert!(!alive(w0), "the stopped worker {w0} is still there");
}

// ----- defect 11: control socket -------------------------------------------------

const CTL: &str = r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = ["sleep", "1000"]
count = 20
"#;

/// `printf status | socat - UNIX:ctl.sock`: a last command without its newline,
/// followed by EOF, is answered.
#[test]
fn control_command_without_newline_before_eof_is_answered() {
    let dir = TempDir::new("loop-ctl-eof");
    let cfg = dir.write("pool.toml", CTL);
    let o = Orchd::start(&cfg);
    o.wait_ready();
    let mut s = UnixStream::connect(dir.join("ctl.sock")).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"status").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

/// An over-long control line gets an error reply and the connection goes on.
#[test]
fn control_line_too_long_is_refused_and_next_command_served() {
    let dir = TempDir::new("loop-ctl-long");
    let cfg = dir.write("pool.toml", CTL);
    let o = Orchd::start(&cfg);
    o.wait_ready();
    let mut c = Client::connect(&dir.join("ctl.sock"));
    let long = "x".repeat(200 * 1024);
    let writer = {
        let mut w = c.writer.try_clone().unwrap();
        std::thread::spawn(move || {
            w.write_all(long.as_bytes()).unwrap();
            w.write_all(b"\nstatus\n").unwrap();
        })
    };
    let v: serde_json::Value = serde_json::from_str(&c.recv()).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("too long"), "{v}");
    let v: serde_json::Value = serde_json::from_str(&c.recv()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    writer.join().unwrap();
}

/// 10,000 `status` commands from a client that does not read its replies: orchd
/// stops reading from it once its unsent replies pass a bound (memory stays flat),
/// keeps serving other control clients, and the client gets every reply once it
/// reads.
#[test]
fn control_client_pipelining_without_reading_is_bounded() {
    const N: usize = 10_000;
    let dir = TempDir::new("loop-ctl-pipe");
    let cfg = dir.write("pool.toml", CTL);
    let o = Orchd::start(&cfg);
    o.wait_ready();
    let sock = dir.join("ctl.sock");
    let one = control_within(&sock, "status", DEADLINE).to_string().len();
    let hwm_before = vm_hwm_kib(o.pid());
    let s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let all = "status\n".repeat(N);
        w.write_all(all.as_bytes()).unwrap();
    });
    // Once replies are arriving, another client is still served, promptly.
    wait_for("replies waiting in our socket", DEADLINE, || {
        (unread_bytes(&s) >= 64 * 1024).then_some(())
    });
    let t = Instant::now();
    let v = control_within(&sock, "status", Duration::from_secs(4));
    assert_eq!(v["ok"], true);
    eprintln!("second client answered in {:?}", t.elapsed());
    let hwm = vm_hwm_kib(o.pid());
    eprintln!(
        "one status reply {one} bytes; {N} of them {} KiB; orchd peak RSS {hwm_before} -> {hwm} KiB",
        one * N / 1024
    );
    assert!(
        hwm < hwm_before + 16 * 1024,
        "orchd peak RSS grew from {hwm_before} to {hwm} KiB"
    );
    // Now read everything: every command is answered.
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    for i in 0..N {
        line.clear();
        let n = r.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed after {i} replies");
        assert!(line.contains("\"ok\":true"), "reply {i}: {line:.80}");
    }
    writer.join().unwrap();
    let hwm = vm_hwm_kib(o.pid());
    assert!(
        hwm < hwm_before + 16 * 1024,
        "orchd peak RSS grew from {hwm_before} to {hwm} KiB"
    );
}
