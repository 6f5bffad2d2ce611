//! Real `meshd agent` processes on loopback (tier 3): convergence, kill -9,
//! SIGTERM leave, address in use. Ports are taken free at run time; every
//! process started is ended (on drop, and by the kernel if the test dies).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coordmesh::harness::agents::Agents;
use coordmesh::harness::http::get_text;

const BIN: &str = env!("CARGO_BIN_EXE_meshd");
/// Generous: a loaded CI machine runs many tests at once.
const WITHIN: Duration = Duration::from_secs(20);

fn agents(n: u64, dir: &Path) -> Agents {
    let mut agents = Agents::new(Path::new(BIN), n, dir).expect("plan agents");
    agents.start_all().expect("start agents");
    agents
}

/// Goal: three agents converge, each listing three alive members with the
/// contract's fields; a kill -9 is seen as dead; a SIGTERM is seen as a
/// leave and the agent exits 0.
#[test]
fn three_agents_converge_detect_kill_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = agents(3, dir.path());
    assert!(
        a.wait_until(WITHIN, |a| a.all_see(&[1, 2, 3])).is_some(),
        "agents did not converge; logs in {}",
        dir.path().display()
    );
    let status = a.status(1).unwrap();
    assert_eq!(status["node_id"], 1);
    for field in ["leader", "quorum", "epoch"] {
        assert!(status.get(field).is_some(), "status field {field} missing");
    }
    let m = &status["members"][0];
    for field in [
        "id",
        "state",
        "gossip_addr",
        "rpc_addr",
        "http_addr",
        "voter",
    ] {
        assert!(!m[field].is_null(), "member field {field} missing: {m}");
    }

    a.kill9(3);
    assert!(
        a.wait_until(WITHIN, |a| a.all_see(&[1, 2])).is_some(),
        "kill -9 of node 3 not seen"
    );
    let seen = a.status(1).unwrap();
    let n3 = seen["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 3)
        .unwrap()
        .clone();
    assert_eq!(
        (n3["state"].as_str(), n3["left"].as_bool()),
        (Some("dead"), Some(false))
    );

    let exit = a
        .terminate(2, WITHIN)
        .expect("node 2 did not exit on SIGTERM");
    assert!(exit.success(), "node 2 exited with {exit:?}");
    assert!(
        a.wait_until(WITHIN, |a| {
            a.status(1).is_some_and(|s| {
                s["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["id"] == 2 && m["left"] == true)
            })
        })
        .is_some(),
        "node 1 did not record node 2's leave"
    );
    assert!(
        a.stop_all(WITHIN).is_empty(),
        "an agent did not exit 0 on SIGTERM"
    );
}

/// Goal: `meshd status` prints a table of members, and `--json` prints
/// `/v1/status`; an unreachable agent is an error, exit 1.
#[test]
fn status_command_prints_members() {
    let dir = tempfile::tempdir().unwrap();
    let a = agents(2, dir.path());
    assert!(a.wait_until(WITHIN, |a| a.all_see(&[1, 2])).is_some());
    let http = a.spec(2).http.to_string();
    let out = Command::new(BIN)
        .args(["status", "--http", &http])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.starts_with("node 2 | leader: none known"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("alive")).count(),
        2,
        "{table}"
    );
    let out = Command::new(BIN)
        .args(["status", "--json", "--http", &http])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["node_id"], 2);
    assert_eq!(json["members"].as_array().unwrap().len(), 2);

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(BIN)
        .args(["status", "--http", &closed.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&closed.to_string()));
}

/// Goal: `/metrics` is Prometheus text with membership and gossip counts.
#[test]
fn metrics_report_members_and_gossip_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = agents(2, dir.path());
    assert!(a.wait_until(WITHIN, |a| a.all_see(&[1, 2])).is_some());
    let text = get_text(a.spec(1).http, "/metrics", Duration::from_secs(2)).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert_eq!(value("coordmesh_members_alive "), 2.0);
    assert_eq!(value("coordmesh_members_dead "), 0.0);
    assert!(value("coordmesh_gossip_bytes_sent_total ") > 0.0);
    assert!(value("coordmesh_gossip_bytes_received_total ") > 0.0);
    assert_eq!(value("coordmesh_gossip_datagrams_malformed_total "), 0.0);
}

