//! Model checking of the election, replication and lock-table cores with
//! stateright: three voters and two lock clients, searched breadth first
//! to a bounded depth over every order of the faults each configuration
//! allows (message loss, duplication and reordering, a node cut off,
//! every process paused past the lease, crashes and restarts on the same
//! or an emptied data directory, whole-cluster restarts), the clients'
//! acquires, retries and releases, and time passing.
//!
//! The nodes are the real sans-io cores ([`Election`], [`Copies`],
//! [`LockTable`]) wired the way the node driver wires them (`src/node/`):
//! every output of a core becomes a message, a disk write or a call into
//! another core, synchronously (a write is durable before the answer that
//! waits for it leaves, E1/E8). Time is one clock all nodes share, and it
//! moves only with every message in flight delivered first: `Run1` moves
//! it a quarter heartbeat and ticks every live node, `Run8` is eight of
//! those, `Elect` runs them until every live node has recovered and one
//! serves, `Recover` until every live node has recovered; `Pause` moves it past a lease with no node ticking (every
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
//! Invariants, checked in every state: at most one node serves as leader
//! at any instant; one leader per epoch within one life of the cluster;
//! no two clients believe they hold the lock at one instant, across
//! lives (each client counts its lease as the library's `HolderLease`
//! does, from when it sent); one grant per token, and a new grant's token
//! above every earlier one of that life.
//!
//! `cargo test --release --test model_check` runs the CI-sized search (a
//! debug build searches one level less); `COORDMESH_MODEL_DEPTH=N`
//! searches to another depth, and with `COORDMESH_MODEL_DFS=1` depth
//! first, in little memory (README, "Model checking").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use coordmesh::election::{
    Election, ElectionRequest, ElectionResponse, Memory, Output, Recovery, Timing,
};
use coordmesh::ids::{BatchId, Epoch, NodeId, Token};
use coordmesh::locks::Replica;
use coordmesh::locks::table::TableConfig;
use coordmesh::locks::{Entry, HolderLease, LockOutput, LockReply, LockRequest, LockTable, Ticket};
use coordmesh::replication::{self, Answer, Copies, Gate, Next, Settle, Verdict};
use coordmesh::storage::Stored;
use stateright::{Checker, Model, Property};

const LOCK: &str = "job";
const TTL_MS: u64 = 3_000;
const STEP: Duration = Duration::from_millis(25);
/// The longest `Elect` runs for.
const ELECT_MAX: Duration = Duration::from_secs(4);
/// Deliveries a `Run` makes per step at most (resends to a dead voter
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

/// Who a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Addr {
    Node(NodeId),
    Client(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    Election(ElectionRequest),
    Batch {
        epoch: Epoch,
        batch: BatchId,
        voters: u64,
        entries: Vec<Entry>,
    },
    Lock(LockRequest),
}

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Election(ElectionResponse, Option<Vec<Entry>>),
    Voter(Answer),
    Lock(LockReply),
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// A request on its way to `to`.
    Call {
        from: Addr,
        from_life: u32,
        to: NodeId,
        body: Body,
    },
    /// The answer on its way back to the life that asked.
    Answer {
        to: Addr,
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
}

