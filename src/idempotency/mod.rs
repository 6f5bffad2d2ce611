//! Idempotency: a retried operation runs once and every retry gets the
//! first result (DESIGN.md "Idempotency", rules I1–I7; PROTOCOL.md lists
//! each with its test).
//!
//! - [`record`]: one completed operation per key, a register merged as a
//!   CRDT on every node, with its expiry (I6) and size limits.

pub mod record;

pub use record::{Lookup, Record, RecordError, Records};
