//! The checked configuration model: what the rest of orchd consumes.
//!
//! Everything here has been validated: durations parsed, paths resolved against the
//! config file's directory, regexes compiled, pool references checked. Values are
//! compared field by field by the reload diff, so every type implements `PartialEq`
//! (regexes compare by their source text).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, valid config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file as given on the command line (not canonicalized: a symlink
    /// swap must be seen as a change of content, not of path).
    pub path: PathBuf,
    pub settings: Settings,
    /// Pools in file order.
    pub pools: Vec<Pool>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Where the keys that [`crate::config::preflight`] checks sit in the file: key
    /// path (`pool.web.command`, `pool.web.cwd`) to 1-based (line, column). A pool
    /// without `cwd` has its table's position under `pool.NAME.cwd`.
    pub positions: BTreeMap<String, (usize, usize)>,
    /// Each pool's `ready`, `health`, `depends_on`, `rolling` and `max_rss`, by pool
    /// name; a pool that sets none of them may be absent (see [`Config::supervision`]).
    pub supervision: BTreeMap<String, super::Supervision>,
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Whether some route delivers messages to `pool` (its instances then get a stdin pipe).
    pub fn is_routed(&self, pool: &str) -> bool {
        self.routes.iter().any(|r| r.to == pool)
    }

    /// The readiness, health, start-order, rolling and memory settings of `pool`
    /// (the defaults for a pool that sets none, or that does not exist).
    pub fn supervision(&self, pool: &str) -> &super::Supervision {
        self.supervision
            .get(pool)
            .unwrap_or(&super::supervision::DEFAULT_SUPERVISION)
    }
}

/// The `[orchd]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `log_level`, default "info".
    pub log_level: String,
    /// `control`: unix socket path, resolved against the config's directory; None = off.
    pub control: Option<PathBuf>,
    /// `drain_timeout`, default 10s.
    pub drain_timeout: Duration,
    /// `watch`, default true.
    pub watch: bool,
    /// `error_prefix`, default "ERR ".
    pub error_prefix: String,
    /// `max_clients`, default [`DEFAULT_MAX_CLIENTS`]: connections over all routes.
    pub max_clients: u32,
    /// `log_buffer`, default [`DEFAULT_LOG_BUFFER`]: bytes of recent output kept per
    /// pool for `orchd ctl CONFIG logs`; 0 keeps nothing.
    pub log_buffer: usize,
    /// `metrics`: where `GET /metrics` is served (Prometheus text format); None = off.
    pub metrics: Option<SocketAddr>,
}

/// Default of `[orchd] log_buffer`: 256 KiB per pool.
pub const DEFAULT_LOG_BUFFER: usize = 256 * 1024;
/// The largest `[orchd] log_buffer`: 64 MiB per pool.
pub const MAX_LOG_BUFFER: usize = 64 * 1024 * 1024;

/// Default of `[orchd] max_clients`.
pub const DEFAULT_MAX_CLIENTS: u32 = 10_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            log_level: "info".into(),
            control: None,
            drain_timeout: Duration::from_secs(10),
            watch: true,
            error_prefix: "ERR ".into(),
            max_clients: DEFAULT_MAX_CLIENTS,
            log_buffer: DEFAULT_LOG_BUFFER,
            metrics: None,
        }
    }
}

/// What an instance runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `command = ["prog", "arg"]`: executed directly (PATH lookup for the program).
    Argv(Vec<String>),
    /// `command = "prog arg | other"`: run as `/bin/sh -c STRING`.
    Shell(String),
}

impl Command {
    /// The argv actually executed.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Argv(v) => v.clone(),
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Argv(v) => write!(f, "{v:?}"),
            Command::Shell(s) => write!(f, "{s:?} (via /bin/sh -c)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// `backoff = { initial, max, factor, jitter, reset_after }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// default 100ms
    pub initial: Duration,
    /// default 30s
    pub max: Duration,
    /// default 2.0; validated >= 1.0
    pub factor: f64,
    /// default 0.1; validated 0.0..=1.0
    pub jitter: f64,
    /// default 10s
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.1,
            reset_after: Duration::from_secs(10),
        }
    }
}

