//! Routing logic without I/O: the message ledger (every message from the line a
//! client sent to the reply it gets), which instance gets a message, and in which
//! order a client's replies go out. The event loop owns sockets and pipes, feeds the
//! ledger what happened and performs what it asks for.

pub mod ledger;
pub mod reorder;
pub mod strategy;
