//! The control socket (SPEC 7): line commands `status`, `reload` and `plan PATH`, each
//! answered with one JSON object on one line. The socket file is created with mode
//! 0600; a stale one is replaced, a live one (another orchd answering) is an error.
//!
//! `logs [TARGET...] [-f] [-n N]` answers with one JSON line per log line
//! (`{"ts", "instance", "stream", "line"}`), oldest first, then `{"ok":true,"end":true}`;
//! an error is a single `{"ok":false,"error"}` line (log lines never have `ok`). With
//! `-f` the connection becomes a follower: no end line, new lines are pushed as they
//! are logged, and nothing more is read from it; EOF from the peer closes it (a
//! follower keeps its write side open). A follower never slows orchd down: past
//! [`FOLLOW_MAX_UNSENT`] unsent bytes its lines are dropped and counted, and once it has
//! taken half of that, a `{"dropped":N}` line says how many were lost.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::event::Event;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use serde_json::{json, Value};
use slab::Slab;

use super::logs::{selected, LogBook, Selector, Stream};
use super::net::bind_unix;
use super::outbuf::OutBuf;
use super::{Daemon, IoTarget, CONTROL};
use crate::framing::{Fill, Frame, LineBuf};

pub use crate::config::parse_signal;

/// Control commands are short; anything longer is refused.
const MAX_COMMAND: usize = 64 * 1024;
/// Unsent reply bytes past which no further command of a connection is read, until
/// the peer takes its replies (a client pipelining commands without reading them).
const MAX_UNSENT: usize = 1 << 20;
/// Unsent bytes of a `logs -f` follower past which new lines are dropped (counted).
pub const FOLLOW_MAX_UNSENT: usize = 256 * 1024;
/// The most bytes of backlog one `logs` command gets (the newest lines; a
/// `{"dropped":N}` line first says how many older ones were left out), so that
/// asking for everything of many large buffers costs a bounded copy.
pub const MAX_BACKLOG: usize = 8 << 20;
/// `logs` without `-n`: the last 10 lines, like tail(1).
pub const DEFAULT_LOG_LINES: usize = 10;

/// What a reload does to the control socket, prepared before it commits.
pub(super) enum ControlSwap {
    /// `control` did not change.
    Keep,
    /// `control` was removed: the socket closes at commit.
    Close,
    /// The new socket, bound and registered; it replaces the old one at commit.
    Open(UnixListener, PathBuf),
}

/// One control command line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand<'a> {
    Status,
    Reload,
    /// `plan PATH`: PATH as given (non-empty, trimmed), resolved by the caller.
    Plan(&'a Path),
    /// `restart TARGET...`: rolling restart; answered once done.
    Restart(Vec<Target<'a>>),
    /// `stop TARGET...`: drain, stop and hold; answered once stopped.
    Stop(Vec<Target<'a>>),
    /// `start TARGET...`: release a hold, or start a failed or exited instance.
    Start(Vec<Target<'a>>),
    /// `signal SIG TARGET...`: SIG (a number, 1 to 64) to each instance's group.
    Signal {
        signal: i32,
        targets: Vec<Target<'a>>,
    },
    /// `logs [TARGET...] [-f] [-n N]`: no target selects every pool; `lines` None is
    /// [`DEFAULT_LOG_LINES`].
    Logs {
        targets: Vec<Target<'a>>,
        follow: bool,
        lines: Option<usize>,
    },
    /// Not a command: the error to answer with.
    Invalid(String),
}

/// A TARGET of `orchd ctl` (SPEC 9): a pool, or one instance of it (`POOL/INDEX`,
/// the instance logged as `POOL[INDEX]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub pool: &'a str,
    pub index: Option<u32>,
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}/{i}", self.pool),
            None => f.write_str(self.pool),
        }
    }
}

