//! The worker registry: who is alive, what each worker can run, and how much credit (free
//! slots) it has. Pure: fed heartbeats, dispatches and releases, with `now` passed in.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::facts::{Heartbeat, WorkerState};
use crate::retry::{Failure, RetryPolicy, Verdict, verdict};

mod entry;

pub use entry::{Outstanding, WorkerEntry};

/// What a heartbeat changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A worker seen for the first time.
    Joined,
    /// A known worker, still there.
    Refreshed,
    /// The worker said it is gone: its queue can be reclaimed.
    Left,
    /// A worker declared dead is heard again: its queue is its own again, and reclaiming it,
    /// if under way, must stop.
    Returned,
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

pub use crate::settings::LOOKAHEAD_SLOTS;

/// Weight of the newest run time in a worker's moving average.
pub(crate) const RUN_TIME_WEIGHT: f64 = 0.2;

/// All known workers.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Workers by id, ordered so balancers see them in a stable order.
    workers: BTreeMap<String, WorkerEntry>,
    /// Silence after which a worker is dead.
    timeout: Duration,
    /// Tasks finished lately.
    recent: Recent,
    /// Work (in mean run time) a worker's queue may hold beyond its free slots.
    lookahead: Duration,
    /// Queues of workers declared dead and not yet reclaimed, and whether reclaiming each is
    /// under way: whoever leads moves their tasks back to the priority queues, however long
    /// the broker takes to let it (a consumer lost with a node that is down stays counted until
    /// the node is back), and across sessions. The one record of reclaiming; the router only
    /// carries it out.
    departed: BTreeMap<String, Departed>,
}

/// A worker declared dead whose queue waits to be reclaimed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Departed {
    /// Where reclaiming its queue stands.
    reclaim: Reclaim,
    /// Who it was and what it was running.
    lost: LostWorker,
}

/// A worker lost while holding tasks: reclaiming its queue counts a failed attempt for each task
/// it had started (it may have killed the worker: a poison task), and none for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWorker {
    /// Its id.
    pub worker: String,
    /// The tasks whose attempt had begun, as of its last heartbeat.
    pub started: BTreeSet<String>,
}

impl LostWorker {
    /// What becomes of task `id`, found in this worker's queue with `attempts_made` attempts
    /// recorded before it and `max_attempts` allowed: `None` if the worker had not begun it (it
    /// goes back unchanged); otherwise the attempt the worker was making failed — it was lost
    /// while running it — and the task is retried after a backoff or, with no attempt left,
    /// dead.
    pub fn verdict(
        &self,
        id: &str,
        attempts_made: u32,
        max_attempts: u32,
        policy: RetryPolicy,
        jitter: f64,
    ) -> Option<Verdict> {
        if !self.started.contains(id) {
            return None;
        }
        let error = format!("worker {} lost while running it", self.worker);
        Some(verdict(
            Err(Failure::Retryable(error)),
            attempts_made + 1,
            max_attempts,
            policy,
            jitter,
        ))
    }
}

/// Where reclaiming a departed worker's queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reclaim {
    /// Nobody is at it yet (or the session that was ended).
    Waiting,
    /// The router is at it.
    Underway,
}

/// At most this many departed workers' queues are remembered for reclaiming.
pub const MAX_DEPARTED: usize = 1024;

impl Fleet {
    /// An empty registry declaring workers dead after `timeout` without a heartbeat.
    pub fn new(timeout: Duration) -> Fleet {
        Fleet {
            workers: BTreeMap::new(),
            timeout,
            recent: Recent::default(),
            lookahead: Duration::ZERO,
            departed: BTreeMap::new(),
        }
    }

    /// Lets each worker be sent, beyond its free slots, about `lookahead` of work at its mean
    /// run time, waiting in its queue: a worker of short tasks then never idles while the
    /// dispatcher hears of a finished task and sends the next. A more urgent task can wait
    /// behind that queued work, so this also bounds the extra delay ordering may cost.
    pub fn with_lookahead(mut self, lookahead: Duration) -> Fleet {
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
        let returned = self.departed.remove(&beat.queue).is_some();
        let timeout = self.timeout;
        let joined = !self.workers.contains_key(&beat.worker);
        let entry = self
            .workers
            .entry(beat.worker.clone())
            .or_insert_with(|| WorkerEntry::new(&beat.worker, &beat.queue, beat.state, now));
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
        // What it says it began, plus what its events said it began since (a heartbeat may have
        // been sent before them), as long as it still holds it.
        let reported: BTreeSet<&String> = beat.started.iter().collect();
        let outstanding = &entry.outstanding;
        entry
            .started
            .retain(|id| reported.contains(id) || outstanding.contains_key(id));
        entry.started.extend(beat.started.iter().cloned());
        if returned {
            Change::Returned
        } else if joined {
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
            entry.started.remove(task);
        }
    }

    /// Records that `worker` began an attempt of `task` (its `task.started` event).
    pub fn began(&mut self, worker: &str, task: &str) {
        if let Some(entry) = self.workers.get_mut(worker) {
            entry.started.insert(task.to_owned());
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
    /// [`Fleet::departed`] from now on.
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
                self.departed
                    .entry(worker.queue.clone())
                    .or_insert_with(|| Departed {
                        reclaim: Reclaim::Waiting,
                        lost: LostWorker {
                            worker: worker.id.clone(),
                            started: worker.started.clone(),
                        },
                    });
            }
        }
        dead
    }

    /// Queues of workers declared dead (by [`Fleet::expire`]) whose tasks may still wait in
    /// them, until [`Fleet::reclaimed`] or a heartbeat from the worker.
    pub fn departed(&self) -> impl Iterator<Item = &String> {
        self.departed.keys()
    }

    /// The departed queues nobody reclaims yet, now marked as under way, each with the worker
    /// it belonged to: the router starts reclaiming each.
    pub fn start_reclaims(&mut self) -> Vec<(String, LostWorker)> {
        self.departed
            .iter_mut()
            .filter(|(_, departed)| departed.reclaim == Reclaim::Waiting)
            .map(|(queue, departed)| {
                departed.reclaim = Reclaim::Underway;
                (queue.clone(), departed.lost.clone())
            })
            .collect()
    }

    /// Reclaiming stopped without finishing (the session ended): the queues wait again.
    pub fn reclaims_stopped(&mut self) {
        self.departed
            .values_mut()
            .for_each(|departed| departed.reclaim = Reclaim::Waiting);
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
mod tests;
