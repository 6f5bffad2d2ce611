//! Simulated clusters: many full nodes ([`Mesh`]) in one process, on a
//! [`SimNet`], under tokio's paused clock. Nodes run the same code as in
//! production; only their sockets are simulated.
//!
//! Run under a paused clock (`#[tokio::test(start_paused = true)]`, or a
//! runtime built with `start_paused(true)`): time then jumps whenever every
//! task waits, so a minute of cluster life takes milliseconds.
//!
//! Every cluster logs its seed at creation. The seed drives the network's
//! random faults and, through them, the gossip model its nodes share
//! (`membership::model`); the paused clock and one thread order the rest,
//! so `COORDMESH_SEED` replays a run exactly. A cluster made to gossip by
//! chitchat itself ([`SimGossip::Chitchat`], the membership simulations)
//! replays only its faults: chitchat picks gossip peers with its own RNG.
//!
//! ```
//! # use std::time::Duration;
//! # use coordmesh::sim::SimCluster;
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut cluster = SimCluster::start(SimCluster::seed_from_env(), 3).await;
//! cluster
//!     .eventually(Duration::from_secs(5), "all see all", |c| c.all_see_alive(3))
//!     .await;
//! cluster.shutdown().await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ConfigBuilder;
use crate::election::Leadership;
use crate::ids::{Epoch, Generation, NodeId};
use crate::mesh::{Environment, Mesh};
use crate::net::{Faults, Network, SimGossip, SimNet};

/// Gossip port of every simulated node (each node is its own host).
pub const SIM_GOSSIP_PORT: u16 = 7400;
/// How many of the lowest ids every node uses as seeds.
pub const SIM_SEEDS: u64 = 3;
/// The longest lock TTL in simulations (`lock-ttl-max-ms`) unless the
/// tuning says otherwise: it bounds the wait of a full restart without
/// data directories (E7), so it is kept short.
pub const SIM_LOCK_TTL_MAX_MS: u64 = 3000;
/// How often [`SimCluster::eventually`] re-checks its condition.
pub const EVENTUALLY_POLL: Duration = Duration::from_millis(10);

/// A node slot: its fixed identity, its host's clock, and the running
/// node if any.
struct Slot {
    builder: ConfigBuilder,
    mesh: Option<Mesh>,
    /// The host's protocol clock: shared origin, its own suspensions; it
    /// carries on across restarts of the node, like CLOCK_BOOTTIME.
    clock: crate::clock::Clock,
    /// Started at least once: later starts are restarts, not the first
    /// start of a new cluster (E7's bootstrap).
    started: bool,
    /// The node's records file (with a data directory): what its last run
    /// held when it stopped.
    records: Option<Vec<crate::idempotency::Record>>,
}

/// A cluster of simulated nodes.
pub struct SimCluster {
    seed: u64,
    net: SimNet,
    voters: Vec<NodeId>,
    slots: BTreeMap<NodeId, Slot>,
    next_generation: u64,
    /// The cluster's common clock (tokio's, never suspended): nodes'
    /// clocks run from the same origin, plus their hosts' suspensions.
    clock: crate::clock::Clock,
    /// Applied to every node's configuration (gossip interval, …).
    pub tuning: ConfigBuilder,
    /// When set, each voter gets a data directory below it (added nodes
    /// only), so its promises survive restarts.
    pub data_root: Option<std::path::PathBuf>,
    /// Voters that run without a data directory even with `data_root`
    /// (clusters mixing durable and ephemeral voters).
    pub ephemeral: std::collections::BTreeSet<NodeId>,
    /// How long each write to a data directory takes (virtual time).
    pub disk_latency: Duration,
    /// How often a leader prunes released locks' tombstones
    /// (`locks::table::PRUNE_EVERY` unless a test sets it).
    pub prune_every: Duration,
    /// How long (virtual time) a new leader takes to adopt its table.
    pub adopt_latency: Duration,
}

/// Node ids 1 to `n`.
pub fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

impl SimCluster {
    /// The leader every running node agrees on, if they do and it runs.
    pub fn agreed_leader(&self) -> Option<NodeId> {
        let running = self.running();
        let first = self.mesh(*running.first()?).leader()?;
        (running.contains(&first.id)
            && running
                .iter()
                .all(|id| self.mesh(*id).leader() == Some(first)))
        .then_some(first.id)
    }

    /// Waits (up to 5 s of virtual time) for a leader every running node
    /// agrees on.
    pub async fn led(&self) -> NodeId {
        self.eventually(Duration::from_secs(5), "a leader all agree on", |c| {
            c.agreed_leader().is_some()
        })
        .await;
        self.agreed_leader().expect("a leader")
    }

