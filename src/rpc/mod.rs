//! Peer-to-peer RPC: requests with answers, and one-way messages.
//!
//! On the real network this is QUIC ([`quinn`]) with mutual TLS from the
//! cluster secret ([`tls`]): one endpoint per node that listens and dials,
//! one cached connection per peer, a bidirectional stream per request and
//! a unidirectional stream per message, each carrying one length-prefixed
//! postcard frame ([`codec`]). In a simulation the same calls travel as
//! datagrams over [`crate::net::SimNet`] ([`sim`]); see ARCHITECTURE.md for
//! why not QUIC itself there.
//!
//! Bounds: [`FRAME_BYTES_MAX`] per frame, [`INFLIGHT_PER_PEER_MAX`] calls
//! in flight to one peer (more wait for a slot within their timeout),
//! [`CONNECTIONS_MAX`] incoming connections, [`PEERS_MAX`] cached peers. A
//! connection that sends [`STRIKES_MAX`] bad frames is closed.

pub mod codec;
pub mod message;
mod quic;
mod sim;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use codec::{FRAME_BYTES_MAX, FrameError, WIRE_VERSION};
pub use message::{
    Life, Message, Ping, Pong, Rejection, Request, Response, VoterRequest, VoterSnapshot,
};

use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::net::Network;
use crate::secret::ClusterSecret;

/// Calls in flight to one peer; QUIC's stream limit is set to match, so a
/// peer cannot be made to serve more than this per connection either.
pub const INFLIGHT_PER_PEER_MAX: usize = 256;
/// One-way messages in flight to one peer.
pub const MESSAGES_PER_PEER_MAX: usize = 64;
/// Incoming connections served at once; more are refused.
pub const CONNECTIONS_MAX: usize = 1024;
/// Peers with a cached outgoing connection; beyond it, closed ones are
/// forgotten, and if none are, calls to new peers fail as unreachable.
pub const PEERS_MAX: usize = 4096;
/// Bad frames (undecodable, too large, wrong version, too slow) a
/// connection may send before it is closed.
pub const STRIKES_MAX: u32 = 8;
/// QUIC keep-alive: keeps an idle connection open (see [`IDLE_TIMEOUT`]).
/// A dead peer is not found by it: see [`SILENCE_MAX`].
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// QUIC idle timeout: a connection that hears nothing, not even a
/// keep-alive, for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long calls on one connection may go unanswered, with nothing at
/// all heard from the peer, before the connection is presumed dead and
/// closed; the next call dials afresh. A live peer acknowledges every
/// packet within QUIC's ack delay (25 ms), so only a dead, paused or cut
/// off peer is this silent while it is called.
pub const SILENCE_MAX: Duration = Duration::from_secs(1);
/// How long a handshake may take before the dial fails as unreachable.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer may take to send a whole request frame.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sending a one-way message may take, dialing included.
pub const MESSAGE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call failed. Each variant says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No answer within the call's timeout. The peer may or may not have
    /// acted on the request: retry only what is idempotent.
    #[error("no answer within {} ms", after.as_millis())]
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },
    /// No connection could be made or kept: the peer is down, partitioned,
    /// or refused the handshake (another cluster secret). The request was
    /// not delivered, or its fate is unknown if the connection broke.
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable {
        /// The peer's RPC address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The peer received the request and refused it.
    #[error("refused by the peer: {0}")]
    Rejected(Rejection),
    /// The peer speaks another wire version; upgrade one side.
    #[error("peer speaks wire version {theirs}, this node {ours}")]
    ProtocolVersion {
        /// This node's version.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The request or the answer exceeds [`FRAME_BYTES_MAX`]; send less.
    #[error("frame of {bytes} bytes exceeds the bound of {max}")]
    TooLarge {
        /// The frame's size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The peer's answer did not decode: a bug or a hostile peer.
    #[error("malformed answer from the peer")]
    Malformed,
    /// The node id is not a live member in this node's view: it is down,
    /// not yet known, or wrong.
    #[error("node {node} is not a live member")]
    UnknownPeer {
        /// The id asked for.
        node: NodeId,
    },
    /// This node's RPC endpoint is closed (the node is stopping).
    #[error("this node's RPC endpoint is closed")]
    Closed,
}

/// What a lock request's path reports when the RPC under it failed.
impl From<RpcError> for crate::locks::PathError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Timeout { after } => crate::locks::PathError::Timeout { after },
            RpcError::Closed => crate::locks::PathError::Closed,
            other => crate::locks::PathError::Failed(other.to_string()),
        }
    }
}

