//! The membership view: who is in the cluster, by [`NodeId`], and what
//! changed since the last view. Sans-io: built from observations of the
//! gossip state, no clock, no socket, so its rules are unit-tested alone.
//!
//! Rules:
//! - one member per `NodeId`: a live incarnation wins over a dead one,
//!   else the newest generation, and the other is forgotten at once (it
//!   is a process that was replaced);
//! - a member is `Alive` when its newest generation is live in the failure
//!   detector and not leaving, `Left` when it announced a graceful leave,
//!   `Dead` otherwise;
//! - a peer whose id or metadata does not parse is not a member.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::meta::NodeMeta;
use crate::ids::{Generation, NodeId};

/// Liveness of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Heartbeating and not leaving.
    Alive,
    /// Announced a graceful leave.
    Left,
    /// Stopped heartbeating (crashed, paused, or cut off from us).
    Dead,
}

impl MemberState {
    /// The contract's two-valued state: a member that left is not alive.
    pub fn as_contract_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Left | MemberState::Dead => "dead",
        }
    }
}

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Incarnation: a restart is a new, higher generation.
    pub generation: Generation,
    /// Liveness.
    pub state: MemberState,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// QUIC RPC address.
    pub rpc_addr: SocketAddr,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// In its own voter set.
    pub voter: bool,
    /// Protocol version it speaks.
    pub protocol: u32,
}

impl Member {
    /// True when [`MemberState::Alive`].
    pub fn is_alive(&self) -> bool {
        self.state == MemberState::Alive
    }
}

/// A change between two views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member became alive: first seen, or back after a partition with
    /// the same generation.
    Joined(Member),
    /// A member announced a graceful leave.
    Left(Member),
    /// A member stopped heartbeating.
    Died(Member),
    /// A member came back as a new generation (its process restarted).
    Restarted(Member),
}

impl MemberEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            MemberEvent::Joined(m)
            | MemberEvent::Left(m)
            | MemberEvent::Died(m)
            | MemberEvent::Restarted(m) => m,
        }
    }
}

/// One gossip-state entry, as read from the gossip layer.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The peer's id as gossiped (a decimal `u64` when well formed).
    pub node_id: &'a str,
    /// Its generation.
    pub generation: Generation,
    /// Its gossip address.
    pub gossip_addr: SocketAddr,
    /// Live in the failure detector.
    pub live: bool,
    /// Its metadata, `None` when it did not parse.
    pub meta: Option<NodeMeta>,
}

/// A snapshot of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipView {
    self_id: NodeId,
    members: BTreeMap<NodeId, Member>,
}

impl MembershipView {
    /// An empty view (before gossip has run).
    pub fn empty(self_id: NodeId) -> MembershipView {
        MembershipView {
            self_id,
            members: BTreeMap::new(),
        }
    }

