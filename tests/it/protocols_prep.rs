//! Worker protocols (SPEC 12), before the event loop speaks them (issue 11): the
//! shipped examples against their own parents, and orchd's codecs
//! (`orchd::protocol`) against real workers, with the test as the parent. The tests
//! that need `node` or `python3` are skipped (with a note) where it is missing.

use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchd::protocol::node::{self, Incoming};
use orchd::protocol::tagged::{self, InFlight};
use orchd::protocol::REPLY_HAS_NEWLINE;

use crate::common::*;

pub(crate) fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

pub(crate) fn have(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: {program} not found");
    }
    found
}

/// Waits for `child` to exit within `timeout`; kills it and fails otherwise.
fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn node_fork_worker_answers_under_its_own_fork_parent() {
    if !have("node") {
        return;
    }
    let mut parent = Command::new("node")
        .arg(example("node-fork/parent.js"))
        .args(["one", "two", "three", "quote \" and é"])
        .env("WORKERS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let status = wait_exit(&mut parent, DEADLINE, "node parent.js");
    let mut out = String::new();
    let mut err = String::new();
    parent
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    parent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}\n{out}\n{err}");
    // Round-robin over 2 workers, each message answered once by the worker it went to.
    for (n, m) in [(1, "one"), (2, "two"), (1, "three"), (2, "quote \" and é")] {
        let want = format!("Received response from child process {n}: Processed message: {m}");
        assert_eq!(
            out.lines().filter(|l| *l == want).count(),
            1,
            "{want:?} in:\n{out}"
        );
        // The worker's console.log goes to the inherited stdout.
        assert!(out.contains(&format!("Received message: {m}")), "{out}");
    }
    assert!(err.is_empty(), "{err}");
}

/// A Node worker with the test as its fork() parent, set up as orchd will: one end
/// of a socket pair on fd 3 (`sys::child_install_fd`), [`node::CHANNEL_ENV`], stdin
/// `/dev/null`.
struct NodeWorker {
    child: Child,
    channel: BufReader<UnixStream>,
}

impl NodeWorker {
    fn spawn(script: &Path) -> NodeWorker {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .envs(node::CHANNEL_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: child_install_fd is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(move || orchd::sys::child_install_fd(fd, node::CHANNEL_FD));
        }
        let child = cmd.spawn().expect("spawn node");
        // The worker's exit must show as EOF on our end: drop our copy of theirs.
        drop(theirs);
        ours.set_read_timeout(Some(DEADLINE)).unwrap();
        NodeWorker {
            child,
            channel: BufReader::new(ours),
        }
    }

    fn send(&mut self, message: &[u8]) {
        let mut out = Vec::new();
        node::encode_message(&mut out, message).expect("UTF-8 message");
        self.channel
            .get_mut()
            .write_all(&out)
            .expect("write to the channel");
    }

    fn next(&mut self) -> Incoming {
        node::decode_reply(&recv_bytes(&mut self.channel))
    }

    /// Closes the channel as orchd's stop sequence does; the worker must exit 0.
    fn disconnect(mut self) -> String {
        self.channel
            .get_ref()
            .shutdown(std::net::Shutdown::Both)
            .unwrap();
        let status = wait_exit(&mut self.child, DEADLINE, "node worker after disconnect");
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(status.success(), "{status}\n{out}");
        out
    }
}

#[test]
fn node_fork_worker_runs_unchanged_with_orchds_codec_as_its_parent() {
    if !have("node") {
        return;
    }
    let mut w = NodeWorker::spawn(&example("node-fork/worker.js"));
    let messages: [&str; 4] = [
        "Hello from parent process 1",
        "",
        "a \"quoted\" \\ é 😀",
        "tab\there",
    ];
    // All in one write, as orchd writes a batch: Node splits the lines.
    for m in messages {
        w.send(m.as_bytes());
    }
    for m in messages {
        let want = format!("Processed message: {m}").into_bytes();
        assert_eq!(w.next(), Incoming::Reply(want));
    }
    let stdout = w.disconnect();
    assert!(
        stdout.contains("Received message: Hello from parent process 1"),
        "{stdout}"
    );
}

