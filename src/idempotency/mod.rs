//! Idempotency: a retried operation runs once and every retry gets the
//! first result (DESIGN.md "Idempotency", rules I1–I7; PROTOCOL.md lists
//! each with its test).
//!
//! - [`record`]: one completed operation per key, a register merged as a
//!   CRDT on every node, with its expiry (I6) and size limits.
//! - [`reconcile`]: anti-entropy between two replicas, whose bytes grow
//!   with the records that differ (an IBLT sized by an estimate of the difference).

pub mod client;
#[cfg(feature = "sim")]
pub mod history;
pub mod reconcile;
pub mod record;

pub use client::{Begun, ClaimInfo, IdempotencyError, Idempotent, Outcome};
pub use record::{Lookup, Record, RecordError, Records};

use std::sync::Mutex;
use std::time::Duration;

use crate::ids::Token;
use crate::locks::ClaimFacts;

/// How far apart two nodes' wall clocks may be: a replica drops a record
/// this long after its expiry (I6), so a peer whose clock runs behind
/// does not send it back as new.
pub const SKEW: Duration = crate::locks::claim::RECORD_SKEW;

/// A change a store made to its records, handed to its writer (the
/// data directory's records file) in the order made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This record is now the key's.
    Put(Record),
    /// These keys' records expired.
    Drop(Vec<Vec<u8>>),
}

impl Change {
    /// What the change holds in memory while queued, about.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Change::Put(r) => r.weight(),
            Change::Drop(keys) => keys.iter().map(|k| k.len() + 24).sum(),
        }
    }
}

/// The most bytes of changes queued for a store's writer. Past it a
/// change is not written (counted, logged): the records file is a cache
/// the node restarts from, not part of any rule, and a record missing
/// from it comes back from the peers (a dropped record left in it is
/// dropped at the next load), while a queue without a bound would grow
/// with every record a slow disk cannot keep up with.
pub const DISK_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The store's end of the queue to its writer, bounded by
/// [`DISK_QUEUE_BYTES_MAX`] bytes.
#[derive(Debug)]
pub struct DiskQueue {
    tx: std::sync::mpsc::Sender<Change>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    /// Changes not written since the queue was full.
    skipped: u64,
    /// Changes handed to the writer, ever.
    sent: u64,
    /// How many of them the writer has synced to disk.
    synced: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The writer's end of the queue.
#[derive(Debug)]
pub struct DiskChanges {
    rx: std::sync::mpsc::Receiver<Change>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Changes taken off the queue, ever (in the order sent).
    received: u64,
    synced: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// How durable a store's records are, for settling completions out of
/// the lock copies (PROTOCOL.md, "Idempotency" 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// No records file: the records live as long as the node's copies,
    /// in memory.
    Memory,
    /// A records file: every change made before `sent` did is on disk
    /// once `synced` reaches it.
    Disk {
        /// Changes handed to the writer so far.
        sent: u64,
        /// Changes the writer has synced.
        synced: u64,
    },
    /// A change was not written (the queue was full) or the writer
    /// stopped: no record can be known durable any more in this life.
    Lossy,
    /// The writer was let go of (the node is stopping).
    Closed,
}

/// A queue of changes from a store to its writer, holding at most
/// `max_bytes` of them.
pub fn disk_queue(max_bytes: usize) -> (DiskQueue, DiskChanges) {
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let synced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    (
        DiskQueue {
            tx,
            queued: queued.clone(),
            max: max_bytes,
            skipped: 0,
            sent: 0,
            synced: synced.clone(),
        },
        DiskChanges {
            rx,
            queued,
            received: 0,
            synced,
        },
    )
}

impl DiskQueue {
    /// Queues `change`, unless the queue is full: then it is counted and
    /// not written (logged at the first of a run).
    fn send(&mut self, change: Change) {
        use std::sync::atomic::Ordering::Relaxed;
        let weight = change.weight();
        if self.queued.load(Relaxed) + weight > self.max {
            if self.skipped == 0 {
                tracing::warn!(
                    queued_bytes = self.queued.load(Relaxed),
                    "the records file falls behind: changes are not written to it until its writer catches up (the records are held in memory and by the peers)"
                );
            }
            self.skipped += 1;
            return;
        }
        self.queued.fetch_add(weight, Relaxed);
        // A writer that stopped (its thread gone) leaves the records in
        // memory only: logged by the writer.
        if self.tx.send(change).is_err() {
            self.queued.fetch_sub(weight, Relaxed);
            self.skipped += 1;
            return;
        }
        self.sent += 1;
    }

