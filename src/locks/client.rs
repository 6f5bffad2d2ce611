//! The holder's side of a lock: [`LockBuilder`] asks the leader (through
//! any node), [`LockGuard`] keeps the lease and knows, conservatively,
//! when it ends.
//!
//! Validity is counted from the *send* time of the last acquire or renew
//! that succeeded: `sent + ttl·(1−ρ)`. The leader keeps the lease for
//! `ttl·(1+ρ)/(1−ρ)` from when it *received* the request (K3), so the
//! holder always stops believing first, whatever the delays and however
//! the two clocks drift within `ρ`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::holder::HolderLease;
use super::table::REQUESTER_GRACE;
use super::{InvalidRequest, LockReply, LockRequest, Space, check_acquire};
use crate::ids::Token;

/// The way to the leader that a lock client takes: a node of the mesh
/// ([`Mesh`](crate::Mesh)), or a remote client outside it. The acquire
/// flow, the guard's renewals and releases are the same over either.
#[async_trait::async_trait]
pub trait LockPath: Send + Sync + 'static {
    /// Sends one lock request to the leader and returns its answer
    /// (`NoQuorum` when no leader is known).
    async fn lock_request(
        &self,
        request: LockRequest,
        timeout: Duration,
    ) -> Result<LockReply, PathError>;
    /// The protocol clock (T1), on which validity is counted.
    fn now(&self) -> Duration;
    /// The drift bound ρ between this clock and the leader's.
    fn drift(&self) -> f64;
    /// True once the path is closed for good (the node stopped).
    fn is_stopped(&self) -> bool;
    /// A prefix for generated request ids, unique to this client.
    fn request_id_prefix(&self) -> String;
    /// True when an attempt sent now may reach a leader (and so may be
    /// pending there when its answer is lost): the acquire flow then keeps
    /// listening past its wait. When false, nothing is sent.
    fn knows_leader(&self) -> bool;
    /// Waits up to `pause`, or less if the leader changes meanwhile.
    async fn pause_for_leader(&self, pause: Duration);
    /// The run of the node whose process a guard taken through this path
    /// lives in, when a later run of that node can prove it ended (K5:
    /// a node with a data directory); `None` otherwise.
    fn holder_generation(&self) -> Option<crate::ids::Generation> {
        None
    }
    /// Wall-clock milliseconds since the Unix epoch (an idempotency
    /// record's expiry is in them, I6; never a lease).
    fn wall_ms(&self) -> u64 {
        crate::clock::Clock::Boottime.wall_ms()
    }
}

/// Why a request got no answer on its path to the leader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// No answer in time: the request may have reached a leader and been
    /// acted on; a retry with the same request id settles it.
    #[error("no answer within {} ms", after.as_millis())]
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },
    /// The path is closed: its node stopped, or the client was closed.
    #[error("the path to the leader is closed")]
    Closed,
    /// No answer for another reason (the peer unreachable or refusing, a
    /// malformed answer); the request's fate is unknown.
    #[error("{0}")]
    Failed(String),
}

/// Why a lock operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another client held the lock for the whole wait.
    #[error("lock {0:?} is held by another client")]
    Held(String),
    /// No leader with a quorum answered within the wait; retry later.
    #[error("no leader with a quorum could answer in time")]
    NoQuorum,
    /// The lease is over: the token no longer holds the lock.
    #[error("the lock was lost")]
    Lost,
    /// The name is empty or longer than 256 bytes.
    #[error("{0}")]
    InvalidName(InvalidRequest),
    /// The TTL (or wait, or request id) is outside the limits.
    #[error("{0}")]
    InvalidTtl(String),
    /// The lock's waiting queue is full.
    #[error("the lock's queue is full ({max} waiters)")]
    QueueFull {
        /// The bound (`lock-waiters-max`).
        max: usize,
    },
    /// This node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// The longest one attempt waits for an answer. A waiter stays queued at
