//! Issue 12 hardening of reload and of socket creation: undoing a broken edit, a
//! control socket that cannot be opened, socket modes under `umask 000`, and a config
//! directory that is deleted and re-created.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

/// Permission bits of a path itself (a symlink is not followed).
fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
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

fn ctl_config(control: &str, count: u32, extra: &str) -> String {
    format!(
        "[orchd]\ncontrol = \"{control}\"\n[pool.p]\ncommand = [\"cat\"]\ncount = {count}\n[[route]]\nfrom = \"unix:s.sock\"\nto = \"p\"\n{extra}"
    )
}

/// Defect 7: a reload whose new control socket cannot be opened fails as a whole;
/// the old control socket keeps answering and nothing else changes.
#[test]
fn unopenable_control_socket_fails_the_reload_and_keeps_the_old_one() {
    let dir = TempDir::new("hr-ctl");
    let cfg = dir.write("pool.toml", &ctl_config("ctl.sock", 1, ""));
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let before = pids(&cfg, "p");
    let ctl = dir.join("ctl.sock");
    dir.write("plain-file", "not a socket\n");
    let extra_route = "[[route]]\nfrom = \"unix:new.sock\"\nto = \"p\"\n";
    for (n, bad) in ["plain-file", "no-such-dir/ctl.sock"].iter().enumerate() {
        // Also a count change and a new listener: none of it may happen.
        dir.write("pool.toml", &ctl_config(bad, 2, extra_route));
        o.signal(libc::SIGHUP);
        o.wait_log("reload (SIGHUP) failed", n + 1);
        let st = control(&ctl, "status");
        assert_eq!(st["ok"], true, "old control socket lost");
        assert!(ctl.exists());
        assert!(!dir.join("new.sock").exists(), "new listener left open");
        assert_eq!(
            pids_in(&st, "p"),
            before,
            "the failed reload changed pool p"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("plain-file")).unwrap(),
            "not a socket\n"
        );
    }
    // The same through the control socket's own `reload`.
    let v = control(&ctl, "reload");
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no-such-dir"), "{v}");
    assert_eq!(control(&ctl, "status")["ok"], true);
    // A control path that works moves the socket.
    dir.write("pool.toml", &ctl_config("ctl2.sock", 1, ""));
    let v = control(&ctl, "reload");
    assert_eq!(v["ok"], true, "{v}");
    assert!(!ctl.exists(), "old control socket left behind");
    let st = control(&dir.join("ctl2.sock"), "status");
    assert_eq!(st["ok"], true);
    assert_eq!(pids_in(&st, "p"), before);
    assert_eq!(o.stop(), 0);
    assert!(!dir.join("ctl2.sock").exists());
}

/// Directory events (IN_CREATE, IN_ATTRIB) seen by an inotify watch.
struct DirWatch(i32);

