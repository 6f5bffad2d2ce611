//! RPC in simulated clusters (tier 2): the same node code, with calls as
//! datagrams on the simulated network under tokio's paused clock. Each
//! test logs its seed; replay with `COORDMESH_SEED=<seed> cargo test --test sim_rpc`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use coordmesh::NodeId;
use coordmesh::net::Faults;
use coordmesh::rpc::{Ping, Request, Response, RpcError};
use coordmesh::sim::SimCluster;

const CONVERGE: Duration = Duration::from_secs(10);
const CALL: Duration = Duration::from_millis(200);

async fn converged(n: u64) -> SimCluster {
    let c = SimCluster::start(SimCluster::seed_from_env(), n).await;
    c.eventually(CONVERGE, "converged", |c| c.all_see_alive(n as usize))
        .await;
    c
}

/// Goal: every node reaches every other over RPC, and the answer names the
/// node called.
#[tokio::test(start_paused = true)]
async fn every_pair_can_call() {
    let mut c = converged(5).await;
    for from in 1..=5 {
        for to in 1..=5 {
            let pong = c
                .mesh(NodeId(from))
                .ping(NodeId(to), CALL)
                .await
                .unwrap_or_else(|e| panic!("{from} -> {to}: {e} (seed {})", c.seed()));
            assert_eq!(pong.id, NodeId(to));
        }
    }
    c.shutdown().await;
}

/// Goal: a partition makes calls across it time out (never hang, never
/// succeed), calls within a side still work, and healing restores all.
#[tokio::test(start_paused = true)]
async fn partition_times_out_calls_across_it() {
    let mut c = converged(5).await;
    let a = [NodeId(1), NodeId(2), NodeId(3)];
    let b = [NodeId(4), NodeId(5)];
    let rpc_of_4 = c
        .mesh(NodeId(1))
        .membership()
        .get(NodeId(4))
        .unwrap()
        .rpc_addr;
    c.partition(&[&a, &b]);
    let ping = || Request::Ping(Ping { payload: vec![1] });
    let err = c
        .mesh(NodeId(1))
        .rpc()
        .call(rpc_of_4, ping(), CALL)
        .await
        .unwrap_err();
    assert_eq!(err, RpcError::Timeout { after: CALL }, "seed {}", c.seed());
    assert!(c.mesh(NodeId(1)).ping(NodeId(2), CALL).await.is_ok());
    c.heal();
    let answer = c.mesh(NodeId(1)).rpc().call(rpc_of_4, ping(), CALL).await;
    assert!(matches!(answer, Ok(Response::Pong(_))), "{answer:?}");
    c.shutdown().await;
}

/// Goal: under loss, duplication and reordering, calls either answer
/// correctly or time out; duplicated requests run again at the server
/// (which protocols must tolerate) and their extra answers are ignored.
#[tokio::test(start_paused = true)]
async fn lossy_network_gives_answers_or_timeouts_only() {
    let mut c = converged(3).await;
    c.set_faults(Faults {
        drop_rate: 0.2,
        duplicate_rate: 0.3,
        delay_min: Duration::from_micros(100),
        delay_max: Duration::from_millis(20),
    });
    let target = c
        .mesh(NodeId(1))
        .membership()
        .get(NodeId(2))
        .unwrap()
        .rpc_addr;
    let (mut ok, mut timeouts) = (0, 0);
    for i in 0..300u32 {
        let payload = i.to_be_bytes().to_vec();
        let call = Request::Ping(Ping {
            payload: payload.clone(),
        });
        match c.mesh(NodeId(1)).rpc().call(target, call, CALL).await {
            Ok(Response::Pong(pong)) => {
                assert_eq!(pong.payload, payload, "answer matched to its call");
                ok += 1;
            }
            Err(RpcError::Timeout { .. }) => timeouts += 1,
            other => panic!("unexpected {other:?} (seed {})", c.seed()),
        }
    }
    let served = c
        .mesh(NodeId(2))
        .metrics()
        .rpc_requests_served
        .load(Ordering::Relaxed);
    println!(
        "ok {ok}, timeouts {timeouts}, served {served} (seed {})",
        c.seed()
    );
    assert!(ok > 150 && timeouts > 10, "ok {ok} timeouts {timeouts}");
    assert!(
        served > ok,
        "duplicates were served again: {served} vs {ok}"
    );
    c.shutdown().await;
}

/// Goal: a killed node's calls time out, and after a restart it answers
/// with its new generation.
#[tokio::test(start_paused = true)]
async fn killed_node_times_out_then_answers_after_restart() {
    let mut c = converged(3).await;
    let target = c
        .mesh(NodeId(1))
        .membership()
        .get(NodeId(3))
        .unwrap()
        .rpc_addr;
    let before = c.mesh(NodeId(3)).generation();
    c.kill(NodeId(3)).await;
    let ping = || Request::Ping(Ping { payload: vec![] });
    let err = c.mesh(NodeId(1)).rpc().call(target, ping(), CALL).await;
    assert_eq!(err, Err(RpcError::Timeout { after: CALL }));
    c.restart(NodeId(3)).await;
    match c.mesh(NodeId(1)).rpc().call(target, ping(), CALL).await {
        Ok(Response::Pong(pong)) => assert!(pong.generation > before),
        other => panic!("{other:?} (seed {})", c.seed()),
    }
    c.shutdown().await;
}

/// Goal: asking for a node that is not a member fails at once with an
/// error that names it.
#[tokio::test(start_paused = true)]
async fn unknown_peer_is_named() {
    let mut c = converged(2).await;
    let err = c.mesh(NodeId(1)).ping(NodeId(9), CALL).await.unwrap_err();
    assert_eq!(err, RpcError::UnknownPeer { node: NodeId(9) });
    c.shutdown().await;
}
