//! From the parsed document to the checked model: per-section deserialization that
//! keeps going after an error, then semantic checks, each error with its location.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

use super::error::ConfigError;
use super::listen::{parse_mode, parse_source, socket_identity, tcp_overlap};
mod health;

use super::model::{
    Backoff, Command, Config, GiveUp, Pattern, Pool, Protocol, RestartPolicy, Route, Settings,
    Source, Strategy, MAX_LOG_BUFFER,
};
use super::raw::{
    Bytes, Dur, Inflight, Num, RawCommand, RawPool, RawRoute, RawSettings, UInt, COMMAND_EXPECTED,
    DURATION_EXPECTED,
};
use super::signal::{known_signal_names, signal_by_name};
use super::source::{self, describe_value, quote, KeyPath, Seg};
use super::supervision::Supervision;

/// Most errors reported for one section (`[orchd]`, one pool, one route); each error
/// drops one key, so this also bounds the retries.
const MAX_SECTION_ERRORS: usize = 64;

const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
const RESTART_POLICIES: &[&str] = &["always", "on-failure", "never"];
const STRATEGIES: &[&str] = &["round-robin", "least-busy", "hash", "broadcast"];
const SOURCE_EXPECTED: &str = "\"tcp://HOST:PORT\" (HOST an IPv4 address, [IPv6 address] \
     or localhost), \"unix:PATH\" or \"stdin\"";

/// Keys (relative to their section) whose value was rejected while deserializing and
/// dropped: checks that depend on them are skipped so that one mistake gives one error.
#[derive(Debug, Default)]
struct Failed(Vec<KeyPath>);

impl Failed {
    fn has(&self, rel: &[&str]) -> bool {
        let q = KeyPath(rel.iter().map(|k| Seg::Key((*k).to_string())).collect());
        self.0.iter().any(|f| q.starts_with(f))
    }
}

/// `"a", "b" or "c"`
fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Lexically tidies a path: drops `.` components and doubled or trailing slashes.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    p.components().collect()
}

/// `p` resolved against `dir` (absolute paths are kept).
pub(crate) fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        normalize(p)
    } else {
        normalize(&dir.join(p))
    }
}

/// The one-line reason of a regex error (regex's own text spans several lines).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    if let Some(line) = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
    {
        return line.to_string();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Rewrites serde's "invalid type: X, expected Y" into "expected Y, found X".
fn rewrite_message(msg: &str, found: Option<String>) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((unexpected, expected)) = rest.rsplit_once(", expected ") {
                let found = found.unwrap_or_else(|| unexpected.replace('`', ""));
                return format!("expected {expected}, found {found}");
            }
        }
    }
    msg.replace('\n', "; ")
}

/// serde's "unknown field `x`, expected one of `a`, `b`": the field name and the list.
fn parse_unknown_field(msg: &str) -> Option<(String, String)> {
    let rest = msg.strip_prefix("unknown field `")?;
    if let Some(i) = rest.rfind("`, expected ") {
        let name = rest.get(..i)?.to_string();
        let list = rest.get(i + "`, expected ".len()..)?;
        let list = list
            .strip_prefix("one of ")
            .unwrap_or(list)
            .replace('`', "");
        return Some((name, list));
    }
    let i = rest.rfind("`, there are no fields")?;
    Some((rest.get(..i)?.to_string(), String::new()))
}

pub(crate) struct Checker<'a, 'i> {
    file: &'a Path,
    text: &'a str,
    root: &'a Spanned<DeValue<'i>>,
    dir: &'a Path,
    pub errors: Vec<ConfigError>,
    /// See [`Config::positions`].
    positions: BTreeMap<String, (usize, usize)>,
    /// See [`Config::supervision`]: filled per pool, checked across pools at the end.
    supervision: BTreeMap<String, Supervision>,
}

/// A route being built, with what the cross-route checks need.
struct BuiltRoute {
    index: usize,
    route: Option<Route>,
    mode_given: bool,
}

