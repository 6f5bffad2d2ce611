//! A lock client outside the mesh: a program that wants a lock without
//! being a node. It holds its own RPC endpoint (QUIC with mutual TLS, the
//! cluster secret), finds the leader among the agents it was given, and
//! takes locks with the same [`LockBuilder`] and [`LockGuard`] as a node:
//! the same acquire flow (one request id through failovers), the same
//! holder rule, renewals and release on drop.
//!
//! This module owns leader discovery and the endpoint. It must not hold
//! protocol rules of its own: what to retry and when a lease is valid
//! belong to [`crate::locks`].
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let secret = coordmesh::ClusterSecret::load("cluster.key".as_ref())?;
//! let agents = vec!["10.0.0.1:7401".parse()?, "10.0.0.2:7401".parse()?];
//! let client = coordmesh::client::RemoteClient::connect(agents, &secret).await?;
//! let guard = client.lock("nightly-report").ttl(Duration::from_secs(10)).acquire().await?;
//! println!("holding with token {}", guard.token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! [`LockBuilder`]: crate::locks::LockBuilder
//! [`LockGuard`]: crate::locks::LockGuard

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::election::Timing;
use crate::ids::{NodeId, Token};
use crate::locks::{LockBuilder, LockPath, LockReply, LockRequest, PathError};
use crate::metrics::Metrics;
use crate::net::Network;
use crate::rpc::{Ping, Request, Response, Rpc, RpcError, Unserved};
use crate::secret::ClusterSecret;

/// While a call to the leader lasts, the leader is pinged this often
/// (each ping waiting this long for its answer).
const LIVENESS_CHECK: Duration = Duration::from_millis(200);
/// Pings in a row left unanswered before a call is given up and the
/// leader looked for again: one lost datagram must not abandon a queued
/// acquire (a retry would join the queue again at its end). After a miss
/// the next ping goes once the missed one's time is up, so a dead leader
/// costs 800 ms (a wait, then three unanswered pings), inside an acquire
/// attempt (at most 1 s).
const LIVENESS_MISSES_MAX: u32 = 3;
/// The longest [`RemoteClient::close`] spends releasing the locks the
/// client holds.
const CLOSE_RELEASE_MAX: Duration = Duration::from_secs(2);

/// What a remote client must agree on with the cluster it calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientOptions {
    /// The cluster's drift bound `ρ` (its agents' `drift` setting): a
    /// guard counts its lease valid for `ttl·(1−ρ)` from the send of its
    /// last successful acquire or renewal. Within 0 and 0.1.
    pub drift: f64,
}

impl Default for ClientOptions {
    /// The agents' default drift bound (1%).
    fn default() -> Self {
        ClientOptions {
            drift: Timing::default().drift,
        }
    }
}

/// The longest one discovery question to an agent waits (it is answered
/// at once by any live agent), so a dead agent in the list costs little.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// A client of the mesh's locks that is not a node. Cheap to clone.
#[derive(Clone)]
pub struct RemoteClient {
    inner: Arc<Inner>,
}

struct Inner {
    rpc: Rpc,
    agents: Vec<SocketAddr>,
    /// The agent that last answered as the leader.
    leader: Mutex<Option<SocketAddr>>,
    /// Where the next discovery round starts (spreads the probes).
    next: AtomicUsize,
    changed: Notify,
    clock: Clock,
    drift: f64,
    closed: AtomicBool,
    /// Locks granted through this client and not known to have ended, by
    /// (name, token), with their TTL: what [`RemoteClient::close`]
    /// releases.
    held: Mutex<BTreeMap<(String, Token), Duration>>,
    /// Calls given up because the leader stopped answering pings.
    given_up: AtomicU64,
}

impl RemoteClient {
    /// A client of the agents at `agents` (their RPC addresses; any
    /// subset of the cluster that includes live members), authenticated
    /// with the cluster's `secret`.
    pub async fn connect(
        agents: Vec<SocketAddr>,
        secret: &ClusterSecret,
    ) -> io::Result<RemoteClient> {
        Self::connect_with(agents, secret, ClientOptions::default()).await
    }

