//! The election core on a zero-latency in-memory network with cuts, driven
//! in 10 ms steps. Each test states the rule it checks.

use super::*;

const STEP: Duration = Duration::from_millis(10);

struct Net {
    nodes: BTreeMap<NodeId, Election>,
    down: BTreeSet<NodeId>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// One-way loss: what `.0` sends `.1` (requests and answers) is lost.
    dropped: BTreeSet<(NodeId, NodeId)>,
    now: Duration,
    /// (node, epoch, first instant it served, last instant it served)
    served: BTreeMap<(NodeId, Epoch), (Duration, Duration)>,
    /// Each node's next deadline, as its driver would have it after the
    /// node last ticked or handled an input.
    deadlines: BTreeMap<NodeId, Duration>,
    /// Nodes that handled an input since their deadline was noted.
    touched: BTreeSet<NodeId>,
    /// Probes sent, by sender.
    probes: BTreeMap<NodeId, u64>,
    /// Probes sent, by sender and target.
    probes_to: BTreeMap<(NodeId, NodeId), u64>,
}

fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

impl Net {
    fn new(n: u64, voters: &[NodeId], durable: bool) -> Net {
        Net::with_timing(n, voters, durable, Timing::default())
    }

    fn with_timing(n: u64, voters: &[NodeId], durable: bool, timing: Timing) -> Net {
        let mut nodes = BTreeMap::new();
        // Durable voters start initialized with nothing promised; the
        // others start a new cluster (bootstrap) without data directories.
        let memory = if durable {
            Memory::Durable
        } else {
            Memory::None
        };
        for id in ids(n) {
            nodes.insert(
                id,
                Election::new(
                    id,
                    voters,
                    timing,
                    Duration::ZERO,
                    memory,
                    Epoch(0),
                    !durable,
                    id.0,
                ),
            );
        }
        let mut net = Net {
            nodes,
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            dropped: BTreeSet::new(),
            now: Duration::ZERO,
            served: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            touched: BTreeSet::new(),
            probes: BTreeMap::new(),
            probes_to: BTreeMap::new(),
        };
        for a in ids(n) {
            for b in ids(n) {
                net.nodes
                    .get_mut(&a)
                    .unwrap()
                    .handle_peer(Duration::ZERO, b, true, None);
            }
        }
        net
    }

    fn link(&self, a: NodeId, b: NodeId) -> bool {
        !self.down.contains(&a)
            && !self.down.contains(&b)
            && !self.cut.contains(&(a, b))
            && !self.cut.contains(&(b, a))
    }

