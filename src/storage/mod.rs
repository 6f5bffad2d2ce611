//! Durable node state in the data directory (E1, E8, E7), and the thread
//! that writes it (the records file, [`records`], has its own).
//!
//! Owns: the files, their formats and checksums, and when a write is
//! durable. Must not decide what is written or when an ack may go: the
//! driver asks, and answers from the callbacks.
//!
//! A data directory holds:
//! - `identity`: written last when the directory is initialized, so its
//!   presence means everything else is there; names the cluster and the
//!   node. A directory without it is *blank* (new, empty, a mistyped path,
//!   an ephemeral volume, or left by a build without identities): its
//!   voter has no memory and recovers like one without a data directory
//!   (E7), then initializes it. A directory of another node or cluster is
//!   refused at start.
//! - `promise`: the highest epoch this voter promised, one small file
//!   replaced atomically (write, fsync, rename, fsync the directory).
//! - `locks.log`: the voter's copy of the lock table, a log of checksummed
//!   records after a header, replayed at start and compacted by rewriting
//!   it. A torn or zero-filled tail (a crash mid-append) is truncated and
//!   reported; a corrupt record with whole records after it refuses the
//!   start with the offset.
//! - `generation`: the last incarnation number used, so a restart is
//!   newer than its dead predecessor even if the wall clock stepped back.
//! - `run`: where the run of that generation holds the directory's lock
//!   (machine id, boot id, the lock file's device and inode), so the next
//!   run can tell whether taking the lock proves that run ended (K5).
//! - `lock`: `flock`ed by the process using the directory for its whole
//!   life; it holds that process's pid.
//! - `records.redb`: the idempotency records the node holds ([`records`]),
//!   so a restarted node replays at once; not needed for safety.
//!
//! [`Persister`] makes promises and lock entries durable off the node's
//! driver: on a thread of its own (group commit: every job queued during a
//! sync shares the next one), or inline in simulations (optionally after a
//! virtual disk latency). Each job's `done` runs once its promise and
//! entries are durable, so an answer that depends on them is sent from
//! there and the driver never waits for a disk.

pub mod records;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::election::Memory;
use crate::ids::{Epoch, NodeId};
use crate::locks::{Entry, Replica};
use crate::replication::Floor;

const IDENTITY_FILE: &str = "identity";
const PROMISE_FILE: &str = "promise";
const LOCKS_FILE: &str = "locks.log";
/// Below what this voter takes no batch (`replication::Floor`): `epoch
/// batch`, written before the entries it lets the copy forget leave it.
const FLOOR_FILE: &str = "floor";
const GENERATION_FILE: &str = "generation";
/// Where the run of the last generation held the directory's lock
/// (`RunPlace`): its generation, machine id, boot id and the lock file's
/// device and inode.
const RUN_FILE: &str = "run";
/// Held locked (`flock`, exclusive) by the process using the directory,
/// for its whole life: a second process on the directory is refused
/// before it reads or writes anything. It holds the pid of its holder.
const LOCK_FILE: &str = "lock";
/// The first line of an identity file.
const IDENTITY_HEADER: &str = "coordmesh data directory 1";
/// The lock log's first bytes: format and version. Version 4: a grant
/// carries the run its holder lives in (K5). Read as unbound from the
/// earlier versions, whose logs are rewritten as this one.
const LOG_MAGIC: &[u8; 8] = b"CMLOCKS4";
/// Version 3's header: an entry carries the epoch that wrote it (K2's
/// merge order). Entries of the earlier versions are read as written in
/// epoch 0: among themselves they keep the order they had (token, release
/// over grant, version), and every write since outranks them.
const LOG_MAGIC_V3: &[u8; 8] = b"CMLOCKS3";
/// Version 2's header: entries name their namespace (user lock or
/// idempotency claim) and carry a claim's facts. Read, then rewritten as
/// the current version.
const LOG_MAGIC_V2: &[u8; 8] = b"CMLOCKS2";
/// Version 1's header: user locks only. Read, then rewritten.
const LOG_MAGIC_V1: &[u8; 8] = b"CMLOCKS1";

/// A lock log's version, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogVersion {
    V1,
    V2,
    V3,
    Current,
}

impl LogVersion {
    fn number(self) -> u32 {
        match self {
            LogVersion::V1 => 1,
            LogVersion::V2 => 2,
            LogVersion::V3 => 3,
            LogVersion::Current => 4,
        }
    }
}

/// An entry's state in versions 1 to 3: a grant without the run it is
/// bound to, read as bound to none (its lock waits out its TTL, K5).
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum EntryStateV3 {
    Held {
        ttl_ms: u64,
        owner: crate::ids::NodeId,
        request_id: Option<String>,
        quiet_ms: u64,
        version: u64,
    },
    Free {
        request_id: Option<String>,
    },
}

impl From<EntryStateV3> for crate::locks::EntryState {
    fn from(s: EntryStateV3) -> crate::locks::EntryState {
        match s {
            EntryStateV3::Held {
                ttl_ms,
                owner,
                request_id,
                quiet_ms,
                version,
            } => crate::locks::EntryState::Held {
                ttl_ms,
                owner,
                request_id,
                quiet_ms,
                version,
                bound: None,
            },
            EntryStateV3::Free { request_id } => crate::locks::EntryState::Free { request_id },
        }
    }
}

