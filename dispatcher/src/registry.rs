//! The worker registry: who is alive, what each worker can run, and how much credit (free
//! slots) it has. Pure: fed heartbeats, dispatches and releases, with `now` passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use warren_common::{Heartbeat, WorkerState};

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
    /// [`Registry::with_lookahead`]); follows its mean run time.
    pub lookahead: u32,
    /// Mean run time of its recent attempts in milliseconds (moving average), once one ended.
    pub mean_run_ms: Option<f64>,
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
    fn ran(&mut self, duration_ms: f64, lookahead: Duration) {
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

    fn add(&mut self, task: &str, outstanding: Outstanding) {
        if let Some(previous) = self.outstanding.insert(task.to_owned(), outstanding) {
            self.used -= previous.cost;
        }
        self.used += outstanding.cost;
    }

    fn remove(&mut self, task: &str) {
        if let Some(previous) = self.outstanding.remove(task) {
            self.used -= previous.cost;
        }
    }
}

/// What a heartbeat changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A worker seen for the first time.
    Joined,
    /// A known worker, still there.
    Refreshed,
    /// The worker said it is gone: its queue can be reclaimed.
    Left,
}

/// Task ids that reached a final state lately, to recognise a redelivered copy of a task
/// that already ran (after a dispatcher failover). Bounded.
#[derive(Debug, Clone, Default)]
struct Recent {
    /// The ids, for lookups.
    ids: HashSet<String>,
    /// The same ids, oldest first, for eviction.
    order: VecDeque<String>,
}

/// Finished task ids remembered at most.
const RECENT: usize = 20_000;

pub use warren_common::config::LOOKAHEAD_SLOTS;

/// Weight of the newest run time in a worker's moving average.
const RUN_TIME_WEIGHT: f64 = 0.2;

/// All known workers.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Workers by id, ordered so balancers see them in a stable order.
    workers: BTreeMap<String, WorkerEntry>,
    /// Silence after which a worker is dead.
    timeout: Duration,
    /// Tasks finished lately.
    recent: Recent,
    /// Work (in mean run time) a worker's queue may hold beyond its free slots.
    lookahead: Duration,
    /// Queues of workers declared dead and not yet reclaimed: whoever leads moves their tasks
    /// back to the priority queues, however long the broker takes to let it (a consumer lost
    /// with a node that is down stays counted until the node is back), and across sessions.
    departed: BTreeSet<String>,
}

/// At most this many departed workers' queues are remembered for reclaiming.
pub const MAX_DEPARTED: usize = 1024;

impl Registry {
    /// An empty registry declaring workers dead after `timeout` without a heartbeat.
    pub fn new(timeout: Duration) -> Registry {
        Registry {
            workers: BTreeMap::new(),
            timeout,
            recent: Recent::default(),
            lookahead: Duration::ZERO,
            departed: BTreeSet::new(),
        }
    }

    /// Lets each worker be sent, beyond its free slots, about `lookahead` of work at its mean
    /// run time, waiting in its queue: a worker of short tasks then never idles while the
    /// dispatcher hears of a finished task and sends the next. A more urgent task can wait
    /// behind that queued work, so this also bounds the extra delay ordering may cost.
    pub fn with_lookahead(mut self, lookahead: Duration) -> Registry {
        self.lookahead = lookahead;
        self
    }

