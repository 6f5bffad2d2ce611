//! The lock safety checker: from a history of holds with real (or
//! virtual) times, verify that no two clients held valid leases on one
//! lock at the same time, that grant order equals token order, and that no
//! token was granted twice.
//!
//! A hold runs from when its client received the grant to the end of what
//! the client believed: the earlier of its conservative validity (send
//! time of its last good acquire or renew plus TTL, minus the drift
//! margin) and the moment it sent its release.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ids::Token;

/// One client's hold of one lock under one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The lock.
    pub lock: String,
    /// Who held it (any label unique per client).
    pub client: String,
    /// The fencing token.
    pub token: Token,
    /// When the client received the grant.
    pub from: Duration,
    /// When the client stopped believing it held the lock.
    pub until: Duration,
}

/// A broken safety property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Two holds of one lock overlap in time.
    #[error("two holders of {}: {:?} and {:?}", a.lock, a, b)]
    TwoHolders {
        /// The earlier hold.
        a: Box<Hold>,
        /// The hold that started before `a` ended.
        b: Box<Hold>,
    },
    /// A later grant of a lock carries a lower (or equal) token.
    #[error("grant order differs from token order on {}: {:?} then {:?}", earlier.lock, earlier, later)]
    TokenOrder {
        /// Granted first.
        earlier: Box<Hold>,
        /// Granted later, with a token not above `earlier`'s.
        later: Box<Hold>,
    },
    /// One token granted to two clients (or two locks).
    #[error("token {} granted twice: {:?} and {:?}", a.token, a, b)]
    TokenReused {
        /// One grant.
        a: Box<Hold>,
        /// The other.
        b: Box<Hold>,
    },
}

/// A history of holds.
#[derive(Debug, Clone, Default)]
pub struct LockHistory {
    holds: Vec<Hold>,
    /// Times at which the cluster may have formed anew without the memory
    /// of its earlier life (a majority of voters restarted without data
    /// directories, E7): fencing tokens may start over there, so token
    /// order and reuse are checked within each stretch between them. Two
    /// holders are checked across all of them.
    restarts: Vec<Duration>,
}

impl LockHistory {
    /// An empty history.
    pub fn new() -> LockHistory {
        LockHistory::default()
    }

    /// Records a hold.
    pub fn record(&mut self, hold: Hold) {
        self.holds.push(hold);
    }

    /// The cluster may have formed anew at `at` (see the field's doc).
    pub fn tokens_may_restart_at(&mut self, at: Duration) {
        self.restarts.push(at);
    }

    /// Which stretch between restarts a hold began in.
    fn life(&self, h: &Hold) -> usize {
        self.restarts.iter().filter(|r| **r <= h.from).count()
    }

    /// Adds every hold of another history.
    pub fn extend(&mut self, other: LockHistory) {
        self.holds.extend(other.holds);
    }

