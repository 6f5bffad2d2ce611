//! Network namespaces for partitions between real processes: one
//! namespace per agent, each joined by a veth pair to a bridge in this
//! namespace, addresses of a private /24 of this run's own. The benchmark
//! (and its clients) reach every agent through the bridge; partitions cut
//! only traffic between agents, with blackhole routes inside the sender's
//! namespace (a cut is one way; both ways is two cuts), and delay is
//! `tc netem` on an agent's own interface.
//!
//! Needs root and iproute2 (`ip`, `tc`). Everything made is removed on
//! drop.
//!
//! Owns: the namespaces, links, routes and queueing disciplines.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// This run's namespaces and bridge.
pub struct Namespaces {
    tag: String,
    net: [u8; 3],
    nodes: u64,
    /// Cuts in force: (from, to).
    cuts: BTreeSet<(u64, u64)>,
    /// Nodes whose interface has a delay.
    delayed: BTreeSet<u64>,
}

/// Runs `ip`/`tc` with `args`; its error output on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// Why namespaces cannot be made here, if they cannot: not root, or
    /// no iproute2.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root".into());
        }
        for program in ["ip", "tc"] {
            let ok = Command::new(program)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Some(format!("no `{program}` (iproute2)"));
            }
        }
        None
    }

    /// Makes `nodes` namespaces (ids `1..=nodes`) and the bridge, after
    /// removing those of earlier runs whose process is gone (a run killed
    /// before it could remove its own).
    pub fn create(nodes: u64) -> Result<Namespaces, String> {
        if nodes > 250 {
            return Err("at most 250 namespaces".into());
        }
        sweep_stale();
        let pid = std::process::id();
        // A /24 of 10.0.0.0/8 picked by process id: runs in parallel (the
        // tests) get their own. Interface names stay within 15 bytes.
        let net = [10, 100 + (pid % 100) as u8, (pid / 100 % 250) as u8];
        let mut ns = Namespaces {
            tag: format!("cm{pid}"),
            net,
            nodes: 0,
            cuts: BTreeSet::new(),
            delayed: BTreeSet::new(),
        };
        let bridge = ns.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let gateway = format!("{}/24", ns.gateway());
        run("ip", &["addr", "add", &gateway, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for i in 1..=nodes {
            let (name, outside, inside) = (ns.name(i), ns.outside(i), ns.inside(i));
            run("ip", &["netns", "add", &name])?;
            ns.nodes = i;
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                ],
            )?;
            run("ip", &["link", "set", &inside, "netns", &name])?;
            run("ip", &["link", "set", &outside, "master", &bridge])?;
            run("ip", &["link", "set", &outside, "up"])?;
            let addr = format!("{}/24", ns.addr(i));
            run("ip", &["-n", &name, "addr", "add", &addr, "dev", &inside])?;
            run("ip", &["-n", &name, "link", "set", &inside, "up"])?;
            run("ip", &["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    fn name(&self, i: u64) -> String {
        format!("{}-{i}", self.tag)
    }

    fn outside(&self, i: u64) -> String {
        format!("{}v{i}", self.tag)
    }

    fn inside(&self, i: u64) -> String {
        format!("{}p{i}", self.tag)
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 254)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: u64) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            self.net[0],
            self.net[1],
            self.net[2],
            i as u8,
        ))
    }

    /// The command prefix that runs a program in node `i`'s namespace.
    pub fn prefix(&self, i: u64) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.name(i)]
    }

    /// Drops everything node `from` sends to node `to` (one way).
    pub fn cut(&mut self, from: u64, to: u64) -> Result<(), String> {
        if from == to || !self.cuts.insert((from, to)) {
            return Ok(());
        }
        let target = format!("{}/32", self.addr(to));
        run(
            "ip",
            &["-n", &self.name(from), "route", "add", "blackhole", &target],
        )
    }

    /// Cuts both ways between every node of `a` and every node of `b`.
    pub fn split(&mut self, a: &[u64], b: &[u64]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Delays everything node `i` sends by `delay`.
    pub fn delay(&mut self, i: u64, delay: Duration) -> Result<(), String> {
        let ms = format!("{}ms", delay.as_millis());
        run(
            "tc",
            &[
                "-n",
                &self.name(i),
                "qdisc",
                "add",
                "dev",
                &self.inside(i),
                "root",
                "netem",
                "delay",
                &ms,
            ],
        )?;
        self.delayed.insert(i);
        Ok(())
    }

    /// Removes every cut and delay.
    pub fn heal(&mut self) -> Result<(), String> {
        let mut first_error = None;
        for (from, to) in std::mem::take(&mut self.cuts) {
            let target = format!("{}/32", self.addr(to));
            if let Err(e) = run(
                "ip",
                &["-n", &self.name(from), "route", "del", "blackhole", &target],
            ) {
                first_error.get_or_insert(e);
            }
        }
        for i in std::mem::take(&mut self.delayed) {
            if let Err(e) = run(
                "tc",
                &[
                    "-n",
                    &self.name(i),
                    "qdisc",
                    "del",
                    "dev",
                    &self.inside(i),
                    "root",
                ],
            ) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Nodes made.
    pub fn nodes(&self) -> u64 {
        self.nodes
    }
}

/// Removes the namespaces and bridges of runs whose process has ended.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut gone = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some((tag, _)) = name.split_once('-') else {
            continue;
        };
        let Some(pid) = tag.strip_prefix("cm").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
            gone.insert(tag.to_string());
        }
    }
    for tag in gone {
        let _ = run("ip", &["link", "del", &format!("{tag}b")]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = run("ip", &["netns", "del", &self.name(i)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}
