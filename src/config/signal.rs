//! Signal names: the one table orchd knows them by, read for `stop_signal`, for
//! `ctl signal` and for exit reports (`exited with signal SEGV`).

use super::model::Signal;

/// Every signal orchd knows by name, canonical name (without "SIG") first. The last
/// field says whether it can be named (`stop_signal`, `ctl signal`): the others are
/// only reported, when a worker dies by them.
const SIGNALS: &[(&str, i32, bool)] = &[
    ("HUP", libc::SIGHUP, true),
    ("INT", libc::SIGINT, true),
    ("QUIT", libc::SIGQUIT, true),
    ("KILL", libc::SIGKILL, true),
    ("USR1", libc::SIGUSR1, true),
    ("USR2", libc::SIGUSR2, true),
    ("TERM", libc::SIGTERM, true),
    ("ALRM", libc::SIGALRM, true),
    ("CONT", libc::SIGCONT, true),
    ("STOP", libc::SIGSTOP, true),
    ("TSTP", libc::SIGTSTP, true),
    ("WINCH", libc::SIGWINCH, true),
    ("PIPE", libc::SIGPIPE, true),
    ("CHLD", libc::SIGCHLD, true),
    ("ILL", libc::SIGILL, false),
    ("ABRT", libc::SIGABRT, false),
    ("BUS", libc::SIGBUS, false),
    ("FPE", libc::SIGFPE, false),
    ("SEGV", libc::SIGSEGV, false),
];

/// The signals that can be named, as (name, number).
fn nameable() -> impl Iterator<Item = (&'static str, i32)> {
    SIGNALS
        .iter()
        .filter(|s| s.2)
        .map(|&(name, number, _)| (name, number))
}

/// A signal by name: "TERM", "SIGTERM", "term" and "sigterm" are all SIGTERM.
/// The returned [`Signal::name`] is the canonical upper-case name without "SIG".
pub fn signal_by_name(name: &str) -> Option<Signal> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    nameable()
        .find(|(n, _)| *n == bare)
        .map(|(name, number)| Signal { number, name })
}

/// The names that can be used, for error messages: "HUP, INT, ...".
pub(crate) fn known_signal_names() -> String {
    nameable().map(|(n, _)| n).collect::<Vec<_>>().join(", ")
}

/// Canonical name of a signal number ("TERM"), or the number itself.
pub fn signal_name(number: i32) -> String {
    SIGNALS
        .iter()
        .find(|s| s.1 == number)
        .map_or_else(|| number.to_string(), |s| s.0.to_string())
}

/// A signal for `ctl signal`: a name with or without `SIG` (any case), or a number
/// from 1 to 64. Returns the number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<i32>() {
            Ok(n @ 1..=64) => Ok(n),
            _ => Err(format!("bad signal {s:?}: a number must be from 1 to 64")),
        };
    }
    signal_by_name(s).map(|sig| sig.number).ok_or_else(|| {
        format!(
            "unknown signal {s:?}; expected a number or one of {}",
            known_signal_names()
        )
    })
}
