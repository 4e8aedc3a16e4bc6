//! `orchd --check` on the readiness, health, start-order, rolling, memory and metrics
//! keys (SPEC 3, 10, 11), and `--plan` on changing them (SPEC 6). Parser only: what
//! the event loop does with them is tested with issue 10's wiring.

use crate::check::{check, error_line, pos};
use std::time::Duration;

use crate::common::*;

/// `orchd --check` on `toml` must fail: its stderr, each error checked to be at the
/// position of `needle` in the line holding `marker`, under `key`, saying `message`;
/// and nothing else reported.
#[track_caller]
fn errors(name: &str, toml: &str, expected: &[(&str, &str, &str, &str)]) {
    let dir = TempDir::new(name);
    let (cfg, code, _, err) = check(&dir, toml);
    assert_eq!(code, 1, "{err}");
    for (marker, needle, key, message) in expected {
        let line = error_line(&err, &cfg, pos(toml, marker, needle), key);
        assert!(line.contains(message), "{line}");
    }
    assert_eq!(err.lines().count(), expected.len(), "{err}");
}

/// A config with every new key, the way the README shows it.
const ALL_KEYS: &str = r#"
[orchd]
metrics = "127.0.0.1:9464"

[pool.migrate]
command = "true"
restart = "never"

[pool.db]
command = "sleep 1000"
ready = { log = "ready to accept connections", timeout = "30s" }
health = { exec = ["true"], every = "5s", timeout = "1s", failures = 2 }
max_rss = "512MiB"

[pool.api]
command = "cat"
count = 4
depends_on = ["migrate", "db"]
ready = { probe = true }
health = { send = "PING", expect = "^PONG" }
rolling = { parallel = 2, order = "stop-first" }

[[route]]
from = "unix:api.sock"
to = "api"
"#;

#[test]
fn check_accepts_every_key_and_describes_it() {
    let dir = TempDir::new("hc-all");
    let (_, code, out, err) = check(&dir, ALL_KEYS);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .ends_with(" metrics=127.0.0.1:9464"),
        "{out}"
    );
    // After each pool's line and its backoff, give_up and stop lines.
    let block = |pool: &str, n: usize| -> Vec<&str> {
        let head = format!("pool {pool}:");
        out.lines()
            .skip_while(|l| !l.starts_with(&head))
            .skip(4)
            .take(n)
            .collect()
    };
    assert_eq!(
        block("db", 3),
        [
            "  ready: log=\"ready to accept connections\" timeout=30s",
            "  health: exec=[\"true\"] every=5s timeout=1s failures=2",
            "  max_rss: 512MiB",
        ],
        "{out}"
    );
    assert_eq!(
        block("api", 4),
        [
            "  ready: probe=true timeout=1m",
            "  health: send=\"PING\" expect=\"^PONG\" every=10s timeout=2s failures=3",
            "  depends_on: migrate db",
            "  rolling: parallel=2 order=stop-first",
        ],
        "{out}"
    );
}

#[test]
fn a_dependency_cycle_is_an_error_that_names_it() {
    let toml = r#"
[pool.web]
command = "true"
depends_on = ["api"]

[pool.api]
command = "true"
depends_on = ["db"]

[pool.db]
command = "true"
depends_on = ["web"]
"#;
    errors(
        "hc-cycle",
        toml,
        &[(
            "[\"api\"]",
            "\"api\"",
            "pool.web.depends_on[1]",
            "depends_on forms a cycle: web → api → db → web",
        )],
    );
}

#[test]
fn unknown_dependencies_and_send_without_input_are_errors() {
    let toml = r#"
[pool.web]
command = "true"
depends_on = ["dbb"]
health = { send = "PING", expect = "PONG" }

[pool.db]
command = "true"
"#;
    errors(
        "hc-refs",
        toml,
        &[
            (
                "\"dbb\"",
                "\"dbb\"",
                "pool.web.depends_on[1]",
                "no pool named \"dbb\"; the pools are: web, db",
            ),
            (
                "send =",
                "send",
                "pool.web.health.send",
                "needs message input",
            ),
        ],
    );
}

#[test]
fn each_key_reports_its_own_mistake_with_its_position() {
    let toml = r#"
[orchd]
metrics = "tcp://127.0.0.1:9464"

[pool.web]
command = "true"
ready = { log = "x", after = "1s" }
health = { exec = "true", every = "1ms", failures = 0 }
rolling = { parallel = 0, order = "sideways" }
max_rss = "12"
"#;
    errors(
        "hc-each",
        toml,
        &[
            ("metrics", "\"tcp", "orchd.metrics", "without a scheme"),
            (
                "ready",
                "after",
                "pool.web.ready.after",
                "found log and after",
            ),
            (
                "health",
                "\"1ms\"",
                "pool.web.health.every",
                "at least 100ms",
            ),
            (
                "health",
                "0 }",
                "pool.web.health.failures",
                "from 1 to 1000",
            ),
            ("rolling", "0,", "pool.web.rolling.parallel", ">= 1"),
            (
                "rolling",
                "\"sideways\"",
                "pool.web.rolling.order",
                "\"stop-first\"",
            ),
            ("max_rss", "\"12\"", "pool.web.max_rss", "at least 1MiB"),
        ],
    );
}

/// The running orchd plans the new keys as in-place changes, and reloading them
/// restarts no worker (they are not acted on yet, but accepted by a live reload).
#[test]
fn plan_and_reload_apply_the_new_keys_in_place() {
    let dir = TempDir::new("hc-plan");
    let head = "[orchd]\ncontrol = \"o.sock\"\nwatch = false\n";
    let pool = "[pool.web]\ncommand = \"sleep 1000\"\n";
    let cfg = dir.write("pool.toml", &format!("{head}{pool}"));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let before = o.children();
    assert_eq!(before.len(), 1, "{before:?}");
    dir.write(
        "pool.toml",
        &format!(
            "{head}metrics = \"127.0.0.1:0\"\n{pool}ready = {{ after = \"1s\" }}\n\
             health = {{ exec = \"true\" }}\nmax_rss = \"1GiB\"\nrolling = {{ parallel = 2 }}\n"
        ),
    );
    let (code, out, err) = run_orchd(&["--plan", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("~ pool web: apply in place: ready, health, rolling, max_rss"),
        "{out}"
    );
    assert!(!out.contains("replace"), "{out}");
    assert!(out.contains("~ [orchd]: metrics"), "{out}");
    o.signal(libc::SIGHUP);
    o.wait_log("reload", 1);
    wait_for("the reload to finish", Duration::from_secs(10), || {
        o.log().contains("~web").then_some(())
    });
    assert_eq!(o.children(), before, "no worker restarted:\n{}", o.log());
    assert_eq!(o.stop(), 0);
}
