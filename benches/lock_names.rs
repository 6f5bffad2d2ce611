//! What a lock table holds over a life of many distinct lock names, each
//! taken once and released (PROTOCOL.md, "Locks" 8): with pruning, the
//! table stays near what a prune period releases; without, it keeps
//! every name. The leader's sans-io table alone, every voter acking at
//! once, 1,000 names a second of virtual time, a tick every 20 ms. Plain
//! timing loop (no harness dependency); run with
//! `cargo bench --bench lock_names` (`-- N` for another number of names).

use std::time::{Duration, Instant};

use coordmesh::NodeId;
use coordmesh::ids::Epoch;
use coordmesh::locks::table::{LockOutput, LockTable, TableConfig, Ticket};
use coordmesh::locks::{LockReply, Replica};

const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

/// Acks every batch the outputs carry, by every voter, until none is
/// left; the grant's token if one was told.
fn settle(table: &mut LockTable, now: Duration, outs: Vec<LockOutput>) -> Option<u64> {
    let mut token = None;
    let mut queue = outs;
    while !queue.is_empty() {
        let mut next = Vec::new();
        for out in queue {
            match out {
                LockOutput::Replicate { batch, .. } => {
                    for v in VOTERS {
                        next.extend(table.handle_ack(now, batch, v));
                    }
                }
                LockOutput::Reply {
                    reply: LockReply::Granted { token: t, .. },
                    ..
                } => token = Some(t.0),
                _ => {}
            }
        }
        next.extend(table.flush());
        queue = next;
    }
    token
}

fn run(names: u64, prune: bool) {
    let every = if prune {
        coordmesh::locks::table::PRUNE_EVERY
    } else {
        Duration::from_secs(u64::MAX / 4)
    };
    let mut table = LockTable::new(TableConfig {
        prune_every: every,
        ..TableConfig::new(&VOTERS, 0.01)
    });
    let mut now = Duration::ZERO;
    let outs = table.take_over(now, Epoch(1), Replica::default());
    settle(&mut table, now, outs);
    let (mut peak, mut ticket) = (0, 0);
    let started = Instant::now();
    for i in 0..names {
        now += Duration::from_millis(1);
        let name = format!("job-{i:08}");
        ticket += 1;
        let outs = table.handle_acquire(now, Ticket(ticket), NodeId(9), &name, 10_000, 0, None);
        let mut outs = outs;
        outs.extend(table.flush());
        let token = settle(&mut table, now, outs).expect("granted");
        ticket += 1;
        let mut outs = table.handle_release(now, Ticket(ticket), &name, coordmesh::Token(token));
        outs.extend(table.flush());
        settle(&mut table, now, outs);
        if i % 20 == 0 {
            let outs = table.handle_tick(now);
            settle(&mut table, now, outs);
        }
        peak = peak.max(table.entries());
    }
    let elapsed = started.elapsed();
    println!(
        "{:>9} names, pruning {:>3}: peak {:>9} entries, {:>9} at the end, {:>9} pruned; {:.2} s ({:.0} names/s of table work)",
        names,
        if prune { "on" } else { "off" },
        peak,
        table.entries(),
        table.pruned_total(),
        elapsed.as_secs_f64(),
        names as f64 / elapsed.as_secs_f64(),
    );
}

fn main() {
    let names = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(1_000_000);
    run(names, true);
    run(names.min(200_000), false);
}
