//! Message routing (SPEC sections 3 and 5): strategies over unix and TCP listeners,
//! `match` rules, ordering, redelivery under chaos, timeouts, framing edge cases,
//! backpressure, many clients, batch mode and shutdown.
//!
//! Workers are real processes: small `sh` scripts that tag each reply with
//! `$ORCHD_INSTANCE`, `cat`, or a python one-liner. Blocking workers wait for a
//! `release` file instead of sleeping, so the order of events is forced, not hoped for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::*;

// ----- helpers ---------------------------------------------------------------------

/// Write an executable `sh` script into `dir`; returns it as a TOML argv array.
fn script(dir: &TempDir, name: &str, body: &str) -> String {
    let p = dir.write(name, &format!("#!/bin/sh\n{body}\n"));
    toml_argv(&[p.to_str().unwrap()])
}

fn toml_argv(args: &[&str]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Answers every line with `INSTANCE LINE`.
const TAG: &str = r#"while IFS= read -r l; do printf '%s %s\n' "$ORCHD_INSTANCE" "$l"; done"#;

/// Answers every line with the hex of the bytes it read, newline included.
fn hex_worker() -> String {
    toml_argv(&[
        "python3",
        "-u",
        "-c",
        "import sys\nfor l in sys.stdin.buffer:\n    sys.stdout.write(l.hex() + '\\n')",
    ])
}

/// A worker body that blocks on lines starting with `hold` until `release` exists
/// (logging `holding on INSTANCE` to stderr first), and tags every reply.
fn hold_worker(release: &std::path::Path) -> String {
    format!(
        r#"while IFS= read -r l; do
  case "$l" in hold*)
    echo "holding on $ORCHD_INSTANCE" >&2
    while [ ! -e '{}' ]; do sleep 0.02; done;;
  esac
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#,
        release.display()
    )
}

/// Start orchd on `toml` and wait until it is ready (failing at once if it exits).
fn start(dir: &TempDir, toml: &str) -> Orchd {
    let cfg = dir.write("orchd.toml", toml);
    let mut o = Orchd::start(&cfg);
    wait_for("orchd to be ready", DEADLINE, || {
        if let Some(status) = o.child.try_wait().unwrap() {
            panic!("orchd exited at start-up ({status}):\n{}", o.log());
        }
        (o.log_count("ready:") > 0).then_some(())
    });
    o
}

/// Split `INSTANCE REST` into its parts.
fn tagged(reply: &str) -> (u32, &str) {
    let (i, rest) = reply
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a tagged reply: {reply:?}"));
    (
        i.parse()
            .unwrap_or_else(|_| panic!("not a tagged reply: {reply:?}")),
        rest,
    )
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Unix,
    Tcp,
}

/// A listener address of a test.
enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

impl Addr {
    fn new(via: Via, dir: &TempDir, name: &str) -> Addr {
        match via {
            Via::Unix => Addr::Unix(dir.join(name)),
            Via::Tcp => Addr::Tcp(free_port()),
        }
    }

    /// The `from` value of a route.
    fn from(&self) -> String {
        match self {
            Addr::Unix(p) => format!("unix:{}", p.display()),
            Addr::Tcp(port) => format!("tcp://127.0.0.1:{port}"),
        }
    }

    fn connect(&self) -> Conn {
        match self {
            Addr::Unix(p) => Conn::Unix(Client::connect(p)),
            Addr::Tcp(port) => Conn::Tcp(TcpClient::connect(*port)),
        }
    }
}

enum Conn {
    Unix(Client),
    Tcp(TcpClient),
}

