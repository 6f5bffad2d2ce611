use super::*;
use crate::ids::Token;
use crate::locks::{EntryState, Name};

fn held(name: &str, token: u64) -> Entry {
    Entry {
        name: Name::lock(name),
        token: Token(token),
        state: EntryState::held(1000, NodeId(1), None, 0),
        claim: None,
        written: Epoch(0),
    }
}

fn open(dir: &Path, node: u64) -> io::Result<(DataDir, Stored, Vec<String>)> {
    let mut warnings = Vec::new();
    let (d, s) = DataDir::open(dir, "c", NodeId(node), &mut warnings)?;
    Ok((d, s, warnings))
}

/// What `dir` remembers, read while a `DataDir` holds it.
fn peek(dir: &Path, node: u64) -> io::Result<(Stored, Vec<String>)> {
    DataDir::peek(dir, "c", NodeId(node))
}

/// Finding 3 (E7): a new, empty or foreign directory is no memory. Only
/// a directory initialized for this node of this cluster counts as
/// durable; one of another node or cluster refuses the start.
#[test]
fn finding_3_only_an_initialized_directory_of_this_node_is_durable() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("a/b/node-1");
    let (dir, stored, _) = open(&path, 1).unwrap();
    assert_eq!(stored, Stored::Blank, "a new directory");
    // Left by a build without identities (or a partial restore): no
    // memory, but not blank either (it is no sign of a new cluster).
    fs::write(path.join(PROMISE_FILE), "41\n").unwrap();
    let (stored, warnings) = peek(&path, 1).unwrap();
    assert_eq!(stored, Stored::Leftover);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let mut replica = Replica::default();
    replica.merge(held("x", 7));
    dir.initialize(Epoch(9), &replica).unwrap();
    let (stored, _) = peek(&path, 1).unwrap();
    assert_eq!(
        stored,
        Stored::Initialized {
            promised: Epoch(9),
            replica: replica.clone()
        }
    );
    let other_node = peek(&path, 2).unwrap_err().to_string();
    assert!(other_node.contains("belongs to node 1"), "{other_node}");
    let other_cluster = DataDir::peek(&path, "d", NodeId(1))
        .unwrap_err()
        .to_string();
    assert!(other_cluster.contains("cluster \"c\""), "{other_cluster}");
    fs::remove_file(path.join(PROMISE_FILE)).unwrap();
    let damaged = peek(&path, 1).unwrap_err().to_string();
    assert!(damaged.contains("promise: is missing"), "{damaged}");
}

#[test]
fn promise_survives_reopen_and_garbage_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _, _) = open(root.path(), 1).unwrap();
    dir.initialize(Epoch(0), &Replica::default()).unwrap();
    dir.save_promise(Epoch(41)).unwrap();
    dir.save_promise(Epoch(42)).unwrap();
    assert!(matches!(
        peek(root.path(), 1).unwrap().0,
        Stored::Initialized {
            promised: Epoch(42),
            ..
        }
    ));
    fs::write(root.path().join(PROMISE_FILE), "x").unwrap();
    assert!(peek(root.path(), 1).is_err());
}

