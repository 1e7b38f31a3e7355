//! Level selection: which priority level is served next. `strict` always takes the most urgent
//! level with a runnable task; `weighted` shares picks among levels with runnable tasks in
//! proportion to their weights (smooth weighted round robin), and with aging a task that has
//! waited too long goes next whatever its level, so no level starves. Pure.

use std::time::{Duration, Instant};

pub use crate::settings::LevelMode;

/// The level a task of `priority` belongs to, given each level's lowest priority, most urgent
/// level first (the last level takes everything below the others).
pub fn level_for(min_priorities: impl IntoIterator<Item = u8>, priority: u8) -> usize {
    let mut count = 0;
    for (index, min) in min_priorities.into_iter().enumerate() {
        if priority >= min {
            return index;
        }
        count = index + 1;
    }
    count.saturating_sub(1)
}

/// Each default level's lowest priority: `high` 7–9, `normal` 4–6, `low` 0–3.
pub const DEFAULT_MIN_PRIORITIES: [u8; 3] = [7, 4, 0];

/// The level-selection state.
#[derive(Debug, Clone)]
pub struct LevelSelector {
    /// Strict or weighted.
    mode: LevelMode,
    /// Weight per level (weighted mode).
    weights: Vec<i64>,
    /// Smooth weighted round robin's running scores.
    current: Vec<i64>,
    /// Waiting longer than this promotes a task (weighted mode; `None`: never).
    aging: Option<Duration>,
}

impl LevelSelector {
    /// A selector over `weights.len()` levels.
    pub fn new(mode: LevelMode, weights: &[u32], aging: Option<Duration>) -> LevelSelector {
        LevelSelector {
            mode,
            weights: weights.iter().map(|w| i64::from(*w)).collect(),
            current: vec![0; weights.len()],
            aging,
        }
    }

    /// Picks a level among those with a runnable task. `oldest[i]` is when the oldest runnable
    /// task of level `i` arrived, `None` if level `i` has nothing runnable.
    pub fn pick(&mut self, oldest: &[Option<Instant>], now: Instant) -> Option<usize> {
        let runnable = || {
            oldest
                .iter()
                .enumerate()
                .filter_map(|(i, o)| o.map(|o| (i, o)))
        };
        match self.mode {
            LevelMode::Strict => runnable().map(|(i, _)| i).next(),
            LevelMode::Weighted => {
                if let Some(aging) = self.aging {
                    let starving = runnable()
                        .filter(|(_, arrived)| now.saturating_duration_since(*arrived) > aging)
                        .min_by_key(|(_, arrived)| *arrived);
                    if let Some((level, _)) = starving {
                        return Some(level);
                    }
                }
                // Zero-weight levels go only when no weighted level has work.
                let weighted: Vec<usize> = runnable()
                    .map(|(i, _)| i)
                    .filter(|i| self.weights.get(*i).copied().unwrap_or(0) > 0)
                    .collect();
                if weighted.is_empty() {
                    runnable().map(|(i, _)| i).next()
                } else {
                    self.smooth_weighted(weighted.into_iter())
                }
            }
        }
    }

    /// One step of smooth weighted round robin (as in nginx) over `eligible` levels.
    fn smooth_weighted(&mut self, eligible: impl Iterator<Item = usize>) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for level in eligible {
            let weight = self.weights[level];
            self.current[level] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[level] > self.current[b]) {
                best = Some(level);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_takes_the_most_urgent_runnable_level() {
        let now = Instant::now();
        let mut selector = LevelSelector::new(LevelMode::Strict, &[1, 1, 1], None);
        assert_eq!(selector.pick(&[None, Some(now), Some(now)], now), Some(1));
        assert_eq!(
            selector.pick(&[Some(now), Some(now), Some(now)], now),
            Some(0)
        );
        assert_eq!(selector.pick(&[None, None, None], now), None);
    }

    #[test]
    fn weighted_shares_converge_to_the_weights() {
        let now = Instant::now();
        let weights = [6, 3, 1];
        let mut selector = LevelSelector::new(LevelMode::Weighted, &weights, None);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            let level = selector.pick(&[Some(now); 3], now).unwrap();
            counts[level] += 1;
        }
        for (count, weight) in counts.iter().zip(weights) {
            let share = f64::from(*count) / 10_000.0;
            let expected = f64::from(weight) / 10.0;
            assert!((share - expected).abs() <= 0.05 * expected, "{counts:?}");
        }
    }

    #[test]
    fn aging_lets_an_old_task_jump_the_queue() {
        let start = Instant::now();
        let now = start + Duration::from_secs(60);
        let mut selector = LevelSelector::new(
            LevelMode::Weighted,
            &[100, 0],
            Some(Duration::from_secs(30)),
        );
        assert_eq!(selector.pick(&[Some(now), Some(start)], now), Some(1));
        assert_eq!(selector.pick(&[Some(now), Some(now)], now), Some(0));
        assert_eq!(selector.pick(&[None, Some(now)], now), Some(1));
    }
}
