//! Command-line parsing (SPEC section 2). Tiny on purpose: lexopt, no derive magic.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::LogFormat;

pub const USAGE: &str = "\
usage: orchd [--no-watch] [--log-level LEVEL] [--log-format text|json] CONFIG
       orchd --check CONFIG
       orchd ctl CONFIG VERB [ARG...]
       orchd --status CONFIG [--json]
       orchd --plan CONFIG
       orchd --help | --version

Runs the worker pools and routes described in CONFIG (a TOML file; see orchd.toml(5)).

  --check          validate CONFIG, print the resolved pools and routes, exit 0 or 1
  ctl              operate the orchd running CONFIG (orchd ctl --help lists the verbs)
  --status         show the pools and instances of the orchd running CONFIG
  --json           with --status: print the raw JSON object
  --plan           show what reloading CONFIG now would change in the running orchd
  --no-watch       do not reload when CONFIG changes on disk (SIGHUP still reloads)
  --log-level L    off, error, warn, info, debug or trace, or a RUST_LOG-style
                   filter such as warn,upper=debug; overrides RUST_LOG and the
                   config's log_level
  --log-format F   text (default) or json (one object per line)
  -h, --help       print this help
  -V, --version    print the version
";

pub const CTL_USAGE: &str = "\
usage: orchd ctl CONFIG VERB [ARG...]

Talks to the orchd running CONFIG through its control socket. TARGET is POOL or
POOL/INDEX (the instance logged as POOL[INDEX]); several may be given.

  status [--json]          the pools and instances (as orchd --status)
  plan [FILE]              what reloading FILE (default CONFIG) would change
  reload                   reload CONFIG now
  restart TARGET...        rolling restart: replacement ready first, then drain the old
  stop TARGET...           drain and stop; held stopped until start
  start TARGET...          release a hold, or start a failed or exited instance
  signal SIG TARGET...     send SIG (TERM, SIGUSR1, 10, ...) to each process group
  logs [TARGET...] [-f] [-n N] [--json]
                           the last N lines (default 10) of output of those instances
                           (all pools without TARGET) and orchd's lines about them;
                           -f follows new lines

  --timeout DURATION       how long to wait for the answer (restart and stop: 5m)

Exit status: 0 done; 1 failed (unknown pool or index, no orchd answering, the action
failed); 2 usage error.
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Run,
    Check,
    Status {
        json: bool,
    },
    Plan,
    /// `orchd ctl CONFIG VERB [ARG...]`.
    Ctl(Ctl),
    Help,
    /// `orchd ctl --help`.
    CtlHelp,
    Version,
}

/// One `orchd ctl` command line (SPEC 9), checked: arguments that reach the control
/// socket are known to parse there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctl {
    pub verb: CtlVerb,
    /// `--timeout`: how long to wait for the answer (None: the verb's default).
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlVerb {
    Status {
        json: bool,
    },
    Plan {
        file: Option<PathBuf>,
    },
    Reload,
    Restart(Vec<String>),
    Stop(Vec<String>),
    Start(Vec<String>),
    Signal {
        signal: String,
        targets: Vec<String>,
    },
    /// `logs [TARGET...] [-f] [-n N] [--json]`.
    Logs {
        targets: Vec<String>,
        follow: bool,
        lines: Option<usize>,
        json: bool,
    },
}

impl CtlVerb {
    /// The control socket command line (`plan` is resolved by the client).
    pub fn command(&self) -> Option<String> {
        Some(match self {
            CtlVerb::Status { .. } => "status".into(),
            CtlVerb::Plan { .. } => return None,
            CtlVerb::Reload => "reload".into(),
            CtlVerb::Restart(t) => format!("restart {}", t.join(" ")),
            CtlVerb::Stop(t) => format!("stop {}", t.join(" ")),
            CtlVerb::Start(t) => format!("start {}", t.join(" ")),
            CtlVerb::Signal { signal, targets } => {
                format!("signal {signal} {}", targets.join(" "))
            }
            CtlVerb::Logs {
                targets,
                follow,
                lines,
                ..
            } => {
                let mut c = "logs".to_string();
                for t in targets {
                    c.push(' ');
                    c.push_str(t);
                }
                if *follow {
                    c.push_str(" -f");
                }
                if let Some(n) = lines {
                    c.push_str(&format!(" -n {n}"));
                }
                c
            }
        })
    }

