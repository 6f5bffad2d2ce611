//! Fencing: the protected resource's side of a lock.
//!
//! A lease can end while its holder still acts: a long GC or a SIGSTOP
//! pauses it past its TTL, the lock passes on, and the old holder wakes
//! and writes. No lock service can stop that write; the resource can, by
//! refusing any token lower than the highest it has seen. Every grant's
//! token is higher than every earlier grant's, so the stale writer is the
//! one refused.
//!
//! Fencing is needed whenever a holder's action outlives its check of the
//! lease: writes to storage, calls to other services, anything that can be
//! delayed after the holder decided to act. It is not needed when the
//! action itself is guarded by the lease check and cannot be delayed (for
//! instance a purely local computation).

use std::sync::Mutex;

use crate::ids::Token;

/// A token below the highest seen: the operation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fencing token {token} is below {highest}, the highest seen: a newer holder exists")]
pub struct StaleToken {
    /// The refused token.
    pub token: Token,
    /// The highest token seen.
    pub highest: Token,
}

/// Refuses operations carrying a token lower than the highest it has
/// seen. Equal tokens pass: one holder makes many operations.
///
/// [`FencingChecker::apply`] runs the operation while holding the check,
/// so a newer holder's operation cannot slip between an older holder's
/// check and its write.
#[derive(Debug, Default)]
pub struct FencingChecker {
    highest: Mutex<Token>,
}

impl FencingChecker {
    /// A checker that has seen no token (or, after a restart of the
    /// resource, the highest token it stored).
    pub fn new(highest: Token) -> FencingChecker {
        FencingChecker {
            highest: Mutex::new(highest),
        }
    }

    /// The highest token seen.
    pub fn highest(&self) -> Token {
        *self.highest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits `token` (raising the highest seen) or refuses it.
    pub fn check(&self, token: Token) -> Result<(), StaleToken> {
        self.apply(token, || ())
    }

    /// Runs `op` if `token` is at least the highest seen; no other
    /// operation is admitted while `op` runs.
    pub fn apply<R>(&self, token: Token, op: impl FnOnce() -> R) -> Result<R, StaleToken> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        if token < *highest {
            return Err(StaleToken {
                token,
                highest: *highest,
            });
        }
        *highest = token;
        Ok(op())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_token_is_refused_after_a_higher_one() {
        let f = FencingChecker::default();
        assert_eq!(f.apply(Token(5), || "a"), Ok("a"));
        assert_eq!(f.check(Token(5)), Ok(()), "the same holder writes again");
        assert_eq!(f.check(Token(7)), Ok(()));
        assert_eq!(
            f.apply(Token(5), || unreachable!("a stale write must not run")),
            Err(StaleToken {
                token: Token(5),
                highest: Token(7)
            })
        );
        assert_eq!(f.highest(), Token(7));
    }
}
