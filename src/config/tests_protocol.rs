//! `protocol` (SPEC 12): parsing, errors, `--check` output and what a change does on
//! reload.

use super::*;

#[test]
fn protocol_defaults_to_lines() {
    assert_eq!(web(&ok(WEB)).protocol, Protocol::Lines);
}

#[test]
fn every_protocol_name_parses() {
    for p in Protocol::ALL {
        let c = ok(&with_web(&format!("protocol = \"{}\"\n", p.as_str())));
        assert_eq!(web(&c).protocol, p);
    }
}

#[test]
fn unknown_protocol_names_the_choices() {
    one(
        &with_web("protocol = \"json\"\n"),
        3,
        12,
        "pool.web.protocol",
        "expected one of \"lines\", \"tagged\" or \"node\", found \"json\"",
    );
    // Names are exact: no case folding, as for restart and strategy.
    one(
        &with_web("protocol = \"Node\"\n"),
        3,
        12,
        "pool.web.protocol",
        "found \"Node\"",
    );
}

#[test]
fn protocol_of_the_wrong_type_is_one_error() {
    one(
        &with_web("protocol = 1\n"),
        3,
        12,
        "pool.web.protocol",
        "expected a string",
    );
}

#[test]
fn a_bad_protocol_does_not_hide_other_errors() {
    let e = errs(&with_web("protocol = \"x\"\nqueue = 0\n"));
    assert_eq!(e.len(), 2, "{}", ConfigErrors(e.clone()));
    check(&e[0], 3, 12, "pool.web.protocol", "expected one of");
    check(&e[1], 4, 9, "pool.web.queue", ">= 1");
}

#[test]
fn describe_shows_protocol_and_the_node_channel() {
    let text = "[pool.t]\ncommand = \"t\"\nprotocol = \"tagged\"\n\
                [pool.n]\ncommand = \"n\"\nprotocol = \"node\"\n\
                [pool.idle]\ncommand = \"i\"\nprotocol = \"node\"\n\
                [pool.l]\ncommand = \"l\"\n\
                [[route]]\nfrom = \"stdin\"\nto = \"t\"\n\
                [[route]]\nfrom = \"stdin\"\nmatch = \"^n\"\nto = \"n\"\n\
                [[route]]\nfrom = \"stdin\"\nmatch = \"^l\"\nto = \"l\"\n";
    let out = describe(&ok(text));
    let stop = |pool: &str| -> String {
        let mut lines = out
            .lines()
            .skip_while(|l| !l.starts_with(&format!("pool {pool}:")));
        lines
            .find(|l| l.starts_with("  stop:"))
            .unwrap_or_else(|| panic!("no stop line for {pool} in:\n{out}"))
            .to_string()
    };
    assert!(stop("t").ends_with("stdin=route protocol=tagged"), "{out}");
    assert!(
        stop("n").ends_with("stdin=/dev/null channel=NODE_CHANNEL_FD protocol=node"),
        "{out}"
    );
    // No route: no channel either (SPEC 4), but the protocol is still shown.
    assert!(
        stop("idle").ends_with("stdin=/dev/null protocol=node"),
        "{out}"
    );
    // The default is not printed: `lines` pools describe as before.
    assert!(stop("l").ends_with("stdin=route"), "{out}");
}

#[test]
fn changing_protocol_replaces_instances_and_plan_says_so() {
    let old = "[pool.w]\ncommand = \"w\"\ncount = 3\n[[route]]\nfrom = \"stdin\"\nto = \"w\"\n";
    let new = old.replace("count = 3\n", "count = 3\nprotocol = \"node\"\n");
    let plan = crate::reload::diff::diff(&ok(old), &ok(&new));
    assert!(
        matches!(
            plan.pools.as_slice(),
            [crate::reload::diff::PoolChange::Changed {
                replace: 3,
                resize: None,
                cancel: false,
                settings,
                ..
            }] if settings.is_empty()
        ),
        "{plan:?}"
    );
    assert!(plan.to_string().contains("replace 3 instance(s)"), "{plan}");
    // Writing the default explicitly changes nothing.
    let explicit = old.replace("count = 3\n", "count = 3\nprotocol = \"lines\"\n");
    assert!(crate::reload::diff::diff(&ok(old), &ok(&explicit)).is_empty());
}

#[test]
fn a_node_pool_leaves_the_channel_variables_to_orchd() {
    let e = errs(&with_web(
        "protocol = \"node\"\nenv = { A = \"1\", NODE_CHANNEL_FD = 4, NODE_CHANNEL_SERIALIZATION_MODE = \"advanced\" }\n",
    ));
    assert_eq!(e.len(), 2, "{}", ConfigErrors(e.clone()));
    check(
        &e[0],
        4,
        18,
        "pool.web.env.NODE_CHANNEL_FD",
        "set by orchd for protocol = \"node\"",
    );
    check(
        &e[1],
        4,
        39,
        "pool.web.env.NODE_CHANNEL_SERIALIZATION_MODE",
        "remove it from env",
    );
    // Other protocols: the pool's env is the user's business.
    let c = ok(&with_web(
        "protocol = \"tagged\"\nenv = { NODE_CHANNEL_FD = \"9\" }\n",
    ));
    assert_eq!(
        web(&c).env.get("NODE_CHANNEL_FD").map(String::as_str),
        Some("9")
    );
}
