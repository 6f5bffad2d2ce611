//! The clients of `meshd bench churn`, as contract-following clients
//! behave, each recording what it was told for the safety checkers:
//!
//! - lock clients on the library's remote client (QUIC): acquire one of
//!   a set of names with a TTL and a wait, under one request id through
//!   failovers, hold a moment, release; every hold goes to the lock
//!   history with the validity the client may believe (CONTRACT.md: from
//!   the send of the successful acquire);
//! - idempotency clients on the HTTP API of random agents: begin with a
//!   request id, run the operation (an execution with a result of its
//!   own), complete; a call that times out, or an answer dropped on
//!   purpose, is retried on another agent; every execution and every
//!   answer goes to the idempotency history.
//!
//! Owns: the clients and the operation log. Decides nothing about faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::client::RemoteClient;
use crate::harness::http::post_json_status;
use crate::idempotency::history::{Answer, Execution, IdempotencyHistory};
use crate::ids::Token;
use crate::locks::history::{Hold, LockHistory};
use crate::locks::{LockError, LockPath, LockReply, LockRequest};

/// The locks' TTL: shorter than every pause of the schedule.
pub const LOCK_TTL: Duration = Duration::from_secs(2);
/// How long an acquire waits for a held lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(1);
/// The claims' lease: shorter than every pause of the schedule.
pub const CLAIM_TTL: Duration = Duration::from_secs(2);
/// How long a client keeps retrying one operation before giving it up.
pub const GIVE_UP: Duration = Duration::from_secs(20);
/// One HTTP call's timeout: the idempotency clients' "network timeout".
const HTTP_TIMEOUT: Duration = Duration::from_millis(1500);
/// The share of completions whose answer the client drops on purpose,
/// to retry the operation elsewhere.
const DROPPED_ANSWERS: f64 = 0.2;

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A lock granted (then held a moment and released).
    Acquire,
    /// An idempotent operation answered (run, or replayed).
    Idempotent,
}

/// One successful operation.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// Which.
    pub kind: OpKind,
    /// When the client had its answer, from the run's start.
    pub end: Duration,
    /// From the client's first try to the answer, retries included.
    pub latency: Duration,
}

/// What the clients share with the run.
pub struct Shared {
    /// The run's start.
    pub t0: Instant,
    /// Set to stop the clients.
    pub stop: AtomicBool,
    /// Successful operations.
    pub ops: Mutex<Vec<Op>>,
    /// Operations given up after [`GIVE_UP`].
    pub given_up: AtomicU64,
    /// Answers the idempotency clients dropped on purpose.
    pub dropped: AtomicU64,
    /// Holds of locks.
    pub locks: Mutex<LockHistory>,
    /// Executions and answers of idempotent operations.
    pub idempotency: Mutex<IdempotencyHistory>,
    next_execution: AtomicU64,
}

impl Shared {
    /// Shared state of a run starting now.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            t0: Instant::now(),
            stop: AtomicBool::new(false),
            ops: Mutex::default(),
            given_up: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            locks: Mutex::default(),
            idempotency: Mutex::default(),
            next_execution: AtomicU64::new(0),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn done(&self, kind: OpKind, began: Instant) {
        self.ops.lock().unwrap().push(Op {
            kind,
            end: self.t0.elapsed(),
            latency: began.elapsed(),
        });
    }

    /// Operations so far.
    pub fn count(&self) -> usize {
        self.ops.lock().unwrap().len()
    }
}