impl Conn {
    fn send(&mut self, line: &str) {
        match self {
            Conn::Unix(c) => c.send(line),
            Conn::Tcp(c) => c.send(line),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        match self {
            Conn::Unix(c) => c.send_raw(bytes),
            Conn::Tcp(c) => c.send_raw(bytes),
        }
    }

    fn recv(&mut self) -> String {
        match self {
            Conn::Unix(c) => c.recv(),
            Conn::Tcp(c) => c.recv(),
        }
    }

    fn request(&mut self, line: &str) -> String {
        self.send(line);
        self.recv()
    }

    fn finish(self) -> String {
        match self {
            Conn::Unix(c) => c.finish(),
            Conn::Tcp(c) => c.finish(),
        }
    }

    /// A reader and a writer usable from different threads.
    fn split(self) -> (Box<dyn BufRead + Send>, WriteHalf) {
        match self {
            Conn::Unix(c) => (Box::new(c.reader), WriteHalf::Unix(c.writer)),
            Conn::Tcp(c) => (Box::new(c.reader), WriteHalf::Tcp(c.writer)),
        }
    }
}

enum WriteHalf {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl WriteHalf {
    fn half_close(&self) {
        match self {
            WriteHalf::Unix(s) => s.shutdown(std::net::Shutdown::Write).unwrap(),
            WriteHalf::Tcp(s) => s.shutdown(std::net::Shutdown::Write).unwrap(),
        }
    }
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            WriteHalf::Unix(s) => s.write(buf),
            WriteHalf::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Config of one tagging pool of `count` instances behind one route.
fn tag_config(dir: &TempDir, addr: &Addr, count: u32, route_extra: &str) -> String {
    format!(
        r#"
[pool.tag]
command = {cmd}
count = {count}

[[route]]
from = "{from}"
to = "tag"
{route_extra}
"#,
        cmd = script(dir, "tag.sh", TAG),
        from = addr.from(),
    )
}

// ----- strategies ------------------------------------------------------------------

fn round_robin_spreads_evenly(via: Via) {
    let dir = TempDir::new("rr");
    let addr = Addr::new(via, &dir, "rr.sock");
    let _o = start(
        &dir,
        &tag_config(&dir, &addr, 4, r#"strategy = "round-robin""#),
    );
    let mut c = addr.connect();
    let mut per = [0u32; 4];
    for i in 0..40 {
        let msg = format!("m{i}");
        let reply = c.request(&msg);
        let (inst, rest) = tagged(&reply);
        assert_eq!(rest, msg);
        per[inst as usize] += 1;
    }
    assert_eq!(per, [10; 4], "messages per instance");
}

#[test]
fn round_robin_spreads_evenly_over_unix() {
    round_robin_spreads_evenly(Via::Unix);
}

#[test]
fn round_robin_spreads_evenly_over_tcp() {
    round_robin_spreads_evenly(Via::Tcp);
}

/// One instance is busy with a held message; least-busy sends everything else to the
/// idle ones (round-robin would block on the busy one).
fn least_busy_avoids_the_busy_instance(via: Via) {
    let dir = TempDir::new("lb");
    let addr = Addr::new(via, &dir, "lb.sock");
    let release = dir.join("release");
    let o = start(
        &dir,
        &format!(
            r#"
[pool.lb]
command = {cmd}
count = 4

[[route]]
from = "{from}"
to = "lb"
strategy = "least-busy"
"#,
            cmd = script(&dir, "lb.sh", &hold_worker(&release)),
            from = addr.from(),
        ),
    );
    let mut holder = addr.connect();
    holder.send("hold");
    o.wait_log("holding on ", 1);
    let log = o.log();
    let busy: u32 = log
        .lines()
        .find_map(|l| l.split("holding on ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .expect("instance number in the log");

    let mut c = addr.connect();
    let mut used = BTreeSet::new();
    for i in 0..30 {
        let msg = format!("m{i}");
        let reply = c.request(&msg);
        let (inst, rest) = tagged(&reply);
        assert_eq!(rest, msg);
        assert_ne!(inst, busy, "message {i} went to the busy instance");
        used.insert(inst);
    }
    assert!(used.len() >= 2, "idle instances used: {used:?}");
    std::fs::write(&release, "").unwrap();
    assert_eq!(holder.recv(), format!("{busy} hold"));
}

#[test]
fn least_busy_avoids_the_busy_instance_over_unix() {
    least_busy_avoids_the_busy_instance(Via::Unix);
}

#[test]
fn least_busy_avoids_the_busy_instance_over_tcp() {
    least_busy_avoids_the_busy_instance(Via::Tcp);
}

/// Keys (first word) stick to one instance whatever follows them and however they are
/// interleaved; 19 keys (not a multiple of 4, order varying per round) so that
/// round-robin could not pass by accident.
fn hash_sends_equal_keys_to_the_same_instance(via: Via) {
    let dir = TempDir::new("hash");
    let addr = Addr::new(via, &dir, "hash.sock");
    let _o = start(
        &dir,
        &tag_config(
            &dir,
            &addr,
            4,
            r#"strategy = "hash"
key = '^(\S+)'"#,
        ),
    );
    let mut c = addr.connect();
    let mut sent = Vec::new();
    for round in 0..6 {
        let mut keys: Vec<u32> = (0..19).collect();
        if round % 2 == 1 {
            keys.reverse();
        }
        keys.rotate_left(round * 3);
        for k in keys {
            let msg = format!("key{k} round{round} payload{}", round * 100 + k as usize);
            c.send(&msg);
            sent.push((k, msg));
        }
    }
    let mut owner: BTreeMap<u32, u32> = BTreeMap::new();
    for (k, msg) in &sent {
        let reply = c.recv();
        let (inst, rest) = tagged(&reply);
        assert_eq!(rest, msg);
        let first = *owner.entry(*k).or_insert(inst);
        assert_eq!(inst, first, "key{k} moved from instance {first} to {inst}");
    }
    let spread: BTreeSet<u32> = owner.values().copied().collect();
    assert!(
        spread.len() >= 3,
        "19 keys landed on only {spread:?}: {owner:?}"
    );
}

#[test]
fn hash_sends_equal_keys_to_the_same_instance_over_unix() {
    hash_sends_equal_keys_to_the_same_instance(Via::Unix);
}

#[test]
fn hash_sends_equal_keys_to_the_same_instance_over_tcp() {
    hash_sends_equal_keys_to_the_same_instance(Via::Tcp);
}

/// Each message gets exactly one reply per instance, in instance order although
/// instance 0 is the slowest.
fn broadcast_replies_once_per_instance_in_instance_order(via: Via) {
    let dir = TempDir::new("bcast");
    let addr = Addr::new(via, &dir, "bcast.sock");
    let cmd = script(
        &dir,
        "bcast.sh",
        r#"while IFS= read -r l; do
  if [ "$ORCHD_INSTANCE" = 0 ]; then sleep 0.2; fi
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#,
    );
    let _o = start(
        &dir,
        &format!(
            r#"
[pool.all]
command = {cmd}
count = 4

[[route]]
from = "{from}"
to = "all"
strategy = "broadcast"
"#,
            from = addr.from(),
        ),
    );
    let mut c = addr.connect();
    for b in 0..3 {
        c.send(&format!("b{b}"));
    }
    let got = c.finish();
    let want: String = (0..3)
        .flat_map(|b| (0..4).map(move |i| format!("{i} b{b}\n")))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn broadcast_replies_once_per_instance_in_instance_order_over_unix() {
    broadcast_replies_once_per_instance_in_instance_order(Via::Unix);
}

#[test]
fn broadcast_replies_once_per_instance_in_instance_order_over_tcp() {
    broadcast_replies_once_per_instance_in_instance_order(Via::Tcp);
}

#[test]
fn broadcast_skips_instances_that_are_not_running() {
    let dir = TempDir::new("bcastdown");
    let addr = Addr::new(Via::Unix, &dir, "b.sock");
    // Instance 2 exits at once and waits 20 s in backoff.
    let cmd = script(
        &dir,
        "some.sh",
        &format!("if [ \"$ORCHD_INSTANCE\" = 2 ]; then exit 1; fi\n{TAG}"),
    );
    let o = start(
        &dir,
        &format!(
            r#"
[pool.some]
command = {cmd}
count = 3
backoff = {{ initial = "20s" }}

[[route]]
from = "{from}"
to = "some"
strategy = "broadcast"
"#,
            from = addr.from(),
        ),
    );
    o.wait_log("restarting in", 1);
    let mut c = addr.connect();
    c.send("b0");
    c.send("b1");
    assert_eq!(c.finish(), "0 b0\n1 b0\n0 b1\n1 b1\n");
}

#[test]
fn broadcast_with_no_running_instance_gets_an_error() {
    let dir = TempDir::new("bcastnone");
    let addr = Addr::new(Via::Unix, &dir, "b.sock");
    let o = start(
        &dir,
        &format!(
            r#"
[pool.down]
command = ["sh", "-c", "exit 1"]
count = 2
backoff = {{ initial = "20s" }}

[[route]]
from = "{from}"
to = "down"
strategy = "broadcast"
"#,
            from = addr.from(),
        ),
    );
    o.wait_log("restarting in", 2);
    let mut c = addr.connect();
    assert_eq!(c.request("b"), "ERR pool has no running instances");
}

// ----- match rules -----------------------------------------------------------------

fn match_rules_setup(dir: &TempDir) -> (Orchd, Addr) {
    let addr = Addr::new(Via::Unix, dir, "m.sock");
    let cmd = script(
        dir,
        "pool.sh",
        r#"while IFS= read -r l; do printf '%s %s\n' "$ORCHD_POOL" "$l"; done"#,
    );
    let from = addr.from();
    let o = start(
        dir,
        &format!(
            r#"
[pool.first]
command = {cmd}
count = 1

[pool.second]
command = {cmd}
count = 1

[[route]]
from = "{from}"
match = "^a"
to = "first"

[[route]]
from = "{from}"
match = "^ab"
to = "second"

[[route]]
from = "{from}"
match = "^b"
to = "second"
"#
        ),
    );
    (o, addr)
}

#[test]
fn match_rules_are_tried_in_file_order_and_the_first_match_wins() {
    let dir = TempDir::new("match");
    let (_o, addr) = match_rules_setup(&dir);
    let mut c = addr.connect();
    assert_eq!(c.request("abc"), "first abc");
    assert_eq!(c.request("ab"), "first ab");
    assert_eq!(c.request("a"), "first a");
    assert_eq!(c.request("bab"), "second bab");
}

#[test]
fn message_matching_no_rule_gets_no_route_error() {
    let dir = TempDir::new("noroute");
    let (_o, addr) = match_rules_setup(&dir);
    let mut c = addr.connect();
    assert_eq!(c.request("zzz"), "ERR no route");
    assert_eq!(c.request(" abc"), "ERR no route");
    // The connection goes on.
    assert_eq!(c.request("abc"), "first abc");
}

// ----- ordering --------------------------------------------------------------------

#[test]
fn ordered_replies_keep_sending_order_across_workers_of_different_speeds() {
    let dir = TempDir::new("ordered");
    let addr = Addr::new(Via::Unix, &dir, "o.sock");
    // Instance 0 is the slowest, 3 the fastest: arrival order is roughly reversed.
    let cmd = script(
        &dir,
        "speed.sh",
        r#"case "$ORCHD_INSTANCE" in 0) d=0.15;; 1) d=0.1;; 2) d=0.05;; *) d=0;; esac
while IFS= read -r l; do sleep $d; printf '%s %s\n' "$ORCHD_INSTANCE" "$l"; done"#,
    );
    let _o = start(
        &dir,
        &format!(
            r#"
[pool.speed]
command = {cmd}
count = 4

[[route]]
from = "{from}"
to = "speed"
"#,
            from = addr.from(),
        ),
    );
    let mut c = addr.connect();
    let n = 16;
    for i in 0..n {
        c.send(&format!("m{i}"));
    }
    let mut used = BTreeSet::new();
    for i in 0..n {
        let reply = c.recv();
        let (inst, rest) = tagged(&reply);
        assert_eq!(rest, format!("m{i}"), "reply {i} out of order");
        used.insert(inst);
    }
    assert_eq!(used.len(), 4, "all four speeds took part: {used:?}");
}

#[test]
fn unordered_route_delivers_a_fast_reply_before_a_slow_earlier_one() {
    let dir = TempDir::new("unordered");
    let addr = Addr::new(Via::Unix, &dir, "u.sock");
    let release = dir.join("release");
    let _o = start(
        &dir,
        &format!(
            r#"
[pool.hold]
command = {cmd}
count = 2

[[route]]
from = "{from}"
to = "hold"
strategy = "round-robin"
ordered = false
"#,
            cmd = script(&dir, "hold.sh", &hold_worker(&release)),
            from = addr.from(),
        ),
    );
    let mut c = addr.connect();
    c.send("hold");
    c.send("quick");
    // "hold" is stuck until the release file exists: "quick" must come first.
    let first = c.recv();
    assert_eq!(tagged(&first).1, "quick");
    std::fs::write(&release, "").unwrap();
    let second = c.recv();
    assert_eq!(tagged(&second).1, "hold");
    assert_ne!(tagged(&first).0, tagged(&second).0);
}

#[test]
fn error_replies_keep_their_place_in_an_ordered_stream() {
    let dir = TempDir::new("ordererr");
    let addr = Addr::new(Via::Unix, &dir, "e.sock");
    let release = dir.join("release");
    let o = start(
        &dir,
        &format!(
            r#"
[pool.hold]
command = {cmd}
count = 1

[[route]]
from = "{from}"
match = "^hold"
to = "hold"
"#,
            cmd = script(&dir, "hold.sh", &hold_worker(&release)),
            from = addr.from(),
        ),
    );
    let mut c = unix_client(&addr);
    // One write: orchd reads both lines together; the second fails at once.
    c.send_raw(b"hold\nzzz\n");
    o.wait_log("holding on ", 1);
    std::fs::write(&release, "").unwrap();
    assert_eq!(c.recv(), "0 hold");
    assert_eq!(c.recv(), "ERR no route");
}

// ----- chaos -----------------------------------------------------------------------

/// Tiny xorshift; good enough to pick victims.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn every_message_gets_exactly_its_own_reply_while_workers_are_killed() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 6_000;
    const MIN_KILLS: u64 = 10;
    let dir = TempDir::new("chaos");
    let unix = Addr::new(Via::Unix, &dir, "chaos.sock");
    let tcp = Addr::new(Via::Tcp, &dir, "");
    let o = start(
        &dir,
        &format!(
            r#"
[pool.echo]
command = ["cat"]
count = 4
restart = "always"
backoff = {{ initial = "0s" }}

[[route]]
from = "{u}"
to = "echo"
retries = 10

[[route]]
from = "{t}"
to = "echo"
retries = 10
"#,
            u = unix.from(),
            t = tcp.from(),
        ),
    );
    let orchd_pid = o.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let seed = Instant::now().elapsed().as_nanos() as u64 | 1;
            let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(30));
                let kids = children_of(orchd_pid);
                if kids.is_empty() {
                    continue;
                }
                let victim = kids[(rng.next() % kids.len() as u64) as usize];
                if kill(victim, libc::SIGKILL) {
                    kills.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let conn = if c % 2 == 0 {
            unix.connect()
        } else {
            tcp.connect()
        };
        let kills = kills.clone();
        clients.push(std::thread::spawn(move || {
            let (mut reader, mut writer) = conn.split();
            let w = std::thread::spawn(move || {
                // However fast this machine is, the traffic meets the killer: keep
                // sending until it has struck MIN_KILLS times while we were sending
                // (and at least PER_CLIENT messages went out).
                let kills_at_start = kills.load(Ordering::SeqCst);
                let mut sent = Vec::new();
                let mut bw = BufWriter::new(&mut writer);
                for i in 0..PER_CLIENT * 100 {
                    if i % 100 == 0
                        && i >= PER_CLIENT
                        && kills.load(Ordering::SeqCst) >= kills_at_start + MIN_KILLS
                    {
                        break;
                    }
                    let m = format!("client{c} message{i} {}", "x".repeat(i % 50));
                    bw.write_all(m.as_bytes()).unwrap();
                    bw.write_all(b"\n").unwrap();
                    sent.push(m);
                }
                bw.flush().unwrap();
                drop(bw);
                writer.half_close();
                sent
            });
            // The connection closes once every reply is written: duplicates would show.
            let mut got = String::new();
            reader.read_to_string(&mut got).expect("read replies");
            let sent = w.join().unwrap();
            (sent, got)
        }));
    }
    let results: Vec<(Vec<String>, String)> =
        clients.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    let kills = kills.load(Ordering::SeqCst);
    let total: usize = results.iter().map(|(sent, _)| sent.len()).sum();
    eprintln!("chaos: {total} messages in {elapsed:?}, {kills} workers killed");

    for (c, (sent, got)) in results.iter().enumerate() {
        let errors: Vec<&str> = got.lines().filter(|l| l.starts_with("ERR")).collect();
        assert!(
            errors.is_empty(),
            "client {c}: {} error replies, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
        let mut want: HashMap<&str, i64> = HashMap::new();
        for m in sent {
            *want.entry(m.as_str()).or_default() += 1;
        }
        for l in got.lines() {
            *want.entry(l).or_default() -= 1;
        }
        let bad: Vec<(&&str, &i64)> = want.iter().filter(|(_, &n)| n != 0).take(5).collect();
        assert!(
            bad.is_empty(),
            "client {c}: {} replies for {} messages; missing (>0) / extra (<0): {bad:?}",
            got.lines().count(),
            sent.len()
        );
    }
    assert!(kills >= MIN_KILLS, "only {kills} kills");
    assert!(
        o.log_count("unanswered message(s) again") > 0,
        "no message was ever redelivered: the chaos missed the traffic\n{}",
        o.log()
    );
}

// ----- hung workers ----------------------------------------------------------------

/// Hangs forever on `hang` lines; tags other lines.
const HANG: &str = r#"while IFS= read -r l; do
  case "$l" in hang*) sleep 1000;; esac
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#;

/// One pool of `count` instances running `body`, restarted at once, behind a route
/// with `timeout` and `retries`.
fn hang_config(
    dir: &TempDir,
    addr: &Addr,
    count: u32,
    timeout: &str,
    retries: u32,
    body: &str,
) -> String {
    format!(
        r#"
[pool.hang]
command = {cmd}
count = {count}
backoff = {{ initial = "0s" }}

[[route]]
from = "{from}"
to = "hang"
timeout = "{timeout}"
retries = {retries}
"#,
        cmd = script(dir, "hang.sh", body),
        from = addr.from(),
    )
}

#[test]
fn hung_message_gets_timed_out_error_when_retries_are_used_up() {
    let dir = TempDir::new("hung");
    let addr = Addr::new(Via::Unix, &dir, "h.sock");
    let _o = start(&dir, &hang_config(&dir, &addr, 1, "300ms", 0, HANG));
    let mut c = addr.connect();
    let t = Instant::now();
    assert_eq!(c.request("hang"), "ERR retries exhausted (timed out)");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(290), "error after {took:?}");
}

#[test]
fn timed_out_instance_is_replaced_by_a_new_process() {
    let dir = TempDir::new("hungpid");
    let addr = Addr::new(Via::Unix, &dir, "h.sock");
    let o = start(&dir, &hang_config(&dir, &addr, 1, "300ms", 0, HANG));
    let old = wait_for("the worker", DEADLINE, || {
        let k = o.children();
        (k.len() == 1).then(|| k[0])
    });
    let mut c = addr.connect();
    assert_eq!(c.request("hang"), "ERR retries exhausted (timed out)");
    // The replacement is the child running hang.sh (for a moment the hung worker's
    // `sleep`, reparented to orchd and dying, may be its only child).
    let runs_script = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains("hang.sh")
    };
    let new = wait_for("a replacement worker running hang.sh", DEADLINE, || {
        o.children()
            .into_iter()
            .find(|&k| k != old && runs_script(k))
    });
    wait_for("the hung worker to be gone", DEADLINE, || {
        (!alive(old)).then_some(())
    });
    assert_eq!(env_of(new, "ORCHD_INSTANCE").as_deref(), Some("0"));
    assert_eq!(c.request("after"), "0 after");
}

#[test]
fn timed_out_message_is_retried_and_answered() {
    let dir = TempDir::new("hungretry");
    let addr = Addr::new(Via::Unix, &dir, "h.sock");
    let marker = dir.join("hung-once");
    // Only the first delivery of `hang` hangs (whichever instance gets it).
    let body = format!(
        r#"while IFS= read -r l; do
  case "$l" in hang*)
    if [ ! -e '{m}' ]; then : > '{m}'; sleep 1000; fi;;
  esac
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#,
        m = marker.display()
    );
    let _o = start(&dir, &hang_config(&dir, &addr, 2, "300ms", 1, &body));
    let mut c = addr.connect();
    let t = Instant::now();
    let reply = c.request("hang");
    let took = t.elapsed();
    assert_eq!(tagged(&reply).1, "hang", "reply {reply:?}");
    assert!(marker.exists(), "the first delivery did not hang");
    assert!(
        took >= Duration::from_millis(290),
        "answered after {took:?}"
    );
}

// ----- deaths ----------------------------------------------------------------------

/// Logs every line it reads to `attempts`, kills itself on `die` lines, tags others.
fn dying_worker(attempts: &std::path::Path) -> String {
    format!(
        r#"while IFS= read -r l; do
  echo "$l" >> '{a}'
  case "$l" in die*) kill -9 $$;; esac
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#,
        a = attempts.display()
    )
}

fn attempts_of(path: &std::path::Path, msg: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == msg)
        .count()
}

