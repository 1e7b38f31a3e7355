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
    /// Free capacity units.
    pub fn credit(&self) -> u32 {
        let tasks = u32::try_from(self.outstanding.len()).unwrap_or(u32::MAX);
        if tasks >= self.concurrency {
            0
        } else {
            self.capacity.saturating_sub(self.used)
        }
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

    /// Whether it may be sent a task of `kind`, requiring `requires`, costing `cost`, now.
    pub fn can_take(&self, kind: &str, requires: &[String], cost: u32) -> bool {
        self.state == WorkerState::Online && self.credit() >= cost && self.is_able(kind, requires)
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

/// All known workers.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Workers by id, ordered so balancers see them in a stable order.
    workers: BTreeMap<String, WorkerEntry>,
    /// Silence after which a worker is dead.
    timeout: Duration,
    /// Tasks finished lately.
    recent: Recent,
}

impl Registry {
    /// An empty registry declaring workers dead after `timeout` without a heartbeat.
    pub fn new(timeout: Duration) -> Registry {
        Registry {
            workers: BTreeMap::new(),
            timeout,
            recent: Recent::default(),
        }
    }

    /// Records a heartbeat. Outstanding tasks the worker no longer reports, and that were sent
    /// longer than `timeout` ago, are dropped (their finish event was lost); tasks it reports
    /// that we did not know of are adopted.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Change {
        if beat.state == WorkerState::Offline {
            self.workers.remove(&beat.worker);
            return Change::Left;
        }
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
        let forgotten: Vec<String> = entry
            .outstanding
            .iter()
            .filter(|(id, held)| !running.contains(id) && now.duration_since(held.since) >= timeout)
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

    /// Removes and returns the workers silent for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<WorkerEntry> {
        let dead: Vec<String> = self
            .workers
            .values()
            .filter(|w| now.duration_since(w.last_seen) > self.timeout)
            .map(|w| w.id.clone())
            .collect();
        dead.iter()
            .filter_map(|id| self.workers.remove(id))
            .collect()
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
