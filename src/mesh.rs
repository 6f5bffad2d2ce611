//! The [`Mesh`] handle: what an embedding daemon holds. It starts a node on
//! the host's tokio runtime, answers questions about the cluster, and stops
//! the node when asked. It never exits the process and installs no global
//! tracing subscriber: the host owns both.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, NodeId};
use crate::membership::{GossipTransport, Member, MemberEvent, Membership, MembershipView};
use crate::metrics::Metrics;
use crate::net::Network;
use crate::rpc::{Message, Ping, Pong, Rejection, Request, Response, Rpc, RpcError, Service};
use crate::secret::ClusterSecret;

/// What a node is run with besides its configuration: its network and its
/// incarnation number. Real nodes use [`Environment::real`]; simulations
/// inject a [`crate::net::SimNet`] and chosen generations.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Where sockets come from.
    pub network: Network,
    /// This incarnation's generation; a restart must use a higher one.
    pub generation: u64,
}

impl Environment {
    /// The operating system's network; the generation is the start time in
    /// microseconds since the Unix epoch, so each restart is newer.
    pub fn real() -> Environment {
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Environment {
            network: Network::Udp,
            generation,
        }
    }
}

/// Why a node could not start. Nothing is left running when start fails.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process (or node) holds the address. Pick another, or stop
    /// the other process.
    #[error("{what} address {addr} is already in use")]
    AddrInUse {
        /// Which listener (`gossip`, `rpc`, `http`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// The address could not be bound for another reason (not local,
    /// permission). The source says why.
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The gossip layer failed to start.
    #[error("gossip failed to start: {0}")]
    Gossip(String),
}

impl StartError {
    /// Maps a bind error, naming the listener and address.
    pub fn from_bind(what: &'static str, addr: SocketAddr, source: io::Error) -> StartError {
        if source.kind() == io::ErrorKind::AddrInUse {
            StartError::AddrInUse { what, addr }
        } else {
            StartError::Bind { what, addr, source }
        }
    }
}

/// A running node. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    generation: u64,
    metrics: Arc<Metrics>,
    membership: Membership,
    rpc: Rpc,
}

/// What every node serves over RPC until the protocol drivers arrive:
/// pings.
struct NodeService {
    id: NodeId,
    generation: u64,
}

#[async_trait]
impl Service for NodeService {
    async fn request(&self, _from: NodeId, request: Request) -> Result<Response, Rejection> {
        match request {
            Request::Ping(Ping { payload }) => Ok(Response::Pong(Pong {
                id: self.id,
                generation: self.generation,
                payload,
            })),
        }
    }

    async fn message(&self, from: NodeId, message: Message) {
        match message {
            Message::Ping(_) => tracing::trace!(%from, "one-way ping"),
        }
    }
}

impl Mesh {
    /// Starts a node on the real network.
    pub async fn start(config: Config) -> Result<Mesh, StartError> {
        Mesh::start_with(config, Environment::real()).await
    }

    /// Starts a node in a given environment (simulations use this).
    pub async fn start_with(mut config: Config, env: Environment) -> Result<Mesh, StartError> {
        let metrics = Arc::new(Metrics::default());
        let format = crate::membership::wire_format(config.gossip_compression);
        let gossip = GossipTransport::bind(
            &env.network,
            config.gossip_addr,
            format,
            config.cluster_secret.as_ref(),
            metrics.clone(),
        )
        .await
        .map_err(|e| StartError::from_bind("gossip", config.gossip_addr, e))?;
        // Port 0 asks for any free port; peers must be told the real one.
        config.gossip_addr = gossip.local_addr();
        let secret = config
            .cluster_secret
            .clone()
            .unwrap_or_else(ClusterSecret::open_cluster);
        let service = Arc::new(NodeService {
            id: config.id,
            generation: env.generation,
        });
        let rpc = Rpc::bind(
            &env.network,
            config.rpc_addr,
            config.id,
            &secret,
            service,
            metrics.clone(),
        )
        .await
        .map_err(|e| StartError::from_bind("rpc", config.rpc_addr, e))?;
        config.rpc_addr = rpc.local_addr();
        let membership =
            match Membership::start(&config, gossip, env.generation, metrics.clone()).await {
                Ok(membership) => membership,
                Err(e) => {
                    rpc.close().await;
                    return Err(StartError::Gossip(format!("{e:#}")));
                }
            };
        tracing::info!(id = %config.id, gossip = %config.gossip_addr, rpc = %config.rpc_addr, generation = env.generation, "node started");
        Ok(Mesh {
            inner: Arc::new(Inner {
                config,
                generation: env.generation,
                metrics,
                membership,
                rpc,
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.config.id
    }

    /// This incarnation's generation.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The members as this node sees them now, by id (this node included).
    pub fn members(&self) -> Vec<Member> {
        self.inner.membership.view().members().cloned().collect()
    }

    /// The current membership view.
    pub fn membership(&self) -> Arc<MembershipView> {
        self.inner.membership.view()
    }

    /// A receiver that sees each new membership view.
    pub fn watch_members(&self) -> watch::Receiver<Arc<MembershipView>> {
        self.inner.membership.watch()
    }

    /// Membership changes (joined, left, died, restarted) from now on.
    pub fn member_events(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.membership.events()
    }

    /// This node's RPC endpoint, for calls to peers by address.
    pub fn rpc(&self) -> &Rpc {
        &self.inner.rpc
    }

    /// Pings a live member over RPC and returns its answer.
    pub async fn ping(&self, node: NodeId, timeout: Duration) -> Result<Pong, RpcError> {
        let view = self.membership();
        let member = view.get(node).filter(|m| m.is_alive());
        let Some(member) = member else {
            return Err(RpcError::UnknownPeer { node });
        };
        let ping = Request::Ping(Ping {
            payload: Vec::new(),
        });
        match self.inner.rpc.call(member.rpc_addr, ping, timeout).await? {
            Response::Pong(pong) => Ok(pong),
        }
    }

    /// This node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Leaves the cluster gracefully and stops every task of the node.
    /// Peers record a leave, not a death. Calling it again does nothing.
    pub async fn shutdown(&self) {
        self.inner.membership.leave().await;
        self.inner.rpc.close().await;
    }

    /// Stops at once without telling peers, as a crash would (peers time
    /// the node out). Used by simulations to kill a node.
    pub async fn kill(&self) {
        self.inner.membership.stop().await;
        self.inner.rpc.close().await;
    }
}
