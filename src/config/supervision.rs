//! The checked form of a pool's readiness, health, start-order, rolling and memory
//! settings (SPEC sections 3 and 10): `ready`, `health`, `depends_on`, `rolling`,
//! `max_rss`.
//!
//! They live in [`Config::supervision`](super::Config::supervision), keyed by pool
//! name, rather than in [`Pool`](super::Pool) itself so that code building `Pool`
//! values field by field keeps compiling while the daemon is being restructured; once
//! that has landed the struct can become a field of `Pool` (`pool.supervision`).
//! Every setting here applies in place on reload (SPEC section 6).

use std::time::Duration;

use super::model::{Command, Pattern};

/// Default of `ready.timeout`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `health.every`.
pub const DEFAULT_HEALTH_EVERY: Duration = Duration::from_secs(10);
/// Default of `health.timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of `health.failures`.
pub const DEFAULT_HEALTH_FAILURES: u32 = 3;
/// The shortest `health.every`: a probe storm over many instances would load orchd
/// itself more than the workers it watches.
pub const MIN_HEALTH_EVERY: Duration = Duration::from_millis(100);
/// The most consecutive failures `health.failures` may ask for.
pub const MAX_HEALTH_FAILURES: u32 = 1000;
/// The longest `health.send` line: a message's limit (SPEC section 5).
pub const MAX_SEND_BYTES: usize = 1 << 20;
/// The smallest `max_rss`: below it no real worker could run without being restarted.
pub const MIN_MAX_RSS: u64 = 1 << 20;
/// How often RSS is checked while some pool sets `max_rss` (SPEC section 10).
pub const RSS_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Default of `rolling.parallel`.
pub const DEFAULT_ROLLING_PARALLEL: u32 = 1;

/// When a started instance counts as ready.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadyWhen {
    /// `log = REGEX`: a line of its output (stderr, and stdout where it is not the
    /// reply channel) matches.
    Log(Pattern),
    /// `after = DURATION`: it has been running that long.
    After(Duration),
    /// `probe = true`: its first health probe, sent at spawn, passed.
    Probe,
}

/// `ready = { log | after | probe, timeout }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    pub when: ReadyWhen,
    /// Not ready within this (default [`DEFAULT_READY_TIMEOUT`]): a failed start.
    pub timeout: Duration,
}

/// What a health probe does.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// `send`/`expect`: `send` is written to the instance like a message (it never
    /// contains a newline); its reply line must match `expect`.
    Send { send: String, expect: Pattern },
    /// `exec`: a command run with the pool's cwd, env and user must exit 0.
    Exec(Command),
}

/// `health = { send+expect | exec, every, timeout, failures }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub probe: Probe,
    /// Time between probes (default [`DEFAULT_HEALTH_EVERY`]).
    pub every: Duration,
    /// A probe not passed within this fails (default [`DEFAULT_HEALTH_TIMEOUT`]);
    /// for `send`, counted from when the worker can reach the probe.
    pub timeout: Duration,
    /// Consecutive failures that restart the instance (default 3).
    pub failures: u32,
}

/// `rolling.order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollOrder {
    /// Start the replacement, drain the old instance once the replacement is ready.
    StartFirst,
    /// Drain and stop the old instance first (a worker holding a fixed port or lock).
    StopFirst,
}

impl RollOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            RollOrder::StartFirst => "start-first",
            RollOrder::StopFirst => "stop-first",
        }
    }
}

/// `rolling = { parallel, order }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolling {
    /// Replacements under way at once; >= 1.
    pub parallel: u32,
    pub order: RollOrder,
}

impl Default for Rolling {
    fn default() -> Self {
        DEFAULT_ROLLING
    }
}

const DEFAULT_ROLLING: Rolling = Rolling {
    parallel: DEFAULT_ROLLING_PARALLEL,
    order: RollOrder::StartFirst,
};

/// A pool's readiness, health, start-order, rolling and memory settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Supervision {
    /// None: ready as soon as spawned (messages at once; a roll counts 1 s of running).
    pub ready: Option<Ready>,
    pub health: Option<Health>,
    /// Pools (by name, each defined, no cycle) this one starts after and stops before.
    pub depends_on: Vec<String>,
    pub rolling: Rolling,
    /// Bytes; None: no limit.
    pub max_rss: Option<u64>,
}

/// The settings of a pool that sets none of them.
pub(crate) static DEFAULT_SUPERVISION: Supervision = Supervision {
    ready: None,
    health: None,
    depends_on: Vec::new(),
    rolling: DEFAULT_ROLLING,
    max_rss: None,
};

impl Supervision {
    /// The names of the settings that differ between `self` and `other`, for the
    /// reload plan (all apply in place).
    pub fn changed(&self, other: &Supervision) -> Vec<&'static str> {
        [
            ("ready", self.ready != other.ready),
            ("health", self.health != other.health),
            ("depends_on", self.depends_on != other.depends_on),
            ("rolling", self.rolling != other.rolling),
            ("max_rss", self.max_rss != other.max_rss),
        ]
        .iter()
        .filter(|(_, c)| *c)
        .map(|(n, _)| *n)
        .collect()
    }
}
