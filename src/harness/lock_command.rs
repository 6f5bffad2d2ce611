//! `meshd lock NAME -- CMD`: runs a command while holding a lock through
//! the agent, renewing it; no process of the command outlives the lease.
//!
//! - The command runs in a process group of its own, and every signal
//!   goes to the whole group, so the children it forks share its fate.
//! - The group is the watchdog's (`meshd lock-watchdog`): it is started
//!   first, leads the group, knows the lease's deadline from its command
//!   line, and ignores the signals meant for the command; the command
//!   joins its group as it starts, so there is no moment the command runs
//!   unwatched. The watchdog kills the group (itself included) the moment
//!   `meshd lock` dies (its pipe closes) or the deadline passes without a
//!   later one reaching it, even if `meshd lock` is stopped (SIGSTOP).
//!   The kernel also kills the command itself if `meshd lock` dies
//!   (parent-death signal).
//! - Time is CLOCK_BOOTTIME, which counts a host suspend (T1). The lease
//!   is valid until the send time of the last successful acquire or renew
//!   plus the TTL less the drift margin, `ttl·(1−ρ)` (the holder rule of
//!   `crate::locks::HolderLease`, as for a library guard); if renewals
//!   fail, the group gets SIGTERM a quarter TTL (at most 2 s) before that, and SIGKILL
//!   [`KILL_MARGIN`] before it, strictly inside the lease.
//!
//! Exit status: the command's own (128 + signal if a signal ended it);
//! without running it, 1 if the agent could not be reached (or the
//! watchdog could not start), 2 for bad arguments, 3 if the lock was held
//! for the whole wait, 4 if no leader with a quorum answered; 5 if the
//! lease was lost while the command ran.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::election::Timing;
use crate::locks::HolderLease;
use serde_json::{Value, json};

use crate::harness::http::post_json_status;

/// SIGKILL goes to the command's group this long before the lease's
/// validity ends: the watchdog's and this loop's wake-up granularity plus
/// the signal's delivery, so the group is gone strictly inside the lease
/// even at the shortest TTL (100 ms).
pub const KILL_MARGIN: Duration = Duration::from_millis(10);
/// How often `meshd lock` looks at the command, the signals and the
/// deadlines.
const LOOP: Duration = Duration::from_millis(5);
/// The longest the watchdog sleeps between looks at the clock (it also
/// wakes at the deadline and when `meshd lock` writes or dies).
const WATCH_NAP: Duration = Duration::from_millis(50);

/// Flags of `meshd lock`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct LockOptions {
    /// The lock's name.
    pub name: String,
    /// The agent's HTTP address.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "ADDR", default_value = "127.0.0.1:7402")
    )]
    pub http: SocketAddr,
    /// File holding the agent's HTTP bearer token (its
    /// `--http-token-file`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub http_token_file: Option<std::path::PathBuf>,
    /// The lease's TTL in milliseconds; renewed every third of it.
    #[cfg_attr(feature = "cli", arg(long, value_name = "T", default_value_t = 10_000))]
    pub ttl_ms: u64,
    /// How long to wait for the lock, in milliseconds.
    #[cfg_attr(feature = "cli", arg(long, value_name = "W", default_value_t = 0))]
    pub wait_ms: u64,
    /// The command and its arguments (after `--`).
    #[cfg_attr(feature = "cli", arg(last = true, required = true, value_name = "CMD"))]
    pub command: Vec<String>,
}

