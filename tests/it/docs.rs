//! Docs cannot drift: every config key the parser accepts is documented in
//! orchd.toml(5), and the man page documents no key the parser does not know. The
//! parser itself is the source of truth: an unknown key makes it list every valid key
//! of that table.

use std::collections::BTreeSet;

use crate::common::*;

/// The keys `orchd --check` accepts in the table where `snippet` puts `zzz_unknown`.
fn accepted_keys(snippet: &str) -> BTreeSet<String> {
    let dir = TempDir::new("docs-keys");
    let cfg = dir.write("pool.toml", snippet);
    let (code, _, err) = run_orchd(&["--check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{snippet}");
    let list = err
        .split("expected one of: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    list.lines()
        .next()
        .unwrap()
        .split(", ")
        // serde lists two keys as "a or b"
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim().to_string())
        .collect()
}

fn documented_keys() -> BTreeSet<String> {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/orchd.toml.5"))
        .expect("man/orchd.toml.5");
    // Keys are documented as `.BR key " (type, default ...)"` after a `.TP`.
    man.lines()
        .filter_map(|l| l.strip_prefix(".BR "))
        .filter(|l| l.contains(" \" ("))
        .filter_map(|l| l.split_whitespace().next())
        .map(|k| k.replace("\\-", "-"))
        .collect()
}

#[test]
fn every_config_key_is_documented_in_the_man_page_and_vice_versa() {
    let pool = "[pool.p]\ncommand = \"true\"\n";
    let tables = [
        "[orchd]\nzzz_unknown = 1\n".to_string(),
        format!("{pool}zzz_unknown = 1\n"),
        format!("{pool}backoff = {{ zzz_unknown = 1 }}\n"),
        format!("{pool}give_up = {{ restarts = 1, within = \"1s\", zzz_unknown = 1 }}\n"),
        format!("{pool}[[route]]\nfrom = \"stdin\"\nto = \"p\"\nzzz_unknown = 1\n"),
        format!("{pool}ready = {{ zzz_unknown = 1 }}\n"),
        format!("{pool}health = {{ zzz_unknown = 1 }}\n"),
        format!("{pool}rolling = {{ zzz_unknown = 1 }}\n"),
    ];
    let mut all = BTreeSet::new();
    for t in &tables {
        all.extend(accepted_keys(t));
    }
    let documented = documented_keys();
    let missing: Vec<_> = all.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys missing from orchd.toml(5): {missing:?}"
    );
    // Top-level tables are documented in their own sections, not as keys.
    let unknown: Vec<_> = documented
        .difference(&all)
        .filter(|k| !["orchd", "pool", "route"].contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "orchd.toml(5) documents keys orchd does not accept: {unknown:?}"
    );
}

#[test]
fn every_cli_flag_is_documented_in_the_man_page() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/orchd.1"))
        .expect("man/orchd.1");
    let (_, usage, _) = run_orchd(&["--help"]);
    for flag in usage.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = flag.trim_end_matches(|c: char| !c.is_alphanumeric());
        let roff = flag.replace('-', "\\-");
        assert!(
            man.contains(&roff) || man.contains(flag),
            "{flag} not in orchd(1)"
        );
    }
}