/// A lock log entry of version 1.
#[derive(serde::Deserialize)]
struct EntryV1 {
    name: String,
    token: crate::ids::Token,
    state: EntryStateV3,
}

impl From<EntryV1> for Entry {
    fn from(e: EntryV1) -> Entry {
        Entry {
            name: crate::locks::Name::lock(e.name),
            token: e.token,
            state: e.state.into(),
            claim: None,
            written: Epoch::ZERO,
        }
    }
}

/// A lock log entry of version 2.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct EntryV2 {
    name: crate::locks::Name,
    token: crate::ids::Token,
    state: EntryStateV3,
    claim: Option<Box<crate::locks::ClaimFacts>>,
}

impl From<EntryV2> for Entry {
    fn from(e: EntryV2) -> Entry {
        Entry::from(EntryV3 {
            name: e.name,
            token: e.token,
            state: e.state,
            claim: e.claim,
            written: Epoch::ZERO,
        })
    }
}

/// A lock log entry of version 3.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct EntryV3 {
    name: crate::locks::Name,
    token: crate::ids::Token,
    state: EntryStateV3,
    claim: Option<Box<crate::locks::ClaimFacts>>,
    written: Epoch,
}

impl From<EntryV3> for Entry {
    fn from(e: EntryV3) -> Entry {
        Entry {
            name: e.name,
            token: e.token,
            state: e.state.into(),
            claim: e.claim,
            written: e.written,
        }
    }
}
/// Bytes before each record's body: its length and its CRC-32.
const RECORD_HEADER_BYTES: usize = 8;
/// The largest record read back; larger lengths are corruption.
const RECORD_BYTES_MAX: usize = 1 << 20;

/// What a voter's data directory remembers at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Initialized: the promise and the lock table it holds.
    Initialized {
        /// The durable promise.
        promised: Epoch,
        /// The durable copy of the lock table.
        replica: Replica,
    },
    /// New or empty: no memory, and no sign of an earlier life.
    Blank,
    /// Not initialized, but holding files of an earlier life (a build
    /// without identities, a partial restore): no memory this node can
    /// trust, and no sign of a new cluster either.
    Leftover,
}

impl Stored {
    /// What the election starts from (E7): an initialized directory's
    /// promise and copy; a blank one remembers nothing, and is a sign of
    /// a new cluster; leftover files of an earlier life without an
    /// identity are no memory to trust, and no such sign.
    pub fn memory(&self) -> (Memory, Epoch, Replica) {
        match self {
            Stored::Initialized { promised, replica } => {
                (Memory::Durable, *promised, replica.clone())
            }
            Stored::Blank => (Memory::Blank, Epoch::ZERO, Replica::default()),
            Stored::Leftover => (Memory::None, Epoch::ZERO, Replica::default()),
        }
    }
}

/// A node's data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    cluster: String,
    node: NodeId,
    /// The log replayed at open, for the persister's appends.
    log: Option<LockLog>,
    /// The floor the directory holds (the default without one).
    floor: Floor,
    /// The directory's lock, held as its [`LockScope`] says.
    _lock: DirLock,
}

/// How long a node's hold on its data directory's lock lasts (K5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockScope {
    /// Until the process ends, however it ends (a real node): a later
    /// node of the same process on the directory takes the hold over, so
    /// only a node of another process takes the lock anew, and a node
    /// that takes it anew knows every earlier node on the directory is
    /// gone with its process.
    Process,
    /// While the node's `DataDir` lives (a simulated node, which stands
    /// for a process of its own).
    Node,
}

/// A data directory's lock as one node holds it.
#[derive(Debug)]
enum DirLock {
    /// Kept in [`PROCESS_LOCKS`] under this key until the process ends.
    Process(PathBuf),
    /// Released when dropped (the file is held only for its lock).
    Node(#[allow(dead_code)] File),
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let DirLock::Process(key) = self {
            let mut held = PROCESS_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = held.get_mut(key) {
                entry.in_use = false;
            }
        }
    }
}

/// The directories this process holds locked for its whole life
/// ([`LockScope::Process`]), by canonical path.
static PROCESS_LOCKS: Mutex<std::collections::BTreeMap<PathBuf, ProcessLock>> =
    Mutex::new(std::collections::BTreeMap::new());

#[derive(Debug)]
struct ProcessLock {
    /// Never closed: the kernel releases the lock when the process ends.
    _file: File,
    /// A node of this process uses the directory now.
    in_use: bool,
    /// The lock file's device and inode.
    identity: (u64, u64),
}

/// A file's device and inode.
fn file_identity(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Where a run held its directory's lock: the machine, the kernel's boot
/// and the lock file (K5). Written beside each run's generation; a later
/// run that took the lock anew proves that run ended only if it is on
/// the same machine and either the machine booted since (the run's
/// process died with it) or it holds the very same lock file (which
/// that run held until its process ended). A copied directory (another
/// lock file) or one mounted by another machine proves nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunPlace {
    machine: String,
    boot: String,
    lock_file: (u64, u64),
}

