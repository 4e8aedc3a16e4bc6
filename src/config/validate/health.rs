//! Checks of a pool's `ready`, `health`, `depends_on`, `rolling` and `max_rss`, and of
//! `[orchd] metrics`: per pool first, then across pools and routes (unknown or cyclic
//! dependencies, `send` on a pool without message input, listener clashes).

use std::net::SocketAddr;
use std::time::Duration;

use super::super::listen::{parse_source, tcp_overlap};
use super::super::model::{Command, Protocol, Route, Source};
use super::super::raw::{Bytes, Dur, RawCommand, RawHealth, RawPool, RawReady, RawRolling, UInt};
use super::super::source::{quote, KeyPath};
use super::super::supervision::{
    Health, Probe, Ready, ReadyWhen, RollOrder, Rolling, Supervision, DEFAULT_HEALTH_EVERY,
    DEFAULT_HEALTH_FAILURES, DEFAULT_HEALTH_TIMEOUT, DEFAULT_READY_TIMEOUT, MAX_HEALTH_FAILURES,
    MAX_SEND_BYTES, MIN_HEALTH_EVERY, MIN_MAX_RSS,
};
use super::{fmt_dur, one_of, BuiltRoute, Checker, Failed};

const ROLL_ORDERS: &[&str] = &["start-first", "stop-first"];
const METRICS_EXPECTED: &str =
    "\"HOST:PORT\" such as \"127.0.0.1:9464\" (HOST an IPv4 address, [IPv6 address] or localhost)";

impl Checker<'_, '_> {
    /// A pool's supervision settings; None when one of them is wrong (reported).
    pub(super) fn supervision(
        &mut self,
        base: &KeyPath,
        raw: &RawPool,
        failed: &Failed,
    ) -> Option<Supervision> {
        let mut ok = !["ready", "health", "depends_on", "rolling", "max_rss"]
            .iter()
            .any(|k| failed.has(&[k]));
        let health = match &raw.health {
            Some(h) => {
                let h = self.health(&base.key("health"), h, failed);
                ok &= h.is_some();
                h
            }
            None => None,
        };
        let ready = match &raw.ready {
            Some(r) => {
                let has_health = raw.health.is_some();
                let r = self.ready(&base.key("ready"), r, failed, has_health);
                ok &= r.is_some();
                r
            }
            None => None,
        };
        let depends_on = self.depends_on(&base.key("depends_on"), raw.depends_on.as_deref());
        ok &= depends_on.is_some();
        let rolling = match &raw.rolling {
            Some(r) => {
                let r = self.rolling(&base.key("rolling"), r);
                ok &= r.is_some();
                r.unwrap_or_default()
            }
            None => Rolling::default(),
        };
        let max_rss = match raw.max_rss {
            Some(Bytes(n)) if n < MIN_MAX_RSS => {
                self.at_value(
                    &base.key("max_rss"),
                    format!("expected a size of at least 1MiB, found {n} bytes"),
                );
                ok = false;
                None
            }
            Some(Bytes(n)) => Some(n),
            None => None,
        };
        ok.then(|| Supervision {
            ready,
            health,
            depends_on: depends_on.unwrap_or_default(),
            rolling,
            max_rss,
        })
    }

