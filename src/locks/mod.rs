//! Distributed locks granted through the leader (DESIGN.md "Locks", rules
//! K1–K6; PROTOCOL.md lists each with its test).
//!
//! - [`table`]: the sans-io lock table the leader runs: grants, renewals,
//!   releases, expiries, FIFO waiters, and the batches it replicates to a
//!   majority of voters before anyone is told.
//! - [`Replica`]: every voter's copy of the table, merged by highest token
//!   per name (a release is a tombstone carrying the token it freed).
//! - [`client`]: the holder side, [`LockGuard`], conservative about time.
//! - [`FencingChecker`]: what a protected resource uses to refuse stale
//!   tokens.
//! - [`history`]: the safety checker used by tests.

pub mod claim;
pub mod client;
pub mod election;
mod fencing;
#[cfg(feature = "sim")]
pub mod history;
pub mod holder;
pub mod table;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, NodeId, Token};
use crate::replication::Merge;

pub use client::{Grant, LockBuilder, LockError, LockGuard, LockPath, PathError};
pub use election::{Campaign, ElectionGuard, NamedElection};
pub use fencing::{FencingChecker, StaleToken};
pub use holder::HolderLease;
pub use table::{Adopter, Adoption, LockOutput, LockTable, RecordsSay, Ticket};

/// Longest lock name, in bytes of UTF-8 (CONTRACT.md).
pub const NAME_BYTES_MAX: usize = 256;
/// Shortest TTL.
pub const TTL_MIN: Duration = Duration::from_millis(100);
/// Longest TTL.
pub const TTL_MAX: Duration = Duration::from_millis(3_600_000);
/// Longest wait for a lock.
pub const WAIT_MAX: Duration = Duration::from_millis(60_000);
/// Longest request id, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// The highest epoch that can still form tokens (K1).
pub const EPOCH_MAX: Epoch = Epoch::MAX;
/// The highest sequence number within an epoch (K1).
pub const SEQ_MAX: u64 = Token::SEQ_MAX;

/// The token for the `seq`-th grant of `epoch` (K1), or `None` when
/// either is out of range.
pub fn token(epoch: Epoch, seq: u64) -> Option<Token> {
    Token::new(epoch, seq)
}

/// The epoch a token was granted in.
pub fn token_epoch(token: Token) -> Epoch {
    token.epoch()
}

/// True when nobody waits on a batch of these entries being durable:
/// all are user locks' tombstones. A release is answered once the leader
/// applied it (K2), and an expiry or a prune round is in no hurry, so
/// their syncs may wait for the next batch's
/// ([`crate::storage::Persister::persist_unhurried`]).
pub fn nobody_waits_on(entries: &[Entry]) -> bool {
    !entries.is_empty() && entries.iter().all(Entry::is_lock_tombstone)
}

/// The namespace a replicated name lives in. User locks and idempotency
/// claims never share a name, whatever their text (I1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Space {
    /// A user lock (or a named election, built on one).
    Lock,
    /// The claim of an idempotency key.
    Claim,
}

/// A replicated name: a namespace and a text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Name {
    /// User lock or idempotency claim.
    pub space: Space,
    /// The lock's name, or the idempotency key.
    pub text: String,
}

impl Name {
    /// A user lock's name.
    pub fn lock(text: impl Into<String>) -> Name {
        Name {
            space: Space::Lock,
            text: text.into(),
        }
    }

    /// An idempotency key's claim.
    pub fn claim(text: impl Into<String>) -> Name {
        Name {
            space: Space::Claim,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.space {
            Space::Lock => f.write_str(&self.text),
            Space::Claim => write!(f, "claim {:?}", self.text),
        }
    }
}

/// One lock's replicated state: the latest grant, or the tombstone of the
/// latest release or expiry (K2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The lock name, or the claimed idempotency key.
    pub name: Name,
    /// The token granted, or the token a `Free` freed.
    pub token: Token,
    /// Held or freed.
    pub state: EntryState,
    /// What a claim carries besides its lease (`None` for a user lock).
    pub claim: Option<Box<ClaimFacts>>,
    /// The epoch of the leader that wrote this version of the entry (K2:
    /// a later epoch's write wins the merge); 0 for one read from a lock
    /// log of an earlier format, which every write since outranks.
    pub written: Epoch,
}

