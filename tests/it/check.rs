//! `orchd --check CONFIG` and config errors at start-up (SPEC 2, 3).

use std::path::{Path, PathBuf};

use crate::common::*;

/// Write `toml` as `pool.toml` in `dir` and run `orchd --check` on it:
/// (config path, exit code, stdout, stderr).
pub(crate) fn check(dir: &TempDir, toml: &str) -> (PathBuf, i32, String, String) {
    let cfg = dir.write("pool.toml", toml);
    let (code, out, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    (cfg, code, out, err)
}

/// 1-based (line, column in characters) of the first occurrence of `needle` in the
/// line of `toml` that contains `line_marker` (the column of `needle` in that line).
pub(crate) fn pos(toml: &str, line_marker: &str, needle: &str) -> (usize, usize) {
    let (i, line) = toml
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(line_marker))
        .unwrap_or_else(|| panic!("no line containing {line_marker:?}"));
    let byte = line
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {line:?}"));
    (i + 1, line[..byte].chars().count() + 1)
}

/// The stderr line reporting `key` at `line:col` of `cfg`; panics with everything
/// reported when there is none.
pub(crate) fn error_line<'a>(
    err: &'a str,
    cfg: &Path,
    (line, col): (usize, usize),
    key: &str,
) -> &'a str {
    let prefix = format!("{}:{line}:{col}: {key}: ", cfg.display());
    err.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no error starting with {prefix:?} in:\n{err}"))
}

/// `--check` of `toml` fails with exactly one error, for `key`, located at `needle`
/// in the line containing `line_marker`. Returns that error line.
fn the_only_error(dir: &TempDir, toml: &str, line_marker: &str, needle: &str, key: &str) -> String {
    let (cfg, code, _, err) = check(dir, toml);
    assert_eq!(code, 1, "{err}");
    let l = error_line(&err, &cfg, pos(toml, line_marker, needle), key).to_string();
    assert_eq!(err.lines().count(), 1, "spurious errors:\n{err}");
    l
}

