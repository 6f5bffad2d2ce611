//! The workload of `meshd bench locks` (the binary parses its flags into
//! [`LocksOptions`] and calls [`locks`]): lock throughput, latency and failover of a 3-node
//! cluster of real agents (voters with data directories, so every grant
//! is fsynced by a majority before it is reported), driven by a native
//! Rust client over QUIC; then, in the same run, a 3-member etcd driven
//! through its v3 lock API by `etcd-client` (built with
//! `--features etcd-bench`), under the same workload.
//!
//! Workloads, each client a task on one client thread:
//! - single client: acquire latency (acquire, then release, repeated);
//! - uncontended: `--clients` clients, each on its own lock, acquire +
//!   release cycles per second;
//! - contended: `--clients` clients on one lock, handoffs per second;
//! - failover: uncontended traffic, kill -9 of the leader, time from the
//!   kill to the first cycle completed after it.
//!
//! Beside them, the disk's floor: a 4 KiB write and `fdatasync` of one
//! file in the benchmark's directory, alone, which a durable grant waits
//! for on a majority of the voters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::RemoteClient;
use crate::harness::agents::Agents;
use crate::harness::report::{micros, percentile, write_json};
use crate::ids::Token;
use crate::locks::LockPath;
use crate::locks::{LockReply, LockRequest};

/// What `meshd bench locks` runs (its flags).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct LocksOptions {
    /// Concurrent clients for the throughput phases.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub clients: usize,
    /// Sequential acquires timed for the single-client latency.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2_000))]
    pub calls: usize,
    /// Seconds of each throughput phase.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub duration_s: u64,
    /// Kill -9 trials of the leader under traffic.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3))]
    pub failovers: usize,
    /// Locks held through the failover trials (meshd only): acquired with
    /// an hour's TTL before the first trial, and after each kill every one
    /// is checked to be held still, with its token, by the new leader.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub held: usize,
    /// Skip the etcd comparison.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_etcd: bool,
    /// Run the agents without data directories: nothing is fsynced, so
    /// the figures are labelled "no durability" (etcd always fsyncs).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_data_dir: bool,
    /// Skip the HTTP phases (the agents' HTTP API, and etcd's JSON
    /// gateway).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_http: bool,
    /// Write results as JSON to this file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub json: Option<PathBuf>,
}

const TTL_MS: u64 = 5_000;
/// The TTL of the locks `--held` keeps through the failovers.
const HELD_TTL: Duration = Duration::from_secs(3600);
const CALL_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Clone)]
enum System {
    /// Our remote client: a QUIC endpoint outside the mesh that finds
    /// the leader itself.
    Mesh(RemoteClient),
    #[cfg(feature = "etcd-bench")]
    Etcd(Box<etcd_client::Client>),
    /// The agents' HTTP API (CONTRACT.md), each client on a keep-alive
    /// connection to one agent, taken in turn.
    MeshHttp(HttpClients),
    /// etcd's JSON gateway (`/v3/lease/grant`, `/v3/lock/lock`,
    /// `/v3/lock/unlock`), each client on one member, taken in turn.
    #[cfg(feature = "etcd-bench")]
    EtcdHttp(HttpClients),
}

/// One HTTP/1.1 client per session, on the servers in turn.
#[derive(Clone)]
struct HttpClients {
    servers: Arc<Vec<String>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpClients {
    fn new(servers: Vec<String>) -> HttpClients {
        HttpClients {
            servers: Arc::new(servers),
            next: Arc::default(),
        }
    }

    fn client(&self) -> HttpClient {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HttpClient {
            agent: crate::harness::http::http_client(Duration::from_secs(10), false),
            base: self.servers[i % self.servers.len()].clone(),
        }
    }
}

/// A keep-alive HTTP connection to one server. Its calls block the
/// thread they run on: the HTTP phases run on a runtime with a worker
/// per client ([`measure_http`]), so each client is a thread making
/// system calls, with no handoff to another thread per call.
#[derive(Clone)]
struct HttpClient {
    agent: ureq::Agent,
    base: String,
}

impl HttpClient {
    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, serde_json::Value), String> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .post(&url)
            .send_json(&body)
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_json::<serde_json::Value>()
            .unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }
}