/// What an idempotency claim's entry carries besides its lease: the
/// request's fingerprint (I7), whether an earlier claim of the key ended
/// by expiry (I5), and, on the tombstone of a claim that completed, the
/// completed operation.
///
/// Its order is part of the entry's rank: at one token, a completion wins
/// over a bare release or expiry (a completion may have been told to its
/// client; a bare tombstone of the same claim means nothing was), then
/// every other field, so two entries of one name never tie.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClaimFacts {
    /// The completed operation, on a tombstone.
    pub completion: Option<Completion>,
    /// An earlier claim of this key ended by expiry, and no completion
    /// has been committed since (I5).
    pub recovered: bool,
    /// The request's fingerprint.
    pub fingerprint: Vec<u8>,
    /// How long the completed record is to be kept, in milliseconds.
    pub record_ttl_ms: u64,
}

/// A completed operation, as its claim's tombstone carries it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Completion {
    /// Wall-clock milliseconds since the Unix epoch after which the record
    /// may be dropped (plus the skew bound), stamped by the leader (I6).
    pub expires_at_ms: u64,
    /// The operation's result.
    pub result: Vec<u8>,
}

/// Held or freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    /// Granted to a client of `owner` for `ttl_ms`.
    Held {
        /// The TTL granted, in milliseconds.
        ttl_ms: u64,
        /// The node the client asked through.
        owner: NodeId,
        /// The acquire's request id, so a retry gets this grant (K4).
        request_id: Option<String>,
        /// A lower bound, in real milliseconds, on how long the holder
        /// had gone without a renewal when this version was written: a
        /// leader taking the grant over shortens its TTL by it, so a dead
        /// holder's lock expires even when leaders change faster than
        /// its TTL (K3).
        quiet_ms: u64,
        /// Which write of this grant this is (`epoch << 32 | n`, by the
        /// leader that wrote it): a later write wins the merge.
        version: u64,
        /// The run of `owner` whose process the holder lives in, when a
        /// later run can prove it ended (K5); `None` for a grant that
        /// may be held elsewhere (an HTTP or remote client, a node
        /// without a data directory, a claim). Kept through every
        /// rewrite, so a leader that adopts the grant can free it on
        /// that proof too; a retry from elsewhere clears it with a
        /// durable rewrite before it is answered.
        bound: Option<crate::ids::Generation>,
    },
    /// Released or expired.
    Free {
        /// The request id of the grant it ended: a late or duplicated
        /// acquire with that id grants nothing (K4).
        request_id: Option<String>,
    },
}

impl EntryState {
    /// The first write of a grant bound to no run: nothing quiet yet.
    pub fn held(
        ttl_ms: u64,
        owner: NodeId,
        request_id: Option<String>,
        version: u64,
    ) -> EntryState {
        EntryState::Held {
            ttl_ms,
            owner,
            request_id,
            quiet_ms: 0,
            version,
            bound: None,
        }
    }
}

/// Entries replicate by the merge of [`crate::replication`] (K2).
impl Merge for Entry {
    type Key = Name;
    type Rank<'a> = (u64, Token, bool, u64, Option<&'a ClaimFacts>);

    fn key(&self) -> &Name {
        &self.name
    }

    /// Merge order: a write of a later epoch wins. A leader writes only
    /// after it merged a majority's copies (K2), which hold every write
    /// of an earlier epoch that was committed, so a write of an earlier
    /// epoch that its own does not follow was never committed: a grant
    /// a deposed leader made on a minority does not outrank, at a later
    /// takeover, what the next leader wrote on a majority (a claim's
    /// completion included). Within an epoch, a higher token wins; at one
    /// token, its release wins over its grant, so a stale grant never
    /// comes back; between two writes of one grant, the later version
    /// wins; then a claim's facts (a completion first).
    fn rank(&self) -> Self::Rank<'_> {
        let claim = self.claim.as_deref();
        match &self.state {
            EntryState::Held { version, .. } => {
                (self.written.0, self.token, false, *version, claim)
            }
            EntryState::Free { .. } => (self.written.0, self.token, true, 0, claim),
        }
    }
}

impl Entry {
    /// True for the tombstone of a claim that no begin needs any more at
    /// wall-clock `wall_ms`: its completion expired [`claim::RECORD_SKEW`]
    /// ago, or it ended without a completion and without running out (an
    /// abort: nothing to replay, nothing recovered). Such tombstones are
    /// dropped from the leader's table and the voters' copies, each on its
    /// own clock (I6); a claim that ran out is kept (I5, I7).
    pub fn collectable(&self, wall_ms: u64) -> bool {
        if self.name.space != Space::Claim || self.is_held() {
            return false;
        }
        let Some(facts) = self.claim.as_deref() else {
            return true;
        };
        let skew = claim::RECORD_SKEW.as_millis() as u64;
        match &facts.completion {
            Some(c) => c.expires_at_ms.saturating_add(skew) <= wall_ms,
            None => !facts.recovered,
        }
    }

