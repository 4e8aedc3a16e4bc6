//! Reload as a diff (SPEC section 6), without I/O: [`diff`] compares the running config
//! with a new one and returns a [`Plan`]; [`apply::steps`] turns it into the steps the
//! event loop performs. Replacing a pool's instances is a [`roll::Roll`], a pure state
//! machine the event loop drives.

pub mod apply;
pub mod diff;
pub mod roll;

pub use diff::{diff, Plan, PoolChange};
