//! The churn schedule in the simulation (feature `sim`): a cluster of
//! many full nodes in one process under virtual time (5 voters with data
//! directories, the rest members), the same faults drawn from the same
//! seed as the real run, clients on random nodes recording what they were
//! told, the same checkers, failovers in virtual time.
//!
//! How the faults map: a kill is [`SimCluster::kill`] then a restart; a
//! pause freezes the node's election driver and cuts all its traffic for
//! the duration (a stopped process's datagrams would wait in its socket
//! buffers; here they are lost); a leave is a graceful shutdown then a
//! restart; partitions cut the simulated network as the namespaces do;
//! a delay slows every link (the simulated network has no per-node
//! delay).
//!
//! Owns: the mapping and the simulated clients.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use super::monitor::{Sample, View};
use super::report::{self, Applied, Effect, Safety};
use super::schedule::{self, Fault, Kind, Shape, Target};
use super::workload::{CLAIM_TTL, LOCK_TTL, LOCK_WAIT, Op, OpKind};
use crate::idempotency::Outcome;
use crate::idempotency::history::{Answer, Execution, IdempotencyHistory};
use crate::locks::history::{Hold, LockHistory};
use crate::net::Faults;
use crate::sim::SimCluster;
use crate::{Mesh, NodeId};

/// What a simulated churn run came to.
pub struct SimRun {
    /// Nodes simulated.
    pub nodes: u64,
    /// Successful operations (times virtual).
    pub ops: Vec<Op>,
    /// Per fault.
    pub effects: Vec<Effect>,
    /// The checkers' verdict.
    pub safety: Safety,
    /// Lock holds checked.
    pub holds: usize,
    /// Executions checked.
    pub executions: usize,
    /// Virtual time without any node knowing a leader, under churn.
    pub leaderless: Duration,
    /// Wall time the simulation took.
    pub wall: Duration,
}

struct Env {
    nodes: Mutex<Vec<Mesh>>,
    locks: Mutex<LockHistory>,
    idempotency: Mutex<IdempotencyHistory>,
    ops: Mutex<Vec<Op>>,
    stop: std::sync::atomic::AtomicBool,
    t0: Instant,
    next_execution: std::sync::atomic::AtomicU64,
}

