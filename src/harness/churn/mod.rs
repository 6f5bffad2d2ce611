//! `meshd bench churn`: real agents under a churn schedule drawn from a
//! seed ([`schedule`]), driven by clients that record what they were told
//! ([`workload`]), watched by pollers ([`monitor`]); then the figures and
//! the safety checkers' verdict ([`report`]). With `--compare etcd`, the
//! lock part of the workload runs again against a 5-member etcd under the
//! same faults at the same times.
//!
//! The run fails (an error, so `meshd` exits 1) on any safety violation.

pub mod monitor;
pub mod netns;
pub mod plot;
pub mod report;
pub mod schedule;
#[cfg(feature = "sim")]
pub mod sim;
pub mod workload;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use self::report::{Applied, Effect, Latency, Safety};
use self::schedule::{Fault, Kind, Shape, Target};
use self::workload::Shared;
use crate::client::RemoteClient;
use crate::harness::agents::Agents;
use crate::harness::report::write_json;
use crate::idempotency::history::{IdempotencyHistory, Violation as IdempotencyViolation};
use crate::locks::history::{LockHistory, Violation as LockViolation};

/// What `meshd bench churn` runs (its flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ChurnOptions {
    /// Agents (the first five are voters; all keep data directories).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 7))]
    pub nodes: u64,
    /// Seconds of the whole run.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 120))]
    pub duration_s: u64,
    /// Seed of the churn schedule and the clients (random if not given;
    /// printed either way).
    #[cfg_attr(feature = "cli", arg(long))]
    pub seed: Option<u64>,
    /// One fault every this many seconds, after the steady state.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub fault_every_s: u64,
    /// Seconds of steady state (no faults) at the start; by default a
    /// sixth of the run, 10 to 20 s.
    #[cfg_attr(feature = "cli", arg(long))]
    pub steady_s: Option<u64>,
    /// Concurrent lock clients (the remote client, QUIC).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub lock_clients: usize,
    /// Lock names the lock clients share (each acquire picks one at
    /// random, holds it up to 2 ms, releases it).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub locks: usize,
    /// Concurrent idempotency clients (HTTP, random agents).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub idempotency_clients: usize,
    /// Run the lock workload against this system too, under the same
    /// schedule (`etcd`: a 5-member etcd, needs `--features etcd-bench`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "SYSTEM"))]
    pub compare: Option<String>,
    /// Simulated nodes (5 voters) of the same schedule run in virtual time
    /// after the real run (0: none; needs feature `sim`).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100))]
    pub sim_nodes: u64,
    /// Run only the simulation (no agents, no etcd).
    #[cfg_attr(feature = "cli", arg(long))]
    pub sim_only: bool,
    /// Leave partitions out of the schedule (they are in it when this
    /// process may make network namespaces: root, iproute2).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_partitions: bool,
    /// No live progress line.
    #[cfg_attr(feature = "cli", arg(long))]
    pub quiet: bool,
    /// Keep the agents' logs and data in this directory (else removed).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub keep: Option<PathBuf>,
    /// Write results as JSON to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub json: Option<PathBuf>,
    /// Draw throughput and p99 latency over time, faults marked, as SVG
    /// to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub plot: Option<PathBuf>,
}

impl ChurnOptions {
    fn shape(&self, partitions: bool) -> Shape {
        let duration = Duration::from_secs(self.duration_s);
        let steady = Duration::from_secs(
            self.steady_s
                .unwrap_or_else(|| (self.duration_s / 6).clamp(10, 20)),
        );
        Shape {
            nodes: self.nodes,
            voters: self.nodes.min(5),
            duration,
            steady: steady.min(duration),
            every: Duration::from_secs(self.fault_every_s.max(1)),
            partitions,
        }
    }

    fn check(&self) -> Result<(), String> {
        if !(3..=64).contains(&self.nodes) {
            return Err(format!("--nodes {} out of range 3-64", self.nodes));
        }
        if self.duration_s < 10 {
            return Err("--duration-s must be at least 10".into());
        }
        if self.lock_clients + self.idempotency_clients == 0 {
            return Err("no clients: give --lock-clients or --idempotency-clients".into());
        }
        match self.compare.as_deref() {
            None | Some("etcd") => Ok(()),
            Some(other) => Err(format!("--compare {other}: only etcd is known")),
        }
    }
}