    fn process(&mut self, from: NodeId, outs: Vec<Output>) {
        self.touched.insert(from);
        for out in outs {
            match out {
                Output::Send { to, request } => {
                    if matches!(request, ElectionRequest::Probe { .. }) {
                        *self.probes.entry(from).or_default() += 1;
                        *self.probes_to.entry((from, to)).or_default() += 1;
                    }
                    let response = if self.link(from, to) && !self.dropped.contains(&(from, to)) {
                        self.touched.insert(to);
                        let (handled, more) = self
                            .nodes
                            .get_mut(&to)
                            .unwrap()
                            .handle_request(self.now, from, &request);
                        self.process(to, more);
                        (!self.dropped.contains(&(to, from))).then_some(handled.response)
                    } else {
                        None
                    };
                    let now = self.now;
                    let more = self.nodes.get_mut(&from).unwrap().handle_response(
                        now,
                        to,
                        &request,
                        response.as_ref(),
                    );
                    self.process(from, more);
                }
                // The disk answers at once here.
                Output::Persist(epoch) => {
                    let now = self.now;
                    let more = self
                        .nodes
                        .get_mut(&from)
                        .unwrap()
                        .handle_persisted(now, epoch);
                    self.process(from, more);
                }
                Output::PublishReach(reach) => {
                    let now = self.now;
                    let peers: Vec<NodeId> = self.nodes.keys().copied().collect();
                    for p in peers {
                        if p != from && self.link(from, p) {
                            self.touched.insert(p);
                            self.nodes.get_mut(&p).unwrap().handle_peer(
                                now,
                                from,
                                true,
                                Some(reach),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let up: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|n| !self.down.contains(n))
            .collect();
        for &id in &up {
            let now = self.now;
            let touched = self.touched.remove(&id);
            let node = self.nodes.get_mut(&id).unwrap();
            // The driver ticks only when the deadline it took after the
            // node's last tick or input is due: a tick before it must
            // have nothing to say (checked in every test, wherever the
            // deadlines are exact).
            let exact = node.deadlines_exact();
            let due = match self.deadlines.get(&id) {
                Some(&due) if !touched => due,
                _ => node.next_deadline(now),
            };
            let outs = node.handle_tick(now);
            assert!(
                !exact || due <= now || outs.is_empty(),
                "node {id} at {now:?}: next deadline {due:?}, yet a tick said {outs:?}"
            );
            self.process(id, outs);
        }
        self.gossip_claims();
        for id in up {
            let due = self.nodes[&id].next_deadline(self.now);
            self.deadlines.insert(id, due);
        }
        self.touched.clear();
        for (&id, e) in &self.nodes {
            if !self.down.contains(&id)
                && e.is_serving(self.now)
                && let Some(l) = e.leader(self.now)
            {
                let entry = self
                    .served
                    .entry((id, l.epoch))
                    .or_insert((self.now, self.now));
                entry.1 = self.now;
            }
        }
    }

    /// Gossip, at every step: each member up and linked reads the claim
    /// of each node up that serves ([`Election::claim`]).
    fn gossip_claims(&mut self) {
        let now = self.now;
        let claims: Vec<(NodeId, Epoch, u64, u64)> = self
            .nodes
            .iter()
            .filter(|(id, _)| !self.down.contains(id))
            .filter_map(|(&id, e)| {
                e.claim(now)
                    .map(|(epoch, mark)| (id, epoch, e.config_hash(), mark))
            })
            .collect();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for to in ids {
            let heard: Vec<_> = claims
                .iter()
                .copied()
                .filter(|(from, ..)| *from != to && self.link(*from, to))
                .collect();
            if self.down.contains(&to) || heard.is_empty() {
                continue;
            }
            self.touched.insert(to);
            let outs = self
                .nodes
                .get_mut(&to)
                .unwrap()
                .handle_leader_claims(now, &heard);
            self.process(to, outs);
        }
    }

    /// Steps (calling `each` after every step) until `id` serves, which
    /// must happen within a second; returns how long it took.
    fn until_serving(&mut self, id: NodeId, mut each: impl FnMut(&mut Net)) -> Duration {
        let start = self.now;
        while !self.serving().contains(&id) {
            self.step();
            each(self);
            assert!(
                self.now < start + Duration::from_secs(2),
                "node {id} never served"
            );
        }
        let took = self.now - start;
        assert!(took < Duration::from_secs(1), "took {took:?}");
        took
    }

    /// Whether `observer` sees `node` eligible now.
    fn eligible(&self, observer: u64, node: u64) -> bool {
        self.nodes[&NodeId(observer)].peer_eligible(self.now, NodeId(node))
    }

    /// Steps for `d`, `node` eligible in each of `observers`' eyes at
    /// every step.
    fn run_eligible(&mut self, d: Duration, node: u64, observers: &[u64]) {
        let end = self.now + d;
        while self.now < end {
            self.step();
            for &o in observers {
                assert!(
                    self.eligible(o, node),
                    "node {node} not eligible for node {o} at {:?}",
                    self.now
                );
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn serving(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, e)| !self.down.contains(id) && e.is_serving(self.now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// No two nodes served at overlapping times, and one node per epoch.
    fn assert_safe(&self) {
        let all: Vec<_> = self.served.iter().collect();
        for (i, ((a, ea), (a0, a1))) in all.iter().enumerate() {
            for ((b, eb), (b0, b1)) in &all[i + 1..] {
                if a == b {
                    continue;
                }
                assert_ne!(ea, eb, "two leaders in epoch {ea}");
                assert!(
                    a1 < b0 || b1 < a0,
                    "{a}@{ea} served {a0:?}..{a1:?} and {b}@{eb} served {b0:?}..{b1:?}"
                );
            }
        }
    }
}

/// A prepare for `epoch` from `from`, with the 3-voter set's hash.
fn prepare(e: &mut Election, now: Duration, from: NodeId, epoch: impl Into<Epoch>) -> Handled {
    let request = ElectionRequest::Prepare {
        epoch: epoch.into(),
        voters: config_hash(&ids(3), &Timing::default()),
    };
    e.handle_request(now, from, &request).0
}

/// The reason of a rejection, if it is one.
fn refusal(h: &Handled) -> Option<RejectReason> {
    match h.response {
        ElectionResponse::Reject { reason, .. } => Some(reason),
        _ => None,
    }
}

/// A durable voter `id` of the 3-voter set, started at 0.
fn voter(id: u64, promised: impl Into<Epoch>) -> Election {
    Election::new(
        NodeId(id),
        &ids(3),
        Timing::default(),
        Duration::ZERO,
        Memory::Durable,
        promised.into(),
        false,
        1,
    )
}

/// A voter `id` without memory (a data directory of kind `memory`, or
/// none) restarting an existing cluster at `now`.
fn forgetful(
    id: u64,
    voters: &[NodeId],
    timing: Timing,
    now: Duration,
    memory: Memory,
) -> Election {
    Election::new(NodeId(id), voters, timing, now, memory, Epoch(0), false, id)
}

#[test]
fn timing_relations_are_validated() {
    assert_eq!(Timing::default().validate(), Ok(()));
    let bad = Timing {
        election_timeout: Duration::from_millis(300),
        ..Timing::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(TimingError::ElectionBeforeLease { .. })
    ));
    let bad = Timing {
        heartbeat: Duration::from_millis(300),
        ..Timing::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(TimingError::HeartbeatTooSlow { .. })
    ));
    let bad = Timing {
        drift: 0.5,
        ..Timing::default()
    };
    assert_eq!(bad.validate(), Err(TimingError::Drift(0.5)));
}

/// V1: the hash covers the voter set (not its order) and the safety
/// timings (lease, drift bound, longest lock TTL), not the liveness ones.
#[test]
fn config_hash_covers_the_voter_set_and_the_safety_timings() {
    let t = Timing::default();
    assert_eq!(
        config_hash(&[NodeId(3), NodeId(1), NodeId(2)], &t),
        config_hash(&ids(3), &t)
    );
    assert_ne!(config_hash(&ids(3), &t), config_hash(&ids(4), &t));
    for other in [
        Timing {
            lease: Duration::from_millis(2000),
            ..t
        },
        Timing { drift: 0.02, ..t },
        Timing {
            lock_ttl_max: Duration::from_secs(60),
            ..t
        },
    ] {
        assert_ne!(config_hash(&ids(3), &t), config_hash(&ids(3), &other));
    }
    let liveness = Timing {
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(900),
        stability_window: Duration::from_secs(9),
        ..t
    };
    assert_eq!(config_hash(&ids(3), &t), config_hash(&ids(3), &liveness));
}

/// Bully rule: on a cold start the lowest id leads, within the start-up
/// wait, the election timeout and a round trip.
#[test]
fn cold_start_elects_the_lowest_id() {
    let mut net = Net::new(5, &ids(3), true);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    for e in net.nodes.values() {
        assert_eq!(e.leader(net.now).map(|l| l.id), Some(NodeId(1)));
    }
    net.assert_safe();
}

/// E5: a leader cut off from every voter stops serving once its lease,
/// from the last majority-acked round, runs out; the rest elect a new
/// leader only after that (E3 blackout), with a higher epoch.
#[test]
fn isolated_leader_stops_before_a_successor_starts() {
    let mut net = Net::new(3, &ids(3), true);
    net.run_for(Duration::from_secs(2));
    let first = net.nodes[&NodeId(1)].leader(net.now).unwrap();
    for other in [NodeId(2), NodeId(3)] {
        net.cut.insert((NodeId(1), other));
    }
    net.run_for(Duration::from_secs(3));
    let second = net.nodes[&NodeId(2)].leader(net.now).unwrap();
    assert_eq!(second.id, NodeId(2));
    assert!(second.epoch > first.epoch);
    assert!(!net.nodes[&NodeId(1)].is_serving(net.now));
    net.assert_safe();
    // Healed: node 1 learns the higher epoch and, being lowest and
    // eligible for the stability window, is handed leadership back.
    net.cut.clear();
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    net.assert_safe();
}

/// E1/E3: a voter refuses a prepare not above its promise, and any
/// prepare during its blackout after acking a leader.
#[test]
fn voter_refuses_stale_epochs_and_promises_in_blackout() {
    let mut net = Net::new(3, &ids(3), true);
    net.run_for(Duration::from_secs(2));
    let epoch = net.nodes[&NodeId(1)].leader(net.now).unwrap().epoch;
    let now = net.now;
    let v = net.nodes.get_mut(&NodeId(3)).unwrap();
    let h = prepare(v, now, NodeId(2), epoch);
    assert_eq!(refusal(&h), Some(RejectReason::StaleEpoch));
    let h = prepare(v, now, NodeId(2), epoch + 1);
    assert_eq!(refusal(&h), Some(RejectReason::Blackout));
    assert_eq!(h.persist, None);
    // Outside the blackout the same prepare is promised, durably.
    let later = now + Timing::default().blackout();
    let h = prepare(v, later, NodeId(2), epoch + 1);
    assert_eq!(h.response, ElectionResponse::Promise { epoch: epoch + 1 });
    assert_eq!(h.persist, Some(epoch + 1));
}

/// V1: a message with another voter-set hash is refused.
#[test]
fn other_voter_set_is_refused() {
    let mut e = voter(1, 0);
    let request = ElectionRequest::Prepare {
        epoch: Epoch(9),
        voters: config_hash(&ids(5), &Timing::default()),
    };
    let (h, _) = e.handle_request(Duration::from_secs(5), NodeId(2), &request);
    assert_eq!(refusal(&h), Some(RejectReason::Config));
    assert_eq!(e.promised(), Epoch(0));
}

/// E7: a voter neither promises nor acks within `L·(1+ρ)` of its start.
#[test]
fn restarted_voter_waits_before_promising() {
    let mut e = voter(2, 4);
    let early = Duration::from_millis(100);
    e.handle_tick(early);
    assert_eq!(
        refusal(&prepare(&mut e, early, NodeId(1), 5)),
        Some(RejectReason::Recovering)
    );
    let heartbeat = ElectionRequest::Heartbeat {
        epoch: Epoch(5),
        round: 0,
        voters: config_hash(&ids(3), &Timing::default()),
        heard: vec![],
    };
    let (h, _) = e.handle_request(early, NodeId(1), &heartbeat);
    assert_eq!(refusal(&h), Some(RejectReason::Recovering));
    let later = Timing::default().blackout() + STEP;
    e.handle_tick(later);
    let h = prepare(&mut e, later, NodeId(1), 5);
    assert_eq!(h.response, ElectionResponse::Promise { epoch: Epoch(5) });
}

/// E7: a voter without durable state copies the highest promise from a
/// majority before it promises anything, so it cannot promise an epoch
/// below one it promised before its restart.
#[test]
fn voter_without_durable_state_copies_the_promise_first() {
    let mut net = Net::new(3, &ids(3), true);
    net.run_for(Duration::from_secs(2));
    let epoch = net.nodes[&NodeId(1)].leader(net.now).unwrap().epoch;
    // Node 3 restarts without a data directory.
    let now = net.now;
    net.nodes.insert(
        NodeId(3),
        forgetful(3, &ids(3), Timing::default(), now, Memory::None),
    );
    for p in ids(3) {
        net.nodes
            .get_mut(&NodeId(3))
            .unwrap()
            .handle_peer(now, p, true, None);
    }
    net.run_for(Duration::from_secs(2));
    let n3 = &net.nodes[&NodeId(3)];
    assert!(n3.recovered());
    assert!(n3.promised() >= epoch, "{} < {epoch}", n3.promised());
    net.assert_safe();
}

/// E6: on resign, the blackout ends at once and the next id takes over
/// without waiting out the lease.
#[test]
fn resign_hands_over_without_waiting_for_the_lease() {
    let mut net = Net::new(3, &ids(3), true);
    net.run_for(Duration::from_secs(2));
    let first = net.nodes[&NodeId(1)].leader(net.now).unwrap();
    let now = net.now;
    let outs = net.nodes.get_mut(&NodeId(1)).unwrap().resign(now);
    net.process(NodeId(1), outs);
    net.down.insert(NodeId(1));
    let start = net.now;
    while net.serving().is_empty() {
        net.step();
        assert!(net.now < start + Duration::from_secs(2), "no successor");
    }
    assert_eq!(net.serving(), vec![NodeId(2)]);
    assert!(
        net.now - start < Timing::default().lease,
        "took {:?}",
        net.now - start
    );
    assert!(net.nodes[&NodeId(2)].leader(net.now).unwrap().epoch > first.epoch);
    net.assert_safe();
}

/// A killed leader is replaced once the voters' blackout and the
/// election timeout have passed: well under a second.
#[test]
fn dead_leader_is_replaced_in_under_a_second() {
    let mut net = Net::new(5, &ids(5), true);
    net.run_for(Duration::from_secs(2));
    net.down.insert(NodeId(1));
    // Gossip would say node 1 is dead after ~1 s; its reach mark goes
    // stale sooner, which is what lets node 2 run.
    net.until_serving(NodeId(2), |_| {});
    assert_eq!(net.serving(), vec![NodeId(2)]);
    net.assert_safe();
}

/// A minority side never has a serving leader.
#[test]
fn minority_never_serves() {
    let mut net = Net::new(5, &ids(5), true);
    net.run_for(Duration::from_secs(2));
    for a in [NodeId(1), NodeId(2)] {
        for b in [NodeId(3), NodeId(4), NodeId(5)] {
            net.cut.insert((a, b));
        }
    }
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.serving(), vec![NodeId(3)]);
    net.assert_safe();
}

/// E4 and E5: a new leader serves nothing until a heartbeat round sent
/// after takeover is acked by a majority; its lease then runs from that
/// round's first send for `L·(1−ρ)/(1+ρ)`, and ends there without more
/// acks.
#[test]
fn lease_starts_with_a_majority_acked_round_after_takeover() {
    let timing = Timing::default();
    let mut e = voter(1, 0);
    for p in [NodeId(2), NodeId(3)] {
        e.handle_peer(Duration::ZERO, p, true, None);
    }
    // Run once the start-up wait and the election timeout are over.
    let t0 = timing.election_timeout + STEP;
    let outs = e.handle_tick(t0);
    // E2: a pre-vote first, nothing promised.
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Persist(_))),
        "{outs:?}"
    );
    let pre_vote = pre_vote_to(&outs, 2);
    let ElectionRequest::PreVote { epoch: asked, .. } = pre_vote else {
        unreachable!()
    };
    let outs = e.handle_response(
        t0,
        NodeId(2),
        &pre_vote,
        Some(&ElectionResponse::WouldPromise { epoch: asked }),
    );
    let Some(&Output::Persist(own)) = outs.iter().find(|o| matches!(o, Output::Persist(_))) else {
        panic!("a durable promise to itself first: {outs:?}")
    };
    assert_eq!(own, asked);
    assert!(
        !outs.iter().any(|o| matches!(
            o,
            Output::Send {
                request: ElectionRequest::Prepare { .. },
                ..
            }
        )),
        "asked before its own promise was durable (E1)"
    );
    let outs = e.handle_persisted(t0, own);
    let prepare = outs
        .iter()
        .find_map(|o| match o {
            Output::Send {
                to,
                request: request @ ElectionRequest::Prepare { .. },
            } if *to == NodeId(2) => Some(request.clone()),
            _ => None,
        })
        .expect("a prepare to node 2");
    let ElectionRequest::Prepare { epoch, .. } = prepare else {
        panic!("{prepare:?}")
    };
    let t1 = t0 + STEP;
    let outs = e.handle_response(
        t1,
        NodeId(2),
        &prepare,
        Some(&ElectionResponse::Promise { epoch }),
    );
    // Elected: the first round left at takeover, but nothing is served.
    let round = outs
        .iter()
        .find_map(|o| match o {
            Output::Send {
                request: r @ ElectionRequest::Heartbeat { .. },
                ..
            } => Some(r.clone()),
            _ => None,
        })
        .expect("a heartbeat round at takeover");
    assert!(!e.is_serving(t1));
    let ElectionRequest::Heartbeat { round: r, .. } = round else {
        unreachable!()
    };
    let t2 = t1 + STEP;
    e.handle_response(
        t2,
        NodeId(3),
        &round,
        Some(&ElectionResponse::Ack { epoch, round: r }),
    );
    assert!(e.is_serving(t2));
    assert_eq!(e.lease_until(), Some(t1 + timing.lease_trusted()));
    // Without further acks the lease ends exactly there.
    assert!(e.is_serving(t1 + timing.lease_trusted() - Duration::from_millis(1)));
    assert!(!e.is_serving(t1 + timing.lease_trusted()));
}

/// E7, finding 4: a voter without memory (no data directory) cannot tell
/// a new cluster from one that restarted while holders still believe
/// their leases, so a lone one forms the cluster only after the longest
/// lock TTL (and epochs continue above any remembered); started as a new
/// cluster (bootstrap) it does not wait.
#[test]
fn lone_voter_without_memory_waits_out_the_longest_ttl_unless_bootstrapped() {
    let timing = Timing {
        lock_ttl_max: Duration::from_secs(3),
        ..Timing::default()
    };
    let mut net = Net::with_timing(1, &ids(1), false, timing);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.serving(), vec![NodeId(1)], "bootstrapped: at once");

    for gossiped in [None, Some(7)] {
        let mut net = Net::with_timing(1, &ids(1), false, timing);
        let mut e = forgetful(1, &ids(1), timing, Duration::ZERO, Memory::None);
        if let Some(epoch) = gossiped {
            e.handle_peer_epoch(Epoch(epoch));
        }
        net.nodes.insert(NodeId(1), e);
        net.run_for(Duration::from_secs(3));
        assert_eq!(
            net.serving(),
            Vec::<NodeId>::new(),
            "a 3 s lease may still run ({gossiped:?})"
        );
        net.run_for(Duration::from_secs(2));
        assert_eq!(net.serving(), vec![NodeId(1)]);
        assert!(
            net.nodes[&NodeId(1)].max_epoch() > Epoch(gossiped.unwrap_or(0)),
            "epochs continue above the remembered one"
        );
    }
}

/// After a full restart without data dirs epochs may start over (E7): a
/// node that remembers a leader of a higher epoch still follows the
/// leader there is once that record's lease has passed.
#[test]
fn stale_record_of_a_higher_epoch_does_not_hide_the_leader() {
    let mut e = forgetful(4, &ids(3), Timing::default(), Duration::ZERO, Memory::None);
    let hash = config_hash(&ids(3), &Timing::default());
    let beat = |epoch| ElectionRequest::Heartbeat {
        epoch,
        round: 0,
        voters: hash,
        heard: vec![],
    };
    let t = Duration::from_secs(1);
    e.handle_request(t, NodeId(2), &beat(Epoch(15)));
    assert_eq!(e.leader(t).map(|l| l.epoch), Some(Epoch(15)));
    // Within that lease a lower epoch is not taken for the leader...
    e.handle_request(t + STEP, NodeId(1), &beat(Epoch(12)));
    assert_eq!(e.leader(t + STEP).map(|l| l.id), Some(NodeId(2)));
    // ...after it, it is.
    let later = t + Timing::default().lease + STEP;
    e.handle_request(later, NodeId(1), &beat(Epoch(12)));
    assert_eq!(
        e.leader(later),
        Some(Leadership {
            id: NodeId(1),
            epoch: Epoch(12)
        })
    );
}

/// E7 in a new cluster: voters whose data directories are all blank, or
/// that were started as a new cluster (bootstrap), form it at once, even
/// though the first to recover may promise itself before the others have
/// recovered; voters without memory restarting together (no bootstrap, a
/// directory-less voter among them) wait out the longest lock TTL.
#[test]
fn a_new_cluster_forms_at_once_a_restarted_one_without_memory_waits() {
    let timing = Timing {
        lock_ttl_max: Duration::from_secs(3600),
        ..Timing::default()
    };
    for n in [3, 5] {
        for (memory, bootstrap, forms) in [
            (Memory::Blank, false, true),
            (Memory::None, true, true),
            (Memory::None, false, false),
        ] {
            let mut net = Net::with_timing(n, &ids(n), false, timing);
            // Staggered starts: the voters' views of "the youngest start"
            // differ, so one recovers (and runs, promising itself) first.
            for id in ids(n) {
                let start = Duration::from_millis(37 * id.0);
                let e = Election::new(
                    id,
                    &ids(n),
                    timing,
                    start,
                    memory,
                    Epoch(0),
                    bootstrap,
                    id.0,
                );
                net.nodes.insert(id, e);
            }
            net.run_for(Duration::from_secs(5));
            let leaders = usize::from(forms);
            assert_eq!(
                net.serving().len(),
                leaders,
                "{n} voters, {memory:?}, bootstrap {bootstrap}"
            );
        }
    }
}

/// Finding 3 (E7): a voter whose data directory is blank (a fresh disk, a
/// mistyped path) among healthy voters copies their promise before it
/// promises anything, instead of counting as durable with nothing
/// promised; and a durable voter whose directory went back (a restored
/// snapshot) takes the healthy voters' higher promise.
#[test]
fn finding_3_a_voter_on_a_blank_or_restored_directory_copies_from_the_healthy() {
    for memory in [Memory::Blank, Memory::Durable] {
        let mut net = Net::new(3, &ids(3), true);
        net.run_for(Duration::from_secs(2));
        let epoch = net.nodes[&NodeId(1)].leader(net.now).unwrap().epoch;
        // The restored snapshot predates the cluster's epoch.
        let promised = epoch - 1;
        let now = net.now;
        let e = Election::new(
            NodeId(3),
            &ids(3),
            Timing::default(),
            now,
            memory,
            promised,
            false,
            3,
        );
        net.nodes.insert(NodeId(3), e);
        for p in ids(3) {
            net.nodes
                .get_mut(&NodeId(3))
                .unwrap()
                .handle_peer(now, p, true, None);
        }
        net.run_for(Duration::from_secs(2));
        let v = &net.nodes[&NodeId(3)];
        assert!(v.recovered(), "{memory:?}");
        assert!(
            v.promised() >= epoch,
            "{memory:?}: promise {} below the cluster's {epoch}",
            v.promised()
        );
    }
}

/// K1: epochs at or above 2^32 cannot form tokens. They are refused in
/// a prepare or a heartbeat, never raise a node's view of the epoch, and
/// a node at the last epoch does not run.
#[test]
fn k1_epochs_beyond_the_token_range_are_refused() {
    let mut v = voter(2, 5);
    v.handle_tick(Duration::from_secs(1));
    let promised = v.promised();
    let now = Duration::from_secs(2);
    let h = prepare(&mut v, now, NodeId(1), Epoch::MAX + 1);
    assert_eq!(refusal(&h), Some(RejectReason::EpochSpent));
    assert_eq!(v.promised(), promised);
    assert!(v.max_epoch() <= Epoch::MAX, "a spent epoch was noted");
    let beat = ElectionRequest::Heartbeat {
        epoch: Epoch::MAX + 7,
        round: 0,
        voters: config_hash(&ids(3), &Timing::default()),
        heard: vec![],
    };
    let (h, _) = v.handle_request(now, NodeId(1), &beat);
    assert_eq!(refusal(&h), Some(RejectReason::EpochSpent));
    assert_eq!(v.promised(), promised);
    // A refusal carrying a spent epoch does not push a candidate past
    // the last usable epoch either.
    let mut c = voter(1, Epoch::MAX);
    c.handle_tick(Duration::from_secs(1));
    let outs = c.handle_tick(Duration::from_secs(5));
    assert!(
        !outs.iter().any(|o| matches!(
            o,
            Output::Send {
                request: ElectionRequest::Prepare { .. },
                ..
            }
        )),
        "ran for an epoch past 2^32 - 1: {outs:?}"
    );
}

/// E7: a voter still recovering (no durable state, its copy from the
/// others not yet taken) does not run: its own lock table, which a leader
/// takes over with the promised ones, is not to be trusted yet (before,
/// it could win with the others' promises and merge a table of an earlier
/// life into the takeover). The leader's own ack likewise counts only
/// from a recovered voter.
#[test]
fn a_recovering_voter_does_not_run() {
    let t = Timing::default();
    let mut e = forgetful(1, &ids(3), t, Duration::ZERO, Memory::None);
    for p in [2, 3] {
        e.handle_peer(Duration::ZERO, NodeId(p), true, None);
    }
    // No Sync answers ever arrive, so it stays recovering.
    let mut now = Duration::ZERO;
    while now < Duration::from_secs(5) {
        now += STEP;
        for o in e.handle_tick(now) {
            assert!(
                !matches!(
                    o,
                    Output::Send {
                        request: ElectionRequest::Prepare { .. },
                        ..
                    }
                ),
                "ran while recovering at {now:?}"
            );
        }
    }
    assert!(!e.recovered());
}

/// E1: a replication batch above a voter's promise raises the promise
/// (to be made durable before the ack), so no lower epoch is promised
/// afterwards; one below it, or from another configuration, is refused.
#[test]
fn e1_a_replication_batch_above_the_promise_raises_it() {
    let mut v = voter(2, 3);
    v.handle_tick(Duration::from_secs(1));
    let hash = config_hash(&ids(3), &Timing::default());
    assert_eq!(v.handle_replicate(Epoch(5), hash), Ok(Some(Epoch(5))));
    assert_eq!(v.promised(), Epoch(5));
    assert_eq!(v.handle_replicate(Epoch(5), hash), Ok(None));
    assert_eq!(
        v.handle_replicate(Epoch(4), hash),
        Err((RejectReason::StaleEpoch, Epoch(5)))
    );
    assert_eq!(
        v.handle_replicate(Epoch(6), hash ^ 1),
        Err((RejectReason::Config, Epoch(5)))
    );
    let h = prepare(&mut v, Duration::from_secs(2), NodeId(1), 4);
    assert_eq!(refusal(&h), Some(RejectReason::StaleEpoch));
    let mut fresh = forgetful(3, &ids(3), Timing::default(), Duration::ZERO, Memory::None);
    assert_eq!(
        fresh.handle_replicate(Epoch(5), hash).map_err(|(r, _)| r),
        Err(RejectReason::Recovering),
        "a recovering voter merges nothing (E7)"
    );
}

/// E6: a voter that acked a leader which then resigned ends its blackout
/// and refuses that epoch from then on: a late heartbeat of it is not
/// acked (it would start the blackout again and delay the successor).
#[test]
fn e6_a_resigned_epoch_is_refused_and_its_blackout_ends() {
    let mut v = voter(2, 0);
    let t = Duration::from_secs(1);
    v.handle_tick(t);
    let hash = config_hash(&ids(3), &Timing::default());
    let beat = ElectionRequest::Heartbeat {
        epoch: Epoch(5),
        round: 0,
        voters: hash,
        heard: vec![],
    };
    let (h, _) = v.handle_request(t, NodeId(1), &beat);
    assert!(matches!(h.response, ElectionResponse::Ack { .. }));
    let resign = ElectionRequest::Resign {
        epoch: Epoch(5),
        voters: hash,
    };
    v.handle_request(t + STEP, NodeId(1), &resign);
    let (h, _) = v.handle_request(t + STEP * 2, NodeId(1), &beat);
    assert_eq!(
        refusal(&h),
        Some(RejectReason::StaleEpoch),
        "a late heartbeat"
    );
    let h = prepare(&mut v, t + STEP * 3, NodeId(3), 6);
    assert_eq!(
        h.response,
        ElectionResponse::Promise { epoch: Epoch(6) },
        "no blackout"
    );
}

/// K1 at recovery: a promise above 2^32 − 1 in a recovery answer (a buggy
/// peer) does not carry the recovering voter past the last usable epoch.
#[test]
fn k1_a_spent_epoch_in_a_recovery_answer_is_ignored() {
    let t = Timing::default();
    let mut e = forgetful(3, &ids(3), t, Duration::ZERO, Memory::None);
    let sync = ElectionRequest::Sync {
        voters: e.config_hash(),
        fresh: true,
    };
    for (from, promised) in [(1, Epoch::MAX + 9), (2, Epoch(7))] {
        e.handle_response(
            Duration::from_millis(10),
            NodeId(from),
            &sync,
            Some(&ElectionResponse::State {
                promised,
                recovering: false,
                up_ms: 5000,
                memory: Memory::Durable,
            }),
        );
    }
    e.handle_tick(t.old_answers_expire() + STEP);
    assert!(e.recovered());
    // 7 copied (8 if it then ran for election itself).
    assert!(
        (Epoch(7)..=Epoch(8)).contains(&e.promised()),
        "{}",
        e.promised()
    );
}

/// E7: blank data directories all round are a new cluster only if
/// nothing remembers an earlier life; a promise heard, or an epoch a
/// member gossips, makes the voters wait out the longest lock TTL (three
/// of five voters wiped while the durable two are down, say).
#[test]
fn blank_directories_with_signs_of_an_earlier_life_wait_out_the_ttl() {
    let timing = Timing {
        lock_ttl_max: Duration::from_secs(3600),
        ..Timing::default()
    };
    for gossiped in [0, 4] {
        let mut net = Net::with_timing(3, &ids(3), false, timing);
        for id in ids(3) {
            let mut e = Election::new(
                id,
                &ids(3),
                timing,
                Duration::ZERO,
                Memory::Blank,
                Epoch(0),
                false,
                id.0,
            );
            e.handle_peer_epoch(Epoch(gossiped));
            net.nodes.insert(id, e);
        }
        net.run_for(Duration::from_secs(5));
        let leaders = usize::from(gossiped == 0);
        assert_eq!(net.serving().len(), leaders, "gossiped epoch {gossiped}");
    }
}

/// E7, "Locks" 8 (review 6): a recovering voter copies only from answers
/// to fresh syncs, sent once any prune round an ack of its earlier life
/// counted in was decided. An answer given before could predate it
/// (the source did not hold the round's tombstones yet, while the other
/// source had forgotten them): the copy would hold the older grant.
#[test]
fn e7_a_copy_is_taken_only_from_answers_to_fresh_syncs() {
    let t = Timing::default();
    let mut e = forgetful(3, &ids(3), t, Duration::ZERO, Memory::None);
    let state = ElectionResponse::State {
        promised: Epoch(4),
        recovering: false,
        up_ms: 5000,
        memory: Memory::Durable,
    };
    let syncs = |out: &[Output]| -> Vec<ElectionRequest> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send {
                    request: r @ ElectionRequest::Sync { .. },
                    ..
                } => Some(r.clone()),
                _ => None,
            })
            .collect()
    };
    let early = syncs(&e.handle_tick(STEP));
    assert!(!early.is_empty());
    assert!(
        early
            .iter()
            .all(|r| matches!(r, ElectionRequest::Sync { fresh: false, .. }))
    );
    assert!(!e.keeps_sync_copy(&early[0]));
    for from in [1, 2] {
        e.handle_response(STEP * 2, NodeId(from), &early[0], Some(&state));
    }
    let ready = t.old_answers_expire() + STEP;
    let fresh = syncs(&e.handle_tick(ready));
    assert!(!e.recovered(), "the early answers are not copied from");
    assert!(
        fresh
            .iter()
            .all(|r| matches!(r, ElectionRequest::Sync { fresh: true, .. }))
    );
    assert!(e.keeps_sync_copy(&fresh[0]));
    e.handle_response(ready + STEP, NodeId(1), &fresh[0], Some(&state));
    e.handle_tick(ready + STEP * 2);
    assert!(!e.recovered(), "one fresh answer of the two it needs");
    e.handle_response(ready + STEP * 3, NodeId(2), &fresh[0], Some(&state));
    let out = e.handle_tick(ready + STEP * 4);
    assert!(e.recovered());
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Recovered(Recovery::Copied(from)) if from == &vec![NodeId(1), NodeId(2)]
        )),
        "{out:?}"
    );
    assert!(
        !e.keeps_sync_copy(&fresh[0]),
        "recovered: nothing more is kept"
    );
}

