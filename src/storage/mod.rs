//! Durable node state in the data directory:
//! - the highest epoch a voter promised (DESIGN.md E1, E8), one small file
//!   replaced atomically (write, fsync, rename, fsync the directory), so a
//!   crash leaves either the old or the new value, never a torn one;
//! - the voter's copy of the lock table ([`LockStore`]), an append-only log
//!   of entries synced before each ack (E8), compacted by rewriting it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::locks::{Entry, Replica};

const PROMISE_FILE: &str = "promise";

/// Where a voter's promise lives.
#[derive(Debug)]
pub struct PromiseStore {
    dir: PathBuf,
}

impl PromiseStore {
    /// Opens (creating) the data directory and reads the promise: 0 if
    /// none was ever written.
    pub fn open(dir: &Path) -> io::Result<(PromiseStore, u64)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(PROMISE_FILE);
        let promised = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold an epoch", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok((
            PromiseStore {
                dir: dir.to_path_buf(),
            },
            promised,
        ))
    }

    /// Makes `epoch` the durable promise before returning.
    pub fn save(&self, epoch: u64) -> io::Result<()> {
        let tmp = self.dir.join(format!("{PROMISE_FILE}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(format!("{epoch}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(PROMISE_FILE))?;
        File::open(&self.dir)?.sync_all()
    }
}

const LOCKS_FILE: &str = "locks.log";

/// A voter's copy of the lock table on disk: a log of length-prefixed
/// postcard entries. Replaying it through [`Replica::merge`] rebuilds the
/// copy (merging is order-independent); a torn last record, from a crash
/// mid-append, is ignored, since it was never acked.
#[derive(Debug)]
pub struct LockStore {
    dir: PathBuf,
    file: File,
    records: usize,
}

impl LockStore {
    /// Opens (creating) the log in `dir` and replays it.
    pub fn open(dir: &Path) -> io::Result<(LockStore, Replica)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(LOCKS_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut replica = Replica::default();
        let mut at = 0;
        let mut records = 0;
        while at + 4 <= bytes.len() {
            let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                as usize;
            let Some(body) = bytes.get(at + 4..at + 4 + len) else {
                break;
            };
            let entry: Entry = postcard::from_bytes(body).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} holds an undecodable record", path.display()),
                )
            })?;
            replica.merge(entry);
            records += 1;
            at += 4 + len;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if at < bytes.len() {
            // Drop the torn tail so later appends follow whole records.
            file.set_len(at as u64)?;
        }
        let store = LockStore {
            dir: dir.to_path_buf(),
            file,
            records,
        };
        Ok((store, replica))
    }

    /// Appends `entries` and syncs them before returning (one sync per
    /// call: callers group a batch into one call).
    pub fn append(&mut self, entries: &[Entry], replica: &Replica) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            encode_record(&mut buf, e)?;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.records += entries.len();
        // Compact once the log is mostly superseded records.
        if self.records > 4 * replica.len() + 4096 {
            self.compact(replica)?;
        }
        Ok(())
    }

    fn compact(&mut self, replica: &Replica) -> io::Result<()> {
        let tmp = self.dir.join(format!("{LOCKS_FILE}.tmp"));
        let mut buf = Vec::new();
        for e in replica.entries() {
            encode_record(&mut buf, e)?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&buf)?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(LOCKS_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(LOCKS_FILE))?;
        self.records = replica.len();
        Ok(())
    }
}

/// One group-commit job: entries to make durable, and what to do once
/// they are (`true`) or cannot be (`false`).
pub struct PersistJob {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Called on the persister's thread after the sync.
    pub done: Box<dyn FnOnce(bool) + Send>,
}

/// Group commit of lock entries (E8). On real nodes a thread of its own
/// takes every job queued, appends them all, syncs once, then calls each
/// job's `done`: the driver never waits for a disk. In simulations the
/// sync happens inline, so virtual time stays meaningful. After a failed
/// sync it acks nothing more (it logs why): acking what is not durable
/// could lose a grant in a restart.
pub struct LockPersister {
    state: std::sync::Arc<std::sync::Mutex<PersistState>>,
    /// The group-commit thread; `None` in simulations.
    thread: Option<std::sync::mpsc::Sender<PersistJob>>,
}

struct PersistState {
    store: LockStore,
    replica: Replica,
    failed: bool,
}