/// the leader for its whole wait; a retry with the same request id takes
/// its place again, so attempts can be short, and a leader that died
/// with the request costs at most this. Attempts are also at most half
/// the TTL, so a grant answered to one leaves at least half its lease.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The longest one renewal or release waits for an answer.
const RENEW_TIMEOUT: Duration = Duration::from_millis(250);
/// Pause between attempts while no leader answers.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The longest a guard goes without comparing its validity with the
/// protocol clock. Its timers run on a clock that stops while the host is
/// suspended; the protocol clock (CLOCK_BOOTTIME) does not, so after a
/// resume `lost()` fires within this, not a renewal interval late (T1).
pub const VALIDITY_CHECK: Duration = Duration::from_millis(10);

/// A lock to acquire: `mesh.lock(name).ttl(d).wait(d).acquire()`.
#[derive(Clone)]
pub struct LockBuilder {
    mesh: Arc<dyn LockPath>,
    name: String,
    ttl: Duration,
    wait: Duration,
    request_id: Option<String>,
}

impl LockBuilder {
    pub(crate) fn new(mesh: Arc<dyn LockPath>, name: String) -> LockBuilder {
        LockBuilder {
            mesh,
            name,
            ttl: Duration::from_secs(5),
            wait: Duration::ZERO,
            request_id: None,
        }
    }

    /// The lease length (default 5 s; 100 ms to 1 h). Short TTLs cost
    /// little: the guard renews at a third of it.
    pub fn ttl(mut self, ttl: Duration) -> LockBuilder {
        self.ttl = ttl;
        self
    }

    /// How long to wait in the lock's queue, and for a leader (default 0;
    /// at most 60 s).
    pub fn wait(mut self, wait: Duration) -> LockBuilder {
        self.wait = wait;
        self
    }

    /// A request id: a retry of the acquire (even from another call) with
    /// the same id gets the same grant (K4). One is generated otherwise,
    /// and used for this call's own retries.
    pub fn request_id(mut self, id: impl Into<String>) -> LockBuilder {
        self.request_id = Some(id.into());
        self
    }

    /// Acquires without waiting: `Held` if another client holds it.
    pub async fn try_acquire(self) -> Result<LockGuard, LockError> {
        self.wait(Duration::ZERO).acquire().await
    }

    /// Acquires, waiting up to the wait in FIFO order behind earlier
    /// requests. A missing leader is waited for within the wait too.
    pub async fn acquire(self) -> Result<LockGuard, LockError> {
        let mesh = self.mesh.clone();
        let name = self.name.clone();
        // K5: the guard lives in this process; tell the leader which run
        // of its node that is.
        let bound = mesh.holder_generation();
        let grant = self.grant(bound).await?;
        Ok(LockGuard::start(
            mesh,
            Space::Lock,
            name,
            grant.token,
            grant.ttl,
            grant.sent,
        ))
    }

    /// Acquires without a guard: the caller renews and releases (the
    /// agent's HTTP API does, for its clients).
    pub async fn acquire_token(self) -> Result<Grant, LockError> {
        self.grant(None).await
    }