    /// As [`RemoteClient::connect`], for a cluster whose settings differ
    /// from the defaults (its drift bound).
    pub async fn connect_with(
        agents: Vec<SocketAddr>,
        secret: &ClusterSecret,
        options: ClientOptions,
    ) -> io::Result<RemoteClient> {
        let unspecified = match agents.first().map(|a| a.ip()) {
            Some(IpAddr::V6(ip)) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Some(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            Some(IpAddr::V4(ip)) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        Self::start(
            &Network::Udp,
            SocketAddr::new(unspecified, 0),
            Clock::Boottime,
            agents,
            secret,
            options,
        )
        .await
    }

    /// A client on `network`, bound to `bind`, counting leases on `clock`
    /// (simulations pass theirs).
    pub async fn start(
        network: &Network,
        bind: SocketAddr,
        clock: Clock,
        agents: Vec<SocketAddr>,
        secret: &ClusterSecret,
        options: ClientOptions,
    ) -> io::Result<RemoteClient> {
        if agents.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a remote client needs at least one agent's RPC address",
            ));
        }
        Timing::check_drift(options.drift)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let rpc = Rpc::bind(
            network,
            bind,
            NodeId::REMOTE_CLIENT,
            secret,
            Arc::new(Unserved),
            Arc::new(Metrics::default()),
        )
        .await?;
        Ok(RemoteClient {
            inner: Arc::new(Inner {
                rpc,
                agents,
                leader: Mutex::new(None),
                next: AtomicUsize::new(0),
                changed: Notify::new(),
                clock,
                drift: options.drift,
                closed: AtomicBool::new(false),
                held: Mutex::new(BTreeMap::new()),
                given_up: AtomicU64::new(0),
            }),
        })
    }

    /// A lock by name, as [`Mesh::lock`](crate::Mesh::lock).
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder::new(Arc::new(self.clone()), name.into())
    }

    /// The RPC address of the agent that last answered as the leader.
    pub fn leader(&self) -> Option<SocketAddr> {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The protocol clock's reading, on which the guards count validity.
    pub fn clock_now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// Closes the client. At once its guards stop being valid (before
    /// any lock is freed, so no guard of it believes while the next holder
    /// holds), stop renewing and report lost, and new acquires and
    /// renewals fail with `ShuttingDown`. Then it releases every lock
    /// granted through it and not known to have ended, for up to 2 s in
    /// all, so that the next holder need not wait out a TTL; a grant that
    /// arrives later (an acquire that was queued at the leader) is released
    /// as it arrives. A lock whose release found no leader in that time
    /// stays held until its TTL ends.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
        let held = std::mem::take(&mut *self.inner.held.lock().unwrap_or_else(|e| e.into_inner()));
        let mut releases = tokio::task::JoinSet::new();
        for ((name, token), ttl) in held {
            releases.spawn(self.clone().release_on_close(name, token, ttl));
        }
        let _ = tokio::time::timeout(CLOSE_RELEASE_MAX, releases.join_all()).await;
    }

    /// Releases what this closed client was granted.
    async fn release_on_close(self, name: String, token: Token, ttl: Duration) {
        let _ = crate::locks::client::release(
            &self,
            crate::locks::Space::Lock,
            &name,
            token,
            ttl.min(CLOSE_RELEASE_MAX),
        )
        .await;
    }

    /// Calls given up so far because the leader stopped answering pings
    /// while they lasted ([`LIVENESS_MISSES_MAX`] in a row).
    pub fn calls_given_up(&self) -> u64 {
        self.inner.given_up.load(Ordering::Relaxed)
    }

    /// Keeps [`Inner::held`] in step with what the leader answered; a
    /// grant to a closed client is released at once.
    fn track(&self, request: &LockRequest, reply: &LockReply) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        match (request, reply) {
            (LockRequest::Acquire { name, .. }, LockReply::Granted { token, ttl_ms }) => {
                let ttl = Duration::from_millis(*ttl_ms);
                if self.is_stopped() {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(self.clone().release_on_close(name.clone(), *token, ttl));
                    }
                } else {
                    held.insert((name.clone(), *token), ttl);
                }
            }
            (
                LockRequest::Release { name, token } | LockRequest::Renew { name, token },
                LockReply::Released | LockReply::Lost | LockReply::Ended,
            ) => {
                held.remove(&(name.clone(), *token));
            }
            _ => {}
        }
    }

    fn set_leader(&self, leader: Option<SocketAddr>) {
        let mut cell = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if *cell != leader {
            *cell = leader;
            self.inner.changed.notify_waiters();
        }
    }

    /// One call to `to` that is given up once `to` leaves
    /// [`LIVENESS_MISSES_MAX`] pings in a row unanswered (checked every
    /// [`LIVENESS_CHECK`] while the call lasts): a
    /// queued acquire waits long at a live leader, and must not wait out
    /// its whole timeout at a dead one.
    async fn ask_watching(
        &self,
        to: SocketAddr,
        request: &LockRequest,
        timeout: Duration,
    ) -> Result<Option<LockReply>, RpcError> {
        let rpc = &self.inner.rpc;
        let dead = async {
            let mut missed = 0;
            loop {
                // After a miss, ask again once the missed ping's time is
                // up (an error that comes at once, a full queue of calls,
                // counts as no faster).
                if missed == 0 {
                    tokio::time::sleep(LIVENESS_CHECK).await;
                }
                let asked = tokio::time::Instant::now();
                let ping = Request::Ping(Ping {
                    payload: Vec::new(),
                });
                match rpc.call(to, ping, LIVENESS_CHECK).await {
                    Ok(_) => missed = 0,
                    Err(e) => {
                        missed += 1;
                        if missed >= LIVENESS_MISSES_MAX {
                            self.inner.given_up.fetch_add(1, Ordering::Relaxed);
                            return e;
                        }
                        tokio::time::sleep_until(asked + LIVENESS_CHECK).await;
                    }
                }
            }
        };
        tokio::select! {
            // Biased (so a seed replays a run): an answer that came wins.
            biased;
            answer = self.ask(to, request, timeout) => answer,
            e = dead => Err(RpcError::Unreachable {
                addr: to,
                reason: format!(
                    "stopped answering pings during the call ({LIVENESS_MISSES_MAX} in a row): {e}"
                ),
            }),
        }
    }

    /// One call to `to`; `None` when `to` is not the serving leader (or
    /// could not be asked).
    async fn ask(
        &self,
        to: SocketAddr,
        request: &LockRequest,
        timeout: Duration,
    ) -> Result<Option<LockReply>, RpcError> {
        match self
            .inner
            .rpc
            .call(to, Request::Lock(request.clone()), timeout)
            .await?
        {
            Response::Lock(LockReply::NotLeader) => Ok(None),
            Response::Lock(reply) => Ok(Some(reply)),
            _ => Err(RpcError::Malformed),
        }
    }

    /// To the known leader; if it is gone or no longer leads, the agents
    /// are asked in turn who holds the lock (a question only the serving
    /// leader answers, at once, acting on nothing) and the request goes to
    /// the one that answers. A timeout is passed on as is: the request may
    /// have reached a leader, and the caller's retry with the same request
    /// id settles it. `NoQuorum` when no agent leads.
    async fn route(&self, request: &LockRequest, timeout: Duration) -> Result<LockReply, RpcError> {
        // A closed client still releases (what it held, and grants that
        // arrive after its close); it asks for nothing new.
        if self.is_stopped() && !matches!(request, LockRequest::Release { .. }) {
            return Err(RpcError::Closed);
        }
        let start = self.inner.clock.now();
        let left = |clock: &Clock| timeout.saturating_sub(clock.now() - start);
        if let Some(leader) = self.leader() {
            match self.ask_watching(leader, request, timeout).await {
                Ok(Some(reply)) => return Ok(reply),
                // It may have acted; the next attempt looks for the
                // leader again (a dead one answers nothing, ever).
                Err(e @ RpcError::Timeout { .. }) => {
                    self.set_leader(None);
                    return Err(e);
                }
                Ok(None) | Err(_) => self.set_leader(None),
            }
        }
        let probe = LockRequest::Status {
            name: name_of(request).to_string(),
        };
        let agents = &self.inner.agents;
        let first = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut found = None;
        for i in 0..agents.len() {
            let to = agents[(first + i) % agents.len()];
            let remaining = left(&self.inner.clock);
            if remaining.is_zero() {
                return Err(RpcError::Timeout { after: timeout });
            }
            if let Ok(Some(LockReply::Status { .. })) =
                self.ask(to, &probe, remaining.min(PROBE_TIMEOUT)).await
            {
                found = Some(to);
                break;
            }
        }
        let Some(leader) = found else {
            return Ok(LockReply::NoQuorum);
        };
        self.set_leader(Some(leader));
        let remaining = left(&self.inner.clock);
        if remaining.is_zero() {
            return Err(RpcError::Timeout { after: timeout });
        }
        match self.ask_watching(leader, request, remaining).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                self.set_leader(None);
                Ok(LockReply::NotLeader)
            }
            Err(e) => {
                self.set_leader(None);
                Err(e)
            }
        }
    }
}