/// E7 (review 7): a voter that heard enough healthy answers early, one
/// of whose senders went down before answering a fresh sync, does not
/// wait for good: once the fresh syncs had their time, only fresh
/// answers count, and a durable voter resumes its own state.
#[test]
fn e7_early_answers_of_a_voter_gone_since_do_not_hold_the_recovery_for_good() {
    let t = Timing::default();
    let mut e = voter(3, 2);
    let state = ElectionResponse::State {
        promised: Epoch(4),
        recovering: false,
        up_ms: 5000,
        memory: Memory::Durable,
    };
    let early = ElectionRequest::Sync {
        voters: e.config_hash(),
        fresh: false,
    };
    let fresh = ElectionRequest::Sync {
        voters: e.config_hash(),
        fresh: true,
    };
    e.handle_tick(STEP);
    for from in [1, 2] {
        e.handle_response(STEP * 2, NodeId(from), &early, Some(&state));
    }
    let ready = t.old_answers_expire() + STEP;
    e.handle_tick(ready);
    e.handle_response(ready + STEP, NodeId(2), &fresh, Some(&state));
    e.handle_tick(t.old_answers_expire() * 2 - STEP);
    assert!(!e.recovered(), "still waiting for voter 1's fresh answer");
    let out = e.handle_tick(t.old_answers_expire() * 2 + STEP);
    assert!(e.recovered(), "resumed once only fresh answers count");
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Recovered(Recovery::Own))),
        "{out:?}"
    );
}