    fn durability(&self) -> Durability {
        if self.skipped > 0 {
            return Durability::Lossy;
        }
        Durability::Disk {
            sent: self.sent,
            synced: self.synced.load(std::sync::atomic::Ordering::Acquire),
        }
    }
}

impl DiskChanges {
    /// The next change, waiting at most `timeout`; `Disconnected` once
    /// the store let go of the queue and it is empty.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Change, std::sync::mpsc::RecvTimeoutError> {
        let change = self.rx.recv_timeout(timeout)?;
        self.queued
            .fetch_sub(change.weight(), std::sync::atomic::Ordering::Relaxed);
        self.received += 1;
        Ok(change)
    }

    /// Every change received so far is on disk, synced: the store's
    /// [`Store::durability`] says so from now on. Called only after a
    /// sync that followed their writes.
    pub fn mark_synced(&self) {
        self.synced
            .store(self.received, std::sync::atomic::Ordering::Release);
    }
}

/// The offset of a store whose clock was never measured.
const UNMEASURED: i64 = i64::MIN;

/// A node's records, shared by its driver (commit notices), its RPC
/// service (notices from the leader) and its API (local replays).
///
/// It answers nothing from its records until its node has measured its
/// wall clock against the leader's (I6): a node started with a clock far
/// behind would otherwise replay, from its records file, a record the
/// leader has expired and whose key it may have claimed again since.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    /// Records this node held may be missing: its records file was set
    /// aside or not read to the end (PROTOCOL.md, "Idempotency" 8).
    lost: std::sync::atomic::AtomicBool,
    /// This node's wall clock's offset from the leader's, last measured,
    /// in milliseconds ([`UNMEASURED`] before the first measurement).
    offset_ms: std::sync::atomic::AtomicI64,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            inner: Mutex::default(),
            lost: std::sync::atomic::AtomicBool::new(false),
            offset_ms: std::sync::atomic::AtomicI64::new(UNMEASURED),
        }
    }
}

/// Records a store has yet to take in from its data directory while
/// they load in the background: read one at a time when a request
/// misses, so a restarted node serves them from the start.
pub trait Backing: Send + Sync + std::fmt::Debug {
    /// The stored record of `key`, if any (expired or not).
    fn read(&self, key: &str) -> Option<Record>;
}

/// See [`Store::loading_guard`].
#[derive(Debug)]
pub struct LoadingGuard<'a>(&'a Store);

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        self.0.finish_loading();
    }
}

#[derive(Debug, Default)]
struct Inner {
    records: Records,
    /// Where changes go to be written, with a data directory. Sent under
    /// the same lock as the change was made, so the writer sees them in
    /// order.
    disk: Option<DiskQueue>,
    /// The records file while it loads.
    loading: Option<std::sync::Arc<dyn Backing>>,
    /// The writer was let go of ([`Store::close_disk`]).
    closed: bool,
}

impl Inner {
    fn merge(&mut self, record: &Record, now_ms: u64) -> bool {
        let news = self.records.merge(record, now_ms, SKEW);
        if news && let Some(disk) = &mut self.disk {
            disk.send(Change::Put(record.clone()));
        }
        news
    }
}

impl Store {
    /// Hands every later change to `disk` (the writer of the records
    /// file this store was loaded from).
    pub fn attach_disk(&self, disk: DiskQueue) {
        self.lock().disk = Some(disk);
    }

    /// Stops handing changes to the writer, which then finishes what it
    /// holds and ends, and stops a load under way.
    pub fn close_disk(&self) {
        let mut inner = self.lock();
        inner.closed = inner.closed || inner.disk.is_some();
        inner.disk = None;
        inner.loading = None;
    }

    /// The records of `backing` are loading: until the load's guard
    /// ([`Store::loading_guard`]) is dropped, a request that finds no record here
    /// reads it there.
    pub fn start_loading(&self, backing: std::sync::Arc<dyn Backing>) {
        self.lock().loading = Some(backing);
    }

    /// True while the records file loads (and the store was not closed).
    pub fn is_loading(&self) -> bool {
        self.lock().loading.is_some()
    }

