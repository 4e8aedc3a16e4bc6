//! Logging setup: env_logger on stderr, as text or one JSON object per line.
//!
//! Level precedence: `--log-level`, then `RUST_LOG`, then the config's `log_level`.
//! Each is a level or a `RUST_LOG`-style filter, checked by [`check_filter`]: a bad
//! `--log-level` is a usage error and a bad `log_level` a config error; a bad
//! `RUST_LOG` is ignored with a warning (it is not orchd's own setting, and refusing
//! to start over it would turn a typo in a shell profile into an outage).
//! Worker output is logged with the instance as target (`upper[2]`), so `RUST_LOG`
//! filters per pool (`RUST_LOG=info,upper=warn`). When the level comes from the config,
//! a reload that changes `log_level` takes effect at once.
//!
//! Logging never blocks the event loop. Records go to a [`Sink`] that writes what
//! stderr takes at once and keeps the rest in a buffer of at most [`LOG_BUFFER`] bytes;
//! when the buffer is full, whole records are dropped and counted, and once the buffer
//! is down to half full a warning says how many (`N log line(s) dropped`). How stderr is
//! written depends on what fd 2 is, checked once at start-up:
//! - pipe, FIFO, terminal or other character device: orchd opens `/proc/self/fd/2`
//!   again (`O_WRONLY|O_NONBLOCK|O_NOCTTY`) and writes to that. The new open file
//!   description is orchd's own, so `O_NONBLOCK` never reaches the inherited one,
//!   which is shared with whoever started orchd (a shell, a terminal).
//! - socket (journald's stream socket): `send(2)` with `MSG_DONTWAIT`.
//! - regular file or block device: plain writes (they do not wait for a reader).
//! - a pipe or terminal that cannot be opened again (no `/proc`, owned by another
//!   user): written only when `poll(2)` reports room, at most `PIPE_BUF` bytes at a
//!   time, which a pipe takes without blocking.
//! - fd 2 closed: records are discarded.
//!
//! The event loop calls [`flush`] once per turn while bytes are pending and polls the
//! fd for WRITABLE only then, so an idle orchd still makes no system calls. At exit,
//! [`final_flush`] waits a bounded time for the rest to be taken.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::sys;

/// Most bytes of log output kept while stderr does not take them.
pub const LOG_BUFFER: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The installed logger: env_logger behind a lock so its filter can be swapped.
struct Reloadable {
    inner: RwLock<env_logger::Logger>,
    format: LogFormat,
    /// The filter came from the config (not a flag or RUST_LOG): reloads may change it.
    from_config: bool,
}

static LOGGER: OnceLock<Reloadable> = OnceLock::new();

impl log::Log for Reloadable {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.read().is_ok_and(|l| l.enabled(metadata))
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(l) = self.inner.read() {
            l.log(record);
            report_dropped(&l);
        }
    }

    fn flush(&self) {
        if let Ok(l) = self.inner.read() {
            l.flush();
        }
    }
}

/// orchd's own records show as `orchd` (filters still see the module path); worker
/// output keeps its `pool[i]` target.
fn shown_target<'a>(r: &'a log::Record<'_>) -> &'a str {
    let t = r.target();
    if t.starts_with("orchd::") {
        "orchd"
    } else {
        t
    }
}

fn build(filter: &str, format: LogFormat) -> env_logger::Logger {
    let mut b = env_logger::Builder::new();
    // Worker output passes through unchanged on a terminal; escape sequences are
    // stripped elsewhere, as env_logger does for stderr.
    let style = if sink().tty {
        env_logger::WriteStyle::Always
    } else {
        env_logger::WriteStyle::Never
    };
    b.parse_filters(filter)
        .target(env_logger::Target::Pipe(Box::new(SinkWriter)))
        .write_style(style);
    match format {
        LogFormat::Text => {
            b.format(|buf, r| {
                writeln!(
                    buf,
                    "{} {:<5} {}: {}",
                    buf.timestamp_millis(),
                    r.level(),
                    shown_target(r),
                    r.args()
                )
            });
        }
        LogFormat::Json => {
            b.format(|buf, r| {
                let obj = serde_json::json!({
                    "ts": buf.timestamp_millis().to_string(),
                    "level": r.level().as_str(),
                    "target": shown_target(r),
                    "msg": r.args().to_string(),
                });
                writeln!(buf, "{obj}")
            });
        }
    }
    b.build()
}

