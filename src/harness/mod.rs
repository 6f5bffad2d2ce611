//! Tools for running and measuring real agents (feature `harness`): the
//! agent processes on loopback that the demo, the benchmarks and the
//! multi-process tests start, small JSON calls to an agent's HTTP API,
//! the benchmarks' report helpers, a 3-member etcd beside them, the
//! lock benchmark's workload, the churn benchmark, and the programs behind `meshd demo` and
//! `meshd lock` (the binary parses their flags and calls them). Nothing
//! of the protocols lives here; an embedder never needs it.

pub mod agents;
pub mod bench;
pub mod bench_idempotency;
pub mod bench_locks;
pub mod churn;
pub mod demo;
pub mod etcd;
pub mod http;
pub mod lock_command;
pub mod payments;
pub mod report;
