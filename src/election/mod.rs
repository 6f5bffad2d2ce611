//! Leader election, sans-io: the lowest live eligible id leads (bully rule,
//! for liveness), made safe by epochs, majority promises and a leader lease
//! (DESIGN.md rules E1–E8, V1; PROTOCOL.md lists each with its test).
//!
//! [`Election`] never reads a clock, sleeps or sends. The driver feeds it
//! `now` (time since an arbitrary origin on a clock that counts suspend,
//! rule T1), requests from peers, the answers to what it asked, gossip
//! observations and periodic ticks; it returns what to send, what to
//! persist before answering, and leadership changes.
//!
//! Summary of the protocol (see PROTOCOL.md for the rules verbatim):
//! - A candidate sends `Prepare(e)` with `e` above every epoch it knows. A
//!   voter promises `e` only above its promise, outside its blackout, and
//!   once its start-up wait (and, without durable state, its copy of the
//!   promise from a majority) is over. A majority of promises elects.
//! - The leader sends a heartbeat round to every voter each heartbeat
//!   interval (the other members learn it from its gossiped claim); a
//!   round acked by a majority of voters extends the lease to
//!   its first send time plus `L·(1−ρ)/(1+ρ)`. A voter that acks starts a
//!   blackout of `L·(1+ρ)` in which it promises no one else.
//! - The leader serves (is leader for its users) only while its lease,
//!   from a round sent after takeover, is valid.
//!
//! Owns: every election rule (E1–E8, V1) and what a voter may accept.
//! Must not know how messages travel, how promises reach the disk, or
//! what the leader replicates (locks are merged by the driver once this
//! core says a batch may be).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, NodeId};

/// Election timing, with the drift bound `ρ`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// The leader lease `L`.
    pub lease: Duration,
    /// How long without a valid leader before a node runs.
    pub election_timeout: Duration,
    /// Bound on the drift rate of monotonic clocks (`ρ`), e.g. 0.01.
    pub drift: f64,
    /// How long a returning lower id must stay eligible before the
    /// incumbent hands over to it.
    pub stability_window: Duration,
    /// The longest lock TTL granted. After a full restart without data
    /// directories, voters wait this times `(1+ρ)`, plus `L`, before they
    /// form a cluster anew, so every lease granted before has ended (E7).
    pub lock_ttl_max: Duration,
}

impl Default for Timing {
    /// LAN defaults: 100 ms heartbeats, 400 ms lease, 450 ms election
    /// timeout, 1% drift bound, 2 s stability window, locks of up to an
    /// hour.
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(100),
            lease: Duration::from_millis(400),
            election_timeout: Duration::from_millis(450),
            drift: 0.01,
            stability_window: Duration::from_secs(2),
            lock_ttl_max: Duration::from_millis(3_600_000),
        }
    }
}

/// Why a timing is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimingError {
    /// Fewer than two heartbeats per lease: one lost heartbeat would end
    /// every lease.
    #[error("heartbeat {heartbeat_ms} ms must be at most half the lease ({lease_ms} ms)")]
    HeartbeatTooSlow {
        /// Heartbeat interval.
        heartbeat_ms: u64,
        /// Lease.
        lease_ms: u64,
    },
    /// Voters refuse promises for `L·(1+ρ)` after a heartbeat, so an
    /// election timeout below that only wastes attempts.
    #[error(
        "election timeout {election_ms} ms must be at least the lease times (1 + drift), {min_ms} ms"
    )]
    ElectionBeforeLease {
        /// Election timeout.
        election_ms: u64,
        /// Its lower bound.
        min_ms: u64,
    },
    /// Drift bound outside [0, 0.1].
    #[error("drift bound {0} must be within 0 and 0.1")]
    Drift(f64),
    /// A zero duration.
    #[error("heartbeat and lease must be above zero")]
    Zero,
}

impl Timing {
    /// Refuses a drift bound outside [0, 0.1] (the agents' setting, and
    /// what a remote client must agree with).
    pub fn check_drift(drift: f64) -> Result<(), TimingError> {
        if (0.0..=0.1).contains(&drift) {
            Ok(())
        } else {
            Err(TimingError::Drift(drift))
        }
    }

    /// Checks the relations the protocol relies on.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.heartbeat.is_zero() || self.lease.is_zero() {
            return Err(TimingError::Zero);
        }
        Timing::check_drift(self.drift)?;
        if self.heartbeat * 2 > self.lease {
            return Err(TimingError::HeartbeatTooSlow {
                heartbeat_ms: self.heartbeat.as_millis() as u64,
                lease_ms: self.lease.as_millis() as u64,
            });
        }
        if self.election_timeout < self.blackout() {
            return Err(TimingError::ElectionBeforeLease {
                election_ms: self.election_timeout.as_millis() as u64,
                min_ms: self.blackout().as_millis() as u64,
            });
        }
        Ok(())
    }

    /// `L·(1+ρ)`: a voter's blackout after it counted a heartbeat, and a
    /// voter's start-up wait (E3, E7).
    pub fn blackout(&self) -> Duration {
        self.lease.mul_f64(1.0 + self.drift)
    }

    /// `L·(1−ρ)/(1+ρ)`: how long past a round's first send the leader
    /// trusts its lease (E5).
    pub fn lease_trusted(&self) -> Duration {
        self.lease.mul_f64((1.0 - self.drift) / (1.0 + self.drift))
    }

    /// How long an election attempt waits for promises, and a `Prepare`
    /// for its answer: a lease. A promise is made durable before it is
    /// answered (E1), so a voter on a slow disk answers late; a shorter
    /// wait would fail every attempt while that disk is slow.
    pub fn attempt_window(&self) -> Duration {
        self.lease.max(self.heartbeat * 2)
    }

    /// How long after its start a voter waits before it takes a copy from
    /// the others (E7): until no answer it gave before its restart can
    /// still be counted, neither a promise (an attempt lasts
    /// [`Timing::attempt_window`]) nor an ack of a replication batch (an
    /// ack counts only within [`crate::replication::BATCH_PENDING_MAX`]
    /// of the batch's send) nor of a prune round (within
    /// [`crate::replication::PRUNE_WAIT`], shorter), whatever the clocks'
    /// drift. Its syncs sent from then on are *fresh*, and it copies only
    /// from their answers: a batch or an election its old answers helped
    /// decide is then in every copy it takes, and a prune they helped
    /// decide is forgotten or still held in each.
    pub fn old_answers_expire(&self) -> Duration {
        self.attempt_window()
            .max(crate::replication::BATCH_PENDING_MAX)
            .mul_f64((1.0 + self.drift) / (1.0 - self.drift))
    }

    /// How long a peer's "reaches quorum" mark stays fresh: it is bumped
    /// every heartbeat interval, and gossip takes a round or two.
    pub fn reach_fresh(&self) -> Duration {
        self.heartbeat * 4
    }
}

/// What every protocol message carries and every node compares (V1): a
/// hash of the voter set and of the timings safety rests on, the lease
/// `L` and the drift bound `ρ` (leases and blackouts, E3–E5) and the
/// longest lock TTL (K3, the full-restart wait of E7). Nodes that differ
/// in any of them refuse each other's messages: a rolling change of the
/// lease would let a leader trust a lease longer than the voters' blackout.
/// The heartbeat, the election timeout and the stability window are
/// liveness settings and may differ.
pub fn config_hash(voters: &[NodeId], timing: &Timing) -> u64 {
    // FNV-1a over the sorted ids, then the timings, in a fixed byte
    // layout: stable across builds and platforms.
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: [u8; 8]| {
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for id in sorted {
        eat(id.0.to_be_bytes());
    }
    eat((timing.lease.as_micros() as u64).to_be_bytes());
    eat(timing.drift.to_bits().to_be_bytes());
    eat((timing.lock_ttl_max.as_millis() as u64).to_be_bytes());
    hash
}

/// Election requests between nodes. Every one carries the voter-set hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionRequest {
    /// A candidate asks for promises for `epoch`.
    Prepare {
        /// The candidate's epoch.
        epoch: Epoch,
        /// Voter-set hash.
        voters: u64,
    },
    /// A leader's heartbeat round.
    Heartbeat {
        /// The leader's epoch.
        epoch: Epoch,
        /// The round (fresh per send).
        round: u64,
        /// Voter-set hash.
        voters: u64,
        /// The voters the leader heard from within the last two
        /// heartbeats: a voter named here and hearing this round knows
        /// both ways between them work (its own way as of up to 2H ago),
        /// and counts the leader toward its reach mark without probing it.
        heard: Vec<NodeId>,
    },
    /// The leader stops serving and hands over (E6).
    Resign {
        /// The epoch it led.
        epoch: Epoch,
        /// Voter-set hash.
        voters: u64,
    },
    /// Does this voter answer? (for the "reaches quorum" mark)
    Probe {
        /// Voter-set hash.
        voters: u64,
    },
    /// A voter without durable state asks for the highest promise (E7).
    Sync {
        /// Voter-set hash.
        voters: u64,
        /// Sent once every answer of the asking voter's earlier life has
        /// expired ([`Timing::old_answers_expire`]): only answers to such
        /// syncs are copied from.
        fresh: bool,
    },
    /// Would this voter promise `epoch` now? Asked before a candidate
    /// promises itself anything (E2's pre-vote); nothing changes on
    /// either side.
    PreVote {
        /// The epoch the candidate would ask for.
        epoch: Epoch,
        /// Voter-set hash.
        voters: u64,
    },
}

