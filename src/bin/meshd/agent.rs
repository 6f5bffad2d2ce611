//! `meshd agent`: one node, its HTTP API, and a graceful leave on
//! SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use coordmesh::config::parse_voters;
use coordmesh::{ConfigBuilder, Mesh, NodeId, StartError};

/// Flags of `meshd agent` (CONTRACT.md).
#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// Node id, unique in the cluster; lower id = preferred leader.
    #[arg(long, value_parser = parse_id)]
    id: Option<NodeId>,
    /// UDP address for gossip [default: 127.0.0.1:7400].
    #[arg(long, value_name = "ADDR")]
    gossip: Option<SocketAddr>,
    /// UDP address for QUIC RPC [default: gossip port + 1].
    #[arg(long, value_name = "ADDR")]
    rpc: Option<SocketAddr>,
    /// TCP address of the HTTP API [default: gossip port + 2].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Gossip address of a peer (repeatable).
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<String>,
    /// Comma-separated ids forming the quorum set.
    #[arg(long, value_name = "LIST", value_parser = parse_voter_list)]
    voters: Option<VoterList>,
    /// Directory for durable state.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Cluster secret file from `meshd keygen`.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// File holding the bearer token the HTTP API requires (16 or more
    /// visible characters; `meshd keygen` writes one). Without it the API
    /// is open to whoever reaches its address.
    #[arg(long, value_name = "FILE")]
    http_token_file: Option<PathBuf>,
    /// TOML file with the same keys (flags override).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cluster name; nodes gossip only within one name [default: coordmesh].
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Gossip round interval in ms [default: 100].
    #[arg(long, value_name = "MS")]
    gossip_interval_ms: Option<u64>,
    /// Compress gossip digests: fewer bytes in large clusters, more CPU.
    #[arg(long)]
    gossip_compression: bool,
    /// Leader heartbeat interval in ms [default: 100].
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// Leader lease in ms [default: 400].
    #[arg(long, value_name = "MS")]
    lease_ms: Option<u64>,
    /// Time without a leader before a node runs, in ms [default: 450].
    #[arg(long, value_name = "MS")]
    election_timeout_ms: Option<u64>,
    /// This is the first start of a new cluster: voters without data
    /// directories form it without waiting out the longest lock TTL. Do
    /// not give it when restarting an existing cluster.
    #[arg(long)]
    bootstrap: bool,
}

#[derive(Debug, Clone)]
struct VoterList(Vec<NodeId>);

fn parse_id(s: &str) -> Result<NodeId, String> {
    s.parse()
        .map_err(|e: coordmesh::ids::ParseIdError| e.to_string())
}

fn parse_voter_list(s: &str) -> Result<VoterList, String> {
    parse_voters(s).map(VoterList).map_err(|e| e.to_string())
}

pub(crate) fn run(args: AgentArgs) -> ExitCode {
    let config = match build_config(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("meshd: {err}");
            return ExitCode::from(2);
        }
    };
    crate::init_tracing("info");
    // One thread: the agent's work is small and bursty (a gossip round
    // every 100 ms), and a single thread saves the cross-thread wake-ups
    // that dominate an idle multi-threaded runtime.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("meshd: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshd: {err}");
            ExitCode::from(1)
        }
    }
}

fn build_config(args: AgentArgs) -> Result<coordmesh::Config, coordmesh::ConfigError> {
    let file = match &args.config {
        Some(path) => ConfigBuilder::from_toml_file(path)?,
        None => ConfigBuilder::default(),
    };
    let flags = ConfigBuilder {
        id: args.id,
        cluster: args.cluster,
        gossip: args.gossip,
        rpc: args.rpc,
        http: args.http,
        seed: (!args.seeds.is_empty()).then_some(args.seeds),
        voters: args.voters.map(|v| v.0),
        data_dir: args.data_dir,
        cluster_key: args.cluster_key,
        http_token_file: args.http_token_file,
        gossip_interval_ms: args.gossip_interval_ms,
        phi_threshold: None,
        leave_ms: None,
        gossip_compression: args.gossip_compression.then_some(true),
        heartbeat_ms: args.heartbeat_ms,
        lease_ms: args.lease_ms,
        election_timeout_ms: args.election_timeout_ms,
        drift: None,
        stability_window_ms: None,
        lock_ttl_max_ms: None,
        lock_waiters_max: None,
        idempotency_records_max: None,
        bootstrap: args.bootstrap.then_some(true),
    };
    file.overlay(flags).build()
}