/// The phases of [`measure`] but failovers over HTTP, on a runtime with
/// a worker thread per client and one for the phase itself.
fn measure_http(sys: &System, args: &LocksOptions) -> Result<Figures, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.clients + 1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let quiet = LocksOptions {
        failovers: 0,
        ..args.clone()
    };
    runtime.block_on(measure(sys, &quiet, |_| Box::new(|| {}), |_| {}, || None))
}

enum Session {
    Mesh,
    #[cfg(feature = "etcd-bench")]
    Etcd(i64),
    Http(HttpClient),
    #[cfg(feature = "etcd-bench")]
    EtcdHttp(HttpClient, String),
}

enum Held {
    Mesh {
        name: String,
        token: crate::Token,
    },
    #[cfg(feature = "etcd-bench")]
    Etcd(Vec<u8>),
    Http(HttpClient, String, String),
    #[cfg(feature = "etcd-bench")]
    EtcdHttp(HttpClient, String),
}

/// Standard base64 with padding (etcd's gateway carries bytes so).
#[cfg(feature = "etcd-bench")]
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::Mesh(_) => "meshd",
            #[cfg(feature = "etcd-bench")]
            System::Etcd(_) => "etcd",
            System::MeshHttp(_) => "meshd HTTP",
            #[cfg(feature = "etcd-bench")]
            System::EtcdHttp(_) => "etcd HTTP",
        }
    }

    async fn session(&self) -> Result<Session, String> {
        match self {
            System::Mesh(_) => Ok(Session::Mesh),
            #[cfg(feature = "etcd-bench")]
            System::Etcd(c) => {
                let lease = c
                    .clone()
                    .lease_grant(60, None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Session::Etcd(lease.id()))
            }
            System::MeshHttp(clients) => Ok(Session::Http(clients.client())),
            #[cfg(feature = "etcd-bench")]
            System::EtcdHttp(clients) => {
                let client = clients.client();
                let (status, body) = client.post("/v3/lease/grant", json!({"TTL": 60})).await?;
                let lease = body["ID"]
                    .as_str()
                    .map(String::from)
                    .filter(|_| status == 200)
                    .ok_or_else(|| format!("lease grant: {status} {body}"))?;
                Ok(Session::EtcdHttp(client, lease))
            }
        }
    }

    /// One acquire, waiting up to `wait` for the lock. A retry with the
    /// same `request_id` gets the same grant (etcd's lock call has no
    /// such id; its retry queues again under the same lease).
    async fn acquire(
        &self,
        s: &Session,
        name: &str,
        wait: Duration,
        request_id: Option<String>,
    ) -> Result<Held, String> {
        match (self, s) {
            (System::Mesh(m), _) => {
                let mut lock = m.lock(name).ttl(Duration::from_millis(TTL_MS)).wait(wait);
                if let Some(id) = request_id {
                    lock = lock.request_id(id);
                }
                let grant = lock.acquire_token().await.map_err(|e| e.to_string())?;
                Ok(Held::Mesh {
                    name: name.to_string(),
                    token: grant.token,
                })
            }
            #[cfg(feature = "etcd-bench")]
            (System::Etcd(c), Session::Etcd(lease)) => {
                let _ = request_id;
                let options = etcd_client::LockOptions::new().with_lease(*lease);
                let r = tokio::time::timeout(
                    wait + Duration::from_secs(2),
                    c.clone().lock(name, Some(options)),
                )
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
                Ok(Held::Etcd(r.key().to_vec()))
            }
            (System::MeshHttp(_), Session::Http(client)) => {
                let mut body = json!({"ttl_ms": TTL_MS, "wait_ms": wait.as_millis() as u64});
                if let Some(id) = request_id {
                    body["request_id"] = json!(id);
                }
                let (status, answer) = client
                    .post(&format!("/v1/locks/{name}/acquire"), body)
                    .await?;
                match (status, answer["token_str"].as_str()) {
                    (200, Some(token)) => Ok(Held::Http(
                        client.clone(),
                        name.to_string(),
                        token.to_string(),
                    )),
                    (409, _) => Err("Held".into()),
                    _ => Err(format!("acquire: {status} {answer}")),
                }
            }
            #[cfg(feature = "etcd-bench")]
            (System::EtcdHttp(_), Session::EtcdHttp(client, lease)) => {
                let _ = (request_id, wait);
                let body = json!({"name": base64(name.as_bytes()), "lease": lease});
                let (status, answer) = client.post("/v3/lock/lock", body).await?;
                match (status, answer["key"].as_str()) {
                    (200, Some(key)) => Ok(Held::EtcdHttp(client.clone(), key.to_string())),
                    _ if answer.to_string().contains("lease") => Err(format!("lease: {answer}")),
                    _ => Err(format!("lock: {status} {answer}")),
                }
            }
            _ => Err("session of another system".into()),
        }
    }

    async fn release(&self, held: &Held) -> Result<(), String> {
        match (self, held) {
            (System::Mesh(m), Held::Mesh { name, token }) => {
                let request = LockRequest::Release {
                    name: name.clone(),
                    token: *token,
                };
                match m.lock_request(request, CALL_TIMEOUT).await {
                    Ok(LockReply::Released) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
            #[cfg(feature = "etcd-bench")]
            (System::Etcd(c), Held::Etcd(key)) => c
                .clone()
                .unlock(key.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (System::MeshHttp(_), Held::Http(client, name, token)) => {
                let (status, answer) = client
                    .post(
                        &format!("/v1/locks/{name}/release"),
                        json!({"token": token}),
                    )
                    .await?;
                match status {
                    200 => Ok(()),
                    _ => Err(format!("release: {status} {answer}")),
                }
            }
            #[cfg(feature = "etcd-bench")]
            (System::EtcdHttp(_), Held::EtcdHttp(client, key)) => {
                let (status, answer) = client.post("/v3/lock/unlock", json!({"key": key})).await?;
                match status {
                    200 => Ok(()),
                    _ => Err(format!("unlock: {status} {answer}")),
                }
            }
            _ => Err("lock of another system".into()),
        }
    }
}

/// Acquire latencies of one client, acquire then release, `calls` times.
async fn single(sys: &System, calls: usize) -> Result<Vec<Duration>, String> {
    let s = sys.session().await?;
    for _ in 0..calls / 10 {
        let h = sys.acquire(&s, "single", Duration::ZERO, None).await?;
        sys.release(&h).await?;
    }
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let h = sys.acquire(&s, "single", Duration::ZERO, None).await?;
        times.push(start.elapsed());
        sys.release(&h).await?;
    }
    times.sort_unstable();
    Ok(times)
}

/// Completed acquire + release cycles of `clients` clients for `d`, each
/// on its own lock (`shared`: all on one lock, so each grant is a
/// handoff). Returns the completion times (from the phase's start).
async fn cycles(
    sys: &System,
    clients: usize,
    d: Duration,
    shared: bool,
    kill: Option<(Duration, Box<dyn FnOnce() + Send>)>,
) -> Result<(Vec<Duration>, Option<Duration>), String> {
    let start = Instant::now();
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (sys, done) = (sys.clone(), done.clone());
        let name = if shared {
            "hot".to_string()
        } else {
            format!("u{i}")
        };
        tasks.push(tokio::spawn(async move {
            let mut session = sys.session().await.ok();
            let mut n = 0u64;
            while start.elapsed() < d {
                let Some(s) = &session else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    session = sys.session().await.ok();
                    continue;
                };
                let wait = if shared {
                    Duration::from_secs(2)
                } else {
                    Duration::ZERO
                };
                // As a real client does: an acquire retried through a
                // failover keeps its request id, and a release is retried
                // until it is confirmed.
                n += 1;
                let request_id = Some(format!("bench-{i}-{n}"));
                let held = loop {
                    match sys.acquire(s, &name, wait, request_id.clone()).await {
                        Ok(h) => break Some(h),
                        Err(e) if e.contains("lease") => break None,
                        Err(e) if e == "Held" => break None,
                        Err(_) if start.elapsed() >= d => break None,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                };
                let Some(h) = held else {
                    session = None;
                    continue;
                };
                loop {
                    match sys.release(&h).await {
                        Ok(()) => {
                            done.lock().unwrap().push(start.elapsed());
                            break;
                        }
                        Err(_) if start.elapsed() >= d + Duration::from_secs(5) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
        }));
    }
    let mut killed_at = None;
    if let Some((at, kill)) = kill {
        tokio::time::sleep(at).await;
        killed_at = Some(start.elapsed());
        tokio::task::spawn_blocking(kill)
            .await
            .map_err(|e| e.to_string())?;
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let mut done = done.lock().unwrap().clone();
    done.sort_unstable();
    Ok((done, killed_at))
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    cycles_per_s: f64,
    handoffs_per_s: f64,
    failover_ms: Vec<f64>,
}

async fn measure(
    sys: &System,
    args: &LocksOptions,
    mut killer: impl FnMut(usize) -> Box<dyn FnOnce() + Send>,
    mut heal: impl FnMut(usize),
    memory: impl Fn() -> Option<String>,
) -> Result<Figures, String> {
    let single = single(sys, args.calls).await?;
    let d = Duration::from_secs(args.duration_s);
    let (done, _) = cycles(sys, args.clients, d, false, None).await?;
    let cycles_per_s = done.len() as f64 / d.as_secs_f64();
    let (done, _) = cycles(sys, args.clients, d, true, None).await?;
    let handoffs_per_s = done.len() as f64 / d.as_secs_f64();
    let held = match sys {
        System::Mesh(m) if args.held > 0 => {
            let start = Instant::now();
            let held = hold(m, args.held, args.clients).await?;
            println!(
                "{}: {} locks acquired with an hour's TTL in {:.1} s, held through the failovers",
                sys.name(),
                held.len(),
                start.elapsed().as_secs_f64()
            );
            if let Some(rss) = memory() {
                println!("{}: resident memory with them held: {rss}", sys.name());
            }
            held
        }
        _ => Vec::new(),
    };
    let mut failover_ms = Vec::new();
    for trial in 0..args.failovers {
        let (done, killed) = cycles(
            sys,
            args.clients,
            Duration::from_secs(8),
            false,
            Some((Duration::from_millis(1500), killer(trial))),
        )
        .await?;
        let killed = killed.ok_or("no kill")?;
        // The longest pause in completions from the kill on: cycles in
        // flight at the kill may still complete just after it.
        let mut gap = Duration::ZERO;
        let mut last = killed;
        for &t in done.iter().filter(|t| **t > killed) {
            gap = gap.max(t - last);
            last = t;
        }
        if last == killed {
            return Err(format!("{}: no cycle completed after the kill", sys.name()));
        }
        failover_ms.push(gap.as_secs_f64() * 1000.0);
        if let System::Mesh(m) = sys
            && !held.is_empty()
        {
            let kept = still_held(m, &held, args.clients).await?;
            if kept != held.len() {
                return Err(format!(
                    "after failover {trial}: {kept} of {} held locks still held",
                    held.len()
                ));
            }
            println!(
                "{}: failover {trial} took {:.0} ms with {} locks held; all still held",
                sys.name(),
                gap.as_secs_f64() * 1000.0,
                held.len()
            );
            if let Some(rss) = memory() {
                println!(
                    "{}: resident memory after failover {trial}: {rss}",
                    sys.name()
                );
            }
        }
        heal(trial);
    }
    Ok(Figures {
        p50_us: micros(percentile(&single, 50.0)),
        p99_us: micros(percentile(&single, 99.0)),
        cycles_per_s,
        handoffs_per_s,
        failover_ms,
    })
}

/// Acquires `count` locks with an hour's TTL, `clients` at a time,
/// each retried under its request id until granted; their names and
/// tokens.
async fn hold(
    m: &RemoteClient,
    count: usize,
    clients: usize,
) -> Result<Vec<(String, Token)>, String> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (m, next) = (m.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok(held);
                }
                let name = format!("held-{i:07}");
                let mut tries = 0;
                let grant = loop {
                    let lock = m
                        .lock(name.clone())
                        .ttl(HELD_TTL)
                        .request_id(format!("hold-{i}"));
                    match lock.acquire_token().await {
                        Ok(grant) => break grant,
                        Err(e) if tries >= 100 => return Err(format!("acquire {name}: {e}")),
                        Err(_) => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                held.push((name, grant.token));
            }
        }));
    }
    let mut held = Vec::with_capacity(count);
    for t in tasks {
        held.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(held)
}

/// How many of `held` the leader reports held with their token, asked
/// `clients` at a time (each ask retried through a failover).
async fn still_held(
    m: &RemoteClient,
    held: &[(String, Token)],
    clients: usize,
) -> Result<usize, String> {
    let held = Arc::new(held.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (m, next, held) = (m.clone(), next.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            let mut kept = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, token)) = held.get(i) else {
                    return Ok::<_, String>(kept);
                };
                let mut tries = 0;
                loop {
                    let request = LockRequest::Status { name: name.clone() };
                    match m.lock_request(request, Duration::from_secs(2)).await {
                        Ok(LockReply::Status { token: now, .. }) => {
                            kept += usize::from(now == Some(*token));
                            break;
                        }
                        other if tries >= 100 => {
                            return Err(format!("status of {name}: {other:?}"));
                        }
                        _ => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }));
    }
    let mut kept = 0;
    for t in tasks {
        kept += t.await.map_err(|e| e.to_string())??;
    }
    Ok(kept)
}

