//! A 3-member etcd cluster on loopback (Debian's `etcd-server`), run beside
//! our agents so benchmarks compare both in one run on one machine.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::agents::{die_with_parent, free_gossip_port};
use crate::harness::http::{get_json, post_json};

/// One etcd member.
pub struct Member {
    /// Its name (`e1`, …).
    pub name: String,
    /// Client URL address.
    pub client: SocketAddr,
    peer: String,
    child: Option<Child>,
}

/// A running etcd cluster; killed on drop.
pub struct EtcdCluster {
    /// Members in name order.
    pub members: Vec<Member>,
    initial: String,
    dir: PathBuf,
    /// Per member, a command its start goes through (`ip netns exec …`).
    prefixes: Vec<Vec<String>>,
}

impl EtcdCluster {
    /// True when an `etcd` binary is on the PATH.
    pub fn available() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts `n` members under `dir` for a comparison and waits until
    /// they are healthy; `None` (said on stdout) when no etcd is installed.
    pub fn start_healthy(n: usize, dir: &Path) -> Result<Option<EtcdCluster>, String> {
        if !Self::available() {
            println!("(etcd not installed: no comparison)");
            return Ok(None);
        }
        let etcd = Self::start(n, dir).map_err(|e| e.to_string())?;
        if !etcd.wait_healthy(Duration::from_secs(60)) {
            return Err("etcd: not healthy within 60 s".into());
        }
        Ok(Some(etcd))
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// Starts `n` members with data directories under `dir` (etcd fsyncs
    /// its WAL; the comparison runs it as shipped, default timings).
    pub fn start(n: usize, dir: &Path) -> io::Result<EtcdCluster> {
        std::fs::create_dir_all(dir)?;
        let mut taken = HashSet::new();
        let mut ports = Vec::new();
        for _ in 0..n {
            // A free triple: client, peer, and one spare.
            let p = free_gossip_port(&taken)?;
            taken.extend([p, p + 1, p + 2]);
            ports.push(p);
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{}=http://127.0.0.1:{}", i + 1, p + 2))
            .collect();
        let mut cluster = EtcdCluster {
            prefixes: Vec::new(),
            members: ports
                .iter()
                .enumerate()
                .map(|(i, p)| Member {
                    name: format!("e{}", i + 1),
                    client: SocketAddr::from(([127, 0, 0, 1], *p)),
                    peer: format!("http://127.0.0.1:{}", p + 2),
                    child: None,
                })
                .collect(),
            initial: initial.join(","),
            dir: dir.to_path_buf(),
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Starts one member at each of `hosts` (client port 2379, peer port
    /// 2380), member `i` through `prefixes[i]` (a command that runs the
    /// rest in, say, a network namespace), data under `dir`.
    pub fn start_at(
        hosts: &[std::net::IpAddr],
        prefixes: Vec<Vec<String>>,
        dir: &Path,
    ) -> io::Result<EtcdCluster> {
        std::fs::create_dir_all(dir)?;
        let peer = |h: &std::net::IpAddr| format!("http://{}", SocketAddr::new(*h, 2380));
        let initial: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("e{}={}", i + 1, peer(h)))
            .collect();
        let mut cluster = EtcdCluster {
            members: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| Member {
                    name: format!("e{}", i + 1),
                    client: SocketAddr::new(*h, 2379),
                    peer: peer(h),
                    child: None,
                })
                .collect(),
            initial: initial.join(","),
            dir: dir.to_path_buf(),
            prefixes,
        };
        for i in 0..hosts.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Starts member `i` (again, after a kill: same data directory).
    pub fn spawn(&mut self, i: usize) -> io::Result<()> {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let mut cmd = match self.prefixes.get(i).and_then(|p| p.split_first()) {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("etcd");
                cmd
            }
            None => Command::new("etcd"),
        };
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &m.peer])
            .args(["--initial-advertise-peer-urls", &m.peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "coordmesh-bench"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// kill -9 of member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every running member answers `/health` with `true`.
    pub fn wait_healthy(&self, within: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            let healthy = self.members.iter().filter(|m| m.child.is_some()).all(|m| {
                get_json(m.client, "/health", Duration::from_millis(500))
                    .is_ok_and(|v| v["health"] == "true")
            });
            if healthy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The index of the member that says it is the leader, if any.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && post_json(
                    m.client,
                    "/v3/maintenance/status",
                    &json!({}),
                    Duration::from_millis(300),
                )
                .is_ok_and(|v| !v["leader"].is_null() && v["leader"] == v["header"]["member_id"])
        })
    }

    /// One write through member `i`; true if etcd committed it.
    pub fn put(&self, i: usize, timeout: Duration) -> bool {
        // Key "bench", value "x", base64 as the JSON gateway wants.
        post_json(
            self.members[i].client,
            "/v3/kv/put",
            &json!({"key": "YmVuY2g=", "value": "eA=="}),
            timeout,
        )
        .is_ok_and(|v| v.get("header").is_some())
    }

    /// Member `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