#[test]
fn message_that_kills_its_worker_is_tried_retries_plus_one_times_then_fails() {
    let dir = TempDir::new("die");
    let addr = Addr::new(Via::Unix, &dir, "d.sock");
    let attempts = dir.join("attempts");
    let _o = start(
        &dir,
        &hang_config(&dir, &addr, 1, "0s", 2, &dying_worker(&attempts)),
    );
    let mut c = addr.connect();
    assert_eq!(c.request("die"), "ERR retries exhausted (worker died)");
    assert_eq!(attempts_of(&attempts, "die"), 3);
    assert_eq!(c.request("ok"), "0 ok", "the instance came back");
}

#[test]
fn replies_written_just_before_death_are_delivered_and_not_redelivered() {
    let dir = TempDir::new("dielater");
    let addr = Addr::new(Via::Unix, &dir, "d.sock");
    let attempts = dir.join("attempts");
    // Holds its replies back until a `die` line, then writes them all and dies.
    let body = format!(
        r#"acc=''
while IFS= read -r l; do
  echo "$l" >> '{a}'
  case "$l" in die*) printf '%b' "$acc"; kill -9 $$;; esac
  acc="$acc$ORCHD_INSTANCE $l\n"
done"#,
        a = attempts.display()
    );
    // All three must be written before it answers any: a fixed window (the adaptive
    // default starts at 2 in flight).
    let cfg = hang_config(&dir, &addr, 1, "0s", 1, &body);
    let _o = start(
        &dir,
        &cfg.replace("backoff =", "max_inflight = 8\nbackoff ="),
    );
    let mut c = addr.connect();
    for m in ["a", "b", "die"] {
        c.send(m);
    }
    assert_eq!(c.recv(), "0 a");
    assert_eq!(c.recv(), "0 b");
    assert_eq!(c.recv(), "ERR retries exhausted (worker died)");
    assert_eq!(
        [
            attempts_of(&attempts, "a"),
            attempts_of(&attempts, "b"),
            attempts_of(&attempts, "die"),
        ],
        [1, 1, 2],
        "deliveries of a, b, die"
    );
}