/// `count` sequential 4 KiB appends to one file in `dir`, each followed
/// by `fdatasync`; the time of each, sorted.
pub(crate) fn fsync_floor(dir: &std::path::Path, count: usize) -> std::io::Result<Vec<Duration>> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-floor");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        times.push(start.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    times.sort_unstable();
    Ok(times)
}

/// `rounds` rounds of three 4 KiB appends with `fdatasync`, each to its
/// own file in `dir` from its own thread, started together: one per
/// voter, as this benchmark's voters share one disk. A grant waits for
/// two of them (a majority of three, the leader's own among them); the
/// time until the second is done in each round, sorted.
fn fsync_majority_floor(dir: &std::path::Path, rounds: usize) -> std::io::Result<Vec<Duration>> {
    use std::io::Write;
    use std::sync::Barrier;
    std::fs::create_dir_all(dir)?;
    let start = Arc::new(Barrier::new(4));
    let done = Arc::new(Barrier::new(4));
    let ends: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut threads = Vec::new();
    for i in 0..3 {
        let (start, done, ends) = (start.clone(), done.clone(), ends.clone());
        let path = dir.join(format!("fsync-floor-{i}"));
        threads.push(std::thread::spawn(move || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&path)?;
            let block = [0x5au8; 4096];
            for _ in 0..rounds {
                start.wait();
                let result = file.write_all(&block).and_then(|()| file.sync_data());
                ends.lock().unwrap().push(Instant::now());
                done.wait();
                result?;
            }
            drop(file);
            std::fs::remove_file(&path)
        }));
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        ends.lock().unwrap().clear();
        let began = Instant::now();
        start.wait();
        done.wait();
        let mut round = ends.lock().unwrap().clone();
        round.sort_unstable();
        times.push(round[1].saturating_duration_since(began));
    }
    for t in threads {
        t.join()
            .map_err(|_| std::io::Error::other("a floor thread panicked"))??;
    }
    times.sort_unstable();
    Ok(times)
}

