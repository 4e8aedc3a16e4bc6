//! Pure supervision logic (lifecycle, backoff) and spawning.

pub mod lifecycle;
pub mod spawn;
