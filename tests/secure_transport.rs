//! The cluster secret on real loopback sockets: who gets in, what a
//! network observer sees, and what tampering and replay achieve.
//!
//! Nodes run in this process on `127.0.0.1` with ports chosen by the OS.
//! A small UDP relay stands between nodes where a test needs to capture,
//! replay or alter traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordmesh::rpc::{Ping, Request, Response, RpcError};
use coordmesh::{ClusterSecret, ConfigBuilder, Mesh, NodeId};

const CLUSTER: &str = "orchard-cluster-7f3a";

async fn node(id: u64, seeds: Vec<String>, secret: Option<&ClusterSecret>) -> Mesh {
    let mut config = ConfigBuilder {
        id: Some(NodeId(id)),
        cluster: Some(CLUSTER.into()),
        gossip: Some("127.0.0.1:0".parse().unwrap()),
        seed: Some(seeds),
        voters: Some(vec![NodeId(1), NodeId(2), NodeId(3)]),
        ..ConfigBuilder::default()
    }
    .build()
    .unwrap();
    config.cluster_secret = secret.cloned();
    Mesh::start(config).await.unwrap()
}

fn alive(mesh: &Mesh) -> Vec<u64> {
    mesh.membership().alive().map(|m| m.id.0).collect()
}

