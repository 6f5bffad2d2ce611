//! Chitchat's transport, on the real network or the simulated one.
//!
//! **Real UDP.** chitchat 0.13 keeps its envelope codec crate-private, yet
//! we must own the bytes on the wire (to count them now, and to seal them
//! with the cluster secret). So the codec is reached through chitchat's own
//! UDP socket, relayed on loopback: the *codec* socket (chitchat's) and a
//! *tap* socket sit on `127.0.0.1` ephemeral ports, and only the *public*
//! socket, bound at the gossip address, talks to peers.
//!
//! - send: chitchat's socket encodes the envelope to the tap; the tap hands
//!   us the exact bytes; the public socket sends them to the peer.
//! - recv: bytes from the public socket are injected into the codec socket,
//!   which yields the decoded envelope. chitchat silently skips datagrams
//!   that do not decode, so when the next datagram arrives while one is
//!   still undecided, a *sentinel* datagram goes in before it: the sentinel
//!   coming out first means the datagram before it was malformed; it is
//!   counted and dropped, and nothing blocks.
//!
//! Datagrams from any other local sender to the codec or tap socket are
//! ignored (the source address is checked).
//!
//! With a cluster secret, the public socket carries only sealed datagrams
//! ([`super::seal`]): bytes from the tap are sealed before they leave, and
//! arriving bytes are opened before they reach the codec. A datagram that
//! fails to open is counted by reason and dropped; chitchat never sees it.
//!
//! **Simulation.** Envelopes travel through chitchat's in-memory
//! `ChannelTransport` (which still encodes and decodes every envelope and
//! reports its size), with the [`SimNet`]'s partitions, loss, delay and
//! reordering applied on the receiving side. Tokio's paused clock advances
//! whenever all tasks wait, which would stretch any real-socket round trip,
//! so the simulation uses no kernel socket at all.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as CodecSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tokio::time::Instant;
use tracing::debug;

use super::seal::{Opener, Rejection, Sealer};
use crate::metrics::Metrics;
use crate::net::{DATAGRAM_BYTES_MAX, Network, SimNet};
use crate::secret::ClusterSecret;

/// The sentinel: a `BadCluster` message in the wire format this node does
/// not speak. Peers answer in the format they were addressed in, so only a
/// peer of another cluster name would ever send one; input that starts with
/// the sentinel's bytes is dropped before decoding, so decoded output equal
/// to the sentinel can only be the sentinel.
fn sentinel(ours: ProtocolVersion) -> ChitchatEnvelope {
    let other = match ours {
        ProtocolVersion::V0 => ProtocolVersion::V1,
        _ => ProtocolVersion::V0,
    };
    ChitchatEnvelope {
        version: other,
        message: ChitchatMessage::BadCluster,
    }
}

/// A gossip socket bound ahead of chitchat's start, so that bind errors
/// (address in use) surface from `Mesh::start` naming the address.
pub(crate) struct GossipTransport {
    socket: Mutex<Option<Box<dyn Socket>>>,
    local_addr: SocketAddr,
}

impl GossipTransport {
    /// Binds the gossip address on `network`. With a `secret`, real
    /// datagrams are sealed; simulated envelopes never are (they are not
    /// bytes), which the simulation does not need to test.
    pub(crate) async fn bind(
        network: &Network,
        addr: SocketAddr,
        format: ProtocolVersion,
        secret: Option<&ClusterSecret>,
        metrics: Arc<Metrics>,
    ) -> io::Result<GossipTransport> {
        let socket: Box<dyn Socket> = match network {
            Network::Udp => Box::new(UdpRelay::bind(addr, format, secret, metrics).await?),
            Network::Sim(net) => Box::new(SimGossipSocket::bind(net, addr, metrics).await?),
        };
        let local_addr = socket
            .local_addr()
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        Ok(GossipTransport {
            socket: Mutex::new(Some(socket)),
            local_addr,
        })
    }

    /// The bound gossip address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

#[async_trait]
impl Transport for GossipTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        self.socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("the gossip socket was already opened")
    }
}

