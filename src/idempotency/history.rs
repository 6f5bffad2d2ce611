//! The idempotency safety checker: from a history of executions (an
//! operation's body started, under which claim) and answers (what each
//! caller was told), verify that
//!
//! - every key's operation ran once, except where the run before was cut
//!   short and the next claimant was told `recovered` (I5): every
//!   execution of a key after its first must carry `recovered`;
//! - every caller of a key was given one result, the result of one of the
//!   key's executions (a replay equals the first recorded result);
//! - replicas agree: every node's record of a key is the one result
//!   callers were given.
//!
//! The workload must not abort claims (an abort lets the next claimant
//! run without `recovered`, by design).

use std::collections::BTreeMap;
use std::time::Duration;

use super::Record;
use crate::ids::{NodeId, Token};

/// An operation's body started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The idempotency key.
    pub key: String,
    /// Who ran it (any label unique per caller).
    pub client: String,
    /// The claim it ran under.
    pub claim: Token,
    /// What the claim said of an earlier claimant.
    pub recovered: bool,
    /// The result it produced (or would have, had it finished).
    pub result: Vec<u8>,
    /// When it started.
    pub at: Duration,
}

/// What a caller was told: a result, executed or replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The idempotency key.
    pub key: String,
    /// The caller.
    pub client: String,
    /// True for a replay.
    pub replayed: bool,
    /// The result told.
    pub result: Vec<u8>,
    /// When it was told.
    pub at: Duration,
}

/// A broken idempotency property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A key's operation ran again without its claimant being told that
    /// an earlier claimant's lease ran out.
    #[error("{} ran twice: {:?}, then {:?} without recovered", first.key, first, again)]
    DuplicateExecution {
        /// The key's first execution.
        first: Box<Execution>,
        /// A later one not told `recovered`.
        again: Box<Execution>,
    },
    /// Two callers of one key were given different results.
    #[error("{} answered two results: {:?} and {:?}", a.key, a, b)]
    DifferentResults {
        /// One answer.
        a: Box<Answer>,
        /// Another, with another result.
        b: Box<Answer>,
    },
    /// A caller was given a result no execution of its key produced.
    #[error("{} answered a result no execution produced: {:?}", answer.key, answer)]
    Invented {
        /// The answer.
        answer: Box<Answer>,
    },
    /// A node's record of a key is not the result its callers got.
    #[error("node {node} holds {key}'s result {held:?}, callers were told {told:?}")]
    ReplicaDiffers {
        /// The node.
        node: NodeId,
        /// The key.
        key: String,
        /// The node's record's result.
        held: Vec<u8>,
        /// What callers were told.
        told: Vec<u8>,
    },
    /// Two nodes hold different records (after the run converged).
    #[error("nodes {a} and {b} hold different records of {key}")]
    Diverged {
        /// One node.
        a: NodeId,
        /// Another.
        b: NodeId,
        /// The key.
        key: String,
    },
}

/// A history of executions and answers.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyHistory {
    executions: Vec<Execution>,
    answers: Vec<Answer>,
}

impl IdempotencyHistory {
    /// An empty history.
    pub fn new() -> IdempotencyHistory {
        IdempotencyHistory::default()
    }

    /// Records an execution.
    pub fn executed(&mut self, e: Execution) {
        self.executions.push(e);
    }

    /// Records an answer.
    pub fn answered(&mut self, a: Answer) {
        self.answers.push(a);
    }

    /// Executions recorded.
    pub fn executions(&self) -> &[Execution] {
        &self.executions
    }

    /// Answers recorded.
    pub fn answers(&self) -> &[Answer] {
        &self.answers
    }

    /// Checks executions and answers; the first violation found.
    pub fn check(&self) -> Result<(), Violation> {
        match self.violations().into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Every violation of executions and answers: per key, each
    /// execution after the first not told `recovered`; then each answer
    /// no execution produced, or other than the key's first answer.
    pub fn violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        let mut runs: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
        for e in &self.executions {
            runs.entry(&e.key).or_default().push(e);
        }
        for list in runs.values_mut() {
            list.sort_by_key(|e| (e.at, e.claim));
            for again in list.iter().skip(1).filter(|e| !e.recovered) {
                found.push(Violation::DuplicateExecution {
                    first: Box::new(list[0].clone()),
                    again: Box::new((*again).clone()),
                });
            }
        }
        let mut told: BTreeMap<&str, &Answer> = BTreeMap::new();
        for a in &self.answers {
            let produced = runs
                .get(a.key.as_str())
                .is_some_and(|list| list.iter().any(|e| e.result == a.result));
            if !produced {
                found.push(Violation::Invented {
                    answer: Box::new(a.clone()),
                });
                continue;
            }
            match told.get(a.key.as_str()) {
                Some(first) if first.result != a.result => {
                    found.push(Violation::DifferentResults {
                        a: Box::new((*first).clone()),
                        b: Box::new(a.clone()),
                    });
                }
                Some(_) => {}
                None => {
                    told.insert(&a.key, a);
                }
            }
        }
        found
    }

