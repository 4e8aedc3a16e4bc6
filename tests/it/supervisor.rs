//! Processes (SPEC 4) and shutdown (SPEC 8): instances, restarts with backoff,
//! give_up, stopping process groups, orphans, worker output, idle cost.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

// ---------------------------------------------------------------------------------
// Helpers

/// Start orchd from a prepared command (program and arguments already set), with
/// stderr captured like [`Orchd::start`] does.
fn spawn_orchd(mut cmd: Command, config: &Path) -> Orchd {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    Orchd::spawn(cmd, config)
}

/// The number a worker wrote to stderr as `WORD N` (logged as `LABEL: WORD N`).
fn worker_said(o: &Orchd, label: &str, word: &str) -> u32 {
    let needle = format!(" {label}: {word} ");
    wait_for(&format!("{needle:?} in the log"), DEADLINE, || {
        o.log().lines().find_map(|l| {
            l[l.find(&needle)? + needle.len()..]
                .trim()
                .parse::<u32>()
                .ok()
        })
    })
}

/// Gaps in ms between each exit of `label` (or failed start) and its next start,
/// measured on orchd's own log timestamps.
fn restart_gaps(o: &Orchd, label: &str) -> Vec<i64> {
    let exited = [
        format!(" {label} exited with "),
        format!(" {label} failed to start;"),
    ];
    let start = format!(" {label} started (pid ");
    let mut last_exit = None;
    let mut gaps = vec![];
    for l in o.log().lines() {
        if exited.iter().any(|e| l.contains(e.as_str())) {
            last_exit = Some(ts_ms(l));
        } else if l.contains(&start) {
            if let Some(t) = last_exit.take() {
                gaps.push(ts_ms(l) - t);
            }
        }
    }
    gaps
}

/// Each measured gap is at least the configured delay (timers never fire early; log
/// timestamps are truncated to the ms) and not much more (loaded machine).
fn assert_gaps(gaps: &[i64], want: &[i64], log: &str) {
    assert!(
        gaps.len() >= want.len(),
        "only {} gaps: {gaps:?}\n{log}",
        gaps.len()
    );
    for (i, (&g, &w)) in gaps.iter().zip(want).enumerate() {
        assert!(
            g >= w - 2 && g <= w + w / 4 + 150,
            "gap {} is {g} ms, expected about {w} ms (gaps {gaps:?}, expected {want:?})\n{log}",
            i + 1
        );
    }
}

/// (ppid, pgid, state) of a process, None once it is gone (zombies included).
fn stat(pid: u32) -> Option<(u32, u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    // After "(comm)": state ppid pgrp session ...
    Some((f[1].parse().ok()?, f[2].parse().ok()?, f[0].chars().next()?))
}

/// Live (non-zombie) processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .map(|p| p.0)
        .filter(|&pid| stat(pid).is_some_and(|s| s.1 == pgid && s.2 != 'Z'))
        .collect()
}

