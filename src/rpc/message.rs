//! The messages peers exchange, as typed enums. Every frame carries the
//! wire version ([`super::WIRE_VERSION`]); within a version, postcard
//! encodes an enum variant by its index, so variants are only ever
//! appended, never reordered or removed.

use serde::{Deserialize, Serialize};

use crate::election::{ElectionRequest, ElectionResponse};
use crate::ids::{Generation, NodeId};
use crate::locks::{Entry, LockReply, LockRequest};

/// A request that expects a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Liveness and latency probe; answered with [`Response::Pong`].
    Ping(Ping),
    /// Leader election.
    Election(ElectionRequest),
    /// Locks: clients to the leader, and the leader's replication to
    /// voters.
    Lock(LockRequest),
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
    /// Answer to an election request that carries the voter's copy of the
    /// lock table: a promise (the new leader merges the promising
    /// majority's copies) or a recovery sync (E7).
    ElectionWithTable {
        /// The election answer.
        response: ElectionResponse,
        /// The voter's lock table.
        table: Vec<Entry>,
    },
}

/// A one-way message: no answer, no delivery guarantee beyond QUIC's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// A ping that expects no answer (a reachability nudge).
    Ping(Ping),
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
