//! RPC over the simulated network: each request, answer and message is one
//! datagram on a [`SimNet`], encoded with the same frame codec as QUIC, so
//! partitions, loss, delay, duplication and reordering apply to it. A lost
//! request or answer surfaces as [`RpcError::Timeout`] (or
//! [`RpcError::Unreachable`] for an unbound address, after the timeout, as
//! a dead QUIC peer would); a duplicated request runs twice at the server,
//! which protocols must tolerate (callers retry over QUIC too).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use super::codec;
use super::message::{MessageEnvelope, RequestEnvelope, ResponseEnvelope};
use super::{INFLIGHT_PER_PEER_MAX, Message, Request, Response, RpcError, Service, count};
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::net::{SIM_MESSAGE_BYTES_MAX, SimNet, SimSender, SimSocket};

/// Calls awaiting an answer at one node (all peers together).
const PENDING_MAX: usize = 16 * INFLIGHT_PER_PEER_MAX;

/// One call: the caller's socket binding and a number unique within it.
/// Over QUIC an answer travels on the stream of a connection that ends
/// with the calling process; here the binding stands for that connection,
/// so an answer to a call of a node's earlier life (same address, an
/// earlier binding) is dropped instead of being taken for a later call
/// with the same number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct CallId {
    binding: u64,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
enum Packet {
    /// Followed, in the datagram, by `chunks` chunk frames of the
    /// envelope's lock entries.
    Request {
        call: CallId,
        chunks: u32,
        envelope: RequestEnvelope,
    },
    /// Followed by chunk frames, as a request.
    Response {
        call: CallId,
        chunks: u32,
        envelope: ResponseEnvelope,
    },
    Message(MessageEnvelope),
}

/// Calls awaiting an answer. Ordered, so that a close wakes the callers in
/// one order every run (a seed replays a run).
type Pending = Arc<Mutex<BTreeMap<CallId, oneshot::Sender<ResponseEnvelope>>>>;

/// The name of a request's kind, for faults placed on one kind only
/// ([`SimNet::drop_requests`]).
fn kind(request: &Request) -> &'static str {
    use super::VoterRequest as V;
    use crate::election::ElectionRequest as E;
    match request {
        Request::Ping(_) => "ping",
        Request::Election(E::Prepare { .. }) => "prepare",
        Request::Election(E::Heartbeat { .. }) => "heartbeat",
        Request::Election(E::Resign { .. }) => "resign",
        Request::Election(E::Probe { .. }) => "probe",
        Request::Election(E::Sync { .. }) => "sync",
        Request::Election(E::PreVote { .. }) => "pre-vote",
        Request::Voter(V::Replicate { .. }) => "lock-replicate",
        Request::Voter(V::Forget { .. }) => "lock-forget",
        Request::Lock(_) => "lock",
        Request::Reconcile(_) => "reconcile",
        Request::Time => "time",
        Request::Life => "life",
        Request::Copy => "copy",
    }
}

