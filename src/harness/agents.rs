//! Real `meshd agent` processes on loopback, for the demo, the process
//! benchmarks and the multi-process tests.
//!
//! Every agent gets free ports, its log in a file, and dies with us: the
//! children are killed on drop, and the kernel kills them if this process
//! dies first (`PR_SET_PDEATHSIG`), so nothing is ever left orphaned.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::get_json;

/// How long one status request may take before the agent counts as
/// unreachable for that poll.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Poll interval of [`Agents::wait_until`].
pub const POLL: Duration = Duration::from_millis(20);

/// A gossip port `p` such that UDP `p`, UDP `p+1` and TCP `p+2` are free
/// now and not in `taken`. (Free now: another process may still take them
/// before the agent binds; the agent then fails loudly, naming the port.)
pub fn free_gossip_port(taken: &HashSet<u16>) -> io::Result<u16> {
    // Below the kernel's ephemeral range: a port from that range may be
    // taken by any outgoing connection (our own HTTP polling included)
    // while an agent is down, and its restart would then fail.
    let (low, high) = (20_000u16, ephemeral_low().saturating_sub(3).max(20_100));
    for _ in 0..500 {
        let p = rand::random_range(low..high);
        if (p..=p + 2).any(|q| taken.contains(&q)) {
            continue;
        }
        let gossip = UdpSocket::bind(("127.0.0.1", p));
        let rpc = UdpSocket::bind(("127.0.0.1", p + 1));
        let http = TcpListener::bind(("127.0.0.1", p + 2));
        if gossip.is_ok() && rpc.is_ok() && http.is_ok() {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port triple found",
    ))
}

/// The lowest port of the kernel's ephemeral range (32768 if unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// One agent's fixed identity.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Node id.
    pub id: u64,
    /// Gossip address.
    pub gossip: SocketAddr,
    /// RPC address (gossip port + 1).
    pub rpc: SocketAddr,
    /// HTTP address (gossip port + 2).
    pub http: SocketAddr,
}

/// A set of agents on loopback forming one cluster.
pub struct Agents {
    bin: PathBuf,
    log_dir: PathBuf,
    specs: BTreeMap<u64, Spec>,
    children: BTreeMap<u64, Child>,
    voters: String,
    seeds: Vec<SocketAddr>,
    /// Extra flags given to every agent.
    pub extra_args: Vec<String>,
    /// When set, agent `id` runs with `--data-dir <root>/node-<id>`.
    pub data_root: Option<PathBuf>,
    /// Agents started at least once: their first start gets
    /// `--bootstrap` (a new cluster), restarts do not (E7).
    started: HashSet<u64>,
    /// Per agent, a command its start goes through (`ip netns exec …`).
    prefixes: BTreeMap<u64, Vec<String>>,
}

impl Agents {
    /// Plans `n` agents with ids `1..=n` (not started). Voters are the
    /// first `min(n, 5)` ids; everyone seeds from the first three.
    pub fn new(bin: &Path, n: u64, log_dir: &Path) -> io::Result<Agents> {
        let mut taken = HashSet::new();
        let mut ports = Vec::new();
        for _ in 1..=n {
            let port = free_gossip_port(&taken)?;
            taken.extend([port, port + 1, port + 2]);
            ports.push((IpAddr::from([127, 0, 0, 1]), port));
        }
        Self::plan(bin, &ports, log_dir)
    }

    /// As [`Agents::new`], agent `i` at `hosts[i - 1]` (gossip on `port`,
    /// RPC and HTTP on the two above), started through `prefixes[i - 1]`
    /// (a command that runs the rest in, say, a network namespace).
    pub fn at_hosts(
        bin: &Path,
        hosts: &[IpAddr],
        port: u16,
        prefixes: Vec<Vec<String>>,
        log_dir: &Path,
    ) -> io::Result<Agents> {
        let at: Vec<(IpAddr, u16)> = hosts.iter().map(|h| (*h, port)).collect();
        let mut a = Self::plan(bin, &at, log_dir)?;
        a.prefixes = (1..).zip(prefixes).collect();
        Ok(a)
    }