#[test]
fn half_written_reply_of_a_dead_worker_is_discarded() {
    let dir = TempDir::new("half");
    let addr = Addr::new(Via::Unix, &dir, "h.sock");
    let marker = dir.join("died-once");
    let body = format!(
        r#"while IFS= read -r l; do
  case "$l" in half*)
    if [ ! -e '{m}' ]; then : > '{m}'; printf 'partial-garbage'; kill -9 $$; fi;;
  esac
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#,
        m = marker.display()
    );
    let o = start(&dir, &hang_config(&dir, &addr, 1, "0s", 1, &body));
    let mut c = addr.connect();
    assert_eq!(c.request("half"), "0 half");
    assert_eq!(c.request("next"), "0 next");
    assert_eq!(o.log_count("discarding a half-written reply"), 1);
}

#[test]
fn message_for_a_pool_without_running_instance_times_out_waiting() {
    let dir = TempDir::new("noinst");
    let addr = Addr::new(Via::Unix, &dir, "n.sock");
    let o = start(
        &dir,
        &format!(
            r#"
[pool.crash]
command = ["sh", "-c", "exit 3"]
count = 1
backoff = {{ initial = "20s" }}

[[route]]
from = "{from}"
to = "crash"
timeout = "300ms"
"#,
            from = addr.from()
        ),
    );
    o.wait_log("restarting in", 1);
    let mut c = addr.connect();
    let t = Instant::now();
    assert_eq!(c.request("m"), "ERR timed out waiting for an instance");
    assert!(t.elapsed() >= Duration::from_millis(290));
}

#[test]
fn pool_with_zero_instances_answers_no_instances_error() {
    let dir = TempDir::new("zero");
    let addr = Addr::new(Via::Unix, &dir, "z.sock");
    let _o = start(
        &dir,
        &format!(
            r#"
[pool.none]
command = ["cat"]
count = 0

[[route]]
from = "{from}"
to = "none"
"#,
            from = addr.from()
        ),
    );
    let mut c = addr.connect();
    assert_eq!(c.request("m1"), "ERR pool has no instances");
    assert_eq!(c.request("m2"), "ERR pool has no instances");
}

