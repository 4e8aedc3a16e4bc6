//! `orchd ctl CONFIG VERB` (SPEC 9): each verb end to end, its exit codes and errors,
//! a rolling restart under load, holds across reloads, and signals.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

/// `orchd ctl CONFIG ARGS...`: (exit code, stdout, stderr).
fn ctl(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["ctl", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    run_orchd(&all)
}

/// `ctl ARGS` must succeed; its stdout.
fn ctl_ok(cfg: &Path, args: &[&str]) -> String {
    let (code, out, err) = ctl(cfg, args);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
    out
}

/// index → pid of the running instances of `pool`, once it has exactly `n`
/// instances, all running (none retiring, none a pending replacement).
fn wait_running(cfg: &Path, pool: &str, n: usize) -> BTreeMap<u64, u64> {
    wait_for(
        &format!("{n} running instances of {pool}"),
        DEADLINE,
        || {
            let all = instances(cfg, pool);
            let running: BTreeMap<u64, u64> = all
                .iter()
                .filter(|i| i["state"] == "running" && i["retiring"] == false)
                .filter_map(|i| Some((i["index"].as_u64()?, i["pid"].as_u64()?)))
                .collect();
            (all.len() == n && running.len() == n).then_some(running)
        },
    )
}

const SLEEPERS: &str = r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = ["sleep", "1000"]
count = 2
stop_timeout = "2s"
"#;

#[test]
fn ctl_errors_and_exit_codes() {
    let dir = TempDir::new("ctl-errors");
    let cfg = dir.write("pool.toml", SLEEPERS);
    // No orchd running: 1 with a reason.
    let (code, _, err) = ctl(&cfg, &["restart", "web"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no orchd is answering"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_running(&cfg, "web", 2);
    // Usage errors: 2, whatever orchd would say.
    for args in [
        &["frobnicate"][..],
        &[],
        &["restart"],
        &["stop", "web/x"],
        &["start", "web/"],
        &["signal", "NOSUCH", "web"],
        &["signal", "USR1"],
        &["status", "extra"],
        &["reload", "--bogus"],
    ] {
        let (code, _, err) = ctl(&cfg, args);
        assert_eq!(code, 2, "ctl {args:?}: {err}");
        assert!(err.contains("usage: orchd ctl"), "{err}");
    }
    // Unknown pool, bad index: 1 with a one-line reason, for every verb.
    for verb in [&["restart"][..], &["stop"], &["start"], &["signal", "USR1"]] {
        let mut args = verb.to_vec();
        args.push("nope");
        let (code, out, err) = ctl(&cfg, &args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert!(err.contains("unknown pool \"nope\""), "{err}");
        assert!(err.contains("the pools are: web"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        args.pop();
        args.push("web/2");
        let (code, _, err) = ctl(&cfg, &args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("pool web has no instance 2 (indexes 0 to 1)"),
            "{err}"
        );
    }
    // Nothing was touched by the refused commands.
    assert_eq!(o.log_count("web[0] started"), 1);
    assert_eq!(o.log_count("web[1] started"), 1);

    // status, plan, reload.
    let table = ctl_ok(&cfg, &["status"]);
    assert!(table.starts_with("POOL"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(ctl_ok(&cfg, &["plan"]).contains("no changes"), "plan");
    dir.write("other.toml", &SLEEPERS.replace("count = 2", "count = 3"));
    let out = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["ctl", cfg.to_str().unwrap(), "plan", "other.toml"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(plan.contains("count 2→3"), "{plan}");
    let out = ctl_ok(&cfg, &["reload"]);
    assert!(out.contains("no changes"), "{out}");

    // A wait cut short by --timeout: 1, and orchd goes on (and keeps answering).
    let (code, _, err) = ctl(&cfg, &["restart", "web", "--timeout", "100ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no answer within 100ms"), "{err}");
    o.wait_log("pool web: replacement done", 1);
    wait_running(&cfg, "web", 2);
    assert_eq!(o.stop(), 0);
}

/// Stops `load`: every message was answered by `cat`, in order, exactly once.
/// Returns how many.
fn finish_echoed(load: Load) -> usize {
    let replies = load.finish();
    for (i, rep) in replies.iter().enumerate() {
        assert_eq!(*rep, format!("msg{i}"), "replies in order, exactly once");
    }
    replies.len()
}

/// A pool of `count` `cat` workers behind a TCP route, and a bystander pool.
fn cat_config(port: u16, count: u32) -> String {
    format!(
        r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = ["cat"]
count = {count}
stop_timeout = "2s"

[pool.bystander]
command = ["sleep", "1000"]

[[route]]
from = "tcp://127.0.0.1:{port}"
to = "web"
"#
    )
}

#[test]
fn restart_under_load_loses_nothing_and_ends_with_new_pids() {
    let dir = TempDir::new("ctl-restart");
    let port = free_port();
    let cfg = dir.write("pool.toml", &cat_config(port, 3));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let old = wait_running(&cfg, "web", 3);
    let bystander = wait_running(&cfg, "bystander", 1);

    let load = Load::start(port);
    load.wait_more("load before the restart", 500);
    let before = load.answered();
    // Waits until done: every old instance has been replaced and has drained.
    let out = ctl_ok(&cfg, &["restart", "web"]);
    assert!(out.contains("restarted web[0], web[1], web[2]"), "{out}");
    let during = load.answered() - before;
    for pid in old.values() {
        assert!(
            !alive(*pid as u32),
            "old pid {pid} still alive after restart"
        );
    }
    load.wait_more("load after the restart", 500);
    let sent = finish_echoed(load);

    let new = wait_running(&cfg, "web", 3);
    for (index, pid) in &old {
        assert_ne!(new[index], *pid, "web[{index}] has a new pid");
        assert!(!new.values().any(|p| p == pid), "old pid {pid} serving");
    }
    assert_eq!(wait_running(&cfg, "bystander", 1), bystander);
    assert_eq!(o.log_count("ERR"), 0);
    eprintln!(
        "ctl restart under load: {sent} messages sent and answered in order \
         ({during} while restarting), 0 lost"
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn stop_and_start_under_load_lose_nothing() {
    let dir = TempDir::new("ctl-stop-load");
    let port = free_port();
    let cfg = dir.write("pool.toml", &cat_config(port, 2));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let old = wait_running(&cfg, "web", 2);
    let load = Load::start(port);
    load.wait_more("load before the stop", 500);
    ctl_ok(&cfg, &["stop", "web/0"]);
    assert!(!alive(old[&0] as u32), "web[0] stopped when stop returns");
    assert!(held(&cfg, "web", 0));
    load.wait_more("load served by web[1] alone", 500);
    ctl_ok(&cfg, &["start", "web/0"]);
    wait_running(&cfg, "web", 2);
    load.wait_more("load after the start", 500);
    finish_echoed(load);
    assert_eq!(o.log_count("ERR"), 0);
    assert_eq!(o.stop(), 0);
}

fn held_config(web_mode: &str, bg_count: u32) -> String {
    format!(
        r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = ["sleep", "1000"]
count = 2
env = {{ MODE = "{web_mode}" }}
stop_timeout = "2s"

[pool.bg]
command = ["sleep", "1000"]
count = {bg_count}
stop_timeout = "2s"
"#
    )
}

/// (state, reason, pid) of `pool[index]`.
fn state_of(cfg: &Path, pool: &str, index: u64) -> (String, Option<String>, Option<u64>) {
    let i = instances(cfg, pool)
        .into_iter()
        .find(|i| i["index"] == index && i["retiring"] == false && i["replacement"] == false)
        .unwrap_or_else(|| panic!("{pool}[{index}] in status"));
    (
        i["state"].as_str().unwrap().to_string(),
        i["reason"].as_str().map(str::to_string),
        i["pid"].as_u64(),
    )
}

fn held(cfg: &Path, pool: &str, index: u64) -> bool {
    state_of(cfg, pool, index) == ("stopped".into(), Some("held".into()), None)
}

#[test]
fn stop_holds_across_a_reload_and_a_scale_up_until_start() {
    let dir = TempDir::new("ctl-hold");
    let cfg = dir.write("pool.toml", &held_config("old", 1));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let web = wait_running(&cfg, "web", 2);
    wait_running(&cfg, "bg", 1);

    // stop waits until stopped: status shows it held at once.
    let out = ctl_ok(&cfg, &["stop", "web/1"]);
    assert!(out.contains("stopped web[1]"), "{out}");
    assert!(!alive(web[&1] as u32), "web[1]'s process is gone");
    assert!(held(&cfg, "web", 1), "{:?}", state_of(&cfg, "web", 1));
    let table = ctl_ok(&cfg, &["status"]);
    assert!(table.contains("stopped (held)"), "{table}");
    ctl_ok(&cfg, &["stop", "bg"]);
    assert!(held(&cfg, "bg", 0));

    // A reload that changes web's env and scales bg up: web[0] is replaced, web[1]
    // stays held (not replaced, not started), bg's new instance is held too.
    dir.write("pool.toml", &held_config("new", 2));
    let plan = ctl_ok(&cfg, &["plan"]);
    assert!(
        plan.contains("replace 1"),
        "the held instance is not replaced:\n{plan}"
    );
    ctl_ok(&cfg, &["reload"]);
    o.wait_log("pool web: replacement done", 1);
    let pid = wait_for("web[0] replaced", DEADLINE, || {
        let (s, _, p) = state_of(&cfg, "web", 0);
        (s == "running" && p != Some(web[&0])).then_some(p.unwrap())
    });
    assert_eq!(env_of(pid as u32, "MODE").as_deref(), Some("new"));
    assert!(held(&cfg, "web", 1), "{:?}", state_of(&cfg, "web", 1));
    assert!(held(&cfg, "bg", 0));
    assert!(held(&cfg, "bg", 1), "scale-up of a stopped pool stays held");
    assert_eq!(
        o.log_count("web[1] started"),
        1,
        "held web[1] never restarted"
    );
    assert_eq!(o.log_count("bg[1] started"), 0);

    // restart leaves held instances alone; naming one is an error.
    let (code, _, err) = ctl(&cfg, &["restart", "web/1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("web[1] is held stopped"), "{err}");
    let out = ctl_ok(&cfg, &["restart", "web"]);
    assert_eq!(out.trim(), "restarted web[0]");
    assert!(held(&cfg, "web", 1));
    assert_eq!(o.log_count("web[1] started"), 1);

    // start releases: web[1] runs the pool's current spec; bg starts both.
    let out = ctl_ok(&cfg, &["start", "web/1"]);
    assert!(out.contains("started web[1]"), "{out}");
    let now = wait_running(&cfg, "web", 2);
    assert_eq!(env_of(now[&1] as u32, "MODE").as_deref(), Some("new"));
    assert_eq!(state_of(&cfg, "web", 1).1, None, "no reason once released");
    ctl_ok(&cfg, &["start", "bg"]);
    wait_running(&cfg, "bg", 2);
    // The pool's hold is gone: a later scale-up starts.
    dir.write("pool.toml", &held_config("new", 3));
    ctl_ok(&cfg, &["reload"]);
    wait_running(&cfg, "bg", 3);
    assert_eq!(o.stop(), 0);
}

#[test]
fn start_runs_an_exited_never_instance_again() {
    let dir = TempDir::new("ctl-start");
    let cfg = dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.job]
command = "echo job-ran >&2"
restart = "never"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("job-ran", 1);
    wait_for("job exited", DEADLINE, || {
        (state_of(&cfg, "job", 0).0 == "stopped").then_some(())
    });
    let out = ctl_ok(&cfg, &["start", "job"]);
    assert!(out.contains("started job[0]"), "{out}");
    o.wait_log("job-ran", 2);
    assert_eq!(o.stop(), 0);
}

#[test]
fn signal_usr1_reaches_every_process_group() {
    let dir = TempDir::new("ctl-signal");
    let cfg = dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = "trap 'echo got-usr1 $ORCHD_INSTANCE >&2' USR1; echo armed >&2; while :; do sleep 1000 & wait $!; done"
count = 3
stop_timeout = "2s"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("armed", 3);
    let out = ctl_ok(&cfg, &["signal", "USR1", "web"]);
    assert!(out.contains("sent USR1 to web[0], web[1], web[2]"), "{out}");
    for i in 0..3 {
        o.wait_log(&format!("got-usr1 {i}"), 1);
    }
    // By number and with SIG, to one instance.
    ctl_ok(&cfg, &["signal", "SIGUSR1", "web/1"]);
    o.wait_log("got-usr1 1", 2);
    ctl_ok(&cfg, &["signal", &libc::SIGUSR1.to_string(), "web/2"]);
    o.wait_log("got-usr1 2", 2);
    assert_eq!(o.log_count("got-usr1 0"), 1);
    // An instance that is not running cannot be signalled: 1.
    ctl_ok(&cfg, &["stop", "web/0"]);
    let (code, _, err) = ctl(&cfg, &["signal", "USR1", "web/0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("web[0] is not running"), "{err}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn restart_to_code_that_cannot_start_fails_and_keeps_the_old_instances() {
    let dir = TempDir::new("ctl-broken");
    let port = free_port();
    let worker = dir.write("worker.sh", "#!/bin/sh\nexec cat\n");
    let cfg = dir.write(
        "pool.toml",
        &format!(
            r#"
[orchd]
control = "ctl.sock"

[pool.web]
command = ["{}"]
count = 2
stop_timeout = "2s"

[[route]]
from = "tcp://127.0.0.1:{port}"
to = "web"
"#,
            worker.display()
        ),
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let old = wait_running(&cfg, "web", 2);
    // New code that exits at once: the restart fails fast, nothing is replaced.
    dir.write("worker.sh", "#!/bin/sh\nexit 3\n");
    let (code, _, err) = ctl(&cfg, &["restart", "web", "--timeout", "15s"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("its replacement failed to start"), "{err}");
    assert!(err.contains("keeps running"), "{err}");
    assert_eq!(wait_running(&cfg, "web", 2), old, "old instances serve on");
    let mut c = TcpClient::connect(port);
    assert_eq!(c.request("still here"), "still here");
    // Fixed code: the restart goes through.
    dir.write("worker.sh", "#!/bin/sh\nexec cat\n");
    ctl_ok(&cfg, &["restart", "web"]);
    let new = wait_running(&cfg, "web", 2);
    assert!(
        old.values().all(|p| !new.values().any(|n| n == p)),
        "{old:?} {new:?}"
    );
    assert_eq!(c.request("and now"), "and now");
    assert_eq!(o.stop(), 0);
}

#[test]
fn stop_during_a_large_start_holds_the_instances_still_waiting_to_start() {
    // orchd starts at most 64 instances per loop turn; the rest wait in a queue. A
    // `stop` that arrives meanwhile must hold those too, and be answered.
    let dir = TempDir::new("ctl-stop-queued");
    let cfg = dir.write(
        "pool.toml",
        "[orchd]\ncontrol = \"ctl.sock\"\n\n[pool.web]\ncommand = [\"sleep\", \"1000\"]\ncount = 1000\nstop_timeout = \"2s\"\n",
    );
    let mut o = Orchd::start(&cfg);
    let sock = dir.join("ctl.sock");
    wait_for("the control socket", DEADLINE, || {
        sock.exists().then_some(())
    });
    let (code, out, err) = ctl(&cfg, &["stop", "web", "--timeout", "20s"]);
    assert_eq!(code, 0, "stop: {out}{err}\n{}", o.log());
    let all = instances(&cfg, "web");
    assert_eq!(all.len(), 1000);
    let not_held: Vec<_> = all
        .iter()
        .filter(|i| i["state"] != "stopped" || i["reason"] != "held")
        .take(3)
        .collect();
    assert!(not_held.is_empty(), "not held: {not_held:?}");
    wait_for("no worker left", DEADLINE, || {
        o.children().is_empty().then_some(())
    });
    assert_eq!(o.stop(), 0);
}
