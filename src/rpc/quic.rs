//! RPC over QUIC with quinn.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::debug;

use serde::de::DeserializeOwned;

use super::codec::{self, Chunked, FrameError, Head, Joiner, LENGTH_BYTES};
use super::message::{MessageEnvelope, Rejection, RequestEnvelope, ResponseEnvelope};
use super::{
    CONNECTIONS_MAX, DIAL_TIMEOUT, IDLE_TIMEOUT, INFLIGHT_PER_PEER_MAX, KEEP_ALIVE_INTERVAL,
    MESSAGE_SEND_TIMEOUT, MESSAGES_PER_PEER_MAX, Message, PEERS_MAX, REQUEST_READ_TIMEOUT, Request,
    Response, RpcError, SILENCE_MAX, STRIKES_MAX, Service, count, tls,
};
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::secret::ClusterSecret;

/// Application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_STRIKES: u32 = 1;
const CLOSE_SILENT: u32 = 2;
/// Stream stop code when a request is refused unread (too large).
const STOP_REFUSED: u32 = 1;
/// Stream reset code when a caller gives up before its request was sent.
const STOP_CANCELLED: u32 = 2;

pub(super) struct QuicRpc {
    endpoint: Endpoint,
    id: NodeId,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    metrics: Arc<Metrics>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// One peer we call: its cached connection and its in-flight bound.
struct Peer {
    conn: Mutex<Option<Connection>>,
    /// Held while dialing, so concurrent callers share one handshake.
    dialing: tokio::sync::Mutex<()>,
    calls: Semaphore,
    messages: Semaphore,
    /// Since when calls on the cached connection have gone unanswered with
    /// nothing heard from the peer (see [`SILENCE_MAX`]).
    silence: Mutex<Option<Silence>>,
}

/// Calls unanswered on one connection, and nothing heard from its peer.
struct Silence {
    /// The connection (its `stable_id`).
    conn: usize,
    /// Datagrams received on it as of the last unanswered call; any
    /// datagram since ends the silence.
    heard: u64,
    /// When the first unanswered call's request was written.
    since: Instant,
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(INFLIGHT_PER_PEER_MAX as u32));
    t.max_concurrent_uni_streams(VarInt::from_u32(MESSAGES_PER_PEER_MAX as u32));
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    // Invariant: seconds are far below QUIC's idle timeout limit (2^62 ms).
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout in range"),
    ));
    // A LAN, not the internet: the first retransmission of a lost
    // handshake packet should come in milliseconds, not a third of a second.
    t.initial_rtt(Duration::from_millis(10));
    t
}

/// This node's QUIC endpoint settings that must outlive its process: the
/// key of its stateless resets is HKDF of the secret with the label
/// `rpc reset` and the node id. A restart keeps it, so the new process
/// resets the connections its predecessor left the first time a peer sends
/// on one, and the peer dials afresh at once instead of calling into a
/// connection nobody serves. Connection ids are random and not signed (a
/// signing key would die with the process, and the new one would ignore
/// its predecessor's ids rather than reset them). Another node's key
/// differs, so no node can reset connections that are not its own; an
/// open cluster's keys are public, like everything else about it.
fn endpoint_config(secret: &ClusterSecret, id: NodeId) -> quinn::EndpointConfig {
    if id == NodeId::REMOTE_CLIENT {
        // Callers only, never restarted at an address peers call, and
        // many processes share this id: a key of this process's own, so
        // one client's resets cannot be learned from another.
        return quinn::EndpointConfig::default();
    }
    let mut label = b"rpc reset ".to_vec();
    label.extend_from_slice(&id.0.to_be_bytes());
    let mut key = [0u8; 32];
    secret.derive(&label, &mut key);
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &key,
    )));
    config.cid_generator(|| Box::new(RandomCids));
    config
}

/// Random 8-byte connection ids, each valid as far as this endpoint can
/// tell, so one it does not know is answered with a stateless reset.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut bytes = [0u8; 8];
        rand::fill(&mut bytes);
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

