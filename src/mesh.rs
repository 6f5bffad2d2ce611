//! The [`Mesh`] handle: what an embedding daemon holds. It starts a node on
//! the host's tokio runtime, answers questions about the cluster, and stops
//! the node when asked. It never exits the process and installs no global
//! tracing subscriber: the host owns both.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

use crate::config::{Config, NodeId};
use crate::membership::{GossipTransport, Member, MemberEvent, Membership, MembershipView};
use crate::metrics::Metrics;
use crate::net::Network;

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
        let gossip =
            GossipTransport::bind(&env.network, config.gossip_addr, format, metrics.clone())
                .await
                .map_err(|e| StartError::from_bind("gossip", config.gossip_addr, e))?;
        // Port 0 asks for any free port; peers must be told the real one.
        config.gossip_addr = gossip.local_addr();
        let membership = Membership::start(&config, gossip, env.generation, metrics.clone())
            .await
            .map_err(|e| StartError::Gossip(format!("{e:#}")))?;
        tracing::info!(id = %config.id, gossip = %config.gossip_addr, generation = env.generation, "node started");
        Ok(Mesh {
            inner: Arc::new(Inner {
                config,
                generation: env.generation,
                metrics,
                membership,
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

    /// This node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Leaves the cluster gracefully and stops every task of the node.
    /// Peers record a leave, not a death. Calling it again does nothing.
    pub async fn shutdown(&self) {
        self.inner.membership.leave().await;
    }

    /// Stops at once without telling peers, as a crash would (peers time
    /// the node out). Used by simulations to kill a node.
    pub async fn kill(&self) {
        self.inner.membership.stop().await;
    }
}