#[test]
fn check_of_valid_file_exits_0_and_describes_pools_and_routes() {
    let dir = TempDir::new("check-valid");
    std::fs::create_dir(dir.join("work")).unwrap();
    let (_, code, out, err) = check(
        &dir,
        r#"
[pool.web]
command = ["python3", "web.py"]
count = 3
cwd = "work"
env = { MODE = "fast" }
restart = "on-failure"
backoff = { initial = "250ms", max = "5s", factor = 3.0, jitter = 0.0, reset_after = "1m" }
give_up = { restarts = 4, within = "30s", cooldown = "2m" }
stop_timeout = "1500ms"

[pool.batch]
command = "sleep 1"
count = 0

[[route]]
from = "unix:web.sock"
match = "^GET "
to = "web"
strategy = "least-busy"
"#,
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let d = dir.path().display();
    let web = out
        .lines()
        .find(|l| l.starts_with("pool web:"))
        .unwrap_or_else(|| panic!("no `pool web:` line in:\n{out}"));
    for want in [
        "count=3",
        &format!("cwd={d}/work"),
        "restart=on-failure",
        "python3",
        "web.py",
    ] {
        assert!(web.contains(want), "{want:?} not in {web:?}\n{out}");
    }
    for want in [
        "initial=250ms",
        "max=5s",
        "factor=3",
        "reset_after=1m",
        "restarts=4",
        "within=30s",
        "cooldown=2m",
        "MODE=fast",
        "stdin=route",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let batch = out
        .lines()
        .find(|l| l.starts_with("pool batch:"))
        .unwrap_or_else(|| panic!("no `pool batch:` line in:\n{out}"));
    assert!(batch.contains("count=0"), "{batch}");
    let route = out
        .lines()
        .find(|l| l.starts_with("route 1:"))
        .unwrap_or_else(|| panic!("no `route 1:` line in:\n{out}"));
    for want in [
        &format!("from=unix:{d}/web.sock"),
        "to=web",
        "strategy=least-busy",
        "^GET ",
    ] {
        assert!(route.contains(want), "{want:?} not in {route:?}");
    }
}

#[test]
fn check_starts_no_worker_and_creates_no_socket() {
    let dir = TempDir::new("check-inert");
    let (_, code, out, err) = check(
        &dir,
        r#"
[pool.web]
command = "touch started"
[[route]]
from = "unix:web.sock"
to = "web"
"#,
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    // Give a (wrongly) started worker time to run before looking.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!dir.join("started").exists(), "--check ran the command");
    assert!(
        !dir.join("web.sock").exists(),
        "--check opened the listener"
    );
}

#[test]
fn check_reports_toml_syntax_error_with_line_and_column() {
    let dir = TempDir::new("check-syntax");
    let toml = "[pool.web]\ncommand = \"true\"\ncount = = 1\n";
    let (cfg, code, out, err) = check(&dir, toml);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.is_empty(), "stdout on error: {out}");
    // The second `=` is the offending token.
    let (line, col) = pos(toml, "count", "= 1");
    assert_eq!((line, col), (3, 9));
    let prefix = format!("{}:{line}:{col}:", cfg.display());
    assert!(
        err.lines().next().is_some_and(|l| l.starts_with(&prefix)),
        "first error does not start with {prefix:?}:\n{err}"
    );
}

#[test]
fn check_locates_backoff_factor_below_one() {
    let dir = TempDir::new("check-factor");
    let toml = r#"[pool.web]
command = "true"
backoff = { initial = "100ms", factor = 0.5 }
"#;
    let l = the_only_error(&dir, toml, "backoff", "0.5", "pool.web.backoff.factor");
    assert!(
        l.contains("0.5"),
        "the error does not say what was found: {l}"
    );
}

#[test]
fn check_locates_unknown_key() {
    let dir = TempDir::new("check-unknown");
    let toml = r#"[pool.web]
command = "true"
colour = "blue"
"#;
    let l = the_only_error(&dir, toml, "colour", "colour", "pool.web.colour");
    assert!(l.contains("colour"), "{l}");
}

#[test]
fn check_locates_route_to_missing_pool() {
    let dir = TempDir::new("check-route");
    let toml = r#"[pool.web]
command = "true"

[[route]]
from = "unix:a.sock"
to = "web"

[[route]]
from = "unix:b.sock"
to = "nope"
"#;
    let l = the_only_error(&dir, toml, "nope", "\"nope\"", "route[2].to");
    assert!(l.contains("nope"), "{l}");
}

#[test]
fn check_locates_bad_duration() {
    let dir = TempDir::new("check-duration");
    let toml = r#"[pool.web]
command = "true"
stop_timeout = "5 parsecs"
"#;
    let (cfg, code, _, err) = check(&dir, toml);
    assert_eq!(code, 1, "{err}");
    let l = error_line(
        &err,
        &cfg,
        pos(toml, "stop_timeout", "\"5 parsecs\""),
        "pool.web.stop_timeout",
    );
    assert!(l.contains("5 parsecs"), "{l}");
    assert!(
        l.contains("expected"),
        "the error does not say what was expected: {l}"
    );
}

#[test]
fn check_reports_several_errors_in_one_run() {
    let dir = TempDir::new("check-several");
    let toml = r#"[orchd]
drain_timeout = "soon"

[pool.web]
command = "true"
backoff = { factor = 0.5 }
colour = "blue"

[pool.api]
command = "true"
stop_timeout = "5 parsecs"

[[route]]
from = "unix:web.sock"
to = "nope"
"#;
    let (cfg, code, out, err) = check(&dir, toml);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "stdout on error: {out}");
    error_line(
        &err,
        &cfg,
        pos(toml, "drain_timeout", "\"soon\""),
        "orchd.drain_timeout",
    );
    error_line(
        &err,
        &cfg,
        pos(toml, "factor", "0.5"),
        "pool.web.backoff.factor",
    );
    error_line(&err, &cfg, pos(toml, "colour", "colour"), "pool.web.colour");
    error_line(
        &err,
        &cfg,
        pos(toml, "parsecs", "\"5 parsecs\""),
        "pool.api.stop_timeout",
    );
    error_line(&err, &cfg, pos(toml, "nope", "\"nope\""), "route[1].to");
    assert_eq!(err.lines().count(), 5, "expected exactly 5 errors:\n{err}");
}

#[test]
fn check_columns_count_characters_not_bytes() {
    let dir = TempDir::new("check-utf8");
    let toml = "[pool.web]\ncommand = \"true\"\nenv = { \"ÄÖÜ\" = \"ü\" }\nbackoff = { \"ä\" = 1, factor = 0.5 }\n";
    let (cfg, code, _, err) = check(&dir, toml);
    assert_eq!(code, 1, "{err}");
    let (line, col) = pos(toml, "factor", "0.5");
    let bytes = toml.lines().nth(line - 1).unwrap().find("0.5").unwrap() + 1;
    assert_eq!((line, col, bytes), (4, 31, 32), "test premise");
    error_line(&err, &cfg, (line, col), "pool.web.backoff.factor");
    error_line(
        &err,
        &cfg,
        pos(toml, "factor", "\"ä\""),
        "pool.web.backoff.\"ä\"",
    );
}

#[test]
fn check_of_missing_file_exits_1_and_names_it() {
    let dir = TempDir::new("check-missing");
    let cfg = dir.join("nope.toml");
    let (code, out, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&cfg.display().to_string()), "{err}");
}

#[test]
fn daemon_with_invalid_config_exits_2_names_the_error_and_starts_nothing() {
    let dir = TempDir::new("check-daemon");
    let toml = r#"[pool.web]
command = "touch started; exec sleep 1000"
backoff = { factor = 0.5 }
"#;
    let cfg = dir.write("pool.toml", toml);
    let (code, out, err) = run_orchd(&["--no-watch", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    error_line(
        &err,
        &cfg,
        pos(toml, "factor", "0.5"),
        "pool.web.backoff.factor",
    );
    assert!(!dir.join("started").exists(), "a worker ran");
}

#[test]
fn no_config_argument_is_a_usage_error() {
    let (code, out, err) = run_orchd(&[]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("usage"), "{err}");
}

#[test]
fn unknown_option_is_a_usage_error() {
    let (code, out, err) = run_orchd(&["--bogus", "x.toml"]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("--bogus"),
        "the error does not name the option: {err}"
    );
}

/// Every `.toml` under `dir`, recursively.
fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn shipped_configs_and_examples_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for sub in ["config", "examples"] {
        toml_files(&root.join(sub), &mut files);
    }
    files.sort();
    if files.is_empty() {
        eprintln!("no .toml under config/ or examples/ yet; nothing to check");
        return;
    }
    let mut failures = String::new();
    for f in &files {
        let (code, out, err) = run_orchd(&["--check", f.to_str().unwrap()]);
        if code != 0 || out.is_empty() {
            failures.push_str(&format!("{} (exit {code}):\n{err}\n", f.display()));
        }
    }
    eprintln!("checked {} file(s): {files:?}", files.len());
    assert!(failures.is_empty(), "{failures}");
}