    /// The seed from `COORDMESH_SEED`, or a random one.
    pub fn seed_from_env() -> u64 {
        std::env::var("COORDMESH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random)
    }

    /// An empty cluster whose voters are `voters`, gossiping by the
    /// replayable model. Prints the seed.
    pub fn new(seed: u64, voters: Vec<NodeId>) -> SimCluster {
        SimCluster::with_gossip(seed, voters, SimGossip::Model)
    }

    /// An empty cluster whose voters are `voters`, gossiping as `gossip`
    /// says ([`SimGossip::Chitchat`] to simulate the gossip itself).
    /// Prints the seed.
    pub fn with_gossip(seed: u64, voters: Vec<NodeId>, gossip: SimGossip) -> SimCluster {
        eprintln!("simulation seed: {seed} (replay with COORDMESH_SEED={seed})");
        SimCluster {
            seed,
            net: SimNet::with_gossip(seed, gossip),
            voters,
            slots: BTreeMap::new(),
            next_generation: 1,
            clock: crate::clock::Clock::tokio(tokio::time::Instant::now()),
            tuning: ConfigBuilder::default(),
            data_root: None,
            ephemeral: Default::default(),
            disk_latency: Duration::ZERO,
            prune_every: crate::locks::table::PRUNE_EVERY,
            adopt_latency: Duration::ZERO,
        }
    }

    /// Starts nodes `1..=n`, the first `min(n, 5)` of them voters.
    pub async fn start(seed: u64, n: u64) -> SimCluster {
        SimCluster::start_tuned(seed, n, ConfigBuilder::default()).await
    }

    /// As [`SimCluster::start`], with `tuning` applied to every node.
    pub async fn start_tuned(seed: u64, n: u64, tuning: ConfigBuilder) -> SimCluster {
        SimCluster::start_gossiping(seed, n, tuning, SimGossip::Model).await
    }

    /// As [`SimCluster::start_tuned`], gossiping as `gossip` says.
    pub async fn start_gossiping(
        seed: u64,
        n: u64,
        tuning: ConfigBuilder,
        gossip: SimGossip,
    ) -> SimCluster {
        let voters = (1..=n.min(5)).map(NodeId).collect();
        let mut cluster = SimCluster::with_gossip(seed, voters, gossip);
        cluster.tuning = tuning;
        for id in 1..=n {
            cluster.add(NodeId(id)).await;
        }
        cluster
    }

    /// The seed this cluster was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The simulated network (faults, statistics).
    pub fn net(&self) -> &SimNet {
        &self.net
    }

    /// The simulated host address of a node.
    pub fn host(id: NodeId) -> IpAddr {
        // Virtual addresses in the loopback range: they never leave the
        // process, and could not leave the machine if they did.
        let n = id.0 as u32;
        IpAddr::V4(Ipv4Addr::new(
            127,
            1 + (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
        ))
    }

    /// A node's gossip address.
    pub fn gossip_addr(id: NodeId) -> SocketAddr {
        SocketAddr::new(Self::host(id), SIM_GOSSIP_PORT)
    }

    /// A new host's protocol clock: the cluster's origin, no suspensions
    /// of its own yet.
    fn host_clock(&self) -> crate::clock::Clock {
        match &self.clock {
            crate::clock::Clock::Tokio { origin, .. } => crate::clock::Clock::tokio(*origin),
            other => other.clone(),
        }
    }

    /// A remote client (no node of its own) on the simulated network at
    /// host address `host` (outside the nodes' range, e.g. `127.200.0.1`),
    /// on the cluster's clock, knowing every node's RPC address.
    pub async fn remote_client(&self, host: IpAddr) -> crate::client::RemoteClient {
        self.remote_client_with(host, crate::client::ClientOptions::default())
            .await
    }

    /// As [`SimCluster::remote_client`], with `options`.
    pub async fn remote_client_with(
        &self,
        host: IpAddr,
        options: crate::client::ClientOptions,
    ) -> crate::client::RemoteClient {
        let agents = self
            .slots
            .values()
            .filter_map(|slot| {
                self.tuning
                    .clone()
                    .overlay(slot.builder.clone())
                    .build()
                    .ok()
            })
            .map(|config| config.rpc_addr)
            .collect();
        let clock = self.host_clock();
        crate::client::RemoteClient::start(
            &crate::net::Network::Sim(self.net.clone()),
            SocketAddr::new(host, SIM_GOSSIP_PORT + 1),
            clock,
            agents,
            &crate::ClusterSecret::open_cluster(),
            options,
        )
        .await
        .unwrap_or_else(|e| panic!("remote client at {host}: {e} (seed {})", self.seed))
    }

    /// Adds node `id` and starts it.
    pub async fn add(&mut self, id: NodeId) {
        self.add_tuned(id, ConfigBuilder::default()).await;
    }

    /// Adds node `id` with its own settings over the cluster's `tuning`
    /// (a node configured unlike the others), and starts it.
    pub async fn add_tuned(&mut self, id: NodeId, own: ConfigBuilder) {
        let seeds = (1..=SIM_SEEDS)
            .map(|s| Self::gossip_addr(NodeId(s)).to_string())
            .collect();
        let data_dir = self
            .data_root
            .as_ref()
            .filter(|_| self.voters.contains(&id) && !self.ephemeral.contains(&id))
            .map(|root| root.join(format!("node-{id}")));
        let builder = ConfigBuilder {
            id: Some(id),
            gossip: Some(Self::gossip_addr(id)),
            seed: Some(seeds),
            voters: Some(self.voters.clone()),
            data_dir,
            ..ConfigBuilder::default()
        }
        .overlay(own);
        let clock = self.host_clock();
        self.slots.insert(
            id,
            Slot {
                builder,
                mesh: None,
                clock,
                started: false,
                records: None,
            },
        );
        self.restart(id).await;
    }

    /// Starts node `id` again as a new generation (it must be stopped).
    /// A node's first start is the bootstrap of a new cluster (E7); later
    /// ones are restarts, unless the tuning says otherwise.
    pub async fn restart(&mut self, id: NodeId) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let first = !self.slot_mut(id).started;
        let tuning = ConfigBuilder {
            lock_ttl_max_ms: Some(SIM_LOCK_TTL_MAX_MS),
            bootstrap: Some(first),
            ..ConfigBuilder::default()
        }
        .overlay(self.tuning.clone());
        let seed = self.seed;
        let net = self.net.clone();
        let disk_latency = self.disk_latency;
        let prune_every = self.prune_every;
        let adopt_latency = self.adopt_latency;
        let slot = self.slot_mut(id);
        assert!(slot.mesh.is_none(), "node {id} is running; kill it first");
        slot.started = true;
        let config = tuning
            .overlay(slot.builder.clone())
            .build()
            .unwrap_or_else(|e| panic!("simulated node {id} config: {e} (seed {seed})"));
        let env = Environment {
            network: Network::Sim(net),
            generation: Generation(generation),
            clock: slot.clock.clone(),
            disk_latency,
            sim_records: slot.records.clone(),
            dir_lock: crate::storage::LockScope::Node,
            prune_every,
            adopt_latency: Some(adopt_latency),
        };
        let mesh = Mesh::start_with(config, env)
            .await
            .unwrap_or_else(|e| panic!("simulated node {id} failed to start: {e} (seed {seed})"));
        self.slot_mut(id).mesh = Some(mesh);
    }

    /// Changes the voter set, as an operator does: every node stopped,
    /// each started again with the new set (E7's "stop all, change,
    /// start"). A new voter gets a data directory below `data_root`; a
    /// node that is no voter any more keeps the directory it had.
    pub fn set_voters(&mut self, voters: Vec<NodeId>) {
        let seed = self.seed;
        for (id, slot) in &mut self.slots {
            assert!(slot.mesh.is_none(), "node {id} is running (seed {seed})");
            slot.builder.voters = Some(voters.clone());
            if voters.contains(id)
                && !self.ephemeral.contains(id)
                && slot.builder.data_dir.is_none()
            {
                slot.builder.data_dir = self
                    .data_root
                    .as_ref()
                    .map(|r| r.join(format!("node-{id}")));
            }
        }
        self.voters = voters;
    }

    /// Stops node `id` as a crash would: no leave, sockets closed.
    pub async fn kill(&mut self, id: NodeId) {
        if let Some(mesh) = self.slot_mut(id).mesh.take() {
            mesh.kill().await;
            self.keep_records(id, &mesh);
        }
    }

    /// Node `id` leaves gracefully.
    pub async fn leave(&mut self, id: NodeId) {
        if let Some(mesh) = self.slot_mut(id).mesh.take() {
            mesh.shutdown().await;
            self.keep_records(id, &mesh);
        }
    }

    /// A stopped node with a data directory keeps its records there.
    fn keep_records(&mut self, id: NodeId, mesh: &Mesh) {
        let slot = self.slot_mut(id);
        if slot.builder.data_dir.is_some() {
            slot.records = Some(mesh.idempotency_records());
        }
    }

    /// The running node `id`.
    pub fn mesh(&self, id: NodeId) -> &Mesh {
        self.slots
            .get(&id)
            .and_then(|s| s.mesh.as_ref())
            .unwrap_or_else(|| panic!("node {id} is not running (seed {})", self.seed))
    }

    /// Puts `records` in node `id`'s replica as anti-entropy would,
    /// without the traffic (a replica far ahead of the others); how many
    /// were news.
    pub fn plant_records(&self, id: NodeId, records: Vec<crate::idempotency::Record>) -> usize {
        self.mesh(id).plant_records(records)
    }

    /// Ids of running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.mesh.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Splits the cluster; nodes not named are isolated from everyone.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let groups: Vec<Vec<IpAddr>> = groups
            .iter()
            .map(|g| g.iter().map(|id| Self::host(*id)).collect())
            .collect();
        self.net.partition(&groups);
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        let rest: Vec<NodeId> = self.slots.keys().copied().filter(|n| *n != id).collect();
        self.partition(&[&[id], &rest]);
    }