/// The level names a filter takes (in any case), as `log` parses them.
pub const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Checks a level or `RUST_LOG`-style filter as env_logger reads it: directives
/// separated by commas, each `LEVEL` or `TARGET=LEVEL`, then optionally `/REGEX`.
///
/// Stricter than env_logger on purpose. env_logger takes a bare word that is not a
/// level as a target to log at every level, so `verbose` silences everything else,
/// errors included; and it drops a directive whose level it does not know. Both are
/// errors here (a target at every level is written `TARGET=trace`). The error says
/// what is wrong, without the filter itself.
pub fn check_filter(spec: &str) -> Result<(), String> {
    let expected = "expected off, error, warn, info, debug or trace";
    if spec.trim().is_empty() {
        return Err(format!("empty filter ({expected})"));
    }
    let (directives, regex) = match spec.split_once('/') {
        Some((_, r)) if r.contains('/') => {
            return Err("more than one \"/\" (the filter is DIRECTIVES/REGEX)".into())
        }
        Some((d, r)) => (d, Some(r)),
        None => (spec, None),
    };
    let is_level = |s: &str| s.parse::<log::LevelFilter>().is_ok();
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let parts: Vec<&str> = d.split('=').map(str::trim).collect();
        match parts.as_slice() {
            [level] if is_level(level) => {}
            [word] => {
                return Err(format!(
                    "unknown level {word:?} ({expected}; for one target, write TARGET=LEVEL)"
                ))
            }
            ["", _] => return Err(format!("missing target before \"=\" in {d:?}")),
            [target, ""] => return Err(format!("missing level after \"{target}=\"")),
            [target, level] if !is_level(level) => {
                return Err(format!(
                    "unknown level {level:?} for target {target:?} ({expected})"
                ))
            }
            [_, _] => {}
            _ => {
                return Err(format!(
                    "{d:?} has more than one \"=\" (expected TARGET=LEVEL)"
                ))
            }
        }
    }
    if let Some(r) = regex {
        if let Err(e) = regex::Regex::new(r) {
            let reason = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string();
            return Err(format!("invalid regular expression after \"/\": {reason}"));
        }
    }
    Ok(())
}

/// Install the global logger. `flag` is `--log-level` and `config_level` the config's
/// `log_level`, both already checked with [`check_filter`]. A `RUST_LOG` that fails
/// the check is ignored with a warning.
pub fn init(flag: Option<&str>, config_level: &str, format: LogFormat) {
    let mut bad_env = None;
    // Looked at only when it decides: no warning about a RUST_LOG that --log-level overrides.
    let env = match std::env::var("RUST_LOG") {
        Ok(env) if flag.is_none() && !env.trim().is_empty() => match check_filter(&env) {
            Ok(()) => Some(env),
            Err(why) => {
                bad_env = Some((env, why));
                None
            }
        },
        _ => None,
    };
    let (filter, from_config) = match (flag, env) {
        (Some(level), _) => (level.to_string(), false),
        (None, Some(env)) => (env, false),
        _ => (config_level.to_string(), true),
    };
    let logger = build(&filter, format);
    let max = logger.filter();
    let r = LOGGER.get_or_init(|| Reloadable {
        inner: RwLock::new(logger),
        format,
        from_config,
    });
    if log::set_logger(r).is_ok() {
        log::set_max_level(max);
    }
    if let Some((env, why)) = bad_env {
        log::warn!("RUST_LOG={env:?} ignored: {why}");
    }
}

/// A reload changed the config's `log_level`.
pub fn config_level_changed(level: &str) {
    let Some(r) = LOGGER.get() else {
        return;
    };
    if !r.from_config {
        log::info!("log_level change ignored: --log-level or RUST_LOG decides the level");
        return;
    }
    let logger = build(level, r.format);
    let max = logger.filter();
    if let Ok(mut l) = r.inner.write() {
        *l = logger;
    }
    log::set_max_level(max);
    log::info!("log level is now {level}");
}

// ----- the stderr sink ------------------------------------------------------------

