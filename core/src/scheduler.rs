//! The scheduler core: the tasks the dispatcher holds (its bounded window over the priority
//! queues) and the decision of which task goes to which worker next — level selection, then
//! the policy's order within the level, then the balancer among the workers able to run it.
//! Pure: no broker types (the handle `H` is whatever the caller needs to settle a task later),
//! `now` and the rng seed passed in.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::balancer::Balancer;
use crate::fleet::{Fleet, WorkerEntry};
use crate::idempotency::Waiter;
use crate::levels::LevelSelector;
use crate::policy::{self, Estimator, OrderKey, Policy};
use crate::settings::Settings;

/// What the scheduler needs to know of a held task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    /// Task id.
    pub id: String,
    /// Task kind.
    pub kind: String,
    /// Tags a worker must advertise to run it.
    pub requires: Vec<String>,
    /// Capacity units it occupies.
    pub cost: u32,
    /// The submitter's run-time estimate, if any.
    pub estimated_ms: Option<f64>,
    /// Not started by then means dead.
    pub deadline: Option<Instant>,
    /// When the dispatcher received it.
    pub arrived: Instant,
    /// Not to be started before then (a retry's backoff).
    pub not_before: Option<Instant>,
    /// Where it comes from: a client's fresh submission is checked against the idempotency
    /// window when it arrives and again when it is sent.
    pub origin: Origin,
}

/// Where a task handed to the core comes from, as far as its delivery tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client's submission on its first way through: the idempotency window applies, and a
    /// duplicate's answer goes to `waiter`.
    Submitted {
        /// Where a duplicate's answer goes, if it asked for one.
        waiter: Option<Waiter>,
    },
    /// Possibly a copy of a task that a dispatcher which died had already passed on.
    Redelivered,
    /// warren's own re-entry: a retry, a requeue from the dead queue, a reclaimed task.
    Reentry,
}

/// A held task and its handle.
#[derive(Debug)]
pub struct Held<H> {
    /// The task.
    pub task: TaskInfo,
    /// The caller's handle (a delivery to ack once the task is safely on a worker's queue).
    pub handle: H,
}

/// A decision: send `held` to the worker `worker`.
#[derive(Debug)]
pub struct Assignment<H> {
    /// The task, removed from the window.
    pub held: Held<H>,
    /// The chosen worker's id.
    pub worker: String,
    /// The chosen worker's queue.
    pub queue: String,
}

/// Held tasks per priority level (0 = most urgent), in arrival order, and the decision state.
#[derive(Debug)]
pub struct Scheduler<H> {
    /// One list per level, in arrival order.
    levels: Vec<Vec<Held<H>>>,
    /// Order within a level.
    policy: Policy,
    /// Which level goes next.
    selector: LevelSelector,
    /// Which worker gets the task.
    balancer: Balancer,
    /// Learned run times per kind, for shortest-job-first.
    estimator: Estimator,
    /// For the randomized balancers.
    rng: StdRng,
}

impl<H> Scheduler<H> {
    /// A scheduler over `levels` levels, set up as `settings` say, with a seeded rng.
    pub fn new(levels: usize, settings: &Settings, seed: u64) -> Scheduler<H> {
        let mut weights = settings.weights.clone();
        weights.resize(levels, 1);
        Scheduler {
            levels: (0..levels).map(|_| Vec::new()).collect(),
            policy: settings.policy,
            selector: LevelSelector::new(settings.levels, &weights, settings.aging),
            balancer: Balancer::new(settings.balancer),
            estimator: Estimator::default(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Holds a task on `level`.
    pub fn push(&mut self, level: usize, held: Held<H>) {
        self.levels[level].push(held);
    }

    /// Tasks held per level.
    pub fn held(&self) -> Vec<usize> {
        self.levels.iter().map(Vec::len).collect()
    }

    /// Every held task, with its level.
    pub fn tasks(&self) -> impl Iterator<Item = (usize, &TaskInfo)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(level, held)| held.iter().map(move |h| (level, &h.task)))
    }

    /// Learns that a task of `kind` ran for `duration_ms`.
    pub fn observe(&mut self, kind: &str, duration_ms: f64) {
        self.estimator.observe(kind, duration_ms);
    }

    /// Takes out every held task whose deadline has passed.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Held<H>> {
        let mut expired = Vec::new();
        for level in &mut self.levels {
            let mut index = 0;
            while index < level.len() {
                if level[index].task.deadline.is_some_and(|d| d < now) {
                    expired.push(level.remove(index));
                } else {
                    index += 1;
                }
            }
        }
        expired
    }

