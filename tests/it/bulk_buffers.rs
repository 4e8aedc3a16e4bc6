//! Buffers of bulk traffic (issue 8): client and worker stdin output buffers, and a
//! bulk client's read buffer, are kept between loop turns while traffic flows and
//! given back a moment after it stops, by one timer that is not re-armed once
//! nothing holds memory: after a burst, orchd is idle again.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::*;

/// Lines of the burst (64 bytes each: 12.8 MB).
const LINES: usize = 200_000;

/// orchd with a pool of two `cat`s behind a unix socket, and a client that got
/// one answer.
fn cats(dir: &TempDir) -> (Orchd, Client, u32) {
    let sock = dir.join("s.sock");
    let cfg = dir.write(
        "orchd.toml",
        &format!(
            r#"
[pool.work]
command = ["cat"]
count = 2
stop_timeout = "2s"

[[route]]
from = "unix:{}"
to = "work"
"#,
            sock.display()
        ),
    );
    let o = Orchd::start(&cfg);
    o.wait_ready();
    let pid = o.pid();
    let mut c = Client::connect(&sock);
    assert_eq!(c.request("warm"), "warm");
    (o, c, pid)
}

/// The burst: LINES lines of 64 bytes.
fn burst() -> Vec<u8> {
    let mut data = Vec::with_capacity(LINES * 64);
    for i in 0..LINES {
        data.extend_from_slice(format!("{i:0>10} {}\n", "x".repeat(52)).as_bytes());
    }
    data
}

#[test]
fn after_a_bulk_burst_orchd_goes_idle_and_gives_its_buffers_back() {
    let dir = TempDir::new("bulk-trim");
    let (mut o, mut c, pid) = cats(&dir);
    std::thread::sleep(Duration::from_millis(300));
    let before = vm_rss_kib(pid);

    // The burst, written from a thread while this one reads the replies; the
    // connection stays open afterwards.
    let mut writer = c.writer.try_clone().unwrap();
    let feeder = std::thread::spawn(move || writer.write_all(&burst()).unwrap());
    let mut reader: UnixStream = c.writer.try_clone().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < LINES {
        let n = reader.read(&mut buf).expect("read replies");
        assert!(n > 0, "closed after {got} of {LINES} replies");
        got += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    feeder.join().unwrap();

    // A moment after the burst, the buffers are given back (the timer fires after
    // 100 ms) and nothing wakes orchd any more.
    std::thread::sleep(Duration::from_millis(500));
    let c0 = ctx_switches(pid);
    std::thread::sleep(Duration::from_secs(1));
    let c1 = ctx_switches(pid);
    eprintln!(
        "bulk burst of {LINES} lines: RSS before {before} KiB, after {} KiB; {} context \
         switches in 1 s after it",
        vm_rss_kib(pid),
        c1 - c0
    );
    // A buffer never given back would keep the trim timer (every 100 ms) going.
    assert!(c1 - c0 <= 2, "{} context switches in 1 s idle", c1 - c0);
    // Still serving.
    assert_eq!(c.request("again"), "again");
    drop(c);
    assert_eq!(o.stop(), 0);
}

/// A client that stops reading its replies keeps its output buffer full: orchd must
/// not poll that buffer (the trim timer lets go of buffers in use; the flush that
/// empties one notes it again), so it sleeps until something happens.
#[test]
fn a_client_that_stops_reading_costs_orchd_no_wake_ups() {
    let dir = TempDir::new("stuck-reader");
    let (mut o, c, pid) = cats(&dir);
    let mut writer = c.writer.try_clone().unwrap();
    writer.set_nonblocking(true).unwrap();
    let data = burst();
    // Write what orchd takes until it stops taking (its budgets for this client
    // are used up), never reading a reply.
    let (mut off, mut stalled_since) = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(20);
    while off < data.len() && stalled_since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "orchd kept reading for 20 s");
        match writer.write(&data[off..]) {
            Ok(n) if n > 0 => {
                off += n;
                stalled_since = Instant::now();
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(
        off < data.len(),
        "orchd took everything though no reply was read"
    );
    // Past the trim delay (100 ms) and any last flushes: orchd sleeps.
    std::thread::sleep(Duration::from_millis(500));
    let before = ctx_switches(pid);
    std::thread::sleep(Duration::from_secs(2));
    let woke = ctx_switches(pid) - before;
    assert!(
        woke <= 2,
        "{woke} context switches in 2 s with a stuck reader"
    );
    drop(writer);
    drop(c);
    assert_eq!(o.stop(), 0);
}
