//! What the agents say while the churn runs: each agent's `/v1/status`
//! polled every 100 ms from a thread of its own (a stopped agent stalls
//! only its own poller), and its `/metrics` byte counters every second.
//!
//! Owns: the polling and the samples. What they mean is `report`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::http::{get_json, get_text};

const STATUS_EVERY: Duration = Duration::from_millis(100);
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// What one agent said at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The leader it knows, with its epoch.
    pub leader: Option<(u64, u64)>,
    /// It leads with a valid lease, or heard one that does recently.
    pub quorum: bool,
    /// The members it reports alive.
    pub alive: Vec<u64>,
}

/// One poll of one agent.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the answer came, from the run's start.
    pub at: Duration,
    /// The agent asked.
    pub node: u64,
    /// Its answer (`None`: it did not answer in time).
    pub view: Option<View>,
}

/// Everything the pollers saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Status samples of every agent, in no particular order.
    pub samples: Vec<Sample>,
    /// Bytes each agent sent (gossip and RPC), summed over its lives.
    pub bytes_sent: Vec<(u64, u64)>,
}

/// The pollers, until [`Monitor::finish`].
pub struct Monitor {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(Vec<Sample>, u64, u64)>>,
}

impl Monitor {
    /// Starts a poller per agent (`(id, HTTP address)`), times counted
    /// from `t0`.
    pub fn start(agents: &[(u64, SocketAddr)], t0: Instant) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = agents
            .iter()
            .map(|&(node, http)| {
                let stop = stop.clone();
                std::thread::spawn(move || poll(node, http, t0, &stop))
            })
            .collect();
        Monitor { stop, threads }
    }

    /// Stops the pollers and returns what they saw.
    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = Seen::default();
        for t in self.threads {
            if let Ok((samples, node, bytes)) = t.join() {
                seen.samples.extend(samples);
                seen.bytes_sent.push((node, bytes));
            }
        }
        seen
    }
}

fn poll(node: u64, http: SocketAddr, t0: Instant, stop: &AtomicBool) -> (Vec<Sample>, u64, u64) {
    let mut samples = Vec::new();
    let mut bytes = Bytes::default();
    let mut next_metrics = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let view = get_json(http, "/v1/status", STATUS_TIMEOUT)
            .ok()
            .map(|s| View {
                leader: s["leader"]["id"]
                    .as_u64()
                    .zip(s["leader"]["epoch"].as_u64()),
                quorum: s["quorum"] == true,
                alive: s["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter(|m| m["state"] == "alive")
                            .filter_map(|m| m["id"].as_u64())
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        samples.push(Sample {
            at: t0.elapsed(),
            node,
            view,
        });
        if Instant::now() >= next_metrics {
            next_metrics = Instant::now() + METRICS_EVERY;
            if let Ok(text) = get_text(http, "/metrics", STATUS_TIMEOUT) {
                bytes.read(&text);
            }
        }
        std::thread::sleep(STATUS_EVERY.saturating_sub(asked.elapsed()));
    }
    (samples, node, bytes.total)
}

/// An agent's bytes sent, over restarts (its counters start again at
/// zero in each life).
#[derive(Default)]
struct Bytes {
    last: u64,
    total: u64,
}

impl Bytes {
    fn read(&mut self, metrics: &str) {
        let counter = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let now = counter("coordmesh_gossip_bytes_sent_total ")
            + counter("coordmesh_rpc_bytes_sent_total ");
        // A lower reading is a new life: all of it is new.
        self.total += if now >= self.last {
            now - self.last
        } else {
            now
        };
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_add_up_over_an_agents_lives() {
        let mut b = Bytes::default();
        let m = |g: u64, r: u64| {
            format!("coordmesh_gossip_bytes_sent_total {g}\ncoordmesh_rpc_bytes_sent_total {r}\n")
        };
        b.read(&m(100, 50));
        b.read(&m(200, 50));
        b.read(&m(10, 5)); // restarted
        b.read(&m(20, 5));
        assert_eq!(b.total, 150 + 100 + 15 + 10);
    }
}
