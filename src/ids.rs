//! The identifiers every protocol shares. This module owns their types
//! and how they print and parse; it knows nothing of the protocols that
//! use them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `Display` as the number it wraps.
macro_rules! displays_as_its_number {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

/// From a number, and `+ n` / `- n` (the tests count in steps).
macro_rules! counts_in_steps {
    ($t:ident) => {
        impl From<u64> for $t {
            fn from(n: u64) -> $t {
                $t(n)
            }
        }

        impl std::ops::Add<u64> for $t {
            type Output = $t;
            fn add(self, n: u64) -> $t {
                $t(self.0 + n)
            }
        }

        impl std::ops::Sub<u64> for $t {
            type Output = $t;
            fn sub(self, n: u64) -> $t {
                $t(self.0 - n)
            }
        }
    };
}

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

displays_as_its_number!(NodeId);

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

displays_as_its_number!(Generation);

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

counts_in_steps!(Epoch);

displays_as_its_number!(Epoch);

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

counts_in_steps!(Token);

displays_as_its_number!(Token);

/// A replication batch's id, unique for the life of the leader's table
/// that sent it: an ack of an earlier stint's batch must never count for a
/// later one (review finding 2). On the wire since wire version 7, so
/// that a voter can refuse the batches a leader sent before it told the
/// voters to forget tombstones (`replication::Floor`); a voter's ack still
/// answers the call that carried the batch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct BatchId(pub u64);

impl BatchId {
    /// The id after this one.
    pub fn next(self) -> BatchId {
        BatchId(self.0 + 1)
    }
}

displays_as_its_number!(BatchId);

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