    /// The acquire flow; `bound`: the run the holder lives in (K5).
    async fn grant(self, bound: Option<crate::ids::Generation>) -> Result<Grant, LockError> {
        let ttl_ms = self.ttl.as_millis() as u64;
        let wait_ms = self.wait.as_millis() as u64;
        check_acquire(&self.name, ttl_ms, wait_ms, self.request_id.as_deref()).map_err(
            |e| match e {
                InvalidRequest::Name(_) => LockError::InvalidName(e),
                other => LockError::InvalidTtl(other.to_string()),
            },
        )?;
        let mesh = &self.mesh;
        let drift = mesh.drift();
        let fresh_id = || super::fresh_request_id(&mesh.request_id_prefix());
        let mut request_id = self.request_id.clone().unwrap_or_else(fresh_id);
        let start = mesh.now();
        let deadline = start + self.wait;
        // K4: past the wait, keep listening (retrying with the request
        // id) while an attempt that reached a leader has an unknown fate:
        // the leader answers its grant up to `REPLY_GRACE` past the wait,
        // and releases it after; this window covers that and a round trip.
        let listen_until = deadline + REQUESTER_GRACE;
        let attempt_max = ATTEMPT_TIMEOUT.min(self.ttl / 2);
        let mut in_flight = false;
        // A grant answered too late to use: released if this call fails.
        let mut unused = None;
        let give_up = |unused: Option<Token>| {
            if let Some(token) = unused {
                let (mesh, name, ttl) = (mesh.clone(), self.name.clone(), self.ttl);
                tokio::spawn(async move {
                    let _ = release(&*mesh, Space::Lock, &name, token, ttl).await;
                });
            }
            Err(LockError::NoQuorum)
        };
        let mut first = true;
        loop {
            if mesh.is_stopped() {
                return Err(LockError::ShuttingDown);
            }
            let sent = mesh.now();
            let over = sent >= listen_until || (sent >= deadline && !in_flight);
            if over && !std::mem::take(&mut first) {
                return give_up(unused);
            }
            first = false;
            let remaining = deadline.saturating_sub(sent);
            let request = match bound {
                Some(generation) => LockRequest::AcquireBound {
                    name: self.name.clone(),
                    ttl_ms,
                    wait_ms: remaining.as_millis() as u64,
                    request_id: Some(request_id.clone()),
                    generation,
                },
                None => LockRequest::Acquire {
                    name: self.name.clone(),
                    ttl_ms,
                    wait_ms: remaining.as_millis() as u64,
                    request_id: Some(request_id.clone()),
                },
            };
            let timeout = attempt_max.min(listen_until - sent);
            let reaches_leader = mesh.knows_leader();
            let answer = mesh.lock_request(request, timeout).await;
            match answer {
                Ok(LockReply::Granted { token, ttl_ms }) => {
                    let ttl = Duration::from_millis(ttl_ms);
                    if mesh.now() < sent + ttl.mul_f64(1.0 - drift) {
                        return Ok(Grant { token, ttl, sent });
                    }
                    // Answered too late to be of use (a slow answer to a
                    // queued request): the grant holds at the leader, and
                    // a retry with the request id is answered like a
                    // renewal, valid from its own send.
                    in_flight = true;
                    unused = Some(token);
                    continue;
                }
                Ok(LockReply::Held) => return Err(LockError::Held(self.name)),
                Ok(LockReply::QueueFull { max }) => return Err(LockError::QueueFull { max }),
                Ok(LockReply::Invalid(message)) => return Err(LockError::InvalidTtl(message)),
                // The grant made for this request ended before any answer
                // reached this call (lost through a failover, then
                // expired). A generated id is this call's own: start over
                // with a new one. A caller's id is the caller's to renew.
                Ok(LockReply::Ended) if self.request_id.is_none() => {
                    request_id = fresh_id();
                    in_flight = false;
                    unused = None;
                }
                Ok(LockReply::Ended) => return Err(LockError::Lost),
                Err(PathError::Closed) if mesh.is_stopped() => {
                    return Err(LockError::ShuttingDown);
                }
                // Handled by no leader: nothing is pending there.
                Ok(LockReply::NotLeader) => {}
                // No leader, a leader change, or a lost message: retry
                // with the same request id until the wait is over.
                other => {
                    in_flight |= reaches_leader;
                    tracing::debug!(lock = %self.name, ?other, "acquire: retrying");
                    if matches!(other, Err(PathError::Timeout { .. })) {
                        continue;
                    }
                }
            }
            let now = mesh.now();
            let until = if in_flight { listen_until } else { deadline };
            if now >= until {
                return give_up(unused);
            }
            mesh.pause_for_leader(RETRY_PAUSE.min(until - now)).await;
        }
    }
}

