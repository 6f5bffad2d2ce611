//! `meshd status`: the cluster as one agent sees it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

/// Flags of `meshd status`.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The agent's HTTP address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7402")]
    http: SocketAddr,
    /// File holding the agent's HTTP bearer token (its
    /// `--http-token-file`).
    #[arg(long, value_name = "FILE")]
    http_token_file: Option<std::path::PathBuf>,
    /// Print `/v1/status` as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: StatusArgs) -> ExitCode {
    if let Some(path) = &args.http_token_file
        && let Err(err) = coordmesh::harness::http::use_bearer_token_file(path)
    {
        eprintln!("meshd: {err}");
        return ExitCode::from(2);
    }
    let status =
        match coordmesh::harness::http::get_json(args.http, "/v1/status", Duration::from_secs(3)) {
            Ok(v) => v,
            Err(err) => {
                eprintln!("meshd: cannot read status from {}: {err}", args.http);
                return ExitCode::from(1);
            }
        };
    if args.json {
        println!("{status}");
    } else {
        print!("{}", render(&status));
    }
    ExitCode::SUCCESS
}

/// The human-readable table.
fn render(s: &Value) -> String {
    let leader = match &s["leader"] {
        Value::Object(l) => format!("{} (epoch {})", l["id"], l["epoch"]),
        _ => "none known".to_string(),
    };
    let mut out = format!(
        "node {} | leader: {} | quorum: {}\n",
        s["node_id"],
        leader,
        if s["quorum"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    );
    out.push_str(&format!(
        "{:>6}  {:<6}  {:<5}  {:<21}  {:<21}  {:<21}\n",
        "ID", "STATE", "VOTER", "GOSSIP", "RPC", "HTTP"
    ));
    for m in s["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let state = if m["left"].as_bool() == Some(true) {
            "left"
        } else {
            m["state"].as_str().unwrap_or("?")
        };
        out.push_str(&format!(
            "{:>6}  {:<6}  {:<5}  {:<21}  {:<21}  {:<21}\n",
            m["id"],
            state,
            if m["voter"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            m["gossip_addr"].as_str().unwrap_or("?"),
            m["rpc_addr"].as_str().unwrap_or("?"),
            m["http_addr"].as_str().unwrap_or("?"),
        ));
    }
    out
}
