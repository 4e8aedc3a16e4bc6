//! Readiness, rolling, start order and memory limits (SPEC 10) through the real
//! binary: `ready` gates delivery and makes a failed start, rolls wait for readiness
//! (`rolling.parallel`, `stop-first`), `depends_on` orders start and stop, `max_rss`
//! restarts a worker that grows. (A `depends_on` cycle is rejected: see
//! `health_config::a_dependency_cycle_is_an_error_that_names_it`.)

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn readiness_by_log_line_gates_delivery() {
    let dir = TempDir::new("ready-gate");
    let go = dir.join("go");
    let go = go.display();
    // The worker reads at once and says whether it was told it is ready yet: a
    // message delivered before the ready line is answered "early".
    let cfg = dir.write(
        "pool.toml",
        &format!(
            r#"
[orchd]
control = "ctl.sock"

[pool.w]
command = 'exec 3<&0; while read -r l <&3; do if [ -e {go} ]; then echo "ready $l"; else echo "early $l"; fi; done & until [ -e {go} ]; do sleep 0.02; done; echo listening >&2; wait'
ready = {{ log = "^listening", timeout = "30s" }}

[[route]]
from = "unix:w.sock"
to = "w"
"#
        ),
    );
    let mut o = Orchd::start(&cfg);
    wait_started(&o, "w[0]", 1);
    let mut c = Client::connect(&dir.join("w.sock"));
    c.send("m1");
    wait_messages_held(&cfg, "w", 1);
    let i = &instances(&cfg, "w")[0];
    assert_eq!(i["state"], "starting", "{i}");
    assert_eq!(i["inflight"], 0, "nothing delivered before ready: {i}");
    assert_eq!(
        o.log_count("ready: "),
        0,
        "orchd is not ready before its worker"
    );
    std::fs::write(dir.join("go"), "").unwrap();
    let r = c.recv();
    assert_eq!(r, "ready m1", "{}", o.log());
    o.wait_log("w[0] ready after", 1);
    o.wait_ready();
    assert_eq!(instances(&cfg, "w")[0]["state"], "running");
    assert_eq!(c.request("m2"), "ready m2");
    assert_eq!(o.stop(), 0);
}

#[test]
fn a_worker_that_never_gets_ready_is_a_failed_start() {
    let dir = TempDir::new("ready-never");
    let cfg = dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.w]
command = "echo booting >&2; exec sleep 1000"
ready = { log = "^listening", timeout = "300ms" }
backoff = { initial = "100ms", max = "100ms" }
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("w[0] not ready within 300ms: a failed start", 2);
    o.wait_log("failed start; restarting in", 1);
    o.wait_log("ready: 1 pool(s), 0 instance(s) ready, 1 failed", 1);
    let pids = wait_started(&o, "w[0]", 2);
    assert_ne!(pids[0], pids[1]);
    let i = wait_for("restarts counted", DEADLINE, || {
        let i = instances(&cfg, "w").remove(0);
        (i["restarts"].as_u64() >= Some(2)).then_some(i)
    });
    assert_ne!(i["state"], "running", "{i}");
    assert_eq!(o.stop(), 0);
}

fn roll_config(port: u16, version: &str, extra: &str) -> String {
    format!(
        r#"
[orchd]
control = "ctl.sock"

[pool.echo]
command = "sleep 0.1; echo up >&2; while read -r l; do echo \"{version} $l\"; done"
count = 10
stop_timeout = "2s"
ready = {{ log = "^up" }}
{extra}

[[route]]
from = "tcp://127.0.0.1:{port}"
to = "echo"
"#
    )
}

#[test]
fn rolling_replacement_of_10_with_ready_log_is_fast_under_load_and_loses_nothing() {
    let dir = TempDir::new("ready-roll");
    let port = free_port();
    let cfg = dir.write("pool.toml", &roll_config(port, "v1", ""));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let load = Load::start(port);
    load.wait_more("load before the reload", 200);
    dir.write("pool.toml", &roll_config(port, "v2", ""));
    let t0 = Instant::now();
    o.signal(libc::SIGHUP);
    o.wait_log("pool echo: replacement done", 1);
    let took = t0.elapsed();
    load.wait_more("load after the reload", 200);
    let replies = load.finish();
    assert!(
        replies.last().unwrap().starts_with("v2 "),
        "{:?}",
        replies.last()
    );
    assert_eq!(o.log_count("ERR"), 0);
    eprintln!(
        "rolling replacement of 10 (ready.log, 100 ms start): {} ms, {} replies, 0 lost",
        took.as_millis(),
        replies.len()
    );
    // Each replacement needs 100 ms to get ready: one at a time is about 1 s; the
    // fixed second of old would be 10 s or more.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(o.stop(), 0);
}

