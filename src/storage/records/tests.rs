//! The records file: what a store held comes back after a reopen, less
//! what expired; a file that is not one, or a record that does not
//! decode, costs only those records.

use super::*;
use crate::ids::Token;

fn record(key: &str, claim: u64, expires_at_ms: u64) -> Record {
    Record {
        key: key.into(),
        claim: Token(claim),
        fingerprint: b"fp".to_vec(),
        recovered: claim.is_multiple_of(2),
        expires_at_ms,
        result: format!("result of {key}").into_bytes(),
        committed: true,
    }
}

/// Opens the records of `dir` and waits for the load: the store, its
/// writer, what the load found (problems opening the file first).
fn open_store(
    dir: &std::path::Path,
    now_ms: u64,
) -> io::Result<(Arc<Store>, JoinHandle<()>, Loaded)> {
    let opened = super::open_store(dir, now_ms, false)?;
    let mut loaded = opened.loader.join().expect("the loader ends")?;
    loaded.problems.splice(0..0, opened.problems);
    assert!(!opened.store.is_loading());
    // As if the node had measured its clock against the leader's (the
    // store answers nothing before).
    opened.store.set_offset(0);
    Ok((opened.store, opened.writer, loaded))
}

/// The records file of `dir`, opened with no problem to report.
fn file_in(dir: &std::path::Path) -> RecordsFile {
    let mut problems = Vec::new();
    let file = RecordsFile::open(dir, &mut problems).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    file
}

/// Closes a store as a node's shutdown does: no more changes, and the
/// writer done with those it had.
fn close(store: Arc<Store>, writer: JoinHandle<()>) {
    store.close_disk();
    drop(store);
    writer.join().expect("the writer ends");
}

#[test]
fn records_come_back_after_a_reopen_less_the_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!(loaded, Loaded::default());
    assert_eq!(
        store.merge_all(
            vec![
                record("a", 1, 1_000_000),
                record("b", 2, 1_000_000),
                record("c", 3, 10),
            ],
            0
        ),
        3
    );
    // A later record of a key replaces the first on disk too.
    assert_eq!(store.merge_all(vec![record("a", 4, 2_000_000)], 0), 1);
    let before = store.snapshot(0);
    close(store, writer);

    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!(loaded.records, 3);
    assert_eq!(store.snapshot(0), before);
    // "c" expires (10 + the skew bound); its drop reaches the file.
    let past_c = 10 + crate::idempotency::SKEW.as_millis() as u64;
    assert_eq!(store.expire(past_c), 1);
    close(store, writer);

    let (store, writer, loaded) = open_store(dir.path(), past_c).unwrap();
    assert_eq!((loaded.records, loaded.dropped), (2, 0));
    let keys: Vec<String> = store.snapshot(past_c).into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(store.get("a", past_c).map(|r| r.claim), Some(Token(4)));
    close(store, writer);

    // Opened once every record has expired: none is taken, and the
    // file is emptied of them.
    let late = 3_000_000;
    let (store, writer, loaded) = open_store(dir.path(), late).unwrap();
    assert_eq!((loaded.records, loaded.dropped), (0, 2));
    assert!(store.is_empty());
    close(store, writer);
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!((loaded.records, loaded.dropped), (0, 0));
    close(store, writer);
}

#[test]
fn a_file_that_is_not_one_is_set_aside_and_the_node_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(RECORDS_FILE), vec![0xa5; 8192]).unwrap();
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert!(store.is_empty());
    assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
    assert!(
        dir.path()
            .join(format!("{RECORDS_FILE}.unreadable"))
            .exists()
    );
    // The records it held may be gone: marked, durably, until they are
    // filled in again from a majority.
    assert!(!store.intact());
    assert!(crate::storage::records_incomplete(dir.path()));
    store.merge_all(vec![record("a", 1, 1_000_000)], 0);
    close(store, writer);
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!(loaded.records, 1);
    assert!(!store.intact(), "still marked after a restart");
    close(store, writer);
    crate::storage::mark_records_incomplete(dir.path(), false).unwrap();
    let (store, writer, _) = open_store(dir.path(), 0).unwrap();
    assert!(store.intact());
    close(store, writer);
}

