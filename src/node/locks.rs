//! The lock table's adapter in the node driver: client requests in, the
//! table started and stopped with the lease, its outputs out (answers,
//! replication batches to every voter), and voters' answers to batches.
//!
//! Owns: turning `locks::table` outputs into effects. Must not decide a
//! grant, an expiry or a resend (the `locks::table` and `replication`
//! cores do).

use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, error, info, trace, warn};

use crate::idempotency::Durability;
use crate::ids::{BatchId, Epoch, NodeId, Token};
use crate::locks::{Entry, LockOutput, LockReply, LockRequest, Name, RecordsSay, Ticket};
use crate::metrics::Metrics;
use crate::replication::{self, Answer, FORGET_ATTEMPTS, Floor, Next};
use crate::rpc::{Message, Request, Response, VoterRequest};

use super::{Input, State, send_from_anywhere};

impl State {
    /// A voter's answer to a replication batch of this leader (`None`:
    /// none came), as the replication core says: count it, stop, resend.
    pub(super) async fn on_batch_answer(
        &mut self,
        now: Duration,
        epoch: Epoch,
        batch: BatchId,
        to: NodeId,
        entries: Vec<Entry>,
        reply: Option<Answer>,
    ) -> bool {
        if self.locks.epoch() != Some(epoch) {
            return true;
        }
        match replication::after_answer(epoch, reply, self.locks.is_pending(batch)) {
            Next::CountAck => {
                trace!(%epoch, ?batch, %to, ?now, "lock batch acked");
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

    /// A lock request from a client (any node, this one included) to the
    /// leader.
    pub(super) fn handle_lock(
        &mut self,
        now: Duration,
        from: NodeId,
        request: LockRequest,
        reply: oneshot::Sender<LockReply>,
    ) -> bool {
        self.sync_locks(now);
        let serving = self.serving_term(now);
        if self.adopting.is_some() && self.adopting == serving {
            // Leading, its table not adopted yet: retry shortly (K6).
            let _ = reply.send(LockReply::NoQuorum);
            return true;
        }
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        self.tickets.insert(ticket.0, reply);
        trace!(ticket = ticket.0, %from, ?request, ?now, "lock request");
        let wall_ms = self.shared.clock.wall_ms();
        let records = self.records_say(&request, wall_ms);
        let outs = self
            .locks
            .handle_request(now, wall_ms, ticket, from, request, records);
        self.apply_locks(outs)
    }

    /// What this node's records say of the key of a begin or a
    /// completion, when it leads: a completion settled out of the table
    /// is there only.
    fn records_say(&self, request: &LockRequest, wall_ms: u64) -> RecordsSay {
        let key = match request {
            LockRequest::Begin(begin) => &begin.key,
            LockRequest::Complete { key, .. } => key,
            _ => return RecordsSay::default(),
        };
        if self.locks.epoch().is_none() {
            return RecordsSay::default();
        }
        let store = &self.shared.records;
        RecordsSay {
            completion: store
                .committed(key, wall_ms)
                .map(|r| (r.claim, Box::new(r.facts()))),
            held: store.len(),
            unsettled_bytes: self.own_claim_bytes,
        }
    }

    /// Settles completed claims out of the lock copies into the records
    /// (PROTOCOL.md, "Idempotency" 8): a completion's tombstone leaves
    /// the leader's table, this node's copy and its durable copy once
    /// this node's records hold it (or a later claim's) durably. With a
    /// records file that takes two sweeps: the tombstones found held at
    /// one leave at a later one, once the writer has synced every change
    /// queued before the first; without one at once (the records are as
    /// durable as the copies); never after a change was not written.
    pub(super) fn settle(&mut self) {
        self.check_records_lost();
        // As of this sweep: only the leader's begins weigh its copy.
        self.own_claim_bytes = if self.locks.epoch().is_some() {
            self.copies
                .own()
                .entries()
                .filter(|e| e.name.space == crate::locks::Space::Claim)
                .map(crate::locks::claim::claim_weight)
                .sum()
        } else {
            0
        };
        let store = self.shared.records.clone();
        let wall_ms = self.shared.clock.wall_ms();
        let found = || -> Vec<(Name, Token)> {
            let mut found = self.locks.settleable();
            found.extend(
                self.copies
                    .own()
                    .entries()
                    .filter(|e| e.is_settleable())
                    .map(|e| (e.name.clone(), e.token)),
            );
            found.sort_unstable();
            found.dedup();
            found.retain(|(name, claim)| store.holds_completion(&name.text, *claim, wall_ms));
            found
        };
        // Found before the writer's count is read: a record taken in
        // between is then sent after the mark, never settled on it.
        let fresh = found();
        let due = match store.durability() {
            Durability::Closed => return,
            Durability::Lossy => {
                // The records file missed a change: the records hold
                // what they settle in memory only. The data directory is
                // marked incomplete first, so a restart fills them in
                // again from a majority before they count.
                if !self.records_lossy_marked {
                    if let Some(dir) = self.disk.dir_path()
                        && let Err(e) = crate::storage::mark_records_incomplete(&dir, true)
                    {
                        tracing::error!(error = %e, "the records could not be marked incomplete");
                        (self.failure_notice())();
                        return;
                    }
                    self.records_lossy_marked = true;
                }
                self.settling = None;
                fresh
            }
            Durability::Memory => fresh,
            Durability::Disk { sent, synced } => match self.settling.take() {
                Some((mark, due)) if synced >= mark => {
                    if !fresh.is_empty() {
                        self.settling = Some((sent, fresh));
                    }
                    due
                }
                Some(waiting) => {
                    self.settling = Some(waiting);
                    return;
                }
                None => {
                    if !fresh.is_empty() {
                        self.settling = Some((sent, fresh));
                    }
                    return;
                }
            },
        };
        if due.is_empty() {
            return;
        }
        let due: std::collections::HashSet<(Name, Token)> = due.into_iter().collect();
        let table = self
            .locks
            .settle(|name, claim| due.contains(&(name.clone(), claim)));
        let own = self
            .copies
            .collect(|e| e.is_settleable() && due.contains(&(e.name.clone(), e.token)));
        if own > 0 && self.disk.has_dir() {
            self.disk.settle(due.into_iter().collect());
        }
        if table + own > 0 {
            Metrics::add(&self.metrics.idempotency_settled, (table + own) as u64);
            trace!(table, own, "completions settled into the records");
        }
    }

    /// Drops the claims' tombstones no begin needs any more at this
    /// node's wall-clock time (I6): from the leader's table, this node's
    /// copy and its durable copy. Each node does it on its own clock;
    /// nothing is replicated.
    pub(super) fn collect(&mut self) {
        let wall_ms = self.shared.clock.wall_ms();
        let table = self.locks.collect(wall_ms);
        let own = self.copies.collect(|e| e.collectable(wall_ms));
        if own > 0 {
            self.disk.collect(wall_ms);
        }
        if table + own > 0 {
            trace!(table, own, "claims' tombstones collected");
        }
    }

    /// Starts or stops the lock table as this node starts or stops
    /// serving as leader.
    pub(super) fn sync_locks(&mut self, now: Duration) {
        let serving = self.serving_term(now);
        let outs = match (serving, self.locks.epoch()) {
            (Some(e), Some(l)) if e == l => return,
            // Its table is being adopted.
            (Some(e), _) if self.adopting == Some(e) => return,
            (Some(e), _) => {
                // K2: adopt the grants of the promising majority.
                // Kept for the whole term: a leader whose lease lapsed and
                // came back serves the same epoch again.
                let Some(merged) = self.copies.takeover(e) else {
                    // Invariant: a term always starts from a candidacy of
                    // its epoch; without its tables serve no locks.
                    error!(
                        epoch = %e,
                        "leading without the promised lock tables; locks not served this term"
                    );
                    return;
                };
                let adopted = merged.entries().filter(|e| e.is_held()).count();
                info!(epoch = %e, adopted, "lock table taken over");
                // Adopting takes a while for a large table: off this task
                // on a real node (heartbeats, gossip and answers go on
                // meanwhile; lock requests hear "not leader" and retry),
                // at once in a simulation. Either way the adoption comes
                // back as an input, so a simulation replays the same path.
                let outs = self.locks.step_down();
                self.adopting = Some(e);
                let adopter = self.locks.adopter();
                let tx = self.tx.clone();
                let adopt = move || {
                    // A panic here would leave the node leading and never
                    // serving: it stops instead, as a panic of its task
                    // would, so that another node takes over.
                    let adopted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        adopter.adopt(now, e, merged)
                    }));
                    let input = match adopted {
                        Ok(adoption) => Input::Adopted(Box::new(adoption)),
                        Err(_) => Input::AdoptionFailed,
                    };
                    send_from_anywhere(&tx, input);
                };
                match self.shared.adopt_latency {
                    None => {
                        tokio::task::spawn_blocking(adopt);
                    }
                    Some(latency) if latency.is_zero() => adopt(),
                    Some(latency) => {
                        tokio::spawn(async move {
                            tokio::time::sleep(latency).await;
                            adopt();
                        });
                    }
                }
                outs
            }
            (None, Some(_)) => {
                self.stop_reconciling();
                self.locks.step_down()
            }
            (None, None) => return,
        };
        self.apply_locks(outs);
    }