impl Disk {
    fn blank() -> Disk {
        Disk {
            initialized: false,
            promised: Epoch::ZERO,
            entries: Replica::default(),
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
    tickets: BTreeMap<u64, (Addr, LockRequest)>,
    next_ticket: u64,
    reach: u64,
    gone: BTreeSet<NodeId>,
    /// Batches to send again at the next tick (REPLICATE_RETRY).
    resend: Vec<(NodeId, Body)>,
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
    /// The request in flight and when it was sent.
    pending: Option<(LockRequest, Duration)>,
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
    faults_left: u8,
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
    violations: Vec<String>,
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
            "{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{:?}|{:?}",
            s.now,
            s.nodes,
            s.clients,
            s.net,
            s.faults_left,
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
        )
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
    /// Every message in flight delivered, in order, then a tick.
    Run1,
    /// Eight of those.
    Run8,
    /// Those until every live node has recovered and one serves (at
    /// most `ELECT_MAX`).
    Elect,
    /// Those until every live node has recovered (E7; at most
    /// `ELECT_MAX`), offered while one has not.
    Recover,
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
    crashes: u8,
    /// Whole-cluster restarts (a power loss): every node at once.
    restarts: u8,
    pauses: u8,
    partitions: u8,
    acquires: u8,
    retries: u8,
    horizon: Duration,
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
            crashes: 0,
            restarts: 0,
            pauses: 0,
            partitions: 0,
            acquires: 1,
            retries: 0,
            horizon: Duration::from_secs(10),
        }
    }

    /// Every kind of fault, a few of each: two losses or duplications,
    /// two out-of-order deliveries, a crash, a pause, a node cut off; and
    /// a retry.
    fn every_fault() -> Mesh {
        Mesh {
            faults: 2,
            reorders: 2,
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
            ..TableConfig::new(&self.ids(), timing().drift)
        });
        Node {
            id,
            life,
            up: true,
            election,
            copies: Copies::new(replica),
            locks,
            disk,
            tickets: BTreeMap::new(),
            next_ticket: 0,
            reach: 0,
            gone: BTreeSet::new(),
            resend: Vec::new(),
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
            pending: None,
            holds: None,
        };
        let mut sys = Sys {
            now: Duration::ZERO,
            nodes,
            clients: vec![client; self.clients],
            net: Vec::new(),
            faults_left: self.faults,
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
            violations: Vec::new(),
        };
        // The cluster forms with every message delivered: the search
        // starts from a served leader.
        sys.elect();
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
            from: Addr::Node(n.id),
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
                Some(merged) => node.locks.take_over(now, e, merged),
                None => return,
            },
            (None, Some(_)) => node.locks.step_down(),
            (None, None) => return,
        };
        self.apply_locks(i, outs);
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
                    if let Some((to, request)) = node.tickets.remove(&ticket.0) {
                        let item = Item::Answer {
                            to,
                            to_life: 0,
                            from: node.id,
                            body: Body::Lock(request),
                            reply: Reply::Lock(reply),
                        };
                        self.net.push(item);
                    }
                }
                LockOutput::Replicate { batch, entries } => {
                    let node = &mut self.nodes[i];
                    let Some(epoch) = node.locks.epoch() else {
                        continue;
                    };
                    node.copies.issued(epoch, &entries);
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
                LockOutput::TokensSpent | LockOutput::NewEpochNeeded => {}
            }
        }
    }

    /// A request reaches live node `i`.
    fn on_call(&mut self, i: usize, from: Addr, from_life: u32, body: Body) {
        let now = self.now;
        self.sync_locks(i);
        match body.clone() {
            Body::Election(request) => {
                let Addr::Node(from_id) = from else { return };
                let node = &mut self.nodes[i];
                let (handled, outs) = node.election.handle_request(now, from_id, &request);
                if let (Some(e), Some(d)) = (handled.persist, &mut node.disk) {
                    d.write(Some(e), &[]);
                }
                let snapshot = matches!(
                    handled.response,
                    ElectionResponse::Promise { .. } | ElectionResponse::State { .. }
                )
                .then(|| node.copies.snapshot());
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
            Body::Batch {
                epoch,
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
                let answer = match node.copies.on_batch(gate, entries) {
                    Verdict::Refuse { promised } => Answer::Refused { promised },
                    Verdict::Ack { raise, entries } => {
                        if let Some(d) = &mut node.disk {
                            d.write(raise, &entries);
                        }
                        Answer::Acked
                    }
                };
                let item = Item::Answer {
                    to: from,
                    to_life: from_life,
                    from: node.id,
                    body,
                    reply: Reply::Voter(answer),
                };
                self.net.push(item);
            }
            Body::Lock(request) => {
                let node = &mut self.nodes[i];
                node.next_ticket += 1;
                let ticket = Ticket(node.next_ticket);
                node.tickets.insert(ticket.0, (from, request.clone()));
                let owner = node.id;
                let outs = node.locks.handle_request(now, ticket, owner, request);
                self.apply_locks(i, outs);
            }
        }
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
                        ) if epoch == promised => node.copies.on_promise(*epoch, table),
                        (ElectionRequest::Sync { .. }, Some(ElectionResponse::State { .. }))
                            if !node.election.recovered() =>
                        {
                            node.copies.on_sync_answer(from, table)
                        }
                        _ => {}
                    }
                }
                let outs = node
                    .election
                    .handle_response(now, from, &request, response.as_ref());
                self.execute(i, outs);
            }
            Body::Batch {
                epoch,
                batch,
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
                        let outs = node.locks.handle_ack(now, batch, from);
                        self.apply_locks(i, outs);
                    }
                    Next::Deposed { promised } => {
                        let outs = node.election.handle_higher_epoch(now, promised);
                        self.execute(i, outs);
                    }
                    Next::Resend { .. } => {
                        let body = Body::Batch {
                            epoch,
                            batch,
                            voters,
                            entries,
                        };
                        node.resend.push((from, body));
                    }
                    Next::Forget => {}
                }
            }
            Body::Lock(_) => {}
        }
        self.flush(i);
    }

    /// A lock answer (or its failure) reaches a client.
    fn on_client_answer(&mut self, c: usize, via: NodeId, reply: Option<LockReply>) {
        let now = self.now;
        let Some((request, sent)) = self.clients[c].pending.take() else {
            return;
        };
        let (
            LockRequest::Acquire { request_id, .. },
            Some(LockReply::Granted { token, ttl_ms: ttl }),
        ) = (request, reply)
        else {
            return;
        };
        let request_id = request_id.unwrap_or_default();
        // Tokens: one grant per token, and above every earlier grant's
        // (a grant that came too late to use included).
        match self.grants.get(&token) {
            Some(r) if *r != request_id => self.violations.push(format!(
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
                self.grants.insert(token, request_id);
            }
        }
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
        self.clients[c].holds = Some((token, lease, via));
    }

    fn deliver(&mut self, k: usize) {
        self.deliver_one(k);
        self.check_leaders();
    }

    fn deliver_one(&mut self, k: usize) {
        let item = self.net.remove(k);
        match item {
            Item::Call {
                from,
                from_life,
                to,
                body,
            } => {
                let i = self.index(to);
                let cut = self.isolated.is_some_and(
                    |n| matches!(from, Addr::Node(f) if f != to && (f == n || to == n)),
                );
                if self.nodes[i].up && !cut {
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
            } if self.isolated.is_some_and(
                |n| matches!(to, Addr::Node(t) if t != from && (t == n || from == n)),
            ) =>
            {
                let _ = reply;
                self.fail(to, to_life, from, body);
            }
            Item::Answer {
                to,
                to_life,
                from,
                body,
                reply,
            } => match to {
                Addr::Node(id) => {
                    let i = self.index(id);
                    if self.nodes[i].up && self.nodes[i].life == to_life {
                        self.on_answer(i, from, body, Some(reply));
                    }
                }
                Addr::Client(c) => {
                    let Reply::Lock(reply) = reply else { return };
                    self.on_client_answer(c, from, Some(reply));
                }
            },
        }
    }

    /// The caller of a request learns it failed.
    fn fail(&mut self, from: Addr, from_life: u32, to: NodeId, body: Body) {
        match from {
            Addr::Node(id) => {
                let i = self.index(id);
                if self.nodes[i].up && self.nodes[i].life == from_life {
                    self.on_answer(i, to, body, None);
                }
            }
            Addr::Client(c) => self.on_client_answer(c, to, None),
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
        self.check_leaders();
    }

    /// `steps` steps with every message delivered promptly.
    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            let mut n = 0;
            while !self.net.is_empty() && n < RUN_DELIVERIES_MAX {
                self.deliver(0);
                n += 1;
            }
            self.step();
        }
    }

    fn elect(&mut self) {
        let until = self.now + ELECT_MAX;
        while self.now < until {
            let recovered = self.nodes.iter().all(|n| !n.up || n.election.recovered());
            if recovered && self.serving().len() == 1 {
                return;
            }
            self.run(1);
        }
    }

    fn recover(&mut self) {
        let until = self.now + ELECT_MAX;
        while self.now < until && self.nodes.iter().any(|n| n.up && !n.election.recovered()) {
            self.run(1);
        }
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.up = false;
        node.resend.clear();
        // Its clients' calls fail: they may retry elsewhere.
        for (addr, _) in std::mem::take(&mut node.tickets).into_values() {
            if let Addr::Client(c) = addr {
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

    fn client_send(&mut self, c: usize, via: usize, request: LockRequest) {
        let to = self.nodes[via].id;
        self.clients[c].pending = Some((request.clone(), self.now));
        self.net.push(Item::Call {
            from: Addr::Client(c),
            from_life: 0,
            to,
            body: Body::Lock(request),
        });
    }

    /// After every action: one serving leader at most, one per epoch.
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
        }
        actions.push(Action::Run1);
        actions.push(Action::Run8);
        actions.push(Action::Elect);
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
            for via in 0..s.nodes.len() {
                if client.request_id.is_some() && client.retries < self.retries {
                    actions.push(Action::Retry { client: c, via });
                }
            }
        }
    }

    fn next_state(&self, last: &Sys, action: Action) -> Option<Sys> {
        let mut s = last.clone();
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
            Action::Run1 => s.run(1),
            Action::Run8 => s.run(8),
            Action::Elect => s.elect(),
            Action::Recover => s.recover(),
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
                s.client_send(client, via, acquire(id));
            }
            Action::Retry { client, via } => {
                let c = &mut s.clients[client];
                c.retries += 1;
                let id = c.request_id.clone().expect("a request id");
                s.client_send(client, via, acquire(id));
            }
            Action::Release { client } => {
                let (token, _, via) = s.clients[client].holds.take()?;
                // It stops using the lock before it asks to release it.
                let now = s.now;
                if let Some(h) = s
                    .holds
                    .iter_mut()
                    .rev()
                    .find(|h| h.client == client && h.token == token)
                {
                    h.until = h.until.min(now);
                }
                let via = s.index(via);
                s.client_send(
                    client,
                    via,
                    LockRequest::Release {
                        name: LOCK.into(),
                        token,
                    },
                );
            }
        }
        s.check_leaders();
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no violation", |_, s: &Sys| s.violations.is_empty()),
            Property::sometimes("a client holds the lock", |_, s: &Sys| !s.holds.is_empty()),
            Property::sometimes("leadership changed hands", |_, s: &Sys| s.terms > 1),
        ]
    }

    fn within_boundary(&self, s: &Sys) -> bool {
        s.now <= self.horizon
    }
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

