//! The [`Mesh`] handle: what an embedding daemon holds. It starts a node on
//! the host's tokio runtime, answers questions about the cluster, and stops
//! the node when asked. It never exits the process and installs no global
//! tracing subscriber: the host owns both.
//!
//! Owns: assembly at start (data directory, membership, RPC, driver) and
//! the handle's questions. Must not hold protocol state: it asks the
//! driver, and reads what the driver publishes.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use crate::clock::Clock;
use crate::config::Config;
use crate::election::{Election, Leadership, Memory};
use crate::ids::{Epoch, Generation, NodeId};
use crate::locks::table::TableConfig;
use crate::locks::{
    LockBuilder, LockPath, LockReply, LockRequest, LockTable, NamedElection, PathError, Replica,
};
use crate::membership::{
    GossipStart, GossipTransport, Member, MemberEvent, Membership, MembershipView,
};
use crate::metrics::Metrics;
use crate::net::{Network, SimGossip};
use crate::node::{Driver, Input, Shared};
use crate::rpc::{Message, Ping, Pong, Rejection, Request, Response, Rpc, RpcError, Service};
use crate::secret::ClusterSecret;
use crate::storage::{DataDir, Persister};

/// What a node is run with besides its configuration: its network, its
/// incarnation number and its protocol clock. Real nodes use
/// [`Environment::real`]; simulations inject a [`crate::net::SimNet`],
/// chosen generations and tokio's clock.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Where sockets come from.
    pub network: Network,
    /// This incarnation's generation; a restart must use a higher one.
    pub generation: Generation,
    /// The clock leases are measured on (T1).
    pub clock: Clock,
    /// How long a write to the data directory takes in a simulation
    /// (virtual time; zero writes at once). Real nodes write on a thread
    /// of their own and take what the disk takes.
    pub disk_latency: Duration,
    /// A simulated node's records file: the records its last run held
    /// (a simulation writes every change at once). Real nodes keep
    /// `records.redb` in their data directory.
    pub sim_records: Option<Vec<crate::idempotency::Record>>,
    /// How long the node holds its data directory's lock: until the
    /// process ends (real nodes), or while the node runs (a simulated
    /// node, which stands for a process of its own). K5 rests on it.
    pub dir_lock: crate::storage::LockScope,
    /// How often the leader prunes released locks' tombstones
    /// (`locks::table::PRUNE_EVERY` on real nodes; simulations prune
    /// sooner, so that short runs prune under their faults).
    pub prune_every: Duration,
    /// Where a new leader adopts its table (K2), which takes a while for
    /// a large one: `None`, on a blocking thread while the node's task
    /// goes on (real nodes); `Some(d)`, on the node's task `d` of virtual
    /// time later (simulations, which replay a seed exactly).
    pub adopt_latency: Option<Duration>,
}

