//! `warren dead …` and `warren rejected …`: list, requeue (dead only) and purge. Listing reads
//! messages without acking them and hands them all back (each listing counts one delivery of
//! each message, against a limit on these queues that is never reached:
//! `topology::UNREACHABLE_DELIVERY_LIMIT`).

use anyhow::Result;
use lapin::BasicProperties;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use warren_common::message::{attempts, dead_reason, is_broker_delivery_header};
use warren_common::publish::{check_confirmation, inspect_queue, publish_to_queue};
use warren_common::{
    HEADER_ATTEMPTS, HEADER_HISTORY, HEADER_NOT_BEFORE, HEADER_REASON, HEADER_REDELIVERED,
    HEADER_SUBMITTED, confirmed_channel,
};

use crate::{QueueAction, Session};

/// Runs `action` on `queue`; `dead` allows requeueing.
pub(crate) async fn run(
    context: &Session,
    queue: &str,
    action: QueueAction,
    dead: bool,
) -> Result<i32> {
    match action {
        QueueAction::List { limit } => list(context, queue, limit).await,
        QueueAction::Requeue { .. } if !dead => {
            eprintln!("warren: rejected messages are not valid tasks and cannot be requeued");
            Ok(2)
        }
        QueueAction::Requeue { ids, all } => requeue(context, queue, &ids, all).await,
        QueueAction::Purge => {
            let channel = context.connection.create_channel().await?;
            let purged = channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await?;
            out!("purged {purged} messages from {queue}");
            Ok(0)
        }
    }
}

/// Up to `limit` messages of `queue`, fetched unacked on `channel`.
async fn fetch(
    channel: &lapin::Channel,
    queue: &str,
    limit: usize,
) -> Result<Vec<BasicGetMessage>> {
    let ready = inspect_queue(channel, queue).await?.message_count() as usize;
    let mut messages = Vec::new();
    while messages.len() < ready.min(limit) {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            Some(message) => messages.push(message),
            None => break,
        }
    }
    Ok(messages)
}

async fn list(context: &Session, queue: &str, limit: usize) -> Result<i32> {
    let channel = context.connection.create_channel().await?;
    let messages = fetch(&channel, queue, limit).await?;
    out!("{:<40} {:<20} {:>8}  reason", "id", "kind", "attempts");
    for message in &messages {
        let delivery = &message.delivery;
        let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let id = field("id")
            .or_else(|| {
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
            })
            .unwrap_or_else(|| "-".into());
        out!(
            "{:<40} {:<20} {:>8}  {}",
            id,
            field("kind").unwrap_or_else(|| "-".into()),
            attempts(&delivery.properties),
            dead_reason(&delivery.properties).unwrap_or_default()
        );
    }
    out!("({} shown)", messages.len());
    // Hand every fetched message back, and wait until the queue counts them as ready again, so
    // that a `warren status` right after sees the queue as it was (the broker requeues them
    // asynchronously; a quorum queue can take a moment).
    if let Some(last) = messages.last() {
        let back = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        last.delivery.nack(back).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let ready = inspect_queue(&channel, queue).await?.message_count() as usize;
            if ready >= messages.len() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let _ = channel.close(200, "listed".into()).await;
    Ok(0)
}

async fn requeue(context: &Session, queue: &str, ids: &[String], all: bool) -> Result<i32> {
    let channel = confirmed_channel(&context.connection).await?;
    let intake = context.topology.intake_queue();
    let messages = fetch(&channel, queue, usize::MAX).await?;
    let mut requeued = Vec::new();
    for message in messages {
        let delivery = &message.delivery;
        let id = serde_json::from_slice::<serde_json::Value>(&delivery.data)
            .ok()
            .and_then(|b| b.get("id").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_default();
        if !all && !ids.contains(&id) {
            continue;
        }
        let properties = fresh(&delivery.properties);
        let confirm = publish_to_queue(&channel, &intake, &delivery.data, properties).await?;
        check_confirmation(confirm.await?, &intake)?;
        delivery.ack(BasicAckOptions::default()).await?;
        requeued.push(id);
    }
    let _ = channel.close(200, "requeued".into()).await;
    out!(
        "requeued {} tasks for a fresh set of attempts",
        requeued.len()
    );
    let missing: Vec<&String> = ids.iter().filter(|id| !requeued.contains(id)).collect();
    if missing.is_empty() {
        Ok(0)
    } else {
        eprintln!("warren: not in {queue}: {missing:?}");
        Ok(1)
    }
}

/// The dead task's properties without warren's attempt bookkeeping or the broker's
/// dead-lettering record, so it starts over; the submitter's `reply_to` and `correlation_id`
/// stay, so the result reaches them.
fn fresh(properties: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = properties.headers() {
        for (key, value) in old.inner() {
            let warren_bookkeeping = [
                HEADER_ATTEMPTS,
                HEADER_HISTORY,
                HEADER_NOT_BEFORE,
                HEADER_REASON,
                HEADER_REDELIVERED,
                HEADER_SUBMITTED,
            ]
            .contains(&key.as_str());
            if !warren_bookkeeping && !is_broker_delivery_header(key.as_str()) {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    properties.clone().with_headers(headers)
}
