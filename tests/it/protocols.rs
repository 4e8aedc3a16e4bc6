//! Worker protocols through the real binary (SPEC 12, issue 11): `tagged` workers
//! answering out of order, with bad IDs, killed with messages in flight; the
//! `node` example worker unchanged over TCP and in batch mode; object replies,
//! internal messages; and SIGKILL chaos under each protocol. Tests that need `node`
//! are skipped (with a note) where it is missing.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::protocols_prep::{example, have};

/// A tagged worker that reads what is there, waits until nothing more comes for
/// 20 ms, then answers the whole batch in reverse order ("ID MESSAGE" upper-cased).
/// It logs each batch it reversed, and special messages misbehave: `dup` is answered
/// twice, `stray` also gets a reply with an ID never sent, `bad` also a line
/// without an ID.
const REVERSER: &str = r#"#!/usr/bin/env python3
import os, select, sys
buf = b""
pending = []
def out(b):
    while b:
        b = b[os.write(1, b):]
while True:
    r, _, _ = select.select([0], [], [], 0.02 if pending else None)
    if r:
        d = os.read(0, 65536)
        if not d:
            break
        buf += d
        *lines, buf = buf.split(b"\n")
        pending += lines
        continue
    if len(pending) > 1:
        sys.stderr.write("reversed a batch of %d\n" % len(pending))
        sys.stderr.flush()
    for l in reversed(pending):
        tag, _, msg = l.partition(b" ")
        if msg == b"stray":
            out(b"987654321 STRAY-UNKNOWN\n")
        if msg == b"bad":
            out(b"no-id-here\n")
        out(tag + b" " + msg.upper() + b"\n")
        if msg == b"dup":
            out(tag + b" DUP-AGAIN\n")
    pending = []
"#;

fn tagged_config(dir: &TempDir, port: u16, worker: &str, extra: &str) -> PathBuf {
    dir.write(
        "c.toml",
        &format!(
            r#"
[pool.t]
command = ["python3", "{worker}"]
protocol = "tagged"
max_inflight = 64
{extra}

[[route]]
from = "tcp://127.0.0.1:{port}"
to = "t"
retries = 3
"#
        ),
    )
}

