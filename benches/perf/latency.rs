//! Round-trip latency of one message at a time over TCP: orchd with a pool of one
//! `cat`, against `socat TCP-LISTEN:PORT,reuseaddr EXEC:cat` (a relay doing the same
//! job: socket in, a `cat` child, socket out).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{connect, free_port, Bench, Orchd, Result};

/// Sorted round-trip times.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// The `q` quantile (0.5, 0.99, 0.999), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }
}

/// Warm-up round trips, not counted.
const WARM_UP: usize = 200;

/// `samples` sequential round trips of one 64-byte line each.
fn round_trips(stream: TcpStream, samples: usize) -> Result<Latencies> {
    let mut w = stream
        .try_clone()
        .map_err(|e| format!("clone socket: {e}"))?;
    let mut r = BufReader::new(stream);
    let msg = format!("{}\n", "x".repeat(63));
    let mut reply = Vec::with_capacity(128);
    let mut times = Vec::with_capacity(samples);
    for i in 0..WARM_UP + samples {
        let t = Instant::now();
        w.write_all(msg.as_bytes())
            .map_err(|e| format!("latency write: {e}"))?;
        reply.clear();
        match r.read_until(b'\n', &mut reply) {
            Ok(n) if n == msg.len() => {}
            Ok(n) => {
                return Err(format!(
                    "latency: reply of {n} bytes, expected {}",
                    msg.len()
                ))
            }
            Err(e) => return Err(format!("latency read: {e}")),
        }
        if i >= WARM_UP {
            times.push(t.elapsed());
        }
    }
    times.sort_unstable();
    Ok(Latencies(times))
}

pub fn orchd(bench: &Bench, samples: usize) -> Result<Latencies> {
    let port = free_port()?;
    let cfg = bench.config(
        "latency",
        &format!(
            "[orchd]\nwatch = false\n\n[pool.cat]\ncommand = [\"cat\"]\ncount = 1\n\n\
             [[route]]\nfrom = \"tcp://127.0.0.1:{port}\"\nto = \"cat\"\n"
        ),
    )?;
    let orchd = Orchd::start(&cfg)?;
    orchd.wait_ready(Duration::from_secs(10))?;
    let lat = round_trips(connect(port, Duration::from_secs(10))?, samples)?;
    orchd.stop()?;
    Ok(lat)
}

/// socat serves one connection and exits: the first successful connect is the
/// measured one.
pub fn socat(samples: usize) -> Result<Latencies> {
    ensure_socat()?;
    let port = free_port()?;
    let mut child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},reuseaddr"))
        .arg("EXEC:cat")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn socat: {e}"))?;
    let lat = connect(port, Duration::from_secs(10)).and_then(|s| round_trips(s, samples));
    let _ = child.kill();
    let _ = child.wait();
    lat
}

/// socat, installed with `apt-get install -y socat` when missing and we may.
fn ensure_socat() -> Result<()> {
    let present = || {
        Command::new("socat")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if present() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let sudo = !root
        && Command::new("sudo")
            .args(["-n", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !root && !sudo {
        return Err("socat is not installed and this user cannot install it \
                    (`apt-get install socat` as root)"
            .into());
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new(if root { "apt-get" } else { "sudo" });
        if !root {
            c.args(["-n", "apt-get"]);
        }
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("installing socat (apt-get install -y socat) for the latency reference");
    if !apt(&["install", "-y", "socat"]) {
        // A fresh container has no package lists yet.
        apt(&["update"]);
        apt(&["install", "-y", "socat"]);
    }
    if present() {
        Ok(())
    } else {
        Err("socat is not installed and `apt-get install -y socat` failed".into())
    }
}
