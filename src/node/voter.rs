//! The voter's adapter in the node driver: a replication batch from the
//! leader, admitted or refused as the election says, merged by the
//! replication core, acked once durable (E8).
//!
//! Owns: the order "persist, then ack". Must not decide whether a batch
//! is taken (the `election` and `replication` cores do).

use tokio::sync::oneshot;
use tracing::warn;

use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::replication::{Answer, Gate, Verdict};
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
                let _ = reply.send(Answer::Refused { promised });
            }
            Verdict::Ack { raise, entries } => {
                // E8: acked once durable, the raised promise with the
                // entries (E1), from the disk's thread.
                let failed = self.failure_notice();
                self.disk.persist(raise, entries, move |ok| {
                    if ok {
                        let _ = reply.send(Answer::Acked);
                    } else {
                        failed();
                    }
                });
            }
        }
    }
}