/// A signal this process received (SIGINT or SIGTERM), to pass on.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// The protocol clock: CLOCK_BOOTTIME.
fn now() -> Duration {
    Clock::Boottime.now()
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

/// The watchdog, seen from `meshd lock`: a child leading the command's
/// process group, reading instructions from a pipe only this process can
/// write.
struct Watchdog {
    child: Child,
    pipe: std::fs::File,
}

impl Watchdog {
    /// Starts it armed to kill its group at `deadline` (CLOCK_BOOTTIME).
    fn start(meshd: &Path, deadline: Duration) -> std::io::Result<Watchdog> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these two descriptors, owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut cmd = Command::new(meshd);
        cmd.arg("lock-watchdog")
            .arg(deadline.as_nanos().to_string())
            .stdin(Stdio::from(read))
            .stdout(Stdio::null());
        // SAFETY: setpgid is async-signal-safe: the watchdog leads a new
        // process group (in this session, so the command can join it).
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Watchdog {
            child,
            pipe: std::fs::File::from(write),
        })
    }

    /// The command's process group: the watchdog's.
    fn group(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Kill the group at `deadline` (CLOCK_BOOTTIME) instead.
    fn deadline(&mut self, deadline: Duration) {
        // Invariant: a watchdog that stopped reading has killed the group
        // or died; either way nothing more can be told.
        let _ = writeln!(self.pipe, "deadline {}", deadline.as_nanos());
    }

    /// The command never ran: stand down.
    fn disarm(mut self) {
        let _ = writeln!(self.pipe, "disarm");
        drop(self.pipe);
        let _ = self.child.wait();
    }

    /// The group was killed (the watchdog with it): reap it.
    fn reap(mut self) {
        drop(self.pipe);
        let _ = self.child.wait();
    }
}

/// Sends `sig` to the command's whole process group.
fn signal_group(group: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain syscall; the group's leader is our child, not reaped
    // yet (a zombie keeps its id), so the group id is ours.
    unsafe { libc::kill(-group, sig) };
}

/// True once the command (the group's leader) has exited; it is left a
/// zombie, not reaped, so its id (the group's) cannot be reused yet.
fn exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid writes into `info`, which is a valid siginfo_t.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        rc == 0 && info.si_pid() == pid
    }
}

/// Runs `meshd lock` with `args`; `meshd` is the program whose
/// `lock-watchdog` subcommand is the watchdog (the `meshd` binary).
pub fn run(meshd: &Path, args: LockOptions) -> ExitCode {
    if let Some(path) = &args.http_token_file
        && let Err(err) = crate::harness::http::use_bearer_token_file(path)
    {
        eprintln!("meshd: {err}");
        return ExitCode::from(2);
    }
    let request_id = crate::locks::fresh_request_id("meshd-lock-");
    let body = json!({"ttl_ms": args.ttl_ms, "wait_ms": args.wait_ms, "request_id": request_id});
    let timeout = Duration::from_millis(args.wait_ms) + Duration::from_secs(5);
    let sent = now();
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
    // The lease is ours until `sent + ttl·(1−ρ)` (send time of the last
    // good acquire or renew, on CLOCK_BOOTTIME), the rule every holder
    // follows; ρ is the agents' default drift bound.
    let mut lease = HolderLease::granted(sent, ttl, Timing::default().drift);
    let mut watchdog = match Watchdog::start(meshd, lease.valid_until().saturating_sub(KILL_MARGIN))
    {
        Ok(w) => w,
        Err(err) => {
            eprintln!(
                "meshd: cannot start the watchdog that ends the command with the lease: {err}"
            );
            release(&args, token);
            return ExitCode::from(1);
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("MESH_LOCK_TOKEN", token.to_string())
        .env("MESH_LOCK_NAME", &args.name);
    let parent = std::process::id() as libc::pid_t;
    let group = watchdog.group();
    // SAFETY: setpgid, prctl, getppid and _exit are async-signal-safe and
    // touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            // The watchdog's group: every process the command forks is in
            // it, and the watchdog watches it before the command runs.
            if libc::setpgid(0, group) != 0 {
                libc::_exit(126);
            }
            // Dies with meshd lock (the watchdog then ends the group).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(126);
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("meshd: cannot run {:?}: {err}", args.command[0]);
            watchdog.disarm();
            release(&args, token);
            return ExitCode::from(127);
        }
    };
    let pid = child.id() as libc::pid_t;
    let margin = (ttl / 4).min(Duration::from_secs(2));
    // When the leader said the token no longer holds the lock.
    let mut lost_at = None;
    let mut termed = false;
    let mut lost = false;
    // The leader said the token no longer holds the lock (410).
    let mut gone = false;
    let mut forwarded = 0;
    loop {
        if exited(pid) {
            // Whatever the command left behind runs without a lock too.
            signal_group(group, libc::SIGKILL);
            watchdog.reap();
            let status = child.wait();
            if !gone {
                release(&args, token);
            }
            if lost {
                return ExitCode::from(5);
            }
            use std::os::unix::process::ExitStatusExt;
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                Err(_) => 1,
            };
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
        let sig = RECEIVED.load(Ordering::SeqCst);
        if sig != 0 && sig != forwarded {
            signal_group(group, sig);
            forwarded = sig;
        }
        let valid_until = lost_at.unwrap_or(lease.valid_until());
        let kill_at = valid_until.saturating_sub(KILL_MARGIN);
        let at = now();
        if !gone && lease.renew_due(at) && at < kill_at {
            // Never wait for an answer past the kill deadline.
            let patience = (kill_at - at).min(Duration::from_secs(1));
            let answer = post_json_status(
                args.http,
                &path(&args.name, "renew"),
                &json!({"token": token.to_string()}),
                patience,
            );
            match answer {
                Ok((200, _)) => {
                    let before = lease.valid_until();
                    lease.on_renewed(at, ttl);
                    if lease.valid_until() > before {
                        watchdog.deadline(lease.valid_until().saturating_sub(KILL_MARGIN));
                    }
                }
                Ok((410, _)) => {
                    eprintln!("meshd: lock {:?} lost; stopping the command", args.name);
                    lost = true;
                    gone = true;
                    lease.on_lost();
                    lost_at = Some(now());
                }
                // 503 during a failover, or no answer: retry soon.
                _ => lease.on_renew_failed(at, Duration::from_millis(100).min(ttl / 10)),
            }
        }
        let valid_until = lost_at.unwrap_or(lease.valid_until());
        let at = now();
        if !termed && at + margin >= valid_until {
            eprintln!(
                "meshd: lock {:?} could not be renewed; sending SIGTERM",
                args.name
            );
            signal_group(group, libc::SIGTERM);
            termed = true;
            lost = true;
        }
        if at >= valid_until.saturating_sub(KILL_MARGIN) {
            signal_group(group, libc::SIGKILL);
            let _ = child.wait();
            watchdog.reap();
            return ExitCode::from(5);
        }
        std::thread::sleep(LOOP);
    }
}

