//! How a worker is started (issue 8: a `clone(CLONE_VM | CLONE_VFORK)` spawn in
//! place of std's fork-based `Command`): what the worker finds at its start is what
//! std's `Command` and glibc's `execvp` gave it.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;

fn executable(dir: &TempDir, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.write(name, body);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_worker_starts_as_execvp_would_start_it() {
    let dir = TempDir::new("spawn-start");
    // Found through the PATH of the pool's `env`, a script without `#!` (the shell
    // runs it, as execvp does), in the pool's cwd, with its own process group.
    std::fs::create_dir(dir.join("bin")).unwrap();
    executable(
        &dir,
        "bin/noshebang",
        "echo \"cwd=$(pwd) pool=$ORCHD_POOL i=$ORCHD_INSTANCE\" > out.txt\nexec sleep 1000\n",
    );
    let cfg = dir.write(
        "pool.toml",
        &format!(
            "[pool.w]\ncommand = [\"noshebang\"]\ncwd = \"{d}\"\nenv = {{ PATH = \"{d}/bin:/usr/bin:/bin\" }}\n",
            d = dir.path().display()
        ),
    );
    let mut o = Orchd::start(&cfg);
    let pid = wait_started(&o, "w[0]", 1)[0];
    let out = wait_for("the worker's output", DEADLINE, || {
        std::fs::read_to_string(dir.join("out.txt"))
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    assert_eq!(
        out.trim(),
        format!("cwd={} pool=w i=0", dir.path().display())
    );
    // Its own process group; no signal blocked; SIGPIPE not ignored (orchd, a Rust
    // program, ignores it); the parent-death signal set.
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = status
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(fields[2], pid.to_string(), "pgrp of {pid}");
    assert_eq!(proc_status(pid, "SigBlk").unwrap(), "0000000000000000");
    let ignored = u64::from_str_radix(&proc_status(pid, "SigIgn").unwrap(), 16).unwrap();
    assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE ignored");
    assert_eq!(o.stop(), 0);
}

#[test]
fn a_program_that_cannot_run_is_a_failed_start_with_its_reason() {
    let dir = TempDir::new("spawn-fail");
    executable(&dir, "notexec.sh", "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(
        dir.join("notexec.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let cfg = dir.write(
        "pool.toml",
        &format!(
            r#"
[pool.missing]
command = ["no-such-program-orchd"]
backoff = {{ initial = "10s" }}

[pool.denied]
command = ["./notexec.sh"]
cwd = "{d}"
backoff = {{ initial = "10s" }}

[pool.nocwd]
command = ["sleep", "1000"]
cwd = "{d}/gone"
backoff = {{ initial = "10s" }}
"#,
            d = dir.path().display()
        ),
    );
    let mut o = Orchd::start(&cfg);
    o.wait_log("failed to start", 3);
    let log = o.log();
    let failed = |label: &str, why: &str| {
        log.lines()
            .any(|l| l.contains(&format!("{label} failed to start")) && l.contains(why))
    };
    assert!(
        failed("missing[0]", "No such file or directory (os error 2)"),
        "{log}"
    );
    assert!(
        failed("denied[0]", "Permission denied (os error 13)"),
        "{log}"
    );
    assert!(
        failed("nocwd[0]", "No such file or directory (os error 2)"),
        "{log}"
    );
    assert_eq!(o.stop(), 0);
}
