//! Anti-entropy between two replicas of the records, sans-io: bytes grow
//! with the number of records that differ, not with the store.
//!
//! Owns: record ids, the invertible Bloom lookup table (IBLT), the
//! estimator of a difference's size, and the exchange's messages. Must not:
//! send, decide when or with whom to reconcile, or merge (the caller
//! merges what arrives, expiry first, as `Records::merge` does).
//!
//! Why an IBLT and not range-based reconciliation: a range-based
//! exchange splits the ranges that differ round after round, so finding
//! 100 differences among a million records takes several rounds of
//! fingerprints; an IBLT finds them in one, after an estimate of how many
//! there are. The exchange is two round trips when the first table
//! decodes, three when it needs a second:
//!
//! 1. the initiator sends its estimator ([`ReconcileMessage::Start`], 1 KiB);
//! 2. the responder estimates the difference and answers with an IBLT of
//!    its ids sized for it ([`ReconcileMessage::Table`]);
//! 3. the initiator subtracts its own and peels: the ids each side lacks.
//!    It sends the records the responder lacks with the ids it wants
//!    ([`ReconcileMessage::Push`]), or, if the table did not peel, asks
//!    for one more of another hash seed ([`ReconcileMessage::More`]):
//!    the tables peel together, so the first one's cells are not wasted
//!    when the estimate was low or the peeling unlucky;
//! 4. the responder answers with the records wanted
//!    ([`ReconcileMessage::Records`]).
//!
//! A message carries at most [`TRANSFER_BYTES_MAX`] of records and
//! [`IDS_MAX`] wanted ids, so every message fits the RPC frame: a larger
//! difference takes more `Push`/`Records` round trips. When the tables
//! cannot carry the difference (a node that starts empty beside a
//! million records), the exchange walks the responder's ids by key, a
//! page of [`IDS_MAX`] at a time ([`ReconcileMessage::Page`],
//! [`ReconcileMessage::Ids`]), and transfers what each page's key range
//! lacks on either side: about 20 bytes per record held (its id in the
//! page, and again to ask for it) plus the records that differ.
//!
//! A record's id ([`Record::id`]) hashes all of it, and a replica
//! computes it once, when the record arrives: an exchange reads ids, not
//! records, and fetches only the records it sends. Two replicas that
//! hold different versions of one key's record (one committed, one not)
//! differ by two ids and both versions travel; the merge keeps the higher.
//! Peers are authenticated members, so the hash need not resist an
//! adversary, only be the same on every build.

use serde::{Deserialize, Serialize};

use super::record::{KEY_BYTES_MAX, RECORD_WEIGHT_MAX, Record, mix};

/// Hash functions of an IBLT (one cell in each of as many subtables).
const HASHES: usize = 3;
/// The smallest table sent.
pub const TABLE_CELLS_MIN: usize = 3 * 8;
/// The largest table sent (688 KiB, within the RPC frame): past it the
/// replicas differ in more than tables carry, and the exchange walks the
/// responder's ids page by page instead.
pub const TABLE_CELLS_MAX: usize = 3 << 14;