    /// Cuts everything `from` sends to `to` (one direction).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.net.block(Self::host(from), Self::host(to));
    }

    /// Undoes [`SimCluster::block`] for that direction.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.net.unblock(Self::host(from), Self::host(to));
    }

    /// Loses every request of `kind` ("lock-replicate", "heartbeat",
    /// "prepare", "sync", …) from `from` to `to`, and nothing else.
    pub fn drop_requests(&self, from: NodeId, to: NodeId, kind: &'static str) {
        self.net
            .drop_requests(Self::host(from), Self::host(to), kind);
    }

    /// Undoes [`SimCluster::drop_requests`].
    pub fn keep_requests(&self, from: NodeId, to: NodeId, kind: &'static str) {
        self.net
            .keep_requests(Self::host(from), Self::host(to), kind);
    }

    /// Removes partitions, blocked directions and dropped kinds.
    pub fn heal(&self) {
        self.net.heal();
    }

    /// Node `id`'s host comes back from a suspend of `d`: its protocol
    /// clock (CLOCK_BOOTTIME) moves on by `d` at once, while its timers
    /// (tokio's, like a monotonic clock) saw no time pass. The other hosts
    /// see no time pass either, as if it had happened in an instant.
    pub fn suspend(&self, id: NodeId, d: Duration) {
        self.slots
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} (seed {})", self.seed))
            .clock
            .suspend(d);
    }

    /// Sets how far node `id`'s host's wall clock is off, in
    /// milliseconds (its protocol clock is not affected).
    pub fn set_wall_offset(&self, id: NodeId, ms: i64) {
        self.slots
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} (seed {})", self.seed))
            .clock
            .set_wall_offset(ms);
    }

    /// Removes node `id`'s data directory (it must be stopped): it comes
    /// back on an empty disk.
    pub fn wipe_data(&mut self, id: NodeId) {
        let slot = self.slot_mut(id);
        assert!(slot.mesh.is_none(), "node {id} is running; kill it first");
        if let Some(dir) = &slot.builder.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        slot.records = None;
    }

    /// Sets random faults on every link.
    pub fn set_faults(&self, faults: Faults) {
        self.net.set_faults(faults);
    }

    /// True when every running node sees exactly `n` members alive.
    pub fn all_see_alive(&self, n: usize) -> bool {
        self.running()
            .iter()
            .all(|id| self.mesh(*id).membership().alive().count() == n)
    }

    /// True when every running node other than `id` sees `id` not alive.
    pub fn all_see_gone(&self, id: NodeId) -> bool {
        self.running().iter().filter(|n| **n != id).all(|n| {
            self.mesh(*n)
                .membership()
                .get(id)
                .is_none_or(|m| !m.is_alive())
        })
    }

    /// Waits until `condition` holds, checking every [`EVENTUALLY_POLL`];
    /// returns how long it took. Panics with the seed after `within`.
    pub async fn eventually(
        &self,
        within: Duration,
        what: &str,
        mut condition: impl FnMut(&SimCluster) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if condition(self) {
                return start.elapsed();
            }
            if start.elapsed() >= within {
                panic!(
                    "not within {within:?}: {what} (seed {}; replay with COORDMESH_SEED={})",
                    self.seed, self.seed
                );
            }
            tokio::time::sleep(EVENTUALLY_POLL).await;
        }
    }

    /// Freezes node `id`'s election driver for `d` from now (nothing it
    /// receives is handled meanwhile, its timers do not fire), as a
    /// SIGSTOP would; gossip keeps running.
    pub async fn pause(&self, id: NodeId, d: Duration) {
        self.mesh(id).pause_driver(d).await;
    }

    /// Time on the nodes' protocol clock.
    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    /// Records what every running node believes about leadership now,
    /// on the cluster's common clock (a node's own clock runs ahead of it
    /// by its host's suspensions).
    pub fn observe(&self, log: &mut LeaderLog) {
        let now = self.now();
        for id in self.running() {
            let mesh = self.mesh(id);
            let state = mesh.lease_state();
            let durable = mesh.config().data_dir.is_some();
            let common = |t: Duration| (now + t).saturating_sub(state.now);
            let lease = state.lease.map(|(l, until)| (l, common(until)));
            log.sample(id, mesh.generation(), now, lease, mesh.epoch());
            log.sample_promise(id, durable, state.promised);
            if let Some((epoch, at)) = state.ended {
                log.ended(id, epoch, common(at));
            }
            if let Some(at) = mesh.formed_anew_at() {
                log.formed_anew(common(at));
            }
        }
    }

    /// Kills every node (no leave): ends the simulation.
    pub async fn shutdown(&mut self) {
        for id in self.running() {
            self.kill(id).await;
        }
    }

    fn slot_mut(&mut self, id: NodeId) -> &mut Slot {
        let seed = self.seed;
        self.slots
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in the simulation (seed {seed})"))
    }
}