    /// Records a heartbeat. Outstanding tasks the worker no longer reports, and that were sent
    /// longer than `timeout` ago, are dropped (their finish event was lost); tasks it reports
    /// that we did not know of are adopted.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Change {
        if beat.state == WorkerState::Offline {
            // Not a sign of life: the leader announces a worker it declared dead this way too.
            // (A worker's own goodbye comes after it deleted its queue; reclaiming finds it gone.)
            self.workers.remove(&beat.worker);
            return Change::Left;
        }
        // Alive after all: its queue is its own again.
        self.departed.remove(&beat.queue);
        let timeout = self.timeout;
        let joined = !self.workers.contains_key(&beat.worker);
        let entry = self
            .workers
            .entry(beat.worker.clone())
            .or_insert_with(|| WorkerEntry {
                id: beat.worker.clone(),
                queue: beat.queue.clone(),
                kinds: BTreeSet::new(),
                tags: BTreeSet::new(),
                concurrency: 0,
                capacity: 0,
                state: beat.state,
                last_seen: now,
                outstanding: HashMap::new(),
                used: 0,
                lookahead: 0,
                mean_run_ms: None,
            });
        entry.queue.clone_from(&beat.queue);
        entry.kinds = beat.kinds.iter().cloned().collect();
        entry.tags = beat.tags.iter().cloned().collect();
        entry.concurrency = beat.concurrency;
        entry.capacity = if beat.capacity == 0 {
            beat.concurrency
        } else {
            beat.capacity
        };
        entry.state = beat.state;
        entry.last_seen = now;
        let running: BTreeSet<&String> = beat.running.iter().collect();
        // Only a worker with a free slot has taken everything its queue held: then a task sent
        // long ago that it does not report has ended (its event was lost). A full worker may
        // still have tasks waiting in its queue (a lookahead), unseen by it.
        let has_room = running.len() < beat.concurrency as usize;
        let forgotten: Vec<String> = entry
            .outstanding
            .iter()
            .filter(|(id, held)| {
                has_room && !running.contains(id) && now.duration_since(held.since) >= timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in forgotten {
            entry.remove(&id);
        }
        for id in running {
            if !entry.outstanding.contains_key(id) {
                // Adopted: its cost is unknown here; one unit is the common case.
                entry.add(
                    id,
                    Outstanding {
                        since: now,
                        cost: 1,
                    },
                );
            }
        }
        if joined {
            Change::Joined
        } else {
            Change::Refreshed
        }
    }

    /// Records that `task`, costing `cost` units, was sent to `worker`.
    pub fn dispatched(&mut self, worker: &str, task: &str, cost: u32, now: Instant) {
        if let Some(entry) = self.workers.get_mut(worker) {
            entry.add(task, Outstanding { since: now, cost });
        }
    }

    /// Records that `worker` no longer holds `task` (finished, or the send failed).
    pub fn released(&mut self, worker: &str, task: &str) {
        if let Some(entry) = self.workers.get_mut(worker) {
            entry.remove(task);
        }
    }

    /// Records that an attempt on `worker` ran `duration_ms`.
    pub fn ran(&mut self, worker: &str, duration_ms: f64) {
        let lookahead = self.lookahead;
        if let Some(entry) = self.workers.get_mut(worker) {
            entry.ran(duration_ms, lookahead);
        }
    }

    /// Records that `task` reached a final state.
    pub fn finished(&mut self, task: &str) {
        if self.recent.ids.insert(task.to_owned()) {
            self.recent.order.push_back(task.to_owned());
            if self.recent.order.len() > RECENT
                && let Some(oldest) = self.recent.order.pop_front()
            {
                self.recent.ids.remove(&oldest);
            }
        }
    }

    /// Whether `task` is running on some worker or finished lately: a redelivered copy of it
    /// must not run again.
    pub fn has_seen(&self, task: &str) -> bool {
        self.recent.ids.contains(task)
            || self
                .workers
                .values()
                .any(|w| w.outstanding.contains_key(task))
    }

    /// Adds a worker directly (the simulator's way in; brokers' workers come by heartbeat).
    pub fn insert(&mut self, entry: WorkerEntry) {
        self.workers.insert(entry.id.clone(), entry);
    }

    /// Removes and returns the workers silent for longer than the timeout; their queues are
    /// [`Registry::departed`] from now on.
    pub fn expire(&mut self, now: Instant) -> Vec<WorkerEntry> {
        let dead: Vec<String> = self
            .workers
            .values()
            .filter(|w| now.duration_since(w.last_seen) > self.timeout)
            .map(|w| w.id.clone())
            .collect();
        let dead: Vec<WorkerEntry> = dead
            .iter()
            .filter_map(|id| self.workers.remove(id))
            .collect();
        for worker in &dead {
            if self.departed.len() < MAX_DEPARTED {
                self.departed.insert(worker.queue.clone());
            }
        }
        dead
    }

    /// Queues of workers declared dead (by [`Registry::expire`]) whose tasks may still wait in
    /// them, until [`Registry::reclaimed`] or a heartbeat from the worker.
    pub fn departed(&self) -> impl Iterator<Item = &String> {
        self.departed.iter()
    }

    /// A departed worker's queue has been emptied into the priority queues and deleted.
    pub fn reclaimed(&mut self, queue: &str) {
        self.departed.remove(queue);
    }

    /// A worker by id.
    pub fn get(&self, id: &str) -> Option<&WorkerEntry> {
        self.workers.get(id)
    }

    /// All known workers, by id.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.workers.values()
    }