/// The check hash of a cell: tells a cell holding one id from a mix.
fn check(id: u64) -> u32 {
    (mix(id ^ 0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// An invertible Bloom lookup table of record ids, of one hash seed.
/// Counts wrap (only differences of two tables are ever read, and those
/// are small), so a cell is [`CELL_BYTES`] on the wire: its count, id sum
/// and check sum, little-endian, packed after the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iblt {
    seed: u8,
    counts: Vec<i16>,
    ids: Vec<u64>,
    checks: Vec<u32>,
}

/// Bytes of one cell on the wire.
pub const CELL_BYTES: usize = 2 + 8 + 4;

impl Serialize for Iblt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(1 + self.cells() * CELL_BYTES);
        bytes.push(self.seed);
        for k in 0..self.cells() {
            bytes.extend_from_slice(&self.counts[k].to_le_bytes());
            bytes.extend_from_slice(&self.ids[k].to_le_bytes());
            bytes.extend_from_slice(&self.checks[k].to_le_bytes());
        }
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Iblt {
    /// Any whole number of cells comes out as a table; its shape is
    /// checked before use (`is_well_formed`), so a ragged one is refused,
    /// not read.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Iblt, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        let Some((&seed, cells)) = bytes.split_first() else {
            return Err(serde::de::Error::custom("a table without its seed"));
        };
        if !cells.len().is_multiple_of(CELL_BYTES) {
            return Err(serde::de::Error::custom("a table of partial cells"));
        }
        let n = cells.len() / CELL_BYTES;
        let mut t = Iblt {
            seed,
            counts: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            checks: Vec::with_capacity(n),
        };
        for cell in cells.chunks_exact(CELL_BYTES) {
            let (count, rest) = cell.split_at(2);
            let (id, check) = rest.split_at(8);
            // Invariant: the slices have the lengths split off above, so
            // the conversions cannot fail.
            t.counts
                .push(i16::from_le_bytes(count.try_into().unwrap_or_default()));
            t.ids
                .push(u64::from_le_bytes(id.try_into().unwrap_or_default()));
            t.checks
                .push(u32::from_le_bytes(check.try_into().unwrap_or_default()));
        }
        Ok(t)
    }
}

/// Tables that do not peel: too many differences for their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tables hold more differences than they can give back")]
pub struct Undecodable;

impl Iblt {
    /// An empty table of `cells` cells (rounded up to a multiple of the
    /// hash count, at least one per hash) hashing with `seed`.
    pub fn new(cells: usize, seed: u8) -> Iblt {
        let cells = cells.max(HASHES).div_ceil(HASHES) * HASHES;
        Iblt {
            seed,
            counts: vec![0; cells],
            ids: vec![0; cells],
            checks: vec![0; cells],
        }
    }

    /// The table of `ids`.
    pub fn of(ids: impl IntoIterator<Item = u64>, cells: usize, seed: u8) -> Iblt {
        let mut t = Iblt::new(cells, seed);
        for id in ids {
            t.insert(id);
        }
        t
    }

    /// Its size in cells.
    pub fn cells(&self) -> usize {
        self.counts.len()
    }

    /// True if its shape is one [`Iblt::new`] makes, with the three
    /// columns of one length (a peer's table is checked before use).
    fn is_well_formed(&self) -> bool {
        let n = self.counts.len();
        n >= HASHES && n.is_multiple_of(HASHES) && self.ids.len() == n && self.checks.len() == n
    }

