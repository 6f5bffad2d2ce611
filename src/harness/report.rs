//! What the benchmarks report: percentiles of measured durations and the
//! JSON file a run may write. Owns the arithmetic and the file; knows
//! nothing of what was measured.

use std::path::Path;
use std::time::Duration;

/// The `p`-th percentile (nearest rank) of durations sorted ascending;
/// zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in microseconds, fractional.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Writes `value` as pretty JSON to `path`, when a path is given.
pub fn write_json(path: Option<&Path>, value: &serde_json::Value) -> Result<(), String> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let ms: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&ms, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&ms, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
