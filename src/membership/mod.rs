//! Membership by gossip: chitchat (scuttlebutt anti-entropy plus a
//! phi-accrual failure detector) wired to our datagram layer, and turned
//! into a [`MembershipView`] keyed by [`NodeId`] with a stream of
//! [`MemberEvent`]s.
//!
//! This module owns the chitchat instance. Other layers read the view; they
//! publish small facts about themselves through [`Membership::set_local`]
//! (the election will gossip its leader hint and quorum mark there).

mod meta;
mod model;
mod seal;
mod transport;
mod view;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat,
};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

pub use meta::{
    KEY_ENDED, KEY_EPOCH, KEY_HTTP, KEY_LEADS, KEY_LEAVING, KEY_PROTOCOL, KEY_REACH, KEY_RPC,
    KEY_VOTER, LeaderClaim, NodeMeta, PROTOCOL_VERSION,
};
pub use view::{Member, MemberEvent, MemberState, MembershipView, Observation};

use crate::config::Config;
use crate::ids::{Generation, NodeId};
use crate::metrics::Metrics;
use crate::net::SimNet;
pub(crate) use transport::GossipTransport;

/// Membership events buffered per subscriber; a subscriber that falls
/// further behind gets `RecvError::Lagged` and should re-read the view.
pub const MEMBER_EVENTS_QUEUE_MAX: usize = 1024;

/// How long a dead member's state is kept before chitchat forgets it: long
/// enough for a partitioned node to come back as the same member.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(3600);

/// chitchat's wire format: V1 compresses digests.
pub(crate) fn wire_format(compression: bool) -> chitchat::ProtocolVersion {
    if compression {
        chitchat::ProtocolVersion::V1
    } else {
        chitchat::ProtocolVersion::V0
    }
}

/// The running gossip membership of one node.
pub struct Membership {
    self_id: NodeId,
    gossip_addr: SocketAddr,
    gossip: Gossip,
    view: watch::Receiver<Arc<MembershipView>>,
    events: broadcast::Sender<MemberEvent>,
    watcher: JoinHandle<()>,
    leave_duration: Duration,
}

/// What a node's membership starts from.
pub(crate) enum GossipStart {
    /// chitchat, on this bound socket.
    Chitchat(GossipTransport),
    /// The gossip model of this simulated network.
    Model(SimNet),
}

/// What gossips for a node.
enum Gossip {
    /// chitchat: real nodes, and simulations of the gossip itself.
    Chitchat {
        handle: Mutex<Option<ChitchatHandle>>,
        chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    },
    /// The replayable model of a simulated network (`model`).
    Model {
        net: SimNet,
        silent_max: Duration,
        stopped: AtomicBool,
    },
}

