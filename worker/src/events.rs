//! The task events a worker publishes (`task.started`, `task.succeeded`, …): built from the task
//! and the worker, published on the events exchange in batches
//! (`warren_common::event_batch::EventSender`).

use chrono::Utc;
use warren_common::{Status, Task, TaskEvent};

use crate::Worker;

/// A `task.<status>` event of attempt `attempt` of `task` on this worker.
pub(crate) fn event(
    worker: &Worker,
    task: &Task,
    status: Status,
    attempt: u32,
    error: Option<String>,
    duration_ms: Option<u64>,
) -> TaskEvent {
    TaskEvent {
        attempt,
        worker: Some(worker.status.id.clone()),
        error,
        duration_ms,
        at: Utc::now(),
        ..TaskEvent::new(&task.id, &task.kind, status)
    }
}
