//! Routing logic without I/O: which instance gets a message, and in which order a
//! client's replies go out. The event loop owns sockets and pipes and asks these
//! functions for decisions.

pub mod ledger;
pub mod reorder;
pub mod strategy;
