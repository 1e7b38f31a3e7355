//! One known worker as the dispatcher sees it: what it can run, what it holds, its credit (free
//! slots and units, plus the lookahead that follows its mean run time).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::{LOOKAHEAD_SLOTS, RUN_TIME_WEIGHT};
use crate::facts::WorkerState;

/// One known worker.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    /// Worker id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Kinds it handles.
    pub kinds: BTreeSet<String>,
    /// Tags it advertises.
    pub tags: BTreeSet<String>,
    /// Tasks it runs at once.
    pub concurrency: u32,
    /// Capacity units; each task occupies its `cost`.
    pub capacity: u32,
    /// Its last reported life-cycle state.
    pub state: WorkerState,
    /// When its last heartbeat arrived.
    pub last_seen: Instant,
    /// Tasks sent to it and not yet reported finished.
    pub outstanding: HashMap<String, Outstanding>,
    /// Units used by the outstanding tasks (the sum of their costs).
    pub used: u32,
    /// Tasks it may be sent beyond its free slots, to wait in its queue (see
    /// [`Fleet::with_lookahead`]); follows its mean run time.
    pub lookahead: u32,
    /// Mean run time of its recent attempts in milliseconds (moving average), once one ended.
    pub mean_run_ms: Option<f64>,
    /// Tasks whose attempt it said had begun, as of its last heartbeat.
    pub started: BTreeSet<String>,
}

/// A task a worker holds, as far as the dispatcher knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding {
    /// When it was sent (or adopted from a heartbeat).
    pub since: Instant,
    /// Units it occupies.
    pub cost: u32,
}

impl WorkerEntry {
    /// A worker known by id and queue only, heard at `now` in `state`: no kinds, tags,
    /// concurrency or capacity yet, nothing outstanding (its heartbeats fill the rest in).
    pub fn new(id: &str, queue: &str, state: WorkerState, now: Instant) -> WorkerEntry {
        WorkerEntry {
            id: id.to_owned(),
            queue: queue.to_owned(),
            kinds: BTreeSet::new(),
            tags: BTreeSet::new(),
            concurrency: 0,
            capacity: 0,
            state,
            last_seen: now,
            outstanding: HashMap::new(),
            used: 0,
            lookahead: 0,
            mean_run_ms: None,
            started: BTreeSet::new(),
        }
    }

    /// Free capacity units: what it can start running at once.
    pub fn free(&self) -> u32 {
        self.credit_within(0)
    }

    /// Units it may be sent now: its free units plus its lookahead (tasks that wait in its
    /// queue for a slot).
    pub fn credit(&self) -> u32 {
        self.credit_within(self.lookahead)
    }

    fn credit_within(&self, lookahead: u32) -> u32 {
        let tasks = u32::try_from(self.outstanding.len()).unwrap_or(u32::MAX);
        if tasks >= self.concurrency.saturating_add(lookahead) {
            return 0;
        }
        // The lookahead in units: as many as that many tasks of average cost occupy.
        let units = if self.concurrency == 0 {
            0
        } else {
            (u64::from(lookahead) * u64::from(self.capacity)).div_ceil(u64::from(self.concurrency))
        };
        let limit = u64::from(self.capacity) + units;
        u32::try_from(limit.saturating_sub(u64::from(self.used))).unwrap_or(u32::MAX)
    }

    /// Fraction of its capacity in use, 0.0–1.0.
    pub fn load(&self) -> f64 {
        if self.capacity == 0 {
            1.0
        } else {
            f64::from(self.used.min(self.capacity)) / f64::from(self.capacity)
        }
    }

    /// Whether it advertises what a task of `kind` requiring `requires` needs, whatever its
    /// current load.
    pub fn is_able(&self, kind: &str, requires: &[String]) -> bool {
        self.kinds.contains(kind) && requires.iter().all(|tag| self.tags.contains(tag))
    }

    /// Whether it may be sent a task of `kind`, requiring `requires`, costing `cost`, now
    /// (to run at once or, within its lookahead, to wait in its queue).
    pub fn can_take(&self, kind: &str, requires: &[String], cost: u32) -> bool {
        self.state == WorkerState::Online
            && cost <= self.capacity
            && self.credit() >= cost
            && self.is_able(kind, requires)
    }

    /// Records how long an attempt ran on it and resizes its lookahead: the number of tasks
    /// it finishes, at its mean run time, in `lookahead` — at most [`LOOKAHEAD_SLOTS`] times
    /// its concurrency, none while its run time is unknown.
    pub(super) fn ran(&mut self, duration_ms: f64, lookahead: Duration) {
        let mean = match self.mean_run_ms {
            None => duration_ms,
            Some(mean) => mean + RUN_TIME_WEIGHT * (duration_ms - mean),
        };
        self.mean_run_ms = Some(mean);
        let concurrency = f64::from(self.concurrency);
        let cap = concurrency * f64::from(LOOKAHEAD_SLOTS);
        let window = lookahead.as_secs_f64() * 1000.0;
        // A run time under 0.1 ms (reported as 0) counts as 0.1 ms.
        let tasks = (concurrency * window / mean.max(0.1)).floor().min(cap);
        self.lookahead = tasks as u32;
    }

    pub(super) fn add(&mut self, task: &str, outstanding: Outstanding) {
        if let Some(previous) = self.outstanding.insert(task.to_owned(), outstanding) {
            self.used -= previous.cost;
        }
        self.used += outstanding.cost;
    }

    pub(super) fn remove(&mut self, task: &str) {
        if let Some(previous) = self.outstanding.remove(task) {
            self.used -= previous.cost;
        }
    }
}
