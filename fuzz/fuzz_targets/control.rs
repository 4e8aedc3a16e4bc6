//! The control-socket command parser never panics, and what it accepts is canonical:
//! a `plan` path is non-empty and trimmed, a `logs` target names a pool without
//! whitespace or `/`, and re-parsing the canonical form of a
//! command gives the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchd::daemon::{parse_command, ControlCommand};

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
            targets,
            follow,
            lines,
        } => {
            let mut s = "logs".to_string();
            for t in targets {
                assert!(!t.pool.is_empty() && !t.pool.starts_with('-'));
                assert!(!t.pool.contains(char::is_whitespace) && !t.pool.contains('/'));
                s.push(' ');
                s.push_str(&t.pool);
                if let Some(i) = t.index {
                    s.push_str(&format!("/{i}"));
                }
            }
            if *follow {
                s.push_str(" -f");
            }
            if let Some(n) = lines {
                s.push_str(&format!(" -n {n}"));
            }
            s
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