/// `count` round trips of a 64-byte UDP datagram on loopback between two
/// threads (one echoes); the time of each, sorted.
fn udp_floor(count: usize) -> std::io::Result<Vec<Duration>> {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
    client.connect(echo.local_addr()?)?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    echo.set_read_timeout(Some(Duration::from_secs(1)))?;
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..count {
            let Ok((n, from)) = echo.recv_from(&mut buf) else {
                return;
            };
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut times = Vec::with_capacity(count);
    let mut buf = [0u8; 64];
    for _ in 0..count {
        let start = Instant::now();
        client.send(&[0x5a; 64])?;
        client.recv(&mut buf)?;
        times.push(start.elapsed());
    }
    let _ = server.join();
    times.sort_unstable();
    Ok(times)
}

/// Measures and prints this machine's floors: one `fdatasync` of a
/// 4 KiB append alone; three at once on the same disk, until the second
/// is done (what a grant of three voters here waits for); a UDP round
/// trip on loopback. A durable acquire's floor is then two round trips
/// (client to leader, leader to a voter) and the majority's sync.
pub(crate) fn floors(dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let p = |times: &[Duration], q| micros(percentile(times, q));
    let alone = fsync_floor(dir, 1_000).map_err(|e| format!("disk floor: {e}"))?;
    let majority = fsync_majority_floor(dir, 500).map_err(|e| format!("disk floor: {e}"))?;
    let udp = udp_floor(2_000).map_err(|e| format!("UDP floor: {e}"))?;
    let acquire = 2.0 * p(&udp, 50.0) + p(&majority, 50.0);
    println!(
        "floor: 4 KiB write + fdatasync in {}, alone: p50 {:.0} µs  p99 {:.0} µs; three at once, the second done: p50 {:.0} µs  p99 {:.0} µs",
        dir.display(),
        p(&alone, 50.0),
        p(&alone, 99.0),
        p(&majority, 50.0),
        p(&majority, 99.0)
    );
    println!(
        "floor: UDP round trip on loopback (two threads): p50 {:.0} µs  p99 {:.0} µs; a durable acquire's floor (two round trips and the majority's sync): {acquire:.0} µs",
        p(&udp, 50.0),
        p(&udp, 99.0)
    );
    Ok(json!({
        "fdatasync_p50_us": p(&alone, 50.0),
        "fdatasync_p99_us": p(&alone, 99.0),
        "fdatasync_second_of_three_p50_us": p(&majority, 50.0),
        "fdatasync_second_of_three_p99_us": p(&majority, 99.0),
        "udp_round_trip_p50_us": p(&udp, 50.0),
        "udp_round_trip_p99_us": p(&udp, 99.0),
        "durable_acquire_floor_us": acquire,
    }))
}

fn report(name: &str, f: &Figures) -> serde_json::Value {
    println!(
        "{name:<24} acquire p50 {:>7.0} µs  p99 {:>7.0} µs | {:>8.0} cycles/s | {:>7.0} handoffs/s | failover {:?} ms",
        f.p50_us,
        f.p99_us,
        f.cycles_per_s,
        f.handoffs_per_s,
        f.failover_ms.iter().map(|m| m.round()).collect::<Vec<_>>()
    );
    json!({
        "acquire_p50_us": f.p50_us,
        "acquire_p99_us": f.p99_us,
        "cycles_per_s": f.cycles_per_s,
        "handoffs_per_s": f.handoffs_per_s,
        "failover_ms": f.failover_ms,
    })
}

/// Prints and returns our figures over theirs.
fn ratios(label: &str, ours: &Figures, theirs: &Figures) -> serde_json::Value {
    let (cycles, handoffs, p50) = (
        ours.cycles_per_s / theirs.cycles_per_s,
        ours.handoffs_per_s / theirs.handoffs_per_s,
        ours.p50_us / theirs.p50_us,
    );
    println!("{label}: cycles/s {cycles:.1}x, handoffs/s {handoffs:.1}x, acquire p50 {p50:.2}");
    json!({"cycles_per_s": cycles, "handoffs_per_s": handoffs, "acquire_p50": p50})
}

/// Runs the benchmark: the agents are `bin` (the `meshd` binary) started
/// on loopback, etcd beside them when built in and installed.
pub fn locks(bin: &std::path::Path, args: LocksOptions) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("meshd-bench-locks-{}", std::process::id()));
    // Removed however the run ends.
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
    let durability = if args.no_data_dir {
        "WITHOUT data dirs (no durability)"
    } else {
        "with data dirs (grants fsynced by a majority)"
    };
    println!(
        "lock benchmark: 3 keyed agents {durability} on loopback; {} clients, {} s phases, {} failovers",
        args.clients, args.duration_s, args.failovers
    );
    let floor = floors(&dir)?;
    let agents = Arc::new(Mutex::new(
        Agents::new(bin, 3, &dir).map_err(|e| e.to_string())?,
    ));
    let secret = {
        let mut a = agents.lock().unwrap();
        let (_, secret) = a.close_with_new_key()?;
        if !args.no_data_dir {
            a.data_root = Some(dir.join("data"));
        }
        a.start_all().map_err(|e| e.to_string())?;
        a.wait_until(Duration::from_secs(30), |a| {
            a.all_see(&[1, 2, 3]) && a.agreed_leader().is_some()
        })
        .ok_or("no agreed leader within 30 s")?;
        secret
    };
    let https: Vec<SocketAddr> = {
        let a = agents.lock().unwrap();
        a.ids().iter().map(|id| a.spec(*id).http).collect()
    };
    let ours = runtime.block_on(async {
        let rpcs: Vec<SocketAddr> = {
            let a = agents.lock().unwrap();
            a.ids().iter().map(|id| a.spec(*id).rpc).collect()
        };
        let client = RemoteClient::connect(rpcs, &secret)
            .await
            .map_err(|e| e.to_string())?;
        let sys = System::Mesh(client);
        let killed = Arc::new(Mutex::new(None));
        let f = measure(
            &sys,
            &args,
            |_| {
                let (agents, killed) = (agents.clone(), killed.clone());
                Box::new(move || {
                    let mut a = agents.lock().unwrap();
                    if let Some((leader, _)) = a.agreed_leader() {
                        a.kill9(leader);
                        *killed.lock().unwrap() = Some(leader);
                    }
                })
            },
            |_| {
                let mut a = agents.lock().unwrap();
                if let Some(id) = killed.lock().unwrap().take() {
                    let _ = a.start(id);
                    let _ = a.wait_until(Duration::from_secs(30), |a| {
                        a.all_see(&[1, 2, 3]) && a.agreed_leader().is_some()
                    });
                }
            },
            || {
                let a = agents.lock().unwrap();
                let leader = a.agreed_leader().map(|(id, _)| id);
                let rss: Vec<String> = a
                    .ids()
                    .iter()
                    .filter_map(|&id| {
                        let kib = crate::harness::agents::rss_kib(a.pid(id)?)?;
                        let role = if Some(id) == leader { " (leader)" } else { "" };
                        Some(format!("node {id}{role} {:.1} MiB", kib as f64 / 1024.0))
                    })
                    .collect();
                Some(rss.join(", "))
            },
        )
        .await?;
        Ok::<_, String>(f)
    })?;
    // The same workload through the agents' HTTP API (no failovers).
    let ours_http = if args.no_http {
        None
    } else {
        // After the failover trials the restarted lowest id takes the
        // lead back by handover: wait for it, so no phase spans it.
        agents
            .lock()
            .unwrap()
            .wait_until(Duration::from_secs(30), |a| {
                a.all_see(&[1, 2, 3]) && a.agreed_leader().is_some_and(|(id, _)| id == 1)
            })
            .ok_or("node 1 did not lead again within 30 s")?;
        let servers = https.iter().map(|a| format!("http://{a}")).collect();
        let sys = System::MeshHttp(HttpClients::new(servers));
        Some(measure_http(&sys, &args)?)
    };
    // How well requests shared replication rounds, from the agents'
    // counters (every leader of the run; the killed ones' are lost).
    let (batches, entries) = https.iter().fold((0u64, 0u64), |(b, e), http| {
        let text = crate::harness::http::get_text(*http, "/metrics", Duration::from_secs(2))
            .unwrap_or_default();
        let read = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        (
            b + read("coordmesh_lock_batches_total "),
            e + read("coordmesh_lock_batch_entries_total "),
        )
    });
    if batches > 0 {
        println!(
            "meshd replication: {batches} batches, {:.1} entries per batch",
            entries as f64 / batches as f64
        );
    }
    agents.lock().unwrap().stop_all(Duration::from_secs(10));
    let label = if args.no_data_dir {
        "meshd, no durability"
    } else {
        "meshd (3 agents)"
    };
    let mut out = json!({
        "durable": !args.no_data_dir,
        "clients": args.clients,
        "duration_s": args.duration_s,
        "held": args.held,
        "meshd": report(label, &ours),
    });
    out["floor"] = floor;
    if let Some(http) = &ours_http {
        out["meshd_http"] = report("meshd HTTP (3 agents)", http);
    }
    if args.no_etcd {
        println!("(--no-etcd: no comparison)");
    } else {
        match etcd(&args, &dir, &runtime) {
            Ok(Some((theirs, theirs_http))) => {
                out["etcd"] = report("etcd (3 members)", &theirs);
                if let (Some(ours), Some(theirs)) = (&ours_http, &theirs_http) {
                    out["etcd_http"] = report("etcd HTTP gateway", theirs);
                    out["ratios_http"] = ratios("ratios over HTTP, meshd/etcd", ours, theirs);
                }
                out["ratios"] = ratios("ratios meshd/etcd", &ours, &theirs);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("etcd: {e}")),
        }
    }
    write_json(args.json.as_deref(), &out)
}

