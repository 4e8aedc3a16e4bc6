//! Unit tests of runs (issue 8): consecutive lines of one client for one instance
//! kept as one entry, in flight and queued, with per-message semantics intact.

use super::*;

impl H {
    fn lines(&mut self, c: usize, chunk: &str) -> usize {
        let n = self
            .l
            .client_lines(c, chunk.as_bytes(), self.now, &mut self.out);
        self.collect();
        n
    }

    /// `k`'s worker answers everything written to it so far in one read, each
    /// line as `<message>!`.
    fn echo_all(&mut self, k: usize) {
        let got = String::from_utf8(std::mem::take(self.workers.entry(k).or_default())).unwrap();
        let replies: String = got.lines().map(|l| format!("{l}!\n")).collect();
        self.l
            .worker_output(k, replies.as_bytes(), self.now, &mut self.out);
        self.collect();
    }

    fn entries(&self) -> usize {
        self.l.msgs.len()
    }
}

fn text(lines: std::ops::Range<usize>, suffix: &str) -> String {
    lines.map(|i| format!("m{i}{suffix}\n")).collect()
}

#[test]
fn a_chunk_is_one_entry_per_run_and_its_replies_reach_the_client_in_one_piece() {
    let mut h = H::new(2, 100, 1000, rule(Strategy::RoundRobin));
    h.lines(1, &text(0..8, ""));
    assert_eq!(h.worker(0), text(0..4, ""));
    assert_eq!(h.worker(1), text(4..8, ""));
    assert_eq!(h.entries(), 2, "one entry per run");
    assert_eq!(h.l.message_count(), 8);
    assert_eq!(h.l.instance_counts(0), (4, 0));
    assert_eq!(h.l.client_outstanding(1), 8);
    // The second run answers first: held as one span until the first is answered.
    h.echo_all(1);
    assert_eq!(h.client(1), "");
    assert_eq!(h.l.client_outstanding(1), 4);
    h.echo_all(0);
    assert_eq!(h.client(1), text(0..8, "!"));
    assert!(h.l.is_idle());
    assert_eq!(h.l.instance_counts(0), (0, 4));
    assert_eq!(h.l.pool_bytes(POOL), 0);
}

#[test]
fn a_run_answered_in_parts_keeps_order_and_its_deadline_moves_with_its_head() {
    let mut h = H::new(1, 100, 1000, rule(Strategy::RoundRobin));
    h.lines(1, &text(0..5, ""));
    assert_eq!(h.entries(), 1);
    h.advance(Duration::from_secs(4));
    h.l.worker_output(0, b"m0!\nm1!\n", h.now, &mut h.out);
    h.collect();
    h.reply(0, "m2!");
    assert_eq!(h.client(1), text(0..3, "!"));
    assert_eq!(h.l.instance_counts(0), (2, 3));
    // The head's clock restarted with the last reply: 4 s later nothing is due.
    h.advance(Duration::from_secs(4));
    assert!(h.restarts.is_empty(), "the run's head got its own 5 s");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.restarts, vec![0], "m3 took longer than 5 s");
}

#[test]
fn a_dead_worker_gives_back_exactly_the_unanswered_lines_of_its_runs() {
    let mut h = H::new(2, 100, 1000, rule(Strategy::RoundRobin));
    h.lines(1, &text(0..6, ""));
    assert_eq!(h.worker(0), text(0..3, ""));
    h.l.worker_output(0, b"m0!\n", h.now, &mut h.out);
    h.collect();
    h.down(0, false, true);
    // m1 and m2 go to the other instance, in order, behind what it has.
    assert_eq!(h.worker(1), format!("{}m1\nm2\n", text(3..6, "")));
    assert_eq!(h.l.message_count(), 5);
    // Only m1, the one the dead worker was working on, was charged an attempt.
    let charged: Vec<u32> = h.l.msgs.iter().map(|(_, m)| m.failures).collect();
    assert_eq!(charged.iter().sum::<u32>(), 1, "{charged:?}");
    h.echo(1);
    assert_eq!(h.client(1), text(0..6, "!"));
    assert!(h.l.is_idle());
}

#[test]
fn queued_lines_form_runs_handed_out_up_to_each_instances_room() {
    let mut h = H::new(2, 3, 1000, rule(Strategy::RoundRobin));
    h.lines(1, &text(0..6, ""));
    // Both instances full: the next chunk queues as one run.
    h.lines(1, &text(6..16, ""));
    assert_eq!(h.l.pool_waiting(POOL), 10);
    assert_eq!(h.entries(), 3, "two in flight, one queued");
    let retained = h.l.pool_bytes(POOL);
    h.echo_all(0);
    // Instance 0 took 3 of the queued run (its room); 7 wait, still one entry.
    assert_eq!(h.worker(0), text(6..9, ""));
    assert_eq!(h.l.pool_waiting(POOL), 7);
    assert!(
        h.l.pool_bytes(POOL) >= retained - 3 * 3,
        "the queued run's buffer counts whole while it lives"
    );
    for _ in 0..4 {
        h.echo_all(1);
        h.echo_all(0);
    }
    assert_eq!(h.client(1), text(0..16, "!"));
    assert!(h.l.is_idle());
    assert_eq!(h.l.pool_bytes(POOL), 0);
}