    /// Total free slots over online workers.
    pub fn total_credit(&self) -> u32 {
        self.workers
            .values()
            .filter(|w| w.state == WorkerState::Online)
            .map(WorkerEntry::credit)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn beat(id: &str, kinds: &[&str], tags: &[&str], running: &[&str]) -> Heartbeat {
        Heartbeat {
            worker: id.into(),
            queue: format!("q.{id}"),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            concurrency: 2,
            capacity: 0,
            running: running.iter().map(|s| s.to_string()).collect(),
            state: WorkerState::Online,
            seq: 0,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn credit_follows_dispatches_and_releases() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        assert_eq!(
            registry.heartbeat(&beat("a", &["echo"], &[], &[]), now),
            Change::Joined
        );
        assert_eq!(registry.total_credit(), 2);
        registry.dispatched("a", "t1", 1, now);
        registry.dispatched("a", "t2", 1, now);
        let a = registry.get("a").unwrap();
        assert_eq!(a.credit(), 0);
        assert!(!a.can_take("echo", &[], 1));
        registry.released("a", "t1");
        assert!(registry.get("a").unwrap().can_take("echo", &[], 1));
        assert!(!registry.get("a").unwrap().can_take("echo", &[], 2));
        assert!(!registry.get("a").unwrap().can_take("other", &[], 1));
        assert!(
            !registry
                .get("a")
                .unwrap()
                .can_take("echo", &["gpu".into()], 1)
        );
    }

    #[test]
    fn heartbeats_reconcile_outstanding_tasks() {
        let start = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        registry.heartbeat(&beat("a", &["echo"], &[], &[]), start);
        registry.dispatched("a", "lost-event", 1, start);
        registry.dispatched("a", "fresh", 1, start + Duration::from_secs(4));
        let later = start + Duration::from_secs(4);
        registry.heartbeat(&beat("a", &["echo"], &[], &["adopted"]), later);
        let mut held: Vec<_> = registry
            .get("a")
            .unwrap()
            .outstanding
            .keys()
            .cloned()
            .collect();
        held.sort();
        assert_eq!(held, ["adopted", "fresh"]);
        assert_eq!(registry.get("a").unwrap().used, 2);
    }

    #[test]
    fn a_full_worker_keeps_the_tasks_queued_for_it() {
        let start = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        registry.heartbeat(&beat("a", &["echo"], &[], &[]), start);
        for id in ["long1", "long2", "queued"] {
            registry.dispatched("a", id, 1, start);
        }
        // Both slots busy with long tasks: "queued" waits in its queue, unreported, for longer
        // than the timeout, and is not forgotten.
        let later = start + Duration::from_secs(10);
        registry.heartbeat(&beat("a", &["echo"], &[], &["long1", "long2"]), later);
        assert_eq!(registry.get("a").unwrap().outstanding.len(), 3);
        // Once it has a free slot, an unreported old task is gone.
        registry.heartbeat(&beat("a", &["echo"], &[], &["long1"]), later);
        assert_eq!(registry.get("a").unwrap().outstanding.len(), 1);
    }

    #[test]
    fn a_dead_workers_queue_is_departed_until_reclaimed_or_the_worker_is_heard() {
        let start = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        for id in ["a", "b", "c"] {
            registry.heartbeat(&beat(id, &["echo"], &[], &[]), start);
        }
        registry.heartbeat(
            &beat("c", &["echo"], &[], &[]),
            start + Duration::from_secs(2),
        );
        let later = start + Duration::from_secs(4);
        let dead: Vec<String> = registry.expire(later).into_iter().map(|w| w.id).collect();
        assert_eq!(dead, ["a", "b"]);
        let departed = |registry: &Registry| registry.departed().cloned().collect::<Vec<_>>();
        assert_eq!(departed(&registry), ["q.a", "q.b"]);
        // Expiring again (another tick) changes nothing; reclaiming one leaves the other.
        assert!(registry.expire(later).is_empty());
        registry.reclaimed("q.a");
        assert_eq!(departed(&registry), ["q.b"]);
        // The leader's own announcement that b is offline is no sign of life.
        let announced = Heartbeat {
            state: WorkerState::Offline,
            ..beat("b", &["echo"], &[], &[])
        };
        assert_eq!(registry.heartbeat(&announced, later), Change::Left);
        assert_eq!(departed(&registry), ["q.b"]);
        // A worker declared dead that is heard again owns its queue again.
        registry.heartbeat(&beat("b", &["echo"], &[], &[]), later);
        assert!(departed(&registry).is_empty());
        assert!(registry.get("b").is_some());
    }

    #[test]
    fn remembers_running_and_finished_tasks() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        registry.heartbeat(&beat("a", &["echo"], &[], &["running"]), now);
        registry.finished("done");
        assert!(registry.has_seen("running") && registry.has_seen("done"));
        assert!(!registry.has_seen("new"));
    }

    #[test]
    fn capacity_units_fill_with_costs() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        let mut big = beat("big", &["render"], &[], &[]);
        big.concurrency = 4;
        big.capacity = 8;
        registry.heartbeat(&big, now);
        registry.dispatched("big", "heavy", 6, now);
        let entry = registry.get("big").unwrap();
        assert_eq!(entry.credit(), 2);
        assert!(entry.can_take("render", &[], 2));
        assert!(!entry.can_take("render", &[], 3));
        assert!((entry.load() - 0.75).abs() < 1e-9);
        registry.released("big", "heavy");
        assert_eq!(registry.get("big").unwrap().credit(), 8);
    }

