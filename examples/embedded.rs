//! A daemon embedding a coordmesh node on its own tokio runtime: it joins
//! the cluster, logs membership and leadership changes, and leaves
//! gracefully on Ctrl-C (handing over first if it leads).
//!
//! ```sh
//! cargo run --example embedded -- 1 127.0.0.1:7500
//! cargo run --example embedded -- 2 127.0.0.1:7510 127.0.0.1:7500
//! ```
//! Arguments: node id, gossip address, then seed addresses. Voters are 1-3.

use coordmesh::{ConfigBuilder, MemberEvent, Mesh, NodeId};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The host owns logging: the library only emits tracing events.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .init();
    let mut args = std::env::args().skip(1);
    let id: u64 = args.next().unwrap_or_else(|| "1".into()).parse()?;
    let gossip = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7500".into())
        .parse()?;
    let seeds: Vec<String> = args.collect();
    let config = ConfigBuilder {
        id: Some(NodeId(id)),
        gossip: Some(gossip),
        seed: Some(seeds),
        voters: Some(vec![NodeId(1), NodeId(2), NodeId(3)]),
        ..ConfigBuilder::default()
    }
    .build()?;
    let mesh = Mesh::start(config).await?;
    println!("node {id} gossiping on {gossip}; Ctrl-C to leave");
    let mut events = mesh.member_events();
    let mut leaders = mesh.leader_events();
    loop {
        tokio::select! {
            leader = leaders.recv() => match leader {
                Ok(Some(l)) if l.id == mesh.id() => println!("this node leads (epoch {})", l.epoch),
                Ok(Some(l)) => println!("leader: {} (epoch {})", l.id, l.epoch),
                Ok(None) => println!("no leader known"),
                Err(_) => println!("leader now: {:?}", mesh.leader()),
            },
            event = events.recv() => match event {
                Ok(MemberEvent::Joined(m)) => println!("joined: {} (rpc {})", m.id, m.rpc_addr),
                Ok(MemberEvent::Left(m)) => println!("left: {}", m.id),
                Ok(MemberEvent::Died(m)) => println!("died: {}", m.id),
                Ok(MemberEvent::Restarted(m)) => println!("restarted: {} (generation {})", m.id, m.generation),
                // Fell behind: the current view is the truth.
                Err(_) => println!("members now: {:?}", mesh.members().iter().map(|m| m.id).collect::<Vec<_>>()),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    mesh.shutdown().await;
    println!("left the cluster");
    Ok(())
}