    /// The cell of `id` in subtable `j`.
    fn cell(&self, id: u64, j: usize) -> usize {
        let part = self.cells() / HASHES;
        let salt = (u64::from(self.seed) * HASHES as u64 + j as u64 + 1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        j * part + (mix(id.wrapping_add(salt)) % part as u64) as usize
    }

    fn toggle(&mut self, id: u64, sign: i16) {
        let c = check(id);
        for j in 0..HASHES {
            let k = self.cell(id, j);
            self.counts[k] = self.counts[k].wrapping_add(sign);
            self.ids[k] ^= id;
            self.checks[k] ^= c;
        }
    }

    /// Adds an id.
    pub fn insert(&mut self, id: u64) {
        self.toggle(id, 1);
    }

    /// This table minus `other` (of the same size and seed): what is left
    /// holds the ids only one of them has.
    pub fn subtract(&mut self, other: &Iblt) {
        for k in 0..self.cells().min(other.cells()) {
            self.counts[k] = self.counts[k].wrapping_sub(other.counts[k]);
            self.ids[k] ^= other.ids[k];
            self.checks[k] ^= other.checks[k];
        }
    }

    /// A pure cell's id and sign.
    fn pure(&self, k: usize) -> Option<(u64, i16)> {
        let count = self.counts[k];
        ((count == 1 || count == -1) && check(self.ids[k]) == self.checks[k])
            .then_some((self.ids[k], count))
    }

    fn is_empty(&self) -> bool {
        (0..self.cells()).all(|k| self.counts[k] == 0 && self.ids[k] == 0 && self.checks[k] == 0)
    }

    /// Peels one difference: the ids only the minuend had, and those only
    /// the subtrahend had.
    pub fn decode(self) -> Result<(Vec<u64>, Vec<u64>), Undecodable> {
        peel(vec![self])
    }
}

/// Peels differences of tables of one set pair (each of its own seed)
/// together: an id found in one is taken out of all, which may free cells
/// in the others. The ids only the minuends had, and those only the
/// subtrahends had.
pub fn peel(mut tables: Vec<Iblt>) -> Result<(Vec<u64>, Vec<u64>), Undecodable> {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let cells: usize = tables.iter().map(Iblt::cells).sum();
    // Each pass peels at least one id or ends; there are at most as many
    // ids to peel as cells.
    for _ in 0..=cells {
        let mut peeled = false;
        for t in 0..tables.len() {
            for k in 0..tables[t].cells() {
                let Some((id, sign)) = tables[t].pure(k) else {
                    continue;
                };
                if sign == 1 {
                    ours.push(id);
                } else {
                    theirs.push(id);
                }
                for table in &mut tables {
                    table.toggle(id, -sign);
                }
                peeled = true;
            }
        }
        if !peeled {
            break;
        }
    }
    if !tables.iter().all(Iblt::is_empty) {
        return Err(Undecodable);
    }
    ours.sort_unstable();
    theirs.sort_unstable();
    Ok((ours, theirs))
}

/// An estimator of the size of a difference: tug-of-war sketches. Each
/// of [`SKETCHES`] sums a sign (+1 or −1, a bit of the id's hashes) over
/// the ids; ids both sides hold cancel in the difference of two sums, and
/// the square of what is left is, on average, the number of ids only one
/// side holds. The mean over the sketches is within about 10% of it
/// (relative deviation √(2/512)); sums wrap at 16 bits (a difference of
/// sums is far smaller), so the estimator is 1 KiB on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimator {
    sums: Vec<i16>,
}

/// Sketches of the estimator (a multiple of 64: one hash of an id gives
/// the signs of 64).
pub const SKETCHES: usize = 512;

impl Serialize for Estimator {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.sums.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Estimator {
    /// Any whole number of sums comes out; the count is checked before use.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Estimator, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        if !bytes.len().is_multiple_of(2) {
            return Err(serde::de::Error::custom("an estimator of partial sums"));
        }
        let sums = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        Ok(Estimator { sums })
    }
}