impl DirWatch {
    fn new(dir: &Path) -> DirWatch {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls on a fresh fd and a valid C string.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1");
            let wd = libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_CREATE | libc::IN_ATTRIB);
            assert!(wd >= 0, "inotify_add_watch");
            DirWatch(fd)
        }
    }

    /// (mask, name) of every event so far.
    fn events(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
                let name = &buf[off + 16..off + 16 + len];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_string();
                out.push((mask, name));
                off += 16 + len;
            }
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // SAFETY: closing the fd we opened.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// Defect 10: under `umask 000` the sockets get exactly their configured modes, set when
/// the file is created and never changed afterwards (no chmod by path: the file is never
/// wider for an instant, and a symlink swapped in cannot redirect a chmod).
#[test]
fn sockets_are_created_with_their_final_mode_under_umask_000() {
    let dir = TempDir::new("hr-umask");
    let cfg = dir.write(
        "pool.toml",
        "[orchd]\ncontrol = \"ctl.sock\"\n[pool.p]\ncommand = [\"cat\"]\n[[route]]\nfrom = \"unix:a.sock\"\nto = \"p\"\n[[route]]\nfrom = \"unix:b.sock\"\nmode = \"0640\"\nto = \"p\"\n",
    );
    let watch = DirWatch::new(dir.path());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" --no-watch \"$1\"")
        .arg(BIN)
        .arg(&cfg)
        .stdin(Stdio::null());
    let mut o = Orchd::spawn(cmd, &cfg);
    o.wait_ready();
    assert_eq!(mode_of(&dir.join("ctl.sock")), 0o600, "control socket");
    assert_eq!(mode_of(&dir.join("a.sock")), 0o660, "default route mode");
    assert_eq!(mode_of(&dir.join("b.sock")), 0o640, "configured route mode");
    let events = watch.events();
    for name in ["ctl.sock", "a.sock", "b.sock"] {
        assert!(
            events
                .iter()
                .any(|(m, n)| n == name && m & libc::IN_CREATE != 0),
            "{name} not created? {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|(m, n)| n == name && m & libc::IN_ATTRIB != 0),
            "{name} had its mode changed after it was created: {events:?}"
        );
    }
    // A worker still gets orchd's own umask (000 here), not the one used for binding.
    let pid = pids(&cfg, "p")[&0];
    let umask = proc_status(pid as u32, "Umask");
    assert_eq!(umask.as_deref(), Some("0000"));
    assert_eq!(o.stop(), 0);
}

/// Defect 10: a symlink at the socket path is neither followed nor replaced.
#[test]
fn symlink_at_the_control_path_is_not_followed() {
    let dir = TempDir::new("hr-symlink");
    let target = dir.write("target", "secret\n");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("ctl.sock")).unwrap();
    let cfg = dir.write(
        "pool.toml",
        "[orchd]\ncontrol = \"ctl.sock\"\n[pool.p]\ncommand = [\"cat\"]\n",
    );
    let mut o = Orchd::start(&cfg);
    assert_eq!(o.wait_exit(DEADLINE), 1, "{}", o.log());
    assert!(o.log().contains("not a socket"), "{}", o.log());
    assert_eq!(mode_of(&target), 0o644, "the symlink's target was chmodded");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");
    assert!(std::fs::symlink_metadata(dir.join("ctl.sock"))
        .unwrap()
        .file_type()
        .is_symlink());
}

fn watched_config(count: u32) -> String {
    format!(
        "[orchd]\ncontrol = \"../ctl.sock\"\n[pool.p]\ncommand = [\"cat\"]\ncount = {count}\n[[route]]\nfrom = \"unix:../s.sock\"\nto = \"p\"\n"
    )
}

/// Defect 11: the config directory is deleted and re-created (slowly, then at once):
/// the watch re-attaches and the new config is loaded.
#[test]
fn deleted_and_recreated_config_directory_is_watched_again() {
    let dir = TempDir::new("hr-watchdir");
    let conf = dir.join("conf");
    std::fs::create_dir(&conf).unwrap();
    let cfg = conf.join("pool.toml");
    std::fs::write(&cfg, watched_config(1)).unwrap();
    let mut o = Orchd::start_with(&cfg, &[], Stdio::null());
    o.wait_ready();
    o.wait_log("watching ", 1);

    // Gone for a while: orchd notices, then sees it come back.
    std::fs::remove_dir_all(&conf).unwrap();
    o.wait_log("is gone; watching ", 1);
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(&cfg, watched_config(2)).unwrap();
    o.wait_log(" again", 1);
    o.wait_log("reload: ~p count 1→2", 1);
    wait_for("2 instances", DEADLINE, || {
        (pids(&cfg, "p").len() == 2).then_some(())
    });

    // Deleted and re-created before orchd looks: a new directory all the same.
    std::fs::remove_dir_all(&conf).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(&cfg, watched_config(3)).unwrap();
    o.wait_log("reload: ~p count 2→3", 1);
    // Still watched after that: a plain edit reloads.
    std::fs::write(&cfg, watched_config(1)).unwrap();
    o.wait_log("reload: ~p count 3→1", 1);
    assert_eq!(o.stop(), 0);
}
