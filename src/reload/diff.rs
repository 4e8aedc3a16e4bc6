//! `diff(old, new) -> Plan`: what a reload changes, decided from the two configs and
//! what each instance actually runs.
//!
//! What an instance *is* (command, cwd, env, user, group, protocol, whether its stdin
//! is a route target) decides between "untouched" and "replace one at a time"; `count`
//! adds or retires the highest indexes; every other pool setting applies in place.
//!
//! Replacement is decided per instance, against the spec it was started with, not
//! against the previous config: after a rolling replacement to a broken command (whose
//! new instances never take their slot), putting the old command back leaves the
//! instances that ran it all along untouched and only cancels the pending replacement.

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
        /// How many of the instances that stay run another spec than the new one: they
        /// are replaced one at a time. 0 when they all run it already (or a rolling
        /// replacement to it is under way and simply goes on).
        replace: u32,
        /// A replacement started for an earlier spec (waiting to take its slot) is
        /// cancelled: its instance is stopped; the instances it was to replace stay
        /// unless `replace` counts them.
        cancel: bool,
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

/// The spec one instance was started with, and whether its stdin is a route pipe.
#[derive(Debug, Clone, Copy)]
pub struct RunningSpec<'a> {
    pub spec: &'a Pool,
    pub routed: bool,
}

/// What one pool runs now, instance by instance.
#[derive(Debug, Clone, Default)]
pub struct RunningPool<'a> {
    /// The instance of each slot (index order).
    pub slots: Vec<RunningSpec<'a>>,
    /// A rolling replacement toward the pool's current spec is under way.
    pub rolling: bool,
    /// The replacement instances of that roll waiting to take their slots.
    pub incoming: Vec<RunningSpec<'a>>,
}