async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Goal: nodes without the secret, or with another one, never become
/// members of a keyed cluster and cannot complete an RPC either way, while
/// keyed members talk freely. Method: three keyed nodes, one open node and
/// one with another key, all seeded to node 1; after the keyed nodes have
/// converged, wait several more gossip rounds and check every view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_secret_are_shut_out() {
    let key = ClusterSecret::generate().unwrap();
    let other = ClusterSecret::generate().unwrap();
    let n1 = node(1, vec![], Some(&key)).await;
    let seed = vec![n1.config().gossip_addr.to_string()];
    let n2 = node(2, seed.clone(), Some(&key)).await;
    let n3 = node(3, seed.clone(), Some(&key)).await;
    let open = node(4, seed.clone(), None).await;
    let stranger = node(5, seed.clone(), Some(&other)).await;
    let keyed = [&n1, &n2, &n3];
    wait_for("keyed nodes to converge", Duration::from_secs(10), || {
        keyed.iter().all(|m| alive(m) == vec![1, 2, 3])
    })
    .await;
    // Ten more gossip rounds in which the outsiders keep trying.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for m in keyed {
        let ids: Vec<u64> = m.members().iter().map(|m| m.id.0).collect();
        assert_eq!(ids, vec![1, 2, 3], "node {} lists outsiders", m.id());
    }
    assert_eq!(alive(&open), vec![4]);
    assert_eq!(alive(&stranger), vec![5]);
    let rejected = load(&n1.metrics().gossip_datagrams_unauthenticated)
        + load(&n1.metrics().gossip_datagrams_malformed);
    assert!(rejected > 0, "outsiders' datagrams were counted");

    // Keyed members call each other; outsiders fail the handshake in
    // both directions.
    let pong = n2.ping(NodeId(1), Duration::from_secs(2)).await.unwrap();
    assert_eq!(pong.id, NodeId(1));
    let ping = || Request::Ping(Ping { payload: vec![] });
    let n1_rpc = n1.config().rpc_addr;
    for outsider in [&open, &stranger] {
        let err = outsider
            .rpc()
            .call(n1_rpc, ping(), Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
        let err = n1
            .rpc()
            .call(outsider.config().rpc_addr, ping(), Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    }
    assert!(load(&n1.metrics().rpc_handshake_failures) >= 2);
    for m in [n1, n2, n3, open, stranger] {
        m.shutdown().await;
    }
}

/// A UDP relay: `front` faces the client, `back` faces the server. It
/// records every datagram each way and can inject datagrams toward the
/// server from `back`.
struct Relay {
    front: SocketAddr,
    back: Arc<tokio::net::UdpSocket>,
    server: SocketAddr,
    to_server: Arc<Mutex<Vec<Vec<u8>>>>,
    to_client: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let to_server = Arc::new(Mutex::new(Vec::new()));
        let to_client = Arc::new(Mutex::new(Vec::new()));
        let front_addr = front.local_addr().unwrap();
        let task = {
            let (front, back) = (front.clone(), back.clone());
            let (up, down) = (to_server.clone(), to_client.clone());
            tokio::spawn(async move {
                let mut client: Option<SocketAddr> = None;
                let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
                loop {
                    tokio::select! {
                        Ok((n, from)) = front.recv_from(&mut a) => {
                            client = Some(from);
                            up.lock().unwrap().push(a[..n].to_vec());
                            let _ = back.send_to(&a[..n], server).await;
                        }
                        Ok((n, _)) = back.recv_from(&mut b) => {
                            down.lock().unwrap().push(b[..n].to_vec());
                            if let Some(client) = client {
                                let _ = front.send_to(&b[..n], client).await;
                            }
                        }
                    }
                }
            })
        };
        Relay {
            front: front_addr,
            back,
            server,
            to_server,
            to_client,
            task,
        }
    }

    fn captured(&self) -> Vec<Vec<u8>> {
        let mut all = self.to_server.lock().unwrap().clone();
        all.extend(self.to_client.lock().unwrap().iter().cloned());
        all
    }

    async fn inject(&self, datagram: &[u8]) {
        self.back.send_to(datagram, self.server).await.unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Strings an observer must not learn: the cluster name and every
/// address of both nodes.
fn secrets_of(nodes: &[&Mesh]) -> Vec<String> {
    let mut words = vec![CLUSTER.to_string()];
    for m in nodes {
        let c = m.config();
        for addr in [c.gossip_addr, c.rpc_addr, c.http_addr] {
            words.push(addr.to_string());
        }
    }
    words
}

fn leaks(captured: &[Vec<u8>], words: &[String]) -> Vec<String> {
    words
        .iter()
        .filter(|w| {
            captured
                .iter()
                .any(|d| d.windows(w.len()).any(|win| win == w.as_bytes()))
        })
        .cloned()
        .collect()
}

/// Node `b` with node `a` joining through a relay; returns once both see
/// each other.
async fn pair_through_relay(secret: Option<&ClusterSecret>) -> (Mesh, Mesh, Relay) {
    let b = node(2, vec![], secret).await;
    let relay = Relay::start(b.config().gossip_addr).await;
    let a = node(1, vec![relay.front.to_string()], secret).await;
    wait_for("the pair to converge", Duration::from_secs(10), || {
        alive(&a) == vec![1, 2] && alive(&b) == vec![1, 2]
    })
    .await;
    (a, b, relay)
}

/// Goal: sealed gossip tells an observer neither the cluster name nor any
/// address, while the same capture of an open cluster does (so the check
/// can fail). Method: capture all datagrams through a relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_gossip_hides_cluster_and_addresses() {
    let key = ClusterSecret::generate().unwrap();
    let (a, b, relay) = pair_through_relay(Some(&key)).await;
    let captured = relay.captured();
    assert!(captured.len() > 4, "gossip flowed through the relay");
    assert_eq!(
        leaks(&captured, &secrets_of(&[&a, &b])),
        Vec::<String>::new()
    );
    a.shutdown().await;
    b.shutdown().await;

    let (a, b, relay) = pair_through_relay(None).await;
    let leaked = leaks(&relay.captured(), &secrets_of(&[&a, &b]));
    assert!(
        leaked.contains(&CLUSTER.to_string()),
        "open gossip is plain: {leaked:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Goal: a replayed or altered sealed datagram is dropped and counted, and
/// the cluster carries on. Method: capture a genuine datagram from node 1
/// to node 2 through the relay, send it to node 2 again, then send an
/// altered copy; watch node 2's counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_tampered_gossip_is_rejected_and_counted() {
    let key = ClusterSecret::generate().unwrap();
    let (a, b, relay) = pair_through_relay(Some(&key)).await;
    let genuine = relay.to_server.lock().unwrap().last().cloned().unwrap();
    let metrics = b.metrics();

    let replayed = load(&metrics.gossip_datagrams_replayed);
    relay.inject(&genuine).await;
    wait_for("the replay to be counted", Duration::from_secs(5), || {
        load(&metrics.gossip_datagrams_replayed) > replayed
    })
    .await;

    let unauthenticated = load(&metrics.gossip_datagrams_unauthenticated);
    // Alter the counter (bytes 17..25 of the header) so the datagram is
    // not simply a replay, and flip a ciphertext bit too.
    let mut altered = genuine.clone();
    altered[20] ^= 0x40;
    let body = altered.len() - 20;
    altered[body] ^= 0x01;
    relay.inject(&altered).await;
    wait_for(
        "the alteration to be counted",
        Duration::from_secs(5),
        || load(&metrics.gossip_datagrams_unauthenticated) > unauthenticated,
    )
    .await;

    // Still a healthy pair.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alive(&b), vec![1, 2]);
    a.shutdown().await;
    b.shutdown().await;
}

/// Goal: QUIC packets between members tell an observer neither the
/// cluster name nor any address, even when the request itself carries
/// them. Method: a keyed call through a relay, with those strings as the
/// ping payload; the answer proves they crossed the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_packets_hide_cluster_and_addresses() {
    let key = ClusterSecret::generate().unwrap();
    let a = node(1, vec![], Some(&key)).await;
    let b = node(2, vec![], Some(&key)).await;
    let relay = Relay::start(b.config().rpc_addr).await;
    let words = secrets_of(&[&a, &b]);
    let payload = words.join(" ").into_bytes();
    let answer = a
        .rpc()
        .call(
            relay.front,
            Request::Ping(Ping {
                payload: payload.clone(),
            }),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let Response::Pong(pong) = answer else {
        panic!("unexpected answer {answer:?}");
    };
    assert_eq!(pong.payload, payload);
    let captured = relay.captured();
    assert!(captured.len() >= 4, "handshake and call crossed the relay");
    assert_eq!(leaks(&captured, &words), Vec::<String>::new());
    a.shutdown().await;
    b.shutdown().await;
}

/// Goal: call errors say what happened: an oversized request is refused
/// before sending, and a port where no node listens is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_errors_are_actionable() {
    let key = ClusterSecret::generate().unwrap();
    let a = node(1, vec![], Some(&key)).await;
    let b = node(2, vec![], Some(&key)).await;
    let big = Request::Ping(Ping {
        payload: vec![0; coordmesh::rpc::FRAME_BYTES_MAX],
    });
    let err = a
        .rpc()
        .call(b.config().rpc_addr, big, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::TooLarge { .. }), "{err:?}");

    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = silent.local_addr().unwrap();
    let ping = Request::Ping(Ping { payload: vec![] });
    let err = a
        .rpc()
        .call(nobody, ping.clone(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RpcError::Timeout {
            after: Duration::from_millis(300)
        }
    );
    let err = a
        .rpc()
        .call(nobody, ping, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    a.shutdown().await;
    b.shutdown().await;
}
