//! What one node keeps of the replicated entries, sans-io: its voter
//! copy, the copies other voters answered its recovery with (E7), and the
//! copies a candidate merges from its promises (K2); how it takes a
//! batch from the leader (E1, E7, V1 as the election decides, E8); and
//! what a leader does with a voter's answer to a batch.
//!
//! Owns: every merge into this node's copy and the choice of the copy a
//! recovery settles on. Must not: decide whether a batch's epoch may be
//! taken (the election's promise does), read a clock, send, or write the
//! disk (the driver carries out [`Settle`] and acks once durable).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Floor, Merge, Replica};
use crate::ids::{BatchId, Epoch, NodeId};

/// Pause before a replication batch is sent again to a voter that did
/// not ack it.
pub const REPLICATE_RETRY: Duration = Duration::from_millis(20);
/// Per entry of a batch, how much longer a leader waits for a voter's
/// answer than for a small batch: a term's first batch carries the whole
/// table, which takes a while to encode, send, merge and sync.
pub const BATCH_WAIT_PER_ENTRY: Duration = Duration::from_micros(10);

/// How long a leader waits for a voter's answer to a batch of `entries`
/// entries: two heartbeats, more for a large batch, never past
/// [`crate::replication::BATCH_PENDING_MAX`] (a later ack counts for
/// nothing) unless two heartbeats are longer.
pub fn batch_wait(heartbeat: Duration, entries: usize) -> Duration {
    let small = heartbeat * 2;
    let large = small.saturating_add(BATCH_WAIT_PER_ENTRY.saturating_mul(entries as u32));
    large.min(super::BATCH_PENDING_MAX.max(small))
}

/// How many times a leader tells one voter to forget pruned tombstones
/// while no answer comes, [`REPLICATE_RETRY`] apart: one that never hears
/// it keeps them, which costs memory only.
pub const FORGET_ATTEMPTS: usize = 50;

/// How a recovering voter settled (E7), as the election decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Copied from these healthy voters, at least ⌊(n−1)/2⌋+1 of them:
    /// their copies replace this voter's own (they hold everything
    /// committed; its own may be a restored snapshot or an earlier life).
    Copied(Vec<NodeId>),
    /// Resumed from its own durable state (too few healthy voters to copy
    /// from).
    Own,
    /// No copy was possible and a majority of voters were recovering: the
    /// cluster forms anew from every copy and promise heard.
    Anew,
}

/// Whether the election lets a batch of the leader's epoch in (E1, E7,
/// V1): the driver asks the election and hands its answer over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Taken; `raise` is the promise to make durable with the entries
    /// when the batch's epoch is above this voter's promise (E1).
    Open {
        /// The raised promise, if the epoch raised it.
        raise: Option<Epoch>,
    },
    /// Refused: this voter's promise, and whether the reason is a
    /// configuration that differs (V1: an operator must act).
    Closed {
        /// This voter's promise, for the refusal.
        promised: Epoch,
        /// The leader runs another voter set or other safety timings.
        config_mismatch: bool,
    },
}

/// What a voter does with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<E> {
    /// Make `raise` (if any) and `entries` durable, then ack (E8); the
    /// entries are already merged into this voter's copy.
    Ack {
        /// The promise to write with them.
        raise: Option<Epoch>,
        /// The entries to write.
        entries: Vec<E>,
    },
    /// Refuse, telling the leader this voter's promise.
    Refuse {
        /// This voter's promise.
        promised: Epoch,
    },
    /// Refuse: the batch was sent before the leader had this voter
    /// forget some entries ([`Floor`]); its content, if still needed,
    /// comes again under a later id.
    Stale,
}

