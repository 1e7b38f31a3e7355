//! [`Core`]: the one front door of the scheduling core. It takes facts — a task arrived (and
//! from where), a worker's heartbeat, an attempt ended, a dispatch was refused, `now` — and
//! returns decisions: hold it, answer it as a duplicate, drop a copy a worker already has, send
//! task T to worker W, bury T because its deadline passed, reclaim a dead worker's queue. The
//! router carries the decisions out over the broker; the simulator carries them out in virtual
//! time. Neither decides anything itself.

use std::time::{Duration, Instant};

use crate::facts::Heartbeat;
use crate::fleet::{Change, Fleet, LostWorker, WorkerEntry};
use crate::idempotency::{Ending, Idempotency, Prior, Waiter};
use crate::scheduler::{Assignment, Held, Origin, Scheduler, TaskInfo};
use crate::settings::Settings;
use crate::waiting::Waiting;

/// What to do with a task handed to the core.
#[derive(Debug)]
pub enum Admission<H> {
    /// Held in the window until it can be sent.
    Held,
    /// A copy of a task that runs, or ran lately, on a worker: settle it, run nothing.
    AlreadyRunning(Held<H>),
    /// A duplicate submission: answer it as `prior` says, run nothing.
    Duplicate {
        /// The task and its handle.
        held: Held<H>,
        /// What the window knows of the first one.
        prior: Prior,
    },
}

/// A decision of [`Core::next`].
#[derive(Debug)]
pub enum Decision<H> {
    /// Send the task to the worker (its credit is already taken).
    Send(Assignment<H>),
    /// A twin of this task was dispatched while it was held: answer it as a duplicate.
    Duplicate {
        /// The task, out of the window.
        held: Held<H>,
        /// What the window knows of the first one.
        prior: Prior,
    },
}

/// A worker no longer holds a task: it finished an attempt (reported by its event), or the
/// dispatch never reached it.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    /// Worker id.
    pub worker: String,
    /// Task id.
    pub task: String,
    /// The task's kind and how long the attempt ran, in milliseconds, if it ran.
    pub ran: Option<(String, f64)>,
    /// How the task ended, if the attempt was its last (not a retry).
    pub ending: Option<Ending>,
}

/// The waiters to answer now that a task ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The task's id.
    pub id: String,
    /// The task's kind.
    pub kind: String,
    /// How it ended (its result possibly left out for the window's budget).
    pub ending: Ending,
    /// Who waits for it.
    pub waiters: Vec<Waiter>,
}

/// The whole decision state of a dispatcher: the workers, the held tasks and the idempotency
/// window. `H` is whatever the caller needs to settle a task later (a delivery; an index in the
/// simulator).
#[derive(Debug)]
pub struct Core<H> {
    /// The workers, their credit, and the dead ones' queues.
    fleet: Fleet,
    /// The held tasks and the choice of the next one.
    scheduler: Scheduler<H>,
    /// Ids dispatched lately.
    idempotency: Idempotency,
}

impl<H> Core<H> {
    /// A core over `levels` priority levels, set up as `settings` say, with a seeded rng.
    pub fn new(levels: usize, settings: &Settings, seed: u64) -> Core<H> {
        Core {
            fleet: Fleet::new(settings.heartbeat_timeout).with_lookahead(settings.lookahead),
            scheduler: Scheduler::new(levels, settings, seed),
            idempotency: Idempotency::new(settings.dedupe_window, settings.dedupe_max),
        }
    }