/// Answers to [`ElectionRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionResponse {
    /// A promise for `epoch`.
    Promise {
        /// The epoch promised.
        epoch: Epoch,
    },
    /// A heartbeat counted toward the lease.
    Ack {
        /// The leader's epoch.
        epoch: Epoch,
        /// The round acked.
        round: u64,
    },
    /// Refused; `promised` tells the sender the epoch to beat.
    Reject {
        /// The refusing node's promise.
        promised: Epoch,
        /// Why.
        reason: RejectReason,
        /// For a blackout or a start-up wait: how long until it ends, in
        /// the refusing node's milliseconds (a hint for the candidate).
        retry_ms: u64,
    },
    /// Answer to a pre-vote: this voter would promise `epoch` now.
    WouldPromise {
        /// The epoch asked about.
        epoch: Epoch,
    },
    /// Answer to a probe or a resign.
    Noted {
        /// The answering node is a voter still recovering (E7).
        recovering: bool,
    },
    /// Answer to a sync.
    State {
        /// The highest epoch promised.
        promised: Epoch,
        /// Still recovering itself.
        recovering: bool,
        /// How long ago it started, in milliseconds.
        up_ms: u64,
        /// What it remembers from before its start.
        memory: Memory,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The epoch is below (or, for a prepare, not above) the promise.
    StaleEpoch,
    /// In the blackout after counting a leader's heartbeat (E3).
    Blackout,
    /// Started too recently, or recovering its state (E7).
    Recovering,
    /// Another voter set or safety timing (V1; see [`config_hash`]).
    Config,
    /// Not a voter: it neither promises nor counts.
    NotVoter,
    /// The epoch is above 2^32 − 1, the last that can form fencing tokens
    /// (K1): refused whatever the promise.
    EpochSpent,
    /// A pre-vote asked a leader that serves (E2).
    Leading,
}

/// What a voter remembers from before its start (E7), as its answers to
/// a recovery `Sync` tell the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Memory {
    /// No data directory: nothing survives a restart.
    None,
    /// A data directory never initialized (new, empty, a mistyped path):
    /// nothing yet, and a sign of a new cluster if every voter shows it.
    Blank,
    /// An initialized data directory: its promise and lock table.
    Durable,
}

/// How a voter recovered (E7): the replication core settles its copy.
pub use crate::replication::Recovery;

/// The current leader as a node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Leadership {
    /// The leader.
    pub id: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a request; feed the answer (or its failure) back through
    /// [`Election::handle_response`].
    Send {
        /// Destination.
        to: NodeId,
        /// What to send.
        request: ElectionRequest,
    },
    /// Make this promise durable (the candidate's promise to itself),
    /// then report it with [`Election::handle_persisted`]: the attempt's
    /// `Prepare`s leave only then (E1).
    Persist(Epoch),
    /// Publish a new "reaches quorum" mark in gossip.
    PublishReach(u64),
    /// This node's view of the leader changed.
    LeaderChanged(Option<Leadership>),
    /// This node started or stopped serving as leader.
    Serving(bool),
    /// An election attempt started (for metrics).
    ElectionStarted {
        /// Its epoch.
        epoch: Epoch,
    },
    /// This voter finished its recovery (E7) and may promise and ack.
    Recovered(Recovery),
}

/// A request's handling: the answer, and an epoch that must be durable
/// before the answer is sent (E1, E8).
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The answer.
    pub response: ElectionResponse,
    /// Persist this promise first, if set.
    pub persist: Option<Epoch>,
}

#[derive(Debug, Clone)]
enum Role {
    Follower,
    Candidate {
        epoch: Epoch,
        promises: BTreeSet<NodeId>,
        /// Voters that refused (or could not be reached).
        refused: BTreeSet<NodeId>,
        /// Only waits refused it (blackouts, start-up): when the last ends.
        retry_at: Option<Duration>,
        /// A refusal showed a competing promise: back off in full.
        contested: bool,
        /// When its `Prepare`s left; `None` while its promise to itself
        /// is being made durable (they leave once it is, E1).
        sent_at: Option<Duration>,
        /// Still asking whether a majority would promise (E2's pre-vote):
        /// `promises` holds the voters that would, nothing is promised.
        pre: bool,
    },
    Leader {
        epoch: Epoch,
        /// When the deciding promise arrived (E4).
        takeover_at: Duration,
        /// Valid until; `None` until a post-takeover round is majority-acked.
        lease_until: Option<Duration>,
        next_round: u64,
        last_round_at: Duration,
        /// Rounds awaiting a majority: send time and voters that acked.
        rounds: BTreeMap<u64, (Duration, BTreeSet<NodeId>)>,
    },
}

#[derive(Debug, Clone, Default)]
struct Peer {
    live: bool,
    reach: u64,
    reach_changed_at: Option<Duration>,
    eligible_since: Option<Duration>,
}

/// How many of the lowest live ids keep a fresh "reaches quorum" mark
/// while a leader serves, so the next in line can take over at once.
const PROBING_LOWEST: usize = 3;

/// Rounds kept waiting for acks; older ones are forgotten (their acks
/// would only extend the lease from an older send time anyway).
const ROUNDS_PENDING_MAX: usize = 16;

/// One node's election state machine.
#[derive(Debug, Clone)]
pub struct Election {
    id: NodeId,
    voters: Vec<NodeId>,
    hash: u64,
    timing: Timing,
    started_at: Duration,
    memory: Memory,
    /// Started as the first start of a new cluster: a recovering
    /// majority without memory forms it without waiting out the longest
    /// lock TTL (E7).
    bootstrap: bool,
    // Voter state.
    promised: Epoch,
    /// Recovery done (E7): the start-up wait, and without durable state
    /// the copy of the highest promise from a majority.
    recovered: bool,
    /// When it finished.
    recovered_at: Option<Duration>,
    blackout_until: Duration,
    blackout_epoch: Epoch,
    /// The highest epoch whose leader resigned (E6): refused from then on.
    resigned_epoch: Epoch,
    /// Answers to recovery syncs: promise, recovering, up time, memory.
    sync_replies: BTreeMap<NodeId, (Epoch, bool, u64, Memory)>,
    /// The same, from answers to fresh syncs only: the copy is taken
    /// from these.
    fresh_replies: BTreeMap<NodeId, (Epoch, bool, u64, Memory)>,
    last_sync_at: Option<Duration>,
    /// The highest leader epoch any member gossips (E7's evidence of an
    /// earlier life of the cluster).
    gossiped_epoch: Epoch,
    /// See [`Election::led_epoch`].
    led_epoch: Epoch,
    /// When a full restart's wait is expected to end (E7), for the hint
    /// in refusals.
    recover_hint: Duration,
    // Knowledge.
    max_epoch: Epoch,
    leader: Option<(Leadership, Duration)>,
    /// The last leader this node heard from, kept after its lease.
    last_leader: Option<NodeId>,
    resigned_at: Option<Duration>,
    role: Role,
    serving: bool,
    peers: BTreeMap<NodeId, Peer>,
    probe_acks: BTreeMap<NodeId, Duration>,
    last_probe_at: Option<Duration>,
    /// Probe rounds sent while a leader serves (which half goes next).
    probe_turn: u64,
    reach: u64,
    next_attempt_at: Duration,
    rng: u64,
    announced: Option<Leadership>,
    /// The last claim to lead read from each member's gossip (epoch,
    /// mark): only a change is news of its leader.
    claims_seen: BTreeMap<NodeId, (Epoch, u64)>,
}