/// How far apart the voters that form a cluster anew report it.
const LIFE_REPORTS_APART_MAX: Duration = Duration::from_secs(1);
/// How much earlier than a formation's report a term of the new life may
/// be recorded to start (it counts from the previous sample).
const LIFE_START_SLACK: Duration = Duration::from_millis(100);

/// A leadership history checked for the election's safety properties:
/// the intervals in which each node believed its lease valid (a lease
/// that lapses and is regained in the same epoch makes a new interval),
/// and each node's epochs and promises over time.
#[derive(Debug, Default)]
pub struct LeaderLog {
    /// Closed and open intervals: (leader, epoch, from, until).
    intervals: Vec<(NodeId, Epoch, Duration, Duration)>,
    /// Per node: the index of its open interval, if serving.
    open: BTreeMap<NodeId, usize>,
    /// Per node: the time of its previous sample.
    last_seen: BTreeMap<NodeId, Duration>,
    /// Per node: (generation, highest epoch seen).
    epochs: BTreeMap<NodeId, (Generation, Epoch)>,
    /// Per node: highest promise seen.
    promises: BTreeMap<NodeId, Epoch>,
    /// When the cluster formed anew (E7: a majority of voters restarted
    /// together without data directories): a new life, whose epochs
    /// start over.
    lives: std::collections::BTreeSet<Duration>,
    /// Broken properties, in words.
    pub violations: Vec<String>,
}