    /// `restart` and `stop` wait until done: 5 minutes by default (SPEC 9).
    pub fn default_timeout(&self) -> Duration {
        match self {
            CtlVerb::Restart(_) | CtlVerb::Stop(_) => Duration::from_secs(300),
            _ => Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub mode: Mode,
    pub config: Option<PathBuf>,
    pub no_watch: bool,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
}

impl Args {
    /// `mode` with every option at its default.
    fn new(mode: Mode) -> Args {
        Args {
            mode,
            config: None,
            no_watch: false,
            log_level: None,
            log_format: LogFormat::Text,
        }
    }
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|a| a == "ctl") {
        args.next();
        return parse_ctl(args);
    }
    let mut p = lexopt::Parser::from_args(args);
    let mut a = Args::new(Mode::Run);
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
                let v = v.string().map_err(|e| e.to_string())?;
                crate::logging::check_filter(&v).map_err(|e| format!("--log-level {v:?}: {e}"))?;
                a.log_level = Some(v);
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

/// `orchd ctl CONFIG VERB [ARG...]`: options may come anywhere after `ctl`.
fn parse_ctl(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut a = Args::new(Mode::CtlHelp);
    let (mut json, mut timeout) = (false, None);
    let (mut follow, mut lines) = (false, None);
    let mut words: Vec<String> = Vec::new();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(a),
            Long("json") => json = true,
            Long("timeout") => {
                let v = p.value().map_err(|e| e.to_string())?;
                let v = v.string().map_err(|e| e.to_string())?;
                let d =
                    humantime::parse_duration(&v).map_err(|e| format!("--timeout {v:?}: {e}"))?;
                timeout = Some(d);
            }
            Short('f') | Long("follow") => follow = true,
            Short('n') | Long("lines") => {
                let v = p.value().map_err(|e| e.to_string())?;
                let v = v.string().map_err(|e| e.to_string())?;
                lines = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("-n {v:?}: expected a number of lines"))?,
                );
            }
            Value(v) if a.config.is_none() => a.config = Some(PathBuf::from(v)),
            Value(v) => words.push(
                v.into_string()
                    .map_err(|v| format!("argument {:?} is not UTF-8", v.to_string_lossy()))?,
            ),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    if a.config.is_none() {
        return Err("ctl: missing CONFIG".into());
    }
    let Some((verb, rest)) = words.split_first() else {
        return Err("ctl: missing VERB".into());
    };
    let rest = rest.to_vec();
    let none = |rest: &[String]| match rest.first() {
        Some(x) => Err(format!("{verb}: unexpected argument {x:?}")),
        None => Ok(()),
    };
    let targets = |rest: Vec<String>| -> Result<Vec<String>, String> {
        if rest.is_empty() {
            return Err(format!("{verb}: missing TARGET (POOL or POOL/INDEX)"));
        }
        for t in &rest {
            crate::daemon::parse_target(t)?;
        }
        Ok(rest)
    };
    let verb = match verb.as_str() {
        "status" => {
            none(&rest)?;
            CtlVerb::Status { json }
        }
        "plan" => {
            if rest.len() > 1 {
                return Err(format!("plan: unexpected argument {:?}", rest[1]));
            }
            let file = rest.first().map(PathBuf::from);
            if file.as_ref().is_some_and(|f| {
                f.as_os_str().is_empty() || f.to_string_lossy().contains(['\n', '\r'])
            }) {
                return Err("plan: bad FILE".into());
            }
            CtlVerb::Plan { file }
        }
        "reload" => {
            none(&rest)?;
            CtlVerb::Reload
        }
        "restart" => CtlVerb::Restart(targets(rest)?),
        "stop" => CtlVerb::Stop(targets(rest)?),
        "start" => CtlVerb::Start(targets(rest)?),
        "signal" => {
            let Some((signal, rest)) = rest.split_first() else {
                return Err("signal: missing SIG and TARGET".into());
            };
            crate::config::parse_signal(signal)?;
            CtlVerb::Signal {
                signal: signal.clone(),
                targets: targets(rest.to_vec())?,
            }
        }
        "logs" => {
            for t in &rest {
                crate::daemon::parse_target(t)?;
            }
            CtlVerb::Logs {
                targets: rest,
                follow,
                lines,
                json,
            }
        }
        other => {
            return Err(format!(
                "ctl: unknown verb {other:?}; expected status, plan, reload, restart, stop, \
                 start, signal or logs"
            ))
        }
    };
    if json && !matches!(verb, CtlVerb::Status { .. } | CtlVerb::Logs { .. }) {
        return Err("--json goes with status and logs".into());
    }
    if (follow || lines.is_some()) && !matches!(verb, CtlVerb::Logs { .. }) {
        return Err("-f and -n go with logs".into());
    }
    a.mode = Mode::Ctl(Ctl { verb, timeout });
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
        assert!(p(&["--log-level", "verbose", "a"]).is_err());
        assert!(p(&["--log-level", "warn,upper=loud", "a"]).is_err());
        assert!(p(&["--log-level", "warn,upper=debug", "a"]).is_ok());
    }

    fn ctl(v: &[&str]) -> Result<Ctl, String> {
        let mut all = vec!["ctl"];
        all.extend_from_slice(v);
        match p(&all)?.mode {
            Mode::Ctl(c) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ctl_verbs() {
        let c = ctl(&["x.toml", "restart", "web", "web/1", "--timeout", "1m"]).unwrap();
        assert_eq!(c.verb, CtlVerb::Restart(vec!["web".into(), "web/1".into()]));
        assert_eq!(c.timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.verb.command().unwrap(), "restart web web/1");
        assert_eq!(
            ctl(&["x", "status", "--json"]).unwrap().verb,
            CtlVerb::Status { json: true }
        );
        assert_eq!(
            ctl(&["x", "plan", "y.toml"]).unwrap().verb,
            CtlVerb::Plan {
                file: Some("y.toml".into())
            }
        );
        assert_eq!(
            ctl(&["x", "plan"]).unwrap().verb,
            CtlVerb::Plan { file: None }
        );
        let c = ctl(&["x", "signal", "SIGUSR1", "web/0"]).unwrap();
        assert_eq!(c.verb.command().unwrap(), "signal SIGUSR1 web/0");
        assert!(ctl(&["x", "signal", "10", "web"]).is_ok());
        assert_eq!(p(&["ctl", "--help"]).unwrap().mode, Mode::CtlHelp);
    }

    #[test]
    fn ctl_usage_errors() {
        for bad in [
            &["x"][..],
            &[],
            &["x", "bogus"],
            &["x", "restart"],
            &["x", "stop", "web/"],
            &["x", "stop", "web/a"],
            &["x", "start", "/1"],
            &["x", "signal", "web"],
            &["x", "signal", "NOPE", "web"],
            &["x", "signal", "0", "web"],
            &["x", "reload", "now"],
            &["x", "status", "extra"],
            &["x", "stop", "web", "--json"],
            &["x", "restart", "web", "--timeout", "soon"],
            &["x", "plan", "a", "b"],
            &["x", "status", "--bogus"],
            &["x", "logs", "-n"],
            &["x", "logs", "-n", "x"],
            &["x", "logs", "web/x"],
            &["x", "restart", "web", "-f"],
            &["x", "status", "-n", "3"],
        ] {
            assert!(ctl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ctl_logs() {
        let c = ctl(&["x", "logs"]).unwrap();
        assert_eq!(c.verb.command().unwrap(), "logs");
        let c = ctl(&["x", "logs", "web/1", "-f", "api", "-n5", "--json"]).unwrap();
        assert_eq!(
            c.verb,
            CtlVerb::Logs {
                targets: vec!["web/1".into(), "api".into()],
                follow: true,
                lines: Some(5),
                json: true
            }
        );
        // What the client sends parses on the control socket as what was asked.
        let cmd = c.verb.command().unwrap();
        assert_eq!(cmd, "logs web/1 api -f -n 5");
        assert!(matches!(
            crate::daemon::parse_command(&cmd),
            crate::daemon::ControlCommand::Logs {
                follow: true,
                lines: Some(5),
                ..
            }
        ));
    }
}