/// A completion settles out of the lock copies only once the records
/// file has synced it: the store reports the changes it sent and how
/// many of them the writer synced; a change it could not write makes
/// nothing known durable any more.
#[test]
fn the_store_knows_which_changes_the_file_has_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, _) = open_store(dir.path(), 0).unwrap();
    assert_eq!(
        store.durability(),
        crate::idempotency::Durability::Disk { sent: 0, synced: 0 }
    );
    store.merge_all(
        vec![record("a", 1, 1_000_000), record("b", 3, 1_000_000)],
        0,
    );
    let crate::idempotency::Durability::Disk { sent, .. } = store.durability() else {
        panic!("{:?}", store.durability())
    };
    assert_eq!(sent, 2);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !matches!(store.durability(), crate::idempotency::Durability::Disk { synced, .. } if synced >= 2)
    {
        assert!(
            std::time::Instant::now() < until,
            "{:?}",
            store.durability()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.holds_completion("a", Token(1), 0));
    assert!(!store.holds_completion("a", Token(2), 0), "a later claim");
    assert!(!store.holds_completion("c", Token(1), 0));
    close(store.clone(), writer);
    assert_eq!(
        store.durability(),
        crate::idempotency::Durability::Closed,
        "a closed writer writes nothing more"
    );
    // A store whose queue overflowed knows nothing durable.
    let full = Store::default();
    let (tx, _rx) = disk_queue(1);
    full.attach_disk(tx);
    full.merge_all(vec![record("a", 1, 1_000_000)], 0);
    assert_eq!(full.durability(), crate::idempotency::Durability::Lossy);
    // Without a records file the records last as long as the copies.
    assert_eq!(
        Store::default().durability(),
        crate::idempotency::Durability::Memory
    );
}

#[test]
fn a_record_that_does_not_decode_is_dropped_alone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let file = file_in(dir.path());
        file.apply(&[Change::Put(record("a", 1, 1_000_000))])
            .unwrap();
        let tx = file.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            table
                .insert(b"bad".as_slice(), b"\xff\xff".as_slice())
                .unwrap();
            // A record filed under a key other than its own.
            let moved = postcard::to_allocvec(&record("b", 2, 1_000_000)).unwrap();
            table.insert(b"c".as_slice(), moved.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!((loaded.records, loaded.dropped), (1, 2));
    assert_eq!(loaded.problems.len(), 2, "{:?}", loaded.problems);
    assert!(store.get("a", 0).is_some());
    // What did not decode may have been a settled completion.
    assert!(!store.intact());
    assert!(crate::storage::records_incomplete(dir.path()));
    close(store, writer);
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!(
        (loaded.records, loaded.dropped),
        (1, 0),
        "the bad ones deleted"
    );
    assert!(!store.intact(), "still marked");
    close(store, writer);
}

/// A data directory initialized before whose records file is missing
/// (deleted, or never synced) has lost its records: marked so.
#[test]
fn a_missing_records_file_of_an_initialized_directory_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let opened = super::open_store(dir.path(), 0, true).unwrap();
    assert!(!opened.problems.is_empty());
    assert!(!opened.store.intact());
    assert!(crate::storage::records_incomplete(dir.path()));
    opened.loader.join().unwrap().unwrap();
    close(opened.store, opened.writer);
    let dir = tempfile::tempdir().unwrap();
    let opened = super::open_store(dir.path(), 0, false).unwrap();
    assert!(opened.store.intact(), "a new directory has lost nothing");
    opened.loader.join().unwrap().unwrap();
    close(opened.store, opened.writer);
}

#[test]
fn a_file_open_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, _) = open_store(dir.path(), 0).unwrap();
    let again = open_store(dir.path(), 0);
    assert!(again.is_err(), "opened twice");
    close(store, writer);
}

/// While the file loads, a request that misses reads its key from the
/// file: a record, a mismatch, or nothing; and what it read stays.
#[test]
fn a_request_during_the_load_reads_through_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(file_in(dir.path()));
    let mut expired = record("old", 1, 10);
    expired.committed = true;
    file.apply(&[Change::Put(record("a", 1, 1_000_000)), Change::Put(expired)])
        .unwrap();
    let store = Store::default();
    store.start_loading(file.clone());
    assert_eq!(
        store.get("a", 0),
        None,
        "nothing before the clock is measured"
    );
    store.set_offset(0);
    assert!(store.is_empty());
    assert_eq!(
        store.get("a", 0).map(|r| r.result),
        Some(b"result of a".to_vec())
    );
    assert_eq!(store.len(), 1, "what it read stays");
    assert!(matches!(
        store.lookup("a", b"fp", 0),
        crate::idempotency::Lookup::Replay(_)
    ));
    assert_eq!(
        store.lookup("a", b"other", 0),
        crate::idempotency::Lookup::Mismatch
    );
    assert_eq!(store.get("nothing", 0), None);
    let past = 10 + crate::idempotency::SKEW.as_millis() as u64;
    assert_eq!(store.get("old", past), None, "expired on disk, not served");
    // The load ends (here, loads everything): no more reads through.
    let loaded = file.load_into(&store, past).unwrap();
    assert_eq!(
        (loaded.records, loaded.dropped),
        (0, 1),
        "\"a\" was in already"
    );
    assert!(!store.is_loading());
    drop(file);
}

