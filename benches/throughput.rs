//! Throughput benchmark: `cargo bench` (or `cargo bench -- --lines 200000` for a
//! quicker run).
//!
//! Pushes N 64-byte lines through 4 `cat` workers and prints messages/s for
//! - a raw pipe through `cat` (the ceiling: no framing, no routing),
//! - the Node.js `child_process.fork()` + `send()` round-robin pattern with 4 workers
//!   (what orchd replaces), if `node` is installed,
//! - orchd in batch mode (`from = "stdin"`) and over TCP,
//!
//! all measured in the same run, with ratios against the references.
//!
//! `cargo bench --profile profiling` runs it on a binary with debug info, so that
//! `perf record --call-graph dwarf -p PID` on the orchd it starts shows where the time
//! goes (the release profile has none).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orchd");

fn main() {
    let mut lines: usize = 1_000_000;
    let mut max_inflight: u32 = 32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--lines" => lines = args.next().and_then(|v| v.parse().ok()).expect("--lines N"),
            "--max-inflight" => {
                max_inflight = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--max-inflight N")
            }
            _ => {} // cargo passes --bench
        }
    }
    let dir = std::env::temp_dir().join(format!("orchd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("input.txt");
    write_input(&input, lines);
    println!("{lines} lines of 64 bytes, 4 cat workers, max_inflight = {max_inflight}\n");

    let raw = bench_raw_cat(&input, lines);
    report("raw pipe through cat", raw, lines, None);
    let node = bench_node(&dir, lines);
    if let Some(t) = node {
        report("node fork()/send(), 4 workers", t, lines, Some(raw));
    } else {
        println!(
            "{:<34} skipped (node not found)",
            "node fork()/send(), 4 workers"
        );
    }
    let batch = bench_batch(&dir, &input, lines, max_inflight);
    report("orchd batch (stdin → stdout)", batch, lines, Some(raw));
    let tcp = bench_tcp(&dir, &input, lines, max_inflight);
    report("orchd tcp", tcp, lines, Some(raw));
    if let Some(n) = node {
        println!();
        println!(
            "orchd batch vs node: {:.2}x faster",
            n.as_secs_f64() / batch.as_secs_f64()
        );
        println!(
            "orchd tcp   vs node: {:.2}x faster",
            n.as_secs_f64() / tcp.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn report(name: &str, t: Duration, lines: usize, reference: Option<Duration>) {
    let rate = lines as f64 / t.as_secs_f64();
    match reference {
        Some(r) => println!(
            "{name:<34} {:>8.3} s {:>12.0} msg/s   {:.3}x of raw cat",
            t.as_secs_f64(),
            rate,
            r.as_secs_f64() / t.as_secs_f64()
        ),
        None => println!("{name:<34} {:>8.3} s {:>12.0} msg/s", t.as_secs_f64(), rate),
    }
}

fn write_input(path: &Path, lines: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..lines {
        // 63 bytes + '\n'
        writeln!(f, "{:0>10} {}", i, "x".repeat(52)).unwrap();
    }
    f.flush().unwrap();
}

fn count_lines(mut r: impl Read) -> usize {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return n,
            Ok(k) => n += buf[..k].iter().filter(|&&b| b == b'\n').count(),
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn bench_raw_cat(input: &Path, lines: usize) -> Duration {
    let t = Instant::now();
    let mut c = Command::new("cat")
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let n = count_lines(c.stdout.take().unwrap());
    c.wait().unwrap();
    assert_eq!(n, lines);
    t.elapsed()
}

fn bench_node(dir: &Path, lines: usize) -> Option<Duration> {
    Command::new("node").arg("--version").output().ok()?;
    let worker = dir.join("worker.js");
    std::fs::write(&worker, "process.on('message', (m) => process.send(m));\n").unwrap();
    let parent = dir.join("parent.js");
    std::fs::write(
        &parent,
        format!(
            r#"
const {{ fork }} = require('child_process');
const fs = require('fs');
const readline = require('readline');
const workers = [0, 1, 2, 3].map(() => fork({worker:?}));
let answered = 0, sent = 0, i = 0;
const total = {lines};
for (const w of workers) w.on('message', () => {{ if (++answered === total) {{ workers.forEach(x => x.kill()); }} }});
const rl = readline.createInterface({{ input: fs.createReadStream({input:?}) }});
rl.on('line', (line) => {{ workers[i++ % 4].send(line); sent++; }});
"#,
            worker = worker.to_str().unwrap(),
            input = dir.join("input.txt").to_str().unwrap(),
        ),
    )
    .unwrap();
    let t = Instant::now();
    let st = Command::new("node").arg(&parent).status().ok()?;
    st.success().then(|| t.elapsed())
}

fn config(dir: &Path, from: &str, max_inflight: u32) -> PathBuf {
    let p = dir.join(format!("bench-{}.toml", from.len()));
    std::fs::write(
        &p,
        format!(
            "[orchd]\nlog_level = \"warn\"\nwatch = false\n\n[pool.cat]\ncommand = [\"cat\"]\ncount = 4\nmax_inflight = {max_inflight}\n\n[[route]]\nfrom = \"{from}\"\nto = \"cat\"\n"
        ),
    )
    .unwrap();
    p
}

fn bench_batch(dir: &Path, input: &Path, lines: usize, max_inflight: u32) -> Duration {
    let cfg = config(dir, "stdin", max_inflight);
    let t = Instant::now();
    let mut c = Command::new(BIN)
        .arg(&cfg)
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let n = count_lines(c.stdout.take().unwrap());
    let st = c.wait().unwrap();
    let elapsed = t.elapsed();
    assert!(st.success(), "orchd batch failed: {st:?}");
    assert_eq!(n, lines, "every line answered");
    elapsed
}

fn bench_tcp(dir: &Path, input: &Path, lines: usize, max_inflight: u32) -> Duration {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(dir, &format!("tcp://127.0.0.1:{port}"), max_inflight);
    let mut orchd = Command::new(BIN)
        .arg(&cfg)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connect: {e}"),
        }
    };
    // Let the workers start before the clock runs.
    std::thread::sleep(Duration::from_millis(200));
    let data = std::fs::read(input).unwrap();
    let t = Instant::now();
    let mut w = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut r = BufReader::with_capacity(1 << 16, stream);
    let mut n = 0;
    let mut buf = Vec::new();
    while n < lines {
        buf.clear();
        if r.read_until(b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        n += 1;
    }
    let elapsed = t.elapsed();
    writer.join().unwrap();
    assert_eq!(n, lines, "every line answered");
    // SAFETY: plain kill(2) on our child.
    unsafe {
        libc::kill(orchd.id() as i32, libc::SIGTERM);
    }
    let _ = orchd.wait();
    elapsed
}
