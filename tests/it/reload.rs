//! Reload (SPEC 6): SIGHUP and file-watch triggers, diff semantics, no lost messages.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::common::*;

fn echo_config(count: u32, version: &str) -> String {
    format!(
        r#"
[orchd]
control = "ctl.sock"

[pool.echo]
command = "while read -r l; do echo \"{version} $ORCHD_INSTANCE $l\"; done"
count = {count}
stop_timeout = "2s"

[[route]]
from = "unix:echo.sock"
to = "echo"
"#
    )
}

fn wait_count(cfg: &std::path::Path, pool: &str, n: usize) -> BTreeMap<u64, u64> {
    wait_for(&format!("{n} instances of {pool}"), DEADLINE, || {
        let p = pids(cfg, pool);
        let total = status(cfg)["pools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["name"] == pool)
            .map(|x| x["instances"].as_array().unwrap().len())
            .sum::<usize>();
        (p.len() == n && total == n).then_some(p)
    })
}

#[test]
fn sighup_scaling_keeps_surviving_pids() {
    let dir = TempDir::new("reload-scale");
    let cfg = dir.write("pool.toml", &echo_config(2, "v1"));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let two = wait_count(&cfg, "echo", 2);

    dir.write("pool.toml", &echo_config(4, "v1"));
    o.signal(libc::SIGHUP);
    let four = wait_count(&cfg, "echo", 4);
    assert_eq!(four[&0], two[&0]);
    assert_eq!(four[&1], two[&1]);

    dir.write("pool.toml", &echo_config(1, "v1"));
    o.signal(libc::SIGHUP);
    let one = wait_count(&cfg, "echo", 1);
    assert_eq!(one[&0], two[&0], "instance 0 must survive every resize");
    for (i, pid) in &four {
        if *i > 0 {
            wait_for("retired instances to exit", DEADLINE, || {
                (!alive(*pid as u32)).then_some(())
            });
        }
    }
    o.wait_log("reload: ~echo count 2→4", 1);
    o.wait_log("reload: ~echo count 4→1", 1);
    assert_eq!(o.stop(), 0);
}

#[test]
fn unchanged_reload_restarts_nothing() {
    let dir = TempDir::new("reload-same");
    let cfg = dir.write("pool.toml", &echo_config(3, "v1"));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let before = wait_count(&cfg, "echo", 3);
    for n in 1..=3 {
        o.signal(libc::SIGHUP);
        o.wait_log("reload: no changes", n);
    }
    assert_eq!(pids(&cfg, "echo"), before);
    assert_eq!(o.log_count(" started (pid"), 3, "{}", o.log());
    assert_eq!(o.stop(), 0);
}

/// Start orchd watching its config, apply `edit`, and check exactly one reload.
fn one_reload_per_edit(name: &str, edit: impl Fn(&TempDir, &std::path::Path, u32)) {
    let dir = TempDir::new(name);
    let cfg = dir.write("pool.toml", &echo_config(1, "v1"));
    let mut o = Orchd::start_with(&cfg, &[], std::process::Stdio::null());
    o.wait_ready();
    for (n, count) in [(1, 2), (2, 3)] {
        edit(&dir, &cfg, count);
        o.wait_log("reload: ~echo", n);
        wait_count(&cfg, "echo", count as usize);
        // Give a second, spurious reload time to show up.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(o.log_count("reload: "), n, "{}", o.log());
    }
    assert_eq!(o.stop(), 0);
}

#[test]
fn in_place_write_reloads_once() {
    one_reload_per_edit("reload-inplace", |_, cfg, count| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(cfg)
            .unwrap();
        f.write_all(echo_config(count, "v1").as_bytes()).unwrap();
    });
}

#[test]
fn atomic_save_reloads_once() {
    one_reload_per_edit("reload-atomic", |dir, cfg, count| {
        // vim-style: write a temp file, then rename it over the config.
        let tmp = dir.write(".pool.toml.swp", &echo_config(count, "v1"));
        std::fs::rename(tmp, cfg).unwrap();
    });
}

#[test]
fn mv_over_the_file_reloads_once() {
    one_reload_per_edit("reload-mv", |dir, cfg, count| {
        let other = dir.write(&format!("new-{count}.toml"), &echo_config(count, "v1"));
        let st = std::process::Command::new("mv")
            .arg(&other)
            .arg(cfg)
            .status()
            .unwrap();
        assert!(st.success());
    });
}

