//! `orchd ctl CONFIG logs` (SPEC 9): recent output per pool from a ring buffer, target
//! filtering, orchd's lifecycle lines, `-f` following, and a follower that never reads
//! costing orchd neither speed nor memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Each instance writes `n 1` … `n 20` to stderr (with its index), then sleeps.
const NUMBERED: &str = "#!/bin/sh\ni=1\nwhile [ $i -le 20 ]; do echo \"n $i of $ORCHD_INSTANCE\" >&2; i=$((i+1)); done\nexec sleep 1000\n";

fn numbered_config(dir: &TempDir, extra: &str) -> std::path::PathBuf {
    dir.write("numbered.sh", NUMBERED);
    dir.write(
        "pool.toml",
        &format!(
            "[orchd]\ncontrol = \"ctl.sock\"\n{extra}\n[pool.web]\ncommand = [\"./numbered.sh\"]\ncount = 2\n\n[pool.api]\ncommand = [\"./numbered.sh\"]\ncount = 1\n"
        ),
    )
}

fn logs(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let mut v = vec!["ctl", cfg.to_str().unwrap(), "logs"];
    v.extend_from_slice(args);
    run_orchd(&v)
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// Wait until every instance has written its 20 lines (seen in orchd's log).
fn wait_numbered(o: &Orchd) {
    for who in ["web[0]", "web[1]", "api[0]"] {
        let i = &who[who.len() - 2..who.len() - 1];
        wait_for(&format!("{who}'s last line"), DEADLINE, || {
            o.log()
                .lines()
                .any(|l| l.contains(who) && l.ends_with(&format!("n 20 of {i}")))
                .then_some(())
        });
    }
}

#[test]
fn logs_n_returns_the_last_lines_of_the_pool_in_order() {
    let dir = TempDir::new("logs-n");
    let cfg = numbered_config(&dir, "");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_numbered(&o);

    let (code, out, err) = logs(&cfg, &["web/0", "-n", "5"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    for (l, n) in lines.iter().zip(16..=20) {
        // `TIMESTAMP web[0]: n 16 of 0`
        let (ts, rest) = l.split_once(' ').unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{l}");
        assert_eq!(rest, format!("web[0]: n {n} of 0"));
    }

    // The whole pool, raw: both instances, stderr, the last 5 in time order.
    let (code, out, err) = logs(&cfg, &["web", "-n", "5", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json_lines(&out);
    assert_eq!(v.len(), 5, "{out}");
    for x in &v {
        assert!(
            x["instance"] == "web[0]" || x["instance"] == "web[1]",
            "{x}"
        );
        assert_eq!(x["stream"], "stderr", "{x}");
        assert!(x["line"].as_str().unwrap().starts_with("n "), "{x}");
    }
    let ts: Vec<&str> = v.iter().map(|x| x["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "time order: {ts:?}");

    // Without -n: the last 10 lines, like tail.
    let (code, out, _) = logs(&cfg, &["api"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 10, "{out}");
    assert!(out.lines().last().unwrap().ends_with("api[0]: n 20 of 0"));
    assert_eq!(o.stop(), 0);
}

#[test]
fn logs_selects_pools_and_instances() {
    let dir = TempDir::new("logs-targets");
    let cfg = numbered_config(&dir, "");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_numbered(&o);
    let instances = |args: &[&str]| -> std::collections::BTreeSet<String> {
        let mut a = args.to_vec();
        a.extend(["-n", "1000", "--json"]);
        let (code, out, err) = logs(&cfg, &a);
        assert_eq!(code, 0, "{err}");
        json_lines(&out)
            .iter()
            .map(|x| x["instance"].as_str().unwrap().to_string())
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    assert_eq!(instances(&["web/1"]), set(&["web[1]"]));
    assert_eq!(instances(&["web"]), set(&["web[0]", "web[1]"]));
    assert_eq!(instances(&["web/1", "api"]), set(&["web[1]", "api[0]"]));
    assert_eq!(instances(&[]), set(&["web[0]", "web[1]", "api[0]"]));
    // Each instance's 20 lines and its `started` line.
    let (_, out, _) = logs(&cfg, &["web/1", "-n", "1000"]);
    assert_eq!(out.lines().filter(|l| l.contains("web[1]: n ")).count(), 20);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(" orchd: web[1] started (pid "))
            .count(),
        1,
        "{out}"
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn logs_errors_and_exit_codes() {
    let dir = TempDir::new("logs-errors");
    let cfg = numbered_config(&dir, "");
    // No orchd answering.
    let (code, _, err) = logs(&cfg, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no orchd is answering"), "{err}");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let (code, out, err) = logs(&cfg, &["nope"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("unknown pool \"nope\""), "{err}");
    let (code, _, err) = logs(&cfg, &["web", "web/2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pool web has no instance 2"), "{err}");
    for bad in [&["-n"][..], &["-n", "x"], &["--bogus"], &["web/x"]] {
        let (code, _, err) = logs(&cfg, bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.starts_with("orchd: "), "{bad:?}: {err}");
    }
    // On the socket: an error is one JSON line with ok = false.
    let v = control(&dir.join("ctl.sock"), "logs web/9");
    assert_eq!(v["ok"], false, "{v}");
    let v = control(&dir.join("ctl.sock"), "logs web -n x");
    assert!(
        v["error"].as_str().unwrap().starts_with("usage: logs"),
        "{v}"
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn log_buffer_zero_keeps_nothing() {
    let dir = TempDir::new("logs-off");
    let cfg = numbered_config(&dir, "log_buffer = 0");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_numbered(&o);
    let (code, out, err) = logs(&cfg, &["-n", "100"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn log_buffer_applies_in_place_on_reload() {
    let dir = TempDir::new("logs-reload");
    let cfg = numbered_config(&dir, "");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_numbered(&o);
    let sock = dir.join("ctl.sock");
    let pids = || -> Vec<String> {
        control(&sock, "status")["pools"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["instances"].as_array().unwrap().clone())
            .map(|i| i["pid"].to_string())
            .collect()
    };
    let before = pids();
    let (_, out, _) = logs(&cfg, &["-n", "100"]);
    assert_eq!(out.lines().count(), 63, "3 × (20 lines + started)\n{out}");
    // Room for 2 lines such as `n 20 of 0` (10 bytes each, plus 64) per pool.
    numbered_config(&dir, "log_buffer = 148");
    let v = control(&sock, "reload");
    assert_eq!(v["ok"], true, "{v}");
    let (_, out, _) = logs(&cfg, &["-n", "100"]);
    assert_eq!(out.lines().count(), 4, "the last 2 of each pool\n{out}");
    let (_, out, _) = logs(&cfg, &["api", "-n", "100"]);
    assert!(out.ends_with("api[0]: n 20 of 0\n"), "{out}");
    // Applied in place: no instance was touched.
    assert_eq!(pids(), before);
    assert_eq!(o.stop(), 0);
}

#[test]
fn lifecycle_lines_of_a_killed_worker_are_in_its_pool_logs() {
    let dir = TempDir::new("logs-lifecycle");
    let cfg = numbered_config(&dir, "");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_numbered(&o);
    let (_, before, _) = logs(&cfg, &["web/1", "-n", "1000", "--json"]);
    let pid = json_lines(&before)
        .iter()
        .filter(|x| x["stream"] == "orchd")
        .find_map(|x| {
            let l = x["line"].as_str()?;
            l.strip_prefix("web[1] started (pid ")?
                .strip_suffix(')')?
                .parse::<i32>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no started line in {before}"));
    kill(pid as u32, libc::SIGKILL);
    let out = wait_for("web[1] to be started again", DEADLINE, || {
        let (_, out, _) = logs(&cfg, &["web", "-n", "1000", "--json"]);
        let orchd: Vec<String> = json_lines(&out)
            .iter()
            .filter(|x| x["stream"] == "orchd")
            .map(|x| format!("{} {}", x["instance"], x["line"].as_str().unwrap()))
            .collect();
        (orchd
            .iter()
            .filter(|l| l.contains("web[1] started"))
            .count()
            == 2)
            .then_some(orchd)
    });
    let exited = out
        .iter()
        .position(|l| l.contains("web[1] exited with signal KILL") && l.contains("restarting in"))
        .unwrap_or_else(|| panic!("no exited line: {out:#?}"));
    let restarted = out
        .iter()
        .rposition(|l| l.contains("web[1] started"))
        .unwrap();
    assert!(exited < restarted, "{out:#?}");
    assert!(out.iter().all(|l| l.starts_with("\"web[")), "{out:#?}");
    // Nothing about web in api's logs.
    let (_, api, _) = logs(&cfg, &["api", "-n", "1000"]);
    assert!(!api.contains("web["), "{api}");
    assert_eq!(o.stop(), 0);
}

/// A routed pool whose worker notes each message on stderr; `burst N` writes N lines
/// of 1000 bytes to stderr before replying.
const ECHO: &str = r#"#!/usr/bin/env python3
import sys
pad = "x" * 990
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("burst "):
        for i in range(int(line.split()[1])):
            sys.stderr.write("burst %08d %s\n" % (i, pad))
        sys.stderr.flush()
    else:
        sys.stderr.write("got %s\n" % line)
        sys.stderr.flush()
    sys.stdout.write("ok %s\n" % line)
    sys.stdout.flush()
"#;

fn echo_config(dir: &TempDir, extra: &str) -> std::path::PathBuf {
    dir.write("echo.py", ECHO);
    dir.write(
        "pool.toml",
        &(format!("[orchd]\ncontrol = \"ctl.sock\"\n{extra}\n")
            + "[pool.web]\ncommand = [\"./echo.py\"]\ncount = 1\n\n[[route]]\nfrom = \"unix:in.sock\"\nto = \"web\"\n"),
    )
}

#[test]
fn logs_f_follows_new_lines() {
    let dir = TempDir::new("logs-follow");
    let cfg = echo_config(&dir, "");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut c = Client::connect(&dir.join("in.sock"));
    assert_eq!(c.request("first"), "ok first");
    o.wait_log("got first", 1);
    let mut f = Command::new(BIN)
        .args(["ctl", cfg.to_str().unwrap(), "logs", "web", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines through a channel, so that a missing one fails the test instead of
    // hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = f.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let next = || rx.recv_timeout(DEADLINE).expect("a line from logs -f");
    // The backlog first: once it is there, the follower is registered.
    let line = next();
    assert!(line.ends_with("web[0]: got first"), "{line:?}");
    for m in ["second", "third"] {
        assert_eq!(c.request(m), format!("ok {m}"));
        let line = next();
        assert!(line.ends_with(&format!("web[0]: got {m}")), "{line:?}");
    }
    // Still following: not exited.
    assert!(f.try_wait().unwrap().is_none());
    let _ = f.kill();
    let _ = f.wait();
    // orchd noticed the follower left and keeps answering.
    assert_eq!(c.request("fourth"), "ok fourth");
    assert_eq!(o.stop(), 0);
}

#[test]
fn a_follower_that_never_reads_does_not_stall_routing_and_learns_what_it_lost() {
    let dir = TempDir::new("logs-slow");
    let cfg = echo_config(&dir, "");
    let mut o = Orchd::start_with(&cfg, &["--no-watch", "--log-level", "warn"], Stdio::null());
    wait_for("the control socket", DEADLINE, || {
        control_try(&dir.join("ctl.sock"), "status", DEADLINE)
    });
    let mut c = Client::connect(&dir.join("in.sock"));
    assert_eq!(c.request("warm up"), "ok warm up");
    let rss_before = vm_rss_kib(o.pid());

    // A follower that sends its command and then reads nothing.
    let mut slow = UnixStream::connect(dir.join("ctl.sock")).unwrap();
    slow.write_all(b"logs web -f -n 0\n").unwrap();
    // Registered once a line reaches it: poke until one is readable.
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut first = [0u8; 1];
    wait_for("the follower to be registered", DEADLINE, || {
        assert_eq!(c.request("poke"), "ok poke");
        slow.read_exact(&mut first).ok()
    });

    // 40 MB of worker output while the follower sleeps: every message is answered
    // promptly and orchd's memory stays bounded.
    let start = Instant::now();
    for round in 0..4 {
        assert_eq!(c.request("burst 10000"), "ok burst 10000");
        assert_eq!(
            c.request(&format!("after {round}")),
            format!("ok after {round}")
        );
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(60), "routing took {took:?}");
    let rss_after = vm_rss_kib(o.pid());
    eprintln!("RSS {rss_before} KiB -> {rss_after} KiB, routing {took:?}");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "orchd RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // It finally reads: what was queued, with markers counting the lines lost in
    // between. Each marker means it has room again: a probe message then, whose
    // line must reach it. Every line logged before the first probe it sees was
    // either seen or counted.
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(slow);
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // the rest of the first line
    let (mut seen, mut dropped, mut probes) = (0u64, 0u64, 0u64);
    let probe_seen = loop {
        line.clear();
        let n = r.read_line(&mut line).expect("follower read");
        assert!(n > 0, "follower closed after {seen} lines");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(d) = v["dropped"].as_u64() {
            assert!(d > 0);
            dropped += d;
            let probe = format!("probe {probes}");
            assert_eq!(c.request(&probe), format!("ok {probe}"));
            probes += 1;
            continue;
        }
        assert_eq!(v["instance"], "web[0]", "{v}");
        assert_eq!(v["stream"], "stderr", "{v}");
        let text = v["line"].as_str().unwrap();
        if let Some(k) = text.strip_prefix("got probe ") {
            break k.parse::<u64>().unwrap();
        }
        if text.starts_with("burst ") || text.starts_with("got after ") {
            seen += 1;
        }
    };
    assert!(probes >= 1);
    assert!(
        seen < 2000,
        "{seen} lines were kept for a reader that did not read"
    );
    assert!(dropped > 30_000, "dropped {dropped}");
    // The probes before the one seen were dropped (and counted).
    assert_eq!(
        seen + dropped,
        40_004 + probe_seen,
        "{seen} seen + {dropped} dropped"
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn a_huge_backlog_is_capped_to_its_newest_lines() {
    let dir = TempDir::new("logs-backlog");
    let cfg = echo_config(&dir, "log_buffer = \"64MiB\"");
    let mut o = Orchd::start_with(&cfg, &["--no-watch", "--log-level", "warn"], Stdio::null());
    let mut c = Client::connect(&dir.join("in.sock"));
    // 12000 lines of 1000 bytes: 12 MB kept, more than one answer may carry.
    assert_eq!(c.request("burst 12000"), "ok burst 12000");
    assert_eq!(c.request("end"), "ok end");
    let (code, out, err) = logs(&cfg, &["-n", "100000", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.len() <= 8 << 20, "{} bytes", out.len());
    let v = json_lines(&out);
    let left_out = v[0]["dropped"].as_u64().expect("a dropped marker first");
    assert_eq!(v.last().unwrap()["line"], "got end");
    // Everything that was kept: the started line, the burst, `got end`.
    assert_eq!(left_out as usize + v.len() - 1, 12_002, "{left_out}");
    assert!(left_out > 3000, "{left_out}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn stdout_of_an_unrouted_pool_is_kept_too() {
    let dir = TempDir::new("logs-stdout");
    let cfg = dir.write(
        "pool.toml",
        "[orchd]\ncontrol = \"ctl.sock\"\n\n[pool.bg]\ncommand = \"echo to-out; echo to-err >&2; exec sleep 1000\"\n",
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("to-out", 1);
    o.wait_log("to-err", 1);
    let (code, out, err) = logs(&cfg, &["bg/0", "--json"]);
    assert_eq!(code, 0, "{err}");
    let mut streams: Vec<(String, String)> = json_lines(&out)
        .iter()
        .filter(|x| x["stream"] != "orchd")
        .map(|x| {
            (
                x["stream"].as_str().unwrap().to_string(),
                x["line"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    streams.sort();
    assert_eq!(
        streams,
        [
            ("stderr".to_string(), "to-err".to_string()),
            ("stdout".to_string(), "to-out".to_string())
        ]
    );
    assert_eq!(o.stop(), 0);
}
