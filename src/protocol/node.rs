//! `protocol = "node"` (SPEC 12): workers written for Node.js `child_process.fork()`
//! run unchanged. Such a worker takes messages with `process.on('message')` and
//! answers with `process.send(value)`; orchd plays the part of the forking parent.
//!
//! # The channel, as Node sees it
//!
//! A forked Node process finds its IPC channel through two environment variables:
//! `NODE_CHANNEL_FD` (the fd number of one end of a socket pair) and
//! `NODE_CHANNEL_SERIALIZATION_MODE` (`json`, the default of `fork()`, or
//! `advanced`). orchd always uses `json`: every message, each way, is one JSON text
//! followed by `\n` (JSON text never contains a raw newline: it is escaped in
//! strings). Any parent that owns the other end of a `socketpair(AF_UNIX,
//! SOCK_STREAM)` can drive it; Node needs nothing else.
//!
//! Checked with Node v20.20.2 and a Python parent on a plain socket pair
//! (`NODE_CHANNEL_FD=3`, stdin `/dev/null`), worker side `process.on('message', m =>
//! process.send(...))`; bytes are as read from orchd's end:
//!
//! | worker / parent does                        | bytes on the socket                   |
//! |---------------------------------------------|---------------------------------------|
//! | starts                                      | nothing (no greeting, no handshake)   |
//! | parent writes `"hello"\n`                   | worker's `message` event gets `'hello'` |
//! | `process.send('got hello')`                 | `"got hello"\n`                       |
//! | `process.send({a: 1, b: [1, "x"], c: null})` | `{"a":1,"b":[1,"x"],"c":null}\n` (compact) |
//! | `process.send(42)`                          | `42\n`                                |
//! | `process.send('a\nb')`                      | `"a\nb"\n` (escaped: still one line)  |
//! | `process.send('a\u2028bé')`                 | raw UTF-8, not escaped                |
//! | `process.send('\ud800')` (lone surrogate)   | `"\ud800"\n` (escaped, valid UTF-8)   |
//! | `process.send({cmd: 'NODE_TEST', x: 1})`    | `{"cmd":"NODE_TEST","x":1}\n`: Node's parent would treat it as internal |
//! | `process.send(undefined)`                   | nothing: throws `ERR_MISSING_ARGS`    |
//! | parent writes `"a"\n"b"\n` in one write     | two `message` events                  |
//! | parent writes `  "x"  \r\n` or `"par` + `tial"\n` | one message each (whitespace and CR ignored, partial lines buffered) |
//! | parent writes `not json\n`                  | the worker dies: uncaught `SyntaxError` |
//! | parent closes its end                       | worker gets `disconnect`; a later `process.send` emits `error` (`ERR_IPC_CHANNEL_CLOSED`: the process exits 1 unless it listens for `error`); a worker with nothing else to do exits 0 |
//!
//! So orchd must only ever write well-formed JSON (a message that is not UTF-8 gets
//! an error reply instead, [`encode_message`]), and stops a worker by closing its end
//! first (after the in-flight messages are answered), then `stop_signal`.
//!
//! # Replies
//!
//! [`decode_reply`] turns one line from the worker into an [`Incoming`]: a string is
//! the reply as is; any other JSON value is the reply as compact JSON text; a
//! string containing a newline is an error reply (a reply is one line, never split);
//! an internal message (an object whose `cmd` is a string starting with `NODE_`, the
//! test Node itself applies) is not a reply; a line that is not JSON cannot come from
//! Node and is logged and dropped. Replies match messages in order, as with `lines`.

use std::fmt;
use std::os::fd::RawFd;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{MAX_MESSAGE, MESSAGE_NOT_UTF8, REPLY_HAS_NEWLINE, REPLY_TOO_LONG};

/// The fd a `node` worker finds its channel on: 3, as in Node's own `fork()` (stdin,
/// stdout, stderr, then the channel).
pub const CHANNEL_FD: RawFd = 3;

/// The variables that tell Node where its channel is.
pub const CHANNEL_VARS: [&str; 2] = ["NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE"];

