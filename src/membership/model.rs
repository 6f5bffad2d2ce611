//! Membership for simulations that replay exactly from their seed: a
//! gossip model in place of chitchat, whose gossip rounds pick peers from
//! an RNG of their own that no seed reaches.
//!
//! The model: every node keeps what it heard of every incarnation (a
//! version that rises with each of its owner's gossip rounds and each of
//! its key-value writes, and its key-values). Each gossip interval a node
//! raises its own version, then pulls, in address order, what every other
//! node of its cluster knows, through [`SimNet::fate`] (so partitions,
//! blocked links and random loss apply, from the network's seeded RNG),
//! keeping the higher version of each incarnation. An incarnation is live
//! once this node saw its version rise, until it stays silent for
//! `phi_threshold` gossip intervals: chitchat's detector with a mean
//! heartbeat gap of one interval, where phi is the silence over the mean.
//! Its view is built by [`MembershipView::from_observations`], as
//! chitchat's is.
//!
//! Owns: the simulated gossip state of every node of one [`SimNet`] (the
//! [`Board`]). Must not: read a clock of its own (callers pass tokio's
//! virtual `Instant`), or draw randomness except through the network.
//! Gossip bytes, digests and chitchat's own rules are not modelled: the
//! membership simulations (`tests/sim_membership.rs`) and `meshd bench
//! membership` run chitchat itself.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::meta::NodeMeta;
use super::view::{MembershipView, Observation};
use crate::ids::{Generation, NodeId};
use crate::net::SimNet;

/// One life of one node, as gossip names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Incarnation {
    node_id: String,
    generation: Generation,
    gossip_addr: SocketAddr,
}