/// Removes a directory however the run ends.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs the benchmark with `bin` (the `meshd` binary) as the agents.
pub fn churn(bin: &Path, args: ChurnOptions) -> Result<(), String> {
    args.check()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let (dir, _cleanup) = match &args.keep {
        Some(dir) => (dir.clone(), RemoveOnDrop(None)),
        None => {
            let dir =
                std::env::temp_dir().join(format!("meshd-bench-churn-{}", std::process::id()));
            (dir.clone(), RemoveOnDrop(Some(dir)))
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    if args.sim_only {
        let Some((json, safety)) = simulate(&args, seed, args.shape(false))? else {
            return Err(
                "--sim-only with no simulation (--sim-nodes 0, or no feature `sim`)".into(),
            );
        };
        write_json(args.json.as_deref(), &json!({"seed": seed, "sim": json}))?;
        return if safety.clean() {
            Ok(())
        } else {
            Err(format!(
                "safety violated in the simulation: {safety:?}; each listed above"
            ))
        };
    }
    let namespaces = if args.no_partitions {
        println!("(--no-partitions: no partitions in the schedule)");
        None
    } else if let Some(why) = netns::Namespaces::unavailable() {
        println!(
            "(partitions between network namespaces skipped: {why}; they need root and iproute2)"
        );
        None
    } else {
        match netns::Namespaces::create(args.nodes) {
            Ok(ns) => Some(ns),
            Err(e) => {
                println!("(partitions between network namespaces skipped: {e})");
                None
            }
        }
    };
    let shape = args.shape(namespaces.is_some());
    let faults = schedule::draw(seed, shape);
    println!(
        "churn benchmark: {} keyed agents ({} voters, data directories) {}, {} s ({} s steady, then one fault every {} s: {} faults), seed {seed}",
        shape.nodes,
        shape.voters,
        if namespaces.is_some() {
            "each in a network namespace of its own"
        } else {
            "on loopback"
        },
        args.duration_s,
        shape.steady.as_secs(),
        shape.every.as_secs(),
        faults.len()
    );
    println!(
        "workload: {} lock clients on {} locks (remote client, TTL {} ms, wait {} ms), {} idempotency clients (HTTP on random agents, claim TTL {} ms, {:.0}% of answers dropped and retried)",
        args.lock_clients,
        args.locks,
        workload::LOCK_TTL.as_millis(),
        workload::LOCK_WAIT.as_millis(),
        args.idempotency_clients,
        workload::CLAIM_TTL.as_millis(),
        20.0
    );
    let mesh = run_mesh(bin, &args, seed, shape, &faults, &dir, namespaces)?;
    let mut out = mesh.json(&args, seed, shape);
    print_mesh(&mesh, shape);
    let mut etcd_timeline = None;
    if args.compare.as_deref() == Some("etcd")
        && let Some(theirs) = etcd::run(&args, seed, shape, &faults, &dir.join("etcd"))?
    {
        etcd_timeline = Some(theirs.timeline());
        let ours = mesh.lock_rate_under_churn(shape);
        let theirs_rate = theirs.lock_rate_under_churn(shape);
        println!();
        theirs.print_beside(&mesh, shape);
        let ratio = if theirs_rate > 0.0 {
            ours / theirs_rate
        } else {
            f64::INFINITY
        };
        println!("lock acquires/s under churn, meshd/etcd: {ratio:.1}x");
        out["etcd"] = theirs.json(shape);
        out["lock_ratio_under_churn"] = json!(ratio);
    }
    let simulated = simulate(&args, seed, shape)?;
    if let Some((json, _)) = &simulated {
        out["sim"] = json.clone();
    }
    write_json(args.json.as_deref(), &out)?;
    if let Some(path) = &args.plot {
        let all = report::timeline(&mesh.ops, mesh.elapsed);
        let acquires = report::timeline(&mesh.acquires(), mesh.elapsed);
        let mut series = vec![
            plot::Series {
                name: "meshd, all operations",
                points: &all,
            },
            plot::Series {
                name: "meshd, lock acquires",
                points: &acquires,
            },
        ];
        if let Some(points) = &etcd_timeline {
            series.push(plot::Series {
                name: "etcd (5 members), lock acquires",
                points,
            });
        }
        let marks: Vec<(Duration, String)> = mesh
            .effects
            .iter()
            .filter_map(|e| Some((e.applied.fault.at, mark(&e.applied)?)))
            .collect();
        let title = format!(
            "meshd bench churn: {} agents, one fault every {} s, seed {seed}",
            args.nodes,
            shape.every.as_secs()
        );
        plot::write(path, &title, &series, &marks, mesh.elapsed)?;
        println!("plot written to {}", path.display());
    }
    if let Some((_, safety)) = simulated
        && !safety.clean()
    {
        return Err(format!(
            "safety violated in the simulation: {safety:?}; each listed above"
        ));
    }
    if !mesh.safety.clean() {
        return Err(format!(
            "safety violated: {:?}; each listed above; logs in {}",
            mesh.safety,
            if args.keep.is_some() {
                dir.display().to_string()
            } else {
                "(removed; run with --keep DIR)".into()
            }
        ));
    }
    Ok(())
}

/// The same schedule on `--sim-nodes` simulated nodes: printed, and
/// its JSON and verdict returned.
#[cfg(feature = "sim")]
fn simulate(
    args: &ChurnOptions,
    seed: u64,
    real: Shape,
) -> Result<Option<(serde_json::Value, Safety)>, String> {
    if args.sim_nodes == 0 {
        return Ok(None);
    }
    if args.sim_nodes < 3 {
        return Err("--sim-nodes: at least 3 (or 0 for none)".into());
    }
    let shape = sim::shape(real, args.sim_nodes);
    let faults = sim::faults(seed, shape);
    println!();
    println!(
        "simulation: {} nodes ({} voters with data directories), the same seed's schedule with partitions, {} s of virtual time",
        shape.nodes,
        shape.voters,
        shape.duration.as_secs()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    let r = runtime.block_on(sim::run(
        seed,
        shape,
        &faults,
        args.lock_clients,
        args.locks,
        args.idempotency_clients,
    ))?;
    let end = churn_end(&r.effects, shape);
    let (acq, idem) = report::latencies(&r.ops);
    let failovers: Vec<f64> = r
        .effects
        .iter()
        .filter(|e| e.applied.hit_leader())
        .map(|e| ms(e.gap))
        .collect();
    let struck = r
        .effects
        .iter()
        .filter(|e| e.applied.victim.is_some())
        .count();
    println!(
        "  operations/s       steady {:.0}, under churn {:.0} (virtual time); acquire p50 {:.1} ms p99 {:.0} ms; idempotent p50 {:.1} ms p99 {:.0} ms",
        report::rate(&r.ops, Duration::ZERO, shape.steady),
        report::rate(&r.ops, shape.steady, end),
        ms(acq.p50),
        ms(acq.p99),
        ms(idem.p50),
        ms(idem.p99)
    );
    println!(
        "  faults             {struck} struck; failovers {} seen by clients: median {} ms, max {} ms; {:.1} s without a leader",
        failovers.len(),
        median(failovers.clone()).map_or("-".into(), |v| format!("{v:.0}")),
        failovers
            .iter()
            .copied()
            .reduce(f64::max)
            .map_or("-".into(), |v| format!("{v:.0}")),
        r.leaderless.as_secs_f64()
    );
    let s = r.safety;
    println!(
        "  safety             {} lock holds, {} executions: double holders {}, token order {}, tokens reused {}, duplicate executions {}, differing replays {}, invented results {}: {} ({:.0} s of wall time)",
        r.holds,
        r.executions,
        s.double_holders,
        s.token_order_violations,
        s.tokens_reused,
        s.duplicate_executions,
        s.differing_replays,
        s.invented_results,
        if s.clean() { "OK" } else { "VIOLATED" },
        r.wall.as_secs_f64()
    );
    let json = json!({
        "nodes": r.nodes,
        "voters": shape.voters,
        "virtual_s": shape.duration.as_secs_f64(),
        "wall_s": r.wall.as_secs_f64(),
        "ops": r.ops.len(),
        "steady_ops_per_s": report::rate(&r.ops, Duration::ZERO, shape.steady),
        "churn_ops_per_s": report::rate(&r.ops, shape.steady, end),
        "faults": struck,
        "failover_ms": failovers,
        "leaderless_ms_churn": ms(r.leaderless),
        "lock_holds_checked": r.holds,
        "executions": r.executions,
        "double_holders": s.double_holders,
        "token_order_violations": s.token_order_violations,
        "tokens_reused": s.tokens_reused,
        "duplicate_executions": s.duplicate_executions,
        "differing_replays": s.differing_replays,
        "invented_results": s.invented_results,
        "per_fault": r.effects.iter().map(|e| json!({
            "at_s": e.applied.fault.at.as_secs_f64(),
            "kind": e.applied.fault.kind.name(),
            "victim": e.applied.victim,
            "leader": e.applied.leader,
            "skipped": e.applied.skipped,
            "longest_gap_ms": ms(e.gap),
            "new_terms": e.new_terms,
        })).collect::<Vec<_>>(),
    });
    Ok(Some((json, s)))
}

#[cfg(not(feature = "sim"))]
fn simulate(
    args: &ChurnOptions,
    _: u64,
    _: Shape,
) -> Result<Option<(serde_json::Value, Safety)>, String> {
    if args.sim_nodes > 0 {
        println!("(built without feature `sim`: no simulated run)");
    }
    Ok(None)
}

/// Everything a run against the agents produced.
struct MeshRun {
    ops: Vec<workload::Op>,
    effects: Vec<Effect>,
    leaderless_steady: Duration,
    leaderless_churn: Duration,
    false_suspicions: usize,
    bytes_per_node_s: f64,
    given_up: u64,
    dropped: u64,
    holds: usize,
    executions: usize,
    recovered: usize,
    replays: usize,
    safety: Safety,
    elapsed: Duration,
}

fn run_mesh(
    bin: &Path,
    args: &ChurnOptions,
    seed: u64,
    shape: Shape,
    faults: &[Fault],
    dir: &Path,
    mut namespaces: Option<netns::Namespaces>,
) -> Result<MeshRun, String> {
    let planned = match &namespaces {
        Some(ns) => {
            let ids = 1..=args.nodes;
            let hosts: Vec<_> = ids.clone().map(|i| ns.addr(i)).collect();
            let prefixes = ids.map(|i| ns.prefix(i)).collect();
            Agents::at_hosts(bin, &hosts, 7400, prefixes, dir)
        }
        None => Agents::new(bin, args.nodes, dir),
    };
    let mut agents = Agents::led(
        planned.map_err(|e| e.to_string())?,
        dir,
        Duration::from_secs(60),
    )?;
    let secret = crate::ClusterSecret::load(&dir.join("cluster.key")).map_err(|e| e.to_string())?;
    let ids = agents.ids();
    let https: Vec<(u64, SocketAddr)> = ids.iter().map(|id| (*id, agents.spec(*id).http)).collect();
    let rpcs: Vec<SocketAddr> = ids.iter().map(|id| agents.spec(*id).rpc).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = runtime
        .block_on(RemoteClient::connect(rpcs, &secret))
        .map_err(|e| e.to_string())?;
    let run = Shared::new();
    let monitor = monitor::Monitor::start(&https, run.t0);
    let lock_tasks: Vec<_> = (0..args.lock_clients)
        .map(|i| {
            runtime.spawn(workload::lock_client(
                i,
                seed,
                args.locks,
                client.clone(),
                run.clone(),
            ))
        })
        .collect();
    let http_addrs: Vec<SocketAddr> = https.iter().map(|(_, a)| *a).collect();
    let idem_threads: Vec<_> = (0..args.idempotency_clients)
        .map(|i| {
            let (run, https) = (run.clone(), http_addrs.clone());
            std::thread::spawn(move || workload::idempotency_client(i, seed, https, run))
        })
        .collect();
    let progress = Progress::start(run.clone(), shape.duration, !args.quiet);
    let mut applied = Vec::new();
    let mut strike_error = None;
    for fault in faults {
        sleep_until(run.t0, fault.at);
        let a = strike(&mut agents, namespaces.as_mut(), fault, shape);
        progress.fault(fault.at, describe(&a));
        sleep_until(run.t0, fault.at + fault.kind.lasting());
        if let Err(e) = heal(&mut agents, namespaces.as_mut(), &a) {
            strike_error = Some(e);
        }
        applied.push(a);
        if strike_error.is_some() {
            break;
        }
    }
    sleep_until(run.t0, shape.duration);
    let elapsed = run.t0.elapsed();
    run.stop.store(true, Ordering::Relaxed);
    progress.finish();
    for t in idem_threads {
        let _ = t.join();
    }
    runtime.block_on(async {
        for t in lock_tasks {
            let _ = t.await;
        }
        client.close().await;
    });
    let seen = monitor.finish();
    agents.stop_all(Duration::from_secs(10));
    if let Some(e) = strike_error {
        return Err(e);
    }
    let ops = std::mem::take(&mut *run.ops.lock().unwrap());
    let locks = run.locks.lock().unwrap().clone();
    let idem = run.idempotency.lock().unwrap().clone();
    let safety = verdict(&locks, &idem);
    let end_of_churn = faults
        .last()
        .map_or(shape.steady, |f| f.at + shape.every)
        .min(shape.duration);
    let bytes: u64 = seen.bytes_sent.iter().map(|(_, b)| b).sum();
    Ok(MeshRun {
        effects: report::effects(&applied, &ops, &seen.samples, shape.every),
        leaderless_steady: report::leaderless(&seen.samples, Duration::from_secs(1), shape.steady),
        leaderless_churn: report::leaderless(&seen.samples, shape.steady, end_of_churn),
        false_suspicions: report::false_suspicions(&seen.samples, &applied),
        bytes_per_node_s: bytes as f64 / args.nodes as f64 / elapsed.as_secs_f64(),
        given_up: run.given_up.load(Ordering::Relaxed),
        dropped: run.dropped.load(Ordering::Relaxed),
        holds: locks.holds().len(),
        executions: idem.executions().len(),
        recovered: idem.executions().iter().filter(|e| e.recovered).count(),
        replays: idem.answers().iter().filter(|a| a.replayed).count(),
        ops,
        safety,
        elapsed,
    })
}

/// The checkers' verdict on a run's histories; each violation printed.
fn verdict(locks: &LockHistory, idem: &IdempotencyHistory) -> Safety {
    let mut safety = Safety::default();
    for v in locks.violations() {
        println!("VIOLATION: {v}");
        match v {
            LockViolation::TwoHolders { .. } => safety.double_holders += 1,
            LockViolation::TokenOrder { .. } => safety.token_order_violations += 1,
            LockViolation::TokenReused { .. } => safety.tokens_reused += 1,
        }
    }
    for v in idem.violations() {
        println!("VIOLATION: {v}");
        match v {
            IdempotencyViolation::DuplicateExecution { .. } => safety.duplicate_executions += 1,
            IdempotencyViolation::DifferentResults { .. } => safety.differing_replays += 1,
            _ => safety.invented_results += 1,
        }
    }
    safety
}

/// Strikes `fault`, resolving its target among the agents.
fn strike(
    agents: &mut Agents,
    namespaces: Option<&mut netns::Namespaces>,
    fault: &Fault,
    shape: Shape,
) -> Applied {
    let leader = current_leader(agents);
    let victim = match fault.target {
        Target::Leader => leader.or_else(|| agents.running().first().copied()),
        Target::Node(id) => Some(id),
    };
    let mut applied = Applied {
        fault: *fault,
        victim,
        leader,
        skipped: None,
    };
    let Some(v) = victim.filter(|v| agents.running().contains(v)) else {
        applied.victim = None;
        applied.skipped = Some("its target was not running".into());
        return applied;
    };
    match fault.kind {
        Kind::Kill { .. } => agents.kill9(v),
        Kind::Pause { .. } => agents.signal(v, libc::SIGSTOP),
        Kind::Leave { .. } if v > shape.voters => {
            agents.terminate(v, Duration::from_secs(5));
        }
        Kind::Leave { .. } => {
            applied.victim = None;
            applied.skipped = Some("only members that are not voters leave".into());
        }
        partition => match namespaces {
            Some(ns) => {
                if let Err(e) = partition_by(ns, partition, v, shape.nodes) {
                    applied.victim = None;
                    applied.skipped = Some(e);
                }
            }
            None => {
                applied.victim = None;
                applied.skipped = Some("partitions need network namespaces".into());
            }
        },
    }
    applied
}

/// Cuts the network as `kind` says, around node `v` of `1..=nodes`:
/// a minority of `v` and the next id; two halves with `v` reaching both;
/// all `v` sends lost; all `v` sends delayed.
fn partition_by(ns: &mut netns::Namespaces, kind: Kind, v: u64, nodes: u64) -> Result<(), String> {
    let others: Vec<u64> = (1..=nodes).filter(|i| *i != v).collect();
    match kind {
        Kind::Minority { .. } => {
            let partner = v % nodes + 1;
            let rest: Vec<u64> = others.iter().copied().filter(|i| *i != partner).collect();
            ns.split(&[v, partner], &rest)
        }
        Kind::Bridge { .. } => {
            let (a, b): (Vec<u64>, Vec<u64>) = others.iter().partition(|i| *i % 2 == 0);
            ns.split(&a, &b)
        }
        Kind::OneWay { .. } => others.iter().try_for_each(|&j| ns.cut(v, j)),
        Kind::Delay { delay, .. } => ns.delay(v, delay),
        _ => Ok(()),
    }
}

/// Undoes what [`strike`] did.
fn heal(
    agents: &mut Agents,
    namespaces: Option<&mut netns::Namespaces>,
    a: &Applied,
) -> Result<(), String> {
    let Some(v) = a.victim else { return Ok(()) };
    match a.fault.kind {
        Kind::Kill { .. } | Kind::Leave { .. } => agents
            .start(v)
            .map_err(|e| format!("restarting agent {v}: {e}")),
        Kind::Pause { .. } => {
            agents.signal(v, libc::SIGCONT);
            Ok(())
        }
        _ => namespaces.map_or(Ok(()), |ns| ns.heal()),
    }
}

/// The leader most running agents report with a quorum.
fn current_leader(agents: &Agents) -> Option<u64> {
    let mut votes = std::collections::BTreeMap::<u64, usize>::new();
    for id in agents.running() {
        if let Some((leader, _)) = agents.leader_seen_by(id) {
            *votes.entry(leader).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}

fn describe(a: &Applied) -> String {
    let who = match (a.victim, a.fault.target) {
        (Some(v), Target::Leader) => format!("node {v} (leader)"),
        (Some(v), _) if Some(v) == a.leader => format!("node {v} (the leader)"),
        (Some(v), _) => format!("node {v}"),
        (None, _) => "nobody".into(),
    };
    let how = match a.fault.kind {
        Kind::Kill { down } => format!("down {:.1} s", down.as_secs_f64()),
        Kind::Pause { paused } => format!("stopped {:.1} s", paused.as_secs_f64()),
        Kind::Leave { away } => format!("away {:.1} s", away.as_secs_f64()),
        k => format!("{:.1} s", k.lasting().as_secs_f64()),
    };
    match &a.skipped {
        Some(why) => format!("{} skipped: {why}", a.fault.kind.name()),
        None => format!("{} {who}, {how}", a.fault.kind.name()),
    }
}

/// A fault's label on the plot ("kill 1*": the leader), if it struck.
fn mark(a: &Applied) -> Option<String> {
    let v = a.victim?;
    let kind = match a.fault.kind {
        Kind::Kill { .. } => "kill",
        Kind::Pause { .. } => "stop",
        Kind::Leave { .. } => "leave",
        k => k.name(),
    };
    let star = if Some(v) == a.leader { "*" } else { "" };
    Some(format!("{kind} {v}{star}"))
}

fn sleep_until(t0: Instant, at: Duration) {
    std::thread::sleep(at.saturating_sub(t0.elapsed()));
}

/// The live progress line: elapsed time, throughput of the last second,
/// the last fault. Redrawn in place on a terminal, a line every 10 s
/// otherwise.
struct Progress {
    last_fault: Arc<std::sync::Mutex<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(run: Arc<Shared>, duration: Duration, show: bool) -> Progress {
        let last_fault = Arc::new(std::sync::Mutex::new(String::from("none yet")));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = show.then(|| {
            let (last_fault, stop) = (last_fault.clone(), stop.clone());
            std::thread::spawn(move || {
                let tty = std::io::stderr().is_terminal();
                let mut before = 0;
                let mut tick = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    tick += 1;
                    let now = run.count();
                    let rate = now - before;
                    before = now;
                    let t = run.t0.elapsed().min(duration);
                    let width = 24;
                    let done = (t.as_secs_f64() / duration.as_secs_f64() * width as f64) as usize;
                    let bar: String = (0..width)
                        .map(|i| if i < done { '#' } else { '.' })
                        .collect();
                    let line = format!(
                        "[{bar}] {:>3}/{} s {:>6} ops/s | {}",
                        t.as_secs(),
                        duration.as_secs(),
                        rate,
                        last_fault.lock().unwrap()
                    );
                    if tty {
                        let cut: String = line.chars().take(110).collect();
                        eprint!("\r\x1b[K{cut}");
                    } else if tick.is_multiple_of(10) {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprintln!();
                }
            })
        });
        Progress {
            last_fault,
            stop,
            thread,
        }
    }

    fn fault(&self, at: Duration, what: String) {
        *self.last_fault.lock().unwrap() = format!("{:.0} s: {what}", at.as_secs_f64());
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl MeshRun {
    fn acquires(&self) -> Vec<workload::Op> {
        self.ops
            .iter()
            .filter(|o| o.kind == workload::OpKind::Acquire)
            .copied()
            .collect()
    }

    fn lock_rate_under_churn(&self, shape: Shape) -> f64 {
        report::rate(
            &self.acquires(),
            shape.steady,
            churn_end(&self.effects, shape),
        )
    }

    fn failovers(&self) -> Vec<f64> {
        self.effects
            .iter()
            .filter(|e| e.applied.hit_leader())
            .map(|e| e.gap.as_secs_f64() * 1e3)
            .collect()
    }

    fn json(&self, args: &ChurnOptions, seed: u64, shape: Shape) -> serde_json::Value {
        let (acq, idem) = report::latencies(&self.ops);
        let lat = |l: Latency| json!({"count": l.count, "p50_ms": ms(l.p50), "p99_ms": ms(l.p99), "max_ms": ms(l.max)});
        let end = churn_end(&self.effects, shape);
        json!({
            "seed": seed,
            "nodes": args.nodes,
            "voters": shape.voters,
            "duration_s": self.elapsed.as_secs_f64(),
            "steady_s": shape.steady.as_secs_f64(),
            "fault_every_s": shape.every.as_secs_f64(),
            "partitions": shape.partitions,
            "ops": self.ops.len(),
            "ops_per_s": self.ops.len() as f64 / self.elapsed.as_secs_f64(),
            "steady_ops_per_s": report::rate(&self.ops, Duration::ZERO, shape.steady),
            "churn_ops_per_s": report::rate(&self.ops, shape.steady, end),
            "lock_acquires_per_s_under_churn": self.lock_rate_under_churn(shape),
            "acquire": lat(acq),
            "idempotent": lat(idem),
            "faults": self.effects.iter().filter(|e| e.applied.victim.is_some()).count(),
            "faults_skipped": self.effects.iter().filter(|e| e.applied.victim.is_none()).count(),
            "failover_ms": self.failovers(),
            "per_fault": self.effects.iter().map(|e| json!({
                "at_s": e.applied.fault.at.as_secs_f64(),
                "kind": e.applied.fault.kind.name(),
                "victim": e.applied.victim,
                "leader": e.applied.leader,
                "lasting_ms": ms(e.applied.fault.kind.lasting()),
                "skipped": e.applied.skipped,
                "longest_gap_ms": ms(e.gap),
                "new_terms": e.new_terms,
                "detected_first_ms": e.detected.map(|d| ms(d.0)),
                "detected_last_ms": e.detected.map(|d| ms(d.1)),
                "not_detected_by": e.detected.map(|d| d.2),
            })).collect::<Vec<_>>(),
            "timeline": timeline_json(&self.ops, self.elapsed),
            "leaderless_ms_steady": ms(self.leaderless_steady),
            "leaderless_ms_churn": ms(self.leaderless_churn),
            "false_suspicions": self.false_suspicions,
            "bytes_per_node_per_s": self.bytes_per_node_s,
            "given_up": self.given_up,
            "answers_dropped_on_purpose": self.dropped,
            "lock_holds_checked": self.holds,
            "executions": self.executions,
            "recovered_executions": self.recovered,
            "replays": self.replays,
            "double_holders": self.safety.double_holders,
            "token_order_violations": self.safety.token_order_violations,
            "tokens_reused": self.safety.tokens_reused,
            "duplicate_executions": self.safety.duplicate_executions,
            "differing_replays": self.safety.differing_replays,
            "invented_results": self.safety.invented_results,
        })
    }
}

/// Per second: operations and their p99 latency.
fn timeline_json(ops: &[workload::Op], elapsed: Duration) -> serde_json::Value {
    report::timeline(ops, elapsed)
        .into_iter()
        .map(|(s, n, p99)| json!({"s": s, "ops": n, "p99_ms": ms(p99)}))
        .collect()
}

fn churn_end(effects: &[Effect], shape: Shape) -> Duration {
    effects
        .last()
        .map_or(shape.steady, |e| e.applied.fault.at + shape.every)
        .min(shape.duration)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
}

fn print_mesh(m: &MeshRun, shape: Shape) {
    let (acq, idem) = report::latencies(&m.ops);
    let end = churn_end(&m.effects, shape);
    println!();
    println!(
        "{:<5} {:<13} {:<22} {:>8} {:>6} {:>13}",
        "at s", "fault", "target", "gap ms", "terms", "detected ms"
    );
    for e in &m.effects {
        let a = &e.applied;
        let target = match (&a.skipped, a.victim) {
            (Some(_), _) => "(skipped)".to_string(),
            (None, Some(v)) if Some(v) == a.leader => format!("node {v} (leader)"),
            (None, Some(v)) => format!("node {v}"),
            (None, None) => "-".into(),
        };
        let detected = e.detected.map_or("-".to_string(), |(a, b, _)| {
            format!("{:.0}-{:.0}", ms(a), ms(b))
        });
        println!(
            "{:<5.0} {:<13} {:<22} {:>8.0} {:>6} {:>13}",
            a.fault.at.as_secs_f64(),
            a.fault.kind.name(),
            target,
            ms(e.gap),
            e.new_terms,
            detected
        );
    }
    for e in m.effects.iter().filter(|e| e.applied.skipped.is_some()) {
        println!(
            "  (the {} at {:.0} s was skipped: {})",
            e.applied.fault.kind.name(),
            e.applied.fault.at.as_secs_f64(),
            e.applied.skipped.as_deref().unwrap_or_default()
        );
    }
    let failovers = m.failovers();
    println!();
    println!(
        "meshd under churn ({} faults struck)",
        m.effects
            .iter()
            .filter(|e| e.applied.victim.is_some())
            .count()
    );
    println!(
        "  operations/s       overall {:.0}, steady {:.0}, under churn {:.0} ({:.0}% of steady)",
        m.ops.len() as f64 / m.elapsed.as_secs_f64(),
        report::rate(&m.ops, Duration::ZERO, shape.steady),
        report::rate(&m.ops, shape.steady, end),
        100.0 * report::rate(&m.ops, shape.steady, end)
            / report::rate(&m.ops, Duration::ZERO, shape.steady).max(f64::MIN_POSITIVE)
    );
    for (name, l) in [("acquire", acq), ("idempotent op", idem)] {
        println!(
            "  {name:<18} {} done, p50 {:.1} ms, p99 {:.0} ms, max {:.0} ms",
            l.count,
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        );
    }
    println!(
        "  failovers          {} seen by clients: median {} ms, max {} ms",
        failovers.len(),
        median(failovers.clone()).map_or("-".into(), |v| format!("{v:.0}")),
        failovers
            .iter()
            .copied()
            .reduce(f64::max)
            .map_or("-".into(), |v| format!("{v:.0}"))
    );
    println!(
        "  without a leader   {:.1} s under churn, {:.1} s steady",
        m.leaderless_churn.as_secs_f64(),
        m.leaderless_steady.as_secs_f64()
    );
    println!("  false suspicions   {}", m.false_suspicions);
    println!(
        "  bytes sent         {:.0} per node per second (gossip and RPC)",
        m.bytes_per_node_s
    );
    println!(
        "  checked            {} lock holds, {} executions ({} recovered), {} replays; {} operations given up, {} answers dropped on purpose",
        m.holds, m.executions, m.recovered, m.replays, m.given_up, m.dropped
    );
    let s = m.safety;
    println!(
        "  safety             double holders {}, token order {}, tokens reused {}, duplicate executions {}, differing replays {}, invented results {}: {}",
        s.double_holders,
        s.token_order_violations,
        s.tokens_reused,
        s.duplicate_executions,
        s.differing_replays,
        s.invented_results,
        if s.clean() { "OK" } else { "VIOLATED" }
    );
}

#[cfg(not(feature = "etcd-bench"))]
mod etcd {
    //! Without the etcd client built in: no comparison.
    use super::*;

    pub(super) struct EtcdRun;

    impl EtcdRun {
        pub(super) fn lock_rate_under_churn(&self, _: Shape) -> f64 {
            0.0
        }
        pub(super) fn timeline(&self) -> Vec<(u64, usize, Duration)> {
            Vec::new()
        }
        pub(super) fn print_beside(&self, _: &MeshRun, _: Shape) {}
        pub(super) fn json(&self, _: Shape) -> serde_json::Value {
            json!(null)
        }
    }

    pub(super) fn run(
        _: &ChurnOptions,
        _: u64,
        _: Shape,
        _: &[Fault],
        _: &Path,
    ) -> Result<Option<EtcdRun>, String> {
        println!("(built without --features etcd-bench: no etcd comparison)");
        Ok(None)
    }
}

#[cfg(feature = "etcd-bench")]
mod etcd {
    //! The lock part of the workload against a 5-member etcd, under the
    //! same faults at the same times: a kill or pause of the leader or of
    //! member `id` (ids above five, and leaves of members that are not
    //! voters, have no etcd counterpart and are skipped).
    use super::*;
    use crate::harness::churn::workload::{LOCK_TTL, LOCK_WAIT, Op, OpKind};
    use crate::harness::etcd::EtcdCluster;

    /// How often a session's lease is kept alive (its TTL is the
    /// workload's lock TTL, as etcd's own sessions keep theirs).
    const KEEP_ALIVE: Duration = Duration::from_millis(500);

    /// A client's session, as etcd's `concurrency.Session`: a lease with
    /// the lock TTL, kept alive in the background until it fails.
    struct Session {
        lease: i64,
        alive: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Session {
        async fn open(client: &etcd_client::Client) -> Option<Session> {
            let call = Duration::from_secs(2);
            let ttl = LOCK_TTL.as_secs() as i64;
            let lease = tokio::time::timeout(call, client.clone().lease_grant(ttl, None))
                .await
                .ok()?
                .ok()?
                .id();
            let (mut keeper, mut answers) =
                tokio::time::timeout(call, client.clone().lease_keep_alive(lease))
                    .await
                    .ok()?
                    .ok()?;
            let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let flag = alive.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(KEEP_ALIVE).await;
                    if !flag.load(Ordering::Relaxed) || keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(LOCK_TTL, answers.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        _ => break,
                    }
                }
                flag.store(false, Ordering::Relaxed);
            });
            Some(Session { lease, alive })
        }

        fn alive(&self) -> bool {
            self.alive.load(Ordering::Relaxed)
        }

        /// Ends the session: its lease is revoked, what it holds freed.
        fn close(self, client: &etcd_client::Client) {
            self.alive.store(false, Ordering::Relaxed);
            revoke(client, self.lease);
        }
    }

    pub(super) struct EtcdRun {
        ops: Vec<Op>,
        effects: Vec<Effect>,
        elapsed: Duration,
        given_up: u64,
    }

    impl EtcdRun {
        pub(super) fn lock_rate_under_churn(&self, shape: Shape) -> f64 {
            report::rate(&self.ops, shape.steady, churn_end(&self.effects, shape))
        }

        pub(super) fn timeline(&self) -> Vec<(u64, usize, Duration)> {
            report::timeline(&self.ops, self.elapsed)
        }

        fn failovers(&self) -> Vec<f64> {
            self.effects
                .iter()
                .filter(|e| e.applied.hit_leader())
                .map(|e| e.gap.as_secs_f64() * 1e3)
                .collect()
        }

        pub(super) fn print_beside(&self, mesh: &MeshRun, shape: Shape) {
            let ours: Vec<Op> = mesh
                .ops
                .iter()
                .filter(|o| o.kind == OpKind::Acquire)
                .copied()
                .collect();
            let (a, _) = report::latencies(&ours);
            let (b, _) = report::latencies(&self.ops);
            let end_a = churn_end(&mesh.effects, shape);
            let end_b = churn_end(&self.effects, shape);
            let fo = |v: Vec<f64>| {
                median(v.clone()).map_or("-".into(), |m| {
                    format!("{m:.0} (max {:.0})", v.iter().copied().fold(0.0, f64::max))
                })
            };
            println!(
                "locks under the same schedule      {:>16} {:>16}",
                "meshd", "etcd (5 members)"
            );
            let row = |name: &str, x: String, y: String| println!("  {name:<32} {x:>16} {y:>16}");
            row(
                "acquires/s steady",
                format!("{:.0}", report::rate(&ours, Duration::ZERO, shape.steady)),
                format!(
                    "{:.0}",
                    report::rate(&self.ops, Duration::ZERO, shape.steady)
                ),
            );
            row(
                "acquires/s under churn",
                format!("{:.0}", report::rate(&ours, shape.steady, end_a)),
                format!("{:.0}", report::rate(&self.ops, shape.steady, end_b)),
            );
            row(
                "acquire p50 ms",
                format!("{:.1}", ms(a.p50)),
                format!("{:.1}", ms(b.p50)),
            );
            row(
                "acquire p99 ms",
                format!("{:.0}", ms(a.p99)),
                format!("{:.0}", ms(b.p99)),
            );
            row(
                "acquire max ms",
                format!("{:.0}", ms(a.max)),
                format!("{:.0}", ms(b.max)),
            );
            row(
                "failover median ms",
                fo(mesh.failovers()),
                fo(self.failovers()),
            );
            row(
                "faults struck",
                mesh.effects
                    .iter()
                    .filter(|e| e.applied.victim.is_some())
                    .count()
                    .to_string(),
                self.effects
                    .iter()
                    .filter(|e| e.applied.victim.is_some())
                    .count()
                    .to_string(),
            );
        }

        pub(super) fn json(&self, shape: Shape) -> serde_json::Value {
            let (a, _) = report::latencies(&self.ops);
            json!({
                "members": 5,
                "duration_s": self.elapsed.as_secs_f64(),
                "acquires": self.ops.len(),
                "steady_acquires_per_s": report::rate(&self.ops, Duration::ZERO, shape.steady),
                "acquires_per_s_under_churn": self.lock_rate_under_churn(shape),
                "acquire": {"p50_ms": ms(a.p50), "p99_ms": ms(a.p99), "max_ms": ms(a.max)},
                "failover_ms": self.failovers(),
                "faults": self.effects.iter().filter(|e| e.applied.victim.is_some()).count(),
                "given_up": self.given_up,
                "timeline": timeline_json(&self.ops, self.elapsed),
                "per_fault": self.effects.iter().map(|e| json!({
                    "at_s": e.applied.fault.at.as_secs_f64(),
                    "kind": e.applied.fault.kind.name(),
                    "member": e.applied.victim,
                    "skipped": e.applied.skipped,
                    "longest_gap_ms": ms(e.gap),
                })).collect::<Vec<_>>(),
            })
        }
    }

    pub(super) fn run(
        args: &ChurnOptions,
        seed: u64,
        shape: Shape,
        faults: &[Fault],
        dir: &Path,
    ) -> Result<Option<EtcdRun>, String> {
        if args.lock_clients == 0 {
            println!("(no lock clients: no etcd comparison)");
            return Ok(None);
        }
        println!();
        println!(
            "etcd: 5 members {}, the lock workload, the same faults at the same times",
            if shape.partitions {
                "each in a network namespace of its own"
            } else {
                "on loopback"
            }
        );
        if !EtcdCluster::available() {
            println!("(etcd not installed: no comparison)");
            return Ok(None);
        }
        // With partitions, each member in a namespace of its own, cut as
        // the agents were.
        let mut namespaces = if shape.partitions {
            Some(netns::Namespaces::create(5)?)
        } else {
            None
        };
        let mut etcd = match &namespaces {
            Some(ns) => {
                let hosts: Vec<_> = (1..=5).map(|i| ns.addr(i)).collect();
                EtcdCluster::start_at(&hosts, (1..=5).map(|i| ns.prefix(i)).collect(), dir)
            }
            None => EtcdCluster::start(5, dir),
        }
        .map_err(|e| e.to_string())?;
        if !etcd.wait_healthy(Duration::from_secs(60)) {
            return Err("etcd: not healthy within 60 s".into());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let client = runtime
            .block_on(etcd_client::Client::connect(etcd.endpoints(), None))
            .map_err(|e| e.to_string())?;
        let run = Shared::new();
        let tasks: Vec<_> = (0..args.lock_clients)
            .map(|i| {
                runtime.spawn(lock_client(
                    i,
                    seed,
                    args.locks,
                    client.clone(),
                    run.clone(),
                ))
            })
            .collect();
        let progress = Progress::start(run.clone(), shape.duration, !args.quiet);
        let mut applied = Vec::new();
        for fault in faults {
            sleep_until(run.t0, fault.at);
            let a = strike(&mut etcd, namespaces.as_mut(), fault);
            progress.fault(fault.at, describe(&a));
            sleep_until(run.t0, fault.at + fault.kind.lasting());
            if let Some(m) = a.victim {
                match a.fault.kind {
                    Kind::Kill { .. } => etcd.spawn(m as usize - 1).map_err(|e| e.to_string())?,
                    Kind::Pause { .. } => signal(&etcd, m as usize - 1, libc::SIGCONT),
                    _ => {
                        if let Some(ns) = namespaces.as_mut() {
                            ns.heal()?;
                        }
                    }
                }
            }
            applied.push(a);
        }
        sleep_until(run.t0, shape.duration);
        let elapsed = run.t0.elapsed();
        run.stop.store(true, Ordering::Relaxed);
        progress.finish();
        runtime.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
        let ops = std::mem::take(&mut *run.ops.lock().unwrap());
        Ok(Some(EtcdRun {
            effects: report::effects(&applied, &ops, &[], shape.every),
            ops,
            elapsed,
            given_up: run.given_up.load(Ordering::Relaxed),
        }))
    }

    fn signal(etcd: &EtcdCluster, i: usize, sig: i32) {
        if let Some(pid) = etcd.pid(i) {
            // SAFETY: plain syscall on a child we spawned and have not
            // reaped, so the pid cannot have been reused.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// Strikes `fault` on etcd; victims are named by id (`1..=5`).
    fn strike(
        etcd: &mut EtcdCluster,
        namespaces: Option<&mut netns::Namespaces>,
        fault: &Fault,
    ) -> Applied {
        let leader = etcd.leader().map(|i| i as u64 + 1);
        let victim = match fault.target {
            Target::Leader => leader,
            Target::Node(id) => Some(id),
        };
        let mut a = Applied {
            fault: *fault,
            victim: None,
            leader,
            skipped: None,
        };
        match (victim, fault.kind) {
            (Some(v @ 1..=5), Kind::Kill { .. }) => {
                etcd.kill9(v as usize - 1);
                a.victim = Some(v);
            }
            (Some(v @ 1..=5), Kind::Pause { .. }) => {
                signal(etcd, v as usize - 1, libc::SIGSTOP);
                a.victim = Some(v);
            }
            (None, _) => a.skipped = Some("no leader found".into()),
            (Some(_), Kind::Kill { .. } | Kind::Pause { .. }) => {
                a.skipped = Some("etcd has five members".into())
            }
            (Some(_), Kind::Leave { .. }) => {
                a.skipped = Some("etcd has no members that are not voters here".into())
            }
            (Some(v @ 1..=5), partition) => match namespaces {
                Some(ns) => match partition_by(ns, partition, v, 5) {
                    Ok(()) => a.victim = Some(v),
                    Err(e) => a.skipped = Some(e),
                },
                None => a.skipped = Some("partitions need network namespaces".into()),
            },
            (Some(_), _) => a.skipped = Some("etcd has five members".into()),
        }
        a
    }

    /// As the meshd lock client: acquire one of `names` locks waiting up
    /// to [`LOCK_WAIT`], hold a moment, unlock; each client's locks in a
    /// session of its own ([`Session`]). A lock call that fails or waits
    /// too long ends the session (its queued key goes with the lease),
    /// and the next acquire opens another.
    async fn lock_client(
        idx: usize,
        seed: u64,
        names: usize,
        client: etcd_client::Client,
        run: Arc<Shared>,
    ) {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed ^ 0x10c6 ^ ((idx as u64) << 32));
        let mut session: Option<Session> = None;
        let call = Duration::from_secs(2);
        while !run.stop.load(Ordering::Relaxed) {
            let name = format!("churn-{}", rng.random_range(0..names.max(1)));
            let began = Instant::now();
            let key = loop {
                if run.stop.load(Ordering::Relaxed) || began.elapsed() >= workload::GIVE_UP {
                    run.given_up.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
                let lease = match &session {
                    Some(s) if s.alive() => s.lease,
                    _ => {
                        if let Some(s) = session.take() {
                            s.close(&client);
                        }
                        session = Session::open(&client).await;
                        match &session {
                            Some(s) => s.lease,
                            None => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        }
                    }
                };
                let options = etcd_client::LockOptions::new().with_lease(lease);
                let mut c = client.clone();
                match tokio::time::timeout(LOCK_WAIT, c.lock(name.clone(), Some(options))).await {
                    Ok(Ok(r)) => break Some(r.key().to_vec()),
                    // Not granted within the wait: the lock is held.
                    Err(_) => {
                        if let Some(s) = session.take() {
                            s.close(&client);
                        }
                        break None;
                    }
                    Ok(Err(_)) => {
                        if let Some(s) = session.take() {
                            s.close(&client);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            let Some(key) = key else { continue };
            run.ops.lock().unwrap().push(Op {
                kind: OpKind::Acquire,
                end: run.t0.elapsed(),
                latency: began.elapsed(),
            });
            tokio::time::sleep(Duration::from_micros(rng.random_range(0..=2_000))).await;
            let until = Instant::now() + LOCK_TTL;
            let mut unlocked = false;
            while !unlocked && Instant::now() < until {
                match tokio::time::timeout(call, client.clone().unlock(key.clone())).await {
                    Ok(Ok(_)) => unlocked = true,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            if !unlocked && let Some(s) = session.take() {
                s.close(&client);
            }
        }
        if let Some(s) = session.take() {
            s.close(&client);
        }
    }

    /// Revokes a lease in the background (what it holds is freed).
    fn revoke(client: &etcd_client::Client, id: i64) {
        let mut client = client.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.lease_revoke(id)).await;
        });
    }
}