/// The name a request is about (a discovery probe asks about the same).
fn name_of(request: &LockRequest) -> &str {
    match request {
        LockRequest::Acquire { name, .. }
        | LockRequest::Renew { name, .. }
        | LockRequest::Release { name, .. }
        | LockRequest::Status { name } => name,
        _ => "probe",
    }
}

#[async_trait]
impl LockPath for RemoteClient {
    /// Routed to the leader ([`RemoteClient::route`]); what it answers
    /// keeps the record of held locks that `close` releases.
    async fn lock_request(
        &self,
        request: LockRequest,
        timeout: Duration,
    ) -> Result<LockReply, PathError> {
        let reply = self.route(&request, timeout).await?;
        self.track(&request, &reply);
        Ok(reply)
    }

    fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    fn drift(&self) -> f64 {
        self.inner.drift
    }

    fn is_stopped(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn request_id_prefix(&self) -> String {
        "remote-".to_string()
    }

    /// Always: even with no leader cached, an attempt's discovery may find
    /// one and deliver the request, so the acquire flow must count every
    /// attempt as possibly pending at a leader (and keep listening).
    fn knows_leader(&self) -> bool {
        true
    }

    async fn pause_for_leader(&self, pause: Duration) {
        let _ = tokio::time::timeout(pause, self.inner.changed.notified()).await;
    }
}
