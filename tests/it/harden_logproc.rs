//! Issue 12 hardening: workers with `user`/`group` die with a SIGKILLed orchd, a
//! stalled log reader does not freeze orchd, batch mode with stdout gone fails loudly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// SIGKILL a process that is not our child (ignore "already gone").
fn sigkill(pid: u32) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

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
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.contains("\t0\t"), "worker still root: {uid_line}");
    o.signal(libc::SIGKILL);
    let _ = o.child.wait();
    let died = wait_for_some(DEADLINE, || (!alive(worker)).then_some(()));
    // Clean up before asserting: never leave a sleeper behind.
    sigkill(worker);
    assert!(
        died.is_some(),
        "worker {worker} (user nobody) outlived a SIGKILLed orchd"
    );
}