    fn ready(
        &mut self,
        rp: &KeyPath,
        r: &RawReady,
        failed: &Failed,
        has_health: bool,
    ) -> Option<Ready> {
        let given: Vec<&str> = [
            ("log", r.log.is_some()),
            ("after", r.after.is_some()),
            ("probe", r.probe.is_some()),
        ]
        .iter()
        .filter(|(_, g)| *g)
        .map(|(k, _)| *k)
        .collect();
        let timeout = self.positive(&rp.key("timeout"), r.timeout, DEFAULT_READY_TIMEOUT);
        let when = match given.as_slice() {
            [] => {
                if !["log", "after", "probe"]
                    .iter()
                    .any(|k| failed.has(&["ready", k]))
                {
                    self.at_value(
                        rp,
                        "ready needs one of log (a regex), after (a duration) or probe = true: when an instance counts as ready",
                    );
                }
                None
            }
            [_, second, ..] => {
                self.at_key(
                    &rp.key(second),
                    format!(
                        "ready takes one of log, after or probe; found {}",
                        given.join(" and ")
                    ),
                );
                None
            }
            ["log"] => {
                let s = r.log.as_deref().unwrap_or_default();
                self.regex(&rp.key("log"), s).map(ReadyWhen::Log)
            }
            ["after"] => r.after.map(|Dur(d)| ReadyWhen::After(d)),
            _ => match r.probe {
                Some(false) => {
                    self.at_value(
                        &rp.key("probe"),
                        "expected probe = true (ready when the first health probe passes), found false; use log or after, or remove ready",
                    );
                    None
                }
                _ if !has_health => {
                    self.at_key(
                        &rp.key("probe"),
                        "probe = true needs a health probe: add health = { send = ..., expect = ... } or health = { exec = [...] } to this pool",
                    );
                    None
                }
                _ => Some(ReadyWhen::Probe),
            },
        };
        let (when, timeout) = (when?, timeout?);
        if let ReadyWhen::After(after) = when {
            if after > timeout {
                let at = if r.timeout.is_some() {
                    "timeout"
                } else {
                    "after"
                };
                self.at_value(
                    &rp.key(at),
                    format!(
                        "ready.after ({}) is longer than ready.timeout ({}): the instance could never become ready",
                        fmt_dur(after),
                        fmt_dur(timeout)
                    ),
                );
                return None;
            }
        }
        Some(Ready { when, timeout })
    }

    fn health(&mut self, hp: &KeyPath, h: &RawHealth, failed: &Failed) -> Option<Health> {
        let mut ok = true;
        let probe = match (&h.send, &h.exec) {
            (Some(_), Some(_)) => {
                self.at_key(
                    &hp.key("exec"),
                    "health takes either send (with expect) or exec, not both",
                );
                None
            }
            (None, None) => {
                if !["send", "exec"].iter().any(|k| failed.has(&["health", k])) {
                    self.at_value(
                        hp,
                        "health needs send = \"LINE\" with expect = \"REGEX\" (a probe through the worker's input) or exec = [\"COMMAND\", ...]",
                    );
                }
                None
            }
            (Some(send), None) => {
                let send_ok = self.send_line(&hp.key("send"), send);
                let expect = match &h.expect {
                    Some(e) => self.regex(&hp.key("expect"), e),
                    None => {
                        if !failed.has(&["health", "expect"]) {
                            self.missing(
                                hp,
                                "expect",
                                "a regular expression the reply to send must match, such as \"^PONG\"",
                            );
                        }
                        None
                    }
                };
                match (send_ok, expect) {
                    (true, Some(expect)) => Some(Probe::Send {
                        send: send.clone(),
                        expect,
                    }),
                    _ => None,
                }
            }
            (None, Some(exec)) => {
                if h.expect.is_some() {
                    self.at_key(
                        &hp.key("expect"),
                        "\"expect\" is only allowed with send (an exec probe passes when the command exits 0)",
                    );
                    ok = false;
                }
                self.exec_command(&hp.key("exec"), exec).map(Probe::Exec)
            }
        };
        let every = match h.every {
            Some(Dur(d)) if d < MIN_HEALTH_EVERY => {
                self.at_value(
                    &hp.key("every"),
                    format!(
                        "expected a duration of at least {}, found {}",
                        fmt_dur(MIN_HEALTH_EVERY),
                        quote(&fmt_dur(d))
                    ),
                );
                ok = false;
                d
            }
            Some(Dur(d)) => d,
            None => DEFAULT_HEALTH_EVERY,
        };
        let timeout = self.positive(&hp.key("timeout"), h.timeout, DEFAULT_HEALTH_TIMEOUT);
        let failures = match h.failures {
            Some(UInt(n)) if n == 0 || n > MAX_HEALTH_FAILURES => {
                self.at_value(
                    &hp.key("failures"),
                    format!("expected an integer from 1 to {MAX_HEALTH_FAILURES}, found {n}"),
                );
                ok = false;
                n
            }
            Some(UInt(n)) => n,
            None => DEFAULT_HEALTH_FAILURES,
        };
        let probe = probe?;
        ok.then_some(Health {
            probe,
            every,
            timeout: timeout?,
            failures,
        })
    }

