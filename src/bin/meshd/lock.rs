//! `meshd lock NAME -- CMD`: runs a command while holding a lock through
//! the agent, renewing it; the command never outlives the lease.
//!
//! Exit status: the command's own (128 + signal if a signal ended it);
//! without running it, 1 if the agent could not be reached, 2 for bad
//! arguments, 3 if the lock was held for the whole wait, 4 if no leader
//! with a quorum answered; 5 if the lease was lost while the command ran
//! (it got SIGTERM before the lease's validity ended, SIGKILL at the end).

use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};

use crate::procs::post_json_status;

/// Flags of `meshd lock`.
#[derive(Args, Debug)]
pub(crate) struct LockArgs {
    /// The lock's name.
    name: String,
    /// The agent's HTTP address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7402")]
    http: SocketAddr,
    /// The lease's TTL in milliseconds; renewed every third of it.
    #[arg(long, value_name = "T", default_value_t = 10_000)]
    ttl_ms: u64,
    /// How long to wait for the lock, in milliseconds.
    #[arg(long, value_name = "W", default_value_t = 0)]
    wait_ms: u64,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// A signal this process received (SIGINT or SIGTERM), to pass on.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

fn path(name: &str, op: &str) -> String {
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    if op.is_empty() {
        format!("/v1/locks/{encoded}")
    } else {
        format!("/v1/locks/{encoded}/{op}")
    }
}

fn message(body: &Value) -> String {
    body["message"]
        .as_str()
        .or(body["error"].as_str())
        .unwrap_or("no detail")
        .to_string()
}

pub(crate) fn run(args: LockArgs) -> ExitCode {
    let request_id = coordmesh::locks::fresh_request_id("meshd-lock-");
    let body = json!({"ttl_ms": args.ttl_ms, "wait_ms": args.wait_ms, "request_id": request_id});
    let timeout = Duration::from_millis(args.wait_ms) + Duration::from_secs(5);
    let sent = Instant::now();
    let (token, ttl) =
        match post_json_status(args.http, &path(&args.name, "acquire"), &body, timeout) {
            Ok((200, v)) => match (
                v["token_str"].as_str().and_then(|t| t.parse::<u64>().ok()),
                v["ttl_ms"].as_u64(),
            ) {
                (Some(t), Some(ttl)) => (t, Duration::from_millis(ttl)),
                _ => {
                    eprintln!("meshd: unexpected answer from the agent: {v}");
                    return ExitCode::from(1);
                }
            },
            Ok((409, _)) => {
                eprintln!("meshd: lock {:?} is held by another client", args.name);
                return ExitCode::from(3);
            }
            Ok((503, v)) => {
                eprintln!("meshd: lock {:?} not acquired: {}", args.name, message(&v));
                return ExitCode::from(4);
            }
            Ok((400, v)) => {
                eprintln!("meshd: {}", message(&v));
                return ExitCode::from(2);
            }
            Ok((status, v)) => {
                eprintln!(
                    "meshd: lock {:?} not acquired: HTTP {status}: {}",
                    args.name,
                    message(&v)
                );
                return ExitCode::from(1);
            }
            Err(err) => {
                eprintln!("meshd: cannot reach the agent at {}: {err}", args.http);
                return ExitCode::from(1);
            }
        };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("MESH_LOCK_TOKEN", token.to_string())
        .env("MESH_LOCK_NAME", &args.name)
        .spawn()
    {
        Ok(c) => c,
        Err(err) => {
            eprintln!("meshd: cannot run {:?}: {err}", args.command[0]);
            release(&args, token);
            return ExitCode::from(127);
        }
    };
    let pid = child.id() as libc::pid_t;
    let kill = |sig| {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, sig) };
    };
    // The lease is ours until `sent + ttl` (send time of the last good
    // acquire or renew). SIGTERM goes out a margin before that.
    let mut valid_until = sent + ttl;
    let margin = (ttl / 4).min(Duration::from_secs(2));
    let mut last_renew = sent;
    let mut termed = false;
    let mut lost = false;
    // The leader said the token no longer holds the lock (410).
    let mut gone = false;
    let mut forwarded = 0;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            if !gone {
                release(&args, token);
            }
            if lost {
                return ExitCode::from(5);
            }
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
        let sig = RECEIVED.load(Ordering::SeqCst);
        if sig != 0 && sig != forwarded {
            kill(sig);
            forwarded = sig;
        }
        let now = Instant::now();
        if !gone && now >= last_renew + ttl / 3 {
            let at = Instant::now();
            let left = valid_until.saturating_duration_since(at);
            let answer = post_json_status(
                args.http,
                &path(&args.name, "renew"),
                &json!({"token": token.to_string()}),
                left.clamp(Duration::from_millis(50), Duration::from_secs(1)),
            );
            match answer {
                Ok((200, _)) => {
                    valid_until = valid_until.max(at + ttl);
                    last_renew = at;
                }
                Ok((410, _)) => {
                    eprintln!("meshd: lock {:?} lost; stopping the command", args.name);
                    lost = true;
                    gone = true;
                    valid_until = Instant::now();
                }
                // 503 during a failover, or no answer: retry soon.
                _ => {
                    last_renew = at.checked_sub(ttl / 3).unwrap_or(at) + Duration::from_millis(100)
                }
            }
        }
        let now = Instant::now();
        if !termed && now + margin >= valid_until {
            eprintln!(
                "meshd: lock {:?} could not be renewed; sending SIGTERM",
                args.name
            );
            kill(libc::SIGTERM);
            termed = true;
            lost = true;
        }
        if now >= valid_until {
            kill(libc::SIGKILL);
            let _ = child.wait();
            return ExitCode::from(5);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn release(args: &LockArgs, token: u64) {
    let answer = post_json_status(
        args.http,
        &path(&args.name, "release"),
        &json!({"token": token.to_string()}),
        Duration::from_secs(2),
    );
    if !matches!(answer, Ok((200, _))) {
        eprintln!(
            "meshd: release of {:?} not confirmed; the lease ends by its TTL",
            args.name
        );
    }
}
