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
//! - Renewals are answered at once: they need only the leader's lease.
//! - The leader expires a lease at its receive time of the acquire or
//!   renew plus `ttl·(1+ρ)/(1−ρ)` (K3), adopted grants likewise from
//!   takeover.
//! - Tokens are `(epoch << 32) | seq` (K1); when the sequence is spent the
//!   table asks for a new epoch and grants nothing until it has one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::{Entry, EntryState, LockReply, Replica, check_acquire, check_name, token};
use crate::config::NodeId;

/// Replication rounds awaiting a majority before the next one is sent.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;

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
        /// The batch id.
        batch: u64,
        /// What to merge.
        entries: Vec<Entry>,
    },
    /// This epoch's sequence numbers are spent: take a new epoch (K1).
    NewEpochNeeded,
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
    /// How long past a request's wait its requester still listens; a grant
    /// committed later is released (K4).
    pub reply_grace: Duration,
    /// The longest TTL granted (`lock-ttl-max-ms`).
    pub ttl_max_ms: u64,
    /// The voter set.
    pub voters: Vec<NodeId>,
}

impl TableConfig {
    /// A table config with default bounds.
    pub fn new(voters: &[NodeId], drift: f64) -> TableConfig {
        TableConfig {
            drift,
            waiters_max: 1024,
            locks_max: 100_000,
            reply_grace: Duration::from_secs(1),
            ttl_max_ms: super::TTL_MAX.as_millis() as u64,
            voters: voters.to_vec(),
        }
    }
}

#[derive(Debug, Clone)]
struct Holder {
    token: u64,
    ttl_ms: u64,
    owner: NodeId,
    request_id: Option<String>,
    expires_at: Duration,
    committed: bool,
    tickets: Vec<Ticket>,
    /// Past this, nobody listens for the grant any more (K4).
    reply_by: Duration,
}

#[derive(Debug, Clone)]
struct Waiter {
    tickets: Vec<Ticket>,
    ttl_ms: u64,
    owner: NodeId,
    request_id: Option<String>,
    deadline: Duration,
    reply_by: Duration,
}

#[derive(Debug, Clone, Default)]
struct Lock {
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Clone)]
enum Effect {
    Grant { name: String, token: u64 },
    Release { ticket: Ticket },
}

#[derive(Debug, Clone)]
struct Batch {
    acks: BTreeSet<NodeId>,
    effects: Vec<Effect>,
}

#[derive(Debug, Clone)]
struct Term {
    epoch: u64,
    next_seq: u64,
    locks: BTreeMap<String, Lock>,
    /// Every entry this term knows: adopted, then issued.
    known: Replica,
    batches: BTreeMap<u64, Batch>,
    next_batch: u64,
    outbox: Vec<Entry>,
    effects: Vec<Effect>,
    /// A new epoch was asked for (K1).
    exhausted: bool,
}

/// The leader's lock table. Idle (answering `NotLeader`) until
/// [`LockTable::take_over`].
#[derive(Debug, Clone)]
pub struct LockTable {
    config: TableConfig,
    term: Option<Term>,
    expired: u64,
}

impl LockTable {
    /// An idle table.
    pub fn new(config: TableConfig) -> LockTable {
        LockTable {
            config,
            term: None,
            expired: 0,
        }
    }

