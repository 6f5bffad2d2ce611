//! Replication, sans-io: what every replicated protocol shares, generic
//! over what is replicated ([`Merge`]; lock entries now, idempotency
//! records next): the voter's copy ([`Replica`]), and the leader's
//! batches ([`Batches`]: ids, acks, majority, the in-flight bound, sends
//! again under a new id).
//!
//! Owns: the merge of replicated entries (a join: commutative, associative,
//! idempotent), so the order in which replication batches, promises and
//! recovery copies arrive does not matter. Must not know what an entry
//! means (a grant, a record) nor read a clock, send or persist.
//!
//! [`Copies`] is what one node keeps: its voter copy and how it takes a
//! batch the election let in (E1, E7, V1, E8), the copies a recovery
//! settles on (E7), and those a candidate merges from its promises (K2);
//! [`after_answer`] is what the leader does with a voter's answer (count
//! it, stop on a higher promise, resend).

mod copies;

pub use copies::{
    Answer, BATCH_WAIT_PER_ENTRY, Copies, FORGET_ATTEMPTS, Gate, Next, REPLICATE_RETRY, Recovery,
    Settle, Verdict, after_answer, batch_wait,
};

/// How long a round that prunes tombstones waits for every voter's ack
/// (PROTOCOL.md, "Locks" 8); an ack later than this counts for nothing.
/// Shorter than [`BATCH_PENDING_MAX`]: a voter that restarted copies
/// only from answers given once its earlier life's acks expired
/// (`Timing::old_answers_expire`, E7), a prune round's among them.
pub const PRUNE_WAIT: Duration = Duration::from_millis(500);
const _: () = assert!(PRUNE_WAIT.as_millis() < BATCH_PENDING_MAX.as_millis());

/// Below what a voter takes no more batches: those of `epoch` with an id
/// under `batch`. A leader that had every voter hold some tombstones and
/// then told them to forget those entries sets it, so that no batch it
/// sent before (a late resend still on the wire) can put an older entry
/// of a forgotten key back. Ordered by epoch, then id; the default takes
/// everything.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Floor {
    /// The epoch of the leader that set it.
    pub epoch: Epoch,
    /// Its batches with a lower id are refused.
    pub batch: BatchId,
}

impl Floor {
    /// True if this floor refuses batch `batch` of `epoch`.
    pub fn refuses(&self, epoch: Epoch, batch: BatchId) -> bool {
        epoch == self.epoch && batch < self.batch
    }
}

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{BatchId, Epoch, NodeId};

/// Replication rounds that someone waits on (with effects) awaiting a
/// majority before the next one is sent. Rounds nobody waits on (a
/// released lock's tombstone) take none of these slots, up to as many
/// again: a voter's disk holds their syncs for the next batch's
/// (`storage::LINGER`), which must not then wait for a slot.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// How long a batch may await its majority before it is sent again under
/// a new id, so that acks it gathered (from voters that may have restarted
/// and lost what they acked since) count no more. A voter recovering from
/// others waits this out before it copies (E7): no ack of its earlier life
/// can then commit a batch its copy missed. It is also the longest a
/// voter's disk may take to sync before its acks stop counting.
pub const BATCH_PENDING_MAX: Duration = Duration::from_secs(1);

/// An entry that replicates by merging: one entry per key, and of two
/// entries of one key the higher rank wins. The rank must be a total
/// order consistent with the protocol's "later": for locks a write of a
/// later epoch, then a higher token, then a release over its grant, then a
/// later write of one grant.
pub trait Merge: Clone {
    /// What names the entry (a lock's name).
    type Key: Ord + Clone + std::fmt::Debug;
    /// The merge order; it may borrow from the entry, so a rank that
    /// ends in the entry's bytes (a total order with no ties between two
    /// different entries) costs no copy.
    type Rank<'a>: Ord
    where
        Self: 'a;
    /// The entry's key.
    fn key(&self) -> &Self::Key;
    /// The entry's rank.
    fn rank(&self) -> Self::Rank<'_>;
}

