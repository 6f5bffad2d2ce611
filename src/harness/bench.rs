//! The workloads of `meshd bench …` (the binary parses the flags into
//! these options and prints nothing of its own): benchmarks that check
//! the project's speed and memory targets. Each prints a table and can
//! write JSON (`--json FILE`).
//!
//! - [`membership`] (feature `sim`): simulated clusters (virtual time) of
//!   several sizes: time for all to see all, time for all to see a crash,
//!   gossip bytes per node per second.
//! - [`idle`]: real agents on loopback at rest: resident memory and CPU,
//!   beside a 3-member etcd in the same run when `etcd` is installed.
//! - [`failover`]: kill -9 of the leader of real agents, time until a new
//!   leader holds a quorum; the same for a 3-member etcd (time until the
//!   first successful write), in the same run.
//! - [`rpc`]: QUIC RPC with mutual TLS on loopback, from this process to a
//!   real agent: round-trip latency of one caller, throughput of many.
//! - locks: [`super::bench_locks`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::NodeId;
use crate::harness::agents::{Agents, context_switches, cpu_time, rss_kib};
use crate::harness::etcd::EtcdCluster;
use crate::harness::report::{micros, percentile, write_json};
use crate::rpc::Unserved;

/// What `meshd bench failover` runs (its flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct FailoverOptions {
    /// Kill -9 trials for each system.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20))]
    pub trials: usize,
    /// Agents (all voters when at most 5).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3))]
    pub nodes: u64,
    /// Skip the etcd comparison even if etcd is installed.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_etcd: bool,
    /// Write results as JSON to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub json: Option<PathBuf>,
}

/// What `meshd bench rpc` runs (its flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RpcOptions {
    /// Sequential calls timed for the single-caller latency.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 20_000))]
    pub calls: u64,
    /// Concurrent callers for the throughput phase.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub callers: usize,
    /// Seconds of the throughput phase.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub duration_s: u64,
    /// Request payload in bytes.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64))]
    pub payload_bytes: usize,
    /// Serve from a node in this process, on the caller's thread, instead
    /// of an agent process: the protocol's own cost, without the
    /// cross-process wake-ups.
    #[cfg_attr(feature = "cli", arg(long))]
    pub in_process: bool,
    /// Write results as JSON to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub json: Option<PathBuf>,
}

/// What `meshd bench membership` runs (its flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct MembershipOptions {
    /// Cluster sizes, comma-separated.
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ',', default_values_t = vec![10u64, 50, 100, 200]))]
    pub sizes: Vec<u64>,
    /// Seed of the simulated network.
    #[cfg_attr(feature = "cli", arg(long))]
    pub seed: Option<u64>,
    /// Compress gossip digests (chitchat wire format V1).
    #[cfg_attr(feature = "cli", arg(long))]
    pub compression: bool,
    /// Virtual seconds over which bandwidth is measured.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub window_s: u64,
    /// Virtual seconds of churn (members restarting while a lock is
    /// taken through another); 0 for none. Sizes above 7 only.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub churn_s: u64,
    /// Write results as JSON to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub json: Option<PathBuf>,
}

/// What `meshd bench idle` runs (its flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct IdleOptions {
    /// Number of agents.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub nodes: u64,
    /// Seconds over which CPU use is measured (after a 5 s settle).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 30))]
    pub duration_s: u64,
    /// Skip the etcd comparison even if etcd is installed.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_etcd: bool,
    /// Run an open cluster (no cluster key: gossip unsealed).
    #[cfg_attr(feature = "cli", arg(long))]
    pub open: bool,
    /// Write results as JSON to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub json: Option<PathBuf>,
}

