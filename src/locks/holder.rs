//! The holder's rule, sans-io: how long a lease is valid by the holder's
//! own count, when to renew it, and what a renewal's answer changes. One
//! rule for every holder: the library's [`LockGuard`](super::LockGuard),
//! `meshd lock`, and the remote client the benchmarks use. It takes `now`
//! on the protocol clock (T1: CLOCK_BOOTTIME, which counts a host
//! suspend) and never reads a clock or does I/O itself.
//!
//! Validity counts from the *send* time of the last acquire or renew that
//! succeeded, never from the answer's arrival: `sent + ttl·(1−ρ)`, where
//! ρ is the drift bound between the holder's clock and the leader's. The
//! leader keeps the lease for `ttl·(1+ρ)/(1−ρ)` from when it *received*
//! the request (K3), which is later than the send; so the holder stops
//! believing before the leader stops keeping, whatever the delays.

use std::time::Duration;

/// One holder's lease on one lock, on the protocol clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HolderLease {
    ttl: Duration,
    drift: f64,
    valid_until: Duration,
    /// Send time of the last acquire or renew that succeeded.
    last_sent: Duration,
    /// When the next renewal is due.
    next_renew: Duration,
    lost: bool,
}

impl HolderLease {
    /// A lease granted for `ttl` by a request sent at `sent`, with drift
    /// bound `drift` (ρ, in `[0, 1)`).
    pub fn granted(sent: Duration, ttl: Duration, drift: f64) -> HolderLease {
        HolderLease {
            ttl,
            drift,
            valid_until: sent + ttl.mul_f64(1.0 - drift),
            last_sent: sent,
            next_renew: sent + ttl / 3,
            lost: false,
        }
    }

    /// The TTL the lease was granted with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When validity ends by the holder's count (it may already have).
    pub fn valid_until(&self) -> Duration {
        self.valid_until
    }

    /// True while the lease is valid by the holder's count and not lost.
    pub fn is_valid(&self, now: Duration) -> bool {
        !self.lost && now < self.valid_until
    }

    /// How long the lease stays valid from `now` (zero once lost).
    pub fn remaining(&self, now: Duration) -> Duration {
        if self.lost {
            return Duration::ZERO;
        }
        self.valid_until.saturating_sub(now)
    }

    /// True when a renewal should be sent now: a third of the TTL after
    /// the last good send (sooner after a failed attempt), while valid.
    pub fn renew_due(&self, now: Duration) -> bool {
        self.is_valid(now) && now >= self.next_renew
    }

    /// The next moment something changes without an answer arriving: a
    /// renewal falls due or validity ends, whichever is first.
    pub fn next_deadline(&self) -> Duration {
        self.next_renew.min(self.valid_until)
    }

    /// Send time of the last acquire or renew that succeeded.
    pub fn last_sent(&self) -> Duration {
        self.last_sent
    }

    /// A renewal sent at `sent` succeeded, for `ttl`: validity extends to
    /// `sent + ttl·(1−ρ)` if that is later (an answer to an older send
    /// never shortens it), and the next renewal is due a third of the TTL
    /// after this send. Ignored once the lease is lost.
    pub fn on_renewed(&mut self, sent: Duration, ttl: Duration) {
        if self.lost {
            return;
        }
        let fresh = sent + ttl.mul_f64(1.0 - self.drift);
        if fresh > self.valid_until {
            self.valid_until = fresh;
        }
        if sent >= self.last_sent {
            self.last_sent = sent;
            self.next_renew = sent + ttl / 3;
        }
    }

    /// A renewal got no useful answer at `now` (no quorum during a
    /// failover, a timeout): validity is unchanged; try again `retry`
    /// later.
    pub fn on_renew_failed(&mut self, now: Duration, retry: Duration) {
        self.next_renew = now + retry;
    }

    /// The leader said the token no longer holds the lock, or the holder
    /// gave it up: the lease is over for good.
    pub fn on_lost(&mut self) {
        self.lost = true;
    }

    /// True once [`on_lost`](Self::on_lost) was called.
    pub fn is_lost(&self) -> bool {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Validity counts from the send, less the drift margin: a grant that
    /// arrived late is worth less, never more.
    #[test]
    fn validity_counts_from_the_send_less_the_drift() {
        let l = HolderLease::granted(ms(1000), ms(3000), 0.01);
        assert_eq!(l.valid_until(), ms(1000 + 2970));
        assert!(l.is_valid(ms(3969)));
        assert!(!l.is_valid(ms(3970)));
        assert_eq!(l.remaining(ms(3000)), ms(970));
        assert_eq!(l.remaining(ms(5000)), Duration::ZERO);
    }

    #[test]
    fn renewal_falls_due_a_third_of_the_ttl_after_the_last_good_send() {
        let mut l = HolderLease::granted(ms(0), ms(3000), 0.0);
        assert!(!l.renew_due(ms(999)));
        assert!(l.renew_due(ms(1000)));
        assert_eq!(l.next_deadline(), ms(1000));
        l.on_renewed(ms(1100), ms(3000));
        assert_eq!(l.valid_until(), ms(4100));
        assert!(!l.renew_due(ms(2099)));
        assert!(l.renew_due(ms(2100)));
    }

    /// An answer to an older send arriving after a newer one's never
    /// shortens validity nor moves the next renewal back.
    #[test]
    fn a_late_answer_to_an_older_send_shortens_nothing() {
        let mut l = HolderLease::granted(ms(0), ms(3000), 0.0);
        l.on_renewed(ms(2000), ms(3000));
        l.on_renewed(ms(1000), ms(3000));
        assert_eq!(l.valid_until(), ms(5000));
        assert_eq!(l.last_sent(), ms(2000));
        assert!(!l.renew_due(ms(2999)));
    }

    /// Through a failover renewals fail; validity stays what the last
    /// good send earned, and the lease runs out at that moment exactly.
    #[test]
    fn failed_renewals_retry_soon_and_validity_runs_out_on_time() {
        let mut l = HolderLease::granted(ms(0), ms(300), 0.0);
        assert!(l.renew_due(ms(100)));
        l.on_renew_failed(ms(100), ms(20));
        assert!(!l.renew_due(ms(119)));
        assert!(l.renew_due(ms(120)));
        assert_eq!(l.next_deadline(), ms(120));
        l.on_renew_failed(ms(290), ms(20));
        assert_eq!(l.next_deadline(), ms(300), "validity's end comes first");
        assert!(!l.is_valid(ms(300)));
        assert!(!l.renew_due(ms(310)), "nothing to renew once invalid");
    }

    #[test]
    fn a_lost_lease_is_invalid_for_good() {
        let mut l = HolderLease::granted(ms(0), ms(3000), 0.0);
        l.on_lost();
        assert!(l.is_lost());
        assert!(!l.is_valid(ms(1)));
        assert_eq!(l.remaining(ms(1)), Duration::ZERO);
        l.on_renewed(ms(1), ms(3000));
        assert!(
            !l.is_valid(ms(2)),
            "a renewal after the loss restores nothing"
        );
    }
}
