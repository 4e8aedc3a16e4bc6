use std::path::{Path, PathBuf};
use std::time::Duration;

use super::signal::known_signal_names;
use super::source::line_col;
use super::*;

pub(super) const FILE: &str = "/etc/orchd/pool.toml";

pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_str(Path::new(FILE), text)
}

pub(super) fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

pub(super) fn errs(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => {
            assert!(!e.is_empty());
            e.0
        }
    }
}

/// Exactly one error, at LINE:COL with KEY, whose message contains `msg`.
#[track_caller]
pub(super) fn one(text: &str, line: usize, column: usize, key: &str, msg: &str) -> ConfigError {
    let e = errs(text);
    assert_eq!(
        e.len(),
        1,
        "expected one error, got:\n{}",
        ConfigErrors(e.clone())
    );
    check(&e[0], line, column, key, msg);
    e[0].clone()
}

#[track_caller]
pub(super) fn check(e: &ConfigError, line: usize, column: usize, key: &str, msg: &str) {
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (line, column, key),
        "wrong location or key for: {e}"
    );
    assert!(
        e.message.contains(msg),
        "message {:?} lacks {msg:?}",
        e.message
    );
    assert_eq!(e.file, PathBuf::from(FILE));
}

/// A valid pool on lines 1-2, for tests that add lines from line 3 on.
pub(super) const WEB: &str = "[pool.web]\ncommand = [\"worker\"]\n";

pub(super) fn with_web(rest: &str) -> String {
    format!("{WEB}{rest}")
}

pub(super) fn web(c: &Config) -> &Pool {
    match c.pool("web") {
        Some(p) => p,
        None => panic!("no pool web"),
    }
}

// ---------------------------------------------------------------- defaults

#[test]
fn empty_file_is_valid_with_default_settings() {
    let c = ok("");
    assert_eq!(c.settings, Settings::default());
    assert!(c.pools.is_empty());
    assert!(c.routes.is_empty());
    assert_eq!(c.path, PathBuf::from(FILE));
}

#[test]
fn settings_defaults() {
    let s = ok("[orchd]\n").settings;
    assert_eq!(s.log_level, "info");
    assert_eq!(s.control, None);
    assert_eq!(s.drain_timeout, Duration::from_secs(10));
    assert!(s.watch);
    assert_eq!(s.error_prefix, "ERR ");
    assert_eq!(s.max_clients, 10_000);
    assert_eq!(s.log_buffer, 256 * 1024);
}

#[test]
fn pool_defaults() {
    let c = ok(WEB);
    let p = web(&c);
    assert_eq!(p.name, "web");
    assert_eq!(p.command, Command::Argv(vec!["worker".into()]));
    assert_eq!(p.count, 1);
    assert_eq!(p.cwd, PathBuf::from("/etc/orchd"));
    assert!(p.env.is_empty());
    assert_eq!(p.user, None);
    assert_eq!(p.group, None);
    assert_eq!(p.restart, RestartPolicy::Always);
    assert_eq!(p.backoff, Backoff::default());
    assert_eq!(p.backoff.initial, Duration::from_millis(100));
    assert_eq!(p.backoff.max, Duration::from_secs(30));
    assert_eq!(p.backoff.factor, 2.0);
    assert_eq!(p.backoff.jitter, 0.1);
    assert_eq!(p.backoff.reset_after, Duration::from_secs(10));
    assert_eq!(p.give_up, None);
    assert_eq!(p.stop_signal.name, "TERM");
    assert_eq!(p.stop_signal.number, libc::SIGTERM);
    assert_eq!(p.stop_timeout, Duration::from_secs(10));
    assert_eq!(p.max_inflight, MAX_INFLIGHT_AUTO);
    assert_eq!(p.queue, 10000);
}

#[test]
fn backoff_keys_are_individually_optional() {
    let c = ok(&with_web("backoff = { max = \"1m\", jitter = 0.5 }\n"));
    let b = web(&c).backoff;
    assert_eq!(b.initial, Duration::from_millis(100));
    assert_eq!(b.max, Duration::from_secs(60));
    assert_eq!(b.factor, 2.0);
    assert_eq!(b.jitter, 0.5);
    assert_eq!(b.reset_after, Duration::from_secs(10));
}

#[test]
fn route_defaults() {
    let c = ok(&with_web("[[route]]\nfrom = \"stdin\"\nto = \"web\"\n"));
    let r = &c.routes[0];
    assert_eq!(r.from, Source::Stdin);
    assert_eq!(r.mode, 0o660);
    assert_eq!(r.matcher, None);
    assert_eq!(r.to, "web");
    assert_eq!(r.strategy, Strategy::RoundRobin);
    assert_eq!(r.key, None);
    assert_eq!(r.timeout, Some(Duration::from_secs(30)));
    assert_eq!(r.retries, 2);
    assert!(r.ordered);
    assert!(c.is_routed("web"));
}

const SPEC_EXAMPLE: &str = r#"[orchd]                         # optional; defaults shown
log_level = "info"
control = "orchd.sock"
drain_timeout = "10s"
watch = true
error_prefix = "ERR "

[pool.upper]
command = ["python3", "upper.py"]
count = 4
cwd = "."
env = { MODE = "fast" }
user = "nobody"
group = "nogroup"
restart = "always"
backoff = { initial = "100ms", max = "30s", factor = 2.0, jitter = 0.1, reset_after = "10s" }
give_up = { restarts = 10, within = "60s", cooldown = "5m" }
stop_signal = "TERM"
stop_timeout = "10s"
max_inflight = 32
queue = 10000

[[route]]
from = "tcp://127.0.0.1:7070"
mode = "0660"
match = "^upper "
to = "upper"
strategy = "round-robin"
key = "^(\\S+)"
timeout = "30s"
retries = 2
ordered = true
"#;

#[test]
fn spec_example_is_checked_strictly() {
    // The spec's sample sets `mode` on a tcp route and `key` without strategy "hash":
    // both are rejected, at their keys.
    let e = errs(SPEC_EXAMPLE);
    assert_eq!(e.len(), 2, "{}", ConfigErrors(e.clone()));
    check(
        &e[0],
        25,
        1,
        "route[1].mode",
        "only allowed with from = \"unix:PATH\"",
    );
    check(
        &e[1],
        29,
        1,
        "route[1].key",
        "only allowed with strategy = \"hash\"",
    );
}

