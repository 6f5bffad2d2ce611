//! An in-process datagram network for simulated clusters.
//!
//! Hosts are IP addresses; a socket is an (IP, port). Faults are decided
//! per datagram from one seeded RNG, so a failing run can be told apart
//! from another by its seed. Delivery uses tokio timers, so under a paused
//! clock (`tokio::time::pause`) a delay costs no real time.
//!
//! Partitions are by host: [`SimNet::partition`] puts hosts into groups and
//! only hosts of one group talk; [`SimNet::block`] cuts one direction of one
//! link (asymmetric faults); [`SimNet::heal`] undoes both.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

use super::GossipBoard;

/// Datagrams queued at one simulated socket before it drops more, as a
/// kernel receive buffer would.
pub const SIM_SOCKET_QUEUE_MAX: usize = 4096;

/// Random faults applied to every datagram that crosses a link.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Probability a datagram is lost.
    pub drop_rate: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate_rate: f64,
    /// Smallest one-way delay.
    pub delay_min: Duration,
    /// Largest one-way delay; delays are uniform in between, so datagrams
    /// are reordered whenever the range is wider than their spacing.
    pub delay_max: Duration,
}

impl Default for Faults {
    /// A clean LAN: no loss, 0.1–0.5 ms one way.
    fn default() -> Self {
        Faults {
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_micros(500),
        }
    }
}

/// Counters of what the network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Bytes handed to the network.
    pub bytes_sent: u64,
    /// Datagrams put into a receiver's queue (duplicates included).
    pub delivered: u64,
    /// Lost to random loss.
    pub dropped_random: u64,
    /// Lost to a partition or a blocked link.
    pub dropped_partition: u64,
    /// Sent to an address where nothing listens.
    pub dropped_unbound: u64,
    /// Lost to a full receive queue.
    pub dropped_overflow: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

/// How the nodes of a simulated network gossip their membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimGossip {
    /// A gossip model (`membership::model`) whose every choice comes from
    /// the network's seed, so a seed replays a run exactly.
    #[default]
    Model,
    /// chitchat itself, over in-memory envelopes: its own rules and
    /// bytes, but its gossip peers come from an RNG no seed reaches.
    Chitchat,
}

/// The simulated network. Cheap to clone; all clones are one network.
#[derive(Clone)]
pub struct SimNet {
    inner: Arc<Mutex<Inner>>,
    /// Gossip envelopes travel in memory (see `membership::transport`);
    /// faults are applied through [`SimNet::fate`].
    gossip: chitchat::transport::ChannelTransport,
    /// How nodes gossip on this network.
    gossip_mode: SimGossip,
    /// The modelled gossip state of every node ([`SimGossip::Model`]).
    board: Arc<Mutex<GossipBoard>>,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet").finish_non_exhaustive()
    }
}

type Datagram = (SocketAddr, Vec<u8>);

struct Inner {
    sockets: HashMap<SocketAddr, mpsc::Sender<Datagram>>,
    rng: StdRng,
    faults: Faults,
    /// Host → group; when non-empty, hosts in different groups (or absent
    /// from it) cannot talk.
    groups: HashMap<IpAddr, usize>,
    /// One-way cuts (from, to).
    blocked: HashSet<(IpAddr, IpAddr)>,
    /// One-way cuts of one kind of request only (from, to, kind): the
    /// RPC layer names each request's kind (see `rpc::sim`).
    dropped_kinds: HashSet<(IpAddr, IpAddr, &'static str)>,
    stats: SimStats,
    /// Bindings made so far (see [`SimSocket::binding`]).
    bindings: u64,
}

impl SimNet {
    /// A new network whose random faults follow `seed`; its nodes gossip
    /// by the replayable model ([`SimGossip::Model`]).
    pub fn new(seed: u64) -> SimNet {
        SimNet::with_gossip(seed, SimGossip::Model)
    }

