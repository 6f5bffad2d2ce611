//! The node driver: one tokio task owns the election state machine and the
//! lock table, and is the only place that reads their clock, sends their
//! messages and persists their state. Everything reaches it through a
//! bounded channel.
//!
//! Owning both in one task makes a voter's promise and its acceptance of
//! replicated lock entries one sequence: once it promised epoch `e`, no
//! entry of an older epoch is merged, so the copy it handed the new leader
//! with its promise stays complete.
//!
//! This file is the loop: the order of inputs and the shared state. One
//! adapter per protocol turns its core's outputs into effects:
//! `election.rs` (election requests and answers, the core's outputs, the
//! recovery carried out), `locks.rs` (client lock requests, the table's
//! outputs, voters' answers to batches), `voter.rs` (a batch from the
//! leader, persisted before its ack).
//!
//! Owns: the order of inputs, the effects (sends, persists, timers), and
//! the glue between the cores. Must not decide a protocol rule itself:
//! what to promise, grant, merge, ack or resend is the cores' answer
//! (`election`, `locks::table`, `replication`), and what is durable the
//! disk's (`storage`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::error;

use crate::clock::Clock;
use crate::election::{Election, ElectionRequest, ElectionResponse, Leadership};
use crate::ids::{BatchId, Epoch, NodeId};
use crate::locks::{Entry, LockReply, LockRequest, LockTable, Replica};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::replication::{Answer, Copies};
use crate::rpc::{Response, Rpc, VoterRequest, VoterSnapshot};
use crate::storage::Persister;

pub(crate) mod anti_entropy;
mod election;
mod locks;
mod records;
mod voter;

pub(crate) use records::records_complete;

/// Inputs queued for the driver before senders wait.
pub(crate) const INPUT_QUEUE_MAX: usize = 1024;
/// Leadership changes kept per subscriber.
pub(crate) const LEADER_EVENTS_QUEUE_MAX: usize = 256;
/// Inputs handled before the open lock batch is flushed: requests that
/// arrive together share one replication round.
const BATCH_INPUTS_MAX: usize = 128;

pub(crate) enum Input {
    Request {
        from: NodeId,
        request: ElectionRequest,
        reply: oneshot::Sender<Response>,
    },
    Response {
        from: NodeId,
        request: ElectionRequest,
        response: Option<ElectionResponse>,
        snapshot: Option<VoterSnapshot>,
    },
    Lock {
        from: NodeId,
        request: LockRequest,
        reply: oneshot::Sender<LockReply>,
    },
    /// A replication batch from the leader to this voter.
    Voter {
        from: NodeId,
        request: VoterRequest,
        reply: oneshot::Sender<Answer>,
    },
    /// A voter's answer to a replication batch (`None`: no answer).
    Replicated {
        epoch: Epoch,
        batch: BatchId,
        to: NodeId,
        entries: Vec<Entry>,
        reply: Option<Answer>,
    },
    Resign {
        done: oneshot::Sender<()>,
    },
    /// The candidate's promise to itself of `epoch` is durable.
    Persisted {
        epoch: Epoch,
    },
    /// The data directory cannot be written: stop taking part (acting on
    /// a promise or an ack that is not durable could elect two leaders or
    /// lose a grant after a restart).
    DiskFailed,
    /// A peer asks for this node's copy of the lock table.
    Copy {
        reply: oneshot::Sender<Response>,
    },
    /// The records were reconciled with `from`, a promiser of `epoch`,
    /// in the run that promised.
    RecordsReconciled {
        epoch: Epoch,
        from: NodeId,
    },
    /// A complete voter's copy, for this voter's backfill: `done` hears
    /// whether it is merged and durable.
    Absorb {
        entries: Vec<Entry>,
        done: oneshot::Sender<bool>,
    },
    /// The table of a term this node leads, adopted from the promised
    /// copies apart from this task (K2).
    Adopted(Box<crate::locks::Adoption>),
    /// Adopting the table panicked: a bug; the node stops.
    AdoptionFailed,
    /// Stop processing anything for a while, as a SIGSTOP would
    /// (simulations only).
    #[cfg(feature = "sim")]
    Pause(Duration),
}

