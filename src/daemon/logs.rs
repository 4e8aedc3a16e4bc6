//! Recent output per pool, for `orchd ctl CONFIG logs` (SPEC 9): workers' stderr, the
//! stdout of pools no route targets, and orchd's lifecycle lines about the pool's
//! instances (started, exited, stopped ...).
//!
//! Each pool has a ring of whole lines bounded by `[orchd] log_buffer` bytes; the
//! oldest lines are evicted first. A line costs its text plus [`ENTRY_OVERHEAD`], so
//! the bound holds for empty lines too. Every line gets a sequence number from one
//! counter for all pools: lines of several pools merge in the order they were logged.
//! Pure: no I/O; the control socket (`control.rs`) serves and follows it.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use serde_json::Value;

/// What a line costs beyond its text (the entry, the string header, the deque slot).
pub const ENTRY_OVERHEAD: usize = 64;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stderr,
    Stdout,
    /// A lifecycle line of orchd about the instance.
    Orchd,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stderr => "stderr",
            Stream::Stdout => "stdout",
            Stream::Orchd => "orchd",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogLine {
    pub seq: u64,
    pub ts: SystemTime,
    pub index: u32,
    pub stream: Stream,
    pub text: String,
}

impl LogLine {
    fn cost(&self) -> usize {
        self.text.len() + ENTRY_OVERHEAD
    }

    /// One JSON line (with its newline) for a `logs` reply, keys in reading order:
    /// `{"ts":…,"instance":"web[0]","stream":"stderr","line":…}`.
    pub fn to_json_line(&self, pool: &str) -> String {
        let ts = humantime::format_rfc3339_millis(self.ts);
        let instance = Value::String(format!("{pool}[{}]", self.index));
        let line = Value::String(self.text.clone());
        format!(
            "{{\"ts\":\"{ts}\",\"instance\":{instance},\"stream\":\"{}\",\"line\":{line}}}\n",
            self.stream.as_str()
        )
    }
}

/// The lines of one pool, at most `max` bytes (see [`ENTRY_OVERHEAD`]).
#[derive(Debug, Default)]
pub struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

impl Ring {
    /// Keep `line`, evicting the oldest lines to stay within `max`. A line larger
    /// than `max` on its own is not kept (with `max` 0, nothing is).
    fn push(&mut self, line: LogLine, max: usize) {
        let cost = line.cost();
        if cost > max {
            return;
        }
        while self.bytes + cost > max {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
        }
        self.bytes += cost;
        self.lines.push_back(line);
    }

    fn shrink_to(&mut self, max: usize) {
        while self.bytes > max {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
        }
        if self.lines.is_empty() {
            self.lines = VecDeque::new();
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Which instances a `logs` command selects: a pool, or one instance of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub pool: String,
    pub index: Option<u32>,
}

impl From<&super::control::Target<'_>> for Selector {
    fn from(t: &super::control::Target<'_>) -> Selector {
        Selector {
            pool: t.pool.to_string(),
            index: t.index,
        }
    }
}

impl Selector {
    pub fn matches(&self, pool: &str, index: u32) -> bool {
        self.pool == pool && self.index.is_none_or(|i| i == index)
    }
}

/// Whether any of `sel` selects `pool[index]`; an empty selection selects everything.
pub fn selected(sel: &[Selector], pool: &str, index: u32) -> bool {
    sel.is_empty() || sel.iter().any(|s| s.matches(pool, index))
}

/// The rings of every pool.
#[derive(Debug)]
pub struct LogBook {
    rings: HashMap<String, Ring>,
    max: usize,
    next_seq: u64,
}

impl LogBook {
    pub fn new(max: usize) -> LogBook {
        LogBook {
            rings: HashMap::new(),
            max,
            next_seq: 0,
        }
    }

    /// A new line of an instance, stamped now (not kept yet: see [`LogBook::keep`]).
    pub fn line(&mut self, index: u32, stream: Stream, text: String) -> LogLine {
        let seq = self.next_seq;
        self.next_seq += 1;
        LogLine {
            seq,
            ts: SystemTime::now(),
            index,
            stream,
            text,
        }
    }

    /// Keep `line` in the ring of `pool`.
    pub fn keep(&mut self, pool: &str, line: LogLine) {
        if self.max == 0 {
            return;
        }
        match self.rings.get_mut(pool) {
            Some(r) => r.push(line, self.max),
            None => {
                let mut r = Ring::default();
                r.push(line, self.max);
                self.rings.insert(pool.to_string(), r);
            }
        }
    }

    /// Record a line of `pool[index]`.
    #[cfg(test)]
    fn record(&mut self, pool: &str, index: u32, stream: Stream, text: String) -> LogLine {
        let line = self.line(index, stream, text);
        self.keep(pool, line.clone());
        line
    }

