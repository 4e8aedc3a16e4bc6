//! orchd's performance against references, all measured in one run:
//! `cargo bench` (1,000,000 lines), `cargo bench -- --quick` (a smoke run).
//!
//! Options after `--`: `--quick`, `--lines N`, `--runs N` (runs per throughput and
//! start-up row, the median is shown; default 3), `--max-inflight N|auto` (written into the pool;
//! absent = the default pool settings, which is what the targets are about),
//! `--only GROUP,…` (run only these groups of rows: `batch`, `tcp`, `balance`,
//! `latency`, `procs`; the `cat | cat` reference runs with `batch` and `tcp`).
//!
//! Throughput rows also show orchd's CPU time per million lines (user + system, from
//! /proc): on a shared machine it varies less than the rates.
//!
//! It prints one Markdown table: each orchd figure, its reference, the ratio, and the
//! target of issue 8 item 3 with whether it is met. Rows whose reference cannot run
//! here (no `node`, no `socat` and no way to install it, no `cc`) say so.
//!
//! `cargo bench --profile profiling` runs it on a binary with debug info, so that
//! `perf record --call-graph dwarf -p PID` on the orchd it starts shows where the time
//! goes (the release profile has none).

mod harness;
mod latency;
mod procs;
mod table;
mod throughput;

use std::time::Duration;

use harness::{Bench, Result};
use table::{Better, Figure, Table};

struct Options {
    lines: usize,
    runs: usize,
    max_inflight: Option<String>,
    latency_samples: usize,
    restart_samples: usize,
    instances: usize,
    idle: Duration,
    /// `--only`: the groups of rows to run (empty: all).
    only: Vec<String>,
}

/// The groups of rows `--only` can name.
const GROUPS: [&str; 5] = ["batch", "tcp", "balance", "latency", "procs"];

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            lines: 1_000_000,
            runs: 3,
            max_inflight: None,
            latency_samples: 20_000,
            restart_samples: 50,
            instances: 1000,
            idle: Duration::from_secs(3),
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .unwrap_or_else(|| usage(&format!("{name} needs a value")))
            };
            let number = |name: &str, v: String| -> usize {
                v.parse()
                    .unwrap_or_else(|_| usage(&format!("{name}: not a number: {v}")))
            };
            match a.as_str() {
                "--quick" => {
                    o.lines = 100_000;
                    o.runs = 1;
                    o.latency_samples = 2_000;
                    o.restart_samples = 10;
                    o.idle = Duration::from_secs(1);
                }
                "--lines" => o.lines = number("--lines", value("--lines")).max(1),
                "--runs" => o.runs = number("--runs", value("--runs")).max(1),
                "--max-inflight" => o.max_inflight = Some(value("--max-inflight")),
                "--only" => {
                    for g in value("--only").split(',') {
                        if !GROUPS.contains(&g) {
                            usage(&format!("--only: unknown group {g}"));
                        }
                        o.only.push(g.to_string());
                    }
                }
                "--bench" => {} // cargo passes it
                other => usage(&format!("unknown option {other}")),
            }
        }
        o
    }

    /// Whether the rows of `group` run.
    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: cargo bench -- [--quick] [--lines N] [--runs N] [--max-inflight N|auto] \
         [--only batch,tcp,balance,latency,procs]"
    );
    std::process::exit(2)
}

fn main() {
    let o = Options::parse();
    let bench = match Bench::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let mut t = Table::default();
    if o.runs("batch") || o.runs("tcp") {
        throughput_rows(&bench, &o, &mut t);
    }
    if o.runs("balance") {
        balance_rows(&bench, &o, &mut t);
    }
    if o.runs("latency") {
        latency_rows(&bench, &o, &mut t);
    }
    if o.runs("procs") {
        process_rows(&bench, &o, &mut t);
    }
    let stamp = bench
        .stamp_worker
        .as_ref()
        .map_or("none", |&(_, linkage)| linkage);
    println!(
        "\n{} lines of 64 bytes; 4 `cat` workers, pool settings: {}; {} run(s) per \
         throughput and start-up row (median); stamp worker: {stamp} C; {} CPU(s)\n",
        o.lines,
        o.max_inflight
            .as_deref()
            .map_or("defaults".to_string(), |m| format!("max_inflight = {m}")),
        o.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if std::env::var_os("ORCHD_BENCH_BIN").is_some() {
        println!("orchd binary: {} (ORCHD_BENCH_BIN)\n", harness::orchd_bin());
    }
    t.print();
}

/// Median over `runs` runs; the first error ends it.
fn median<T: Ord>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut v = (0..runs).map(|_| f()).collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    Ok(v.swap_remove(v.len() / 2))
}

