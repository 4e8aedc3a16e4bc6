//! The summary `orchd --check` prints for a valid config.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{Config, Source, Strategy};

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
        let stdin = if config.is_routed(&p.name) {
            "route"
        } else {
            "/dev/null"
        };
        let _ = writeln!(
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
        if !p.env.is_empty() {
            let env: Vec<String> = p
                .env
                .iter()
                .map(|(k, v)| format!("{}={}", word(k), word(v)))
                .collect();
            let _ = writeln!(out, "  env: {}", env.join(" "));
        }
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
