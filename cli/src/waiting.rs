//! `warren waiting`, and the waiting counts of `warren status` and of a `submit --wait` that
//! timed out: asked of the routing dispatcher through `<prefix>.requests` (the dispatcher's
//! `router/requests.rs` says why through the broker).

use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::StreamExt;
use lapin::BasicProperties;
use serde::Deserialize;
use warren_common::message::json_properties;
use warren_common::publish::{inspect_queue, private_consumer};
use warren_common::{confirmed_channel, publish_confirmed};
use warren_core::Waiting;

use crate::Session;

/// How long a request waits in the queue for a routing dispatcher before the broker drops it.
const REQUEST_TTL: Duration = Duration::from_secs(10);

/// A routing dispatcher's answer.
#[derive(Debug, Deserialize)]
pub(crate) struct Answer {
    /// The dispatcher that answered.
    pub(crate) dispatcher: String,
    /// What it holds and why.
    #[serde(flatten)]
    pub(crate) waiting: Waiting,
}

/// Asks the routing dispatcher why its held tasks wait (at most `limit` listed; only `ids`,
/// if given). `None` if no dispatcher answered within `patience`.
pub(crate) async fn ask(
    context: &Session,
    limit: usize,
    ids: Option<&[String]>,
    patience: Duration,
) -> Result<Option<Answer>> {
    let channel = confirmed_channel(&context.connection).await?;
    let (reply_to, mut replies) = private_consumer(&channel, &[]).await?;
    let mut request = serde_json::json!({"op": "waiting", "limit": limit});
    if let Some(ids) = ids {
        request["ids"] = serde_json::json!(ids);
    }
    let correlation = uuid::Uuid::new_v4().to_string();
    let properties: BasicProperties = json_properties(false)
        .with_reply_to(reply_to.as_str().into())
        .with_correlation_id(correlation.as_str().into())
        .with_expiration(REQUEST_TTL.as_millis().to_string().as_str().into());
    let queue = context.topology.requests_queue();
    let body = serde_json::to_vec(&request)?;
    if let Err(err) = publish_confirmed(&channel, "", &queue, true, &body, properties).await {
        bail!(
            "cannot ask: {queue} refused the request ({err}); no dispatcher of prefix '{}' has declared it",
            context.topology.prefix
        );
    }
    let deadline = tokio::time::Instant::now() + patience;
    let answer = loop {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Err(_) => break None,
            Ok(None) => bail!("the reply consumer ended"),
            Ok(Some(delivery)) => {
                let delivery = delivery?;
                let ours = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == correlation);
                if !ours {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_slice(&delivery.data)?;
                if let Some(error) = value.get("error") {
                    bail!("the dispatcher refused the request: {error}");
                }
                break Some(serde_json::from_value(value)?);
            }
        }
    };
    let _ = channel.close(200, "asked".into()).await;
    Ok(answer)
}

/// The counts of `waiting` in one line: `2 (no worker for kind 1, missing tags 1)`.
pub(crate) fn summary(waiting: &Waiting) -> String {
    let parts: Vec<String> = warren_core::WaitReason::CODES
        .iter()
        .filter_map(|code| {
            let count = waiting.counts.get(*code).copied().unwrap_or(0);
            (count > 0).then(|| format!("{} {count}", code.replace('_', " ")))
        })
        .collect();
    if parts.is_empty() {
        waiting.held.to_string()
    } else {
        format!("{} ({})", waiting.held, parts.join(", "))
    }
}

/// What a `submit --wait` that timed out prints for the tasks it did not hear of.
pub(crate) async fn explain(context: &Session, ids: &[String]) {
    let shown = &ids[..ids.len().min(10)];
    match ask(context, shown.len(), Some(shown), Duration::from_secs(3)).await {
        Ok(Some(answer)) => {
            for id in shown {
                match answer.waiting.tasks.iter().find(|t| &t.id == id) {
                    Some(task) => eprintln!("warren: {id} waits: {}", task.detail),
                    None => eprintln!(
                        "warren: {id} is not held by the dispatcher: it runs, or waits in intake or a priority queue behind {} held tasks",
                        answer.waiting.held
                    ),
                }
            }
        }
        Ok(None) => eprintln!("warren: no dispatcher is routing: nothing is sent to workers"),
        Err(err) => eprintln!("warren: could not ask the dispatcher why: {err:#}"),
    }
}

/// Prints why the routing dispatcher's tasks wait, oldest first.
pub(crate) async fn run(context: &Session, limit: usize, json: bool) -> Result<i32> {
    let Some(answer) = ask(context, limit, None, Duration::from_secs(5)).await? else {
        eprintln!(
            "warren: no dispatcher is routing (nothing answered on {} within 5 s)",
            context.topology.requests_queue()
        );
        return Ok(1);
    };
    let topology = &context.topology;
    let mut queued = Vec::new();
    for (index, level) in topology.levels.iter().enumerate() {
        let channel = context.connection.create_channel().await?;
        let ready = inspect_queue(&channel, &topology.level_queue(index))
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        queued.push((level.name.clone(), ready));
    }
    if json {
        let mut value = serde_json::to_value(&answer.waiting)?;
        value["dispatcher"] = answer.dispatcher.clone().into();
        value["queued"] = queued
            .iter()
            .map(|(level, ready)| (level.clone(), serde_json::json!(ready)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        out!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    let waiting = &answer.waiting;
    out!(
        "held by dispatcher {}: {}",
        answer.dispatcher,
        summary(waiting)
    );
    if !waiting.tasks.is_empty() {
        out!(
            "{:<38} {:<20} {:<8} {:>9}  reason",
            "id",
            "kind",
            "level",
            "waited"
        );
    }
    for task in &waiting.tasks {
        let level = topology
            .levels
            .get(task.level)
            .map_or("?", |l| l.name.as_str());
        out!(
            "{:<38} {:<20} {:<8} {:>8.1}s  {}",
            task.id,
            task.kind,
            level,
            task.waited_ms as f64 / 1000.0,
            task.detail
        );
    }
    if waiting.truncated {
        out!(
            "(the oldest {} shown; --limit for more)",
            waiting.tasks.len()
        );
    }
    let queued: Vec<String> = queued
        .iter()
        .map(|(level, ready)| format!("{level} {ready}"))
        .collect();
    out!(
        "not yet read by the dispatcher, in the priority queues: {}",
        queued.join(", ")
    );
    Ok(0)
}
