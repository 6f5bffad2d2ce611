//! Membership for simulations that replay exactly from their seed: a
//! gossip model in place of chitchat, whose gossip rounds pick peers from
//! an RNG of their own that no seed reaches.
//!
//! The model: every node keeps what it heard of every incarnation (a
//! version that rises with each of its owner's gossip rounds and each of
//! its key-value writes, and its key-values). Each gossip interval a node
//! raises its own version, then pulls, in address order, what every other
//! node of its cluster knows, through `SimNet::fate` (so partitions,
//! blocked links and random loss apply, from the network's seeded RNG),
//! keeping the higher version of each incarnation. An incarnation is live
//! once this node saw its version rise, until it stays silent for
//! `phi_threshold` gossip intervals: chitchat's detector with a mean
//! heartbeat gap of one interval, where phi is the silence over the mean.
//! Its view is built by [`MembershipView::from_observations`], as
//! chitchat's is.
//!
//! Owns: a node's view built from what the network's gossip board
//! (`net::GossipBoard`, which holds the state and runs the rounds) says
//! it heard. Must not: read a clock of its own (callers pass tokio's
//! virtual `Instant`).
//! Gossip bytes, digests and chitchat's own rules are not modelled: the
//! membership simulations (`tests/sim_membership.rs`) and `meshd bench
//! membership` run chitchat itself.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::meta::NodeMeta;
use super::view::{MembershipView, Observation};
use crate::ids::NodeId;
use crate::net::GossipBoard;

/// The node's view: incarnations seen alive at least once, live while
/// heard from within `silent_max`. Returns it with the number of
/// observations ignored as malformed.
pub(crate) fn view(
    board: &GossipBoard,
    addr: SocketAddr,
    self_id: NodeId,
    now: Instant,
    silent_max: Duration,
) -> (MembershipView, usize) {
    let Some((me, known)) = board.heard(addr) else {
        return (MembershipView::empty(self_id), 0);
    };
    let observations = known.iter().filter_map(|(inc, heard)| {
        let rose_at = heard.rose_at?;
        Some(Observation {
            node_id: &inc.node_id,
            generation: inc.generation,
            gossip_addr: inc.gossip_addr,
            live: inc == me || now.saturating_duration_since(rose_at) <= silent_max,
            meta: NodeMeta::parse(|key| heard.values.get(key).map(String::as_str)),
        })
    });
    MembershipView::from_observations(self_id, observations)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::ids::Generation;
    use crate::membership::meta::NodeMeta;
    use crate::net::SimNet;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::new(std::net::IpAddr::V4([127, 1, 0, n].into()), 7400)
    }

    fn join(board: &mut GossipBoard, n: u8, generation: u64, now: Instant) {
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

    fn alive(board: &GossipBoard, n: u8, now: Instant) -> Vec<u64> {
        let (view, _) = view(board, addr(n), NodeId(n as u64), now, SILENT);
        view.alive().map(|m| m.id.0).collect()
    }

    const TICK: Duration = Duration::from_millis(100);
    const SILENT: Duration = Duration::from_millis(800);

    fn rounds(board: &mut GossipBoard, net: &SimNet, nodes: &[u8], now: &mut Instant, k: usize) {
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
        let mut board = GossipBoard::default();
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
        let mut board = GossipBoard::default();
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
        let mut board = GossipBoard::default();
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
        let (seen, _) = view(&board, addr(1), NodeId(1), now, SILENT);
        assert_eq!(seen.get(NodeId(2)).unwrap().generation, Generation(2));
    }

    #[test]
    fn an_address_in_use_is_refused() {
        let mut board = GossipBoard::default();
        let now = Instant::now();
        join(&mut board, 1, 1, now);
        let again = board.join("c", addr(1), NodeId(9), Generation(1), Vec::new(), now);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }
}