// ----- framing ---------------------------------------------------------------------

fn cat_setup(dir: &TempDir) -> (Orchd, Addr) {
    let addr = Addr::new(Via::Unix, dir, "cat.sock");
    let o = start(
        dir,
        &format!(
            r#"
[pool.cat]
command = ["cat"]
count = 2

[[route]]
from = "{from}"
to = "cat"
"#,
            from = addr.from()
        ),
    );
    (o, addr)
}

fn unix_client(addr: &Addr) -> Client {
    match addr.connect() {
        Conn::Unix(c) => c,
        Conn::Tcp(_) => unreachable!(),
    }
}

#[test]
fn over_long_line_gets_one_error_and_the_next_line_still_works() {
    let dir = TempDir::new("toolong");
    let (_o, addr) = cat_setup(&dir);
    let mut c = unix_client(&addr);
    let long = vec![b'x'; (1 << 20) + 1];
    // Written from a thread: orchd reads (and drops) it while we wait for replies.
    let mut w = c.writer.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        w.write_all(&long).unwrap();
        w.write_all(b"\nafter\n").unwrap();
    });
    assert_eq!(c.recv(), "ERR message too long");
    assert_eq!(c.recv(), "after");
    t.join().unwrap();
    assert_eq!(c.request("again"), "again");
}

#[test]
fn line_of_exactly_one_mib_is_delivered() {
    let dir = TempDir::new("onemib");
    let (_o, addr) = cat_setup(&dir);
    let mut c = unix_client(&addr);
    let line: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut w = c.writer.try_clone().unwrap();
    let sent = line.clone();
    let t = std::thread::spawn(move || {
        w.write_all(sent.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
    });
    let reply = c.recv();
    t.join().unwrap();
    assert_eq!(reply.len(), line.len());
    assert!(reply == line, "the 1 MiB reply differs from the message");
}

#[test]
fn binary_bytes_pass_through_unchanged() {
    let dir = TempDir::new("binary");
    let (_o, addr) = cat_setup(&dir);
    let mut c = unix_client(&addr);
    let msg: Vec<u8> = vec![
        0x00, 0xff, 0xfe, b' ', 0x80, b'b', 0x00, b'\t', 0xc3, 0x28, 0x7f,
    ];
    c.send_raw(&msg);
    c.send_raw(b"\n");
    assert_eq!(recv_bytes(&mut c.reader), msg);
    let all: Vec<u8> = (0u8..=255).filter(|&b| b != b'\n').collect();
    c.send_raw(&all);
    c.send_raw(b"\n");
    // A trailing CR would be stripped; 0x0d is in the middle here.
    assert_eq!(recv_bytes(&mut c.reader), all);
}

fn hex_setup(dir: &TempDir) -> (Orchd, Client) {
    let addr = Addr::new(Via::Unix, dir, "hex.sock");
    let o = start(
        dir,
        &format!(
            r#"
[pool.hex]
command = {cmd}
count = 1

[[route]]
from = "{from}"
to = "hex"
"#,
            cmd = hex_worker(),
            from = addr.from()
        ),
    );
    let c = unix_client(&addr);
    (o, c)
}

#[test]
fn trailing_cr_of_crlf_lines_does_not_reach_the_worker() {
    let dir = TempDir::new("crlf");
    let (_o, mut c) = hex_setup(&dir);
    c.send_raw(b"hello\r\n");
    assert_eq!(c.recv(), "68656c6c6f0a");
    // Only the trailing CR goes: one in the middle stays.
    c.send_raw(b"x\ry\r\n");
    assert_eq!(c.recv(), "780d790a");
}

#[test]
fn empty_lines_get_a_reply_each() {
    let dir = TempDir::new("empty");
    let (_o, mut c) = hex_setup(&dir);
    c.send_raw(b"\n\r\n\nz\n");
    assert_eq!(c.recv(), "0a");
    assert_eq!(c.recv(), "0a");
    assert_eq!(c.recv(), "0a");
    assert_eq!(c.recv(), "7a0a");
}

#[test]
fn unterminated_last_line_before_eof_is_a_message() {
    let dir = TempDir::new("unterminated");
    let (_o, mut c) = hex_setup(&dir);
    c.send_raw(b"one\ntail");
    assert_eq!(c.finish(), "6f6e650a\n7461696c0a\n");
}

#[test]
fn over_long_unterminated_last_line_gets_one_error() {
    let dir = TempDir::new("toolongeof");
    let (_o, addr) = cat_setup(&dir);
    let mut c = unix_client(&addr);
    let mut w = c.writer.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        w.write_all(b"first\n").unwrap();
        w.write_all(&vec![b'x'; (1 << 20) + 10]).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut rest = String::new();
    c.reader.read_to_string(&mut rest).unwrap();
    t.join().unwrap();
    assert_eq!(rest, "first\nERR message too long\n");
}

#[test]
fn over_long_reply_gets_one_error_and_the_next_reply_is_aligned() {
    let dir = TempDir::new("bigreply");
    let addr = Addr::new(Via::Unix, &dir, "b.sock");
    let cmd = toml_argv(&[
        "python3",
        "-u",
        "-c",
        "import sys\nfor l in sys.stdin:\n    l = l.strip()\n    sys.stdout.write(('x' * (2 << 20) if l == 'big' else l) + '\\n')",
    ]);
    let _o = start(
        &dir,
        &format!(
            r#"
[pool.big]
command = {cmd}
count = 1

[[route]]
from = "{from}"
to = "big"
"#,
            from = addr.from()
        ),
    );
    let mut c = addr.connect();
    c.send("a");
    c.send("big");
    c.send("b");
    assert_eq!(c.recv(), "a");
    assert_eq!(c.recv(), "ERR reply too long");
    assert_eq!(c.recv(), "b");
}

// ----- listeners -------------------------------------------------------------------

#[test]
fn unix_listener_socket_file_gets_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let path = dir.join("m.sock");
    let _o = start(
        &dir,
        &format!(
            r#"
[pool.cat]
command = ["cat"]
count = 1

[[route]]
from = "unix:{p}"
mode = "0600"
to = "cat"
"#,
            p = path.display()
        ),
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
}

#[test]
fn stale_unix_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let _o = start(
        &dir,
        &format!(
            r#"
[pool.cat]
command = ["cat"]
count = 1

[[route]]
from = "unix:{p}"
to = "cat"
"#,
            p = path.display()
        ),
    );
    let mut c = Client::connect(&path);
    assert_eq!(c.request("x"), "x");
}

// ----- clients ---------------------------------------------------------------------

