//! Ordering policies: which held task of a level goes first (`fcfs`, `priority`, `sjf`,
//! `edf`), the level a task is filed on at intake, and the per-kind run-time estimates that
//! shortest-job-first learns from finished tasks. Pure.

use std::collections::HashMap;
use std::time::Instant;

pub use crate::settings::PolicyName as Policy;

/// How much one observation moves a kind's estimate (exponentially weighted average).
const ALPHA: f64 = 0.2;
/// Kinds remembered at most; past it, new kinds are not learned (bounded memory).
const MAX_KINDS: usize = 10_000;

/// Learned run times per task kind: an exponentially weighted moving average of observed
/// durations, so the estimate follows a kind whose run time drifts.
#[derive(Debug, Clone, Default)]
pub struct Estimator {
    /// Kind → (average in ms, observations).
    kinds: HashMap<String, (f64, u64)>,
    /// Average over every kind, for kinds never seen yet.
    overall: Option<f64>,
}

impl Estimator {
    /// Records that a task of `kind` ran for `duration_ms`.
    pub fn observe(&mut self, kind: &str, duration_ms: f64) {
        self.overall = Some(match self.overall {
            Some(mean) => mean + ALPHA * (duration_ms - mean),
            None => duration_ms,
        });
        if let Some((mean, count)) = self.kinds.get_mut(kind) {
            // The first few observations weigh more, so the estimate settles quickly.
            let weight = ALPHA.max(1.0 / (*count as f64 + 1.0));
            *mean += weight * (duration_ms - *mean);
            *count += 1;
        } else if self.kinds.len() < MAX_KINDS {
            self.kinds.insert(kind.to_owned(), (duration_ms, 1));
        }
    }

    /// The expected run time of a task of `kind`: its kind's average, else the overall
    /// average, else 0 (unknown kinds go early, which is how they get learned).
    pub fn estimate(&self, kind: &str) -> f64 {
        self.kinds
            .get(kind)
            .map(|(mean, _)| *mean)
            .or(self.overall)
            .unwrap_or(0.0)
    }
}

/// What a policy compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderKey {
    /// When the dispatcher received it.
    pub arrived: Instant,
    /// Its deadline, if any.
    pub deadline: Option<Instant>,
    /// Expected run time in ms (given or learned).
    pub expected_ms: f64,
}

/// Whether `a` goes before `b` under `policy` (ties: earlier arrival first).
pub fn before(policy: Policy, a: &OrderKey, b: &OrderKey) -> bool {
    let by_arrival = a.arrived < b.arrived;
    match policy {
        Policy::Fcfs | Policy::Priority => by_arrival,
        Policy::Sjf => match a.expected_ms.total_cmp(&b.expected_ms) {
            std::cmp::Ordering::Equal => by_arrival,
            order => order.is_lt(),
        },
        Policy::Edf => match (a.deadline, b.deadline) {
            (Some(x), Some(y)) if x != y => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            _ => by_arrival,
        },
    }
}

/// The level index a task of `priority` is filed on under `policy`, given `level_for` (the
/// topology's priority → level mapping). FCFS files everything on the level of the default
/// priority, so the broker keeps one arrival order.
pub fn intake_level(policy: Policy, priority: u8, level_for: impl Fn(u8) -> usize) -> usize {
    match policy {
        Policy::Fcfs => level_for(5),
        Policy::Priority | Policy::Sjf | Policy::Edf => level_for(priority),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn estimates_follow_observations_per_kind() {
        let mut estimator = Estimator::default();
        assert_eq!(estimator.estimate("new"), 0.0);
        for _ in 0..50 {
            estimator.observe("short", 10.0);
            estimator.observe("long", 1000.0);
        }
        assert!((estimator.estimate("short") - 10.0).abs() < 1e-6);
        assert!((estimator.estimate("long") - 1000.0).abs() < 1e-6);
        let unknown = estimator.estimate("other");
        assert!(unknown > 10.0 && unknown < 1000.0);
        for _ in 0..30 {
            estimator.observe("short", 20.0);
        }
        assert!(
            (estimator.estimate("short") - 20.0).abs() < 0.1,
            "drifts to the new run time"
        );
    }

    #[test]
    fn policies_order_as_named() {
        let t0 = Instant::now();
        let early_long = OrderKey {
            arrived: t0,
            deadline: Some(t0 + Duration::from_secs(9)),
            expected_ms: 500.0,
        };
        let late_short = OrderKey {
            arrived: t0 + Duration::from_millis(1),
            deadline: Some(t0 + Duration::from_secs(1)),
            expected_ms: 5.0,
        };
        let no_deadline = OrderKey {
            deadline: None,
            ..late_short
        };
        assert!(before(Policy::Fcfs, &early_long, &late_short));
        assert!(before(Policy::Priority, &early_long, &late_short));
        assert!(before(Policy::Sjf, &late_short, &early_long));
        assert!(before(Policy::Edf, &late_short, &early_long));
        assert!(before(Policy::Edf, &early_long, &no_deadline));
        assert_eq!(intake_level(Policy::Fcfs, 9, |p| usize::from(9 - p)), 4);
        assert_eq!(intake_level(Policy::Sjf, 9, |p| usize::from(9 - p)), 0);
    }
}