/// What a node heard of one incarnation.
#[derive(Debug, Clone)]
struct Heard {
    version: u64,
    values: BTreeMap<String, String>,
    /// When this node last saw the version rise (`None`: heard of, not
    /// yet seen alive).
    rose_at: Option<Instant>,
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
pub struct Board {
    members: BTreeMap<SocketAddr, Member>,
}

impl Board {
    /// Puts a node on the board with its first key-values; port 0 picks a
    /// free port on its host. Returns the address taken.
    pub(crate) fn join(
        &mut self,
        cluster: &str,
        mut addr: SocketAddr,
        node_id: NodeId,
        generation: Generation,
        values: Vec<(String, String)>,
        now: Instant,
    ) -> io::Result<SocketAddr> {
        if addr.port() == 0 {
            let port = (49152..=u16::MAX)
                .find(|p| !self.members.contains_key(&SocketAddr::new(addr.ip(), *p)))
                .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port"))?;
            addr.set_port(port);
        }
        if self.members.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is in use"),
            ));
        }
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

    /// The node's view: incarnations seen alive at least once, live while
    /// heard from within `silent_max`. Returns it with the number of
    /// observations ignored as malformed.
    pub(crate) fn view(
        &self,
        addr: SocketAddr,
        self_id: NodeId,
        now: Instant,
        silent_max: Duration,
    ) -> (MembershipView, usize) {
        let Some(member) = self.members.get(&addr) else {
            return (MembershipView::empty(self_id), 0);
        };
        let observations = member.known.iter().filter_map(|(inc, heard)| {
            let rose_at = heard.rose_at?;
            Some(Observation {
                node_id: &inc.node_id,
                generation: inc.generation,
                gossip_addr: inc.gossip_addr,
                live: *inc == member.me || now.saturating_duration_since(rose_at) <= silent_max,
                meta: NodeMeta::parse(|key| heard.values.get(key).map(String::as_str)),
            })
        });
        MembershipView::from_observations(self_id, observations)
    }

    /// The value of `key` of each live peer (newest generation per node
    /// id; this node and unparsable ids left out).
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
        let mut newest: BTreeMap<NodeId, (Generation, String)> = BTreeMap::new();
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
            let Some(value) = heard.values.get(key) else {
                continue;
            };
            let slot = newest.entry(id).or_insert((inc.generation, value.clone()));
            if inc.generation > slot.0 {
                *slot = (inc.generation, value.clone());
            }
        }
        newest.into_iter().map(|(id, (_, v))| (id, v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::meta::NodeMeta;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::new(std::net::IpAddr::V4([127, 1, 0, n].into()), 7400)
    }

    fn join(board: &mut Board, n: u8, generation: u64, now: Instant) {
        let values = NodeMeta::initial(addr(n), addr(n), true);
        board
            .join(
                "c",
                addr(n),
                NodeId(n as u64),
                Generation(generation),
                values,
                now,
            )
            .unwrap();
    }

    fn alive(board: &Board, n: u8, now: Instant) -> Vec<u64> {
        let (view, _) = board.view(addr(n), NodeId(n as u64), now, SILENT);
        view.alive().map(|m| m.id.0).collect()
    }

    const TICK: Duration = Duration::from_millis(100);
    const SILENT: Duration = Duration::from_millis(800);

    fn rounds(board: &mut Board, net: &SimNet, nodes: &[u8], now: &mut Instant, k: usize) {
        for _ in 0..k {
            *now += TICK;
            for n in nodes {
                board.round(net, addr(*n), *now);
            }
        }
    }

    #[test]
    fn a_peer_is_alive_once_seen_to_rise_and_dead_after_the_silence() {
        let net = SimNet::new(1);
        let mut board = Board::default();
        let mut now = Instant::now();
        for n in 1..=3 {
            join(&mut board, n, 1, now);
        }
        rounds(&mut board, &net, &[1, 2, 3], &mut now, 1);
        // Heard of, not yet seen to rise.
        assert_eq!(alive(&board, 1, now), vec![1]);
        rounds(&mut board, &net, &[1, 2, 3], &mut now, 1);
        assert_eq!(alive(&board, 1, now), vec![1, 2, 3]);
        board.leave(addr(3));
        rounds(&mut board, &net, &[1, 2], &mut now, 8);
        assert_eq!(alive(&board, 1, now), vec![1, 2, 3], "within the silence");
        rounds(&mut board, &net, &[1, 2], &mut now, 1);
        assert_eq!(alive(&board, 1, now), vec![1, 2]);
    }

    #[test]
    fn a_cut_link_is_bridged_by_a_third_node() {
        let net = SimNet::new(2);
        let mut board = Board::default();
        let mut now = Instant::now();
        for n in 1..=3 {
            join(&mut board, n, 1, now);
        }
        net.block(addr(3).ip(), addr(1).ip());
        rounds(&mut board, &net, &[1, 2, 3], &mut now, 20);
        assert_eq!(alive(&board, 1, now), vec![1, 2, 3]);
        net.partition(&[vec![addr(1).ip(), addr(2).ip()], vec![addr(3).ip()]]);
        rounds(&mut board, &net, &[1, 2, 3], &mut now, 20);
        assert_eq!(alive(&board, 1, now), vec![1, 2]);
        assert_eq!(alive(&board, 3, now), vec![3]);
    }

    #[test]
    fn values_travel_and_the_newest_generation_answers() {
        let net = SimNet::new(3);
        let mut board = Board::default();
        let mut now = Instant::now();
        join(&mut board, 1, 1, now);
        join(&mut board, 2, 1, now);
        board.set(addr(2), "epoch", "4", now);
        rounds(&mut board, &net, &[1, 2], &mut now, 2);
        assert_eq!(
            board.peer_values(addr(1), "epoch", now, SILENT),
            vec![(NodeId(2), "4".to_string())]
        );
        board.leave(addr(2));
        join(&mut board, 2, 2, now);
        board.set(addr(2), "epoch", "5", now);
        rounds(&mut board, &net, &[1, 2], &mut now, 2);
        assert_eq!(
            board.peer_values(addr(1), "epoch", now, SILENT),
            vec![(NodeId(2), "5".to_string())]
        );
        let (view, _) = board.view(addr(1), NodeId(1), now, SILENT);
        assert_eq!(view.get(NodeId(2)).unwrap().generation, Generation(2));
    }

    #[test]
    fn an_address_in_use_is_refused() {
        let mut board = Board::default();
        let now = Instant::now();
        join(&mut board, 1, 1, now);
        let again = board.join("c", addr(1), NodeId(9), Generation(1), Vec::new(), now);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }
}
