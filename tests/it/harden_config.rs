//! Issue 12 hardening of config input: CONFIG and `plan PATH` are read only from
//! regular files of at most 16 MiB, without blocking the loop; durations are capped at
//! 365 days and nothing overflows at the cap; `--check` refuses what cannot run (NUL in
//! a command, one unix socket written two ways, overlapping TCP listeners).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain mkfifo(3) on a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// One control command and its JSON answer, or None when no answer came in `timeout`.
fn ask_within(sock: &Path, cmd: &str, timeout: Duration) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(format!("{cmd}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

fn ask(sock: &Path, cmd: &str) -> serde_json::Value {
    ask_within(sock, cmd, DEADLINE)
        .unwrap_or_else(|| panic!("no answer to {cmd:?} within {DEADLINE:?}"))
}

const CONTROLLED: &str = r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = ["sleep", "1000"]
count = 2
"#;

fn error_of(v: &serde_json::Value) -> String {
    assert_eq!(v["ok"], false, "expected an error answer, got {v}");
    v["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn plan_of_dev_zero_is_refused_at_once_and_memory_stays_small() {
    let dir = TempDir::new("hc-plan-zero");
    let cfg = dir.write("pool.toml", CONTROLLED);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let sock = dir.join("ctl.sock");
    let t = Instant::now();
    let v = ask(&sock, "plan /dev/zero");
    let took = t.elapsed();
    let err = error_of(&v);
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file (character device)"),
        "{err}"
    );
    let rss = vm_rss_kib(o.pid());
    eprintln!("plan /dev/zero answered in {took:?}; orchd RSS {rss} KiB");
    assert!(rss < 64 * 1024, "orchd RSS {rss} KiB after plan /dev/zero");
    // Still serving.
    assert_eq!(ask(&sock, "status")["ok"], true);
    assert_eq!(o.stop(), 0);
}

#[test]
fn plan_of_fifo_is_refused_and_orchd_stays_responsive() {
    let dir = TempDir::new("hc-plan-fifo");
    let cfg = dir.write("pool.toml", CONTROLLED);
    let fifo = dir.join("next.toml");
    mkfifo(&fifo);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let sock = dir.join("ctl.sock");
    let v = ask(&sock, &format!("plan {}", fifo.display()));
    let err = error_of(&v);
    assert!(err.contains("not a regular file (fifo)"), "{err}");
    assert_eq!(ask(&sock, "status")["ok"], true);
    // The client path (`orchd --plan` reads CONFIG to find the socket) refuses too.
    let (code, _, stderr) = run_orchd(&["--plan", fifo.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a regular file (fifo)"), "{stderr}");
    assert_eq!(o.stop(), 0);
}

/// Replace `cfg` atomically by a symlink to a FIFO.
fn swap_for_fifo_symlink(dir: &TempDir, cfg: &Path) -> PathBuf {
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let tmp = dir.join("pool.toml.tmp");
    std::os::unix::fs::symlink(&fifo, &tmp).unwrap();
    std::fs::rename(&tmp, cfg).unwrap();
    fifo
}

#[test]
fn sighup_with_config_swapped_for_a_fifo_keeps_the_running_config() {
    let dir = TempDir::new("hc-hup-fifo");
    let cfg = dir.write("pool.toml", CONTROLLED);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let kids = {
        let mut k = o.children();
        k.sort();
        k
    };
    assert_eq!(kids.len(), 2);
    swap_for_fifo_symlink(&dir, &cfg);
    o.signal(libc::SIGHUP);
    o.wait_log("not a regular file (fifo)", 1);
    let sock = dir.join("ctl.sock");
    // The control `reload` answers the same error.
    let err = error_of(&ask(&sock, "reload"));
    assert!(err.contains("not a regular file (fifo)"), "{err}");
    let status = ask(&sock, "status");
    assert_eq!(status["ok"], true, "{status}");
    let mut now = o.children();
    now.sort();
    assert_eq!(now, kids, "the running workers were left alone");
    assert_eq!(o.stop(), 0);
}

#[test]
fn watched_config_swapped_for_a_fifo_keeps_the_running_config() {
    let dir = TempDir::new("hc-watch-fifo");
    let cfg = dir.write("pool.toml", CONTROLLED);
    let mut o = Orchd::start_with(&cfg, &[], Stdio::null());
    o.wait_ready();
    o.wait_log("watching", 1);
    swap_for_fifo_symlink(&dir, &cfg);
    o.wait_log("not a regular file (fifo)", 1);
    let status = ask(&dir.join("ctl.sock"), "status");
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn start_up_with_a_fifo_config_fails_at_once() {
    let dir = TempDir::new("hc-start-fifo");
    let fifo = dir.join("pool.toml");
    mkfifo(&fifo);
    let mut o = Orchd::start(&fifo);
    assert_eq!(o.wait_exit(DEADLINE), 2);
    assert!(o.log().contains("not a regular file (fifo)"), "{}", o.log());
}

/// A valid config a little over 16 MiB (the rest is one long comment).
fn oversize_config(dir: &TempDir) -> PathBuf {
    let mut text = String::from("[pool.web]\ncommand = [\"sleep\", \"1000\"]\n#");
    text.push_str(&"x".repeat(16 * 1024 * 1024));
    text.push('\n');
    dir.write("big.toml", &text)
}

#[test]
fn oversize_config_is_refused_by_check_start_up_and_plan() {
    let dir = TempDir::new("hc-big");
    let big = oversize_config(&dir);
    let (code, _, err) = run_orchd(&["--check", big.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("larger than 16 MiB"), "{err}");

    let mut o = Orchd::start(&big);
    assert_eq!(o.wait_exit(DEADLINE), 2);
    assert!(o.log().contains("larger than 16 MiB"), "{}", o.log());

    let cfg = dir.write("pool.toml", CONTROLLED);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let err = error_of(&ask(
        &dir.join("ctl.sock"),
        &format!("plan {}", big.display()),
    ));
    assert!(err.contains("larger than 16 MiB"), "{err}");
    assert_eq!(o.stop(), 0);
}