/// What was injected into the codec and has not come out of it yet, in
/// order. The codec reads the tap's datagrams in the order sent and
/// silently skips those that do not decode, so a decoded envelope is the
/// first datagram waiting, and a sentinel coming out means every
/// datagram before it that has not come out was malformed.
enum Injected {
    Datagram { from: SocketAddr, len: usize },
    Sentinel,
}

/// Datagrams injected and undecided, at most: with the sentinel between
/// them, what waits in the codec's socket is under two maximal UDP
/// payloads (2 × 65,507 bytes), which its receive buffer (the kernel's
/// default, 208 KiB) holds whole. Nothing injected is dropped, so every
/// sentinel comes out and the order holds. Beyond, the relay reads the
/// codec only, until the older one is decided.
const UNDECIDED_MAX: usize = 2;

struct UdpRelay {
    public: tokio::net::UdpSocket,
    codec: CodecSocket,
    codec_addr: SocketAddr,
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    sentinel_bytes: Vec<u8>,
    format: ProtocolVersion,
    injected: VecDeque<Injected>,
    buf: Box<[u8]>,
    sealing: Option<Sealing>,
    metrics: Arc<Metrics>,
}

struct Sealing {
    sealer: Sealer,
    opener: Opener,
    out: Vec<u8>,
}

/// Wall-clock milliseconds for seal freshness. A clock before 1970 reads
/// as 0, which makes every datagram stale: loud in the counters, not unsafe.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl UdpRelay {
    async fn bind(
        addr: SocketAddr,
        format: ProtocolVersion,
        secret: Option<&ClusterSecret>,
        metrics: Arc<Metrics>,
    ) -> io::Result<UdpRelay> {
        let public = tokio::net::UdpSocket::bind(addr).await?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut codec = CodecSocket::open(loopback)
            .await
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        let codec_addr = codec
            .local_addr()
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        let tap = tokio::net::UdpSocket::bind(loopback).await?;
        let tap_addr = tap.local_addr()?;
        let mut relay = UdpRelay {
            public,
            codec_addr,
            tap,
            tap_addr,
            sentinel_bytes: Vec::new(),
            format,
            injected: VecDeque::new(),
            buf: vec![0u8; DATAGRAM_BYTES_MAX].into_boxed_slice(),
            sealing: secret.map(|secret| Sealing {
                sealer: Sealer::new(secret),
                opener: Opener::new(secret),
                out: Vec::with_capacity(DATAGRAM_BYTES_MAX),
            }),
            metrics,
            codec: {
                // Encode the sentinel once, through the codec itself.
                codec
                    .send(tap_addr, sentinel(format))
                    .await
                    .map_err(|e| io::Error::other(format!("{e:#}")))?;
                codec
            },
        };
        let len = relay.tap_recv().await?;
        relay.sentinel_bytes = relay.buf[..len].to_vec();
        Ok(relay)
    }

    /// Receives the codec's next encoding on the tap; returns its length
    /// (bytes in `self.buf`).
    async fn tap_recv(&mut self) -> io::Result<usize> {
        loop {
            let (len, from) = self.tap.recv_from(&mut self.buf).await?;
            if from == self.codec_addr {
                return Ok(len);
            }
        }
    }
}

