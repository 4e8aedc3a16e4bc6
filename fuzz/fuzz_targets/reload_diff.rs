//! The reload diff never panics on two valid configs, and its plan is consistent:
//! a config diffed with itself is empty, a plan is empty exactly when its summary says
//! "no changes", and diff(b, a) mirrors diff(a, b).
//!
//! Input: two TOML texts separated by a line `---`; without one, the whole input is
//! both configs.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use orchd::config::{parse_str, Config, Source};
use orchd::reload::{diff, Plan, PoolChange};

const SEPARATOR: &str = "\n---\n";

fn parse(text: &str) -> Option<Config> {
    // The same path for both: the diff compares contents, not file names.
    parse_str(Path::new("/tmp/fuzz/orchd.toml"), text).ok()
}

fn check(plan: &Plan) {
    let summary = plan.summary();
    let detail = plan.to_string();
    assert_eq!(plan.is_empty(), summary == "no changes", "{summary}");
    assert_eq!(plan.is_empty(), detail == "no changes\n", "{detail}");
    assert!(!summary.contains('\n'), "summary on one line: {summary:?}");
    let names: Vec<&str> = plan.pools.iter().map(PoolChange::name).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(names.len(), unique.len(), "a pool twice in {names:?}");
}

fn set(v: &[Source]) -> BTreeSet<&Source> {
    v.iter().collect()
}

fn by_name(plan: &Plan, added: bool) -> BTreeSet<(&str, u32)> {
    plan.pools
        .iter()
        .filter_map(|p| match p {
            PoolChange::Added { name, count } if added => Some((name.as_str(), *count)),
            PoolChange::Removed { name, count } if !added => Some((name.as_str(), *count)),
            _ => None,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (ta, tb) = text.split_once(SEPARATOR).unwrap_or((text, text));
    let Some(a) = parse(ta) else { return };
    let same = diff(&a, &a);
    check(&same);
    assert!(same.is_empty(), "diff(a, a) not empty: {}", same.summary());
    let Some(b) = parse(tb) else { return };
    let ab = diff(&a, &b);
    let ba = diff(&b, &a);
    check(&ab);
    check(&ba);
    if a == b {
        assert!(ab.is_empty(), "equal configs differ: {}", ab.summary());
    }
    assert_eq!(ab.is_empty(), ba.is_empty());
    assert_eq!(ab.pools.len(), b.pools.len() + by_name(&ab, false).len());
    assert_eq!(by_name(&ab, true), by_name(&ba, false));
    assert_eq!(by_name(&ab, false), by_name(&ba, true));
    assert_eq!(set(&ab.listeners_added), set(&ba.listeners_removed));
    assert_eq!(set(&ab.listeners_kept), set(&ba.listeners_kept));
    assert_eq!(ab.settings, ba.settings);
    assert_eq!(ab.routes_changed, ba.routes_changed);
    assert_eq!(ab.routes, (ba.routes.1, ba.routes.0));
    // A pool in both files changes the same way in both directions.
    for p in &ab.pools {
        let q = ba.pools.iter().find(|q| q.name() == p.name());
        match (p, q) {
            (PoolChange::Unchanged { .. }, Some(q)) => {
                assert!(matches!(q, PoolChange::Unchanged { .. }), "{p:?} vs {q:?}")
            }
            (
                PoolChange::Changed {
                    resize,
                    replace,
                    settings,
                    ..
                },
                Some(PoolChange::Changed {
                    resize: r2,
                    replace: p2,
                    settings: s2,
                    ..
                }),
            ) => {
                assert_eq!(*resize, r2.map(|(x, y)| (y, x)));
                assert_eq!(replace, p2);
                assert_eq!(settings, s2);
            }
            (PoolChange::Changed { .. } | PoolChange::Unchanged { .. }, q) => {
                panic!("{p:?} but the other way {q:?}")
            }
            _ => {}
        }
    }
});