#[test]
fn spec_example_values() {
    let text = SPEC_EXAMPLE
        .replace("mode = \"0660\"\n", "")
        .replace("key = \"^(\\\\S+)\"\n", "");
    let c = ok(&text);
    let s = &c.settings;
    assert_eq!(s.control, Some(PathBuf::from("/etc/orchd/orchd.sock")));
    let p = &c.pools[0];
    assert_eq!(p.name, "upper");
    assert_eq!(
        p.command,
        Command::Argv(vec!["python3".into(), "upper.py".into()])
    );
    assert_eq!(p.count, 4);
    assert_eq!(p.cwd, PathBuf::from("/etc/orchd"));
    assert_eq!(p.env.get("MODE").map(String::as_str), Some("fast"));
    assert_eq!(p.user.as_deref(), Some("nobody"));
    assert_eq!(p.group.as_deref(), Some("nogroup"));
    assert_eq!(
        p.give_up,
        Some(GiveUp {
            restarts: 10,
            within: Duration::from_secs(60),
            cooldown: Some(Duration::from_secs(300)),
        })
    );
    let r = &c.routes[0];
    assert_eq!(r.from, Source::Tcp("127.0.0.1:7070".parse().unwrap()));
    assert_eq!(r.matcher.as_ref().map(Pattern::as_str), Some("^upper "));
    assert_eq!(r.timeout, Some(Duration::from_secs(30)));
    // Parsing twice gives equal configs (regexes compare by source).
    assert_eq!(ok(&text), c);
}

// ---------------------------------------------------------------- command

#[test]
fn command_string_is_shell_and_array_is_argv() {
    let c = ok(
        "[pool.a]\ncommand = \"tr a-z A-Z | cat\"\n[pool.b]\ncommand = [\"prog\", \"\", \"x\"]\n",
    );
    assert_eq!(
        c.pools[0].command,
        Command::Shell("tr a-z A-Z | cat".into())
    );
    assert_eq!(
        c.pools[1].command,
        Command::Argv(vec!["prog".into(), "".into(), "x".into()])
    );
}

#[test]
fn command_errors_name_both_forms() {
    for (value, found) in [
        ("[]", "an empty array"),
        ("\"\"", "an empty string"),
        ("\"  \"", "an empty string"),
        ("[\"\", \"x\"]", "first element (the program) is empty"),
        ("[\"a\", 5]", "element 2 is an integer"),
        ("[\"a\", [\"b\"]]", "element 2 is an array"),
        ("5", "found integer 5"),
        ("{ x = 1 }", "found a table"),
        ("true", "found boolean true"),
    ] {
        let e = one(
            &format!("[pool.web]\ncommand = {value}\n"),
            2,
            11,
            "pool.web.command",
            found,
        );
        assert!(e.message.contains("array of strings"), "{e}");
        assert!(e.message.contains("/bin/sh -c"), "{e}");
    }
}

/// Issue 12: exec cannot pass a NUL byte; --check said the command was fine.
#[test]
fn nul_in_a_command_is_an_error() {
    one(
        "[pool.web]\ncommand = [\"prog\", \"a\\u0000b\"]\n",
        2,
        20,
        "pool.web.command[2]",
        "expected a string without a NUL character",
    );
    one(
        "[pool.web]\ncommand = [\"pr\\u0000og\"]\n",
        2,
        12,
        "pool.web.command[1]",
        "without a NUL character",
    );
    one(
        "[pool.web]\ncommand = \"echo \\u0000\"\n",
        2,
        11,
        "pool.web.command",
        "without a NUL character",
    );
    // Every bad element is reported.
    let e = errs("[pool.web]\ncommand = [\"a\", \"\\u0000\", \"b\", \"\\u0000\"]\n");
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["pool.web.command[2]", "pool.web.command[4]"]);
    // NUL in env names and values, cwd, user and group was already refused.
    one(
        &with_web("cwd = \"a\\u0000b\"\n"),
        3,
        7,
        "pool.web.cwd",
        "NUL",
    );
    one(
        &with_web("env = { \"A\\u0000B\" = \"x\" }\n"),
        3,
        9,
        "pool.web.env.\"A\\0B\"",
        "NUL",
    );
}

#[test]
fn missing_command_is_reported_at_the_table_header() {
    one(
        "\n[pool.web]\ncount = 2\n",
        2,
        1,
        "pool.web.command",
        "missing required key \"command\"",
    );
}

// ---------------------------------------------------------------- unknown keys

#[test]
fn unknown_keys_everywhere() {
    let text = "colour = 1\n\
                [orchd]\n\
                verbose = true\n\
                [pool.web]\n\
                command = \"x\"\n\
                commmand = \"y\"\n\
                backoff = { max = \"1s\", maxx = \"2s\" }\n\
                [pool.web.give_up]\n\
                restarts = 1\n\
                within = \"1s\"\n\
                cooldwn = \"1s\"\n\
                [[route]]\n\
                from = \"stdin\"\n\
                to = \"web\"\n\
                fro = \"stdin\"\n\
                [other]\n";
    let e = errs(text);
    assert_eq!(e.len(), 7, "{}", ConfigErrors(e.clone()));
    check(
        &e[0],
        1,
        1,
        "colour",
        "unknown key \"colour\"; expected one of: orchd, pool, route",
    );
    check(
        &e[1],
        3,
        1,
        "orchd.verbose",
        "unknown key \"verbose\"; expected one of: log_level",
    );
    check(&e[2], 6, 1, "pool.web.commmand", "unknown key \"commmand\"");
    check(
        &e[3],
        7,
        25,
        "pool.web.backoff.maxx",
        "unknown key \"maxx\"",
    );
    check(
        &e[4],
        11,
        1,
        "pool.web.give_up.cooldwn",
        "unknown key \"cooldwn\"; expected one of: restarts, within, cooldown",
    );
    check(&e[5], 15, 1, "route[1].fro", "unknown key \"fro\"");
    check(&e[6], 16, 2, "other", "unknown key \"other\"");
}

#[test]
fn wrong_shapes_of_sections() {
    check(&errs("orchd = 5\n")[0], 1, 9, "orchd", "expected a table");
    check(
        &errs("pool = 5\n")[0],
        1,
        8,
        "pool",
        "expected pool tables such as [pool.web], found integer 5",
    );
    check(
        &errs("[pool]\nweb = \"x\"\n")[0],
        2,
        7,
        "pool.web",
        "expected a pool table",
    );
    check(
        &errs("route = 5\n")[0],
        1,
        9,
        "route",
        "expected an array of tables",
    );
    check(
        &errs("route = { to = \"a\" }\n")[0],
        1,
        9,
        "route",
        "expected an array of tables",
    );
    check(
        &errs("route = [1]\n")[0],
        1,
        10,
        "route[1]",
        "expected a route table",
    );
}

// ---------------------------------------------------------------- durations

#[test]
fn durations_are_humantime_strings() {
    let c = ok(&with_web(
        "stop_timeout = \"1m 30s\"\nbackoff = { initial = \"250ms\", reset_after = \"0s\" }\n[orchd]\ndrain_timeout = \"2h\"\n",
    ));
    let p = web(&c);
    assert_eq!(p.stop_timeout, Duration::from_secs(90));
    assert_eq!(p.backoff.initial, Duration::from_millis(250));
    assert_eq!(p.backoff.reset_after, Duration::ZERO);
    assert_eq!(c.settings.drain_timeout, Duration::from_secs(7200));
}

#[test]
fn unparsable_duration() {
    one(
        &with_web("stop_timeout = \"thirty\"\n"),
        3,
        16,
        "pool.web.stop_timeout",
        "expected a duration such as \"250ms\" or \"1m 30s\", found \"thirty\"",
    );
}