/// The lock log: a torn or zero-filled tail (a crash mid-append) is
/// truncated and reported; a corrupt record with records after it refuses
/// the start; a record whose bytes decode but fail the checksum is never
/// merged (it could carry any token).
#[test]
fn lock_log_checksums_truncate_a_torn_tail_and_refuse_a_corrupt_middle() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(LOCKS_FILE);
    let mut replica = Replica::default();
    let mut log = LockLog::create(&path, &replica).unwrap();
    for (i, e) in [held("a", 1), held("b", 2), held("c", 3)]
        .into_iter()
        .enumerate()
    {
        replica.merge(e.clone());
        log.append(&[&e], &replica).unwrap();
        let _ = i;
    }
    drop(log);
    let whole = fs::read(&path).unwrap();
    // A torn last record.
    let mut torn = whole.clone();
    torn.truncate(whole.len() - 3);
    fs::write(&path, &torn).unwrap();
    let (_, again, repaired) = LockLog::open(&path).unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert!(fs::read(&path).unwrap().len() < torn.len(), "truncated");
    // A zero-filled tail (the file grew, the data never landed).
    let mut zeros = whole.clone();
    zeros.extend_from_slice(&[0; 4096]);
    fs::write(&path, &zeros).unwrap();
    let (_, again, repaired) = LockLog::open(&path).unwrap();
    assert_eq!(again, replica);
    assert_eq!(repaired.len(), 1);
    assert_eq!(fs::read(&path).unwrap(), whole);
    // A flipped byte in the first record, with two whole records after.
    let mut flipped = whole.clone();
    flipped[LOG_MAGIC.len() + RECORD_HEADER_BYTES + 1] ^= 0x40;
    fs::write(&path, &flipped).unwrap();
    let err = LockLog::open(&path).unwrap_err().to_string();
    assert!(err.contains("offset 8 is corrupt"), "{err}");
    // Garbage that postcard decodes into an entry with a huge token,
    // without a matching checksum, as the last record: dropped, never
    // merged.
    let body = postcard::to_stdvec(&held("a", u64::MAX)).unwrap();
    let mut forged = whole.clone();
    forged.extend_from_slice(&(body.len() as u32).to_le_bytes());
    forged.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    forged.extend_from_slice(&body);
    fs::write(&path, &forged).unwrap();
    let (_, again, _) = LockLog::open(&path).unwrap();
    assert_eq!(again.get(&Name::lock("a")).map(|e| e.token), Some(Token(1)));
    // Not a lock log at all.
    fs::write(&path, b"hello").unwrap();
    assert!(LockLog::open(&path).is_err());
}

#[test]
fn lock_log_compacts() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(LOCKS_FILE);
    let mut replica = Replica::default();
    let mut log = LockLog::create(&path, &replica).unwrap();
    for i in 0..5000 {
        let e = held("c", 10 + i);
        replica.merge(e.clone());
        log.append(&[&e], &replica).unwrap();
    }
    assert!(log.records < 5000, "compacted: {}", log.records);
    let (_, again, _) = LockLog::open(&path).unwrap();
    assert_eq!(again, replica);
}

/// Generations: newer than the last one used here even when the wall
/// clock stepped back (finding: a restart looked older than its dead
/// incarnation).
#[test]
fn a_generation_is_newer_than_the_last_one_even_if_the_clock_stepped_back() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _, _) = open(root.path(), 1).unwrap();
    assert_eq!(dir.next_generation(1000).unwrap(), 1000);
    assert_eq!(
        dir.next_generation(500).unwrap(),
        1001,
        "the clock went back"
    );
    assert_eq!(dir.next_generation(5000).unwrap(), 5000);
}

/// E8: an ack waits for what the *disk* holds, not what the driver holds
/// in memory: entries the driver merged earlier without writing them (an
/// E7 copy, a table adopted at takeover) are still written before `done`.
#[test]
fn e8_entries_already_in_memory_are_written_before_the_ack() {
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    p.initialize(Epoch(3), Replica::default(), Floor::default());
    let acked = Arc::new(Mutex::new(None));
    let a = acked.clone();
    // The driver's own copy already has "x" (it merged it from a promise);
    // the batch that carries it again must still reach the disk.
    p.persist(Some(Epoch(4)), vec![held("x", 9)], move |ok| {
        *a.lock().unwrap() = Some(ok)
    });
    assert_eq!(*acked.lock().unwrap(), Some(true));
    drop(p);
    let (_, stored, _) = open(root.path(), 1).unwrap();
    let Stored::Initialized { promised, replica } = stored else {
        panic!("{stored:?}")
    };
    assert_eq!(promised, Epoch(4));
    assert_eq!(
        replica.get(&Name::lock("x")).map(|e| e.token),
        Some(Token(9))
    );
}

fn released(name: &str, token: u64) -> Entry {
    Entry {
        state: EntryState::Free { request_id: None },
        ..held(name, token)
    }
}

