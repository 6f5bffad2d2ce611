//! Model checking of the election, replication and lock-table cores with
//! stateright: three voters and one or two lock clients, searched breadth
//! first over every path of up to a bounded number of actions, every
//! order of the faults each configuration allows (message loss,
//! duplication, reordering and long delay, a node cut off, every process
//! paused past the lease, crashes and restarts on the same or an emptied
//! data directory, whole-cluster restarts), the clients' acquires,
//! retries and releases, and time passing.
//!
//! The nodes are the real sans-io cores ([`Election`], [`Copies`],
//! [`LockTable`]) wired the way the node driver wires them (`src/node/`):
//! every output of a core becomes a message, a disk write or a call into
//! another core, synchronously (a write is durable before the answer that
//! waits for it leaves, E1/E8). A client runs beside the agent it calls:
//! its call reaches that agent at once and so does the answer; a retry
//! (same request id, any agent) also stands for a call given up on, whose
//! answer is then not taken.
//!
//! Time is one clock all nodes share, and it moves only with every
//! message in flight delivered first (but those held back by `Delay`):
//! `Run1` moves it a quarter heartbeat and ticks every live node; `Elect`
//! runs on until every live node has recovered and one serves, `Recover`
//! until every live node has recovered (E7), `Lapse` until no node serves
//! (a lease ends), each stopping at that very instant, with what was sent
//! in it still in flight for the search to lose, hold back or reorder;
//! `Pause` moves the clock past a lease with no node ticking (every
//! process stopped at once). A lease's end is thus an instant the cores
//! compute by their own rules (the blackout of E3 included), ordered
//! against each fault the search places.
//!
//! Simplifications (PROTOCOL.md, "Model checking", lists them all):
//! gossip is exact and at once (each tick sees which nodes are up, their
//! "reaches quorum" marks and led epochs); a write, and the completion
//! the driver queues for it, take no time; a batch is flushed after every
//! input; a request to a node that restarted reaches its new life
//! (harsher than QUIC, like the simulation); drift is not modelled (one
//! clock; the simulations and `Timing` tests cover it); no renewals,
//! waiters or resigns.
//!
//! Invariants, checked after every delivery, tick and action: at most one
//! node serves as leader at any instant; one leader per epoch within one
//! life of the cluster; no two clients believe they hold the lock at one
//! instant, across lives (each client counts its lease as the library's
//! `HolderLease` does, from when it sent); one grant per token, and a new
//! grant's token above every earlier one of that life; no grant told to a
//! client is lost (it stays on a quorum of voters, counting those not yet
//! recovered); an ack counts only for the batch it answers.
//!
//! `cargo test --release --test model_check` runs the CI-sized search (a
//! debug build three actions less); `COORDMESH_MODEL_ACTIONS=N` searches
//! paths of up to N actions, and with `COORDMESH_MODEL_DFS=1` depth
//! first, in little memory (README, "Model checking"). `tests/reverts/run`
//! reverts each fix of the safety review's findings 1 to 4 in turn and
//! checks that this search reports a counterexample for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use coordmesh::election::{
    Election, ElectionRequest, ElectionResponse, Memory, Output, Recovery, Timing,
};
use coordmesh::ids::{BatchId, Epoch, NodeId, Token};
use coordmesh::locks::table::TableConfig;
use coordmesh::locks::{Entry, HolderLease, LockOutput, LockReply, LockRequest, LockTable, Ticket};
use coordmesh::locks::{Name, RecordsSay, Replica};
use coordmesh::replication::{self, Answer, Copies, Floor, Gate, Merge, Next, Settle, Verdict};
use coordmesh::storage::Stored;
use stateright::{Checker, HasDiscoveries, Model, Property};

const LOCK: &str = "job";
const TTL_MS: u64 = 3_000;
const STEP: Duration = Duration::from_millis(25);
/// The longest `Elect` runs for.
const ELECT_MAX: Duration = Duration::from_secs(4);
/// Deliveries made per step at most (resends to a dead voter
/// would otherwise go on for ever).
const RUN_DELIVERIES_MAX: usize = 64;

fn timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_millis(300),
        election_timeout: Duration::from_millis(320),
        drift: 0.01,
        stability_window: Duration::from_millis(1_000),
        lock_ttl_max: Duration::from_millis(TTL_MS),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    Election(ElectionRequest),
    Batch {
        epoch: Epoch,
        batch: BatchId,
        /// Which of its sender's batches this is (the model's own count,
        /// never reused): an ack counts only for the batch it answers.
        ghost: u32,
        voters: u64,
        entries: Vec<Entry>,
    },
    /// Forget pruned tombstones below a floor ("Locks" 8).
    Forget {
        epoch: Epoch,
        voters: u64,
        floor: Floor,
        entries: Vec<Entry>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// With a promise or a recovery answer, the voter's copy and floor.
    Election(ElectionResponse, Option<(Vec<Entry>, Floor)>),
    Voter(Answer),
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// A request on its way to `to`.
    Call {
        from: NodeId,
        from_life: u32,
        to: NodeId,
        body: Body,
    },
    /// The answer on its way back to the life that asked.
    Answer {
        to: NodeId,
        to_life: u32,
        from: NodeId,
        body: Body,
        reply: Reply,
    },
}

/// A data directory: what survives a crash.
#[derive(Debug, Clone, PartialEq)]
struct Disk {
    initialized: bool,
    promised: Epoch,
    entries: Replica,
    floor: Floor,
}

impl Disk {
    fn blank() -> Disk {
        Disk {
            initialized: false,
            promised: Epoch::ZERO,
            entries: Replica::default(),
            floor: Floor::default(),
        }
    }

    /// `storage::Persister::forget`: the floor, then the exact entries.
    fn forget(&mut self, floor: Floor, entries: &[Entry]) {
        self.floor = self.floor.max(floor);
        for e in entries {
            if self.entries.get(&e.name) == Some(e) {
                self.entries.remove(&e.name);
            }
        }
    }

    fn stored(&self) -> Stored {
        if self.initialized {
            Stored::Initialized {
                promised: self.promised,
                replica: self.entries.clone(),
            }
        } else {
            Stored::Blank
        }
    }

    fn write(&mut self, raise: Option<Epoch>, entries: &[Entry]) {
        if let Some(e) = raise {
            self.promised = self.promised.max(e);
        }
        self.entries.merge_all(entries.iter().cloned());
    }
}

#[derive(Debug, Clone)]
struct Node {
    id: NodeId,
    life: u32,
    up: bool,
    election: Election,
    copies: Copies<Entry>,
    locks: LockTable,
    disk: Option<Disk>,
    /// Lock requests awaiting an answer: the client, its call, and the
    /// request id of an acquire.
    tickets: BTreeMap<u64, (usize, u8, String)>,
    next_ticket: u64,
    reach: u64,
    gone: BTreeSet<NodeId>,
    /// Batches to send again at the next tick (REPLICATE_RETRY).
    resend: Vec<(NodeId, Body)>,
    /// Batches this life sent, counted (the next one's ghost).
    batches_sent: u32,
    /// The ghost of the batch last sent under each id still pending.
    sent: BTreeMap<BatchId, u32>,
}

