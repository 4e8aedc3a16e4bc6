//! Config tests of the readiness, health, start-order, rolling and memory keys
//! (`ready`, `health`, `depends_on`, `rolling`, `max_rss`) and `[orchd] metrics`.

use std::time::Duration;

use super::tests::{check, errs, ok, one, with_web};
use super::*;

const ROUTE_WEB: &str = "[[route]]\nfrom = \"tcp://127.0.0.1:7070\"\nto = \"web\"\n";

fn sup<'a>(c: &'a Config, pool: &str) -> &'a Supervision {
    c.supervision(pool)
}

#[test]
fn defaults_when_nothing_is_set() {
    let c = ok(&with_web(""));
    let s = sup(&c, "web");
    assert_eq!(s, &Supervision::default());
    assert_eq!(s.rolling.parallel, 1);
    assert_eq!(s.rolling.order, RollOrder::StartFirst);
    assert!(c.supervision.is_empty());
    assert_eq!(c.settings.metrics, None);
    // An unknown pool gets the defaults too.
    assert_eq!(sup(&c, "nope"), &Supervision::default());
}

#[test]
fn every_key_parses() {
    let c = ok(&format!(
        "[orchd]\nmetrics = \"127.0.0.1:9464\"\n\
         [pool.db]\ncommand = \"db\"\nready = {{ log = \"listening on\", timeout = \"30s\" }}\n\
         health = {{ exec = [\"pg_isready\"], every = \"5s\", timeout = \"1s\", failures = 2 }}\n\
         max_rss = \"512MiB\"\n\
         [pool.web]\ncommand = [\"worker\"]\ndepends_on = [\"db\"]\n\
         ready = {{ probe = true }}\n\
         health = {{ send = \"PING\", expect = \"^PONG\" }}\n\
         rolling = {{ parallel = 4, order = \"stop-first\" }}\n{ROUTE_WEB}"
    ));
    assert_eq!(c.settings.metrics, Some("127.0.0.1:9464".parse().unwrap()));
    let db = sup(&c, "db");
    let r = db.ready.as_ref().unwrap();
    assert!(matches!(&r.when, ReadyWhen::Log(p) if p.as_str() == "listening on"));
    assert_eq!(r.timeout, Duration::from_secs(30));
    let h = db.health.as_ref().unwrap();
    assert_eq!(
        h.probe,
        Probe::Exec(Command::Argv(vec!["pg_isready".into()]))
    );
    assert_eq!(
        (h.every, h.timeout, h.failures),
        (Duration::from_secs(5), Duration::from_secs(1), 2)
    );
    assert_eq!(db.max_rss, Some(512 << 20));

    let web = sup(&c, "web");
    let r = web.ready.as_ref().unwrap();
    assert_eq!(r.when, ReadyWhen::Probe);
    assert_eq!(r.timeout, DEFAULT_READY_TIMEOUT);
    let h = web.health.as_ref().unwrap();
    assert!(
        matches!(&h.probe, Probe::Send { send, expect } if send == "PING" && expect.as_str() == "^PONG")
    );
    assert_eq!(
        (h.every, h.timeout, h.failures),
        (Duration::from_secs(10), Duration::from_secs(2), 3)
    );
    assert_eq!(web.depends_on, vec!["db".to_string()]);
    assert_eq!(
        web.rolling,
        Rolling {
            parallel: 4,
            order: RollOrder::StopFirst
        }
    );
}

#[test]
fn ready_after_must_fit_in_the_timeout() {
    one(
        &with_web("ready = { after = \"2m\" }\n"),
        3,
        19,
        "pool.web.ready.after",
        "ready.after (2m) is longer than ready.timeout (1m)",
    );
    one(
        &with_web("ready = { after = \"10s\", timeout = \"5s\" }\n"),
        3,
        36,
        "pool.web.ready.timeout",
        "could never become ready",
    );
    ok(&with_web("ready = { after = \"5s\", timeout = \"5s\" }\n"));
}

#[test]
fn ready_after_and_shell_exec() {
    let c = ok(&with_web(
        "ready = { after = \"2s\" }\nhealth = { exec = \"curl -fsS http://127.0.0.1:8080/health\" }\n",
    ));
    let s = sup(&c, "web");
    assert_eq!(
        s.ready.as_ref().unwrap().when,
        ReadyWhen::After(Duration::from_secs(2))
    );
    assert!(matches!(
        &s.health.as_ref().unwrap().probe,
        Probe::Exec(Command::Shell(_))
    ));
}

#[test]
fn ready_takes_exactly_one_condition() {
    one(
        &with_web("ready = { log = \"up\", after = \"1s\" }\n"),
        3,
        23,
        "pool.web.ready.after",
        "ready takes one of log, after or probe; found log and after",
    );
    one(
        &with_web("ready = { timeout = \"5s\" }\n"),
        3,
        9,
        "pool.web.ready",
        "ready needs one of log",
    );
    one(
        &with_web("ready = { probe = false }\n"),
        3,
        19,
        "pool.web.ready.probe",
        "expected probe = true",
    );
    one(
        &with_web("ready = { probe = true }\n"),
        3,
        11,
        "pool.web.ready.probe",
        "probe = true needs a health probe",
    );
    one(
        &with_web("ready = { log = \"(\" }\n"),
        3,
        17,
        "pool.web.ready.log",
        "expected a regular expression",
    );
    one(
        &with_web("ready = { log = \"x\", timeout = \"0s\" }\n"),
        3,
        32,
        "pool.web.ready.timeout",
        "greater than 0",
    );
}