fn check(name: &str, model: Mesh, depth: usize) {
    let chosen = env_usize("COORDMESH_MODEL_DEPTH");
    // A debug build (the README's `cargo test`) searches one level less;
    // `.ci/run` also runs the release build to the full depth.
    let depth = chosen.unwrap_or(if cfg!(debug_assertions) {
        depth - 1
    } else {
        depth
    });
    let checker = model.checker().target_max_depth(depth);
    // Breadth first (every state to the depth, but the frontier must fit
    // in memory) unless asked depth first (memory for one path only, but
    // a state first met near the depth bound is not searched again when
    // met nearer the start).
    if std::env::var("COORDMESH_MODEL_DFS").is_ok() {
        verdict(name, "depth first", checker.spawn_dfs(), chosen.is_none());
    } else {
        verdict(name, "breadth first", checker.spawn_bfs(), chosen.is_none());
    }
}

fn verdict(name: &str, how: &str, checker: impl Checker<Mesh>, reach: bool) {
    let started = Instant::now();
    let checker = checker.join();
    println!(
        "{name}, {how}: {} states ({} unique), depth {}, {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
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
    check("durable voters", Mesh::every_fault(), 6);
}

/// Voters without data directories: a restart remembers nothing (E7).
#[test]
fn voters_without_data_directories() {
    let model = Mesh {
        data_dirs: false,
        ..Mesh::every_fault()
    };
    check("voters without data directories", model, 6);
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
    check("voters back on emptied directories", model, 8);
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

/// Plays `path` from the model's start, each action one the model
/// offers at that point; the state reached (or the first that broke an
/// invariant).
fn play(model: &Mesh, path: &[Action]) -> Sys {
    let mut s = model.start();
    for a in path {
        if !s.violations.is_empty() {
            break;
        }
        let mut offered = Vec::new();
        model.actions(&s, &mut offered);
        assert!(offered.contains(a), "{a:?} not offered in {s:?}");
        s = model.next_state(&s, *a).expect("a next state");
    }
    s
}

/// Finding 3 of the safety review, as a path through the model (twenty
/// actions, deeper than the search reaches in CI): voter 3 is cut off, so
/// the grant is on voters 1 and 2 only; voter 2 comes back on an emptied
/// directory; once it has recovered, the leader dies before it rewrote
/// the grant to 2, and 2 leads with 3. Taking a blank directory for a
/// durable one that resumes from its own copy (the code before the fix)
/// grants the lock again here while client 0's lease runs.
#[test]
fn finding_3_as_a_path_through_the_model() {
    use Action::*;
    let model = Mesh {
        crashes: 2,
        partitions: 1,
        ..Mesh::base()
    };
    let mut path = vec![
        Isolate(2),
        Acquire { client: 0, via: 0 },
        Run1,
        Crash(1),
        Restart {
            node: 1,
            wipe: true,
        },
        Run8,
    ];
    path.extend([Run1; 6]);
    path.extend([
        Crash(0),
        Heal,
        Elect,
        Acquire { client: 1, via: 1 },
        Run1,
        Run8,
    ]);
    let s = play(&model, &path);
    assert_eq!(s.holds.len(), 1, "client 0 held the lock: {s:?}");
    assert_eq!(s.serving(), vec![NodeId(2)], "{s:?}");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

/// Finding 1 of the safety review, as a path through the model (25
/// actions): leader 1 is cut off with client 0's acquire pending; its
/// lease lapses; healed, it serves epoch 1 again, and the term's first
/// batch (the adopted grant, rewritten) is lost to both voters; client 0
/// retries; the leader dies; 2 leads with 3, neither of which has the
/// grant, and grants the lock to client 1. Reporting an adopted grant as
/// committed at takeover (the code before the fix) tells client 0 it
/// holds the lock here, while 2 grants it to client 1.
#[test]
fn finding_1_as_a_path_through_the_model() {
    use Action::*;
    let model = Mesh {
        faults: 2,
        reorders: 1,
        crashes: 1,
        partitions: 1,
        retries: 1,
        ..Mesh::base()
    };
    let mut path = vec![
        Isolate(0),
        Acquire { client: 0, via: 0 },
        Deliver(0),
        Run8,
        Run8,
        Heal,
        Run1,
        Run1,
        Run1,
    ];
    path.extend([Deliver(0); 7]);
    path.extend([
        Lose(5),
        Lose(5),
        Retry { client: 0, via: 0 },
        Deliver(5),
        Crash(0),
        Elect,
        Acquire { client: 1, via: 1 },
        Run1,
        Run1,
    ]);
    let s = play(&model, &path);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(s.serving(), vec![NodeId(2)], "{s:?}");
    assert!(
        s.holds.iter().any(|h| h.client == 1),
        "client 1 got the lock from the new leader: {s:?}"
    );
}
