//! The leader's lock table, sans-io.
//!
//! The driver feeds it client requests (each with a [`Ticket`] to answer),
//! voters' acks of replication batches, ticks, and leadership changes; it
//! returns replies and batches to replicate. It never reads a clock.
//!
//! - Grants, releases and expiries go into the next batch; a client is
//!   told only once a majority of voters acked the batch that carries its
//!   outcome (K2). [`LockTable::flush`] closes a batch, so every request
//!   the driver handled since the last flush shares one round.
//! - A new term's first batch carries the whole adopted table, and nothing
//!   adopted is reported, renewed or counted held before that batch has a
//!   majority (K2): an adopted grant may have sat on a minority only.
//! - Batch ids are unique for the life of the table, so an ack of an
//!   earlier stint's batch (late on the wire, or from the group-commit
//!   thread) never counts for a later one.
//! - Renewals are answered at once: they need only the leader's lease,
//!   unless the grant carries a quiet mark (below), when the renewal is
//!   written to a majority first.
//! - The leader expires a lease at its receive time of the acquire or
//!   renew plus `ttl·(1+ρ)/(1−ρ)` (K3); an adopted grant likewise from
//!   takeover, less the time it is known to have been quiet.
//! - Quiet marks: a holder not heard from for a while has that time
//!   written into its entry (a lower bound in real time), so the next
//!   leader shortens its TTL by it. Without them a dead holder's lock got
//!   a full TTL at every takeover and, with leaders changing faster than
//!   its TTL, never expired. After a mark, a renewal is made durable
//!   before it is answered, so no mark ever outlives a renewal it missed.
//! - Tokens are `(epoch << 32) | seq` (K1); when the sequence is spent the
//!   table asks for a new epoch and grants nothing until it has one.
//! - Released locks' tombstones are pruned (PROTOCOL.md, "Locks" 8): a
//!   round sends a bounded set of them to every voter again, and once
//!   *every* voter holds them durably, tells the voters to forget them
//!   with a floor above every batch sent before (those batches go out
//!   again under new ids), so no late batch puts an older entry back.
//!
//! Owns: every lock rule the leader applies (K1–K4). Must not send,
//! persist or read a clock: its outputs say what to reply and what to
//! replicate, and the driver does it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use super::claim::{Begin, RECORD_TTL_MIN, RESULT_BYTES_MAX, check_key, claim_weight};
use super::{
    ClaimFacts, Completion, EPOCH_MAX, Entry, EntryState, LockReply, LockRequest, Name, Replica,
    SEQ_MAX, Space, check_acquire, check_name, token,
};
use crate::ids::{BatchId, Epoch, Generation, NodeId, Token};
use crate::replication::{Batches, Floor, Merge};

pub use crate::replication::{BATCH_PENDING_MAX, BATCHES_IN_FLIGHT_MAX};

/// Answers one acquire may have waiting (its attempt and the retries that
/// joined it); one more answers the oldest "retry".
pub const TICKETS_PER_REQUEST_MAX: usize = 8;
/// Request ids of ended grants remembered per term (besides the one each
/// tombstone carries), so late duplicates of them grant nothing.
pub const ENDED_REQUESTS_MAX: usize = 4096;

/// Watches held back at once by the leader; more are answered "retry"
/// (their watchers pause, then ask again).
pub const WATCHERS_MAX: usize = 4096;

/// How often the leader starts a round that prunes released locks'
/// tombstones (PROTOCOL.md, "Locks" 8); a round that could not carry
/// them all is followed by the next at once.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
pub use crate::replication::PRUNE_WAIT;
/// The tombstones one prune round carries, in bytes: a quarter of the
/// RPC frame (1 MiB), so the round's batch and its forget fit one frame
/// (the frame's bound is checked against it in the RPC's tests).
pub const PRUNE_BYTES_MAX: usize = 256 * 1024;

/// The proofs of ended runs a table keeps per node (K5): the latest, so a
/// node restarting in a loop frees the grants of each run it proves ended
/// while the leader still holds them, in a bounded set.
pub const PROOFS_PER_NODE: usize = 16;

/// The last `ENDED_REQUESTS_MAX` (name, request id) pairs of ended
/// grants, oldest forgotten first, looked up by hash: every acquire with
/// a request id asks.
#[derive(Debug, Default, Clone)]
struct Ended {
    order: VecDeque<(Name, String)>,
    /// How many times each pair is in `order`, by name, then id.
    count: HashMap<Name, HashMap<String, usize>>,
}

impl Ended {
    fn remember(&mut self, name: &Name, id: &str) {
        if self.order.len() >= ENDED_REQUESTS_MAX
            && let Some((old, old_id)) = self.order.pop_front()
            && let Some(ids) = self.count.get_mut(&old)
        {
            if let Some(n) = ids.get_mut(&old_id) {
                *n -= 1;
                if *n == 0 {
                    ids.remove(&old_id);
                }
            }
            if ids.is_empty() {
                self.count.remove(&old);
            }
        }
        *self
            .count
            .entry(name.clone())
            .or_default()
            .entry(id.to_owned())
            .or_default() += 1;
        self.order.push_back((name.clone(), id.to_owned()));
    }

    fn contains(&self, name: &Name, id: &str) -> bool {
        self.count.get(name).is_some_and(|ids| ids.contains_key(id))
    }
}
/// A holder quiet for `min(ttl/2, this)` gets its first quiet mark; the
/// next ones follow at twice the quiet time so far.
pub const QUIET_MARK_FIRST_MAX: Duration = Duration::from_secs(5);

/// See [`TableConfig::reply_grace`].
pub const REPLY_GRACE: Duration = Duration::from_millis(500);
/// How long past its wait a requester keeps listening (retrying with its
/// request id) while an attempt's fate is unknown: longer than
/// [`REPLY_GRACE`] by a round trip of up to half a second, so every grant
/// the leader answers finds its requester listening (K4).
pub const REQUESTER_GRACE: Duration = Duration::from_millis(1000);

/// Identifies one request awaiting an answer (assigned by the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutput {
    /// Answer a request.
    Reply {
        /// The request.
        ticket: Ticket,
        /// The answer.
        reply: LockReply,
    },
    /// Send these entries to every voter (and make them durable here);
    /// report each voter's ack with [`LockTable::handle_ack`].
    Replicate {
        /// The batch id, unique for the life of the table.
        batch: BatchId,
        /// What to merge.
        entries: Vec<Entry>,
    },
    /// Every voter holds these tombstones durably: have every voter (this
    /// node's copy too) forget them, each where it holds it exactly, and
    /// take no batch below `floor` any more (PROTOCOL.md, "Locks" 8).
    Forget {
        /// Above every batch this table sent before.
        floor: Floor,
        /// The tombstones.
        entries: Vec<Entry>,
    },
    /// This completion holds on a majority of voters: push it to every
    /// peer (their replicas replay it, I2).
    Completed {
        /// The idempotency key.
        key: String,
        /// The claim it completed.
        claim: Token,
        /// The claim's facts, its completion included.
        facts: Box<ClaimFacts>,
    },
    /// This epoch's sequence numbers are spent: take a new epoch (K1).
    NewEpochNeeded,
    /// The last epoch that can form tokens (2^32 − 1) has spent its
    /// sequence: this cluster can grant no more locks (K1). Reported once.
    TokensSpent,
}

/// What the leader's own idempotency records say of the key of a begin
/// or a completion. A completion leaves the table once it is settled
/// into the records of the voters that hold it (PROTOCOL.md,
/// "Idempotency" 8), so the table alone no longer knows every key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordsSay {
    /// The key's committed, unexpired record, as a claim's completion:
    /// the claim's token and its facts.
    pub completion: Option<(Token, Box<ClaimFacts>)>,
    /// Records the leader holds (the record bound, I6).
    pub held: usize,
    /// The weight of the claims' entries in the leader's own copy (which
    /// settles on the same schedule as the voters'): past the claims'
    /// byte bound a new key waits.
    pub unsettled_bytes: usize,
}

/// Bounds and parameters.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// The drift bound `ρ`.
    pub drift: f64,
    /// Waiters per lock.
    pub waiters_max: usize,
    /// Locks held or waited for at once.
    pub locks_max: usize,
    /// How long past a request's wait (from its arrival) the leader still
    /// answers its grant; a grant committed later is released (K4). The
    /// requester keeps listening [`REQUESTER_GRACE`] past its wait from
    /// when it sent, which covers this plus the round trip.
    pub reply_grace: Duration,
    /// The longest TTL granted (`lock-ttl-max-ms`).
    pub ttl_max_ms: u64,
    /// The voter set.
    pub voters: Vec<NodeId>,
    /// Idempotency keys kept at once (claims and unexpired records).
    pub claims_max: usize,
    /// Their bytes ([`super::claim::CLAIM_BYTES_MAX`]).
    pub claim_bytes_max: usize,
    /// How often a prune round starts ([`PRUNE_EVERY`]).
    pub prune_every: Duration,
    /// How long a prune round waits for every voter (at most
    /// [`PRUNE_WAIT`]).
    pub prune_wait: Duration,
}

impl TableConfig {
    /// A table config with default bounds.
    pub fn new(voters: &[NodeId], drift: f64) -> TableConfig {
        TableConfig {
            drift,
            waiters_max: 1024,
            locks_max: 100_000,
            reply_grace: REPLY_GRACE,
            ttl_max_ms: super::TTL_MAX.as_millis() as u64,
            voters: voters.to_vec(),
            claims_max: 1_000_000,
            claim_bytes_max: super::claim::CLAIM_BYTES_MAX,
            prune_every: PRUNE_EVERY,
            prune_wait: PRUNE_WAIT,
        }
    }
}

/// How long a holder has gone unheard, for quiet marks.
#[derive(Debug, Clone)]
struct Quiet {
    /// Real milliseconds known quiet before `since` (adopted).
    credit_ms: u64,
    /// When the holder was last heard (grant, renewal, takeover).
    since: Duration,
    /// When the next mark is written.
    next_mark: Duration,
    /// A mark with a quiet time above zero may be on the voters: a
    /// renewal must be made durable before it is answered.
    marked: bool,
}