    /// Checks the nodes' records against the answers, and, if
    /// `converged`, against each other: every node holds the same record
    /// of every key.
    pub fn check_replicas(
        &self,
        replicas: &[(NodeId, Vec<Record>)],
        converged: bool,
    ) -> Result<(), Violation> {
        let mut told: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for a in &self.answers {
            told.entry(&a.key).or_insert(&a.result);
        }
        for (node, records) in replicas {
            for r in records {
                if let Some(t) = told.get(r.key.as_str())
                    && *t != r.result.as_slice()
                {
                    return Err(Violation::ReplicaDiffers {
                        node: *node,
                        key: r.key.clone(),
                        held: r.result.clone(),
                        told: t.to_vec(),
                    });
                }
            }
        }
        if converged && let Some((first, theirs)) = replicas.first() {
            let index = |rs: &[Record]| -> BTreeMap<String, Record> {
                rs.iter().map(|r| (r.key.clone(), r.clone())).collect()
            };
            let mine = index(theirs);
            for (node, records) in &replicas[1..] {
                let other = index(records);
                let keys = mine.keys().chain(other.keys());
                for key in keys {
                    if mine.get(key) != other.get(key) {
                        return Err(Violation::Diverged {
                            a: *first,
                            b: *node,
                            key: key.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(key: &str, claim: u64, recovered: bool, result: &str, at: u64) -> Execution {
        Execution {
            key: key.into(),
            client: format!("c{claim}"),
            claim: Token(claim),
            recovered,
            result: result.into(),
            at: Duration::from_millis(at),
        }
    }

    fn told(key: &str, result: &str, replayed: bool, at: u64) -> Answer {
        Answer {
            key: key.into(),
            client: "c".into(),
            replayed,
            result: result.into(),
            at: Duration::from_millis(at),
        }
    }

    fn record(key: &str, claim: u64, result: &str) -> Record {
        Record {
            key: key.into(),
            claim: Token(claim),
            fingerprint: b"f".to_vec(),
            recovered: false,
            expires_at_ms: 1_000,
            result: result.into(),
            committed: true,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = IdempotencyHistory::new();
        h.executed(ex("k", 1, false, "a", 0));
        h.executed(ex("k", 2, true, "b", 10));
        h.answered(told("k", "b", false, 20));
        h.answered(told("k", "b", true, 30));
        assert_eq!(h.check(), Ok(()));
        let replicas = [
            (NodeId(1), vec![record("k", 2, "b")]),
            (NodeId(2), vec![record("k", 2, "b")]),
        ];
        assert_eq!(h.check_replicas(&replicas, true), Ok(()));
    }

    #[test]
    fn a_second_run_not_told_recovered_fails() {
        let mut h = IdempotencyHistory::new();
        h.executed(ex("k", 2, false, "b", 10));
        h.executed(ex("k", 1, false, "a", 0));
        assert!(matches!(
            h.check(),
            Err(Violation::DuplicateExecution { .. })
        ));
    }

    #[test]
    fn every_violation_is_listed_not_only_the_first() {
        let mut h = IdempotencyHistory::new();
        h.executed(ex("k", 1, false, "a", 0));
        h.executed(ex("k", 2, false, "b", 10));
        h.executed(ex("k", 3, false, "c", 20));
        h.answered(told("k", "a", false, 5));
        h.answered(told("k", "b", true, 25));
        h.answered(told("k", "z", true, 30));
        let kinds: Vec<&str> = h
            .violations()
            .iter()
            .map(|v| match v {
                Violation::DuplicateExecution { .. } => "duplicate",
                Violation::DifferentResults { .. } => "different",
                Violation::Invented { .. } => "invented",
                _ => "replicas",
            })
            .collect();
        assert_eq!(kinds, ["duplicate", "duplicate", "different", "invented"]);
    }

    #[test]
    fn two_results_told_fail() {
        let mut h = IdempotencyHistory::new();
        h.executed(ex("k", 1, false, "a", 0));
        h.executed(ex("k", 2, true, "b", 10));
        h.answered(told("k", "a", false, 5));
        h.answered(told("k", "b", true, 20));
        assert!(matches!(h.check(), Err(Violation::DifferentResults { .. })));
    }

    #[test]
    fn a_result_nobody_produced_fails() {
        let mut h = IdempotencyHistory::new();
        h.executed(ex("k", 1, false, "a", 0));
        h.answered(told("k", "z", true, 5));
        assert!(matches!(h.check(), Err(Violation::Invented { .. })));
    }

    #[test]
    fn replicas_that_differ_fail() {
        let mut h = IdempotencyHistory::new();
        h.executed(ex("k", 1, false, "a", 0));
        h.answered(told("k", "a", false, 5));
        let wrong = [(NodeId(3), vec![record("k", 1, "b")])];
        assert!(matches!(
            h.check_replicas(&wrong, false),
            Err(Violation::ReplicaDiffers { .. })
        ));
        let apart = [(NodeId(1), vec![record("k", 1, "a")]), (NodeId(2), vec![])];
        assert_eq!(h.check_replicas(&apart, false), Ok(()));
        assert!(matches!(
            h.check_replicas(&apart, true),
            Err(Violation::Diverged { .. })
        ));
    }
}