impl Node {
    /// Ghosts are kept only for batches still awaiting their majority
    /// (the state stays small; only a pending batch counts acks).
    fn forget_settled_batches(&mut self) {
        let locks = &self.locks;
        self.sent.retain(|b, _| locks.is_pending(*b));
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Hold {
    client: usize,
    token: Token,
    from: Duration,
    until: Duration,
}

#[derive(Debug, Clone, PartialEq)]
struct Client {
    acquires: u8,
    retries: u8,
    request_id: Option<String>,
    /// Calls made so far (each answer names the call it answers).
    calls: u8,
    /// The call awaiting an answer: its number, the request, and when
    /// it was sent.
    pending: Option<(u8, LockRequest, Duration)>,
    /// The lease it believes it holds.
    holds: Option<(Token, HolderLease, NodeId)>,
}

/// The whole system.
#[derive(Clone)]
struct Sys {
    now: Duration,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    net: Vec<Item>,
    /// Messages held back past any number of steps (a stalled stream),
    /// delivered late by `Late`, or never.
    delayed: Vec<Item>,
    faults_left: u8,
    delays_left: u8,
    reorders_left: u8,
    crashes_left: u8,
    /// Whole-cluster restarts left.
    restarts_left: u8,
    pauses_left: u8,
    partitions_left: u8,
    /// A node cut off from every other node (its clients still reach it:
    /// they run beside it).
    isolated: Option<NodeId>,
    // What the invariants look at.
    leaders: BTreeMap<Epoch, NodeId>,
    /// Terms seen served over the whole run (both lives of a cluster
    /// that formed anew).
    terms: u32,
    holds: Vec<Hold>,
    grants: BTreeMap<Token, String>,
    /// Clients run idempotent operations on one key instead of taking the
    /// lock: a begin takes the key's claim (a lock of the claim
    /// namespace), a claimant runs the operation at once, and completes
    /// it (result: its client number) in place of a release.
    claims: bool,
    /// Operations run: the client, its claim, and whether the claim said
    /// an earlier claimant's lease ran out.
    executions: Vec<(usize, Token, bool)>,
    /// The result the first caller was told (a replay or a recorded
    /// completion); every later one must be the same.
    told: Option<Vec<u8>>,
    /// Claims whose completion a client was told is recorded.
    recorded: BTreeSet<Token>,
    /// The highest-ranked tombstone of the lock a leader had forgotten
    /// ("Locks" 8): no copy may hold the lock below it again, and the
    /// grants it ended are no longer looked for.
    forgotten: Option<Entry>,
    violations: Vec<String>,
    /// Actions taken from the start.
    actions: u8,
    /// Whether `actions` is part of the state's identity (depth first).
    actions_keyed: bool,
}

impl fmt::Debug for Sys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let serving: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.up && n.election.is_serving(self.now))
            .map(|n| n.id.0)
            .collect();
        write!(
            f,
            "t={:?} serving={:?} up={:?} promised={:?} in_flight={} holds={:?} violations={:?}",
            self.now,
            serving,
            self.nodes.iter().map(|n| n.up).collect::<Vec<_>>(),
            self.nodes
                .iter()
                .map(|n| n.election.promised().0)
                .collect::<Vec<_>>(),
            self.net.len(),
            self.holds,
            self.violations
        )
    }
}

/// Two states are one if every core, message and record is the same:
/// compared through the cores' full `Debug` output (they do not derive
/// `Hash` or `Eq`; the output prints every field).
impl Sys {
    fn key(&self) -> String {
        Key(self).to_string()
    }
}

impl Hash for Sys {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The same text as `key`, fed to the hasher as it is written.
        struct Feed<'a, H>(&'a mut H);
        impl<H: Hasher> fmt::Write for Feed<'_, H> {
            fn write_str(&mut self, text: &str) -> fmt::Result {
                self.0.write(text.as_bytes());
                Ok(())
            }
        }
        let _ = fmt::Write::write_fmt(&mut Feed(state), format_args!("{}", Key(self)));
    }
}

/// Every part of the state, printed.
struct Key<'a>(&'a Sys);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(
            f,
            "{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{:?}|{:?}",
            s.now,
            s.nodes,
            s.clients,
            s.net,
            s.delayed,
            s.faults_left,
            s.delays_left,
            s.reorders_left,
            s.crashes_left,
            s.restarts_left,
            s.pauses_left,
            s.partitions_left,
            s.isolated,
            s.leaders,
            s.terms,
            s.holds,
            s.grants,
            s.violations
        )?;
        if s.claims {
            write!(f, "|{:?}|{:?}|{:?}", s.executions, s.told, s.recorded)?;
        }
        if let Some(e) = &s.forgotten {
            write!(f, "|{e:?}")?;
        }
        if s.actions_keyed {
            write!(f, "|{}", s.actions)?;
        }
        Ok(())
    }
}