impl Environment {
    /// The operating system's network; the generation is the start time in
    /// microseconds since the Unix epoch, so each restart is newer.
    pub fn real() -> Environment {
        let generation = Generation(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
        );
        Environment {
            network: Network::Udp,
            generation,
            clock: Clock::Boottime,
            disk_latency: Duration::ZERO,
            sim_records: None,
            dir_lock: crate::storage::LockScope::Process,
            prune_every: crate::locks::table::PRUNE_EVERY,
            adopt_latency: None,
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
    /// The data directory could not be opened or read.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
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

/// Stops `store` writing to and loading from its records file and waits
/// for the writer (once it wrote what it holds) and the loader to end.
async fn close_records(store: &crate::idempotency::Store, threads: Option<RecordsThreads>) {
    store.close_disk();
    if let Some((writer, loader)) = threads {
        let _ = tokio::task::spawn_blocking(move || {
            let _ = loader.join();
            writer.join()
        })
        .await;
    }
}

/// The records file's writer and loader threads.
type RecordsThreads = (
    std::thread::JoinHandle<()>,
    std::thread::JoinHandle<std::io::Result<crate::storage::records::Loaded>>,
);

struct Inner {
    config: Config,
    generation: Generation,
    metrics: Arc<Metrics>,
    membership: Arc<Membership>,
    rpc: Arc<Rpc>,
    driver: Driver,
    shared: Arc<Shared>,
    /// The threads writing and loading the records file, with a data
    /// directory.
    records_threads: std::sync::Mutex<Option<RecordsThreads>>,
}

/// What a node serves over RPC: pings, and election requests handed to
/// the driver (set once it runs).
struct NodeService {
    id: NodeId,
    generation: Generation,
    driver: OnceLock<tokio::sync::mpsc::Sender<Input>>,
    records: Arc<crate::idempotency::Store>,
    clock: Clock,
    /// The node's records hold every completion its copies settled
    /// (shared with the driver).
    complete: Arc<std::sync::atomic::AtomicBool>,
}

impl NodeService {
    /// Hands a request to the driver and waits for its answer.
    async fn forward<T>(
        &self,
        input: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Input,
    ) -> Result<T, Rejection> {
        let driver = self.driver.get().ok_or(Rejection::ShuttingDown)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        driver
            .send(input(reply))
            .await
            .map_err(|_| Rejection::ShuttingDown)?;
        answer.await.map_err(|_| Rejection::ShuttingDown)
    }
}

#[async_trait]
impl Service for NodeService {
    async fn request(&self, from: NodeId, request: Request) -> Result<Response, Rejection> {
        match request {
            Request::Ping(Ping { payload }) => Ok(Response::Pong(Pong {
                id: self.id,
                generation: self.generation,
                payload,
            })),
            Request::Election(request) => {
                self.forward(|reply| Input::Request {
                    from,
                    request,
                    reply,
                })
                .await
            }
            Request::Lock(request) => self
                .forward(|reply| Input::Lock {
                    from,
                    request,
                    reply,
                })
                .await
                .map(Response::Lock),
            Request::Voter(request) => self
                .forward(|reply| Input::Voter {
                    from,
                    request,
                    reply,
                })
                .await
                .map(Response::Voter),
            Request::Time => Ok(Response::Time {
                wall_ms: self.clock.wall_ms(),
            }),
            Request::Life => Ok(Response::Life(crate::rpc::Life {
                id: self.generation.0,
                complete: crate::node::records_complete(&self.complete, &self.records),
            })),
            Request::Copy => self.forward(|reply| Input::Copy { reply }).await,
            Request::Reconcile(message) => {
                let now_ms = self.clock.wall_ms();
                crate::node::anti_entropy::respond(&self.records, *message, now_ms)
                    .map(|answer| Response::Reconcile(Box::new(answer)))
                    .map_err(|e| match e {
                        crate::idempotency::reconcile::ReconcileError::Loading => {
                            Rejection::Unsupported
                        }
                        _ => Rejection::Malformed,
                    })
            }
        }
    }

    async fn message(&self, from: NodeId, message: Message) {
        match message {
            Message::Ping(_) => tracing::trace!(%from, "one-way ping"),
            Message::Completed { key, claim, facts } => {
                // The leader's commit notice (I2).
                let wall_ms = self.clock.wall_ms();
                let news = self.records.learn(&key, claim, &facts, wall_ms);
                tracing::trace!(%from, key, %claim, news, "completion notice");
            }
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
        // A simulated network that models gossip needs no gossip socket:
        // the node takes its address on the network's board instead.
        let gossip = match &env.network {
            Network::Sim(net) if net.gossip() == SimGossip::Model => {
                GossipStart::Model(net.clone())
            }
            network => {
                let gossip = GossipTransport::bind(
                    network,
                    config.gossip_addr,
                    format,
                    config.cluster_secret.as_ref(),
                    metrics.clone(),
                )
                .await
                .map_err(|e| StartError::from_bind("gossip", config.gossip_addr, e))?;
                // Port 0 asks for any free port; peers must be told the
                // real one.
                config.gossip_addr = gossip.local_addr();
                GossipStart::Chitchat(gossip)
            }
        };
        let secret = config
            .cluster_secret
            .clone()
            .unwrap_or_else(ClusterSecret::open_cluster);
        // What the data directory remembers, read before anything can be
        // promised or acked; a directory that is not this node's refuses
        // the start (E7).
        let mut generation = env.generation;
        let mut ended = None;
        let (disk, memory, promised, replica) = match &config.data_dir {
            Some(dir) => {
                let data_dir = |source| StartError::DataDir {
                    path: dir.clone(),
                    source,
                };
                let mut repaired = Vec::new();
                let (data, stored, anew) = DataDir::open_locked(
                    dir,
                    &config.cluster,
                    config.id,
                    env.dir_lock,
                    &mut repaired,
                )
                .map_err(data_dir)?;
                for message in repaired {
                    tracing::warn!("{message}");
                }
                // K5: a lock taken anew proves the last run on this
                // directory gone with its process.
                if anew {
                    ended = data.ended_run().map(Generation);
                }
                generation = Generation(data.next_generation(generation.0).map_err(data_dir)?);
                let (memory, promised, replica) = stored.memory();
                let disk = match env.clock {
                    Clock::Boottime => Persister::thread(data, &stored).map_err(data_dir)?,
                    // Simulations write inline: virtual time stays honest.
                    Clock::Tokio { .. } => Persister::inline(data, &stored, env.disk_latency),
                };
                (disk, memory, promised, replica)
            }
            None => (
                Persister::memory(),
                Memory::None,
                Epoch::ZERO,
                Replica::default(),
            ),
        };
        // Not seeded from a voter's copy: a completion in it may never
        // have reached a majority (I2). With a data directory, the
        // records this node held (committed, every one) come back from
        // its records file; the rest by anti-entropy, and the leader's
        // table answers begins meanwhile. Simulations keep them in
        // memory: the file is no part of the protocol.
        let (records, records_threads) = match (&config.data_dir, &env.clock) {
            (Some(dir), Clock::Boottime) => {
                let (path, wall_ms) = (dir.clone(), env.clock.wall_ms());
                // Off the runtime: a file not closed cleanly is repaired
                // as it opens.
                let expected = matches!(memory, Memory::Durable);
                let opened = tokio::task::spawn_blocking(move || {
                    crate::storage::records::open_store(&path, wall_ms, expected)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|opened| opened)
                .map_err(|source| StartError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                for problem in &opened.problems {
                    tracing::warn!("{problem}");
                }
                (opened.store, Some((opened.writer, opened.loader)))
            }
            (Some(_), _) => {
                // A simulation's records file: what the last run held.
                let store = crate::idempotency::Store::default();
                store.load(
                    env.sim_records.as_deref().unwrap_or_default(),
                    env.clock.wall_ms(),
                );
                (Arc::new(store), None)
            }
            (None, _) => (Arc::new(crate::idempotency::Store::default()), None),
        };
        // Records whose loss the marker of the data directory says were
        // not filled in again yet.
        if let Some(dir) = &config.data_dir
            && crate::storage::records_incomplete(dir)
        {
            records.mark_lost();
        }
        let complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let service = Arc::new(NodeService {
            id: config.id,
            generation,
            driver: OnceLock::new(),
            records: records.clone(),
            clock: env.clock.clone(),
            complete: complete.clone(),
        });
        let rpc = Rpc::bind(
            &env.network,
            config.rpc_addr,
            config.id,
            &secret,
            service.clone(),
            metrics.clone(),
        )
        .await
        .map_err(|e| StartError::from_bind("rpc", config.rpc_addr, e));
        let rpc = match rpc {
            Ok(rpc) => rpc,
            Err(e) => {
                close_records(&records, records_threads).await;
                return Err(e);
            }
        };
        let rpc = Arc::new(rpc);
        config.rpc_addr = rpc.local_addr();
        let membership = match Membership::start(&config, gossip, generation, metrics.clone()).await
        {
            Ok(membership) => membership,
            Err(e) => {
                rpc.close().await;
                close_records(&records, records_threads).await;
                return Err(StartError::Gossip(format!("{e:#}")));
            }
        };
        config.gossip_addr = membership.gossip_addr();
        if let Some(ended) = ended {
            membership
                .set_local(crate::membership::KEY_ENDED, &ended.0.to_string())
                .await;
        }
        let membership = Arc::new(membership);
        let mut shared = Shared::new(env.clock.clone());
        shared.adopt_latency = env.adopt_latency;
        shared.promised_durable = disk.durable_promise();
        shared.records = records;
        shared.life = generation.0;
        shared.complete = complete;
        let shared = Arc::new(shared);
        let election = Election::new(
            config.id,
            &config.voters,
            config.election,
            env.clock.now(),
            memory,
            promised,
            config.bootstrap,
            generation.0 ^ config.id.0.rotate_left(32),
        );
        let mut locks = LockTable::new(TableConfig {
            waiters_max: config.lock_waiters_max,
            claims_max: config.idempotency_records_max,
            ttl_max_ms: config.election.lock_ttl_max.as_millis() as u64,
            prune_every: env.prune_every,
            ..TableConfig::new(&config.voters, config.election.drift)
        });
        // K5: this run's own proof, which gossip does not bring back to
        // it: should it lead, it frees the grants of its last run.
        if let Some(ended) = ended {
            locks.handle_run_ended(Duration::ZERO, config.id, ended);
        }
        let driver = Driver::start(
            election,
            locks,
            replica,
            disk,
            rpc.clone(),
            membership.clone(),
            shared.clone(),
            metrics.clone(),
        );
        // Invariant: set once, here, before any election request can be
        // served (until now they were refused as "shutting down").
        let _ = service.driver.set(driver.tx.clone());
        tokio::spawn(crate::node::anti_entropy::run(
            config.id,
            rpc.clone(),
            membership.clone(),
            shared.clone(),
        ));
        tracing::info!(id = %config.id, gossip = %config.gossip_addr, rpc = %config.rpc_addr, %generation, "node started");
        Ok(Mesh {
            inner: Arc::new(Inner {
                config,
                generation,
                metrics,
                membership,
                rpc,
                driver,
                shared,
                records_threads: std::sync::Mutex::new(records_threads),
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.config.id
    }

    /// This incarnation's generation.
    pub fn generation(&self) -> Generation {
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
            _ => Err(RpcError::Malformed),
        }
    }

    /// The leader this node knows now: itself while its lease is valid,
    /// else, on a voter, the sender of a heartbeat within the lease, and
    /// on a member that is not a voter, a live member whose gossiped
    /// claim to lead changed within the lease.
    pub fn leader(&self) -> Option<Leadership> {
        *self.inner.shared.leader.borrow()
    }

    /// A receiver that sees each change of [`Mesh::leader`].
    pub fn watch_leader(&self) -> watch::Receiver<Option<Leadership>> {
        self.inner.shared.leader.subscribe()
    }

    /// True only while this node is leader with a valid lease, checked on
    /// the protocol clock at the moment of the call. Act as leader only
    /// after this says so, and check again before each act.
    pub fn is_leader(&self) -> bool {
        self.inner.shared.is_leader()
    }

    /// Leadership changes as this node sees them, from now on (`None`:
    /// no leader known).
    pub fn leader_events(&self) -> broadcast::Receiver<Option<Leadership>> {
        self.inner.shared.events.subscribe()
    }

    /// The lease this node serves under, on its protocol clock, and that
    /// clock's reading (for the simulation's safety checker).
    #[cfg(feature = "sim")]
    pub(crate) fn lease_state(&self) -> LeaseState {
        let shared = &self.inner.shared;
        let cell = *shared.lease.lock().unwrap_or_else(|e| e.into_inner());
        LeaseState {
            lease: cell.serving.filter(|_| !shared.is_stopped()),
            now: shared.clock.now(),
            promised: Epoch(
                shared
                    .promised_durable
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            ended: cell.ended,
        }
    }

    /// Merges records into this node's replica as anti-entropy would
    /// (simulations: a node's replica far ahead of another's without the
    /// traffic that would put it there); how many were news.
    #[cfg(feature = "sim")]
    pub(crate) fn plant_records(&self, records: Vec<crate::idempotency::Record>) -> usize {
        let wall_ms = self.inner.shared.clock.wall_ms();
        self.inner.shared.records.merge_all(records, wall_ms)
    }

    /// Freezes the election driver for `d`, as SIGSTOP would freeze the
    /// process (simulations).
    #[cfg(feature = "sim")]
    pub(crate) async fn pause_driver(&self, d: Duration) {
        self.inner.driver.pause(d).await;
    }

    /// A lock by name: set its TTL and wait, then acquire it.
    ///
    /// ```no_run
    /// # async fn f(mesh: coordmesh::Mesh) -> Result<(), coordmesh::locks::LockError> {
    /// use std::time::Duration;
    /// let guard = mesh
    ///     .lock("nightly-report")
    ///     .ttl(Duration::from_secs(5))
    ///     .wait(Duration::from_secs(1))
    ///     .acquire()
    ///     .await?;
    /// // Pass guard.token() to every resource the job writes to.
    /// println!("holding with token {}", guard.token());
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder::new(Arc::new(self.clone()), name.into())
    }

    /// An idempotent operation on `key`: it runs once, and every retry
    /// (through this node or any other) gets its first result.
    ///
    /// ```no_run
    /// # async fn f(mesh: coordmesh::Mesh) -> Result<(), coordmesh::idempotency::IdempotencyError> {
    /// use std::time::Duration;
    /// let receipt: String = mesh
    ///     .idempotent("payment-7f3a")
    ///     .fingerprint("sha256:of-the-request")
    ///     .ttl(Duration::from_secs(24 * 3600))
    ///     .run(|| async { "charged 10 EUR".to_string() })
    ///     .await?
    ///     .into_inner();
    /// # Ok(()) }
    /// ```
    pub fn idempotent(&self, key: impl Into<String>) -> crate::idempotency::Idempotent {
        crate::idempotency::Idempotent::new(
            Arc::new(self.clone()),
            Some(self.inner.shared.records.clone()),
            key.into(),
        )
    }

    /// The committed record of `key` in this node's replica, unless it
    /// has expired (I2: only committed records are returned).
    pub fn idempotency_record(&self, key: &str) -> Option<crate::idempotency::Record> {
        let wall_ms = self.inner.shared.clock.wall_ms();
        self.inner.shared.records.get(key, wall_ms)
    }

    /// This node's wall clock's offset from the leader's, if beyond half
    /// the records' skew bound: it then answers no idempotency request
    /// (I6).
    pub fn idempotency_clock_skew(&self) -> Option<i64> {
        self.inner.shared.records.skewed()
    }

    /// True once this node has measured its wall clock against the
    /// leader's: it answers nothing from its own records before (I6).
    pub fn idempotency_clock_measured(&self) -> bool {
        self.inner.shared.records.measured()
    }

    /// True once this node's records hold every completion its lock
    /// copies settled into them: it never lost them, or it has filled
    /// them in from a majority of voters since (PROTOCOL.md,
    /// "Idempotency" 8). Only a voter's counts.
    pub fn idempotency_records_complete(&self) -> bool {
        let shared = &self.inner.shared;
        crate::node::records_complete(&shared.complete, &shared.records)
    }

    /// Every record in this node's replica, by key (unexpired; committed or
    /// not, [`crate::idempotency::Record::committed`] says).
    pub fn idempotency_records(&self) -> Vec<crate::idempotency::Record> {
        let wall_ms = self.inner.shared.clock.wall_ms();
        self.inner.shared.records.snapshot(wall_ms)
    }

    /// A named election for an application role, built on a lock.
    pub fn election(&self, name: impl Into<String>) -> NamedElection {
        NamedElection::new(std::sync::Arc::new(self.clone()), name.into())
    }

    /// Sends a lock request to the leader (this node's driver when it
    /// leads) and returns its answer. `NoQuorum` when no leader is known.
    pub async fn lock_request(
        &self,
        request: LockRequest,
        timeout: Duration,
    ) -> Result<LockReply, RpcError> {
        if self.inner.shared.is_stopped() {
            return Err(RpcError::Closed);
        }
        let Some(leader) = self.leader() else {
            return Ok(LockReply::NoQuorum);
        };
        if leader.id == self.id() {
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.inner
                .driver
                .tx
                .send(Input::Lock {
                    from: self.id(),
                    request,
                    reply,
                })
                .await
                .map_err(|_| RpcError::Closed)?;
            return match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(_)) => Err(RpcError::Closed),
                Err(_) => Err(RpcError::Timeout { after: timeout }),
            };
        }
        let view = self.membership();
        let Some(member) = view.get(leader.id).filter(|m| m.is_alive()) else {
            return Ok(LockReply::NoQuorum);
        };
        // Given up as soon as this node follows another leader (the one
        // asked died or was deposed, and a successor was heard of): its
        // fate unknown, as at a timeout, and the caller retries with the
        // same request id through the leader there is now, instead of
        // waiting out the timeout on a dead one. A leader merely lost
        // from sight for a while is waited for: the call may yet be
        // answered. (Waited for on the driver's notice rather than the
        // watch, whose waiters wake in a random order: a seed replays a
        // simulated run.)
        let sent = tokio::time::Instant::now();
        let succeeded = async {
            loop {
                let changed = self.inner.shared.leader_changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if self.leader().is_some_and(|now| now != leader) {
                    return;
                }
                changed.await;
            }
        };
        let call = self
            .inner
            .rpc
            .call(member.rpc_addr, Request::Lock(request), timeout);
        // Biased: a seed replays a simulated run.
        let answer = tokio::select! {
            biased;
            answer = call => answer?,
            _ = succeeded => return Err(RpcError::Timeout { after: sent.elapsed() }),
        };
        match answer {
            Response::Lock(r) => Ok(r),
            _ => Err(RpcError::Malformed),
        }
    }

    /// The protocol clock's reading: CLOCK_BOOTTIME on real nodes, the
    /// simulation's clock in simulations. Lease validity is measured on it.
    pub fn clock_now(&self) -> Duration {
        self.inner.shared.clock.now()
    }

    /// True once the node shut down or was killed.
    pub fn is_stopped(&self) -> bool {
        self.inner.shared.is_stopped()
    }

    /// The highest epoch this node has heard of.
    pub fn epoch(&self) -> Epoch {
        Epoch(
            self.inner
                .shared
                .max_epoch
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// When this voter last formed the cluster anew, on the protocol clock
    /// ([`Mesh::clock_now`]): a majority of voters recovered together with
    /// no memory of the cluster's earlier life (E7), so fencing tokens may
    /// have started over. `None` if it never did.
    pub fn formed_anew_at(&self) -> Option<Duration> {
        *self
            .inner
            .shared
            .formed_anew_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// True while this voter recovers after its start (E7): it neither
    /// promises nor acks until it has copied the cluster's state from
    /// healthy voters or resumed from its data directory; and then until
    /// its idempotency records are complete (filled in from a majority
    /// if it lost them, PROTOCOL.md "Idempotency" 8): stop another voter
    /// only once no voter is recovering. False on a node that is no
    /// voter.
    pub fn is_recovering(&self) -> bool {
        self.inner.config.voters.contains(&self.inner.config.id)
            && (!self
                .inner
                .shared
                .recovered
                .load(std::sync::atomic::Ordering::Relaxed)
                || !self.idempotency_records_complete())
    }

    /// This node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Leaves the cluster gracefully and stops every task of the node.
    /// Peers record a leave, not a death. Calling it again does nothing.
    pub async fn shutdown(&self) {
        // E6: gossip `leaving` first, so peers stop deferring to this
        // node; a leader then stops serving and resigns, which ends the
        // voters' blackout; the leave completes after that.
        self.inner.membership.announce_leaving().await;
        self.inner.driver.resign().await;
        self.inner.shared.stop();
        self.inner.driver.stop().await;
        self.inner.membership.finish_leave().await;
        self.inner.rpc.close().await;
        self.close_records().await;
    }

    /// Ends the records file's writer and loader: the file is closed
    /// when shutdown returns.
    async fn close_records(&self) {
        let threads = self
            .inner
            .records_threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        close_records(&self.inner.shared.records, threads).await;
    }

    /// Stops at once without telling peers, as a crash would (peers time
    /// the node out). Used by simulations to kill a node.
    pub async fn kill(&self) {
        self.inner.shared.stop();
        self.inner.driver.stop().await;
        self.inner.membership.stop().await;
        self.inner.rpc.close().await;
        self.close_records().await;
    }
}

/// A node reaches the leader through itself: its own driver when it
/// leads, an RPC to the leader it knows otherwise.
#[async_trait]
impl LockPath for Mesh {
    async fn lock_request(
        &self,
        request: LockRequest,
        timeout: Duration,
    ) -> Result<LockReply, PathError> {
        Ok(Mesh::lock_request(self, request, timeout).await?)
    }

    fn now(&self) -> Duration {
        self.clock_now()
    }

    fn drift(&self) -> f64 {
        self.config().election.drift
    }

    fn is_stopped(&self) -> bool {
        Mesh::is_stopped(self)
    }

    fn request_id_prefix(&self) -> String {
        format!("{}-", self.id())
    }

    fn wall_ms(&self) -> u64 {
        self.inner.shared.clock.wall_ms()
    }

    fn knows_leader(&self) -> bool {
        self.leader().is_some()
    }

    fn holder_generation(&self) -> Option<Generation> {
        // K5: a holder here lives in this node's process, which holds
        // the data directory's lock to its end; without a directory no
        // later run can prove it gone.
        self.inner
            .config
            .data_dir
            .is_some()
            .then_some(self.inner.generation)
    }

    async fn pause_for_leader(&self, pause: Duration) {
        let changed = self.inner.shared.leader_changed.notified();
        let _ = tokio::time::timeout(pause, changed).await;
    }
}

/// What a node believes about its own leadership, read by the checker.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Copy)]
pub struct LeaseState {
    /// While serving: the term and its lease end.
    pub lease: Option<(Leadership, Duration)>,
    /// The node's protocol clock now.
    pub now: Duration,
    /// The promise its data directory holds (0 without one).
    pub promised: Epoch,
    /// The last term that stopped serving before its lease ran out, and
    /// when: from then on `is_leader()` answered false.
    pub ended: Option<(Epoch, Duration)>,
}