/// `give_up = { restarts, within, cooldown }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveUp {
    pub restarts: u32,
    pub within: Duration,
    /// None: stay failed until the next reload.
    pub cooldown: Option<Duration>,
}

/// A signal by number, with its canonical name ("TERM", without "SIG").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub number: i32,
    pub name: &'static str,
}

/// One `[pool.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Identifier: `[A-Za-z_][A-Za-z0-9_-]*`.
    pub name: String,
    pub command: Command,
    /// default 1
    pub count: u32,
    /// Resolved against the config file's directory; default: that directory.
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// default Always
    pub restart: RestartPolicy,
    pub backoff: Backoff,
    pub give_up: Option<GiveUp>,
    /// default TERM
    pub stop_signal: Signal,
    /// default 10s
    pub stop_timeout: Duration,
    /// default [`MAX_INFLIGHT_AUTO`] (`"auto"`); a number is validated >= 1
    pub max_inflight: u32,
    /// default 10000; validated >= 1
    pub queue: u32,
    /// `protocol`, default [`Protocol::Lines`] (SPEC 12).
    pub protocol: Protocol,
}

/// `protocol`: how a pool's workers take messages and give replies (SPEC 12). It
/// decides the worker's message input (a stdin pipe, or Node's IPC channel) and how
/// replies are matched to messages; the codecs live in [`crate::protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `ID`-less lines on stdin/stdout, answered in order (SPEC 5).
    #[default]
    Lines,
    /// `ID SP message` lines, answered `ID SP reply` in any order.
    Tagged,
    /// Node.js `child_process.fork()` IPC: JSON lines on the socket named by
    /// `NODE_CHANNEL_FD`, answered in order; stdin is `/dev/null`.
    Node,
}

impl Protocol {
    /// Every value, in the order the docs list them.
    pub const ALL: [Protocol; 3] = [Protocol::Lines, Protocol::Tagged, Protocol::Node];

    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Lines => "lines",
            Protocol::Tagged => "tagged",
            Protocol::Node => "node",
        }
    }

    /// The protocol a config value names.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// `Pool::max_inflight` for `max_inflight = "auto"`: an adaptive window per instance
/// (the ledger's `window.rs`).
pub const MAX_INFLIGHT_AUTO: u32 = 0;

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// `tcp://HOST:PORT` (HOST an IP address or `localhost`; `[::1]` for IPv6).
    Tcp(SocketAddr),
    /// `unix:PATH`, path resolved against the config file's directory.
    Unix(PathBuf),
    /// `stdin`: batch mode.
    Stdin,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Tcp(a) => write!(f, "tcp://{a}"),
            Source::Unix(p) => write!(f, "unix:{}", p.display()),
            Source::Stdin => f.write_str("stdin"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastBusy,
    Hash,
    Broadcast,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastBusy => "least-busy",
            Strategy::Hash => "hash",
            Strategy::Broadcast => "broadcast",
        }
    }
}

/// A compiled regex that compares equal by its source text.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::bytes::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Pattern {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// One `[[route]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub from: Source,
    /// Unix listeners only; default 0o660.
    pub mode: u32,
    /// `match`; None = match all.
    pub matcher: Option<Pattern>,
    /// A pool name that exists.
    pub to: String,
    /// default RoundRobin
    pub strategy: Strategy,
    /// `key`; only meaningful (and then defaulting to the whole message) for Hash.
    pub key: Option<Pattern>,
    /// `timeout`, default 30s; None for "0s".
    pub timeout: Option<Duration>,
    /// default 2
    pub retries: u32,
    /// default true
    pub ordered: bool,
}
