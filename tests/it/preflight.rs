//! Pre-flight checks (`--check`, `plan`, warnings at start-up), `--log-level`
//! validation, and the open-file limit workers inherit (SPEC 2).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Write `toml` as `pool.toml` in `dir` and run `orchd --check` on it:
/// (config path, exit code, stdout, stderr).
fn check(dir: &TempDir, toml: &str) -> (PathBuf, i32, String, String) {
    let cfg = dir.write("pool.toml", toml);
    let (code, out, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    (cfg, code, out, err)
}

/// The stderr line reporting `key` at `line:col` of `cfg`.
fn error_line<'a>(err: &'a str, cfg: &Path, line: usize, col: usize, key: &str) -> &'a str {
    let prefix = format!("{}:{line}:{col}: {key}: ", cfg.display());
    err.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no error starting with {prefix:?} in:\n{err}"))
}

#[test]
fn check_fails_on_a_missing_binary() {
    let dir = TempDir::new("pf-missing");
    let (cfg, code, out, err) = check(
        &dir,
        "[pool.ok]\ncommand = [\"sh\", \"-c\", \"cat\"]\n\n[pool.web]\ncommand = [\"orchd-no-such-binary\", \"--port\", \"80\"]\n",
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let l = error_line(&err, &cfg, 5, 11, "pool.web.command");
    assert!(
        l.contains("\"orchd-no-such-binary\" not found in PATH"),
        "{l}"
    );
    assert_eq!(err.lines().count(), 1, "only the bad pool:\n{err}");
    // A string command's first word too, and an absolute path.
    let (cfg, code, _, err) = check(
        &dir,
        "[pool.a]\ncommand = \"orchd-no-such-binary --x | cat\"\n[pool.b]\ncommand = [\"/nonexistent/worker\"]\n",
    );
    assert_eq!(code, 1, "{err}");
    error_line(&err, &cfg, 2, 11, "pool.a.command");
    let l = error_line(&err, &cfg, 4, 11, "pool.b.command");
    assert!(l.contains("/nonexistent/worker does not exist"), "{l}");
}

#[test]
fn check_fails_on_a_file_that_is_not_executable() {
    let dir = TempDir::new("pf-noexec");
    dir.write(
        "worker.sh",
        "echo not a script: no #! so the harness leaves it 0644\n",
    );
    let (cfg, code, out, err) = check(&dir, "[pool.web]\ncommand = [\"./worker.sh\"]\n");
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let l = error_line(&err, &cfg, 2, 11, "pool.web.command");
    assert!(l.contains("is not executable (mode 0644)"), "{l}");
    // A directory is no command either.
    std::fs::create_dir(dir.join("sub")).unwrap();
    let (cfg, code, _, err) = check(&dir, "[pool.web]\ncommand = \"./sub\"\n");
    assert_eq!(code, 1, "{err}");
    let l = error_line(&err, &cfg, 2, 11, "pool.web.command");
    assert!(l.contains("is a directory"), "{l}");
}

#[test]
fn check_fails_on_a_missing_cwd() {
    let dir = TempDir::new("pf-cwd");
    dir.write("file", "");
    let (cfg, code, out, err) = check(
        &dir,
        "[pool.web]\ncommand = \"exec cat\"\ncwd = \"no-such-dir\"\n\n[pool.api]\ncommand = \"cat\"\ncwd = \"file\"\n",
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let l = error_line(&err, &cfg, 3, 7, "pool.web.cwd");
    assert!(
        l.contains(&format!(
            "the directory {} does not exist",
            dir.join("no-such-dir").display()
        )),
        "{l}"
    );
    let l = error_line(&err, &cfg, 7, 7, "pool.api.cwd");
    assert!(l.contains("is not a directory"), "{l}");
}

#[test]
fn check_passes_for_runnable_commands() {
    let dir = TempDir::new("pf-ok");
    std::fs::create_dir(dir.join("bin")).unwrap();
    std::fs::create_dir(dir.join("work")).unwrap();
    dir.write("bin/my-worker", "#!/bin/sh\nexec cat\n");
    dir.write("work/local.sh", "#!/bin/sh\nexec cat\n");
    let (_, code, out, err) = check(
        &dir,
        r#"
[pool.plain]
command = ["sh", "-c", "cat"]
[pool.absolute]
command = ["/bin/cat"]
[pool.builtin]
command = "exec cat"
[pool.shell_syntax]
command = "while read l; do echo \"$l\"; done"
[pool.assignment]
command = "FOO=1 $WORKER"
[pool.own_path]
command = ["my-worker"]
env = { PATH = "bin" }
cwd = "."
[pool.relative]
command = "./local.sh"
cwd = "work"
"#,
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("pool own_path:"), "{out}");
    // The pool's PATH is the one searched: orchd's own PATH does not have my-worker,
    // and the pool's PATH does not have sh.
    let (cfg, code, _, err) = check(
        &dir,
        "[pool.web]\ncommand = [\"sh\"]\nenv = { PATH = \"/nonexistent\" }\n",
    );
    assert_eq!(code, 1, "{err}");
    let l = error_line(&err, &cfg, 2, 11, "pool.web.command");
    assert!(l.contains("(/nonexistent, from the pool's env)"), "{l}");
}

#[test]
fn start_up_with_a_missing_binary_only_warns_once_and_retries() {
    let dir = TempDir::new("pf-start");
    let cfg = dir.write(
        "pool.toml",
        "[pool.ok]\ncommand = \"exec cat\"\n\n[pool.web]\ncommand = [\"orchd-no-such-binary\"]\nbackoff = { initial = \"20ms\", max = \"50ms\" }\n",
    );
    let mut o = Orchd::start(&cfg);
    // Retried with backoff, several times.
    o.wait_log("failed to start", 3);
    let warning = format!("{}:5:11: pool.web.command: ", cfg.display());
    assert_eq!(o.log_count(&warning), 1, "{}", o.log());
    let line = o
        .log()
        .lines()
        .find(|l| l.contains(&warning))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains(" WARN "), "{line}");
    assert_eq!(o.stop(), 0, "{}", o.log());
}

#[test]
fn plan_reports_a_missing_binary_or_cwd_as_an_error() {
    let dir = TempDir::new("pf-plan");
    let cfg = dir.write(
        "pool.toml",
        "[orchd]\ncontrol = \"orchd.sock\"\n\n[pool.web]\ncommand = \"exec cat\"\n",
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_for("the control socket", DEADLINE, || {
        dir.join("orchd.sock").exists().then_some(())
    });
    dir.write(
        "pool.toml",
        "[orchd]\ncontrol = \"orchd.sock\"\n\n[pool.web]\ncommand = [\"orchd-no-such-binary\"]\ncwd = \"gone\"\n",
    );
    let (code, out, err) = run_orchd(&["--plan", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(":5:11: pool.web.command: "), "{err}");
    assert!(err.contains(":6:7: pool.web.cwd: "), "{err}");
    // A reload of the same file only warns, and applies it.
    o.signal(libc::SIGHUP);
    wait_for("the reload warning", DEADLINE, || {
        o.log()
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains(":5:11: pool.web.command: "))
            .then_some(())
    });
    o.wait_log("failed to start", 1);
    assert_eq!(o.stop(), 0, "{}", o.log());
}

#[test]
fn an_unknown_level_in_log_level_is_a_usage_error() {
    let dir = TempDir::new("pf-level");
    let cfg = dir.write("pool.toml", "[pool.web]\ncommand = \"exec cat\"\n");
    let cfg = cfg.to_str().unwrap();
    for (level, names) in [
        ("verbose", "unknown level \"verbose\""),
        (
            "warn,upper=loud",
            "unknown level \"loud\" for target \"upper\"",
        ),
    ] {
        // Started like a daemon: where the level is accepted, orchd runs until killed.
        let mut o = Orchd::start_with(Path::new(cfg), &["--log-level", level], Stdio::null());
        let code = o.wait_exit(Duration::from_secs(10));
        let err = o.log();
        assert_eq!(code, 2, "{level}: {err}");
        assert!(err.contains(names), "{level}: {err}");
    }
    // The config's log_level: a config error with its position.
    let bad = dir.write(
        "bad.toml",
        "[orchd]\nlog_level = \"warn,upper=loud\"\n[pool.web]\ncommand = \"exec cat\"\n",
    );
    let mut o = Orchd::start(&bad);
    let code = o.wait_exit(Duration::from_secs(10));
    let err = o.log();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:2:13: orchd.log_level: ", bad.display())),
        "{err}"
    );
}

#[test]
fn a_log_filter_selects_per_target() {
    let dir = TempDir::new("pf-filter");
    let cfg = dir.write(
        "pool.toml",
        "[pool.upper]\ncommand = \"echo from-upper >&2; exec cat\"\n\n[pool.other]\ncommand = \"echo from-other >&2; exec cat\"\n",
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["--no-watch", "--log-level", "warn,upper=debug"])
        .arg(&cfg)
        .stdin(Stdio::null());
    let mut o = Orchd::spawn(cmd, &cfg);
    o.wait_log("from-upper", 1);
    assert_eq!(o.stop(), 0, "{}", o.log());
    let log = o.log();
    assert!(!log.contains("from-other"), "{log}");
    assert!(
        !log.contains(" INFO  orchd:"),
        "orchd's info lines are hidden:\n{log}"
    );
}

#[test]
fn a_bad_rust_log_is_ignored_with_a_warning() {
    let dir = TempDir::new("pf-rustlog");
    let cfg = dir.write("pool.toml", "[pool.web]\ncommand = \"exec cat\"\n");
    let mut cmd = Command::new(BIN);
    cmd.args(["--no-watch"])
        .arg(&cfg)
        .env("RUST_LOG", "verbose")
        .stdin(Stdio::null());
    let mut o = Orchd::spawn(cmd, &cfg);
    // The config's level (info) applies instead.
    o.wait_ready();
    let log = o.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("RUST_LOG=\"verbose\" ignored: unknown level \"verbose\"")),
        "{log}"
    );
    assert_eq!(o.stop(), 0, "{}", o.log());
}

