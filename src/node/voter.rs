//! The voter's adapter in the node driver: a replication batch from the
//! leader, admitted or refused as the election says, merged by the
//! replication core, acked once durable (E8).
//!
//! Owns: the order "persist, then ack". Must not decide whether a batch
//! is taken (the `election` and `replication` cores do).

use tokio::sync::oneshot;
use tracing::warn;

use crate::ids::{Epoch, NodeId};
use crate::locks::Entry;
use crate::metrics::Metrics;
use crate::replication::{Answer, Floor, Gate, Verdict};
use crate::rpc::VoterRequest;

use super::State;

impl State {
    /// A replication batch from the leader to this voter.
    pub(super) fn handle_voter(
        &mut self,
        from: NodeId,
        request: VoterRequest,
        reply: oneshot::Sender<Answer>,
    ) {
        let (epoch, voters, batch, entries) = match request {
            VoterRequest::Replicate {
                epoch,
                voters,
                batch,
                locks,
            } => (epoch, voters, batch, locks),
            VoterRequest::Forget {
                epoch,
                voters,
                floor,
                locks,
            } => return self.handle_forget(epoch, voters, floor, locks, reply),
        };
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
        match self.copies.on_batch(gate, epoch, batch, entries) {
            Verdict::Refuse { promised } => {
                let _ = reply.send(Answer::Refused { promised });
            }
            Verdict::Stale => {
                let _ = reply.send(Answer::Stale);
            }
            Verdict::Ack { raise, entries } => {
                // E8: acked once durable, the raised promise with the
                // entries (E1), from the disk's thread.
                let failed = self.failure_notice();
                self.persist_batch(raise, entries, move |ok| {
                    if ok {
                        let _ = reply.send(Answer::Acked);
                    } else {
                        failed();
                    }
                });
            }
        }
    }

    /// Makes a replication batch's `entries` (and a raised promise)
    /// durable in this node's copy, then `done`: a voter's or the
    /// leader's own. A batch nobody waits on (`locks::nobody_waits_on`)
    /// may share the next batch's sync.
    pub(super) fn persist_batch(
        &self,
        raise: Option<Epoch>,
        entries: Vec<Entry>,
        done: impl FnOnce(bool) + Send + 'static,
    ) {
        if raise.is_none() && crate::locks::nobody_waits_on(&entries) {
            self.disk.persist_unhurried(entries, done);
        } else {
            self.disk.persist(raise, entries, done);
        }
    }

    /// The leader of `epoch` had every voter hold these tombstones and
    /// now has them forgotten, with `floor` (PROTOCOL.md, "Locks" 8):
    /// taken only by a recovered voter of the same configuration that
    /// promised exactly that epoch (one that moved on keeps them: a
    /// later leader adopted them and prunes them in its own time);
    /// answered once the floor and the drop are durable.
    pub(super) fn handle_forget(
        &mut self,
        epoch: Epoch,
        voters: u64,
        floor: Floor,
        entries: Vec<Entry>,
        reply: oneshot::Sender<Answer>,
    ) {
        if !self.election.may_forget(epoch, voters) || floor.epoch != epoch {
            let _ = reply.send(Answer::Refused {
                promised: self.election.promised(),
            });
            return;
        }
        self.apply_forget(floor, entries, move |ok| {
            if ok {
                let _ = reply.send(Answer::Acked);
            }
        });
    }

    /// Forgets `entries` (each where it is held exactly) below `floor`:
    /// this node's copies at once, its durable copy after the floor is
    /// durable; `done` then.
    pub(super) fn apply_forget(
        &mut self,
        floor: Floor,
        entries: Vec<Entry>,
        done: impl FnOnce(bool) + Send + 'static,
    ) {
        let gone = self.copies.forget(floor, &entries);
        Metrics::add(&self.metrics.lock_tombstones_pruned, gone.len() as u64);
        let failed = self.failure_notice();
        self.disk.forget(floor, entries, move |ok| {
            if !ok {
                failed();
            }
            done(ok);
        });
    }
}