    /// The epoch it serves, if leading.
    pub fn epoch(&self) -> Option<u64> {
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
    /// promising majority (K2): each grant in it gets a full TTL from now
    /// (K3).
    pub fn take_over(&mut self, now: Duration, epoch: u64, merged: Replica) -> Vec<LockOutput> {
        let mut out = self.step_down();
        let mut locks = BTreeMap::new();
        for entry in merged.entries() {
            if let EntryState::Held {
                ttl_ms,
                owner,
                request_id,
            } = &entry.state
            {
                locks.insert(
                    entry.name.clone(),
                    Lock {
                        holder: Some(Holder {
                            token: entry.token,
                            ttl_ms: *ttl_ms,
                            owner: *owner,
                            request_id: request_id.clone(),
                            expires_at: now + self.leader_ttl(*ttl_ms),
                            committed: true,
                            tickets: Vec::new(),
                            reply_by: now,
                        }),
                        waiters: VecDeque::new(),
                    },
                );
            }
        }
        // The same epoch served again (after its lease lapsed) goes on
        // from its last token: tokens never repeat (K1).
        let next_seq = merged
            .entries()
            .filter(|e| super::token_epoch(e.token) == epoch)
            .map(|e| (e.token & super::SEQ_MAX) + 1)
            .max()
            .unwrap_or(1);
        self.term = Some(Term {
            epoch,
            next_seq,
            locks,
            known: merged,
            batches: BTreeMap::new(),
            next_batch: 0,
            outbox: Vec::new(),
            effects: Vec::new(),
            exhausted: false,
        });
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
        let mut tickets = Vec::new();
        for lock in term.locks.into_values() {
            if let Some(h) = lock.holder {
                tickets.extend(h.tickets);
            }
            for w in lock.waiters {
                tickets.extend(w.tickets);
            }
        }
        let effects = term.batches.into_values().flat_map(|b| b.effects);
        for effect in effects.chain(term.effects) {
            if let Effect::Release { ticket } = effect {
                tickets.push(ticket);
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

    /// Leases expired by this table, ever.
    pub fn expired_total(&self) -> u64 {
        self.expired
    }

    /// True while `batch` awaits a majority.
    pub fn is_pending(&self, batch: u64) -> bool {
        self.term
            .as_ref()
            .is_some_and(|t| t.batches.contains_key(&batch))
    }

    /// Locks held or waited for.
    pub fn active(&self) -> usize {
        self.term.as_ref().map_or(0, |t| t.locks.len())
    }

    /// A request to acquire `name`.
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
        let mut out = Vec::new();
        if let Err(e) = check_acquire(name, ttl_ms, wait_ms, request_id.as_deref()) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
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
        let grace = self.config.reply_grace;
        let leader_ttl = self.leader_ttl(ttl_ms);
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        if !term.locks.contains_key(name) && term.locks.len() >= locks_max {
            return reply(ticket, LockReply::QueueFull { max: locks_max });
        }
        let lock = term.locks.entry(name.to_string()).or_default();
        // K4: a retry of a request this table knows gets its outcome.
        if let Some(id) = &request_id {
            if let Some(h) = &mut lock.holder
                && h.request_id.as_ref() == Some(id)
                && h.owner == owner
            {
                // The requester counts its lease from this retry's send
                // time, which may be later than the grant (K3, K4).
                h.expires_at = h.expires_at.max(now + leader_ttl);
                if h.committed {
                    out.push(LockOutput::Reply {
                        ticket,
                        reply: LockReply::Granted {
                            token: h.token,
                            ttl_ms: h.ttl_ms,
                        },
                    });
                } else {
                    h.tickets.push(ticket);
                }
                return out;
            }
            if let Some(w) = lock
                .waiters
                .iter_mut()
                .find(|w| w.request_id.as_ref() == Some(id) && w.owner == owner)
            {
                w.tickets.push(ticket);
                return out;
            }
        }
        let waiter = Waiter {
            tickets: vec![ticket],
            ttl_ms,
            owner,
            request_id,
            deadline: now + Duration::from_millis(wait_ms),
            reply_by: now + Duration::from_millis(wait_ms) + grace,
        };
        if lock.holder.is_none() && lock.waiters.is_empty() {
            lock.waiters.push_back(waiter);
            self.promote(now, name, &mut out);
        } else if wait_ms == 0 {
            out.push(LockOutput::Reply {
                ticket,
                reply: LockReply::Held,
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
    fn promote(&mut self, now: Duration, name: &str, out: &mut Vec<LockOutput>) {
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
                        reply: LockReply::Held,
                    });
                }
                continue;
            }
            let Some(tok) = token(term.epoch, term.next_seq) else {
                // K1: no token left in this epoch; the waiter stays first
                // and the leader asks (once) for a new epoch.
                lock.waiters.push_front(w);
                if !term.exhausted {
                    term.exhausted = true;
                    out.push(LockOutput::NewEpochNeeded);
                }
                break;
            };
            term.next_seq += 1;
            let entry = Entry {
                name: name.to_string(),
                token: tok,
                state: EntryState::Held {
                    ttl_ms: w.ttl_ms,
                    owner: w.owner,
                    request_id: w.request_id.clone(),
                },
            };
            term.known.merge(entry.clone());
            term.outbox.push(entry);
            term.effects.push(Effect::Grant {
                name: name.to_string(),
                token: tok,
            });
            let ttl = leader_ttl(rho, w.ttl_ms);
            lock.holder = Some(Holder {
                token: tok,
                ttl_ms: w.ttl_ms,
                owner: w.owner,
                request_id: w.request_id,
                expires_at: now + ttl,
                committed: false,
                tickets: w.tickets,
                reply_by: w.reply_by,
            });
        }
        if lock.holder.is_none() && lock.waiters.is_empty() {
            term.locks.remove(name);
        }
    }

    /// Frees the holder of `name` (release or expiry): a tombstone goes
    /// into the batch, and the lock passes to the head of the queue.
    fn free(&mut self, now: Duration, name: &str, out: &mut Vec<LockOutput>) {
        let Some(term) = &mut self.term else { return };
        let Some(holder) = term.locks.get_mut(name).and_then(|l| l.holder.take()) else {
            return;
        };
        // An uncommitted grant freed before its batch committed: its
        // requester hears "retry".
        for ticket in holder.tickets {
            out.push(LockOutput::Reply {
                ticket,
                reply: LockReply::NoQuorum,
            });
        }
        let entry = Entry {
            name: name.to_string(),
            token: holder.token,
            state: EntryState::Free,
        };
        term.known.merge(entry.clone());
        term.outbox.push(entry);
        self.promote(now, name, out);
    }

    /// A renewal: answered at once while the leader serves.
    pub fn handle_renew(
        &mut self,
        now: Duration,
        ticket: Ticket,
        name: &str,
        tok: u64,
    ) -> Vec<LockOutput> {
        if let Err(e) = check_name(name) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let rho = self.config.drift;
        match term.locks.get_mut(name).and_then(|l| l.holder.as_mut()) {
            Some(h) if h.token == tok => {
                if !h.committed {
                    return reply(ticket, LockReply::NoQuorum);
                }
                h.expires_at = h.expires_at.max(now + leader_ttl(rho, h.ttl_ms));
                reply(ticket, LockReply::Renewed { ttl_ms: h.ttl_ms })
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
        tok: u64,
    ) -> Vec<LockOutput> {
        let mut out = Vec::new();
        if let Err(e) = check_name(name) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        let Some(term) = &mut self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let holds = term
            .locks
            .get(name)
            .and_then(|l| l.holder.as_ref())
            .is_some_and(|h| h.token == tok);
        if holds {
            term.effects.push(Effect::Release { ticket });
            self.free(now, name, &mut out);
            return out;
        }
        // A retried release of this very token is answered again.
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

    /// Who holds `name`.
    pub fn handle_status(&self, now: Duration, ticket: Ticket, name: &str) -> Vec<LockOutput> {
        if let Err(e) = check_name(name) {
            return reply(ticket, LockReply::Invalid(e.to_string()));
        }
        let Some(term) = &self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let holder = term
            .locks
            .get(name)
            .and_then(|l| l.holder.as_ref())
            .filter(|h| h.committed);
        reply(
            ticket,
            LockReply::Status {
                token: holder.map(|h| h.token),
                expires_in_ms: holder
                    .map_or(0, |h| h.expires_at.saturating_sub(now).as_millis() as u64),
                owner: holder.map(|h| h.owner),
            },
        )
    }

    /// The locks held now, by name (committed grants only).
    pub fn handle_list(&self, now: Duration, ticket: Ticket, limit: usize) -> Vec<LockOutput> {
        let Some(term) = &self.term else {
            return reply(ticket, LockReply::NotLeader);
        };
        let mut held = term.locks.iter().filter_map(|(name, l)| {
            let h = l.holder.as_ref().filter(|h| h.committed)?;
            Some(super::LockInfo {
                name: name.clone(),
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

    /// Expiries and waiters' deadlines.
    pub fn handle_tick(&mut self, now: Duration) -> Vec<LockOutput> {
        let mut out = Vec::new();
        let Some(term) = &mut self.term else {
            return out;
        };
        let mut expired = Vec::new();
        for (name, lock) in term.locks.iter_mut() {
            if lock.holder.as_ref().is_some_and(|h| now >= h.expires_at) {
                expired.push(name.clone());
            }
            // Waiters past their deadline hear "held" (409).
            let before = lock.waiters.len();
            let mut kept = VecDeque::with_capacity(before);
            for w in lock.waiters.drain(..) {
                if now > w.deadline {
                    for ticket in w.tickets {
                        out.push(LockOutput::Reply {
                            ticket,
                            reply: LockReply::Held,
                        });
                    }
                } else {
                    kept.push_back(w);
                }
            }
            lock.waiters = kept;
        }
        self.expired += expired.len() as u64;
        for name in expired {
            self.free(now, &name, &mut out);
        }
        if let Some(term) = &mut self.term {
            term.locks
                .retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
        }
        out
    }

    /// Closes the current batch: everything since the last flush is sent
    /// in one replication round. While [`BATCHES_IN_FLIGHT_MAX`] batches
    /// await their majority, the batch stays open and keeps growing: under
    /// load each round carries more, at no cost to an idle table.
    pub fn flush(&mut self) -> Vec<LockOutput> {
        let Some(term) = &mut self.term else {
            return Vec::new();
        };
        if term.outbox.is_empty() && term.effects.is_empty() {
            return Vec::new();
        }
        if term.batches.len() >= BATCHES_IN_FLIGHT_MAX {
            return Vec::new();
        }
        let batch = term.next_batch;
        term.next_batch += 1;
        term.batches.insert(
            batch,
            Batch {
                acks: BTreeSet::new(),
                effects: std::mem::take(&mut term.effects),
            },
        );
        vec![LockOutput::Replicate {
            batch,
            entries: std::mem::take(&mut term.outbox),
        }]
    }

    /// Voter `from` holds batch `batch` durably (the leader reports its
    /// own copy too, once made durable).
    pub fn handle_ack(&mut self, now: Duration, batch: u64, from: NodeId) -> Vec<LockOutput> {
        let mut out = Vec::new();
        if !self.config.voters.contains(&from) {
            return out;
        }
        let quorum = self.quorum();
        let Some(term) = &mut self.term else {
            return out;
        };
        let Some(b) = term.batches.get_mut(&batch) else {
            return out;
        };
        b.acks.insert(from);
        if b.acks.len() < quorum {
            return out;
        }
        let Some(b) = term.batches.remove(&batch) else {
            return out;
        };
        let mut late = Vec::new();
        for effect in b.effects {
            match effect {
                Effect::Release { ticket } => out.push(LockOutput::Reply {
                    ticket,
                    reply: LockReply::Released,
                }),
                Effect::Grant { name, token: tok } => {
                    let Some(h) = term
                        .locks
                        .get_mut(&name)
                        .and_then(|l| l.holder.as_mut())
                        .filter(|h| h.token == tok)
                    else {
                        continue;
                    };
                    h.committed = true;
                    let tickets = std::mem::take(&mut h.tickets);
                    let answer = if now > h.reply_by && !tickets.is_empty() {
                        // K4: its requester no longer listens; free it.
                        late.push(name);
                        LockReply::Held
                    } else {
                        LockReply::Granted {
                            token: h.token,
                            ttl_ms: h.ttl_ms,
                        }
                    };
                    for ticket in tickets {
                        out.push(LockOutput::Reply {
                            ticket,
                            reply: answer.clone(),
                        });
                    }
                }
            }
        }
        for name in late {
            self.free(now, &name, &mut out);
        }
        out
    }
}

/// `ttl·(1+ρ)/(1−ρ)` (K3).
fn leader_ttl(rho: f64, ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms).mul_f64((1.0 + rho) / (1.0 - rho))
}

fn reply(ticket: Ticket, reply: LockReply) -> Vec<LockOutput> {
    vec![LockOutput::Reply { ticket, reply }]
}

#[cfg(test)]
mod tests;