/// The soft limit (`Max open files` row) in /proc/PID/limits.
fn soft_nofile(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let row = limits.lines().find(|l| l.starts_with("Max open files"))?;
    row.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn workers_get_the_open_file_limit_orchd_was_given() {
    // SAFETY: getrlimit writes into a struct we own.
    let hard = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_max
    };
    if hard <= 1024 {
        eprintln!("skipped: the hard open-file limit ({hard}) leaves nothing to raise");
        return;
    }
    let dir = TempDir::new("pf-nofile");
    let cfg = dir.write(
        "pool.toml",
        "[pool.web]\ncommand = \"echo nofile=$(ulimit -Sn) >&2; exec cat\"\n",
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("ulimit -Sn 1024 && exec \"$0\" --no-watch \"$1\"")
        .arg(BIN)
        .arg(&cfg)
        .stdin(Stdio::null());
    let mut o = Orchd::spawn(cmd, &cfg);
    o.wait_log("nofile=", 1);
    assert_eq!(o.log_count("nofile=1024"), 1, "{}", o.log());
    // orchd itself runs with the raised limit.
    let own = soft_nofile(o.pid()).expect("orchd's limits");
    assert!(own > 1024, "orchd's soft limit {own}");
    assert_eq!(o.stop(), 0, "{}", o.log());
}