impl LeaderLog {
    /// Records one node's state at `now`.
    pub fn sample(
        &mut self,
        node: NodeId,
        generation: Generation,
        now: Duration,
        lease: Option<(Leadership, Duration)>,
        epoch: Epoch,
    ) {
        // A term may have begun just after the node's previous sample:
        // count it from there, conservatively.
        let since = self.last_seen.insert(node, now).unwrap_or(now);
        match lease.filter(|(_, until)| now < *until) {
            Some((leadership, until)) => {
                let open = self
                    .open
                    .get(&node)
                    .copied()
                    .filter(|&i| self.intervals[i].1 == leadership.epoch);
                match open {
                    Some(i) => {
                        let interval = &mut self.intervals[i];
                        interval.3 = interval.3.max(until);
                    }
                    None => {
                        self.intervals.push((node, leadership.epoch, since, until));
                        self.open.insert(node, self.intervals.len() - 1);
                    }
                }
            }
            None => {
                // The node stopped serving; the interval keeps the lease
                // end it computed, since a paused node would still believe
                // it.
                self.open.remove(&node);
            }
        }
        let (gen_seen, epoch_seen) = self.epochs.entry(node).or_insert((generation, epoch));
        if generation == *gen_seen && epoch < *epoch_seen {
            self.violations.push(format!(
                "node {node} went back from epoch {epoch_seen} to {epoch}"
            ));
        }
        *gen_seen = generation;
        *epoch_seen = epoch;
    }

