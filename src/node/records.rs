//! The records' part in the lock protocol (PROTOCOL.md, "Idempotency"
//! 8): a completion settles out of the lock copies into the records of
//! the voters that hold it, so the driver also
//!
//! - has a new leader reconcile its records with a majority of the
//!   voters that promised it, each still in the run that promised and
//!   complete then, before the table answers a begin;
//! - has a voter whose records may lack completions it settled (its copy
//!   was replaced at recovery, its records file was set aside) fill them
//!   in from a majority of complete voters, a copy and then the records
//!   of each, before it counts as complete;
//! - answers a peer's `Copy`.
//!
//! Owns: when to reconcile and with whom, and the `complete` mark. Must
//! not: decide what a record or an entry is worth (the store's and the
//! copies' merges do).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::election::Recovery;
use crate::idempotency::Durability;
use crate::ids::{Epoch, NodeId};
use crate::locks::Entry;
use crate::membership::Membership;
use crate::rpc::{Life, Request, Response, Rpc, VoterSnapshot};

use super::anti_entropy::exchange;
use super::{Input, Shared, State};

/// How long a new leader may take to reconcile its records with a
/// majority of its promisers before it hands over (a promiser that died
/// meanwhile can leave it short for good; the next term asks others).
pub(crate) const RECORDS_RECONCILE_DEADLINE: Duration = Duration::from_secs(10);
/// The pause between two attempts to reach a peer's records.
const RETRY: Duration = Duration::from_millis(200);
/// How long one request of these (`Copy`, `Life`) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl State {
    /// This run of the node and whether its records are complete.
    pub(super) fn life(&self) -> Life {
        Life {
            id: self.shared.life,
            complete: records_complete(&self.shared.complete, &self.shared.records),
        }
    }

    /// This node runs for `epoch`: it is the first of its promisers, as
    /// its records are now.
    pub(super) fn start_promisers(&mut self, epoch: Epoch) {
        self.promisers = (epoch, Default::default());
        if self.election.is_voter() {
            let me = self.election.id();
            self.promisers.1.insert(me, self.life());
        }
    }

    /// A voter promised `epoch` from the run `life`.
    pub(super) fn on_promiser(&mut self, epoch: Epoch, from: NodeId, life: Life) {
        if self.promisers.0 == epoch {
            self.promisers.1.insert(from, life);
        }
    }

    /// The table took over `epoch`: reconcile the records with each
    /// promiser that was complete when it promised, and open begins once
    /// a majority of voters are done (this node among them if it
    /// promised complete).
    pub(super) fn reconcile_promisers(&mut self, now: Duration, epoch: Epoch) {
        self.stop_reconciling();
        if self.reconciled_epoch == Some(epoch) {
            // The same epoch served again: its promisers' records are in
            // this leader's already.
            self.open_claims(epoch);
            return;
        }
        // A term served again after its lease lapsed keeps the deadline
        // it began with: a lapse must not put off the handover (a leader
        // whose lease keeps lapsing would otherwise never hand over).
        let deadline = match self.reconcile_term_deadline {
            Some((e, at)) if e == epoch => at,
            _ => now + RECORDS_RECONCILE_DEADLINE,
        };
        self.reconcile_term_deadline = Some((epoch, deadline));
        self.reconcile_deadline = Some(deadline);
        let me = self.election.id();
        let promisers = if self.promisers.0 == epoch {
            self.promisers.1.clone()
        } else {
            Default::default()
        };
        for (id, life) in promisers {
            if !life.complete {
                continue;
            }
            if id == me {
                self.reconciled.insert(me);
                continue;
            }
            let task = tokio::spawn(reconcile_with(
                id,
                life,
                epoch,
                self.rpc.clone(),
                self.membership.clone(),
                self.shared.clone(),
                self.tx.clone(),
            ));
            self.reconciling.push(task.abort_handle());
        }
        self.check_records_ready(epoch);
    }

    /// The records were reconciled with promiser `from` of `epoch`.
    pub(super) fn on_reconciled(&mut self, epoch: Epoch, from: NodeId) {
        if self.locks.epoch() == Some(epoch) && !self.locks.records_ready() {
            self.reconciled.insert(from);
            self.check_records_ready(epoch);
        }
    }

    fn check_records_ready(&mut self, epoch: Epoch) {
        // This node counts only while its own records are complete.
        if !self.life().complete {
            self.reconciled.remove(&self.election.id());
        }
        let voters = self.election.voters();
        let done = voters
            .iter()
            .filter(|v| self.reconciled.contains(v))
            .count();
        if done > voters.len() / 2 {
            info!(%epoch, with = ?self.reconciled, "records reconciled with a majority of promisers; claims served");
            self.stop_reconciling();
            self.open_claims(epoch);
        }
    }

    /// The table adopts the claims of the promised copies as this node's
    /// records say, and serves claims.
    fn open_claims(&mut self, epoch: Epoch) {
        self.reconciled_epoch = Some(epoch);
        let store = self.shared.records.clone();
        let wall_ms = self.shared.clock.wall_ms();
        let now = self.shared.clock.now();
        let outs = self.locks.records_reconciled(now, |key| {
            store
                .committed(key, wall_ms)
                .map(|r| (r.claim, Box::new(r.facts())))
        });
        self.apply_locks(outs);
    }

    /// Stops the reconciliations of a term (it ended, or is done).
    pub(super) fn stop_reconciling(&mut self) {
        for task in self.reconciling.drain(..) {
            task.abort();
        }
        self.reconciled.clear();
        self.reconcile_deadline = None;
    }

    /// A leader that could not reconcile with a majority of its
    /// promisers in time hands over: the next term asks live ones.
    pub(super) fn check_reconcile_deadline(&mut self, now: Duration) {
        let Some(deadline) = self.reconcile_deadline else {
            return;
        };
        if self.locks.epoch().is_none() {
            self.stop_reconciling();
            return;
        }
        if now < deadline {
            return;
        }
        if self.locks.records_ready() {
            // (Reconciled: the deadline went with it; belt and braces, so
            // that a deadline passed never wakes the driver again.)
            self.reconcile_deadline = None;
            return;
        }
        warn!(
            reconciled = ?self.reconciled,
            "records not reconciled with a majority of the promisers in time; resigning"
        );
        self.stop_reconciling();
        let (done, _) = oneshot::channel();
        let _ = self.tx.try_send(Input::Resign { done });
    }

    /// A peer asks for this node's copy.
    pub(super) fn on_copy(&self, reply: oneshot::Sender<Response>) {
        let _ = reply.send(Response::Copy(VoterSnapshot {
            locks: self.copies.snapshot(),
            floor: self.copies.floor(),
            life: self.life(),
        }));
    }

    /// A complete voter's copy, for this node's backfill: its claims
    /// (the completions not settled into its records yet) merged into
    /// this node's own copy, durably, before `done` hears true. Its user
    /// locks are not taken: the recovery settled them, and a copy its
    /// source gave before it held a prune round's tombstones could bring
    /// back a grant this node forgot meanwhile (PROTOCOL.md, "Locks" 8).
    pub(super) fn on_absorb(&mut self, mut entries: Vec<Entry>, done: oneshot::Sender<bool>) {
        entries.retain(|e| e.name.space == crate::locks::Space::Claim);
        self.copies.absorb(entries.clone());
        self.disk.persist(None, entries, move |ok| {
            let _ = done.send(ok);
        });
    }

    /// After the recovery (E7): are this voter's records complete? If
    /// not, they are marked so in the data directory (before its copy
    /// is replaced) and filled in from a majority. False if the mark
    /// could not be written.
    pub(super) fn records_after_recovery(&mut self, how: &Recovery) -> bool {
        let intact = self.shared.records.intact();
        let complete = match how {
            // A cluster formed anew keeps what the voters hold.
            Recovery::Anew => {
                self.shared.records.mark_found();
                true
            }
            Recovery::Own => self.disk.has_dir() && intact,
            Recovery::Copied(_) => false,
        };
        if complete {
            self.shared.complete.store(true, Ordering::Release);
            return true;
        }
        self.fill_records_in()
    }

    /// A voter whose records were found lost after it recovered (the
    /// records file not read to the end) fills them in too.
    pub(super) fn check_records_lost(&mut self) {
        if self.election.is_voter()
            && self.shared.complete.load(Ordering::Acquire)
            && !self.shared.records.intact()
            && self.backfill.as_ref().is_none_or(|t| t.is_finished())
        {
            if !self.fill_records_in() {
                (self.failure_notice())();
            }
            // A leader whose records served its claims hands over.
            if self.locks.epoch().is_some() {
                warn!("this leader's records were found lost; resigning");
                let (done, _) = oneshot::channel();
                let _ = self.tx.try_send(Input::Resign { done });
            }
        }
    }

    /// Marks the records incomplete (in the data directory, durably) and
    /// starts filling them in. False if the mark could not be written.
    fn fill_records_in(&mut self) -> bool {
        self.shared.complete.store(false, Ordering::Release);
        if let Some(dir) = self.disk.dir_path()
            && let Err(e) = crate::storage::mark_records_incomplete(&dir, true)
        {
            tracing::error!(error = %e, "the records could not be marked incomplete");
            return false;
        }
        info!("filling this voter's records in from a majority of voters");
        if let Some(task) = self.backfill.take() {
            task.abort();
        }
        let task = tokio::spawn(backfill(
            self.election.id(),
            self.election.voters().to_vec(),
            self.rpc.clone(),
            self.membership.clone(),
            self.shared.clone(),
            self.tx.clone(),
            self.disk.dir_path(),
        ));
        self.backfill = Some(task.abort_handle());
        true
    }
}

