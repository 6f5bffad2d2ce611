//! The churn schedule of `meshd bench churn`: which fault strikes when,
//! drawn from the run's seed alone, so the same seed gives the same
//! faults at the same times to the agents, to etcd beside them, and to
//! the simulation. Targets are named by role ("the leader") or by id;
//! the runner resolves a role when the fault strikes.
//!
//! Owns: the draw. Knows nothing of processes or namespaces.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Whom a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whoever leads when the fault strikes.
    Leader,
    /// A node by id (`1..=nodes`; voters are the lowest ids).
    Node(u64),
}

/// What a fault does; each heals by itself after its duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `kill -9`; the node restarts from its data directory after `down`.
    Kill {
        /// How long it stays dead.
        down: Duration,
    },
    /// SIGSTOP, then SIGCONT after `paused`: longer than the leader's
    /// lease and the workload's TTLs, so the node wakes up believing what
    /// the others have given up on.
    Pause {
        /// How long it stays stopped.
        paused: Duration,
    },
    /// A member that is not a voter leaves gracefully (SIGTERM) and joins
    /// again after `away`.
    Leave {
        /// How long it stays away.
        away: Duration,
    },
    /// The target and one more node are cut off from the rest, both ways
    /// (with [`Target::Leader`], a minority holding the old leader).
    Minority {
        /// How long the partition lasts.
        lasting: Duration,
    },
    /// The cluster splits in two halves that cannot reach each other;
    /// the target reaches both (a bridge).
    Bridge {
        /// How long the partition lasts.
        lasting: Duration,
    },
    /// Everything the target sends is lost; what it receives arrives.
    OneWay {
        /// How long the loss lasts.
        lasting: Duration,
    },
    /// Everything the target sends is delayed by `delay`.
    Delay {
        /// The delay added.
        delay: Duration,
        /// How long it lasts.
        lasting: Duration,
    },
}

impl Kind {
    /// How long the fault lasts before it heals.
    pub fn lasting(&self) -> Duration {
        match *self {
            Kind::Kill { down } => down,
            Kind::Pause { paused } => paused,
            Kind::Leave { away } => away,
            Kind::Minority { lasting }
            | Kind::Bridge { lasting }
            | Kind::OneWay { lasting }
            | Kind::Delay { lasting, .. } => lasting,
        }
    }

    /// A partition between namespaces (skipped without them).
    pub fn is_partition(&self) -> bool {
        matches!(
            self,
            Kind::Minority { .. } | Kind::Bridge { .. } | Kind::OneWay { .. } | Kind::Delay { .. }
        )
    }

    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Kill { .. } => "kill -9",
            Kind::Pause { .. } => "pause",
            Kind::Leave { .. } => "leave",
            Kind::Minority { .. } => "minority",
            Kind::Bridge { .. } => "bridge",
            Kind::OneWay { .. } => "one-way loss",
            Kind::Delay { .. } => "delay",
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// When it strikes, from the start of the run.
    pub at: Duration,
    /// Whom.
    pub target: Target,
    /// What it does.
    pub kind: Kind,
}

/// The shape of a run the schedule is drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Nodes, ids `1..=nodes`.
    pub nodes: u64,
    /// Voters: ids `1..=voters`.
    pub voters: u64,
    /// The whole run.
    pub duration: Duration,
    /// The first stretch, without faults: the steady state.
    pub steady: Duration,
    /// One fault strikes at the start of every such slot after the
    /// steady state; each heals within its slot.
    pub every: Duration,
    /// Draw partitions too (they need network namespaces).
    pub partitions: bool,
}

