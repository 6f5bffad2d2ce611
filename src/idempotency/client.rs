//! The claimant's side of an idempotent operation (DESIGN.md
//! "Idempotency"): `mesh.idempotent(key).fingerprint(f).ttl(d).run(op)`.
//!
//! 1. A committed record in this node's replica is replayed with no
//!    network (I2); another fingerprint is a mismatch (I7).
//! 2. Otherwise a begin goes to the leader, retried through failovers with
//!    one request id, like an acquire. The leader answers the committed
//!    record (a replay), a mismatch, "in progress" (after the wait), or a
//!    claim: a lease of the claim namespace (I1) whose token fences.
//! 3. Holding the claim, the operation runs while a guard renews the
//!    claim in the background, so a long operation keeps it as long as
//!    its node lives.
//! 4. The result is completed on the leader, which answers once a
//!    majority of voters holds it and then pushes it to every peer. A
//!    claimant whose claim ended before that hears `ClaimLost`: the
//!    operation ran, nothing was recorded, and the next claimant is told
//!    `recovered` (I5).
//!
//! Owns: the client flow and its retries. Must not decide anything the
//! leader's table decides (claims, expiry, commitment).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Lookup, Record, Store};
use crate::ids::Token;
use crate::locks::claim::{Begin, FINGERPRINT_BYTES_MAX, RESULT_BYTES_MAX, check_key};
use crate::locks::table::REQUESTER_GRACE;
use crate::locks::{LockGuard, LockPath, LockReply, LockRequest, PathError, Space};

/// How long a completed record is kept unless told: 24 hours, as the
/// payment APIs this follows keep their keys.
pub const RECORD_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// The claim's lease unless told (CONTRACT.md's default).
pub const CLAIM_TTL_DEFAULT: Duration = Duration::from_secs(10);
/// The longest one begin or complete waits for an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Pause between attempts while no leader answers.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// How an idempotent call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The operation ran here, for the first time.
    Executed(T),
    /// The operation had completed before: this is its first result.
    Replayed(T),
    /// The operation ran here after an earlier claimant's lease ran out
    /// without a completion (I5): that one may have done part of it.
    RecoveredThenExecuted(T),
}

impl<T> Outcome<T> {
    /// The result, however it was obtained.
    pub fn into_inner(self) -> T {
        match self {
            Outcome::Executed(t) | Outcome::Replayed(t) | Outcome::RecoveredThenExecuted(t) => t,
        }
    }

    /// The result, however it was obtained.
    pub fn value(&self) -> &T {
        match self {
            Outcome::Executed(t) | Outcome::Replayed(t) | Outcome::RecoveredThenExecuted(t) => t,
        }
    }

    /// True for a replay of an earlier execution.
    pub fn is_replay(&self) -> bool {
        matches!(self, Outcome::Replayed(_))
    }
}

/// Why an idempotent call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyError {
    /// Another claim of the key stayed live through the wait.
    #[error("another request with this key is in progress")]
    InProgress,
    /// The key was used with another request (another fingerprint).
    #[error("the key was used with another request (fingerprint mismatch)")]
    FingerprintMismatch,
    /// No leader with a quorum answered in time; retry later. After a
    /// completion was sent, it may or may not have been recorded: a
    /// retry replays it if it was.
    #[error("no leader with a quorum could answer in time")]
    NoQuorum,
    /// The leader keeps as many idempotency keys as it may (claims in
    /// progress and unexpired records, `idempotency-records-max`): retry
    /// once records have expired. Nothing unexpired is evicted.
    #[error("the idempotency store is full ({max} keys)")]
    StoreFull {
        /// The bound.
        max: usize,
    },
    /// The key is empty or longer than 200 bytes.
    #[error("{0}")]
    InvalidKey(String),
    /// The result is over 64 KiB once encoded; nothing was recorded and
    /// the claim was given up.
    #[error("the result is {bytes} bytes encoded, above the limit of {RESULT_BYTES_MAX}")]
    ResultTooLarge {
        /// Its encoded size.
        bytes: usize,
    },
    /// A parameter is outside the contract's limits.
    #[error("{0}")]
    Invalid(String),
    /// The claim ended before the completion was recorded (the node was
    /// cut off or paused past it): the operation ran, nothing was
    /// recorded, and the next claimant is told `recovered`.
    #[error("the claim ended before the result was recorded")]
    ClaimLost,
    /// The stored result does not decode as the type asked for.
    #[error("the stored result does not decode: {0}")]
    Decode(String),
    /// This node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node's wall clock is off the leader's by more than half the
    /// skew bound (I6): it answers nothing about records until that is
    /// fixed (another node can).
    #[error(
        "this node's clock is {offset_ms} ms off the leader's; fix its clock or ask another node"
    )]
    ClockSkew {
        /// The offset measured, in milliseconds.
        offset_ms: i64,
    },
    /// This node has not yet measured its wall clock against a leader's
    /// (it just started, or knows no leader): it answers nothing from its
    /// own records until it has (I6); a begin goes to the leader.
    #[error(
        "this node has not yet measured its clock against the leader's; retry, or ask another node"
    )]
    ClockUnknown,
}

