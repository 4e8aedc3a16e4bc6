//! Unit tests of the ledger's protocol paths (SPEC 12): `tagged` replies matched by
//! ID, per-message timeouts, redelivery; `node` messages as JSON strings.

use super::*;
use crate::config::Protocol;
use crate::protocol::tagged::{parse_reply, Tag};

impl H {
    fn tagged(n: usize, max_inflight: u32, rule: Rule) -> H {
        let mut h = H::new(0, max_inflight, 100, rule);
        let keys: Vec<usize> = (0..n).collect();
        h.l.pool_members(POOL, &keys, &[]);
        for k in 0..n {
            h.view(k, live());
            h.l.instance_protocol(k, Protocol::Tagged);
            h.l.instance_up(k, h.now, &mut h.out);
            h.collect();
        }
        h
    }

    /// The (tag, message) lines written to `k` since last taken.
    fn take_tagged(&mut self, k: usize) -> Vec<(Tag, String)> {
        let got = std::mem::take(self.workers.entry(k).or_default());
        got.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (t, m) = parse_reply(l).expect("ID SP message");
                (t, String::from_utf8(m.to_vec()).unwrap())
            })
            .collect()
    }

    fn reply_tag(&mut self, k: usize, tag: Tag, line: &str) {
        self.l
            .worker_reply_tagged(k, tag, Ok(line.as_bytes()), self.now, &mut self.out);
        self.collect();
    }
}

#[test]
fn tagged_replies_in_any_order_reach_their_client_in_order() {
    let mut h = H::tagged(1, 10, rule(Strategy::RoundRobin));
    h.l.client_open(2, Some(LISTENER));
    for (c, m) in [(1, "a1"), (2, "b1"), (1, "a2"), (2, "b2")] {
        h.send(c, m);
    }
    let sent = h.take_tagged(0);
    assert_eq!(sent.len(), 4, "all in flight at once");
    for (tag, m) in sent.iter().rev() {
        h.reply_tag(0, *tag, &format!("{m}!"));
    }
    assert_eq!(h.client(1), "a1!\na2!\n");
    assert_eq!(h.client(2), "b1!\nb2!\n");
    assert!(h.l.is_idle());
    assert_eq!(h.l.instance_counts(0), (0, 4));
}

#[test]
fn tagged_unknown_and_duplicate_ids_are_dropped() {
    let mut h = H::tagged(1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    let sent = h.take_tagged(0);
    h.reply_tag(0, Tag(999), "stray");
    h.reply_tag(0, sent[1].0, "b!");
    h.reply_tag(0, sent[1].0, "b again");
    assert_eq!(h.client(1), "", "a is due first");
    assert_eq!(h.l.instance_counts(0), (1, 1));
    h.reply_tag(0, sent[0].0, "a!");
    assert_eq!(h.client(1), "a!\nb!\n");
}

#[test]
fn tagged_max_inflight_bounds_what_is_written() {
    let mut h = H::tagged(1, 2, rule(Strategy::RoundRobin));
    for m in ["a", "b", "c"] {
        h.send(1, m);
    }
    let sent = h.take_tagged(0);
    assert_eq!(sent.len(), 2);
    h.reply_tag(0, sent[1].0, "b!");
    let next = h.take_tagged(0);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1, "c");
    assert!(next[0].0 > sent[1].0, "a fresh ID");
}

#[test]
fn a_dead_tagged_worker_gives_back_exactly_its_unanswered_messages_each_charged() {
    let mut r = rule(Strategy::RoundRobin);
    r.retries = 1;
    let mut h = H::tagged(2, 10, r);
    for m in ["a", "b", "c", "d"] {
        h.send(1, m);
    }
    let on0 = h.take_tagged(0);
    assert_eq!(h.take_tagged(1).len(), 2);
    assert_eq!(on0.len(), 2);
    h.reply_tag(0, on0[0].0, "a!");
    h.down(0, false, true);
    // Only the unanswered one goes again, to the live instance.
    let again: Vec<String> = h.take_tagged(1).into_iter().map(|(_, m)| m).collect();
    assert_eq!(again, [on0[1].1.clone()]);
    // It was charged an attempt: on a second death its retries are used up, while
    // b and d (charged once each) are delivered again.
    h.view(0, dead(true));
    h.down(1, false, true);
    h.up(0);
    let last = h.take_tagged(0);
    let names: Vec<&str> = last.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(names, ["b", "d"]);
    for (tag, m) in last {
        h.reply_tag(0, tag, &format!("{m}!"));
    }
    assert_eq!(
        h.client(1),
        "a!\nb!\nERR retries exhausted (worker died)\nd!\n"
    );
    assert!(h.l.is_idle());
}

#[test]
fn an_overdue_tagged_message_goes_elsewhere_and_its_late_reply_is_dropped() {
    let mut r = rule(Strategy::RoundRobin);
    r.timeout = Some(Duration::from_secs(5));
    let mut h = H::tagged(2, 10, r);
    h.send(1, "slow");
    let slow = h.take_tagged(0);
    h.advance(Duration::from_secs(3));
    h.send(1, "x");
    h.send(1, "y");
    let on1 = h.take_tagged(1);
    let on0 = h.take_tagged(0);
    // Instance 0 keeps answering others: it is not restarted, but "slow" is overdue.
    h.reply_tag(0, on0[0].0, "y!");
    h.advance(Duration::from_secs(3));
    assert!(h.restarts.is_empty(), "{:?}", h.restarts);
    let moved = h.take_tagged(1);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].1, "slow");
    // The late reply on instance 0 is dropped; the retry's answers.
    h.reply_tag(0, slow[0].0, "late");
    h.reply_tag(1, on1[0].0, "x!");
    h.reply_tag(1, moved[0].0, "slow!");
    assert_eq!(h.client(1), "slow!\nx!\ny!\n");
    assert!(h.l.is_idle());
}

#[test]
fn a_tagged_worker_that_answers_nothing_for_timeout_is_restarted() {
    let mut h = H::tagged(1, 10, rule(Strategy::RoundRobin));
    h.send(1, "a");
    h.send(1, "b");
    h.advance(Duration::from_secs(4));
    assert!(h.restarts.is_empty());
    h.advance(Duration::from_secs(2));
    assert_eq!(h.restarts, [0]);
    h.down(0, true, true);
    h.up(0);
    let again: Vec<String> = h
        .take_tagged(0)
        .into_iter()
        .skip(2)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(again, ["a", "b"], "both charged and sent again");
}

#[test]
fn node_messages_are_json_strings_and_bytes_that_are_not_utf8_get_an_error() {
    let mut h = H::new(0, 10, 100, rule(Strategy::RoundRobin));
    h.l.pool_members(POOL, &[0], &[]);
    h.view(0, live());
    h.l.instance_protocol(0, Protocol::Node);
    h.l.instance_up(0, h.now, &mut h.out);
    h.collect();
    h.send(1, "say \"hi\"");
    h.l.client_line(1, b"\xff", h.now, &mut h.out);
    h.collect();
    assert_eq!(h.worker(0), "\"say \\\"hi\\\"\"\n");
    assert_eq!(
        h.l.instance_counts(0),
        (1, 0),
        "the refused one is not in flight"
    );
    h.reply(0, "ok");
    assert_eq!(h.client(1), "ok\nERR message is not valid UTF-8\n");
}
