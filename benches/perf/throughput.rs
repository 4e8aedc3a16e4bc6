//! Throughput: the same lines through `cat | cat` (the reference), the Node.js
//! `fork()`/`send()` parent, orchd in batch mode (with `cat`s, and with the Node
//! parent's worker file under `protocol = "node"`) and orchd over TCP, plus the ceiling
//! of the TCP load generator against a plain echo server.
//!
//! The load generator is one thread and one `mio::Poll` driving every connection:
//! it writes its share of the lines until `WouldBlock` and counts reply newlines with
//! `memchr`, so eight clients cost it no more threads than one.

use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::harness::{build_c, connect, count_lines, free_port, Bench, Orchd, Result};

/// `cat FILE | cat`, lines counted from the second `cat`.
pub fn cat_cat(input: &Path, lines: usize) -> Result<Duration> {
    let file = std::fs::File::open(input).map_err(|e| format!("open input: {e}"))?;
    let t = Instant::now();
    let mut first = Command::new("cat")
        .stdin(file)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn cat: {e}"))?;
    let pipe = first.stdout.take().ok_or("no stdout pipe")?;
    let mut second = Command::new("cat")
        .stdin(pipe)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn cat: {e}"))?;
    let n = count_lines(second.stdout.take().ok_or("no stdout pipe")?)?;
    let _ = first.wait();
    let _ = second.wait();
    let elapsed = t.elapsed();
    check_count("cat | cat", n, lines)?;
    Ok(elapsed)
}

fn check_count(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got} of {want} lines came back"))
    }
}

/// The pattern of /work/shared/seeds (Node.js `fork()` workers fed round-robin with
/// `send()`), 4 workers; `None` when `node` is not installed.
pub fn node(bench: &Bench, input: &Path, lines: usize) -> Option<Result<Duration>> {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .ok()?;
    Some(node_run(bench, input, lines))
}

fn node_run(bench: &Bench, input: &Path, lines: usize) -> Result<Duration> {
    let worker = bench.dir.join("worker.js");
    let parent = bench.dir.join("parent.js");
    std::fs::write(&worker, "process.on('message', (m) => process.send(m));\n")
        .map_err(|e| format!("write worker.js: {e}"))?;
    let script = format!(
        r#"
const {{ fork }} = require('child_process');
const fs = require('fs');
const readline = require('readline');
const workers = [0, 1, 2, 3].map(() => fork({worker:?}));
const total = {lines};
let answered = 0, i = 0;
for (const w of workers) w.on('message', () => {{
  if (++answered === total) workers.forEach((x) => x.kill());
}});
const rl = readline.createInterface({{ input: fs.createReadStream({input:?}) }});
rl.on('line', (line) => workers[i++ % 4].send(line));
"#,
        worker = worker.display().to_string(),
        input = input.display().to_string(),
    );
    std::fs::write(&parent, script).map_err(|e| format!("write parent.js: {e}"))?;
    let t = Instant::now();
    let st = Command::new("node")
        .arg(&parent)
        .status()
        .map_err(|e| format!("run node: {e}"))?;
    let elapsed = t.elapsed();
    if !st.success() {
        return Err(format!("node parent failed: {st}"));
    }
    Ok(elapsed)
}

/// The Node reference's worker file (written by [`node`]) under orchd with
/// `protocol = "node"`: 4 instances, the same code as the seeds' `fork()` workers.
pub fn node_pool(bench: &Bench, from: &str, max_inflight: Option<&str>) -> String {
    let worker = bench.dir.join("worker.js");
    let command = format!("[\"node\", {:?}]", worker.display().to_string());
    pool(&command, 4, from, max_inflight).replacen(
        "[[route]]",
        "protocol = \"node\"\n\n[[route]]",
        1,
    )
}

/// A config routing `from` to `[pool.work]`: `command` (a TOML value) run `count`
/// times, with the default pool settings (`max_inflight` only when `--max-inflight`
/// asks for one).
pub fn pool(command: &str, count: usize, from: &str, max_inflight: Option<&str>) -> String {
    let window = max_inflight.map_or(String::new(), |m| {
        let value = if m.parse::<u32>().is_ok() {
            m.to_string()
        } else {
            format!("{m:?}")
        };
        format!("max_inflight = {value}\n")
    });
    format!(
        "[orchd]\nwatch = false\n\n[pool.work]\ncommand = {command}\ncount = {count}\n{window}\n\
         [[route]]\nfrom = \"{from}\"\nto = \"work\"\n"
    )
}

/// The pool of every throughput row: 4 `cat`s.
pub fn cats(from: &str, max_inflight: Option<&str>) -> String {
    pool("[\"cat\"]", 4, from, max_inflight)
}

/// A worker that answers each line after sleeping `argv[1]` microseconds.
const SLOW_ECHO_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    long us = argc > 1 ? atol(argv[1]) : 1000;
    struct timespec pause = { us / 1000000, (us % 1000000) * 1000 };
    static char line[(1 << 20) + 2];
    while (fgets(line, sizeof line, stdin)) {
        nanosleep(&pause, NULL);
        if (fputs(line, stdout) == EOF || fflush(stdout) == EOF) return 1;
    }
    return 0;
}
"#;

/// How long the slow worker of [`fast_and_slow`] takes per line.
pub const SLOW_US: u32 = 1000;

/// Two instances, `cat` and a worker taking [`SLOW_US`] per line: what a window
/// costs when one worker is slow (messages wait in its pipe instead of the queue
/// the fast one takes from).
pub fn fast_and_slow(bench: &Bench, max_inflight: Option<&str>) -> Result<String> {
    let (slow, _) = build_c(&bench.dir, "slow", SLOW_ECHO_C)?;
    let script = format!(
        "if [ \"$ORCHD_INSTANCE\" = 1 ]; then exec {} {SLOW_US}; else exec cat; fi",
        slow.display()
    );
    Ok(pool(&format!("{script:?}"), 2, "stdin", max_inflight))
}