impl RunPlace {
    /// This process's place with the lock file of `dir`; `None` when the
    /// machine or boot cannot be told (no proof is made then).
    fn here(dir: &Path) -> Option<RunPlace> {
        let read = |p: &str| {
            fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        };
        Some(RunPlace {
            machine: read("/etc/machine-id").or_else(|| read("/var/lib/dbus/machine-id"))?,
            boot: read("/proc/sys/kernel/random/boot_id")?,
            lock_file: file_identity(&dir.join(LOCK_FILE)).ok()?,
        })
    }

    fn line(&self, generation: u64) -> String {
        format!(
            "{generation} {} {} {} {}\n",
            self.machine, self.boot, self.lock_file.0, self.lock_file.1
        )
    }

    fn parse(line: &str) -> Option<(u64, RunPlace)> {
        let mut f = line.split_whitespace();
        let generation = f.next()?.parse().ok()?;
        let place = RunPlace {
            machine: f.next()?.to_string(),
            boot: f.next()?.to_string(),
            lock_file: (f.next()?.parse().ok()?, f.next()?.parse().ok()?),
        };
        f.next().is_none().then_some((generation, place))
    }

    /// True when a run at `then` has ended, seen from a run here that
    /// took the lock anew.
    fn proves_ended(&self, then: &RunPlace) -> bool {
        self.machine == then.machine && (self.boot != then.boot || self.lock_file == then.lock_file)
    }
}

/// Takes the lock of the directory `path` for a node, as `scope` says:
/// `true` when it was taken anew (no node of this process held it
/// before), so whoever held it before is gone with its process.
fn take_dir_lock(path: &Path, scope: LockScope) -> io::Result<(DirLock, bool)> {
    match scope {
        LockScope::Node => Ok((DirLock::Node(lock_dir(path)?), true)),
        LockScope::Process => {
            let key = fs::canonicalize(path)?;
            let mut held = PROCESS_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
            // A directory removed and made again since holds another lock
            // file: the hold this process kept is on the old one (K5).
            let current = file_identity(&path.join(LOCK_FILE)).ok();
            if held.get(&key).is_some_and(|e| Some(e.identity) != current) {
                held.remove(&key);
            }
            if let Some(entry) = held.get_mut(&key) {
                if entry.in_use {
                    return Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        format!(
                            "{}: in use by another node of this process; one node per data directory",
                            path.display()
                        ),
                    ));
                }
                entry.in_use = true;
                return Ok((DirLock::Process(key), false));
            }
            let file = lock_dir(path)?;
            let identity = file_identity(&path.join(LOCK_FILE))?;
            held.insert(
                key.clone(),
                ProcessLock {
                    _file: file,
                    in_use: true,
                    identity,
                },
            );
            Ok((DirLock::Process(key), true))
        }
    }
}

/// Takes the exclusive lock of the directory `path` without waiting.
fn lock_dir(path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let lock_path = path.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)?;
    // SAFETY: flock on a descriptor this function owns; no memory is
    // passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = fs::read_to_string(&lock_path).unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{}: in use by another process (pid {}); one node per data directory",
                    path.display(),
                    holder.trim()
                ),
            ));
        }
        return Err(error);
    }
    file.set_len(0)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(file)
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {message}", path.display()),
    )
}

/// Reads what the directory `path` of `node` in `cluster` remembers,
/// with its log when initialized (see [`DataDir::open`]).
fn read_dir(
    path: &Path,
    cluster: &str,
    node: NodeId,
    warnings: &mut Vec<String>,
) -> io::Result<(Option<LockLog>, Stored)> {
    let identity = path.join(IDENTITY_FILE);
    let text = match fs::read_to_string(&identity) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let leftover = [PROMISE_FILE, LOCKS_FILE]
                .iter()
                .any(|f| path.join(f).exists());
            let stored = if leftover {
                warnings.push(format!(
                    "{}: holds a promise or a lock log but no identity (an earlier build, or a partial restore); it is treated as no data directory until this voter has recovered from the others",
                    path.display()
                ));
                Stored::Leftover
            } else {
                Stored::Blank
            };
            return Ok((None, stored));
        }
        Err(e) => return Err(e),
    };
    let (their_cluster, their_node) = parse_identity(&text)
        .ok_or_else(|| invalid(&identity, "is not a coordmesh data directory identity"))?;
    if their_cluster != cluster || their_node != node {
        return Err(invalid(
            path,
            format!(
                "belongs to node {their_node} of cluster {their_cluster:?}, not node {node} of {cluster:?}; give each node its own directory"
            ),
        ));
    }
    // Initialized: the promise and the log must be there.
    let promise = path.join(PROMISE_FILE);
    let promised = match fs::read_to_string(&promise) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Epoch)
            .map_err(|_| invalid(&promise, "does not hold an epoch"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(invalid(
                &promise,
                "is missing from an initialized data directory; remove the directory to have this voter recover from the others",
            ));
        }
        Err(e) => return Err(e),
    };
    let (log, replica, repaired) = LockLog::open(&path.join(LOCKS_FILE))?;
    warnings.extend(repaired);
    Ok((Some(log), Stored::Initialized { promised, replica }))
}