#[async_trait]
impl Socket for UdpRelay {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.public.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let tap_addr = self.tap_addr;
        self.codec.send(tap_addr, envelope).await?;
        let len = self.tap_recv().await?;
        let bytes = match &mut self.sealing {
            None => &self.buf[..len],
            Some(sealing) => {
                let sealed = sealing.sealer.seal(
                    unix_ms(),
                    &self.buf[..len],
                    DATAGRAM_BYTES_MAX,
                    &mut sealing.out,
                );
                if sealed.is_none() {
                    // Only a delta filling chitchat's whole datagram gets
                    // here: the cluster state has outgrown gossip.
                    Metrics::add(&self.metrics.gossip_send_errors, 1);
                    debug!(%to, len, "gossip datagram too large to seal; dropped");
                    return Ok(SendOutcome { num_bytes_sent: 0 });
                }
                &sealing.out[..]
            }
        };
        // Gossip tolerates loss: a failed send is counted, not an error
        // (an error would be logged each round while a peer is down).
        match self.public.send_to(bytes, to).await {
            Ok(n) => {
                Metrics::add(&self.metrics.gossip_datagrams_sent, 1);
                Metrics::add(&self.metrics.gossip_bytes_sent, n as u64);
                Ok(SendOutcome { num_bytes_sent: n })
            }
            Err(err) => {
                Metrics::add(&self.metrics.gossip_send_errors, 1);
                debug!(%err, %to, "gossip send failed");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    /// Cancel-safe: chitchat polls this in a `select!`. Progress lives in
    /// `self.injected`, and every await is on a cancel-safe receive.
    ///
    /// A datagram from a peer is opened and injected into the codec,
    /// whose output is its envelope. A sentinel goes in behind it only
    /// when the next datagram arrives while it is still undecided (the codec
    /// skips what it cannot decode and says nothing), so that every
    /// envelope is told whose it is; a datagram that decodes at once,
    /// as nearly all do, costs no sentinel.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let undecided = self
                .injected
                .iter()
                .filter(|i| matches!(i, Injected::Datagram { .. }))
                .count();
            let (len, from) = if self.injected.is_empty() {
                self.public_recv().await?
            } else if undecided >= UNDECIDED_MAX {
                let out = self.codec.recv().await?;
                if let Some(done) = self.on_codec_output(out) {
                    return Ok(done);
                }
                continue;
            } else {
                // The codec first: what it has decoded is answered before
                // anything new is read.
                tokio::select! {
                    biased;
                    out = self.codec.recv() => {
                        if let Some(done) = self.on_codec_output(out?) {
                            return Ok(done);
                        }
                        continue;
                    }
                    got = Self::public_recv_on(&self.public, &mut self.buf) => got?,
                }
            };
            self.inject(from, len);
        }
    }
}

impl UdpRelay {
    async fn public_recv(&mut self) -> anyhow::Result<(usize, SocketAddr)> {
        Self::public_recv_on(&self.public, &mut self.buf).await
    }

    /// The next datagram from a peer, into `buf`.
    async fn public_recv_on(
        public: &tokio::net::UdpSocket,
        buf: &mut [u8],
    ) -> anyhow::Result<(usize, SocketAddr)> {
        loop {
            match public.recv_from(buf).await {
                Ok(got) => return Ok(got),
                // ICMP errors from earlier sends surface here on Linux;
                // they say nothing about this socket.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(err) => return Err(err).context("gossip socket failed"),
            }
        }
    }

    /// Opens the datagram in `buf` (sealed clusters) and hands it to the
    /// codec, behind a sentinel if another is still undecided. No await:
    /// a cancel cannot split it.
    fn inject(&mut self, from: SocketAddr, len: usize) {
        Metrics::add(&self.metrics.gossip_bytes_received, len as u64);
        let plain = match &mut self.sealing {
            None => 0..len,
            Some(sealing) => match sealing.opener.open(unix_ms(), &mut self.buf[..len]) {
                Ok(plain) => plain,
                Err(rejection) => {
                    let counter = match rejection {
                        Rejection::Malformed => &self.metrics.gossip_datagrams_malformed,
                        Rejection::Unauthenticated => {
                            &self.metrics.gossip_datagrams_unauthenticated
                        }
                        Rejection::Replayed => &self.metrics.gossip_datagrams_replayed,
                        Rejection::Stale => &self.metrics.gossip_datagrams_stale,
                    };
                    Metrics::add(counter, 1);
                    debug!(%from, len, ?rejection, "sealed gossip datagram dropped");
                    return;
                }
            },
        };
        let plain = &self.buf[plain];
        if plain.starts_with(&self.sentinel_bytes) {
            Metrics::add(&self.metrics.gossip_datagrams_malformed, 1);
            debug!(%from, "gossip datagram posing as the codec sentinel dropped");
            return;
        }
        // Loopback sends complete at once (`try_send_to`: no await).
        let undecided = self
            .injected
            .iter()
            .any(|i| matches!(i, Injected::Datagram { .. }));
        if undecided {
            if self
                .tap
                .try_send_to(&self.sentinel_bytes, self.codec_addr)
                .is_err()
            {
                debug!(%from, "gossip datagram dropped: codec relay busy");
                return;
            }
            self.injected.push_back(Injected::Sentinel);
        }
        if self.tap.try_send_to(plain, self.codec_addr).is_ok() {
            self.injected.push_back(Injected::Datagram { from, len });
        } else {
            // Cannot happen with an idle loopback socket; if it does, the
            // datagram is lost like any other UDP datagram.
            debug!(%from, "gossip datagram dropped: codec relay busy");
        }
    }

