//! The facts the core is fed, as they travel on the wire: a task's status, a worker's state and
//! its heartbeat. Plain data (serde), shared with the wire contract, so the core and the
//! shells speak of the same things.

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
    /// Ids of the tasks whose attempt has begun (a subset of `running`): if the worker is lost,
    /// each of these counts one failed attempt. Absent from older workers' heartbeats.
    #[serde(default)]
    pub started: Vec<String>,
    /// Its life-cycle state.
    pub state: WorkerState,
    /// Increases with every heartbeat of this worker process.
    pub seq: u64,
    /// When it was sent.
    pub at: DateTime<Utc>,
}

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
mod tests {
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
