//! Control socket, --status, --plan, and systemd notifications (SPEC 7).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use crate::common::*;

#[test]
fn status_table_and_json_show_every_instance() {
    let dir = TempDir::new("ctl-status");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mode = std::fs::metadata(dir.join("ctl.sock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    let c = cfg.to_str().unwrap();
    let (code, out, err) = run_orchd(&["--status", c]);
    assert_eq!(code, 0, "{err}");
    assert_status_header(&out);
    let kids = o.children();
    for pid in &kids {
        assert!(out.contains(&pid.to_string()), "pid {pid} in\n{out}");
    }
    let (code, out, _) = run_orchd(&["--status", c, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pools"][0]["name"], "web");
    assert_eq!(v["pools"][0]["instances"].as_array().unwrap().len(), 2);
    assert_eq!(v["pid"], o.pid());
    assert_eq!(o.stop(), 0);
    assert!(
        !dir.join("ctl.sock").exists(),
        "control socket removed at exit"
    );
}

#[test]
fn status_without_a_running_orchd_fails_clearly() {
    let dir = TempDir::new("ctl-none");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let (code, _, err) = run_orchd(&["--status", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no orchd is answering"), "{err}");
}

#[test]
fn plan_shows_the_diff_without_applying_it() {
    let dir = TempDir::new("ctl-plan");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let before = o.children();
    dir.write("pool.toml", &TWO_SLEEPERS.replace("count = 2", "count = 5"));
    let (code, out, err) = run_orchd(&["--plan", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("count 2→5"), "{out}");
    // A bounded window in which a (wrongly) applied plan would start instances.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(o.children().len(), 2, "plan must not apply anything");
    // The control socket's own `reload` does apply it.
    let v = control(&dir.join("ctl.sock"), "reload");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["summary"], "~web count 2→5");
    wait_for("5 instances", DEADLINE, || {
        (o.children().len() == 5).then_some(())
    });
    for pid in before {
        assert!(o.children().contains(&pid));
    }
    assert_eq!(o.stop(), 0);
}

#[test]
fn reload_command_reports_an_invalid_config() {
    let dir = TempDir::new("ctl-bad");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    dir.write(
        "pool.toml",
        &TWO_SLEEPERS.replace("count = 2", "count = -1"),
    );
    let v = control(&dir.join("ctl.sock"), "reload");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("pool.web.count"),
        "{v}"
    );
    assert_eq!(control(&dir.join("ctl.sock"), "bogus")["ok"], false);
    assert_eq!(o.children().len(), 2);
    assert_eq!(o.stop(), 0);
}

#[test]
fn stale_control_socket_is_replaced_and_live_one_is_an_error() {
    let dir = TempDir::new("ctl-stale");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    // A stale socket file: bound once, nobody listening any more.
    drop(std::os::unix::net::UnixListener::bind(dir.join("ctl.sock")).unwrap());
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    assert_eq!(control(&dir.join("ctl.sock"), "status")["ok"], true);
    // A second orchd on the same config must refuse to take the live socket.
    let mut second = Orchd::start(&cfg);
    let code = second.wait_exit(DEADLINE);
    assert_ne!(code, 0);
    assert!(
        second.log().contains("in use by a running process"),
        "{}",
        second.log()
    );
    assert_eq!(
        control(&dir.join("ctl.sock"), "status")["ok"],
        true,
        "first orchd unaffected"
    );
    assert_eq!(o.stop(), 0);
}

#[test]
fn systemd_notifications_ready_reloading_stopping() {
    let dir = TempDir::new("ctl-notify");
    let cfg = dir.write("pool.toml", TWO_SLEEPERS);
    let sock = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--no-watch")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .stdout(std::process::Stdio::null());
    let mut o = Orchd::spawn(cmd, &cfg);
    let recv = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    o.signal(libc::SIGHUP);
    assert_eq!(recv(), "RELOADING=1");
    assert_eq!(recv(), "READY=1");
    o.signal(libc::SIGTERM);
    assert_eq!(recv(), "STOPPING=1");
    assert_eq!(o.wait_exit(DEADLINE), 0, "{}", o.log());
}

#[test]
fn control_replies_larger_than_the_socket_buffer_arrive_whole() {
    let dir = TempDir::new("ctl-big");
    let cfg = dir.write(
        "pool.toml",
        &TWO_SLEEPERS.replace("count = 2", "count = 40"),
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut s = UnixStream::connect(dir.join("ctl.sock")).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // 300 status requests at once, not read until all are sent: megabytes of replies.
    s.write_all("status\n".repeat(300).as_bytes()).unwrap();
    // Not for ordering: gives orchd time to fill the socket buffer and hit WouldBlock
    // before we read (the replies must arrive whole either way).
    std::thread::sleep(Duration::from_millis(200));
    let mut n = 0;
    for line in BufReader::new(&s).lines().take(300) {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).expect("whole JSON");
        assert_eq!(v["pools"][0]["instances"].as_array().unwrap().len(), 40);
        n += 1;
    }
    assert_eq!(n, 300);
    assert_eq!(o.stop(), 0);
}
