//! Phases `relay` and `floor`: warren's hops without warren.
//!
//! `relay`, the bare two-stage relay: the client publishes (with confirms) into quorum queue A;
//! a relay consumer on A republishes each message with a confirm into quorum queue B and acks A
//! only after that confirm; a final consumer on B publishes a small reply to the client's reply
//! queue and acks B after the reply's confirm (as a warren worker acks only after its result is
//! confirmed). The client counts replies.
//!
//! `floor`, the broker work the wire contract implies for one task under load: three quorum
//! queues (intake, a priority level, a worker's queue) with a confirmed relay between each, the
//! reply, and the four events of a task's life on a topic exchange — `accepted` after the first
//! hop, `dispatched` after the second, `started` and `succeeded` at the last — with, as in
//! warren, a private queue bound to `task.succeeded` (the dispatcher's) consumed without acks.
//! No validation, scheduling or bookkeeping: what is left between it and `pipeline` is warren's
//! own cost.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions};
use lapin::{Channel, Connection, Consumer};
use tokio::task::JoinHandle;
use warren_common::publish::{check_confirmation, settle};

use crate::Settings;
use crate::broker::{self, ConfirmWindow};
use crate::progress::Progress;
use crate::stats::Throughput;
use crate::task;

/// The small reply the final stage sends for every message.
const REPLY: &[u8] = br#"{"status":"succeeded"}"#;

/// An event the size of warren's.
const EVENT: &[u8] = br#"{"event":"task","id":"0192f0a8-1c3e-7e8a-9b1d-2f3a4b5c6d7e","kind":"noop","status":"started","attempt":1,"worker":"bench-w1","submitter":"guest","at":"2026-11-24T08:00:00.000Z"}"#;

/// What a relay run passes each message through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Its name, for names and messages.
    pub(crate) name: &'static str,
    /// Quorum queues in a row.
    pub(crate) hops: usize,
    /// Whether the stages publish warren's task events.
    pub(crate) events: bool,
}

/// Two quorum queues and a reply.
pub(crate) const RELAY: Shape = Shape {
    name: "relay",
    hops: 2,
    events: false,
};

/// Three quorum queues, a reply and four events.
pub(crate) const FLOOR: Shape = Shape {
    name: "floor",
    hops: 3,
    events: true,
};

/// Runs the phase with `n` messages and deletes its queues and exchange.
pub(crate) async fn run(
    settings: &Settings,
    n: usize,
    shape: Shape,
    progress: &Progress,
) -> Result<Throughput> {
    let prefix = broker::unique_prefix(shape.name);
    let queues: Vec<String> = (0..shape.hops).map(|i| format!("{prefix}.q{i}")).collect();
    let exchange = format!("{prefix}.events");
    let url = &settings.amqp_url;
    let client = broker::connect(url, &format!("warren-bench {} client", shape.name)).await?;
    let mut stages = Vec::with_capacity(shape.hops);
    for i in 0..shape.hops {
        let name = format!("warren-bench {} stage {i}", shape.name);
        stages.push(broker::connect(url, &name).await?);
    }
    for queue in &queues {
        broker::declare_quorum(&client, queue).await?;
    }
    if shape.events {
        let channel = client.create_channel().await?;
        warren_common::topology::declare_topic_exchange(&channel, &exchange).await?;
        let _ = channel.close(200, "declared".into()).await;
    }
    let run = Run {
        prefix: &prefix,
        shape,
        queues: &queues,
        exchange: &exchange,
    };
    let measured = measure(settings, n, &run, &client, &stages, progress).await;
    for connection in &stages {
        let _ = connection.close(200, "relay done".into()).await;
    }
    broker::delete_queues(&client, &queues).await?;
    if shape.events {
        let channel = client.create_channel().await?;
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = channel.close(200, "deleted".into()).await;
    }
    let _ = client.close(200, "relay done".into()).await;
    measured
}

/// The names of one relay run.
struct Run<'a> {
    prefix: &'a str,
    shape: Shape,
    queues: &'a [String],
    exchange: &'a str,
}