    /// `[orchd] log_buffer` changed (a reload): applies at once to every ring.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
        for r in self.rings.values_mut() {
            r.shrink_to(max);
        }
        self.rings.retain(|_, r| !r.lines.is_empty());
    }

    /// A pool is gone: its lines with it.
    pub fn forget(&mut self, pool: &str) {
        self.rings.remove(pool);
    }

    /// The last `n` lines that `sel` selects, over all pools, oldest first, each with
    /// its pool name.
    pub fn tail(&self, sel: &[Selector], n: usize) -> Vec<(&str, &LogLine)> {
        let mut out: Vec<(&str, &LogLine)> = Vec::new();
        if n == 0 {
            return out;
        }
        for (pool, ring) in &self.rings {
            if !sel.is_empty() && !sel.iter().any(|s| &s.pool == pool) {
                continue;
            }
            out.extend(
                ring.lines
                    .iter()
                    .rev()
                    .filter(|l| selected(sel, pool, l.index))
                    .take(n)
                    .map(|l| (pool.as_str(), l)),
            );
        }
        out.sort_by_key(|(_, l)| l.seq);
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
        out
    }

    /// Bytes held over all pools.
    pub fn bytes(&self) -> usize {
        self.rings.values().map(Ring::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[(&str, &LogLine)]) -> Vec<String> {
        v.iter()
            .map(|(p, l)| format!("{p}[{}] {}", l.index, l.text))
            .collect()
    }

    fn sel(pool: &str, index: Option<u32>) -> Selector {
        Selector {
            pool: pool.into(),
            index,
        }
    }

    #[test]
    fn evicts_whole_lines_oldest_first_within_the_bound() {
        let max = 3 * (ENTRY_OVERHEAD + 2);
        let mut b = LogBook::new(max);
        for i in 10..20 {
            b.record("web", 0, Stream::Stderr, i.to_string());
            assert!(b.bytes() <= max);
        }
        assert_eq!(
            texts(&b.tail(&[], 100)),
            ["web[0] 17", "web[0] 18", "web[0] 19"]
        );
        // A line larger than the whole buffer is not kept; nothing else is lost.
        b.record("web", 0, Stream::Stderr, "x".repeat(max));
        assert_eq!(b.tail(&[], 100).len(), 3);
    }

    #[test]
    fn zero_keeps_nothing_and_shrinking_applies_at_once() {
        let mut b = LogBook::new(0);
        b.record("web", 0, Stream::Stderr, "a".into());
        assert!(b.tail(&[], 10).is_empty());
        b.set_max(10_000);
        for i in 0..10 {
            b.record("web", 0, Stream::Stderr, i.to_string());
        }
        b.set_max(2 * (ENTRY_OVERHEAD + 1));
        assert_eq!(texts(&b.tail(&[], 10)), ["web[0] 8", "web[0] 9"]);
        b.set_max(0);
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn tail_merges_pools_in_order_and_filters_by_target() {
        let mut b = LogBook::new(1 << 20);
        b.record("web", 0, Stream::Stderr, "a".into());
        b.record("api", 0, Stream::Stdout, "b".into());
        b.record("web", 1, Stream::Orchd, "c".into());
        b.record("web", 0, Stream::Stderr, "d".into());
        assert_eq!(
            texts(&b.tail(&[], 10)),
            ["web[0] a", "api[0] b", "web[1] c", "web[0] d"]
        );
        assert_eq!(texts(&b.tail(&[], 2)), ["web[1] c", "web[0] d"]);
        assert_eq!(
            texts(&b.tail(&[sel("web", None)], 10)),
            ["web[0] a", "web[1] c", "web[0] d"]
        );
        assert_eq!(texts(&b.tail(&[sel("web", Some(0))], 1)), ["web[0] d"]);
        assert_eq!(
            texts(&b.tail(&[sel("web", Some(1)), sel("api", None)], 10)),
            ["api[0] b", "web[1] c"]
        );
        assert!(b.tail(&[sel("web", Some(0))], 0).is_empty());
        b.forget("web");
        assert_eq!(texts(&b.tail(&[], 10)), ["api[0] b"]);
    }

    #[test]
    fn json_line_names_the_instance_and_stream() {
        let mut b = LogBook::new(1 << 20);
        let l = b.record("web", 3, Stream::Orchd, "web[3] started \"x\"".into());
        let j = l.to_json_line("web");
        assert!(j.ends_with('\n') && !j[..j.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["instance"], "web[3]");
        assert_eq!(v["stream"], "orchd");
        assert_eq!(v["line"], "web[3] started \"x\"");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