/// A voter's copy: the highest-ranked entry per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica<E: Merge> {
    entries: BTreeMap<E::Key, E>,
}

impl<E: Merge> Default for Replica<E> {
    fn default() -> Self {
        Replica {
            entries: BTreeMap::new(),
        }
    }
}

impl<E: Merge> Replica<E> {
    /// Merges one entry; true if it changed the copy.
    pub fn merge(&mut self, entry: E) -> bool {
        match self.entries.get_mut(entry.key()) {
            Some(current) if current.rank() < entry.rank() => *current = entry,
            Some(_) => return false,
            None => {
                self.entries.insert(entry.key().clone(), entry);
            }
        }
        true
    }

    /// Merges many; the entries that changed the copy (cloned only those).
    pub fn merge_all(&mut self, entries: impl IntoIterator<Item = E>) -> Vec<E> {
        entries
            .into_iter()
            .filter(|entry| self.merge_ref(entry))
            .collect()
    }

    /// Merges many, taking each as it comes (no copy); how many changed
    /// the copy.
    pub fn merge_owned(&mut self, entries: impl IntoIterator<Item = E>) -> usize {
        let mut changed = 0;
        for entry in entries {
            changed += usize::from(self.merge(entry));
        }
        changed
    }

    /// Merges many by reference, copying only those that change the
    /// copy; those.
    pub fn merge_refs<'a>(&mut self, entries: impl IntoIterator<Item = &'a E>) -> Vec<&'a E>
    where
        E: 'a,
    {
        entries
            .into_iter()
            .filter(|entry| self.merge_ref(entry))
            .collect()
    }

    /// Merges one by reference, copying it only if it changes the copy.
    fn merge_ref(&mut self, entry: &E) -> bool {
        match self.entries.get_mut(entry.key()) {
            Some(current) if current.rank() < entry.rank() => *current = entry.clone(),
            Some(_) => return false,
            None => {
                self.entries.insert(entry.key().clone(), entry.clone());
            }
        }
        true
    }

    /// Every entry, by key, taken.
    pub fn into_entries(self) -> impl Iterator<Item = E> {
        self.entries.into_values()
    }

    /// Every entry, by key.
    pub fn entries(&self) -> impl Iterator<Item = &E> {
        self.entries.values()
    }

    /// One key's entry.
    pub fn get<Q>(&self, key: &Q) -> Option<&E>
    where
        E::Key: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.get(key)
    }

    /// Removes one key's entry; the entry it held.
    pub fn remove(&mut self, key: &E::Key) -> Option<E> {
        self.entries.remove(key)
    }

    /// Keeps only the entries `keep` accepts; how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| keep(e));
        before - self.entries.len()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A copy is a state-based CRDT: its merge is the join of every key's
/// register (the higher rank wins), so any two copies merge, in any order
/// and any number of times, to the same copy.
impl<E: Merge> crdts::CvRDT for Replica<E> {
    type Validation = std::convert::Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        for entry in other.entries.into_values() {
            Replica::merge(self, entry);
        }
    }
}

/// The leader's replication batches: entries written since the last
/// flush, with the effects (answers, promotions) that wait for them, go
/// out as one batch; a batch's effects are released when a majority of
/// voters acked it. `X` is what the protocol does on commit.
#[derive(Debug, Clone)]
pub struct Batches<E, X> {
    open: Vec<E>,
    open_effects: Vec<X>,
    in_flight: BTreeMap<BatchId, Batch<E, X>>,
}

#[derive(Debug, Clone)]
struct Batch<E, X> {
    acks: BTreeSet<NodeId>,
    effects: Vec<X>,
    /// What it carries, kept to send it again under a new id.
    entries: Vec<E>,
    sent_at: Duration,
}

impl<E: Clone, X> Default for Batches<E, X> {
    fn default() -> Self {
        Batches {
            open: Vec::new(),
            open_effects: Vec::new(),
            in_flight: BTreeMap::new(),
        }
    }
}

impl<E: Clone, X> Batches<E, X> {
    /// Queues `entry` for the next batch.
    pub fn write(&mut self, entry: E) {
        self.open.push(entry);
    }