/// A record that arrives while the file loads is written; one the load
/// finds expired is deleted, but not if a newer record of its key came
/// in meanwhile.
#[test]
fn what_arrives_during_the_load_is_kept_over_what_the_load_drops() {
    let dir = tempfile::tempdir().unwrap();
    {
        let file = file_in(dir.path());
        file.apply(&[Change::Put(record("k", 1, 10))]).unwrap();
    }
    let past = 10 + crate::idempotency::SKEW.as_millis() as u64;
    let file = Arc::new(file_in(dir.path()));
    let store = Arc::new(Store::default());
    store.set_offset(0);
    let (tx, rx) = crate::idempotency::disk_queue(crate::idempotency::DISK_QUEUE_BYTES_MAX);
    store.attach_disk(tx);
    store.start_loading(file.clone());
    let writer = file.clone().spawn_writer(rx).unwrap();
    // A newer record of "k" arrives before the load reaches "k".
    assert_eq!(store.merge_all(vec![record("k", 2, 1_000_000)], past), 1);
    let loaded = file.load_into(&store, past).unwrap();
    assert_eq!(
        (loaded.records, loaded.dropped),
        (0, 0),
        "the expired \"k\" on disk is not deleted: the newer one replaces it"
    );
    drop(file);
    close(store, writer);
    let (store, writer, loaded) = open_store(dir.path(), past).unwrap();
    assert_eq!(loaded.records, 1);
    assert_eq!(store.get("k", past).map(|r| r.claim), Some(Token(2)));
    close(store, writer);
}

/// A put keeps the file's record of the key if that one ranks higher:
/// the store may be sent a lower record during the load, before the
/// higher one on disk reached memory.
#[test]
fn a_lower_record_does_not_replace_a_higher_one_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(dir.path());
    file.apply(&[Change::Put(record("k", 2, 1_000_000))])
        .unwrap();
    file.apply(&[Change::Put(record("k", 1, 1_000_000))])
        .unwrap();
    assert_eq!(file.read("k").map(|r| r.claim), Some(Token(2)));
    file.apply(&[Change::Put(record("k", 3, 1_000_000))])
        .unwrap();
    assert_eq!(file.read("k").map(|r| r.claim), Some(Token(3)));
}

/// A record over the size limits (written under other limits) is
/// dropped from the file at load, as an expired one is.
#[test]
fn a_record_over_the_limits_is_dropped_at_load() {
    let dir = tempfile::tempdir().unwrap();
    {
        let file = file_in(dir.path());
        let mut big = record("big", 1, 1_000_000);
        big.result = vec![0; crate::idempotency::record::RESULT_BYTES_MAX + 1];
        file.apply(&[Change::Put(big), Change::Put(record("a", 1, 1_000_000))])
            .unwrap();
    }
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!((loaded.records, loaded.dropped), (1, 1));
    close(store, writer);
    let (store, writer, loaded) = open_store(dir.path(), 0).unwrap();
    assert_eq!((loaded.records, loaded.dropped), (1, 0));
    close(store, writer);
}

/// A load that panics (a damaged page, say) still ends the loading, so
/// the node does not read through for ever nor shun anti-entropy: the
/// guard `load_into` holds ends it as the panic unwinds.
#[test]
fn a_load_that_panics_still_ends_the_loading() {
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(file_in(dir.path()));
    let store = Store::default();
    store.start_loading(file);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _guard = store.loading_guard();
        panic!("a damaged page");
    }));
    assert!(unwound.is_err());
    assert!(!store.is_loading());
}

/// A writer that falls behind (here: one that reads nothing) holds at
/// most the queue's bound in changes; what does not fit is counted and
/// not written (the peers hold it), every record still held in memory,
/// and once the writer drains the queue it takes changes again.
#[test]
fn a_writer_that_falls_behind_holds_at_most_the_queues_bound() {
    let store = Store::default();
    let bound = 10_000;
    let (tx, mut rx) = disk_queue(bound);
    store.attach_disk(tx);
    let records: Vec<Record> = (0..1000)
        .map(|i| record(&format!("k{i:04}"), i + 1, 1_000_000))
        .collect();
    assert_eq!(store.merge_all(records, 0), 1000);
    assert_eq!(store.len(), 1000);
    let mut drain = || {
        let mut queued = Vec::new();
        while let Ok(c) = rx.recv_timeout(std::time::Duration::ZERO) {
            queued.push(c);
        }
        queued
    };
    let queued = drain();
    let bytes: usize = queued.iter().map(Change::weight).sum();
    assert!(bytes <= bound, "{bytes} bytes queued");
    assert!(!queued.is_empty());
    assert_eq!(store.disk_skipped() as usize + queued.len(), 1000);
    let late = record("late", 5000, 1_000_000);
    assert_eq!(store.merge_all(vec![late.clone()], 0), 1);
    assert_eq!(drain(), vec![Change::Put(late)]);
}