/// A client sends slow messages and goes away (`reset`: TCP RST instead of a close)
/// before their replies exist; another client and orchd carry on.
fn client_leaving_with_replies_pending(via: Via, reset: bool) {
    let dir = TempDir::new("disconnect");
    let addr = Addr::new(via, &dir, "d.sock");
    let cmd = script(
        &dir,
        "slow.sh",
        r#"while IFS= read -r l; do
  case "$l" in slow*) echo "got-slow" >&2; sleep 0.2; echo "answered-slow" >&2;; esac
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#,
    );
    let mut o = start(
        &dir,
        &format!(
            r#"
[pool.slow]
command = {cmd}
count = 2

[[route]]
from = "{from}"
to = "slow"
"#,
            from = addr.from()
        ),
    );
    let mut other = addr.connect();
    assert_eq!(tagged(&other.request("before")).1, "before");
    let mut leaver = addr.connect();
    // One write: orchd reads all six together; once both instances have started on
    // one, the other four are in flight too, and the client may go.
    let batch: String = (0..6).map(|i| format!("slow{i}\n")).collect();
    leaver.send_raw(batch.as_bytes());
    o.wait_log("got-slow", 2);
    if reset {
        let Conn::Tcp(t) = &leaver else {
            unreachable!()
        };
        set_linger_zero(&t.writer);
    }
    drop(leaver);
    for i in 0..5 {
        let msg = format!("fast{i}");
        assert_eq!(tagged(&other.request(&msg)).1, msg);
    }
    // Every reply of the leaver was produced (and had nowhere to go).
    o.wait_log("answered-slow", 6);
    let msg = "after";
    assert_eq!(tagged(&other.request(msg)).1, msg);
    let mut fresh = addr.connect();
    assert_eq!(tagged(&fresh.request("fresh")).1, "fresh");
    assert!(o.child.try_wait().unwrap().is_none(), "orchd exited");
}

#[test]
fn client_disconnecting_with_replies_pending_does_not_affect_others() {
    client_leaving_with_replies_pending(Via::Unix, false);
}

#[test]
fn tcp_client_reset_with_replies_pending_does_not_affect_others() {
    client_leaving_with_replies_pending(Via::Tcp, true);
}

/// Make the close of `s` send a RST (SO_LINGER with a zero timeout).
fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized `linger` on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_LINGER");
}

#[test]
fn client_that_does_not_read_is_throttled_and_memory_stays_bounded() {
    const LINE: usize = 500;
    const LINES: u64 = 100_000; // 50 MB
                                // Measured: about 16 MiB at the stall. Without backpressure, 50 MB of messages
                                // and replies would be held.
    const MAX_RSS_KIB: u64 = 100 * 1024;
    let dir = TempDir::new("backpressure");
    let (o, addr) = cat_setup(&dir);
    let pid = o.pid();
    let rss_before = vm_rss_kib(pid);
    let c = unix_client(&addr);
    let mut w = c.writer.try_clone().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let line_of = |i: u64| format!("{i:012} {}", "y".repeat(LINE - 14));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            let mut bw = BufWriter::with_capacity(1 << 16, &mut w);
            for i in 0..LINES {
                bw.write_all(line_of(i).as_bytes()).unwrap();
                bw.write_all(b"\n").unwrap();
                written.fetch_add(1, Ordering::Relaxed);
            }
            bw.flush().unwrap();
            drop(bw);
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    // Not reading: wait until the writer is stuck (no progress for a second).
    let mut max_rss = 0;
    let mut last = (0, Instant::now());
    let start = Instant::now();
    loop {
        max_rss = max_rss.max(vm_rss_kib(pid));
        let n = written.load(Ordering::Relaxed);
        assert!(
            n < LINES,
            "the client wrote all 50 MB without reading a reply: no backpressure"
        );
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the writer never stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stalled_at = last.0;
    let rss_stalled = max_rss;
    assert!(
        max_rss < MAX_RSS_KIB,
        "orchd RSS {max_rss} KiB while the client did not read"
    );
    // Now read: every reply arrives, in order.
    let mut reader = c.reader;
    let mut buf = String::new();
    for i in 0..LINES {
        buf.clear();
        let n = reader.read_line(&mut buf).expect("read reply");
        assert!(n > 0, "connection closed after {i} replies");
        assert_eq!(buf.trim_end_matches('\n'), line_of(i), "reply {i}");
        if i % 10_000 == 0 {
            max_rss = max_rss.max(vm_rss_kib(pid));
        }
    }
    writer.join().unwrap();
    buf.clear();
    assert_eq!(
        reader.read_line(&mut buf).unwrap(),
        0,
        "extra reply {buf:?}"
    );
    assert!(
        max_rss < MAX_RSS_KIB,
        "orchd RSS {max_rss} KiB while draining"
    );
    eprintln!(
        "backpressure: writer stalled after {stalled_at} lines ({} MB); orchd RSS before \
         {rss_before} KiB, stalled {rss_stalled} KiB, max {max_rss} KiB; total {:?}",
        stalled_at * LINE as u64 / 1_000_000,
        start.elapsed()
    );
}

#[test]
fn two_hundred_concurrent_connections_each_get_their_reply() {
    const N: usize = 200;
    let dir = TempDir::new("many");
    let addr = Addr::new(Via::Tcp, &dir, "");
    let _o = start(&dir, &tag_config(&dir, &addr, 4, ""));
    let Addr::Tcp(port) = addr else {
        unreachable!()
    };
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = TcpClient::connect(port);
                // Everyone is connected before anyone sends.
                barrier.wait();
                let msg = format!("connection{i}");
                let reply = c.request(&msg);
                assert_eq!(tagged(&reply).1, msg);
                barrier.wait();
                c.finish()
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let rest = t.join().unwrap_or_else(|_| panic!("connection {i} failed"));
        assert_eq!(rest, "", "connection {i} got extra replies");
    }
}

// ----- batch mode ------------------------------------------------------------------

fn batch_config(dir: &TempDir, route_extra: &str) -> PathBuf {
    dir.write(
        "batch.toml",
        &format!(
            r#"
[pool.cat]
command = ["cat"]
count = 3

[[route]]
from = "stdin"
to = "cat"
{route_extra}
"#
        ),
    )
}

fn numbered_lines(n: usize) -> String {
    (0..n).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn batch_from_a_file_writes_every_reply_in_order_and_exits_0() {
    let dir = TempDir::new("batchfile");
    let cfg = batch_config(&dir, "");
    // More than a client may have outstanding (10 000): reading pauses and resumes.
    let input = numbered_lines(25_000);
    let path = dir.write("input.txt", &input);
    let stdin = Stdio::from(std::fs::File::open(&path).unwrap());
    let (code, out, err) = run_batch(&cfg, stdin, None, DEADLINE);
    assert_eq!(String::from_utf8_lossy(&out), input, "stderr:\n{err}");
    assert_eq!(code, 0, "stderr:\n{err}");
}

#[test]
fn batch_from_a_pipe_writes_every_reply_in_order_and_exits_0() {
    let dir = TempDir::new("batchpipe");
    let cfg = batch_config(&dir, "");
    let input = numbered_lines(20_000);
    let (code, out, err) = run_batch(
        &cfg,
        Stdio::piped(),
        Some(input.clone().into_bytes()),
        DEADLINE,
    );
    assert_eq!(String::from_utf8_lossy(&out), input, "stderr:\n{err}");
    assert_eq!(code, 0, "stderr:\n{err}");
}

/// In batch mode orchd asks for 1 MiB pipe buffers on its stdin and stdout when they
/// are pipes (fewer writes and wake-ups for bulk data); seen from the test's ends of
/// the same pipes.
#[test]
fn batch_pipes_are_grown_to_a_mebibyte() {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("batchpipesize");
    let cfg = batch_config(&dir, "");
    let tag = ProcessTag::new();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--no-watch")
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    tag.mark(&mut cmd);
    let mut child = cmd.spawn().expect("spawn orchd");
    let size = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    let mut input = child.stdin.take().unwrap();
    let output = child.stdout.take().unwrap();
    let output_fd = output.as_raw_fd();
    // One answer: orchd has opened its batch client by then.
    input.write_all(b"hello\n").unwrap();
    let mut lines = std::io::BufReader::new(output).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "hello");
    assert_eq!(size(input.as_raw_fd()), 1 << 20, "stdin");
    assert_eq!(size(output_fd), 1 << 20, "stdout");
    drop(input);
    assert!(lines.next().is_none(), "more output after the reply");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    tag.assert_no_survivors("batch orchd");
}