impl DataDir {
    /// Opens (creating) the directory of `node` in `cluster` and reads
    /// what it remembers. Errors name the file and what is wrong with it;
    /// `warnings` gets what was repaired (a truncated log tail).
    pub fn open(
        path: &Path,
        cluster: &str,
        node: NodeId,
        warnings: &mut Vec<String>,
    ) -> io::Result<(DataDir, Stored)> {
        Self::open_locked(path, cluster, node, LockScope::Node, warnings)
            .map(|(dir, stored, _)| (dir, stored))
    }

    /// [`DataDir::open`], holding the directory's lock as `scope` says;
    /// also `true` when the lock was taken anew: every node that ran on
    /// the directory before is gone with its process (K5).
    pub fn open_locked(
        path: &Path,
        cluster: &str,
        node: NodeId,
        scope: LockScope,
        warnings: &mut Vec<String>,
    ) -> io::Result<(DataDir, Stored, bool)> {
        create_dir_durably(path)?;
        let (lock, anew) = take_dir_lock(path, scope)?;
        let (log, stored) = read_dir(path, cluster, node, warnings)?;
        let floor = read_floor(path)?;
        Ok((
            DataDir {
                path: path.to_path_buf(),
                cluster: cluster.to_string(),
                node,
                log,
                floor,
                _lock: lock,
            },
            stored,
            anew,
        ))
    }

