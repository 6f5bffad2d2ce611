//! The node driver: one tokio task owns the election state machine and the
//! lock table, and is the only place that reads their clock, sends their
//! messages and persists their state. Everything reaches it through a
//! bounded channel.
//!
//! Owning both in one task makes a voter's promise and its acceptance of
//! replicated lock entries one sequence: once it promised epoch `e`, no
//! entry of an older epoch is merged, so the copy it handed the new leader
//! with its promise stays complete.
//!
//! Owns: the order of inputs, the effects (sends, persists, timers), and
//! the glue between the cores. Must not decide a protocol rule itself:
//! what to promise, grant, merge, ack or resend is the cores' answer
//! (`election`, `locks::table`, `replication`), and what is durable the
//! disk's (`storage`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, trace, warn};

use crate::clock::Clock;
use crate::election::{Election, ElectionRequest, ElectionResponse, Leadership, Output, Recovery};
use crate::ids::{BatchId, NodeId};
use crate::locks::{Entry, LockOutput, LockReply, LockRequest, LockTable, Replica, Ticket};
use crate::membership::{KEY_EPOCH, KEY_REACH, Membership};
use crate::metrics::Metrics;
use crate::replication::{self, Answer, Copies, Gate, Next, Settle, Verdict};
use crate::rpc::{Request, Response, Rpc, VoterReply, VoterRequest, VoterSnapshot};
use crate::storage::Persister;

/// Inputs queued for the driver before senders wait.
pub(crate) const INPUT_QUEUE_MAX: usize = 1024;
/// Leadership changes kept per subscriber.
pub(crate) const LEADER_EVENTS_QUEUE_MAX: usize = 256;
/// Inputs handled before the open lock batch is flushed: requests that
/// arrive together share one replication round.
const BATCH_INPUTS_MAX: usize = 128;

pub(crate) enum Input {
    Request {
        from: NodeId,
        request: ElectionRequest,
        reply: oneshot::Sender<Response>,
    },
    Response {
        from: NodeId,
        request: ElectionRequest,
        response: Option<ElectionResponse>,
        snapshot: Option<VoterSnapshot>,
    },
    Lock {
        from: NodeId,
        request: LockRequest,
        reply: oneshot::Sender<LockReply>,
    },
    /// A replication batch from the leader to this voter.
    Voter {
        from: NodeId,
        request: VoterRequest,
        reply: oneshot::Sender<VoterReply>,
    },
    /// A voter's answer to a replication batch (`None`: no answer).
    Replicated {
        epoch: u64,
        batch: BatchId,
        to: NodeId,
        entries: Vec<Entry>,
        reply: Option<VoterReply>,
    },
    Resign {
        done: oneshot::Sender<()>,
    },
    /// The candidate's promise to itself of `epoch` is durable.
    Persisted {
        epoch: u64,
    },
    /// The data directory cannot be written: stop taking part (acting on
    /// a promise or an ack that is not durable could elect two leaders or
    /// lose a grant after a restart).
    DiskFailed,
    /// Stop processing anything for a while, as a SIGSTOP would
    /// (simulations only).
    #[cfg(feature = "sim")]
    Pause(Duration),
}

/// What the driver shares with the `Mesh` handle.
pub(crate) struct Shared {
    pub(crate) clock: Clock,
    pub(crate) leader: watch::Sender<Option<Leadership>>,
    /// Notified on every change of `leader`. Waiters on a `watch` are
    /// woken in an order tokio draws at random; a `Notify` wakes them in
    /// the order they came, so a seed replays a run.
    pub(crate) leader_changed: tokio::sync::Notify,
    pub(crate) events: broadcast::Sender<Option<Leadership>>,
    /// What [`Shared::is_leader`] answers from.
    pub(crate) lease: Mutex<LeaseCell>,
    pub(crate) max_epoch: std::sync::atomic::AtomicU64,
    /// The promise the data directory holds (0 without one).
    pub(crate) promised_durable: Arc<std::sync::atomic::AtomicU64>,
    /// Set once the node shut down or was killed.
    pub(crate) stopped: AtomicBool,
    /// When this voter last formed the cluster anew (E7), on `clock`.
    pub(crate) formed_anew_at: Mutex<Option<Duration>>,
}

