//! What a churn run comes to: throughput in the steady state and under
//! churn, latencies, the disruption each fault caused as the clients saw
//! it, what the agents saw (terms, time without a leader, crash
//! detection, false suspicions), bytes sent, and the checkers' verdict.
//!
//! Owns: the arithmetic over the run's records. Pure: the tests feed it
//! records made up by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::monitor::Sample;
use super::schedule::{Fault, Kind};
use super::workload::{Op, OpKind};
use crate::harness::report::percentile;

/// How long after a fault heals a node may still be seen dead without
/// that being a false suspicion (it rejoins, is gossiped about again).
pub const SETTLE: Duration = Duration::from_secs(5);

/// A fault as it was applied.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The schedule's fault.
    pub fault: Fault,
    /// The node it struck (`None`: skipped, see `skipped`).
    pub victim: Option<u64>,
    /// The leader when it struck.
    pub leader: Option<u64>,
    /// Why it was not applied, if it was not.
    pub skipped: Option<String>,
}

impl Applied {
    /// It struck the leader in a way that takes the lead from it.
    pub fn hit_leader(&self) -> bool {
        self.victim.is_some()
            && self.victim == self.leader
            && matches!(
                self.fault.kind,
                Kind::Kill { .. }
                    | Kind::Pause { .. }
                    | Kind::Minority { .. }
                    | Kind::OneWay { .. }
            )
    }

    /// The span in which `node` counts as disturbed by this fault.
    fn disturbs(&self, node: u64, at: Duration) -> bool {
        let start = self.fault.at;
        let end = start + self.fault.kind.lasting() + SETTLE;
        let touched = self.victim == Some(node) || self.fault.kind.is_partition();
        touched && self.victim.is_some() && at >= start && at <= end
    }
}

/// Latency figures of one kind of operation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Operations.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Longest.
    pub max: Duration,
}

impl Latency {
    fn of(ops: &[Op], kind: OpKind) -> Latency {
        let mut l: Vec<Duration> = ops
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| o.latency)
            .collect();
        l.sort_unstable();
        Latency {
            count: l.len(),
            p50: percentile(&l, 50.0),
            p99: percentile(&l, 99.0),
            max: l.last().copied().unwrap_or_default(),
        }
    }
}

/// Per fault: what it did to the clients and the agents.
#[derive(Debug, Clone)]
pub struct Effect {
    /// The fault.
    pub applied: Applied,
    /// Longest gap between successful operations from the fault until
    /// the next slot (the first gap from the fault itself).
    pub gap: Duration,
    /// New terms seen (leader with quorum at an epoch above any before).
    pub new_terms: usize,
    /// After a kill: when the first and the last running agent saw the
    /// victim dead, from the kill; and how many never did before it was
    /// back.
    pub detected: Option<(Duration, Duration, usize)>,
}

/// The verdict of the checkers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Safety {
    /// Two clients holding one lock at once.
    pub double_holders: usize,
    /// A later grant with a lower token.
    pub token_order_violations: usize,
    /// One token granted twice.
    pub tokens_reused: usize,
    /// An operation run again without its claimant told `recovered`.
    pub duplicate_executions: usize,
    /// A replay other than the key's first answer.
    pub differing_replays: usize,
    /// An answer no execution produced.
    pub invented_results: usize,
}

impl Safety {
    /// Every count is 0.
    pub fn clean(&self) -> bool {
        *self == Safety::default()
    }
}

/// Operations per second between `from` and `to`.
pub fn rate(ops: &[Op], from: Duration, to: Duration) -> f64 {
    let span = to.saturating_sub(from).as_secs_f64();
    if span <= 0.0 {
        return 0.0;
    }
    ops.iter().filter(|o| o.end >= from && o.end < to).count() as f64 / span
}

/// Per second of the run: operations completed in it and the 99th
/// percentile of their latencies.
pub fn timeline(ops: &[Op], duration: Duration) -> Vec<(u64, usize, Duration)> {
    let seconds = duration.as_secs_f64().ceil() as usize;
    let mut per: Vec<Vec<Duration>> = vec![Vec::new(); seconds.max(1)];
    for o in ops {
        let k = (o.end.as_secs() as usize).min(per.len() - 1);
        per[k].push(o.latency);
    }
    per.into_iter()
        .enumerate()
        .map(|(k, mut l)| {
            l.sort_unstable();
            (k as u64, l.len(), percentile(&l, 99.0))
        })
        .collect()
}