impl PartialEq for Sys {
    fn eq(&self, other: &Sys) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Sys {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Action {
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    /// A message in flight held back: no `Run` delivers it.
    Delay(usize),
    /// A message held back arrives.
    Late(usize),
    /// Every message in flight delivered, in order, then a tick.
    Run1,
    /// Those until every live node has recovered and one serves (at
    /// most `ELECT_MAX`).
    Elect,
    /// Those until every live node has recovered (E7; at most
    /// `ELECT_MAX`), offered while one has not.
    Recover,
    /// Those until no node serves (a lease ends), offered while one
    /// does.
    Lapse,
    Pause,
    Crash(usize),
    Restart {
        node: usize,
        wipe: bool,
    },
    RestartAll,
    Isolate(usize),
    Heal,
    Acquire {
        client: usize,
        via: usize,
    },
    Retry {
        client: usize,
        via: usize,
    },
    Release {
        client: usize,
    },
}

/// The model: its size and fault budgets.
#[derive(Clone)]
struct Mesh {
    voters: usize,
    clients: usize,
    data_dirs: bool,
    faults: u8,
    reorders: u8,
    delays: u8,
    crashes: u8,
    /// Whole-cluster restarts (a power loss): every node at once.
    restarts: u8,
    pauses: u8,
    partitions: u8,
    acquires: u8,
    retries: u8,
    /// Idempotent operations instead of locks (see `Sys::claims`).
    claims: bool,
    /// How often the leader prunes released locks' tombstones.
    prune_every: Duration,
    horizon: Duration,
    /// The longest path searched, in actions.
    actions_max: u8,
    /// Depth first: the actions taken are part of a state's identity, so
    /// a state met again nearer the start is searched again (with more
    /// actions left).
    depth_first: bool,
}

impl Mesh {
    /// Three voters with data directories, two clients that acquire once
    /// each, no faults, ten seconds: each test adds its faults.
    fn base() -> Mesh {
        Mesh {
            voters: 3,
            clients: 2,
            data_dirs: true,
            faults: 0,
            reorders: 0,
            delays: 0,
            crashes: 0,
            restarts: 0,
            pauses: 0,
            partitions: 0,
            acquires: 1,
            retries: 0,
            claims: false,
            // Past the horizon: no pruning unless a model asks for it.
            prune_every: Duration::from_secs(3600),
            horizon: Duration::from_secs(10),
            actions_max: 0,
            depth_first: false,
        }
    }

    /// Every kind of fault, a few of each: two losses or duplications,
    /// two out-of-order deliveries, a message held back, a crash, a
    /// pause, a node cut off; and a retry.
    fn every_fault() -> Mesh {
        Mesh {
            faults: 2,
            reorders: 2,
            delays: 1,
            crashes: 1,
            pauses: 1,
            partitions: 1,
            retries: 1,
            ..Mesh::base()
        }
    }

    fn ids(&self) -> Vec<NodeId> {
        (1..=self.voters as u64).map(NodeId).collect()
    }

    fn node(&self, id: NodeId, life: u32, now: Duration, disk: Option<Disk>) -> Node {
        let first = life == 0;
        let (memory, promised, replica) = match &disk {
            Some(d) => d.stored().memory(),
            None => (Memory::None, Epoch::ZERO, Replica::default()),
        };
        let election = Election::new(
            id,
            &self.ids(),
            timing(),
            now,
            memory,
            promised,
            // The first start of a new cluster is declared (E7).
            first,
            id.0 * 7919 + u64::from(life),
        );
        let locks = LockTable::new(TableConfig {
            ttl_max_ms: TTL_MS,
            prune_every: self.prune_every,
            prune_wait: Duration::from_millis(200),
            ..TableConfig::new(&self.ids(), timing().drift)
        });
        let floor = disk.as_ref().map_or(Floor::default(), |d| d.floor);
        Node {
            id,
            life,
            up: true,
            election,
            copies: Copies::new(replica, floor),
            locks,
            disk,
            tickets: BTreeMap::new(),
            next_ticket: 0,
            reach: 0,
            gone: BTreeSet::new(),
            resend: Vec::new(),
            batches_sent: 0,
            sent: BTreeMap::new(),
        }
    }

    fn start(&self) -> Sys {
        let nodes = self
            .ids()
            .into_iter()
            .map(|id| {
                let disk = self.data_dirs.then(Disk::blank);
                self.node(id, 0, Duration::ZERO, disk)
            })
            .collect();
        let client = Client {
            acquires: 0,
            retries: 0,
            request_id: None,
            calls: 0,
            pending: None,
            holds: None,
        };
        let mut sys = Sys {
            now: Duration::ZERO,
            nodes,
            clients: vec![client; self.clients],
            net: Vec::new(),
            delayed: Vec::new(),
            faults_left: self.faults,
            delays_left: self.delays,
            reorders_left: self.reorders,
            crashes_left: self.crashes,
            restarts_left: self.restarts,
            pauses_left: self.pauses,
            partitions_left: self.partitions,
            isolated: None,
            leaders: BTreeMap::new(),
            terms: 0,
            holds: Vec::new(),
            grants: BTreeMap::new(),
            claims: self.claims,
            executions: Vec::new(),
            told: None,
            recorded: BTreeSet::new(),
            forgotten: None,
            violations: Vec::new(),
            actions: 0,
            actions_keyed: self.depth_first,
        };
        // The cluster forms with every message delivered: the search
        // starts from a served leader.
        sys.elect();
        while !sys.net.is_empty() {
            sys.deliver(0);
        }
        assert_eq!(
            sys.serving().len(),
            1,
            "the model's cluster formed: {sys:?}"
        );
        sys
    }
}

impl Sys {
    fn serving(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.up && n.election.is_serving(self.now))
            .map(|n| n.id)
            .collect()
    }

    fn index(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == id).expect("a node")
    }

    fn call(&mut self, from: usize, to: NodeId, body: Body) {
        let n = &self.nodes[from];
        self.net.push(Item::Call {
            from: n.id,
            from_life: n.life,
            to,
            body,
        });
    }

    /// The driver's tick: gossip in, the election's tick, the lock
    /// table's start or stop, its tick, the batch flush.
    fn tick(&mut self, i: usize) {
        let now = self.now;
        let peers: Vec<(NodeId, bool, u64, Epoch)> = self
            .nodes
            .iter()
            .map(|n| (n.id, n.up, n.reach, n.election.led_epoch()))
            .collect();
        for (id, up, reach, led) in peers {
            if id == self.nodes[i].id {
                continue;
            }
            let node = &mut self.nodes[i];
            if up {
                node.election.handle_peer(now, id, true, Some(reach));
                node.election.handle_peer_epoch(led);
                node.gone.remove(&id);
            } else {
                node.election.handle_peer_gone(id);
                if node.gone.insert(id) {
                    let outs = node.locks.handle_node_gone(id);
                    self.apply_locks(i, outs);
                }
            }
        }
        for (to, body) in std::mem::take(&mut self.nodes[i].resend) {
            self.call(i, to, body);
        }
        let outs = self.nodes[i].election.handle_tick(now);
        self.execute(i, outs);
        let outs = self.nodes[i].locks.handle_tick(now);
        self.apply_locks(i, outs);
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let outs = self.nodes[i].locks.flush();
        self.apply_locks(i, outs);
    }

    /// The election's outputs carried out (`node/election.rs` `execute`).
    fn execute(&mut self, i: usize, outs: Vec<Output>) {
        let now = self.now;
        let mut queue: std::collections::VecDeque<Output> = outs.into();
        while let Some(out) = queue.pop_front() {
            match out {
                Output::Send { to, request } => {
                    let live = self.nodes.iter().any(|n| n.id == to && n.up);
                    if live {
                        self.call(i, to, Body::Election(request));
                    } else {
                        let more = self.nodes[i]
                            .election
                            .handle_response(now, to, &request, None);
                        queue.extend(more);
                    }
                }
                Output::Persist(epoch) => {
                    let node = &mut self.nodes[i];
                    if let Some(d) = &mut node.disk {
                        d.write(Some(epoch), &[]);
                    }
                    queue.extend(node.election.handle_persisted(now, epoch));
                }
                Output::Recovered(how) => {
                    if how == Recovery::Anew {
                        // A cluster that forms anew remembers no epoch
                        // or token of its earlier life (E7): they start
                        // again, once every earlier lease has ended. Only
                        // the holders' check spans both lives.
                        self.leaders.clear();
                        self.grants.clear();
                        self.forgotten = None;
                    }
                    let node = &mut self.nodes[i];
                    let durable = node.disk.as_ref().is_some_and(|d| d.initialized);
                    let settle = node.copies.settle(&how, durable);
                    let promised = node.election.promised();
                    if let Some(d) = &mut node.disk {
                        match settle {
                            Settle::Initialize(copy) => {
                                *d = Disk {
                                    initialized: true,
                                    promised,
                                    entries: copy,
                                    floor: d.floor.max(node.copies.floor()),
                                }
                            }
                            Settle::Promise => d.write(Some(promised), &[]),
                            Settle::Nothing => {}
                        }
                    }
                }
                Output::PublishReach(reach) => self.nodes[i].reach = reach,
                Output::ElectionStarted { epoch } => {
                    self.nodes[i].copies.start_candidacy(epoch);
                }
                Output::LeaderChanged(_) | Output::Serving(_) => {}
            }
        }
        self.sync_locks(i);
    }