impl Estimator {
    /// The estimator of `ids`.
    pub fn new(ids: impl IntoIterator<Item = u64>) -> Estimator {
        let mut sums = vec![0i16; SKETCHES];
        for id in ids {
            for (word, chunk) in sums.chunks_mut(64).enumerate() {
                let bits = mix(id ^ (word as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
                for (bit, sum) in chunk.iter_mut().enumerate() {
                    let sign = if bits >> bit & 1 == 1 { 1 } else { -1 };
                    *sum = sum.wrapping_add(sign);
                }
            }
        }
        Estimator { sums }
    }

    /// How many ids one of `self` and `other` has that the other lacks,
    /// estimated: the mean square of the differences of the sums.
    pub fn difference(&self, other: &Estimator) -> usize {
        let total: f64 = self
            .sums
            .iter()
            .zip(&other.sums)
            .map(|(a, b)| f64::from(a.wrapping_sub(*b)).powi(2))
            .sum();
        (total / self.sums.len().max(1) as f64).round() as usize
    }

    fn is_well_formed(&self) -> bool {
        self.sums.len() == SKETCHES
    }
}

/// The size of the first table for an estimated difference: twice as
/// many cells as differences, plus a margin for small ones.
pub fn table_cells(estimate: usize) -> usize {
    (2 * estimate + 24).clamp(TABLE_CELLS_MIN, TABLE_CELLS_MAX)
}

/// Tables one exchange may use: the first, one more of its size (which
/// peels with it: together they carry twice the estimate's differences),
/// and a last one twice that, for an estimate far off.
pub const TABLES_MAX: u8 = 3;

/// The most bytes of records one message carries (a `Push`'s or a
/// `Records`'): the rest follow in the next messages of the exchange.
/// With one record over it and a full list of wanted ids, a message stays
/// within the RPC frame.
pub const TRANSFER_BYTES_MAX: usize = 512 * 1024;
/// The most ids a `Push` asks for, or a page of the walk carries.
pub const IDS_MAX: usize = 32 * 1024;
/// The fewest ids a `Push` asks for while any are wanted.
const ASK_MIN: usize = 16;

/// A record id as it travels: its eight bytes (postcard would spend up
/// to ten on a `u64` of random bits).
pub type WireId = [u8; 8];

/// The messages of one reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReconcileMessage {
    /// Initiator: its estimator.
    Start(Estimator),
    /// Responder: a table of its ids.
    Table(Iblt),
    /// Initiator: the tables so far did not peel; send one more of this
    /// many cells and this seed.
    More {
        /// Cells of the table to send.
        cells: u32,
        /// Its hash seed.
        seed: u8,
    },
    /// Initiator: records the responder lacks, and the ids of records it
    /// wants (at most [`IDS_MAX`]).
    Push {
        /// Records for the responder.
        records: Vec<Record>,
        /// Ids of the responder's records the initiator lacks.
        want: Vec<WireId>,
    },
    /// Responder: records asked for, as many as fit
    /// [`TRANSFER_BYTES_MAX`] (at least one if any is held).
    Records(Vec<Record>),
    /// Initiator, when the tables cannot carry the difference: the ids of
    /// the responder's records whose keys follow `after`, by key.
    Page {
        /// The last key of the page before (empty: from the first).
        after: Vec<u8>,
    },
    /// Responder: the ids of up to [`IDS_MAX`] records whose keys follow
    /// the `Page`'s, by key.
    Ids {
        /// Their ids.
        ids: Vec<WireId>,
        /// The key of the last of them if records follow it; `None`: the
        /// page reaches the last record.
        last: Option<Vec<u8>>,
    },
    /// Initiator, in the walk: a `Push` within one page's key range, so
    /// the responder reads only that range for the records wanted.
    Fetch {
        /// The page's keys.
        range: KeyRange,
        /// Records for the responder.
        records: Vec<Record>,
        /// Ids of the responder's records in the range the initiator
        /// lacks.
        want: Vec<WireId>,
    },
}

/// The keys after `after` up to `through` (every later key if `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// Keys follow this one (empty: from the first).
    pub after: Vec<u8>,
    /// The last key in the range, if any.
    pub through: Option<Vec<u8>>,
}

impl KeyRange {
    /// Within the key limit, and not empty.
    fn is_well_formed(&self) -> bool {
        self.after.len() <= KEY_BYTES_MAX
            && self
                .through
                .as_ref()
                .is_none_or(|t| t.len() <= KEY_BYTES_MAX && *t > self.after)
    }
}

/// Why a reconciliation stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// A message out of turn, or of a shape no peer of this version sends:
    /// dropped, the exchange abandoned (the next one starts over).
    #[error("a reconciliation message out of turn or malformed")]
    Unexpected,
    /// The responder is still loading its records file: its ids are not
    /// yet all it holds.
    #[error("the peer is loading its records")]
    Loading,
}

/// What one side of an exchange holds, at one wall-clock instant
/// (expired records left out): the exchange reads and merges through it.
pub trait Side {
    /// True while the side's records file loads: its ids are not yet all
    /// it holds, so it does not answer.
    fn is_loading(&self) -> bool {
        false
    }
    /// The ids of every record held.
    fn ids(&self) -> Vec<u64>;
    /// The ids of the records whose keys are in `range`.
    fn ids_between(&self, range: &KeyRange) -> Vec<u64>;
    /// The ids of the first `max` records whose keys follow `after`, by
    /// key, and the key of the last if records follow it.
    fn page(&self, after: &[u8], max: usize) -> (Vec<u64>, Option<Vec<u8>>);
    /// The records of the ids in `ids` (sorted), in key order, as many as
    /// fit `budget` bytes (at least one if any is held); only those in
    /// `range` if given (read from that range alone).
    fn fetch(&self, ids: &[u64], budget: usize, range: Option<&KeyRange>) -> Vec<Record>;
    /// Merges records the peer sent; how many were news.
    fn merge(&self, records: Vec<Record>) -> usize;
}