#[test]
fn duration_of_wrong_type() {
    for (value, found) in [
        ("30", "found integer 30"),
        ("1.5", "found float 1.5"),
        ("true", "found boolean true"),
        ("[\"1s\"]", "found an array"),
    ] {
        one(
            &format!("[orchd]\ndrain_timeout = {value}\n"),
            2,
            17,
            "orchd.drain_timeout",
            &format!("expected a duration string such as \"250ms\" or \"1m 30s\", {found}"),
        );
    }
}

/// Issue 12: every duration key is capped at 365 days (a larger one passed --check,
/// then overflowed `Instant + Duration` at run time).
#[test]
fn durations_are_capped_at_365_days() {
    const HUGE: &str = "18446744073709551615s";
    let keys = [
        ("[orchd]\ndrain_timeout = \"{}\"\n", "orchd.drain_timeout"),
        ("stop_timeout = \"{}\"\n", "pool.web.stop_timeout"),
        (
            "backoff = { initial = \"{}\", max = \"365d\" }\n",
            "pool.web.backoff.initial",
        ),
        ("backoff = { max = \"{}\" }\n", "pool.web.backoff.max"),
        (
            "backoff = { reset_after = \"{}\" }\n",
            "pool.web.backoff.reset_after",
        ),
        (
            "give_up = { restarts = 1, within = \"{}\" }\n",
            "pool.web.give_up.within",
        ),
        (
            "give_up = { restarts = 1, within = \"1s\", cooldown = \"{}\" }\n",
            "pool.web.give_up.cooldown",
        ),
        (
            "[[route]]\nfrom = \"stdin\"\nto = \"web\"\ntimeout = \"{}\"\n",
            "route[1].timeout",
        ),
    ];
    for (template, key) in keys {
        // The value's position: WEB takes lines 1-2.
        let (i, text) = template
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains("{}"))
            .unwrap();
        let (line, column) = (i + 3, text.find("\"{}\"").unwrap() + 1);
        for bad in [HUGE, "366d", "365d 1ns", "1000000h"] {
            one(
                &with_web(&template.replace("{}", bad)),
                line,
                column,
                key,
                &format!("expected a duration of at most 365 days, found \"{bad}\""),
            );
        }
        for good in ["365d", "8760h", "1s"] {
            ok(&with_web(&template.replace("{}", good)));
        }
    }
    // The backoff initial/max comparison is skipped for a rejected key: one error.
    one(
        &with_web(&format!(
            "backoff = {{ initial = \"{HUGE}\", max = \"1s\" }}\n"
        )),
        3,
        23,
        "pool.web.backoff.initial",
        "at most 365 days",
    );
}

#[test]
fn error_display_matches_the_documented_format() {
    let text =
        "[pool.web]\ncommand = \"x\"\n\n\n\n\n\n\n\n\n[pool.web.backoff]\n  max = \"thirty\"\n";
    let e = match parse_str(Path::new("pool.toml"), text) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    assert_eq!(
        e.to_string(),
        "pool.toml:12:9: pool.web.backoff.max: expected a duration such as \"250ms\" or \"1m 30s\", found \"thirty\""
    );
}

#[test]
fn error_display_without_key_or_position() {
    let e = ConfigError {
        file: "a.toml".into(),
        line: 3,
        column: 4,
        key: String::new(),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "a.toml:3:4: bad");
    let io = ConfigError::without_position("a.toml", "cannot read");
    assert_eq!(io.to_string(), "a.toml: cannot read");
    let all = ConfigErrors(vec![e, io]);
    assert_eq!(all.to_string(), "a.toml:3:4: bad\na.toml: cannot read");
    let _: &dyn std::error::Error = &all;
}

// ---------------------------------------------------------------- signals

#[test]
fn signal_names() {
    for name in ["TERM", "SIGTERM", "term", "sigterm", "SigTerm"] {
        let s = signal_by_name(name).unwrap();
        assert_eq!((s.name, s.number), ("TERM", libc::SIGTERM), "{name}");
    }
    // Spot checks against libc; every nameable signal round-trips through its name.
    for (name, number) in [
        ("HUP", libc::SIGHUP),
        ("KILL", libc::SIGKILL),
        ("CHLD", libc::SIGCHLD),
    ] {
        assert_eq!(signal_by_name(name), Some(Signal { number, name }));
    }
    let names = known_signal_names();
    assert_eq!(names.split(", ").count(), 14, "{names}");
    for name in names.split(", ") {
        let s = signal_by_name(name).unwrap();
        assert_eq!(s.name, name);
        assert_eq!(signal_by_name(&format!("SIG{name}")), Some(s));
        assert_eq!(signal_name(s.number), name);
    }
    // Reported when a worker dies by them, but not nameable (behaviour of 0.1).
    assert_eq!(signal_name(libc::SIGSEGV), "SEGV");
    assert_eq!(signal_by_name("SEGV"), None);
    assert_eq!(signal_name(0), "0");
    for bad in ["", "SIG", "FOO", "SIGSIGTERM", "15", " TERM"] {
        assert_eq!(signal_by_name(bad), None, "{bad:?}");
    }
}

#[test]
fn stop_signal_in_config() {
    let c = ok(&with_web("stop_signal = \"sigint\"\n"));
    assert_eq!(
        web(&c).stop_signal,
        Signal {
            number: libc::SIGINT,
            name: "INT"
        }
    );
    let e = one(
        &with_web("stop_signal = \"SIGFOO\"\n"),
        3,
        15,
        "pool.web.stop_signal",
        "found \"SIGFOO\"",
    );
    assert!(e.message.contains("HUP, INT"), "{e}");
    one(
        &with_web("stop_signal = 15\n"),
        3,
        15,
        "pool.web.stop_signal",
        "expected a string, found integer 15",
    );
}

// ---------------------------------------------------------------- numbers

#[test]
fn count_values() {
    assert_eq!(web(&ok(&with_web("count = 0\n"))).count, 0);
    assert_eq!(web(&ok(&with_web("count = 4\n"))).count, 4);
    one(
        &with_web("count = -3\n"),
        3,
        9,
        "pool.web.count",
        "expected a non-negative integer, found -3",
    );
    one(
        &with_web("count = 4.0\n"),
        3,
        9,
        "pool.web.count",
        "expected a non-negative integer, found float 4.0",
    );
    one(
        &with_web("count = \"4\"\n"),
        3,
        9,
        "pool.web.count",
        "expected a non-negative integer, found \"4\"",
    );
    one(
        &with_web("count = 5000000000\n"),
        3,
        9,
        "pool.web.count",
        "expected an integer from 0 to 4294967295, found 5000000000",
    );
    one(
        &with_web("count = 1979-05-27\n"),
        3,
        9,
        "pool.web.count",
        "found datetime 1979-05-27",
    );
}