fn throughput_rows(bench: &Bench, o: &Options, t: &mut Table) {
    let data = harness::input_lines(o.lines);
    let input = bench.dir.join("input.txt");
    if let Err(e) = std::fs::write(&input, &data) {
        t.skip("throughput", &format!("cannot write the input: {e}"));
        return;
    }
    let rate = |d: Duration| Figure::rate(o.lines, d);
    // orchd's CPU time per million lines: steadier than rates on a shared machine.
    let cpu = |r: &Result<throughput::Run>| {
        r.as_ref()
            .map(|r| Figure::time(r.cpu.mul_f64(1e6 / o.lines as f64)))
            .map_err(Clone::clone)
    };
    let window = o.max_inflight.as_deref();
    let cat = median(o.runs, || throughput::cat_cat(&input, o.lines)).map(rate);
    let cat = t.reference("`cat | cat`", cat);
    if o.runs("batch") {
        let node = throughput::node(bench, &input, o.lines).map(|r| r.map(rate));
        let node = match node {
            Some(r) => t.reference("Node `fork()`/`send()`, 4 workers", r),
            None => {
                t.skip("Node `fork()`/`send()`", "`node` is not installed");
                None
            }
        };
        let cats = throughput::cats("stdin", window);
        let run = median(o.runs, || throughput::batch(bench, &input, o.lines, &cats));
        let batch = run.as_ref().map(|r| rate(r.time)).map_err(Clone::clone);
        t.compare("batch, 4 `cat`", &batch, &cat, Better::Higher, Some(0.40));
        t.compare("batch, 4 `cat`", &batch, &node, Better::Higher, Some(50.0));
        t.limit(
            "batch, 4 `cat`: orchd CPU per 1 M lines",
            &cpu(&run),
            None,
            "",
        );
        if node.is_some() {
            // Issue 11: the same worker file as the Node parent's, orchd as its parent.
            let nodes = throughput::node_pool(bench, "stdin", window);
            let batch = median(o.runs, || throughput::batch(bench, &input, o.lines, &nodes));
            let name = "batch, 4 Node workers (`protocol = \"node\"`)";
            let batch = batch.map(|r| rate(r.time));
            t.compare(name, &batch, &node, Better::Higher, Some(1.0));
        }
    }
    if !o.runs("tcp") {
        return;
    }
    // The load generator's ceiling first: the TCP rows are also shown against it.
    let echo = median(o.runs, || throughput::echo_ceiling(&data, 8)).map(rate);
    let ceiling = "load generator ceiling: echo server, 8 clients";
    t.compare(ceiling, &echo, &cat, Better::Higher, None);
    let echo = t.reference(ceiling, echo);
    for clients in [1, 8] {
        let name = format!(
            "TCP, {clients} client{}",
            if clients == 1 { "" } else { "s" }
        );
        let run = median(o.runs, || throughput::tcp(bench, &data, clients, window));
        let tcp = run.as_ref().map(|r| rate(r.time)).map_err(Clone::clone);
        let target = (clients == 8).then_some(0.30);
        t.compare(&name, &tcp, &cat, Better::Higher, target);
        if clients == 8 {
            t.compare(&name, &tcp, &echo, Better::Higher, None);
        }
        t.limit(
            &format!("{name}: orchd CPU per 1 M lines"),
            &cpu(&run),
            None,
            "",
        );
    }
}