fn release(args: &LockOptions, token: u64) {
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

/// `meshd lock-watchdog DEADLINE_NS` (started by `meshd lock`, not by
/// hand): leads the command's process group; kills it (itself included)
/// with SIGKILL when the deadline (CLOCK_BOOTTIME nanoseconds) passes, or
/// when stdin closes before `disarm` arrives (its `meshd lock` died).
/// Reads `deadline NS` (a later deadline) and `disarm` on stdin. Ignores
/// the signals `meshd lock` passes on to the group.
pub fn watchdog(deadline_ns: u64) -> ExitCode {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a signal to be ignored.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut deadline = Duration::from_nanos(deadline_ns);
    let mut pending = Vec::new();
    let mut buf = [0u8; 256];
    let kill_group = || {
        // SAFETY: killing this process's own group (it leads it).
        unsafe { libc::kill(0, libc::SIGKILL) };
    };
    loop {
        let nap = deadline.saturating_sub(now()).min(WATCH_NAP);
        let mut fd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut fd, 1, nap.as_millis() as libc::c_int) };
        if ready > 0 {
            // SAFETY: reading into our own buffer from stdin.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // meshd lock is gone: nothing renews the lease any more.
                kill_group();
                return ExitCode::SUCCESS;
            }
            pending.extend_from_slice(&buf[..n as usize]);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let mut words = line.split_whitespace();
                match (
                    words.next(),
                    words.next().and_then(|w| w.parse::<u64>().ok()),
                ) {
                    (Some("deadline"), Some(ns)) => deadline = Duration::from_nanos(ns),
                    (Some("disarm"), _) => return ExitCode::SUCCESS,
                    _ => {}
                }
            }
        }
        if now() >= deadline {
            kill_group();
            return ExitCode::SUCCESS;
        }
    }
}