#[test]
fn max_inflight_and_queue_at_least_one() {
    one(
        &with_web("max_inflight = 0\n"),
        3,
        16,
        "pool.web.max_inflight",
        "expected an integer >= 1, found 0",
    );
    one(
        &with_web("queue = 0\n"),
        3,
        9,
        "pool.web.queue",
        "expected an integer >= 1, found 0",
    );
    let c = ok(&with_web("max_inflight = 1\nqueue = 1\n"));
    assert_eq!((web(&c).max_inflight, web(&c).queue), (1, 1));
}

#[test]
fn max_inflight_auto() {
    let c = ok(&with_web("max_inflight = \"auto\"\n"));
    assert_eq!(web(&c).max_inflight, MAX_INFLIGHT_AUTO);
    one(
        &with_web("max_inflight = \"many\"\n"),
        3,
        16,
        "pool.web.max_inflight",
        "expected a positive integer or \"auto\", found \"many\"",
    );
}

#[test]
fn backoff_checks() {
    one(
        &with_web("backoff = { factor = 0.5 }\n"),
        3,
        22,
        "pool.web.backoff.factor",
        "expected a number >= 1.0, found 0.5",
    );
    one(
        &with_web("backoff = { factor = nan }\n"),
        3,
        22,
        "pool.web.backoff.factor",
        ">= 1.0",
    );
    one(
        &with_web("backoff = { factor = inf }\n"),
        3,
        22,
        "pool.web.backoff.factor",
        ">= 1.0",
    );
    one(
        &with_web("backoff = { factor = \"2\" }\n"),
        3,
        22,
        "pool.web.backoff.factor",
        "expected a number, found \"2\"",
    );
    one(
        &with_web("backoff = { jitter = 1.5 }\n"),
        3,
        22,
        "pool.web.backoff.jitter",
        "expected a number from 0.0 to 1.0, found 1.5",
    );
    one(
        &with_web("backoff = { jitter = -0.1 }\n"),
        3,
        22,
        "pool.web.backoff.jitter",
        "from 0.0 to 1.0",
    );
    one(
        &with_web("backoff = 5\n"),
        3,
        11,
        "pool.web.backoff",
        "expected a table such as { initial",
    );
    // initial > max: reported at max when given, else at initial.
    one(
        &with_web("backoff = { initial = \"1m\", max = \"10s\" }\n"),
        3,
        35,
        "pool.web.backoff.max",
        "backoff initial (1m) must not be greater than max (10s)",
    );
    one(
        &with_web("backoff = { initial = \"1m\" }\n"),
        3,
        23,
        "pool.web.backoff.initial",
        "max (30s)",
    );
    // An unparsable max gives one error, not a second one about initial > max.
    one(
        &with_web("backoff = { initial = \"1m\", max = \"x\" }\n"),
        3,
        35,
        "pool.web.backoff.max",
        "found \"x\"",
    );
    let c = ok(&with_web(
        "backoff = { factor = 1, jitter = 0, initial = \"1s\", max = \"1s\" }\n",
    ));
    assert_eq!(web(&c).backoff.factor, 1.0);
    assert_eq!(web(&c).backoff.jitter, 0.0);
}

#[test]
fn give_up_checks() {
    let c = ok(&with_web("give_up = { restarts = 3, within = \"1m\" }\n"));
    assert_eq!(
        web(&c).give_up,
        Some(GiveUp {
            restarts: 3,
            within: Duration::from_secs(60),
            cooldown: None
        })
    );
    one(
        &with_web("give_up = { within = \"1m\" }\n"),
        3,
        11,
        "pool.web.give_up.restarts",
        "missing required key \"restarts\"",
    );
    one(
        &with_web("give_up = { restarts = 3 }\n"),
        3,
        11,
        "pool.web.give_up.within",
        "missing required key \"within\"",
    );
    one(
        &with_web("give_up = { restarts = 3, within = \"0s\" }\n"),
        3,
        36,
        "pool.web.give_up.within",
        "greater than 0",
    );
    one(
        &with_web("give_up = { restarts = -1, within = \"1s\" }\n"),
        3,
        24,
        "pool.web.give_up.restarts",
        "non-negative",
    );
    // Header form: a missing key is reported at the header.
    one(
        &with_web("[pool.web.give_up]\nwithin = \"1m\"\n"),
        3,
        1,
        "pool.web.give_up.restarts",
        "missing required key",
    );
}

// ---------------------------------------------------------------- strings

#[test]
fn settings_checks() {
    one("[orchd]\nlog_level = \"loud\"\n", 2, 13, "orchd.log_level", "expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\" or \"trace\", found \"loud\"");
    assert_eq!(
        ok("[orchd]\nlog_level = \"DEBUG\"\n").settings.log_level,
        "debug"
    );
    // A RUST_LOG-style filter, kept as written; an unknown level in it is an error.
    assert_eq!(
        ok("[orchd]\nlog_level = \"warn,upper=debug\"\n")
            .settings
            .log_level,
        "warn,upper=debug"
    );
    one(
        "[orchd]\nlog_level = \"warn,upper=loud\"\n",
        2,
        13,
        "orchd.log_level",
        "unknown level \"loud\" for target \"upper\"",
    );
    one(
        "[orchd]\nerror_prefix = \"a\\nb\"\n",
        2,
        16,
        "orchd.error_prefix",
        "without a newline",
    );
    one(
        "[orchd]\ncontrol = \"\"\n",
        2,
        11,
        "orchd.control",
        "expected a non-empty path",
    );
    one(
        "[orchd]\nwatch = \"yes\"\n",
        2,
        9,
        "orchd.watch",
        "expected a boolean, found \"yes\"",
    );
    let s =
        ok("[orchd]\ncontrol = \"/run/orchd.sock\"\nwatch = false\nerror_prefix = \"\"\n").settings;
    assert_eq!(s.control, Some(PathBuf::from("/run/orchd.sock")));
    assert!(!s.watch);
    assert_eq!(s.error_prefix, "");
    assert_eq!(ok("[orchd]\nmax_clients = 5\n").settings.max_clients, 5);
    one(
        "[orchd]\nmax_clients = 0\n",
        2,
        15,
        "orchd.max_clients",
        "expected an integer >= 1, found 0",
    );
}

#[test]
fn log_buffer_takes_bytes_or_kib_mib() {
    for (v, n) in [
        ("0", 0),
        ("1000", 1000),
        ("\"512B\"", 512),
        ("\"256KiB\"", 256 * 1024),
        ("\"4 MiB\"", 4 << 20),
        ("\"64mib\"", 64 << 20),
    ] {
        let s = ok(&format!("[orchd]\nlog_buffer = {v}\n")).settings;
        assert_eq!(s.log_buffer, n, "{v}");
    }
    one(
        "[orchd]\nlog_buffer = \"65MiB\"\n",
        2,
        14,
        "orchd.log_buffer",
        "expected a size of at most 64MiB",
    );
    one(
        "[orchd]\nlog_buffer = \"1 KB\"\n",
        2,
        14,
        "orchd.log_buffer",
        "expected a size such as \"256KiB\"",
    );
    one(
        "[orchd]\nlog_buffer = -1\n",
        2,
        14,
        "orchd.log_buffer",
        "expected a non-negative size, found -1",
    );
}

