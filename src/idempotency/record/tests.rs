//! The record register's laws (a join: commutative, associative,
//! idempotent), the replica's, and expiry's: whatever order records
//! arrive in and whenever replicas drop expired ones, every replica ends
//! with the same records.

use std::time::Duration;

use crdts::CvRDT;
use proptest::prelude::*;

use super::*;
use crate::replication::Replica;

const SKEW: Duration = Duration::from_millis(2);

fn record(key: &str, claim: u64, expires_at_ms: u64) -> Record {
    Record {
        key: key.into(),
        claim: Token(claim),
        fingerprint: b"f".to_vec(),
        recovered: false,
        expires_at_ms,
        result: b"r".to_vec(),
        committed: false,
    }
}

fn merged(mut a: Record, b: Record) -> Record {
    CvRDT::merge(&mut a, b);
    a
}

/// Any record of key "k", every field drawn from a few values, so that
/// draws often share a claim or an expiry.
fn any_record() -> impl Strategy<Value = Record> {
    (
        0u64..3,
        0u64..3,
        any::<bool>(),
        0u8..2,
        0u8..2,
        any::<bool>(),
    )
        .prop_map(|(claim, expires, recovered, f, r, committed)| Record {
            key: "k".into(),
            claim: Token(claim),
            fingerprint: vec![f],
            recovered,
            expires_at_ms: expires,
            result: vec![r],
            committed,
        })
}

#[test]
fn the_higher_claim_wins_then_the_later_expiry() {
    let first = record("k", 4, 100);
    let later = record("k", 6, 150);
    assert_eq!(merged(first.clone(), later.clone()), later);
    assert_eq!(merged(later.clone(), first), later.clone());
    let kept_longer = record("k", 6, 160);
    assert_eq!(merged(later.clone(), kept_longer.clone()), kept_longer);
    assert_eq!(merged(kept_longer.clone(), later), kept_longer);
}

/// `LWWReg` keeps the first of two values with equal markers; this
/// register never sees two different values as equal, so which arrives
/// first never matters.
#[test]
fn two_different_records_of_one_claim_never_tie() {
    let a = record("k", 5, 10);
    let mut b = a.clone();
    b.result = b"other".to_vec();
    assert_ne!(a.rank(), b.rank());
    assert_eq!(merged(a.clone(), b.clone()), merged(b, a));
}

#[test]
fn knowing_a_record_is_committed_only_grows() {
    let acked = record("k", 5, 10);
    let committed = Record {
        committed: true,
        ..acked.clone()
    };
    assert_eq!(merged(acked.clone(), committed.clone()), committed);
    assert_eq!(merged(committed.clone(), acked), committed);
}

/// I2: only a committed record is replayed; I7: a record of another
/// request is a mismatch, committed or not; an expired one is no record.
#[test]
fn a_lookup_replays_only_committed_records_and_reports_other_requests() {
    let mut records = Records::default();
    assert_eq!(records.lookup("k", b"f", 0, SKEW), Lookup::Unknown);
    records.merge(&record("k", 1, 10), 0, SKEW);
    assert_eq!(
        records.lookup("k", b"f", 0, SKEW),
        Lookup::Unknown,
        "acked, not known committed"
    );
    assert_eq!(records.lookup("k", b"g", 0, SKEW), Lookup::Mismatch);
    let committed = Record {
        committed: true,
        ..record("k", 1, 10)
    };
    records.merge(&committed, 0, SKEW);
    assert_eq!(
        records.lookup("k", b"f", 0, SKEW),
        Lookup::Replay(committed.clone())
    );
    assert_eq!(records.lookup("k", b"g", 0, SKEW), Lookup::Mismatch);
    assert_eq!(
        records.lookup("k", b"f", 12, SKEW),
        Lookup::Unknown,
        "expired"
    );
}

