//! Datagram networking, injected: the real UDP stack, or [`SimNet`], an
//! in-process network under virtual time with partitions, loss, delay,
//! duplication and reordering. Everything above this module (gossip today,
//! QUIC RPC next) sends bytes through a [`DatagramSocket`] and cannot tell
//! which one it has, so simulated clusters run the same code as real ones.

mod sim;

use std::io;
use std::net::SocketAddr;

pub use sim::{Faults, SIM_SOCKET_QUEUE_MAX, SimNet, SimSender, SimSocket, SimStats};

/// Largest UDP payload over IPv4; nothing larger is ever sent.
pub const DATAGRAM_BYTES_MAX: usize = 65_507;

/// Where sockets come from.
#[derive(Clone, Debug, Default)]
pub enum Network {
    /// The operating system's UDP.
    #[default]
    Udp,
    /// An in-process simulated network.
    Sim(SimNet),
}

impl Network {
    /// Binds a datagram socket. `AddrInUse` is passed through unchanged so
    /// callers can name the address.
    pub async fn bind(&self, addr: SocketAddr) -> io::Result<DatagramSocket> {
        match self {
            Network::Udp => Ok(DatagramSocket::Udp(
                tokio::net::UdpSocket::bind(addr).await?,
            )),
            Network::Sim(net) => Ok(DatagramSocket::Sim(net.bind(addr)?)),
        }
    }
}

/// A bound datagram socket of either kind.
#[derive(Debug)]
pub enum DatagramSocket {
    /// A real UDP socket.
    Udp(tokio::net::UdpSocket),
    /// A simulated socket.
    Sim(SimSocket),
}

impl DatagramSocket {
    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            DatagramSocket::Udp(s) => s.local_addr(),
            DatagramSocket::Sim(s) => Ok(s.local_addr()),
        }
    }

    /// Sends one datagram. Like UDP, success means "handed to the network",
    /// not "delivered".
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self {
            DatagramSocket::Udp(s) => s.send_to(buf, to).await,
            DatagramSocket::Sim(s) => s.send_to(buf, to),
        }
    }

    /// Receives one datagram into `buf`; a longer datagram is truncated,
    /// as with UDP.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            DatagramSocket::Udp(s) => s.recv_from(buf).await,
            DatagramSocket::Sim(s) => s.recv_from(buf).await,
        }
    }
}
