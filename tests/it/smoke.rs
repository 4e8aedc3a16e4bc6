use crate::common::*;

#[test]
fn echo_round_trip_over_unix_socket_and_clean_shutdown() {
    let dir = TempDir::new("smoke");
    let cfg = dir.write(
        "pool.toml",
        r#"
[pool.echo]
command = "while read -r l; do echo \"got $l\"; done"
count = 2

[[route]]
from = "unix:echo.sock"
to = "echo"
"#,
    );
    let mut o = Orchd::start(&cfg);
    o.wait_ready();
    let mut c = Client::connect(&dir.join("echo.sock"));
    assert_eq!(c.request("hello"), "got hello");
    assert_eq!(c.request("world"), "got world");
    let kids = o.children();
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert_eq!(o.stop(), 0);
    for k in kids {
        assert!(!alive(k), "worker {k} outlived orchd");
    }
    assert!(!dir.join("echo.sock").exists(), "socket file left behind");
}
