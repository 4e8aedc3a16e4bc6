//! Issue 12 hardening of config input: CONFIG and `plan PATH` are read only from
//! regular files of at most 16 MiB, without blocking the loop; durations are capped at
//! 365 days and nothing overflows at the cap; `--check` refuses what cannot run (NUL in
//! a command, one unix socket written two ways, overlapping TCP listeners).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::common::*;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain mkfifo(3) on a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

fn error_of(v: &serde_json::Value) -> String {
    assert_eq!(v["ok"], false, "expected an error answer, got {v}");
    v["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn plan_of_dev_zero_is_refused_at_once_and_memory_stays_small() {
    let dir = TempDir::new("hc-plan-zero");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let sock = dir.join("ctl.sock");
    let t = Instant::now();
    let v = control(&sock, "plan /dev/zero");
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
    assert_eq!(control(&sock, "status")["ok"], true);
    assert_eq!(o.stop(), 0);
}

#[test]
fn plan_of_fifo_is_refused_and_orchd_stays_responsive() {
    let dir = TempDir::new("hc-plan-fifo");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let fifo = dir.join("next.toml");
    mkfifo(&fifo);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let sock = dir.join("ctl.sock");
    let v = control(&sock, &format!("plan {}", fifo.display()));
    let err = error_of(&v);
    assert!(err.contains("not a regular file (fifo)"), "{err}");
    assert_eq!(control(&sock, "status")["ok"], true);
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
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
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
    let err = error_of(&control(&sock, "reload"));
    assert!(err.contains("not a regular file (fifo)"), "{err}");
    let status = control(&sock, "status");
    assert_eq!(status["ok"], true, "{status}");
    let mut now = o.children();
    now.sort();
    assert_eq!(now, kids, "the running workers were left alone");
    assert_eq!(o.stop(), 0);
}

#[test]
fn watched_config_swapped_for_a_fifo_keeps_the_running_config() {
    let dir = TempDir::new("hc-watch-fifo");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let mut o = Orchd::start_with(&cfg, &[], Stdio::null());
    o.wait_ready();
    o.wait_log("watching", 1);
    swap_for_fifo_symlink(&dir, &cfg);
    o.wait_log("not a regular file (fifo)", 1);
    let status = control(&dir.join("ctl.sock"), "status");
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

    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let err = error_of(&control(
        &dir.join("ctl.sock"),
        &format!("plan {}", big.display()),
    ));
    assert!(err.contains("larger than 16 MiB"), "{err}");
    assert_eq!(o.stop(), 0);
}

// ---- durations -------------------------------------------------------------------

const HUGE: &str = "18446744073709551615s";

#[test]
fn check_rejects_every_overflowing_duration_with_its_key() {
    let dir = TempDir::new("hc-dur");
    let toml = format!(
        r#"
[orchd]
drain_timeout = "{HUGE}"

[pool.web]
command = ["cat"]
backoff = {{ initial = "{HUGE}", max = "{HUGE}", reset_after = "{HUGE}" }}
give_up = {{ restarts = 3, within = "{HUGE}", cooldown = "{HUGE}" }}
stop_timeout = "{HUGE}"

[[route]]
from = "unix:web.sock"
to = "web"
timeout = "{HUGE}"
"#
    );
    let cfg = dir.write("pool.toml", &toml);
    let (code, _, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    for (marker, key, n) in [
        ("drain_timeout", "orchd.drain_timeout", 1),
        ("backoff", "pool.web.backoff.initial", 1),
        ("backoff", "pool.web.backoff.max", 2),
        ("backoff", "pool.web.backoff.reset_after", 3),
        ("give_up", "pool.web.give_up.within", 1),
        ("give_up", "pool.web.give_up.cooldown", 2),
        ("stop_timeout", "pool.web.stop_timeout", 1),
        ("timeout =", "route[1].timeout", 1),
    ] {
        let (i, line) = toml
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with(marker))
            .unwrap();
        let col = line
            .match_indices(&format!("\"{HUGE}\""))
            .nth(n - 1)
            .unwrap()
            .0
            + 1;
        let want = format!(
            "{}:{}:{col}: {key}: expected a duration of at most 365 days, found \"{HUGE}\"",
            cfg.display(),
            i + 1
        );
        assert!(err.lines().any(|l| l == want), "no {want:?} in:\n{err}");
    }
    // Every error is one of those eight.
    assert_eq!(
        err.lines().filter(|l| l.contains(".toml:")).count(),
        8,
        "{err}"
    );

    // Start-up refuses it too, instead of panicking later.
    let mut o = Orchd::start(&cfg);
    assert_eq!(o.wait_exit(DEADLINE), 2);
}

#[test]
fn durations_at_the_cap_run_restart_and_shut_down_cleanly() {
    let dir = TempDir::new("hc-dur-cap");
    let cap = "365d";
    let toml = format!(
        r#"
[orchd]
drain_timeout = "{cap}"
control = "ctl.sock"

[pool.echo]
command = ["cat"]
count = 2
backoff = {{ initial = "{cap}", max = "{cap}", factor = 1e300, jitter = 1.0, reset_after = "{cap}" }}
stop_timeout = "{cap}"

[pool.quitter]
command = ["sleep", "1000"]
give_up = {{ restarts = 0, within = "{cap}", cooldown = "{cap}" }}
stop_timeout = "{cap}"

[pool.mute]
command = ["tail", "-f", "/dev/null"]
stop_timeout = "{cap}"

[[route]]
from = "unix:echo.sock"
to = "echo"
timeout = "{cap}"

[[route]]
from = "unix:mute.sock"
to = "mute"
timeout = "{cap}"
"#
    );
    let cfg = dir.write("pool.toml", &toml);
    let (code, _, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut c = Client::connect(&dir.join("echo.sock"));
    assert_eq!(c.request("hello"), "hello");
    assert_eq!(c.request("again"), "again");
    // Kill one worker of each pool: a restart in 365 days (the other `echo` instance
    // keeps serving), and a give-up with a 365-day cooldown.
    let running = |prog: &str| {
        let prog = format!("{prog}\0");
        wait_for(&format!("a running {prog}"), DEADLINE, || {
            o.children().into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.starts_with(&prog))
            })
        })
    };
    for pid in [running("cat"), running("sleep")] {
        kill(pid, libc::SIGKILL);
    }
    o.wait_log("failed", 1);
    o.wait_log("restarting in", 1);
    assert_eq!(c.request("still"), "still");
    drop(c);
    // A message that is never answered (365-day timeout) makes shutdown wait for
    // drain_timeout; a second SIGTERM ends the wait.
    let mut m = Client::connect(&dir.join("mute.sock"));
    m.send("never answered");
    let sock = dir.join("ctl.sock");
    wait_for("the message in flight", DEADLINE, || {
        let v = control(&sock, "status");
        let pools = v["pools"].as_array()?.clone();
        let mute = pools.iter().find(|p| p["name"] == "mute")?;
        (mute["instances"][0]["inflight"] == 1).then_some(())
    });
    o.signal(libc::SIGTERM);
    o.wait_log("waiting up to", 1);
    o.signal(libc::SIGTERM);
    assert_eq!(m.recv(), "ERR shutting down");
    assert_eq!(o.wait_exit(DEADLINE), 0, "{}", o.log());
    assert!(!o.log().contains("panicked"), "{}", o.log());
}

