//! Idempotency: a retried operation runs once and every retry gets the
//! first result (DESIGN.md "Idempotency", rules I1–I7; PROTOCOL.md lists
//! each with its test).
//!
//! - [`record`]: one completed operation per key, a register merged as a
//!   CRDT on every node, with its expiry (I6) and size limits.
//! - [`reconcile`]: anti-entropy between two replicas, whose bytes grow
//!   with the records that differ (an IBLT sized by an estimate of the difference).

pub mod reconcile;
pub mod record;

pub use record::{Lookup, Record, RecordError, Records};
