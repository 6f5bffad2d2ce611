//! What a new leader's driver does, on one thread, when it takes over a
//! table of N held locks (K2): merge the promised copies, adopt every
//! grant into its table, keep the term's first batch in its copies, and
//! encode that batch for each of the other two voters. Each step is what
//! `node::locks` runs between two polls of the agent's single-threaded
//! runtime, so the sum is how long the new leader hears nothing and
//! sends nothing (no heartbeat, no gossip) at the start of its term.
//! Plain timing loop; `cargo bench --bench takeover` (`-- N` for another
//! number of locks; 100,000 by default).

use std::time::{Duration, Instant};

use coordmesh::NodeId;
use coordmesh::ids::{BatchId, Epoch, Token};
use coordmesh::locks::table::{LockOutput, LockTable, TableConfig};
use coordmesh::locks::{Entry, EntryState, Name, Replica};
use coordmesh::replication::{Copies, Floor};
use coordmesh::rpc::codec::encode_chunked;
use coordmesh::rpc::message::{Request, RequestEnvelope, VoterRequest};

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn held(i: u64, epoch: u64) -> Entry {
    Entry {
        name: Name::lock(format!("held-{i:07}")),
        token: Token((epoch << 32) + i + 1),
        state: EntryState::held(3_600_000, NodeId(1), Some(format!("hold-{i}")), epoch << 32),
        claim: None,
        written: Epoch(epoch),
    }
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let table: Vec<Entry> = (0..n).map(|i| held(i, 1)).collect();
    let mut own = Replica::default();
    own.merge_owned(table.iter().cloned());
    let mut copies = Copies::new(own, Floor::default());
    let epoch = Epoch(2);
    copies.start_candidacy(epoch);
    let mut steps: Vec<(&str, Duration)> = Vec::new();
    // Two promises, as decoded (the candidate's own copy is merged at the
    // takeover).
    let promises = [table.clone(), table];
    let start = Instant::now();
    for promise in promises {
        copies.on_promise(epoch, promise);
    }
    steps.push(("merge two promised copies", start.elapsed()));
    let t = Instant::now();
    let merged = copies.takeover(epoch).expect("a candidacy");
    steps.push(("take the merged copy", t.elapsed()));
    let t = Instant::now();
    let mut locks = LockTable::new(TableConfig::new(&VOTERS, 0.01));
    let outs = locks.take_over(Duration::ZERO, epoch, merged);
    steps.push(("adopt into the table", t.elapsed()));
    let t = Instant::now();
    let mut batch = None;
    for out in outs {
        if let LockOutput::Replicate { batch: id, entries } = out {
            copies.issued(epoch, &entries, true);
            batch = Some((id, entries));
        }
    }
    let (id, entries) = batch.expect("the term's first batch");
    steps.push(("keep the batch in the copies", t.elapsed()));
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..2 {
        let frames = encode_chunked(RequestEnvelope {
            from: NodeId(1),
            request: Request::Voter(VoterRequest::Replicate {
                epoch,
                voters: 0,
                batch: id,
                locks: entries.clone(),
            }),
        })
        .expect("encodes");
        bytes = frames.len();
    }
    steps.push(("encode the batch for two voters", t.elapsed()));
    let total = start.elapsed();
    println!(
        "takeover of {n} held locks (first batch {:.1} MB, {} entries, batch {:?}):",
        bytes as f64 / 1e6,
        entries.len(),
        BatchId(id.0)
    );
    for (step, d) in steps {
        println!("  {step:<34} {:>8.1} ms", d.as_secs_f64() * 1e3);
    }
    println!("  {:<34} {:>8.1} ms", "total", total.as_secs_f64() * 1e3);
}
