//! Locks through real `meshd agent` processes on loopback (tier 3):
//! clients hammering locks over HTTP through a kill -9 of the leader, the
//! contract's answers to bad input, and `meshd lock`. Ports are taken
//! free at run time; every process started is ended.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordmesh::harness::agents::Agents;
use coordmesh::harness::http::{get_json, post_json_status};
use coordmesh::locks::history::{Hold, LockHistory};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_meshd");
const WITHIN: Duration = Duration::from_secs(20);

fn led_agents(n: u64, dir: &Path) -> Agents {
    Agents::start_led(Path::new(BIN), n, dir, WITHIN).unwrap()
}

fn token_of(v: &serde_json::Value) -> coordmesh::Token {
    coordmesh::Token(v["token_str"].as_str().unwrap().parse().unwrap())
}

/// One client's loop: acquire one of three locks through a random
/// running agent, hold briefly, release; record each hold as the client
/// believed it (from the grant's arrival to the earlier of its release
/// and send time + TTL).
fn hammer(
    idx: usize,
    https: Vec<std::net::SocketAddr>,
    dead: Arc<Mutex<Vec<usize>>>,
    history: Arc<Mutex<LockHistory>>,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut grants = 0;
    let mut n = idx as u64;
    while !stop.load(Ordering::Relaxed) {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (n >> 33) as usize % https.len();
        if dead.lock().unwrap().contains(&pick) {
            continue;
        }
        let http = https[pick];
        let lock = format!("l{}", (n >> 40) % 3);
        let ttl = Duration::from_millis(2000);
        let sent = Instant::now();
        let body = json!({"ttl_ms": 2000, "wait_ms": 500});
        let path = format!("/v1/locks/{lock}/acquire");
        let Ok((200, v)) = post_json_status(http, &path, &body, Duration::from_secs(3)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let from = Instant::now();
        let token = token_of(&v);
        std::thread::sleep(Duration::from_millis((n >> 50) % 50));
        let released = Instant::now();
        history.lock().unwrap().record(Hold {
            lock: lock.clone(),
            client: format!("c{idx}"),
            token,
            from: from - origin,
            until: released.min(sent + ttl) - origin,
        });
        grants += 1;
        let path = format!("/v1/locks/{lock}/release");
        let _ = post_json_status(
            http,
            &path,
            &json!({"token": token}),
            Duration::from_secs(3),
        );
    }
    grants
}

/// Goal: five agents, clients hammering three locks over HTTP through
/// every agent, kill -9 of the leader mid-traffic: no two clients ever
/// hold one lock at once, grant order is token order, service resumes
/// under the new leader, and a holder keeps its lock and its token across
/// the failover (its renewals answer 503 at worst, never 410).
#[test]
fn five_agents_keep_locks_safe_through_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = led_agents(5, dir.path());
    let (leader, epoch) = a.agreed_leader().unwrap();
    let ids = a.ids();
    let https: Vec<_> = ids.iter().map(|id| a.spec(*id).http).collect();
    let holder_http = a
        .spec(ids.iter().copied().find(|i| *i != leader).unwrap())
        .http;

    // The long holder.
    let (code, v) = post_json_status(
        holder_http,
        "/v1/locks/keeper/acquire",
        &json!({"ttl_ms": 3000, "request_id": "keeper-1"}),
        WITHIN,
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    let kept = token_of(&v);
    let keeper_stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let stop = keeper_stop.clone();
        std::thread::spawn(move || {
            let mut last_good = Instant::now();
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let r = post_json_status(
                    holder_http,
                    "/v1/locks/keeper/renew",
                    &json!({"token": kept.to_string()}),
                    Duration::from_millis(500),
                );
                let code = r.map(|(c, _)| c).unwrap_or(0);
                if code == 200 {
                    assert!(
                        sent < last_good + Duration::from_millis(3000),
                        "renewed after the lease ended"
                    );
                    last_good = sent;
                }
                answers.push(code);
                std::thread::sleep(Duration::from_millis(if code == 200 { 500 } else { 50 }));
            }
            answers
        })
    };

    let origin = Instant::now();
    let history = Arc::new(Mutex::new(LockHistory::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (https, dead, history, stop) =
                (https.clone(), dead.clone(), history.clone(), stop.clone());
            std::thread::spawn(move || hammer(i + 1, https, dead, history, origin, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let leader_idx = ids.iter().position(|i| *i == leader).unwrap();
    dead.lock().unwrap().push(leader_idx);
    let killed_at = Instant::now() - origin;
    a.kill9(leader);
    let mut new = None;
    assert!(
        a.wait_until(WITHIN, |a| {
            new = a
                .agreed_leader()
                .filter(|(id, e)| *id != leader && *e > epoch);
            new.is_some()
        })
        .is_some(),
        "no new leader; logs in {}",
        dir.path().display()
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let grants: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    keeper_stop.store(true, Ordering::Relaxed);
    let answers = keeper.join().unwrap();

    let history = history.lock().unwrap().clone();
    if let Err(v) = history.check() {
        panic!("{v}; logs in {}", dir.path().display());
    }
    let after = history
        .holds()
        .iter()
        .filter(|h| h.from > killed_at)
        .count();
    assert!(grants >= 20, "only {grants} grants");
    assert!(
        after >= 5,
        "service did not resume after the kill: {after} grants"
    );
    assert!(
        !answers.contains(&410),
        "the keeper was told lost: {answers:?}"
    );
    let (successor, _) = new.unwrap();
    let status = get_json(a.spec(successor).http, "/v1/locks/keeper", WITHIN).unwrap();
    assert_eq!(status["held"], true, "{status}");
    assert_eq!(
        token_of(&status),
        kept,
        "the keeper's token changed: {status}"
    );
    println!("{grants} grants ({after} after the kill), keeper answers {answers:?}");
    a.stop_all(WITHIN);
}

/// Goal: the HTTP API answers bad input and stale tokens with the
/// contract's errors, accepts tokens as numbers or strings, and
/// `meshd lock` runs a command under the lock with its token, refuses to
/// run it while another holds the lock, and stops it (SIGTERM, exit 5)
/// when the lease can no longer be renewed.
#[test]
fn http_answers_and_meshd_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = led_agents(3, dir.path());
    let http = a.spec(2).http;
    let post =
        |path: &str, body: serde_json::Value| post_json_status(http, path, &body, WITHIN).unwrap();
    assert_eq!(post("/v1/locks/x/acquire", json!({"ttl_ms": 99})).0, 400);
    assert_eq!(
        post(
            "/v1/locks/x/acquire",
            json!({"ttl_ms": 1000, "wait_ms": 60001})
        )
        .0,
        400
    );
    assert_eq!(post("/v1/locks/x/acquire", json!({"tll_ms": 1000})).0, 400);
    let long = "n".repeat(257);
    assert_eq!(
        post(
            &format!("/v1/locks/{long}/acquire"),
            json!({"ttl_ms": 1000})
        )
        .0,
        400
    );
    let (code, v) = post(
        "/v1/locks/x/acquire",
        json!({"ttl_ms": 5000, "request_id": "r1"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["name"], "x");
    assert_eq!(v["ttl_ms"], 5000);
    let token = token_of(&v);
    assert_eq!(v["token"].as_u64(), Some(token.0));
    // A retry with the same request id gets the same grant (K4).
    let (code, again) = post(
        "/v1/locks/x/acquire",
        json!({"ttl_ms": 5000, "request_id": "r1"}),
    );
    assert_eq!((code, token_of(&again)), (200, token));
    let (code, v) = post("/v1/locks/x/acquire", json!({"ttl_ms": 5000}));
    assert_eq!((code, v["error"].as_str()), (409, Some("lock_held")));
    assert_eq!(post("/v1/locks/x/renew", json!({"token": token})).0, 200);
    assert_eq!(
        post("/v1/locks/x/renew", json!({"token": token.to_string()})).0,
        200
    );
    let (code, v) = post("/v1/locks/x/renew", json!({"token": token - 1}));
    assert_eq!((code, v["error"].as_str()), (410, Some("lock_lost")));
    assert_eq!(post("/v1/locks/x/renew", json!({"token": "abc"})).0, 400);
    let status = get_json(http, "/v1/locks/x", WITHIN).unwrap();
    assert_eq!(
        (status["held"].as_bool(), token_of(&status)),
        (Some(true), token)
    );
    assert_eq!(post("/v1/locks/x/release", json!({"token": token})).0, 200);
    assert_eq!(
        post("/v1/locks/x/release", json!({"token": token})).0,
        200,
        "a retried release"
    );
    let status = get_json(http, "/v1/locks/x", WITHIN).unwrap();
    assert_eq!(status, json!({"held": false}));

    // meshd lock: the command runs with the token and its exit status.
    let http_s = http.to_string();
    let out = Command::new(BIN)
        .args(["lock", "job", "--http", &http_s, "--ttl-ms", "2000", "--"])
        .args(["sh", "-c", "echo $MESH_LOCK_TOKEN; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let printed: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(printed > token.0);
    // Held by another: exit 3 without running the command.
    let (_, held) = post("/v1/locks/job/acquire", json!({"ttl_ms": 5000}));
    let out = Command::new(BIN)
        .args([
            "lock", "job", "--http", &http_s, "--", "sh", "-c", "echo ran",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    post("/v1/locks/job/release", json!({"token": token_of(&held)}));
    // Renewals fail once every agent is gone: SIGTERM before the lease
    // ends, exit 5.
    let mut child = Command::new(BIN)
        .args(["lock", "job", "--http", &http_s, "--ttl-ms", "1000", "--"])
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "renewed while agents run"
    );
    let stopped = Instant::now();
    a.stop_all(WITHIN);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
}

/// A remote client (no node of its own: an RPC endpoint with the cluster
/// secret) finds the leader among the agents it was given, keeps its lock
/// and token through a kill -9 of that leader (its renewals find the
/// successor), and a second remote client is refused while it holds and
/// gets the lock after the release, with a higher token.
#[test]
fn a_remote_client_keeps_its_lock_through_a_leader_kill() {
    use coordmesh::ClusterSecret;
    use coordmesh::client::RemoteClient;
    use coordmesh::locks::LockError;

    let dir = tempfile::tempdir().unwrap();
    let mut a = led_agents(3, dir.path());
    let secret = ClusterSecret::load(&dir.path().join("cluster.key")).unwrap();
    let (leader, _) = a.agreed_leader().unwrap();
    let dead_rpc = a.spec(leader).rpc;
    let rpcs: Vec<_> = a.ids().iter().map(|id| a.spec(*id).rpc).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let first = RemoteClient::connect(rpcs.clone(), &secret).await.unwrap();
        let guard = first
            .lock("remote")
            .ttl(Duration::from_secs(5))
            .wait(Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        assert_eq!(first.leader(), Some(dead_rpc), "found the leader");
        let token = guard.token();
        let second = RemoteClient::connect(rpcs.clone(), &secret).await.unwrap();
        assert!(
            matches!(
                second.lock("remote").try_acquire().await,
                Err(LockError::Held(_))
            ),
            "no second holder"
        );
        a.kill9(leader);
        // Two renewal intervals and more past the failover.
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            assert!(guard.is_valid(), "the lease was lost through the failover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now_leader = first.leader();
        assert!(
            now_leader.is_some() && now_leader != Some(dead_rpc),
            "renewals went to the successor ({now_leader:?})"
        );
        assert_eq!(guard.token(), token, "the token is kept");
        guard.release().await.unwrap();
        let next = second
            .lock("remote")
            .wait(Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        assert!(next.token() > token, "tokens only grow");
        next.release().await.unwrap();
    });
}
