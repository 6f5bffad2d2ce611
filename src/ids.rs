//! The identifiers every protocol shares. This module owns their types
//! and how they print and parse; it knows nothing of the protocols that
//! use them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's identity: unique in the cluster, ordered numerically (the
/// lowest live id is the preferred leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The id remote clients (programs that take locks without being a
    /// node) give as the sender of their calls; no node may have it.
    pub const REMOTE_CLIENT: NodeId = NodeId(u64::MAX);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A node id that is not an unsigned 64-bit integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {0:?}: expected an unsigned integer")]
pub struct ParseIdError(pub String);

impl FromStr for NodeId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .map(NodeId)
            .map_err(|_| ParseIdError(s.to_string()))
    }
}

/// One run of a node: every start gets a generation above the last one
/// its data directory (or the clock, without one) knows, so peers tell a
/// restarted node from its dead incarnation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An election term: promises, leaderships and the fencing tokens of the
/// locks granted in it are numbered by it. Only epochs up to
/// [`Epoch::MAX`] can form tokens (K1). On the wire and in JSON as its
/// number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Before any term.
    pub const ZERO: Epoch = Epoch(0);
    /// The last epoch that can form fencing tokens (2^32 − 1, K1).
    pub const MAX: Epoch = Epoch((1 << 32) - 1);

    /// The epoch after this one (saturating).
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl From<u64> for Epoch {
    fn from(n: u64) -> Epoch {
        Epoch(n)
    }
}

impl std::ops::Add<u64> for Epoch {
    type Output = Epoch;
    fn add(self, n: u64) -> Epoch {
        Epoch(self.0 + n)
    }
}

impl std::ops::Sub<u64> for Epoch {
    type Output = Epoch;
    fn sub(self, n: u64) -> Epoch {
        Epoch(self.0 - n)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A lock's fencing token: `(epoch << 32) | seq`, the `seq`-th grant of
/// an epoch (K1), so a later grant of any lock has a higher token. A
/// resource that remembers the highest token it saw refuses a stalled
/// holder's write with a lower one. On the wire and in JSON as its number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Token(pub u64);

impl Token {
    /// The highest sequence number within an epoch (K1).
    pub const SEQ_MAX: u64 = (1 << 32) - 1;

    /// The token of the `seq`-th grant of `epoch`, or `None` when either
    /// is out of range (K1).
    pub fn new(epoch: Epoch, seq: u64) -> Option<Token> {
        (epoch <= Epoch::MAX && seq <= Token::SEQ_MAX).then_some(Token((epoch.0 << 32) | seq))
    }

    /// The epoch it was granted in.
    pub fn epoch(self) -> Epoch {
        Epoch(self.0 >> 32)
    }
}

impl From<u64> for Token {
    fn from(n: u64) -> Token {
        Token(n)
    }
}

impl std::ops::Add<u64> for Token {
    type Output = Token;
    fn add(self, n: u64) -> Token {
        Token(self.0 + n)
    }
}

impl std::ops::Sub<u64> for Token {
    type Output = Token;
    fn sub(self, n: u64) -> Token {
        Token(self.0 - n)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A replication batch's id, unique for the life of the leader's table
/// that sent it: an ack of an earlier stint's batch must never count for a
/// later one (review finding 2). Never on the wire: a voter's ack answers
/// the call that carried the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BatchId(pub u64);

impl BatchId {
    /// The id after this one.
    pub fn next(self) -> BatchId {
        BatchId(self.0 + 1)
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_trimmed_and_name_what_is_wrong() {
        assert_eq!(" 7 ".parse::<NodeId>(), Ok(NodeId(7)));
        let err = "x1".parse::<NodeId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid node id \"x1\": expected an unsigned integer"
        );
    }
}