/// What the initiator does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this message and hand the answer to
    /// [`Initiator::on_answer`].
    Send(ReconcileMessage),
    /// The exchange is over.
    Done,
}

/// The initiator's side of one exchange.
#[derive(Debug)]
pub struct Initiator {
    /// Its ids when it started, sorted (the tables are over these).
    ids: Vec<u64>,
    /// Its table minus the responder's, one per table received.
    differences: Vec<Iblt>,
    /// The size asked for in `More`, if any.
    asked: Option<usize>,
    phase: Phase,
    /// Records the responder's messages brought that were news here.
    news: usize,
    /// True once the tables gave way to the walk.
    walked: bool,
    /// How many ids to ask for next: what the last `Records` held and an
    /// eighth more (twice as many if all came), so a long list of wanted
    /// ids is not sent again with every message.
    ask: usize,
}

#[derive(Debug)]
enum Phase {
    /// Awaiting a table.
    Tables,
    /// Sending `push` (its ids, sorted) and fetching `want`; `asking`
    /// are the ids of the `Push` awaiting its `Records`.
    Transfer {
        push: Vec<u64>,
        want: Vec<u64>,
        asking: Vec<u64>,
        /// In the walk, the page's keys.
        range: Option<KeyRange>,
        then: Then,
    },
    /// Awaiting the page of the responder's ids after `after`.
    Page { after: Vec<u8> },
}

/// What follows a transfer.
#[derive(Debug)]
enum Then {
    /// The exchange ends.
    Done,
    /// The walk goes on after this key.
    Page(Vec<u8>),
}

impl Initiator {
    /// Starts an exchange over what `side` holds: the first message.
    pub fn start(side: &impl Side) -> (Initiator, ReconcileMessage) {
        let mut ids = side.ids();
        ids.sort_unstable();
        let estimator = Estimator::new(ids.iter().copied());
        let me = Initiator {
            ids,
            differences: Vec::new(),
            asked: None,
            phase: Phase::Tables,
            news: 0,
            walked: false,
            ask: IDS_MAX,
        };
        (me, ReconcileMessage::Start(estimator))
    }

    /// Records the exchange brought that were news here.
    pub fn news(&self) -> usize {
        self.news
    }

    /// True if the replicas differed in more than the tables carry, so
    /// the exchange walked the responder's ids page by page.
    pub fn walked(&self) -> bool {
        self.walked
    }

    /// The responder's answer: the next message, or the end. Records
    /// that arrive are merged into `side`.
    pub fn on_answer(
        &mut self,
        side: &impl Side,
        answer: ReconcileMessage,
    ) -> Result<Step, ReconcileError> {
        match (&mut self.phase, answer) {
            (Phase::Tables, ReconcileMessage::Table(table)) => self.on_table(side, table),
            (Phase::Transfer { want, asking, .. }, ReconcileMessage::Records(records)) => {
                let mut came: Vec<u64> = records.iter().map(Record::id).collect();
                came.sort_unstable();
                // Those asked for that did not come are no longer held by
                // the responder (expired, or replaced by a later version:
                // the one pushed with the ask, or one the next exchange
                // finds) when the answer was not cut at its budget, or
                // when none came.
                let weight: usize = records.iter().map(Record::weight).sum();
                let whole = weight + RECORD_WEIGHT_MAX <= TRANSFER_BYTES_MAX;
                let gone = whole || !asking.iter().any(|id| came.binary_search(id).is_ok());
                want.retain(|id| {
                    came.binary_search(id).is_err() && !(gone && asking.binary_search(id).is_ok())
                });
                // Everything asked for came: ask for twice as many; else
                // for what came and an eighth more.
                let all = came.len() >= asking.len();
                asking.clear();
                self.ask = if all {
                    self.ask.saturating_mul(2)
                } else {
                    came.len() + came.len() / 8
                }
                .clamp(ASK_MIN, IDS_MAX);
                self.news += side.merge(records);
                self.transfer(side)
            }
            (Phase::Page { after }, ReconcileMessage::Ids { ids, last }) => {
                let range = KeyRange {
                    after: std::mem::take(after),
                    through: last,
                };
                if ids.len() > IDS_MAX || !range.is_well_formed() {
                    return Err(ReconcileError::Unexpected);
                }
                let mut theirs: Vec<u64> = ids.iter().map(|w| u64::from_le_bytes(*w)).collect();
                theirs.sort_unstable();
                theirs.dedup();
                let mut mine = side.ids_between(&range);
                mine.sort_unstable();
                let push = minus(&mine, &theirs);
                let want = minus(&theirs, &mine);
                let then = range.through.clone().map_or(Then::Done, Then::Page);
                self.phase = Phase::Transfer {
                    push,
                    want,
                    asking: Vec::new(),
                    range: Some(range),
                    then,
                };
                self.transfer(side)
            }
            _ => Err(ReconcileError::Unexpected),
        }
    }

