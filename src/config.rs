//! One node's configuration: what it is called, where it listens, whom it
//! joins, and the protocol timings. Built from a TOML file and command-line
//! flags (flags win), then validated as a whole before anything starts, so
//! a bad value is reported by name and nothing is half-started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::election::{Timing, TimingError};
use crate::ids::NodeId;
use crate::secret::{ClusterSecret, SecretError};

/// Default gossip address, as in the CLI contract.
pub const DEFAULT_GOSSIP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7400);
/// Default cluster name: nodes gossip only with nodes of the same name.
pub const DEFAULT_CLUSTER: &str = "coordmesh";
/// Gossip round interval on a LAN.
pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 100;
/// Phi-accrual threshold; with 100 ms gossip a crash is seen in about 1 s.
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;
/// How long a leaving node keeps gossiping its `leaving` mark before it
/// stops, so that peers learn of the leave instead of timing it out.
pub const DEFAULT_LEAVE_MS: u64 = 400;
/// Bounds on the gossip interval: below 10 ms gossip costs more than it
/// tells; above 10 s failure detection is too slow to lead anything.
pub const GOSSIP_INTERVAL_MS_MIN: u64 = 10;
/// See [`GOSSIP_INTERVAL_MS_MIN`].
pub const GOSSIP_INTERVAL_MS_MAX: u64 = 10_000;
/// Bound on the number of voters: quorum traffic grows with it, and
/// DESIGN.md plans for 3 or 5.
pub const VOTERS_MAX: usize = 15;
/// Bound on seeds: each is contacted on every round that needs a seed.
pub const SEEDS_MAX: usize = 64;
/// Bound on the cluster name (it travels in every gossip datagram).
pub const CLUSTER_NAME_BYTES_MAX: usize = 64;

/// A validated node configuration. Build it with [`ConfigBuilder`] (or
/// [`Config::new`] for the common embedded case); every instance has passed
/// [`ConfigBuilder::build`]'s checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Cluster name; nodes with another name are refused by gossip.
    pub cluster: String,
    /// UDP address gossip binds and advertises.
    pub gossip_addr: SocketAddr,
    /// UDP address of QUIC RPC (advertised to peers).
    pub rpc_addr: SocketAddr,
    /// TCP address of the agent HTTP API (advertised to peers).
    pub http_addr: SocketAddr,
    /// Gossip addresses of peers to join through (`host:port`).
    pub seeds: Vec<String>,
    /// The voter set, sorted and without duplicates.
    pub voters: Vec<NodeId>,
    /// Directory for durable state; `None` keeps state in memory.
    pub data_dir: Option<PathBuf>,
    /// File holding the cluster secret; `None` is an open cluster.
    pub cluster_key: Option<PathBuf>,
    /// The cluster secret, loaded from `cluster_key` by
    /// [`ConfigBuilder::build`] (embedders may set it directly). `None`
    /// runs an open cluster.
    #[serde(skip)]
    pub cluster_secret: Option<ClusterSecret>,
    /// File holding the bearer token the HTTP API requires; `None`: the
    /// API is open to whoever reaches its address.
    pub http_token_file: Option<PathBuf>,
    /// The bearer token, loaded from `http_token_file` by
    /// [`ConfigBuilder::build`] (embedders may set it directly).
    #[serde(skip)]
    pub http_token: Option<HttpToken>,
    /// Gossip round interval.
    pub gossip_interval: Duration,
    /// Phi-accrual failure detector threshold.
    pub phi_threshold: f64,
    /// How long a graceful leave keeps gossiping before it stops.
    pub leave_duration: Duration,
    /// Compress gossip digests (chitchat wire format V1): about 5x fewer
    /// bytes at 100 nodes, more CPU per message. Every node of a cluster
    /// should use the same setting.
    pub gossip_compression: bool,
    /// Election timing (heartbeat, lease, election timeout, drift bound,
    /// stability window, longest lock TTL), validated.
    pub election: Timing,
    /// Clients queued per lock (`lock-waiters-max`).
    pub lock_waiters_max: usize,
    /// Idempotency keys the leader keeps at once, claims in progress and
    /// unexpired records together (`idempotency-records-max`); at the
    /// bound a begin of a new key fails (`StoreFull`), and nothing
    /// unexpired is evicted (I6).
    pub idempotency_records_max: usize,
    /// This is the first start of a new cluster (`--bootstrap`): if a
    /// majority of voters recover together with no memory (no data
    /// directories), they form the cluster without waiting out the
    /// longest lock TTL (E7). Leave it off when restarting an existing
    /// cluster: there, a lease granted before the restart may still run.
    pub bootstrap: bool,
}