/// Parses `POOL` or `POOL/INDEX`. Whether the pool and index exist is for the running
/// orchd to say; this only checks the shape (no whitespace or control characters, an
/// index of decimal digits).
pub fn parse_target(s: &str) -> Result<Target<'_>, String> {
    let (pool, index) = match s.split_once('/') {
        Some((p, i)) => (p, Some(i)),
        None => (s, None),
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '/';
    if pool.is_empty() || pool.chars().any(bad) {
        return Err(format!("bad TARGET {s:?}: expected POOL or POOL/INDEX"));
    }
    let index = match index {
        None => None,
        Some(i) if !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) => Some(
            i.parse::<u32>()
                .map_err(|_| format!("bad TARGET {s:?}: index too large"))?,
        ),
        Some(_) => {
            return Err(format!(
                "bad TARGET {s:?}: expected POOL or POOL/INDEX (INDEX a number)"
            ))
        }
    };
    Ok(Target { pool, index })
}

/// Targets separated by whitespace; at least one.
fn parse_targets<'a>(verb: &str, arg: &'a str) -> Result<Vec<Target<'a>>, String> {
    let targets = arg
        .split_whitespace()
        .map(parse_target)
        .collect::<Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err(format!("usage: {verb} TARGET..."));
    }
    Ok(targets)
}

/// Parses one control command line (without its newline): a verb, then its
/// arguments after one space (`plan PATH`, `restart TARGET...`, `signal SIG
/// TARGET...`). Surrounding whitespace is ignored; arguments after `status` and
/// `reload` too. Pure, so it can be unit-tested and fuzzed; `orchd ctl` also runs it
/// to tell a usage error from a failure.
pub fn parse_command(line: &str) -> ControlCommand<'_> {
    let line = line.trim();
    let (verb, arg) = line
        .split_once(' ')
        .map(|(v, a)| (v, a.trim()))
        .unwrap_or((line, ""));
    let invalid = ControlCommand::Invalid;
    match verb {
        "status" => ControlCommand::Status,
        "reload" => ControlCommand::Reload,
        "plan" if !arg.is_empty() => ControlCommand::Plan(Path::new(arg)),
        "plan" => invalid("usage: plan PATH".into()),
        "restart" => parse_targets(verb, arg).map_or_else(invalid, ControlCommand::Restart),
        "stop" => parse_targets(verb, arg).map_or_else(invalid, ControlCommand::Stop),
        "start" => parse_targets(verb, arg).map_or_else(invalid, ControlCommand::Start),
        "signal" => {
            let (sig, rest) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
            if sig.is_empty() || rest.trim().is_empty() {
                return invalid("usage: signal SIG TARGET...".into());
            }
            match (parse_signal(sig), parse_targets(verb, rest)) {
                (Ok(signal), Ok(targets)) => ControlCommand::Signal { signal, targets },
                (Err(e), _) | (_, Err(e)) => invalid(e),
            }
        }
        "logs" => parse_logs(arg),
        _ => invalid(format!(
            "unknown command {verb:?}; expected status, reload, plan PATH, restart, stop, \
             start, signal or logs"
        )),
    }
}

const LOGS_USAGE: &str = "usage: logs [POOL|POOL/INDEX]... [-f] [-n LINES]";

fn parse_logs(args: &str) -> ControlCommand<'_> {
    let mut targets = Vec::new();
    let (mut follow, mut lines) = (false, None);
    let mut words = args.split_whitespace();
    while let Some(w) = words.next() {
        match w {
            "-f" | "--follow" => follow = true,
            "-n" | "--lines" => match words.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => lines = Some(n),
                None => return ControlCommand::Invalid(format!("{LOGS_USAGE}: -n takes a number")),
            },
            w if w.starts_with('-') => {
                return ControlCommand::Invalid(format!("{LOGS_USAGE}: unknown option {w:?}"))
            }
            w => match parse_target(w) {
                Ok(t) => targets.push(t),
                Err(e) => return ControlCommand::Invalid(format!("{LOGS_USAGE}: {e}")),
            },
        }
    }
    ControlCommand::Logs {
        targets,
        follow,
        lines,
    }
}