    /// A duration that must not be zero, or `default` when absent.
    fn positive(&mut self, path: &KeyPath, d: Option<Dur>, default: Duration) -> Option<Duration> {
        match d {
            Some(Dur(d)) if d.is_zero() => {
                self.at_value(path, "expected a duration greater than 0, found \"0s\"");
                None
            }
            Some(Dur(d)) => Some(d),
            None => Some(default),
        }
    }

    /// `health.send`: one line, at most a message's size.
    fn send_line(&mut self, path: &KeyPath, send: &str) -> bool {
        if send.contains(['\n', '\r']) {
            self.at_value(
                path,
                "expected one line (no newline): it is written to the worker like a message",
            );
            false
        } else if send.len() > MAX_SEND_BYTES {
            self.at_value(
                path,
                format!(
                    "expected at most 1MiB (a message's limit), found {} bytes",
                    send.len()
                ),
            );
            false
        } else {
            true
        }
    }

    /// `health.exec`: like `command` (no NUL in any argument).
    fn exec_command(&mut self, path: &KeyPath, exec: &RawCommand) -> Option<Command> {
        const NUL: &str = "expected a string without a NUL character (exec cannot pass one)";
        match exec {
            RawCommand::Argv(v) => {
                let bad: Vec<usize> = (0..v.len()).filter(|&i| v[i].contains('\0')).collect();
                for &i in &bad {
                    self.at_value(&path.index(i), NUL);
                }
                bad.is_empty().then(|| Command::Argv(v.clone()))
            }
            RawCommand::Shell(s) if s.contains('\0') => {
                self.at_value(path, NUL);
                None
            }
            RawCommand::Shell(s) => Some(Command::Shell(s.clone())),
        }
    }

