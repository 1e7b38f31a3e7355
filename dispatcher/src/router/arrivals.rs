//! Deliveries in, as facts for the core: a task from a priority queue, or a valid submission
//! handed over by intake (the fast path), becomes a `TaskInfo` with its origin, and the core's
//! admission decides whether it is held, answered as a duplicate, or dropped as a copy a worker
//! already has.

use std::time::Instant;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use tracing::{info, warn};
use warren_common::message::header_u64;
use warren_common::publish::settle;
use warren_common::{HEADER_NOT_BEFORE, HEADER_REDELIVERED, HEADER_SUBMITTED, Task};
use warren_core::{Admission, Origin, TaskInfo, Waiter};

use super::Router;
use crate::filing::file_and_settle;

/// What the router holds of a task: the delivery to settle once the task is safely elsewhere,
/// and, for a submission taken straight from intake, its normalized form (body, properties) to
/// send on instead of the delivery's bytes.
#[derive(Debug)]
pub(crate) struct Carried {
    /// The delivery from a priority queue, or from intake.
    delivery: Delivery,
    /// The normalized task and its properties, for an intake delivery.
    normalized: Option<(Vec<u8>, BasicProperties)>,
}

impl Carried {
    /// The task's body as warren's queues carry it.
    pub(crate) fn data(&self) -> &[u8] {
        self.normalized
            .as_ref()
            .map_or(&self.delivery.data, |(body, _)| body)
    }

    /// The task's properties as warren's queues carry them.
    pub(crate) fn properties(&self) -> &BasicProperties {
        self.normalized
            .as_ref()
            .map_or(&self.delivery.properties, |(_, properties)| properties)
    }

    /// Whether it came straight from intake (the fast path).
    pub(crate) fn is_from_intake(&self) -> bool {
        self.normalized.is_some()
    }

    /// The delivery, to settle.
    pub(crate) fn into_delivery(self) -> Delivery {
        self.delivery
    }

    /// Where the task comes from, as its delivery and headers tell.
    fn origin(&self) -> Origin {
        let has = |name: &str| {
            self.properties()
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key(name))
        };
        if self.delivery.redelivered || has(HEADER_REDELIVERED) {
            // Redelivered from its priority queue, or filed from a redelivered submission: a
            // dispatcher that died may have passed it on already.
            Origin::Redelivered
        } else if has(HEADER_SUBMITTED) {
            Origin::Submitted {
                waiter: waiter(self.properties()),
            }
        } else {
            Origin::Reentry
        }
    }
}

impl Router<'_> {
    /// Holds a task delivered from a priority queue; an unreadable one goes to the dead queue.
    pub(super) fn hold(&mut self, level: usize, delivery: Delivery) {
        let decoded = Task::from_json(&delivery.data);
        let carried = Carried {
            delivery,
            normalized: None,
        };
        match decoded {
            Ok(task) => self.take(level, task, carried),
            Err(reason) => {
                warn!(%reason, "unreadable task on a priority queue; moving it to dead");
                self.bury(carried, None, reason.to_string());
            }
        }
    }

    /// A valid submission handed over by intake while this dispatcher routes (the fast path):
    /// if a worker can take it right now, it goes to the core (and straight on to the worker's
    /// queue, skipping its priority queue: any held task that could use that worker's room
    /// would have been sent already); otherwise it is filed to its priority queue as intake
    /// would have.
    pub(super) fn submitted(
        &mut self,
        level: usize,
        task: Task,
        body: Vec<u8>,
        properties: BasicProperties,
        delivery: Delivery,
    ) {
        if self.core.takes_now(&task.kind, &task.requires, task.cost) {
            let carried = Carried {
                delivery,
                normalized: Some((body, properties)),
            };
            return self.take(level, task, carried);
        }
        let queue = self.dispatcher.topology.level_queue(level);
        let publisher = self.publisher.clone();
        self.settling.spawn(file_and_settle(
            publisher, queue, body, properties, delivery,
        ));
    }

    /// Hands a task to the core and carries out its admission.
    fn take(&mut self, level: usize, task: Task, carried: Carried) {
        let now = Instant::now();
        let info = task_info(task, &carried, now, Utc::now());
        match self.core.arrived(level, info, carried, now) {
            Admission::Held => {}
            Admission::AlreadyRunning(held) => {
                // A copy the previous leader had already sent on: it runs, or ran, elsewhere.
                info!(task = %held.task.id, "dropping a redelivered task that a worker already has");
                let delivery = held.handle.into_delivery();
                self.settling
                    .spawn(async move { settle(&delivery, true).await });
            }
            Admission::Duplicate { held, prior } => self.duplicate(held, prior),
        }
    }
}

/// The core's view of a task: its header facts, with wall-clock times turned into instants.
fn task_info(task: Task, carried: &Carried, now: Instant, wall: DateTime<Utc>) -> TaskInfo {
    let to_instant = |at: DateTime<Utc>| match (at - wall).to_std() {
        Ok(ahead) => now + ahead,
        Err(_) => now
            .checked_sub((wall - at).to_std().unwrap_or_default())
            .unwrap_or(now),
    };
    let not_before = header_u64(carried.properties(), HEADER_NOT_BEFORE)
        .and_then(|ms| i64::try_from(ms).ok())
        .and_then(DateTime::from_timestamp_millis)
        .map(to_instant);
    TaskInfo {
        deadline: task.deadline.map(to_instant),
        id: task.id,
        kind: task.kind,
        requires: task.requires,
        cost: task.cost,
        estimated_ms: task.estimated_ms.map(|ms| ms as f64),
        arrived: now,
        not_before,
        origin: carried.origin(),
    }
}

/// Where a duplicate submission wants its answer, if anywhere.
fn waiter(properties: &BasicProperties) -> Option<Waiter> {
    Some(Waiter {
        reply_to: properties.reply_to().as_ref()?.to_string(),
        correlation_id: properties.correlation_id().as_ref().map(|c| c.to_string()),
    })
}
