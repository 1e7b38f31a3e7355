//! The simulation loop: drives the real scheduler core ([`Core`]: fleet, credit and lookahead,
//! scheduler, policies, balancers, idempotency) in virtual time, exactly as the router does.
//! Tasks wait in per-level backlogs (the broker's queues), the core holds a window of each;
//! a worker runs up to its slots at once, sharing its cores, and a task sent beyond its free
//! slots (the lookahead) waits in its queue, as on a real worker.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::workload::{SimTask, WorkerSpec};
use crate::decisions::{Admission, Core, Decision, Released};
use crate::facts::{Status, WorkerState};
use crate::fleet::WorkerEntry;
use crate::idempotency::Ending;
use crate::policy;
use crate::scheduler::Origin;
use crate::scheduler::TaskInfo;
use crate::settings::Settings;

/// What happened to one task.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// When it was sent to a worker, ms.
    pub queued_ms: Option<f64>,
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
    /// The core's settings (policy, levels, balancer, lookahead).
    pub settings: &'a Settings,
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

/// One simulated worker: what it runs and what waits in its queue.
#[derive(Default)]
struct SimWorker {
    running: Vec<Running>,
    queued: VecDeque<usize>,
}

/// Runs `tasks` on `workers` and records what happened.
pub fn simulate(tasks: &[SimTask], workers: &[WorkerSpec], setup: &Setup<'_>) -> Run {
    let base = Instant::now();
    let at = |ms: f64| base + Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    let kinds: BTreeSet<String> = tasks.iter().map(|t| t.kind.to_owned()).collect();
    let settings = Settings {
        heartbeat_timeout: Duration::from_secs(u64::MAX / 4),
        ..setup.settings.clone()
    };
    let mut core: Core<usize> = Core::new(setup.levels, &settings, setup.seed);
    for spec in workers {
        core.add_worker(WorkerEntry {
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
            started: BTreeSet::new(),
        });
    }
    let index_of: HashMap<&str, usize> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.id.as_str(), i))
        .collect();
    let mut backlog: Vec<VecDeque<usize>> = vec![VecDeque::new(); setup.levels];
    let mut pool: Vec<SimWorker> = workers.iter().map(|_| SimWorker::default()).collect();
    let mut records = vec![Record::default(); tasks.len()];
    let mut busy_ms = vec![0.0; workers.len()];
    let (mut now, mut next_arrival) = (0.0_f64, 0);
    let rate = |w: usize, n: usize| {
        workers[w].speed * (f64::from(workers[w].cores) / n.max(1) as f64).min(1.0)
    };
    loop {
        let completion = (0..workers.len())
            .filter_map(|w| {
                let running = &pool[w].running;
                let fastest = running.iter().map(|r| r.remaining).reduce(f64::min)?;
                Some((now + fastest / rate(w, running.len()), w))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let arrival = tasks.get(next_arrival).map(|t| t.arrival_ms);
        let t = match (arrival, completion) {
            (None, None) => break,
            (Some(a), Some((c, _))) => a.min(c),
            (Some(a), None) => a,
            (None, Some((c, _))) => c,
        };
        for (w, worker) in pool.iter_mut().enumerate() {
            let runs = &mut worker.running;
            let step = (t - now) * rate(w, runs.len());
            runs.iter_mut().for_each(|r| r.remaining -= step);
            let cores = f64::from(workers[w].cores);
            busy_ms[w] += (t - now) * (runs.len() as f64).min(cores) / cores;
        }
        now = t;
        match completion {
            Some((c, w)) if arrival.is_none_or(|a| c <= a) => {
                let (done, still): (Vec<Running>, Vec<Running>) =
                    pool[w].running.drain(..).partition(|r| r.remaining <= 1e-9);
                pool[w].running = still;
                for finished in done {
                    let record = &mut records[finished.task];
                    record.end_ms = Some(now);
                    let started = record.start_ms.unwrap_or(now);
                    core.released(Released {
                        worker: workers[w].id.clone(),
                        task: finished.task.to_string(),
                        ran: Some((tasks[finished.task].kind.to_owned(), now - started)),
                        ending: Some(succeeded()),
                    });
                }
                start_queued(
                    &mut pool[w],
                    workers[w].concurrency,
                    tasks,
                    &mut records,
                    now,
                );
            }
            _ => {
                let task = &tasks[next_arrival];
                let level =
                    policy::intake_level(setup.settings.policy, task.priority, setup.level_for);
                records[next_arrival].level = level;
                backlog[level].push_back(next_arrival);
                next_arrival += 1;
            }
        }
        for expired in core.expired(at(now)) {
            records[expired.handle].expired = true;
        }
        loop {
            refill(&mut core, &mut backlog, tasks, setup, &at);
            let Some(decision) = core.next(at(now)) else {
                break;
            };
            let Decision::Send(assignment) = decision else {
                unreachable!("simulated task ids are unique");
            };
            let w = index_of[assignment.worker.as_str()];
            records[assignment.held.handle].queued_ms = Some(now);
            pool[w].queued.push_back(assignment.held.handle);
            start_queued(
                &mut pool[w],
                workers[w].concurrency,
                tasks,
                &mut records,
                now,
            );
        }
    }
    Run { records, busy_ms }
}

/// Starts what waits in a worker's queue while it has a free slot.
fn start_queued(
    worker: &mut SimWorker,
    slots: u32,
    tasks: &[SimTask],
    records: &mut [Record],
    now: f64,
) {
    while worker.running.len() < slots as usize {
        let Some(task) = worker.queued.pop_front() else {
            return;
        };
        records[task].start_ms = Some(now);
        worker.running.push(Running {
            task,
            remaining: tasks[task].work_ms,
        });
    }
}

/// How a simulated task ends.
fn succeeded() -> Ending {
    Ending {
        status: Status::Succeeded,
        result: None,
        result_omitted: false,
        error: None,
        attempts: 1,
        worker: None,
        started_at: None,
        finished_at: None,
    }
}

/// Tops up every level's window from its backlog, as the broker delivers up to the prefetch.
fn refill(
    core: &mut Core<usize>,
    backlog: &mut [VecDeque<usize>],
    tasks: &[SimTask],
    setup: &Setup<'_>,
    at: &dyn Fn(f64) -> Instant,
) {
    let held = core.held();
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
                origin: Origin::Submitted { waiter: None },
            };
            let admitted = core.arrived(level, info, index, at(task.arrival_ms));
            debug_assert!(matches!(admitted, Admission::Held));
        }
    }
}
