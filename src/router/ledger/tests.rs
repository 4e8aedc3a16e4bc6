//! Unit tests of the ledger: no processes, no sockets, time passed in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Pattern;

/// A ledger with a recorder for what it asks the shell to do.
struct H {
    l: Ledger,
    out: Actions,
    now: Instant,
    /// Bytes written to each instance, and to each client.
    workers: BTreeMap<usize, Vec<u8>>,
    clients: BTreeMap<usize, Vec<u8>>,
    timers: Vec<(Instant, Timer)>,
    restarts: Vec<usize>,
    drained: Vec<usize>,
    resumed: Vec<usize>,
}

const LISTENER: usize = 7;
const POOL: usize = 3;

fn rule(strategy: Strategy) -> Rule {
    Rule {
        listener: LISTENER,
        pool: POOL,
        matcher: None,
        strategy,
        key: None,
        timeout: Some(Duration::from_secs(5)),
        retries: 2,
        ordered: true,
    }
}

fn live() -> InstanceView {
    InstanceView {
        running: true,
        writable: true,
        has_input: true,
        leaving: false,
        coming_back: true,
    }
}

fn dead(coming_back: bool) -> InstanceView {
    InstanceView {
        coming_back,
        ..InstanceView::default()
    }
}

impl H {
    /// One pool of `n` live instances (keys 0..n), one rule, one client (key 1).
    fn new(n: usize, max_inflight: u32, queue: u32, rule: Rule) -> H {
        let mut h = H {
            l: Ledger::new(Limits::default()),
            out: Actions::new(),
            now: Instant::now(),
            workers: BTreeMap::new(),
            clients: BTreeMap::new(),
            timers: Vec::new(),
            restarts: Vec::new(),
            drained: Vec::new(),
            resumed: Vec::new(),
        };
        h.l.pool_set(
            POOL,
            PoolSettings {
                name: "p".into(),
                max_inflight,
                queue,
            },
        );
        let keys: Vec<usize> = (0..n).collect();
        h.l.pool_members(POOL, &keys, &[]);
        h.l.set_rules(vec![rule]);
        for k in 0..n {
            h.up(k);
        }
        h.l.client_open(1, Some(LISTENER));
        h
    }

    fn up(&mut self, k: usize) {
        self.view(k, live());
        self.l.instance_up(k, self.now, &mut self.out);
        self.collect();
    }

    fn view(&mut self, k: usize, v: InstanceView) {
        self.l
            .instance_view(k, POOL, k as u32, &format!("p[{k}]"), v);
    }

    fn collect(&mut self) {
        for a in self.out.list.drain(..) {
            match a {
                Action::ToWorker { instance, bytes } => self
                    .workers
                    .entry(instance)
                    .or_default()
                    .extend_from_slice(&self.out.bytes[bytes]),
                Action::ToClient { client, bytes } => self
                    .clients
                    .entry(client)
                    .or_default()
                    .extend_from_slice(&self.out.bytes[bytes]),
                Action::Arm { at, timer } => self.timers.push((at, timer)),
                Action::Restart { instance } => self.restarts.push(instance),
                Action::Drained { instance } => self.drained.push(instance),
                Action::Resume { client } => self.resumed.push(client),
                // Probes have their own tests (probe.rs).
                Action::ProbeReached { .. } | Action::ProbeReply { .. } => {}
            }
        }
        self.out.clear();
        self.l.check_all();
    }

    fn send(&mut self, c: usize, line: &str) -> bool {
        let r = self
            .l
            .client_line(c, line.as_bytes(), self.now, &mut self.out);
        self.collect();
        r
    }

    fn reply(&mut self, k: usize, line: &str) {
        self.l
            .worker_reply(k, Ok(line.as_bytes()), self.now, &mut self.out);
        self.collect();
    }

    /// Answer every message written to `k` so far with `<message>!`.
    fn echo(&mut self, k: usize) {
        let got = std::mem::take(self.workers.entry(k).or_default());
        for line in String::from_utf8(got).unwrap().lines() {
            self.reply(k, &format!("{line}!"));
        }
    }

    fn worker(&mut self, k: usize) -> String {
        String::from_utf8(self.workers.get(&k).cloned().unwrap_or_default()).unwrap()
    }