/// How records reach stderr; see the module docs.
enum Out {
    /// fd 2 is closed: records are discarded.
    Closed,
    /// Regular file or block device: plain writes to fd 2.
    Plain,
    /// Pipe, FIFO, terminal, character device: orchd's own non-blocking description.
    Reopened(File),
    /// Socket: a duplicate of fd 2, written with `MSG_DONTWAIT`.
    Socket(OwnedFd),
    /// Pipe or terminal that could not be reopened: fd 2, written only when poll(2)
    /// reports room, at most `PIPE_BUF` bytes at a time.
    Guarded,
}

impl Out {
    fn open() -> Out {
        let kind = match sys::fd_file_type(2) {
            Ok(k) => k,
            Err(_) => return Out::Closed,
        };
        match kind {
            libc::S_IFREG | libc::S_IFBLK => Out::Plain,
            libc::S_IFSOCK => match sys::dup_cloexec(2) {
                Ok(fd) => Out::Socket(fd),
                Err(_) => Out::Guarded,
            },
            _ => {
                // O_CLOEXEC comes with std's open.
                let reopened = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open("/proc/self/fd/2");
                match reopened {
                    Ok(f) => Out::Reopened(f),
                    Err(_) => Out::Guarded,
                }
            }
        }
    }

    /// One write attempt: `WouldBlock` when stderr takes nothing now.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Closed => Ok(buf.len()),
            Out::Plain => sys::write_fd(2, buf),
            Out::Reopened(f) => f.write(buf),
            Out::Socket(fd) => sys::send_nonblocking(fd.as_raw_fd(), buf),
            Out::Guarded => {
                if !sys::wait_writable(2, Duration::ZERO)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                sys::write_fd(2, &buf[..buf.len().min(libc::PIPE_BUF)])
            }
        }
    }

    /// The fd to poll for WRITABLE while output is pending (none where writes never
    /// wait).
    fn poll_fd(&self) -> Option<i32> {
        match self {
            Out::Closed | Out::Plain => None,
            Out::Reopened(f) => Some(f.as_raw_fd()),
            Out::Socket(fd) => Some(fd.as_raw_fd()),
            Out::Guarded => Some(2),
        }
    }
}

/// orchd's stderr: what it takes now is written, the rest waits in a bounded buffer.
struct Sink {
    out: Out,
    /// Bytes not yet taken by stderr: `buf[pos..]`. Always whole records, except that
    /// the first one may have been written in part.
    buf: Vec<u8>,
    pos: usize,
    /// Records dropped because the buffer was full, not yet reported.
    dropped: u64,
}