    /// `effect` waits for the next batch's majority.
    pub fn effect(&mut self, effect: X) {
        self.open_effects.push(effect);
    }

    /// `effect` waits for batch `batch` if it is still in flight, else for
    /// the next one.
    pub fn effect_on(&mut self, batch: Option<BatchId>, effect: X) {
        match batch.and_then(|b| self.in_flight.get_mut(&b)) {
            Some(b) => b.effects.push(effect),
            None => self.open_effects.push(effect),
        }
    }

    /// True when nothing is open and nothing awaits a majority: no batch
    /// can go stale.
    pub fn is_idle(&self) -> bool {
        self.open.is_empty() && self.open_effects.is_empty() && self.in_flight.is_empty()
    }

    /// True when nothing waits to be sent (everything written went out in
    /// a batch).
    pub fn is_sent(&self) -> bool {
        self.open.is_empty() && self.open_effects.is_empty()
    }

    /// True while `batch` awaits a majority.
    pub fn is_pending(&self, batch: BatchId) -> bool {
        self.in_flight.contains_key(&batch)
    }

    /// Closes the open batch under the id `*next_id` (then advanced; the
    /// caller keeps the counter so that ids never repeat for the life of
    /// the leader, finding 2) and returns what to send; `None` when
    /// nothing is open, or when the open batch has effects and
    /// [`BATCHES_IN_FLIGHT_MAX`] batches with effects await their
    /// majority, or twice as many in all do (the open batch then keeps
    /// growing).
    pub fn flush(&mut self, now: Duration, next_id: &mut BatchId) -> Option<(BatchId, Vec<E>)> {
        if self.open.is_empty() && self.open_effects.is_empty() {
            return None;
        }
        let waited_on = self
            .in_flight
            .values()
            .filter(|b| !b.effects.is_empty())
            .count();
        let slot = self.in_flight.len() < 2 * BATCHES_IN_FLIGHT_MAX
            && (self.open_effects.is_empty() || waited_on < BATCHES_IN_FLIGHT_MAX);
        if !slot {
            return None;
        }
        let id = *next_id;
        *next_id = id.next();
        let entries = std::mem::take(&mut self.open);
        self.in_flight.insert(
            id,
            Batch {
                acks: BTreeSet::new(),
                effects: std::mem::take(&mut self.open_effects),
                entries: entries.clone(),
                sent_at: now,
            },
        );
        Some((id, entries))
    }

    /// Voter `from` holds `batch` durably, as it said by `now`. When that
    /// makes `quorum` acks, the batch is committed: its effects are
    /// returned, once. An ack that comes [`BATCH_PENDING_MAX`] or more
    /// after the batch was sent counts for nothing, even before the next
    /// tick sends the batch again: a voter that restarted takes its copy
    /// once that long has passed (E7), and an ack of its earlier life
    /// must not commit what that copy missed.
    pub fn ack(
        &mut self,
        now: Duration,
        batch: BatchId,
        from: NodeId,
        quorum: usize,
    ) -> Option<Vec<X>> {
        let b = self.in_flight.get_mut(&batch)?;
        if now >= b.sent_at + BATCH_PENDING_MAX {
            return None;
        }
        b.acks.insert(from);
        if b.acks.len() < quorum {
            return None;
        }
        self.in_flight.remove(&batch).map(|b| b.effects)
    }