/// What a `node` worker's environment gets, on top of the pool's `env` and
/// `ORCHD_POOL`/`ORCHD_INSTANCE`.
pub const CHANNEL_ENV: [(&str, &str); 2] = [
    ("NODE_CHANNEL_FD", "3"),
    ("NODE_CHANNEL_SERIALIZATION_MODE", "json"),
];

/// The longest line a `node` worker may send: a reply of [`MAX_MESSAGE`] bytes as a
/// JSON string can take 6 bytes per byte (`\u0001`) plus its quotes. Longer lines
/// are over-long replies; shorter ones are checked after decoding.
pub const MAX_LINE: usize = 6 * MAX_MESSAGE + 2;

/// A worker's Node IPC channel: one end of a socket pair on [`CHANNEL_FD`].
///
/// Set-up, in order (the spawn code does it; this type only describes it):
/// 1. `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`: orchd keeps one end,
///    non-blocking, registered for reading (replies) and, while output is queued,
///    writing (messages, through the same `OutBuf` as a stdin pipe);
/// 2. in the child before exec: `sys::child_install_fd(child_end, CHANNEL_FD)` (it
///    must survive exec as fd 3, and nothing else of orchd may);
/// 3. the environment: [`CHANNEL_ENV`]; stdin `/dev/null`; stdout and stderr pipes,
///    both logged;
/// 4. after the spawn, orchd closes its copy of the child's end, so that the worker's
///    exit is seen as EOF on orchd's end.
///
/// Stopping: once the instance has no message in flight, orchd closes its end (the
/// worker gets `disconnect`), then sends `stop_signal` as for any worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel;

/// Appends `message` as a JSON string and a newline, the way `send(string)` of a
/// Node parent writes it. A message that is not valid UTF-8 cannot be a JavaScript
/// string: it is refused, and the client gets the error reply [`MESSAGE_NOT_UTF8`].
pub fn encode_message(out: &mut Vec<u8>, message: &[u8]) -> Result<(), NotUtf8> {
    let text = std::str::from_utf8(message).map_err(|e| NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    out.reserve(text.len() + 3);
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.extend_from_slice(b"\"\n");
    Ok(())
}

/// A message for a `node` worker that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8 {
    /// Bytes before the first invalid one.
    pub valid_up_to: usize,
}

impl NotUtf8 {
    /// The error reply's reason.
    pub fn reason(&self) -> &'static str {
        MESSAGE_NOT_UTF8
    }
}

impl fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MESSAGE_NOT_UTF8} (invalid byte at offset {})",
            self.valid_up_to
        )
    }
}

/// One line from a `node` worker, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A reply: the next message in flight gets these bytes (no newline in them).
    Reply(Vec<u8>),
    /// The next message in flight gets the error reply with this reason
    /// ([`REPLY_HAS_NEWLINE`], [`REPLY_TOO_LONG`]).
    ErrorReply(&'static str),
    /// A Node internal message (`{"cmd":"NODE_…"}`), with its `cmd`: not a reply;
    /// ignored (logged at debug level).
    Internal(String),
    /// Not JSON: not a reply; logged and dropped. Node never writes this, so it comes
    /// from a program misusing the channel; its messages stay in flight until they
    /// are answered or time out.
    Invalid(String),
}

/// Decodes one line (without its `\n`) from a `node` worker's channel.
pub fn decode_reply(line: &[u8]) -> Incoming {
    let text = trim_json_whitespace(line);
    if text.first() == Some(&b'"') {
        return match decode_string(text) {
            Ok(s) if s.contains('\n') => Incoming::ErrorReply(REPLY_HAS_NEWLINE),
            Ok(s) if s.len() > MAX_MESSAGE => Incoming::ErrorReply(REPLY_TOO_LONG),
            Ok(s) => Incoming::Reply(s.into_bytes()),
            Err(why) => Incoming::Invalid(why),
        };
    }
    if let Err(e) = serde_json::from_slice::<IgnoredAny>(text) {
        return Incoming::Invalid(format!("not JSON: {e}"));
    }
    if text.first() == Some(&b'{') {
        // An object whose `cmd` this cannot read (a lone surrogate, a duplicate key)
        // is no internal message Node wrote: it is a reply like any other object.
        if let Some(cmd) = serde_json::from_slice::<Probe>(text)
            .ok()
            .and_then(Probe::internal)
        {
            return Incoming::Internal(cmd);
        }
    }
    let compact = compact_json(text);
    if compact.len() > MAX_MESSAGE {
        Incoming::ErrorReply(REPLY_TOO_LONG)
    } else {
        Incoming::Reply(compact)
    }
}

fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_json_whitespace(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_json_whitespace(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_json_whitespace(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Valid JSON `text` without the whitespace between tokens (Node's `JSON.stringify`
/// writes none, so that text comes back as is).
fn compact_json(text: &[u8]) -> Vec<u8> {
    if !text.iter().any(|&b| is_json_whitespace(b)) {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !is_json_whitespace(b) {
            out.push(b);
        }
    }
    out
}

/// The value of a JSON string literal `text` (quotes included, nothing after it).
/// Lone surrogates (which `JSON.stringify` writes as `\udXXX` escapes) become U+FFFD,
/// as Node's own UTF-8 conversion does when it writes such a string out.
fn decode_string(text: &[u8]) -> Result<String, String> {
    let body = text
        .strip_prefix(b"\"")
        .ok_or_else(|| "not JSON: expected a string".to_string())?;
    let body = std::str::from_utf8(body).map_err(|_| "not JSON: invalid UTF-8".to_string())?;
    let mut out = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                return if i + 1 == body.len() {
                    Ok(out)
                } else {
                    Err("not JSON: trailing characters after a string".into())
                };
            }
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                match e {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let unit = hex4(&mut chars)?;
                        out.push(utf16_char(unit, &mut chars)?);
                    }
                    other => return Err(format!("not JSON: invalid escape \\{other}")),
                }
            }
            c if u32::from(c) < 0x20 => {
                return Err("not JSON: control character in a string".into());
            }
            c => out.push(c),
        }
    }
    Err("not JSON: unterminated string".into())
}

fn hex4(chars: &mut std::str::CharIndices<'_>) -> Result<u16, String> {
    let mut v: u16 = 0;
    for _ in 0..4 {
        let d = chars
            .next()
            .and_then(|(_, c)| c.to_digit(16))
            .ok_or_else(|| "not JSON: invalid \\u escape".to_string())?;
        v = (v << 4) | d as u16;
    }
    Ok(v)
}

/// The character of UTF-16 unit `unit`, reading its low surrogate from `chars` when
/// it is a high one.
fn utf16_char(unit: u16, chars: &mut std::str::CharIndices<'_>) -> Result<char, String> {
    const HIGH: std::ops::RangeInclusive<u16> = 0xd800..=0xdbff;
    const LOW: std::ops::RangeInclusive<u16> = 0xdc00..=0xdfff;
    if HIGH.contains(&unit) {
        let mut ahead = chars.clone();
        if let (Some((_, '\\')), Some((_, 'u'))) = (ahead.next(), ahead.next()) {
            let low = hex4(&mut ahead)?;
            if LOW.contains(&low) {
                *chars = ahead;
                let c = 0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00);
                return Ok(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
        }
    }
    Ok(char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER))
}

/// The `cmd` of an object, as far as telling internal messages goes.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    cmd: Option<serde_json::Value>,
}