/// One fast and one slow worker: the total time of a batch against the fast worker
/// alone. The window decides how many messages wait in the slow one at the end;
/// this is the other side of the `max_inflight = "auto"` question of issue 8.
fn balance_rows(bench: &Bench, o: &Options, t: &mut Table) {
    let lines = (o.lines / 10).max(1);
    let input = bench.dir.join("input-balance.txt");
    if let Err(e) = std::fs::write(&input, harness::input_lines(lines)) {
        t.skip("balance", &format!("cannot write the input: {e}"));
        return;
    }
    let window = o.max_inflight.as_deref();
    let alone = throughput::pool("[\"cat\"]", 1, "stdin", window);
    let alone = median(o.runs, || throughput::batch(bench, &input, lines, &alone));
    let alone = t.reference("batch, 1 `cat` alone", alone.map(|r| Figure::time(r.time)));
    let mixed = throughput::fast_and_slow(bench, window)
        .and_then(|cfg| median(o.runs, || throughput::batch(bench, &input, lines, &cfg)))
        .map(|r| r.time);
    t.compare(
        &format!(
            "batch of {lines}, 1 `cat` + 1 slow worker ({} ms a line), total time",
            f64::from(throughput::SLOW_US) / 1000.0
        ),
        &mixed.map(Figure::time),
        &alone,
        Better::Lower,
        None,
    );
}

fn latency_rows(bench: &Bench, o: &Options, t: &mut Table) {
    let orchd = latency::orchd(bench, o.latency_samples);
    // One note if socat cannot run, not one per quantile.
    let socat = latency::socat(o.latency_samples)
        .map_err(|e| t.skip("socat reference", &e))
        .ok();
    for (q, label, target) in [
        (0.5, "p50", Some(1.2)),
        (0.99, "p99", Some(1.5)),
        (0.999, "p99.9", None),
    ] {
        let us = |l: &latency::Latencies| Figure::time(l.quantile(q));
        let reference = socat
            .as_ref()
            .and_then(|s| t.reference(&format!("socat relay, round trip {label}"), Ok(us(s))));
        let ours = orchd.as_ref().map(us).map_err(Clone::clone);
        t.compare(
            &format!("round trip {label}, TCP, pool of one `cat`"),
            &ours,
            &reference,
            Better::Lower,
            target,
        );
    }
}

fn process_rows(bench: &Bench, o: &Options, t: &mut Table) {
    let worker = match &bench.stamp_worker {
        Ok((w, _)) => w.clone(),
        Err(e) => {
            t.skip("restart, start-up, RSS, idle", e);
            return;
        }
    };
    let med = |v: Vec<u64>| {
        let mut v = v;
        v.sort_unstable();
        Figure::time(Duration::from_nanos(v[v.len() / 2]))
    };
    let loop_ = procs::respawn_loop(bench, &worker, o.restart_samples).map(med);
    let loop_ = t.reference("respawn loop (kill, waitpid, fork+exec), median", loop_);
    let restart = procs::restart(bench, &worker, o.restart_samples).map(med);
    t.compare(
        &format!(
            "restart, SIGKILL to first instruction, median of {}",
            o.restart_samples
        ),
        &restart,
        &loop_,
        Better::Lower,
        Some(1.2),
    );

    // One start-up is a single sample, and a noisy one on a shared machine: the
    // median of `runs`, like the throughput rows.
    let n = o.instances;
    let forks = median(o.runs, || procs::fork_exec_loop(bench, &worker, n)).map(Figure::time);
    let forks = t.reference(&format!("fork+exec loop, {n} processes"), forks);
    let startup = (0..o.runs)
        .map(|_| procs::startup(bench, &worker, n))
        .collect::<Result<Vec<_>>>()
        .map(|mut v| {
            v.sort_unstable_by_key(|s| s.time);
            v.swap_remove(v.len() / 2)
        });
    let time = startup
        .as_ref()
        .map(|s| Figure::time(s.time))
        .map_err(Clone::clone);
    t.compare(
        &format!("start-up to {n} running"),
        &time,
        &forks,
        Better::Lower,
        Some(1.3),
    );

    let idle = procs::idle(bench, &worker, 20, o.idle);
    let rss20 = idle
        .as_ref()
        .map(|&(rss, _)| Figure::kib(rss))
        .map_err(Clone::clone);
    t.limit("RSS, 20 instances", &rss20, Some(8.0 * 1024.0), "< 8 MiB");
    let rss_n = startup.map(|s| Figure::kib(s.rss_kib));
    t.limit(&format!("RSS, {n} instances"), &rss_n, None, "");
    let ctx = idle.map(|(_, n)| Figure::count(n));
    t.limit(
        &format!(
            "context switches, idle {} s, 20 instances",
            o.idle.as_secs()
        ),
        &ctx,
        Some(0.0),
        "0",
    );
}