async fn serve(config: coordmesh::Config) -> Result<(), StartError> {
    match &config.cluster_key {
        None => tracing::warn!(
            "no --cluster-key: this cluster is open to any process that can reach its ports"
        ),
        Some(path) => warn_if_readable_by_others(path, "the cluster key file"),
    }
    if let Some(warning) = open_api_warning(&config) {
        tracing::warn!(http_addr = %config.http_addr, "{warning}");
    }
    if let Some(path) = &config.http_token_file {
        warn_if_readable_by_others(path, "the HTTP token file");
    }
    if config.is_voter() && config.data_dir.is_none() {
        let wait_s = config.election.lock_ttl_max.as_secs_f64() * (1.0 + config.election.drift);
        if config.bootstrap {
            tracing::warn!(
                "voter without --data-dir, started with --bootstrap as a new cluster: it forms at once with the others; a later restart of a majority of voters without data dirs waits out the longest lock TTL before the cluster forms anew, and epochs and fencing tokens restart"
            );
        } else {
            tracing::warn!(
                wait_s = format!("{wait_s:.0}"),
                "voter without --data-dir: after a restart it copies the promised epoch and the lock table from a majority of voters before voting; if a majority of voters are restarting without data dirs (or this is a new cluster started without --bootstrap), they wait out the longest lock TTL (lock-ttl-max-ms, times 1 + drift) before forming the cluster anew, since a lease granted before may still run; epochs and fencing tokens then restart"
            );
        }
    }
    // Bind the HTTP listener first: if its address is taken, nothing else
    // has started yet.
    let http_addr = config.http_addr;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|e| StartError::from_bind("http", http_addr, e))?;
    let mesh = Mesh::start(config).await?;
    tracing::info!(%http_addr, "HTTP API listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coordmesh::http::serve(mesh.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    let signal = wait_for_signal().await;
    tracing::info!(signal, "stopping: leaving the cluster");
    mesh.shutdown().await;
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "HTTP server stopped with an error"),
        Err(err) => tracing::warn!(%err, "HTTP server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The warning an HTTP API reachable beyond loopback without a token
/// deserves.
fn open_api_warning(config: &coordmesh::Config) -> Option<&'static str> {
    (config.http_token.is_none() && !config.http_addr.ip().is_loopback()).then_some(
        "the HTTP API listens beyond loopback without --http-token-file: anyone who reaches it can take and release locks",
    )
}

/// A secret's file should be the owner's alone.
fn warn_if_readable_by_others(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode());
    if let Ok(mode) = mode
        && mode & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "{what} is readable by other users; chmod 600 it"
        );
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => {
            // Without signal handlers the default action (exit) applies;
            // wait forever rather than stop on our own.
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_beyond_loopback_without_a_token_is_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123").unwrap();
        let config = |http: &str, token: Option<PathBuf>| {
            ConfigBuilder {
                id: Some(NodeId(1)),
                gossip: Some("127.0.0.1:7400".parse().unwrap()),
                http: Some(http.parse().unwrap()),
                http_token_file: token,
                ..Default::default()
            }
            .build()
            .unwrap()
        };
        assert!(open_api_warning(&config("0.0.0.0:7402", None)).is_some());
        assert!(open_api_warning(&config("10.1.2.3:7402", None)).is_some());
        assert!(open_api_warning(&config("0.0.0.0:7402", Some(token))).is_none());
        assert!(open_api_warning(&config("127.0.0.1:7402", None)).is_none());
        assert!(open_api_warning(&config("[::1]:7402", None)).is_none());
    }
}
