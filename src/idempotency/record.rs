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
use crate::replication::Merge;

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

    /// The record as a claim's facts (the leader answers a begin with
    /// them); its TTL is not kept, only its expiry.
    pub fn facts(&self) -> crate::locks::ClaimFacts {
        crate::locks::ClaimFacts {
            completion: Some(crate::locks::Completion {
                expires_at_ms: self.expires_at_ms,
                result: self.result.clone(),
            }),
            recovered: self.recovered,
            fingerprint: self.fingerprint.clone(),
            record_ttl_ms: 0,
        }
    }

    /// Its bytes, at least as encoded: key, fingerprint, result and
    /// [`RECORD_FIXED_BYTES`].
    pub fn weight(&self) -> usize {
        self.key.len() + self.fingerprint.len() + self.result.len() + RECORD_FIXED_BYTES
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A committed record of this request: replay its result.
    Replay(Record),
    /// The key's record is of another request (I7).
    Mismatch,
    /// Nothing to replay here: ask the leader.
    Unknown,
}

impl Record {
    /// The record's id: a stable 64-bit hash of all of it (its postcard
    /// encoding, a documented stable format, with FNV-1a and the
    /// splitmix64 finalizer), the same on every build. Anti-entropy
    /// compares replicas by these ids; a replica computes each once, when
    /// the record arrives.
    pub fn id(&self) -> u64 {
        // Invariant: a record always encodes (postcard fails only on
        // types it cannot represent, and a record has none).
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        mix(h)
    }
}

/// The splitmix64 finalizer: every input bit moves every output bit.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A record as a replica keeps it: key, fingerprint and result in one
/// allocation (three would cost three allocator headers and three
/// 24-byte vectors a record), its id computed once. Ordered by key
/// bytes, the order of the key strings; equal by key too, as a set
/// element (two whole records compare with [`Packed::same`]).
#[derive(Debug, Clone)]
struct Packed {
    /// The key, the fingerprint, the result, one after the other.
    bytes: Box<[u8]>,
    claim: Token,
    expires_at_ms: u64,
    id: u64,
    /// Within [`KEY_BYTES_MAX`] (checked before packing).
    key_len: u8,
    /// Within [`FINGERPRINT_BYTES_MAX`] (checked before packing).
    fingerprint_len: u16,
    recovered: bool,
    committed: bool,
}

/// What a record's encoding adds to its key, fingerprint and result at
/// most: the claim token, the expiry, the three lengths and the flags.
pub const RECORD_FIXED_BYTES: usize = 10 + 10 + 3 * 3 + 2;
/// The largest record's [`Record::weight`].
pub const RECORD_WEIGHT_MAX: usize =
    KEY_BYTES_MAX + FINGERPRINT_BYTES_MAX + RESULT_BYTES_MAX + RECORD_FIXED_BYTES;

const _: () = assert!(KEY_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(FINGERPRINT_BYTES_MAX <= u16::MAX as usize);

impl Packed {
    /// Packs a record whose sizes passed [`Record::check`]; `None` if not.
    fn of(record: &Record) -> Option<Packed> {
        record.check().ok()?;
        let mut bytes =
            Vec::with_capacity(record.key.len() + record.fingerprint.len() + record.result.len());
        bytes.extend_from_slice(record.key.as_bytes());
        bytes.extend_from_slice(&record.fingerprint);
        bytes.extend_from_slice(&record.result);
        Some(Packed {
            bytes: bytes.into_boxed_slice(),
            claim: record.claim,
            expires_at_ms: record.expires_at_ms,
            id: record.id(),
            key_len: u8::try_from(record.key.len()).ok()?,
            fingerprint_len: u16::try_from(record.fingerprint.len()).ok()?,
            recovered: record.recovered,
            committed: record.committed,
        })
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..usize::from(self.key_len)]
    }

    fn fingerprint(&self) -> &[u8] {
        let from = usize::from(self.key_len);
        &self.bytes[from..from + usize::from(self.fingerprint_len)]
    }

    fn result(&self) -> &[u8] {
        &self.bytes[usize::from(self.key_len) + usize::from(self.fingerprint_len)..]
    }

    /// The rank of [`Record`]'s merge, read off the packed bytes.
    fn rank(&self) -> <Record as Merge>::Rank<'_> {
        (
            self.claim,
            self.expires_at_ms,
            self.recovered,
            self.fingerprint(),
            self.result(),
            self.committed,
        )
    }

    fn is_expired(&self, now_ms: u64, skew: Duration) -> bool {
        let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        self.expires_at_ms.saturating_add(skew_ms) <= now_ms
    }

    fn unpack(&self) -> Record {
        Record {
            // Invariant: packed from a `String`.
            key: String::from_utf8_lossy(self.key()).into_owned(),
            claim: self.claim,
            fingerprint: self.fingerprint().to_vec(),
            recovered: self.recovered,
            expires_at_ms: self.expires_at_ms,
            result: self.result().to_vec(),
            committed: self.committed,
        }
    }
}

impl Packed {
    /// Every field equal.
    fn same(&self, other: &Packed) -> bool {
        self.bytes == other.bytes
            && self.claim == other.claim
            && self.expires_at_ms == other.expires_at_ms
            && self.id == other.id
            && self.key_len == other.key_len
            && self.fingerprint_len == other.fingerprint_len
            && self.recovered == other.recovered
            && self.committed == other.committed
    }
}

impl PartialEq for Packed {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Packed {}

impl Ord for Packed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(other.key())
    }
}

