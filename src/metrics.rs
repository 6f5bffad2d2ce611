//! Counters a node keeps about itself, read by `/metrics`. Plain atomics:
//! incremented on hot paths without locks, rendered on demand.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// One node's counters. Gauges that can be derived from state (members
/// alive or dead) are not stored here; the renderer computes them.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Gossip datagrams sent.
    pub gossip_datagrams_sent: AtomicU64,
    /// Gossip bytes sent (payload, as handed to the socket).
    pub gossip_bytes_sent: AtomicU64,
    /// Gossip datagrams received and accepted.
    pub gossip_datagrams_received: AtomicU64,
    /// Gossip bytes received (accepted or not).
    pub gossip_bytes_received: AtomicU64,
    /// Gossip datagrams dropped because they did not decode.
    pub gossip_datagrams_malformed: AtomicU64,
    /// Sealed gossip datagrams that failed authentication (another key,
    /// or altered in transit).
    pub gossip_datagrams_unauthenticated: AtomicU64,
    /// Sealed gossip datagrams dropped as replays.
    pub gossip_datagrams_replayed: AtomicU64,
    /// Sealed gossip datagrams dropped as too old (or from the future).
    pub gossip_datagrams_stale: AtomicU64,
    /// Gossip datagrams that could not be sent (socket error, too large).
    pub gossip_send_errors: AtomicU64,
    /// Peers currently ignored because their id or gossip metadata did
    /// not parse (a gauge).
    pub gossip_members_malformed: AtomicU64,
    /// Membership events published (joined, left, died, restarted).
    pub membership_events: AtomicU64,
    /// Protocol messages refused for another voter set or other safety
    /// timings (V1).
    pub election_voter_set_mismatches: AtomicU64,
    /// Election attempts this node started.
    pub elections_started: AtomicU64,
    /// Terms in which this node served as leader.
    pub election_terms_won: AtomicU64,
    /// Times this node learned of a new leader.
    pub leader_changes: AtomicU64,
    /// Milliseconds this node spent without a known leader.
    pub leaderless_ms_total: AtomicU64,
    /// Length of the last leaderless period, in ms (a gauge).
    pub leaderless_ms_last: AtomicU64,
    /// Times this voter formed the cluster anew with others that
    /// remembered nothing (E7): fencing tokens may have started over.
    pub cluster_formed_anew: AtomicU64,
    /// Times the election and lock driver woke for its own deadlines
    /// (inputs not counted).
    pub driver_ticks: AtomicU64,
    /// RPC calls made.
    pub rpc_calls: AtomicU64,
    /// RPC calls that failed (timeout, unreachable, refused).
    pub rpc_call_errors: AtomicU64,
    /// RPC requests received and handed to the service.
    pub rpc_requests_served: AtomicU64,
    /// One-way RPC messages sent.
    pub rpc_messages_sent: AtomicU64,
    /// Bytes of RPC frames written: requests, answers and messages, as
    /// encoded (QUIC's own headers and encryption not counted).
    pub rpc_bytes_sent: AtomicU64,
    /// One-way RPC messages received.
    pub rpc_messages_received: AtomicU64,
    /// RPC frames dropped or refused: undecodable, too large, unknown version, too slow.
    pub rpc_frames_rejected: AtomicU64,
    /// Outgoing RPC connections attempted.
    pub rpc_connections_dialed: AtomicU64,
    /// RPC handshakes that failed, either way (most often a peer without the cluster secret).
    pub rpc_handshake_failures: AtomicU64,
    /// Outgoing RPC connections closed because calls on them went
    /// unanswered, with nothing heard from the peer, for `SILENCE_MAX`.
    pub rpc_connections_silent: AtomicU64,
    /// Incoming RPC connections refused at the connection bound.
    pub rpc_connections_refused: AtomicU64,
    /// Lock grants reported to clients (committed by a majority).
    pub lock_grants: AtomicU64,
    /// Lock releases reported to clients.
    pub lock_releases: AtomicU64,
    /// Leases the leader expired.
    pub lock_expiries: AtomicU64,
    /// Locks the leader freed on proof of their holder's death (K5).
    pub lock_freed_on_proof: AtomicU64,
    /// Released locks' tombstones this node's copy forgot at its leader's
    /// word, every voter holding them (PROTOCOL.md, "Locks" 8).
    pub lock_tombstones_pruned: AtomicU64,
    /// Renewals answered.
    pub lock_renewals: AtomicU64,
    /// Lock requests answered "lost" (the token did not hold the lock).
    pub lock_lost_answers: AtomicU64,
    /// Replication batches the leader sent.
    pub lock_batches: AtomicU64,
    /// Entries in those batches.
    pub lock_batch_entries: AtomicU64,
    /// Idempotent operations whose completion this node committed as
    /// leader.
    pub idempotency_completions: AtomicU64,
    /// Completed claims' tombstones this node settled out of its lock
    /// copies (the leader's table and its own copy) into its records.
    pub idempotency_settled: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends this node's counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let metrics: [(&str, &str, &str, &AtomicU64); 41] = [
            (
                "coordmesh_gossip_datagrams_sent_total",
                "counter",
                "Gossip datagrams sent.",
                &self.gossip_datagrams_sent,
            ),
            (
                "coordmesh_gossip_bytes_sent_total",
                "counter",
                "Gossip payload bytes sent.",
                &self.gossip_bytes_sent,
            ),
            (
                "coordmesh_gossip_datagrams_received_total",
                "counter",
                "Gossip datagrams received and decoded.",
                &self.gossip_datagrams_received,
            ),
            (
                "coordmesh_gossip_bytes_received_total",
                "counter",
                "Gossip payload bytes received.",
                &self.gossip_bytes_received,
            ),
            (
                "coordmesh_gossip_datagrams_malformed_total",
                "counter",
                "Gossip datagrams dropped because they did not decode.",
                &self.gossip_datagrams_malformed,
            ),
            (
                "coordmesh_gossip_datagrams_unauthenticated_total",
                "counter",
                "Sealed gossip datagrams that failed authentication.",
                &self.gossip_datagrams_unauthenticated,
            ),
            (
                "coordmesh_gossip_datagrams_replayed_total",
                "counter",
                "Sealed gossip datagrams dropped as replays.",
                &self.gossip_datagrams_replayed,
            ),
            (
                "coordmesh_gossip_datagrams_stale_total",
                "counter",
                "Sealed gossip datagrams dropped as too old or from the future.",
                &self.gossip_datagrams_stale,
            ),
            (
                "coordmesh_gossip_send_errors_total",
                "counter",
                "Gossip datagrams that could not be sent.",
                &self.gossip_send_errors,
            ),
            (
                "coordmesh_gossip_members_malformed",
                "gauge",
                "Peers ignored because their gossip metadata did not parse.",
                &self.gossip_members_malformed,
            ),
            (
                "coordmesh_membership_events_total",
                "counter",
                "Membership changes observed (joined, left, died, restarted).",
                &self.membership_events,
            ),
            (
                "coordmesh_election_voter_set_mismatches_total",
                "counter",
                "Election messages refused because the sender has another voter set.",
                &self.election_voter_set_mismatches,
            ),
            (
                "coordmesh_elections_started_total",
                "counter",
                "Election attempts this node started.",
                &self.elections_started,
            ),
            (
                "coordmesh_election_terms_won_total",
                "counter",
                "Times this node started serving as leader (a lapse and renewal of the lease counts again).",
                &self.election_terms_won,
            ),
            (
                "coordmesh_driver_ticks_total",
                "counter",
                "Times the election and lock driver woke for its own deadlines (heartbeat rounds, probes, timeouts, expiries), inputs not counted.",
                &self.driver_ticks,
            ),
            (
                "coordmesh_leader_changes_total",
                "counter",
                "Times this node learned of a new leader.",
                &self.leader_changes,
            ),
            (
                "coordmesh_leaderless_ms_total",
                "counter",
                "Milliseconds this node spent without a known leader (failover time, summed).",
                &self.leaderless_ms_total,
            ),
            (
                "coordmesh_failover_last_ms",
                "gauge",
                "Length of the last period without a leader as this node saw it, in ms.",
                &self.leaderless_ms_last,
            ),
            (
                "coordmesh_cluster_formed_anew_total",
                "counter",
                "Times this voter formed the cluster anew with voters that remembered nothing (tokens may have started over).",
                &self.cluster_formed_anew,
            ),
            (
                "coordmesh_rpc_calls_total",
                "counter",
                "RPC calls made.",
                &self.rpc_calls,
            ),
            (
                "coordmesh_rpc_call_errors_total",
                "counter",
                "RPC calls that failed.",
                &self.rpc_call_errors,
            ),
            (
                "coordmesh_rpc_requests_served_total",
                "counter",
                "RPC requests served.",
                &self.rpc_requests_served,
            ),
            (
                "coordmesh_rpc_messages_sent_total",
                "counter",
                "One-way RPC messages sent.",
                &self.rpc_messages_sent,
            ),
            (
                "coordmesh_rpc_bytes_sent_total",
                "counter",
                "Bytes of RPC frames written (requests, answers, messages; QUIC's own overhead not counted).",
                &self.rpc_bytes_sent,
            ),
            (
                "coordmesh_rpc_messages_received_total",
                "counter",
                "One-way RPC messages received.",
                &self.rpc_messages_received,
            ),
            (
                "coordmesh_rpc_frames_rejected_total",
                "counter",
                "RPC frames rejected (undecodable, too large, unknown version, too slow).",
                &self.rpc_frames_rejected,
            ),
            (
                "coordmesh_rpc_connections_dialed_total",
                "counter",
                "Outgoing RPC connections attempted.",
                &self.rpc_connections_dialed,
            ),
            (
                "coordmesh_rpc_handshake_failures_total",
                "counter",
                "RPC handshakes that failed (e.g. a peer without the cluster secret).",
                &self.rpc_handshake_failures,
            ),
            (
                "coordmesh_rpc_connections_silent_total",
                "counter",
                "Outgoing RPC connections closed after calls went unanswered, nothing heard from the peer, for a second.",
                &self.rpc_connections_silent,
            ),
            (
                "coordmesh_rpc_connections_refused_total",
                "counter",
                "Incoming RPC connections refused at the bound.",
                &self.rpc_connections_refused,
            ),
            (
                "coordmesh_lock_grants_total",
                "counter",
                "Lock grants reported to clients, each committed by a majority of voters.",
                &self.lock_grants,
            ),
            (
                "coordmesh_lock_releases_total",
                "counter",
                "Lock releases reported to clients.",
                &self.lock_releases,
            ),
            (
                "coordmesh_lock_expiries_total",
                "counter",
                "Leases this node expired as leader.",
                &self.lock_expiries,
            ),
            (
                "coordmesh_lock_freed_on_proof_total",
                "counter",
                "Locks this node freed as leader before their TTL, on proof their holder's process ended (K5).",
                &self.lock_freed_on_proof,
            ),
            (
                "coordmesh_lock_tombstones_pruned_total",
                "counter",
                "Released locks' tombstones this node's copy forgot once every voter held them.",
                &self.lock_tombstones_pruned,
            ),
            (
                "coordmesh_lock_renewals_total",
                "counter",
                "Lock renewals answered.",
                &self.lock_renewals,
            ),
            (
                "coordmesh_lock_lost_answers_total",
                "counter",
                "Lock requests answered lost: the token did not hold the lock.",
                &self.lock_lost_answers,
            ),
            (
                "coordmesh_lock_batches_total",
                "counter",
                "Replication batches sent as leader (grants, releases and expiries share them).",
                &self.lock_batches,
            ),
            (
                "coordmesh_lock_batch_entries_total",
                "counter",
                "Entries in the replication batches sent as leader.",
                &self.lock_batch_entries,
            ),
            (
                "coordmesh_idempotency_completions_total",
                "counter",
                "Idempotent operations whose completion this node committed as leader.",
                &self.idempotency_completions,
            ),
            (
                "coordmesh_idempotency_settled_total",
                "counter",
                "Completed claims' tombstones settled out of this node's lock copies into its idempotency records.",
                &self.idempotency_settled,
            ),
        ];
        for (name, kind, help, value) in metrics {
            render_metric(out, name, help, kind, value.load(Ordering::Relaxed));
        }
    }
}

/// Appends one metric with its HELP and TYPE lines.
pub fn render_metric(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}
