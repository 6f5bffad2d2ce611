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

/// A begin's parameters ([`LockRequest::Begin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
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