impl Sink {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Write as much of the backlog as stderr takes now. A hard error (the reader is
    /// gone) discards the backlog: nobody could ever read it.
    fn flush(&mut self) {
        while self.pos < self.buf.len() {
            match self.out.write(&self.buf[self.pos..]) {
                Ok(0) => break,
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.pos = self.buf.len(),
            }
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > 64 * 1024 {
                self.buf = Vec::new();
            }
        } else if self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// One whole record. Written at once if nothing is waiting, else queued if it
    /// fits, else dropped (and counted).
    fn push(&mut self, rec: &[u8]) {
        self.flush();
        let mut rest = rec;
        if self.pending() == 0 {
            loop {
                match self.out.write(rest) {
                    Ok(n) if n >= rest.len() => return,
                    Ok(0) => break,
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
            if rest.len() < rec.len() {
                // Started: the rest must follow, or the next record would be glued
                // to half a line.
                self.buf.extend_from_slice(rest);
                return;
            }
        }
        if self.pending() + rest.len() <= LOG_BUFFER {
            self.buf.extend_from_slice(rest);
        } else {
            self.dropped += 1;
        }
    }
}

struct SinkCell {
    sink: Mutex<Sink>,
    /// fd 2 is a terminal (decides whether escape sequences pass through).
    tty: bool,
}

static SINK: OnceLock<SinkCell> = OnceLock::new();

fn sink() -> &'static SinkCell {
    SINK.get_or_init(|| SinkCell {
        sink: Mutex::new(Sink {
            out: Out::open(),
            buf: Vec::new(),
            pos: 0,
            dropped: 0,
        }),
        tty: sys::is_tty(2),
    })
}

fn lock() -> MutexGuard<'static, Sink> {
    sink().sink.lock().unwrap_or_else(|e| e.into_inner())
}

/// What env_logger writes to: each `write` is one whole formatted record.
struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock().push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Once the backlog is down to half full, say how many records were dropped (as a normal
/// record, in the configured format).
fn report_dropped(l: &env_logger::Logger) {
    let n = {
        let mut s = lock();
        if s.dropped == 0 || s.pending() > LOG_BUFFER / 2 {
            return;
        }
        std::mem::take(&mut s.dropped)
    };
    log::Log::log(
        l,
        &log::Record::builder()
            .level(log::Level::Warn)
            .target("orchd::logging")
            .args(format_args!(
                "{n} log line(s) dropped: stderr was not read fast enough"
            ))
            .build(),
    );
}

/// Write what stderr takes now. Returns the fd to poll for WRITABLE when bytes are
/// still waiting, `None` when nothing is (or writes never wait). Called by the event
/// loop once per turn.
pub fn flush() -> Option<i32> {
    let (pending, dropped) = {
        let mut s = lock();
        s.flush();
        (s.pending(), s.dropped)
    };
    if dropped > 0 && pending <= LOG_BUFFER / 2 {
        if let Some(r) = LOGGER.get() {
            if let Ok(l) = r.inner.read() {
                report_dropped(&l);
            }
        }
    }
    let s = lock();
    if s.pending() > 0 {
        s.out.poll_fd()
    } else {
        None
    }
}

/// At exit: wait up to `limit` for stderr to take what is left (a stalled reader
/// costs at most `limit`).
pub fn final_flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let Some(fd) = flush() else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match sys::wait_writable(fd, left) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_with_known_levels_pass() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,upper=debug",
            "upper[2]=off",
            "info, orchd::daemon = trace ,",
            "info/ready",
            "warn,upper=info/^x.*y$",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn unknown_levels_and_malformed_filters_fail() {
        for (bad, says) in [
            ("verbose", "unknown level \"verbose\""),
            (
                "warn,upper=loud",
                "unknown level \"loud\" for target \"upper\"",
            ),
            ("upper", "unknown level \"upper\""),
            ("", "empty filter"),
            (" ", "empty filter"),
            ("=debug", "missing target"),
            ("upper=", "missing level after \"upper=\""),
            ("a=b=c", "more than one \"=\""),
            ("info/a/b", "more than one \"/\""),
            ("info/(", "invalid regular expression"),
        ] {
            match check_filter(bad) {
                Ok(()) => panic!("{bad:?} accepted"),
                Err(e) => assert!(e.contains(says), "{bad:?}: {e}"),
            }
        }
    }

    /// A sink over one end of a socketpair whose other end nobody reads.
    fn stalled() -> (Sink, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd: OwnedFd = a.into();
        let sink = Sink {
            out: Out::Socket(fd),
            buf: Vec::new(),
            pos: 0,
            dropped: 0,
        };
        (sink, b)
    }

    #[test]
    fn a_stalled_reader_bounds_the_buffer_and_counts_drops() {
        let (mut s, _peer) = stalled();
        let rec = vec![b'x'; 999];
        let mut rec = rec;
        rec.push(b'\n');
        for _ in 0..5000 {
            s.push(&rec);
        }
        assert!(s.pending() <= LOG_BUFFER, "{}", s.pending());
        assert!(s.dropped > 0);
        // Whole records only: the backlog ends with a newline.
        assert_eq!(s.buf.last(), Some(&b'\n'));
    }

    #[test]
    fn the_backlog_drains_in_order_once_read() {
        use std::io::Read;
        let (mut s, mut peer) = stalled();
        for i in 0..3000 {
            s.push(format!("line {i:05} {}\n", "y".repeat(200)).as_bytes());
        }
        let dropped = s.dropped;
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            s.flush();
            match peer.read(&mut chunk) {
                Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ if s.pending() == 0 => break,
                _ => {}
            }
        }
        let text = String::from_utf8(got).unwrap();
        let numbers: Vec<u32> = text.lines().map(|l| l[5..10].parse().unwrap()).collect();
        assert_eq!(numbers.len() as u64 + dropped, 3000);
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "out of order");
        assert_eq!(numbers[0], 0);
    }
}