    /// `node/locks.rs` `sync_locks`: the table follows the lease (E5, K2).
    fn sync_locks(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let serving = node
            .election
            .leader(now)
            .filter(|l| l.id == node.id && node.election.is_serving(now))
            .map(|l| l.epoch);
        let outs = match (serving, node.locks.epoch()) {
            (Some(e), Some(l)) if e == l => return,
            (Some(e), _) => match node.copies.takeover(e) {
                Some(merged) => {
                    let mut outs = node.locks.take_over(now, e, merged);
                    // The model settles no completion out of the copies:
                    // the promised copies hold every one, and the records
                    // have nothing to add before claims are served.
                    outs.extend(node.locks.records_reconciled(now, |_| None));
                    outs
                }
                None => return,
            },
            (None, Some(_)) => node.locks.step_down(),
            (None, None) => return,
        };
        self.apply_locks(i, outs);
        self.nodes[i].forget_settled_batches();
    }

    /// `node/locks.rs` `apply_locks`: answers, batches, the leader's own
    /// ack once its copy is written (E8) and it has recovered (E7).
    fn apply_locks(&mut self, i: usize, outs: Vec<LockOutput>) {
        let now = self.now;
        let mut queue: std::collections::VecDeque<LockOutput> = outs.into();
        while let Some(out) = queue.pop_front() {
            match out {
                LockOutput::Reply { ticket, reply } => {
                    let node = &mut self.nodes[i];
                    if let Some((c, call, request_id)) = node.tickets.remove(&ticket.0) {
                        let via = node.id;
                        self.on_client_answer(c, call, &request_id, via, Some(reply));
                    }
                }
                LockOutput::Replicate { batch, entries } => {
                    let node = &mut self.nodes[i];
                    let Some(epoch) = node.locks.epoch() else {
                        continue;
                    };
                    let voter = node.election.is_voter();
                    node.copies.issued(epoch, &entries, voter);
                    let ghost = node.batches_sent;
                    node.batches_sent += 1;
                    node.sent.insert(batch, ghost);
                    let me = node.id;
                    let voters = node.election.config_hash();
                    let ids: Vec<NodeId> = node.election.voters().to_vec();
                    let own_ack = node.election.is_voter() && node.election.recovered();
                    if own_ack && let Some(d) = &mut node.disk {
                        d.write(None, &entries);
                    }
                    for v in ids {
                        if v != me {
                            let body = Body::Batch {
                                epoch,
                                batch,
                                ghost,
                                voters,
                                entries: entries.clone(),
                            };
                            self.call(i, v, body);
                        }
                    }
                    if own_ack {
                        queue.extend(self.nodes[i].locks.handle_ack(now, batch, me));
                    }
                }
                LockOutput::Forget { floor, entries } => {
                    for e in &entries {
                        if self.forgotten.as_ref().is_none_or(|f| f.rank() < e.rank()) {
                            self.forgotten = Some(e.clone());
                        }
                    }
                    let node = &mut self.nodes[i];
                    let Some(epoch) = node.locks.epoch() else {
                        continue;
                    };
                    node.copies.forget(floor, &entries);
                    if let Some(d) = &mut node.disk {
                        d.forget(floor, &entries);
                    }
                    let me = node.id;
                    let voters = node.election.config_hash();
                    let ids: Vec<NodeId> = node.election.voters().to_vec();
                    for v in ids {
                        if v != me {
                            let body = Body::Forget {
                                epoch,
                                voters,
                                floor,
                                entries: entries.clone(),
                            };
                            self.call(i, v, body);
                        }
                    }
                }
                // The model runs user locks only.
                LockOutput::TokensSpent
                | LockOutput::NewEpochNeeded
                | LockOutput::Completed { .. } => {}
            }
        }
    }

    /// A request reaches live node `i`.
    fn on_call(&mut self, i: usize, from: NodeId, from_life: u32, body: Body) {
        let now = self.now;
        self.sync_locks(i);
        match body.clone() {
            Body::Election(request) => {
                let node = &mut self.nodes[i];
                let (handled, outs) = node.election.handle_request(now, from, &request);
                if let (Some(e), Some(d)) = (handled.persist, &mut node.disk) {
                    d.write(Some(e), &[]);
                }
                let snapshot = matches!(
                    handled.response,
                    ElectionResponse::Promise { .. } | ElectionResponse::State { .. }
                )
                .then(|| (node.copies.snapshot(), node.copies.floor()));
                let item = Item::Answer {
                    to: from,
                    to_life: from_life,
                    from: node.id,
                    body,
                    reply: Reply::Election(handled.response, snapshot),
                };
                self.net.push(item);
                self.execute(i, outs);
            }
            Body::Forget {
                epoch,
                voters,
                floor,
                entries,
            } => {
                let node = &mut self.nodes[i];
                let answer = if node.election.may_forget(epoch, voters) && floor.epoch == epoch {
                    node.copies.forget(floor, &entries);
                    if let Some(d) = &mut node.disk {
                        d.forget(floor, &entries);
                    }
                    Answer::Acked
                } else {
                    Answer::Refused {
                        promised: node.election.promised(),
                    }
                };
                self.answer_voter(i, from, from_life, body, answer);
            }
            Body::Batch {
                epoch,
                batch,
                voters,
                entries,
                ..
            } => {
                let node = &mut self.nodes[i];
                let gate = match node.election.handle_replicate(epoch, voters) {
                    Ok(raise) => Gate::Open { raise },
                    Err((reason, promised)) => Gate::Closed {
                        promised,
                        config_mismatch: reason == coordmesh::election::RejectReason::Config,
                    },
                };
                let answer = match node.copies.on_batch(gate, epoch, batch, entries) {
                    Verdict::Refuse { promised } => Answer::Refused { promised },
                    Verdict::Stale => Answer::Stale,
                    Verdict::Ack { raise, entries } => {
                        if let Some(d) = &mut node.disk {
                            d.write(raise, &entries);
                        }
                        Answer::Acked
                    }
                };
                self.answer_voter(i, from, from_life, body, answer);
            }
        }
        self.flush(i);
    }

    /// Live node `i` answers a voter request of `from`'s life `from_life`.
    fn answer_voter(&mut self, i: usize, from: NodeId, from_life: u32, body: Body, answer: Answer) {
        let item = Item::Answer {
            to: from,
            to_life: from_life,
            from: self.nodes[i].id,
            body,
            reply: Reply::Voter(answer),
        };
        self.net.push(item);
    }

    /// Client `c`'s call number `call` reaches live node `i` (at once:
    /// a client runs beside the agent it calls).
    fn on_client_call(&mut self, i: usize, c: usize, call: u8, request: LockRequest) {
        let now = self.now;
        self.sync_locks(i);
        let node = &mut self.nodes[i];
        node.next_ticket += 1;
        let ticket = Ticket(node.next_ticket);
        let request_id = match &request {
            LockRequest::Acquire { request_id, .. } => request_id.clone().unwrap_or_default(),
            LockRequest::Begin(b) => b.request_id.clone().unwrap_or_default(),
            _ => String::new(),
        };
        node.tickets.insert(ticket.0, (c, call, request_id));
        let owner = node.id;
        let outs = node
            .locks
            .handle_request(now, 0, ticket, owner, request, RecordsSay::default());
        self.apply_locks(i, outs);
        self.flush(i);
    }