/// Simulated membership: convergence, crash detection, bandwidth; and at
/// each size the leader's heartbeat traffic, a failover of the leader seen
/// from the member furthest from it, and a churn of members that are not
/// voters restarting while a lock is taken through one of them.
#[cfg(feature = "sim")]
pub fn membership(args: MembershipOptions) -> Result<(), String> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let window = Duration::from_secs(args.window_s.max(1));
    println!(
        "membership benchmark: simulated clusters (5 voters, the rest members), 100 ms gossip, 100 ms heartbeats, virtual time, seed {seed}, digest compression {}",
        if args.compression { "on" } else { "off" }
    );
    println!(
        "{:>6}  {:>11}  {:>11}  {:>12}  {:>10}  {:>12}  {:>12}  {:>6}  {:>10}  {:>10}  {:>10}  {:>8}",
        "nodes",
        "all-see-all",
        "crash-seen",
        "gossip B/n/s",
        "rpc B/n/s",
        "leader msg/s",
        "leader B/s",
        "flaps",
        "failover",
        "all follow",
        "lock after",
        "wall"
    );
    let mut rows = Vec::new();
    let mut churns = Vec::new();
    for &n in &args.sizes {
        if !(2..=1000).contains(&n) {
            return Err(format!("size {n} out of range 2-1000"));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(|e| e.to_string())?;
        let wall = Instant::now();
        let row = runtime.block_on(scale::run(seed, n, window, args.compression, args.churn_s))?;
        let wall = wall.elapsed();
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.0}ms", d.as_secs_f64() * 1e3)
            })
        };
        println!(
            "{:>6}  {:>9.0}ms  {:>9.0}ms  {:>12.0}  {:>10.0}  {:>12.1}  {:>12.0}  {:>6}  {:>10}  {:>10}  {:>10}  {:>7.1}s",
            n,
            row.converge.as_secs_f64() * 1e3,
            row.detect.as_secs_f64() * 1e3,
            row.gossip_per_node_s,
            row.rpc_per_node_s,
            row.leader_messages_s,
            row.leader_bytes_s,
            row.flaps,
            ms(row.failover),
            ms(row.followed),
            ms(row.lock_after),
            wall.as_secs_f64()
        );
        let opt_ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        rows.push(json!({
            "nodes": n,
            "converge_ms": row.converge.as_millis() as u64,
            "crash_detect_ms": row.detect.as_millis() as u64,
            "gossip_bytes_per_node_per_s": row.gossip_per_node_s.round() as u64,
            "rpc_bytes_per_node_per_s": row.rpc_per_node_s.round() as u64,
            "leader_rpc_messages_per_s": row.leader_messages_s,
            "leader_rpc_bytes_per_s": row.leader_bytes_s.round() as u64,
            "member_leader_changes": row.flaps,
            "failover_ms": opt_ms(row.failover),
            "all_follow_ms": opt_ms(row.followed),
            "lock_after_failover_ms": opt_ms(row.lock_after),
            "wall_s": wall.as_secs_f64(),
        }));
        if let Some(c) = row.churn {
            churns.push((n, c));
        }
    }
    println!(
        "(times are virtual; crash-seen: from a kill -9 of the last member until every survivor sees it; failover: from a kill -9 of the leader until a new one serves; all follow: until every survivor follows it; lock after: until a lock asked for through the last member once a new leader serves is granted; rpc bytes are frames as encoded, heartbeats and their answers included, QUIC overhead not)"
    );
    if !churns.is_empty() {
        println!(
            "churn, {} virtual s: a member that is not a voter killed -9 and restarted every second, a lock acquired and released through another every 200 ms",
            args.churn_s
        );
        println!(
            "{:>6}  {:>9}  {:>12}  {:>13}  {:>13}  {:>13}  {:>12}  {:>10}",
            "nodes",
            "restarts",
            "new terms",
            "locks ok",
            "lock p50",
            "lock max",
            "gossip B/n/s",
            "rpc B/n/s"
        );
    }
    let mut churn_rows = Vec::new();
    for (n, c) in churns {
        println!(
            "{:>6}  {:>9}  {:>12}  {:>6}/{:<6}  {:>11.1}ms  {:>11.1}ms  {:>12.0}  {:>10.0}",
            n,
            c.restarts,
            c.new_terms,
            c.locks_ok,
            c.locks_tried,
            c.lock_p50.as_secs_f64() * 1e3,
            c.lock_max.as_secs_f64() * 1e3,
            c.gossip_per_node_s,
            c.rpc_per_node_s
        );
        churn_rows.push(json!({
            "nodes": n,
            "restarts": c.restarts,
            "new_terms": c.new_terms,
            "locks_ok": c.locks_ok,
            "locks_tried": c.locks_tried,
            "lock_p50_us": c.lock_p50.as_micros() as u64,
            "lock_max_us": c.lock_max.as_micros() as u64,
            "gossip_bytes_per_node_per_s": c.gossip_per_node_s.round() as u64,
            "rpc_bytes_per_node_per_s": c.rpc_per_node_s.round() as u64,
        }));
    }
    write_json(
        args.json.as_deref(),
        &json!({"seed": seed, "gossip_interval_ms": 100, "rows": rows, "churn": churn_rows}),
    )
}