/// A voter's answer to a batch, as it travels (`Response::Voter`) and as
/// the leader reads it (`None` in [`after_answer`]: no answer came).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Answer {
    /// Durable on the voter.
    Acked,
    /// Refused by a voter that promised an epoch above the batch's, is
    /// recovering, or runs another configuration; `promised` is its
    /// promise.
    Refused {
        /// The voter's promise.
        promised: Epoch,
    },
    /// Refused: the batch is below the voter's [`Floor`] (it will never
    /// take that id; what is still needed comes under a later one).
    Stale,
}

/// What the leader of `epoch` does next with one voter and one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Count the voter's ack.
    CountAck,
    /// A voter promised a higher epoch: this leader stops (E1).
    Deposed {
        /// The epoch it promised.
        promised: Epoch,
    },
    /// Send the batch to that voter again after the pause.
    Resend {
        /// How long to wait first.
        after: Duration,
    },
    /// Nothing: the batch is no longer pending (committed, or sent again
    /// under a new id).
    Forget,
}

/// The leader of `epoch`, after a voter's `answer` to a batch that is
/// `pending` or not: count the ack; stop on a higher promise (E1); drop
/// a batch below the voter's floor; else resend while the batch still
/// awaits its majority.
pub fn after_answer(epoch: Epoch, answer: Option<Answer>, pending: bool) -> Next {
    match answer {
        Some(Answer::Acked) => Next::CountAck,
        Some(Answer::Refused { promised }) if promised > epoch => Next::Deposed { promised },
        Some(Answer::Stale) => Next::Forget,
        _ if pending => Next::Resend {
            after: REPLICATE_RETRY,
        },
        _ => Next::Forget,
    }
}

/// How the data directory follows a settled recovery (E7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle<E: Merge> {
    /// Initialize (or rewrite) it with this copy and the promise.
    Initialize(Replica<E>),
    /// Keep its copy; write the promise (E1: it may be above the one
    /// stored).
    Promise,
    /// Nothing to write.
    Nothing,
}

/// The copies one node keeps.
#[derive(Debug, Clone)]
pub struct Copies<E: Merge> {
    /// This node's copy (a voter's; a leader's own, voter or not).
    own: Replica<E>,
    /// Below what this voter takes no batch (the leader had it forget).
    floor: Floor,
    /// While recovering (E7): the latest copy each voter answered a sync
    /// with, and its floor.
    heard: BTreeMap<NodeId, (Vec<E>, Floor)>,
    /// The epoch this node runs for (or leads) and the copies merged from
    /// its promises, its own included, plus every entry it issued as
    /// leader of that epoch.
    candidacy: Option<(Epoch, Replica<E>)>,
    /// The candidacy was taken over: a promise answered late merges no
    /// more (it could hold an entry forgotten since, "Locks" 8; the
    /// takeover's majority held everything committed).
    taken: bool,
}

impl<E: Merge> Copies<E> {
    /// Starts from `own` and `floor` (what the data directory holds, or
    /// nothing).
    pub fn new(own: Replica<E>, floor: Floor) -> Copies<E> {
        Copies {
            own,
            floor,
            heard: BTreeMap::new(),
            candidacy: None,
            taken: false,
        }
    }

    /// Below what this voter takes no batch; it travels with the copy
    /// (promises and recovery answers), so a voter that copies from
    /// others takes their floors too.
    pub fn floor(&self) -> Floor {
        self.floor
    }

    /// This node's copy.
    pub fn own(&self) -> &Replica<E> {
        &self.own
    }

    /// Drops from this node's copy the entries `drop` accepts (the
    /// protocol's garbage, each node on its own clock, or what it holds
    /// elsewhere now); how many went. The candidacy's merge sheds them
    /// too.
    pub fn collect(&mut self, mut drop: impl FnMut(&E) -> bool) -> usize {
        if let Some((_, merged)) = &mut self.candidacy {
            merged.retain(|e| !drop(e));
        }
        self.own.retain(|e| !drop(e))
    }

    /// Merges another voter's copy into this node's own (a voter filling
    /// its records in after a recovery takes each source's copy too).
    pub fn absorb(&mut self, entries: Vec<E>) {
        self.own.merge_owned(entries);
    }