/// What the driver shares with the `Mesh` handle.
pub(crate) struct Shared {
    pub(crate) clock: Clock,
    pub(crate) leader: watch::Sender<Option<Leadership>>,
    /// Notified on every change of `leader`. Waiters on a `watch` are
    /// woken in an order tokio draws at random; a `Notify` wakes them in
    /// the order they came, so a seed replays a run.
    pub(crate) leader_changed: tokio::sync::Notify,
    pub(crate) events: broadcast::Sender<Option<Leadership>>,
    /// What [`Shared::is_leader`] answers from.
    pub(crate) lease: Mutex<LeaseCell>,
    pub(crate) max_epoch: std::sync::atomic::AtomicU64,
    /// The promise the data directory holds (0 without one).
    pub(crate) promised_durable: Arc<std::sync::atomic::AtomicU64>,
    /// Set once the node shut down or was killed.
    pub(crate) stopped: AtomicBool,
    /// When this voter last formed the cluster anew (E7), on `clock`.
    pub(crate) formed_anew_at: Mutex<Option<Duration>>,
    /// Set once this voter has recovered after its start (E7): copied from
    /// healthy voters, resumed from its data directory, or formed the
    /// cluster anew. Set from the start on a node that is no voter.
    pub(crate) recovered: AtomicBool,
    /// The idempotency records this node holds.
    pub(crate) records: Arc<crate::idempotency::Store>,
    /// This run of the node (its generation): a voter's records count
    /// for its promise only while the same run answers.
    pub(crate) life: u64,
    /// The records hold every completion this node's copies settled
    /// into them (PROTOCOL.md, "Idempotency" 8): set at recovery, or once
    /// they were filled in from a majority.
    pub(crate) complete: Arc<AtomicBool>,
    /// Where a new leader adopts its table (`Environment::adopt_latency`).
    pub(crate) adopt_latency: Option<Duration>,
}

/// The lease as the node's users see it, written before any message of
/// the driver leaves (E6: a leader stops serving, visibly, before it
/// resigns).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LeaseCell {
    /// While serving: the leadership and the lease end on the clock.
    pub(crate) serving: Option<(Leadership, Duration)>,
    /// The last term that stopped serving before its lease ran out
    /// (resigned, deposed, shut down), and when: from then on
    /// `is_leader()` answered false.
    pub(crate) ended: Option<(Epoch, Duration)>,
}

impl Shared {
    pub(crate) fn new(clock: Clock) -> Shared {
        Shared {
            clock,
            leader: watch::channel(None).0,
            leader_changed: tokio::sync::Notify::new(),
            events: broadcast::channel(LEADER_EVENTS_QUEUE_MAX).0,
            lease: Mutex::new(LeaseCell::default()),
            max_epoch: Default::default(),
            promised_durable: Default::default(),
            stopped: AtomicBool::new(false),
            formed_anew_at: Mutex::new(None),
            recovered: AtomicBool::new(false),
            records: Arc::default(),
            life: 0,
            complete: Arc::default(),
            adopt_latency: None,
        }
    }

    /// True once the node stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// True only while this node's lease is valid and it runs, read on
    /// the protocol clock at the moment of the call.
    pub(crate) fn is_leader(&self) -> bool {
        let cell = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        !self.is_stopped()
            && cell
                .serving
                .is_some_and(|(_, until)| self.clock.now() < until)
    }

    /// Publishes the lease this node serves under (`None`: not serving).
    pub(crate) fn set_lease(&self, serving: Option<(Leadership, Duration)>) {
        let now = self.clock.now();
        let mut cell = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((l, until)) = cell.serving
            && now < until
            && serving.is_none_or(|(n, _)| n != l)
        {
            cell.ended = Some((l.epoch, now));
        }
        cell.serving = serving;
    }

    /// The node stops (shutdown or kill): it serves nothing from now on.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.set_lease(None);
    }
}