#[cfg(not(feature = "etcd-bench"))]
fn etcd(
    _: &LocksOptions,
    _: &std::path::Path,
    _: &tokio::runtime::Runtime,
) -> Result<Option<(Figures, Option<Figures>)>, String> {
    println!("(built without --features etcd-bench: no etcd comparison)");
    Ok(None)
}

#[cfg(feature = "etcd-bench")]
fn etcd(
    args: &LocksOptions,
    dir: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
) -> Result<Option<(Figures, Option<Figures>)>, String> {
    use crate::harness::etcd::EtcdCluster;
    let Some(etcd) = EtcdCluster::start_healthy(3, &dir.join("etcd"))? else {
        return Ok(None);
    };
    let endpoints = etcd.endpoints();
    let etcd = Arc::new(Mutex::new(etcd));
    let f = runtime.block_on(async {
        let client = etcd_client::Client::connect(&endpoints, None)
            .await
            .map_err(|e| e.to_string())?;
        let sys = System::Etcd(Box::new(client));
        let killed = Arc::new(Mutex::new(None));
        measure(
            &sys,
            args,
            |_| {
                let (etcd, killed) = (etcd.clone(), killed.clone());
                Box::new(move || {
                    let mut e = etcd.lock().unwrap();
                    if let Some(l) = e.leader() {
                        e.kill9(l);
                        *killed.lock().unwrap() = Some(l);
                    }
                })
            },
            |_| {
                let mut e = etcd.lock().unwrap();
                if let Some(l) = killed.lock().unwrap().take() {
                    let _ = e.spawn(l);
                    e.wait_healthy(Duration::from_secs(60));
                }
            },
            || None,
        )
        .await
    })?;
    let http = if args.no_http {
        None
    } else {
        let sys = System::EtcdHttp(HttpClients::new(endpoints));
        Some(measure_http(&sys, args)?)
    };
    Ok(Some((f, http)))
}