/// The simulated runs of [`membership`].
#[cfg(feature = "sim")]
mod scale {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use crate::ConfigBuilder;
    use crate::NodeId;
    use crate::metrics::Metrics;
    use crate::net::SimGossip;
    use crate::sim::SimCluster;

    /// One size's figures.
    pub(super) struct Row {
        pub converge: Duration,
        pub detect: Duration,
        pub gossip_per_node_s: f64,
        pub rpc_per_node_s: f64,
        pub leader_messages_s: f64,
        pub leader_bytes_s: f64,
        /// Changes of the leader the last member saw over the window (a
        /// steady leader: none).
        pub flaps: u64,
        pub failover: Option<Duration>,
        pub followed: Option<Duration>,
        pub lock_after: Option<Duration>,
        pub churn: Option<Churn>,
    }

    /// What the churn phase saw.
    pub(super) struct Churn {
        pub restarts: u64,
        pub new_terms: u64,
        pub locks_ok: u64,
        pub locks_tried: u64,
        pub lock_p50: Duration,
        pub lock_max: Duration,
        pub gossip_per_node_s: f64,
        pub rpc_per_node_s: f64,
    }

    const VOTERS: u64 = 5;
    /// The most a step may take before the run is declared stuck.
    const WITHIN: Duration = Duration::from_secs(120);

    fn sum(c: &SimCluster, counter: impl Fn(&Metrics) -> &AtomicU64) -> u64 {
        c.running()
            .iter()
            .map(|id| counter(c.mesh(*id).metrics()).load(Ordering::Relaxed))
            .sum()
    }

    fn of(c: &SimCluster, id: NodeId, counter: impl Fn(&Metrics) -> &AtomicU64) -> u64 {
        counter(c.mesh(id).metrics()).load(Ordering::Relaxed)
    }