/// A grant without a guard (see [`LockBuilder::acquire_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The fencing token.
    pub token: Token,
    /// The TTL granted.
    pub ttl: Duration,
    /// When the successful attempt was sent, on the protocol clock: the
    /// lease is valid until this plus the TTL (less the drift margin).
    pub sent: Duration,
}

struct GuardState {
    /// The holder's count of the lease (lost once released, too).
    lease: HolderLease,
    /// The leader said the token does not hold the lock (or it was
    /// released): nothing to release any more.
    gone: bool,
}

/// A held lock. Renews in the background; [`LockGuard::lost`] resolves
/// the moment its validity ends (or its renewal is refused, or the node
/// stops). Dropping it releases the lock (best effort, in the
/// background); [`LockGuard::release`] releases and reports.
pub struct LockGuard {
    mesh: Arc<dyn LockPath>,
    /// A user lock, or an idempotency claim (renewed and given up by
    /// the requests of claims).
    space: Space,
    name: String,
    token: Token,
    ttl: Duration,
    state: Arc<Mutex<GuardState>>,
    lost: watch::Receiver<bool>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("token", &self.token)
            .finish()
    }
}

impl LockGuard {
    pub(crate) fn start(
        mesh: Arc<dyn LockPath>,
        space: Space,
        name: String,
        token: Token,
        ttl: Duration,
        sent: Duration,
    ) -> LockGuard {
        let drift = mesh.drift();
        let state = Arc::new(Mutex::new(GuardState {
            lease: HolderLease::granted(sent, ttl, drift),
            gone: false,
        }));
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew(
            mesh.clone(),
            space,
            name.clone(),
            token,
            state.clone(),
            lost_tx,
        ));
        LockGuard {
            mesh,
            space,
            name,
            token,
            ttl,
            state,
            lost,
            renewer: Some(renewer),
        }
    }

    /// The fencing token: pass it to every resource the holder acts on.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TTL granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True while the lease is valid by the holder's conservative count
    /// and the guard's path is open (its node runs, its remote client is
    /// not closed: a closed path may already have released the lock).
    /// Check it right before each act (and fence what can be delayed).
    pub fn is_valid(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lease.is_valid(self.mesh.now()) && !self.mesh.is_stopped()
    }

    /// When the lease's validity ends, on the protocol clock
    /// of the guard's path ([`crate::Mesh::clock_now`], or
    /// [`crate::client::RemoteClient::clock_now`]); it moves later with
    /// each renewal.
    pub fn valid_until(&self) -> Duration {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lease
            .valid_until()
    }

    /// How long the lease stays valid from now, by the holder's count.
    pub fn remaining(&self) -> Duration {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lease.remaining(self.mesh.now())
    }

    /// Resolves when the lease is over: validity ran out, a renewal was
    /// refused as lost, or the node stopped.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            let _ = rx.wait_for(|lost| *lost).await;
        }
    }

    /// Releases the lock and waits for the leader to confirm it.
    /// `Lost` if the lease was already over (a release still goes out in
    /// the background, in case the token holds at the leader); `NoQuorum`
    /// if no leader confirmed (the lease then ends by its TTL).
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let was_valid = self.is_valid();
        let gone = self.finish();
        if !was_valid {
            if !gone {
                self.release_in_background();
            }
            return Err(LockError::Lost);
        }
        release(&*self.mesh, self.space, &self.name, self.token, self.ttl).await
    }

    /// Stops renewing without releasing: a claim whose completion ended
    /// it at the leader.
    pub(crate) fn settle(mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.finish();
    }

    /// Marks the guard over; true if the token is known not to hold.
    fn finish(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lease.on_lost();
        std::mem::replace(&mut s.gone, true)
    }

    fn release_in_background(&self) {
        if self.mesh.is_stopped() {
            return;
        }
        let (mesh, name, token, ttl) = (self.mesh.clone(), self.name.clone(), self.token, self.ttl);
        let space = self.space;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = release(&*mesh, space, &name, token, ttl).await;
            });
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(renewer) = self.renewer.take() else {
            return;
        };
        renewer.abort();
        // Released even when the lease is over by the holder's count: the
        // leader may still hold it for this token (a grant answered late,
        // a lease that lapsed here first), and nobody else can get it
        // until it is released or expires.
        if !self.finish() {
            self.release_in_background();
        }
    }
}

