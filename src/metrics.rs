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
    /// Gossip datagrams that could not be sent (socket error, too large).
    pub gossip_send_errors: AtomicU64,
    /// Peers currently ignored because their id or gossip metadata did
    /// not parse (a gauge).
    pub gossip_members_malformed: AtomicU64,
    /// Membership events published (joined, left, died, restarted).
    pub membership_events: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends this node's counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let metrics: [(&str, &str, &str, &AtomicU64); 8] = [
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