/// A batch pool whose queue is always full: 2 instances, 2 in flight each, queue 4.
const FULL_QUEUE_BATCH: &str = r#"
[pool.cat]
command = ["cat"]
count = 2
max_inflight = 2
queue = 4

[[route]]
from = "stdin"
to = "cat"
"#;

#[test]
fn batch_from_a_file_through_a_full_pool_queue_answers_everything() {
    let dir = TempDir::new("batchqueue");
    let cfg = dir.write("batch.toml", FULL_QUEUE_BATCH);
    let input = numbered_lines(4_000);
    let path = dir.write("input.txt", &input);
    let stdin = Stdio::from(std::fs::File::open(&path).unwrap());
    let (code, out, err) = run_batch(&cfg, stdin, None, DEADLINE);
    assert_eq!(String::from_utf8_lossy(&out), input, "stderr:\n{err}");
    assert_eq!(code, 0, "stderr:\n{err}");
}

#[test]
fn batch_from_a_pipe_through_a_full_pool_queue_answers_everything() {
    let dir = TempDir::new("batchqueuepipe");
    let cfg = dir.write("batch.toml", FULL_QUEUE_BATCH);
    let input = numbered_lines(4_000);
    let (code, out, err) = run_batch(
        &cfg,
        Stdio::piped(),
        Some(input.clone().into_bytes()),
        DEADLINE,
    );
    assert_eq!(String::from_utf8_lossy(&out), input, "stderr:\n{err}");
    assert_eq!(code, 0, "stderr:\n{err}");
}

#[test]
fn full_pool_queue_pauses_clients_and_resumes_them() {
    const CLIENTS: usize = 3;
    const PER_CLIENT: usize = 1_000;
    let dir = TempDir::new("queuefull");
    let addr = Addr::new(Via::Unix, &dir, "q.sock");
    let mut o = start(
        &dir,
        &format!(
            r#"
[pool.cat]
command = ["cat"]
count = 2
max_inflight = 2
queue = 4

[[route]]
from = "{from}"
to = "cat"
"#,
            from = addr.from()
        ),
    );
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let conn = addr.connect();
            std::thread::spawn(move || {
                let sent: String = (0..PER_CLIENT)
                    .map(|i| format!("client{c} message{i}\n"))
                    .collect();
                let (mut reader, mut writer) = conn.split();
                let bytes = sent.clone().into_bytes();
                let w = std::thread::spawn(move || {
                    writer.write_all(&bytes).unwrap();
                    writer.half_close();
                });
                let mut got = String::new();
                reader.read_to_string(&mut got).expect("read replies");
                w.join().unwrap();
                (sent, got)
            })
        })
        .collect();
    for (c, t) in threads.into_iter().enumerate() {
        let (sent, got) = t.join().unwrap();
        assert!(
            got == sent,
            "client {c}: {} replies for {PER_CLIENT} messages, or out of order",
            got.lines().count()
        );
    }
    assert!(o.child.try_wait().unwrap().is_none(), "orchd exited");
}

#[test]
fn batch_with_an_error_reply_exits_1() {
    let dir = TempDir::new("batcherr");
    let cfg = batch_config(&dir, r#"match = "^ok""#);
    let path = dir.write("input.txt", "ok 1\nbad\nok 2\n");
    let stdin = Stdio::from(std::fs::File::open(&path).unwrap());
    let (code, out, err) = run_batch(&cfg, stdin, None, DEADLINE);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "ok 1\nERR no route\nok 2\n",
        "stderr:\n{err}"
    );
    assert_eq!(code, 1, "stderr:\n{err}");
}

#[test]
fn batch_unterminated_last_line_is_answered() {
    let dir = TempDir::new("batchtail");
    let cfg = batch_config(&dir, "");
    let path = dir.write("input.txt", "first\nlast");
    let stdin = Stdio::from(std::fs::File::open(&path).unwrap());
    let (code, out, err) = run_batch(&cfg, stdin, None, DEADLINE);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "first\nlast\n",
        "stderr:\n{err}"
    );
    assert_eq!(code, 0, "stderr:\n{err}");
}

// ----- shutdown --------------------------------------------------------------------

fn busy_config(dir: &TempDir, addr: &Addr, release: &std::path::Path, drain: &str) -> String {
    let cmd = script(
        dir,
        "busy.sh",
        &format!(
            r#"while IFS= read -r l; do
  echo "busy-with-message $ORCHD_INSTANCE" >&2
  while [ ! -e '{r}' ]; do sleep 0.02; done
  printf '%s %s\n' "$ORCHD_INSTANCE" "$l"
done"#,
            r = release.display()
        ),
    );
    format!(
        r#"
[orchd]
drain_timeout = "{drain}"

[pool.busy]
command = {cmd}
count = 4

[[route]]
from = "{from}"
to = "busy"
"#,
        from = addr.from()
    )
}

#[test]
fn sigterm_lets_in_flight_messages_finish_then_exits_0() {
    let dir = TempDir::new("drain");
    let addr = Addr::new(Via::Unix, &dir, "b.sock");
    let release = dir.join("release");
    let mut o = start(&dir, &busy_config(&dir, &addr, &release, "10s"));
    let mut c = addr.connect();
    for i in 0..4 {
        c.send(&format!("m{i}"));
    }
    // Each of the 4 instances holds one message.
    o.wait_log("busy-with-message", 4);
    o.signal(libc::SIGTERM);
    o.wait_log("waiting up to", 1);
    assert!(
        o.child.try_wait().unwrap().is_none(),
        "exited before draining"
    );
    let t = Instant::now();
    std::fs::write(&release, "").unwrap();
    let mut replies: Vec<String> = (0..4).map(|_| c.recv()).collect();
    let drained_in = t.elapsed();
    for (i, r) in replies.iter_mut().enumerate() {
        assert_eq!(tagged(r).1, format!("m{i}"));
    }
    assert_eq!(o.wait_exit(DEADLINE), 0);
    eprintln!("drain: in-flight replies {drained_in:?} after release");
}

#[test]
fn sigterm_closes_the_listener_while_draining() {
    let dir = TempDir::new("drainrefuse");
    let addr = Addr::new(Via::Unix, &dir, "b.sock");
    let release = dir.join("release");
    let o = start(&dir, &busy_config(&dir, &addr, &release, "10s"));
    let mut c = addr.connect();
    c.send("m0");
    o.wait_log("busy-with-message", 1);
    o.signal(libc::SIGTERM);
    o.wait_log("waiting up to", 1);
    let Addr::Unix(path) = &addr else {
        unreachable!()
    };
    assert!(
        UnixStream::connect(path).is_err(),
        "a new connection was accepted while draining"
    );
    std::fs::write(&release, "").unwrap();
    assert_eq!(c.recv(), "0 m0");
}

#[test]
fn messages_unanswered_at_drain_timeout_get_shutting_down_error() {
    let dir = TempDir::new("drainover");
    let addr = Addr::new(Via::Unix, &dir, "b.sock");
    let release = dir.join("never");
    let mut o = start(&dir, &busy_config(&dir, &addr, &release, "500ms"));
    let mut c = addr.connect();
    c.send("stuck");
    o.wait_log("busy-with-message", 1);
    let t = Instant::now();
    o.signal(libc::SIGTERM);
    assert_eq!(c.recv(), "ERR shutting down");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(o.wait_exit(DEADLINE), 0);
}

