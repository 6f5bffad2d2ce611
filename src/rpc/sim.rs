//! RPC over the simulated network: each request, answer and message is one
//! datagram on a [`SimNet`], encoded with the same frame codec as QUIC, so
//! partitions, loss, delay, duplication and reordering apply to it. A lost
//! request or answer surfaces as [`RpcError::Timeout`] (or
//! [`RpcError::Unreachable`] for an unbound address, after the timeout, as
//! a dead QUIC peer would); a duplicated request runs twice at the server,
//! which protocols must tolerate (callers retry over QUIC too).

use std::collections::HashMap;
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
use crate::net::{DATAGRAM_BYTES_MAX, SimNet, SimSender, SimSocket};

/// Calls awaiting an answer at one node (all peers together).
const PENDING_MAX: usize = 16 * INFLIGHT_PER_PEER_MAX;

#[derive(Serialize, Deserialize)]
enum Packet {
    Request {
        call: u64,
        envelope: RequestEnvelope,
    },
    Response {
        call: u64,
        envelope: ResponseEnvelope,
    },
    Message(MessageEnvelope),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ResponseEnvelope>>>>;

/// The name of a request's kind, for faults placed on one kind only
/// ([`SimNet::drop_requests`]).
fn kind(request: &Request) -> &'static str {
    use crate::election::ElectionRequest as E;
    use crate::locks::LockRequest as L;
    match request {
        Request::Ping(_) => "ping",
        Request::Election(E::Prepare { .. }) => "prepare",
        Request::Election(E::Heartbeat { .. }) => "heartbeat",
        Request::Election(E::Resign { .. }) => "resign",
        Request::Election(E::Probe { .. }) => "probe",
        Request::Election(E::Sync { .. }) => "sync",
        Request::Lock(L::Replicate { .. }) => "lock-replicate",
        Request::Lock(_) => "lock",
    }
}

pub(super) struct SimRpc {
    id: NodeId,
    sender: SimSender,
    local: SocketAddr,
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
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let lost = self
            .sender
            .net()
            .drops_request(self.local.ip(), to.ip(), kind(&request));
        let frame = encode_datagram(&Packet::Request {
            call,
            envelope: RequestEnvelope {
                from: self.id,
                request,
            },
        })?;
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
        let frame = encode_datagram(&Packet::Message(MessageEnvelope {
            from: self.id,
            message,
        }))?;
        count(&self.metrics.rpc_messages_sent);
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

fn encode_datagram(packet: &Packet) -> Result<Vec<u8>, RpcError> {
    let frame = codec::encode(packet).map_err(RpcError::from_frame)?;
    if frame.len() > DATAGRAM_BYTES_MAX {
        return Err(RpcError::TooLarge {
            bytes: frame.len(),
            max: DATAGRAM_BYTES_MAX,
        });
    }
    Ok(frame)
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
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        while handlers.try_join_next().is_some() {}
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => return,
        };
        let packet = match codec::decode_frame::<Packet>(&buf[..len]) {
            Ok((packet, used)) if used == len => packet,
            _ => {
                count(&metrics.rpc_frames_rejected);
                debug!(%from, len, "malformed simulated RPC datagram dropped");
                continue;
            }
        };
        match packet {
            Packet::Request { call, envelope } => {
                count(&metrics.rpc_requests_served);
                let service = service.clone();
                let sender = sender.clone();
                handlers.spawn(async move {
                    let answer = service.request(envelope.from, envelope.request).await;
                    if let Ok(frame) = encode_datagram(&Packet::Response {
                        call,
                        envelope: answer,
                    }) {
                        let _ = sender.send_to(&frame, from);
                    }
                });
            }
            Packet::Response { call, envelope } => {
                // Unknown calls are duplicates or answers after a timeout.
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
