//! Replication, sans-io: what every replicated protocol shares. Today it
//! holds the voter's copy ([`Replica`]), generic over what is replicated
//! ([`Merge`]): lock entries now, idempotency records next.
//!
//! Owns: the merge of replicated entries (a join: commutative, associative,
//! idempotent), so the order in which replication batches, promises and
//! recovery copies arrive does not matter. Must not know what an entry
//! means (a grant, a record) nor read a clock, send or persist.
//!
//! Not yet here: the voter's acceptance of a batch (E1, E7, V1, E8; the
//! election decides it and the node driver merges), and the leader's
//! batches, acks and retries (in `locks::table` and the node driver).

use std::borrow::Borrow;
use std::collections::BTreeMap;

/// An entry that replicates by merging: one entry per key, and of two
/// entries of one key the higher rank wins. The rank must be a total
/// order consistent with the protocol's "later": for locks a higher token,
/// then a release over its grant, then a later write of one grant.
pub trait Merge: Clone {
    /// What names the entry (a lock's name).
    type Key: Ord + Clone;
    /// The merge order.
    type Rank: Ord;
    /// The entry's key.
    fn key(&self) -> &Self::Key;
    /// The entry's rank.
    fn rank(&self) -> Self::Rank;
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
        if !self.changes(&entry) {
            return false;
        }
        self.entries.insert(entry.key().clone(), entry);
        true
    }

    /// Merges many; the entries that changed the copy (cloned only those).
    pub fn merge_all(&mut self, entries: impl IntoIterator<Item = E>) -> Vec<E> {
        let mut changed = Vec::new();
        for entry in entries {
            if self.changes(&entry) {
                self.entries.insert(entry.key().clone(), entry.clone());
                changed.push(entry);
            }
        }
        changed
    }

    /// True if merging `entry` would change the copy.
    fn changes(&self, entry: &E) -> bool {
        self.entries
            .get(entry.key())
            .is_none_or(|current| current.rank() < entry.rank())
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

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
        type Rank = (u32, u8);
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
}