/// A released lock's tombstone nobody waits on lingers on the disk thread
/// for the next job (a client's next acquire, a round trip later), and the
/// two share one sync instead of the acquire's queueing behind the
/// tombstone's; alone, it is synced once the linger has passed. (The
/// linger is long here, so that a slow test machine cannot split them.)
#[test]
fn an_unhurried_job_shares_the_next_jobs_sync() {
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    let linger = Duration::from_millis(300);
    let p = Persister::thread_lingering(dir, &stored, linger).unwrap();
    p.initialize(Epoch(3), Replica::default(), Floor::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let t = tx.clone();
    p.persist(None, Vec::new(), move |ok| t.send(("init", ok)).unwrap());
    assert_eq!(rx.recv().unwrap(), ("init", true));
    let t = tx.clone();
    p.persist_unhurried(vec![released("x", 9)], move |ok| t.send(("x", ok)).unwrap());
    std::thread::sleep(linger / 30);
    let t = tx.clone();
    p.persist(None, vec![held("y", 10)], move |ok| {
        t.send(("y", ok)).unwrap()
    });
    let wait = Duration::from_secs(5);
    let mut done = vec![
        rx.recv_timeout(wait).unwrap(),
        rx.recv_timeout(wait).unwrap(),
    ];
    done.sort();
    assert_eq!(done, [("x", true), ("y", true)]);
    let syncs = |p: &Persister| p.disk.lock().unwrap().log.as_ref().unwrap().syncs;
    assert_eq!(syncs(&p), 1, "the tombstone and the grant share one sync");
    // Alone, it is written once LINGER has passed.
    let t = tx.clone();
    p.persist_unhurried(vec![released("y", 10)], move |ok| {
        t.send(("y", ok)).unwrap()
    });
    assert_eq!(rx.recv_timeout(wait).unwrap(), ("y", true));
    assert_eq!(syncs(&p), 2);
    let (stored, _) = peek(root.path(), 1).unwrap();
    let Stored::Initialized { replica, .. } = stored else {
        panic!("{stored:?}")
    };
    assert!(!replica.get(&Name::lock("x")).unwrap().is_held());
    assert!(!replica.get(&Name::lock("y")).unwrap().is_held());
}

/// A blank directory writes nothing until it is initialized: its voter
/// has no durable state (it recovers like one without a data directory).
#[test]
fn a_blank_directory_holds_nothing_until_initialized() {
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    assert!(!p.is_durable());
    p.persist(Some(Epoch(4)), vec![held("x", 9)], |ok| assert!(ok));
    assert_eq!(peek(root.path(), 1).unwrap().0, Stored::Blank);
    let mut copied = Replica::default();
    copied.merge(held("y", 3));
    p.initialize(Epoch(5), copied.clone(), Floor::default());
    assert!(p.is_durable());
    assert_eq!(
        peek(root.path(), 1).unwrap().0,
        Stored::Initialized {
            promised: Epoch(5),
            replica: copied
        }
    );
}

/// The disk's callbacks run outside its lock: a callback that waits for
/// the driver while the driver asks the disk a question must not
/// deadlock (the driver's input queue full, in the review's scenario).
#[test]
fn callbacks_run_outside_the_disk_lock() {
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    let p = Arc::new(Persister::thread(dir, &stored).unwrap());
    p.initialize(Epoch(1), Replica::default(), Floor::default());
    let (asked_tx, asked_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    p.persist(Some(Epoch(2)), vec![held("x", 3)], move |ok| {
        assert!(ok);
        // Waits until the "driver" below has asked its questions.
        let _ = asked_rx.recv_timeout(Duration::from_secs(5));
        let _ = done_tx.send(());
    });
    // The "driver" asks while the callback waits for it.
    let q = p.clone();
    let asker = std::thread::spawn(move || {
        let _ = (q.is_durable(), q.has_dir(), q.durable_promise());
        q.persist(None, Vec::new(), |_| {});
        asked_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the callback and the driver deadlocked"
    );
    asker.join().unwrap();
}

/// Appends a lock log record of `body` as the log frames it: its length,
/// its CRC-32, the body.
fn push_record(bytes: &mut Vec<u8>, body: &[u8]) {
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes.extend_from_slice(body);
}

/// A lock log of version 1 (user locks only, before claims had a
/// namespace) is read as user locks and rewritten as the current version,
/// so later appends follow whole records of one version.
#[test]
fn a_version_1_lock_log_is_read_and_rewritten() {
    #[derive(serde::Serialize)]
    struct V1<'a> {
        name: &'a str,
        token: Token,
        state: EntryStateV3,
    }
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(LOCKS_FILE);
    let mut bytes = LOG_MAGIC_V1.to_vec();
    for (name, token) in [("a", 3), ("b", 4)] {
        let body = postcard::to_stdvec(&V1 {
            name,
            token: Token(token),
            state: EntryStateV3::Held {
                ttl_ms: 1000,
                owner: NodeId(1),
                request_id: None,
                quiet_ms: 0,
                version: 0,
            },
        })
        .unwrap();
        push_record(&mut bytes, &body);
    }
    fs::write(&path, &bytes).unwrap();
    let (mut log, replica, notes) = LockLog::open(&path).unwrap();
    assert_eq!(replica.len(), 2);
    assert_eq!(replica.get(&Name::lock("b")), Some(&held("b", 4)));
    assert!(notes.iter().any(|n| n.contains("version 1")), "{notes:?}");
    assert!(fs::read(&path).unwrap().starts_with(LOG_MAGIC));
    let mut more = replica.clone();
    more.merge(held("c", 5));
    log.append(&[&held("c", 5)], &more).unwrap();
    let (_, again, notes) = LockLog::open(&path).unwrap();
    assert_eq!(again, more);
    assert!(notes.is_empty(), "{notes:?}");
}

/// A claim's tombstone: completed (expiring at `expires_at_ms`) unless
/// that is 0, `recovered` as given.
fn tombstone(key: String, token: u64, expires_at_ms: u64, recovered: bool) -> Entry {
    use crate::locks::{ClaimFacts, Completion};
    Entry {
        name: Name::claim(key),
        token: Token(token),
        state: EntryState::Free { request_id: None },
        claim: Some(Box::new(ClaimFacts {
            completion: (expires_at_ms > 0).then(|| Completion {
                expires_at_ms,
                result: b"r".to_vec(),
            }),
            recovered,
            fingerprint: b"f".to_vec(),
            record_ttl_ms: 1000,
        })),
        written: Epoch(0),
    }
}

/// I6: the claims' tombstones no begin needs any more leave the durable
/// copy when collected, and the lock log sheds them when it is next
/// rewritten; user locks and claims that ran out stay.
#[test]
fn collected_tombstones_leave_the_durable_copy_and_the_log() {
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    p.initialize(Epoch(3), Replica::default(), Floor::default());
    let mut entries: Vec<Entry> = (0..5000)
        .map(|i| tombstone(format!("k{i}"), 10 + i, 1000, false))
        .collect();
    entries.push(tombstone("ran-out".into(), 1, 0, true));
    entries.push(held("lock", 2));
    p.persist(None, entries, |ok| assert!(ok));
    p.collect(1000 + 60_000);
    // The next append finds the log mostly superseded and rewrites it.
    p.persist(None, vec![held("later", 3)], |ok| assert!(ok));
    drop(p);
    let (_, stored, _) = open(root.path(), 1).unwrap();
    let Stored::Initialized { replica, .. } = stored else {
        panic!("{stored:?}")
    };
    let names: Vec<String> = replica.entries().map(|e| e.name.text.clone()).collect();
    assert_eq!(names, ["later", "lock", "ran-out"]);
}

/// Completed claims' tombstones settled into the records leave the
/// durable copy (and the log at its next rewrite); a tombstone of
/// another claim of the key, live claims and locks stay.
#[test]
fn settled_tombstones_leave_the_durable_copy_and_the_log() {
    let completed = |key: &str, token: u64| tombstone(key.into(), token, u64::MAX / 2, false);
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    p.initialize(Epoch(3), Replica::default(), Floor::default());
    let mut entries: Vec<Entry> = (0..5000)
        .map(|i| completed(&format!("k{i}"), 10 + i))
        .collect();
    entries.push(completed("other-claim", 7));
    entries.push(held("lock", 2));
    p.persist(None, entries, |ok| assert!(ok));
    let mut settled: Vec<(Name, Token)> = (0..5000)
        .map(|i| (Name::claim(format!("k{i}")), Token(10 + i)))
        .collect();
    settled.push((Name::claim("other-claim"), Token(8)));
    settled.push((Name::lock("lock"), Token(2)));
    p.settle(settled);
    // The next append finds the log mostly superseded and rewrites it.
    p.persist(None, vec![held("later", 3)], |ok| assert!(ok));
    drop(p);
    let (_, stored, _) = open(root.path(), 1).unwrap();
    let Stored::Initialized { replica, .. } = stored else {
        panic!("{stored:?}")
    };
    let names: Vec<String> = replica.entries().map(|e| e.name.text.clone()).collect();
    assert_eq!(names, ["later", "lock", "other-claim"]);
}

/// A data directory in use by one node refuses a second (another
/// process, or the same node started twice) before anything in it is
/// read or written, naming the holder's pid; once the first lets go (its
/// process ends, however it ends) the directory opens again.
#[test]
fn a_directory_in_use_refuses_a_second_node() {
    let root = tempfile::tempdir().unwrap();
    let (first, _, _) = open(root.path(), 1).unwrap();
    let generation = first.next_generation(100).unwrap();
    let second = open(root.path(), 1).expect_err("the directory is in use");
    assert_eq!(second.kind(), io::ErrorKind::ResourceBusy);
    let message = second.to_string();
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    drop(first);
    let (again, _, _) = open(root.path(), 1).unwrap();
    assert_eq!(again.next_generation(100).unwrap(), generation + 1);
}

/// K5: a node holding its directory for the process's life keeps the
/// lock after it stops; a later node of the same process takes the hold
/// over (not anew: it proves nothing of the run before), a concurrent one
/// is refused. Held per node, a reopen takes it anew.
#[test]
fn a_directory_held_for_the_process_is_taken_anew_only_by_another_process() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path();
    let open_scoped = |scope| {
        let mut warnings = Vec::new();
        DataDir::open_locked(path, "c", NodeId(1), scope, &mut warnings)
    };
    let (node, _, anew) = open_scoped(LockScope::Node).unwrap();
    assert!(anew);
    assert_eq!(node.last_generation(), None);
    node.next_generation(100).unwrap();
    drop(node);
    let (first, _, anew) = open_scoped(LockScope::Process).unwrap();
    assert!(anew, "nobody in this process held it");
    assert_eq!(first.last_generation(), Some(100));
    first.next_generation(100).unwrap();
    let busy = open_scoped(LockScope::Process).expect_err("in use");
    assert_eq!(busy.kind(), io::ErrorKind::ResourceBusy);
    drop(first);
    let (second, _, anew) = open_scoped(LockScope::Process).unwrap();
    assert!(!anew, "the hold is this process's: nothing proven");
    assert_eq!(second.last_generation(), Some(101));
    drop(second);
    let other = open_scoped(LockScope::Node).expect_err("still held till the process ends");
    assert_eq!(other.kind(), io::ErrorKind::ResourceBusy);
}

/// A lock log of version 2 (entries without the epoch that wrote them)
/// is read with every entry as written in epoch 0, so among themselves
/// they keep the order they had: a grant taken over and rewritten by a
/// later leader (its version of that epoch) and then released stays
/// released, in the log and against another voter's copy that missed the
/// release; every write since outranks them. Then it is rewritten as the
/// current version.
#[test]
fn a_version_2_lock_log_is_read_and_rewritten() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(LOCKS_FILE);
    let mut bytes = LOG_MAGIC_V2.to_vec();
    let token = Token((1 << 32) | 3);
    let old_state = |held: bool| {
        if held {
            EntryStateV3::Held {
                ttl_ms: 1000,
                owner: NodeId(1),
                request_id: Some("r".into()),
                quiet_ms: 0,
                version: (2 << 32) | 1,
            }
        } else {
            EntryStateV3::Free {
                request_id: Some("r".into()),
            }
        }
    };
    let rewritten = EntryState::from(old_state(true));
    let released = EntryState::from(old_state(false));
    for state in [old_state(true), old_state(false)] {
        let body = postcard::to_stdvec(&EntryV2 {
            name: Name::lock("a"),
            token,
            state,
            claim: None,
        })
        .unwrap();
        push_record(&mut bytes, &body);
    }
    fs::write(&path, &bytes).unwrap();
    let (_, replica, notes) = LockLog::open(&path).unwrap();
    let entry = |state: EntryState, written: u64| Entry {
        name: Name::lock("a"),
        token,
        state,
        claim: None,
        written: Epoch(written),
    };
    let freed = entry(released, 0);
    assert_eq!(replica.get(&Name::lock("a")), Some(&freed));
    assert!(notes.iter().any(|n| n.contains("version 2")), "{notes:?}");
    assert!(fs::read(&path).unwrap().starts_with(LOG_MAGIC));
    let (_, again, notes) = LockLog::open(&path).unwrap();
    assert_eq!(again, replica);
    assert!(notes.is_empty(), "{notes:?}");
    // Another voter's upgraded copy that missed the release.
    let mut other = Replica::default();
    other.merge(entry(rewritten, 0));
    other.merge(freed.clone());
    assert_eq!(other.get(&Name::lock("a")), Some(&freed));
    // A later leader's write outranks them.
    let later = entry(EntryState::held(1000, NodeId(2), None, (3 << 32) | 1), 3);
    let later = Entry {
        token: Token((3 << 32) | 1),
        ..later
    };
    assert!(other.merge(later));
}