/// Handle to the running driver.
pub(crate) struct Driver {
    pub(crate) tx: mpsc::Sender<Input>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        election: Election,
        locks: LockTable,
        replica: Replica,
        disk: Persister,
        rpc: Arc<Rpc>,
        membership: Arc<Membership>,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> Driver {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE_MAX);
        let started = shared.clock.now();
        // A node that is no voter keeps no copy: a copy it held as a voter
        // (an earlier voter set) hears no batch, prune or forget now, and
        // would bring back, should it lead, what the voters forgot.
        let replica = if election.is_voter() {
            replica
        } else {
            Replica::default()
        };
        let state = State {
            election,
            locks,
            copies: Copies::new(replica, disk.floor()),
            disk: Arc::new(disk),
            gone: Default::default(),
            tickets: BTreeMap::new(),
            next_ticket: 0,
            gossiped_epoch: Epoch::ZERO,
            runs_ended: std::collections::HashMap::new(),
            rpc,
            membership,
            shared,
            metrics,
            tx: tx.clone(),
            leaderless_since: Some(started),
            last_poll: None,
            last_collect: None,
            last_settle: None,
            settling: None,
            own_claim_bytes: 0,
            promisers: (Epoch::ZERO, BTreeMap::new()),
            reconciled: Default::default(),
            reconciling: Vec::new(),
            reconcile_deadline: None,
            reconcile_term_deadline: None,
            backfill: None,
            reconciled_epoch: None,
            records_lossy_marked: false,
            adopting: None,
            claim_published: None,
        };
        let task = tokio::spawn(state.run(rx));
        Driver {
            tx,
            task: Mutex::new(Some(task)),
        }
    }

    /// Hands over if leading (E6), waiting briefly for the resignations to
    /// be delivered.
    pub(crate) async fn resign(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Input::Resign { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), wait).await;
        }
    }

    #[cfg(feature = "sim")]
    pub(crate) async fn pause(&self, d: Duration) {
        let _ = self.tx.send(Input::Pause(d)).await;
    }

    pub(crate) async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

// The claims' byte bound leaves at least half the frame that carries the
// whole table with an election promise to everything else (checked when
// the crate compiles).
const _: () = assert!(crate::locks::claim::CLAIM_BYTES_MAX <= crate::rpc::FRAME_BYTES_MAX / 2);

/// How often the driver drops the claims' tombstones no begin needs any
/// more, from the leader's table and this voter's copies (I6).
const COLLECT_INTERVAL: Duration = Duration::from_secs(10);

/// How often the driver settles completions out of the lock copies into
/// the records: with the records file's sync interval, a completion
/// leaves the copies a few tenths of a second after it reached this node.
const SETTLE_INTERVAL: Duration = Duration::from_millis(250);

/// The grain of tokio's timers.
const TIMER_GRAIN: Duration = Duration::from_millis(1);

