//! Synthetic workloads: Poisson arrivals at a chosen load, heavy-tailed run times from a mix of
//! kinds (lognormal within a kind, kinds spanning three orders of magnitude), uniform
//! priorities, optional deadlines; and the heterogeneous workers they run on.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};

/// One kind of task in the mix.
#[derive(Debug, Clone)]
pub struct KindSpec {
    /// Kind name.
    pub name: &'static str,
    /// Share of arrivals.
    pub share: f64,
    /// Median work, in ms on a speed-1 core.
    pub median_ms: f64,
    /// Lognormal shape within the kind.
    pub sigma: f64,
}

/// The default mix: mostly short tasks, a heavy tail of long ones.
pub fn default_kinds() -> Vec<KindSpec> {
    vec![
        KindSpec {
            name: "thumbnail",
            share: 0.50,
            median_ms: 2.0,
            sigma: 0.6,
        },
        KindSpec {
            name: "resize",
            share: 0.30,
            median_ms: 20.0,
            sigma: 0.6,
        },
        KindSpec {
            name: "transcode",
            share: 0.15,
            median_ms: 200.0,
            sigma: 0.6,
        },
        KindSpec {
            name: "report",
            share: 0.05,
            median_ms: 2000.0,
            sigma: 0.6,
        },
    ]
}

/// One worker of the simulated pool.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Worker id.
    pub id: String,
    /// Work done per ms by one core (1.0 = reference speed).
    pub speed: f64,
    /// Cores: up to this many tasks run at full speed; more share them.
    pub cores: u32,
    /// Tasks it accepts at once (its advertised concurrency).
    pub concurrency: u32,
}

/// The default pool: `per_class` fast, normal and slow workers, 2 cores and `slots` slots each.
pub fn default_workers(per_class: usize, slots: u32) -> Vec<WorkerSpec> {
    [("fast", 2.0), ("normal", 1.0), ("slow", 0.5)]
        .iter()
        .flat_map(|(name, speed)| {
            (1..=per_class).map(move |i| WorkerSpec {
                id: format!("{name}-{i}"),
                speed: *speed,
                cores: 2,
                concurrency: slots,
            })
        })
        .collect()
}

/// One generated task.
#[derive(Debug, Clone)]
pub struct SimTask {
    /// Index, also its id.
    pub index: usize,
    /// Kind name.
    pub kind: &'static str,
    /// Arrival time, ms.
    pub arrival_ms: f64,
    /// Work, in ms on a speed-1 core (the oracle's run-time estimate).
    pub work_ms: f64,
    /// 0–9.
    pub priority: u8,
    /// Absolute deadline, ms, if any.
    pub deadline_ms: Option<f64>,
}

/// Generates `count` tasks whose arrival rate loads `workers` to `load` (0–1).
pub fn generate(
    count: usize,
    load: f64,
    kinds: &[KindSpec],
    workers: &[WorkerSpec],
    deadline_slack: Option<f64>,
    seed: u64,
) -> Vec<SimTask> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mean_work: f64 = kinds
        .iter()
        .map(|k| k.share * k.median_ms * (k.sigma * k.sigma / 2.0).exp())
        .sum::<f64>()
        / kinds.iter().map(|k| k.share).sum::<f64>();
    let capacity: f64 = workers.iter().map(|w| w.speed * f64::from(w.cores)).sum();
    let rate_per_ms = load * capacity / mean_work;
    let gaps = Exp::new(rate_per_ms).expect("positive arrival rate");
    let sizes: Vec<LogNormal<f64>> = kinds
        .iter()
        .map(|k| LogNormal::new(k.median_ms.ln(), k.sigma).expect("valid lognormal"))
        .collect();
    let total_share: f64 = kinds.iter().map(|k| k.share).sum();
    let mut now = 0.0;
    (0..count)
        .map(|index| {
            now += gaps.sample(&mut rng);
            let mut pick = rng.random::<f64>() * total_share;
            let kind = kinds
                .iter()
                .position(|k| {
                    pick -= k.share;
                    pick <= 0.0
                })
                .unwrap_or(kinds.len() - 1);
            let work_ms = sizes[kind].sample(&mut rng);
            let deadline_ms = deadline_slack
                .map(|slack| now + work_ms * rng.random_range(1.0..slack.max(1.0 + 1e-9)));
            SimTask {
                index,
                kind: kinds[kind].name,
                arrival_ms: now,
                work_ms,
                priority: rng.random_range(0..=9),
                deadline_ms,
            }
        })
        .collect()
}