impl<'a, 'i> Checker<'a, 'i> {
    pub fn new(
        file: &'a Path,
        text: &'a str,
        root: &'a Spanned<DeValue<'i>>,
        dir: &'a Path,
    ) -> Self {
        Checker {
            file,
            text,
            root,
            dir,
            errors: Vec::new(),
            positions: BTreeMap::new(),
            supervision: BTreeMap::new(),
        }
    }

    fn push(&mut self, span: Range<usize>, key: &KeyPath, message: impl Into<String>) {
        let (line, column) = source::line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// An error located at the value of `path` (or the table lacking it).
    fn at_value(&mut self, path: &KeyPath, message: impl Into<String>) {
        let span = source::value_span(self.root, path);
        self.push(span, path, message);
    }

    /// An error located at the key of `path`.
    fn at_key(&mut self, path: &KeyPath, message: impl Into<String>) {
        let span = source::key_span(self.root, path);
        self.push(span, path, message);
    }

    /// A required `key` is absent from the table at `table`: reported at the table.
    fn missing(&mut self, table: &KeyPath, key: &str, what: &str) {
        let span = source::value_span(self.root, table);
        self.push(
            span,
            &table.key(key),
            format!("missing required key \"{key}\": expected {what}"),
        );
    }

    /// Deserializes one section. After an error the offending key is dropped and the
    /// section deserialized again, so every bad key of the section is reported; the
    /// dropped keys are returned. None when the section as a whole is unusable.
    fn section<T: DeserializeOwned>(
        &mut self,
        base: &KeyPath,
        value: &Spanned<DeValue<'i>>,
    ) -> Option<(T, Failed)> {
        let mut work = value.clone();
        let mut failed = Failed::default();
        for _ in 0..MAX_SECTION_ERRORS {
            let result: Result<T, _> =
                serde_path_to_error::deserialize(ValueDeserializer::from(work.clone()));
            let err = match result {
                Ok(v) => return Some((v, failed)),
                Err(e) => e,
            };
            let mut rel = KeyPath::root();
            let mut known = true;
            for seg in err.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => rel.0.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => rel.0.push(Seg::Index(*index)),
                    _ => known = false,
                }
            }
            let inner = err.into_inner();
            let span = inner.span();
            let (rel, message) = match parse_unknown_field(inner.message()) {
                Some((parsed_name, list)) => {
                    // serde_path_to_error may or may not have recorded the unknown key
                    // itself: `parent` is the table holding it.
                    let mut parent = rel;
                    if parent.0.last() == Some(&Seg::Key(parsed_name.clone())) {
                        parent.0.pop();
                    }
                    // Prefer the key whose span the error points at; the message is
                    // the fallback.
                    let by_span =
                        source::lookup(&work, &parent).and_then(|(_, v)| match v.get_ref() {
                            DeValue::Table(t) => t
                                .keys()
                                .find(|k| Some(k.span()) == span)
                                .map(|k| k.get_ref().to_string()),
                            _ => None,
                        });
                    let name = by_span.unwrap_or(parsed_name);
                    let message = if list.is_empty() {
                        format!("unknown key {}", quote(&name))
                    } else {
                        format!("unknown key {}; expected one of: {list}", quote(&name))
                    };
                    (parent.key(&name), message)
                }
                None => {
                    let found =
                        source::lookup(&work, &rel).map(|(_, v)| describe_value(v.get_ref()));
                    let message = rewrite_message(inner.message(), found);
                    (rel, message)
                }
            };
            let full = base.join(&rel);
            let span = span.unwrap_or_else(|| source::value_span(self.root, &full));
            self.push(span, &full, message);
            let target = rel.without_trailing_indexes();
            if !known || target.is_empty() || !source::remove(&mut work, &target) {
                return None;
            }
            failed.0.push(target);
        }
        None
    }

    /// A path value: non-empty, no NUL, resolved against the config's directory.
    fn path_value(&mut self, path: &KeyPath, s: &str) -> Option<PathBuf> {
        if s.is_empty() {
            self.at_value(path, "expected a non-empty path, found \"\"");
            None
        } else if s.contains('\0') {
            self.at_value(path, "a path must not contain a NUL character");
            None
        } else {
            Some(resolve(self.dir, s))
        }
    }

    /// The whole document.
    pub fn config(&mut self, path: &Path) -> Option<Config> {
        let root = self.root;
        let DeValue::Table(top) = root.get_ref() else {
            self.push(root.span(), &KeyPath::root(), "expected a TOML document");
            return None;
        };
        let mut settings_value = None;
        let mut pool_values: Vec<(&str, &Spanned<DeValue<'i>>)> = Vec::new();
        let mut route_values: Vec<&Spanned<DeValue<'i>>> = Vec::new();
        for (k, v) in top.iter() {
            let name: &str = k.get_ref();
            match name {
                "orchd" => settings_value = Some(v),
                "pool" => match v.get_ref() {
                    DeValue::Table(t) => {
                        for (pk, pv) in t.iter() {
                            pool_values.push((pk.get_ref(), pv));
                        }
                    }
                    other => self.at_value(
                        &KeyPath::root().key("pool"),
                        format!(
                            "expected pool tables such as [pool.web], found {}",
                            describe_value(other)
                        ),
                    ),
                },
                "route" => match v.get_ref() {
                    DeValue::Array(a) => route_values.extend(a.iter()),
                    other => self.at_value(
                        &KeyPath::root().key("route"),
                        format!(
                            "expected an array of tables, each written as [[route]], found {}",
                            describe_value(other)
                        ),
                    ),
                },
                other => self.at_key(
                    &KeyPath::root().key(other),
                    format!(
                        "unknown key {}; expected one of: orchd, pool, route",
                        quote(other)
                    ),
                ),
            }
        }

        let settings = match settings_value {
            Some(v) => self.settings(v),
            None => Some(Settings::default()),
        };
        let pool_names: Vec<String> = pool_values.iter().map(|(n, _)| n.to_string()).collect();
        let pools: Vec<Option<Pool>> = pool_values
            .iter()
            .map(|(name, v)| self.pool(name, v))
            .collect();
        let routes: Vec<BuiltRoute> = route_values
            .iter()
            .enumerate()
            .map(|(i, v)| self.route(i, v, &pool_names))
            .collect();
        self.cross_route_checks(&routes, settings.as_ref());
        let metrics = settings.as_ref().and_then(|s| s.metrics);
        let protocols: Vec<Option<Protocol>> = pools
            .iter()
            .map(|p| p.as_ref().map(|p| p.protocol))
            .collect();
        self.supervision_cross_checks(&pool_names, &protocols, &routes, metrics);

        let settings = settings?;
        let pools: Option<Vec<Pool>> = pools.into_iter().collect();
        let routes: Option<Vec<Route>> = routes.into_iter().map(|r| r.route).collect();
        Some(Config {
            path: path.to_path_buf(),
            settings,
            pools: pools?,
            routes: routes?,
            positions: std::mem::take(&mut self.positions),
            supervision: std::mem::take(&mut self.supervision),
        })
    }

    fn settings(&mut self, value: &Spanned<DeValue<'i>>) -> Option<Settings> {
        let base = KeyPath::root().key("orchd");
        let (raw, _failed) = self.section::<RawSettings>(&base, value)?;
        let mut s = Settings::default();
        if let Some(level) = raw.log_level {
            let lower = level.to_ascii_lowercase();
            if LOG_LEVELS.contains(&lower.as_str()) {
                s.log_level = lower;
            } else if let Err(why) = crate::logging::check_filter(&level) {
                // A single word is meant as a level: say which levels there are.
                let message = if level.contains([',', '=', '/']) {
                    format!(
                        "expected a level or a RUST_LOG-style filter such as \"warn,upper=debug\", found {}: {why}",
                        quote(&level)
                    )
                } else {
                    format!(
                        "expected one of {}, found {} (a RUST_LOG-style filter such as \"warn,upper=debug\" also works)",
                        one_of(LOG_LEVELS),
                        quote(&level)
                    )
                };
                self.at_value(&base.key("log_level"), message);
            } else {
                s.log_level = level;
            }
        }
        if let Some(c) = raw.control {
            s.control = self.path_value(&base.key("control"), &c);
        }
        if let Some(d) = raw.drain_timeout {
            s.drain_timeout = d.0;
        }
        if let Some(w) = raw.watch {
            s.watch = w;
        }
        if let Some(p) = raw.error_prefix {
            if p.contains('\n') {
                self.at_value(
                    &base.key("error_prefix"),
                    "expected a string without a newline (error replies are one line)",
                );
            } else {
                s.error_prefix = p;
            }
        }
        match raw.max_clients {
            Some(UInt(0)) => self.at_value(
                &base.key("max_clients"),
                "expected an integer >= 1, found 0 (no client could ever connect)",
            ),
            Some(UInt(n)) => s.max_clients = n,
            None => {}
        }
        match raw.log_buffer {
            Some(Bytes(n)) if n > MAX_LOG_BUFFER as u64 => self.at_value(
                &base.key("log_buffer"),
                format!("expected a size of at most 64MiB, found {n} bytes"),
            ),
            Some(Bytes(n)) => s.log_buffer = n as usize,
            None => {}
        }
        if let Some(m) = &raw.metrics {
            s.metrics = self.metrics_address(&base.key("metrics"), m);
        }
        Some(s)
    }

    fn pool(&mut self, name: &str, value: &Spanned<DeValue<'i>>) -> Option<Pool> {
        let base = KeyPath::root().key("pool").key(name);
        if !is_identifier(name) {
            self.at_key(
                &base,
                format!(
                    "invalid pool name {}: expected an identifier (a letter or \"_\", then letters, digits, \"_\" or \"-\")",
                    quote(name)
                ),
            );
        }
        let (raw, failed) = self.section::<RawPool>(&base, value)?;
        let supervision = self.supervision(&base, &raw, &failed);

        const NUL: &str = "expected a string without a NUL character (exec cannot pass one)";
        let command = match raw.command {
            Some(RawCommand::Argv(v)) => {
                let bad: Vec<usize> = (0..v.len()).filter(|&i| v[i].contains('\0')).collect();
                for &i in &bad {
                    self.at_value(&base.key("command").index(i), NUL);
                }
                bad.is_empty().then_some(Command::Argv(v))
            }
            Some(RawCommand::Shell(s)) if s.contains('\0') => {
                self.at_value(&base.key("command"), NUL);
                None
            }
            Some(RawCommand::Shell(s)) => Some(Command::Shell(s)),
            None => {
                if !failed.has(&["command"]) {
                    self.missing(&base, "command", COMMAND_EXPECTED);
                }
                None
            }
        };
        let cwd = match &raw.cwd {
            None => Some(self.dir.to_path_buf()),
            Some(c) => self.path_value(&base.key("cwd"), c),
        };
        for key in ["command", "cwd"] {
            let path = base.key(key);
            let span = source::value_span(self.root, &path);
            let at = source::line_col(self.text, span.start);
            self.positions.insert(path.to_string(), at);
        }

        let mut env = BTreeMap::new();
        for (k, v) in raw.env.unwrap_or_default() {
            let kp = base.key("env").key(&k);
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.at_key(
                    &kp,
                    format!(
                        "invalid environment variable name {}: expected a non-empty name without \"=\" or NUL",
                        quote(&k)
                    ),
                );
            } else if v.0.contains('\0') {
                self.at_value(&kp, "expected a value without a NUL character");
            } else {
                env.insert(k, v.0);
            }
        }

        for (key, v) in [("user", &raw.user), ("group", &raw.group)] {
            if let Some(v) = v {
                if v.is_empty() || v.contains('\0') {
                    self.at_value(
                        &base.key(key),
                        format!(
                            "expected a non-empty {key} name or number, found {}",
                            quote(v)
                        ),
                    );
                }
            }
        }

        let mut restart = RestartPolicy::Always;
        if let Some(r) = &raw.restart {
            match r.as_str() {
                "always" => restart = RestartPolicy::Always,
                "on-failure" => restart = RestartPolicy::OnFailure,
                "never" => restart = RestartPolicy::Never,
                _ => self.at_value(
                    &base.key("restart"),
                    format!(
                        "expected one of {}, found {}",
                        one_of(RESTART_POLICIES),
                        quote(r)
                    ),
                ),
            }
        }

        let mut backoff = Backoff::default();
        if let Some(b) = raw.backoff {
            let bp = base.key("backoff");
            if let Some(Dur(d)) = b.initial {
                backoff.initial = d;
            }
            if let Some(Dur(d)) = b.max {
                backoff.max = d;
            }
            if let Some(Num(f)) = b.factor {
                if f.is_finite() && f >= 1.0 {
                    backoff.factor = f;
                } else {
                    self.at_value(
                        &bp.key("factor"),
                        format!("expected a number >= 1.0, found {f}"),
                    );
                }
            }
            if let Some(Num(j)) = b.jitter {
                if (0.0..=1.0).contains(&j) {
                    backoff.jitter = j;
                } else {
                    self.at_value(
                        &bp.key("jitter"),
                        format!("expected a number from 0.0 to 1.0, found {j}"),
                    );
                }
            }
            if let Some(Dur(d)) = b.reset_after {
                backoff.reset_after = d;
            }
            let comparable =
                !failed.has(&["backoff", "initial"]) && !failed.has(&["backoff", "max"]);
            if comparable && backoff.initial > backoff.max {
                let at = if b.max.is_some() { "max" } else { "initial" };
                self.at_value(
                    &bp.key(at),
                    format!(
                        "backoff initial ({}) must not be greater than max ({})",
                        fmt_dur(backoff.initial),
                        fmt_dur(backoff.max)
                    ),
                );
            }
        }

        let give_up = match raw.give_up {
            None => None,
            Some(g) => {
                let gp = base.key("give_up");
                if g.restarts.is_none() && !failed.has(&["give_up", "restarts"]) {
                    self.missing(
                        &gp,
                        "restarts",
                        "an integer: more restarts than this within \"within\" put the instance in the failed state",
                    );
                }
                if g.within.is_none() && !failed.has(&["give_up", "within"]) {
                    self.missing(&gp, "within", DURATION_EXPECTED);
                }
                if let Some(Dur(w)) = g.within {
                    if w.is_zero() {
                        self.at_value(
                            &gp.key("within"),
                            "expected a duration greater than 0, found \"0s\"",
                        );
                    }
                }
                match (g.restarts, g.within) {
                    (Some(UInt(restarts)), Some(Dur(within))) => Some(GiveUp {
                        restarts,
                        within,
                        cooldown: g.cooldown.map(|d| d.0),
                    }),
                    _ => None,
                }
            }
        };

        let mut stop_signal = signal_by_name("TERM");
        if let Some(sig) = &raw.stop_signal {
            stop_signal = signal_by_name(sig);
            if stop_signal.is_none() {
                self.at_value(
                    &base.key("stop_signal"),
                    format!(
                        "expected a signal name (with or without SIG) among {}, found {}",
                        known_signal_names(),
                        quote(sig)
                    ),
                );
            }
        }

        let stop_timeout = raw.stop_timeout.map_or(Duration::from_secs(10), |d| d.0);
        let count = raw.count.map_or(1, |c| c.0);
        let mut at_least_one = |key: &str, v: Option<UInt>, default: u32| match v {
            Some(UInt(0)) => {
                self.at_value(&base.key(key), "expected an integer >= 1, found 0");
                default
            }
            Some(UInt(n)) => n,
            None => default,
        };
        let max_inflight = match raw.max_inflight {
            Some(Inflight::Auto) => super::MAX_INFLIGHT_AUTO,
            Some(Inflight::Fixed(n)) => at_least_one("max_inflight", Some(n), 32),
            // The adaptive window serves both throughput and balance (issue 8).
            None => super::MAX_INFLIGHT_AUTO,
        };
        let queue = at_least_one("queue", raw.queue, 10000);
        let protocol = self.protocol(&base, raw.protocol.as_deref(), &env);

        let supervision = supervision?;
        if supervision != Supervision::default() {
            self.supervision.insert(name.to_string(), supervision);
        }
        Some(Pool {
            name: name.to_string(),
            command: command?,
            count,
            cwd: cwd?,
            env,
            user: raw.user,
            group: raw.group,
            restart,
            backoff,
            give_up,
            stop_signal: stop_signal?,
            stop_timeout,
            max_inflight,
            queue,
            protocol: protocol?,
        })
    }

    /// `protocol`: one of [`Protocol::ALL`] by name; absent = `lines`. A `node` pool's
    /// `env` must leave the channel variables to orchd.
    fn protocol(
        &mut self,
        base: &KeyPath,
        raw: Option<&str>,
        env: &BTreeMap<String, String>,
    ) -> Option<Protocol> {
        let Some(name) = raw else {
            return Some(Protocol::Lines);
        };
        let found = Protocol::from_name(name);
        match found {
            None => {
                let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
                self.at_value(
                    &base.key("protocol"),
                    format!("expected one of {}, found {}", one_of(&names), quote(name)),
                );
            }
            Some(Protocol::Node) => {
                for var in crate::protocol::node::CHANNEL_VARS {
                    if env.contains_key(var) {
                        self.at_key(
                            &base.key("env").key(var),
                            format!(
                                "{var} is set by orchd for protocol = \"node\" (it names the worker's IPC channel); remove it from env"
                            ),
                        );
                    }
                }
            }
            Some(_) => {}
        }
        found
    }

    fn regex(&mut self, path: &KeyPath, s: &str) -> Option<Pattern> {
        match regex::bytes::Regex::new(s) {
            Ok(r) => Some(Pattern(r)),
            Err(e) => {
                self.at_value(
                    path,
                    format!(
                        "expected a regular expression, found {}: {}",
                        quote(s),
                        regex_reason(&e)
                    ),
                );
                None
            }
        }
    }

    fn route(
        &mut self,
        index: usize,
        value: &Spanned<DeValue<'i>>,
        pools: &[String],
    ) -> BuiltRoute {
        let mut built = BuiltRoute {
            index,
            route: None,
            mode_given: false,
        };
        let base = KeyPath::root().key("route").index(index);
        let Some((raw, failed)) = self.section::<RawRoute>(&base, value) else {
            return built;
        };
        built.mode_given = raw.mode.is_some();

        let from = match &raw.from {
            None => {
                if !failed.has(&["from"]) {
                    self.missing(&base, "from", SOURCE_EXPECTED);
                }
                None
            }
            Some(s) => match parse_source(s, self.dir) {
                Ok(src) => Some(src),
                Err(reason) => {
                    let reason = if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    };
                    self.at_value(
                        &base.key("from"),
                        format!("expected {SOURCE_EXPECTED}, found {}{reason}", quote(s)),
                    );
                    None
                }
            },
        };

        let mut mode = 0o660;
        let mut mode_ok = true;
        if let Some(m) = &raw.mode {
            let mp = base.key("mode");
            match &from {
                Some(Source::Unix(_)) => match parse_mode(m) {
                    Some(v) => mode = v,
                    None => {
                        mode_ok = false;
                        self.at_value(
                        &mp,
                        format!(
                            "expected an octal file mode from \"0000\" to \"0777\" such as \"0660\", found {}",
                                quote(m)
                            ),
                        );
                    }
                },
                Some(other) => self.at_key(
                    &mp,
                    format!("\"mode\" is only allowed with from = \"unix:PATH\", not with {other}"),
                ),
                None => {}
            }
        }

        let matcher = match &raw.matcher {
            Some(s) => self.regex(&base.key("match"), s),
            None => None,
        };
        let matcher_ok = raw.matcher.is_none() || matcher.is_some();

        let to = match &raw.to {
            None => {
                if !failed.has(&["to"]) {
                    self.missing(&base, "to", "the name of a pool");
                }
                None
            }
            Some(t) if pools.iter().any(|p| p == t) => Some(t.clone()),
            Some(t) => {
                let known = if pools.is_empty() {
                    "no pools are defined".to_string()
                } else {
                    format!("the pools are: {}", pools.join(", "))
                };
                self.at_value(
                    &base.key("to"),
                    format!("no pool named {}; {known}", quote(t)),
                );
                None
            }
        };

        let strategy = match raw.strategy.as_deref() {
            None => Some(Strategy::RoundRobin),
            Some("round-robin") => Some(Strategy::RoundRobin),
            Some("least-busy") => Some(Strategy::LeastBusy),
            Some("hash") => Some(Strategy::Hash),
            Some("broadcast") => Some(Strategy::Broadcast),
            Some(other) => {
                self.at_value(
                    &base.key("strategy"),
                    format!(
                        "expected one of {}, found {}",
                        one_of(STRATEGIES),
                        quote(other)
                    ),
                );
                None
            }
        };

        let mut key_ok = true;
        let key = match (&raw.key, strategy) {
            (None, _) => None,
            (Some(k), Some(Strategy::Hash)) => {
                let p = self.regex(&base.key("key"), k);
                key_ok = p.is_some();
                p
            }
            (Some(_), Some(other)) => {
                key_ok = false;
                self.at_key(
                    &base.key("key"),
                    format!(
                        "\"key\" is only allowed with strategy = \"hash\" (this route's strategy is {:?})",
                        other.as_str()
                    ),
                );
                None
            }
            // The strategy itself is wrong and already reported.
            (Some(_), None) => None,
        };

        let timeout = match raw.timeout {
            Some(Dur(d)) if d.is_zero() => None,
            Some(Dur(d)) => Some(d),
            None => Some(Duration::from_secs(30)),
        };
        let retries = raw.retries.map_or(2, |r| r.0);
        let ordered = raw.ordered.unwrap_or(true);

        if let (Some(from), Some(to), Some(strategy), true, true, true) =
            (from, to, strategy, matcher_ok, key_ok, mode_ok)
        {
            built.route = Some(Route {
                from,
                mode,
                matcher,
                to,
                strategy,
                key,
                timeout,
                retries,
                ordered,
            });
        }
        built
    }

    /// Unix sockets shared by several routes must agree on `mode`, be written the same
    /// way, and none may be the control socket; TCP listeners must not overlap.
    fn cross_route_checks(&mut self, routes: &[BuiltRoute], settings: Option<&Settings>) {
        let control = settings
            .and_then(|s| s.control.as_deref())
            .map(socket_identity);
        // By socket identity: (first route, its mode, its path as resolved).
        let mut seen: BTreeMap<PathBuf, (usize, u32, &PathBuf)> = BTreeMap::new();
        let mut tcp: Vec<(SocketAddr, usize)> = Vec::new();
        for b in routes {
            let Some(route) = &b.route else { continue };
            let base = KeyPath::root().key("route").index(b.index);
            let p = match &route.from {
                Source::Unix(p) => p,
                Source::Tcp(a) => {
                    if let Some(&(other, first)) = tcp.iter().find(|(o, _)| tcp_overlap(*a, *o)) {
                        self.at_value(
                            &base.key("from"),
                            format!(
                                "{} overlaps tcp://{other} of route[{}]: on one port a wildcard address (0.0.0.0, or [::] which also takes IPv4) excludes every other address; use the same address in both",
                                route.from,
                                first + 1
                            ),
                        );
                    } else if !tcp.iter().any(|(o, _)| o == a) {
                        tcp.push((*a, b.index));
                    }
                    continue;
                }
                Source::Stdin => continue,
            };
            let id = socket_identity(p);
            if control.as_ref() == Some(&id) {
                self.at_value(
                    &base.key("from"),
                    format!(
                        "{} is also the control socket (orchd.control); use another path",
                        route.from
                    ),
                );
            }
            match seen.get(&id) {
                None => {
                    seen.insert(id, (b.index, route.mode, p));
                }
                Some(&(first, _, first_path)) if first_path != p => {
                    self.at_value(
                        &base.key("from"),
                        format!(
                            "{} is the same socket as route[{}]'s unix:{}; write it the same way in both (routes that share a socket share its listener)",
                            route.from,
                            first + 1,
                            first_path.display()
                        ),
                    );
                }
                Some(&(first, first_mode, _)) if first_mode != route.mode => {
                    let at = if b.mode_given { "mode" } else { "from" };
                    self.at_value(
                        &base.key(at),
                        format!(
                            "routes sharing the socket {} must use the same mode: route[{}] uses {:04o}, this one {:04o}",
                            route.from,
                            first + 1,
                            first_mode,
                            route.mode
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }
}
