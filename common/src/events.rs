//! What warren tells the outside world: results sent to `reply_to`, `task.*` events, and the
//! `worker.*` heartbeats through which the dispatcher learns about workers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task's state as published in events and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Validated and queued by the dispatcher.
    Accepted,
    /// Sent to a worker.
    Dispatched,
    /// A worker started an attempt.
    Started,
    /// The handler returned a result.
    Succeeded,
    /// The handler failed and no attempt is left to make.
    Failed,
    /// An attempt failed; another one will be made.
    Retrying,
    /// Exhausted, expired or cancelled: moved to the dead queue.
    Dead,
    /// Not a valid task: moved to the rejected queue.
    Rejected,
}

impl Status {
    /// The status as it is spelled on the wire (`succeeded`, ...).
    pub fn as_str(self) -> &'static str {
        &self.routing_key()["task.".len()..]
    }

    /// The events routing key, `task.<status>`.
    pub fn routing_key(self) -> &'static str {
        match self {
            Status::Accepted => "task.accepted",
            Status::Dispatched => "task.dispatched",
            Status::Started => "task.started",
            Status::Succeeded => "task.succeeded",
            Status::Failed => "task.failed",
            Status::Retrying => "task.retrying",
            Status::Dead => "task.dead",
            Status::Rejected => "task.rejected",
        }
    }

    /// Whether a worker no longer holds the task after this event.
    pub fn releases_worker(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Retrying | Status::Dead
        )
    }
}

/// The body published to a task's `reply_to` (wire contract v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Task id.
    pub id: String,
    /// Task kind (empty for a rejected message without a readable kind).
    pub kind: String,
    /// `succeeded`, `failed`, `dead` or `rejected`.
    pub status: Status,
    /// What the handler returned, `null` otherwise.
    pub result: Value,
    /// Why it failed, was rejected or died.
    pub error: Option<String>,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// The worker that made the last attempt.
    pub worker: Option<String>,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last attempt ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A `task.<status>` event on the events exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Task id.
    pub id: String,
    /// Task kind.
    pub kind: String,
    /// The new state.
    pub status: Status,
    /// Which attempt this is about (1-based); 0 before the first.
    pub attempt: u32,
    /// The worker concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Why, for failures, rejections and deaths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the attempt ran, for finished attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The AMQP user that submitted the task, when the submission carried the `user_id`
    /// property (which RabbitMQ checks against the publishing connection's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// The handler's result, on `task.succeeded` events when it is small (see
    /// [`EVENT_RESULT_MAX_BYTES`]): what lets a dispatcher answer a duplicate submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Set on a `task.succeeded` event whose result was too large to carry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub result_omitted: bool,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// Results up to this size (as JSON) ride along on `task.succeeded` events.
pub const EVENT_RESULT_MAX_BYTES: usize = 64 * 1024;

/// The size of `value` as JSON if it is at most `max` bytes: counted without a buffer, and
/// given up as soon as it passes `max`, so a large result costs no more than `max` bytes of
/// serializing.
pub fn json_len_within(value: &Value, max: usize) -> Option<usize> {
    struct Counter {
        len: usize,
        max: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.len += bytes.len();
            if self.len > self.max {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { len: 0, max };
    serde_json::to_writer(&mut counter, value).ok()?;
    Some(counter.len)
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn json_len_within_counts_and_stops_at_the_limit() {
        let value = serde_json::json!({"a": [1, 2, 3], "b": "xyz"});
        let exact = serde_json::to_vec(&value).unwrap().len();
        assert_eq!(json_len_within(&value, exact), Some(exact));
        assert_eq!(json_len_within(&value, exact - 1), None);
        assert_eq!(json_len_within(&Value::Null, 4), Some(4));
    }
}

/// A worker's life-cycle state, carried by heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Taking tasks.
    Online,
    /// Shutting down: finishing what it holds, taking nothing new.
    Draining,
    /// Gone; its queue may be drained and deleted.
    Offline,
}

impl WorkerState {
    /// The events routing key: `worker.heartbeat` for online and draining workers,
    /// `worker.offline` for the last word of a worker.
    pub fn routing_key(self, first: bool) -> &'static str {
        match (self, first) {
            (WorkerState::Offline, _) => "worker.offline",
            (_, true) => "worker.online",
            (_, false) => "worker.heartbeat",
        }
    }
}

/// A worker's periodic self-description (`worker.heartbeat`, `worker.online`,
/// `worker.offline` events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Worker id.
    pub worker: String,
    /// The worker's own queue, where the dispatcher sends its tasks.
    pub queue: String,
    /// Task kinds it has handlers for.
    pub kinds: Vec<String>,
    /// Capability tags it advertises.
    pub tags: Vec<String>,
    /// Tasks it runs at once.
    pub concurrency: u32,
    /// Capacity in units (a task costs `cost` units, default 1); 0 means `concurrency`.
    #[serde(default)]
    pub capacity: u32,
    /// Ids of the tasks it holds right now (running or about to run).
    pub running: Vec<String>,
    /// Its life-cycle state.
    pub state: WorkerState,
    /// Increases with every heartbeat of this worker process.
    pub seq: u64,
    /// When it was sent.
    pub at: DateTime<Utc>,
}