    /// An answer (or, with `None`, the failure of a request) reaches the
    /// node that asked.
    fn on_answer(&mut self, i: usize, from: NodeId, body: Body, reply: Option<Reply>) {
        let now = self.now;
        self.sync_locks(i);
        match body {
            Body::Election(request) => {
                let (response, snapshot) = match reply {
                    Some(Reply::Election(r, s)) => (Some(r), s),
                    _ => (None, None),
                };
                let node = &mut self.nodes[i];
                if let Some(table) = snapshot {
                    match (&request, &response) {
                        (
                            ElectionRequest::Prepare { epoch, .. },
                            Some(ElectionResponse::Promise { epoch: promised }),
                        ) if epoch == promised => {
                            node.copies.on_promise(*epoch, table.0);
                        }
                        (ElectionRequest::Sync { .. }, Some(ElectionResponse::State { .. }))
                            if node.election.keeps_sync_copy(&request) =>
                        {
                            node.copies.on_sync_answer(from, table.0, table.1)
                        }
                        _ => {}
                    }
                }
                let outs = node
                    .election
                    .handle_response(now, from, &request, response.as_ref());
                self.execute(i, outs);
            }
            // Nothing hangs on a voter's answer to a forget.
            Body::Forget { .. } => {}
            Body::Batch {
                epoch,
                batch,
                ghost,
                voters,
                entries,
            } => {
                let answer = match reply {
                    Some(Reply::Voter(a)) => Some(a),
                    _ => None,
                };
                let node = &mut self.nodes[i];
                if node.locks.epoch() != Some(epoch) {
                    return;
                }
                match replication::after_answer(epoch, answer, node.locks.is_pending(batch)) {
                    Next::CountAck => {
                        // An ack counts only for the batch it answers
                        // (K2; finding 2: ids reused within an epoch
                        // let an earlier stint's ack count for a later
                        // batch).
                        if node.sent.get(&batch).is_some_and(|g| *g != ghost) {
                            self.violations.push(format!(
                                "node {:?} counts an ack of its batch #{ghost} for batch #{} sent under the same id {batch:?}",
                                node.id, node.sent[&batch]
                            ));
                        }
                        let outs = node.locks.handle_ack(now, batch, from);
                        self.apply_locks(i, outs);
                        self.nodes[i].forget_settled_batches();
                    }
                    Next::Deposed { promised } => {
                        let outs = node.election.handle_higher_epoch(now, promised);
                        self.execute(i, outs);
                    }
                    Next::Resend { .. } => {
                        let body = Body::Batch {
                            epoch,
                            batch,
                            ghost,
                            voters,
                            entries,
                        };
                        node.resend.push((from, body));
                    }
                    Next::Forget => {}
                }
            }
        }
        self.flush(i);
    }

    /// A lock answer (or its failure) reaches a client.
    /// An agent answers client `c`'s call number `call` (`None`: the
    /// call failed). A grant counts as told whether or not the client
    /// still listens (it may have given up on that call); the client
    /// takes it only as the answer to the call it waits on.
    fn on_client_answer(
        &mut self,
        c: usize,
        call: u8,
        request_id: &str,
        via: NodeId,
        reply: Option<LockReply>,
    ) {
        let now = self.now;
        let token_ttl = match &reply {
            Some(LockReply::Granted { token, ttl_ms }) => Some((*token, *ttl_ms)),
            Some(LockReply::Claimed { claim, ttl_ms, .. }) => Some((*claim, *ttl_ms)),
            _ => None,
        };
        if let Some((token, _)) = token_ttl {
            // Tokens: one grant per token, and above every earlier
            // grant's (a grant that came too late to use included).
            match self.grants.get(&token) {
                Some(r) if r != request_id => self.violations.push(format!(
                    "token {token:?} granted to {r} and to {request_id}"
                )),
                Some(_) => {}
                None => {
                    if let Some((last, _)) = self.grants.last_key_value()
                        && *last > token
                    {
                        self.violations
                            .push(format!("token {token:?} granted after the higher {last:?}"));
                    }
                    self.grants.insert(token, request_id.to_string());
                }
            }
        }
        if self.clients[c].pending.as_ref().is_none_or(|p| p.0 != call) {
            return;
        }
        let Some((_, request, sent)) = self.clients[c].pending.take() else {
            return;
        };
        // What a caller is told of the key's result: one result, ever.
        let told = match (&reply, &request) {
            (Some(LockReply::Replay { facts, .. }), _) => {
                facts.completion.as_ref().map(|c| c.result.clone())
            }
            (Some(LockReply::Recorded), LockRequest::Complete { claim, result, .. }) => {
                self.recorded.insert(*claim);
                Some(result.clone())
            }
            _ => None,
        };
        if let Some(result) = told {
            match &self.told {
                Some(first) if *first != result => self
                    .violations
                    .push(format!("client {c} told result {result:?} after {first:?}")),
                Some(_) => {}
                None => self.told = Some(result),
            }
        }
        let Some((token, ttl)) = token_ttl else {
            return;
        };
        let lease = HolderLease::granted(sent, Duration::from_millis(ttl), timing().drift);
        if !lease.is_valid(now) {
            return;
        }
        // No two holders at one instant: every other client's lease must
        // have ended (or been released) by now.
        for h in &self.holds {
            if h.client != c && h.until > now {
                self.violations.push(format!(
                    "client {c} holds {token:?} from {now:?} while client {} holds {:?} until {:?}",
                    h.client, h.token, h.until
                ));
            }
        }
        self.holds.push(Hold {
            client: c,
            token,
            from: now,
            until: lease.valid_until(),
        });
        // The claimant runs the operation now: once per key, unless told
        // an earlier claimant's lease ran out (I5). A claim told again (a
        // retry with its request id) is the same run.
        let again = self.executions.iter().any(|(_, t, _)| *t == token);
        if let Some(LockReply::Claimed { recovered, .. }) = reply
            && !again
        {
            if !recovered && let Some((first, t, _)) = self.executions.first() {
                self.violations.push(format!(
                    "client {c} runs the operation under {token:?} not told recovered, after client {first} ran it under {t:?}"
                ));
            }
            self.executions.push((c, token, recovered));
        }
        self.clients[c].holds = Some((token, lease, via));
    }

    fn deliver(&mut self, k: usize) {
        let item = self.net.remove(k);
        self.arrive(item);
        self.check();
    }

    /// A message arrives (or fails, cut off or to a dead node).
    fn arrive(&mut self, item: Item) {
        // A node cut off reaches no other node, nor they it.
        let cut =
            |a: NodeId, b: NodeId| self.isolated.is_some_and(|n| a != b && (a == n || b == n));
        match item {
            Item::Call {
                from,
                from_life,
                to,
                body,
            } => {
                let i = self.index(to);
                if self.nodes[i].up && !cut(from, to) {
                    self.on_call(i, from, from_life, body);
                } else {
                    self.fail(from, from_life, to, body);
                }
            }
            Item::Answer {
                to,
                to_life,
                from,
                body,
                reply,
            } => {
                if cut(from, to) {
                    self.fail(to, to_life, from, body);
                    return;
                }
                let i = self.index(to);
                if self.nodes[i].up && self.nodes[i].life == to_life {
                    self.on_answer(i, from, body, Some(reply));
                }
            }
        }
    }