#[test]
fn unknown_keys_in_the_new_tables_list_the_valid_ones() {
    one(
        &with_web("ready = { log = \"x\", delay = \"1s\" }\n"),
        3,
        22,
        "pool.web.ready.delay",
        "expected one of: log, after, probe, timeout",
    );
    one(
        &with_web("health = { exec = \"true\", interval = \"1s\" }\n"),
        3,
        27,
        "pool.web.health.interval",
        "expected one of: send, expect, exec, every, timeout, failures",
    );
    one(
        &with_web("rolling = { parallel = 2, max_surge = 1 }\n"),
        3,
        27,
        "pool.web.rolling.max_surge",
        "expected one of: parallel or order",
    );
    one(
        "[orchd]\nmetric = \"127.0.0.1:9464\"\n",
        2,
        1,
        "orchd.metric",
        "metrics",
    );
}

#[test]
fn health_needs_one_probe_kind() {
    one(
        &with_web("health = { every = \"5s\" }\n"),
        3,
        10,
        "pool.web.health",
        "health needs send",
    );
    one(
        &with_web(&format!(
            "health = {{ send = \"PING\", expect = \"PONG\", exec = \"true\" }}\n{ROUTE_WEB}"
        )),
        3,
        44,
        "pool.web.health.exec",
        "either send (with expect) or exec, not both",
    );
    one(
        &with_web(&format!("health = {{ send = \"PING\" }}\n{ROUTE_WEB}")),
        3,
        10,
        "pool.web.health.expect",
        "missing required key \"expect\"",
    );
    one(
        &with_web("health = { exec = \"true\", expect = \"x\" }\n"),
        3,
        27,
        "pool.web.health.expect",
        "only allowed with send",
    );
    one(
        &with_web("health = { exec = [] }\n"),
        3,
        19,
        "pool.web.health.exec",
        "found an empty array",
    );
}

#[test]
fn health_limits() {
    let e = errs(&with_web(
        "health = { exec = \"true\", every = \"10ms\", timeout = \"0s\", failures = 0 }\n",
    ));
    assert_eq!(e.len(), 3, "{}", ConfigErrors(e.clone()));
    check(
        &e[0],
        3,
        35,
        "pool.web.health.every",
        "at least 100ms, found \"10ms\"",
    );
    check(&e[1], 3, 53, "pool.web.health.timeout", "greater than 0");
    check(
        &e[2],
        3,
        70,
        "pool.web.health.failures",
        "from 1 to 1000, found 0",
    );
    one(
        &with_web(&format!(
            "health = {{ send = \"a\\nb\", expect = \"x\" }}\n{ROUTE_WEB}"
        )),
        3,
        19,
        "pool.web.health.send",
        "one line",
    );
}

#[test]
fn send_needs_a_pool_that_a_route_feeds() {
    one(
        &with_web("health = { send = \"PING\", expect = \"^PONG\" }\n"),
        3,
        12,
        "pool.web.health.send",
        "needs message input, but no route has to = \"web\"",
    );
    // exec is fine on an unrouted pool.
    ok(&with_web("health = { exec = [\"true\"] }\n"));
}

#[test]
fn send_probes_need_the_lines_protocol() {
    for protocol in ["tagged", "node"] {
        one(
            &with_web(&format!(
                "protocol = \"{protocol}\"\nhealth = {{ send = \"PING\", expect = \"^PONG\" }}\n{ROUTE_WEB}"
            )),
            4,
            12,
            "pool.web.health.send",
            &format!("a protocol = \"{protocol}\" worker does not read; use health.exec"),
        );
        ok(&with_web(&format!(
            "protocol = \"{protocol}\"\nhealth = {{ exec = [\"true\"] }}\n{ROUTE_WEB}"
        )));
    }
}

#[test]
fn depends_on_must_name_pools() {
    one(
        &with_web("depends_on = [\"db\", \"cache\"]\n[pool.db]\ncommand = \"db\"\n"),
        3,
        21,
        "pool.web.depends_on[2]",
        "no pool named \"cache\"; the pools are: web, db",
    );
    one(
        &with_web("depends_on = [\"db\", \"db\"]\n[pool.db]\ncommand = \"db\"\n"),
        3,
        21,
        "pool.web.depends_on[2]",
        "named twice",
    );
    one(
        &with_web("depends_on = \"db\"\n[pool.db]\ncommand = \"db\"\n"),
        3,
        14,
        "pool.web.depends_on",
        "expected a sequence",
    );
}

