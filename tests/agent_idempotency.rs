//! Idempotency through real `meshd agent` processes on loopback (tier 3):
//! the contract's answers, a retry through every agent, the leader killed
//! with -9 between begin and complete, and a whole-cluster restart on its
//! data directories. Ports are taken free at run time; every process
//! started is ended.

use std::path::Path;
use std::time::{Duration, Instant};

use coordmesh::harness::agents::Agents;
use coordmesh::harness::http::{Reply, get_json, post_json_reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshd");
const WITHIN: Duration = Duration::from_secs(20);

fn post(http: std::net::SocketAddr, path: &str, body: Value) -> Reply {
    post_json_reply(http, path, &body, WITHIN).unwrap()
}

fn claim_of(v: &Value) -> String {
    v["claim_str"].as_str().unwrap().to_string()
}

/// Retries `f` while it answers 503 (a failover), up to `WITHIN`.
fn through_failover(mut f: impl FnMut() -> Reply) -> Reply {
    let start = Instant::now();
    loop {
        let r = f();
        if r.status != 503 || start.elapsed() > WITHIN {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Goal: CONTRACT.md's idempotency answers, end to end.
#[test]
fn http_answers_per_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::start_led(Path::new(BIN), 3, dir.path(), WITHIN).unwrap();
    let (h1, h2, h3) = (a.spec(1).http, a.spec(2).http, a.spec(3).http);
    let begin = json!({"fingerprint": "sha256-a", "ttl_ms": 86_400_000, "claim_ttl_ms": 10_000});
    // A new leader serves claims once its records are reconciled with
    // its promisers (503 no_quorum until then, as in any failover).
    let r = through_failover(|| post(h2, "/v1/idempotency/pay-1/begin", begin.clone()));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["state"], "acquired");
    assert_eq!(r.body["recovered"], false);
    assert_eq!(r.body["claim_ttl_ms"], 10_000);
    let claim = claim_of(&r.body);
    assert_eq!(r.body["claim"].as_u64().unwrap().to_string(), claim);
    // While the claim is live: a mismatch first (I7), then in progress.
    let r = post(
        h3,
        "/v1/idempotency/pay-1/begin",
        json!({"fingerprint": "sha256-b"}),
    );
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (422, Some("fingerprint_mismatch"))
    );
    let r = post(h3, "/v1/idempotency/pay-1/begin", begin.clone());
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("in_progress"))
    );
    assert!(r.headers.contains_key("retry-after"), "{r:?}");
    // Renew (an extension), then complete with a stale claim: 410.
    let r = post(h1, "/v1/idempotency/pay-1/renew", json!({"claim": claim}));
    assert_eq!((r.status, &r.body["claim_ttl_ms"]), (200, &json!(10_000)));
    let stale = (claim.parse::<u64>().unwrap() - 1).to_string();
    let r = post(
        h1,
        "/v1/idempotency/pay-1/complete",
        json!({"claim": stale, "result": 1}),
    );
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (410, Some("claim_lost"))
    );
    let result = json!({"charge": "ch_1", "amount": 10});
    let r = post(
        h1,
        "/v1/idempotency/pay-1/complete",
        json!({"claim": claim, "result": result}),
    );
    assert_eq!((r.status, &r.body), (200, &json!({})));
    // Every agent replays it, saying so.
    for h in [h1, h2, h3] {
        let r = post(h, "/v1/idempotency/pay-1/begin", begin.clone());
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            (&r.body["state"], &r.body["result"]),
            (&json!("completed"), &result)
        );
        assert_eq!(
            r.headers.get("idempotent-replayed").map(String::as_str),
            Some("true")
        );
    }
    let r = post(
        h2,
        "/v1/idempotency/pay-1/begin",
        json!({"fingerprint": "sha256-b"}),
    );
    assert_eq!(r.status, 422, "a mismatch after completion too: {r:?}");
    // GET answers from each agent's own replica once the notice came.
    let start = Instant::now();
    for h in [h1, h2, h3] {
        loop {
            match get_json(h, "/v1/idempotency/pay-1", WITHIN) {
                Ok(v) => {
                    assert_eq!((&v["state"], &v["result"]), (&json!("completed"), &result));
                    assert_eq!(v["fingerprint"], "sha256-a");
                    break;
                }
                Err(e) => {
                    assert!(start.elapsed() < WITHIN, "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    let err = get_json(h1, "/v1/idempotency/never", WITHIN).unwrap_err();
    assert!(err.contains("404"), "{err}");
    // Abort frees the claim and records nothing.
    let r = post(h1, "/v1/idempotency/pay-2/begin", begin.clone());
    let claim2 = claim_of(&r.body);
    let r = post(h2, "/v1/idempotency/pay-2/abort", json!({"claim": claim2}));
    assert_eq!((r.status, &r.body), (200, &json!({})));
    let r = post(h3, "/v1/idempotency/pay-2/begin", begin.clone());
    assert_eq!((r.status, &r.body["state"]), (200, &json!("acquired")));
    assert!(claim_of(&r.body).parse::<u64>().unwrap() > claim2.parse::<u64>().unwrap());
    // Bad input: clear errors, nothing recorded.
    let long = "k".repeat(201);
    let bad = [
        (format!("/v1/idempotency/{long}/begin"), begin.clone(), 400),
        (
            "/v1/idempotency/k/begin".into(),
            json!({"fingerprint": "f", "ttl_ms": 999}),
            400,
        ),
        (
            "/v1/idempotency/k/begin".into(),
            json!({"fingerprint": "f", "claim_ttl_ms": 99}),
            400,
        ),
        (
            "/v1/idempotency/k/begin".into(),
            json!({"fingerprint": "f", "wait_ms": 60_001}),
            400,
        ),
        (
            "/v1/idempotency/k/begin".into(),
            json!({"fingerprnt": "f"}),
            400,
        ),
        (
            "/v1/idempotency/k/begin".into(),
            json!({"fingerprint": 7}),
            400,
        ),
        (
            "/v1/idempotency/k/complete".into(),
            json!({"claim": "x", "result": 1}),
            400,
        ),
        ("/v1/idempotency/k/abort".into(), json!({}), 400),
    ];
    for (path, body, status) in bad {
        let r = post(h2, &path, body.clone());
        assert_eq!(r.status, status, "{path} {body}: {r:?}");
        assert_eq!(r.body["error"], "bad_request", "{r:?}");
    }
    let r = post(h1, "/v1/idempotency/big/begin", begin.clone());
    let big = claim_of(&r.body);
    let r = post(
        h1,
        "/v1/idempotency/big/complete",
        json!({"claim": big, "result": "x".repeat(64 * 1024)}),
    );
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (413, Some("result_too_large"))
    );
    let r = post(h1, "/v1/idempotency/big/abort", json!({"claim": big}));
    assert_eq!(r.status, 200);
    assert!(get_json(h1, "/v1/idempotency/big", WITHIN).is_err());
    a.stop_all(WITHIN);
}

/// Goal: the leader killed with -9 between begin and complete: the
/// completion is retried through another agent until the new leader
/// takes it; after a whole-cluster restart on the data directories,
/// every retry still replays the first result and nothing runs twice.
#[test]
fn a_completion_survives_a_leader_kill_and_a_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::start_led(Path::new(BIN), 5, dir.path(), WITHIN).unwrap();
    let (leader, _) = a.agreed_leader().unwrap();
    let via = a.ids().into_iter().find(|id| *id != leader).unwrap();
    let h = a.spec(via).http;
    let begin = json!({"fingerprint": "f", "claim_ttl_ms": 10_000});
    // A leader serves begins once its records are reconciled with its
    // promisers: 503 until then (CONTRACT.md), however soon all agree.
    let r = through_failover(|| post(h, "/v1/idempotency/order-9/begin", begin.clone()));
    assert_eq!(r.status, 200, "{r:?}");
    let claim = claim_of(&r.body);
    a.kill9(leader);
    let r = through_failover(|| {
        post(
            h,
            "/v1/idempotency/order-9/complete",
            json!({"claim": claim, "result": "shipped"}),
        )
    });
    assert_eq!(r.status, 200, "{r:?}");
    a.start(leader).unwrap();
    let all = a.ids();
    a.wait_until(WITHIN, |a| a.all_see(&all) && a.agreed_leader().is_some())
        .expect("the cluster back whole");
    a.stop_all(WITHIN);
    a.start_all().unwrap();
    a.wait_until(WITHIN, |a| a.all_see(&all) && a.agreed_leader().is_some())
        .expect("the cluster restarted");
    for id in a.ids() {
        let r = through_failover(|| {
            post(
                a.spec(id).http,
                "/v1/idempotency/order-9/begin",
                begin.clone(),
            )
        });
        assert_eq!(r.status, 200, "via {id}: {r:?}");
        assert_eq!(
            (&r.body["state"], &r.body["result"]),
            (&json!("completed"), &json!("shipped"))
        );
    }
    a.stop_all(WITHIN);
}

/// Begins `key` through `http` and completes it with `result`.
fn run_once(http: std::net::SocketAddr, key: &str, begin: &Value, result: &str) {
    // A new leader serves claims once its records are reconciled with
    // its promisers (503 no_quorum until then).
    let r = through_failover(|| post(http, &format!("/v1/idempotency/{key}/begin"), begin.clone()));
    assert_eq!(r.status, 200, "{r:?}");
    let claim = claim_of(&r.body);
    let r = post(
        http,
        &format!("/v1/idempotency/{key}/complete"),
        json!({"claim": claim, "result": result}),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

/// GETs `path` until the agent answers (a refused connection is no
/// answer): Ok with a 200's body, Err with any other status's text.
fn first_answer(http: std::net::SocketAddr, path: &str) -> Result<Value, String> {
    let start = Instant::now();
    loop {
        match get_json(http, path, WITHIN) {
            Ok(v) => return Ok(v),
            Err(e) if e.starts_with("HTTP ") => return Err(e),
            Err(_) if start.elapsed() < WITHIN => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the agent never answered: {e}"),
        }
    }
}

/// Goal: an agent restarted on its data directory replays from its
/// records file at once: a lone agent (its own leader, no peer to refill
/// it), restarted, answers a read of a record it held with the record,
/// once it has measured its clock (against itself: at once), and
/// replays a retry. (Without the file it answers 404: the completion is
/// in its lock log, but reads answer from the records alone.)
#[test]
fn a_restarted_agent_replays_from_its_records_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::start_led(Path::new(BIN), 1, dir.path(), WITHIN).unwrap();
    let h = a.spec(1).http;
    let begin = json!({"fingerprint": "f", "claim_ttl_ms": 10_000});
    run_once(h, "invoice-7", &begin, "sent");
    a.terminate(1, WITHIN).expect("the agent stops on SIGTERM");
    a.start(1).unwrap();
    let record = loop {
        match first_answer(h, "/v1/idempotency/invoice-7") {
            Err(e) if e.contains("clock_unknown") => std::thread::sleep(Duration::from_millis(5)),
            other => break other,
        }
    }
    .expect("the record is read from the records file");
    assert_eq!(record["result"], "sent", "{record}");
    let r = post(h, "/v1/idempotency/invoice-7/begin", begin);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (&r.body["state"], &r.body["result"]),
        (&json!("completed"), &json!("sent"))
    );
    a.stop_all(WITHIN);
}

/// Goal (I6): an agent restarted alone, with no leader to measure its
/// clock against, answers nothing from its records (it cannot tell
/// whether its clock runs far behind and would replay what the cluster
/// has expired): 503 `clock_unknown`, though its records file holds the
/// record. Once a peer is back and a leader is elected, it answers.
#[test]
fn a_restarted_agent_answers_from_its_records_only_once_its_clock_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::start_led(Path::new(BIN), 3, dir.path(), WITHIN).unwrap();
    let (leader, _) = a.agreed_leader().unwrap();
    let x = a.ids().into_iter().find(|id| *id != leader).unwrap();
    let h = a.spec(x).http;
    run_once(h, "invoice-8", &json!({"fingerprint": "f"}), "sent");
    a.wait_until(WITHIN, |a| {
        get_json(a.spec(x).http, "/v1/idempotency/invoice-8", WITHIN).is_ok()
    })
    .expect("the agent holds the record");
    for id in a.ids() {
        if id != x {
            a.kill9(id);
        }
    }
    a.terminate(x, WITHIN).expect("the agent stops on SIGTERM");
    a.start(x).unwrap();
    let e = first_answer(h, "/v1/idempotency/invoice-8").expect_err("no leader, no answer");
    assert!(
        e.starts_with("HTTP 503") && e.contains("clock_unknown"),
        "{e}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let e = first_answer(h, "/v1/idempotency/invoice-8").expect_err("still no leader");
    assert!(e.contains("clock_unknown"), "{e}");
    a.start(leader).unwrap();
    a.wait_until(WITHIN, |a| {
        get_json(a.spec(x).http, "/v1/idempotency/invoice-8", WITHIN)
            .is_ok_and(|r| r["result"] == "sent")
    })
    .expect("answered once a leader measured its clock");
    a.stop_all(WITHIN);
}
