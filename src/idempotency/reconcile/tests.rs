//! The IBLT gives back small differences, the estimator sizes them, a
//! whole exchange between two replicas of 100,000 records that differ
//! in 100 converges within three round trips and the byte bound, and
//! replicas that differ in more than the tables carry converge by the
//! walk, every message within the RPC frame.

use super::*;
use crate::idempotency::Store;
use crate::idempotency::record::{FINGERPRINT_BYTES_MAX, RESULT_BYTES_MAX};
use crate::ids::Token;
use crate::rpc::FRAME_BYTES_MAX;

fn record(i: u64, committed: bool) -> Record {
    Record {
        // 36-byte keys, 64-byte fingerprints and 100-byte results: the
        // shape the benchmark of the idempotency issue names.
        key: format!("{:036}", i),
        claim: Token(i + 1),
        fingerprint: format!("{:064x}", mix(i)).into_bytes(),
        recovered: false,
        expires_at_ms: 1_000_000 + i,
        result: vec![(i % 251) as u8; 100],
        committed,
    }
}

/// A deterministic stream of numbers from a seed.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
}

#[test]
fn a_small_difference_decodes_both_ways() {
    let mut a = Iblt::new(60, 0);
    let mut b = Iblt::new(60, 0);
    for id in 0..1000u64 {
        a.insert(mix(id));
        b.insert(mix(id));
    }
    for id in 1000..1010u64 {
        a.insert(mix(id));
    }
    for id in 2000..2005u64 {
        b.insert(mix(id));
    }
    a.subtract(&b);
    let (ours, theirs) = a.decode().expect("decodes");
    let mut want_ours: Vec<u64> = (1000..1010).map(mix).collect();
    let mut want_theirs: Vec<u64> = (2000..2005).map(mix).collect();
    want_ours.sort_unstable();
    want_theirs.sort_unstable();
    assert_eq!(ours, want_ours);
    assert_eq!(theirs, want_theirs);
}

#[test]
fn a_difference_too_large_for_the_table_does_not_decode() {
    let mut a = Iblt::new(24, 0);
    for id in 0..200u64 {
        a.insert(mix(id));
    }
    assert_eq!(a.decode(), Err(Undecodable));
}

#[test]
fn the_estimate_is_within_a_small_factor() {
    let base: Vec<u64> = (0..20_000u64).map(mix).collect();
    for d in [0usize, 5, 20, 100, 400, 2000] {
        let a = Estimator::new(base.iter().copied());
        let b = Estimator::new(
            base.iter()
                .copied()
                .skip(d / 2)
                .chain((1_000_000..1_000_000 + (d - d / 2) as u64).map(mix)),
        );
        let e = a.difference(&b);
        assert!(
            e * 10 >= d * 7 && e * 10 <= d * 13 + 10,
            "{d} differences estimated as {e}"
        );
    }
}

/// A store holding `records`.
fn store(records: &[Record]) -> Store {
    let s = Store::default();
    for chunk in records.chunks(10_000) {
        s.merge_all(chunk.to_vec(), 0);
    }
    s
}

/// The largest message of an exchange, both ways.
fn largest_message(a: &Store, b: &Store) -> usize {
    let size = |m: &ReconcileMessage| postcard::to_allocvec(m).expect("encodes").len();
    let (mut me, mut message) = Initiator::start(&a.at(0));
    let mut largest = 0;
    loop {
        largest = largest.max(size(&message));
        let answer = respond(&b.at(0), message).expect("an answer");
        largest = largest.max(size(&answer));
        match me.on_answer(&a.at(0), answer).expect("a step") {
            Step::Send(next) => message = next,
            Step::Done => return largest,
        }
    }
}

/// Runs one exchange between an initiator over `a` and a responder over
/// `b`: the two stores after it, and its traffic.
fn exchange(a: &[Record], b: &[Record]) -> (Store, Store, Traffic) {
    let (x, y) = (store(a), store(b));
    let traffic = exchange_in_process(&x.at(0), &y.at(0)).expect("an exchange");
    (x, y, traffic)
}

