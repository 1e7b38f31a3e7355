//! `warren submit`: publishes one task (confirmed) and, with `--wait`, prints its result.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use warren_common::broker::{check_confirmation, private_consumer};
use warren_common::{Status, TaskResult, confirmed_channel};

use crate::Context_;

/// Submits a task of `kind`; returns the exit code.
pub(crate) async fn run(
    context: &Context_,
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
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_correlation_id(id.as_str().into());
    let mut replies = None;
    if wait {
        let (queue, consumer) = private_consumer(&channel, &[]).await?;
        properties = properties.with_reply_to(queue.as_str().into());
        replies = Some(consumer);
    }
    let exchange = context.topology.submit_exchange();
    let body = serde_json::to_vec(&task)?;
    let confirm = channel
        .basic_publish(
            exchange.as_str().into(),
            kind.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?;
    check_confirmation(confirm.await?, &exchange)?;
    let Some(mut replies) = replies else {
        println!("{id}");
        return Ok(0);
    };
    let wait_for = Duration::from_secs(timeout);
    let delivery = match tokio::time::timeout(wait_for, replies.next()).await {
        Ok(Some(delivery)) => delivery?,
        Ok(None) => bail!("the reply consumer ended"),
        Err(_) => {
            eprintln!("warren: no result for {id} within {timeout} s");
            return Ok(1);
        }
    };
    let result: TaskResult = serde_json::from_slice(&delivery.data)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(if result.status == Status::Succeeded {
        0
    } else {
        1
    })
}