    /// A table from the responder: the transfer of what it found, or one
    /// more table, or the walk when the tables cannot carry the
    /// difference.
    fn on_table(&mut self, side: &impl Side, table: Iblt) -> Result<Step, ReconcileError> {
        let expected_seed = self.differences.len();
        if !table.is_well_formed()
            || usize::from(table.seed) != expected_seed
            || self
                .asked
                .is_some_and(|cells| table.cells() != Iblt::new(cells, 0).cells())
            || table.cells() > TABLE_CELLS_MAX
        {
            return Err(ReconcileError::Unexpected);
        }
        let mut mine = Iblt::of(self.ids.iter().copied(), table.cells(), table.seed);
        mine.subtract(&table);
        self.differences.push(mine);
        match peel(self.differences.clone()) {
            Ok((mut ours, theirs)) => {
                // Only ids this side holds: a peeled id is one of the two
                // sides', and a bad table could name neither.
                ours.retain(|id| self.ids.binary_search(id).is_ok());
                self.phase = Phase::Transfer {
                    push: ours,
                    want: theirs,
                    asking: Vec::new(),
                    range: None,
                    then: Then::Done,
                };
                self.transfer(side)
            }
            Err(Undecodable) => {
                let sent = self.differences.len();
                // The second table matches the first; the last doubles
                // what the two carried. A first table of the largest
                // size asks for no more: the second could not double it.
                let first = self.differences[0].cells();
                let cells = if sent == 1 { first } else { 4 * first };
                if sent >= usize::from(TABLES_MAX)
                    || cells > TABLE_CELLS_MAX
                    || first >= TABLE_CELLS_MAX
                {
                    self.walked = true;
                    self.differences.clear();
                    self.phase = Phase::Page { after: Vec::new() };
                    return Ok(Step::Send(ReconcileMessage::Page { after: Vec::new() }));
                }
                self.asked = Some(cells);
                Ok(Step::Send(ReconcileMessage::More {
                    cells: cells as u32,
                    seed: sent as u8,
                }))
            }
        }
    }

    /// The next message of a transfer: records to push (as many as fit)
    /// and ids wanted, until both are done; then the next page, or the
    /// end.
    fn transfer(&mut self, side: &impl Side) -> Result<Step, ReconcileError> {
        let Phase::Transfer {
            push,
            want,
            asking,
            range,
            then,
        } = &mut self.phase
        else {
            return Err(ReconcileError::Unexpected);
        };
        if push.is_empty() && want.is_empty() {
            return Ok(match std::mem::replace(then, Then::Done) {
                Then::Done => Step::Done,
                Then::Page(after) => {
                    self.phase = Phase::Page {
                        after: after.clone(),
                    };
                    Step::Send(ReconcileMessage::Page { after })
                }
            });
        }
        let records = if push.is_empty() {
            Vec::new()
        } else {
            side.fetch(push, TRANSFER_BYTES_MAX, range.as_ref())
        };
        if records.is_empty() {
            // Expired here since the exchange began.
            push.clear();
        }
        let mut sent: Vec<u64> = records.iter().map(Record::id).collect();
        sent.sort_unstable();
        push.retain(|id| sent.binary_search(id).is_err());
        *asking = want.iter().take(self.ask).copied().collect();
        let wire: Vec<WireId> = asking.iter().map(|id| id.to_le_bytes()).collect();
        Ok(Step::Send(match range {
            Some(range) => ReconcileMessage::Fetch {
                range: range.clone(),
                records,
                want: wire,
            },
            None => ReconcileMessage::Push {
                records,
                want: wire,
            },
        }))
    }
}