    /// A new network whose random faults follow `seed`, whose nodes
    /// gossip as `gossip` says.
    pub fn with_gossip(seed: u64, gossip: SimGossip) -> SimNet {
        SimNet {
            inner: Arc::new(Mutex::new(Inner {
                sockets: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
                faults: Faults::default(),
                groups: HashMap::new(),
                blocked: HashSet::new(),
                dropped_kinds: HashSet::new(),
                stats: SimStats::default(),
                bindings: 0,
            })),
            gossip: chitchat::transport::ChannelTransport::with_mtu(super::DATAGRAM_BYTES_MAX),
            gossip_mode: gossip,
            board: Arc::new(Mutex::new(GossipBoard::default())),
        }
    }

    /// How nodes gossip on this network.
    pub fn gossip(&self) -> SimGossip {
        self.gossip_mode
    }

    /// The modelled gossip state ([`SimGossip::Model`]).
    pub(crate) fn board(&self) -> MutexGuard<'_, GossipBoard> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The in-memory transport that carries gossip envelopes.
    pub fn gossip_transport(&self) -> &chitchat::transport::ChannelTransport {
        &self.gossip
    }

    /// True when `from` can reach `to` now.
    pub fn link_up(&self, from: IpAddr, to: IpAddr) -> bool {
        self.lock().link_up(from, to)
    }

    /// Decides the fate of one message of `len` bytes from `from` to `to`:
    /// `None` if it is lost, else its delay. Counted in [`SimStats`].
    /// (Messages decided here are not duplicated: gossip envelopes cannot
    /// be copied, and scuttlebutt is idempotent anyway.)
    pub fn fate(&self, from: IpAddr, to: IpAddr, len: usize) -> Option<Duration> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.stats.sent += 1;
        inner.stats.bytes_sent += len as u64;
        if !inner.link_up(from, to) {
            inner.stats.dropped_partition += 1;
            return None;
        }
        let faults = inner.faults.clone();
        if faults.drop_rate > 0.0 && inner.rng.random_bool(faults.drop_rate.min(1.0)) {
            inner.stats.dropped_random += 1;
            return None;
        }
        inner.stats.delivered += 1;
        let delay = inner.delay(&faults);
        tracing::trace!(%from, %to, len, ?delay, "message");
        Some(delay)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock already failed the test; the
        // state itself stays consistent, so carry on with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `addr`; port 0 picks a free port on that host.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<SimSocket> {
        let mut inner = self.lock();
        let addr = free_addr(addr, |a| inner.sockets.contains_key(a))?;
        let (tx, rx) = mpsc::channel(SIM_SOCKET_QUEUE_MAX);
        inner.sockets.insert(addr, tx.clone());
        inner.bindings += 1;
        Ok(SimSocket {
            net: self.clone(),
            addr,
            binding: inner.bindings,
            own: tx,
            rx,
        })
    }

    /// Replaces the random faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Splits hosts into groups that cannot reach each other. Hosts not
    /// named are cut off from everyone.
    pub fn partition(&self, groups: &[Vec<IpAddr>]) {
        let mut inner = self.lock();
        inner.groups.clear();
        for (i, group) in groups.iter().enumerate() {
            for ip in group {
                inner.groups.insert(*ip, i);
            }
        }
    }

    /// Cuts datagrams from `from` to `to` (one direction only).
    pub fn block(&self, from: IpAddr, to: IpAddr) {
        self.lock().blocked.insert((from, to));
    }

    /// Restores the direction `from` → `to` cut by [`SimNet::block`].
    pub fn unblock(&self, from: IpAddr, to: IpAddr) {
        self.lock().blocked.remove(&(from, to));
    }

    /// Loses every request of `kind` (as the RPC layer names it, e.g.
    /// `"lock-replicate"`) from `from` to `to`, and nothing else: faults
    /// a lossy link would cause only by chance, placed by hand.
    pub fn drop_requests(&self, from: IpAddr, to: IpAddr, kind: &'static str) {
        self.lock().dropped_kinds.insert((from, to, kind));
    }

    /// Undoes [`SimNet::drop_requests`].
    pub fn keep_requests(&self, from: IpAddr, to: IpAddr, kind: &'static str) {
        self.lock().dropped_kinds.remove(&(from, to, kind));
    }

