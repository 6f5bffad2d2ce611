//! What each node gossips about itself: small, slowly changing facts.
//! Values are strings in chitchat's key-value state; parsing them is the
//! one place where a peer's metadata is trusted or refused.

use std::net::SocketAddr;

/// The protocol version this build speaks; gossiped by every node and
/// carried by every protocol message.
pub const PROTOCOL_VERSION: u32 = 1;

/// Gossip key: the node's QUIC RPC address.
pub const KEY_RPC: &str = "rpc";
/// Gossip key: the node's HTTP API address.
pub const KEY_HTTP: &str = "http";
/// Gossip key: `1` when the node is in its own voter set.
pub const KEY_VOTER: &str = "voter";
/// Gossip key: the highest protocol version the node speaks.
pub const KEY_PROTOCOL: &str = "proto";
/// Gossip key: set to `1` when the node is leaving gracefully.
pub const KEY_LEAVING: &str = "leaving";
/// Key of the "reaches a quorum of voters" mark: a counter the node bumps
/// each heartbeat interval in which it heard from a majority of voters.
pub const KEY_REACH: &str = "reach";
/// Key of the highest epoch of a leader the node followed. Voters that
/// restart all together without data directories read it: a member that
/// remembers an epoch means locks may have been granted in an earlier
/// life of the cluster, whose leases must run out first (E7).
pub const KEY_EPOCH: &str = "epoch";
/// The generation this run's data directory proves gone (K5): set by a
/// node that took its data directory's lock anew (no node of its process
/// held it before), naming the generation that ran there last. That
/// generation held the lock for its process's whole life, so its process,
/// and every lock holder in it, has ended.
pub const KEY_ENDED: &str = "ended";

/// Gossip key of a leader's claim, `EPOCH:HASH:MARK` (the epoch and
/// the mark in decimal, the configuration hash in hex) while the node
/// serves as leader, and `-` otherwise. The mark rises with each
/// heartbeat round it sends. Heartbeats go to voters only: the other
/// members learn the leader from this claim, and only a changed mark
/// is news that its leader still leads.
pub const KEY_LEADS: &str = "leads";

/// A leader's claim as gossiped under [`KEY_LEADS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderClaim {
    /// The epoch it leads.
    pub epoch: u64,
    /// Its configuration hash.
    pub hash: u64,
    /// Rises with each heartbeat round it sends.
    pub mark: u64,
}

impl LeaderClaim {
    /// The value of [`KEY_LEADS`] for `claim` (none: `-`).
    pub fn format(claim: Option<LeaderClaim>) -> String {
        match claim {
            Some(c) => format!("{}:{:x}:{}", c.epoch, c.hash, c.mark),
            None => "-".to_string(),
        }
    }

    /// Parses a [`KEY_LEADS`] value: `None` for no claim or a value that
    /// does not parse.
    pub fn parse(value: &str) -> Option<LeaderClaim> {
        let mut parts = value.split(':');
        let claim = LeaderClaim {
            epoch: parts.next()?.parse().ok()?,
            hash: u64::from_str_radix(parts.next()?, 16).ok()?,
            mark: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(claim)
    }
}

/// A node's gossiped metadata, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMeta {
    /// QUIC RPC address.
    pub rpc_addr: SocketAddr,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// In its own voter set.
    pub voter: bool,
    /// Protocol version spoken.
    pub protocol: u32,
    /// Leaving gracefully.
    pub leaving: bool,
}

impl NodeMeta {
    /// The key-values a node starts gossiping with.
    pub fn initial(
        rpc_addr: SocketAddr,
        http_addr: SocketAddr,
        voter: bool,
    ) -> Vec<(String, String)> {
        vec![
            (KEY_RPC.to_string(), rpc_addr.to_string()),
            (KEY_HTTP.to_string(), http_addr.to_string()),
            (
                KEY_VOTER.to_string(),
                if voter { "1" } else { "0" }.to_string(),
            ),
            (KEY_PROTOCOL.to_string(), PROTOCOL_VERSION.to_string()),
            (KEY_LEADS.to_string(), LeaderClaim::format(None)),
        ]
    }

    /// Parses a peer's key-values; `None` when a required key is missing
    /// or malformed (the peer is then ignored and counted).
    pub fn parse<'a>(mut get: impl FnMut(&str) -> Option<&'a str>) -> Option<NodeMeta> {
        let flag = |v: Option<&str>| match v {
            None | Some("0") => Some(false),
            Some("1") => Some(true),
            Some(_) => None,
        };
        Some(NodeMeta {
            rpc_addr: get(KEY_RPC)?.parse().ok()?,
            http_addr: get(KEY_HTTP)?.parse().ok()?,
            voter: flag(get(KEY_VOTER))?,
            protocol: get(KEY_PROTOCOL)?.parse().ok()?,
            leaving: flag(get(KEY_LEAVING))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(kv: &HashMap<String, String>) -> Option<NodeMeta> {
        NodeMeta::parse(|k| kv.get(k).map(String::as_str))
    }

    #[test]
    fn initial_values_parse_back() {
        let rpc: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let http: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let kv: HashMap<_, _> = NodeMeta::initial(rpc, http, true).into_iter().collect();
        let meta = parse(&kv).unwrap();
        assert_eq!(
            (meta.rpc_addr, meta.http_addr, meta.voter, meta.leaving),
            (rpc, http, true, false)
        );
        assert_eq!(meta.protocol, PROTOCOL_VERSION);
    }

    #[test]
    fn leader_claims_parse_back_and_garbage_is_no_claim() {
        for (epoch, hash, mark) in [
            (1, 0, 0),
            (7, 0xdead_beef, 420),
            (u64::from(u32::MAX), u64::MAX, u64::MAX),
        ] {
            let claim = LeaderClaim { epoch, hash, mark };
            assert_eq!(
                LeaderClaim::parse(&LeaderClaim::format(Some(claim))),
                Some(claim)
            );
        }
        for bad in [
            &LeaderClaim::format(None),
            "",
            "3",
            "3:ff",
            "3:ff:",
            ":ff:1",
            "x:ff:1",
            "3:zz:1",
            "-1:ff:1",
            "3:ff:1:2",
        ] {
            assert_eq!(
                LeaderClaim::parse(bad),
                None,
                "{bad:?} was taken for a claim"
            );
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        let good: HashMap<_, _> = NodeMeta::initial(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            false,
        )
        .into_iter()
        .collect();
        for (key, bad) in [
            (KEY_RPC, "nope"),
            (KEY_HTTP, "1.2.3.4"),
            (KEY_VOTER, "yes"),
            (KEY_PROTOCOL, "-1"),
            (KEY_LEAVING, ""),
        ] {
            let mut kv = good.clone();
            kv.insert(key.to_string(), bad.to_string());
            assert_eq!(parse(&kv), None, "{key}={bad:?} was accepted");
        }
        let mut missing = good.clone();
        missing.remove(KEY_RPC);
        assert_eq!(parse(&missing), None);
    }
}