impl Membership {
    /// Starts gossip: chitchat on an already-bound socket, or the model of
    /// a simulated network.
    pub(crate) async fn start(
        config: &Config,
        gossip: GossipStart,
        generation: Generation,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Membership> {
        match gossip {
            GossipStart::Chitchat(transport) => {
                Membership::start_chitchat(config, transport, generation, metrics).await
            }
            GossipStart::Model(net) => {
                Ok(Membership::start_model(config, &net, generation, metrics)?)
            }
        }
    }

    async fn start_chitchat(
        config: &Config,
        transport: GossipTransport,
        generation: Generation,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Membership> {
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.id.to_string(), generation.0, config.gossip_addr),
            cluster_id: config.cluster.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.gossip_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 1000,
                // A gap longer than this is not a heartbeat interval but an
                // outage; keeping it would make detection slow for good.
                max_interval: config.gossip_interval * 20,
                // Before samples exist, assume the configured interval, so a
                // node that dies right after joining is detected as fast.
                initial_interval: config.gossip_interval,
                dead_node_grace_period: DEAD_NODE_GRACE,
            },
            marked_for_deletion_grace_period: DEAD_NODE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: wire_format(config.gossip_compression),
        };
        let initial = NodeMeta::initial(config.rpc_addr, config.http_addr, config.is_voter());
        let handle = spawn_chitchat(chitchat_config, initial, &transport).await?;
        let chitchat = handle.chitchat();
        let live_rx = chitchat.lock().await.live_nodes_watcher();
        let (publisher, view, events) = Publisher::new(config.id, metrics);
        let watcher = tokio::spawn(watch_loop(chitchat.clone(), live_rx, publisher));
        let gossip = Gossip::Chitchat {
            handle: Mutex::new(Some(handle)),
            chitchat,
        };
        Ok(Membership::assemble(
            config,
            config.gossip_addr,
            gossip,
            (view, events),
            watcher,
        ))
    }

    /// The handle over a started gossip: its address, its view and events,
    /// the task that publishes them.
    fn assemble(
        config: &Config,
        gossip_addr: SocketAddr,
        gossip: Gossip,
        (view, events): (
            watch::Receiver<Arc<MembershipView>>,
            broadcast::Sender<MemberEvent>,
        ),
        watcher: JoinHandle<()>,
    ) -> Membership {
        Membership {
            self_id: config.id,
            gossip_addr,
            gossip,
            view,
            events,
            watcher,
            leave_duration: config.leave_duration,
        }
    }

    /// Starts the replayable gossip model on a simulated network (see
    /// `model`): a round every gossip interval, a peer dead after
    /// `phi_threshold` silent intervals.
    fn start_model(
        config: &Config,
        net: &SimNet,
        generation: Generation,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Membership> {
        let initial = NodeMeta::initial(config.rpc_addr, config.http_addr, config.is_voter());
        let addr = net.board().join(
            &config.cluster,
            config.gossip_addr,
            config.id,
            generation,
            initial,
            tokio::time::Instant::now(),
        )?;
        let silent_max = config.gossip_interval.mul_f64(config.phi_threshold);
        let (publisher, view, events) = Publisher::new(config.id, metrics);
        let watcher = tokio::spawn(model_loop(
            net.clone(),
            addr,
            config.gossip_interval,
            silent_max,
            publisher,
        ));
        let gossip = Gossip::Model {
            net: net.clone(),
            silent_max,
            stopped: AtomicBool::new(false),
        };
        Ok(Membership::assemble(
            config,
            addr,
            gossip,
            (view, events),
            watcher,
        ))
    }

    /// The gossip address this node took.
    pub(crate) fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// The current view.
    pub fn view(&self) -> Arc<MembershipView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn watch(&self) -> watch::Receiver<Arc<MembershipView>> {
        self.view.clone()
    }

    /// A stream of changes from now on.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Publishes a key-value about this node to every peer.
    pub async fn set_local(&self, key: &str, value: &str) {
        match &self.gossip {
            Gossip::Chitchat { chitchat, .. } => {
                chitchat.lock().await.self_node_state().set(key, value);
            }
            Gossip::Model { net, .. } => {
                net.board()
                    .set(self.gossip_addr, key, value, tokio::time::Instant::now());
            }
        }
    }

    /// The value of `key` gossiped by each live peer: its newest live
    /// generation's, none if that generation has none (this node and
    /// unparsable ids left out).
    pub async fn peer_values(&self, key: &str) -> Vec<(NodeId, String)> {
        let chitchat = match &self.gossip {
            Gossip::Chitchat { chitchat, .. } => chitchat.lock().await,
            Gossip::Model {
                net, silent_max, ..
            } => {
                return net.board().peer_values(
                    self.gossip_addr,
                    key,
                    tokio::time::Instant::now(),
                    *silent_max,
                );
            }
        };
        // The newest live generation of each id, then its value: an
        // earlier generation's value is not the node's now.
        let mut newest: std::collections::BTreeMap<NodeId, &chitchat::ChitchatId> =
            Default::default();
        for cid in chitchat.live_nodes() {
            let Ok(id) = cid.node_id.parse::<NodeId>() else {
                continue;
            };
            if id == self.self_id {
                continue;
            }
            let slot = newest.entry(id).or_insert(cid);
            if cid.generation_id > slot.generation_id {
                *slot = cid;
            }
        }
        newest
            .into_iter()
            .filter_map(|(id, cid)| {
                let value = chitchat.node_state(cid)?.get(key)?;
                Some((id, value.to_string()))
            })
            .collect()
    }

    /// Leaves gracefully: gossips the `leaving` mark for the leave
    /// duration so peers record a leave rather than a death, then stops.
    pub async fn leave(&self) {
        self.announce_leaving().await;
        self.finish_leave().await;
    }

    /// The first half of [`Membership::leave`]: starts gossiping the
    /// `leaving` mark (so peers stop counting on this node) and returns.
    pub async fn announce_leaving(&self) {
        if self.handle_taken() {
            return;
        }
        self.set_local(KEY_LEAVING, "1").await;
        info!(id = %self.self_id, "leaving the cluster");
    }

    /// The second half of [`Membership::leave`]: keeps gossiping the mark
    /// for the leave duration, then stops.
    pub async fn finish_leave(&self) {
        if self.handle_taken() {
            return;
        }
        tokio::time::sleep(self.leave_duration).await;
        self.stop().await;
    }

    /// Stops gossip at once, without telling anyone (peers will time the
    /// node out as dead).
    pub async fn stop(&self) {
        match &self.gossip {
            Gossip::Chitchat { handle, .. } => {
                let handle = handle.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(handle) = handle
                    && let Err(err) = handle.shutdown().await
                {
                    debug!(%err, "gossip stopped with an error");
                }
            }
            Gossip::Model { .. } => self.stop_model(),
        }
        self.watcher.abort();
    }

    /// Takes a modelled node off its network's board (once).
    fn stop_model(&self) {
        if let Gossip::Model { net, stopped, .. } = &self.gossip
            && !stopped.swap(true, Ordering::Relaxed)
        {
            net.board().leave(self.gossip_addr);
        }
    }

    fn handle_taken(&self) -> bool {
        match &self.gossip {
            Gossip::Chitchat { handle, .. } => {
                handle.lock().unwrap_or_else(|e| e.into_inner()).is_none()
            }
            Gossip::Model { stopped, .. } => stopped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Dropped without a leave (a killed node in a simulation, or a host
        // that forgot `shutdown`): stop the tasks so the socket is freed.
        if let Gossip::Chitchat { handle, .. } = &self.gossip
            && let Some(handle) = handle.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            handle.abort();
        }
        self.stop_model();
        self.watcher.abort();
    }
}

/// Rebuilds the view each time chitchat's live set (or a live node's
/// state) changes, and publishes what changed.
async fn watch_loop(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    mut live_rx: watch::Receiver<std::collections::BTreeMap<ChitchatId, chitchat::NodeState>>,
    publisher: Publisher,
) {
    // Generations seen alive at least once. chitchat lists a newly heard-of
    // node as dead until two of its heartbeats arrived; that node is not a
    // member yet, and a restarted node's new generation must not replace
    // the old one before it is alive.
    let mut seen_alive: HashSet<ChitchatId> = HashSet::new();
    loop {
        let (view, ignored) = {
            let chitchat = chitchat.lock().await;
            snapshot(publisher.self_id, &chitchat, &mut seen_alive)
        };
        publisher.publish(view, ignored);
        if live_rx.changed().await.is_err() {
            return;
        }
    }
}

/// The modelled node's gossip: one round per interval, then its view.
async fn model_loop(
    net: SimNet,
    addr: SocketAddr,
    interval: Duration,
    silent_max: Duration,
    publisher: Publisher,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let (view, ignored) = {
            let mut board = net.board();
            board.round(&net, addr, now);
            model::view(&board, addr, publisher.self_id, now, silent_max)
        };
        publisher.publish(view, ignored);
    }
}

