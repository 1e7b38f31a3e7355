//! AMQP message properties as warren uses them: JSON bodies, attempt and reason headers.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::{HEADER_ATTEMPTS, HEADER_REASON};

/// Properties of a persistent JSON message.
pub fn json_properties(persistent: bool) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(if persistent { 2 } else { 1 })
}

/// An integer header, if present and numeric.
pub fn header_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

/// A string header, if present.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// `properties` without the header `name`.
pub fn without_header(properties: BasicProperties, name: &str) -> BasicProperties {
    let Some(headers) = properties.headers() else {
        return properties;
    };
    if !headers.inner().contains_key(name) {
        return properties;
    }
    let mut kept = FieldTable::default();
    for (key, value) in headers.inner() {
        if key.as_str() != name {
            kept.insert(key.clone(), value.clone());
        }
    }
    properties.with_headers(kept)
}

/// What every header warren sets starts with: the namespace is warren's own.
pub const WARREN_HEADER_PREFIX: &str = "x-warren-";

/// Whether `name` is in warren's header namespace (`x-warren-*`, in any letter case).
pub fn is_warren_header(name: &str) -> bool {
    name.len() >= WARREN_HEADER_PREFIX.len()
        && name.as_bytes()[..WARREN_HEADER_PREFIX.len()]
            .eq_ignore_ascii_case(WARREN_HEADER_PREFIX.as_bytes())
}

/// `properties` without any header of warren's namespace, and the names removed: what intake
/// does to a client's submission before anything reads it, so that a submitter cannot set a
/// task's attempts, history, backoff, submitter or any other bookkeeping of warren's.
pub fn without_warren_headers(properties: BasicProperties) -> (BasicProperties, Vec<String>) {
    let Some(headers) = properties.headers() else {
        return (properties, Vec::new());
    };
    if !headers
        .inner()
        .keys()
        .any(|key| is_warren_header(key.as_str()))
    {
        return (properties, Vec::new());
    }
    let mut kept = FieldTable::default();
    let mut removed = Vec::new();
    for (key, value) in headers.inner() {
        if is_warren_header(key.as_str()) {
            removed.push(key.as_str().to_owned());
        } else {
            kept.insert(key.clone(), value.clone());
        }
    }
    (properties.with_headers(kept), removed)
}

/// The submitting AMQP user recorded by the dispatcher (from the submission's `user_id`).
pub fn submitter(properties: &BasicProperties) -> Option<String> {
    header_str(properties, crate::HEADER_SUBMITTER)
}

/// Attempts already made of the task in this message (0 for a fresh one).
pub fn attempts(properties: &BasicProperties) -> u32 {
    header_u64(properties, HEADER_ATTEMPTS)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// `properties` with one header set (other headers kept).
pub fn with_header(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(name), value);
    properties.with_headers(headers)
}

/// `properties` with `x-warren-reason` set to `reason`.
pub fn with_reason(properties: BasicProperties, reason: &str) -> BasicProperties {
    with_header(
        properties,
        HEADER_REASON,
        AMQPValue::LongString(reason.into()),
    )
}

/// `properties` with `x-warren-attempts` set to `attempts`.
pub fn with_attempts(properties: BasicProperties, attempts: u32) -> BasicProperties {
    with_header(
        properties,
        HEADER_ATTEMPTS,
        AMQPValue::LongLongInt(i64::from(attempts)),
    )
}

/// `properties` with failed attempt number `attempt` (on `worker`, ending at `at` with `error`)
/// counted in `x-warren-attempts` and recorded in the history of `x-warren-history` (its latest
/// `MAX_HISTORY` attempts).
pub fn with_failed_attempt(
    properties: BasicProperties,
    attempt: u32,
    worker: &str,
    error: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> BasicProperties {
    use warren_core::retry::{AttemptRecord, MAX_HISTORY};
    let mut history: Vec<AttemptRecord> = header_str(&properties, crate::HEADER_HISTORY)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    history.push(AttemptRecord {
        attempt,
        worker: worker.to_owned(),
        error: error.chars().take(1000).collect(),
        at: at.to_rfc3339(),
    });
    let keep = history.len().saturating_sub(MAX_HISTORY);
    let history = serde_json::to_string(&history[keep..]).expect("history serializes");
    with_header(
        with_attempts(properties, attempt),
        crate::HEADER_HISTORY,
        AMQPValue::LongString(history.into()),
    )
}

/// An empty header table, for call sites that need one.
pub fn no_arguments() -> FieldTable {
    FieldTable::default()
}