impl Quiet {
    fn new(now: Duration, ttl_ms: u64, credit_ms: u64) -> Quiet {
        Quiet {
            credit_ms,
            since: now,
            next_mark: now + first_mark(ttl_ms),
            marked: credit_ms > 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Holder {
    token: Token,
    ttl_ms: u64,
    owner: NodeId,
    request_id: Option<String>,
    expires_at: Duration,
    /// On a majority: its grant's batch, or for an adopted grant the
    /// term's first batch, committed.
    committed: bool,
    /// Taken over from an earlier term: its requester may have been told
    /// then, so it is never released for being late (K4).
    adopted: bool,
    tickets: Vec<Ticket>,
    /// Past this, nobody listens for the grant any more (K4).
    reply_by: Duration,
    quiet: Quiet,
    /// The version of this grant's latest write.
    version: u64,
    /// A claim's facts (`None` for a user lock).
    claim: Option<Box<ClaimFacts>>,
    /// The run of `owner` whose process the holder lives in, when a
    /// later run can prove it ended (K5); kept in every write of the
    /// grant, so an adopted grant keeps it too.
    bound: Option<Generation>,
}

impl Holder {
    /// Its entry's state in a write of `version`.
    fn state(&self, quiet_ms: u64, version: u64) -> EntryState {
        EntryState::Held {
            ttl_ms: self.ttl_ms,
            owner: self.owner,
            request_id: self.request_id.clone(),
            quiet_ms,
            version,
            bound: self.bound,
        }
    }
}

#[derive(Debug, Clone)]
struct Waiter {
    tickets: Vec<Ticket>,
    ttl_ms: u64,
    owner: NodeId,
    /// The nodes its attempts came through (retries may use others): once
    /// all of them are dead, nobody can receive its grant.
    via: BTreeSet<NodeId>,
    request_id: Option<String>,
    deadline: Duration,
    reply_by: Duration,
    /// A claim's facts (`None` for a user lock).
    claim: Option<Box<ClaimFacts>>,
    /// As the holder's `bound`.
    bound: Option<Generation>,
}

/// A watch held back until its lock's holder changes.
#[derive(Debug, Clone)]
struct Watcher {
    ticket: Ticket,
    seen: Option<Token>,
    until: Duration,
}

#[derive(Debug, Clone, Default)]
struct Lock {
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Clone)]
enum Effect {
    /// A grant's first write: committed, its requester is told.
    Grant { name: Name, token: Token },
    /// An adopted grant's rewrite in the term's first batch.
    Adopt { name: Name, token: Token },
    /// A release (or a retry of one) is answered.
    Release { ticket: Ticket },
    /// Answered as is once the batch commits.
    Answer { ticket: Ticket, reply: LockReply },
    /// A completion committed: it goes to every peer.
    Completed {
        key: String,
        claim: Token,
        facts: Box<ClaimFacts>,
    },
    /// A renewal (or an acquire retry) answered once the grant's version
    /// `version`, written with nothing quiet, holds on a majority, if the
    /// grant of `token` still holds then.
    Refresh {
        name: Name,
        token: Token,
        version: u64,
        ticket: Ticket,
        reply: LockReply,
    },
}

#[derive(Debug, Clone)]
struct Term {
    epoch: Epoch,
    next_seq: u64,
    /// The next write number of this epoch (versions are `epoch << 32 | n`).
    next_write: u64,
    locks: BTreeMap<Name, Lock>,
    /// Every entry this term knows: adopted, then issued.
    known: Replica,
    batches: Batches<Entry, Effect>,
    /// User locks' releases applied, answered once the batch carrying
    /// their tombstone goes to the voters (K2 for releases: a reply
    /// never leaves before the tombstone does), "no quorum, retry" if
    /// the term ends first.
    unsent_releases: Vec<Ticket>,
    /// Tombstones written this term not yet on a majority, by name: the
    /// token freed and the batch carrying it (`None`: the open one).
    frees: HashMap<Name, (Token, Option<BatchId>)>,
    /// (name, request id) of grants that ended this term.
    ended: Ended,
    /// Watches waiting for their lock's holder to change, by lock.
    watchers: BTreeMap<Name, Vec<Watcher>>,
    /// A new epoch was asked for, or the tokens are spent (K1).
    exhausted: bool,
    /// Entries of the claim namespace in `known` (the record bound, I6).
    claims: ClaimCount,
    /// Claims' entries of the promised copies not adopted yet: they wait
    /// for the records to be reconciled.
    deferred: Vec<Entry>,
    /// The records are reconciled: claims are served.
    records_ready: bool,
    /// The prune round under way.
    prune: Option<Prune>,
    /// When the next prune round may start.
    next_prune: Duration,
}

/// A round that prunes tombstones (PROTOCOL.md, "Locks" 8): they went
/// out again in batch `batch`, outside the term's batches, and are
/// forgotten once every voter acked it.
#[derive(Debug, Clone)]
struct Prune {
    batch: BatchId,
    entries: Vec<Entry>,
    acked: BTreeSet<NodeId>,
    started: Duration,
    /// More tombstones waited than the round carries: the next round
    /// starts at the next tick, not [`PRUNE_EVERY`] later.
    full: bool,
}

/// What the claim namespace of a term's table holds.
#[derive(Debug, Clone, Default)]
struct ClaimCount {
    /// Keys.
    keys: usize,
    /// Their weight ([`claim_weight`]).
    bytes: usize,
    /// Tombstones that carry a completion (the leader's records hold
    /// those it committed).
    completed: usize,
    /// Their weight: they leave as they settle.
    completed_bytes: usize,
}

impl ClaimCount {
    /// Counts `entry`, about to be merged into `known`: a key new to it,
    /// or what it replaces.
    fn note(&mut self, known: &Replica, entry: &Entry) {
        if entry.name.space != Space::Claim {
            return;
        }
        match known.get(&entry.name) {
            None => {
                self.keys += 1;
                self.add(entry);
            }
            Some(old) if old.rank() < entry.rank() => {
                self.remove(old);
                self.add(entry);
            }
            Some(_) => {}
        }
    }

    fn add(&mut self, entry: &Entry) {
        let weight = claim_weight(entry);
        self.bytes += weight;
        if entry.is_settleable() {
            self.completed += 1;
            self.completed_bytes += weight;
        }
    }

    fn remove(&mut self, entry: &Entry) {
        let weight = claim_weight(entry);
        self.bytes = self.bytes.saturating_sub(weight);
        if entry.is_settleable() {
            self.completed = self.completed.saturating_sub(1);
            self.completed_bytes = self.completed_bytes.saturating_sub(weight);
        }
    }

    /// `entry` left the table.
    fn forget(&mut self, entry: &Entry) {
        if entry.name.space != Space::Claim {
            return;
        }
        self.keys = self.keys.saturating_sub(1);
        self.remove(entry);
    }
}

impl Term {
    /// Forgets the locks with neither a holder nor a waiter.
    fn drop_idle_locks(&mut self) {
        self.locks
            .retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
    }

    /// The version of this term's next write, or `None` once the epoch's
    /// write numbers are spent: then, like spent tokens, the term asks
    /// (once) for a new epoch and writes nothing more (a wrapped version
    /// would lose the merge to an older write of the same grant).
    fn next_version(&mut self, out: &mut Vec<LockOutput>) -> Option<u64> {
        if self.next_write > SEQ_MAX {
            self.spent(out);
            return None;
        }
        let v = (self.epoch.0 << 32) | self.next_write;
        self.next_write += 1;
        Some(v)
    }

    /// K1: this epoch can grant (or write) no more.
    fn spent(&mut self, out: &mut Vec<LockOutput>) {
        if !self.exhausted {
            self.exhausted = true;
            out.push(if self.epoch < EPOCH_MAX {
                LockOutput::NewEpochNeeded
            } else {
                LockOutput::TokensSpent
            });
        }
    }

    /// Queues `entry` for the next batch and remembers it.
    fn write(&mut self, entry: Entry) {
        self.claims.note(&self.known, &entry);
        self.known.merge(entry.clone());
        self.batches.write(entry);
    }
}

/// Builds a term's table from the promised copies (K2), apart from the
/// [`LockTable`] it is for ([`LockTable::adopter`]).
#[derive(Debug, Clone)]
pub struct Adopter {
    drift: f64,
    prune_every: Duration,
    resume: Option<(Epoch, u64, u64)>,
}

/// A term's table built by [`Adopter::adopt`], for
/// [`LockTable::install`].
#[derive(Debug)]
pub struct Adoption {
    now: Duration,
    term: Term,
    out: Vec<LockOutput>,
}

impl Adoption {
    /// The epoch it serves.
    pub fn epoch(&self) -> Epoch {
        self.term.epoch
    }
}

impl Adopter {
    /// The term of `epoch` from `merged`, adopted at `now`.
    pub fn adopt(self, now: Duration, epoch: Epoch, merged: Replica) -> Adoption {
        let rho = self.drift;
        let mut out = Vec::new();
        // The same epoch served again (after its lease lapsed) goes on
        // from its last token and its last write: neither repeats (K1).
        let next_seq = merged
            .entries()
            .filter(|e| super::token_epoch(e.token) == epoch)
            .map(|e| (e.token.0 & SEQ_MAX) + 1)
            .max()
            .unwrap_or(1);
        let next_write = merged
            .entries()
            .filter_map(|e| match e.state {
                EntryState::Held { version, .. } if version >> 32 == epoch.0 => {
                    Some((version & SEQ_MAX) + 1)
                }
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let (next_seq, next_write) = match self.resume {
            Some((e, seq, write)) if e == epoch => (next_seq.max(seq), next_write.max(write)),
            _ => (next_seq, next_write),
        };
        let mut term = Term {
            epoch,
            next_seq,
            next_write,
            locks: BTreeMap::new(),
            known: Replica::default(),
            batches: Batches::default(),
            unsent_releases: Vec::new(),
            frees: HashMap::new(),
            ended: Ended::default(),
            watchers: BTreeMap::new(),
            exhausted: false,
            claims: ClaimCount::default(),
            deferred: Vec::new(),
            records_ready: false,
            prune: None,
            next_prune: now + self.prune_every,
        };
        // A claim's grant or a tombstone of a claim that did not
        // complete may be older than a completion settled out of the
        // copies (in the promisers' records only): rewritten now in this
        // epoch it would outrank that completion where it is not settled
        // yet. They wait for the records ([`LockTable::records_reconciled`]).
        for entry in merged.into_entries() {
            if entry.name.space == Space::Claim && !entry.is_settleable() {
                term.deferred.push(entry);
            } else {
                adopt(&mut term, now, rho, entry, &mut out);
            }
        }
        Adoption { now, term, out }
    }
}

/// The leader's lock table. Idle (answering `NotLeader`) until
/// [`LockTable::take_over`].
#[derive(Debug, Clone)]
pub struct LockTable {
    config: TableConfig,
    term: Option<Term>,
    /// The next batch id; never reset, so ids never repeat (finding 2).
    next_batch: BatchId,
    expired: u64,
    /// The latest time the table was told (ticks and requests), which
    /// stamps the batches `flush` closes.
    now: Duration,
    /// The last term's epoch and its next sequence and write numbers:
    /// if it serves that epoch again, it goes on from there, even where
    /// the tombstones that held its highest tokens were collected (K1).
    resume: Option<(Epoch, u64, u64)>,
    /// By node, the runs proven ended (K5), kept across terms: the
    /// latest [`PROOFS_PER_NODE`].
    ended_runs: HashMap<NodeId, BTreeSet<Generation>>,
    /// Locks freed on proof of their holder's death (K5).
    proven_dead: u64,
    /// Tombstones pruned (PROTOCOL.md, "Locks" 8).
    pruned: u64,
}

impl LockTable {
    /// An idle table.
    pub fn new(config: TableConfig) -> LockTable {
        LockTable {
            config,
            term: None,
            next_batch: BatchId(0),
            expired: 0,
            now: Duration::ZERO,
            resume: None,
            ended_runs: HashMap::new(),
            proven_dead: 0,
            pruned: 0,
        }
    }

    /// K5: run `ended` of `node` is proven gone with its process (a later
    /// run holds the data directory's lock it held for its whole life).
    /// The user locks whose holders lived in it are freed now, their
    /// tombstones replicated before any waiter is told (K2); its queued
    /// requests are dropped (nobody listens for them); a late request of
    /// it is served unbound. Grants adopted from an earlier term keep
    /// their run; grants bound to none (taken for another process, or
    /// through a node without a data directory) wait out their TTL.
    pub fn handle_run_ended(
        &mut self,
        now: Duration,
        node: NodeId,
        ended: Generation,
    ) -> Vec<LockOutput> {
        let mut out = Vec::new();
        let known = self.ended_runs.entry(node).or_default();
        known.insert(ended);
        while known.len() > PROOFS_PER_NODE {
            known.pop_first();
        }
        self.free_ended_runs(now, &mut out);
        out
    }

    /// Frees the user locks whose holders lived in a run proven ended,
    /// and drops that run's queued requests (K5): one pass over the table
    /// for every run known, so a leader that takes over frees the adopted
    /// grants of runs it learned of before.
    fn free_ended_runs(&mut self, now: Duration, out: &mut Vec<LockOutput>) {
        let Some(term) = &mut self.term else {
            return;
        };
        let ended_runs = &self.ended_runs;
        // Only a proof naming its very run frees a grant. Runs on one
        // directory rise, but a run below a proof may be a live one on a
        // new directory (a lost generation file and a clock stepped
        // back), bound by a leader that had not heard of the proof.
        let dead = |owner: NodeId, bound: Option<Generation>| {
            bound.is_some_and(|b| ended_runs.get(&owner).is_some_and(|runs| runs.contains(&b)))
        };
        let mut freed = Vec::new();
        for (name, lock) in term.locks.iter_mut() {
            if name.space != super::Space::Lock {
                continue;
            }
            lock.waiters.retain_mut(|w| {
                if !dead(w.owner, w.bound) {
                    return true;
                }
                retry_all(&mut w.tickets, out);
                false
            });
            if lock.holder.as_ref().is_some_and(|h| dead(h.owner, h.bound)) {
                freed.push(name.clone());
            }
        }
        self.proven_dead += freed.len() as u64;
        for name in freed {
            self.free(now, &name, false, out);
        }
        if let Some(term) = &mut self.term {
            term.drop_idle_locks();
        }
    }

    /// Locks freed early on proof of their holder's death (K5), for the
    /// metrics.
    pub fn freed_on_proof_total(&self) -> u64 {
        self.proven_dead
    }

    /// This leader's records now hold every completion its promisers
    /// held in theirs (PROTOCOL.md, "Idempotency" 8): the claims' entries
    /// of the promised copies are adopted now, each as the records say
    /// (a completion of its claim or a later one settled out of the
    /// copies is adopted in its place), and claims are served from now
    /// on. `completed` is the leader's committed, unexpired record of a
    /// key, as a claim's completion.
    pub fn records_reconciled(
        &mut self,
        now: Duration,
        mut completed: impl FnMut(&str) -> Option<(Token, Box<ClaimFacts>)>,
    ) -> Vec<LockOutput> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        let rho = self.config.drift;
        let Some(term) = &mut self.term else {
            return out;
        };
        term.records_ready = true;
        for entry in std::mem::take(&mut term.deferred) {
            match completed(&entry.name.text) {
                Some((claim, facts)) if claim >= entry.token => {
                    let done = Entry {
                        name: entry.name.clone(),
                        token: claim,
                        state: EntryState::Free { request_id: None },
                        claim: Some(facts),
                        written: term.epoch,
                    };
                    adopt(term, now, rho, done, &mut out);
                }
                _ => adopt(term, now, rho, entry, &mut out),
            }
        }
        out.extend(self.flush());
        out
    }

    /// True once claims are served in the term it serves.
    pub fn records_ready(&self) -> bool {
        self.term.as_ref().is_some_and(|t| t.records_ready)
    }

    /// The epoch it serves, if leading.
    pub fn epoch(&self) -> Option<Epoch> {
        self.term.as_ref().map(|t| t.epoch)
    }

    fn quorum(&self) -> usize {
        self.config.voters.len() / 2 + 1
    }

    /// `ttl·(1+ρ)/(1−ρ)`: how long past its receive time the leader keeps
    /// a lease (K3).
    pub fn leader_ttl(&self, ttl_ms: u64) -> Duration {
        leader_ttl(self.config.drift, ttl_ms)
    }

    /// Starts serving `epoch` at `now` with the table merged from the
    /// promising majority (K2). Each grant in it is rewritten in the
    /// term's first batch and counts as held only once that batch has a
    /// majority; it expires a full TTL from now, less the time it is
    /// known to have been quiet (K3). The same as stepping down, then
    /// [`Adopter::adopt`] and [`LockTable::install`].
    pub fn take_over(&mut self, now: Duration, epoch: Epoch, merged: Replica) -> Vec<LockOutput> {
        self.now = self.now.max(now);
        let mut out = self.step_down();
        let adoption = self.adopter().adopt(now, epoch, merged);
        out.extend(self.install(adoption));
        out
    }

    /// What adopts a table for this one's next term, apart from it (so a
    /// large table can be adopted on another thread). Taken once the
    /// table stepped down: it carries where the last term left off.
    pub fn adopter(&self) -> Adopter {
        Adopter {
            drift: self.config.drift,
            prune_every: self.config.prune_every,
            resume: self.resume,
        }
    }

    /// Serves the term `adoption` built (stepping down from any other
    /// first).
    pub fn install(&mut self, adoption: Adoption) -> Vec<LockOutput> {
        self.now = self.now.max(adoption.now);
        let now = adoption.now;
        let mut out = self.step_down();
        out.extend(adoption.out);
        self.term = Some(adoption.term);
        // K5: adopted grants whose holders' runs this node already knows
        // ended are freed now (their tombstones follow the term's first
        // batch, and commit before any later holder is told).
        self.free_ended_runs(now, &mut out);
        out.extend(self.flush());
        out
    }

    /// Stops serving: every open request is answered "no quorum, retry"
    /// (K6); the table is rebuilt from the voters at the next takeover.
    pub fn step_down(&mut self) -> Vec<LockOutput> {
        let mut out = Vec::new();
        let Some(term) = self.term.take() else {
            return out;
        };
        self.resume = Some((term.epoch, term.next_seq, term.next_write));
        let mut tickets = Vec::new();
        for lock in term.locks.into_values() {
            if let Some(h) = lock.holder {
                tickets.extend(h.tickets);
            }
            for w in lock.waiters {
                tickets.extend(w.tickets);
            }
        }
        for watchers in term.watchers.into_values() {
            tickets.extend(watchers.into_iter().map(|w| w.ticket));
        }
        // Releases whose tombstone never left: the retry frees the lock
        // at the next leader (it adopted the grant).
        tickets.extend(term.unsent_releases);
        for effect in term.batches.into_effects() {
            match effect {
                Effect::Release { ticket }
                | Effect::Refresh { ticket, .. }
                | Effect::Answer { ticket, .. } => tickets.push(ticket),
                Effect::Grant { .. } | Effect::Adopt { .. } | Effect::Completed { .. } => {}
            }
        }
        tickets.sort_unstable();
        tickets.dedup();
        for ticket in tickets {
            out.push(LockOutput::Reply {
                ticket,
                reply: LockReply::NoQuorum,
            });
        }
        out
    }

    /// Sets the next sequence number (tests of K1 only).
    #[doc(hidden)]
    pub fn set_next_seq(&mut self, seq: u64) {
        if let Some(t) = &mut self.term {
            t.next_seq = seq;
        }
    }

    /// Sets the next write number (tests of K1 only).
    #[doc(hidden)]
    pub fn set_next_write(&mut self, n: u64) {
        if let Some(t) = &mut self.term {
            t.next_write = n;
        }
    }

    /// Leases expired by this table, ever.
    pub fn expired_total(&self) -> u64 {
        self.expired
    }

    /// True while `batch` awaits a majority (or, a prune round's, every
    /// voter).
    pub fn is_pending(&self, batch: BatchId) -> bool {
        self.term.as_ref().is_some_and(|t| {
            t.batches.is_pending(batch) || t.prune.as_ref().is_some_and(|p| p.batch == batch)
        })
    }

    /// Locks held or waited for.
    pub fn active(&self) -> usize {
        self.term.as_ref().map_or(0, |t| t.locks.len())
    }

    /// A client's request, by kind: the `handle_*` of its kind. `owner`
    /// is the node the client asked through.
    pub fn handle_request(
        &mut self,
        now: Duration,
        wall_ms: u64,
        ticket: Ticket,
        owner: NodeId,
        request: LockRequest,
        records: RecordsSay,
    ) -> Vec<LockOutput> {
        let mut out = self.dispatch(now, wall_ms, ticket, owner, request, records);
        self.wake_watchers(now, &mut out);
        out
    }

    fn dispatch(
        &mut self,
        now: Duration,
        wall_ms: u64,
        ticket: Ticket,
        owner: NodeId,
        request: LockRequest,
        records: RecordsSay,
    ) -> Vec<LockOutput> {
        match request {
            LockRequest::Acquire {
                name,
                ttl_ms,
                wait_ms,
                request_id,
            } => self.handle_acquire(now, ticket, owner, &name, ttl_ms, wait_ms, request_id),
            LockRequest::Renew { name, token } => self.handle_renew(now, ticket, &name, token),
            LockRequest::Release { name, token } => self.handle_release(now, ticket, &name, token),
            LockRequest::Status { name } => self.handle_status(now, ticket, &name),
            LockRequest::List { limit } => self.handle_list(now, ticket, limit as usize),
            LockRequest::Begin(begin) => {
                self.handle_begin(now, wall_ms, ticket, owner, begin, records)
            }
            LockRequest::RenewClaim { key, claim } => {
                self.claim_request(ticket, &key, |t, name| t.renew(now, ticket, name, claim))
            }
            LockRequest::Complete { key, claim, result } => {
                self.handle_complete(now, wall_ms, ticket, &key, claim, result, records)
            }
            LockRequest::Abort { key, claim } => {
                self.claim_request(ticket, &key, |t, name| t.release(now, ticket, name, claim))
            }
            LockRequest::Watch {
                name,
                seen,
                wait_ms,
            } => self.handle_watch(now, ticket, &name, seen, wait_ms),
            LockRequest::AcquireBound {
                name,
                ttl_ms,
                wait_ms,
                request_id,
                generation,
            } => self.acquire_lock(
                now,
                ticket,
                owner,
                &name,
                ttl_ms,
                wait_ms,
                request_id,
                Some(generation),
            ),
        }
    }

    /// A watch of the user lock `name`: answered at once if its holder
    /// (committed or adopted, as `Status` reports it) is not `seen`,
    /// otherwise once that changes or the wait runs out.
    pub fn handle_watch(
        &mut self,
        now: Duration,
        ticket: Ticket,
        name: &str,
        seen: Option<Token>,
        wait_ms: u64,
    ) -> Vec<LockOutput> {
        if let Err(e) = check_name(name) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let name = Name::lock(name);
        if visible_holder(term, &name).map(|h| h.token) != seen {
            return self.handle_status(now, ticket, &name.text);
        }
        if term.watchers.values().map(Vec::len).sum::<usize>() >= WATCHERS_MAX {
            // "Retry": a watcher pauses before it asks again (a status
            // equal to what it knows would have it ask at once, in a
            // loop).
            return reply(ticket, LockReply::NoQuorum);
        }
        let wait = Duration::from_millis(wait_ms).min(super::WAIT_MAX);
        term.watchers.entry(name).or_default().push(Watcher {
            ticket,
            seen,
            until: now + wait,
        });
        Vec::new()
    }

    /// Answers the watches whose lock's holder changed or whose wait ran
    /// out.
    fn wake_watchers(&mut self, now: Duration, out: &mut Vec<LockOutput>) {
        let Some(term) = &mut self.term else { return };
        if term.watchers.is_empty() {
            return;
        }
        let mut woken = Vec::new();
        term.watchers.retain(|name, watchers| {
            let holder = term.locks.get(name).and_then(|l| l.holder.as_ref());
            let visible = holder.filter(|h| h.committed || h.adopted);
            watchers.retain(|w| {
                if visible.map(|h| h.token) != w.seen || now >= w.until {
                    woken.push((w.ticket, status_reply(visible, now)));
                    false
                } else {
                    true
                }
            });
            !watchers.is_empty()
        });
        for (ticket, reply) in woken {
            out.push(LockOutput::Reply { ticket, reply });
        }
    }

    /// A request to acquire the user lock `name`.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_acquire(
        &mut self,
        now: Duration,
        ticket: Ticket,
        owner: NodeId,
        name: &str,
        ttl_ms: u64,
        wait_ms: u64,
        request_id: Option<String>,
    ) -> Vec<LockOutput> {
        self.acquire_lock(now, ticket, owner, name, ttl_ms, wait_ms, request_id, None)
    }

    /// An acquire of the user lock `name`, checked against the contract's
    /// limits; `bound`: the run its holder lives in (K5).
    #[allow(clippy::too_many_arguments)]
    fn acquire_lock(
        &mut self,
        now: Duration,
        ticket: Ticket,
        owner: NodeId,
        name: &str,
        ttl_ms: u64,
        wait_ms: u64,
        request_id: Option<String>,
        bound: Option<Generation>,
    ) -> Vec<LockOutput> {
        if let Err(e) = check_acquire(name, ttl_ms, wait_ms, request_id.as_deref()) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        self.acquire(
            now,
            ticket,
            owner,
            &Name::lock(name),
            ttl_ms,
            wait_ms,
            request_id,
            None,
            bound,
        )
    }

    /// Takes `name` (a user lock or a claim) for a request already
    /// checked against the contract's limits.
    #[allow(clippy::too_many_arguments)]
    fn acquire(
        &mut self,
        now: Duration,
        ticket: Ticket,
        owner: NodeId,
        name: &Name,
        ttl_ms: u64,
        wait_ms: u64,
        request_id: Option<String>,
        claim: Option<Box<ClaimFacts>>,
        bound: Option<Generation>,
    ) -> Vec<LockOutput> {
        self.now = self.now.max(now);
        // K5: a request of a run already proven ended (a late one, or a
        // run whose generation fell below it after a lost generation
        // file) is served unbound: its grant waits out its TTL.
        let bound = bound.filter(|&b| {
            self.ended_runs
                .get(&owner)
                .and_then(|runs| runs.last())
                .is_none_or(|&ended| b > ended)
        });
        let mut out = Vec::new();
        if ttl_ms > self.config.ttl_max_ms {
            let max = self.config.ttl_max_ms;
            return reply(
                ticket,
                LockReply::Invalid(format!(
                    "ttl_ms {ttl_ms} is above this cluster's lock-ttl-max-ms, {max}"
                )),
            );
        }
        let locks_max = self.config.locks_max;
        let waiters_max = self.config.waiters_max;
        let rho = self.config.drift;
        let wait = Duration::from_millis(wait_ms);
        // K4: the requester listens `wait + REQUESTER_GRACE` on its clock
        // from its send; the leader's cut-off, `wait + reply_grace` from
        // arrival, is taken short by the drift allowance so that it falls
        // inside that window in real time for round trips below
        // `REQUESTER_GRACE - reply_grace`.
        let shrink = (1.0 - self.config.drift) / (1.0 + self.config.drift);
        let reply_within = (wait + self.config.reply_grace).mul_f64(shrink);
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        // K4: a retry of a request this table knows gets its outcome,
        // whichever node it came through (an HTTP client retries on
        // another agent); request ids are the client's to keep unique.
        if let Some(id) = &request_id {
            let lock = term.locks.get_mut(name);
            if let Some(h) = lock
                .as_ref()
                .and_then(|l| l.holder.as_ref())
                .filter(|h| h.request_id.as_ref() == Some(id))
            {
                let committed = h.committed;
                // K5: a retry from another node or process may be the one
                // told the grant, so no run's end may prove its holder
                // gone. The grant's entry names its run, and a leader that
                // adopts it would go by that: the run is cleared by a
                // durable rewrite, and the retry answered once it holds.
                // Before the grant commits the retry hears "retry" (it
                // would be answered with the grant's own commit).
                let unbind = h.bound.is_some() && (h.owner, h.bound) != (owner, bound);
                let Some(h) = term.locks.get_mut(name).and_then(|l| l.holder.as_mut()) else {
                    return out;
                };
                if unbind && !committed {
                    // Its client still listens: the grant is not late.
                    h.reply_by = h.reply_by.max(now + reply_within);
                    return reply(ticket, LockReply::NoQuorum);
                }
                if committed {
                    let reply = granted(h);
                    refresh(term, rho, name, now, ticket, reply, unbind, &mut out);
                    return out;
                }
                // Told with the grant's commit; its client counts
                // validity from this retry, with the TTL granted
                // (finding 5), so the leader's expiry does too (K3).
                h.expires_at = h.expires_at.max(now + leader_ttl(rho, h.ttl_ms));
                h.reply_by = h.reply_by.max(now + reply_within);
                h.quiet.since = now;
                join(&mut h.tickets, ticket, &mut out);
                return out;
            }
            if let Some(w) = term.locks.get_mut(name).and_then(|l| {
                l.waiters
                    .iter_mut()
                    .find(|w| w.request_id.as_ref() == Some(id))
            }) {
                w.via.insert(owner);
                if (w.owner, w.bound) != (owner, bound) {
                    w.bound = None; // K5, as for a holder above
                }
                join(&mut w.tickets, ticket, &mut out);
                return out;
            }
            let ended = term
                .known
                .get(name)
                .is_some_and(|e| !e.is_held() && e.request_id() == Some(id.as_str()))
                || term.ended.contains(name, id);
            if ended {
                return reply(ticket, LockReply::Ended);
            }
        }
        if !term.locks.contains_key(name) && term.locks.len() >= locks_max {
            return reply(ticket, LockReply::QueueFull { max: locks_max });
        }
        let lock = term.locks.entry(name.clone()).or_default();
        let waiter = Waiter {
            tickets: vec![ticket],
            ttl_ms,
            owner,
            via: BTreeSet::from([owner]),
            request_id,
            deadline: now + wait,
            // K4: past this its requester stops listening.
            reply_by: now + reply_within,
            claim,
            bound,
        };
        if lock.holder.is_none() && lock.waiters.is_empty() {
            lock.waiters.push_back(waiter);
            self.promote(now, name, &mut out);
        } else if wait_ms == 0 {
            out.push(LockOutput::Reply {
                ticket,
                reply: refused(name),
            });
        } else if lock.waiters.len() >= waiters_max {
            out.push(LockOutput::Reply {
                ticket,
                reply: LockReply::QueueFull { max: waiters_max },
            });
        } else {
            lock.waiters.push_back(waiter);
        }
        out
    }

    /// Grants `name` to the head of its queue while it is free.
    fn promote(&mut self, now: Duration, name: &Name, out: &mut Vec<LockOutput>) {
        let rho = self.config.drift;
        let Some(term) = &mut self.term else { return };
        let Some(lock) = term.locks.get_mut(name) else {
            return;
        };
        while lock.holder.is_none() {
            let Some(w) = lock.waiters.pop_front() else {
                break;
            };
            if now > w.deadline {
                for ticket in w.tickets {
                    out.push(LockOutput::Reply {
                        ticket,
                        reply: refused(name),
                    });
                }
                continue;
            }
            let (Some(tok), true) = (token(term.epoch, term.next_seq), term.next_write <= SEQ_MAX)
            else {
                // K1: no token (or write number) left in this epoch; the
                // waiter stays first and the leader asks (once) for a new
                // epoch, or, at the last epoch, says once that tokens are
                // spent.
                lock.waiters.push_front(w);
                let (epoch, exhausted) = (term.epoch, &mut term.exhausted);
                if !*exhausted {
                    *exhausted = true;
                    out.push(if epoch < EPOCH_MAX {
                        LockOutput::NewEpochNeeded
                    } else {
                        LockOutput::TokensSpent
                    });
                }
                break;
            };
            term.next_seq += 1;
            let mut w = w;
            if let Some(facts) = &mut w.claim {
                // I5: set by an earlier claim's expiry, cleared only by a
                // completion, kept through aborts.
                facts.recovered = term
                    .known
                    .get(name)
                    .and_then(|e| e.claim.as_deref())
                    .is_some_and(|f| f.completion.is_none() && f.recovered);
            }
            let version = (term.epoch.0 << 32) | term.next_write;
            term.next_write += 1;
            let holder = Holder {
                token: tok,
                ttl_ms: w.ttl_ms,
                owner: w.owner,
                request_id: w.request_id,
                expires_at: now + leader_ttl(rho, w.ttl_ms),
                committed: false,
                adopted: false,
                tickets: w.tickets,
                reply_by: w.reply_by,
                quiet: Quiet::new(now, w.ttl_ms, 0),
                version,
                claim: w.claim,
                bound: w.bound,
            };
            let entry = Entry {
                name: name.clone(),
                token: tok,
                state: holder.state(0, version),
                claim: holder.claim.clone(),
                written: term.epoch,
            };
            term.claims.note(&term.known, &entry);
            term.known.merge(entry.clone());
            term.batches.write(entry);
            term.batches.effect(Effect::Grant {
                name: name.clone(),
                token: tok,
            });
            lock.holder = Some(holder);
        }
        if lock.holder.is_none() && lock.waiters.is_empty() {
            term.locks.remove(name);
        }
    }

    /// Frees the holder of `name` (release or expiry): a tombstone goes
    /// into the batch, and the lock passes to the head of the queue.
    fn free(&mut self, now: Duration, name: &Name, expired: bool, out: &mut Vec<LockOutput>) {
        let Some(term) = &mut self.term else { return };
        let Some(mut holder) = term.locks.get_mut(name).and_then(|l| l.holder.take()) else {
            return;
        };
        if let Some(facts) = &mut holder.claim {
            // I5: a claim that ran out may have done part of the work.
            facts.recovered |= expired;
        }
        // An uncommitted grant freed before its batch committed: its
        // requester hears "retry".
        for ticket in holder.tickets {
            out.push(LockOutput::Reply {
                ticket,
                reply: LockReply::NoQuorum,
            });
        }
        if let Some(id) = &holder.request_id {
            term.ended.remember(name, id);
        }
        term.frees.insert(name.clone(), (holder.token, None));
        term.write(Entry {
            name: name.clone(),
            token: holder.token,
            state: EntryState::Free {
                request_id: holder.request_id,
            },
            claim: holder.claim,
            written: term.epoch,
        });
        self.promote(now, name, out);
    }

    /// The membership declared `node` dead (or it left): requests queued
    /// only through it are dropped, since nobody could receive their grant
    /// (it would hold the lock for a TTL, through a failover for two).
    /// Requests that also came through a live node stay queued; grants
    /// already made stay (their holder may have been told, K5).
    pub fn handle_node_gone(&mut self, node: NodeId) -> Vec<LockOutput> {
        let mut out = Vec::new();
        let Some(term) = &mut self.term else {
            return out;
        };
        for lock in term.locks.values_mut() {
            lock.waiters.retain_mut(|w| {
                w.via.remove(&node);
                if !w.via.is_empty() {
                    return true;
                }
                retry_all(&mut w.tickets, &mut out);
                false
            });
        }
        term.drop_idle_locks();
        out
    }

    /// A renewal: answered at once while the leader serves (after a
    /// durable write if the grant carries a quiet mark).
    pub fn handle_renew(
        &mut self,
        now: Duration,
        ticket: Ticket,
        name: &str,
        tok: Token,
    ) -> Vec<LockOutput> {
        if let Err(e) = check_name(name) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        self.renew(now, ticket, &Name::lock(name), tok)
    }

    /// Renews `name` (a user lock or a claim) for the holder of `tok`.
    fn renew(&mut self, now: Duration, ticket: Ticket, name: &Name, tok: Token) -> Vec<LockOutput> {
        let rho = self.config.drift;
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let mut out = Vec::new();
        match term.locks.get(name).and_then(|l| l.holder.as_ref()) {
            Some(h) if h.token == tok => {
                if !h.committed {
                    return reply(ticket, LockReply::NoQuorum);
                }
                let reply = LockReply::Renewed { ttl_ms: h.ttl_ms };
                refresh(term, rho, name, now, ticket, reply, false, &mut out);
                out
            }
            // K6: this leader holds the table of a majority, so a token
            // that is not the holder's is known not to hold the lock.
            _ => reply(ticket, LockReply::Lost),
        }
    }

    /// A release.
    pub fn handle_release(
        &mut self,
        now: Duration,
        ticket: Ticket,
        name: &str,
        tok: Token,
    ) -> Vec<LockOutput> {
        if let Err(e) = check_name(name) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        self.release(now, ticket, &Name::lock(name), tok)
    }

    /// Frees `name` (a user lock or a claim) held by `tok`.
    fn release(
        &mut self,
        now: Duration,
        ticket: Ticket,
        name: &Name,
        tok: Token,
    ) -> Vec<LockOutput> {
        let mut out = Vec::new();
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let holds = term
            .locks
            .get(name)
            .and_then(|l| l.holder.as_ref())
            .is_some_and(|h| h.token == tok);
        // K2 (releases): a user lock's release is answered once this
        // leader has applied it and the batch carrying its tombstone is
        // sent (by that flush, after the batch; it waits while no batch
        // can go), not once a majority holds it. Lost in a failover, it
        // leaves the grant held on the voters, so the next leader frees
        // it at its TTL: later, never to two holders (the holder stopped
        // before it asked). An abort of a claim still waits for its
        // tombstone to commit: lost, the claim would expire as
        // `recovered` (I5), which the aborting caller was told it would
        // not be.
        let early = name.space == Space::Lock;
        if holds {
            if early {
                // Answered at the flush that sends its tombstone.
                term.unsent_releases.push(ticket);
            } else {
                term.batches.effect(Effect::Release { ticket });
            }
            self.free(now, name, false, &mut out);
            return out;
        }
        // A retried release of this very token is answered again: a
        // lock's once its tombstone is sent (at once if it was), a
        // claim's once its tombstone holds on a majority (K2).
        match term.frees.get(name) {
            Some(&(freed, batch)) if freed == tok => {
                if early {
                    if batch.is_none() {
                        // Its tombstone has not left yet.
                        term.unsent_releases.push(ticket);
                        return out;
                    }
                    return reply(ticket, LockReply::Released);
                }
                term.batches.effect_on(batch, Effect::Release { ticket });
                return out;
            }
            _ => {}
        }
        let freed = term
            .known
            .get(name)
            .is_some_and(|e| e.token == tok && !e.is_held());
        reply(
            ticket,
            if freed {
                LockReply::Released
            } else {
                LockReply::Lost
            },
        )
    }

    /// Who holds `name` (committed and adopted grants).
    pub fn handle_status(&self, now: Duration, ticket: Ticket, name: &str) -> Vec<LockOutput> {
        if let Err(e) = check_name(name) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        let Some(term) = &self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let holder = visible_holder(term, &Name::lock(name));
        reply(ticket, status_reply(holder, now))
    }

    /// The locks held now, by name (committed and adopted grants).
    pub fn handle_list(&self, now: Duration, ticket: Ticket, limit: usize) -> Vec<LockOutput> {
        let Some(term) = &self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let mut held = term.locks.iter().filter_map(|(name, l)| {
            if name.space != super::Space::Lock {
                return None;
            }
            let h = l.holder.as_ref().filter(|h| h.committed || h.adopted)?;
            Some(super::LockInfo {
                name: name.text.clone(),
                token: h.token,
                expires_in_ms: h.expires_at.saturating_sub(now).as_millis() as u64,
                owner: h.owner,
                waiters: l.waiters.len() as u32,
            })
        });
        let locks: Vec<_> = held.by_ref().take(limit).collect();
        let truncated = held.next().is_some();
        reply(ticket, LockReply::Locks { locks, truncated })
    }

    /// Begins an idempotent operation (DESIGN.md "Idempotency"): the
    /// key's completed record if it has one (once it holds on a majority,
    /// I2, I3), a mismatch if the key was used with another fingerprint
    /// (I7, reported before "in progress"), else a claim in the claim
    /// namespace (I1), waited for like a lock, carrying the fingerprint
    /// and the `recovered` bit (I5).
    ///
    /// This table is the majority read of DESIGN.md's flow: it holds the
    /// merge of a majority of voters' copies from its takeover (K2) and
    /// everything written since, so a completion any client was told of
    /// is in it.
    pub fn handle_begin(
        &mut self,
        now: Duration,
        wall_ms: u64,
        ticket: Ticket,
        owner: NodeId,
        begin: Begin,
        records: RecordsSay,
    ) -> Vec<LockOutput> {
        if let Err(e) = begin.check() {
            return reply(ticket, LockReply::Invalid(e));
        }
        let name = Name::claim(begin.key.as_str());
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        // A completion settled out of the promised copies is in the
        // promisers' records only: none is answered before this leader's
        // records hold theirs.
        if !term.records_ready {
            return reply(ticket, LockReply::NoQuorum);
        }
        // The records' completion, unless the table holds a later claim
        // of the key (a record is committed, I2; a table entry of its
        // claim or an earlier one is at most what the record says, or a
        // grant of its claim left in some copy after the completion).
        if let Some((claim, facts)) = records.completion
            && term.known.get(&name).is_none_or(|e| e.token <= claim)
            && facts
                .completion
                .as_ref()
                .is_some_and(|c| c.expires_at_ms > wall_ms)
        {
            let reply = if facts.fingerprint != begin.fingerprint {
                LockReply::FingerprintMismatch
            } else {
                LockReply::Replay { claim, facts }
            };
            return vec![LockOutput::Reply { ticket, reply }];
        }
        let mut out = Vec::new();
        if let Some((reply, batch)) = completed(term, &name, &begin.fingerprint, wall_ms) {
            match batch {
                Some(batch) => term
                    .batches
                    .effect_on(batch, Effect::Answer { ticket, reply }),
                None => out.push(LockOutput::Reply { ticket, reply }),
            }
            return out;
        }
        // I7 on the live claim, and on the recovery path: a claim that ran
        // out may have done part of its request's work, so the key stays
        // that request's (an abort of a claim not recovered frees it).
        // The keys held: the records' (every completion this leader
        // committed is there) and the table's others (live claims,
        // aborted claims and claims that ran out).
        let held = records
            .held
            .saturating_add(term.claims.keys.saturating_sub(term.claims.completed));
        let unfinished_bytes = term
            .claims
            .bytes
            .saturating_sub(term.claims.completed_bytes);
        let full =
            held >= self.config.claims_max || unfinished_bytes >= self.config.claim_bytes_max;
        if term.known.get(&name).is_none() && full {
            return reply(
                ticket,
                LockReply::StoreFull {
                    // The keys it holds: the count bound, or as many as
                    // fit the byte bound.
                    max: held.min(self.config.claims_max),
                },
            );
        }
        // Completions not settled yet (in the table, or in this leader's
        // copy, which settles as the voters' do) fill the byte bound for
        // a moment: a new key waits ("retry") rather than grow the copies
        // that travel with a promise past their frame.
        if term.known.get(&name).is_none()
            && term.claims.bytes.max(records.unsettled_bytes) >= self.config.claim_bytes_max
        {
            return reply(ticket, LockReply::NoQuorum);
        }
        let live = term.locks.get(&name).and_then(|l| l.holder.as_ref());
        let recovering = term
            .known
            .get(&name)
            .filter(|e| !e.is_held())
            .and_then(|e| e.claim.as_deref())
            .filter(|f| f.recovered && f.completion.is_none());
        if let Some(facts) = live.and_then(|h| h.claim.as_deref()).or(recovering)
            && facts.fingerprint != begin.fingerprint
        {
            return reply(ticket, LockReply::FingerprintMismatch);
        }
        let facts = ClaimFacts {
            completion: None,
            // Set when granted (I5).
            recovered: false,
            fingerprint: begin.fingerprint,
            record_ttl_ms: begin.ttl_ms,
        };
        self.acquire(
            now,
            ticket,
            owner,
            &name,
            begin.claim_ttl_ms,
            begin.wait_ms,
            begin.request_id,
            Some(Box::new(facts)),
            None,
        )
    }

    /// The operation run under `claim` completed: its record (stamped to
    /// expire `ttl_ms` of the begin from now, I6) goes on the claim's
    /// tombstone; the claimant is told once it holds on a majority, every
    /// waiter then gets it as a replay, and every peer is sent it. A claim
    /// that is not live is "lost" (410), unless this completion is what
    /// ended it (a retry).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_complete(
        &mut self,
        now: Duration,
        wall_ms: u64,
        ticket: Ticket,
        key: &str,
        claim: Token,
        result: Vec<u8>,
        records: RecordsSay,
    ) -> Vec<LockOutput> {
        self.now = self.now.max(now);
        if let Err(e) = check_key(key) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        if result.len() > RESULT_BYTES_MAX {
            return reply(
                ticket,
                LockReply::Invalid(format!(
                    "a result is at most {RESULT_BYTES_MAX} bytes, not {}",
                    result.len()
                )),
            );
        }
        let name = Name::claim(key);
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        // A retry of a completion settled into the records (committed,
        // I2): the same answer. A grant of that claim left in a copy
        // after its completion is not completed a second time.
        if records
            .completion
            .as_ref()
            .is_some_and(|(settled, _)| *settled == claim)
        {
            return reply(ticket, LockReply::Recorded);
        }
        // Before the records are reconciled a completion may be settled
        // where this leader cannot see it yet: never "lost" then.
        if !term.records_ready {
            return reply(ticket, LockReply::NoQuorum);
        }
        let holder = term.locks.get(&name).and_then(|l| l.holder.as_ref());
        match holder {
            Some(h) if h.token == claim && !h.committed => {
                return reply(ticket, LockReply::NoQuorum);
            }
            Some(h) if h.token == claim => {}
            _ => {
                // A retry of the completion that ended this claim hears
                // the same, once it holds on a majority; anything else
                // is known not to hold the claim (K6).
                let done = term.known.get(&name).is_some_and(|e| {
                    e.token == claim && e.claim.as_deref().is_some_and(|f| f.completion.is_some())
                });
                if !done {
                    return reply(ticket, LockReply::Lost);
                }
                let reply = LockReply::Recorded;
                match term.frees.get(&name) {
                    Some(&(freed, batch)) if freed == claim => {
                        term.batches
                            .effect_on(batch, Effect::Answer { ticket, reply });
                        return Vec::new();
                    }
                    _ => return vec![LockOutput::Reply { ticket, reply }],
                }
            }
        }
        let Some(lock) = term.locks.remove(&name) else {
            return Vec::new();
        };
        let Some(mut holder) = lock.holder else {
            return Vec::new();
        };
        let mut facts = holder.claim.take().unwrap_or_else(|| {
            // Invariant: entries of the claim namespace carry facts.
            Box::new(ClaimFacts {
                completion: None,
                recovered: false,
                fingerprint: Vec::new(),
                record_ttl_ms: RECORD_TTL_MIN.as_millis() as u64,
            })
        });
        let expires_at_ms = wall_ms.saturating_add(facts.record_ttl_ms);
        facts.completion = Some(Completion {
            expires_at_ms,
            result,
        });
        if let Some(id) = &holder.request_id {
            term.ended.remember(&name, id);
        }
        term.frees.insert(name.clone(), (claim, None));
        let waiters: Vec<Waiter> = lock.waiters.into_iter().collect();
        term.write(Entry {
            name,
            token: claim,
            state: EntryState::Free {
                request_id: holder.request_id,
            },
            claim: Some(facts.clone()),
            written: term.epoch,
        });
        term.batches.effect(Effect::Answer {
            ticket,
            reply: LockReply::Recorded,
        });
        // Every waiter asked with the holder's fingerprint (a mismatch
        // is refused before it queues); each gets the replay.
        for w in waiters {
            let matches = w
                .claim
                .as_deref()
                .is_some_and(|f| f.fingerprint == facts.fingerprint);
            for ticket in w.tickets {
                let reply = if matches {
                    LockReply::Replay {
                        claim,
                        facts: facts.clone(),
                    }
                } else {
                    LockReply::FingerprintMismatch
                };
                term.batches.effect(Effect::Answer { ticket, reply });
            }
        }
        term.batches.effect(Effect::Completed {
            key: key.to_string(),
            claim,
            facts,
        });
        Vec::new()
    }

    /// Drops the claims' tombstones no begin needs any more at wall-clock
    /// `wall_ms` ([`Entry::collectable`]), unless a batch still carries
    /// them; how many went. Every voter does the same to its copy, on its
    /// own clock: nothing needs replicating.
    pub fn collect(&mut self, wall_ms: u64) -> usize {
        let Some(term) = &mut self.term else {
            return 0;
        };
        let (frees, claims) = (&term.frees, &mut term.claims);
        term.known.retain(|e| {
            let go = e.collectable(wall_ms) && !frees.contains_key(&e.name);
            if go {
                claims.forget(e);
            }
            !go
        })
    }

    /// The completed claims' tombstones the table holds that no batch
    /// carries any more (name and claim): those that may be settled.
    pub fn settleable(&self) -> Vec<(Name, Token)> {
        let Some(term) = &self.term else {
            return Vec::new();
        };
        term.known
            .entries()
            .filter(|e| e.is_settleable() && !term.frees.contains_key(&e.name))
            .map(|e| (e.name.clone(), e.token))
            .collect()
    }

    /// Drops the completed claims' tombstones that `settled` accepts
    /// (the driver's records hold their completion, durably: PROTOCOL.md,
    /// "Idempotency" 8), unless a batch still carries them; how many
    /// went. Live claims, aborted and expired claims' tombstones stay.
    pub fn settle(&mut self, mut settled: impl FnMut(&Name, Token) -> bool) -> usize {
        let Some(term) = &mut self.term else {
            return 0;
        };
        let (frees, claims) = (&term.frees, &mut term.claims);
        term.known.retain(|e| {
            let go = e.is_settleable() && !frees.contains_key(&e.name) && settled(&e.name, e.token);
            if go {
                claims.forget(e);
            }
            !go
        })
    }

    /// Idempotency keys the table keeps (claims and their tombstones).
    pub fn claims(&self) -> usize {
        self.term.as_ref().map_or(0, |t| t.claims.keys)
    }

    /// Runs `f` on a claim request for `key`, once the key is valid.
    fn claim_request(
        &mut self,
        ticket: Ticket,
        key: &str,
        f: impl FnOnce(&mut LockTable, &Name) -> Vec<LockOutput>,
    ) -> Vec<LockOutput> {
        if let Err(e) = check_key(key) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        // The claims of the promised copies are adopted once the records
        // are reconciled ([`LockTable::records_reconciled`]).
        if self.term.as_ref().is_some_and(|t| !t.records_ready) {
            return reply(ticket, LockReply::NoQuorum);
        }
        f(self, &Name::claim(key))
    }

    /// Expiries, waiters' deadlines, quiet marks, and batches pending too
    /// long (sent again under a new id).
    pub fn handle_tick(&mut self, now: Duration) -> Vec<LockOutput> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        let rho = self.config.drift;
        let Some(term) = &mut self.term else {
            return out;
        };
        for id in term.batches.requeue_stale(now) {
            for (_, at) in term.frees.values_mut() {
                if *at == Some(id) {
                    *at = None;
                }
            }
        }
        let mut expired = Vec::new();
        let mut marks = Vec::new();
        for (name, lock) in term.locks.iter_mut() {
            if let Some(h) = &mut lock.holder {
                if now >= h.expires_at {
                    expired.push(name.clone());
                } else if h.committed && now >= h.quiet.next_mark {
                    let quiet = now.saturating_sub(h.quiet.since).div_f64(1.0 + rho);
                    let quiet_ms = h.quiet.credit_ms + quiet.as_millis() as u64;
                    marks.push((name.clone(), quiet_ms));
                }
            }
            // Waiters past their deadline hear "held" (409).
            let before = lock.waiters.len();
            let mut kept = VecDeque::with_capacity(before);
            for w in lock.waiters.drain(..) {
                if now > w.deadline {
                    for ticket in w.tickets {
                        out.push(LockOutput::Reply {
                            ticket,
                            reply: refused(name),
                        });
                    }
                } else {
                    kept.push_back(w);
                }
            }
            lock.waiters = kept;
        }
        for (name, quiet_ms) in marks {
            let Some(version) = term.next_version(&mut out) else {
                break;
            };
            let Some(h) = term.locks.get_mut(&name).and_then(|l| l.holder.as_mut()) else {
                continue;
            };
            let spacing = first_mark(h.ttl_ms).max(now.saturating_sub(h.quiet.since));
            h.quiet.next_mark = now + spacing;
            h.quiet.marked = true;
            h.version = version;
            let entry = Entry {
                name: name.clone(),
                token: h.token,
                state: h.state(quiet_ms, version),
                claim: h.claim.clone(),
                written: term.epoch,
            };
            term.write(entry);
        }
        self.expired += expired.len() as u64;
        for name in expired {
            self.free(now, &name, true, &mut out);
        }
        if let Some(term) = &mut self.term {
            term.drop_idle_locks();
        }
        self.start_prune(now, &mut out);
        self.wake_watchers(now, &mut out);
        out
    }