/// Goal: junk sent to the gossip port is counted and dropped, and the
/// agent keeps gossiping, in both wire formats.
#[test]
fn malformed_gossip_is_counted_and_harmless() {
    malformed_gossip_case(false);
    malformed_gossip_case(true);
}

fn malformed_gossip_case(compression: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::new(Path::new(BIN), 2, dir.path()).expect("plan agents");
    if compression {
        a.extra_args.push("--gossip-compression".into());
    }
    a.start_all().expect("start agents");
    assert!(a.wait_until(WITHIN, |a| a.all_see(&[1, 2])).is_some());
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Empty, text, a valid chitchat header with a bad body, BadCluster in
    // both wire formats (magic 0xB053 little-endian, version, type 3: one is
    // the relay's sentinel, the other a valid message), and zeros.
    let payloads: [&[u8]; 6] = [
        b"",
        b"junk",
        &[0x53, 0xb0, 0x00, 0x00, 0xff],
        &[0x53, 0xb0, 0x00, 0x03],
        &[0x53, 0xb0, 0x01, 0x03],
        &[0u8; 2000],
    ];
    for payload in payloads {
        junk.send_to(payload, a.spec(1).gossip).unwrap();
    }
    let malformed = || {
        get_text(a.spec(1).http, "/metrics", Duration::from_secs(2))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("coordmesh_gossip_datagrams_malformed_total ")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            })
    };
    assert!(
        a.wait_until(WITHIN, |_| malformed() == Some(payloads.len() as u64 - 1))
            .is_some(),
        "malformed count is {:?}",
        malformed()
    );
    // Still gossiping: the peer stays alive in node 1's view for a while.
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.all_see(&[1, 2]));
}

/// Goal: an address already in use (gossip UDP or HTTP TCP) is an error
/// naming it, exit 1.
#[test]
fn address_in_use_exits_1_naming_it() {
    let held_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let held_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = |udp: bool| {
        if udp {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        } else {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        }
    };
    let cases = [
        (held_udp.local_addr().unwrap(), free(false), "gossip"),
        (free(true), held_tcp.local_addr().unwrap(), "http"),
    ];
    for (gossip, http, what) in cases {
        let out = Command::new(BIN)
            .args(["agent", "--id", "1", "--gossip", &gossip.to_string()])
            .args([
                "--rpc",
                &free(true).to_string(),
                "--http",
                &http.to_string(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let addr = if what == "gossip" { gossip } else { http };
        assert_eq!(out.status.code(), Some(1), "{what}: stderr: {err}");
        assert!(
            err.contains(&format!("{what} address {addr} is already in use")),
            "stderr: {err}"
        );
    }
}

/// Goal: agents sharing a `meshd keygen` secret form a cluster; an agent
/// without it, seeded to them, stays alone and is never listed. Method:
/// three keyed agents and one open one; check every view after the keyed
/// three converge and ten more gossip rounds pass.
#[test]
fn keyed_agents_shut_out_a_keyless_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::new(Path::new(BIN), 4, dir.path()).expect("plan agents");
    a.close_with_new_key().unwrap();
    for id in 1..=3 {
        a.start(id).unwrap();
    }
    a.extra_args.clear();
    a.start(4).unwrap();
    assert!(
        a.wait_until(WITHIN, |a| {
            (1..=3).all(|id| a.alive_seen_by(id) == Some(vec![1, 2, 3]))
                && a.alive_seen_by(4) == Some(vec![4])
        })
        .is_some(),
        "keyed agents did not converge; logs in {}",
        dir.path().display()
    );
    std::thread::sleep(Duration::from_secs(1));
    for id in 1..=3 {
        let status = a.status(id).unwrap();
        let ids: Vec<u64> = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3], "agent {id} lists an outsider");
    }
    assert_eq!(a.alive_seen_by(4), Some(vec![4]));
    a.stop_all(WITHIN);
}