    /// Batches pending [`BATCH_PENDING_MAX`] by `now` go back into the open
    /// batch, to be sent again under a new id (their acks so far count no
    /// more); their old ids, oldest first.
    pub fn requeue_stale(&mut self, now: Duration) -> Vec<BatchId> {
        let stale: Vec<BatchId> = self
            .in_flight
            .iter()
            .filter(|(_, b)| now >= b.sent_at + BATCH_PENDING_MAX)
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            if let Some(b) = self.in_flight.remove(id) {
                self.open.extend(b.entries);
                self.open_effects.extend(b.effects);
            }
        }
        stale
    }

    /// Every batch in flight goes back into the open batch, to be sent
    /// again under a new id (a floor was set above their ids); their old
    /// ids.
    pub fn requeue_all(&mut self) -> Vec<BatchId> {
        let ids: Vec<BatchId> = self.in_flight.keys().copied().collect();
        for b in std::mem::take(&mut self.in_flight).into_values() {
            self.open.extend(b.entries);
            self.open_effects.extend(b.effects);
        }
        ids
    }

    /// Every entry in flight or open.
    pub fn entries(&self) -> impl Iterator<Item = &E> {
        self.in_flight
            .values()
            .flat_map(|b| b.entries.iter())
            .chain(self.open.iter())
    }

    /// Every effect still waiting, in flight first, then open (a leader
    /// stepping down answers them).
    pub fn into_effects(self) -> impl Iterator<Item = X> {
        self.in_flight
            .into_values()
            .flat_map(|b| b.effects)
            .chain(self.open_effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register per key: the highest (version, value) wins.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Reg {
        key: u8,
        version: u32,
        value: u8,
    }

    impl Merge for Reg {
        type Key = u8;
        type Rank<'a> = (u32, u8);
        fn key(&self) -> &u8 {
            &self.key
        }
        fn rank(&self) -> (u32, u8) {
            (self.version, self.value)
        }
    }

    fn reg(key: u8, version: u32, value: u8) -> Reg {
        Reg {
            key,
            version,
            value,
        }
    }

    #[test]
    fn the_higher_rank_wins_and_a_repeat_changes_nothing() {
        let mut r = Replica::default();
        assert!(r.merge(reg(1, 2, 0)));
        assert!(!r.merge(reg(1, 1, 9)), "a lower rank never replaces");
        assert!(!r.merge(reg(1, 2, 0)), "merging is idempotent");
        let changed = r.merge_all([reg(1, 3, 0), reg(2, 1, 0), reg(1, 2, 5)]);
        assert_eq!(changed, vec![reg(1, 3, 0), reg(2, 1, 0)]);
        assert_eq!(r.get(&1), Some(&reg(1, 3, 0)));
        assert_eq!(r.len(), 2);
    }

    proptest::proptest! {
        /// Any order of arrival, with repeats: the same copy.
        #[test]
        fn merge_is_a_join(
            entries in proptest::collection::vec((0u8..4, 0u32..5, 0u8..3), 0..24),
            turn in 0usize..24,
        ) {
            let entries: Vec<Reg> = entries.into_iter().map(|(k, v, x)| reg(k, v, x)).collect();
            let mut forward = Replica::default();
            forward.merge_all(entries.iter().cloned());
            let mut other_order = entries.clone();
            other_order.rotate_left(turn % entries.len().max(1));
            other_order.reverse();
            other_order.extend(entries.iter().cloned());
            let mut other = Replica::default();
            for e in other_order {
                other.merge(e);
            }
            proptest::prop_assert_eq!(forward, other);
        }
    }

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    #[test]
    fn a_batch_commits_once_on_a_majority_and_ids_never_repeat() {
        let mut b: Batches<u8, &str> = Batches::default();
        let mut next = BatchId(7);
        assert_eq!(b.flush(Duration::ZERO, &mut next), None, "nothing open");
        b.write(1);
        b.effect("tell a");
        assert_eq!(
            b.flush(Duration::ZERO, &mut next),
            Some((BatchId(7), vec![1]))
        );
        assert_eq!(next, BatchId(8));
        assert_eq!(b.ack(Duration::ZERO, BatchId(7), n(1), 2), None);
        assert_eq!(
            b.ack(Duration::ZERO, BatchId(7), n(1), 2),
            None,
            "one voter counts once"
        );
        assert_eq!(
            b.ack(Duration::ZERO, BatchId(7), n(2), 2),
            Some(vec!["tell a"])
        );
        assert_eq!(
            b.ack(Duration::ZERO, BatchId(7), n(3), 2),
            None,
            "committed once"
        );
        assert!(!b.is_pending(BatchId(7)));
    }

    #[test]
    fn the_open_batch_grows_while_two_are_in_flight() {
        let mut b: Batches<u8, ()> = Batches::default();
        let mut next = BatchId(0);
        for e in 0..2 {
            b.write(e);
            b.effect(());
            assert!(b.flush(Duration::ZERO, &mut next).is_some());
        }
        b.write(2);
        b.effect(());
        b.write(3);
        assert_eq!(b.flush(Duration::ZERO, &mut next), None);
        b.ack(Duration::ZERO, BatchId(0), n(1), 1);
        assert_eq!(
            b.flush(Duration::ZERO, &mut next),
            Some((BatchId(2), vec![2, 3]))
        );
    }

    /// Batches nobody waits on (no effects: a released lock's tombstone)
    /// take no slot of the two: a voter's disk holds their syncs for the
    /// next batch's, which would otherwise wait for them to end.
    #[test]
    fn batches_without_effects_take_no_slot_of_the_two() {
        let mut b: Batches<u8, &str> = Batches::default();
        let mut next = BatchId(0);
        b.write(0);
        assert!(b.flush(Duration::ZERO, &mut next).is_some());
        for e in 1..3 {
            b.write(e);
            b.effect("grant");
            assert!(b.flush(Duration::ZERO, &mut next).is_some());
        }
        b.write(3);
        b.effect("grant");
        assert_eq!(b.flush(Duration::ZERO, &mut next), None, "two with effects");
        let mut without = b.clone();
        let mut n2 = next;
        without.open_effects.clear();
        assert_eq!(
            without.flush(Duration::ZERO, &mut n2),
            Some((BatchId(3), vec![3])),
            "one without effects takes a slot of its own"
        );
        without.write(4);
        assert_eq!(without.flush(Duration::ZERO, &mut n2), None, "four in all");
        b.ack(Duration::ZERO, BatchId(1), n(1), 1);
        assert_eq!(
            b.flush(Duration::ZERO, &mut next),
            Some((BatchId(3), vec![3])),
            "a slot with effects freed"
        );
    }

    /// A batch pending too long goes out again under a new id; an ack of
    /// its old id commits nothing.
    #[test]
    fn a_stale_batch_is_sent_again_under_a_new_id() {
        let mut b: Batches<u8, &str> = Batches::default();
        let mut next = BatchId(0);
        b.write(1);
        b.effect("x");
        b.flush(Duration::ZERO, &mut next);
        b.ack(Duration::ZERO, BatchId(0), n(1), 2);
        assert!(b.requeue_stale(BATCH_PENDING_MAX / 2).is_empty());
        assert_eq!(
            b.ack(BATCH_PENDING_MAX, BatchId(0), n(2), 2),
            None,
            "an ack as late as the resend counts for nothing, tick or not"
        );
        assert_eq!(b.requeue_stale(BATCH_PENDING_MAX), vec![BatchId(0)]);
        assert_eq!(
            b.ack(Duration::ZERO, BatchId(0), n(2), 2),
            None,
            "the old id is gone"
        );
        assert_eq!(
            b.flush(BATCH_PENDING_MAX, &mut next),
            Some((BatchId(1), vec![1]))
        );
        assert_eq!(
            b.ack(Duration::ZERO, BatchId(1), n(2), 2),
            None,
            "acks before the resend count no more"
        );
        assert_eq!(b.ack(Duration::ZERO, BatchId(1), n(1), 2), Some(vec!["x"]));
    }

    #[test]
    fn effects_follow_their_batch_or_the_next_and_all_come_back_at_the_end() {
        let mut b: Batches<u8, u8> = Batches::default();
        let mut next = BatchId(0);
        b.write(1);
        b.flush(Duration::ZERO, &mut next);
        b.effect_on(Some(BatchId(0)), 10);
        b.effect_on(Some(BatchId(5)), 11);
        b.effect(12);
        let all: Vec<u8> = b.clone().into_effects().collect();
        assert_eq!(all, vec![10, 11, 12]);
        assert_eq!(b.ack(Duration::ZERO, BatchId(0), n(1), 1), Some(vec![10]));
    }
}
