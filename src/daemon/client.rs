//! The client side of the control socket: `orchd ctl` (and its shorthands `orchd
//! --status`, `orchd --plan`). It reads CONFIG only to find its `control` socket,
//! sends one command, and prints the answer. Exit status (SPEC 9): 0 done, 1 failed
//! (no orchd answering, or its one-line reason); usage errors (2) are caught before.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{cli, config};

/// The control socket of CONFIG. A config being edited may be invalid while orchd
/// still runs the previous one: then only `[orchd] control` is read.
fn control_path(config: &Path) -> Result<PathBuf, String> {
    let control = match config::load(config) {
        Ok(c) => c.settings.control,
        Err(e) => Some(lenient_control(config).ok_or_else(|| format!("{e}"))?),
    };
    control.ok_or_else(|| {
        format!(
            "{} has no control socket: set `control = \"orchd.sock\"` in [orchd]",
            config.display()
        )
    })
}

fn lenient_control(config: &Path) -> Option<PathBuf> {
    let bytes = config::read_file(config).ok()?;
    let table: toml::Table = toml::from_str(std::str::from_utf8(&bytes).ok()?).ok()?;
    let control = table.get("orchd")?.get("control")?.as_str()?;
    let dir = config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(dir.join(control))
}

fn connect(config: &Path) -> Result<UnixStream, String> {
    let path = control_path(config)?;
    UnixStream::connect(&path).map_err(|e| {
        format!(
            "no orchd is answering for {} (control socket {}: {e})",
            config.display(),
            path.display()
        )
    })
}

/// Send one command and read the one-line JSON answer.
fn ask(config: &Path, command: &str) -> Result<Value, String> {
    ask_within(config, command, Duration::from_secs(30))
}

/// Send one command and wait up to `timeout` (zero: no limit) for its answer.
fn ask_within(config: &Path, command: &str, timeout: Duration) -> Result<Value, String> {
    let mut s = connect(config)?;
    let _ = s.set_read_timeout((!timeout.is_zero()).then_some(timeout));
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("control socket: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "no answer within {} (--timeout); orchd goes on with it",
                humantime::format_duration(timeout)
            ),
            _ => format!("control socket: {e}"),
        })?;
    if line.is_empty() {
        return Err("control socket: orchd closed the connection without an answer".into());
    }
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("control socket: bad answer: {e}"))?;
    if v["ok"] == Value::Bool(false) {
        return Err(v["error"].as_str().unwrap_or("failed").to_string());
    }
    Ok(v)
}

fn out(s: &str) -> u8 {
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

pub fn status(config: &Path, json: bool) -> u8 {
    match ask(config, "status") {
        Ok(v) if json => out(&format!("{v}\n")),
        Ok(v) => out(&status_table(&v)),
        Err(e) => {
            eprintln!("orchd: {e}");
            1
        }
    }
}

/// `orchd ctl CONFIG VERB ...`: the answer's summary on stdout, or the reason on
/// stderr and exit 1.
pub fn ctl(config: &Path, ctl: &cli::Ctl) -> u8 {
    let timeout = ctl.timeout.unwrap_or_else(|| ctl.verb.default_timeout());
    let command = match &ctl.verb {
        cli::CtlVerb::Status { json } => return status(config, *json),
        cli::CtlVerb::Plan { file } => return plan(config, file.as_deref()),
        cli::CtlVerb::Logs { follow, json, .. } => {
            let command = ctl.verb.command().unwrap_or_default();
            let timeout = ctl.timeout.unwrap_or(Duration::from_secs(30));
            return logs(config, &command, *follow, *json, timeout);
        }
        verb => verb.command().unwrap_or_default(),
    };
    match ask_within(config, &command, timeout) {
        Ok(v) => out(&format!("{}\n", v["summary"].as_str().unwrap_or("done"))),
        Err(e) => {
            eprintln!("orchd: {e}");
            1
        }
    }
}

/// What reloading `file` (default: CONFIG) would change. A relative FILE is
/// resolved here, against the client's directory.
pub fn plan(config: &Path, file: Option<&Path>) -> u8 {
    let file = file.unwrap_or(config);
    let abs = std::fs::canonicalize(file).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(file))
            .unwrap_or_else(|_| file.to_path_buf())
    });
    match ask(config, &format!("plan {}", abs.display())) {
        Ok(v) => out(v["plan"].as_str().unwrap_or("")),
        Err(e) => {
            eprintln!("orchd: {e}");
            1
        }
    }
}