/// A lock log of version 3 (grants without the run they are bound to) is
/// read with every grant unbound (K5: its lock waits out its TTL, as it
/// would have), keeping the epoch each entry was written in, and is
/// rewritten as the current version; a grant of the current version
/// keeps its run through the log.
#[test]
fn a_version_3_lock_log_is_read_unbound_and_rewritten() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(LOCKS_FILE);
    let mut bytes = LOG_MAGIC_V3.to_vec();
    let body = postcard::to_stdvec(&EntryV3 {
        name: Name::lock("a"),
        token: Token((2 << 32) | 1),
        state: EntryStateV3::Held {
            ttl_ms: 1000,
            owner: NodeId(1),
            request_id: None,
            quiet_ms: 5,
            version: (2 << 32) | 1,
        },
        claim: None,
        written: Epoch(2),
    })
    .unwrap();
    push_record(&mut bytes, &body);
    fs::write(&path, &bytes).unwrap();
    let (mut log, replica, notes) = LockLog::open(&path).unwrap();
    let read = Entry {
        name: Name::lock("a"),
        token: Token((2 << 32) | 1),
        state: EntryState::Held {
            ttl_ms: 1000,
            owner: NodeId(1),
            request_id: None,
            quiet_ms: 5,
            version: (2 << 32) | 1,
            bound: None,
        },
        claim: None,
        written: Epoch(2),
    };
    assert_eq!(replica.get(&Name::lock("a")), Some(&read));
    assert!(
        notes.iter().any(|n| n.contains("version 3 as version 4")),
        "{notes:?}"
    );
    assert!(fs::read(&path).unwrap().starts_with(LOG_MAGIC));
    let bound = Entry {
        name: Name::lock("b"),
        state: EntryState::Held {
            ttl_ms: 1000,
            owner: NodeId(3),
            request_id: None,
            quiet_ms: 0,
            version: (2 << 32) | 2,
            bound: Some(crate::ids::Generation(7)),
        },
        ..read.clone()
    };
    let mut more = replica.clone();
    more.merge(bound.clone());
    log.append(&[&bound], &more).unwrap();
    let (_, again, notes) = LockLog::open(&path).unwrap();
    assert_eq!(again, more);
    assert_eq!(again.get(&Name::lock("b")), Some(&bound));
    assert!(notes.is_empty(), "{notes:?}");
}

