//! What warren tells the outside world: results sent to `reply_to`, `task.*` events, and the
//! `worker.*` heartbeats through which the dispatcher learns about workers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use warren_core::facts::{Heartbeat, Status, WorkerState, json_len_within};

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
    /// The size of that result, as JSON, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<u64>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// Results up to this size (as JSON) ride along on `task.succeeded` events.
pub const EVENT_RESULT_MAX_BYTES: usize = 64 * 1024;

impl TaskResult {
    /// A result of `status` for task `id` of `kind`, with nothing else known yet (`null`
    /// result, no error, no attempt); set the rest with struct update syntax.
    pub fn new(id: &str, kind: &str, status: Status) -> TaskResult {
        TaskResult {
            id: id.to_owned(),
            kind: kind.to_owned(),
            status,
            result: Value::Null,
            error: None,
            attempts: 0,
            worker: None,
            started_at: None,
            finished_at: None,
        }
    }
}

impl TaskEvent {
    /// A `task.<status>` event for task `id` of `kind`, happening now, with nothing else known
    /// yet; set the rest with struct update syntax.
    pub fn new(id: &str, kind: &str, status: Status) -> TaskEvent {
        TaskEvent {
            id: id.to_owned(),
            kind: kind.to_owned(),
            status,
            attempt: 0,
            worker: None,
            error: None,
            duration_ms: None,
            submitter: None,
            result: None,
            result_omitted: false,
            result_bytes: None,
            at: Utc::now(),
        }
    }
}
