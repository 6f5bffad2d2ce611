//! Claims: the leases of idempotency keys, granted by the leader's lock
//! table in a namespace of their own (I1). This module holds what the
//! table checks a begin against (CONTRACT.md's limits); the flow that
//! uses claims, and the records every node keeps, are in
//! `crate::idempotency`.

use std::time::Duration;

use super::{TTL_MAX, TTL_MIN, WAIT_MAX, check_acquire};

/// Longest key, in bytes of UTF-8 (CONTRACT.md).
pub const KEY_BYTES_MAX: usize = 200;
/// Largest result, in bytes (CONTRACT.md: 64 KiB of JSON).
pub const RESULT_BYTES_MAX: usize = 64 * 1024;
/// Longest request fingerprint, in bytes (a SHA-256 in hex is 64).
pub const FINGERPRINT_BYTES_MAX: usize = 256;
/// Shortest time a completed record is kept (CONTRACT.md).
pub const RECORD_TTL_MIN: Duration = Duration::from_secs(1);
/// Longest time a completed record is kept: 30 days (CONTRACT.md).
pub const RECORD_TTL_MAX: Duration = Duration::from_millis(2_592_000_000);

/// The bytes of claims (with their fingerprints and results) the leader's
/// table keeps at most: half the RPC frame bound. The whole table travels
/// in one frame with an election promise (K2) and in the first batch of a
/// term, so past the frame no leader could be elected; a begin of a new
/// key is refused (`StoreFull`) once the claims take this much, leaving
/// the other half to user locks and to completions still to come. Records
/// beyond it need the records kept apart from the lock table (not built).
pub const CLAIM_BYTES_MAX: usize = 512 * 1024;

/// What a claim's entry weighs against [`CLAIM_BYTES_MAX`]: its bytes
/// plus the fixed fields, about as encoded.
pub fn claim_weight(entry: &super::Entry) -> usize {
    let facts = entry.claim.as_deref();
    entry.name.text.len()
        + facts.map_or(0, |f| {
            f.fingerprint.len() + f.completion.as_ref().map_or(0, |c| c.result.len())
        })
        + entry.request_id().map_or(0, str::len)
        + CLAIM_FIXED_BYTES
}

/// The fixed fields of a claim's entry at their longest encoding: eight
/// integers of up to ten bytes each (token, TTL, owner, quiet time,
/// version, expiry, record TTL, the epoch written), the lengths and tags.
const CLAIM_FIXED_BYTES: usize = 8 * 10 + 32;

/// How far apart two nodes' wall clocks may be: a record is dropped this
/// long after its expiry (I6), by every node on its own clock.
pub const RECORD_SKEW: Duration = Duration::from_secs(60);

/// Checks an idempotency key: 1 to [`KEY_BYTES_MAX`] bytes.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "an idempotency key is 1 to {KEY_BYTES_MAX} bytes, not {}",
            key.len()
        ));
    }
    Ok(())
}

/// A begin's parameters ([`super::LockRequest::Begin`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Begin {
    /// The idempotency key.
    pub key: String,
    /// The request's fingerprint (I7).
    pub fingerprint: Vec<u8>,
    /// How long the completed record is kept, in milliseconds.
    pub ttl_ms: u64,
    /// The claim's lease, in milliseconds.
    pub claim_ttl_ms: u64,
    /// How long to wait for a live claim to end, in milliseconds.
    pub wait_ms: u64,
    /// A retry with the same id gets the same claim.
    pub request_id: Option<String>,
}

impl Begin {
    /// Checks the parameters against the contract's limits.
    pub fn check(&self) -> Result<(), String> {
        check_key(&self.key)?;
        if self.fingerprint.len() > FINGERPRINT_BYTES_MAX {
            return Err(format!(
                "a fingerprint is at most {FINGERPRINT_BYTES_MAX} bytes, not {}",
                self.fingerprint.len()
            ));
        }
        let ms = |d: Duration| d.as_millis() as u64;
        if !(ms(RECORD_TTL_MIN)..=ms(RECORD_TTL_MAX)).contains(&self.ttl_ms) {
            return Err(format!(
                "ttl_ms must be within {} and {}, got {}",
                ms(RECORD_TTL_MIN),
                ms(RECORD_TTL_MAX),
                self.ttl_ms
            ));
        }
        if !(ms(TTL_MIN)..=ms(TTL_MAX)).contains(&self.claim_ttl_ms) {
            return Err(format!(
                "claim_ttl_ms must be within {} and {}, got {}",
                ms(TTL_MIN),
                ms(TTL_MAX),
                self.claim_ttl_ms
            ));
        }
        if self.wait_ms > ms(WAIT_MAX) {
            return Err(format!(
                "wait_ms must be within 0 and {}, got {}",
                ms(WAIT_MAX),
                self.wait_ms
            ));
        }
        check_acquire("-", ms(TTL_MIN), 0, self.request_id.as_deref()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{NodeId, Token};
    use crate::locks::{ClaimFacts, Completion, Entry, EntryState, Name};

    /// The weight never counts a claim's entry lighter than it encodes,
    /// so claims kept within [`CLAIM_BYTES_MAX`] stay within it on the
    /// wire.
    #[test]
    fn a_claims_weight_is_at_least_its_encoding() {
        for (key, fp, result, held) in [
            ("k", 0, 0, true),
            ("a-uuid-of-thirty-six-bytes-00000000", 64, 100, false),
            ("k", 256, 65_536, false),
        ] {
            let facts = ClaimFacts {
                completion: (!held).then(|| Completion {
                    expires_at_ms: u64::MAX,
                    result: vec![7; result],
                }),
                recovered: true,
                fingerprint: vec![1; fp],
                record_ttl_ms: u64::MAX,
            };
            let entry = Entry {
                name: Name::claim(key),
                token: Token(u64::MAX),
                state: if held {
                    EntryState::held(u64::MAX, NodeId(u64::MAX), Some("r".repeat(128)), u64::MAX)
                } else {
                    EntryState::Free {
                        request_id: Some("r".repeat(128)),
                    }
                },
                claim: Some(Box::new(facts)),
                written: crate::ids::Epoch(u64::MAX),
            };
            let encoded = postcard::to_allocvec(&entry).unwrap().len();
            assert!(
                claim_weight(&entry) >= encoded,
                "{encoded} > {}",
                claim_weight(&entry)
            );
        }
    }
}
