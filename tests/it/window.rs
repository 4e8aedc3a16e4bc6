//! The adaptive in-flight window (`max_inflight = "auto"`, the default; issue 8): a
//! slow worker is not handed a pipe full of messages that a fast one could take.

use std::process::Stdio;

use crate::common::*;

/// 300 lines through a pool of a fast and a slow (0.5 s a line) worker: how many
/// the slow one answered.
fn slow_share(settings: &str) -> usize {
    let dir = TempDir::new("window");
    let cfg = dir.write(
        "batch.toml",
        &format!(
            r#"
[pool.w]
count = 2
command = 'while IFS= read -r l; do [ "$ORCHD_INSTANCE" = 1 ] && sleep 0.5; echo "$ORCHD_INSTANCE $l"; done'
{settings}

[[route]]
from = "stdin"
to = "w"
"#
        ),
    );
    let input: String = (0..300).map(|i| format!("m{i}\n")).collect();
    let (code, out, err) = run_batch(&cfg, Stdio::piped(), Some(input.into_bytes()), DEADLINE);
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(out.lines().count(), 300, "{out}");
    out.lines().filter(|l| l.starts_with("1 ")).count()
}

#[test]
fn by_default_a_slow_worker_gets_few_messages() {
    // A fixed window of 32 hands it 32 at once (16 s of work); the adaptive window
    // starts at 2 and stays there once its first reply took 0.5 s.
    let slow = slow_share("");
    assert!(
        (1..=8).contains(&slow),
        "the slow worker answered {slow} of 300"
    );
}

#[test]
fn a_number_still_fixes_the_window() {
    let slow = slow_share("max_inflight = 4");
    assert!(slow >= 4, "the slow worker answered {slow} of 300");
}