// ---- --check refuses what cannot run ---------------------------------------------

fn check(dir: &TempDir, toml: &str) -> (PathBuf, i32, String) {
    let cfg = dir.write("pool.toml", toml);
    let (code, _, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    (cfg, code, err)
}

/// `--check` fails, and the error line at `at` (`LINE:COL: KEY: `) is returned.
fn check_error_at(dir: &TempDir, toml: &str, at: &str) -> String {
    let (cfg, code, err) = check(dir, toml);
    assert_eq!(code, 1, "{err}");
    let want = format!("{}:{at}", cfg.display());
    err.lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no {want:?} in:\n{err}"))
        .to_string()
}

#[test]
fn check_rejects_nul_in_a_command() {
    let dir = TempDir::new("hc-nul");
    let toml = r#"
[pool.argv]
command = ["echo", "a\u0000b"]

[pool.shell]
command = "echo a\u0000b"
"#;
    let (cfg, code, err) = check(&dir, toml);
    assert_eq!(code, 1, "{err}");
    let c = cfg.display();
    for want in [
        format!("{c}:3:20: pool.argv.command[2]: expected a string without a NUL character (exec cannot pass one)"),
        format!("{c}:6:11: pool.shell.command: expected a string without a NUL character (exec cannot pass one)"),
    ] {
        assert!(err.lines().any(|l| l == want), "no {want:?} in:\n{err}");
    }
}

#[test]
fn check_rejects_one_unix_socket_written_two_ways() {
    let dir = TempDir::new("hc-dotdot");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let toml = r#"
[pool.web]
command = ["cat"]

[[route]]
from = "unix:web.sock"
to = "web"

[[route]]
from = "unix:sub/../web.sock"
to = "web"
"#;
    let line = check_error_at(&dir, toml, "10:8: route[2].from: ");
    assert!(line.contains("same socket as route[1]"), "{line}");
}

#[test]
fn check_rejects_a_specific_address_beside_the_wildcard_on_one_port() {
    let dir = TempDir::new("hc-wild");
    let toml = r#"
[pool.web]
command = ["cat"]

[[route]]
from = "tcp://127.0.0.1:7171"
to = "web"

[[route]]
from = "tcp://0.0.0.0:7171"
to = "web"
"#;
    let line = check_error_at(&dir, toml, "10:8: route[2].from: ");
    assert!(
        line.contains("overlaps") && line.contains("route[1]"),
        "{line}"
    );
}