    /// The caller of a request learns it failed.
    fn fail(&mut self, from: NodeId, from_life: u32, to: NodeId, body: Body) {
        let i = self.index(from);
        if self.nodes[i].up && self.nodes[i].life == from_life {
            self.on_answer(i, to, body, None);
        }
    }

    fn lose(&mut self, k: usize) {
        match self.net.remove(k) {
            Item::Call {
                from,
                from_life,
                to,
                body,
            } => self.fail(from, from_life, to, body),
            Item::Answer {
                to,
                to_life,
                from,
                body,
                ..
            } => self.fail(to, to_life, from, body),
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        for i in 0..self.nodes.len() {
            if self.nodes[i].up {
                self.tick(i);
            }
        }
        self.check();
    }

    /// Every message in flight delivered promptly, then one step.
    fn run1(&mut self) {
        let mut n = 0;
        while !self.net.is_empty() && n < RUN_DELIVERIES_MAX {
            self.deliver(0);
            n += 1;
        }
        self.step();
    }

    /// Time passes, every message delivered promptly, until `done` holds
    /// (checked after every delivery and every tick, so the search can
    /// place a fault at that very instant: the messages sent with it
    /// are still in flight) or `longest` has passed.
    fn run_until(&mut self, longest: Duration, done: impl Fn(&Sys) -> bool) {
        let until = self.now + longest;
        let mut delivered = 0;
        while self.now < until && !done(self) {
            if !self.net.is_empty() && delivered < RUN_DELIVERIES_MAX {
                self.deliver(0);
                delivered += 1;
            } else {
                self.step();
                delivered = 0;
            }
        }
    }

    /// Until every live node has recovered and one serves.
    fn elect(&mut self) {
        self.run_until(ELECT_MAX, Sys::elected);
    }

    fn elected(&self) -> bool {
        self.all_recovered() && self.serving().len() == 1
    }

    /// Until every live node has recovered (E7).
    fn recover(&mut self) {
        self.run_until(ELECT_MAX, Sys::all_recovered);
    }

    fn all_recovered(&self) -> bool {
        self.nodes.iter().all(|n| !n.up || n.election.recovered())
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.up = false;
        node.resend.clear();
        // Its clients' calls fail: they may retry elsewhere.
        for (c, call, _) in std::mem::take(&mut node.tickets).into_values() {
            if self.clients[c]
                .pending
                .as_ref()
                .is_some_and(|p| p.0 == call)
            {
                self.clients[c].pending = None;
            }
        }
    }

    fn restart(&mut self, model: &Mesh, i: usize, wipe: bool) {
        let old = &self.nodes[i];
        let disk = match &old.disk {
            Some(_) if wipe => Some(Disk::blank()),
            d => d.clone(),
        };
        let node = model.node(old.id, old.life + 1, self.now, disk);
        self.nodes[i] = node;
    }

    /// Client `c` calls node `via` (giving up on any call it waited on:
    /// that answer, if it comes, is not taken). The call reaches the node
    /// at once, or fails at once if the node is down.
    fn client_send(&mut self, c: usize, via: usize, request: LockRequest) {
        let client = &mut self.clients[c];
        client.calls += 1;
        let call = client.calls;
        client.pending = Some((call, request.clone(), self.now));
        if self.nodes[via].up {
            self.on_client_call(via, c, call, request);
        } else {
            self.clients[c].pending = None;
        }
        self.check();
    }

    /// After every delivery, tick and action: one serving leader at most,
    /// one per epoch; no reported grant lost.
    fn check(&mut self) {
        // The first violation is the one a counterexample shows.
        if self.violations.is_empty() {
            self.check_leaders();
        }
        if self.violations.is_empty() {
            self.check_grants_kept();
        }
        if self.violations.is_empty() {
            self.check_forgotten_stays_forgotten();
        }
    }

    /// "Locks" 8: once a leader forgot a tombstone (every voter held it),
    /// no voter's copy (or a down voter's data directory) holds its lock
    /// below it again: a late batch, a recovery copy or a promise must
    /// not bring an ended grant back.
    fn check_forgotten_stays_forgotten(&mut self) {
        let Some(f) = &self.forgotten else {
            return;
        };
        for n in &self.nodes {
            let copy = if n.up {
                Some(n.copies.own())
            } else {
                n.disk.as_ref().map(|d| &d.entries)
            };
            if let Some(e) = copy.and_then(|c| c.get(&f.name))
                && e.rank() < f.rank()
            {
                let message = format!(
                    "node {:?} holds {e:?}, below the forgotten tombstone {f:?}",
                    n.id
                );
                self.violations.push(message);
                return;
            }
        }
    }

    /// No committed entry lost (K2, E7, E8): every grant a client was told
    /// of in this life of the cluster is held, or outranked by a later
    /// entry of its lock, by a quorum of voters, counting those that have
    /// not recovered yet (E7: they neither promise nor ack until they
    /// copied from enough healthy voters to hold it, or the cluster forms
    /// anew once every lease ran out). A voter that is up holds what its
    /// copy holds; one that is down, what its data directory holds (none,
    /// or a blank one: it will recover).
    fn check_grants_kept(&mut self) {
        let quorum = self.nodes.len() / 2 + 1;
        let name = if self.claims {
            Name::claim(LOCK)
        } else {
            Name::lock(LOCK)
        };
        // A completion told recorded stays on a quorum (I2, K2): its
        // tombstone, or a later claim's entry (after the record expires;
        // never within the model's horizon).
        for &token in &self.recorded {
            let holds = |r: &Replica| {
                r.get(&name).is_some_and(|e| {
                    e.token > token
                        || (e.token == token
                            && e.claim.as_deref().is_some_and(|f| f.completion.is_some()))
                })
            };
            let kept = self.voters_keeping(holds);
            if kept < quorum {
                self.violations.push(format!(
                    "the completion under {token:?} (told recorded at or before {:?}) is held by {kept} voters",
                    self.now
                ));
                return;
            }
        }
        for (&token, request_id) in &self.grants {
            // Ended, every voter held its end, and forgotten ("Locks" 8).
            if self.forgotten.as_ref().is_some_and(|f| f.token >= token) {
                continue;
            }
            let holds = |r: &Replica| r.get(&name).is_some_and(|e| e.token >= token);
            let kept = self.voters_keeping(holds);
            if kept < quorum {
                self.violations.push(format!(
                    "the grant of {token:?} to {request_id} (told at or before {:?}) is held by {kept} voters",
                    self.now
                ));
                return;
            }
        }
    }

    /// Voters that keep what `holds` says of a copy: up and holding it
    /// (or still recovering: they copy before they vote), or down with an
    /// initialized data directory holding it (down without one, they come
    /// back recovering).
    fn voters_keeping(&self, holds: impl Fn(&Replica) -> bool) -> usize {
        self.nodes
            .iter()
            .filter(|n| {
                if n.up {
                    !n.election.recovered() || holds(n.copies.own())
                } else {
                    match &n.disk {
                        Some(d) if d.initialized => holds(&d.entries),
                        _ => true,
                    }
                }
            })
            .count()
    }

    fn check_leaders(&mut self) {
        let serving = self.serving();
        if serving.len() > 1 {
            self.violations
                .push(format!("{serving:?} serve at once at {:?}", self.now));
        }
        for n in &self.nodes {
            if !(n.up && n.election.is_serving(self.now)) {
                continue;
            }
            let Some(l) = n.election.leader(self.now) else {
                continue;
            };
            match self.leaders.get(&l.epoch) {
                Some(id) if *id != n.id => self.violations.push(format!(
                    "epoch {:?} served by {id:?} and {:?}",
                    l.epoch, n.id
                )),
                Some(_) => {}
                None => {
                    self.leaders.insert(l.epoch, n.id);
                    self.terms += 1;
                }
            }
        }
    }
}

impl Model for Mesh {
    type State = Sys;
    type Action = Action;

