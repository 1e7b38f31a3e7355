//! Phase `relay`: the bare two-stage relay, warren's hops without warren. The client publishes
//! (with confirms) into quorum queue A; a relay consumer on A republishes each message with a
//! confirm into quorum queue B and acks A only after that confirm; a final consumer on B
//! publishes a small reply to the client's reply queue and acks B after the reply's confirm
//! (as a warren worker acks only after its result is confirmed). The client counts replies.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Connection, Consumer};
use tokio::task::JoinHandle;
use warren_common::broker::{check_confirmation, settle};

use crate::Settings;
use crate::broker::{self, ConfirmWindow};
use crate::progress::Progress;
use crate::stats::Throughput;
use crate::task;

/// The small reply the final stage sends for every message.
const REPLY: &[u8] = br#"{"status":"succeeded"}"#;

/// Runs the phase with `n` messages and deletes its queues.
pub(crate) async fn run(settings: &Settings, n: usize, progress: &Progress) -> Result<Throughput> {
    let prefix = broker::unique_prefix("relay");
    let (queue_a, queue_b) = (format!("{prefix}.a"), format!("{prefix}.b"));
    let url = &settings.amqp_url;
    let client = broker::connect(url, "warren-bench relay client").await?;
    let relay = broker::connect(url, "warren-bench relay stage A to B").await?;
    let last = broker::connect(url, "warren-bench relay stage B to reply").await?;
    broker::declare_quorum(&client, &queue_a).await?;
    broker::declare_quorum(&client, &queue_b).await?;
    let queues = Queues {
        prefix: &prefix,
        a: &queue_a,
        b: &queue_b,
    };
    let measured = measure(settings, n, &queues, [&client, &relay, &last], progress).await;
    for connection in [&relay, &last] {
        let _ = connection.close(200, "relay done".into()).await;
    }
    broker::delete_queues(&client, &[queue_a, queue_b]).await?;
    let _ = client.close(200, "relay done".into()).await;
    measured
}

/// The names of one relay run.
struct Queues<'a> {
    prefix: &'a str,
    a: &'a str,
    b: &'a str,
}

async fn measure(
    settings: &Settings,
    n: usize,
    queues: &Queues<'_>,
    [client, relay, last]: [&Connection; 3],
    progress: &Progress,
) -> Result<Throughput> {
    let replies_channel = client.create_channel().await?;
    let reply_queue = broker::private_queue(&replies_channel).await?;
    let mut replies = broker::consume(&replies_channel, &reply_queue, None).await?;

    let first = stage(
        relay,
        queues.a,
        settings.prefetch,
        queues.b.to_owned(),
        None,
    )
    .await?;
    let second = stage(last, queues.b, settings.prefetch, reply_queue, Some(REPLY)).await?;

    let published_bar = progress.bar("relay: published", n as u64);
    let replies_bar = progress.bar("relay: replies", n as u64);
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
            let body = task::body(queues.prefix, i);
            window
                .publish("", queues.a, &body, broker::json_properties())
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
    for (handle, _channel) in [first, second] {
        handle.abort();
    }
    let _ = replies_channel.close(200, "relay done".into()).await;
    Ok(Throughput::new(n as u64, counted? - start))
}

/// Starts a stage on its own connection: consumes `from` (manual acks, `prefetch`), publishes
/// each message (or `reply` instead of its body) with a confirm to queue `to`, and acks the
/// delivery once the broker confirmed it. Runs until aborted.
async fn stage(
    connection: &Connection,
    from: &str,
    prefetch: u16,
    to: String,
    reply: Option<&'static [u8]>,
) -> Result<(JoinHandle<Result<()>>, Channel)> {
    let consume_channel = connection.create_channel().await?;
    let consumer = broker::consume(&consume_channel, from, Some(prefetch)).await?;
    let publisher = warren_common::confirmed_channel(connection).await?;
    let handle = tokio::spawn(forward(consumer, publisher, to, reply));
    Ok((handle, consume_channel))
}

async fn forward(
    mut consumer: Consumer,
    publisher: Channel,
    to: String,
    reply: Option<&'static [u8]>,
) -> Result<()> {
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let body = reply.unwrap_or(&delivery.data);
        let confirm = publisher
            .basic_publish(
                "".into(),
                to.as_str().into(),
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
