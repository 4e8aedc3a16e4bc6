//! Health probes and the metrics endpoint through the real binary (SPEC 10, 11):
//! `send`/`expect` probes travel in the instance's input and their replies never reach
//! a client; failures restart the worker; a busy worker is not failed; a hanging
//! `exec` probe is killed with its group; `GET /metrics` passes `promtool` and its
//! counters move; hostile HTTP clients are cut off without growing orchd.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::*;

/// A worker that answers `PING` as its mode says: `PONG` (ok), `NOPE` (after `bad`)
/// or nothing (after `mute`); any other line is echoed as `echo:LINE`. `slow LINE`
/// takes a second.
const WORKER: &str = r#"
mode=ok
while IFS= read -r line; do
  case "$line" in
    PING) case $mode in ok) echo PONG ;; bad) echo NOPE ;; esac ;;
    bad) mode=bad; echo "echo:$line" ;;
    mute) mode=mute; echo "echo:$line" ;;
    slow*) sleep 1; echo "echo:$line" ;;
    *) echo "echo:$line" ;;
  esac
done
"#;

fn probe_config(dir: &TempDir, health: &str, extra: &str) -> std::path::PathBuf {
    dir.write("worker.sh", WORKER);
    dir.write(
        "orchd.toml",
        &format!(
            r#"
{extra}
[pool.w]
command = ["sh", "worker.sh"]
health = {health}

[[route]]
from = "unix:w.sock"
to = "w"
"#
        ),
    )
}

/// Every reply a client got is its own message's echo (or an error), never a probe's.
#[track_caller]
fn assert_own_reply(sent: &str, got: &str) {
    assert!(
        got == format!("echo:{sent}") || got.starts_with("ERR "),
        "reply to {sent:?} was {got:?}"
    );
}

#[test]
fn a_worker_whose_probe_replies_fail_is_restarted_and_no_client_sees_a_probe_reply() {
    let dir = TempDir::new("hm-bad");
    let cfg = probe_config(
        &dir,
        r#"{ send = "PING", expect = "^PONG$", every = "100ms", timeout = "2s", failures = 2 }"#,
        "",
    );
    let mut o = Orchd::start(&cfg);
    let first = wait_started(&o, "w[0]", 1)[0];
    let mut c = Client::connect(&dir.join("w.sock"));
    // Messages interleave with passing probes.
    o.wait_log("w[0]: first health probe passed", 1);
    let mut n = 0;
    while n < 30 {
        n += 1;
        let m = format!("m{n}");
        assert_own_reply(&m, &c.request(&m));
    }
    assert_eq!(o.log_count("health probe failed"), 0, "{}", o.log());
    let deadline = Instant::now() + DEADLINE;
    // Now its probe replies fail: two in a row restart it, while messages go on.
    assert_own_reply("bad", &c.request("bad"));
    while started(&o, "w[0]").len() < 2 {
        n += 1;
        let m = format!("m{n}");
        assert_own_reply(&m, &c.request(&m));
        assert!(Instant::now() < deadline, "no restart\n{}", o.log());
    }
    let log = o.log();
    assert!(
        log.contains("w[0]: health probe failed (1 of 2): health probe reply \"NOPE\" does not match \"^PONG$\""),
        "{log}"
    );
    assert!(
        log.contains(
            "w[0]: 2 consecutive health probe failure(s), last: health probe reply \"NOPE\""
        ),
        "{log}"
    );
    assert!(log.contains("restarting it"), "{log}");
    assert_ne!(started(&o, "w[0]")[1], first);
    // The new process answers its probes: messages and probes go on as before.
    for i in 0..20 {
        let m = format!("after{i}");
        assert_own_reply(&m, &c.request(&m));
    }
    assert_eq!(o.stop(), 0);
}