/// Two replicas of 100,000 records: 50 only the initiator has, 30 only
/// the responder, 20 held committed by one and not by the other. One
/// exchange leaves both with every record, each key's highest version,
/// in at most three round trips and at most the differing records' bytes
/// plus 64 bytes a difference plus 4 KiB (the idempotency issue's bound).
#[test]
fn replicas_of_100_000_records_differing_in_100_reconcile_within_the_bound() {
    for seed in 0..std::env::var("COORDMESH_RECONCILE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3u64)
    {
        let mut draw = Draw(seed);
        let n = 100_000u64;
        let mut a: Vec<Record> = Vec::new();
        let mut b: Vec<Record> = Vec::new();
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < 100 {
            picked.insert(draw.next() % n);
        }
        let kind: std::collections::BTreeMap<u64, usize> = picked
            .iter()
            .enumerate()
            .map(|(k, i)| (*i, k % 10))
            .collect();
        let mut differing_bytes = 0;
        let mut differing = 0;
        let size = |r: &Record| postcard::to_allocvec(r).expect("encodes").len();
        for i in 0..n {
            match kind.get(&i) {
                Some(0..5) => {
                    let r = record(i, true);
                    differing_bytes += size(&r);
                    differing += 1;
                    a.push(r);
                }
                Some(5..8) => {
                    let r = record(i, true);
                    differing_bytes += size(&r);
                    differing += 1;
                    b.push(r);
                }
                Some(_) => {
                    let (x, y) = (record(i, true), record(i, false));
                    differing_bytes += size(&x) + size(&y);
                    differing += 2;
                    if i % 2 == 0 {
                        a.push(x);
                        b.push(y);
                    } else {
                        a.push(y);
                        b.push(x);
                    }
                }
                None => {
                    a.push(record(i, true));
                    b.push(record(i, true));
                }
            }
        }
        let (x, y, traffic) = exchange(&a, &b);
        let all: Vec<Record> = (0..n).map(|i| record(i, true)).collect();
        assert_eq!(x.snapshot(0), all, "seed {seed}: the initiator's records");
        assert_eq!(y.snapshot(0), all, "seed {seed}: the responder's records");
        assert!(!traffic.walked, "seed {seed}: walked");
        assert!(
            traffic.round_trips <= 3,
            "seed {seed}: {} round trips",
            traffic.round_trips
        );
        let bound = differing_bytes + 64 * differing + 4096;
        println!(
            "seed {seed}: {differing} differing records ({differing_bytes} bytes), \
             {} bytes sent in {} round trips (bound {bound})",
            traffic.bytes, traffic.round_trips
        );
        assert!(
            traffic.bytes <= bound,
            "seed {seed}: {} bytes sent, bound {bound}",
            traffic.bytes
        );
    }
}

/// Other sizes of difference, on 10,000 records: the same bounds.
#[test]
fn differences_from_one_to_a_thousand_stay_within_the_bound() {
    for d in [1u64, 10, 1000] {
        let a: Vec<Record> = (0..10_000).map(|i| record(i, true)).collect();
        // The responder lacks every `10_000 / d`-th record.
        let step = 10_000 / d;
        let b: Vec<Record> = a
            .iter()
            .filter(|r| (r.claim.0 - 1) % step != 0)
            .cloned()
            .collect();
        let missing: Vec<&Record> = a.iter().filter(|r| (r.claim.0 - 1) % step == 0).collect();
        let bytes: usize = missing
            .iter()
            .map(|r| postcard::to_allocvec(r).expect("encodes").len())
            .sum();
        let (x, y, traffic) = exchange(&a, &b);
        assert_eq!(traffic.news, 0, "{d} differences: news to the initiator");
        assert_eq!(y.snapshot(0), x.snapshot(0), "{d} differences");
        assert_eq!(y.len(), 10_000, "{d} differences");
        assert!(
            traffic.round_trips <= 3,
            "{d} differences: {} round trips",
            traffic.round_trips
        );
        let bound = bytes + 64 * missing.len() + 4096;
        assert!(
            traffic.bytes <= bound,
            "{d} differences: {} bytes, bound {bound}",
            traffic.bytes
        );
    }
}

#[test]
fn equal_replicas_exchange_no_record() {
    let a: Vec<Record> = (0..1000).map(|i| record(i, true)).collect();
    let (_, _, traffic) = exchange(&a, &a);
    assert_eq!(traffic.news, 0);
    assert_eq!(traffic.round_trips, 1);
    assert!(traffic.bytes < 4096, "{} bytes", traffic.bytes);
}

/// A node that starts empty beside 100,000 records: the tables cannot
/// carry the difference, so the exchange walks the full side's ids and
/// the empty side ends with every record, at about 20 bytes per record
/// held plus the records' bytes plus a little per round trip, every
/// message within the RPC frame.
#[test]
fn an_empty_replica_beside_100_000_records_gets_them_all_by_the_walk() {
    let n = 100_000u64;
    let full: Vec<Record> = (0..n).map(|i| record(i, true)).collect();
    let held: usize = full
        .iter()
        .map(|r| postcard::to_allocvec(r).expect("encodes").len())
        .sum();
    let (x, y, traffic) = exchange(&[], &full);
    assert!(traffic.walked);
    assert_eq!(x.snapshot(0), full);
    assert_eq!(traffic.news, n as usize);
    // The table that did not peel, 8 bytes an id for the page and 8 to
    // ask for the record (an eighth more asked again), the records, and
    // the framing of each message.
    let tables = TABLE_CELLS_MAX * CELL_BYTES;
    let bound = tables + 20 * n as usize + held + 64 * traffic.round_trips + 4096;
    println!(
        "{} bytes ({held} of records) in {} round trips, bound {bound}",
        traffic.bytes, traffic.round_trips
    );
    assert!(
        traffic.bytes <= bound,
        "{} bytes, bound {bound}",
        traffic.bytes
    );
    assert!(largest_message(&store(&[]), &y) <= FRAME_BYTES_MAX);
    // The other way round: the full side initiates and pushes it all.
    let (x, y, traffic) = exchange(&full, &[]);
    assert!(traffic.walked);
    assert_eq!(y.snapshot(0), x.snapshot(0));
    assert_eq!(traffic.news, 0);
}

/// Two replicas each holding 60,000 records the other lacks, and 20,000
/// both hold: one walk leaves both with all 140,000.
#[test]
fn replicas_that_differ_both_ways_beyond_the_tables_converge_by_the_walk() {
    let a: Vec<Record> = (0..80_000).map(|i| record(i, true)).collect();
    let b: Vec<Record> = (60_000..140_000).map(|i| record(i, true)).collect();
    let (x, y, traffic) = exchange(&a, &b);
    assert!(traffic.walked);
    let all: Vec<Record> = (0..140_000).map(|i| record(i, true)).collect();
    assert_eq!(x.snapshot(0), all);
    assert_eq!(y.snapshot(0), all);
    assert_eq!(traffic.news, 60_000);
}

/// Records of the largest result (64 KiB): a difference of 300 of them
/// (19 MiB) travels in many messages, each within the RPC frame.
#[test]
fn large_records_travel_in_messages_within_the_frame() {
    let big = |i: u64| Record {
        result: vec![(i % 251) as u8; RESULT_BYTES_MAX],
        fingerprint: vec![b'f'; FINGERPRINT_BYTES_MAX],
        key: format!("{i:0200}"),
        ..record(i, true)
    };
    let a: Vec<Record> = (0..300).map(big).collect();
    let b: Vec<Record> = (300..600).map(big).collect();
    let (x, y) = (store(&a), store(&b));
    assert!(largest_message(&x, &y) <= FRAME_BYTES_MAX);
    assert_eq!(x.snapshot(0), y.snapshot(0));
    assert_eq!(x.len(), 600);
}

/// A responder that answers every fetch with nothing (its records
/// expired meanwhile, or a faulty peer): the exchange still ends.
#[test]
fn an_exchange_ends_when_the_records_asked_for_never_come() {
    struct Forgetful(Store);
    impl Side for Forgetful {
        fn ids(&self) -> Vec<u64> {
            self.0.at(0).ids()
        }
        fn ids_between(&self, range: &KeyRange) -> Vec<u64> {
            self.0.at(0).ids_between(range)
        }
        fn page(&self, after: &[u8], max: usize) -> (Vec<u64>, Option<Vec<u8>>) {
            self.0.at(0).page(after, max)
        }
        fn fetch(&self, _: &[u64], _: usize, _: Option<&KeyRange>) -> Vec<Record> {
            Vec::new()
        }
        fn merge(&self, records: Vec<Record>) -> usize {
            self.0.at(0).merge(records)
        }
    }
    for n in [10u64, 100_000] {
        let full = Forgetful(store(&(0..n).map(|i| record(i, true)).collect::<Vec<_>>()));
        let empty = store(&[]);
        let traffic = exchange_in_process(&empty.at(0), &full).expect("an exchange");
        assert_eq!(traffic.news, 0);
        assert!(empty.is_empty());
    }
}

#[test]
fn malformed_or_out_of_turn_messages_are_refused() {
    let a = store(&(0..10).map(|i| record(i, true)).collect::<Vec<_>>());
    let mut bad = Estimator::new([]);
    bad.sums.pop();
    let refused = |m: ReconcileMessage| {
        assert_eq!(
            respond(&a.at(0), m.clone()),
            Err(ReconcileError::Unexpected),
            "{m:?}"
        )
    };
    refused(ReconcileMessage::Start(bad));
    refused(ReconcileMessage::Records(Vec::new()));
    refused(ReconcileMessage::More {
        cells: TABLE_CELLS_MAX as u32 + 3,
        seed: 1,
    });
    refused(ReconcileMessage::Push {
        records: Vec::new(),
        want: vec![[0; 8]; IDS_MAX + 1],
    });
    refused(ReconcileMessage::Page {
        after: vec![b'k'; KEY_BYTES_MAX + 1],
    });
    refused(ReconcileMessage::Ids {
        ids: Vec::new(),
        last: None,
    });
    for range in [
        KeyRange {
            after: vec![b'k'; KEY_BYTES_MAX + 1],
            through: None,
        },
        KeyRange {
            after: b"m".to_vec(),
            through: Some(b"m".to_vec()),
        },
        KeyRange {
            after: Vec::new(),
            through: Some(vec![b'k'; KEY_BYTES_MAX + 1]),
        },
    ] {
        refused(ReconcileMessage::Fetch {
            range,
            records: Vec::new(),
            want: Vec::new(),
        });
    }
    let (mut initiator, _) = Initiator::start(&a.at(0));
    let mut ragged = Iblt::new(30, 0);
    ragged.ids.pop();
    assert_eq!(
        initiator.on_answer(&a.at(0), ReconcileMessage::Table(ragged)),
        Err(ReconcileError::Unexpected)
    );
    // A page whose last key does not follow the one asked after.
    let (mut initiator, _) = Initiator::start(&a.at(0));
    initiator.phase = Phase::Page {
        after: b"m".to_vec(),
    };
    assert_eq!(
        initiator.on_answer(
            &a.at(0),
            ReconcileMessage::Ids {
                ids: Vec::new(),
                last: Some(b"a".to_vec())
            }
        ),
        Err(ReconcileError::Unexpected)
    );
    // A page whose last key is longer than any key.
    let (mut initiator, _) = Initiator::start(&a.at(0));
    initiator.phase = Phase::Page { after: Vec::new() };
    assert_eq!(
        initiator.on_answer(
            &a.at(0),
            ReconcileMessage::Ids {
                ids: Vec::new(),
                last: Some(vec![b'k'; KEY_BYTES_MAX + 1])
            }
        ),
        Err(ReconcileError::Unexpected)
    );
    // Records while awaiting a table.
    let (mut initiator, _) = Initiator::start(&a.at(0));
    assert_eq!(
        initiator.on_answer(&a.at(0), ReconcileMessage::Records(Vec::new())),
        Err(ReconcileError::Unexpected)
    );
}