    /// Node `node` stopped serving `epoch` at `at`, before its lease ran
    /// out (resigned, deposed, shut down): `is_leader()` answered false
    /// from then on, so its term ends there, not at the lease's end.
    pub fn ended(&mut self, node: NodeId, epoch: Epoch, at: Duration) {
        for interval in self.intervals.iter_mut() {
            if interval.0 == node && interval.1 == epoch && interval.2 <= at {
                interval.3 = interval.3.min(at);
            }
        }
    }

    /// Records a voter's promise: with durable state it must never go
    /// down, restarts included.
    pub fn sample_promise(&mut self, node: NodeId, durable: bool, promised: Epoch) {
        let seen = self.promises.entry(node).or_insert(promised);
        if durable && promised < *seen {
            self.violations.push(format!(
                "node {node}'s durable promise went back from {seen} to {promised}"
            ));
        }
        *seen = promised.max(*seen);
    }

    /// Forgets `node`'s promise: its data directory was wiped (a new
    /// disk starts from nothing).
    pub fn forget_promise(&mut self, node: NodeId) {
        self.promises.remove(&node);
    }

    /// Nodes whose lease was valid at `now`.
    pub fn leaders_at(&self, now: Duration) -> Vec<(NodeId, Epoch)> {
        self.intervals
            .iter()
            .filter(|(_, _, from, until)| *from <= now && now < *until)
            .map(|(n, e, _, _)| (*n, *e))
            .collect()
    }

    /// The cluster formed anew at `at`, as a voter reports it (the voters
    /// that form it report instants a few milliseconds apart: one life).
    pub fn formed_anew(&mut self, at: Duration) {
        let near = self
            .lives
            .iter()
            .any(|t| t.abs_diff(at) < LIFE_REPORTS_APART_MAX);
        if !near {
            self.lives.insert(at);
        }
    }

    /// Checks: at most one leader per epoch in each life of the cluster,
    /// and no two nodes' lease intervals overlap, whatever their lives.
    /// Returns every violation found.
    pub fn check(&self) -> Vec<String> {
        let mut out = self.violations.clone();
        let terms = &self.intervals;
        // An interval counts from the node's sample before it began, so
        // one that began with a new life may start a little before the
        // formation's report.
        let life = |t: &Duration| self.lives.range(..=*t + LIFE_START_SLACK).count();
        for (i, (a, ea, a0, a1)) in terms.iter().enumerate() {
            for (b, eb, b0, b1) in &terms[i + 1..] {
                if a == b {
                    continue;
                }
                if ea == eb && life(a0) == life(b0) {
                    out.push(format!("nodes {a} and {b} both led epoch {ea}"));
                }
                if a0 < b1 && b0 < a1 {
                    out.push(format!(
                        "leases overlap: node {a} epoch {ea} {a0:?}..{a1:?}, node {b} epoch {eb} {b0:?}..{b1:?}"
                    ));
                }
            }
        }
        out
    }

    /// Terms recorded: (leader, epoch).
    pub fn terms(&self) -> Vec<(NodeId, Epoch)> {
        let set: std::collections::BTreeSet<_> =
            self.intervals.iter().map(|(n, e, _, _)| (*n, *e)).collect();
        set.into_iter().collect()
    }
}

/// Runs `run(seed)` twice, each in a fresh runtime as a simulation test
/// gets one (one thread, the clock paused), and panics unless both runs
/// give the same account of what they did, showing where they part.
/// `run` returns its account in words (a history's `Debug`, say). With
/// `COORDMESH_ACCOUNTS_DIR` set, the account is also written there, one
/// file per workload and seed, to compare two builds with `diff -r`.
pub fn assert_replays<F, Fut>(seed: u64, what: &str, run: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let once = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime for the simulation")
            .block_on(run(seed))
    };
    let (a, b) = (once(), once());
    // Kept for a comparison across builds: a refactor that changes no
    // behaviour leaves every account as it was.
    if let Some(dir) = std::env::var_os("COORDMESH_ACCOUNTS_DIR") {
        let name = format!("{}-{seed}.txt", what.replace(' ', "-"));
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, &a)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    if a != b {
        let (la, lb): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
        let i = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
        let around = |l: &[&str]| l[i.saturating_sub(3)..(i + 3).min(l.len())].join("\n");
        panic!(
            "{what}, seed {seed}, ran differently twice, from line {i}:\n{}\n--- the second run:\n{}",
            around(&la),
            around(&lb)
        );
    }
}