    /// When [`LockTable::handle_tick`] is next due, `None` when never (no
    /// term). While anything in the term waits on time (a holder's TTL or
    /// quiet mark, a waiter's deadline, a batch or a prune round awaiting
    /// its majority, a watch), every `granularity` from `now`, as a
    /// periodic tick would; otherwise only the next prune round.
    pub fn next_deadline(&self, now: Duration, granularity: Duration) -> Option<Duration> {
        let term = self.term.as_ref()?;
        let waiting = !term.locks.is_empty()
            || !term.batches.is_idle()
            || !term.frees.is_empty()
            || term.prune.is_some()
            || !term.watchers.is_empty();
        Some(if waiting {
            now + granularity
        } else {
            term.next_prune.max(now)
        })
    }

    /// Starts a prune round when one is due and none is under way (one
    /// that waited [`PRUNE_WAIT`] is given up): the released user locks'
    /// tombstones no batch carries and no waiter waits behind, up to
    /// [`PRUNE_BYTES_MAX`], go to every voter again in a batch of their
    /// own.
    fn start_prune(&mut self, now: Duration, out: &mut Vec<LockOutput>) {
        let every = self.config.prune_every;
        let wait = self.config.prune_wait.min(PRUNE_WAIT);
        let Some(term) = &mut self.term else {
            return;
        };
        if term.prune.as_ref().is_some_and(|p| now >= p.started + wait) {
            term.prune = None;
            term.next_prune = now + every;
        }
        if term.prune.is_some() || now < term.next_prune {
            return;
        }
        term.next_prune = now + every;
        let (mut bytes, mut full) = (0, false);
        let entries: Vec<Entry> = term
            .known
            .entries()
            .filter(|e| prunable(term, e))
            .take_while(|e| {
                bytes += tombstone_weight(e);
                full = bytes > PRUNE_BYTES_MAX;
                !full
            })
            .cloned()
            .collect();
        if entries.is_empty() {
            return;
        }
        let batch = self.next_batch;
        self.next_batch = batch.next();
        term.prune = Some(Prune {
            batch,
            entries: entries.clone(),
            acked: BTreeSet::new(),
            started: now,
            full,
        });
        out.push(LockOutput::Replicate { batch, entries });
    }

