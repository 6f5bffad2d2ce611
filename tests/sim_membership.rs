//! Simulated clusters (tier 2): whole nodes in one process on a simulated
//! network under tokio's paused clock. Each test logs its seed; replay its faults
//! with `COORDMESH_SEED=<seed> cargo test --test sim_membership` (chitchat
//! picks its gossip peers from an RNG of its own, so not exactly).

use std::time::Duration;

use coordmesh::net::{Faults, SimGossip};
use coordmesh::sim::SimCluster;
use coordmesh::{ConfigBuilder, MemberEvent, MemberState, NodeId};

const CONVERGE: Duration = Duration::from_secs(10);

/// Nodes `1..=n` gossiping by chitchat itself: these tests are of the
/// gossip, not of the replayable model the other simulations use.
async fn chitchat_cluster(n: u64, tuning: ConfigBuilder) -> SimCluster {
    SimCluster::start_gossiping(SimCluster::seed_from_env(), n, tuning, SimGossip::Chitchat).await
}

/// Goal: five nodes started together all see all five alive.
#[tokio::test(start_paused = true)]
async fn five_nodes_converge() {
    let mut c = chitchat_cluster(5, ConfigBuilder::default()).await;
    let took = c
        .eventually(CONVERGE, "all 5 see all 5", |c| c.all_see_alive(5))
        .await;
    // Failure detection needs two heartbeats of each peer; with 100 ms
    // gossip that is a few rounds, never seconds.
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} (seed {})",
        c.seed()
    );
    c.shutdown().await;
}

/// Goal: a crashed node is declared dead by every other node, and each
/// survivor publishes a `Died` event for it.
#[tokio::test(start_paused = true)]
async fn killed_node_is_declared_dead_by_all() {
    let mut c = chitchat_cluster(5, ConfigBuilder::default()).await;
    c.eventually(CONVERGE, "converged", |c| c.all_see_alive(5))
        .await;
    let mut events: Vec<_> = [1, 2, 3, 4]
        .map(|i| c.mesh(NodeId(i)).member_events())
        .into();
    c.kill(NodeId(5)).await;
    let took = c
        .eventually(CONVERGE, "all see node 5 dead", |c| {
            c.all_see_gone(NodeId(5))
        })
        .await;
    assert!(
        took < Duration::from_millis(2500),
        "detection took {took:?} (seed {})",
        c.seed()
    );
    for (i, rx) in events.iter_mut().enumerate() {
        let event = rx
            .try_recv()
            .unwrap_or_else(|e| panic!("node {} saw no event: {e}", i + 1));
        assert!(
            matches!(&event, MemberEvent::Died(m) if m.id == NodeId(5)),
            "{event:?}"
        );
        let view = c.mesh(NodeId(i as u64 + 1)).membership();
        assert_eq!(view.get(NodeId(5)).unwrap().state, MemberState::Dead);
    }
    c.shutdown().await;
}

/// Goal: a partition splits the views along the cut, and healing it
/// brings every node back to seeing everyone.
#[tokio::test(start_paused = true)]
async fn partition_isolates_and_heals() {
    let mut c = chitchat_cluster(5, ConfigBuilder::default()).await;
    c.eventually(CONVERGE, "converged", |c| c.all_see_alive(5))
        .await;
    let (a, b) = ([NodeId(1), NodeId(2), NodeId(3)], [NodeId(4), NodeId(5)]);
    c.partition(&[&a, &b]);
    c.eventually(CONVERGE, "each side sees only itself", |c| {
        a.iter()
            .all(|n| c.mesh(*n).membership().alive().count() == 3)
            && b.iter()
                .all(|n| c.mesh(*n).membership().alive().count() == 2)
    })
    .await;
    c.heal();
    c.eventually(CONVERGE, "healed: all see all", |c| c.all_see_alive(5))
        .await;
    // Same generations: the partition ended, nobody restarted.
    for n in 1..=5 {
        let view = c.mesh(NodeId(n)).membership();
        assert!(
            view.members()
                .all(|m| m.generation == c.mesh(m.id).generation())
        );
    }
    c.shutdown().await;
}