#[test]
fn a_worker_that_stops_answering_ping_is_restarted_after_failures_probes() {
    let dir = TempDir::new("hm-mute");
    let cfg = probe_config(
        &dir,
        r#"{ send = "PING", expect = "^PONG$", every = "100ms", timeout = "300ms", failures = 2 }"#,
        "",
    );
    let mut o = Orchd::start(&cfg);
    wait_started(&o, "w[0]", 1);
    let mut c = Client::connect(&dir.join("w.sock"));
    assert_eq!(c.request("hello"), "echo:hello");
    assert_eq!(c.request("mute"), "echo:mute");
    wait_started(&o, "w[0]", 2);
    let log = o.log();
    assert!(
        log.contains("2 consecutive health probe failure(s), last: no reply to the health probe within 300ms"),
        "{log}"
    );
    // The replacement answers.
    assert_eq!(c.request("again"), "echo:again");
    assert_eq!(o.stop(), 0);
}

#[test]
fn a_busy_worker_is_not_failed_while_its_probe_waits_behind_messages() {
    let dir = TempDir::new("hm-busy");
    // Each `slow` message takes 1 s, longer than the probe's timeout: the probe's
    // clock starts only when the worker turns to it.
    let cfg = probe_config(
        &dir,
        r#"{ send = "PING", expect = "^PONG$", every = "100ms", timeout = "800ms", failures = 1 }"#,
        "",
    );
    let mut o = Orchd::start(&cfg);
    wait_started(&o, "w[0]", 1);
    let mut c = Client::connect(&dir.join("w.sock"));
    // Probes pass while idle first.
    o.wait_log("w[0]: first health probe passed", 1);
    for i in 0..3 {
        c.send(&format!("slow{i}"));
    }
    for i in 0..3 {
        assert_eq!(c.recv(), format!("echo:slow{i}"));
    }
    assert_eq!(o.log_count("health probe failed"), 0, "{}", o.log());
    assert_eq!(started(&o, "w[0]").len(), 1, "{}", o.log());
    assert_eq!(o.stop(), 0);
}

