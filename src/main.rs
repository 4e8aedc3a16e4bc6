//! `orchd`: command-line entry. Parses arguments, loads the config, and runs the
//! daemon, a check, or a control-socket query. Exit codes (SPEC 2): 0 clean, 1 runtime
//! failure (or a failed batch message), 2 usage error or invalid config at start-up.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use orchd::cli::{self, Mode};
use orchd::{config, daemon, logging, sys};

/// Whether orchd was started with stdout closed. Recorded before `main`: Rust's
/// start-up code puts `/dev/null` on closed standard fds, after which a closed stdout
/// looks like `>/dev/null`.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

#[cfg(target_os = "linux")]
extern "C" fn record_closed_stdout() {
    STDOUT_CLOSED.store(!sys::fd_is_open(1), Ordering::Relaxed);
}

/// Run by the C runtime before Rust's start-up code (ELF `.init_array`).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static RECORD_CLOSED_STDOUT: extern "C" fn() = record_closed_stdout;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            let ctl = std::env::args_os().nth(1).is_some_and(|a| a == "ctl");
            let usage = if ctl { cli::CTL_USAGE } else { cli::USAGE };
            eprintln!("orchd: {e}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    let code = match &args.mode {
        Mode::Help => print(cli::USAGE),
        Mode::CtlHelp => print(cli::CTL_USAGE),
        Mode::Version => print(&format!("orchd {}\n", env!("CARGO_PKG_VERSION"))),
        Mode::Check => check(&args),
        Mode::Run => run(&args),
        Mode::Status { json } => daemon::client::status(config_path(&args), *json),
        Mode::Plan => daemon::client::plan(config_path(&args), None),
        Mode::Ctl(ctl) => daemon::client::ctl(config_path(&args), ctl),
    };
    ExitCode::from(code)
}

fn config_path(args: &cli::Args) -> &std::path::Path {
    args.config
        .as_deref()
        .unwrap_or(std::path::Path::new("pool.toml"))
}

/// Write to stdout without panicking on a closed pipe.
fn print(s: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn check(args: &cli::Args) -> u8 {
    match config::load(config_path(args)) {
        Ok(c) => match config::preflight(&c) {
            problems if problems.is_empty() => print(&config::describe(&c)),
            problems => {
                eprintln!("{}", config::ConfigErrors(problems));
                1
            }
        },
        Err(errors) => {
            eprintln!("{errors}");
            1
        }
    }
}

fn run(args: &cli::Args) -> u8 {
    let config = match config::load(config_path(args)) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("orchd: invalid config; not starting");
            return 2;
        }
    };
    logging::init(
        args.log_level.as_deref(),
        &config.settings.log_level,
        args.log_format,
    );
    // Only warnings here: the file may become runnable later (SPEC 2).
    for problem in config::preflight(&config) {
        log::warn!("{problem} (starting anyway: a failed start is retried with backoff)");
    }
    let opts = daemon::Options {
        no_watch: args.no_watch,
        stdout_closed: STDOUT_CLOSED.load(Ordering::Relaxed),
    };
    let code = daemon::run(config, opts).clamp(0, 255) as u8;
    // Logging never blocks the loop; the last lines get a bounded wait.
    logging::final_flush(std::time::Duration::from_secs(2));
    code
}
