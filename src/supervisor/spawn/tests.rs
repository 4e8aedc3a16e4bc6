//! The `clone` spawn against std's `Command` (`fork.rs`, what orchd used before and
//! still uses outside Linux): the same launch must give the process the same start,
//! and fail with the same errors.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::*;

type Start = fn(&Launch, [OwnedFd; 3], Option<(BorrowedFd<'_>, RawFd)>) -> io::Result<u32>;

/// The clone spawn as it runs where the fd slots cannot be used.
fn clone_copying_fds(
    launch: &Launch,
    stdio: [OwnedFd; 3],
    extra: Option<(BorrowedFd<'_>, RawFd)>,
) -> io::Result<u32> {
    vfork::start_with(launch, stdio, extra, vfork::FdTable::Copy)
}

/// The clone spawn where the child cannot unshare the fd table it shares (a kernel
/// without `close_range`, a seccomp filter): it is started again, copying it.
fn clone_failing_to_unshare(
    launch: &Launch,
    stdio: [OwnedFd; 3],
    extra: Option<(BorrowedFd<'_>, RawFd)>,
) -> io::Result<u32> {
    vfork::start_with(launch, stdio, extra, vfork::FdTable::ShareFailing)
}

const STARTS: [(&str, Start); 4] = [
    ("clone", vfork::start),
    ("clone, fds copied", clone_copying_fds),
    ("clone, unshare failing", clone_failing_to_unshare),
    ("fork", fork::start),
];

fn launch<'a>(argv: &'a [String], cwd: &'a Path) -> Launch<'a> {
    Launch {
        program: argv[0].clone().into(),
        args: &argv[1..],
        cwd,
        env: Vec::new(),
        creds: Credentials::default(),
    }
}

fn proc_field(pid: u32, file: &str, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/{file}"))
        .trim()
        .to_string()
}

fn wait_exit(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on a child this test started, writing into a local.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    assert_eq!(r, pid as libc::pid_t, "waitpid");
    status
}

/// What a process started by `start` finds, as it shows it and as /proc shows it.
#[derive(Debug, PartialEq)]
struct Seen {
    stdout: String,
    stderr: String,
    channel: String,
    status: i32,
    own_group: bool,
    blocked: String,
    sigpipe_ignored: bool,
    fds: Vec<String>,
}

fn observe(start: Start) -> Seen {
    let script = "read line; echo \"$line A=$A B=${B-unset} C=${C-unset} $(pwd)\"; \
                  echo err >&2; echo channel >&3";
    let argv = ["sh".to_string(), "-c".into(), script.into()];
    let mut l = launch(&argv, Path::new("/"));
    // Found through the PATH the process gets, not orchd's.
    l.env
        .push(("PATH".into(), Some("/no/such/dir:/bin:/usr/bin".into())));
    l.env.push(("A".into(), Some("1".into())));
    l.env.push(("B".into(), Some("2".into())));
    l.env.push(("B".into(), None));
    l.env.push(("C".into(), None));
    l.env.push(("C".into(), Some("3".into())));
    let (stdin_child, stdin) = std::io::pipe().unwrap();
    let (mut stdout, stdout_child) = std::io::pipe().unwrap();
    let (mut stderr, stderr_child) = std::io::pipe().unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let pid = start(
        &l,
        [stdin_child.into(), stdout_child.into(), stderr_child.into()],
        Some((theirs.as_fd(), 3)),
    )
    .unwrap();
    drop(theirs);
    // It waits for its stdin: look at it meanwhile.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ignored = u64::from_str_radix(&proc_field(pid, "status", "SigIgn:"), 16).unwrap();
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // From 10 up: dash's own (it keeps a copy of a redirected fd on 10), and
        // fds the test process holds without close-on-exec (cargo's jobserver,
        // another test's for a moment), which the child sharing the fd table drops
        // (orchd has none: it marks inherited fds close-on-exec at start-up).
        .filter(|fd| fd.parse::<u32>().is_ok_and(|n| n < 10))
        .collect();
    fds.sort();
    let mut seen = Seen {
        stdout: String::new(),
        stderr: String::new(),
        channel: String::new(),
        status: 0,
        own_group: fields[2] == pid.to_string(),
        blocked: proc_field(pid, "status", "SigBlk:"),
        sigpipe_ignored: ignored & (1 << (libc::SIGPIPE - 1)) != 0,
        fds,
    };
    let mut stdin = stdin;
    stdin.write_all(b"hello\n").unwrap();
    drop(stdin);
    stdout.read_to_string(&mut seen.stdout).unwrap();
    stderr.read_to_string(&mut seen.stderr).unwrap();
    ours.read_to_string(&mut seen.channel).unwrap();
    seen.status = wait_exit(pid);
    seen
}

#[test]
fn a_process_starts_as_std_command_would_start_it() {
    let [clone, copying, retried, fork] = STARTS.map(|(_, start)| observe(start));
    assert_eq!(clone, fork);
    assert_eq!(copying, fork);
    assert_eq!(retried, fork);
    assert_eq!(clone.stdout, "hello A=1 B=unset C=3 /\n");
    assert_eq!(clone.stderr, "err\n");
    assert_eq!(clone.channel, "channel\n");
    assert_eq!(clone.status, 0);
    assert!(clone.own_group);
    assert_eq!(clone.blocked, "0000000000000000");
    assert!(!clone.sigpipe_ignored, "Rust programs ignore SIGPIPE");
    assert_eq!(clone.fds, ["0", "1", "2", "3"]);
}

fn null_stdio() -> [OwnedFd; 3] {
    [
        dev_null(false).unwrap(),
        dev_null(true).unwrap(),
        dev_null(true).unwrap(),
    ]
}

#[test]
fn a_process_that_cannot_start_fails_with_the_same_error() {
    let dir = std::env::temp_dir().join(format!("orchd-spawn-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        (vec!["no-such-program-orchd".to_string()], "/", libc::ENOENT),
        (
            vec![plain.to_string_lossy().into_owned()],
            "/",
            libc::EACCES,
        ),
        (vec!["true".to_string()], "/no/such/dir", libc::ENOENT),
        (vec![String::new()], "/", libc::ENOENT),
    ];
    for (argv, cwd, errno) in &cases {
        let l = launch(argv, Path::new(cwd));
        for (name, start) in STARTS {
            let e = start(&l, null_stdio(), None).expect_err(name);
            assert_eq!(e.raw_os_error(), Some(*errno), "{name}: {argv:?} in {cwd}");
        }
    }
    let l = launch(&cases[0].0, Path::new("/"));
    let e = vfork::start(&l, null_stdio(), None).unwrap_err();
    assert_eq!(e.to_string(), "No such file or directory (os error 2)");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_fd_slots_hold_dev_null_between_starts() {
    let argv = ["true".to_string()];
    let l = launch(&argv, Path::new("/"));
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let pid = vfork::start(&l, null_stdio(), Some((theirs.as_fd(), 3))).unwrap();
    assert_eq!(wait_exit(pid), 0);
    let slots = vfork::slot_fds();
    assert_eq!(slots.len(), 4);
    for fd in slots {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "slot {fd}");
    }
}
