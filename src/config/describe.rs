//! The summary `orchd --check` prints for a valid config.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{Config, Protocol, Source, Strategy};
use super::supervision::{Probe, ReadyWhen, Supervision};

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `s` as is when it is a plain word, else quoted.
fn word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:,@+%=".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// A size as written in config files: `256KiB`, `4MiB`, or bytes.
pub fn size(n: usize) -> String {
    const MIB: usize = 1 << 20;
    const KIB: usize = 1 << 10;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{}MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{}KiB", n / KIB)
    } else {
        n.to_string()
    }
}

/// A readable, stable summary of the resolved config: one `settings:` line, a block
/// per pool, a line per route (numbered from 1 like in error messages). Every line
/// ends with a newline.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let s = &config.settings;
    let control = s
        .control
        .as_ref()
        .map_or_else(|| "none".to_string(), |p| word(&p.to_string_lossy()));
    let _ = writeln!(
        out,
        "settings: log_level={} control={} drain_timeout={} watch={} error_prefix={:?} max_clients={} log_buffer={}",
        s.log_level,
        control,
        dur(s.drain_timeout),
        s.watch,
        s.error_prefix,
        s.max_clients,
        size(s.log_buffer)
    );
    if let Some(m) = s.metrics {
        // Appended to the settings line only when set: output of configs without
        // it is unchanged.
        out.pop();
        let _ = writeln!(out, " metrics={m}");
    }

    for p in &config.pools {
        let _ = write!(
            out,
            "pool {}: command={} count={} cwd={} restart={}",
            p.name,
            p.command,
            p.count,
            word(&p.cwd.to_string_lossy()),
            p.restart.as_str()
        );
        if let Some(u) = &p.user {
            let _ = write!(out, " user={}", word(u));
        }
        if let Some(g) = &p.group {
            let _ = write!(out, " group={}", word(g));
        }
        out.push('\n');
        let b = &p.backoff;
        let _ = writeln!(
            out,
            "  backoff: initial={} max={} factor={} jitter={} reset_after={}",
            dur(b.initial),
            dur(b.max),
            b.factor,
            b.jitter,
            dur(b.reset_after)
        );
        match &p.give_up {
            Some(g) => {
                let cooldown = g.cooldown.map_or_else(|| "none".to_string(), dur);
                let _ = writeln!(
                    out,
                    "  give_up: restarts={} within={} cooldown={}",
                    g.restarts,
                    dur(g.within),
                    cooldown
                );
            }
            None => out.push_str("  give_up: never\n"),
        }
        let stdin = match (config.is_routed(&p.name), p.protocol) {
            (true, Protocol::Node) => "/dev/null channel=NODE_CHANNEL_FD",
            (true, _) => "route",
            (false, _) => "/dev/null",
        };
        let _ = write!(
            out,
            "  stop: signal={} timeout={}  max_inflight={} queue={} stdin={}",
            p.stop_signal.name,
            dur(p.stop_timeout),
            if p.max_inflight == super::MAX_INFLIGHT_AUTO {
                "auto".to_string()
            } else {
                p.max_inflight.to_string()
            },
            p.queue,
            stdin
        );
        // The default is left out: the line stays as it was for `lines` pools.
        if p.protocol != Protocol::Lines {
            let _ = write!(out, " protocol={}", p.protocol.as_str());
        }
        out.push('\n');
        if !p.env.is_empty() {
            let env: Vec<String> = p
                .env
                .iter()
                .map(|(k, v)| format!("{}={}", word(k), word(v)))
                .collect();
            let _ = writeln!(out, "  env: {}", env.join(" "));
        }
        describe_supervision(&mut out, config.supervision(&p.name));
    }

    for (i, r) in config.routes.iter().enumerate() {
        let from = match &r.from {
            Source::Unix(p) => format!("unix:{} mode={:04o}", word(&p.to_string_lossy()), r.mode),
            other => other.to_string(),
        };
        let matcher = r
            .matcher
            .as_ref()
            .map_or_else(|| "none".to_string(), |m| format!("{:?}", m.as_str()));
        let _ = write!(
            out,
            "route {}: from={} match={} to={} strategy={}",
            i + 1,
            from,
            matcher,
            r.to,
            r.strategy.as_str()
        );
        if r.strategy == Strategy::Hash {
            let key = r.key.as_ref().map_or_else(
                || "none (whole message)".to_string(),
                |k| format!("{:?}", k.as_str()),
            );
            let _ = write!(out, " key={key}");
        }
        let timeout = r.timeout.map_or_else(|| "none".to_string(), dur);
        let _ = writeln!(
            out,
            " timeout={} retries={} ordered={}",
            timeout, r.retries, r.ordered
        );
    }
    out
}

/// The `ready`, `health`, `depends_on`, `rolling` and `max_rss` lines of a pool, each
/// only when it differs from the default (so older configs describe as before).
fn describe_supervision(out: &mut String, s: &Supervision) {
    if let Some(r) = &s.ready {
        let when = match &r.when {
            ReadyWhen::Log(p) => format!("log={:?}", p.as_str()),
            ReadyWhen::After(d) => format!("after={}", dur(*d)),
            ReadyWhen::Probe => "probe=true".to_string(),
        };
        let _ = writeln!(out, "  ready: {when} timeout={}", dur(r.timeout));
    }
    if let Some(h) = &s.health {
        let probe = match &h.probe {
            Probe::Send { send, expect } => format!("send={send:?} expect={:?}", expect.as_str()),
            Probe::Exec(c) => format!("exec={c}"),
        };
        let _ = writeln!(
            out,
            "  health: {probe} every={} timeout={} failures={}",
            dur(h.every),
            dur(h.timeout),
            h.failures
        );
    }
    if !s.depends_on.is_empty() {
        let _ = writeln!(out, "  depends_on: {}", s.depends_on.join(" "));
    }
    if s.rolling != Default::default() {
        let _ = writeln!(
            out,
            "  rolling: parallel={} order={}",
            s.rolling.parallel,
            s.rolling.order.as_str()
        );
    }
    if let Some(m) = s.max_rss {
        let _ = writeln!(out, "  max_rss: {}", size(m as usize));
    }
}