    /// A registry with a 20 ms lookahead.
    fn lookahead_registry() -> Registry {
        Registry::new(Duration::from_secs(3)).with_lookahead(Duration::from_millis(20))
    }

    #[test]
    fn lookahead_follows_the_mean_run_time() {
        let now = Instant::now();
        let mut registry = lookahead_registry();
        let mut w = beat("w", &["echo"], &[], &[]);
        w.concurrency = 4;
        registry.heartbeat(&w, now);
        // Unknown run time: exactly the free slots.
        for i in 0..4 {
            registry.dispatched("w", &format!("t{i}"), 1, now);
        }
        let entry = registry.get("w").unwrap();
        assert_eq!((entry.free(), entry.credit()), (0, 0));
        // 10 ms tasks: 4 slots x 20 ms / 10 ms = 8 more may wait in its queue.
        registry.ran("w", 10.0);
        let entry = registry.get("w").unwrap();
        assert_eq!((entry.free(), entry.lookahead, entry.credit()), (0, 8, 8));
        // Instant tasks: capped at LOOKAHEAD_SLOTS x concurrency.
        for _ in 0..50 {
            registry.ran("w", 0.0);
        }
        assert_eq!(registry.get("w").unwrap().lookahead, 4 * LOOKAHEAD_SLOTS);
        // Long tasks: the average moves towards them and the lookahead goes to 0.
        for _ in 0..50 {
            registry.ran("w", 1_000.0);
        }
        let entry = registry.get("w").unwrap();
        assert_eq!(entry.lookahead, 0);
        assert!(!entry.can_take("echo", &[], 1));
        // No lookahead configured: none, however short the tasks.
        let mut strict = Registry::new(Duration::from_secs(3));
        strict.heartbeat(&w, now);
        strict.ran("w", 0.0);
        assert_eq!(strict.get("w").unwrap().lookahead, 0);
    }

    #[test]
    fn lookahead_in_capacity_units() {
        let now = Instant::now();
        let mut registry = lookahead_registry();
        let mut big = beat("big", &["render"], &[], &[]);
        big.concurrency = 4;
        big.capacity = 8;
        registry.heartbeat(&big, now);
        registry.ran("big", 20.0);
        // 4 tasks of lookahead at 2 units a task on average: 8 units beyond the 8 it has.
        registry.dispatched("big", "heavy", 6, now);
        let entry = registry.get("big").unwrap();
        assert_eq!((entry.free(), entry.credit()), (2, 10));
        // Never a task bigger than the worker, whatever the credit.
        assert!(entry.can_take("render", &[], 8) && !entry.can_take("render", &[], 9));
        registry.dispatched("big", "queued", 6, now);
        let entry = registry.get("big").unwrap();
        assert_eq!((entry.free(), entry.credit()), (0, 4));
        assert!(entry.can_take("render", &[], 4) && !entry.can_take("render", &[], 5));
    }

    #[test]
    fn silent_and_departed_workers_leave() {
        let start = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        registry.heartbeat(&beat("a", &["echo"], &[], &[]), start);
        registry.heartbeat(
            &beat("b", &["echo"], &[], &[]),
            start + Duration::from_secs(2),
        );
        let dead = registry.expire(start + Duration::from_secs(4));
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, "a");
        let mut bye = beat("b", &[], &[], &[]);
        bye.state = WorkerState::Offline;
        assert_eq!(registry.heartbeat(&bye, start), Change::Left);
        assert_eq!(registry.workers().count(), 0);
    }
}