/// Acquire and idempotent-operation latencies.
pub fn latencies(ops: &[Op]) -> (Latency, Latency) {
    (
        Latency::of(ops, OpKind::Acquire),
        Latency::of(ops, OpKind::Idempotent),
    )
}

/// What each fault did, `every` being the slot length.
pub fn effects(
    applied: &[Applied],
    ops: &[Op],
    samples: &[Sample],
    every: Duration,
) -> Vec<Effect> {
    let mut ends: Vec<Duration> = ops.iter().map(|o| o.end).collect();
    ends.sort_unstable();
    applied
        .iter()
        .map(|a| {
            let (from, to) = (a.fault.at, a.fault.at + every);
            Effect {
                applied: a.clone(),
                gap: gap_until_recovered(&ends, from, to),
                new_terms: new_terms(samples, from, to),
                detected: match (a.fault.kind, a.victim) {
                    (Kind::Kill { down }, Some(v)) => detection(samples, v, from, from + down),
                    _ => None,
                },
            }
        })
        .collect()
}

/// The longest gap between successive operations from `from` on, up to
/// the first operation at or after `to` (so a gap across the slot's end
/// counts whole).
fn gap_until_recovered(ends: &[Duration], from: Duration, to: Duration) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &t in ends.iter().filter(|t| **t > from) {
        gap = gap.max(t - last);
        last = t;
        if t >= to {
            break;
        }
    }
    gap
}

/// Terms first seen with a quorum in `[from, to)`, at epochs above every
/// one seen before `from`.
fn new_terms(samples: &[Sample], from: Duration, to: Duration) -> usize {
    let led = |s: &&Sample| s.view.as_ref().filter(|v| v.quorum).and_then(|v| v.leader);
    let before = samples
        .iter()
        .filter(|s| s.at < from)
        .filter_map(|s| led(&s))
        .map(|(_, e)| e)
        .max()
        .unwrap_or(0);
    samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .filter_map(|s| led(&s))
        .filter(|(_, e)| *e > before)
        .collect::<BTreeSet<_>>()
        .len()
}

/// After `victim` died at `from`: per other agent, the first sample
/// before `back` in which it is not alive; the earliest and latest of
/// those, and how many agents answered in the window but never saw it.
fn detection(
    samples: &[Sample],
    victim: u64,
    from: Duration,
    back: Duration,
) -> Option<(Duration, Duration, usize)> {
    let mut first_seen: BTreeMap<u64, Option<Duration>> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.node != victim && s.at >= from && s.at < back)
    {
        let Some(v) = &s.view else { continue };
        let entry = first_seen.entry(s.node).or_insert(None);
        if !v.alive.contains(&victim) {
            let t = s.at - from;
            *entry = Some(entry.map_or(t, |e: Duration| e.min(t)));
        }
    }
    let seen: Vec<Duration> = first_seen.values().filter_map(|t| *t).collect();
    let missed = first_seen.len() - seen.len();
    Some((*seen.iter().min()?, *seen.iter().max()?, missed))
}

/// Seconds in `[from, to)` in which no agent reported a leader with a
/// quorum (in 100 ms buckets).
pub fn leaderless(samples: &[Sample], from: Duration, to: Duration) -> Duration {
    const BUCKET: u128 = 100;
    let (a, b) = (from.as_millis() / BUCKET, to.as_millis() / BUCKET);
    let led: BTreeSet<u128> = samples
        .iter()
        .filter(|s| {
            s.view
                .as_ref()
                .is_some_and(|v| v.quorum && v.leader.is_some())
        })
        .map(|s| s.at.as_millis() / BUCKET)
        .collect();
    let missing = (a..b).filter(|k| !led.contains(k)).count() as u64;
    Duration::from_millis(missing * BUCKET as u64)
}