impl Config {
    /// A single-node configuration listening on `gossip_addr` (RPC and HTTP
    /// on the two ports after it), started as a new cluster: a lone node
    /// whose lock holders live in its own process (they die with it, so
    /// no earlier lease can outlive a restart). Use [`ConfigBuilder`] for
    /// anything more.
    pub fn new(id: u64, gossip_addr: SocketAddr) -> Result<Config, ConfigError> {
        ConfigBuilder {
            id: Some(NodeId(id)),
            gossip: Some(gossip_addr),
            bootstrap: Some(true),
            ..ConfigBuilder::default()
        }
        .build()
    }

    /// True when this node belongs to the voter set.
    pub fn is_voter(&self) -> bool {
        self.voters.binary_search(&self.id).is_ok()
    }
}

/// The bearer token an agent's HTTP API requires (`--http-token-file`):
/// 16 to 4,096 visible ASCII characters, read from a file with
/// surrounding whitespace trimmed (`meshd keygen` writes a suitable one).
/// Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpToken(String);

impl HttpToken {
    /// Fewer characters are refused as too easy to guess.
    pub const MIN_CHARS: usize = 16;
    /// More are refused: a header line has to carry it.
    pub const MAX_CHARS: usize = 4096;

    /// Checks a token's text.
    pub fn new(text: &str) -> Result<HttpToken, String> {
        let text = text.trim();
        if text.len() < Self::MIN_CHARS {
            return Err(format!(
                "the token has {} characters, fewer than {}",
                text.len(),
                Self::MIN_CHARS
            ));
        }
        if text.len() > Self::MAX_CHARS {
            return Err(format!(
                "the token has more than {} characters",
                Self::MAX_CHARS
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII without spaces".into());
        }
        Ok(HttpToken(text.to_owned()))
    }

    /// Reads and checks the token in `path`.
    pub fn load(path: &std::path::Path) -> Result<HttpToken, ConfigError> {
        let failed = |reason: String| ConfigError::HttpToken {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        HttpToken::new(&text).map_err(failed)
    }

    /// The token's text, as a client sends it after `Bearer `.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpToken(..)")
    }
}

/// The raw, optional form of a configuration: what a TOML file or the
/// command line says. Keys are the CLI flag names (`data-dir`, `seed`, …);
/// snake_case spellings are accepted too.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigBuilder {
    /// `--id`.
    pub id: Option<NodeId>,
    /// `--cluster`.
    pub cluster: Option<String>,
    /// `--gossip`.
    pub gossip: Option<SocketAddr>,
    /// `--rpc`.
    pub rpc: Option<SocketAddr>,
    /// `--http`.
    pub http: Option<SocketAddr>,
    /// `--seed` (repeatable); `seeds` in a file is accepted as well.
    #[serde(alias = "seeds")]
    pub seed: Option<Vec<String>>,
    /// `--voters`.
    pub voters: Option<Vec<NodeId>>,
    /// `--data-dir`.
    #[serde(alias = "data_dir")]
    pub data_dir: Option<PathBuf>,
    /// `--cluster-key`.
    #[serde(alias = "cluster_key")]
    pub cluster_key: Option<PathBuf>,
    /// `--http-token-file`.
    #[serde(alias = "http_token_file")]
    pub http_token_file: Option<PathBuf>,
    /// `--gossip-interval-ms`.
    #[serde(alias = "gossip_interval_ms")]
    pub gossip_interval_ms: Option<u64>,
    /// `--phi-threshold`.
    #[serde(alias = "phi_threshold")]
    pub phi_threshold: Option<f64>,
    /// `--leave-ms`.
    #[serde(alias = "leave_ms")]
    pub leave_ms: Option<u64>,
    /// `--gossip-compression`.
    #[serde(alias = "gossip_compression")]
    pub gossip_compression: Option<bool>,
    /// `--heartbeat-ms`: leader heartbeat interval.
    #[serde(alias = "heartbeat_ms")]
    pub heartbeat_ms: Option<u64>,
    /// `--lease-ms`: the leader lease.
    #[serde(alias = "lease_ms")]
    pub lease_ms: Option<u64>,
    /// `--election-timeout-ms`: how long without a leader before running.
    #[serde(alias = "election_timeout_ms")]
    pub election_timeout_ms: Option<u64>,
    /// `drift` (file only): bound on the clock drift rate, e.g. 0.01.
    pub drift: Option<f64>,
    /// `stability-window-ms` (file only): how long a returning lower id
    /// must stay eligible before the leader hands over to it.
    #[serde(alias = "stability_window_ms")]
    pub stability_window_ms: Option<u64>,
    /// `lock-ttl-max-ms` (file only): the longest lock TTL this cluster
    /// grants (at most the contract's 3,600,000). Voters restarted all
    /// together without data directories wait this long before forming a
    /// cluster anew (E7).
    #[serde(alias = "lock_ttl_max_ms")]
    pub lock_ttl_max_ms: Option<u64>,
    /// `lock-waiters-max` (file only): clients queued per lock; one more
    /// is refused with `QueueFull`.
    #[serde(alias = "lock_waiters_max")]
    pub lock_waiters_max: Option<usize>,
    /// `idempotency-records-max` (file only): see
    /// [`Config::idempotency_records_max`].
    #[serde(alias = "idempotency_records_max")]
    pub idempotency_records_max: Option<usize>,
    /// `--bootstrap`: the first start of a new cluster (see
    /// [`Config::bootstrap`]).
    pub bootstrap: Option<bool>,
}

impl ConfigBuilder {
    /// Reads a TOML file with the same keys as the CLI flags.
    pub fn from_toml_file(path: &Path) -> Result<ConfigBuilder, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text with the same keys as the CLI flags.
    pub fn from_toml_str(text: &str) -> Result<ConfigBuilder, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.message().to_string(),
        })
    }

    /// Every field set in `over` replaces the one in `self`.
    pub fn overlay(self, over: ConfigBuilder) -> ConfigBuilder {
        ConfigBuilder {
            id: over.id.or(self.id),
            cluster: over.cluster.or(self.cluster),
            gossip: over.gossip.or(self.gossip),
            rpc: over.rpc.or(self.rpc),
            http: over.http.or(self.http),
            seed: over.seed.or(self.seed),
            voters: over.voters.or(self.voters),
            data_dir: over.data_dir.or(self.data_dir),
            cluster_key: over.cluster_key.or(self.cluster_key),
            http_token_file: over.http_token_file.or(self.http_token_file),
            gossip_interval_ms: over.gossip_interval_ms.or(self.gossip_interval_ms),
            phi_threshold: over.phi_threshold.or(self.phi_threshold),
            leave_ms: over.leave_ms.or(self.leave_ms),
            gossip_compression: over.gossip_compression.or(self.gossip_compression),
            heartbeat_ms: over.heartbeat_ms.or(self.heartbeat_ms),
            lease_ms: over.lease_ms.or(self.lease_ms),
            election_timeout_ms: over.election_timeout_ms.or(self.election_timeout_ms),
            drift: over.drift.or(self.drift),
            stability_window_ms: over.stability_window_ms.or(self.stability_window_ms),
            lock_ttl_max_ms: over.lock_ttl_max_ms.or(self.lock_ttl_max_ms),
            lock_waiters_max: over.lock_waiters_max.or(self.lock_waiters_max),
            idempotency_records_max: over
                .idempotency_records_max
                .or(self.idempotency_records_max),
            bootstrap: over.bootstrap.or(self.bootstrap),
        }
    }

    /// Checks everything and fills defaults.
    pub fn build(self) -> Result<Config, ConfigError> {
        let id = self.id.ok_or(ConfigError::MissingId)?;
        if id == NodeId::REMOTE_CLIENT {
            return Err(ConfigError::ReservedNodeId(id));
        }
        let cluster = self.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
        if cluster.is_empty() || cluster.len() > CLUSTER_NAME_BYTES_MAX {
            return Err(ConfigError::InvalidCluster(cluster));
        }
        let gossip_addr = self.gossip.unwrap_or(DEFAULT_GOSSIP_ADDR);
        // The gossip address is also what peers are told to dial.
        if gossip_addr.ip().is_unspecified() {
            return Err(ConfigError::UnspecifiedGossip(gossip_addr));
        }
        let rpc_addr = match self.rpc {
            Some(addr) => addr,
            None => port_after(gossip_addr, 1)?,
        };
        let http_addr = match self.http {
            Some(addr) => addr,
            None => port_after(gossip_addr, 2)?,
        };
        if rpc_addr == gossip_addr && rpc_addr.port() != 0 {
            return Err(ConfigError::AddressClash {
                what: "--rpc",
                addr: rpc_addr,
            });
        }
        let seeds = self.seed.unwrap_or_default();
        if seeds.len() > SEEDS_MAX {
            return Err(ConfigError::TooManySeeds(seeds.len()));
        }
        for seed in &seeds {
            check_seed(seed)?;
        }
        let voters = match self.voters {
            Some(voters) => voters,
            None if seeds.is_empty() => vec![id],
            None => return Err(ConfigError::VotersRequired),
        };
        if voters.is_empty() {
            return Err(ConfigError::NoVoters);
        }
        if voters.len() > VOTERS_MAX {
            return Err(ConfigError::TooManyVoters(voters.len()));
        }
        let mut sorted = voters.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateVoter(pair[0]));
        }
        if voters.contains(&NodeId::REMOTE_CLIENT) {
            return Err(ConfigError::ReservedNodeId(NodeId::REMOTE_CLIENT));
        }
        let gossip_interval_ms = self
            .gossip_interval_ms
            .unwrap_or(DEFAULT_GOSSIP_INTERVAL_MS);
        if !(GOSSIP_INTERVAL_MS_MIN..=GOSSIP_INTERVAL_MS_MAX).contains(&gossip_interval_ms) {
            return Err(ConfigError::InvalidGossipInterval(gossip_interval_ms));
        }
        let phi_threshold = self.phi_threshold.unwrap_or(DEFAULT_PHI_THRESHOLD);
        // Below 2 a single late datagram declares a node dead; above 64 a
        // crash goes unnoticed for minutes.
        if !(2.0..=64.0).contains(&phi_threshold) {
            return Err(ConfigError::InvalidPhiThreshold(phi_threshold));
        }
        // Loaded now, so a bad key file is a config error and nothing starts.
        let cluster_secret = match &self.cluster_key {
            Some(path) => Some(ClusterSecret::load(path).map_err(ConfigError::ClusterKey)?),
            None => None,
        };
        let http_token = match &self.http_token_file {
            Some(path) => Some(HttpToken::load(path)?),
            None => None,
        };
        let leave_ms = self.leave_ms.unwrap_or(DEFAULT_LEAVE_MS);
        if leave_ms > 10_000 {
            return Err(ConfigError::InvalidLeave(leave_ms));
        }
        let defaults = Timing::default();
        let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
        let election = Timing {
            heartbeat: ms(self.heartbeat_ms, defaults.heartbeat),
            lease: ms(self.lease_ms, defaults.lease),
            election_timeout: ms(self.election_timeout_ms, defaults.election_timeout),
            drift: self.drift.unwrap_or(defaults.drift),
            stability_window: ms(self.stability_window_ms, defaults.stability_window),
            lock_ttl_max: ms(self.lock_ttl_max_ms, defaults.lock_ttl_max),
        };
        let ttl_max_ms = election.lock_ttl_max.as_millis() as u64;
        if !(100..=3_600_000).contains(&ttl_max_ms) {
            return Err(ConfigError::InvalidLockTtlMax(ttl_max_ms));
        }
        let lock_waiters_max = self.lock_waiters_max.unwrap_or(1024);
        if !(1..=1_000_000).contains(&lock_waiters_max) {
            return Err(ConfigError::InvalidLockWaiters(lock_waiters_max));
        }
        let idempotency_records_max = self.idempotency_records_max.unwrap_or(1_000_000);
        if !(1..=100_000_000).contains(&idempotency_records_max) {
            return Err(ConfigError::InvalidRecordsMax(idempotency_records_max));
        }
        election.validate().map_err(ConfigError::Election)?;
        Ok(Config {
            id,
            cluster,
            gossip_addr,
            rpc_addr,
            http_addr,
            seeds,
            voters: sorted,
            data_dir: self.data_dir,
            cluster_key: self.cluster_key,
            cluster_secret,
            http_token_file: self.http_token_file,
            http_token,
            gossip_interval: Duration::from_millis(gossip_interval_ms),
            phi_threshold,
            leave_duration: Duration::from_millis(leave_ms),
            gossip_compression: self.gossip_compression.unwrap_or(false),
            election,
            lock_waiters_max,
            idempotency_records_max,
            bootstrap: self.bootstrap.unwrap_or(false),
        })
    }
}

