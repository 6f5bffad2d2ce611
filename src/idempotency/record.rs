//! An idempotency record: one key's completed operation (its result,
//! the request's fingerprint, the claim it ran under), a register
//! replicated to every node and merged as a state-based CRDT.
//!
//! Owns: what a record holds, its merge order, when it expires, and the
//! checks on its size. Must not: decide whether a record is committed or
//! may be replayed (I2), grant claims (the leader's lock table does, in
//! a namespace of their own, I1), read a clock (the wall-clock time of I6
//! is handed in), or persist.
//!
//! Only completed operations are records. A claim in progress (its
//! fingerprint, its `recovered` bit) lives with the claim itself, so that
//! "completed beats in progress" is how a key's state is read (a record,
//! else a live claim), not a merge order: a marker of a later claim
//! ranked above a record would hide a committed result the claimant then
//! replays (the claim ends, the marker stays); ranked below it, it would
//! be overwritten on some replicas and not on others, and survive the
//! record's expiry on only those (`record::tests` found that).
//!
//! The merge order is total over every field, so two different records
//! of one key never tie and a merge never depends on which arrived
//! first: the higher claim token, then the later expiry, then the
//! remaining fields as a tie-breaker (two records of one claim differ
//! only if something broke; they still merge the same way everywhere).
//!
//! Expiry (I6): a replica drops a record `skew` after its
//! `expires_at_ms`, each on its own wall clock, and refuses an expired one
//! on arrival, so garbage collection needs no coordination. It commutes
//! with merging because a record never expires before one it outranks:
//! a key is claimed again only once its record has expired (or never
//! reached a majority), and the leader stamps a record's expiry no
//! earlier than that of any record of its key it knows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::Token;
use crate::replication::{Merge, Replica};

pub use crate::locks::claim::{
    FINGERPRINT_BYTES_MAX, KEY_BYTES_MAX, RECORD_TTL_MAX as TTL_MAX, RECORD_TTL_MIN as TTL_MIN,
    RESULT_BYTES_MAX,
};

/// One key's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The idempotency key.
    pub key: String,
    /// The token of the claim it was written under (a fencing token).
    pub claim: Token,
    /// The request's fingerprint: a retry with another one is a mismatch
    /// (I7).
    pub fingerprint: Vec<u8>,
    /// The claim that ran the operation was taken after an earlier
    /// claim of the key ended by expiry, without a completion (I5): that
    /// claimant may have done part of the work.
    pub recovered: bool,
    /// Wall-clock milliseconds since the Unix epoch after which the
    /// record may be dropped (stamped by the leader at commit, I6).
    pub expires_at_ms: u64,
    /// The result's bytes, as the operation returned them; replayed to
    /// every retry.
    pub result: Vec<u8>,
    /// Known to be held by a majority of voters (I2): set by the leader
    /// once a majority acked it (its commit notice) or by a majority
    /// read, and carried on by every merge after. Only a committed record
    /// is replayed or answered to a read.
    pub committed: bool,
}

impl Record {
    /// The committed record of a claim's completion (from the leader's
    /// commit notice or its answer to a begin); `None` if the facts hold
    /// no completion.
    pub fn committed(key: &str, claim: Token, facts: &crate::locks::ClaimFacts) -> Option<Record> {
        let completion = facts.completion.as_ref()?;
        Some(Record {
            key: key.to_string(),
            claim,
            fingerprint: facts.fingerprint.clone(),
            recovered: facts.recovered,
            expires_at_ms: completion.expires_at_ms,
            result: completion.result.clone(),
            committed: true,
        })
    }

    /// True if the record may be dropped at wall-clock `now_ms`: `skew`
    /// after its expiry (I6).
    pub fn is_expired(&self, now_ms: u64, skew: Duration) -> bool {
        let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        self.expires_at_ms.saturating_add(skew_ms) <= now_ms
    }

    /// Checks the sizes a peer or a client could get wrong; a record that
    /// fails is refused, never stored.
    pub fn check(&self) -> Result<(), RecordError> {
        check_key(&self.key)?;
        if self.fingerprint.len() > FINGERPRINT_BYTES_MAX {
            return Err(RecordError::FingerprintTooLong {
                bytes: self.fingerprint.len(),
            });
        }
        if self.result.len() > RESULT_BYTES_MAX {
            return Err(RecordError::ResultTooLarge {
                bytes: self.result.len(),
            });
        }
        Ok(())
    }
}