impl RpcError {
    fn from_frame(error: FrameError) -> RpcError {
        match error {
            FrameError::TooLarge { len, max } => RpcError::TooLarge { bytes: len, max },
            FrameError::Version { theirs } => RpcError::ProtocolVersion {
                ours: WIRE_VERSION,
                theirs,
            },
            FrameError::Truncated | FrameError::Malformed => RpcError::Malformed,
        }
    }

    fn from_rejection(rejection: Rejection) -> RpcError {
        match rejection {
            Rejection::Version { supported } => RpcError::ProtocolVersion {
                ours: WIRE_VERSION,
                theirs: supported,
            },
            other => RpcError::Rejected(other),
        }
    }
}

/// What a node serves to its peers. Called concurrently; an
/// implementation must not block.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Answers one request from `from` (a node id the peer claims; every
    /// peer holds the cluster secret, so claims are trusted).
    async fn request(&self, from: NodeId, request: Request) -> Result<Response, Rejection>;
    /// Handles one one-way message.
    async fn message(&self, from: NodeId, message: Message);
}

/// Serves nothing: every request is refused as `Unsupported` and messages
/// are dropped. For an endpoint that only calls (a client outside the
/// mesh, a benchmark's caller).
pub struct Unserved;

#[async_trait]
impl Service for Unserved {
    async fn request(&self, _from: NodeId, _request: Request) -> Result<Response, Rejection> {
        Err(Rejection::Unsupported)
    }

    async fn message(&self, _from: NodeId, _message: Message) {}
}

/// One node's RPC endpoint: listens for peers and calls them.
pub struct Rpc {
    inner: Inner,
    metrics: Arc<Metrics>,
}

enum Inner {
    Quic(quic::QuicRpc),
    Sim(sim::SimRpc),
}

impl Rpc {
    /// Binds `addr` on `network` and starts serving `service`. Open
    /// clusters pass [`ClusterSecret::open_cluster`].
    pub async fn bind(
        network: &Network,
        addr: SocketAddr,
        id: NodeId,
        secret: &ClusterSecret,
        service: Arc<dyn Service>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Rpc> {
        let inner = match network {
            Network::Udp => Inner::Quic(quic::QuicRpc::bind(
                addr,
                id,
                secret,
                service,
                metrics.clone(),
            )?),
            Network::Sim(net) => {
                Inner::Sim(sim::SimRpc::bind(net, addr, id, service, metrics.clone())?)
            }
        };
        Ok(Rpc { inner, metrics })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Quic(q) => q.local_addr(),
            Inner::Sim(s) => s.local_addr(),
        }
    }

    /// Sends `request` to the node at `to` and waits for its answer, at
    /// most `timeout` (dialing and waiting for a slot included).
    pub async fn call(
        &self,
        to: SocketAddr,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        count(&self.metrics.rpc_calls);
        let result = match &self.inner {
            Inner::Quic(q) => q.call(to, request, timeout).await,
            Inner::Sim(s) => s.call(to, request, timeout).await,
        };
        if result.is_err() {
            count(&self.metrics.rpc_call_errors);
        }
        result
    }

    /// Sends a one-way message. `Ok` means handed to the transport, not
    /// delivered.
    pub async fn send(&self, to: SocketAddr, message: Message) -> Result<(), RpcError> {
        match &self.inner {
            Inner::Quic(q) => q.send(to, message).await,
            Inner::Sim(s) => s.send(to, message).await,
        }
    }

    /// Closes the endpoint: peers see their connections closed, calls in
    /// progress fail with [`RpcError::Closed`] or as unreachable.
    pub async fn close(&self) {
        match &self.inner {
            Inner::Quic(q) => q.close().await,
            Inner::Sim(s) => s.close().await,
        }
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) {
    Metrics::add(counter, 1);
}