struct State {
    election: Election,
    locks: LockTable,
    /// This node's copy of the lock table (voters), the copies heard while
    /// recovering, and the candidacy's merge of its promises.
    copies: Copies<Entry>,
    /// Makes promises and lock entries durable off this task (a memory
    /// stand-in without a data directory).
    disk: Arc<Persister>,
    /// Members the membership lists as not alive.
    gone: std::collections::BTreeSet<NodeId>,
    /// Lock requests awaiting an answer. Ordered, so that a stop wakes
    /// their callers in one order every run (a seed replays a run).
    tickets: BTreeMap<u64, oneshot::Sender<LockReply>>,
    next_ticket: u64,
    /// The epoch last published in gossip.
    gossiped_epoch: Epoch,
    /// By peer, the latest run a later run proved ended (K5), as told to
    /// the lock table.
    runs_ended: std::collections::HashMap<NodeId, crate::ids::Generation>,
    rpc: Arc<Rpc>,
    membership: Arc<Membership>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Input>,
    leaderless_since: Option<Duration>,
    last_poll: Option<Duration>,
    /// When claims' tombstones were last collected (I6).
    last_collect: Option<Duration>,
    /// When completions were last settled into the records.
    last_settle: Option<Duration>,
    /// Completed claims found held by the records at the last sweep,
    /// settled once the records file has synced the changes sent before
    /// it (this many).
    settling: Option<(u64, Vec<(crate::locks::Name, crate::ids::Token)>)>,
    /// The weight of the claims' entries in this node's own copy, as of
    /// the last settle sweep.
    own_claim_bytes: usize,
    /// The epoch this node last ran for, and the runs its promisers
    /// promised from (itself first).
    promisers: (Epoch, BTreeMap<NodeId, crate::rpc::Life>),
    /// Promisers of the term's epoch whose records this leader holds.
    reconciled: std::collections::BTreeSet<NodeId>,
    /// The tasks reconciling them.
    reconciling: Vec<tokio::task::AbortHandle>,
    /// When the term hands over if begins are not answered yet.
    reconcile_deadline: Option<Duration>,
    /// The epoch whose reconciliation began last, and its deadline: the
    /// same term served again after a lease lapse keeps it.
    reconcile_term_deadline: Option<(Epoch, Duration)>,
    /// The task filling this voter's records in after a recovery.
    backfill: Option<tokio::task::AbortHandle>,
    /// The last epoch whose promisers' records this node reconciled with
    /// as leader (the same epoch served again needs no second time).
    reconciled_epoch: Option<Epoch>,
    /// The records file missed a change and the data directory is marked
    /// incomplete for it: completions settle on the records in memory.
    records_lossy_marked: bool,
    /// The epoch whose table is being adopted ([`Input::Adopted`]).
    adopting: Option<Epoch>,
    /// The claim to lead this node gossips now.
    claim_published: Option<crate::membership::LeaderClaim>,
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let heartbeat = self.election.timing().heartbeat;
        // The tick runs when the cores' next deadline is due, not on a
        // fixed period (see `next_due`): at rest a node's driver wakes
        // for its own timers twice a heartbeat, not five times.
        let tick = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(tick);
        let mut views = self.membership.watch();
        self.sync_peers();
        loop {
            // Biased, so a seed replays a run: the tick, then membership
            // (each is ready now and then, so a busy queue cannot starve
            // the lease's checks or the liveness of peers), then the queue,
            // which is drained after every branch besides.
            tokio::select! {
                biased;
                _ = &mut tick => {
                    Metrics::add(&self.metrics.driver_ticks, 1);
                    let now = self.shared.clock.now();
                    if now >= self.poll_due(now, heartbeat) {
                        self.last_poll = Some(now);
                        self.poll_reach(now).await;
                    }
                    let outs = self.election.handle_tick(now);
                    if !self.execute(outs, None).await {
                        return;
                    }
                    let now = self.shared.clock.now();
                    self.sync_locks(now);
                    let expired = self.locks.expired_total();
                    let outs = self.locks.handle_tick(now);
                    Metrics::add(&self.metrics.lock_expiries, self.locks.expired_total() - expired);
                    if !self.apply_locks(outs) {
                        return;
                    }
                    if self.last_collect.is_none_or(|at| now >= at + COLLECT_INTERVAL) {
                        self.last_collect = Some(now);
                        self.collect();
                    }
                    if self.last_settle.is_none_or(|at| now >= at + SETTLE_INTERVAL) {
                        self.last_settle = Some(now);
                        self.settle();
                    }
                    self.check_reconcile_deadline(now);
                }
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.sync_peers();
                }
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    if !self.handle(input).await {
                        return;
                    }
                }
            }
            // Whatever else is queued joins the same lock batch, whichever
            // branch ran: a tick that is due at every turn (its work took a
            // period) cannot starve the queue.
            for _ in 0..BATCH_INPUTS_MAX {
                let Ok(input) = rx.try_recv() else { break };
                if !self.handle(input).await {
                    return;
                }
            }
            let outs = self.locks.flush();
            if !self.apply_locks(outs) {
                return;
            }
            self.publish();
            let now = self.shared.clock.now();
            let due = self.next_due(now, heartbeat);
            // The protocol clock runs at least as fast as tokio's (it
            // counts a host's suspend too), so this wakes at `due` or after.
            let at = tokio::time::Instant::now() + due.saturating_sub(now);
            // Timers have a millisecond's grain: a deadline that moved by
            // less is not set again (the two clocks are read a moment
            // apart, so it moves by nanoseconds at every input).
            let set = tick.deadline();
            if tick.is_elapsed() || at + TIMER_GRAIN <= set || at >= set + TIMER_GRAIN {
                tick.as_mut().reset(at);
            }
        }
    }

    /// When gossip is next read: at the election's probes (a heartbeat
    /// apart) and half way between them, so that its reads take no wakes
    /// of their own beyond one a heartbeat.
    fn poll_due(&self, now: Duration, heartbeat: Duration) -> Duration {
        match (self.last_poll, self.election.last_probe_at()) {
            (Some(polled), Some(probed)) => {
                let half = probed + heartbeat / 2;
                if polled < half {
                    half
                } else {
                    probed + heartbeat
                }
            }
            _ => now,
        }
    }

    /// When the tick is next due: the election's and the lock table's
    /// next deadlines, and the next read of gossip (peers' reach marks,
    /// leaders' claims), every half heartbeat. Marks and claims move once
    /// a heartbeat; read only once a heartbeat, the reads fell in step
    /// with them, and members that are not voters followed a new leader
    /// about 140 ms later (`meshd bench membership`, 12 seeds). The
    /// election's deadline is a heartbeat away at most (its probe), so
    /// the collection and settle sweeps ride on these ticks, in the first
    /// after they are due, rather than wake the driver themselves.
    fn next_due(&self, now: Duration, heartbeat: Duration) -> Duration {
        let mut due = self
            .election
            .next_deadline(now)
            .min(self.poll_due(now, heartbeat));
        if let Some(at) = self.locks.next_deadline(now, heartbeat / 5) {
            due = due.min(at);
        }
        // Passed while inputs were handled: due now (the tick clears it).
        if let Some(at) = self.reconcile_deadline {
            due = due.min(at.max(now));
        }
        due
    }

    /// Returns false when the driver must stop (its promise could not be
    /// made durable).
    async fn handle(&mut self, input: Input) -> bool {
        let now = self.shared.clock.now();
        // E5: a lease that lapsed since the last tick stops the lock table
        // before this input is handled (acks included: nothing is told
        // after the lease ends).
        self.sync_locks(now);
        match input {
            Input::Request {
                from,
                request,
                reply,
            } => self.on_election_request(now, from, request, reply).await,
            Input::Response {
                from,
                request,
                response,
                snapshot,
            } => {
                self.on_election_answer(now, from, request, response, snapshot)
                    .await
            }
            Input::Lock {
                from,
                request,
                reply,
            } => self.handle_lock(now, from, request, reply),
            Input::Voter {
                from,
                request,
                reply,
            } => {
                self.handle_voter(from, request, reply);
                true
            }
            Input::Replicated {
                epoch,
                batch,
                to,
                entries,
                reply,
            } => {
                self.on_batch_answer(now, epoch, batch, to, entries, reply)
                    .await
            }
            #[cfg(feature = "sim")]
            Input::Pause(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Input::Persisted { epoch } => {
                let outs = self.election.handle_persisted(now, epoch);
                let ok = self.execute(outs, None).await;
                self.sync_locks(now);
                ok
            }
            Input::Adopted(adoption) => self.on_adopted(now, *adoption),
            Input::AdoptionFailed => {
                error!(
                    "adopting the lock table failed (a bug); the election and locks stop on this node"
                );
                false
            }
            Input::DiskFailed => {
                error!(
                    "the data directory cannot be written; the election and locks stop on this node"
                );
                false
            }
            Input::Resign { done } => self.on_resign(now, done).await,
            Input::Copy { reply } => {
                self.on_copy(reply);
                true
            }
            Input::RecordsReconciled { epoch, from } => {
                self.on_reconciled(epoch, from);
                true
            }
            Input::Absorb { entries, done } => {
                self.on_absorb(entries, done);
                true
            }
        }
    }

    /// What a disk callback calls when it could not make its job durable.
    fn failure_notice(&self) -> impl FnOnce() + Send + 'static {
        let tx = self.tx.clone();
        move || send_from_anywhere(&tx, Input::DiskFailed)
    }

    fn publish(&self) {
        let now = self.shared.clock.now();
        let leader = self.election.leader(now);
        let changed = self.shared.leader.send_if_modified(|current| {
            if *current != leader {
                *current = leader;
                true
            } else {
                false
            }
        });
        if changed {
            self.shared.leader_changed.notify_waiters();
        }
        let lease = self
            .election
            .lease_until()
            .zip(leader.filter(|l| l.id == self.election.id()))
            .map(|(until, l)| (l, until));
        self.shared.set_lease(lease);
        self.shared.max_epoch.store(
            self.election.max_epoch().0,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Hands `input` to the driver from any thread: the disk's (blocking
/// send), a task's, or the driver's own (never blocking it).
fn send_from_anywhere(tx: &mpsc::Sender<Input>, input: Input) {
    if let Err(mpsc::error::TrySendError::Full(input)) = tx.try_send(input) {
        let tx = tx.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let _ = tx.send(input).await;
                });
            }
            Err(_) => {
                let _ = tx.blocking_send(input);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// T2: the election and its driver never read a wall clock; wall time
    /// is for record retention only. Checked on the source itself.
    #[test]
    fn election_code_reads_no_wall_clock() {
        for file in [
            "src/election/mod.rs",
            "src/node/mod.rs",
            "src/node/election.rs",
            "src/node/locks.rs",
            "src/node/voter.rs",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            // The code proper: up to its tests, comments left out.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            for needle in ["SystemTime", "UNIX_EPOCH", "CLOCK_REALTIME"] {
                assert!(!code.contains(needle), "{file} uses {needle}");
            }
        }
    }
}