#[test]
fn error_prefix_is_configurable() {
    let dir = TempDir::new("prefix");
    let addr = Addr::new(Via::Unix, &dir, "p.sock");
    let _o = start(
        &dir,
        &format!(
            r#"
[orchd]
error_prefix = "!! "

[pool.cat]
command = ["cat"]
count = 1

[[route]]
from = "{from}"
match = "^ok"
to = "cat"
"#,
            from = addr.from()
        ),
    );
    let mut c = addr.connect();
    assert_eq!(c.request("nope"), "!! no route");
    assert_eq!(c.request("ok"), "ok");
}

// ----- memory bound with big messages ----------------------------------------------

/// Write up to `lines` lines of 1 MiB to `w` from a thread while watching orchd's RSS.
/// Stops at the first of: RSS over `limit_kib`, the writer stuck for a second (orchd
/// stopped reading), or everything written. Returns (max RSS KiB, lines written, done).
fn flood_with_big_lines(
    pid: u32,
    mut w: UnixStream,
    lines: u64,
    limit_kib: u64,
) -> (u64, u64, bool) {
    let written = Arc::new(AtomicU64::new(0));
    {
        let written = written.clone();
        std::thread::spawn(move || {
            let line = [vec![b'x'; 1 << 20], vec![b'\n']].concat();
            for _ in 0..lines {
                if w.write_all(&line).is_err() {
                    return; // orchd is gone (end of test)
                }
                written.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let mut max_rss = 0;
    let mut last = (0, Instant::now());
    let start = Instant::now();
    loop {
        max_rss = max_rss.max(vm_rss_kib(pid));
        let n = written.load(Ordering::SeqCst);
        if max_rss > limit_kib || n == lines {
            return (max_rss, n, n == lines);
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            return (max_rss, n, false);
        }
        assert!(start.elapsed() < 3 * DEADLINE, "flooding took too long");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn memory_stays_bounded_when_big_lines_wait_for_a_stuck_pool() {
    const LIMIT_KIB: u64 = 200 * 1024;
    let dir = TempDir::new("bigqueue");
    let addr = Addr::new(Via::Unix, &dir, "q.sock");
    // The worker never reads its stdin: every message waits in orchd.
    let o = start(
        &dir,
        &format!(
            r#"
[pool.stuck]
command = ["sleep", "1000"]
count = 1

[[route]]
from = "{from}"
to = "stuck"
"#,
            from = addr.from()
        ),
    );
    let c = unix_client(&addr);
    let (max_rss, sent, done) = flood_with_big_lines(o.pid(), c.writer, 400, LIMIT_KIB);
    assert!(
        max_rss < LIMIT_KIB && !done,
        "orchd took {sent} MiB of messages for a pool that reads nothing (RSS {max_rss} KiB)"
    );
}

#[test]
fn memory_stays_bounded_when_big_replies_wait_behind_a_stuck_ordered_reply() {
    const LIMIT_KIB: u64 = 200 * 1024;
    let dir = TempDir::new("bigreorder");
    let addr = Addr::new(Via::Unix, &dir, "r.sock");
    // Instance 0 never answers (the first message is stuck there for good); instance 1
    // echoes everything else, whose replies must wait behind the stuck one.
    let cmd = script(
        &dir,
        "split.sh",
        r#"if [ "$ORCHD_INSTANCE" = 0 ]; then exec sleep 1000; else exec cat; fi"#,
    );
    let o = start(
        &dir,
        &format!(
            r#"
[pool.split]
command = {cmd}
count = 2
max_inflight = 4

[[route]]
from = "{from}"
to = "split"
strategy = "round-robin"
"#,
            from = addr.from()
        ),
    );
    let mut c = unix_client(&addr);
    c.send("first");
    // Keep reading, so that replies pile up in orchd only because of ordering.
    let mut reader = c.reader;
    std::thread::spawn(move || {
        let mut sink = [0u8; 1 << 16];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let (max_rss, sent, done) = flood_with_big_lines(o.pid(), c.writer, 400, LIMIT_KIB);
    assert!(
        max_rss < LIMIT_KIB && !done,
        "orchd held replies to {sent} MiB of messages behind one stuck reply (RSS {max_rss} KiB)"
    );
}

#[test]
fn pipelined_messages_time_out_per_message_not_from_when_they_were_written() {
    // 0.2 s per message, 1 s timeout, 20 messages written at once: the last one is
    // written at t=0 but reached at t=3.8 s. Its clock starts when the worker reaches it.
    let dir = TempDir::new("rt-pipeline");
    let o = start(
        &dir,
        r#"
[pool.slow]
command = "while read -r l; do sleep 0.2; echo \"done $l\"; done"
max_inflight = 32

[[route]]
from = "unix:s.sock"
to = "slow"
timeout = "1s"
retries = 0
"#,
    );
    let mut c = Client::connect(&dir.join("s.sock"));
    for i in 0..20 {
        c.send(&format!("m{i}"));
    }
    for i in 0..20 {
        assert_eq!(c.recv(), format!("done m{i}"));
    }
    assert_eq!(o.log_count("did not answer"), 0, "{}", o.log());
}

#[test]
fn messages_queued_behind_a_poison_message_keep_their_retries() {
    // The worker dies on "poison". The messages written behind it were never worked
    // on: they are delivered again without using an attempt, so even with
    // retries = 0 only the poison message fails.
    let dir = TempDir::new("rt-poison");
    let o = start(
        &dir,
        r#"
[pool.w]
command = "while read -r l; do sleep 0.05; [ \"$l\" = poison ] && kill -9 $$; echo \"ok $l\"; done"
backoff = { initial = "0s" }
max_inflight = 8                # all four written at once (the adaptive default starts at 2)

[[route]]
from = "unix:s.sock"
to = "w"
retries = 0
"#,
    );
    let mut c = Client::connect(&dir.join("s.sock"));
    for m in ["poison", "a", "b", "c"] {
        c.send(m);
    }
    assert_eq!(c.recv(), "ERR retries exhausted (worker died)");
    for m in ["a", "b", "c"] {
        assert_eq!(c.recv(), format!("ok {m}"));
    }
    assert!(
        o.log().contains("delivering 3 unanswered message(s) again"),
        "{}",
        o.log()
    );
}

#[test]
fn sigterm_during_a_batch_run_stops_workers_gracefully() {
    // A signal during a batch run is one signal: the drain ends the batch, and the
    // workers get their stop_signal, not an immediate SIGKILL.
    let dir = TempDir::new("batchterm");
    let cfg = dir.write(
        "batch.toml",
        "[pool.cat]\ncommand = [\"cat\"]\n[[route]]\nfrom = \"stdin\"\nto = \"cat\"\n",
    );
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--no-watch")
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut o = Orchd::spawn(cmd, &cfg);
    let _stdin = o.child.stdin.take();
    o.wait_ready();
    o.signal(libc::SIGTERM);
    assert_eq!(o.wait_exit(DEADLINE), 0);
    assert!(
        o.log().contains("cat[0] stopped (signal TERM)"),
        "{}",
        o.log()
    );
    assert!(!o.log().contains("second signal"), "{}", o.log());
}
