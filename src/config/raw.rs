//! The config file as written: serde types for each section, before validation.
//!
//! Every key is optional here (required keys are checked during validation, so a
//! missing key and a key dropped after a type error can be told apart), and every
//! table denies unknown keys. Leaf wrappers give messages of the form
//! "expected X, found Y".

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

pub(crate) const DURATION_EXPECTED: &str = "a duration string such as \"250ms\" or \"1m 30s\"";

pub(crate) const COMMAND_EXPECTED: &str = "a command: a non-empty array of strings such as \
     [\"python3\", \"upper.py\"] (run directly), or a non-empty string such as \
     \"python3 upper.py\" (run with /bin/sh -c)";

/// `[orchd]`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as [orchd] with log_level, control, drain_timeout, watch, error_prefix, max_clients, log_buffer, metrics"
)]
pub(crate) struct RawSettings {
    pub log_level: Option<String>,
    pub control: Option<String>,
    pub drain_timeout: Option<Dur>,
    pub watch: Option<bool>,
    pub error_prefix: Option<String>,
    pub max_clients: Option<UInt>,
    pub log_buffer: Option<Bytes>,
    pub metrics: Option<String>,
}

/// `[pool.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pool table such as [pool.NAME] with at least a command"
)]
pub(crate) struct RawPool {
    pub command: Option<RawCommand>,
    pub count: Option<UInt>,
    pub cwd: Option<String>,
    pub env: Option<BTreeMap<String, EnvValue>>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub restart: Option<String>,
    pub backoff: Option<RawBackoff>,
    pub give_up: Option<RawGiveUp>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<Dur>,
    pub max_inflight: Option<Inflight>,
    pub queue: Option<UInt>,
    pub ready: Option<RawReady>,
    pub health: Option<RawHealth>,
    pub depends_on: Option<Vec<String>>,
    pub rolling: Option<RawRolling>,
    pub max_rss: Option<Bytes>,
    pub protocol: Option<String>,
}

/// `ready = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { log = \"listening\" }, { after = \"2s\" } or { probe = true }, with an optional timeout"
)]
pub(crate) struct RawReady {
    pub log: Option<String>,
    pub after: Option<Dur>,
    pub probe: Option<bool>,
    pub timeout: Option<Dur>,
}

/// `health = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { send = \"PING\", expect = \"^PONG\", every = \"10s\", timeout = \"2s\", failures = 3 } or { exec = [\"curl\", \"-fsS\", \"URL\"] }"
)]
pub(crate) struct RawHealth {
    pub send: Option<String>,
    pub expect: Option<String>,
    pub exec: Option<RawCommand>,
    pub every: Option<Dur>,
    pub timeout: Option<Dur>,
    pub failures: Option<UInt>,
}

/// `rolling = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { parallel = 1, order = \"start-first\" }"
)]
pub(crate) struct RawRolling {
    pub parallel: Option<UInt>,
    pub order: Option<String>,
}

/// `backoff = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { initial = \"100ms\", max = \"30s\", factor = 2.0, jitter = 0.1, reset_after = \"10s\" }"
)]
pub(crate) struct RawBackoff {
    pub initial: Option<Dur>,
    pub max: Option<Dur>,
    pub factor: Option<Num>,
    pub jitter: Option<Num>,
    pub reset_after: Option<Dur>,
}

/// `give_up = { ... }`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { restarts = 10, within = \"60s\", cooldown = \"5m\" }"
)]
pub(crate) struct RawGiveUp {
    pub restarts: Option<UInt>,
    pub within: Option<Dur>,
    pub cooldown: Option<Dur>,
}

/// `[[route]]`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a route table written as [[route]] with at least from and to"
)]
pub(crate) struct RawRoute {
    pub from: Option<String>,
    pub mode: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<String>,
    pub to: Option<String>,
    pub strategy: Option<String>,
    pub key: Option<String>,
    pub timeout: Option<Dur>,
    pub retries: Option<UInt>,
    pub ordered: Option<bool>,
}

/// The longest duration any key accepts: 365 days. Far beyond any sensible timeout,
/// and small enough that every deadline `now + d` (and a backoff delay spread by
/// jitter, at most twice `max`) stays far from overflowing.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A humantime duration string, at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurVisitor)
    }
}

struct DurVisitor;

impl Visitor<'_> for DurVisitor {
    type Value = Dur;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DURATION_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
        let d = humantime::parse_duration(v.trim()).map_err(|_| {
            E::custom(format!(
                "expected a duration such as \"250ms\" or \"1m 30s\", found {}",
                super::source::quote(v)
            ))
        })?;
        if d > MAX_DURATION {
            return Err(E::custom(format!(
                "expected a duration of at most 365 days, found {}",
                super::source::quote(v)
            )));
        }
        Ok(Dur(d))
    }
}

/// An integer in `0..=u32::MAX`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UInt(pub u32);

impl<'de> Deserialize<'de> for UInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UIntVisitor)
    }
}

struct UIntVisitor;

fn uint_range_error<E: de::Error>(v: impl fmt::Display, negative: bool) -> E {
    if negative {
        E::custom(format!("expected a non-negative integer, found {v}"))
    } else {
        E::custom(format!(
            "expected an integer from 0 to {}, found {v}",
            u32::MAX
        ))
    }
}