/// Open fds of a process.
fn fds(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

fn fd_target(pid: u32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// SIGTERM orchd; (exit code, time until it exited).
fn stop_timed(o: &mut Orchd) -> (i32, Duration) {
    let t0 = Instant::now();
    o.signal(libc::SIGTERM);
    let code = o.wait_exit(DEADLINE);
    (code, t0.elapsed())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------
// Starting instances

#[test]
fn instances_get_index_pool_env_own_group_and_cwd() {
    let dir = TempDir::new("sup-env");
    std::fs::create_dir(dir.join("work")).unwrap();
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["sleep", "1000"]
count = 3
cwd = "work"
env = { GREETING = "hello world" }
stop_timeout = "500ms"
"#,
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("--no-watch")
        .arg(&cfg)
        .env("ORCHD_TEST_INHERITED", "yes");
    let mut o = spawn_orchd(cmd, &cfg);
    o.wait_ready();
    let work = std::fs::canonicalize(dir.join("work")).unwrap();
    let mut groups = vec![];
    for i in 0..3u32 {
        let pid = wait_started(&o, &format!("web[{i}]"), 1)[0];
        assert!(alive(pid), "web[{i}] pid {pid} is not running");
        assert_eq!(env_of(pid, "ORCHD_POOL").as_deref(), Some("web"));
        assert_eq!(env_of(pid, "ORCHD_INSTANCE"), Some(i.to_string()));
        assert_eq!(env_of(pid, "GREETING").as_deref(), Some("hello world"));
        assert_eq!(
            env_of(pid, "ORCHD_TEST_INHERITED").as_deref(),
            Some("yes"),
            "orchd's own environment is not passed on"
        );
        let (ppid, pgid, _) = stat(pid).unwrap();
        assert_eq!(ppid, o.pid(), "web[{i}] is not orchd's child");
        assert_eq!(pgid, pid, "web[{i}] does not lead its own process group");
        assert_ne!(
            pgid,
            stat(o.pid()).unwrap().1,
            "web[{i}] is in orchd's group"
        );
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, work, "cwd of web[{i}]");
        groups.push(pgid);
    }
    groups.sort();
    groups.dedup();
    assert_eq!(groups.len(), 3, "process groups are not distinct");
    assert_eq!(o.stop(), 0);
}

#[test]
fn workers_get_no_fd_beyond_0_1_2_even_one_orchd_inherited() {
    let dir = TempDir::new("sup-fds");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["sleep", "1000"]
count = 2
stop_timeout = "500ms"

[pool.bg]
command = ["sleep", "1000"]
stop_timeout = "500ms"

[[route]]
from = "unix:web.sock"
to = "web"
"#,
    );
    // orchd inherits fd 7 (not close-on-exec) from its parent.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec 7</dev/null; exec \"$0\" --no-watch \"$1\"")
        .arg(BIN)
        .arg(&cfg);
    let mut o = spawn_orchd(cmd, &cfg);
    o.wait_ready();
    let mut workers = wait_started(&o, "web[0]", 1);
    workers.extend(wait_started(&o, "web[1]", 1));
    workers.extend(wait_started(&o, "bg[0]", 1));
    // The premise: orchd itself holds fd 7 and plenty of others.
    assert_eq!(
        fd_target(o.pid(), 7),
        "/dev/null",
        "orchd did not inherit fd 7"
    );
    assert!(fds(o.pid()).len() > 8, "orchd fds: {:?}", fds(o.pid()));
    for pid in workers {
        // A program may briefly open files of its own while starting (sleep reads
        // its locale); an fd leaked by orchd stays for good.
        let _ = wait_for_some(Duration::from_secs(3), || {
            (fds(pid) == [0, 1, 2]).then_some(())
        });
        assert_eq!(
            fds(pid),
            [0, 1, 2],
            "worker {pid} has extra fds: {:?}",
            fds(pid)
                .into_iter()
                .map(|fd| (fd, fd_target(pid, fd)))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(o.stop(), 0);
}

#[test]
fn stdin_is_a_pipe_for_routed_pools_and_dev_null_otherwise() {
    let dir = TempDir::new("sup-stdin");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = "exec sleep 1000"
stop_timeout = "500ms"

[pool.bg]
command = "exec sleep 1000"
stop_timeout = "500ms"

[[route]]
from = "unix:web.sock"
to = "web"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let web = wait_started(&o, "web[0]", 1)[0];
    let bg = wait_started(&o, "bg[0]", 1)[0];
    assert!(
        fd_target(web, 0).starts_with("pipe:"),
        "{}",
        fd_target(web, 0)
    );
    assert_eq!(fd_target(bg, 0), "/dev/null");
    for pid in [web, bg] {
        assert!(fd_target(pid, 1).starts_with("pipe:"), "stdout of {pid}");
        assert!(fd_target(pid, 2).starts_with("pipe:"), "stderr of {pid}");
    }
    assert_eq!(o.stop(), 0);
}

// ---------------------------------------------------------------------------------
// Restarts

#[test]
fn sigkilled_instance_is_replaced_quickly_with_the_same_index() {
    let dir = TempDir::new("sup-kill");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["sleep", "1000"]
count = 2
backoff = { initial = "0s" }
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let keep = wait_started(&o, "web[0]", 1)[0];
    let mut pid = wait_started(&o, "web[1]", 1)[0];
    let mut latencies = vec![];
    for n in 2..=21 {
        let t0 = Instant::now();
        kill(pid, libc::SIGKILL);
        let new = loop {
            let p = started(&o, "web[1]");
            if p.len() >= n {
                break p[n - 1];
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "no replacement for web[1] within {DEADLINE:?}\n{}",
                o.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        latencies.push(t0.elapsed());
        assert_ne!(new, pid);
        assert!(alive(new), "replacement {new} is not running");
        assert_eq!(env_of(new, "ORCHD_INSTANCE").as_deref(), Some("1"));
        assert_eq!(env_of(new, "ORCHD_POOL").as_deref(), Some("web"));
        assert_eq!(stat(new).unwrap().1, new, "replacement leads its group");
        pid = new;
    }
    let worst = *latencies.iter().max().unwrap();
    let med = median(&mut latencies);
    eprintln!(
        "restart latency after SIGKILL (backoff 0s, 20 kills): median {med:?}, worst {worst:?}"
    );
    assert!(
        worst < Duration::from_secs(2),
        "slowest replacement took {worst:?}"
    );
    assert_eq!(started(&o, "web[0]"), [keep], "web[0] was disturbed");
    assert!(alive(keep));
    assert_eq!(o.stop(), 0);
}

#[test]
fn backoff_delays_grow_by_factor() {
    let dir = TempDir::new("sup-backoff");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = "exit 1"
backoff = { initial = "100ms", factor = 2.0, jitter = 0.0, max = "10s", reset_after = "1m" }
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    wait_started(&o, "web[0]", 5);
    assert_eq!(o.stop(), 0);
    let gaps = restart_gaps(&o, "web[0]");
    eprintln!("backoff gaps (ms), expected 100/200/400/800: {gaps:?}");
    assert_gaps(&gaps, &[100, 200, 400, 800], &o.log());
}

#[test]
fn backoff_restarts_from_initial_after_a_run_of_reset_after() {
    let dir = TempDir::new("sup-reset");
    // Runs 1-3 and 5- fail at once; run 4 lives longer than reset_after.
    dir.write(
        "worker.sh",
        "#!/bin/sh\nn=0\n[ -f count ] && read n < count\nn=$((n + 1))\necho $n > count\n\
         [ \"$n\" = 4 ] && sleep 1\nexit 1\n",
    );
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["./worker.sh"]
backoff = { initial = "100ms", factor = 2.0, jitter = 0.0, max = "10s", reset_after = "500ms" }
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    wait_started(&o, "web[0]", 6);
    assert_eq!(o.stop(), 0);
    let gaps = restart_gaps(&o, "web[0]");
    eprintln!("backoff gaps (ms) around a long run, expected 100/200/400/100/200: {gaps:?}");
    assert_gaps(&gaps, &[100, 200, 400, 100, 200], &o.log());
}

#[test]
fn give_up_fails_the_instance_until_cooldown() {
    let dir = TempDir::new("sup-giveup");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = "exit 1"
backoff = { initial = "20ms", factor = 1.0, jitter = 0.0 }
give_up = { restarts = 3, within = "1m", cooldown = "1500ms" }
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("giving up", 1);
    let gave_up = lines_with(&o, "giving up").remove(0);
    assert!(
        gave_up.contains("ERROR"),
        "not logged as an error: {gave_up}"
    );
    assert!(gave_up.contains("web[0]"), "{gave_up}");
    // The first start and 3 restarts; a 4th restart within `within` is one too many.
    assert_eq!(started(&o, "web[0]").len(), 4, "{}", o.log());
    // Failed: nothing starts until the cooldown brings it back (timed on orchd's
    // log, so a slow test thread cannot make this flaky).
    wait_started(&o, "web[0]", 5);
    let fifth = lines_with(&o, " web[0] started (pid ").remove(4);
    let waited = ts_ms(&fifth) - ts_ms(&gave_up);
    assert!(
        (1498..5000).contains(&waited),
        "restarted {waited} ms after giving up (cooldown 1500ms)\n{}",
        o.log()
    );
    assert_eq!(o.stop(), 0);
}

/// Instances whose exit depends on ORCHD_INSTANCE: 0 exits 0, 1 exits 1, 2 dies by
/// SIGKILL.
const EXITS: &str = "case $ORCHD_INSTANCE in 0) exit 0;; 1) exit 1;; *) kill -KILL $$;; esac";

fn policy_config(dir: &TempDir, restart: &str) -> PathBuf {
    dir.write(
        "pool.toml",
        &format!(
            r#"
[pool.web]
command = '{EXITS}'
count = 3
restart = "{restart}"
backoff = {{ initial = "10ms", factor = 2.0, jitter = 0.0 }}
stop_timeout = "500ms"
"#
        ),
    )
}

#[test]
fn restart_on_failure_restarts_failures_but_not_clean_exits() {
    let dir = TempDir::new("sup-onfailure");
    let mut o = Orchd::start(&policy_config(&dir, "on-failure"));
    wait_started(&o, "web[1]", 2); // exit 1
    wait_started(&o, "web[2]", 2); // SIGKILL
    o.wait_log("web[0] exited with status 0", 1);
    // A bounded window in which a (wrong) restart would show.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        started(&o, "web[0]").len(),
        1,
        "clean exit restarted\n{}",
        o.log()
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn restart_always_restarts_clean_exits_too() {
    let dir = TempDir::new("sup-always");
    let mut o = Orchd::start(&policy_config(&dir, "always"));
    wait_started(&o, "web[0]", 2); // exit 0
    wait_started(&o, "web[1]", 2); // exit 1
    wait_started(&o, "web[2]", 2); // SIGKILL
    assert_eq!(o.stop(), 0);
}

#[test]
fn restart_never_restarts_nothing() {
    let dir = TempDir::new("sup-never");
    let mut o = Orchd::start(&policy_config(&dir, "never"));
    o.wait_log("not restarting", 3);
    // A bounded window in which a (wrong) restart would show.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        assert_eq!(
            started(&o, &format!("web[{i}]")).len(),
            1,
            "web[{i}] restarted\n{}",
            o.log()
        );
    }
    assert!(o.child.try_wait().unwrap().is_none(), "orchd exited");
    assert_eq!(o.stop(), 0);
}

#[test]
fn failing_spawn_is_logged_once_per_attempt_with_backoff() {
    let dir = TempDir::new("sup-spawnfail");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.missing]
command = ["/nonexistent/orchd-test-binary"]
backoff = { initial = "100ms", factor = 2.0, max = "400ms", jitter = 0.0 }

[pool.badcwd]
command = "exec sleep 1000"
cwd = "no-such-dir"
backoff = { initial = "100ms", factor = 2.0, max = "400ms", jitter = 0.0 }
"#,
    );
    let t0 = Instant::now();
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    // Observe a window: attempts must follow the backoff, not spin.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(o.stop(), 0);
    let window = t0.elapsed().as_millis() as i64;
    // Attempts the schedule (0, +100, +200, +400, +400, ...) allows in the window.
    let (mut at, mut delay, mut allowed) = (0, 100, 1);
    while at + delay <= window {
        at += delay;
        delay = (delay * 2).min(400);
        allowed += 1;
    }
    for label in ["missing[0]", "badcwd[0]"] {
        let errors = lines_with(&o, &format!(" {label} failed to start "));
        // One line per attempt: the OS error and what happens next, together.
        let retries: Vec<&String> = errors
            .iter()
            .filter(|l| l.contains("; restarting in"))
            .collect();
        eprintln!(
            "{label}: {} attempts in {window} ms (schedule allows {allowed})",
            errors.len()
        );
        assert!(
            errors
                .iter()
                .all(|l| l.contains("No such file or directory")),
            "error lines without the OS error: {errors:#?}"
        );
        assert_eq!(
            errors.len(),
            retries.len(),
            "the OS error is not logged exactly once per attempt\n{}",
            o.log()
        );
        assert!(
            (3..=allowed + 1).contains(&errors.len()),
            "{} attempts of {label} in {window} ms (schedule allows {allowed})\n{}",
            errors.len(),
            o.log()
        );
    }
}

#[test]
fn failing_spawn_with_zero_backoff_is_not_a_tight_loop() {
    let dir = TempDir::new("sup-spawnfail0");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.missing]
command = ["/nonexistent/orchd-test-binary"]
backoff = { initial = "0s" }
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    // A bounded window in which to count attempts.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(o.stop(), 0);
    let attempts = o.log_count(" missing[0] failed to start [");
    eprintln!("{attempts} failed spawns in about 1 s");
    assert!(
        attempts <= 50,
        "{attempts} failed spawns in about 1 s: a tight loop"
    );
}

#[test]
fn zero_initial_backoff_stays_zero_however_many_restarts() {
    let dir = TempDir::new("sup-zero");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["/bin/false"]
backoff = { initial = "0s", factor = 10.0, max = "1m", jitter = 0.0, reset_after = "1h" }
"#,
    );
    let mut o = Orchd::start(&cfg);
    // factor^(n-1) overflows to infinity at n = 310.
    wait_for("320 starts or a non-zero restart delay", DEADLINE, || {
        let nonzero = o
            .log()
            .lines()
            .any(|l| l.contains("restarting in") && !l.contains("restarting in 0s"));
        (nonzero || started(&o, "web[0]").len() >= 320).then_some(())
    });
    assert_eq!(o.stop(), 0);
    let bad: Vec<String> = lines_with(&o, "restarting in")
        .into_iter()
        .filter(|l| !l.contains("restarting in 0s"))
        .collect();
    assert!(
        bad.is_empty(),
        "non-zero delays with initial = 0s: {bad:#?}"
    );
}