/// Scale: the leader's rounds go to the voters alone, however many
/// members there are, and the members that are not voters follow the
/// leader that gossip shows them, through a failover too.
#[test]
fn heartbeats_go_to_voters_only_and_the_others_follow_the_gossiped_claim() {
    let mut net = Net::new(9, &ids(3), true);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    // The leader's next rounds, whatever it sends them to.
    let mut sent_to = BTreeSet::new();
    for _ in 0..30 {
        net.now += STEP;
        let now = net.now;
        let outs = net.nodes.get_mut(&NodeId(1)).unwrap().handle_tick(now);
        for out in &outs {
            if let Output::Send {
                to,
                request: ElectionRequest::Heartbeat { .. },
            } = out
            {
                sent_to.insert(*to);
            }
        }
        net.process(NodeId(1), outs);
    }
    assert_eq!(sent_to, BTreeSet::from([NodeId(2), NodeId(3)]));
    net.run_for(Duration::from_millis(100));
    for id in ids(9) {
        assert_eq!(
            net.nodes[&id].leader(net.now).map(|l| l.id),
            Some(NodeId(1)),
            "node {id} does not follow the leader"
        );
    }
    net.down.insert(NodeId(1));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.serving(), vec![NodeId(2)]);
    for id in (2..=9).map(NodeId) {
        assert_eq!(
            net.nodes[&id].leader(net.now).map(|l| l.id),
            Some(NodeId(2)),
            "node {id} does not follow the new leader"
        );
    }
    net.assert_safe();
}