    /// `depends_on`: pool names (checked against the pools later), no duplicates.
    fn depends_on(&mut self, dp: &KeyPath, names: Option<&[String]>) -> Option<Vec<String>> {
        let names = names.unwrap_or_default();
        let mut ok = true;
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                self.at_value(
                    &dp.index(i),
                    format!("pool {} is named twice in depends_on", quote(n)),
                );
                ok = false;
            }
        }
        ok.then(|| names.to_vec())
    }

    fn rolling(&mut self, rp: &KeyPath, r: &RawRolling) -> Option<Rolling> {
        let mut rolling = Rolling::default();
        let mut ok = true;
        match r.parallel {
            Some(UInt(0)) => {
                self.at_value(
                    &rp.key("parallel"),
                    "expected an integer >= 1, found 0 (no replacement could ever start)",
                );
                ok = false;
            }
            Some(UInt(n)) => rolling.parallel = n,
            None => {}
        }
        match r.order.as_deref() {
            None | Some("start-first") => {}
            Some("stop-first") => rolling.order = RollOrder::StopFirst,
            Some(other) => {
                self.at_value(
                    &rp.key("order"),
                    format!(
                        "expected one of {}, found {}",
                        one_of(ROLL_ORDERS),
                        quote(other)
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(rolling)
    }

    /// `[orchd] metrics`.
    pub(super) fn metrics_address(&mut self, path: &KeyPath, s: &str) -> Option<SocketAddr> {
        let parsed = if s.contains("://") {
            Err(" (write HOST:PORT without a scheme)".to_string())
        } else {
            match parse_source(&format!("tcp://{s}"), self.dir) {
                Ok(Source::Tcp(a)) => Ok(a),
                Ok(_) => Err(String::new()),
                Err(reason) if reason.is_empty() => Err(String::new()),
                Err(reason) => Err(format!(" ({reason})")),
            }
        };
        match parsed {
            Ok(a) => Some(a),
            Err(reason) => {
                self.at_value(
                    path,
                    format!("expected {METRICS_EXPECTED}, found {}{reason}", quote(s)),
                );
                None
            }
        }
    }

    /// Checks across pools and routes: every `depends_on` names a pool and no cycle
    /// forms; `send` only on `lines` pools a route feeds; the metrics listener
    /// clashes with no route listener. `protocols` goes with `pool_names` (None: the
    /// pool failed its own checks).
    pub(super) fn supervision_cross_checks(
        &mut self,
        pool_names: &[String],
        protocols: &[Option<Protocol>],
        routes: &[BuiltRoute],
        metrics: Option<SocketAddr>,
    ) {
        let pool_key = |name: &str| KeyPath::root().key("pool").key(name);
        // Dependencies by index; unknown names reported here and left out.
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); pool_names.len()];
        for (i, name) in pool_names.iter().enumerate() {
            let names = match self.supervision.get(name) {
                Some(s) => s.depends_on.clone(),
                None => continue,
            };
            for (k, d) in names.iter().enumerate() {
                match pool_names.iter().position(|p| p == d) {
                    Some(j) => deps[i].push(j),
                    None => self.at_value(
                        &pool_key(name).key("depends_on").index(k),
                        format!(
                            "no pool named {}; the pools are: {}",
                            quote(d),
                            pool_names.join(", ")
                        ),
                    ),
                }
            }
        }
        for cycle in crate::health::order::cycles(&deps) {
            let first = cycle[0];
            let next = cycle.get(1).copied().unwrap_or(first);
            let name = &pool_names[first];
            let at = self
                .supervision
                .get(name)
                .and_then(|s| s.depends_on.iter().position(|d| *d == pool_names[next]))
                .unwrap_or(0);
            let message = if cycle.len() == 1 {
                format!("pool {} depends on itself", quote(name))
            } else {
                let mut names: Vec<&str> = cycle.iter().map(|&i| pool_names[i].as_str()).collect();
                names.push(name);
                format!("depends_on forms a cycle: {}", names.join(" → "))
            };
            self.at_value(&pool_key(name).key("depends_on").index(at), message);
        }

        // A `send` probe is a line: a `tagged` or `node` worker would take it for a
        // malformed message (a Node worker dies of a line that is not JSON).
        for (name, protocol) in pool_names.iter().zip(protocols) {
            let sends = self.supervision.get(name).is_some_and(|s| {
                matches!(
                    s.health.as_ref().map(|h| &h.probe),
                    Some(Probe::Send { .. })
                )
            });
            if let Some(p @ (Protocol::Tagged | Protocol::Node)) = protocol {
                if sends {
                    self.at_key(
                        &pool_key(name).key("health").key("send"),
                        format!(
                            "health.send probes are lines, which a protocol = {} worker does not read; use health.exec for this pool",
                            quote(p.as_str())
                        ),
                    );
                }
            }
        }

        // `send` needs message input: only pools a route feeds have one. With a route
        // that failed its own checks the targets are not known: say nothing.
        if routes.iter().all(|r| r.route.is_some()) {
            let routed: Vec<&str> = routes
                .iter()
                .filter_map(|r| r.route.as_ref())
                .map(|r: &Route| r.to.as_str())
                .collect();
            for name in pool_names {
                let sends = self.supervision.get(name).is_some_and(|s| {
                    matches!(
                        s.health.as_ref().map(|h| &h.probe),
                        Some(Probe::Send { .. })
                    )
                });
                if sends && !routed.contains(&name.as_str()) {
                    self.at_key(
                        &pool_key(name).key("health").key("send"),
                        format!(
                            "health.send needs message input, but no route has to = {}: its workers' stdin is /dev/null; use exec for a pool no route feeds",
                            quote(name)
                        ),
                    );
                }
            }
        }

        if let Some(m) = metrics {
            for b in routes {
                let Some(Route {
                    from: Source::Tcp(a),
                    ..
                }) = &b.route
                else {
                    continue;
                };
                if *a == m && m.port() != 0 || tcp_overlap(*a, m) {
                    self.at_value(
                        &KeyPath::root().key("orchd").key("metrics"),
                        format!(
                            "{m} is also route[{}]'s listener tcp://{a}: the metrics endpoint needs an address of its own",
                            b.index + 1
                        ),
                    );
                    break;
                }
            }
        }
    }
}
