//! `diff(old, new) -> Plan`: what a reload changes, decided from the two configs alone.
//!
//! What an instance *is* (command, cwd, env, user, group, whether its stdin is a route
//! target) decides between "untouched" and "replace one at a time"; `count` adds or
//! retires the highest indexes; every other pool setting applies in place.

use std::fmt;

use crate::config::{Config, Pool, Source};

/// What happens to one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolChange {
    /// Same process spec, same count, same settings: not touched at all.
    Unchanged {
        name: String,
    },
    Added {
        name: String,
        count: u32,
    },
    /// Drained and stopped.
    Removed {
        name: String,
        count: u32,
    },
    Changed {
        name: String,
        /// `count` went from .0 to .1.
        resize: Option<(u32, u32)>,
        /// The process spec changed: running instances are replaced one at a time.
        replace: bool,
        /// Names of settings applied in place (restart, backoff, ...).
        settings: Vec<&'static str>,
    },
}

impl PoolChange {
    pub fn name(&self) -> &str {
        match self {
            PoolChange::Unchanged { name }
            | PoolChange::Added { name, .. }
            | PoolChange::Removed { name, .. }
            | PoolChange::Changed { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In new-file order, then removed pools.
    pub pools: Vec<PoolChange>,
    /// (old, new) number of routes, and whether the rule list differs at all.
    pub routes: (usize, usize),
    pub routes_changed: bool,
    pub listeners_added: Vec<Source>,
    pub listeners_removed: Vec<Source>,
    pub listeners_kept: Vec<Source>,
    /// `[orchd]` keys whose value changed.
    pub settings: Vec<&'static str>,
}

/// Whether two pools run the same process (same command, cwd, env, user, group, and
/// stdin wiring). If not, instances must be replaced.
pub fn same_process(a: &Pool, a_routed: bool, b: &Pool, b_routed: bool) -> bool {
    a.command == b.command
        && a.cwd == b.cwd
        && a.env == b.env
        && a.user == b.user
        && a.group == b.group
        && a_routed == b_routed
}

/// Settings that apply in place, by name, that differ between `a` and `b`.
fn settings_changed(a: &Pool, b: &Pool) -> Vec<&'static str> {
    changed_names(&[
        ("restart", a.restart != b.restart),
        ("backoff", a.backoff != b.backoff),
        ("give_up", a.give_up != b.give_up),
        ("stop_signal", a.stop_signal != b.stop_signal),
        ("stop_timeout", a.stop_timeout != b.stop_timeout),
        ("max_inflight", a.max_inflight != b.max_inflight),
        ("queue", a.queue != b.queue),
    ])
}

fn changed_names(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect()
}

pub fn diff(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    for p in &new.pools {
        let change = match old.pool(&p.name) {
            None => PoolChange::Added {
                name: p.name.clone(),
                count: p.count,
            },
            Some(o) => {
                let replace = !same_process(o, old.is_routed(&o.name), p, new.is_routed(&p.name));
                let resize = (o.count != p.count).then_some((o.count, p.count));
                let settings = settings_changed(o, p);
                if !replace && resize.is_none() && settings.is_empty() {
                    PoolChange::Unchanged {
                        name: p.name.clone(),
                    }
                } else {
                    PoolChange::Changed {
                        name: p.name.clone(),
                        resize,
                        replace,
                        settings,
                    }
                }
            }
        };
        plan.pools.push(change);
    }
    for o in &old.pools {
        if new.pool(&o.name).is_none() {
            plan.pools.push(PoolChange::Removed {
                name: o.name.clone(),
                count: o.count,
            });
        }
    }
    plan.routes = (old.routes.len(), new.routes.len());
    plan.routes_changed = old.routes != new.routes;
    let sources = |c: &Config| {
        let mut v: Vec<Source> = Vec::new();
        for r in &c.routes {
            if !v.contains(&r.from) {
                v.push(r.from.clone());
            }
        }
        v
    };
    let (olds, news) = (sources(old), sources(new));
    for s in &news {
        if olds.contains(s) {
            plan.listeners_kept.push(s.clone());
        } else {
            plan.listeners_added.push(s.clone());
        }
    }
    plan.listeners_removed = olds.into_iter().filter(|s| !news.contains(s)).collect();
    let (a, b) = (&old.settings, &new.settings);
    plan.settings = changed_names(&[
        ("log_level", a.log_level != b.log_level),
        ("control", a.control != b.control),
        ("drain_timeout", a.drain_timeout != b.drain_timeout),
        ("watch", a.watch != b.watch),
        ("error_prefix", a.error_prefix != b.error_prefix),
        ("max_clients", a.max_clients != b.max_clients),
    ]);
    plan
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.pools
            .iter()
            .all(|p| matches!(p, PoolChange::Unchanged { .. }))
            && !self.routes_changed
            && self.listeners_added.is_empty()
            && self.listeners_removed.is_empty()
            && self.settings.is_empty()
    }

    /// One line for the log: `+2 api, -1 old, ~web 2→4, ~upper replace (rolling),
    /// routes 3→4` or `no changes`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no changes".into();
        }
        let mut parts = Vec::new();
        for p in &self.pools {
            match p {
                PoolChange::Unchanged { .. } => {}
                PoolChange::Added { name, count } => parts.push(format!("+{count} {name}")),
                PoolChange::Removed { name, count } => parts.push(format!("-{count} {name}")),
                PoolChange::Changed {
                    name,
                    resize,
                    replace,
                    settings,
                } => {
                    let mut what = Vec::new();
                    if let Some((a, b)) = resize {
                        what.push(format!("count {a}→{b}"));
                    }
                    if *replace {
                        what.push("replace (rolling)".into());
                    }
                    if !settings.is_empty() {
                        what.push(settings.join("+"));
                    }
                    parts.push(format!("~{name} {}", what.join(", ")));
                }
            }
        }
        if self.routes_changed {
            parts.push(format!("routes {}→{}", self.routes.0, self.routes.1));
        }
        for s in &self.listeners_added {
            parts.push(format!("+listener {s}"));
        }
        for s in &self.listeners_removed {
            parts.push(format!("-listener {s}"));
        }
        if !self.settings.is_empty() {
            parts.push(format!("orchd: {}", self.settings.join("+")));
        }
        parts.join(", ")
    }
}