impl QuicRpc {
    pub(super) fn bind(
        addr: SocketAddr,
        id: NodeId,
        secret: &ClusterSecret,
        service: Arc<dyn Service>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<QuicRpc> {
        let tls = tls::configs(secret, Arc::new(transport_config()))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("RPC needs a tokio runtime"))?;
        let mut endpoint = Endpoint::new(
            endpoint_config(secret, id),
            Some(tls.server),
            std::net::UdpSocket::bind(addr)?,
            runtime,
        )?;
        endpoint.set_default_client_config(tls.client);
        let accept = tokio::spawn(accept_loop(endpoint.clone(), service, metrics.clone()));
        Ok(QuicRpc {
            endpoint,
            id,
            peers: Mutex::new(HashMap::new()),
            metrics,
            accept: Mutex::new(Some(accept)),
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        // Invariant: a bound endpoint has an address; fall back to the
        // unspecified address rather than panic if the OS says otherwise.
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub(super) async fn call(
        &self,
        to: SocketAddr,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let frame = codec::encode_chunked(RequestEnvelope {
            from: self.id,
            request,
        })
        .map_err(RpcError::from_frame)?;
        // The connection the request went out on, what had been heard on
        // it before, and when it was written whole: a call waiting for a
        // stream or for flow control has sent nothing the peer must
        // acknowledge, so its silence says nothing.
        let mut sent_on: Option<(Arc<Peer>, Connection, u64, Instant)> = None;
        let exchange = async {
            let peer = self.peer(to)?;
            let _slot = peer.calls.acquire().await.map_err(|_| RpcError::Closed)?;
            let conn = self.connection(&peer, to).await?;
            let (send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(to, e))?;
            let heard = conn.stats().udp_rx.datagrams;
            let mut send = CancelOnDrop(Some(send));
            Metrics::add(&self.metrics.rpc_bytes_sent, frame.len() as u64);
            send.stream()
                .write_all(&frame)
                .await
                .map_err(|e| unreachable(to, e))?;
            send.finish();
            sent_on = Some((peer.clone(), conn.clone(), heard, Instant::now()));
            let response: ResponseEnvelope =
                read_message(&mut recv).await.map_err(|e| e.into_rpc(to))?;
            response.map_err(RpcError::from_rejection)
        };
        let result = tokio::time::timeout(timeout, exchange).await;
        if let Some((peer, conn, heard, at)) = sent_on {
            // Only a timeout leaves the call unanswered: any other end
            // came from the peer or from the connection's own end.
            if peer.note_call(&conn, heard, at, result.is_ok()) {
                count(&self.metrics.rpc_connections_silent);
                debug!(%to, "closing RPC connection: calls unanswered, peer silent");
            }
        }
        match result {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout { after: timeout }),
        }
    }

    pub(super) async fn send(&self, to: SocketAddr, message: Message) -> Result<(), RpcError> {
        let frame = codec::encode(&MessageEnvelope {
            from: self.id,
            message,
        })
        .map_err(RpcError::from_frame)?;
        let deliver = async {
            let peer = self.peer(to)?;
            let _slot = peer
                .messages
                .acquire()
                .await
                .map_err(|_| RpcError::Closed)?;
            let conn = self.connection(&peer, to).await?;
            let mut send = conn.open_uni().await.map_err(|e| connection_error(to, e))?;
            Metrics::add(&self.metrics.rpc_bytes_sent, frame.len() as u64);
            send.write_all(&frame)
                .await
                .map_err(|e| unreachable(to, e))?;
            let _ = send.finish();
            Ok(())
        };
        count(&self.metrics.rpc_messages_sent);
        match tokio::time::timeout(MESSAGE_SEND_TIMEOUT, deliver).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout {
                after: MESSAGE_SEND_TIMEOUT,
            }),
        }
    }

    pub(super) async fn close(&self) {
        if let Some(accept) = lock(&self.accept).take() {
            accept.abort();
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        lock(&self.peers).clear();
        // Give peers a moment to hear the close, so they do not wait out
        // the idle timeout; never hang on it.
        let _ = tokio::time::timeout(Duration::from_millis(100), self.endpoint.wait_idle()).await;
    }

    fn peer(&self, to: SocketAddr) -> Result<Arc<Peer>, RpcError> {
        let mut peers = lock(&self.peers);
        if let Some(peer) = peers.get(&to) {
            return Ok(peer.clone());
        }
        if peers.len() >= PEERS_MAX {
            peers.retain(|_, p| Arc::strong_count(p) > 1 || p.live().is_some());
            if peers.len() >= PEERS_MAX {
                return Err(RpcError::Unreachable {
                    addr: to,
                    reason: format!("more than {PEERS_MAX} peers in use"),
                });
            }
        }
        let peer = Arc::new(Peer {
            conn: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            calls: Semaphore::new(INFLIGHT_PER_PEER_MAX),
            messages: Semaphore::new(MESSAGES_PER_PEER_MAX),
            silence: Mutex::new(None),
        });
        peers.insert(to, peer.clone());
        Ok(peer)
    }

    /// The peer's live connection, dialing if there is none.
    async fn connection(&self, peer: &Peer, to: SocketAddr) -> Result<Connection, RpcError> {
        if let Some(conn) = peer.live() {
            return Ok(conn);
        }
        let _dialing = peer.dialing.lock().await;
        if let Some(conn) = peer.live() {
            return Ok(conn); // another caller dialed meanwhile
        }
        let connecting = self
            .endpoint
            .connect(to, tls::SERVER_NAME)
            .map_err(|e| match e {
                quinn::ConnectError::EndpointStopping => RpcError::Closed,
                other => unreachable(to, other),
            })?;
        count(&self.metrics.rpc_connections_dialed);
        // A handshake to a dead address would otherwise wait out the idle
        // timeout, and a peer back at it would wait for the next resend.
        let conn = match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                count(&self.metrics.rpc_handshake_failures);
                return Err(connection_error(to, e));
            }
            Err(_) => {
                count(&self.metrics.rpc_handshake_failures);
                return Err(unreachable(
                    to,
                    format!("no handshake within {} ms", DIAL_TIMEOUT.as_millis()),
                ));
            }
        };
        *lock(&peer.conn) = Some(conn.clone());
        Ok(conn)
    }
}

