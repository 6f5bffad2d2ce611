//! A debug log for simulation tests: with `DEBUG_CLIENT` set (and
//! `RUST_LOG`), the cluster's `tracing` lines, stamped with virtual time
//! so two runs of a seed print the same lines and compare with `diff`.

use std::sync::Mutex;

/// True when `DEBUG_CLIENT` is set: the chaos clients print what they
/// were told, and [`trace_if_debugging`] installs a subscriber.
pub fn debugging() -> bool {
    std::env::var("DEBUG_CLIENT").is_ok()
}

/// Installs the subscriber (once) when debugging, and starts the clock
/// its lines are stamped with: virtual time since this call.
pub fn trace_if_debugging() {
    if debugging() {
        *LOG_ORIGIN.lock().unwrap() = Some(tokio::time::Instant::now());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(VirtualTime)
            .with_ansi(false)
            .try_init();
    }
}

static LOG_ORIGIN: Mutex<Option<tokio::time::Instant>> = Mutex::new(None);

/// Log stamps on the paused clock, from [`LOG_ORIGIN`].
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let origin = *LOG_ORIGIN.lock().unwrap();
        let at = origin.map(|o| tokio::time::Instant::now().saturating_duration_since(o));
        write!(w, "{:>9.3?}", at.unwrap_or_default())
    }
}
