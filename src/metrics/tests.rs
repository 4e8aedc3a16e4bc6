use std::time::Duration;

use super::*;

fn sample() -> Snapshot {
    let mut replies = ReplyHistogram::default();
    for ms in [0, 3, 3, 40, 2000, 60_000] {
        replies.observe(Duration::from_millis(ms));
    }
    Snapshot {
        pools: vec![
            PoolSnapshot {
                name: "upper".into(),
                instances: vec![
                    InstanceSnapshot {
                        index: 0,
                        state: "running",
                        restarts: 2,
                        exits: vec![("exit-nonzero".into(), 1), ("health".into(), 1)],
                        inflight: 3,
                        health_failures: 4,
                        cpu_seconds: 1.25,
                        rss_bytes: Some(10 << 20),
                    },
                    InstanceSnapshot {
                        index: 1,
                        state: "backoff",
                        restarts: 5,
                        ..Default::default()
                    },
                ],
                queued: 7,
                messages: vec![("answered".into(), 100), ("retries exhausted".into(), 2)],
                replies,
            },
            PoolSnapshot {
                name: "idle".into(),
                ..Default::default()
            },
        ],
        reloads_ok: 3,
        reloads_failed: 1,
    }
}

/// The lines of `text` that are samples (not comments).
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[track_caller]
fn has_samples(text: &str, lines: &[&str]) {
    let s = samples(text);
    for line in lines {
        assert!(s.contains(line), "no line {line:?} in:\n{text}");
    }
}

#[test]
fn every_series_of_the_spec_is_there() {
    let text = render(sample());
    for name in [
        "orchd_instances",
        "orchd_restarts_total",
        "orchd_exits_total",
        "orchd_messages_total",
        "orchd_inflight",
        "orchd_queued",
        "orchd_reply_seconds",
        "orchd_health_failures_total",
        "orchd_reloads_total",
        "orchd_cpu_seconds_total",
        "orchd_rss_bytes",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "no TYPE line for {name} in:\n{text}"
        );
    }
    assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
}

#[test]
fn values_and_labels() {
    let text = render(sample());
    has_samples(
        &text,
        &[
            "orchd_instances{pool=\"upper\",state=\"running\"} 1",
            "orchd_instances{pool=\"upper\",state=\"backoff\"} 1",
            "orchd_instances{pool=\"upper\",state=\"failed\"} 0",
            "orchd_instances{pool=\"idle\",state=\"running\"} 0",
            "orchd_restarts_total{pool=\"upper\",instance=\"1\"} 5",
            "orchd_exits_total{pool=\"upper\",instance=\"0\",cause=\"health\"} 1",
            "orchd_messages_total{pool=\"upper\",result=\"retries exhausted\"} 2",
            "orchd_inflight{pool=\"upper\",instance=\"0\"} 3",
            "orchd_queued{pool=\"upper\"} 7",
            "orchd_queued{pool=\"idle\"} 0",
            "orchd_health_failures_total{pool=\"upper\",instance=\"0\"} 4",
            "orchd_reloads_total{result=\"ok\"} 3",
            "orchd_reloads_total{result=\"failed\"} 1",
            "orchd_cpu_seconds_total{pool=\"upper\",instance=\"0\"} 1.25",
            "orchd_rss_bytes{pool=\"upper\",instance=\"0\"} 10485760",
        ],
    );
    // No RSS series for an instance whose RSS is unknown.
    assert!(!text.contains("orchd_rss_bytes{pool=\"upper\",instance=\"1\"}"));
}

#[test]
fn the_reply_histogram_is_cumulative_with_sum_and_count() {
    let text = render(sample());
    has_samples(
        &text,
        &[
            "orchd_reply_seconds_bucket{pool=\"upper\",le=\"0.0005\"} 1",
            "orchd_reply_seconds_bucket{pool=\"upper\",le=\"0.005\"} 3",
            "orchd_reply_seconds_bucket{pool=\"upper\",le=\"0.05\"} 4",
            "orchd_reply_seconds_bucket{pool=\"upper\",le=\"2.5\"} 5",
            "orchd_reply_seconds_bucket{pool=\"upper\",le=\"10\"} 5",
            "orchd_reply_seconds_bucket{pool=\"upper\",le=\"+Inf\"} 6",
            "orchd_reply_seconds_count{pool=\"upper\"} 6",
            "orchd_reply_seconds_bucket{pool=\"idle\",le=\"+Inf\"} 0",
        ],
    );
    let sum = samples(&text)
        .iter()
        .find_map(|l| l.strip_prefix("orchd_reply_seconds_sum{pool=\"upper\"} "))
        .unwrap();
    let sum: f64 = sum.parse().unwrap();
    assert!((sum - 62.046).abs() < 1e-9, "{sum}");
}

#[test]
fn label_values_are_escaped() {
    let mut snap = Snapshot::default();
    snap.pools.push(PoolSnapshot {
        name: "p".into(),
        messages: vec![("bad \"reason\"\\\n".into(), 1)],
        ..Default::default()
    });
    let text = render(snap);
    assert!(
        text.contains("result=\"bad \\\"reason\\\"\\\\\\n\"} 1"),
        "{text}"
    );
}

#[test]
fn an_empty_snapshot_still_renders_the_reload_counters() {
    let text = render(Snapshot::default());
    assert!(
        text.contains("orchd_reloads_total{result=\"ok\"} 0"),
        "{text}"
    );
    // Every sample line is NAME{labels} VALUE or NAME VALUE.
    for l in samples(&text) {
        assert_eq!(l.rsplitn(2, ' ').count(), 2, "{l}");
    }
}

/// `promtool check metrics` (Debian package `prometheus`) accepts the output; skipped
/// when promtool is not installed.
#[test]
fn promtool_accepts_the_output() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not found: skipped");
        return;
    };
    let text = render(sample());
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replies_observed_together_count_as_many_observed_one_by_one() {
    let mut one_by_one = ReplyHistogram::default();
    let mut together = ReplyHistogram::default();
    for _ in 0..3 {
        one_by_one.observe(Duration::from_millis(3));
    }
    together.observe_n(Duration::from_millis(3), 3);
    assert_eq!(together.count(), 3);
    assert_eq!(together.counts, one_by_one.counts);
    assert!((together.sum - one_by_one.sum).abs() < 1e-12);
}