    /// The generation that last ran on this directory, as its
    /// `generation` file says (read before [`DataDir::next_generation`]).
    pub fn last_generation(&self) -> Option<u64> {
        fs::read_to_string(self.path.join(GENERATION_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    }

    /// The last run on this directory, if this run, having taken the
    /// directory's lock anew, proves it ended (K5; see `RunPlace`):
    /// read before [`DataDir::next_generation`] records this run.
    pub fn ended_run(&self) -> Option<u64> {
        let (generation, then) = fs::read_to_string(self.path.join(RUN_FILE))
            .ok()
            .and_then(|t| RunPlace::parse(&t))?;
        let here = RunPlace::here(&self.path)?;
        (here.proves_ended(&then) && self.last_generation() == Some(generation))
            .then_some(generation)
    }

    /// What the directory remembers, read without its lock while a
    /// `DataDir` holds it (tests).
    #[cfg(test)]
    fn peek(path: &Path, cluster: &str, node: NodeId) -> io::Result<(Stored, Vec<String>)> {
        let mut warnings = Vec::new();
        let (_, stored) = read_dir(path, cluster, node, &mut warnings)?;
        Ok((stored, warnings))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This start's generation: `proposed` (the wall clock), or one above
    /// the last one used here if that is not lower, written before it is
    /// used.
    pub fn next_generation(&self, proposed: u64) -> io::Result<u64> {
        let path = self.path.join(GENERATION_FILE);
        let last = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let generation = match last {
            Some(last) if last >= proposed => last + 1,
            _ => proposed,
        };
        replace_file(
            &self.path,
            GENERATION_FILE,
            format!("{generation}\n").as_bytes(),
        )?;
        // Where this run holds the lock, for the next run's proof (K5);
        // without it no proof is made.
        match RunPlace::here(&self.path) {
            Some(place) => replace_file(&self.path, RUN_FILE, place.line(generation).as_bytes())?,
            None => match fs::remove_file(self.path.join(RUN_FILE)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
        Ok(generation)
    }

    /// Initializes the directory with `promised` and `replica`: the
    /// promise and the log first, the identity last (E7: from then on the
    /// voter is durable).
    fn initialize(&self, promised: Epoch, replica: &Replica) -> io::Result<LockLog> {
        replace_file(&self.path, PROMISE_FILE, format!("{promised}\n").as_bytes())?;
        let log = LockLog::create(&self.path.join(LOCKS_FILE), replica)?;
        let identity = format!(
            "{IDENTITY_HEADER}\ncluster = {}\nnode = {}\n",
            self.cluster, self.node
        );
        replace_file(&self.path, IDENTITY_FILE, identity.as_bytes())?;
        Ok(log)
    }

    fn save_promise(&self, epoch: Epoch) -> io::Result<()> {
        replace_file(&self.path, PROMISE_FILE, format!("{epoch}\n").as_bytes())
    }

    /// The floor the directory holds (read at open).
    pub fn floor(&self) -> Floor {
        self.floor
    }

    fn save_floor(&self, floor: Floor) -> io::Result<()> {
        let line = format!("{} {}\n", floor.epoch, floor.batch);
        replace_file(&self.path, FLOOR_FILE, line.as_bytes())
    }
}

/// The floor of the directory `path`: the default when it has none.
fn read_floor(path: &Path) -> io::Result<Floor> {
    let file = path.join(FLOOR_FILE);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Floor::default()),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(epoch)), Some(Ok(batch)), None) => Ok(Floor {
            epoch: Epoch(epoch),
            batch: crate::ids::BatchId(batch),
        }),
        _ => Err(invalid(
            &file,
            "does not hold an epoch and a batch id; remove the data directory to have this voter recover from the others",
        )),
    }
}

fn parse_identity(text: &str) -> Option<(String, NodeId)> {
    let mut lines = text.lines();
    if lines.next()? != IDENTITY_HEADER {
        return None;
    }
    let mut cluster = None;
    let mut node = None;
    for line in lines {
        let (key, value) = line.split_once(" = ")?;
        match key {
            "cluster" => cluster = Some(value.to_string()),
            "node" => node = Some(NodeId(value.parse().ok()?)),
            _ => return None,
        }
    }
    Some((cluster?, node?))
}

/// Creates `path` (and its parents) and makes the new entries durable in
/// their parent directories.
fn create_dir_durably(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(path);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        at = p.parent();
    }
    fs::create_dir_all(path)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// The file whose presence says the records file of a data directory
/// lacks completions the node's lock copy settled into it (the file was
/// set aside or could not be read, or the copy was replaced by others'
/// at recovery): the node fills its records in from a majority before
/// they count (PROTOCOL.md, "Idempotency" 8).
pub const RECORDS_INCOMPLETE_FILE: &str = "records.incomplete";

/// True if the records of the data directory `dir` are marked incomplete.
pub fn records_incomplete(dir: &Path) -> bool {
    dir.join(RECORDS_INCOMPLETE_FILE).exists()
}

/// Marks the records of `dir` incomplete (or complete again), durably.
pub fn mark_records_incomplete(dir: &Path, incomplete: bool) -> io::Result<()> {
    let path = dir.join(RECORDS_INCOMPLETE_FILE);
    if incomplete {
        replace_file(dir, RECORDS_INCOMPLETE_FILE, b"")
    } else {
        match fs::remove_file(&path) {
            Ok(()) => File::open(dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Replaces `dir/name` atomically and durably: write a temporary file,
/// fsync it, rename it over, fsync the directory.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// A voter's copy of the lock table on disk: `LOG_MAGIC`, then records of
/// `len: u32 LE | crc32(body): u32 LE | body` (a postcard [`Entry`]).
/// Replaying them through [`Replica::merge`] rebuilds the copy (merging is
/// order-independent).
#[derive(Debug)]
pub struct LockLog {
    path: PathBuf,
    file: File,
    records: usize,
    /// Appends synced since it was opened.
    syncs: u64,
}

impl LockLog {
    /// Opens and replays the log at `path`. A torn or zero-filled tail is
    /// truncated (reported in the returned messages); a corrupt record
    /// followed by more data, a bad header or a missing file is an error.
    pub fn open(path: &Path) -> io::Result<(LockLog, Replica, Vec<String>)> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(
                    path,
                    "is missing from an initialized data directory; remove the directory to have this voter recover from the others",
                ));
            }
            Err(e) => return Err(e),
        };
        let header = bytes.get(..LOG_MAGIC.len());
        let version = if header == Some(LOG_MAGIC.as_slice()) {
            LogVersion::Current
        } else if header == Some(LOG_MAGIC_V3.as_slice()) {
            LogVersion::V3
        } else if header == Some(LOG_MAGIC_V2.as_slice()) {
            LogVersion::V2
        } else if header == Some(LOG_MAGIC_V1.as_slice()) {
            LogVersion::V1
        } else {
            return Err(invalid(path, "is not a coordmesh lock log (bad header)"));
        };
        let mut replica = Replica::default();
        let mut at = LOG_MAGIC.len();
        let mut records = 0;
        let mut repaired = Vec::new();
        while at < bytes.len() {
            match decode_record(&bytes[at..], version) {
                Ok((entry, used)) => {
                    replica.merge(entry);
                    records += 1;
                    at += used;
                }
                Err(extent) => {
                    let rest = &bytes[at..];
                    let torn = extent >= rest.len() || rest.iter().all(|b| *b == 0);
                    if !torn {
                        return Err(invalid(
                            path,
                            format!(
                                "record at offset {at} is corrupt and {} bytes follow it; restore the file, or remove the data directory to have this voter recover from the others",
                                rest.len()
                            ),
                        ));
                    }
                    repaired.push(format!(
                        "{}: dropped a torn tail of {} bytes at offset {at} (a crash mid-append; it was never acknowledged)",
                        path.display(),
                        rest.len()
                    ));
                    break;
                }
            }
        }
        if version != LogVersion::Current {
            // Appends are of the current version: rewrite the whole log.
            repaired.push(format!(
                "{}: rewrote a lock log of version {} as version {}",
                path.display(),
                version.number(),
                LogVersion::Current.number(),
            ));
            return Ok((LockLog::create(path, &replica)?, replica, repaired));
        }
        let file = OpenOptions::new().append(true).open(path)?;
        if at < bytes.len() {
            // Later appends must follow whole records.
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        let log = LockLog {
            path: path.to_path_buf(),
            file,
            records,
            syncs: 0,
        };
        Ok((log, replica, repaired))
    }

    /// Writes a new log holding `replica` at `path`, atomically.
    pub fn create(path: &Path, replica: &Replica) -> io::Result<LockLog> {
        let mut buf = LOG_MAGIC.to_vec();
        for e in replica.entries() {
            encode_record(&mut buf, e)?;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(LOCKS_FILE);
        replace_file(dir, name, &buf)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(LockLog {
            path: path.to_path_buf(),
            file,
            records: replica.len(),
            syncs: 0,
        })
    }

    /// Appends `entries` and syncs them (one sync per call: callers group
    /// a batch into one call); compacts once the log is mostly superseded.
    pub fn append(&mut self, entries: &[&Entry], replica: &Replica) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            encode_record(&mut buf, e)?;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.syncs += 1;
        self.records += entries.len();
        self.compact_if_sparse(replica)
    }

    /// Rewrites the log from `replica` once it is mostly superseded (or
    /// holds entries the copy shed).
    pub fn compact_if_sparse(&mut self, replica: &Replica) -> io::Result<()> {
        if self.records > 4 * replica.len() + 4096 {
            *self = LockLog::create(&self.path, replica)?;
        }
        Ok(())
    }
}

/// One record at the start of `bytes` (of the log's `version`): the entry
/// and the bytes it used, or, if it is not whole and valid, how far it
/// claims to extend.
fn decode_record(bytes: &[u8], version: LogVersion) -> Result<(Entry, usize), usize> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(RECORD_HEADER_BYTES);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let extent = RECORD_HEADER_BYTES.saturating_add(len);
    if len == 0 || len > RECORD_BYTES_MAX {
        return Err(extent);
    }
    let Some(body) = bytes.get(RECORD_HEADER_BYTES..extent) else {
        return Err(extent);
    };
    if crc32fast::hash(body) != crc {
        return Err(extent);
    }
    let entry = match version {
        LogVersion::V1 => postcard::from_bytes::<EntryV1>(body).map(Entry::from),
        LogVersion::V2 => postcard::from_bytes::<EntryV2>(body).map(Entry::from),
        LogVersion::V3 => postcard::from_bytes::<EntryV3>(body).map(Entry::from),
        LogVersion::Current => postcard::from_bytes(body),
    };
    Ok((entry.map_err(|_| extent)?, extent))
}

fn encode_record(buf: &mut Vec<u8>, entry: &Entry) -> io::Result<()> {
    let body = postcard::to_stdvec(entry).map_err(io::Error::other)?;
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(())
}

/// What a job's `done` is told: everything it asked for is durable.
pub type Done = Box<dyn FnOnce(bool) + Send>;

/// One unit of work for the [`Persister`].
pub struct Job {
    /// A promise to make durable (the highest of a group is written).
    pub promise: Option<Epoch>,
    /// Lock entries to make durable.
    pub entries: Vec<Entry>,
    /// Initialize a blank directory with this promise, table and floor
    /// first (the floor exactly: a recovery's copy comes with its
    /// sources' floors, and an earlier life's must not outlast it).
    pub init: Option<(Epoch, Replica, Floor)>,
    /// Drop the claims' tombstones collectable at this wall-clock time
    /// from the durable copy (the log sheds them at its next rewrite).
    pub collect: Option<u64>,
    /// Drop these completed claims' tombstones (name and claim) from the
    /// durable copy: the records file holds their completions, synced
    /// (PROTOCOL.md, "Idempotency" 8).
    pub settle: Vec<(crate::locks::Name, crate::ids::Token)>,
    /// Raise the floor to this, durably, before the job's forget drops
    /// anything (a forget's entries leave only below it).
    pub floor: Option<Floor>,
    /// Drop these entries, each where the durable copy holds it exactly
    /// (PROTOCOL.md, "Locks" 8); the log sheds them at its next rewrite.
    pub forget: Vec<Entry>,
    /// Nobody waits on it: the disk thread may hold it up to [`LINGER`]
    /// for the next job, so that the two share one sync.
    pub unhurried: bool,
    /// Called once all of it is durable (`true`), or cannot be (`false`).
    pub done: Done,
}

impl Job {
    /// A job that writes nothing and then calls `done`.
    pub fn new(done: impl FnOnce(bool) + Send + 'static) -> Job {
        Job {
            promise: None,
            entries: Vec::new(),
            init: None,
            collect: None,
            settle: Vec::new(),
            floor: None,
            forget: Vec::new(),
            unhurried: false,
            done: Box::new(done),
        }
    }
}

/// How long the disk thread holds a group of jobs nobody waits on (a
/// released lock's tombstone: the release was answered once the leader
/// applied it) for the next job, before it syncs them alone. A client
/// that releases and acquires again sends its acquire a round trip
/// later: its batch then shares the tombstone's sync instead of queueing
/// behind it.
pub const LINGER: Duration = Duration::from_millis(1);

/// The durable state and the files behind it.
struct Disk {
    dir: Option<DataDir>,
    log: Option<LockLog>,
    /// The durable copy: what the log holds (E8 acks are checked on it,
    /// not on the driver's in-memory copy).
    replica: Replica,
    promised: Epoch,
    /// The floor the directory holds.
    floor: Floor,
    /// `promised`, readable without the lock (lease checker, reply gate).
    promised_cell: Arc<AtomicU64>,
    /// `log.is_some()`, readable without the lock.
    initialized: Arc<std::sync::atomic::AtomicBool>,
    failed: bool,
}

/// Runs a group of jobs with one sync of each file they touch, then
/// their callbacks, outside the lock (a callback may wait for the driver,
/// which may be asking the disk a question meanwhile).
fn run(disk: &Mutex<Disk>, jobs: Vec<Job>) {
    let outcome = {
        let mut d = disk.lock().unwrap_or_else(|e| e.into_inner());
        Outcome { ok: d.write(&jobs) }
    };
    for job in jobs {
        (job.done)(outcome.ok);
    }
}

impl Disk {
    fn write(&mut self, jobs: &[Job]) -> bool {
        if self.failed {
            return false;
        }
        let result = (|| -> io::Result<()> {
            for job in jobs {
                if let (Some((promised, replica, floor)), Some(dir)) = (&job.init, &self.dir) {
                    // The floor first, so that the copy is never held
                    // with a lower one.
                    if *floor != self.floor {
                        dir.save_floor(*floor)?;
                        self.floor = *floor;
                    }
                    self.log = Some(dir.initialize(*promised, replica)?);
                    self.initialized.store(true, Ordering::Release);
                    self.replica = replica.clone();
                    self.promised = *promised;
                    self.promised_cell.store(promised.0, Ordering::Release);
                }
            }
            // A blank directory not initialized yet: this voter has no
            // durable state (it recovers like one without a data dir).
            let (Some(dir), Some(log)) = (&self.dir, &mut self.log) else {
                return Ok(());
            };
            // A forget's floor, before its entries leave.
            if let Some(floor) = jobs.iter().filter_map(|j| j.floor).max()
                && floor > self.floor
            {
                dir.save_floor(floor)?;
                self.floor = floor;
            }
            if let Some(p) = jobs.iter().filter_map(|j| j.promise).max()
                && p > self.promised
            {
                dir.save_promise(p)?;
                self.promised = p;
                self.promised_cell.store(p.0, Ordering::Release);
            }
            if let Some(wall_ms) = jobs.iter().filter_map(|j| j.collect).max() {
                self.replica.retain(|e| !e.collectable(wall_ms));
            }
            let settled: std::collections::HashSet<_> =
                jobs.iter().flat_map(|j| j.settle.iter()).collect();
            if !settled.is_empty() {
                self.replica.retain(|e| {
                    !(e.is_settleable() && settled.contains(&(e.name.clone(), e.token)))
                });
            }
            // Merged before the forgets: an older entry taken before the
            // floor rose (a late batch in the same group) must meet the
            // tombstone it loses to, not an empty slot.
            let changed = self
                .replica
                .merge_refs(jobs.iter().flat_map(|j| j.entries.iter()));
            let mut forgot = false;
            for e in jobs.iter().flat_map(|j| j.forget.iter()) {
                if self.replica.get(&e.name) == Some(e) {
                    self.replica.remove(&e.name);
                    forgot = true;
                }
            }
            log.append(&changed, &self.replica)?;
            if forgot {
                log.compact_if_sparse(&self.replica)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(%err, "cannot make the voter's state durable; this node acks and promises nothing more");
                self.failed = true;
                false
            }
        }
    }
}

/// What the disk thread decides under its lock and reports after it.
struct Outcome {
    ok: bool,
}

enum Mode {
    /// A thread of its own, group-committing.
    Thread(std::sync::mpsc::Sender<Job>),
    /// On the caller's thread, at once (simulations).
    Inline,
    /// A task that waits `latency` of (virtual) time per group, then
    /// writes (simulations of a slow disk).
    Delayed(tokio::sync::mpsc::UnboundedSender<Job>),
}

/// Makes promises and lock entries durable off the driver (E8).
pub struct Persister {
    disk: Arc<Mutex<Disk>>,
    /// The promise the data directory holds.
    promised: Arc<AtomicU64>,
    /// The data directory is initialized.
    initialized: Arc<std::sync::atomic::AtomicBool>,
    /// There is a data directory at all.
    has_dir: bool,
    mode: Mode,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister").finish_non_exhaustive()
    }
}

impl Persister {
    fn with(mut dir: Option<DataDir>, stored: &Stored) -> Persister {
        let log = dir.as_mut().and_then(|d| d.log.take());
        let floor = dir.as_ref().map_or(Floor::default(), DataDir::floor);
        let (replica, promised) = match stored {
            Stored::Initialized { promised, replica } if log.is_some() => {
                (replica.clone(), *promised)
            }
            _ => (Replica::default(), Epoch::ZERO),
        };
        let promised_cell = Arc::new(AtomicU64::new(promised.0));
        let initialized = Arc::new(std::sync::atomic::AtomicBool::new(log.is_some()));
        let has_dir = dir.is_some();
        Persister {
            disk: Arc::new(Mutex::new(Disk {
                dir,
                log,
                replica,
                promised,
                floor,
                promised_cell: promised_cell.clone(),
                initialized: initialized.clone(),
                failed: false,
            })),
            promised: promised_cell,
            initialized,
            has_dir,
            mode: Mode::Inline,
        }
    }