/// The lease as the node's users see it, written before any message of
/// the driver leaves (E6: a leader stops serving, visibly, before it
/// resigns).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LeaseCell {
    /// While serving: the leadership and the lease end on the clock.
    pub(crate) serving: Option<(Leadership, Duration)>,
    /// The last term that stopped serving before its lease ran out
    /// (resigned, deposed, shut down), and when: from then on
    /// `is_leader()` answered false.
    pub(crate) ended: Option<(u64, Duration)>,
}

impl Shared {
    pub(crate) fn new(clock: Clock) -> Shared {
        Shared {
            clock,
            leader: watch::channel(None).0,
            leader_changed: tokio::sync::Notify::new(),
            events: broadcast::channel(LEADER_EVENTS_QUEUE_MAX).0,
            lease: Mutex::new(LeaseCell::default()),
            max_epoch: Default::default(),
            promised_durable: Default::default(),
            stopped: AtomicBool::new(false),
            formed_anew_at: Mutex::new(None),
        }
    }

    /// True once the node stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// True only while this node's lease is valid and it runs, read on
    /// the protocol clock at the moment of the call.
    pub(crate) fn is_leader(&self) -> bool {
        let cell = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        !self.is_stopped()
            && cell
                .serving
                .is_some_and(|(_, until)| self.clock.now() < until)
    }

    /// Publishes the lease this node serves under (`None`: not serving).
    pub(crate) fn set_lease(&self, serving: Option<(Leadership, Duration)>) {
        let now = self.clock.now();
        let mut cell = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((l, until)) = cell.serving
            && now < until
            && serving.is_none_or(|(n, _)| n != l)
        {
            cell.ended = Some((l.epoch, now));
        }
        cell.serving = serving;
    }

    /// The node stops (shutdown or kill): it serves nothing from now on.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.set_lease(None);
    }
}

/// Handle to the running driver.
pub(crate) struct Driver {
    pub(crate) tx: mpsc::Sender<Input>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        election: Election,
        locks: LockTable,
        replica: Replica,
        disk: Persister,
        rpc: Arc<Rpc>,
        membership: Arc<Membership>,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> Driver {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE_MAX);
        let started = shared.clock.now();
        let state = State {
            election,
            locks,
            copies: Copies::new(replica),
            disk: Arc::new(disk),
            gone: Default::default(),
            tickets: BTreeMap::new(),
            next_ticket: 0,
            gossiped_epoch: 0,
            rpc,
            membership,
            shared,
            metrics,
            tx: tx.clone(),
            leaderless_since: Some(started),
            last_poll: None,
        };
        let task = tokio::spawn(state.run(rx));
        Driver {
            tx,
            task: Mutex::new(Some(task)),
        }
    }

    /// Hands over if leading (E6), waiting briefly for the resignations to
    /// be delivered.
    pub(crate) async fn resign(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Input::Resign { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), wait).await;
        }
    }

    #[cfg(feature = "sim")]
    pub(crate) async fn pause(&self, d: Duration) {
        let _ = self.tx.send(Input::Pause(d)).await;
    }

    pub(crate) async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