/// A gossiped claim stands in for the heartbeats a member that is not a
/// voter no longer gets, and for nothing else: voters ignore it (they
/// follow heartbeats, and a claim must not hold back their candidacy),
/// as does everyone for another configuration (V1), a resigned epoch
/// (E6) or an epoch that cannot form tokens (K1). It raises no promise,
/// and only a claim whose mark changed is news of its leader.
#[test]
fn a_gossiped_claim_counts_only_for_members_that_are_not_voters() {
    let voters = ids(3);
    let timing = Timing::default();
    let now = Duration::from_secs(1);
    let hash = config_hash(&voters, &timing);
    let mut member = forgetful(4, &voters, timing, Duration::ZERO, Memory::None);
    let mut voter = voter(2, 0);
    for (epoch, claim_hash, why) in [
        (Epoch(3), hash ^ 1, "another configuration"),
        (
            Epoch(u64::from(u32::MAX) + 1),
            hash,
            "an epoch past the last",
        ),
    ] {
        let outs = member.handle_leader_claims(now, &[(NodeId(1), epoch, claim_hash, 1)]);
        assert!(outs.is_empty(), "{why}");
        assert_eq!(member.leader(now), None, "{why} was followed");
    }
    let claim = |mark| [(NodeId(1), Epoch(3), hash, mark)];
    assert!(voter.handle_leader_claims(now, &claim(1)).is_empty());
    assert_eq!(voter.leader(now), None, "a voter followed a claim");
    assert_eq!(voter.promised(), Epoch(0));

    let outs = member.handle_leader_claims(now, &claim(1));
    let leads = Some(Leadership {
        id: NodeId(1),
        epoch: Epoch(3),
    });
    assert!(outs.contains(&Output::LeaderChanged(leads)));
    assert_eq!(member.leader(now), leads);
    assert_eq!(member.promised(), Epoch(0));
    assert_eq!(member.max_epoch(), Epoch(3));
    // Read again unchanged, the claim is no news: the record lapses a
    // lease after the last change (a leader whose driver stopped while
    // its gossip goes on).
    let later = now + timing.lease - STEP;
    member.handle_leader_claims(later, &claim(1));
    assert_eq!(member.leader(now + timing.lease), None);
    // A changed mark renews it.
    member.handle_leader_claims(later, &claim(2));
    assert_eq!(member.leader(now + timing.lease), leads);
    // E6: once the leader resigned, its late claims are ignored.
    let resign = ElectionRequest::Resign {
        epoch: Epoch(3),
        voters: hash,
    };
    let at = later + timing.lease;
    member.handle_request(at, NodeId(1), &resign);
    member.handle_leader_claims(at, &claim(3));
    assert_eq!(member.leader(at), None, "a resigned epoch was followed");
}

