//! The messages peers exchange, as typed enums. Every frame carries the
//! wire version ([`super::WIRE_VERSION`]); within a version, postcard
//! encodes an enum variant by its index, so variants are only ever
//! appended, never reordered or removed.

use serde::{Deserialize, Serialize};

use crate::election::{ElectionRequest, ElectionResponse};
use crate::ids::{Epoch, Generation, NodeId};
use crate::locks::{Entry, LockReply, LockRequest};
use crate::replication::Answer;

/// A request that expects a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Liveness and latency probe; answered with [`Response::Pong`].
    Ping(Ping),
    /// Leader election.
    Election(ElectionRequest),
    /// Locks: clients to the leader.
    Lock(LockRequest),
    /// The leader's replication to voters.
    Voter(VoterRequest),
    /// Anti-entropy of idempotency records, initiator to responder.
    Reconcile(Box<crate::idempotency::reconcile::ReconcileMessage>),
    /// The peer's wall clock, to bound this node's offset from the
    /// leader's (I6).
    Time,
    /// The peer's life and whether its records are complete: asked after
    /// an exchange of records, to know it was with the life that
    /// promised or sent its copy (PROTOCOL.md, "Idempotency" 8).
    Life,
    /// The peer's copy of the lock table, with its life: a voter that
    /// lost its records fills them in from others (E7).
    Copy,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong(Pong),
    /// Answer to [`Request::Election`].
    Election(ElectionResponse),
    /// Answer to [`Request::Lock`].
    Lock(LockReply),
    /// Answer to an election request that carries the voter's copy: a
    /// promise (the new leader merges the promising majority's copies,
    /// K2) or a recovery sync (E7).
    ElectionWithSnapshot {
        /// The election answer.
        response: ElectionResponse,
        /// The voter's copy.
        snapshot: VoterSnapshot,
    },
    /// Answer to [`Request::Voter`]: the replication core's answer.
    Voter(Answer),
    /// Answer to [`Request::Reconcile`].
    Reconcile(Box<crate::idempotency::reconcile::ReconcileMessage>),
    /// Answer to [`Request::Time`]: milliseconds since the Unix epoch.
    Time {
        /// The peer's wall clock when it answered.
        wall_ms: u64,
    },
    /// Answer to [`Request::Life`].
    Life(Life),
    /// Answer to [`Request::Copy`].
    Copy(VoterSnapshot),
}

/// One run of a node's process, and what its records hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Life {
    /// Differs from one start of the node to the next (its generation).
    pub id: u64,
    /// The node's records hold every completion a voter's lock copy
    /// settled into them: it never lost them, or it filled them in again
    /// from a majority (PROTOCOL.md, "Idempotency" 8).
    pub complete: bool,
}

/// A voter's copy of what the leader replicates, as it travels with a
/// promise and a recovery answer: the lock table, with the life that
/// sent it (its idempotency records are reconciled apart, and counted
/// only with the same life).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterSnapshot {
    /// The voter's lock table.
    pub locks: Vec<Entry>,
    /// The voter's life when it sent it.
    pub life: Life,
    /// Below what the voter takes no batch (a voter that copies this
    /// table takes it too).
    pub floor: crate::replication::Floor,
}

/// Leader to voters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum VoterRequest {
    /// Merge these entries (K2), durably before the ack (E8). Carries the
    /// leader's epoch and its configuration hash (E1, V1).
    Replicate {
        /// The leader's epoch.
        epoch: Epoch,
        /// Configuration hash (voter set and safety timings).
        voters: u64,
        /// The batch's id (unique for the life of the leader's table).
        batch: crate::ids::BatchId,
        /// The batch's lock entries.
        locks: Vec<Entry>,
    },
    /// Forget these tombstones, each where it is held exactly as given,
    /// and take no more batches of this epoch below `floor`: every voter
    /// held them durably (PROTOCOL.md, "Locks" 8). Answered once durable.
    Forget {
        /// The leader's epoch.
        epoch: Epoch,
        /// Configuration hash (voter set and safety timings).
        voters: u64,
        /// Above every batch the leader sent before.
        floor: crate::replication::Floor,
        /// The tombstones.
        locks: Vec<Entry>,
    },
}

/// A one-way message: no answer, no delivery guarantee beyond QUIC's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// A ping that expects no answer (a reachability nudge).
    Ping(Ping),
    /// The leader's commit notice of an idempotent operation's
    /// completion: a majority of voters hold it (I2).
    Completed {
        /// The idempotency key.
        key: String,
        /// The claim it completed.
        claim: crate::ids::Token,
        /// The claim's facts, its completion included.
        facts: Box<crate::locks::ClaimFacts>,
    },
}

/// A probe with an opaque payload, echoed back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed unchanged in [`Pong::payload`].
    pub payload: Vec<u8>,
}

/// The answer to a ping: who answered, and the payload back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The answering node.
    pub id: NodeId,
    /// Its generation (incarnation).
    pub generation: Generation,
    /// The ping's payload.
    pub payload: Vec<u8>,
}

/// Why a peer refused a request it received. Sent back in place of a
/// [`Response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The request's wire version is not one the peer reads.
    #[error("the peer speaks wire version {supported}")]
    Version {
        /// The version the peer speaks.
        supported: u16,
    },
    /// The request (or the answer to it) exceeds the frame bound.
    #[error("frame larger than the peer's bound of {max} bytes")]
    TooLarge {
        /// The bound in bytes.
        max: u32,
    },
    /// The request did not decode.
    #[error("the peer could not decode the request")]
    Malformed,
    /// The peer does not serve this kind of request (yet, or any more).
    #[error("the peer does not serve this request")]
    Unsupported,
    /// The peer is shutting down.
    #[error("the peer is shutting down")]
    ShuttingDown,
}

/// What travels on a request stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// The caller's node id.
    pub from: NodeId,
    /// The request.
    pub request: Request,
}

/// What travels back on a request stream.
pub type ResponseEnvelope = Result<Response, Rejection>;

/// What travels on a one-way stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEnvelope {
    /// The sender's node id.
    pub from: NodeId,
    /// The message.
    pub message: Message,
}

impl super::codec::Chunked for RequestEnvelope {
    fn entries_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match &mut self.request {
            Request::Voter(VoterRequest::Replicate { locks, .. })
            | Request::Voter(VoterRequest::Forget { locks, .. }) => Some(locks),
            _ => None,
        }
    }
}

impl super::codec::Chunked for ResponseEnvelope {
    fn entries_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match self {
            Ok(Response::ElectionWithSnapshot { snapshot, .. }) | Ok(Response::Copy(snapshot)) => {
                Some(&mut snapshot.locks)
            }
            _ => None,
        }
    }
}