    /// Every voter acked the prune round's batch: the tombstones still as
    /// it sent them (no grant since, no batch carrying their lock) leave
    /// the table and go to the voters to forget, with a floor above
    /// every batch sent so far; the batches in flight go out again above
    /// it.
    fn finish_prune(&mut self, now: Duration, out: &mut Vec<LockOutput>) {
        let every = self.config.prune_every;
        let Some(term) = &mut self.term else {
            return;
        };
        let Some(prune) = term.prune.take() else {
            return;
        };
        // A backlog is pruned round after round.
        term.next_prune = if prune.full { now } else { now + every };
        let carried: std::collections::HashSet<&Name> =
            term.batches.entries().map(|e| &e.name).collect();
        let gone: Vec<Entry> = prune
            .entries
            .into_iter()
            .filter(|e| {
                !carried.contains(&e.name)
                    && prunable(term, e)
                    && term.known.get(&e.name) == Some(e)
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        for e in &gone {
            term.known.remove(&e.name);
        }
        let floor = Floor {
            epoch: term.epoch,
            batch: self.next_batch,
        };
        if !term.batches.requeue_all().is_empty() {
            for (_, at) in term.frees.values_mut() {
                *at = None;
            }
        }
        self.pruned += gone.len() as u64;
        out.push(LockOutput::Forget {
            floor,
            entries: gone,
        });
        out.extend(self.flush());
    }

    /// Entries the serving table knows (grants and tombstones, claims
    /// included); 0 when not serving.
    pub fn entries(&self) -> usize {
        self.term.as_ref().map_or(0, |t| t.known.len())
    }

    /// Released locks' tombstones this table pruned, ever.
    pub fn pruned_total(&self) -> u64 {
        self.pruned
    }

    /// Closes the current batch: everything since the last flush is sent
    /// in one replication round. While no slot is free (with effects,
    /// [`BATCHES_IN_FLIGHT_MAX`] batches with effects await their
    /// majority; without, twice as many in all), the batch stays open
    /// and keeps growing: under load each round carries more, at no cost
    /// to an idle table.
    pub fn flush(&mut self) -> Vec<LockOutput> {
        let Some(term) = &mut self.term else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some((batch, entries)) = term.batches.flush(self.now, &mut self.next_batch) {
            for (_, at) in term.frees.values_mut() {
                at.get_or_insert(batch);
            }
            out.push(LockOutput::Replicate { batch, entries });
        }
        // The releases' replies after the batch that carries their
        // tombstones (the driver sends in the order given).
        if term.batches.is_sent() {
            for ticket in term.unsent_releases.drain(..) {
                out.push(LockOutput::Reply {
                    ticket,
                    reply: LockReply::Released,
                });
            }
        }
        out
    }

    /// Voter `from` holds batch `batch` durably (the leader reports its
    /// own copy too, once made durable).
    pub fn handle_ack(&mut self, now: Duration, batch: BatchId, from: NodeId) -> Vec<LockOutput> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        if !self.config.voters.contains(&from) {
            return out;
        }
        let quorum = self.quorum();
        let rho = self.config.drift;
        let Some(term) = &mut self.term else {
            return out;
        };
        let wait = self.config.prune_wait.min(PRUNE_WAIT);
        if let Some(prune) = term.prune.as_mut().filter(|p| p.batch == batch) {
            if now >= prune.started + wait {
                // Given up at the next tick; a late ack forgets nothing.
                return out;
            }
            prune.acked.insert(from);
            if self.config.voters.iter().all(|v| prune.acked.contains(v)) {
                self.finish_prune(now, &mut out);
            }
            return out;
        }
        let Some(effects) = term.batches.ack(now, batch, from, quorum) else {
            return out;
        };
        term.frees.retain(|_, (_, at)| *at != Some(batch));
        let mut late = Vec::new();
        for effect in effects {
            match effect {
                Effect::Release { ticket } => out.push(LockOutput::Reply {
                    ticket,
                    reply: LockReply::Released,
                }),
                Effect::Answer { ticket, reply } => out.push(LockOutput::Reply { ticket, reply }),
                Effect::Completed { key, claim, facts } => {
                    out.push(LockOutput::Completed { key, claim, facts })
                }
                Effect::Refresh {
                    name,
                    token,
                    version,
                    ticket,
                    reply,
                } => {
                    let holder = term
                        .locks
                        .get_mut(&name)
                        .and_then(|l| l.holder.as_mut())
                        .filter(|h| h.token == token);
                    if let Some(h) = holder {
                        if h.version == version {
                            // The newest write of the grant has nothing quiet.
                            h.quiet.marked = false;
                        }
                        out.push(LockOutput::Reply { ticket, reply });
                        continue;
                    }
                    // The grant ended while this write was on its way: a
                    // retry of its acquire grants nothing (K4), a retried
                    // begin asks again (and finds what the claim came
                    // to), a renewal hears it lost the lock (K6).
                    let reply = match reply {
                        LockReply::Granted { .. } => LockReply::Ended,
                        LockReply::Claimed { .. } => LockReply::NoQuorum,
                        _ => LockReply::Lost,
                    };
                    out.push(LockOutput::Reply { ticket, reply });
                }
                Effect::Grant { name, token: tok } => {
                    let Some((h, tickets)) = commit(term, &name, tok) else {
                        continue;
                    };
                    let answer = if now > h.reply_by && !tickets.is_empty() {
                        // K4: its requester no longer listens; free it.
                        let answer = refused(&name);
                        late.push(name);
                        answer
                    } else {
                        granted(h)
                    };
                    for ticket in tickets {
                        out.push(LockOutput::Reply {
                            ticket,
                            reply: answer.clone(),
                        });
                    }
                }
                Effect::Adopt { name, token: tok } => {
                    let Some((h, tickets)) = commit(term, &name, tok) else {
                        continue;
                    };
                    let answer = granted(h);
                    // Retries that waited for the adoption are answered
                    // like renewals (never released as late: the grant
                    // may have been told in an earlier term).
                    for ticket in tickets {
                        refresh(
                            term,
                            rho,
                            &name,
                            now,
                            ticket,
                            answer.clone(),
                            false,
                            &mut out,
                        );
                    }
                }
            }
        }
        for name in late {
            self.free(now, &name, false, &mut out);
        }
        self.wake_watchers(now, &mut out);
        out
    }
}

/// True for a released user lock's tombstone that a prune round may
/// take: no batch of the term carries its release any more, and no
/// holder or waiter of its lock is in the table.
fn prunable(term: &Term, e: &Entry) -> bool {
    e.name.space == Space::Lock
        && !e.is_held()
        && !term.frees.contains_key(&e.name)
        && !term.locks.contains_key(&e.name)
}

/// An upper bound of a tombstone's bytes on the wire.
fn tombstone_weight(e: &Entry) -> usize {
    e.name.text.len() + e.request_id().map_or(0, str::len) + 64
}

/// Answers every ticket "no quorum, retry" (a request nobody can
/// receive the grant of).
fn retry_all(tickets: &mut Vec<Ticket>, out: &mut Vec<LockOutput>) {
    for ticket in tickets.drain(..) {
        out.push(LockOutput::Reply {
            ticket,
            reply: LockReply::NoQuorum,
        });
    }
}

/// What `Status` says of a lock whose visible holder is `holder`.
fn status_reply(holder: Option<&Holder>, now: Duration) -> LockReply {
    LockReply::Status {
        token: holder.map(|h| h.token),
        expires_in_ms: holder.map_or(0, |h| h.expires_at.saturating_sub(now).as_millis() as u64),
        owner: holder.map(|h| h.owner),
    }
}

/// The holder of `name` that `Status` reports: committed or adopted.
fn visible_holder<'a>(term: &'a Term, name: &Name) -> Option<&'a Holder> {
    term.locks
        .get(name)
        .and_then(|l| l.holder.as_ref())
        .filter(|h| h.committed || h.adopted)
}

