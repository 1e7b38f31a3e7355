//! Load balancing: which of the workers able to take a task gets it — `round_robin`,
//! `random`, `least_loaded` (most free capacity) or `power_of_two` (the freer of two random
//! ones). Pure: the rng is passed in.

use rand::Rng;

pub use crate::settings::BalancerName;

use crate::fleet::WorkerEntry;

/// A balancer and its state.
#[derive(Debug, Clone)]
pub struct Balancer {
    /// Which algorithm.
    name: BalancerName,
    /// Round robin: the id of the worker picked last.
    last: Option<String>,
}

impl Balancer {
    /// A balancer running `name`.
    pub fn new(name: BalancerName) -> Balancer {
        Balancer { name, last: None }
    }

    /// Picks one of `candidates` (sorted by id, as the registry yields them).
    pub fn pick<'a>(
        &mut self,
        candidates: &[&'a WorkerEntry],
        rng: &mut impl Rng,
    ) -> Option<&'a WorkerEntry> {
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.name {
            BalancerName::RoundRobin => {
                let next = self
                    .last
                    .as_ref()
                    .and_then(|last| candidates.iter().find(|w| w.id > *last));
                *next.unwrap_or(&candidates[0])
            }
            BalancerName::Random => candidates[rng.random_range(0..candidates.len())],
            BalancerName::LeastLoaded => {
                let most = candidates.iter().map(|w| w.credit()).max().unwrap_or(0);
                let freest: Vec<_> = candidates.iter().filter(|w| w.credit() == most).collect();
                freest[rng.random_range(0..freest.len())]
            }
            BalancerName::PowerOfTwo => {
                let first = rng.random_range(0..candidates.len());
                let mut second = rng.random_range(0..candidates.len());
                if candidates.len() > 1 {
                    while second == first {
                        second = rng.random_range(0..candidates.len());
                    }
                }
                let (a, b) = (candidates[first], candidates[second]);
                if b.credit() > a.credit() { b } else { a }
            }
        };
        self.last = Some(chosen.id.clone());
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::WorkerState;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;
    use std::time::Instant;

    fn worker(id: &str, capacity: u32, used: u32) -> WorkerEntry {
        WorkerEntry {
            concurrency: capacity,
            capacity,
            used,
            ..WorkerEntry::new(id, id, WorkerState::Online, Instant::now())
        }
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let workers: Vec<_> = (0..5).map(|i| worker(&format!("w{i}"), 1, 0)).collect();
        let all: Vec<_> = workers.iter().collect();
        let mut rng = StdRng::seed_from_u64(1);
        for picks in [7usize, 10, 13, 1000, 1001] {
            let mut balancer = Balancer::new(BalancerName::RoundRobin);
            let mut counts = HashMap::<String, usize>::new();
            for _ in 0..picks {
                *counts
                    .entry(balancer.pick(&all, &mut rng).unwrap().id.clone())
                    .or_default() += 1;
            }
            let (max, min) = (
                counts.values().max().unwrap(),
                counts.values().min().unwrap(),
            );
            assert!(max - min <= 1, "{picks} picks: {counts:?}");
        }
    }

    #[test]
    fn round_robin_skips_missing_workers() {
        let (a, b, c) = (worker("a", 1, 0), worker("b", 1, 0), worker("c", 1, 0));
        let mut rng = StdRng::seed_from_u64(1);
        let mut balancer = Balancer::new(BalancerName::RoundRobin);
        assert_eq!(balancer.pick(&[&a, &b, &c], &mut rng).unwrap().id, "a");
        assert_eq!(balancer.pick(&[&a, &c], &mut rng).unwrap().id, "c");
        assert_eq!(balancer.pick(&[&a, &b], &mut rng).unwrap().id, "a");
        assert!(balancer.pick(&[], &mut rng).is_none());
    }

    #[test]
    fn least_loaded_and_power_of_two_prefer_free_workers() {
        let busy = worker("busy", 8, 7);
        let idle = worker("idle", 8, 0);
        let mut rng = StdRng::seed_from_u64(7);
        let mut least = Balancer::new(BalancerName::LeastLoaded);
        assert_eq!(least.pick(&[&busy, &idle], &mut rng).unwrap().id, "idle");
        let mut two = Balancer::new(BalancerName::PowerOfTwo);
        for _ in 0..20 {
            assert_eq!(two.pick(&[&busy, &idle], &mut rng).unwrap().id, "idle");
        }
        let mut random = Balancer::new(BalancerName::Random);
        let idle_picks = (0..1000)
            .filter(|_| random.pick(&[&busy, &idle], &mut rng).unwrap().id == "idle")
            .count();
        assert!((400..600).contains(&idle_picks), "{idle_picks}");
    }
}