/// An idempotent operation to run: see [`crate::Mesh::idempotent`].
#[derive(Clone)]
pub struct Idempotent {
    path: Arc<dyn LockPath>,
    store: Option<Arc<Store>>,
    key: String,
    fingerprint: Vec<u8>,
    ttl: Duration,
    claim_ttl: Duration,
    wait: Duration,
    record_errors: bool,
    request_id: Option<String>,
}

impl std::fmt::Debug for Idempotent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotent")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("claim_ttl", &self.claim_ttl)
            .field("wait", &self.wait)
            .finish()
    }
}

impl Idempotent {
    /// An operation on `key` over `path`; `store` is the node's records
    /// (none for a remote client).
    pub fn new(path: Arc<dyn LockPath>, store: Option<Arc<Store>>, key: String) -> Idempotent {
        Idempotent {
            path,
            store,
            key,
            fingerprint: Vec::new(),
            ttl: RECORD_TTL_DEFAULT,
            claim_ttl: CLAIM_TTL_DEFAULT,
            wait: Duration::ZERO,
            record_errors: false,
            request_id: None,
        }
    }

    /// The begin's request id: a retry of the begin with it (through any
    /// node) gets the same claim. Generated when not given.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// What identifies the request (a hash of its parameters): a retry
    /// with another fingerprint is refused as a mismatch (I7).
    pub fn fingerprint(mut self, fingerprint: impl Into<Vec<u8>>) -> Self {
        self.fingerprint = fingerprint.into();
        self
    }

    /// How long the completed record is kept (1 s to 30 days).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The claim's lease while the operation runs (renewed in the
    /// background; it matters only if this node dies or is cut off).
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// How long to wait for another live claim of the key to end; if it
    /// completes meanwhile, its result is replayed.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// For [`Idempotent::try_run`]: record a failed operation's error, so
    /// retries replay it, as a payment API keeps its error responses.
    /// Off by default: nothing is recorded and a retry runs again.
    pub fn record_errors(mut self, record: bool) -> Self {
        self.record_errors = record;
        self
    }