struct State {
    election: Election,
    locks: LockTable,
    /// This node's copy of the lock table (voters), the copies heard while
    /// recovering, and the candidacy's merge of its promises.
    copies: Copies<Entry>,
    /// Makes promises and lock entries durable off this task (a memory
    /// stand-in without a data directory).
    disk: Arc<Persister>,
    /// Members the membership lists as not alive.
    gone: std::collections::BTreeSet<NodeId>,
    /// Lock requests awaiting an answer. Ordered, so that a stop wakes
    /// their callers in one order every run (a seed replays a run).
    tickets: BTreeMap<u64, oneshot::Sender<LockReply>>,
    next_ticket: u64,
    /// The epoch last published in gossip.
    gossiped_epoch: u64,
    rpc: Arc<Rpc>,
    membership: Arc<Membership>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Input>,
    leaderless_since: Option<Duration>,
    last_poll: Option<Duration>,
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let heartbeat = self.election.timing().heartbeat;
        let mut tick = tokio::time::interval(heartbeat / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut views = self.membership.watch();
        self.sync_peers();
        loop {
            // Biased, so a seed replays a run: the tick, then membership
            // (each is ready now and then, so a busy queue cannot starve
            // the lease's checks or the liveness of peers), then the queue.
            tokio::select! {
                biased;
                _ = tick.tick() => {
                    let now = self.shared.clock.now();
                    if self.last_poll.is_none_or(|at| now >= at + heartbeat / 2) {
                        self.last_poll = Some(now);
                        self.poll_reach(now).await;
                    }
                    let outs = self.election.handle_tick(now);
                    if !self.execute(outs, None).await {
                        return;
                    }
                    let now = self.shared.clock.now();
                    self.sync_locks(now);
                    let expired = self.locks.expired_total();
                    let outs = self.locks.handle_tick(now);
                    Metrics::add(&self.metrics.lock_expiries, self.locks.expired_total() - expired);
                    if !self.apply_locks(outs) {
                        return;
                    }
                }
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.sync_peers();
                }
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    if !self.handle(input).await {
                        return;
                    }
                    // Whatever else is queued joins the same lock batch.
                    for _ in 0..BATCH_INPUTS_MAX {
                        let Ok(input) = rx.try_recv() else { break };
                        if !self.handle(input).await {
                            return;
                        }
                    }
                }
            }
            let outs = self.locks.flush();
            if !self.apply_locks(outs) {
                return;
            }
            self.publish();
        }
    }

    /// Liveness from the membership view.
    fn sync_peers(&mut self) {
        let now = self.shared.clock.now();
        let view = self.membership.view();
        for member in view.members() {
            if member.id == self.election.id() {
                continue;
            }
            if member.is_alive() {
                self.election.handle_peer(now, member.id, true, None);
                self.gone.remove(&member.id);
            } else {
                self.election.handle_peer_gone(member.id);
                if self.gone.insert(member.id) {
                    // Requests queued only through it can reach nobody.
                    let outs = self.locks.handle_node_gone(member.id);
                    self.apply_locks(outs);
                }
            }
        }
    }

    /// Peers' "reaches quorum" marks from gossip.
    async fn poll_reach(&mut self, now: Duration) {
        let view = self.membership.view();
        for (_, value) in self.membership.peer_values(KEY_EPOCH).await {
            if let Ok(epoch) = value.parse::<u64>() {
                self.election.handle_peer_epoch(epoch);
            }
        }
        let epoch = self.election.led_epoch();
        if epoch > self.gossiped_epoch {
            self.gossiped_epoch = epoch;
            self.membership
                .set_local(KEY_EPOCH, &epoch.to_string())
                .await;
        }
        for (id, value) in self.membership.peer_values(KEY_REACH).await {
            if let Ok(reach) = value.parse::<u64>() {
                let alive = view.get(id).is_some_and(|m| m.is_alive());
                if alive {
                    self.election.handle_peer(now, id, true, Some(reach));
                }
            }
        }
    }

    /// Returns false when the driver must stop (its promise could not be
    /// made durable).
    async fn handle(&mut self, input: Input) -> bool {
        let now = self.shared.clock.now();
        // E5: a lease that lapsed since the last tick stops the lock table
        // before this input is handled (acks included: nothing is told
        // after the lease ends).
        self.sync_locks(now);
        match input {
            Input::Request {
                from,
                request,
                reply,
            } => {
                let (handled, outs) = self.election.handle_request(now, from, &request);
                if matches!(
                    handled.response,
                    ElectionResponse::Reject {
                        reason: crate::election::RejectReason::Config,
                        ..
                    }
                ) {
                    // V1: configurations disagree; an operator must act.
                    Metrics::add(&self.metrics.election_voter_set_mismatches, 1);
                    tracing::warn!(%from, "election message refused: the sender runs another voter set or other safety timings (lease-ms, drift, lock-ttl-max-ms)");
                }
                // A promise and a recovery answer carry this voter's copy
                // of the lock table (the new leader adopts the promising
                // majority's grants; a recovering voter copies them, E7).
                let response = match handled.response {
                    r @ (ElectionResponse::Promise { .. } | ElectionResponse::State { .. }) => {
                        Response::ElectionWithSnapshot {
                            response: r,
                            snapshot: VoterSnapshot {
                                locks: self.copies.snapshot(),
                            },
                        }
                    }
                    r => Response::Election(r),
                };
                // E1: the answer leaves once the promise it raised is
                // durable, from the disk's thread, and so does every
                // answer while a raised promise is still being written
                // (it follows that write in the disk's queue); this task
                // goes on meanwhile.
                if handled.persist.is_some() || self.promise_in_flight() {
                    let failed = self.failure_notice();
                    self.disk.persist(handled.persist, Vec::new(), move |ok| {
                        if ok {
                            let _ = reply.send(response);
                        } else {
                            failed();
                        }
                    });
                } else {
                    let _ = reply.send(response);
                }
                let ok = self.execute(outs, None).await;
                self.sync_locks(now);
                ok
            }
            Input::Response {
                from,
                request,
                response,
                snapshot,
            } => {
                if let Some(VoterSnapshot { locks: table }) = snapshot {
                    match (&request, &response) {
                        (
                            ElectionRequest::Prepare { epoch, .. },
                            Some(ElectionResponse::Promise { epoch: promised }),
                        ) if epoch == promised => self.copies.on_promise(*epoch, table),
                        (ElectionRequest::Sync { .. }, Some(ElectionResponse::State { .. }))
                            if !self.election.recovered() =>
                        {
                            // E7: kept until the recovery decides whose
                            // tables this voter takes.
                            self.copies.on_sync_answer(from, table);
                        }
                        _ => {}
                    }
                }
                let outs = self
                    .election
                    .handle_response(now, from, &request, response.as_ref());
                let ok = self.execute(outs, None).await;
                self.sync_locks(now);
                ok
            }
            Input::Lock {
                from,
                request,
                reply,
            } => self.handle_lock(now, from, request, reply),
            Input::Voter {
                from,
                request,
                reply,
            } => {
                self.handle_voter(from, request, reply);
                true
            }
            Input::Replicated {
                epoch,
                batch,
                to,
                entries,
                reply,
            } => {
                if self.locks.epoch() != Some(epoch) {
                    return true;
                }
                let answer = match reply {
                    Some(VoterReply::Acked) => Some(Answer::Acked),
                    Some(VoterReply::Refused { promised }) => Some(Answer::Refused { promised }),
                    None => None,
                };
                match replication::after_answer(epoch, answer, self.locks.is_pending(batch)) {
                    Next::CountAck => {
                        trace!(epoch, ?batch, %to, ?now, "lock batch acked");
                        let outs = self.locks.handle_ack(now, batch, to);
                        self.apply_locks(outs)
                    }
                    Next::Deposed { promised } => {
                        // E1: a voter promised a higher epoch: stop.
                        let outs = self.election.handle_higher_epoch(now, promised);
                        let ok = self.execute(outs, None).await;
                        self.sync_locks(now);
                        ok
                    }
                    Next::Resend { after } => {
                        self.send_batch(epoch, batch, to, entries, after);
                        true
                    }
                    Next::Forget => true,
                }
            }
            #[cfg(feature = "sim")]
            Input::Pause(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Input::Persisted { epoch } => {
                let outs = self.election.handle_persisted(now, epoch);
                let ok = self.execute(outs, None).await;
                self.sync_locks(now);
                ok
            }
            Input::DiskFailed => {
                error!(
                    "the data directory cannot be written; the election and locks stop on this node"
                );
                false
            }
            Input::Resign { done } => {
                let outs = self.election.resign(now);
                let mut sends = JoinSet::new();
                let ok = self.execute(outs, Some(&mut sends)).await;
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while sends.join_next().await.is_some() {}
                })
                .await;
                let _ = done.send(());
                ok
            }
        }
    }

    /// A replication batch from the leader to this voter.
    fn handle_voter(
        &mut self,
        from: NodeId,
        request: VoterRequest,
        reply: oneshot::Sender<VoterReply>,
    ) {
        let VoterRequest::Replicate {
            epoch,
            voters,
            locks: entries,
        } = request;
        // E1, E7, V1: only a recovered voter of this configuration
        // merges, only at or above its promise, and a higher epoch
        // raises the promise (durably, before the ack).
        let gate = match self.election.handle_replicate(epoch, voters) {
            Ok(raise) => Gate::Open { raise },
            Err((reason, promised)) => Gate::Closed {
                promised,
                config_mismatch: reason == crate::election::RejectReason::Config,
            },
        };
        if let Gate::Closed {
            config_mismatch: true,
            ..
        } = gate
        {
            Metrics::add(&self.metrics.election_voter_set_mismatches, 1);
            warn!(%from, "replication batch refused: the leader runs another voter set or other safety timings");
        }
        match self.copies.on_batch(gate, entries) {
            Verdict::Refuse { promised } => {
                let _ = reply.send(VoterReply::Refused { promised });
            }
            Verdict::Ack { raise, entries } => {
                // E8: acked once durable, the raised promise with the
                // entries (E1), from the disk's thread.
                let failed = self.failure_notice();
                self.disk.persist(raise, entries, move |ok| {
                    if ok {
                        let _ = reply.send(VoterReply::Acked);
                    } else {
                        failed();
                    }
                });
            }
        }
    }

    /// A lock request from a client (any node, this one included) to the
    /// leader.
    fn handle_lock(
        &mut self,
        now: Duration,
        from: NodeId,
        request: LockRequest,
        reply: oneshot::Sender<LockReply>,
    ) -> bool {
        self.sync_locks(now);
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        self.tickets.insert(ticket.0, reply);
        trace!(ticket = ticket.0, %from, ?request, ?now, "lock request");
        let outs = match request {
            LockRequest::Acquire {
                name,
                ttl_ms,
                wait_ms,
                request_id,
            } => self
                .locks
                .handle_acquire(now, ticket, from, &name, ttl_ms, wait_ms, request_id),
            LockRequest::Renew { name, token } => {
                self.locks.handle_renew(now, ticket, &name, token)
            }
            LockRequest::Release { name, token } => {
                self.locks.handle_release(now, ticket, &name, token)
            }
            LockRequest::Status { name } => self.locks.handle_status(now, ticket, &name),
            LockRequest::List { limit } => self.locks.handle_list(now, ticket, limit as usize),
        };
        self.apply_locks(outs)
    }

    /// Starts or stops the lock table as this node starts or stops
    /// serving as leader.
    fn sync_locks(&mut self, now: Duration) {
        let serving = self.own_term(now).filter(|_| self.election.is_serving(now));
        let outs = match (serving, self.locks.epoch()) {
            (Some(e), Some(l)) if e == l => return,
            (Some(e), _) => {
                // K2: adopt the grants of the promising majority.
                // Kept for the whole term: a leader whose lease lapsed and
                // came back serves the same epoch again.
                let Some(merged) = self.copies.takeover(e) else {
                    // Invariant: a term always starts from a candidacy of
                    // its epoch; without its tables serve no locks.
                    error!(
                        epoch = e,
                        "leading without the promised lock tables; locks not served this term"
                    );
                    return;
                };
                let adopted = merged.entries().filter(|e| e.is_held()).count();
                info!(epoch = e, adopted, "lock table taken over");
                // K2: the term's first batch carries the adopted table; it
                // reaches this voter's own copy (durably) like any batch.
                self.locks.take_over(now, e, merged)
            }
            (None, Some(_)) => self.locks.step_down(),
            (None, None) => return,
        };
        self.apply_locks(outs);
    }

    /// Carries out the lock table's outputs. False if this node must stop.
    fn apply_locks(&mut self, outs: Vec<LockOutput>) -> bool {
        let mut queue: std::collections::VecDeque<LockOutput> = outs.into();
        while let Some(out) = queue.pop_front() {
            match out {
                LockOutput::Reply { ticket, reply } => {
                    trace!(ticket = ticket.0, ?reply, "lock reply");
                    let counter = match reply {
                        LockReply::Granted { .. } => Some(&self.metrics.lock_grants),
                        LockReply::Released => Some(&self.metrics.lock_releases),
                        LockReply::Renewed { .. } => Some(&self.metrics.lock_renewals),
                        LockReply::Lost => Some(&self.metrics.lock_lost_answers),
                        _ => None,
                    };
                    if let Some(c) = counter {
                        Metrics::add(c, 1);
                    }
                    if let Some(tx) = self.tickets.remove(&ticket.0) {
                        let _ = tx.send(reply);
                    }
                }
                LockOutput::Replicate { batch, entries } => {
                    let Some(epoch) = self.locks.epoch() else {
                        continue;
                    };
                    trace!(epoch, ?batch, ?entries, "lock batch");
                    Metrics::add(&self.metrics.lock_batches, 1);
                    Metrics::add(&self.metrics.lock_batch_entries, entries.len() as u64);
                    // The term's copy keeps what this leader issued, voter
                    // or not, and so does its own copy (made durable while
                    // the batch is on the wire).
                    self.copies.issued(epoch, &entries);
                    let me = self.election.id();
                    for &v in self.election.voters().to_vec().iter() {
                        if v != me {
                            self.send_batch(epoch, batch, v, entries.clone(), Duration::ZERO);
                        }
                    }
                    // The leader's own ack counts once its copy is durable
                    // (E8), and only from a recovered voter (E7).
                    if self.election.is_voter() && self.election.recovered() {
                        if !self.disk.has_dir() {
                            let now = self.shared.clock.now();
                            queue.extend(self.locks.handle_ack(now, batch, me));
                        } else {
                            let input = Input::Replicated {
                                epoch,
                                batch,
                                to: me,
                                entries: Vec::new(),
                                reply: Some(VoterReply::Acked),
                            };
                            let tx = self.tx.clone();
                            let failed = self.failure_notice();
                            self.disk.persist(None, entries, move |ok| {
                                if ok {
                                    send_from_anywhere(&tx, input);
                                } else {
                                    failed();
                                }
                            });
                        }
                    }
                }
                LockOutput::TokensSpent => {
                    error!(
                        "the last epoch's token sequence is spent (K1): this cluster grants no more locks"
                    );
                }
                LockOutput::NewEpochNeeded => {
                    // K1: hand over; the next term has a fresh sequence.
                    warn!("lock token sequence spent in this epoch; resigning for a new one");
                    let (done, _) = oneshot::channel();
                    let _ = self.tx.try_send(Input::Resign { done });
                    queue.extend(self.locks.step_down());
                }
            }
        }
        true
    }

    fn addr_of(&self, node: NodeId) -> Option<std::net::SocketAddr> {
        self.membership
            .view()
            .get(node)
            .filter(|m| m.is_alive())
            .map(|m| m.rpc_addr)
    }

    /// Sends one replication batch to one voter, after `delay`.
    fn send_batch(
        &self,
        epoch: u64,
        batch: BatchId,
        to: NodeId,
        entries: Vec<Entry>,
        delay: Duration,
    ) {
        let rpc = self.rpc.clone();
        let tx = self.tx.clone();
        let addr = self.addr_of(to);
        let voters = self.election.config_hash();
        let timeout = self.election.timing().heartbeat * 2;
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let reply = match addr {
                Some(addr) => {
                    let request = Request::Voter(VoterRequest::Replicate {
                        epoch,
                        voters,
                        locks: entries.clone(),
                    });
                    match rpc.call(addr, request, timeout).await {
                        Ok(Response::Voter(r)) => Some(r),
                        _ => None,
                    }
                }
                None => {
                    // Not a live member: retry after a pause.
                    tokio::time::sleep(timeout / 4).await;
                    None
                }
            };
            let _ = tx
                .send(Input::Replicated {
                    epoch,
                    batch,
                    to,
                    entries,
                    reply,
                })
                .await;
        });
    }

    /// The epoch this node serves as leader, if it does.
    fn own_term(&self, now: Duration) -> Option<u64> {
        self.election
            .leader(now)
            .filter(|l| l.id == self.election.id())
            .map(|l| l.epoch)
    }

    /// Makes the candidate's promise to itself durable, off this task;
    /// the election asks the voters once it is (E1).
    fn persist_own_promise(&self, epoch: u64) {
        let tx = self.tx.clone();
        let failed = self.failure_notice();
        self.disk.persist(Some(epoch), Vec::new(), move |ok| {
            if ok {
                send_from_anywhere(&tx, Input::Persisted { epoch });
            } else {
                failed();
            }
        });
    }

    /// True while this voter's promise is above what its data directory
    /// holds: a raise is being written.
    fn promise_in_flight(&self) -> bool {
        self.disk.has_dir()
            && self.election.promised()
                > self
                    .shared
                    .promised_durable
                    .load(std::sync::atomic::Ordering::Acquire)
    }

    /// What a disk callback calls when it could not make its job durable.
    fn failure_notice(&self) -> impl FnOnce() + Send + 'static {
        let tx = self.tx.clone();
        move || send_from_anywhere(&tx, Input::DiskFailed)
    }

    /// Settles this voter's lock table once it has recovered (E7), as the
    /// replication core decides ([`Copies::settle`]), and writes the data
    /// directory as it says.
    fn recovered(&mut self, how: Recovery) {
        let promised = self.election.promised();
        let settle = self.copies.settle(&how, self.disk.is_durable());
        let entries = self.copies.own().len();
        match how {
            Recovery::Copied(from) => {
                info!(from = ?from, entries, "recovered: promise and lock table copied from healthy voters");
            }
            Recovery::Own => {
                info!(
                    promised,
                    entries, "recovered: resumed from the data directory"
                );
            }
            Recovery::Anew => {
                Metrics::add(&self.metrics.cluster_formed_anew, 1);
                *self
                    .shared
                    .formed_anew_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(self.shared.clock.now());
                warn!(
                    promised,
                    entries,
                    "recovered: a majority of voters restarted together without the others' copies; the cluster forms anew"
                );
            }
        }
        match settle {
            Settle::Initialize(copy) => self.disk.initialize(promised, copy),
            // E1: no lower than any promise heard, durably.
            Settle::Promise => self.disk.persist(Some(promised), Vec::new(), |_| {}),
            Settle::Nothing => {}
        }
    }

    /// Carries out the core's outputs. Sends are spawned (their answers
    /// come back as inputs), or collected in `wait` when given. What the
    /// node's users see is published first: a leader that stopped serving
    /// (a resign, a higher epoch) says so before any message leaves (E6).
    async fn execute(&mut self, outs: Vec<Output>, mut wait: Option<&mut JoinSet<()>>) -> bool {
        self.publish();
        let now = self.shared.clock.now();
        let mut queue: std::collections::VecDeque<Output> = outs.into();
        while let Some(out) = queue.pop_front() {
            match out {
                Output::Send { to, request } => {
                    let addr = self
                        .membership
                        .view()
                        .get(to)
                        .filter(|m| m.is_alive())
                        .map(|m| m.rpc_addr);
                    let Some(addr) = addr else {
                        // Not a live member: the send fails at once.
                        let more = self.election.handle_response(now, to, &request, None);
                        queue.extend(more);
                        continue;
                    };
                    let rpc = self.rpc.clone();
                    let tx = self.tx.clone();
                    let timing = self.election.timing();
                    let timeout = match request {
                        // Answered once the voter's promise is durable.
                        ElectionRequest::Prepare { .. } => timing.attempt_window(),
                        _ => timing.heartbeat * 2,
                    };
                    let send = async move {
                        let answer = rpc
                            .call(addr, Request::Election(request.clone()), timeout)
                            .await;
                        let (response, snapshot) = match answer {
                            Ok(Response::Election(r)) => (Some(r), None),
                            Ok(Response::ElectionWithSnapshot { response, snapshot }) => {
                                (Some(response), Some(snapshot))
                            }
                            _ => (None, None),
                        };
                        let _ = tx
                            .send(Input::Response {
                                from: to,
                                request,
                                response,
                                snapshot,
                            })
                            .await;
                    };
                    match wait.as_deref_mut() {
                        Some(set) => {
                            set.spawn(send);
                        }
                        None => {
                            tokio::spawn(send);
                        }
                    }
                }
                Output::Persist(epoch) => self.persist_own_promise(epoch),
                Output::Recovered(how) => self.recovered(how),
                Output::PublishReach(reach) => {
                    self.membership
                        .set_local(KEY_REACH, &reach.to_string())
                        .await;
                }
                Output::LeaderChanged(leader) => {
                    self.leader_changed(now, leader);
                }
                Output::Serving(serving) => {
                    if serving {
                        Metrics::add(&self.metrics.election_terms_won, 1);
                        info!(id = %self.election.id(), "serving as leader");
                    } else {
                        info!(id = %self.election.id(), "stopped serving as leader");
                    }
                }
                Output::ElectionStarted { epoch } => {
                    // The candidate's own copy is the first of the tables
                    // it will merge (K2).
                    self.copies.start_candidacy(epoch);
                    Metrics::add(&self.metrics.elections_started, 1);
                    debug!(id = %self.election.id(), epoch, "running for leader");
                }
            }
        }
        true
    }

    fn leader_changed(&mut self, now: Duration, leader: Option<Leadership>) {
        match leader {
            None => {
                self.leaderless_since.get_or_insert(now);
            }
            Some(l) => {
                if let Some(since) = self.leaderless_since.take() {
                    let ms = now.saturating_sub(since).as_millis() as u64;
                    Metrics::add(&self.metrics.leaderless_ms_total, ms);
                    self.metrics
                        .leaderless_ms_last
                        .store(ms, std::sync::atomic::Ordering::Relaxed);
                }
                Metrics::add(&self.metrics.leader_changes, 1);
                info!(id = %self.election.id(), leader = %l.id, epoch = l.epoch, "leader");
            }
        }
        let _ = self.shared.events.send(leader);
    }

    fn publish(&self) {
        let now = self.shared.clock.now();
        let leader = self.election.leader(now);
        let changed = self.shared.leader.send_if_modified(|current| {
            if *current != leader {
                *current = leader;
                true
            } else {
                false
            }
        });
        if changed {
            self.shared.leader_changed.notify_waiters();
        }
        let lease = self
            .election
            .lease_until()
            .zip(leader.filter(|l| l.id == self.election.id()))
            .map(|(until, l)| (l, until));
        self.shared.set_lease(lease);
        self.shared.max_epoch.store(
            self.election.max_epoch(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Hands `input` to the driver from any thread: the disk's (blocking
/// send), a task's, or the driver's own (never blocking it).
fn send_from_anywhere(tx: &mpsc::Sender<Input>, input: Input) {
    if let Err(mpsc::error::TrySendError::Full(input)) = tx.try_send(input) {
        let tx = tx.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let _ = tx.send(input).await;
                });
            }
            Err(_) => {
                let _ = tx.blocking_send(input);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// T2: the election and its driver never read a wall clock; wall time
    /// is for record retention only. Checked on the source itself.
    #[test]
    fn election_code_reads_no_wall_clock() {
        for file in ["src/election/mod.rs", "src/node/mod.rs"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            // The code proper: up to its tests, comments left out.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            for needle in ["SystemTime", "UNIX_EPOCH", "CLOCK_REALTIME"] {
                assert!(!code.contains(needle), "{file} uses {needle}");
            }
        }
    }
}
