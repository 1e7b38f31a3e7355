//! The task envelope of wire contract v1: decoding untrusted bytes, validating every field,
//! filling defaults, and keeping unknown fields so newer clients pass through older warrens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod fields;

pub use fields::is_valid_kind;
use fields::{
    TopLevel, depth, integer, json_type, truncate, validate_id, validate_kind, validate_requires,
};

/// Longest accepted `kind` and `id`, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// A validated task, with every default filled in. This is what the dispatcher forwards
/// (serialized as JSON) to the priority queues and worker queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Task id, also the idempotency key.
    pub id: String,
    /// Which handler runs it.
    pub kind: String,
    /// Handed to the handler untouched.
    #[serde(default)]
    pub payload: Value,
    /// 0–9, 9 most urgent.
    pub priority: u8,
    /// Attempts before the task is dead.
    pub max_attempts: u32,
    /// One attempt's time limit in milliseconds.
    pub timeout_ms: u64,
    /// Expected run time in milliseconds, a hint for shortest-job-first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_ms: Option<u64>,
    /// A task not started by then is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Capability tags the worker must advertise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Capacity units one attempt occupies on a worker.
    #[serde(default = "one")]
    pub cost: u32,
    /// Fields this version does not know, passed through unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Defaults applied to fields a submitter left out, from configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskDefaults {
    /// `max_attempts` when the task does not say.
    pub max_attempts: u32,
    /// `timeout_ms` when the task does not say.
    pub timeout_ms: u64,
    /// Bodies larger than this many bytes are rejected.
    pub max_body_bytes: usize,
    /// Bodies nested deeper than this (objects and arrays) are rejected.
    pub max_depth: usize,
    /// Tasks with more `requires` tags than this are rejected.
    pub max_requires: usize,
    /// Delay before the first retry, in milliseconds; it doubles with each failed attempt.
    pub retry_base_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    pub retry_max_ms: u64,
}

impl TaskDefaults {
    /// A retry's backoff, as `retry_base_ms` and `retry_max_ms` say.
    pub fn retry_policy(&self) -> warren_core::retry::RetryPolicy {
        warren_core::retry::RetryPolicy {
            base: std::time::Duration::from_millis(self.retry_base_ms),
            max: std::time::Duration::from_millis(self.retry_max_ms),
        }
    }
}

impl Default for TaskDefaults {
    fn default() -> Self {
        TaskDefaults {
            max_attempts: 3,
            timeout_ms: 300_000,
            max_body_bytes: 1024 * 1024,
            max_depth: 32,
            max_requires: 16,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
        }
    }
}

/// The AMQP properties of a submitted message that the envelope falls back on.
#[derive(Debug, Clone, Default)]
pub struct SubmitProperties<'a> {
    /// `message_id`: the id when the body has none.
    pub message_id: Option<&'a str>,
    /// `priority`: the priority when the body has none (clamped to 9).
    pub priority: Option<u8>,
}

/// Why a message is not a valid task. The text goes into `x-warren-reason`, so it names the
/// field and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

fn one() -> u32 {
    1
}

pub(super) fn reject<T>(reason: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection(reason.into()))
}

impl Task {
    /// Decodes and validates a submitted message body. Never panics on any input.
    pub fn decode(
        body: &[u8],
        properties: &SubmitProperties<'_>,
        defaults: &TaskDefaults,
    ) -> Result<Task, Rejection> {
        if body.len() > defaults.max_body_bytes {
            return reject(format!(
                "body: {} bytes is over the limit of {} bytes",
                body.len(),
                defaults.max_body_bytes
            ));
        }
        let text = match std::str::from_utf8(body) {
            Ok(text) => text,
            Err(err) => return reject(format!("body: not UTF-8 ({err})")),
        };
        let (value, duplicate) = match serde_json::from_str::<TopLevel>(text) {
            Ok(TopLevel(value, duplicate)) => (value, duplicate),
            Err(err) => return reject(format!("body: not valid JSON ({err})")),
        };
        if let Some(key) = duplicate {
            return reject(format!(
                "body: key {:?} appears more than once",
                truncate(&key, 64)
            ));
        }
        let nesting = depth(&value);
        if nesting > defaults.max_depth {
            return reject(format!(
                "body: nested {nesting} levels deep, over the limit of {}",
                defaults.max_depth
            ));
        }
        let Value::Object(mut fields) = value else {
            return reject(format!(
                "body: must be a JSON object, got {}",
                json_type(&value)
            ));
        };
        let kind = match fields.remove("kind") {
            None | Some(Value::Null) => return reject("field `kind`: required"),
            Some(value) => validate_kind(value)?,
        };
        let id = match fields.remove("id") {
            None | Some(Value::Null) => match properties.message_id {
                Some(id) => validate_id(Value::String(id.to_owned()))
                    .map_err(|Rejection(r)| Rejection(format!("{r} (from message_id)")))?,
                None => uuid::Uuid::now_v7().to_string(),
            },
            Some(value) => validate_id(value)?,
        };
        let priority = match fields.remove("priority") {
            None | Some(Value::Null) => properties.priority.map_or(5, |p| p.min(9)),
            Some(value) => u8::try_from(integer("priority", &value, 0, 9)?).unwrap_or(9),
        };
        let max_attempts = match fields.remove("max_attempts") {
            None | Some(Value::Null) => defaults.max_attempts,
            Some(value) => u32::try_from(integer("max_attempts", &value, 1, 1000)?).unwrap_or(1),
        };
        let timeout_ms = match fields.remove("timeout_ms") {
            None | Some(Value::Null) => defaults.timeout_ms,
            Some(value) => integer("timeout_ms", &value, 1, 7 * 24 * 3600 * 1000)?,
        };
        let estimated_ms = match fields.remove("estimated_ms") {
            None | Some(Value::Null) => None,
            Some(value) => Some(integer("estimated_ms", &value, 0, u64::MAX)?),
        };
        let deadline = match fields.remove("deadline") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => match DateTime::parse_from_rfc3339(&text) {
                Ok(time) => Some(time.with_timezone(&Utc)),
                Err(err) => {
                    return reject(format!("field `deadline`: not an RFC 3339 time ({err})"));
                }
            },
            Some(other) => {
                return reject(format!(
                    "field `deadline`: must be an RFC 3339 string, got {}",
                    json_type(&other)
                ));
            }
        };
        let requires = match fields.remove("requires") {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => validate_requires(value, defaults.max_requires)?,
        };
        let cost = match fields.remove("cost") {
            None | Some(Value::Null) => 1,
            Some(value) => u32::try_from(integer("cost", &value, 1, 1_000_000)?).unwrap_or(1),
        };
        let payload = fields.remove("payload").unwrap_or(Value::Null);
        Ok(Task {
            id,
            kind,
            payload,
            priority,
            max_attempts,
            timeout_ms,
            estimated_ms,
            deadline,
            requires,
            cost,
            extra: fields,
        })
    }

    /// The normalized JSON form forwarded between warren's own queues.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Task always serializes")
    }

    /// Reads a task that warren itself normalized earlier.
    pub fn from_json(body: &[u8]) -> Result<Task, Rejection> {
        serde_json::from_slice(body).map_err(|err| Rejection(format!("internal task form: {err}")))
    }
}

#[cfg(test)]
mod tests;