/// K5: a run that took the lock anew proves the last run ended only on
/// the same machine and with the same lock file (or after a reboot); a
/// copied directory, a run recorded on another machine, or a missing
/// record prove nothing. A directory made again while this process kept
/// its old hold is taken anew (the hold is on the old lock file).
#[test]
fn only_the_same_lock_file_on_the_same_machine_proves_a_run_ended() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("d");
    let open_scoped = |path: &Path, scope| {
        let mut warnings = Vec::new();
        DataDir::open_locked(path, "c", NodeId(1), scope, &mut warnings)
    };
    let (first, _, _) = open_scoped(&dir, LockScope::Node).unwrap();
    assert_eq!(first.ended_run(), None, "nothing ran here before");
    let g = first.next_generation(100).unwrap();
    drop(first);
    let (second, _, anew) = open_scoped(&dir, LockScope::Node).unwrap();
    assert!(anew);
    assert_eq!(second.ended_run(), Some(g), "same machine, same lock file");
    drop(second);

    // A copy of the directory (another lock file) proves nothing.
    let copy = root.path().join("copy");
    fs::create_dir(&copy).unwrap();
    for name in [GENERATION_FILE, RUN_FILE] {
        fs::copy(dir.join(name), copy.join(name)).unwrap();
    }
    let (copied, _, anew) = open_scoped(&copy, LockScope::Node).unwrap();
    assert!(anew);
    assert_eq!(copied.ended_run(), None, "a copy's lock file is another");
    drop(copied);

    // A run recorded on another machine proves nothing; nor does a
    // missing record.
    let line = fs::read_to_string(dir.join(RUN_FILE)).unwrap();
    let mut fields: Vec<&str> = line.split_whitespace().collect();
    fields[1] = "another-machine";
    fs::write(dir.join(RUN_FILE), fields.join(" ")).unwrap();
    let (elsewhere, _, _) = open_scoped(&dir, LockScope::Node).unwrap();
    assert_eq!(elsewhere.ended_run(), None);
    drop(elsewhere);
    fs::remove_file(dir.join(RUN_FILE)).unwrap();
    let (unrecorded, _, _) = open_scoped(&dir, LockScope::Node).unwrap();
    assert_eq!(unrecorded.ended_run(), None);
    drop(unrecorded);

    // Held for this process, then the directory made again: taken anew.
    let (held, _, anew) = open_scoped(&dir, LockScope::Process).unwrap();
    assert!(anew);
    drop(held);
    fs::remove_dir_all(&dir).unwrap();
    let (remade, _, anew) = open_scoped(&dir, LockScope::Process).unwrap();
    assert!(anew, "the kept hold was on the old lock file");
    drop(remade);
    let (again, _, anew) = open_scoped(&dir, LockScope::Process).unwrap();
    assert!(!anew, "and is kept on the new one");
    drop(again);
}

