//! Idempotent operations in simulated clusters under virtual time: a
//! retried operation runs once and every retry gets the first result
//! (DESIGN.md "Idempotency", I1–I7). Every test prints its seed; replay
//! one with `COORDMESH_SEED=<seed>` (and `COORDMESH_SIM_SEEDS=1` for the
//! chaos run).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordmesh::idempotency::{IdempotencyError, Outcome};
use coordmesh::sim::SimCluster;
use coordmesh::{Mesh, NodeId};

fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

/// The leader every running node agrees on, if they do.
fn leader(c: &SimCluster) -> Option<NodeId> {
    let running = c.running();
    let first = c.mesh(running[0]).leader()?;
    (running.contains(&first.id) && running.iter().all(|id| c.mesh(*id).leader() == Some(first)))
        .then_some(first.id)
}

async fn led(c: &SimCluster) -> NodeId {
    c.eventually(Duration::from_secs(5), "a leader all agree on", |c| {
        leader(c).is_some()
    })
    .await;
    leader(c).expect("a leader")
}

async fn cluster(seed: u64, n: u64, voters: u64) -> SimCluster {
    let mut c = SimCluster::new(seed, ids(voters));
    for id in 1..=n {
        c.add(NodeId(id)).await;
    }
    led(&c).await;
    c
}

/// How many times each key's operation ran, and what it returned.
#[derive(Clone, Default)]
struct Ledger {
    runs: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
}

impl Ledger {
    /// The operation: records that it ran, waits `work`, returns a result
    /// unique to this run.
    async fn charge(&self, key: &str, by: NodeId, work: Duration) -> String {
        let result = {
            let mut runs = self.runs.lock().unwrap();
            let list = runs.entry(key.to_string()).or_default();
            let result = format!("{key} charged by {by}, run {}", list.len() + 1);
            list.push(result.clone());
            result
        };
        tokio::time::sleep(work).await;
        result
    }

