//! Logging setup: env_logger on stderr, as text or one JSON object per line.
//!
//! Level precedence: `--log-level`, then `RUST_LOG`, then the config's `log_level`.
//! Worker output is logged with the instance as target (`upper[2]`), so `RUST_LOG`
//! filters per pool (`RUST_LOG=info,upper=warn`).

use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the global logger. `flag` is `--log-level`, `config_level` the config's.
pub fn init(flag: Option<&str>, config_level: &str, format: LogFormat) {
    let filter = match (flag, std::env::var("RUST_LOG")) {
        (Some(level), _) => level.to_string(),
        (None, Ok(env)) if !env.trim().is_empty() => env,
        _ => config_level.to_string(),
    };
    let mut b = env_logger::Builder::new();
    b.parse_filters(&filter).target(env_logger::Target::Stderr);
    match format {
        LogFormat::Text => {
            b.format(|buf, r| {
                writeln!(
                    buf,
                    "{} {:<5} {}: {}",
                    buf.timestamp_millis(),
                    r.level(),
                    r.target(),
                    r.args()
                )
            });
        }
        LogFormat::Json => {
            b.format(|buf, r| {
                let obj = serde_json::json!({
                    "ts": buf.timestamp_millis().to_string(),
                    "level": r.level().as_str(),
                    "target": r.target(),
                    "msg": r.args().to_string(),
                });
                writeln!(buf, "{obj}")
            });
        }
    }
    // A second init (tests) is harmless.
    let _ = b.try_init();
}