/// Releases, retrying through leader changes for up to the TTL (after
/// that the lease has ended anyway).
pub(crate) async fn release(
    mesh: &dyn LockPath,
    space: Space,
    name: &str,
    token: Token,
    ttl: Duration,
) -> Result<(), LockError> {
    let give_up = mesh.now() + ttl;
    // After an attempt whose fate is unknown (no answer, or a leader that
    // stepped down with it in flight), "lost" may mean that attempt
    // released it: the lock is not held by this token either way.
    let mut maybe_released = false;
    loop {
        let request = match space {
            Space::Lock => LockRequest::Release {
                name: name.to_string(),
                token,
            },
            Space::Claim => LockRequest::Abort {
                key: name.to_string(),
                claim: token,
            },
        };
        match mesh.lock_request(request, RENEW_TIMEOUT).await {
            Ok(LockReply::Released) => return Ok(()),
            Ok(LockReply::Lost) if maybe_released => return Ok(()),
            Ok(LockReply::Lost) => return Err(LockError::Lost),
            Err(PathError::Closed) if mesh.is_stopped() => {
                return Err(LockError::ShuttingDown);
            }
            // Not handled by a leader: nothing happened.
            Ok(LockReply::NotLeader) => {}
            _ => maybe_released = true,
        }
        if mesh.now() >= give_up {
            return Err(LockError::NoQuorum);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The renewal loop: renew at a third of the TTL; through a failover
/// (no quorum, no answer) retry quickly; give up the moment validity ends.
/// Every sleep is at most [`VALIDITY_CHECK`], since timers stop in a host
/// suspend and validity, on the protocol clock, does not (T1).
async fn renew(
    mesh: Arc<dyn LockPath>,
    space: Space,
    name: String,
    token: Token,
    state: Arc<Mutex<GuardState>>,
    lost: watch::Sender<bool>,
) {
    let lease = || state.lock().unwrap_or_else(|e| e.into_inner()).lease;
    loop {
        let now = mesh.now();
        let l = lease();
        if !l.is_valid(now) || mesh.is_stopped() {
            break;
        }
        if !l.renew_due(now) {
            tokio::time::sleep((l.next_deadline() - now).min(VALIDITY_CHECK)).await;
            continue;
        }
        let until = l.valid_until();
        let sent = mesh.now();
        if sent >= until {
            break;
        }
        let request = match space {
            Space::Lock => LockRequest::Renew {
                name: name.clone(),
                token,
            },
            Space::Claim => LockRequest::RenewClaim {
                key: name.clone(),
                claim: token,
            },
        };
        let answer = tokio::select! {
            // Biased (so a seed replays a run): an answer that came is
            // taken, and counts from `sent` however late it came.
            biased;
            a = mesh.lock_request(request, (until - sent).min(RENEW_TIMEOUT)) => Some(a),
            _ = past(&*mesh, until) => None,
        };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            None => break,
            Some(Ok(LockReply::Renewed { ttl_ms })) => {
                s.lease.on_renewed(sent, Duration::from_millis(ttl_ms));
            }
            Some(Ok(LockReply::Lost)) => {
                s.gone = true;
                break;
            }
            // K6: a failover answers "no quorum"; the lock is kept.
            Some(_) => s.lease.on_renew_failed(mesh.now(), RETRY_PAUSE),
        }
    }
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .lease
        .on_lost();
    let _ = lost.send(true);
}

/// Resolves once the protocol clock passes `until`, checking every
/// [`VALIDITY_CHECK`].
async fn past(mesh: &dyn LockPath, until: Duration) {
    loop {
        let now = mesh.now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(VALIDITY_CHECK)).await;
    }
}
