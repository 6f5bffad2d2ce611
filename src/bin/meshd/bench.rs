//! `meshd bench …`: the subcommands and their flags; the workloads are
//! the library's (`coordmesh::harness::bench`, `…::bench_locks`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use coordmesh::harness::bench::{
    FailoverOptions, IdleOptions, MembershipOptions, RpcOptions, failover, idle, membership, rpc,
};
use coordmesh::harness::bench_idempotency::{IdempotencyOptions, idempotency};
use coordmesh::harness::bench_locks::{LocksOptions, locks};
use coordmesh::harness::churn::{ChurnOptions, churn};

/// `meshd bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    /// Simulated membership: convergence, crash detection, bandwidth.
    Membership(MembershipOptions),
    /// Real agents at rest: memory and CPU, beside etcd.
    Idle(IdleOptions),
    /// QUIC RPC with mutual TLS on loopback: latency and throughput.
    Rpc(RpcOptions),
    /// Leader failover after kill -9, real processes, beside etcd.
    Failover(FailoverOptions),
    /// Locks: latency, throughput, handoffs and failover, beside etcd.
    Locks(LocksOptions),
    /// Idempotent operations: replay, first execution, throughput,
    /// anti-entropy and memory, beside etcd.
    Idempotency(IdempotencyOptions),
    /// Real agents under a churn schedule (kills, pauses, leaves, and as
    /// root partitions between network namespaces): the
    /// throughput, failovers and safety of a mixed workload, beside etcd.
    Churn(ChurnOptions),
}

pub(crate) fn run(args: BenchArgs) -> ExitCode {
    let result = match args.which {
        Which::Membership(a) => membership(a),
        Which::Idle(a) => idle(a),
        Which::Rpc(a) => rpc(a),
        Which::Failover(a) => failover(a),
        Which::Locks(a) => std::env::current_exe()
            .map_err(|e| e.to_string())
            .and_then(|bin| locks(&bin, a)),
        Which::Idempotency(a) => std::env::current_exe()
            .map_err(|e| e.to_string())
            .and_then(|bin| idempotency(&bin, a)),
        Which::Churn(a) => std::env::current_exe()
            .map_err(|e| e.to_string())
            .and_then(|bin| churn(&bin, a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshd bench: {err}");
            ExitCode::from(1)
        }
    }
}
