//! Named elections for application roles, on top of locks (modelled on
//! etcd's Election API: campaign, observe, resign).
//!
//! The election `NAME` is the lock `election:NAME`: campaigning queues for
//! it, the elected holds it (renewing), resigning releases it, and the
//! lock's token is the term's fencing token. Campaigners are served in
//! the order they asked.

use std::sync::Arc;
use std::time::Duration;

use super::client::{LockBuilder, LockError, LockGuard, LockPath, PathError};
use super::{LockReply, LockRequest, NAME_BYTES_MAX};
use crate::ids::{NodeId, Token};

const PREFIX: &str = "election:";

/// A named election: `mesh.election("scheduler")`.
#[derive(Clone)]
pub struct NamedElection {
    path: Arc<dyn LockPath>,
    name: String,
    ttl: Duration,
}

/// The elected campaigner as observers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Campaign {
    /// The node the elected campaigner runs on.
    pub node: NodeId,
    /// Its term's fencing token.
    pub token: Token,
}

/// Held while elected. Dropping it resigns.
#[derive(Debug)]
pub struct ElectionGuard {
    guard: LockGuard,
}

impl ElectionGuard {
    /// The term's fencing token.
    pub fn token(&self) -> Token {
        self.guard.token()
    }

    /// True while the term is valid by the holder's conservative count.
    pub fn is_valid(&self) -> bool {
        self.guard.is_valid()
    }

    /// Resolves when the term ends without a resign (lease lost).
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.guard.lost()
    }

    /// Gives the role up so the next campaigner is elected at once.
    pub async fn resign(self) -> Result<(), LockError> {
        self.guard.release().await
    }
}

impl NamedElection {
    pub(crate) fn new(path: Arc<dyn LockPath>, name: String) -> NamedElection {
        NamedElection {
            path,
            name,
            ttl: Duration::from_secs(5),
        }
    }

    /// The term's lease (default 5 s): how long the role stays taken after
    /// the elected process dies without resigning.
    pub fn ttl(mut self, ttl: Duration) -> NamedElection {
        self.ttl = ttl;
        self
    }

    fn lock_name(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }

    /// Waits until elected. Retries through leader changes and full
    /// queues; fails only on bad input or shutdown.
    pub async fn campaign(&self) -> Result<ElectionGuard, LockError> {
        if self.name.is_empty() || self.lock_name().len() > NAME_BYTES_MAX {
            return Err(LockError::InvalidName(super::InvalidRequest::Name(
                self.name.len(),
            )));
        }
        let prefix = format!("campaign-{}", self.path.request_id_prefix());
        let request_id = super::fresh_request_id(&prefix);
        loop {
            let attempt = LockBuilder::new(self.path.clone(), self.lock_name())
                .ttl(self.ttl)
                .wait(super::WAIT_MAX)
                .request_id(request_id.clone())
                .acquire()
                .await;
            match attempt {
                Ok(guard) => return Ok(ElectionGuard { guard }),
                Err(LockError::Held(_) | LockError::NoQuorum | LockError::QueueFull { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The elected campaigner now, as the leader sees it (`None`: nobody).
    pub async fn leader(&self) -> Result<Option<Campaign>, LockError> {
        let request = LockRequest::Status {
            name: self.lock_name(),
        };
        match self
            .path
            .lock_request(request, Duration::from_secs(1))
            .await
        {
            Ok(LockReply::Status {
                token: Some(token),
                owner: Some(node),
                ..
            }) => Ok(Some(Campaign { node, token })),
            Ok(LockReply::Status { .. }) => Ok(None),
            Err(PathError::Closed) => Err(LockError::ShuttingDown),
            _ => Err(LockError::NoQuorum),
        }
    }

    /// Each change of the elected campaigner, as a stream of values: the
    /// one now first, then every change, pushed by the leader (a watch it
    /// answers when the holder changes, or after `every` at the latest,
    /// when the observer asks again). After a failed ask (no leader, a
    /// failover) it asks again within `every`. Ends when the node stops
    /// or the receiver is dropped.
    pub fn observe(&self, every: Duration) -> tokio::sync::mpsc::Receiver<Option<Campaign>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let this = self.clone();
        let every = every.clamp(Duration::from_millis(10), super::WAIT_MAX);
        tokio::spawn(async move {
            let mut last: Option<Option<Campaign>> = None;
            loop {
                // The first ask is answered at once; later ones once the
                // holder differs from the last one reported.
                let wait = if last.is_some() {
                    every
                } else {
                    Duration::ZERO
                };
                let request = LockRequest::Watch {
                    name: this.lock_name(),
                    seen: last.flatten().map(|c| c.token),
                    wait_ms: wait.as_millis() as u64,
                };
                let answer = this
                    .path
                    .lock_request(request, wait + Duration::from_secs(1))
                    .await;
                let now = match answer {
                    Ok(LockReply::Status {
                        token: Some(token),
                        owner: Some(node),
                        ..
                    }) => Some(Campaign { node, token }),
                    Ok(LockReply::Status { .. }) => None,
                    Err(PathError::Closed) => return,
                    _ => {
                        tokio::select! {
                            _ = this.path.pause_for_leader(every.min(Duration::from_millis(200))) => {}
                            _ = tx.closed() => return,
                        }
                        continue;
                    }
                };
                if last != Some(now) {
                    last = Some(now);
                    if tx.send(now).await.is_err() {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }
}