    /// Runs `op` once for the key, or returns the first result.
    pub async fn run<T, F, Fut>(self, op: F) -> Result<Outcome<T>, IdempotencyError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.execute(|_| op(), |_| true).await
    }

    /// As [`Idempotent::run`], handing `op` its claim: the token to fence
    /// the operation's writes with (a resource's `FencingChecker` refuses
    /// a claimant whose claim has passed on) and whether an earlier
    /// claimant may have done part of the work.
    pub async fn run_with_claim<T, F, Fut>(self, op: F) -> Result<Outcome<T>, IdempotencyError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(ClaimInfo) -> Fut,
        Fut: Future<Output = T>,
    {
        self.execute(op, |_| true).await
    }

    /// Runs a fallible `op` once for the key, or returns the first
    /// result. A failure is returned (as `Executed(Err(e))`) and, unless
    /// [`Idempotent::record_errors`], not recorded: the claim is given up
    /// and a retry runs again.
    pub async fn try_run<T, E, F, Fut>(
        self,
        op: F,
    ) -> Result<Outcome<Result<T, E>>, IdempotencyError>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let record_errors = self.record_errors;
        self.execute(|_| op(), move |r: &Result<T, E>| r.is_ok() || record_errors)
            .await
    }

    async fn execute<R, F, Fut>(
        self,
        op: F,
        keep: impl FnOnce(&R) -> bool,
    ) -> Result<Outcome<R>, IdempotencyError>
    where
        R: Serialize + DeserializeOwned,
        F: FnOnce(ClaimInfo) -> Fut,
        Fut: Future<Output = R>,
    {
        let (claim, ttl, sent, recovered) = match self.begin().await? {
            Begun::Replay(record) => return decode(&record.result).map(Outcome::Replayed),
            Begun::Claimed {
                claim,
                ttl,
                sent,
                recovered,
            } => (claim, ttl, sent, recovered),
        };
        let guard = LockGuard::start(
            self.path.clone(),
            Space::Claim,
            self.key.clone(),
            claim,
            ttl,
            sent,
        );
        // 3. The operation, its claim renewed meanwhile.
        let result = op(ClaimInfo {
            token: claim,
            recovered,
        })
        .await;
        let done = |r| {
            if recovered {
                Outcome::RecoveredThenExecuted(r)
            } else {
                Outcome::Executed(r)
            }
        };
        if !keep(&result) {
            let _ = guard.release().await;
            return Ok(done(result));
        }
        let bytes = match serde_json::to_vec(&result) {
            Ok(b) if b.len() <= RESULT_BYTES_MAX => b,
            Ok(b) => {
                let _ = guard.release().await;
                return Err(IdempotencyError::ResultTooLarge { bytes: b.len() });
            }
            Err(e) => {
                let _ = guard.release().await;
                return Err(IdempotencyError::Invalid(format!(
                    "the result does not encode as JSON: {e}"
                )));
            }
        };
        // 4. The completion, on a majority of voters.
        let outcome = self.complete(claim, bytes).await;
        guard.settle();
        outcome.map(|()| done(result))
    }

    /// Begins without running anything (the agent's HTTP API does, for
    /// its clients): the first result to replay, or a claim the caller
    /// must complete or abort within its TTL (nothing renews it). Steps 1
    /// and 2 of the flow: this node's replica (I2, I7), then the leader.
    pub async fn begin(&self) -> Result<Begun, IdempotencyError> {
        check_key(&self.key).map_err(IdempotencyError::InvalidKey)?;
        if self.fingerprint.len() > FINGERPRINT_BYTES_MAX {
            return Err(IdempotencyError::Invalid(format!(
                "a fingerprint is at most {FINGERPRINT_BYTES_MAX} bytes, not {}",
                self.fingerprint.len()
            )));
        }
        let begin = Begin {
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            ttl_ms: self.ttl.as_millis() as u64,
            claim_ttl_ms: self.claim_ttl.as_millis() as u64,
            wait_ms: self.wait.as_millis() as u64,
            request_id: self.request_id.clone(),
        };
        begin.check().map_err(IdempotencyError::Invalid)?;
        if let Some(offset_ms) = self.store.as_ref().and_then(|s| s.skewed()) {
            return Err(IdempotencyError::ClockSkew { offset_ms });
        }
        if let Some(store) = &self.store {
            match store.lookup(&self.key, &self.fingerprint, self.path.wall_ms()) {
                Lookup::Replay(record) => return Ok(Begun::Replay(record)),
                Lookup::Mismatch => return Err(IdempotencyError::FingerprintMismatch),
                Lookup::Unknown => {}
            }
        }
        self.claim(begin).await
    }

    /// Begins at the leader, retrying through failovers with one request
    /// id until the wait is over (and past it while an attempt's fate is
    /// unknown, as an acquire does).
    async fn claim(&self, mut begin: Begin) -> Result<Begun, IdempotencyError> {
        let path = &self.path;
        let drift = path.drift();
        let fresh_id = || crate::locks::fresh_request_id(&path.request_id_prefix());
        if begin.request_id.is_none() {
            begin.request_id = Some(fresh_id());
        }
        let deadline = path.now() + self.wait;
        let listen_until = deadline + REQUESTER_GRACE;
        let attempt_max = ATTEMPT_TIMEOUT.min(self.claim_ttl / 2);
        let mut in_flight = false;
        let mut first = true;
        loop {
            if path.is_stopped() {
                return Err(IdempotencyError::ShuttingDown);
            }
            let sent = path.now();
            let over = sent >= listen_until || (sent >= deadline && !in_flight);
            if over && !std::mem::take(&mut first) {
                return Err(IdempotencyError::NoQuorum);
            }
            first = false;
            begin.wait_ms = deadline.saturating_sub(sent).as_millis() as u64;
            let request = LockRequest::Begin(begin.clone());
            let timeout = attempt_max.min(listen_until.saturating_sub(sent));
            let reaches_leader = path.knows_leader();
            match path.lock_request(request, timeout).await {
                Ok(LockReply::Claimed {
                    claim,
                    ttl_ms,
                    recovered,
                }) => {
                    let ttl = Duration::from_millis(ttl_ms);
                    if path.now() < sent + ttl.mul_f64(1.0 - drift) {
                        return Ok(Begun::Claimed {
                            claim,
                            ttl,
                            sent,
                            recovered,
                        });
                    }
                    // Answered too late to use: a retry with the request
                    // id is answered like a renewal, valid from its send.
                    in_flight = true;
                    continue;
                }
                Ok(LockReply::Replay { claim, facts }) => {
                    if let Some(store) = &self.store {
                        store.learn(&begin.key, claim, &facts, path.wall_ms());
                    }
                    let Some(record) = Record::committed(&begin.key, claim, &facts) else {
                        // Invariant: a replay carries its completion.
                        return Err(IdempotencyError::Decode("a replay without a result".into()));
                    };
                    return Ok(Begun::Replay(record));
                }
                Ok(LockReply::FingerprintMismatch) => {
                    return Err(IdempotencyError::FingerprintMismatch);
                }
                Ok(LockReply::InProgress) => return Err(IdempotencyError::InProgress),
                Ok(LockReply::StoreFull { max }) => {
                    return Err(IdempotencyError::StoreFull { max });
                }
                // The key's waiting queue is full: others wait for it.
                Ok(LockReply::QueueFull { .. }) => return Err(IdempotencyError::InProgress),
                Ok(LockReply::Invalid(message)) => return Err(IdempotencyError::Invalid(message)),
                // The claim made for this request ended before any answer
                // reached this call: start over with a new id (a caller's
                // id is the caller's to renew).
                Ok(LockReply::Ended) if self.request_id.is_some() => {
                    return Err(IdempotencyError::ClaimLost);
                }
                Ok(LockReply::Ended) => {
                    begin.request_id = Some(fresh_id());
                    in_flight = false;
                }
                Err(PathError::Closed) if path.is_stopped() => {
                    return Err(IdempotencyError::ShuttingDown);
                }
                Ok(LockReply::NotLeader) => {}
                other => {
                    in_flight |= reaches_leader;
                    tracing::debug!(key = %begin.key, ?other, "begin: retrying");
                    if matches!(other, Err(PathError::Timeout { .. })) {
                        continue;
                    }
                }
            }
            let now = path.now();
            let until = if in_flight { listen_until } else { deadline };
            if now >= until {
                return Err(IdempotencyError::NoQuorum);
            }
            path.pause_for_leader(RETRY_PAUSE.min(until - now)).await;
        }
    }

    /// Completes at the leader, retrying through failovers (the guard
    /// keeps the claim renewed meanwhile) for up to twice the claim's
    /// TTL; a retry of a completion that was recorded hears so again.
    async fn complete(&self, claim: Token, result: Vec<u8>) -> Result<(), IdempotencyError> {
        let path = &self.path;
        let give_up = path.now() + self.claim_ttl * 2;
        loop {
            if path.is_stopped() {
                return Err(IdempotencyError::ShuttingDown);
            }
            let request = LockRequest::Complete {
                key: self.key.clone(),
                claim,
                result: result.clone(),
            };
            match path.lock_request(request, ATTEMPT_TIMEOUT).await {
                Ok(LockReply::Recorded) => return Ok(()),
                Ok(LockReply::Lost) => return Err(IdempotencyError::ClaimLost),
                Ok(LockReply::Invalid(message)) => return Err(IdempotencyError::Invalid(message)),
                Err(PathError::Closed) if path.is_stopped() => {
                    return Err(IdempotencyError::ShuttingDown);
                }
                other => tracing::debug!(key = %self.key, ?other, "complete: retrying"),
            }
            let now = path.now();
            if now >= give_up {
                return Err(IdempotencyError::NoQuorum);
            }
            path.pause_for_leader(RETRY_PAUSE.min(give_up - now)).await;
        }
    }
}

/// The claim an operation runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimInfo {
    /// The claim's token, a fencing token.
    pub token: Token,
    /// An earlier claimant's lease ran out without a completion (I5).
    pub recovered: bool,
}

/// What a begin got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// The key's committed record: replay its result.
    Replay(Record),
    /// The key is the caller's to run.
    Claimed {
        /// The claim's token (a fencing token).
        claim: Token,
        /// The claim's lease.
        ttl: Duration,
        /// When the begin that got it was sent, on the protocol clock:
        /// the claim is valid until this plus the TTL (less the drift
        /// margin).
        sent: Duration,
        /// An earlier claimant's lease ran out without a completion (I5).
        recovered: bool,
    },
}

fn decode<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, IdempotencyError> {
    serde_json::from_slice(bytes).map_err(|e| IdempotencyError::Decode(e.to_string()))
}
