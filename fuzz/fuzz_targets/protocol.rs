//! The worker protocol codecs (`orchd::protocol`) never panic, never hand out a reply
//! with a newline or over the limit, and read back what they write: a message sent to
//! a `node` or `tagged` worker and echoed comes back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchd::config::Protocol;
use orchd::protocol::tagged::{self, Tag};
use orchd::protocol::{
    decode_line, node, write_message, WorkerLine, MAX_MESSAGE, REPLY_HAS_NEWLINE,
};

fuzz_target!(|data: &[u8]| {
    // Any line from any worker (the framing hands out lines without their `\n`).
    for (p, line) in Protocol::ALL
        .into_iter()
        .flat_map(|p| data.split(|&b| b == b'\n').map(move |l| (p, l)))
    {
        match decode_line(p, line) {
            WorkerLine::Next(r) => {
                assert!(!r.contains(&b'\n'));
                if p == Protocol::Node {
                    assert!(r.len() <= MAX_MESSAGE);
                }
            }
            WorkerLine::Tagged(_, r) => assert!(r.len() <= MAX_MESSAGE),
            WorkerLine::NextFails(_) | WorkerLine::TaggedFails(..) | WorkerLine::NotAReply(_) => {}
        }
    }
    // node: the JSON string decoder agrees with serde_json wherever serde_json reads
    // the line as a string (it refuses lone surrogates, which Node writes and orchd
    // reads as U+FFFD), and calls nothing JSON that serde_json refuses.
    if let Ok(text) = std::str::from_utf8(data) {
        match node::decode_reply(data) {
            node::Incoming::Reply(r) => {
                if let Ok(s) = serde_json::from_str::<String>(text) {
                    assert_eq!(r, s.as_bytes());
                }
            }
            node::Incoming::Invalid(_) => {
                assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_err());
            }
            node::Incoming::ErrorReply(_) | node::Incoming::Internal(_) => {}
        }
    }
    // Round trips of a message as the worker would echo it.
    let message: Vec<u8> = data.iter().copied().filter(|&b| b != b'\n').collect();
    let tag = Tag(data.iter().fold(1u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    let mut out = Vec::new();
    write_message(&mut out, Protocol::Tagged, Some(tag), &message).expect("tagged takes bytes");
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    let line = &out[..out.len() - 1];
    assert_eq!(tagged::parse_reply(line), Ok((tag, &message[..])));
    let mut out = Vec::new();
    // (Messages never hold a newline; the encoder escapes one anyway, and then the
    // echo must be an error reply.)
    match node::encode_message(&mut out, data) {
        Ok(()) => {
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            let want = if data.contains(&b'\n') {
                WorkerLine::NextFails(REPLY_HAS_NEWLINE)
            } else if data.len() > MAX_MESSAGE {
                return;
            } else {
                WorkerLine::Next(data.into())
            };
            assert_eq!(decode_line(Protocol::Node, &out[..out.len() - 1]), want);
        }
        Err(_) => assert!(std::str::from_utf8(data).is_err()),
    }
});
