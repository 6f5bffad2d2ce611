//! Cost of the membership watcher's work per gossip change: building a
//! `MembershipView` from chitchat's state and diffing it against the last
//! one, at several cluster sizes. Plain timing loop (no harness
//! dependency); run with `cargo bench --bench membership_view`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use coordmesh::NodeId;
use coordmesh::membership::{MembershipView, NodeMeta, Observation};

fn observations(n: u64, dead: u64) -> Vec<(String, SocketAddr, bool)> {
    (1..=n)
        .map(|i| {
            let addr = SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 7400));
            (i.to_string(), addr, i != dead)
        })
        .collect()
}

fn build(obs: &[(String, SocketAddr, bool)]) -> MembershipView {
    let meta = NodeMeta {
        rpc_addr: "127.0.0.1:7401".parse().unwrap(),
        http_addr: "127.0.0.1:7402".parse().unwrap(),
        voter: false,
        protocol: 1,
        leaving: false,
    };
    let iter = obs.iter().map(|(id, addr, live)| Observation {
        node_id: id,
        generation: coordmesh::ids::Generation(1),
        gossip_addr: *addr,
        live: *live,
        meta: Some(meta),
    });
    MembershipView::from_observations(NodeId(1), iter).0
}

fn main() {
    println!("{:>6}  {:>14}", "nodes", "build+diff");
    for n in [10u64, 50, 100, 200, 1000] {
        let before = observations(n, 0);
        let after = observations(n, n);
        let old = build(&before);
        let iterations = 200_000 / n;
        let start = Instant::now();
        for _ in 0..iterations {
            let new = build(black_box(&after));
            black_box(new.changes_since(&old));
        }
        let per = start.elapsed() / iterations as u32;
        println!("{n:>6}  {:>12.1}µs", per.as_secs_f64() * 1e6);
    }
}
