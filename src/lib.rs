//! orchd: a declarative process orchestrator.
//!
//! One TOML file describes pools of workers and routes that feed them newline-framed
//! messages; one single-threaded `mio` loop ([`daemon`]) supervises the processes,
//! routes the messages and applies config edits live. Pure logic lives in plain
//! modules ([`config`], [`supervisor::lifecycle`], [`router`], [`framing`], [`timers`],
//! [`reload`]); `daemon` wires it to I/O; [`sys`] holds the only `unsafe`.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod framing;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod supervisor;
pub mod sys;
pub mod timers;