    fn client(&self, c: usize) -> String {
        String::from_utf8(self.clients.get(&c).cloned().unwrap_or_default()).unwrap()
    }

    fn down(&mut self, k: usize, timed_out: bool, coming_back: bool) {
        self.view(k, dead(coming_back));
        self.l.instance_down(k, timed_out, self.now, &mut self.out);
        self.collect();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(at, _)| *at <= self.now)
            .map(|&(_, t)| t)
            .collect();
        self.timers.retain(|(at, _)| *at > self.now);
        for t in due {
            self.l.timer(t, self.now, &mut self.out);
            self.collect();
        }
    }
}

// ----- placement -----------------------------------------------------------------

#[test]
fn round_robin_spreads_and_respects_max_inflight() {
    let mut h = H::new(2, 1, 10, rule(Strategy::RoundRobin));
    for m in ["a", "b", "c"] {
        assert!(h.send(1, m));
    }
    assert_eq!(h.worker(0), "a\n");
    assert_eq!(h.worker(1), "b\n");
    assert_eq!(h.l.pool_waiting(POOL), 1, "c waits for room");
    h.echo(0);
    assert_eq!(
        h.worker(0),
        "c\n",
        "the queue goes to the instance with room"
    );
    h.echo(1);
    h.echo(0);
    assert_eq!(h.client(1), "a!\nb!\nc!\n");
    assert!(h.l.is_idle());
    assert_eq!(h.l.instance_counts(0), (0, 2));
}

#[test]
fn auto_window_opens_for_a_fast_worker_and_stays_narrow_for_a_slow_one() {
    let mut h = H::new(2, MAX_INFLIGHT_AUTO, 1000, rule(Strategy::RoundRobin));
    for i in 0..40 {
        assert!(h.send(1, &format!("m{i}")));
    }
    assert_eq!(h.l.instance_counts(0).0, 2, "the window starts narrow");
    assert_eq!(h.l.instance_counts(1).0, 2);
    // The fast one answers all it had at once (its window held it back): it doubles.
    for _ in 0..3 {
        let got = std::mem::take(h.workers.entry(0).or_default());
        h.l.worker_output(0, &got, h.now, &mut h.out);
        h.collect();
    }
    assert_eq!(h.l.instance_counts(0).0, 16, "2 → 4 → 8 → 16");
    // The slow one answers one of its two after 50 ms: it stays at the minimum.
    h.now += Duration::from_millis(50);
    h.l.worker_output(1, b"m1!\n", h.now, &mut h.out);
    h.collect();
    assert_eq!(
        h.l.instance_counts(1),
        (2, 1),
        "m3 in flight, one more given"
    );
    // A fixed number still fixes it.
    let mut f = H::new(1, 3, 1000, rule(Strategy::RoundRobin));
    for i in 0..10 {
        f.send(1, &format!("m{i}"));
    }
    let got = std::mem::take(f.workers.entry(0).or_default());
    f.l.worker_output(0, &got, f.now, &mut f.out);
    f.collect();
    assert_eq!(f.l.instance_counts(0), (3, 3));
}

#[test]
fn a_chunk_of_lines_goes_out_in_runs_and_single_lines_rotate() {
    let mut h = H::new(2, 100, 1000, rule(Strategy::RoundRobin));
    let chunk = b"m0\nm1\nm2\nm3\nm4\nm5\nm6\r\n";
    let taken = h.l.client_lines(1, chunk, h.now, &mut h.out);
    h.collect();
    assert_eq!(taken, chunk.len());
    // One choice per share of the chunk: 4 of 7 lines, then the other 3.
    assert_eq!(h.worker(0), "m0\nm1\nm2\nm3\n");
    assert_eq!(h.worker(1), "m4\nm5\nm6\n");
    // Lines one at a time still alternate, from where the rotation stands.
    for m in ["a", "b", "c"] {
        h.send(1, m);
    }
    assert_eq!(h.worker(0), "m0\nm1\nm2\nm3\na\nc\n");
    assert_eq!(h.worker(1), "m4\nm5\nm6\nb\n");
    // A run ends where the instance's room does; the rest is chosen afresh.
    let mut h = H::new(2, 2, 1000, rule(Strategy::RoundRobin));
    h.l.client_lines(1, b"a\nb\nc\nd\ne\n", h.now, &mut h.out);
    h.collect();
    assert_eq!(
        (h.worker(0), h.worker(1)),
        ("a\nb\n".into(), "c\nd\n".into())
    );
    assert_eq!(h.l.pool_waiting(POOL), 1);
    h.echo(0);
    h.echo(1);
    assert_eq!(
        h.worker(0),
        "e\n",
        "the queue went to the instance with room"
    );
    h.echo(0);
    assert_eq!(h.client(1), "a!\nb!\nc!\nd!\ne!\n");
}