/// A lock client on the remote client, until the run stops.
pub async fn lock_client(
    idx: usize,
    seed: u64,
    names: usize,
    client: RemoteClient,
    run: Arc<Shared>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x10c6 ^ ((idx as u64) << 32));
    let drift = client.drift();
    let label = format!("lock-client-{idx}");
    let mut n = 0u64;
    while !run.stopped() {
        n += 1;
        let name = format!("churn-{}", rng.random_range(0..names.max(1)));
        let request_id = format!("{label}-{n}");
        let began = Instant::now();
        // A refused acquire (no quorum, or its node shutting down) is
        // retried under the same request id, so a grant made meanwhile is
        // handed back, not stranded.
        let grant = loop {
            let lock = client
                .lock(name.clone())
                .ttl(LOCK_TTL)
                .wait(LOCK_WAIT)
                .request_id(request_id.clone());
            match lock.acquire_token().await {
                Ok(g) => break Some(g),
                Err(LockError::Held(_)) => break None,
                Err(_) if began.elapsed() >= GIVE_UP || run.stopped() => {
                    run.given_up.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let Some(grant) = grant else {
            continue;
        };
        let from = client.clock_now();
        run.done(OpKind::Acquire, began);
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..=2_000))).await;
        let release_sent = client.clock_now();
        let valid_until = grant.sent + grant.ttl.mul_f64(1.0 - drift);
        run.locks.lock().unwrap().record(Hold {
            lock: name.clone(),
            client: label.clone(),
            token: grant.token,
            from,
            until: valid_until.min(release_sent),
        });
        // Released until the leader answers (or the lease is over anyway).
        let request = LockRequest::Release {
            name,
            token: grant.token,
        };
        while client.clock_now() < valid_until {
            match client
                .lock_request(request.clone(), Duration::from_millis(500))
                .await
            {
                Ok(LockReply::Released | LockReply::Lost | LockReply::Ended) => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// An idempotency client on the agents' HTTP API (`https`), until the
/// run stops. Blocking: run it on a thread of its own.
pub fn idempotency_client(idx: usize, seed: u64, https: Vec<SocketAddr>, run: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1de0 ^ ((idx as u64) << 32));
    let label = format!("idempotency-client-{idx}");
    let mut n = 0u64;
    while !run.stopped() {
        n += 1;
        let key = format!("churn-{idx}-{n}");
        let began = Instant::now();
        let mut attempt = Attempt {
            key: &key,
            label: &label,
            generation: 0,
            ran: None,
            run: &run,
        };
        loop {
            if began.elapsed() >= GIVE_UP || run.stopped() {
                run.given_up.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let http = https[rng.random_range(0..https.len())];
            if attempt.once(http, &mut rng) {
                run.done(OpKind::Idempotent, began);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Attempt<'a> {
    key: &'a str,
    label: &'a str,
    /// Which request id the begin carries: a new one once the claim of
    /// the last is gone (410).
    generation: u64,
    /// The claim this client last ran the operation under, and its
    /// result.
    ran: Option<(u64, serde_json::Value)>,
    run: &'a Shared,
}

impl Attempt<'_> {
    /// One try through `http`: true once the client has its answer.
    fn once(&mut self, http: SocketAddr, rng: &mut StdRng) -> bool {
        let begin = json!({
            "fingerprint": format!("fp-{}", self.key),
            "ttl_ms": 600_000,
            "claim_ttl_ms": CLAIM_TTL.as_millis() as u64,
            "wait_ms": 1000,
            "request_id": format!("{}-{}", self.key, self.generation),
        });
        let path = format!("/v1/idempotency/{}/begin", self.key);
        let Ok((status, body)) = post_json_status(http, &path, &begin, HTTP_TIMEOUT) else {
            return false;
        };
        match (status, body["state"].as_str()) {
            (200, Some("completed")) => {
                self.answered(&body["result"], true);
                true
            }
            (200, Some("acquired")) => {
                let Some(claim) = body["claim"].as_u64() else {
                    return false;
                };
                // The begin's retry hands back a claim this client ran
                // the operation under already (its completion's answer was
                // lost): complete that run, do not run again.
                let result = match &self.ran {
                    Some((c, result)) if *c == claim => result.clone(),
                    _ => {
                        let result = json!({
                            "execution": self.run.next_execution.fetch_add(1, Ordering::Relaxed),
                        });
                        self.run.idempotency.lock().unwrap().executed(Execution {
                            key: self.key.to_string(),
                            client: self.label.to_string(),
                            claim: Token(claim),
                            recovered: body["recovered"] == true,
                            result: bytes(&result),
                            at: self.run.t0.elapsed(),
                        });
                        self.ran = Some((claim, result.clone()));
                        result
                    }
                };
                let complete = json!({"claim": body["claim_str"], "result": result});
                let path = format!("/v1/idempotency/{}/complete", self.key);
                let answer = post_json_status(http, &path, &complete, HTTP_TIMEOUT);
                if rng.random_bool(DROPPED_ANSWERS) {
                    self.run.dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                match answer {
                    Ok((200, _)) => {
                        self.answered(&result, false);
                        true
                    }
                    Ok((410, _)) => {
                        self.generation += 1;
                        false
                    }
                    _ => false,
                }
            }
            (410, _) => {
                self.generation += 1;
                false
            }
            _ => false,
        }
    }

    fn answered(&self, result: &serde_json::Value, replayed: bool) {
        self.run.idempotency.lock().unwrap().answered(Answer {
            key: self.key.to_string(),
            client: self.label.to_string(),
            replayed,
            result: bytes(result),
            at: self.run.t0.elapsed(),
        });
    }
}

/// A result as the checkers compare it: its JSON text (object keys in
/// order, so the same value gives the same bytes).
fn bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}
