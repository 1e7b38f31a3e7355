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

/// Why a message is in the dead queue. For a message RabbitMQ dead-lettered itself (a task
/// returned to its queue more often than [`crate::topology::DELIVERY_LIMIT`]), the broker's
/// `x-first-death-reason` and queue; otherwise warren's `x-warren-reason`.
pub fn dead_reason(properties: &BasicProperties) -> Option<String> {
    let Some(reason) = header_str(properties, "x-first-death-reason") else {
        return header_str(properties, HEADER_REASON);
    };
    let queue = header_str(properties, "x-first-death-queue").unwrap_or_else(|| "?".into());
    Some(match reason.as_str() {
        "delivery_limit" => format!(
            "returned to {queue} more often than its delivery limit ({})",
            crate::topology::DELIVERY_LIMIT
        ),
        other => format!("dead-lettered by RabbitMQ from {queue} ({other})"),
    })
}

/// Whether `name` is a header RabbitMQ sets when it dead-letters or redelivers a message
/// (`x-death`, `x-first-death-*`, `x-last-death-*`, `x-delivery-count`, `x-acquired-count`):
/// a message published anew must not carry them.
pub fn is_broker_delivery_header(name: &str) -> bool {
    name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
        || name == "x-delivery-count"
        || name == "x-acquired-count"
}

/// An empty header table, for call sites that need one.
pub fn no_arguments() -> FieldTable {
    FieldTable::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_text(properties: BasicProperties, name: &str, value: &str) -> BasicProperties {
        with_header(properties, name, AMQPValue::LongString(value.into()))
    }

    #[test]
    fn a_broker_dead_letter_names_the_queue_and_the_limit() {
        let warren = with_reason(BasicProperties::default(), "expired");
        assert_eq!(dead_reason(&warren).as_deref(), Some("expired"));
        let broker = with_text(warren, "x-first-death-reason", "delivery_limit");
        let broker = with_text(broker, "x-first-death-queue", "w.tasks.high");
        let reason = dead_reason(&broker).unwrap();
        assert!(reason.contains("w.tasks.high"), "{reason}");
        assert!(reason.contains("delivery limit (20)"), "{reason}");
        assert_eq!(dead_reason(&BasicProperties::default()), None);
    }

    #[test]
    fn knows_the_headers_the_broker_sets() {
        for name in [
            "x-death",
            "x-first-death-queue",
            "x-last-death-reason",
            "x-delivery-count",
        ] {
            assert!(is_broker_delivery_header(name), "{name}");
        }
        assert!(!is_broker_delivery_header("x-warren-reason"));
        assert!(!is_broker_delivery_header("traceparent"));
    }
}
