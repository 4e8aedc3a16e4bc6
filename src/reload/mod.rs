//! Reload as a diff (SPEC section 6), without I/O: [`diff`] compares the running config
//! with a new one and returns a [`Plan`]; the event loop executes it.

pub mod diff;

pub use diff::{diff, Plan, PoolChange};
