use super::*;
use crate::locks::claim::Begin;
use crate::locks::{EPOCH_MAX, LockReply, SEQ_MAX, token_epoch};

const V: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const ME: NodeId = NodeId(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Harness {
    table: LockTable,
    replies: Vec<(Ticket, LockReply)>,
    batches: Vec<(BatchId, Vec<Entry>)>,
    forgets: Vec<(Floor, Vec<Entry>)>,
    new_epoch: bool,
    spent: bool,
    next: u64,
    completed: Vec<(String, Token, Box<ClaimFacts>)>,
    /// What the leader's records say, told with every begin and
    /// completion.
    records: RecordsSay,
}

impl Harness {
    fn new() -> Harness {
        let mut table = LockTable::new(TableConfig::new(&V, 0.01));
        let mut out = table.take_over(ms(0), Epoch(5), Replica::default());
        out.extend(table.records_reconciled(ms(0), |_| None));
        let mut h = Harness {
            records: RecordsSay::default(),
            table,
            replies: Vec::new(),
            batches: Vec::new(),
            forgets: Vec::new(),
            new_epoch: false,
            spent: false,
            next: 0,
            completed: Vec::new(),
        };
        h.absorb(out);
        h
    }

    /// A harness on a table of `config`, serving epoch 5 with its
    /// records reconciled.
    fn with(config: TableConfig) -> Harness {
        let mut table = LockTable::new(config);
        let out = table.take_over(ms(0), Epoch(5), Replica::default());
        let mut h = Harness::new();
        h.table = table;
        h.batches.clear();
        h.absorb(out);
        h.open_begins();
        h
    }

    /// The table's records are reconciled with its promisers: begins are
    /// answered.
    fn open_begins(&mut self) {
        let said = self.records.completion.clone();
        let out = self.table.records_reconciled(ms(0), move |_| said.clone());
        self.absorb(out);
    }

    fn absorb(&mut self, out: Vec<LockOutput>) {
        for o in out {
            match o {
                LockOutput::Reply { ticket, reply } => self.replies.push((ticket, reply)),
                LockOutput::Replicate { batch, entries } => self.batches.push((batch, entries)),
                LockOutput::Forget { floor, entries } => self.forgets.push((floor, entries)),
                LockOutput::NewEpochNeeded => self.new_epoch = true,
                LockOutput::TokensSpent => self.spent = true,
                LockOutput::Completed { key, claim, facts } => {
                    self.completed.push((key, claim, facts))
                }
            }
        }
    }

    fn ticket(&mut self) -> Ticket {
        self.next += 1;
        Ticket(self.next)
    }

    fn acquire(&mut self, now: u64, name: &str, ttl: u64, wait: u64, id: Option<&str>) -> Ticket {
        let t = self.ticket();
        let out =
            self.table
                .handle_acquire(ms(now), t, NodeId(9), name, ttl, wait, id.map(String::from));
        self.absorb(out);
        t
    }

    /// Flushes and has `acks` voters (besides nobody) ack every batch.
    fn commit(&mut self, now: u64, acks: &[NodeId]) {
        let out = self.table.flush();
        self.absorb(out);
        for (batch, _) in std::mem::take(&mut self.batches) {
            for &v in acks {
                let out = self.table.handle_ack(ms(now), batch, v);
                self.absorb(out);
            }
        }
    }

    fn reply(&mut self, t: Ticket) -> Option<LockReply> {
        let at = self.replies.iter().position(|(x, _)| *x == t)?;
        Some(self.replies.remove(at).1)
    }

    fn granted(&mut self, t: Ticket) -> Token {
        match self.reply(t) {
            Some(LockReply::Granted { token, .. }) => token,
            other => panic!("expected a grant for {t:?}, got {other:?}"),
        }
    }
}

#[test]
fn a_grant_is_told_only_after_a_majority_holds_it() {
    let mut h = Harness::new();
    let t = h.acquire(0, "job", 1000, 0, None);
    assert_eq!(h.reply(t), None, "nothing before the batch is sent");
    h.commit(1, &[ME]);
    assert_eq!(h.reply(t), None, "one ack of three is not a majority");
    // The same batch acked by a second voter commits.
    let mut h = Harness::new();
    let t = h.acquire(0, "job", 1000, 0, None);
    h.commit(1, &[ME, NodeId(3)]);
    let tok = h.granted(t);
    assert_eq!(token_epoch(tok), Epoch(5));
    assert_eq!(tok.0 & 0xffff_ffff, 1);
}

#[test]
fn many_requests_share_one_batch_and_tokens_increase() {
    let mut h = Harness::new();
    let ts: Vec<Ticket> = (0..10)
        .map(|i| h.acquire(0, &format!("l{i}"), 1000, 0, None))
        .collect();
    let out = h.table.flush();
    h.absorb(out);
    assert_eq!(h.batches.len(), 1);
    assert_eq!(h.batches[0].1.len(), 10);
    h.commit(1, &[ME, NodeId(2)]);
    let mut last = Token(0);
    for t in ts {
        let tok = h.granted(t);
        assert!(tok > last);
        last = tok;
    }
}

#[test]
fn waiters_are_served_first_in_first_out_and_time_out_as_held() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    let b = h.acquire(2, "x", 1000, 5000, None);
    let c = h.acquire(3, "x", 1000, 5000, None);
    let d = h.acquire(4, "x", 1000, 10, None);
    let e = h.acquire(4, "x", 1000, 0, None);
    assert_eq!(h.reply(e), Some(LockReply::Held), "wait 0 on a held lock");
    let out = h.table.handle_tick(ms(20));
    h.absorb(out);
    assert_eq!(h.reply(d), Some(LockReply::Held), "d's wait ran out");
    let r = h.ticket();
    let out = h.table.handle_release(ms(30), r, "x", ta);
    h.absorb(out);
    h.commit(31, &[ME, NodeId(3)]);
    assert_eq!(h.reply(r), Some(LockReply::Released));
    let tb = h.granted(b);
    assert!(tb > ta);
    assert_eq!(h.reply(c), None, "c still waits behind b");
    let r = h.ticket();
    let out = h.table.handle_release(ms(40), r, "x", tb);
    h.absorb(out);
    h.commit(41, &[ME, NodeId(3)]);
    assert!(h.granted(c) > tb);
}

#[test]
fn a_full_queue_is_refused_with_its_bound() {
    let mut h = Harness::new();
    h.table.config.waiters_max = 2;
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    h.granted(a);
    h.acquire(2, "x", 1000, 1000, None);
    h.acquire(2, "x", 1000, 1000, None);
    let full = h.acquire(2, "x", 1000, 1000, None);
    assert_eq!(h.reply(full), Some(LockReply::QueueFull { max: 2 }));
}

#[test]
fn k3_the_leader_expires_a_lease_only_after_the_drift_allowance() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    let b = h.acquire(1, "x", 1000, 5000, None);
    // 1000·1.01/0.99 = 1020.2 ms.
    let out = h.table.handle_tick(ms(1020));
    h.absorb(out);
    h.commit(1020, &[ME, NodeId(2)]);
    assert_eq!(h.reply(b), None, "not expired at 1020 ms");
    let out = h.table.handle_tick(ms(1021));
    h.absorb(out);
    h.commit(1021, &[ME, NodeId(2)]);
    assert!(h.granted(b) > ta);
    // The expiry went out as a tombstone carrying the freed token (K2).
    let r = h.ticket();
    let out = h.table.handle_renew(ms(1022), r, "x", ta);
    h.absorb(out);
    assert_eq!(h.reply(r), Some(LockReply::Lost));
}

#[test]
fn renewals_are_answered_at_once_and_stale_tokens_are_lost() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    for at in [500, 1000, 1500] {
        let r = h.ticket();
        let out = h.table.handle_renew(ms(at), r, "x", ta);
        assert!(
            !out.iter()
                .any(|o| matches!(o, LockOutput::Replicate { .. }))
        );
        h.absorb(out);
        assert_eq!(h.reply(r), Some(LockReply::Renewed { ttl_ms: 1000 }));
        let out = h.table.handle_tick(ms(at + 490));
        h.absorb(out);
        assert!(
            h.batches.is_empty(),
            "a holder renewing in time is never marked"
        );
    }
    for (name, tok) in [("x", ta + 1), ("x", ta - 1), ("y", ta)] {
        let r = h.ticket();
        let out = h.table.handle_renew(ms(1600), r, name, tok);
        h.absorb(out);
        assert_eq!(h.reply(r), Some(LockReply::Lost));
    }
    // Releasing twice: the retry is answered the same way, not "lost".
    for _ in 0..2 {
        let r = h.ticket();
        let out = h.table.handle_release(ms(1700), r, "x", ta);
        h.absorb(out);
        h.commit(1700, &[ME, NodeId(3)]);
        assert_eq!(h.reply(r), Some(LockReply::Released));
    }
}

#[test]
fn k1_a_spent_sequence_asks_for_a_new_epoch_and_grants_nothing() {
    let mut h = Harness::new();
    h.table.set_next_seq(SEQ_MAX);
    let a = h.acquire(0, "a", 1000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    assert_eq!(h.granted(a), Token((5 << 32) | SEQ_MAX));
    let b = h.acquire(1, "b", 1000, 100, None);
    h.commit(1, &[ME, NodeId(2)]);
    assert!(h.new_epoch);
    assert_eq!(h.reply(b), None);
    // At the last epoch that can form tokens there is no new epoch to
    // ask for: the table says once that tokens are spent, and the leader
    // keeps serving renewals and releases rather than resigning in a loop.
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let mut out = table.take_over(ms(0), EPOCH_MAX, Replica::default());
    table.set_next_seq(SEQ_MAX + 1);
    for t in 1..=2 {
        out.extend(table.handle_acquire(ms(0), Ticket(t), ME, "a", 1000, 100, None));
    }
    out.extend(table.flush());
    assert_eq!(
        out.iter()
            .filter(|o| **o == LockOutput::TokensSpent)
            .count(),
        1
    );
    assert!(!out.contains(&LockOutput::NewEpochNeeded));
    assert!(
        !out.iter()
            .any(|o| matches!(o, LockOutput::Replicate { .. }))
    );
    assert_eq!(super::super::token(EPOCH_MAX + 1, 1), None);
}

#[test]
fn k4_a_retry_with_the_request_id_gets_the_same_grant() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, Some("req-1"));
    let again = h.acquire(0, "x", 1000, 0, Some("req-1"));
    h.commit(1, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    assert_eq!(h.granted(again), ta);
    let later = h.acquire(5, "x", 1000, 0, Some("req-1"));
    assert_eq!(h.granted(later), ta);
    let other = h.acquire(5, "x", 1000, 0, Some("req-2"));
    assert_eq!(h.reply(other), Some(LockReply::Held));
}

#[test]
fn k4_a_grant_committed_after_its_requester_gave_up_is_released() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 10_000, 100, None);
    let out = h.table.flush();
    h.absorb(out);
    // The batch commits only after wait + grace (1.1 s): sent again
    // under a new id at 1 s (acks come no later than that after a send),
    // acked at 1.2 s.
    h.resend_and_ack_late();
    assert_eq!(h.reply(a), Some(LockReply::Held));
    // Its tombstone is in the next batch, and the lock is free again.
    h.commit(1201, &[ME, NodeId(2)]);
    let b = h.acquire(1202, "x", 1000, 0, None);
    h.commit(1203, &[ME, NodeId(2)]);
    h.granted(b);
}