/// Goal: five agents elect one leader that all agree on; after a kill -9
/// of the leader every survivor agrees on a new leader with a higher
/// epoch. Voters keep their promises in data directories.
#[test]
fn five_agents_fail_over_after_kill_9_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::start_led(Path::new(BIN), 5, dir.path(), WITHIN).unwrap();
    let (leader, epoch) = a.agreed_leader().unwrap();
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
        "survivors did not agree on a new leader; logs in {}",
        dir.path().display()
    );
    let (successor, _) = new.unwrap();
    let status = a.status(successor).unwrap();
    assert_eq!(status["is_leader"], true);
    let metrics = get_text(a.spec(successor).http, "/metrics", WITHIN).unwrap();
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("coordmesh_election_terms_won_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(served >= 1, "{metrics}");
    a.stop_all(WITHIN);
}

/// A raw HTTP/1.1 GET: the status line's code, and the whole answer.
fn raw_get(addr: std::net::SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WITHIN)).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

/// Goal: an agent started with `--http-token-file` answers 401
/// `unauthorized` (with `WWW-Authenticate: Bearer`) to calls without its
/// token or with another, serves them with it (the scheme's name in any
/// case), serves the dashboard page without it, and `meshd status` takes
/// the token from the same file.
#[test]
fn an_agent_with_an_http_token_serves_only_calls_that_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("http.token");
    let token = "s3cret-token-of-the-test-0123456789";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut a = Agents::new(Path::new(BIN), 1, dir.path()).expect("plan agents");
    a.extra_args = vec![
        "--http-token-file".into(),
        token_file.to_string_lossy().into_owned(),
    ];
    a.start_all().expect("start");
    let http = a.spec(1).http;
    let up = a.wait_until(WITHIN, |_| std::net::TcpStream::connect(http).is_ok());
    assert!(up.is_some(), "the agent serves");
    for (path, auth) in [
        ("/v1/status", None),
        (
            "/v1/status",
            Some("Bearer not-the-token-0123456789".to_string()),
        ),
        ("/v1/status", Some(format!("Basic {token}"))),
        ("/metrics", None),
        ("/v1/locks/x", None),
        ("/no/such/route", None),
    ] {
        let (code, answer) = raw_get(http, path, auth.as_deref());
        assert_eq!(code, 401, "{path} with {auth:?}: {answer}");
        assert!(answer.contains(r#""error":"unauthorized""#), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{answer}"
        );
    }
    for auth in [format!("Bearer {token}"), format!("bearer {token}")] {
        let (code, answer) = raw_get(http, "/v1/status", Some(&auth));
        assert_eq!(code, 200, "{answer}");
        assert!(answer.contains(r#""node_id":1"#), "{answer}");
    }
    let (code, answer) = raw_get(http, "/", None);
    assert_eq!(code, 200, "the dashboard page holds no data: {answer}");

    let status = |with_token: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["status", "--json", "--http", &http.to_string()]);
        if with_token {
            cmd.arg("--http-token-file").arg(&token_file);
        }
        cmd.output().unwrap()
    };
    let out = status(true);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""node_id":1"#));
    let out = status(false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{out:?}"
    );
}

/// Goal: `/v1/status` says whether a voter is still recovering (E7): one
/// voter of three started alone can neither form the cluster nor copy
/// it, and says so until the others start; then none is.
#[test]
fn status_says_whether_a_voter_is_still_recovering() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::new(Path::new(BIN), 3, dir.path()).expect("plan agents");
    a.close_with_new_key().expect("a cluster key");
    a.data_root = Some(dir.path().join("data"));
    a.start(1).expect("start node 1");
    a.wait_until(WITHIN, |a| a.status(1).is_some())
        .expect("node 1 answers");
    std::thread::sleep(Duration::from_millis(1500));
    let status = a.status(1).expect("node 1 answers");
    assert_eq!(status["recovering"], true, "{status}");
    assert!(!a.none_recovering());
    a.start(2).expect("start node 2");
    a.start(3).expect("start node 3");
    a.wait_until(WITHIN, |a| a.none_recovering())
        .unwrap_or_else(|| panic!("every voter recovered\n{}", a.report()));
    a.stop_all(WITHIN);
}