    /// Acquires and releases `name` through `mesh`; the time it took, or
    /// `None` if it was refused or took longer than two seconds.
    async fn lock_once(mesh: &crate::Mesh, name: &str) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let guard = mesh
            .lock(name)
            .ttl(Duration::from_secs(2))
            .wait(Duration::from_secs(2))
            .acquire()
            .await
            .ok()?;
        let took = start.elapsed();
        let _ = guard.release().await;
        Some(took)
    }

    pub(super) async fn run(
        seed: u64,
        n: u64,
        window: Duration,
        compression: bool,
        churn_s: u64,
    ) -> Result<Row, String> {
        let tuning = ConfigBuilder {
            gossip_compression: Some(compression),
            ..ConfigBuilder::default()
        };
        let mut c = SimCluster::start_gossiping(seed, n, tuning, SimGossip::Chitchat).await;
        let converge = c
            .eventually(WITHIN, "all see all", |c| c.all_see_alive(n as usize))
            .await;
        c.eventually(WITHIN, "a leader all follow", |c| {
            c.agreed_leader().is_some()
        })
        .await;
        let leader = c.agreed_leader().ok_or("no leader")?;
        let gossip = |c: &SimCluster| sum(c, |m| &m.gossip_bytes_sent);
        let rpc = |c: &SimCluster| sum(c, |m| &m.rpc_bytes_sent);
        let calls = |c: &SimCluster| of(c, leader, |m| &m.rpc_calls);
        let leader_bytes = |c: &SimCluster| of(c, leader, |m| &m.rpc_bytes_sent);
        let flaps = |c: &SimCluster| of(c, NodeId(n), |m| &m.leader_changes);
        let before = (gossip(&c), rpc(&c), calls(&c), leader_bytes(&c), flaps(&c));
        tokio::time::sleep(window).await;
        let per_s = |now: u64, then: u64| (now - then) as f64 / window.as_secs_f64();
        let gossip_per_node_s = per_s(gossip(&c), before.0) / n as f64;
        let rpc_per_node_s = per_s(rpc(&c), before.1) / n as f64;
        let leader_messages_s = per_s(calls(&c), before.2);
        let leader_bytes_s = per_s(leader_bytes(&c), before.3);
        let flaps = flaps(&c) - before.4;

        let churn = if churn_s > 0 && n > VOTERS + 2 {
            Some(churn(&mut c, seed, n, Duration::from_secs(churn_s)).await?)
        } else {
            None
        };

        let victim = NodeId(n);
        c.kill(victim).await;
        let detect = c
            .eventually(WITHIN, "all see the crash", |c| c.all_see_gone(victim))
            .await;

        // A failover, seen from the member furthest from the leader. A
        // cluster of fewer than a majority of voters once the leader and
        // the last member are gone has none.
        let (failover, followed, lock_after) = if n > VOTERS {
            let via = NodeId(n - 1);
            let epoch = c.mesh(via).leader().map(|l| l.epoch);
            c.kill(leader).await;
            let start = tokio::time::Instant::now();
            let serving = c
                .eventually(WITHIN, "a new leader serves", |c| {
                    c.running().iter().any(|id| c.mesh(*id).is_leader())
                })
                .await;
            // Asked for as soon as a new leader serves, while the others
            // may still be learning of it.
            let mesh = c.mesh(via).clone();
            let lock = tokio::spawn(async move {
                lock_once(&mesh, "scale-failover")
                    .await
                    .map(|_| start.elapsed())
            });
            c.eventually(WITHIN, "all follow the new leader", |c| {
                c.agreed_leader()
                    .is_some_and(|_| c.mesh(via).leader().map(|l| l.epoch) > epoch)
            })
            .await;
            let followed = start.elapsed();
            let lock_after = lock.await.map_err(|e| e.to_string())?;
            (Some(serving), Some(followed), lock_after)
        } else {
            (None, None, None)
        };
        c.shutdown().await;
        Ok(Row {
            converge,
            detect,
            gossip_per_node_s,
            rpc_per_node_s,
            leader_messages_s,
            leader_bytes_s,
            flaps,
            failover,
            followed,
            lock_after,
            churn,
        })
    }

    /// Members that are not voters restart one a second (kill -9, then a
    /// new generation at once), the last member left alone; a lock is
    /// taken and released through it every 200 ms.
    async fn churn(
        c: &mut SimCluster,
        seed: u64,
        n: u64,
        length: Duration,
    ) -> Result<Churn, String> {
        let mut rng = StdRng::seed_from_u64(seed ^ n);
        let via = NodeId(n);
        let terms = |c: &SimCluster| sum(c, |m| &m.election_terms_won);
        let gossip = |c: &SimCluster| sum(c, |m| &m.gossip_bytes_sent);
        let rpc = |c: &SimCluster| sum(c, |m| &m.rpc_bytes_sent);
        let (terms0, gossip0, rpc0) = (terms(c), gossip(c), rpc(c));
        let start = tokio::time::Instant::now();
        let mut restarts = 0;
        let mut next_restart = start + Duration::from_secs(1);
        let mut latencies = Vec::new();
        let mut tried = 0;
        let mut round = 0u64;
        while start.elapsed() < length {
            if tokio::time::Instant::now() >= next_restart {
                let id = NodeId(rng.random_range(VOTERS + 1..n));
                c.kill(id).await;
                c.restart(id).await;
                restarts += 1;
                next_restart += Duration::from_secs(1);
            }
            tried += 1;
            round += 1;
            let lock_start = tokio::time::Instant::now();
            if let Some(took) = lock_once(c.mesh(via), &format!("churn-{}", round % 8)).await {
                latencies.push(took);
            }
            let spent = lock_start.elapsed();
            tokio::time::sleep(Duration::from_millis(200).saturating_sub(spent)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let p50 = latencies
            .get(latencies.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = latencies.last().copied().unwrap_or_default();
        // Terms are counted over the nodes running now: a restarted
        // member's counters start again at zero, and members never lead
        // while a voter below them lives.
        Ok(Churn {
            restarts,
            new_terms: terms(c).saturating_sub(terms0),
            locks_ok: latencies.len() as u64,
            locks_tried: tried,
            lock_p50: p50,
            lock_max: max,
            gossip_per_node_s: gossip(c).saturating_sub(gossip0) as f64 / n as f64 / elapsed,
            rpc_per_node_s: rpc(c).saturating_sub(rpc0) as f64 / n as f64 / elapsed,
        })
    }
}

/// What one process did over the sampled window.
struct Sampled {
    /// Percent of one core.
    cpu: f64,
    /// Resident set at the end, KiB.
    rss: u64,
    /// Context switches of all its threads per second.
    wakeups: f64,
}

/// Samples CPU time and context switches of `pids` over `window`.
fn sample(pids: &[u32], window: Duration) -> Result<Vec<Sampled>, String> {
    let vanished = |pid: &u32| format!("process {pid} vanished");
    let read = |pid: &u32| {
        Ok::<_, String>((
            cpu_time(*pid).ok_or_else(|| vanished(pid))?,
            context_switches(*pid).ok_or_else(|| vanished(pid))?,
        ))
    };
    let before: Vec<(Duration, u64)> = pids.iter().map(read).collect::<Result<_, _>>()?;
    let start = Instant::now();
    std::thread::sleep(window);
    let elapsed = start.elapsed().as_secs_f64();
    let after: Vec<(Duration, u64)> = pids.iter().map(read).collect::<Result<_, _>>()?;
    pids.iter()
        .zip(before.iter().zip(&after))
        .map(|(pid, (b, a))| {
            Ok(Sampled {
                cpu: (a.0 - b.0).as_secs_f64() / elapsed * 100.0,
                rss: rss_kib(*pid).ok_or_else(|| vanished(pid))?,
                wakeups: a.1.saturating_sub(b.1) as f64 / elapsed,
            })
        })
        .collect()
}

fn summarize(name: &str, sampled: &[Sampled]) -> serde_json::Value {
    let cpu: Vec<f64> = sampled.iter().map(|s| s.cpu).collect();
    let rss: Vec<u64> = sampled.iter().map(|s| s.rss).collect();
    let wakeups: Vec<f64> = sampled.iter().map(|s| s.wakeups).collect();
    let mean_wakeups = wakeups.iter().sum::<f64>() / wakeups.len().max(1) as f64;
    let max_rss = *rss.iter().max().unwrap_or(&0);
    let mean_rss = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64;
    let mean_cpu = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
    let max_cpu = cpu.iter().copied().fold(0.0, f64::max);
    println!(
        "{name:<24} {:>3} procs  RSS mean {:>6.1} MiB, max {:>6.1} MiB  CPU mean {:>5.2}%, max {:>5.2}% of one core  wakeups {:>5.0}/s",
        rss.len(),
        mean_rss / 1024.0,
        max_rss as f64 / 1024.0,
        mean_cpu,
        max_cpu,
        mean_wakeups
    );
    json!({
        "processes": rss.len(),
        "wakeups_per_s": wakeups,
        "wakeups_mean_per_s": mean_wakeups,
        "rss_kib": rss,
        "rss_mean_mib": mean_rss / 1024.0,
        "rss_max_mib": max_rss as f64 / 1024.0,
        "cpu_percent": cpu,
        "cpu_mean_percent": mean_cpu,
        "cpu_max_percent": max_cpu,
    })
}

/// Real agents at rest: memory and CPU, beside etcd.
pub fn idle(args: IdleOptions) -> Result<(), String> {
    let bin = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("meshd-bench-idle-{}", std::process::id()));
    let mut agents = Agents::new(&bin, args.nodes, &dir).map_err(|e| e.to_string())?;
    if !args.open {
        agents.close_with_new_key()?;
    }
    agents.start_all().map_err(|e| e.to_string())?;
    let all = agents.ids();
    agents
        .wait_until(Duration::from_secs(30), |a| a.all_see(&all))
        .ok_or("agents did not converge within 30 s")?;
    let etcd = if !args.no_etcd && EtcdCluster::available() {
        let etcd = EtcdCluster::start(3, &dir.join("etcd")).map_err(|e| e.to_string())?;
        if !etcd.wait_healthy(Duration::from_secs(30)) {
            return Err("etcd did not become healthy within 30 s".into());
        }
        Some(etcd)
    } else {
        println!("(etcd not installed or --no-etcd: no comparison)");
        None
    };
    // Settle: startup allocations and the first elections are not "idle".
    std::thread::sleep(Duration::from_secs(5));
    let window = Duration::from_secs(args.duration_s.max(1));
    let agent_pids: Vec<u32> = all.iter().filter_map(|id| agents.pid(*id)).collect();
    let mut pids = agent_pids.clone();
    let etcd_pids = etcd.as_ref().map(EtcdCluster::pids).unwrap_or_default();
    pids.extend(&etcd_pids);
    println!(
        "idle benchmark: {} {} agents{} at rest, CPU sampled over {} s, same window for all",
        args.nodes,
        if args.open {
            "open"
        } else {
            "keyed (sealed gossip)"
        },
        if etcd.is_some() {
            " and a 3-member etcd"
        } else {
            ""
        },
        window.as_secs()
    );
    let leader = agents.agreed_leader().map(|(id, _)| id);
    let sampled = sample(&pids, window)?;
    let k = agent_pids.len();
    let ours = summarize("meshd agent", &sampled[..k]);
    let mut out = json!({"duration_s": window.as_secs(), "meshd": ours});
    // The leader alone: it sends the heartbeat rounds.
    let at = leader.and_then(|l| {
        all.iter()
            .filter(|id| agents.pid(**id).is_some())
            .position(|id| *id == l)
    });
    if let (Some(l), Some(i)) = (leader, at) {
        let s = &sampled[i];
        println!(
            "the leader (node {l})          RSS {:>6.1} MiB  CPU {:>5.2}% of one core  wakeups {:>5.0}/s",
            s.rss as f64 / 1024.0,
            s.cpu,
            s.wakeups
        );
        out["leader"] =
            json!({"node": l, "cpu_percent": s.cpu, "rss_kib": s.rss, "wakeups_per_s": s.wakeups});
    }
    if etcd.is_some() {
        let theirs = summarize("etcd (3.4, Debian)", &sampled[k..]);
        let ratio_rss = ours["rss_mean_mib"].as_f64().unwrap_or(0.0)
            / theirs["rss_mean_mib"].as_f64().unwrap_or(f64::NAN);
        let ratio_cpu = ours["cpu_mean_percent"].as_f64().unwrap_or(0.0)
            / theirs["cpu_mean_percent"].as_f64().unwrap_or(f64::NAN);
        println!("ratio meshd/etcd: RSS {ratio_rss:.2}, CPU {ratio_cpu:.2}");
        out["etcd"] = theirs;
        out["ratio_rss"] = json!(ratio_rss);
        out["ratio_cpu"] = json!(ratio_cpu);
    }
    drop(etcd);
    agents.stop_all(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    write_json(args.json.as_deref(), &out)
}

/// QUIC RPC with mutual TLS on loopback: latency and throughput.
pub fn rpc(args: RpcOptions) -> Result<(), String> {
    use crate::rpc::{Ping, Request, Rpc};
    let bin = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("meshd-bench-rpc-{}", std::process::id()));
    let mut agents = Agents::new(&bin, 1, &dir).map_err(|e| e.to_string())?;
    let (_, secret) = agents.close_with_new_key()?;
    if !args.in_process {
        agents.start_all().map_err(|e| e.to_string())?;
        agents
            .wait_until(Duration::from_secs(30), |a| a.all_see(&[1]))
            .ok_or("the agent did not start within 30 s")?;
    }

    // One thread, as in the agent: on two cores the server needs the other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        let local = if args.in_process {
            let mut config = crate::Config::new(1, "127.0.0.1:0".parse().map_err(|_| "address")?)
                .map_err(|e| e.to_string())?;
            config.cluster_secret = Some(secret.clone());
            Some(
                crate::Mesh::start(config)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let server = match &local {
            Some(mesh) => mesh.config().rpc_addr,
            None => agents.spec(1).rpc,
        };
        let client = Rpc::bind(
            &crate::net::Network::Udp,
            "127.0.0.1:0".parse().map_err(|_| "address")?,
            NodeId(u64::MAX),
            &secret,
            std::sync::Arc::new(Unserved),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        )
        .await
        .map_err(|e| e.to_string())?;
        let client = std::sync::Arc::new(client);
        let payload = vec![0x5a; args.payload_bytes];
        let timeout = Duration::from_secs(2);
        // The single caller is a spawned task, as callers in a daemon are.
        let sequential = {
            let client = client.clone();
            let payload = payload.clone();
            let calls = args.calls;
            tokio::spawn(async move {
                let ping = || {
                    Request::Ping(Ping {
                        payload: payload.clone(),
                    })
                };
                // Warm up: handshake, congestion window, allocator.
                for _ in 0..2_000 {
                    client
                        .call(server, ping(), timeout)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let mut single = Vec::with_capacity(calls as usize);
                for _ in 0..calls {
                    let start = Instant::now();
                    client
                        .call(server, ping(), timeout)
                        .await
                        .map_err(|e| e.to_string())?;
                    single.push(start.elapsed());
                }
                Ok::<_, String>(single)
            })
        };
        let mut single = sequential.await.map_err(|e| e.to_string())??;
        single.sort_unstable();
        let mut floor = udp_floor(args.calls, args.payload_bytes).await?;
        floor.sort_unstable();

        let window = Duration::from_secs(args.duration_s.max(1));
        let started = Instant::now();
        let deadline = started + window;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.callers.max(1) {
            let client = client.clone();
            let payload = payload.clone();
            tasks.spawn(async move {
                let mut times = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let request = Request::Ping(Ping {
                        payload: payload.clone(),
                    });
                    match client.call(server, request, timeout).await {
                        Ok(_) => times.push(start.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (times, errors)
            });
        }
        let mut loaded = Vec::new();
        let mut errors = 0;
        while let Some(done) = tasks.join_next().await {
            let (times, e) = done.map_err(|e| e.to_string())?;
            loaded.extend(times);
            errors += e;
        }
        let elapsed = started.elapsed();
        loaded.sort_unstable();
        client.close().await;
        if let Some(mesh) = local {
            mesh.shutdown().await;
        }
        Ok::<_, String>((single, floor, loaded, errors, elapsed))
    });
    agents.stop_all(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    let (single, floor, loaded, errors, elapsed) = result?;
    let rate = loaded.len() as f64 / elapsed.as_secs_f64();
    println!(
        "rpc benchmark: QUIC + mutual TLS on loopback, {}-byte pings, {}",
        args.payload_bytes,
        if args.in_process {
            "caller and node on one thread of this process"
        } else {
            "this process -> one meshd agent"
        }
    );
    println!("| phase | calls | p50 µs | p99 µs | calls/s |");
    println!("|---|---|---|---|---|");
    // One table row: calls, p50 and p99 in µs, calls per second.
    let row = |phase: &str, times: &[Duration], per_s: f64| {
        println!(
            "| {phase} | {} | {:.0} | {:.0} | {per_s:.0} |",
            times.len(),
            micros(percentile(times, 50.0)),
            micros(percentile(times, 99.0)),
        );
    };
    let sequential =
        |times: &[Duration]| times.len() as f64 / times.iter().sum::<Duration>().as_secs_f64();
    row("1 caller, sequential", &single, sequential(&single));
    row(
        "floor: plain UDP echo, no QUIC (another thread)",
        &floor,
        sequential(&floor),
    );
    row(
        &format!("{} callers, {} s", args.callers, elapsed.as_secs()),
        &loaded,
        rate,
    );
    if errors > 0 {
        println!("errors under load: {errors}");
    }
    let out = json!({
        "payload_bytes": args.payload_bytes,
        "in_process": args.in_process,
        "single": {"calls": single.len(), "p50_us": micros(percentile(&single, 50.0)), "p99_us": micros(percentile(&single, 99.0))},
        "udp_floor": {"calls": floor.len(), "p50_us": micros(percentile(&floor, 50.0)), "p99_us": micros(percentile(&floor, 99.0))},
        "concurrent": {"callers": args.callers, "calls": loaded.len(), "calls_per_s": rate, "p50_us": micros(percentile(&loaded, 50.0)), "p99_us": micros(percentile(&loaded, 99.0)), "errors": errors},
    });
    write_json(args.json.as_deref(), &out)
}

/// Round trips of plain UDP datagrams (no QUIC, no TLS) to an echo on
/// another thread with its own runtime: what the machine's loopback and
/// wake-ups cost before any protocol. Reported beside the RPC figures.
async fn udp_floor(calls: u64, payload_bytes: usize) -> Result<Vec<Duration>, String> {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let echo_addr = echo.local_addr().map_err(|e| e.to_string())?;
    echo.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(echo)?;
            let mut buf = vec![0u8; 2048];
            let serve = async {
                loop {
                    let (n, from) = socket.recv_from(&mut buf).await?;
                    socket.send_to(&buf[..n], from).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), std::io::Error>(())
            };
            tokio::select! {
                r = serve => r,
                _ = stop_rx => Ok(()),
            }
        })
    });
    let client = tokio::spawn(async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(echo_addr).await?;
        let payload = vec![0x5a; payload_bytes];
        let mut buf = vec![0u8; 2048];
        let mut times = Vec::with_capacity(calls as usize);
        for i in 0..calls + 2_000 {
            let start = Instant::now();
            socket.send(&payload).await?;
            // Loopback does not lose datagrams, but never hang if it does.
            tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("UDP echo lost a datagram"))??;
            if i >= 2_000 {
                times.push(start.elapsed());
            }
        }
        Ok::<_, std::io::Error>(times)
    });
    let times = client
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string());
    let _ = stop_tx.send(());
    let _ = server.join();
    times
}