pub(super) struct SimRpc {
    id: NodeId,
    sender: SimSender,
    local: SocketAddr,
    binding: u64,
    pending: Pending,
    next_call: AtomicU64,
    metrics: Arc<Metrics>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SimRpc {
    pub(super) fn bind(
        net: &SimNet,
        addr: SocketAddr,
        id: NodeId,
        service: Arc<dyn Service>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<SimRpc> {
        let socket = net.bind(addr)?;
        let local = socket.local_addr();
        let binding = socket.binding();
        let sender = socket.sender();
        let pending = Pending::default();
        let task = tokio::spawn(receive_loop(
            socket,
            service,
            pending.clone(),
            metrics.clone(),
        ));
        Ok(SimRpc {
            id,
            sender,
            local,
            binding,
            pending,
            next_call: AtomicU64::new(0),
            metrics,
            task: Mutex::new(Some(task)),
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub(super) async fn call(
        &self,
        to: SocketAddr,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        if self.is_closed() {
            return Err(RpcError::Closed);
        }
        let call = CallId {
            binding: self.binding,
            seq: self.next_call.fetch_add(1, Ordering::Relaxed),
        };
        let lost = self
            .sender
            .net()
            .drops_request(self.local.ip(), to.ip(), kind(&request));
        let mut envelope = RequestEnvelope {
            from: self.id,
            request,
        };
        let (chunks, frames) = codec::take_chunks(&mut envelope).map_err(RpcError::from_frame)?;
        let frame = encode_datagram(
            &Packet::Request {
                call,
                chunks,
                envelope,
            },
            frames,
        )?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.len() >= PENDING_MAX {
                return Err(RpcError::Timeout { after: timeout });
            }
            pending.insert(call, tx);
        }
        // A send error is the datagram being refused as too large, which
        // `encode_datagram` already ruled out; treat it as lost.
        Metrics::add(&self.metrics.rpc_bytes_sent, frame.len() as u64);
        if !lost {
            let _ = self.sender.send_to(&frame, to);
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        lock(&self.pending).remove(&call);
        match answer {
            Ok(Ok(envelope)) => envelope.map_err(RpcError::from_rejection),
            Ok(Err(_)) => Err(RpcError::Closed),
            Err(_) => Err(RpcError::Timeout { after: timeout }),
        }
    }

    pub(super) async fn send(&self, to: SocketAddr, message: Message) -> Result<(), RpcError> {
        if self.is_closed() {
            return Err(RpcError::Closed);
        }
        let frame = encode_datagram(
            &Packet::Message(MessageEnvelope {
                from: self.id,
                message,
            }),
            Vec::new(),
        )?;
        count(&self.metrics.rpc_messages_sent);
        Metrics::add(&self.metrics.rpc_bytes_sent, frame.len() as u64);
        let _ = self.sender.send_to(&frame, to);
        Ok(())
    }

    /// Stops serving at once, as a crash would: the socket is unbound and
    /// requests being served are abandoned.
    pub(super) async fn close(&self) {
        let task = lock(&self.task).take();
        lock(&self.pending).clear();
        if let Some(task) = task {
            task.abort();
            // The socket is freed when the aborted task is dropped; wait
            // for that, so a restart can bind the address at once.
            let _ = task.await;
        }
    }

    fn is_closed(&self) -> bool {
        lock(&self.task).is_none()
    }
}

impl Drop for SimRpc {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A datagram: the packet's frame, then the chunk frames of its
/// envelope's entries.
fn encode_datagram(packet: &Packet, chunks: Vec<u8>) -> Result<Vec<u8>, RpcError> {
    let mut frame = codec::encode(packet).map_err(RpcError::from_frame)?;
    let max = codec::MESSAGE_BYTES_MAX.min(SIM_MESSAGE_BYTES_MAX);
    if frame.len() + chunks.len() > max {
        return Err(RpcError::TooLarge {
            bytes: frame.len() + chunks.len(),
            max,
        });
    }
    frame.extend_from_slice(&chunks);
    Ok(frame)
}

/// The answer's datagram, or that it is too large as the answer.
fn encode_answer(call: CallId, mut envelope: ResponseEnvelope) -> Option<Vec<u8>> {
    let encoded = codec::take_chunks(&mut envelope)
        .map_err(RpcError::from_frame)
        .and_then(|(chunks, frames)| {
            encode_datagram(
                &Packet::Response {
                    call,
                    chunks,
                    envelope,
                },
                frames,
            )
        });
    match encoded {
        Ok(datagram) => Some(datagram),
        Err(RpcError::TooLarge { max, .. }) => encode_datagram(
            &Packet::Response {
                call,
                chunks: 0,
                envelope: Err(super::Rejection::TooLarge { max: max as u32 }),
            },
            Vec::new(),
        )
        .ok(),
        Err(_) => None,
    }
}

/// A datagram's packet, its envelope's entries put back from the chunk
/// frames that follow it.
fn decode_datagram(bytes: &[u8]) -> Result<Packet, codec::FrameError> {
    let (mut packet, mut used) = codec::decode_frame::<Packet>(bytes)?;
    used += match &mut packet {
        Packet::Request {
            chunks, envelope, ..
        } => codec::join_chunks(envelope, *chunks, used, &bytes[used..])?,
        Packet::Response {
            chunks, envelope, ..
        } => codec::join_chunks(envelope, *chunks, used, &bytes[used..])?,
        Packet::Message(_) => 0,
    };
    if used != bytes.len() {
        return Err(codec::FrameError::Malformed);
    }
    Ok(packet)
}

async fn receive_loop(
    mut socket: SimSocket,
    service: Arc<dyn Service>,
    pending: Pending,
    metrics: Arc<Metrics>,
) {
    // Handlers in flight; dropped (aborted) with this task when the node
    // is killed, and reaped as they finish.
    let mut handlers = JoinSet::new();
    let sender = socket.sender();
    loop {
        while handlers.try_join_next().is_some() {}
        let (datagram, from) = match socket.recv().await {
            Ok(got) => got,
            Err(_) => return,
        };
        let len = datagram.len();
        let packet = match decode_datagram(&datagram) {
            Ok(packet) => packet,
            _ => {
                count(&metrics.rpc_frames_rejected);
                debug!(%from, len, "malformed simulated RPC datagram dropped");
                continue;
            }
        };
        match packet {
            Packet::Request { call, envelope, .. } => {
                count(&metrics.rpc_requests_served);
                let service = service.clone();
                let sender = sender.clone();
                let metrics = metrics.clone();
                handlers.spawn(async move {
                    let answer = service.request(envelope.from, envelope.request).await;
                    if let Some(frame) = encode_answer(call, answer) {
                        Metrics::add(&metrics.rpc_bytes_sent, frame.len() as u64);
                        let _ = sender.send_to(&frame, from);
                    }
                });
            }
            Packet::Response { call, envelope, .. } => {
                // Unknown calls are duplicates, answers after a timeout,
                // or answers to an earlier binding of this address.
                if let Some(tx) = lock(&pending).remove(&call) {
                    let _ = tx.send(envelope);
                }
            }
            Packet::Message(envelope) => {
                count(&metrics.rpc_messages_received);
                let service = service.clone();
                handlers.spawn(async move {
                    service.message(envelope.from, envelope.message).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Rejection;
    use crate::rpc::message::{Ping, Pong};

    /// Answers a ping with its payload after 100 ms.
    struct SlowEcho;

    #[async_trait::async_trait]
    impl Service for SlowEcho {
        async fn request(&self, _from: NodeId, request: Request) -> Result<Response, Rejection> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match request {
                Request::Ping(Ping { payload }) => Ok(Response::Pong(Pong {
                    id: NodeId(2),
                    generation: crate::ids::Generation(1),
                    payload,
                })),
                _ => Err(Rejection::Unsupported),
            }
        }
        async fn message(&self, _from: NodeId, _message: Message) {}
    }

    fn addr(host: u8) -> SocketAddr {
        SocketAddr::from(([127, 1, 0, host], 7401))
    }

    fn ping(payload: &[u8]) -> Request {
        Request::Ping(Ping {
            payload: payload.to_vec(),
        })
    }

    fn bind(net: &SimNet, host: u8, service: Arc<dyn Service>) -> SimRpc {
        let metrics = Arc::new(Metrics::default());
        SimRpc::bind(net, addr(host), NodeId(host as u64), service, metrics).unwrap()
    }

    /// An answer to a call of a node's earlier life never reaches a call
    /// of its next one on the same address (over QUIC the answer travels
    /// on the stream of a connection that died with the process). Node 1
    /// asks node 2, is killed before the answer, restarts on the same
    /// address and asks again: the first answer arrives while the second
    /// call waits, and must not be taken for it.
    #[tokio::test(start_paused = true)]
    async fn an_answer_to_an_earlier_life_is_not_taken_for_a_later_call() {
        let net = SimNet::new(7);
        let _server = bind(&net, 2, Arc::new(SlowEcho));
        let first = Arc::new(bind(&net, 1, Arc::new(crate::rpc::Unserved)));
        let call = tokio::spawn({
            let first = first.clone();
            async move {
                first
                    .call(addr(2), ping(b"old"), Duration::from_secs(1))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.close().await;
        assert!(call.await.unwrap().is_err(), "the killed node's call fails");
        let second = bind(&net, 1, Arc::new(crate::rpc::Unserved));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let answer = second
            .call(addr(2), ping(b"new"), Duration::from_secs(1))
            .await;
        match answer {
            Ok(Response::Pong(Pong { payload, .. })) => assert_eq!(payload, b"new".to_vec()),
            other => panic!("expected the answer to \"new\", got {other:?}"),
        }
    }
}
