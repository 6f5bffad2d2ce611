//! Anti-entropy of the idempotency records: every
//! [`ANTI_ENTROPY_INTERVAL`] a node reconciles its records with one live
//! peer (round robin by id), by the exchange of
//! `idempotency::reconcile`, whose bytes grow with the records that
//! differ. Commit notices spread a completion at once; this makes up for
//! the notices a node missed (down, cut off, restarted).
//!
//! Owns: when and with whom to reconcile, and carrying the exchange over
//! RPC. Must not: decide what a record is worth (the store's merge does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::idempotency::Store;
use crate::idempotency::reconcile::{self, Initiator, ReconcileError, ReconcileMessage, Step};
use crate::ids::NodeId;
use crate::membership::Membership;
use crate::rpc::{Request, Response, Rpc};

use super::Shared;

/// How often a node reconciles with a peer, at least.
pub(crate) const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(2);
/// The pause after an exchange is at least this many times what the
/// exchange took: an exchange reads every record's id on both sides, so
/// a large store reconciles less often rather than taking a core.
const PAUSE_PER_EXCHANGE_TIME: u32 = 10;
/// The longest pause: an exchange that walked a large store took long
/// for its transfers, which cost the peer's network more than its core.
const PAUSE_MAX: Duration = Duration::from_secs(30);
/// How soon a node tries again to measure its clock the first time.
const FIRST_MEASUREMENT_RETRY: Duration = Duration::from_millis(100);
/// How long one message of an exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole exchange may take: a walk of a million records takes
/// seconds; a peer that keeps one going (a buggy one answering a record
/// at a time) must not hold up the node's clock measurements, expiry and
/// exchanges with the others for longer.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(120);

/// The responder's side, for the RPC service: answers one message from
/// this node's records (merging what a `Push` brings first).
pub(crate) fn respond(
    store: &Store,
    message: ReconcileMessage,
    now_ms: u64,
) -> Result<ReconcileMessage, ReconcileError> {
    reconcile::respond(&store.at(now_ms), message)
}

/// The initiator's loop: runs until the node stops. Expired records are
/// dropped on the same beat (I6).
pub(crate) async fn run(
    id: NodeId,
    rpc: Arc<Rpc>,
    membership: Arc<Membership>,
    shared: Arc<Shared>,
) {
    let mut round = id.0 as usize;
    let mut pause = ANTI_ENTROPY_INTERVAL;
    // The first measurement as soon as a leader is known: the records
    // answer nothing before it (I6).
    while !shared.records.measured() {
        if shared.is_stopped() {
            return;
        }
        measure_offset(id, &rpc, &membership, &shared).await;
        if !shared.records.measured() {
            tokio::time::sleep(FIRST_MEASUREMENT_RETRY).await;
        }
    }
    loop {
        tokio::time::sleep(pause).await;
        if shared.is_stopped() {
            return;
        }
        measure_offset(id, &rpc, &membership, &shared).await;
        let now_ms = shared.clock.wall_ms();
        shared.records.expire(now_ms);
        let view = membership.view();
        let peers: Vec<SocketAddr> = view
            .members()
            .filter(|m| m.id != id && m.is_alive())
            .map(|m| m.rpc_addr)
            .collect();
        if peers.is_empty() || shared.records.is_loading() {
            continue;
        }
        round = round.wrapping_add(1);
        let peer = peers[round % peers.len()];
        let started = shared.clock.now();
        let result = match tokio::time::timeout(
            EXCHANGE_DEADLINE,
            exchange(&rpc, peer, &shared.records, now_ms),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!("not done within {EXCHANGE_DEADLINE:?}")),
        };
        // A failed exchange may have waited out timeouts: that is no
        // measure of its cost.
        let took = shared.clock.now().saturating_sub(started);
        pause = match result {
            Ok(_) => ANTI_ENTROPY_INTERVAL.max((took * PAUSE_PER_EXCHANGE_TIME).min(PAUSE_MAX)),
            Err(_) => ANTI_ENTROPY_INTERVAL,
        };
        match result {
            Ok(news) => tracing::trace!(%peer, news, "records reconciled"),
            Err(e) => tracing::debug!(%peer, error = %e, "reconciliation abandoned"),
        }
    }
}

/// Measures this node's wall clock against the leader's (I6): the
/// leader's time against the middle of the call, as NTP does (off by at
/// most half the round trip). The leader is its own reference.
async fn measure_offset(id: NodeId, rpc: &Rpc, membership: &Membership, shared: &Shared) {
    let Some(leader) = *shared.leader.borrow() else {
        return;
    };
    if leader.id == id {
        shared.records.set_offset(0);
        return;
    }
    let Some(addr) = membership
        .view()
        .get(leader.id)
        .filter(|m| m.is_alive())
        .map(|m| m.rpc_addr)
    else {
        return;
    };
    let sent = shared.clock.wall_ms();
    if let Ok(Response::Time { wall_ms }) = rpc.call(addr, Request::Time, EXCHANGE_TIMEOUT).await {
        let back = shared.clock.wall_ms();
        let middle = sent / 2 + back / 2;
        let offset = middle as i64 - wall_ms as i64;
        shared.records.set_offset(offset);
        if shared.records.skewed().is_some() {
            tracing::warn!(offset_ms = offset, leader = %leader.id, "this node's clock is off the leader's by more than half the records' skew bound; it answers no idempotency request until fixed");
        }
    }
}

/// One exchange with `peer`: how many records it brought that were news.
pub(super) async fn exchange(
    rpc: &Rpc,
    peer: SocketAddr,
    store: &Store,
    now_ms: u64,
) -> Result<usize, String> {
    let side = store.at(now_ms);
    let (mut me, mut message) = Initiator::start(&side);
    loop {
        let answer = call(rpc, peer, message).await?;
        match me.on_answer(&side, answer).map_err(|e| e.to_string())? {
            Step::Send(next) => message = next,
            Step::Done => {
                if me.walked() {
                    tracing::info!(%peer, news = me.news(), "records differed in more than a table carries: walked the peer's");
                }
                return Ok(me.news());
            }
        }
    }
}

async fn call(
    rpc: &Rpc,
    peer: SocketAddr,
    message: ReconcileMessage,
) -> Result<ReconcileMessage, String> {
    match rpc
        .call(
            peer,
            Request::Reconcile(Box::new(message)),
            EXCHANGE_TIMEOUT,
        )
        .await
    {
        Ok(Response::Reconcile(answer)) => Ok(*answer),
        Ok(_) => Err("an answer of another kind".into()),
        Err(e) => Err(e.to_string()),
    }
}