    /// No data directory: everything is "durable" at once (in memory).
    pub fn memory() -> Persister {
        Persister::with(None, &Stored::Blank)
    }

    /// A thread of its own over `dir`, which holds `stored`.
    pub fn thread(dir: DataDir, stored: &Stored) -> io::Result<Persister> {
        Persister::thread_lingering(dir, stored, LINGER)
    }

    /// [`Persister::thread`], holding jobs nobody waits on for `linger`.
    pub(crate) fn thread_lingering(
        dir: DataDir,
        stored: &Stored,
        linger: Duration,
    ) -> io::Result<Persister> {
        let mut p = Persister::with(Some(dir), stored);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let disk = p.disk.clone();
        std::thread::Builder::new()
            .name("coordmesh-disk".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                    }
                    let until = std::time::Instant::now() + linger;
                    while jobs.iter().all(|j| j.unhurried) {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        let Ok(more) = rx.recv_timeout(left) else {
                            break;
                        };
                        jobs.push(more);
                    }
                    run(&disk, jobs);
                }
            })?;
        p.mode = Mode::Thread(tx);
        Ok(p)
    }

    /// Writes on the caller's thread at once (simulations), or, with a
    /// `latency`, from a task after that much (virtual) time per group.
    pub fn inline(dir: DataDir, stored: &Stored, latency: Duration) -> Persister {
        let mut p = Persister::with(Some(dir), stored);
        if !latency.is_zero() {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            let disk = p.disk.clone();
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    tokio::time::sleep(latency).await;
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                    }
                    run(&disk, jobs);
                }
            });
            p.mode = Mode::Delayed(tx);
        }
        p
    }

    /// True once this node's data directory holds its state (it was
    /// initialized, now or at an earlier start).
    pub fn is_durable(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    /// The data directory's path, if there is one.
    pub fn dir_path(&self) -> Option<PathBuf> {
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        disk.dir.as_ref().map(|d| d.path.clone())
    }

    /// True if this node has a data directory (initialized or not):
    /// everything that should be durable goes through it, in order.
    pub fn has_dir(&self) -> bool {
        self.has_dir
    }

    /// The promise the data directory holds now (0 without one), shared:
    /// it moves as writes complete.
    pub fn durable_promise(&self) -> Arc<AtomicU64> {
        self.promised.clone()
    }

    /// Queues a job; `done` runs once it is durable (or cannot be).
    pub fn submit(&self, job: Job) {
        match &self.mode {
            Mode::Thread(tx) => {
                if let Err(std::sync::mpsc::SendError(job)) = tx.send(job) {
                    (job.done)(false);
                }
            }
            Mode::Delayed(tx) => {
                if let Err(tokio::sync::mpsc::error::SendError(job)) = tx.send(job) {
                    (job.done)(false);
                }
            }
            Mode::Inline => run(&self.disk, vec![job]),
        }
    }

    /// Makes `promise` (if any) and `entries` durable, then calls `done`.
    pub fn persist(
        &self,
        promise: Option<Epoch>,
        entries: Vec<Entry>,
        done: impl FnOnce(bool) + Send + 'static,
    ) {
        self.submit(Job {
            promise,
            entries,
            ..Job::new(done)
        });
    }

    /// [`Persister::persist`] of entries nobody waits on: their sync may
    /// wait up to [`LINGER`] for the next job's, on a disk thread.
    pub fn persist_unhurried(&self, entries: Vec<Entry>, done: impl FnOnce(bool) + Send + 'static) {
        self.submit(Job {
            entries,
            unhurried: true,
            ..Job::new(done)
        });
    }

    /// Initializes a blank data directory with this voter's recovered
    /// state (E7) and its floor, or rewrites an initialized one with a
    /// replaced copy; later jobs follow it. Without a data directory it
    /// does nothing.
    pub fn initialize(&self, promised: Epoch, replica: Replica, floor: Floor) {
        self.submit(Job {
            init: Some((promised, replica, floor)),
            ..Job::new(|_| {})
        });
    }

    /// Raises the floor to `floor`, then drops `entries` from the durable
    /// copy, each where it holds it exactly (PROTOCOL.md, "Locks" 8);
    /// `done` runs once both are durable.
    pub fn forget(
        &self,
        floor: Floor,
        entries: Vec<Entry>,
        done: impl FnOnce(bool) + Send + 'static,
    ) {
        self.submit(Job {
            floor: Some(floor),
            forget: entries,
            ..Job::new(done)
        });
    }

    /// The floor the data directory holds now (the default without one).
    pub fn floor(&self) -> Floor {
        self.disk.lock().unwrap_or_else(|e| e.into_inner()).floor
    }

    /// Drops from the durable copy the claims' tombstones collectable at
    /// wall-clock `wall_ms` (`Entry::collectable`); the log sheds them
    /// when it is next rewritten.
    pub fn collect(&self, wall_ms: u64) {
        self.submit(Job {
            collect: Some(wall_ms),
            ..Job::new(|_| {})
        });
    }

    /// Drops from the durable copy these completed claims' tombstones
    /// (name and claim), whose completions the records file holds,
    /// synced; the log sheds them when it is next rewritten.
    pub fn settle(&self, settled: Vec<(crate::locks::Name, crate::ids::Token)>) {
        self.submit(Job {
            settle: settled,
            ..Job::new(|_| {})
        });
    }
}

#[cfg(test)]
mod tests;