#[test]
fn restart_policy() {
    assert_eq!(
        web(&ok(&with_web("restart = \"on-failure\"\n"))).restart,
        RestartPolicy::OnFailure
    );
    assert_eq!(
        web(&ok(&with_web("restart = \"never\"\n"))).restart,
        RestartPolicy::Never
    );
    one(
        &with_web("restart = \"sometimes\"\n"),
        3,
        11,
        "pool.web.restart",
        "expected one of \"always\", \"on-failure\" or \"never\", found \"sometimes\"",
    );
}

#[test]
fn env_checks() {
    let c = ok(&with_web(
        "env = { A = \"1\", PORT = 8080, DEBUG = true, E = \"\" }\n",
    ));
    let env = &web(&c).env;
    assert_eq!(env.get("A").map(String::as_str), Some("1"));
    assert_eq!(env.get("PORT").map(String::as_str), Some("8080"));
    assert_eq!(env.get("DEBUG").map(String::as_str), Some("true"));
    assert_eq!(env.get("E").map(String::as_str), Some(""));
    one(
        &with_web("env = { \"A=B\" = \"x\" }\n"),
        3,
        9,
        "pool.web.env.\"A=B\"",
        "invalid environment variable name \"A=B\"",
    );
    one(
        &with_web("env = { \"\" = \"x\" }\n"),
        3,
        9,
        "pool.web.env.\"\"",
        "non-empty name",
    );
    one(
        &with_web("env = { A = \"x\\u0000y\" }\n"),
        3,
        13,
        "pool.web.env.A",
        "NUL",
    );
    one(
        &with_web("env = { A = 1.5 }\n"),
        3,
        13,
        "pool.web.env.A",
        "expected a string (or an integer or boolean), found float 1.5",
    );
    one(
        &with_web("env = \"A=1\"\n"),
        3,
        7,
        "pool.web.env",
        "found \"A=1\"",
    );
}

#[test]
fn sub_tables_in_header_form() {
    let c = ok(&with_web(
        "[pool.web.env]\nA = \"1\"\n[pool.web.backoff]\nmax = \"1m\"\n[pool.web.give_up]\nrestarts = 2\nwithin = \"10s\"\n",
    ));
    let p = web(&c);
    assert_eq!(p.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(p.backoff.max, Duration::from_secs(60));
    assert_eq!(p.give_up.map(|g| g.restarts), Some(2));
    // Dotted keys define a pool too; a missing command is reported at its name.
    let c = ok("pool.a.command = \"x\"\npool.a.count = 2\n");
    assert_eq!(c.pools[0].count, 2);
    one(
        "pool.a.count = 2\n",
        1,
        6,
        "pool.a.command",
        "missing required key",
    );
}

#[test]
fn user_and_group() {
    one(
        &with_web("user = \"\"\n"),
        3,
        8,
        "pool.web.user",
        "expected a non-empty user name",
    );
    one(
        &with_web("group = \"\"\n"),
        3,
        9,
        "pool.web.group",
        "expected a non-empty group name",
    );
    one(
        &with_web("user = 0\n"),
        3,
        8,
        "pool.web.user",
        "expected a string, found integer 0",
    );
}

#[test]
fn pool_names() {
    let c = ok("[pool.a-b_c9]\ncommand = \"x\"\n[pool._x]\ncommand = \"x\"\n");
    assert_eq!(c.pools.len(), 2);
    assert_eq!(c.pools[0].name, "a-b_c9");
    // Key paths quote names that are not bare TOML keys.
    for (name, key) in [
        ("9web", "pool.9web"),
        ("-x", "pool.-x"),
        ("\"a.b\"", "pool.\"a.b\""),
        ("\"\"", "pool.\"\""),
        ("\"wéb\"", "pool.\"wéb\""),
    ] {
        one(
            &format!("[pool.{name}]\ncommand = \"x\"\n"),
            1,
            7,
            key,
            "invalid pool name",
        );
    }
}

// ---------------------------------------------------------------- paths

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let c = ok(&with_web(
        "cwd = \"sub/./dir/\"\n[pool.abs]\ncommand = \"x\"\ncwd = \"/srv//app\"\n[orchd]\ncontrol = \"run/c.sock\"\n[[route]]\nfrom = \"unix:in.sock\"\nto = \"web\"\n",
    ));
    assert_eq!(web(&c).cwd, PathBuf::from("/etc/orchd/sub/dir"));
    assert_eq!(c.pools[1].cwd, PathBuf::from("/srv/app"));
    assert_eq!(
        c.settings.control,
        Some(PathBuf::from("/etc/orchd/run/c.sock"))
    );
    assert_eq!(
        c.routes[0].from,
        Source::Unix(PathBuf::from("/etc/orchd/in.sock"))
    );
}