impl Election {
    /// A node starting at `now` with what it remembers: `memory`, and
    /// `promised`, the durable promise read at start (0 without one).
    /// `bootstrap` marks the first start of a new cluster (E7).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        timing: Timing,
        now: Duration,
        memory: Memory,
        promised: Epoch,
        bootstrap: bool,
        seed: u64,
    ) -> Election {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        let promised = if memory == Memory::Durable {
            promised
        } else {
            Epoch::ZERO
        };
        Election {
            id,
            hash: config_hash(&voters, &timing),
            voters,
            timing,
            started_at: now,
            memory,
            bootstrap,
            promised,
            recovered: false,
            recovered_at: None,
            blackout_until: now,
            blackout_epoch: Epoch::ZERO,
            resigned_epoch: Epoch::ZERO,
            sync_replies: BTreeMap::new(),
            fresh_replies: BTreeMap::new(),
            last_sync_at: None,
            gossiped_epoch: Epoch::ZERO,
            led_epoch: Epoch::ZERO,
            recover_hint: now,
            max_epoch: promised,
            leader: None,
            last_leader: None,
            resigned_at: None,
            role: Role::Follower,
            serving: false,
            peers: BTreeMap::new(),
            probe_acks: BTreeMap::new(),
            last_probe_at: None,
            probe_turn: 0,
            reach: 0,
            next_attempt_at: now + timing.election_timeout,
            rng: seed | 1,
            announced: None,
            claims_seen: BTreeMap::new(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The timing it runs with.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// True if this node is in the voter set.
    pub fn is_voter(&self) -> bool {
        self.voters.binary_search(&self.id).is_ok()
    }

    /// The voter set, sorted.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// The configuration hash this node's messages carry (V1; see
    /// [`config_hash`]).
    pub fn config_hash(&self) -> u64 {
        self.hash
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// True while this node may act as leader: its lease is valid.
    pub fn is_serving(&self, now: Duration) -> bool {
        match &self.role {
            Role::Leader {
                lease_until: Some(until),
                ..
            } => now < *until,
            _ => false,
        }
    }

    /// The lease end while serving.
    pub fn lease_until(&self) -> Option<Duration> {
        match &self.role {
            Role::Leader { lease_until, .. } => *lease_until,
            _ => None,
        }
    }

    /// The leader as this node sees it now: itself while serving, else the
    /// sender of a heartbeat within the lease.
    pub fn leader(&self, now: Duration) -> Option<Leadership> {
        if let Role::Leader { epoch, .. } = self.role
            && self.is_serving(now)
        {
            return Some(Leadership { id: self.id, epoch });
        }
        match self.leader {
            Some((l, seen)) if now < seen + self.timing.lease && l.id != self.id => Some(l),
            _ => None,
        }
    }

    /// The highest epoch this node promised (voters) .
    pub fn promised(&self) -> Epoch {
        self.promised
    }

    /// The highest epoch this node has heard of.
    pub fn max_epoch(&self) -> Epoch {
        self.max_epoch
    }

    /// The highest epoch of a leader this node followed or was: an
    /// epoch under which locks may have been granted (candidacies that
    /// failed do not count).
    pub fn led_epoch(&self) -> Epoch {
        self.led_epoch
    }

    /// True once the start-up wait and any recovery are over (E7).
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Gossip says `node` is live or not, with its "reaches quorum" mark.
    pub fn handle_peer(&mut self, now: Duration, node: NodeId, live: bool, reach: Option<u64>) {
        if node == self.id {
            return;
        }
        let peer = self.peers.entry(node).or_default();
        peer.live = live;
        if let Some(reach) = reach
            && reach != peer.reach
        {
            peer.reach = reach;
            peer.reach_changed_at = Some(now);
        }
        if !live {
            peer.eligible_since = None;
        }
    }

    /// A member gossips that it followed (or was) a leader of `epoch`.
    pub fn handle_peer_epoch(&mut self, epoch: Epoch) {
        self.gossiped_epoch = self.gossiped_epoch.max(epoch);
    }

    /// A peer left the membership (or died): forget its marks.
    pub fn handle_peer_gone(&mut self, node: NodeId) {
        self.peers.remove(&node);
        self.probe_acks.remove(&node);
        self.claims_seen.remove(&node);
    }

    fn peer_eligible(&self, now: Duration, node: NodeId) -> bool {
        self.peers.get(&node).is_some_and(|p| {
            p.live
                && p.reach_changed_at
                    .is_some_and(|at| now.saturating_sub(at) <= self.timing.reach_fresh())
        })
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: the core's only randomness, seeded by the driver.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Periodic work: heartbeats, probes, candidacy, recovery. Call at
    /// least every heartbeat interval / 4.
    pub fn handle_tick(&mut self, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        self.recover(now, &mut out);
        self.update_eligibility(now);
        match self.role.clone() {
            Role::Leader { .. } => self.lead(now, &mut out),
            Role::Candidate {
                sent_at: Some(sent_at),
                ..
            } => {
                // An attempt that has not won within its window failed.
                if now >= sent_at + self.timing.attempt_window() {
                    self.fail_attempt(now);
                }
            }
            // Waiting for its own promise to be durable (it may take a
            // slow disk a while; the window starts when it asks).
            Role::Candidate { sent_at: None, .. } => {}
            Role::Follower => {
                if self.should_run(now) {
                    self.run(now, &mut out);
                }
            }
        }
        self.probe(now, &mut out);
        self.announce(now, &mut out);
        out
    }

    /// When [`Election::handle_tick`] is next due: the earliest instant
    /// after `now` at which a tick could act or its outputs change (a
    /// round to send, a probe, an attempt's window, a lease or a leader's
    /// heartbeat running out, a lower id's mark going stale, a backoff
    /// ending), or `now` when one is due already. A tick earlier than
    /// this does nothing a tick at this time would not; a later one is
    /// late. A driver that ticks only then is as prompt as one ticking
    /// all the time, and idle in between: only inputs (handled at once)
    /// change what is due.
    ///
    /// Never later than the next probe, a heartbeat from now at most.
    /// Recovering, and in a cold start (no leader seen yet), this is a
    /// fifth of a heartbeat: those phases are short and their waits are
    /// many.
    pub fn next_deadline(&self, now: Duration) -> Duration {
        if self.acts_now(now) {
            return now;
        }
        let h = self.timing.heartbeat;
        // Probes and the reach mark: every heartbeat, for every node.
        let mut due = self.last_probe_at.map_or(now, |at| at + h);
        if !self.deadlines_exact() {
            due = due.min(now + h / 5);
        }
        // A threshold counts once it is ahead: one behind was acted on, or
        // (a condition that holds on) waits for an input. The instant just
        // past `at` for a test of the form `now <= at`.
        let ahead = |due: &mut Duration, at: Duration| {
            if at > now {
                *due = (*due).min(at);
            }
        };
        let past = |at: Duration| at + Duration::from_nanos(1);
        match &self.role {
            Role::Leader {
                last_round_at,
                lease_until,
                ..
            } => {
                due = due.min(*last_round_at + h);
                if let Some(until) = lease_until {
                    ahead(&mut due, *until);
                }
                for p in self.peers.values() {
                    if let Some(since) = p.eligible_since {
                        ahead(&mut due, since + self.timing.stability_window);
                    }
                }
            }
            Role::Candidate {
                sent_at: Some(sent_at),
                ..
            } => due = due.min(*sent_at + self.timing.attempt_window()),
            Role::Candidate { sent_at: None, .. } => {}
            Role::Follower => {
                ahead(&mut due, self.next_attempt_at);
                if let Some((_, seen)) = self.leader {
                    ahead(&mut due, seen + self.timing.election_timeout);
                }
            }
        }
        // The leader seen goes out of date; a peer's mark goes stale.
        if let Some((_, seen)) = self.leader {
            ahead(&mut due, seen + self.timing.lease);
        }
        for p in self.peers.values() {
            if let Some(at) = p.reach_changed_at {
                ahead(&mut due, past(at + self.timing.reach_fresh()));
            }
        }
        due
    }

    /// Whether a tick at `now` would act (and so change what it waits
    /// for): a threshold passed since the last tick, or an input that
    /// made a step due at once (a resignation heard, a lower id's mark
    /// gone).
    fn acts_now(&self, now: Duration) -> bool {
        if self.leader(now) != self.announced || self.is_serving(now) != self.serving {
            return true;
        }
        match &self.role {
            Role::Leader { last_round_at, .. } => {
                now >= *last_round_at + self.timing.heartbeat || self.preempted(now)
            }
            Role::Candidate {
                sent_at: Some(sent_at),
                ..
            } => now >= *sent_at + self.timing.attempt_window(),
            Role::Candidate { sent_at: None, .. } => false,
            Role::Follower => self.should_run(now),
        }
    }

    /// When this node last probed (or counted its acks, as leader): its
    /// ticks fall every heartbeat from then on.
    pub fn last_probe_at(&self) -> Option<Duration> {
        self.last_probe_at
    }

    /// False while recovering, and in a cold start (no leader seen and
    /// none resigned): then [`Election::next_deadline`] is a fifth of a
    /// heartbeat, not the exact instant the next tick acts.
    pub fn deadlines_exact(&self) -> bool {
        self.recovered && (self.leader.is_some() || self.resigned_at.is_some())
    }

    fn recover(&mut self, now: Duration, out: &mut Vec<Output>) {
        if self.recovered {
            return;
        }
        if !self.is_voter() {
            self.recovered = now >= self.started_at + self.timing.blackout();
            return;
        }
        // Ask from the start, so the answers are in when the start-up
        // wait ends.
        let sync = self
            .last_sync_at
            .is_none_or(|at| now >= at + self.timing.heartbeat);
        // A copy is taken only once every answer of this voter's earlier
        // life has expired, and only from answers to syncs sent since
        // (fresh): an old ack or promise could otherwise decide a batch,
        // an election or a prune after an answer the copy is taken from.
        let copy_ready = now >= self.started_at + self.timing.old_answers_expire();
        if sync {
            self.last_sync_at = Some(now);
            for &v in &self.voters {
                if v != self.id {
                    out.push(Output::Send {
                        to: v,
                        request: ElectionRequest::Sync {
                            voters: self.hash,
                            fresh: copy_ready,
                        },
                    });
                }
            }
        }
        if now < self.started_at + self.timing.blackout() {
            return;
        }
        // E7: copy the highest promise (and the lock tables) from
        // ⌊(n−1)/2⌋+1 other voters that are not recovering: with this
        // voter they make a majority, so they hold every promise and
        // grant a majority ever acked. This also protects a durable voter
        // whose directory is a restored snapshot, or an earlier life's.
        let need = (self.voters.len() - 1) / 2 + 1;
        let healthy_in = |replies: &BTreeMap<NodeId, (Epoch, bool, u64, Memory)>| -> Vec<NodeId> {
            replies
                .iter()
                .filter(|(_, (_, recovering, _, _))| !recovering)
                .map(|(id, _)| *id)
                .collect()
        };
        // Until the fresh syncs had time to be answered (a second start-up
        // wait), enough healthy answers of any age mean: wait to copy;
        // then only fresh ones count (a voter that answered early and
        // went down since must not keep this one waiting for good).
        let settling = now < self.started_at + self.timing.old_answers_expire() * 2;
        let healthy = if settling {
            healthy_in(&self.sync_replies)
        } else {
            healthy_in(&self.fresh_replies)
        };
        // K1: a promise beyond the last usable epoch is no promise.
        let heard = self
            .sync_replies
            .values()
            .map(|(p, ..)| *p)
            .filter(|p| *p <= Epoch::MAX)
            .max();
        if healthy.len() >= need {
            let fresh = healthy_in(&self.fresh_replies);
            if copy_ready && fresh.len() >= need {
                self.finish_recovery(now, heard, Recovery::Copied(fresh), out);
            }
            return;
        }
        if self.memory == Memory::Durable {
            // Too few healthy voters to copy from: resume from its own
            // durable state (and no lower than any promise heard).
            self.finish_recovery(now, heard, Recovery::Own, out);
            return;
        }
        // No memory and no copy possible. If a majority of voters are all
        // recovering, the cluster has restarted (or is new): it forms
        // anew, but only once every lease an earlier life may have
        // granted has run out, the longest TTL times (1+ρ) after the last
        // of them started, unless the operator declared a new cluster
        // (bootstrap) or every one of them shows a blank data directory,
        // which only a new cluster has (E7).
        let recovering: Vec<(u64, Memory)> = self
            .fresh_replies
            .values()
            .filter(|(_, r, _, _)| *r)
            .map(|(_, _, up, memory)| (*up, *memory))
            .collect();
        if recovering.len() + 1 >= self.quorum() && copy_ready {
            // The youngest start among them, this node's own included (a
            // lone voter has no one else to hear from).
            let up = now.saturating_sub(self.started_at);
            let youngest = recovering
                .iter()
                .map(|(ms, _)| Duration::from_millis(*ms))
                .fold(up, Duration::min);
            // Blank directories all round are a new cluster only if no
            // member remembers a leader. (A promise heard is no such sign:
            // in a new cluster the first voters to recover promise
            // themselves before the last ones decide. No leader of the new
            // cluster exists before a majority of them has recovered, and
            // the voters recovering later can copy from that majority.)
            let no_earlier_life = self.gossiped_epoch == Epoch::ZERO;
            let new_cluster = self.bootstrap
                || (no_earlier_life
                    && self.memory == Memory::Blank
                    && recovering.iter().all(|(_, m)| *m == Memory::Blank));
            let mut hold = self.timing.blackout() * 2;
            if !new_cluster {
                hold += self.timing.lock_ttl_max.mul_f64(1.0 + self.timing.drift);
            }
            self.recover_hint = now + hold.saturating_sub(youngest);
            if youngest >= hold {
                self.finish_recovery(now, heard, Recovery::Anew, out);
            }
        }
    }

    /// Recovery done: the promise goes no lower than any heard (epochs go
    /// back only if no voter remembers them), nor the known epoch below
    /// what any member gossips.
    fn finish_recovery(
        &mut self,
        now: Duration,
        heard: Option<Epoch>,
        how: Recovery,
        out: &mut Vec<Output>,
    ) {
        self.recovered_at = Some(now);
        self.promised = self.promised.max(heard.unwrap_or(Epoch::ZERO));
        self.max_epoch = self
            .max_epoch
            .max(self.promised)
            .max(self.gossiped_epoch.min(Epoch::MAX));
        self.recovered = true;
        out.push(Output::Recovered(how));
    }

    fn update_eligibility(&mut self, now: Duration) {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let eligible = self.peer_eligible(now, id);
            if let Some(p) = self.peers.get_mut(&id) {
                match (eligible, p.eligible_since) {
                    (true, None) => p.eligible_since = Some(now),
                    (false, Some(_)) => p.eligible_since = None,
                    _ => {}
                }
            }
        }
    }

    /// E2: run only with no valid leader seen within the lease and the
    /// election timeout, no eligible lower id, and past any backoff.
    fn should_run(&self, now: Duration) -> bool {
        if now < self.next_attempt_at {
            return false;
        }
        // E7: a voter still recovering does not run: its own copy of the
        // lock table (from before its restart, maybe from an earlier life
        // of the cluster) is not to be trusted until it has recovered,
        // and a leader takes its own copy over with the promised ones.
        // Non-voters and recovered voters lead meanwhile.
        if self.is_voter() && !self.recovered {
            return false;
        }
        if let Some((_, seen)) = self.leader {
            let resigned = self.resigned_at.is_some_and(|r| r >= seen);
            if !resigned && now < seen + self.timing.election_timeout {
                return false;
            }
        }
        let lower_eligible = self
            .peers
            .keys()
            .any(|&p| p < self.id && self.peer_eligible(now, p));
        if lower_eligible {
            return false;
        }
        // Liveness only: with no leader ever seen (a cold start), give
        // live lower ids a head start by rank, so the lowest usually wins
        // without a contest. A lost leader is not waited for.
        if self.leader.is_none() && self.resigned_at.is_none() {
            let lost = self.last_leader;
            let lower_live = self
                .peers
                .iter()
                .filter(|(p, peer)| **p < self.id && peer.live && Some(**p) != lost)
                .count() as u32;
            let head_start = self.timing.election_timeout / 2 * lower_live;
            // From when this node could first count: a voter once it has
            // recovered (a copy takes a second, E7), anyone else once a
            // voter recovering from the others could have.
            let ready = if self.is_voter() {
                match self.recovered_at {
                    Some(at) => at,
                    None if lower_live > 0 => return false,
                    None => now,
                }
            } else {
                self.started_at + self.timing.old_answers_expire()
            };
            let base = ready.max(self.started_at + self.timing.election_timeout);
            if now < base + head_start {
                return false;
            }
        }
        true
    }

    /// E2's pre-vote: before promising itself anything, a candidate asks
    /// the voters whether they would promise the next epoch now, and
    /// runs only once a majority would. A voter cut off or stopped for a
    /// while, whose marks all went stale, asks and hears no (the voters
    /// in a leader's blackout and the serving leader itself say so), and
    /// so raises no promise with which it would refuse the leader's
    /// heartbeats and depose it.
    fn run(&mut self, now: Duration, out: &mut Vec<Output>) {
        let epoch = self.max_epoch.max(self.promised).next();
        if epoch > Epoch::MAX {
            // K1: no epoch left that can form tokens; nobody will promise
            // one, so do not ask.
            self.next_attempt_at = now + self.timing.election_timeout;
            return;
        }
        let mut would = BTreeSet::new();
        if self.can_promise(now, epoch).is_ok() {
            would.insert(self.id);
        }
        self.role = Role::Candidate {
            epoch,
            promises: would,
            refused: BTreeSet::new(),
            retry_at: None,
            contested: false,
            sent_at: Some(now),
            pre: true,
        };
        for &v in &self.voters {
            if v != self.id {
                out.push(Output::Send {
                    to: v,
                    request: ElectionRequest::PreVote {
                        epoch,
                        voters: self.hash,
                    },
                });
            }
        }
        self.check_pre_vote(now, out);
    }

    /// A majority would promise the pre-vote's epoch: run. Not if a
    /// leader was heard since the pre-vote went out (answers left over
    /// from an earlier attempt at the same epoch may have made up the
    /// majority), nor if an epoch at or above the one asked about was
    /// seen meanwhile: another candidate runs for it (a refusal told so),
    /// and running above it would depose it for nothing; this attempt
    /// backs off in full. This node's own vote counts only if it may
    /// still promise.
    fn check_pre_vote(&mut self, now: Duration, out: &mut Vec<Output>) {
        let id = self.id;
        let may_promise = |e: &Election, epoch| e.can_promise(now, epoch).is_ok();
        let Role::Candidate {
            epoch,
            sent_at: Some(sent_at),
            pre: true,
            ..
        } = self.role
        else {
            return;
        };
        if self.leader.is_some_and(|(_, seen)| seen >= sent_at) {
            self.fail_attempt(now);
            return;
        }
        let own = may_promise(self, epoch);
        let Role::Candidate { promises, .. } = &mut self.role else {
            return;
        };
        if !own {
            promises.remove(&id);
        }
        if promises.len() < self.quorum() {
            return;
        }
        if self.max_epoch.max(self.promised) >= epoch {
            if let Role::Candidate { contested, .. } = &mut self.role {
                *contested = true;
            }
            self.fail_attempt(now);
        } else {
            self.campaign(now, epoch, out);
        }
    }

    /// Runs for `epoch`: promises itself (durably) and asks the voters.
    fn campaign(&mut self, now: Duration, epoch: Epoch, out: &mut Vec<Output>) {
        self.max_epoch = epoch;
        let mut promises = BTreeSet::new();
        let mut sent_at = Some(now);
        if self.can_promise(now, epoch).is_ok() {
            // A voting candidate promises itself, durably, before asking:
            // it asks once the driver reports the promise durable
            // (`handle_persisted`).
            self.promised = epoch;
            promises.insert(self.id);
            out.push(Output::Persist(epoch));
            sent_at = None;
        }
        self.role = Role::Candidate {
            epoch,
            promises,
            refused: BTreeSet::new(),
            retry_at: None,
            contested: false,
            sent_at,
            pre: false,
        };
        out.push(Output::ElectionStarted { epoch });
        if sent_at.is_some() {
            self.ask(now, epoch, out);
        }
    }

    /// Sends this attempt's `Prepare`s and checks whether it won already
    /// (a lone voter).
    fn ask(&mut self, now: Duration, epoch: Epoch, out: &mut Vec<Output>) {
        for &v in &self.voters {
            if v != self.id {
                out.push(Output::Send {
                    to: v,
                    request: ElectionRequest::Prepare {
                        epoch,
                        voters: self.hash,
                    },
                });
            }
        }
        self.check_won(now, out);
    }

    /// The promise of `epoch` this node made to itself ([`Output::Persist`])
    /// is durable: if it still runs for that epoch, it asks the voters now.
    pub fn handle_persisted(&mut self, now: Duration, epoch: Epoch) -> Vec<Output> {
        let mut out = Vec::new();
        if let Role::Candidate {
            epoch: mine,
            sent_at: sent_at @ None,
            pre: false,
            ..
        } = &mut self.role
            && *mine == epoch
        {
            *sent_at = Some(now);
            self.ask(now, epoch, &mut out);
        }
        self.announce(now, &mut out);
        out
    }

    fn rank(&self, now: Duration) -> u32 {
        let lower = self
            .peers
            .keys()
            .filter(|&&p| p < self.id && self.peer_eligible(now, p))
            .count();
        lower as u32 + 1
    }

    fn fail_attempt(&mut self, now: Duration) {
        let waits_only = match &self.role {
            Role::Candidate {
                retry_at,
                contested,
                ..
            } => retry_at.filter(|_| !contested),
            _ => None,
        };
        self.role = Role::Follower;
        // Refused only because voters were still in their blackout (the
        // old leader's lease) or start-up wait: no competitor is in sight,
        // so try again as those end, spaced by rank, rather than back off.
        let rank = f64::from(self.rank(now));
        if let Some(at) = waits_only {
            let spacing = self.timing.heartbeat.mul_f64(0.2 * (rank - 1.0));
            self.next_attempt_at = at.max(now) + Duration::from_millis(5) + spacing;
            return;
        }
        // E2: back off uniformly in [T, 2T] times the rank.
        let t = self.timing.election_timeout;
        let jitter = (self.next_random() % 1000) as f64 / 1000.0;
        self.next_attempt_at = now + t.mul_f64((1.0 + jitter) * rank);
    }

    /// A voter refused (or did not answer) the current attempt.
    fn note_refusal(&mut self, now: Duration, from: NodeId, response: Option<&ElectionResponse>) {
        let quorum = self.quorum();
        let voters = self.voters.len();
        let Role::Candidate {
            refused,
            retry_at,
            contested,
            promises,
            ..
        } = &mut self.role
        else {
            return;
        };
        refused.insert(from);
        match response {
            Some(ElectionResponse::Reject {
                reason: RejectReason::Blackout | RejectReason::Recovering,
                retry_ms,
                ..
            }) => {
                let at = now + Duration::from_millis(*retry_ms);
                *retry_at = Some(retry_at.map_or(at, |r| r.max(at)));
            }
            _ => *contested = true,
        }
        // A majority is out of reach: fail now rather than at the timeout.
        if voters - refused.len() < quorum && promises.len() < quorum {
            self.fail_attempt(now);
        }
    }

    fn can_promise(&self, now: Duration, epoch: Epoch) -> Result<(), RejectReason> {
        if !self.is_voter() {
            return Err(RejectReason::NotVoter);
        }
        if epoch > Epoch::MAX {
            return Err(RejectReason::EpochSpent);
        }
        if !self.recovered {
            return Err(RejectReason::Recovering);
        }
        if epoch <= self.promised {
            return Err(RejectReason::StaleEpoch);
        }
        if now < self.blackout_until {
            return Err(RejectReason::Blackout);
        }
        Ok(())
    }

    fn check_won(&mut self, now: Duration, out: &mut Vec<Output>) {
        let Role::Candidate {
            epoch,
            promises,
            pre: false,
            ..
        } = &self.role
        else {
            return;
        };
        if promises.len() >= self.quorum() {
            let epoch = *epoch;
            self.role = Role::Leader {
                epoch,
                takeover_at: now,
                lease_until: None,
                next_round: 0,
                last_round_at: Duration::ZERO,
                rounds: BTreeMap::new(),
            };
            self.leader = Some((Leadership { id: self.id, epoch }, now));
            // E4: the first heartbeat round goes out at once.
            self.send_round(now, out);
            // The next tick probes, in step with the rounds from then on
            // (one wake a heartbeat for both).
            self.last_probe_at = None;
        }
    }

    /// A lower id has been eligible for the stability window (E6).
    fn preempted(&self, now: Duration) -> bool {
        self.peers.iter().any(|(&id, p)| {
            id < self.id
                && p.eligible_since
                    .is_some_and(|since| now >= since + self.timing.stability_window)
        })
    }

    fn lead(&mut self, now: Duration, out: &mut Vec<Output>) {
        let Role::Leader { last_round_at, .. } = self.role else {
            return;
        };
        // E6: hand over to a lower id eligible for the stability window.
        if self.preempted(now) {
            out.extend(self.resign(now));
            return;
        }
        if now >= last_round_at + self.timing.heartbeat {
            self.send_round(now, out);
        }
    }

    fn send_round(&mut self, now: Duration, out: &mut Vec<Output>) {
        let is_voter = self.is_voter();
        let id = self.id;
        let hash = self.hash;
        // Rounds go to the voters only: only their acks count, and the
        // other members learn the leader from its gossiped claim
        // (`handle_leader_claims`), so a round costs the same at 100
        // members as at 5.
        let members: Vec<NodeId> = self.voters.iter().copied().filter(|&n| n != id).collect();
        let Role::Leader {
            epoch,
            next_round,
            last_round_at,
            rounds,
            ..
        } = &mut self.role
        else {
            return;
        };
        let round = *next_round;
        *next_round += 1;
        *last_round_at = now;
        let mut acks = BTreeSet::new();
        // The leader's own ack counts only while it has promised no
        // higher epoch (it steps down when it does; belt and braces), and
        // only once it has recovered (E7: a recovering voter acks
        // nothing, its own leadership included).
        let self_ack = is_voter && self.recovered && self.promised <= *epoch;
        if self_ack {
            acks.insert(id);
        }
        rounds.insert(round, (now, acks));
        let epoch_now = *epoch;
        while rounds.len() > ROUNDS_PENDING_MAX {
            rounds.pop_first();
        }
        let epoch = *epoch;
        if self_ack {
            // The leader's own ack counts toward its lease like any other
            // voter's, so it takes the same blackout (E3): it promises no
            // other candidate while its lease may be valid.
            self.blackout_until = now + self.timing.blackout();
            self.blackout_epoch = epoch_now;
        }
        let heard: Vec<NodeId> = self.heard_within(now, self.timing.heartbeat * 2).collect();
        for to in members {
            out.push(Output::Send {
                to,
                request: ElectionRequest::Heartbeat {
                    epoch,
                    round,
                    voters: hash,
                    heard: heard.clone(),
                },
            });
        }
        // A single voter that is the leader acks itself.
        self.count_acks(round);
    }

    fn count_acks(&mut self, round: u64) {
        let quorum = self.quorum();
        let trusted = self.timing.lease_trusted();
        let Role::Leader {
            takeover_at,
            lease_until,
            rounds,
            ..
        } = &mut self.role
        else {
            return;
        };
        let Some((sent_at, acks)) = rounds.get(&round) else {
            return;
        };
        // E4: only rounds sent after takeover count (all rounds are sent
        // by this term; `>=` since the first round leaves at takeover).
        if acks.len() >= quorum && *sent_at >= *takeover_at {
            let until = *sent_at + trusted;
            if lease_until.is_none_or(|u| until > u) {
                *lease_until = Some(until);
            }
            // Older rounds can no longer extend the lease.
            let keep = round;
            rounds.retain(|&r, _| r > keep);
        }
    }

    /// Stops serving and tells every member, ending voters' blackout for
    /// this epoch (E6). The node stays follower and defers to the others
    /// for one election timeout.
    pub fn resign(&mut self, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        let Role::Leader { epoch, .. } = self.role else {
            return out;
        };
        self.role = Role::Follower;
        self.leader = None;
        self.next_attempt_at = now + self.timing.election_timeout;
        let targets: BTreeSet<NodeId> = self
            .voters
            .iter()
            .copied()
            .chain(self.peers.iter().filter(|(_, p)| p.live).map(|(&i, _)| i))
            .filter(|&n| n != self.id)
            .collect();
        for to in targets {
            out.push(Output::Send {
                to,
                request: ElectionRequest::Resign {
                    epoch,
                    voters: self.hash,
                },
            });
        }
        self.announce(now, &mut out);
        out
    }

    /// The voters heard from (probe answers, heartbeat acks, heartbeats
    /// that name this node) within `window` of `now`.
    fn heard_within(&self, now: Duration, window: Duration) -> impl Iterator<Item = NodeId> + '_ {
        self.probe_acks
            .iter()
            .filter(move |(_, at)| now.saturating_sub(**at) <= window)
            .map(|(&v, _)| v)
    }

    fn probe(&mut self, now: Duration, out: &mut Vec<Output>) {
        if self
            .last_probe_at
            .is_some_and(|at| now < at + self.timing.heartbeat)
        {
            return;
        }
        self.last_probe_at = Some(now);
        // Count voters heard from within three heartbeats (heartbeat acks
        // count for a leader, probe answers otherwise).
        let mut reached = self.heard_within(now, self.timing.heartbeat * 3).count();
        if self.is_voter() && self.recovered {
            reached += 1;
        }
        if reached >= self.quorum() {
            self.reach += 1;
            out.push(Output::PublishReach(self.reach));
        }
        // Only likely candidates keep the mark fresh by probing: the
        // lowest few live ids (the next leader after a failover is among
        // them) and any id below the current leader (for a handover). The
        // leader's mark comes from its heartbeat acks.
        let is_leader = matches!(self.role, Role::Leader { .. });
        let mut live: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.live)
            .map(|(&id, _)| id)
            .chain(std::iter::once(self.id))
            .collect();
        live.sort_unstable();
        let among_lowest = live.iter().take(PROBING_LOWEST).any(|&id| id == self.id);
        let below_leader_or_none = self.leader(now).is_none_or(|l| self.id < l.id);
        if !is_leader && (among_lowest || below_leader_or_none) {
            // While a leader serves, half the other voters each time, in
            // turn: each is probed every 2H, its answer within the 3H
            // window at every count. With no leader, all of them at once
            // (marks are what an election waits on), and with fewer than
            // four others always: half of two or three leaves a count
            // resting on one answer a round, no slack for a prober
            // whose ticks come late.
            let others: Vec<NodeId> = self
                .voters
                .iter()
                .copied()
                .filter(|&v| v != self.id)
                .collect();
            // A voter hears a leader that is a voter through its
            // heartbeats, which name the voters whose acks it had: while
            // they do (the leader counted within 2H), it is not probed,
            // and with that answer every heartbeat, half the others in
            // turn leave slack however few they are. A voter the
            // heartbeats stopped naming probes as before. (A member that
            // is not a voter gets no heartbeats.)
            let leader = self.leader(now);
            let heard_by_heartbeats = leader.map(|l| l.id).filter(|&id| {
                self.is_voter()
                    && others.contains(&id)
                    && self
                        .heard_within(now, self.timing.heartbeat * 2)
                        .any(|v| v == id)
            });
            let all = leader.is_none() || (others.len() < 4 && heard_by_heartbeats.is_none());
            let turn = self.probe_turn;
            if !all {
                self.probe_turn += 1;
            }
            for (i, v) in others.into_iter().enumerate() {
                if Some(v) == heard_by_heartbeats {
                    continue;
                }
                if all || i as u64 % 2 == turn % 2 {
                    out.push(Output::Send {
                        to: v,
                        request: ElectionRequest::Probe { voters: self.hash },
                    });
                }
            }
        }
    }

    fn announce(&mut self, now: Duration, out: &mut Vec<Output>) {
        let current = self.leader(now);
        if let Some(l) = current {
            self.led_epoch = self.led_epoch.max(l.epoch);
        }
        if current != self.announced {
            self.announced = current;
            out.push(Output::LeaderChanged(current));
        }
        let serving = self.is_serving(now);
        if serving != self.serving {
            self.serving = serving;
            out.push(Output::Serving(serving));
        }
    }

    fn observe_epoch(&mut self, epoch: Epoch) {
        // K1: an epoch that cannot form tokens is no epoch; a peer (buggy
        // or hostile) reporting one must not carry this node past the
        // last usable epoch.
        if epoch > Epoch::MAX {
            return;
        }
        self.max_epoch = self.max_epoch.max(epoch);
        // E1: a leader or candidate that learns of a higher epoch stops.
        let mine = match self.role {
            Role::Leader { epoch, .. } | Role::Candidate { epoch, .. } => Some(epoch),
            Role::Follower => None,
        };
        if mine.is_some_and(|m| epoch > m) {
            self.role = Role::Follower;
        }
    }

    /// A request from `from`. The answer must not be sent before
    /// `persist` (if any) is durable.
    pub fn handle_request(
        &mut self,
        now: Duration,
        from: NodeId,
        request: &ElectionRequest,
    ) -> (Handled, Vec<Output>) {
        let mut out = Vec::new();
        let hash = match request {
            ElectionRequest::Prepare { voters, .. }
            | ElectionRequest::Heartbeat { voters, .. }
            | ElectionRequest::Resign { voters, .. }
            | ElectionRequest::Probe { voters }
            | ElectionRequest::Sync { voters, .. }
            | ElectionRequest::PreVote { voters, .. } => *voters,
        };
        if hash != self.hash {
            return (self.reject(RejectReason::Config), out);
        }
        let handled = match *request {
            ElectionRequest::Prepare { epoch, .. } => {
                // Only noted: an attempt is not a leader, and most are
                // refused (a leader steps down when a voter refuses its
                // heartbeat, or another leader's heartbeat arrives).
                if epoch <= Epoch::MAX {
                    self.max_epoch = self.max_epoch.max(epoch);
                }
                match self.can_promise(now, epoch) {
                    Ok(()) => {
                        // E1: having promised a higher epoch, a leader or
                        // candidate of a lower one stops at once.
                        self.observe_epoch(epoch);
                        self.promised = epoch;
                        Handled {
                            response: ElectionResponse::Promise { epoch },
                            persist: Some(epoch),
                        }
                    }
                    Err(reason) => self.reject_at(now, reason),
                }
            }
            ElectionRequest::Heartbeat {
                epoch,
                round,
                ref heard,
                ..
            } => self.heartbeat(now, from, epoch, round, heard),
            // E2's pre-vote: what a `Prepare` would get, nothing changed.
            // A serving leader says `Leading` (a voter leading is in the
            // blackout of its own rounds and would say so too, but a
            // candidate told `Leading` backs off in full rather than
            // retrying as that blackout ends); a leader that is no voter
            // is not asked, and the voters' blackouts refuse for it.
            ElectionRequest::PreVote { epoch, .. } => {
                if self.is_serving(now) {
                    self.reject(RejectReason::Leading)
                } else {
                    match self.can_promise(now, epoch) {
                        Ok(()) => Handled {
                            response: ElectionResponse::WouldPromise { epoch },
                            persist: None,
                        },
                        Err(reason) => self.reject_at(now, reason),
                    }
                }
            }
            ElectionRequest::Resign { epoch, .. } => {
                if self
                    .leader
                    .is_some_and(|(l, _)| l.id == from && l.epoch == epoch)
                {
                    self.leader = None;
                    self.resigned_at = Some(now);
                    // A resign lets the next one run without waiting.
                    self.next_attempt_at = now;
                }
                if self.blackout_epoch == epoch {
                    self.blackout_until = now;
                }
                // E6: refuse that epoch from now on, its late heartbeats
                // and batches included (they would restart the blackout).
                if epoch <= Epoch::MAX {
                    self.resigned_epoch = self.resigned_epoch.max(epoch);
                }
                if self.is_voter() && self.recovered && epoch > self.promised && epoch <= Epoch::MAX
                {
                    self.promised = epoch;
                    Handled {
                        response: ElectionResponse::Noted { recovering: false },
                        persist: Some(epoch),
                    }
                } else {
                    Handled {
                        response: ElectionResponse::Noted {
                            recovering: !self.recovered,
                        },
                        persist: None,
                    }
                }
            }
            ElectionRequest::Probe { .. } => Handled {
                response: ElectionResponse::Noted {
                    recovering: self.is_voter() && !self.recovered,
                },
                persist: None,
            },
            ElectionRequest::Sync { .. } => Handled {
                response: ElectionResponse::State {
                    promised: self.promised,
                    recovering: self.is_voter() && !self.recovered,
                    up_ms: now.saturating_sub(self.started_at).as_millis() as u64,
                    memory: self.memory,
                },
                persist: None,
            },
        };
        self.announce(now, &mut out);
        (handled, out)
    }

    fn heartbeat(
        &mut self,
        now: Duration,
        from: NodeId,
        epoch: Epoch,
        round: u64,
        heard: &[NodeId],
    ) -> Handled {
        // E1: below the promise: refuse, tell the sender; E6: a resigned
        // epoch likewise.
        if epoch < self.promised || epoch <= self.resigned_epoch {
            return self.reject(RejectReason::StaleEpoch);
        }
        if epoch > Epoch::MAX {
            return self.reject(RejectReason::EpochSpent);
        }
        self.observe_epoch(epoch);
        self.note_leader(now, from, epoch);
        if !self.is_voter() {
            return self.reject(RejectReason::NotVoter);
        }
        // E7: a recovering voter acks nothing.
        if !self.recovered {
            return self.reject(RejectReason::Recovering);
        }
        let persist = (epoch > self.promised).then_some(epoch);
        self.promised = self.promised.max(epoch);
        // E3: counted toward this leader's lease: blackout.
        self.blackout_until = now + self.timing.blackout();
        self.blackout_epoch = epoch;
        // Reach: the leader heard from this voter lately, and this voter
        // hears it now: both ways work (PROTOCOL, reach marks).
        if heard.contains(&self.id) && self.voters.binary_search(&from).is_ok() {
            self.probe_acks.insert(from, now);
        }
        Handled {
            response: ElectionResponse::Ack { epoch, round },
            persist,
        }
    }

    /// `from` leads `epoch`, as of `now`: a heartbeat says so to a voter,
    /// a gossiped claim to any other member.
    fn note_leader(&mut self, now: Duration, from: NodeId, epoch: Epoch) {
        if from == self.id {
            return;
        }
        // A record of a higher epoch blocks a lower one only while that
        // leader's lease could hold: after a full restart without data
        // dirs epochs may start over (E7), and a stale record must not
        // hide the leader there is.
        let newer = self
            .leader
            .is_none_or(|(l, seen)| epoch >= l.epoch || now >= seen + self.timing.lease);
        if newer {
            self.leader = Some((Leadership { id: from, epoch }, now));
            self.last_leader = Some(from);
        }
    }

    /// What this node gossips as its claim to lead: while it serves, its
    /// epoch and a mark that rises with each heartbeat round it sends (the
    /// rounds of its term so far), so that a member reading the claim can
    /// tell a leader that goes on from one whose driver stopped while its
    /// gossip goes on. The mark moves every heartbeat interval whether or
    /// not the voters' acks are prompt: a serving leader's claim changes
    /// as often as a voter hears from it. `None` when not serving.
    pub fn claim(&self, now: Duration) -> Option<(Epoch, u64)> {
        match &self.role {
            Role::Leader {
                epoch,
                lease_until: Some(until),
                next_round,
                ..
            } if now < *until => Some((*epoch, *next_round)),
            _ => None,
        }
    }

    /// Gossip's claims to lead, read at one poll: `(from, epoch, hash,
    /// mark)` for each live member that gossips one ([`Election::claim`]).
    /// A member that is not a voter learns the leader this way, heartbeats
    /// going to voters only: a claim whose mark changed since the last
    /// poll (or is seen for the first time) counts as a heartbeat would
    /// for whom it follows and whether it runs (E2), and for nothing else:
    /// it acks nothing and raises no promise. An unchanged claim is no
    /// news of its leader, whose record then lapses a lease after the
    /// last change. Voters follow heartbeats alone and ignore claims, as
    /// does everyone a claim of another configuration (V1), of a resigned
    /// epoch (E6) or of an epoch that cannot form tokens (K1).
    pub fn handle_leader_claims(
        &mut self,
        now: Duration,
        claims: &[(NodeId, Epoch, u64, u64)],
    ) -> Vec<Output> {
        let mut out = Vec::new();
        if self.is_voter() {
            return out;
        }
        for &(from, epoch, hash, mark) in claims {
            if from == self.id
                || hash != self.hash
                || epoch > Epoch::MAX
                || epoch <= self.resigned_epoch
            {
                continue;
            }
            if self.claims_seen.insert(from, (epoch, mark)) == Some((epoch, mark)) {
                continue;
            }
            // E1: a member leading a lower epoch stops.
            self.observe_epoch(epoch);
            self.note_leader(now, from, epoch);
        }
        self.announce(now, &mut out);
        out
    }

    fn reject(&self, reason: RejectReason) -> Handled {
        self.reject_at(Duration::ZERO, reason)
    }

    fn reject_at(&self, now: Duration, reason: RejectReason) -> Handled {
        let until = match reason {
            RejectReason::Blackout => self.blackout_until,
            // Past the start-up wait a voter may still be waiting out a
            // full restart (E7): the candidate is told when that ends.
            RejectReason::Recovering => {
                // A voter that will copy from the others waits for its
                // earlier life's answers to expire first.
                let wait = if self.memory == Memory::Durable {
                    self.timing.blackout()
                } else {
                    self.timing.blackout().max(self.timing.old_answers_expire())
                };
                (self.started_at + wait).max(self.recover_hint)
            }
            _ => now,
        };
        Handled {
            response: ElectionResponse::Reject {
                promised: self.promised,
                reason,
                retry_ms: until.saturating_sub(now).as_millis() as u64,
            },
            persist: None,
        }
    }

    /// A replication batch of `epoch` with configuration hash `hash` from
    /// the leader: whether this voter may merge it (E1, E7, V1). `Ok`
    /// carries a promise to make durable before the ack when the batch's
    /// epoch is above this voter's promise (E1: a higher epoch raises the
    /// promise); `Err` the reason and this voter's promise, for the
    /// refusal.
    pub fn handle_replicate(
        &mut self,
        epoch: Epoch,
        hash: u64,
    ) -> Result<Option<Epoch>, (RejectReason, Epoch)> {
        let refuse = |reason| Err((reason, self.promised));
        if hash != self.hash {
            return refuse(RejectReason::Config);
        }
        if !self.is_voter() {
            return refuse(RejectReason::NotVoter);
        }
        if !self.recovered {
            return refuse(RejectReason::Recovering);
        }
        if epoch < self.promised || epoch <= self.resigned_epoch {
            return refuse(RejectReason::StaleEpoch);
        }
        if epoch > Epoch::MAX {
            return refuse(RejectReason::EpochSpent);
        }
        let persist = (epoch > self.promised).then_some(epoch);
        self.promised = epoch;
        self.observe_epoch(epoch);
        Ok(persist)
    }

    /// Does this voter, recovering, keep the copy an answer to `request`
    /// carries (E7)? Only an answer to a fresh sync: the copy is taken
    /// from those alone.
    pub fn keeps_sync_copy(&self, request: &ElectionRequest) -> bool {
        !self.recovered && matches!(request, ElectionRequest::Sync { fresh: true, .. })
    }

    /// May this voter forget tombstones at the word of the leader of
    /// `epoch` running configuration `hash` (PROTOCOL.md, "Locks" 8)?
    /// Only a recovered voter of that configuration whose promise is
    /// exactly that epoch: it took that leader's batches, and no other
    /// leader's since. Changes nothing.
    pub fn may_forget(&self, epoch: Epoch, hash: u64) -> bool {
        hash == self.hash
            && self.is_voter()
            && self.recovered
            && epoch == self.promised
            && epoch > self.resigned_epoch
    }

    /// A peer refused a message of this node's term because it promised
    /// `epoch` (a replication batch, say): a leader or candidate of a lower
    /// epoch stops at once (E1).
    pub fn handle_higher_epoch(&mut self, now: Duration, epoch: Epoch) -> Vec<Output> {
        let mut out = Vec::new();
        self.observe_epoch(epoch);
        self.announce(now, &mut out);
        out
    }

    /// The answer from `from` to a request this node sent (`None`: it
    /// failed or timed out).
    pub fn handle_response(
        &mut self,
        now: Duration,
        from: NodeId,
        request: &ElectionRequest,
        response: Option<&ElectionResponse>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        match (request, response) {
            (
                ElectionRequest::Prepare { epoch, .. },
                Some(ElectionResponse::Promise { epoch: promised }),
            ) if epoch == promised => {
                if let Role::Candidate {
                    epoch: mine,
                    promises,
                    pre: false,
                    ..
                } = &mut self.role
                    && mine == epoch
                    && self.voters.binary_search(&from).is_ok()
                {
                    promises.insert(from);
                }
                self.check_won(now, &mut out);
            }
            (
                ElectionRequest::Heartbeat { epoch, round, .. },
                Some(ElectionResponse::Ack {
                    epoch: acked,
                    round: r,
                }),
            ) if epoch == acked && round == r && self.voters.binary_search(&from).is_ok() => {
                self.probe_acks.insert(from, now);
                let mine = matches!(self.role, Role::Leader { epoch: e, .. } if e == *epoch);
                if mine && let Role::Leader { rounds, .. } = &mut self.role {
                    if let Some((_, acks)) = rounds.get_mut(round) {
                        acks.insert(from);
                    }
                    self.count_acks(*round);
                }
            }
            (
                ElectionRequest::PreVote { epoch, .. },
                Some(ElectionResponse::WouldPromise { epoch: would }),
            ) if epoch == would => {
                if let Role::Candidate {
                    epoch: mine,
                    promises,
                    pre: true,
                    ..
                } = &mut self.role
                    && mine == epoch
                    && self.voters.binary_search(&from).is_ok()
                {
                    promises.insert(from);
                }
                self.check_pre_vote(now, &mut out);
            }
            (
                ElectionRequest::Prepare { epoch, .. } | ElectionRequest::PreVote { epoch, .. },
                response,
            ) if !matches!(
                response,
                Some(ElectionResponse::Promise { .. } | ElectionResponse::WouldPromise { .. })
            ) =>
            {
                if let Some(ElectionResponse::Reject {
                    promised, reason, ..
                }) = response
                    && *reason != RejectReason::Config
                {
                    self.observe_epoch(*promised);
                }
                // A refusal counts against the phase it answers.
                let asked_pre = matches!(request, ElectionRequest::PreVote { .. });
                let current = matches!(self.role, Role::Candidate { epoch: e, pre, .. } if e == *epoch && pre == asked_pre);
                if current {
                    self.note_refusal(now, from, response);
                }
            }
            (
                _,
                Some(ElectionResponse::Reject {
                    promised, reason, ..
                }),
            ) => {
                if *reason != RejectReason::Config {
                    self.observe_epoch(*promised);
                }
                // A refusal proves the voter reachable, unless it refused
                // this node's configuration (V1): then this node reaches
                // nobody it could lead, and must not look eligible.
                if matches!(request, ElectionRequest::Probe { .. })
                    && *reason != RejectReason::Config
                {
                    self.probe_acks.insert(from, now);
                }
            }
            (ElectionRequest::Probe { .. }, Some(ElectionResponse::Noted { recovering }))
                if !recovering =>
            {
                self.probe_acks.insert(from, now);
            }
            (
                ElectionRequest::Sync { .. },
                Some(ElectionResponse::State {
                    promised,
                    recovering,
                    up_ms,
                    memory,
                }),
            ) => {
                self.observe_epoch(*promised);
                let reply = (*promised, *recovering, *up_ms, *memory);
                if let ElectionRequest::Sync { fresh: true, .. } = request {
                    self.fresh_replies.insert(from, reply);
                }
                self.sync_replies.insert(from, reply);
            }
            _ => {}
        }
        self.announce(now, &mut out);
        out
    }
}

#[cfg(test)]
mod tests;