    /// The load is done.
    fn finish_loading(&self) {
        self.lock().loading = None;
    }

    /// Ends the loading when dropped, however the load ends (a panic
    /// included): a store left loading would read through for ever and
    /// never take part in anti-entropy.
    pub fn loading_guard(&self) -> LoadingGuard<'_> {
        LoadingGuard(self)
    }

    /// Merges records read from the records file (not written back to
    /// it); how many were news.
    pub fn load(&self, records: &[Record], now_ms: u64) -> usize {
        let mut inner = self.lock();
        records
            .iter()
            .filter(|r| inner.records.merge(r, now_ms, SKEW))
            .count()
    }

    /// Deletes from the records file the keys read from it that were not
    /// taken (expired, unreadable), unless a record of the key arrived
    /// meanwhile: decided under the lock the changes are sent under, so a
    /// record written since is never deleted.
    /// How many it deletes.
    pub fn drop_unheld(&self, keys: Vec<Vec<u8>>) -> usize {
        let mut inner = self.lock();
        let gone: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| !inner.records.holds(k))
            .collect();
        let n = gone.len();
        if n > 0
            && let Some(disk) = &mut inner.disk
        {
            disk.send(Change::Drop(gone));
        }
        n
    }

    /// While the records file loads: the stored record of `key`, taken in
    /// here first (true if there was one to read).
    fn read_through(&self, key: &str, now_ms: u64) -> bool {
        let Some(backing) = self.lock().loading.clone() else {
            return false;
        };
        // Read without the lock: the disk is slower than the memory.
        let Some(record) = backing.read(key) else {
            return false;
        };
        if record.key != key || record.check().is_err() {
            return false;
        }
        self.lock().records.merge(&record, now_ms, SKEW);
        true
    }

    /// Takes a committed completion in (from the leader's commit notice
    /// or its answer to a begin); true if it was news.
    pub fn learn(&self, key: &str, claim: Token, facts: &ClaimFacts, now_ms: u64) -> bool {
        let Some(record) = Record::committed(key, claim, facts) else {
            return false;
        };
        if record.check().is_err() {
            return false;
        }
        self.lock().merge(&record, now_ms)
    }

    /// What a request of `fingerprint` for `key` finds here at `now_ms`.
    /// A record is replayed until its expiry (the leader claims the key
    /// again from then on) and kept [`SKEW`] longer.
    /// Nothing is found before the clock is measured.
    pub fn lookup(&self, key: &str, fingerprint: &[u8], now_ms: u64) -> Lookup {
        if !self.measured() {
            return Lookup::Unknown;
        }
        let found = self
            .lock()
            .records
            .lookup(key, fingerprint, now_ms, Duration::ZERO);
        if found == Lookup::Unknown && self.read_through(key, now_ms) {
            return self
                .lock()
                .records
                .lookup(key, fingerprint, now_ms, Duration::ZERO);
        }
        found
    }

    /// The committed record of `key`, unless expired at `now_ms`; none
    /// before the clock is measured.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<Record> {
        if !self.measured() {
            return None;
        }
        self.committed(key, now_ms)
    }

    /// The committed record of `key` unless expired at `now_ms`, the
    /// clock measured or not: what the leader, whose clock is the
    /// reference, answers a begin or a completion with.
    pub fn committed(&self, key: &str, now_ms: u64) -> Option<Record> {
        let get = || {
            self.lock()
                .records
                .get(key, now_ms, Duration::ZERO)
                .filter(|r| r.committed)
        };
        get().or_else(|| self.read_through(key, now_ms).then(get).flatten())
    }

    /// True if this store holds a committed record of `key` written
    /// under `claim` or a later claim, expired or not (a completion of
    /// that claim is settled here once it is also durable).
    pub fn holds_completion(&self, key: &str, claim: Token, now_ms: u64) -> bool {
        let held = || {
            self.lock()
                .records
                .get(key, 0, Duration::ZERO)
                .is_some_and(|r| r.committed && r.claim >= claim)
        };
        held() || (self.read_through(key, now_ms) && held())
    }

    /// How durable the records are now ([`Durability`]).
    pub fn durability(&self) -> Durability {
        let inner = self.lock();
        match &inner.disk {
            _ if inner.closed => Durability::Closed,
            None => Durability::Memory,
            Some(q) => q.durability(),
        }
    }

    /// Drops the records expired at `now_ms` (plus [`SKEW`]); how many.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut inner = self.lock();
        let gone = inner.records.expire(now_ms, SKEW);
        let n = gone.len();
        if n > 0
            && let Some(disk) = &mut inner.disk
        {
            disk.send(Change::Drop(gone));
        }
        n
    }

    /// Every record held at `now_ms`, by key, less those that may be
    /// dropped.
    pub fn snapshot(&self, now_ms: u64) -> Vec<Record> {
        self.lock()
            .records
            .records()
            .filter(|r| !r.is_expired(now_ms, SKEW))
            .collect()
    }

    /// The ids of the records to reconcile at `now_ms`: every one held,
    /// less those that may be dropped.
    pub fn ids(&self, now_ms: u64) -> Vec<u64> {
        self.lock().records.ids(now_ms, SKEW)
    }

    /// This store at wall-clock `now_ms`, as one side of an anti-entropy
    /// exchange sees it (expired records left out).
    pub fn at(&self, now_ms: u64) -> StoreAt<'_> {
        StoreAt {
            store: self,
            now_ms,
        }
    }

    /// Merges records a peer sent (anti-entropy): each checked, expired
    /// ones refused; how many were news.
    pub fn merge_all(&self, records: Vec<Record>, now_ms: u64) -> usize {
        let mut mine = self.lock();
        records
            .into_iter()
            .filter(|r| r.check().is_ok())
            .filter(|r| mine.merge(r, now_ms))
            .count()
    }

    /// Changes not written to the records file because its queue was
    /// full ([`DISK_QUEUE_BYTES_MAX`]).
    pub fn disk_skipped(&self) -> u64 {
        self.lock().disk.as_ref().map_or(0, |d| d.skipped)
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.lock().records.is_empty()
    }

    /// Records this node held may be missing from this store (its
    /// records file was set aside or not read to the end).
    pub fn mark_lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The records were filled in again from a majority of voters.
    pub fn mark_found(&self) {
        self.lost.store(false, std::sync::atomic::Ordering::Release);
    }

    /// False once [`Store::mark_lost`] was called.
    pub fn intact(&self) -> bool {
        !self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Notes this node's wall clock's offset from the leader's (ahead is positive).
    pub fn set_offset(&self, ms: i64) {
        self.offset_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The offset last measured if it is beyond `S/2` (I6): this node
    /// then answers "unavailable" for idempotency, since it would drop,
    /// replay or spread records on a clock the others do not share.
    pub fn skewed(&self) -> Option<i64> {
        let ms = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        (ms != UNMEASURED && ms.unsigned_abs() > SKEW.as_millis() as u64 / 2).then_some(ms)
    }

    /// True once this node's clock was measured against the leader's.
    pub fn measured(&self) -> bool {
        self.offset_ms.load(std::sync::atomic::Ordering::Relaxed) != UNMEASURED
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves records that are each
        // whole (merges replace one record at a time): go on with them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`Store`] at one wall-clock instant: one side of an anti-entropy
/// exchange ([`reconcile::Side`]).
#[derive(Debug, Clone, Copy)]
pub struct StoreAt<'a> {
    store: &'a Store,
    now_ms: u64,
}

impl reconcile::Side for StoreAt<'_> {
    fn is_loading(&self) -> bool {
        self.store.is_loading()
    }

    fn ids(&self) -> Vec<u64> {
        self.store.ids(self.now_ms)
    }

    fn ids_between(&self, range: &reconcile::KeyRange) -> Vec<u64> {
        self.store.lock().records.ids_between(
            &range.after,
            range.through.as_deref(),
            self.now_ms,
            SKEW,
        )
    }

    fn page(&self, after: &[u8], max: usize) -> (Vec<u64>, Option<Vec<u8>>) {
        self.store
            .lock()
            .records
            .page(after, max, self.now_ms, SKEW)
    }

    fn fetch(
        &self,
        ids: &[u64],
        budget: usize,
        range: Option<&reconcile::KeyRange>,
    ) -> Vec<Record> {
        let range = range.map(|r| (r.after.as_slice(), r.through.as_deref()));
        self.store
            .lock()
            .records
            .fetch(ids, budget, range, self.now_ms, SKEW)
    }

    fn merge(&self, records: Vec<Record>) -> usize {
        self.store.merge_all(records, self.now_ms)
    }
}