/// A node's records are complete: marked so (at recovery, or once filled
/// in) and not found lost since.
pub(crate) fn records_complete(
    complete: &std::sync::atomic::AtomicBool,
    records: &crate::idempotency::Store,
) -> bool {
    complete.load(Ordering::Acquire) && records.intact()
}

/// The address of `id` if it is a live member.
fn addr_of(membership: &Membership, id: NodeId) -> Option<std::net::SocketAddr> {
    membership
        .view()
        .get(id)
        .filter(|m| m.is_alive())
        .map(|m| m.rpc_addr)
}

/// Reconciles this node's records with `id`'s and checks that `id` is
/// still the run `life`, until both hold (or `id` is another run now:
/// then it never counts).
async fn records_of(
    rpc: &Rpc,
    membership: &Membership,
    shared: &Shared,
    id: NodeId,
    life: Life,
) -> Option<bool> {
    let addr = addr_of(membership, id)?;
    if shared.records.is_loading() {
        return None;
    }
    let now_ms = shared.clock.wall_ms();
    if let Err(e) = exchange(rpc, addr, &shared.records, now_ms).await {
        debug!(%id, error = %e, "records not reconciled yet");
        return None;
    }
    // The same run, still complete: a run whose records were found lost
    // meanwhile (its file not read to the end) may have answered from
    // part of them.
    match rpc.call(addr, Request::Life, CALL_TIMEOUT).await {
        Ok(Response::Life(now)) => Some(now.id == life.id && now.complete),
        _ => None,
    }
}