/// Marks the holder of `name` committed if it still holds `tok`; it and
/// the tickets that waited for the commit.
/// Takes `entry` of the promised copies into `term` (K2): a grant is
/// rewritten in the term's first batch and counts as held only once that
/// batch has a majority; it expires a full TTL from `now`, less the time
/// it is known to have been quiet (K3). A tombstone is rewritten as this
/// epoch's; an adopted completion goes to every peer once rewritten.
fn adopt(term: &mut Term, now: Duration, rho: f64, entry: Entry, out: &mut Vec<LockOutput>) {
    let epoch = term.epoch;
    match entry.state {
        EntryState::Held {
            ttl_ms,
            owner,
            request_id,
            quiet_ms,
            bound,
            ..
        } => {
            // Without a write number left, the grant is not
            // rewritten: it stays uncommitted this term (its
            // renewals hear "retry", nobody else gets it) until
            // the new epoch asked for.
            let version = term.next_version(out);
            let quiet = Duration::from_millis(quiet_ms).mul_f64(1.0 + rho);
            term.locks.insert(
                entry.name.clone(),
                Lock {
                    holder: Some(Holder {
                        token: entry.token,
                        ttl_ms,
                        owner,
                        request_id: request_id.clone(),
                        expires_at: now + leader_ttl(rho, ttl_ms).saturating_sub(quiet),
                        committed: false,
                        adopted: true,
                        tickets: Vec::new(),
                        reply_by: now,
                        quiet: Quiet::new(now, ttl_ms, quiet_ms),
                        version: version.unwrap_or(0),
                        claim: entry.claim.clone(),
                        // K5: the run it lives in, as its writes carry it.
                        bound,
                    }),
                    waiters: VecDeque::new(),
                },
            );
            let Some(version) = version else {
                return;
            };
            term.batches.effect(Effect::Adopt {
                name: entry.name.clone(),
                token: entry.token,
            });
            term.write(Entry {
                name: entry.name,
                token: entry.token,
                state: EntryState::Held {
                    ttl_ms,
                    owner,
                    request_id,
                    quiet_ms,
                    version,
                    bound,
                },
                claim: entry.claim,
                written: epoch,
            });
        }
        EntryState::Free { .. } => {
            // Rewritten as this epoch's: it outranks every write
            // of an earlier epoch this term does not follow (K2).
            term.frees.insert(entry.name.clone(), (entry.token, None));
            // An adopted completion goes to every peer's records
            // once the rewrite holds on a majority (the leader that
            // committed it may have died before its notices left).
            if entry.is_settleable()
                && let Some(facts) = &entry.claim
            {
                term.batches.effect(Effect::Completed {
                    key: entry.name.text.clone(),
                    claim: entry.token,
                    facts: facts.clone(),
                });
            }
            term.write(Entry {
                written: epoch,
                ..entry
            });
        }
    }
}