/// The faults of a run: one at the start of each slot after the steady
/// state, the last slot ending by the end of the run; the first a kill of
/// the leader, the second a pause of the leader, with partitions the
/// third a minority holding the leader, the rest drawn. The same
/// seed and shape give the same faults.
pub fn draw(seed: u64, shape: Shape) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc4u64.rotate_left(56));
    let every = shape.every.max(Duration::from_millis(500));
    // A fault lasts at most three quarters of its slot, so the cluster
    // has a quarter of the slot to settle before the next.
    let longest = every.mul_f64(0.75);
    let ms = |rng: &mut StdRng, low: u64, high: u64| {
        let d = Duration::from_millis(rng.random_range(low..=high.max(low)));
        d.min(longest)
    };
    let members = shape.nodes > shape.voters;
    let mut faults = Vec::new();
    let mut at = shape.steady;
    while at + every <= shape.duration {
        let leader_or_any = |rng: &mut StdRng| {
            if rng.random_bool(0.5) {
                Target::Leader
            } else {
                Target::Node(rng.random_range(1..=shape.nodes))
            }
        };
        // The first two faults strike the leader, a kill then a pause,
        // so every run, however short, has both failovers.
        // With partitions, the third cuts the leader off in a minority.
        let roll = match faults.len() {
            0 => 0,
            1 => 35,
            2 if shape.partitions => 80,
            _ => rng.random_range(0..100u32),
        };
        let (target, kind) = match roll {
            0 if faults.is_empty() => (
                Target::Leader,
                Kind::Kill {
                    down: ms(&mut rng, 1_000, 3_000),
                },
            ),
            35 if faults.len() == 1 => (
                Target::Leader,
                Kind::Pause {
                    paused: ms(&mut rng, 2_500, 3_800),
                },
            ),
            0..35 => (
                leader_or_any(&mut rng),
                Kind::Kill {
                    down: ms(&mut rng, 1_000, 3_000),
                },
            ),
            35..65 => (
                leader_or_any(&mut rng),
                Kind::Pause {
                    paused: ms(&mut rng, 2_500, 3_800),
                },
            ),
            65..80 if members => (
                Target::Node(rng.random_range(shape.voters + 1..=shape.nodes)),
                Kind::Leave {
                    away: ms(&mut rng, 1_000, 3_000),
                },
            ),
            80..88 if shape.partitions => (
                Target::Leader,
                Kind::Minority {
                    lasting: ms(&mut rng, 2_000, 3_500),
                },
            ),
            88..92 if shape.partitions => (
                Target::Node(rng.random_range(1..=shape.nodes)),
                Kind::Bridge {
                    lasting: ms(&mut rng, 2_000, 3_500),
                },
            ),
            92..96 if shape.partitions => (
                leader_or_any(&mut rng),
                Kind::OneWay {
                    lasting: ms(&mut rng, 2_000, 3_500),
                },
            ),
            96..100 if shape.partitions => (
                leader_or_any(&mut rng),
                Kind::Delay {
                    delay: Duration::from_millis(rng.random_range(50..=200)),
                    lasting: ms(&mut rng, 2_000, 3_500),
                },
            ),
            // Without members or partitions, the rest are kills.
            _ => (
                leader_or_any(&mut rng),
                Kind::Kill {
                    down: ms(&mut rng, 1_000, 3_000),
                },
            ),
        };
        faults.push(Fault { at, target, kind });
        at += every;
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(partitions: bool) -> Shape {
        Shape {
            nodes: 7,
            voters: 5,
            duration: Duration::from_secs(120),
            steady: Duration::from_secs(20),
            every: Duration::from_secs(5),
            partitions,
        }
    }

    #[test]
    fn a_seed_gives_the_same_faults_and_another_seed_others() {
        assert_eq!(draw(7, shape(true)), draw(7, shape(true)));
        assert_ne!(draw(7, shape(true)), draw(8, shape(true)));
    }

    #[test]
    fn one_fault_per_slot_after_the_steady_state_each_healed_within_it() {
        let faults = draw(1, shape(false));
        assert_eq!(faults.len(), 20);
        for (i, f) in faults.iter().enumerate() {
            assert_eq!(f.at, Duration::from_secs(20 + 5 * i as u64));
            assert!(f.kind.lasting() <= Duration::from_millis(3_750), "{f:?}");
            assert!(!f.kind.is_partition(), "{f:?}");
        }
    }

    #[test]
    fn every_run_starts_its_churn_with_a_kill_and_a_pause_of_the_leader() {
        for seed in 0..20 {
            let f = draw(seed, shape(false));
            assert!(matches!(
                f[0],
                Fault {
                    target: Target::Leader,
                    kind: Kind::Kill { .. },
                    ..
                }
            ));
            assert!(matches!(
                f[1],
                Fault {
                    target: Target::Leader,
                    kind: Kind::Pause { .. },
                    ..
                }
            ));
        }
    }

    #[test]
    fn leaves_strike_only_members_that_are_not_voters() {
        for seed in 0..50 {
            for f in draw(seed, shape(true)) {
                if let Kind::Leave { .. } = f.kind {
                    assert!(matches!(f.target, Target::Node(6 | 7)), "{f:?}");
                }
            }
        }
        let voters_only = Shape {
            nodes: 5,
            ..shape(false)
        };
        assert!(
            (0..50)
                .flat_map(|s| draw(s, voters_only))
                .all(|f| !matches!(f.kind, Kind::Leave { .. }))
        );
    }

    #[test]
    fn pauses_outlast_the_lease_and_the_workloads_ttls() {
        let pauses: Vec<Duration> = (0..50)
            .flat_map(|s| draw(s, shape(false)))
            .filter_map(|f| match f.kind {
                Kind::Pause { paused } => Some(paused),
                _ => None,
            })
            .collect();
        assert!(!pauses.is_empty());
        assert!(pauses.iter().all(|p| *p >= Duration::from_millis(2_500)));
    }
}