    /// The table of `adoption`'s term is adopted: served if this node
    /// still leads that term, else dropped. False if this node must stop.
    pub(super) fn on_adopted(&mut self, now: Duration, adoption: crate::locks::Adoption) -> bool {
        let e = adoption.epoch();
        if self.adopting != Some(e) {
            return true; // another term's adoption began since
        }
        self.adopting = None;
        let serving = self.serving_term(now);
        if serving != Some(e) || self.locks.epoch().is_some() {
            self.sync_locks(now);
            return true;
        }
        // K2: the term's first batch carries the adopted table; it
        // reaches this voter's own copy (durably) like any batch.
        let freed = self.locks.freed_on_proof_total();
        let outs = self.locks.install(adoption);
        // K5: adopted grants of runs already proven ended.
        Metrics::add(
            &self.metrics.lock_freed_on_proof,
            self.locks.freed_on_proof_total() - freed,
        );
        // Begins wait for the promisers' records.
        self.reconcile_promisers(now, e);
        self.apply_locks(outs)
    }

    /// Carries out the lock table's outputs. False if this node must stop.
    pub(super) fn apply_locks(&mut self, outs: Vec<LockOutput>) -> bool {
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
                    trace!(%epoch, ?batch, ?entries, "lock batch");
                    Metrics::add(&self.metrics.lock_batches, 1);
                    Metrics::add(&self.metrics.lock_batch_entries, entries.len() as u64);
                    // The term's copy keeps what this leader issued, voter
                    // or not, and so does its own copy if it is a voter
                    // (made durable while the batch is on the wire).
                    let voter = self.election.is_voter();
                    self.copies.issued(epoch, &entries, voter);
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
                                reply: Some(Answer::Acked),
                            };
                            let tx = self.tx.clone();
                            let failed = self.failure_notice();
                            self.persist_batch(None, entries, move |ok| {
                                if ok {
                                    send_from_anywhere(&tx, input);
                                } else {
                                    failed();
                                }
                            });
                        }
                    }
                }
                LockOutput::Forget { floor, entries } => {
                    let Some(epoch) = self.locks.epoch() else {
                        continue;
                    };
                    debug!(%epoch, ?floor, pruned = entries.len(), "tombstones pruned");
                    let me = self.election.id();
                    for &v in self.election.voters().to_vec().iter() {
                        if v != me {
                            self.send_forget(epoch, v, floor, entries.clone());
                        }
                    }
                    self.apply_forget(floor, entries, |_| {});
                }
                LockOutput::Completed { key, claim, facts } => {
                    // Committed: this node's records replay it, and every
                    // live peer is sent it (a lost notice is made up by a
                    // peer's begin reaching the leader).
                    let wall_ms = self.shared.clock.wall_ms();
                    self.shared.records.learn(&key, claim, &facts, wall_ms);
                    Metrics::add(&self.metrics.idempotency_completions, 1);
                    let me = self.election.id();
                    let peers: Vec<_> = self
                        .membership
                        .view()
                        .members()
                        .filter(|m| m.id != me && m.is_alive())
                        .map(|m| m.rpc_addr)
                        .collect();
                    let rpc = self.rpc.clone();
                    let notice = Message::Completed { key, claim, facts };
                    tokio::spawn(async move {
                        for addr in peers {
                            let _ = rpc.send(addr, notice.clone()).await;
                        }
                    });
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

    pub(super) fn addr_of(&self, node: NodeId) -> Option<std::net::SocketAddr> {
        self.membership
            .view()
            .get(node)
            .filter(|m| m.is_alive())
            .map(|m| m.rpc_addr)
    }

    /// Tells one voter to forget pruned tombstones (PROTOCOL.md, "Locks"
    /// 8), again every [`replication::REPLICATE_RETRY`] until it answers,
    /// up to [`FORGET_ATTEMPTS`] times: a voter that never hears it only
    /// keeps the tombstones (a later leader adopts and prunes them).
    fn send_forget(&self, epoch: Epoch, to: NodeId, floor: Floor, entries: Vec<Entry>) {
        let rpc = self.rpc.clone();
        let addr = self.addr_of(to);
        let voters = self.election.config_hash();
        let timeout = self.election.timing().heartbeat * 2;
        let request = Request::Voter(VoterRequest::Forget {
            epoch,
            voters,
            floor,
            locks: entries,
        });
        let Some(addr) = addr else {
            return;
        };
        tokio::spawn(async move {
            for _ in 0..FORGET_ATTEMPTS {
                if let Ok(Response::Voter(_)) = rpc.call(addr, request.clone(), timeout).await {
                    return;
                }
                tokio::time::sleep(replication::REPLICATE_RETRY).await;
            }
        });
    }

    /// Sends one replication batch to one voter, after `delay`.
    pub(super) fn send_batch(
        &self,
        epoch: Epoch,
        batch: BatchId,
        to: NodeId,
        entries: Vec<Entry>,
        delay: Duration,
    ) {
        let rpc = self.rpc.clone();
        let tx = self.tx.clone();
        let addr = self.addr_of(to);
        let voters = self.election.config_hash();
        let timeout =
            crate::replication::batch_wait(self.election.timing().heartbeat, entries.len());
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let reply = match addr {
                Some(addr) => {
                    let request = Request::Voter(VoterRequest::Replicate {
                        epoch,
                        voters,
                        batch,
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
}