impl Peer {
    fn live(&self) -> Option<Connection> {
        lock(&self.conn)
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Notes how a call whose request was written whole on `conn` at `at`
    /// ended (`ended`: not by its timeout), `heard` being the datagrams
    /// received on it before the write. A call that went unanswered with
    /// nothing heard since continues a silence, or starts one at `at`;
    /// once a silence lasts [`SILENCE_MAX`], the connection is closed and
    /// forgotten (true), so the next call dials afresh. An answer, or any
    /// datagram heard, ends the silence.
    ///
    /// QUIC alone would keep a dead peer's connection until the idle
    /// timeout, and after a partition its resends back off for seconds; a
    /// peer restarted at the same address resets it at once (the reset key
    /// is the node's own, [`endpoint_config`]).
    fn note_call(&self, conn: &Connection, heard: u64, at: Instant, ended: bool) -> bool {
        let mut silence = lock(&self.silence);
        let now_heard = conn.stats().udp_rx.datagrams;
        if ended || now_heard != heard {
            *silence = None;
            return false;
        }
        let id = conn.stable_id();
        // The silence goes on, or begins with this call (which may have
        // waited it out alone).
        let since = match &*silence {
            Some(s) if s.conn == id && s.heard == now_heard => s.since,
            _ => at,
        };
        if Instant::now().saturating_duration_since(since) < SILENCE_MAX {
            *silence = Some(Silence {
                conn: id,
                heard: now_heard,
                since,
            });
            return false;
        }
        *silence = None;
        conn.close(VarInt::from_u32(CLOSE_SILENT), b"silent");
        let mut cached = lock(&self.conn);
        if cached.as_ref().is_some_and(|c| c.stable_id() == id) {
            *cached = None;
        }
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps stay consistent across a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unreachable(addr: SocketAddr, e: impl std::fmt::Display) -> RpcError {
    RpcError::Unreachable {
        addr,
        reason: e.to_string(),
    }
}

fn connection_error(addr: SocketAddr, e: ConnectionError) -> RpcError {
    match e {
        ConnectionError::LocallyClosed => RpcError::Closed,
        other => unreachable(addr, other),
    }
}

/// A request stream that is reset if the call is dropped before the
/// request was written whole (its timeout ran out): the peer then sees
/// the caller gone, not a truncated frame it would count against the
/// connection (a large request may take a while to send).
struct CancelOnDrop(Option<SendStream>);

impl CancelOnDrop {
    fn stream(&mut self) -> &mut SendStream {
        // Invariant: `Some` until `finish` consumes it.
        self.0.as_mut().expect("stream taken")
    }

    /// The request is written: end the stream normally.
    fn finish(mut self) {
        if let Some(mut send) = self.0.take() {
            // Finishing can only fail if the stream was already reset.
            let _ = send.finish();
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(mut send) = self.0.take() {
            let _ = send.reset(VarInt::from_u32(STOP_CANCELLED));
        }
    }
}

/// Why a frame could not be read from a stream.
enum ReadError {
    Frame(FrameError),
    Stream(String),
}

impl ReadError {
    fn into_rpc(self, addr: SocketAddr) -> RpcError {
        match self {
            ReadError::Frame(e) => RpcError::from_frame(e),
            ReadError::Stream(reason) => RpcError::Unreachable { addr, reason },
        }
    }
}

/// Reads one frame's content; the length is checked before the body is
/// buffered.
async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, ReadError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    recv.read_exact(&mut prefix).await.map_err(read_error)?;
    let len = codec::frame_len(prefix).map_err(ReadError::Frame)?;
    let mut content = vec![0u8; len];
    recv.read_exact(&mut content).await.map_err(read_error)?;
    Ok(content)
}

/// Reads a chunked message: its head frame, then its chunk frames.
async fn read_message<T: DeserializeOwned + Chunked>(
    recv: &mut RecvStream,
) -> Result<T, ReadError> {
    let content = read_frame(recv).await?;
    let head: Head<T> = codec::decode(&content).map_err(ReadError::Frame)?;
    let mut value = head.body;
    let mut joiner = Joiner::new(&mut value, head.chunks, LENGTH_BYTES + content.len())
        .map_err(ReadError::Frame)?;
    drop(content);
    while joiner.left() > 0 {
        let chunk = read_frame(recv).await?;
        joiner.push(&chunk).map_err(ReadError::Frame)?;
    }
    joiner.finish(&mut value).map_err(ReadError::Frame)?;
    Ok(value)
}

fn read_error(e: quinn::ReadExactError) -> ReadError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => ReadError::Frame(FrameError::Truncated),
        quinn::ReadExactError::ReadError(e) => ReadError::Stream(e.to_string()),
    }
}

async fn accept_loop(endpoint: Endpoint, service: Arc<dyn Service>, metrics: Arc<Metrics>) {
    while let Some(incoming) = endpoint.accept().await {
        if endpoint.open_connections() >= CONNECTIONS_MAX {
            count(&metrics.rpc_connections_refused);
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, service.clone(), metrics.clone()));
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    service: Arc<dyn Service>,
    metrics: Arc<Metrics>,
) {
    let remote = incoming.remote_address();
    // Bounded like a dial: a handshake left half done (a caller gone, or
    // one that never had the secret) holds a connection slot only this
    // long, not the idle timeout.
    let conn = match tokio::time::timeout(DIAL_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            // Most often a peer without the cluster secret.
            count(&metrics.rpc_handshake_failures);
            debug!(%remote, %err, "RPC handshake failed");
            return;
        }
        Err(_) => {
            count(&metrics.rpc_handshake_failures);
            debug!(%remote, "RPC handshake not done in time");
            return;
        }
    };
    let strikes = Arc::new(AtomicU32::new(0));
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(conn.clone(), send, recv, service.clone(), metrics.clone(), strikes.clone()));
                }
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(serve_message(conn.clone(), recv, service.clone(), metrics.clone(), strikes.clone()));
                }
                Err(_) => break,
            },
        }
    }
}