/// "Locks" 8: a forget raises the floor durably first, then drops from
/// the durable copy the entries it holds exactly as given (a later
/// write of a key stays); the log sheds them at its rewrite, so a
/// restart finds neither them nor a lower floor. A directory
/// initialized from others' copies holds their floor, exactly.
#[test]
fn a_forget_holds_its_floor_and_sheds_its_entries_across_a_restart() {
    let user_tombstone = |name: String, token: u64| Entry {
        name: Name::lock(name),
        token: Token(token),
        state: EntryState::Free { request_id: None },
        claim: None,
        written: Epoch(3),
    };
    let floor = Floor {
        epoch: Epoch(3),
        batch: crate::ids::BatchId(10),
    };
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    assert_eq!(dir.floor(), Floor::default(), "none yet");
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    p.initialize(Epoch(3), Replica::default(), Floor::default());
    let mut entries: Vec<Entry> = (0..5000)
        .map(|i| user_tombstone(format!("k{i}"), 10 + i))
        .collect();
    entries.push(held("lock", 2));
    entries.push(user_tombstone("regranted".into(), 9000));
    p.persist(None, entries.clone(), |ok| assert!(ok));
    let mut forget: Vec<Entry> = entries[..5000].to_vec();
    forget.push(user_tombstone("regranted".into(), 8999));
    let (tx, rx) = std::sync::mpsc::channel();
    p.forget(floor, forget, move |ok| tx.send(ok).unwrap());
    assert_eq!(rx.recv(), Ok(true));
    assert_eq!(p.floor(), floor);
    p.forget(
        Floor {
            epoch: Epoch(3),
            batch: crate::ids::BatchId(2),
        },
        Vec::new(),
        |ok| assert!(ok),
    );
    drop(p);
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    assert_eq!(dir.floor(), floor, "never lowered, and durable");
    let Stored::Initialized { replica, .. } = stored else {
        panic!("{stored:?}")
    };
    let names: Vec<String> = replica.entries().map(|e| e.name.text.clone()).collect();
    assert_eq!(names, ["lock", "regranted"]);
    drop(dir);

    let blank = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(blank.path(), 1).unwrap();
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    p.initialize(Epoch(4), Replica::default(), floor);
    drop(p);
    let (dir, stored, _) = open(blank.path(), 1).unwrap();
    assert_eq!(dir.floor(), floor);
    // Copied again (review 7), from sources of another floor: the
    // directory holds theirs, not the higher one of its earlier copy.
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    p.initialize(Epoch(5), Replica::default(), Floor::default());
    drop(p);
    let (dir, _, _) = open(blank.path(), 1).unwrap();
    assert_eq!(dir.floor(), Floor::default());
}

