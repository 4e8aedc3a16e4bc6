//! Run-time arithmetic on a config that passed validation never panics or overflows:
//! restart delays for n = 1..64 (crashes and failed spawns, every jitter extreme), the
//! lifecycle's backoff and give-up deadlines, and every `Instant + Duration` the daemon
//! computes from the config (stop_timeout, drain_timeout, route timeout, cooldowns),
//! both now and after a long uptime. Durations that pass `--check` must be usable.
//!
//! Input: both TOML config text (seeds: config/*.toml, examples/*.toml) and, read
//! again through `arbitrary`, a generated config whose durations and numbers are drawn
//! from their extremes (text mutation alone rarely builds "18446744073709551615s").
#![no_main]

use std::cell::RefCell;
use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use orchd::config::{describe, parse_str, Config, Pool};
use orchd::supervisor::lifecycle::{
    backoff_delay, AfterExit, Lifecycle, State, FAILED_SPAWN_MIN_INITIAL, START_GRACE,
};
use orchd::sys::Exit;
use orchd::timers::Timers;

/// How long orchd may have been up when it adds a configured duration to the clock.
const UPTIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The extremes of the jitter's random number in [0, 1).
const RANDS: [f64; 3] = [0.0, 0.5, 1.0 - f64::EPSILON];

/// `at + d` as the daemon does it: must not overflow for a validated duration.
fn deadline(at: Instant, d: Duration, what: &str) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| panic!("{what}: Instant + {d:?} overflows"))
}

fn check_backoff(p: &Pool, now: Instant, timers: &mut Timers<u32>) {
    let b = &p.backoff;
    let mut failed_spawn = *b;
    failed_spawn.initial = b.initial.max(FAILED_SPAWN_MIN_INITIAL);
    failed_spawn.max = b.max.max(failed_spawn.initial);
    for backoff in [b, &failed_spawn] {
        let bound = backoff.max.as_secs_f64() * (1.0 + backoff.jitter) * (1.0 + 1e-9) + 1e-9;
        for n in 1..=64 {
            for r in RANDS {
                let d = backoff_delay(backoff, n, r);
                assert!(
                    d.as_secs_f64() <= bound,
                    "{}: restart {n} delay {d:?} over max {:?} + jitter",
                    p.name,
                    backoff.max
                );
                timers.arm(deadline(now, d, "restart delay"), n);
            }
        }
    }
}

/// Drive one instance slot through up to 64 exits, following its decisions in time.
fn run_lifecycle(p: &Pool, start: Instant, rand01: f64) {
    let mut life = Lifecycle::new(start, 0);
    let mut t = start;
    for i in 0..64u32 {
        life.spawned(1000 + i, t);
        let _ = life.state.name(deadline(t, START_GRACE, "start grace"));
        let exit = match i % 5 {
            4 => None, // the spawn failed
            3 => Some(Exit::Signal {
                signal: 9,
                core_dumped: false,
            }),
            _ => Some(Exit::Code(1)),
        };
        // A run long enough to reset the backoff (as long as a process can run).
        let ran_for = if i % 7 == 6 {
            p.backoff.reset_after.min(UPTIME)
        } else {
            Duration::ZERO
        };
        let exited_at = deadline(t, ran_for, "ran for reset_after");
        match life.exited(exit, ran_for, exited_at, p, rand01) {
            AfterExit::Restart { delay, .. } => {
                let State::Backoff { until } = life.state else {
                    panic!("restart without backoff state: {:?}", life.state);
                };
                assert_eq!(Some(until), exited_at.checked_add(delay));
                t = until;
            }
            AfterExit::GiveUp { cooldown } => {
                let State::Failed { until } = life.state else {
                    panic!("give up without failed state: {:?}", life.state);
                };
                assert_eq!(until, cooldown.map(|c| deadline(exited_at, c, "cooldown")));
                // Back after the cooldown, or at the next reload.
                t = until.unwrap_or(exited_at);
                life.reset();
            }
            AfterExit::Stay => return,
        }
    }
}

