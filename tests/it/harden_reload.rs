//! Issue 12 hardening of reload and of socket creation: undoing a broken edit, a
//! control socket that cannot be opened, socket modes under `umask 000`, and a config
//! directory that is deleted and re-created.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

/// `orchd --status CONFIG --json`, parsed.
fn status(cfg: &Path) -> serde_json::Value {
    let (code, out, err) = run_orchd(&["--status", cfg.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "--status failed: {err}");
    serde_json::from_str(&out).expect("status JSON")
}

/// Every instance of `pool` in the status: slots, retiring ones and replacements.
fn instances(cfg: &Path, pool: &str) -> Vec<serde_json::Value> {
    status(cfg)["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["instances"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// index → pid of the running slot instances of `pool`.
fn pids(cfg: &Path, pool: &str) -> BTreeMap<u64, u64> {
    instances(cfg, pool)
        .iter()
        .filter(|i| i["retiring"] == false && i["replacement"] == false && i["pid"].is_u64())
        .map(|i| (i["index"].as_u64().unwrap(), i["pid"].as_u64().unwrap()))
        .collect()
}

/// Defect 6: a rolling replacement to a command that cannot start never takes a slot;
/// putting the original command back must leave the instances that ran it all along
/// alone (same pids, nothing started) and only cancel the pending replacement.
#[test]
fn undoing_a_broken_command_keeps_the_healthy_instances() {
    let dir = TempDir::new("hr-undo");
    let conf = |cmd: &str| {
        format!(
            "[orchd]\ncontrol = \"ctl.sock\"\n[pool.p]\ncommand = {cmd}\ncount = 2\nbackoff = {{ initial = \"50ms\", max = \"200ms\" }}\n[[route]]\nfrom = \"unix:s.sock\"\nto = \"p\"\n"
        )
    };
    let good = conf("[\"cat\"]");
    let cfg = dir.write("pool.toml", &good);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let before = wait_for("2 running instances", DEADLINE, || {
        let p = pids(&cfg, "p");
        (p.len() == 2).then_some(p)
    });
    let mut c = Client::connect(&dir.join("s.sock"));
    assert_eq!(c.request("a"), "a");

    dir.write("pool.toml", &conf("[\"/nonexistent\"]"));
    o.signal(libc::SIGHUP);
    // The replacement for index 0 fails to start, more than once.
    o.wait_log("failed to start", 2);
    assert_eq!(pids(&cfg, "p"), before, "old instances keep their slots");
    assert_eq!(c.request("b"), "b");
    let started = o.log_count(" started (pid");
    assert_eq!(started, 2, "{}", o.log());

    // Put the original back: the plan touches no instance of p.
    dir.write("pool.toml", &good);
    let (code, plan, err) = run_orchd(&["--plan", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let line = plan
        .lines()
        .find(|l| l.contains("pool p"))
        .unwrap_or_else(|| panic!("no line for pool p in the plan:\n{plan}"));
    assert!(
        !line.contains("process changed") && !line.contains("replace 2"),
        "the plan replaces healthy instances: {line}"
    );
    assert!(line.contains("already run this spec and stay"), "{line}");

    o.signal(libc::SIGHUP);
    o.wait_log("reload: ", 2);
    assert_eq!(
        o.log_count(" started (pid"),
        started,
        "the undo started a process:\n{}",
        o.log()
    );
    o.wait_log("pending replacement cancelled", 1);
    // The cancelled replacement is gone; the healthy instances are the same.
    wait_for("the cancelled replacement to go", DEADLINE, || {
        (instances(&cfg, "p").len() == 2).then_some(())
    });
    assert_eq!(pids(&cfg, "p"), before);
    assert_eq!(c.request("c"), "c");
    // No late promotion or restart either (a replacement is promoted after 1 s).
    let failures = o.log_count("failed to start");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(pids(&cfg, "p"), before);
    assert_eq!(o.log_count(" started (pid"), started, "{}", o.log());
    assert_eq!(o.log_count("failed to start"), failures, "{}", o.log());
    assert_eq!(c.request("d"), "d");
    assert_eq!(o.stop(), 0);
}