impl Probe {
    /// Node's own test: a string longer than `NODE_` that starts with it.
    fn internal(self) -> Option<String> {
        const PREFIX: &str = "NODE_";
        match self.cmd {
            Some(serde_json::Value::String(c))
                if c.len() > PREFIX.len() && c.starts_with(PREFIX) =>
            {
                Some(c)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(&mut out, message).expect("UTF-8 message");
        out
    }

    fn reply(line: &[u8]) -> Vec<u8> {
        match decode_reply(line) {
            Incoming::Reply(r) => r,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
        }
    }

    #[test]
    fn messages_are_json_strings_on_one_line() {
        assert_eq!(encoded(b"hello"), b"\"hello\"\n");
        assert_eq!(encoded(b""), b"\"\"\n");
        assert_eq!(
            encoded(b"say \"hi\" \\ tab\there\r"),
            b"\"say \\\"hi\\\" \\\\ tab\\there\\r\"\n"
        );
        assert_eq!(
            encoded(b"\x00\x08\x0c\x1f\x7f"),
            b"\"\\u0000\\b\\f\\u001f\x7f\"\n"
        );
        // Non-ASCII stays UTF-8, as JSON.stringify writes it (U+2028 included).
        assert_eq!(
            encoded("é\u{2028}😀".as_bytes()),
            "\"é\u{2028}😀\"\n".as_bytes()
        );
        // Appends after what is there.
        let mut out = b"\"a\"\n".to_vec();
        encode_message(&mut out, b"b").unwrap();
        assert_eq!(out, b"\"a\"\n\"b\"\n");
    }

    #[test]
    fn every_encoded_message_is_the_json_string_serde_reads_back() {
        let mut all: Vec<u8> = (0u8..0x80).collect();
        all.extend_from_slice("é€😀\u{2028}".as_bytes());
        let line = encoded(&all);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: String = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
        assert_eq!(back.as_bytes(), &all[..]);
        // And the reply decoder reads it back too (it has a newline: error reply).
        assert_eq!(
            decode_reply(&line[..line.len() - 1]),
            Incoming::ErrorReply(REPLY_HAS_NEWLINE)
        );
    }

    #[test]
    fn a_message_that_is_not_utf8_is_refused_and_nothing_is_written() {
        let mut out = b"kept".to_vec();
        let e = encode_message(&mut out, b"ab\xffcd").unwrap_err();
        assert_eq!(e, NotUtf8 { valid_up_to: 2 });
        assert_eq!(e.reason(), MESSAGE_NOT_UTF8);
        assert_eq!(out, b"kept");
        assert!(e.to_string().contains("offset 2"));
    }

    #[test]
    fn a_string_is_the_reply_as_is() {
        assert_eq!(reply(br#""got hello""#), b"got hello");
        assert_eq!(reply(br#""""#), b"");
        assert_eq!(reply(br#""a\"b\\c\/d\tz\r""#), b"a\"b\\c/d\tz\r");
        assert_eq!(
            reply("\"a\u{2028}bé\"".as_bytes()),
            "a\u{2028}bé".as_bytes()
        );
        assert_eq!(reply(br#""\u00e9\ud83d\ude00""#), "é😀".as_bytes());
        // What JSON.stringify writes for a lone surrogate.
        assert_eq!(
            reply(br#""a\ud800b\udc00""#),
            "a\u{fffd}b\u{fffd}".as_bytes()
        );
        assert_eq!(reply(br#""\ud800\u0041""#), "\u{fffd}A".as_bytes());
        // Whitespace around the value and a CR before the newline are not part of it.
        assert_eq!(reply(b"  \"x\" \r"), b"x");
    }

    #[test]
    fn a_string_with_a_newline_is_an_error_reply_never_two() {
        assert_eq!(
            decode_reply(br#""a\nb""#),
            Incoming::ErrorReply(REPLY_HAS_NEWLINE)
        );
        assert_eq!(
            decode_reply(br#""\n""#),
            Incoming::ErrorReply(REPLY_HAS_NEWLINE)
        );
        assert_eq!(
            decode_reply(br#""\u000a""#),
            Incoming::ErrorReply(REPLY_HAS_NEWLINE)
        );
    }

    #[test]
    fn other_values_are_compact_json() {
        assert_eq!(
            reply(br#"{"a":1,"b":[1,"x"],"c":null}"#),
            br#"{"a":1,"b":[1,"x"],"c":null}"#
        );
        assert_eq!(reply(b"42"), b"42");
        assert_eq!(reply(b"-1.5e3"), b"-1.5e3");
        assert_eq!(reply(b"true"), b"true");
        assert_eq!(reply(b"null"), b"null");
        assert_eq!(reply(b"[]"), b"[]");
        // Key order is kept; whitespace between tokens goes, whitespace in strings stays.
        assert_eq!(
            reply(b" { \"z\" : [ 1 , \"a b\\\" c\" ] ,\t\"a\" : { } } "),
            br#"{"z":[1,"a b\" c"],"a":{}}"#
        );
        // An object with a newline escaped in a string is one line of JSON: fine.
        assert_eq!(reply(br#"{"t":"a\nb"}"#), br#"{"t":"a\nb"}"#);
        // Lone surrogates inside values pass through escaped, as Node wrote them.
        assert_eq!(reply(br#"["\ud800"]"#), br#"["\ud800"]"#);
    }

    #[test]
    fn internal_messages_are_not_replies() {
        assert_eq!(
            decode_reply(br#"{"cmd":"NODE_TEST","x":1}"#),
            Incoming::Internal("NODE_TEST".into())
        );
        assert_eq!(
            decode_reply(br#"{"x":{"cmd":"no"}, "cmd" : "NODE_HANDLE_ACK"}"#),
            Incoming::Internal("NODE_HANDLE_ACK".into())
        );
        // Node's own test: a string longer than the prefix, starting with it, on an
        // object (not an array, not nested).
        for not_internal in [
            &br#"{"cmd":"NODE_"}"#[..],
            br#"{"cmd":"node_x"}"#,
            br#"{"cmd":"XNODE_x"}"#,
            br#"{"cmd":1}"#,
            br#"{"cmd":["NODE_X"]}"#,
            br#"{"a":{"cmd":"NODE_X"}}"#,
            br#"[{"cmd":"NODE_X"}]"#,
            br#""NODE_X""#,
            br#"{"cmd":"NODE_\ud800"}"#,
        ] {
            assert!(
                matches!(decode_reply(not_internal), Incoming::Reply(_)),
                "{}",
                String::from_utf8_lossy(not_internal)
            );
        }
    }

    #[test]
    fn lines_that_are_not_json_are_invalid_never_replies() {
        for bad in [
            &b""[..],
            b"   ",
            b"not json",
            b"\"unterminated",
            b"\"a\" \"b\"",
            b"\"a\"x",
            b"{\"a\":1",
            b"[1,]",
            b"\"bad \\x escape\"",
            b"\"bad \\u12 escape\"",
            b"\"raw \x01 control\"",
            b"\"\xff\"",
            b"{\"a\":1} {\"b\":2}",
        ] {
            assert!(
                matches!(decode_reply(bad), Incoming::Invalid(_)),
                "{}: {:?}",
                String::from_utf8_lossy(bad),
                decode_reply(bad)
            );
        }
    }

    #[test]
    fn replies_over_the_limit_are_error_replies() {
        let mut long = vec![b'"'];
        long.resize(MAX_MESSAGE + 2, b'a');
        long.push(b'"');
        assert_eq!(decode_reply(&long), Incoming::ErrorReply(REPLY_TOO_LONG));
        // At the limit after decoding is fine, however long its JSON text is.
        let mut escaped = b"\"".to_vec();
        for _ in 0..MAX_MESSAGE {
            escaped.extend_from_slice(b"\\u0001");
        }
        escaped.push(b'"');
        assert!(escaped.len() <= MAX_LINE);
        assert!(matches!(decode_reply(&escaped), Incoming::Reply(r) if r.len() == MAX_MESSAGE));
        let mut array = b"[".to_vec();
        array.resize(MAX_MESSAGE, b'1');
        array.extend_from_slice(b"]");
        assert_eq!(decode_reply(&array), Incoming::ErrorReply(REPLY_TOO_LONG));
    }

    #[test]
    fn the_channel_is_fd_3_named_in_the_environment() {
        assert_eq!(CHANNEL_ENV[0], (CHANNEL_VARS[0], "3"));
        assert_eq!(CHANNEL_ENV[0].1, CHANNEL_FD.to_string());
        assert_eq!(CHANNEL_ENV[1], (CHANNEL_VARS[1], "json"));
    }
}