    /// What a promise and a recovery answer carry: this voter's copy.
    pub fn snapshot(&self) -> Vec<E> {
        self.own.entries().cloned().collect()
    }

    /// Batch `batch` of the leader of `epoch`, which the election let in
    /// or not.
    pub fn on_batch(
        &mut self,
        gate: Gate,
        epoch: Epoch,
        batch: BatchId,
        entries: Vec<E>,
    ) -> Verdict<E> {
        match gate {
            Gate::Closed { promised, .. } => Verdict::Refuse { promised },
            Gate::Open { .. } if self.floor.refuses(epoch, batch) => Verdict::Stale,
            Gate::Open { raise } => {
                // Merged now; acked only once the disk holds them (E8),
                // so an ack is checked on what the disk holds.
                self.own.merge_refs(&entries);
                Verdict::Ack { raise, entries }
            }
        }
    }

    /// The leader had every voter hold `entries` and now has them
    /// forgotten, with `floor` (which must be above every batch it sent
    /// before): each entry this node's copy holds exactly as given leaves
    /// it (a later write of its key stays), and so does the candidacy's
    /// merge. The entries that left this node's copy.
    pub fn forget(&mut self, floor: Floor, entries: &[E]) -> Vec<E>
    where
        E: PartialEq,
    {
        self.floor = self.floor.max(floor);
        if let Some((_, merged)) = &mut self.candidacy {
            for e in entries {
                if merged.get(e.key()) == Some(e) {
                    merged.remove(e.key());
                }
            }
        }
        let mut gone = Vec::new();
        for e in entries {
            if self.own.get(e.key()) == Some(e) {
                gone.extend(self.own.remove(e.key()));
            }
        }
        gone
    }

    /// This node runs for `epoch`: its own copy is the first of those it
    /// will merge (K2).
    pub fn start_candidacy(&mut self, epoch: Epoch) {
        self.candidacy = Some((epoch, self.own.clone()));
        self.taken = false;
    }

    /// A voter promised `epoch` with its copy: merged if this node still
    /// runs for that epoch and has not taken over yet (K2). True if
    /// merged: only such a promiser counts toward the records the new
    /// leader reconciles with ("Idempotency" 8), which rests on every one
    /// of them having its copy in the takeover.
    pub fn on_promise(&mut self, epoch: Epoch, snapshot: Vec<E>) -> bool {
        if let Some((e, merged)) = &mut self.candidacy
            && *e == epoch
            && !self.taken
        {
            merged.merge_owned(snapshot);
            return true;
        }
        false
    }

    /// A voter answered this node's recovery sync with its copy (E7):
    /// kept, the latest per voter, until the recovery settles.
    pub fn on_sync_answer(&mut self, from: NodeId, snapshot: Vec<E>, floor: Floor) {
        self.heard.insert(from, (snapshot, floor));
    }

    /// This node, leading `epoch`, wrote `entries` in a batch: the term's
    /// copy keeps them (if its lease lapses and comes back it serves the
    /// same epoch again from everything it issued, not from the copies it
    /// was elected with), and so does its own copy if it is a `voter`. A
    /// leader that is no voter keeps none: it hears no later batch, prune
    /// or forget, so a later term of it would start from entries the
    /// voters forgot ("Locks" 8).
    pub fn issued(&mut self, epoch: Epoch, entries: &[E], voter: bool) {
        if let Some((e, term)) = &mut self.candidacy
            && *e == epoch
        {
            term.merge_refs(entries);
        }
        if voter {
            self.own.merge_refs(entries);
        }
    }