    /// True for a claim's tombstone that carries its completion: once the
    /// node's records hold that completion durably, it may leave the
    /// node's copies (PROTOCOL.md, "Idempotency" 8).
    pub fn is_settleable(&self) -> bool {
        self.name.space == Space::Claim
            && !self.is_held()
            && self
                .claim
                .as_deref()
                .is_some_and(|f| f.completion.is_some())
    }

    /// True for a user lock's tombstone (a release, an expiry, or one a
    /// prune round sends again).
    pub fn is_lock_tombstone(&self) -> bool {
        self.name.space == Space::Lock && !self.is_held()
    }

    /// True for a grant.
    pub fn is_held(&self) -> bool {
        matches!(self.state, EntryState::Held { .. })
    }

    /// The request id of the grant (held) or of the grant it ended (free).
    pub fn request_id(&self) -> Option<&str> {
        match &self.state {
            EntryState::Held { request_id, .. } | EntryState::Free { request_id, .. } => {
                request_id.as_deref()
            }
        }
    }
}

/// A voter's copy of the lock table: highest rank per name wins, so the
/// order in which replication batches, promises and recovery copies
/// arrive does not matter.
pub type Replica = crate::replication::Replica<Entry>;

/// Why a lock request is malformed (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// The name is empty or longer than [`NAME_BYTES_MAX`].
    #[error("lock names are 1 to {NAME_BYTES_MAX} bytes of UTF-8, got {0} bytes")]
    Name(usize),
    /// The TTL is outside [`TTL_MIN`]..=[`TTL_MAX`].
    #[error("ttl_ms must be within 100 and 3600000, got {0}")]
    Ttl(u64),
    /// The wait is above [`WAIT_MAX`].
    #[error("wait_ms must be within 0 and 60000, got {0}")]
    Wait(u64),
    /// The request id is longer than [`REQUEST_ID_BYTES_MAX`].
    #[error("request_id is at most {REQUEST_ID_BYTES_MAX} bytes, got {0}")]
    RequestId(usize),
}

/// A fresh request id: `prefix` and 24 random hex digits.
pub fn fresh_request_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    rand::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Checks a lock name against the contract's limits.
pub fn check_name(name: &str) -> Result<(), InvalidRequest> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(InvalidRequest::Name(name.len()));
    }
    Ok(())
}

/// Checks an acquire's parameters against the contract's limits.
pub fn check_acquire(
    name: &str,
    ttl_ms: u64,
    wait_ms: u64,
    request_id: Option<&str>,
) -> Result<(), InvalidRequest> {
    check_name(name)?;
    if !(TTL_MIN.as_millis() as u64..=TTL_MAX.as_millis() as u64).contains(&ttl_ms) {
        return Err(InvalidRequest::Ttl(ttl_ms));
    }
    if wait_ms > WAIT_MAX.as_millis() as u64 {
        return Err(InvalidRequest::Wait(wait_ms));
    }
    if let Some(id) = request_id
        && id.len() > REQUEST_ID_BYTES_MAX
    {
        return Err(InvalidRequest::RequestId(id.len()));
    }
    Ok(())
}