/// Where a node's views and membership events go out.
struct Publisher {
    self_id: NodeId,
    view: watch::Sender<Arc<MembershipView>>,
    events: broadcast::Sender<MemberEvent>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// A publisher, with the receiving end of its views and its events.
    fn new(
        self_id: NodeId,
        metrics: Arc<Metrics>,
    ) -> (
        Publisher,
        watch::Receiver<Arc<MembershipView>>,
        broadcast::Sender<MemberEvent>,
    ) {
        let (view, view_rx) = watch::channel(Arc::new(MembershipView::empty(self_id)));
        let (events, _) = broadcast::channel(MEMBER_EVENTS_QUEUE_MAX);
        let publisher = Publisher {
            self_id,
            view,
            events: events.clone(),
            metrics,
        };
        (publisher, view_rx, events)
    }

    /// Publishes `view` if it changed, and the events that lead to it.
    fn publish(&self, view: MembershipView, ignored: usize) {
        self.metrics
            .gossip_members_malformed
            .store(ignored as u64, Ordering::Relaxed);
        let old = self.view.borrow().clone();
        if *old != view {
            let events = view.changes_since(&old);
            self.view.send_replace(Arc::new(view));
            for event in events {
                Metrics::add(&self.metrics.membership_events, 1);
                log_event(self.self_id, &event);
                // No subscriber is fine: the view is still published.
                let _ = self.events.send(event);
            }
        }
    }
}

fn snapshot(
    self_id: NodeId,
    chitchat: &Chitchat,
    seen_alive: &mut HashSet<ChitchatId>,
) -> (MembershipView, usize) {
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    seen_alive.extend(live.iter().map(|id| (*id).clone()));
    // Bounded by the gossip state: forget what chitchat forgot.
    seen_alive.retain(|id| chitchat.node_state(id).is_some());
    let observations = chitchat
        .node_states()
        .iter()
        .filter(|(id, _)| seen_alive.contains(*id))
        .map(|(id, state)| Observation {
            node_id: &id.node_id,
            generation: Generation(id.generation_id),
            gossip_addr: id.gossip_advertise_addr,
            live: live.contains(id),
            meta: NodeMeta::parse(|key| state.get(key)),
        });
    MembershipView::from_observations(self_id, observations)
}

fn log_event(self_id: NodeId, event: &MemberEvent) {
    let m = event.member();
    let kind = match event {
        MemberEvent::Joined(_) => "joined",
        MemberEvent::Left(_) => "left",
        MemberEvent::Died(_) => "died",
        MemberEvent::Restarted(_) => "restarted",
    };
    info!(node = %self_id, member = %m.id, generation = %m.generation, kind, "membership change");
}