    fn runs(&self, key: &str) -> Vec<String> {
        self.runs
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

async fn pay(
    mesh: &Mesh,
    ledger: &Ledger,
    key: &str,
    fingerprint: &str,
    work: Duration,
    wait: Duration,
) -> Result<Outcome<String>, IdempotencyError> {
    let (ledger, k, by) = (ledger.clone(), key.to_string(), mesh.id());
    mesh.idempotent(key)
        .fingerprint(fingerprint)
        .claim_ttl(Duration::from_secs(2))
        .wait(wait)
        .run(|| async move { ledger.charge(&k, by, work).await })
        .await
}

/// Goal: an operation runs once; a retry through another node replays its
/// first result (a replay says so); another request with the key is a
/// mismatch (I7); the committed record reaches every node's replica,
/// which then replays it with no network (I2).
#[tokio::test(start_paused = true)]
async fn a_retry_on_another_node_replays_the_first_result() {
    let seed = SimCluster::seed_from_env();
    let mut c = cluster(seed, 5, 3).await;
    let ledger = Ledger::default();
    let first = pay(
        c.mesh(NodeId(4)),
        &ledger,
        "p1",
        "fp",
        Duration::ZERO,
        Duration::ZERO,
    )
    .await
    .expect("executed");
    assert!(
        matches!(first, Outcome::Executed(_)),
        "{first:?} (seed {seed})"
    );
    let result = first.into_inner();
    for id in ids(5) {
        let again = pay(
            c.mesh(id),
            &ledger,
            "p1",
            "fp",
            Duration::ZERO,
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            again,
            Ok(Outcome::Replayed(result.clone())),
            "via {id} (seed {seed})"
        );
    }
    let other = pay(
        c.mesh(NodeId(5)),
        &ledger,
        "p1",
        "other",
        Duration::ZERO,
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        other,
        Err(IdempotencyError::FingerprintMismatch),
        "(seed {seed})"
    );
    assert_eq!(ledger.runs("p1").len(), 1, "ran once (seed {seed})");
    c.eventually(Duration::from_secs(2), "the record on every node", |c| {
        ids(5).into_iter().all(|id| {
            c.mesh(id)
                .idempotency_record("p1")
                .is_some_and(|r| r.committed && r.result == serde_json::to_vec(&result).unwrap())
        })
    })
    .await;
    c.shutdown().await;
}

/// Goal: callers on five nodes at once with one key: one runs it; the
/// others either wait and get its result, or hear "in progress"; none
/// runs it again.
#[tokio::test(start_paused = true)]
async fn concurrent_callers_on_every_node_run_it_once() {
    let seed = SimCluster::seed_from_env();
    let mut c = cluster(seed, 5, 3).await;
    let ledger = Ledger::default();
    let calls: Vec<_> = ids(5)
        .into_iter()
        .map(|id| {
            let (mesh, ledger) = (c.mesh(id).clone(), ledger.clone());
            // Node 5's caller does not wait.
            let wait = if id == NodeId(5) {
                Duration::ZERO
            } else {
                Duration::from_secs(5)
            };
            tokio::spawn(async move {
                pay(&mesh, &ledger, "p2", "fp", Duration::from_millis(300), wait).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let runs = ledger.runs("p2");
    assert_eq!(runs.len(), 1, "{results:?} (seed {seed})");
    let mut executed = 0;
    for r in &results {
        match r {
            Ok(Outcome::Executed(v)) => {
                executed += 1;
                assert_eq!(v, &runs[0]);
            }
            Ok(Outcome::Replayed(v)) => assert_eq!(v, &runs[0], "(seed {seed})"),
            Err(IdempotencyError::InProgress) => {}
            other => panic!("{other:?} (seed {seed})"),
        }
    }
    assert_eq!(executed, 1, "{results:?} (seed {seed})");
    c.shutdown().await;
}

/// Goal: the leader killed while an operation runs: the claim survives
/// the failover (it is renewed, K2 adopts it), the completion is retried
/// to the new leader, and the operation ran once.
#[tokio::test(start_paused = true)]
async fn the_leader_killed_mid_operation_the_completion_reaches_the_next() {
    let seed = SimCluster::seed_from_env();
    let mut c = cluster(seed, 5, 3).await;
    let old = led(&c).await;
    let caller = if old == NodeId(5) {
        NodeId(4)
    } else {
        NodeId(5)
    };
    let ledger = Ledger::default();
    let call = {
        let (mesh, ledger) = (c.mesh(caller).clone(), ledger.clone());
        tokio::spawn(async move {
            pay(
                &mesh,
                &ledger,
                "p3",
                "fp",
                Duration::from_secs(4),
                Duration::ZERO,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill(old).await;
    let outcome = call.await.unwrap();
    assert!(
        matches!(outcome, Ok(Outcome::Executed(_))),
        "{outcome:?} (seed {seed})"
    );
    let other = ids(5)
        .into_iter()
        .find(|id| *id != old && *id != caller)
        .unwrap();
    let again = pay(
        c.mesh(other),
        &ledger,
        "p3",
        "fp",
        Duration::ZERO,
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        again,
        Ok(Outcome::Replayed(outcome.unwrap().into_inner())),
        "(seed {seed})"
    );
    assert_eq!(ledger.runs("p3").len(), 1, "(seed {seed})");
    c.shutdown().await;
}

/// Goal (I5): the claimant's node killed mid-operation: its claim runs
/// out; a caller waiting meanwhile is told `recovered` and runs it; a
/// retry after that replays the recovered run's result.
#[tokio::test(start_paused = true)]
async fn a_claimant_killed_mid_operation_leaves_a_recovered_claim() {
    let seed = SimCluster::seed_from_env();
    let mut c = cluster(seed, 5, 3).await;
    let leader = led(&c).await;
    let mut others = ids(5).into_iter().filter(|id| *id != leader);
    let (doomed, next) = (others.next().unwrap(), others.next().unwrap());
    let ledger = Ledger::default();
    {
        let (mesh, ledger) = (c.mesh(doomed).clone(), ledger.clone());
        tokio::spawn(async move {
            let _ = pay(
                &mesh,
                &ledger,
                "p4",
                "fp",
                Duration::from_secs(60),
                Duration::ZERO,
            )
            .await;
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ledger.runs("p4").len(),
        1,
        "the first claimant started (seed {seed})"
    );
    let busy = pay(
        c.mesh(next),
        &ledger,
        "p4",
        "fp",
        Duration::ZERO,
        Duration::ZERO,
    )
    .await;
    assert_eq!(busy, Err(IdempotencyError::InProgress), "(seed {seed})");
    c.kill(doomed).await;
    let outcome = pay(
        c.mesh(next),
        &ledger,
        "p4",
        "fp",
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await
    .expect("recovered");
    let Outcome::RecoveredThenExecuted(result) = outcome else {
        panic!("{outcome:?} (seed {seed})");
    };
    assert_eq!(ledger.runs("p4").len(), 2, "(seed {seed})");
    let again = pay(
        c.mesh(leader),
        &ledger,
        "p4",
        "fp",
        Duration::ZERO,
        Duration::ZERO,
    )
    .await;
    assert_eq!(again, Ok(Outcome::Replayed(result)), "(seed {seed})");
    c.shutdown().await;
}

/// An operation on `key` with a claim TTL within the simulation's
/// `lock-ttl-max-ms` (3 s).
fn idem(mesh: &Mesh, key: impl Into<String>) -> coordmesh::idempotency::Idempotent {
    mesh.idempotent(key).claim_ttl(Duration::from_secs(2))
}

/// Goal: bad input is refused with a clear error and nothing is recorded.
#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_and_nothing_recorded() {
    let seed = SimCluster::seed_from_env();
    let mut c = cluster(seed, 3, 3).await;
    let mesh = c.mesh(NodeId(2));
    let long = "k".repeat(201);
    let r = idem(mesh, long).run(|| async { 1 }).await;
    assert!(matches!(r, Err(IdempotencyError::InvalidKey(_))), "{r:?}");
    let r = idem(mesh, "").run(|| async { 1 }).await;
    assert!(matches!(r, Err(IdempotencyError::InvalidKey(_))), "{r:?}");
    let r = idem(mesh, "k")
        .fingerprint(vec![0u8; 257])
        .run(|| async { 1 })
        .await;
    assert!(matches!(r, Err(IdempotencyError::Invalid(_))), "{r:?}");
    let r = idem(mesh, "k")
        .ttl(Duration::from_millis(999))
        .run(|| async { 1 })
        .await;
    assert!(matches!(r, Err(IdempotencyError::Invalid(_))), "{r:?}");
    let r = idem(mesh, "big")
        .run(|| async { "x".repeat(64 * 1024) })
        .await;
    assert!(
        matches!(r, Err(IdempotencyError::ResultTooLarge { .. })),
        "{r:?}"
    );
    // The claim was given up, nothing recorded: the key runs again.
    let r = idem(mesh, "big").run(|| async { 2 }).await;
    assert_eq!(r, Ok(Outcome::Executed(2)), "(seed {seed})");
    // A failure is not recorded unless asked: a retry runs again.
    let failed = idem(mesh, "f")
        .try_run(|| async { Err::<u32, String>("declined".into()) })
        .await;
    assert_eq!(failed, Ok(Outcome::Executed(Err("declined".into()))));
    let retried = idem(mesh, "f")
        .try_run(|| async { Ok::<u32, String>(7) })
        .await;
    assert_eq!(retried, Ok(Outcome::Executed(Ok(7))));
    let kept = idem(mesh, "g")
        .record_errors(true)
        .try_run(|| async { Err::<u32, String>("declined".into()) })
        .await;
    assert_eq!(kept, Ok(Outcome::Executed(Err("declined".into()))));
    let replayed = idem(mesh, "g")
        .try_run(|| async { Ok::<u32, String>(7) })
        .await;
    assert_eq!(
        replayed,
        Ok(Outcome::Replayed(Err("declined".into()))),
        "(seed {seed})"
    );
    assert!(mesh.idempotency_record("k").is_none());
    c.shutdown().await;
}