/// A replica keeps each record packed: what comes out is what went in,
/// and the ids anti-entropy compares are the records' own.
#[test]
fn a_replica_gives_back_its_records_and_their_ids() {
    let mut records = Records::default();
    let mut a = record("k", 1, 10);
    a.fingerprint = vec![7; FINGERPRINT_BYTES_MAX];
    a.result = Vec::new();
    let mut b = record(&"j".repeat(KEY_BYTES_MAX), 2, 20);
    b.fingerprint = Vec::new();
    b.committed = true;
    assert!(records.merge(&a, 0, SKEW));
    assert!(records.merge(&b, 0, SKEW));
    assert_eq!(
        records.records().collect::<Vec<_>>(),
        vec![b.clone(), a.clone()]
    );
    let mut ids = records.ids(0, SKEW);
    ids.sort_unstable();
    let mut want = vec![a.id(), b.id()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert_eq!(records.fetch(&[a.id()], 0, None, 0, SKEW), vec![a.clone()]);
    assert_eq!(records.ids(12, SKEW), vec![b.id()], "a expired at 10 + 2");
}

#[test]
fn records_of_other_keys_do_not_merge() {
    let mut a = record("k", 1, 10);
    let b = record("j", 2, 10);
    assert!(matches!(
        a.validate_merge(&b),
        Err(RecordError::OtherKey { .. })
    ));
    let before = a.clone();
    CvRDT::merge(&mut a, b);
    assert_eq!(a, before);
}

#[test]
fn sizes_are_checked() {
    let mut r = record("k", 1, 10);
    assert_eq!(r.check(), Ok(()));
    r.key = "x".repeat(KEY_BYTES_MAX + 1);
    assert_eq!(
        r.check(),
        Err(RecordError::InvalidKey {
            bytes: KEY_BYTES_MAX + 1
        })
    );
    r.key = String::new();
    assert_eq!(r.check(), Err(RecordError::InvalidKey { bytes: 0 }));
    r.key = "x".repeat(KEY_BYTES_MAX);
    r.result = vec![0; RESULT_BYTES_MAX + 1];
    assert!(matches!(r.check(), Err(RecordError::ResultTooLarge { .. })));
    r.result = vec![0; RESULT_BYTES_MAX];
    r.fingerprint = vec![0; FINGERPRINT_BYTES_MAX + 1];
    assert!(matches!(
        r.check(),
        Err(RecordError::FingerprintTooLong { .. })
    ));
}

#[test]
fn an_expired_record_is_dropped_and_not_taken_back() {
    let mut records = Records::default();
    let r = record("k", 1, 10);
    assert!(records.merge(&r, 5, SKEW));
    assert!(records.get("k", 11, SKEW).is_some(), "kept for the skew");
    assert!(records.get("k", 12, SKEW).is_none(), "expired at 10 + 2");
    assert_eq!(records.expire(12, SKEW), vec![b"k".to_vec()]);
    assert!(!records.merge(&r, 12, SKEW), "a peer's copy stays out");
    assert!(records.is_empty());
}

/// A key's life as the leader writes it: completions of claims in token
/// order, each expiring no earlier than the one before it (the leader's
/// stamp, I6), committed or not yet; the same claim's record now and then
/// written twice with a later expiry, and once in a while a claim's
/// record that differs (what only a fault could make, to exercise the
/// tie-breaker).
fn key_history(key: &'static str) -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec((0u64..4, 0u8..3, any::<bool>(), any::<bool>()), 1..5).prop_map(
        move |claims| {
            let mut expires = 0;
            let mut claim = 0;
            let mut out = Vec::new();
            for (gap, how, recovered, committed) in claims {
                expires += gap;
                // 0: a new claim; 1: this claim again, kept longer; 2: this
                // claim again with another result.
                if how == 0 || claim == 0 {
                    claim += 1;
                }
                let mut r = record(key, claim, expires);
                r.recovered = recovered;
                r.committed = committed;
                if how == 2 {
                    r.result = b"other".to_vec();
                }
                out.push(r);
            }
            out
        },
    )
}

/// What every replica holds at `now_ms` once every record arrived: per
/// key, the highest-ranked record, unless it has expired.
fn expected(all: &[Record], now_ms: u64) -> Vec<Record> {
    let mut replica = Replica::default();
    replica.merge_all(all.iter().cloned());
    replica
        .entries()
        .filter(|r| !r.is_expired(now_ms, SKEW))
        .cloned()
        .collect()
}

proptest! {
    #[test]
    fn merge_is_commutative(a in any_record(), b in any_record()) {
        prop_assert_eq!(merged(a.clone(), b.clone()), merged(b, a));
    }

    #[test]
    fn merge_is_associative(a in any_record(), b in any_record(), c in any_record()) {
        let left = merged(merged(a.clone(), b.clone()), c.clone());
        let right = merged(a, merged(b, c));
        prop_assert_eq!(left, right);
    }

    #[test]
    fn merge_is_idempotent(a in any_record(), b in any_record()) {
        let once = merged(a.clone(), b.clone());
        prop_assert_eq!(merged(once.clone(), b), once.clone());
        prop_assert_eq!(merged(once.clone(), once.clone()), once);
    }

    /// Whole replicas: the same laws through `crdts::CvRDT`.
    #[test]
    fn replicas_merge_as_a_join(
        a in prop::collection::vec(any_record(), 0..4),
        b in prop::collection::vec(any_record(), 0..4),
        c in prop::collection::vec(any_record(), 0..4),
    ) {
        let copy = |rs: &[Record]| {
            let mut r = Replica::default();
            r.merge_all(rs.iter().cloned());
            r
        };
        let join = |mut x: Replica<Record>, y: Replica<Record>| {
            CvRDT::merge(&mut x, y);
            x
        };
        let (a, b, c) = (copy(&a), copy(&b), copy(&c));
        prop_assert_eq!(join(a.clone(), b.clone()), join(b.clone(), a.clone()));
        prop_assert_eq!(
            join(join(a.clone(), b.clone()), c.clone()),
            join(a.clone(), join(b.clone(), c))
        );
        prop_assert_eq!(join(a.clone(), a.clone()), a);
    }

    /// Expiry included: three replicas get the records of two keys in
    /// orders of their own, each dropping expired records at times of
    /// its own as the clock goes on; at the end (after a last drop at
    /// `end`) all three hold the same records, those `expected` names.
    #[test]
    fn replicas_converge_whatever_the_order_and_the_drops(
        k in key_history("k"),
        j in key_history("j"),
        seeds in prop::collection::vec(any::<u64>(), 3),
        end in 0u64..16,
    ) {
        let all: Vec<Record> = k.into_iter().chain(j).collect();
        let want = expected(&all, end);
        for seed in seeds {
            // A permutation and drop times drawn from the seed.
            let mut order: Vec<usize> = (0..all.len()).collect();
            let mut x = seed | 1;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for i in (1..order.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            let mut records = Records::default();
            let mut now = 0;
            for i in order {
                now = (now + next() % 3).min(end);
                if next() % 2 == 0 {
                    records.expire(now, SKEW);
                }
                records.merge(&all[i], now, SKEW);
            }
            records.expire(end, SKEW);
            let held: Vec<Record> = records.records().collect();
            prop_assert_eq!(&held, &want);
        }
    }
}
