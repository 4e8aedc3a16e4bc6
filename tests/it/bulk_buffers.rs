//! Buffers of bulk traffic (issue 8): client and worker stdin output buffers, and a
//! bulk client's read buffer, are kept between loop turns while traffic flows and
//! given back a moment after it stops, by one timer that is not re-armed once
//! nothing holds memory: after a burst, orchd is idle again.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::common::*;

/// Lines of the burst (64 bytes each: 12.8 MB).
const LINES: usize = 200_000;

#[test]
fn after_a_bulk_burst_orchd_goes_idle_and_gives_its_buffers_back() {
    let dir = TempDir::new("bulk-trim");
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
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let pid = o.pid();
    let mut c = Client::connect(&sock);
    assert_eq!(c.request("warm"), "warm");
    std::thread::sleep(Duration::from_millis(300));
    let before = vm_rss_kib(pid);

    // The burst, written from a thread while this one reads the replies; the
    // connection stays open afterwards.
    let mut writer = c.writer.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut data = Vec::with_capacity(LINES * 64);
        for i in 0..LINES {
            data.extend_from_slice(format!("{i:0>10} {}\n", "x".repeat(52)).as_bytes());
        }
        writer.write_all(&data).unwrap();
    });
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