/// Checks an idempotency key: 1 to [`KEY_BYTES_MAX`] bytes.
pub fn check_key(key: &str) -> Result<(), RecordError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(RecordError::InvalidKey { bytes: key.len() });
    }
    Ok(())
}

/// Why a record (or a key) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The key is empty or longer than [`KEY_BYTES_MAX`] bytes: use a
    /// shorter one (a hash of a long one, say).
    #[error("an idempotency key is 1 to {KEY_BYTES_MAX} bytes, not {bytes}")]
    InvalidKey {
        /// The key's length.
        bytes: usize,
    },
    /// The result is over [`RESULT_BYTES_MAX`]: keep the bulk elsewhere
    /// and record a reference to it.
    #[error("a result is at most {RESULT_BYTES_MAX} bytes, not {bytes}")]
    ResultTooLarge {
        /// The result's length.
        bytes: usize,
    },
    /// The fingerprint is over [`FINGERPRINT_BYTES_MAX`]: send a hash of
    /// the request, not the request.
    #[error("a fingerprint is at most {FINGERPRINT_BYTES_MAX} bytes, not {bytes}")]
    FingerprintTooLong {
        /// The fingerprint's length.
        bytes: usize,
    },
    /// Two records of different keys cannot merge (a bug, not a peer's
    /// input: replicas merge by key).
    #[error("records of the keys {left:?} and {right:?} cannot merge")]
    OtherKey {
        /// This record's key.
        left: String,
        /// The other's.
        right: String,
    },
}

/// Records replicate by the merge of [`crate::replication`]: one register
/// per key, the higher rank wins.
impl Merge for Record {
    type Key = String;
    type Rank<'a> = (Token, u64, bool, &'a [u8], &'a [u8], bool);

    fn key(&self) -> &String {
        &self.key
    }

    /// The higher claim, then the later expiry; the rest breaks ties, so
    /// the order is total. Last, a committed copy over the same record
    /// uncommitted: knowing it is on a majority only ever grows.
    fn rank(&self) -> Self::Rank<'_> {
        (
            self.claim,
            self.expires_at_ms,
            self.recovered,
            &self.fingerprint,
            &self.result,
            self.committed,
        )
    }
}

/// A record is a register whose merge keeps the higher rank: a join
/// (commutative, associative, idempotent) since the rank is a total
/// order.
impl crdts::CvRDT for Record {
    type Validation = RecordError;

    fn validate_merge(&self, other: &Self) -> Result<(), RecordError> {
        if self.key != other.key {
            return Err(RecordError::OtherKey {
                left: self.key.clone(),
                right: other.key.clone(),
            });
        }
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        if self.key == other.key && other.rank() > self.rank() {
            *self = other;
        }
    }
}

/// What a request finds in a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A committed record of this request: replay its result.
    Replay(&'a Record),
    /// The key's record is of another request (I7).
    Mismatch,
    /// Nothing to replay here: ask the leader.
    Unknown,
}

/// A node's replica of the records, with their expiry (I6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    replica: Replica<Record>,
}

impl Records {
    /// Merges `record` unless it has expired at wall-clock `now_ms` (an
    /// expired record is never taken back, so a dropped one does not
    /// return from a peer that still has it); true if it changed the
    /// replica.
    pub fn merge(&mut self, record: Record, now_ms: u64, skew: Duration) -> bool {
        if record.is_expired(now_ms, skew) {
            return false;
        }
        self.replica.merge(record)
    }

    /// Drops every record expired at `now_ms`; how many went.
    pub fn expire(&mut self, now_ms: u64, skew: Duration) -> usize {
        self.replica.retain(|r| !r.is_expired(now_ms, skew))
    }

    /// The record of `key`, unless it has expired at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64, skew: Duration) -> Option<&Record> {
        self.replica
            .get(key)
            .filter(|r| !r.is_expired(now_ms, skew))
    }

    /// What a request of `fingerprint` for `key` finds here at `now_ms`
    /// (I2, I7): a committed record to replay, a record of another request
    /// (a mismatch, whether committed or not: the key is taken), or
    /// nothing to go on (no record, or one not known to be committed).
    pub fn lookup(&self, key: &str, fingerprint: &[u8], now_ms: u64, skew: Duration) -> Lookup<'_> {
        match self.get(key, now_ms, skew) {
            Some(r) if r.fingerprint != fingerprint => Lookup::Mismatch,
            Some(r) if r.committed => Lookup::Replay(r),
            _ => Lookup::Unknown,
        }
    }

    /// Every record held, expired or not, by key.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.replica.entries()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.replica.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.replica.is_empty()
    }
}

#[cfg(test)]
mod tests;
