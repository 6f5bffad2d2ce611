//! The workload of `meshd bench idempotency` (the binary parses its flags
//! into [`IdempotencyOptions`] and calls [`idempotency`]):
//!
//! - in this process: a replay from a node's own records (one node, the
//!   Rust API, no network); anti-entropy between two replicas of
//!   `--records` records that differ in 100 (bytes and round trips, the
//!   exchange's messages encoded as on the wire), and from a node that
//!   starts empty beside `--records` (the walk); the resident memory of
//!   `--records` records (36-byte keys, 64-byte fingerprints, 100-byte
//!   results) in a node's records;
//! - 3 keyed agents, voters with data directories, driven by the native
//!   remote client over QUIC: a first execution (begin, claim, complete on
//!   a majority) alone, and completed operations per second with
//!   `--clients` concurrent clients, each on keys of its own, over
//!   `--ops` operations (the leader keeps about 2,500 small records at
//!   once today: the claims' byte bound, `locks::claim::CLAIM_BYTES_MAX`);
//! - in the same run, a 3-member etcd driven by `etcd-client` (feature
//!   `etcd-bench`) with the same operation done as an etcd user would:
//!   a lease, a transaction that puts the claim if absent under the lease,
//!   then a put of the result.
//!
//! Beside them, the disk's floor (a 4 KiB append and `fdatasync`, alone).
//! Last, `--visibility-nodes` agents (5 voters with data directories):
//! the time from a completion's answer until every agent's
//! `GET /v1/idempotency/{key}` returns it (commit notices; anti-entropy
//! for a node that missed one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::RemoteClient;
use crate::harness::agents::Agents;
use crate::harness::report::{micros, percentile, write_json};
use crate::idempotency::reconcile::exchange_in_process;
use crate::idempotency::{Idempotent, Record, Store};
use crate::locks::LockPath;

/// What `meshd bench idempotency` runs (its flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct IdempotencyOptions {
    /// Concurrent clients for the throughput phase.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub clients: usize,
    /// Sequential first executions timed alone.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 300))]
    pub calls: usize,
    /// Operations of the throughput phase, all clients together.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1_600))]
    pub ops: usize,
    /// Records for the anti-entropy and memory figures.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1_000_000))]
    pub records: usize,
    /// Records in the records file of the restart phase (0 skips it):
    /// how long an agent takes from spawn to serving them.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1_000_000))]
    pub restart_records: usize,
    /// Agents of the visibility phase (0 skips it): how long a
    /// completion takes to be readable on every one of them.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub visibility_nodes: u64,
    /// Skip the etcd comparison.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_etcd: bool,
    /// Write results as JSON to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub json: Option<PathBuf>,
}

/// A boxed operation's future: Ok once the operation's result is
/// recorded.
type BoxedOp = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// One idempotent operation on a key, as a client runs it.
type Op = Box<dyn Fn(String) -> BoxedOp + Send + Sync>;

/// Latencies of `calls` first executions, one at a time, on fresh keys.
async fn single(op: &Op, prefix: &str, calls: usize) -> Result<Vec<Duration>, String> {
    for i in 0..calls / 10 {
        op(format!("{prefix}-warm-{i}")).await?;
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let start = Instant::now();
        op(format!("{prefix}-single-{i}")).await?;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    Ok(times)
}

/// `ops` operations by `clients` clients, each on keys of its own: how
/// long they took; an error if any failed.
async fn throughput(
    op: Arc<Op>,
    prefix: &str,
    clients: usize,
    ops: usize,
) -> Result<Duration, String> {
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, next, prefix) = (op.clone(), next.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= ops {
                    break;
                }
                op(format!("{prefix}-{c}-{n}")).await?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(start.elapsed())
}

/// A record of the benchmark's shape: a 36-byte key (a UUID), a 64-byte
/// fingerprint (SHA-256 in hex), a 100-byte result.
fn record(i: u64) -> Record {
    let key = format!("{:08x}-{:04x}-4000-8000-{:012x}", i >> 16, i & 0xffff, i);
    Record {
        key,
        claim: crate::Token(i + 1),
        fingerprint: format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).into_bytes(),
        recovered: false,
        expires_at_ms: u64::MAX / 2,
        result: vec![b'r'; 100],
        committed: true,
    }
}

/// What the restart phase measured.
struct Restarts {
    /// Per restart: spawn to serving, spawn to all records in memory.
    times: Vec<(Duration, Duration)>,
    /// The records file's size.
    file_bytes: u64,
    /// The agent's resident memory with all records in memory.
    rss: u64,
}