    /// A worker's heartbeat arrived.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Change {
        self.fleet.heartbeat(beat, now)
    }

    /// Adds a worker directly (the simulator's way in; real workers come by heartbeat).
    pub fn add_worker(&mut self, entry: WorkerEntry) {
        self.fleet.insert(entry);
    }

    /// A task arrived on `level` (its `origin` says from where).
    pub fn arrived(
        &mut self,
        level: usize,
        task: TaskInfo,
        handle: H,
        now: Instant,
    ) -> Admission<H> {
        match &task.origin {
            Origin::Redelivered if self.fleet.has_seen(&task.id) => {
                return Admission::AlreadyRunning(Held { task, handle });
            }
            Origin::Submitted { waiter } => {
                let prior = self.idempotency.check(&task.id, waiter.clone(), now);
                if prior != Prior::Unseen {
                    return Admission::Duplicate {
                        held: Held { task, handle },
                        prior,
                    };
                }
            }
            Origin::Redelivered | Origin::Reentry => {}
        }
        self.scheduler.push(level, Held { task, handle });
        Admission::Held
    }

    /// Whether a task of `kind`, requiring `requires`, costing `cost`, could be sent to a
    /// worker right now: the fast path's test for a submission handed straight to the router.
    pub fn takes_now(&self, kind: &str, requires: &[String], cost: u32) -> bool {
        self.fleet
            .workers()
            .any(|w| w.can_take(kind, requires, cost))
    }

    /// Whether some online worker has credit left: intake then hands submissions to the router
    /// rather than filing them.
    pub fn has_room(&self) -> bool {
        self.fleet.total_credit() > 0
    }

    /// The next decision, if any held task can go somewhere now.
    pub fn next(&mut self, now: Instant) -> Option<Decision<H>> {
        let assignment = self.scheduler.next(&self.fleet, now)?;
        let task = &assignment.held.task;
        if let Origin::Submitted { waiter } = &task.origin {
            // A twin may have been dispatched since this one was held.
            let prior = self.idempotency.check(&task.id, waiter.clone(), now);
            if prior != Prior::Unseen {
                return Some(Decision::Duplicate {
                    held: assignment.held,
                    prior,
                });
            }
        }
        self.fleet
            .dispatched(&assignment.worker, &task.id, task.cost, now);
        self.idempotency.dispatched(&task.id, &task.kind, now);
        Some(Decision::Send(assignment))
    }

    /// A worker began an attempt of a task (its `task.started` event): if the worker is lost
    /// before the attempt ends, the attempt counts as failed.
    pub fn began(&mut self, worker: &str, task: &str) {
        self.fleet.began(worker, task);
    }

    /// A dispatch the broker refused: the worker does not hold the task after all.
    pub fn unsent(&mut self, worker: &str, task: &str) {
        self.fleet.released(worker, task);
        self.idempotency.undispatched(task);
    }

    /// A worker no longer holds a task; returns the duplicates to answer if it ended.
    pub fn released(&mut self, released: Released) -> Option<Answer> {
        self.fleet.released(&released.worker, &released.task);
        if let Some((kind, duration_ms)) = &released.ran {
            self.scheduler.observe(kind, *duration_ms);
            self.fleet.ran(&released.worker, *duration_ms);
        }
        let ending = released.ending?;
        self.fleet.finished(&released.task);
        let (kind, waiters) = self.idempotency.finished(&released.task, ending.clone())?;
        Some(Answer {
            id: released.task,
            kind,
            ending,
            waiters,
        })
        .filter(|answer| !answer.waiters.is_empty())
    }

    /// Takes out the held tasks whose deadline passed before they could start: they are dead.
    pub fn expired(&mut self, now: Instant) -> Vec<Held<H>> {
        self.scheduler.take_expired(now)
    }

    /// Takes out the tasks held longer than `limit` (they wait for a worker, or for their
    /// backoff), with their levels: the router files each back to its level, so that no
    /// delivery stays unacked past the broker's consumer_timeout. They come back in turn.
    pub fn held_too_long(&mut self, now: Instant, limit: Duration) -> Vec<(usize, Held<H>)> {
        match now.checked_sub(limit) {
            Some(cutoff) => self.scheduler.take_arrived_before(cutoff),
            None => Vec::new(),
        }
    }

    /// Takes out the workers silent for too long: they are dead, and their queues wait to be
    /// reclaimed ([`Core::start_reclaims`]).
    pub fn dead_workers(&mut self, now: Instant) -> Vec<WorkerEntry> {
        self.fleet.expire(now)
    }

    /// Dead workers' queues that nobody reclaims yet, now marked as being reclaimed, with the
    /// worker each belonged to and what it had started.
    pub fn start_reclaims(&mut self) -> Vec<(String, LostWorker)> {
        self.fleet.start_reclaims()
    }

    /// A dead worker's queue was emptied into the priority queues and deleted.
    pub fn reclaimed(&mut self, queue: &str) {
        self.fleet.reclaimed(queue);
    }

    /// The session that held the tasks ended: the broker requeues them, and reclaims under way
    /// stop.
    pub fn session_ended(&mut self) {
        self.scheduler.clear();
        self.fleet.reclaims_stopped();
    }

    /// Why the held tasks wait: counts of all, and the oldest `limit` (of `ids`, if given).
    pub fn waiting(&self, now: Instant, limit: usize, ids: Option<&[String]>) -> Waiting {
        Waiting::over(self.scheduler.tasks(), &self.fleet, now, limit, ids)
    }

    /// Tasks held per level.
    pub fn held(&self) -> Vec<usize> {
        self.scheduler.held()
    }

    /// The workers.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

#[cfg(test)]
#[path = "decisions_tests.rs"]
mod tests;
