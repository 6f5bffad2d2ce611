//! The gossip state of the nodes of a simulated network, for the
//! replayable membership model (`membership::model` builds each node's
//! view from it): every node's version, key-values and what it heard of
//! the others, and the gossip round that pulls, in address order, what
//! every reachable node knows, each pull decided by [`SimNet::fate`].
//!
//! Owns: the board and its rounds. Must not: build membership views (the
//! membership layer does), read a clock (callers pass tokio's virtual
//! `Instant`), or draw randomness except through the network.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::SimNet;
use crate::ids::{Generation, NodeId};

/// One life of one node, as gossip names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Incarnation {
    pub(crate) node_id: String,
    pub(crate) generation: Generation,
    pub(crate) gossip_addr: SocketAddr,
}

/// What a node heard of one incarnation.
#[derive(Debug, Clone)]
pub(crate) struct Heard {
    version: u64,
    /// Its key-values.
    pub(crate) values: BTreeMap<String, String>,
    /// When this node last saw the version rise (`None`: heard of, not
    /// yet seen alive).
    pub(crate) rose_at: Option<Instant>,
}

/// One node on the board.
#[derive(Debug)]
struct Member {
    cluster: String,
    me: Incarnation,
    known: BTreeMap<Incarnation, Heard>,
}

/// The gossip state of every running node of one simulated network, by
/// gossip address.
#[derive(Debug, Default)]
pub(crate) struct GossipBoard {
    members: BTreeMap<SocketAddr, Member>,
}

impl GossipBoard {
    /// Puts a node on the board with its first key-values; port 0 picks a
    /// free port on its host. Returns the address taken.
    pub(crate) fn join(
        &mut self,
        cluster: &str,
        addr: SocketAddr,
        node_id: NodeId,
        generation: Generation,
        values: Vec<(String, String)>,
        now: Instant,
    ) -> io::Result<SocketAddr> {
        let addr = super::sim::free_addr(addr, |a| self.members.contains_key(a))?;
        let me = Incarnation {
            node_id: node_id.to_string(),
            generation,
            gossip_addr: addr,
        };
        let heard = Heard {
            version: 1,
            values: values.into_iter().collect(),
            rose_at: Some(now),
        };
        self.members.insert(
            addr,
            Member {
                cluster: cluster.to_string(),
                me: me.clone(),
                known: BTreeMap::from([(me, heard)]),
            },
        );
        Ok(addr)
    }

    /// What the node at `addr` heard, by incarnation, with its own
    /// incarnation; `None` when it is not on the board.
    pub(crate) fn heard(
        &self,
        addr: SocketAddr,
    ) -> Option<(&Incarnation, &BTreeMap<Incarnation, Heard>)> {
        self.members.get(&addr).map(|m| (&m.me, &m.known))
    }

    /// Takes a node off the board (it stopped): nobody hears from it.
    pub(crate) fn leave(&mut self, addr: SocketAddr) {
        self.members.remove(&addr);
    }

    /// Sets one of the node's key-values (a sign of life, like any write).
    pub(crate) fn set(&mut self, addr: SocketAddr, key: &str, value: &str, now: Instant) {
        if let Some(m) = self.members.get_mut(&addr)
            && let Some(own) = m.known.get_mut(&m.me)
        {
            own.values.insert(key.to_string(), value.to_string());
            own.version += 1;
            own.rose_at = Some(now);
        }
    }

    /// One gossip round of the node at `addr`: it raises its own version,
    /// then pulls every reachable node's state (in address order, one
    /// fate each from the network).
    pub(crate) fn round(&mut self, net: &SimNet, addr: SocketAddr, now: Instant) {
        let Some(mut member) = self.members.remove(&addr) else {
            return;
        };
        if let Some(own) = member.known.get_mut(&member.me) {
            own.version += 1;
            own.rose_at = Some(now);
        }
        for (peer_addr, peer) in &self.members {
            if peer.cluster != member.cluster || net.fate(peer_addr.ip(), addr.ip(), 0).is_none() {
                continue;
            }
            for (incarnation, theirs) in &peer.known {
                if *incarnation == member.me {
                    continue;
                }
                match member.known.get_mut(incarnation) {
                    None => {
                        member.known.insert(
                            incarnation.clone(),
                            Heard {
                                version: theirs.version,
                                values: theirs.values.clone(),
                                rose_at: None,
                            },
                        );
                    }
                    Some(mine) if theirs.version > mine.version => {
                        mine.version = theirs.version;
                        mine.values.clone_from(&theirs.values);
                        mine.rose_at = Some(now);
                    }
                    Some(_) => {}
                }
            }
        }
        self.members.insert(addr, member);
    }

    /// The value of `key` of each live peer: its newest live generation's,
    /// none if that generation has none (this node and unparsable ids
    /// left out).
    pub(crate) fn peer_values(
        &self,
        addr: SocketAddr,
        key: &str,
        now: Instant,
        silent_max: Duration,
    ) -> Vec<(NodeId, String)> {
        let Some(member) = self.members.get(&addr) else {
            return Vec::new();
        };
        // The newest live generation of each id, then its value: an
        // earlier generation's value is not the node's now.
        let mut newest: BTreeMap<NodeId, (Generation, &Heard)> = BTreeMap::new();
        for (inc, heard) in &member.known {
            let live = heard
                .rose_at
                .is_some_and(|t| now.saturating_duration_since(t) <= silent_max);
            let Ok(id) = inc.node_id.parse::<NodeId>() else {
                continue;
            };
            if *inc == member.me || !live {
                continue;
            }
            let slot = newest.entry(id).or_insert((inc.generation, heard));
            if inc.generation > slot.0 {
                *slot = (inc.generation, heard);
            }
        }
        newest
            .into_iter()
            .filter_map(|(id, (_, heard))| Some((id, heard.values.get(key)?.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restarted node's earlier generation stays live in a peer's
    /// view for a while; its values are not the node's now: a key the
    /// new generation has not set has no value.
    #[test]
    fn a_peers_value_is_its_newest_live_generations() {
        let net = SimNet::new(1);
        let silent_max = Duration::from_millis(800);
        let at = |ms| Instant::now() + Duration::from_millis(ms);
        let now = at(0);
        let mut board = GossipBoard::default();
        let a: SocketAddr = "10.0.0.1:7400".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7400".parse().unwrap();
        board
            .join("c", a, NodeId(1), Generation(1), vec![], now)
            .unwrap();
        let claim = vec![("leads".to_string(), "3:ff:1".to_string())];
        board
            .join("c", b, NodeId(2), Generation(1), claim, now)
            .unwrap();
        board.round(&net, a, at(100));
        board.round(&net, b, at(100));
        board.round(&net, a, at(200));
        assert_eq!(
            board.peer_values(a, "leads", at(200), silent_max),
            vec![(NodeId(2), "3:ff:1".to_string())]
        );
        board.leave(b);
        board
            .join("c", b, NodeId(2), Generation(2), vec![], at(250))
            .unwrap();
        for ms in [300, 400] {
            board.round(&net, b, at(ms));
            board.round(&net, a, at(ms));
        }
        // Both generations are live in a's view now.
        let (_, known) = board.heard(a).unwrap();
        let live = known
            .values()
            .filter(|h| {
                h.rose_at
                    .is_some_and(|t| at(400).duration_since(t) <= silent_max)
            })
            .count();
        assert_eq!(live, 3, "a, and both generations of node 2");
        assert_eq!(board.peer_values(a, "leads", at(400), silent_max), vec![]);
    }
}