    fn init_states(&self) -> Vec<Sys> {
        vec![self.start()]
    }

    fn actions(&self, s: &Sys, actions: &mut Vec<Action>) {
        if !s.violations.is_empty() {
            return;
        }
        for (k, item) in s.net.iter().enumerate() {
            if k == 0 || s.reorders_left > 0 {
                actions.push(Action::Deliver(k));
            }
            if s.faults_left > 0 {
                actions.push(Action::Lose(k));
                if matches!(item, Item::Call { .. }) {
                    actions.push(Action::Duplicate(k));
                }
            }
            if s.delays_left > 0 {
                actions.push(Action::Delay(k));
            }
        }
        for j in 0..s.delayed.len() {
            actions.push(Action::Late(j));
        }
        actions.push(Action::Run1);
        if !s.elected() {
            actions.push(Action::Elect);
        }
        if !s.serving().is_empty() {
            actions.push(Action::Lapse);
        }
        if s.nodes.iter().any(|n| n.up && !n.election.recovered()) {
            actions.push(Action::Recover);
        }
        if s.pauses_left > 0 {
            actions.push(Action::Pause);
        }
        // Every directory kept: a majority that loses its disks forms a
        // new cluster, outside what the protocol promises (PROTOCOL.md).
        if s.restarts_left > 0 {
            actions.push(Action::RestartAll);
        }
        match s.isolated {
            Some(_) => actions.push(Action::Heal),
            None if s.partitions_left > 0 => {
                for i in 0..s.nodes.len() {
                    actions.push(Action::Isolate(i));
                }
            }
            None => {}
        }
        for (i, n) in s.nodes.iter().enumerate() {
            if n.up && s.crashes_left > 0 {
                actions.push(Action::Crash(i));
            }
            if !n.up {
                actions.push(Action::Restart {
                    node: i,
                    wipe: false,
                });
                if self.data_dirs {
                    actions.push(Action::Restart {
                        node: i,
                        wipe: true,
                    });
                }
            }
        }
        for (c, client) in s.clients.iter().enumerate() {
            // A retry (same request id, any node) also stands for a call
            // given up on: its request or its answer lost, or too slow.
            for via in 0..s.nodes.len() {
                if client.request_id.is_some() && client.retries < self.retries {
                    actions.push(Action::Retry { client: c, via });
                }
            }
            if client.pending.is_some() {
                continue;
            }
            let holding = client
                .holds
                .as_ref()
                .is_some_and(|(_, lease, _)| lease.is_valid(s.now));
            if holding {
                actions.push(Action::Release { client: c });
                continue;
            }
            if client.acquires < self.acquires {
                // A client finds the leader (the first node otherwise).
                let via = s
                    .nodes
                    .iter()
                    .position(|n| n.up && n.election.is_serving(s.now))
                    .unwrap_or(0);
                actions.push(Action::Acquire { client: c, via });
            }
        }
    }

    fn next_state(&self, last: &Sys, action: Action) -> Option<Sys> {
        let mut s = last.clone();
        s.actions += 1;
        match action {
            Action::Deliver(k) => {
                if k > 0 {
                    s.reorders_left -= 1;
                }
                s.deliver(k);
            }
            Action::Lose(k) => {
                s.faults_left -= 1;
                s.lose(k);
            }
            Action::Duplicate(k) => {
                s.faults_left -= 1;
                let item = s.net[k].clone();
                s.net.push(item);
            }
            Action::Delay(k) => {
                s.delays_left -= 1;
                let item = s.net.remove(k);
                s.delayed.push(item);
            }
            Action::Late(j) => {
                let item = s.delayed.remove(j);
                s.arrive(item);
            }
            Action::Run1 => s.run1(),
            Action::Elect => s.elect(),
            Action::Recover => s.recover(),
            // A lease that does not end within a lease and a blackout
            // goes on (its leader's rounds are acked).
            Action::Lapse => {
                let t = timing();
                s.run_until(t.lease + t.blackout(), |s| s.serving().is_empty())
            }
            Action::Pause => {
                s.pauses_left -= 1;
                s.now += timing().blackout() + STEP;
            }
            Action::Crash(i) => {
                s.crashes_left -= 1;
                s.crash(i);
            }
            Action::Restart { node, wipe } => s.restart(self, node, wipe),
            Action::RestartAll => {
                s.restarts_left -= 1;
                for i in 0..s.nodes.len() {
                    s.crash(i);
                    s.restart(self, i, false);
                }
            }
            Action::Isolate(i) => {
                s.partitions_left -= 1;
                s.isolated = Some(s.nodes[i].id);
            }
            Action::Heal => s.isolated = None,
            Action::Acquire { client, via } => {
                let c = &mut s.clients[client];
                c.acquires += 1;
                let id = format!("c{client}-{}", c.acquires);
                c.request_id = Some(id.clone());
                let request = if s.claims { begin(id) } else { acquire(id) };
                s.client_send(client, via, request);
            }
            Action::Retry { client, via } => {
                let c = &mut s.clients[client];
                c.retries += 1;
                let id = c.request_id.clone().expect("a request id");
                let request = if s.claims { begin(id) } else { acquire(id) };
                s.client_send(client, via, request);
            }
            Action::Release { client } => {
                let (token, _, via) = s.clients[client].holds.take()?;
                // It stops using the lock before it asks to release it.
                let now = s.now;
                for h in s
                    .holds
                    .iter_mut()
                    .filter(|h| h.client == client && h.token == token)
                {
                    h.until = h.until.min(now);
                }
                let via = s.index(via);
                let request = if s.claims {
                    LockRequest::Complete {
                        key: LOCK.into(),
                        claim: token,
                        result: vec![client as u8],
                    }
                } else {
                    LockRequest::Release {
                        name: LOCK.into(),
                        token,
                    }
                };
                s.client_send(client, via, request);
            }
        }
        s.check();
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no violation", |_, s: &Sys| s.violations.is_empty()),
            Property::sometimes("a client holds the lock", |_, s: &Sys| !s.holds.is_empty()),
            Property::sometimes("leadership changed hands", |_, s: &Sys| s.terms > 1),
            Property::sometimes("a caller was told a result (claims)", |_, s: &Sys| {
                !s.claims || s.told.is_some()
            }),
            // A prune takes five actions (acquire, commit, release,
            // commit and tick, the round's acks): the debug build's
            // shallower search does not get there.
            Property::sometimes("a tombstone was pruned (pruning)", |m: &Mesh, s: &Sys| {
                m.prune_every > m.horizon
                    || m.actions_max < 5
                    || s.nodes.iter().any(|n| n.locks.pruned_total() > 0)
            }),
        ]
    }