#[test]
fn adopted_grants_keep_their_token_and_get_a_full_ttl_from_takeover() {
    let mut merged = Replica::default();
    let old = Token((4 << 32) | 7);
    merged.merge(Entry {
        name: Name::lock("x"),
        token: old,
        state: EntryState::held(1000, NodeId(9), None, 0),
        claim: None,
        written: Epoch(0),
    });
    // A stale grant under a tombstone of the same token stays freed (K2).
    merged.merge(Entry {
        name: Name::lock("y"),
        token: old + 1,
        state: EntryState::Free { request_id: None },
        claim: None,
        written: Epoch(0),
    });
    assert!(!merged.merge(Entry {
        name: Name::lock("y"),
        token: old + 1,
        state: EntryState::held(1000, NodeId(9), None, 0),
        claim: None,
        written: Epoch(0),
    }));
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let out = table.take_over(ms(5000), Epoch(5), merged);
    // The term's first batch carries the adopted table (finding 1).
    let [LockOutput::Replicate { batch, entries }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(entries.len(), 2);
    for v in [ME, NodeId(2)] {
        table.handle_ack(ms(5010), *batch, v);
    }
    let out = table.handle_renew(ms(5100), Ticket(1), "x", old);
    assert_eq!(
        out,
        vec![LockOutput::Reply {
            ticket: Ticket(1),
            reply: LockReply::Renewed { ttl_ms: 1000 }
        }]
    );
    let out = table.handle_tick(ms(6000));
    assert!(out.is_empty(), "still held within the TTL: {out:?}");
    let mut out = table.handle_acquire(ms(6000), Ticket(2), ME, "y", 1000, 0, None);
    out.extend(table.flush());
    assert!(matches!(&out[0], LockOutput::Replicate { entries, .. }
            if entries.iter().any(|e| e.name.text == "y" && e.token == Token((5 << 32) | 1))));
}

#[test]
fn stepping_down_answers_every_open_request_with_no_quorum() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    let b = h.acquire(0, "x", 1000, 1000, None);
    let out = h.table.step_down();
    h.absorb(out);
    assert_eq!(h.reply(a), Some(LockReply::NoQuorum));
    assert_eq!(h.reply(b), Some(LockReply::NoQuorum));
    let c = h.acquire(0, "x", 1000, 0, None);
    assert_eq!(h.reply(c), Some(LockReply::NotLeader));
}

#[test]
fn bad_input_is_refused_and_nothing_is_held() {
    let mut h = Harness::new();
    let long = "n".repeat(257);
    for (name, ttl, wait, id) in [
        ("", 1000, 0, None),
        (long.as_str(), 1000, 0, None),
        ("x", 99, 0, None),
        ("x", 3_600_001, 0, None),
        ("x", 1000, 60_001, None),
        ("x", 1000, 0, Some("i".repeat(129))),
    ] {
        let t = h.ticket();
        let out = h.table.handle_acquire(ms(0), t, ME, name, ttl, wait, id);
        h.absorb(out);
        assert!(matches!(h.reply(t), Some(LockReply::Invalid(_))));
    }
    assert_eq!(h.table.active(), 0);
    assert!(h.table.flush().is_empty());
}

#[test]
fn only_voters_acks_count() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(0, &[ME, NodeId(7), NodeId(8)]);
    assert_eq!(h.reply(a), None);
}

mod merge {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        (0..3u8, 0..6u64, any::<bool>(), 0..4u64).prop_map(|(n, t, free, version)| Entry {
            name: Name::lock(format!("n{n}")),
            token: Token(t),
            state: if free {
                EntryState::Free { request_id: None }
            } else {
                // One write per version: a version names its content.
                EntryState::Held {
                    ttl_ms: 1000,
                    owner: NodeId(1),
                    request_id: None,
                    quiet_ms: version * 100,
                    version,
                    bound: None,
                }
            },
            claim: None,
            written: Epoch(t % 2),
        })
    }

    proptest! {
        /// Merging is order-independent: any delivery order of batches,
        /// promises and recovery copies gives the same table.
        #[test]
        fn merge_is_order_independent(mut entries in prop::collection::vec(entry(), 0..20), seed in any::<u64>()) {
            let mut a = Replica::default();
            a.merge_all(entries.clone());
            let mut s = seed;
            for i in (1..entries.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                entries.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut b = Replica::default();
            b.merge_all(entries.clone());
            b.merge_all(entries);
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn an_adopted_grant_expires_and_passes_to_the_waiter() {
    let mut merged = Replica::default();
    merged.merge(Entry {
        name: Name::lock("x"),
        token: Token((4 << 32) | 1),
        state: EntryState::held(1000, NodeId(9), None, 0),
        claim: None,
        written: Epoch(0),
    });
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let out = table.take_over(ms(0), Epoch(5), merged);
    let [LockOutput::Replicate { batch, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    for v in [ME, NodeId(2)] {
        table.handle_ack(ms(5), *batch, v);
    }
    let mut out = table.handle_acquire(ms(10), Ticket(1), ME, "x", 1000, 5000, None);
    out.extend(table.flush());
    assert!(out.is_empty(), "{out:?}");
    let mut out = table.handle_tick(ms(1100));
    out.extend(table.flush());
    let LockOutput::Replicate { batch, entries } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(entries.len(), 2, "the tombstone and the new grant");
    let batch = *batch;
    assert!(table.handle_ack(ms(1101), batch, ME).is_empty());
    let out = table.handle_ack(ms(1101), batch, NodeId(2));
    assert!(matches!(
        &out[..],
        [LockOutput::Reply {
            ticket: Ticket(1),
            reply: LockReply::Granted { .. }
        }]
    ));
}

#[test]
fn serving_the_same_epoch_again_goes_on_from_its_last_token() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    let mut known = Replica::default();
    for (_, entries) in std::mem::take(&mut h.batches) {
        known.merge_all(entries);
    }
    known.merge(Entry {
        name: Name::lock("x"),
        token: ta,
        state: EntryState::held(1000, NodeId(9), None, 0),
        claim: None,
        written: Epoch(0),
    });
    h.table.step_down();
    h.table.take_over(ms(10), Epoch(5), known);
    let b = h.acquire(20, "y", 1000, 0, None);
    h.commit(20, &[ME, NodeId(2)]);
    assert!(h.granted(b) > ta);
}

/// K3 with K4: a retry that joins a grant still being replicated counts
/// its lease from the retry; the leader's expiry must not come earlier.
#[test]
fn a_retry_joining_an_uncommitted_grant_extends_the_leader_expiry() {
    let mut h = Harness::new();
    let first = h.acquire(0, "x", 1000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let t0 = h.granted(first);
    // A waiter with a request id; the lock passes to it at 100 ms, and
    // the batch carrying the grant is slow to commit.
    let a = h.acquire(10, "x", 1000, 5000, Some("r"));
    let r = h.ticket();
    let out = h.table.handle_release(ms(100), r, "x", t0);
    h.absorb(out);
    let out = h.table.flush();
    h.absorb(out);
    // The requester gave up on its first attempt and retries at 900 ms.
    let retry = h.acquire(900, "x", 1000, 4100, Some("r"));
    h.commit(950, &[ME, NodeId(2)]);
    let token = h.granted(retry);
    assert_eq!(h.granted(a), token);
    // The retry's client counts validity from 900 ms: up to 1,890 ms.
    let mut out = h.table.handle_tick(ms(1900));
    out.extend(h.table.flush());
    assert!(!frees(&out, "x"), "expired before 900 + 1,020 ms: {out:?}");
    h.commit(1900, &[ME, NodeId(2)]);
    let mut out = h.table.handle_tick(ms(1921));
    out.extend(h.table.flush());
    assert!(frees(&out, "x"), "expired after 900 + 1,020 ms: {out:?}");
}

impl Harness {
    /// An acquire asked through `owner`.
    fn acquire_via(
        &mut self,
        now: u64,
        owner: NodeId,
        name: &str,
        ttl: u64,
        wait: u64,
        id: Option<&str>,
    ) -> Ticket {
        let t = self.ticket();
        let out =
            self.table
                .handle_acquire(ms(now), t, owner, name, ttl, wait, id.map(String::from));
        self.absorb(out);
        t
    }

    /// Whether any batch sent so far carries a grant of `name`.
    fn grants_sent(&self, name: &str) -> bool {
        self.batches
            .iter()
            .flat_map(|(_, e)| e)
            .any(|e| e.name.text == name && e.is_held())
    }
}

/// True if `out` replicates a release or expiry of `name`.
fn frees(out: &[LockOutput], name: &str) -> bool {
    out.iter().any(|o| {
        matches!(o, LockOutput::Replicate { entries, .. }
            if entries.iter().any(|e| e.name.text == name && !e.is_held()))
    })
}

fn adopted(name: &str, token: impl Into<Token>, ttl_ms: u64, request_id: Option<&str>) -> Entry {
    Entry {
        name: Name::lock(name),
        token: token.into(),
        state: EntryState::held(ttl_ms, NodeId(9), request_id.map(String::from), 0),
        claim: None,
        written: Epoch(0),
    }
}

/// Finding 1 (K2): a grant adopted at takeover may sit on a minority (its
/// batch was lost before the old leader's lease lapsed). Nothing adopted
/// is reported, renewed or counted held before a batch of the new term
/// carrying it has a majority.
#[test]
fn finding_1_an_adopted_grant_is_reported_only_once_a_majority_holds_it() {
    let old = Token((5 << 32) | 3);
    let mut merged = Replica::default();
    merged.merge(adopted("g", old, 5000, Some("r")));
    let mut h = Harness::new();
    h.table.step_down();
    let out = h.table.take_over(ms(1000), Epoch(5), merged);
    h.absorb(out);
    // The requester retries with its request id: not told yet.
    let retry = h.acquire(1010, "g", 5000, 0, Some("r"));
    assert_eq!(h.reply(retry), None, "reported before a majority holds it");
    let r = h.ticket();
    let out = h.table.handle_renew(ms(1010), r, "g", old);
    h.absorb(out);
    assert_eq!(
        h.reply(r),
        Some(LockReply::NoQuorum),
        "renewed as committed"
    );
    // The term's first batch carries the adopted table; once a majority
    // acked it, the retry hears of its grant.
    assert!(h.grants_sent("g"), "the adopted grant is replicated again");
    h.commit(1020, &[ME, NodeId(2)]);
    assert_eq!(h.granted(retry), old);
}

/// Finding 2: batch ids are unique for the life of the table, so an ack
/// of a batch from an earlier stint of the same epoch (late on the wire,
/// or from the group-commit thread) commits nothing of the next stint.
#[test]
fn finding_2_an_ack_from_an_earlier_stint_of_the_epoch_commits_nothing() {
    let mut h = Harness::new();
    let a = h.acquire(0, "a", 1000, 0, None);
    let out = h.table.flush();
    h.absorb(out);
    let (first, _) = h.batches.remove(0);
    // The lease lapses with the batch unacked; the leader serves epoch 5
    // again from what it had issued.
    h.table.step_down();
    let mut known = Replica::default();
    known.merge(adopted("a", (5 << 32) | 1, 1000, None));
    let out = h.table.take_over(ms(500), Epoch(5), known);
    h.absorb(out);
    h.batches.clear();
    let b = h.acquire(510, "b", 1000, 0, None);
    let out = h.table.flush();
    h.absorb(out);
    let (second, _) = h.batches.remove(0);
    let out = h.table.handle_ack(ms(520), second, ME);
    h.absorb(out);
    // Voter 2's ack of the first stint's batch arrives late.
    let out = h.table.handle_ack(ms(520), first, NodeId(2));
    h.absorb(out);
    assert_eq!(h.reply(b), None, "committed by an ack of another batch");
    let _ = h.reply(a);
}

/// Finding 5 (K3, K4): a retry carrying a smaller TTL is answered with the
/// TTL granted, so the leader must keep the lease for that TTL from the
/// retry's arrival (its client counts validity from the retry).
#[test]
fn finding_5_a_retry_with_a_smaller_ttl_keeps_the_granted_ttl() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 10_000, 0, Some("r"));
    h.commit(0, &[ME, NodeId(2)]);
    h.granted(a);
    let retry = h.acquire(5000, "x", 1000, 0, Some("r"));
    assert!(matches!(
        h.reply(retry),
        Some(LockReply::Granted { ttl_ms: 10_000, .. })
    ));
    // The retry's client believes its lease until 5,000 + 10,000 ms.
    let mut out = h.table.handle_tick(ms(14_000));
    out.extend(h.table.flush());
    assert!(
        !frees(&out, "x"),
        "expired under a believing holder: {out:?}"
    );
}

/// K4: the leader releases a grant committed after its requester stops
/// listening. The requester listens `REQUESTER_GRACE` (1 s) past its wait
/// from its send; the leader's cut-off, `REPLY_GRACE` (0.5 s) past the
/// wait from arrival, falls inside that window, not after it.
#[test]
fn k4_a_grant_committed_after_the_requesters_deadline_is_released() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 10_000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    let b = h.acquire(10, "x", 10_000, 100, None);
    let r = h.ticket();
    let out = h.table.handle_release(ms(90), r, "x", ta);
    h.absorb(out);
    let out = h.table.flush();
    h.absorb(out);
    // The batch with b's grant commits at 650 ms: b's requester, which
    // sent at most at 10 ms, listens until 1,110 ms, so an answer sent
    // later than 610 ms could miss it by a round trip of 500 ms.
    let (batch, _) = h.batches.remove(0);
    for v in [ME, NodeId(2)] {
        let out = h.table.handle_ack(ms(650), batch, v);
        h.absorb(out);
    }
    assert_eq!(h.reply(b), Some(LockReply::Held));
}

/// K4: a retry with the request id finds its grant whichever node it is
/// sent through (an HTTP client retries on another agent).
#[test]
fn k4_a_retry_through_another_node_gets_the_same_grant() {
    let mut h = Harness::new();
    let a = h.acquire_via(0, NodeId(4), "x", 1000, 0, Some("req"));
    // Uncommitted, then committed.
    let b = h.acquire_via(0, NodeId(5), "x", 1000, 0, Some("req"));
    h.commit(1, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    assert_eq!(h.granted(b), ta);
    let c = h.acquire_via(2, NodeId(6), "x", 1000, 0, Some("req"));
    assert_eq!(h.granted(c), ta);
}

/// A late or duplicated acquire that arrives after its grant was released
/// grants nothing (it would go to nobody and hold the lock for a TTL).
#[test]
fn a_duplicate_acquire_after_the_release_grants_nothing() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, Some("req"));
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    let r = h.ticket();
    let out = h.table.handle_release(ms(10), r, "x", ta);
    h.absorb(out);
    h.commit(10, &[ME, NodeId(2)]);
    assert_eq!(h.reply(r), Some(LockReply::Released));
    h.batches.clear();
    let dup = h.acquire(20, "x", 1000, 0, Some("req"));
    let out = h.table.flush();
    h.absorb(out);
    assert!(!h.grants_sent("x"), "granted again to nobody");
    assert!(!matches!(h.reply(dup), Some(LockReply::Granted { .. })));
}

/// Runs terms of `serve` each (epochs from 6), `gap` apart, over a table
/// that voters replicate faithfully; returns the time `name` was freed.
fn serve_terms(merged: Replica, name: &str, terms: u64, serve: u64, gap: u64) -> Option<u64> {
    let mut voters = merged;
    let mut now = 0;
    for epoch in 6..6 + terms {
        let mut table = LockTable::new(TableConfig::new(&V, 0.01));
        let mut out = table.take_over(ms(now), Epoch(epoch), voters.clone());
        let end = now + serve;
        loop {
            out.extend(table.flush());
            let mut freed = false;
            for o in std::mem::take(&mut out) {
                if let LockOutput::Replicate { batch, entries } = o {
                    freed |= entries.iter().any(|e| e.name.text == name && !e.is_held());
                    voters.merge_all(entries);
                    for v in [ME, NodeId(2)] {
                        table.handle_ack(ms(now), batch, v);
                    }
                }
            }
            if freed {
                return Some(now);
            }
            now += 50;
            if now >= end {
                break;
            }
            out = table.handle_tick(ms(now));
        }
        now += gap;
    }
    None
}

/// A dead holder's lock expires although leaders change faster than its
/// TTL: each leader writes how long the holder has been quiet, and the
/// next one shortens the adopted TTL by it. Without quiet marks every
/// takeover gave the grant a full TTL again, so it never expired.
#[test]
fn a_dead_holders_lock_expires_though_leaders_change_faster_than_its_ttl() {
    let mut merged = Replica::default();
    merged.merge(adopted("x", (5 << 32) | 1, 4000, None));
    // Terms of 3 s, 0.5 s apart; the TTL is 4 s (4,080 ms at the leader).
    let freed = serve_terms(merged, "x", 6, 3000, 500).expect("the lock was never freed");
    // Term 1 (0–3 s) marks 2 s quiet at 2 s; term 2 (from 3.5 s) keeps
    // it 4,080 − 2,020 ms: freed at about 5.6 s. Never before the dead
    // holder's own count could end (4 s after its last renewal, before 0).
    assert!((4000..=6000).contains(&freed), "freed at {freed} ms");
}

/// After a quiet mark may be on the voters, a renewal is answered only
/// once a write of the grant with nothing quiet holds on a majority: a
/// later leader then credits no quiet time that the renewal cut short.
#[test]
fn after_a_quiet_mark_a_renewal_is_answered_once_a_majority_holds_it() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 2000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    // Quiet for half the TTL: a mark.
    let out = h.table.handle_tick(ms(1000));
    h.absorb(out);
    let out = h.table.flush();
    h.absorb(out);
    let marks: Vec<Entry> = h.batches.iter().flat_map(|(_, e)| e.clone()).collect();
    assert!(matches!(
        &marks[..],
        [Entry { state: EntryState::Held { quiet_ms, .. }, .. }] if *quiet_ms >= 980
    ));
    h.commit(1000, &[ME, NodeId(2)]);
    let r = h.ticket();
    let out = h.table.handle_renew(ms(1100), r, "x", ta);
    h.absorb(out);
    assert_eq!(h.reply(r), None, "answered before the reset holds");
    h.commit(1101, &[ME, NodeId(2)]);
    assert_eq!(h.reply(r), Some(LockReply::Renewed { ttl_ms: 2000 }));
    // The reset is on a majority: the next renewal goes at once.
    let r = h.ticket();
    let out = h.table.handle_renew(ms(1500), r, "x", ta);
    h.absorb(out);
    assert_eq!(h.reply(r), Some(LockReply::Renewed { ttl_ms: 2000 }));
}