    /// What the codec decoded: a peer's envelope, told whose it is, or a
    /// sentinel, which settles the datagrams before it as malformed.
    fn on_codec_output(&mut self, out: RecvOutcome) -> Option<RecvOutcome> {
        if out.from_addr != self.tap_addr {
            return None; // a stray local sender
        }
        if out.envelope == sentinel(self.format) {
            while let Some(front) = self.injected.pop_front() {
                match front {
                    Injected::Sentinel => break,
                    Injected::Datagram { from, len } => {
                        Metrics::add(&self.metrics.gossip_datagrams_malformed, 1);
                        debug!(%from, len, "malformed gossip datagram dropped");
                    }
                }
            }
            return None;
        }
        // The first datagram waiting (sentinels ahead of it came out
        // already, unless the kernel dropped them: skipped).
        while let Some(front) = self.injected.pop_front() {
            if let Injected::Datagram { from, len } = front {
                Metrics::add(&self.metrics.gossip_datagrams_received, 1);
                return Some(RecvOutcome {
                    from_addr: from,
                    envelope: out.envelope,
                    num_bytes_received: len,
                });
            }
        }
        None
    }
}

/// A simulated gossip socket: chitchat's in-memory transport for the
/// envelopes, and the [`SimNet`]'s faults applied as they arrive.
struct SimGossipSocket {
    net: SimNet,
    inner: Box<dyn Socket>,
    local: SocketAddr,
    /// Arrived envelopes waiting out their delay, earliest first.
    pending: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    metrics: Arc<Metrics>,
}

struct Pending {
    at: Instant,
    seq: u64,
    outcome: RecvOutcome,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl SimGossipSocket {
    async fn bind(
        net: &SimNet,
        addr: SocketAddr,
        metrics: Arc<Metrics>,
    ) -> io::Result<SimGossipSocket> {
        let inner = net
            .gossip_transport()
            .open(addr)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, format!("{e:#}")))?;
        let local = inner
            .local_addr()
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        Ok(SimGossipSocket {
            net: net.clone(),
            inner,
            local,
            pending: BinaryHeap::new(),
            seq: 0,
            metrics,
        })
    }
}

