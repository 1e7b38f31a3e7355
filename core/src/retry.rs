//! What a finished attempt leads to — success, a retry after a backoff, death once
//! `max_attempts` is spent, or a plain failure when retrying cannot help — decided in one place
//! from a typed outcome; and the backoffs: a retry's (a pure function of the attempt number
//! and a random draw, so it is tested with properties and the caller supplies the rng) and a
//! reconnect loop's.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why an attempt failed, as far as retrying goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (an error, a panic, a timeout).
    Retryable(String),
    /// Retrying cannot help (the handler said so).
    Abort(String),
}

/// What an attempt's outcome means for the task.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Done: the handler's result.
    Succeeded(Value),
    /// Try again after `delay`.
    Retry {
        /// Why this attempt failed.
        error: String,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Every attempt failed: to the dead queue.
    Dead {
        /// Why the task is dead (attempts spent, and the last error).
        error: String,
        /// Why the last attempt failed.
        last: String,
    },
    /// The handler says retrying cannot help.
    Failed {
        /// Why.
        error: String,
    },
}

/// A retry's backoff: exponential from `base`, capped at `max` (`tasks.retry_base_ms`,
/// `tasks.retry_max_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first step.
    pub base: Duration,
    /// The largest step.
    pub max: Duration,
}

/// Decides what attempt number `attempt` (from 1) of a task allowed `max_attempts` leads to.
/// `jitter` is a uniform draw in [0, 1) for the backoff.
pub fn verdict(
    result: Result<Value, Failure>,
    attempt: u32,
    max_attempts: u32,
    policy: RetryPolicy,
    jitter: f64,
) -> Verdict {
    match result {
        Ok(value) => Verdict::Succeeded(value),
        Err(Failure::Abort(error)) => Verdict::Failed { error },
        Err(Failure::Retryable(error)) if attempt < max_attempts => Verdict::Retry {
            error,
            delay: backoff(attempt, policy.base, policy.max, jitter),
        },
        Err(Failure::Retryable(last)) => Verdict::Dead {
            error: format!("failed {attempt} of {max_attempts} attempts; last error: {last}"),
            last,
        },
    }
}

/// The pauses of a reconnect loop: `first`, doubling up to `max`, back to `first` after a
/// success. Every loop that tries a broker again uses this one.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first pause.
    first: Duration,
    /// The longest pause.
    max: Duration,
    /// The next pause.
    next: Duration,
}

impl Backoff {
    /// Pauses from `first` doubling to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first.min(max),
        }
    }

    /// The pause before the next try; the one after it is twice as long (up to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// A try succeeded: the next failure pauses `first` again.
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

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

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(1000),
            max: Duration::from_millis(60_000),
        }
    }

    #[test]
    fn verdicts_follow_attempts_and_error_kinds() {
        let failed = || Err(Failure::Retryable("boom".into()));
        assert_eq!(
            verdict(Ok(Value::Null), 1, 3, policy(), 0.5),
            Verdict::Succeeded(Value::Null)
        );
        let Verdict::Retry { delay, .. } = verdict(failed(), 1, 3, policy(), 1.0) else {
            panic!("first failure retries");
        };
        assert_eq!(delay, Duration::from_millis(1000));
        assert!(matches!(
            verdict(failed(), 2, 3, policy(), 0.0),
            Verdict::Retry { .. }
        ));
        let Verdict::Dead { error, .. } = verdict(failed(), 3, 3, policy(), 0.0) else {
            panic!("last failure is dead");
        };
        assert_eq!(error, "failed 3 of 3 attempts; last error: boom");
        assert_eq!(
            verdict(
                Err(Failure::Abort("bad payload".into())),
                1,
                3,
                policy(),
                0.0
            ),
            Verdict::Failed {
                error: "bad payload".into()
            }
        );
    }

    #[test]
    fn a_reconnect_backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<u128> = (0..5).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(100));
    }

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