/// A takeover after a mark keeps the credited quiet time: a holder that
/// renewed before the mark but not since loses its lock earlier, never
/// before its own count ends.
#[test]
fn a_takeover_credits_the_quiet_time_but_never_cuts_a_renewed_lease() {
    let mut merged = Replica::default();
    merged.merge(Entry {
        name: Name::lock("x"),
        token: Token((4 << 32) | 1),
        state: EntryState::Held {
            ttl_ms: 10_000,
            owner: NodeId(9),
            request_id: None,
            quiet_ms: 6000,
            version: (4 << 32) | 5,
            bound: None,
        },
        claim: None,
        written: Epoch(0),
    });
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let out = table.take_over(ms(0), Epoch(5), merged);
    let [LockOutput::Replicate { batch, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    for v in [ME, NodeId(2)] {
        table.handle_ack(ms(0), *batch, v);
    }
    // 10,202 − 6,060 ms.
    let mut out = table.handle_tick(ms(4100));
    out.extend(table.flush());
    assert!(!frees(&out, "x"), "{out:?}");
    let mut out = table.handle_tick(ms(4150));
    out.extend(table.flush());
    assert!(frees(&out, "x"), "{out:?}");
}

/// K1 for write numbers: a term's writes (grants, adoptions, quiet marks,
/// durable renewals) are numbered within its epoch; when the numbers are
/// spent the table asks for a new epoch and writes nothing with a lower
/// number (which would lose the merge to an older write of the grant).
#[test]
fn k1_spent_write_numbers_ask_for_a_new_epoch_and_write_nothing_lower() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 2000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    h.table.set_next_write(SEQ_MAX + 1);
    // A quiet mark is due: none is written.
    let out = h.table.handle_tick(ms(1000));
    h.absorb(out);
    let out = h.table.flush();
    h.absorb(out);
    assert!(h.new_epoch, "a new epoch is asked for");
    assert!(h.batches.is_empty(), "wrote {:?}", h.batches);
    // Nor is a new grant.
    let b = h.acquire(1000, "y", 2000, 100, None);
    let out = h.table.flush();
    h.absorb(out);
    assert!(h.batches.is_empty());
    assert_eq!(h.reply(b), None);
    let r = h.ticket();
    let out = h.table.handle_renew(ms(1000), r, "x", ta);
    h.absorb(out);
    assert_eq!(h.reply(r), Some(LockReply::Renewed { ttl_ms: 2000 }));
}

/// A request queued through a node that then died is dropped once the
/// membership says so: granted, it would go to nobody and hold the lock
/// for a TTL. One that a retry also brought through a live node stays.
#[test]
fn requests_queued_only_through_a_dead_node_are_dropped() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(0, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    let dead = h.acquire_via(1, NodeId(4), "x", 1000, 5000, Some("d"));
    let kept = h.acquire_via(2, NodeId(6), "x", 1000, 5000, Some("k"));
    let retry = h.acquire_via(3, NodeId(7), "x", 1000, 5000, Some("k"));
    let next = h.acquire_via(4, NodeId(5), "x", 1000, 5000, Some("n"));
    let out = h.table.handle_node_gone(NodeId(4));
    h.absorb(out);
    let out = h.table.handle_node_gone(NodeId(6));
    h.absorb(out);
    assert_eq!(h.reply(dead), Some(LockReply::NoQuorum));
    assert_eq!(h.reply(kept), None, "its retry came through node 7");
    let r = h.ticket();
    let out = h.table.handle_release(ms(10), r, "x", ta);
    h.absorb(out);
    h.commit(10, &[ME, NodeId(2)]);
    let tk = h.granted(retry);
    assert_eq!(h.granted(kept), tk);
    let r = h.ticket();
    let out = h.table.handle_release(ms(20), r, "x", tk);
    h.absorb(out);
    h.commit(20, &[ME, NodeId(2)]);
    assert!(h.granted(next) > tk, "the dead node's request was skipped");
}

/// Wall-clock time in the claim tests: the table is told it with every
/// request.
const WALL: u64 = 1_000_000;

impl Harness {
    fn begin(&mut self, now: u64, key: &str, fp: &[u8], wait: u64, id: Option<&str>) -> Ticket {
        let t = self.ticket();
        let begin = Begin {
            key: key.into(),
            fingerprint: fp.to_vec(),
            ttl_ms: 60_000,
            claim_ttl_ms: 1000,
            wait_ms: wait,
            request_id: id.map(String::from),
        };
        let out = self.table.handle_begin(
            ms(now),
            WALL + now,
            t,
            NodeId(9),
            begin,
            self.records.clone(),
        );
        self.absorb(out);
        t
    }

    fn complete(&mut self, now: u64, key: &str, claim: Token, result: &[u8]) -> Ticket {
        let t = self.ticket();
        let out = self.table.handle_complete(
            ms(now),
            WALL + now,
            t,
            key,
            claim,
            result.to_vec(),
            self.records.clone(),
        );
        self.absorb(out);
        t
    }

    fn claim_request(&mut self, now: u64, request: LockRequest) -> Ticket {
        let t = self.ticket();
        let out = self.table.handle_request(
            ms(now),
            WALL + now,
            t,
            NodeId(9),
            request,
            self.records.clone(),
        );
        self.absorb(out);
        t
    }

    /// The claim told to `t`: its token and `recovered`.
    fn claimed(&mut self, t: Ticket) -> (Token, bool) {
        match self.reply(t) {
            Some(LockReply::Claimed {
                claim, recovered, ..
            }) => (claim, recovered),
            other => panic!("expected a claim for {t:?}, got {other:?}"),
        }
    }

    /// The replayed result told to `t`.
    fn replayed(&mut self, t: Ticket) -> (Vec<u8>, bool) {
        match self.reply(t) {
            Some(LockReply::Replay { facts, .. }) => {
                let c = facts.completion.expect("a replay carries its completion");
                (c.result, facts.recovered)
            }
            other => panic!("expected a replay for {t:?}, got {other:?}"),
        }
    }
}

/// The execute-once flow on the leader's table: a claim told only once a
/// majority holds it; a second begin is "in progress" (or a mismatch with
/// another fingerprint, reported first, I7); the completion told once on
/// a majority, then pushed to every peer; every later begin replays it.
#[test]
fn a_claim_completes_once_and_every_later_begin_replays_it() {
    let mut h = Harness::new();
    let t = h.begin(0, "pay-1", b"fp", 0, None);
    assert_eq!(
        h.reply(t),
        None,
        "nothing before a majority holds the claim"
    );
    h.commit(1, &[ME, NodeId(2)]);
    let (claim, recovered) = h.claimed(t);
    assert!(!recovered);
    let again = h.begin(2, "pay-1", b"fp", 0, None);
    assert_eq!(h.reply(again), Some(LockReply::InProgress));
    let other = h.begin(2, "pay-1", b"other", 0, None);
    assert_eq!(h.reply(other), Some(LockReply::FingerprintMismatch));

    let done = h.complete(3, "pay-1", claim, b"charged 10");
    assert_eq!(h.reply(done), None, "told only once a majority holds it");
    assert!(
        h.completed.is_empty(),
        "pushed to peers only once committed"
    );
    h.commit(4, &[ME, NodeId(3)]);
    assert_eq!(h.reply(done), Some(LockReply::Recorded));
    let (key, pushed, facts) = h.completed.pop().unwrap();
    assert_eq!((key.as_str(), pushed), ("pay-1", claim));
    let c = facts.completion.unwrap();
    assert_eq!(c.expires_at_ms, WALL + 3 + 60_000, "stamped at commit (I6)");

    let retry = h.begin(5, "pay-1", b"fp", 0, None);
    assert_eq!(h.replayed(retry), (b"charged 10".to_vec(), false));
    let other = h.begin(5, "pay-1", b"other", 0, None);
    assert_eq!(h.reply(other), Some(LockReply::FingerprintMismatch));
    // A retried completion of the same claim hears the same; a
    // completion under a claim that never held the key is lost.
    let dup = h.complete(6, "pay-1", claim, b"charged 10");
    assert_eq!(h.reply(dup), Some(LockReply::Recorded));
    let stale = h.complete(6, "pay-1", Token(claim.0 - 1), b"x");
    assert_eq!(h.reply(stale), Some(LockReply::Lost));
    // Once the record expired, the key is claimed anew, not recovered.
    let later = h.begin(60_004, "pay-1", b"fp", 0, None);
    h.commit(60_005, &[ME, NodeId(2)]);
    let (again, recovered) = h.claimed(later);
    assert!(again > claim && !recovered);
}

/// I1: a claim and a user lock of the same text are different names.
#[test]
fn i1_claims_and_locks_of_the_same_text_never_meet() {
    let mut h = Harness::new();
    let lock = h.acquire(0, "x", 1000, 0, None);
    let claim = h.begin(0, "x", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let token = h.granted(lock);
    let (claim, _) = h.claimed(claim);
    assert_ne!(token, claim);
    let release = h.claim_request(
        2,
        LockRequest::Release {
            name: "x".into(),
            token: claim,
        },
    );
    assert_eq!(
        h.reply(release),
        Some(LockReply::Lost),
        "a claim's token frees no lock"
    );
    let abort = h.claim_request(
        2,
        LockRequest::Abort {
            key: "x".into(),
            claim: token,
        },
    );
    assert_eq!(
        h.reply(abort),
        Some(LockReply::Lost),
        "a lock's token frees no claim"
    );
    let t = h.ticket();
    let out = h.table.handle_list(ms(2), t, 10);
    h.absorb(out);
    match h.reply(t) {
        Some(LockReply::Locks { locks, .. }) => {
            assert_eq!(locks.len(), 1, "claims are not listed as locks: {locks:?}")
        }
        other => panic!("{other:?}"),
    }
}

/// I5: a claim that ran out sets `recovered` for the next claimant; an
/// abort keeps it; the completion that follows carries it, and clears it
/// for the claim after the record.
#[test]
fn i5_recovered_is_set_by_expiry_kept_by_aborts_and_cleared_by_a_completion() {
    let mut h = Harness::new();
    let t = h.begin(0, "k", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (first, _) = h.claimed(t);
    // The claimant dies: its claim runs out (1,000 ms with the drift
    // allowance).
    let out = h.table.handle_tick(ms(1100));
    h.absorb(out);
    let t = h.begin(1101, "k", b"fp", 0, None);
    h.commit(1102, &[ME, NodeId(2)]);
    let (second, recovered) = h.claimed(t);
    assert!(second > first && recovered, "the next claimant is told");
    let abort = h.claim_request(
        1103,
        LockRequest::Abort {
            key: "k".into(),
            claim: second,
        },
    );
    h.commit(1104, &[ME, NodeId(2)]);
    assert_eq!(h.reply(abort), Some(LockReply::Released));
    let t = h.begin(1105, "k", b"fp", 0, None);
    h.commit(1106, &[ME, NodeId(2)]);
    let (third, recovered) = h.claimed(t);
    assert!(recovered, "an abort does not clear it");
    h.complete(1107, "k", third, b"r");
    h.commit(1108, &[ME, NodeId(2)]);
    let t = h.begin(1109, "k", b"fp", 0, None);
    assert_eq!(h.replayed(t), (b"r".to_vec(), true), "the record says so");
    let t = h.begin(1109 + 60_000, "k", b"fp", 0, None);
    h.commit(1109 + 60_001, &[ME, NodeId(2)]);
    assert!(!h.claimed(t).1, "the completion cleared it");
}

/// Waiting instead of failing: a begin with a wait queues behind the live
/// claim and gets the first request's result once it completes.
#[test]
fn a_waiting_begin_gets_the_replay_when_the_claim_completes() {
    let mut h = Harness::new();
    let t = h.begin(0, "k", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    let waiter = h.begin(2, "k", b"fp", 5000, None);
    assert_eq!(h.reply(waiter), None);
    h.complete(3, "k", claim, b"ok");
    assert_eq!(h.reply(waiter), None, "the replay waits for the commit");
    h.commit(4, &[ME, NodeId(2)]);
    assert_eq!(h.replayed(waiter), (b"ok".to_vec(), false));
    // A waiter behind a claim that is aborted gets the claim.
    let t = h.begin(60_010, "j", b"fp", 0, None);
    h.commit(60_011, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    let waiter = h.begin(60_012, "j", b"fp", 5000, None);
    h.claim_request(
        60_013,
        LockRequest::Abort {
            key: "j".into(),
            claim,
        },
    );
    h.commit(60_014, &[ME, NodeId(2)]);
    assert!(h.claimed(waiter).0 > claim);
}

/// A review of seed 8050548669421979793 of the idempotency chaos: the
/// leader of epoch 1 expired claim 1 of a key and granted claim 2 in a
/// batch that reached only its own copy; the leader of epoch 2, from a
/// majority that never saw it, took claim 1 over, and claim 1 completed,
/// its result told to its client. At a later takeover the merge of the
/// promises (the first leader's copy among them) kept claim 2, the higher
/// token, and lost the completion: the key ran again and a second result
/// was told. A write of a later epoch wins the merge (K2): the completion
/// survives any order of merging, and is replayed after the takeover.
#[test]
fn a_grant_a_deposed_leader_made_on_a_minority_does_not_outrank_a_later_completion() {
    let facts = |completion: Option<Completion>, recovered: bool| {
        Some(Box::new(ClaimFacts {
            completion,
            recovered,
            fingerprint: b"fp".to_vec(),
            record_ttl_ms: 60_000,
        }))
    };
    // Epoch 1's minority batch: claim 2 granted after claim 1 ran out.
    let stale = Entry {
        name: Name::claim("k"),
        token: Token((1 << 32) | 5),
        state: EntryState::held(2000, NodeId(2), None, (1 << 32) | 9),
        claim: facts(None, true),
        written: Epoch(1),
    };
    // Epoch 2's majority batch: claim 1 (adopted) completed.
    let completed = Entry {
        name: Name::claim("k"),
        token: Token((1 << 32) | 2),
        state: EntryState::Free { request_id: None },
        claim: facts(
            Some(Completion {
                expires_at_ms: WALL + 60_000,
                result: b"first".to_vec(),
            }),
            false,
        ),
        written: Epoch(2),
    };
    for order in [[&stale, &completed], [&completed, &stale]] {
        let mut merged = Replica::default();
        for e in order {
            merged.merge(e.clone());
        }
        assert_eq!(merged.get(&Name::claim("k")), Some(&completed));
        let mut table = LockTable::new(TableConfig::new(&V, 0.01));
        let mut h = Harness::new();
        let out = table.take_over(ms(0), Epoch(3), merged);
        h.table = table;
        h.open_begins();
        h.open_begins();
        h.batches.clear();
        h.absorb(out);
        let t = h.begin(1, "k", b"fp", 0, None);
        h.commit(2, &[ME, NodeId(2)]);
        assert_eq!(h.replayed(t).0, b"first".to_vec());
    }
}

/// I2, I3: a completion adopted at takeover (seen on one promising voter,
/// perhaps a minority) is replayed only once the term's first batch has
/// written it to a majority; a claim that is not committed cannot
/// complete yet.
#[test]
fn i3_an_adopted_completion_is_replayed_only_once_a_majority_holds_it() {
    let mut merged = Replica::default();
    merged.merge(Entry {
        name: Name::claim("k"),
        token: Token((4 << 32) | 1),
        state: EntryState::Free { request_id: None },
        claim: Some(Box::new(ClaimFacts {
            completion: Some(Completion {
                expires_at_ms: WALL + 60_000,
                result: b"first".to_vec(),
            }),
            recovered: false,
            fingerprint: b"fp".to_vec(),
            record_ttl_ms: 60_000,
        })),
        written: Epoch(0),
    });
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let mut h = Harness::new();
    let out = table.take_over(ms(0), Epoch(5), merged);
    h.table = table;
    h.batches.clear();
    h.absorb(out);
    h.open_begins();
    let t = h.begin(1, "k", b"fp", 0, None);
    assert_eq!(
        h.reply(t),
        None,
        "not before the rewrite holds on a majority"
    );
    h.commit(2, &[ME, NodeId(2)]);
    assert_eq!(h.replayed(t).0, b"first".to_vec());
    // A claim not yet on a majority cannot complete.
    let t = h.begin(3, "other", b"fp", 0, None);
    let out = h.table.flush();
    h.absorb(out);
    let (batch, _) = h.batches.pop().unwrap();
    let claim = Token((5 << 32) | 1);
    let early = h.complete(4, "other", claim, b"x");
    assert_eq!(h.reply(early), Some(LockReply::NoQuorum));
    for v in [ME, NodeId(2)] {
        let out = h.table.handle_ack(ms(5), batch, v);
        h.absorb(out);
    }
    assert_eq!(h.claimed(t).0, claim);
}

/// Bad input is refused with the limit it broke, and nothing is held.
#[test]
fn bad_begins_are_refused_and_nothing_is_claimed() {
    let mut h = Harness::new();
    let long = "k".repeat(201);
    let bad = [
        Begin {
            key: long,
            ..begin("k")
        },
        Begin {
            key: String::new(),
            ..begin("k")
        },
        Begin {
            fingerprint: vec![0; 257],
            ..begin("k")
        },
        Begin {
            ttl_ms: 999,
            ..begin("k")
        },
        Begin {
            claim_ttl_ms: 99,
            ..begin("k")
        },
        Begin {
            wait_ms: 60_001,
            ..begin("k")
        },
    ];
    for b in bad {
        let t = h.ticket();
        let out = h
            .table
            .handle_begin(ms(0), WALL, t, ME, b.clone(), RecordsSay::default());
        h.absorb(out);
        assert!(matches!(h.reply(t), Some(LockReply::Invalid(_))), "{b:?}");
    }
    let t = h.ticket();
    let out = h.table.handle_complete(
        ms(0),
        WALL,
        t,
        "k",
        Token(1),
        vec![0; 64 * 1024 + 1],
        RecordsSay::default(),
    );
    h.absorb(out);
    assert!(matches!(h.reply(t), Some(LockReply::Invalid(_))));
    assert_eq!(h.table.active(), 0);
    h.commit(1, &[ME, NodeId(2)]);
    assert!(h.batches.is_empty() && h.completed.is_empty());
}

fn begin(key: &str) -> Begin {
    Begin {
        key: key.into(),
        fingerprint: b"fp".to_vec(),
        ttl_ms: 60_000,
        claim_ttl_ms: 1000,
        wait_ms: 0,
        request_id: None,
    }
}

/// I7 on every path: a begin of another fingerprint is a mismatch against
/// the live claim (before "in progress", and before it could queue), the
/// completed record, and a claim that ran out (recovery); an abort of a
/// claim that never ran out frees the key for another request.
#[test]
fn i7_another_fingerprint_is_a_mismatch_on_every_path() {
    let mut h = Harness::new();
    let t = h.begin(0, "k", b"a", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    let waiting = h.begin(2, "k", b"b", 5000, None);
    assert_eq!(
        h.reply(waiting),
        Some(LockReply::FingerprintMismatch),
        "not queued"
    );
    // Recovery: the claim runs out; the key stays request a's.
    let out = h.table.handle_tick(ms(1100));
    h.absorb(out);
    h.commit(1101, &[ME, NodeId(2)]);
    let t = h.begin(1102, "k", b"b", 0, None);
    assert_eq!(
        h.reply(t),
        Some(LockReply::FingerprintMismatch),
        "recovery path"
    );
    let t = h.begin(1102, "k", b"a", 0, None);
    h.commit(1103, &[ME, NodeId(2)]);
    let (again, recovered) = h.claimed(t);
    assert!(again > claim && recovered);
    h.complete(1104, "k", again, b"done");
    h.commit(1105, &[ME, NodeId(2)]);
    let t = h.begin(1106, "k", b"b", 0, None);
    assert_eq!(
        h.reply(t),
        Some(LockReply::FingerprintMismatch),
        "replay path"
    );
    // An abort of a claim that never ran out frees the key.
    let t = h.begin(1107, "j", b"a", 0, None);
    h.commit(1108, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    h.claim_request(
        1109,
        LockRequest::Abort {
            key: "j".into(),
            claim,
        },
    );
    h.commit(1110, &[ME, NodeId(2)]);
    let t = h.begin(1111, "j", b"b", 0, None);
    h.commit(1112, &[ME, NodeId(2)]);
    assert!(!h.claimed(t).1);
}

/// I4: on a voter's copy, a completion of claim k never replaces a grant
/// of a later claim of the key (the merge ranks the token first), in any
/// order of arrival.
#[test]
fn i4_a_completion_of_an_earlier_claim_loses_to_a_later_grant() {
    let facts = |completion: Option<Completion>| {
        Some(Box::new(ClaimFacts {
            completion,
            recovered: false,
            fingerprint: b"fp".to_vec(),
            record_ttl_ms: 60_000,
        }))
    };
    let later = Entry {
        name: Name::claim("k"),
        token: Token(2),
        state: EntryState::held(1000, NodeId(9), None, 7),
        claim: facts(None),
        written: Epoch(0),
    };
    let completion = Entry {
        name: Name::claim("k"),
        token: Token(1),
        state: EntryState::Free { request_id: None },
        claim: facts(Some(Completion {
            expires_at_ms: WALL,
            result: b"late".to_vec(),
        })),
        written: Epoch(0),
    };
    for order in [[&later, &completion], [&completion, &later]] {
        let mut copy = Replica::default();
        for e in order {
            copy.merge(e.clone());
        }
        assert_eq!(copy.get(&Name::claim("k")), Some(&later));
    }
}

/// I6's bound: at `claims_max` keys a begin of a new key is refused
/// (`StoreFull`), nothing unexpired is evicted, and once a record has
/// expired (plus the skew) it is collected and the key space frees up;
/// aborted claims are collected, claims that ran out are kept (I5, I7).
#[test]
fn i6_the_record_bound_refuses_new_keys_and_expired_records_free_it() {
    let mut h = Harness::with(TableConfig {
        claims_max: 3,
        ..TableConfig::new(&V, 0.01)
    });
    let mut claims = Vec::new();
    for key in ["a", "b", "c"] {
        let t = h.begin(0, key, b"fp", 0, None);
        h.commit(1, &[ME, NodeId(2)]);
        claims.push(h.claimed(t).0);
    }
    let full = h.begin(2, "d", b"fp", 0, None);
    assert_eq!(h.reply(full), Some(LockReply::StoreFull { max: 3 }));
    // a completes, b is aborted, c runs out.
    h.complete(3, "a", claims[0], b"r");
    h.claim_request(
        3,
        LockRequest::Abort {
            key: "b".into(),
            claim: claims[1],
        },
    );
    h.commit(4, &[ME, NodeId(2)]);
    // The leader's records hold a's completion now: it counts there.
    h.records.held = 1;
    let out = h.table.handle_tick(ms(1200));
    h.absorb(out);
    h.commit(1201, &[ME, NodeId(2)]);
    assert_eq!(h.table.collect(WALL + 1202), 1, "only the abort goes");
    assert_eq!(h.table.claims(), 2);
    let t = h.begin(1203, "d", b"fp", 0, None);
    h.commit(1204, &[ME, NodeId(2)]);
    let (d, _) = h.claimed(t);
    let full = h.begin(1205, "e", b"fp", 0, None);
    assert_eq!(h.reply(full), Some(LockReply::StoreFull { max: 3 }));
    // The record is replayed until it expires, kept the skew longer.
    let expiry = WALL + 3 + 60_000;
    assert_eq!(
        h.table.collect(expiry + 59_999),
        0,
        "not before expiry + skew"
    );
    let replay = h.begin(1206, "a", b"fp", 0, None);
    assert_eq!(h.replayed(replay).0, b"r".to_vec());
    assert_eq!(h.table.collect(expiry + 60_000), 1);
    // The records drop it at the same time.
    h.records.held = 0;
    let t = h.begin(1207, "e", b"fp", 0, None);
    h.commit(1208, &[ME, NodeId(2)]);
    assert!(h.claimed(t).0 > d);
    // The claim that ran out is kept: its key stays request fp's.
    let other = h.begin(1209, "c", b"other", 0, None);
    assert_eq!(h.reply(other), Some(LockReply::FingerprintMismatch));
}

/// K1 with collection: a leader serving the same epoch again goes on
/// from its last token even when the tombstones that held its highest
/// tokens were collected.
#[test]
fn a_collected_claim_never_lets_a_token_repeat() {
    let mut h = Harness::new();
    let t = h.begin(0, "k", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    h.claim_request(
        2,
        LockRequest::Abort {
            key: "k".into(),
            claim,
        },
    );
    h.commit(3, &[ME, NodeId(2)]);
    assert_eq!(h.table.collect(WALL), 1);
    let out = h.table.step_down();
    h.absorb(out);
    let out = h.table.take_over(ms(10), Epoch(5), Replica::default());
    h.absorb(out);
    let t = h.acquire(11, "x", 1000, 0, None);
    h.commit(12, &[ME, NodeId(2)]);
    assert!(h.granted(t) > claim);
}

/// The claims' bytes are bounded too: the whole table travels in one
/// frame with an election promise, so a begin of a new key is refused
/// once the claims weigh `claim_bytes_max`.
#[test]
fn claims_past_the_byte_bound_are_refused() {
    let mut h = Harness::with(TableConfig {
        claim_bytes_max: 300,
        ..TableConfig::new(&V, 0.01)
    });
    let t = h.begin(0, "a", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    h.complete(2, "a", claim, &[0; 400]);
    h.commit(3, &[ME, NodeId(2)]);
    h.records.held = 1;
    // A completion not settled yet fills the bound for a moment: a new
    // key waits.
    let t = h.begin(4, "b", b"fp", 0, None);
    assert_eq!(h.reply(t), Some(LockReply::NoQuorum));
    let replay = h.begin(4, "a", b"fp", 0, None);
    assert_eq!(
        h.replayed(replay).0,
        vec![0; 400],
        "a known key still replays"
    );
    // So does one in the leader's own copy.
    assert_eq!(h.table.settle(|_, _| true), 1);
    h.records.unsettled_bytes = 400;
    let t = h.begin(5, "b", b"fp", 0, None);
    assert_eq!(h.reply(t), Some(LockReply::NoQuorum));
    h.records.unsettled_bytes = 0;
    let t = h.begin(6, "b", b"fp", 0, None);
    h.commit(7, &[ME, NodeId(2)]);
    h.claimed(t);
    // Live claims that fill it are the store full.
    let t = h.begin(8, "c", b"f".repeat(250).as_slice(), 0, None);
    h.commit(9, &[ME, NodeId(2)]);
    h.claimed(t);
    let t = h.begin(10, "d", b"fp", 0, None);
    assert_eq!(h.reply(t), Some(LockReply::StoreFull { max: 3 }));
}

/// The record a leader's store would hold of `key`'s completion by
/// `claim`, as the driver tells the table.
fn settled(claim: Token, fingerprint: &[u8], result: &[u8]) -> RecordsSay {
    RecordsSay {
        completion: Some((
            claim,
            Box::new(ClaimFacts {
                completion: Some(Completion {
                    expires_at_ms: WALL + 60_000,
                    result: result.to_vec(),
                }),
                recovered: false,
                fingerprint: fingerprint.to_vec(),
                record_ttl_ms: 0,
            }),
        )),
        held: 1,
        unsettled_bytes: 0,
    }
}

/// A new leader answers no begin before its records are reconciled with
/// a majority of its promisers (a completion settled out of their copies
/// is in their records only), and the same epoch served again keeps
/// them open.
#[test]
fn begins_wait_for_the_promisers_records() {
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let out = table.take_over(ms(0), Epoch(5), Replica::default());
    let mut h = Harness::new();
    h.table = table;
    h.batches.clear();
    h.absorb(out);
    h.commit(0, &[ME, NodeId(2)]);
    assert!(!h.table.records_ready());
    let t = h.begin(1, "k", b"fp", 0, None);
    assert_eq!(h.reply(t), Some(LockReply::NoQuorum));
    // Nor any other claim request: the claims of the promised copies
    // are not adopted yet.
    let t = h.complete(1, "k", Token(1), b"r");
    assert_eq!(h.reply(t), Some(LockReply::NoQuorum), "never lost before");
    h.open_begins();
    assert!(h.table.records_ready());
    let t = h.begin(2, "k", b"fp", 0, None);
    h.commit(3, &[ME, NodeId(2)]);
    h.claimed(t);
    // A new term waits again (the driver reopens at once a term of an
    // epoch it reconciled before).
    let out = h.table.take_over(ms(20), Epoch(6), Replica::default());
    h.absorb(out);
    assert!(!h.table.records_ready());
}

/// A completion settled out of the table is answered from the leader's
/// records: a replay, a mismatch for another fingerprint (I7), and a
/// retried completion of its claim hears "recorded", not "lost".
#[test]
fn a_completion_settled_out_of_the_table_is_answered_from_the_records() {
    let mut h = Harness::new();
    let t = h.begin(0, "k", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    let t = h.complete(2, "k", claim, b"first");
    assert_eq!(
        h.table.settle(|_, _| true),
        0,
        "not while its batch awaits a majority"
    );
    h.commit(3, &[ME, NodeId(2)]);
    assert_eq!(h.reply(t), Some(LockReply::Recorded));
    assert_eq!(h.table.settleable(), vec![(Name::claim("k"), claim)]);
    assert_eq!(h.table.settle(|_, c| c == claim), 1);
    assert_eq!(h.table.claims(), 0);
    // Without the records the key would be claimed anew.
    h.records = settled(claim, b"fp", b"first");
    let t = h.begin(4, "k", b"fp", 0, None);
    assert_eq!(h.replayed(t).0, b"first".to_vec());
    let t = h.begin(4, "k", b"other", 0, None);
    assert_eq!(h.reply(t), Some(LockReply::FingerprintMismatch));
    let t = h.complete(5, "k", claim, b"first");
    assert_eq!(h.reply(t), Some(LockReply::Recorded));
    // Expired, the key is claimed anew, with a later token.
    h.records.completion.as_mut().unwrap().1.completion = Some(Completion {
        expires_at_ms: WALL,
        result: b"first".to_vec(),
    });
    let t = h.begin(6, "k", b"fp", 0, None);
    h.commit(7, &[ME, NodeId(2)]);
    assert!(h.claimed(t).0 > claim);
}

/// A claim's grant left in some voter's copy after its completion
/// settled elsewhere (a late batch, a minority copy) is adopted at
/// takeover; a begin then replays the records' completion rather than
/// answering "in progress", and the grant's completion is not written
/// twice.
#[test]
fn a_grant_left_in_a_copy_after_its_completion_settled_is_not_in_progress() {
    let claim = Token((4 << 32) | 1);
    let mut merged = Replica::default();
    merged.merge(Entry {
        name: Name::claim("k"),
        token: claim,
        state: EntryState::Held {
            ttl_ms: 1000,
            owner: NodeId(9),
            request_id: None,
            quiet_ms: 0,
            version: 4 << 32,
            bound: None,
        },
        claim: Some(Box::new(ClaimFacts {
            completion: None,
            recovered: false,
            fingerprint: b"fp".to_vec(),
            record_ttl_ms: 60_000,
        })),
        written: Epoch(4),
    });
    // Records reconciled later than the adoption: the grant, adopted,
    // is neither in progress nor completed twice.
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let out = table.take_over(ms(0), Epoch(5), merged.clone());
    let mut h = Harness::new();
    h.table = table;
    h.batches.clear();
    h.absorb(out);
    h.open_begins();
    h.commit(1, &[ME, NodeId(2)]);
    h.records = settled(claim, b"fp", b"first");
    let t = h.begin(2, "k", b"fp", 0, None);
    assert_eq!(h.replayed(t).0, b"first".to_vec());
    let t = h.complete(3, "k", claim, b"again");
    assert_eq!(h.reply(t), Some(LockReply::Recorded));
    h.commit(4, &[ME, NodeId(2)]);
    assert!(h.completed.is_empty(), "no second completion");

    // As the driver does it: the grant waits for the records, which hold
    // its completion; the completion is what the new epoch writes. (The
    // grant rewritten in this epoch would outrank the completion on a
    // voter that has not settled it yet, the last place it is held in a
    // copy.)
    let mut table = LockTable::new(TableConfig::new(&V, 0.01));
    let out = table.take_over(ms(0), Epoch(5), merged);
    let mut h = Harness::new();
    h.table = table;
    h.batches.clear();
    h.absorb(out);
    assert!(
        h.batches
            .iter()
            .flat_map(|(_, es)| es)
            .all(|e| e.name != Name::claim("k")),
        "nothing of the claim written before the records"
    );
    h.records = settled(claim, b"fp", b"first");
    h.open_begins();
    let written: Vec<Entry> = h.batches.iter().flat_map(|(_, es)| es.clone()).collect();
    let entry = written
        .iter()
        .find(|e| e.name == Name::claim("k"))
        .expect("written");
    assert!(entry.is_settleable() && entry.token == claim, "{entry:?}");
    assert_eq!(entry.written, Epoch(5));
    h.commit(1, &[ME, NodeId(2)]);
    let t = h.begin(2, "k", b"fp", 0, None);
    assert_eq!(h.replayed(t).0, b"first".to_vec());
}

/// Only completed claims' tombstones settle: live claims, claims that
/// ran out and aborted ones stay in the table.
#[test]
fn only_completions_settle() {
    let mut h = Harness::new();
    let live = h.begin(0, "live", b"fp", 0, None);
    let out_of_time = h.begin(0, "ran-out", b"fp", 0, None);
    let aborted = h.begin(0, "aborted", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (_, _) = h.claimed(live);
    let (_, _) = h.claimed(out_of_time);
    let (claim, _) = h.claimed(aborted);
    h.claim_request(
        2,
        LockRequest::Abort {
            key: "aborted".into(),
            claim,
        },
    );
    h.commit(3, &[ME, NodeId(2)]);
    assert!(h.table.settleable().is_empty());
    assert_eq!(h.table.settle(|_, _| true), 0);
    assert_eq!(h.table.claims(), 3);
}

/// The record bound counts the leader's records besides its table.
#[test]
fn the_record_bound_counts_the_records() {
    let mut h = Harness::with(TableConfig {
        claims_max: 3,
        ..TableConfig::new(&V, 0.01)
    });
    h.records.held = 2;
    let t = h.begin(0, "a", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    h.claimed(t);
    let t = h.begin(2, "b", b"fp", 0, None);
    assert_eq!(h.reply(t), Some(LockReply::StoreFull { max: 3 }));
}

#[test]
fn a_lock_release_is_answered_once_applied_and_its_tombstone_goes_with_the_next_batch() {
    let mut h = Harness::new();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    let b = h.acquire(2, "x", 1000, 5000, None);
    let r = h.ticket();
    let out = h.table.handle_release(ms(3), r, "x", ta);
    h.absorb(out);
    assert_eq!(h.reply(r), None, "not before its tombstone is sent");
    // A retry of the same release at this leader waits the same.
    let again = h.ticket();
    let out = h.table.handle_release(ms(4), again, "x", ta);
    h.absorb(out);
    assert_eq!(h.reply(again), None);
    // The tombstone and the waiter's grant travel in the next batch; the
    // release is answered as it is sent, after it in the outputs, before
    // any voter holds the tombstone, and the grant is told only once a
    // majority holds them.
    let out = h.table.flush();
    let sent = out
        .iter()
        .position(|o| matches!(o, LockOutput::Replicate { .. }))
        .expect("a batch");
    let told = out
        .iter()
        .position(|o| matches!(o, LockOutput::Reply { ticket, .. } if *ticket == r))
        .expect("the release answered");
    assert!(sent < told, "the batch first: {out:?}");
    h.absorb(out);
    assert_eq!(h.reply(r), Some(LockReply::Released));
    assert_eq!(h.reply(again), Some(LockReply::Released));
    let entries: Vec<&Entry> = h.batches.iter().flat_map(|(_, e)| e).collect();
    assert!(
        entries.iter().any(|e| e.token > ta && e.is_held()),
        "the waiter's grant, a higher token, outranks the tombstone: {entries:?}"
    );
    assert_eq!(h.reply(b), None, "no grant before its batch commits");
    h.commit(5, &[ME, NodeId(3)]);
    assert!(h.granted(b) > ta);
}

/// K2 for releases: a release is answered only as the batch carrying its
/// tombstone goes out, never before (a leader killed between the two
/// would leave the lock held until its TTL though its holder was told it
/// was free); while no batch can go, it waits, and a leader that steps
/// down first answers "no quorum, retry" (the retry frees it at the next
/// leader, which adopted the grant).
#[test]
fn a_release_is_answered_only_as_its_tombstone_is_sent() {
    let mut h = Harness::new();
    h.batches.clear();
    let a = h.acquire(0, "x", 1000, 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    // Two batches with effects in flight, and four in all: no slot.
    for (i, name) in ["p", "q", "s", "t"].into_iter().enumerate() {
        h.acquire(2, name, 1000, 0, None);
        if i < 2 {
            let out = h.table.flush();
            h.absorb(out);
        }
    }
    let r = h.ticket();
    let out = h.table.handle_release(ms(3), r, "x", ta);
    h.absorb(out);
    let out = h.table.flush();
    h.absorb(out);
    assert_eq!(h.reply(r), None, "its tombstone has not left");
    let out = h.table.step_down();
    h.absorb(out);
    assert_eq!(h.reply(r), Some(LockReply::NoQuorum));
}

#[test]
fn a_claim_abort_is_answered_only_once_its_tombstone_holds() {
    let mut h = Harness::new();
    h.open_begins();
    let t = h.begin(0, "k", b"fp", 0, None);
    h.commit(1, &[ME, NodeId(2)]);
    let (claim, _) = h.claimed(t);
    let abort = h.claim_request(
        2,
        LockRequest::Abort {
            key: "k".into(),
            claim,
        },
    );
    assert_eq!(
        h.reply(abort),
        None,
        "not before a majority holds the tombstone"
    );
    let out = h.table.flush();
    h.absorb(out);
    let sent: Vec<BatchId> = h.batches.drain(..).map(|(b, _)| b).collect();
    for &batch in &sent {
        let out = h.table.handle_ack(ms(3), batch, ME);
        h.absorb(out);
    }
    assert_eq!(h.reply(abort), None, "one ack of three is not a majority");
    for &batch in &sent {
        let out = h.table.handle_ack(ms(4), batch, NodeId(2));
        h.absorb(out);
    }
    assert_eq!(h.reply(abort), Some(LockReply::Released));
}

#[test]
fn ended_requests_are_remembered_up_to_the_bound_oldest_forgotten_first() {
    let mut ended = Ended::default();
    let x = Name::lock("x");
    ended.remember(&x, "r0");
    ended.remember(&x, "r0");
    for i in 1..ENDED_REQUESTS_MAX {
        ended.remember(&Name::lock(format!("n{i}")), "r");
    }
    assert!(ended.contains(&x, "r0"), "one of its two entries is left");
    assert!(!ended.contains(&x, "r1"));
    assert!(!ended.contains(&Name::lock("y"), "r0"));
    ended.remember(&x, "r1");
    assert!(!ended.contains(&x, "r0"), "both entries forgotten");
    assert!(ended.contains(&x, "r1"));
    assert!(ended.contains(&Name::lock("n1"), "r"));
    assert_eq!(ended.order.len(), ENDED_REQUESTS_MAX);
}

#[test]
fn a_watch_is_answered_when_the_holder_changes_or_its_wait_runs_out() {
    let mut h = Harness::new();
    let watch = |h: &mut Harness, now: u64, seen: Option<Token>, wait_ms: u64| {
        let t = h.ticket();
        let request = LockRequest::Watch {
            name: "x".into(),
            seen,
            wait_ms,
        };
        let out = h.table.handle_request(
            ms(now),
            WALL + now,
            t,
            NodeId(9),
            request,
            RecordsSay::default(),
        );
        h.absorb(out);
        t
    };
    let status_token = |reply: Option<LockReply>| match reply {
        Some(LockReply::Status { token, .. }) => token,
        other => panic!("expected a status, got {other:?}"),
    };
    // Nobody holds x: a watcher that knows that waits.
    let w = watch(&mut h, 0, None, 1000);
    assert_eq!(h.reply(w), None);
    let a = h.acquire(1, "x", 1000, 0, None);
    let out = h.table.flush();
    h.absorb(out);
    assert_eq!(h.reply(w), None, "not before the grant commits");
    h.commit(2, &[ME, NodeId(2)]);
    let ta = h.granted(a);
    assert_eq!(status_token(h.reply(w)), Some(ta), "woken by the commit");
    // A watcher that knows an older holder is answered at once.
    let w = watch(&mut h, 3, None, 1000);
    assert_eq!(status_token(h.reply(w)), Some(ta));
    // One that knows the holder waits until its wait runs out...
    let w = watch(&mut h, 4, Some(ta), 100);
    let out = h.table.handle_tick(ms(50));
    h.absorb(out);
    assert_eq!(h.reply(w), None);
    let out = h.table.handle_tick(ms(104));
    h.absorb(out);
    assert_eq!(status_token(h.reply(w)), Some(ta), "its wait ran out");
    // ...or the lock is released.
    let w = watch(&mut h, 105, Some(ta), 1000);
    let r = h.ticket();
    let out = h.table.handle_request(
        ms(106),
        WALL + 106,
        r,
        NodeId(9),
        LockRequest::Release {
            name: "x".into(),
            token: ta,
        },
        RecordsSay::default(),
    );
    h.absorb(out);
    let out = h.table.flush();
    h.absorb(out);
    assert_eq!(h.reply(r), Some(LockReply::Released));
    assert_eq!(status_token(h.reply(w)), None, "woken by the release");
    // A leader that steps down answers its watchers "retry".
    let w = watch(&mut h, 107, None, 1000);
    let out = h.table.step_down();
    h.absorb(out);
    assert_eq!(h.reply(w), Some(LockReply::NoQuorum));
}

#[test]
fn k5_a_run_proven_ended_frees_its_holders_and_drops_its_requests() {
    let mut h = Harness::new();
    let bound = |h: &mut Harness, now: u64, name: &str, node: u64, run: u64, wait: u64| {
        let t = h.ticket();
        let request = LockRequest::AcquireBound {
            name: name.into(),
            ttl_ms: 10_000,
            wait_ms: wait,
            request_id: None,
            generation: Generation(run),
        };
        let out = h.table.handle_request(
            ms(now),
            WALL + now,
            t,
            NodeId(node),
            request,
            RecordsSay::default(),
        );
        h.absorb(out);
        t
    };
    // x: held by run 7 of node 4; y: by run 8 of node 4; z: by node 4
    // for a holder outside its process; w: by run 7 of node 5.
    let x = bound(&mut h, 0, "x", 4, 7, 0);
    let y = bound(&mut h, 0, "y", 4, 8, 0);
    let z = h.ticket();
    let out = h
        .table
        .handle_acquire(ms(0), z, NodeId(4), "z", 10_000, 0, None);
    h.absorb(out);
    let w = bound(&mut h, 0, "w", 5, 7, 0);
    h.commit(1, &[ME, NodeId(2)]);
    let tx = h.granted(x);
    for t in [y, z, w] {
        h.granted(t);
    }
    // Queued behind x: node 2's request, and another of run 7 of node 4.
    let next = h.acquire(2, "x", 10_000, 30_000, None);
    let same_run = bound(&mut h, 2, "x", 4, 7, 30_000);
    let out = h.table.handle_run_ended(ms(3), NodeId(4), Generation(7));
    h.absorb(out);
    assert_eq!(
        h.reply(same_run),
        Some(LockReply::NoQuorum),
        "nobody listens"
    );
    assert_eq!(h.reply(next), None, "not before the tombstone commits");
    h.commit(4, &[ME, NodeId(3)]);
    assert!(h.granted(next) > tx, "x passed on at once");
    assert_eq!(h.table.freed_on_proof_total(), 1);
    // y (a later run), z (not bound) and w (another node) still held.
    h.assert_held(5, &["y", "z", "w"]);
    // A late request of the ended run is served unbound: its grant
    // waits out its TTL (a run whose generation fell below the proof's
    // must not be refused for ever).
    let late = bound(&mut h, 6, "v", 4, 7, 0);
    h.commit(7, &[ME, NodeId(2)]);
    h.granted(late);
    let out = h.table.handle_run_ended(ms(8), NodeId(4), Generation(7));
    h.absorb(out);
    let t = h.acquire(9, "v", 10_000, 0, None);
    assert_eq!(h.reply(t), Some(LockReply::Held), "not freed by the proof");
}

impl Harness {
    /// An acquire through `node` bound to its run `run` (K5).
    #[allow(clippy::too_many_arguments)]
    fn acquire_bound(
        &mut self,
        now: u64,
        name: &str,
        node: u64,
        run: u64,
        id: Option<&str>,
        wait: u64,
    ) -> Ticket {
        let t = self.ticket();
        let request = LockRequest::AcquireBound {
            name: name.into(),
            ttl_ms: 10_000,
            wait_ms: wait,
            request_id: id.map(String::from),
            generation: Generation(run),
        };
        let out = self.table.handle_request(
            ms(now),
            WALL + now,
            t,
            NodeId(node),
            request,
            RecordsSay::default(),
        );
        self.absorb(out);
        t
    }

    /// Each of `names` is held: an acquire that does not wait hears so.
    fn assert_held(&mut self, now: u64, names: &[&str]) {
        for name in names {
            let t = self.acquire(now, name, 10_000, 0, None);
            assert_eq!(self.reply(t), Some(LockReply::Held), "{name}");
        }
    }

    /// The batch sent is not acked: sent again under a new id at 1 s
    /// (acks come no later than that after a send), and that one acked by
    /// a majority at 1.2 s.
    fn resend_and_ack_late(&mut self) {
        self.batches.clear();
        self.tick(1000);
        let out = self.table.flush();
        self.absorb(out);
        let (batch, _) = self.batches.remove(0);
        for v in [ME, NodeId(2)] {
            let out = self.table.handle_ack(ms(1200), batch, v);
            self.absorb(out);
        }
    }

    /// A release of `name` held with `tok`.
    fn release(&mut self, now: u64, name: &str, tok: Token) -> Ticket {
        let r = self.ticket();
        let out = self.table.handle_release(ms(now), r, name, tok);
        self.absorb(out);
        r
    }

    /// Flushes, and has `acks` ack every batch, keeping what the batches
    /// carried in `copy` (a voter's copy).
    fn commit_into(&mut self, now: u64, acks: &[NodeId], copy: &mut Replica) {
        let out = self.table.flush();
        self.absorb(out);
        for (_, entries) in &self.batches {
            for e in entries {
                copy.merge(e.clone());
            }
        }
        self.commit(now, acks);
    }

    /// A new leader's harness at epoch 6 over `copy` (the voters' merged
    /// copies), its adopted grants committed.
    fn next_leader(copy: &Replica, ended: &[(u64, u64)]) -> Harness {
        let mut h = Harness::new();
        h.table = LockTable::new(TableConfig::new(&V, 0.01));
        h.batches.clear();
        for &(node, run) in ended {
            let out = h
                .table
                .handle_run_ended(ms(0), NodeId(node), Generation(run));
            h.absorb(out);
        }
        let out = h.table.take_over(ms(100), Epoch(6), copy.clone());
        h.absorb(out);
        h.open_begins();
        h
    }
}

/// K5 through a retry from elsewhere: the holder's request retried with
/// its request id through another node (another process, which may be
/// the one told). Before the grant commits the retry hears "retry"; after,
/// it is answered only once a rewrite without the run holds, so a leader
/// adopting the grant cannot free it on the run's end. A waiter's retry
/// unbinds it at once (waiters are not replicated).
#[test]
fn k5_a_retry_through_another_node_unbinds_the_grant() {
    let mut h = Harness::new();
    let mut copy = Replica::default();
    let first = h.acquire_bound(0, "x", 4, 7, Some("r1"), 0);
    let early = h.acquire_via(1, NodeId(5), "x", 10_000, 0, Some("r1"));
    assert_eq!(
        h.reply(early),
        Some(LockReply::NoQuorum),
        "before the commit"
    );
    h.commit_into(2, &[ME, NodeId(2)], &mut copy);
    let token = h.granted(first);
    let retry = h.acquire_via(3, NodeId(5), "x", 10_000, 0, Some("r1"));
    assert_eq!(h.reply(retry), None, "not before the rewrite holds");
    // Sent again while the rewrite is on its way (a resend, a duplicate):
    // not answered before a write without the run holds either.
    let resent = h.acquire_via(3, NodeId(5), "x", 10_000, 0, Some("r1"));
    assert_eq!(h.reply(resent), None, "a second retry waits as well");
    let out = h.table.flush();
    assert!(
        out.iter()
            .any(|o| matches!(o, LockOutput::Replicate { entries, .. }
            if entries.iter().any(|e| matches!(e.state, EntryState::Held { bound: None, .. })))),
        "a rewrite without the run: {out:?}"
    );
    h.absorb(out);
    h.commit_into(4, &[ME, NodeId(3)], &mut copy);
    assert_eq!(h.granted(retry), token);
    assert_eq!(h.granted(resent), token);
    // The same retry again: nothing left to unbind, answered at once.
    let again = h.acquire_via(5, NodeId(5), "x", 10_000, 0, Some("r1"));
    assert_eq!(h.granted(again), token);
    let waiter = h.acquire_bound(5, "x", 4, 7, Some("r2"), 30_000);
    let t = h.ticket();
    let out = h
        .table
        .handle_acquire(ms(5), t, NodeId(5), "x", 10_000, 30_000, Some("r2".into()));
    h.absorb(out);
    let out = h.table.handle_run_ended(ms(6), NodeId(4), Generation(7));
    h.absorb(out);
    assert_eq!(h.table.freed_on_proof_total(), 0, "the retry may hold it");
    assert_eq!(
        h.reply(waiter),
        None,
        "still queued: a retry may receive it"
    );
    let other = h.acquire(7, "x", 10_000, 0, None);
    assert_eq!(h.reply(other), Some(LockReply::Held));
    // Nor may the next leader free it on the run's end.
    let mut next = Harness::next_leader(&copy, &[(4, 7)]);
    next.commit(101, &[ME, NodeId(2)]);
    assert_eq!(next.table.freed_on_proof_total(), 0);
    let t = next.acquire(102, "x", 10_000, 0, None);
    assert_eq!(next.reply(t), Some(LockReply::Held));
}

/// K4 with K5: a retry from elsewhere of a bound grant not yet committed
/// hears "retry", but its client still listens: the grant is not released
/// as late at the first requester's cut-off, and the retry after the
/// commit gets it.
#[test]
fn k5_an_early_retry_from_elsewhere_keeps_the_grant_from_going_late() {
    let mut h = Harness::new();
    let first = h.acquire_bound(0, "x", 4, 7, Some("r1"), 0);
    let out = h.table.flush();
    h.absorb(out);
    h.batches.clear();
    let early = h.acquire_via(900, NodeId(5), "x", 10_000, 0, Some("r1"));
    assert_eq!(h.reply(early), Some(LockReply::NoQuorum));
    // Sent again at 1 s (no acks yet), acked at 1.2 s: past the first
    // requester's cut-off, within the retry's.
    h.resend_and_ack_late();
    let token = h.granted(first);
    let again = h.acquire_via(1201, NodeId(5), "x", 10_000, 0, Some("r1"));
    h.commit(1202, &[ME, NodeId(2)]);
    assert_eq!(h.granted(again), token);
}

/// K5: without a write number left, a retry from elsewhere cannot be
/// made durable: it hears "retry" and the grant stays bound to its run
/// (the retry's client was told nothing), so the run's end still frees it.
#[test]
fn k5_a_retry_from_elsewhere_without_a_write_number_leaves_the_grant_bound() {
    let mut h = Harness::new();
    let first = h.acquire_bound(0, "x", 4, 7, Some("r1"), 0);
    h.commit(1, &[ME, NodeId(2)]);
    h.granted(first);
    h.table.set_next_write(SEQ_MAX + 1);
    let retry = h.acquire_via(2, NodeId(5), "x", 10_000, 0, Some("r1"));
    assert_eq!(h.reply(retry), Some(LockReply::NoQuorum));
    let again = h.acquire_via(3, NodeId(5), "x", 10_000, 0, Some("r1"));
    assert_eq!(h.reply(again), Some(LockReply::NoQuorum), "still bound");
    let out = h.table.handle_run_ended(ms(4), NodeId(4), Generation(7));
    h.absorb(out);
    assert_eq!(h.table.freed_on_proof_total(), 1);
}

/// A retry answered on a rewrite's commit hears the grant granted only
/// if it still holds then: released meanwhile, it hears "ended" (K4).
#[test]
fn a_retry_waiting_on_a_rewrite_of_a_grant_released_meanwhile_grants_nothing() {
    let mut h = Harness::new();
    let first = h.acquire_bound(0, "x", 4, 7, Some("r1"), 0);
    h.commit(1, &[ME, NodeId(2)]);
    let token = h.granted(first);
    let retry = h.acquire_via(2, NodeId(5), "x", 10_000, 0, Some("r1"));
    let out = h.table.flush();
    h.absorb(out);
    h.release(3, "x", token);
    h.commit(4, &[ME, NodeId(2)]);
    assert_eq!(h.reply(retry), Some(LockReply::Ended));
}

/// K5 across a failover: a grant keeps its run in every write, so the
/// leader that adopts it frees it on the proof of the run's end, whether
/// the proof comes after the takeover or was known before it. An unbound
/// grant, one of a later run, and one of an earlier run than the proof
/// names are not freed.
#[test]
fn k5_an_adopted_grant_is_freed_once_its_run_is_proven_ended() {
    let mut h = Harness::new();
    let mut copy = Replica::default();
    let x = h.acquire_bound(0, "x", 4, 7, None, 0);
    let y = h.acquire_bound(0, "y", 4, 8, None, 0);
    let z = h.acquire_via(0, NodeId(4), "z", 10_000, 0, None);
    let w = h.acquire_bound(0, "w", 4, 6, None, 0);
    h.commit_into(1, &[ME, NodeId(2)], &mut copy);
    let tx = h.granted(x);
    h.granted(y);
    h.granted(z);
    h.granted(w);
    // A quiet mark rewrites the grants (K3): the run is kept.
    let out = h.table.handle_tick(ms(6_000));
    h.absorb(out);
    h.commit_into(6_001, &[ME, NodeId(2)], &mut copy);
    assert!(
        matches!(copy.get(&Name::lock("x")).map(|e| &e.state),
            Some(EntryState::Held { bound: Some(Generation(7)), quiet_ms, .. }) if *quiet_ms > 0),
        "{copy:?}"
    );
    // The proof told after the takeover; told before it; told before it
    // with a later run's proof after it (a node restarting in a loop).
    let before: [&[(u64, u64)]; 3] = [&[], &[(4, 7)], &[(4, 7), (4, 9)]];
    for known in before {
        let mut next = Harness::next_leader(&copy, known);
        next.commit(101, &[ME, NodeId(2)]);
        let waiter = next.acquire(102, "x", 10_000, 30_000, None);
        if known.is_empty() {
            assert_eq!(next.reply(waiter), None, "held until the proof");
            let out = next
                .table
                .handle_run_ended(ms(103), NodeId(4), Generation(7));
            next.absorb(out);
        }
        assert_eq!(
            next.reply(waiter),
            None,
            "granted only once its batch commits"
        );
        next.commit(104, &[ME, NodeId(3)]);
        assert!(next.granted(waiter) > tx, "known before: {known:?}");
        assert_eq!(next.table.freed_on_proof_total(), 1);
        // y: a later run; z: unbound; w: an earlier run than the proof
        // names, which the leader that bound it may have bound unaware of
        // the proof (a live run on a new directory can rank below it).
        next.assert_held(105, &["y", "z", "w"]);
    }
}

#[test]
fn watches_past_the_bound_are_told_to_retry() {
    let mut h = Harness::new();
    let watch = |h: &mut Harness| {
        let t = h.ticket();
        let request = LockRequest::Watch {
            name: "x".into(),
            seen: None,
            wait_ms: 60_000,
        };
        let out = h
            .table
            .handle_request(ms(0), WALL, t, NodeId(9), request, RecordsSay::default());
        h.absorb(out);
        t
    };
    for _ in 0..WATCHERS_MAX {
        let t = watch(&mut h);
        assert_eq!(h.reply(t), None);
    }
    let over = watch(&mut h);
    assert_eq!(
        h.reply(over),
        Some(LockReply::NoQuorum),
        "told to retry, not a status that sends it straight back"
    );
}

impl Harness {
    /// Takes `name`, commits the grant and releases it; the tombstone
    /// is committed too (by `ME` and node 2).
    fn take_and_release(&mut self, now: u64, name: &str) -> Token {
        let t = self.acquire(now, name, 1000, 0, Some(name));
        self.commit(now, &[ME, NodeId(2)]);
        let tok = self.granted(t);
        let r = self.ticket();
        let out = self.table.handle_release(ms(now), r, name, tok);
        self.absorb(out);
        self.commit(now, &[ME, NodeId(2)]);
        assert_eq!(self.reply(r), Some(LockReply::Released));
        tok
    }

    fn knows(&self, name: &str) -> bool {
        let term = self.table.term.as_ref().unwrap();
        term.known.get(&Name::lock(name)).is_some()
    }

    fn tick(&mut self, now: u64) {
        let out = self.table.handle_tick(ms(now));
        self.absorb(out);
    }

    /// Every voter in `from` acks batch `batch`.
    fn ack(&mut self, now: u64, batch: BatchId, from: &[NodeId]) {
        for &v in from {
            let out = self.table.handle_ack(ms(now), batch, v);
            self.absorb(out);
        }
    }
}

const EVERY_MS: u64 = PRUNE_EVERY.as_millis() as u64;

/// "Locks" 8 (review 5): a released lock's tombstone is forgotten only
/// once every voter (not a majority) acked the prune round that sent it
/// again: a voter left with the grant could otherwise lead, adopt it
/// and answer a retry with a token below a later one (K1).
#[test]
fn a_tombstone_is_pruned_only_once_every_voter_holds_it() {
    let mut h = Harness::new();
    let tok = h.take_and_release(0, "a");
    h.tick(EVERY_MS - 1);
    assert!(h.batches.is_empty(), "no round before one is due");
    h.tick(EVERY_MS);
    let (round, entries) = h.batches.pop().expect("a round");
    assert_eq!(entries.len(), 1);
    assert!(!entries[0].is_held() && entries[0].token == tok);
    assert!(h.table.is_pending(round), "resent until every voter acks");
    h.ack(EVERY_MS + 1, round, &[ME, NodeId(2)]);
    assert!(h.forgets.is_empty(), "a majority is not enough");
    assert!(h.knows("a"));
    h.ack(EVERY_MS + 2, round, &[NodeId(3)]);
    let (floor, gone) = h.forgets.pop().expect("forgotten");
    assert_eq!(gone, entries);
    assert_eq!(floor.epoch, Epoch(5));
    assert!(floor.batch > round, "above every batch sent before");
    assert!(!h.knows("a"));
    assert!(!h.table.is_pending(round));
    assert_eq!(h.table.pruned_total(), 1);
    // The name is free, and its next grant's token is above the last.
    let t = h.acquire(EVERY_MS + 3, "a", 1000, 0, None);
    h.commit(EVERY_MS + 3, &[ME, NodeId(2)]);
    assert!(h.granted(t) > tok);
}

/// "Locks" 8: what changed while the round waited stays: a lock granted
/// again, or one a batch still carries, is not forgotten; the batches in
/// flight go out again under ids above the floor (a voter refuses those
/// below it), and an ack of an old id commits nothing.
#[test]
fn a_prune_forgets_nothing_that_changed_and_resends_what_flies_above_its_floor() {
    let mut h = Harness::new();
    h.take_and_release(0, "a");
    h.take_and_release(0, "b");
    h.take_and_release(0, "c");
    h.tick(EVERY_MS);
    let (round, entries) = h.batches.pop().expect("a round");
    assert_eq!(entries.len(), 3);
    // "a" is taken again and its grant is in flight.
    let t = h.acquire(EVERY_MS + 1, "a", 1000, 0, None);
    let out = h.table.flush();
    h.absorb(out);
    let (in_flight, _) = h.batches.pop().expect("the grant's batch");
    assert!(in_flight > round);
    h.ack(EVERY_MS + 2, round, &V);
    let (floor, gone) = h.forgets.pop().expect("forgotten");
    let names: Vec<&str> = gone.iter().map(|e| e.name.text.as_str()).collect();
    assert_eq!(names, ["b", "c"], "a was granted again");
    assert!(floor.batch > in_flight);
    let (resent, carried) = h.batches.pop().expect("sent again");
    assert!(resent >= floor.batch, "above the floor");
    assert!(carried.iter().any(|e| e.name.text == "a" && e.is_held()));
    h.ack(EVERY_MS + 3, in_flight, &V);
    assert_eq!(h.reply(t), None, "the old id commits nothing");
    h.ack(EVERY_MS + 3, resent, &[ME, NodeId(2)]);
    h.granted(t);
}

/// "Locks" 8: a round that not every voter acks within PRUNE_WAIT is
/// given up (a voter down holds pruning back; the tombstones stay), and
/// the next starts PRUNE_EVERY later under a new id.
#[test]
fn a_prune_round_one_voter_misses_is_given_up_and_tried_again() {
    let mut h = Harness::new();
    h.take_and_release(0, "a");
    h.tick(EVERY_MS);
    let (round, _) = h.batches.pop().expect("a round");
    h.ack(EVERY_MS, round, &[ME, NodeId(2)]);
    let wait = PRUNE_WAIT.as_millis() as u64;
    h.tick(EVERY_MS + wait);
    assert!(!h.table.is_pending(round), "given up");
    h.ack(EVERY_MS + wait, round, &[NodeId(3)]);
    assert!(
        h.forgets.is_empty(),
        "a late ack of a given-up round forgets nothing"
    );
    assert!(h.knows("a"));
    h.tick(2 * EVERY_MS + wait - 1);
    assert!(h.batches.is_empty());
    h.tick(2 * EVERY_MS + wait);
    let (again, _) = h.batches.pop().expect("tried again");
    assert!(again > round);
    h.ack(2 * EVERY_MS + wait, again, &V);
    assert_eq!(h.forgets.len(), 1);
}

/// "Locks" 8: a backlog larger than one round (PRUNE_BYTES_MAX) is
/// pruned round after round, not one round every PRUNE_EVERY.
#[test]
fn a_backlog_of_tombstones_is_pruned_round_after_round() {
    let mut h = Harness::new();
    let names = PRUNE_BYTES_MAX / 100 + 500;
    for i in 0..names {
        h.take_and_release(0, &format!("{i:0>40}"));
    }
    let mut now = EVERY_MS;
    let mut rounds = 0;
    h.tick(now);
    while let Some((round, entries)) = h.batches.pop() {
        rounds += 1;
        assert!(entries.len() < names, "bounded by PRUNE_BYTES_MAX");
        h.ack(now, round, &V);
        now += 20;
        h.tick(now);
    }
    let forgotten: usize = h.forgets.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(forgotten, names);
    assert!(rounds >= 2);
    assert!(now < 2 * EVERY_MS, "all within one period");
}
