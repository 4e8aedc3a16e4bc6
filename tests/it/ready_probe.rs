//! `ready = { probe = true }` and health restarts through the real binary (SPEC 10):
//! the first health probe, sent at spawn, makes an instance ready (a `send` probe
//! reaches it while messages still wait; an `exec` probe likewise); a probe that never
//! passes is a failed start at `ready.timeout`; with `ready.log`, probes begin once
//! the instance is ready; health restarts back off like crashes and count for
//! `give_up`.

use crate::common::*;

/// A worker that answers as the file `go` says: `PING` gets `PONG` once it exists
/// (`NOPE` before), any other line `ready LINE` once it exists (`early LINE` before):
/// a message delivered before the probe passed would be answered `early`.
const WORKER: &str = r#"
while IFS= read -r line; do
  case "$line" in
    PING) if [ -e go ]; then echo PONG; else echo NOPE; fi ;;
    *) if [ -e go ]; then echo "ready $line"; else echo "early $line"; fi ;;
  esac
done
"#;

fn config(dir: &TempDir, ready: &str, health: &str) -> std::path::PathBuf {
    dir.write("worker.sh", WORKER);
    dir.write(
        "orchd.toml",
        &format!(
            r#"
[orchd]
control = "ctl.sock"

[pool.w]
command = ["sh", "worker.sh"]
ready = {ready}
health = {health}

[[route]]
from = "unix:w.sock"
to = "w"
"#
        ),
    )
}

/// A message sent before the probe passes waits (nothing in flight, `starting`),
/// and is answered by the worker once it is ready; later ones go at once.
fn gates_delivery_until_the_probe_passes(dir: &TempDir, cfg: &std::path::Path) {
    let mut o = Orchd::start(cfg);
    wait_started(&o, "w[0]", 1);
    // Probes are running and failing (not yet ready): not counted, no restart.
    o.wait_log("w[0]: health probe failed (not yet ready)", 2);
    let mut c = Client::connect(&dir.join("w.sock"));
    c.send("m1");
    wait_messages_held(cfg, "w", 1);
    let i = &instances(cfg, "w")[0];
    assert_eq!(i["state"], "starting", "{i}");
    assert_eq!(i["inflight"], 0, "nothing delivered before ready: {i}");
    std::fs::write(dir.join("go"), "").unwrap();
    assert_eq!(c.recv(), "ready m1", "{}", o.log());
    o.wait_log("w[0] ready after", 1);
    o.wait_ready();
    assert_eq!(instances(cfg, "w")[0]["state"], "running");
    for n in 2..10 {
        let m = format!("m{n}");
        assert_eq!(c.request(&m), format!("ready {m}"));
    }
    assert_eq!(started(&o, "w[0]").len(), 1, "{}", o.log());
    assert_eq!(o.log_count("consecutive health probe failure"), 0);
    assert_eq!(o.stop(), 0);
}

#[test]
fn ready_probe_with_a_send_probe_gates_delivery_until_it_passes() {
    let dir = TempDir::new("rp-send");
    let cfg = config(
        &dir,
        r#"{ probe = true, timeout = "60s" }"#,
        r#"{ send = "PING", expect = "^PONG$", every = "100ms", timeout = "2s", failures = 1 }"#,
    );
    gates_delivery_until_the_probe_passes(&dir, &cfg);
}

#[test]
fn ready_probe_with_an_exec_probe_gates_delivery_until_it_passes() {
    let dir = TempDir::new("rp-exec");
    let cfg = config(
        &dir,
        r#"{ probe = true, timeout = "60s" }"#,
        r#"{ exec = "test -e go", every = "100ms", timeout = "2s", failures = 1 }"#,
    );
    gates_delivery_until_the_probe_passes(&dir, &cfg);
}

