//! Phase `raw`: the broker alone. Messages are published with pipelined publisher confirms
//! into a fresh quorum queue while a consumer (manual acks, bounded prefetch) on another
//! connection takes them off; the rate is measured from the first publish to the last ack.

use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::BasicAckOptions;

use crate::Settings;
use crate::broker::{self, ConfirmWindow};
use crate::progress::Progress;
use crate::stats::Throughput;
use crate::task;

/// Runs the phase with `n` messages and deletes its queue.
pub(crate) async fn run(settings: &Settings, n: usize, progress: &Progress) -> Result<Throughput> {
    let prefix = broker::unique_prefix("raw");
    let queue = format!("{prefix}.queue");
    let publisher = broker::connect(&settings.amqp_url, "warren-bench raw publisher").await?;
    let consumer = broker::connect(&settings.amqp_url, "warren-bench raw consumer").await?;
    broker::declare_quorum(&publisher, &queue).await?;
    let measured = measure(
        settings, n, &prefix, &queue, &publisher, &consumer, progress,
    )
    .await;
    let _ = consumer.close(200, "raw done".into()).await;
    broker::delete_queues(&publisher, &[queue]).await?;
    let _ = publisher.close(200, "raw done".into()).await;
    measured
}

async fn measure(
    settings: &Settings,
    n: usize,
    prefix: &str,
    queue: &str,
    publisher: &Connection,
    consumer: &Connection,
    progress: &Progress,
) -> Result<Throughput> {
    let channel = consumer.create_channel().await?;
    let mut deliveries = broker::consume(&channel, queue, Some(settings.prefetch)).await?;
    let published_bar = progress.bar("raw: published", n as u64);
    let acked_bar = progress.bar("raw: acked", n as u64);
    let stall = settings.stall();
    let consuming = tokio::spawn(async move {
        for _ in 0..n {
            let delivery = tokio::time::timeout(stall, deliveries.next())
                .await
                .with_context(|| format!("no delivery for {stall:?}"))?
                .context("consumer ended")??;
            delivery.ack(BasicAckOptions::default()).await?;
            acked_bar.inc(1);
        }
        acked_bar.finish();
        anyhow::Ok(Instant::now())
    });

    let start = Instant::now();
    let published = async {
        let mut window = ConfirmWindow::open(publisher, settings.window, stall).await?;
        for i in 0..n {
            let body = task::body(prefix, i);
            window
                .publish("", queue, &body, broker::json_properties())
                .await?;
            published_bar.inc(1);
        }
        window.finish().await?;
        window.close().await;
        published_bar.finish();
        anyhow::Ok(())
    }
    .await;
    if let Err(err) = published {
        consuming.abort();
        return Err(err);
    }
    let last_ack = consuming.await??;
    let _ = channel.close(200, "raw done".into()).await;
    Ok(Throughput::new(n as u64, last_ack - start))
}