async fn measure(
    settings: &Settings,
    n: usize,
    run: &Run<'_>,
    client: &Connection,
    stages: &[Connection],
    progress: &Progress,
) -> Result<Throughput> {
    let name = run.shape.name;
    let replies_channel = client.create_channel().await?;
    let reply_queue = broker::private_queue(&replies_channel).await?;
    let mut replies = broker::consume(&replies_channel, &reply_queue, None).await?;

    // The dispatcher's view of finished tasks: a private queue on `task.succeeded`, drained.
    let mut handles: Vec<(JoinHandle<Result<()>>, Channel)> = Vec::new();
    if run.shape.events {
        let channel = stages[0].create_channel().await?;
        let queue = broker::private_queue(&channel).await?;
        broker::bind(&channel, &queue, run.exchange, &["task.succeeded"]).await?;
        let mut finished = broker::consume(&channel, &queue, None).await?;
        let drain = tokio::spawn(async move {
            while let Some(event) = finished.next().await {
                event?;
            }
            Ok(())
        });
        handles.push((drain, channel));
    }
    let last = run.shape.hops - 1;
    for (i, connection) in stages.iter().enumerate() {
        let (to, reply) = if i == last {
            (reply_queue.clone(), Some(REPLY))
        } else {
            (run.queues[i + 1].clone(), None)
        };
        let events: &'static [&'static str] = match (run.shape.events, i) {
            (false, _) => &[],
            (true, 0) => &["task.accepted"],
            (true, i) if i == last => &["task.started", "task.succeeded"],
            (true, _) => &["task.dispatched"],
        };
        let target = Target {
            to,
            reply,
            exchange: run.exchange.to_owned(),
            events,
        };
        handles.push(stage(connection, &run.queues[i], settings.prefetch, target).await?);
    }

    let published_bar = progress.bar(&format!("{name}: published"), n as u64);
    let replies_bar = progress.bar(&format!("{name}: replies"), n as u64);
    let stall = settings.stall();
    let counting = tokio::spawn(async move {
        for _ in 0..n {
            tokio::time::timeout(stall, replies.next())
                .await
                .with_context(|| format!("no reply for {stall:?}"))?
                .context("reply consumer ended")??;
            replies_bar.inc(1);
        }
        replies_bar.finish();
        anyhow::Ok(Instant::now())
    });

    let start = Instant::now();
    let published = async {
        let mut window = ConfirmWindow::open(client, settings.window, stall).await?;
        for i in 0..n {
            let body = task::body(run.prefix, i);
            window
                .publish("", &run.queues[0], &body, broker::json_properties())
                .await?;
            published_bar.inc(1);
        }
        window.finish().await?;
        window.close().await;
        published_bar.finish();
        anyhow::Ok(())
    }
    .await;
    let counted = match published {
        Ok(()) => counting.await.map_err(anyhow::Error::from).and_then(|r| r),
        Err(err) => {
            counting.abort();
            Err(err)
        }
    };
    for (handle, _channel) in handles {
        handle.abort();
    }
    let _ = replies_channel.close(200, "relay done".into()).await;
    Ok(Throughput::new(n as u64, counted? - start))
}

/// Where a stage sends each message on.
struct Target {
    /// The next queue (or the reply queue).
    to: String,
    /// The body to send instead of the message's own (the reply).
    reply: Option<&'static [u8]>,
    /// The events exchange.
    exchange: String,
    /// Routing keys of the events to publish per message (without confirms, as warren's
    /// dispatcher does).
    events: &'static [&'static str],
}

/// Starts a stage on its own connection: consumes `from` (manual acks, `prefetch`), publishes
/// its events, publishes each message (or the reply instead of its body) with a confirm to the
/// target, and acks the delivery once the broker confirmed it. Runs until aborted.
async fn stage(
    connection: &Connection,
    from: &str,
    prefetch: u16,
    target: Target,
) -> Result<(JoinHandle<Result<()>>, Channel)> {
    let consume_channel = connection.create_channel().await?;
    let consumer = broker::consume(&consume_channel, from, Some(prefetch)).await?;
    let publisher = warren_common::confirmed_channel(connection).await?;
    let events = connection.create_channel().await?;
    let handle = tokio::spawn(forward(consumer, publisher, events, target));
    Ok((handle, consume_channel))
}

async fn forward(
    mut consumer: Consumer,
    publisher: Channel,
    events: Channel,
    target: Target,
) -> Result<()> {
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        for key in target.events {
            // No confirms on this channel: the publish returns once the frames are queued.
            events
                .basic_publish(
                    target.exchange.as_str().into(),
                    (*key).into(),
                    BasicPublishOptions::default(),
                    EVENT,
                    broker::json_properties(),
                )
                .await?;
        }
        let body = target.reply.unwrap_or(&delivery.data);
        let confirm = publisher
            .basic_publish(
                "".into(),
                target.to.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                broker::json_properties(),
            )
            .await?;
        tokio::spawn(async move {
            let confirmed = match confirm.await {
                Ok(confirmation) => check_confirmation(confirmation, "relay").is_ok(),
                Err(_) => false,
            };
            settle(&delivery, confirmed).await;
        });
    }
    bail!("stage consumer ended")
}
