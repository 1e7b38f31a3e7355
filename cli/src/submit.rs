//! `warren submit`: publishes one task (confirmed) and, with `--wait`, prints its result.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use warren_common::publish::{check_confirmation, private_consumer};
use warren_common::{Status, TaskResult, confirmed_channel};

use crate::Session;

/// Publishes `task` (a JSON object with `kind` and `id`) to `exchange`, routing key = its
/// kind, persistent, with its id as correlation id and `reply_to` if given; returns the
/// pending confirm.
pub(crate) async fn publish_task(
    channel: &lapin::Channel,
    exchange: &str,
    task: &serde_json::Value,
    reply_to: Option<&str>,
) -> Result<lapin::PublisherConfirm> {
    let kind = task["kind"].as_str().unwrap_or_default();
    let id = task["id"].as_str().unwrap_or_default();
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_correlation_id(id.into());
    if let Some(queue) = reply_to {
        properties = properties.with_reply_to(queue.into());
    }
    let body = serde_json::to_vec(task)?;
    Ok(channel
        .basic_publish(
            exchange.into(),
            kind.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?)
}

/// Submits a task of `kind`; returns the exit code.
pub(crate) async fn run(
    context: &Session,
    kind: &str,
    payload: &str,
    priority: Option<u8>,
    wait: bool,
    timeout: u64,
) -> Result<i32> {
    let payload: serde_json::Value =
        serde_json::from_str(payload).context("the payload must be JSON")?;
    let id = uuid::Uuid::now_v7().to_string();
    let mut task = serde_json::json!({ "id": id, "kind": kind, "payload": payload });
    if let Some(priority) = priority {
        task["priority"] = priority.into();
    }
    let channel = confirmed_channel(&context.connection).await?;
    let mut reply_to = None;
    let mut replies = None;
    if wait {
        let (queue, consumer) = private_consumer(&channel, &[]).await?;
        reply_to = Some(queue);
        replies = Some(consumer);
    }
    let exchange = context.topology.submit_exchange();
    let confirm = publish_task(&channel, &exchange, &task, reply_to.as_deref()).await?;
    check_confirmation(confirm.await?, &exchange)?;
    let Some(mut replies) = replies else {
        out!("{id}");
        return Ok(0);
    };
    let wait_for = Duration::from_secs(timeout);
    let delivery = match tokio::time::timeout(wait_for, replies.next()).await {
        Ok(Some(delivery)) => delivery?,
        Ok(None) => bail!("the reply consumer ended"),
        Err(_) => {
            eprintln!("warren: no result for {id} within {timeout} s");
            crate::waiting::explain(context, std::slice::from_ref(&id)).await;
            return Ok(1);
        }
    };
    let result: TaskResult = serde_json::from_slice(&delivery.data)?;
    out!("{}", serde_json::to_string_pretty(&result)?);
    Ok(if result.status == Status::Succeeded {
        0
    } else {
        1
    })
}
