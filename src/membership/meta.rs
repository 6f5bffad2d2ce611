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
