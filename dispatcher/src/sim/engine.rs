//! The simulation loop: drives the real scheduler core (registry, scheduler, policies,
//! balancers) in virtual time. Tasks wait in per-level backlogs (the broker's queues), the
//! dispatcher holds a window of each, and workers share their cores among running tasks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use warren_common::WorkerState;
use warren_common::config::DispatcherConfig;

use super::workload::{SimTask, WorkerSpec};
use crate::policy;
use crate::registry::{Registry, WorkerEntry};
use crate::scheduler::{Held, Scheduler, TaskInfo};

/// What happened to one task.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// When it started, ms.
    pub start_ms: Option<f64>,
    /// When it finished, ms.
    pub end_ms: Option<f64>,
    /// Its priority level.
    pub level: usize,
    /// Whether its deadline passed before it started.
    pub expired: bool,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Per task, by index.
    pub records: Vec<Record>,
    /// Per worker: core-time used divided by its cores, ms.
    pub busy_ms: Vec<f64>,
}

/// How a run is set up.
#[derive(Clone)]
pub struct Setup<'a> {
    /// Dispatcher settings (policy, levels, balancer).
    pub dispatcher: &'a DispatcherConfig,
    /// Priority → level index.
    pub level_for: &'a dyn Fn(u8) -> usize,
    /// Number of levels.
    pub levels: usize,
    /// Tasks held per level.
    pub window: usize,
    /// Give shortest-job-first the true run times instead of learning them.
    pub oracle: bool,
    /// Seeds the balancers' rng.
    pub seed: u64,
}

struct Running {
    task: usize,
    remaining: f64,
}

/// Runs `tasks` on `workers` and records what happened.
pub fn simulate(tasks: &[SimTask], workers: &[WorkerSpec], setup: &Setup<'_>) -> Run {
    let base = Instant::now();
    let at = |ms: f64| base + Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    let kinds: BTreeSet<String> = tasks.iter().map(|t| t.kind.to_owned()).collect();
    let mut registry = Registry::new(Duration::from_secs(u64::MAX / 4));
    for spec in workers {
        registry.insert(WorkerEntry {
            id: spec.id.clone(),
            queue: spec.id.clone(),
            kinds: kinds.clone(),
            tags: BTreeSet::new(),
            concurrency: spec.concurrency,
            capacity: spec.concurrency,
            state: WorkerState::Online,
            last_seen: base,
            outstanding: HashMap::new(),
            used: 0,
            lookahead: 0,
            mean_run_ms: None,
        });
    }
    let index_of: HashMap<&str, usize> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.id.as_str(), i))
        .collect();
    let mut scheduler: Scheduler<usize> =
        Scheduler::new(setup.levels, setup.dispatcher, setup.seed);
    let mut backlog: Vec<VecDeque<usize>> = vec![VecDeque::new(); setup.levels];
    let mut running: Vec<Vec<Running>> = workers.iter().map(|_| Vec::new()).collect();
    let mut records = vec![Record::default(); tasks.len()];
    let mut busy_ms = vec![0.0; workers.len()];
    let (mut now, mut next_arrival) = (0.0_f64, 0);
    let rate = |w: usize, n: usize| {
        workers[w].speed * (f64::from(workers[w].cores) / n.max(1) as f64).min(1.0)
    };
    loop {
        let completion = (0..workers.len())
            .filter_map(|w| {
                let fastest = running[w].iter().map(|r| r.remaining).reduce(f64::min)?;
                Some((now + fastest / rate(w, running[w].len()), w))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let arrival = tasks.get(next_arrival).map(|t| t.arrival_ms);
        let t = match (arrival, completion) {
            (None, None) => break,
            (Some(a), Some((c, _))) => a.min(c),
            (Some(a), None) => a,
            (None, Some((c, _))) => c,
        };
        for (w, runs) in running.iter_mut().enumerate() {
            let step = (t - now) * rate(w, runs.len());
            runs.iter_mut().for_each(|r| r.remaining -= step);
            let cores = f64::from(workers[w].cores);
            busy_ms[w] += (t - now) * (runs.len() as f64).min(cores) / cores;
        }
        now = t;
        match completion {
            Some((c, w)) if arrival.is_none_or(|a| c <= a) => {
                let (done, still): (Vec<Running>, Vec<Running>) =
                    running[w].drain(..).partition(|r| r.remaining <= 1e-9);
                running[w] = still;
                for finished in done {
                    let record = &mut records[finished.task];
                    record.end_ms = Some(now);
                    let started = record.start_ms.unwrap_or(now);
                    registry.released(&workers[w].id, &finished.task.to_string());
                    scheduler.observe(tasks[finished.task].kind, now - started);
                }
            }
            _ => {
                let task = &tasks[next_arrival];
                let level =
                    policy::intake_level(setup.dispatcher.policy, task.priority, setup.level_for);
                records[next_arrival].level = level;
                backlog[level].push_back(next_arrival);
                next_arrival += 1;
            }
        }
        for expired in scheduler.take_expired(at(now)) {
            records[expired.handle].expired = true;
        }
        loop {
            refill(&mut scheduler, &mut backlog, tasks, setup, &at);
            let Some(assignment) = scheduler.next(&registry, at(now)) else {
                break;
            };
            let task = assignment.held.handle;
            registry.dispatched(&assignment.worker, &assignment.held.task.id, 1, at(now));
            records[task].start_ms = Some(now);
            running[index_of[assignment.worker.as_str()]].push(Running {
                task,
                remaining: tasks[task].work_ms,
            });
        }
    }
    Run { records, busy_ms }
}

/// Tops up every level's window from its backlog, as the broker delivers up to the prefetch.
fn refill(
    scheduler: &mut Scheduler<usize>,
    backlog: &mut [VecDeque<usize>],
    tasks: &[SimTask],
    setup: &Setup<'_>,
    at: &dyn Fn(f64) -> Instant,
) {
    let held = scheduler.held();
    for (level, queue) in backlog.iter_mut().enumerate() {
        for _ in held[level]..setup.window {
            let Some(index) = queue.pop_front() else {
                break;
            };
            let task = &tasks[index];
            let info = TaskInfo {
                id: index.to_string(),
                kind: task.kind.to_owned(),
                requires: Vec::new(),
                cost: 1,
                estimated_ms: setup.oracle.then_some(task.work_ms),
                deadline: task.deadline_ms.map(at),
                arrived: at(task.arrival_ms),
                not_before: None,
            };
            scheduler.push(
                level,
                Held {
                    task: info,
                    handle: index,
                },
            );
        }
    }
}