/// A leader whose driver stopped while its gossip goes on keeps the
/// last claim it made, unchanged: the members that are not voters stop
/// following it a lease later, and the lowest of them, next in line,
/// takes over (E2) as it would with heartbeats.
#[test]
fn a_claim_that_stops_changing_is_not_followed() {
    let mut net = Net::new(5, &[NodeId(3), NodeId(4), NodeId(5)], true);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    let now = net.now;
    let (epoch, mark) = net.nodes[&NodeId(1)].claim(now).unwrap();
    let hash = net.nodes[&NodeId(1)].config_hash();
    // Node 1 stops: no more rounds, but node 2 reads its last claim at
    // every step.
    net.down.insert(NodeId(1));
    net.until_serving(NodeId(2), |net| {
        let now = net.now;
        let outs = net
            .nodes
            .get_mut(&NodeId(2))
            .unwrap()
            .handle_leader_claims(now, &[(NodeId(1), epoch, hash, mark)]);
        net.process(NodeId(2), outs);
    });
    net.assert_safe();
}

/// The claim's mark moves with every round the leader sends, acked or
/// not yet: while voters' acks are slow (a stalled voter acking late)
/// the lease still holds, and members must keep hearing of the leader.
#[test]
fn a_serving_leaders_claim_changes_every_round_whatever_the_acks() {
    let mut net = Net::new(3, &ids(3), true);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    // The voters stop answering; the lease runs on for a while.
    net.down.insert(NodeId(2));
    net.down.insert(NodeId(3));
    let mut marks = BTreeSet::new();
    for _ in 0..25 {
        net.step();
        if let Some((_, mark)) = net.nodes[&NodeId(1)].claim(net.now) {
            marks.insert(mark);
        }
    }
    // 250 ms within the lease: a mark per 100 ms round.
    assert!(marks.len() >= 3, "marks {marks:?}");
}