#[test]
fn chunks_split_into_lines_like_split_inclusive() {
    for chunk in [&b""[..], b"a", b"a\n", b"\n\n", b"ab\ncd", b"ab\ncd\n\nx"] {
        let want: Vec<&[u8]> = chunk.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(
            super::events::lines(chunk).collect::<Vec<_>>(),
            want,
            "{chunk:?}"
        );
    }
}

#[test]
fn client_lines_stops_at_a_stalled_line() {
    let mut h = H::new(1, 1, 1, rule(Strategy::RoundRobin));
    let chunk = b"a\nb\nc\nd\n";
    let taken = h.l.client_lines(1, chunk, h.now, &mut h.out);
    h.collect();
    // a in flight, b queued (the queue holds 1), c stalls and is kept; d is not taken.
    assert_eq!(taken, 6);
    assert!(h.l.client_stalled(1));
    h.echo(0);
    assert_eq!(h.resumed, vec![1]);
    assert!(h.l.client_resume(1, h.now, &mut h.out));
    h.collect();
    // c waits in the queue now: d stalls in turn.
    let taken = h.l.client_lines(1, b"d\n", h.now, &mut h.out);
    h.collect();
    assert_eq!(taken, 2);
    assert!(h.l.client_stalled(1));
    while !h.l.is_idle() || h.l.client_stalled(1) {
        h.echo(0);
        assert!(h.l.client_resume(1, h.now, &mut h.out));
        h.collect();
    }
    assert_eq!(h.client(1), "a!\nb!\nc!\nd!\n");
}

#[test]
fn least_busy_picks_the_idle_instance() {
    let mut h = H::new(2, 5, 10, rule(Strategy::LeastBusy));
    h.send(1, "a");
    h.send(1, "b");
    h.reply(0, "a!");
    h.send(1, "c");
    assert_eq!(h.worker(0), "a\nc\n");
    assert_eq!(h.worker(1), "b\n");
}

#[test]
fn hash_keeps_a_key_on_one_instance_and_waits_in_its_backlog() {
    let mut r = rule(Strategy::Hash);
    r.key = Some(Pattern(regex::bytes::Regex::new("^(\\w+)").unwrap()));
    let mut h = H::new(3, 1, 10, r);
    h.send(1, "k1 one");
    h.send(1, "k1 two");
    let k = (0..3).find(|&k| h.worker(k) == "k1 one\n").unwrap();
    assert_eq!(
        h.l.pool_waiting(POOL),
        1,
        "the second waits for the same instance"
    );
    h.workers.clear();
    h.reply(k, "ok");
    assert_eq!(h.worker(k), "k1 two\n");
}

#[test]
fn no_route_and_no_instances_are_immediate_errors_in_order() {
    let mut r = rule(Strategy::RoundRobin);
    r.matcher = Some(Pattern(regex::bytes::Regex::new("^go").unwrap()));
    let mut h = H::new(1, 1, 10, r);
    h.send(1, "go 1");
    h.send(1, "stop");
    assert_eq!(h.client(1), "", "the error waits for the earlier reply");
    h.reply(0, "done");
    assert_eq!(h.client(1), "done\nERR no route\n");
    h.l.pool_members(POOL, &[], &[]);
    h.send(1, "go 2");
    assert_eq!(
        h.client(1),
        "done\nERR no route\nERR pool has no instances\n"
    );
    h.l.client_unroute(1);
    h.send(1, "go 3");
    assert!(h.client(1).ends_with("ERR no route\n"));
}