impl<'a> RunningPool<'a> {
    /// What a pool of `cfg` runs when every instance runs `cfg` (no reload in progress).
    pub fn as_configured(cfg: &'a Pool, routed: bool) -> RunningPool<'a> {
        RunningPool {
            slots: vec![RunningSpec { spec: cfg, routed }; cfg.count as usize],
            rolling: false,
            incoming: Vec::new(),
        }
    }

    fn runs(s: &RunningSpec<'_>, cfg: &Pool, routed: bool) -> bool {
        same_process(s.spec, s.routed, cfg, routed)
    }
}

/// Whether two pools run the same process (same command, cwd, env, user, group,
/// protocol, and stdin wiring). If not, instances must be replaced: the protocol
/// decides the worker's fds (stdin pipe or Node IPC channel) and what it writes.
pub fn same_process(a: &Pool, a_routed: bool, b: &Pool, b_routed: bool) -> bool {
    a.command == b.command
        && a.cwd == b.cwd
        && a.env == b.env
        && a.user == b.user
        && a.group == b.group
        && a.protocol == b.protocol
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

/// The plan when every instance runs what `old` says (no replacement under way).
pub fn diff(old: &Config, new: &Config) -> Plan {
    diff_running(old, new, |name| {
        old.pool(name)
            .map(|p| RunningPool::as_configured(p, old.is_routed(name)))
    })
}

/// The plan for `new`, given the running `old` config and what each pool of it runs now
/// (`running(name)`; `None` counts as "as configured").
pub fn diff_running<'a>(
    old: &Config,
    new: &Config,
    running: impl Fn(&str) -> Option<RunningPool<'a>>,
) -> Plan {
    let mut plan = Plan::default();
    for p in &new.pools {
        let change = match old.pool(&p.name) {
            None => PoolChange::Added {
                name: p.name.clone(),
                count: p.count,
            },
            Some(o) => {
                let (o_routed, p_routed) = (old.is_routed(&o.name), new.is_routed(&p.name));
                let r = running(&p.name).unwrap_or_else(|| RunningPool::as_configured(o, o_routed));
                let same_target = same_process(o, o_routed, p, p_routed);
                // Slots past the new count are retired whatever they run.
                let keep = r.slots.len().min(p.count as usize);
                let stale = r.slots[..keep]
                    .iter()
                    .filter(|s| !RunningPool::runs(s, p, p_routed))
                    .count() as u32;
                // A roll toward this very spec goes on by itself.
                let replace = if same_target && r.rolling { 0 } else { stale };
                let cancel = r
                    .incoming
                    .iter()
                    .any(|s| !RunningPool::runs(s, p, p_routed));
                let resize = (o.count != p.count).then_some((o.count, p.count));
                let mut settings = settings_changed(o, p);
                settings.extend(old.supervision(&o.name).changed(new.supervision(&p.name)));
                if replace == 0 && !cancel && resize.is_none() && settings.is_empty() {
                    PoolChange::Unchanged {
                        name: p.name.clone(),
                    }
                } else {
                    PoolChange::Changed {
                        name: p.name.clone(),
                        resize,
                        replace,
                        cancel,
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
        ("log_buffer", a.log_buffer != b.log_buffer),
        ("metrics", a.metrics != b.metrics),
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
                    cancel,
                    settings,
                } => {
                    let mut what = Vec::new();
                    if let Some((a, b)) = resize {
                        what.push(format!("count {a}→{b}"));
                    }
                    if *replace > 0 {
                        what.push(format!("replace {replace} (rolling)"));
                    }
                    if *cancel {
                        what.push("cancel pending replacement".into());
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
                    cancel,
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
                    if *replace > 0 {
                        what.push(format!(
                            "process changed: replace {replace} instance(s) one at a time"
                        ));
                    }
                    if *cancel {
                        what.push(
                            "cancel the pending replacement (the running instances already run this spec and stay)"
                                .into(),
                        );
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
                replace: 0,
                cancel: false,
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
            BASE.replace("count = 2", "count = 2\nprotocol = \"tagged\""),
            BASE.replace("count = 2", "count = 2\nprotocol = \"node\""),
        ] {
            let p = diff(&cfg(BASE), &cfg(&new));
            assert!(
                matches!(
                    change_of(&p, "a"),
                    PoolChange::Changed {
                        replace: 2,
                        resize: None,
                        cancel: false,
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
            PoolChange::Changed { replace: 2, .. }
        ));
        assert!(matches!(
            change_of(&p, "b"),
            PoolChange::Changed { replace: 1, .. }
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
                replace: 0,
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
        assert!(
            text.contains("replace 1 instance(s) one at a time"),
            "{text}"
        );
        assert!(text.contains("pool b: unchanged"), "{text}");
    }

    /// Pool `a` of `running` runs `slots` (specs taken from the given configs), with a
    /// roll under way when `incoming` is given or `rolling` is set.
    fn running<'a>(
        slots: &[&'a Config],
        rolling: bool,
        incoming: Option<&'a Config>,
    ) -> RunningPool<'a> {
        let spec = |c: &'a Config| RunningSpec {
            spec: c.pool("a").expect("pool a"),
            routed: c.is_routed("a"),
        };
        RunningPool {
            slots: slots.iter().map(|c| spec(c)).collect(),
            rolling: rolling || incoming.is_some(),
            incoming: incoming.into_iter().map(spec).collect(),
        }
    }

    fn plan_with(old: &Config, new: &Config, r: RunningPool<'_>) -> Plan {
        diff_running(old, new, |name| (name == "a").then(|| r.clone()))
    }

    fn broken() -> String {
        BASE.replace("command = \"cat\"", "command = [\"/nonexistent\"]")
    }

    #[test]
    fn undoing_a_broken_edit_only_cancels_the_pending_replacement() {
        // Running: both slots still run `cat` (the broken replacement never took a
        // slot); the config says /nonexistent; the new config says `cat` again.
        let (good, bad) = (cfg(BASE), cfg(&broken()));
        let p = plan_with(&bad, &good, running(&[&good, &good], true, Some(&bad)));
        assert_eq!(
            change_of(&p, "a"),
            &PoolChange::Changed {
                name: "a".into(),
                resize: None,
                replace: 0,
                cancel: true,
                settings: vec![],
            }
        );
        assert_eq!(p.summary(), "~a cancel pending replacement");
        let text = p.to_string();
        assert!(
            !text.contains("replace 1") && !text.contains("replace 2"),
            "{text}"
        );
        assert!(text.contains("already run this spec and stay"), "{text}");
        // With no replacement waiting (already given up), there is nothing to do.
        let p = plan_with(&bad, &good, running(&[&good, &good], false, None));
        assert!(p.is_empty(), "{p}");
    }

    #[test]
    fn the_old_config_alone_would_replace_everything() {
        // The bug this module had: deciding from the configs alone.
        let (good, bad) = (cfg(BASE), cfg(&broken()));
        assert!(matches!(
            change_of(&diff(&bad, &good), "a"),
            PoolChange::Changed { replace: 2, .. }
        ));
    }

    #[test]
    fn a_roll_toward_the_same_spec_goes_on_untouched() {
        let (a, b) = (cfg(BASE), cfg(&BASE.replace("\"cat\"", "\"cat -u\"")));
        // Index 0 already replaced, index 1's replacement waiting: reloading B again.
        let p = plan_with(&b, &b, running(&[&b, &a], true, Some(&b)));
        assert!(p.is_empty(), "{p}");
    }

    #[test]
    fn half_done_roll_then_a_third_spec_replaces_every_instance() {
        let (a, b) = (cfg(BASE), cfg(&BASE.replace("\"cat\"", "\"cat -u\"")));
        let c = cfg(&BASE.replace("\"cat\"", "\"cat -v\""));
        let p = plan_with(&b, &c, running(&[&b, &a], true, Some(&b)));
        assert!(matches!(
            change_of(&p, "a"),
            PoolChange::Changed {
                replace: 2,
                cancel: true,
                ..
            }
        ));
        // Back to A instead: only the already replaced index 0 goes back.
        let p = plan_with(&b, &a, running(&[&b, &a], true, Some(&b)));
        assert!(matches!(
            change_of(&p, "a"),
            PoolChange::Changed {
                replace: 1,
                cancel: true,
                ..
            }
        ));
    }

    #[test]
    fn an_abandoned_replacement_is_retried_by_a_reload() {
        // The roll gave up (its replacement stopped for good): the slots still run A
        // although the config says B. Reloading B replaces them, like `failed`
        // instances get a fresh start.
        let (a, b) = (cfg(BASE), cfg(&BASE.replace("\"cat\"", "\"cat -u\"")));
        let p = plan_with(&b, &b, running(&[&a, &a], false, None));
        assert!(matches!(
            change_of(&p, "a"),
            PoolChange::Changed {
                replace: 2,
                cancel: false,
                resize: None,
                ..
            }
        ));
    }

    #[test]
    fn slots_past_the_new_count_are_retired_not_replaced() {
        let a = cfg(&BASE.replace("count = 2", "count = 3"));
        let b = cfg(&BASE
            .replace("\"cat\"", "\"cat -u\"")
            .replace("count = 2", "count = 1"));
        let p = plan_with(&a, &b, running(&[&a, &a, &a], false, None));
        assert!(matches!(
            change_of(&p, "a"),
            PoolChange::Changed {
                replace: 1,
                resize: Some((3, 1)),
                ..
            }
        ));
    }
}