    /// The copy a leader of `epoch` takes over with (K2): its candidacy's
    /// merge and its own copy. `None` without a candidacy of that epoch.
    /// Late promises merge no more.
    pub fn takeover(&mut self, epoch: Epoch) -> Option<Replica<E>> {
        let (_, merged) = self.candidacy.as_ref().filter(|(e, _)| *e == epoch)?;
        self.taken = true;
        let mut merged = merged.clone();
        merged.merge_refs(self.own.entries());
        Some(merged)
    }

    /// Settles the recovery (E7): copied from healthy voters, their
    /// merged copies replace this node's own; resumed, its own stays;
    /// formed anew, every copy heard is merged into its own. The floor
    /// rises to the highest of the copies taken: a source that forgot an
    /// entry holds that floor, and one that did not still holds the
    /// entry. `durable`: the data directory already holds an initialized
    /// state.
    pub fn settle(&mut self, how: &Recovery, durable: bool) -> Settle<E>
    where
        Replica<E>: PartialEq,
    {
        let heard = std::mem::take(&mut self.heard);
        match how {
            Recovery::Copied(from) => {
                // The sources' floors only: this node's own may be of an
                // earlier life of the cluster, whose epochs it reuses.
                let mut copy = Replica::default();
                let mut taken = Floor::default();
                for id in from {
                    if let Some((t, floor)) = heard.get(id) {
                        copy.merge_refs(t);
                        taken = taken.max(*floor);
                    }
                }
                // The floor goes to the directory with the copy, even
                // when the copy is the one it holds.
                let replaced = copy != self.own || taken != self.floor;
                self.floor = taken;
                self.own = copy;
                if replaced || !durable {
                    Settle::Initialize(self.own.clone())
                } else {
                    Settle::Promise
                }
            }
            Recovery::Own => Settle::Promise,
            Recovery::Anew => {
                for (t, floor) in heard.into_values() {
                    self.own.merge_owned(t);
                    self.floor = self.floor.max(floor);
                }
                if durable {
                    Settle::Nothing
                } else {
                    Settle::Initialize(self.own.clone())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register per key: the highest version wins.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Reg(u8, u32);

    impl Merge for Reg {
        type Key = u8;
        type Rank<'a> = u32;
        fn key(&self) -> &u8 {
            &self.0
        }
        fn rank(&self) -> u32 {
            self.1
        }
    }

    fn copy(entries: &[Reg]) -> Replica<Reg> {
        let mut r = Replica::default();
        r.merge_all(entries.iter().cloned());
        r
    }

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    /// E1, V1, E7: a batch the election refuses changes nothing and the
    /// leader hears this voter's promise.
    #[test]
    fn a_refused_batch_is_not_merged() {
        let mut c = Copies::new(copy(&[Reg(1, 1)]), Floor::default());
        let v = c.on_batch(
            Gate::Closed {
                promised: Epoch(7),
                config_mismatch: false,
            },
            Epoch(5),
            BatchId(0),
            vec![Reg(1, 9)],
        );
        assert_eq!(v, Verdict::Refuse { promised: Epoch(7) });
        assert_eq!(c.own(), &copy(&[Reg(1, 1)]));
    }

    /// E1, E8: a batch let in is merged, and the ack waits for the raised
    /// promise and the entries to be durable.
    #[test]
    fn an_admitted_batch_is_merged_and_acked_once_durable() {
        let mut c = Copies::new(copy(&[Reg(1, 1)]), Floor::default());
        let v = c.on_batch(
            Gate::Open {
                raise: Some(Epoch(4)),
            },
            Epoch(4),
            BatchId(0),
            vec![Reg(1, 2), Reg(2, 1)],
        );
        assert_eq!(
            v,
            Verdict::Ack {
                raise: Some(Epoch(4)),
                entries: vec![Reg(1, 2), Reg(2, 1)]
            }
        );
        assert_eq!(c.own(), &copy(&[Reg(1, 2), Reg(2, 1)]));
        assert_eq!(c.snapshot(), vec![Reg(1, 2), Reg(2, 1)]);
    }

    /// E1: a voter that promised a higher epoch deposes the leader; a
    /// refusal at or below its epoch (recovering, another configuration)
    /// or no answer is retried while the batch is pending, and forgotten
    /// once it is not.
    #[test]
    fn the_leader_counts_acks_stops_on_a_higher_promise_and_retries_the_rest() {
        assert_eq!(
            after_answer(Epoch(5), Some(Answer::Acked), true),
            Next::CountAck
        );
        assert_eq!(
            after_answer(Epoch(5), Some(Answer::Refused { promised: Epoch(6) }), true),
            Next::Deposed { promised: Epoch(6) }
        );
        let resend = Next::Resend {
            after: REPLICATE_RETRY,
        };
        assert_eq!(
            after_answer(Epoch(5), Some(Answer::Refused { promised: Epoch(5) }), true),
            resend
        );
        assert_eq!(after_answer(Epoch(5), None, true), resend);
        assert_eq!(after_answer(Epoch(5), None, false), Next::Forget);
    }

    /// K2: the leader takes over with the merge of its promises' copies
    /// and its own, and only for the epoch it ran for; a promise of
    /// another epoch is not merged.
    #[test]
    fn a_takeover_merges_the_promises_of_its_epoch() {
        let mut c = Copies::new(copy(&[Reg(1, 1)]), Floor::default());
        assert_eq!(c.takeover(Epoch(3)), None, "no candidacy");
        c.start_candidacy(Epoch(3));
        c.on_promise(Epoch(3), vec![Reg(1, 2), Reg(2, 5)]);
        c.on_promise(Epoch(2), vec![Reg(3, 9)]);
        c.on_promise(Epoch(3), vec![Reg(2, 4)]);
        assert_eq!(c.takeover(Epoch(3)), Some(copy(&[Reg(1, 2), Reg(2, 5)])));
        assert_eq!(c.takeover(Epoch(4)), None);
    }

    /// A leader whose lease lapsed serves its epoch again from everything
    /// it issued, and a new candidacy starts from its own copy.
    #[test]
    fn what_a_leader_issued_stays_in_its_terms_copy() {
        let mut c = Copies::new(Replica::default(), Floor::default());
        c.start_candidacy(Epoch(3));
        c.issued(Epoch(3), &[Reg(1, 7)], true);
        c.issued(Epoch(2), &[Reg(2, 1)], true);
        assert_eq!(c.takeover(Epoch(3)), Some(copy(&[Reg(1, 7), Reg(2, 1)])));
        c.start_candidacy(Epoch(4));
        c.on_promise(Epoch(4), vec![]);
        assert_eq!(c.takeover(Epoch(4)), Some(copy(&[Reg(1, 7), Reg(2, 1)])));
    }

    /// E7: copied from healthy voters, their merged copies replace this
    /// node's own (an earlier life's or a restored snapshot's entries
    /// go), and only those voters' answers count.
    #[test]
    fn a_copy_from_healthy_voters_replaces_the_own() {
        let mut c = Copies::new(copy(&[Reg(1, 9), Reg(4, 1)]), Floor::default());
        c.on_sync_answer(n(2), vec![Reg(1, 2)], Floor::default());
        c.on_sync_answer(n(3), vec![Reg(2, 1)], Floor::default());
        c.on_sync_answer(n(3), vec![Reg(2, 3)], Floor::default());
        c.on_sync_answer(n(4), vec![Reg(5, 5)], Floor::default());
        let s = c.settle(&Recovery::Copied(vec![n(2), n(3)]), true);
        let expected = copy(&[Reg(1, 2), Reg(2, 3)]);
        assert_eq!(s, Settle::Initialize(expected.clone()));
        assert_eq!(c.own(), &expected);
        // The same copy again, on a durable directory: the promise only.
        c.on_sync_answer(n(2), vec![Reg(1, 2), Reg(2, 3)], Floor::default());
        assert_eq!(
            c.settle(&Recovery::Copied(vec![n(2)]), true),
            Settle::Promise
        );
    }

    /// E7: resumed from its own state, the copy stays; formed anew, every
    /// copy heard is merged, and a blank directory is initialized.
    #[test]
    fn resumed_keeps_the_own_and_anew_merges_all_heard() {
        let mut c = Copies::new(copy(&[Reg(1, 1)]), Floor::default());
        c.on_sync_answer(n(2), vec![Reg(1, 5)], Floor::default());
        assert_eq!(c.settle(&Recovery::Own, true), Settle::Promise);
        assert_eq!(c.own(), &copy(&[Reg(1, 1)]));
        c.on_sync_answer(n(2), vec![Reg(1, 5)], Floor::default());
        c.on_sync_answer(n(3), vec![Reg(2, 2)], Floor::default());
        let expected = copy(&[Reg(1, 5), Reg(2, 2)]);
        assert_eq!(
            c.settle(&Recovery::Anew, false),
            Settle::Initialize(expected.clone())
        );
        assert_eq!(c.own(), &expected);
        assert_eq!(c.settle(&Recovery::Anew, true), Settle::Nothing);
    }

    fn floor(epoch: u64, batch: u64) -> Floor {
        Floor {
            epoch: Epoch(epoch),
            batch: BatchId(batch),
        }
    }

    const OPEN: Gate = Gate::Open { raise: None };

    /// "Locks" 8: an entry leaves only where it is held exactly as the
    /// leader sent it (a later write of its key stays), the candidacy's
    /// merge sheds it too, and from then on no batch of that epoch below
    /// the floor is taken (a late resend of one that carried an older
    /// entry of the key would put it back); batches at or above the
    /// floor, and of other epochs, are.
    #[test]
    fn forgotten_entries_leave_exactly_and_batches_below_the_floor_are_refused() {
        let mut c = Copies::new(copy(&[Reg(1, 5), Reg(2, 7), Reg(3, 1)]), Floor::default());
        c.start_candidacy(Epoch(3));
        let gone = c.forget(floor(3, 10), &[Reg(1, 5), Reg(2, 6), Reg(9, 1)]);
        assert_eq!(gone, vec![Reg(1, 5)], "only the exact entry goes");
        assert_eq!(c.own(), &copy(&[Reg(2, 7), Reg(3, 1)]));
        assert_eq!(c.takeover(Epoch(3)), Some(copy(&[Reg(2, 7), Reg(3, 1)])));
        assert_eq!(c.floor(), floor(3, 10));
        assert_eq!(
            c.on_batch(OPEN, Epoch(3), BatchId(9), vec![Reg(1, 4)]),
            Verdict::Stale,
            "a late batch sent before the forget"
        );
        assert_eq!(c.own().get(&1), None, "the forgotten key stays away");
        assert!(matches!(
            c.on_batch(OPEN, Epoch(3), BatchId(10), vec![Reg(1, 6)]),
            Verdict::Ack { .. }
        ));
        assert!(matches!(
            c.on_batch(OPEN, Epoch(4), BatchId(0), vec![Reg(4, 1)]),
            Verdict::Ack { .. }
        ));
        // A lower floor never lowers it.
        c.forget(floor(3, 2), &[]);
        assert_eq!(c.floor(), floor(3, 10));
    }

    /// "Locks" 8, E7: a voter that copies from others takes the highest
    /// floor among the copies it takes (a source that forgot an entry
    /// holds that floor; one that did not still holds the entry).
    #[test]
    fn a_recovery_takes_the_highest_floor_of_the_copies_it_takes() {
        let mut c = Copies::new(Replica::default(), floor(9, 4));
        c.on_sync_answer(n(2), vec![Reg(2, 1)], floor(2, 8));
        c.on_sync_answer(n(3), vec![Reg(1, 1)], floor(2, 3));
        c.on_sync_answer(n(4), vec![], floor(9, 9));
        c.settle(&Recovery::Copied(vec![n(2), n(3)]), false);
        assert_eq!(
            c.floor(),
            floor(2, 8),
            "n4's copy was not taken, and its own floor went with its copy"
        );
        assert_eq!(
            c.on_batch(OPEN, Epoch(2), BatchId(7), vec![Reg(1, 0)]),
            Verdict::Stale
        );
        // Review 7: the same copy as its own, but another floor: the
        // directory is rewritten with it.
        let mut same = Copies::new(copy(&[Reg(1, 1)]), floor(9, 4));
        same.on_sync_answer(n(2), vec![Reg(1, 1)], floor(2, 8));
        same.on_sync_answer(n(3), vec![], Floor::default());
        assert_eq!(
            same.settle(&Recovery::Copied(vec![n(2), n(3)]), true),
            Settle::Initialize(copy(&[Reg(1, 1)]))
        );
        assert_eq!(same.floor(), floor(2, 8));
        let mut anew: Copies<Reg> = Copies::new(Replica::default(), Floor::default());
        anew.on_sync_answer(n(2), vec![], floor(5, 1));
        anew.settle(&Recovery::Anew, true);
        assert_eq!(anew.floor(), floor(5, 1));
    }

    /// A voter's stale answer is never resent nor counted.
    #[test]
    fn a_stale_answer_stops_the_resends() {
        assert_eq!(
            after_answer(Epoch(5), Some(Answer::Stale), true),
            Next::Forget
        );
    }

    /// "Locks" 8 (review 7): a promise answered after the takeover adds
    /// nothing to the term's copy (it may hold an entry forgotten since),
    /// and a leader that is no voter keeps no copy of its own of what it
    /// issued (it hears no forget), only its term's.
    #[test]
    fn late_promises_and_a_non_voters_issued_entries_do_not_outlive_the_term() {
        let mut c = Copies::new(Replica::default(), Floor::default());
        c.start_candidacy(Epoch(3));
        assert!(c.on_promise(Epoch(3), vec![Reg(1, 1)]), "merged: it counts");
        assert!(!c.on_promise(Epoch(2), vec![Reg(4, 1)]), "another epoch's");
        assert_eq!(c.takeover(Epoch(3)), Some(copy(&[Reg(1, 1)])));
        // A late promiser is not in the takeover: its records must not
        // count toward the new leader's reconciliation either.
        assert!(
            !c.on_promise(Epoch(3), vec![Reg(2, 1)]),
            "late: not counted"
        );
        assert_eq!(c.takeover(Epoch(3)), Some(copy(&[Reg(1, 1)])), "late");
        c.issued(Epoch(3), &[Reg(3, 1)], false);
        assert_eq!(c.own(), &Replica::default(), "no voter: no own copy");
        assert_eq!(
            c.takeover(Epoch(3)),
            Some(copy(&[Reg(1, 1), Reg(3, 1)])),
            "the term keeps what it issued"
        );
        c.start_candidacy(Epoch(4));
        c.on_promise(Epoch(4), vec![Reg(2, 2)]);
        assert_eq!(c.takeover(Epoch(4)), Some(copy(&[Reg(2, 2)])));
    }

    #[test]
    fn a_large_batch_is_waited_for_longer_up_to_the_pending_bound() {
        let hb = Duration::from_millis(100);
        assert_eq!(batch_wait(hb, 1), Duration::from_micros(200_010));
        assert_eq!(batch_wait(hb, 50_000), Duration::from_millis(700));
        assert_eq!(
            batch_wait(hb, 100_000),
            crate::replication::BATCH_PENDING_MAX
        );
        assert_eq!(
            batch_wait(hb, usize::MAX),
            crate::replication::BATCH_PENDING_MAX
        );
        let slow = Duration::from_secs(1);
        assert_eq!(batch_wait(slow, 100_000), slow * 2);
    }
}