/// Counts a bad frame against the connection; closes it at the limit.
fn strike(conn: &Connection, strikes: &AtomicU32, metrics: &Metrics, why: &str) {
    count(&metrics.rpc_frames_rejected);
    let n = strikes.fetch_add(1, Ordering::Relaxed) + 1;
    debug!(remote = %conn.remote_address(), why, strikes = n, "bad RPC frame");
    if n >= STRIKES_MAX {
        debug!(remote = %conn.remote_address(), "closing RPC connection: too many bad frames");
        conn.close(VarInt::from_u32(CLOSE_STRIKES), b"bad frames");
    }
}

async fn serve_request(
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    service: Arc<dyn Service>,
    metrics: Arc<Metrics>,
    strikes: Arc<AtomicU32>,
) {
    let read = tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        read_message::<RequestEnvelope>(&mut recv),
    )
    .await;
    let answer: ResponseEnvelope = match read {
        Err(_) => {
            strike(&conn, &strikes, &metrics, "request not sent in time");
            let _ = send.reset(VarInt::from_u32(STOP_REFUSED));
            return;
        }
        Ok(Err(ReadError::Stream(_))) => return, // the caller went away
        Ok(Err(ReadError::Frame(error))) => {
            strike(&conn, &strikes, &metrics, &error.to_string());
            let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
            Err(match error {
                FrameError::TooLarge { max, .. } => Rejection::TooLarge { max: max as u32 },
                FrameError::Version { .. } => Rejection::Version {
                    supported: codec::WIRE_VERSION,
                },
                _ => Rejection::Malformed,
            })
        }
        Ok(Ok(envelope)) => {
            count(&metrics.rpc_requests_served);
            service.request(envelope.from, envelope.request).await
        }
    };
    let frame = match codec::encode_chunked(answer) {
        Ok(frame) => frame,
        Err(FrameError::TooLarge { max, .. }) => {
            // Our own answer is too big: say so rather than go silent.
            match codec::encode_chunked(ResponseEnvelope::Err(Rejection::TooLarge {
                max: max as u32,
            })) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    Metrics::add(&metrics.rpc_bytes_sent, frame.len() as u64);
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}

async fn serve_message(
    conn: Connection,
    mut recv: RecvStream,
    service: Arc<dyn Service>,
    metrics: Arc<Metrics>,
    strikes: Arc<AtomicU32>,
) {
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame(&mut recv)).await;
    let content = match read {
        Ok(Ok(content)) => content,
        Ok(Err(ReadError::Stream(_))) => return,
        Ok(Err(ReadError::Frame(error))) => {
            let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
            return strike(&conn, &strikes, &metrics, &error.to_string());
        }
        Err(_) => return strike(&conn, &strikes, &metrics, "message not sent in time"),
    };
    match codec::decode::<MessageEnvelope>(&content) {
        Ok(envelope) => {
            count(&metrics.rpc_messages_received);
            service.message(envelope.from, envelope.message).await;
        }
        Err(error) => strike(&conn, &strikes, &metrics, &error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::message::{Ping, Pong};

    struct Echo;

    #[async_trait::async_trait]
    impl Service for Echo {
        async fn request(&self, _from: NodeId, request: Request) -> Result<Response, Rejection> {
            match request {
                Request::Ping(Ping { payload }) => Ok(Response::Pong(Pong {
                    id: NodeId(1),
                    generation: crate::ids::Generation(0),
                    payload,
                })),
                _ => Err(Rejection::Unsupported),
            }
        }
        async fn message(&self, _from: NodeId, _message: Message) {}
    }

    /// A server node and a raw QUIC connection to it with the right secret,
    /// through which a test can send any bytes.
    async fn server_and_raw_client() -> (QuicRpc, Connection, Arc<Metrics>) {
        let secret = ClusterSecret::from_bytes([4; 32]);
        let metrics = Arc::new(Metrics::default());
        let server = QuicRpc::bind(
            "127.0.0.1:0".parse().unwrap(),
            NodeId(1),
            &secret,
            Arc::new(Echo),
            metrics.clone(),
        )
        .unwrap();
        let conn = raw_client(server.local_addr(), &secret).await;
        (server, conn, metrics)
    }

    async fn raw_client(to: SocketAddr, secret: &ClusterSecret) -> Connection {
        let tls = tls::configs(secret, Arc::new(transport_config())).unwrap();
        let mut client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(tls.client);
        client.connect(to, tls::SERVER_NAME).unwrap().await.unwrap()
    }

    /// Sends raw bytes as a request; returns the decoded answer.
    async fn raw_call(conn: &Connection, bytes: &[u8]) -> Result<ResponseEnvelope, String> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let content = read_frame(&mut recv).await.map_err(|e| match e {
            ReadError::Frame(e) => e.to_string(),
            ReadError::Stream(s) => s,
        })?;
        codec::decode::<Head<ResponseEnvelope>>(&content)
            .map(|head| head.body)
            .map_err(|e| e.to_string())
    }

    fn frame_with(version: u16, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 2) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn unknown_version_is_answered_with_ours() {
        let (server, conn, _) = server_and_raw_client().await;
        let answer = raw_call(&conn, &frame_with(codec::WIRE_VERSION + 1, &[0, 0])).await;
        assert_eq!(
            answer,
            Ok(Err(Rejection::Version {
                supported: codec::WIRE_VERSION
            }))
        );
        server.close().await;
    }

    #[tokio::test]
    async fn oversize_request_is_refused_unread() {
        let (server, conn, metrics) = server_and_raw_client().await;
        let prefix = ((codec::FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        let answer = raw_call(&conn, &prefix).await;
        assert_eq!(
            answer,
            Ok(Err(Rejection::TooLarge {
                max: codec::FRAME_BYTES_MAX as u32
            }))
        );
        assert_eq!(metrics.rpc_frames_rejected.load(Ordering::Relaxed), 1);
        server.close().await;
    }

    #[tokio::test]
    async fn repeated_bad_frames_close_the_connection_and_nothing_else() {
        let (server, conn, metrics) = server_and_raw_client().await;
        let truncated = &frame_with(codec::WIRE_VERSION, &[0, 1, 2])[..5];
        for i in 0..STRIKES_MAX {
            let bytes = if i % 2 == 0 {
                frame_with(codec::WIRE_VERSION, &[0xff, 0xff, 0xff])
            } else {
                truncated.to_vec()
            };
            // The last answers may be lost to the close; earlier ones say
            // what was wrong.
            let answer = raw_call(&conn, &bytes).await;
            if i + 1 < STRIKES_MAX {
                assert_eq!(answer, Ok(Err(Rejection::Malformed)), "frame {i}");
            }
        }
        let reason = tokio::time::timeout(Duration::from_secs(2), conn.closed())
            .await
            .expect("the connection is closed");
        assert!(
            matches!(reason, ConnectionError::ApplicationClosed(ref c) if c.error_code == VarInt::from_u32(CLOSE_STRIKES)),
            "{reason:?}"
        );
        assert_eq!(
            metrics.rpc_frames_rejected.load(Ordering::Relaxed),
            STRIKES_MAX as u64
        );
        // A new connection to the same server is served as usual.
        let fresh = raw_client(server.local_addr(), &ClusterSecret::from_bytes([4; 32])).await;
        let ping = codec::encode_chunked(RequestEnvelope {
            from: NodeId(2),
            request: Request::Ping(Ping { payload: vec![7] }),
        })
        .unwrap();
        let answer = raw_call(&fresh, &ping).await.unwrap();
        assert!(matches!(answer, Ok(Response::Pong(p)) if p.payload == vec![7]));
        server.close().await;
    }

    fn bind_with(
        id: u64,
        secret: &ClusterSecret,
        service: Arc<dyn Service>,
        metrics: Arc<Metrics>,
    ) -> QuicRpc {
        QuicRpc::bind(
            "127.0.0.1:0".parse().unwrap(),
            NodeId(id),
            secret,
            service,
            metrics,
        )
        .unwrap()
    }

    /// `n` held locks, as a lock table carries them.
    fn held_table(n: u64) -> Vec<crate::locks::Entry> {
        use crate::ids::{Epoch, Token};
        use crate::locks::{Entry, EntryState, Name};
        (0..n)
            .map(|i| Entry {
                name: Name::lock(format!("held-lock-{i:06}")),
                token: Token((4 << 32) + i),
                state: EntryState::held(30_000, NodeId(2), Some(format!("req-{i}")), 1),
                claim: None,
                written: Epoch(4),
            })
            .collect()
    }

    /// A replication batch of `locks`.
    fn replicate(locks: Vec<crate::locks::Entry>) -> Request {
        Request::Voter(crate::rpc::VoterRequest::Replicate {
            epoch: crate::ids::Epoch(4),
            voters: 7,
            batch: crate::ids::BatchId(1),
            locks,
        })
    }

    /// Answers a replication request with a copy holding its entries.
    struct Mirror;

    #[async_trait::async_trait]
    impl Service for Mirror {
        async fn request(&self, _from: NodeId, request: Request) -> Result<Response, Rejection> {
            match request {
                Request::Voter(crate::rpc::VoterRequest::Replicate { locks, .. }) => {
                    Ok(Response::Copy(crate::rpc::VoterSnapshot {
                        locks,
                        ..Default::default()
                    }))
                }
                _ => Err(Rejection::Unsupported),
            }
        }
        async fn message(&self, _from: NodeId, _message: Message) {}
    }

    /// A table of 100,000 held locks, far past one frame, crosses a real
    /// connection both ways (a new term's first batch, a promise's copy)
    /// in chunk frames, and arrives whole.
    #[tokio::test]
    async fn a_table_past_one_frame_crosses_both_ways() {
        let secret = ClusterSecret::from_bytes([5; 32]);
        let metrics = Arc::new(Metrics::default());
        let server = bind_with(1, &secret, Arc::new(Mirror), metrics.clone());
        let client = bind_with(2, &secret, Arc::new(crate::rpc::Unserved), metrics);
        let locks = held_table(100_000);
        let answer = client
            .call(
                server.local_addr(),
                replicate(locks.clone()),
                Duration::from_secs(30),
            )
            .await;
        match answer {
            Ok(Response::Copy(snapshot)) => assert!(snapshot.locks == locks),
            other => panic!("expected the table back, got {:?}", other.map(|_| ())),
        }
        client.close().await;
        server.close().await;
    }

    /// A caller whose timeout runs out while its large request is still
    /// being sent resets the stream: the server sees the caller gone, not
    /// a truncated frame, and so never closes the connection for calls
    /// given up, however many.
    #[tokio::test]
    async fn requests_given_up_mid_send_are_not_counted_as_bad_frames() {
        let secret = ClusterSecret::from_bytes([6; 32]);
        let server_metrics = Arc::new(Metrics::default());
        let server = bind_with(1, &secret, Arc::new(Mirror), server_metrics.clone());
        let client = bind_with(
            2,
            &secret,
            Arc::new(crate::rpc::Unserved),
            Arc::new(Metrics::default()),
        );
        let locks = held_table(50_000);
        let request = || replicate(locks.clone());
        // Connected first, so that each call below is cut mid-send.
        assert!(
            client
                .call(server.local_addr(), request(), Duration::from_secs(30))
                .await
                .is_ok()
        );
        for _ in 0..2 * STRIKES_MAX {
            let answer = client
                .call(server.local_addr(), request(), Duration::from_millis(2))
                .await;
            assert!(
                matches!(answer, Err(RpcError::Timeout { .. })),
                "{answer:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            server_metrics.rpc_frames_rejected.load(Ordering::Relaxed),
            0
        );
        assert!(
            client
                .call(server.local_addr(), request(), Duration::from_secs(30))
                .await
                .is_ok()
        );
        client.close().await;
        server.close().await;
    }

    /// Answers every request as [`Echo`] does, after `.0`.
    struct Slow(Duration);

    #[async_trait::async_trait]
    impl Service for Slow {
        async fn request(&self, from: NodeId, request: Request) -> Result<Response, Rejection> {
            tokio::time::sleep(self.0).await;
            Echo.request(from, request).await
        }
        async fn message(&self, _from: NodeId, _message: Message) {}
    }

    /// A node served from its own thread and runtime, which [`Self::kill`]
    /// drops whole: its tasks and socket vanish and nothing more is sent,
    /// as when its process is killed.
    struct Killable {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Killable {
        /// Starts node `id` at `addr` (port 0: any), waiting for the
        /// address to be free if a killed node held it.
        fn start(addr: SocketAddr, id: u64, secret: &ClusterSecret) -> Killable {
            let secret = secret.clone();
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let metrics = Arc::new(Metrics::default());
                    let mut tries = 0;
                    let node = loop {
                        match QuicRpc::bind(
                            addr,
                            NodeId(id),
                            &secret,
                            Arc::new(Echo),
                            metrics.clone(),
                        ) {
                            Ok(node) => break node,
                            Err(e) if tries < 100 => {
                                tries += 1;
                                debug!(%e, "address not free yet");
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Err(e) => panic!("bind {addr}: {e}"),
                        }
                    };
                    bound_tx.send(node.local_addr()).unwrap();
                    let _ = stopped.await;
                    drop(node); // no close: nothing is sent
                });
                runtime.shutdown_background();
            });
            let addr = bound_rx.recv().unwrap();
            Killable {
                addr,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        fn kill(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.thread.take().unwrap().join().unwrap();
        }
    }

    fn ping() -> Request {
        Request::Ping(Ping { payload: vec![7] })
    }

    fn assert_timed_out(answer: Result<Response, RpcError>) {
        assert!(
            matches!(answer, Err(RpcError::Timeout { .. })),
            "{answer:?}"
        );
    }

    /// A caller (its metrics) that called node 2 once, and node 2's
    /// address, at which it was then killed.
    async fn a_caller_of_a_killed_node(
        secret: &ClusterSecret,
    ) -> (QuicRpc, Arc<Metrics>, SocketAddr) {
        let metrics = Arc::new(Metrics::default());
        let caller = bind_with(9, secret, Arc::new(Echo), metrics.clone());
        let node = Killable::start("127.0.0.1:0".parse().unwrap(), 2, secret);
        let addr = node.addr;
        caller
            .call(addr, ping(), Duration::from_secs(5))
            .await
            .unwrap();
        // What the node sent after its answer (acks, stream credit) is
        // taken in before it dies, not counted as heard from it after.
        tokio::time::sleep(Duration::from_millis(100)).await;
        node.kill();
        (caller, metrics, addr)
    }

    fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// A node killed and restarted at its address (same id, same secret)
    /// is called again at once: the new process resets the connection its
    /// predecessor left, so the first call on it fails fast as unreachable
    /// and the next dials afresh. (Without the node's own reset key, calls
    /// would go unanswered into the dead connection.)
    #[tokio::test]
    async fn a_node_restarted_at_its_address_resets_the_connection_left_behind() {
        let secret = ClusterSecret::from_bytes([4; 32]);
        let (caller, metrics, addr) = a_caller_of_a_killed_node(&secret).await;
        let node = Killable::start(addr, 2, &secret);
        let first = caller.call(addr, ping(), Duration::from_millis(500)).await;
        assert!(
            matches!(first, Err(RpcError::Unreachable { .. })),
            "{first:?}"
        );
        caller
            .call(addr, ping(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(load(&metrics.rpc_connections_dialed), 2);
        assert_eq!(load(&metrics.rpc_connections_silent), 0);
        node.kill();
        caller.close().await;
    }

    /// Calls into a dead node's connection close it once they have gone
    /// unanswered, with nothing heard, for `SILENCE_MAX`, not at the idle
    /// timeout; the next call dials afresh.
    #[tokio::test]
    async fn calls_unanswered_by_a_silent_node_close_its_connection() {
        let secret = ClusterSecret::from_bytes([4; 32]);
        let (caller, metrics, addr) = a_caller_of_a_killed_node(&secret).await;
        let timeout = SILENCE_MAX / 4;
        let began = Instant::now();
        while load(&metrics.rpc_connections_silent) == 0 {
            assert!(began.elapsed() < SILENCE_MAX * 3, "never closed");
            assert_timed_out(caller.call(addr, ping(), timeout).await);
        }
        let closed_after = began.elapsed();
        assert!(closed_after >= SILENCE_MAX, "closed after {closed_after:?}");
        assert_eq!(load(&metrics.rpc_connections_dialed), 1);
        let _ = caller.call(addr, ping(), timeout).await;
        assert_eq!(load(&metrics.rpc_connections_dialed), 2);
        caller.close().await;
    }

    /// A node that is slow to answer but alive (QUIC acknowledges the
    /// requests) keeps its connection however many calls time out.
    #[tokio::test]
    async fn calls_timing_out_at_a_slow_but_live_node_keep_its_connection() {
        let secret = ClusterSecret::from_bytes([4; 32]);
        let metrics = Arc::new(Metrics::default());
        let caller = bind_with(9, &secret, Arc::new(Echo), metrics.clone());
        let slow = bind_with(2, &secret, Arc::new(Slow(SILENCE_MAX * 3)), Arc::default());
        let addr = slow.local_addr();
        let timeout = SILENCE_MAX / 4;
        let began = Instant::now();
        while began.elapsed() < SILENCE_MAX * 2 {
            assert_timed_out(caller.call(addr, ping(), timeout).await);
        }
        assert_eq!(load(&metrics.rpc_connections_silent), 0);
        assert_eq!(load(&metrics.rpc_connections_dialed), 1);
        caller.close().await;
        slow.close().await;
    }

    /// A single call that waits out the whole silence, nothing heard,
    /// closes the connection itself: no second call is needed.
    #[tokio::test]
    async fn a_single_call_unanswered_for_the_whole_silence_closes_the_connection() {
        let secret = ClusterSecret::from_bytes([4; 32]);
        let (caller, metrics, addr) = a_caller_of_a_killed_node(&secret).await;
        assert_timed_out(
            caller
                .call(addr, ping(), SILENCE_MAX + SILENCE_MAX / 4)
                .await,
        );
        assert_eq!(load(&metrics.rpc_connections_silent), 1);
        caller.close().await;
    }

    /// Calls waiting for a stream (every one the peer allows is held by a
    /// slow request whose caller gave up) have sent nothing the peer must
    /// acknowledge: however long they wait, the live peer's connection,
    /// and the requests it is still serving, stay.
    #[tokio::test]
    async fn calls_waiting_for_a_stream_do_not_count_as_silence() {
        let secret = ClusterSecret::from_bytes([4; 32]);
        let metrics = Arc::new(Metrics::default());
        let caller = Arc::new(bind_with(9, &secret, Arc::new(Echo), metrics.clone()));
        let slow = bind_with(2, &secret, Arc::new(Slow(SILENCE_MAX * 10)), Arc::default());
        let addr = slow.local_addr();
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..INFLIGHT_PER_PEER_MAX {
            let caller = caller.clone();
            held.spawn(async move { caller.call(addr, ping(), SILENCE_MAX / 2).await });
        }
        while let Some(answer) = held.join_next().await {
            assert_timed_out(answer.unwrap());
        }
        let began = Instant::now();
        while began.elapsed() < SILENCE_MAX * 2 {
            assert_timed_out(caller.call(addr, ping(), SILENCE_MAX / 4).await);
        }
        assert_eq!(load(&metrics.rpc_connections_silent), 0);
        assert_eq!(load(&metrics.rpc_connections_dialed), 1);
        caller.close().await;
        slow.close().await;
    }

    /// An incoming handshake left half done (here: nothing after the
    /// caller's first datagram gets through) holds its connection slot
    /// for `DIAL_TIMEOUT`, not for the idle timeout.
    #[tokio::test]
    async fn a_handshake_left_half_done_frees_its_slot() {
        let secret = ClusterSecret::from_bytes([4; 32]);
        let server = bind_with(2, &secret, Arc::new(Echo), Arc::default());
        // A relay that passes the caller's first datagram only.
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let to = server.local_addr();
        let relay = tokio::spawn(async move {
            let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut buf = vec![0u8; 65536];
            let (n, _) = front.recv_from(&mut buf).await.unwrap();
            back.send_to(&buf[..n], to).await.unwrap();
            loop {
                let _ = front.recv_from(&mut buf).await;
            }
        });
        let dial = tokio::spawn(async move { raw_client(front_addr, &secret).await });
        let open = || server.endpoint.open_connections();
        let began = Instant::now();
        while open() == 0 {
            assert!(began.elapsed() < SILENCE_MAX, "the handshake never began");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while open() > 0 {
            assert!(
                began.elapsed() < DIAL_TIMEOUT * 3,
                "a half-done handshake still holds its slot"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        dial.abort();
        relay.abort();
        server.close().await;
    }
}