/// The sorted ids of `a` not in `b` (both sorted).
fn minus(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter()
        .filter(|id| b.binary_search(id).is_err())
        .copied()
        .collect()
}

/// The responder's side: answers each message of an exchange from what
/// `side` holds, merging the records a `Push` brings first. Stateless:
/// every answer is computed from the message and the side.
pub fn respond(
    side: &impl Side,
    message: ReconcileMessage,
) -> Result<ReconcileMessage, ReconcileError> {
    // Half loaded, its ids would make the peer send what its records file
    // holds.
    if side.is_loading() {
        return Err(ReconcileError::Loading);
    }
    match message {
        ReconcileMessage::Start(theirs) => {
            if !theirs.is_well_formed() {
                return Err(ReconcileError::Unexpected);
            }
            let ids = side.ids();
            let estimate = Estimator::new(ids.iter().copied()).difference(&theirs);
            Ok(ReconcileMessage::Table(Iblt::of(
                ids,
                table_cells(estimate),
                0,
            )))
        }
        ReconcileMessage::More { cells, seed }
            if (cells as usize) <= TABLE_CELLS_MAX && seed < TABLES_MAX =>
        {
            Ok(ReconcileMessage::Table(Iblt::of(
                side.ids(),
                cells as usize,
                seed,
            )))
        }
        ReconcileMessage::Push { records, want } if want.len() <= IDS_MAX => {
            side.merge(records);
            Ok(ReconcileMessage::Records(wanted(side, &want, None)))
        }
        ReconcileMessage::Fetch {
            range,
            records,
            want,
        } if want.len() <= IDS_MAX && range.is_well_formed() => {
            side.merge(records);
            Ok(ReconcileMessage::Records(wanted(side, &want, Some(&range))))
        }
        ReconcileMessage::Page { after } if after.len() <= KEY_BYTES_MAX => {
            let (ids, last) = side.page(&after, IDS_MAX);
            Ok(ReconcileMessage::Ids {
                ids: ids.iter().map(|id| id.to_le_bytes()).collect(),
                last,
            })
        }
        _ => Err(ReconcileError::Unexpected),
    }
}

/// The records of the ids `want` (within `range`) a responder sends back.
fn wanted(side: &impl Side, want: &[WireId], range: Option<&KeyRange>) -> Vec<Record> {
    if want.is_empty() {
        return Vec::new();
    }
    let mut want: Vec<u64> = want.iter().map(|w| u64::from_le_bytes(*w)).collect();
    want.sort_unstable();
    want.dedup();
    side.fetch(&want, TRANSFER_BYTES_MAX, range)
}

/// What an exchange in one process cost: for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages answered.
    pub round_trips: usize,
    /// Bytes of every message, both ways, as encoded.
    pub bytes: usize,
    /// Records news to the initiator.
    pub news: usize,
    /// True if the exchange walked the ids.
    pub walked: bool,
}

/// Runs one whole exchange between two sides in one process, the
/// initiator over `initiator`, the responder over `responder`.
pub fn exchange_in_process(
    initiator: &impl Side,
    responder: &impl Side,
) -> Result<Traffic, ReconcileError> {
    let size = |m: &ReconcileMessage| postcard::to_allocvec(m).map_or(0, |v| v.len());
    let (mut me, mut message) = Initiator::start(initiator);
    let mut traffic = Traffic::default();
    loop {
        traffic.bytes += size(&message);
        let answer = respond(responder, message)?;
        traffic.bytes += size(&answer);
        traffic.round_trips += 1;
        match me.on_answer(initiator, answer)? {
            Step::Send(next) => message = next,
            Step::Done => {
                traffic.news = me.news();
                traffic.walked = me.walked();
                return Ok(traffic);
            }
        }
    }
}

#[cfg(test)]
mod tests;
