//! The idempotency records a node holds, on disk: `records.redb` in the
//! data directory, a redb table from key to the record's postcard
//! encoding, so that a restarted node replays from its own records at
//! once and catches up on the rest by anti-entropy.
//!
//! Owns: the file, its table, the thread that writes it (every change
//! queued while a transaction commits goes into the next one; the file
//! synced at most once a second), and the thread
//! that loads it at start. The node serves from the first moment: while
//! the loader fills the store, a request that misses reads its key from
//! the file ([`Backing`]). Must not
//! decide what a record is worth: the node's `idempotency::Store` merges,
//! and hands over each change it made, in the order it made them.
//!
//! A record is committed (I2) because a majority of voters held its
//! completion in their lock logs. A voter then settles the completion
//! out of its lock log into this file, once the file has synced it
//! (PROTOCOL.md, "Idempotency" 8): from then on the file holds it for
//! the voter. A file redb finds corrupt is set aside, the node starts
//! with none and marks its records incomplete (`records.incomplete`)
//! until it has filled them in again from a majority of voters.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, TableDefinition};

use crate::idempotency::{
    Backing, Change, DISK_QUEUE_BYTES_MAX, DiskChanges, Record, Store, disk_queue,
};
use crate::replication::Merge;

/// The file's name in the data directory.
pub const RECORDS_FILE: &str = "records.redb";
/// Key bytes to the record's postcard encoding.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Changes one transaction takes at most, so a burst is written in
/// several commits rather than one that holds the rest back.
const CHANGES_PER_COMMIT_MAX: usize = 16_384;
/// Records merged into the store at a time while loading: each chunk
/// holds the store's lock, which requests wait for.
const LOAD_CHUNK: usize = 1_024;
/// How long the writer waits for more changes after a first one before
/// it commits them together.
const LINGER: Duration = Duration::from_millis(100);
/// How often the writer syncs the file at most: a completion leaves the
/// lock copies only once synced here, and the copies travel whole with
/// a promise, so this bounds them under load (with the settle sweep's
/// interval) against the sync's cost beside the lock log's.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// redb's page cache: the file is read once, at start (the records are
/// then in memory), and written after; a large cache would hold a second
/// copy of them (redb's default is 1 GiB).
const CACHE_BYTES: usize = 16 << 20;

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// True for what redb reports of a file that is not a database it reads
/// (garbage, a torn header, an older format), as opposed to a disk it
/// cannot use.
fn unreadable(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::UpgradeRequired(_) => true,
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => matches!(
            io.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// The records file of a data directory.
#[derive(Debug)]
pub struct RecordsFile {
    db: Database,
    path: PathBuf,
}

/// What opening the file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Records taken into the store.
    pub records: usize,
    /// Records left out: expired, or unreadable (each named in `problems`).
    pub dropped: usize,
    /// What was wrong, for the log.
    pub problems: Vec<String>,
}

impl RecordsFile {
    /// Opens (or creates) the records file in `dir`. A file redb finds
    /// corrupt (or of a format it no longer reads) is renamed aside
    /// (`records.redb.unreadable`, replacing an older one) and a new one
    /// started: the problem is in `problems`. Any other failure (the
    /// file open elsewhere, a disk error) is an error.
    pub fn open(dir: &Path, problems: &mut Vec<String>) -> io::Result<RecordsFile> {
        let path = dir.join(RECORDS_FILE);
        let create = |path: &Path| Database::builder().set_cache_size(CACHE_BYTES).create(path);
        let db = match create(&path) {
            Ok(db) => db,
            Err(e) if unreadable(&e) => {
                let aside = dir.join(format!("{RECORDS_FILE}.unreadable"));
                problems.push(format!(
                    "{} could not be opened ({e}); moved to {} and started empty: the records come back from the peers",
                    path.display(),
                    aside.display()
                ));
                std::fs::rename(&path, &aside)?;
                create(&path).map_err(other)?
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(other(format!(
                    "{} is open in another process or node",
                    path.display()
                )));
            }
            Err(e) => return Err(other(format!("{}: {e}", path.display()))),
        };
        let tx = db.begin_write().map_err(other)?;
        tx.open_table(TABLE).map_err(other)?;
        tx.commit().map_err(other)?;
        Ok(RecordsFile { db, path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Merges every record of the file into `store` (which reads through
    /// to the file meanwhile, [`Store::start_loading`]), leaving out those
    /// expired at wall-clock `now_ms` or over the size limits (the store
    /// refuses them) and those that do not decode, which are deleted from
    /// the file unless a record of their key arrived meanwhile. Stops
    /// early if the store is closed; ends the store's loading however it
    /// ends, a panic included.
    pub fn load_into(&self, store: &Store, now_ms: u64) -> io::Result<Loaded> {
        let _finish = store.loading_guard();
        let loaded = self.load_chunks(store, now_ms);
        // A record that does not decode, or a load that stopped, may be
        // a completion a lock copy settled here: lost, before the store
        // leaves its loading state (an exchange is answered only after).
        if !matches!(&loaded, Ok(l) if l.problems.is_empty()) {
            store.mark_lost();
        }
        loaded
    }

    fn load_chunks(&self, store: &Store, now_ms: u64) -> io::Result<Loaded> {
        let mut loaded = Loaded::default();
        let mut gone: Vec<Vec<u8>> = Vec::new();
        let tx = self.db.begin_read().map_err(other)?;
        let table = tx.open_table(TABLE).map_err(other)?;
        let mut chunk = Vec::with_capacity(LOAD_CHUNK);
        for item in table.iter().map_err(other)? {
            let (key, value) = item.map_err(other)?;
            match postcard::from_bytes::<Record>(value.value()) {
                Ok(record) if record.key.as_bytes() == key.value() => chunk.push(record),
                _ => {
                    if loaded.problems.len() < 10 {
                        loaded.problems.push(format!(
                            "{}: the record of key {:?} does not decode; dropped",
                            self.path.display(),
                            String::from_utf8_lossy(key.value())
                        ));
                    }
                    gone.push(key.value().to_vec());
                }
            }
            if chunk.len() == LOAD_CHUNK {
                if !store.is_loading() {
                    return Ok(loaded);
                }
                load_chunk(store, &mut chunk, now_ms, &mut loaded, &mut gone);
            }
        }
        load_chunk(store, &mut chunk, now_ms, &mut loaded, &mut gone);
        if !loaded.problems.is_empty() {
            // Marked before the records that do not decode are deleted:
            // a restart in between must not find a clean file.
            store.mark_lost();
            if let Some(dir) = self.path.parent() {
                super::mark_records_incomplete(dir, true)?;
            }
        }
        loaded.dropped = store.drop_unheld(gone);
        Ok(loaded)
    }

    /// Applies `changes`, in order, in one durable transaction. A put
    /// keeps the file's record of its key if that one ranks higher (the
    /// store may have been sent a lower one while the file loaded, before
    /// the higher one on disk reached memory).
    pub fn apply(&self, changes: &[Change]) -> io::Result<()> {
        self.commit(changes, true)
    }

    /// Applies `changes` in one transaction, synced to disk if `sync`
    /// (with what earlier unsynced ones wrote); otherwise left to the
    /// next synced one.
    fn commit(&self, changes: &[Change], sync: bool) -> io::Result<()> {
        let mut tx = self.db.begin_write().map_err(other)?;
        if sync {
            tx.set_durability(redb::Durability::Immediate);
            // What a crash needs to reopen quickly is saved with each
            // synced commit.
            tx.set_quick_repair(true);
        } else {
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut table = tx.open_table(TABLE).map_err(other)?;
            for change in changes {
                match change {
                    Change::Put(record) => {
                        let held = table
                            .get(record.key.as_bytes())
                            .map_err(other)?
                            .and_then(|v| postcard::from_bytes::<Record>(v.value()).ok());
                        if held.is_some_and(|h| h.rank() >= record.rank()) {
                            continue;
                        }
                        let bytes = postcard::to_allocvec(record).map_err(other)?;
                        table
                            .insert(record.key.as_bytes(), bytes.as_slice())
                            .map_err(other)?;
                    }
                    Change::Drop(keys) => {
                        for key in keys {
                            table.remove(key.as_slice()).map_err(other)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(other)
    }

    /// The writer: applies what arrives on `changes` until every sender
    /// is gone, all that queued meanwhile in each transaction, and syncs
    /// the file at most every [`SYNC_INTERVAL`] (and when the senders are
    /// gone): a sync per commit competed for the disk with the lock log's,
    /// whose syncs the answers wait for. Completions settle out of the
    /// lock copies only once synced here, so a crash loses nothing the
    /// copies still need. After a failed write it stops (redb refuses
    /// every later one): the store then reports it lossy.
    pub fn spawn_writer(self: Arc<Self>, mut changes: DiskChanges) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("records-writer".into())
            .spawn(move || {
                let mut synced = Instant::now();
                let mut unsynced = false;
                loop {
                    let first = match changes.recv_timeout(SYNC_INTERVAL) {
                        Ok(c) => Some(c),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    let mut batch: Vec<Change> = first.into_iter().collect();
                    // What arrives within the linger joins the batch: a
                    // commit a change costs the node's cores as much as
                    // its disk.
                    let until = Instant::now() + LINGER;
                    while !batch.is_empty() && batch.len() < CHANGES_PER_COMMIT_MAX {
                        match changes.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if batch.is_empty() && !unsynced {
                        continue;
                    }
                    let sync = synced.elapsed() >= SYNC_INTERVAL;
                    if let Err(e) = self.commit(&batch, sync) {
                        tracing::error!(path = %self.path.display(), error = %e, "records no longer written to disk until the node restarts");
                        return;
                    }
                    if sync {
                        synced = Instant::now();
                        changes.mark_synced();
                    }
                    unsynced = !sync;
                }
                if unsynced && let Err(e) = self.commit(&[], true) {
                    tracing::error!(path = %self.path.display(), error = %e, "the records file's last writes not synced");
                }
            })
    }

    fn read_record(&self, key: &str) -> io::Result<Option<Record>> {
        let tx = self.db.begin_read().map_err(other)?;
        let table = tx.open_table(TABLE).map_err(other)?;
        let Some(value) = table.get(key.as_bytes()).map_err(other)? else {
            return Ok(None);
        };
        Ok(postcard::from_bytes(value.value()).ok())
    }
}

/// A request that misses while the file loads reads its key here.
impl Backing for RecordsFile {
    fn read(&self, key: &str) -> Option<Record> {
        match self.read_record(key) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "a record could not be read");
                None
            }
        }
    }
}

/// Merges one chunk read from the file; expired records count as gone.
fn load_chunk(
    store: &Store,
    chunk: &mut Vec<Record>,
    now_ms: u64,
    loaded: &mut Loaded,
    gone: &mut Vec<Vec<u8>>,
) {
    let taken = store.load(chunk, now_ms);
    loaded.records += taken;
    if taken < chunk.len() {
        // Those not taken: expired, over the size limits, or outranked
        // by what arrived since (those stay).
        gone.extend(
            chunk
                .iter()
                .filter(|r| r.is_expired(now_ms, crate::idempotency::SKEW) || r.check().is_err())
                .map(|r| r.key.as_bytes().to_vec()),
        );
    }
    chunk.clear();
}

/// A node's records on its data directory.
#[derive(Debug)]
pub struct Opened {
    /// The store: it serves at once, reading through to the file while
    /// the loader fills it.
    pub store: Arc<Store>,
    /// The writer's thread; it ends once the store is closed.
    pub writer: JoinHandle<()>,
    /// The loader's thread, with what it found.
    pub loader: JoinHandle<io::Result<Loaded>>,
    /// Problems met opening the file (it was set aside).
    pub problems: Vec<String>,
}

/// Opens the records file of `dir`, and starts a store on it: its
/// writer, and its loader, which takes in the records not expired at
/// wall-clock `now_ms`. `expected`: the data directory was initialized
/// before, so its records file should be there (one missing is lost).
pub fn open_store(dir: &Path, now_ms: u64, expected: bool) -> io::Result<Opened> {
    let mut problems = Vec::new();
    let existed = dir.join(RECORDS_FILE).exists();
    if expected && !existed {
        problems.push(format!(
            "{} is missing from an initialized data directory; started empty",
            dir.join(RECORDS_FILE).display()
        ));
    }
    let file = Arc::new(RecordsFile::open(dir, &mut problems)?);
    let store = Arc::new(Store::default());
    // A file set aside held records this node's lock copy may have
    // settled into it: marked (durably, so a restart knows it too) until
    // they are filled in again from a majority.
    if !problems.is_empty() || super::records_incomplete(dir) {
        super::mark_records_incomplete(dir, true)?;
        store.mark_lost();
    }
    let (tx, rx) = disk_queue(DISK_QUEUE_BYTES_MAX);
    store.attach_disk(tx);
    store.start_loading(file.clone());
    let writer = file.clone().spawn_writer(rx)?;
    let loader = {
        let store = store.clone();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("records-loader".into())
            .spawn(move || {
                let loaded = file.load_into(&store, now_ms);
                if !store.intact()
                    && let Err(e) = super::mark_records_incomplete(&dir, true)
                {
                    tracing::error!(error = %e, "the records could not be marked incomplete");
                }
                match &loaded {
                    Ok(loaded) => {
                        for problem in &loaded.problems {
                            tracing::warn!("{problem}");
                        }
                        tracing::info!(
                            records = loaded.records,
                            dropped = loaded.dropped,
                            "idempotency records loaded from the data directory"
                        );
                    }
                    Err(e) => {
                        tracing::error!(
                            path = %file.path().display(),
                            error = %e,
                            "the records file could not be read to the end; the rest come from the peers"
                        );
                    }
                }
                loaded
            })?
    };
    Ok(Opened {
        store,
        writer,
        loader,
        problems,
    })
}

#[cfg(test)]
mod tests;
