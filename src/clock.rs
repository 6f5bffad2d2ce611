//! The protocol clock (rule T1): one monotonic time base for leases,
//! deadlines and validity, real or simulated. This module owns reading
//! it; it knows nothing of what the times mean.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Where a simulation's wall clock starts: 2026-01-01T00:00:00Z.
pub const SIM_WALL_ORIGIN_MS: u64 = 1_767_225_600_000;

/// The protocol clock (T1). Real nodes read CLOCK_BOOTTIME, which keeps
/// counting while the host is suspended; simulations read tokio's clock.
#[derive(Debug, Clone)]
pub enum Clock {
    /// `CLOCK_BOOTTIME`.
    Boottime,
    /// tokio's (pausable) clock from `origin`, plus the time the simulated
    /// host spent suspended (`suspended`, in nanoseconds), which tokio's
    /// timers, like a real host's monotonic clock, did not see.
    Tokio {
        /// The clock's zero.
        origin: tokio::time::Instant,
        /// Suspended time so far, in nanoseconds.
        suspended: Arc<std::sync::atomic::AtomicU64>,
        /// How far the simulated host's wall clock is off, in
        /// milliseconds (its protocol clock is not affected).
        wall_offset: Arc<std::sync::atomic::AtomicI64>,
    },
}

impl Clock {
    /// Time since the clock's origin.
    pub fn now(&self) -> Duration {
        match self {
            Clock::Boottime => {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `ts` is a valid, writable timespec.
                let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
                // Invariant: CLOCK_BOOTTIME exists on every Linux since 2.6.39.
                assert_eq!(rc, 0, "CLOCK_BOOTTIME must be readable");
                Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
            }
            Clock::Tokio {
                origin, suspended, ..
            } => {
                let suspended = Duration::from_nanos(suspended.load(Ordering::Relaxed));
                tokio::time::Instant::now() - *origin + suspended
            }
        }
    }

    /// Wall-clock milliseconds since the Unix epoch: for times that must
    /// mean the same on every node (an idempotency record's expiry, I6),
    /// never for a lease. Simulations count from a fixed instant plus
    /// their clock, so a seed replays.
    pub fn wall_ms(&self) -> u64 {
        match self {
            Clock::Boottime => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            Clock::Tokio { wall_offset, .. } => (SIM_WALL_ORIGIN_MS
                + self.now().as_millis() as u64)
                .saturating_add_signed(wall_offset.load(Ordering::Relaxed)),
        }
    }

    /// A simulation's clock from `origin`, never suspended yet.
    pub fn tokio(origin: tokio::time::Instant) -> Clock {
        Clock::Tokio {
            origin,
            suspended: Arc::default(),
            wall_offset: Arc::default(),
        }
    }

    /// Sets how far a simulated host's wall clock is off (simulations
    /// only; a no-op on a real clock).
    pub fn set_wall_offset(&self, ms: i64) {
        if let Clock::Tokio { wall_offset, .. } = self {
            wall_offset.store(ms, Ordering::Relaxed);
        }
    }

    /// Simulates a host suspend of `d` that just ended: this clock moves
    /// on by `d` while tokio's timers do not (simulations only; a no-op
    /// on CLOCK_BOOTTIME).
    pub fn suspend(&self, d: Duration) {
        if let Clock::Tokio { suspended, .. } = self {
            suspended.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T1: real nodes read CLOCK_BOOTTIME, which runs at least as fast
    /// as the monotonic clock (it also counts suspend).
    #[test]
    fn real_environment_reads_boottime() {
        assert!(matches!(crate::Environment::real().clock, Clock::Boottime));
        let a = Clock::Boottime.now();
        let start = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = Clock::Boottime.now();
        assert!(b - a >= start.elapsed().saturating_sub(Duration::from_millis(1)));
    }
}