/// One orchd run: the time the lines took, and the CPU time orchd spent meanwhile.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    pub time: Duration,
    pub cpu: Duration,
}

/// orchd in batch mode with the pool of `config` (routed from stdin):
/// `orchd pool.toml < input > pipe`, timed from spawn to exit, with all the CPU
/// time orchd used (read when its stdout closes, before it is waited for).
pub fn batch(bench: &Bench, input: &Path, lines: usize, config: &str) -> Result<Run> {
    let cfg = bench.config("batch", config)?;
    let file = std::fs::File::open(input).map_err(|e| format!("open input: {e}"))?;
    let t = Instant::now();
    let mut orchd = Orchd::start_with(&cfg, file.into(), Stdio::piped())?;
    let n = count_lines(orchd.stdout().ok_or("no stdout pipe")?)?;
    let cpu = orchd.cpu()?;
    let st = orchd.wait_exit(Duration::from_secs(120))?;
    let elapsed = t.elapsed();
    if !st.success() {
        return Err(format!("orchd batch run failed: {st}"));
    }
    check_count("orchd batch", n, lines)?;
    Ok(Run { time: elapsed, cpu })
}

/// orchd with a TCP route, `clients` connections sharing the lines; the clock runs
/// once the workers are started and every client is connected (the CPU time is
/// orchd's from the clients' connecting to the last reply).
pub fn tcp(bench: &Bench, data: &[u8], clients: usize, max_inflight: Option<&str>) -> Result<Run> {
    let port = free_port()?;
    let cfg = bench.config(
        &format!("tcp{clients}"),
        &cats(&format!("tcp://127.0.0.1:{port}"), max_inflight),
    )?;
    let orchd = Orchd::start(&cfg)?;
    orchd.wait_ready(Duration::from_secs(10))?;
    let before = orchd.cpu()?;
    let elapsed = drive(port, data, clients)?;
    let cpu = orchd.cpu()?.saturating_sub(before);
    orchd.stop()?;
    Ok(Run { time: elapsed, cpu })
}

/// The load generator against a plain echo server (a blocking thread per
/// connection): the most it can measure.
pub fn echo_ceiling(data: &[u8], clients: usize) -> Result<Duration> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind echo: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let server = std::thread::spawn(move || {
        let mut echoes = Vec::new();
        for _ in 0..clients {
            let Ok((mut s, _)) = listener.accept() else {
                break;
            };
            echoes.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }));
        }
        for e in echoes {
            let _ = e.join();
        }
    });
    let elapsed = drive(port, data, clients);
    let _ = server.join();
    elapsed
}

/// One client connection of the load generator.
struct Client<'a> {
    stream: TcpStream,
    data: &'a [u8],
    sent: usize,
    expect: usize,
    got: usize,
}

impl Client<'_> {
    /// Writes and reads until `WouldBlock` (edge-triggered readiness).
    fn pump(&mut self, buf: &mut [u8]) -> Result<()> {
        while self.sent < self.data.len() {
            let end = self.data.len().min(self.sent + (1 << 18));
            match self.stream.write(&self.data[self.sent..end]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("load generator write: {e}")),
            }
        }
        while self.got < self.expect {
            match self.stream.read(buf) {
                Ok(0) => {
                    return Err(format!(
                        "closed after {} of {} replies",
                        self.got, self.expect
                    ))
                }
                Ok(n) => self.got += memchr::memchr_iter(b'\n', &buf[..n]).count(),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("load generator read: {e}")),
            }
        }
        Ok(())
    }
}

/// Sends `data` (whole lines) over `clients` connections to 127.0.0.1:PORT, each its
/// own share, and waits for one reply line per line sent.
pub fn drive(port: u16, data: &[u8], clients: usize) -> Result<Duration> {
    let io = |e: std::io::Error| format!("load generator: {e}");
    let mut poll = Poll::new().map_err(io)?;
    let mut events = Events::with_capacity(64);
    let mut conns = Vec::with_capacity(clients);
    for (i, share) in shares(data, clients).into_iter().enumerate() {
        let s = connect(port, Duration::from_secs(10))?;
        s.set_nonblocking(true).map_err(io)?;
        let mut stream = TcpStream::from_std(s);
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(io)?;
        let expect = memchr::memchr_iter(b'\n', share).count();
        conns.push(Client {
            stream,
            data: share,
            sent: 0,
            expect,
            got: 0,
        });
    }
    let mut buf = vec![0u8; 1 << 16];
    let t = Instant::now();
    let mut busy = conns.iter().filter(|c| c.got < c.expect).count();
    while busy > 0 {
        match poll.poll(&mut events, Some(Duration::from_secs(10))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
        if events.is_empty() {
            let got: usize = conns.iter().map(|c| c.got).sum();
            return Err(format!("no progress for 10 s ({got} replies so far)"));
        }
        for ev in &events {
            let c = &mut conns[ev.token().0];
            if c.got < c.expect {
                c.pump(&mut buf)?;
                if c.got >= c.expect {
                    busy -= 1;
                }
            }
        }
    }
    Ok(t.elapsed())
}

/// `data` cut into `n` runs of whole lines of about equal size.
fn shares(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    for i in (1..=n).rev() {
        let target = rest.len() / i;
        let cut = if i == 1 {
            rest.len()
        } else {
            memchr::memchr(b'\n', &rest[target..]).map_or(rest.len(), |p| target + p + 1)
        };
        let (share, tail) = rest.split_at(cut);
        out.push(share);
        rest = tail;
    }
    out
}
