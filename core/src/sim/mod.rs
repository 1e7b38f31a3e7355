//! The simulator behind `warren-sim`: the real scheduling core ([`crate::Core`]) driven in virtual time against
//! synthetic workloads, seeded and reproducible.

mod engine;
mod metrics;
mod workload;

pub use engine::{Record, Run, Setup, simulate};
pub use metrics::{Metrics, table};
pub use workload::{KindSpec, SimTask, WorkerSpec, default_kinds, default_workers, generate};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::levels::{DEFAULT_MIN_PRIORITIES, level_for};
    use crate::settings::{BalancerName, PolicyName, Settings};
    use std::time::Duration;

    #[test]
    fn a_lookahead_queues_tasks_at_workers_and_none_start_late_without_it() {
        let measure = |lookahead_ms: u64| {
            let workers = default_workers(4, 3);
            let tasks = generate(8_000, 0.9, &default_kinds(), &workers, None, 7);
            let level_for = |p| level_for(DEFAULT_MIN_PRIORITIES, p);
            let settings = Settings {
                policy: PolicyName::Sjf,
                balancer: BalancerName::LeastLoaded,
                lookahead: Duration::from_millis(lookahead_ms),
                ..Settings::default()
            };
            let setup = Setup {
                settings: &settings,
                level_for: &level_for,
                levels: 3,
                window: 64,
                oracle: false,
                seed: 7,
            };
            let run = simulate(&tasks, &workers, &setup);
            let queued = tasks
                .iter()
                .zip(&run.records)
                .filter(|(_, r)| r.queued_ms.is_some_and(|q| r.start_ms.unwrap() > q))
                .count();
            (Metrics::measure("", "", &tasks, &run, 2), queued)
        };
        let (without, queued_without) = measure(0);
        let (with, queued_with) = measure(20);
        assert_eq!(
            queued_without, 0,
            "no lookahead: every task starts as it is sent"
        );
        assert!(queued_with > 0, "a lookahead queues tasks at workers");
        assert_eq!((with.unfinished, without.unfinished), (0, 0));
    }

    fn run(policy: PolicyName, balancer: BalancerName, oracle: bool) -> Metrics {
        run_seed(policy, balancer, oracle, 7)
    }

    fn run_seed(policy: PolicyName, balancer: BalancerName, oracle: bool, seed: u64) -> Metrics {
        let workers = default_workers(4, 3);
        let tasks = generate(8_000, 0.9, &default_kinds(), &workers, None, seed);
        let level_for = |p| level_for(DEFAULT_MIN_PRIORITIES, p);
        // No lookahead, as these figures were first measured.
        let dispatcher = Settings {
            policy,
            balancer,
            lookahead: Duration::ZERO,
            ..Settings::default()
        };
        let setup = Setup {
            settings: &dispatcher,
            level_for: &level_for,
            levels: 3,
            window: 64,
            oracle,
            seed,
        };
        let metrics = Metrics::measure("", "", &tasks, &simulate(&tasks, &workers, &setup), 2);
        assert_eq!(metrics.unfinished, 0);
        metrics
    }

    #[test]
    fn learned_sjf_is_close_to_the_oracle_and_beats_fcfs() {
        let learned = run(PolicyName::Sjf, BalancerName::LeastLoaded, false);
        let oracle = run(PolicyName::Sjf, BalancerName::LeastLoaded, true);
        let fcfs = run(PolicyName::Fcfs, BalancerName::LeastLoaded, false);
        assert!(
            learned.response[0] <= 1.15 * oracle.response[0],
            "{learned:?} vs {oracle:?}"
        );
        assert!(
            learned.response[0] < 0.9 * fcfs.response[0],
            "{learned:?} vs {fcfs:?}"
        );
    }

    #[test]
    fn informed_balancers_beat_random_on_p99_with_heterogeneous_workers() {
        // p99 of one run is noisy (a handful of long tasks decide it): compare the mean over
        // several seeded workloads.
        let mean_p99 = |balancer| {
            (1..=4)
                .map(|seed| run_seed(PolicyName::Priority, balancer, false, seed).response[2])
                .sum::<f64>()
                / 4.0
        };
        let random = mean_p99(BalancerName::Random);
        for balancer in [BalancerName::LeastLoaded, BalancerName::PowerOfTwo] {
            let informed = mean_p99(balancer);
            assert!(
                informed < 0.95 * random,
                "{balancer:?}: {informed} vs random {random}"
            );
        }
    }

    #[test]
    fn strict_priority_waits_least_on_the_most_urgent_level() {
        let workers = default_workers(4, 3);
        let tasks = generate(4_000, 0.95, &default_kinds(), &workers, None, 3);
        let level_for = |p| level_for(DEFAULT_MIN_PRIORITIES, p);
        let dispatcher = Settings {
            lookahead: Duration::ZERO,
            ..Settings::default()
        };
        let setup = Setup {
            settings: &dispatcher,
            level_for: &level_for,
            levels: 3,
            window: 64,
            oracle: false,
            seed: 3,
        };
        let run = simulate(&tasks, &workers, &setup);
        let mean_wait = |level: usize| {
            let waits: Vec<f64> = tasks
                .iter()
                .zip(&run.records)
                .filter(|(_, r)| r.level == level)
                .map(|(t, r)| r.start_ms.unwrap() - t.arrival_ms)
                .collect();
            waits.iter().sum::<f64>() / waits.len() as f64
        };
        assert!(mean_wait(0) < mean_wait(1) && mean_wait(1) < mean_wait(2));
    }
}
