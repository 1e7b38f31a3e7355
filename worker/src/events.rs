//! The task events a worker publishes (`task.started`, `task.succeeded`, …): built from the task
//! and the worker, published on the events exchange.

use chrono::Utc;
use lapin::Channel;
use lapin::options::BasicPublishOptions;
use warren_common::message::json_properties;
use warren_common::{BrokerError, Status, Task, TaskEvent};

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

/// Publishes `event` (no confirm awaited here: the caller awaits the returned one).
pub(crate) async fn send_event(
    worker: &Worker,
    publisher: &Channel,
    event: &TaskEvent,
) -> Result<lapin::PublisherConfirm, BrokerError> {
    let body = serde_json::to_vec(event).expect("events serialize");
    Ok(publisher
        .basic_publish(
            worker.topology.events_exchange().as_str().into(),
            event.status.routing_key().into(),
            BasicPublishOptions::default(),
            &body,
            json_properties(false),
        )
        .await?)
}