impl Visitor<'_> for UIntVisitor {
    type Value = UInt;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<UInt, E> {
        u32::try_from(v)
            .map(UInt)
            .map_err(|_| uint_range_error(v, v < 0))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<UInt, E> {
        u32::try_from(v)
            .map(UInt)
            .map_err(|_| uint_range_error(v, false))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<UInt, E> {
        u32::try_from(v)
            .map(UInt)
            .map_err(|_| uint_range_error(v, v < 0))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<UInt, E> {
        u32::try_from(v)
            .map(UInt)
            .map_err(|_| uint_range_error(v, false))
    }
}

/// `max_inflight`: an integer, or `"auto"` (as [`UInt`]`(0)`, which a number never
/// is after validation).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Inflight {
    Auto,
    Fixed(UInt),
}

impl<'de> Deserialize<'de> for Inflight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(InflightVisitor)
    }
}

struct InflightVisitor;

impl Visitor<'_> for InflightVisitor {
    type Value = Inflight;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive integer or \"auto\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Inflight, E> {
        if v == "auto" {
            Ok(Inflight::Auto)
        } else {
            Err(E::custom(format!(
                "expected a positive integer or \"auto\", found \"{v}\""
            )))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Inflight, E> {
        UIntVisitor.visit_i64(v).map(Inflight::Fixed)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Inflight, E> {
        UIntVisitor.visit_u64(v).map(Inflight::Fixed)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Inflight, E> {
        UIntVisitor.visit_i128(v).map(Inflight::Fixed)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Inflight, E> {
        UIntVisitor.visit_u128(v).map(Inflight::Fixed)
    }
}

pub(crate) const BYTES_EXPECTED: &str =
    "a size: an integer number of bytes, or a string such as \"256KiB\" or \"4MiB\"";

/// A size in bytes: an integer, or a string of digits with an optional unit `B`,
/// `KiB`, `MiB` or `GiB` (case-insensitive, spaces allowed before the unit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BytesVisitor)
    }
}

struct BytesVisitor;

/// Parses `"256KiB"`, `"4 MiB"`, `"100"`, `"100B"`.
pub(crate) fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Visitor<'_> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(BYTES_EXPECTED)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
        u64::try_from(v)
            .map(Bytes)
            .map_err(|_| E::custom(format!("expected a non-negative size, found {v}")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
        Ok(Bytes(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        parse_bytes(v).map(Bytes).ok_or_else(|| {
            E::custom(format!(
                "expected a size such as \"256KiB\", \"4MiB\" or a number of bytes, found {}",
                super::source::quote(v)
            ))
        })
    }
}

/// A number: a TOML float or integer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Num(pub f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumVisitor)
    }
}

struct NumVisitor;

impl Visitor<'_> for NumVisitor {
    type Value = Num;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
        Ok(Num(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
        Ok(Num(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
        Ok(Num(v as f64))
    }
}

/// An environment value: a string, or an integer or boolean written without quotes
/// (`PORT = 8080`), kept as its decimal text.
#[derive(Debug, Clone)]
pub(crate) struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvValueVisitor)
    }
}

struct EnvValueVisitor;

impl Visitor<'_> for EnvValueVisitor {
    type Value = EnvValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (or an integer or boolean)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<EnvValue, E> {
        Ok(EnvValue(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }
}

/// `command`: an argv array or a shell string, both non-empty.
#[derive(Debug, Clone)]
pub(crate) enum RawCommand {
    Argv(Vec<String>),
    Shell(String),
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CommandVisitor)
    }
}

struct CommandVisitor;

fn command_error<E: de::Error>(found: &str) -> E {
    E::custom(format!("expected {COMMAND_EXPECTED}, found {found}"))
}

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = RawCommand;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(COMMAND_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
        if v.trim().is_empty() {
            Err(command_error(&format!(
                "an empty string {}",
                super::source::quote(v)
            )))
        } else {
            Ok(RawCommand::Shell(v.to_string()))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommand, A::Error> {
        let mut argv = Vec::new();
        let mut bad: Option<(usize, &'static str)> = None;
        while let Some(elem) = seq.next_element::<Elem>()? {
            match elem {
                Elem::Str(s) => argv.push(s),
                Elem::Other(kind) => {
                    if bad.is_none() {
                        bad = Some((argv.len(), kind));
                    }
                    argv.push(String::new());
                }
            }
        }
        if let Some((i, kind)) = bad {
            return Err(command_error(&format!(
                "an array whose element {} is {kind}",
                i + 1
            )));
        }
        match argv.first() {
            None => Err(command_error("an empty array")),
            Some(p) if p.is_empty() => Err(command_error(
                "an array whose first element (the program) is empty",
            )),
            Some(_) => Ok(RawCommand::Argv(argv)),
        }
    }
}

/// One element of a command array: a string, or the kind of the non-string found.
enum Elem {
    Str(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElemVisitor)
    }
}

struct ElemVisitor;

impl<'de> Visitor<'de> for ElemVisitor {
    type Value = Elem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Elem, E> {
        Ok(Elem::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Elem, E> {
        Ok(Elem::Str(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Elem, E> {
        Ok(Elem::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Elem, E> {
        Ok(Elem::Other("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Elem, E> {
        Ok(Elem::Other("an integer"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Elem, E> {
        Ok(Elem::Other("an integer"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Elem, E> {
        Ok(Elem::Other("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Elem, E> {
        Ok(Elem::Other("a float"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Elem::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Elem, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Elem::Other("a table or datetime"))
    }
}