fn commit<'t>(
    term: &'t mut Term,
    name: &Name,
    tok: Token,
) -> Option<(&'t mut Holder, Vec<Ticket>)> {
    let h = term
        .locks
        .get_mut(name)
        .and_then(|l| l.holder.as_mut())
        .filter(|h| h.token == tok)?;
    h.committed = true;
    let tickets = std::mem::take(&mut h.tickets);
    Some((h, tickets))
}

/// Answers a renewal of a committed grant, or an acquire retry that finds
/// it: the leader's expiry moves to `now` plus the TTL granted (K3, and
/// finding 5: whatever TTL a retry carries), and the holder counts as
/// heard from now. With a quiet mark possibly on the voters, the answer
/// waits for a write of the grant with nothing quiet to hold on a
/// majority; otherwise it goes at once.
#[allow(clippy::too_many_arguments)]
fn refresh(
    term: &mut Term,
    rho: f64,
    name: &Name,
    now: Duration,
    ticket: Ticket,
    reply: LockReply,
    rewrite: bool,
    out: &mut Vec<LockOutput>,
) {
    let marked = term
        .locks
        .get(name)
        .and_then(|l| l.holder.as_ref())
        .is_some_and(|h| h.quiet.marked);
    // `rewrite`: the grant's run is cleared (K5) by a new version, and
    // the reply waits for its commit as a marked one's does (the run is
    // cleared only with that version: without a write number the retry
    // hears "retry" and the grant stays bound).
    let write = marked || rewrite;
    let version = if write {
        match term.next_version(out) {
            Some(v) => v,
            None => {
                // No write number left: the renewal cannot be made durable
                // in this epoch; its holder retries under the next one.
                out.push(LockOutput::Reply {
                    ticket,
                    reply: LockReply::NoQuorum,
                });
                return;
            }
        }
    } else {
        0
    };
    let Some(h) = term.locks.get_mut(name).and_then(|l| l.holder.as_mut()) else {
        return;
    };
    h.expires_at = h.expires_at.max(now + leader_ttl(rho, h.ttl_ms));
    h.quiet = Quiet {
        credit_ms: 0,
        since: now,
        next_mark: now + first_mark(h.ttl_ms),
        marked: h.quiet.marked,
    };
    if !write {
        out.push(LockOutput::Reply { ticket, reply });
        return;
    }
    h.version = version;
    if rewrite {
        h.bound = None;
        // Until this version commits, later retries and renewals write
        // (without the run) and wait too: answered at once, a second
        // retry from elsewhere would be told before the unbind holds.
        h.quiet.marked = true;
    }
    let entry = Entry {
        name: name.clone(),
        token: h.token,
        state: h.state(0, version),
        claim: h.claim.clone(),
        written: term.epoch,
    };
    let token = entry.token;
    term.write(entry);
    term.batches.effect(Effect::Refresh {
        name: name.clone(),
        token,
        version,
        ticket,
        reply,
    });
}