    fn within_boundary(&self, s: &Sys) -> bool {
        s.now <= self.horizon && s.actions <= self.actions_max
    }
}

fn begin(request_id: String) -> LockRequest {
    LockRequest::Begin(coordmesh::locks::claim::Begin {
        key: LOCK.into(),
        fingerprint: b"fp".to_vec(),
        ttl_ms: 60_000,
        claim_ttl_ms: TTL_MS,
        wait_ms: 0,
        request_id: Some(request_id),
    })
}

fn acquire(request_id: String) -> LockRequest {
    LockRequest::Acquire {
        name: LOCK.into(),
        ttl_ms: TTL_MS,
        wait_ms: 0,
        request_id: Some(request_id),
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Searches every path of up to `actions` actions and fails on a
/// counterexample. A debug build (the README's `cargo test`) searches
/// three actions less, as it runs about ten times slower and the release run in CI is the full one;
/// `COORDMESH_MODEL_ACTIONS` sets another bound.
fn check(name: &str, model: Mesh, actions: u8) {
    let chosen = env_usize("COORDMESH_MODEL_ACTIONS");
    let actions = chosen
        .map(|a| a as u8)
        .unwrap_or(if cfg!(debug_assertions) {
            // A told result needs four actions (begin, commit, complete,
            // commit): the claims models search at least that deep.
            (actions - 3).max(if model.claims { 4 } else { 0 })
        } else {
            actions
        });
    // Breadth first (every state, at its shortest path, but the frontier
    // must fit in memory) unless asked depth first (memory for the
    // states' fingerprints and one path; a state counts as new for each
    // number of actions it is met at, so no path is cut short).
    let depth_first = std::env::var("COORDMESH_MODEL_DFS").is_ok();
    let model = Mesh {
        actions_max: actions,
        depth_first,
        ..model
    };
    let threads = env_usize("COORDMESH_MODEL_THREADS").unwrap_or(1);
    let checker = model
        .checker()
        .threads(threads)
        .finish_when(HasDiscoveries::AnyFailures);
    if depth_first {
        verdict(
            name,
            actions,
            "depth first",
            checker.spawn_dfs(),
            chosen.is_none(),
        );
    } else {
        verdict(
            name,
            actions,
            "breadth first",
            checker.spawn_bfs(),
            chosen.is_none(),
        );
    }
}

fn verdict(name: &str, actions: u8, how: &str, checker: impl Checker<Mesh>, reach: bool) {
    let started = Instant::now();
    let checker = checker.join();
    println!(
        "{name}, {how}: paths of up to {actions} actions, {} states ({} unique), {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = checker.discovery("no violation") {
        panic!(
            "{name}: counterexample:\n{path}\nlast state: {:?}",
            path.last_state()
        );
    }
    if reach {
        // The search reached what it is meant to: grants and failovers.
        checker.assert_properties();
    }
}

/// Voters with data directories: crashes, restarts on the same or an
/// emptied directory.
#[test]
fn durable_voters() {
    check("durable voters", Mesh::every_fault(), 5);
}

/// Released locks' tombstones pruned every 50 ms ("Locks" 8) under every
/// kind of fault: a tombstone is forgotten only once every voter holds
/// it, a batch sent before the forget is refused below the floor, and a
/// voter that copies others' tables takes their floor.
#[test]
fn tombstones_pruned_under_every_fault() {
    let model = Mesh {
        prune_every: Duration::from_millis(50),
        ..Mesh::every_fault()
    };
    check("tombstones pruned under every fault", model, 5);
}

/// Voters without data directories: a restart remembers nothing (E7).
#[test]
fn voters_without_data_directories() {
    let model = Mesh {
        data_dirs: false,
        ..Mesh::every_fault()
    };
    check("voters without data directories", model, 5);
}

/// Every voter may crash and restart, without data directories: a full
/// restart must not lose a grant whose lease may still run (E7).
#[test]
fn full_restarts_without_data_directories() {
    let model = Mesh {
        data_dirs: false,
        restarts: 1,
        ..Mesh::base()
    };
    check("full restarts without data directories", model, 10);
}

/// Voters with data directories, two of them crashing, either back on
/// its directory or on an emptied one (E7: a blank directory is no
/// memory).
#[test]
fn voters_back_on_emptied_directories() {
    let model = Mesh {
        crashes: 2,
        partitions: 1,
        ..Mesh::base()
    };
    check("voters back on emptied directories", model, 6);
}

/// A node cut off and healed, and a retry: a leader whose lease lapsed
/// serves its epoch again (K2: what it adopts is
/// reported only once a majority holds it).
#[test]
fn a_leader_cut_off_and_back() {
    let model = Mesh {
        clients: 1,
        partitions: 1,
        retries: 1,
        ..Mesh::base()
    };
    check("a leader cut off and back", model, 8);
}

/// A message held back while its sender is cut off and back: it
/// arrives after the leader serves its epoch again (K2: an ack counts
/// only for the batch it answers).
#[test]
fn late_answers() {
    let model = Mesh {
        clients: 1,
        delays: 1,
        partitions: 1,
        ..Mesh::base()
    };
    check("late answers", model, 9);
}

/// Whole-cluster restarts, every voter back on its data directory.
#[test]
fn full_restarts_with_data_directories() {
    let model = Mesh {
        restarts: 1,
        ..Mesh::base()
    };
    check("full restarts with data directories", model, 10);
}

/// Idempotent operations (claims of one key, completions in place of
/// releases) under every kind of fault: an operation runs once unless
/// its claimant is told `recovered` (I5); every caller is told one
/// result (I2); a completion told recorded stays on a quorum (K2, I3).
#[test]
fn claims_under_every_fault() {
    let model = Mesh {
        claims: true,
        ..Mesh::every_fault()
    };
    check("claims under every fault", model, 5);
}

/// Claims with a leader cut off and back, and a retry (K2: an adopted
/// claim or completion is reported only once a majority holds it).
#[test]
fn claims_with_a_leader_cut_off_and_back() {
    let model = Mesh {
        clients: 1,
        partitions: 1,
        retries: 1,
        claims: true,
        ..Mesh::base()
    };
    check("claims with a leader cut off and back", model, 8);
}

/// Claims through whole-cluster restarts, every voter back on its data
/// directory: a recorded completion survives and is replayed.
#[test]
fn claims_through_full_restarts() {
    let model = Mesh {
        restarts: 1,
        claims: true,
        ..Mesh::base()
    };
    check("claims through full restarts", model, 10);
}