/// Restart to serving with `n` records on disk: one agent on a data
/// directory is stopped, its records file filled with `n` records, then
/// started three times (the third after a kill -9, its file not closed);
/// each time, the time from its spawn to its first
/// 200 for a read of the last record written (which it can serve only
/// from its records file: it is alone), and to its log line saying all
/// are in memory. Also the file's size and the agent's resident memory
/// once they are.
fn restart(bin: &std::path::Path, n: usize, dir: &std::path::Path) -> Result<Restarts, String> {
    use crate::harness::http::get_json;
    /// What the agent logs once its records file is in memory.
    const LOADED_LINE: &str = "idempotency records loaded from the data directory";
    use crate::idempotency::Change;
    use crate::storage::records::{RECORDS_FILE, RecordsFile};
    let mut agents = Agents::new(bin, 1, dir).map_err(|e| e.to_string())?;
    agents.close_with_new_key()?;
    agents.data_root = Some(dir.join("data"));
    agents.start_all().map_err(|e| e.to_string())?;
    agents
        .wait_until(Duration::from_secs(30), |a| a.agreed_leader().is_some())
        .ok_or("restart: the agent did not lead within 30 s")?;
    agents.terminate(1, Duration::from_secs(10));
    let data = dir.join("data").join("node-1");
    {
        let mut problems = Vec::new();
        let file = RecordsFile::open(&data, &mut problems).map_err(|e| e.to_string())?;
        for chunk in (0..n as u64).collect::<Vec<_>>().chunks(50_000) {
            let changes: Vec<Change> = chunk.iter().map(|i| Change::Put(record(*i))).collect();
            file.apply(&changes).map_err(|e| e.to_string())?;
        }
    }
    let file_bytes = std::fs::metadata(data.join(RECORDS_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let path = format!("/v1/idempotency/{}", record(n as u64 - 1).key);
    let http = agents.spec(1).http;
    let log = agents.log_path(1);
    let loaded_lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(LOADED_LINE)
            .count()
    };
    let mut times = Vec::new();
    let mut rss = 0;
    for round in 0..3 {
        let before = loaded_lines();
        let start = Instant::now();
        agents.start(1).map_err(|e| e.to_string())?;
        while get_json(http, &path, Duration::from_secs(1)).is_err() {
            if start.elapsed() > Duration::from_secs(120) {
                return Err("restart: the agent did not serve within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let serving = start.elapsed();
        while loaded_lines() == before {
            if start.elapsed() > Duration::from_secs(300) {
                return Err("restart: the agent did not load its records within 300 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        times.push((serving, start.elapsed()));
        rss = agents
            .pid(1)
            .and_then(crate::harness::agents::rss_kib)
            .unwrap_or(0)
            * 1024;
        // The third start follows a crash: the file was not closed.
        if round == 1 {
            agents.kill9(1);
        } else {
            agents.terminate(1, Duration::from_secs(30));
        }
    }
    Ok(Restarts {
        times,
        file_bytes,
        rss,
    })
}

/// Anti-entropy between two nodes' records, `n` each, 50 only on each
/// side, through the stores' own ids: (bytes, round trips, time).
fn reconcile(n: usize) -> Result<(usize, usize, Duration), String> {
    let (a, b) = (Store::default(), Store::default());
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(10_000) {
        let records: Vec<Record> = chunk.iter().map(|i| record(*i)).collect();
        if chunk[0] < n as u64 - 50 {
            b.merge_all(
                records
                    .iter()
                    .filter(|r| r.claim.0 <= n as u64 - 50)
                    .cloned()
                    .collect(),
                0,
            );
        }
        a.merge_all(records, 0);
    }
    b.merge_all((n as u64..n as u64 + 50).map(record).collect(), 0);
    let start = Instant::now();
    let traffic = exchange_in_process(&a.at(0), &b.at(0)).map_err(|e| e.to_string())?;
    Ok((traffic.bytes, traffic.round_trips, start.elapsed()))
}

/// Anti-entropy between a node that starts empty and one of `n`
/// records: past what the tables carry (a few thousand records) the
/// exchange walks the full node's ids. (bytes, round trips, time).
fn reconcile_from_empty(n: usize) -> Result<(usize, usize, Duration), String> {
    let (empty, full) = (Store::default(), Store::default());
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(10_000) {
        full.merge_all(chunk.iter().map(|i| record(*i)).collect(), 0);
    }
    let start = Instant::now();
    let traffic = exchange_in_process(&empty.at(0), &full.at(0)).map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if empty.len() != n {
        return Err(format!(
            "the empty node got {} of {n} records (walked: {})",
            empty.len(),
            traffic.walked
        ));
    }
    Ok((traffic.bytes, traffic.round_trips, took))
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    crate::harness::agents::rss_kib(std::process::id()).unwrap_or(0) * 1024
}

/// Runs the benchmark; `bin` is the `meshd` binary the agents run.
pub fn idempotency(bin: &std::path::Path, args: IdempotencyOptions) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("meshd-bench-idem-{}", std::process::id()));
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(dir.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = json!({"clients": args.clients, "ops": args.ops, "calls": args.calls});
    println!("idempotency benchmark");

    // Memory first, while the heap is fresh: freed memory the
    // allocator keeps would hide what the records take.
    let before = rss();
    let store = Store::default();
    let built = Instant::now();
    for chunk in (0..args.records as u64).collect::<Vec<_>>().chunks(10_000) {
        store.merge_all(chunk.iter().map(|i| record(*i)).collect(), 0);
    }
    let after = rss();
    let raw = args.records * (36 + 64 + 100);
    println!(
        "memory: {} records in a node's records take {:.0} MB resident ({:.0} MB of keys, fingerprints and results: {:.2}x), built in {:.1} s",
        store.len(),
        (after.saturating_sub(before)) as f64 / 1e6,
        raw as f64 / 1e6,
        after.saturating_sub(before) as f64 / raw as f64,
        built.elapsed().as_secs_f64()
    );
    out["memory"] = json!({"records": store.len(), "rss_bytes": after.saturating_sub(before), "raw_bytes": raw});
    drop(store);
    // A replay from the node's own records, in process.
    let replay = runtime.block_on(async {
        let config = crate::Config::new(1, "127.0.0.1:0".parse().map_err(|_| "address")?)
            .map_err(|e| e.to_string())?;
        let mesh = crate::Mesh::start(config)
            .await
            .map_err(|e| e.to_string())?;
        let _ = mesh.watch_leader().wait_for(|l| l.is_some()).await;
        let run = || {
            mesh.idempotent("replayed")
                .fingerprint("fp")
                .run(|| async { "a result of some forty bytes, as JSON".to_string() })
        };
        run().await.map_err(|e| e.to_string())?;
        let mut times = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            let start = Instant::now();
            let o = run().await.map_err(|e| e.to_string())?;
            times.push(start.elapsed());
            if !o.is_replay() {
                return Err("not a replay".to_string());
            }
        }
        mesh.shutdown().await;
        times.sort_unstable();
        Ok::<_, String>(times)
    })?;
    let (p50, p99) = (percentile(&replay, 50.0), percentile(&replay, 99.0));
    println!(
        "replay from the node's own records (Rust API, in process): p50 {:.2} µs  p99 {:.2} µs",
        micros(p50),
        micros(p99)
    );
    out["local_replay"] = json!({"p50_us": micros(p50), "p99_us": micros(p99)});

    // Anti-entropy at `records`.
    let (bytes, trips, took) = reconcile(args.records)?;
    let bound = 100 * (std::mem::size_of::<u64>() + 64)
        + 4096
        + (0..100)
            .map(|i| postcard::to_allocvec(&record(i)).map_or(0, |v| v.len()))
            .sum::<usize>();
    println!(
        "anti-entropy, {} records each side, 100 differing: {bytes} bytes in {trips} round trips ({:.0} ms to compute); the issue's bound for 100 differences: {bound} bytes",
        args.records,
        took.as_secs_f64() * 1e3
    );
    out["anti_entropy"] = json!({"records": args.records, "differing": 100, "bytes": bytes,
        "round_trips": trips, "ms": took.as_secs_f64() * 1e3, "bound_bytes": bound});
    let (bytes, trips, took) = reconcile_from_empty(args.records)?;
    let held: usize = (0..args.records as u64)
        .map(|i| postcard::to_allocvec(&record(i)).map_or(0, |v| v.len()))
        .sum();
    println!(
        "anti-entropy from an empty node beside {} records: {bytes} bytes ({held} of records) in {trips} round trips ({:.0} ms in process)",
        args.records,
        took.as_secs_f64() * 1e3
    );
    out["anti_entropy_from_empty"] = json!({"records": args.records, "bytes": bytes,
        "record_bytes": held, "round_trips": trips, "ms": took.as_secs_f64() * 1e3});

    // Real agents, voters with data directories.
    out["floor"] = super::bench_locks::floors(&dir)?;
    let mut agents = Agents::new(bin, 3, &dir).map_err(|e| e.to_string())?;
    let (_, secret) = agents.close_with_new_key()?;
    agents.data_root = Some(dir.join("data"));
    agents.start_all().map_err(|e| e.to_string())?;
    agents
        .wait_until(Duration::from_secs(30), |a| {
            a.all_see(&[1, 2, 3]) && a.agreed_leader().is_some()
        })
        .ok_or("no agreed leader within 30 s")?;
    let rpcs: Vec<SocketAddr> = agents.ids().iter().map(|id| agents.spec(*id).rpc).collect();
    let ours = runtime.block_on(async {
        let client = RemoteClient::connect(rpcs, &secret)
            .await
            .map_err(|e| e.to_string())?;
        let path: Arc<dyn LockPath> = Arc::new(client);
        let op: Op = Box::new(move |key| {
            let path = path.clone();
            Box::pin(async move {
                Idempotent::new(path, None, key)
                    .fingerprint("fp")
                    .run(|| async { "a result of some forty bytes, as JSON".to_string() })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        });
        measure(Arc::new(op), &args).await
    });
    agents.stop_all(Duration::from_secs(10));
    let ours = ours?;
    if args.restart_records > 0 {
        let Restarts {
            times,
            file_bytes,
            rss,
        } = restart(bin, args.restart_records, &dir.join("restart"))?;
        let ms = |d: &Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        println!(
            "restart: an agent with {} records in its records file ({:.0} MB) serves a read of one {} ms after it is spawned, and holds all in memory after {} ms (each of {} restarts, the last after a kill -9), then {:.0} MB resident",
            args.restart_records,
            file_bytes as f64 / 1e6,
            times
                .iter()
                .map(|t| ms(&t.0))
                .collect::<Vec<_>>()
                .join(", "),
            times
                .iter()
                .map(|t| ms(&t.1))
                .collect::<Vec<_>>()
                .join(", "),
            times.len(),
            rss as f64 / 1e6
        );
        out["restart"] = json!({"records": args.restart_records, "file_bytes": file_bytes,
            "spawn_to_serving_ms": times.iter().map(|t| t.0.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            "spawn_to_loaded_ms": times.iter().map(|t| t.1.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            "agent_rss_bytes_loaded": rss});
    }
    if args.visibility_nodes > 0 {
        let times = visibility(bin, args.visibility_nodes, &dir.join("visibility"))?;
        let (p50, p99, max) = (
            percentile(&times, 50.0),
            percentile(&times, 99.0),
            times.last().copied().unwrap_or_default(),
        );
        println!(
            "visibility: a completion readable on all {} agents {:.1} ms after its answer at p50, {:.1} ms p99, {:.1} ms max ({} completions)",
            args.visibility_nodes,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            times.len()
        );
        out["visibility"] = json!({"agents": args.visibility_nodes, "p50_ms": p50.as_secs_f64() * 1e3,
            "p99_ms": p99.as_secs_f64() * 1e3, "max_ms": max.as_secs_f64() * 1e3});
    }
    out["meshd"] = report("meshd (3 agents)", &ours);
    if args.no_etcd {
        println!("(--no-etcd: no comparison)");
    } else if let Some(theirs) = etcd(&args, &dir, &runtime)? {
        out["etcd"] = report("etcd (3 members)", &theirs);
        let ratios = json!({
            "ops_per_s": ours.ops_per_s / theirs.ops_per_s,
            "first_execution_p50": ours.p50_us / theirs.p50_us,
        });
        println!(
            "ratios meshd/etcd: completed operations/s {:.1}x, first execution p50 {:.2}",
            ratios["ops_per_s"].as_f64().unwrap_or(f64::NAN),
            ratios["first_execution_p50"].as_f64().unwrap_or(f64::NAN),
        );
        out["ratios"] = ratios;
    }
    write_json(args.json.as_deref(), &out)
}

/// `n` agents; 100 completions through the first, each timed from its
/// answer until every agent reads it.
fn visibility(
    bin: &std::path::Path,
    n: u64,
    dir: &std::path::Path,
) -> Result<Vec<Duration>, String> {
    use crate::harness::http::{get_json, post_json_status};
    let mut agents = Agents::new(bin, n, dir).map_err(|e| e.to_string())?;
    agents.close_with_new_key()?;
    agents.data_root = Some(dir.join("data"));
    agents.start_all().map_err(|e| e.to_string())?;
    let all = agents.ids();
    agents
        .wait_until(Duration::from_secs(60), |a| {
            a.all_see(&all) && a.agreed_leader().is_some()
        })
        .ok_or(format!("{n} agents: no agreed leader within 60 s"))?;
    let https: Vec<SocketAddr> = all.iter().map(|id| agents.spec(*id).http).collect();
    let timeout = Duration::from_secs(5);
    let mut times = Vec::new();
    for i in 0..100 {
        let key = format!("visible-{i}");
        let begin = json!({"fingerprint": "fp", "ttl_ms": 3_600_000});
        let (status, claim) = post_json_status(
            https[0],
            &format!("/v1/idempotency/{key}/begin"),
            &begin,
            timeout,
        )?;
        if status != 200 {
            return Err(format!("begin: {status} {claim}"));
        }
        let complete = json!({"claim": claim["claim_str"], "result": {"n": i}});
        let (status, body) = post_json_status(
            https[0],
            &format!("/v1/idempotency/{key}/complete"),
            &complete,
            timeout,
        )?;
        if status != 200 {
            return Err(format!("complete: {status} {body}"));
        }
        let answered = Instant::now();
        let mut missing: Vec<SocketAddr> = https.clone();
        while !missing.is_empty() {
            if answered.elapsed() > Duration::from_secs(30) {
                return Err(format!("{key} not on {} agents after 30 s", missing.len()));
            }
            missing.retain(|h| get_json(*h, &format!("/v1/idempotency/{key}"), timeout).is_err());
        }
        times.push(answered.elapsed());
    }
    agents.stop_all(Duration::from_secs(10));
    times.sort_unstable();
    Ok(times)
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    ops_per_s: f64,
}

async fn measure(op: Arc<Op>, args: &IdempotencyOptions) -> Result<Figures, String> {
    let times = single(&op, "s", args.calls).await?;
    let took = throughput(op, "t", args.clients, args.ops).await?;
    Ok(Figures {
        p50_us: micros(percentile(&times, 50.0)),
        p99_us: micros(percentile(&times, 99.0)),
        ops_per_s: args.ops as f64 / took.as_secs_f64(),
    })
}

fn report(name: &str, f: &Figures) -> serde_json::Value {
    println!(
        "{name:<18} first execution p50 {:>6.0} µs  p99 {:>6.0} µs | {:>7.0} completed operations/s",
        f.p50_us, f.p99_us, f.ops_per_s
    );
    json!({"first_execution_p50_us": f.p50_us, "first_execution_p99_us": f.p99_us,
           "ops_per_s": f.ops_per_s})
}

#[cfg(not(feature = "etcd-bench"))]
fn etcd(
    _: &IdempotencyOptions,
    _: &std::path::Path,
    _: &tokio::runtime::Runtime,
) -> Result<Option<Figures>, String> {
    println!("(built without --features etcd-bench: no etcd comparison)");
    Ok(None)
}

#[cfg(feature = "etcd-bench")]
fn etcd(
    args: &IdempotencyOptions,
    dir: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
) -> Result<Option<Figures>, String> {
    use crate::harness::etcd::EtcdCluster;
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
    let Some(etcd) = EtcdCluster::start_healthy(3, &dir.join("etcd"))? else {
        return Ok(None);
    };
    let endpoints = etcd.endpoints();
    let f = runtime.block_on(async {
        let client = etcd_client::Client::connect(&endpoints, None)
            .await
            .map_err(|e| e.to_string())?;
        let op: Op = Box::new(move |key| {
            let mut c = client.clone();
            Box::pin(async move {
                // As an etcd user would: a lease for the claim, the claim
                // put only if absent, the operation, then its result.
                let lease = c.lease_grant(10, None).await.map_err(|e| e.to_string())?;
                let claim = format!("claim/{key}");
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        claim.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(
                        claim,
                        "fp",
                        Some(PutOptions::new().with_lease(lease.id())),
                    )]);
                let r = c.txn(txn).await.map_err(|e| e.to_string())?;
                if !r.succeeded() {
                    return Err("claimed by another".into());
                }
                c.put(
                    format!("result/{key}"),
                    "a result of some forty bytes, as JSON",
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok(())
            })
        });
        measure(Arc::new(op), args).await
    })?;
    Ok(Some(f))
}
