//! Pure logic of readiness, health probes, start order and memory limits (SPEC
//! section 10), for the event loop to drive: no I/O, no clock (every `now` is an
//! argument), no logging.
//!
//! - [`order`]: start and stop waves from `depends_on`, cycles, whether a pool's
//!   dependencies are met.
//! - [`ready`]: when a started instance becomes ready (`ready.log`, `ready.after`,
//!   `ready.probe`) or fails to (`ready.timeout`).
//! - [`probe`]: one instance's health probes: when the next is due, its timeout,
//!   consecutive failures, when to restart.
//! - [`exec`]: `exec` probes run a bounded number at a time.
//! - [`rss`]: `max_rss`, two checks in a row over the limit.

pub mod exec;
pub mod order;
pub mod probe;
pub mod ready;
pub mod rss;