pub struct Control {
    listener: Option<(UnixListener, PathBuf)>,
    pub(super) conns: Slab<Conn>,
    started: Option<Instant>,
    /// Recent output of every pool.
    pub(super) logs: LogBook,
    /// Connections in `logs -f` mode.
    following: Vec<usize>,
    /// Followers with new output, flushed once per loop turn.
    dirty: Vec<usize>,
}

pub(super) struct Conn {
    stream: UnixStream,
    token: Token,
    /// Tells this connection from a later one under the same slab key.
    pub(super) id: u64,
    /// A command of it (`restart`, `stop`) is answered once done: until then no
    /// further command is read, so replies stay in command order.
    pub(super) busy: bool,
    inbuf: LineBuf,
    out: OutBuf,
    eof: bool,
    /// `logs -f`: what it follows, and lines dropped since its last marker.
    follow: Option<Follow>,
    /// In `Control::dirty`.
    dirty: bool,
}

struct Follow {
    targets: Vec<Selector>,
    dropped: u64,
}

impl Control {
    pub(super) fn new(log_buffer: usize) -> Control {
        Control {
            listener: None,
            conns: Slab::new(),
            started: None,
            logs: LogBook::new(log_buffer),
            following: Vec::new(),
            dirty: Vec::new(),
        }
    }

    /// Keep a line of `pool[index]` for `logs`, and queue it to every follower that
    /// selects it, or count it as dropped for one that is too far behind.
    pub(super) fn record(&mut self, pool: &str, index: u32, stream: Stream, text: String) {
        let line = self.logs.line(index, stream, text);
        let mut json = None;
        for &k in &self.following {
            let Some(c) = self.conns.get_mut(k) else {
                continue;
            };
            let Some(f) = c.follow.as_mut() else {
                continue;
            };
            if !selected(&f.targets, pool, index) {
                continue;
            }
            let pending = c.out.pending();
            if pending >= FOLLOW_MAX_UNSENT {
                f.dropped += 1;
                continue;
            }
            let json = json.get_or_insert_with(|| line.to_json_line(pool));
            if pending + json.len() > FOLLOW_MAX_UNSENT {
                f.dropped += 1;
                continue;
            }
            if f.dropped > 0 {
                push_dropped(&mut c.out, f);
            }
            c.out.push(json.as_bytes());
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(k);
            }
        }
        self.logs.keep(pool, line);
    }
}

fn push_dropped(out: &mut OutBuf, f: &mut Follow) {
    push_json_line(out, &json!({ "dropped": f.dropped }));
    f.dropped = 0;
}

/// One JSON reply line.
fn push_json_line(out: &mut OutBuf, v: &Value) {
    out.push(v.to_string().as_bytes());
    out.push(b"\n");
}

impl Daemon {
    pub(super) fn control_open(&mut self) -> io::Result<()> {
        self.control.started.get_or_insert(self.now);
        let Some(path) = self.config.settings.control.clone() else {
            return Ok(());
        };
        let mut l = bind_unix(&path, 0o600)
            .map_err(|e| io::Error::new(e.kind(), format!("control socket: {e}")))?;
        self.poll
            .registry()
            .register(&mut l, CONTROL, Interest::READABLE)?;
        log::info!("control socket {}", path.display());
        self.control.listener = Some((l, path));
        Ok(())
    }