/// A client's request to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockRequest {
    /// Take `name` for `ttl_ms`, waiting up to `wait_ms` in its queue.
    Acquire {
        /// Lock name.
        name: String,
        /// Lease length.
        ttl_ms: u64,
        /// How long to wait for it.
        wait_ms: u64,
        /// A retry with the same id gets the same grant (K4).
        request_id: Option<String>,
    },
    /// Extend the lease of `token` by its TTL from now.
    Renew {
        /// Lock name.
        name: String,
        /// The holder's token.
        token: Token,
    },
    /// Give the lock up.
    Release {
        /// Lock name.
        name: String,
        /// The holder's token.
        token: Token,
    },
    /// Who holds `name`, as the leader sees it.
    Status {
        /// Lock name.
        name: String,
    },
    /// The locks held now, by name, at most `limit` of them.
    List {
        /// The most to return.
        limit: u32,
    },
    /// Begins an idempotent operation: claims the key in the claim
    /// namespace (I1) for its claim TTL, or answers the completed
    /// operation's record. (Encoded as its fields in order.)
    Begin(claim::Begin),
    /// Extends the claim `claim` of `key` by its TTL from now.
    RenewClaim {
        /// The idempotency key.
        key: String,
        /// The claim's token.
        claim: Token,
    },
    /// The operation run under `claim` completed with `result`: record
    /// it on a majority of voters, then free the claim.
    Complete {
        /// The idempotency key.
        key: String,
        /// The claim's token.
        claim: Token,
        /// The operation's result.
        result: Vec<u8>,
    },
    /// Frees the claim without recording anything.
    Abort {
        /// The idempotency key.
        key: String,
        /// The claim's token.
        claim: Token,
    },
    /// Who holds the user lock `name`, answered (as `Status`) once it
    /// differs from `seen` (the holder's token, `None`: nobody), or when
    /// `wait_ms` (at most [`WAIT_MAX`]) has passed: a watch, so an
    /// observer hears of a change without polling.
    Watch {
        /// Lock name.
        name: String,
        /// The holder the watcher knows.
        seen: Option<Token>,
        /// How long the leader may hold the answer back.
        wait_ms: u64,
    },
    /// An acquire for a holder in the process of run `generation` of the
    /// node it comes through (a guard taken through a node with a data
    /// directory): if a later run of that node proves it ended, the
    /// lock is freed then, not at its TTL (K5).
    AcquireBound {
        /// Lock name.
        name: String,
        /// Lease length requested.
        ttl_ms: u64,
        /// How long to wait in the queue.
        wait_ms: u64,
        /// Makes retries idempotent (K4).
        request_id: Option<String>,
        /// The holder's run.
        generation: crate::ids::Generation,
    },
}

/// One held lock, as [`LockRequest::List`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Lock name.
    pub name: String,
    /// The holder's token.
    pub token: Token,
    /// How long until the leader expires it.
    pub expires_in_ms: u64,
    /// The node the holder asked through.
    pub owner: NodeId,
    /// Clients waiting for it.
    pub waiters: u32,
}

/// Answers to [`LockRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockReply {
    /// The lock is yours.
    Granted {
        /// Fencing token.
        token: Token,
        /// The TTL granted.
        ttl_ms: u64,
    },
    /// Renewed for `ttl_ms` from when the renewal was sent.
    Renewed {
        /// The TTL.
        ttl_ms: u64,
    },
    /// Released (also the answer to releasing an already released token).
    Released,
    /// The lock's state as the leader sees it.
    Status {
        /// The holder's token, if held.
        token: Option<Token>,
        /// How long until the leader expires it.
        expires_in_ms: u64,
        /// The node the holder asked through.
        owner: Option<NodeId>,
    },
    /// Not granted within the wait.
    Held,
    /// No leader with a quorum could answer; retry (the lock is kept).
    NoQuorum,
    /// The token does not hold the lock (K6: only when known).
    Lost,
    /// The lock's waiting queue (or the table) is full.
    QueueFull {
        /// The bound that was hit.
        max: usize,
    },
    /// Malformed request.
    Invalid(String),
    /// This node is not the serving leader.
    NotLeader,
    /// The locks held (answer to [`LockRequest::List`]).
    Locks {
        /// Held locks, by name.
        locks: Vec<LockInfo>,
        /// More were held than the limit.
        truncated: bool,
    },
    /// The grant this acquire's request id received has ended (released
    /// or expired): a late or duplicated acquire gets nothing (K4).
    Ended,
    /// The key is claimed for the caller: run the operation, then
    /// complete or abort within `ttl_ms` of sending the begin.
    Claimed {
        /// The claim's token (a fencing token).
        claim: Token,
        /// The claim's lease.
        ttl_ms: u64,
        /// An earlier claimant's lease ran out without a completion (I5).
        recovered: bool,
    },
    /// The key's operation completed: its claim's facts, the completion
    /// included, held by a majority of voters (I2).
    Replay {
        /// The claim that completed it.
        claim: Token,
        /// Its facts.
        facts: Box<ClaimFacts>,
    },
    /// The key was used with another fingerprint (I7).
    FingerprintMismatch,
    /// Another claim of the key is live.
    InProgress,
    /// The completion holds on a majority of voters.
    Recorded,
    /// The leader keeps as many idempotency keys as it may (claims in
    /// progress and unexpired records): a new key is refused.
    StoreFull {
        /// The keys kept: `idempotency-records-max`, or as many as fit
        /// the claims' byte bound (`claim::CLAIM_BYTES_MAX`).
        max: usize,
    },
}