/// A floor file that does not hold a floor refuses the start, naming it.
#[test]
fn a_corrupt_floor_refuses_the_start() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join(FLOOR_FILE), "3\n").unwrap();
    let err = open(root.path(), 1).unwrap_err();
    assert!(err.to_string().contains("floor"), "{err}");
}

/// Review 6: a late batch taken before the floor rose and a forget in
/// the same group commit: the older grant meets the tombstone it loses
/// to before the tombstone goes, so the durable copy never holds it.
#[test]
fn a_forget_grouped_after_a_late_batch_leaves_no_older_grant_behind() {
    let root = tempfile::tempdir().unwrap();
    let (dir, stored, _) = open(root.path(), 1).unwrap();
    let p = Persister::inline(dir, &stored, Duration::ZERO);
    p.initialize(Epoch(3), Replica::default(), Floor::default());
    let grant = held("job", 7);
    let tombstone = Entry {
        state: EntryState::Free { request_id: None },
        ..grant.clone()
    };
    p.persist(None, vec![tombstone.clone()], |ok| assert!(ok));
    let floor = Floor {
        epoch: Epoch(3),
        batch: crate::ids::BatchId(10),
    };
    let late = Job {
        entries: vec![grant],
        ..Job::new(|ok| assert!(ok))
    };
    let forget = Job {
        floor: Some(floor),
        forget: vec![tombstone],
        ..Job::new(|ok| assert!(ok))
    };
    run(&p.disk, vec![late, forget]);
    let durable = p.disk.lock().unwrap().replica.clone();
    assert_eq!(durable.get(&Name::lock("job")), None);
    drop(p);
    let (_, stored, _) = open(root.path(), 1).unwrap();
    let Stored::Initialized { replica, .. } = stored else {
        panic!("{stored:?}")
    };
    assert!(
        replica.get(&Name::lock("job")).is_none_or(|e| !e.is_held()),
        "{replica:?}"
    );
}
