//! Logging setup: env_logger on stderr, as text or one JSON object per line.
//!
//! Level precedence: `--log-level`, then `RUST_LOG`, then the config's `log_level`.
//! Worker output is logged with the instance as target (`upper[2]`), so `RUST_LOG`
//! filters per pool (`RUST_LOG=info,upper=warn`). When the level comes from the config,
//! a reload that changes `log_level` takes effect at once.

use std::io::Write;
use std::sync::{OnceLock, RwLock};

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
    b.parse_filters(filter).target(env_logger::Target::Stderr);
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

/// Install the global logger. `flag` is `--log-level`, `config_level` the config's.
pub fn init(flag: Option<&str>, config_level: &str, format: LogFormat) {
    let (filter, from_config) = match (flag, std::env::var("RUST_LOG")) {
        (Some(level), _) => (level.to_string(), false),
        (None, Ok(env)) if !env.trim().is_empty() => (env, false),
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