// ----- ordering ------------------------------------------------------------------

#[test]
fn ordered_replies_leave_in_sending_order() {
    let mut h = H::new(2, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    h.reply(1, "b!");
    assert_eq!(h.client(1), "", "b is held for a");
    h.reply(0, "a!");
    assert_eq!(h.client(1), "a!\nb!\n");
}

#[test]
fn unordered_replies_leave_as_they_come() {
    let mut r = rule(Strategy::RoundRobin);
    r.ordered = false;
    let mut h = H::new(2, 1, 10, r);
    h.send(1, "a");
    h.send(1, "b");
    h.reply(1, "b!");
    h.reply(0, "a!");
    assert_eq!(h.client(1), "b!\na!\n");
}

// ----- redelivery ----------------------------------------------------------------

#[test]
fn a_dead_instances_messages_go_to_another_and_only_the_oldest_is_charged() {
    let mut h = H::new(2, 3, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    h.send(1, "c");
    assert_eq!(h.worker(0), "a\nc\n");
    h.down(0, false, true);
    // Redelivered ahead of everything waiting, in their original order.
    assert_eq!(h.worker(1), "b\na\nc\n");
    h.echo(1);
    assert_eq!(h.client(1), "a!\nb!\nc!\n");
    assert!(h.l.is_idle());
}

#[test]
fn retries_are_counted_and_exhausted() {
    let mut r = rule(Strategy::RoundRobin);
    r.retries = 1;
    let mut h = H::new(1, 1, 10, r);
    h.send(1, "a");
    h.down(0, false, true);
    assert_eq!(h.l.pool_waiting(POOL), 1, "one retry left: it waits");
    h.up(0);
    assert_eq!(h.worker(0), "a\na\n");
    h.down(0, false, true);
    assert_eq!(h.client(1), "ERR retries exhausted (worker died)\n");
    assert!(h.l.is_idle());
}

#[test]
fn messages_the_worker_never_read_cost_no_attempt() {
    let mut r = rule(Strategy::RoundRobin);
    r.retries = 0;
    let mut h = H::new(1, 2, 10, r);
    h.send(1, "a");
    h.send(1, "b");
    // Both still unread (4 bytes: "a\nb\n"): no attempt is charged.
    h.l.instance_unread(0, 4);
    h.down(0, false, true);
    assert_eq!(h.client(1), "");
    assert_eq!(h.l.pool_waiting(POOL), 2);
    // Only "b\n" unread: "a" was being worked on and has no retries.
    h.up(0);
    h.l.instance_unread(0, 2);
    h.down(0, false, true);
    assert_eq!(h.client(1), "ERR retries exhausted (worker died)\n");
    assert_eq!(h.l.pool_waiting(POOL), 1);
}

#[test]
fn a_worker_reply_without_a_message_is_ignored() {
    let mut h = H::new(1, 1, 10, rule(Strategy::RoundRobin));
    h.reply(0, "stray");
    assert_eq!(h.client(1), "");
    assert_eq!(h.l.instance_counts(0), (0, 0));
}

// ----- timeouts ------------------------------------------------------------------

#[test]
fn a_message_past_its_timeout_restarts_the_instance_and_is_redelivered() {
    let mut h = H::new(2, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "slow");
    assert_eq!(h.timers.len(), 1);
    h.advance(Duration::from_secs(4));
    assert!(h.restarts.is_empty());
    h.advance(Duration::from_secs(2));
    assert_eq!(h.restarts, [0]);
    h.workers.clear();
    h.down(0, true, true);
    assert_eq!(h.worker(1), "slow\n");
    h.reply(1, "done");
    assert_eq!(h.client(1), "done\n");
}

#[test]
fn the_timeout_clock_of_the_next_message_starts_at_the_previous_reply() {
    let mut h = H::new(1, 2, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    h.advance(Duration::from_secs(4));
    h.reply(0, "a!");
    // b was written 4s ago but the worker only turned to it now.
    h.advance(Duration::from_secs(4));
    assert!(h.restarts.is_empty(), "stale timer ignored, b has 1s left");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.restarts, [0]);
}

#[test]
fn messages_waiting_for_a_pool_without_instances_expire() {
    let mut h = H::new(1, 1, 10, rule(Strategy::RoundRobin));
    h.down(0, false, true);
    h.l.pool_liveness(POOL, true, h.now, &mut h.out);
    h.collect();
    h.send(1, "a");
    assert_eq!(h.l.pool_waiting(POOL), 1);
    h.advance(Duration::from_secs(6));
    assert_eq!(h.client(1), "ERR timed out waiting for an instance\n");
    assert!(h.l.is_idle());
}

// ----- budgets -------------------------------------------------------------------

#[test]
fn a_full_pool_stalls_the_client_until_it_drains() {
    let mut h = H::new(1, 1, 2, rule(Strategy::RoundRobin));
    assert!(h.send(1, "a")); // in flight
    assert!(h.send(1, "b")); // waiting 1
    assert!(h.send(1, "c")); // waiting 2
    assert!(!h.send(1, "d"), "queue full: d stalls");
    assert!(h.l.client_stalled(1));
    assert!(!h.l.client_can_read(1));
    h.echo(0);
    assert_eq!(h.resumed, [1]);
    assert!(h.l.client_resume(1, h.now, &mut h.out));
    h.collect();
    for _ in 0..3 {
        h.echo(0);
    }
    assert_eq!(h.client(1), "a!\nb!\nc!\nd!\n");
}

#[test]
fn the_pool_byte_budget_stalls_too() {
    let mut h = H::new(1, 1, 1000, rule(Strategy::RoundRobin));
    h.l.limits.pool_max_bytes = 10;
    assert!(h.send(1, "0123456789"));
    assert!(!h.send(1, "x"), "11 bytes held: full");
}

#[test]
fn unwritten_replies_stop_reading_until_written() {
    let mut h = H::new(1, 10, 10, rule(Strategy::RoundRobin));
    h.l.limits.max_client_out = 8;
    h.send(1, "a");
    h.reply(0, "0123456789");
    assert!(!h.l.client_may_read(1));
    h.l.client_wrote(1, 11, &mut h.out);
    h.collect();
    assert_eq!(h.resumed, [1]);
    assert!(h.l.client_can_read(1));
}

#[test]
fn outstanding_messages_are_capped() {
    let mut h = H::new(1, 10, 100, rule(Strategy::RoundRobin));
    h.l.limits.max_outstanding = 2;
    h.send(1, "a");
    assert!(h.l.client_may_read(1));
    h.send(1, "b");
    assert!(!h.l.client_may_read(1));
    h.reply(0, "a!");
    assert_eq!(h.resumed, [1]);
    assert!(h.l.client_can_read(1));
}

// ----- broadcast -----------------------------------------------------------------

#[test]
fn broadcast_gathers_one_reply_per_instance_in_instance_order() {
    let mut h = H::new(3, 1, 10, rule(Strategy::Broadcast));
    h.send(1, "ping");
    for k in 0..3 {
        assert_eq!(h.worker(k), "ping\n");
    }
    h.reply(2, "two");
    h.reply(0, "zero");
    assert_eq!(h.client(1), "");
    h.reply(1, "one");
    assert_eq!(h.client(1), "zero\none\ntwo\n");
    assert!(h.l.is_idle());
}

#[test]
fn a_broadcast_copy_waits_for_its_instance_or_fails_when_it_stops() {
    let mut h = H::new(2, 1, 10, rule(Strategy::Broadcast));
    h.send(1, "a");
    h.send(1, "b"); // both instances busy: b waits in each backlog
    h.down(1, false, true);
    // a's copy (redelivered) and b's copy stay pinned to slot 1; b's other copy
    // waits for instance 0.
    assert_eq!(h.l.pool_waiting(POOL), 3);
    h.down(1, false, false);
    h.l.instance_gone(1, false, h.now, &mut h.out);
    h.collect();
    assert_eq!(h.l.pool_waiting(POOL), 1);
    h.echo(0);
    h.echo(0);
    assert_eq!(
        h.client(1),
        "a!\nERR instance stopped\nb!\nERR instance stopped\n"
    );
    assert!(h.l.is_idle());
}

#[test]
fn broadcast_without_live_instances_is_an_error() {
    let mut h = H::new(1, 1, 10, rule(Strategy::Broadcast));
    h.down(0, false, true);
    h.send(1, "a");
    assert_eq!(h.client(1), "ERR pool has no running instances\n");
}

// ----- instances leaving, shutdown, clients leaving ------------------------------

#[test]
fn a_retiring_instance_finishes_its_work_then_is_drained() {
    let mut h = H::new(2, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.view(
        0,
        InstanceView {
            leaving: true,
            coming_back: false,
            ..live()
        },
    );
    h.l.pool_members(POOL, &[1], &[0]);
    h.l.instance_retiring(0, h.now, &mut h.out);
    h.collect();
    assert!(h.drained.is_empty());
    h.send(1, "b");
    assert_eq!(h.worker(1), "b\n", "no new work for the retiring one");
    h.reply(0, "a!");
    assert_eq!(h.drained, [0]);
}

#[test]
fn fail_all_answers_everything() {
    let mut h = H::new(1, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    h.l.fail_all("shutting down", &mut h.out);
    h.collect();
    assert_eq!(h.client(1), "ERR shutting down\nERR shutting down\n");
    assert!(h.l.is_idle());
}

#[test]
fn a_client_that_left_gets_nothing_and_its_messages_still_complete() {
    let mut h = H::new(1, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    let s = h.l.client_gone(1);
    assert_eq!(s.outstanding, 1);
    h.l.client_open(1, Some(LISTENER)); // the key is reused
    h.reply(0, "a!");
    assert_eq!(
        h.client(1),
        "",
        "the old client's reply does not reach the new one"
    );
    assert!(h.l.is_idle());
}

#[test]
fn pool_fail_queue_answers_the_queue_and_wakes_stalled_clients() {
    let mut h = H::new(1, 1, 1, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    assert!(!h.send(1, "c"));
    h.l.pool_fail_queue(POOL, "pool removed", &mut h.out);
    h.collect();
    assert_eq!(h.resumed, [1]);
    h.reply(0, "a!");
    assert_eq!(h.client(1), "a!\nERR pool removed\n");
}

#[test]
fn chunk_interfaces_take_complete_lines() {
    let mut h = H::new(1, 5, 10, rule(Strategy::RoundRobin));
    let n = h.l.client_data(1, b"a\r\nb\n", h.now, &mut h.out);
    h.collect();
    assert_eq!(n, 5);
    assert_eq!(h.worker(0), "a\nb\n");
    h.l.worker_output(0, b"1\n2\n", h.now, &mut h.out);
    h.collect();
    assert_eq!(h.client(1), "1\n2\n");
    assert_eq!(h.l.client_errors(1), 0);
}

#[test]
fn consecutive_bytes_for_one_instance_are_one_action() {
    let mut h = H::new(1, 5, 10, rule(Strategy::RoundRobin));
    h.l.client_data(1, b"a\nb\nc\n", h.now, &mut h.out);
    let writes = h
        .out
        .list
        .iter()
        .filter(|a| matches!(a, Action::ToWorker { .. }))
        .count();
    assert_eq!(writes, 1);
    h.collect();
}

#[test]
fn a_hashed_message_waiting_for_a_dead_instance_moves_to_a_live_one() {
    let mut h = H::new(2, 1, 10, rule(Strategy::Hash));
    // Find two messages with the same key owner.
    h.send(1, "k");
    let k = (0..2).find(|&k| h.worker(k) == "k\n").unwrap();
    h.send(1, "k"); // same key: waits in k's backlog
    assert_eq!(h.l.pool_waiting(POOL), 1);
    h.down(k, false, true);
    let other = 1 - k;
    assert_eq!(h.worker(other), "k\n", "both go to the one live instance");
    assert_eq!(h.l.instance_counts(other).0, 1);
    assert_eq!(h.l.pool_waiting(POOL), 1);
}

#[test]
fn more_room_after_a_settings_change_lets_waiting_work_go() {
    let mut h = H::new(1, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    assert_eq!(h.worker(0), "a\n");
    h.l.pool_set(
        POOL,
        PoolSettings {
            name: "p".into(),
            max_inflight: 2,
            queue: 10,
        },
    );
    h.l.pool_refresh(POOL, h.now, &mut h.out);
    h.collect();
    assert_eq!(h.worker(0), "a\nb\n");
}

#[test]
fn a_timer_armed_before_the_instance_went_down_is_ignored() {
    let mut h = H::new(2, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.down(0, false, true);
    h.up(0);
    assert_eq!(h.worker(1), "a\n");
    h.advance(Duration::from_secs(6));
    // Only instance 1's timer (armed when a moved there) fires.
    assert_eq!(h.restarts, [1]);
}

#[test]
fn a_held_instance_with_nothing_to_do_is_drained_at_once() {
    let mut h = H::new(2, 1, 10, rule(Strategy::RoundRobin));
    h.view(
        1,
        InstanceView {
            leaving: true,
            coming_back: false,
            ..live()
        },
    );
    h.l.instance_retiring(1, h.now, &mut h.out);
    h.collect();
    assert_eq!(h.drained, [1]);
    h.send(1, "a");
    h.send(1, "b");
    assert_eq!(
        h.worker(0),
        "a\n",
        "a held instance stays in its slot but gets nothing"
    );
    assert_eq!(h.worker(1), "");
}

#[test]
fn a_pool_without_slots_lets_its_retiring_instances_work_off_the_queue() {
    let mut h = H::new(1, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    let leaving = InstanceView {
        leaving: true,
        coming_back: false,
        ..live()
    };
    h.view(0, leaving);
    h.l.pool_members(POOL, &[], &[0]);
    h.l.instance_retiring(0, h.now, &mut h.out);
    h.collect();
    h.echo(0);
    assert_eq!(h.worker(0), "b\n", "the queue still goes to it");
    assert!(h.drained.is_empty());
    h.echo(0);
    assert_eq!(h.drained, [0]);
    assert_eq!(h.client(1), "a!\nb!\n");
}

#[test]
fn messages_without_a_timeout_wait_for_an_instance_forever() {
    let mut r = rule(Strategy::RoundRobin);
    r.timeout = None;
    let mut h = H::new(1, 1, 10, r);
    h.down(0, false, true);
    h.send(1, "a");
    assert!(h.timers.is_empty());
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.client(1), "");
    h.up(0);
    assert_eq!(h.worker(0), "a\n");
}

#[test]
fn an_error_in_place_of_a_reply_is_counted() {
    let mut h = H::new(1, 1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.l.worker_reply(0, Err("reply too long"), h.now, &mut h.out);
    h.collect();
    assert_eq!(h.client(1), "ERR reply too long\n");
    assert_eq!(h.l.client_errors(1), 1);
    h.l.client_error(1, "message too long", &mut h.out);
    h.collect();
    assert_eq!(h.l.client_errors(1), 2);
    assert_eq!(h.l.client_gone(1).errors, 2);
}

#[test]
fn a_stalled_message_is_refused_when_the_client_will_read_no_more() {
    let mut h = H::new(1, 1, 1, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    assert!(!h.send(1, "c"));
    h.l.client_refuse_stalled(1, "shutting down", &mut h.out);
    h.collect();
    assert!(!h.l.client_stalled(1));
    h.echo(0);
    h.echo(0);
    assert_eq!(h.client(1), "a!\nb!\nERR shutting down\n");
    assert!(h.l.client_answered(1));
}

// ----- random interleavings --------------------------------------------------------

/// A small deterministic random walk over the ledger's events: messages on an ordered
/// and an unordered route (round-robin or hash), echo replies, deaths, hangs, restarts,
/// clients leaving. After every step every invariant holds; at the end each client that
/// stayed got exactly one reply per message, in order on the ordered route, each
/// either its echo or an error. (The lead's model test goes further.)
#[test]
fn random_interleavings_keep_every_invariant_and_answer_everything() {
    for seed in 1..=300u64 {
        random_walk(seed, 1500);
    }
}

fn random_walk(seed: u64, steps: usize) {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let strategy = [Strategy::RoundRobin, Strategy::LeastBusy, Strategy::Hash][next(3) as usize];
    let mut ordered = rule(strategy);
    ordered.timeout = Some(Duration::from_secs(3));
    ordered.retries = next(3) as u32;
    let mut unordered = ordered.clone();
    unordered.ordered = false;
    unordered.listener = LISTENER + 1;
    let mut h = H::new(3, 1 + next(3) as u32, 2 + next(6) as u32, ordered);
    h.l.set_rules(vec![h.l.rules[0].clone(), unordered]);
    h.l.client_open(2, Some(LISTENER + 1));
    // Per client: messages sent, in order.
    let mut sent: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut gone = [false; 3];
    let mut up = [true; 3];
    let mut n = 0;
    for _ in 0..steps {
        match next(10) {
            0..=3 => {
                let c = 1 + next(2) as usize;
                if gone[c] || h.l.client_stalled(c) {
                    if !gone[c] && h.resumed.contains(&c) {
                        h.resumed.retain(|&x| x != c);
                        h.l.client_resume(c, h.now, &mut h.out);
                        h.collect();
                    }
                    continue;
                }
                n += 1;
                let m = format!("m{n}");
                sent.entry(c).or_default().push(m.clone());
                h.send(c, &m);
            }
            4..=5 => {
                // One instance answers what it has read.
                let k = next(3) as usize;
                if let Some(line) = h.workers.get_mut(&k).and_then(|b| {
                    let i = b.iter().position(|&x| x == b'\n')?;
                    Some(b.drain(..=i).collect::<Vec<u8>>())
                }) {
                    let line = String::from_utf8(line).unwrap();
                    h.reply(k, &format!("{}!", line.trim_end()));
                }
            }
            6 => {
                // A worker dies (some of what it was sent unread), or comes back.
                let k = next(3) as usize;
                if up[k] {
                    let unread = h.workers.get(&k).map_or(0, |b| b.len()) * next(2) as usize;
                    h.workers.remove(&k);
                    h.l.instance_unread(k, unread);
                    up[k] = false;
                    h.down(k, false, true);
                    h.l.pool_liveness(POOL, true, h.now, &mut h.out);
                    h.collect();
                } else {
                    up[k] = true;
                    h.up(k);
                }
            }
            7 => {
                h.advance(Duration::from_millis(500 * (1 + next(4))));
                for k in std::mem::take(&mut h.restarts) {
                    if up[k] {
                        h.workers.remove(&k);
                        h.down(k, true, true);
                        h.up(k);
                    }
                }
            }
            8 => {
                // A client's output is written (part of it).
                let c = 1 + next(2) as usize;
                let unwritten = h.l.clients.get(c).map_or(0, |c| c.unwritten);
                let n = unwritten / (1 + next(2) as usize);
                h.l.client_wrote(c, n, &mut h.out);
                h.collect();
            }
            _ => {
                if next(20) == 0 {
                    let c = 1 + next(2) as usize;
                    if !gone[c] {
                        gone[c] = true;
                        h.l.client_gone(c);
                    }
                }
            }
        }
    }
    // Shutdown as the daemon does it: stalled lines are refused, the rest failed.
    for c in 1..=2 {
        h.l.client_refuse_stalled(c, "shutting down", &mut h.out);
    }
    h.l.fail_all("shutting down", &mut h.out);
    h.collect();
    assert!(h.l.is_idle(), "seed {seed}");
    for (c, _) in gone.iter().enumerate().skip(1).filter(|(_, &g)| !g) {
        let replies: Vec<String> = h.client(c).lines().map(str::to_string).collect();
        let msgs = sent.remove(&c).unwrap_or_default();
        assert_eq!(
            replies.len(),
            msgs.len(),
            "seed {seed} client {c}: {replies:?} for {msgs:?}"
        );
        if c == 1 {
            for (r, m) in replies.iter().zip(&msgs) {
                assert!(
                    *r == format!("{m}!") || r.starts_with("ERR "),
                    "seed {seed}: {r} for {m}"
                );
            }
        } else {
            let mut got: Vec<&String> = replies.iter().filter(|r| !r.starts_with("ERR ")).collect();
            got.sort();
            got.dedup();
            assert_eq!(
                got.len(),
                replies.iter().filter(|r| !r.starts_with("ERR ")).count()
            );
        }
    }
}

#[path = "tests_proto.rs"]
mod proto;
#[path = "tests_runs.rs"]
mod runs;
