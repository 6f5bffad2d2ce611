//! `meshd lock NAME -- CMD` against real agents (tier 3): the command
//! never outlives the lease, its children included. Ports are taken free
//! at run time; every process started is ended.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coordmesh::harness::agents::{Agents, die_with_parent};

const BIN: &str = env!("CARGO_BIN_EXE_meshd");
const WITHIN: Duration = Duration::from_secs(20);

/// A command that forks a grandchild, both ignoring SIGTERM (so only a
/// SIGKILL of the whole group ends them), and writes their pids.
fn stubborn(dir: &Path) -> Vec<String> {
    let script = format!(
        "trap '' TERM; sleep 300 & echo $! > {d}/grandchild.pid; echo $$ > {d}/child.pid; wait",
        d = dir.display()
    );
    vec!["sh".into(), "-c".into(), script]
}

/// `meshd lock job` running [`stubborn`] under a TTL of `ttl_ms`, once
/// both of the command's processes run: it and their pids.
fn stubborn_under_lock(http: std::net::SocketAddr, ttl_ms: u64, dir: &Path) -> (Child, [i32; 2]) {
    let lock = meshd_lock(http, ttl_ms, &stubborn(dir));
    let pids = [
        read_pid(&dir.join("child.pid"), WITHIN),
        read_pid(&dir.join("grandchild.pid"), WITHIN),
    ];
    (lock, pids)
}

fn meshd_lock(http: std::net::SocketAddr, ttl_ms: u64, command: &[String]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["lock", "job", "--http", &http.to_string()])
        .args(["--ttl-ms", &ttl_ms.to_string(), "--"])
        .args(command)
        .stdout(Stdio::null());
    die_with_parent(&mut cmd);
    cmd.spawn().unwrap()
}

fn read_pid(path: &PathBuf, within: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < within, "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True while `pid` runs (a zombie waiting to be reaped has ended).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until none of `pids` runs; returns when that was, or `None`.
fn all_ended(pids: &[i32], within: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < within {
        if pids.iter().all(|p| !alive(*p)) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn kill_all(pids: &[i32]) {
    for p in pids {
        // SAFETY: plain syscall; stray processes of a failed test.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
}

/// Finding 8: `meshd lock` is killed with SIGKILL while its command runs.
/// Before the fix the command (and the child it forked) ran on with no
/// lease at all. Now the kernel kills the command with `meshd lock`, and
/// the watchdog kills the command's whole process group, at once.
#[test]
fn finding_8_a_killed_meshd_lock_takes_its_command_and_grandchildren_along() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agents::start_led(Path::new(BIN), 3, dir.path(), WITHIN).unwrap();
    let (mut lock, pids) = stubborn_under_lock(a.spec(1).http, 10_000, dir.path());
    assert!(pids.iter().all(|p| alive(*p)));
    let _ = lock.kill();
    let _ = lock.wait();
    let ended = all_ended(&pids, Duration::from_secs(2));
    kill_all(&pids);
    assert!(
        ended.is_some(),
        "the command outlived a kill -9 of meshd lock (its lease of 10 s runs on without renewals)"
    );
}

/// Finding 8: the quorum is lost while the command runs. The leader
/// answers renewals on its own lease, which the dead voters granted
/// before they died and which runs on for up to `LEADER_LEASE` after; so
/// the last renewal that succeeded was sent at most that long after the
/// loss, and the holder's lease ends at most a TTL after that send. Every
/// process of the command must be gone by then, the grandchild (which
/// ignores SIGTERM) included, and `meshd lock` exits 5.
/// The agents' leader lease (the default `--lease-ms`).
const LEADER_LEASE: Duration = Duration::from_millis(400);

#[test]
fn finding_8_no_process_of_the_command_survives_past_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agents::start_led(Path::new(BIN), 3, dir.path(), WITHIN).unwrap();
    let ttl = Duration::from_millis(1500);
    let (mut lock, pids) = stubborn_under_lock(a.spec(1).http, ttl.as_millis() as u64, dir.path());
    // Renewals go on while the voters run.
    std::thread::sleep(ttl * 2);
    assert!(pids.iter().all(|p| alive(*p)), "renewed while voters run");
    let lost = Instant::now();
    a.kill9(2);
    a.kill9(3);
    let ended = all_ended(&pids, ttl * 3);
    let status = lock.wait().unwrap();
    kill_all(&pids);
    let ended = ended.expect("the command's processes outlived the lease");
    assert!(
        ended < lost + LEADER_LEASE + ttl,
        "ended {:?} after the quorum was lost, with a {ttl:?} lease \
         and a leader lease of {LEADER_LEASE:?}",
        ended - lost
    );
    assert_eq!(status.code(), Some(5));
}

/// `meshd lock` is stopped (SIGSTOP) while its command runs: it renews
/// nothing and signals nothing, so the watchdog must end the command's
/// group before the lease (renewed at most until the stop) runs out.
#[test]
fn a_stopped_meshd_lock_cannot_keep_its_command_past_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agents::start_led(Path::new(BIN), 3, dir.path(), WITHIN).unwrap();
    let ttl = Duration::from_millis(1500);
    let (mut lock, pids) = stubborn_under_lock(a.spec(1).http, ttl.as_millis() as u64, dir.path());
    std::thread::sleep(ttl);
    let stopped = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lock.id() as i32, libc::SIGSTOP) };
    let ended = all_ended(&pids, ttl * 3);
    kill_all(&pids);
    let _ = lock.kill();
    let _ = lock.wait();
    let ended = ended.expect("the command outlived the lease of a stopped meshd lock");
    assert!(
        ended < stopped + ttl,
        "ended {:?} after meshd lock stopped, with a {ttl:?} lease",
        ended - stopped
    );
}
