//! Signal names for `stop_signal`.

use super::model::Signal;

/// The signals orchd knows by name, canonical name (without "SIG") first.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("ALRM", libc::SIGALRM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
    ("PIPE", libc::SIGPIPE),
    ("CHLD", libc::SIGCHLD),
];

/// A signal by name: "TERM", "SIGTERM", "term" and "sigterm" are all SIGTERM.
/// The returned [`Signal::name`] is the canonical upper-case name without "SIG".
pub fn signal_by_name(name: &str) -> Option<Signal> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|&(name, number)| Signal { number, name })
}

/// The known names, for error messages: "HUP, INT, ...".
pub(crate) fn known_signal_names() -> String {
    SIGNALS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}