/// The detailed plan, one change per line (what `orchd --plan` prints).
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        for p in &self.pools {
            match p {
                PoolChange::Unchanged { name } => writeln!(f, "  pool {name}: unchanged")?,
                PoolChange::Added { name, count } => {
                    writeln!(f, "+ pool {name}: add, start {count} instance(s)")?
                }
                PoolChange::Removed { name, count } => writeln!(
                    f,
                    "- pool {name}: remove, drain and stop {count} instance(s)"
                )?,
                PoolChange::Changed {
                    name,
                    resize,
                    replace,
                    settings,
                } => {
                    let mut what = Vec::new();
                    if let Some((a, b)) = resize {
                        what.push(if b > a {
                            format!("count {a}→{b}: start {} instance(s)", b - a)
                        } else {
                            format!("count {a}→{b}: drain and stop {} instance(s)", a - b)
                        });
                    }
                    if *replace {
                        what.push("process changed: replace instances one at a time".into());
                    }
                    if !settings.is_empty() {
                        what.push(format!("apply in place: {}", settings.join(", ")));
                    }
                    writeln!(f, "~ pool {name}: {}", what.join("; "))?;
                }
            }
        }
        if self.routes_changed {
            writeln!(f, "~ routes: {} → {} rule(s)", self.routes.0, self.routes.1)?;
        }
        for s in &self.listeners_added {
            writeln!(f, "+ listener {s}")?;
        }
        for s in &self.listeners_removed {
            writeln!(f, "- listener {s}: close after in-flight replies")?;
        }
        for s in &self.listeners_kept {
            writeln!(f, "  listener {s}: kept (socket and connections stay)")?;
        }
        if !self.settings.is_empty() {
            writeln!(f, "~ [orchd]: {}", self.settings.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        crate::config::parse_str(Path::new("/tmp/pool.toml"), text).expect("valid config")
    }

    const BASE: &str = r#"
[pool.a]
command = "cat"
count = 2
[pool.b]
command = "sleep 100"
[[route]]
from = "tcp://127.0.0.1:7000"
to = "a"
"#;

    fn change_of<'a>(p: &'a Plan, name: &str) -> &'a PoolChange {
        p.pools
            .iter()
            .find(|c| c.name() == name)
            .expect("pool in plan")
    }

    #[test]
    fn identical_configs_change_nothing() {
        let p = diff(&cfg(BASE), &cfg(BASE));
        assert!(p.is_empty());
        assert_eq!(p.summary(), "no changes");
        assert_eq!(p.listeners_kept.len(), 1);
    }

    #[test]
    fn count_change_is_a_resize() {
        let new = BASE.replace("count = 2", "count = 5");
        let p = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(
            change_of(&p, "a"),
            &PoolChange::Changed {
                name: "a".into(),
                resize: Some((2, 5)),
                replace: false,
                settings: vec![]
            }
        );
        assert_eq!(
            change_of(&p, "b"),
            &PoolChange::Unchanged { name: "b".into() }
        );
        assert_eq!(p.summary(), "~a count 2→5");
    }

    #[test]
    fn process_spec_change_replaces() {
        for new in [
            BASE.replace("command = \"cat\"", "command = \"cat -u\""),
            BASE.replace("count = 2", "count = 2\ncwd = \"/\""),
            BASE.replace("count = 2", "count = 2\nenv = { X = \"1\" }"),
        ] {
            let p = diff(&cfg(BASE), &cfg(&new));
            assert!(
                matches!(
                    change_of(&p, "a"),
                    PoolChange::Changed {
                        replace: true,
                        resize: None,
                        ..
                    }
                ),
                "{new}"
            );
        }
    }

    #[test]
    fn becoming_a_route_target_replaces() {
        let new = BASE.replace("to = \"a\"", "to = \"b\"");
        let p = diff(&cfg(BASE), &cfg(&new));
        assert!(matches!(
            change_of(&p, "a"),
            PoolChange::Changed { replace: true, .. }
        ));
        assert!(matches!(
            change_of(&p, "b"),
            PoolChange::Changed { replace: true, .. }
        ));
        assert!(p.routes_changed);
    }

    #[test]
    fn other_settings_apply_in_place() {
        let new = BASE.replace(
            "count = 2",
            "count = 2\nrestart = \"never\"\nmax_inflight = 4\nstop_timeout = \"1s\"\nbackoff = { max = \"1s\" }",
        );
        let p = diff(&cfg(BASE), &cfg(&new));
        match change_of(&p, "a") {
            PoolChange::Changed {
                replace: false,
                resize: None,
                settings,
                ..
            } => assert_eq!(
                settings,
                &["restart", "backoff", "stop_timeout", "max_inflight"]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pools_added_and_removed() {
        let new = BASE.replace(
            "[pool.b]\ncommand = \"sleep 100\"",
            "[pool.c]\ncommand = \"true\"\ncount = 3",
        );
        let p = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(
            change_of(&p, "c"),
            &PoolChange::Added {
                name: "c".into(),
                count: 3
            }
        );
        assert_eq!(
            change_of(&p, "b"),
            &PoolChange::Removed {
                name: "b".into(),
                count: 1
            }
        );
        assert_eq!(p.summary(), "+3 c, -1 b");
    }

    #[test]
    fn listeners_kept_added_removed() {
        let new = BASE.replace("tcp://127.0.0.1:7000", "unix:/tmp/x.sock");
        let p = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(p.listeners_added.len(), 1);
        assert_eq!(p.listeners_removed.len(), 1);
        assert!(p.listeners_kept.is_empty());
        let more = format!(
            "{BASE}\n[[route]]\nfrom = \"tcp://127.0.0.1:7000\"\nmatch = \"^x\"\nto = \"b\"\n"
        );
        let p = diff(&cfg(BASE), &cfg(&more));
        assert_eq!(p.routes, (1, 2));
        assert!(p.listeners_added.is_empty());
        assert!(p.summary().contains("routes 1→2"), "{}", p.summary());
    }

    #[test]
    fn orchd_settings_are_listed() {
        let new = format!("[orchd]\nerror_prefix = \"E: \"\ndrain_timeout = \"1s\"\n{BASE}");
        let p = diff(&cfg(BASE), &cfg(&new));
        assert_eq!(p.settings, ["drain_timeout", "error_prefix"]);
        assert!(!p.is_empty());
    }

    #[test]
    fn plan_text_names_every_change() {
        let new = BASE
            .replace("count = 2", "count = 1")
            .replace("cat", "cat -u");
        let text = diff(&cfg(BASE), &cfg(&new)).to_string();
        assert!(text.contains("count 2→1: drain and stop 1"), "{text}");
        assert!(text.contains("replace instances one at a time"), "{text}");
        assert!(text.contains("pool b: unchanged"), "{text}");
    }
}