async fn reconcile_with(
    id: NodeId,
    life: Life,
    epoch: Epoch,
    rpc: Arc<Rpc>,
    membership: Arc<Membership>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Input>,
) {
    while !shared.is_stopped() {
        match records_of(&rpc, &membership, &shared, id, life).await {
            Some(true) => {
                let _ = tx.send(Input::RecordsReconciled { epoch, from: id }).await;
                return;
            }
            Some(false) => {
                debug!(%id, "the promiser restarted since its promise: its records do not count");
                return;
            }
            None => tokio::time::sleep(RETRY).await,
        }
    }
}

/// Fills this voter's records in: from each of ⌊(n−1)/2⌋+1 other voters
/// that are complete, its copy (merged into this voter's, durably) and
/// then its records, from the same run. Every completion committed is
/// held by a majority, each in its copy or its records, so one of those
/// voters held it when it answered. Then, once the records file has
/// synced them, the records are complete.
async fn backfill(
    me: NodeId,
    voters: Vec<NodeId>,
    rpc: Arc<Rpc>,
    membership: Arc<Membership>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Input>,
    dir: Option<std::path::PathBuf>,
) {
    let others: Vec<NodeId> = voters.into_iter().filter(|v| *v != me).collect();
    let need = (others.len() / 2 + 1).min(others.len());
    let mut done = BTreeSet::new();
    while done.len() < need {
        if shared.is_stopped() {
            return;
        }
        for &x in &others {
            if done.len() >= need || done.contains(&x) {
                continue;
            }
            let Some(addr) = addr_of(&membership, x) else {
                continue;
            };
            let Ok(Response::Copy(copy)) = rpc.call(addr, Request::Copy, CALL_TIMEOUT).await else {
                continue;
            };
            if !copy.life.complete {
                continue;
            }
            let (ok, merged) = oneshot::channel();
            let absorb = Input::Absorb {
                entries: copy.locks,
                done: ok,
            };
            if tx.send(absorb).await.is_err() || !merged.await.unwrap_or(false) {
                return;
            }
            if records_of(&rpc, &membership, &shared, x, copy.life).await == Some(true) {
                done.insert(x);
            }
        }
        if done.len() < need {
            tokio::time::sleep(RETRY).await;
        }
    }
    // Durable before the mark goes: every change sent so far synced.
    let mut mark = None;
    loop {
        match shared.records.durability() {
            Durability::Memory => break,
            Durability::Disk { sent, synced } => {
                let mark = *mark.get_or_insert(sent);
                if synced >= mark {
                    break;
                }
                if shared.is_stopped() {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
            Durability::Lossy | Durability::Closed => {
                // Complete in memory for this run; the mark stays, so the
                // next run fills them in again.
                shared.records.mark_found();
                shared.complete.store(true, Ordering::Release);
                warn!(with = ?done, "records filled in, but not all written to the records file");
                return;
            }
        }
    }
    if let Some(dir) = dir
        && let Err(e) = crate::storage::mark_records_incomplete(&dir, false)
    {
        warn!(error = %e, "the records' incomplete mark could not be removed");
    }
    shared.records.mark_found();
    shared.complete.store(true, Ordering::Release);
    info!(with = ?done, "records filled in from a majority of voters: complete");
}