fn summarize_ms(name: &str, times: &mut [Duration]) -> serde_json::Value {
    times.sort_unstable();
    let p50 = percentile(times, 50.0).as_secs_f64() * 1e3;
    let p99 = percentile(times, 99.0).as_secs_f64() * 1e3;
    let max = times.last().copied().unwrap_or_default().as_secs_f64() * 1e3;
    println!(
        "{name:<26} {:>3} trials  p50 {p50:>6.0} ms  p99 {p99:>6.0} ms  max {max:>6.0} ms",
        times.len()
    );
    json!({"trials": times.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max,
           "all_ms": times.iter().map(|t| t.as_secs_f64() * 1e3).collect::<Vec<_>>()})
}

/// Leader failover after kill -9, real processes, beside etcd.
pub fn failover(args: FailoverOptions) -> Result<(), String> {
    let bin = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("meshd-bench-failover-{}", std::process::id()));
    let mut agents = Agents::new(&bin, args.nodes, &dir).map_err(|e| e.to_string())?;
    agents.close_with_new_key()?;
    agents.data_root = Some(dir.join("data"));
    agents.start_all().map_err(|e| e.to_string())?;
    let all = agents.ids();
    println!(
        "failover benchmark: {} keyed agents with data dirs on loopback, kill -9 of the leader, {} trials; time until a surviving agent reports a new leader with quorum and that leader reports its lease valid",
        args.nodes, args.trials
    );
    let mut ours = Vec::new();
    for trial in 0..args.trials {
        agents
            .wait_until(Duration::from_secs(30), |a| {
                a.all_see(&all) && a.agreed_leader().is_some()
            })
            .ok_or(format!("trial {trial}: no agreed leader within 30 s"))?;
        let (leader, epoch) = agents.agreed_leader().ok_or("leader vanished")?;
        let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
        let killed_at = Instant::now();
        agents.kill9(leader);
        let took = loop {
            let new = survivors.iter().find_map(|id| {
                agents
                    .leader_seen_by(*id)
                    .filter(|(l, e)| *l != leader && *e > epoch)
            });
            if let Some((l, _)) = new
                && agents.status(l).is_some_and(|s| s["is_leader"] == true)
            {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                return Err(format!("trial {trial}: no new leader within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        ours.push(took);
        agents.start(leader).map_err(|e| e.to_string())?;
    }
    agents.stop_all(Duration::from_secs(10));
    let mut out = json!({"nodes": args.nodes, "meshd": summarize_ms("meshd", &mut ours)});

    if !args.no_etcd && EtcdCluster::available() {
        let mut etcd = EtcdCluster::start(3, &dir.join("etcd")).map_err(|e| e.to_string())?;
        let mut theirs = Vec::new();
        for trial in 0..args.trials {
            if !etcd.wait_healthy(Duration::from_secs(60)) {
                return Err(format!("etcd trial {trial}: not healthy within 60 s"));
            }
            let start = Instant::now();
            let leader = loop {
                if let Some(l) = etcd.leader() {
                    break l;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(format!("etcd trial {trial}: no leader"));
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let survivors: Vec<usize> = (0..etcd.members.len()).filter(|i| *i != leader).collect();
            let killed_at = Instant::now();
            etcd.kill9(leader);
            let took = 'wait: loop {
                for &i in &survivors {
                    if etcd.put(i, Duration::from_millis(300)) {
                        break 'wait killed_at.elapsed();
                    }
                }
                if killed_at.elapsed() > Duration::from_secs(60) {
                    return Err(format!("etcd trial {trial}: no write within 60 s"));
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            theirs.push(took);
            etcd.spawn(leader).map_err(|e| e.to_string())?;
        }
        let theirs_json = summarize_ms("etcd 3.4 (3 members)", &mut theirs);
        let ratio = out["meshd"]["p50_ms"].as_f64().unwrap_or(f64::NAN)
            / theirs_json["p50_ms"].as_f64().unwrap_or(f64::NAN);
        println!("ratio of p50s meshd/etcd: {ratio:.2}");
        out["etcd"] = theirs_json;
        out["ratio_p50"] = json!(ratio);
    } else {
        println!("(etcd not installed or --no-etcd: no comparison)");
    }
    let _ = std::fs::remove_dir_all(&dir);
    write_json(args.json.as_deref(), &out)
}