/// Times an agent stopped seeing another alive while neither was
/// disturbed by a fault (nor within [`SETTLE`] of one).
pub fn false_suspicions(samples: &[Sample], applied: &[Applied]) -> usize {
    let mut by_node: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_node.entry(s.node).or_default().push(s);
    }
    let disturbed = |node: u64, at: Duration| applied.iter().any(|a| a.disturbs(node, at));
    let mut count = 0;
    for (observer, mut list) in by_node {
        list.sort_by_key(|s| s.at);
        let mut before: Option<&Vec<u64>> = None;
        for s in list {
            let Some(v) = &s.view else { continue };
            if let Some(prev) = before {
                count += prev
                    .iter()
                    .filter(|n| !v.alive.contains(n))
                    .filter(|n| !disturbed(**n, s.at) && !disturbed(observer, s.at))
                    .count();
            }
            before = Some(&v.alive);
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::churn::monitor::View;
    use crate::harness::churn::schedule::Target;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn op(end: u64) -> Op {
        Op {
            kind: OpKind::Acquire,
            end: ms(end),
            latency: ms(1),
        }
    }

    fn sample(at: u64, node: u64, leader: Option<(u64, u64)>, alive: &[u64]) -> Sample {
        Sample {
            at: ms(at),
            node,
            view: Some(View {
                leader,
                quorum: leader.is_some(),
                alive: alive.to_vec(),
            }),
        }
    }

    fn kill(at: u64, victim: u64, leader: u64) -> Applied {
        Applied {
            fault: Fault {
                at: ms(at),
                target: Target::Node(victim),
                kind: Kind::Kill { down: ms(2000) },
            },
            victim: Some(victim),
            leader: Some(leader),
            skipped: None,
        }
    }

    #[test]
    fn a_faults_gap_runs_from_the_fault_to_recovery() {
        let mut ends = vec![100, 200, 1000, 1100, 1900];
        ends.extend((4..=13).map(|k| k * 500));
        let ops: Vec<Op> = ends.into_iter().map(op).collect();
        let e = effects(&[kill(1050, 1, 1)], &ops, &[], ms(5000));
        // From 1100 to 1900.
        assert_eq!(e[0].gap, ms(800));
        // Nothing after the fault within its slot, one operation past its
        // end: the gap reaches that one.
        let ops: Vec<Op> = [100, 2000, 5100].map(op).to_vec();
        let e = effects(&[kill(2050, 1, 1)], &ops, &[], ms(1000));
        assert_eq!(e[0].gap, ms(3050));
        assert!(e[0].applied.hit_leader());
        assert!(!kill(0, 2, 1).hit_leader());
    }

    #[test]
    fn detection_takes_the_first_and_last_observer() {
        let samples = vec![
            sample(900, 2, Some((1, 3)), &[1, 2, 3]),
            sample(1100, 2, Some((1, 3)), &[1, 2, 3]),
            sample(1300, 2, None, &[2, 3]),
            sample(1200, 3, None, &[2, 3]),
            sample(1200, 4, None, &[1, 2, 3, 4]),
        ];
        let e = effects(&[kill(1000, 1, 1)], &[], &samples, ms(5000));
        assert_eq!(e[0].detected, Some((ms(200), ms(300), 1)));
    }

    #[test]
    fn new_terms_count_epochs_above_those_seen_before() {
        let samples = vec![
            sample(900, 2, Some((1, 3)), &[]),
            sample(1100, 2, Some((1, 3)), &[]),
            sample(1500, 2, Some((2, 4)), &[]),
            sample(1600, 3, Some((2, 4)), &[]),
            sample(2600, 3, Some((1, 5)), &[]),
            sample(7000, 3, Some((1, 6)), &[]),
        ];
        let e = effects(&[kill(1000, 1, 1)], &[], &samples, ms(5000));
        assert_eq!(e[0].new_terms, 2);
    }

    #[test]
    fn time_without_a_leader_is_counted_in_buckets() {
        let samples = vec![
            sample(0, 1, Some((1, 1)), &[]),
            sample(150, 1, None, &[]),
            sample(350, 2, Some((1, 1)), &[]),
        ];
        assert_eq!(leaderless(&samples, ms(0), ms(400)), ms(200));
    }

    #[test]
    fn only_undisturbed_nodes_seen_dead_are_false_suspicions() {
        let samples = vec![
            sample(0, 2, None, &[1, 2, 3]),
            sample(100, 2, None, &[2, 3]),
            sample(200, 2, None, &[2]),
            sample(20_000, 2, None, &[1, 2, 3]),
            sample(20_100, 2, None, &[2, 3]),
        ];
        // Node 1 killed at 50: its disappearance at 100 is no false
        // suspicion; node 3's at 200 is, and node 1's at 20,100, long
        // after it came back, is too.
        assert_eq!(false_suspicions(&samples, &[kill(50, 1, 1)]), 2);
    }

    #[test]
    fn rates_count_operations_in_their_span() {
        let ops: Vec<Op> = [100, 200, 1000, 1100].map(op).to_vec();
        assert_eq!(rate(&ops, ms(0), ms(1000)), 2.0);
        assert_eq!(rate(&ops, ms(1000), ms(1000)), 0.0);
    }
}
