//! `warren task ID`: a task's timeline, read from the history stream `<prefix>.history`, which
//! RabbitMQ fills with every `task.*` event (it is bound to the events exchange).
//!
//! Finding a task among millions: a stream is read from a point in time, and a UUIDv7 id (the
//! default) says when its task was submitted, so reading starts a little before that and stops
//! at the task's final event (succeeded, failed, dead, rejected). Other ids need `--since`, else
//! the whole history is read. Only messages that contain the id's bytes are parsed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use warren_common::event_batch::decode_events;
use warren_common::{Status, TaskEvent};

use crate::Session;

/// How long before a UUIDv7 id's time reading starts: the submitter's clock against the
/// broker's.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);
/// Reading stops when the stream sends nothing for this long: its end.
const IDLE: Duration = Duration::from_millis(700);
/// Stream messages read between acks (a stream consumer needs credit).
const PREFETCH: u16 = 10_000;

/// Where reading starts: `--since` (an RFC 3339 time, or an age such as `90m`, `6h`, `3d`),
/// else a UUIDv7 id's time less [`CLOCK_MARGIN`], else the stream's first event.
fn start(id: &str, since: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    if let Some(since) = since {
        return parse_since(since, Utc::now()).map(Some);
    }
    let v7 = uuid::Uuid::parse_str(id)
        .ok()
        .filter(|u| u.get_version_num() == 7)
        .and_then(|u| u.get_timestamp());
    Ok(v7.and_then(|t| {
        let (secs, nanos) = t.to_unix();
        let at = DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, nanos)?;
        Some(at - chrono::Duration::from_std(CLOCK_MARGIN).ok()?)
    }))
}

/// An RFC 3339 time, or an age before `now`: a number and `s`, `m`, `h` or `d`.
fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let number: i64 = number.parse().with_context(|| {
        format!("--since: an RFC 3339 time or an age like 90m, 6h, 3d, got '{text}'")
    })?;
    let age = match unit {
        "s" => chrono::Duration::seconds(number),
        "m" => chrono::Duration::minutes(number),
        "h" => chrono::Duration::hours(number),
        "d" => chrono::Duration::days(number),
        _ => bail!("--since: an age's unit is s, m, h or d, got '{text}'"),
    };
    Ok(now - age)
}

/// Whether `status` ends a task's life (until it is requeued).
fn is_final(status: Status) -> bool {
    matches!(
        status,
        Status::Succeeded | Status::Failed | Status::Dead | Status::Rejected
    )
}

/// The events of task `id` in the history, from `since` (or the beginning), up to its final
/// event or the stream's end.
pub(crate) async fn timeline(
    context: &Session,
    id: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<TaskEvent>> {
    let stream = context.topology.history_stream();
    let channel = context.connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    let offset = match since {
        Some(at) => AMQPValue::Timestamp(u64::try_from(at.timestamp()).unwrap_or(0)),
        None => AMQPValue::LongString("first".into()),
    };
    arguments.insert("x-stream-offset".into(), offset);
    let mut consumer = channel
        .basic_consume(
            stream.as_str().into(),
            "warren-task".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .with_context(|| format!("reading the history stream {stream}"))?;
    let needle = id.as_bytes();
    let mut events = Vec::new();
    let mut unacked = 0u16;
    while let Ok(Some(delivery)) = tokio::time::timeout(IDLE, consumer.next()).await {
        let delivery = delivery?;
        unacked += 1;
        if unacked >= PREFETCH / 2 {
            let all = BasicAckOptions { multiple: true };
            delivery.ack(all).await?;
            unacked = 0;
        }
        if !contains(&delivery.data, needle) {
            continue;
        }
        // One event, or a batch of them.
        let mut done = false;
        for event in decode_events(&delivery.data) {
            if event.id == id {
                done |= is_final(event.status);
                events.push(event);
            }
        }
        if done {
            break;
        }
    }
    let _ = channel.close(200, "read".into()).await;
    Ok(events)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Prints task `id`'s timeline; exit code 0 if the history has it, 1 if not.
pub(crate) async fn run(
    context: &Session,
    id: &str,
    since: Option<&str>,
    json: bool,
) -> Result<i32> {
    if context.topology.history.is_none() {
        bail!("topology.history.enabled is false: there is no history to read");
    }
    let from = start(id, since)?;
    let events = timeline(context, id, from).await?;
    let state = events.last().map(|e| e.status);
    if json {
        let answer = serde_json::json!({
            "id": id,
            "found": !events.is_empty(),
            "state": state.map(Status::as_str),
            "events": events,
        });
        out!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(i32::from(events.is_empty()));
    }
    let Some(state) = state else {
        let from = from.map_or("its beginning".into(), |at| at.to_rfc3339());
        eprintln!(
            "warren: task {id} is not in the history {} since {from}",
            context.topology.history_stream()
        );
        return Ok(1);
    };
    out!("task {id} ({})", events[0].kind);
    for event in &events {
        let mut detail = Vec::new();
        if event.attempt > 0 {
            detail.push(format!("attempt {}", event.attempt));
        }
        if let Some(worker) = &event.worker {
            detail.push(format!("worker {worker}"));
        }
        if let Some(ms) = event.duration_ms {
            detail.push(format!("ran {ms} ms"));
        }
        if let Some(error) = &event.error {
            detail.push(format!("error: {error}"));
        }
        if let Some(result) = &event.result {
            detail.push(format!("result: {result}"));
        } else if event.result_omitted {
            let size = event
                .result_bytes
                .map_or(String::new(), |bytes| format!("{bytes} bytes, "));
            detail.push(format!(
                "result: {size}too large for the history (sent to reply_to)"
            ));
        }
        out!(
            "  {}  {:<10} {}",
            event.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            event.status.as_str(),
            detail.join(", ")
        );
    }
    out!("state: {}", state.as_str());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_starts_before_a_v7_id_or_where_since_says() {
        let id = uuid::Uuid::now_v7().to_string();
        let at = start(&id, None).unwrap().unwrap();
        let age = Utc::now() - at;
        assert!(age >= chrono::Duration::seconds(1) && age < chrono::Duration::seconds(10));
        assert_eq!(start("my-own-id", None).unwrap(), None);
        let now = Utc::now();
        assert_eq!(
            parse_since("90m", now).unwrap(),
            now - chrono::Duration::minutes(90)
        );
        let fixed = parse_since("2026-01-02T03:04:05Z", now).unwrap();
        assert_eq!(fixed.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        assert!(parse_since("yesterday", now).is_err());
        assert!(contains(b"{\"id\":\"abc\"}", b"abc"));
        assert!(!contains(b"{\"id\":\"abd\"}", b"abc"));
    }
}