    /// True if a request of `kind` from `from` to `to` is to be lost.
    pub fn drops_request(&self, from: IpAddr, to: IpAddr, kind: &'static str) -> bool {
        self.lock().dropped_kinds.contains(&(from, to, kind))
    }

    /// Removes every partition, blocked link and dropped kind.
    pub fn heal(&self) {
        let mut inner = self.lock();
        inner.groups.clear();
        inner.blocked.clear();
        inner.dropped_kinds.clear();
    }

    /// What the network has done so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, buf: &[u8]) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.stats.sent += 1;
        inner.stats.bytes_sent += buf.len() as u64;
        if !inner.link_up(from.ip(), to.ip()) {
            inner.stats.dropped_partition += 1;
            return;
        }
        let Some(tx) = inner.sockets.get(&to).cloned() else {
            inner.stats.dropped_unbound += 1;
            return;
        };
        let faults = inner.faults.clone();
        if faults.drop_rate > 0.0 && inner.rng.random_bool(faults.drop_rate.min(1.0)) {
            inner.stats.dropped_random += 1;
            return;
        }
        let copies = if faults.duplicate_rate > 0.0
            && inner.rng.random_bool(faults.duplicate_rate.min(1.0))
        {
            inner.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = inner.delay(&faults);
            tracing::trace!(%from, %to, len = buf.len(), ?delay, "datagram");
            let datagram = (from, buf.to_vec());
            if delay.is_zero() {
                inner.deliver(&tx, datagram);
            } else {
                let net = self.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    // The partition is checked again on arrival: a cut made
                    // while the datagram was in flight loses it.
                    let mut inner = net.lock();
                    if inner.link_up(from.ip(), to.ip()) {
                        inner.deliver(&tx, datagram);
                    } else {
                        inner.stats.dropped_partition += 1;
                    }
                });
            }
        }
    }

    fn unbind(&self, addr: SocketAddr, own: &mpsc::Sender<Datagram>) {
        let mut inner = self.lock();
        if inner
            .sockets
            .get(&addr)
            .is_some_and(|tx| tx.same_channel(own))
        {
            inner.sockets.remove(&addr);
        }
    }
}

/// `addr` if it is free, or with port 0 the first free port of its host
/// from 49152 up; `AddrInUse` otherwise.
pub(super) fn free_addr(
    mut addr: SocketAddr,
    in_use: impl Fn(&SocketAddr) -> bool,
) -> io::Result<SocketAddr> {
    if addr.port() == 0 {
        let port = (49152..=u16::MAX)
            .find(|p| !in_use(&SocketAddr::new(addr.ip(), *p)))
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port"))?;
        addr.set_port(port);
    }
    if in_use(&addr) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr} is in use"),
        ));
    }
    Ok(addr)
}

impl Inner {
    fn delay(&mut self, faults: &Faults) -> Duration {
        if faults.delay_max > faults.delay_min {
            self.rng.random_range(faults.delay_min..=faults.delay_max)
        } else {
            faults.delay_min
        }
    }

    fn link_up(&self, from: IpAddr, to: IpAddr) -> bool {
        if from == to {
            return true;
        }
        if self.blocked.contains(&(from, to)) {
            return false;
        }
        if self.groups.is_empty() {
            return true;
        }
        match (self.groups.get(&from), self.groups.get(&to)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    fn deliver(&mut self, tx: &mpsc::Sender<Datagram>, datagram: Datagram) {
        match tx.try_send(datagram) {
            Ok(()) => self.stats.delivered += 1,
            // Closed means the socket went away while the datagram was in
            // flight: the same as sending to an unbound port.
            Err(mpsc::error::TrySendError::Closed(_)) => self.stats.dropped_unbound += 1,
            Err(mpsc::error::TrySendError::Full(_)) => self.stats.dropped_overflow += 1,
        }
    }
}

/// A socket on a [`SimNet`]. Dropping it frees its address, as closing a
/// UDP socket does (a killed node's datagrams in flight are then lost).
pub struct SimSocket {
    net: SimNet,
    addr: SocketAddr,
    binding: u64,
    own: mpsc::Sender<Datagram>,
    rx: mpsc::Receiver<Datagram>,
}

impl std::fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSocket")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimSocket {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Which binding of the network this socket is: unique for the life
    /// of the network, so a socket bound again to a freed address (a
    /// restarted node) is told apart from its predecessor.
    pub fn binding(&self) -> u64 {
        self.binding
    }

    /// Hands one datagram to the network.
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sender().send_to(buf, to)
    }

