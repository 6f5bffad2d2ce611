//! The demo's payments service: clients send payments, each with a
//! transaction id, through the idempotency HTTP API of random agents.
//! Some answers are "lost" on purpose (the client times out and retries
//! on another agent); agents die under them (the demo kills the leader).
//! A payment is charged once however often it is retried, and every
//! retry gets the first charge's id.
//!
//! Owns: the workload and its count. The charges ledger stands for the
//! payment processor: what it counts is what a customer would be billed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{Value, json};

use super::http::post_json_status;

/// How long a client tries one payment before giving up on it.
const PAYMENT_DEADLINE: Duration = Duration::from_secs(20);
/// One HTTP call's timeout: the client's "network timeout".
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// The share of answers the clients drop on purpose, to retry.
const LOST_ANSWERS: f64 = 0.25;

/// The payment processor's ledger and what the clients were told.
#[derive(Default)]
pub struct Ledger {
    /// Charges made, by transaction id: the charge ids.
    charges: Mutex<BTreeMap<String, Vec<String>>>,
    /// What each transaction's client was finally told.
    told: Mutex<BTreeMap<String, String>>,
    /// Answers that were replays of an earlier charge.
    replays: AtomicU64,
    /// Replays whose charge id differed from the first answer's.
    differing: AtomicU64,
    /// Payments given up after the deadline.
    abandoned: AtomicU64,
    next_charge: AtomicU64,
}

/// What the payments came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Payments answered.
    pub payments: usize,
    /// Charges made.
    pub charges: usize,
    /// Payments charged more than once.
    pub duplicates: usize,
    /// Answers that were replays.
    pub replays: u64,
    /// Replays that differed from the first answer (must be 0).
    pub differing: u64,
    /// Payments given up (no quorum for the whole deadline).
    pub abandoned: u64,
}

impl Ledger {
    /// The processor: charges `txn` and returns the charge id, unless a
    /// charge of it exists and `reuse` (a recovered claim reconciles with
    /// the processor instead of charging again).
    fn charge(&self, txn: &str, reuse: bool) -> String {
        let mut charges = self.charges.lock().unwrap();
        let list = charges.entry(txn.to_string()).or_default();
        if reuse && let Some(first) = list.first() {
            return first.clone();
        }
        let id = format!(
            "ch_{}",
            self.next_charge.fetch_add(1, Ordering::Relaxed) + 1
        );
        list.push(id.clone());
        id
    }

    fn tell(&self, txn: &str, charge: &str, replayed: bool) {
        let mut told = self.told.lock().unwrap();
        if replayed {
            self.replays.fetch_add(1, Ordering::Relaxed);
        }
        match told.get(txn) {
            Some(first) if first != charge => {
                self.differing.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {}
            None => {
                told.insert(txn.to_string(), charge.to_string());
            }
        }
    }

    /// The count so far.
    pub fn summary(&self) -> Summary {
        let charges = self.charges.lock().unwrap();
        Summary {
            payments: self.told.lock().unwrap().len(),
            charges: charges.values().map(Vec::len).sum(),
            duplicates: charges.values().filter(|c| c.len() > 1).count(),
            replays: self.replays.load(Ordering::Relaxed),
            differing: self.differing.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// One payments client: pays until `stop`, each payment through random
/// agents of `https`, retrying on timeouts and refusals.
pub fn client(idx: usize, https: Vec<SocketAddr>, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let mut rng = rand::rng();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let txn = format!("txn-{idx}-{n}");
        let amount = rng.random_range(1..500);
        let fingerprint = format!("pay {amount} EUR to merchant-{}", idx % 3);
        let started = Instant::now();
        let mut done = false;
        while !done && started.elapsed() < PAYMENT_DEADLINE {
            let http = https[rng.random_range(0..https.len())];
            done = attempt(http, &txn, &fingerprint, &ledger, &mut rng);
            if !done {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !done {
            ledger.abandoned.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(10..60)));
    }
}

/// One try of a payment through `http`: true once the client has its
/// answer.
fn attempt(
    http: SocketAddr,
    txn: &str,
    fingerprint: &str,
    ledger: &Ledger,
    rng: &mut impl rand::Rng,
) -> bool {
    let begin = json!({"fingerprint": fingerprint, "ttl_ms": 3_600_000,
                       "claim_ttl_ms": 3000, "wait_ms": 2000});
    let path = format!("/v1/idempotency/{txn}/begin");
    let Ok((status, body)) = post_json_status(http, &path, &begin, CALL_TIMEOUT) else {
        return false;
    };
    match (status, body["state"].as_str()) {
        (200, Some("completed")) => {
            let Some(charge) = charge_of(&body["result"]) else {
                return false;
            };
            ledger.tell(txn, &charge, true);
            true
        }
        (200, Some("acquired")) => {
            let claim = body["claim_str"].as_str().unwrap_or_default().to_string();
            // Recovered: an earlier claimant may have charged; ask the
            // processor before charging again.
            let recovered = body["recovered"].as_bool().unwrap_or(false);
            let charge = ledger.charge(txn, recovered);
            let complete = json!({"claim": claim, "result": {"charge": charge}});
            let path = format!("/v1/idempotency/{txn}/complete");
            let answer = post_json_status(http, &path, &complete, CALL_TIMEOUT);
            // The client times out (or the answer is lost on purpose):
            // it retries the payment on another agent.
            if rng.random_bool(LOST_ANSWERS) {
                return false;
            }
            match answer {
                Ok((200, _)) => {
                    ledger.tell(txn, &charge, false);
                    true
                }
                _ => false,
            }
        }
        _ => false,
    }
}

fn charge_of(result: &Value) -> Option<String> {
    result["charge"].as_str().map(String::from)
}