#[test]
fn stop_first_never_runs_two_instances_of_a_slot() {
    let dir = TempDir::new("ready-stopfirst");
    let locks = dir.path().display().to_string();
    // Each slot holds a lock (a directory) while it runs: a second instance of the
    // same slot cannot take it and says so.
    let conf = |v: &str| {
        format!(
            r#"
[orchd]
control = "ctl.sock"

[pool.w]
command = 'mkdir {locks}/lock$ORCHD_INSTANCE || {{ echo "overlap in slot $ORCHD_INSTANCE" >&2; exit 3; }}; trap "rmdir {locks}/lock$ORCHD_INSTANCE; exit 0" TERM; echo up >&2; while :; do sleep 0.05; done'
count = 3
env = {{ V = "{v}" }}
ready = {{ log = "^up" }}
rolling = {{ order = "stop-first", parallel = 2 }}
backoff = {{ initial = "50ms" }}
"#
        )
    };
    let cfg = dir.write("pool.toml", &conf("1"));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let before = pids(&cfg, "w");
    dir.write("pool.toml", &conf("2"));
    o.signal(libc::SIGHUP);
    o.wait_log("pool w: replacement done", 1);
    let after = wait_for("3 running", DEADLINE, || {
        let p = pids(&cfg, "w");
        (p.len() == 3).then_some(p)
    });
    for (i, pid) in &before {
        assert_ne!(after[i], *pid, "w[{i}] replaced");
    }
    assert_eq!(o.log_count("overlap"), 0, "{}", o.log());
    assert_eq!(
        o.log_count("replacing 3 instance(s) 2 at a time (stop-first)"),
        1
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn depends_on_orders_start_and_stop_and_waits_for_a_completed_migration() {
    let dir = TempDir::new("ready-deps");
    let cfg = dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.app]
command = "exec sleep 1000"
depends_on = ["db", "migrate"]

[pool.db]
command = "sleep 0.3; echo accepting >&2; exec sleep 1000"
ready = { log = "^accepting" }

[pool.migrate]
command = "sleep 0.2; exit 0"
restart = "never"
depends_on = ["db"]
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let first = |o: &Orchd, needle: &str| {
        let l = lines_with(o, needle);
        assert!(!l.is_empty(), "no {needle:?} in\n{}", o.log());
        ts_ms(&l[0])
    };
    let db_ready = first(&o, "db[0] ready after");
    let migrate_start = first(&o, "migrate[0] started");
    let migrate_done = first(&o, "migrate[0] exited with status 0");
    let app_start = first(&o, "app[0] started");
    assert!(migrate_start >= db_ready, "migrate waits for db");
    assert!(
        app_start >= migrate_done,
        "app waits for the migration to complete"
    );
    assert!(o.log().contains("pool app: waiting for"), "{}", o.log());
    assert_eq!(
        o.log_count("ready: 3 pool(s), 2 instance(s) ready, 0 failed, 1 completed"),
        1
    );
    assert_eq!(o.stop(), 0);
    let app_stop = first(&o, "stopping app[0]");
    let db_stop = first(&o, "stopping db[0]");
    let app_stopped = first(&o, "app[0] stopped");
    assert!(
        db_stop >= app_stopped && app_stop <= db_stop,
        "app stops before db"
    );
}

#[test]
fn a_pool_waiting_on_a_failed_dependency_says_so() {
    let dir = TempDir::new("ready-deps-failed");
    let cfg = dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.app]
command = "exec sleep 1000"
depends_on = ["migrate"]

[pool.migrate]
command = "exit 1"
restart = "never"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let i = wait_for("app waiting", DEADLINE, || {
        let i = instances(&cfg, "app").remove(0);
        (i["reason"] == "waiting for migrate (failed)").then_some(i)
    });
    assert_eq!(i["pid"], serde_json::Value::Null, "{i}");
    assert_eq!(o.log_count("app[0] started"), 0);
    assert_eq!(o.stop(), 0);
}

#[test]
fn max_rss_restarts_a_worker_that_grows() {
    let dir = TempDir::new("ready-rss");
    let cfg = dir.write(
        "pool.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.grow]
command = ["perl", "-e", "$x = 'x' x (40 * 1024 * 1024); sleep 1000"]
max_rss = "20MiB"

[pool.small]
command = ["sleep", "1000"]
max_rss = "20MiB"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let first = wait_started(&o, "grow[0]", 1)[0];
    // Two checks 5 s apart over the limit: restarted within about 10 s.
    o.wait_log(
        "above max_rss 20MiB for 2 checks in a row; restarting it",
        1,
    );
    let again = wait_started(&o, "grow[0]", 2);
    assert_ne!(again[1], first);
    assert_eq!(o.log_count("small[0]: rss"), 0, "the small one stays");
    assert_eq!(started(&o, "small[0]").len(), 1);
    assert_eq!(o.stop(), 0);
}