/// E2's marks at half the cost: while a leader serves, each node that
/// keeps its mark fresh (the lowest live ids) probes half the other
/// voters each heartbeat, in turn, and its mark stays fresh throughout;
/// with no leader it probes every voter each heartbeat.
#[test]
fn while_a_leader_serves_marks_stay_fresh_on_half_the_probes() {
    let mut net = Net::new(5, &ids(5), false);
    // No leader yet: every voter each heartbeat.
    net.run_for(Duration::from_millis(300));
    assert!(net.serving().is_empty());
    assert_eq!(net.probes.get(&NodeId(2)), Some(&12));
    net.run_for(Duration::from_millis(2700));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    let before = net.probes.clone();
    let second = Duration::from_secs(1);
    // The next in line stays eligible in every other node's eyes.
    net.run_eligible(second, 2, &[3, 4, 5]);
    let sent = |net: &Net, id: u64| {
        let count = |m: &BTreeMap<NodeId, u64>| m.get(&NodeId(id)).copied().unwrap_or(0);
        count(&net.probes) - count(&before)
    };
    // Ten heartbeats, two of the four other voters each in turn, less
    // the leader (heard through its heartbeats): three every two.
    let each: Vec<u64> = (1..=5).map(|id| sent(&net, id)).collect();
    assert_eq!(each, vec![0, 15, 15, 0, 0]);
    // The leader gone, the next in line takes over as fast as ever.
    net.down.insert(NodeId(1));
    net.until_serving(NodeId(2), |_| {});
    net.assert_safe();
}

/// With three voters, while a leader serves, a prober probes the other
/// follower every other heartbeat (the leader, heard through its
/// heartbeats, answers every one), and the next in line stays eligible
/// throughout: while the leader serves, and once it is gone until the
/// next in line serves, as fast as ever.
#[test]
fn with_three_voters_a_prober_probes_the_other_follower_every_other_heartbeat() {
    let mut net = Net::new(3, &ids(3), false);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    let before = net.probes.get(&NodeId(2)).copied().unwrap_or(0);
    net.run_eligible(Duration::from_secs(1), 2, &[3]);
    assert_eq!(net.probes[&NodeId(2)] - before, 5);
    net.down.insert(NodeId(1));
    net.until_serving(NodeId(2), |net| {
        assert!(
            net.eligible(3, 2),
            "node 2 not eligible at {:?} after the leader went down",
            net.now
        );
    });
    net.assert_safe();
}

/// A voter counts the leader toward its reach mark through heartbeats
/// that name it (the leader had its ack: a round trip), never through a
/// heartbeat alone. Five voters, node 2 reaching node 3 and the leader
/// only: its mark needs the leader. While what node 2 sends node 1 is
/// lost, node 1's heartbeats still arrive but do not name it, and node
/// 2 is not eligible; once its acks arrive again, it is.
#[test]
fn a_voter_counts_the_leader_only_through_heartbeats_that_name_it() {
    let mut net = Net::new(5, &ids(5), false);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    for other in [4, 5] {
        net.cut.insert((NodeId(2), NodeId(other)));
    }
    net.dropped.insert((NodeId(2), NodeId(1)));
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    assert!(
        net.nodes[&NodeId(2)].leader(net.now).is_some(),
        "heartbeats arrive"
    );
    assert!(!net.eligible(3, 2));
    net.dropped.clear();
    let probes = |net: &Net, to: u64| {
        net.probes_to
            .get(&(NodeId(2), NodeId(to)))
            .copied()
            .unwrap_or(0)
    };
    net.run_for(Duration::from_millis(500));
    let (to_leader, to_3) = (probes(&net, 1), probes(&net, 3));
    net.run_eligible(Duration::from_millis(500), 2, &[3]);
    // Named again, node 2 probes node 3 all along, the leader never.
    assert_eq!(probes(&net, 1), to_leader);
    assert!(probes(&net, 3) > to_3);
}

