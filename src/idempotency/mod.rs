//! Idempotency: a retried operation runs once and every retry gets the
//! first result (DESIGN.md "Idempotency", rules I1–I7; PROTOCOL.md lists
//! each with its test).
//!
//! - [`record`]: one completed operation per key, a register merged as a
//!   CRDT on every node, with its expiry (I6) and size limits.
//! - [`reconcile`]: anti-entropy between two replicas, whose bytes grow
//!   with the records that differ (an IBLT sized by an estimate of the difference).

pub mod client;
#[cfg(feature = "sim")]
pub mod history;
pub mod reconcile;
pub mod record;

pub use client::{Begun, ClaimInfo, IdempotencyError, Idempotent, Outcome};
pub use record::{Lookup, Record, RecordError, Records};

use std::sync::Mutex;
use std::time::Duration;

use crate::ids::Token;
use crate::locks::ClaimFacts;

/// How far apart two nodes' wall clocks may be: a replica drops a record
/// this long after its expiry (I6), so a peer whose clock runs behind
/// does not send it back as new.
pub const SKEW: Duration = crate::locks::claim::RECORD_SKEW;

/// A node's records, shared by its driver (commit notices), its RPC
/// service (notices from the leader) and its API (local replays).
#[derive(Debug, Default)]
pub struct Store {
    records: Mutex<Records>,
    /// This node's wall clock's offset from the leader's, last measured,
    /// in milliseconds.
    offset_ms: std::sync::atomic::AtomicI64,
}

impl Store {
    /// Takes a committed completion in (from the leader's commit notice
    /// or its answer to a begin); true if it was news.
    pub fn learn(&self, key: &str, claim: Token, facts: &ClaimFacts, now_ms: u64) -> bool {
        let Some(record) = Record::committed(key, claim, facts) else {
            return false;
        };
        if record.check().is_err() {
            return false;
        }
        self.lock().merge(&record, now_ms, SKEW)
    }

    /// What a request of `fingerprint` for `key` finds here at `now_ms`.
    /// A record is replayed until its expiry (the leader claims the key
    /// again from then on) and kept [`SKEW`] longer.
    pub fn lookup(&self, key: &str, fingerprint: &[u8], now_ms: u64) -> Lookup {
        self.lock().lookup(key, fingerprint, now_ms, Duration::ZERO)
    }

    /// The committed record of `key`, unless expired at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<Record> {
        self.lock()
            .get(key, now_ms, Duration::ZERO)
            .filter(|r| r.committed)
    }

    /// Drops the records expired at `now_ms` (plus [`SKEW`]); how many.
    pub fn expire(&self, now_ms: u64) -> usize {
        self.lock().expire(now_ms, SKEW).len()
    }

    /// Every record held at `now_ms`, by key, less those that may be
    /// dropped.
    pub fn snapshot(&self, now_ms: u64) -> Vec<Record> {
        self.lock()
            .records()
            .filter(|r| !r.is_expired(now_ms, SKEW))
            .collect()
    }

    /// The ids of the records to reconcile at `now_ms`: every one held,
    /// less those that may be dropped.
    pub fn ids(&self, now_ms: u64) -> Vec<u64> {
        self.lock().ids(now_ms, SKEW)
    }

    /// The records of the ids in `wanted` (sorted) held at `now_ms`.
    pub fn of_ids(&self, wanted: &[u64], now_ms: u64) -> Vec<Record> {
        self.lock().of_ids(wanted, now_ms, SKEW)
    }

    /// Merges records a peer sent (anti-entropy): each checked, expired
    /// ones refused; how many were news.
    pub fn merge_all(&self, records: Vec<Record>, now_ms: u64) -> usize {
        let mut mine = self.lock();
        records
            .into_iter()
            .filter(|r| r.check().is_ok())
            .filter(|r| mine.merge(r, now_ms, SKEW))
            .count()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Notes this node's wall clock's offset from the leader's (ahead is positive).
    pub fn set_offset(&self, ms: i64) {
        self.offset_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The offset last measured if it is beyond `S/2` (I6): this node
    /// then answers "unavailable" for idempotency, since it would drop,
    /// replay or spread records on a clock the others do not share.
    pub fn skewed(&self) -> Option<i64> {
        let ms = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        (ms.unsigned_abs() > SKEW.as_millis() as u64 / 2).then_some(ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        // A panic while holding the lock leaves records that are each
        // whole (merges replace one record at a time): go on with them.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}
