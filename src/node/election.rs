//! The election's adapter in the node driver: peers' liveness and gossip
//! marks in, election requests and answers, the core's outputs out
//! (sends, the durable self-promise, the published leader), and the
//! recovery's copy carried out.
//!
//! Owns: turning `election` outputs into effects. Must not decide what
//! to promise, whom to follow or which copy a recovery takes (the
//! `election` and `replication` cores do).

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::election::{ElectionRequest, ElectionResponse, Leadership, Output, Recovery};
use crate::ids::{Epoch, Generation, NodeId};
use crate::membership::{KEY_ENDED, KEY_EPOCH, KEY_LEADS, KEY_REACH, LeaderClaim};
use crate::metrics::Metrics;
use crate::replication::Settle;
use crate::rpc::{Request, Response, VoterSnapshot};

use super::{Input, State, send_from_anywhere};

impl State {
    /// Liveness from the membership view.
    pub(super) fn sync_peers(&mut self) {
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
    pub(super) async fn poll_reach(&mut self, now: Duration) {
        let view = self.membership.view();
        for (_, value) in self.membership.peer_values(KEY_EPOCH).await {
            if let Ok(epoch) = value.parse::<u64>() {
                self.election.handle_peer_epoch(Epoch(epoch));
            }
        }
        let epoch = self.election.led_epoch();
        if epoch > self.gossiped_epoch {
            self.gossiped_epoch = epoch;
            self.membership
                .set_local(KEY_EPOCH, &epoch.to_string())
                .await;
        }
        // K5: runs of peers proven ended by a later run's data directory.
        for (id, value) in self.membership.peer_values(KEY_ENDED).await {
            let Ok(ended) = value.parse::<u64>() else {
                continue;
            };
            let ended = Generation(ended);
            if self
                .runs_ended
                .get(&id)
                .is_some_and(|&known| known >= ended)
            {
                continue;
            }
            self.runs_ended.insert(id, ended);
            tracing::info!(node = %id, %ended, "a later run proves this run of the node ended");
            let freed = self.locks.freed_on_proof_total();
            let outs = self.locks.handle_run_ended(now, id, ended);
            Metrics::add(
                &self.metrics.lock_freed_on_proof,
                self.locks.freed_on_proof_total() - freed,
            );
            self.apply_locks(outs);
        }
        self.publish_claim(now).await;
        // Leaders' claims: how a member that is not a voter learns the
        // leader (heartbeats go to voters only).
        if !self.election.is_voter() {
            let claims: Vec<_> = self
                .membership
                .peer_values(KEY_LEADS)
                .await
                .into_iter()
                .filter(|(id, _)| view.get(*id).is_some_and(|m| m.is_alive()))
                .filter_map(|(id, value)| {
                    let c = LeaderClaim::parse(&value)?;
                    Some((id, Epoch(c.epoch), c.hash, c.mark))
                })
                .collect();
            let outs = self.election.handle_leader_claims(now, &claims);
            self.execute(outs, None).await;
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

    /// An election request from a peer: the core's answer (with this
    /// voter's copy when it is a promise or a recovery answer), sent once
    /// any promise it raised is durable (E1).
    pub(super) async fn on_election_request(
        &mut self,
        now: Duration,
        from: NodeId,
        request: ElectionRequest,
        reply: oneshot::Sender<Response>,
    ) -> bool {
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
                        life: self.life(),
                        floor: self.copies.floor(),
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

    /// A peer's answer to an election request of this node: the copies it
    /// carries go to the replication core (a promise's to the candidacy,
    /// a sync answer's to the recovery), the answer to the election.
    pub(super) async fn on_election_answer(
        &mut self,
        now: Duration,
        from: NodeId,
        request: ElectionRequest,
        response: Option<ElectionResponse>,
        snapshot: Option<VoterSnapshot>,
    ) -> bool {
        if let Some(VoterSnapshot {
            locks: table,
            life,
            floor,
        }) = snapshot
        {
            match (&request, &response) {
                (
                    ElectionRequest::Prepare { epoch, .. },
                    Some(ElectionResponse::Promise { epoch: promised }),
                ) if epoch == promised => {
                    // A promise that came after the takeover is not in
                    // the adopted table: its records do not count.
                    let merged = self.copies.on_promise(*epoch, table);
                    if merged {
                        self.on_promiser(*epoch, from, life);
                    }
                }
                (ElectionRequest::Sync { .. }, Some(ElectionResponse::State { .. }))
                    if self.election.keeps_sync_copy(&request) =>
                {
                    // E7: kept until the recovery decides whose
                    // tables this voter takes.
                    self.copies.on_sync_answer(from, table, floor);
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

    /// Hands over (E6), waiting briefly for the resignations to leave.
    pub(super) async fn on_resign(&mut self, now: Duration, done: oneshot::Sender<()>) -> bool {
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

    /// The epoch this node serves as leader, if it does.
    pub(super) fn own_term(&self, now: Duration) -> Option<Epoch> {
        self.election
            .leader(now)
            .filter(|l| l.id == self.election.id())
            .map(|l| l.epoch)
    }

    /// The epoch this node leads and serves now (its lease valid).
    pub(super) fn serving_term(&self, now: Duration) -> Option<Epoch> {
        self.own_term(now).filter(|_| self.election.is_serving(now))
    }

    /// Makes the candidate's promise to itself durable, off this task;
    /// the election asks the voters once it is (E1).
    pub(super) fn persist_own_promise(&self, epoch: Epoch) {
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
    pub(super) fn promise_in_flight(&self) -> bool {
        self.disk.has_dir()
            && self.election.promised()
                > Epoch(
                    self.shared
                        .promised_durable
                        .load(std::sync::atomic::Ordering::Acquire),
                )
    }

    /// Settles this voter's lock table once it has recovered (E7), as the
    /// replication core decides ([`Copies::settle`]), and writes the data
    /// directory as it says.
    pub(super) fn recovered(&mut self, how: Recovery) {
        self.shared
            .recovered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let promised = self.election.promised();
        // The records' mark goes down before the copy is replaced.
        if !self.records_after_recovery(&how) {
            (self.failure_notice())();
        }
        let settle = self.copies.settle(&how, self.disk.is_durable());
        let entries = self.copies.own().len();
        match how {
            Recovery::Copied(from) => {
                info!(from = ?from, entries, "recovered: promise and lock table copied from healthy voters");
            }
            Recovery::Own => {
                info!(
                    %promised,
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
                    %promised,
                    entries,
                    "recovered: a majority of voters restarted together without the others' copies; the cluster forms anew"
                );
            }
        }
        match settle {
            Settle::Initialize(copy) => self.disk.initialize(promised, copy, self.copies.floor()),
            // E1: no lower than any promise heard, durably.
            Settle::Promise => self.disk.persist(Some(promised), Vec::new(), |_| {}),
            Settle::Nothing => {}
        }
    }

    /// Carries out the core's outputs. Sends are spawned (their answers
    /// come back as inputs), or collected in `wait` when given. What the
    /// node's users see is published first: a leader that stopped serving
    /// (a resign, a higher epoch) says so before any message leaves (E6).
    pub(super) async fn execute(
        &mut self,
        outs: Vec<Output>,
        mut wait: Option<&mut JoinSet<()>>,
    ) -> bool {
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
                        // Answered once the voter's promise is durable; a
                        // pre-vote's answer waits behind any promise the
                        // voter is still writing, so it gets as long.
                        ElectionRequest::Prepare { .. } | ElectionRequest::PreVote { .. } => {
                            timing.attempt_window()
                        }
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
                    self.publish_claim(now).await;
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
                    self.start_promisers(epoch);
                    Metrics::add(&self.metrics.elections_started, 1);
                    debug!(id = %self.election.id(), %epoch, "running for leader");
                }
            }
        }
        true
    }

    /// Gossips this node's claim to lead when it changed: made while it
    /// serves, its mark rising with each heartbeat round it sends; withdrawn
    /// when it stops.
    async fn publish_claim(&mut self, now: Duration) {
        let hash = self.election.config_hash();
        let claim = self.election.claim(now).map(|(epoch, mark)| LeaderClaim {
            epoch: epoch.0,
            hash,
            mark,
        });
        if claim != self.claim_published {
            self.claim_published = claim;
            self.membership
                .set_local(KEY_LEADS, &LeaderClaim::format(claim))
                .await;
        }
    }

    pub(super) fn leader_changed(&mut self, now: Duration, leader: Option<Leadership>) {
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
                info!(id = %self.election.id(), leader = %l.id, epoch = %l.epoch, "leader");
            }
        }
        let _ = self.shared.events.send(leader);
    }
}