    /// The holds recorded.
    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }

    /// Checks every property; the first violation found.
    pub fn check(&self) -> Result<(), Violation> {
        match self.violations().into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Every violation found, in the order [`LockHistory::check`] looks
    /// for them: reused tokens, then per lock token order and two holders.
    pub fn violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        let mut by_token: BTreeMap<(usize, Token), &Hold> = BTreeMap::new();
        for h in &self.holds {
            if let Some(other) = by_token.insert((self.life(h), h.token), h)
                && (other.client != h.client || other.lock != h.lock)
            {
                found.push(Violation::TokenReused {
                    a: Box::new(other.clone()),
                    b: Box::new(h.clone()),
                });
            }
        }
        let mut by_lock: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
        for h in &self.holds {
            by_lock.entry(&h.lock).or_default().push(h);
        }
        for holds in by_lock.values_mut() {
            holds.sort_by_key(|h| (h.from, h.token));
            // Holds of one token by one client (a re-acquire with the same
            // request id) merge; distinct tokens must not overlap.
            for pair in holds.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if a.token == b.token || self.life(a) != self.life(b) {
                    continue;
                }
                if b.token < a.token {
                    found.push(Violation::TokenOrder {
                        earlier: Box::new(a.clone()),
                        later: Box::new(b.clone()),
                    });
                }
            }
            let mut latest: Option<&Hold> = None;
            for &h in holds.iter() {
                if let Some(a) = latest
                    && a.token != h.token
                    && h.from < a.until
                    && h.until > h.from
                    && a.until > a.from
                {
                    found.push(Violation::TwoHolders {
                        a: Box::new(a.clone()),
                        b: Box::new(h.clone()),
                    });
                }
                if latest.is_none_or(|a| h.until > a.until) {
                    latest = Some(h);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(lock: &str, client: &str, token: u64, from: u64, until: u64) -> Hold {
        Hold {
            lock: lock.into(),
            client: client.into(),
            token: Token(token),
            from: Duration::from_millis(from),
            until: Duration::from_millis(until),
        }
    }

    fn history(holds: &[Hold]) -> LockHistory {
        let mut h = LockHistory::new();
        for x in holds {
            h.record(x.clone());
        }
        h
    }

    #[test]
    fn a_clean_history_passes() {
        let h = history(&[
            hold("a", "c1", 1, 0, 100),
            hold("a", "c2", 2, 100, 200),
            hold("b", "c1", 3, 50, 500),
            hold("a", "c1", 4, 250, 300),
        ]);
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn overlapping_holders_fail() {
        let h = history(&[hold("a", "c1", 1, 0, 100), hold("a", "c2", 2, 99, 200)]);
        assert!(matches!(h.check(), Err(Violation::TwoHolders { .. })));
        // Overlap with a hold that is not the previous one by start time.
        let h = history(&[
            hold("a", "c1", 1, 0, 1000),
            hold("a", "c2", 2, 100, 200),
            hold("a", "c3", 3, 300, 400),
        ]);
        assert!(matches!(h.check(), Err(Violation::TwoHolders { .. })));
    }

    #[test]
    fn grant_order_against_token_order_fails() {
        let h = history(&[hold("a", "c1", 5, 0, 100), hold("a", "c2", 4, 200, 300)]);
        assert!(matches!(h.check(), Err(Violation::TokenOrder { .. })));
    }

    /// Across a restart that may have lost the cluster's memory, tokens
    /// may start over, but two holders are never allowed.
    #[test]
    fn tokens_may_restart_across_a_new_life_but_holders_never_overlap() {
        let mut h = history(&[hold("a", "c1", 5, 0, 100), hold("a", "c2", 5, 200, 300)]);
        h.tokens_may_restart_at(Duration::from_millis(150));
        assert_eq!(h.check(), Ok(()));
        let mut h = history(&[hold("a", "c1", 5, 0, 250), hold("a", "c2", 4, 200, 300)]);
        h.tokens_may_restart_at(Duration::from_millis(150));
        assert!(matches!(h.check(), Err(Violation::TwoHolders { .. })));
    }

    #[test]
    fn a_token_granted_twice_fails() {
        let h = history(&[hold("a", "c1", 5, 0, 100), hold("b", "c2", 5, 200, 300)]);
        assert!(matches!(h.check(), Err(Violation::TokenReused { .. })));
        let h = history(&[hold("a", "c1", 5, 0, 100), hold("a", "c2", 5, 200, 300)]);
        assert!(matches!(h.check(), Err(Violation::TokenReused { .. })));
    }

    #[test]
    fn every_violation_is_listed_not_only_the_first() {
        let h = history(&[
            hold("a", "c1", 1, 0, 100),
            hold("a", "c2", 2, 50, 200),
            hold("b", "c1", 4, 0, 100),
            hold("b", "c2", 3, 150, 200),
            hold("c", "c3", 4, 0, 10),
        ]);
        let kinds: Vec<&str> = h
            .violations()
            .iter()
            .map(|v| match v {
                Violation::TwoHolders { .. } => "two holders",
                Violation::TokenOrder { .. } => "token order",
                Violation::TokenReused { .. } => "token reused",
            })
            .collect();
        assert_eq!(kinds, ["token reused", "two holders", "token order"]);
        assert!(matches!(h.check(), Err(Violation::TokenReused { .. })));
    }
}