/// Adds a retry's ticket to a request's, answering the oldest "retry"
/// beyond [`TICKETS_PER_REQUEST_MAX`] (its caller gave up on it).
fn join(tickets: &mut Vec<Ticket>, ticket: Ticket, out: &mut Vec<LockOutput>) {
    if tickets.len() >= TICKETS_PER_REQUEST_MAX {
        let oldest = tickets.remove(0);
        out.push(LockOutput::Reply {
            ticket: oldest,
            reply: LockReply::NoQuorum,
        });
    }
    tickets.push(ticket);
}

/// When a holder quiet since `since` gets its first quiet mark: after
/// half its TTL (a holder renewing at a third of it is never marked), at
/// most [`QUIET_MARK_FIRST_MAX`] (so leaders serving that long each add
/// to a dead holder's quiet time).
fn first_mark(ttl_ms: u64) -> Duration {
    (Duration::from_millis(ttl_ms) / 2).min(QUIET_MARK_FIRST_MAX)
}

/// `ttl·(1+ρ)/(1−ρ)` (K3).
fn leader_ttl(rho: f64, ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms).mul_f64((1.0 + rho) / (1.0 - rho))
}

/// The answer to a begin when the table knows the key completed and the
/// record has not expired at `wall_ms`: a replay, or a mismatch (I7);
/// with the batch its completion awaits a majority in, if it does
/// (`Some(None)`: the open one; I2, I3: an adopted completion is
/// rewritten in the term's first batch).
fn completed(
    term: &Term,
    name: &Name,
    fingerprint: &[u8],
    wall_ms: u64,
) -> Option<(LockReply, Option<Option<BatchId>>)> {
    let entry = term.known.get(name).filter(|e| !e.is_held())?;
    let facts = entry.claim.as_deref()?;
    let completion = facts.completion.as_ref()?;
    if completion.expires_at_ms <= wall_ms {
        return None;
    }
    let reply = if facts.fingerprint != fingerprint {
        LockReply::FingerprintMismatch
    } else {
        LockReply::Replay {
            claim: entry.token,
            facts: Box::new(facts.clone()),
        }
    };
    let pending = match term.frees.get(name) {
        Some(&(freed, batch)) if freed == entry.token => Some(batch),
        _ => None,
    };
    Some((reply, pending))
}

/// What a grant's requester is told: the lock, or the claim.
fn granted(h: &Holder) -> LockReply {
    match &h.claim {
        None => LockReply::Granted {
            token: h.token,
            ttl_ms: h.ttl_ms,
        },
        Some(facts) => LockReply::Claimed {
            claim: h.token,
            ttl_ms: h.ttl_ms,
            recovered: facts.recovered,
        },
    }
}

/// What a requester hears when `name` is held past its wait.
fn refused(name: &Name) -> LockReply {
    match name.space {
        Space::Lock => LockReply::Held,
        Space::Claim => LockReply::InProgress,
    }
}

fn reply(ticket: Ticket, reply: LockReply) -> Vec<LockOutput> {
    vec![LockOutput::Reply { ticket, reply }]
}

#[cfg(test)]
mod tests;