#[async_trait]
impl Socket for SimGossipSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        Metrics::add(&self.metrics.gossip_datagrams_sent, 1);
        Metrics::add(
            &self.metrics.gossip_bytes_sent,
            outcome.num_bytes_sent as u64,
        );
        Ok(outcome)
    }

    /// Cancel-safe: arrivals are moved into `pending` before any await.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let due = self.pending.peek().map(|Reverse(p)| p.at);
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    if let Some(Reverse(p)) = self.pending.pop() {
                        // Cut while in flight: lost.
                        if !self.net.link_up(p.outcome.from_addr.ip(), self.local.ip()) {
                            continue;
                        }
                        Metrics::add(&self.metrics.gossip_datagrams_received, 1);
                        Metrics::add(&self.metrics.gossip_bytes_received, p.outcome.num_bytes_received as u64);
                        return Ok(p.outcome);
                    }
                }
                arrived = self.inner.recv() => {
                    let outcome = arrived?;
                    if let Some(delay) = self.net.fate(outcome.from_addr.ip(), self.local.ip(), outcome.num_bytes_received) {
                        self.seq += 1;
                        self.pending.push(Reverse(Pending { at: Instant::now() + delay, seq: self.seq, outcome }));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use super::*;

    const LOOPBACK: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

    /// A relay on loopback in the default wire format, its counters, and
    /// the bytes of a valid envelope as chitchat's own codec writes them.
    async fn relay_and_valid_bytes() -> (UdpRelay, Arc<Metrics>, Vec<u8>) {
        let format = crate::membership::wire_format(false);
        let metrics = Arc::new(Metrics::default());
        let relay = UdpRelay::bind(LOOPBACK, format, None, metrics.clone())
            .await
            .unwrap();
        let capture = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        let mut codec = CodecSocket::open(LOOPBACK).await.unwrap();
        let valid = ChitchatEnvelope {
            version: format,
            message: ChitchatMessage::BadCluster,
        };
        codec
            .send(capture.local_addr().unwrap(), valid)
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = capture.recv_from(&mut buf).await.unwrap();
        (relay, metrics, buf[..n].to_vec())
    }

    /// The relay tells each decoded envelope whose it is, and counts what
    /// does not decode, though it sends a sentinel only behind a datagram
    /// still undecided when the next arrives. Real sockets on loopback.
    #[tokio::test]
    async fn the_relay_attributes_every_envelope_and_counts_the_malformed() {
        let (mut relay, metrics, valid) = relay_and_valid_bytes().await;
        let relay_addr = relay.public.local_addr().unwrap();
        let a = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        let b = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        let junk: &[u8] = b"junk";
        // a: junk, valid, junk, junk; b: valid; a: valid. Two envelopes
        // of a's and one of b's come out, each told as its sender's.
        for (from, bytes) in [
            (&a, junk),
            (&a, &valid[..]),
            (&a, junk),
            (&a, junk),
            (&b, &valid[..]),
            (&a, &valid[..]),
        ] {
            from.send_to(bytes, relay_addr).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            let out = tokio::time::timeout(Duration::from_secs(5), relay.recv())
                .await
                .expect("the relay blocked")
                .unwrap();
            assert_eq!(out.num_bytes_received, valid.len());
            got.push(out.from_addr);
        }
        let (a, b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_eq!(got, vec![a, b, a]);
        assert_eq!(metrics.gossip_datagrams_received.load(Relaxed), 3);
        assert_eq!(metrics.gossip_datagrams_malformed.load(Relaxed), 3);
        assert!(relay.injected.is_empty());
    }

    /// A burst of large datagrams waiting on the public socket (its
    /// buffer raised to hold them all) is relayed without overflowing
    /// the codec's socket: every envelope is still told as its sender's
    /// and every malformed one is counted. Reading the public socket
    /// whenever a datagram was undecided put the whole burst into the
    /// codec's socket, whose buffer holds about three; the sentinels lost
    /// there shifted envelopes onto other senders. Needs root (the
    /// buffer is forced past `rmem_max`).
    #[tokio::test]
    async fn a_burst_of_large_datagrams_is_relayed_without_losing_the_order() {
        use std::os::fd::AsRawFd;
        let (mut relay, metrics, mut valid) = relay_and_valid_bytes().await;
        let bytes: libc::c_int = 16 << 20;
        // SAFETY: a valid socket and a pointer to an int of the right size.
        let rc = unsafe {
            libc::setsockopt(
                relay.public.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE needs root");
        let relay_addr = relay.public.local_addr().unwrap();
        // A valid envelope followed by padding still decodes (the codec
        // reads what its message needs); junk of the same size does not.
        valid.resize(60_000, 0);
        let junk = vec![0xffu8; 60_000];
        let senders = [
            tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap(),
            tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap(),
            tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap(),
        ];
        let mut expected = Vec::new();
        let mut malformed = 0;
        for i in 0..40usize {
            let from = &senders[i % 3];
            // The last one valid: a malformed last datagram is settled
            // only when another arrives.
            if i % 4 == 1 && i != 39 {
                from.send_to(&junk, relay_addr).await.unwrap();
                malformed += 1;
            } else {
                from.send_to(&valid, relay_addr).await.unwrap();
                expected.push(from.local_addr().unwrap());
            }
        }
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            let out = tokio::time::timeout(Duration::from_secs(5), relay.recv())
                .await
                .expect("the relay blocked")
                .unwrap();
            got.push(out.from_addr);
        }
        assert_eq!(got, expected);
        assert_eq!(metrics.gossip_datagrams_malformed.load(Relaxed), malformed);
    }
}
