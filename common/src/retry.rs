//! Retry backoff: a pure function of the attempt number and a random draw, so it is tested
//! with properties and the caller supplies the rng.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One failed attempt, as kept in a task's `x-warren-history` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The worker that made it.
    pub worker: String,
    /// Why it failed.
    pub error: String,
    /// When it ended, RFC 3339.
    pub at: String,
}

/// Attempts kept in the history header at most (the latest ones).
pub const MAX_HISTORY: usize = 20;

/// The delay before retrying after failed attempt number `attempt` (1 = the first):
/// exponential from `base`, capped at `max`, with "equal jitter" — a uniform draw `jitter`
/// in [0, 1) picks a point in the upper half of the step, so retries of many tasks spread out
/// but never come back sooner than half the step.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let step = base.saturating_mul(1u32 << exponent).min(max);
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let top: Vec<u64> = (1..=8)
            .map(|a| backoff(a, base, max, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(top, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(1, base, max, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn always_within_half_step_and_cap() {
        // Deterministic sweep standing in for a property test: every attempt and jitter.
        let (base, max) = (Duration::from_millis(250), Duration::from_secs(60));
        for attempt in 0..200u32 {
            for i in 0..=20 {
                let jitter = f64::from(i) / 20.0;
                let delay = backoff(attempt, base, max, jitter);
                let step = base
                    .saturating_mul(1u32 << attempt.saturating_sub(1).min(30))
                    .min(max);
                assert!(
                    delay <= step && delay >= step / 2,
                    "{attempt} {jitter} {delay:?}"
                );
            }
        }
    }
}