#[test]
fn node_replies_objects_internal_messages_and_newlines_decode_as_specified() {
    if !have("node") {
        return;
    }
    let dir = TempDir::new("node-codec");
    let script = dir.write(
        "w.js",
        r#"process.on('message', (m) => {
  if (m === 'object') process.send({ a: 1, b: [true, null, 'x y'], c: { d: 'é' } });
  else if (m === 'number') process.send(42);
  else if (m === 'internal') { process.send({ cmd: 'NODE_TEST', x: 1 }); process.send('after internal'); }
  else if (m === 'newline') process.send('two\nlines');
  else if (m === 'surrogate') process.send('a\ud800b');
  else process.send(m);
});
"#,
    );
    let mut w = NodeWorker::spawn(&script);
    for m in [
        "object",
        "number",
        "internal",
        "newline",
        "surrogate",
        "plain",
    ] {
        w.send(m.as_bytes());
    }
    assert_eq!(
        w.next(),
        Incoming::Reply(r#"{"a":1,"b":[true,null,"x y"],"c":{"d":"é"}}"#.into())
    );
    assert_eq!(w.next(), Incoming::Reply(b"42".to_vec()));
    assert_eq!(w.next(), Incoming::Internal("NODE_TEST".into()));
    assert_eq!(w.next(), Incoming::Reply(b"after internal".to_vec()));
    assert_eq!(w.next(), Incoming::ErrorReply(REPLY_HAS_NEWLINE));
    assert_eq!(w.next(), Incoming::Reply("a\u{fffd}b".into()));
    assert_eq!(w.next(), Incoming::Reply(b"plain".to_vec()));
    w.disconnect();
}

#[test]
fn tagged_example_worker_answers_every_id_once_in_any_order() {
    if !have("python3") {
        return;
    }
    let mut worker = Command::new("python3")
        .arg(example("tagged/worker.py"))
        .env("MAX_DELAY", "0.02")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3");
    let mut in_flight = InFlight::new();
    let messages: Vec<String> = (0..200).map(|i| format!("message {i} é")).collect();
    let mut out = Vec::new();
    let batch: Vec<_> = messages
        .iter()
        .map(|m| (in_flight.send(m.clone()), m.as_bytes()))
        .collect();
    tagged::encode_batch(&mut out, batch);
    let mut stdin = worker.stdin.take().unwrap();
    stdin.write_all(&out).unwrap();
    // EOF: the worker finishes what it read, then exits.
    drop(stdin);
    let mut replies = BufReader::new(worker.stdout.take().unwrap());
    let mut answered = Vec::new();
    for _ in &messages {
        let line = recv_bytes(&mut replies);
        let (tag, reply) = tagged::parse_reply(&line).expect("ID SP reply");
        let message = in_flight
            .answer(tag)
            .expect("a tag in flight, answered once");
        assert_eq!(reply, message.to_ascii_uppercase().as_bytes());
        answered.push(tag.0);
    }
    assert!(in_flight.is_empty());
    assert!(
        answered.windows(2).any(|w| w[0] > w[1]),
        "200 replies with random delays came back in order: {answered:?}"
    );
    let mut rest = Vec::new();
    replies.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "extra output: {}",
        String::from_utf8_lossy(&rest)
    );
    let status = wait_exit(&mut worker, DEADLINE, "tagged worker after EOF");
    assert!(status.success(), "{status}");
}

#[test]
fn check_shows_the_protocol_examples_with_their_channels() {
    for (file, want) in [
        (
            "node-fork/pool.toml",
            "stdin=/dev/null channel=NODE_CHANNEL_FD protocol=node",
        ),
        ("tagged.toml", "stdin=route protocol=tagged"),
    ] {
        let (code, out, err) = run_orchd(&["--check", example(file).to_str().unwrap()]);
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
}

#[test]
fn bad_protocol_is_a_config_error_with_its_location() {
    let dir = TempDir::new("protocol-error");
    let cfg = dir.write(
        "pool.toml",
        "[pool.w]\ncommand = \"cat\"\nprotocol = \"ndjson\"\n",
    );
    let (code, _, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(":3:12: pool.w.protocol: expected one of \"lines\", \"tagged\" or \"node\", found \"ndjson\""),
        "{err}"
    );
}
