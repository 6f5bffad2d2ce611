//! Datagram networking, injected: the real UDP stack, or [`SimNet`], an
//! in-process network under virtual time with partitions, loss, delay,
//! duplication and reordering. Gossip and RPC pick their transport from the
//! [`Network`] they are given, so simulated clusters run the same node code
//! as real ones.

mod gossip;
mod sim;

pub(crate) use gossip::GossipBoard;

pub use sim::{Faults, SIM_SOCKET_QUEUE_MAX, SimGossip, SimNet, SimSender, SimSocket, SimStats};

/// Largest UDP payload over IPv4; nothing larger is ever sent.
pub const DATAGRAM_BYTES_MAX: usize = 65_507;

/// Largest message a simulated network carries: a simulated RPC datagram
/// stands for a request or an answer on a QUIC stream, which may be a head
/// frame and chunk frames up to the RPC message bound (64 MiB). Gossip
/// keeps to [`DATAGRAM_BYTES_MAX`] by its own bound.
pub const SIM_MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Where sockets come from.
#[derive(Clone, Debug, Default)]
pub enum Network {
    /// The operating system's UDP.
    #[default]
    Udp,
    /// An in-process simulated network.
    Sim(SimNet),
}