// ---------------------------------------------------------------------------------
// Stopping

#[test]
fn group_member_ignoring_term_is_killed_after_stop_timeout_when_leader_exits() {
    let dir = TempDir::new("sup-stopgroup");
    dir.write(
        "worker.sh",
        "#!/bin/sh\n(trap '' TERM; exec sleep 1000) &\necho \"child $!\" >&2\nwait\n",
    );
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["./worker.sh"]
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let leader = wait_started(&o, "web[0]", 1)[0];
    let child = worker_said(&o, "web[0]", "child");
    assert_eq!(
        stat(child).map(|s| s.1),
        Some(leader),
        "child not in the group"
    );
    wait_ignores_term(child);
    let (code, took) = stop_timed(&mut o);
    assert_eq!(code, 0);
    assert!(
        o.log_count("web[0] stopped (signal TERM)") == 1,
        "premise: the leader exits on SIGTERM\n{}",
        o.log()
    );
    assert!(!alive(child), "the child ignoring SIGTERM survived orchd");
    assert!(
        took >= Duration::from_millis(480),
        "orchd exited after {took:?}, before stop_timeout (500ms)\n{}",
        o.log()
    );
    assert!(took < Duration::from_secs(5), "orchd took {took:?} to stop");
    eprintln!("stop with a lingering group member took {took:?} (stop_timeout 500ms)");
}