#[test]
fn a_dependency_cycle_is_named() {
    let text = "[pool.a]\ncommand = \"a\"\ndepends_on = [\"c\"]\n\
                [pool.b]\ncommand = \"b\"\ndepends_on = [\"a\"]\n\
                [pool.c]\ncommand = \"c\"\ndepends_on = [\"b\"]\n\
                [pool.d]\ncommand = \"d\"\ndepends_on = [\"a\"]\n";
    one(
        text,
        3,
        15,
        "pool.a.depends_on[1]",
        "depends_on forms a cycle: a → c → b → a",
    );
    one(
        &with_web("depends_on = [\"web\"]\n"),
        3,
        15,
        "pool.web.depends_on[1]",
        "pool \"web\" depends on itself",
    );
}

#[test]
fn rolling_limits() {
    one(
        &with_web("rolling = { parallel = 0 }\n"),
        3,
        24,
        "pool.web.rolling.parallel",
        "expected an integer >= 1, found 0",
    );
    one(
        &with_web("rolling = { order = \"random\" }\n"),
        3,
        21,
        "pool.web.rolling.order",
        "expected one of \"start-first\" or \"stop-first\", found \"random\"",
    );
}

#[test]
fn max_rss_limits() {
    one(
        &with_web("max_rss = 1000\n"),
        3,
        11,
        "pool.web.max_rss",
        "at least 1MiB, found 1000 bytes",
    );
    one(
        &with_web("max_rss = \"lots\"\n"),
        3,
        11,
        "pool.web.max_rss",
        "expected a size such as",
    );
    let c = ok(&with_web("max_rss = \"1 GiB\"\n"));
    assert_eq!(sup(&c, "web").max_rss, Some(1 << 30));
}

#[test]
fn metrics_address() {
    let c = ok("[orchd]\nmetrics = \"[::1]:9464\"\n");
    assert_eq!(c.settings.metrics, Some("[::1]:9464".parse().unwrap()));
    let c = ok("[orchd]\nmetrics = \"localhost:0\"\n");
    assert_eq!(c.settings.metrics, Some("127.0.0.1:0".parse().unwrap()));
    one(
        "[orchd]\nmetrics = \"http://127.0.0.1:9464\"\n",
        2,
        11,
        "orchd.metrics",
        "without a scheme",
    );
    one(
        "[orchd]\nmetrics = \"9464\"\n",
        2,
        11,
        "orchd.metrics",
        "expected \"HOST:PORT\"",
    );
    one(
        &with_web(&format!("[orchd]\nmetrics = \"0.0.0.0:7070\"\n{ROUTE_WEB}")),
        4,
        11,
        "orchd.metrics",
        "is also route[1]'s listener tcp://127.0.0.1:7070",
    );
}

#[test]
fn describe_shows_what_is_set() {
    let c = ok(&format!(
        "[orchd]\nmetrics = \"127.0.0.1:9464\"\n\
         [pool.db]\ncommand = \"db\"\nready = {{ after = \"2s\" }}\nmax_rss = \"512MiB\"\n\
         health = {{ exec = [\"pg_isready\", \"-q\"] }}\n\
         [pool.web]\ncommand = [\"worker\"]\ndepends_on = [\"db\"]\n\
         ready = {{ log = \"^up\" }}\nhealth = {{ send = \"PING\", expect = \"^PONG\", failures = 5 }}\n\
         rolling = {{ parallel = 2 }}\n{ROUTE_WEB}"
    ));
    let out = describe(&c);
    assert!(out.contains(" metrics=127.0.0.1:9464\n"), "{out}");
    for line in [
        "  ready: after=2s timeout=1m",
        "  health: exec=[\"pg_isready\", \"-q\"] every=10s timeout=2s failures=3",
        "  max_rss: 512MiB",
        "  depends_on: db",
        "  ready: log=\"^up\" timeout=1m",
        "  health: send=\"PING\" expect=\"^PONG\" every=10s timeout=2s failures=5",
        "  rolling: parallel=2 order=start-first",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    // Nothing new for a pool that sets none of them.
    let plain = describe(&ok(&with_web("")));
    assert!(
        !plain.contains("ready") && !plain.contains("metrics"),
        "{plain}"
    );
}

#[test]
fn reload_applies_the_new_keys_in_place() {
    use crate::reload::diff::{diff, PoolChange};
    let old = ok(&with_web(""));
    let new = ok(&with_web(
        "ready = { after = \"1s\" }\nhealth = { exec = \"true\" }\nrolling = { parallel = 3 }\nmax_rss = \"1GiB\"\ndepends_on = [\"db\"]\n[pool.db]\ncommand = \"db\"\n",
    ));
    let plan = diff(&old, &new);
    let web = plan.pools.iter().find(|p| p.name() == "web").unwrap();
    match web {
        PoolChange::Changed {
            replace, settings, ..
        } => {
            assert_eq!(*replace, 0, "no instance is replaced");
            assert_eq!(
                settings,
                &vec!["ready", "health", "depends_on", "rolling", "max_rss"]
            );
        }
        other => panic!("{other:?}"),
    }
    let plan = diff(&new, &new);
    assert!(plan.is_empty());
    let with_metrics = ok(&with_web("[orchd]\nmetrics = \"127.0.0.1:9464\"\n"));
    let plan = diff(&old, &with_metrics);
    assert_eq!(plan.settings, vec!["metrics"]);
}
