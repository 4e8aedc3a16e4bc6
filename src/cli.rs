//! Command-line parsing (SPEC section 2). Tiny on purpose: lexopt, no derive magic.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::logging::LogFormat;

pub const USAGE: &str = "\
usage: orchd [--no-watch] [--log-level LEVEL] [--log-format text|json] CONFIG
       orchd --check CONFIG
       orchd --status CONFIG [--json]
       orchd --plan CONFIG
       orchd ctl CONFIG logs [TARGET...] [-f] [-n N] [--json]
       orchd --help | --version

Runs the worker pools and routes described in CONFIG (a TOML file; see orchd.toml(5)).

  --check          validate CONFIG, print the resolved pools and routes, exit 0 or 1
  --status         show the pools and instances of the orchd running CONFIG
  --json           with --status: print the raw JSON object
  --plan           show what reloading CONFIG now would change in the running orchd
  --no-watch       do not reload when CONFIG changes on disk (SIGHUP still reloads)
  --log-level L    off, error, warn, info, debug or trace (or a RUST_LOG filter);
                   overrides RUST_LOG and the config's log_level
  --log-format F   text (default) or json (one object per line)
  -h, --help       print this help
  -V, --version    print the version
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Run,
    Check,
    Status {
        json: bool,
    },
    Plan,
    /// `orchd ctl CONFIG VERB ARG...`: the verb and its arguments, as given.
    Ctl {
        verb: String,
        args: Vec<String>,
    },
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub mode: Mode,
    pub config: Option<PathBuf>,
    pub no_watch: bool,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut a = Args {
        mode: Mode::Run,
        config: None,
        no_watch: false,
        log_level: None,
        log_format: LogFormat::Text,
    };
    let mut json = false;
    let set_mode = |a: &mut Args, m: Mode| -> Result<(), String> {
        if a.mode != Mode::Run && a.mode != m {
            return Err("--check, --status and --plan exclude each other".into());
        }
        a.mode = m;
        Ok(())
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => {
                return Ok(Args {
                    mode: Mode::Help,
                    ..a
                })
            }
            Short('V') | Long("version") => {
                return Ok(Args {
                    mode: Mode::Version,
                    ..a
                })
            }
            Long("check") => set_mode(&mut a, Mode::Check)?,
            Long("status") => set_mode(&mut a, Mode::Status { json: false })?,
            Long("plan") => set_mode(&mut a, Mode::Plan)?,
            Long("json") => json = true,
            Long("no-watch") => a.no_watch = true,
            Long("log-level") => {
                let v = p.value().map_err(|e| e.to_string())?;
                a.log_level = Some(v.string().map_err(|e| e.to_string())?);
            }
            Long("log-format") => {
                let v = p.value().map_err(|e| e.to_string())?;
                a.log_format = match v.string().map_err(|e| e.to_string())?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(format!(
                            "--log-format: expected text or json, got {other:?}"
                        ))
                    }
                };
            }
            Value(v) if v == "ctl" && a.config.is_none() && a.mode == Mode::Run => {
                let mut rest = p.raw_args().map_err(|e| e.to_string())?;
                let mut next = |what: &str| -> Result<String, String> {
                    let v = rest.next().ok_or(format!("ctl: missing {what}"))?;
                    v.into_string()
                        .map_err(|v| format!("ctl: {what} is not UTF-8: {v:?}"))
                };
                a.config = Some(PathBuf::from(next("CONFIG")?));
                let verb = next("VERB")?;
                let args = rest
                    .map(|v| {
                        v.into_string()
                            .map_err(|v| format!("ctl: bad argument {v:?}"))
                    })
                    .collect::<Result<_, _>>()?;
                a.mode = Mode::Ctl { verb, args };
            }
            Value(v) if a.config.is_none() => a.config = Some(PathBuf::from(v)),
            Value(v) => return Err(format!("unexpected argument {:?}", v.to_string_lossy())),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    if json {
        match a.mode {
            Mode::Status { .. } => a.mode = Mode::Status { json: true },
            _ => return Err("--json goes with --status".into()),
        }
    }
    if a.config.is_none() {
        return Err("missing CONFIG".into());
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args, String> {
        parse(v.iter().map(OsString::from))
    }

    #[test]
    fn run_with_flags() {
        let a = p(&[
            "--no-watch",
            "--log-level",
            "debug",
            "--log-format=json",
            "pool.toml",
        ])
        .unwrap();
        assert_eq!(a.mode, Mode::Run);
        assert!(a.no_watch);
        assert_eq!(a.log_level.as_deref(), Some("debug"));
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.config, Some(PathBuf::from("pool.toml")));
    }

    #[test]
    fn modes() {
        assert_eq!(p(&["--check", "x"]).unwrap().mode, Mode::Check);
        assert_eq!(
            p(&["--status", "x", "--json"]).unwrap().mode,
            Mode::Status { json: true }
        );
        assert_eq!(p(&["--plan", "x"]).unwrap().mode, Mode::Plan);
        assert_eq!(p(&["--help"]).unwrap().mode, Mode::Help);
        assert_eq!(p(&["-V"]).unwrap().mode, Mode::Version);
    }

    #[test]
    fn usage_errors() {
        assert!(p(&[]).is_err());
        assert!(p(&["a", "b"]).is_err());
        assert!(p(&["--bogus", "a"]).is_err());
        assert!(p(&["--json", "a"]).is_err());
        assert!(p(&["--check", "--plan", "a"]).is_err());
        assert!(p(&["--log-format", "xml", "a"]).is_err());
        assert!(p(&["--log-level"]).is_err());
    }
}