    /// A handle that sends from this socket's address, for tasks that do
    /// not own the socket.
    pub fn sender(&self) -> SimSender {
        SimSender {
            net: self.net.clone(),
            addr: self.addr,
        }
    }

    /// Waits for the next datagram, and takes it whole.
    pub async fn recv(&mut self) -> io::Result<(Vec<u8>, SocketAddr)> {
        let (from, data) = self
            .rx
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "socket closed"))?;
        Ok((data, from))
    }

    /// Waits for the next datagram.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // The socket holds a sender to its own queue, so the channel never
        // closes while the socket exists: `None` cannot happen, but map it
        // to an error rather than assume.
        let (from, data) = self
            .rx
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "socket closed"))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }
}

/// Sends datagrams from a bound [`SimSocket`]'s address.
#[derive(Clone, Debug)]
pub struct SimSender {
    net: SimNet,
    addr: SocketAddr,
}

impl SimSender {
    /// The network it sends on.
    pub fn net(&self) -> &SimNet {
        &self.net
    }

    /// Hands one datagram to the network.
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        if buf.len() > super::SIM_MESSAGE_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram too large",
            ));
        }
        self.net.send(self.addr, to, buf);
        Ok(buf.len())
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        self.net.unbind(self.addr, &self.own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 1, 0, host], port))
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_between_bound_sockets() {
        let net = SimNet::new(1);
        let a = net.bind(addr(1, 1)).unwrap();
        let mut b = net.bind(addr(2, 1)).unwrap();
        a.send_to(b"hi", addr(2, 1)).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"hi"[..], addr(1, 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn binding_a_bound_address_is_addr_in_use() {
        let net = SimNet::new(1);
        let _a = net.bind(addr(1, 1)).unwrap();
        let err = net.bind(addr(1, 1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_socket_frees_its_address() {
        let net = SimNet::new(1);
        drop(net.bind(addr(1, 1)).unwrap());
        net.bind(addr(1, 1)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn partition_cuts_across_groups_only() {
        let net = SimNet::new(1);
        let a = net.bind(addr(1, 1)).unwrap();
        let mut b = net.bind(addr(2, 1)).unwrap();
        let mut c = net.bind(addr(3, 1)).unwrap();
        net.partition(&[
            vec![addr(1, 0).ip(), addr(2, 0).ip()],
            vec![addr(3, 0).ip()],
        ]);
        a.send_to(b"x", addr(2, 1)).unwrap();
        a.send_to(b"y", addr(3, 1)).unwrap();
        let mut buf = [0u8; 4];
        assert!(b.recv_from(&mut buf).await.is_ok());
        let waited = tokio::time::timeout(Duration::from_secs(1), c.recv_from(&mut buf)).await;
        assert!(waited.is_err(), "a partitioned host received a datagram");
        assert_eq!(net.stats().dropped_partition, 1);
        net.heal();
        a.send_to(b"z", addr(3, 1)).unwrap();
        assert!(c.recv_from(&mut buf).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_fault_decisions() {
        async fn run(seed: u64) -> SimStats {
            let net = SimNet::new(seed);
            net.set_faults(Faults {
                drop_rate: 0.3,
                duplicate_rate: 0.2,
                ..Faults::default()
            });
            let a = net.bind(addr(1, 1)).unwrap();
            let _b = net.bind(addr(2, 1)).unwrap();
            for _ in 0..1000 {
                a.send_to(b"p", addr(2, 1)).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            net.stats()
        }
        let first = run(7).await;
        assert_eq!(first, run(7).await);
        assert!(
            first.dropped_random > 200 && first.dropped_random < 400,
            "{first:?}"
        );
        assert!(first.duplicated > 100, "{first:?}");
    }
}