    /// Takes out every held task that arrived before `cutoff`, with its level.
    pub fn take_arrived_before(&mut self, cutoff: Instant) -> Vec<(usize, Held<H>)> {
        let mut taken = Vec::new();
        for (index, level) in self.levels.iter_mut().enumerate() {
            let mut position = 0;
            while position < level.len() {
                if level[position].task.arrived < cutoff {
                    taken.push((index, level.remove(position)));
                } else {
                    position += 1;
                }
            }
        }
        taken
    }

    /// The next task to send and where, if any held task can go to a worker now. Tasks no
    /// worker can take now stay held without blocking the ones behind them.
    pub fn next(&mut self, registry: &Fleet, now: Instant) -> Option<Assignment<H>> {
        // Per level: the runnable task the policy puts first, and the oldest runnable one.
        let mut first: Vec<Option<usize>> = vec![None; self.levels.len()];
        let mut oldest: Vec<Option<Instant>> = vec![None; self.levels.len()];
        for (index, level) in self.levels.iter().enumerate() {
            for (position, held) in level.iter().enumerate() {
                let task = &held.task;
                let waiting = task.not_before.is_some_and(|t| t > now);
                if waiting || !registry.workers().any(|w| can_take(w, task)) {
                    continue;
                }
                let arrived = task.arrived;
                if oldest[index].is_none_or(|o| arrived < o) {
                    oldest[index] = Some(arrived);
                }
                let better = match first[index] {
                    None => true,
                    Some(best) => {
                        policy::before(self.policy, &self.key(task), &self.key(&level[best].task))
                    }
                };
                if better {
                    first[index] = Some(position);
                }
            }
        }
        let level = if self.policy == Policy::Fcfs {
            // One arrival order across levels.
            (0..self.levels.len())
                .filter_map(|i| oldest[i].map(|o| (i, o)))
                .min_by_key(|(_, o)| *o)
                .map(|(i, _)| i)?
        } else {
            self.selector.pick(&oldest, now)?
        };
        let position = first[level]?;
        let task = &self.levels[level][position].task;
        let mut candidates: Vec<&WorkerEntry> =
            registry.workers().filter(|w| can_take(w, task)).collect();
        // A worker that can start it at once beats queueing it behind a busy one.
        if candidates.iter().any(|w| w.free() >= task.cost) {
            candidates.retain(|w| w.free() >= task.cost);
        }
        let worker = self.balancer.pick(&candidates, &mut self.rng)?;
        let (worker, queue) = (worker.id.clone(), worker.queue.clone());
        let held = self.levels[level].remove(position);
        Some(Assignment {
            held,
            worker,
            queue,
        })
    }

    fn key(&self, task: &TaskInfo) -> OrderKey {
        OrderKey {
            arrived: task.arrived,
            deadline: task.deadline,
            expected_ms: task
                .estimated_ms
                .unwrap_or_else(|| self.estimator.estimate(&task.kind)),
        }
    }

    /// Takes every held task out (when the session that holds them ends).
    pub fn clear(&mut self) {
        self.levels.iter_mut().for_each(Vec::clear);
    }
}

fn can_take(worker: &WorkerEntry, task: &TaskInfo) -> bool {
    worker.can_take(&task.kind, &task.requires, task.cost)
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