/// `orchd ctl CONFIG logs [TARGET...] [-f] [-n N] [--json]`: print the recent lines of
/// those instances as `TIMESTAMP INSTANCE: LINE` (orchd's own lines about them as
/// `TIMESTAMP orchd: LINE`), or the raw JSON lines with `--json`; with `-f`, keep
/// printing new lines until orchd goes away or the reader does. `command` was checked
/// by the argument parser. Exit 0; 1 for an unknown pool or index or no orchd
/// answering.
pub fn logs(config: &Path, command: &str, follow: bool, json: bool, timeout: Duration) -> u8 {
    let stream = match connect(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orchd: {e}");
            return 1;
        }
    };
    if !follow && !timeout.is_zero() {
        let _ = stream.set_read_timeout(Some(timeout));
    }
    // A follower keeps its write side open: orchd takes EOF as the reader leaving.
    if let Err(e) = (&stream).write_all(format!("{}\n", command.trim()).as_bytes()) {
        eprintln!("orchd: control socket: {e}");
        return 1;
    }
    let mut o = std::io::stdout().lock();
    for line in BufReader::new(&stream).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("orchd: control socket: {e}");
                return 1;
            }
        };
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("orchd: control socket: bad answer: {e}");
                return 1;
            }
        };
        if v["ok"] == Value::Bool(false) {
            eprintln!("orchd: {}", v["error"].as_str().unwrap_or("failed"));
            return 1;
        }
        if v["end"] == Value::Bool(true) {
            return 0;
        }
        let text = if json {
            format!("{line}\n")
        } else {
            log_line_text(&v)
        };
        match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
            Ok(()) => {}
            // `logs -f | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return 0,
            Err(_) => return 1,
        }
    }
    if follow {
        // orchd went away (shut down, or restarted).
        eprintln!("orchd: control socket closed");
    } else {
        eprintln!("orchd: control socket closed before the end of the answer");
    }
    1
}

/// One `logs` JSON line as text: `TS web[0]: LINE`, `TS orchd: web[0] started ...`,
/// or the dropped-lines marker.
fn log_line_text(v: &Value) -> String {
    if let Some(n) = v["dropped"].as_u64() {
        return format!("... {n} line(s) dropped: reading too slowly\n");
    }
    let s = |k: &str| v[k].as_str().unwrap_or("");
    let who = if s("stream") == "orchd" {
        "orchd"
    } else {
        s("instance")
    };
    format!("{} {who}: {}\n", s("ts"), s("line"))
}

fn fmt_ms(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => humantime::format_duration(Duration::from_secs(ms / 1000)).to_string(),
        None => "-".into(),
    }
}

/// CPU time as the table shows it: `0.42s`, `1m02s`, `3h05m`.
fn fmt_cpu(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    if s < 60.0 {
        return format!("{s:.2}s");
    }
    let whole = s as u64;
    if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, whole / 60 % 60)
    }
}

/// Resident memory as the table shows it: `812K`, `3.9M`, `120M`, `1.5G`.
fn fmt_rss(bytes: Option<u64>) -> String {
    const K: f64 = 1024.0;
    let Some(b) = bytes else {
        return "-".into();
    };
    let b = b as f64;
    if b < K * K {
        format!("{:.0}K", b / K)
    } else if b < 10.0 * K * K {
        format!("{:.1}M", b / (K * K))
    } else if b < K * K * K {
        format!("{:.0}M", b / (K * K))
    } else {
        format!("{:.1}G", b / (K * K * K))
    }
}