#[test]
fn a_tagged_worker_answering_in_reverse_gives_every_client_its_own_replies_in_order() {
    let dir = TempDir::new("tagged-reverse");
    dir.write("rev.py", REVERSER);
    let port = free_port();
    let cfg = tagged_config(&dir, port, "rev.py", "");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let clients: Vec<_> = (0..3)
        .map(|c| {
            std::thread::spawn(move || {
                let mut cl = TcpClient::connect(port);
                let sent: Vec<String> = (0..60).map(|i| format!("c{c}-m{i}")).collect();
                for m in &sent {
                    cl.send(m);
                }
                let got = cl.finish();
                let want: String = sent.iter().map(|m| m.to_uppercase() + "\n").collect();
                assert_eq!(got, want, "client {c}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // After the stop the log is complete.
    assert_eq!(o.stop(), 0);
    assert!(
        o.log_count("reversed a batch of") > 0,
        "the worker never had more than one message at once:\n{}",
        o.log()
    );
}

#[test]
fn tagged_replies_with_unknown_duplicate_or_missing_ids_are_dropped_and_logged() {
    let dir = TempDir::new("tagged-bad-ids");
    dir.write("rev.py", REVERSER);
    let port = free_port();
    let cfg = tagged_config(&dir, port, "rev.py", "");
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut cl = TcpClient::connect(port);
    for m in ["dup", "stray", "bad", "ok"] {
        cl.send(m);
    }
    assert_eq!(cl.finish(), "DUP\nSTRAY\nBAD\nOK\n");
    o.wait_log("reply with ID 987654321 dropped: unknown ID", 1);
    o.wait_log("dropped: ID not in flight", 1);
    o.wait_log("reply dropped: no space in the line", 1);
    assert_eq!(o.stop(), 0);
}

/// First life (no marker file yet): answer the first 5 messages, hold the rest,
/// never answer them. Later lives answer everything. Every message read is logged
/// with the pid that read it.
const HOARDER: &str = r#"#!/usr/bin/env python3
import os, sys
first = not os.path.exists("first-life-done")
if first:
    open("first-life-done", "w").close()
n = 0
for line in sys.stdin.buffer:
    tag, _, msg = line.rstrip(b"\n").partition(b" ")
    sys.stderr.write("pid %d got %s\n" % (os.getpid(), msg.decode()))
    sys.stderr.flush()
    n += 1
    if not first or n <= 5:
        sys.stdout.buffer.write(tag + b" done " + msg + b"\n")
        sys.stdout.buffer.flush()
"#;

#[test]
fn a_tagged_worker_killed_with_20_messages_in_flight_gets_exactly_those_again() {
    let dir = TempDir::new("tagged-kill");
    dir.write("hoard.py", HOARDER);
    let port = free_port();
    let cfg = tagged_config(
        &dir,
        port,
        "hoard.py",
        "restart = \"always\"\nbackoff = { initial = \"0s\" }",
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let first = started(&o, "t[0]")[0];
    let mut cl = TcpClient::connect(port);
    let sent: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    for m in &sent {
        cl.send(m);
    }
    let first_got = format!("pid {first} got ");
    wait_for("25 messages read by the first worker", DEADLINE, || {
        (o.log_count(&first_got) == 25).then_some(())
    });
    // The five it answered arrive; the 20 others are in flight.
    for m in &sent[..5] {
        assert_eq!(cl.recv(), format!("done {m}"));
    }
    assert!(kill(first, libc::SIGKILL));
    let second = wait_started(&o, "t[0]", 2)[1];
    for m in &sent[5..] {
        assert_eq!(cl.recv(), format!("done {m}"));
    }
    drop(cl);
    // After the stop the log is complete (the worker's stderr lines included).
    assert_eq!(o.stop(), 0);
    let second_got = format!("pid {second} got ");
    let mut again: Vec<String> = o
        .log()
        .lines()
        .filter_map(|l| Some(l[l.find(&second_got)? + second_got.len()..].to_string()))
        .collect();
    again.sort_by_key(|m| m[1..].parse::<u32>().unwrap_or(u32::MAX));
    assert_eq!(again, sent[5..], "exactly the unanswered ones, each once");
    assert_eq!(o.log_count("delivering 20 unanswered message(s) again"), 1);
}

fn node_config(dir: &TempDir, worker: &Path, from: &str) -> PathBuf {
    dir.write(
        "c.toml",
        &format!(
            r#"
[pool.n]
command = ["node", "{w}"]
count = 2
protocol = "node"

[[route]]
from = "{from}"
to = "n"
"#,
            w = worker.display()
        ),
    )
}

/// orchd with pool `n` (2 `node` workers running `worker`) behind a TCP route, ready;
/// None (the test is skipped) without `node`.
fn node_over_tcp(dir: &TempDir, worker: &Path) -> Option<(Orchd, u16)> {
    if !have("node") {
        return None;
    }
    let port = free_port();
    let cfg = node_config(dir, worker, &format!("tcp://127.0.0.1:{port}"));
    let o = Orchd::start(&cfg);
    o.wait_ready();
    Some((o, port))
}

#[test]
fn the_fork_example_worker_runs_unchanged_under_the_node_protocol_over_tcp() {
    let worker = example("node-fork/worker.js");
    let original = std::fs::read(&worker).unwrap();
    let dir = TempDir::new("node-tcp");
    let Some((mut o, port)) = node_over_tcp(&dir, &worker) else {
        return;
    };
    let mut cl = TcpClient::connect(port);
    let sent = ["Hello from parent process 1", "say \"hi\" \\ ü", "3"];
    for m in sent {
        cl.send(m);
    }
    let want: String = sent
        .iter()
        .map(|m| format!("Processed message: {m}\n"))
        .collect();
    assert_eq!(cl.finish(), want);
    // console.log goes to stdout, which is logged (not a reply) under node.
    o.wait_log("]: Received message: Hello from parent process 1", 1);
    assert_eq!(o.stop(), 0);
    // Stopped by closing the channel first: the idle workers exit by themselves
    // on `disconnect` or by the stop signal right after; either way nothing lingers.
    assert_eq!(
        std::fs::read(&worker).unwrap(),
        original,
        "worker file unchanged"
    );
}

#[test]
fn the_fork_example_worker_runs_unchanged_in_batch_mode() {
    if !have("node") {
        return;
    }
    let worker = example("node-fork/worker.js");
    let dir = TempDir::new("node-batch");
    let cfg = node_config(&dir, &worker, "stdin");
    let input: Vec<u8> = (0..200)
        .flat_map(|i| format!("job {i}\n").into_bytes())
        .collect();
    let (code, out, err) = run_batch(&cfg, Stdio::piped(), Some(input), DEADLINE);
    assert_eq!(code, 0, "{err}");
    let want: String = (0..200)
        .map(|i| format!("Processed message: job {i}\n"))
        .collect();
    assert_eq!(String::from_utf8(out).unwrap(), want);
}

#[test]
fn node_object_replies_are_json_internal_messages_are_not_replies_and_bad_replies_are_errors() {
    let dir = TempDir::new("node-shapes");
    let worker = dir.write(
        "w.js",
        r#"
process.on('message', (m) => {
  if (m === 'object') {
    process.send({ echo: m, n: [1, 2.5, null, true], s: "q\"\n" });
  } else if (m === 'internal') {
    process.send({ cmd: 'NODE_TEST_INTERNAL', x: 1 });
    process.send('after internal');
  } else if (m === 'newline') {
    process.send('two\nlines');
  } else {
    process.send(m);
  }
});
"#,
    );
    let Some((mut o, port)) = node_over_tcp(&dir, &worker) else {
        return;
    };
    let mut cl = TcpClient::connect(port);
    for m in ["object", "internal", "newline", "plain"] {
        cl.send(m);
    }
    cl.send_raw(b"\xff\xfe\n");
    let got = cl.finish();
    assert_eq!(
        got,
        concat!(
            "{\"echo\":\"object\",\"n\":[1,2.5,null,true],\"s\":\"q\\\"\\n\"}\n",
            "after internal\n",
            "ERR reply contains a newline\n",
            "plain\n",
            "ERR message is not valid UTF-8\n",
        )
    );
    o.wait_log("Node internal message \"NODE_TEST_INTERNAL\" ignored", 1);
    assert_eq!(o.stop(), 0);
}

/// SIGKILL a random worker of orchd every 50 ms while clients send; every client
/// gets exactly one reply per message, its own, in order.
fn chaos(pool: &str, reply: impl Fn(&str) -> String + Send + Sync + 'static) {
    const CLIENTS: usize = 3;
    const MIN_MESSAGES: usize = 300;
    const MIN_KILLS: u64 = 8;
    let dir = TempDir::new("proto-chaos");
    let port = free_port();
    let cfg = dir.write(
        "c.toml",
        &format!(
            r#"
{pool}
count = 4
restart = "always"
backoff = {{ initial = "0s" }}

[[route]]
from = "tcp://127.0.0.1:{port}"
to = "w"
retries = 1000
"#
        ),
    );
    let mut o = Orchd::start_with(&cfg, &["--no-watch"], Stdio::null());
    o.wait_ready();
    let orchd_pid = o.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                let kids = children_of(orchd_pid);
                if kids.is_empty() {
                    continue;
                }
                n += 1;
                if kill(kids[n % kids.len()], libc::SIGKILL) {
                    kills.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let reply = Arc::new(reply);
    let started_at = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (kills, reply) = (kills.clone(), reply.clone());
            std::thread::spawn(move || {
                let cl = TcpClient::connect(port);
                let (mut reader, mut writer) = (cl.reader, cl.writer);
                let w = std::thread::spawn(move || {
                    let at_start = kills.load(Ordering::SeqCst);
                    let mut sent = Vec::new();
                    let mut bw = BufWriter::new(&mut writer);
                    for i in 0.. {
                        if i >= MIN_MESSAGES && kills.load(Ordering::SeqCst) >= at_start + MIN_KILLS
                        {
                            break;
                        }
                        let m = format!("c{c}-m{i}");
                        writeln!(bw, "{m}").unwrap();
                        sent.push(m);
                        if i % 20 == 19 {
                            bw.flush().unwrap();
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    bw.flush().unwrap();
                    drop(bw);
                    writer.shutdown(std::net::Shutdown::Write).unwrap();
                    sent
                });
                let mut got = String::new();
                reader.read_to_string(&mut got).expect("read replies");
                let sent = w.join().unwrap();
                let want: String = sent.iter().map(|m| reply(m) + "\n").collect();
                assert!(
                    got == want,
                    "client {c}: replies differ ({} sent)",
                    sent.len()
                );
                sent.len()
            })
        })
        .collect();
    let total: usize = clients.into_iter().map(|t| t.join().unwrap()).sum();
    stop.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    eprintln!(
        "chaos: {total} messages in {:?}, {} workers killed",
        started_at.elapsed(),
        kills.load(Ordering::SeqCst)
    );
    assert!(kills.load(Ordering::SeqCst) >= MIN_KILLS);
    assert_eq!(o.stop(), 0);
}

#[test]
fn tagged_chaos_loses_and_duplicates_nothing() {
    // A worker that starts in milliseconds (a Python one may take longer than the
    // killer leaves it) and answers each read's lines in reverse order.
    let dir = TempDir::new("tagged-chaos-worker");
    let worker = dir.write("rev.pl", REVERSE_PER_READ);
    chaos(
        &format!(
            "[pool.w]\ncommand = [\"perl\", \"{}\"]\nprotocol = \"tagged\"\nmax_inflight = 16",
            worker.display()
        ),
        |m| m.to_uppercase(),
    );
}

const REVERSE_PER_READ: &str = r#"$| = 1;
my $buf = "";
while (sysread(STDIN, $buf, 65536, length $buf)) {
    my @lines = split /\n/, $buf, -1;
    $buf = pop @lines;
    print map { my ($id, $m) = split / /, $_, 2; "$id \U$m\n" } reverse @lines;
}
"#;

#[test]
fn node_chaos_loses_and_duplicates_nothing() {
    if !have("node") {
        return;
    }
    let dir = TempDir::new("node-chaos-worker");
    let worker = dir.write(
        "w.js",
        "process.on('message', (m) => setTimeout(() => process.send('echo ' + m), 1));\n",
    );
    chaos(
        &format!(
            "[pool.w]\ncommand = [\"node\", \"{}\"]\nprotocol = \"node\"\nmax_inflight = 8",
            worker.display()
        ),
        |m| format!("echo {m}"),
    );
}

#[test]
fn lines_chaos_loses_and_duplicates_nothing() {
    chaos("[pool.w]\ncommand = [\"cat\"]", |m| m.to_string());
}

#[test]
fn a_node_worker_finishes_its_message_then_sees_disconnect_before_the_stop_signal() {
    let dir = TempDir::new("node-stop");
    let worker = dir.write(
        "w.js",
        r#"
process.on('message', (m) => {
  console.error('got ' + m);
  setTimeout(() => process.send(m + ' done'), 300);
});
process.on('disconnect', () => console.error('disconnected'));
process.on('SIGTERM', () => { console.error('got TERM'); process.exit(0); });
"#,
    );
    let Some((mut o, port)) = node_over_tcp(&dir, &worker) else {
        return;
    };
    let mut cl = TcpClient::connect(port);
    cl.send("slow");
    o.wait_log("]: got slow", 1);
    o.signal(libc::SIGTERM);
    assert_eq!(cl.recv(), "slow done", "the message in flight finished");
    assert_eq!(o.wait_exit(DEADLINE), 0);
    // Both workers: the channel closed first (disconnect), the stop signal after.
    let log = o.log();
    for i in 0..2 {
        let label = format!(" n[{i}]: ");
        let events: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&label))
            .filter_map(|l| {
                ["disconnected", "got TERM"]
                    .into_iter()
                    .find(|e| l.ends_with(e))
            })
            .collect();
        assert_eq!(events.first(), Some(&"disconnected"), "n[{i}]:\n{log}");
    }
}

/// Answers every message at once, except `hang`, never.
const ALL_BUT_HANG: &str = r#"#!/usr/bin/env python3
import sys
for line in sys.stdin.buffer:
    tag, _, msg = line.rstrip(b"\n").partition(b" ")
    if msg != b"hang":
        sys.stdout.buffer.write(tag + b" " + msg + b"!\n")
        sys.stdout.buffer.flush()
"#;

#[test]
fn an_overdue_tagged_message_is_retried_without_restarting_a_worker_that_answers_others() {
    let dir = TempDir::new("tagged-timeout");
    dir.write("w.py", ALL_BUT_HANG);
    let port = free_port();
    let cfg = dir.write(
        "c.toml",
        &format!(
            r#"
[pool.t]
command = ["python3", "w.py"]
count = 2
protocol = "tagged"

[[route]]
from = "tcp://127.0.0.1:{port}"
to = "t"
timeout = "2s"
retries = 1
"#
        ),
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut hung = TcpClient::connect(port);
    hung.send("hang");
    // Both workers keep answering others meanwhile: neither is ever quiet for 2 s.
    let done = Arc::new(AtomicBool::new(false));
    let pinger = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut cl = TcpClient::connect(port);
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                assert_eq!(cl.request(&format!("p{i}")), format!("p{i}!"));
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t = Instant::now();
    assert_eq!(hung.recv(), "ERR retries exhausted (timed out)");
    let waited = t.elapsed();
    done.store(true, Ordering::SeqCst);
    pinger.join().unwrap();
    assert!(
        waited >= Duration::from_secs(4),
        "two timeouts of 2 s: {waited:?}"
    );
    assert_eq!(o.stop(), 0);
    assert_eq!(o.log_count("1 message(s) not answered in time"), 2);
    assert_eq!(o.log_count("answered nothing within"), 0, "{}", o.log());
    assert_eq!(started(&o, "t[0]").len() + started(&o, "t[1]").len(), 2);
}