#[test]
fn an_exec_probe_runs_like_the_worker_and_one_that_hangs_is_killed_with_its_group() {
    let dir = TempDir::new("hm-exec");
    dir.write(
        "probe.sh",
        r#"echo "$MODE $ORCHD_POOL $ORCHD_INSTANCE $ORCHD_PID $(pwd -P)" > "seen.$ORCHD_INSTANCE"
if [ -e hang ]; then
  sleep 1000 &
  echo "$! $$" >> hung.pids
  wait
fi
"#,
    );
    let cfg = dir.write(
        "orchd.toml",
        r#"
[pool.x]
command = "sleep 1000"
count = 2
env = { MODE = "probe-env" }
health = { exec = ["sh", "probe.sh"], every = "100ms", timeout = "300ms", failures = 1000 }
"#,
    );
    let mut o = Orchd::start(&cfg);
    let pids = [
        wait_started(&o, "x[0]", 1)[0],
        wait_started(&o, "x[1]", 1)[0],
    ];
    // The shell creates the file before it writes the line: wait for the line.
    let seen = |i: usize| {
        std::fs::read_to_string(dir.join(&format!("seen.{i}")))
            .ok()
            .filter(|s| s.ends_with('\n'))
    };
    for (i, pid) in pids.iter().enumerate() {
        let s = wait_for("the probe to run", DEADLINE, || seen(i));
        let want = format!(
            "probe-env x {i} {pid} {}\n",
            std::fs::canonicalize(dir.path()).unwrap().display()
        );
        assert_eq!(s, want);
    }
    // From now on the probe hangs, with a child in its group.
    dir.write("hang", "");
    o.wait_log("the health command did not exit within 300ms", 2);
    let hung: Vec<u32> = std::fs::read_to_string(dir.join("hung.pids"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(hung.len() >= 2, "{hung:?}");
    // Killed at their timeout, whole group, and reaped (no zombie left).
    for pid in &hung {
        wait_for(&format!("hung probe process {pid} to go"), DEADLINE, || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
    }
    // The workers were not restarted (failures = 1000).
    assert_eq!(started(&o, "x[0]").len(), 1);
    assert_eq!(o.stop(), 0);
}

#[test]
fn at_most_eight_exec_probes_run_at_once_and_the_others_get_their_turn() {
    let dir = TempDir::new("hm-exec-bound");
    // Each probe notes its instance, then hangs until killed at its timeout.
    dir.write("probe.sh", "echo $ORCHD_INSTANCE >> ran\nexec sleep 1017\n");
    let cfg = dir.write(
        "orchd.toml",
        r#"
[pool.x]
command = "sleep 1000"
count = 10
health = { exec = ["sh", "probe.sh"], every = "100ms", timeout = "2s", failures = 1000 }
"#,
    );
    let mut o = Orchd::start(&cfg);
    let probes = |o: &Orchd| -> usize {
        children_of(o.pid())
            .into_iter()
            .filter(|&p| cmdline(p) == "sleep 1017")
            .count()
    };
    let ran = || -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(dir.join("ran"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    // Until every instance's probe has run: never more than 8 at once, and 8 are.
    let mut most = 0;
    wait_for("every instance's probe to run", DEADLINE, || {
        let n = probes(&o);
        assert!(n <= 8, "{n} exec probes at once");
        most = most.max(n);
        (ran().len() == 10).then_some(())
    });
    assert_eq!(most, 8);
    assert_eq!(o.stop(), 0);
}

#[test]
fn failing_exec_probes_restart_the_instance() {
    let dir = TempDir::new("hm-exec-fail");
    let cfg = dir.write(
        "orchd.toml",
        r#"
[pool.x]
command = "sleep 1000"
health = { exec = "exit 3", every = "100ms", timeout = "1s", failures = 2 }
"#,
    );
    let mut o = Orchd::start(&cfg);
    wait_started(&o, "x[0]", 2);
    assert!(
        o.log()
            .contains("x[0]: 2 consecutive health probe failure(s), last: the health command exited with code 3; restarting it"),
        "{}",
        o.log()
    );
    assert_eq!(o.stop(), 0);
}

// ----- metrics -----------------------------------------------------------------------

/// `GET /metrics` on `port`: (status line, body).
fn scrape(port: u16) -> (String, String) {
    let mut s = wait_for("the metrics listener", DEADLINE, || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `series` (name with labels, exactly as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool check metrics` accepts `body`. Skipped (with a note) only where promtool
/// is not installed; CI installs it.
fn promtool_check(body: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not found: its check skipped");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metrics_config(dir: &TempDir, port: u16) -> std::path::PathBuf {
    dir.write("worker.sh", WORKER);
    dir.write(
        "orchd.toml",
        &format!(
            r#"
[orchd]
metrics = "127.0.0.1:{port}"

[pool.w]
command = ["sh", "worker.sh"]
count = 2
health = {{ send = "PING", expect = "^PONG$", every = "100ms", timeout = "2s", failures = 1 }}

[pool.idle]
command = "sleep 1000"

[[route]]
from = "unix:w.sock"
to = "w"
"#
        ),
    )
}

#[test]
fn metrics_pass_promtool_and_their_counters_move_with_messages_and_restarts() {
    let dir = TempDir::new("hm-metrics");
    let port = free_port();
    let mut o = Orchd::start(&metrics_config(&dir, port));
    let pids = [
        wait_started(&o, "w[0]", 1)[0],
        wait_started(&o, "w[1]", 1)[0],
    ];
    wait_started(&o, "idle[0]", 1);
    let (status, body) = scrape(port);
    assert_eq!(status, "HTTP/1.1 200 OK");
    promtool_check(&body);
    let answered = r#"orchd_messages_total{pool="w",result="answered"}"#;
    assert_eq!(sample(&body, answered), Some(0.0), "{body}");
    assert_eq!(
        sample(&body, r#"orchd_instances{pool="idle",state="starting"}"#).or(sample(
            &body,
            r#"orchd_instances{pool="idle",state="running"}"#
        )),
        Some(1.0),
        "{body}"
    );

    let mut c = Client::connect(&dir.join("w.sock"));
    for i in 0..10 {
        let m = format!("m{i}");
        assert_eq!(c.request(&m), format!("echo:{m}"));
    }
    // A worker dies: its slot's restart and exit are counted.
    kill(pids[1], libc::SIGKILL);
    wait_started(&o, "w[1]", 2);
    // Probe failures with restarts.
    assert_eq!(c.request("bad"), "echo:bad");
    wait_for("a health restart", DEADLINE, || {
        (o.log_count("consecutive health probe failure") > 0).then_some(())
    });
    let body = wait_for("the counters to move", DEADLINE, || {
        let (_, body) = scrape(port);
        let restarts: f64 = (0..2)
            .filter_map(|i| {
                sample(
                    &body,
                    &format!(r#"orchd_restarts_total{{pool="w",instance="{i}"}}"#),
                )
            })
            .sum();
        (restarts >= 2.0).then_some(body)
    });
    promtool_check(&body);
    assert_eq!(sample(&body, answered), Some(11.0), "{body}");
    assert_eq!(
        sample(&body, r#"orchd_reply_seconds_count{pool="w"}"#),
        Some(11.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            r#"orchd_exits_total{pool="w",instance="1",cause="signal"}"#
        ),
        Some(1.0),
        "{body}"
    );
    let health_exits: f64 = (0..2)
        .filter_map(|i| {
            sample(
                &body,
                &format!(r#"orchd_exits_total{{pool="w",instance="{i}",cause="health"}}"#),
            )
        })
        .sum();
    assert_eq!(health_exits, 1.0, "{body}");
    let failures: f64 = (0..2)
        .filter_map(|i| {
            sample(
                &body,
                &format!(r#"orchd_health_failures_total{{pool="w",instance="{i}"}}"#),
            )
        })
        .sum();
    assert!(failures >= 1.0, "{body}");
    assert!(
        body.contains(r#"orchd_rss_bytes{pool="idle",instance="0"}"#),
        "{body}"
    );
    assert_eq!(sample(&body, r#"orchd_queued{pool="w"}"#), Some(0.0));

    // A reload is counted; one that is invalid too.
    o.signal(libc::SIGHUP);
    o.wait_log("reload: ", 1);
    let (_, body) = scrape(port);
    assert_eq!(
        sample(&body, r#"orchd_reloads_total{result="ok"}"#),
        Some(1.0),
        "{body}"
    );
    // Other paths and methods are refused.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn an_endless_http_header_is_cut_off_without_growing_orchd() {
    let dir = TempDir::new("hm-endless");
    let port = free_port();
    let mut o = Orchd::start(&metrics_config(&dir, port));
    wait_started(&o, "w[0]", 1);
    let _ = scrape(port);
    let before = vm_rss_kib(o.pid());
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nX-Endless: ")
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    let cut = loop {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 256 << 20, "orchd took 256 MiB of header");
    };
    assert!(
        matches!(
            cut.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{cut}"
    );
    let after = vm_rss_kib(o.pid());
    assert!(
        after < before + 4096,
        "orchd grew from {before} KiB to {after} KiB after {sent} bytes of header"
    );
    // Still serving.
    let (status, _) = scrape(port);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(o.stop(), 0);
}

#[test]
fn idle_http_clients_cannot_block_the_loop_or_take_more_than_their_connections() {
    let dir = TempDir::new("hm-idle");
    let port = free_port();
    let mut o = Orchd::start(&metrics_config(&dir, port));
    wait_started(&o, "w[0]", 1);
    let _ = scrape(port);
    // 16 connections that never send a byte take every slot.
    let mut idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    wait_for("orchd to stop accepting", DEADLINE, || {
        o.log()
            .contains("connections open; not accepting")
            .then_some(())
    });
    // Messages still flow.
    let mut c = Client::connect(&dir.join("w.sock"));
    assert_eq!(c.request("hello"), "echo:hello");
    // A 17th waits in the backlog and is served once a slot frees.
    let mut late = TcpStream::connect(("127.0.0.1", port)).unwrap();
    late.set_read_timeout(Some(DEADLINE)).unwrap();
    late.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    drop(idle.pop());
    let mut text = String::new();
    late.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn reload_opens_moves_and_keeps_the_metrics_listener() {
    let dir = TempDir::new("hm-reload");
    let (a, b) = (free_port(), free_port());
    let cfg = dir.write("orchd.toml", "[pool.x]\ncommand = \"sleep 1000\"\n");
    let mut o = Orchd::start(&cfg);
    wait_started(&o, "x[0]", 1);
    let with = |port: u16| {
        format!("[orchd]\nmetrics = \"127.0.0.1:{port}\"\n\n[pool.x]\ncommand = \"sleep 1000\"\n")
    };
    // Opened by a reload.
    dir.write("orchd.toml", &with(a));
    o.signal(libc::SIGHUP);
    o.wait_log(
        &format!("serving metrics on http://127.0.0.1:{a}/metrics"),
        1,
    );
    assert_eq!(scrape(a).0, "HTTP/1.1 200 OK");
    // An address that cannot be bound fails the whole reload; the old one serves on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    dir.write("orchd.toml", &with(busy));
    o.signal(libc::SIGHUP);
    o.wait_log("cannot listen for metrics on", 1);
    assert_eq!(scrape(a).0, "HTTP/1.1 200 OK");
    let (_, body) = scrape(a);
    assert_eq!(
        sample(&body, r#"orchd_reloads_total{result="failed"}"#),
        Some(1.0),
        "{body}"
    );
    // Moved; a scrape under way on the old address finishes.
    let mut during = TcpStream::connect(("127.0.0.1", a)).unwrap();
    during.set_read_timeout(Some(DEADLINE)).unwrap();
    during.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    // Taken by orchd before the listener moves (else it would die in the backlog).
    let local = during.local_addr().unwrap();
    o.wait_log(&format!("metrics: connection from {local}"), 1);
    dir.write("orchd.toml", &with(b));
    o.signal(libc::SIGHUP);
    o.wait_log(
        &format!("serving metrics on http://127.0.0.1:{b}/metrics"),
        1,
    );
    assert_eq!(scrape(b).0, "HTTP/1.1 200 OK");
    assert!(TcpStream::connect(("127.0.0.1", a)).is_err());
    during.write_all(b"\r\n").unwrap();
    let mut text = String::new();
    during.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    // The same pool is untouched throughout.
    assert_eq!(started(&o, "x[0]").len(), 1);
    assert_eq!(o.stop(), 0);
}

#[test]
fn reload_applies_health_in_place_without_restarting_the_worker() {
    let dir = TempDir::new("hm-reload-health");
    dir.write("worker.sh", WORKER);
    let with = |health: &str| {
        format!(
            "[pool.w]\ncommand = [\"sh\", \"worker.sh\"]\n{health}\n\n[[route]]\nfrom = \"unix:w.sock\"\nto = \"w\"\n"
        )
    };
    let cfg = dir.write("orchd.toml", &with(""));
    let mut o = Orchd::start(&cfg);
    let pid = wait_started(&o, "w[0]", 1)[0];
    let mut c = Client::connect(&dir.join("w.sock"));
    assert_eq!(c.request("bad"), "echo:bad");
    // Probing starts with the reload; the worker's replies fail it and it restarts.
    dir.write(
        "orchd.toml",
        &with(r#"health = { send = "PING", expect = "^PONG$", every = "100ms", failures = 2 }"#),
    );
    o.signal(libc::SIGHUP);
    o.wait_log("reload: ", 1);
    assert_eq!(started(&o, "w[0]"), [pid], "the reload itself restarted it");
    let pids = wait_started(&o, "w[0]", 2);
    assert!(
        o.log().contains("health probe failed (2 of 2)"),
        "{}",
        o.log()
    );
    // Removed again: no more probes. The worker's probe replies would fail again,
    // so five probe intervals without a failure show that none is sent.
    dir.write("orchd.toml", &with(""));
    o.signal(libc::SIGHUP);
    o.wait_log("reload: ", 2);
    let failed = o.log_count("health probe failed");
    assert_eq!(c.request("bad"), "echo:bad");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(o.log_count("health probe failed"), failed, "{}", o.log());
    assert_eq!(started(&o, "w[0]"), pids);
    assert_eq!(o.stop(), 0);
}