impl PersistState {
    fn sync(&mut self, entries: Vec<Entry>) -> bool {
        self.failed = !sync(&mut self.store, &mut self.replica, entries, self.failed);
        !self.failed
    }
}

impl LockPersister {
    /// Starts the thread over an opened store and the copy it replayed.
    pub fn start(store: LockStore, replica: Replica) -> io::Result<LockPersister> {
        let mut p = LockPersister::inline(store, replica);
        let (tx, rx) = std::sync::mpsc::channel::<PersistJob>();
        let state = p.state.clone();
        std::thread::Builder::new()
            .name("coordmesh-lock-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                    }
                    let all: Vec<Entry> = jobs.iter().flat_map(|j| j.entries.clone()).collect();
                    let ok = state.lock().unwrap_or_else(|e| e.into_inner()).sync(all);
                    for job in jobs {
                        (job.done)(ok);
                    }
                }
            })?;
        p.thread = Some(tx);
        Ok(p)
    }

    /// Persists inline only, on the caller's thread (simulations).
    pub fn inline(store: LockStore, replica: Replica) -> LockPersister {
        LockPersister {
            state: std::sync::Arc::new(std::sync::Mutex::new(PersistState {
                store,
                replica,
                failed: false,
            })),
            thread: None,
        }
    }

    /// Queues `entries` for the group-commit thread (inline without
    /// one); `done` runs once they are durable (or not).
    pub fn persist(&self, entries: Vec<Entry>, done: impl FnOnce(bool) + Send + 'static) {
        match &self.thread {
            Some(tx) => {
                let job = PersistJob {
                    entries,
                    done: Box::new(done),
                };
                if let Err(std::sync::mpsc::SendError(job)) = tx.send(job) {
                    (job.done)(false);
                }
            }
            None => done(self.persist_now(entries)),
        }
    }

    /// Makes `entries` durable on the caller's thread, now: for a voter
    /// that only follows, whose acks wait on the disk anyway (no thread
    /// hand-off on its path).
    pub fn persist_now(&self, entries: Vec<Entry>) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync(entries)
    }
}

/// Appends what changes the copy and syncs; false once anything failed.
fn sync(store: &mut LockStore, replica: &mut Replica, entries: Vec<Entry>, failed: bool) -> bool {
    if failed {
        return false;
    }
    let changed = replica.merge_all(entries);
    match store.append(&changed, replica) {
        Ok(()) => true,
        Err(err) => {
            tracing::error!(%err, "cannot persist lock entries; this node acks no more of them");
            false
        }
    }
}

fn encode_record(buf: &mut Vec<u8>, entry: &Entry) -> io::Result<()> {
    let body = postcard::to_stdvec(entry).map_err(io::Error::other)?;
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeId;
    use crate::locks::EntryState;

    fn held(name: &str, token: u64) -> Entry {
        Entry {
            name: name.into(),
            token,
            state: EntryState::held(1000, NodeId(1), None, 0),
        }
    }

    #[test]
    fn lock_log_replays_survives_a_torn_tail_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut replica) = LockStore::open(dir.path()).unwrap();
        assert!(replica.is_empty());
        let batch = vec![held("a", 1), held("b", 2)];
        replica.merge_all(batch.clone());
        store.append(&batch, &replica).unwrap();
        let free = Entry {
            name: "a".into(),
            token: 1,
            state: EntryState::Free { request_id: None },
        };
        replica.merge(free.clone());
        store.append(&[free], &replica).unwrap();
        drop(store);
        // A crash mid-append leaves part of a record.
        let path = dir.path().join(LOCKS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (mut store, again) = LockStore::open(dir.path()).unwrap();
        assert_eq!(again, replica);
        for i in 0..5000 {
            let e = held("c", 10 + i);
            replica.merge(e.clone());
            store.append(&[e], &replica).unwrap();
        }
        assert!(store.records < 5000, "compacted: {}", store.records);
        let (_, again) = LockStore::open(dir.path()).unwrap();
        assert_eq!(again, replica);
    }

    #[test]
    fn promise_survives_reopen_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, promised) = PromiseStore::open(dir.path()).unwrap();
        assert_eq!(promised, 0);
        store.save(41).unwrap();
        store.save(42).unwrap();
        let (_, promised) = PromiseStore::open(dir.path()).unwrap();
        assert_eq!(promised, 42);
        fs::write(dir.path().join(PROMISE_FILE), "x").unwrap();
        assert!(PromiseStore::open(dir.path()).is_err());
    }
}