#[test]
fn single_lines_and_probes_are_never_joined() {
    let mut h = H::new(2, 100, 1000, rule(Strategy::RoundRobin));
    for i in 0..4 {
        h.send(1, &format!("m{i}"));
    }
    assert_eq!(
        h.entries(),
        4,
        "lines one at a time are messages of their own"
    );
    // A probe behind a run: the next chunk's lines do not join the run ahead of it.
    let mut h = H::new(1, 100, 1000, rule(Strategy::RoundRobin));
    h.lines(1, &text(0..3, ""));
    assert!(h.l.probe_send(0, b"PING\n", h.now, &mut h.out));
    h.collect();
    h.lines(1, &text(3..6, ""));
    assert_eq!(
        h.worker(0),
        format!("{}PING\n{}", text(0..3, ""), text(3..6, ""))
    );
    assert_eq!(
        h.entries(),
        2,
        "the second chunk is a run of its own, after the probe"
    );
    h.l.worker_output(
        0,
        b"m0!\nm1!\nm2!\nPONG\nm3!\nm4!\nm5!\n",
        h.now,
        &mut h.out,
    );
    h.collect();
    assert_eq!(h.client(1), text(0..6, "!"), "the probe's reply is orchd's");
}

#[test]
fn shutdown_answers_every_line_of_a_run() {
    let mut h = H::new(1, 100, 1000, rule(Strategy::RoundRobin));
    h.lines(1, &text(0..4, ""));
    h.l.worker_output(0, b"m0!\n", h.now, &mut h.out);
    h.collect();
    h.l.fail_all("shutting down", &mut h.out);
    h.collect();
    let want = format!("m0!\n{}", "ERR shutting down\n".repeat(3));
    assert_eq!(h.client(1), want);
    assert!(h.l.is_idle());
}

#[test]
fn a_read_joins_whole_lines_up_to_the_run_cap_and_crlf_lines_go_one_by_one() {
    let mut h = H::new(1, 4, 100_000, rule(Strategy::RoundRobin));
    h.lines(1, &text(0..4, ""));
    // 5,000 lines of 21 bytes queue behind the full instance: about 105 KB, so
    // more than one run (a run stops growing at RUN_MAX_BYTES); one ends in \r\n.
    let mut read: String = (4..5004).map(|i| format!("m{i:0>19}\n")).collect();
    read.insert(21 * 10 + 20, '\r');
    h.lines(1, &read);
    assert_eq!(h.l.pool_waiting(POOL), 5000);
    let queued: Vec<usize> = h.l.pools[POOL]
        .queue
        .iter()
        .map(|&m| h.l.msgs[m].payload.len())
        .collect();
    assert!(queued.len() >= 2, "{queued:?}");
    assert!(
        queued
            .iter()
            .all(|&b| b <= super::super::runs::RUN_MAX_BYTES + 21),
        "a run stops growing once it holds RUN_MAX_BYTES: {queued:?}"
    );
    let mut rounds = 0;
    while !h.l.is_idle() {
        h.echo_all(0);
        rounds += 1;
        assert!(rounds < 2000, "does not drain");
    }
    let want: String = text(0..4, "!")
        + &(4..5004)
            .map(|i| format!("m{i:0>19}!\n"))
            .collect::<String>();
    assert_eq!(h.client(1), want, "every line, in order, \\r stripped");
    assert_eq!(h.l.pool_bytes(POOL), 0);
}

#[test]
fn the_pool_budget_counts_the_memory_runs_hold() {
    // Reads that each start a small run (a \r\n line stops the block path, so the
    // next line joins one by one), behind a busy instance: every run's buffer is in
    // the pool's bytes, and its allocation is at most twice that, so
    // `pool_max_bytes` bounds the memory however the runs grow.
    let mut h = H::new(1, 1, 10_000, rule(Strategy::RoundRobin));
    h.lines(1, "busy\n");
    for r in 0..2000 {
        h.advance(Duration::from_millis(1));
        h.lines(1, &format!("a{r}\nb\r\n{}\n", "y".repeat(100)));
    }
    let held: usize = h.l.msgs.iter().map(|(_, m)| m.payload.retained()).sum();
    let capacity: usize =
        h.l.msgs
            .iter()
            .map(|(_, m)| match &m.payload {
                super::payload::Payload::Run { buf, .. } => buf.capacity(),
                p => p.len(),
            })
            .sum();
    assert_eq!(h.l.pool_bytes(POOL), held);
    assert!(
        capacity <= 2 * held,
        "allocated {capacity} bytes for {held} counted"
    );
}