/// Columns of the `--status` table (SPEC 7).
const COLUMNS: usize = 11;

/// The `--status` table: pool, instance, pid, state, uptime, restarts, in flight,
/// answered, CPU, RSS, last exit.
pub fn status_table(v: &Value) -> String {
    let mut rows = vec![[
        "POOL",
        "INSTANCE",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "IN FLIGHT",
        "ANSWERED",
        "CPU",
        "RSS",
        "LAST EXIT",
    ]
    .map(String::from)];
    for p in v["pools"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        let insts = p["instances"].as_array().cloned().unwrap_or_default();
        if insts.is_empty() {
            let mut row = ["-"; COLUMNS].map(String::from);
            row[0] = name.to_string();
            rows.push(row);
        }
        for i in insts {
            let mut state = i["state"].as_str().unwrap_or("?").to_string();
            if i["retiring"] == Value::Bool(true) {
                state.push_str(" (retiring)");
            }
            if i["replacement"] == Value::Bool(true) {
                state.push_str(" (replacement)");
            }
            if let Some(reason) = i["reason"].as_str() {
                state.push_str(&format!(" ({reason})"));
            }
            rows.push([
                name.to_string(),
                i["index"].to_string(),
                i["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or("-".into()),
                state,
                fmt_ms(i["uptime_ms"].as_u64()),
                i["restarts"].to_string(),
                i["inflight"].to_string(),
                i["answered"].to_string(),
                fmt_cpu(i["cpu_seconds"].as_f64()),
                fmt_rss(i["rss_bytes"].as_u64()),
                i["last_exit"].as_str().unwrap_or("-").to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..COLUMNS)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_column() {
        let v = serde_json::json!({"pools": [{"name": "up", "instances": [
            {"index": 0, "pid": 42, "state": "running", "retiring": false, "uptime_ms": 61000,
             "restarts": 2, "inflight": 1, "answered": 9, "cpu_seconds": 0.42,
             "rss_bytes": 4089446, "last_exit": "status 1"},
            {"index": 1, "pid": null, "state": "backoff", "retiring": false, "uptime_ms": null,
             "restarts": 3, "inflight": 0, "answered": 0, "cpu_seconds": null,
             "rss_bytes": null,
             "last_exit": "spawn: No such file or directory (os error 2)"}]}]});
        let t = status_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(t.starts_with("POOL  INSTANCE  PID  STATE"), "{t}");
        assert!(
            lines[0].ends_with("ANSWERED  CPU    RSS   LAST EXIT"),
            "{t}"
        );
        assert!(t.contains("up    0         42   running  1m 1s"), "{t}");
        assert!(lines[1].ends_with("9         0.42s  3.9M  status 1"), "{t}");
        assert!(
            lines[2]
                .ends_with("0         -      -     spawn: No such file or directory (os error 2)"),
            "{t}"
        );
    }

    #[test]
    fn cpu_and_rss_read_like_top() {
        assert_eq!(fmt_cpu(Some(0.0)), "0.00s");
        assert_eq!(fmt_cpu(Some(0.42)), "0.42s");
        assert_eq!(fmt_cpu(Some(59.994)), "59.99s");
        assert_eq!(fmt_cpu(Some(62.3)), "1m02s");
        assert_eq!(fmt_cpu(Some(3725.0)), "1h02m");
        assert_eq!(fmt_cpu(None), "-");
        assert_eq!(fmt_rss(Some(831_488)), "812K");
        assert_eq!(fmt_rss(Some(4_089_446)), "3.9M");
        assert_eq!(fmt_rss(Some(125_829_120)), "120M");
        assert_eq!(fmt_rss(Some(1_610_612_736)), "1.5G");
        assert_eq!(fmt_rss(None), "-");
    }
}