/// Parses a comma-separated voter list (`1,2,3`).
pub fn parse_voters(list: &str) -> Result<Vec<NodeId>, ConfigError> {
    list.split(',')
        .map(|part| {
            part.parse::<NodeId>()
                .map_err(|_| ConfigError::InvalidNodeId(part.to_string()))
        })
        .collect()
}

fn port_after(addr: SocketAddr, offset: u16) -> Result<SocketAddr, ConfigError> {
    // Port 0 (any free port) stays 0 for each listener; the node then
    // advertises the ports it was given.
    if addr.port() == 0 {
        return Ok(addr);
    }
    let port = addr
        .port()
        .checked_add(offset)
        .ok_or(ConfigError::NoPortAfter(addr))?;
    Ok(SocketAddr::new(addr.ip(), port))
}

fn check_seed(seed: &str) -> Result<(), ConfigError> {
    if seed.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    // A host name is allowed (gossip resolves it each round), but it must
    // carry a valid port.
    let bad = || ConfigError::InvalidSeed(seed.to_string());
    let (host, port) = seed.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad());
    }
    port.parse::<u16>().map_err(|_| bad())?;
    Ok(())
}

/// Why a configuration was refused. Every variant names the bad value;
/// the fix is to change that value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `lock-ttl-max-ms` outside the contract's TTL range.
    #[error("lock-ttl-max-ms must be within 100 and 3600000, got {0}")]
    InvalidLockTtlMax(u64),
    /// `lock-waiters-max` of zero or absurdly large.
    #[error("lock-waiters-max must be within 1 and 1000000, got {0}")]
    InvalidLockWaiters(usize),
    /// `idempotency-records-max` of zero or absurdly large.
    #[error("idempotency-records-max must be within 1 and 100000000, got {0}")]
    InvalidRecordsMax(usize),
    /// No `--id` (or `id` in the file) was given.
    #[error("--id is required")]
    MissingId,
    /// An id that is not an unsigned 64-bit integer.
    #[error("invalid node id {0:?}: expected an unsigned integer")]
    InvalidNodeId(String),
    /// The cluster name is empty or too long.
    #[error("invalid cluster name {0:?}: expected 1-{CLUSTER_NAME_BYTES_MAX} bytes")]
    InvalidCluster(String),
    /// The gossip address is advertised to peers, so it must be one they
    /// can dial, not a wildcard.
    #[error("gossip address {0} is a wildcard; give the address peers should dial")]
    UnspecifiedGossip(SocketAddr),
    /// `--rpc`/`--http` default to the gossip port plus 1 and 2.
    #[error(
        "gossip address {0} leaves no room for the default rpc/http ports; give --rpc and --http"
    )]
    NoPortAfter(SocketAddr),
    /// Two listeners on one UDP address.
    #[error("{what} address {addr} is the gossip address")]
    AddressClash {
        /// The flag whose value clashes.
        what: &'static str,
        /// The clashing address.
        addr: SocketAddr,
    },
    /// A seed that is neither `ip:port` nor `host:port`.
    #[error("invalid seed address {0:?}: expected host:port")]
    InvalidSeed(String),
    /// More seeds than [`SEEDS_MAX`].
    #[error("too many seeds ({0}); at most {SEEDS_MAX}")]
    TooManySeeds(usize),
    /// Joining a cluster needs the voter set, so every node agrees on it.
    #[error("--voters is required when --seed is given")]
    VotersRequired,
    /// An empty voter list.
    #[error("--voters must name at least one node")]
    NoVoters,
    /// More voters than [`VOTERS_MAX`].
    #[error("too many voters ({0}); at most {VOTERS_MAX}")]
    TooManyVoters(usize),
    /// The same id twice in the voter set.
    #[error("duplicate id {0} in voters")]
    DuplicateVoter(NodeId),
    /// The id remote clients use (2^64 − 1); no node may have it.
    #[error("node id {0} is reserved for remote clients")]
    ReservedNodeId(NodeId),
    /// Gossip interval outside its bounds.
    #[error(
        "invalid gossip interval {0} ms: expected {GOSSIP_INTERVAL_MS_MIN}-{GOSSIP_INTERVAL_MS_MAX}"
    )]
    InvalidGossipInterval(u64),
    /// Phi threshold outside its bounds.
    #[error("invalid phi threshold {0}: expected 2-64")]
    InvalidPhiThreshold(f64),
    /// Leave duration over 10 s.
    #[error("invalid leave duration {0} ms: expected at most 10000")]
    InvalidLeave(u64),
    /// Election timing that breaks a relation the protocol relies on.
    #[error("invalid election timing: {0}")]
    Election(TimingError),
    /// The `--cluster-key` file is missing, unreadable or malformed.
    #[error("{0}")]
    ClusterKey(SecretError),
    /// The HTTP token file is unreadable or holds no usable token.
    #[error("http token file {}: {reason}", path.display())]
    HttpToken {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these keys.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's one-line explanation.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_clients_id_is_refused_for_a_node() {
        let as_id = ConfigBuilder {
            id: Some(NodeId::REMOTE_CLIENT),
            ..ConfigBuilder::default()
        };
        assert_eq!(
            as_id.build().unwrap_err().to_string(),
            "node id 18446744073709551615 is reserved for remote clients"
        );
        let as_voter = ConfigBuilder {
            id: Some(NodeId(1)),
            voters: Some(vec![NodeId(1), NodeId::REMOTE_CLIENT]),
            ..ConfigBuilder::default()
        };
        assert!(matches!(
            as_voter.build(),
            Err(ConfigError::ReservedNodeId(_))
        ));
    }

    fn base() -> ConfigBuilder {
        ConfigBuilder {
            id: Some(NodeId(1)),
            ..ConfigBuilder::default()
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = base().build().unwrap();
        assert_eq!(c.gossip_addr, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(c.rpc_addr, "127.0.0.1:7401".parse().unwrap());
        assert_eq!(c.http_addr, "127.0.0.1:7402".parse().unwrap());
        assert_eq!(c.voters, vec![NodeId(1)], "a lone node votes for itself");
        assert_eq!(c.gossip_interval, Duration::from_millis(100));
    }

    #[test]
    fn rpc_and_http_follow_the_gossip_port() {
        let c = ConfigBuilder {
            gossip: Some("127.0.0.1:9000".parse().unwrap()),
            ..base()
        }
        .build()
        .unwrap();
        assert_eq!(c.rpc_addr.port(), 9001);
        assert_eq!(c.http_addr.port(), 9002);
    }

    #[test]
    fn seeds_without_voters_are_refused() {
        let err = ConfigBuilder {
            seed: Some(vec!["127.0.0.1:7400".into()]),
            ..base()
        }
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::VotersRequired));
    }

    #[test]
    fn duplicate_voter_is_named() {
        let err = ConfigBuilder {
            voters: Some(vec![NodeId(1), NodeId(2), NodeId(1)]),
            ..base()
        }
        .build()
        .unwrap_err();
        assert_eq!(err.to_string(), "duplicate id 1 in voters");
    }

    #[test]
    fn malformed_seed_is_named() {
        for bad in ["localhost", "host:port", ":80", "a b:1", "x:70000"] {
            let err = ConfigBuilder {
                seed: Some(vec![bad.into()]),
                voters: Some(vec![NodeId(1)]),
                ..base()
            }
            .build()
            .unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        let ok = ConfigBuilder {
            seed: Some(vec!["node-1.local:7400".into(), "[::1]:7400".into()]),
            voters: Some(vec![NodeId(1)]),
            ..base()
        };
        ok.build().unwrap();
    }

    #[test]
    fn voter_list_parses_and_rejects_non_numbers() {
        assert_eq!(
            parse_voters("3,1,2").unwrap(),
            vec![NodeId(3), NodeId(1), NodeId(2)]
        );
        assert!(parse_voters("1,x").is_err());
        assert!(parse_voters("").is_err());
    }

    #[test]
    fn toml_uses_flag_names_and_flags_override() {
        let file = ConfigBuilder::from_toml_str(
            "id = 4\nseed = [\"127.0.0.1:7400\"]\nvoters = [1, 2, 3]\ndata-dir = \"/tmp/x\"\n",
        )
        .unwrap();
        let flags = ConfigBuilder {
            id: Some(NodeId(5)),
            ..ConfigBuilder::default()
        };
        let c = file.overlay(flags).build().unwrap();
        assert_eq!(c.id, NodeId(5));
        assert_eq!(c.voters.len(), 3);
        assert!(!c.is_voter());
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn unknown_toml_key_is_named() {
        let err = ConfigBuilder::from_toml_str("id = 1\nbogus = 2\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn cluster_key_is_loaded_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        let secret = ClusterSecret::generate().unwrap();
        secret.write_new(&good).unwrap();
        let c = ConfigBuilder {
            cluster_key: Some(good),
            ..base()
        }
        .build()
        .unwrap();
        assert_eq!(c.cluster_secret, Some(secret));

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not hex\n").unwrap();
        for path in [bad, dir.path().join("missing.key")] {
            let err = ConfigBuilder {
                cluster_key: Some(path.clone()),
                ..base()
            }
            .build()
            .unwrap_err();
            assert!(matches!(err, ConfigError::ClusterKey(_)), "{err}");
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        }
    }

    #[test]
    fn http_token_is_loaded_trimmed_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("token");
        std::fs::write(&good, "  0123456789abcdef-token\n").unwrap();
        let c = ConfigBuilder {
            http_token_file: Some(good),
            ..base()
        }
        .build()
        .unwrap();
        let token = c.http_token.expect("loaded");
        assert_eq!(token.expose(), "0123456789abcdef-token");
        assert_eq!(format!("{token:?}"), "HttpToken(..)", "never printed");

        let cases = [
            ("short", "0123456789abcde\n", "fewer than 16"),
            ("spaced", "0123456789 abcdef\n", "visible ASCII"),
            ("long", &"x".repeat(5000), "more than 4096"),
        ];
        for (name, text, needle) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = ConfigBuilder {
                http_token_file: Some(path.clone()),
                ..base()
            }
            .build()
            .unwrap_err();
            let said = err.to_string();
            assert!(said.contains(&*path.to_string_lossy()), "{said}");
            assert!(said.contains(needle), "{said}");
        }
        let missing = dir.path().join("missing");
        let err = ConfigBuilder {
            http_token_file: Some(missing.clone()),
            ..base()
        }
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::HttpToken { .. }), "{err}");
        assert!(err.to_string().contains(&*missing.to_string_lossy()));
    }

    #[test]
    fn election_timing_is_validated_with_a_clear_error() {
        let err = ConfigBuilder {
            lease_ms: Some(1000),
            election_timeout_ms: Some(500),
            ..base()
        }
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("election timeout 500 ms"), "{err}");
        let c = ConfigBuilder::from_toml_str(
            "id = 1\nlease-ms = 800\nelection-timeout-ms = 900\nheartbeat-ms = 200\n",
        )
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(c.election.lease, Duration::from_millis(800));
    }

    #[test]
    fn port_zero_means_any_port_for_every_listener() {
        let c = ConfigBuilder {
            gossip: Some("127.0.0.1:0".parse().unwrap()),
            ..base()
        }
        .build()
        .unwrap();
        assert_eq!(c.rpc_addr.port(), 0);
        assert_eq!(c.http_addr.port(), 0);
    }

    #[test]
    fn wildcard_gossip_address_is_refused() {
        for addr in ["0.0.0.0:7400", "[::]:7400"] {
            let err = ConfigBuilder {
                gossip: Some(addr.parse().unwrap()),
                ..base()
            }
            .build()
            .unwrap_err();
            assert!(matches!(err, ConfigError::UnspecifiedGossip(_)), "{addr}");
        }
    }

    #[test]
    fn no_port_after_the_last() {
        let err = ConfigBuilder {
            gossip: Some("127.0.0.1:65535".parse().unwrap()),
            ..base()
        }
        .build()
        .unwrap_err();
        assert!(matches!(err, ConfigError::NoPortAfter(_)));
    }
}
