//! `warren-sim`: runs the scheduler core in virtual time against a synthetic workload for
//! every policy × balancer and prints one table. Seeded and reproducible.

use std::time::Duration;

use clap::Parser;
use warren_core::levels::{DEFAULT_MIN_PRIORITIES, level_for};
use warren_core::settings::{BalancerName, LevelMode, PolicyName, Settings};
use warren_core::sim::{self, Metrics, Setup};

/// Compares warren's scheduling policies and balancers on a simulated workload: Poisson
/// arrivals, heavy-tailed run times over several kinds, heterogeneous workers.
#[derive(Debug, Parser)]
#[command(name = "warren-sim", version)]
struct Args {
    /// Tasks to simulate.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Offered load: arrival rate × mean work / total core speed.
    #[arg(long, default_value_t = 0.9)]
    load: f64,
    /// Seed of the workload and the balancers.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Tasks the dispatcher holds per priority level.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Give every task a deadline of arrival + work × U(1, SLACK); expired tasks are counted.
    #[arg(long)]
    deadline_slack: Option<f64>,
    /// Workers of each speed class (fast 2.0, normal 1.0, slow 0.5).
    #[arg(long, default_value_t = 4)]
    per_class: usize,
    /// Slots (advertised concurrency) per worker; each worker has 2 cores, and more running
    /// tasks than cores share them.
    #[arg(long, default_value_t = 3)]
    slots: u32,
    /// Use weighted level selection (weights 6:3:1, aging 30 s) instead of strict.
    #[arg(long)]
    weighted: bool,
    /// Work (at a worker's mean run time) the dispatcher may queue at a worker beyond its free
    /// slots, in ms, as `dispatcher.lookahead_ms` (0: credit is exactly the free slots).
    #[arg(long, default_value_t = 20)]
    lookahead_ms: u64,
}

fn main() {
    let args = Args::parse();
    let workers = sim::default_workers(args.per_class, args.slots);
    let kinds = sim::default_kinds();
    let tasks = sim::generate(
        args.tasks,
        args.load,
        &kinds,
        &workers,
        args.deadline_slack,
        args.seed,
    );
    let level_for = |priority| level_for(DEFAULT_MIN_PRIORITIES, priority);
    let levels = DEFAULT_MIN_PRIORITIES.len();
    let policies = [
        ("fcfs", PolicyName::Fcfs, false),
        ("priority", PolicyName::Priority, false),
        ("sjf (learned)", PolicyName::Sjf, false),
        ("sjf (oracle)", PolicyName::Sjf, true),
        ("edf", PolicyName::Edf, false),
    ];
    let balancers = [
        ("round_robin", BalancerName::RoundRobin),
        ("random", BalancerName::Random),
        ("least_loaded", BalancerName::LeastLoaded),
        ("power_of_two", BalancerName::PowerOfTwo),
    ];
    let mut rows: Vec<Metrics> = Vec::new();
    for (policy_name, policy, oracle) in policies {
        for (balancer_name, balancer) in balancers {
            let settings = Settings {
                policy,
                balancer,
                levels: if args.weighted {
                    LevelMode::Weighted
                } else {
                    LevelMode::Strict
                },
                lookahead: Duration::from_millis(args.lookahead_ms),
                ..Settings::default()
            };
            let setup = Setup {
                settings: &settings,
                level_for: &level_for,
                levels,
                window: args.window,
                oracle,
                seed: args.seed,
            };
            let run = sim::simulate(&tasks, &workers, &setup);
            rows.push(Metrics::measure(
                policy_name,
                balancer_name,
                &tasks,
                &run,
                levels - 1,
            ));
        }
    }
    println!(
        "warren-sim: {} tasks, load {:.2}, seed {}, window {}/level, lookahead {} ms, {} levels, workers: {}\n",
        args.tasks,
        args.load,
        args.seed,
        args.window,
        args.lookahead_ms,
        if args.weighted { "weighted" } else { "strict" },
        workers
            .iter()
            .map(|w| format!(
                "{} (speed {}, {} cores, {} slots)",
                w.id, w.speed, w.cores, w.concurrency
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("times in ms unless marked\n");
    print!("{}", sim::table(&rows));
    let unfinished: usize = rows.iter().map(|r| r.unfinished).sum();
    if unfinished > 0 {
        eprintln!("warren-sim: {unfinished} tasks never finished — a scheduler bug");
        std::process::exit(1);
    }
}