    fn plan(bin: &Path, at: &[(IpAddr, u16)], log_dir: &Path) -> io::Result<Agents> {
        std::fs::create_dir_all(log_dir)?;
        let n = at.len() as u64;
        let mut specs = BTreeMap::new();
        for (id, &(host, port)) in (1..).zip(at) {
            specs.insert(
                id,
                Spec {
                    id,
                    gossip: SocketAddr::new(host, port),
                    rpc: SocketAddr::new(host, port + 1),
                    http: SocketAddr::new(host, port + 2),
                },
            );
        }
        let voters = (1..=n.min(5))
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let seeds = specs.values().take(3).map(|s| s.gossip).collect();
        Ok(Agents {
            bin: bin.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            specs,
            children: BTreeMap::new(),
            voters,
            seeds,
            extra_args: Vec::new(),
            data_root: None,
            started: HashSet::new(),
            prefixes: BTreeMap::new(),
        })
    }

    /// Makes the cluster closed: writes a new cluster secret into the log
    /// directory and passes it to every agent started from now on.
    /// Returns the key file and the secret.
    pub fn close_with_new_key(&mut self) -> Result<(PathBuf, crate::ClusterSecret), String> {
        let path = self.log_dir.join("cluster.key");
        let _ = std::fs::remove_file(&path);
        let secret = crate::ClusterSecret::generate().map_err(|e| e.to_string())?;
        secret.write_new(&path).map_err(|e| e.to_string())?;
        self.extra_args = vec!["--cluster-key".into(), path.display().to_string()];
        Ok((path, secret))
    }

    /// Starts `n` keyed agents whose voters keep data directories (below
    /// `dir`, with the logs), and waits up to `within` until every agent
    /// sees every other, all agree on a leader and no voter is still
    /// recovering (a voter stopped before it recovered has left nothing
    /// in its data directory, and comes back as one without memory).
    pub fn start_led(bin: &Path, n: u64, dir: &Path, within: Duration) -> Result<Agents, String> {
        let a = Agents::new(bin, n, dir).map_err(|e| e.to_string())?;
        Self::led(a, dir, within)
    }

    /// As [`Agents::start_led`], for agents planned already.
    pub fn led(mut a: Agents, dir: &Path, within: Duration) -> Result<Agents, String> {
        a.close_with_new_key()?;
        a.data_root = Some(dir.join("data"));
        a.start_all().map_err(|e| e.to_string())?;
        let all = a.ids();
        if a.wait_until(within, |a| {
            a.all_see(&all) && a.agreed_leader().is_some() && a.none_recovering()
        })
        .is_none()
        {
            // The directory goes with the caller's temporary one: say here
            // what each agent saw and logged.
            return Err(format!(
                "no agreed leader within {within:?}; logs in {}\n{}",
                dir.display(),
                a.report()
            ));
        }
        Ok(a)
    }