    /// A reload's first step for `[orchd] control`: open and register the new socket
    /// before anything is committed, so that a path that cannot be bound fails the
    /// whole reload and the old socket keeps working (like route listeners).
    pub(super) fn control_prepare(&mut self, new: Option<&Path>) -> io::Result<ControlSwap> {
        if new == self.config.settings.control.as_deref() {
            return Ok(ControlSwap::Keep);
        }
        let Some(path) = new else {
            return Ok(ControlSwap::Close);
        };
        let mut l = bind_unix(path, 0o600)
            .map_err(|e| io::Error::new(e.kind(), format!("control socket: {e}")))?;
        // Under the same token as the old one: both are registered only until this
        // reload commits or is undone, with no poll in between.
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut l, CONTROL, Interest::READABLE)
        {
            let _ = std::fs::remove_file(path);
            return Err(io::Error::new(e.kind(), format!("control socket: {e}")));
        }
        Ok(ControlSwap::Open(l, path.to_path_buf()))
    }

    /// The reload is committed: the prepared control socket replaces the old one.
    pub(super) fn control_commit(&mut self, swap: ControlSwap) {
        match swap {
            ControlSwap::Keep => {}
            ControlSwap::Close => {
                self.control_close();
                log::info!("control socket closed");
            }
            ControlSwap::Open(l, path) => {
                self.control_close();
                log::info!("control socket {}", path.display());
                self.control.listener = Some((l, path));
            }
        }
    }

    /// The reload failed: remove the socket it opened.
    pub(super) fn control_discard(&mut self, swap: ControlSwap) {
        if let ControlSwap::Open(mut l, path) = swap {
            let _ = self.poll.registry().deregister(&mut l);
            let _ = std::fs::remove_file(&path);
        }
    }

    pub(super) fn control_close(&mut self) {
        if let Some((mut l, path)) = self.control.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
            let _ = std::fs::remove_file(&path);
        }
    }

    pub(super) fn control_accept(&mut self) {
        let end = super::net::accept_loop(
            self,
            |d| d.control.listener.as_ref().map(|(l, _)| l.accept()),
            |d, (mut stream, _)| {
                let id = d.gen();
                let key = d.control.conns.vacant_entry().key();
                let token = match d.register_io(
                    &mut stream,
                    IoTarget::ControlConn(key),
                    Interest::READABLE,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        log::warn!("control: cannot watch a connection: {e}");
                        return;
                    }
                };
                d.control.conns.insert(Conn {
                    stream,
                    token,
                    id,
                    busy: false,
                    inbuf: LineBuf::new(MAX_COMMAND),
                    out: OutBuf::new(),
                    eof: false,
                    follow: None,
                    dirty: false,
                });
            },
        );
        if let super::net::AcceptEnd::Failed(e) = end {
            log::warn!("control: accept: {e}");
        }
    }

    pub(super) fn on_control_conn(&mut self, key: usize, _event: &Event) {
        self.control_serve(key);
    }

    /// Answer commands in order while the connection's unsent replies stay under
    /// [`MAX_UNSENT`]. Past it, no more is read (the rest waits in our buffer and the
    /// socket) until the peer has taken enough: its WRITABLE event brings us back here.
    /// A last command cut short by EOF (no trailing newline) is answered too.
    pub(super) fn control_serve(&mut self, key: usize) {
        loop {
            if !self.control_flush(key) {
                return;
            }
            let Some(c) = self.control.conns.get_mut(key) else {
                return;
            };
            if c.follow.is_some() {
                self.follower_read(key);
                return;
            }
            if c.out.pending() > MAX_UNSENT || c.eof || c.busy {
                return;
            }
            let cmd = match c.inbuf.next_frame() {
                Some(Frame::Line(l)) => Some(String::from_utf8_lossy(l).trim().to_string()),
                Some(Frame::TooLong) => None,
                None => match c.inbuf.fill(&mut c.stream) {
                    Ok(Fill::Data(_)) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.inbuf.shrink();
                        return;
                    }
                    Ok(Fill::Eof) | Err(_) => {
                        c.eof = true;
                        match c.inbuf.take_partial() {
                            Some(rest) if rest.len() > MAX_COMMAND => None,
                            Some(rest) => Some(String::from_utf8_lossy(&rest).trim().to_string()),
                            None => continue,
                        }
                    }
                },
            };
            let reply = match cmd {
                Some(cmd) if cmd.is_empty() => continue,
                Some(cmd) => match parse_command(&cmd) {
                    ControlCommand::Logs {
                        targets,
                        follow,
                        lines,
                    } => {
                        self.control_logs(key, &targets, follow, lines);
                        continue;
                    }
                    _ => self.control_command(key, &cmd),
                },
                None => Some(json!({"ok": false, "error": "command too long"})),
            };
            let Some(reply) = reply else {
                // Answered later (see `ctl`); the connection is busy until then.
                if let Some(c) = self.control.conns.get_mut(key) {
                    c.busy = true;
                }
                return;
            };
            if let Some(c) = self.control.conns.get_mut(key) {
                push_json_line(&mut c.out, &reply);
            }
        }
    }

    /// Write pending replies; WRITABLE interest while some are left (a status of
    /// thousands of instances exceeds a socket buffer). A peer that is gone, or that
    /// sent EOF and has all its replies, is dropped: returns false then.
    fn control_flush(&mut self, key: usize) -> bool {
        let Some(c) = self.control.conns.get_mut(key) else {
            return false;
        };
        let mut close = false;
        loop {
            let stream = &mut c.stream;
            if c.out.flush(|bytes| stream.write(bytes)).error.is_some() {
                close = true;
                break;
            }
            // A follower that dropped lines has room again: say how many.
            match c.follow.as_mut() {
                Some(f) if f.dropped > 0 => {
                    if c.out.pending() > FOLLOW_MAX_UNSENT / 2 {
                        break;
                    }
                    push_dropped(&mut c.out, f);
                }
                _ => break,
            }
        }
        let pending = c.out.pending();
        close |= c.eof && pending == 0 && !c.busy;
        if close {
            let mut c = self.control.conns.remove(key);
            self.deregister_io(&mut c.stream, c.token);
            if c.follow.is_some() {
                self.control.following.retain(|&k| k != key);
            }
            return false;
        }
        let (stream, token, registry) = (&mut c.stream, c.token, self.poll.registry());
        let rewatch = c.out.rewatch(
            pending > 0,
            Interest::READABLE | Interest::WRITABLE,
            Interest::READABLE,
            |i| registry.reregister(stream, token, i),
        );
        if let Err(e) = rewatch {
            log::warn!("control: cannot change interest: {e}");
        }
        true
    }

    /// Write what followers were given this turn.
    pub(super) fn control_flush_followers(&mut self) {
        for key in std::mem::take(&mut self.control.dirty) {
            if let Some(c) = self.control.conns.get_mut(key) {
                c.dirty = false;
                self.control_flush(key);
            }
        }
    }

    /// A follower sends nothing more that matters: read and discard, and close on EOF.
    fn follower_read(&mut self, key: usize) {
        let Some(c) = self.control.conns.get_mut(key) else {
            return;
        };
        let mut scratch = [0u8; 512];
        loop {
            match io::Read::read(&mut c.stream, &mut scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        let mut c = self.control.conns.remove(key);
        self.deregister_io(&mut c.stream, c.token);
        self.control.following.retain(|&k| k != key);
    }

    /// `logs`: the backlog, then the end line or (with `-f`) follower mode.
    fn control_logs(&mut self, key: usize, given: &[Target], follow: bool, lines: Option<usize>) {
        let targets: Vec<Selector> = given.iter().map(Selector::from).collect();
        let mut out = Vec::new();
        // Every target names a pool and, if it gives one, an index that pool has.
        match self.check_targets(given) {
            Err(error) => {
                out.extend_from_slice(json!({"ok": false, "error": error}).to_string().as_bytes());
                out.push(b'\n');
            }
            Ok(()) => {
                let n = lines.unwrap_or(DEFAULT_LOG_LINES);
                let tail = self.control.logs.tail(&targets, n);
                let mut newest: Vec<String> = Vec::new();
                let mut bytes = 0;
                for (pool, line) in tail.iter().rev() {
                    let json = line.to_json_line(pool);
                    bytes += json.len();
                    if bytes > MAX_BACKLOG {
                        break;
                    }
                    newest.push(json);
                }
                let left_out = tail.len() - newest.len();
                if left_out > 0 {
                    out.extend_from_slice(format!("{{\"dropped\":{left_out}}}\n").as_bytes());
                }
                for json in newest.iter().rev() {
                    out.extend_from_slice(json.as_bytes());
                }
                if !follow {
                    out.extend_from_slice(b"{\"ok\":true,\"end\":true}\n");
                }
            }
        }
        let following = follow && !out.starts_with(b"{\"ok\":false");
        let Some(c) = self.control.conns.get_mut(key) else {
            return;
        };
        c.out.push(&out);
        if following {
            c.follow = Some(Follow {
                targets,
                dropped: 0,
            });
            self.control.following.push(key);
        }
    }

    /// The reply to one command of connection `conn`; None: it comes later, once the
    /// action is done (`restart`, `stop`), and the loop never waits for it.
    fn control_command(&mut self, conn: usize, cmd: &str) -> Option<Value> {
        let reply = match parse_command(cmd) {
            ControlCommand::Status => self.status_json(),
            ControlCommand::Reload => match self.reload_from_disk("control socket") {
                Ok(summary) => json!({"ok": true, "summary": summary}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            ControlCommand::Plan(path) => match self.plan_for(path) {
                Ok(plan) => {
                    json!({"ok": true, "summary": plan.summary(), "plan": plan.to_string()})
                }
                Err(e) => json!({"ok": false, "error": e}),
            },
            ControlCommand::Restart(targets) => return self.ctl_restart(conn, &targets),
            ControlCommand::Stop(targets) => return self.ctl_stop(conn, &targets),
            ControlCommand::Start(targets) => self.ctl_start(&targets),
            ControlCommand::Signal { signal, targets } => self.ctl_signal(signal, &targets),
            ControlCommand::Invalid(error) => json!({"ok": false, "error": error}),
            // Answered by `control_logs` (several lines, maybe a follower).
            ControlCommand::Logs { .. } => json!({"ok": false, "error": "logs: internal"}),
        };
        Some(reply)
    }

    /// The late reply of a `restart` or `stop`: the connection (if still the same)
    /// gets it and goes on with the commands it sent meanwhile.
    pub(super) fn control_reply_later(&mut self, conn: usize, id: u64, reply: Value) {
        let Some(c) = self.control.conns.get_mut(conn).filter(|c| c.id == id) else {
            return;
        };
        c.busy = false;
        push_json_line(&mut c.out, &reply);
        self.control_serve(conn);
    }

    /// Everything `--status` shows, as one JSON object.
    pub(super) fn status_json(&self) -> Value {
        let now = Instant::now();
        let mut pools = Vec::new();
        for (pk, p) in self.pools.iter() {
            let mut instances = Vec::new();
            let incoming: Vec<usize> = p
                .roll
                .iter()
                .flat_map(|r| r.incoming())
                .map(|(_, k)| k)
                .collect();
            for &k in p.slots.iter().chain(&p.retiring).chain(incoming.iter()) {
                let i = &self.instances[k];
                let (inflight, answered) = self.instance_counts(k);
                let uptime = match i.life.state {
                    crate::supervisor::lifecycle::State::Running { since, .. } => {
                        Some(now.duration_since(since).as_millis() as u64)
                    }
                    _ => None,
                };
                // Read now, for this answer only: nothing samples in the background.
                let usage = i.pid().and_then(crate::sys::process_usage);
                instances.push(json!({
                    "index": i.index,
                    "pid": i.pid(),
                    "state": i.life.state_name(now).as_str(),
                    "reason": self.instance_reason(k),
                    "retiring": i.retiring(),
                    "replacement": incoming.contains(&k),
                    "uptime_ms": uptime,
                    "restarts": i.life.restarts,
                    "inflight": inflight,
                    "answered": answered,
                    "cpu_seconds": usage.map(|u| (u.cpu_seconds * 100.0).round() / 100.0),
                    "rss_bytes": usage.map(|u| u.rss_bytes),
                    "last_exit": i.last_exit_text(),
                }));
            }
            pools.push(json!({
                "name": p.cfg.name,
                "count": p.cfg.count,
                "removed": p.removed,
                "queued": self.pool_queued(pk),
                "instances": instances,
            }));
        }
        json!({
            "ok": true,
            "pid": std::process::id(),
            "config": self.config.path.display().to_string(),
            "uptime_ms": self.control.started.map(|s| now.duration_since(s).as_millis() as u64),
            "pools": pools,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_verbs() {
        assert_eq!(parse_command("status"), ControlCommand::Status);
        assert_eq!(parse_command("  reload \r"), ControlCommand::Reload);
        assert_eq!(
            parse_command("plan  /etc/orchd.toml "),
            ControlCommand::Plan(Path::new("/etc/orchd.toml"))
        );
        assert_eq!(
            parse_command("plan a b.toml"),
            ControlCommand::Plan(Path::new("a b.toml"))
        );
        // Extra words after a verb without arguments are ignored, as before.
        assert_eq!(parse_command("status now"), ControlCommand::Status);
    }

    #[test]
    fn parses_the_operation_verbs() {
        let t = |pool, index| Target { pool, index };
        assert_eq!(
            parse_command("restart web  db/2"),
            ControlCommand::Restart(vec![t("web", None), t("db", Some(2))])
        );
        assert_eq!(
            parse_command("stop web/0"),
            ControlCommand::Stop(vec![t("web", Some(0))])
        );
        assert_eq!(
            parse_command("start web"),
            ControlCommand::Start(vec![t("web", None)])
        );
        assert_eq!(
            parse_command("signal SIGUSR1 web web/1"),
            ControlCommand::Signal {
                signal: libc::SIGUSR1,
                targets: vec![t("web", None), t("web", Some(1))]
            }
        );
        assert_eq!(
            parse_command("signal 9 web"),
            ControlCommand::Signal {
                signal: 9,
                targets: vec![t("web", None)]
            }
        );
        assert_eq!(t("web", Some(3)).to_string(), "web/3");
        for bad in [
            "restart",
            "stop ",
            "start web/",
            "start web/x",
            "start /1",
            "stop web/1/2",
            "restart web/99999999999",
            "signal",
            "signal USR1",
            "signal NOPE web",
            "signal 0 web",
            "signal 65 web",
        ] {
            assert!(
                matches!(parse_command(bad), ControlCommand::Invalid(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_everything_else_with_a_message() {
        assert_eq!(
            parse_command("plan"),
            ControlCommand::Invalid("usage: plan PATH".into())
        );
        assert_eq!(
            parse_command("plan   "),
            ControlCommand::Invalid("usage: plan PATH".into())
        );
        for bad in [
            "",
            "STATUS",
            "stat",
            "status\tx",
            "\u{0}",
            "reload\u{0}",
            "logs\tweb",
        ] {
            match parse_command(bad) {
                ControlCommand::Invalid(e) => {
                    assert!(e.starts_with("unknown command"), "{bad:?}: {e}")
                }
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }

    fn logs(
        targets: &[(&'static str, Option<u32>)],
        follow: bool,
        lines: Option<usize>,
    ) -> ControlCommand<'static> {
        ControlCommand::Logs {
            targets: targets
                .iter()
                .map(|&(pool, index)| Target { pool, index })
                .collect(),
            follow,
            lines,
        }
    }

    #[test]
    fn parses_logs_targets_and_options() {
        assert_eq!(parse_command("logs"), logs(&[], false, None));
        assert_eq!(
            parse_command("logs web api/2 -f -n 5"),
            logs(&[("web", None), ("api", Some(2))], true, Some(5))
        );
        assert_eq!(
            parse_command("logs  -n 0  --follow web/0"),
            logs(&[("web", Some(0))], true, Some(0))
        );
        for bad in [
            "logs -n",
            "logs -n x",
            "logs -n -1",
            "logs -x",
            "logs web/",
            "logs /1",
            "logs web/1/2",
            "logs web/-1",
        ] {
            match parse_command(bad) {
                ControlCommand::Invalid(e) => assert!(e.starts_with("usage: logs"), "{bad:?}: {e}"),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }
}
