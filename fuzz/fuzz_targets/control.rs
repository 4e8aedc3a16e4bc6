//! The control-socket command parser never panics, and what it accepts is canonical:
//! a `plan` path is non-empty and trimmed, TARGETs and signals re-parse to themselves
//! (a `logs` TARGET never starts with `-`), and re-parsing the canonical form of a
//! command gives the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchd::daemon::{parse_command, ControlCommand, Target};

/// Targets in canonical form; each is non-empty, without whitespace, and re-parses
/// to itself.
fn targets(t: &[Target]) -> String {
    assert!(!t.is_empty(), "a verb with no TARGET");
    let s: Vec<String> = t.iter().map(|t| t.to_string()).collect();
    for (text, target) in s.iter().zip(t) {
        assert!(!target.pool.is_empty() && !text.contains(char::is_whitespace));
        assert_eq!(orchd::daemon::parse_target(text).as_ref(), Ok(target));
    }
    s.join(" ")
}

fuzz_target!(|data: &[u8]| {
    // The daemon decodes a line lossily and trims it before parsing.
    let line = String::from_utf8_lossy(data);
    let cmd = parse_command(&line);
    assert_eq!(
        parse_command(line.trim()),
        cmd,
        "trimming changed the parse"
    );
    let canonical = match &cmd {
        ControlCommand::Status => "status".to_string(),
        ControlCommand::Reload => "reload".to_string(),
        ControlCommand::Plan(p) => {
            let s = p.to_str().expect("a path from a str");
            assert!(!s.is_empty() && s.trim() == s, "plan path {s:?}");
            format!("plan {s}")
        }
        ControlCommand::Logs {
            targets: t,
            follow,
            lines,
        } => {
            let mut s = "logs".to_string();
            if !t.is_empty() {
                assert!(t.iter().all(|t| !t.pool.starts_with('-')), "{t:?}");
                s = format!("logs {}", targets(t));
            }
            if *follow {
                s.push_str(" -f");
            }
            if let Some(n) = lines {
                s.push_str(&format!(" -n {n}"));
            }
            s
        }
        ControlCommand::Restart(t) => format!("restart {}", targets(t)),
        ControlCommand::Stop(t) => format!("stop {}", targets(t)),
        ControlCommand::Start(t) => format!("start {}", targets(t)),
        ControlCommand::Signal { signal, targets: t } => {
            assert!((1..=64).contains(signal), "signal {signal}");
            format!("signal {signal} {}", targets(t))
        }
        ControlCommand::Invalid(e) => {
            assert!(!e.is_empty());
            // The reply is one JSON line: the error must serialize without a newline.
            let reply = serde_json::json!({"ok": false, "error": e}).to_string();
            assert!(!reply.contains('\n'));
            return;
        }
    };
    assert_eq!(parse_command(&canonical), cmd);
});