#[test]
fn a_worker_whose_probe_never_passes_is_a_failed_start_at_ready_timeout() {
    let dir = TempDir::new("rp-never");
    let cfg = dir.write(
        "orchd.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.w]
command = "exec sleep 1000"
ready = { probe = true, timeout = "400ms" }
health = { exec = "exit 1", every = "100ms", timeout = "1s", failures = 1 }
backoff = { initial = "100ms", max = "100ms" }
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("w[0] not ready within 400ms: a failed start", 2);
    o.wait_log("ready: 1 pool(s), 0 instance(s) ready, 1 failed", 1);
    let pids = wait_started(&o, "w[0]", 2);
    assert_ne!(pids[0], pids[1]);
    // Failures before the first pass are not counted: `ready.timeout` decides.
    assert_eq!(o.log_count("consecutive health probe failure"), 0);
    assert!(o.log_count("health probe failed (not yet ready)") >= 2);
    assert_ne!(instances(&cfg, "w")[0]["state"], "running");
    assert_eq!(o.stop(), 0);
}

#[test]
fn health_restarts_back_off_and_give_up_stops_them() {
    let dir = TempDir::new("rp-backoff");
    let cfg = dir.write(
        "orchd.toml",
        r#"
[orchd]
control = "ctl.sock"

[pool.x]
command = "exec sleep 1000"
health = { exec = "exit 3", every = "100ms", timeout = "1s", failures = 1 }
backoff = { initial = "500ms", max = "5s", factor = 2.0, jitter = 0.0 }
give_up = { restarts = 2, within = "1m" }
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("giving up: more than 2 restarts within 1m", 1);
    let i = wait_for("state failed", DEADLINE, || {
        let i = instances(&cfg, "x").remove(0);
        (i["state"] == "failed").then_some(i)
    });
    assert_eq!(i["restarts"], 2, "{i}");
    let log = o.log();
    let stops = lines_with(&o, "x[0] stopped after");
    let starts = lines_with(&o, "x[0] started (pid");
    assert_eq!(starts.len(), 3, "{log}");
    assert_eq!(stops.len(), 3, "{log}");
    // Each restart is logged with its reason and waits its backoff delay: 500 ms,
    // then 1 s (counted like crashes, not at once).
    for (n, want) in [(0, 500), (1, 1000)] {
        assert!(
            stops[n].contains(&format!(
                "because its health checks failed; restarting in {}",
                if want == 500 { "500ms" } else { "1.0s" }
            )),
            "{log}"
        );
        let waited = ts_ms(&starts[n + 1]) - ts_ms(&stops[n]);
        eprintln!(
            "health restart {n}: started again {waited} ms after it stopped (backoff {want} ms)"
        );
        assert!(waited >= want, "restart {n} after {waited} ms\n{log}");
    }
    assert!(
        stops[2].contains("because its health checks failed; giving up"),
        "{log}"
    );
    assert_eq!(
        o.log_count("x[0]: 1 consecutive health probe failure(s)"),
        3
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn health_probes_of_a_ready_log_pool_begin_once_it_is_ready() {
    let dir = TempDir::new("rp-log");
    // It reads nothing for its first second: a probe sent before it is ready would
    // time out and restart it (failures = 1).
    let cfg = dir.write(
        "orchd.toml",
        r#"
[pool.w]
command = 'sleep 1; echo listening >&2; while IFS= read -r l; do case $l in PING) echo PONG ;; *) echo "echo:$l" ;; esac; done'
ready = { log = "^listening", timeout = "30s" }
health = { send = "PING", expect = "^PONG$", every = "100ms", timeout = "200ms", failures = 1 }

[[route]]
from = "unix:w.sock"
to = "w"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("w[0] ready after", 1);
    o.wait_log("w[0]: first health probe passed", 1);
    let mut c = Client::connect(&dir.join("w.sock"));
    assert_eq!(c.request("hello"), "echo:hello");
    assert_eq!(o.log_count("health probe failed"), 0, "{}", o.log());
    assert_eq!(started(&o, "w[0]").len(), 1, "{}", o.log());
    assert_eq!(o.stop(), 0);
}