#[test]
fn configmap_symlink_swap_reloads_once() {
    let dir = TempDir::new("reload-k8s");
    // Kubernetes layout: pool.toml -> ..data/pool.toml, ..data -> ..v1 (a directory).
    std::fs::create_dir(dir.join("..v1")).unwrap();
    dir.write("..v1/pool.toml", &echo_config(1, "v1"));
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/pool.toml", dir.join("pool.toml")).unwrap();
    let cfg = dir.join("pool.toml");
    let mut o = Orchd::start_with(&cfg, &[], std::process::Stdio::null());
    o.wait_ready();
    for (n, count) in [(1u32, 2u32), (2, 3)] {
        let v = format!("..v{}", n + 1);
        std::fs::create_dir(dir.join(&v)).unwrap();
        dir.write(&format!("{v}/pool.toml"), &echo_config(count, "v1"));
        // Atomic swap of the ..data symlink, as the kubelet does.
        std::os::unix::fs::symlink(&v, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        o.wait_log("reload: ~echo", n as usize);
        wait_count(&cfg, "echo", count as usize);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(o.log_count("reload: "), n as usize, "{}", o.log());
    }
    assert_eq!(o.stop(), 0);
}

#[test]
fn invalid_edit_keeps_old_pool_serving_and_later_valid_edit_applies() {
    let dir = TempDir::new("reload-invalid");
    let cfg = dir.write("pool.toml", &echo_config(2, "v1"));
    let mut o = Orchd::start_with(&cfg, &[], std::process::Stdio::null());
    o.wait_ready();
    let before = wait_count(&cfg, "echo", 2);
    let mut c = Client::connect(&dir.join("echo.sock"));
    assert!(c.request("a").starts_with("v1 "));

    dir.write(
        "pool.toml",
        &echo_config(2, "v1").replace("count = 2", "count = \"many\""),
    );
    o.wait_log("is invalid; keeping the running config", 1);
    assert!(
        o.log().contains("pool.echo.count"),
        "error names the key:\n{}",
        o.log()
    );
    assert!(c.request("b").starts_with("v1 "), "old pool keeps serving");
    assert_eq!(pids(&cfg, "echo"), before);

    dir.write("pool.toml", &echo_config(3, "v1"));
    wait_count(&cfg, "echo", 3);
    assert!(c.request("c").starts_with("v1 "));
    assert_eq!(o.stop(), 0);
}

#[test]
fn connection_opened_before_reload_keeps_working() {
    let dir = TempDir::new("reload-conn");
    let cfg = dir.write("pool.toml", &echo_config(1, "v1"));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut c = Client::connect(&dir.join("echo.sock"));
    assert_eq!(c.request("x"), "v1 0 x");
    dir.write("pool.toml", &echo_config(2, "v1"));
    o.signal(libc::SIGHUP);
    wait_count(&cfg, "echo", 2);
    for i in 0..10 {
        let r = c.request(&format!("m{i}"));
        assert!(r.starts_with("v1 ") && r.ends_with(&format!("m{i}")), "{r}");
    }
    assert_eq!(o.stop(), 0);
}

#[test]
fn command_change_under_load_loses_nothing() {
    let dir = TempDir::new("reload-roll");
    let port = free_port();
    let conf = |v: &str| {
        format!(
            r#"
[orchd]
control = "ctl.sock"

[pool.echo]
command = "while read -r l; do echo \"{v} $l\"; done"
count = 4
stop_timeout = "2s"

[pool.bystander]
command = ["sleep", "1000"]

[[route]]
from = "tcp://127.0.0.1:{port}"
to = "echo"
"#
        )
    };
    let cfg = dir.write("pool.toml", &conf("v1"));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let old = wait_count(&cfg, "echo", 4);
    let bystander = wait_count(&cfg, "bystander", 1);

    // Load flows until the replacement is done: the writer sends steadily, the reader
    // collects every reply.
    let load = Load::start(port);
    load.wait_more("load before the reload", 500);
    dir.write("pool.toml", &conf("v2"));
    o.signal(libc::SIGHUP);
    o.wait_log("pool echo: replacement done", 1);
    load.wait_more("load after the replacement", 500);
    let replies = load.finish();

    for (i, rep) in replies.iter().enumerate() {
        let (ver, msg) = rep.split_once(' ').unwrap();
        assert!(ver == "v1" || ver == "v2", "{rep}");
        assert_eq!(msg, format!("msg{i}"), "replies in order, exactly once");
    }
    assert!(
        replies.last().unwrap().starts_with("v2 "),
        "new instances serve at the end"
    );
    let new = wait_count(&cfg, "echo", 4);
    for pid in old.values() {
        assert!(
            !new.values().any(|p| p == pid),
            "old pid {pid} still serving"
        );
        wait_for("old instance gone", DEADLINE, || {
            (!alive(*pid as u32)).then_some(())
        });
    }
    assert_eq!(o.log_count("ERR"), 0);
    assert_eq!(
        pids(&cfg, "bystander"),
        bystander,
        "unchanged pool untouched"
    );
    assert_eq!(
        o.log_count("bystander[0] started"),
        1,
        "unchanged worker never restarted"
    );
    eprintln!(
        "rolling replacement: {n} messages sent, {n} answered, 0 lost; bystander restarts: 0",
        n = replies.len()
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn removing_a_pool_and_its_route_drains_it_and_later_messages_get_no_route() {
    let dir = TempDir::new("reload-remove");
    // Pool b answers only once the test has seen the reload: the message is in
    // flight while its pool is removed, by construction.
    let release = dir.join("release");
    let two = &format!(
        r#"
[orchd]
control = "ctl.sock"

[pool.a]
command = "while read -r l; do echo \"a $l\"; done"

[pool.b]
command = "while read -r l; do while [ ! -e '{}' ]; do sleep 0.02; done; echo \"b $l\"; done"

[[route]]
from = "unix:s.sock"
match = "^a"
to = "a"

[[route]]
from = "unix:s.sock"
match = "^b"
to = "b"
"#,
        release.display()
    );
    let cfg = dir.write("pool.toml", two);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let b_pid = wait_count(&cfg, "b", 1)[&0];
    let mut c = Client::connect(&dir.join("s.sock"));
    // In flight while the reload removes pool b: still answered.
    c.send("b1");
    wait_messages_held(&cfg, "b", 1);
    let one = two.split("[pool.b]").next().unwrap().to_string()
        + "[[route]]\nfrom = \"unix:s.sock\"\nmatch = \"^a\"\nto = \"a\"\n";
    dir.write("pool.toml", &one);
    o.signal(libc::SIGHUP);
    o.wait_log("reload: -1 b", 1);
    std::fs::write(&release, "").unwrap();
    assert_eq!(
        c.recv(),
        "b b1",
        "in-flight message finished by the draining pool"
    );
    wait_for("pool b stopped", DEADLINE, || {
        (!alive(b_pid as u32)).then_some(())
    });
    assert_eq!(c.request("b2"), "ERR no route");
    assert_eq!(c.request("a1"), "a a1");
    assert_eq!(o.stop(), 0);
}

#[test]
fn scale_up_4_to_40_time() {
    let dir = TempDir::new("reload-40");
    let conf = |n: u32| {
        format!("[orchd]\ncontrol = \"ctl.sock\"\n[pool.s]\ncommand = [\"sleep\", \"1000\"]\ncount = {n}\n")
    };
    let cfg = dir.write("pool.toml", &conf(4));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    wait_count(&cfg, "s", 4);
    dir.write("pool.toml", &conf(40));
    let t = std::time::Instant::now();
    o.signal(libc::SIGHUP);
    wait_for("40 running", DEADLINE, || {
        (o.children().len() >= 40).then_some(())
    });
    eprintln!("SIGHUP to 40 instances running: {:?}", t.elapsed());
    assert_eq!(o.stop(), 0);
}

#[test]
fn reload_gives_failed_instances_a_fresh_start() {
    let dir = TempDir::new("reload-failed");
    let cfg = dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.flaky]
command = ["sh", "-c", "exit 1"]
backoff = { initial = "10ms", jitter = 0.0 }
give_up = { restarts = 2, within = "1m" }
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("giving up", 1);
    let state = |cfg: &std::path::Path| status(cfg)["pools"][0]["instances"][0]["state"].clone();
    assert_eq!(state(&cfg), "failed");
    // No cooldown: it stays failed...
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(o.log_count("flaky[0] started"), 3);
    // ...until a reload, even one that changes nothing.
    o.signal(libc::SIGHUP);
    o.wait_log("reload gives a failed instance a fresh start", 1);
    o.wait_log("reload: 1 failed instance(s) restarted", 1);
    o.wait_log("giving up", 2);
    assert_eq!(
        o.log_count("flaky[0] started"),
        6,
        "a full new budget of restarts"
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn removing_a_pool_whose_instance_is_still_stopping_keeps_orchd_up() {
    let dir = TempDir::new("reload-slowstop");
    let conf = |pool: &str| {
        format!(
            "[orchd]\ncontrol = \"ctl.sock\"\n{pool}\n[pool.other]\ncommand = [\"sleep\", \"1000\"]\n"
        )
    };
    let slow =
        "[pool.slow]\ncommand = \"trap 'sleep 1; exit 0' TERM; while :; do sleep 0.1; done\"\n";
    let cfg = dir.write("pool.toml", &conf(slow));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    // Scale to 0 (its instance starts stopping, slowly), then remove the pool.
    dir.write("pool.toml", &conf(&format!("{slow}count = 0\n")));
    o.signal(libc::SIGHUP);
    o.wait_log("reload: ~slow count 1→0", 1);
    dir.write("pool.toml", &conf(""));
    o.signal(libc::SIGHUP);
    o.wait_log("reload: -0 slow", 1);
    o.wait_log("slow[0] stopped", 1);
    o.wait_log("pool slow removed", 1);
    assert!(
        o.child.try_wait().unwrap().is_none(),
        "orchd died:\n{}",
        o.log()
    );
    assert_eq!(status(&cfg)["pools"].as_array().unwrap().len(), 1);
    assert_eq!(o.stop(), 0);
}

#[test]
fn removing_a_pool_answers_the_messages_waiting_for_it() {
    let dir = TempDir::new("reload-rmqueue");
    let with = r#"
[orchd]
control = "ctl.sock"

[pool.down]
command = ["sh", "-c", "exit 1"]
backoff = { initial = "20s" }

[[route]]
from = "unix:s.sock"
to = "down"
timeout = "0s"
"#;
    let cfg = dir.write("pool.toml", with);
    let mut o = Orchd::start(&cfg);
    o.wait_log("restarting in", 1);
    let mut c = Client::connect(&dir.join("s.sock"));
    c.send("stuck");
    wait_messages_held(&cfg, "down", 1);
    // The pool goes away; the route to it too, but the listener stays.
    dir.write(
        "pool.toml",
        "[orchd]\ncontrol = \"ctl.sock\"\n[pool.up]\ncommand = \"cat\"\n[[route]]\nfrom = \"unix:s.sock\"\nmatch = \"^up\"\nto = \"up\"\n",
    );
    o.signal(libc::SIGHUP);
    assert_eq!(c.recv(), "ERR pool removed");
    assert_eq!(c.request("up ok"), "up ok");
    assert_eq!(o.stop(), 0);
}

#[test]
fn sigterm_during_a_rolling_replacement_starts_nothing_new() {
    let dir = TempDir::new("reload-rollterm");
    let conf = |v: &str| {
        format!(
            "[pool.p]\ncommand = \"trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.1; done\"\ncount = 3\nenv = {{ V = \"{v}\" }}\n"
        )
    };
    let cfg = dir.write("pool.toml", &conf("1"));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    dir.write("pool.toml", &conf("2"));
    o.signal(libc::SIGHUP);
    o.wait_log("replacing 3 instance(s) one at a time", 1);
    o.signal(libc::SIGTERM);
    assert_eq!(o.wait_exit(DEADLINE), 0, "{}", o.log());
    let log = o.log();
    let after = &log[log.find("shutting down").unwrap()..];
    assert!(
        !after.contains(" started (pid"),
        "a worker started during shutdown:\n{log}"
    );
}

#[test]
fn a_broken_replacement_never_replaces_a_working_instance() {
    let dir = TempDir::new("reload-broken");
    let conf = |cmd: &str| {
        format!(
            "[orchd]\ncontrol = \"ctl.sock\"\n[pool.p]\ncommand = {cmd}\ncount = 2\nbackoff = {{ initial = \"50ms\" }}\n[[route]]\nfrom = \"unix:s.sock\"\nto = \"p\"\n"
        )
    };
    let good = "\"while read -r l; do echo \\\"ok $l\\\"; done\"";
    let cfg = dir.write("pool.toml", &conf(good));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let before = wait_count(&cfg, "p", 2);
    // The new version exits at once: it must never take a slot.
    dir.write("pool.toml", &conf("[\"sh\", \"-c\", \"exit 3\"]"));
    o.signal(libc::SIGHUP);
    o.wait_log("exited with status 3", 3);
    assert_eq!(pids(&cfg, "p"), before, "old instances keep their slots");
    let mut c = Client::connect(&dir.join("s.sock"));
    assert_eq!(c.request("x"), "ok x");
    assert_eq!(o.log_count("replacement done"), 0);
    // Fixing the config completes the replacement.
    dir.write("pool.toml", &conf(&good.replace("ok", "v2")));
    o.signal(libc::SIGHUP);
    o.wait_log("pool p: replacement done", 1);
    assert_eq!(c.request("y"), "v2 y");
    assert_eq!(o.stop(), 0);
}