impl Env {
    fn pick(&self, rng: &mut StdRng) -> Option<Mesh> {
        let nodes = self.nodes.lock().unwrap();
        (!nodes.is_empty()).then(|| nodes[rng.random_range(0..nodes.len())].clone())
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn done(&self, kind: OpKind, began: Instant) {
        self.ops.lock().unwrap().push(Op {
            kind,
            end: self.t0.elapsed(),
            latency: began.elapsed(),
        });
    }
}

/// Runs `faults` on `nodes` simulated nodes for `shape.duration` of
/// virtual time, with `lock_clients` and `idempotency_clients`. Call
/// on a runtime with a paused clock.
pub async fn run(
    seed: u64,
    shape: Shape,
    faults: &[Fault],
    lock_clients: usize,
    locks: usize,
    idempotency_clients: usize,
) -> Result<SimRun, String> {
    let wall = std::time::Instant::now();
    let dir = std::env::temp_dir().join(format!("meshd-churn-sim-{}-{seed}", std::process::id()));
    let voters: Vec<NodeId> = (1..=shape.voters).map(NodeId).collect();
    let mut c = SimCluster::new(seed, voters);
    c.data_root = Some(dir.clone());
    for id in 1..=shape.nodes {
        c.add(NodeId(id)).await;
    }
    c.led().await;
    let env = Arc::new(Env {
        nodes: Mutex::new(running(&c)),
        locks: Mutex::default(),
        idempotency: Mutex::default(),
        ops: Mutex::default(),
        stop: std::sync::atomic::AtomicBool::new(false),
        t0: Instant::now(),
        next_execution: std::sync::atomic::AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for i in 0..lock_clients {
        tasks.push(tokio::spawn(lock_client(i, seed, locks, env.clone())));
    }
    for i in 0..idempotency_clients {
        tasks.push(tokio::spawn(idempotency_client(i, seed, env.clone())));
    }
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut applied = Vec::new();
    let mut next = faults.iter().peekable();
    let mut healing: Option<(Duration, Applied)> = None;
    // Every 100 ms of virtual time: sample, heal, strike.
    while env.t0.elapsed() < shape.duration {
        let now = env.t0.elapsed();
        sample(&c, shape.voters, now, &samples);
        if let Some((at, a)) = healing.take_if(|(at, _)| *at <= now) {
            let _ = at;
            heal(&mut c, &a).await;
            *env.nodes.lock().unwrap() = running(&c);
            applied.push(a);
        }
        if healing.is_none()
            && let Some(f) = next.next_if(|f| f.at <= now)
        {
            let a = strike(&mut c, f, shape).await;
            *env.nodes.lock().unwrap() = running(&c);
            healing = Some((f.at + f.kind.lasting(), a));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((_, a)) = healing.take() {
        heal(&mut c, &a).await;
        applied.push(a);
    }
    env.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let ops = std::mem::take(&mut *env.ops.lock().unwrap());
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let locks = env.locks.lock().unwrap().clone();
    let idem = env.idempotency.lock().unwrap().clone();
    let safety = super::verdict(&locks, &idem);
    let end = faults.last().map_or(shape.steady, |f| f.at + shape.every);
    Ok(SimRun {
        nodes: shape.nodes,
        effects: report::effects(&applied, &ops, &samples, shape.every),
        leaderless: report::leaderless(&samples, shape.steady, end.min(shape.duration)),
        ops,
        safety,
        holds: locks.holds().len(),
        executions: idem.executions().len(),
        wall: wall.elapsed(),
    })
}

fn running(c: &SimCluster) -> Vec<Mesh> {
    c.running()
        .into_iter()
        .map(|id| c.mesh(id).clone())
        .collect()
}

/// What the voters and the last node believe of the leader now.
fn sample(c: &SimCluster, voters: u64, at: Duration, samples: &Mutex<Vec<Sample>>) {
    let mut out = samples.lock().unwrap();
    let running = c.running();
    let last = running.last().copied();
    for id in running {
        if id.0 > voters && Some(id) != last {
            continue;
        }
        let mesh = c.mesh(id);
        let leader = mesh.leader().map(|l| (l.id.0, l.epoch.0));
        out.push(Sample {
            at,
            node: id.0,
            view: Some(View {
                leader,
                quorum: leader.is_some(),
                alive: Vec::new(),
            }),
        });
    }
}

async fn strike(c: &mut SimCluster, fault: &Fault, shape: Shape) -> Applied {
    let leader = c.agreed_leader().map(|l| l.0);
    let victim = match fault.target {
        Target::Leader => leader,
        Target::Node(id) => Some(id),
    }
    .filter(|v| c.running().contains(&NodeId(*v)));
    let mut a = Applied {
        fault: *fault,
        victim,
        leader,
        skipped: None,
    };
    let Some(v) = victim else {
        a.skipped = Some("its target was not running".into());
        return a;
    };
    let node = NodeId(v);
    let others: Vec<NodeId> = (1..=shape.nodes).filter(|i| *i != v).map(NodeId).collect();
    match fault.kind {
        Kind::Kill { .. } => c.kill(node).await,
        Kind::Pause { paused } => {
            c.pause(node, paused).await;
            c.isolate(node);
        }
        Kind::Leave { .. } => c.leave(node).await,
        Kind::Minority { .. } => {
            let partner = NodeId(v % shape.nodes + 1);
            let rest: Vec<NodeId> = others.iter().copied().filter(|n| *n != partner).collect();
            c.partition(&[&[node, partner], &rest]);
        }
        Kind::Bridge { .. } => {
            let (x, y): (Vec<NodeId>, Vec<NodeId>) = others.iter().partition(|n| n.0 % 2 == 0);
            for p in &x {
                for q in &y {
                    c.block(*p, *q);
                    c.block(*q, *p);
                }
            }
        }
        Kind::OneWay { .. } => {
            for o in &others {
                c.block(node, *o);
            }
        }
        Kind::Delay { delay, .. } => c.set_faults(Faults {
            delay_min: delay,
            delay_max: delay + Duration::from_millis(1),
            ..Faults::default()
        }),
    }
    a
}

async fn heal(c: &mut SimCluster, a: &Applied) {
    let Some(v) = a.victim else { return };
    match a.fault.kind {
        Kind::Kill { .. } | Kind::Leave { .. } => c.restart(NodeId(v)).await,
        Kind::Delay { .. } => c.set_faults(Faults::default()),
        _ => c.heal(),
    }
}

async fn lock_client(idx: usize, seed: u64, names: usize, env: Arc<Env>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5110c ^ ((idx as u64) << 32));
    while !env.stopped() {
        let Some(mesh) = env.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let name = format!("churn-{}", rng.random_range(0..names.max(1)));
        let began = Instant::now();
        match mesh
            .lock(&name)
            .ttl(LOCK_TTL)
            .wait(LOCK_WAIT)
            .acquire()
            .await
        {
            Ok(guard) => {
                let from = mesh.clock_now();
                env.done(OpKind::Acquire, began);
                tokio::time::sleep(Duration::from_micros(rng.random_range(0..=2_000))).await;
                let until = guard.valid_until().min(mesh.clock_now());
                env.locks.lock().unwrap().record(Hold {
                    lock: name,
                    client: format!("sim-lock-client-{idx}"),
                    token: guard.token(),
                    from,
                    until,
                });
                let _ = guard.release().await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(rng.random_range(1..50))).await,
        }
    }
}

async fn idempotency_client(idx: usize, seed: u64, env: Arc<Env>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x51de0 ^ ((idx as u64) << 32));
    let label = format!("sim-idempotency-client-{idx}");
    let mut n = 0u64;
    while !env.stopped() {
        n += 1;
        let key = format!("churn-{idx}-{n}");
        let began = Instant::now();
        // Retried on random nodes until answered (or the run ends).
        while !env.stopped() {
            let Some(mesh) = env.pick(&mut rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (env2, key2, label2) = (env.clone(), key.clone(), label.clone());
            let outcome = mesh
                .idempotent(key.clone())
                .fingerprint(format!("fp-{key}"))
                .ttl(Duration::from_secs(600))
                .claim_ttl(CLAIM_TTL)
                .wait(Duration::from_secs(1))
                .run_with_claim(|claim| async move {
                    let result = env2
                        .next_execution
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    env2.idempotency.lock().unwrap().executed(Execution {
                        key: key2,
                        client: label2,
                        claim: claim.token,
                        recovered: claim.recovered,
                        result: serde_json::to_vec(&result).unwrap_or_default(),
                        at: env2.t0.elapsed(),
                    });
                    result
                })
                .await;
            let (result, replayed) = match outcome {
                Ok(Outcome::Executed(r) | Outcome::RecoveredThenExecuted(r)) => (r, false),
                Ok(Outcome::Replayed(r)) => (r, true),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(10..50))).await;
                    continue;
                }
            };
            env.idempotency.lock().unwrap().answered(Answer {
                key: key.clone(),
                client: label.clone(),
                replayed,
                result: serde_json::to_vec(&result).unwrap_or_default(),
                at: env.t0.elapsed(),
            });
            env.done(OpKind::Idempotent, began);
            break;
        }
    }
}

/// The schedule's shape for `nodes` simulated nodes, partitions included.
pub fn shape(real: Shape, nodes: u64) -> Shape {
    Shape {
        nodes,
        voters: real.voters.min(nodes),
        partitions: true,
        ..real
    }
}

/// The faults of a simulated run: the real run's draw for its shape.
pub fn faults(seed: u64, shape: Shape) -> Vec<Fault> {
    schedule::draw(seed, shape)
}