impl PartialOrd for Packed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::borrow::Borrow<[u8]> for Packed {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// A node's replica of the records, with their expiry (I6): per key the
/// highest-ranked record, as [`crate::replication::Replica`] merges, kept packed.
#[derive(Debug, Clone, Default)]
pub struct Records {
    packed: std::collections::BTreeSet<Packed>,
}

/// Two replicas are equal when they hold the same records, every field.
impl PartialEq for Records {
    fn eq(&self, other: &Self) -> bool {
        self.packed.len() == other.packed.len()
            && self
                .packed
                .iter()
                .zip(&other.packed)
                .all(|(a, b)| a.same(b))
    }
}

impl Eq for Records {}

impl Records {
    /// Merges `record` unless it has expired at wall-clock `now_ms` (an
    /// expired record is never taken back, so a dropped one does not
    /// return from a peer that still has it) or fails [`Record::check`];
    /// true if it changed the replica.
    pub fn merge(&mut self, record: &Record, now_ms: u64, skew: Duration) -> bool {
        if record.is_expired(now_ms, skew) {
            return false;
        }
        if let Some(held) = self.packed.get(record.key.as_bytes())
            && held.rank() >= record.rank()
        {
            return false;
        }
        let Some(packed) = Packed::of(record) else {
            return false;
        };
        self.packed.replace(packed);
        true
    }

    /// Drops every record expired at `now_ms`: the keys that went.
    pub fn expire(&mut self, now_ms: u64, skew: Duration) -> Vec<Vec<u8>> {
        let mut gone = Vec::new();
        self.packed.retain(|p| {
            let expired = p.is_expired(now_ms, skew);
            if expired {
                gone.push(p.key().to_vec());
            }
            !expired
        });
        gone
    }

    /// True if a record of the key `key` (its bytes) is held, expired or not.
    pub fn holds(&self, key: &[u8]) -> bool {
        self.packed.contains(key)
    }

    /// The record of `key`, unless it has expired at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64, skew: Duration) -> Option<Record> {
        self.packed
            .get(key.as_bytes())
            .filter(|p| !p.is_expired(now_ms, skew))
            .map(Packed::unpack)
    }

    /// What a request of `fingerprint` for `key` finds here at `now_ms`
    /// (I2, I7): a committed record to replay, a record of another request
    /// (a mismatch, whether committed or not: the key is taken), or
    /// nothing to go on (no record, or one not known to be committed).
    pub fn lookup(&self, key: &str, fingerprint: &[u8], now_ms: u64, skew: Duration) -> Lookup {
        match self
            .packed
            .get(key.as_bytes())
            .filter(|p| !p.is_expired(now_ms, skew))
        {
            Some(p) if p.fingerprint() != fingerprint => Lookup::Mismatch,
            Some(p) if p.committed => Lookup::Replay(p.unpack()),
            _ => Lookup::Unknown,
        }
    }

    /// Every record held, expired or not, by key.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.packed.iter().map(Packed::unpack)
    }

    /// The ids ([`Record::id`]) of the records not expired at `now_ms`.
    pub fn ids(&self, now_ms: u64, skew: Duration) -> Vec<u64> {
        self.packed
            .iter()
            .filter(|p| !p.is_expired(now_ms, skew))
            .map(|p| p.id)
            .collect()
    }

    /// The records of the ids in `wanted` (sorted), unless expired at
    /// `now_ms`, in key order, until their bytes (key, fingerprint,
    /// result and [`RECORD_FIXED_BYTES`] each: at least their encoding)
    /// would pass `budget`; always the first, so a record larger than the
    /// budget still travels. Only those whose keys follow `range`'s first
    /// and are at most its second, if given: read from that range alone.
    pub fn fetch(
        &self,
        wanted: &[u64],
        budget: usize,
        range: Option<(&[u8], Option<&[u8]>)>,
        now_ms: u64,
        skew: Duration,
    ) -> Vec<Record> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let mut out = Vec::new();
        if wanted.is_empty() {
            return out;
        }
        let (start, end) = match range {
            Some((after, through)) => (Excluded(after), through.map_or(Unbounded, Included)),
            None => (Unbounded, Unbounded),
        };
        let mut taken = 0;
        for p in self.packed.range::<[u8], _>((start, end)) {
            if wanted.binary_search(&p.id).is_err() || p.is_expired(now_ms, skew) {
                continue;
            }
            let weight = p.bytes.len() + RECORD_FIXED_BYTES;
            if !out.is_empty() && taken + weight > budget {
                break;
            }
            taken += weight;
            out.push(p.unpack());
        }
        out
    }

    /// The ids of the records whose keys follow `after` and are at most
    /// `through` (every later key if `None`), unless expired at `now_ms`.
    pub fn ids_between(
        &self,
        after: &[u8],
        through: Option<&[u8]>,
        now_ms: u64,
        skew: Duration,
    ) -> Vec<u64> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let end = through.map_or(Unbounded, Included);
        self.packed
            .range::<[u8], _>((Excluded(after), end))
            .filter(|p| !p.is_expired(now_ms, skew))
            .map(|p| p.id)
            .collect()
    }

    /// The ids of the first `max` records (unexpired at `now_ms`) whose
    /// keys follow `after`, by key, and the key of the last of them if
    /// records follow it (`None`: the page reaches the end).
    pub fn page(
        &self,
        after: &[u8],
        max: usize,
        now_ms: u64,
        skew: Duration,
    ) -> (Vec<u64>, Option<Vec<u8>>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut live = self
            .packed
            .range::<[u8], _>((Excluded(after), Unbounded))
            .filter(|p| !p.is_expired(now_ms, skew));
        let page: Vec<&Packed> = live.by_ref().take(max).collect();
        let more = live.next().is_some();
        let last = page.last().filter(|_| more).map(|p| p.key().to_vec());
        (page.iter().map(|p| p.id).collect(), last)
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.packed.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }
}

#[cfg(test)]
mod tests;
