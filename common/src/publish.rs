//! Channels and messages: confirm-mode channels, publishing with confirms (to a queue, a
//! result to `reply_to`), settling a delivery, and looking at queues.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::broker::BrokerError;

/// Opens a channel with publisher confirms on.
pub async fn confirmed_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes to `queue` through the default exchange as mandatory (a missing queue is a failed
/// confirm, not a silent drop), returning the pending confirm so callers can pipeline.
pub async fn publish_to_queue(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<lapin::PublisherConfirm, BrokerError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    Ok(channel
        .basic_publish("".into(), queue.into(), options, body, properties)
        .await?)
}

/// Publishes on a confirm-mode channel and waits until the broker has taken responsibility for
/// the message. With `mandatory`, a message no queue took counts as not confirmed.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?;
    check_confirmation(confirm.await?, routing_key)
}

/// Turns a publisher confirmation into success, or the reason the broker did not take it.
pub fn check_confirmation(confirmation: Confirmation, target: &str) -> Result<(), BrokerError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::NotConfirmed(target.into(), "unroutable")),
        Confirmation::Nack(_) => Err(BrokerError::NotConfirmed(target.into(), "nacked")),
        Confirmation::NotRequested => Err(BrokerError::NotConfirmed(
            target.into(),
            "channel not in confirm mode",
        )),
    }
}

/// A queue's state (message and consumer counts) by a passive declare. A missing queue is an
/// error that closes `channel`.
pub async fn inspect_queue(channel: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
}

/// A private, server-named queue (exclusive: it goes away with the connection), bound to each
/// `(exchange, routing key)` of `bindings`, and an auto-acking consumer on it. Returns the
/// queue's name (for `reply_to`) and the consumer.
pub async fn private_consumer(
    channel: &Channel,
    bindings: &[(&str, &str)],
) -> lapin::Result<(String, lapin::Consumer)> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let options = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await?;
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                queue.name().clone(),
                (*exchange).into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().to_string(), consumer))
}

/// Publishes `result` to the `reply_to` of the request whose properties are `request`, with
/// the request's `correlation_id` (else the task id). Returns the pending confirm, or `None`
/// if the submitter asked for no result.
pub async fn publish_result(
    channel: &Channel,
    request: &BasicProperties,
    result: &crate::TaskResult,
) -> Result<Option<lapin::PublisherConfirm>, BrokerError> {
    let body = serde_json::to_vec(result).expect("results serialize");
    publish_reply(channel, request, &body, true, Some(&result.id)).await
}

/// Publishes the JSON `body` to the `reply_to` of the request whose properties are `request`,
/// with its `correlation_id` (else `fallback_correlation`, if any). Returns the pending confirm,
/// or `None` if the request named no `reply_to`.
pub async fn publish_reply(
    channel: &Channel,
    request: &BasicProperties,
    body: &[u8],
    persistent: bool,
    fallback_correlation: Option<&str>,
) -> Result<Option<lapin::PublisherConfirm>, BrokerError> {
    let Some(reply_to) = request.reply_to() else {
        return Ok(None);
    };
    let mut properties = crate::message::json_properties(persistent);
    let correlation = request
        .correlation_id()
        .clone()
        .or_else(|| fallback_correlation.map(Into::into));
    if let Some(correlation) = correlation {
        properties = properties.with_correlation_id(correlation);
    }
    let confirm = channel
        .basic_publish(
            "".into(),
            reply_to.clone(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?;
    Ok(Some(confirm))
}

/// How long a delivery whose hand-off the broker refused waits before it is requeued: a queue
/// that nacks (say, while it elects a leader after a node died) must not be hammered with the
/// same messages in a tight loop, which on a small machine can starve the election itself.
pub const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Acks a delivery whose content is safely handed on (`done`), or requeues it after
/// [`REQUEUE_PAUSE`]. A failure to settle means the channel is gone, and then the broker
/// requeues the delivery by itself.
pub async fn settle(delivery: &lapin::Acker, done: bool) {
    use lapin::options::{BasicAckOptions, BasicNackOptions};
    let settled = if done {
        delivery.ack(BasicAckOptions::default()).await
    } else {
        tokio::time::sleep(REQUEUE_PAUSE).await;
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
    };
    if let Err(err) = settled {
        tracing::debug!(cause = %err, "could not settle a delivery; the broker will redeliver it");
    }
}