#[test]
fn relative_config_path_is_made_absolute() {
    let cwd = std::env::current_dir().unwrap();
    let c = parse_str(Path::new("pool.toml"), WEB).unwrap();
    assert_eq!(c.path, PathBuf::from("pool.toml"));
    assert_eq!(web(&c).cwd, cwd);
    let c = parse_str(Path::new("conf/pool.toml"), WEB).unwrap();
    assert_eq!(web(&c).cwd, cwd.join("conf"));
    let c = parse_str(Path::new("./pool.toml"), &with_web("cwd = \"x\"\n")).unwrap();
    assert_eq!(web(&c).cwd, cwd.join("x"));
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let dir = std::env::temp_dir().join(format!("orchd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pool.toml");
    std::fs::write(&file, WEB).unwrap();
    let c = load(&file).unwrap();
    assert_eq!(web(&c).cwd, dir);
    assert_eq!(c.path, file);

    std::fs::write(&file, b"[pool.web]\ncommand = \"\xff\"\n").unwrap();
    let e = load(&file).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column), (2, 12));
    assert!(e.0[0].message.contains("UTF-8"));

    let missing = dir.join("missing.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.len(), 1);
    let e = &e.0[0];
    assert_eq!((e.line, e.column, e.key.as_str()), (0, 0, ""));
    assert_eq!(e.file, missing);
    assert!(e.message.contains("cannot read"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- routes

fn route(lines: &str) -> String {
    with_web(&format!("[[route]]\n{lines}"))
}

#[test]
fn sources() {
    let cases = [
        (
            "tcp://127.0.0.1:7070",
            Source::Tcp("127.0.0.1:7070".parse().unwrap()),
        ),
        ("tcp://0.0.0.0:0", Source::Tcp("0.0.0.0:0".parse().unwrap())),
        (
            "tcp://localhost:65535",
            Source::Tcp("127.0.0.1:65535".parse().unwrap()),
        ),
        ("tcp://[::1]:80", Source::Tcp("[::1]:80".parse().unwrap())),
        ("unix:/run/x.sock", Source::Unix("/run/x.sock".into())),
        ("unix:x.sock", Source::Unix("/etc/orchd/x.sock".into())),
        ("stdin", Source::Stdin),
    ];
    for (from, expected) in cases {
        let c = ok(&route(&format!("from = \"{from}\"\nto = \"web\"\n")));
        assert_eq!(c.routes[0].from, expected, "{from}");
    }
    for (from, why) in [
        ("udp://1.2.3.4:5", ""),
        ("STDIN", ""),
        ("", ""),
        ("tcp://1.2.3.4:65536", "not from 0 to 65535"),
        ("tcp://1.2.3.4", "missing \":PORT\""),
        ("tcp://1.2.3.4:", "not a number"),
        ("tcp://1.2.3.4:-1", "not a number"),
        ("tcp://example.com:80", "not an IPv4 address"),
        ("tcp://::1:80", "in brackets"),
        ("tcp://[::1:80", "missing \"]\""),
        ("tcp://[::1]", "missing \":PORT\""),
        ("tcp://[1.2.3.4]:80", "not an IPv6 address"),
        ("unix:", "empty"),
    ] {
        let e = one(
            &route(&format!("from = \"{from}\"\nto = \"web\"\n")),
            4,
            8,
            "route[1].from",
            why,
        );
        assert!(
            e.message.contains("\"tcp://HOST:PORT\"")
                && e.message.contains("\"unix:PATH\"")
                && e.message.contains("\"stdin\""),
            "{e}"
        );
    }
}

#[test]
fn required_route_keys() {
    one(
        &route("to = \"web\"\n"),
        3,
        1,
        "route[1].from",
        "missing required key \"from\"",
    );
    one(
        &route("from = \"stdin\"\n"),
        3,
        1,
        "route[1].to",
        "missing required key \"to\"",
    );
}

#[test]
fn route_to_unknown_pool_names_the_pools() {
    one(
        &route("from = \"stdin\"\nto = \"wbe\"\n"),
        5,
        6,
        "route[1].to",
        "no pool named \"wbe\"; the pools are: web",
    );
    one(
        "[[route]]\nfrom = \"stdin\"\nto = \"x\"\n",
        3,
        6,
        "route[1].to",
        "no pools are defined",
    );
}

#[test]
fn route_numbers_are_one_based() {
    let text = route("from = \"stdin\"\nto = \"web\"\n[[route]]\nfrom = \"stdin\"\nto = \"web\"\nstrategy = \"random\"\n");
    one(&text, 9, 12, "route[2].strategy", "expected one of \"round-robin\", \"least-busy\", \"hash\" or \"broadcast\", found \"random\"");
}

#[test]
fn strategies_and_keys() {
    for (s, expected) in [
        ("round-robin", Strategy::RoundRobin),
        ("least-busy", Strategy::LeastBusy),
        ("hash", Strategy::Hash),
        ("broadcast", Strategy::Broadcast),
    ] {
        let c = ok(&route(&format!(
            "from = \"stdin\"\nto = \"web\"\nstrategy = \"{s}\"\n"
        )));
        assert_eq!(c.routes[0].strategy, expected);
    }
    let c = ok(&route(
        "from = \"stdin\"\nto = \"web\"\nstrategy = \"hash\"\nkey = '^(\\S+)'\n",
    ));
    assert_eq!(
        c.routes[0].key.as_ref().map(Pattern::as_str),
        Some("^(\\S+)")
    );
    let c = ok(&route(
        "from = \"stdin\"\nto = \"web\"\nstrategy = \"hash\"\n",
    ));
    assert_eq!(c.routes[0].key, None);
    one(
        &route("from = \"stdin\"\nto = \"web\"\nkey = \"x\"\n"),
        6,
        1,
        "route[1].key",
        "\"key\" is only allowed with strategy = \"hash\" (this route's strategy is \"round-robin\")",
    );
    one(
        &route("from = \"stdin\"\nto = \"web\"\nstrategy = \"broadcast\"\nkey = \"x\"\n"),
        7,
        1,
        "route[1].key",
        "\"broadcast\"",
    );
    // An invalid strategy is the one error reported.
    one(
        &route("from = \"stdin\"\nto = \"web\"\nstrategy = \"x\"\nkey = \"x\"\n"),
        6,
        12,
        "route[1].strategy",
        "expected one of",
    );
}

#[test]
fn regexes_must_compile() {
    let c = ok(&route(
        "from = \"stdin\"\nto = \"web\"\nmatch = \"^upper \"\n",
    ));
    assert!(c.routes[0].matcher.as_ref().unwrap().0.is_match(b"upper x"));
    one(
        &route("from = \"stdin\"\nto = \"web\"\nmatch = \"(abc\"\n"),
        6,
        9,
        "route[1].match",
        "expected a regular expression, found \"(abc\": unclosed group",
    );
    one(
        &route("from = \"stdin\"\nto = \"web\"\nstrategy = \"hash\"\nkey = \"[z-a]\"\n"),
        7,
        7,
        "route[1].key",
        "invalid character class range",
    );
    one(
        &route("from = \"stdin\"\nto = \"web\"\nmatch = 1\n"),
        6,
        9,
        "route[1].match",
        "expected a string, found integer 1",
    );
}

#[test]
fn timeouts_retries_ordered() {
    let c = ok(&route(
        "from = \"stdin\"\nto = \"web\"\ntimeout = \"0s\"\nretries = 0\nordered = false\n",
    ));
    let r = &c.routes[0];
    assert_eq!(r.timeout, None);
    assert_eq!(r.retries, 0);
    assert!(!r.ordered);
    let c = ok(&route(
        "from = \"stdin\"\nto = \"web\"\ntimeout = \"1500ms\"\n",
    ));
    assert_eq!(c.routes[0].timeout, Some(Duration::from_millis(1500)));
    one(
        &route("from = \"stdin\"\nto = \"web\"\nretries = -1\n"),
        6,
        11,
        "route[1].retries",
        "non-negative",
    );
    one(
        &route("from = \"stdin\"\nto = \"web\"\nordered = 1\n"),
        6,
        11,
        "route[1].ordered",
        "expected a boolean, found integer 1",
    );
}

#[test]
fn modes() {
    let c = ok(&route("from = \"unix:s\"\nmode = \"0600\"\nto = \"web\"\n"));
    assert_eq!(c.routes[0].mode, 0o600);
    for (m, v) in [("0777", 0o777), ("660", 0o660), ("0o640", 0o640), ("0", 0)] {
        let c = ok(&route(&format!(
            "from = \"unix:s\"\nmode = \"{m}\"\nto = \"web\"\n"
        )));
        assert_eq!(c.routes[0].mode, v, "{m}");
    }
    for m in ["0999", "1000", "", "rw", "00660", "-660"] {
        one(
            &route(&format!(
                "from = \"unix:s\"\nmode = \"{m}\"\nto = \"web\"\n"
            )),
            5,
            8,
            "route[1].mode",
            "expected an octal file mode",
        );
    }
    one(
        &route("from = \"unix:s\"\nmode = 660\nto = \"web\"\n"),
        5,
        8,
        "route[1].mode",
        "expected a string, found integer 660",
    );
    one(
        &route("from = \"stdin\"\nmode = \"0600\"\nto = \"web\"\n"),
        5,
        1,
        "route[1].mode",
        "only allowed with from = \"unix:PATH\"",
    );
}

#[test]
fn routes_sharing_a_socket_must_agree_on_mode() {
    let agree = route("from = \"unix:s\"\nmode = \"0600\"\nto = \"web\"\n[[route]]\nfrom = \"unix:./s\"\nmode = \"600\"\nto = \"web\"\n");
    assert_eq!(ok(&agree).routes.len(), 2);
    let same_default = route(
        "from = \"unix:s\"\nto = \"web\"\n[[route]]\nfrom = \"unix:/etc/orchd/s\"\nto = \"web\"\n",
    );
    assert_eq!(ok(&same_default).routes.len(), 2);
    one(
        &route("from = \"unix:s\"\nmode = \"0600\"\nto = \"web\"\n[[route]]\nfrom = \"unix:./s\"\nmode = \"0640\"\nto = \"web\"\n"),
        9,
        8,
        "route[2].mode",
        "routes sharing the socket unix:/etc/orchd/s must use the same mode: route[1] uses 0600, this one 0640",
    );
    // An invalid mode is one error, not also a disagreement.
    one(
        &route("from = \"unix:s\"\nmode = \"0600\"\nto = \"web\"\n[[route]]\nfrom = \"unix:s\"\nmode = \"x\"\nto = \"web\"\n"),
        9,
        8,
        "route[2].mode",
        "expected an octal file mode",
    );
    // A route relying on the default mode is reported at its `from`.
    one(
        &route("from = \"unix:s\"\nmode = \"0600\"\nto = \"web\"\n[[route]]\nfrom = \"unix:s\"\nto = \"web\"\n"),
        8,
        8,
        "route[2].from",
        "this one 0660",
    );
}

#[test]
fn route_socket_must_not_be_the_control_socket() {
    one(
        &route("from = \"unix:c.sock\"\nto = \"web\"\n[orchd]\ncontrol = \"c.sock\"\n"),
        4,
        8,
        "route[1].from",
        "control socket",
    );
}

/// Issue 12: one socket file written two ways made two listeners on one path.
#[test]
fn one_unix_socket_written_two_ways_is_an_error() {
    let e = one(
        &route("from = \"unix:s.sock\"\nto = \"web\"\n[[route]]\nfrom = \"unix:sub/../s.sock\"\nto = \"web\"\n"),
        7,
        8,
        "route[2].from",
        "unix:/etc/orchd/sub/../s.sock is the same socket as route[1]'s unix:/etc/orchd/s.sock",
    );
    assert!(e.message.contains("write it the same way"), "{e}");
    // Through an absolute path, and beyond the root.
    one(
        &route("from = \"unix:/run/x/s\"\nto = \"web\"\n[[route]]\nfrom = \"unix:/../run/y/../x/s\"\nto = \"web\"\n"),
        7,
        8,
        "route[2].from",
        "same socket as route[1]",
    );
    // The control socket written another way.
    one(
        &route("from = \"unix:x/../c.sock\"\nto = \"web\"\n[orchd]\ncontrol = \"c.sock\"\n"),
        4,
        8,
        "route[1].from",
        "control socket",
    );
    // Written the same way (up to "." and doubled slashes), it is one shared listener.
    let c = ok(&route(
        "from = \"unix:s.sock\"\nto = \"web\"\n[[route]]\nfrom = \"unix:.//s.sock\"\nto = \"web\"\n",
    ));
    assert_eq!(c.routes[0].from, c.routes[1].from);
    // Different files are fine.
    ok(&route(
        "from = \"unix:a/../s.sock\"\nto = \"web\"\n[[route]]\nfrom = \"unix:a/s.sock\"\nto = \"web\"\n",
    ));
}

#[test]
fn a_symlinked_directory_is_seen_through() {
    let dir = std::env::temp_dir().join(format!("orchd-config-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real")).unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
    let text = route(
        "from = \"unix:real/s.sock\"\nto = \"web\"\n[[route]]\nfrom = \"unix:link/s.sock\"\nto = \"web\"\n",
    );
    let e = parse_str(&dir.join("pool.toml"), &text).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!(e.0[0].key, "route[2].from");
    assert!(e.0[0].message.contains("same socket as route[1]"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12: a wildcard address beside a specific one on the same port passed
/// --check, then the second listener failed with "address in use".
#[test]
fn overlapping_tcp_listeners_are_an_error() {
    let conflicts = [
        ("127.0.0.1:7070", "0.0.0.0:7070"),
        ("0.0.0.0:7070", "10.1.2.3:7070"),
        ("[::1]:7070", "[::]:7070"),
        ("[::]:7070", "[fe80::1]:7070"),
        ("[::]:7070", "127.0.0.1:7070"),
        ("0.0.0.0:7070", "[::]:7070"),
        ("[::]:7070", "0.0.0.0:7070"),
        ("[::ffff:127.0.0.1]:7070", "127.0.0.1:7070"),
    ];
    for (a, b) in conflicts {
        let e = one(
            &route(&format!(
                "from = \"tcp://{a}\"\nto = \"web\"\n[[route]]\nfrom = \"tcp://{b}\"\nto = \"web\"\n"
            )),
            7,
            8,
            "route[2].from",
            &format!("tcp://{b} overlaps tcp://{a} of route[1]"),
        );
        assert!(e.message.contains("wildcard"), "{e}");
    }
    let fine = [
        ("127.0.0.1:7070", "127.0.0.1:7070"),
        ("127.0.0.1:7070", "localhost:7070"),
        ("127.0.0.1:7070", "127.0.0.2:7070"),
        ("127.0.0.1:7070", "0.0.0.0:7071"),
        ("[::1]:7070", "127.0.0.1:7070"),
        ("0.0.0.0:7070", "[::1]:7070"),
        ("0.0.0.0:0", "127.0.0.1:0"),
        ("[::]:0", "0.0.0.0:0"),
    ];
    for (a, b) in fine {
        ok(&route(&format!(
            "from = \"tcp://{a}\"\nto = \"web\"\n[[route]]\nfrom = \"tcp://{b}\"\nto = \"web\"\n"
        )));
    }
    // Several routes on the wildcard itself are one listener; each route on the
    // specific address is reported once.
    let e = errs(&route(
        "from = \"tcp://0.0.0.0:7070\"\nto = \"web\"\n[[route]]\nfrom = \"tcp://0.0.0.0:7070\"\nto = \"web\"\n[[route]]\nfrom = \"tcp://127.0.0.1:7070\"\nto = \"web\"\n[[route]]\nfrom = \"tcp://127.0.0.1:7070\"\nto = \"web\"\n",
    ));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["route[3].from", "route[4].from"]);
}

// ---------------------------------------------------------------- many errors

#[test]
fn all_errors_in_one_pass_sorted_by_position() {
    let text = "[orchd]\n\
                log_level = \"loud\"\n\
                drain_timeout = 5\n\
                [pool.a]\n\
                command = []\n\
                count = -1\n\
                backoff = { max = \"x\", factor = 0.5, bogus = 1 }\n\
                queue = 0\n\
                [pool.b]\n\
                restart = \"sometimes\"\n\
                [[route]]\n\
                from = \"udp://x\"\n\
                to = \"c\"\n\
                strategy = \"x\"\n";
    let e = errs(text);
    let got: Vec<(usize, usize, &str)> = e
        .iter()
        .map(|e| (e.line, e.column, e.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, 13, "orchd.log_level"),
            (3, 17, "orchd.drain_timeout"),
            (5, 11, "pool.a.command"),
            (6, 9, "pool.a.count"),
            (7, 19, "pool.a.backoff.max"),
            (7, 33, "pool.a.backoff.factor"),
            (7, 38, "pool.a.backoff.bogus"),
            (8, 9, "pool.a.queue"),
            (9, 1, "pool.b.command"),
            (10, 11, "pool.b.restart"),
            (12, 8, "route[1].from"),
            (13, 6, "route[1].to"),
            (14, 12, "route[1].strategy"),
        ],
        "{}",
        ConfigErrors(e.clone())
    );
}

// ---------------------------------------------------------------- syntax

#[test]
fn syntax_error_location() {
    let e = errs("[pool.web]\ncommand = \"x\"\ncount = 4x\n");
    check(&e[0], 3, 9, "", "TOML syntax error");
    let e = errs("[pool.web]\ncommand = \"unterminated\n");
    assert_eq!(e[0].line, 2, "{}", ConfigErrors(e.clone()));
    assert!(e[0].message.starts_with("TOML syntax error: "));
}

#[test]
fn syntax_errors_are_all_reported_and_hide_semantic_ones() {
    let e = errs("[pool.web]\ncount = -1\nx = = 1\n[pool.b]\ny = 1x\n");
    assert!(e.len() >= 2, "{}", ConfigErrors(e.clone()));
    assert!(e.iter().all(|e| e.message.starts_with("TOML syntax error")));
    assert!(e.iter().any(|e| e.line == 3));
    assert!(e.iter().any(|e| e.line == 5));
    assert!(e
        .windows(2)
        .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)));
}

#[test]
fn duplicate_keys_are_syntax_errors() {
    let e = errs("[pool.web]\ncommand = \"x\"\ncommand = \"y\"\n");
    assert_eq!(e[0].line, 3, "{}", ConfigErrors(e.clone()));
}

// ---------------------------------------------------------------- describe

#[test]
fn describe_is_stable_and_readable() {
    let text = "[orchd]\ncontrol = \"/run/o.sock\"\n\
                [pool.upper]\ncommand = [\"python3\", \"upper.py\"]\ncount = 4\ncwd = \"/srv/up\"\nenv = { MODE = \"fast\", B = \"a b\" }\n\
                give_up = { restarts = 10, within = \"60s\", cooldown = \"5m\" }\n\
                [pool.sh]\ncommand = \"echo hi\"\nuser = \"nobody\"\nstop_signal = \"SIGINT\"\n\
                [[route]]\nfrom = \"tcp://127.0.0.1:7070\"\nmatch = \"^upper \"\nto = \"upper\"\n\
                [[route]]\nfrom = \"unix:/run/in.sock\"\nmode = \"0600\"\nto = \"upper\"\nstrategy = \"hash\"\ntimeout = \"0s\"\n";
    let out = describe(&ok(text));
    let expected = "\
settings: log_level=info control=/run/o.sock drain_timeout=10s watch=true error_prefix=\"ERR \" max_clients=10000 log_buffer=256KiB
pool upper: command=[\"python3\", \"upper.py\"] count=4 cwd=/srv/up restart=always
  backoff: initial=100ms max=30s factor=2 jitter=0.1 reset_after=10s
  give_up: restarts=10 within=1m cooldown=5m
  stop: signal=TERM timeout=10s  max_inflight=auto queue=10000 stdin=route
  env: B=\"a b\" MODE=fast
pool sh: command=\"echo hi\" (via /bin/sh -c) count=1 cwd=/etc/orchd restart=always user=nobody
  backoff: initial=100ms max=30s factor=2 jitter=0.1 reset_after=10s
  give_up: never
  stop: signal=INT timeout=10s  max_inflight=auto queue=10000 stdin=/dev/null
route 1: from=tcp://127.0.0.1:7070 match=\"^upper \" to=upper strategy=round-robin timeout=30s retries=2 ordered=true
route 2: from=unix:/run/in.sock mode=0600 match=none to=upper strategy=hash key=none (whole message) timeout=none retries=2 ordered=true
";
    assert_eq!(out, expected);
}

// ---------------------------------------------------------------- helpers

#[test]
fn line_and_column_conversion() {
    let text = "ab\nçd€x\n\nz";
    assert_eq!(line_col(text, 0), (1, 1));
    assert_eq!(line_col(text, 2), (1, 3));
    assert_eq!(line_col(text, 3), (2, 1));
    // "ç" is 2 bytes and "€" 3: byte 9 is "x", the 4th character of line 2.
    assert_eq!(line_col(text, 9), (2, 4));
    // Inside a multi-byte character: its start.
    assert_eq!(line_col(text, 4), (2, 1));
    assert_eq!(line_col(text, 7), (2, 3));
    assert_eq!(line_col(text, 10), (2, 5));
    assert_eq!(line_col(text, 11), (3, 1));
    assert_eq!(line_col(text, 12), (4, 1));
    assert_eq!(line_col(text, 1000), (4, 2));
}

#[test]
fn columns_count_characters() {
    one(
        &with_web("env = { \"é\" = \"x\", B = 1.5 }\n"),
        3,
        24,
        "pool.web.env.B",
        "found float 1.5",
    );
}

/// Deterministic mutations of a valid config: parsing never panics.
#[test]
fn no_panic_on_mangled_input() {
    let base = SPEC_EXAMPLE;
    let chars: Vec<char> = base.chars().collect();
    let alphabet: Vec<char> = "[]{}=\"'.,#\n -_0123456789abcxyz\\é:tcpunix/"
        .chars()
        .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..1500 {
        let mut text = chars.clone();
        for _ in 0..1 + next(4) {
            let i = next(text.len());
            match next(3) {
                0 => {
                    text.remove(i);
                }
                1 => text.insert(i, alphabet[next(alphabet.len())]),
                _ => text[i] = alphabet[next(alphabet.len())],
            }
        }
        let text: String = text.into_iter().collect();
        if let Err(e) = parse(&text) {
            for e in &e.0 {
                assert!(e.line >= 1 && e.column >= 1, "{e}");
            }
        }
    }
}

#[path = "tests_protocol.rs"]
mod protocol;