    /// For a failure's message: per agent, whether it runs, what it
    /// reports of the leader and its members, and its log's last lines.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let running = self.children.contains_key(&id);
            let status = self.status(id).map_or("no status".to_string(), |s| {
                format!("leader {} members {}", s["leader"], s["members"])
            });
            let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n    ");
            out.push_str(&format!(
                "agent {id} (running: {running}): {status}\n    {tail}\n"
            ));
        }
        out
    }

    /// Ids of all planned agents.
    pub fn ids(&self) -> Vec<u64> {
        self.specs.keys().copied().collect()
    }

    /// Ids of agents whose process is running.
    pub fn running(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    /// An agent's identity.
    pub fn spec(&self, id: u64) -> &Spec {
        &self.specs[&id]
    }

    /// An agent's log file.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.log_dir.join(format!("node-{id}.log"))
    }

    /// An agent's process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    /// Starts agent `id` (again, after a kill: a new generation). Its
    /// first start is a new cluster's (`--bootstrap`), later ones are
    /// restarts.
    pub fn start(&mut self, id: u64) -> io::Result<()> {
        let spec = self.specs[&id].clone();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let mut cmd = match self.prefixes.get(&id).and_then(|p| p.split_first()) {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("agent")
            .args(["--id", &id.to_string()])
            .args(["--gossip", &spec.gossip.to_string()])
            .args(["--voters", &self.voters]);
        for seed in &self.seeds {
            cmd.args(["--seed", &seed.to_string()]);
        }
        if let Some(root) = &self.data_root {
            cmd.arg("--data-dir").arg(root.join(format!("node-{id}")));
        }
        if self.started.insert(id) {
            cmd.arg("--bootstrap");
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Starts every planned agent.
    pub fn start_all(&mut self) -> io::Result<()> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    /// Sends `signal` to agent `id`'s process.
    pub fn signal(&self, id: u64, signal: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: plain syscall on a child we spawned and have not
            // reaped, so the pid cannot have been reused.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// `kill -9` agent `id` and reap it.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM agent `id` and wait up to `within` for it to exit (then
    /// SIGKILL). Returns its exit status if it exited by itself.
    pub fn terminate(&mut self, id: u64, within: Duration) -> Option<ExitStatus> {
        self.signal(id, libc::SIGTERM);
        let mut child = self.children.remove(&id)?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// An agent's `/v1/status`, or `None` if it does not answer.
    pub fn status(&self, id: u64) -> Option<Value> {
        get_json(self.specs[&id].http, "/v1/status", STATUS_TIMEOUT).ok()
    }

    /// Ids that agent `id` reports alive, or `None` if it does not answer.
    pub fn alive_seen_by(&self, id: u64) -> Option<Vec<u64>> {
        let status = self.status(id)?;
        Some(
            status["members"]
                .as_array()?
                .iter()
                .filter(|m| m["state"] == "alive")
                .filter_map(|m| m["id"].as_u64())
                .collect(),
        )
    }

    /// The leader agent `id` reports, with its epoch, if it reports one
    /// with a quorum.
    pub fn leader_seen_by(&self, id: u64) -> Option<(u64, u64)> {
        let status = self.status(id)?;
        if status["quorum"] != true {
            return None;
        }
        Some((
            status["leader"]["id"].as_u64()?,
            status["leader"]["epoch"].as_u64()?,
        ))
    }

    /// The leader every running agent reports with a quorum, if they all
    /// report the same one.
    pub fn agreed_leader(&self) -> Option<(u64, u64)> {
        let mut seen = self.running().into_iter().map(|id| self.leader_seen_by(id));
        let first = seen.next()??;
        seen.all(|s| s == Some(first)).then_some(first)
    }

    /// Polls `condition` until it holds (returns the time taken) or
    /// `within` passes (returns `None`).
    pub fn wait_until(
        &self,
        within: Duration,
        mut condition: impl FnMut(&Agents) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if condition(self) {
                return Some(start.elapsed());
            }
            if start.elapsed() >= within {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// True when every running agent answers and reports it is not
    /// recovering (`/v1/status` `recovering`).
    pub fn none_recovering(&self) -> bool {
        self.running()
            .iter()
            .all(|id| self.status(*id).is_some_and(|s| s["recovering"] == false))
    }

    /// True when every running agent reports exactly `expected` alive.
    pub fn all_see(&self, expected: &[u64]) -> bool {
        self.running()
            .iter()
            .all(|id| self.alive_seen_by(*id).as_deref() == Some(expected))
    }

    /// SIGTERM every agent, wait for each, SIGKILL stragglers. Returns the
    /// ids that did not exit 0 by themselves.
    pub fn stop_all(&mut self, within: Duration) -> Vec<u64> {
        for id in self.running() {
            self.signal(id, libc::SIGTERM);
        }
        let mut failed = Vec::new();
        for id in self.running() {
            match self.terminate(id, within) {
                Some(status) if status.success() => {}
                _ => failed.push(id),
            }
        }
        failed
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for id in self.running() {
            self.kill9(id);
        }
    }
}

/// Makes the child of `cmd` die (SIGKILL) if this process dies first, so a
/// crashed demo, benchmark or test leaves no orphan behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Resident set size of a process in KiB (from /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Context switches of every thread of a process so far (voluntary and
/// not), from /proc: how often it was woken or preempted.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // a thread that ended meanwhile
        };
        total += status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// CPU time (user + system) a process has used, from /proc.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after
    // the last ')'; utime and stime are fields 14 and 15 overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}