fn check(config: &Config) {
    let _ = describe(config);
    let now = Instant::now();
    let later = deadline(now, UPTIME, "uptime");
    let mut timers = Timers::new();
    for at in [now, later] {
        timers.arm(
            deadline(at, config.settings.drain_timeout, "drain_timeout"),
            0,
        );
        for p in &config.pools {
            timers.arm(deadline(at, p.stop_timeout, "stop_timeout"), 1);
            // `reset_after` and `give_up.within` are only compared with elapsed times
            // (run_lifecycle covers them); a cooldown is a deadline.
            if let Some(c) = p.give_up.and_then(|g| g.cooldown) {
                timers.arm(deadline(at, c, "give_up.cooldown"), 4);
            }
        }
        for r in &config.routes {
            if let Some(t) = r.timeout {
                timers.arm(deadline(at, t, "route timeout"), 5);
            }
        }
    }
    for p in &config.pools {
        check_backoff(p, now, &mut timers);
        for r in RANDS {
            run_lifecycle(p, now, r);
        }
    }
    // Every deadline armed comes out, in order.
    let mut last = None;
    let end = timers.next_deadline();
    while let Some(at) = timers.next_deadline() {
        assert!(last.is_none_or(|l| l <= at));
        last = Some(at);
        let _ = timers.pop_due(at);
    }
    assert!(end.is_none() || last.is_some());
}

/// A humantime duration: one or two parts, each a number from an edge of u64 and a unit.
fn duration(u: &mut Unstructured) -> Result<String> {
    let mut parts = Vec::new();
    for _ in 0..u.int_in_range(1..=2)? {
        let n: u64 = match u.int_in_range(0..=3)? {
            0 => u.int_in_range(0..=1000)?,
            1 => u64::MAX - u.int_in_range(0..=1000)?,
            2 => 1 << u.int_in_range(0..=63)?,
            _ => u.arbitrary()?,
        };
        let unit = u.choose(&["ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y"])?;
        parts.push(format!("{n}{unit}"));
    }
    Ok(parts.join(" "))
}

/// A TOML float.
fn float(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=2)? {
        0 => u
            .choose(&["0.0", "0.5", "1.0", "2.0", "1e300", "inf", "nan"])?
            .to_string(),
        1 => format!("{:?}", u.int_in_range(0..=1_000_000u32)? as f64 / 1000.0),
        _ => match u.arbitrary::<f64>()? {
            f if f.is_finite() => format!("{f:?}"),
            _ => "inf".into(),
        },
    })
}

/// `key = "DURATION", ` with probability 1/2.
fn opt_duration(u: &mut Unstructured, key: &str) -> Result<String> {
    Ok(if u.arbitrary()? {
        format!("{key} = \"{}\", ", duration(u)?)
    } else {
        String::new()
    })
}

/// A config built from `u`: every duration key, each present or not.
fn generated(u: &mut Unstructured) -> Result<String> {
    let mut t = String::new();
    if u.arbitrary()? {
        t += &format!("[orchd]\ndrain_timeout = \"{}\"\n", duration(u)?);
    }
    let pools = u.int_in_range(1..=3)?;
    for i in 0..pools {
        t += &format!("[pool.p{i}]\ncommand = [\"cat\"]\n");
        let restart = u.choose(&["always", "on-failure", "never"])?;
        t += &format!("restart = \"{restart}\"\n");
        if u.arbitrary()? {
            let mut b = opt_duration(u, "initial")? + &opt_duration(u, "max")?;
            b += &opt_duration(u, "reset_after")?;
            if u.arbitrary()? {
                b += &format!("factor = {}, ", float(u)?);
            }
            if u.arbitrary()? {
                b += &format!("jitter = {}, ", float(u)?);
            }
            t += &format!("backoff = {{ {} }}\n", b.trim_end_matches([',', ' ']));
        }
        if u.arbitrary()? {
            let restarts: u32 = u.arbitrary()?;
            let cooldown = opt_duration(u, "cooldown")?;
            let within = duration(u)?;
            t += &format!(
                "give_up = {{ {cooldown}restarts = {restarts}, within = \"{within}\" }}\n"
            );
        }
        t += &opt_duration(u, "stop_timeout")?.replace(", ", "\n");
    }
    for i in 0..u.int_in_range(0..=2)? {
        t += &format!(
            "[[route]]\nfrom = \"tcp://127.0.0.1:{}\"\nto = \"p{}\"\n",
            7000 + i,
            i % pools
        );
        t += &opt_duration(u, "timeout")?.replace(", ", "\n");
    }
    Ok(t)
}

thread_local! {
    /// The config being checked, printed when a check panics: a generated config is
    /// not visible in the crash file.
    static CURRENT: RefCell<String> = const { RefCell::new(String::new()) };
}

fn parse_and_check(text: &str) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            CURRENT.with(|c| eprintln!("config:\n{}\n(end of config)", c.borrow()));
            previous(info);
        }));
    });
    if let Ok(config) = parse_str(Path::new("/tmp/fuzz/orchd.toml"), text) {
        CURRENT.with(|c| text.clone_into(&mut c.borrow_mut()));
        check(&config);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        parse_and_check(text);
    }
    if let Ok(text) = generated(&mut Unstructured::new(data)) {
        parse_and_check(&text);
    }
});
