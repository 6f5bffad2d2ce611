//! Tools for running and measuring real agents (feature `harness`): the
//! agent processes on loopback that the demo, the benchmarks and the
//! multi-process tests start, small JSON calls to an agent's HTTP API,
//! and the benchmarks' report helpers. Nothing of the protocols lives
//! here; an embedder never needs it.

pub mod agents;
pub mod http;
pub mod report;
