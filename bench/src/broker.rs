//! Plain AMQP plumbing every phase shares: connections, private name prefixes, queues, and a
//! publisher that keeps a window of publisher confirms outstanding instead of waiting for each.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, PublisherConfirm,
};
use warren_common::Topology;
use warren_common::publish::check_confirmation;

/// Opens a connection named `name` in the management console.
pub(crate) async fn connect(url: &str, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .with_context(|| format!("no RabbitMQ at {}", warren_common::redact(url)))
}

/// A fresh name prefix for one phase, so phases and runs never share a queue.
pub(crate) fn unique_prefix(phase: &str) -> String {
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("bench-{phase}-{}", &short[..8])
}

/// Declares a durable quorum queue (with the arguments of warren's queues that hold records:
/// the floors' messages are never returned to it).
pub(crate) async fn declare_quorum(connection: &Connection, name: &str) -> Result<()> {
    use warren_common::topology::{Holds, declare_quorum};
    declare_quorum(connection, name, Holds::Records).await?;
    Ok(())
}

/// Declares a private (exclusive, server-named) queue on `channel` and returns its name.
pub(crate) async fn private_queue(channel: &Channel) -> Result<String> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.name().to_string())
}

/// Binds `queue` to `exchange` with each of `keys`.
pub(crate) async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    keys: &[&str],
) -> Result<()> {
    for key in keys {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Starts a consumer on `queue`: with manual acks and `prefetch` unacked deliveries at most, or
/// with automatic acks when `prefetch` is `None`.
pub(crate) async fn consume(
    channel: &Channel,
    queue: &str,
    prefetch: Option<u16>,
) -> Result<Consumer> {
    if let Some(prefetch) = prefetch {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
    }
    Ok(channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: prefetch.is_none(),
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Ready messages and consumers of `queue` (a passive declare, on a channel of its own because
/// a missing queue closes the channel).
pub(crate) async fn queue_state(connection: &Connection, queue: &str) -> Result<(u32, u32)> {
    let channel = connection.create_channel().await?;
    let state = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, "probed".into()).await;
    let state = state?;
    Ok((state.message_count(), state.consumer_count()))
}

/// Ready messages of each of `queues` (missing ones are left out), to show where tasks are
/// when a phase stalls.
pub(crate) async fn depths(connection: &Connection, queues: &[String]) -> BTreeMap<String, u32> {
    let mut depths = BTreeMap::new();
    for queue in queues {
        if let Ok((messages, _)) = queue_state(connection, queue).await {
            depths.insert(queue.clone(), messages);
        }
    }
    depths
}

/// Deletes `queues` (missing ones are fine), each on a fresh channel.
pub(crate) async fn delete_queues(connection: &Connection, queues: &[String]) -> Result<()> {
    for queue in queues {
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "deleted".into()).await;
    }
    Ok(())
}

/// warren's shared queues on `topology` and the queues of the given workers.
pub(crate) fn warren_queues(topology: &Topology, worker_ids: &[String]) -> Vec<String> {
    let mut queues = topology.shared_queues();
    queues.extend(worker_ids.iter().map(|id| topology.worker_queue(id)));
    queues
}

/// Deletes warren's shared queues and exchanges of `topology`, and the given worker queues.
pub(crate) async fn delete_topology(
    connection: &Connection,
    topology: &Topology,
    worker_ids: &[String],
) -> Result<()> {
    delete_queues(connection, &warren_queues(topology, worker_ids)).await?;
    for exchange in [topology.submit_exchange(), topology.events_exchange()] {
        let channel = connection.create_channel().await?;
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = channel.close(200, "deleted".into()).await;
    }
    Ok(())
}

/// Persistent JSON message properties, as warren's clients send them.
pub(crate) fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// A confirm-mode channel that publishes without waiting, keeping at most `window` confirms
/// outstanding; every confirm is checked (a nack or an unroutable message is an error).
pub(crate) struct ConfirmWindow {
    /// The confirm-mode channel.
    channel: Channel,
    /// Confirms not yet received.
    pending: FuturesUnordered<PublisherConfirm>,
    /// Most confirms outstanding at once.
    window: usize,
    /// Longest wait for one confirm before the broker is declared stuck.
    stall: Duration,
}

impl ConfirmWindow {
    /// Opens a confirm-mode channel on `connection`.
    pub(crate) async fn open(
        connection: &Connection,
        window: usize,
        stall: Duration,
    ) -> Result<ConfirmWindow> {
        let channel = warren_common::confirmed_channel(connection).await?;
        Ok(ConfirmWindow {
            channel,
            pending: FuturesUnordered::new(),
            window: window.max(1),
            stall,
        })
    }

    /// Waits until the window has room for one more message.
    pub(crate) async fn ready(&mut self) -> Result<()> {
        while self.pending.len() >= self.window {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Publishes one mandatory message, first waiting for a confirm if the window is full.
    pub(crate) async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        self.ready().await?;
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?;
        self.pending.push(confirm);
        Ok(())
    }

    /// Waits for every outstanding confirm.
    pub(crate) async fn finish(&mut self) -> Result<()> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Closes the channel.
    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }

    async fn settle_one(&mut self) -> Result<()> {
        let next = tokio::time::timeout(self.stall, self.pending.next())
            .await
            .with_context(|| format!("no publisher confirm for {:?}", self.stall))?;
        if let Some(confirmation) = next {
            check_confirmation(confirmation?, "benchmark publish")?;
        }
        Ok(())
    }
}
