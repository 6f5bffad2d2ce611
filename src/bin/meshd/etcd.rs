//! A 3-member etcd cluster on loopback (Debian's `etcd-server`), run beside
//! our agents so benchmarks compare both in one run on one machine.
#![allow(dead_code)] // later benchmarks use more of it

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::{die_with_parent, free_gossip_port, get_json};

/// One etcd member.
pub struct Member {
    /// Its name (`e1`, …).
    pub name: String,
    /// Client URL address.
    pub client: SocketAddr,
    child: Child,
}

/// A running etcd cluster; killed on drop.
pub struct EtcdCluster {
    /// Members in name order.
    pub members: Vec<Member>,
    dir: PathBuf,
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

    /// Starts `n` members with data directories under `dir` (etcd fsyncs
    /// its WAL; the comparison runs it as shipped).
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
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let client = SocketAddr::from(([127, 0, 0, 1], *p));
            let peer = format!("http://127.0.0.1:{}", p + 2);
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let mut cmd = Command::new("etcd");
            cmd.args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "coordmesh-bench"])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            die_with_parent(&mut cmd);
            members.push(Member {
                name,
                client,
                child: cmd.spawn()?,
            });
        }
        Ok(EtcdCluster {
            members,
            dir: dir.to_path_buf(),
        })
    }

    /// Waits until every member answers `/health` with `true`.
    pub fn wait_healthy(&self, within: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            let healthy = self.members.iter().all(|m| {
                get_json(m.client, "/health", Duration::from_millis(500))
                    .is_ok_and(|v| v["health"] == "true")
            });
            if healthy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Process ids of the members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.child.id()).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
