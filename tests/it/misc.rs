//! Running as PID 1, dropping privileges, JSON logs.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Whether this machine lets us make a PID namespace (root, util-linux).
fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn as_pid_1_reaps_orphans_and_leaves_nothing_behind() {
    if !can_unshare() {
        eprintln!("skipped: cannot create a PID namespace here");
        return;
    }
    let dir = TempDir::new("pid1");
    // The worker leaves orphans behind: background children whose parent exits.
    dir.write(
        "orphans.sh",
        "#!/bin/sh\n(sleep 0.2 &) ; (sleep 0.2 &) ; sleep 1000\n",
    );
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.w]
command = ["./orphans.sh"]
count = 2
stop_timeout = "1s"
"#,
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(BIN)
        .arg("--no-watch")
        .arg(&cfg)
        .stdout(Stdio::null());
    let mut o = Orchd::spawn(cmd, &cfg);
    o.wait_ready();
    // The orphans (4 sleeps of 0.2 s) come back to PID 1 and are reaped, not zombies.
    o.wait_log("reaped orphaned process", 4);
    // orchd in the namespace is the child of unshare.
    let inner = wait_for("orchd inside the namespace", DEADLINE, || {
        children_of(o.pid()).first().copied()
    });
    let zombies = || {
        processes()
            .into_iter()
            .filter(|p| p.1 == inner && p.3 == 'Z')
            .count()
    };
    assert_eq!(zombies(), 0);
    let tree = descendants(inner);
    assert!(tree.len() >= 2, "{tree:?}");
    // SIGTERM to orchd (PID 1 inside): it must handle it, stop everything, exit 0.
    kill(inner, libc::SIGTERM);
    let code = o.wait_exit(DEADLINE);
    assert_eq!(code, 0, "{}", o.log());
    for p in tree {
        assert!(!alive(p), "process {p} outlived orchd as PID 1");
    }
}

#[test]
fn user_and_group_are_applied_when_root() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let dir = TempDir::new("user");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.w]
command = ["sleep", "1000"]
cwd = "/"
user = "nobody"
group = "nogroup"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let pid = wait_for("worker", DEADLINE, || o.children().first().copied());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .unwrap();
    let nogroup = Command::new("getent")
        .args(["group", "nogroup"])
        .output()
        .unwrap();
    let gid: u32 = String::from_utf8_lossy(&nogroup.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(field("Uid:").iter().all(|&u| u == uid), "{status}");
    assert!(field("Gid:").iter().all(|&g| g == gid), "{status}");
    assert_eq!(field("Groups:"), [gid]);
    assert_eq!(o.stop(), 0);
}

#[test]
fn unknown_user_is_a_failed_start_logged_once_per_attempt() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let dir = TempDir::new("nouser");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.w]
command = ["sleep", "1000"]
user = "no-such-user-orchd"
backoff = { initial = "200ms", factor = 1.0, jitter = 0.0 }
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("failed to start", 2);
    // A bounded window in which a hot loop would show.
    std::thread::sleep(Duration::from_millis(300));
    let n = o.log_count("failed to start");
    assert!(n <= 4, "not a hot loop: {n} attempts in ~0.7s\n{}", o.log());
    assert!(o.log().contains("no such user"), "{}", o.log());
    assert_eq!(o.stop(), 0);
}

#[test]
fn json_log_format_is_one_object_per_line() {
    let dir = TempDir::new("json");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.w]
command = "echo hello-from-worker >&2; sleep 1000"
"#,
    );
    let mut o = Orchd::start_with(&cfg, &["--no-watch", "--log-format", "json"], Stdio::null());
    o.wait_log("hello-from-worker", 1);
    assert_eq!(o.stop(), 0);
    let log = o.log();
    let mut saw_worker = false;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for k in ["ts", "level", "target", "msg"] {
            assert!(v.get(k).is_some(), "{k} missing in {line}");
        }
        if v["msg"] == "hello-from-worker" {
            assert_eq!(v["target"], "w[0]");
            saw_worker = true;
        }
    }
    assert!(saw_worker, "{log}");
}

/// Negative control for the harness: dropping an [`Orchd`] whose process exited but
/// left a process it started running fails the test (the check in `Drop` can fail).
#[test]
#[should_panic(expected = "outlived it")]
fn harness_fails_a_test_whose_orchd_leaves_a_process_behind() {
    let dir = TempDir::new("harness-survivor");
    let cfg = dir.write("pool.toml", "");
    // Not orchd: a shell that starts a sleeper and exits without stopping it.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "sleep 1000 2>/dev/null & echo \"sleeper $!\" >&2"]);
    let mut o = Orchd::spawn(cmd, &cfg);
    assert_eq!(o.wait_exit(DEADLINE), 0);
    let sleeper: u32 = o.log().trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(alive(sleeper), "the sleeper is gone already");
    drop(o); // panics, and kills the sleeper
}