    /// Builds a view; returns it with the number of observations ignored
    /// because the peer's id or metadata was malformed.
    pub fn from_observations<'a>(
        self_id: NodeId,
        observations: impl IntoIterator<Item = Observation<'a>>,
    ) -> (MembershipView, usize) {
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        let mut ignored = 0;
        for obs in observations {
            let (Ok(id), Some(meta)) = (obs.node_id.parse::<u64>(), obs.meta) else {
                ignored += 1;
                continue;
            };
            let id = NodeId(id);
            let state = match (meta.leaving, obs.live) {
                (true, _) => MemberState::Left,
                (false, true) => MemberState::Alive,
                (false, false) => MemberState::Dead,
            };
            // A live incarnation wins over a dead one, whatever their
            // numbers (a restart after the wall clock stepped back has a
            // lower generation than its dead predecessor); between two
            // live ones, or two dead ones, the newer generation.
            let rank = |alive: bool, generation: Generation| (alive, generation);
            if members.get(&id).is_some_and(|m| {
                rank(m.is_alive(), m.generation)
                    >= rank(state == MemberState::Alive, obs.generation)
            }) {
                continue;
            }
            members.insert(
                id,
                Member {
                    id,
                    generation: obs.generation,
                    state,
                    gossip_addr: obs.gossip_addr,
                    rpc_addr: meta.rpc_addr,
                    http_addr: meta.http_addr,
                    voter: meta.voter,
                    protocol: meta.protocol,
                },
            );
        }
        (MembershipView { self_id, members }, ignored)
    }

    /// The id of the node holding this view.
    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    /// All members, by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Alive members, by id.
    pub fn alive(&self) -> impl Iterator<Item = &Member> {
        self.members().filter(|m| m.is_alive())
    }

    /// Members that are not alive (dead or left), by id.
    pub fn not_alive(&self) -> impl Iterator<Item = &Member> {
        self.members().filter(|m| !m.is_alive())
    }

    /// Number of members of any state.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True before anything is known (not even this node).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// What changed from `old` to `self`, in id order.
    pub fn changes_since(&self, old: &MembershipView) -> Vec<MemberEvent> {
        let mut events = Vec::new();
        for new in self.members.values() {
            let event = match old.members.get(&new.id) {
                None if new.is_alive() => Some(MemberEvent::Joined(new.clone())),
                None => None,
                Some(prev) if new.is_alive() && prev.generation != new.generation => {
                    Some(MemberEvent::Restarted(new.clone()))
                }
                Some(prev) if prev.state == new.state => None,
                Some(_) => Some(match new.state {
                    MemberState::Alive => MemberEvent::Joined(new.clone()),
                    MemberState::Left => MemberEvent::Left(new.clone()),
                    MemberState::Dead => MemberEvent::Died(new.clone()),
                }),
            };
            events.extend(event);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(leaving: bool) -> Option<NodeMeta> {
        Some(NodeMeta {
            rpc_addr: "127.0.0.1:2".parse().unwrap(),
            http_addr: "127.0.0.1:3".parse().unwrap(),
            voter: true,
            protocol: 1,
            leaving,
        })
    }

    fn obs(id: &str, generation: u64, live: bool) -> Observation<'_> {
        Observation {
            node_id: id,
            generation: Generation(generation),
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            live,
            meta: meta(false),
        }
    }

    fn view(observations: Vec<Observation<'_>>) -> MembershipView {
        MembershipView::from_observations(NodeId(1), observations).0
    }

    #[test]
    fn newest_generation_replaces_the_old_one() {
        // The old incarnation is still live in the failure detector (it
        // has not timed out yet), but a newer one exists: one member, new.
        let v = view(vec![obs("2", 10, true), obs("2", 11, true)]);
        assert_eq!(v.len(), 1);
        assert_eq!(v.get(NodeId(2)).unwrap().generation, Generation(11));
        // A restart after the wall clock stepped back: the live process
        // has the lower generation and its dead predecessor the higher.
        // The live one is the member (before, the dead one hid it until
        // gossip forgot it, an hour later).
        let v = view(vec![obs("2", 11, false), obs("2", 10, true)]);
        let m = v.get(NodeId(2)).unwrap();
        assert_eq!(
            (m.state, m.generation),
            (MemberState::Alive, Generation(10))
        );
        let v = view(vec![obs("2", 11, false), obs("2", 10, false)]);
        assert_eq!(v.get(NodeId(2)).unwrap().generation, Generation(11));
    }

    #[test]
    fn malformed_peers_are_ignored_and_counted() {
        let mut bad_meta = obs("3", 1, true);
        bad_meta.meta = None;
        let (v, ignored) = MembershipView::from_observations(
            NodeId(1),
            vec![obs("1", 1, true), obs("node-2", 1, true), bad_meta],
        );
        assert_eq!(v.len(), 1);
        assert_eq!(ignored, 2);
    }

    #[test]
    fn events_name_each_kind_of_change() {
        let before = view(vec![
            obs("1", 1, true),
            obs("2", 1, true),
            obs("3", 1, true),
        ]);
        let mut leaving = obs("3", 1, true);
        leaving.meta = meta(true);
        let after = view(vec![
            obs("1", 1, true),
            obs("2", 1, false),
            leaving,
            obs("4", 1, true),
        ]);
        let kinds: Vec<_> = after
            .changes_since(&before)
            .iter()
            .map(|e| match e {
                MemberEvent::Joined(m) => ("joined", m.id.0),
                MemberEvent::Left(m) => ("left", m.id.0),
                MemberEvent::Died(m) => ("died", m.id.0),
                MemberEvent::Restarted(m) => ("restarted", m.id.0),
            })
            .collect();
        assert_eq!(kinds, vec![("died", 2), ("left", 3), ("joined", 4)]);

        let back = view(vec![obs("1", 1, true), obs("2", 2, true)]);
        let events = back.changes_since(&after);
        assert!(matches!(&events[..], [MemberEvent::Restarted(m)] if m.id == NodeId(2)));
    }

    #[test]
    fn unchanged_view_has_no_events() {
        let v = view(vec![obs("1", 1, true), obs("2", 1, false)]);
        assert!(v.changes_since(&v.clone()).is_empty());
    }

    #[test]
    fn left_reads_as_dead_in_the_contract() {
        assert_eq!(MemberState::Left.as_contract_str(), "dead");
        assert_eq!(MemberState::Alive.as_contract_str(), "alive");
    }
}