/// Goal: an isolated node sees everyone else dead, and they see it dead.
#[tokio::test(start_paused = true)]
async fn isolated_node_and_the_rest_see_each_other_dead() {
    let mut c = chitchat_cluster(4, ConfigBuilder::default()).await;
    c.eventually(CONVERGE, "converged", |c| c.all_see_alive(4))
        .await;
    c.isolate(NodeId(2));
    c.eventually(CONVERGE, "node 2 alone, others without it", |c| {
        c.mesh(NodeId(2)).membership().alive().count() == 1 && c.all_see_gone(NodeId(2))
    })
    .await;
    c.heal();
    c.eventually(CONVERGE, "healed", |c| c.all_see_alive(4))
        .await;
    c.shutdown().await;
}

/// Goal: a restarted node (new generation, same id and address) replaces
/// its old incarnation: one member per id, the new generation, and a
/// `Restarted` event.
#[tokio::test(start_paused = true)]
async fn restarted_node_replaces_its_old_generation() {
    let mut c = chitchat_cluster(5, ConfigBuilder::default()).await;
    c.eventually(CONVERGE, "converged", |c| c.all_see_alive(5))
        .await;
    let old = c.mesh(NodeId(3)).generation();
    let mut events = c.mesh(NodeId(1)).member_events();
    c.kill(NodeId(3)).await;
    // Restart at once, before anyone declared the old generation dead.
    c.restart(NodeId(3)).await;
    let new = c.mesh(NodeId(3)).generation();
    assert!(new > old);
    c.eventually(CONVERGE, "all see the new generation alive", |c| {
        c.running().iter().all(|n| {
            let view = c.mesh(*n).membership();
            view.len() == 5
                && view.alive().count() == 5
                && view.get(NodeId(3)).is_some_and(|m| m.generation == new)
        })
    })
    .await;
    let mut saw_restart = false;
    while let Ok(event) = events.try_recv() {
        if let MemberEvent::Restarted(m) = &event {
            saw_restart |= m.id == NodeId(3) && m.generation == new;
        }
        assert!(
            !matches!(&event, MemberEvent::Joined(m) if m.id == NodeId(3)),
            "{event:?}"
        );
    }
    assert!(
        saw_restart,
        "node 1 published no Restarted event for node 3"
    );
    c.shutdown().await;
}

/// Goal: a graceful leave is seen as `Left` (not `Died`) by every peer.
#[tokio::test(start_paused = true)]
async fn graceful_leave_is_seen_as_left() {
    let mut c = chitchat_cluster(4, ConfigBuilder::default()).await;
    c.eventually(CONVERGE, "converged", |c| c.all_see_alive(4))
        .await;
    let mut events = c.mesh(NodeId(1)).member_events();
    c.leave(NodeId(4)).await;
    c.eventually(CONVERGE, "all see node 4 left", |c| {
        c.running().iter().all(|n| {
            c.mesh(*n)
                .membership()
                .get(NodeId(4))
                .is_some_and(|m| m.state == MemberState::Left)
        })
    })
    .await;
    let event = events.try_recv().expect("an event");
    assert!(
        matches!(&event, MemberEvent::Left(m) if m.id == NodeId(4)),
        "{event:?}"
    );
    c.shutdown().await;
}

/// Goal: membership still converges and detects a crash under 20% loss
/// and 0-20 ms of jitter (reordering).
#[tokio::test(start_paused = true)]
async fn converges_and_detects_under_loss_and_reordering() {
    let mut c = chitchat_cluster(7, ConfigBuilder::default()).await;
    c.set_faults(Faults {
        drop_rate: 0.2,
        duplicate_rate: 0.0,
        delay_min: Duration::ZERO,
        delay_max: Duration::from_millis(20),
    });
    c.eventually(Duration::from_secs(20), "converged under loss", |c| {
        c.all_see_alive(7)
    })
    .await;
    c.kill(NodeId(6)).await;
    c.eventually(Duration::from_secs(20), "crash seen under loss", |c| {
        c.all_see_gone(NodeId(6))
    })
    .await;
    assert!(c.net().stats().dropped_random > 0, "no loss was injected");
    c.shutdown().await;
}

/// Goal: with digest compression (chitchat wire format V1) membership
/// converges and detects a crash just the same.
#[tokio::test(start_paused = true)]
async fn converges_with_digest_compression() {
    let tuning = ConfigBuilder {
        gossip_compression: Some(true),
        ..ConfigBuilder::default()
    };
    let mut c = chitchat_cluster(6, tuning).await;
    c.eventually(CONVERGE, "converged", |c| c.all_see_alive(6))
        .await;
    c.kill(NodeId(4)).await;
    c.eventually(CONVERGE, "crash seen", |c| c.all_see_gone(NodeId(4)))
        .await;
    c.shutdown().await;
}