/// A voter whose acks the leader does not get (so its heartbeats do not
/// name it) probes as it did before heartbeats could answer for the
/// leader: with three voters, both others every heartbeat, so its count
/// does not rest on one answer every other heartbeat.
#[test]
fn a_voter_the_heartbeats_do_not_name_probes_every_other_voter_each_heartbeat() {
    let mut net = Net::new(3, &ids(3), false);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    net.dropped.insert((NodeId(2), NodeId(1)));
    net.run_for(Duration::from_millis(500));
    let to = |net: &Net, to: u64| {
        net.probes_to
            .get(&(NodeId(2), NodeId(to)))
            .copied()
            .unwrap_or(0)
    };
    let (to_leader, to_3) = (to(&net, 1), to(&net, 3));
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.serving(), vec![NodeId(1)]);
    assert_eq!(to(&net, 3) - to_3, 10);
    assert_eq!(to(&net, 1) - to_leader, 10);
}

/// The pre-vote among `outs` sent to node `to`.
fn pre_vote_to(outs: &[Output], to: u64) -> ElectionRequest {
    outs.iter()
        .find_map(|o| match o {
            Output::Send {
                to: n,
                request: request @ ElectionRequest::PreVote { .. },
            } if *n == NodeId(to) => Some(request.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no pre-vote to node {to}: {outs:?}"))
}

/// The epochs node `id` served in, in order.
fn epochs_served(net: &Net, id: u64) -> Vec<Epoch> {
    net.served
        .keys()
        .filter(|(n, _)| *n == NodeId(id))
        .map(|(_, e)| *e)
        .collect()
}

/// Goal (E2, pre-vote): a voter stopped past the lease and the election
/// timeout (SIGSTOP) wakes with every reach mark stale and no leader in
/// sight. It must not depose the leader the others still follow: it asks
/// first whether a majority would promise, and the voters in the
/// leader's blackout, and the serving leader itself, say no. (Before,
/// it promised itself the next epoch, refused the leader's heartbeats
/// with it, and the leader stepped down: a term lost for nothing.)
#[test]
fn a_voter_waking_from_a_pause_does_not_depose_a_serving_leader() {
    for n in [3, 5] {
        let mut net = Net::new(n, &ids(n), true);
        net.run_for(Duration::from_secs(3));
        assert_eq!(net.serving(), vec![NodeId(1)]);
        let before = epochs_served(&net, 1);
        net.down.insert(NodeId(n));
        net.run_for(Duration::from_millis(3_750));
        net.down.remove(&NodeId(n));
        // Its timers fire before it reads what waits in its socket.
        let now = net.now;
        let outs = net.nodes.get_mut(&NodeId(n)).unwrap().handle_tick(now);
        net.process(NodeId(n), outs);
        net.run_for(Duration::from_secs(3));
        assert_eq!(net.serving(), vec![NodeId(1)], "{n} voters");
        assert_eq!(epochs_served(&net, 1), before, "{n} voters: a new term");
        assert!(
            net.nodes[&NodeId(n)].leader(net.now).is_some(),
            "{n} voters"
        );
        net.assert_safe();
    }
}

/// Goal (E2, pre-vote): a voter cut off from everyone runs attempt after
/// attempt; when the cut heals it must not depose the leader with the
/// epochs it tried (it promised itself none of them, as no majority
/// would have promised).
#[test]
fn a_voter_back_from_a_partition_does_not_depose_a_serving_leader() {
    for n in [3, 5] {
        let mut net = Net::new(n, &ids(n), true);
        net.run_for(Duration::from_secs(3));
        assert_eq!(net.serving(), vec![NodeId(1)]);
        let before = epochs_served(&net, 1);
        let promised = net.nodes[&NodeId(n)].promised();
        for other in ids(n - 1) {
            net.cut.insert((NodeId(n), other));
        }
        net.run_for(Duration::from_secs(5));
        assert_eq!(net.nodes[&NodeId(n)].promised(), promised, "{n} voters");
        net.cut.clear();
        net.run_for(Duration::from_secs(3));
        assert_eq!(net.serving(), vec![NodeId(1)], "{n} voters");
        assert_eq!(epochs_served(&net, 1), before, "{n} voters: a new term");
        net.assert_safe();
    }
}

/// Goal (E2, pre-vote): a pre-vote's answers count only while no leader
/// has been heard since it went out. A candidate that hears a leader's
/// heartbeat meanwhile does not run on answers that come after (some may
/// be left over from an earlier attempt at the same epoch): running,
/// it would raise promises outside the leader's blackout and depose it.
#[test]
fn a_pre_vote_gives_way_to_a_leader_heard_meanwhile() {
    let timing = Timing::default();
    // Node 1 promised epoch 1 (to node 2, which leads it) and lost sight
    // of it; it asks about epoch 2.
    let mut e = voter(1, 1);
    for p in [NodeId(2), NodeId(3)] {
        e.handle_peer(Duration::ZERO, p, true, None);
    }
    let t0 = timing.election_timeout + STEP;
    let outs = e.handle_tick(t0);
    let pre_vote = pre_vote_to(&outs, 3);
    let ElectionRequest::PreVote { epoch, voters } = pre_vote else {
        unreachable!()
    };
    assert_eq!(epoch, Epoch(2));
    // Node 2's heartbeat of epoch 1 arrives: it leads still.
    let heartbeat = ElectionRequest::Heartbeat {
        epoch: Epoch(1),
        round: 0,
        voters,
        heard: vec![NodeId(1)],
    };
    let (handled, _) = e.handle_request(t0 + STEP, NodeId(2), &heartbeat);
    assert!(matches!(handled.response, ElectionResponse::Ack { .. }));
    let outs = e.handle_response(
        t0 + STEP * 2,
        NodeId(3),
        &pre_vote,
        Some(&ElectionResponse::WouldPromise { epoch }),
    );
    let ran = outs.iter().any(|o| {
        matches!(
            o,
            Output::Persist(_)
                | Output::ElectionStarted { .. }
                | Output::Send {
                    request: ElectionRequest::Prepare { .. },
                    ..
                }
        )
    });
    assert!(!ran, "ran on a pre-vote after hearing a leader: {outs:?}");
    assert_eq!(e.promised(), Epoch(1));
}