#[test]
fn leftover_group_of_an_exited_leader_is_killed_after_stop_timeout() {
    let dir = TempDir::new("sup-linger");
    dir.write(
        "worker.sh",
        // The leader exits only once its child ignores TERM (orchd sends TERM to the
        // group as soon as the leader is gone).
        "#!/bin/sh\n(trap '' TERM; : > trapped; exec sleep 1000) &\nwhile [ ! -e trapped ]; do sleep 0.01; done\necho \"child $!\" >&2\nexit 1\n",
    );
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["./worker.sh"]
backoff = { initial = "30s" }
stop_timeout = "2s"
"#,
    );
    let mut o = Orchd::start(&cfg);
    let leader = wait_started(&o, "web[0]", 1)[0];
    let child = worker_said(&o, "web[0]", "child");
    assert_eq!(
        stat(child).map(|s| s.1),
        Some(leader),
        "child not in the group"
    );
    o.wait_log("web[0] exited with status 1", 1);
    wait_for("the leftover child to be killed", DEADLINE, || {
        (!alive(child)).then_some(())
    });
    // The child can be seen dead before the reader thread has the log line.
    o.wait_log("sending KILL", 1);
    // Timed on orchd's own log: the KILL went out at stop_timeout, not at once.
    let exit = ts_ms(&lines_with(&o, "web[0] exited with status 1")[0]);
    let kill = ts_ms(
        lines_with(&o, "sending KILL")
            .first()
            .unwrap_or_else(|| panic!("no KILL logged\n{}", o.log())),
    );
    assert!(
        kill - exit >= 1998,
        "KILL {} ms after the leader exited, before stop_timeout (2s)",
        kill - exit
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn worker_ignoring_term_is_killed_after_stop_timeout() {
    let dir = TempDir::new("sup-stopkill");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = "trap '' TERM; exec sleep 1000"
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let pid = wait_started(&o, "web[0]", 1)[0];
    wait_ignores_term(pid);
    let (code, took) = stop_timed(&mut o);
    assert_eq!(code, 0);
    assert!(!alive(pid), "worker survived orchd");
    assert!(
        took >= Duration::from_millis(480),
        "orchd exited after {took:?}, before stop_timeout (500ms)"
    );
    assert!(took < Duration::from_secs(5), "orchd took {took:?} to stop");
    assert_eq!(
        o.log_count("web[0] stopped (signal KILL)"),
        1,
        "{}",
        o.log()
    );
}

#[test]
fn second_sigterm_kills_at_once() {
    let dir = TempDir::new("sup-second");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = "trap '' TERM; exec sleep 1000"
count = 2
stop_timeout = "30s"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let pids = [
        wait_started(&o, "web[0]", 1)[0],
        wait_started(&o, "web[1]", 1)[0],
    ];
    pids.iter().for_each(|&p| wait_ignores_term(p));
    let t0 = Instant::now();
    o.signal(libc::SIGTERM);
    o.wait_log("stopping web[1]", 1);
    o.signal(libc::SIGTERM);
    let code = o.wait_exit(DEADLINE);
    let took = t0.elapsed();
    assert_eq!(code, 0);
    assert!(
        took < Duration::from_secs(5),
        "orchd took {took:?} after a second SIGTERM (stop_timeout 30s)"
    );
    for p in pids {
        assert!(!alive(p), "worker {p} survived");
    }
}

#[test]
fn worker_children_and_orphans_do_not_outlive_orchd() {
    let dir = TempDir::new("sup-tree");
    dir.write(
        "worker.sh",
        "#!/bin/sh\nsleep 1000 &\necho \"child $!\" >&2\n\
         sh -c 'sleep 1000 & echo \"orphan $!\" >&2'\nexec sleep 1000\n",
    );
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["./worker.sh"]
count = 2
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut all = vec![];
    for i in 0..2 {
        let label = format!("web[{i}]");
        let leader = wait_started(&o, &label, 1)[0];
        let child = worker_said(&o, &label, "child");
        let orphan = worker_said(&o, &label, "orphan");
        // The orphan was reparented to orchd, the subreaper.
        wait_for("the orphan to be reparented to orchd", DEADLINE, || {
            (stat(orphan).map(|s| s.0) == Some(o.pid())).then_some(())
        });
        all.extend([leader, child, orphan]);
    }
    assert_eq!(o.stop(), 0);
    for p in &all {
        assert!(!alive(*p), "{p} outlived orchd (all: {all:?})");
    }
    for leader in [all[0], all[3]] {
        let left = group_members(leader);
        assert!(left.is_empty(), "left in group {leader}: {left:?}");
    }
}

#[test]
fn orphaned_grandchild_is_reaped_while_running() {
    let dir = TempDir::new("sup-reap");
    dir.write(
        "worker.sh",
        "#!/bin/sh\nsh -c 'sleep 3 & echo \"orphan $!\" >&2'\nexec sleep 1000\n",
    );
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["./worker.sh"]
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let orphan = worker_said(&o, "web[0]", "orphan");
    wait_for("the orphan to be reparented to orchd", DEADLINE, || {
        (stat(orphan).map(|s| s.0) == Some(o.pid())).then_some(())
    });
    // It exits after 3 s (alive past the ready line, which comes 1 s after the
    // start); orchd must reap it: no zombie stays behind.
    wait_for("the orphan to be reaped", DEADLINE, || {
        (stat(orphan).is_none_or(|s| s.0 != o.pid())).then_some(())
    });
    let zombies: Vec<_> = processes()
        .into_iter()
        .filter(|p| p.1 == o.pid() && p.3 == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies of orchd: {zombies:?}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn descendant_that_left_the_group_does_not_outlive_orchd() {
    let dir = TempDir::new("sup-setsid");
    dir.write(
        "worker.sh",
        "#!/bin/sh\nsh -c 'setsid sleep 1000 & echo \"escapee $!\" >&2'\nexec sleep 1000\n",
    );
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["./worker.sh"]
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let leader = wait_started(&o, "web[0]", 1)[0];
    let escapee = worker_said(&o, "web[0]", "escapee");
    wait_for(
        "the escapee to be in its own session under orchd",
        DEADLINE,
        || {
            let (ppid, pgid, _) = stat(escapee)?;
            (ppid == o.pid() && pgid == escapee).then_some(())
        },
    );
    assert_ne!(leader, escapee);
    assert_eq!(o.stop(), 0);
    assert!(!alive(escapee), "the setsid escapee outlived orchd");
}

/// Negative control: the survivor checks above can fail. A shell killed alone (not
/// its group) leaves its background child running.
#[test]
fn negative_control_sigkill_of_the_leader_alone_leaves_its_child_alive() {
    let mut sh = Command::new("/bin/sh")
        .arg("-c")
        .arg("sleep 1000 & echo $!; wait")
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: u32 = line.trim().parse().unwrap();
    kill(sh.id(), libc::SIGKILL);
    sh.wait().unwrap();
    // A bounded window in which the child would die if it were going to.
    std::thread::sleep(Duration::from_millis(200));
    let survived = alive(child);
    // Clean up before asserting.
    unsafe {
        libc::kill(-(sh.id() as i32), libc::SIGKILL);
    }
    assert!(
        survived,
        "the child died with its leader: the control shows nothing"
    );
}

// ---------------------------------------------------------------------------------
// Worker output

#[test]
fn worker_stderr_lines_are_logged_with_the_instance_as_target() {
    let dir = TempDir::new("sup-stderr");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = 'echo "hello from $ORCHD_INSTANCE" >&2; echo "second line" >&2; exec sleep 1000'
count = 2
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    o.wait_log("second line", 2);
    for i in 0..2 {
        let want = format!(" web[{i}]: hello from {i}");
        assert_eq!(o.log_count(&want), 1, "no {want:?} line in\n{}", o.log());
    }
    assert_eq!(o.log_count(" web[0]: second line"), 1, "{}", o.log());
    assert_eq!(o.stop(), 0);
}

#[test]
fn stdout_of_unrouted_pool_is_logged_with_the_instance_as_target() {
    let dir = TempDir::new("sup-stdout");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.bg]
command = 'echo "out of $ORCHD_INSTANCE"; exec sleep 1000'
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    o.wait_log(" bg[0]: out of 0", 1);
    assert_eq!(o.stop(), 0);
}

#[test]
fn rust_log_filters_worker_output_per_pool() {
    let dir = TempDir::new("sup-filter");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.loud]
command = 'echo "loud says hi" >&2; exec sleep 1000'
stop_timeout = "500ms"

[pool.quiet]
command = 'echo "quiet says hi" >&2; exec sleep 1000'
stop_timeout = "500ms"
"#,
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("--no-watch")
        .arg(&cfg)
        .env("RUST_LOG", "info,quiet=off");
    let mut o = spawn_orchd(cmd, &cfg);
    o.wait_ready();
    o.wait_log("loud says hi", 1);
    wait_started(&o, "quiet[0]", 1);
    // A bounded window in which a (wrongly) logged line would show.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(o.log_count("quiet says hi"), 0, "{}", o.log());
    assert_eq!(o.stop(), 0);
}

// ---------------------------------------------------------------------------------
// Cost

#[test]
fn idle_orchd_with_20_workers_makes_no_context_switches() {
    let dir = TempDir::new("sup-idle");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["sleep", "1000"]
count = 20
stop_timeout = "500ms"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_started(&o, "web[19]", 1);
    wait_for("20 workers", DEADLINE, || {
        (o.children().len() == 20).then_some(())
    });
    // Let start-up settle.
    std::thread::sleep(Duration::from_millis(300));
    let c0 = ctx_switches(o.pid());
    std::thread::sleep(Duration::from_secs(3));
    let c3 = ctx_switches(o.pid());
    std::thread::sleep(Duration::from_secs(2));
    let c5 = ctx_switches(o.pid());
    let rss = vm_rss_kib(o.pid());
    eprintln!(
        "idle with 20 workers: {} context switches in 5 s ({} in the first 3 s), VmRSS {rss} KiB",
        c5 - c0,
        c3 - c0
    );
    assert!(c3 - c0 <= 2, "{} context switches in 3 s idle", c3 - c0);
    assert_eq!(o.stop(), 0);
}

#[test]
fn starts_200_instances_quickly() {
    let dir = TempDir::new("sup-200");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.web]
command = ["sleep", "1000"]
count = 200
stop_timeout = "2s"
"#,
    );
    let t0 = Instant::now();
    let mut o = Orchd::start(&cfg);
    wait_for("ready", Duration::from_secs(60), || {
        (o.log_count("ready:") > 0).then_some(())
    });
    let took = t0.elapsed();
    let ready = lines_with(&o, "ready:").remove(0);
    let first = o.log().lines().next().map(ts_ms).unwrap();
    eprintln!(
        "200 instances: ready after {took:?} (orchd's log: {} ms from its first line)",
        ts_ms(&ready) - first
    );
    assert!(ready.contains("200 instance"), "{ready}");
    assert!(took < Duration::from_secs(20), "ready after {took:?}");
    let kids = o.children();
    assert_eq!(kids.len(), 200);
    assert_eq!(o.stop(), 0);
    let left: Vec<_> = kids.into_iter().filter(|&k| alive(k)).collect();
    assert!(left.is_empty(), "survivors: {left:?}");
}
